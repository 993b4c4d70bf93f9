"""Where a model runs: candidates (artifact, backend, device), ranked by a policy, tried in order.

Policies (``device=``):
- ``auto``: accelerators first (GPU, then NPU/TPU, then CPU); within a kind the format's
  own runtime first; a candidate that fails to open or fails its first inference is
  recorded and the next one tried, with a warning.
- ``fastest``: open every candidate, time each on the model at the input sizes they share
  (:func:`edgekit.bench.timing_sizes`), keep the quickest; the choice is cached (see
  :mod:`edgekit.cache`).
- ``cpu`` / ``gpu`` / ``npu`` / ``tpu``: only devices of that kind.
- ``<backend>`` / ``<backend>:<device>``: only that backend / exactly that device.
An explicit request that cannot be met raises; ``strict=True`` raises on the first
failure under any policy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import backends, cache, formats, package
from .bench import measure, synthetic_inputs, timing_sizes, warmup_of
from .errors import BackendError, DeviceNotAvailableError, EdgekitError, ModelFileError, NoCandidateError, UsageError
from .hostinfo import has_int8_dot
from .package import Artifact, Package
from .types import Attempt, Device, DeviceKind, Format, Precision, Selection

log = logging.getLogger("edgekit")

KIND_RANK = {DeviceKind.GPU: 0, DeviceKind.TPU: 1, DeviceKind.NPU: 1, DeviceKind.CPU: 2}
# Artifact precision preferred on each device kind (packages only), best first.
_PRECISION_PREFERENCE = {
    DeviceKind.GPU: ("fp16", "fp32", "int8"),
    DeviceKind.NPU: ("int8", "fp16", "fp32"),
    DeviceKind.TPU: ("int8", "fp16", "fp32"),
}
FASTEST_WARMUP, FASTEST_RUNS, FASTEST_BUDGET_S = 2, 10, 1.0


@dataclass(frozen=True)
class Policy:
    text: str
    mode: str  # "auto" | "fastest" | "kind" | "backend" | "exact"
    kind: DeviceKind | None = None
    backend: str | None = None
    device_id: str | None = None


def parse_policy(text: str | None) -> Policy:
    """Parse ``device=``: auto | fastest | cpu | gpu | npu | tpu | <backend> | <backend>:<device>."""
    if text is not None and not isinstance(text, str):
        raise UsageError(f"device must be a string such as 'auto', 'cpu' or 'openvino:CPU', not {text!r}")
    if text is not None and not text.strip():  # --device "": a mistake, not a request for auto
        raise UsageError("empty device; use auto, fastest, cpu, gpu, npu, tpu, a backend or backend:device")
    text = (text or "auto").strip()
    low = text.lower()
    if low in ("auto", "fastest"):
        return Policy(low, low)
    if low in {k.value for k in DeviceKind}:
        return Policy(low, "kind", kind=DeviceKind(low))
    name, sep, dev = text.partition(":")
    canonical = backends.resolve_name(name)
    if canonical is None:
        raise UsageError(
            f"unknown device {text!r}; use auto, fastest, cpu, gpu, npu, tpu, a backend "
            f"({', '.join(backends.names())}) or backend:device (see `edgekit devices`)"
        )
    if sep and not dev:
        raise UsageError(f"device {text!r} names no device after ':'")
    return Policy(text, "exact" if sep else "backend", backend=canonical, device_id=dev or None)


@dataclass
class Source:
    """What is being loaded: one model file, or a package with several artifacts."""

    path: Path
    artifacts: list[Artifact]
    package: Package | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def hash(self) -> str:
        if self._hash is None:
            if self.package is not None:
                self._hash = formats.sha256_files([self.path / formats.MANIFEST])
            else:
                a = self.artifacts[0]
                self._hash = formats.sha256_files(formats.model_files(a.path, a.format))
        return self._hash


def resolve_source(path: str | Path) -> Source:
    p = Path(path).expanduser()
    if p.is_dir():
        pkg = package.read(p)
        return Source(p, pkg.artifacts, pkg)
    if not p.exists():
        raise ModelFileError(p, "no such file or package folder")
    fmt = formats.detect(p)
    formats.validate(p, fmt)
    return Source(p, [Artifact(path=p, format=fmt, precision="stored")])


@dataclass
class Candidate:
    backend: str
    device: Device
    artifact: Artifact

    def attempt(self, status: str, reason: str = "", *, show_artifact: bool) -> Attempt:
        return Attempt(self.backend, self.device.id, self.device.kind, status, reason,
                       artifact=self.artifact.label if show_artifact else None)


def _matches(policy: Policy, backend: str, device: Device) -> bool:
    if policy.mode == "kind":
        return device.kind is policy.kind
    if policy.mode in ("backend", "exact") and backend != policy.backend:
        return False
    if policy.mode == "exact":
        want = policy.device_id.lower()
        have = device.id.lower()
        return want == have or want == have.removesuffix("executionprovider")
    return True


def _artifact_rank(artifact: Artifact, device: Device) -> int:
    if artifact.precision == "stored":
        return 0
    prefs = _PRECISION_PREFERENCE.get(device.kind)
    if prefs is None:  # CPU: int8 first only where the CPU has int8 dot-product instructions
        int8_fast = "INT8" in device.capabilities and has_int8_dot() is True
        prefs = ("int8", "fp32", "fp16") if int8_fast else ("fp32", "int8", "fp16")
    return prefs.index(artifact.precision) if artifact.precision in prefs else len(prefs)


# A reduced-precision artifact must be measured this much faster than fp32 to be chosen over it: two
# equally fast files timed side by side differ by a few percent (an fp16 TFLite file "1.02x" on a CPU
# with no fp16 arithmetic was picked), and a tie goes to the more faithful file.
LOWER_PRECISION_MARGIN = 1.10


def measured_latency(cand: Candidate) -> float | None:
    """The converter's p50 for this candidate, if it was measured on this CPU by this runtime."""
    art = cand.artifact
    if cand.device.kind is DeviceKind.CPU and art.format in backends.get(cand.backend).native:
        return art.latency_ms
    return None


