"""Loading a Hugging Face dataset for an :class:`HFSpec`: every split from the hub, a
``save_to_disk`` folder or a folder of data files, with each ``datasets`` failure turned into one
clear message. ``datasets`` is imported only inside these functions, when a task is loaded."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.hf_spec import HFSpec, local_folder


def _cache_hint() -> str:
    """Where ``datasets`` keeps downloaded datasets, named by the variables that move it."""
    from datasets import config

    return f"the datasets cache ({config.HF_DATASETS_CACHE}; set by HF_DATASETS_CACHE or HF_HOME)"


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence the datasets progress bars while loading (the app and CLI report their own)."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()
    )


def _config_names(name: str) -> list[str]:
    """The dataset's configs as ``datasets`` reports them; empty when it cannot say."""
    from datasets import get_dataset_config_names

    try:
        with _quiet_progress():
            return list(get_dataset_config_names(name))
    except Exception:  # any failure only means we cannot list them
        return []


def _translate_load_error(exc: Exception, spec: HFSpec, where: str) -> AlphaLoRAError:
    """A clear message for an exception raised by ``datasets`` while loading ``spec``."""
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    message = str(exc)
    export = (
        "or, on a machine that is online, save it with "
        "`datasets.load_dataset(...).save_to_disk(FOLDER)` and pass hf:FOLDER, or export "
        "JSONL with prompt/answer columns"
    )
    if "Dataset scripts are no longer supported" in message:
        return AlphaLoRAError(
            f"{where} is defined by a Python loading script, which is unsupported (datasets 4+ "
            "no longer runs scripts and AlphaLoRA never runs remote code). Use a version of "
            "the dataset stored as parquet/CSV/JSON files, or export it to JSONL."
        )
    if "Config name is missing" in message:
        configs = _config_names(spec.name)
        listed = f": {', '.join(configs)}" if configs else ""
        example = configs[0] if configs else "CONFIG"
        return AlphaLoRAError(
            f"{where} has several configs and needs one{listed}. Name it after a colon, e.g. "
            f"hf:{spec.name}:{example}."
        )
    if re.search(r"BuilderConfig '.*' not found", message):
        configs = _config_names(spec.name)
        listed = ", ".join(configs) if configs else message.split("Available:", 1)[-1].strip()
        return AlphaLoRAError(f"{where} has no config {spec.config!r}. Its configs are: {listed}.")
    if isinstance(exc, ConnectionError):
        return AlphaLoRAError(
            f"{where} could not be reached on the Hugging Face hub (offline, or the network is "
            f"down) and is not in {_cache_hint()}. Go online once to download it, {export}."
        )
    if isinstance(exc, DatasetNotFoundError):
        return AlphaLoRAError(
            f"{where} was not found on the Hugging Face hub or cannot be accessed ({message}). "
            "Check the id on huggingface.co/datasets (private or gated datasets need "
            "`huggingface-cli login`), or pass a local folder."
        )
    if isinstance(exc, DataFilesNotFoundError | FileNotFoundError):
        return AlphaLoRAError(
            f"{where} holds no data files that datasets can read ({message}). A dataset folder "
            "needs parquet/CSV/JSON files or must be written by save_to_disk; a hub id must "
            f"exist (and, offline, be in {_cache_hint()})."
        )
    return AlphaLoRAError(f"{where} could not be loaded: {type(exc).__name__}: {message}")


def load_splits(spec: HFSpec) -> tuple[dict[str, Any], bool]:
    """Every split of the dataset as ``{name: datasets.Dataset}``, and whether it is local."""
    try:
        import datasets
    except ImportError as exc:
        raise AlphaLoRAError(
            "Loading Hugging Face datasets needs the `datasets` package: "
            "`pip install 'datasets>=4,<6'` (it is in requirements.txt)."
        ) from exc
    folder = local_folder(spec.name)
    where = f"The dataset {spec.name!r}" + (f" (config {spec.config!r})" if spec.config else "")
    if folder is not None and _is_saved_to_disk(folder):
        if spec.config:
            raise AlphaLoRAError(
                f"{folder} was written by save_to_disk and has no configs; drop "
                f"':{spec.config}' from the spec."
            )
        try:
            with _quiet_progress():
                loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:  # a damaged or partly copied folder
            raise AlphaLoRAError(
                f"{folder} looks like a save_to_disk folder but cannot be read "
                f"({type(exc).__name__}: {exc}). Save the dataset again."
            ) from exc
        if isinstance(loaded, datasets.Dataset):
            return {spec.split: loaded}, True
        return dict(loaded), True
    try:
        with _quiet_progress():
            loaded = datasets.load_dataset(str(folder or spec.name), spec.config)
    except Exception as exc:  # datasets raises many types; each becomes one clear message
        raise _translate_load_error(exc, spec, where) from exc
    if isinstance(loaded, datasets.Dataset):
        return {spec.split: loaded}, folder is not None
    if not isinstance(loaded, datasets.DatasetDict):
        raise AlphaLoRAError(f"{where} loaded as {type(loaded).__name__}, not a set of splits.")
    return dict(loaded), folder is not None
