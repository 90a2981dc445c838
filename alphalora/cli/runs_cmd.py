"""``python -m alphalora runs list | show | cancel | resume | metrics | compare | delete``."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from alphalora import paths
from alphalora.cli.compare_cmd import register_compare
from alphalora.runs import jobs
from alphalora.store.listing import run_summary_row
from alphalora.store.records import STATUSES
from alphalora.store.run_store import RunStore

LIST_SHOWN = (
    "run_id",
    "name",
    "status",
    "method",
    "allocation",
    "model",
    "task",
    "created_at",
    "accuracy_before",
    "accuracy_after",
    "seconds_per_step",
    "total_experts",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``runs`` command and its actions."""
    parser = subparsers.add_parser(
        "runs",
        help="list, inspect, cancel, resume or delete fine-tune runs",
        description="Look after fine-tune runs recorded in the run store.",
    )
    actions = parser.add_subparsers(dest="runs_action", metavar="ACTION")
    parser.set_defaults(handler=lambda args: _help(parser))

    p = actions.add_parser("list", help="table of runs, newest first")
    p.add_argument("--status", choices=STATUSES, help="only runs with this status")
    p.add_argument("--search", metavar="TEXT", help="match id, name, model, task, method")
    p.set_defaults(handler=cmd_list)

    p = actions.add_parser("show", help="everything about one run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--lines", type=int, default=20, help="log lines to show (default 20)")
    p.set_defaults(handler=cmd_show)

    p = actions.add_parser("cancel", help="stop a queued or running run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds before SIGKILL")
    p.set_defaults(handler=cmd_cancel)

    p = actions.add_parser("resume", help="restart a failed/interrupted/cancelled run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(handler=cmd_resume)

    p = actions.add_parser("metrics", help="the run's metrics, one row per step")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--split", help="only this split (train, eval, …)")
    p.add_argument("--csv", metavar="FILE", help="write all metrics to this CSV file")
    p.set_defaults(handler=cmd_metrics)

    register_compare(actions)

    p = actions.add_parser("delete", help="forget a run and remove its files")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(handler=cmd_delete)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _open() -> RunStore:
    """The default store, reconciled (dead processes marked interrupted)."""
    store = RunStore()
    jobs.reconcile(store)
    return store


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cmd_list(args: argparse.Namespace) -> int:
    """Print the runs table."""
    frame = _open().list_runs(status=args.status, search=args.search)
    if frame.empty:
        print("No runs match." if (args.status or args.search) else "No runs yet.")
        return 0
    table = frame[list(LIST_SHOWN)].copy()
    table["created_at"] = table["created_at"].str.slice(0, 19).str.replace("T", " ")
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one run: status, config, allocation, last metrics, accuracy, adapter, log tail."""
    store = _open()
    run = store.get_run(args.run_id)
    info = run_summary_row(run)
    print(f"run {run['run_id']}" + (f"  ({run['name']})" if run.get("name") else ""))
    fields = [
        ("status", run["status"]),
        ("error", run.get("error")),
        ("method", info.get("method")),
        ("allocation", info.get("allocation")),
        ("model", info.get("model")),
        ("task", info.get("task")),
        ("created", run.get("created_at")),
        ("started", run.get("started_at")),
        ("finished", run.get("finished_at")),
        ("heartbeat", run.get("heartbeat_at")),
        ("pid", run.get("pid")),
        ("device", run.get("device")),
        ("accuracy before", info.get("accuracy_before")),
        ("accuracy after", info.get("accuracy_after")),
        ("trainable params", run.get("params_trainable")),
        ("seconds/step", run.get("seconds_per_step")),
        ("total experts", info.get("total_experts")),
        ("adapter", run.get("adapter_path")),
        ("folder", paths.data_dir() / "runs" / run["run_id"]),
    ]
    for label, value in fields:
        print(f"  {label:<17} {_fmt(value)}")
    allocation = run.get("allocation")
    if isinstance(allocation, dict):
        print("allocation:")
        for key, value in allocation.items():
            text = json.dumps(value)
            print(f"  {key}: {text if len(text) <= 200 else text[:197] + '...'}")
    print("config:")
    for line in json.dumps(run["config"], indent=2).splitlines():
        print(f"  {line}")
    if run.get("summary"):
        print("summary:")
        for line in json.dumps(run["summary"], indent=2).splitlines():
            print(f"  {line}")
    metrics = store.metrics(run["run_id"])
    if not metrics.empty:
        print("last metrics:")
        for split, part in metrics.groupby("split", sort=True):
            last = part.iloc[-1]
            values = [
                f"{k}={_fmt(v)}"
                for k, v in last.items()
                if k not in ("run_id", "split", "step")
                and not isinstance(v, list | dict)
                and not (isinstance(v, float) and math.isnan(v))
            ]
            print(f"  {split} step {int(last['step'])}: {', '.join(values)}")
    log = jobs.tail_log(run["run_id"], args.lines)
    print(f"log (last {args.lines} lines):" if log else "log: (empty)")
    for line in log.splitlines():
        print(f"  {line}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a run and say what happened."""
    store = _open()
    print(jobs.cancel_run(args.run_id, store=store, timeout=args.timeout))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a run from its last checkpoint."""
    store = _open()
    jobs.resume_run(args.run_id, store=store)
    run = store.get_run(args.run_id)
    print(
        f"Resumed run {args.run_id} (pid {run.get('pid')}); follow it with "
        f"`python -m alphalora runs show {args.run_id}`."
    )
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """Print the run's metrics table, or write it to CSV (list metrics as JSON text)."""
    frame = _open().metrics(args.run_id, split=args.split)
    list_columns = [
        c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list | dict)).any()
    ]
    if args.csv:
        out = frame.copy()
        for column in list_columns:
            out[column] = out[column].map(
                lambda v: json.dumps(v) if isinstance(v, list | dict) else ""
            )
        paths.atomic_write_text(args.csv, out.to_csv(index=False))
        print(f"Wrote {len(out)} rows to {args.csv}.")
        return 0
    if frame.empty:
        print(f"Run {args.run_id} has no metrics yet.")
        return 0
    shown = frame.drop(columns=["run_id", *list_columns])
    print(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.5g}"))
    if list_columns:
        print(f"(not shown: {', '.join(list_columns)}; use --csv FILE to get them)")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a run (refused while its process is alive)."""
    store = _open()
    store.delete_run(args.run_id)
    print(f"Deleted run {args.run_id}.")
    return 0
