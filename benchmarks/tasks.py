"""Task pipeline costs on the sample packages (issue 5), medians in one process.

    python benchmarks/tasks.py [--json]

- image: decode + pre-process and post-process time against inference, batch 1 (goal: <= 25 %);
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


def image(runs: int) -> dict:
    from edgekit.tasks import ImageClassifier
    from edgekit.tasks.image import load_image, preprocess_image
    from edgekit.tasks.results import softmax

    clf = ImageClassifier(sample_path("image"))
    path = INPUTS / "images" / "cat.jpg"
    x = clf.preprocess_input(path)
    logits = next(iter(clf.model.run({clf.input_name: x}).values()))[0]
    rows = {}
    for _ in range(3):  # interleave the three parts so noise hits all alike
        rows.setdefault("decode", []).append(median_ms(lambda: load_image(path), runs))
        img = load_image(path)
        rows.setdefault("preprocess", []).append(
            median_ms(lambda img=img: preprocess_image(img, clf.pp, layout=clf.layout), runs))
        rows.setdefault("inference", []).append(median_ms(lambda: clf.model.run({clf.input_name: x}), runs))
        rows.setdefault("postprocess", []).append(
            median_ms(lambda: clf.options.select(softmax(logits), clf.labels), runs))
        rows.setdefault("classify", []).append(median_ms(lambda: clf.classify(path), runs))
    from PIL import Image

    big = Path(os.environ.get("TMPDIR", "/tmp")) / "edgekit-bench-12mp.jpg"
    if not big.exists():  # a 12 MP camera-sized JPEG made from the sample
        Image.open(path).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(big, quality=90)
    rows["classify_12mp"] = [median_ms(lambda: clf.classify(big), max(5, runs // 5))]
    rows["decode_12mp_full"] = [median_ms(lambda: load_image(big), max(5, runs // 5))]
    r = {k: statistics.median(v) for k, v in rows.items()}
    r["pre_post_over_inference_pct"] = (r["decode"] + r["preprocess"] + r["postprocess"]) / r["inference"] * 100
    r["device"] = f"{clf.model.backend}:{clf.model.device}"
    return r


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    build()
    doc = {"image": image(args.runs), "text": text(args.runs), "vad": vad_one_core()}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    i, t, v = doc["image"], doc["text"], doc["vad"]
    print("\n| task | measure | value |\n| --- | --- | ---: |")
    print(f"| image ({i['device']}) | decode + pre-process, cat.jpg | {i['decode']:.2f} + {i['preprocess']:.2f} ms |")
    print(f"| | inference, batch 1 | {i['inference']:.2f} ms |")
    print(f"| | post-process (softmax, top-5) | {i['postprocess']:.3f} ms |")
    print(f"| | pre + post over inference (goal <= 25 %) | {i['pre_post_over_inference_pct']:.1f} % |")
    print(f"| | `classify(path)` end to end | {i['classify']:.2f} ms |")
    print(f"| | `classify` of a 12 MP JPEG (draft decode) | {i['classify_12mp']:.1f} ms "
          f"(full decode alone: {i['decode_12mp_full']:.1f} ms) |")
    print(f"| text ({t['device']}) | sentences/s, batch 1 | {t['per_s_batch1']:.0f} |")
    print(f"| | sentences/s, batch 32 | {t['per_s_batch32']:.0f} |")
    print(f"| VAD ({v['device']}, {v['cores']} core) | real-time factor, {v['audio_s']:.1f} s of speech | "
          f"{v['rtf']:.4f} ({v['x_realtime']:.0f}x faster than real time) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
