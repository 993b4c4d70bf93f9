"""The image pre-processing of an earlier revision beside the working tree's, in one process.

    python benchmarks/preprocess_ab.py [--rev 92a18a3] [--rounds 5] [--runs 200]

On a shared machine only side-by-side figures compare: both versions run on the same decoded
photo (cat.jpg) for the image sample's int8 OpenVINO (NCHW) and LiteRT (NHWC) artifacts, in
interleaved rounds, each timed alone and right after an inference (as a classify loop has it),
each as a classifier runs it (an ``ImagePreprocessor`` made once, where the revision has one).
Prints medians over the rounds, in ms, and the largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samples.build import INPUTS, build, sample_path  # noqa: E402


def _old_module(rev: str):
    """edgekit/tasks/image.py as it was at ``rev``, imported beside the current one."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:edgekit/tasks/image.py"], check=True,
                          capture_output=True, text=True).stdout
    text = (text.replace("from ..errors", "from edgekit.errors").replace("from .base", "from edgekit.tasks.base")
            .replace("from .results", "from edgekit.tasks.results"))
    path = Path(tempfile.mkdtemp()) / "image_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("image_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="92a18a3", help="the earlier revision (default: before the one-pass change)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    build(kinds=["image"])
    from edgekit.tasks import ImageClassifier, image
    from edgekit.tasks.image import load_image

    old = _old_module(args.rev)
    img = load_image(INPUTS / "images" / "cat.jpg")
    clfs = [ImageClassifier(sample_path("image") / name) for name in ("model-int8.xml", "model-int8.tflite")]
    times: dict = {}
    for clf in clfs:
        # Each version as a classifier runs it: made once per classifier where the version can.
        versions = {name: (module.ImagePreprocessor(clf.pp, layout=clf.layout) if hasattr(module, "ImagePreprocessor")
                           else functools.partial(module.preprocess_image, pp=clf.pp, layout=clf.layout))
                    for name, module in (("old", old), ("new", image))}
        a, b = (fn(img) for fn in versions.values())
        print(f"{clf.model.path.name} ({clf.layout}): outputs differ by at most {np.abs(a - b).max():.2g}")
        clf.versions = versions
    for _ in range(args.rounds):
        for clf in clfs:
            x = clf.preprocessor(img)[None]
            for name, fn in clf.versions.items():
                alone, after = [], []
                fn(img)
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    fn(img)
                    alone.append(time.perf_counter() - t0)
                for _ in range(args.runs):
                    clf.model.run({clf.input_name: x})
                    t0 = time.perf_counter()
                    fn(img)
                    after.append(time.perf_counter() - t0)
                times.setdefault((clf.model.path.name, name), []).append(
                    (statistics.median(alone) * 1e3, statistics.median(after) * 1e3))
    print(f"{'artifact':20} {'version':8} {'alone ms':>9} {'after inference ms':>19}")
    for (artifact, name), rows in times.items():
        alone, after = np.median(np.asarray(rows), axis=0)
        print(f"{artifact:20} {name + (' ' + args.rev if name == 'old' else ''):8} {alone:9.3f} {after:19.3f}")


if __name__ == "__main__":
    main()