def build_candidates(source: Source, policy: Policy) -> tuple[list[Candidate], list[Attempt]]:
    """Ranked usable candidates, plus 'skipped' attempts for known-but-unusable ones."""
    show = source.package is not None
    ranked: list[tuple[tuple, Candidate]] = []
    skipped: list[Attempt] = []
    readers = 0
    for order, name in enumerate(backends.names()):
        if policy.backend and name != policy.backend:
            continue
        backend = backends.get(name)
        for artifact in source.artifacts:
            if artifact.format not in backend.formats:
                continue
            readers += 1
            status = backend.status()
            if not status.available:
                skipped.append(Attempt(name, "-", DeviceKind.CPU, "skipped", status.reason or "unavailable"))
                continue
            for dev_order, device in enumerate(backend.devices()):
                if not _matches(policy, name, device):
                    continue
                cand = Candidate(name, device, artifact)
                if not device.available:
                    skipped.append(cand.attempt("skipped", device.reason or "unavailable", show_artifact=show))
                elif artifact.status != "ok":
                    skipped.append(cand.attempt("skipped", f"artifact marked {artifact.status}: "
                                                f"{artifact.reason or 'no reason given'}", show_artifact=show))
                else:
                    # Latencies the converter measured side by side on this CPU decide first; then
                    # the precision this device runs best, the runtime native to the format.
                    latency = measured_latency(cand)
                    if latency and artifact.precision not in ("fp32", "stored"):
                        latency *= LOWER_PRECISION_MARGIN
                    rank = (KIND_RANK[device.kind], (0, latency) if latency else (1, 0.0),
                            _artifact_rank(artifact, device), 0 if artifact.format in backend.native else 1,
                            order, dev_order)
                    ranked.append((rank, cand))
    ranked.sort(key=lambda rc: rc[0])
    if policy.backend and readers == 0:
        fmts = ", ".join(sorted({a.format.value for a in source.artifacts}))
        reads = ", ".join(sorted(f.value for f in backends.get(policy.backend).formats))
        raise DeviceNotAvailableError(f"{source.path}: {policy.backend} cannot read {fmts} models (it reads {reads})")
    return [c for _, c in ranked], skipped


