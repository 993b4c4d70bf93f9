"""``edgekit.load`` and the :class:`Model` it returns.

    import edgekit
    m = edgekit.load("model.onnx")              # best device, fallback recorded
    out = m.run({"input": x})                   # dict in output order
    print(m.backend, m.device, m.selection)
"""

from __future__ import annotations

import functools
import logging
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import formats
from . import package as package_mod
from .errors import BackendError, EdgekitError, InputError, ModelFileError, UsageError
from .package import Declared
from .selection import parse_policy, resolve_source, select
from .types import Precision, Selection, TensorSpec, in_layout, shape_text

log = logging.getLogger("edgekit")

_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)


class _InputCheck:
    """Precomputed checks for one input so ``run`` stays within a few microseconds."""

    __slots__ = ("spec", "dtype", "rank", "static")

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.dtype = spec.dtype
        self.rank = None if spec.shape is None else len(spec.shape)
        self.static = tuple((i, d) for i, d in enumerate(spec.shape or ()) if isinstance(d, int))

    def __call__(self, x) -> np.ndarray:
        if type(x) is not np.ndarray or x.dtype != self.dtype:
            x = self._convert(x)
        if self.rank is not None and x.ndim != self.rank:
            raise InputError(f"input {self.spec.name!r}: expected rank {self.rank} "
                             f"{shape_text(self.spec.shape)}, got shape {x.shape}")
        shape = x.shape
        for i, d in self.static:
            if shape[i] != d:
                raise InputError(f"input {self.spec.name!r}: expected shape {shape_text(self.spec.shape)}, "
                                 f"got {x.shape} (dim {i} must be {d})")
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        return x

    def _convert(self, x) -> np.ndarray:
        """The cast policy: lossless casts only, plus float64 -> float32 (NumPy's default float)."""
        name = self.spec.name
        if x is None:
            raise InputError(f"input {name!r} is missing")
        from_python = not isinstance(x, np.ndarray)
        try:
            arr = np.asarray(x)
        except Exception as e:
            raise InputError(f"input {name!r}: cannot make an array of {type(x).__name__} ({e})") from e
        src, dst = arr.dtype, self.dtype
        if src == dst:
            return arr
        ok = (np.can_cast(src, dst, "safe")
              or (src == _F64 and dst == _F32)
              or (from_python and src.kind in "iub" and dst.kind in "iuf"
                  and np.array_equal(arr.astype(dst), arr)))
        if not ok:
            raise InputError(f"input {name!r}: expected {dst}, got {src} "
                             f"(edgekit casts only without loss, and float64 to float32; "
                             f"convert with .astype(np.{dst}))")
        if src == _F64 and dst == _F32:
            with np.errstate(over="ignore"):
                out = arr.astype(dst)
            # past float32's range a value becomes inf, and the model answers NaN or a plausible wrong
            # answer (OpenVINO): a loss the policy does not allow
            if not np.isfinite(out).all() and (np.isfinite(arr) & ~np.isfinite(out)).any():
                big = float(np.abs(arr[np.isfinite(arr) & ~np.isfinite(out)]).max())
                raise InputError(f"input {name!r}: float64 value {big:.3g} is past float32's range "
                                 f"(±3.4e38), so it cannot be cast without loss")
            return out
        return arr.astype(dst)


def cast_input(spec: TensorSpec, x) -> np.ndarray:
    """``x`` as ``spec``'s dtype under ``Model.run``'s cast policy (lossless casts only, plus float64
    to float32), else an InputError naming the input: for data that reaches a model another way."""
    return x if isinstance(x, np.ndarray) and x.dtype == spec.dtype else _InputCheck(spec)._convert(x)


def _named_dims(specs: list[TensorSpec]) -> dict[str, list[tuple[int, int]]]:
    """Where each named dynamic dim appears: name -> [(input, axis), ...]."""
    places: dict[str, list[tuple[int, int]]] = {}
    for i, spec in enumerate(specs):
        for d, dim in enumerate(spec.shape or ()):
            if isinstance(dim, str) and dim:
                places.setdefault(dim, []).append((i, d))
    return places


