"""The process a run lives in: accelerate set up for the config's device and precision, the
SIGTERM/Ctrl-C stop flag, the clock of the run store and small process and folder checks."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import TrainConfig

Progress = Callable[[float, str], None]


@dataclass
class StopFlag:
    """Set by SIGTERM/SIGINT: finish the current step, checkpoint, stop."""

    requested: bool = False
    signal_name: str = ""
    in_update: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


def now() -> str:
    """The run store's timestamp for this moment."""
    from alphalora.store.records import now_iso

    return now_iso()


def pid_alive(pid: int | None) -> bool:
    """Whether another process ``pid`` is alive (not this one, not a zombie)."""
    if not pid or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file in it, or refuse with an actionable message."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise AlphaLoRAError(
            f"The run folder {folder} is not writable ({exc.strerror or exc}). Free some space "
            "or set ALPHALORA_HOME to a writable folder."
        ) from exc


def make_accelerator(config: TrainConfig) -> tuple[Any, str]:
    """An accelerate ``Accelerator`` for the config's device and precision, and the precision
    resolved (fp32, bf16 or fp16)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise AlphaLoRAError(
            "device 'cuda' was asked for but no CUDA GPU is visible; use device 'cpu' or 'auto'."
        )
    use_cpu = config.device == "cpu" or not cuda
    bf16_ok = cuda and not use_cpu and torch.cuda.is_bf16_supported()
    precision = config.resolved_precision(cuda and not use_cpu, bf16_ok)
    if precision == "fp16" and use_cpu:
        raise AlphaLoRAError("precision fp16 needs a GPU; use fp32 or bf16 on CPU.")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # accelerate keeps one state per process; a second run in the same process (tests, the
    # benchmark) with another precision or device needs it reset first.
    shared = getattr(AcceleratorState, "_shared_state", None) or {}
    device = (getattr(PartialState, "_shared_state", None) or {}).get("device")
    other_precision = shared.get("_mixed_precision") not in (None, mixed)
    other_device = device is not None and (getattr(device, "type", "cpu") == "cpu") != use_cpu
    if other_precision or other_device:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not hasattr(
            AcceleratorState, "_reset_state"
        ):
            raise AlphaLoRAError(
                "accelerate is already set up with another precision or device in this "
                "process; start a fresh process for this run."
            )
        AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed)
    except ValueError as exc:
        raise AlphaLoRAError(f"accelerate could not be set up: {exc}") from exc
    return accelerator, precision


def device_label(accelerator: Any) -> str:
    """The device a run trains on, for people: e.g. ``cuda:0 (NVIDIA H200) ×2``."""
    import torch

    device = accelerator.device
    label = str(device)
    if device.type == "cuda":
        label += f" ({torch.cuda.get_device_name(device)})"
    if accelerator.num_processes > 1:
        label += f" ×{accelerator.num_processes}"
    return label
