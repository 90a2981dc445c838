"""Hugging Face datasets as fine-tuning tasks: ``hf:NAME[:CONFIG][?key=value&…]`` → :class:`Task`.

NAME is a hub id (``nyu-mll/glue``), a folder written by ``save_to_disk`` or a folder of
parquet/CSV/JSON files. Rows become prompt → answer examples in one of three layouts
(prompt/answer, question/choices/answer, or a text column plus a label column), reusing the
example builders of :mod:`alphalora.finetune.data`. ``datasets`` is imported only when a task is loaded.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.data import (
    AUTO_CHOICE_MAX_LABELS,
    MC_TEMPLATE,
    SCORING_MODES,
    USER_EVAL_FRACTION,
    USER_EVAL_MAX,
    USER_SPLIT_SEED,
    Example,
    Task,
    _attach_label_choices,
    _check_text,
    _free_form,
    _join_continuation,
    _multiple_choice_example,
    _seeded_split,
)

HF_PREFIX = "hf:"
HF_MAX_TRAIN = 20_000
HF_MAX_EVAL = 500  # the shipped task's held-out size (data.RT_EVAL_SIZE)
HF_CLASSIFY_TEMPLATE = "Text: {text}\nLabel:"
HF_LICENCE_UNKNOWN = "see the dataset card on the Hugging Face hub"
EVAL_SPLIT_ORDER = ("validation", "valid", "test", "dev", "eval")
TEXT_COLUMNS = (
    "text",
    "sentence",
    "review",
    "content",
    "document",
    "tweet",
    "comment",
    "utterance",
    "body",
)
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "category")
COLUMN_KEYS = ("text", "label", "prompt", "answer", "question", "choices")
QUERY_KEYS = ("split", "eval_split", *COLUMN_KEYS, "max_train", "max_eval")
_ROLES: dict[str, tuple[str, ...]] = {
    "prompt-answer": ("prompt", "answer"),
    "multiple-choice": ("question", "choices", "answer"),
    "classification": ("text", "label"),
}
_MAX_CHOICE_CLASSES = 4 * AUTO_CHOICE_MAX_LABELS  # the limit data._attach_label_choices applies


# --------------------------------------------------------------------------- the spec


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


def _local_folder(name: str) -> Path | None:
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
    folder = _local_folder(spec.name)
    if folder is None:
        return str(text).strip()
    return format_hf_spec(replace(spec, name=str(folder)))


# --------------------------------------------------------------------------- loading


def _cache_hint() -> str:
    """Where ``datasets`` keeps downloaded datasets, named by the variables that move it."""
    from datasets import config

    return f"the datasets cache ({config.HF_DATASETS_CACHE}; set by HF_DATASETS_CACHE or HF_HOME)"


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence the datasets progress bars while loading (the app and CLI report their own)."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()
    )


def _config_names(name: str) -> list[str]:
    """The dataset's configs as ``datasets`` reports them; empty when it cannot say."""
    from datasets import get_dataset_config_names

    try:
        with _quiet_progress():
            return list(get_dataset_config_names(name))
    except Exception:  # any failure only means we cannot list them
        return []


