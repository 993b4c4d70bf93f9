"""Pre-processing is the reference the weights expect, computed here independently of the code.

The sample's weights are TensorFlow's, trained and evaluated with tensorflow/tpu's
preprocessing.py: the centre ``int(0.875 * shorter side)`` square, offset ``(side - box + 1) // 2``,
resized by ``tf.compat.v1.image.resize_bicubic``, then (x - 127) / 128. TensorFlow itself is the
reference (it is installed with the converters). The "pillow" convention is checked against PIL's
own resize of the crop box, as torchvision does it.

A faster path must pass these unchanged. Loosening a tolerance is a fidelity decision (the
resize study in benchmarks/tasks.py measures what each alternative costs), not a test fix.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageOps

from edgekit.errors import UsageError
from edgekit.tasks.image import (
    PILLOW_BLOCKS,
    check_preprocess,
    crop_box,
    load_image,
    normalise,
    preprocess_image,
    resize_tf1,
    reuse_pillow_memory,
    tf1_crop,
)
from samples.build import IMAGE_PREPROCESS, INPUTS

PHOTOS = sorted((INPUTS / "images").iterdir()) + sorted((INPUTS / "calibration").iterdir())[::6]
TORCHVISION = {"resize": 256, "crop": 224, "interpolation": "bilinear", "mean": [127.0] * 3, "std": [128.0] * 3}
# OpenCV rounds sample positions to 1/32 pixel: at most 0.14 levels off TensorFlow on the photos.
TF_LEVELS = 0.25


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow", reason="TensorFlow is the reference (installed by `make install`)")


def _tf_reference(tf, img: Image.Image, size: int = 224, method: str = "bicubic") -> np.ndarray:
    """tensorflow/tpu's _decode_and_center_crop on decoded pixels, then (x - 127) / 128, NCHW."""
    pixels = np.asarray(img)
    h, w = pixels.shape[:2]
    box = int((size / (size + 32)) * min(h, w))
    top, left = (h - box + 1) // 2, (w - box + 1) // 2
    resize = getattr(tf.compat.v1.image, f"resize_{method}")
    out = resize(pixels[None, top:top + box, left:left + box], [size, size]).numpy()[0]
    return ((out - 127) / 128).transpose(2, 0, 1)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_the_sample_preprocessing_is_tensorflows(tf, path):
    img = load_image(path)
    got = preprocess_image(img, IMAGE_PREPROCESS)
    want = _tf_reference(tf, img)
    assert got.shape == want.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=TF_LEVELS / 128)
    nhwc = preprocess_image(img, IMAGE_PREPROCESS, layout="NHWC")
    np.testing.assert_array_equal(nhwc, got.transpose(1, 2, 0))
    raw = preprocess_image(img, IMAGE_PREPROCESS, dtype=np.uint8)  # quantized models taking pixels
    np.testing.assert_allclose(raw, np.clip(want * 128 + 127, 0, 255), atol=0.5 + TF_LEVELS)


@pytest.mark.parametrize("path", PHOTOS[:4], ids=lambda p: p.name)
def test_tf1_bilinear_is_tensorflows_too(tf, path):
    img = load_image(path)
    got = preprocess_image(img, {**IMAGE_PREPROCESS, "interpolation": "bilinear"})
    np.testing.assert_allclose(got, _tf_reference(tf, img, method="bilinear"), rtol=0, atol=TF_LEVELS / 128)


def test_the_classifier_decodes_at_full_size_as_tensorflow_does(tf, samples, tmp_path):
    """No reduced-scale JPEG decode with "tf1": a 512x512 photo drafted to 256x256 was up to 113
    levels off. A large photo reads only the rows and columns the filter needs: still exact."""
    from edgekit.tasks import ImageClassifier

    big = tmp_path / "big.jpg"
    Image.open(INPUTS / "images" / "cat.jpg").resize((2048, 1536), Image.BICUBIC).save(big, quality=90)
    with ImageClassifier(samples["image"] / "model-fp32.onnx") as clf:
        for path in (INPUTS / "images" / "astronaut.jpg", big):
            want = _tf_reference(tf, Image.open(path).convert("RGB"))
            np.testing.assert_allclose(clf.preprocess_input(path)[0], want, rtol=0, atol=TF_LEVELS / 128)


