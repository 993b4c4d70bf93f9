"""``convert()``: one source to ONNX / OpenVINO IR / TFLite artifacts, each checked, as one package.

    from converters import convert
    report = convert("model.onnx", to=["onnx", "openvino", "tflite"], precisions=["fp32", "fp16", "int8"],
                     calibration="images/", out="model-pkg")
    header, rows = report.table()  # the table the CLI prints; report.to_dict() is --json

Work happens in a temporary folder beside ``out``; the package moves into place in one
rename, manifest last. A failing step, an exception or Ctrl-C leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgekit import __version__, formats, package
from edgekit.errors import BackendError, UsageError
from edgekit.hostinfo import cpu_id, cpu_name
from edgekit.tasks.base import is_known_task, known_tasks
from edgekit.types import Format

from . import calibration as calib
from . import card as cards
from . import check as checks
from . import onnx_target, openvino_target, sources, tflite_target
from .report import MIN_COSINE, PRECISIONS, TARGETS, ArtifactReport, ConversionReport, count, one_line

log = logging.getLogger("edgekit.convert")

FORMAT_OF = {"onnx": Format.ONNX, "openvino": Format.OPENVINO, "tflite": Format.TFLITE}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}
MAX_CALIBRATION = 300  # samples used for calibration (more adds time, not accuracy)
MAX_CHECK = 64  # samples the parity check runs on
RANDOM_CHECK = 8  # random inputs checked when no data was given (fp32/fp16 parity only)


class ConversionError(BackendError):
    """The conversion produced nothing usable, or ``strict`` and something failed. Has ``.report``."""

    def __init__(self, message: str, report: ConversionReport) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # pickled as made, report and notes included, so that it crosses processes
        return type(self), (str(self), self.report), self.__dict__


def parse_list(value, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise UsageError(f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def default_out(source) -> Path:
    if isinstance(source, (str, Path)):
        p = Path(source)
        return p.parent / f"{p.stem if p.is_file() else p.name}-edgekit"
    raise UsageError("out= is required when converting a PyTorch module")


def check_destination(out: Path, source=None) -> None:
    """Refuse a destination whose replacement would lose the user's files, or that cannot be replaced.

    Allowed: a path that does not exist (missing parent folders are created), an empty folder,
    or an edgekit package (a folder with edgekit.json), which the new package replaces whole.

    Raises:
        UsageError: ``out`` is a file, a symbolic link, a folder with other contents, the current
            folder or one above it, or holds ``source`` (names the path and why).
    """
    def refuse(why: str) -> UsageError:
        return UsageError(f"cannot write the package to {out}: {why}; give a new path, an empty folder "
                          f"or an existing edgekit package to replace")

    if out.is_symlink():
        raise refuse(f"it is a symbolic link (to {os.readlink(out)})")
    if isinstance(source, (str, Path)):  # replacing the folder would delete the model being converted
        src, dst = Path(source).expanduser().resolve(), out.expanduser().resolve()
        if src == dst or dst in src.parents:
            raise refuse(f"the source {source} is in it, and the new package replaces the folder whole")
    if not out.exists():
        above = next(p for p in out.absolute().parents if p.exists())
        if not above.is_dir():
            raise refuse(f"{above} is a file, not a folder")
        return
    if not out.is_dir():
        raise refuse("it is a file")
    here = Path.cwd().resolve()
    if out.resolve() in (here, *here.parents):
        raise refuse("it is the current folder or a folder above it")
    if os.path.ismount(out):  # a container's volume: the package replaces the folder whole, by a rename
        raise UsageError(f"cannot write the package to {out}: it is a mount point, which cannot be replaced "
                         f"by a rename; give a folder inside it ({out / 'package'})")
    if (out / formats.MANIFEST).is_file():
        return
    try:
        entries = sum(1 for _ in out.iterdir())
    except OSError as e:
        raise refuse(f"its contents cannot be listed ({e.strerror or e})") from e
    if entries:
        raise refuse(f"it is a folder with {entries} {'entry' if entries == 1 else 'entries'} and not an edgekit "
                     f"package (no {formats.MANIFEST})")


def read_labels(labels) -> list[str] | None:
    """``labels`` as a list: a list or tuple of names, or a file of one name a line. An empty one
    is refused: the package's classifier would have no names for its classes."""
    if labels is None or isinstance(labels, (list, tuple)):
        if labels is not None and not labels:
            raise UsageError("labels is empty: give one name per class the model outputs")
        return list(labels) if labels is not None else None
    path = Path(labels)
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"labels file {path}: cannot be read ({e})") from e
    if not names:
        raise UsageError(f"labels file {path}: no labels in it; give one class name a line")
    return names


