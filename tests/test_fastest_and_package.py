"""The "fastest" policy, its cache, and model packages."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fault_backend import FaultBackend

import edgekit
from edgekit import backends, formats
from edgekit.types import DeviceKind


def test_fastest_measures_every_candidate_and_keeps_the_quickest(models):
    m = edgekit.load(models["mlp.onnx"], device="fastest")
    measured = [a for a in m.selection.attempts if a.latency_ms is not None]
    assert {a.spec for a in measured} == {"onnxruntime:CPUExecutionProvider", "openvino:CPU"}
    chosen = m.selection.chosen
    assert chosen.latency_ms == min(a.latency_ms for a in measured)
    loser = next(a for a in measured if a is not chosen)
    assert loser.status == "passed over" and "slower" in loser.reason
    assert m.selection.cache == "stored"


def test_fastest_decision_is_cached_and_reused(models, tmp_path, monkeypatch):
    first = edgekit.load(models["mlp.onnx"], device="fastest")
    again = edgekit.load(models["mlp.onnx"], device="fastest")
    assert again.selection.cache == "hit"
    assert f"{again.backend}:{again.device}" == f"{first.backend}:{first.device}"
    assert all(a.status in ("opened", "not tried", "skipped") for a in again.selection.attempts)
    # The cache lives in EDGEKIT_CACHE_DIR (the user's cache folder by default).
    data = json.loads((tmp_path / "cache" / "fastest.json").read_text())
    (entry,) = data.values()
    assert entry["choice"].startswith(first.backend) and "measured_at" in entry


def test_fastest_cache_key_changes_with_the_model_and_the_devices(models, tmp_path):
    edgekit.load(models["mlp.onnx"], device="fastest")
    copy = tmp_path / "other.onnx"
    from samples.synthetic import mlp_onnx, mlp_weights

    mlp_onnx(copy, mlp_weights(seed=3))
    assert edgekit.load(copy, device="fastest").selection.cache == "stored"  # new model: measured
    backends.register("fake", FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "ok")}))
    m = edgekit.load(models["mlp.onnx"], device="fastest")  # new device inventory: measured again
    assert m.selection.cache == "stored"
    assert any(a.spec == "fake:GPU0" and a.latency_ms is not None for a in m.selection.attempts)


def test_fastest_skips_candidates_that_fail(models):
    backends.register("fake", FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "run_fails")}))
    m = edgekit.load(models["mlp.onnx"], device="fastest", cache=False)
    assert m.backend != "fake"
    assert any(a.spec == "fake:GPU0" and a.status == "failed" for a in m.selection.attempts)


def test_fastest_interrupted_while_timing_leaves_no_session_open(models):
    """A Ctrl-C while one candidate was timed left every other opened candidate's session open."""
    fake = FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "ok"), "GPU1": (DeviceKind.GPU, "interrupted"),
                                 "GPU2": (DeviceKind.GPU, "ok")})
    backends.register("fake", fake)
    with pytest.raises(KeyboardInterrupt):
        edgekit.load(models["mlp.onnx"], device="fastest", cache=False)
    assert sorted(fake.opened) == sorted(fake.closed) == ["GPU0", "GPU1", "GPU2"], (fake.opened, fake.closed)


def test_fastest_reduced_precision_only_when_allowed(models):
    m = edgekit.load(models["mlp.xml"], device="fastest", cache=False)
    assert all(a.precision in (None, "f32") for a in m.selection.attempts)


def _text_like_package(tmp_path):
    """One Add as two artifacts of a package: ONNX with a dynamic sequence, as torch exports a text
    model, and TFLite with the sequence fixed at 6, as onnx2tf writes one."""
    from samples import synthetic as builders

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    builders.add_onnx(pkg / "add.onnx", shape=(1, "sequence"))
    builders.add_tflite(pkg / "add.tflite", shape=(1, 6))
    artifacts = [{"path": n, "format": f, "precision": "fp32", "sha256": formats.sha256_files([pkg / n])}
                 for n, f in (("add.onnx", "onnx"), ("add.tflite", "tflite"))]
    (pkg / "edgekit.json").write_text(json.dumps({"schema_version": 1, "name": "add", "artifacts": artifacts}))
    return pkg


