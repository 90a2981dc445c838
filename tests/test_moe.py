"""MoE-LoRA layer, balancing loss, injection and the peft baseline (CPU, tiny models)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.pytorch_utils import Conv1D

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.moe import (
    MoELoRALinear,
    clear_router_state,
    inject_moe_lora,
    load_balancing_loss,
    make_peft_lora,
    moe_modules,
    remove_moe_lora,
    route,
    router_load,
    switch_balance_loss,
    trainable_parameter_count,
)

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(layers: int = 3, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=97,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def randomise_b(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in moe_modules(model):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.1)


def loop_reference(module: MoELoRALinear, x: torch.Tensor) -> torch.Tensor:
    """Per-expert loop in MoLA style: route, then for each expert gather its tokens, apply its
    LoRA, weight it and add it back. Dropout must be 0."""
    n, k, r = module.num_experts, module.top_k, module.rank
    flat = x.reshape(-1, module.in_features)
    logits = F.linear(flat.float(), module.router.weight.float())
    weights, index = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    delta = torch.zeros(flat.shape[0], module.out_features, dtype=module.lora_A.dtype)
    for expert in range(n):
        token, slot = torch.where(index == expert)
        if token.numel() == 0:
            continue
        a = module.lora_A[expert * r : (expert + 1) * r]
        b = module.lora_B[:, expert * r : (expert + 1) * r]
        y = (flat[token].to(a.dtype) @ a.T) @ b.T * module.scaling
        delta = delta.index_add(0, token, y * weights[token, slot, None].to(y.dtype))
    return module.base(x) + delta.view(*x.shape[:-1], module.out_features).to(x.dtype)


def make_layer(n: int, k: int, r: int, *, d_in=16, d_out=24, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, dtype=dtype)
    layer = MoELoRALinear(base, n, k, rank=r, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


# --------------------------------------------------------------------------- the layer maths


@pytest.mark.parametrize(
    "n,k,r", [(1, 1, 8), (2, 1, 4), (2, 2, 8), (4, 2, 8), (6, 3, 2), (8, 2, 8), (5, 1, 1)]
)
def test_stacked_layer_matches_per_expert_loop(n, k, r):
    layer = make_layer(n, k, r)
    x = torch.randn(3, 11, 16, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(3, 11, 24, dtype=torch.float64)
    params = [layer.lora_A, layer.lora_B, layer.router.weight, x]

    ours = layer(x)
    ref = loop_reference(layer, x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(ours, params, cotangent)
    ref_grads = torch.autograd.grad(ref, params, cotangent)
    for name, got, want in zip(["A", "B", "router", "x"], grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8, msg=f"gradient of {name}")
        if n > 1 or name in ("A", "B", "x"):
            assert got.abs().sum() > 0, f"gradient of {name} is identically zero"


def test_unselected_expert_gets_exactly_zero_gradient_but_stays_in_graph():
    layer = make_layer(4, 2, 4)
    with torch.no_grad():
        layer.router.weight[3] = -10.0  # positive inputs → expert 3 always last
    x = torch.rand(2, 9, 16, dtype=torch.float64) + 0.1
    layer(x)
    assert not (layer.last_index == 3).any()
    out = layer(x)
    grad_a, grad_b, grad_router = torch.autograd.grad(
        out.square().sum(), [layer.lora_A, layer.lora_B, layer.router.weight]
    )
    assert torch.count_nonzero(grad_a[12:16]) == 0
    assert torch.count_nonzero(grad_b[:, 12:16]) == 0
    assert grad_router[3].abs().max() < 1e-30  # zero up to rounding of the renormalisation
    assert torch.count_nonzero(grad_a[:12]) > 0 and torch.count_nonzero(grad_router[:3]) > 0


def test_route_renormalises_top_k():
    torch.manual_seed(0)
    logits = torch.randn(10, 6)
    probs, gate, index = route(logits, 2)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    torch.testing.assert_close(gate.sum(-1), torch.ones(10))
    assert ((gate > 0).sum(-1) == 2).all()
    picked = probs.gather(-1, index)
    torch.testing.assert_close(gate.gather(-1, index), picked / picked.sum(-1, keepdim=True))
    sorted_probs = probs.sort(-1, descending=True).values
    torch.testing.assert_close(picked.sort(-1, descending=True).values, sorted_probs[:, :2])


def test_top1_gate_is_one_hot_and_single_expert_gate_is_one():
    _, gate, index = route(torch.randn(7, 5), 1)
    torch.testing.assert_close(gate, F.one_hot(index[:, 0], 5).float())
    _, gate1, _ = route(torch.randn(7, 1), 1)
    torch.testing.assert_close(gate1, torch.ones(7, 1))


def test_single_expert_layer_is_plain_lora():
    layer = make_layer(1, 1, 8)
    x = torch.randn(4, 16, dtype=torch.float64)
    expected = layer.base(x) + layer.scaling * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_invalid_layer_settings_raise():
    with pytest.raises(AlphaLoRAError, match="top-k"):
        MoELoRALinear(nn.Linear(4, 4), 2, 3)
    with pytest.raises(AlphaLoRAError, match="at least 1 expert"):
        MoELoRALinear(nn.Linear(4, 4), 0, 1)
    with pytest.raises(AlphaLoRAError, match="Conv1D"):
        MoELoRALinear(nn.Conv2d(4, 4, 1), 2, 1)


def test_router_is_float32_under_bf16_input_and_autocast():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(16, 8, dtype=torch.bfloat16), 4, 2, dropout=0.0).train()
    assert layer.lora_A.dtype == torch.float32 and layer.router.weight.dtype == torch.float32
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert layer.last_probs.dtype == torch.float32
    torch.testing.assert_close(
        layer.last_probs, torch.softmax(x.float().reshape(-1, 16) @ layer.router.weight.T, -1)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.router_logits(x.reshape(-1, 16)).dtype == torch.float32
        layer(x)
    assert layer.last_probs.dtype == torch.float32


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(32, 32), 2, 1, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(8, 32)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


# --------------------------------------------------------------------------- balancing loss


def test_balancing_loss_hand_computed():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    index = probs.argmax(-1, keepdim=True)
    # f = (3/4, 1/4), P = (0.6, 0.4): 2·(0.45 + 0.10) = 1.1
    torch.testing.assert_close(switch_balance_loss(probs, index), torch.tensor(1.1))
    # last token masked: f = (2/3, 1/3), P = (0.5, 0.5): 2·(1/3 + 1/6) = 1.0
    mask = torch.tensor([1, 1, 1, 0])
    torch.testing.assert_close(switch_balance_loss(probs, index, mask), torch.tensor(1.0))
    # k = 2 with two experts: f = (1/2, 1/2) whatever the router does → N·Σ P_i / 2 = 1
    both = torch.tensor([[0, 1]] * 4)
    torch.testing.assert_close(switch_balance_loss(probs, both), torch.tensor(1.0))


def test_balancing_loss_is_differentiable_and_pushes_towards_balance():
    logits = torch.tensor([[2.0, 0.0, -1.0]] * 5, requires_grad=True)
    probs, _, index = route(logits, 1)
    loss = switch_balance_loss(probs, index)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() > 1.0
    assert grad[:, 0].sum() > 0  # gradient descent lowers the overloaded expert's logit


def test_model_balancing_loss_sums_layers_and_masks_padding():
    model = tiny_llama()
    inject_moe_lora(model, {"experts": [1, 3, 4], "top_k": [1, 2, 2]}, dropout=0.0)
    model.train()
    ids = torch.randint(0, 97, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    model(input_ids=ids, attention_mask=mask)
    full = load_balancing_loss(model)
    masked = load_balancing_loss(model, mask)
    assert not torch.isclose(full, masked)

    # Layer sum by hand: concatenate the 7 modules of each layer.
    weight = mask.reshape(-1).float()
    by_hand = torch.zeros(())
    for layer in range(3):
        mods = [m for _, m in moe_modules(model) if m.layer_index == layer]
        assert len(mods) == 7
        probs = torch.cat([m.last_probs for m in mods])
        index = torch.cat([m.last_index for m in mods])
        by_hand = by_hand + switch_balance_loss(probs, index, weight.repeat(7))
    torch.testing.assert_close(masked, by_hand)

    # Changing the padded tokens (right padding, causal model) leaves the masked loss alone.
    ids2 = ids.clone()
    ids2[1, 5:] = (ids2[1, 5:] + 13) % 97
    model(input_ids=ids2, attention_mask=mask)
    torch.testing.assert_close(load_balancing_loss(model, mask), masked)
    assert not torch.isclose(load_balancing_loss(model), full)

    # Differentiable: the routers of multi-expert layers get a gradient; N = 1 layers add 1.
    load_balancing_loss(model, mask).backward()
    for _, module in moe_modules(model):
        grad = module.router.weight.grad
        assert grad is not None
        assert (grad.abs().sum() > 0) == (module.num_experts > 1)

    with pytest.raises(AlphaLoRAError, match="attention mask"):
        load_balancing_loss(model, torch.ones(3, 8))


def test_router_load_and_state_errors():
    model = tiny_llama()
    inject_moe_lora(model, {"experts": [1, 3, 4], "top_k": [1, 2, 2]})
    with pytest.raises(AlphaLoRAError, match="forward"):
        load_balancing_loss(model)
    model(input_ids=torch.randint(0, 97, (2, 6)))
    load = router_load(model)
    assert [len(row) for row in load] == [1, 3, 4]
    for row in load:
        assert sum(row) == pytest.approx(1.0)
    assert model.model.layers[1].mlp.up_proj.last_probs.grad_fn is None  # eval: detached
    clear_router_state(model)
    with pytest.raises(AlphaLoRAError, match="forward"):
        router_load(model)
    with pytest.raises(AlphaLoRAError, match="no MoE-LoRA"):
        load_balancing_loss(tiny_llama())


def test_balancing_loss_under_gradient_checkpointing():
    model = tiny_llama()
    inject_moe_lora(model, {"experts": [2, 3, 4], "top_k": [2, 2, 2]})
    ids = torch.randint(0, 97, (2, 6))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    out = model(input_ids=ids, labels=ids)
    (out.loss + 0.001 * load_balancing_loss(model)).backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for _, m in moe_modules(model))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    model(input_ids=ids, labels=ids)
    with pytest.raises(AlphaLoRAError, match="use_reentrant"):
        load_balancing_loss(model)
    with torch.no_grad():
        assert load_balancing_loss(model) > 0  # logging under no_grad is fine


# --------------------------------------------------------------------------- injection


def test_injection_on_tiny_llama_non_uniform_allocation():
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    allocation = SimpleNamespace(experts=(2, 1, 5), top_k=(2, 2, 3))
    inject_moe_lora(model, allocation)
    mods = moe_modules(model)
    assert len(mods) == 3 * 7
    expected_params = 0
    for name, module in mods:
        assert name.rsplit(".", 1)[-1] in LLAMA_TARGETS
        assert module.num_experts == (2, 1, 5)[module.layer_index]
        assert module.top_k == (2, 1, 3)[module.layer_index]
        assert module.lora_A.shape == (module.num_experts * 8, module.in_features)
        assert module.lora_B.shape == (module.out_features, module.num_experts * 8)
        expected_params += module.num_experts * (
            8 * (module.in_features + module.out_features) + module.in_features
        )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B", "router.weight")) for n in trainable)
    assert trainable_parameter_count(model) == expected_params
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before)  # B = 0 at init


def test_every_adapter_parameter_gets_a_gradient_each_step():
    model = tiny_llama()
    inject_moe_lora(model, {"experts": [2, 4, 8], "top_k": [1, 2, 2]}, dropout=0.0)
    randomise_b(model)
    model.train()
    ids = torch.randint(0, 97, (1, 4))
    out = model(input_ids=ids, labels=ids)
    (out.loss + 0.001 * load_balancing_loss(model)).backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


def test_accepts_an_allocation_object():
    from alphalora.allocation.shapes import mola_shape

    model = tiny_llama(layers=4)
    inject_moe_lora(model, mola_shape("2468", 4), targets=["q_proj"])
    assert [m.num_experts for _, m in moe_modules(model)] == [2, 4, 6, 8]
    assert [m.top_k for _, m in moe_modules(model)] == [2, 2, 2, 2]


def test_injection_errors():
    model = tiny_llama()
    with pytest.raises(AlphaLoRAError, match=r"covers 2 layers.*has 3 transformer layers"):
        inject_moe_lora(model, {"experts": [2, 2], "top_k": [2, 2]})
    with pytest.raises(AlphaLoRAError, match="up_proj"):
        inject_moe_lora(model, {"experts": [2, 2, 2], "top_k": 2}, targets=["wq", "wk"])
    with pytest.raises(AlphaLoRAError, match="expert counts but"):
        inject_moe_lora(model, {"experts": [2, 2, 2], "top_k": [2, 2]})
    with pytest.raises(AlphaLoRAError, match="no 'experts'"):
        inject_moe_lora(model, {"top_k": [2, 2, 2]})
    assert not moe_modules(model)
    assert all(p.requires_grad for p in model.parameters())  # failed calls touched nothing
    inject_moe_lora(model, {"experts": [2, 2, 2], "top_k": 2}, targets=["q_proj", "v_proj"])
    assert len(moe_modules(model)) == 6
    with pytest.raises(AlphaLoRAError, match="already has MoE-LoRA"):
        inject_moe_lora(model, {"experts": [2, 2, 2], "top_k": 2})
    remove_moe_lora(model)
    assert not moe_modules(model)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)


def test_gpt2_conv1d_injection():
    model = tiny_gpt2()
    ids = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    inject_moe_lora(model, {"experts": [3, 2], "top_k": [2, 1]}, targets="auto", dropout=0.0)
    mods = dict(moe_modules(model))
    assert sorted({n.rsplit(".", 1)[-1] for n in mods}) == ["c_attn", "c_fc", "c_proj"]
    assert len(mods) == 8
    fc = mods["transformer.h.0.mlp.c_fc"]
    assert isinstance(fc.base, Conv1D)
    assert (fc.in_features, fc.out_features) == (32, 128)
    assert fc.lora_A.shape == (24, 32) and fc.lora_B.shape == (128, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
    randomise_b(model)
    x = torch.randn(5, 32)
    torch.testing.assert_close(fc(x), loop_reference(fc, x))


def test_bert_injection_and_family_targets():
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=32,
    )
    model = BertModel(config).eval()
    inject_moe_lora(model, {"experts": [2, 2], "top_k": [1, 1]})
    names = [n for n, _ in moe_modules(model)]
    assert all(n.startswith("encoder.layer.") for n in names)  # pooler.dense left alone
    assert len(names) == 2 * 6  # query key value + 3 × dense per layer
    out = model(input_ids=torch.randint(0, 97, (1, 5)))
    assert out.last_hidden_state.shape == (1, 5, 32)


def test_peft_baseline():
    model = tiny_llama()
    peft_model = make_peft_lora(copy.deepcopy(model), rank=4, targets=None)
    per_module = sum(
        4 * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in LLAMA_TARGETS
    )
    assert trainable_parameter_count(peft_model) == per_module
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, model(input_ids=ids).logits)
    gpt = make_peft_lora(tiny_gpt2(), rank=2, targets="gpt2")
    assert trainable_parameter_count(gpt) > 0
