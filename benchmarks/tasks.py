"""Task pipeline costs on the sample packages (issue 5), medians in one process.

    python benchmarks/tasks.py [--json] [--image-only] [--artifact FILE]... [--resize-study]

- image: decode, pre-process, inference and post-process at batch 1 on the artifact ``auto`` picks,
  on fp32 ONNX and on each ``--artifact`` of the package (``model-int8.tflite``, say: which int8
  artifact ``auto`` picks depends on the latencies measured when the package was built), each stage
  timed alone and inside a decode-to-result loop; the goal is
  pre + post <= 25 % of inference, given with and without the decode. ``--resize-study`` adds
  other resizers' fidelity (pixels, fp32 logits) and time against TensorFlow's own (needs TensorFlow);
- text: sentences per second at batch 1 and batch 32;
- VAD: real-time factor (processing time / audio duration) with the process pinned to one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samples.build import INPUTS, build, sample_path  # noqa: E402


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


STAGES = ("decode", "preprocess", "inference", "postprocess")
GOAL_PCT = 25


def _stage_fns(clf, path) -> dict:
    """``classify``'s four stages as separate calls, each given what the stage before it produces."""
    from edgekit.tasks.image import load_image
    from edgekit.tasks.results import softmax

    img = load_image(path, min_size=clf.decode_min)
    x = clf.preprocessor(img)[None]
    logits = np.asarray(next(iter(clf.model.run({clf.input_name: x}).values())), np.float32).reshape(-1)
    return {
        "decode": lambda: load_image(path, min_size=clf.decode_min),
        "preprocess": lambda: clf.preprocessor(img),
        "inference": lambda: clf.model.run({clf.input_name: x}),
        "postprocess": lambda: clf.options.select(softmax(logits), clf.labels),
    }