def _translate_load_error(exc: Exception, spec: HFSpec, where: str) -> AlphaLoRAError:
    """A clear message for an exception raised by ``datasets`` while loading ``spec``."""
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    message = str(exc)
    export = (
        "or, on a machine that is online, save it with "
        "`datasets.load_dataset(...).save_to_disk(FOLDER)` and pass hf:FOLDER, or export "
        "JSONL with prompt/answer columns"
    )
    if "Dataset scripts are no longer supported" in message:
        return AlphaLoRAError(
            f"{where} is defined by a Python loading script, which is unsupported (datasets 4+ "
            "no longer runs scripts and AlphaLoRA never runs remote code). Use a version of "
            "the dataset stored as parquet/CSV/JSON files, or export it to JSONL."
        )
    if "Config name is missing" in message:
        configs = _config_names(spec.name)
        listed = f": {', '.join(configs)}" if configs else ""
        example = configs[0] if configs else "CONFIG"
        return AlphaLoRAError(
            f"{where} has several configs and needs one{listed}. Name it after a colon, e.g. "
            f"hf:{spec.name}:{example}."
        )
    if re.search(r"BuilderConfig '.*' not found", message):
        configs = _config_names(spec.name)
        listed = ", ".join(configs) if configs else message.split("Available:", 1)[-1].strip()
        return AlphaLoRAError(f"{where} has no config {spec.config!r}. Its configs are: {listed}.")
    if isinstance(exc, ConnectionError):
        return AlphaLoRAError(
            f"{where} could not be reached on the Hugging Face hub (offline, or the network is "
            f"down) and is not in {_cache_hint()}. Go online once to download it, {export}."
        )
    if isinstance(exc, DatasetNotFoundError):
        return AlphaLoRAError(
            f"{where} was not found on the Hugging Face hub or cannot be accessed ({message}). "
            "Check the id on huggingface.co/datasets (private or gated datasets need "
            "`huggingface-cli login`), or pass a local folder."
        )
    if isinstance(exc, DataFilesNotFoundError | FileNotFoundError):
        return AlphaLoRAError(
            f"{where} holds no data files that datasets can read ({message}). A dataset folder "
            "needs parquet/CSV/JSON files or must be written by save_to_disk; a hub id must "
            f"exist (and, offline, be in {_cache_hint()})."
        )
    return AlphaLoRAError(f"{where} could not be loaded: {type(exc).__name__}: {message}")


def _load_splits(spec: HFSpec) -> tuple[dict[str, Any], bool]:
    """Every split of the dataset as ``{name: datasets.Dataset}``, and whether it is local."""
    try:
        import datasets
    except ImportError as exc:
        raise AlphaLoRAError(
            "Loading Hugging Face datasets needs the `datasets` package: "
            "`pip install 'datasets>=4,<6'` (it is in requirements.txt)."
        ) from exc
    folder = _local_folder(spec.name)
    where = f"The dataset {spec.name!r}" + (f" (config {spec.config!r})" if spec.config else "")
    if folder is not None and _is_saved_to_disk(folder):
        if spec.config:
            raise AlphaLoRAError(
                f"{folder} was written by save_to_disk and has no configs; drop "
                f"':{spec.config}' from the spec."
            )
        try:
            with _quiet_progress():
                loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:  # a damaged or partly copied folder
            raise AlphaLoRAError(
                f"{folder} looks like a save_to_disk folder but cannot be read "
                f"({type(exc).__name__}: {exc}). Save the dataset again."
            ) from exc
        if isinstance(loaded, datasets.Dataset):
            return {spec.split: loaded}, True
        return dict(loaded), True
    try:
        with _quiet_progress():
            loaded = datasets.load_dataset(str(folder or spec.name), spec.config)
    except Exception as exc:  # datasets raises many types; each becomes one clear message
        raise _translate_load_error(exc, spec, where) from exc
    if isinstance(loaded, datasets.Dataset):
        return {spec.split: loaded}, folder is not None
    if not isinstance(loaded, datasets.DatasetDict):
        raise AlphaLoRAError(f"{where} loaded as {type(loaded).__name__}, not a set of splits.")
    return dict(loaded), folder is not None


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """How rows become examples: the layout name and the column for each role."""

    kind: str
    columns: dict[str, str]
    label_names: tuple[str, ...] | None = None  # class names of a ClassLabel label column


