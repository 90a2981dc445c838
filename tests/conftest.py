"""Shared fixtures: an isolated data directory for every test, GPU skipping."""

from __future__ import annotations

import pytest

try:  # One intra-op thread: on a small shared CI machine torch's thread pool spins against
    # other load (tiny-model tests ran ~8x slower with the default two threads).
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes under its own ALPHALORA_HOME, never the user's ~/.alphalora."""
    home = tmp_path_factory.mktemp("alphalora_home")
    monkeypatch.setenv("ALPHALORA_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return home


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` cleanly when no CUDA device is present."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU either way
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
