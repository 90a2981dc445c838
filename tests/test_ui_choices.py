"""Pure helpers behind the app's choices: short allocation labels, runs to watch/compare by
default, the stored allocation's model, one β range."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from alphalora.allocation.presets import LLAMA2_7B_LAYER_ALPHAS  # noqa: E402
from alphalora.allocation.softmax_rules import (  # noqa: E402
    alphalora_allocation,
    alphalora_official,
    temperature_to_beta,
)
from ui.choices import (  # noqa: E402
    allocation_for,
    allocation_key,
    default_comparison,
    display_label,
    watch_selection,
)


def test_labels_round_beta_and_count_long_lists_of_empty_layers():
    alloc = alphalora_allocation([2.0, 3.0, 4.0], 9, temperature_to_beta(1.67))
    assert "β=0.599" in alloc.label  # the library records β to 3 significant digits
    assert display_label(alloc) == "AlphaLoRA (T=9, β=0.599, min 1)"
    official = alphalora_official(LLAMA2_7B_LAYER_ALPHAS, 32, 10.0)
    assert official.experts.count(0) == 17 and "[1, 2, 3" in official.label
    assert display_label(official) == "AlphaLoRA official (T=32, β=10) — 17 layers got 0 experts"
    few = alphalora_official(LLAMA2_7B_LAYER_ALPHAS, 64, 5.0)
    assert display_label(few) == few.label  # four layers are still listed
    assert display_label(alphalora_allocation([2.0, 3.0], 4, 2.5)).endswith("β=2.5, min 1)")


def test_runs_to_watch_keep_what_the_user_chose_and_add_new_active_runs():
    # First visit: everything listed is new, active runs first.
    assert watch_selection(["a", "b", "c"], ["c"], [], []) == ["c", "a", "b"]
    # The user removed "a" while it is listed: it stays removed.
    assert watch_selection(["a", "b", "c"], ["c"], ["a", "b", "c"], ["b", "c"]) == ["c", "b"]
    # A run started meanwhile joins at the front; a vanished one is dropped.
    assert watch_selection(["b", "c", "d"], ["d"], ["a", "b", "c"], ["a", "b"]) == ["d", "b"]
    assert len(watch_selection([str(i) for i in range(9)], [], [], [])) == 4


def test_runs_compared_by_default_put_running_ones_first():
    assert default_comparison(["a", "b", "c", "d"], ["c"], ["a", "d"]) == ["c", "a", "d"]
    assert default_comparison(["a", "b"], [], []) == ["a", "b"]
    assert default_comparison(list("abcdef"), [], list("abcdef")) == ["a", "b", "c"]


def test_a_stored_allocation_belongs_to_its_model_and_fit():
    stored = {"experts": [1, 2]}
    key = allocation_key("custom", "/m", "hill-peak")
    assert allocation_for(stored, key, allocation_key("custom", "/m", "hill-peak")) == stored
    assert allocation_for(stored, key, allocation_key("custom", "/m", "clauset")) is None
    assert allocation_for(stored, key, allocation_key("embedded", "embedded", "hill-peak")) is None
    assert allocation_for(stored, None, key) is None and allocation_for(None, key, key) is None