def _in_loop_ms(fns: dict, runs: int) -> dict:
    """Stage medians timed inside one decode-to-result loop: caches and runtime threads as a caller has them."""
    times = {k: [] for k in STAGES}
    for i in range(runs + 1):
        t = [time.perf_counter()]
        for k in STAGES:  # one pass of classify, stage by stage
            fns[k]()
            t.append(time.perf_counter())
        if i:
            for k, a, b in zip(STAGES, t, t[1:]):
                times[k].append((b - a) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _ratios(ms: dict) -> dict:
    inf = ms["inference"]
    return {"pct_with_decode": (ms["decode"] + ms["preprocess"] + ms["postprocess"]) / inf * 100,
            "pct_without_decode": (ms["preprocess"] + ms["postprocess"]) / inf * 100}


def image(runs: int, artifacts: tuple[str, ...] = ()) -> dict:
    """Stage times on the auto-picked artifact, fp32 ONNX and ``artifacts``, three interleaved rounds."""
    from edgekit.tasks import ImageClassifier
    from edgekit.tasks.image import load_image

    package = sample_path("image")
    path = INPUTS / "images" / "cat.jpg"
    clfs = {"auto": ImageClassifier(package), "fp32-onnx": ImageClassifier(package / "model-fp32.onnx")}
    for name in artifacts:
        if not (package / name).is_file():
            raise SystemExit(f"--artifact {name}: no such file in {package}")
        clfs[name] = ImageClassifier(package / name)
    fns = {name: _stage_fns(clf, path) for name, clf in clfs.items()}
    rounds: dict = {name: {"apart": [], "in_loop": [], "classify": []} for name in clfs}
    load_before = os.getloadavg()[0]
    for _ in range(3):  # interleaved, so the shared machine's noise hits every figure alike
        for name, clf in clfs.items():
            rounds[name]["apart"].append({k: median_ms(fn, runs) for k, fn in fns[name].items()})
            rounds[name]["in_loop"].append(_in_loop_ms(fns[name], runs))
            rounds[name]["classify"].append(median_ms(lambda clf=clf: clf.classify(path), runs))
    # Inference uses both cores, pre-processing one: other work on the machine slows inference more
    # and flatters the ratio, so the load is part of the result.
    out: dict = {"image": path.name, "goal_pct": GOAL_PCT, "load_avg_1min": [load_before, os.getloadavg()[0]],
                 "timed": list(clfs)}
    for name, clf in clfs.items():
        entry = clf.artifact_entry()
        r = {"artifact": f"{clf.model.path.name} ({entry.get('format')} {entry.get('precision')}, "
                         f"{clf.model.backend}:{clf.model.device})",
             "classify_ms": statistics.median(rounds[name]["classify"])}
        for how in ("apart", "in_loop"):
            per_round = [{**ms, **_ratios(ms)} for ms in rounds[name][how]]
            r[how] = {k: {"median": statistics.median(d[k] for d in per_round),
                          "min": min(d[k] for d in per_round), "max": max(d[k] for d in per_round)}
                      for k in per_round[0]}
        out[name] = r
    from PIL import Image

    big = Path(os.environ.get("TMPDIR", "/tmp")) / "edgekit-bench-12mp.jpg"
    if not big.exists():  # a 12 MP camera-sized JPEG made from the sample
        Image.open(path).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(big, quality=90)
    clf = clfs["auto"]
    out["draft_decode_12mp"] = clf.decode_min is not None  # the "pillow" convention may draft; "tf1" never
    out["classify_12mp_ms"] = median_ms(lambda: clf.classify(big), max(5, runs // 5))
    out["decode_12mp_full_ms"] = median_ms(lambda: load_image(big), max(5, runs // 5))
    return out


def _resizers(cv2, tf) -> dict:
    """Ways from a decoded image to the 224x224 input, each (PIL image, its pixels, pp) -> HxWx3.
    The first is the reference: TensorFlow's own resize, as the weights were trained."""
    from PIL import Image

    from edgekit.tasks.image import crop_box, resize_tf1, tf1_crop

    def box_of(a, pp):
        _, (left, top, w, h) = tf1_crop((a.shape[1], a.shape[0]), pp)
        return a[top:top + h, left:left + w]

    def tensorflow(img, a, pp):
        return tf.compat.v1.image.resize_bicubic(box_of(a, pp)[None], [224, 224]).numpy()[0]

    def warp_uint8(img, a, pp):  # the same warp on uint8 pixels: overshoot clipped, positions in fixed point
        box = box_of(a, pp)
        m = np.array([[box.shape[1] / 224, 0, 0], [0, box.shape[0] / 224, 0]])
        return cv2.warpAffine(box, m, (224, 224), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def half_pixel(img, a, pp):  # cv2.resize of the same box: its pixel centres are TF2's, not TF1's
        return cv2.resize(box_of(a, pp).astype(np.float32), (224, 224), interpolation=cv2.INTER_CUBIC)

    def pillow(img, a, pp):  # shorter side 256, centre 224, PIL's antialiased bilinear (torchvision's way)
        size, box = crop_box(img.size, {**pp, "resampling": "pillow"})
        return np.asarray(img.resize(size, Image.BILINEAR, box=box))

    return {
        "reference: TensorFlow 1 resize_bicubic of the whole-pixel crop": tensorflow,
        "OpenCV warp bicubic on float pixels (in use: resampling tf1)": lambda img, a, pp: resize_tf1(a, pp),
        "the same warp on uint8 pixels": warp_uint8,
        "OpenCV resize bicubic of the same crop (half-pixel centres)": half_pixel,
        "PIL antialiased bilinear of a 256 / 224 crop box (resampling pillow, declared before)": pillow,
    }


def resize_study(runs: int) -> dict:
    """Resizers against TensorFlow's own, on the 8 sample and 39 calibration photos: pixel difference
    after normalisation, the fp32 model's logits, and time on cat.jpg. Needs TensorFlow."""
    import cv2
    import tensorflow as tf

    from edgekit.tasks import ImageClassifier
    from edgekit.tasks.image import load_image, normalise

    clf = ImageClassifier(sample_path("image") / "model-fp32.onnx")
    pp = clf.pp
    resizers = _resizers(cv2, tf)
    levels = float(np.mean(pp.get("std", [1, 1, 1]))) / float(pp.get("scale", 1.0))  # normalised units per level
    ref_fn = next(iter(resizers.values()))

    def logits(x):
        return np.asarray(next(iter(clf.model.run({clf.input_name: x[None]}).values())), np.float64).reshape(-1)

    sets = {"8 sample photos": sorted((INPUTS / "images").iterdir()),
            "39 calibration photos": sorted((INPUTS / "calibration").iterdir())}
    out: dict = {}
    for set_name, paths in sets.items():
        imgs = [load_image(p) for p in paths]
        refs = []
        for img in imgs:
            x = normalise(ref_fn(img, np.asarray(img), pp), pp)
            refs.append((x, logits(x)))
        for name, fn in resizers.items():
            rows = []
            for img, (x, lx) in zip(imgs, refs):
                y = normalise(fn(img, np.asarray(img), pp), pp)
                ly = logits(y)
                top5 = set(np.argsort(-lx)[:5]) == set(np.argsort(-ly)[:5])
                rows.append((np.abs(y - x).max(), np.abs(y - x).mean(),
                             lx @ ly / np.linalg.norm(lx) / np.linalg.norm(ly), lx.argmax() == ly.argmax(), top5))
            m = np.array(rows, np.float64)
            out.setdefault(name, {})[set_name] = {
                "max_abs": float(m[:, 0].max()), "max_levels": float(m[:, 0].max() * levels),
                "mean_levels": float(m[:, 1].mean() * levels), "cosine_min": float(m[:, 2].min()),
                "top1_agreement": float(m[:, 3].mean()), "top5_agreement": float(m[:, 4].mean())}
    img = load_image(INPUTS / "images" / "cat.jpg")
    a = np.asarray(img)
    times: dict = {name: [] for name in resizers}
    for _ in range(3):
        for name, fn in resizers.items():
            times[name].append(median_ms(lambda fn=fn: fn(img, a, pp), runs))
    for name in resizers:
        out[name]["resize_ms"] = statistics.median(times[name])
    # The whole pre-processing (crop, resize, normalise, NCHW) by each convention, side by side.
    from edgekit.tasks.image import preprocess_image

    conventions = {"tf1 (in use)": pp, "pillow": {**pp, "resampling": "pillow", "interpolation": "bilinear"}}
    rounds: dict = {name: [] for name in conventions}
    for _ in range(3):
        for name, conv in conventions.items():
            rounds[name].append(median_ms(lambda conv=conv: preprocess_image(img, conv), runs))
    out["preprocess_ms"] = {name: {"min": min(v), "max": max(v)} for name, v in rounds.items()}
    return out


def text(runs: int) -> dict:
    from edgekit.tasks import TextEmbedder

    emb = TextEmbedder(sample_path("text"))
    lines = (INPUTS / "text.txt").read_text(encoding="utf-8").splitlines()
    corpus = (lines * 6)[:32]
    one = median_ms(lambda: [emb.embed(t) for t in corpus], max(3, runs // 10))
    batch = median_ms(lambda: emb.embed(corpus, batch_size=32), max(3, runs // 10))
    return {"device": f"{emb.model.backend}:{emb.model.device}", "sentences": len(corpus),
            "per_s_batch1": len(corpus) / one * 1e3, "per_s_batch32": len(corpus) / batch * 1e3}


def vad_one_core() -> dict:
    """Runs in a child pinned to one CPU, so the runtime's threads share that core."""
    code = (
        "import os, json, time, statistics, soundfile as sf\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from edgekit.tasks import VoiceActivityDetector\n"
        "from samples.build import INPUTS, sample_path\n"
        "vad = VoiceActivityDetector(sample_path('audio'))\n"
        "x, sr = sf.read(str(INPUTS / 'audio' / 'speech.wav'), dtype='float32')\n"
        "vad.detect(x, sr)\n"
        "ts = []\n"
        "for _ in range(5):\n"
        "    t0 = time.perf_counter(); vad.detect(x, sr); ts.append(time.perf_counter() - t0)\n"
        "dur = len(x) / sr; t = statistics.median(ts)\n"
        "print(json.dumps({'audio_s': dur, 'seconds': t, 'rtf': t / dur, 'x_realtime': dur / t,\n"
        "                  'cores': len(os.sched_getaffinity(0)),\n"
        "                  'device': f'{vad.model.backend}:{vad.model.device}'}))\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(stat: dict, digits: int = 2, unit: str = "") -> str:
    lo, hi = (f"{stat[k]:.{digits}f}" for k in ("min", "max"))
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def print_image(i: dict) -> None:
    print(f"\nImage pipeline on {i['image']}, batch 1, ms (ranges over 3 interleaved rounds; goal: pre + post "
          f"<= {i['goal_pct']} % of inference; 1-min load average {i['load_avg_1min'][0]:.1f} before, "
          f"{i['load_avg_1min'][1]:.1f} after)\n")
    print("| artifact | timed | decode | pre-process | inference | post-process "
          "| (decode + pre + post) / inference | (pre + post) / inference |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in i["timed"]:
        r = i[name]
        label = ("auto-picked: " if name == "auto" else "") + r["artifact"]
        for how, what in (("apart", "each stage alone"), ("in_loop", "inside the decode-to-result loop")):
            d = r[how]
            print(f"| {label} | {what} | {_fmt(d['decode'])} | {_fmt(d['preprocess'])} | {_fmt(d['inference'])} "
                  f"| {_fmt(d['postprocess'], 3)} | {_fmt(d['pct_with_decode'], 0, ' %')} "
                  f"| {_fmt(d['pct_without_decode'], 0, ' %')} |")
            label = ""
    print(f"\n`classify(path)` end to end: {i['auto']['classify_ms']:.2f} ms auto-picked, "
          f"{i['fp32-onnx']['classify_ms']:.2f} ms fp32 ONNX. A 12 MP JPEG "
          f"({'draft' if i['draft_decode_12mp'] else 'full'} decode): "
          f"{i['classify_12mp_ms']:.1f} ms; a full decode alone: {i['decode_12mp_full_ms']:.1f} ms")


def print_study(study: dict) -> None:
    print("\nResizers against TensorFlow's, as the weights were trained (fp32 ONNX logits; a level is 1/255 of "
          "the pixel range)\n")
    print("| resize | photos | max diff | mean diff | logits cosine, min | top-1 same | top-5 same | resize, cat.jpg |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    study = dict(study)
    pre = study.pop("preprocess_ms")
    for name, r in study.items():
        sets = [k for k in r if k != "resize_ms"]
        for n, set_name in enumerate(sets):
            m = r[set_name]
            first = (name, f"{r['resize_ms']:.3f} ms") if n == 0 else ("", "")
            print(f"| {first[0]} | {set_name} | {m['max_levels']:.0f} levels ({m['max_abs']:.3f}) "
                  f"| {m['mean_levels']:.2f} levels | {m['cosine_min']:.4f} | {m['top1_agreement']:.0%} "
                  f"| {m['top5_agreement']:.0%} | {first[1]} |")
    print("\nWhole pre-processing of cat.jpg (crop, resize, normalise, NCHW), interleaved: "
          + ", ".join(f"{name} {_fmt(t, 3, ' ms')}" for name, t in pre.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--image-only", action="store_true", help="skip the text and VAD figures")
    ap.add_argument("--artifact", action="append", default=[], metavar="FILE",
                    help="also time this artifact of the image package (repeatable)")
    ap.add_argument("--resize-study", action="store_true",
                    help="also compare other resizers with TensorFlow's own (needs tensorflow)")
    args = ap.parse_args()
    build()
    doc = {"image": image(args.runs, tuple(args.artifact))}
    if args.resize_study:
        try:
            doc["resize_study"] = resize_study(args.runs)
        except ImportError as e:
            print(f"resize study skipped: it needs TensorFlow (make install): {e}", file=sys.stderr)
    if not args.image_only:
        doc.update(text=text(args.runs), vad=vad_one_core())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print_image(doc["image"])
    if "resize_study" in doc:
        print_study(doc["resize_study"])
    if "text" in doc:
        t, v = doc["text"], doc["vad"]
        print("\n| task | measure | value |\n| --- | --- | ---: |")
        print(f"| text ({t['device']}) | sentences/s, batch 1 | {t['per_s_batch1']:.0f} |")
        print(f"| | sentences/s, batch 32 | {t['per_s_batch32']:.0f} |")
        print(f"| VAD ({v['device']}, {v['cores']} core) | real-time factor, {v['audio_s']:.1f} s of speech | "
              f"{v['rtf']:.4f} ({v['x_realtime']:.0f}x faster than real time) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
