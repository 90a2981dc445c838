"""The run store: CRUD, JSON decoding, wide metrics, errors, concurrency, permissions, CLI."""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest

from alphalora.cli import main
from alphalora.errors import AlphaLoRAError
from alphalora.store.listing import LIST_COLUMNS
from alphalora.store.records import STATUSES, run_dir
from alphalora.store.run_store import RunStore
from alphalora.store.schema import SCHEMA_VERSION

CONFIG = {
    "model": "tiny-llama",
    "task": "rotten-tomatoes",
    "method": "alphalora",
    "steps": 40,
    "allocation": {"method": "alphalora", "experts": [2, 4, 6, 8]},
}


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


def test_default_location_wal_and_schema_version(_isolated_home):
    store = RunStore()
    assert store.path == Path(_isolated_home) / "runs.sqlite"
    assert store.path.is_file()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # A second store on the same file reuses the schema and sees the same runs.
    run_id = store.create_run({"model": "m"})
    assert RunStore().get_run(run_id)["config"] == {"model": "m"}


def test_create_get_update_decode(store):
    run_id = store.create_run(
        CONFIG, name="first", allocation={"total_experts": 20, "experts": [2, 4, 6, 8]}
    )
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    run = store.get_run(run_id)
    assert run["status"] == "queued"
    assert run["name"] == "first"
    assert run["config"] == CONFIG
    assert run["allocation"]["experts"] == [2, 4, 6, 8]
    assert run["summary"] is None
    assert run["created_at"].endswith("+00:00")

    store.update_run(
        run_id,
        status="running",
        pid=1234,
        device="cpu",
        started_at="2026-11-23T01:02:03+00:00",
        heartbeat_at="2026-11-23T01:02:05+00:00",
        params_trainable=5632,
        seconds_per_step=1.5,
    )
    store.update_run(
        run_id,
        status="completed",
        summary={"accuracy_before": 0.5, "accuracy_after": 0.75, "note": [1, 2]},
        adapter_path="/tmp/adapter",
        finished_at="2026-11-23T01:10:00+00:00",
        name="renamed",
    )
    run = store.get_run(run_id)
    assert run["status"] == "completed"
    assert run["pid"] == 1234
    assert run["summary"] == {"accuracy_before": 0.5, "accuracy_after": 0.75, "note": [1, 2]}
    assert run["adapter_path"] == "/tmp/adapter"
    assert run["params_trainable"] == 5632
    assert run["started_at"] == "2026-11-23T01:02:03.000+00:00"
    assert run["name"] == "renamed"
    assert store.merge_summary(run_id, eval_loss=1.25)["accuracy_after"] == 0.75
    assert store.get_run(run_id)["summary"]["eval_loss"] == 1.25


def test_unknown_ids_fields_and_values(store):
    run_id = store.create_run({"model": "m"})
    with pytest.raises(AlphaLoRAError, match="No run with id 'nope'"):
        store.get_run("nope")
    with pytest.raises(AlphaLoRAError, match="No run with id"):
        store.update_run("nope", status="running")
    with pytest.raises(AlphaLoRAError, match="No run with id"):
        store.log_metrics("nope", 1, {"train_loss": 1.0})
    with pytest.raises(AlphaLoRAError, match="No run with id"):
        store.delete_run("nope")
    with pytest.raises(AlphaLoRAError, match="No run with id"):
        store.metrics(["nope"])
    with pytest.raises(AlphaLoRAError, match="colour"):
        store.update_run(run_id, colour="red")
    with pytest.raises(AlphaLoRAError, match="Unknown status"):
        store.update_run(run_id, status="exploded")
    with pytest.raises(AlphaLoRAError, match="Unknown status"):
        store.create_run({}, status="done")
    with pytest.raises(AlphaLoRAError, match="must be a number"):
        store.update_run(run_id, pid="abc")
    with pytest.raises(AlphaLoRAError, match="type str"):
        store.log_metrics(run_id, 1, {"train_loss": "high"})
    with pytest.raises(AlphaLoRAError, match="not a valid run id"):
        run_dir("../escape")
    assert store.get_run(run_id)["status"] == "queued"  # failed updates changed nothing


