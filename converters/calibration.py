"""Calibration and check data: model inputs made from images, audio, text or arrays.

Images go through the image task's own pre-processing for this model, audio through the
audio task's loader (resampled, mono), text through the package's tokenizer: calibration
sees what inference sees. Files that cannot be decoded are skipped with a warning and
counted; data is never invented.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import InputError, UsageError
from edgekit.model import cast_input
from edgekit.types import TensorSpec, shape_text

from .report import count

log = logging.getLogger("edgekit.convert")

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXT = {".wav", ".flac", ".ogg"}
ARRAY_EXT = {".npy", ".npz"}
TEXT_EXT = {".txt"}
KINDS = {"images": IMAGE_EXT, "audio": AUDIO_EXT, "text": TEXT_EXT, "arrays": ARRAY_EXT}
_A = {"images": "an image", "audio": "an audio file", "text": "a text file"}  # one file of a kind
_ON = {"images": "images", "audio": "audio", "text": "a .txt of lines", "arrays": ".npy/.npz arrays"}
HOW = ("give a folder or files of images, audio (WAV/FLAC/OGG), a .txt of lines, or .npy/.npz arrays "
       "named after the model's inputs")


@dataclass
class Samples:
    """Model inputs, one dict per sample (batch 1, or ``batch`` samples where the model's batch is
    fixed at that), and where they came from."""

    feeds: list[dict[str, np.ndarray]]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kind: str = ""  # "images" | "audio" | "text" | "arrays" | "random"
    batch: int = 1  # samples in each feed

    def describe(self) -> dict:
        return {"source": self.source, "kind": self.kind, "samples": len(self.feeds) * self.batch,
                "batch": self.batch, "skipped": [list(s) for s in self.skipped]}

    def __str__(self) -> str:
        skipped = f", {count(len(self.skipped), 'file')} skipped" if self.skipped else ""
        held = (count(len(self.feeds), "sample") if self.batch == 1
                else f"{count(len(self.feeds), 'batch', 'batches')} of {self.batch} (the model's fixed batch)")
        return f"{held} from {self.source} ({self.kind}){skipped}"


def files_of(spec, what: str = "calibration") -> list[Path]:
    """The files named by ``spec``: a folder (sorted, non-recursive), a file, or a list of either.
    ``what`` ("calibration", "check") names the data in an error."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not found:
                raise UsageError(f"{what} folder {p} is empty; {HOW}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{what} data {p}: no such file or folder")
    return files


def load(spec, inputs: list[TensorSpec], metadata: dict, *, package_dir: Path | None = None,
         what: str = "calibration") -> Samples:
    """Model inputs from ``spec``: paths (see :func:`files_of`) or, from Python, a list of
    feed dicts / arrays.

    Files of the model's own kind (see :func:`modality`) and arrays are read; any other file, and
    one that cannot be decoded or does not fit the model's inputs, is skipped with a warning. A
    model whose batch is fixed above 1 gets its samples joined into batches of that size.

    Raises:
        UsageError: nothing usable (names the folder or files and what would do), or a file of the
            model's kind that the model cannot take (names the file).
    """
    want = modality(inputs, metadata)
    batch = fixed_batch(inputs, want)
    if isinstance(spec, (list, tuple)) and spec and not isinstance(spec[0], (str, Path)):
        feeds = [_as_feed(item, inputs, f"{what} sample #{i}: ") for i, item in enumerate(spec)]
        feeds = [f for feed in feeds for f in _split(feed, inputs)]
        for i, f in enumerate(feeds):
            try:
                _check_shapes(f, inputs, batch)
            except InputError as e:
                raise InputError(f"{what} sample #{i} {e}") from None
        return Samples(_in_batches(feeds, batch), "python", kind="arrays", batch=batch)
    files = files_of(spec, what)
    label = str(spec) if isinstance(spec, (str, Path)) else f"{len(files)} files"
    out = Samples([], label, batch=batch)
    kinds = set()
    memo: dict = {}  # what every file of a kind shares (the image pre-processing), worked out once
    for f in files:
        kind = next((k for k, ext in KINDS.items() if f.suffix.lower() in ext), None)
        if kind is None:
            why = f"not a kind of file edgekit calibrates with ({f.suffix.lower() or 'no extension'})"
        elif kind not in (want, "arrays"):
            why = f"{_A[kind]}, and this model calibrates on {_ON[want]}" + (" or arrays" if want != "arrays" else "")
        else:
            try:
                new = _read(kind, f, inputs, metadata, package_dir, batch, memo)
            except (InputError, _Unusable) as e:  # this file is bad; the others may be fine
                why = str(e).removeprefix(f"{f}: ")  # the file is named beside the reason
            except UsageError as e:  # the model cannot take this kind of file at all
                raise UsageError(f"{what} file {f}: {e}") from e
            else:
                out.feeds.extend(new)
                kinds.add(kind)
                continue
        out.skipped.append((str(f), why))
        log.warning("%s: skipped %s (%s)", what, f, why)
    if not out.feeds:
        first = f"; {out.skipped[0][0]}: {out.skipped[0][1]}" if out.skipped else ""
        raise UsageError(f"{what} data {label}: no usable samples ({count(len(out.skipped), 'file')} skipped{first}); "
                         f"{HOW}")
    out.kind = "+".join(sorted(kinds))
    out.feeds = _in_batches(out.feeds, batch)
    return out


