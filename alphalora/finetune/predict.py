"""A finished run's adapter, loaded on its base model and asked about new text: the text is put
in the task's prompt template and, for a classification task, every label is scored (the same
constrained choice as the evaluation) and the most likely one chosen; otherwise the answer is
generated greedily. Behind ``python -m alphalora predict RUN_ID --text …``."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import load_config
from alphalora.finetune.scoring import (
    _choice_token_table,
    _greedy_generate,
    _score_sequences,
    parse_answer,
)
from alphalora.finetune.tasks.examples import Example


@dataclass
class Prediction:
    """The answer to one text: the chosen label (with every label's log-likelihood) or the
    generated answer, and the prompt the model saw."""

    text: str
    prompt: str
    answer: str | None
    scores: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "text": self.text,
            "prompt": self.prompt,
            "answer": self.answer,
            "scores": self.scores,
        }


@dataclass
class LoadedRun:
    """A run's fine-tuned model ready to answer, with its task's template and labels."""

    run_id: str
    model: Any
    tokenizer: Any
    template: str
    choices: tuple[str, ...] | None
    max_length: int


def fill_template(template: str, text: str) -> str:
    """``text`` put into a task template with one field (``Review: {text}\\nSentiment:``);
    a template with no or several fields (multiple choice) takes the text as the prompt."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if len(fields) != 1:
        return text
    return template.replace("{" + fields.pop() + "}", text)


def _task_info(run: dict, task_ref: str) -> tuple[str, tuple[str, ...] | None]:
    task = (run.get("summary") or {}).get("task")
    if not isinstance(task, dict) or "template" not in task:  # e.g. a recovered row
        from alphalora.finetune.tasks.load import load_task

        loaded = load_task(task_ref)
        task = {"template": loaded.template, "choices": loaded.choices}
    choices = task.get("choices")
    return str(task["template"]), None if not choices else tuple(str(c) for c in choices)


def load_run(run_id: str, store: Any = None, device: str = "cpu") -> LoadedRun:
    """The base model of run ``run_id`` with its saved adapter (MoE-LoRA or plain LoRA)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alphalora.finetune.resolve import resolve_model_path
    from alphalora.store.run_store import RunStore

    store = store if store is not None else RunStore()
    run = store.get_run(run_id)
    adapter = Path(run["adapter_path"]) if run.get("adapter_path") else None
    if adapter is None or not adapter.is_dir():
        raise AlphaLoRAError(
            f"Run {run_id} has no saved adapter (it is {run['status']}); predictions need a "
            "completed run. Resume it with `python -m alphalora runs resume` first."
        )
    if not isinstance(run.get("config"), dict):
        raise AlphaLoRAError(f"Run {run_id} has no readable config; it cannot be loaded.")
    config = load_config(run["config"])
    path = resolve_model_path(config.model)
    kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise AlphaLoRAError(f"Could not load the base model {config.model}: {exc}") from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.method == "moe-lora":
        from alphalora.finetune.adapters import load_adapter

        load_adapter(model, adapter)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.to(device).eval()
    template, choices = _task_info(run, config.task)
    return LoadedRun(run_id, model, tokenizer, template, choices, config.max_length)


def predict(
    loaded: LoadedRun, texts: list[str], *, raw: bool = False, max_new_tokens: int = 32
) -> list[Prediction]:
    """Answer each text: the most likely label of a classification task (scores included),
    else a greedy generation cut at its first line. ``raw`` uses each text as the prompt."""
    from alphalora.finetune.encoding import join_truncated, prompt_ids
    from alphalora.finetune.scoring import _model_device

    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise AlphaLoRAError("Give at least one non-empty --text to answer.")
    model, tok = loaded.model, loaded.tokenizer
    device = _model_device(model)
    prompts = [t if raw else fill_template(loaded.template, t) for t in texts]
    if loaded.choices:
        choices = loaded.choices
        examples = [Example(p, choices[0], choices) for p in prompts]
        table = _choice_token_table(tok, examples)
        pairs = [(i, c) for i in range(len(examples)) for c in choices]
        flat = _score_sequences(model, tok, pairs, examples, table, loaded.max_length, 8, device)
        out = []
        for i, (text, prompt) in enumerate(zip(texts, prompts, strict=True)):
            scores = dict(
                zip(choices, flat[i * len(choices) : (i + 1) * len(choices)], strict=True)
            )
            best = max(range(len(choices)), key=lambda j, s=scores: (s[choices[j]], -j))
            named = {c.strip(): v for c, v in scores.items()}
            out.append(Prediction(text, prompt, choices[best].strip(), named))
        return out
    ids = [
        join_truncated(tok, prompt_ids(tok, p), [], loaded.max_length).input_ids for p in prompts
    ]
    generated = _greedy_generate(model, tok, ids, max_new_tokens, device)
    return [
        Prediction(text, prompt, parse_answer(tok.decode(tokens, skip_special_tokens=True)))
        for text, prompt, tokens in zip(texts, prompts, generated, strict=True)
    ]
