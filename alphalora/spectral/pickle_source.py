"""PyTorch pickle model source: ``.bin``/``.pt`` checkpoints, only on explicit opt-in, loaded
with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
            if t.ndim == 2
            and not t.is_floating_point()
            and t.dtype != torch.bool  # masks, not packed weights
            and n.endswith(".weight")
        ]
        refuse_quantised(path, config, names, int_weights)
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
        super().__init__(ref, path, family, n_layers_from(config, infos.values()), config)
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
