"""Scoring a model on task examples: constrained choice (the log-likelihood of each candidate
continuation, batched) when every example has choices, else greedy generation and a strict
parser where an answer that cannot be parsed counts as wrong. Sums add up across processes."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.encoding import (
    IGNORE_INDEX,
    Features,
    collate,
    continuation_ids,
    encode_examples,
    join_truncated,
    pad_token_id,
    prompt_ids,
)
from alphalora.finetune.tasks.examples import Example

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
    correct answers and examples; and per example (index in the list scored, the predicted
    answer or None when unparsable, whether it was right) for paired comparisons."""

    loss_sum: float = 0.0
    tokens: int = 0
    correct: int = 0
    n: int = 0
    unparsable: int = 0
    predictions: list[tuple[int, str | None, bool]] = field(default_factory=list)

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
                ids = continuation_ids(tokenizer, choice)
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
    on_batch: Callable[[int], None] | None = None,
) -> list[float]:
    """Sum of log-probabilities of each (example index, choice) continuation; ``on_batch`` gets
    the number of pairs scored so far after each batch."""
    import torch

    pad_id = pad_token_id(tokenizer)
    prompt_cache: dict[int, list[int]] = {}
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        feats = []
        for index, choice in chunk:
            if index not in prompt_cache:
                prompt_cache[index] = prompt_ids(tokenizer, examples[index].prompt)
            feats.append(join_truncated(tokenizer, prompt_cache[index], table[choice], max_length))
        batch = collate(feats, pad_id)
        with torch.no_grad():
            logits = _forward_logits(model, batch, device)
            logp, mask = _answer_logprobs(logits, batch["labels"])
        scores.extend((logp * mask).sum(dim=1).tolist())
        if on_batch is not None:
            on_batch(len(scores))
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
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalCounts:
    """Raw evaluation sums (see :func:`evaluate`) so that shards can be added up.

    ``on_batch(done, total)`` is called after every batch of every pass with the number of
    examples fully scored so far and the number to score; it may raise to stop the evaluation
    (the model is put back in training mode if it was)."""
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
    total = len(examples)

    def report(done: int) -> None:
        if on_batch is not None:
            on_batch(done, total)

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
                report(0)  # scored once generated, below
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
            report(len(predictions))
        if mode == "choice":
            pending = [i for i in range(len(examples)) if i not in predictions]
            pairs = [(i, c) for i in pending for c in examples[i].choices]
            ends = list(itertools.accumulate(len(examples[i].choices) for i in pending))
            scored_before = len(predictions)

            def pairs_done(n_pairs: int) -> None:  # an example is scored once all its pairs are
                report(scored_before + bisect.bisect_right(ends, n_pairs))

            scores = _score_sequences(
                model, tokenizer, pairs, examples, table, max_length, batch_size, device,
                on_batch=pairs_done,
            )  # fmt: skip
            offset = 0
            for i in pending:
                k = len(examples[i].choices)
                chunk_scores = scores[offset : offset + k]
                predictions[i] = max(range(k), key=lambda j, s=chunk_scores: (s[j], -j))
                offset += k
            for i, ex in enumerate(examples):
                right = predictions[i] == ex.gold_index
                counts.correct += int(right)
                counts.predictions.append((i, ex.choices[predictions[i]], right))
        else:
            longest = max(len(continuation_ids(tokenizer, ex.answer)) for ex in examples)
            budget = max_new_tokens or min(256, longest + 8)
            for start in range(0, len(examples), batch_size):
                chunk_ex = examples[start : start + batch_size]
                prompts = [
                    join_truncated(
                        tokenizer, prompt_ids(tokenizer, ex.prompt), [], max_length
                    ).input_ids
                    for ex in chunk_ex
                ]
                generated = _greedy_generate(model, tokenizer, prompts, budget, device)
                for row, (ex, tokens) in enumerate(zip(chunk_ex, generated, strict=True)):
                    text = tokenizer.decode(tokens, skip_special_tokens=True)
                    parsed = parse_answer(text, ex.choices)
                    right = parsed is not None and (
                        normalise_answer(parsed) == normalise_answer(ex.answer)
                    )
                    counts.unparsable += int(parsed is None)
                    counts.correct += int(right)
                    counts.predictions.append((start + row, parsed, right))
                report(start + len(chunk_ex))
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