def _named(a: Attempt) -> str:
    """An attempt's reason after its backend:device, unless the reason names it already."""
    return a.reason if a.reason.startswith(a.spec) else f"{a.spec}: {a.reason}"


def _unmet(policy: Policy, skipped: list[Attempt]) -> DeviceNotAvailableError:
    if skipped:
        # one line per device and reason, not per artifact (a package of 9 gave the same one 9 times)
        why = "; ".join(dict.fromkeys(_named(a) for a in skipped))
        return DeviceNotAvailableError(f"device {policy.text!r} is not available here ({why})")
    known = ", ".join(d.spec for d in backends.all_devices() if d.available)
    return DeviceNotAvailableError(f"no device matches {policy.text!r}; available: {known} "
                                   f"(see `edgekit devices`)")


class _Opener:
    """Opens and verifies candidates, remembering artifacts whose files are bad."""

    def __init__(self, source: Source, precision: Precision, verify: bool, concurrency: int = 1) -> None:
        self.source, self.precision, self.verify, self.concurrency = source, precision, verify, concurrency
        self.bad_artifacts: dict[Path, ModelFileError] = {}
        self.checked: set[Path] = set()
        self.warmup = warmup_of(source.package.manifest) if source.package else None
        # Candidates that opened but refused a first inference on sizes guessed for their dynamic dims
        # (no warm-up sizes known): candidate -> the guessed sizes, in words
        self.guesses_refused: dict[int, str] = {}

    def open(self, cand: Candidate, *, verify: bool | None = None):
        """Return an open, verified session, or raise (ModelFileError for a bad file)."""
        art = cand.artifact
        if art.path in self.bad_artifacts:
            raise self.bad_artifacts[art.path]
        asked = _asked_of(cand, self.precision)
        if asked is None and self.precision is Precision.FP32:  # before its checksum: no file is read for it
            raise DeviceNotAvailableError(f"{art.path.name} is {passed_over(cand, self.precision)}")
        if self.source.package is not None and art.path not in self.checked:
            try:
                package.verify(art)
            except ModelFileError as e:
                self.bad_artifacts[art.path] = e
                raise
            self.checked.add(art.path)
        backend = backends.get(cand.backend)
        session = backend.open(art.path, art.format, cand.device, asked or self.precision,
                               concurrency=self.concurrency)
        if self.verify if verify is None else verify:
            try:
                self._first_inference(session, art, cand)
            except Exception as e:
                session.close()
                raise BackendError(f"first inference failed: {_one_line(e)}") from e
        return session

    def _first_inference(self, session, art: Artifact, cand: Candidate) -> None:
        try:
            session.run(list(synthetic_inputs(session.inputs, warmup=self.warmup).values()))
            return
        except Exception as e:
            first = e
        # A lone file's dynamic sizes are guessed (1), which a streaming audio model cannot take:
        # retry with the warm-up inputs of its card or of the package that lists it, where there are.
        warmup = None if self.warmup else lone_file_warmup(art.path, art.format)
        if warmup:
            self.warmup = warmup
            session.run(list(synthetic_inputs(session.inputs, warmup=warmup).values()))
            return
        # Integers of 0 may ask for nothing (OpenVINO refuses TopK with k = 0): try 1s once
        if any(s.dtype.kind in "iub" for s in session.inputs):
            try:
                session.run(list(synthetic_inputs(session.inputs, warmup=self.warmup, integer=1).values()))
                return
            except Exception:
                pass
        # 1 is a safe guess for a batch, but may be too small for a length, a height or a width. On a CPU (no
        # shape to compile for again, no device memory to run out of) guess once more; sizes that run stand in
        # for warm-up sizes, for the other candidates and for timing. Sizes refused again make the candidate
        # one to open unchecked if none opens (see _open_unchecked).
        if self.warmup or cand.device.kind is not DeviceKind.CPU or not any(
                s.shape is None or not all(isinstance(d, int) for d in s.shape[1:]) for s in session.inputs):
            raise first
        again = _second_guess(session.inputs)
        if again is not None:
            try:
                session.run(list(synthetic_inputs(session.inputs, warmup=again).values()))
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                pass
            else:
                self.warmup = again
                return
        tried = _sizes({n: x.shape for n, x in synthetic_inputs(session.inputs).items()})
        self.guesses_refused[id(cand)] = tried + (f"; then {_sizes({n: w['shape'] for n, w in again.items()})}"
                                                  if again else "")
        raise first


