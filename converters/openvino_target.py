"""OpenVINO IR artifacts: fp32, fp16 (compressed weights), int8 (NNCF post-training quantization).

OpenVINO reads ONNX and TFLite directly, so the source here is the fp32 ONNX hub or a
TFLite/IR source file as given.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from edgekit.formats import CARD_KEY

RECIPES = {
    "fp32": "openvino.convert_model, fp32 weights",
    "fp16": "fp16-compressed weights (ov.save_model compress_to_fp16)",
    "int8": "NNCF post-training quantization, per-tensor activations, per-channel 7-bit-range weights (overflow fix on "
            "every layer), FastBiasCorrection",
    "int8-dynamic": "NNCF int8 weight compression (activations stay float)",
}
# Measured on Silero VAD: NNCF post-training int8 passed the cosine floor teacher-forced (0.985) yet,
# carrying its own state over a clip, found no speech at all; weight compression kept the segments.
STATEFUL_INT8 = "NNCF int8 weight compression (activations stay float): the int8 that keeps a streaming " \
                "model with a state faithful (post-training activation quantization lost it)"


def build(source: Path, precision: str, dst: Path, calibration: list[dict] | None, card: str,
          *, transformer: bool = False, stateful: bool = False, channels_last: tuple[str, ...] = ()) -> str:
    """Write the ``precision`` IR of ``source`` to ``dst`` (.xml + .bin); returns the recipe in words.

    ``stateful``: int8 is weight compression (``STATEFUL_INT8``), as int8-dynamic.
    ``channels_last``: NCHW inputs the IR takes as NHWC (see :func:`_channels_last`).
    """
    from edgekit.backends.ov import import_openvino

    ov = import_openvino()  # NNCF's telemetry is declined with OpenVINO's

    recipe = RECIPES.get(precision, "")
    if precision == "int8" and stateful:
        precision, recipe = "int8-dynamic", STATEFUL_INT8

    model = ov.Core().read_model(str(source)) if source.suffix == ".xml" else ov.convert_model(str(source))
    if source.suffix == ".tflite":
        _signature_names(model, source)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF draws progress bars on stdout; keep it for --json
        model = _compress(model, precision, _by_input_names(model, calibration), transformer)
    if channels_last:
        model = _channels_last(ov, model, channels_last)
    model.set_rt_info(card, [CARD_KEY])
    ov.save_model(model, str(dst), compress_to_fp16=precision == "fp16")
    return recipe


def _signature_names(model, source: Path) -> None:
    """``model``'s ports (read from the TFLite file ``source``) named by the file's signature, as LiteRT
    and edgekit's OpenVINO backend name that file's tensors: "input_ids" and "sentence_embedding",
    not "serving_default_input_ids:0" and "StatefulPartitionedCall:0". Else one model answered under
    other names, and in another order, depending on which artifact ran (a server's clients saw both)."""
    from edgekit.backends.litert import signature_names

    renamed = signature_names(source) or {}
    for port in (*model.inputs, *model.outputs):
        name = next((renamed[n] for n in sorted(port.get_names()) if n in renamed), None)
        if name is not None:
            port.get_tensor().set_names({name})


def _by_input_names(model, feeds: list[dict] | None) -> list[dict] | None:
    """``feeds`` keyed by ``model``'s own input names: a TFLite file's card names its package's inputs
    ("input_ids"), the IR made of it TensorFlow's ("serving_default_input_ids:0", in another order),
    and NNCF found no port for "input_ids"."""
    from .check import matching_names

    if not feeds:
        return feeds
    ports = list(model.inputs)
    found = matching_names(list(feeds[0]), [port.get_names() for port in ports])
    if found is None:
        return feeds
    return [{ports[i].get_any_name(): v for i, v in zip(found, feed.values())} for feed in feeds]


@contextlib.contextmanager
def _nncf_warnings_only():
    """NNCF logs a table of weight bit widths at INFO on every weight compression; its warnings stay.
    (Its logger is set to INFO when nncf is first imported, so this imports it first.)"""
    import nncf  # noqa: F401

    log_ = logging.getLogger("nncf")
    level = log_.level
    log_.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log_.setLevel(level)


def _compress(model, precision: str, calibration: list[dict] | None, transformer: bool):
    if precision == "int8":
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
            QuantizationParameters,
        )

        if not calibration:
            raise ValueError("int8 needs calibration data")
        # NNCF's CPU default gives depthwise convolutions per-channel *activation* ranges; measured on
        # EfficientNet-Lite0 calibrated on 39 photos and checked on others, those ranges did not carry
        # over (cosine 0.937-0.961 on two calibration sets, per-tensor 0.986) and were no faster.
        per_tensor = QuantizationParameters(per_channel=False)
        # A package runs on CPUs it was not built on. Without VNNI, x86 int8 kernels saturate on 8-bit
        # weights (see edgekit.hostinfo.INT8_DOT_FLAGS); NNCF's overflow fix keeps weights in a 7-bit range
        # so the same IR is faithful everywhere. Its default fixes the first layer only. Measured on
        # EfficientNet-Lite0 on a Zen 1 (AVX2, no VNNI), 64 held-out views: first layer only cosine 0.950,
        # top-1 93.8 %; every layer 0.983, 96.9 % (no saturation left: a VNNI CPU does the same arithmetic);
        # none 0.882. The 8-bit IR on a Zen 4 with VNNI gave 0.986, 95.3 %; no slower either way.
        advanced = AdvancedQuantizationParameters(activations_quantization_params=per_tensor,
                                                  overflow_fix=OverflowFix.ENABLE)
        model = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                              advanced_parameters=advanced)
    elif precision == "int8-dynamic":
        import nncf

        with _nncf_warnings_only():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    elif precision not in ("fp32", "fp16"):
        raise ValueError(f"unknown precision {precision!r}")
    return model


def _channels_last(ov, model, names: tuple[str, ...]):
    """``model`` taking the NCHW inputs ``names`` as NHWC (OpenVINO's pre-processing API).

    OpenVINO's CPU plugin runs convolutions channels-last inside anyway, so the transpose it adds
    costs nothing measurable (int8 EfficientNet-Lite0: 2.645 ms either way), while a caller with
    HxWxC pixels (every decoder's layout) saves one: edgekit's pre-processing splits the resized
    picture into planes for NCHW, 0.05 of its 0.46 ms right after an inference (2-core Zen 4).
    """
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    for name in names:
        ppp.input(name).tensor().set_layout(ov.Layout("NHWC"))
        ppp.input(name).model().set_layout(ov.Layout("NCHW"))
    return ppp.build()
