"""Policies, ranking, fallback that is never silent, strict mode, explicit requests."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fault_backend import FaultBackend

import edgekit
from edgekit import backends
from edgekit.types import DeviceKind, Precision

X = np.ones((2, 8), np.float32)


def _fake(behaviours) -> FaultBackend:
    fb = FaultBackend("fake", behaviours)
    backends.register("fake", fb)
    return fb


def test_auto_prefers_an_accelerator_and_records_every_candidate(models):
    fb = _fake({"GPU0": (DeviceKind.GPU, "ok"), "NPU0": (DeviceKind.NPU, "ok")})
    m = edgekit.load(models["mlp.onnx"])
    assert (m.backend, m.device) == ("fake", "GPU0")
    statuses = {a.spec: a.status for a in m.selection.attempts}
    assert statuses["fake:GPU0"] == "opened"
    assert statuses["fake:NPU0"] == "not tried"
    assert statuses["onnxruntime:CPUExecutionProvider"] == "not tried"
    assert statuses["onnxruntime:CUDAExecutionProvider"] == "skipped"
    assert fb.opened == ["GPU0"]
    assert not m.selection.fell_back


def test_open_failure_falls_back_with_a_warning_and_a_record(models, caplog):
    _fake({"GPU0": (DeviceKind.GPU, "open_fails")})
    with caplog.at_level(logging.WARNING, logger="edgekit"):
        m = edgekit.load(models["mlp.onnx"])
    assert m.backend == "onnxruntime"
    failed = [a for a in m.selection.attempts if a.status == "failed"]
    assert [a.spec for a in failed] == ["fake:GPU0"]
    assert "failed to create context" in failed[0].reason
    assert m.selection.fell_back
    assert "fell back to onnxruntime:CPUExecutionProvider" in caplog.text
    assert "fake:GPU0" in caplog.text
    np.testing.assert_array_equal(m.run(X)["logits"].shape, (2, 3))


def test_first_inference_failure_falls_back(models, caplog):
    _fake({"NPU0": (DeviceKind.NPU, "run_fails")})
    with caplog.at_level(logging.WARNING, logger="edgekit"):
        m = edgekit.load(models["mlp.onnx"])
    assert m.backend == "onnxruntime"
    (failed,) = [a for a in m.selection.attempts if a.status == "failed"]
    assert failed.spec == "fake:NPU0" and "first inference failed" in failed.reason
    assert "out of device memory" in failed.reason
    assert "fell back" in caplog.text


def test_a_lone_file_retries_its_first_inference_with_its_packages_warmup(samples):
    """Silero's own file needs a whole window and a sample rate: the guessed [1, 1] input fails in its
    graph, so the first inference is retried with the warm-up inputs of the package that lists it."""
    with edgekit.load(samples["audio"] / "model.onnx") as m:
        statuses = {a.status for a in m.selection.attempts}
        assert m.backend == "onnxruntime" and "opened" in statuses and "failed" not in statuses, m.selection
        out = m.run({"input": np.zeros((1, 576), np.float32), "state": np.zeros((2, 1, 128), np.float32),
                     "sr": np.array(16000, np.int64)})
        assert out["output"].shape == (1, 1)


def test_a_lone_file_that_refuses_the_guessed_sizes_opens_unchecked_and_says_so(samples, tmp_path, caplog):
    """Silero's file copied out of its package (no card, no warm-up sizes): the guessed [1, 1] window fails
    in its STFT on every runtime, so it could not be opened at all. A model whose lengths, heights or widths
    are dynamic is common (dynamic-axes exports); it now opens on the best candidate that refused only the
    guess, with the record and a warning saying so, and runs on real inputs."""
    import shutil

    lone = tmp_path / "vad.onnx"
    shutil.copy(samples["audio"] / "model.onnx", lone)
    window = {"input": np.full((1, 576), 0.1, np.float32), "state": np.zeros((2, 1, 128), np.float32),
              "sr": np.array(16000, np.int64)}
    with edgekit.load(samples["audio"] / "model.onnx", device="onnxruntime") as packaged:
        expected = packaged.run(window)
    for device in ("auto", "fastest"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgekit"), edgekit.load(lone, device=device) as m:
            chosen = m.selection.chosen
            assert m.backend == "onnxruntime" and chosen is not None, m.selection
            assert chosen.reason.startswith("opened without a first inference: its dynamic sizes are not known, "
                                            "and the guessed ones (input [1, 1], state [2, 1, 128], sr [1]; then "
                                            "input [1, 64], state [2, 64, 128])"), chosen.reason
            assert "give it real inputs, or warmup_inputs in its card" in chosen.reason
            assert "opened without a first inference" in caplog.text
            # OpenVINO cannot convert it, and is ranked after: nothing fell back (fastest tries every one)
            assert m.selection.fell_back == (device == "fastest")
            assert ("fell back" in caplog.text) == (device == "fastest")
            out = m.run(window)
        for name in expected:
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-6, atol=1e-6)
    with pytest.raises(edgekit.BackendError, match="strict"):  # strict mode does not open it unchecked
        edgekit.load(lone, strict=True)

    # A device whose every run fails (out of memory), ranked first: its error does not move with the
    # sizes, so it is a failure, and the CPU that refused only the guesses opens (it was the GPU)
    _fake({"GPU0": (DeviceKind.GPU, "run_fails")})
    with edgekit.load(lone) as m:
        assert m.backend == "onnxruntime", m.selection
        (gpu,) = [a for a in m.selection.attempts if a.spec == "fake:GPU0"]
        assert gpu.status == "failed" and "out of device memory" in gpu.reason
        assert m.selection.fell_back and m.run(window)["output"].shape == (1, 1)


def test_a_dynamic_length_too_short_at_1_is_checked_at_a_second_guess(tmp_path):
    """A reflect pad of 2 needs a length of 3: guessed at 1 it failed on every runtime, and the model
    could not be opened. The second guess (64) passes, so it opens checked, as any other."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], "reflect",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        [numpy_helper.from_array(np.array([0, 2, 0, 2], np.int64), "pads")])
    path = tmp_path / "reflect.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    for device in ("auto", "fastest"):  # fastest times every candidate at the sizes that ran (it timed at 1)
        with edgekit.load(path, device=device) as m:
            assert "without a first inference" not in m.selection.chosen.reason, m.selection
            assert all(a.status != "failed" for a in m.selection.attempts), m.selection
            x = np.arange(4, dtype=np.float32)[None]
            np.testing.assert_array_equal(m.run(x)["y"], [[2, 1, 0, 1, 2, 3, 2, 1]])


