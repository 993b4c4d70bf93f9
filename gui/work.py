"""What the app's buttons do, as plain functions that run in a job: each calls edgekit or
the converter and returns a result object for a widget to draw. No Qt, no model logic.

    result = run_image(loaded, "cat.jpg", top_k=5)      # ImageResult(categories, latency_ms, ...)
    rows = benchmark(candidates, iterations=50, progress=job.progress)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import UsageError

from .state import Loaded

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, text: str = "") -> None:
    """For callers without a job (scripts, the Qt-free session)."""


def throttled(progress: Progress, every_s: float = 0.05) -> Progress:
    """``progress`` at most every ``every_s`` seconds, and at the end: a loop may report every step
    (a VAD window is 0.1 ms) and the window still gets only ~20 updates a second. In a job the
    progress callback is also the cancellation point, so Cancel lands within ``every_s`` too."""
    last = 0.0

    def report(done: int, total: int, text: str = "") -> None:
        nonlocal last
        now = time.perf_counter()
        if done >= total or now - last > every_s:
            last = now
            progress(done, total, text)

    return report


# --- running a task ------------------------------------------------------------------------

@dataclass
class ImageResult:
    image: Path
    categories: list  # edgekit.tasks.Category
    latency_ms: float
    where: str


@dataclass
class TextResult:
    texts: list[str]
    latency_ms: float
    where: str
    similarity: np.ndarray | None = None  # n x n cosine similarity (embedders)
    categories: list[list] = field(default_factory=list)  # per text (classifiers, zero-shot)
    zero_shot: bool = False  # categories scored by cosine similarity to each label


@dataclass
class AudioResult:
    audio: str
    duration_s: float
    envelope: np.ndarray  # k x 2 (min, max) of the mono waveform, for drawing
    latency_ms: float
    where: str
    segments: list | None = None  # edgekit.tasks.Segment (voice activity)
    categories: list | None = None  # clip classifiers


@dataclass
class OutputSummary:
    name: str
    shape: tuple
    dtype: str
    stats: dict  # min, max, mean, std
    head: list  # the first values


@dataclass
class GenericResult:
    inputs: dict[str, str]  # input name -> where it came from
    outputs: list[OutputSummary]
    latency_ms: float
    where: str


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - t0) * 1e3


def run_image(loaded: Loaded, image: str | Path, *, top_k: int = 5) -> ImageResult:
    cats, ms = _timed(lambda: loaded.task.classify(image, top_k=top_k))
    return ImageResult(Path(image), cats, ms, loaded.where)


def run_text(loaded: Loaded, texts: Sequence[str], *, labels: Sequence[str] = (), top_k: int = 5,
             progress: Progress = no_progress) -> TextResult:
    """Embedders: the similarity of every pair of lines, or zero-shot over ``labels``.
    Classifiers: label scores per line. ``progress`` is called between batches of lines; what it
    raises stops the run."""
    from edgekit.errors import InputError
    from edgekit.tasks import TextClassifier, TextEmbedder

    texts = [t for t in (s.strip() for s in texts) if t]
    if not texts:
        raise InputError("no text: type one or more lines")
    task = loaded.task
    report = throttled(progress)

    def lines_done(done: int, total: int) -> None:
        report(done, total, f"{done} of {total} lines")

    if isinstance(task, TextEmbedder) and labels:
        key = ("zero-shot", tuple(labels))
        if key not in loaded.cache:  # embedding the labels once, not in every run's latency
            loaded.cache[key] = TextClassifier(loaded.model, labels=list(labels))
        zero_shot = loaded.cache[key]
        cats, ms = _timed(lambda: zero_shot.classify(texts, top_k=top_k, progress=lines_done))
        return TextResult(texts, ms, loaded.where, categories=cats, zero_shot=True)
    if isinstance(task, TextEmbedder):
        vecs, ms = _timed(lambda: task.embed(texts, progress=lines_done))  # unit vectors: dot products are cosines
        return TextResult(texts, ms, loaded.where, similarity=vecs @ vecs.T)
    cats, ms = _timed(lambda: task.classify(texts, top_k=top_k, progress=lines_done))
    return TextResult(texts, ms, loaded.where, categories=cats)


def run_audio(loaded: Loaded, audio, sample_rate: int | None = None, *, name: str | None = None,
              top_k: int = 5, progress: Progress = no_progress) -> AudioResult:
    """Voice activity (segments) or clip classification of a file or an array at ``sample_rate``.
    ``progress`` is called between VAD windows (seconds of audio done); what it raises stops the run."""
    from edgekit.tasks import VoiceActivityDetector
    from edgekit.tasks.audio import load_audio

    task = loaded.task
    rate = int(getattr(task, "sample_rate", 16000))
    x = load_audio(audio, sample_rate, target_rate=rate, name=name)
    label = name or str(audio)
    if isinstance(task, VoiceActivityDetector):
        report, seconds = throttled(progress), len(x) / rate

        def windows_done(done: int, total: int) -> None:
            report(done, total, f"{done / total * seconds:.0f} of {seconds:.0f} s")

        segs, ms = _timed(lambda: task.detect(x, rate, progress=windows_done))
        return AudioResult(label, len(x) / rate, envelope(x), ms, loaded.where, segments=segs)
    cats, ms = _timed(lambda: task.classify(x, rate, top_k=top_k))
    return AudioResult(label, len(x) / rate, envelope(x), ms, loaded.where, categories=cats)


def envelope(x: np.ndarray, points: int = 1200) -> np.ndarray:
    """Min and max of ``x`` over ``points`` equal slices: a waveform a widget can draw at any width."""
    if len(x) == 0:
        return np.zeros((0, 2), np.float32)
    points = min(points, len(x))
    edges = np.linspace(0, len(x), points + 1).astype(int)
    return np.stack([np.minimum.reduceat(x, edges[:-1]), np.maximum.reduceat(x, edges[:-1])], axis=1)


def run_generic(loaded: Loaded, files: dict[str, str | None]) -> GenericResult:
    """Run a model without a task: each input from a .npy file, or synthetic where none is given."""
    from edgekit.bench import synthetic_inputs, warmup_sizes

    model = loaded.model
    synthetic = synthetic_inputs(model.inputs, warmup=warmup_sizes(model))  # a package's lone file too
    feeds, came_from = {}, {}
    for spec in model.inputs:
        path = files.get(spec.name)
        if path:
            feeds[spec.name] = _array_for(Path(path), spec.name)
            came_from[spec.name] = Path(path).name
        else:
            feeds[spec.name] = synthetic[spec.name]
            came_from[spec.name] = "synthetic " + "x".join(map(str, feeds[spec.name].shape))
    out, ms = _timed(lambda: model.run(feeds))
    return GenericResult(came_from, [summarize(k, v) for k, v in out.items()], ms, loaded.where)


def _array_for(path: Path, name: str) -> np.ndarray:
    """Input ``name`` from a .npy file, or from a .npz holding an array of that name (or just one)."""
    from edgekit.errors import InputError

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot be read as a NumPy array for input {name!r} ({e})") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        return data
    with data:
        names = list(data.files)
        key = name if name in names else names[0] if len(names) == 1 else None
        if key is None:
            raise InputError(f"{path}: holds the arrays {names}, none named {name!r} (the input)")
        return data[key]


def summarize(name: str, a: np.ndarray, head: int = 8) -> OutputSummary:
    a = np.asarray(a)
    flat = a.reshape(-1)
    if a.dtype.kind in "fiub" and flat.size:
        f = flat.astype(np.float64)
        stats = {"min": float(f.min()), "max": float(f.max()), "mean": float(f.mean()), "std": float(f.std())}
    else:
        stats = {}
    return OutputSummary(name, tuple(a.shape), str(a.dtype), stats, flat[:head].tolist())


# --- benchmark -------------------------------------------------------------------------------

@dataclass
class Candidate:
    """One artifact on one device, as the Benchmark page lists it."""

    artifact: Path
    device: str  # "backend:device"
    label: str  # "model-int8.xml on openvino:CPU"


@dataclass
class BenchRow:
    label: str
    artifact: str
    device: str
    status: str  # "ok" | "failed" | "cancelled"
    reason: str = ""
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None  # runs per second at batch 1
    inputs: str = ""  # the sizes it was timed at: "input_ids 1x256, ..."


def candidates(path) -> tuple[list[Candidate], list[str]]:
    """What `edgekit bench --all-devices` measures: every artifact on every device that can run it,
    best-ranked first (package checksums verified), and why any artifact was left out (a checksum
    mismatch, a missing file). Slow for big packages: call it in a job."""
    from edgekit.bench import targets

    problems: list[str] = []
    found = [Candidate(Path(file), spec, f"{Path(file).name} on {spec}") for file, spec in targets(path, problems)]
    return found, problems


def benchmark(chosen: Sequence[Candidate], *, iterations: int, warmup: int = 3, progress: Progress) -> list[BenchRow]:
    """Time each candidate for ``iterations`` runs on synthetic inputs (``edgekit.bench.bench_model``).

    A failure is a row, not an error. When ``progress`` raises (the user cancelled), the rows
    measured so far come back, with the interrupted one marked "cancelled".
    """
    from edgekit.bench import bench_model, target_sizes
    from edgekit.errors import EdgekitError

    rows, total = [], len(chosen) * iterations
    tick = throttled(progress)
    progress(0, total, "reading the artifacts' input sizes")  # the package's, as `edgekit bench` times them
    try:
        sizes = target_sizes([(c.artifact, c.device) for c in chosen])
    except Exception as e:  # noqa: BLE001 - each is then timed at its own sizes, as the CLI does
        log.warning("each artifact is timed at its own input sizes (reading them all failed: %s)", e)
        sizes = {}

    for i, cand in enumerate(chosen):
        base = i * iterations
        try:
            progress(base, total, f"loading {cand.label}")
            row = bench_model(str(cand.artifact), cand.device, precision=None, runs=iterations, warmup=warmup,
                              sizes=sizes.get(str(cand.artifact)),
                              progress=lambda done, n, b=base, c=cand: tick(b + done, total, c.label))
        except EdgekitError as e:
            rows.append(BenchRow(cand.label, cand.artifact.name, cand.device, "failed", str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - the job's cancellation, or a runtime's own error
            if type(e).__name__ != "Cancelled":
                rows.append(BenchRow(cand.label, cand.artifact.name, cand.device, "failed", f"{type(e).__name__}: {e}"))
                continue
            rows.append(BenchRow(cand.label, cand.artifact.name, cand.device, "cancelled", "cancelled by the user"))
            return rows
        rows.append(BenchRow(cand.label, cand.artifact.name, cand.device, "ok", "", row["p50_ms"], row["p90_ms"],
                             row["p99_ms"], row["throughput_per_s"],
                             ", ".join(f"{name} {'x'.join(map(str, shape)) or 'scalar'}"
                                       for name, shape in row["inputs"].items())))
    progress(total, total, "done")
    return rows


def bench_csv(rows: Sequence[BenchRow], model: str | Path = "") -> str:
    """The rows as CSV, each naming ``model`` (its path), so that exports of several models can be
    put together."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "artifact", "device", "status", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "inputs",
                "reason"])
    for r in rows:
        w.writerow([str(model), r.artifact, r.device, r.status, *(f"{v:.4f}" if v is not None else "" for v in
                                                                  (r.p50_ms, r.p90_ms, r.p99_ms, r.throughput)),
                    r.inputs, r.reason])
    return buf.getvalue()


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file beside it and a rename: never
    half-written. A link is written through (its target changes, the link stays); a file that exists
    keeps its permission bits, a new one gets what ``open()`` gives (0666 less the umask).

    Raises:
        ExportError (a UsageError and an OSError): ``path`` cannot be written; the message names it
        and says why.
    """
    import os
    import stat
    import tempfile

    chosen = Path(path)
    target = Path(os.path.realpath(chosen))  # through links; a dangling link's target is created
    folder = target.parent
    if target.is_dir():
        raise ExportError(f"{chosen}: it is a folder; choose a file name inside it")
    if not folder.exists():
        raise ExportError(f"{chosen}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise ExportError(f"{chosen}: {folder} is a file, not a folder")
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise ExportError(f"{chosen}: cannot write it there ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ExportError(f"{chosen}: cannot write it ({e.strerror or e})") from e
        raise


class ExportError(UsageError, OSError):
    """A file the app cannot write: shown in a dialog as it is, and an OSError for code that catches those."""


def _umask() -> int:
    import os

    mask = os.umask(0o022)  # reading it means setting it
    os.umask(mask)
    return mask


# --- building a sample ---------------------------------------------------------------------

def build_sample(kind: str, out: Path | None, *, progress: Progress, cancelled: Callable[[], bool]) -> str | None:
    """``edgekit samples build --only KIND`` in a child process (PyTorch's and TensorFlow's imports
    would freeze the window); its step lines are the progress. Returns the package path, or None
    when cancelled (the child is interrupted and removes its temporary folder)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import threading

    from edgekit.errors import BackendError

    cmd = [sys.executable, "-m", "edgekit", "samples", "build", "--only", kind, "--json"]
    if out is not None:
        cmd += ["--out", str(out)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []

    def watch() -> None:  # stop the child when the user cancels, even while it prints nothing
        while child.poll() is None:
            if cancelled():
                child.send_signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM)
                return
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    for line in child.stderr:
        tail = (tail + [line.rstrip()])[-20:]
        progress(0, 0, line.strip())
    stdout = child.stdout.read()
    if child.wait() != 0:
        if cancelled():
            return None
        raise BackendError(f"building the {kind} sample failed: " + (tail[-1] if tail else f"exit {child.returncode}"))
    return json.loads(stdout)["samples"][0]["path"]


