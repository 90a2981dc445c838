"""The embedded default model: opening it, its mapping, and its export to a Hugging Face folder."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest
import torch

from alphalora.errors import AlphaLoRAError
from alphalora.spectral import embedded
from alphalora.spectral.embedded import (
    EMBEDDED_MODEL,
    EMBEDDED_REF,
    embedded_gguf_path,
    export_embedded_hf,
    resolve_embedded,
)
from alphalora.spectral.safetensors_source import SafetensorsSource
from alphalora.spectral.sources import open_source

LLAMA_KINDS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def smollm2():
    return open_source(EMBEDDED_REF)


def test_embedded_is_smollm2_with_210_block_matrices(smollm2):
    assert smollm2.format == "gguf" and smollm2.family == "llama"
    assert smollm2.n_layers == EMBEDDED_MODEL.n_layers == 30
    block = smollm2.matrices()
    assert len(block) == 210
    per_layer = Counter(i.layer for i in block)
    assert sorted(per_layer) == list(range(30)) and set(per_layer.values()) == {7}
    for layer in range(30):
        assert sorted(i.kind for i in block if i.layer == layer) == LLAMA_KINDS
    shapes = {i.kind: i.shape for i in block if i.layer == 0}
    assert shapes == {
        "q_proj": (576, 576),
        "k_proj": (192, 576),
        "v_proj": (192, 576),
        "o_proj": (576, 576),
        "gate_proj": (1536, 576),
        "up_proj": (1536, 576),
        "down_proj": (576, 1536),
    }
    assert {i.dtype for i in block} == {"Q4_1"}
    embed = [i for i in smollm2.matrices(include_non_block=True) if i.layer is None]
    assert [(i.name, i.kind, i.shape) for i in embed] == [
        ("model.embed_tokens.weight", "embedding", (49152, 576))
    ]  # lm_head is tied: not stored
    summary = smollm2.describe()
    assert summary["name"] == EMBEDDED_MODEL.name and summary["n_matrices"] == 210
    assert 130e6 < summary["parameters"] < 140e6


def test_embedded_matrix_is_dequantised(smollm2):
    w = smollm2.load("model.layers.5.mlp.down_proj.weight")
    assert w.dtype == torch.float32 and tuple(w.shape) == (576, 1536)
    assert torch.isfinite(w).all() and w.abs().max() < 10
    assert w.unique().numel() > 1000  # real values, not 16 packed levels of one block
    assert smollm2.fingerprint() == open_source("embedded:smollm2").fingerprint()


def test_embedded_refs_and_metadata():
    assert resolve_embedded("embedded") is EMBEDDED_MODEL
    assert resolve_embedded("embedded:SmolLM2") is EMBEDDED_MODEL
    with pytest.raises(AlphaLoRAError, match="embedded:smollm2"):
        open_source("embedded:nope")
    assert EMBEDDED_MODEL.licence == "Apache-2.0"
    assert (
        EMBEDDED_MODEL.name in EMBEDDED_MODEL.description or "SmolLM2" in EMBEDDED_MODEL.description
    )
    assert embedded_gguf_path().name == EMBEDDED_MODEL.filename


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == EMBEDDED_MODEL.package else real(name, *a),
    )
    with pytest.raises(AlphaLoRAError, match="README") as err:
        open_source("embedded")
    assert EMBEDDED_MODEL.package in str(err.value)
    with pytest.raises(AlphaLoRAError, match="README"):
        export_embedded_hf()


@pytest.mark.slow
def test_export_reloads_with_the_same_logits(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls: list[tuple[float, str]] = []
    folder = export_embedded_hf(lambda f, m: calls.append((f, m)))
    assert calls[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in calls)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    # Cached: the second call does no work and says so.
    again: list[tuple[float, str]] = []
    assert export_embedded_hf(lambda f, m: again.append((f, m))) == folder
    assert len(again) == 1 and "Using the exported" in again[0][1]

    gguf = embedded_gguf_path()
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        a = exported(**batch).logits
        b = original(**batch).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    # The exported folder is an ordinary safetensors source with the same 210 matrices; values
    # match the GGUF exactly except q/k, whose rows llama.cpp permutes (same singular values).
    hf = open_source(folder)
    assert isinstance(hf, SafetensorsSource) and len(hf.matrices()) == 210
    for name in ["model.layers.3.self_attn.v_proj.weight", "model.layers.3.mlp.down_proj.weight"]:
        assert torch.equal(hf.load(name), smollm2.load(name))
    q = "model.layers.3.self_attn.q_proj.weight"
    assert not torch.equal(hf.load(q), smollm2.load(q))
    s_hf = torch.linalg.svdvals(hf.load(q).double())
    s_gguf = torch.linalg.svdvals(smollm2.load(q).double())
    torch.testing.assert_close(s_hf, s_gguf, rtol=1e-10, atol=1e-10)
