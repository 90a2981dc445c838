"""Model sources: resolve a model reference and stream its 2-D weight matrices one by one.

A reference is ``"embedded"`` (the default model shipped as a package), a local folder, a single
``.safetensors``/``.gguf`` file, or a Hugging Face hub id. Every source lists its matrices from
headers only and loads one matrix at a time (memory-mapped), as float32 ``(out, in)``, so peak
memory is a few matrices whatever the model's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.embedded import (
    EMBEDDED_REF,
    embedded_gguf_path,
    export_embedded_hf,
    resolve_embedded,
)
from alphalora.spectral.naming import detect_family, is_conv1d, parse_name

__all__ = [
    "EMBEDDED_REF",
    "MatrixInfo",
    "ModelSource",
    "SafetensorsSource",
    "PickleSource",
    "open_source",
    "parse_name",
    "export_embedded_hf",
]

#: Floating safetensors dtypes (anything else is never a matrix).
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"})
#: Tensor-name endings that only exist in packed-integer quantised checkpoints.
_PACKED_MARKERS = (
    ".qweight",
    ".qzeros",
    ".g_idx",
    ".SCB",
    ".weight_format",
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
    ".quant_state",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class MatrixInfo:
    """One 2-D weight matrix of a model, as listed from headers (no weights read)."""

    name: str
    layer: int | None
    kind: str
    shape: tuple[int, int]
    dtype: str
    stored_name: str = ""

    @property
    def is_block(self) -> bool:
        """True for matrices inside a transformer block (those that enter a layer score)."""
        return self.layer is not None


class ModelSource(ABC):
    """Base class of model sources; concrete ones fill ``_infos`` and implement ``_read``."""

    format: str = ""

    def __init__(self, ref: str, path: Path, family: str, n_layers: int | None, config: dict):
        self.ref = ref
        self.path = path
        self.family = family
        self.n_layers = n_layers
        self.config = config
        self.trust_remote_code = False
        self.revision: str | None = None
        self._infos: dict[str, MatrixInfo] = {}
        self._parameter_count = 0

    # --- listing -------------------------------------------------------------------------
    def matrices(self, *, include_non_block: bool = False) -> list[MatrixInfo]:
        """The model's 2-D floating matrices (block matrices only unless asked), header-only."""
        infos = list(self._infos.values())
        return infos if include_non_block else [i for i in infos if i.layer is not None]

    def info(self, name: str) -> MatrixInfo:
        """The :class:`MatrixInfo` of ``name`` (HF name, or the stored name for GGUF)."""
        info = self._infos.get(name)
        if info is None:
            for candidate in self._infos.values():
                if candidate.stored_name == name:
                    return candidate
            raise AlphaLoRAError(
                f"{self.path}: no 2-D weight matrix named {name!r}. "
                f"List the available names with matrices(include_non_block=True)."
            )
        return info

    # --- loading -------------------------------------------------------------------------
    def load(self, name: str) -> torch.Tensor:
        """One matrix as a float32 2-D ``(out, in)`` tensor, dequantised, reading only it."""
        info = self.info(name)
        tensor = self._read(info)
        if tensor.shape != torch.Size(info.shape):
            raise AlphaLoRAError(
                f"{self.path}: tensor {info.stored_name or info.name} has shape "
                f"{tuple(tensor.shape)}, expected {info.shape}; the file looks corrupt. "
                "Download or export the model again."
            )
        return tensor

    @abstractmethod
    def _read(self, info: MatrixInfo) -> torch.Tensor:
        """Read one matrix as float32 ``(out, in)``."""

    def iter_matrices(
        self, infos: Iterable[MatrixInfo] | None = None
    ) -> Iterator[tuple[MatrixInfo, torch.Tensor]]:
        """Yield ``(info, matrix)`` one at a time (block matrices by default)."""
        for info in self.matrices() if infos is None else infos:
            yield info, self.load(info.name)

    # --- summaries -----------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Stable hash of file names, sizes and headers (never of all the weights)."""
        digest = hashlib.sha256(self.format.encode())
        for part in self._fingerprint_parts():
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        return digest.hexdigest()[:32]

    @abstractmethod
    def _fingerprint_parts(self) -> Iterator[bytes]:
        """Byte strings that identify the stored model (names, sizes, headers)."""

    def parameter_count(self) -> int:
        """Number of floating-point parameters stored (all tensors, not only matrices)."""
        return self._parameter_count

    def describe(self) -> dict[str, Any]:
        """A short summary for tables and the app."""
        return {
            "ref": self.ref,
            "family": self.family,
            "n_layers": self.n_layers,
            "n_matrices": len(self.matrices()),
            "parameters": self.parameter_count(),
            "format": self.format,
            "path": str(self.path),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ref={self.ref!r}, family={self.family!r}, n_layers={self.n_layers})"


