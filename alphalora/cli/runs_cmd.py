"""``python -m alphalora runs list | show | cancel | resume | metrics | compare | delete | recover``.

Every text that comes from the store (names, errors, configs, log lines) goes through
:func:`~alphalora.cli.terminal.clean` before it reaches the terminal."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from alphalora import paths
from alphalora.cli.compare_cmd import register_compare
from alphalora.cli.terminal import clean, clean_log_line
from alphalora.errors import AlphaLoRAError
from alphalora.runs import jobs
from alphalora.runs.recover import orphan_run_folders, recover_runs
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

    p = actions.add_parser(
        "recover",
        help="rebuild rows for run folders the store has no row for (a damaged or empty store)",
    )
    p.set_defaults(handler=cmd_recover)


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
    return clean(value)


def _orphan_note(store: RunStore) -> None:
    """Say when run folders exist that the store has no row for (e.g. it was emptied)."""
    orphans = orphan_run_folders(store)
    if orphans:
        shown = ", ".join(orphans[:3]) + (", …" if len(orphans) > 3 else "")
        print(
            f"Note: {len(orphans)} run folder(s) have no row in the run store {store.path} "
            f"({shown}); it may have been damaged or emptied. Rebuild their rows with "
            "`python -m alphalora runs recover`."
        )


def cmd_list(args: argparse.Namespace) -> int:
    """Print the runs table; damaged rows are listed and named, never fatal."""
    store = _open()
    frame = store.list_runs(status=args.status, search=args.search)
    if frame.empty:
        print("No runs match." if (args.status or args.search) else "No runs yet.")
        _orphan_note(store)
        return 0
    table = frame[list(LIST_SHOWN)].copy()
    table["created_at"] = table["created_at"].str.slice(0, 19).str.replace("T", " ")
    for column in ("run_id", "name", "status", "method", "model", "task", "created_at"):
        table[column] = table[column].map(clean, na_action="ignore")
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    damaged = frame[frame["error"].fillna("").str.startswith("damaged row: ")]
    for _, row in damaged.iterrows():
        print(
            f"Run {clean(row['run_id'])} has a {clean(row['error'])}; look at it with "
            f"`runs show {clean(row['run_id'])}` or remove it with `runs delete`."
        )
    _orphan_note(store)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one run: status, config, allocation, last metrics, accuracy, adapter, log tail."""
    store = _open()
    try:
        run = store.get_run(args.run_id)
    except AlphaLoRAError:
        if args.run_id in orphan_run_folders(store):
            raise AlphaLoRAError(
                f"Run {args.run_id} has a folder but no row in the run store; rebuild its row "
                "with `python -m alphalora runs recover`."
            ) from None
        raise
    info = run_summary_row(run)
    print(f"run {clean(run['run_id'])}" + (f"  ({clean(run['name'])})" if run.get("name") else ""))
    fields = [
        ("damaged", "; ".join(run["damaged"]) if run.get("damaged") else None),
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
            print(f"  {clean(split)} step {int(last['step'])}: {', '.join(values)}")
    log = jobs.tail_log(run["run_id"], args.lines)
    print(f"log (last {args.lines} lines):" if log else "log: (empty)")
    for line in log.split("\n"):
        print(f"  {clean_log_line(line)}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a run and say what happened."""
    store = _open()
    print(jobs.cancel_run(args.run_id, store=store, timeout=args.timeout))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a run from its newest valid checkpoint (naming any damaged one first)."""
    from alphalora.finetune.checkpoint_check import resume_preview
    from alphalora.store.records import check_run_id

    store = _open()
    store.get_run(args.run_id)
    preview = resume_preview(paths.data_dir() / "runs" / check_run_id(args.run_id))
    if preview:
        print(f"Note: {preview}")
    jobs.resume_run(args.run_id, store=store)
    run = store.get_run(args.run_id)
    print(
        f"Resumed run {args.run_id} (pid {run.get('pid')}); follow it with "
        f"`python -m alphalora runs show {args.run_id}`."
    )
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """Print the run's metrics table, or write it to CSV (list metrics as JSON text)."""
    if args.csv:
        paths.check_output_file(args.csv, (".csv",), what="metrics file")
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
        try:
            paths.atomic_write_text(Path(args.csv).expanduser(), out.to_csv(index=False))
        except OSError as exc:
            raise paths.write_error(args.csv, exc, "metrics file") from exc
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


def cmd_recover(args: argparse.Namespace) -> int:
    """Rebuild the rows of run folders that have none, and say what was done with each."""
    store = _open()
    done = recover_runs(store)
    if not done:
        print(f"Every run folder has its row in {store.path}; nothing to recover.")
        return 0
    for item in done:
        if item.status is None:
            print(f"skipped {clean(item.run_id)}: {item.detail}")
        else:
            print(
                f"recovered {clean(item.run_id)} as {item.status} ({item.detail}; "
                f"{item.metrics} metric log entries)"
            )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a run (refused while its process is alive)."""
    store = _open()
    store.delete_run(args.run_id)
    print(f"Deleted run {args.run_id}.")
    return 0
