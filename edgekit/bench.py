"""Timing shared by ``device="fastest"`` and ``edgekit bench``: one way to measure.

    from edgekit.bench import measure, synthetic_inputs
    feeds = synthetic_inputs(model.inputs)
    stats = measure(lambda: model.run(feeds), warmup=3, runs=20)
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import BackendError
from .types import TensorSpec, fits, in_layout

log = logging.getLogger("edgekit")


@dataclass(frozen=True)
class Timing:
    """Latency statistics in milliseconds over ``runs`` timed calls."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    @property
    def throughput(self) -> float:
        """Calls per second at batch 1, from the median."""
        return 1000.0 / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"runs": self.runs, "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
                "p99_ms": self.p99_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms,
                "throughput_per_s": self.throughput}


def measure(call: Callable[[], object], *, warmup: int = 3, runs: int = 20,
            budget_s: float | None = None, progress: Callable[[int, int], None] | None = None) -> Timing:
    """Time ``call`` after ``warmup`` untimed calls.

    Stops early after ``budget_s`` seconds of timed calls (at least 3 runs), so a
    slow candidate cannot stall ``fastest``.
    """
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if progress:
            progress(i + 1, runs)
        if budget_s is not None and len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    ms = np.asarray(times) * 1e3
    return Timing(len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                  float(np.percentile(ms, 99)), float(ms.mean()), float(ms.min()))


def warmup_sizes(model) -> dict | None:
    """``model``'s warm-up inputs (sizes and values a streaming model needs): its package's or card's,
    or for a package's artifact loaded as a lone file, that package's."""
    from . import formats
    from .selection import lone_file_warmup

    return warmup_of(model.metadata) or (
        None if model.package else lone_file_warmup(model.path, formats.detect(model.path)))


def warmup_of(meta: dict) -> dict | None:
    """``meta``'s (a package's manifest, a file's card) ``warmup_inputs``, each entry told the layout
    its shape is given in: the source's, as ``meta``'s ``inputs`` declare it, unless the entry says.
    An NHWC artifact then takes the size moved to its axes even where it would fit as it is (an image
    3 pixels wide and 3 channels deep)."""
    warmup = meta.get("warmup_inputs")
    if not isinstance(warmup, dict):
        return None
    inputs = meta.get("inputs") if isinstance(meta.get("inputs"), list) else []
    layouts = {s.get("name"): s.get("layout") for s in inputs if isinstance(s, dict)}
    return {name: {"layout": layouts[name], **entry}
            if isinstance(entry, dict) and layouts.get(name) in ("NCHW", "NHWC") else entry
            for name, entry in warmup.items()}


def timing_sizes(specs: Sequence[TensorSpec], peers: Iterable[Sequence[TensorSpec]],
                 warmup: dict | None = None) -> dict:
    """The sizes to time a model with inputs ``specs`` at, beside ``peers`` (the inputs of every candidate
    compared with it: the other artifacts, backends and devices of the same model), as a ``warmup`` dict
    for :func:`synthetic_inputs`. One rule for ``device="fastest"`` and ``edgekit bench``, so that the
    candidates are timed on the same input sizes:

    1. an input's shape in ``warmup`` (the package's ``warmup_inputs``) where it gives one;
    2. else each dim this model leaves open takes the size a peer fixes for it (the same input and
       rank, agreeing wherever both are fixed, an NHWC peer's sizes moved to NCHW and the other way
       round), the largest where peers fix different sizes;
       a named dim ("sequence") takes one size in every input that names it;
    3. else 1 (:func:`synthetic_inputs`' guess).

    Rule 2 is why there is a rule: a TFLite text model fixes its sequence at 256 tokens, and its ONNX
    sibling, timed at 1 token, looked 30 times faster than it is at 256 (MiniLM: 1.1 ms against 34 ms).
    """
    peers = [list(p) for p in peers]
    out = {name: dict(entry) for name, entry in (warmup or {}).items() if isinstance(entry, dict)}
    for spec in specs:  # given in the source's layout: as this model lays the input out (and so no layout)
        entry = out.get(spec.name, {})
        given = entry.pop("layout", None)
        if isinstance(entry.get("shape"), (list, tuple)):
            entry["shape"] = list(_in_spec_layout(tuple(entry["shape"]), spec, given))
    open_specs = [s for s in specs if s.shape is not None and "shape" not in out.get(s.name, {})
                  and not all(isinstance(d, int) for d in s.shape)]
    fixed: dict[tuple[str, int], set[int]] = {}  # (input, axis) -> the sizes peers fix there
    named: dict[str, set[int]] = {}  # a named dim ("sequence") -> the same, wherever it appears
    for spec in open_specs:
        for peer in peers:
            other = next((o for o in peer if o.name == spec.name), None)
            if other is not None and other.shape is not None and spec.layout and other.layout:
                other = replace(other, shape=in_layout(other.shape, other.layout, spec.layout), layout=spec.layout)
            if other is None or not _alike(spec, other):
                continue
            for i, (mine, theirs) in enumerate(zip(spec.shape, other.shape)):
                if not isinstance(mine, int) and isinstance(theirs, int):
                    fixed.setdefault((spec.name, i), set()).add(theirs)
                    if isinstance(mine, str):
                        named.setdefault(mine, set()).add(theirs)
    for spec in open_specs:
        # by the dim's name where it has one, so every input naming it agrees (an input no peer has,
        # token_type_ids, takes the sequence the others are given, or the model refuses the feed)
        sizes: list = []  # per axis: the model's own size, the peers' sizes (a set), or None
        for i, d in enumerate(spec.shape):
            if isinstance(d, int):
                sizes.append(d)
            else:
                sizes.append((named.get(d) if isinstance(d, str) else None) or fixed.get((spec.name, i)))
        if not any(isinstance(x, set) for x in sizes):
            continue
        if any(isinstance(x, set) and len(x) > 1 for x in sizes):
            log.info("input %r: the candidates fix different sizes %s; the others are timed at the largest",
                     spec.name, [sorted(x) if isinstance(x, set) else x for x in sizes])
        out[spec.name] = {**out.get(spec.name, {}),
                          "shape": [max(x) if isinstance(x, set) else x if isinstance(x, int) else 1 for x in sizes]}
    return out


