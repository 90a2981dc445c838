"""Safetensors model source: one or more ``.safetensors`` files (sharded or not), each tensor
read with a positioned read of its own bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.naming import detect_family, is_conv1d, parse_name
from alphalora.spectral.source_base import (
    MatrixInfo,
    ModelSource,
    n_layers_from,
    refuse_quantised,
    sample_digest,
)

#: Floating safetensors dtypes (anything else is never a matrix).
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"})


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
            if len(shape) == 2 and dt not in FLOAT_DTYPES and dt != "BOOL" and n.endswith(".weight")
        ]
        refuse_quantised(path, config, names, int_weights)
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
        super().__init__(ref, path, family, n_layers_from(config, infos.values()), config)
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
