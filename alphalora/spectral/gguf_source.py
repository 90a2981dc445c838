"""GGUF model source: memory-mapped llama.cpp files, dequantised one matrix at a time.

Quantised blocks (Q4_0, Q4_1, Q8_0, K-quants, ...) are expanded to float32 with
``gguf.quants.dequantize`` before any spectrum is taken (docs/method.md §1: never analyse packed
integers). llama.cpp permutes the rows of ``attn_q``/``attn_k`` for its rotary layout; a row
permutation leaves singular values unchanged, so spectra and alphas need no un-permuting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.naming import gguf_to_hf
from alphalora.spectral.source_base import MatrixInfo, ModelSource, sample_digest

#: GGML types that hold integers, not (quantised) real numbers: never matrices.
_INTEGER_TYPES = frozenset({"I8", "I16", "I32", "I64"})
#: Metadata arrays longer than this (token lists, merges) stay out of ``config``.
_MAX_ARRAY_IN_CONFIG = 64


#: Attributes filled by parsing the file's metadata, which takes seconds for a model with a
#: large tokenizer vocabulary: deferred until first used, so a cached analysis never pays it.
_PARSED = frozenset(
    {
        "family",
        "n_layers",
        "config",
        "_infos",
        "_tensors",
        "display_name",
        "_parameter_count",
        "_reader",
    }
)


def _check_header(path: Path) -> None:
    """Cheap validity check of the fixed GGUF header (magic, version, counts)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError as exc:
        raise AlphaLoRAError(f"Cannot read {path}: {exc.strerror}.") from exc
    version = int.from_bytes(head[4:8], "little") if len(head) >= 8 else 0
    if len(head) < 24 or head[:4] != b"GGUF" or version not in (1, 2, 3):
        raise AlphaLoRAError(
            f"{path} is not a readable GGUF file (bad header: magic {head[:4]!r}, version "
            f"{version}). It is probably corrupt or truncated: download or export it again."
        )


class GGUFSource(ModelSource):
    """A ``.gguf`` file read through ``gguf.GGUFReader`` (memory-mapped). The metadata is
    parsed on first use; the fingerprint needs only the file's bytes."""

    format = "gguf"

    def __init__(self, ref: str, path: Path, *, display_name: str | None = None):
        try:
            import gguf  # noqa: F401
        except ImportError as exc:
            raise AlphaLoRAError(
                "Reading GGUF files needs the 'gguf' package. Install the requirements "
                "(see README set-up): pip install -r requirements.txt"
            ) from exc
        _check_header(path)
        self.ref = ref
        self.path = path
        self.trust_remote_code = False
        self.revision = None
        self._display_name_arg = display_name

    def __getattr__(self, name: str) -> Any:
        if name in _PARSED and "_parsing" not in self.__dict__:
            self._parse()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _parse(self) -> None:
        """Read the metadata and tensor table (seconds for a large vocabulary)."""
        self._parsing = True
        try:
            self._parse_metadata()
        finally:
            self.__dict__.pop("_parsing", None)

    def _parse_metadata(self) -> None:
        from gguf import GGUFReader

        path, ref, display_name = self.path, self.ref, self._display_name_arg
        try:
            self._reader = GGUFReader(path, "r")
        except Exception as exc:  # the reader raises ValueError/IndexError/... on bad files
            raise AlphaLoRAError(
                f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}). It is "
                "probably corrupt or truncated: download or export it again."
            ) from exc
        config = _metadata(self._reader)
        arch = str(config.get("general.architecture", "llama"))
        tensors = {t.name: t for t in self._reader.tensors}
        ff = config.get(f"{arch}.feed_forward_length")
        infos: dict[str, MatrixInfo] = {}
        self._tensors: dict[str, Any] = {}
        params = 0
        for t in self._reader.tensors:
            type_name = t.tensor_type.name
            if type_name in _INTEGER_TYPES:
                continue
            params += int(t.n_elements)
            dims = [int(d) for d in t.shape]
            while len(dims) > 2 and dims[-1] == 1:
                dims.pop()
            if len(dims) != 2:
                continue
            out_in = (dims[1], dims[0])  # GGUF lists ne0 (columns = in) first
            fused = (
                t.name.startswith("blk.")
                and t.name.endswith(".ffn_up.weight")
                and t.name.replace("ffn_up", "ffn_gate") not in tensors
                and isinstance(ff, int)
                and out_in[0] == 2 * ff
            )
            hf_name, layer, kind = gguf_to_hf(t.name, arch, fused_gate_up=fused)
            infos[hf_name] = MatrixInfo(hf_name, layer, kind, out_in, type_name, t.name)
            self._tensors[hf_name] = t
        n_layers = config.get(f"{arch}.block_count")
        if not isinstance(n_layers, int):
            layers = [i.layer for i in infos.values() if i.layer is not None]
            n_layers = max(layers) + 1 if layers else None
        trust, revision = self.trust_remote_code, self.revision
        super().__init__(ref, path, arch, n_layers, config)
        self.trust_remote_code, self.revision = trust, revision
        self.display_name = display_name or str(config.get("general.name") or path.stem)
        self._infos = infos
        self._parameter_count = params
        if not infos:
            raise AlphaLoRAError(
                f"{path}: the GGUF file holds no 2-D weight matrices, so there is nothing to "
                "analyse. Point to a model file with its weights."
            )

    def _read(self, info: MatrixInfo) -> torch.Tensor:
        from gguf.quants import dequantize

        t = self._tensors[info.name]
        try:
            values = dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise AlphaLoRAError(
                f"{self.path}: tensor {t.name} uses GGML type {t.tensor_type.name}, which the "
                "installed gguf package cannot dequantise. Upgrade gguf or use another "
                "quantisation of the model (Q4_0, Q4_1, Q8_0, K-quants)."
            ) from exc
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape)
        return torch.from_numpy(values)

    def weight_files(self) -> list[Path]:
        """The one ``.gguf`` file."""
        return [self.path]

    def _fingerprint_parts(self) -> Iterator[bytes]:
        yield self.path.name.encode()
        yield str(self.path.stat().st_size).encode()
        with open(self.path, "rb") as fh:  # the start of the metadata, without parsing it
            yield hashlib.sha256(fh.read(1 << 16)).digest()
        yield sample_digest(self.path)

    def describe(self) -> dict[str, Any]:
        """Summary with the model's display name and quantisation types."""
        summary = super().describe()
        types = sorted({i.dtype for i in self.matrices()})
        summary.update({"name": self.display_name, "quantisation": ", ".join(types)})
        return summary


def _metadata(reader: Any) -> dict[str, Any]:
    """Scalar and short-array metadata of a GGUF file as plain Python values."""
    from gguf import GGUFValueType

    config: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            if field.types and field.types[0] == GGUFValueType.ARRAY:
                if len(field.data) > _MAX_ARRAY_IN_CONFIG:
                    continue
            value = field.contents()
        except Exception:  # unreadable metadata never blocks reading the weights
            continue
        if isinstance(value, np.generic):
            value = value.item()
        config[key] = value
    return config
