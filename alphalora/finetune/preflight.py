"""Checks made before a fine-tune is launched, so that a run that cannot work is refused at
once with a message instead of failing in the background a minute later.

:func:`check_launch` checks a training config the way the trainer will use it: the config
itself, the model (the embedded one, a Hugging Face folder with ``config.json``, weights and a
tokenizer, or a hub id, which must be in the local Hugging Face cache when the hub is switched
off), the task (loaded), the allocation's layer count against the model's, and the adapters'
size against the model's (an allocation whose experts would outnumber the model's own
parameters is refused). Everything is read from headers and small JSON files: no weights, no
network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphalora.allocation.params import (
    LLAMA_TARGETS,
    lora_parameters_per_expert,
    module_shapes_from_config,
)
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import DEFAULT_EXPERTS_PER_LAYER, TrainConfig

MAX_ADAPTER_SHARE = 1.0
"""Refuse adapters (experts × per-expert parameters) larger than this share of the model…"""
ADAPTER_FLOOR = 50_000_000
"""…unless they stay under this many parameters (toy test models are smaller than any sane
adapter, and 50 M trainable parameters still fit a CPU's memory with their optimizer state)."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


@dataclass(frozen=True)
class ModelFacts:
    """What a launch check needs to know about a model, read cheaply: where it is, its layer
    count, parameter count and the (d_in, d_out) of each adapted projection kind."""

    ref: str
    where: str
    n_layers: int | None = None
    parameters: int | None = None
    module_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchCheck:
    """The outcome of :func:`check_launch` for one config (it raises when the launch would
    fail): the model's facts, the task's summary and the adapters' size."""

    config: TrainConfig
    model: ModelFacts
    task: dict[str, Any]
    total_experts: int | None
    trainable_parameters: int | None


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE``), read now rather than at import."""
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def module_shapes_from_records(
    records: Iterable[tuple[Any, Any, Any, Any]],
) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) per module kind from ``(layer, kind, rows_out, cols_in)`` records of
    block matrices, taken from the first layer that has each kind; Llama kinds first."""
    shapes: dict[str, tuple[int, tuple[int, int]]] = {}
    for layer, kind, rows, cols in records:
        if layer is None or layer != layer:  # None or NaN: not a transformer-block matrix
            continue
        if str(kind) not in shapes or int(layer) < shapes[str(kind)][0]:
            shapes[str(kind)] = (int(layer), (int(cols), int(rows)))
    order = {k: i for i, k in enumerate(LLAMA_TARGETS)}
    kinds = sorted(shapes, key=lambda k: (order.get(k, len(order)), k))
    return {k: shapes[k][1] for k in kinds}


def facts_from_analysis(ref: str, result: Any) -> ModelFacts:
    """:class:`ModelFacts` from a spectral analysis of the same model (no file read again)."""
    m = result.matrices
    records = zip(m["layer"], m["kind"], m["rows"], m["cols"], strict=True)
    n_layers = result.model.get("n_layers") or int(result.layers.shape[0])
    return ModelFacts(
        ref=ref,
        where=f"the analysed model {result.model.get('name') or ref}",
        n_layers=int(n_layers) if n_layers else None,
        parameters=result.model.get("parameters"),
        module_shapes=module_shapes_from_records(records),
    )


def _estimate_parameters(
    config: Mapping[str, Any], shapes: Mapping[str, tuple[int, int]], n_layers: int | None
) -> int | None:
    """Parameters of a Llama-style model from its config: the projections of every layer plus
    the embedding (and the output head unless tied). Norms are left out (a rounding error)."""
    hidden, vocab = config.get("hidden_size"), config.get("vocab_size")
    if not shapes or not n_layers or not isinstance(hidden, int) or not isinstance(vocab, int):
        return None
    copies = 1 if config.get("tie_word_embeddings", True) else 2
    return n_layers * sum(a * b for a, b in shapes.values()) + copies * vocab * hidden