GUESS_AGAIN = 64  # the second guess for dynamic dims past the batch (a multiple of a detector's stride 32)
MAX_GUESSED_ELEMENTS = 1 << 22  # per input: a fully dynamic rank-5 input at 64 would be 64 MiB of floats


def _second_guess(specs) -> dict | None:
    """Warm-up sizes (``warmup_inputs``' form) with dynamic dims past the batch at GUESS_AGAIN, the batch
    and dims named as a batch is (``batch`` in a state's middle) at 1; None where an input would be too big."""
    batch_names = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}
    sizes = {}
    for s in specs:
        if s.shape is None:
            continue  # any rank: one value, as the first guess
        shape = [d if isinstance(d, int) else 1 if i == 0 or d in batch_names else GUESS_AGAIN
                 for i, d in enumerate(s.shape)]
        if math.prod(shape) > MAX_GUESSED_ELEMENTS:
            return None
        sizes[s.name] = {"shape": shape, "layout": s.layout}
    return sizes


def _sizes(shapes: dict) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())


def _asked_of(cand: Candidate, precision: Precision) -> Precision | None:
    """The precision to open ``cand`` at, or None where it cannot meet ``precision``. ONNX Runtime and
    LiteRT cannot be told a precision: for them "fp16" is a file stored in fp16, run as stored (and
    "bf16" one stored in bf16, which no converter here writes). "fp32" is a file stored in fp32 (or
    not known otherwise), run as stored on every runtime."""
    if precision is Precision.FP32:
        return Precision.STORED if _stored_precision(cand.artifact) in (None, "fp32") else None
    if precision not in (Precision.FP16, Precision.BF16) or getattr(backends.get(cand.backend), "sets_precision", True):
        return precision
    return Precision.STORED if _stored_precision(cand.artifact) == precision.value else None


def passed_over(cand: Candidate, precision: Precision) -> str | None:
    """Why a file is not one to open for ``precision`` ("stored in int8; ..."), or None."""
    stored = _stored_precision(cand.artifact) or cand.artifact.precision
    if _asked_of(cand, precision) is None:
        if precision is Precision.FP32:
            return f"stored in {stored}; fp32 asks for a file stored in fp32"
        # fp32 and int8 asked for fp16 (or bf16), on a runtime that runs them as stored
        return f"stored in {stored}; {cand.backend} runs a model at the precision it was stored in"
    # fp16 or bf16 asks for a float model at reduced precision. An int8 file would answer with int8's
    # accuracy on OpenVINO (the image sample's int8 IR at f16: cosine 0.993 to fp32, against 0.999996
    # for its fp16 file), and ran 9x slower there than at f32: the float files are what is asked for.
    if precision in (Precision.FP16, Precision.BF16) and stored.startswith("int8"):
        return f"stored in {stored}; {precision.value} asks for a float model at reduced precision"
    return None


