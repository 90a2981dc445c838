"""Where the user's work lives (one data directory) and how files are written safely."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError

ENV_VAR = "ALPHALORA_HOME"


def data_dir() -> Path:
    """Return the data directory (``$ALPHALORA_HOME`` or ``~/.alphalora``), creating it."""
    root = Path(os.environ.get(ENV_VAR) or Path.home() / ".alphalora").expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlphaLoRAError(
            f"Cannot create the data directory {root}: {exc.strerror}. "
            f"Set {ENV_VAR} to a writable folder."
        ) from exc
    if not os.access(root, os.W_OK):
        raise AlphaLoRAError(
            f"The data directory {root} is not writable. Set {ENV_VAR} to a writable folder."
        )
    return root


def subdir(name: str) -> Path:
    """A named folder inside the data directory (``analyses``, ``runs``, ``models``, …)."""
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_file(
    path: str | os.PathLike[str], suffixes: tuple[str, ...] = (), *, what: str = "output file"
) -> Path:
    """Refuse, before any work starts, an output path that cannot be written: a suffix not in
    ``suffixes``, an existing folder, a "folder" that is really a file, or a folder where no
    file can be created (probed with a temporary file). Returns the path, expanded."""
    target = Path(path).expanduser()
    if suffixes and target.suffix.lower() not in suffixes:
        allowed = " or ".join(
            [", ".join(suffixes[:-1]), suffixes[-1]] if suffixes[:-1] else suffixes
        )
        raise AlphaLoRAError(f"Cannot write the {what} {target.name!r}: use a {allowed} file name.")
    if target.is_dir():
        raise AlphaLoRAError(f"The {what} {target} is a folder; give a file name inside it.")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # missing folders are created when the file is written
    if not folder.is_dir():
        raise AlphaLoRAError(
            f"Cannot write the {what} {target}: {folder} is a file, not a folder. "
            "Choose another path."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".alphalora-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AlphaLoRAError(
            f"Cannot write the {what} {target}: no file can be created in {folder} "
            f"({exc.strerror or exc}). Choose a writable folder."
        ) from exc
    return target


def write_error(path: str | os.PathLike[str], exc: OSError, what: str = "file") -> AlphaLoRAError:
    """An OSError met while writing ``path`` as a message that names the file and the cause."""
    return AlphaLoRAError(
        f"Could not write the {what} {path}: {exc.strerror or exc}. Check the path, the free "
        "space and the permissions, then try again."
    )


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename, so that a crash
    never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
