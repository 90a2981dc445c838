"""The name → (layer, kind) tables, family detection and the GGUF → HF name mapping."""

from __future__ import annotations

import pytest

from alphalora.spectral.naming import (
    BLOCK_KINDS,
    canonical_family,
    detect_family,
    gguf_to_hf,
    is_conv1d,
    parse_name,
)

LLAMA_LIKE = ["llama", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3"]


@pytest.mark.parametrize("family", LLAMA_LIKE + [None])
@pytest.mark.parametrize(
    ("module", "kind"),
    [
        ("self_attn.q_proj", "q_proj"),
        ("self_attn.k_proj", "k_proj"),
        ("self_attn.v_proj", "v_proj"),
        ("self_attn.o_proj", "o_proj"),
        ("mlp.gate_proj", "gate_proj"),
        ("mlp.up_proj", "up_proj"),
        ("mlp.down_proj", "down_proj"),
    ],
)
def test_llama_family_table(family, module, kind):
    assert parse_name(f"model.layers.17.{module}.weight", family) == (17, kind)


def test_multimodal_prefix_and_towers():
    assert parse_name("language_model.model.layers.4.mlp.up_proj.weight", "gemma3") == (
        4,
        "up_proj",
    )
    tower = "vision_tower.vision_model.encoder.layers.4.self_attn.q_proj.weight"
    assert parse_name(tower, "gemma3") == (None, "other")


@pytest.mark.parametrize("prefix", ["transformer.", ""])
@pytest.mark.parametrize(
    ("module", "kind"),
    [
        ("attn.c_attn", "qkv"),
        ("attn.c_proj", "o_proj"),
        ("mlp.c_fc", "up_proj"),
        ("mlp.c_proj", "down_proj"),
    ],
)
def test_gpt2_table(prefix, module, kind):
    name = f"{prefix}h.11.{module}.weight"
    assert parse_name(name, "gpt2") == (11, kind)
    assert parse_name(name) == (11, kind)
    assert is_conv1d(name, "gpt2")
    assert not is_conv1d(name, "gpt_bigcode")  # same names, but nn.Linear there
    assert not is_conv1d(name.replace(".weight", ".bias"), "gpt2")


@pytest.mark.parametrize("prefix", ["", "bert."])
@pytest.mark.parametrize(
    ("module", "kind"),
    [
        ("attention.self.query", "q_proj"),
        ("attention.self.key", "k_proj"),
        ("attention.self.value", "v_proj"),
        ("attention.output.dense", "o_proj"),
        ("intermediate.dense", "up_proj"),
        ("output.dense", "down_proj"),
    ],
)
def test_bert_table(prefix, module, kind):
    name = f"{prefix}encoder.layer.5.{module}.weight"
    assert parse_name(name, "bert") == (5, kind)
    assert parse_name(name) == (5, kind)
    assert parse_name(name, "deberta") == (5, kind)  # unknown family: every table is tried


@pytest.mark.parametrize(
    ("module", "kind"),
    [
        ("self_attn.qkv_proj", "qkv"),
        ("self_attn.o_proj", "o_proj"),
        ("mlp.gate_up_proj", "gate_up"),
        ("mlp.down_proj", "down_proj"),
    ],
)
def test_phi3_fused_table(module, kind):
    assert parse_name(f"model.layers.2.{module}.weight", "phi3") == (2, kind)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.decoder.layers.3.fc1.weight", (3, "up_proj")),  # OPT
        ("model.decoder.layers.3.self_attn.out_proj.weight", (3, "o_proj")),
        ("gpt_neox.layers.2.attention.query_key_value.weight", (2, "qkv")),
        ("gpt_neox.layers.2.mlp.dense_4h_to_h.weight", (2, "down_proj")),
        ("encoder.block.1.layer.0.SelfAttention.q.weight", (1, "q_proj")),  # T5
        ("blocks.5.mixer.in_proj.weight", (5, "in_proj")),  # unknown: the module's own name
        ("model.layers.7.mlp.experts.3.gate_proj.weight", (7, "gate_proj")),  # MoE expert
        ("net.layer.12.3.weight", (12, "3")),
        ("model.layers.0.input_layernorm.weight", (0, "input_layernorm")),  # 1-D, skipped later
    ],
)
def test_generic_fallback(name, expected):
    assert parse_name(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.embed_tokens.weight", (None, "embedding")),
        ("transformer.wte.weight", (None, "embedding")),
        ("transformer.wpe.weight", (None, "embedding")),
        ("embeddings.word_embeddings.weight", (None, "embedding")),
        ("lm_head.weight", (None, "lm_head")),
        ("gpt_neox.embed_out.weight", (None, "lm_head")),
        ("model.norm.weight", (None, "other")),
        ("pooler.dense.weight", (None, "other")),
        ("classifier.weight", (None, "other")),
        ("token_embd.weight", (None, "embedding")),
        ("output.weight", (None, "lm_head")),
        ("", (None, "other")),
    ],
)
def test_non_block_names(name, expected):
    assert parse_name(name) == expected


