"""Model sources on tiny models of every family: mapping, orientation, values, and bad input."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    EXPECTED_KINDS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
    TINY_SAVERS,
    save_sharded,
    save_tiny_gpt2,
    save_tiny_llama,
    write_tiny_gguf,
)

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.naming import canonical_family, parse_name
from alphalora.spectral.pickle_source import PickleSource
from alphalora.spectral.safetensors_source import SafetensorsSource
from alphalora.spectral.source_base import MatrixInfo, ModelSource
from alphalora.spectral.sources import open_source


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model per family (built once for the module)."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: saver(root / family) for family, saver in TINY_SAVERS.items()}


@pytest.mark.parametrize("family", list(TINY_SAVERS))
def test_every_family_maps_layers_kinds_and_values(tiny_dirs, family):
    folder = tiny_dirs[family]
    source = open_source(folder)
    assert isinstance(source, SafetensorsSource)
    assert source.family == family
    assert source.n_layers == LAYERS
    expected = EXPECTED_KINDS[canonical_family(family)]
    by_layer: dict[int, list[str]] = defaultdict(list)
    for info in source.matrices():
        by_layer[info.layer].append(info.kind)
    assert sorted(by_layer) == list(range(LAYERS))
    for kinds in by_layer.values():
        assert sorted(kinds) == sorted(expected)  # each kind exactly once per layer
    stored = load_file(folder / "model.safetensors")
    for info in source.matrices(include_non_block=True):
        w = source.load(info.name)
        assert w.dtype == torch.float32 and w.ndim == 2 and tuple(w.shape) == info.shape
        original = stored[info.name].float()
        if family == "gpt2" and info.layer is not None:
            original = original.t()
        assert torch.equal(w, original)
        assert (info.layer, info.kind) == parse_name(info.name, family)


@pytest.mark.parametrize("family", ["llama", "phi3", "bert"])
def test_shapes_are_out_in_like_the_modules(tiny_dirs, family):
    from transformers import AutoModel

    source = open_source(tiny_dirs[family])
    modules = dict(AutoModel.from_pretrained(tiny_dirs[family]).named_parameters())
    for info in source.matrices():
        # AutoModel drops the causal-LM prefix ("model."); match on the suffix.
        key = next(k for k in modules if info.name.endswith(k))
        assert tuple(modules[key].shape) == info.shape
    kinds = {i.kind: i.shape for i in source.matrices() if i.layer == 0}
    if family == "phi3":
        assert kinds["gate_up"] == (2 * INTERMEDIATE, HIDDEN)
    if family == "llama":
        assert kinds["down_proj"] == (HIDDEN, INTERMEDIATE)


def test_gpt2_conv1d_reported_and_loaded_transposed(tiny_dirs):
    from transformers import GPT2LMHeadModel

    source = open_source(tiny_dirs["gpt2"])
    model = GPT2LMHeadModel.from_pretrained(tiny_dirs["gpt2"])
    c_attn = model.transformer.h[1].attn.c_attn.weight  # Conv1D: (in, out)
    info = source.info("transformer.h.1.attn.c_attn.weight")
    assert info.shape == (3 * HIDDEN, HIDDEN) == tuple(c_attn.t().shape)
    assert torch.equal(source.load(info.name), c_attn.detach().t())
    fc = source.info("transformer.h.0.mlp.c_fc.weight")
    assert fc.shape == (4 * HIDDEN, HIDDEN) and fc.kind == "up_proj"
    wte = source.info("transformer.wte.weight")  # an embedding, never transposed
    assert wte.layer is None and wte.kind == "embedding"


def test_gpt2_without_config_is_detected_from_names(tmp_path, tiny_dirs):
    single = tmp_path / "gpt2.safetensors"
    single.write_bytes((tiny_dirs["gpt2"] / "model.safetensors").read_bytes())
    source = open_source(single)
    assert source.family == "gpt2" and source.config == {}
    assert source.info("transformer.h.0.attn.c_attn.weight").shape == (3 * HIDDEN, HIDDEN)


def test_block_and_non_block_matrices(tiny_dirs):
    source = open_source(tiny_dirs["llama"])
    block = source.matrices()
    everything = source.matrices(include_non_block=True)
    assert len(block) == 7 * LAYERS and all(isinstance(i, MatrixInfo) for i in block)
    extra = {i.kind for i in everything} - {i.kind for i in block}
    assert extra == {"embedding", "lm_head"}
    assert all(i.layer is not None for i in block)
    assert all(len(i.shape) == 2 for i in everything)  # norms (1-D) never listed


def test_iter_matrices_streams_what_load_returns(tiny_dirs):
    source = open_source(tiny_dirs["qwen2"])
    seen = []
    for info, w in source.iter_matrices():
        assert torch.equal(w, source.load(info.name))
        seen.append(info.name)
    assert sorted(seen) == sorted(i.name for i in source.matrices())
    subset = source.matrices()[:3]
    assert [i for i, _ in source.iter_matrices(subset)] == subset


def test_sharded_equals_single_file(tmp_path):
    single = open_source(save_tiny_llama(tmp_path / "single", seed=3))
    sharded = open_source(save_sharded(tmp_path / "sharded", n_shards=3, seed=3))
    assert len(sharded.files) == 3
    assert [i.name for i in sharded.matrices()] != [] and sorted(
        i.name for i in sharded.matrices(include_non_block=True)
    ) == sorted(i.name for i in single.matrices(include_non_block=True))
    for info in single.matrices(include_non_block=True):
        assert sharded.info(info.name) == info
        assert torch.equal(sharded.load(info.name), single.load(info.name))
    assert sharded.parameter_count() == single.parameter_count()


def test_missing_shard_is_named(tmp_path):
    folder = save_sharded(tmp_path / "m", n_shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(AlphaLoRAError, match="model-00002-of-00002.safetensors"):
        open_source(folder)


def test_describe_count_and_fingerprint(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = save_tiny_llama(tmp_path / "a", seed=1)
    source = open_source(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert source.parameter_count() == model.num_parameters()
    summary = source.describe()
    assert summary["family"] == "llama" and summary["n_layers"] == LAYERS
    assert summary["n_matrices"] == 7 * LAYERS and summary["format"] == "safetensors"
    assert summary["parameters"] == model.num_parameters() and summary["path"] == str(folder)
    fp = source.fingerprint()
    assert fp == open_source(folder).fingerprint()  # stable
    save_tiny_llama(tmp_path / "a", seed=2)  # same shapes and header sizes, new values
    assert open_source(folder).fingerprint() != fp
    assert open_source(save_tiny_llama(tmp_path / "b", seed=1)).fingerprint() == fp


def test_integer_tensors_are_never_matrices(tmp_path):
    folder = save_tiny_llama(tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    state["model.position_ids"] = torch.arange(16, dtype=torch.int64).reshape(2, 8)
    save_file(state, str(folder / "model.safetensors"))
    source = open_source(folder)
    names = {i.name for i in source.matrices(include_non_block=True)}
    assert "model.position_ids" not in names and len(source.matrices()) == 7 * LAYERS


# --- GGUF ----------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_dequantises_to_the_quantised_values(tmp_path, qtype):
    import gguf

    path = tmp_path / "tiny.gguf"
    originals = write_tiny_gguf(path, qtype=qtype)
    source = open_source(path)
    assert source.format == "gguf" and source.family == "llama" and source.n_layers == LAYERS
    block = source.matrices()
    assert len(block) == 7 * LAYERS
    assert {i.dtype for i in block} == {qtype}
    quant = gguf.GGMLQuantizationType[qtype]
    for info in source.matrices(include_non_block=True):
        w = source.load(info.name)
        original = originals[info.stored_name]
        assert info.shape == original.shape and w.dtype == torch.float32
        assert (info.layer, info.kind) == parse_name(info.stored_name)
        if info.dtype == qtype:
            expected = gguf.quants.dequantize(gguf.quants.quantize(original, quant), quant)
            np.testing.assert_array_equal(w.numpy(), expected)
            rel = np.linalg.norm(w.numpy() - original) / np.linalg.norm(original)
            assert rel < (0.15 if qtype.startswith("Q4") else 0.01)
        else:
            np.testing.assert_allclose(w.numpy(), original, rtol=1e-3, atol=1e-3)  # F16
    q = source.info("model.layers.1.self_attn.k_proj.weight")
    assert q.stored_name == "blk.1.attn_k.weight" and q.kind == "k_proj" and q.shape == (32, 64)
    assert source.load("blk.1.attn_k.weight").shape == (32, 64)  # the stored name works too
    kinds = {i.kind for i in source.matrices(include_non_block=True) if i.layer is None}
    assert kinds == {"embedding", "lm_head"}
    assert source.describe()["quantisation"] == qtype


def test_gguf_folder_fingerprint_and_errors(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    write_tiny_gguf(folder / "a.gguf", seed=1)
    source = open_source(folder)
    assert source.path == folder / "a.gguf"
    fp = source.fingerprint()
    assert fp == open_source(folder / "a.gguf").fingerprint()
    write_tiny_gguf(folder / "a.gguf", seed=2)
    assert open_source(folder).fingerprint() != fp
    write_tiny_gguf(folder / "b.gguf")
    with pytest.raises(AlphaLoRAError, match="several GGUF files"):
        open_source(folder)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(AlphaLoRAError, match="bad.gguf.*not a readable GGUF"):
        open_source(bad)


# --- references and bad input ----------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(AlphaLoRAError, match="does not exist") as err:
        open_source(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(AlphaLoRAError, match="No model given"):
        open_source("  ")


def test_unknown_hub_id_offline_names_the_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AlphaLoRAError) as err:
        open_source("alphalora-test-org/surely-not-a-real-model-1234")
    message = str(err.value)
    assert "surely-not-a-real-model-1234" in message
    assert str(constants.HF_HUB_CACHE) in message
    assert "local folder path" in message and "HF_HUB_OFFLINE" in message


def test_folder_without_weights_lists_its_files(tmp_path):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "README.md").write_text("hi")
    with pytest.raises(AlphaLoRAError, match="holds no model weights") as err:
        open_source(folder)
    assert "config.json" in str(err.value) and "README.md" in str(err.value)
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_is_named(tmp_path, damage):
    folder = save_tiny_llama(tmp_path / "m")
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(
        {"truncate": data[:-200], "garbage": b"not a tensor file" * 5, "empty": b""}[damage]
    )
    with pytest.raises(AlphaLoRAError, match="not a readable safetensors file") as err:
        open_source(folder)
    assert str(file) in str(err.value) and "download it again" in str(err.value)


def test_model_without_matrices(tmp_path):
    file = tmp_path / "norms.safetensors"
    save_file({"a.weight": torch.ones(4), "b.ids": torch.zeros(3, 3, dtype=torch.int32)}, str(file))
    with pytest.raises(AlphaLoRAError, match="no 2-D floating-point weight matrices") as err:
        open_source(file)
    assert str(file) in str(err.value)


def test_unsupported_file_type(tmp_path):
    file = tmp_path / "weights.onnx"
    file.write_bytes(b"x")
    with pytest.raises(AlphaLoRAError, match="unsupported file type .onnx"):
        open_source(file)


def test_pickles_refused_unless_opted_in(tmp_path):
    folder = save_tiny_llama(tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(AlphaLoRAError, match="allow_pickle=True") as err:
        open_source(folder)
    assert "pytorch_model.bin" in str(err.value)
    source = open_source(folder, allow_pickle=True)
    assert isinstance(source, PickleSource) and source.family == "llama"
    assert len(source.matrices()) == 7 * LAYERS
    for info in source.matrices(include_non_block=True):
        assert torch.equal(source.load(info.name), state[info.name].float())
    assert source.fingerprint() == open_source(folder, allow_pickle=True).fingerprint()
    with pytest.raises(AlphaLoRAError, match="allow_pickle"):
        open_source(folder / "pytorch_model.bin")


class _Payload:
    """An arbitrary class: unpickling it would import and run code, so weights_only refuses."""


def test_pickle_with_code_is_refused_even_when_opted_in(tmp_path):
    file = tmp_path / "evil.bin"
    torch.save({"w": _Payload()}, file)
    with pytest.raises(AlphaLoRAError, match="weights-only"):
        open_source(file, allow_pickle=True)


def _quantised_checkpoint(folder: Path, style: str) -> None:
    folder.mkdir()
    config: dict = {"model_type": "llama"}
    tensors = {"model.embed_tokens.weight": torch.randn(16, 8)}
    if style == "gptq":
        tensors["model.layers.0.self_attn.q_proj.qweight"] = torch.zeros(1, 8, dtype=torch.int32)
        tensors["model.layers.0.self_attn.q_proj.scales"] = torch.ones(1, 8, dtype=torch.float16)
    elif style == "bnb":
        tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 8, dtype=torch.int8)
        tensors["model.layers.0.self_attn.q_proj.SCB"] = torch.ones(8)
    elif style == "int-weight":
        tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 4, dtype=torch.uint8)
    elif style == "config":
        config["quantization_config"] = {"quant_method": "awq", "bits": 4}
        tensors["model.layers.0.self_attn.q_proj.weight"] = torch.randn(8, 8)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize("style", ["gptq", "bnb", "int-weight", "config"])
def test_quantised_safetensors_are_refused(tmp_path, style):
    folder = tmp_path / style
    _quantised_checkpoint(folder, style)
    with pytest.raises(AlphaLoRAError, match="quantised") as err:
        open_source(folder)
    message = str(err.value)
    assert str(folder) in message and "full-precision" in message and "GGUF" in message


def test_unknown_matrix_name(tiny_dirs):
    source = open_source(tiny_dirs["llama"])
    with pytest.raises(AlphaLoRAError, match="no 2-D weight matrix named"):
        source.load("model.layers.0.input_layernorm.weight")


def test_sources_share_the_base_class(tiny_dirs, tmp_path):
    write_tiny_gguf(tmp_path / "t.gguf")
    for source in (open_source(tiny_dirs["bert"]), open_source(tmp_path / "t.gguf")):
        assert isinstance(source, ModelSource)
        assert set(source.describe()) >= {
            "family",
            "n_layers",
            "n_matrices",
            "parameters",
            "format",
            "path",
        }


def test_gpt2_saver_is_conv1d(tmp_path):
    from transformers.pytorch_utils import Conv1D

    folder = save_tiny_gpt2(tmp_path / "g")
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder)
    assert isinstance(model.transformer.h[0].mlp.c_fc, Conv1D)


def test_legacy_pickle_format_loads_without_mmap(tmp_path):
    state = {"h.0.attn.c_attn.weight": torch.randn(8, 24), "h.0.ln_1.weight": torch.ones(8)}
    file = tmp_path / "old.bin"
    torch.save(state, file, _use_new_zipfile_serialization=False)
    source = open_source(file, allow_pickle=True)
    assert source.family == "gpt2"
    info = source.info("h.0.attn.c_attn.weight")
    assert (info.layer, info.kind, info.shape) == (0, "qkv", (24, 8))
    assert torch.equal(source.load(info.name), state[info.name].t())
