"""Image classification: decode any image safely, pre-process as the weights were trained, top-k.

    from edgekit.tasks import ImageClassifier
    clf = ImageClassifier("efficientnet-lite0/")
    clf.classify("cat.jpg", top_k=3)       # [Category(index=285, label='Egyptian cat', score=0.40), ...]
"""

from __future__ import annotations

import copy
import functools
import io
import math
import re
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InputError, UsageError
from .base import Task, input_file
from .results import Category, ClassifierOptions, classifier_options

# Images larger than this are refused before decoding (a 10000 x 10000 photo, 100 MP, is allowed;
# decompression bombs declaring billions of pixels are not).
MAX_PIXELS = 120_000_000


def load_image(image, *, name: str | None = None, min_size: int | None = None):
    """Decode ``image`` to an RGB PIL image, upright (EXIF orientation applied).

    Accepts a path, bytes, a PIL image or an HxW / HxWxC uint8 array. Grayscale, 16-bit,
    palette, CMYK and images with alpha (composited on white) become RGB. With ``min_size``,
    JPEGs much larger than needed are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's draft
    mode) keeping both sides >= ``min_size``: a 12 MP photo then decodes ~10x faster.

    Raises:
        InputError: unreadable, empty, not an image, or over :data:`MAX_PIXELS`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    what = name or _describe(image)
    if isinstance(image, np.ndarray):
        return _from_array(image, what)
    if isinstance(image, Image.Image):
        img = image
    else:
        if isinstance(image, (bytes, bytearray, memoryview)):
            if not len(image):
                raise InputError(f"{what}: empty (0 bytes)")
            stream = io.BytesIO(bytes(image))
        elif isinstance(image, (str, Path)):
            stream = input_file(image, "image").open("rb")
        else:
            raise InputError(f"{what}: expected a path, bytes, a PIL image or a uint8 array")
        try:
            with stream, warnings.catch_warnings():  # closes the file on every path, errors included
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size below
                img = Image.open(stream)
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise InputError(f"{what}: {w}x{h} is {w * h / 1e6:.0f} MP, over the "
                                     f"{MAX_PIXELS / 1e6:.0f} MP limit (decompression-bomb guard)")
                if min_size and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                img.load()
        except InputError:
            raise
        except Image.DecompressionBombError as e:
            raise InputError(f"{what}: refused as a decompression bomb ({e})") from e
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            # Pillow names the stream by its repr ("cannot identify image file <_io.BytesIO ...>")
            reason = re.sub(r"\s*<_io\.\w+[^>]*>", "", str(e)) or type(e).__name__
            raise InputError(f"{what}: cannot be read as an image ({reason})") from e
    if img.width < 1 or img.height < 1:
        raise InputError(f"{what}: image has no pixels")
    try:
        # In place on images decoded here (no copy when upright); a caller's image is left alone.
        upright = ImageOps.exif_transpose(img, in_place=img is not image)
        img = img if upright is None else upright
    except Exception:  # a broken EXIF block must not lose the picture
        pass
    return _to_rgb(img)


def _describe(image) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return f"image ({type(image).__name__})"


def _from_array(arr: np.ndarray, what: str):
    from PIL import Image

    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(f"{what}: expected an HxW or HxWx3/4 array, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{what}: image has no pixels")
    if arr.ndim == 3 and arr.shape[2] == 4 and not arr[:, :, 3].any():
        # An alpha of 0 everywhere is no picture to composite (it would be plain white): it is a frame's
        # padding byte (RGBX / XRGB capture formats), so the colour is taken as it is
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr // 257).astype(np.uint8)
        else:
            raise InputError(f"{what}: expected uint8 (or uint16) pixels, got {arr.dtype}")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def _to_rgb(img):
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        img = Image.fromarray(((a - lo) / (hi - lo or 1) * 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: PIL un-premultiplies only to LA / RGBA
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


# Pillow frees each image's memory at once by default, so decoding and resizing the next picture
# faults in fresh pages: 289 page faults and ~0.7 ms a picture on a 2-core Zen 4 VM (decode plus
# pre-processing, 2.6 -> 1.9 ms). Keeping a few freed blocks for reuse (Pillow's PILLOW_BLOCKS_MAX)
# removes that, for at most this many blocks (each up to Pillow's 16 MiB block size) held back.
# A user's own PILLOW_BLOCKS_MAX stands.
PILLOW_BLOCKS = 4


def reuse_pillow_memory() -> None:
    """Let Pillow keep up to :data:`PILLOW_BLOCKS` freed memory blocks for reuse (never lowers it)."""
    import os

    from PIL import Image

    if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() < PILLOW_BLOCKS:
        Image.core.set_blocks_max(PILLOW_BLOCKS)


# The interpolations each resampling convention ("resampling" in the package's pre-processing) offers.
RESAMPLING = {"pillow": ("bilinear", "bicubic", "nearest"), "tf1": ("bilinear", "bicubic")}
# What preprocess.image may hold (a converter refuses others: a misspelt key would be ignored)
PREPROCESS_KEYS = ("resize", "crop", "size", "scale", "mean", "std", "color", "layout", "resampling", "interpolation")


def check_preprocess(pp: dict, where: str) -> None:
    """Raise UsageError, naming ``where``, unless ``pp``'s resampling and interpolation exist."""
    resampling, interpolation = pp.get("resampling", "pillow"), pp.get("interpolation", "bilinear")
    if not isinstance(resampling, str) or resampling not in RESAMPLING:
        raise UsageError(f"{where}: image resampling {resampling!r} is not one of {sorted(RESAMPLING)}")
    if not isinstance(interpolation, str) or interpolation not in RESAMPLING[resampling]:
        raise UsageError(f"{where}: image interpolation {interpolation!r} is not one of "
                         f"{list(RESAMPLING[resampling])} (resampling {resampling!r})")
    color, layout = pp.get("color", "RGB"), pp.get("layout", "NCHW")
    if not isinstance(color, str) or color.upper() not in ("RGB", "BGR"):
        raise UsageError(f"{where}: image color {color!r} is not RGB or BGR")
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"{where}: image layout {layout!r} is not NCHW or NHWC")
    for key in ("crop", "size", "resize"):  # crop and size may be [height, width]
        v = pp.get(key)
        if v is not None and not _pixels(v, pair=key != "resize"):
            what = "a positive number of pixels" + ("" if key == "resize" else " or [height, width]")
            raise UsageError(f"{where}: image {key} {v!r} is not {what}")
    try:
        gain, bias = _gain_bias(*_affine_key(pp))
    except (TypeError, ValueError):
        raise UsageError(f"{where}: image scale, mean and std must be numbers, one or one per channel "
                         f"(scale {pp.get('scale', 1.0)!r}, mean {pp.get('mean', 0.0)!r}, "
                         f"std {pp.get('std', 1.0)!r})") from None
    if not np.isfinite([*gain, *bias]).all():
        raise UsageError(f"{where}: image std {pp.get('std', 1.0)!r} has a zero, or scale or mean is not finite")


