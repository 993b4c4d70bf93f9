"""OpenVINO backend: one device per ``Core().available_devices`` entry.

OpenVINO reads IR (.xml + .bin), .onnx and .tflite. By default it is told to
compute at f32 (its CPU plugin would pick bf16 on AVX512-BF16/AMX CPUs, its GPU
plugin fp16): reduced precision only when the caller allows it.
"""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import BackendError, DeviceNotAvailableError, ModelFileError
from ..formats import signature_base
from ..types import Device, DeviceKind, Format, Precision, TensorSpec, guess_layout
from .base import BackendStatus
from .litert import signature_names

log = logging.getLogger(__name__)

_KINDS = {"CPU": DeviceKind.CPU, "GPU": DeviceKind.GPU, "NPU": DeviceKind.NPU}
_HINTS = {Precision.STORED: "f32", Precision.FP16: "f16", Precision.BF16: "bf16"}
_CAPABILITY = {Precision.FP16: "FP16", Precision.BF16: "BF16"}
_MISSING = {
    "GPU": "OpenVINO found no Intel GPU (needs an Intel GPU and its compute runtime)",
    "NPU": "OpenVINO found no NPU (needs an Intel Core Ultra NPU and its driver)",
}
# Inputs up to this size are copied into the request's own tensor (fastest for small
# inputs); larger ones are shared zero-copy.
_COPY_LIMIT = 1 << 20


def _spec(port, model_port, renamed: dict[str, str]) -> TensorSpec:
    """``port``'s spec, named as ``model_port`` (the port before compiling) was: compiling can add
    a name (Silero's int8 output became {'mean', 'output'}, and any name was 'mean'). A name in
    ``renamed`` is replaced (a .tflite file's tensor name by its signature key)."""
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic:
        shape = None
    else:
        shape = tuple(d.get_length() if d.is_static else None for d in pshape)
    etype = port.get_element_type()
    if etype.get_type_name() == "bf16":  # OpenVINO's to_dtype() says float16 for bf16
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        try:
            dtype = np.dtype(etype.to_dtype())
        except Exception:
            dtype = np.dtype(np.float32)
    named = model_port if model_port.get_names() else port
    name = named.get_any_name() if named.get_names() else f"port{port.get_index()}"
    return TensorSpec(renamed.get(name, name), shape, dtype, guess_layout(shape))


def _empty_shape(port) -> list[int]:
    """``port``'s shape with each dynamic dim 0 (a dynamic rank: [0])."""
    pshape = port.get_partial_shape()
    return [0] if pshape.rank.is_dynamic else [0 if d.is_dynamic else d.get_length() for d in pshape]


class _Request:
    """One infer request with the input tensors it owns (used by one thread at a time)."""

    def __init__(self, compiled, ov) -> None:
        self.req = compiled.create_infer_request()
        self.own = []
        for i, port in enumerate(compiled.inputs):
            tensor = self.req.get_input_tensor(i) if port.get_partial_shape().is_static else None
            self.own.append(tensor)
        self.current = list(self.own)
        # What a dynamic input points at between runs: no elements, so that the caller's array,
        # shared with the request during a run, is not kept alive by an idle request after it
        # (four 38 MB inputs stayed alive until that request ran again).
        self.parked = [own if own is not None else ov.Tensor(port.get_element_type(), _empty_shape(port))
                       for own, port in zip(self.own, compiled.inputs)]
        self.n_out = len(compiled.outputs)
        self.Tensor = ov.Tensor
        self.bf16 = ov.Type.bf16