def test_a_failure_on_a_guessed_batch_of_one_is_a_failure(models):
    """A batch of 1 is a safe guess: a first inference that fails on it is the device's failure, and a
    model whose only dynamic dim is its batch is not opened unchecked."""
    _fake({"GPU0": (DeviceKind.GPU, "run_fails")})
    with pytest.raises(edgekit.NoCandidateError, match="out of device memory"):
        edgekit.load(models["mlp.onnx"], device="fake:GPU0")


def test_strict_raises_instead_of_falling_back(models):
    _fake({"GPU0": (DeviceKind.GPU, "open_fails")})
    with pytest.raises(edgekit.BackendError, match="fake:GPU0 failed.*strict"):
        edgekit.load(models["mlp.onnx"], strict=True)


def test_every_candidate_failing_raises_with_the_record(models):
    _fake({"GPU0": (DeviceKind.GPU, "run_fails")})
    with pytest.raises(edgekit.NoCandidateError) as info:
        edgekit.load(models["mlp.onnx"], device="gpu")
    assert info.value.selection.attempts[-1].status == "failed"
    assert "fake:GPU0" in str(info.value)


def test_unavailable_device_is_skipped_with_its_reason(models):
    _fake({"TPU0": (DeviceKind.TPU, "unavailable")})
    m = edgekit.load(models["mlp.onnx"])
    (a,) = [a for a in m.selection.attempts if a.spec == "fake:TPU0"]
    assert a.status == "skipped" and a.reason == "driver not installed"
    with pytest.raises(edgekit.DeviceNotAvailableError, match="fake:TPU0: driver not installed"):
        edgekit.load(models["mlp.onnx"], device="fake:TPU0")


