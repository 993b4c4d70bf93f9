"""Regressions found in review: each case once broke fallback, leaked a raw exception or a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import run_cli
from fault_backend import FaultBackend
from onnx import TensorProto, helper

import edgekit
from edgekit import backends
from edgekit.types import DeviceKind


def _onnx(path, nodes, inputs, outputs, opset=17):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def det_onnx(tmp_path):
    """Det has no OpenVINO conversion rule; ONNX Runtime runs it."""
    return _onnx(tmp_path / "det.onnx", [helper.make_node("Det", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])


def test_op_one_backend_cannot_convert_does_not_stop_fallback(det_onnx):
    m = edgekit.load(det_onnx, device="fastest", cache=False)
    assert m.backend == "onnxruntime"
    (failed,) = [a for a in m.selection.attempts if a.status == "failed"]
    assert failed.spec == "openvino:CPU" and "Det" in failed.reason
    x = np.stack([np.eye(3, dtype=np.float32) * 2, np.eye(3, dtype=np.float32)])
    np.testing.assert_allclose(m.run(x)["y"], [8.0, 1.0], rtol=1e-5)
    with pytest.raises(edgekit.NoCandidateError, match="No conversion rule found for operations: Det"):
        edgekit.load(det_onnx, device="openvino")


def test_tflite_with_an_op_litert_lacks_is_a_runtime_failure_not_a_bad_file(models, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(models["mlp.tflite"]))
    model.operatorCodes[0].builtinCode = 200  # an op neither LiteRT's CPU kernels nor OpenVINO take
    model.operatorCodes[0].deprecatedBuiltinCode = 127
    fu.write_model(model, str(tmp_path / "badop.tflite"))
    with pytest.raises(edgekit.NoCandidateError, match="Didn't find op"):
        edgekit.load(tmp_path / "badop.tflite")


def test_read_only_inputs_run_on_every_backend(models):
    for name in ("mlp.onnx", "mlp.xml", "mlp.tflite"):
        m = edgekit.load(models[name])
        x = np.ones((2, 8), np.float32)
        expected = m.run(x)["logits"]
        x.setflags(write=False)
        np.testing.assert_array_equal(m.run(x)["logits"], expected)
        big = np.ones((40000, 8), np.float32)
        big.setflags(write=False)
        assert m.run(big)["logits"].shape == (40000, 3)


def test_input_of_unknown_rank_accepts_any_rank(tmp_path):
    path = _onnx(tmp_path / "norank.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = edgekit.load(path)
    assert m.inputs[0].shape is None and "any rank" in str(m.inputs[0])
    x = np.array([[-1.0, 2.0, -3.0]], np.float32)
    np.testing.assert_array_equal(m.run(x)["y"], [[0.0, 2.0, 0.0]])
    assert m.run(np.ones((2, 2, 2), np.float32))["y"].shape == (2, 2, 2)


def test_runtime_refusal_during_run_is_an_edgekit_error(tmp_path):
    # Differently named dims, so that the runtime, not edgekit's named-dim check, refuses 2 against 3
    path = _onnx(tmp_path / "adddyn.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                 [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4]),
                  helper.make_tensor_value_info("b", TensorProto.FLOAT, ["m", 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    a, b = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    for device in ("onnxruntime", "openvino"):
        m = edgekit.load(path, device=device)
        with pytest.raises(edgekit.EdgekitError, match=f"{m.backend}:{m.device}") as info:
            m.run({"a": a, "b": b})
        assert info.value.__cause__ is not None
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = run_cli("run", str(path), "-i", f"a={tmp_path / 'a.npy'}", "-i", f"b={tmp_path / 'b.npy'}")
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr
    assert out.stderr.startswith("edgekit: error: ")


def test_closed_model_says_so(models):
    m = edgekit.load(models["mlp.onnx"])
    m.close()
    with pytest.raises(edgekit.EdgekitError, match="closed"):
        m.run(np.ones((1, 8), np.float32))


def test_a_model_closed_during_a_run_says_so(models):
    """Closed by another thread while a run was under way, the session failed as "'NoneType' object has no
    attribute 'run'" (ONNX Runtime) or "the LiteRT session is closed": a BackendError, not "closed"."""
    for name in ("mlp.onnx", "mlp.tflite"):
        m = edgekit.load(models[name])
        session_run = m._run

        def closed_meanwhile(arrays, m=m, session_run=session_run):
            m.close()  # what the other thread does between this run's start and its call into the runtime
            return session_run(arrays)

        m._run = closed_meanwhile
        with pytest.raises(edgekit.EdgekitError, match="this model was closed") as e:
            m.run(np.ones((1, 8), np.float32))
        assert not isinstance(e.value, edgekit.BackendError), name


