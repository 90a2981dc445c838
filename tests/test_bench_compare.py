"""``bench/bench_analysis.py``'s comparison with WeightWatcher, checked on a small case without
WeightWatcher: a reference table built independently (numpy SVD, the powerlaw package) in
WeightWatcher's default convention agrees with ``--esd-scale none`` on every column, and the
comparison flags ``--esd-scale N`` (λ_max, xmin N times smaller) as it should have."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from alphalora.spectral.analysis import analyze
from alphalora.spectral.analysis_types import AnalysisOptions

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_analysis.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_analysis", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def model(tmp_path):
    g = torch.Generator().manual_seed(4)
    tensors = {
        f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(60, 30, generator=g, dtype=torch.float64)
        for i in range(3)
    }  # fmt: skip
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder, tensors


def _reference(tensors: dict[str, torch.Tensor]) -> pd.DataFrame:
    """What WeightWatcher reports with normalize=False: eigenvalues of WᵀW as they are."""
    import powerlaw

    rows = []
    for name, w in tensors.items():
        sv = np.linalg.svd(w.numpy(), compute_uv=False)
        evals = np.sort(sv**2)
        fit = powerlaw.Fit(evals, verbose=False)
        rows.append(
            {
                "longname": name.removesuffix(".weight"),
                "alpha": fit.power_law.alpha,
                "D": fit.power_law.D,
                "xmin": fit.power_law.xmin,
                "lambda_max": evals[-1],
                "log_spectral_norm": np.log10(evals[-1]),
                "log_norm": np.log10(evals.sum()),
            }
        )
    return pd.DataFrame(rows)


def test_the_comparison_agrees_on_the_same_convention_and_catches_the_other(model, capsys):
    bench = _bench()
    folder, tensors = model
    ww = _reference(tensors)
    capsys.readouterr()  # powerlaw 1.5 prints its progress
    same = analyze(folder, AnalysisOptions(fit="clauset", device="cpu"), use_cache=False)
    report = bench.compare_with_weightwatcher(same.matrices, ww)
    assert report["matrices_compared"] == 3
    for col in bench.COMPARED:
        assert report[col]["equal"] == 3, (col, report[col])
        assert report[col]["median_ratio_ww_over_ours"] == pytest.approx(1.0, rel=1e-6)
    scaled = analyze(
        folder, AnalysisOptions(fit="clauset", device="cpu", esd_scale="N"), use_cache=False
    )
    wrong = bench.compare_with_weightwatcher(scaled.matrices, ww)
    assert wrong["alpha"]["equal"] == wrong["D"]["equal"] == 3  # alpha cannot tell
    for col in ("xmin", "lambda_max", "log_spectral_norm", "log_norm"):
        assert wrong[col]["equal"] == 0, col
        assert wrong[col]["median_ratio_ww_over_ours"] == pytest.approx(60.0, rel=1e-6)  # N
