"""Model references resolved and opened: :func:`open_source` picks the source for a reference.

A reference is ``"embedded"`` (the default model shipped as a package), a local folder, a single
``.safetensors``/``.gguf`` file, or a Hugging Face hub id. The sources themselves live in
:mod:`~alphalora.spectral.safetensors_source`, :mod:`~alphalora.spectral.gguf_source` (imported
only when a GGUF file is opened: it imports ``gguf``) and :mod:`~alphalora.spectral.pickle_source`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.embedded import EMBEDDED_REF, embedded_gguf_path, resolve_embedded
from alphalora.spectral.pickle_source import PickleSource
from alphalora.spectral.safetensors_source import SafetensorsSource
from alphalora.spectral.source_base import ModelSource, read_json

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def open_source(
    ref: str | Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> ModelSource:
    """Resolve a model reference and open it.

    ``ref``: ``"embedded"`` (or ``"embedded:smollm2"``), a folder with ``config.json`` and
    ``*.safetensors`` (sharded or not), a single ``.safetensors``/``.gguf`` file, a folder with one
    ``.gguf``, or a hub id ``"org/name"`` (downloaded once into the Hugging Face cache).
    ``trust_remote_code`` is recorded on the source for whoever builds the model later; opening a
    source never runs model code.
    """
    text = str(ref).strip()
    if not text:
        raise AlphaLoRAError("No model given. Pass a folder, a file, a hub id or 'embedded'.")
    if text == EMBEDDED_REF or text.startswith(EMBEDDED_REF + ":"):
        spec = resolve_embedded(text)
        from alphalora.spectral.gguf_source import GGUFSource

        source: ModelSource = GGUFSource(text, embedded_gguf_path(spec), display_name=spec.name)
    else:
        path = Path(text).expanduser()
        if path.exists():
            source = _open_path(text, path, allow_pickle=allow_pickle)
        elif _HUB_ID.match(text) and not text.startswith((".", "~")):
            folder = _download(text, revision)
            source = _open_path(text, folder, allow_pickle=allow_pickle, from_hub=True)
        else:
            raise AlphaLoRAError(
                f"Model path {path} does not exist. Pass an existing folder or file, a Hugging "
                f"Face hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or '{EMBEDDED_REF}'."
            )
    source.trust_remote_code = trust_remote_code
    source.revision = revision
    return source


def _download(repo_id: str, revision: str | None) -> Path:
    """Fetch (or find in the cache) a hub snapshot's configs, safetensors and tokenizer."""
    from huggingface_hub import constants, snapshot_download

    cache = constants.HF_HUB_CACHE
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*"],
            revision=revision,
        )
    except Exception as exc:  # offline, unknown id, gated repo, network errors, ...
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        why = "the hub is switched off (HF_HUB_OFFLINE)" if offline else type(exc).__name__
        raise AlphaLoRAError(
            f"{repo_id!r} is not a local folder, and the Hugging Face model of that id"
            + (f" (revision {revision})" if revision else "")
            + f" could not be fetched: {why}, and it is not in the Hugging Face cache at {cache}. "
            "Check the id, or download the model elsewhere and pass its local folder path."
        ) from exc
    return Path(folder)


def _open_path(ref: str, path: Path, *, allow_pickle: bool, from_hub: bool = False) -> ModelSource:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".gguf":
            from alphalora.spectral.gguf_source import GGUFSource

            return GGUFSource(ref, path)
        config = _sibling_config(path)
        if suffix == ".safetensors":
            return SafetensorsSource(ref, path, [path], config)
        if suffix in _PICKLE_SUFFIXES:
            return _open_pickle(ref, path, [path], config, allow_pickle)
        raise AlphaLoRAError(
            f"{path}: unsupported file type {suffix or '(none)'}. Pass a .safetensors or .gguf "
            "file, or the model's folder."
        )
    config_path = path / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    shards = _safetensors_files(path)
    if shards:
        return SafetensorsSource(ref, path, shards, config)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        from alphalora.spectral.gguf_source import GGUFSource

        return GGUFSource(ref, ggufs[0])
    if len(ggufs) > 1:
        listing = ", ".join(p.name for p in ggufs)
        raise AlphaLoRAError(
            f"{path} holds several GGUF files ({listing}). Pass the path of the one you want."
        )
    pickles = _pickle_files(path)
    if pickles:
        return _open_pickle(ref, path, pickles, config, allow_pickle)
    found = sorted(p.name for p in path.iterdir())[:20]
    where = "The hub snapshot" if from_hub else "The folder"
    raise AlphaLoRAError(
        f"{where} {path} holds no model weights (*.safetensors or *.gguf); it holds: "
        f"{', '.join(found) if found else 'nothing'}. Pass the folder that has the weight files."
    )


def _sibling_config(file: Path) -> dict:
    config_path = file.parent / "config.json"
    return read_json(config_path) if config_path.is_file() else {}


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise AlphaLoRAError(f"{index} has no weight_map. Fix or download the index again.")
        shards = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise AlphaLoRAError(
                f"{folder}: the shard index lists files that are missing: {', '.join(missing)}. "
                "Finish downloading the model."
            )
        return shards
    return sorted(folder.glob("*.safetensors"))


def _pickle_files(folder: Path) -> list[Path]:
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map") or {}
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    return sorted(p for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.is_file())


def _open_pickle(
    ref: str, path: Path, files: list[Path], config: dict, allow_pickle: bool
) -> PickleSource:
    if not allow_pickle:
        names = ", ".join(p.name for p in files[:5])
        raise AlphaLoRAError(
            f"{path} holds only PyTorch pickle weights ({names}). Unpickling can run arbitrary "
            "code, so it is off by default. Convert the model to safetensors, or, if you trust "
            "the file, opt in with allow_pickle=True (CLI: --allow-pickle); it is then loaded "
            "with torch.load(weights_only=True)."
        )
    return PickleSource(ref, path, files, config)
