"""The fine-tuning configuration: a validated, JSON (de)serialisable dataclass, and presets.

Presets are JSON files in the repository's ``configs/`` folder (``demo-cpu``, ``paper``, …);
``load_config`` takes a preset name or a path. Every check raises :class:`AlphaLoRAError`
naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphalora.allocation.checks import MAX_TOTAL_EXPERTS
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.lora_ranks import check_provenance

METHODS = ("moe-lora", "lora")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCORINGS = ("auto", "choice", "generate")
ALLOCATION_METHODS = ("alphalora", "alphalora-official", "uniform", "mola")
ALLOCATION_SPEC_KEYS = {
    "method",
    "budget",
    "beta",
    "shape",
    "min",
    "max",
    "top_k",
    "fit",
    "experts_per_layer",
    "layer_score",
    "exclude_unreliable",
}
EXPLICIT_KEYS = {"experts", "top_k"}
DEFAULT_EXPERTS_PER_LAYER = 5  # the papers' 160 experts over 32 layers
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """Everything a fine-tune needs; defaults follow docs/method.md §5 (rank 8, alpha 16, dropout
    0.05, aux 0.001) with a short run. ``allocation`` is explicit ``{"experts", "top_k"}`` or a
    spec ``{"method": "alphalora"|"alphalora-official"|"uniform"|"mola", ...}`` resolved at
    start; ``None`` means AlphaLoRA with β 2.5 and 5 experts per layer."""

    name: str = "run"
    model: str = "embedded"
    trust_remote_code: bool = False
    task: str = "rotten-tomatoes"
    scoring: str = "auto"
    method: str = "moe-lora"
    allocation: dict[str, Any] | None = None
    lora_config: dict[str, Any] | str | None = None
    rank: int = 8
    lora_alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] | None = None
    steps: int = 40
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 64
    eval_every: int | None = None
    eval_examples: int | None = 200
    eval_batch_size: int | None = None
    train_examples: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    aux_loss_coef: float = 0.001
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    eval_before: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; raise AlphaLoRAError on the first problem."""
        for name in ("name", "model", "task"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise AlphaLoRAError(f"{name} must be a non-empty string; got {value!r}.")
        for name in ("trust_remote_code", "gradient_checkpointing", "eval_before"):
            if not isinstance(getattr(self, name), bool):
                raise AlphaLoRAError(f"{name} must be true or false; got {getattr(self, name)!r}.")
        self._choice("method", METHODS)
        self._choice("device", DEVICES)
        self._choice("precision", PRECISIONS)
        self._choice("scoring", SCORINGS)
        for name, low in (
            ("rank", 1),
            ("steps", 1),
            ("batch_size", 1),
            ("grad_accum", 1),
            ("warmup_steps", 0),
            ("max_length", 8),
            ("seed", 0),
            ("keep_checkpoints", 1),
        ):
            self._int(name, low)
        for name in ("eval_every", "eval_examples", "eval_batch_size", "train_examples"):
            self._int(name, 1, optional=True)
        self._int("checkpoint_every", 1, optional=True)
        for name, low, high in (
            ("lr", 0.0, 10.0),
            ("weight_decay", 0.0, 10.0),
            ("lora_alpha", 0.0, 1e6),
            ("aux_loss_coef", 0.0, 1e3),
        ):
            self._float(name, low, high)
        if self.lr <= 0:
            raise AlphaLoRAError(f"lr must be > 0; got {self.lr}.")
        self._float("dropout", 0.0, 0.99)
        if self.max_grad_norm is not None:
            self._float("max_grad_norm", 0.0, 1e6)
            if self.max_grad_norm <= 0:
                raise AlphaLoRAError("max_grad_norm must be > 0, or null to disable clipping.")
        if self.warmup_steps > self.steps:
            raise AlphaLoRAError(
                f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps}); lower it."
            )
        if self.targets is not None:
            if isinstance(self.targets, str):
                self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
            if not isinstance(self.targets, list | tuple) or not all(
                isinstance(t, str) and t for t in self.targets
            ):
                raise AlphaLoRAError(
                    f"targets must be a list of module names such as ['q_proj', 'v_proj'], or "
                    f"null for all projections; got {self.targets!r}."
                )
            self.targets = list(self.targets)
        if self.lora_config is not None:
            from alphalora.finetune.lora_ranks import check_lora_config

            if self.method != "lora":
                raise AlphaLoRAError(
                    "lora_config (per-module LoRA ranks) applies to method 'lora' only; MoE-LoRA "
                    "takes an expert allocation instead."
                )
            self.lora_config = check_lora_config(self.lora_config)
        if not isinstance(self.extra, dict):
            raise AlphaLoRAError("extra must be a JSON object (free-form notes).")
        self._check_allocation()

    def _choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise AlphaLoRAError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")

    def _int(self, name: str, low: int, optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if not _is_int(value) or value < low:
            extra = " or null" if optional else ""
            raise AlphaLoRAError(f"{name} must be a whole number ≥ {low}{extra}; got {value!r}.")
        setattr(self, name, int(value))

    def _float(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        if not _is_number(value) or not math.isfinite(value) or not low <= value <= high:
            raise AlphaLoRAError(f"{name} must be a number in [{low:g}, {high:g}]; got {value!r}.")
        setattr(self, name, float(value))

    def _check_allocation(self) -> None:
        spec = self.allocation
        if spec is None:
            return
        if self.method == "lora":
            raise AlphaLoRAError(
                "allocation applies to method 'moe-lora' only; remove it for the plain LoRA "
                "baseline (method 'lora')."
            )
        if not isinstance(spec, Mapping):
            raise AlphaLoRAError(
                'allocation must be a JSON object: {"experts": [...], "top_k": [...]} or '
                '{"method": "alphalora", "budget": 150, "beta": 2.5}.'
            )
        if "experts" in spec:
            experts = spec["experts"]
            if (
                not isinstance(experts, list)
                or not experts
                or not all(_is_int(n) and n >= 1 for n in experts)
            ):
                raise AlphaLoRAError(
                    f"allocation.experts must be a list of whole numbers ≥ 1, one per layer; "
                    f"got {experts!r}."
                )
            top_k = spec.get("top_k")
            if top_k is not None and not (
                _is_int(top_k)
                or (isinstance(top_k, list) and all(_is_int(k) and k >= 1 for k in top_k))
            ):
                raise AlphaLoRAError(
                    f"allocation.top_k must be a whole number or a list (one per layer); got "
                    f"{top_k!r}."
                )
            check_provenance(spec)
            return
        method = spec.get("method")
        if method not in ALLOCATION_METHODS:
            raise AlphaLoRAError(
                f"allocation.method must be one of {', '.join(ALLOCATION_METHODS)} (or give "
                f"explicit 'experts'); got {method!r}."
            )
        unknown = sorted(set(spec) - ALLOCATION_SPEC_KEYS)
        if unknown:
            raise AlphaLoRAError(
                f"Unknown allocation key(s) {unknown}; allowed: "
                f"{', '.join(sorted(ALLOCATION_SPEC_KEYS))}."
            )
        for key, low in (("budget", 1), ("min", 1), ("max", 1), ("top_k", 1)):
            value = spec.get(key)
            if value is not None and (not _is_int(value) or value < low):
                raise AlphaLoRAError(
                    f"allocation.{key} must be a whole number ≥ {low}; got {value!r}."
                )
        if spec.get("budget") is not None and spec["budget"] > MAX_TOTAL_EXPERTS:
            raise AlphaLoRAError(
                f"allocation.budget {spec['budget']:,} is above the supported maximum of "
                f"{MAX_TOTAL_EXPERTS:,} experts in total."
            )
        epl = spec.get("experts_per_layer")
        if epl is not None and (not _is_number(epl) or epl < 1):
            raise AlphaLoRAError(f"allocation.experts_per_layer must be ≥ 1; got {epl!r}.")
        beta = spec.get("beta")
        if beta is not None and (not _is_number(beta) or not math.isfinite(beta) or beta < 0):
            raise AlphaLoRAError(f"allocation.beta must be a number ≥ 0; got {beta!r}.")
        check_provenance(spec)
        if method == "mola" and not isinstance(spec.get("shape"), str):
            raise AlphaLoRAError(
                'allocation method "mola" needs a "shape" such as "2468" or "diamond".'
            )

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config; unknown keys are refused (typo protection)."""
        if not isinstance(data, Mapping):
            raise AlphaLoRAError(
                f"A training config must be a JSON object; got {type(data).__name__}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AlphaLoRAError(
                f"Unknown config key(s) {unknown}. Valid keys: {', '.join(sorted(known))}."
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def resolved_precision(self, cuda: bool, bf16_ok: bool) -> str:
        """``auto`` → bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU."""
        if self.precision != "auto":
            return self.precision
        if not cuda:
            return "fp32"
        return "bf16" if bf16_ok else "fp16"


def preset_names() -> list[str]:
    """Names of the JSON presets shipped in ``configs/``."""
    if not CONFIGS_DIR.is_dir():
        return []
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))


def load_config(spec: str | Path | Mapping[str, Any] | TrainConfig) -> TrainConfig:
    """A config from a preset name (``demo-cpu``), a JSON file path, a dict or a config."""
    if isinstance(spec, TrainConfig):
        return spec
    if isinstance(spec, Mapping):
        return TrainConfig.from_dict(spec)
    text = str(spec).strip()
    path = Path(text).expanduser()
    if not path.exists() and text in preset_names():
        path = CONFIGS_DIR / f"{text}.json"
    if not path.exists():
        presets = ", ".join(preset_names()) or "none found"
        raise AlphaLoRAError(
            f"No config file {text!r}. Give a path to a JSON config or a preset name ({presets})."
        )
    if path.is_dir():
        raise AlphaLoRAError(f"{path} is a folder; give a JSON config file.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlphaLoRAError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AlphaLoRAError(f"Cannot read the config {path}: {exc}.") from exc
    return TrainConfig.from_dict(data)