def test_fastest_times_every_candidate_on_the_same_input_sizes(tmp_path):
    """The ONNX artifact's open sequence was timed at 1 token beside the TFLite's 6 (MiniLM: 1 against
    256), so "fastest" favoured it for the wrong reason: every candidate is timed at the fixed size."""
    pkg = _text_like_package(tmp_path)
    fb = FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "ok")})  # ONNX Runtime underneath, its runs noted
    backends.register("fake", fb)
    m = edgekit.load(pkg, device="fastest", cache=False)
    timed = {a.spec for a in m.selection.attempts if a.latency_ms is not None}
    assert {"fake:GPU0", "onnxruntime:CPUExecutionProvider", "litert:CPU"} <= timed, m.selection
    first, *measured = fb.runs
    assert first == [(1, 1), (1, 1)]  # the first inference checks that it runs at all
    assert measured and all(shapes == [(1, 6), (1, 6)] for shapes in measured), fb.runs


def test_timing_sizes_warmup_first_then_what_another_candidate_fixes():
    from edgekit.bench import synthetic_inputs, timing_sizes, warmup_of
    from edgekit.types import TensorSpec

    f32, i64 = np.dtype("float32"), np.dtype("int64")
    onnx = [TensorSpec("ids", ("batch", "sequence"), i64), TensorSpec("mask", ("batch", "sequence"), i64)]
    tflite = [TensorSpec("ids", (1, 256), i64), TensorSpec("mask", (1, 256), i64)]
    assert timing_sizes(onnx, [onnx, tflite]) == {"ids": {"shape": [1, 256]}, "mask": {"shape": [1, 256]}}
    assert timing_sizes(tflite, [onnx, tflite]) == {}  # fixed sizes are its own
    assert timing_sizes(onnx, [onnx]) == {}  # nothing fixes them: 1, as synthetic_inputs sets them
    # the package's warm-up sizes come first; a warm-up value without a shape is kept
    warmup = {"ids": {"shape": [1, 32]}, "mask": {"shape": [1, 32], "value": 1}}
    assert timing_sizes(onnx, [onnx, tflite], warmup) == warmup
    assert timing_sizes(onnx, [onnx, tflite], {"mask": {"value": 1}})["mask"] == {"value": 1, "shape": [1, 256]}
    # where candidates fix different sizes, the largest
    short = [TensorSpec("ids", (1, 128), i64), TensorSpec("mask", (1, 128), i64)]
    assert timing_sizes(onnx, [short, tflite])["ids"] == {"shape": [1, 256]}
    # a named dim takes one size in every input: an input no peer has (token type ids) took 1, and the
    # model refused the feed ("inputs disagree on dimension 'sequence'")
    three = [*onnx, TensorSpec("types", ("batch", "sequence"), i64)]
    assert timing_sizes(three, [three, tflite]) == {n: {"shape": [1, 256]} for n in ("ids", "mask", "types")}
    mixed = [TensorSpec("ids", (1, 128), i64)], [TensorSpec("mask", (1, 256), i64)]
    assert timing_sizes(onnx, mixed) == {"ids": {"shape": [1, 256]}, "mask": {"shape": [1, 256]}}
    # another rank says nothing of this input's dims; another layout (NHWC beside NCHW) does, moved
    nchw = [TensorSpec("image", (1, 3, None, None), f32, "NCHW")]
    nhwc = [TensorSpec("image", (1, 224, 224, 3), f32, "NHWC")]
    flat = [TensorSpec("image", (1, 150528), f32)]
    assert timing_sizes(nchw, [nchw, flat]) == {}
    assert timing_sizes(nchw, [nchw, nhwc, flat]) == {"image": {"shape": [1, 3, 224, 224]}}
    assert timing_sizes([TensorSpec("image", (None, None, None, 3), f32, "NHWC")], [nchw, [
        TensorSpec("image", (1, 3, 160, 120), f32, "NCHW")]]) == {"image": {"shape": [1, 160, 120, 3]}}
    # warm-up sizes are the source's: moved where only the move fits this model's fixed dims
    assert timing_sizes(nhwc, [nhwc], {"image": {"shape": [1, 3, 224, 224]}}) == {"image": {"shape": [1, 224, 224, 3]}}
    assert timing_sizes(nchw, [nchw], {"image": {"shape": [1, 3, 64, 64]}}) == {"image": {"shape": [1, 3, 64, 64]}}
    assert timing_sizes(nchw, [[TensorSpec("image", (1, 3, 224, 224), f32, "NCHW")]]) == \
        {"image": {"shape": [1, 3, 224, 224]}}
    # ... and moved whenever the package says which layout they are in: an image 3 pixels wide with
    # 3 channels fits an NHWC model as it is, and was taken as 3 high and 48 wide
    narrow = [TensorSpec("image", (1, None, None, 3), f32, "NHWC")]
    assert timing_sizes(narrow, [narrow], {"image": {"shape": [1, 3, 48, 3]}}) == {"image": {"shape": [1, 3, 48, 3]}}
    manifest = {"inputs": [{"name": "image", "shape": [1, 3, None, None], "layout": "NCHW"}],
                "warmup_inputs": {"image": {"shape": [1, 3, 48, 3]}}}
    declared = warmup_of(manifest)
    assert declared == {"image": {"shape": [1, 3, 48, 3], "layout": "NCHW"}}
    assert timing_sizes(narrow, [narrow], declared) == {"image": {"shape": [1, 48, 3, 3]}}
    assert synthetic_inputs(narrow, warmup=declared)["image"].shape == (1, 48, 3, 3)
    assert synthetic_inputs(nchw, warmup=declared)["image"].shape == (1, 3, 48, 3)
    # a declaration that does not fit (a package whose inputs are its TFLite's NHWC, and whose warm-up
    # sizes are still the ONNX's NCHW) is guessed at as before, not taken at its word
    wrong = warmup_of({"inputs": [{"name": "image", "shape": [1, 56, 56, 3], "layout": "NHWC"}],
                       "warmup_inputs": {"image": {"shape": [1, 3, 56, 56]}}})
    fixed56 = [TensorSpec("image", (1, 56, 56, 3), f32, "NHWC")]
    assert timing_sizes(fixed56, [fixed56], wrong) == {"image": {"shape": [1, 56, 56, 3]}}
    assert warmup_of({"inputs": 5, "warmup_inputs": {"image": {"shape": [1]}}}) == {"image": {"shape": [1]}}
    with_value = warmup_of({**manifest, "warmup_inputs": {"image": {"value": 0.5}}})
    assert timing_sizes(narrow, [narrow, nchw], with_value) == {"image": {"value": 0.5}}  # no layout left behind