def _source_names(specs: list[TensorSpec], declared: Declared) -> list[TensorSpec]:
    """``specs`` under the source's input names where the file has TensorFlow's signature names for
    them: OpenVINO reads a TFLite file's "input_ids" as "serving_default_input_ids:0", so an IR made
    of it would take other names than its package's other artifacts (the text task found none of its
    inputs) and escape the package's dims and value ranges. The runtime is fed by position: only the
    names change. As the file has them where any input is not the signature name of a declared one."""
    want = set(declared.input_order)
    if not want or want == {s.name for s in specs}:
        return specs
    names = [s.name if s.name in want else formats.signature_base(s.name) for s in specs]
    if set(names) != want or len(names) != len(want):
        return specs
    return [replace(s, name=n) for s, n in zip(specs, names)]


def _declared(specs: list[TensorSpec], dim_names: dict[str, tuple]) -> list[TensorSpec]:
    """``specs`` with the dim names the source declared (``Declared.dim_names`` or ``output_dim_names``)
    where the artifact has none (OpenVINO IR and TFLite keep no names), so every artifact of a
    package is checked, and shown, alike."""
    if not dim_names:
        return specs
    out = []
    for spec in specs:
        names, layout = dim_names.get(spec.name, ((), None))
        if names and layout and spec.layout and layout != spec.layout:  # a TFLite NHWC beside its NCHW source
            names = in_layout(tuple(names), layout, spec.layout) if len(names) == 4 else ()
        if names and spec.shape is not None and len(names) == len(spec.shape):
            spec = replace(spec, shape=tuple(n if d is None and n else d for d, n in zip(spec.shape, names)))
        out.append(spec)
    return out


def _in_source_order(specs: list[TensorSpec], declared: Declared) -> list[TensorSpec]:
    """``specs`` in the order the source declared them, where it names the same inputs."""
    order = declared.input_order
    if sorted(order) != sorted(s.name for s in specs):
        return specs
    by_name = {s.name: s for s in specs}
    return [by_name[n] for n in order]


def _same_layout(specs: list[TensorSpec], name: str, declared: tuple | None) -> bool:
    """Whether output ``name`` has the source's rank and, fixed, every size the source fixes (an NHWC
    output of an NCHW source would get its dim names on the wrong axes)."""
    spec = next((s for s in specs if s.name == name), None)
    if spec is None or spec.shape is None or declared is None or len(spec.shape) != len(declared):
        return False
    return all(not isinstance(b, int) or a == b for a, b in zip(spec.shape, declared))  # what the source fixes


def _card_declared(path: Path, specs: list[TensorSpec]) -> tuple[Declared, dict]:
    """What the card embedded in a lone model file declares of the source's inputs and outputs
    (TFLite and IR lose dim names and may reorder; none keeps dim limits or value ranges), and the
    card. Nothing where the card is malformed, or names other inputs than ``specs`` (a file another
    tool edited after conversion runs on what it declares itself)."""
    card = formats.read_card(path, formats.detect(path))
    try:
        facts = package_mod.declared(card, path) if card else Declared()
    except ModelFileError as e:  # the card is a convenience: the model runs without it
        log.warning("%s: its embedded card is ignored (%s)", path.name, e)
        return Declared(), card
    if facts.input_order and sorted(facts.input_order) != sorted(s.name for s in _source_names(specs, facts)):
        log.warning("%s: its embedded card describes inputs %s, the file has %s: the card's dims, "
                    "ranges and shapes are ignored", path.name, ", ".join(facts.input_order),
                    ", ".join(s.name for s in specs))
        return Declared(), card
    return facts, card


def _unit_dims_moved(have, want) -> bool:
    """Whether static shapes ``have`` and ``want`` differ only in where their size-1 dims sit, so
    that a reshape keeps every value in place. Only where the other sizes all differ: [1, 8, 1, 8]
    against [1, 1, 8, 8] may be a channels-last transpose, which a reshape would scramble."""
    if not have or not want or have == want or len(have) != len(want):
        return False
    if not all(isinstance(d, int) for d in (*have, *want)):
        return False
    sizes = [d for d in have if d != 1]
    return len(set(sizes)) == len(sizes) and sizes == [d for d in want if d != 1]


def _closed(arrays):
    raise EdgekitError("this model was closed; load it again to run it")


