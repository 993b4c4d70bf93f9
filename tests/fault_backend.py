"""A test-only backend for fault injection: pretend accelerators that fail in chosen ways.

It reads .onnx and, when a device is meant to work, really runs the model through
ONNX Runtime's CPU provider, so results stay real.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.backends.base import BackendStatus
from edgekit.errors import BackendError
from edgekit.types import Device, DeviceKind, Format, Precision


class _FailingRun:
    def __init__(self, inner) -> None:
        self._inner = inner
        self.inputs, self.outputs, self.precision = inner.inputs, inner.outputs, inner.precision

    def run(self, arrays):
        raise RuntimeError("kernel launch failed: out of device memory")

    def close(self):
        self._inner.close()


class _InterruptedRun:
    """Its first run (load's check) works; the next is a Ctrl-C. Notes its closing in ``closed``."""

    def __init__(self, inner, closed: list, device: str) -> None:
        self._inner, self._closed, self._device, self._runs = inner, closed, device, 0
        self.inputs, self.outputs, self.precision = inner.inputs, inner.outputs, inner.precision

    def run(self, arrays):
        self._runs += 1
        if self._runs > 1:
            raise KeyboardInterrupt("Ctrl-C while timed (simulated)")
        return self._inner.run(arrays)

    def close(self):
        self._closed.append(self._device)
        self._inner.close()


class _RecordedRun:
    """A working session that notes the input shapes of every run in ``runs``."""

    def __init__(self, inner, runs: list, closed: list, device: str) -> None:
        self._inner, self._runs, self._closed, self._device = inner, runs, closed, device
        self.inputs, self.outputs, self.precision = inner.inputs, inner.outputs, inner.precision

    def run(self, arrays):
        self._runs.append([tuple(a.shape) for a in arrays])
        return self._inner.run(arrays)

    def close(self):
        self._closed.append(self._device)
        self._inner.close()


class FaultBackend:
    """``behaviours`` maps device id -> (kind, "ok" | "open_fails" | "run_fails" | "interrupted" |
    "unavailable").

    ``runs`` holds the input shapes of every run of its working sessions, in order; ``closed`` the
    devices whose sessions were closed (all but "run_fails" ones note it).
    """

    formats = frozenset({Format.ONNX})
    native = frozenset()
    sets_precision = False

    def __init__(self, name: str, behaviours: dict[str, tuple[DeviceKind, str]]) -> None:
        self.name = name
        self.behaviours = behaviours
        self.opened: list[str] = []
        self.runs: list[list[tuple]] = []
        self.closed: list[str] = []

    def status(self) -> BackendStatus:
        return BackendStatus(True, version="test")

    def devices(self) -> list[Device]:
        return [Device(self.name, dev_id, kind, f"fake {kind.value}",
                       available=behaviour != "unavailable",
                       reason="driver not installed" if behaviour == "unavailable" else None)
                for dev_id, (kind, behaviour) in self.behaviours.items()]

    def open(self, path: Path, fmt: Format, device: Device, precision: Precision, concurrency: int = 1):
        from edgekit import backends

        self.opened.append(device.id)
        behaviour = self.behaviours[device.id][1]
        if behaviour == "open_fails":
            raise BackendError(f"{self.name}:{device.id}: failed to create context (simulated)")
        ort = backends.get("onnxruntime")
        cpu = next(d for d in ort.devices() if d.id == "CPUExecutionProvider")
        session = ort.open(path, fmt, cpu, precision, concurrency=concurrency)
        if behaviour == "run_fails":
            return _FailingRun(session)
        if behaviour == "interrupted":
            return _InterruptedRun(session, self.closed, device.id)
        return _RecordedRun(session, self.runs, self.closed, device.id)
