"""What a training config names, made concrete: the model folder that ``from_pretrained`` loads
(the embedded model exported once) and the expert allocation for the model's layer count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import DEFAULT_EXPERTS_PER_LAYER, TrainConfig
from alphalora.finetune.runtime import Progress


def _is_embedded(ref: str) -> bool:
    from alphalora.spectral.embedded import EMBEDDED_REF

    return ref == EMBEDDED_REF or ref.startswith(EMBEDDED_REF + ":")


def resolve_model_path(ref: str, progress: Progress | None = None) -> str:
    """A local folder (or hub id) that ``from_pretrained`` can load: the embedded model is
    exported once to a cached Hugging Face folder."""
    if _is_embedded(ref):
        from alphalora.spectral.embedded import export_embedded_hf, resolve_embedded

        def setup(fraction: float, message: str) -> None:
            if progress is not None:  # the export is set-up: training progress stays at 0
                progress(0.0, message)

        return str(export_embedded_hf(setup, resolve_embedded(ref)))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AlphaLoRAError(
                f"{path} has no config.json: fine-tuning needs a Hugging Face model folder "
                "(config.json, *.safetensors, tokenizer files)."
            )
        return str(path)
    if "/" in ref and not ref.startswith((".", "/", "~")):
        return ref
    raise AlphaLoRAError(
        f"Model {ref!r} not found: give 'embedded', a Hugging Face model folder, or a hub id "
        "such as 'HuggingFaceTB/SmolLM2-360M-Instruct'."
    )


def resolve_allocation(
    config: TrainConfig,
    n_layers: int,
    *,
    analysis_device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
) -> Any:
    """Turn ``config.allocation`` (explicit lists or a spec) into an :class:`Allocation` for a
    model with ``n_layers`` transformer layers; refuses a layer-count mismatch. ``progress``
    follows the spectral analysis, matrix by matrix (and may raise to stop it)."""
    from alphalora.allocation.labels import with_layer_score
    from alphalora.allocation.shapes import custom, mola_shape, uniform
    from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official

    spec = dict(config.allocation or {"method": "alphalora"})
    if "experts" in spec:
        experts = list(spec["experts"])
        if len(experts) != n_layers:
            raise AlphaLoRAError(
                f"The allocation lists {len(experts)} layers but the model has {n_layers} "
                "transformer layers; give one expert count per layer."
            )
        top_k = spec.get("top_k")
        return _with_provenance(custom(experts, 2 if top_k is None else top_k), spec)
    method = spec["method"]
    per_layer = spec.get("experts_per_layer") or DEFAULT_EXPERTS_PER_LAYER
    budget = spec.get("budget")
    beta = 2.5 if spec.get("beta") is None else float(spec["beta"])
    top_k = int(spec.get("top_k") or 2)
    if method == "mola":
        return mola_shape(spec["shape"], n_layers, budget)
    if budget is None:
        budget = int(round(per_layer * n_layers))
    if method == "uniform":
        return uniform(n_layers, budget, top_k)
    from alphalora.spectral.analysis import layer_alphas

    score, exclude = spec.get("layer_score"), bool(spec.get("exclude_unreliable"))
    alphas = layer_alphas(
        config.model,
        fit=spec.get("fit") or "hill-peak",
        device=analysis_device,
        progress=progress,
        layer_score=score,
        exclude_unreliable=exclude,
    )
    if len(alphas) != n_layers:
        raise AlphaLoRAError(
            f"The spectral analysis found {len(alphas)} layers but the model loads with "
            f"{n_layers}; cannot allocate experts per layer."
        )
    if method == "alphalora-official":
        return with_layer_score(alphalora_official(alphas, budget, beta), score, exclude)
    result = alphalora_allocation(
        alphas,
        budget,
        beta,
        min_experts=int(spec.get("min") or 1),
        max_experts=spec.get("max"),
        top_k=top_k,
    )
    return with_layer_score(result, score, exclude)


def _with_provenance(allocation: Any, spec: dict[str, Any]) -> Any:
    """An explicit allocation that keeps what its spec says about its origin (method, label,
    β, alphas, bounds: an ``Allocation`` JSON pasted as the spec keeps its name)."""
    import dataclasses

    from alphalora.allocation.labels import PROVENANCE_KEYS

    fields = {k: spec[k] for k in PROVENANCE_KEYS if spec.get(k) is not None}
    changes: dict[str, Any] = {}
    if isinstance(fields.get("method"), str):
        changes["method"] = fields["method"]
    if isinstance(fields.get("label"), str) and fields["label"]:
        changes["label"] = fields["label"]
    for key in ("beta", "alphas", "min_experts", "max_experts"):
        if key in fields:
            changes[key] = tuple(fields[key]) if key == "alphas" else fields[key]
    if "alphas" in changes and len(changes["alphas"]) != allocation.n_layers:
        changes.pop("alphas")
    return dataclasses.replace(allocation, **changes) if changes else allocation


def allocation_record_for(config: TrainConfig, allocation: Any) -> dict[str, Any]:
    """The run row's ``allocation``: the resolved allocation with its mode, β/τ, budget, shape
    and layer score (see :func:`alphalora.allocation.labels.allocation_record`)."""
    from alphalora.allocation.labels import allocation_record

    spec = dict(config.allocation or {})
    return allocation_record(
        allocation,
        shape=spec.get("shape"),
        layer_score=spec.get("layer_score"),
        exclude_unreliable=bool(spec.get("exclude_unreliable")),
    )
