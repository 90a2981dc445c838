"""The on-disk cache of analyses: one folder per (weights' fingerprint, file guard, options) key
holding the tables (Parquet), the spectra (npz) and a meta.json, written atomically, so that a
second analysis of the same model loads instantly.

The key holds the weight files' size, mtime_ns and inode (the guard), so any ordinary edit of
the weights misses the cache. An edit that restores all three (an in-place rewrite followed by
``touch -r``) is caught only by the full content hash of ``--verify-cache``: an entry is then
used only when it records the same hash."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from alphalora import __version__
from alphalora.paths import atomic_write_json
from alphalora.spectral.analysis_types import AnalysisOptions, AnalysisResult

#: Bumped whenever a change alters the numbers, so that stale caches are not reused.
CACHE_VERSION = 1


def cache_key(fingerprint: str, opts: AnalysisOptions, guard: str = "") -> str:
    """Name of the cache folder of a model (by its fingerprint and its files' stat ``guard``)
    analysed with ``opts``."""
    blob = json.dumps(
        {"fp": fingerprint, "guard": guard, "opts": opts.cache_key_part(), "v": CACHE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_cached(
    path: Path,
    ref: str,
    opts: AnalysisOptions,
    fingerprint: str,
    *,
    content_hash: str | None = None,
) -> AnalysisResult | None:
    """The analysis cached in ``path``, or None when the entry is damaged or incomplete, or,
    with ``content_hash``, when the entry does not record that same hash of the weights."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if content_hash is not None and meta.get("content_hash") != content_hash:
            return None  # unverified or made from other bytes: recompute
        matrices = pd.read_parquet(path / "matrices.parquet")
        layers = pd.read_parquet(path / "layers.parquet")
        with np.load(path / "eigenvalues.npz") as npz:
            eigs = {meta["eig_names"][int(k[1:])]: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a damaged cache entry is recomputed, never trusted
    return AnalysisResult(
        ref=ref, model=meta["model"], options=opts, matrices=matrices, layers=layers, eigenvalues=eigs,
        fingerprint=fingerprint, elapsed_s=meta.get("elapsed_s", 0.0), device=meta.get("device", "cpu"),
        from_cache=True, cache_dir=path,
    )  # fmt: skip


def save_cache(path: Path, result: AnalysisResult, content_hash: str | None = None) -> None:
    """Write the result into ``path`` atomically (temp folder, then rename), with the weights'
    ``content_hash`` when it was computed (``--verify-cache``)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        result.matrices.to_parquet(tmp / "matrices.parquet", index=False)
        result.layers.to_parquet(tmp / "layers.parquet", index=False)
        names = list(result.eigenvalues)
        np.savez_compressed(
            tmp / "eigenvalues.npz", **{f"e{i}": result.eigenvalues[n] for i, n in enumerate(names)}
        )
        atomic_write_json(
            tmp / "meta.json",
            {
                "ref": result.ref, "model": result.model, "options": asdict(result.options),
                "fingerprint": result.fingerprint, "elapsed_s": result.elapsed_s, "device": result.device,
                "eig_names": names, "alphalora_version": __version__, "created_at": time.time(),
                "content_hash": content_hash,
            },
        )  # fmt: skip
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