class Model:
    """A model opened on one backend and device. Thread-safe: call ``run`` from any thread.

    Attributes:
        inputs, outputs: ``TensorSpec`` lists in the model's order.
        backend: the runtime that runs it ("onnxruntime", "openvino", "litert", ...).
        device: the device id within that backend ("CPU", "CUDAExecutionProvider", ...).
        precision: what the runtime computes at ("f32", "as stored", "bf16", ...).
        selection: every candidate considered and what happened to it.
        path: the file actually running (the chosen artifact of a package).
    """

    def __init__(self, session, *, backend: str, device: str, selection: Selection, path: Path,
                 source: Path, package=None) -> None:
        self._session = session
        self._run = session.run
        self.backend = backend
        self.device = device
        self.selection = selection
        self.path = path
        self.source = source
        self.package = package
        self.precision = session.precision
        facts, card = (package.declared, None) if package is not None else _card_declared(path, session.inputs)
        in_specs = _declared(_source_names(list(session.inputs), facts), facts.dim_names)
        # Every artifact of a package takes its inputs in the source's order, so a list (or the
        # server's positional tensors) means the same on each: onnx2tf's TFLite files list them
        # sorted by tensor index (MiniLM's attention_mask first).
        self.inputs: list[TensorSpec] = _in_source_order(in_specs, facts)
        self._to_session = None if self.inputs == in_specs else [self.inputs.index(s) for s in in_specs]
        self._session_specs = in_specs
        # A scalar of the source is a one-element vector in a TFLite file: it takes the scalar.
        self._scalars = [i for i, s in enumerate(self.inputs) if s.name in facts.scalars and s.shape in ((1,), (None,))]
        for i in self._scalars:
            self.inputs[i] = replace(self.inputs[i], shape=())
        self.outputs: list[TensorSpec] = list(session.outputs)
        # onnx2tf may move a size-1 dim of an output (Silero's state [2, 1, 128] comes back [1, 2, 128]):
        # the same values in the same order, so the source's shape is given back, as on every artifact.
        wanted = facts.output_shapes
        self._out_shapes = {i: (s.shape, wanted[s.name]) for i, s in enumerate(self.outputs)
                            if _unit_dims_moved(s.shape, wanted.get(s.name))}
        for i, (_, shape) in self._out_shapes.items():
            self.outputs[i] = replace(self.outputs[i], shape=shape)
        # ... and its outputs in the source's order, as its inputs (onnx2tf's TFLite sorts them by name)
        names = [s.name for s in self.outputs]
        self._out_order = None
        if sorted(facts.output_order) == sorted(names) and list(facts.output_order) != names:
            self._out_order = [names.index(n) for n in facts.output_order]
            self.outputs = [self.outputs[i] for i in self._out_order]
        # ... and the dim names it declared, where the artifact's output is laid out as the source's
        self.outputs = _declared(self.outputs, {n: names for n, names in facts.output_dim_names.items()
                                                if _same_layout(self.outputs, n, wanted.get(n))})
        self._checks = [_InputCheck(s) for s in self.inputs]
        # ONNX's dim_param names one size wherever it appears (MiniLM's ``batch`` and ``sequence``).
        # Runtimes do not check it: ONNX Runtime failed inside an Add node on a sequence of 2 against a
        # mask of 3, and broadcast a batch of 1 against 2 into a wrong answer of 2 rows. A package may
        # also cap a dim (MiniLM's 512 positions), past which the runtimes fail deep in the graph.
        limits = facts.dim_max
        self._dims = [(dim, places, limits.get(dim)) for dim, places in _named_dims(self.inputs).items()
                      if len(places) > 1 or dim in limits]
        # ... and the ids its embedding tables hold: past them ONNX Runtime refuses the Gather, and
        # OpenVINO read past the table into a plausible embedding of nothing.
        ranges = facts.value_range
        self._ranges = [(i, s.name, *ranges[s.name]) for i, s in enumerate(self.inputs) if s.name in ranges]
        self._in_names = [s.name for s in self.inputs]
        self._in_set = frozenset(self._in_names)
        self._out_names = [s.name for s in self.outputs]
        self._card: dict | None = card
        self._opened_as: tuple | None = None  # (source, candidate, precision), for reopen()

    def reopen(self, concurrency: int = 1) -> Model:
        """The same file on the same device and at the same precision, opened again as a second
        Model for ``concurrency`` runs at once (see :func:`load`). The server keeps such a copy with
        every core for a request that arrives alone at a model it loaded for several runs at once.
        Nothing is chosen again, and nothing is checked again (its checksum, a first inference): it
        opens as this one did, or raises."""
        from .selection import open_again

        opened = self._opened_as
        if opened is None:
            raise UsageError("only a model made by edgekit.load can be opened again")
        source, cand, precision = opened
        session = open_again(source, cand, precision, concurrency)
        model = Model(session, backend=self.backend, device=self.device, selection=self.selection,
                      path=self.path, source=self.source, package=self.package)
        model._opened_as = opened
        return model

    @property
    def dim_limits(self) -> dict[str, int]:
        """The largest size of each named input dim that has one (MiniLM's ``sequence``: 512), as the
        package or card declares; ``run`` refuses more with InputError."""
        return {dim: top for dim, _, top in self._dims if top is not None}

    @functools.cached_property
    def cross_row(self) -> str | None:
        """Why one row's result depends on the other rows it runs with, or None when it does not.

        A graph that quantizes activations dynamically (ONNX Runtime's int8 recipe for transformers)
        takes one scale per run, so a text embeds differently alone and in a batch: tasks run such
        a model one row at a time, and the server does not batch it.
        """
        if formats.detect(self.path) is not formats.Format.ONNX:
            return None
        try:
            ops = sorted(formats.onnx_op_types(self.path) & formats.CROSS_ROW_OPS)
        except (OSError, ValueError):  # the runtime opened it: what it holds is not this check's to judge
            return None
        return f"it quantizes activations per run ({', '.join(ops)}), over all its rows at once" if ops else None

    @property
    def metadata(self) -> dict:
        """The package manifest (task, labels, pre-processing); for a lone file, the card the
        converter embedded in it, or {}."""
        if self.package is not None:
            return dict(self.package.manifest)
        if self._card is None:
            self._card = formats.read_card(self.path, formats.detect(self.path))
        return dict(self._card)

    def run(self, inputs: Mapping[str, object] | Sequence[object] | np.ndarray) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            inputs: a dict name -> array, a list in input order, or one array for a
                single-input model. Arrays are checked against ``inputs`` first.

        Returns:
            dict output name -> array, in output order.

        Raises:
            InputError: a missing/unknown name, a wrong dtype (see the cast policy in
                the README), rank or static dim; the message names the input.
        """
        checks = self._checks
        if isinstance(inputs, Mapping):
            if len(inputs) != len(checks) or not self._in_set.issuperset(inputs):
                self._name_error(inputs)
            arrays = [c(inputs[c.spec.name]) for c in checks]
        elif isinstance(inputs, (list, tuple)) and len(checks) == 1 and not (
                len(inputs) == 1 and checks[0].rank in (None, np.ndim(inputs[0]))):
            arrays = [checks[0](inputs)]  # a one-input model's array given as nested lists
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) != len(checks):
                raise InputError(f"expected {len(checks)} inputs ({', '.join(self._in_names)}), "
                                 f"got a sequence of {len(inputs)}")
            arrays = [c(x) for c, x in zip(checks, inputs)]
        else:
            if len(checks) != 1:
                raise InputError(f"this model has {len(checks)} inputs ({', '.join(self._in_names)}): "
                                 f"pass a dict or a list")
            arrays = [checks[0](inputs)]
        for dim, places, top in self._dims:
            sizes = [arrays[i].shape[d] for i, d in places]
            if any(n != sizes[0] for n in sizes):
                seen = ", ".join(f"{self._in_names[i]} {n}" for (i, _), n in zip(places, sizes))
                raise InputError(f"inputs disagree on dimension {dim!r}, which must be one size: {seen}")
            if top is not None and sizes[0] > top:
                raise InputError(f"input {self._in_names[places[0][0]]!r}: dimension {dim!r} is {sizes[0]}, "
                                 f"over this model's limit of {top}")
        for i, name, lo, hi in self._ranges:
            x = arrays[i]
            if x.size and (x.min() < lo or x.max() > hi):
                bad = x.min() if x.min() < lo else x.max()
                raise InputError(f"input {name!r}: values must be from {lo} to {hi} for this model, got {bad}")
        for i in self._scalars:
            arrays[i] = arrays[i].reshape(1)
        if self._to_session is not None:
            arrays = [arrays[i] for i in self._to_session]
        try:
            outputs = self._run(arrays)
        except Exception as e:
            if self._session is None:  # closed by another thread while this run was under way
                _closed(arrays)
            if isinstance(e, EdgekitError):
                raise
            raise self._runtime_error(e, arrays) from e
        if self._out_shapes:  # only where the runtime answered in the shape it reported
            outputs = [np.reshape(y, self._out_shapes[i][1])
                       if i in self._out_shapes and np.shape(y) == self._out_shapes[i][0] else y
                       for i, y in enumerate(outputs)]
        if self._out_order is not None:
            outputs = [outputs[i] for i in self._out_order]
        return dict(zip(self._out_names, outputs))

    __call__ = run

    def _runtime_error(self, e: Exception, arrays: list[np.ndarray]) -> EdgekitError:
        """Translate a runtime's own exception at the boundary; the cause is kept as __cause__."""
        text = " ".join(str(e).split())[:500] or type(e).__name__
        where = f"{self.backend}:{self.device}"
        # What the runtimes raise for inputs they refuse (ORT InvalidArgument, LiteRT ValueError)
        if type(e).__name__ == "InvalidArgument" or isinstance(e, ValueError):
            return InputError(f"{where} rejected the inputs: {text}")
        # An empty input the graph cannot take (MiniLM on a sequence of 0 fails inside ONNX Runtime):
        # the input is what is wrong, whatever the runtime calls it. (Empty inputs can be legitimate,
        # such as a key-value cache before the first token, so they are not refused up front.)
        empty = [s.name for s, x in zip(self._session_specs, arrays) if x.size == 0]
        if empty:
            return InputError(f"{where} failed on the empty input {', '.join(map(repr, empty))}: {text}")
        return BackendError(f"{where} failed to run {self.path.name}: {text}")

    def _name_error(self, inputs: Mapping) -> None:
        missing = [n for n in self._in_names if n not in inputs]
        unknown = [str(n) for n in inputs if n not in self._in_set]
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown {', '.join(map(repr, unknown))}")
        raise InputError(f"inputs do not match the model: {'; '.join(parts)} "
                         f"(expected {', '.join(self._in_names)})")

    def close(self) -> None:
        """Release the runtime's resources; the model cannot run afterwards."""
        if self._session is not None:
            self._session.close()
            self._session = None
            self._run = _closed

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<edgekit.Model {self.path.name} on {self.backend}:{self.device} ({self.precision})>"


