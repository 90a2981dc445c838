"""``python -m alphalora app [--port N] [--address HOST] [--print-command]``: start the Streamlit app
with the Streamlit of the running Python (the project's virtual environment)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from alphalora.errors import AlphaLoRAError

APP_FILE = Path(__file__).resolve().parents[2] / "app.py"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``app`` sub-command."""
    p = sub.add_parser(
        "app",
        help="start the AlphaLoRA Studio web app (Streamlit)",
        description="Run `streamlit run app.py` with this Python's Streamlit. The server listens "
        "on localhost unless --address says otherwise (see .streamlit/config.toml).",
    )
    p.add_argument(
        "--port", type=int, help="port to listen on (default: 8501, or the next free one)"
    )
    p.add_argument(
        "--address", help="address to bind (default: localhost from .streamlit/config.toml)"
    )
    p.add_argument("--headless", action="store_true", help="do not try to open a browser")
    p.add_argument("--print-command", action="store_true", help="print the command and exit")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER,
                   help="extra arguments after -- are passed to `streamlit run`")  # fmt: skip
    p.set_defaults(handler=run)


def build_command(
    *,
    port: int | None = None,
    address: str | None = None,
    headless: bool = False,
    extra: list[str] | None = None,
    python: str | None = None,
    app_file: Path = APP_FILE,
) -> list[str]:
    """The argv that starts the app: ``python -m streamlit run app.py [options]``."""
    if not app_file.is_file():
        raise AlphaLoRAError(
            f"The app entry point {app_file} is missing; run this from a full checkout of "
            "AlphaLoRA Studio."
        )
    if port is not None and not 1 <= port <= 65535:
        raise AlphaLoRAError(f"--port must be between 1 and 65535; got {port}.")
    argv = [python or sys.executable, "-m", "streamlit", "run", str(app_file)]
    if port is not None:
        argv += ["--server.port", str(port)]
    if address:
        argv += ["--server.address", address]
    if headless:
        argv += ["--server.headless", "true"]
    rest = list(extra or [])
    if rest and rest[0] == "--":
        rest = rest[1:]
    return argv + rest


def run(args: argparse.Namespace) -> int:
    """Start Streamlit in the project folder (so .streamlit/config.toml applies); on POSIX the
    process is replaced by the server, elsewhere it waits for it."""
    argv = build_command(
        port=args.port, address=args.address, headless=args.headless, extra=args.streamlit_args
    )
    if args.print_command:
        print(" ".join(argv))
        return 0
    if importlib.util.find_spec("streamlit") is None:
        raise AlphaLoRAError(
            f"Streamlit is not installed for {sys.executable}. Run `make app` (it installs the "
            "runtime requirements) or `pip install -r requirements.txt`."
        )
    if os.name == "posix":  # become the server: signals (Ctrl-C, SIGTERM) reach it directly
        os.chdir(APP_FILE.parent)
        os.execv(argv[0], argv)
    try:
        return subprocess.call(argv, cwd=APP_FILE.parent)
    except KeyboardInterrupt:
        return 130
