"""The public Python API: ``alphalora.analyze / allocate / train / RunStore`` load lazily and
are the same objects as in their stage packages; ``allocate`` dispatches every rule."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiny_models import save_tiny_llama

import alphalora
from alphalora.allocation.shapes import mola_shape, uniform
from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official
from alphalora.errors import AlphaLoRAError

ALPHAS = [2.1, 2.7, 3.1, 3.6, 4.3, 4.0, 3.5, 2.9]


def test_import_is_cheap_and_entry_points_load_on_use():
    code = (
        "import sys, alphalora; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'pandas' not in sys.modules, 'pandas imported'; "
        "print(' '.join(alphalora.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"analyze", "allocate", "train", "RunStore"} <= set(out.stdout.split())
    from alphalora.finetune.train import train
    from alphalora.spectral.analysis import analyze
    from alphalora.store.run_store import RunStore

    assert alphalora.train is train and alphalora.analyze is analyze
    assert alphalora.RunStore is RunStore
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = alphalora.nope


def test_allocate_dispatches_every_rule():
    assert alphalora.allocate(ALPHAS, budget=40) == alphalora_allocation(ALPHAS, 40, 2.5)
    assert alphalora.allocate(ALPHAS, budget=40, mode="official", beta=3) == alphalora_official(
        ALPHAS, 40, 3
    )
    tau = alphalora.allocate(ALPHAS, budget=40, temperature=0.5)
    assert tau.experts == alphalora_allocation(ALPHAS, 40, 2.0).experts
    assert alphalora.allocate(shape="2468", n_layers=8).experts == mola_shape("2468", 8).experts
    assert alphalora.allocate(shape="uniform", n_layers=8) == uniform(8, 40)
    kept = alphalora.allocate(ALPHAS, shape="8642")
    assert kept.alphas == tuple(ALPHAS) and kept.experts == mola_shape("8642", 8).experts
    assert alphalora.allocate(ALPHAS).total == 5 * len(ALPHAS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": "2468", "beta": 2.0}, "cannot be combined with --shape"),
        ({"mode": "official", "min_experts": 2}, "only apply to --mode default"),
        ({"mode": "fancy"}, "Unknown allocation mode 'fancy'"),
        ({"beta": 2.0, "temperature": 0.5}, "not both"),
        ({"n_layers": 3}, "disagrees with the 8 alphas"),
    ],
)
def test_allocate_refuses_options_that_do_not_fit(kwargs, message):
    with pytest.raises(AlphaLoRAError, match=message):
        alphalora.allocate(ALPHAS, **kwargs)


def test_analyze_then_allocate_from_the_top_level(tmp_path):
    result = alphalora.analyze(save_tiny_llama(tmp_path / "llama"))
    plan = alphalora.allocate(result.layer_alphas, budget=6)
    assert plan.n_layers == len(result.layer_alphas) == 2 and plan.total == 6
