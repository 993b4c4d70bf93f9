"""Every artifact against its source: fidelity on real inputs, latency measured side by side."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from edgekit.formats import signature_base
from edgekit.hostinfo import has_int8_dot, is_x86
from edgekit.types import Format, TensorSpec, fits

from .report import MIN_COSINE, ArtifactReport, max_relative_error, one_line
from .sources import RUNTIME_OF

CLASSIFIER_TASKS = {"image-classification", "text-classification", "audio-classification"}
# Added to an int8 parity failure on an x86 CPU without int8 dot products (edgekit.hostinfo.INT8_DOT_FLAGS).
SATURATION_NOTE = "this CPU has no VNNI: 8-bit weights saturate its int8 kernels; a VNNI CPU may pass"


def adapt(x: np.ndarray, spec: TensorSpec, layout: str | None = None) -> np.ndarray:
    """``x`` (laid out as the source wants: ``layout``, where known) in the layout ``spec`` wants:
    NCHW <-> NHWC, padded sequences, a scalar as the one-element vector onnx2tf makes of it. Without
    ``layout``, channels are moved only where ``x`` does not fit as it is (an image 3 pixels wide with
    3 channels fits either way)."""
    if x.ndim == 0 and spec.shape is not None and len(spec.shape) == 1 and spec.shape[0] in (1, None):
        return x.reshape(1)
    if spec.shape is None or len(spec.shape) != x.ndim:
        return x
    if x.ndim == 4 and {layout, spec.layout} == {"NCHW", "NHWC"}:
        moved = np.moveaxis(x, 1, -1) if layout == "NCHW" else np.moveaxis(x, -1, 1)
        if fits(moved.shape, spec.shape):
            return np.ascontiguousarray(moved)
    if fits(x.shape, spec.shape):
        return x
    if x.ndim >= 3:
        moved = np.moveaxis(x, 1, -1)  # channels first -> channels last (onnx2tf's NHWC)
        if fits(moved.shape, spec.shape):
            return np.ascontiguousarray(moved)
    if x.ndim == 2 and isinstance(spec.shape[1], int) and x.shape[1] < spec.shape[1]:
        return np.pad(x, ((0, 0), (0, spec.shape[1] - x.shape[1])))  # token ids padded (mask 0) to a static length
    return x


def align(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """An artifact's output in the source's layout (channels-last outputs moved back)."""
    if y.shape == ref.shape:
        return y
    if y.ndim == ref.ndim and y.ndim >= 3:
        moved = np.moveaxis(y, -1, 1)
        if moved.shape == ref.shape:
            return moved
    if y.size == ref.size:
        return y.reshape(ref.shape)
    raise ValueError(f"output shape {y.shape} does not match the source's {ref.shape}")


def matching_names(given: list[str], names: list[set[str]]) -> list[int] | None:
    """For each of the ``given`` input names, the index of the input in ``names`` (each input's
    names) that it is: the same name, or TensorFlow's signature name for it ("input_ids" is
    "serving_default_input_ids:0" in an IR made from a TFLite file, in another order). None where
    one is not found; a lone input is itself whatever its names."""
    found = []
    for name in given:
        index = next((i for i, ns in enumerate(names) if name in ns or name in {signature_base(n) for n in ns}), None)
        if index is None:
            return [0] if len(given) == len(names) == 1 else None
        found.append(index)
    return found if len(set(found)) == len(found) else None


def outputs_of(model, feed: dict, names: list[str], layouts: dict | None = None) -> list[np.ndarray]:
    """Run ``model`` on a source-layout ``feed`` (``layouts``: the source's, by input name); outputs in
    the source's order (by name, else position)."""
    specs = list(model.inputs)
    layouts = layouts or {}
    found = matching_names(list(feed), [{s.name} for s in specs])
    if found is not None:
        feed = {specs[i].name: adapt(v, specs[i], layouts.get(k)) for i, (k, v) in zip(found, feed.items())}
    elif len(feed) == len(specs):  # names that match nothing: go by position
        feed = {s.name: adapt(v, s, layouts.get(k)) for s, (k, v) in zip(specs, feed.items())}
    else:
        by_name = {s.name: s for s in specs}
        feed = {k: adapt(v, by_name[k], layouts.get(k)) if k in by_name else v for k, v in feed.items()}
    out = model.run(feed)
    if all(n in out for n in names):
        return [out[n] for n in names]
    return list(out.values())


def fidelity(refs: list[list[np.ndarray]], outs: list[list[np.ndarray]], classifier: bool) -> dict:
    """Max abs error over all outputs of all samples; cosine of the worst output, each output's values over
    all samples (a VAD's one probability is not hidden behind its 256 state values); top-1 agreement of the
    first output."""
    errors, cosines, relative = [0.0], [], [0.0]
    for k in range(len(refs[0]) if refs else 0):
        a = np.concatenate([np.ravel(sr[k]).astype(np.float64) for sr in refs])
        b = np.concatenate([np.ravel(align(np.asarray(so[k]), sr[k])).astype(np.float64) for so, sr in zip(outs, refs)])
        if a.size:
            errors.append(float(np.abs(a - b).max()))
        cosines.append(float("nan") if np.isnan(b).any() else _cosine(a, b))
        relative.append(float("nan") if np.isnan(b).any() else relative_error(a, b))
    result = {"max_abs_error": float(np.max(errors)), "cosine": float(np.min(cosines)) if cosines else 1.0,
              "relative_error": float(np.max(relative))}
    if classifier:
        agree = [np.argmax(np.ravel(sr[0])) == np.argmax(np.ravel(so[0])) for sr, so in zip(refs, outs)]
        result["top1_agreement"] = float(np.mean(agree))
    return result


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||b - a|| / ||a||: unlike the cosine, it sees ``b`` off in scale (0 where both are zero)."""
    na, nd = np.linalg.norm(a), np.linalg.norm(b - a)
    if na == 0:
        return 0.0 if nd == 0 else float("inf")
    return float(nd / na)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0  # an output that is zero in both (a silent clip's state): identical
    return float(a @ b / (na * nb + 1e-30))


def check(artifacts: list[tuple[ArtifactReport, Path]], feeds: list[dict], refs: list[list[np.ndarray]],
          output_names: list[str], *, classifier: bool, min_cosine: float | None, timing_feed: dict,
          layouts: dict | None = None, rounds: int = 5, runs: int = 10, progress=None) -> None:
    """Fill in fidelity and p50 latency of each artifact (in place); mark failures. ``layouts``: the
    source's input layouts by name, which the feeds are in.

    An artifact fails below ``min_cosine``, or when None below its precision's ``MIN_COSINE``.

    Each artifact runs on its own runtime on the CPU. Latencies are taken in interleaved
    rounds over all artifacts, so the ratios compare like with like on a noisy machine.
    """
    import edgekit
    from edgekit.bench import measure

    opened = []
    for rep, path in artifacts:
        fmt = Format(rep.format)
        try:
            model = edgekit.load(path, device=RUNTIME_OF[fmt])
            outs = [outputs_of(model, f, output_names, layouts) for f in feeds]
            rep.__dict__.update(fidelity(refs, outs, classifier))
        except Exception as e:
            rep.status, rep.reason = "failed", f"does not run: {one_line(e)}"
            continue
        floor = min_cosine if min_cosine is not None else MIN_COSINE[rep.precision]
        if not np.isfinite(rep.cosine) or rep.cosine < floor:
            rep.status, rep.reason = "failed", f"parity: cosine {rep.cosine:.4f} < {floor}"
            if rep.precision.startswith("int8") and is_x86() and has_int8_dot() is False:
                rep.reason += f" ({SATURATION_NOTE})"
        elif not rep.relative_error <= (most := max_relative_error(floor)):
            rep.status, rep.reason = "failed", (f"parity: relative error {rep.relative_error:.3g} > {most:.3g} "
                                                f"at cosine {rep.cosine:.4f} (outputs off in scale)")
        feed = {s.name: adapt(v, s, (layouts or {}).get(s.name))
                for s, v in zip(model.inputs, _ordered(timing_feed, model))}
        opened.append((rep, model, feed))
        if progress:
            progress(f"checked {rep.path}: cosine {rep.cosine:.5f}, max abs error {rep.max_abs_error:.3g}")
    samples: dict[int, list[float]] = {id(rep): [] for rep, _, _ in opened}
    for _ in range(rounds):
        for rep, model, feed in opened:
            time.sleep(0.05)  # let the previous runtime's worker threads stop spinning: they would steal a core
            samples[id(rep)].append(measure(lambda m=model, f=feed: m.run(f), warmup=2, runs=runs).p50_ms)
    for rep, model, _ in opened:
        rep.p50_ms = statistics.median(samples[id(rep)])
        model.close()
    _speedups([rep for rep, _ in artifacts])


def _ordered(feed: dict, model) -> list[np.ndarray]:
    names = [s.name for s in model.inputs]
    if all(n in feed for n in names):
        return [feed[n] for n in names]
    return list(feed.values())


def _speedups(reports: list[ArtifactReport]) -> None:
    """Speed of each artifact over its target's fp32 sibling; slower ones are flagged."""
    base = {r.target: r.p50_ms for r in reports if r.precision == "fp32" and r.p50_ms}
    for r in reports:
        if r.p50_ms and r.target in base and r.precision != "fp32":
            r.speedup = base[r.target] / r.p50_ms
            if r.speedup < 0.95:
                r.notes.append(f"slower than fp32 on this CPU ({r.speedup:.2f}x)")
