"""Small result types shared by every task, and the options every classifier takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, UsageError


@dataclass(frozen=True)
class Category:
    """One class of a classification result."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "score": self.score}


@dataclass(frozen=True)
class Segment:
    """A span of audio, in seconds, with the mean model score over it."""

    start_s: float
    end_s: float
    score: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict:
        return {"start_s": self.start_s, "end_s": self.end_s, "score": self.score}


@dataclass(frozen=True)
class ClassifierOptions:
    """What every classifier (image, text, audio) keeps of its scores.

    Args:
        top_k: at most this many categories, best first (None: all).
        score_threshold: drop categories scoring below this.
        allow: keep only these labels. deny: drop these labels.

    Raises:
        InputError: top_k not a whole number >= 1, score_threshold not a finite number, or
            allow / deny a single string rather than a list of labels.
    """

    top_k: int | None = 5
    score_threshold: float | None = None
    allow: Sequence[str] | None = None
    deny: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.top_k is not None and not (is_integer(self.top_k) and self.top_k >= 1):
            raise InputError(f"top_k must be a whole number of at least 1, got {self.top_k!r}")
        if self.score_threshold is not None and not is_number(self.score_threshold):
            raise InputError(f"score_threshold must be a finite number, got {self.score_threshold!r}")
        for name in ("allow", "deny"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)):  # its letters would become the labels
                raise InputError(f"{name} must be a list of labels, not the string {value!r}")

    def merged(self, **overrides) -> ClassifierOptions:
        given = {k: v for k, v in overrides.items() if v is not None}
        return ClassifierOptions(**{**self.__dict__, **given})

    def select(self, scores: np.ndarray, labels: Sequence[str] | None) -> list[Category]:
        if labels is not None and len(labels) != len(scores):  # a model whose class count is not declared
            raise UsageError(f"{len(labels)} labels for the model's {len(scores)} scores")
        order = np.argsort(-scores, kind="stable")
        allow = set(self.allow) if self.allow else None
        deny = set(self.deny) if self.deny else set()
        out: list[Category] = []
        for i in order:
            label = labels[i] if labels is not None else str(int(i))
            score = float(scores[i])
            if self.score_threshold is not None and score < self.score_threshold:
                break
            if (allow is not None and label not in allow) or label in deny:
                continue
            out.append(Category(int(i), label, score))
            if self.top_k is not None and len(out) >= self.top_k:
                break
        return out


def classifier_options(options: ClassifierOptions | None) -> ClassifierOptions:
    """A classifier's ``options`` argument: a :class:`ClassifierOptions`, or None for the defaults."""
    if options is None:
        return ClassifierOptions()
    if not isinstance(options, ClassifierOptions):
        raise UsageError(f"options must be a ClassifierOptions, not {type(options).__name__} {options!r:.60}")
    return options


def is_integer(value) -> bool:
    """An int (NumPy's too), not a bool: what a count or a size must be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """A finite real number (NumPy's too), not a bool."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and bool(np.isfinite(value)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)


# What a package's postprocess "activation" may name: how a classifier turns the model's outputs
# into scores ("none": the outputs are already scores).
ACTIVATIONS = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: np.asarray(x, np.float32)}