def _in_spec_layout(shape: tuple[int, ...], spec: TensorSpec, given: str | None = None) -> tuple[int, ...]:
    """A package's size for ``spec``, given in the source's layout (``given``, where known): moved to
    the spec's NHWC or NCHW ([1, 3, 48, 48] for a TFLite [1, 48, 48, 3]). Where ``given`` is not known,
    only where the move alone fits the spec's fixed dims."""
    if spec.shape is None or spec.layout not in ("NCHW", "NHWC"):
        return shape
    if given in ("NCHW", "NHWC"):
        moved = in_layout(shape, given, spec.layout)
        if fits(moved, spec.shape):
            return moved  # else the declaration is wrong: guessed as below
    if fits(shape, spec.shape):
        return shape
    other = "NHWC" if spec.layout == "NCHW" else "NCHW"
    moved = in_layout(shape, other, spec.layout)
    return moved if fits(moved, spec.shape) else shape


def _alike(a: TensorSpec, b: TensorSpec) -> bool:
    """One input as two candidates see it: the same rank and layout, sizes agreeing wherever both are fixed."""
    return (a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape)
            and (a.layout is None or b.layout is None or a.layout == b.layout)
            and all(x == y for x, y in zip(a.shape, b.shape) if isinstance(x, int) and isinstance(y, int)))