def fixed_batch(inputs: list[TensorSpec], kind: str = "arrays") -> int:
    """The batch a model takes its inputs in when it is fixed above 1 (exported for batches of 4),
    else 1: the first dim every input shares, where each has at least 2. Images and token ids have
    their batch first; other data only where nothing else can be its batch (``[10, 1, 8]`` is a
    sequence of 10 with a batch of 1, PyTorch's RNN layout)."""
    firsts = {s.shape[0] if s.shape is not None and len(s.shape) >= 2 else None for s in inputs}
    n = firsts.pop() if len(firsts) == 1 else None
    if not isinstance(n, int) or n < 2:
        return 1
    return n if kind in ("images", "text") or all(batch_axis(s) == 0 for s in inputs) else 1


def _in_batches(feeds: list[dict], n: int) -> list[dict]:
    """Batch-1 samples joined ``n`` at a time along the first axis. The last batch is filled up
    with the first samples again: data is never invented."""
    if n == 1 or not feeds:
        return feeds
    if len(feeds) % n:
        log.info("the model's batch is fixed at %d: the last batch of %d samples is filled up with "
                 "the first samples again", n, len(feeds) % n)
    groups = [[feeds[(start + i) % len(feeds)] for i in range(n)] for start in range(0, len(feeds), n)]
    return [{k: np.concatenate([f[k] for f in group]) for k in group[0]} for group in groups]


def modality(inputs: list[TensorSpec], metadata: dict) -> str:
    """The kind of file that calibrates this model ("images", "audio", "text"; "arrays" alone when
    nothing says): what its task or pre-processing names, else what its inputs look like."""
    task = str(metadata.get("task") or "")
    pp = metadata.get("preprocess") or {}
    for kind, word in (("images", "image"), ("audio", "audio"), ("text", "text")):
        if task.startswith(word) or word in pp:
            return kind
    one = inputs[0] if len(inputs) == 1 and inputs[0].shape is not None else None
    if one is not None and len(one.shape) == 4:
        return "images"  # an image batch, float or uint8
    if inputs and all(s.dtype.kind in "iu" for s in inputs):
        return "text"  # token ids (the tokenizer then says whether it can be found)
    if one is not None and one.dtype.kind == "f" and 1 <= len(one.shape) <= 3:
        return "audio"
    return "arrays"


def _read(kind: str, path: Path, inputs: list[TensorSpec], metadata: dict, package_dir: Path | None,
          batch: int = 1, memo: dict | None = None) -> list[dict]:
    """The samples in one file, each checked against the model's inputs (at batch 1 where the
    model's batch is fixed at ``batch``)."""
    if kind == "images":
        feeds = [_image_feed(path, inputs, metadata, {} if memo is None else memo)]
    elif kind == "audio":
        feeds = _audio_feeds(path, inputs, metadata)
    elif kind == "text":
        feeds = _text_feeds(path, inputs, metadata, package_dir)
    else:
        feeds = _array_feeds(path, inputs)
    for feed in feeds:
        _check_shapes(feed, inputs, batch)
    return feeds


