"""Command line: ``python -m alphalora analyze | allocate | train | runs | predict | adapters | app``.

Each sub-command lives in its own module exposing ``register(subparsers)``; handlers
return an exit code. User errors (:class:`AlphaLoRAError`) print a message, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alphalora import __version__
from alphalora.errors import AlphaLoRAError

SUBCOMMANDS = ("analyze", "allocate", "train", "runs", "predict", "adapters", "app")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="python -m alphalora",
        description="AlphaLoRA Studio: spectral analysis and layer-wise MoE-LoRA allocation.",
    )
    parser.add_argument("--version", action="version", version=f"alphalora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"alphalora.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"alphalora.cli.{name}_cmd":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except AlphaLoRAError as exc:
        from alphalora.cli.terminal import clean

        print(f"error: {clean(exc, keep_newlines=True)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
