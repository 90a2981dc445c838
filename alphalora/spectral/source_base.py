"""What every model source shares: :class:`MatrixInfo`, the :class:`ModelSource` base class and
the helpers the concrete sources use (file sampling for fingerprints, JSON configs, layer
counts, refusing packed-integer checkpoints).

Every source lists its matrices from headers only and loads one matrix at a time, as float32
``(out, in)``, so peak memory is a few matrices whatever the model's size.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alphalora.errors import AlphaLoRAError

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

    def weight_files(self) -> list[Path]:
        """The files the weights are read from (every shard), for the cache's guards."""
        files = getattr(self, "files", None)
        return list(files) if files else [self.path]

    def stat_guard(self) -> str:
        """Hash of each weight file's size, mtime_ns and inode: free to compute, and changed by
        any ordinary write, copy or replace, so that an edited model never hits an old cache."""
        digest = hashlib.sha256()
        for file in self.weight_files():
            st = file.stat()
            digest.update(f"{file.name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        return digest.hexdigest()[:32]

    def content_hash(self, chunk: int = 8 << 20) -> str:
        """BLAKE2b of every byte of every weight file, streamed in ``chunk``-byte reads: the
        check behind ``--verify-cache``, which also catches edits that keep size, mtime and
        inode (e.g. ``touch -r`` after an in-place rewrite)."""
        digest = hashlib.blake2b(digest_size=32)
        for file in self.weight_files():
            digest.update(file.name.encode() + b"\0")
            try:
                with open(file, "rb") as fh:
                    while block := fh.read(chunk):
                        digest.update(block)
            except OSError as exc:
                raise AlphaLoRAError(
                    f"Cannot read {file} to verify the cache ({exc.strerror or exc})."
                ) from exc
        return "blake2b:" + digest.hexdigest()

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


def n_layers_from(config: dict, infos: Iterable[MatrixInfo]) -> int | None:
    """Number of transformer blocks: from the config when it says, else from the matrices."""
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


def read_json(path: Path) -> dict:
    """A model's JSON file (config, shard index) as a dict, or an error saying how to fix it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlphaLoRAError(
            f"{path} is not valid JSON ({exc}). Fix or replace the file (it comes with the model)."
        ) from exc
    if not isinstance(data, dict):
        raise AlphaLoRAError(f"{path} should hold a JSON object. Fix or replace the file.")
    return data


def refuse_quantised(path: Path, config: dict, names: Iterable[str], int_weights: list[str]):
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