def load(path: str | Path, device: str = "auto", *, precision: str | Precision | None = None,
         strict: bool = False, verify: bool = True, cache: bool = True, concurrency: int = 1) -> Model:
    """Open a model on the best device for ``device`` and return a :class:`Model`.

    Args:
        path: a .onnx, .xml (+ .bin) or .tflite file, or a package folder with edgekit.json.
        device: "auto", "fastest", "cpu", "gpu", "npu", "tpu", a backend name
            ("onnxruntime", "openvino", "litert") or "backend:device" ("openvino:CPU").
        precision: "stored" (default: the precision the model was stored in), "fp32" (the
            same, on files stored in fp32 only: a package's int8 and fp16 files are passed over),
            "fp16"/"bf16" to compute in reduced precision where the device can, or
            "any" to let each runtime use its own default.
        strict: raise on the first candidate that fails instead of falling back.
        verify: run one inference on synthetic inputs while choosing, so a candidate
            that opens but cannot run is passed over.
        cache: let ``fastest`` reuse (and store) its measured decision.
        concurrency: how many ``run`` calls the caller makes at once (a server's instances). At 1
            (the default) each run gets every core, for the lowest latency. Above 1 the runtime
            divides the cores between the runs, for throughput: OpenVINO's THROUGHPUT hint with
            that many requests (streams), ONNX Runtime's threads shared out, a LiteRT interpreter
            per run (on CPU; an accelerator keeps one).

    Raises:
        ModelFileError: the file or package is missing, corrupt or of an unknown kind.
        DeviceNotAvailableError: an explicitly requested backend/device, or precision, cannot be used.
        NoCandidateError: every candidate failed (``.selection`` says how).
    """
    try:
        runs = 0 if isinstance(concurrency, bool) else operator.index(concurrency)  # any integer type
    except TypeError:
        runs = 0
    if runs < 1:
        raise UsageError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"path must be a model file or package folder (str or Path), not {type(path).__name__}")
    policy = parse_policy(device)
    prec = Precision.parse(precision)
    source = resolve_source(path)
    session, cand, selection = select(source, policy, prec, strict=strict, verify=verify,
                                      use_cache=cache, concurrency=runs)
    model = Model(session, backend=cand.backend, device=cand.device.id, selection=selection,
                  path=cand.artifact.path, source=source.path, package=source.package)
    model._opened_as = (source, cand, prec)
    log.info("%s: running on %s:%s (%s)", source.path.name, cand.backend, cand.device.id, model.precision)
    return model
