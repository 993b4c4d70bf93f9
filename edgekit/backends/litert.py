"""LiteRT (TFLite) backend: XNNPACK on CPU; GPU and Edge TPU delegates where their libraries load.

Uses ``ai_edge_litert``; falls back to ``tflite_runtime`` only when that is what
the device has (its last release, 2.14, crashes with NumPy 2).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import queue
import re
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError, DeviceNotAvailableError, ModelFileError
from ..hostinfo import cpu_count, cpu_name
from ..types import Device, DeviceKind, Format, Precision, TensorSpec, guess_layout
from .base import BackendStatus

log = logging.getLogger(__name__)

# Delegate libraries tried for each accelerator, and what to install when none loads.
_DELEGATES: dict[str, tuple[DeviceKind, tuple[str, ...], str]] = {
    "GPU": (DeviceKind.GPU, ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so"),
            "no TFLite GPU delegate library found (build or install libtensorflowlite_gpu_delegate.so)"),
    "EdgeTPU": (DeviceKind.TPU, ("libedgetpu.so.1", "libedgetpu.1.dylib", "edgetpu.dll"),
                "no Edge TPU runtime found (install libedgetpu1-std and plug in a Coral device)"),
}


# Interpreter errors that mean the file itself is bad (anything else, e.g. "Didn't find op", is not).
_FILE_PROBLEMS = ("not a valid Flatbuffer", "Could not open", "model identifier", "Could not verify")


def _import():
    try:
        from ai_edge_litert import interpreter as mod

        return mod, "ai-edge-litert"
    except ImportError:
        from tflite_runtime import interpreter as mod  # old device images only

        return mod, "tflite-runtime"


_quieted = False  # LiteRT's one notice on stderr has been caught (see _notices_to_log)
_quieting = threading.Lock()
_tries = [0]
_NOTICE = re.compile(rb"^(INFO|WARNING|ERROR): \S")  # LiteRT's C++ logger ("INFO:     " is uvicorn's)


@contextlib.contextmanager
def _notices_to_log():
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once per process, from
    C++ straight to file descriptor 2, when its first interpreter allocates: past Python's logging,
    past TF_CPP_MIN_LOG_LEVEL, into every CLI's and server's output. Until that line has come (three
    allocations at most), fd 2 goes to a file during the allocation; LiteRT's lines there are logged
    instead (INFO at DEBUG, the rest at WARNING), and anything else (another thread's) is written back
    to stderr byte for byte. A process killed inside that one call loses what it printed in it."""
    global _quieted
    if _quieted or not _quieting.acquire(blocking=False):  # another thread is catching it meanwhile
        yield
        return
    try:
        with tempfile.TemporaryFile() as caught:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no fd 2 (a windowed app): nothing to keep clean
                _quieted = True
                yield
                return
            try:
                os.dup2(caught.fileno(), 2)
            except OSError:  # cannot redirect: carry on, not caught
                os.close(saved)
                yield
                return
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                _pass_on(caught.read())
    finally:
        _quieting.release()


def _pass_on(written: bytes) -> None:
    """What went to fd 2 during an allocation: LiteRT's lines to the log, the rest back to fd 2."""
    global _quieted
    _tries[0] += 1
    _quieted = b"XNNPACK" in written or _tries[0] >= 3
    others = bytearray()
    for line in re.findall(rb"[^\n]*\n|[^\n]+$", written):  # lines as "\n" ends them ("\r" is a progress bar's)
        if _NOTICE.match(line):
            text = line.decode(errors="replace").rstrip()
            log.log(logging.DEBUG if text.startswith("INFO: ") else logging.WARNING, "LiteRT: %s", text)
        else:
            others += line
    view = memoryview(others)
    while view:  # a write to a pipe may take only part
        view = view[os.write(2, view):]