def _pixels(v, *, pair: bool) -> bool:
    sides = v if pair and isinstance(v, (list, tuple)) and len(v) == 2 else [v]
    return all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sides)


def preprocess_image(img, pp: dict, *, layout: str = "NCHW", dtype=np.float32) -> np.ndarray:
    """Centre-crop and resize as ``pp["resampling"]`` says, normalise, lay out (no batch dim).

    ``"pillow"`` (the default, torchvision's convention): the shorter side to ``resize``, the
    centre ``crop`` taken in source coordinates and resized once by PIL's antialiased filter
    (``box``: ~3x faster than resize-then-crop, same pixels).
    ``"tf1"``: TensorFlow 1's ``tf.image.resize_*`` on a whole-pixel centre crop, as TF-trained
    models such as EfficientNet-Lite were trained and evaluated: see :func:`resize_tf1`.

    For many images, make an :class:`ImagePreprocessor` once and call it.
    """
    return ImagePreprocessor(pp, layout=layout, dtype=dtype)(img)


class ImagePreprocessor:
    """:func:`preprocess_image` with ``pp`` checked and resolved once: call it on each image.

    A classifier runs this once per picture, right after an inference that has evicted the
    interpreter's code and data from the core's caches, where each of the ~20 Python and numpy
    calls that checked the dict, derived its constants and computed the crop took microseconds:
    0.608 against 0.538 ms a picture with them made once (OpenVINO int8, 2-core Zen 4, side by side:
    benchmarks/preprocess_ab.py). The crop geometry is kept per image size.

    Raises:
        UsageError: naming ``where``, when ``pp`` is not valid pre-processing.
    """

    _MAX_SIZES = 64  # image sizes whose crop geometry is kept (a few KB each: see _Tf1Geometry)

    def __init__(self, pp: dict, *, layout: str = "NCHW", dtype=np.float32,
                 where: str = "image pre-processing") -> None:
        check_preprocess(pp, where)
        self._pp = copy.deepcopy(dict(pp))  # the constants below are derived from it once
        self.layout = layout
        self.dtype = np.dtype(dtype)
        self.tf1 = pp.get("resampling", "pillow") == "tf1"
        self.bgr = pp.get("color", "RGB").upper() == "BGR"
        self.gain, self.bias = _gain_bias(*_affine_key(pp))
        interpolation = pp.get("interpolation", "bilinear")
        if self.tf1:
            self._interpolation = _cv2_interpolation(interpolation)
        else:
            from PIL import Image

            self._interpolation = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                                   "nearest": Image.NEAREST}[interpolation]
        self._geometry: dict = {}

    @property
    def pp(self) -> dict:
        """The pre-processing in use (a copy: changing it changes nothing here)."""
        return copy.deepcopy(self._pp)

    def __call__(self, img) -> np.ndarray:
        """``img`` as the model's input, without the batch dim: a PIL image (load_image gives one), or
        anything :func:`load_image` takes (a path, bytes, an array), which it decodes first."""
        from PIL import Image

        if not isinstance(img, Image.Image):
            img = load_image(img)
        if img.mode != "RGB":  # load_image gives RGB; a caller's own grayscale or RGBA image too
            img = img.convert("RGB")
        geometry = self._geometry.get(img.size)
        if geometry is None:
            if len(self._geometry) >= self._MAX_SIZES:
                self._geometry.clear()
            geometry = self._geometry[img.size] = (_tf1_geometry(img.size, self._pp) if self.tf1
                                                   else crop_box(img.size, self._pp))
        if not self.tf1:
            size, box = geometry
            pixels = np.asarray(img.resize(size, self._interpolation, box=box), dtype=np.uint8)
            return _normalise(pixels, self.gain, self.bias, self.bgr, self.layout, self.dtype)
        box = _read_taps(img, geometry.box, geometry.rows, geometry.cols)
        if self.dtype == np.uint8:  # raw pixels, rounded after the resize as TF's cast would
            pixels = _resample_tf1(_float_box(box), geometry, self._interpolation,
                                   out=_scratch("resized", (*geometry.size[::-1], 3)))
            return _normalise(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), self.gain, self.bias, self.bgr,
                              self.layout, self.dtype)
        return self._normalised_tf1(box, geometry)

    def _normalised_tf1(self, box: np.ndarray, geometry: _Tf1Geometry) -> np.ndarray:
        """The uint8 ``box`` normalised, resized as TF1 does and laid out: a fresh array.

        Normalised before the resize rather than after (the filter's weights sum to one, so the values
        are the same to 1e-6): the uint8-to-float pass does the scaling too, and the resize writes into
        the result (NHWC) or OpenCV splits it into the result's planes (NCHW), where normalising after
        took two passes over a transposed view (0.1 ms of the 0.6 in a classify loop).
        """
        import cv2

        gain, bias = (self.gain[::-1], self.bias[::-1]) if self.bgr else (self.gain, self.bias)
        x = _buffer("box", box.shape)  # the constants are in the model's channel order; the box is RGB
        if len(gain) == 1:
            cv2.addWeighted(box, float(gain[0]), box, 0.0, float(bias[0]), dst=x, dtype=cv2.CV_32F)
        else:
            cv2.multiply(box, (*map(float, gain), 0.0), dst=x, dtype=cv2.CV_32F)
            cv2.add(x, (*map(float, bias), 0.0), dst=x)
        w, h = geometry.size
        if self.layout == "NCHW":
            resized = _resample_tf1(x, geometry, self._interpolation, out=_scratch("resized", (h, w, 3)))
            out = np.empty((3, h, w), np.float32)
            cv2.split(resized, [out[2], out[1], out[0]] if self.bgr else [out[0], out[1], out[2]])
        else:
            out = _resample_tf1(x, geometry, self._interpolation,
                                out=None if self.bgr else np.empty((h, w, 3), np.float32))
            if self.bgr:
                out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
        return out if self.dtype == np.float32 else out.astype(self.dtype)


