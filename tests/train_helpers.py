"""Builders for training tests: a word-level tokenizer, a tiny Llama saved as an HF folder,
a toy sentiment dataset, and fake language models whose predictions are known in advance."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import torch

POSITIVE = ["great", "good", "lovely", "fun", "moving", "superb", "smart", "warm"]
NEGATIVE = ["bad", "dull", "awful", "boring", "weak", "clumsy", "tired", "flat"]
FILLER = ["the", "film", "movie", "plot", "cast", "was", "is", "very", "quite", "a", "story"]
TEMPLATE_WORDS = ["Review", "Sentiment", "Question", "Answer", "A", "B", "C", "D", ":", "."]
ANSWERS = ["positive", "negative", "yes", "no", "maybe"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def vocabulary(extra: list[str] | None = None) -> list[str]:
    """Every word the toy data can use, specials first (pad 0, bos 1, eos 2, unk 3)."""
    words = SPECIALS + sorted(set(POSITIVE + NEGATIVE + FILLER + TEMPLATE_WORDS + ANSWERS))
    for word in extra or []:
        if word not in words:
            words.append(word)
    return words


def make_tokenizer(extra: list[str] | None = None, add_bos: bool = True):
    """A word-level fast tokenizer (whitespace/punctuation split) with pad/bos/eos/unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(extra))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def make_tiny_llama(vocab_size: int, *, layers: int = 2, hidden: int = 32, seed: int = 0):
    """A randomly initialised 2-layer Llama small enough to train in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_model(folder: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer as a Hugging Face folder (safetensors) and return it."""
    folder = Path(folder)
    tokenizer = make_tokenizer()
    model = make_tiny_llama(len(tokenizer), layers=layers, hidden=hidden, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def toy_reviews(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Synthetic sentiment rows (prompt/answer): one polar word decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        polar = rng.choice(POSITIVE if positive else NEGATIVE)
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), polar)
        rows.append(
            {
                "prompt": f"Review: {' '.join(words)}\nSentiment:",
                "answer": "positive" if positive else "negative",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class RuleLM(torch.nn.Module):
    """A fake causal LM: the next token after token ``t`` is ``rule(t)`` with logit 10, every
    other token 0 — so every log-likelihood and every greedy generation is known exactly."""

    def __init__(self, vocab_size: int, rule):
        super().__init__()
        self.vocab_size = vocab_size
        self.rule = rule
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        nxt = torch.tensor(
            [[self.rule(int(t)) for t in row] for row in input_ids.tolist()], dtype=torch.long
        )
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits.scatter_(2, nxt.unsqueeze(-1), 10.0)
        return SimpleNamespace(logits=logits + 0 * self.dummy)