def signature_names(path: Path) -> dict[str, str] | None:
    """A TFLite file's tensor names -> the input and output keys of its one signature, as
    :class:`LiteRtSession` names them ({} without one signature; None without LiteRT to read it).

    For OpenVINO, which reads .tflite files by tensor name: onnx2tf's MiniLM inputs come as
    ``serving_default_attention_mask:0`` (first), its outputs as ``StatefulPartitionedCall:0``.
    """
    try:
        mod, _ = _import()
    except ImportError:
        return None
    try:
        resolver = getattr(getattr(mod, "OpResolverType", None), "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
        kwargs = {"experimental_op_resolver_type": resolver} if resolver is not None else {}
        interp = mod.Interpreter(model_path=str(path), **kwargs)  # not allocated: 2 ms
        sigs = interp.get_signature_list()
        if len(sigs) != 1:
            return {}
        runner = interp.get_signature_runner(next(iter(sigs)))
        details = (runner.get_input_details(), runner.get_output_details())
    except Exception as e:  # a file LiteRT cannot read: OpenVINO reports its own error
        log.debug("no TFLite signature read from %s: %s", path, e)
        return {}
    return {d["name"]: key for part in details for key, d in part.items()}


def _spec(detail: dict, name: str | None = None) -> TensorSpec:
    sig = detail.get("shape_signature")
    dims = sig if sig is not None and len(sig) else detail["shape"]
    shape = tuple(int(d) if d >= 0 else None for d in dims)
    return TensorSpec(name or detail["name"], shape, np.dtype(detail["dtype"]), guess_layout(shape))


class _Slot:
    """One interpreter and the input shapes it is allocated for."""

    __slots__ = ("interp", "current")

    def __init__(self, interp, current: list) -> None:
        self.interp, self.current = interp, current


class LiteRtSession:
    """Interpreters lent out one per run, since LiteRT interpreters are not re-entrant: with one
    (the default) runs take turns; with ``concurrency`` of them that many run at once."""

    def __init__(self, interps: list, precision: str) -> None:
        interp = interps[0]
        sigs = interp.get_signature_list()
        if len(sigs) == 1:
            # Named inputs/outputs come from the signature (onnx2tf -osd writes one).
            runner = interp.get_signature_runner(next(iter(sigs)))
            ins = runner.get_input_details()
            outs = runner.get_output_details()
            in_items = sorted(ins.items(), key=lambda kv: kv[1]["index"])
            out_items = list(outs.items())
            self.inputs = [_spec(d, n) for n, d in in_items]
            self.outputs = [_spec(d, n) for n, d in out_items]
            self._in_idx = [d["index"] for _, d in in_items]
            self._out_idx = [d["index"] for _, d in out_items]
        else:
            ins, outs = interp.get_input_details(), interp.get_output_details()
            self.inputs = [_spec(d) for d in ins]
            self.outputs = [_spec(d) for d in outs]
            self._in_idx = [d["index"] for d in ins]
            self._out_idx = [d["index"] for d in outs]
        current = {d["index"]: tuple(d["shape"]) for d in interp.get_input_details()}
        self._idle: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for it in interps:
            self._idle.put(_Slot(it, [current.get(i) for i in self._in_idx]))
        self._closed = False
        self.precision = precision

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        idle = self._idle
        while True:  # waits while every interpreter is running; a close() ends the wait
            if self._closed:
                raise BackendError("the LiteRT session is closed")
            try:
                slot = idle.get(timeout=0.1)
                break
            except queue.Empty:
                continue
        try:
            if any(x.shape != cur for x, cur in zip(arrays, slot.current)):
                self._resize(slot, arrays)
            for idx, x in zip(self._in_idx, arrays):
                slot.interp.set_tensor(idx, x)
            slot.interp.invoke()
            return [slot.interp.get_tensor(idx) for idx in self._out_idx]  # get_tensor copies
        finally:
            idle.put(slot)

    def _resize(self, slot: _Slot, arrays: list[np.ndarray]) -> None:
        slot.current = [None] * len(arrays)  # unknown until allocate_tensors succeeds
        for idx, x in zip(self._in_idx, arrays):
            slot.interp.resize_tensor_input(idx, list(x.shape), strict=True)
        slot.interp.allocate_tensors()
        slot.current = [x.shape for x in arrays]

    def close(self) -> None:
        """Refuse new runs and drop the idle interpreters (one still running goes with the session)."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break


class LiteRtBackend:
    name = "litert"
    formats = frozenset({Format.TFLITE})
    native = frozenset({Format.TFLITE})
    sets_precision = False

    @functools.cached_property
    def _mod(self):
        return _import()

    @functools.lru_cache(maxsize=1)  # noqa: B019 - one instance per process
    def status(self) -> BackendStatus:
        try:
            _, dist = self._mod
        except Exception as e:
            return BackendStatus(False, reason=f"ai-edge-litert does not import ({e}); pip install ai-edge-litert")
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version(dist)
        except PackageNotFoundError:
            v = "unknown"
        return BackendStatus(True, version=f"{dist} {v}")

    @functools.lru_cache(maxsize=1)  # noqa: B019
    def devices(self) -> list[Device]:
        if not self.status().available:
            return []
        out = [Device(self.name, "CPU", DeviceKind.CPU, f"{cpu_name()} (XNNPACK)",
                      capabilities=("FP32", "FP16", "INT8"))]
        for dev_id, (kind, libs, reason) in _DELEGATES.items():
            lib = self._find_delegate(libs)
            if lib:
                out.append(Device(self.name, dev_id, kind, f"{dev_id} delegate ({lib})"))
            else:
                out.append(Device(self.name, dev_id, kind, dev_id, available=False, reason=reason))
        return out

    def _find_delegate(self, libs: tuple[str, ...]) -> str | None:
        # Probe with ctypes first: load_delegate on a missing library leaves a half-built
        # Delegate whose __del__ raises.
        for lib in libs:
            try:
                ctypes.CDLL(lib)
            except OSError:
                continue
            return lib
        return None

    def open(self, path: Path, fmt: Format, device: Device, precision: Precision, concurrency: int = 1):
        mod, _ = self._mod
        if precision not in (Precision.STORED, Precision.ANY):
            raise DeviceNotAvailableError(f"litert:{device.id} runs a model at the precision it was stored in; "
                               f"for {precision.value}, convert the model")
        lib = None
        if device.id != "CPU":
            _, libs, reason = _DELEGATES[device.id]
            lib = self._find_delegate(libs)
            if lib is None:
                raise BackendError(f"litert:{device.id}: {reason}")
            concurrency = 1  # one interpreter per accelerator: they serialise on the device anyway
        # concurrent runs each get an interpreter and their share of the cores
        threads = max(1, cpu_count() // concurrency)
        interps = [self._interpreter(mod, path, device, lib, threads) for _ in range(concurrency)]
        return LiteRtSession(interps, "as stored")

    @staticmethod
    def _interpreter(mod, path: Path, device: Device, lib: str | None, threads: int):
        try:
            interp = mod.Interpreter(model_path=str(path), num_threads=threads,
                                     experimental_delegates=[mod.load_delegate(lib)] if lib else None)
        except ValueError as e:
            if any(s in str(e) for s in _FILE_PROBLEMS):
                # The flatbuffer verifier rejects the file itself: no device will do better.
                raise ModelFileError(path, f"LiteRT cannot read it: {_first_line(e)}") from e
            raise BackendError(f"litert:{device.id} cannot run {path.name}: {_first_line(e)}") from e
        except Exception as e:
            raise BackendError(f"litert:{device.id} failed to open {path.name}: {_first_line(e)}") from e
        try:
            with _notices_to_log():
                interp.allocate_tensors()
        except Exception as e:
            raise BackendError(f"litert:{device.id} failed to prepare {path.name}: {_first_line(e)}") from e
        return interp


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:500]
