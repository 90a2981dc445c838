"""One bound on allocation budgets (issue 11, case 2): n_layers ≤ budget ≤ MAX_TOTAL_EXPERTS in
every rule, the CLI and the app; no overflow, no endless repair loop, no silent layer count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alphalora.allocation import checks
from alphalora.allocation.allocate import allocate
from alphalora.allocation.checks import MAX_TOTAL_EXPERTS, budget_range, check_budget
from alphalora.allocation.model import Allocation
from alphalora.allocation.shapes import custom, mola_shape, uniform
from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official
from alphalora.cli import main
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
HUGE = 10_000_000_000_000_000_000  # the adversarial pass's budget (> int64)


@pytest.mark.parametrize(
    "build",
    [
        lambda b: alphalora_official([2.0, 3.0, 4.0], b),
        lambda b: alphalora_allocation([2.0, 3.0, 4.0], b),
        lambda b: mola_shape("2468", 8, b),
        lambda b: uniform(8, b),
        lambda b: allocate([2.0, 3.0, 4.0], budget=b, mode="official"),
    ],
    ids=["official", "default", "mola", "uniform", "allocate"],
)
@pytest.mark.parametrize("budget", [HUGE, MAX_TOTAL_EXPERTS + 1])
def test_every_rule_refuses_a_budget_above_the_bound(build, budget):
    with pytest.raises(AlphaLoRAError, match="above the supported maximum of 1,000,000"):
        build(budget)


def test_the_bound_itself_is_allowed_and_exact():
    result = alphalora_allocation([2.0, 3.0, 4.0], MAX_TOTAL_EXPERTS)
    assert result.total == MAX_TOTAL_EXPERTS
    assert alphalora_official([2.0, 3.0, 4.0], MAX_TOTAL_EXPERTS).total == MAX_TOTAL_EXPERTS
    assert budget_range(30) == (30, MAX_TOTAL_EXPERTS)
    assert check_budget(30, 30) == 30


def test_budget_below_one_per_layer_is_refused_in_official_mode_too():
    with pytest.raises(AlphaLoRAError, match="cannot give 7 layers"):
        alphalora_official([2.0] * 7, budget=5)


def test_allocations_built_by_hand_are_bounded():
    with pytest.raises(AlphaLoRAError, match="above the supported maximum"):
        custom([MAX_TOTAL_EXPERTS, 1])
    with pytest.raises(AlphaLoRAError, match="above the supported maximum"):
        Allocation(experts=(HUGE,), top_k=(2,), method="custom", budget=HUGE)
    with pytest.raises(AlphaLoRAError, match="above the supported maximum"):
        TrainConfig(allocation={"method": "alphalora", "budget": HUGE})


@pytest.mark.parametrize("mode", ["official", "default"])
def test_cli_huge_budget_is_a_clear_error_not_a_hang(mode):
    """Run in a subprocess with a deadline: the official mode used to loop ~10¹⁹ times."""
    argv = [sys.executable, "-m", "alphalora", "allocate", "--alphas", "2,3,4"]
    argv += ["--budget", str(HUGE), "--mode", mode]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.startswith("error: A budget of 10,000,000,000,000,000,000 experts")
    assert "Traceback" not in done.stderr


def test_cli_layers_zero_is_refused_not_replaced_by_32(capsys):
    assert main(["allocate", "--shape", "2468", "--layers", "0"]) == 1
    assert "layer count (--layers) must be a whole number ≥ 1; got 0" in capsys.readouterr().err
    assert main(["allocate", "--shape", "2468", "--layers", str(10**10)]) == 1
    assert "above the supported maximum" in capsys.readouterr().err
    assert main(["allocate", "--shape", "2468", "--json"]) == 0  # no --layers: 32, as before
    assert len(json.loads(capsys.readouterr().out)["experts"]) == 32


def test_app_budget_slider_uses_the_library_bound(tmp_path_factory, monkeypatch, tmp_path):
    """The Allocation page's budget slider stops at the library's bound (lowered here)."""
    from streamlit.testing.v1 import AppTest
    from test_app_pages import seeded_app_home

    monkeypatch.setenv("ALPHALORA_HOME", str(seeded_app_home(tmp_path_factory)))
    monkeypatch.setenv("ALPHALORA_RUNS_DB", str(tmp_path / "runs.sqlite"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    at = at.switch_page("pages/2_Allocation.py").run()
    assert at.slider(key="alloc_budget").max == 16 * 30  # embedded model: 30 layers
    monkeypatch.setattr(checks, "MAX_TOTAL_EXPERTS", 200)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    at = at.switch_page("pages/2_Allocation.py").run()
    slider = at.slider(key="alloc_budget")
    assert (slider.min, slider.max) == (30, 200)
