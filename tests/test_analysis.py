"""The analysis pipeline: per-matrix rows, per-layer table, flags for bad matrices, cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.analysis import (
    analyze,
    export_table,
    layer_alphas,
    layer_table,
)
from alphalora.spectral.analysis_types import AnalysisOptions
from alphalora.spectral.fits import fit_power_law

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _llama_name(layer: int, kind: str) -> str:
    group = "self_attn" if kind in KINDS[:4] else "mlp"
    return f"model.layers.{layer}.{group}.{kind}.weight"


def _write_model(
    folder, tensors: dict[str, torch.Tensor], n_layers: int = 2, hidden: int = 48
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "num_hidden_layers": n_layers, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 64,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))


def _heavy(rows: int, cols: int, df: float, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.standard_t(df, size=(rows, cols)).astype(np.float32))


@pytest.fixture
def llama_folder(tmp_path):
    """A 2-layer Llama-named checkpoint: layer 0 heavy-tailed (df 2.5), layer 1 Gaussian."""
    h = 48
    shapes = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
              "gate_proj": (2 * h, h), "up_proj": (2 * h, h), "down_proj": (h, 2 * h)}  # fmt: skip
    tensors = {"model.embed_tokens.weight": torch.randn(64, h)}
    for layer, df in ((0, 2.5), (1, 200.0)):
        for i, (kind, shape) in enumerate(shapes.items()):
            tensors[_llama_name(layer, kind)] = _heavy(*shape, df, seed=10 * layer + i)
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(h)
    folder = tmp_path / "tiny"
    _write_model(folder, tensors)
    return folder, tensors


def test_rows_match_a_direct_fit(llama_folder):
    folder, tensors = llama_folder
    result = analyze(str(folder), AnalysisOptions(fit="clauset", device="cpu"))
    m = result.matrices
    assert len(m) == 14  # 7 per layer, embeddings and norms excluded
    assert set(m["kind"]) == set(KINDS)
    assert sorted(m["layer"].unique().tolist()) == [0, 1]
    name = _llama_name(0, "gate_proj")
    row = m.set_index("name").loc[name]
    w = tensors[name].double()
    eigs = np.sort(torch.linalg.svdvals(w).numpy() ** 2)
    fit = fit_power_law(eigs, "clauset")
    assert row["alpha"] == pytest.approx(fit.alpha, rel=1e-8)
    assert row["xmin"] == pytest.approx(fit.xmin, rel=1e-8)
    assert row["n_tail"] == fit.n_tail
    assert row["lambda_max"] == pytest.approx(eigs[-1], rel=1e-9)
    assert row["stable_rank"] == pytest.approx(eigs.sum() / eigs[-1], rel=1e-9)
    assert row["log_norm"] == pytest.approx(math.log10(eigs.sum()), rel=1e-9)
    assert row["alpha_weighted"] == pytest.approx(fit.alpha * math.log10(eigs[-1]), rel=1e-9)
    assert (row["rows"], row["cols"]) == (96, 48)


def test_layer_table_is_mean_of_matrices_and_heavy_tail_scores_lower(llama_folder):
    folder, _ = llama_folder
    result = analyze(str(folder), AnalysisOptions(fit="hill-peak", device="cpu"))
    layers = result.layers
    assert layers["layer"].tolist() == [0, 1]
    for layer in (0, 1):
        expect = result.matrices.loc[result.matrices["layer"] == layer, "alpha"].mean()
        assert layers.loc[layers["layer"] == layer, "alpha_mean"].item() == pytest.approx(expect)
        assert layers.loc[layers["layer"] == layer, "n_matrices"].item() == 7
    # Student-t(2.5) weights are heavy-tailed: smaller alpha than Gaussian-like weights.
    assert result.layer_alphas[0] < result.layer_alphas[1]
    assert {f"alpha_{k}" for k in KINDS} <= set(layers.columns)


def test_bad_matrices_are_flagged_and_the_rest_completes(tmp_path):
    h = 32
    good = _heavy(h, h, 3.0, seed=1)
    nan = good.clone()
    nan[3, 4] = float("nan")
    inf = good.clone()
    inf[0, 0] = float("inf")
    tensors = {
        _llama_name(0, "q_proj"): good,
        _llama_name(0, "k_proj"): nan,
        _llama_name(0, "v_proj"): inf,
        _llama_name(0, "o_proj"): torch.zeros(h, h),
        _llama_name(0, "gate_proj"): torch.randn(1, h),  # 1×N: a single eigenvalue
        _llama_name(0, "up_proj"): torch.randn(6, h),  # only 6 eigenvalues: unreliable
    }
    folder = tmp_path / "bad"
    _write_model(folder, tensors, n_layers=1, hidden=h)
    m = analyze(str(folder), AnalysisOptions(device="cpu")).matrices.set_index("kind")
    assert np.isfinite(m.loc["q_proj", "alpha"])
    for kind, word in (
        ("k_proj", "NaN"),
        ("v_proj", "Inf"),
        ("o_proj", "all-zero"),
        ("gate_proj", "1 eigenvalue"),
    ):
        assert not m.loc[kind, "reliable"], kind
        assert np.isnan(m.loc[kind, "alpha"]), kind
        assert word in m.loc[kind, "warning"], (kind, m.loc[kind, "warning"])
    assert not m.loc["up_proj", "reliable"]
    assert "only 6 eigenvalues" in m.loc["up_proj", "warning"]


def test_cache_is_reused_and_keyed_by_options(llama_folder):
    folder, _ = llama_folder
    first = analyze(str(folder), AnalysisOptions(device="cpu"))
    assert not first.from_cache
    again = analyze(str(folder), AnalysisOptions(device="cpu"))
    assert again.from_cache
    pd.testing.assert_frame_equal(first.matrices, again.matrices)
    pd.testing.assert_frame_equal(first.layers, again.layers)
    assert set(again.eigenvalues) == set(first.eigenvalues)
    other = analyze(str(folder), AnalysisOptions(device="cpu", fit="clauset"))
    assert not other.from_cache
    # Changing the weights changes the fingerprint: no stale result.
    (folder / "model.safetensors").unlink()
    _write_model(folder, {_llama_name(0, "q_proj"): _heavy(32, 32, 3.0, 5)}, n_layers=1, hidden=32)
    changed = analyze(str(folder), AnalysisOptions(device="cpu"))
    assert not changed.from_cache and len(changed.matrices) == 1


def test_progress_callback_counts_every_matrix(llama_folder):
    folder, _ = llama_folder
    seen: list[tuple[int, int]] = []
    analyze(
        str(folder),
        AnalysisOptions(device="cpu"),
        progress=lambda d, t, n: seen.append((d, t)),
        use_cache=False,
    )
    assert seen[-1] == (14, 14)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_esd_scale_changes_norms_not_alpha(llama_folder):
    folder, _ = llama_folder
    a = analyze(str(folder), AnalysisOptions(device="cpu")).matrices
    b = analyze(str(folder), AnalysisOptions(device="cpu", esd_scale="N")).matrices
    np.testing.assert_allclose(a["alpha"], b["alpha"])
    np.testing.assert_allclose(
        a["lambda_max"] / np.maximum(a["rows"], a["cols"]), b["lambda_max"], rtol=1e-12
    )


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_export_round_trip(llama_folder, tmp_path, suffix):
    folder, _ = llama_folder
    df = analyze(str(folder), AnalysisOptions(device="cpu")).matrices
    path = export_table(df, tmp_path / f"out{suffix}")
    back = {".csv": pd.read_csv, ".json": pd.read_json, ".parquet": pd.read_parquet}[suffix](path)
    assert list(back["name"]) == list(df["name"])
    np.testing.assert_allclose(back["alpha"].astype(float), df["alpha"].astype(float), rtol=1e-9)


def test_export_rejects_unknown_suffix(tmp_path):
    with pytest.raises(AlphaLoRAError, match=r"\.csv, \.json or \.parquet"):
        export_table(pd.DataFrame({"a": [1]}), tmp_path / "out.xlsx")


def test_bad_options_are_explained():
    with pytest.raises(AlphaLoRAError, match="fit mode"):
        analyze("embedded", AnalysisOptions(fit="nope"))


def test_layer_alphas_and_empty_layer_table(llama_folder):
    folder, _ = llama_folder
    alphas = layer_alphas(str(folder), device="cpu")
    assert len(alphas) == 2 and all(np.isfinite(alphas))
    empty = layer_table(
        pd.DataFrame(
            {"layer": pd.Series([None], dtype="Int64"), "alpha": [1.0], "kind": ["lm_head"]}
        )
    )
    assert empty.empty


def test_embedded_model_analysis():
    """The embedded default (SmolLM2-135M, 30 layers, 210 block matrices) analyses offline."""
    result = analyze("embedded", AnalysisOptions(device="cpu"))
    assert len(result.layers) == 30
    assert len(result.matrices) == 210
    alphas = np.array(result.layer_alphas)
    assert np.all(np.isfinite(alphas)) and np.all(alphas > 1.0)
    assert result.matrices["alpha"].notna().all()


def test_screen_is_exact_at_overflow_and_underflow():
    """The one-pass norm screen falls back to element checks where float32 norms overflow
    (huge finite weights) or underflow (tiny nonzero weights), so neither is misflagged."""
    from alphalora.spectral.analysis import _screen

    w = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    assert _screen(w) == (True, False)
    assert _screen(w * 1e30) == (True, False)  # ‖w‖² overflows float32
    assert _screen(w * 1e-30) == (True, False)  # ‖w‖² underflows to 0
    assert _screen(torch.zeros(20, 30)) == (True, True)
    for bad in (float("nan"), float("inf"), float("-inf")):
        v = w.clone()
        v[3, 4] = bad
        assert _screen(v) == (False, False)


def test_wide_matrices_are_solved_alone_with_every_thread(llama_folder, monkeypatch):
    """Matrices wider than the single-thread limit on both sides wait for the parallel
    solves to finish and run with all workers' threads; results and order are unchanged."""
    import alphalora.spectral.analysis as analysis_mod
    from alphalora.spectral import spectra

    folder, _ = llama_folder
    reference = analyze(folder, AnalysisOptions(fit="clauset", workers=1), use_cache=False)
    monkeypatch.setattr(spectra, "SINGLE_THREAD_MAX_SIDE", 47)  # 48×48 and 96×48 are "wide"
    seen: list[tuple[int, int]] = []
    real = analysis_mod.eigenvalues

    def spy(w, **kwargs):
        seen.append((min(w.shape), torch.get_num_threads()))
        return real(w, **kwargs)

    monkeypatch.setattr(analysis_mod, "eigenvalues", spy)
    result = analyze(folder, AnalysisOptions(fit="clauset", workers=2), use_cache=False)
    assert seen and all(threads == 2 for side, threads in seen if side > 47)
    assert torch.get_num_threads() == 1  # restored (conftest runs tests single-threaded)
    pd.testing.assert_frame_equal(result.matrices, reference.matrices)
