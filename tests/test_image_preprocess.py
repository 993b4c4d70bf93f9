"""Pre-processing is the reference the weights expect, stated here independently of the code:
the shorter side to 256, the centre 224 box resized once by PIL's antialiased bilinear filter,
(x - 127) / 128, on an upright RGB image.

A faster path must pass these unchanged. Loosening the tolerance is a fidelity decision (the
resize study in benchmarks/tasks.py measures what each alternative costs), not a test fix.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from edgekit.tasks.image import PILLOW_BLOCKS, crop_box, load_image, normalise, preprocess_image, reuse_pillow_memory
from samples.build import IMAGE_PREPROCESS, INPUTS

PHOTOS = sorted((INPUTS / "images").iterdir()) + sorted((INPUTS / "calibration").iterdir())[::6]


def _reference(img: Image.Image) -> np.ndarray:
    w, h = img.size
    side = 224 / max(256 / min(w, h), 224 / w, 224 / h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    pixels = np.asarray(img.resize((224, 224), Image.BILINEAR, box=box), np.float32)
    return ((pixels - 127) / 128).transpose(2, 0, 1)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_preprocessing_is_the_reference(path):
    img = load_image(path)
    got = preprocess_image(img, IMAGE_PREPROCESS)
    np.testing.assert_allclose(got, _reference(img), rtol=0, atol=1e-6)
    nhwc = preprocess_image(img, IMAGE_PREPROCESS, layout="NHWC")
    np.testing.assert_array_equal(nhwc, got.transpose(1, 2, 0))


def test_crop_box_is_centred_and_never_leaves_the_image():
    assert crop_box((451, 300), IMAGE_PREPROCESS) == ((224, 224), (94.25, 18.75, 356.75, 281.25))
    size, box = crop_box((100, 50), {"resize": 56, "crop": 224})  # upsampled: the whole height
    assert size == (224, 224) and box == pytest.approx((25, 0, 75, 50), abs=1e-9)
    assert crop_box((1000, 100), {"resize": 256, "crop": [224, 320]}) == ((320, 224), (437.5, 6.25, 562.5, 93.75))


def test_normalise_fuses_mean_std_scale_and_channel_order():
    px = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    pp = {"mean": [1, 2, 3], "std": [2, 4, 8], "scale": 2.0, "color": "BGR"}
    want = (px[:, :, ::-1].astype(np.float32) * 2 - [1, 2, 3]) / [2, 4, 8]
    np.testing.assert_allclose(normalise(px, pp, layout="NHWC"), want, rtol=1e-6)
    np.testing.assert_allclose(normalise(px, pp), want.transpose(2, 0, 1), rtol=1e-6)
    assert normalise(px, pp, dtype=np.uint8).dtype == np.uint8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_matches_pils_exif_transpose(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(INPUTS / "images" / "cat.jpg").save(buf, "JPEG", exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    got = np.asarray(load_image(buf.getvalue()))
    np.testing.assert_array_equal(got, want)
    assert got.shape[:2] == ((451, 300) if orientation >= 5 else (300, 451))


def test_a_callers_pil_image_is_left_as_it_was():
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buf, "JPEG", exif=exif.tobytes())
    img = Image.open(buf)
    assert load_image(img).size == (20, 40)
    assert img.size == (40, 20) and img.getexif().get(0x0112) == 6


def test_pillow_keeps_a_few_freed_blocks_unless_the_user_chose(monkeypatch):
    before = Image.core.get_blocks_max()
    try:
        monkeypatch.delenv("PILLOW_BLOCKS_MAX", raising=False)
        Image.core.set_blocks_max(0)
        reuse_pillow_memory()
        assert Image.core.get_blocks_max() == PILLOW_BLOCKS
        Image.core.set_blocks_max(64)  # never lowered
        reuse_pillow_memory()
        assert Image.core.get_blocks_max() == 64
        monkeypatch.setenv("PILLOW_BLOCKS_MAX", "0")
        Image.core.set_blocks_max(0)
        reuse_pillow_memory()
        assert Image.core.get_blocks_max() == 0
    finally:
        Image.core.set_blocks_max(before)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("pp", [
    {"mean": [127.0] * 3, "std": [128.0] * 3},  # one gain and bias: the single fused pass
    {"mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]},  # ImageNet's: one pass per channel
    {"mean": [1, 2, 3], "std": [2, 4, 8], "scale": 2.0, "color": "BGR"},
    {"mean": [0.5] * 3, "std": [0.5] * 3, "scale": 1 / 255, "color": "BGR"},
], ids=["shared", "per-channel", "per-channel-bgr", "shared-bgr"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_every_normalisation_path_is_the_formula(layout, pp, dtype):
    px = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    rgb = px[:, :, ::-1] if pp.get("color") == "BGR" else px
    want = (rgb.astype(np.float64) * pp.get("scale", 1.0) - pp["mean"]) / pp["std"]
    want = want.transpose(2, 0, 1) if layout == "NCHW" else want
    got = normalise(px, pp, layout=layout, dtype=dtype)
    assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-3 if dtype == np.float16 else 1e-6, atol=1e-5)