def _check_shapes(feed: dict, inputs: list[TensorSpec], batch: int = 1) -> None:
    """Refuse a sample whose shape the model would refuse later, when no file could be named. With a
    fixed ``batch``, one sample has 1 where the model has ``batch``: samples are joined later."""
    for spec in inputs:
        got = feed[spec.name].shape
        want = spec.shape if spec.shape is None or batch == 1 else (1, *spec.shape[1:])
        if want is not None and (len(got) != len(want) or any(
                isinstance(d, int) and d != g for d, g in zip(want, got))):
            raise InputError(f"gives input {spec.name!r} the shape {got}; the model takes {shape_text(spec.shape)}"
                             + (f", {batch} samples at a time" if batch > 1 else ""))


class _Unusable(UsageError):
    """A file the model cannot take that the other files may make up for: skipped with a warning."""


def _single_input(inputs: list[TensorSpec], kind: str) -> TensorSpec:
    if len(inputs) != 1:
        names = ", ".join(s.name for s in inputs)
        raise UsageError(f"{kind} calibration needs a model with one input; this one has {names}: "
                         f"give .npz files with one array per input")
    return inputs[0]


def _image_feed(path: Path, inputs: list[TensorSpec], metadata: dict, memo: dict) -> dict:
    from edgekit.tasks.image import load_image, preprocess_image

    spec = _single_input(inputs, "image")
    if spec.shape is None or len(spec.shape) != 4:
        raise UsageError(f"an image calibrates a model whose input is an image batch (rank 4); "
                         f"{spec.name!r} has shape {spec.shape}")
    if "image" not in memo:  # worked out (and any warning given) once, not per file
        memo["image"] = image_preprocess(spec, metadata)
    pp = memo["image"]
    img = load_image(path)
    return {spec.name: preprocess_image(img, pp, layout=pp["layout"], dtype=spec.dtype)[None]}


