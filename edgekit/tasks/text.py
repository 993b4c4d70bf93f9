"""Text embedding and classification with Hugging Face ``tokenizers``.

    from edgekit.tasks import TextEmbedder, TextClassifier
    emb = TextEmbedder("minilm-l6-v2/")
    emb.similarity("A man plays guitar.", "Someone plays a guitar.")     # ~0.8
    TextClassifier(emb.model, labels=["sports", "finance"]).classify("The striker scored twice.")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError, UsageError
from .base import Task, label_list
from .results import Category, ClassifierOptions, classifier_options, is_integer

log = logging.getLogger(__name__)


class Tokenizer:
    """A ``tokenizer.json`` with truncation at ``max_length`` and padding to the longest in a batch."""

    def __init__(self, path: str | Path, *, max_length: int = 512) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: tokenizer file is missing")
        try:
            self._tok = HfTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a corrupt or foreign file
            raise ModelFileError(path, f"cannot be read as a tokenizer ({' '.join(str(e).split())[:200]})") from None
        self.max_length = max_length
        self._tok.enable_truncation(max_length)
        self._tok.no_padding()

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids, int64, padded to the longest text."""
        encodings = self._tok.encode_batch(list(texts))
        n = max(len(e.ids) for e in encodings)
        out = {k: np.zeros((len(encodings), n), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        pad_id = self._tok.padding["pad_id"] if self._tok.padding else 0
        out["input_ids"][:] = pad_id
        for i, e in enumerate(encodings):
            k = len(e.ids)
            out["input_ids"][i, :k] = e.ids
            out["attention_mask"][i, :k] = e.attention_mask
            out["token_type_ids"][i, :k] = e.type_ids
        return out

    def count(self, text: str) -> int:
        return len(self._tok.encode(text).ids)


def _template(template) -> str:
    """A zero-shot template: a string with one ``{}`` where the label goes."""
    try:
        ok = isinstance(template, str) and template.format("a") != template.format("b")
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"template {template!r}: expected a string with one {{}} where each label goes, "
                         f"as {TextClassifier.ZERO_SHOT_TEMPLATE!r}")
    return template


def _is_one_text(texts) -> bool:
    """One text, as :func:`_as_texts` takes it (a string, UTF-8 bytes, a 0-d array of one)."""
    return isinstance(texts, (str, bytes, bytearray)) or (isinstance(texts, np.ndarray) and texts.ndim == 0)


def _as_texts(texts, what: str = "text") -> list[str]:
    if _is_one_text(texts):
        items = [texts.item() if isinstance(texts, np.ndarray) else texts]  # np.array("one text") too
    elif isinstance(texts, Iterable) and not isinstance(texts, dict):
        items = list(texts)
    else:
        raise InputError(f"{what}: expected a string or a list of strings, got {type(texts).__name__}")
    if not items:
        raise InputError(f"{what}: no texts given")
    out = []
    for i, t in enumerate(items):
        name = f"{what} #{i}" if len(items) > 1 else what
        if isinstance(t, (bytes, bytearray)):
            try:
                t = bytes(t).decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{name}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from e
        if not isinstance(t, str):
            raise InputError(f"{name}: expected a string, got {type(t).__name__}")
        try:  # a lone surrogate: bytes that were not UTF-8, escaped (argv, "\udcff" in JSON)
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"{name}: not valid Unicode ({t[e.start]!r} at character {e.start} is a lone "
                             f"surrogate; were the bytes UTF-8?)") from None
        if not t.strip():
            raise InputError(f"{name} is empty")
        if not any(c.isprintable() and not c.isspace() for c in t):  # the tokenizer drops them all
            raise InputError(f"{name} is empty (only control or invisible characters)")
        out.append(t)
    return out


def _zero_shot_labels(labels) -> list[str]:
    """The caller's zero-shot labels: each is embedded as a text, and each is a class of its own."""
    if labels is None:
        raise UsageError("no labels: zero-shot classification needs labels=[...]")
    if not isinstance(labels, (str, bytes)) and hasattr(labels, "__len__") and len(labels) == 0:
        raise UsageError("labels=[] is empty: zero-shot classification needs at least one label")
    items = _as_texts(label_list(labels, lambda problem: UsageError(f"labels {problem}")), "label")
    seen: set[str] = set()
    for label in items:
        if label in seen:
            raise InputError(f"label {label!r} is given twice")
        seen.add(label)
    return items