def split_passed_over(candidates: list[Candidate], precision: Precision) -> tuple[list[Candidate], list[tuple]]:
    """A package's candidates that can meet ``precision``, and the (candidate, why) of the rest."""
    keep, passed = [], []
    for c in candidates:
        why = passed_over(c, precision)
        if why is None:
            keep.append(c)
        else:
            passed.append((c, why))
    return keep, passed


def _stored_precision(art: Artifact) -> str | None:
    """What ``art`` is stored in ("fp32", "fp16", "int8", ...) as its package says or, for a lone file,
    its card; None where neither says."""
    if art.precision != "stored":
        return art.precision
    entries = formats.read_card(art.path, art.format).get("artifacts")
    if isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], dict):
        said = entries[0].get("precision")
        return said if isinstance(said, str) else None
    return None


def lone_file_warmup(path: Path, fmt: Format) -> dict | None:
    """A lone model file's ``warmup_inputs``: from its card, or from the package in whose folder it
    is listed."""
    warmup = warmup_of(formats.read_card(path, fmt))
    if not warmup and (path.parent / formats.MANIFEST).is_file():
        try:
            pkg = package.read(path.parent)
        except ModelFileError:
            return None
        if any(a.path.resolve() == path.resolve() for a in pkg.artifacts):
            warmup = warmup_of(pkg.manifest)
    return warmup or None


def select(source: Source, policy: Policy, precision: Precision, *, strict: bool = False,
           verify: bool = True, use_cache: bool = True, concurrency: int = 1):
    """Open the model on the best candidate for ``policy``; returns (session, candidate, Selection)."""
    candidates, skipped = build_candidates(source, policy)
    if source.package is not None:
        # A package's files that cannot meet the precision are passed over as such, not as failures to
        # fall back from (unless that would leave none, where the refusals say why).
        keep, passed = split_passed_over(candidates, precision)
        if keep and passed:
            skipped += [c.attempt("skipped", why, show_artifact=True) for c, why in passed]
            candidates = keep
    selection = Selection(policy=policy.text, precision=precision.value, attempts=list(skipped))
    if not candidates:
        raise _unmet(policy, skipped)
    opener = _Opener(source, precision, verify, concurrency)
    show = source.package is not None
    if policy.mode == "fastest":
        result = _select_fastest(source, candidates, opener, selection, precision, strict, use_cache)
    else:
        result = _select_first(candidates, opener, selection, policy, strict, show)
    session, cand = result
    if selection.fell_back:
        chosen = len(selection.attempts) if policy.mode == "fastest" else selection.attempts.index(selection.chosen)
        failed = "; ".join(a.reason if a.reason.startswith(a.spec) else f"{a.spec} {a.reason}"
                           for a in selection.attempts[:chosen] if a.status == "failed")
        log.warning("%s: fell back to %s:%s after: %s", source.path.name, cand.backend, cand.device.id, failed)
    return session, cand, selection


def open_again(source: Source, cand: Candidate, precision: Precision, concurrency: int):
    """The session of a candidate chosen before, opened once more (for another ``concurrency``):
    its file's checksum and first inference were checked the first time."""
    opener = _Opener(source, precision, False, concurrency)
    opener.checked.add(cand.artifact.path)
    return opener.open(cand)


