"""The analysis cache never returns alphas of other weights: the key holds each weight file's
size, mtime and inode, and ``--verify-cache`` hashes every byte (issue 11, case 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from alphalora.cli import main
from alphalora.spectral.analysis import analyze
from alphalora.spectral.analysis_types import AnalysisOptions
from alphalora.spectral.sources import open_source

V_PROJ = "model.layers.0.self_attn.v_proj.weight"
OPTS = AnalysisOptions(device="cpu")


def _name(layer: int, kind: str) -> str:
    group = "mlp" if kind in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{group}.{kind}.weight"


@pytest.fixture
def model(tmp_path) -> Path:
    """A 2-layer Llama-named checkpoint with 96-wide heavy-tailed matrices (≈ 0.5 MB, so the
    16 sampled 4 KiB blocks of the old fingerprint leave most bytes unsampled)."""
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(2):
        for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            w = rng.standard_t(2.5, size=(96, 96)).astype(np.float32)
            tensors[_name(layer, kind)] = torch.from_numpy(w)
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 96}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _sampled_bytes(size: int, samples: int = 16, block: int = 4096) -> set[int]:
    """The byte offsets the sampled fingerprint reads (see ``sample_digest``)."""
    seen: set[int] = set()
    for i in range(samples):
        start = max(0, (size - block) * i // max(1, samples - 1))
        seen.update(range(start, min(size, start + block)))
    return seen


def _zero_unsampled_bytes(file: Path, tensor: str, *, keep_mtime: bool) -> int:
    """Zero every byte of ``tensor`` the sampled fingerprint does not read, in place (same
    inode, same size); with ``keep_mtime`` the modification time is put back (``touch -r``)."""
    before = file.stat()
    data = bytearray(file.read_bytes())
    n = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + n])[tensor]["data_offsets"]
    sampled = _sampled_bytes(len(data))
    changed = 0
    for offset in range(8 + n + begin, 8 + n + end):
        if offset not in sampled and data[offset]:
            data[offset] = 0
            changed += 1
    with open(file, "r+b") as fh:
        fh.write(bytes(data))
    if keep_mtime:
        os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = file.stat()
    assert after.st_ino == before.st_ino and after.st_size == before.st_size
    return changed


def _alpha(result, name: str = V_PROJ) -> float:
    return float(result.matrices.set_index("name").loc[name, "alpha"])


def test_an_in_place_edit_with_a_new_mtime_misses_the_cache(model):
    first = analyze(str(model), OPTS)
    assert not first.from_cache and analyze(str(model), OPTS).from_cache
    assert _zero_unsampled_bytes(model / "model.safetensors", V_PROJ, keep_mtime=False) > 30000
    again = analyze(str(model), OPTS)
    fresh = analyze(str(model), OPTS, use_cache=False)
    assert not again.from_cache  # the old code returned the cached (stale) alphas here
    assert _alpha(again) == _alpha(fresh) and _alpha(again) != pytest.approx(_alpha(first))


def test_verify_cache_catches_an_edit_that_keeps_size_mtime_and_inode(model):
    first = analyze(str(model), OPTS)
    _zero_unsampled_bytes(model / "model.safetensors", V_PROJ, keep_mtime=True)
    # the fast guard cannot see this edit (same size, mtime and inode): only the hash can
    assert analyze(str(model), OPTS).from_cache
    verified = analyze(str(model), OPTS, verify_cache=True)
    fresh = analyze(str(model), OPTS, use_cache=False)
    assert not verified.from_cache
    assert _alpha(verified) == _alpha(fresh) != pytest.approx(_alpha(first))
    # the recomputed entry now replaces the stale one, and records the hash it was made from
    assert _alpha(analyze(str(model), OPTS)) == _alpha(fresh)
    assert analyze(str(model), OPTS, verify_cache=True).from_cache


def test_a_verified_entry_is_rejected_after_a_second_hidden_edit(model):
    analyze(str(model), OPTS, verify_cache=True)
    hit = analyze(str(model), OPTS, verify_cache=True)
    assert hit.from_cache
    _zero_unsampled_bytes(model / "model.safetensors", V_PROJ, keep_mtime=True)
    again = analyze(str(model), OPTS, verify_cache=True)
    assert not again.from_cache
    assert _alpha(again) == _alpha(analyze(str(model), OPTS, use_cache=False))


def test_stat_guard_and_content_hash(model):
    source = open_source(model)
    guard, digest = source.stat_guard(), source.content_hash()
    assert guard == open_source(model).stat_guard() and digest.startswith("blake2b:")
    file = model / "model.safetensors"
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert open_source(model).stat_guard() != guard
    assert open_source(model).content_hash() == digest  # same bytes, same hash
    _zero_unsampled_bytes(file, V_PROJ, keep_mtime=True)
    assert open_source(model).content_hash() != digest


def test_cli_verify_cache(model, capsys):
    assert main(["analyze", str(model), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    _zero_unsampled_bytes(model / "model.safetensors", V_PROJ, keep_mtime=True)
    assert main(["analyze", str(model), "--device", "cpu", "--quiet", "--verify-cache"]) == 0
    out = capsys.readouterr().out
    assert "loaded from cache" not in out
    assert main(["analyze", str(model), "--device", "cpu", "--quiet", "--verify-cache"]) == 0
    assert "loaded from cache" in capsys.readouterr().out
