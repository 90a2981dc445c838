"""Trustworthy comparisons end to end on a tiny model: every evaluation stores its per-example
predictions, ``runs compare`` pairs runs on the same examples (and refuses others), the run row
keeps the allocation's name, and plain LoRA trains with per-module ranks."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from test_train import _config as train_config
from train_helpers import save_tiny_model, toy_reviews, write_jsonl

from alphalora.allocation.params import module_shapes_from_config
from alphalora.allocation.ranks import allocate_ranks, peft_lora_config
from alphalora.allocation.softmax_rules import alphalora_allocation
from alphalora.cli import main
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import TrainConfig
from alphalora.finetune.predictions import load_predictions, prediction_steps
from alphalora.finetune.train import train
from alphalora.runs.compare_runs import compare_runs, interval_table, pairwise_table
from alphalora.store.records import run_dir
from alphalora.store.run_store import RunStore

TINY_SHAPES = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
               "num_key_value_heads": 2}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-trust")
    return {
        "model": str(save_tiny_model(root / "model")),
        "task": str(write_jsonl(root / "reviews.jsonl", toy_reviews(80))),
    }


def _config(tiny, **changes) -> dict:
    """test_train's tiny config: 3 steps, no dropout, MoE-LoRA unless ``allocation`` says."""
    return train_config(tiny, **{"steps": 3, "dropout": 0.0, **changes})


def test_runs_store_predictions_are_compared_and_keep_their_allocation_name(tiny, capsys):
    from ui.comparisons import training_spec

    store = RunStore()
    chosen = alphalora_allocation([2.0, 3.0], 5, 2.5)
    spec = training_spec(chosen, {"layer_score": "median", "shape": None})
    a = train(_config(tiny, name="alpha", allocation=spec, eval_every=2), store=store)
    run = store.get_run(a["run_id"])
    # the allocation chosen on the Allocation page keeps its name, mode and β on the run row
    record = run["allocation"]
    assert record["label"] == chosen.label and record["label"] != "Custom"
    assert (record["mode"], record["beta"], record["temperature"]) == ("default", 2.5, 0.4)
    assert record["layer_score"] == "median" and record["experts"] == list(chosen.experts)
    assert store.list_runs()["allocation"].tolist() == [chosen.label]
    # every evaluation (before, every 2 steps, final) stored each example's prediction
    folder = run_dir(a["run_id"])
    assert prediction_steps(folder) == [0, 2, 3]
    final = load_predictions(folder)
    assert final["n"] == 12 and len(set(final["key"])) == 12
    assert sum(final["correct"]) == round(run["summary"]["accuracy_after"] * 12)
    assert run["summary"]["eval_fingerprint"] == final["fingerprint"]
    # a second run on the same examples can be paired; with itself the test finds nothing
    b = train(_config(tiny, name="uniform", allocation={"method": "uniform", "budget": 5}))
    assert compare_runs(a["run_id"], a["run_id"]).p_value == 1.0
    paired = compare_runs(a["run_id"], b["run_id"])
    assert paired.n == 12
    assert main(["runs", "compare", a["run_id"], b["run_id"]]) == 0
    out = capsys.readouterr().out
    assert "12 held-out examples, the same for both runs" in out
    assert "95% CI" in out and "McNemar exact p =" in out
    assert ("Within noise" in out) == paired.within_noise
    assert main(["runs", "compare", a["run_id"], b["run_id"], "--json", "--step-a", "0"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n"] == 12 and 0 <= data["p_value"] <= 1
    runs = [store.get_run(a["run_id"]), store.get_run(b["run_id"])]
    assert pairwise_table(runs)["p_value"].tolist() == [paired.p_value]
    table = interval_table(runs)
    assert table["accuracy_low"].le(table["accuracy_after"]).all()
    assert table["allocation"].tolist()[0] == chosen.label
    # a run scored on other examples is refused with a clear message
    c = train(_config(tiny, name="fewer", allocation={"method": "uniform", "budget": 5},
                      eval_examples=10))  # fmt: skip
    assert main(["runs", "compare", a["run_id"], c["run_id"]]) == 1
    err = capsys.readouterr().err
    assert "were evaluated on different examples" in err and "needs the same" in err
    assert "Not paired" in pairwise_table([runs[0], store.get_run(c["run_id"])])["verdict"][0]


def test_plain_lora_trains_with_per_module_ranks(tiny, tmp_path):
    ranks = allocate_ranks([2.0, 5.0], 40, 2.5)
    config = peft_lora_config(ranks, lora_alpha=16)
    path = tmp_path / "lora_config.json"
    path.write_text(json.dumps(config))
    store = RunStore()
    result = train(
        _config(tiny, method="lora", allocation=None, lora_config=str(path)), store=store
    )
    run = store.get_run(result["run_id"])
    assert run["config"]["lora_config"]["rank_pattern"] == config["rank_pattern"]  # inlined
    shapes = module_shapes_from_config(TINY_SHAPES)
    assert run["params_trainable"] == ranks.parameters(shapes)
    assert run["allocation"]["mode"] == "lora-ranks" and "R=40" in run["allocation"]["label"]
    weights = load_file(f"{result['adapter_path']}/adapter_model.safetensors")
    for name, rank in config["rank_pattern"].items():
        a = next(v for k, v in weights.items() if f"{name}.lora_A" in k)
        assert a.shape[0] == rank, name
    uniform = train(_config(tiny, method="lora", allocation=None, rank=4), store=store)
    row = store.get_run(uniform["run_id"])["allocation"]
    assert row["label"] == "LoRA r=4 (uniform)" and row["rank"] == 4


def test_rank_patterns_that_do_not_fit_the_model_are_refused(tiny, tmp_path):
    ranks = allocate_ranks([2.0, 5.0, 3.0], 40, 2.5)  # three layers: the model has two
    store = RunStore()
    with pytest.raises(AlphaLoRAError, match="names 7 module"):
        train(
            _config(tiny, method="lora", allocation=None, lora_config=peft_lora_config(ranks)),
            store=store,
        )
    assert store.runs()[0]["status"] == "failed"
    good = peft_lora_config(allocate_ranks([2.0, 5.0], 40))
    for changes, message in (
        ({"lora_config": good}, "applies to method 'lora' only"),
        ({"method": "lora", "lora_config": str(tmp_path / "none.json")}, "not found"),
        ({"method": "lora", "lora_config": {**good, "rank_pattern": {"x": 0}}}, "≥ 1"),
        ({"method": "lora", "lora_config": {**good, "use_dora": True}}, "Unknown lora_config"),
        ({"method": "lora", "lora_config": {"r": 8}}, "needs a non-empty rank_pattern"),
    ):
        with pytest.raises(AlphaLoRAError, match=message):
            TrainConfig(**changes)