def crop_box(size: tuple[int, int], pp: dict) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
    """The crop's (width, height) and the source box (left, top, right, bottom) it is resized from:
    the shorter side scaled to ``resize``, centred, never outside the image."""
    (crop_w, crop_h), _, scale = _crop_scale(size, pp)
    w, h = size
    # min(): where the crop decides the scale, crop / (crop / w) can come out a hair over w, and PIL
    # refuses the box's offset of -1.4e-14 (a 214x256 photo, crop 224)
    box_w, box_h = min(w, crop_w / scale), min(h, crop_h / scale)
    left, top = (w - box_w) / 2, (h - box_h) / 2
    return (crop_w, crop_h), (left, top, left + box_w, top + box_h)


def _crop_scale(size: tuple[int, int], pp: dict) -> tuple[tuple[int, int], int, float]:
    """The crop's (width, height), the shorter side's target, and the scale that fits both."""
    crop = pp.get("crop") or pp.get("size") or 224
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    resize = pp.get("resize") or max(crop_h, crop_w)
    w, h = size
    return (crop_w, crop_h), resize, max(resize / min(w, h), crop_w / w, crop_h / h)


def tf1_crop(size: tuple[int, int], pp: dict) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The crop's (width, height) and the whole-pixel source box (left, top, width, height).

    As tensorflow/tpu's ``_decode_and_center_crop``: the box side is ``int(crop / resize *
    shorter side)`` and its offset ``(side - box + 1) // 2``; never outside the image.
    """
    (crop_w, crop_h), resize, scale = _crop_scale(size, pp)
    w, h = size
    if scale == resize / min(w, h):  # TF's own float32 arithmetic, so that 0.875 * 320 is 280, not 279
        sides = [int(np.float32(c / resize) * np.float32(min(w, h))) for c in (crop_w, crop_h)]
    elif crop_w * h >= crop_h * w:  # the crop is wider than the image's shape: its whole width
        sides = [w, crop_h * w // crop_w]
    else:  # taller: its whole height
        sides = [crop_w * h // crop_h, h]
    box_w, box_h = (max(1, min(n, b)) for n, b in zip((w, h), sides))
    return (crop_w, crop_h), ((w - box_w + 1) // 2, (h - box_h + 1) // 2, box_w, box_h)


def resize_tf1(pixels: np.ndarray, pp: dict, *, out: np.ndarray | None = None) -> np.ndarray:
    """The centre crop of HxWx3 uint8 ``pixels`` resized as TensorFlow 1 does: float32, unclipped
    (into ``out`` when given).

    ``tf.compat.v1.image.resize_bilinear`` / ``resize_bicubic`` (``half_pixel_centers=False``):
    output pixel x samples the box at ``x * box / crop``, bicubic with a = -0.75, edges clamped,
    no antialiasing. OpenCV's warp and remap compute exactly that (within 0.2 levels: they round
    positions to 1/32 pixel), on float pixels, so that cubic overshoot is kept as TF keeps it (on uint8 it
    would be clipped: up to 35 levels off on the sample photos). Only the rows and columns the
    filter reads are converted to float, so a 12 MP photo costs no more memory than a small one.
    """
    geometry = _tf1_geometry((pixels.shape[1], pixels.shape[0]), pp)
    left, top, box_w, box_h = geometry.box
    box = pixels[top:top + box_h, left:left + box_w]
    if geometry.rows is not None:
        box = box[geometry.rows]
    if geometry.cols is not None:
        box = np.take(box, geometry.cols, axis=1)
    return _resample_tf1(_float_box(box), geometry, _cv2_interpolation(pp.get("interpolation", "bilinear")), out=out)


def _cv2_interpolation(name: str) -> int:
    """OpenCV's flag for a "tf1" interpolation (RESAMPLING["tf1"] names them)."""
    import cv2

    return {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[name]


class _Tf1Geometry(NamedTuple):
    """Where TF1's resize of one image size reads and samples (a few KB: remap's maps, 0.4 MB,
    stay in :func:`_tf1_maps`' small cache)."""

    size: tuple[int, int]  # the crop's (width, height)
    box: tuple[int, int, int, int]  # the whole-pixel source box: left, top, width, height
    rows: np.ndarray | None  # the box's rows the filter reads (None: all)
    cols: np.ndarray | None
    warp: np.ndarray | None  # the affine map when the box is read whole, else remap's maps are used


def _tf1_geometry(size: tuple[int, int], pp) -> _Tf1Geometry:
    crop, box = tf1_crop(size, pp)
    rows, cols, _, _ = _tf1_maps(*crop, *box[2:])
    warp = None
    if rows is None and cols is None:  # positions x * box / crop: affine
        warp = np.array([[box[2] / crop[0], 0, 0], [0, box[3] / crop[1], 0]])
        warp.flags.writeable = False
    return _Tf1Geometry(crop, box, rows, cols, warp)


def _read_taps(img, box: tuple[int, int, int, int], rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
    """The rows and columns of ``img``'s ``box`` (left, top, width, height) that the filter reads,
    as an HxWx3 uint8 array (all of them where ``rows`` / ``cols`` is None).

    A big photo is read in strips of consecutive tap rows rather than cropped whole: Pillow's crop
    and its array copy the box three times (a 12 MP photo: 16 against 6.5-7.9 ms, side by side).
    """
    left, top, w, h = box
    if rows is None:
        arr = np.asarray(img.crop((left, top, left + w, top + h)))
        return arr if cols is None else np.take(arr, cols, axis=1)
    wanted, where = np.unique(rows, return_inverse=True)  # edge clamping repeats the first and last rows
    runs = np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1)
    strips = []
    for run in runs:
        strip = np.asarray(img.crop((left, top + int(run[0]), left + w, top + int(run[-1]) + 1)))
        strips.append(strip if cols is None else np.take(strip, cols, axis=1))
    return np.take(np.concatenate(strips), where, axis=0)


def _resample_tf1(box: np.ndarray, geometry: _Tf1Geometry, flags: int, *, out: np.ndarray | None) -> np.ndarray:
    """The float32 HxWx3 ``box`` (its tap rows and columns) sampled at TF1's positions.

    A box read whole is warped (its positions are ``x * box / crop``: an affine map OpenCV computes
    as it goes, 8-12 % faster than reading remap's 0.4 MB of maps, the same pixels); tap rows and
    columns are remapped.
    """
    import cv2

    if geometry.warp is not None:
        return cv2.warpAffine(box, geometry.warp, geometry.size, dst=out, flags=flags | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
    _, _, map_x, map_y = _tf1_maps(*geometry.size, *geometry.box[2:])
    return cv2.remap(box, map_x, map_y, flags, dst=out, borderMode=cv2.BORDER_REPLICATE)


def _float_box(box: np.ndarray) -> np.ndarray:
    x = _buffer("box", box.shape)
    x[...] = box
    return x


@functools.lru_cache(maxsize=8)  # 0.4 MB each for 224x224; 0.07 ms to make
def _tf1_maps(crop_w: int, crop_h: int, box_w: int, box_h: int):
    """The rows and columns of the box to read (None: all) and remap's maps into them."""
    rows, y = _samples(crop_h, box_h)
    cols, x = _samples(crop_w, box_w)
    map_x = np.ascontiguousarray(np.broadcast_to(x, (crop_h, crop_w)))
    map_y = np.ascontiguousarray(np.broadcast_to(y[:, None], (crop_h, crop_w)))
    for a in (rows, cols, map_x, map_y):
        if a is not None:
            a.flags.writeable = False  # shared between calls and threads
    return rows, cols, map_x, map_y


def _samples(n_out: int, n_box: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Where TF1 samples along one axis: output pixel i reads the box at ``i * n_box / n_out``.

    Returns (None, those positions) when the box is small enough to read whole. Otherwise the
    box's rows (or columns) that the 4-tap filter reads, 4 per output pixel, edge-clamped, and
    positions into them (``4 i + 1`` plus the fraction): the same taps and weights.
    """
    pos = np.arange(n_out) * (n_box / n_out)
    if n_box <= 4 * n_out:
        return None, pos.astype(np.float32)
    base = np.floor(pos)
    taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, n_box - 1).ravel()
    return taps, (4 * np.arange(n_out) + 1 + (pos - base)).astype(np.float32)


# Float buffers up to this many values are kept per thread (12 MB: a 1 MP box); larger ones are
# made fresh. The box is at most 4 taps x the crop per side, so a 224x224 crop needs at most 0.8 MP.
_SCRATCH_MAX = 3 << 20
_thread_buffers = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """This thread's float32 buffer ``name``, kept while the shape stays (1.4 MB a thread for a
    451x300 photo to 224x224; at most :data:`_SCRATCH_MAX` values). Fresh arrays of this size cost
    370 page faults a call (glibc hands them back to the system), which doubled the pre-processing
    time: 1.18 against 0.73 ms on the Xeon.
    """
    buf = getattr(_thread_buffers, name, None)
    if buf is None or buf.shape != shape:
        buf = np.empty(shape, np.float32)
        setattr(_thread_buffers, name, buf)
    return buf


def _buffer(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`_scratch` up to :data:`_SCRATCH_MAX` values, a fresh array above."""
    return _scratch(name, shape) if math.prod(shape) <= _SCRATCH_MAX else np.empty(shape, np.float32)


def normalise(arr: np.ndarray, pp: dict, *, layout: str = "NCHW", dtype=np.float32) -> np.ndarray:
    """HxWx3 RGB pixels (uint8, or float from :func:`resize_tf1`) in the model's channel order,
    layout and range."""
    gain, bias = _gain_bias(*_affine_key(pp))
    return _normalise(arr, gain, bias, pp.get("color", "RGB").upper() == "BGR", layout, np.dtype(dtype))


def _normalise(arr: np.ndarray, gain: tuple, bias: tuple, bgr: bool, layout: str, dtype: np.dtype) -> np.ndarray:
    """:func:`normalise` with the constants resolved.

    A fused multiply-add reading the (transposed) pixel view, no intermediate float copies. With
    per-channel constants it runs once per channel: a broadcast over a last axis of 3 would run
    numpy's inner loop 3 elements at a time (7x slower for NHWC: 0.53 against 0.07 ms at 224x224).
    """
    if bgr:
        arr = arr[:, :, ::-1]
    src = arr.transpose(2, 0, 1) if layout == "NCHW" else arr
    if dtype == np.uint8:  # quantized models with uint8 input take raw pixels
        return np.ascontiguousarray(src)
    x = np.empty(src.shape, np.float32)
    if len(gain) == 1:
        np.multiply(src, gain[0], out=x)
        np.add(x, bias[0], out=x)
    else:
        for c in range(3):
            xc = x[c] if layout == "NCHW" else x[:, :, c]
            np.multiply(arr[:, :, c], gain[c], out=xc)
            np.add(xc, bias[c], out=xc)
    return x if dtype == np.float32 else x.astype(dtype)


def _affine_key(pp: dict) -> tuple:
    """The package's scale, mean and std as a cache key: each a number or a tuple of numbers."""
    return tuple(tuple(np.ravel(v).tolist()) if isinstance(v, (list, tuple, np.ndarray)) else float(v)
                 for v in (pp.get("scale", 1.0), pp.get("mean", 0.0), pp.get("std", 1.0)))


@functools.lru_cache(maxsize=16)  # a classify loop called them 20-45 us a call, after each inference
def _gain_bias(scale, mean, std) -> tuple[tuple, tuple]:
    """x * gain + bias as (x * scale - mean) / std: one float32 pair when the channels share it."""
    std = np.broadcast_to(np.asarray(std, np.float32), (3,))
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero std: check_preprocess says so
        gain = np.float32(scale) / std
        bias = -np.broadcast_to(np.asarray(mean, np.float32), (3,)) / std
    if (gain == gain[0]).all() and (bias == bias[0]).all():
        return (gain[0],), (bias[0],)
    return tuple(gain), tuple(bias)


class ImageClassifier(Task):
    """Top-k image classification from a package's labels and pre-processing.

    Args:
        source: package folder, model file or loaded Model.
        device: as in :func:`edgekit.load`.
        labels: class names (default: the package's).
        preprocess: overrides of the package's image pre-processing (resize, crop, mean, std, ...).
        options: default :class:`ClassifierOptions` (top_k, score_threshold, allow, deny).

    Raises:
        UsageError: ``labels`` a string or not one per model output, bad pre-processing, ``options``
            not a ClassifierOptions; ModelFileError naming edgekit.json when the package's labels
            or its postprocess ``activation`` (softmax, sigmoid or none) are wrong.
    """

    task = "image-classification"

    def __init__(self, source, *, device: str = "auto", labels=None, preprocess: dict | None = None,
                 options: ClassifierOptions | None = None, **load_options) -> None:
        super().__init__(source, device=device, **load_options)
        with self.closed_on_error():
            reuse_pillow_memory()
            self.labels = self.class_labels(labels)
            pp = self.preprocess("image", preprocess, PREPROCESS_KEYS)
            self.options = classifier_options(options, self.labels)
            self._activate = self.activation()
            spec = self.model.inputs[0]
            self.input_name = spec.name
            self.input_dtype = spec.dtype
            # The running artifact's own layout wins (a TFLite sibling is NHWC), then the spec's.
            self.layout = self.artifact_entry().get("layout") or spec.layout or pp.get("layout", "NCHW")
            if "crop" not in pp and spec.shape is not None and len(spec.shape) == 4:
                hw = spec.shape[2:4] if self.layout == "NCHW" else spec.shape[1:3]
                if all(isinstance(d, int) for d in hw):
                    pp["crop"] = list(hw)
            self.preprocessor = ImagePreprocessor(pp, layout=self.layout, dtype=self.input_dtype,
                                                  where=str(self.model.source))  # checks pp, once
            crop = pp.get("crop") or 224
            if pp.get("resampling") == "tf1":
                # TensorFlow decodes at full size, and a reduced decode changes what it samples (a
                # 512x512 sample photo drafted to 256x256 was up to 113 levels off): no draft decode.
                self.decode_min = None
                import cv2  # noqa: F401 - imported here (0.27 s), so that the first classify() is not slowed
            else:  # the smallest side a JPEG may be draft-decoded to without losing pixels the resize needs
                self.decode_min = max(int(pp.get("resize") or 0),
                                      *(crop if isinstance(crop, (list, tuple)) else [crop]))

    @property
    def pp(self) -> dict:
        """The image pre-processing in use (a copy: overrides go to the constructor's ``preprocess``)."""
        return self.preprocessor.pp

    def preprocess_input(self, image) -> np.ndarray:
        """The model input for one image, batch dim included."""
        return self.preprocessor(load_image(image, min_size=self.decode_min))[None]

    def scores(self, image) -> np.ndarray:
        """Class probabilities (or raw scores when the package says no activation)."""
        return self._activate(self.scores_of_one(self.preprocess_input(image)))

    def classify(self, image, top_k: int | None = None, *, score_threshold: float | None = None,
                 allow=None, deny=None) -> list[Category]:
        """Top categories of ``image`` (path, bytes, PIL image or HxWxC uint8 array), best first."""
        opts = self.options.merged(top_k=top_k, score_threshold=score_threshold, allow=allow, deny=deny)
        return opts.select(self.scores(image), self.labels)
