"""Small result types shared by every task, and the options every classifier takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
    """

    top_k: int | None = 5
    score_threshold: float | None = None
    allow: Sequence[str] | None = None
    deny: Sequence[str] | None = None

    def merged(self, **overrides) -> ClassifierOptions:
        given = {k: v for k, v in overrides.items() if v is not None}
        return ClassifierOptions(**{**self.__dict__, **given})

    def select(self, scores: np.ndarray, labels: Sequence[str] | None) -> list[Category]:
        if self.top_k is not None and self.top_k < 1:
            from ..errors import InputError

            raise InputError(f"top_k must be at least 1, got {self.top_k}")
        order = np.argsort(-scores, kind="stable")
        allow = set(self.allow) if self.allow else None
        deny = set(self.deny) if self.deny else set()
        out: list[Category] = []
        for i in order:
            label = labels[i] if labels is not None and i < len(labels) else str(int(i))
            score = float(scores[i])
            if self.score_threshold is not None and score < self.score_threshold:
                break
            if (allow is not None and label not in allow) or label in deny:
                continue
            out.append(Category(int(i), label, score))
            if self.top_k is not None and len(out) >= self.top_k:
                break
        return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