# --- converting --------------------------------------------------------------------------

@dataclass
class ConvertOptions:
    source: str
    out: str
    targets: list[str]
    precisions: list[str]
    calibration: str | None = None


def package_folder_in(folder: Path, source: str) -> Path:
    """Where a package goes when a person picks ``folder`` for it: the folder itself when it is empty
    or an edgekit package (replaced), else a new ``<source>-edgekit`` folder inside it (numbered when
    taken), since the converter refuses to replace a folder of other files."""
    from edgekit.formats import MANIFEST

    if (folder / MANIFEST).is_file() or (folder.is_dir() and not any(folder.iterdir())):
        return folder
    stem = Path(source).stem if source else "model"
    for n in range(1, 1000):
        candidate = folder / (f"{stem}-edgekit" if n == 1 else f"{stem}-edgekit-{n}")
        if not candidate.exists():
            return candidate
    return folder / f"{stem}-edgekit-{time.time_ns()}"


def convert(options: ConvertOptions, *, progress: Progress, cancelled: Callable[[], bool] = lambda: False):
    """Run the converter in a child process; each of its step lines is a progress step.

    A child process, because TensorFlow's and NNCF's imports hold the GIL for hundreds of
    milliseconds and would freeze the window. Cancelling (closing the window too) stops the child
    at once with SIGTERM: the converter then removes its temporary folder and ends onnx2tf, so
    nothing half-written is left.

    Returns:
        The ConversionReport, or None when cancelled.

    Raises:
        The converter's error (ConversionError with ``.report``, UsageError, ...), with the
        child's traceback as ``.details``.
    """
    import multiprocessing
    import queue as queues

    from edgekit.errors import BackendError

    ctx = multiprocessing.get_context("spawn")
    messages, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_convert_in_child, args=(options, messages, stop), daemon=True,
                        name="edgekit-convert")
    child.start()
    total, done = expected_steps(options), 0
    progress(0, total, f"starting the converter for {Path(options.source).name}")
    try:
        while True:
            try:
                kind, payload = messages.get(timeout=0.1)
            except queues.Empty:
                if cancelled() and not stop.is_set():
                    stop.set()
                    # SIGTERM now, not at the next step (onnx2tf alone runs for minutes): the converter
                    # removes what it had started writing, its own child with it, and says so
                    child.terminate()
                if not child.is_alive() and messages.empty():
                    if stop.is_set():  # stopped before it could say so (SIGTERM while it started)
                        return None
                    raise BackendError(f"the converter process ended unexpectedly (exit code {child.exitcode})"
                                       ) from None
                continue
            if kind == "progress":
                done += 1
                progress(min(done, total - 1), total, payload)
            elif kind == "result":
                progress(total, total, f"wrote {options.out}")
                return payload
            elif kind == "cancelled":
                return None
            else:
                raise _rebuilt(*payload)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()