def test_metrics_wide_table(store):
    a = store.create_run({"model": "a"})
    b = store.create_run({"model": "b"})
    for step in range(1, 4):
        store.log_metrics(
            a,
            step,
            {
                "train_loss": 2.0 / step,
                "aux_loss": 0.01,
                "lr": 3e-4,
                "router_load": [[0.5, 0.5], [0.25, 0.75]],
            },
        )
    store.log_metrics(a, 3, {"eval_loss": 1.1, "accuracy": 0.7}, split="eval")
    store.log_metrics(a, 3, {"train_loss": 0.6})  # re-logging a step replaces its value
    store.log_metrics(b, 1, {"train_loss": float("nan"), "tokens_per_s": float("inf")})
    store.log_metrics(b, 2, {"train_loss": None})

    wide = store.metrics(a)
    assert list(wide.columns[:3]) == ["run_id", "split", "step"]
    assert len(wide) == 4
    assert wide["split"].tolist() == ["train", "train", "train", "eval"]  # first logged first
    assert list(wide.columns).index("train_loss") < list(wide.columns).index("eval_loss")
    train = wide[wide["split"] == "train"]
    assert train["step"].tolist() == [1, 2, 3]
    assert train["train_loss"].tolist() == pytest.approx([2.0, 1.0, 0.6])
    assert train["router_load"].iloc[0] == [[0.5, 0.5], [0.25, 0.75]]
    assert wide["train_loss"].dtype == "float64"
    ev = wide[wide["split"] == "eval"].iloc[0]
    assert ev["accuracy"] == 0.7 and ev["step"] == 3
    assert math.isnan(ev["train_loss"])

    assert len(store.metrics(a, split="eval")) == 1
    both = store.metrics([b, a], split="train")
    assert both["run_id"].tolist() == [b, b, a, a, a]
    nan_row = both.iloc[0]
    assert math.isnan(nan_row["train_loss"]) and nan_row["tokens_per_s"] == math.inf
    assert store.metric_count(a) == 3 * 4 + 2
    empty = store.metrics(store.create_run({}))
    assert empty.empty and list(empty.columns) == ["run_id", "split", "step"]


def test_list_runs_columns_filter_search_and_delete(store):
    first = store.create_run(CONFIG, name="baseline")
    second = store.create_run(
        {"model": {"name": "smollm2"}, "task": "sst2", "method": "uniform"},
        allocation={"budget": 160},
    )
    store.update_run(
        second,
        status="completed",
        summary={"accuracy_before": 0.72, "accuracy_after": 0.76},
        params_trainable=1000,
        seconds_per_step=9.8,
    )
    store.log_metrics(first, 1, {"train_loss": 1.0})
    (run_dir(first) / "log.txt").write_text("hello\n")

    frame = store.list_runs()
    assert list(frame.columns) == list(LIST_COLUMNS)
    assert frame["run_id"].tolist() == [second, first]  # newest first
    row = frame.iloc[0]
    assert (row["model"], row["task"], row["method"]) == ("smollm2", "sst2", "uniform")
    assert row["accuracy_after"] == 0.76 and row["total_experts"] == 160
    assert frame.iloc[1]["total_experts"] == 20  # summed from config["allocation"]["experts"]
    assert pd.isna(frame.iloc[1]["accuracy_before"])

    assert store.list_runs(status="completed")["run_id"].tolist() == [second]
    assert store.list_runs(search="BASELINE")["run_id"].tolist() == [first]
    assert store.list_runs(search="smoll")["run_id"].tolist() == [second]
    assert store.list_runs(search="nothing-like-this").empty
    with pytest.raises(AlphaLoRAError, match="Unknown status"):
        store.list_runs(status="bogus")

    store.delete_run(first)
    assert not store.exists(first)
    assert store.metric_count() == 0
    assert not (Path(os.environ["ALPHALORA_HOME"]) / "runs" / first).exists()
    assert store.list_runs()["run_id"].tolist() == [second]


def test_delete_refuses_a_live_run(store):
    run_id = store.create_run({})
    store.update_run(run_id, status="running", pid=os.getpid())
    with pytest.raises(AlphaLoRAError, match="cancel it first"):
        store.delete_run(run_id)
    store.update_run(run_id, status="failed")
    store.delete_run(run_id)