def synthetic_inputs(specs: list[TensorSpec], *, dynamic: int = 1, seed: int = 0,
                     warmup: dict | None = None, batch: int | None = None, integer: int = 0) -> dict[str, np.ndarray]:
    """Inputs matching ``specs``: dynamic dims set to ``dynamic``; floats random, integers
    ``integer``, booleans False. With ``batch``, a dynamic first dim is ``batch`` instead.

    Integers are 0 by default, an index into any table (a one-row ``token_type_ids`` table refuses
    1); 1 is the other choice where 0 asks for nothing (TopK's k, a count). A mask (an input named
    so, such as ``attention_mask``) is 1 (True) whatever ``integer`` is: all 0, it masks out every
    token, and a transformer's output is meaningless.

    ``warmup`` (a package's ``warmup_inputs``, like Triton's model_warmup) gives, per input
    name, ``{"shape": [...], "value": v}`` for models that need real sizes or values
    (a streaming audio model needs a whole window and its sample rate).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    warmup = warmup or {}
    for s in specs:
        given = warmup.get(s.name) or {}
        if "shape" in given:
            shape = _in_spec_layout(tuple(int(d) for d in given["shape"]), s, given.get("layout"))
        else:
            shape = (dynamic,) if s.shape is None else tuple(d if isinstance(d, int) else dynamic for d in s.shape)
        if batch is not None and s.shape and not isinstance(s.shape[0], int) and shape:
            shape = (batch, *shape[1:])
        if "value" in given:
            feeds[s.name] = np.full(shape, given["value"], dtype=s.dtype)
        elif s.dtype.kind == "f":
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype.kind == "O":
            feeds[s.name] = np.full(shape, "", dtype=object)
        elif "mask" in s.name.lower():
            feeds[s.name] = np.ones(shape, dtype=s.dtype)
        else:
            feeds[s.name] = np.full(shape, integer if s.dtype != np.bool_ else 0, dtype=s.dtype)
    return feeds


def targets(path, problems: list[str] | None = None, *, precision=None,
            skipped: list[dict] | None = None) -> list[tuple[Path, str]]:
    """Every (file, "backend:device") that can run ``path``, best-ranked first: each artifact of a
    package as a lone file (its checksum verified here), on every available device that reads it.

    A package's artifact that fails verification (checksum, damaged or missing file) is left out,
    with a warning and a line in ``problems``: the others can still be measured. With a
    ``precision``, a package's files that load would pass over for it are left out too, each
    (device, artifact, reason) in ``skipped``: the package says what a file is stored in.
    """
    from . import package
    from .errors import ModelFileError
    from .selection import build_candidates, parse_policy, resolve_source, split_passed_over

    source = resolve_source(path)
    cands, _ = build_candidates(source, parse_policy("auto"))
    if source.package is not None and precision is not None:
        cands, passed = split_passed_over(cands, precision)
        if skipped is not None:
            skipped += [{"device": f"{c.backend}:{c.device.id}", "artifact": c.artifact.path.name, "reason": why}
                        for c, why in passed]
    if source.package is not None:
        bad = set()
        for artifact in {c.artifact.path: c.artifact for c in cands}.values():
            try:
                package.verify(artifact)
            except ModelFileError as e:
                bad.add(artifact.path)
                log.warning("left out of the benchmark: %s", e)
                if problems is not None:
                    problems.append(str(e))
        cands = [c for c in cands if c.artifact.path not in bad]
    return [(c.artifact.path if source.package else source.path, f"{c.backend}:{c.device.id}") for c in cands]


def target_sizes(chosen: Sequence[tuple[Path | str, str]]) -> dict[str, dict]:
    """The sizes each file of ``chosen`` (as :func:`targets` gives them) is timed at (:func:`timing_sizes`),
    by path, beside every artifact of its package, not only those chosen: a row's sizes, and so its
    figures, do not depend on which others were ticked. Each file is opened once, on the first device
    listed for it, to read its inputs; one that does not open is left to fail in its own run. A
    lone file: {}.

    It loads every file (once per package and process: the GUI benchmarks the same package again and
    again): where the peak memory of later runs matters, call it in a process of its own.
    """
    from . import formats

    wanted = list(dict.fromkeys(str(p) for p, _ in chosen))
    folders = {Path(p).parent for p in wanted}
    manifest = next(iter(folders)) / formats.MANIFEST if len(folders) == 1 else None
    if manifest is not None and manifest.is_file():
        every = _package_sizes(str(manifest.parent), manifest.stat().st_mtime_ns)
    else:
        firsts: dict[str, str] = {}
        for path, device in chosen:
            firsts.setdefault(str(path), device)
        every = _sizes_beside_each_other(firsts)
    return {path: every[path] for path in wanted if path in every}


@functools.lru_cache(maxsize=8)
def _package_sizes(folder: str, manifest_mtime_ns: int) -> dict[str, dict]:
    firsts: dict[str, str] = {}
    for path, device in targets(folder):
        firsts.setdefault(str(path), device)
    return _sizes_beside_each_other(firsts)


def _sizes_beside_each_other(firsts: dict[str, str]) -> dict[str, dict]:
    """:func:`timing_sizes` of each file (path -> the device to open it on) beside all the others."""
    from .errors import EdgekitError
    from .model import load

    if len(firsts) < 2:
        return {}
    specs, warmups = {}, {}
    for path, device in firsts.items():
        try:
            with load(path, device=device, strict=True, verify=False, cache=False) as model:
                specs[path], warmups[path] = model.inputs, warmup_sizes(model)
        except EdgekitError as e:
            log.debug("%s on %s: inputs not read for the shared timing sizes: %s", path, device, e)
    return {path: timing_sizes(inputs, specs.values(), warmups[path]) for path, inputs in specs.items()}


def bench_model(path: str, device: str, *, precision: str | None, runs: int, warmup: int,
                inputs: dict | None = None, sizes: dict | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Load ``path`` on exactly ``device`` and measure it the way ``edgekit bench`` reports.

    Synthetic inputs unless ``inputs`` are given, at ``sizes`` (a ``warmup`` dict: what
    :func:`target_sizes` gives for ``path``) or else the model's own warm-up sizes.

    Meant to run in a fresh process per candidate, so ``peak_rss_mb`` is that
    candidate's own peak (interpreter and runtime included).
    """
    from .model import load

    t0 = time.perf_counter()
    try:
        model = load(path, device=device, precision=precision, strict=True, verify=False, cache=False)
    except BackendError as e:  # strict is this function's own (one device, timed as it is): what the device met
        raise BackendError(str(e.__cause__ or e)) from None
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        feeds = inputs if inputs is not None else synthetic_inputs(
            model.inputs, warmup=sizes if sizes is not None else warmup_sizes(model))
        t0 = time.perf_counter()
        model.run(feeds)
        first_ms = (time.perf_counter() - t0) * 1e3
        timing = measure(lambda: model.run(feeds), warmup=warmup, runs=runs, progress=progress)
    finally:
        model.close()
    row = {"backend": model.backend, "device": model.device, "precision": model.precision,
           "artifact": model.path.name, "load_ms": load_ms, "first_inference_ms": first_ms,
           **timing.to_dict(), "peak_rss_mb": peak_rss_mb(),
           "inputs": {name: list(np.shape(x)) for name, x in feeds.items()}}
    return row


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux, VmHWM: the peak of its own image. getrusage's
    maxrss is kept across exec, so a child spawned by a 500 MB parent reported 515 MB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:  # not Linux
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    except ImportError:  # Windows
        import psutil

        return psutil.Process().memory_info().peak_wset / (1024 * 1024)
