"""Tiny random models of every supported family, saved to disk for tests (no download).

Each ``save_tiny_<family>(folder)`` builds a randomly initialised transformers model (hidden 32,
2 layers, vocab 128), saves it with safetensors and returns the folder. ``with_tokenizer=True``
also writes a character-level tokenizer, enough to tokenise, train and generate offline.
``write_tiny_gguf`` writes a small quantised llama-architecture GGUF with gguf's own writer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

VOCAB = 128
HIDDEN = 32
LAYERS = 2
INTERMEDIATE = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS

#: Block kinds each family's table must produce, per layer (what the tests check).
EXPECTED_KINDS: dict[str, set[str]] = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gpt2": {"qkv", "o_proj", "up_proj", "down_proj"},
    "bert": {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"},
    "phi3": {"qkv", "o_proj", "gate_up", "down_proj"},
}


def _decoder_kwargs(**extra) -> dict:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kwargs.update(extra)
    return kwargs


def _save(model: torch.nn.Module, folder: str | Path, with_tokenizer: bool) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if with_tokenizer:
        save_tiny_tokenizer(folder)
    return folder


def _build(config_cls_name: str, model_cls_name: str, seed: int, **config_kwargs):
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, config_cls_name)(**config_kwargs)
    return getattr(transformers, model_cls_name)(config)


def save_tiny_llama(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``LlamaForCausalLM`` (model_type llama, untied lm_head)."""
    model = _build(
        "LlamaConfig", "LlamaForCausalLM", seed, **_decoder_kwargs(tie_word_embeddings=False)
    )
    return _save(model, folder, with_tokenizer)


def save_tiny_mistral(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``MistralForCausalLM``."""
    model = _build(
        "MistralConfig", "MistralForCausalLM", seed, **_decoder_kwargs(head_dim=HEAD_DIM)
    )
    return _save(model, folder, with_tokenizer)


def save_tiny_qwen2(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``Qwen2ForCausalLM`` (q/k/v with biases)."""
    model = _build("Qwen2Config", "Qwen2ForCausalLM", seed, **_decoder_kwargs())
    return _save(model, folder, with_tokenizer)


def save_tiny_qwen3(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``Qwen3ForCausalLM`` (q/k norms)."""
    model = _build("Qwen3Config", "Qwen3ForCausalLM", seed, **_decoder_kwargs(head_dim=HEAD_DIM))
    return _save(model, folder, with_tokenizer)


def save_tiny_gemma(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``GemmaForCausalLM`` (tied embeddings)."""
    model = _build("GemmaConfig", "GemmaForCausalLM", seed, **_decoder_kwargs(head_dim=HEAD_DIM))
    return _save(model, folder, with_tokenizer)


def save_tiny_gemma2(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``Gemma2ForCausalLM``."""
    model = _build("Gemma2Config", "Gemma2ForCausalLM", seed, **_decoder_kwargs(head_dim=HEAD_DIM))
    return _save(model, folder, with_tokenizer)


def save_tiny_gemma3(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny text-only Gemma 3 (``Gemma3ForCausalLM``, model_type gemma3_text)."""
    model = _build(
        "Gemma3TextConfig", "Gemma3ForCausalLM", seed, **_decoder_kwargs(head_dim=HEAD_DIM)
    )
    return _save(model, folder, with_tokenizer)


def save_tiny_phi3(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``Phi3ForCausalLM`` (fused ``qkv_proj`` and ``gate_up_proj``)."""
    model = _build("Phi3Config", "Phi3ForCausalLM", seed, **_decoder_kwargs())
    return _save(model, folder, with_tokenizer)


def save_tiny_gpt2(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``GPT2LMHeadModel`` (``Conv1D`` weights stored (in, out))."""
    model = _build(
        "GPT2Config",
        "GPT2LMHeadModel",
        seed,
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return _save(model, folder, with_tokenizer)


def save_tiny_bert(folder: str | Path, *, seed: int = 0, with_tokenizer: bool = False) -> Path:
    """Tiny ``BertModel`` (an encoder, named like all-MiniLM-L6-v2)."""
    model = _build(
        "BertConfig",
        "BertModel",
        seed,
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    return _save(model, folder, with_tokenizer)


#: family name (config.json model_type) → saver, for parametrised tests.
TINY_SAVERS: dict[str, Callable[..., Path]] = {
    "llama": save_tiny_llama,
    "mistral": save_tiny_mistral,
    "qwen2": save_tiny_qwen2,
    "qwen3": save_tiny_qwen3,
    "gemma": save_tiny_gemma,
    "gemma2": save_tiny_gemma2,
    "gemma3_text": save_tiny_gemma3,
    "phi3": save_tiny_phi3,
    "gpt2": save_tiny_gpt2,
    "bert": save_tiny_bert,
}


def save_tiny_tokenizer(folder: str | Path) -> Path:
    """A character-level fast tokenizer (printable ASCII + specials, < 128 ids) in ``folder``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_sharded(folder: str | Path, *, n_shards: int = 3, seed: int = 0) -> Path:
    """A tiny llama split by hand into ``n_shards`` safetensors files plus the index JSON."""
    from safetensors.torch import load_file, save_file

    folder = save_tiny_llama(folder, seed=seed)
    single = folder / "model.safetensors"
    state = load_file(single)
    single.unlink()
    names = sorted(state)
    groups = [names[i::n_shards] for i in range(n_shards)]
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, start=1):
        shard = f"model-{i:05d}-of-{n_shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in group}, str(folder / shard), {"format": "pt"})
        for k in group:
            weight_map[k] = shard
            total += state[k].numel() * state[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_tiny_gguf(
    path: str | Path,
    *,
    qtype: str = "Q4_0",
    n_layers: int = LAYERS,
    hidden: int = 64,
    ff: int = 128,
    vocab: int = VOCAB,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a llama-architecture GGUF whose block matrices are quantised to ``qtype``.

    Returns the original float32 weights keyed by GGUF tensor name, stored (out, in). Sizes
    must be multiples of 32 (the quantisation block). Norms stay F32, embeddings F16.
    """
    import gguf

    rng = np.random.default_rng(seed)
    kv = hidden // 2
    quant = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_block_count(n_layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    originals: dict[str, np.ndarray] = {}

    def add(name: str, array: np.ndarray, kind: str) -> None:
        originals[name] = array
        if kind == "quant":
            writer.add_tensor(name, gguf.quants.quantize(array, quant), raw_dtype=quant)
        elif kind == "f16":
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, array)

    def matrix(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    add("token_embd.weight", matrix(vocab, hidden), "f16")
    for n in range(n_layers):
        add(f"blk.{n}.attn_norm.weight", np.ones(hidden, dtype=np.float32), "f32")
        add(f"blk.{n}.attn_q.weight", matrix(hidden, hidden), "quant")
        add(f"blk.{n}.attn_k.weight", matrix(kv, hidden), "quant")
        add(f"blk.{n}.attn_v.weight", matrix(kv, hidden), "quant")
        add(f"blk.{n}.attn_output.weight", matrix(hidden, hidden), "quant")
        add(f"blk.{n}.ffn_norm.weight", np.ones(hidden, dtype=np.float32), "f32")
        add(f"blk.{n}.ffn_gate.weight", matrix(ff, hidden), "quant")
        add(f"blk.{n}.ffn_up.weight", matrix(ff, hidden), "quant")
        add(f"blk.{n}.ffn_down.weight", matrix(hidden, ff), "quant")
    add("output_norm.weight", np.ones(hidden, dtype=np.float32), "f32")
    add("output.weight", matrix(vocab, hidden), "quant")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return originals
