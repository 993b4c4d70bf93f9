"""Every backend x format it reads gives the same numbers as a NumPy reference."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import edgekit
from samples.synthetic import mlp_reference

MATRIX = [
    ("mlp.onnx", "onnxruntime:CPUExecutionProvider"),
    ("mlp.onnx", "openvino:CPU"),
    ("mlp.xml", "openvino:CPU"),
    ("mlp.tflite", "litert:CPU"),
    ("mlp.tflite", "openvino:CPU"),
]


@pytest.mark.parametrize(("name", "device"), MATRIX)
@pytest.mark.parametrize("batch", [1, 5])
def test_every_backend_and_format_matches_reference(models, mlp_weights, name, device, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
    with edgekit.load(models[name], device=device) as m:
        assert f"{m.backend}:{m.device}" == device
        out = m.run({"x": x})
    assert list(out) == ["logits"]
    np.testing.assert_allclose(out["logits"], mlp_reference(x, mlp_weights), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp.onnx", "mlp.xml", "mlp.tflite"])
def test_specs_keep_dynamic_batch_dynamic(models, name):
    m = edgekit.load(models[name])
    (spec,) = m.inputs
    assert spec.name == "x" and spec.dtype == np.float32
    assert spec.shape[1] == 8 and not isinstance(spec.shape[0], int)
    assert [o.name for o in m.outputs] == ["logits"]


def test_auto_picks_the_formats_own_runtime_on_cpu(models):
    assert edgekit.load(models["mlp.onnx"]).backend == "onnxruntime"
    assert edgekit.load(models["mlp.xml"]).backend == "openvino"
    assert edgekit.load(models["mlp.tflite"]).backend == "litert"


def test_openvino_runs_at_stored_precision_unless_told(models):
    m = edgekit.load(models["mlp.xml"], device="openvino:CPU")
    assert m.precision == "f32"
    assert m.selection.chosen.precision == "f32"
    caps = next(d for d in edgekit.devices() if d.spec == "openvino:CPU").capabilities
    if "BF16" in caps:
        reduced = edgekit.load(models["mlp.xml"], device="openvino:CPU", precision="any")
        assert reduced.precision == "bf16"


def test_openvino_says_the_precision_its_layers_ran_at(samples):
    """Asked for bf16, the CPU plugin keeps every float layer of the image sample's int8 IR at f32
    (its outputs equal the f32 run's); m.precision said "bf16" all the same. MiniLM's int8 IR and
    the image sample's fp32 IR do run layers at bf16."""
    caps = next(d for d in edgekit.devices() if d.spec == "openvino:CPU").capabilities
    cases = [(samples["image"] / "model-int8.xml", "f32"), (samples["text"] / "model-int8.xml", "bf16"),
             (samples["image"] / "model-fp32.xml", "bf16")]
    for path, ran in cases:
        if "BF16" not in caps:  # nothing to say it of: the request itself is refused
            with pytest.raises(edgekit.DeviceNotAvailableError, match="cannot compute in bf16"):
                edgekit.load(path, device="openvino:CPU", precision="bf16")
            continue
        with edgekit.load(path, device="openvino:CPU", precision="bf16") as m:
            assert m.precision == ran == m.selection.chosen.precision, (path, m.precision)


def test_reduced_precision_is_refused_where_a_runtime_cannot_do_it(models):
    """A request no candidate can meet is the caller's (DeviceNotAvailableError, exit 2 in the CLI),
    not a runtime failure (NoCandidateError, exit 1)."""
    with pytest.raises(edgekit.DeviceNotAvailableError,
                       match="at precision fp16 is not available here .*precision it was stored in"):
        edgekit.load(models["mlp.onnx"], device="onnxruntime:CPUExecutionProvider", precision="fp16")
    if any("FP16" in d.capabilities for d in edgekit.devices() if d.available and d.backend == "openvino"):
        m = edgekit.load(models["mlp.onnx"], precision="fp16", strict=True)  # an AVX512-FP16 Xeon, a GPU
        assert (m.backend, m.precision) == ("openvino", "f16")
    else:
        with pytest.raises(edgekit.DeviceNotAvailableError, match="cannot compute in fp16|stored in"):
            edgekit.load(models["mlp.onnx"], precision="fp16", strict=True)


def test_arrays_viewed_in_a_buffer_at_any_offset_give_the_same_answer(models):
    """A server views binary tensors in the request body: writable (a bytearray) or read-only (bytes),
    at whatever offset the JSON header leaves, so not always aligned to their elements. OpenVINO takes a
    writable aligned array's memory as it is; every runtime must answer each view as the array itself."""
    x = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    for name, device in MATRIX:
        m = edgekit.load(models[name], device=device)
        expected = m.run(x)["logits"]
        for offset in (0, 1, 3, 4, 36):
            body = bytes(offset) + x.tobytes()
            for buf in (body, bytearray(body)):
                view = np.ndarray(x.shape, np.float32, buffer=buf, offset=offset)
                assert view.flags.aligned == (offset % 4 == 0)
                np.testing.assert_array_equal(m.run(view)["logits"], expected, err_msg=f"{device} at {offset}")
                assert bytes(buf) == body, f"{device} wrote into the caller's buffer"


def test_threads_share_one_model_with_sequential_results(models):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1 + i % 3, 8)).astype(np.float32) for i in range(48)]
    for name, device in MATRIX:
        m = edgekit.load(models[name], device=device)
        expected = [m.run(x)["logits"] for x in xs]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda x, m=m: m.run(x)["logits"], xs * 4))
        for e, g in zip(expected * 4, got):
            np.testing.assert_array_equal(e, g)


