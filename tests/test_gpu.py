"""GPU checks of the fine-tuning path and the analysis (marked ``gpu``: skipped without CUDA).

They compare the GPU with the CPU on the same inputs: the MoE-LoRA layer's output and gradients,
a few fp32 training steps of a tiny Llama (losses), a bf16 run whose adapter reloads on the GPU
to the same evaluation, and a whole analysis (alphas). ``bench/device_check.sh`` runs them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_llama
from train_helpers import save_tiny_model, toy_reviews, write_jsonl

from alphalora.finetune.moe_layer import MoELoRALinear
from alphalora.finetune.train import train
from alphalora.spectral.analysis import analyze
from alphalora.spectral.analysis_types import AnalysisOptions
from alphalora.store.run_store import RunStore

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 off, so fp32 products on the GPU are comparable with the CPU's."""
    if not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    return {
        "model": str(save_tiny_model(root / "model", layers=2, hidden=64)),
        "task": str(write_jsonl(root / "reviews.jsonl", toy_reviews(160))),
    }


def _config(tiny, **changes) -> dict:
    cfg = {
        "name": "gpu",
        "model": tiny["model"],
        "task": tiny["task"],
        "allocation": {"experts": [4, 2], "top_k": [2, 1]},
        "steps": 4,
        "batch_size": 8,
        "max_length": 32,
        "eval_examples": 24,
        "lr": 0.005,
        "dropout": 0.0,
        "warmup_steps": 1,
        "precision": "fp32",
    }
    cfg.update(changes)
    return cfg


def test_moe_layer_on_cuda_equals_cpu():
    torch.manual_seed(0)
    base = torch.nn.Linear(48, 40)
    layer = MoELoRALinear(base, num_experts=6, top_k=2, rank=4, dropout=0.0)
    torch.nn.init.normal_(layer.lora_B, std=0.05)  # B starts at zero; make the delta visible
    x = torch.randn(3, 7, 48)
    gpu = MoELoRALinear(torch.nn.Linear(48, 40), 6, 2, rank=4, dropout=0.0).cuda()
    gpu.load_state_dict(layer.state_dict())
    out_cpu, out_gpu = layer(x), gpu(x.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-5, atol=1e-5)
    out_cpu.square().sum().backward()
    out_gpu.square().sum().backward()
    for name, param in layer.named_parameters():
        if param.requires_grad:
            other = dict(gpu.named_parameters())[name].grad.cpu()
            torch.testing.assert_close(other, param.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fp32_training_on_cuda_follows_the_cpu(tiny):
    store = RunStore()
    losses = {}
    for device in ("cpu", "cuda"):
        out = train(_config(tiny, device=device, eval_before=False), store=store)
        assert out["status"] == "completed" and device in out["device"]
        rows = store.metrics(out["run_id"], split="train")
        losses[device] = rows["train_loss"].to_numpy(float)
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-4, atol=1e-5)


def test_bf16_run_saves_an_adapter_that_reloads_on_the_gpu(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alphalora.finetune.moe import load_adapter
    from alphalora.finetune.scoring import evaluate
    from alphalora.finetune.tasks.load import load_task

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    out = train(_config(tiny, device="cuda", precision="bf16", steps=6), store=RunStore())
    assert out["status"] == "completed" and out["precision"] == "bf16"
    assert np.isfinite(out["eval_loss_after"])
    base = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.bfloat16).cuda()
    load_adapter(base, out["adapter_path"])
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    examples = load_task(tiny["task"]).eval[:24]
    again = evaluate(base, tokenizer, examples, max_length=32)
    assert again["accuracy"] == pytest.approx(out["accuracy_after"], abs=1 / 24)
    assert again["eval_loss"] == pytest.approx(out["eval_loss_after"], rel=2e-2)


@pytest.mark.parametrize("fit", ["hill-peak", "clauset"])
def test_analysis_on_cuda_equals_cpu(tmp_path, fit):
    folder = save_tiny_llama(tmp_path / "llama")
    cpu = analyze(folder, AnalysisOptions(fit=fit, device="cpu"), use_cache=False)
    gpu = analyze(folder, AnalysisOptions(fit=fit, device="cuda"), use_cache=False)
    assert gpu.device.startswith("cuda")
    a = cpu.matrices.set_index("name")
    b = gpu.matrices.set_index("name").loc[a.index]
    np.testing.assert_allclose(b["alpha"], a["alpha"], rtol=1e-6)
    np.testing.assert_allclose(b["lambda_max"], a["lambda_max"], rtol=1e-9)
    assert (b["n_tail"] == a["n_tail"]).all()
