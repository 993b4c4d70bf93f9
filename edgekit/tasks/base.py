"""What every task shares: opening its model and reading the package's metadata."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, UsageError
from ..model import Model, load


def input_file(path: str | Path, kind: str) -> Path:
    """``path`` as a Path, or InputError naming it when it is missing or empty."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not an {kind} file" if kind[0] in "aeiou" else
                         f"{path}: a folder, not a {kind} file")
    if not path.is_file():
        raise InputError(f"{path}: no such {kind} file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    return path


class Task:
    """Base of the task objects: holds a Model and the metadata it came with.

    ``source`` is a package folder, a model file or an already loaded :class:`Model`
    (which the task then does not close).
    """

    task: str = ""

    def __init__(self, source: str | Path | Model, *, device: str = "auto", **load_options) -> None:
        if isinstance(source, Model):
            self.model, self._owns = source, False
        else:
            self.model, self._owns = load(source, device=device, **load_options), True
        self.metadata = self.model.metadata
        declared = self.metadata.get("task")
        if declared and self.task and declared not in self.accepts():
            raise UsageError(f"{self.model.source}: this package is a {declared!r} model, "
                             f"not {self.task!r}; use {task_class_name(declared)}")

    def accepts(self) -> tuple[str, ...]:
        return (self.task,)

    def preprocess(self, kind: str) -> dict:
        return dict(self.metadata.get("preprocess", {}).get(kind, {}))

    def postprocess(self) -> dict:
        return dict(self.metadata.get("postprocess", {}))

    def artifact_entry(self) -> dict:
        """The manifest entry of the artifact that runs (layout, precision, parity)."""
        for entry in self.metadata.get("artifacts", []):
            if Path(entry.get("path", "")).name == self.model.path.name:
                return entry
        return {}

    def close(self) -> None:
        if self._owns:
            self.model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_TASK_CLASSES = {
    "image-classification": ("image", "ImageClassifier"),
    "text-embedding": ("text", "TextEmbedder"),
    "text-classification": ("text", "TextClassifier"),
    "voice-activity-detection": ("audio", "VoiceActivityDetector"),
    "audio-classification": ("audio", "AudioClassifier"),
}


def is_known_task(task: str | None) -> bool:
    """Whether edgekit has a task object for ``task`` (an edgekit.json "task")."""
    return task in _TASK_CLASSES


def task_class_name(task: str) -> str:
    return _TASK_CLASSES.get(task, ("", "a task of its own"))[1]


def for_model(source: str | Path | Model, *, device: str = "auto", **options) -> Task:
    """The task object a package declares (its edgekit.json "task")."""
    import importlib

    model = source if isinstance(source, Model) else load(source, device=device)
    task = model.metadata.get("task")
    if task not in _TASK_CLASSES:
        known = ", ".join(_TASK_CLASSES)
        raise UsageError(f"{model.source}: no task declared in edgekit.json (task={task!r}); "
                         f"known tasks: {known}; run it with `edgekit run` instead")
    module, cls = _TASK_CLASSES[task]
    obj = getattr(importlib.import_module(f".{module}", __package__), cls)(model, **options)
    obj._owns = not isinstance(source, Model)
    return obj
