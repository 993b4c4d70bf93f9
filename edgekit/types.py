"""Small value types shared by every layer: formats, devices, tensor specs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

Dim = int | str | None  # a static size, a named dynamic dim, or an unnamed dynamic dim


class Format(str, enum.Enum):
    """Model file formats edgekit reads."""

    ONNX = "onnx"
    OPENVINO = "openvino"  # OpenVINO IR: .xml + .bin
    TFLITE = "tflite"


class DeviceKind(str, enum.Enum):
    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"
    TPU = "tpu"


class Precision(str, enum.Enum):
    """Inference precision a runtime may compute at.

    ``STORED`` (the default) runs the model at the precision its weights were
    stored in; runtimes that would silently reduce it (OpenVINO's bf16 on CPUs with
    AVX512-BF16/AMX, fp16 on its GPU plugin) are told not to. ``FP32`` is that, on
    files stored in fp32 only (a package's int8 and fp16 files are passed over). ``ANY``
    lets each runtime use its own default, reduced precision included.
    """

    STORED = "stored"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    ANY = "any"

    @classmethod
    def parse(cls, value: str | Precision | None) -> Precision:
        if value is None:
            return cls.STORED
        if isinstance(value, Precision):
            return value
        aliases = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "bfloat16": "bf16"}
        if not isinstance(value, str):
            from .errors import UsageError

            raise UsageError(f"precision must be a string such as 'fp16' or 'any', not {value!r}")
        key = aliases.get(value.lower(), value.lower())
        try:
            return cls(key)
        except ValueError:
            from .errors import UsageError

            allowed = ", ".join(p.value for p in cls)
            raise UsageError(f"unknown precision {value!r}; choose one of: {allowed}") from None


@dataclass(frozen=True)
class Device:
    """One device as one backend sees it.

    ``spec`` ("backend:id") is what ``edgekit.load(..., device=spec)`` accepts.
    An unavailable device is known to the backend but cannot be used here;
    ``reason`` says why and what to install.
    """

    backend: str
    id: str
    kind: DeviceKind
    name: str
    available: bool = True
    reason: str | None = None
    capabilities: tuple[str, ...] = ()
    device_type: str | None = None  # "integrated" | "discrete" where the runtime says

    @property
    def spec(self) -> str:
        return f"{self.backend}:{self.id}"

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "id": self.id,
            "spec": self.spec,
            "kind": self.kind.value,
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "capabilities": list(self.capabilities),
            "device_type": self.device_type,
        }


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape, dtype and layout of one model input or output.

    Dynamic dims stay dynamic: ``None`` (unnamed) or a string (named, e.g. "batch").
    ``shape`` itself is None when the runtime does not know the rank.
    ``layout`` is "NCHW"/"NHWC" for image-like rank-4 tensors when known, else None.
    """

    name: str
    shape: tuple[Dim, ...] | None
    dtype: np.dtype
    layout: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": str(self.dtype),
            "layout": self.layout,
        }

    def __str__(self) -> str:
        layout = f" {self.layout}" if self.layout else ""
        return f"{self.name}: {self.dtype}{shape_text(self.shape)}{layout}"


def shape_text(shape: tuple[Dim, ...] | None) -> str:
    """A shape as people read it: ``[?, 3, 224, 224]``, or ``[any rank]``."""
    if shape is None:
        return "[any rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def guess_layout(shape: tuple[Dim, ...] | None) -> str | None:
    """Guess NCHW / NHWC for a rank-4 image-like shape from where the channels sit."""
    if shape is None or len(shape) != 4:
        return None
    c_first, c_last = shape[1], shape[3]
    small = (1, 3, 4)
    if c_first in small and c_last not in small:
        return "NCHW"
    if c_last in small and c_first not in small:
        return "NHWC"
    return None


def fits(shape: tuple, want: tuple) -> bool:
    """Whether a concrete ``shape`` fits ``want``: the same rank and size wherever ``want`` fixes one
    (a None or a named dim is open)."""
    return len(shape) == len(want) and all(not isinstance(w, int) or w == d for d, w in zip(shape, want))


def in_layout(shape: tuple, src: str | None, dst: str | None) -> tuple:
    """A rank-4 ``shape`` laid out as ``src`` moved to ``dst`` (NCHW <-> NHWC); as it is otherwise.

    One model's artifacts can differ: a TFLite file takes NHWC beside its NCHW ONNX source, so a
    size or dim name the package gives in the source's layout is moved before it applies."""
    if len(shape) != 4 or src == dst or {src, dst} != {"NCHW", "NHWC"}:
        return tuple(shape)
    n, a, b, c = shape
    return (n, b, c, a) if src == "NCHW" else (n, c, a, b)


@dataclass
class Attempt:
    """What happened to one (backend, device) candidate during selection."""

    backend: str
    device: str
    kind: DeviceKind
    status: str  # "opened" | "failed" | "skipped" | "not tried"
    reason: str = ""
    precision: str | None = None
    artifact: str | None = None
    latency_ms: float | None = None  # median measured by the "fastest" policy

    @property
    def spec(self) -> str:
        return f"{self.backend}:{self.device}"

    def to_dict(self) -> dict:
        d = {
            "backend": self.backend,
            "device": self.device,
            "kind": self.kind.value,
            "status": self.status,
            "reason": self.reason,
            "precision": self.precision,
        }
        if self.artifact is not None:
            d["artifact"] = self.artifact
        if self.latency_ms is not None:
            d["latency_ms"] = round(self.latency_ms, 4)
        return d

    def __str__(self) -> str:
        where = f"{self.spec}" + (f" [{self.artifact}]" if self.artifact else "")
        prec = f" @{self.precision}" if self.precision else ""
        lat = f" p50 {self.latency_ms:.3f} ms" if self.latency_ms is not None else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.status:9} {where}{prec}{lat}{why}"


@dataclass
class Selection:
    """The record of how a model's backend and device were chosen.

    ``attempts`` lists every candidate in the order considered; ``chosen`` is the
    one that runs the model. ``fell_back`` is True when an earlier candidate
    failed (not merely skipped as unavailable); under ``fastest``, when any did.
    """

    policy: str
    precision: str
    attempts: list[Attempt] = field(default_factory=list)
    cache: str | None = None  # "hit" | "stored" | None (only for "fastest")

    @property
    def chosen(self) -> Attempt | None:
        return next((a for a in self.attempts if a.status == "opened"), None)

    @property
    def fell_back(self) -> bool:
        """A candidate ranked before the chosen one failed (under ``fastest``, which tries them all: any)."""
        chosen = self.chosen
        before = self.attempts if chosen is None or self.policy == "fastest" else \
            self.attempts[:self.attempts.index(chosen)]
        return any(a.status == "failed" for a in before)

    def to_dict(self) -> dict:
        chosen = self.chosen
        return {
            "policy": self.policy,
            "precision": self.precision,
            "chosen": chosen.spec if chosen else None,
            "fell_back": self.fell_back,
            "cache": self.cache,
            "attempts": [a.to_dict() for a in self.attempts],
        }

    def __str__(self) -> str:
        head = f"policy={self.policy} precision={self.precision}"
        if self.cache:
            head += f" cache={self.cache}"
        return "\n".join([head, *("  " + str(a) for a in self.attempts)])
