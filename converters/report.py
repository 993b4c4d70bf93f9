"""What a conversion produced: one row per artifact, as data (the CLI prints it, edgekit.json keeps it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TARGETS = ("onnx", "openvino", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
# Default parity floor (cosine similarity to the source's outputs, of the worst output) per precision. Float artifacts
# should match to rounding; a good int8 recipe lands at 0.985-0.995 on CNN logits (top-1 agreement
# ~95 %), so 0.98 separates a working quantization from a broken one (ORT with per-tensor weights: 0.89).
MIN_COSINE = {"fp32": 0.999, "fp16": 0.999, "int8": 0.98, "int8-dynamic": 0.98}


def max_relative_error(min_cosine: float) -> float:
    """The largest ||artifact - source|| / ||source|| that goes with a cosine floor. Cosine misses
    scale (twice the source's outputs has cosine 1): an error of the right scale at the floor is
    sqrt(2 (1 - floor)), so twice that (0.09 for fp32, 0.4 for int8) passes any artifact the cosine
    passes unless its outputs are off in scale."""
    return 2 * (2 * max(0.0, 1 - min_cosine)) ** 0.5


@dataclass
class ArtifactReport:
    """One artifact (or one target that produced none).

    ``status`` is "ok", "failed" (conversion or parity failed: never chosen by
    :func:`edgekit.load`) or "skipped" (not possible from this source, or not asked
    with what it needs); ``reason`` says why in one line.
    """

    target: str  # "onnx" | "openvino" | "tflite"
    precision: str  # "fp32" | "fp16" | "int8" | "int8-dynamic"
    path: str | None = None  # relative to the package
    format: str | None = None
    recipe: str = ""
    layout: str | None = None
    size: int | None = None
    p50_ms: float | None = None
    speedup: float | None = None  # over the fp32 artifact of the same target, measured in the same run
    max_abs_error: float | None = None
    cosine: float | None = None
    relative_error: float | None = None  # of the worst output: ||artifact - source|| / ||source||
    top1_agreement: float | None = None
    status: str = "ok"
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def manifest_entry(self) -> dict:
        """The artifact's entry in edgekit.json (sha256 and size are added when published)."""
        entry = {"path": self.path, "format": self.format, "precision": self.precision, "recipe": self.recipe,
                 "layout": self.layout, "status": self.status}
        if self.reason:
            entry["reason"] = self.reason
        parity = {k: v for k, v in (("max_abs_error", self.max_abs_error), ("cosine", self.cosine),
                                    ("relative_error", self.relative_error),
                                    ("top1_agreement", self.top1_agreement)) if v is not None}
        if parity:
            entry["parity"] = parity
        if self.p50_ms is not None:
            entry["latency_ms"] = {"p50": round(self.p50_ms, 4)}
        if self.speedup is not None:
            entry["speedup_vs_fp32"] = round(self.speedup, 3)
        if self.notes:
            entry["notes"] = list(self.notes)
        return {k: v for k, v in entry.items() if v is not None}


@dataclass
class ConversionReport:
    source: str
    out: str | None
    artifacts: list[ArtifactReport]
    calibration: dict = field(default_factory=dict)  # {"source", "samples", "skipped": [[path, why], ...]}
    check: dict = field(default_factory=dict)  # what parity was measured on, and against what
    host: str = ""
    seconds: float = 0.0
    written: bool = False

    @property
    def ok(self) -> bool:
        """Every artifact asked for was produced and passed its checks."""
        return bool(self.artifacts) and all(a.ok for a in self.artifacts)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["ok"] = self.ok
        return doc

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the final table the CLI prints."""
        header = ["artifact", "format", "precision", "size", "p50 ms", "vs fp32", "max abs err", "cosine",
                  "top-1", "status"]
        rows = []
        for a in self.artifacts:
            status = a.status if not a.reason else f"{a.status}: {a.reason}"
            if a.ok and a.notes:
                status = f"ok ({'; '.join(a.notes)})"
            rows.append([a.path or "-", a.format or a.target, a.precision, _size(a.size), _num(a.p50_ms, 2),
                         f"{a.speedup:.2f}x" if a.speedup is not None else "-", _num(a.max_abs_error, 3, sci=True),
                         _num(a.cosine, 5), f"{a.top1_agreement:.0%}" if a.top1_agreement is not None else "-",
                         status])
        return header, rows


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _num(x: float | None, digits: int, *, sci: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if sci else f"{x:.{digits}f}"


def count(n: int, word: str, plural: str | None = None) -> str:
    """``1 artifact``, ``2 artifacts``."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def one_line(e: BaseException) -> str:
    """An error as one line for a report row; for "no candidate could run it", the runtime's own reason."""
    attempts = getattr(getattr(e, "selection", None), "attempts", None) or []
    failed = [a for a in attempts if a.status == "failed" and a.reason]
    text = (failed[-1].reason if failed else str(e)).strip() or type(e).__name__
    return text.splitlines()[0][:300]
