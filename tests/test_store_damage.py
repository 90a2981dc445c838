"""A damaged run store never breaks the `runs` commands (issue 11): a bad row is listed as
damaged (case 5), run folders whose rows were lost are detected and rebuilt by `runs recover`
(case 7), and stored text cannot inject terminal escapes (case 8)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from reliability_helpers import tiny_config, tiny_files

from alphalora.cli import main
from alphalora.cli.terminal import clean, clean_log_line
from alphalora.finetune.train import train
from alphalora.runs.recover import orphan_run_folders, recover_runs
from alphalora.store.records import run_dir
from alphalora.store.recovery import read_metrics_mirror
from alphalora.store.run_store import RunStore

EVIL = "evil\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\nfake line\x9b31m\u202egnp.exe"


def _raw(store: RunStore, sql: str, *params) -> None:
    with sqlite3.connect(str(store.path)) as conn:
        conn.execute(sql, params)


# --------------------------------------------------------------------------- case 5


def test_a_bad_row_is_listed_as_damaged_and_the_rest_still_work(capsys):
    store = RunStore()
    good = store.create_run({"model": "m", "task": "t"}, name="good")
    bad_config = store.create_run({"model": "m"}, name="bad-config")
    bad_time = store.create_run({"model": "m"}, name="bad-time", status="running")
    _raw(store, "UPDATE runs SET config = '{not json' WHERE run_id = ?", bad_config)
    _raw(store, "UPDATE runs SET created_at = 'yesterday' WHERE run_id = ?", bad_time)
    _raw(store, "UPDATE runs SET summary = '[1,' WHERE run_id = ?", good)
    store.log_metrics(good, 1, {"train_loss": 0.5, "router_load": [0.5, 0.5]})
    _raw(store, "UPDATE metrics SET json = '[0.5,' WHERE name = 'router_load'")

    assert main(["runs", "list"]) == 0
    out = capsys.readouterr().out
    for run_id in (good, bad_config, bad_time):
        assert run_id in out
    assert f"Run {bad_config} has a damaged row: config is not valid JSON" in out
    assert f"Run {bad_time} has a damaged row: created_at 'yesterday' is not an ISO-8601" in out
    assert main(["runs", "show", bad_config]) == 0
    assert "damaged           config is not valid JSON" in capsys.readouterr().out
    assert main(["runs", "show", good]) == 0  # damaged summary and metric value
    assert "train_loss=0.5" in capsys.readouterr().out
    assert main(["runs", "metrics", good]) == 0
    run = store.get_run(bad_time)
    assert run["created_at"] is None and run["damaged"] == [
        "created_at 'yesterday' is not an ISO-8601 time"
    ]
    # a damaged summary is kept, never lost, when the trainer merges into it
    assert store.merge_summary(good, progress={"phase": "training"})["damaged_summary"] == "[1,"
    assert main(["runs", "delete", bad_config]) == 0
    assert not store.exists(bad_config)


# --------------------------------------------------------------------------- case 7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"), reviews=60)


def _config(tiny, **changes) -> dict:
    allocation = {"experts": [2, 2], "top_k": [1, 1]}
    fixed = {"allocation": allocation, "steps": 4, "eval_examples": 8, "checkpoint_every": 2}
    return tiny_config(tiny, **{**fixed, **changes})


def _empty_the_store(store: RunStore) -> None:
    """What the adversarial pass did: the store file cut to 0 bytes (no WAL left)."""
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(store.path) + suffix).unlink(missing_ok=True)
    store.path.write_bytes(b"")


def test_an_emptied_store_is_detected_and_runs_recover_rebuilds_the_rows(tiny, capsys):
    store = RunStore()
    done = train(_config(tiny, name="done"), store=store)
    before = store.metrics(done["run_id"])

    def stop(fraction: float, message: str) -> None:
        if message.startswith("step 3/"):
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train(_config(tiny, name="stopped"), store=store, progress=stop)
    assert stopped["status"] == "cancelled"
    assert len(read_metrics_mirror(run_dir(done["run_id"]))) >= 4  # the mirror in the folder
    _empty_the_store(store)

    assert main(["runs", "list"]) == 0
    out = capsys.readouterr().out
    assert "No runs yet." in out
    assert "Note: 2 run folder(s) have no row in the run store" in out
    assert "runs recover" in out
    assert main(["runs", "show", done["run_id"]]) == 1
    assert "has a folder but no row" in capsys.readouterr().err

    assert main(["runs", "recover"]) == 0
    out = capsys.readouterr().out
    assert f"recovered {done['run_id']} as completed (adapter saved;" in out
    assert f"recovered {stopped['run_id']} as interrupted (resumable from step-3" in out
    fresh = RunStore()
    assert orphan_run_folders(fresh) == []
    row = fresh.get_run(done["run_id"])
    assert row["status"] == "completed" and row["name"] == "done"
    assert row["summary"]["accuracy_after"] == done["accuracy_after"]
    assert row["adapter_path"] == done["adapter_path"] and row["allocation"]["experts"] == [2, 2]
    assert row["config"]["name"] == "done"
    after = fresh.metrics(done["run_id"])
    assert after[["split", "step"]].values.tolist() == before[["split", "step"]].values.tolist()
    assert after["train_loss"].tolist() == pytest.approx(before["train_loss"].tolist(), nan_ok=True)
    # the interrupted one resumes from its checkpoint and completes
    resumed = train(None, run_id=stopped["run_id"], store=fresh, resume=True)
    assert resumed["status"] == "completed" and resumed["steps"] == 4
    assert main(["runs", "recover"]) == 0
    assert "nothing to recover" in capsys.readouterr().out


def test_recover_skips_a_folder_without_a_readable_config(capsys):
    store = RunStore()
    folder = run_dir("20260101-000000-abcd")
    (folder / "log.txt").write_text("started\n")
    (folder / "config.json").write_text("{broken")
    assert [r.status for r in recover_runs(store)] == [None]
    assert main(["runs", "recover"]) == 0
    assert "skipped 20260101-000000-abcd: config.json is missing or not valid JSON" in (
        capsys.readouterr().out
    )
    (folder / "config.json").write_text(json.dumps({"name": "x", "model": "m"}))
    recovered = recover_runs(store)
    assert [(r.run_id, r.status) for r in recovered] == [("20260101-000000-abcd", "interrupted")]
    assert store.get_run("20260101-000000-abcd")["created_at"].startswith("2026-01-01T00:00:00")


# --------------------------------------------------------------------------- case 8


def test_clean_escapes_every_control_character():
    text = clean(EVIL)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\u202e" not in text
    assert text == (
        "evil\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\r\\nfake line\\x9b31m\\u202egnp.exe"
    )
    assert clean("a\nb", keep_newlines=True) == "a\nb"
    assert clean_log_line("train 10%\rtrain 50%\rtrain 90% \x1b[0m") == "train 90% \\x1b[0m"


def test_runs_list_and_show_print_no_raw_control_characters(capsys):
    store = RunStore()
    run_id = store.create_run({"model": EVIL, "task": "t"}, name=EVIL)
    store.update_run(run_id, error=EVIL)
    (run_dir(run_id) / "log.txt").write_text(f"loading {EVIL}\nstep 1\rstep 2\n")
    for argv in (["runs", "list"], ["runs", "show", run_id], ["runs", "list", "--search", "evil"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        raw = [c for c in out if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F]
        assert raw == [] and "\u202e" not in out, argv
        assert "evil\\x1b]0;pwned" in out
    assert main(["runs", "show", "no\x1b[31mrun"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31m" in err