def _folder_facts(ref: str, folder: Path, where: str) -> ModelFacts:
    """Facts of a Hugging Face model folder, refusing one the trainer could not load."""
    from alphalora.spectral.source_base import n_layers_from, read_json

    if not folder.is_dir():
        raise AlphaLoRAError(
            f"{folder} is a file: fine-tuning needs a Hugging Face model folder (config.json, "
            "*.safetensors, tokenizer files). Give the folder that holds it."
        )
    if not (folder / "config.json").is_file():
        raise AlphaLoRAError(
            f"{folder} has no config.json: fine-tuning needs a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer files)."
        )
    config = read_json(folder / "config.json")
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHTS):
        raise AlphaLoRAError(
            f"{folder} has a config.json but no weights (*.safetensors or *.bin). Download or "
            "save the full model there (save_pretrained) and try again."
        )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise AlphaLoRAError(
            f"{folder} has no tokenizer (tokenizer.json, tokenizer.model or "
            "tokenizer_config.json). Save the tokenizer next to the model (save_pretrained)."
        )
    n_layers = n_layers_from(config, [])
    parameters, shapes = None, {}
    if any(folder.glob("*.safetensors")):  # headers only: exact and cheap
        from alphalora.spectral.sources import open_source

        source = open_source(str(folder))
        parameters = source.parameter_count() or None
        infos = source.matrices()
        shapes = module_shapes_from_records((i.layer, i.kind, *i.shape) for i in infos)
        n_layers = n_layers or source.n_layers
    try:
        shapes = module_shapes_from_config(config) if not shapes else shapes
    except AlphaLoRAError:
        shapes = {}
    parameters = parameters or _estimate_parameters(config, shapes, n_layers)
    return ModelFacts(ref, where, n_layers, parameters, dict(shapes))