def test_statuses_constant():
    assert STATUSES == ("queued", "running", "completed", "failed", "cancelled", "interrupted")


def _hammer(path: str, run_id: str, worker: int, count: int, queue) -> None:
    """Child process: log ``count`` metric steps, each its own transaction."""
    try:
        store = RunStore(path)
        for step in range(count):
            store.log_metrics(run_id, worker * 10_000 + step, {"train_loss": step, "lr": 1e-4})
            if step % 50 == 0:
                store.update_run(run_id, heartbeat_at="2026-01-01T00:00:00+00:00")
        queue.put(("ok", worker))
    except BaseException as exc:  # report anything, "database is locked" included
        queue.put(("error", repr(exc)))


def test_concurrent_processes_lose_nothing(store):
    run_id = store.create_run({"model": "m"})
    other = store.create_run({"model": "n"})
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_hammer, args=(str(store.path), run_id if i % 2 else other, i, 200, queue)
        )
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert [r[0] for r in results] == ["ok"] * 4, results
    assert all(proc.exitcode == 0 for proc in procs)
    assert store.metric_count(run_id) == 2 * 200 * 2
    assert store.metric_count(other) == 2 * 200 * 2
    assert len(store.metrics(run_id)) == 400
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_threads_share_one_store_object(store):
    run_id = store.create_run({})
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for step in range(50):
                store.log_metrics(run_id, offset + step, {"x": step})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.metric_count(run_id) == 150


def test_unwritable_data_dir_gives_a_clear_error(tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root ignores permission bits: use a path below a regular file
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        home = blocker / "sub"
    else:
        home = tmp_path / "locked"
        home.mkdir()
        home.chmod(0o500)
    monkeypatch.setenv("ALPHALORA_HOME", str(home))
    try:
        with pytest.raises(AlphaLoRAError, match="ALPHALORA_HOME") as info:
            RunStore()
        assert str(home) in str(info.value)
        with pytest.raises(AlphaLoRAError, match="writable") as info:
            RunStore(home / "runs.sqlite")
        assert str(home) in str(info.value)
    finally:
        if home.is_dir():
            home.chmod(0o700)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(AlphaLoRAError, match="upgrade"):
        RunStore(path)


def test_cli_list_show_metrics_delete(capsys, tmp_path):
    store = RunStore()
    assert main(["runs", "list"]) == 0
    assert "No runs yet" in capsys.readouterr().out

    run_id = store.create_run(CONFIG, name="cli-run")
    store.update_run(
        run_id,
        status="completed",
        summary={"accuracy_before": 0.5, "accuracy_after": 0.8},
        adapter_path="/data/adapter",
    )
    for step in (1, 2):
        store.log_metrics(run_id, step, {"train_loss": 1.0 / step, "router_load": [[1.0]]})
    (run_dir(run_id) / "log.txt").write_text("line one\nfinal line\n")

    assert main(["runs", "list", "--status", "completed"]) == 0
    out = capsys.readouterr().out
    assert run_id in out and "cli-run" in out and "0.8" in out

    assert main(["runs", "list", "--search", "zzz"]) == 0
    assert "No runs match" in capsys.readouterr().out

    assert main(["runs", "show", run_id]) == 0
    out = capsys.readouterr().out
    for text in ("completed", "rotten-tomatoes", "/data/adapter", "final line", "train step 2"):
        assert text in out
    assert "accuracy after" in out and "0.8" in out

    assert main(["runs", "metrics", run_id]) == 0
    out = capsys.readouterr().out
    assert "train_loss" in out and "router_load" in out  # named as left out of the table

    csv = tmp_path / "m.csv"
    assert main(["runs", "metrics", run_id, "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert table["train_loss"].tolist() == [1.0, 0.5]
    assert table["router_load"].iloc[0] == "[[1.0]]"

    assert main(["runs", "show", "no-such-run"]) == 1
    assert "No run with id 'no-such-run'" in capsys.readouterr().err

    assert main(["runs", "delete", run_id]) == 0
    assert not store.exists(run_id)
    assert main(["runs", "delete", run_id]) == 1