def _check_labels(labels: list[str], given, metadata: dict) -> None:
    """Labels given for a classifier name its classes: their number must be the model's, where its
    first output's size per row is known (the tasks read it so: [1, 1000], or [1, 1000, 1, 1])."""
    outputs = metadata.get("outputs") or []
    shape = outputs[0].get("shape") if outputs else None
    if metadata.get("task") not in checks.CLASSIFIER_TASKS or not shape:
        return
    per_row = shape[1:] if len(shape) > 1 else shape
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in per_row):
        return
    classes = int(np.prod(per_row))
    if len(labels) != classes:
        where = f"labels file {given}" if isinstance(given, (str, Path)) else "labels"
        dims = ", ".join("?" if d is None else str(d) for d in shape)
        raise UsageError(f"{where}: {len(labels)} labels, and the model outputs {classes} class scores "
                         f"({outputs[0].get('name')}: [{dims}]); give one label per class")


def convert(source, *, to: Sequence[str] | str = TARGETS, precisions: Sequence[str] | str = ("fp32", "fp16", "int8"),
            calibration=None, check=None, out: str | Path | None = None, task: str | None = None,
            labels=None, preprocess: dict | None = None, example_inputs=None, input_names=None,
            output_names=None, name: str | None = None, min_cosine: float | None = None, strict: bool = False,
            progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert ``source`` to every target x precision, check each artifact, write a package at ``out``.

    Args:
        source: .onnx / .tflite / .xml file, Hugging Face model folder, edgekit package, or a
            PyTorch ``nn.Module`` (then ``example_inputs`` and ``out`` are required).
        to: targets, from ``onnx``, ``openvino``, ``tflite``.
        precisions: from ``fp32``, ``fp16``, ``int8`` (calibrated; the fast recipe of each target),
            ``int8-dynamic`` (weights only; no calibration; usually slower on CPUs).
        calibration: folder or files of images / audio / a .txt of lines / .npy / .npz, or a list
            of feed dicts. Required for ``int8``.
        check: inputs to measure fidelity on (same kinds); default: the calibration data.
        task, labels, preprocess: the package's task, class names (list or a file of lines) and
            pre-processing (``{"image": {...}}``), overriding what the source carries.
        min_cosine: an artifact whose outputs' cosine similarity to the source's is lower fails
            (default: per precision, ``report.MIN_COSINE``: 0.999 for fp32/fp16, 0.98 for int8).
        strict: any failed or skipped artifact fails the whole conversion (nothing is written).
        progress: called with one line per step.

    Returns:
        The :class:`ConversionReport` (also written into the package's edgekit.json).

    Raises:
        UsageError: bad source, options or calibration data (names which and why).
        ConversionError: nothing usable was produced, or ``strict`` and something failed.
    """
    t_start = time.perf_counter()
    targets = parse_list(to, TARGETS, "target")
    precs = parse_list(precisions, PRECISIONS, "precision")
    if min_cosine is not None and not -1 <= min_cosine <= 1:
        raise UsageError(f"min_cosine {min_cosine} is not a cosine similarity: give a value from -1 to 1")
    if task is not None and not is_known_task(task):  # the package would open as no task at all
        raise UsageError(f"unknown task {task!r}; choose from {', '.join(known_tasks())}")
    out_dir = Path(out).expanduser() if out is not None else default_out(source)
    check_destination(out_dir, source)
    label_list = read_labels(labels)
    check_preprocess(preprocess)
    say = _progress(progress, t_start)

    try:
        staging = package.staging_dir(out_dir)
    except OSError as e:
        where = Path(e.filename).parent if e.filename else out_dir.absolute().parent  # not the hidden temp name
        reason = e.strerror or str(e)
        if e.errno == errno.ENOENT and where.is_dir():  # /proc and the like: there, but no new folders in it
            reason = f"the system lets no folder be made there: {reason}"
        raise UsageError(f"cannot write the package to {out_dir}: cannot make a folder in {where} "
                         f"({reason})") from e
    work = staging / ".work"
    work.mkdir()
    try:
        with _interrupts_noted():
            say(f"reading {source if isinstance(source, (str, Path)) else type(source).__name__}")
            prep = sources.prepare(source, work, example_inputs=example_inputs, input_names=input_names,
                                   output_names=output_names)
            for note in prep.notes:
                say(f"note: {note}")
            metadata = _metadata(prep, name, task, label_list, preprocess)
            if label_list is not None:
                _check_labels(label_list, labels, metadata)
            cal = _load_data(calibration, prep, metadata, "calibration", say)
            chk = _check_samples(check, cal, prep, metadata, say)
            refs = [prep.reference(f) for f in chk.feeds]
            report = ConversionReport(source=prep.label, out=str(out_dir), artifacts=[], host=cpu_name(),
                                      calibration=cal.describe() if cal else {},
                                      check={**chk.describe(), "against": prep.reference_label})
            constant = _constant_outputs(prep.output_names, refs)
            if constant:
                report.check["warning"] = (f"the source gave one value everywhere for {', '.join(constant)} on "
                                           f"all {len(refs)} check inputs: their parity compares constants; "
                                           f"give check or calibration data that moves them")
                say(f"warning: {report.check['warning']}")
            cal_feeds = calib.subset(cal.feeds, MAX_CALIBRATION) if cal else None
            if strict:  # what cannot be made is known now: refused before minutes of building the rest
                for target in targets:
                    for precision in precs:
                        why = _plan(prep, target, precision, precs, bool(cal_feeds), _is_transformer(metadata),
                                    _is_stateful(prep, metadata))
                        if why:
                            report.artifacts.append(ArtifactReport(target, precision, format=FORMAT_OF[target].value,
                                                                   status="skipped", reason=why))
                if report.artifacts:  # none planned to be skipped: build them all
                    _finish_or_raise(report, strict)
            sources.copy_files(prep, staging)
            built = _build_all(prep, targets, precs, staging, work, metadata, cal_feeds, chk.feeds, refs, report, say)
            if built:
                inputs = count(len(chk.feeds), "input") if chk.batch == 1 else \
                    f"{count(len(chk.feeds), 'batch', 'batches')} of {chk.batch}"
                say(f"checking {count(len(built), 'artifact')} on {inputs} against {prep.reference_label}")
                checks.check(built, chk.feeds, refs, prep.output_names,
                             classifier=metadata.get("task") in checks.CLASSIFIER_TASKS,
                             min_cosine=min_cosine, timing_feed=chk.feeds[0],
                             layouts=prep.layouts, progress=say)
            report.seconds = round(time.perf_counter() - t_start, 1)
            _stop_if_interrupted()  # swallowed in a step that did not fail (checks, say): publish nothing
            _finish_or_raise(report, strict)
            shutil.rmtree(work)
            manifest = _manifest(metadata, prep, report, min_cosine)
            package.publish(staging, out_dir, manifest)
            report.written = True
            for a in report.artifacts:  # publish measured them
                a.size = next((e["size"] for e in manifest["artifacts"] if e["path"] == a.path), a.size)
            say(f"wrote {out_dir} ({sum(a.ok for a in report.artifacts)} of "
                f"{count(len(report.artifacts), 'artifact')} ok)")
            return report
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_interrupted = threading.Event()
_interruption: list[type[BaseException]] = [KeyboardInterrupt]  # what the signal raised


@contextlib.contextmanager
def _interrupts_noted():
    """Ctrl-C as usual, but remembered: a KeyboardInterrupt raised inside a runtime's own code can
    come out as another error (pybind11 turned one during OpenVINO's module setup into ImportError
    "initialization failed", and the conversion went on), which :func:`_failed` must not swallow.
    So is SIGTERM where a handler of the caller's turns it into an exception (the CLI's does)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is not signal.default_int_handler:
        yield  # a worker thread cannot take signals; an ignored or custom SIGINT is the caller's choice
        return
    on_term = signal.getsignal(signal.SIGTERM)

    def note(signum, frame):
        if signum == signal.SIGTERM:
            try:
                on_term(signum, frame)
            except BaseException as e:
                _interrupted.set()
                _interruption[0] = type(e)
                raise
            return
        _interrupted.set()
        _interruption[0] = KeyboardInterrupt
        raise KeyboardInterrupt

    _interrupted.clear()
    signal.signal(signal.SIGINT, note)
    if callable(on_term):
        signal.signal(signal.SIGTERM, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if callable(on_term):
            signal.signal(signal.SIGTERM, on_term)
        _interrupted.clear()


def _stop_if_interrupted(cause: BaseException | None = None) -> None:
    if _interrupted.is_set() and threading.current_thread() is threading.main_thread():
        raise _interruption[0] from cause


def _failed(rep, dst: Path, e: Exception) -> None:
    """Mark ``rep`` failed by ``e``, unless the user interrupted: then stop, as Ctrl-C should."""
    _stop_if_interrupted(e)
    _remove(dst)
    rep.status, rep.reason, rep.path = "failed", f"conversion failed: {one_line(e)}", None


def _progress(progress, t0: float):
    def say(line: str) -> None:
        log.info("%s", line)
        if progress is not None:
            progress(f"[{time.perf_counter() - t0:6.1f}s] {line}")

    return say


def check_preprocess(preprocess: dict | None) -> None:
    """Refuse pre-processing a package would be refused with, or would ignore, before any work: a
    resize of -3 made a package its tasks refused, and {"img": ...} was silently unused."""
    from edgekit.tasks import audio, image

    if not preprocess:
        return
    if not isinstance(preprocess, dict) or not all(isinstance(v, dict) for v in preprocess.values()):
        raise UsageError('preprocess must map a kind to settings, e.g. {"image": {"crop": 224}}')
    known = {"image": image.PREPROCESS_KEYS, "audio": audio.PREPROCESS_KEYS, "text": ("tokenizer", "max_length")}
    for kind, values in preprocess.items():
        if kind not in known:
            raise UsageError(f"preprocess: unknown kind {kind!r} (image, audio or text)")
        unknown = sorted(set(values) - set(known[kind]))
        if unknown:
            raise UsageError(f"preprocess.{kind}: unknown key {unknown[0]!r} (known: {', '.join(known[kind])})")
    if "image" in preprocess:
        image.check_preprocess(preprocess["image"], "preprocess")
    if "audio" in preprocess:
        audio.check_audio_preprocess(preprocess["audio"], "preprocess")
    text = preprocess.get("text") or {}
    if "tokenizer" in text and not (isinstance(text["tokenizer"], str) and text["tokenizer"]):
        raise UsageError(f"preprocess.text: tokenizer {text['tokenizer']!r} is not a file name")
    length = text.get("max_length")
    if length is not None and not (isinstance(length, int) and not isinstance(length, bool) and length > 0):
        raise UsageError(f"preprocess.text: max_length {length!r} is not a positive whole number")


def _metadata(prep, name, task, labels, preprocess) -> dict:
    meta = dict(prep.metadata)
    meta["name"] = name or meta.get("name") or prep.name
    if task:
        meta["task"] = task
    if labels is not None:
        meta["labels"] = labels
    if preprocess:
        merged = dict(meta.get("preprocess") or {})
        for kind, values in preprocess.items():
            merged[kind] = {**(merged.get(kind) or {}), **values}
        meta["preprocess"] = merged
    if meta.get("task") in ("image-classification", "text-classification") and meta.get("labels") is None:
        log.info("no labels given: results will show class indices")
    # The source's inputs and outputs, which hold for every artifact: IR and TFLite lose the dims' names,
    # a TFLite file may order its inputs and lay out its outputs otherwise.
    meta["inputs"] = [s.to_dict() for s in prep.inputs]
    if prep.onnx is not None:
        meta["outputs"] = sources.onnx_outputs(prep.onnx)
    return meta


def _load_data(spec, prep, metadata, what, say):
    if spec is None:
        return None
    samples = calib.load(spec, prep.inputs, metadata, package_dir=prep.package_dir, what=what)
    say(f"{what}: {samples}")
    return samples


def _constant_outputs(names: list[str], refs: list[list[np.ndarray]]) -> list[str]:
    """The outputs that hold one value over every check input (all zeros, say): a parity check can
    only compare such an output with itself."""
    out = []
    for k, name in enumerate(names):
        values = [np.ravel(np.asarray(r[k])) for r in refs if k < len(r)]
        values = np.concatenate(values) if values else np.empty(0)
        if values.size and (values == values[0]).all():
            out.append(name)
    return out


def _check_samples(check, cal, prep, metadata, say):
    if check is not None:
        return _load_data(check, prep, metadata, "check", say)
    if cal is not None:
        return calib.Samples(calib.subset(cal.feeds, MAX_CHECK), f"{cal.source} (the calibration data)",
                             kind=cal.kind, batch=cal.batch)
    if prep.example is not None:  # random token ids mean nothing; the export's own example does
        return calib.Samples([prep.example], "the export's example inputs", kind="example")
    say(f"no calibration or check data: checking parity on {RANDOM_CHECK} random inputs")
    warmup = {**_crop_shapes(prep, metadata), **(metadata.get("warmup_inputs") or {})}
    # Integers of 1 where the source takes them: 0 can hide everything (y = x * k is 0, TopK's k = 0
    # asks for nothing), but an index into a one-row table takes only 0.
    samples = calib.random_samples(prep.inputs, RANDOM_CHECK, warmup, integer=1)
    if any(s.dtype.kind in "iu" for s in prep.inputs):
        try:
            ok = all(np.isfinite(np.asarray(y, np.float64)).all() for y in prep.reference(samples.feeds[0])
                     if np.asarray(y).dtype.kind in "fiub")
        except Exception:
            ok = False
        if not ok:
            samples = calib.random_samples(prep.inputs, RANDOM_CHECK, warmup)
    return samples


def _crop_shapes(prep, metadata: dict) -> dict:
    """Random check images of the size the package's image pre-processing crops to, where the model
    leaves height and width open: at 1x1 they check little, and TFLite would be frozen at that size."""
    image = (metadata.get("preprocess") or {}).get("image") or {}
    crop = image.get("crop") or image.get("size")  # as the image task reads them
    if isinstance(crop, int):
        crop = [crop, crop]
    if not (isinstance(crop, (list, tuple)) and len(crop) == 2 and all(isinstance(c, int) and c > 0 for c in crop)):
        return {}
    shapes = {}
    for spec in prep.inputs:
        if spec.shape is None or len(spec.shape) != 4 or spec.layout not in ("NCHW", "NHWC"):
            continue
        hw = (2, 3) if spec.layout == "NCHW" else (1, 2)
        if any(isinstance(spec.shape[i], int) for i in hw):
            continue
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        shape[hw[0]], shape[hw[1]] = crop  # [height, width]
        shapes[spec.name] = {"shape": shape}
    return shapes


def _int8_is_dynamic(prep, target: str, transformer: bool, stateful: bool) -> bool:
    """Whether this target's int8 recipe for this model is weights-only (then the same as int8-dynamic).

    Streaming models (a state input) are weights-only on every target: see the targets' STATEFUL_INT8.
    """
    return (stateful or (target == "onnx" and transformer)
            or (target == "tflite" and tflite_target.dynamic_int8(prep.inputs) is not None))


def _plan(prep, target: str, precision: str, precisions: list[str], has_calibration: bool,
          transformer: bool, stateful: bool) -> str | None:
    """Why this artifact cannot be made from this source (None: it can)."""
    dynamic = _int8_is_dynamic(prep, target, transformer, stateful)
    if precision == "int8-dynamic" and dynamic and "int8" in precisions:
        return "the same file as int8 for this model (its int8 recipe is dynamic)"
    if precision == "int8" and not has_calibration and not dynamic:
        return ("int8 needs calibration data (images, audio, a .txt of lines or .npy/.npz), or ask for "
                "int8-dynamic (weights only, no calibration)")
    if prep.onnx is not None:
        return None
    if prep.native_format is Format.TFLITE:
        if target == "onnx":
            return "a TFLite source does not convert to ONNX here (no TFLite-to-ONNX converter is installed)"
        if target == "tflite" and precision != "fp32":
            return "re-quantizing a TFLite file needs its TensorFlow model: convert from ONNX or PyTorch instead"
    if prep.native_format is Format.OPENVINO and target != "openvino":
        return "OpenVINO IR converts only to OpenVINO IR (no IR-to-ONNX/TFLite converter exists)"
    return None


def _build_all(prep, targets, precs, staging, work, metadata, cal_feeds, chk_feeds, refs, report, say):
    built: list[tuple[ArtifactReport, Path]] = []
    for target in targets:
        todo = []
        for precision in precs:
            rep = ArtifactReport(target, precision, format=FORMAT_OF[target].value)
            report.artifacts.append(rep)
            why = _plan(prep, target, precision, precs, bool(cal_feeds), _is_transformer(metadata),
                        _is_stateful(prep, metadata))
            if why:
                rep.status, rep.reason = "skipped", why
                say(f"{target} {precision}: skipped ({why})")
            else:
                rep.path = f"model-{precision}{SUFFIX[target]}"
                rep.layout = _layout(prep, target, metadata)
                todo.append(rep)
        if not todo:
            continue
        if target == "tflite":
            unsized = [] if report.check.get("kind") != "random" else _unsized_dims(prep, metadata, chk_feeds[0])
            if unsized:
                for rep in todo:
                    rep.status, rep.path = "skipped", None
                    rep.reason = (f"TFLite needs static sizes and {', '.join(unsized)} would be fixed at 1: "
                                  f"give check or calibration data of the size to run at")
                say(f"tflite: skipped ({todo[0].reason})")
                continue
            built += _build_tflite(prep, todo, staging, work, metadata, cal_feeds, chk_feeds, refs, say)
            continue
        for rep in todo:
            say(f"{target} {rep.precision}: converting")
            t0 = time.perf_counter()
            dst = staging / rep.path
            entry = rep.manifest_entry()
            try:
                if target == "onnx":
                    rep.recipe = onnx_target.build(prep.onnx, rep.precision, dst, cal_feeds,
                                                   transformer=_is_transformer(metadata),
                                                   stateful=_is_stateful(prep, metadata))
                    cards.embed(dst, Format.ONNX, cards.make(metadata, entry))
                else:
                    src = prep.onnx if prep.onnx is not None else prep.native
                    rep.recipe = openvino_target.build(src, rep.precision, dst, cal_feeds, cards.make(metadata, entry),
                                                       transformer=_is_transformer(metadata),
                                                       stateful=_is_stateful(prep, metadata),
                                                       channels_last=_channels_last_inputs(prep, metadata))
            except Exception as e:
                _failed(rep, dst, e)
                say(f"{target} {rep.precision}: failed ({rep.reason})")
                continue
            rep.seconds = round(time.perf_counter() - t0, 1)
            built.append((rep, dst))
    return built


def _is_transformer(metadata: dict) -> bool:
    """Text models here are transformers; their int8 recipes differ from a CNN's (see the targets)."""
    return str(metadata.get("task", "")).startswith("text")


def _is_stateful(prep, metadata: dict) -> bool:
    """A streaming model that takes its own state back (Silero VAD's ``state`` in, ``stateN`` out, of
    one shape): int8 is weights-only. A batch off the first axis alone is not a state: a
    sequence-first input ([10, 1, 8], PyTorch's RNN layout) is data, and was given weights-only int8."""
    states = calib.state_inputs(prep.inputs)
    outputs = [o["shape"] for o in metadata.get("outputs") or [] if o.get("shape") is not None]
    if not states or not outputs:  # no output shapes (a TFLite or IR source): the input's layout alone
        return bool(states)
    return any(_alike(s.shape, out) for s in prep.inputs if s.name in states for out in outputs)


def _alike(a, b) -> bool:
    """Shapes of one rank whose sizes agree wherever both are known."""
    return len(a) == len(b) and all(x == y or not isinstance(x, int) or not isinstance(y, int) for x, y in zip(a, b))


def _unsized_dims(prep, metadata: dict, sample: dict) -> list[str]:
    """The open non-batch input dims a TFLite copy would fix at 1 from random check inputs (no data,
    no warm-up shape, no text length): "input 'image' dims 2, 3"."""
    if ((metadata.get("preprocess") or {}).get("text") or {}).get("max_length"):
        return []
    out = []
    for spec in prep.inputs:
        x = sample.get(spec.name)
        if spec.shape is None or x is None or x.ndim != len(spec.shape):
            continue
        batch = calib.batch_axis(spec)  # Silero's state [2, batch, 128] has it at 1
        dims = [str(i) for i, d in enumerate(spec.shape) if i != batch and not isinstance(d, int) and x.shape[i] == 1]
        if dims:
            out.append(f"input {spec.name!r} dim{'s' if len(dims) > 1 else ''} {', '.join(dims)}")
    return out


def _layout(prep, target: str, metadata: dict) -> str | None:
    spec = prep.inputs[0] if prep.inputs else None
    if spec is None or spec.shape is None or len(spec.shape) != 4:
        return None
    if target == "tflite" and prep.onnx is not None:
        return "NHWC"  # onnx2tf moves channels last
    if target == "openvino" and spec.name in _channels_last_inputs(prep, metadata):
        return "NHWC"
    return spec.layout


def _channels_last_inputs(prep, metadata: dict) -> tuple[str, ...]:
    """The inputs an IR made from ONNX takes channels last: the lone NCHW input (1 or 3 channels)
    of an image model (its task or pre-processing says so), as the TFLite artifacts take it (see
    openvino_target._channels_last). Other models keep their source's layout: a log-mel input
    [N, 1, mels, frames] is not a picture."""
    image = metadata.get("task") == "image-classification" or (metadata.get("preprocess") or {}).get("image")
    if not image or prep.onnx is None or len(prep.inputs) != 1:
        return ()
    spec = prep.inputs[0]
    if spec.layout == "NCHW" and spec.shape[1] in (1, 3) and np.dtype(spec.dtype).kind in "fu":
        return (spec.name,)
    return ()


def _build_tflite(prep, todo, staging, work, metadata, cal_feeds, chk_feeds, refs, say):
    precisions = [r.precision for r in todo]
    t0 = time.perf_counter()
    if prep.onnx is None:  # a TFLite source: fp32 is the file itself
        rep = todo[0]
        dst = staging / rep.path
        shutil.copy(prep.native, dst)
        cards.embed(dst, Format.TFLITE, cards.make(metadata, rep.manifest_entry()))
        rep.recipe, rep.layout = "the source file", prep.inputs[0].layout
        return [(rep, dst)]
    say(f"tflite {','.join(precisions)}: converting with onnx2tf (one run, TensorFlow starts first)")
    try:
        # TFLite wants static shapes: batch 1, and a text model's sequence at its token limit
        length = (metadata.get("preprocess") or {}).get("text", {}).get("max_length")
        found = tflite_target.run_onnx2tf(prep.onnx, work / "onnx2tf", prep.inputs, precisions, cal_feeds, chk_feeds,
                                          length)
    except Exception as e:
        for rep in todo:
            rep.status, rep.reason, rep.path = "failed", one_line(e), None
        say(f"tflite: failed ({one_line(e)})")
        return []
    built = []
    for rep in todo:
        src = found.get(rep.precision)
        if src is None:
            rep.status, rep.reason, rep.path = "failed", "onnx2tf wrote no file for this precision", None
            continue
        dst = staging / rep.path
        try:
            tflite_target.finish(src, dst, [s.name for s in prep.inputs], prep.output_names, refs[0], chk_feeds[0],
                                 cards.make(metadata, rep.manifest_entry()),
                                 layouts=prep.layouts)
        except Exception as e:
            _failed(rep, dst, e)
            continue
        rep.recipe = tflite_target.recipe(rep.precision, prep.inputs)
        rep.seconds = round(time.perf_counter() - t0, 1)
        built.append((rep, dst))
    return built


def _finish_or_raise(report: ConversionReport, strict: bool) -> None:
    bad = [a for a in report.artifacts if not a.ok]
    if strict and bad:
        by_reason: dict[tuple, list[str]] = {}  # one reason once, with the artifacts it holds for
        for a in bad:
            by_reason.setdefault((a.status, a.reason), []).append(f"{a.target} {a.precision}")
        what = "; ".join(f"{', '.join(names)}: {status} ({reason})" for (status, reason), names in by_reason.items())
        raise ConversionError(f"--strict: {count(len(bad), 'artifact')} not ok, nothing written: {what}", report)
    if not any(a.ok for a in report.artifacts):
        what = "; ".join(f"{a.target} {a.precision}: {a.reason}" for a in report.artifacts)
        raise ConversionError(f"no usable artifact, nothing written: {what}", report)


def _manifest(metadata: dict, prep, report: ConversionReport, min_cosine: float | None) -> dict:
    manifest = dict(metadata)
    manifest["artifacts"] = [a.manifest_entry() for a in report.artifacts if a.path]
    manifest["conversion"] = {
        "source": prep.label, "source_kind": prep.kind, "reference": prep.reference_label,
        "edgekit": __version__, "tools": _tool_versions(), "host": report.host, "host_id": cpu_id(),
        "calibration": report.calibration, "check": report.check,
        "min_cosine": {p: min_cosine if min_cosine is not None else MIN_COSINE[p]
                       for p in dict.fromkeys(a.precision for a in report.artifacts)},
        "seconds": report.seconds, "notes": prep.notes,
        "not_produced": [{"target": a.target, "precision": a.precision, "status": a.status, "reason": a.reason}
                         for a in report.artifacts if not a.path],
    }
    return manifest


def _tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "onnx2tf", "tensorflow", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _remove(path: Path) -> None:
    for p in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
        if p.exists():
            p.unlink()
