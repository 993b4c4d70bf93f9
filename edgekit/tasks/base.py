"""What every task shares: opening its model and reading the package's metadata."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .. import formats
from ..errors import InputError, ModelFileError, UsageError
from ..model import Model, load
from .results import ACTIVATIONS


def input_file(path: str | Path, kind: str) -> Path:
    """``path`` as a Path, or InputError naming it when it is missing or empty."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not an {kind} file" if kind[0] in "aeiou" else
                         f"{path}: a folder, not a {kind} file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file" if path.exists() else f"{path}: no such {kind} file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    return path


def label_list(labels, fail) -> list[str]:
    """``labels`` as a list of strings, else raise ``fail(problem)``. A string is refused: its letters
    would become the labels."""
    if isinstance(labels, (str, bytes)):
        raise fail(f"must be a list of strings, not the string {labels!r}")
    if isinstance(labels, dict) or not isinstance(labels, Iterable):
        raise fail(f"must be a list of strings, not {type(labels).__name__} {labels!r:.60}")
    labels = list(labels)
    bad = next((i for i, label in enumerate(labels) if not isinstance(label, str)), None)
    if bad is not None:
        raise fail(f"must be strings: #{bad} is {labels[bad]!r}")
    return labels


class Task:
    """Base of the task objects: holds a Model and the metadata it came with.

    ``source`` is a package folder, a model file or an already loaded :class:`Model`
    (which the task then does not close).
    """

    task: str = ""

    def __init__(self, source: str | Path | Model, *, device: str = "auto", **load_options) -> None:
        unknown = sorted(set(load_options) - set(LOAD_OPTIONS))
        if unknown:  # load() would name itself ("load() got an unexpected keyword argument")
            raise UsageError(f"{type(self).__name__} takes no option {unknown[0]!r}; its options are its own "
                             f"and edgekit.load's ({', '.join(LOAD_OPTIONS)}, device)")
        if isinstance(source, Model):
            given = (["device"] if device != "auto" else []) + sorted(load_options)
            if given:  # they would be dropped: the model is open already, somewhere
                raise UsageError(f"{', '.join(given)}: how to open the model, but {type(self).__name__} was given "
                                 f"an open Model (on {source.backend}:{source.device}); pass "
                                 f"{'it' if len(given) == 1 else 'them'} to edgekit.load, or give the path")
            self.model, self._owns = source, False
        else:
            self.model, self._owns = load(source, device=device, **load_options), True
        self.metadata = self.model.metadata
        declared = self.metadata.get("task")
        if declared and self.task and declared not in self.accepts():
            self.close()
            raise UsageError(f"{self.model.source}: this package is a {declared!r} model, "
                             f"not {self.task!r}; use {task_class_name(declared)}")

    def accepts(self) -> tuple[str, ...]:
        return (self.task,)

    @contextlib.contextmanager
    def closed_on_error(self):
        """Wrap the rest of a constructor: if it raises, the model this task opened is closed."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def metadata_source(self) -> str:
        """What an error about the package's metadata names: its edgekit.json, or the lone model file
        that carries the package's card."""
        package = self.model.package
        return str(package.root / formats.MANIFEST) if package is not None else str(self.model.source)

    def _metadata_object(self, value, key: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ModelFileError(self.metadata_source(), f"{key!r} must be an object, not {value!r}")
        return value

    def preprocess(self, kind: str, overrides: dict | None = None, known: tuple[str, ...] = ()) -> dict:
        """The package's pre-processing of ``kind`` ("image", "text", "audio") with the caller's overrides
        (each a key in ``known``, where given: a misspelt one would be silently unused)."""
        if overrides is not None and not isinstance(overrides, dict):
            raise UsageError(f"preprocess must be a dict of overrides, not {overrides!r}")
        unknown = sorted(set(overrides or ()) - set(known)) if known else []
        if unknown:
            raise UsageError(f"preprocess: no {kind} pre-processing key {unknown[0]!r}; the keys are "
                             f"{', '.join(known)}")
        section = self._metadata_object(self.metadata.get("preprocess"), "preprocess")
        return {**self._metadata_object(section.get(kind), f"preprocess.{kind}"), **(overrides or {})}

    def postprocess(self) -> dict:
        return dict(self._metadata_object(self.metadata.get("postprocess"), "postprocess"))

    def activation(self):
        """The function the package's ``postprocess.activation`` names (default softmax)."""
        name = self.postprocess().get("activation", "softmax")
        name = "none" if name is None else name  # null: the outputs are the scores
        if not isinstance(name, str) or name not in ACTIVATIONS:
            raise ModelFileError(self.metadata_source(), f"postprocess activation {name!r} is not one of "
                                                         f"{', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[name]

    def class_labels(self, labels=None) -> list[str] | None:
        """The name of each score the model outputs: ``labels``, else the package's (None: indices).

        Duplicates are allowed: ImageNet names two classes "crane".

        Raises:
            UsageError: ``labels`` is a string or holds a non-string, or their number is not the
                number of classes the model declares (ModelFileError naming edgekit.json when the
                labels are the package's).
        """
        given = labels is not None
        labels = labels if given else self.metadata.get("labels")
        if labels is None:
            return None

        def fail(problem: str) -> UsageError:
            return UsageError(f"labels {problem}") if given else \
                ModelFileError(self.metadata_source(), f"'labels' {problem}")

        labels = label_list(labels, fail)
        shape = self.model.outputs[0].shape or ()
        per_row = shape[1:] if len(shape) > 1 else shape  # [1, 1000], or [1, 1000, 1, 1] from Caffe
        classes = int(np.prod(per_row)) if per_row and all(isinstance(d, int) for d in per_row) else None
        if classes is not None and len(labels) != classes:
            raise fail(f"name {len(labels)} classes, and the model outputs {classes} scores")
        return labels

    def fixed_batch(self) -> int | None:
        """The batch every run must have where the model fixes it (the smallest first dim its
        inputs of rank 2 or more fix: TFLite's 1, an export for batches of 4), else None."""
        firsts = [s.shape[0] for s in self.model.inputs
                  if s.shape is not None and len(s.shape) >= 2 and isinstance(s.shape[0], int)]
        return min(firsts, default=None)

    def scores_of_one(self, x: np.ndarray) -> np.ndarray:
        """The first output for one sample ``x`` (batch 1) of the first input, flattened. A model
        whose batch is fixed above 1 runs copies of it filling the batch, and their rows are dropped."""
        fixed = self.fixed_batch()
        fixed = fixed if fixed is not None and fixed > 1 and x.shape[0] == 1 else None
        if fixed:
            x = np.repeat(x, fixed, axis=0)
        out = np.asarray(next(iter(self.model.run({self.model.inputs[0].name: x}).values())), np.float32)
        return (out[:1] if fixed and out.ndim and out.shape[0] == fixed else out).reshape(-1)

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


def known_tasks() -> tuple[str, ...]:
    """The tasks edgekit has a task object for (what an edgekit.json "task" may name)."""
    return tuple(_TASK_CLASSES)


def is_known_task(task: str | None) -> bool:
    """Whether edgekit has a task object for ``task`` (an edgekit.json "task")."""
    return isinstance(task, str) and task in _TASK_CLASSES


def task_class_name(task: str) -> str:
    return _TASK_CLASSES[task][1] if is_known_task(task) else "a task of its own"


def task_class(task: str) -> type[Task]:
    """The class of a known task (see :func:`is_known_task`), imported on first use."""
    import importlib

    module, cls = _TASK_CLASSES[task]
    return getattr(importlib.import_module(f".{module}", __package__), cls)


LOAD_OPTIONS = ("precision", "strict", "verify", "cache", "concurrency")  # what a task passes on to edgekit.load


def for_model(source: str | Path | Model, *, device: str = "auto", **options) -> Task:
    """The task object a package declares (its edgekit.json "task"); ``options`` are the task's own
    and edgekit.load's."""
    if isinstance(source, Model):  # the task refuses options of loading it (Task.__init__)
        model = source
        options.update({"device": device} if device != "auto" else {})
    else:
        model = load(source, device=device, **{k: options.pop(k) for k in LOAD_OPTIONS if k in options})
    try:
        task = model.metadata.get("task")
        if not is_known_task(task):
            known = ", ".join(_TASK_CLASSES)
            raise UsageError(f"{model.source}: no task declared in edgekit.json (task={task!r}); "
                             f"known tasks: {known}; run it with `edgekit run` instead")
        obj = task_class(task)(model, **options)
    except BaseException:
        if model is not source:  # loaded here: nobody else will close it
            model.close()
        raise
    obj._owns = model is not source
    return obj
