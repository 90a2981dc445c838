"""Adapter files: save → fresh base → load gives the same outputs; damaged files are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, _sha256
from alphalora.finetune.moe import (
    inject_moe_lora,
    load_adapter,
    moe_modules,
    read_adapter_config,
    save_adapter,
    trainable_parameter_count,
)

ALLOCATION = {"experts": [1, 3, 2], "top_k": [1, 2, 2]}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama checkpoint on disk, so every test can load an identical fresh base."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def fresh(base_dir) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(base_dir).eval()


def trained(base_dir) -> LlamaForCausalLM:
    """An injected model whose adapters are not at their init (B ≠ 0, A and router moved)."""
    model = fresh(base_dir)
    inject_moe_lora(model, ALLOCATION, rank=4, lora_alpha=8, dropout=0.1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, module in moe_modules(model):
            for param in (module.lora_A, module.lora_B, module.router.weight):
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def test_save_then_load_on_fresh_base_gives_same_outputs(base_dir, tmp_path):
    model = trained(base_dir)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        plain = fresh(base_dir)(input_ids=ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3)  # the adapter matters

    out = save_adapter(model, tmp_path / "ad", base_model="tiny-llama", extra={"run": 7})
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])

    tensors = load_file(out / ADAPTER_WEIGHTS)
    assert len(tensors) == 3 * 7 * 3
    assert all(k.endswith(("lora_A", "lora_B", "router.weight")) for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == trainable_parameter_count(model)

    config = read_adapter_config(out)
    assert config["experts"] == [1, 3, 2] and config["top_k"] == [1, 2, 2]
    assert (config["rank"], config["lora_alpha"], config["dropout"]) == (4, 8.0, 0.1)
    assert config["targets"] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip
    assert config["base_model"] == "tiny-llama" and config["family"] == "llama"
    assert config["extra"] == {"run": 7} and config["format_version"] == 1

    reloaded = load_adapter(fresh(base_dir), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected)
    for (_, a), (_, b) in zip(moe_modules(model), moe_modules(reloaded), strict=True):
        assert (a.num_experts, a.top_k, a.rank, a.scaling) == (
            b.num_experts,
            b.top_k,
            b.rank,
            b.scaling,
        )


def test_gpt2_adapter_round_trip(tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=32)
    base = GPT2LMHeadModel(config)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    inject_moe_lora(base, {"experts": [2, 3], "top_k": [1, 2]}).eval()
    with torch.no_grad():
        for _, module in moe_modules(base):
            module.lora_B.normal_()
    ids = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    save_adapter(base, tmp_path, base_model="tiny-gpt2")
    other = GPT2LMHeadModel(config)
    other.load_state_dict(state)
    load_adapter(other, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=ids).logits, expected)


def test_missing_and_damaged_files_are_refused(base_dir, tmp_path):
    with pytest.raises(AlphaLoRAError, match="adapter_config.json is missing"):
        load_adapter(fresh(base_dir), tmp_path / "nothing")

    out = save_adapter(trained(base_dir), tmp_path / "ad", base_model="tiny-llama")
    weights = out / ADAPTER_WEIGHTS
    good = weights.read_bytes()

    # Flipped bytes in the weights: checksum mismatch.
    damaged = bytearray(good)
    damaged[-5] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    model = fresh(base_dir)
    with pytest.raises(AlphaLoRAError, match="corrupted"):
        load_adapter(model, out)
    assert not moe_modules(model)

    # Truncated weights with no checksum to compare: safetensors' own error, wrapped.
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    config.pop("weights_sha256")
    (out / ADAPTER_CONFIG).write_text(json.dumps(config))
    weights.write_bytes(good[:100])
    with pytest.raises(AlphaLoRAError, match="unreadable"):
        load_adapter(fresh(base_dir), out)

    weights.unlink()
    with pytest.raises(AlphaLoRAError, match="no weights file"):
        load_adapter(fresh(base_dir), out)

    (out / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(AlphaLoRAError, match="corrupted"):
        read_adapter_config(out)
    (out / ADAPTER_CONFIG).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(AlphaLoRAError, match="version"):
        read_adapter_config(out)
    (out / ADAPTER_CONFIG).write_text(json.dumps({**config, "rank": "eight"}))
    with pytest.raises(AlphaLoRAError, match="'rank'"):
        read_adapter_config(out)
    (out / ADAPTER_CONFIG).write_text(json.dumps({"format": "peft"}))
    with pytest.raises(AlphaLoRAError, match="not an AlphaLoRA"):
        read_adapter_config(out)


def test_strict_keys_and_wrong_base(base_dir, tmp_path):
    out = save_adapter(trained(base_dir), tmp_path / "ad", base_model="tiny-llama")
    weights = out / ADAPTER_WEIGHTS
    tensors = load_file(weights)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, weights)
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    config["weights_sha256"] = _sha256(weights)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config))
    model = fresh(base_dir)
    with pytest.raises(AlphaLoRAError, match="1 missing"):
        load_adapter(model, out)
    assert not moe_modules(model)  # left unadapted, ready for another attempt

    good = save_adapter(trained(base_dir), tmp_path / "good", base_model="tiny-llama")
    two_layers = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=97,
        )
    )
    with pytest.raises(AlphaLoRAError, match="covers 3 layers but the model has 2"):
        load_adapter(two_layers, good)
    wider = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=97,
        )
    )
    with pytest.raises(AlphaLoRAError, match="shape"):
        load_adapter(wider, good)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=97))
    with pytest.raises(AlphaLoRAError, match="llama model"):
        load_adapter(gpt2, good)


def test_save_needs_an_injected_model(base_dir, tmp_path):
    with pytest.raises(AlphaLoRAError, match="no MoE-LoRA adapter"):
        save_adapter(fresh(base_dir), tmp_path, base_model="x")
    with pytest.raises(AlphaLoRAError, match="JSON"):
        save_adapter(trained(base_dir), tmp_path, base_model="x", extra={"bad": object()})
    assert not any(tmp_path.iterdir())
