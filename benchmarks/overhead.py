"""Model.run against each runtime's fastest plain Python call path, interleaved in one process.

    python benchmarks/overhead.py [--json] [--rounds N]

For a one-Add model and a ResNet-50-sized model, in every format each backend reads
natively, it alternates blocks of edgekit calls and direct calls so that machine noise
hits both alike, and reports the median per-call time of each and their difference.
Goals (issue 3): <= 15 us per call on the tiny model, <= 3 % on the large one.

Direct paths (what a careful user would write):
  onnxruntime  session.run(output_names, feeds)
  openvino     request with the input tensor set once; request.infer(); output tensor's data
  litert       interpreter.set_tensor / invoke / get_tensor
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgekit  # noqa: E402
from edgekit.hostinfo import cpu_count, cpu_name  # noqa: E402
from samples import synthetic  # noqa: E402

MODELS = Path(__file__).parent / ".models"


def build() -> dict[str, Path]:
    MODELS.mkdir(exist_ok=True)
    paths = {"add.onnx": MODELS / "add.onnx", "add.xml": MODELS / "add.xml", "add.tflite": MODELS / "add.tflite",
             "resnet50.onnx": MODELS / "resnet50.onnx", "resnet50.xml": MODELS / "resnet50.xml",
             "resnet50.tflite": MODELS / "resnet50.tflite"}
    if not paths["add.onnx"].exists():
        synthetic.add_onnx(paths["add.onnx"])
    if not paths["add.xml"].exists():
        synthetic.to_ir(paths["add.onnx"], paths["add.xml"])
    if not paths["add.tflite"].exists():
        synthetic.add_tflite(paths["add.tflite"])
    if not paths["resnet50.onnx"].exists():
        synthetic.resnet50_onnx(paths["resnet50.onnx"])
    if not paths["resnet50.xml"].exists():
        synthetic.to_ir(paths["resnet50.onnx"], paths["resnet50.xml"])
    if not paths["resnet50.tflite"].exists():
        synthetic.resnet50_tflite(paths["resnet50.tflite"])
    return paths


def direct_call(backend: str, path: Path, feeds: dict[str, np.ndarray]):
    """The runtime's own fastest plain call, configured like edgekit configures it."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return lambda: sess.run(names, feeds)
    if backend == "openvino":
        from edgekit.backends.ov import import_openvino

        ov = import_openvino()  # its telemetry declined, as edgekit's own import does

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                              "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        for i, x in enumerate(feeds.values()):
            req.set_input_tensor(i, ov.Tensor(x, shared_memory=True))
        n_out = len(compiled.outputs)

        def call():
            req.infer()
            return [req.get_output_tensor(i).data for i in range(n_out)]

        return call
    if backend == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=cpu_count())
        interp.allocate_tensors()
        ins = [d["index"] for d in interp.get_input_details()]
        outs = [d["index"] for d in interp.get_output_details()]
        arrays = list(feeds.values())

        def call():
            for idx, x in zip(ins, arrays):
                interp.set_tensor(idx, x)
            interp.invoke()
            return [interp.get_tensor(i) for i in outs]

        return call
    raise ValueError(backend)


def interleaved(a, b, *, rounds: int, block: int) -> tuple[float, float]:
    """Median per-call seconds of a and b, alternating blocks (order flipped each round)."""
    for _ in range(max(3, block // 4)):
        a(), b()
    ta, tb = [], []
    for r in range(rounds):
        for f, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            for _ in range(block):
                f()
            out.append((time.perf_counter() - t0) / block)
    return statistics.median(ta), statistics.median(tb)


CASES = [  # (model, backend, device spec)
    ("add.onnx", "onnxruntime", "onnxruntime:CPUExecutionProvider"),
    ("add.xml", "openvino", "openvino:CPU"),
    ("add.tflite", "litert", "litert:CPU"),
    ("resnet50.onnx", "onnxruntime", "onnxruntime:CPUExecutionProvider"),
    ("resnet50.xml", "openvino", "openvino:CPU"),
    ("resnet50.tflite", "litert", "litert:CPU"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    paths = build()
    rows = []
    for name, backend, spec in CASES:
        path = paths[name]
        model = edgekit.load(path, device=spec, strict=True)
        feeds = {s.name: np.random.default_rng(0).standard_normal(
            [d if isinstance(d, int) else 1 for d in s.shape]).astype(s.dtype) for s in model.inputs}
        direct = direct_call(backend, path, feeds)
        np.testing.assert_allclose(list(model.run(feeds).values())[0], direct()[0], rtol=1e-4, atol=1e-4)
        tiny = name.startswith("add")
        t_ek, t_direct = interleaved(lambda m=model, f=feeds: m.run(f), direct, rounds=args.rounds,
                                     block=2000 if tiny else 4)
        rows.append({"model": name, "backend": backend, "direct_us": t_direct * 1e6, "edgekit_us": t_ek * 1e6,
                     "overhead_us": (t_ek - t_direct) * 1e6, "overhead_pct": (t_ek / t_direct - 1) * 100})
        model.close()
        print(f"  measured {name} on {backend}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"cpu": cpu_name(), "cores": cpu_count(), "rows": rows}, indent=2))
        return 0
    print(f"\nModel.run overhead, median of {args.rounds} interleaved blocks; {cpu_name()}, {cpu_count()} cores\n")
    print("| model | backend | direct | edgekit `Model.run` | overhead |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        if r["model"].startswith("add"):
            d, e = f"{r['direct_us']:.1f} us", f"{r['edgekit_us']:.1f} us"
            o = f"{r['overhead_us']:+.1f} us"
        else:
            d, e = f"{r['direct_us'] / 1e3:.2f} ms", f"{r['edgekit_us'] / 1e3:.2f} ms"
            o = f"{r['overhead_pct']:+.1f} %"
        print(f"| {r['model']} | {r['backend']} | {d} | {e} | {o} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