def _try(cand: Candidate, opener: _Opener, selection: Selection, show: bool, strict: bool,
         single_file: bool):
    """One candidate: an open session, or None after recording why it failed."""
    try:
        session = opener.open(cand)
    except ModelFileError as e:
        if single_file or strict:
            raise
        selection.attempts.append(cand.attempt("failed", str(e), show_artifact=show))
        return None
    except DeviceNotAvailableError as e:  # it cannot do what was asked (a precision): passed over, not failed
        selection.attempts.append(cand.attempt("skipped", _one_line(e), show_artifact=show))
        return None
    except Exception as e:
        selection.attempts.append(cand.attempt("failed", _one_line(e), show_artifact=show))
        if strict:
            raise BackendError(f"{cand.backend}:{cand.device.id} failed ({_one_line(e)}) and strict "
                               f"mode does not fall back") from e
        return None
    latency = measured_latency(cand) if show else None
    reason = f"ranked by the latency measured on this CPU at conversion ({latency:.2f} ms p50)" if latency else ""
    attempt = cand.attempt("opened", reason, show_artifact=show)
    attempt.precision = session.precision
    selection.attempts.append(attempt)
    return session


def _select_first(candidates, opener, selection, policy, strict, show):
    single = opener.source.package is None
    for i, cand in enumerate(candidates):
        session = _try(cand, opener, selection, show, strict, single)
        if session is not None:
            for rest in candidates[i + 1:]:
                selection.attempts.append(rest.attempt("not tried", "an earlier candidate opened",
                                                       show_artifact=show))
            return session, cand
    if opener.bad_artifacts and len(opener.bad_artifacts) == len(
            {c.artifact.path for c in candidates}):
        raise next(iter(opener.bad_artifacts.values()))
    unchecked = _open_unchecked(candidates, opener, selection, show)
    if unchecked is not None:
        return unchecked
    raise _none_opened(opener.source.path, policy.text, selection, candidates)


def _open_unchecked(candidates, opener, selection, show):
    """Every candidate failed; where one's first inference was refused only on the sizes guessed for
    dynamic dims (a streaming audio model needs a whole window), the best of those is opened without
    it, and the record says so. Its real inputs may well run; refusing to open would leave no way to try."""
    for cand in candidates:
        guessed = opener.guesses_refused.get(id(cand))
        if guessed is None:
            continue
        try:
            session = opener.open(cand, verify=False)
        except Exception:  # noqa: BLE001 - it opened a moment ago; if not now, the record stands
            continue
        record = cand.attempt("failed", show_artifact=show)
        index = next(i for i, a in enumerate(selection.attempts) if a.status == "failed"
                     and (a.spec, a.artifact) == (record.spec, record.artifact))
        failure = selection.attempts[index].reason
        attempt = cand.attempt("opened", f"opened without a first inference: its dynamic sizes are not known, "
                                         f"and the guessed ones ({guessed}) were refused ({failure}); give it "
                                         f"real inputs, or warmup_inputs in its card", show_artifact=show)
        attempt.precision = session.precision
        selection.attempts[index] = attempt
        log.warning("%s: %s %s", opener.source.path.name, record.spec, attempt.reason)
        return session, cand
    return None


def _none_opened(path: Path, policy: str, selection: Selection, tried: list[Candidate]) -> EdgekitError:
    """Nothing opened: DeviceNotAvailableError when no candidate could meet the request (each was
    passed over, as for a precision it cannot run), else NoCandidateError (they failed)."""
    if not any(a.status == "failed" for a in selection.attempts):
        # why the devices that could have run it did not; the ones not here (no GPU) say nothing of that
        here = {f"{c.backend}:{c.device.id}" for c in tried}
        skipped = [a for a in selection.attempts if a.status == "skipped"]
        why = "; ".join(dict.fromkeys(_named(a) for a in [a for a in skipped if a.spec in here] or skipped))
        return DeviceNotAvailableError(f"{path}: device {policy!r} at precision {selection.precision} is not "
                                       f"available here ({why})")
    return NoCandidateError(f"{path}: no candidate could run it for device={policy!r}:\n{selection}", selection)


def _fingerprint(candidates: list[Candidate]) -> list:
    from . import __version__

    names = sorted({c.backend for c in candidates})
    versions = {n: backends.get(n).status().version for n in names}
    devices = sorted(c.device.spec for c in candidates)
    return [__version__, versions, devices]