@pytest.mark.parametrize("dims", [[1, 4], ["batch", 4]])
def test_bfloat16_inputs_fall_back_from_onnxruntime_to_openvino(tmp_path, dims):
    """ORT's Python API cannot take bfloat16 arrays; auto records that and OpenVINO runs it, bit-exact."""
    import ml_dtypes

    path = _onnx(tmp_path / "bf16.onnx", [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                 [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, dims)],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    m = edgekit.load(path)
    assert m.backend == "openvino"
    assert m.inputs[0].dtype == np.dtype(ml_dtypes.bfloat16)
    assert any(a.spec == "onnxruntime:CPUExecutionProvider" and a.status == "failed"
               for a in m.selection.attempts)
    x = np.array([[1.5, -2.0, 0.25, 8.0]], np.float32)
    np.testing.assert_array_equal(m.run(x.astype(ml_dtypes.bfloat16))["y"], x)


def test_fastest_without_verification_still_falls_back(models):
    backends.register("fake", FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "run_fails")}))
    m = edgekit.load(models["mlp.onnx"], device="fastest", verify=False, cache=False)
    assert m.backend != "fake"
    (failed,) = [a for a in m.selection.attempts if a.status == "failed"]
    assert failed.spec == "fake:GPU0" and "failed while timed" in failed.reason


def test_cached_choice_that_fails_is_recorded_once(models, monkeypatch):
    from edgekit import cache

    backends.register("fake", FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "open_fails")}))
    monkeypatch.setattr(cache, "get", lambda key: {"choice": "fake:GPU0:mlp.onnx", "p50_ms": 0.001,
                                                   "measured_at": "2026-01-01T00:00:00"})
    m = edgekit.load(models["mlp.onnx"], device="fastest")
    assert [a.spec for a in m.selection.attempts].count("fake:GPU0") == 1
    assert m.backend != "fake" and m.selection.cache == "stored"
    assert all(a.latency_ms is not None for a in m.selection.attempts if a.status in ("opened", "passed over"))


@pytest.mark.parametrize(("entry", "fragment"), [
    ({"path": "mlp.onnx", "format": "onnnx"}, "unknown format 'onnnx'"),
    ({"path": 5}, "has no 'path' string"),
    ({"path": "mlp.onnx", "sha256": 12}, "sha256 must be 64 hex digits"),
])
def test_bad_manifest_fields_are_model_file_errors(tmp_path, models, entry, fragment):
    shutil.copy(models["mlp.onnx"], tmp_path / "mlp.onnx")
    (tmp_path / "edgekit.json").write_text(json.dumps({"artifacts": [entry]}))
    with pytest.raises(edgekit.ModelFileError, match=fragment):
        edgekit.load(tmp_path)
    out = run_cli("info", str(tmp_path))
    assert out.returncode == 2 and fragment in out.stderr and "Traceback" not in out.stderr


def test_package_whose_only_artifact_is_corrupt_is_a_file_error(tmp_path, models):
    from edgekit import formats

    shutil.copy(models["mlp.onnx"], tmp_path / "mlp.onnx")
    digest = formats.sha256_files([tmp_path / "mlp.onnx"]).upper()  # case must not matter
    (tmp_path / "edgekit.json").write_text(json.dumps({"artifacts": [{"path": "mlp.onnx", "sha256": digest}]}))
    assert edgekit.load(tmp_path).backend == "onnxruntime"
    (tmp_path / "mlp.onnx").write_bytes(b"\x08\x07broken")
    with pytest.raises(edgekit.ModelFileError, match="checksum mismatch"):
        edgekit.load(tmp_path)


def test_cli_out_path_problems_are_usage_errors(models, tmp_path):
    (tmp_path / "dir.npz").mkdir()
    out = run_cli("run", str(models["mlp.onnx"]), "--synthetic", "--out", str(tmp_path / "dir.npz"))
    assert out.returncode == 2 and "a folder; --out takes a file name" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("run", str(models["mlp.onnx"]), "--synthetic", "--out", "/proc/no/such/out.npz")
    assert out.returncode == 2 and "cannot write outputs" in out.stderr and "Traceback" not in out.stderr


def test_bench_device_and_all_devices_are_exclusive(models):
    out = run_cli("bench", str(models["mlp.onnx"]), "--all-devices", "--device", "openvino")
    assert out.returncode == 2 and "not both" in out.stderr