def test_block_kinds_are_canonical():
    assert set(BLOCK_KINDS) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "gate_up",
    }  # fmt: skip
    assert canonical_family("Qwen2") == "llama"
    assert canonical_family("gpt2") == "gpt2"
    assert canonical_family("mamba") is None
    assert canonical_family(None) is None


def test_detect_family_from_config_then_names():
    assert detect_family({"model_type": "Qwen2"}, []) == "qwen2"
    assert detect_family({"architectures": ["GPT2LMHeadModel"]}, []) == "gpt2"
    assert detect_family({}, ["h.0.attn.c_attn.weight"]) == "gpt2"
    assert detect_family(None, ["encoder.layer.0.attention.self.query.weight"]) == "bert"
    assert detect_family({}, ["model.layers.0.self_attn.qkv_proj.weight"]) == "phi3"
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    assert detect_family({}, names) == "llama"
    assert detect_family({}, ["blocks.0.w.weight"]) == "unknown"


@pytest.mark.parametrize(
    ("stored", "hf", "layer", "kind"),
    [
        ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight", 3, "q_proj"),
        ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight", 3, "k_proj"),
        ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight", 3, "v_proj"),
        ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight", 3, "o_proj"),
        ("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight", 3, "gate_proj"),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight", 3, "up_proj"),
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight", 3, "down_proj"),
        ("blk.0.attn_qkv.weight", "model.layers.0.self_attn.qkv_proj.weight", 0, "qkv"),
        ("token_embd.weight", "model.embed_tokens.weight", None, "embedding"),
        ("output.weight", "lm_head.weight", None, "lm_head"),
        ("blk.1.ffn_gate_inp.weight", "blk.1.ffn_gate_inp.weight", 1, "ffn_gate_inp"),
        ("rope_freqs.weight", "rope_freqs.weight", None, "other"),
    ],
)
def test_gguf_llama_names(stored, hf, layer, kind):
    assert gguf_to_hf(stored, "llama") == (hf, layer, kind)
    assert parse_name(stored) == (layer, kind)


def test_gguf_other_architectures():
    assert gguf_to_hf("blk.2.ffn_up.weight", "phi3", fused_gate_up=True) == (
        "model.layers.2.mlp.gate_up_proj.weight",
        2,
        "gate_up",
    )
    assert gguf_to_hf("blk.2.attn_qkv.weight", "gpt2") == (
        "transformer.h.2.attn.c_attn.weight",
        2,
        "qkv",
    )
    assert gguf_to_hf("blk.2.ffn_up.weight", "gpt2") == (
        "transformer.h.2.mlp.c_fc.weight",
        2,
        "up_proj",
    )
    assert gguf_to_hf("blk.1.attn_v.weight", "bert") == (
        "encoder.layer.1.attention.self.value.weight",
        1,
        "v_proj",
    )
    assert gguf_to_hf("blk.1.ffn_down.weight", "qwen2")[0] == "model.layers.1.mlp.down_proj.weight"