def _select_fastest(source, candidates, opener, selection, precision, strict, use_cache):
    show = source.package is not None
    single = source.package is None
    # Measured at one concurrency, a choice holds for that one. "shared sizes": choices stored before the
    # candidates were timed on the same input sizes are measured again.
    key = cache.key(source.hash, _fingerprint(candidates), precision.value, "shared sizes",
                    *([f"concurrency={opener.concurrency}"] if opener.concurrency > 1 else []))
    hit = cache.get(key) if use_cache else None
    tried_cached = None
    if hit:
        for cand in candidates:
            if _cand_id(cand) == hit.get("choice"):
                session = _try(cand, opener, selection, show, strict, single)
                if session is not None:
                    selection.cache = "hit"
                    selection.attempts[-1].latency_ms = hit.get("p50_ms")
                    selection.attempts[-1].reason = f"fastest when measured at {hit.get('measured_at')}"
                    for other in candidates:
                        if other is not cand:
                            a = other.attempt("not tried", "cached decision", show_artifact=show)
                            a.latency_ms = hit.get("timings", {}).get(_cand_id(other))
                            selection.attempts.append(a)
                    return session, cand
                tried_cached = cand  # recorded as failed; measure the others
                break
    # Every candidate is opened before any is timed: each is timed on the sizes they share (bench.timing_sizes)
    ready: list[tuple[Candidate, object, Attempt]] = []
    for cand in candidates:
        if cand is tried_cached:
            continue
        try:
            session = _try(cand, opener, selection, show, strict, single)
        except BaseException:
            for _, other, _ in ready:
                other.close()
            raise
        if session is not None:
            ready.append((cand, session, selection.attempts[-1]))
    every = [session.inputs for _, session, _ in ready]
    opened: list[tuple[float, Candidate, object, Attempt]] = []
    settled = 0  # ready[:settled] are timed (in opened) or closed; the rest are open
    try:
        for cand, session, attempt in ready:
            sizes = timing_sizes(session.inputs, every, opener.warmup)
            feeds = list(synthetic_inputs(session.inputs, warmup=sizes).values())
            try:
                timing = measure(lambda s=session, f=feeds: s.run(f), warmup=FASTEST_WARMUP,
                                 runs=FASTEST_RUNS, budget_s=FASTEST_BUDGET_S)
            except Exception as e:
                session.close()
                settled += 1
                attempt.status, attempt.reason = "failed", f"failed while timed: {_one_line(e)}"
                if strict:
                    raise BackendError(f"{cand.backend}:{cand.device.id} failed while timed ({_one_line(e)}) "
                                       f"and strict mode does not fall back") from e
                continue
            attempt.latency_ms = timing.p50_ms
            opened.append((timing.p50_ms, cand, session, attempt))
            settled += 1
    except BaseException:  # strict's refusal, Ctrl-C: no session is left open
        for other in [s for _, _, s, _ in opened] + [s for _, s, _ in ready[settled:]]:
            other.close()
        raise
    if not opened:
        unchecked = _open_unchecked(candidates, opener, selection, show)
        if unchecked is not None:
            return unchecked
        raise _none_opened(source.path, "fastest", selection, candidates)
    best_ms, best, best_session, best_attempt = min(opened, key=lambda t: t[0])
    for ms, cand, session, attempt in opened:
        if cand is not best:
            session.close()
            attempt.status = "passed over"
            attempt.reason = f"slower: p50 {ms:.3f} ms vs {best_ms:.3f} ms"
    best_attempt.reason = "fastest of the candidates measured"
    if use_cache:
        cache.put(key, {"choice": _cand_id(best), "p50_ms": best_ms,
                        "timings": {_cand_id(c): ms for ms, c, _, _ in opened}})
        selection.cache = "stored"
    return best_session, best


def _cand_id(cand: Candidate) -> str:
    return f"{cand.backend}:{cand.device.id}:{cand.artifact.path.name}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:500]
