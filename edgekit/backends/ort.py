"""ONNX Runtime backend: one device per execution provider, in ORT's own preference order."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import BackendError, DeviceNotAvailableError, ModelFileError
from ..hostinfo import cpu_count, cpu_name
from ..types import Device, DeviceKind, Format, Precision, TensorSpec, guess_layout
from .base import BackendStatus

log = logging.getLogger(__name__)

# Execution providers edgekit knows: kind, platforms where a build has it, what to install.
_KNOWN_EPS: dict[str, tuple[DeviceKind, tuple[str, ...], str]] = {
    "TensorrtExecutionProvider": (DeviceKind.GPU, ("linux", "win32"),
                                  "install onnxruntime-gpu instead of onnxruntime, with TensorRT"),
    "CUDAExecutionProvider": (DeviceKind.GPU, ("linux", "win32"),
                              "install onnxruntime-gpu instead of onnxruntime, with CUDA and cuDNN"),
    "MIGraphXExecutionProvider": (DeviceKind.GPU, ("linux",), "install onnxruntime-migraphx (AMD GPUs)"),
    "DmlExecutionProvider": (DeviceKind.GPU, ("win32",), "install onnxruntime-directml"),
    "CoreMLExecutionProvider": (DeviceKind.NPU, ("darwin",), "the macOS onnxruntime wheel includes it"),
    "QNNExecutionProvider": (DeviceKind.NPU, ("win32", "linux"), "install onnxruntime-qnn (Qualcomm NPUs)"),
    "VitisAIExecutionProvider": (DeviceKind.NPU, ("win32", "linux"), "install AMD's Ryzen AI onnxruntime"),
    "OpenVINOExecutionProvider": (DeviceKind.CPU, ("linux", "win32"),
                                  "install onnxruntime-openvino, or use edgekit's openvino backend"),
    "ROCMExecutionProvider": (DeviceKind.GPU, (), ""),
    "NnapiExecutionProvider": (DeviceKind.NPU, (), ""),
    "CANNExecutionProvider": (DeviceKind.NPU, (), ""),
    "RknpuExecutionProvider": (DeviceKind.NPU, (), ""),
    "WebGpuExecutionProvider": (DeviceKind.GPU, (), ""),
    "CPUExecutionProvider": (DeviceKind.CPU, (), ""),
}
# Not devices: remote or browser-only providers.
_IGNORED = {"AzureExecutionProvider", "JsExecutionProvider", "WebNNExecutionProvider", "VSINPUExecutionProvider"}

_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def _spec(arg) -> TensorSpec:
    # ORT reports an unknown rank and a scalar alike ([]): treat both as "any rank" and let ORT
    # itself reject a wrong rank (translated to InputError by Model.run).
    shape = None
    if arg.shape:
        shape = tuple(d if isinstance(d, str) or (isinstance(d, int) and d >= 0) else None for d in arg.shape)
    dtype = _dtype(arg.type)
    return TensorSpec(arg.name, shape, dtype, guess_layout(shape))


def _dtype(onnx_type: str) -> np.dtype:
    if onnx_type == "tensor(bfloat16)":
        import ml_dtypes  # ships with onnx; NumPy has no bfloat16 of its own

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES.get(onnx_type, np.float32))


class OrtSession:
    def __init__(self, sess, precision: str) -> None:
        self._sess = sess
        self.inputs = [_spec(a) for a in sess.get_inputs()]
        self.outputs = [_spec(a) for a in sess.get_outputs()]
        self._in_names = [s.name for s in self.inputs]
        self._out_names = [s.name for s in self.outputs]
        self.precision = precision
        self.providers = sess.get_providers()

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        # InferenceSession.run is thread-safe; this is ORT's plain fast path.
        return self._sess.run(self._out_names, dict(zip(self._in_names, arrays)))

    def close(self) -> None:
        self._sess = None


class OnnxRuntimeBackend:
    name = "onnxruntime"
    formats = frozenset({Format.ONNX})
    sets_precision = False
    native = frozenset({Format.ONNX})

    @functools.cached_property
    def _ort(self):
        import onnxruntime

        return onnxruntime

    @functools.lru_cache(maxsize=1)  # noqa: B019 - one instance per process, lives forever
    def status(self) -> BackendStatus:
        try:
            ort = self._ort
        except Exception as e:  # missing or broken package must not break edgekit
            return BackendStatus(False, reason=f"onnxruntime does not import ({e}); pip install onnxruntime")
        return BackendStatus(True, version=ort.__version__)

    @functools.lru_cache(maxsize=1)  # noqa: B019
    def devices(self) -> list[Device]:
        if not self.status().available:
            return []
        ort = self._ort
        available = [p for p in ort.get_available_providers() if p not in _IGNORED]
        names = _hardware_names(ort)
        out = []
        for ep in available:
            kind = _KNOWN_EPS.get(ep, (DeviceKind.CPU,))[0]
            name = cpu_name() if ep == "CPUExecutionProvider" else names.get(ep, ep.removesuffix("ExecutionProvider"))
            out.append(Device(self.name, ep, kind, name, capabilities=("FP32", "FP16", "INT8")))
        # Providers this platform's builds can have but this one lacks, with what to install.
        for ep, (kind, platforms, hint) in _KNOWN_EPS.items():
            if ep not in available and sys.platform in platforms:
                out.append(Device(self.name, ep, kind, ep.removesuffix("ExecutionProvider"),
                                  available=False,
                                  reason=f"not in this onnxruntime build ({hint})"))
        return out

    def open(self, path: Path, fmt: Format, device: Device, precision: Precision, concurrency: int = 1):
        ort = self._ort
        if precision not in (Precision.STORED, Precision.ANY):
            raise DeviceNotAvailableError(
                f"onnxruntime:{device.id} runs a model at the precision it was stored in; "
                f"for {precision.value}, load a model stored in {precision.value}"
            )
        so = ort.SessionOptions()
        so.log_severity_level = 4  # fatal only: edgekit reports failures itself, with ORT's message
        usable = cpu_count()
        if usable < _physical_cores():
            # ORT starts a thread per physical core of the machine, whatever CPUs this process may use
            # (taskset, a cpuset, a CPU quota): on 1 allowed core of 2 its two threads took 48.9 ms a run
            # against 25.3 ms with one. Given a count, ORT also stops pinning threads to cores of its choosing.
            so.intra_op_num_threads = usable
        if concurrency > 1:
            # Concurrent runs share the session's intra-op pool, and each calling thread works too:
            # a pool of cores - N + 1 threads (its n - 1 workers plus the N callers) fills the cores.
            so.intra_op_num_threads = max(1, usable - concurrency + 1)
        providers = [device.id] if device.id == "CPUExecutionProvider" else [device.id, "CPUExecutionProvider"]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:
            name = type(e).__name__
            if name == "InvalidProtobuf":
                raise ModelFileError(path, "not a valid ONNX model: truncated or corrupt protobuf "
                                           "(onnxruntime could not parse it)") from e
            if name in ("NoSuchFile", "InvalidGraph"):
                raise ModelFileError(path, f"onnxruntime cannot read it: {_first_line(e)}") from e
            raise BackendError(f"onnxruntime:{device.id} failed to open {path.name}: {_first_line(e)}") from e
        got = sess.get_providers()
        if device.id not in got:
            # ORT does not raise when a provider fails to initialise: it quietly runs on CPU.
            said = "; ".join(str(w.message).split(".")[0] for w in caught)
            raise BackendError(
                f"onnxruntime silently fell back to {', '.join(got)}: {device.id} did not initialise "
                + (f"(onnxruntime said: {said})" if said else "(check its libraries, e.g. CUDA/cuDNN/TensorRT)")
            )
        return OrtSession(sess, "as stored")


@functools.lru_cache(maxsize=1)
def _physical_cores() -> int:
    """The machine's physical cores, as ORT counts them for its default thread pool."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _hardware_names(ort) -> dict[str, str]:
    """Human names of the hardware behind each EP, from ORT's device discovery (ORT >= 1.22)."""
    get_ep_devices = getattr(ort, "get_ep_devices", None)
    if get_ep_devices is None:
        return {}
    names: dict[str, str] = {}
    try:
        for d in get_ep_devices():
            hw = d.device
            kind = str(hw.type).rsplit(".", 1)[-1]
            names.setdefault(d.ep_name, f"{hw.vendor} {kind}".strip())
    except Exception as e:  # discovery is a nicety; never fatal
        log.debug("onnxruntime device discovery failed: %s", e)
    return names


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:500]