@pytest.mark.parametrize("size, crop", [((451, 300), 224), ((4000, 3000), 224), ((1200, 5000), 224),
                                        ((3000, 3000), [224, 320])], ids=["small", "12mp", "tall", "wide-crop"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_tf1_from_a_pil_image_is_the_resize_of_its_array(size, crop, layout):
    """preprocess_image reads a big photo from Pillow in strips of the rows the filter taps;
    resize_tf1 indexes the whole array: the same pixels, clamped edges included."""
    img = Image.open(INPUTS / "images" / "cat.jpg").convert("RGB").resize(size, Image.BICUBIC)
    pp = {**IMAGE_PREPROCESS, "crop": crop, "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4],
          "color": "BGR"}
    want = normalise(resize_tf1(np.asarray(img), pp), pp, layout=layout)
    got = preprocess_image(img, pp, layout=layout)
    assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous
    # preprocess_image normalises before the resize, resize_tf1's caller after: float rounding apart
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    half = preprocess_image(img, pp, layout=layout, dtype=np.float16)
    np.testing.assert_allclose(half, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_a_callers_grayscale_or_rgba_image_is_taken_as_rgb(layout):
    """load_image gives RGB; preprocess_image called with an "L" image left two planes unwritten."""
    img = Image.open(INPUTS / "images" / "cat.jpg").convert("L")
    want = preprocess_image(img.convert("RGB"), IMAGE_PREPROCESS, layout=layout)
    np.testing.assert_array_equal(preprocess_image(img, IMAGE_PREPROCESS, layout=layout), want)
    np.testing.assert_array_equal(preprocess_image(img.convert("RGBA"), IMAGE_PREPROCESS, layout=layout), want)


def test_the_preprocessor_takes_every_image_load_image_takes():
    """The README says a path, bytes, a PIL image or an array; a path raised AttributeError ('mode')."""
    from edgekit.errors import InputError

    path = INPUTS / "images" / "cat.jpg"
    want = preprocess_image(load_image(path), IMAGE_PREPROCESS)
    for given in (path, str(path), path.read_bytes(), np.asarray(load_image(path))):
        np.testing.assert_array_equal(preprocess_image(given, IMAGE_PREPROCESS), want)
    with open(path, "rb") as f, pytest.raises(InputError, match="expected a path, bytes"):
        preprocess_image(f, IMAGE_PREPROCESS)  # a file object has a .mode too, but is no PIL image
    with pytest.raises(InputError, match="no-such.jpg"):
        preprocess_image(INPUTS / "no-such.jpg", IMAGE_PREPROCESS)


def test_a_frame_with_a_zero_padding_byte_is_its_colour_not_white():
    """An RGBX frame (alpha 0 everywhere) was composited on white: every frame classified as a blank."""
    rgb = np.asarray(load_image(INPUTS / "images" / "cat.jpg"))
    rgbx = np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)
    np.testing.assert_array_equal(np.asarray(load_image(rgbx)), rgb)
    rgba = rgbx.copy()
    rgba[:, :, 3] = 255  # an opaque alpha is still composited, as it was
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), rgb)


def test_tf1_crop_is_tensorflows_whole_pixel_centre_crop():
    assert tf1_crop((451, 300), IMAGE_PREPROCESS) == ((224, 224), (95, 19, 262, 262))
    assert tf1_crop((320, 480), IMAGE_PREPROCESS) == ((224, 224), (20, 100, 280, 280))  # 0.875 * 320, exactly
    assert tf1_crop((1, 1), IMAGE_PREPROCESS) == ((224, 224), (0, 0, 1, 1))  # never an empty box
    # a crop wider than the image's shape takes its whole width, keeping the crop's aspect
    assert tf1_crop((100, 1000), {"resize": 256, "crop": [224, 320]}) == ((320, 224), (0, 465, 100, 70))
    assert tf1_crop((100, 100), {"resize": 200, "crop": 224}) == ((224, 224), (0, 0, 100, 100))  # whole, exactly


