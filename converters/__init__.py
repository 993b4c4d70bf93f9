"""edgekit converters: export, convert and quantize models to ONNX, OpenVINO IR and TFLite.

    from converters import convert
    report = convert("model.onnx", to="onnx,openvino,tflite", precisions="fp32,fp16,int8",
                     calibration="calib-images/", out="model-pkg")

Every artifact is checked against its source (fidelity and speed) and written into one
model package that :func:`edgekit.load` reads. Heavy tools (TensorFlow, NNCF, PyTorch)
are imported only when a conversion needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["convert", "ConversionReport", "ArtifactReport", "ConversionError", "TARGETS", "PRECISIONS"]

_LAZY = {"convert": ".conversion", "ConversionError": ".conversion", "TARGETS": ".report", "PRECISIONS": ".report",
         "ConversionReport": ".report", "ArtifactReport": ".report"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'converters' has no attribute {name!r}")


if TYPE_CHECKING:
    from .conversion import ConversionError, convert
    from .report import PRECISIONS, TARGETS, ArtifactReport, ConversionReport
