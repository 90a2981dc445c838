"""Checks for what a training config says about its adapters beyond the basics: a plain-LoRA
``lora_config`` with per-module ranks (a ``peft.LoraConfig`` JSON, as ``allocate --as
peft-ranks`` writes it), the provenance fields of an allocation spec, and the run row's record
of a plain-LoRA run."""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError

LORA_CONFIG_KEYS = {
    "r", "lora_alpha", "lora_dropout", "target_modules", "rank_pattern", "alpha_pattern",
    "bias", "task_type",
}  # fmt: skip
LAYER_SCORE_NAMES = ("mean", "median", "trimmed")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_provenance(spec: Mapping[str, Any]) -> None:
    """Refuse badly typed provenance fields of an allocation spec (label, method, β, alphas,
    shape, layer score), naming the field."""
    for key in ("label", "method", "shape"):
        value = spec.get(key)
        if value is not None and not isinstance(value, str):
            raise AlphaLoRAError(f"allocation.{key} must be text; got {value!r}.")
    beta = spec.get("beta")
    if beta is not None and (not _is_number(beta) or beta < 0):
        raise AlphaLoRAError(f"allocation.beta must be a number ≥ 0; got {beta!r}.")
    alphas = spec.get("alphas")
    if alphas is not None and (
        not isinstance(alphas, list) or not all(_is_number(a) and a > 0 for a in alphas)
    ):
        raise AlphaLoRAError("allocation.alphas must be a list of positive numbers, or null.")
    score = spec.get("layer_score")
    if score is not None and score not in LAYER_SCORE_NAMES:
        raise AlphaLoRAError(
            f"allocation.layer_score must be one of {', '.join(LAYER_SCORE_NAMES)}; got {score!r}."
        )
    exclude = spec.get("exclude_unreliable")
    if exclude is not None and not isinstance(exclude, bool):
        raise AlphaLoRAError(
            f"allocation.exclude_unreliable must be true or false; got {exclude!r}."
        )


def _read_json(path_text: str) -> Any:
    path = Path(path_text).expanduser()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AlphaLoRAError(
            f"lora_config file {path} not found; write one with `python -m alphalora allocate "
            "… --as peft-ranks --out lora_config.json`."
        ) from None
    except json.JSONDecodeError as exc:
        raise AlphaLoRAError(f"lora_config file {path} is not valid JSON: {exc}.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AlphaLoRAError(f"Cannot read the lora_config file {path}: {exc}.") from exc


def check_lora_config(value: Mapping[str, Any] | str) -> dict[str, Any]:
    """A ``peft.LoraConfig`` dict with a per-module ``rank_pattern`` (read from a file when a
    path is given, so the run keeps its content); refuses unknown keys and bad ranks."""
    data = _read_json(value) if isinstance(value, str) else value
    if not isinstance(data, Mapping):
        raise AlphaLoRAError("lora_config must be a JSON object (a peft LoraConfig) or its path.")
    unknown = sorted(set(data) - LORA_CONFIG_KEYS)
    if unknown:
        raise AlphaLoRAError(
            f"Unknown lora_config key(s) {unknown}; allowed: {', '.join(sorted(LORA_CONFIG_KEYS))}."
        )
    pattern = data.get("rank_pattern")
    if not isinstance(pattern, Mapping) or not pattern:
        raise AlphaLoRAError(
            "lora_config needs a non-empty rank_pattern (module name → rank), as written by "
            "`allocate --as peft-ranks`."
        )
    bad = {k: v for k, v in pattern.items() if not isinstance(k, str) or not _is_int(v) or v < 1}
    if bad:
        raise AlphaLoRAError(f"rank_pattern ranks must be whole numbers ≥ 1; got {bad}.")
    alphas = data.get("alpha_pattern") or {}
    if not isinstance(alphas, Mapping) or not all(_is_number(v) and v > 0 for v in alphas.values()):
        raise AlphaLoRAError("alpha_pattern must map module names to positive numbers.")
    r = data.get("r", 8)
    if not _is_int(r) or r < 1:
        raise AlphaLoRAError(f"lora_config.r must be a whole number ≥ 1; got {r!r}.")
    targets = data.get("target_modules")
    if targets is not None and (
        not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets)
    ):
        raise AlphaLoRAError("lora_config.target_modules must be a list of module names.")
    return json.loads(json.dumps(dict(data)))


def unmatched_patterns(module_names: list[str], pattern: Mapping[str, Any]) -> list[str]:
    """Keys of a peft ``rank_pattern`` that match none of ``module_names`` (peft's own rule:
    the key is a regular expression matched against the end of a name, after a dot)."""
    missing = []
    for key in pattern:
        regex = re.compile(rf"(.*\.)?({key})$")
        if not any(regex.match(name) for name in module_names):
            missing.append(key)
    return missing


def lora_record(rank: int, lora_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run row's ``allocation`` of a plain-LoRA run: uniform rank, or per-module ranks."""
    if not lora_config:
        return {"method": "lora", "mode": "lora", "rank": rank, "label": f"LoRA r={rank} (uniform)"}
    ranks = [int(v) for v in lora_config["rank_pattern"].values()]
    total, mean = sum(ranks), sum(ranks) / len(ranks)
    return {
        "method": "lora",
        "mode": "lora-ranks",
        "rank": int(lora_config.get("r", rank)),
        "total_rank": total,
        "modules": len(ranks),
        "min_rank": min(ranks),
        "max_rank": max(ranks),
        "label": f"LoRA ranks by α (R={total}, r̄={mean:.1f}, {min(ranks)}–{max(ranks)})",
    }