def _convert_in_child(options: ConvertOptions, messages, stop) -> None:
    import signal
    import traceback

    from converters import convert as run_converter

    class Stop(BaseException):
        pass

    def stopped(signum, frame) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, stopped)

    def step(line: str) -> None:
        if stop.is_set():
            raise Stop
        messages.put(("progress", line))

    class Warnings(logging.Handler):
        """The converter's warnings (a skipped calibration file, a guessed pre-processing) went to
        the terminal the app was started from: they are step lines of the page's log too."""

        def emit(self, record: logging.LogRecord) -> None:
            messages.put(("progress", f"warning: {record.getMessage()}"))

    logging.getLogger("edgekit").addHandler(Warnings(logging.WARNING))

    try:
        report = run_converter(options.source, to=options.targets, precisions=options.precisions,
                               calibration=options.calibration or None, out=options.out, progress=step)
        messages.put(("result", report))
    except Stop:
        messages.put(("cancelled", None))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the window
        messages.put(("error", (type(e).__name__, str(e), getattr(e, "report", None), traceback.format_exc())))


def _rebuilt(name: str, message: str, report, details: str) -> Exception:
    """The child's exception, as the same edgekit error class where there is one."""
    from edgekit import errors

    if report is not None:
        from converters.conversion import ConversionError

        exc = ConversionError(message, report)
    else:
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.EdgekitError)):
            exc = RuntimeError(f"{name}: {message}")
        else:
            try:
                exc = cls(message)
            except TypeError:  # a class with more constructor arguments (ModelFileError)
                exc = (errors.UsageError if issubclass(cls, errors.UsageError) else errors.BackendError)(message)
    exc.details = details
    return exc


def expected_steps(options: ConvertOptions) -> int:
    """About how many progress lines a conversion prints (reading, data, one build and one check
    per artifact, writing); the bar uses it as its length."""
    n = len(options.targets) * len(options.precisions)
    return 4 + 2 * n + (1 if options.calibration else 0)
