"""Hugging Face task references: ``hf:NAME[:CONFIG][?key=value&…]`` parsed into an
:class:`HFSpec`, written back, and made absolute for a local folder. Pure text; never imports
``datasets``.

NAME is a hub id (``nyu-mll/glue``), a folder written by ``save_to_disk`` or a folder of
parquet/CSV/JSON files.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from alphalora.errors import AlphaLoRAError

HF_PREFIX = "hf:"
HF_MAX_TRAIN = 20_000
HF_MAX_EVAL = 500  # the shipped task's held-out size (shipped.RT_EVAL_SIZE)
COLUMN_KEYS = ("text", "label", "prompt", "answer", "question", "choices")
QUERY_KEYS = ("split", "eval_split", *COLUMN_KEYS, "max_train", "max_eval")


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:`` reference: dataset name (hub id or local folder), config, splits,
    optional column names for the layout, and the sample caps."""

    name: str
    config: str | None = None
    split: str = "train"
    eval_split: str | None = None
    text: str | None = None
    label: str | None = None
    prompt: str | None = None
    answer: str | None = None
    question: str | None = None
    choices: str | None = None
    max_train: int = HF_MAX_TRAIN
    max_eval: int = HF_MAX_EVAL

    def columns(self) -> dict[str, str]:
        """The column names given explicitly (role → column)."""
        return {k: getattr(self, k) for k in COLUMN_KEYS if getattr(self, k) is not None}


def is_hf_spec(text: str) -> bool:
    """Whether a task reference names a Hugging Face dataset (starts with ``hf:``)."""
    return str(text).strip().startswith(HF_PREFIX)


_SPEC_HELP = (
    "Write it as hf:NAME or hf:NAME:CONFIG, optionally followed by ?key=value&… with keys "
    f"{', '.join(QUERY_KEYS)} (e.g. hf:nyu-mll/glue:sst2?text=sentence&max_train=5000)."
)


def parse_hf_spec(text: str) -> HFSpec:
    """Parse ``hf:NAME[:CONFIG][?split=…&eval_split=…&text=…&label=…&prompt=…&answer=…&
    question=…&choices=…&max_train=N&max_eval=N]``; raises AlphaLoRAError on a bad spec.
    NAME cannot contain ':' or '?' (they separate the config and the options)."""
    raw = str(text).strip()
    if not raw.startswith(HF_PREFIX):
        raise AlphaLoRAError(f"{raw!r} is not a Hugging Face dataset reference. {_SPEC_HELP}")
    body, _, query = raw[len(HF_PREFIX) :].partition("?")
    name, sep, config = body.strip().rpartition(":")
    if not sep or "/" in config or "\\" in config:  # no config, or a drive letter (C:\…)
        name, config = body.strip(), ""
    elif not config.strip():
        raise AlphaLoRAError(f"{raw!r}: the config after ':' is empty. {_SPEC_HELP}")
    name, config = name.strip(), config.strip()
    if not name:
        raise AlphaLoRAError(f"{raw!r} names no dataset. {_SPEC_HELP}")
    values: dict[str, Any] = {}
    if query.strip():
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise AlphaLoRAError(f"{raw!r}: the part after '?' is malformed. {_SPEC_HELP}") from exc
        for key, value in pairs:
            key, value = key.strip(), value.strip()
            if key not in QUERY_KEYS:
                raise AlphaLoRAError(
                    f"{raw!r}: unknown option {key!r}; the options are {', '.join(QUERY_KEYS)}."
                )
            if key in values:
                raise AlphaLoRAError(f"{raw!r}: the option {key!r} is given twice.")
            if not value:
                raise AlphaLoRAError(f"{raw!r}: the option {key!r} has no value.")
            if key in ("max_train", "max_eval"):
                if not value.isdigit() or int(value) < 1:
                    raise AlphaLoRAError(
                        f"{raw!r}: {key} must be a whole number ≥ 1; got {value!r}."
                    )
                values[key] = int(value)
            else:
                values[key] = value
    if values.get("eval_split") is not None and values["eval_split"] == values.get(
        "split", "train"
    ):
        raise AlphaLoRAError(
            f"{raw!r}: eval_split and split are both {values['eval_split']!r}; evaluate on a "
            "different split (or leave eval_split out to hold out part of the training split)."
        )
    return HFSpec(name=name, config=config or None, **values)


def format_hf_spec(spec: HFSpec) -> str:
    """The ``hf:`` text of a spec (options only where they differ from the defaults)."""
    default = HFSpec(name=spec.name)
    head = HF_PREFIX + spec.name + (f":{spec.config}" if spec.config else "")
    options = [
        (f.name, str(getattr(spec, f.name)))
        for f in fields(HFSpec)
        if f.name in QUERY_KEYS and getattr(spec, f.name) != getattr(default, f.name)
    ]
    return head + ("?" + urlencode(options) if options else "")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def local_folder(name: str) -> Path | None:
    """The local folder NAME points to, None for a hub id; raises for a missing path."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AlphaLoRAError(
                f"{path} is a file, not a dataset folder. For a single JSONL/CSV file give its "
                "path without the hf: prefix; for Hugging Face data give a hub id or a folder."
            )
        return path.resolve()
    if _looks_like_path(name):
        raise AlphaLoRAError(
            f"The dataset folder {path.absolute()} does not exist. Give an existing folder (written by "
            "save_to_disk, or holding parquet/CSV/JSON files) or a hub id such as "
            "cornell-movie-review-data/rotten_tomatoes."
        )
    return None


def canonical_hf_spec(text: str) -> str:
    """The spec with a relative local folder made absolute, so that a run started in another
    working directory (a background job) reads the same data."""
    spec = parse_hf_spec(text)
    folder = local_folder(spec.name)
    if folder is None:
        return str(text).strip()
    return format_hf_spec(replace(spec, name=str(folder)))
