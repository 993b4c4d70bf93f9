"""The desktop app's state in plain Python: what is open, on which device, and what it said.

    session = Session(settings={})
    session.model_changed.connect(lambda loaded: ...)
    session.set_loaded(open_model("efficientnet-lite0/", "auto"))   # open_model runs in a job

Widgets mirror this object (napari's model/view split): tests drive it without a window,
and nothing here imports Qt. Every computation goes through edgekit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

MODEL_SUFFIXES = (".onnx", ".xml", ".tflite")
MAX_RECENT = 10


class Event:
    """Callbacks called with the emitted value, in the order connected."""

    def __init__(self) -> None:
        self._callbacks: list[Callable] = []

    def connect(self, callback: Callable) -> None:
        self._callbacks.append(callback)

    def emit(self, *args) -> None:
        for callback in list(self._callbacks):
            callback(*args)


@dataclass
class ModelInfo:
    """What the Model page shows about an opened file or package."""

    path: Path
    name: str
    is_package: bool
    format: str  # of the artifact that runs
    size_bytes: int
    task: str | None
    labels: list[str] | None
    inputs: list  # TensorSpec
    outputs: list
    artifacts: list[dict] = field(default_factory=list)  # package artifacts: path, format, precision, ...
    description: str = ""
    facts: dict = field(default_factory=dict)  # format-level facts of a lone file (opsets, producer, ...)


@dataclass
class Loaded:
    """A model opened on a device, with its task object when the package declares one."""

    info: ModelInfo
    model: object  # edgekit.Model
    task: object | None  # edgekit.tasks.Task
    device: str  # what was asked for
    load_ms: float
    cache: dict = field(default_factory=dict)  # per-model objects the runs reuse (zero-shot label vectors)
    task_problem: str = ""  # why its declared task cannot run (it is run as tensors instead)

    @property
    def where(self) -> str:
        return f"{self.model.backend}:{self.model.device}"

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
        self.model.close()  # the task does not own a model it was given


def is_model_path(path: Path) -> bool:
    """A model file or a package folder (something Open should load, not run)."""
    return (path.is_dir() and (path / "edgekit.json").is_file()) or path.suffix.lower() in MODEL_SUFFIXES


def open_model(path: str | Path, device: str = "auto") -> Loaded:
    """Open ``path`` on ``device`` (slow: run it in a job). Raises edgekit's errors unchanged."""
    import edgekit
    from edgekit import formats, package
    from edgekit.errors import UsageError
    from edgekit.tasks.base import for_model, is_known_task

    path = Path(path)
    t0 = time.perf_counter()
    model = edgekit.load(path, device=device)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        meta = model.metadata
        fmt = formats.detect(model.path)
        if model.package is not None:
            pkg = model.package
            artifacts = [{"path": a.path.name, "format": a.format.value, "precision": a.precision,
                          "layout": a.layout, "status": a.status, **package.measured(entry)}
                         for a, entry in zip(pkg.artifacts, pkg.manifest.get("artifacts", []))]
            facts = {}
        else:
            artifacts, facts = [], formats.describe(model.path, fmt)
        info = ModelInfo(
            path=path, name=str(meta.get("name") or path.stem), is_package=model.package is not None,
            format=fmt.value, size_bytes=sum(f.stat().st_size for f in formats.model_files(model.path, fmt)),
            task=meta.get("task"), labels=meta.get("labels"), inputs=model.inputs, outputs=model.outputs,
            artifacts=artifacts, description=str(meta.get("description") or ""), facts=facts)
        task, problem = None, ""
        if is_known_task(info.task):
            try:
                task = for_model(model)
            except UsageError as e:  # a text model without its tokenizer.json: it still runs on tensors
                problem = str(e)
    except BaseException:
        model.close()
        raise
    return Loaded(info, model, task, device, load_ms, task_problem=problem)


def selection_in_words(selection) -> list[str]:
    """The selection record as sentences a person reads: what runs, why, what failed before it,
    and how many candidates could not run here (the full record is ``str(selection)``)."""
    chosen = selection.chosen
    lines = []
    if chosen is not None:
        what = f"{chosen.artifact} on " if chosen.artifact else ""
        computing = ("at the precision it is stored in" if chosen.precision in ("as stored", "stored", None)
                     else f"in {chosen.precision}")
        lines.append(f"Running {what}{chosen.spec} ({chosen.kind.value}, computing {computing}).")
        if chosen.reason:
            lines.append(f"Why: {chosen.reason}.")
    policy = {"auto": "the best device available", "fastest": "the fastest device measured"}.get(
        selection.policy, f"'{selection.policy}'")
    lines.append(f"You asked for {policy}." + (" The measured choice came from the cache." if selection.cache == "hit"
                                                  else ""))
    skipped = 0
    after = False  # past the chosen candidate: its failures were not fallen back from
    for a in selection.attempts:
        where = a.spec + (f" [{a.artifact}]" if a.artifact else "")
        if a is chosen:
            after = selection.policy != "fastest"  # fastest tries every candidate
            continue
        if a.status == "failed":
            lines.append(f"{'Also failed' if after else 'Fell back'}: {where} failed: {a.reason}.")
        elif a.status == "not tried" and a.latency_ms is not None:
            lines.append(f"Measured {where} at {a.latency_ms:.2f} ms (slower).")
        elif a.status == "skipped":
            skipped += 1
    if skipped:
        lines.append(f"{skipped} other candidates cannot run here (device absent or not in this build): "
                     "see all candidates.")
    return lines


class Session:
    """The app's state. ``settings`` is any mutable mapping (QSettings in the app, a dict in tests).

    Events: ``model_changed(Loaded | None)``, ``device_changed(str)``, ``recent_changed(list)``,
    ``result(object)`` (the last run's result).
    """

    def __init__(self, settings: MutableMapping | None = None) -> None:
        self.settings = settings if settings is not None else {}
        self.loaded: Loaded | None = None
        self.device = str(self.settings.get("device") or "auto")
        self.last_result = None
        self.model_changed, self.device_changed, self.recent_changed, self.result = Event(), Event(), Event(), Event()

    # --- model and device ---
    def set_loaded(self, loaded: Loaded | None) -> None:
        previous, self.loaded, self.last_result = self.loaded, loaded, None
        if previous is not None and previous is not loaded:
            previous.close()
        if loaded is not None:
            self.add_recent(loaded.info.path)
        self.model_changed.emit(loaded)

    def set_device(self, device: str) -> None:
        if device != self.device:
            self.device = device
            self.settings["device"] = device
            self.device_changed.emit(device)

    def set_result(self, result) -> None:
        self.last_result = result
        self.result.emit(result)

    # --- recent files ---
    @property
    def recent(self) -> list[str]:
        value = self.settings.get("recent") or []
        return [value] if isinstance(value, str) else [str(v) for v in value]

    def add_recent(self, path: Path) -> None:
        entry = str(Path(path).resolve())
        items = [entry] + [p for p in self.recent if p != entry]
        self.settings["recent"] = items[:MAX_RECENT]
        self.recent_changed.emit(self.recent)

    def close(self) -> None:
        self.set_loaded(None)
