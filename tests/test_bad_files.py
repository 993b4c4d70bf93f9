"""Every bad model file raises one EdgekitError subclass naming the file and the problem,
and the CLI prints it in one line (no traceback) with exit code 2."""

from __future__ import annotations

import os
import shutil

import onnx
import pytest
from conftest import run_cli

import edgekit


def _truncate(src, dst, keep=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.fixture
def bad(tmp_path, models):
    """name -> (path, expected message fragment)."""
    cases = {}
    cases["missing"] = (tmp_path / "nothere.onnx", "no such file")
    cases["missing, no extension"] = (tmp_path / "nothere", "no such file or package folder")
    cases["empty"] = ((tmp_path / "empty.onnx"), "file is empty")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases["truncated onnx"] = (_truncate(models["mlp.onnx"], tmp_path / "trunc.onnx", 0.6),
                               "not a valid ONNX model")
    (tmp_path / "garbage.onnx").write_bytes(os.urandom(2048))
    cases["corrupt onnx"] = (tmp_path / "garbage.onnx", "ONNX")
    cases["truncated tflite"] = (_truncate(models["mlp.tflite"], tmp_path / "trunc.tflite", 0.5),
                                 "LiteRT cannot read it")
    (tmp_path / "notflite.tflite").write_bytes(b"\x00" * 64)
    cases["not tflite"] = (tmp_path / "notflite.tflite", "missing the TFL3 identifier")
    shutil.copy(models["mlp.xml"], tmp_path / "nobin.xml")
    cases["xml without bin"] = (tmp_path / "nobin.xml", "weights file nobin.bin is missing")
    (tmp_path / "broken.xml").write_text("<net><layers>")
    cases["corrupt xml"] = (tmp_path / "broken.xml", "XML does not parse")
    shutil.copy(models["mlp.xml"], tmp_path / "shortbin.xml")
    _truncate(models["mlp.xml"].with_suffix(".bin"), tmp_path / "shortbin.bin", 0.5)
    cases["truncated bin"] = (tmp_path / "shortbin.xml", "weights file is truncated")
    (tmp_path / "model.pt").write_bytes(b"x")
    cases["unknown extension"] = (tmp_path / "model.pt", "unknown model extension '.pt'")
    (tmp_path / "folder").mkdir()
    cases["folder without manifest"] = (tmp_path / "folder", "no edgekit.json")
    return cases


CASES = ["missing", "missing, no extension", "empty", "truncated onnx", "corrupt onnx", "truncated tflite",
         "not tflite", "xml without bin", "corrupt xml", "truncated bin", "unknown extension",
         "folder without manifest"]


@pytest.mark.parametrize("case", CASES)
def test_bad_file_raises_a_model_file_error_naming_it(bad, case):
    path, fragment = bad[case]
    with pytest.raises(edgekit.ModelFileError) as info:
        edgekit.load(path)
    message = str(info.value)
    assert str(path) in message or path.with_suffix(".bin").name in message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["missing", "truncated onnx", "xml without bin", "unknown extension",
                                  "folder without manifest"])
@pytest.mark.parametrize("command", ["run", "info", "bench"])
def test_cli_reports_bad_file_in_one_line_with_exit_2(bad, case, command):
    path, fragment = bad[case]
    args = [command, str(path)] + (["--synthetic"] if command == "run" else [])
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert fragment in out.stderr
    assert out.stderr.startswith("edgekit: error: ")


def _with_external_data(tmp_path, location: str):
    """An MLP whose w1 claims to live at ``location``."""
    from samples.synthetic import mlp_onnx

    path = mlp_onnx(tmp_path / "ext.onnx")
    model = onnx.load(str(path))
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    w1.ClearField("raw_data")
    w1.data_location = onnx.TensorProto.EXTERNAL
    w1.external_data.add(key="location", value=location)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("location", "fragment"), [
    ("/etc/passwd", "must be a relative path"),
    ("../outside.bin", "must be a relative path"),
    ("sub/../../outside.bin", "must be a relative path"),
    ("missing.bin", "external data file 'missing.bin' is missing"),
])
def test_external_data_must_stay_inside_the_models_folder(tmp_path, location, fragment):
    path = _with_external_data(tmp_path, location)
    with pytest.raises(edgekit.ModelFileError, match=fragment):
        edgekit.load(path)


def test_external_data_link_leaving_the_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 512)
    inner = tmp_path / "model"
    inner.mkdir()
    (inner / "w.bin").symlink_to(outside / "w.bin")
    path = _with_external_data(inner, "w.bin")
    with pytest.raises(edgekit.ModelFileError, match="links outside"):
        edgekit.load(path)


def test_external_data_inside_the_folder_loads(tmp_path):
    from samples.synthetic import mlp_onnx

    path = mlp_onnx(tmp_path / "big.onnx")
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.onnx.data", size_threshold=0)
    m = edgekit.load(path)
    assert m.run(__import__("numpy").ones((1, 8), "float32"))["logits"].shape == (1, 3)