def _pillow_reference(img: Image.Image) -> np.ndarray:
    w, h = img.size
    side = 224 / max(256 / min(w, h), 224 / w, 224 / h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    pixels = np.asarray(img.resize((224, 224), Image.BILINEAR, box=box), np.float32)
    return ((pixels - 127) / 128).transpose(2, 0, 1)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_pillow_preprocessing_is_pils_resize_of_the_crop_box(path):
    img = load_image(path)
    got = preprocess_image(img, TORCHVISION)
    np.testing.assert_allclose(got, _pillow_reference(img), rtol=0, atol=1e-6)
    nhwc = preprocess_image(img, TORCHVISION, layout="NHWC")
    np.testing.assert_array_equal(nhwc, got.transpose(1, 2, 0))


def test_crop_box_is_centred_and_never_leaves_the_image():
    assert crop_box((451, 300), TORCHVISION) == ((224, 224), (94.25, 18.75, 356.75, 281.25))
    size, box = crop_box((100, 50), {"resize": 56, "crop": 224})  # upsampled: the whole height
    assert size == (224, 224) and box == pytest.approx((25, 0, 75, 50), abs=1e-9)
    assert crop_box((1000, 100), {"resize": 256, "crop": [224, 320]}) == ((320, 224), (437.5, 6.25, 562.5, 93.75))
    # where the crop decides the scale, crop / (crop / w) came out a hair over w: a box offset of
    # -1.4e-14, which PIL refused with a ValueError (a 214x256 photo, a 55x55 icon)
    for size in [(w, h) for w in range(1, 300, 3) for h in (w, 1, 256, 299)]:
        for pp in ({"crop": 224}, {"crop": 224, "resize": 200}, {"crop": [224, 160]}):
            _, (left, top, right, bottom) = crop_box(size, pp)
            assert 0 <= left <= right <= size[0] and 0 <= top <= bottom <= size[1], (size, pp)
    for size in ((214, 256), (55, 55), (110, 110)):
        assert preprocess_image(Image.new("RGB", size, (9, 99, 199)), {"crop": 224, "scale": 1 / 255}).shape \
            == (3, 224, 224)


@pytest.mark.parametrize("pp, problem", [
    ({"resampling": "tf2"}, "resampling 'tf2' is not one of ['pillow', 'tf1']"),
    ({"resampling": "tf1", "interpolation": "nearest"},
     "interpolation 'nearest' is not one of ['bilinear', 'bicubic']"),
    ({"interpolation": "lanczos"}, "interpolation 'lanczos' is not one of ['bilinear', 'bicubic', 'nearest']"),
    ({"resampling": ["tf1"]}, "resampling ['tf1'] is not one of ['pillow', 'tf1']"),
    ({"crop": "224"}, "crop '224' is not a positive number of pixels or [height, width]"),
    ({"crop": [224, 0]}, "crop [224, 0] is not a positive number of pixels or [height, width]"),
    ({"size": [1, 2, 3]}, "size [1, 2, 3] is not a positive number of pixels or [height, width]"),
    ({"resize": [256, 256]}, "resize [256, 256] is not a positive number of pixels"),
    ({"resize": 25.6}, "resize 25.6 is not a positive number of pixels"),
    ({"mean": "imagenet"}, "scale, mean and std must be numbers, one or one per channel (scale 1.0, "
                           "mean 'imagenet', std 1.0)"),
    ({"std": [1, 2]}, "scale, mean and std must be numbers"),
    ({"std": None}, "scale, mean and std must be numbers"),
    ({"std": [58.4, 0, 57.4]}, "std [58.4, 0, 57.4] has a zero, or scale or mean is not finite"),
    ({"scale": float("inf")}, "std 1.0 has a zero, or scale or mean is not finite"),
    ({"color": "BRG"}, "color 'BRG' is not RGB or BGR"),
    ({"layout": "HWC"}, "layout 'HWC' is not NCHW or NHWC"),
    ({"layout": "nchw"}, "layout 'nchw' is not NCHW or NHWC"),
])
def test_bad_preprocessing_values_are_a_clear_error(pp, problem):
    with pytest.raises(UsageError, match="^" + re.escape(f"pkg/edgekit.json: image {problem}")):
        check_preprocess(pp, "pkg/edgekit.json")


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
