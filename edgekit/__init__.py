"""edgekit: run ML models on the device in front of you.

    import edgekit
    m = edgekit.load("model.onnx")       # ONNX Runtime, OpenVINO or LiteRT on the best device
    out = m.run({"input": x})
    print(m.selection)                   # what was considered, and why this one

Importing edgekit imports no runtime (nor NumPy): attributes load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    BackendError,
    DeviceNotAvailableError,
    EdgekitError,
    InputError,
    ModelFileError,
    NoCandidateError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load",
    "devices",
    "Model",
    "TensorSpec",
    "Device",
    "DeviceKind",
    "Format",
    "Precision",
    "Selection",
    "Attempt",
    "EdgekitError",
    "UsageError",
    "ModelFileError",
    "InputError",
    "DeviceNotAvailableError",
    "BackendError",
    "NoCandidateError",
]

_LAZY = {
    "load": ".model",
    "Model": ".model",
    "devices": ".devices",
    "TensorSpec": ".types",
    "Device": ".types",
    "DeviceKind": ".types",
    "Format": ".types",
    "Precision": ".types",
    "Selection": ".types",
    "Attempt": ".types",
}

if TYPE_CHECKING:  # pragma: no cover
    from .devices import devices
    from .model import Model, load
    from .types import Attempt, Device, DeviceKind, Format, Precision, Selection, TensorSpec


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