# --- packages ----------------------------------------------------------------------------

def _package(tmp_path, models, **overrides):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    artifacts = []
    for name, fmt in (("mlp.onnx", "onnx"), ("mlp.tflite", "tflite")):
        shutil.copy(models[name], pkg / name)
        artifacts.append({"path": name, "format": fmt, "precision": "fp32",
                          "sha256": formats.sha256_files([pkg / name])})
    manifest = {"schema_version": 1, "name": "mlp", "task": None, "labels": ["a", "b", "c"],
                "artifacts": artifacts, **overrides}
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    return pkg


def test_package_loads_and_runs_any_artifact(tmp_path, models, mlp_weights):
    from samples.synthetic import mlp_reference

    pkg = _package(tmp_path, models)
    m = edgekit.load(pkg)
    assert m.path.parent == pkg and m.metadata["labels"] == ["a", "b", "c"]
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(m.run(x)["logits"], mlp_reference(x, mlp_weights), rtol=1e-5, atol=1e-5)
    lite = edgekit.load(pkg, device="litert")
    assert lite.path.name == "mlp.tflite"
    assert all(a.artifact for a in m.selection.attempts)


def test_package_checksum_mismatch_falls_back_to_another_artifact(tmp_path, models):
    pkg = _package(tmp_path, models)
    data = bytearray((pkg / "mlp.onnx").read_bytes())
    data[-20] ^= 0xFF
    (pkg / "mlp.onnx").write_bytes(bytes(data))
    m = edgekit.load(pkg)
    assert m.path.name == "mlp.tflite"
    assert any("checksum mismatch" in a.reason for a in m.selection.attempts if a.status == "failed")
    with pytest.raises(edgekit.ModelFileError, match="checksum mismatch"):
        edgekit.load(pkg, strict=True)


def test_package_artifact_marked_failed_is_never_chosen(tmp_path, models):
    pkg = _package(tmp_path, models)
    manifest = json.loads((pkg / "edgekit.json").read_text())
    manifest["artifacts"][0].update(status="failed", reason="parity: cosine 0.71 < 0.99")
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    m = edgekit.load(pkg)
    assert m.path.name == "mlp.tflite"
    assert any("cosine 0.71" in a.reason for a in m.selection.attempts if a.status == "skipped")