def test_openvino_makes_an_infer_request_only_while_none_runs():
    """OpenVINO's CPU plugin aborted the process in create_infer_request while other requests of
    the same compiled model inferred (the test above, in a clean-clone CI run): making one waits for
    the runs under way, and holds new runs back until it is made."""
    import threading

    from edgekit.backends.ov import _Gate

    gate, events = _Gate(), []
    gate.enter()  # a run under way
    made = threading.Event()

    def make() -> None:
        with gate.alone():
            events.append("made")
        made.set()

    def run() -> None:
        gate.enter()
        events.append("ran")
        gate.leave()

    maker = threading.Thread(target=make)
    maker.start()
    deadline = time.monotonic() + 10
    while not gate._making and time.monotonic() < deadline:  # the maker waits for the run
        time.sleep(0.001)
    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.05)
    assert events == [] and gate._making  # neither the maker nor a new run went ahead
    gate.leave()
    maker.join(10)
    runner.join(10)
    assert made.is_set() and events == ["made", "ran"]


def _split(m) -> dict:
    """How the runtime under ``m`` divided the cores (each backend's own settings, read back)."""
    s = m._session
    if m.backend == "openvino":
        return {"hint": str(s._compiled.get_property("PERFORMANCE_HINT")),
                "streams": int(s._compiled.get_property("NUM_STREAMS"))}
    if m.backend == "onnxruntime":
        return {"threads": s._sess.get_session_options().intra_op_num_threads}
    return {"interpreters": s._idle.qsize()}


@pytest.mark.parametrize(("name", "device"), MATRIX)
def test_concurrency_divides_the_cores_between_runs_and_keeps_results(models, name, device):
    from concurrent.futures import ThreadPoolExecutor

    from edgekit.hostinfo import cpu_count

    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1 + i % 3, 8)).astype(np.float32) for i in range(32)]
    with edgekit.load(models[name], device=device) as one:
        expected = [one.run(x)["logits"] for x in xs]
        default = _split(one)
    with edgekit.load(models[name], device=device, concurrency=2) as m:
        split = _split(m)
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda x: m.run(x)["logits"], xs * 3))
    for e, g in zip(expected * 3, got):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    if m.backend == "openvino":
        assert default["hint"] == "LATENCY" and split["hint"] == "THROUGHPUT"
        assert 1 <= split["streams"] <= 2
    elif m.backend == "onnxruntime":
        assert split["threads"] == max(1, cpu_count() - 1)  # a pool shared by 2 calling threads
    else:
        assert default == {"interpreters": 1} and split == {"interpreters": 2}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_concurrency_is_a_whole_number_of_runs(models, bad):
    with pytest.raises(edgekit.UsageError, match="concurrency must be a whole number"):
        edgekit.load(models["mlp.onnx"], concurrency=bad)
    with edgekit.load(models["mlp.onnx"], concurrency=np.int64(2)) as m:  # any integer type
        assert m.run(np.zeros((1, 8), np.float32))["logits"].shape[0] == 1


def test_a_closed_litert_session_refuses_runs_and_never_hangs(models):
    import threading

    m = edgekit.load(models["mlp.tflite"], device="litert:CPU", concurrency=2)
    session, x = m._session, [np.zeros((1, 8), np.float32)]
    session.run(x)
    session.close()
    failures = []

    def run() -> None:
        try:
            session.run(x)
        except edgekit.BackendError as e:
            failures.append(str(e))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads) and failures == ["the LiteRT session is closed"] * 3


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a process allowed on two or more CPUs, to allow it only one")
def test_a_process_allowed_one_cpu_gets_no_extra_runtime_threads(models):
    """ONNX Runtime sizes its pool by the machine's cores, not the CPUs the process may use (taskset, a
    container's cpuset): two threads fighting over one core ran EfficientNet-Lite0 1.9x slower."""
    code = f"""
import os, numpy as np, edgekit, onnxruntime
os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
before = len(os.listdir("/proc/self/task"))
m = edgekit.load({str(models["mlp.onnx"])!r}, device="onnxruntime")
m.run(np.zeros((1, 8), np.float32))
print(len(os.listdir("/proc/self/task")) - before)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0", proc.stdout