class _Gate:
    """Runs go through together; making an infer request waits until none is under way and holds
    new ones back. OpenVINO's CPU plugin aborted the whole process (a clean-clone CI run, 8 threads
    on one compiled model) in ``create_infer_request`` while the model's other requests inferred.
    Requests are made only until the pool covers the most runs that ever overlapped."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._making = False

    def enter(self) -> None:
        with self._cond:
            while self._making:
                self._cond.wait()
            self._running += 1

    def leave(self) -> None:
        with self._cond:
            self._running -= 1
            if self._making and not self._running:
                self._cond.notify_all()

    @contextmanager
    def alone(self):
        with self._cond:
            while self._making:
                self._cond.wait()
            self._making = True  # from here new runs wait: one that keeps others busy cannot starve it
            while self._running:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._making = False
                self._cond.notify_all()


class OvSession:
    def __init__(self, compiled, ov, precision: str, model, renamed: dict[str, str]) -> None:
        self._compiled = compiled
        self._ov = ov
        self.inputs = [_spec(p, m, renamed) for p, m in zip(compiled.inputs, model.inputs)]
        self.outputs = [_spec(p, m, renamed) for p, m in zip(compiled.outputs, model.outputs)]
        self.precision = precision
        # Idle requests, taken by a run and given back after it: as many as runs ever overlapped.
        # (Not a threading.local: requests kept in a thread's state are destroyed when that thread
        # ends, and for threads Python did not start, e.g. Qt's pool, that crashes the interpreter.)
        self._idle: list[_Request] = []
        self._gate = _Gate()

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        try:
            r = self._idle.pop()  # atomic under the GIL
        except IndexError:
            with self._gate.alone():
                r = _Request(self._compiled, self._ov)
        self._gate.enter()
        try:
            return self._run(r, arrays)
        finally:
            self._gate.leave()
            self._idle.append(r)

    def _run(self, r: _Request, arrays: list[np.ndarray]) -> list[np.ndarray]:
        req = r.req
        for i, x in enumerate(arrays):
            own = r.own[i]
            if x.dtype.kind == "V":  # bfloat16 (ml_dtypes): OpenVINO shows bf16 buffers as float16
                t = own if own is not None and x.shape == own.data.shape else r.Tensor(r.bf16, list(x.shape))
                t.data.view(np.uint16)[...] = x.view(np.uint16)  # copy the bits, do not convert
                req.set_input_tensor(i, t)
                r.current[i] = t
            elif own is not None and x.nbytes <= _COPY_LIMIT and x.shape == own.data.shape:
                if r.current[i] is not own:
                    req.set_input_tensor(i, own)
                    r.current[i] = own
                own.data[...] = x
            else:
                # OpenVINO shares the array's memory: a read-only one (np.asarray(PIL image), np.frombuffer
                # of bytes, mmap'd np.load) is copied, and so is one whose elements are not aligned (a
                # tensor at an odd offset of a request body), which a kernel is free to assume they are.
                if not (x.flags.writeable and x.flags.aligned):
                    x = x.copy()
                t = r.Tensor(x, shared_memory=True)
                req.set_input_tensor(i, t)
                r.current[i] = t  # keeps x alive while the request refers to it
        try:
            req.infer()
            return [req.get_output_tensor(i).data.copy() for i in range(r.n_out)]
        finally:
            for i, t in enumerate(r.current):
                if t is not r.own[i] and t is not r.parked[i]:  # a caller's array, or one made for this run
                    req.set_input_tensor(i, r.parked[i])
                    r.current[i] = r.parked[i]

    def close(self) -> None:
        # The requests and their tensors go before the compiled model that made them, in the reverse of
        # the order they were made in. (The other order crashed once, in a whole CI run, destroying the
        # requests after the compiled model; it did not recur in 60 load/run/close cycles.)
        idle, self._idle = self._idle, []
        for r in idle:
            r.current = r.parked = r.own = []
            r.req = None
        del idle
        self._compiled = None


# How many input shapes the CPU plugin keeps compiled kernels for (its default: 5000). MiniLM's int8
# IR embedding texts of varying lengths grew by 1.6 GB over 400 calls at the default, and kept growing;
# by 0.36 GB at 100, at the same speed (a shape seen again is a cache hit either way).
RUNTIME_CACHE_SHAPES = 100


def decline_telemetry() -> None:
    """OpenVINO and NNCF send usage events to Google Analytics, a forked process per event from
    ``import openvino`` on, unless a consent file in ~/intel says no (and outside CI). edgekit makes
    no outside connections: their consent check answers "declined" in this process, whatever the
    file says, and nothing is written there. Call it before importing openvino or nncf; where the
    application imported them first, the telemetry object they made (one per process) is declined
    from then on (what they sent on import is beyond reach)."""
    try:
        from openvino_telemetry import main
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    declined = opt_in_checker.ConsentCheckResult.DECLINED
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: declined
    made = getattr(main.Telemetry, "_SingletonMetaClass__single_instance", None)  # its metaclass keeps it
    if made is not None:
        made.consent = False


def import_openvino():
    """The openvino module, its telemetry declined (:func:`decline_telemetry`)."""
    decline_telemetry()
    import openvino

    return openvino


class OpenVinoBackend:
    name = "openvino"
    formats = frozenset({Format.OPENVINO, Format.ONNX, Format.TFLITE})
    native = frozenset({Format.OPENVINO})
    sets_precision = True

    @functools.cached_property
    def _ov(self):
        return import_openvino()

    @functools.cached_property
    def core(self):
        return self._ov.Core()

    @functools.lru_cache(maxsize=1)  # noqa: B019 - one instance per process
    def status(self) -> BackendStatus:
        try:
            ov = self._ov
            self.core  # noqa: B018 - creating the Core loads the plugins list
        except Exception as e:
            return BackendStatus(False, reason=f"openvino does not import ({e}); pip install openvino")
        return BackendStatus(True, version=ov.get_version().split("-")[0])

    @functools.lru_cache(maxsize=1)  # noqa: B019
    def devices(self) -> list[Device]:
        if not self.status().available:
            return []
        core = self.core
        out: list[Device] = []
        seen_kinds = set()
        for dev in core.available_devices:
            family = dev.split(".")[0]
            kind = _KINDS.get(family, DeviceKind.CPU)
            seen_kinds.add(family)
            try:
                full = core.get_property(dev, "FULL_DEVICE_NAME")
                caps = tuple(core.get_property(dev, "OPTIMIZATION_CAPABILITIES"))
                dtype = str(core.get_property(dev, "DEVICE_TYPE")).rsplit(".", 1)[-1].lower()
            except Exception as e:
                out.append(Device(self.name, dev, kind, dev, available=False, reason=f"cannot query: {e}"))
                continue
            out.append(Device(self.name, dev, kind, str(full), capabilities=caps, device_type=dtype))
        for family, reason in _MISSING.items():
            if family not in seen_kinds:
                out.append(Device(self.name, family, _KINDS[family], family, available=False, reason=reason))
        return out

    def open(self, path: Path, fmt: Format, device: Device, precision: Precision, concurrency: int = 1):
        ov = self._ov
        core = self.core
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        supported = set(core.get_property(device.id, "SUPPORTED_PROPERTIES"))
        if concurrency > 1 and "PERFORMANCE_HINT" in supported:
            # One stream per concurrent run (at most), each on its share of the cores: on 2 cores the
            # int8 EfficientNet-Lite0 ran 1.4x the inferences per second from 2 threads this way.
            config = {"PERFORMANCE_HINT": "THROUGHPUT"}
            if "PERFORMANCE_HINT_NUM_REQUESTS" in supported:
                config["PERFORMANCE_HINT_NUM_REQUESTS"] = str(concurrency)
        if device.id == "CPU":  # a property the plugin takes but does not list among its supported ones
            config["CPU_RUNTIME_CACHE_CAPACITY"] = str(RUNTIME_CACHE_SHAPES)
        if precision is not Precision.ANY:
            need = _CAPABILITY.get(precision)
            if need and need not in device.capabilities:
                raise DeviceNotAvailableError(f"openvino:{device.id} cannot compute in {precision.value} "
                                   f"(capabilities: {', '.join(device.capabilities)})")
            if "INFERENCE_PRECISION_HINT" in supported:
                config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
            elif precision is Precision.STORED:
                raise BackendError(f"openvino:{device.id} cannot be told to keep the stored precision; "
                                   f"pass precision='any' to accept its own")
        try:
            model = core.read_model(str(path))
        except Exception as e:
            if fmt is Format.OPENVINO:  # its own format: the file is bad
                raise ModelFileError(path, f"OpenVINO cannot read it: {_first_line(e)}") from e
            # .onnx/.tflite: often ops its frontend cannot convert; the format's own runtime may still run it
            raise BackendError(f"openvino:{device.id} cannot convert {path.name}: {_first_line(e)}") from e
        try:
            try:
                compiled = core.compile_model(model, device.id, config)
            except Exception as e:  # an OpenVINO without the property: its own cache size, then
                if "CPU_RUNTIME_CACHE_CAPACITY" not in str(e):
                    raise
                config.pop("CPU_RUNTIME_CACHE_CAPACITY")
                compiled = core.compile_model(model, device.id, config)
        except Exception as e:
            raise BackendError(f"openvino:{device.id} failed to compile {path.name}: {_first_line(e)}") from e
        try:
            computed = _ran_at(compiled, compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        except Exception:
            computed = "device default"
        # A .tflite file's tensors are named as LiteRT names them, by their signature's keys: the names
        # the package and the tasks know (the source's), not onnx2tf's serving_default_input_ids:0.
        renamed = signature_names(path) if fmt is Format.TFLITE else {}
        if renamed is None:  # no LiteRT to read the signature: onnx2tf's input names are its keys
            renamed = {n: signature_base(n) for p in model.inputs for n in p.get_names()
                       if n.startswith("serving_default_")}
            log.warning("%s: its outputs keep their TFLite tensor names on OpenVINO (reading its signature "
                        "needs ai-edge-litert)", path.name)
        return OvSession(compiled, ov, computed, model, renamed)


def _ran_at(compiled, hint: str) -> str:
    """The precision the compiled model computes at: its hint, unless that is a reduced one no layer
    took. The CPU plugin kept every float layer of the image sample's int8 IR at f32 when asked for
    bf16 (its outputs equal the f32 run's), where MiniLM's int8 IR ran 36 layers at bf16."""
    if hint not in ("bf16", "f16"):
        return hint
    try:
        infos = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
        took = any("runtimePrecision" in rt and rt["runtimePrecision"].astype(str) == hint for rt in infos)
    except Exception:  # a plugin without an execution graph to read: take it at its word
        return hint
    return hint if took else "f32"


def _first_line(e: BaseException) -> str:
    """The cause of an OpenVINO error in one line (it puts source locations first, the cause last)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    noise = ("Exception from", "Check ", "FrontEnd API failed", "Summary:")
    useful = [ln.lstrip("- ") for ln in lines if not ln.startswith(noise)]
    # A frontend's report of ops it could not convert: "-- Conv-16 with a message:" before each op's
    # cause, and a summary naming them all. The summary and the first cause say it.
    failed = [u for u in useful if u.startswith("Conversion is failed for")]
    if failed:
        causes = [u for u in useful if not u.endswith("with a message:") and not u.startswith(
            ("Model wasn't fully converted", "While validating", "Conversion is failed for"))]
        return "; ".join([failed[0], *causes[:1]])[:500]
    return "; ".join(useful[:2] or lines[:1] or [type(e).__name__])[:500]