def test_publish_keeps_the_old_package_when_the_swap_fails(tmp_path, models, monkeypatch):
    import os

    from edgekit import package

    def make(version):
        staging = package.staging_dir(tmp_path / "pkg")
        shutil.copy(models["mlp.onnx"], staging / "mlp.onnx")
        return staging, {"name": "mlp", "version": version,
                         "artifacts": [{"path": "mlp.onnx", "format": "onnx", "precision": "fp32"}]}

    staging, manifest = make("1")
    package.publish(staging, tmp_path / "pkg", manifest)
    assert oct((tmp_path / "pkg").stat().st_mode & 0o777) != oct(0o700)  # readable like any folder
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):  # the swap of the new package into place fails, once
        calls.append(dst)
        if str(dst) == str(tmp_path / "pkg") and str(src).find("-old-") < 0 and not calls.count("failed"):
            calls.append("failed")
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    staging, manifest = make("2")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        package.publish(staging, tmp_path / "pkg", manifest)
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads((tmp_path / "pkg" / "edgekit.json").read_text())["version"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no staging or old folders left
    assert edgekit.load(tmp_path / "pkg").backend == "onnxruntime"


# --- a long-running app ------------------------------------------------------------------------

def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def test_openvino_memory_stays_bounded_over_texts_of_every_length(samples):
    """OpenVINO's CPU plugin kept compiled kernels for up to 5000 input shapes: the auto-picked int8
    MiniLM grew by 1.6 GB over 400 calls of varying lengths, and went on growing."""
    from edgekit.tasks import TextEmbedder

    rng = np.random.default_rng(0)
    with TextEmbedder(samples["text"] / "model-int8.xml", device="openvino") as emb:
        def calls(n: int) -> None:
            for _ in range(n):
                emb.embed([" ".join(["word"] * int(rng.integers(2, 300))) for _ in range(int(rng.integers(1, 4)))])

        calls(150)
        before = _rss_mb()
        calls(150)  # new shapes still: at the old capacity, about 4 MB a call more
        grew = _rss_mb() - before
    assert grew < 150, f"{grew:.0f} MB over 150 more calls"


@pytest.mark.parametrize("artifact", ["model-int8.xml", "model-fp32.onnx", "model-int8.tflite"])
def test_a_runtime_keeps_no_callers_array_after_the_run(samples, artifact):
    """OpenVINO's idle requests kept each caller's large input (shared, not copied) alive until they
    ran again: four concurrent 38 MB inputs stayed in memory after the callers dropped them."""
    import gc
    import weakref

    with edgekit.load(samples["image"] / artifact) as m:
        shape = [d if isinstance(d, int) else 4 for d in m.inputs[0].shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        first = m.run(x)
        alive = weakref.ref(x)
        del x
        gc.collect()
        assert alive() is None, f"{m.backend} keeps the input alive"
        again = m.run(np.random.default_rng(0).standard_normal(shape).astype(np.float32))  # still right after
        np.testing.assert_array_equal(next(iter(again.values())), next(iter(first.values())))


def test_a_bench_row_says_what_the_device_met_not_benchs_own_strict_mode(models):
    """bench opens each device strictly, its own choice: a row said "... and strict mode does not fall
    back" although no --strict was given."""
    from edgekit.bench import bench_model

    backends.register("fake", FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "open_fails")}))
    with pytest.raises(edgekit.BackendError) as info:
        bench_model(str(models["mlp.onnx"]), "fake:GPU0", precision=None, runs=1, warmup=0)
    assert str(info.value) == "fake:GPU0: failed to create context (simulated)"


def test_openvino_names_the_ops_it_could_not_convert_and_the_first_cause():
    """Its report put "Model wasn't fully converted" and "Conv-16 with a message:" first: the error said
    neither which ops nor why. (The report as OpenVINO 2026.4 wrote it for Silero VAD's ONNX file.)"""
    from edgekit.backends.ov import _first_line

    report = ("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'false' failed at src/frontends/common_"
              "translators/src/unconverted_ops_report.cpp:151:\nFrontEnd API failed with OpConversionFailure:\n"
              "Model wasn't fully converted. Failed operations detailed log:\n-- Conv-16 with a message:\nWhile "
              "validating ONNX node '<Node(Conv): /decoder/Conv_output_0>': Check 'data.get_partial_shape().rank()"
              ".is_static()' failed at src/frontends/onnx/frontend/src/op/conv.cpp:38:\nFrontEnd API failed with "
              "GeneralFailure:\nThe input data tensor's rank has to be known (static)\n\n-- ReduceMean-16 with a "
              "message:\nUnsupported input type dynamic\n\nSummary:\n-- Conversion is failed for: Conv-16, "
              "ReduceMean-16\n\n")
    assert _first_line(RuntimeError(report)) == ("Conversion is failed for: Conv-16, ReduceMean-16; "
                                                 "The input data tensor's rank has to be known (static)")