@pytest.mark.parametrize(("device", "expected"), [
    ("cpu", "onnxruntime:CPUExecutionProvider"),
    ("openvino", "openvino:CPU"),
    ("ov", "openvino:CPU"),
    ("openvino:cpu", "openvino:CPU"),
    ("onnxruntime:CPU", "onnxruntime:CPUExecutionProvider"),
    ("ORT:CPUExecutionProvider", "onnxruntime:CPUExecutionProvider"),
])
def test_explicit_policies(models, device, expected):
    m = edgekit.load(models["mlp.onnx"], device=device)
    assert f"{m.backend}:{m.device}" == expected


def test_kind_policy_uses_only_that_kind(models):
    _fake({"GPU0": (DeviceKind.GPU, "ok"), "NPU0": (DeviceKind.NPU, "ok")})
    m = edgekit.load(models["mlp.onnx"], device="npu")
    assert (m.backend, m.device) == ("fake", "NPU0")
    assert all(a.kind is DeviceKind.NPU for a in m.selection.attempts)


def test_explicit_request_that_cannot_be_met_names_what_exists(models):
    with pytest.raises(edgekit.DeviceNotAvailableError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        edgekit.load(models["mlp.onnx"], device="onnxruntime:CUDAExecutionProvider")
    with pytest.raises(edgekit.DeviceNotAvailableError, match="litert cannot read onnx"):
        edgekit.load(models["mlp.onnx"], device="litert")
    with pytest.raises(edgekit.DeviceNotAvailableError, match="no device matches 'openvino:VPU'"):
        edgekit.load(models["mlp.onnx"], device="openvino:VPU")
    with pytest.raises(edgekit.UsageError, match="unknown device 'warp-drive'"):
        edgekit.load(models["mlp.onnx"], device="warp-drive")
    with pytest.raises(edgekit.UsageError, match="empty device"):
        edgekit.load(models["mlp.onnx"], device=" ")


def test_onnxruntime_silent_cpu_fallback_is_detected(models):
    """ORT quietly runs on CPU when a provider it was given cannot initialise: edgekit refuses."""
    from edgekit.types import Device, Format, Precision

    ort_backend = backends.get("onnxruntime")
    cuda = Device("onnxruntime", "CUDAExecutionProvider", DeviceKind.GPU, "CUDA")
    expected = "silently fell back to CPUExecutionProvider.*not in available provider names"
    with pytest.raises(edgekit.BackendError, match=expected):
        ort_backend.open(models["mlp.onnx"], Format.ONNX, cuda, Precision.STORED)


def test_broken_backend_package_never_breaks_edgekit(models):
    backends.register("plugin", "edgekit_no_such_module:Backend")
    (row,) = [d for d in edgekit.devices() if d.backend == "plugin"]
    assert not row.available and "edgekit_no_such_module does not import" in row.reason

    class Broken:
        name, formats, native = "broken", frozenset(), frozenset()

        def status(self):
            from edgekit.backends.base import BackendStatus

            return BackendStatus(False, reason="libfoo.so: cannot open shared object file")

        def devices(self):
            return []

    backends.register("broken", Broken())
    rows = [d for d in edgekit.devices() if d.backend == "broken"]
    assert rows and not rows[0].available and "libfoo.so" in rows[0].reason
    assert edgekit.load(models["mlp.onnx"]).backend == "onnxruntime"


def test_selection_serialises(models):
    m = edgekit.load(models["mlp.tflite"])
    doc = m.selection.to_dict()
    assert doc["chosen"] == "litert:CPU" and doc["policy"] == "auto"
    assert doc["attempts"][0]["status"] in ("skipped", "opened")
    assert "litert:CPU" in str(m.selection)


def test_missing_runtime_package_is_reported_and_others_still_load(models):
    """With onnxruntime unimportable, devices() says why and .onnx opens with OpenVINO."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import edgekit\n"
        "rows = [d for d in edgekit.devices() if d.backend == 'onnxruntime']\n"
        "assert len(rows) == 1 and not rows[0].available, rows\n"
        "assert 'pip install onnxruntime' in rows[0].reason, rows[0].reason\n"
        f"m = edgekit.load({str(models['mlp.onnx'])!r})\n"
        "assert m.backend == 'openvino', m.backend\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_fp16_asked_of_a_file_stored_in_fp16_runs_it(samples):
    """ONNX Runtime and LiteRT cannot be told a precision: precision="fp16" used to refuse even the
    fp16 files ("load a model stored in fp16"). A file stored in fp16, as its package or card says,
    is what it asks for; a file stored in fp32 is still refused."""
    for name, device in [("model-fp16.onnx", "onnxruntime"), ("model-fp16.tflite", "litert")]:
        with edgekit.load(samples["image"] / name, device=device, precision="fp16") as m:
            assert m.backend == device and m.precision == "as stored"
    with pytest.raises(edgekit.DeviceNotAvailableError, match="stored in fp16"):
        edgekit.load(samples["image"] / "model-fp32.onnx", device="onnxruntime", precision="fp16")
    with edgekit.load(samples["image"], precision="fp16") as m:  # OpenVINO may compute any IR in fp16
        assert m.path.name.startswith("model-fp16") or m.backend == "openvino", m.selection


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("device", ["auto", "fastest", "openvino"])
def test_fp16_or_bf16_of_a_package_runs_a_float_file(samples, precision, device, tmp_path, monkeypatch):
    """OpenVINO opened the image sample's int8 IR for precision="fp16": int8's accuracy (cosine 0.993 to
    fp32, against 0.999996 for the fp16 file), 9x slower than at f32. The int8 files are passed over."""
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    with edgekit.load(samples["image"], device=device, precision=precision) as m:
        assert "int8" not in m.path.name and m.precision in (precision.replace("fp", "f"), "as stored"), m.selection
        passed_over = [a for a in m.selection.attempts if a.artifact and "int8" in a.artifact
                       and a.status == "skipped" and a.device == "CPU"]
        assert passed_over and all("int8" in a.reason for a in passed_over), m.selection


@pytest.mark.parametrize("device", ["auto", "fastest", "onnxruntime", "openvino", "litert"])
def test_fp32_of_a_package_runs_its_fp32_file(samples, device, tmp_path, monkeypatch):
    """precision="fp32" was an alias of "stored", so it could run a package's int8 or fp16 file and
    m.selection said "stored". It runs a file stored in fp32, computed as stored (f32), and says so."""
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    with edgekit.load(samples["image"], device=device, precision="fp32") as m:
        assert m.path.name.startswith("model-fp32") and m.precision in ("f32", "as stored"), m.selection
        assert m.selection.precision == "fp32"
        tried = [a for a in m.selection.attempts if a.status in ("opened", "failed")]
        assert all(a.artifact.startswith("model-fp32") for a in tried), m.selection
        passed_over = [a for a in m.selection.attempts if "fp32 asks for a file stored in fp32" in a.reason]
        assert passed_over and not any(a.artifact.startswith("model-fp32") for a in passed_over), m.selection
    assert Precision.parse("F32") is Precision.parse("float32") is Precision.FP32


def test_fp32_of_a_file_stored_otherwise_is_refused_on_every_runtime(samples):
    """A lone file whose card says int8 or fp16 is not run for precision="fp32" (OpenVINO would have
    opened the int8 IR at f32 where ONNX Runtime refused it)."""
    for name in ("model-int8.xml", "model-int8.onnx", "model-fp16.tflite"):
        with pytest.raises(edgekit.DeviceNotAvailableError, match=rf"{name} is stored in (int8|fp16)"):
            edgekit.load(samples["image"] / name, device="cpu", precision="fp32", strict=True)


def test_load_of_something_that_is_not_a_path_is_a_usage_error():
    for path in (None, b"model.onnx", 3):
        with pytest.raises(edgekit.UsageError, match="path must be a model file or package folder"):
            edgekit.load(path)