def _hub_facts(ref: str, *, offline: bool, cache_dir: str | Path | None) -> ModelFacts:
    """Facts of a hub id from the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(ref, "config.json", cache_dir=cache_dir)
    except Exception as exc:  # an id the hub library refuses to look up
        raise AlphaLoRAError(
            f"{ref!r} is not a valid Hugging Face model id ({exc}). Give 'embedded', an existing "
            "model folder, or an id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'."
        ) from exc
    if isinstance(hit, str) and Path(hit).is_file():
        return _folder_facts(ref, Path(hit).parent, f"the Hugging Face cache ({ref})")
    if offline:
        raise AlphaLoRAError(
            f"Model {ref!r} is not a local folder and not in the Hugging Face cache, and the hub "
            "is switched off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE): the run could not download "
            "it. Download it once while online, or give the path of a local model folder."
        )
    return ModelFacts(ref, f"the Hugging Face hub ({ref}, downloaded when the run starts)")


def model_facts(
    ref: str,
    *,
    analysis: Any = None,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
) -> ModelFacts:
    """Check that the trainer can load model ``ref`` and read its facts: the embedded model
    (from ``analysis`` when given: parsing its GGUF takes seconds), a Hugging Face folder, or a
    hub id (``org/name``) found in the local cache; when the hub is off (``offline``, default
    from the environment) an uncached id is refused."""
    text = str(ref or "").strip()
    if not text:
        raise AlphaLoRAError("No model given: type 'embedded', a model folder or a hub id.")
    from alphalora.spectral.embedded import EMBEDDED_REF, resolve_embedded

    if text == EMBEDDED_REF or text.startswith(EMBEDDED_REF + ":"):
        spec = resolve_embedded(text)
        if analysis is not None:
            return facts_from_analysis(text, analysis)
        from alphalora.spectral.sources import open_source

        source = open_source(text)
        records = ((i.layer, i.kind, *i.shape) for i in source.matrices())
        return ModelFacts(text, f"the embedded model {spec.name}", source.n_layers,
                          source.parameter_count() or None,
                          module_shapes_from_records(records))  # fmt: skip
    path = Path(text).expanduser()
    if path.exists():
        return _folder_facts(text, path, f"the folder {path}")
    if text.startswith((".", "/", "~")) or "/" not in text:
        what = "folder" if text.startswith((".", "/", "~")) else "folder or hub id"
        raise AlphaLoRAError(
            f"Model {text!r} not found: no such {what}. Give 'embedded', an existing Hugging "
            "Face model folder, or a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'."
        )
    if not _HUB_ID.match(text):
        raise AlphaLoRAError(
            f"{text!r} is neither an existing folder nor a Hugging Face hub id (org/name, "
            "letters, digits, '-', '_' and '.'). Check the spelling."
        )
    return _hub_facts(text, offline=hub_offline() if offline is None else offline,
                      cache_dir=cache_dir)  # fmt: skip


def check_task(spec: str, load: Callable[[str], Mapping[str, Any]] | None = None) -> dict:
    """Load the task as the trainer will and return its summary; refuse one with no training
    or no held-out examples. ``load`` (spec → summary) lets the app use its cached loader."""
    if load is None:
        from alphalora.finetune.tasks.load import load_task

        def load(s: str) -> Mapping[str, Any]:
            return load_task(s).summary()

    summary = dict(load(spec))
    if not summary.get("n_train"):
        raise AlphaLoRAError(f"The task {spec} has no training examples; give a bigger file.")
    if not summary.get("n_eval"):
        raise AlphaLoRAError(f"The task {spec} has no held-out examples to score; add rows.")
    return summary


def allocation_total(config: TrainConfig, n_layers: int | None) -> int | None:
    """Total experts the config's allocation asks for, checking its layer count against the
    model's; ``None`` for plain LoRA or when the model's layer count is unknown."""
    if config.method == "lora":
        return None
    spec = dict(config.allocation or {"method": "alphalora"})
    if "experts" in spec:
        experts = list(spec["experts"])
        if n_layers is not None and len(experts) != n_layers:
            raise AlphaLoRAError(
                f"The allocation has {len(experts)} layers but {config.model} has {n_layers} "
                "transformer layers. Make or import an allocation for this model on the "
                "Allocation page."
            )
        return int(sum(int(n) for n in experts))
    if n_layers is None:
        return spec.get("budget")
    from alphalora.allocation.shapes import mola_shape, uniform

    if spec["method"] == "uniform" and spec.get("budget") is not None:
        return uniform(n_layers, int(spec["budget"])).total
    if spec["method"] == "mola":
        return mola_shape(spec["shape"], n_layers, spec.get("budget")).total
    per_layer = spec.get("experts_per_layer") or DEFAULT_EXPERTS_PER_LAYER
    return int(spec.get("budget") or round(per_layer * n_layers))


def check_adapter_size(config: TrainConfig, facts: ModelFacts, total: int | None) -> int | None:
    """Trainable parameters of the MoE-LoRA (experts × rank·(d_in + d_out) + router rows, per
    adapted module); refuses adapters larger than the model (:data:`MAX_ADAPTER_SHARE`) and
    than :data:`ADAPTER_FLOOR`."""
    if total is None or not facts.module_shapes:
        return None
    shapes = facts.module_shapes
    if config.targets:
        shapes = {k: v for k, v in shapes.items() if k in set(config.targets)} or shapes
    per_expert = lora_parameters_per_expert(shapes, rank=config.rank)
    trainable = total * per_expert
    if facts.parameters and trainable > max(MAX_ADAPTER_SHARE * facts.parameters, ADAPTER_FLOOR):
        raise AlphaLoRAError(
            f"This allocation asks for {total:,} experts: {trainable:,} trainable adapter "
            f"parameters ({per_expert:,} per expert at rank {config.rank}), more than the "
            f"{facts.parameters:,} parameters of the model itself. That cannot be meant: use a "
            "budget of a few experts per layer (the paper uses 5) on the Allocation page."
        )
    return trainable


def check_launch(
    config: Mapping[str, Any] | TrainConfig,
    *,
    facts: ModelFacts | None = None,
    task: Callable[[str], Mapping[str, Any]] | None = None,
    offline: bool | None = None,
) -> LaunchCheck:
    """Every check a launch needs, in the order a user fixes them: the config, the model, the
    task, the allocation's layers, the adapters' size. Raises :class:`AlphaLoRAError` with
    what to change; ``facts`` (from :func:`model_facts`) saves reading the model again."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    facts = facts or model_facts(cfg.model, offline=offline)
    summary = check_task(cfg.task, task)
    total = allocation_total(cfg, facts.n_layers)
    trainable = check_adapter_size(cfg, facts, total)
    return LaunchCheck(cfg, facts, summary, total, trainable)