def _first_present(candidates: tuple[str, ...], columns: list[str]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def _string_columns(features: Any) -> list[str]:
    from datasets import Value

    return [
        name
        for name, feature in features.items()
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    ]


def _class_label_columns(features: Any) -> list[str]:
    from datasets import ClassLabel

    return [name for name, feature in features.items() if isinstance(feature, ClassLabel)]


def detect_layout(spec: HFSpec, features: Any, where: str) -> Layout:
    """The layout of a split with these ``features``: the explicit columns of ``spec`` where
    given, else prompt/answer, question/choices/answer or text + label by column names."""
    from datasets import ClassLabel

    columns = list(features)
    given = spec.columns()
    if {"question", "choices"} & set(given):
        kind = "multiple-choice"
    elif "prompt" in given:
        kind = "prompt-answer"
    elif {"text", "label"} & set(given):
        kind = "classification"
    elif {"question", "choices", "answer"} <= set(columns) or (
        "answer" in given and {"question", "choices"} <= set(columns)
    ):
        kind = "multiple-choice"
    elif "prompt" in columns and ("answer" in columns or "answer" in given):
        kind = "prompt-answer"
    else:
        kind = "classification"
    mixed = sorted(set(given) - set(_ROLES[kind]))
    if mixed:
        raise AlphaLoRAError(
            f"{where}: the options {mixed} do not fit the {kind} layout "
            f"({', '.join(_ROLES[kind])}); use either prompt/answer, question/choices/answer "
            "or text/label."
        )
    chosen = {role: given.get(role, role) for role in _ROLES[kind]}
    if kind == "classification":
        labels = _class_label_columns(features)
        if "label" not in given:
            chosen["label"] = _first_present(LABEL_COLUMNS, columns) or (
                labels[0] if len(labels) == 1 else ""
            )
        if "text" not in given:
            texts = [c for c in _string_columns(features) if c != chosen["label"]]
            chosen["text"] = _first_present(TEXT_COLUMNS, texts) or (
                texts[0] if len(texts) == 1 else ""
            )
        if not chosen["text"] or not chosen["label"]:
            raise AlphaLoRAError(
                f"{where} has the columns {columns}; no layout was recognised. Name the columns "
                "in the spec: ?text=COLUMN&label=COLUMN for classification, "
                "?prompt=COLUMN&answer=COLUMN, or ?question=…&choices=…&answer=…."
            )
    missing = [c for c in chosen.values() if c not in columns]
    if missing:
        raise AlphaLoRAError(
            f"{where} has no column(s) {missing}; its columns are {columns}. Name existing "
            "columns in the spec (e.g. ?text=sentence&label=label)."
        )
    names = None
    if kind == "classification":
        feature = features[chosen["label"]]
        if isinstance(feature, ClassLabel):
            names = tuple(str(n).strip() for n in feature.names)
            if len(set(names)) != len(names) or not all(names):
                raise AlphaLoRAError(
                    f"{where}: the class names of {chosen['label']!r} are empty or repeat: "
                    f"{list(feature.names)}."
                )
    return Layout(kind, chosen, names)


def _usable_label(value: Any) -> bool:
    """False for a missing label: None, NaN, an empty string, or -1 (hidden test labels)."""
    if value is None or (isinstance(value, float) and value != value):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return not (isinstance(value, int) and not isinstance(value, bool) and value == -1)


def _usable_rows(dataset: Any, layout: Layout) -> list[int]:
    """Indices of the rows whose gold answer (label/answer column) is present."""
    column = layout.columns["label" if layout.kind == "classification" else "answer"]
    values = dataset.select_columns([column]).with_format("arrow")[column].to_pylist()
    return [i for i, value in enumerate(values) if _usable_label(value)]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _mc_record(record: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """A question/choices/answer record; hub-style choices ``{"text": [...], "label": [...]}``
    become the text list, with an answer given as one of the labels turned into its index."""
    choices = record[layout.columns["choices"]]
    answer = record[layout.columns["answer"]]
    if isinstance(choices, dict) and isinstance(choices.get("text"), list):
        labels = [str(x).strip() for x in choices.get("label") or []]
        if str(answer).strip() in labels and str(answer).strip() not in choices["text"]:
            answer = labels.index(str(answer).strip())
        choices = choices["text"]
    return {"question": record[layout.columns["question"]], "choices": choices, "answer": answer}


def rows_to_examples(
    rows: list[dict[str, Any]], layout: Layout, where: str, numbers: list[int] | None = None
) -> tuple[list[Example], int]:
    """Examples from dataset rows in ``layout``; returns them and the number of rows dropped
    because a text field was empty. Malformed choices or answers raise, naming the row by its
    1-based number in the split (``numbers``, default the position in ``rows``)."""
    label = Path(where)
    examples: list[Example] = []
    dropped = 0
    cols = layout.columns
    numbers = numbers if numbers is not None else list(range(1, len(rows) + 1))
    for number, record in zip(numbers, rows, strict=True):
        if any(_empty(record[c]) for c in cols.values()):
            dropped += 1
            continue
        if layout.kind == "multiple-choice":
            examples.append(_multiple_choice_example(_mc_record(record, layout), label, number))
        elif layout.kind == "prompt-answer":
            prompt = _check_text(record[cols["prompt"]], cols["prompt"], label, number)
            answer = _check_text(record[cols["answer"]], cols["answer"], label, number)
            examples.append(Example(prompt, _join_continuation(prompt, answer.strip())))
        else:
            text = _check_text(record[cols["text"]], cols["text"], label, number).strip()
            value = record[cols["label"]]
            if layout.label_names is not None:
                if not isinstance(value, int) or not 0 <= value < len(layout.label_names):
                    raise AlphaLoRAError(
                        f"{where}: line {number}: label {value!r} is not a class index "
                        f"0-{len(layout.label_names) - 1}."
                    )
                value = layout.label_names[value]
            prompt = HF_CLASSIFY_TEMPLATE.format(text=text)
            answer = _check_text(value, cols["label"], label, number).strip()
            examples.append(Example(prompt, _join_continuation(prompt, answer)))
    return examples, dropped


# --------------------------------------------------------------------------- the task


def _convert(
    dataset: Any, indices: list[int], layout: Layout, where: str
) -> tuple[list[Example], int]:
    """Examples from the rows ``indices`` of ``dataset`` (in that order) and the number dropped."""
    if not indices:
        return [], 0
    wanted = list(dict.fromkeys(layout.columns.values()))  # never decode unused (media) columns
    rows = dataset.select_columns(wanted).select(indices).to_list()
    return rows_to_examples(rows, layout, where, [i + 1 for i in indices])


def _sample(indices: list[int], cap: int, seed: int) -> list[int]:
    """A seeded shuffle of ``indices`` cut to ``cap`` (the order is the shuffled one)."""
    order = list(indices)
    random.Random(seed).shuffle(order)
    return order[:cap]


def _no_labels(where: str, total: int) -> str:
    return (
        f"{where} has no labelled rows ({total} rows, every gold label missing or -1 as in "
        "hidden test sets)"
    )


def _check_columns(dataset: Any, layout: Layout, where: str) -> None:
    """Raise unless ``dataset`` has every column ``layout`` reads (an eval split may differ)."""
    columns = list(dataset.features)
    missing = [c for c in layout.columns.values() if c not in columns]
    if missing:
        raise AlphaLoRAError(
            f"{where} lacks the column(s) {missing} of the training split; its columns are "
            f"{columns}. Choose another eval_split."
        )


def _pick_eval_split(
    spec: HFSpec, splits: dict[str, Any], layout: Layout, label: str
) -> tuple[str | None, list[int], list[str]]:
    """The eval split's name and usable rows: ``eval_split`` if given, else the first of
    validation/test/dev with labels; (None, [], notes) when the train split must be split."""
    notes: list[str] = []
    if spec.eval_split is not None:
        if spec.eval_split not in splits:
            raise AlphaLoRAError(
                f"{label} has no split {spec.eval_split!r}; its splits are {sorted(splits)}. "
                "Pick one with ?eval_split=NAME."
            )
        where = f"{label} split {spec.eval_split!r}"
        _check_columns(splits[spec.eval_split], layout, where)
        usable = _usable_rows(splits[spec.eval_split], layout)
        if not usable:
            raise AlphaLoRAError(
                f"{_no_labels(where, len(splits[spec.eval_split]))}. Pick another eval_split or "
                "leave it out to hold out part of the training split."
            )
        return spec.eval_split, usable, notes
    for name in EVAL_SPLIT_ORDER:
        if name in splits and name != spec.split:
            _check_columns(splits[name], layout, f"{label} split {name!r}")
            usable = _usable_rows(splits[name], layout)
            if usable:
                return name, usable, notes
            notes.append(f"split {name!r} skipped for evaluation: no labelled rows")
    return None, [], notes


def _source(spec_text: str, train_split: Any) -> str:
    fingerprint = getattr(train_split, "_fingerprint", None)
    version = getattr(getattr(train_split, "info", None), "version", None)
    extra = []
    if fingerprint:
        extra.append(f"fingerprint {fingerprint}")
    if version is not None and str(version) not in ("0.0.0", ""):
        extra.append(f"version {version}")
    return spec_text + (f" ({', '.join(extra)})" if extra else "")


def _licence(train_split: Any) -> str:
    licence = getattr(getattr(train_split, "info", None), "license", None)
    return str(licence).strip() if licence and str(licence).strip() else HF_LICENCE_UNKNOWN


def _task_name(spec: HFSpec, local: bool) -> str:
    base = Path(spec.name).name if local else spec.name
    return base + (f":{spec.config}" if spec.config else "")


def _cap_note(part: str, cap: int, taken: int, total: int, seed: int) -> list[str]:
    if taken >= total:
        return []
    return [f"{part} capped at {cap}: a seeded sample (seed {seed}) of {total} labelled rows"]


def _choose_rows(
    spec: HFSpec, splits: dict[str, Any], layout: Layout, label: str, seed: int
) -> tuple[list[int], str, list[int], list[str]]:
    """Train row indices, the eval split's name and its row indices (seeded samples under the
    caps), and notes saying what was chosen."""
    train_ds = splits[spec.split]
    where = f"{label} split {spec.split!r}"
    usable = _usable_rows(train_ds, layout)
    if not usable:
        raise AlphaLoRAError(
            f"{_no_labels(where, len(train_ds))}. Pick a split with labels via ?split=NAME."
        )
    notes = [f"layout {layout.kind}: columns {layout.columns}"]
    if len(usable) < len(train_ds):
        notes.append(
            f"split {spec.split!r}: dropped {len(train_ds) - len(usable)} row(s) without a label"
        )
    eval_name, eval_rows, skipped = _pick_eval_split(spec, splits, layout, label)
    notes += skipped
    if eval_name is not None:
        train_idx = _sample(usable, spec.max_train, seed)
        eval_idx = _sample(eval_rows, spec.max_eval, seed)
        notes.append(f"evaluation on split {eval_name!r}")
        notes += _cap_note("eval", spec.max_eval, len(eval_idx), len(eval_rows), seed)
    else:
        if len(usable) < 2:
            raise AlphaLoRAError(
                f"{where} holds only {len(usable)} labelled row and no other split has labels; "
                "at least 2 are needed to hold one out for evaluation."
            )
        size = min(USER_EVAL_MAX, max(1, round(len(usable) * USER_EVAL_FRACTION)))
        size = max(1, min(size, spec.max_eval, len(usable) - 1))
        usable, eval_idx = _seeded_split(usable, size, seed)
        train_idx = usable[: spec.max_train]
        eval_name = spec.split
        notes.append(
            f"no labelled validation/test/dev split: {size} rows of split {spec.split!r} held "
            f"out for evaluation (seed {seed})"
        )
    notes += _cap_note("train", spec.max_train, len(train_idx), len(usable), seed)
    return train_idx, eval_name, eval_idx, notes


def load_hf_task(spec: str | HFSpec, *, scoring: str = "auto", seed: int = USER_SPLIT_SEED) -> Task:
    """A task from a Hugging Face dataset (hub id or local folder). The eval split is
    ``eval_split``, else validation/test/dev with labels, else a seeded hold-out of the train
    split; both are capped by a seeded sample (``max_train``, ``max_eval``)."""
    if scoring not in SCORING_MODES:
        raise AlphaLoRAError(f"scoring must be one of {', '.join(SCORING_MODES)}; got {scoring!r}.")
    parsed = parse_hf_spec(spec) if isinstance(spec, str) else spec
    spec_text = spec.strip() if isinstance(spec, str) else format_hf_spec(spec)
    splits, local = _load_splits(parsed)
    label = f"The dataset {parsed.name!r}" + (
        f" (config {parsed.config!r})" if parsed.config else ""
    )
    if parsed.split not in splits:
        raise AlphaLoRAError(
            f"{label} has no split {parsed.split!r}; its splits are {sorted(splits)}. Pick one "
            "with ?split=NAME."
        )
    train_ds = splits[parsed.split]
    train_where = f"{label} split {parsed.split!r}"
    layout = detect_layout(parsed, train_ds.features, train_where)
    train_idx, eval_name, eval_idx, notes = _choose_rows(parsed, splits, layout, label, seed)
    train, dropped_train = _convert(train_ds, train_idx, layout, train_where)
    held_out, dropped_eval = _convert(
        splits[eval_name], eval_idx, layout, f"{label} split {eval_name!r}"
    )
    for part, dropped in (("train", dropped_train), ("eval", dropped_eval)):
        if dropped:
            notes.append(f"{part}: dropped {dropped} row(s) with an empty field")
    if not train or not held_out:
        raise AlphaLoRAError(
            f"{label} leaves {len(train)} train and {len(held_out)} eval examples after dropping "
            "rows with empty fields; both need at least one."
        )
    train, held_out, choices, scoring_used, template = _score(
        train, held_out, layout, scoring, label
    )
    if scoring_used == "generate":
        notes.append("scored by greedy generation and exact match of the first line")
    return Task(
        name=_task_name(parsed, local),
        train=train,
        eval=held_out,
        template=template,
        choices=choices,
        scoring=scoring_used,
        source=_source(spec_text, train_ds),
        licence=_licence(train_ds),
        notes=notes,
    )


def _score(
    train: list[Example], held_out: list[Example], layout: Layout, scoring: str, label: str
) -> tuple[list[Example], list[Example], tuple[str, ...] | None, str, str]:
    """Attach the answer choices and pick the scoring: class names for a ClassLabel column,
    letters for multiple choice, the label set (or generation) for free text labels."""
    if layout.kind == "multiple-choice":
        if scoring == "generate":
            return _free_form(train), _free_form(held_out), None, "generate", MC_TEMPLATE
        return train, held_out, None, "choice", MC_TEMPLATE
    template = HF_CLASSIFY_TEMPLATE if layout.kind == "classification" else "{prompt}"
    if layout.label_names is not None:
        choices = tuple(_join_continuation("Label:", name) for name in layout.label_names)
        if scoring == "choice" and len(choices) < 2:
            raise AlphaLoRAError(
                f"{label}: scoring 'choice' needs at least two classes; the label column has "
                f"{len(choices)}."
            )
        if scoring == "choice" and len(choices) > _MAX_CHOICE_CLASSES:
            raise AlphaLoRAError(
                f"{label}: scoring 'choice' with {len(choices)} classes is too many candidates; "
                "use scoring 'generate'."
            )
        few = 2 <= len(choices) <= AUTO_CHOICE_MAX_LABELS  # the rule data.py applies to labels
        if scoring == "generate" or (scoring == "auto" and not few) or len(choices) < 2:
            return _free_form(train), _free_form(held_out), None, "generate", template
        train = [Example(ex.prompt, ex.answer, choices) for ex in train]
        held_out = [Example(ex.prompt, ex.answer, choices) for ex in held_out]
        return train, held_out, choices, "choice", template
    both, choices, scoring_used = _attach_label_choices(train + held_out, scoring)
    if scoring_used == "generate":
        both = _free_form(both)
    return both[: len(train)], both[len(train) :], choices, scoring_used, template