class _TextTask(Task):
    def __init__(self, source, *, device: str = "auto", tokenizer: str | Path | None = None,
                 max_length: int | None = None, **load_options) -> None:
        if max_length is not None and not (is_integer(max_length) and max_length >= 1):
            raise UsageError(f"max_length must be a whole number of tokens, at least 1; got {max_length!r}")
        super().__init__(source, device=device, **load_options)
        with self.closed_on_error():
            pp = self.preprocess("text")
            name, top = pp.get("tokenizer"), pp.get("max_length")
            if name is not None and not (isinstance(name, str) and name):
                raise ModelFileError(self.metadata_source(), f"preprocess.text tokenizer {name!r} is not a file name")
            if top is not None and not (is_integer(top) and top >= 1):
                raise ModelFileError(self.metadata_source(),
                                     f"preprocess.text max_length {top!r} is not a positive whole number")
            # beside the package's edgekit.json, or beside a lone artifact that carries the package's card
            src = Path(self.model.source)
            folder = src if src.is_dir() else src.parent
            tok_path = tokenizer or (folder / name if name else None)
            if tok_path is None:
                raise UsageError(f"{self.model.source}: no tokenizer: the package names none; name one in its "
                                 f"edgekit.json (preprocess.text.tokenizer), or pass tokenizer=PATH in Python")
            limit = max_length or top or 512
            # the sequence length caps the token limit: a static one (TFLite from onnx2tf) or the
            # declared limit of a named one (MiniLM's 512 positions); a static batch dimension is
            # what every run must be filled to
            shapes = [s.shape for s in self.model.inputs if s.shape is not None and len(s.shape) == 2]
            caps = [sh[1] if isinstance(sh[1], int) else self.model.dim_limits.get(sh[1]) for sh in shapes]
            cap = min((c for c in caps if c is not None), default=None)
            if max_length is not None and cap is not None and max_length > cap:
                log.warning("%s: max_length %d is over this model's limit of %d tokens: texts are cut at %d",
                            self.model.path.name, max_length, cap, cap)
            self.tokenizer = Tokenizer(tok_path, max_length=int(min(limit, cap or limit)))
            self.input_names = [s.name for s in self.model.inputs]
            self.static_batch = self.fixed_batch()
            if self.model.cross_row and not self.static_batch:
                log.info("%s: texts run one at a time (TextEmbedder.embed batches them when given a batch_size), "
                         "so that each gets the result it gets alone: %s",
                         self.model.path.name, self.model.cross_row)

    def _feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode(texts)
        missing = [n for n in self.input_names if n not in enc]
        if missing:
            raise UsageError(f"{self.model.source}: model inputs {missing} are not produced by the tokenizer "
                             f"(it gives input_ids, attention_mask, token_type_ids)")
        feeds = {n: enc[n] for n in self.input_names}
        for spec in self.model.inputs:  # a static sequence length (TFLite): pad with mask 0
            length = spec.shape[1] if spec.shape is not None and len(spec.shape) == 2 else None
            x = feeds[spec.name]
            if isinstance(length, int) and x.shape[1] < length:
                feeds[spec.name] = np.pad(x, ((0, 0), (0, length - x.shape[1])))
        return feeds

    def _outputs(self, items: list[str], batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The model's output row for each text, in order, run in batches of texts of similar length
        (``batch_size`` None: 32, or 1 where a row's result depends on its batch, see ``embed``);
        ``progress(texts done, total)`` after each batch."""
        if batch_size is not None and not (is_integer(batch_size) and batch_size >= 1):
            raise InputError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        order = sorted(range(len(items)), key=lambda i: len(items[i]))  # similar lengths pad less
        if batch_size is None:
            batch_size = 1 if self.model.cross_row else 32
        batch_size = self.static_batch or batch_size
        out: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            texts = [items[i] for i in idx]
            if self.static_batch:  # fill a static batch with copies; their rows are dropped
                texts += texts[:1] * (self.static_batch - len(texts))
            result = np.asarray(next(iter(self.model.run(self._feeds(texts)).values())), np.float32)
            if result.ndim > 2 and np.prod(result.shape[1:-1]) != 1:  # per token, not per text
                raise UsageError(f"{self.model.source}: its first output has shape {result.shape}, not one "
                                 f"vector per text; export it with pooling (a sentence embedding) or as a classifier")
            rows = result.reshape(len(texts), -1)[:len(idx)]
            if out is None:
                out = np.empty((len(items), rows.shape[-1]), np.float32)
            out[idx] = rows
            if progress is not None:
                progress(start + len(idx), len(items))
        return out

    def _embed(self, items: list[str], batch_size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        out = self._outputs(items, batch_size, progress)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)  # a no-op when the graph normalises, a guarantee when not


class TextEmbedder(_TextTask):
    """Sentence embeddings, ``n x d`` and unit norm, in batches of texts of similar length.

    Texts longer than the model's limit (``max_length`` tokens) are truncated.
    """

    task = "text-embedding"

    def embed(self, texts: str | Sequence[str], *, batch_size: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Unit-norm embeddings, one row per text (one row for a single string).

        Texts run in batches of ``batch_size`` (default 32). On a model that quantizes activations
        per run (ONNX Runtime's int8 for transformers: ``model.cross_row`` says so), a text in a
        batch embeds differently than alone, so by default they run one at a time and a text
        always gets the same vector; an explicit ``batch_size`` batches them anyway (MiniLM: 1.85x
        the texts per second; vectors down to cosine 0.977 of their own, a short text padded to a
        long one's length).

        ``progress(done, total)`` is called after each batch with the number of texts embedded;
        what it raises stops the embedding and comes out of ``embed`` (an app's Cancel).

        Raises:
            InputError: not a string or a list of strings, an empty text, bytes that are not UTF-8.
        """
        return self._embed(_as_texts(texts), batch_size, progress)

    def similarity(self, a: str | Sequence[str], b: str | Sequence[str]) -> float | np.ndarray:
        """Cosine similarity: a float for two texts, a matrix for two lists."""
        ea, eb = self.embed(a), self.embed(b)
        sims = ea @ eb.T
        return float(sims[0, 0]) if _is_one_text(a) and _is_one_text(b) else sims


class TextClassifier(_TextTask):
    """Text classification with a package's labels, or zero-shot over ``labels`` with an embedder.

    With a text-embedding model, each label is embedded as "This text is about {label}." and a
    text's score for a label is the cosine similarity of the two embeddings. Zero-shot labels must
    be distinct; a classification package's labels must name each of its outputs.

    Like :meth:`TextEmbedder.embed`, ``scores`` and ``classify`` take one text or a list of texts;
    a list gives one row (one list of categories) per text.
    """

    task = "text-classification"
    ZERO_SHOT_TEMPLATE = "This text is about {}."

    def __init__(self, source, *, device: str = "auto", labels: Sequence[str] | None = None,
                 options: ClassifierOptions | None = None, template: str | None = None, **kwargs) -> None:
        super().__init__(source, device=device, **kwargs)
        with self.closed_on_error():
            self.zero_shot = self.metadata.get("task") == "text-embedding" or (
                not self.metadata.get("task") and labels is not None)
            self.labels = (_zero_shot_labels(labels if labels is not None else self.metadata.get("labels"))
                           if self.zero_shot else self.class_labels(labels))
            if not self.labels:
                raise UsageError(f"{self.model.source}: no labels: the package has none; pass labels=[...]")
            self.options = classifier_options(options, self.labels)
            self._label_vecs = None
            if self.zero_shot:
                self.template = _template(template or self.ZERO_SHOT_TEMPLATE)
                self._label_vecs = self._embed([self.template.format(label) for label in self.labels])
            else:
                self._activate = self.activation()

    def accepts(self) -> tuple[str, ...]:
        return ("text-classification", "text-embedding")

    def scores(self, text: str | Sequence[str], *, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Each label's score for ``text``: a vector for one text, a texts x labels matrix for a list.
        ``progress(done, total)`` as for :meth:`TextEmbedder.embed`."""
        items = _as_texts(text)
        if self.zero_shot:
            scores = self._embed(items, progress=progress) @ self._label_vecs.T
        else:
            scores = self._activate(self._outputs(items, progress=progress))
        return scores[0] if isinstance(text, (str, bytes, bytearray)) else scores

    def classify(self, text: str | Sequence[str], top_k: int | None = None, *, score_threshold: float | None = None,
                 allow=None, deny=None,
                 progress: Callable[[int, int], None] | None = None) -> list[Category] | list[list[Category]]:
        """Top categories of ``text``, best first; for a list of texts, one such list per text.
        ``progress(done, total)`` as for :meth:`TextEmbedder.embed`."""
        opts = self.options.merged(top_k=top_k, score_threshold=score_threshold, allow=allow, deny=deny)
        scores = self.scores(text, progress=progress)
        if scores.ndim == 1:
            return opts.select(scores, self.labels)
        return [opts.select(row, self.labels) for row in scores]
