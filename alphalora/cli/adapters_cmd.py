"""``python -m alphalora adapters check PATH``: validate a saved adapter folder."""

from __future__ import annotations

import argparse
import json

from alphalora.cli.terminal import clean


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``adapters`` command and its ``check`` action."""
    parser = sub.add_parser("adapters", help="check saved adapters")
    actions = parser.add_subparsers(dest="adapters_action", metavar="ACTION")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    p = actions.add_parser(
        "check",
        help="validate an adapter folder (config, checksum, every tensor's shape)",
        description="Check an adapter folder written by a finished run (or the run folder): "
        "its config, the weights' SHA-256, and that every tensor is present with the shape the "
        "config implies. Exits 1 naming the damaged file.",
    )
    p.add_argument("path", metavar="PATH", help="adapter folder or run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Print the adapter's summary when it is sound (errors exit 1 with a message)."""
    from alphalora.finetune.adapter_check import check_adapter

    summary = check_adapter(args.path)
    if args.json:
        print(json.dumps(summary, ensure_ascii=True))
        return 0
    print(f"adapter OK: {clean(summary['path'])}")
    for key, value in summary.items():
        if key != "path":
            print(f"  {key:<14} {clean(value)}")
    return 0
