"""`make demo`: what edgekit sees on this machine, and a model in every format run on every device.

Until the sample models built from packaged weights land, the models are small ones built
from code (samples/synthetic.py) with known answers, so the demo checks its own results.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import edgekit
from samples import synthetic

BUILD = Path(__file__).parent / "build"


def _edgekit(*args: str) -> None:
    print(f"\n$ edgekit {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "edgekit", *args], check=True)


def build_models() -> dict[str, Path]:
    BUILD.mkdir(exist_ok=True)
    weights = synthetic.mlp_weights()
    onnx_path = BUILD / "mlp.onnx"
    if not onnx_path.exists():
        synthetic.mlp_onnx(onnx_path, weights)
    if not (BUILD / "mlp.xml").exists():
        synthetic.to_ir(onnx_path, BUILD / "mlp.xml")
    if not (BUILD / "mlp.tflite").exists():
        synthetic.mlp_tflite(BUILD / "mlp.tflite", weights)
    return {fmt: BUILD / f"mlp.{fmt}" for fmt in ("onnx", "xml", "tflite")}


def main() -> int:
    print(f"edgekit {edgekit.__version__}")
    _edgekit("devices")
    models = build_models()
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    expected = synthetic.mlp_reference(x, synthetic.mlp_weights())
    ok = True
    print("\nOne API for every format (edgekit.load(path).run(x)), checked against NumPy:")
    for path in models.values():
        m = edgekit.load(path)
        err = float(np.abs(m.run(x)["logits"] - expected).max())
        ok &= err < 1e-4
        tried = [a for a in m.selection.attempts if a.status != "skipped"]
        print(f"  {path.name:12} -> {m.backend}:{m.device} ({m.precision}); max abs error {err:.1e}; "
              f"considered {len(m.selection.attempts)} candidates, "
              f"{len(m.selection.attempts) - len(tried)} unavailable here")
    _edgekit("bench", str(models["onnx"]), "--all-devices", "--runs", "200")
    _edgekit("bench", str(models["tflite"]), "--all-devices", "--runs", "200")
    print("\nDemo " + ("passed: every format gave the reference answer." if ok else "FAILED: wrong answers."))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
