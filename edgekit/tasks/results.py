"""Small result types shared by every task, and the options every classifier takes."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
        allow: keep only these labels. deny: drop these labels. Each must be one of the classifier's
            labels (for a model without labels, an index: "0", "1", ...).

    Raises:
        InputError: top_k not a whole number >= 1, score_threshold not a finite number, or
            allow / deny a single string rather than a list of labels.
        UsageError (from :meth:`select`, or when a classifier opens): allow / deny naming a label the
            classifier lacks (a typo kept nothing, unsaid), with the closest ones it has.
    """

    top_k: int | None = 5
    score_threshold: float | None = None
    allow: Sequence[str] | None = None
    deny: Sequence[str] | None = None
    # The labels allow and deny were checked against (see checked), and those labels as a set
    _labels: Sequence[str] | None = field(default=None, init=False, repr=False, compare=False)
    _known: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.top_k is not None and not (is_integer(self.top_k) and self.top_k >= 1):
            raise InputError(f"top_k must be a whole number of at least 1, got {self.top_k!r}")
        if self.score_threshold is not None and not is_number(self.score_threshold):
            raise InputError(f"score_threshold must be a finite number, got {self.score_threshold!r}")
        for name in ("allow", "deny"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)):  # its letters would become the labels
                raise InputError(f"{name} must be a list of labels, not the string {value!r}")
            if value is not None:  # a generator or map is read once: kept whole, checked and used alike
                try:
                    object.__setattr__(self, name, tuple(value))
                except TypeError:
                    raise InputError(f"{name} must be a list of labels, not {value!r}") from None

    def checked(self, labels: Sequence[str] | None) -> ClassifierOptions:
        """These options with allow and deny checked against ``labels``, as a classifier does once when it
        opens: :meth:`select` on those same labels, and the options :meth:`merged` from these, then check
        only the labels given since (not a set of 1000 ImageNet labels per call).

        Raises:
            UsageError: naming the labels allow or deny hold that ``labels`` lacks.
        """
        if labels is None:  # names of indices: select checks them against the number of scores
            return self
        known = frozenset(labels)
        for name in ("allow", "deny"):
            _check_known(name, getattr(self, name), labels, known)
        bound = replace(self)
        object.__setattr__(bound, "_labels", labels)
        object.__setattr__(bound, "_known", known)
        return bound

    def merged(self, **overrides) -> ClassifierOptions:
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:  # the common call: 20 us a classify to copy and re-check, right after an inference
            return self
        out = replace(self, **given)
        if self._known is not None:  # checked: check the labels given here alone
            for name in ("allow", "deny"):
                _check_known(name, given.get(name), self._labels, self._known)
            object.__setattr__(out, "_labels", self._labels)
            object.__setattr__(out, "_known", self._known)
        return out

    def select(self, scores: np.ndarray, labels: Sequence[str] | None) -> list[Category]:
        if labels is not None and len(labels) != len(scores):  # a model whose class count is not declared
            raise UsageError(f"{len(labels)} labels for the model's {len(scores)} scores")
        if (self.allow or self.deny) and (labels is None or labels is not self._labels):
            known = _IndexNames(len(scores)) if labels is None else frozenset(labels)
            for name in ("allow", "deny"):
                _check_known(name, getattr(self, name), labels, known)
        allow = set(self.allow) if self.allow else None
        deny = set(self.deny) if self.deny else set()
        if self.top_k is not None and allow is None and not deny:  # nothing skipped: the first top_k or fewer
            small = self.top_k <= _ARGMAX_TOP and scores.dtype.kind == "f"
            order = _top_by_argmax(scores, self.top_k) if small else None
            if order is None:
                order = np.argsort(-scores, kind="stable")[:self.top_k]
        else:
            order = np.argsort(-scores, kind="stable")
        out: list[Category] = []
        values = scores[order] if scores.dtype.kind == "f" else scores[order].astype(np.float64)
        for i, score in zip(order.tolist(), values.tolist()):  # two numpy calls, not two a category
            label = labels[i] if labels is not None else str(i)
            if self.score_threshold is not None and score < self.score_threshold:
                break
            if (allow is not None and label not in allow) or label in deny:
                continue
            out.append(Category(i, label, score))
            if self.top_k is not None and len(out) >= self.top_k:
                break
        return out