def image_preprocess(spec: TensorSpec, metadata: dict) -> dict:
    """The package's image pre-processing, completed from the input's shape (crop size, layout).

    The input's own layout wins over the package's: a TFLite file carries its package's card,
    whose layout is the ONNX source's NCHW, and takes NHWC."""
    pp = dict((metadata.get("preprocess") or {}).get("image") or {})
    shape = spec.shape
    layout = spec.layout or pp.get("layout") or ("NHWC" if shape[-1] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
    pp["layout"] = layout
    hw = shape[2:4] if layout == "NCHW" else shape[1:3]
    if "crop" not in pp and all(isinstance(d, int) for d in hw):
        pp["crop"] = list(hw)
    if "mean" not in pp and "std" not in pp and "scale" not in pp:
        # No pre-processing known: pixels in [0, 1], the commonest convention. Said out loud,
        # since calibrating on the wrong range gives a bad int8 model.
        log.warning("no image pre-processing given for %r: calibrating on pixels / 255; the model's own (mean, "
                    "std, resize, crop: --preprocess, or preprocess= in Python) makes a better int8 model", spec.name)
        pp["scale"] = 1 / 255
    return pp


def _audio_feeds(path: Path, inputs: list[TensorSpec], metadata: dict) -> list[dict]:
    from edgekit.tasks.audio import load_audio

    spec = _single_input(inputs, "audio")
    pp = (metadata.get("preprocess") or {}).get("audio") or {}
    x = load_audio(path, target_rate=int(pp.get("sample_rate", 16000)))
    length = spec.shape[-1] if spec.shape else None
    if isinstance(length, int):  # a fixed window: cut the clip into windows (zero-padding the last)
        n = max(1, -(-len(x) // length))
        x = np.pad(x, (0, n * length - len(x)))
        windows = x.reshape(n, length)
    else:
        windows = x[None]
    rank = len(spec.shape) if spec.shape else 2
    return [{spec.name: w.reshape((1,) * (rank - 1) + (-1,)).astype(spec.dtype)} for w in windows]


def _text_feeds(path: Path, inputs: list[TensorSpec], metadata: dict, package_dir: Path | None) -> list[dict]:
    from edgekit.tasks.text import Tokenizer

    pp = (metadata.get("preprocess") or {}).get("text") or {}
    if "tokenizer" not in pp or package_dir is None:  # token ids guessed from int64 inputs: arrays may do
        raise _Unusable("text calibration needs the model's tokenizer (a Hugging Face folder or "
                         "a package whose edgekit.json names one)")
    # A static sequence (a TFLite file's 256 tokens) is what every line is cut and padded to (mask 0),
    # as the text tasks run it.
    static = {s.name: s.shape[1] for s in inputs
              if s.shape is not None and len(s.shape) == 2 and isinstance(s.shape[1], int)}
    tok = Tokenizer(package_dir / pp["tokenizer"],
                    max_length=min([int(pp.get("max_length", 512)), *static.values()]))
    try:
        lines = [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    except UnicodeDecodeError as e:
        raise _Unusable(f"not valid UTF-8 text ({e})") from e
    feeds = []
    for line in lines:
        enc = tok.encode([line])
        missing = [s.name for s in inputs if s.name not in enc]
        if missing:
            raise UsageError(f"the tokenizer gives no {', '.join(missing)} for this model")
        feed = {s.name: enc[s.name].astype(s.dtype) for s in inputs}
        for name, length in static.items():
            feed[name] = np.pad(feed[name], ((0, 0), (0, length - feed[name].shape[1])))
        feeds.append(feed)
    return feeds


def _array_feeds(path: Path, inputs: list[TensorSpec]) -> list[dict]:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                feed = {k: z[k] for k in z.files}
        else:
            feed = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _Unusable(f"cannot be read as a NumPy file ({e})") from e
    return _split(_as_feed(feed, inputs), inputs)


def _as_feed(item, inputs: list[TensorSpec], where: str = "") -> dict:
    if isinstance(item, dict):
        names = {s.name for s in inputs}
        if set(item) != names:
            raise InputError(f"{where}arrays are named {sorted(item)}; the model's inputs are {sorted(names)}")
        return {k: np.asarray(v) for k, v in item.items()}
    return {_single_input(inputs, "array").name: np.asarray(item)}


def batch_axis(spec: TensorSpec) -> int:
    """The axis of ``spec`` that counts samples: its first dim that is dynamic or 1, else 0.

    Usually 0; a recurrent state laid out ``[layers, batch, hidden]`` (Silero VAD's ``[2, batch, 128]``,
    or ``[2, 1, 128]`` once made static) has it at 1.
    """
    return next((i for i, d in enumerate(spec.shape or ()) if not isinstance(d, int) or d == 1), 0)


def state_inputs(inputs: list[TensorSpec]) -> list[str]:
    """Inputs whose batch is not their first axis: the recurrent state of a streaming model."""
    return [s.name for s in inputs if s.shape is not None and batch_axis(s) != 0]


def _split(feed: dict, inputs: list[TensorSpec]) -> list[dict]:
    """Batch-1 samples from a feed that may hold a batch (rank = the input's) or one sample (rank - 1)."""
    by_name = {s.name: s for s in inputs}
    arrays, axes = {}, {}
    for name, a in feed.items():
        spec = by_name[name]
        rank = len(spec.shape) if spec.shape is not None else a.ndim
        axes[name] = axis = batch_axis(spec) if spec.shape is not None else 0
        if a.ndim == rank - 1:
            a = np.expand_dims(a, axis)
        elif a.ndim != rank:
            raise InputError(f"array {name!r}: rank {a.ndim}, the input has rank {rank}")
        arrays[name] = cast_input(spec, a)  # float64 for int64 ids became zeros: refused, not cast
    counts = {a.shape[axes[k]] for k, a in arrays.items()}
    if len(counts) != 1:
        raise InputError(f"arrays of different batch sizes {sorted(counts)}")
    return [{k: np.take(v, [i], axis=axes[k]) for k, v in arrays.items()} for i in range(counts.pop())]


def random_samples(inputs: list[TensorSpec], n: int, warmup: dict | None = None, integer: int = 0) -> Samples:
    """Synthetic inputs, for checking fp32/fp16 parity when no data was given (never for calibration):
    floats random, integers ``integer``, booleans False."""
    from edgekit.bench import synthetic_inputs

    return Samples([synthetic_inputs(inputs, seed=i, warmup=warmup, integer=integer) for i in range(n)],
                   "random", kind="random")


def subset(samples: Sequence[dict], n: int) -> list[dict]:
    """Up to ``n`` samples spread evenly over ``samples``."""
    if len(samples) <= n:
        return list(samples)
    idx = np.linspace(0, len(samples) - 1, n).round().astype(int)
    return [samples[i] for i in idx]
