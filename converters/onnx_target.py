"""ONNX artifacts with ONNX Runtime's tools: fp32 (the simplified hub), fp16, int8 static QDQ, int8 dynamic.

The int8 default is the recipe that is fast on CPUs: static QDQ with uint8 activations and
int8 per-channel weights. ORT's own default (int8 activations) left 14 of 49 convolutions
of EfficientNet-Lite0 in fp32 (1.16x over fp32 against 2.09x), and dynamic quantization ran
slower than fp32 (measured here), so it is offered only when asked for as ``int8-dynamic``.
Transformers are the other way round: their int8 is dynamic (see ``TRANSFORMER_INT8``).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("edgekit.convert")

RECIPES = {
    "fp32": "onnxslim-simplified, constant-folded",
    "fp16": "float16 weights and compute, fp32 inputs/outputs (onnxruntime.transformers.float16)",
    "int8": "static QDQ, uint8 activations, int8 per-channel weights, MinMax calibration (onnxruntime.quantization)",
    "int8-dynamic": "dynamic quantization, int8 per-channel weights (onnxruntime.quantization.quantize_dynamic)",
}
# ONNX Runtime's own advice is dynamic quantization for transformers and static for CNNs. Measured on
# all-MiniLM-L6-v2 against fp32: static QDQ cosine 0.85 (0.94 on MatMuls alone), dynamic per-channel
# 0.993-0.994 and the fastest of them.
TRANSFORMER_INT8 = "dynamic quantization, int8 per-channel weights: ONNX Runtime's recipe for transformers " \
                   "(static QDQ lost too much: cosine 0.85 on MiniLM)"
# Streaming models carry a state from step to step. Measured on Silero VAD (speech-probability cosine
# against fp32, teacher-forced; then free-running over a clip): static QDQ 0.967 (probabilities off by
# up to 0.8 free-running: segments merged), dynamic with int8 convolutions 0.958 (its STFT front end is a
# convolution); dynamic on the matrix products alone 1.0000 (off by 0.013 free-running).
STATEFUL_INT8 = "dynamic quantization of MatMul/Gemm weights (int8 per-channel), convolutions float: " \
                "the int8 that keeps a streaming model with a state faithful (static QDQ lost it)"
STATEFUL_OPS = ("MatMul", "Gemm")


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def build(hub: Path, precision: str, dst: Path, calibration: list[dict] | None, *, transformer: bool = False,
          stateful: bool = False) -> str:
    """Write the ``precision`` artifact of ``hub`` to ``dst``; returns the recipe in words.

    ``transformer``: int8 is dynamic (per-channel weights), the recipe that keeps transformers faithful.
    ``stateful``: int8 and int8-dynamic quantize the weights of matrix products only (``STATEFUL_INT8``).
    """
    import onnx

    if precision == "fp32":
        shutil.copy(hub, dst)
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(hub)), keep_io_types=True, disable_shape_infer=False)
        onnx.save(model, str(dst))
    elif precision in ("int8", "int8-dynamic") and stateful:
        _dynamic_int8(hub, dst, STATEFUL_OPS)
        return STATEFUL_INT8
    elif precision == "int8" and transformer:
        _dynamic_int8(hub, dst)
        return TRANSFORMER_INT8
    elif precision == "int8":
        _static_int8(hub, dst, calibration)
    elif precision == "int8-dynamic":
        _dynamic_int8(hub, dst)
    else:
        raise ValueError(f"unknown precision {precision!r}")
    return RECIPES[precision]


def _dynamic_int8(hub: Path, dst: Path, op_types: tuple[str, ...] | None = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as tmp:
        pre = _preprocessed(hub, Path(tmp))
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(op_types) if op_types else None)


def _preprocessed(hub: Path, tmp: Path) -> Path:
    """ORT's recommended pre-processing: symbolic shape inference + graph optimisation.

    Run as ORT's own command in a child process whose working folder is ``tmp``: where the symbolic
    inference cannot finish (transformers, often) it dumps sym_shape_infer_temp.onnx and its data
    into the working folder, and this process's folder is not ours to change. Tried again without
    that step; if both fail, the model is quantized as it is.
    """
    pre = tmp.resolve() / "pre.onnx"
    for symbolic in (True, False):
        cmd = [sys.executable, "-m", "onnxruntime.quantization.preprocess", "--input", str(hub.resolve()),
               "--output", str(pre), "--skip_symbolic_shape", str(not symbolic)]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode == 0 and pre.is_file():
            return pre
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log.info("quantization pre-processing%s failed (%s)", "" if symbolic else " without symbolic shape inference",
                 why)
    shutil.copy(hub, pre)
    return pre


def _static_int8(hub: Path, dst: Path, calibration: list[dict] | None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("static int8 needs calibration data")
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as tmp:
        pre = _preprocessed(hub, Path(tmp))
        quantize_static(str(pre), str(dst), _Reader(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibTensorRangeSymmetric": False})