# Up to this top_k, the top is found by repeated argmax (see _top_by_argmax), beyond it by a sort.
_ARGMAX_TOP = 16


def _top_by_argmax(scores: np.ndarray, k: int) -> np.ndarray | None:
    """The indices of the ``k`` highest scores, highest first and ties in index order, as a stable
    sort of ``-scores`` gives them: by ``k`` argmax calls, 11 against 33 us for the top 5 of 1000
    right after an inference (2-core Zen 4), where the sort ran cold. None where a NaN or -inf is
    reached: argmax would find the same -inf again, and a sort puts NaN last."""
    left = np.array(scores, dtype=scores.dtype)
    top = []
    for _ in range(min(k, len(left))):
        i = int(left.argmax())
        if not float(left[i]) > -np.inf:
            return None
        top.append(i)
        left[i] = -np.inf
    return np.array(top, dtype=np.intp)


class _IndexNames:
    """The names of a label-less model's categories, "0" to str(n - 1), without making n strings."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name.isdecimal() and str(int(name)) == name and int(name) < self.n


def _check_known(name: str, wanted: Sequence[str] | None, labels: Sequence[str] | None, known) -> None:
    """Raise UsageError naming what ``wanted`` (allow or deny) holds that is not ``known``, with the closest
    labels each could have meant."""
    unknown = [w for w in dict.fromkeys(wanted or ()) if w not in known]
    if not unknown:
        return
    if labels is None:
        are = "is not one of" if len(unknown) == 1 else "are not among"
        raise UsageError(f"{name}: {', '.join(map(repr, unknown))} {are} this model's categories: it has no labels, "
                         f"they are named by index, '0' to '{known.n - 1}'")
    distinct = list(dict.fromkeys(labels))

    def closest(w) -> str:
        near = difflib.get_close_matches(str(w), distinct, n=3) if isinstance(w, str) else []
        return f" (closest: {', '.join(map(repr, near))})" if near else ""

    whose = f"labels {', '.join(map(repr, distinct))}" if len(distinct) <= 10 else f"{len(labels)} labels"
    if len(unknown) == 1:
        raise UsageError(f"{name}: {unknown[0]!r} is not one of this classifier's {whose}{closest(unknown[0])}")
    named = ", ".join(f"{w!r}{closest(w)}" for w in unknown)
    raise UsageError(f"{name}: {named} are not among this classifier's {whose}")


def classifier_options(options: ClassifierOptions | None, labels: Sequence[str] | None = None) -> ClassifierOptions:
    """A classifier's ``options`` argument (a :class:`ClassifierOptions`, or None for the defaults),
    checked against its ``labels``."""
    if options is None:
        return ClassifierOptions().checked(labels)
    if not isinstance(options, ClassifierOptions):
        raise UsageError(f"options must be a ClassifierOptions, not {type(options).__name__} {options!r:.60}")
    return options.checked(labels)


def is_integer(value) -> bool:
    """An int (NumPy's too), not a bool: what a count or a size must be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """A finite real number (NumPy's too), not a bool."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and bool(np.isfinite(value)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """float32 scores; float32 logits are computed in float32 (after subtracting the max, exp cannot
    overflow): a float64 round trip cost two more passes, 0.03 against 0.015 ms in a classify loop."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim == 0:
        x = x.astype(np.float64)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    e = x - x.max(axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)


# What a package's postprocess "activation" may name: how a classifier turns the model's outputs
# into scores ("none": the outputs are already scores).
ACTIVATIONS = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: np.asarray(x, np.float32)}