def sample_digest(file: Path, *, samples: int = 16, block: int = 4096) -> bytes:
    """Hash of ``samples`` evenly spaced ``block``-byte pieces of a file: a cheap check that
    catches weights rewritten in place with the same shapes, without reading the whole file."""
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(file, "rb") as fh:
        for i in range(samples):
            fh.seek(max(0, (size - block) * i // max(1, samples - 1)))
            digest.update(fh.read(block))
    return digest.digest()


def _n_layers_from(config: dict, infos: Iterable[MatrixInfo]) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    text = config.get("text_config")
    if isinstance(text, dict):
        value = text.get("num_hidden_layers")
        if isinstance(value, int) and value > 0:
            return value
    layers = [i.layer for i in infos if i.layer is not None]
    return max(layers) + 1 if layers else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlphaLoRAError(
            f"{path} is not valid JSON ({exc}). Fix or replace the file (it comes with the model)."
        ) from exc
    if not isinstance(data, dict):
        raise AlphaLoRAError(f"{path} should hold a JSON object. Fix or replace the file.")
    return data


def _refuse_quantised(path: Path, config: dict, names: Iterable[str], int_weights: list[str]):
    """Raise when a checkpoint stores packed integers instead of weights (GPTQ/AWQ/bnb...)."""
    quant = config.get("quantization_config")
    method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else None
    packed = [n for n in names if n.endswith(_PACKED_MARKERS) or "quant_state" in n]
    if method is None and not packed and not int_weights:
        return
    what = f"quantised with {method!r}" if method else "quantised (packed integer tensors)"
    example = (packed or int_weights or [""])[0]
    raise AlphaLoRAError(
        f"{path}: this checkpoint is {what}"
        + (f", e.g. tensor {example!r}" if example else "")
        + ". Its stored integers are not the weights, so their spectrum means nothing. "
        "Give the full-precision checkpoint (safetensors in F32/F16/BF16) or a GGUF file, "
        "which AlphaLoRA dequantises itself."
    )


class SafetensorsSource(ModelSource):
    """A checkpoint in one or more ``.safetensors`` files (sharded or not)."""

    format = "safetensors"

    def __init__(self, ref: str, path: Path, files: list[Path], config: dict):
        from safetensors import SafetensorError, safe_open

        self.files = files
        self._where: dict[str, Path] = {}
        self._headers: dict[Path, bytes] = {}
        self._parsed: dict[Path, dict] = {}  # headers parsed on first read, once per file
        entries: list[tuple[str, list[int], str]] = []
        for file in files:
            self._headers[file] = _safetensors_header(file)
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        sl = handle.get_slice(key)
                        entries.append((key, list(sl.get_shape()), sl.get_dtype()))
                        self._where[key] = file
            except (SafetensorError, OSError, ValueError) as exc:
                raise AlphaLoRAError(
                    f"{file} is not a readable safetensors file ({exc}). It is probably corrupt "
                    "or was truncated by an interrupted download: download it again."
                ) from exc
        names = [e[0] for e in entries]
        int_weights = [
            n
            for n, shape, dt in entries
            if len(shape) == 2 and dt not in FLOAT_DTYPES and n.endswith(".weight")
        ]
        _refuse_quantised(path, config, names, int_weights)
        family = detect_family(config, names)
        self._conv1d: set[str] = set()
        infos: dict[str, MatrixInfo] = {}
        params = 0
        for name, shape, dtype in entries:
            if dtype not in FLOAT_DTYPES:
                continue
            numel = 1
            for d in shape:
                numel *= d
            params += numel
            if len(shape) != 2:
                continue
            layer, kind = parse_name(name, family)
            out_in = (shape[0], shape[1])
            if is_conv1d(name, family):
                self._conv1d.add(name)
                out_in = (shape[1], shape[0])
            infos[name] = MatrixInfo(name, layer, kind, out_in, dtype, name)
        super().__init__(ref, path, family, _n_layers_from(config, infos.values()), config)
        self._infos = infos
        self._parameter_count = params
        if not infos:
            raise AlphaLoRAError(
                f"{path}: the model holds no 2-D floating-point weight matrices "
                f"({len(entries)} tensors, none a matrix), so there is nothing to analyse. "
                "Point to the model's full weights."
            )

    def _read(self, info: MatrixInfo) -> torch.Tensor:
        """Read one tensor with a positioned read of its bytes only.

        No memory map is kept: mapped pages of a multi-GB shard would count in the
        process's resident memory; a plain read leaves them in the page cache instead.
        """
        file = self._where[info.name]
        header = self._headers[file]
        try:
            if file not in self._parsed:
                self._parsed[file] = json.loads(header[8:])
            meta = self._parsed[file][info.name]
            begin, end = meta["data_offsets"]
            dtype = SAFETENSORS_TORCH_DTYPES[meta["dtype"]]
            with open(file, "rb") as fh:
                fh.seek(len(header) + begin)
                buf = bytearray(end - begin)
                if fh.readinto(buf) != end - begin:
                    raise ValueError("fewer bytes than the header promises")
            tensor = (
                torch.frombuffer(buf, dtype=dtype).reshape(meta["shape"])
                if buf
                else torch.empty(meta["shape"], dtype=dtype)
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise AlphaLoRAError(
                f"{file}: cannot read tensor {info.name} ({exc}). The file is probably "
                "corrupt or truncated: download it again."
            ) from exc
        tensor = tensor.to(torch.float32)
        if info.name in self._conv1d:
            tensor = tensor.t()
        return tensor.contiguous()

    def iter_matrices(
        self, infos: Iterable[MatrixInfo] | None = None
    ) -> Iterator[tuple[MatrixInfo, torch.Tensor]]:
        """Yield ``(info, matrix)`` shard by shard (block matrices by default)."""
        chosen = list(self.matrices() if infos is None else infos)
        order = {f: i for i, f in enumerate(self.files)}
        chosen.sort(key=lambda i: order.get(self._where.get(i.name, self.files[0]), 0))
        for info in chosen:
            yield info, self.load(info.name)

    def _fingerprint_parts(self) -> Iterator[bytes]:
        for file in self.files:
            yield file.name.encode()
            yield str(file.stat().st_size).encode()
            yield self._headers[file]
            yield sample_digest(file)
        yield json.dumps(self.config, sort_keys=True, default=str).encode()

    def close(self) -> None:
        """Nothing stays open between reads; kept for API symmetry with other sources."""


#: safetensors dtype codes → torch dtypes (floating types only: integers are never matrices).
SAFETENSORS_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _safetensors_header(file: Path) -> bytes:
    """The 8-byte length and JSON header of a safetensors file (for fingerprints and checks)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 100_000_000):
                raise ValueError(f"header length {n} does not fit the file size {size}")
            header = fh.read(n)
    except (OSError, ValueError) as exc:
        raise AlphaLoRAError(
            f"{file} is not a readable safetensors file ({exc}). It is probably corrupt or was "
            "truncated by an interrupted download: download it again."
        ) from exc
    return head + header


def _torch_load(file: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, memory-mapped when the file format allows."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(file, map_location="cpu", weights_only=True)  # legacy format


class PickleSource(ModelSource):
    """PyTorch ``.bin`` checkpoints, only on explicit opt-in, loaded with ``weights_only=True``."""

    format = "pickle"

    def __init__(self, ref: str, path: Path, files: list[Path], config: dict):
        self.files = files
        self._state: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                state = _torch_load(file)
            except Exception as exc:  # torch raises many types for bad/unsafe pickles
                raise AlphaLoRAError(
                    f"{file} could not be loaded as a weights-only PyTorch checkpoint ({exc}). "
                    "Convert the model to safetensors."
                ) from exc
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise AlphaLoRAError(
                    f"{file} does not hold a state dict. Convert it to safetensors."
                )
            self._state.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
        names = list(self._state)
        int_weights = [
            n
            for n, t in self._state.items()
            if t.ndim == 2 and not t.is_floating_point() and n.endswith(".weight")
        ]
        _refuse_quantised(path, config, names, int_weights)
        family = detect_family(config, names)
        self._conv1d: set[str] = set()
        infos: dict[str, MatrixInfo] = {}
        params = 0
        for name, t in self._state.items():
            if not t.is_floating_point():
                continue
            params += t.numel()
            if t.ndim != 2:
                continue
            layer, kind = parse_name(name, family)
            shape = (t.shape[0], t.shape[1])
            if is_conv1d(name, family):
                self._conv1d.add(name)
                shape = (t.shape[1], t.shape[0])
            dtype = str(t.dtype).removeprefix("torch.")
            infos[name] = MatrixInfo(name, layer, kind, shape, dtype, name)
        super().__init__(ref, path, family, _n_layers_from(config, infos.values()), config)
        self._infos = infos
        self._parameter_count = params
        if not infos:
            raise AlphaLoRAError(
                f"{path}: the checkpoint holds no 2-D floating-point weight matrices, so there "
                "is nothing to analyse. Point to the model's full weights."
            )

    def _read(self, info: MatrixInfo) -> torch.Tensor:
        tensor = self._state[info.name].to(torch.float32)
        if info.name in self._conv1d:
            tensor = tensor.t()
        return tensor.contiguous()

    def _fingerprint_parts(self) -> Iterator[bytes]:
        for file in self.files:
            size = file.stat().st_size
            yield file.name.encode()
            yield str(size).encode()
            with open(file, "rb") as fh:
                fh.seek(max(0, size - 65536))
                yield fh.read(65536)  # a zip archive's directory lives at its end
            yield sample_digest(file)
        yield json.dumps(self.config, sort_keys=True, default=str).encode()


def __getattr__(name: str) -> Any:
    """Lazy attribute: ``GGUFSource`` lives in :mod:`alphalora.spectral.gguf_source` (imports gguf)."""
    if name == "GGUFSource":
        from alphalora.spectral.gguf_source import GGUFSource

        return GGUFSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- reference resolution ----------------------------------------------------------------


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
    config = _read_json(config_path) if config_path.is_file() else {}
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
    return _read_json(config_path) if config_path.is_file() else {}


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
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
        weight_map = _read_json(index).get("weight_map") or {}
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
