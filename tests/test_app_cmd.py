"""``python -m alphalora app``: the command it runs, its option checks and the real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from alphalora.cli import build_parser, main
from alphalora.cli.app_cmd import APP_FILE, build_command
from alphalora.errors import AlphaLoRAError

ROOT = Path(__file__).resolve().parent.parent


def test_command_runs_this_pythons_streamlit_on_the_app_file():
    argv = build_command()
    assert argv[:5] == [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    assert APP_FILE == ROOT / "app.py"
    argv = build_command(
        port=8600, address="0.0.0.0", headless=True, extra=["--", "--theme.base", "dark"]
    )
    assert argv[5:] == [
        "--server.port", "8600", "--server.address", "0.0.0.0", "--server.headless", "true",
        "--theme.base", "dark",
    ]  # fmt: skip


def test_bad_port_and_missing_app_are_user_errors(tmp_path):
    with pytest.raises(AlphaLoRAError, match="--port"):
        build_command(port=70000)
    with pytest.raises(AlphaLoRAError, match="missing"):
        build_command(app_file=tmp_path / "app.py")


def test_cli_prints_the_command(capsys):
    assert "app" in build_parser().format_help()
    assert main(["app", "--port", "8777", "--print-command"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("app.py --server.port 8777") and "-m streamlit run" in out
    assert main(["app", "--port", "0", "--print-command"]) == 1  # refused with a message
    assert "--port must be between" in capsys.readouterr().err


def test_cli_starts_a_server_that_answers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "alphalora", "app", "--port", str(port), "--address", "127.0.0.1",
            "--headless"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "the app command exited early"
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=2
                ) as r:
                    assert r.read().decode().strip() == "ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, "no answer from the app server within 90 s"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # Stopping the command stops the server too (it became the server: no orphan left).
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