@pytest.mark.parametrize(("manifest", "fragment"), [
    ("{not json", "not valid JSON"),
    ('{"name": "x"}', "no 'artifacts' list"),
    ('{"schema_version": 99, "artifacts": []}', "newer than this edgekit reads"),
    ('{"artifacts": [{"path": "../escape.onnx"}]}', "leaves the package"),
    ('{"artifacts": []}', "lists no artifacts"),
])
def test_bad_manifest(tmp_path, manifest, fragment):
    (tmp_path / "edgekit.json").write_text(manifest)
    with pytest.raises(edgekit.ModelFileError, match=fragment):
        edgekit.load(tmp_path)


def test_recorded_input_names_apply_only_where_they_fit(tmp_path):
    """A package's recorded dim names go on the artifact's unnamed dims of the same input and rank
    (OpenVINO IR keeps none); entries for other inputs or other ranks are left out."""
    from samples import synthetic as builders

    builders.to_ir(builders.add_onnx(tmp_path / "add.onnx", dynamic_batch=True), tmp_path / "add.xml")
    recorded = [{"name": "a", "shape": ["rows", 4], "dtype": "float32"},
                {"name": "b", "shape": ["rows", 4, 1], "dtype": "float32"},  # another rank: ignored
                {"name": "elsewhere", "shape": ["n"], "dtype": "float32"}]  # no such input: ignored
    manifest = {"artifacts": [{"path": "add.xml", "format": "openvino"}], "inputs": recorded}
    (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
    with edgekit.load(tmp_path) as m:
        assert [s.shape for s in m.inputs] == [("rows", 4), (None, 4)]
    recorded[1]["shape"] = ["rows", 4]
    (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
    with edgekit.load(tmp_path) as m:
        x = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(m.run({"a": x, "b": x})["y"], 2 * x)
        with pytest.raises(edgekit.InputError, match="disagree on dimension 'rows'.*a 2, b 1"):
            m.run({"a": x, "b": x[:1]})  # OpenVINO itself would broadcast it


def test_staging_left_by_a_killed_writer_is_removed_and_a_package_moved_aside_is_restored(tmp_path):
    """package.staging_dir names its folders with pid and host; the next writer removes those whose
    process is gone, and puts back a package a killed publish had moved aside."""
    import subprocess
    import sys

    from edgekit import package

    dest = tmp_path / "pkg"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = int(gone.stdout)
    where = package._where()
    abandoned = tmp_path / f".pkg-{dead}-{where}-abcd1234"
    abandoned.mkdir()
    (abandoned / "half.onnx").write_bytes(b"half")
    moved_aside = tmp_path / f".pkg-{dead}-{where}-old-efgh5678"
    (moved_aside / "pkg").mkdir(parents=True)
    (moved_aside / "pkg" / "edgekit.json").write_text("{}")
    live = package.staging_dir(dest)  # this process's: kept by the next call
    other_host = tmp_path / f".pkg-{dead}-00000000-ijkl9012"  # another host's or pid namespace's: not ours
    other_host.mkdir()
    old_style = tmp_path / ".pkg-mnop3456"  # an older edgekit's, without the mark
    old_style.mkdir()
    again = package.staging_dir(dest)
    assert not abandoned.exists() and not moved_aside.exists()
    assert (dest / "edgekit.json").read_text() == "{}"  # the package a killed publish moved aside
    assert live.exists() and again.exists() and other_host.exists() and old_style.exists()


def test_publish_replaces_only_a_package_or_an_empty_folder(tmp_path, models):
    """Whatever its caller checked before, publishing never replaces a file or a folder of other files."""
    import shutil

    from edgekit import package

    def publish(dest):
        staging = package.staging_dir(dest)
        shutil.copy(models["mlp.onnx"], staging / "mlp.onnx")
        return package.publish(staging, dest, {"artifacts": [{"path": "mlp.onnx", "format": "onnx"}]})

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("keep me")
    afile = tmp_path / "afile"
    afile.write_text("keep me too")
    for dest in (docs, afile):
        with pytest.raises(edgekit.UsageError, match="not replaced"):
            publish(dest)
    assert (docs / "notes.txt").read_text() == "keep me" and afile.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "docs"]  # no staging folder left
    (tmp_path / "empty").mkdir()
    for dest in (tmp_path / "empty", tmp_path / "new", tmp_path / "new"):  # empty, absent, then a package
        assert (publish(dest) / "edgekit.json").is_file()
