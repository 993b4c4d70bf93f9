"""Conversion fidelity and speed on the EfficientNet-Lite0 sample (issue 4), all in one run.

    python benchmarks/convert.py [--json] [--keep DIR]

Converts the sample package to ONNX, OpenVINO IR and TFLite in fp32, fp16 and int8, calibrated
on the 39 photographs of ``samples/inputs/calibration`` (views of 13 photos from the scikit-image,
SciPy and Matplotlib wheels, none of them in the check set) and checked on 64 held-out views of
the 8 images in ``samples/inputs/images`` (whole, mirrored and crops at three scales). Latencies are the converter's
own: p50 of interleaved rounds over all artifacts, batch 1, on this CPU.

Goals (issue 4): fp16 cosine >= 0.999 against fp32; int8 top-1 agreement >= 95 % and >= 1.8x
its own fp32's speed on every target; the whole conversion in under 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samples.build import INPUTS, build, sample_path  # noqa: E402

GOALS = {"fp16_cosine": 0.999, "int8_top1": 0.95, "int8_speedup": 1.8, "seconds": 180.0}


def held_out_views(dst: Path) -> Path:
    """Eight views of each sample image (whole, mirrored, crops at three scales): the check set."""
    from PIL import Image, ImageOps

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted((INPUTS / "images").iterdir()):
        im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        w, h = im.size
        centre = im.crop((w // 8, h // 8, w - w // 8, h - h // 8))
        views = {"whole": im, "mirror": ImageOps.mirror(im), "centre": centre, "centre-mirror": ImageOps.mirror(centre),
                 "zoom": im.crop((w // 4, h // 4, w - w // 4, h - h // 4)),
                 "top-left": im.crop((0, 0, w * 3 // 4, h * 3 // 4)), "bottom-right": im.crop((w // 4, h // 4, w, h)),
                 "wide": im.crop((0, h // 6, w, h - h // 6))}
        for name, view in views.items():
            view.save(dst / f"{path.stem}-{name}.png")
    return dst


def run(keep: Path | None) -> dict:
    from converters import convert

    build(kinds=["image"])
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-convert-") as tmp:
        check = held_out_views(Path(tmp) / "check")
        out = keep or Path(tmp) / "pkg"
        t0 = time.perf_counter()
        report = convert(sample_path("image"), to=["onnx", "openvino", "tflite"], precisions=["fp32", "fp16", "int8"],
                         calibration=INPUTS / "calibration", check=check, out=out,
                         progress=lambda line: print(line, file=sys.stderr))
        seconds = time.perf_counter() - t0
    rows = {(a.target, a.precision): a for a in report.artifacts}
    goals = {}
    for target in ("onnx", "openvino", "tflite"):
        fp16, int8 = rows.get((target, "fp16")), rows.get((target, "int8"))
        goals[f"{target} fp16 cosine >= {GOALS['fp16_cosine']}"] = bool(fp16 and fp16.ok
                                                                         and fp16.cosine >= GOALS["fp16_cosine"])
        goals[f"{target} int8 top-1 >= {GOALS['int8_top1']:.0%}"] = bool(
            int8 and int8.top1_agreement is not None and int8.top1_agreement >= GOALS["int8_top1"])
        goals[f"{target} int8 speedup >= {GOALS['int8_speedup']}x"] = bool(
            int8 and int8.speedup and int8.speedup >= GOALS["int8_speedup"])
    goals[f"conversion < {GOALS['seconds']:.0f} s"] = seconds < GOALS["seconds"]
    return {"host": report.host, "cores": os.cpu_count(), "python": platform.python_version(),
            "calibration": report.calibration, "check": report.check, "seconds": round(seconds, 1),
            "artifacts": [asdict(a) for a in report.artifacts], "table": report.table(), "goals": goals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", type=Path, help="write the package here instead of a temporary folder")
    args = ap.parse_args()
    result = run(args.keep)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['host']}, {result['cores']} cores: converted in {result['seconds']} s")
    from edgekit.cli import _table

    header, rows = result["table"]
    print(_table(rows, header))
    for goal, met in result["goals"].items():
        print(f"  {'met   ' if met else 'MISSED'} {goal}")


if __name__ == "__main__":
    main()
