"""The converter layer, end to end: real exports, real quantizers, real onnx2tf, real runtimes.

Conversions are shared across tests (module-scoped fixtures): TensorFlow alone takes seconds
to start, so onnx2tf runs once per source kind.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

torch = pytest.importorskip("torch", reason="the PyTorch sources need torch (make test installs it)")

import edgekit  # noqa: E402
from converters import ConversionError, convert  # noqa: E402
from edgekit import formats  # noqa: E402
from edgekit.errors import InputError, ModelFileError, UsageError  # noqa: E402
from edgekit.types import Format, TensorSpec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "samples" / "inputs" / "images"
AUDIO = ROOT / "samples" / "inputs" / "audio"
PP = {"image": {"resize": 40, "crop": 32, "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]}}
LABELS = [f"class {i}" for i in range(10)]
ALL = ("onnx", "openvino", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")


class TinyCnn(torch.nn.Module):
    """Conv-BN-ReLU x2, global pool, linear: the shape of a real image classifier, in 0.1 MB."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _example() -> torch.Tensor:
    return torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> Path:
    """The CNN as a plain ONNX file (old TorchScript exporter, opset 13), as a user would bring it."""
    path = tmp_path_factory.mktemp("src") / "tiny.onnx"
    torch.onnx.export(TinyCnn().eval(), (_example(),), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=13, dynamo=False)
    return path


@pytest.fixture(scope="module")
def offline_cli_package(cnn_onnx, tmp_path_factory):
    """`edgekit convert` on the ONNX file, every target and precision, with the network unreachable."""
    d = tmp_path_factory.mktemp("offline")
    site = d / "site"
    site.mkdir()
    attempts = d / "network-attempts.log"
    (site / "sitecustomize.py").write_text(_NO_NETWORK.format(log=str(attempts)))
    labels = d / "labels.txt"
    labels.write_text("\n".join(LABELS))
    out = d / "pkg"
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    r = run_cli("convert", str(cnn_onnx), "--to", ",".join(ALL), "--precision", ",".join(PRECISIONS),
                "--calib", str(IMAGES), "--task", "image-classification", "--labels", str(labels),
                "--preprocess", json.dumps(PP), "--min-cosine", "0.98", "--out", str(out), "--json", env=env)
    return r, out, attempts


_NO_NETWORK = '''
import socket

def _refuse(what):
    with open({log!r}, "a") as f:
        f.write(what + "\\n")
    raise OSError(101, "network is unreachable (edgekit test)")

_connect = socket.socket.connect

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
        _refuse(f"connect {{address}}")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host not in ("localhost", "127.0.0.1", "::1", None):
        _refuse(f"resolve {{host}}")
    return _getaddrinfo(host, *args, **kwargs)

_getaddrinfo = socket.getaddrinfo
socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
'''


def test_offline_cli_conversion_makes_every_artifact(offline_cli_package):
    r, out, attempts = offline_cli_package
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert not attempts.exists(), f"the conversion reached for the network: {attempts.read_text()}"
    rows = {(a["target"], a["precision"]): a for a in report["artifacts"]}
    assert set(rows) == {(t, p) for t in ALL for p in PRECISIONS}
    for (target, precision), a in rows.items():
        assert a["status"] == "ok", (target, precision, a["reason"])
        assert a["cosine"] >= 0.98 and a["p50_ms"] > 0 and a["size"] > 0
        assert a["top1_agreement"] is not None
        if precision == "fp16":
            assert a["cosine"] >= 0.999, (target, a["cosine"])
    assert rows[("tflite", "fp32")]["layout"] == "NHWC" and rows[("onnx", "fp32")]["layout"] == "NCHW"
    assert report["calibration"]["samples"] == len(list(IMAGES.iterdir()))
    assert "step" not in r.stdout and "[" in r.stderr  # progress lines on stderr, JSON alone on stdout


def test_offline_package_loads_and_classifies_on_every_runtime(offline_cli_package):
    _, out, _ = offline_cli_package
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["task"] == "image-classification" and manifest["labels"] == LABELS
    assert manifest["preprocess"]["image"]["crop"] == 32
    assert "onnx2tf" in manifest["conversion"]["tools"]
    for entry in manifest["artifacts"]:
        assert len(entry["sha256"]) == 64 and entry["parity"]["cosine"] > 0.98 and entry["latency_ms"]["p50"] > 0
    from edgekit.tasks import ImageClassifier

    results = {}
    for device in ("onnxruntime", "openvino", "litert"):
        with ImageClassifier(out, device=device) as clf:
            results[device] = clf.classify(IMAGES / "cat.jpg", top_k=3)
            assert clf.model.backend == device
    assert all(len(v) == 3 and v[0].label in LABELS for v in results.values())
    assert len({v[0].index for v in results.values()}) == 1  # every runtime agrees on the top class
    with edgekit.load(out) as m:  # the package picks artifact and device itself; its specs say the layout
        shape = (1, 32, 32, 3) if m.inputs[0].layout == "NHWC" else (1, 3, 32, 32)
        assert m.run({"image": np.zeros(shape, np.float32)})["logits"].shape == (1, 10)


def test_auto_ranks_artifacts_by_the_latency_measured_on_this_cpu(offline_cli_package, tmp_path):
    from edgekit.selection import LOWER_PRECISION_MARGIN

    _, out, _ = offline_cli_package
    manifest = json.loads((out / "edgekit.json").read_text())

    def handicapped(e: dict) -> float:  # a reduced precision wins only when clearly faster
        return e["latency_ms"]["p50"] * (1 if e["precision"] == "fp32" else LOWER_PRECISION_MARGIN)

    fastest = min((e for e in manifest["artifacts"] if e["status"] == "ok"), key=handicapped)
    with edgekit.load(out) as m:
        opened = [a for a in m.selection.attempts if a.status == "opened"]
    assert opened[0].artifact.split()[0] == fastest["path"]
    assert f"{fastest['latency_ms']['p50']:.2f} ms" in opened[0].reason
    copy = tmp_path / "pkg"
    shutil.copytree(out, copy)
    # an fp16 file measured 2 % faster than fp32 is a tie, which goes to fp32 (it was picked); an int8
    # file twice as fast is picked
    tie = json.loads(json.dumps(manifest))
    entries = {(e["path"]): e for e in tie["artifacts"] if e["status"] == "ok"}
    base = entries["model-fp32.onnx"]["latency_ms"]["p50"]
    for e in entries.values():
        e["latency_ms"]["p50"] = base * {"fp32": 1.0, "fp16": 0.98}.get(e["precision"], 5.0)
        if e["path"] == "model-fp32.onnx":
            e["latency_ms"]["p50"] = base
    (copy / "edgekit.json").write_text(json.dumps(tie))
    with edgekit.load(copy) as m:
        assert m.path.name == "model-fp32.onnx", m.selection
    entries["model-int8.onnx"]["latency_ms"]["p50"] = base * 0.5
    (copy / "edgekit.json").write_text(json.dumps(tie))
    with edgekit.load(copy) as m:
        assert m.path.name == "model-int8.onnx", m.selection
    # measured on another CPU: the numbers say nothing about this one; precision preference decides
    here = manifest["conversion"]["host_id"]
    name, cores, isa = here.split("; ")
    others = (f"{name}; {cores}; {isa} avx512_vnni", f"{name}; {int(cores.split()[0]) + 1} cores; {isa}", None)
    for host_id in others:
        # the same CPU name with other ISA features or cores, and a manifest from before host_id
        manifest["conversion"]["host_id"] = host_id
        (copy / "edgekit.json").write_text(json.dumps(manifest))
        with edgekit.load(copy) as m:
            opened = [a for a in m.selection.attempts if a.status == "opened"]
        assert opened[0].reason == "" and opened[0].backend == "onnxruntime"


def test_lone_artifacts_carry_their_card(offline_cli_package):
    _, out, _ = offline_cli_package
    for name, fmt in (("model-int8.onnx", Format.ONNX), ("model-fp16.xml", Format.OPENVINO),
                      ("model-int8.tflite", Format.TFLITE)):
        card = formats.read_card(out / name, fmt)
        assert card["labels"] == LABELS and card["task"] == "image-classification", name
        assert card["preprocess"]["image"]["mean"] == [127.0, 127.0, 127.0]
    assert formats.read_card(out / "model-int8.tflite", Format.TFLITE)["artifacts"][0]["layout"] == "NHWC"


def test_tflite_outputs_keep_the_onnx_names(offline_cli_package):
    _, out, _ = offline_cli_package
    for precision in PRECISIONS:
        with edgekit.load(out / f"model-{precision}.tflite", device="litert") as m:
            assert [s.name for s in m.inputs] == ["image"] and [s.name for s in m.outputs] == ["logits"]


@pytest.fixture(scope="module")
def torch_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "pkg"
    module = TinyCnn().eval()
    report = convert(module, example_inputs=(_example(),), input_names=["image"], output_names=["logits"],
                     to=ALL, precisions=PRECISIONS, calibration=IMAGES, preprocess=PP, labels=LABELS,
                     task="image-classification", out=out, min_cosine=0.98)
    return module, report, out


def test_a_broadcast_input_keeps_its_own_size(tmp_path):
    """Inputs of different batch sizes (a bias of batch 1) do not share the dynamic "batch" name, which
    Model.run holds to one size across inputs."""
    import torch

    class AddBias(torch.nn.Module):
        def forward(self, x, bias):
            return x * 2 + bias

    report = convert(AddBias().eval(), example_inputs=(torch.ones(2, 3), torch.ones(1, 3)), to=["onnx"],
                     precisions=["fp32"], out=tmp_path / "pkg")
    assert report.ok, [(a.target, a.precision, a.reason) for a in report.artifacts]
    with edgekit.load(tmp_path / "pkg") as m:
        x, bias = np.ones((4, 3), np.float32), np.full((1, 3), 0.5, np.float32)
        np.testing.assert_allclose(next(iter(m.run([x, bias]).values())), x * 2 + bias)


def test_a_scalar_input_converts_and_the_package_loads(tmp_path):
    """ONNX Runtime reports a scalar input like one of unknown rank; the graph says which it is."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "scale",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "scale.onnx")
    report = convert(tmp_path / "scale.onnx", to=["onnx", "openvino", "tflite"], precisions=["fp32"],
                     out=tmp_path / "pkg")
    # checked on a scalar s, as the graph declares it (ONNX Runtime reports it as of unknown rank)
    assert report.ok, [(a.target, a.reason) for a in report.artifacts]
    manifest = json.loads((tmp_path / "pkg" / "edgekit.json").read_text())
    assert {i["name"]: i["shape"] for i in manifest["inputs"]} == {"x": ["batch", 4], "s": []}
    assert manifest["outputs"] == [{"name": "y", "shape": ["batch", 4], "dtype": "float32"}]  # the source's
    for device in ("onnxruntime", "openvino", "litert"):  # TFLite's s is [1]: it takes the scalar too
        with edgekit.load(tmp_path / "pkg", device=device) as m:
            assert next(s for s in m.inputs if s.name == "s").shape in ((), None), m.path.name
            x = np.ones((1 if device == "litert" else 3, 4), np.float32)  # onnx2tf fixed the batch at 1
            np.testing.assert_allclose(m.run({"x": x, "s": np.float32(2)})["y"], 2 * x)


def test_a_channels_last_output_of_repeated_sizes_is_not_taken_for_a_moved_unit_dim(tmp_path):
    """A 1x1 conv to [1, 8, 1, 8] comes back from onnx2tf channels-last, [1, 1, 8, 8]: the same
    sizes in the same order as a moved size-1 dim would give, but a transpose. Reshaping it into the
    source's shape scrambled the values (parity cosine 0.35); the check's own alignment is exact."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "conv.onnx")
    report = convert(tmp_path / "conv.onnx", to=["tflite"], precisions=["fp32"], out=tmp_path / "pkg")
    assert report.ok and report.artifacts[0].cosine > 0.9999, [(a.target, a.reason) for a in report.artifacts]


def _scaled_copies_onnx(path, factor: float = 2.0):
    """Outputs c2 = factor * a, b = -a and a: equal in cosine, apart in scale."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array(factor, np.float32), "k")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["a"]),
             helper.make_node("Neg", ["a"], ["b"]), helper.make_node("Mul", ["a", "k"], ["c2"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("c2", "b", "a")]
    graph = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                              [1, 3, 16, 16])], outs, [w, k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_tflite_outputs_that_differ_only_in_scale_keep_their_names(tmp_path):
    """Outputs a and 2a have cosine 1: matched to the ONNX names by cosine, onnx2tf's a and c2 came
    back swapped and the artifact passed its check. They are matched by relative error now."""
    src = _scaled_copies_onnx(tmp_path / "scaled.onnx")
    report = convert(src, to=["tflite"], precisions=["fp32"], out=tmp_path / "pkg")
    assert report.ok and report.artifacts[0].relative_error < 1e-4, [(a.path, a.reason) for a in report.artifacts]
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    import onnxruntime as ort

    want = dict(zip(["c2", "b", "a"], ort.InferenceSession(str(src)).run(None, {"image": x})))
    with edgekit.load(tmp_path / "pkg" / "model-fp32.tflite") as m:
        got = m.run({"image": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})
        assert [o.name for o in m.outputs] == ["c2", "b", "a"]  # the source's order (TFLite sorts them)
    assert list(got) == ["c2", "b", "a"]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_parity_fails_an_artifact_whose_outputs_are_off_in_scale(tmp_path):
    """Twice the source's outputs has cosine 1.0; the relative error (1.0) fails it."""
    import onnxruntime as ort

    from converters.check import check
    from converters.report import ArtifactReport

    src = _scaled_copies_onnx(tmp_path / "src.onnx", factor=2.0)
    bad = _scaled_copies_onnx(tmp_path / "bad.onnx", factor=4.0)  # c2 off by 2x, a and b exact
    feeds = [{"image": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)}
             for i in range(3)]
    refs = [ort.InferenceSession(str(src)).run(None, f) for f in feeds]
    reports = [ArtifactReport("onnx", "fp32", path="src.onnx", format="onnx"),
               ArtifactReport("onnx", "fp32", path="bad.onnx", format="onnx")]
    check(list(zip(reports, [src, bad])), feeds, refs, ["c2", "b", "a"], classifier=False, min_cosine=None,
          timing_feed=feeds[0], rounds=1, runs=2)
    good, off = reports
    assert good.ok and good.relative_error == 0 and good.cosine == pytest.approx(1.0)
    assert off.cosine == pytest.approx(1.0) and off.relative_error == pytest.approx(1.0)
    assert off.status == "failed" and "relative error 1 > 0.0894" in off.reason and "off in scale" in off.reason


def _open_size_cnn(path):
    """A conv classifier whose batch, height and width are open."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((5, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_check_images_go_to_a_channels_last_ir_in_the_sources_layout(tmp_path):
    """The IR of an image model takes NHWC. Check images 3 pixels wide with 3 channels, [1, 3, 8, 3]
    in the source's NCHW, fit its open [?, ?, ?, 3] as they are, so they went in unmoved: 8 channels
    read as width, and its parity was taken on the wrong pixels. The source's layout now decides."""
    from converters.check import adapt

    src = _open_size_cnn(tmp_path / "cnn.onnx")
    report = convert(src, to=["openvino"], precisions=["fp32"], out=tmp_path / "pkg", task="image-classification",
                     labels=list("abcde"), preprocess={"image": {"resize": 8, "crop": [8, 3]}})
    (ir,) = report.artifacts
    assert ir.layout == "NHWC" and report.check["kind"] == "random", report.to_dict()
    assert ir.ok and ir.cosine > 0.9999, (ir.status, ir.reason, ir.cosine)
    nhwc = TensorSpec("image", (None, None, None, 3), np.dtype("float32"), "NHWC")
    x = np.arange(72, dtype=np.float32).reshape(1, 3, 8, 3)
    assert adapt(x, nhwc).shape == (1, 3, 8, 3)  # by its shape alone it is NHWC already
    np.testing.assert_array_equal(adapt(x, nhwc, "NCHW"), np.moveaxis(x, 1, -1))
    nchw = TensorSpec("image", (None, 3, None, None), np.dtype("float32"), "NCHW")
    np.testing.assert_array_equal(adapt(x, nchw, "NHWC"), np.moveaxis(x, -1, 1))  # and the other way round


def test_open_image_sizes_are_not_frozen_at_one_pixel(tmp_path):
    """Without data, the random check images were 1x1, so the TFLite files took only 1x1 images (and
    `auto` picked them). A package crop sizes the check images; with neither, TFLite is skipped."""
    src = _open_size_cnn(tmp_path / "cnn.onnx")
    report = convert(src, to=["onnx", "tflite"], precisions=["fp32"], out=tmp_path / "bare")
    tfl = next(a for a in report.artifacts if a.target == "tflite")
    assert tfl.status == "skipped" and "input 'image' dims 2, 3 would be fixed at 1" in tfl.reason
    report = convert(src, to=["tflite"], precisions=["fp32"], out=tmp_path / "cropped", task="image-classification",
                     labels=list("abcde"), preprocess={"image": {"resize": 64, "size": [56, 56]}})  # crop's alias
    assert report.ok, [(a.path, a.reason) for a in report.artifacts]
    from edgekit.tasks import ImageClassifier
    from samples.build import INPUTS

    with ImageClassifier(tmp_path / "cropped") as clf:
        assert clf.model.inputs[0].shape == (1, 56, 56, 3)
        assert len(clf.classify(INPUTS / "images" / "cat.jpg", top_k=2)) == 2
    out = run_cli("convert", str(src), "--to", "tflite", "--precision", "fp32", "--out", str(tmp_path / "no"), "--json")
    assert out.returncode == 1  # nothing made: one JSON document, the report with its error
    doc = json.loads(out.stdout)
    assert "would be fixed at 1" in doc["artifacts"][0]["reason"] and doc["error"]


def test_a_tflite_text_model_converts_with_its_inputs_matched_by_name(samples, tmp_path, caplog):
    """The IR OpenVINO makes of onnx2tf's MiniLM names its inputs "serving_default_input_ids:0" and
    so on, in another order than the file's card: matched by position, ids went in as the mask and
    the fp32 IR failed its parity (cosine 0.10). Loaded, it took those names in that order: the text
    task found none of its inputs, a list fed ids as the mask, and the package's value ranges did not
    apply. The package now also holds the tokenizer found beside the TFLite file, which calibrates
    on lines of text cut and padded to the file's 256 tokens (int8 had only random ids: cosine 0.90)."""
    from edgekit.tasks import TextEmbedder
    from samples.build import INPUTS

    report = convert(samples["text"] / "model-fp32.tflite", to=["openvino"], precisions=["fp32", "int8"],
                     calibration=[str(INPUTS / "calibration.txt")], check=[str(INPUTS / "text.txt")],
                     out=tmp_path / "pkg")
    ir, int8 = report.artifacts
    assert report.calibration["kind"] == "text" and report.calibration["samples"] == 64, report.calibration
    assert ir.ok and ir.cosine > 0.9999, (ir.status, ir.reason)
    assert int8.ok and int8.cosine > 0.99, (int8.status, int8.reason)
    assert (tmp_path / "pkg" / "tokenizer.json").is_file()
    ids = np.full((1, 256), 40000, np.int64)  # past the vocabulary's 30522 rows
    with caplog.at_level("WARNING", logger="edgekit"):
        for where in (tmp_path / "pkg", tmp_path / "pkg" / "model-fp32.xml"):  # the package, the lone file
            with edgekit.load(where) as m:
                assert m.backend == "openvino"
                assert [s.name for s in m.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
                with pytest.raises(edgekit.InputError, match="'input_ids': values must be from 0 to 30521"):
                    m.run([ids, np.ones_like(ids), np.zeros_like(ids)])
    assert "card describes inputs" not in caplog.text
    texts = ["a cat sat on the mat", "stocks fell sharply today"]
    with TextEmbedder(samples["text"] / "model-fp32.onnx") as source:
        want = source.embed(texts)
    for artifact, floor in (("model-fp32.xml", 0.9999), ("model-int8.xml", 0.99)):
        with TextEmbedder(tmp_path / "pkg" / artifact) as got:
            assert np.einsum("ij,ij->i", got.embed(texts), want).min() > floor, artifact


def test_an_ir_made_of_a_tflite_file_answers_under_the_files_signature_names(samples, tmp_path):
    """OpenVINO names the outputs of an IR it makes of a TFLite file "PartitionedCall:0", and gives
    Silero's state back as [1, 2, 128]: the model answered under other names, in another shape, on
    that artifact than on the package's others (a server's clients saw both). The IR's ports now take
    the file's signature names, and the package the file's outputs as edgekit gives them."""
    from edgekit.tasks import VoiceActivityDetector
    from samples.build import INPUTS

    report = convert(samples["audio"] / "model-fp32.tflite", to=["openvino"], precisions=["fp32"],
                     out=tmp_path / "pkg")
    assert report.ok, report.to_dict()
    manifest = json.loads((tmp_path / "pkg" / "edgekit.json").read_text())
    assert [(o["name"], o["shape"]) for o in manifest["outputs"]] == [("output", [1, 1]), ("stateN", [2, 1, 128])]
    with edgekit.load(samples["audio"] / "model-fp32.onnx") as source:
        want = [(s.name, s.shape) for s in source.inputs], [(s.name, s.shape) for s in source.outputs]
    for where in (tmp_path / "pkg", tmp_path / "pkg" / "model-fp32.xml"):
        with edgekit.load(where) as m:
            assert m.backend == "openvino"
            assert ([(s.name, s.shape) for s in m.inputs], [(s.name, s.shape) for s in m.outputs]) == want
    speech = INPUTS / "audio" / "speech.wav"
    got = VoiceActivityDetector(tmp_path / "pkg").detect(speech)
    assert [(s.start_s, s.end_s) for s in got] == \
        [(s.start_s, s.end_s) for s in VoiceActivityDetector(samples["audio"] / "model-fp32.onnx").detect(speech)]


def test_sizes_in_the_sources_layout_apply_to_a_channels_last_artifact(tmp_path):
    """The TFLite takes NHWC beside its NCHW ONNX. The ONNX, height and width open, was timed at 1x1
    beside the TFLite's 56x56 (a peer of another layout lent no sizes), and warmup_inputs in the
    source's layout failed the TFLite's first inference (the load fell back to the ONNX)."""
    from edgekit.bench import synthetic_inputs, target_sizes, warmup_sizes

    src = _open_size_cnn(tmp_path / "cnn.onnx")
    pkg = tmp_path / "pkg"
    report = convert(src, to=["onnx", "tflite"], precisions=["fp32"], out=pkg, task="image-classification",
                     labels=list("abcde"), preprocess={"image": {"resize": 64, "crop": 56}})
    assert report.ok and [a.layout for a in report.artifacts] == ["NCHW", "NHWC"]
    onnx_file, tflite_file = pkg / "model-fp32.onnx", pkg / "model-fp32.tflite"
    sizes = target_sizes([(onnx_file, "onnxruntime:CPU"), (tflite_file, "litert:CPU")])
    assert sizes == {str(onnx_file): {"image": {"shape": [1, 3, 56, 56]}}, str(tflite_file): {}}
    manifest = json.loads((pkg / "edgekit.json").read_text())
    manifest["warmup_inputs"] = {"image": {"shape": [1, 3, 56, 56]}}  # as the source lays it out
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    with edgekit.load(pkg, device="litert") as m:
        assert m.path == tflite_file and not m.selection.fell_back, m.selection.to_dict()
    assert target_sizes([(tflite_file, "litert:CPU")]) == {str(tflite_file): {"image": {"shape": [1, 56, 56, 3]}}}
    # Converted again from the TFLite file, the package's inputs are the file's (NHWC) while its card's
    # warm-up sizes are the ONNX source's (NCHW): they were taken as NHWC, the IR was warmed up and
    # timed at [1, 3, 56, 56]. The card's layout now goes with them.
    from converters.card import embed, make

    lone = tmp_path / "lone.tflite"
    shutil.copy(tflite_file, lone)
    embed(lone, Format.TFLITE, make(manifest, {"path": lone.name, "format": "tflite", "precision": "fp32"}))
    again = convert(lone, to=["openvino"], precisions=["fp32"], out=tmp_path / "again")
    assert again.ok and json.loads((tmp_path / "again" / "edgekit.json").read_text())["warmup_inputs"] == \
        {"image": {"shape": [1, 3, 56, 56], "layout": "NCHW"}}
    with edgekit.load(tmp_path / "again" / "model-fp32.xml") as m:
        assert m.inputs[0].layout == "NHWC" and not m.selection.fell_back
        assert synthetic_inputs(m.inputs, warmup=warmup_sizes(m))["image"].shape == (1, 56, 56, 3)


def test_integer_inputs_are_checked_at_one_and_constant_outputs_are_flagged(tmp_path):
    """Random check inputs gave integers 0: y = x * k was 0 everywhere, a parity check of nothing,
    and TopK with k = 0 failed OpenVINO's first inference, so its working IR was marked failed."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["values", "indices"])], "topk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, None]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, [1, None])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "topk.onnx")
    report = convert(tmp_path / "topk.onnx", to=["onnx", "openvino"], precisions=["fp32"], out=tmp_path / "topk")
    assert report.ok, [(a.path, a.reason) for a in report.artifacts]
    assert "warning" not in report.check
    with edgekit.load(tmp_path / "topk", device="openvino") as m:
        got = m.run({"x": np.arange(8, dtype=np.float32)[None], "k": np.array([3])})
        np.testing.assert_array_equal(got["indices"], [[7, 6, 5]])
    graph = helper.make_graph(  # an output that is zero whatever the input
        [helper.make_node("Sub", ["x", "x"], ["zero"])], "zero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("zero", TensorProto.FLOAT, [1, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "zero.onnx")
    report = convert(tmp_path / "zero.onnx", to=["onnx"], precisions=["fp32"], out=tmp_path / "zero")
    assert "one value everywhere for zero on all 8 check inputs" in report.check["warning"]


def test_tflite_takes_output_names_tensorflow_refuses(tmp_path):
    """onnx2tf makes a TensorFlow scope of each output name: "feat map" and "特徴" failed the
    conversion, with the first line of a Keras error as the only reason."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["feat map"]), helper.make_node("Neg", ["x"], ["特徴"])],
                              "names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("feat map", TensorProto.FLOAT, [1, 6]),
                               helper.make_tensor_value_info("特徴", TensorProto.FLOAT, [1, 6])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "names.onnx")
    report = convert(tmp_path / "names.onnx", to=["tflite"], precisions=["fp32"], out=tmp_path / "pkg")
    assert report.ok, [(a.path, a.reason) for a in report.artifacts]
    x = np.linspace(-1, 1, 6, dtype=np.float32)[None]
    with edgekit.load(tmp_path / "pkg" / "model-fp32.tflite") as m:
        got = m.run({"x": x})
    np.testing.assert_allclose(got["feat map"], np.maximum(x, 0))
    np.testing.assert_allclose(got["特徴"], -x)


def test_a_renamed_output_is_renamed_where_a_subgraph_reads_it():
    """An If branch that reads a renamed output from the outer scope kept the old name: a broken graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from converters.tflite_target import _tf_safe_output_names

    f = TensorProto.FLOAT
    branch = helper.make_graph([helper.make_node("Neg", ["feat map"], ["branch_out"])], "then", [],
                               [helper.make_tensor_value_info("branch_out", f, [1, 6])])
    other = helper.make_graph([helper.make_node("Identity", ["feat map"], ["other_out"])], "else", [],
                              [helper.make_tensor_value_info("other_out", f, [1, 6])])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["feat map"]), helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
         helper.make_node("Greater", ["m", "zero"], ["positive"]),
         helper.make_node("If", ["positive"], ["y"], then_branch=branch, else_branch=other)],
        "names", [helper.make_tensor_value_info("x", f, [1, 6])],
        [helper.make_tensor_value_info("feat map", f, [1, 6]), helper.make_tensor_value_info("y", f, [1, 6])],
        [helper.make_tensor(name="zero", data_type=f, dims=[], vals=[0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _tf_safe_output_names(model)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["output_0", "y"]
    x = np.linspace(-1, 1, 6, dtype=np.float32)[None]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[0], np.maximum(x, 0))
    np.testing.assert_allclose(got[1], -np.maximum(x, 0))


def test_onnx2tf_failures_give_the_cause_keras_puts_on_the_next_line():
    from converters.tflite_target import tool_reason

    log = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: Exception encountered when calling layer 'model_1' (type Functional).

    'model_1/feat map/' is not a valid scope name. A scope name has to match the following pattern

Call arguments received by layer 'model_1' (type Functional):
"""
    assert tool_reason(log) == ("ValueError: Exception encountered when calling layer 'model_1' (type Functional). "
                                "'model_1/feat map/' is not a valid scope name. A scope name has to match the "
                                "following pattern")


def test_a_sequence_first_input_is_data_not_a_state(tmp_path):
    """[10, 1, 8] (PyTorch's RNN layout) has its batch off the first axis, as Silero's state does, and
    was taken for a state: its int8 became weights-only. A state is an input the model gives back."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from converters.onnx_target import STATEFUL_INT8

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "seq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 1, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "seq.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(8):
        np.save(calib / f"s{i}.npy", np.random.default_rng(i).standard_normal((10, 1, 8)).astype(np.float32))
    report = convert(tmp_path / "seq.onnx", to=["onnx"], precisions=["int8"], calibration=calib, out=tmp_path / "pkg")
    assert report.ok and report.artifacts[0].recipe != STATEFUL_INT8, report.artifacts[0].recipe
    assert report.artifacts[0].recipe.startswith("static QDQ")


def test_index_inputs_of_a_one_row_table_and_a_carried_state(tmp_path):
    """Synthetic integers stay 0, an index any table has (a one-row token_type table refuses 1);
    the check uses 1 only where the source takes it. A state [2, batch, 8] keeps its TFLite: its
    batch is on axis 1, not an open size to refuse."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.ones((1, 4), np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "onerow",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])], [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "onerow.onnx")
    with edgekit.load(tmp_path / "onerow.onnx", device="onnxruntime") as m:
        assert m.run({"ids": np.zeros((1, 3), np.int64)})["y"].shape == (1, 3, 4)
    report = convert(tmp_path / "onerow.onnx", to=["onnx"], precisions=["fp32"], out=tmp_path / "onerow")
    assert report.ok, [(a.path, a.reason) for a in report.artifacts]

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Add", ["state", "h"], ["stateN"]),
             helper.make_node("ReduceMean", ["stateN"], ["output"], keepdims=0)]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "vad", [vi("input", TensorProto.FLOAT, ["batch", 16]),
                                             vi("state", TensorProto.FLOAT, [2, "batch", 8])],
                              [vi("output", TensorProto.FLOAT, []),
                               vi("stateN", TensorProto.FLOAT, [2, "batch", 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "vad.onnx")
    report = convert(tmp_path / "vad.onnx", to=["tflite"], precisions=["fp32"], out=tmp_path / "vad")
    assert report.ok, [(a.path, a.reason) for a in report.artifacts]


def test_transformer_position_limits():
    from converters.sources import sequence_limit

    limit = {"dims": {"sequence": {"max": 512}}}
    assert sequence_limit({"model_type": "bert", "max_position_embeddings": 512}) == limit
    # fairseq-style positions start after the padding id: RoBERTa's 514 hold 512 tokens
    assert sequence_limit({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == limit
    assert sequence_limit({"model_type": "mpnet", "max_position_embeddings": 514}) == limit
    # relative positions only: no limit from the table
    assert sequence_limit({"model_type": "deberta-v2", "max_position_embeddings": 512,
                           "position_biased_input": False}) == {}
    assert sequence_limit({"model_type": "bert"}) == {}


def test_pytorch_module_converts_to_every_format_and_matches_pytorch(torch_report):
    module, report, out = torch_report
    assert report.ok, [(a.target, a.precision, a.reason) for a in report.artifacts]
    assert report.check["against"] == "the PyTorch module"
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    # the IRs take channels last, as the TFLite files do: the package says so
    assert {a.path: a.layout for a in report.artifacts if a.precision == "fp32"} == {
        "model-fp32.onnx": "NCHW", "model-fp32.xml": "NHWC", "model-fp32.tflite": "NHWC"}
    for name, device, layout in (("model-fp32.onnx", "onnxruntime", "NCHW"), ("model-fp32.xml", "openvino", "NHWC"),
                                 ("model-fp32.tflite", "litert", "NHWC")):
        with edgekit.load(out / name, device=device) as m:
            feed = x if layout == "NCHW" else x.transpose(0, 2, 3, 1).copy()
            np.testing.assert_allclose(m.run({"image": feed})["logits"], expected, atol=1e-4)
    with edgekit.load(out / "model-fp32.onnx", device="onnxruntime") as m:  # dynamic batch where the model allows
        assert not isinstance(m.inputs[0].shape[0], int)
        assert m.run({"image": np.zeros((4, 3, 32, 32), np.float32)})["logits"].shape == (4, 10)


def test_int8_is_faster_than_fp32_and_slow_artifacts_are_flagged(torch_report):
    _, report, _ = torch_report
    for a in report.artifacts:
        assert a.p50_ms and a.p50_ms > 0
        if a.precision != "fp32":
            assert a.speedup is not None
            assert (a.speedup < 0.95) == any("slower than fp32" in n for n in a.notes)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny BERT sentence encoder saved as a Hugging Face folder (config, safetensors, tokenizer.json)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = tmp_path_factory.mktemp("hf") / "tiny-bert"
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"abcdefghijklmnopqrstuvwxyz.,!?"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"])
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(str(d))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32}))
    return d


def test_hugging_face_folder_converts_to_every_format(hf_folder, tmp_path):
    lines = tmp_path / "calib.txt"
    lines.write_text("\n".join(["hello world.", "the quick brown fox!", "edge inference, on device?"] * 4))
    out = tmp_path / "pkg"
    report = convert(hf_folder, to=ALL, precisions=(*PRECISIONS, "int8-dynamic"), calibration=lines, out=out,
                     min_cosine=0.95)
    rows = {(a.target, a.precision): a for a in report.artifacts}
    # token-id models: int8 is each runtime's faithful recipe, dynamic (ORT, TFLite) or NNCF's transformer one
    assert "dynamic-range" in rows[("tflite", "int8")].recipe and "dynamic" in rows[("onnx", "int8")].recipe
    for target in ("onnx", "tflite"):  # so int8-dynamic would be the same file again
        assert "same file as int8" in rows.pop((target, "int8-dynamic")).reason
    # Sequence length 32 == hidden size 32 on purpose: onnx2tf once laid the pooling mask out as
    # [1, 1, L] instead of [1, L, 1] here and still broadcast without an error (cosine 0.39).
    assert all(a.ok for a in rows.values()), [(k, a.reason) for k, a in rows.items() if not a.ok]
    assert rows[("tflite", "fp32")].cosine > 0.9999 and rows[("tflite", "fp16")].cosine > 0.9999
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["task"] == "text-embedding" and (out / "tokenizer.json").is_file()
    assert manifest["preprocess"]["text"]["max_length"] == 32
    assert manifest["dims"] == {"sequence": {"max": 64}}  # the config's max_position_embeddings
    assert [i["shape"] for i in manifest["inputs"]] == [["batch", "sequence"]] * 3
    with edgekit.load(out, device="openvino") as m:  # IR keeps no dim names: the package's hold
        assert m.path.suffix == ".xml" and m.inputs[0].shape == ("batch", "sequence")
        with pytest.raises(edgekit.InputError, match="'sequence' is 65, over this model's limit of 64"):
            m.run({i.name: np.ones((1, 65), np.int64) for i in m.inputs})
    from edgekit.tasks import TextEmbedder

    with TextEmbedder(out / "model-fp32.onnx", device="onnxruntime") as e:
        v = e.embed(["hello world.", "edge inference"])
    assert v.shape == (2, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    with TextEmbedder(out / "model-fp32.tflite", device="litert") as e:  # tokenizer found beside the lone file
        assert e.model.inputs[0].shape == (1, 32)  # static: the task pads to it
        np.testing.assert_allclose(e.embed(["hello world.", "edge inference"]), v, atol=1e-4)


# --- sources the tools allow, and ones they do not -------------------------------------------------------

def test_tflite_and_ir_sources_convert_where_the_tools_allow(models, tmp_path, capfd):
    report = convert(models["mlp.tflite"], to=ALL, precisions=["fp32", "fp16"], out=tmp_path / "from-tflite")
    rows = {(a.target, a.precision): a for a in report.artifacts}
    assert rows[("openvino", "fp32")].ok and rows[("openvino", "fp16")].ok and rows[("tflite", "fp32")].ok
    assert rows[("onnx", "fp32")].status == "skipped" and "TFLite" in rows[("onnx", "fp32")].reason
    assert rows[("tflite", "fp16")].status == "skipped"
    capfd.readouterr()
    report = convert(models["mlp.xml"], to=["openvino"], precisions=["fp32", "fp16", "int8-dynamic"],
                     out=tmp_path / "from-ir")
    assert report.ok and report.check["kind"] == "random"
    printed = "".join(capfd.readouterr())
    assert "bitwidth distribution" not in printed, printed  # NNCF's INFO table on every weight compression


def test_a_tflite_image_model_calibrates_and_checks_on_images(samples, tmp_path):
    """A TFLite file carries its package's card, whose pre-processing says NCHW (the ONNX source's)
    and whose input is "image"; the file takes NHWC as "serving_default_image:0". Every image was
    skipped as the wrong shape, and NNCF found no port named "image"."""
    from edgekit.tasks import ImageClassifier
    from samples.build import INPUTS

    photos = [str(p) for p in sorted((INPUTS / "calibration").iterdir())[:4]]
    source = samples["image"] / "model-fp32.tflite"
    report = convert(source, to=["openvino"], precisions=["fp32", "int8"], calibration=photos, check=photos[:2],
                     out=tmp_path / "pkg")
    assert report.ok and report.check["kind"] == "images" and report.check["samples"] == 2, report.to_dict()
    assert [(a.path, a.layout) for a in report.artifacts] == [("model-fp32.xml", "NHWC"), ("model-int8.xml", "NHWC")]
    cat = INPUTS / "images" / "cat.jpg"
    want = ImageClassifier(source).classify(cat, top_k=1)[0].label
    for name in ("model-fp32.xml", "model-int8.xml"):
        clf = ImageClassifier(tmp_path / "pkg" / name)
        assert clf.model.inputs[0].name == "image"  # the card's, not "serving_default_image:0"
        assert clf.classify(cat, top_k=1)[0].label == want


def test_old_opset_is_upgraded(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "old",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [onnx.numpy_helper.from_array(w, "w")])
    src = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=7), str(src))
    report = convert(src, to=["onnx"], precisions=["fp32"], out=tmp_path / "pkg")
    assert report.ok
    upgraded = onnx.load(str(tmp_path / "pkg" / "model-fp32.onnx"))
    assert next(o.version for o in upgraded.opset_import if o.domain == "") >= 13


# --- bad inputs -------------------------------------------------------------------------------------------

def test_not_a_model_is_a_clear_cli_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    r = run_cli("convert", str(bad), "--to", "onnx", "--out", str(tmp_path / "pkg"))
    assert r.returncode == 2 and "broken.onnx" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "pkg").exists() and not list(tmp_path.glob(".pkg-*"))


def test_int8_without_calibration_is_refused_with_the_way_to_give_it(cnn_onnx, tmp_path):
    report = convert(cnn_onnx, to=["onnx", "openvino"], precisions=["fp32", "int8"], out=tmp_path / "pkg")
    skipped = [a for a in report.artifacts if a.precision == "int8"]
    assert all(a.status == "skipped" and "int8 needs calibration data" in a.reason for a in skipped)
    assert report.check["kind"] == "random"  # said, not silent
    said = []
    with pytest.raises(ConversionError, match="int8 needs calibration") as raised:
        convert(cnn_onnx, to=["onnx"], precisions=["fp32", "int8"], out=tmp_path / "strict", strict=True,
                progress=said.append)
    assert not (tmp_path / "strict").exists()
    assert not [line for line in said if "converting" in line], said  # refused before building anything
    r = run_cli("convert", str(cnn_onnx), "--to", "onnx,openvino", "--precision", "int8", "--strict",
                "--out", str(tmp_path / "cli"))
    assert r.returncode == 1 and "hint: give calibration data with --calib DIR|FILES" in r.stderr
    assert "onnx int8, openvino int8: skipped (int8 needs calibration data" in r.stderr  # the reason once
    again = pickle.loads(pickle.dumps(raised.value))  # it crosses processes whole (it raised TypeError)
    assert str(again) == str(raised.value) and again.report.to_dict() == raised.value.report.to_dict()
    r = run_cli("convert", str(cnn_onnx), "--to", "onnx", "--precision", "fp32,int8", "--strict", "--json",
                "--out", str(tmp_path / "cli-json"))
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["exit_code"] == 1 and "--strict: 1 artifact not ok" in doc["error"], r.stdout


def test_strict_writes_the_package_when_every_artifact_is_ok(cnn_onnx, tmp_path):
    """--strict refused every conversion: its check of what cannot be made found nothing to refuse and
    took that for "no usable artifact"."""
    report = convert(cnn_onnx, to=["onnx", "openvino"], precisions=["fp32", "fp16"], out=tmp_path / "api", strict=True)
    assert report.ok and report.written and len(report.artifacts) == 4 and (tmp_path / "api" / "edgekit.json").is_file()
    r = run_cli("convert", str(cnn_onnx), "--to", "onnx", "--precision", "fp32", "--strict", "--json",
                "--out", str(tmp_path / "cli"))
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stderr
    with edgekit.load(tmp_path / "cli") as m:
        assert m.run(_example().numpy())["logits"].shape == (1, 10)


def test_empty_calibration_folder_and_undecodable_images(cnn_onnx, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="empty"):
        convert(cnn_onnx, to=["onnx"], precisions=["int8"], calibration=empty, out=tmp_path / "a", preprocess=PP)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted(IMAGES.iterdir())[:3]:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (mixed / "readme.txt").write_text("photos for calibration\n")
    shutil.copy(AUDIO / "noise.wav", mixed)
    report = convert(cnn_onnx, to=["onnx"], precisions=["int8"], calibration=mixed, out=tmp_path / "b",
                     preprocess=PP, min_cosine=0.9)
    assert report.calibration["samples"] == 3
    assert [Path(p).name for p, _ in report.calibration["skipped"]] == ["broken.jpg", "noise.wav", "readme.txt"]
    broken = report.calibration["skipped"][0]
    assert broken[1].startswith("cannot be read as an image"), broken  # the path once, beside the reason
    r = run_cli("convert", str(cnn_onnx), "--to", "onnx", "--precision", "int8", "--calib", str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_missing_or_empty_check_data_is_named_as_check_data(cnn_onnx, tmp_path):
    """`--check nonexist` said "calibration data nonexist: no such file or folder"."""
    (tmp_path / "empty").mkdir()
    for given, problem in (("nonexist", "check data nonexist: no such file or folder"),
                           (str(tmp_path / "empty"), f"check folder {tmp_path / 'empty'} is empty")):
        r = run_cli("convert", str(cnn_onnx), "--to", "onnx", "--precision", "fp32", "--check", given,
                    "--out", str(tmp_path / "pkg"))
        assert r.returncode == 2 and problem in r.stderr and "calibration" not in r.stderr, r.stderr


IMAGE_INPUT = [TensorSpec("image", ("batch", 3, 32, 32), np.dtype(np.float32), "NCHW")]


def test_calibration_takes_the_models_kind_of_file_and_skips_the_others_one_by_one(tmp_path, caplog):
    from converters import calibration

    for p in sorted(IMAGES.iterdir())[:2]:
        shutil.copy(p, tmp_path)
    (tmp_path / "readme.txt").write_text("not a calibration sample\n")
    shutil.copy(AUDIO / "noise.wav", tmp_path)
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 16, 16), np.float32))  # decodes, but does not fit the input
    np.save(tmp_path / "fits.npy", np.zeros((2, 3, 32, 32), np.float32))
    with caplog.at_level("WARNING", logger="edgekit.convert"):
        samples = calibration.load(tmp_path, IMAGE_INPUT, {"preprocess": PP})
    assert len(samples.feeds) == 4 and samples.kind == "arrays+images"  # 2 images, 2 samples in fits.npy
    assert {Path(p).name for p, _ in samples.skipped} == {"readme.txt", "noise.wav", "small.npy"}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 3 and all(any(n in w for w in warned) for n in ("readme.txt", "noise.wav", "small.npy"))
    assert any("small.npy (gives input 'image' the shape (1, 3, 16, 16)" in w for w in warned)


def test_a_model_with_a_fixed_batch_calibrates_on_its_samples_joined_in_batches(tmp_path, caplog):
    """A model exported for batches of 4 skipped every image (each is one sample) and could not be
    quantized; the pixels / 255 warning came once per image."""
    from converters import calibration

    fixed = [TensorSpec("image", (4, 3, 32, 32), np.dtype(np.float32), "NCHW")]
    images = sorted(IMAGES.iterdir())[:5]
    for p in images:
        shutil.copy(p, tmp_path)
    with caplog.at_level("WARNING", logger="edgekit.convert"):
        samples = calibration.load(tmp_path, fixed, {})
    warned = [r.getMessage() for r in caplog.records if "calibrating on pixels / 255" in r.getMessage()]
    assert len(warned) == 1, warned
    assert [f["image"].shape for f in samples.feeds] == [(4, 3, 32, 32)] * 2 and samples.batch == 4
    one = calibration.load(tmp_path, IMAGE_INPUT, {})  # the same samples one by one
    assert len(one.feeds) == 5
    # the fifth image starts the second batch, filled up with the first three again
    order = [0, 1, 2, 3, 4, 0, 1, 2]
    np.testing.assert_array_equal(np.concatenate([f["image"] for f in samples.feeds]),
                                  np.concatenate([one.feeds[i]["image"] for i in order]))
    assert str(samples).startswith("2 batches of 4 (the model's fixed batch) from")
    assert samples.describe()["samples"] == 8 and samples.describe()["batch"] == 4
    arrays = calibration.load([np.zeros((3, 32, 32), np.float32)] * 3, fixed, {})  # from Python
    assert [f["image"].shape for f in arrays.feeds] == [(4, 3, 32, 32)]
    with pytest.raises(InputError, match=r"calibration sample #1 gives input 'image' the shape \(1, 3, 16, 16\); "
                                         r"the model takes \[4, 3, 32, 32\], 4 samples at a time"):
        calibration.load([np.zeros((3, 32, 32), np.float32), np.zeros((3, 16, 16), np.float32)], fixed, {})
    text = [TensorSpec(n, (2, 16), np.dtype(np.int64)) for n in ("input_ids", "attention_mask")]
    assert calibration.fixed_batch(text, "text") == calibration.fixed_batch(text) == 2
    assert calibration.fixed_batch([TensorSpec("x", (10, 1, 8), np.dtype(np.float32))]) == 1  # sequence first
    assert calibration.fixed_batch([TensorSpec("x", (4, 1, 28, 28), np.dtype(np.float32))], "images") == 4
    assert calibration.fixed_batch(IMAGE_INPUT) == 1
    assert calibration.fixed_batch([TensorSpec("audio", (16000,), np.dtype(np.float32))]) == 1  # no batch dim
    assert calibration.fixed_batch([TensorSpec("x", (1, 64), np.dtype(np.float32)),  # Silero: input and state
                                    TensorSpec("state", (2, 1, 128), np.dtype(np.float32))]) == 1


def test_text_calibrates_a_model_whose_batch_and_length_are_fixed(samples, tmp_path):
    from converters import calibration

    fixed = [TensorSpec(n, (2, 16), np.dtype(np.int64)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    (tmp_path / "lines.txt").write_text("a cat on a mat\nthe quick brown fox jumps over the lazy dog\nhello\n")
    got = calibration.load(tmp_path / "lines.txt", fixed, {"preprocess": {"text": {"tokenizer": "tokenizer.json"}}},
                           package_dir=samples["text"])
    assert len(got.feeds) == 2 and all(f[n].shape == (2, 16) for f in got.feeds for n in f)
    assert got.feeds[0]["attention_mask"][0].sum() == 7  # [CLS] a cat on a mat [SEP], the rest padding
    np.testing.assert_array_equal(got.feeds[1]["input_ids"][1], got.feeds[0]["input_ids"][0])  # filled up


def test_a_fixed_batch_model_quantizes_to_int8(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w", (8, 3, 3, 3)), ("fc", (8, 10)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["logits"])], "fixed_batch",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [4, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "b4.onnx")
    report = convert(tmp_path / "b4.onnx", to=["onnx", "openvino"], precisions=["int8"], calibration=IMAGES,
                     preprocess=PP, out=tmp_path / "pkg")
    assert report.ok, [(a.path, a.reason) for a in report.artifacts]
    assert report.calibration["batch"] == 4 and report.calibration["samples"] == 8  # 8 images, 2 batches
    assert {a.precision for a in report.artifacts} == {"int8"}
    for artifact, shape in (("model-int8.onnx", (4, 3, 32, 32)), ("model-int8.xml", (4, 32, 32, 3))):  # the IR: NHWC
        with edgekit.load(tmp_path / "pkg" / artifact) as m:
            assert m.run({"image": np.zeros(shape, np.float32)})["logits"].shape == (4, 10)


def test_calibration_modality_comes_from_the_model():
    from converters.calibration import modality

    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    assert modality(IMAGE_INPUT, {}) == "images"
    assert modality([TensorSpec("image", (1, 224, 224, 3), np.dtype(np.uint8))], {}) == "images"  # not token ids
    assert modality([TensorSpec("x", ("batch", 16000), f32)], {}) == "audio"
    assert modality([TensorSpec("ids", ("batch", "sequence"), i64)] * 2, {}) == "text"
    assert modality([TensorSpec("x", ("batch", 4), f32)], {"task": "image-classification"}) == "images"
    assert modality([TensorSpec("x", ("batch", 4), f32)] * 2, {"preprocess": {"audio": {}}}) == "audio"
    assert modality([TensorSpec("x", ("batch", 4), f32), TensorSpec("y", (1,), i64)], {}) == "arrays"


def test_a_calibration_file_the_model_cannot_take_is_named(tmp_path):
    from converters import calibration

    two_inputs = [TensorSpec(n, ("batch", 4), np.dtype(np.float32)) for n in ("a", "b")]
    np.save(tmp_path / "one.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(UsageError, match=r"calibration file \S*one\.npy: array calibration needs a model with one"):
        calibration.load(tmp_path, two_inputs, {})
    text = [TensorSpec("input_ids", ("batch", "sequence"), np.dtype(np.int64))]
    (tmp_path / "one.npy").unlink()
    (tmp_path / "lines.txt").write_text("hello\n")
    with pytest.raises(UsageError, match=r"no usable samples \(1 file skipped; \S*lines\.txt: text calibration "
                                         r"needs the model's tokenizer"):
        calibration.load(tmp_path, text, {})
    # token ids as arrays, beside a note: the note is skipped (it stopped the conversion), and so is
    # an array that would be cast with loss (float64 ids became zeros, counted as good)
    np.save(tmp_path / "ids.npy", np.ones((2, 5), np.int64))
    np.save(tmp_path / "floats.npy", np.full((1, 5), 0.5))
    got = calibration.load(tmp_path, text, {})
    assert len(got.feeds) == 2 and {Path(p).name for p, _ in got.skipped} == {"lines.txt", "floats.npy"}
    assert "expected int64, got float64" in dict((Path(p).name, w) for p, w in got.skipped)["floats.npy"]


def test_ops_a_target_cannot_take_fail_that_target_only(tmp_path):
    from onnx import TensorProto, helper

    # StringNormalizer: ONNX Runtime runs it; OpenVINO has no such op.
    graph = helper.make_graph(
        [helper.make_node("StringNormalizer", ["s"], ["t"], case_change_action="UPPER", locale="C")], "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [2])])
    import onnx

    src = tmp_path / "strings.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(src))
    with pytest.raises(ConversionError) as e:
        convert(src, to=["openvino"], precisions=["fp32"], out=tmp_path / "pkg")
    row = e.value.report.artifacts[0]
    assert row.status == "failed" and row.reason
    assert not (tmp_path / "pkg").exists()


def test_bad_options_are_usage_errors(cnn_onnx, tmp_path):
    with pytest.raises(UsageError, match="unknown target"):
        convert(cnn_onnx, to=["coreml"], out=tmp_path / "x")
    with pytest.raises(UsageError, match="unknown precision"):
        convert(cnn_onnx, precisions=["int4"], out=tmp_path / "x")
    with pytest.raises(ModelFileError, match="no such file"):
        convert(tmp_path / "missing.onnx", out=tmp_path / "x")
    for bad in (2, -1.5, float("nan")):
        with pytest.raises(UsageError, match="not a cosine similarity: give a value from -1 to 1"):
            convert(cnn_onnx, min_cosine=bad, out=tmp_path / "x")
    r = run_cli("convert", str(cnn_onnx), "--min-cosine", "2", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "cosine" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("convert", str(cnn_onnx), "--preprocess", "{not json", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "--preprocess" in r.stderr
    # pre-processing the package's tasks would refuse (resize -3 made a package that did not open) or
    # ignore (a misspelt kind or key): refused before any work
    for pp, problem in (({"image": {"resize": -3}}, "preprocess: image resize -3 is not a positive number"),
                        ({"img": {"resize": 36}}, "preprocess: unknown kind 'img' (image, audio or text)"),
                        ({"image": {"resise": 36}}, "preprocess.image: unknown key 'resise' (known: resize, "),
                        ({"audio": {"sample_rate": 0}}, "preprocess: audio sample_rate 0 is not a positive"),
                        ({"text": {"max_length": "long"}}, "preprocess.text: max_length 'long' is not a positive")):
        with pytest.raises(UsageError, match=re.escape(problem)):
            convert(cnn_onnx, preprocess=pp, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    r = run_cli("convert", str(cnn_onnx), "--preprocess", '{"image": {"crop": 0}}', "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "image crop 0 is not a positive number of pixels" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "y").exists()


def test_an_unknown_task_and_labels_that_do_not_fit_are_refused(cnn_onnx, tmp_path):
    """--task bogus made a package no task opens; 5 labels for 10 classes one that `predict` refused; an
    empty labels file one with no names. Each is refused at convert time, naming what is wrong."""
    r = run_cli("convert", str(cnn_onnx), "--to", "onnx", "--precision", "fp32", "--task", "bogus",
                "--out", str(tmp_path / "pkg"), "--json")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    error = json.loads(r.stdout)["error"]
    assert error.startswith("unknown task 'bogus'; choose from image-classification, text-embedding"), error
    five, empty = tmp_path / "labels5.txt", tmp_path / "empty.txt"
    five.write_text("a\nb\nc\nd\ne\n")
    empty.write_text("\n \n")
    for labels, problem in ((five, f"labels file {five}: 5 labels, and the model outputs 10 class scores"),
                            (empty, f"labels file {empty}: no labels in it")):
        r = run_cli("convert", str(cnn_onnx), "--to", "onnx", "--precision", "fp32", "--task",
                    "image-classification", "--labels", str(labels), "--out", str(tmp_path / "pkg"))
        assert r.returncode == 2 and problem in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "labels5.txt"]  # nothing written
    with pytest.raises(UsageError, match="labels: 5 labels, and the model outputs 10 class scores"):
        convert(cnn_onnx, to=["onnx"], precisions=["fp32"], task="image-classification", labels=list("abcde"),
                out=tmp_path / "pkg")


def test_short_external_data_is_a_bad_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    w = np.ones((64, 64), np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
                              [onnx.numpy_helper.from_array(w, "w")])
    src = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src),
              save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    os.truncate(tmp_path / "ext.onnx.data", 1000)
    r = run_cli("convert", str(src), "--to", "onnx", "--precision", "fp32", "--out", str(tmp_path / "pkg"))
    assert r.returncode == 2, r.stderr
    assert "ext.onnx: its external data file 'ext.onnx.data' is 1000 bytes, and its tensors need 16384: " \
           "truncated" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "pkg").exists()
    r = run_cli("run", str(src), "--synthetic")  # the runtime layer reads it the same way
    assert r.returncode == 2 and "truncated" in r.stderr, r.stderr


# --- the destination ----------------------------------------------------------------------------------------

def test_out_must_be_new_empty_or_a_package(cnn_onnx, tmp_path, monkeypatch):
    from converters import conversion

    def no_work(*a, **k):
        raise AssertionError("the destination is checked before any work")

    monkeypatch.setattr(conversion.sources, "prepare", no_work)
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "notes.txt").write_text("mine")
    (docs / "sub").mkdir()
    afile = tmp_path / "afile"
    afile.write_text("mine too")
    (tmp_path / "link").symlink_to(docs)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    refused = {docs: "it is a folder with 2 entries and not an edgekit package", afile: "it is a file",
               afile / "pkg": f"{afile} is a file, not a folder", tmp_path / "link": "it is a symbolic link",
               Path("."): "it is the current folder or a folder above it", Path(".."): "it is the current folder"}
    for out, why in refused.items():
        with pytest.raises(UsageError, match=f"cannot write the package to {re.escape(str(out))}: {re.escape(why)}"):
            convert(cnn_onnx, to=["onnx"], precisions=["fp32"], out=out)
    assert (docs / "notes.txt").read_text() == "mine" and afile.read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "here", "link", "mydocs"]  # no staging folder
    # the OS says "No such file or directory" of a folder that is there: the message says what it means
    with pytest.raises(UsageError, match=r"to /proc/edgekit-pkg: cannot make a folder in /proc \(the system lets "
                                         r"no folder be made there: No such file or directory\)"):
        convert(cnn_onnx, to=["onnx"], precisions=["fp32"], out="/proc/edgekit-pkg")
    monkeypatch.undo()
    r = run_cli("convert", str(cnn_onnx), "--to", "onnx", "--precision", "fp32", "--out", str(docs))
    assert r.returncode == 2 and "not an edgekit package" in r.stderr and "Traceback" not in r.stderr
    assert (docs / "notes.txt").read_text() == "mine"


def test_a_mount_point_out_is_refused_before_any_work(cnn_onnx, tmp_path, monkeypatch):
    """An empty container volume passed every check, then failed after the whole conversion: the
    package replaces the folder by a rename, which a mount point refuses (EBUSY)."""
    from converters import conversion

    vol = tmp_path / "vol"
    vol.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == vol or real(p))
    monkeypatch.setattr(conversion.sources, "prepare", lambda *a, **k: pytest.fail("checked before any work"))
    inside = re.escape(str(vol / "package"))
    with pytest.raises(UsageError, match=f"it is a mount point.*give a folder inside it \\({inside}\\)"):
        convert(cnn_onnx, to=["onnx"], precisions=["fp32"], out=vol)


def test_out_may_be_an_empty_folder_or_a_missing_path(cnn_onnx, tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper" / "pkg"):
        assert convert(cnn_onnx, to=["onnx"], precisions=["fp32"], out=out).written
        assert (out / "edgekit.json").is_file()


# --- atomicity --------------------------------------------------------------------------------------------

def test_a_failing_step_leaves_the_destination_as_it_was(cnn_onnx, tmp_path, monkeypatch):
    from converters import conversion

    out = tmp_path / "pkg"
    convert(cnn_onnx, to=["onnx"], precisions=["fp32"], out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("injected failure in the check step")

    monkeypatch.setattr(conversion.checks, "check", boom)
    with pytest.raises(RuntimeError, match="injected"):
        convert(cnn_onnx, to=["onnx", "openvino"], precisions=["fp32", "fp16"], out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no temporary folder left behind


def test_sigint_leaves_nothing_behind(cnn_onnx, tmp_path):
    out = tmp_path / "pkg"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "convert", str(cnn_onnx), "--to", "openvino,onnx",
                             "--precision", "fp32,fp16,int8-dynamic", "--out", str(out), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # wait until it is converting, then interrupt as Ctrl-C would
        seen.append(line)
        if "converting" in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert json.loads(stdout) == {"error": "interrupted", "exit_code": 130}  # --json: one document, also then
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child is tied to its parent on Linux only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_onnx2tf_does_not_outlive_a_killed_convert(cnn_onnx, tmp_path, sig):
    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "convert", str(cnn_onnx), "--to", "tflite",
                             "--precision", "fp32", "--out", str(tmp_path / "pkg")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "onnx2tf" in line:
                break
        def runs_onnx2tf(child) -> bool:
            try:
                return "onnx2tf" in " ".join(child.cmdline())
            except psutil.Error:  # a short-lived child ended (or is a zombie not yet reaped)
                return False

        deadline, onnx2tf = time.monotonic() + 30, []
        while not onnx2tf and time.monotonic() < deadline:
            onnx2tf = [c for c in psutil.Process(proc.pid).children() if runs_onnx2tf(c)]
            time.sleep(0.05)
        assert onnx2tf, "onnx2tf never started"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(onnx2tf, timeout=10)
        assert not alive, f"onnx2tf outlived its parent: {alive}"
        if sig == signal.SIGTERM:  # as Ctrl-C: exit 143, one line, the staging folder removed
            err = proc.stderr.read()
            assert proc.returncode == 128 + signal.SIGTERM and "terminated" in err and "Traceback" not in err, err
            assert list(tmp_path.iterdir()) == []
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_swallowed_by_a_runtime_still_stops_the_conversion(cnn_onnx, tmp_path, monkeypatch, sig):
    """pybind11 turns a KeyboardInterrupt during OpenVINO's module setup into ImportError
    "initialization failed": that must stop the conversion, not mark one artifact failed and go on.
    SIGTERM too, where a handler turns it into an exception, as the CLI's does."""
    from converters import conversion
    from edgekit.cli import Terminated

    raised = KeyboardInterrupt if sig == signal.SIGINT else Terminated

    def _terminate(*_):  # the CLI's, less its ending of child processes (pytest's servers are ours)
        raise Terminated

    def interrupted_inside(*a, **k):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(1)  # the handler raises here
        except raised:
            pass
        raise ImportError("initialization failed")

    monkeypatch.setattr(conversion.openvino_target, "build", interrupted_inside)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive Python has it
    previous_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(raised):
            convert(cnn_onnx, to=["openvino", "onnx"], precisions=["fp32"], out=tmp_path / "pkg")
        assert list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
        assert signal.getsignal(signal.SIGTERM) is _terminate
        assert not conversion._interrupted.is_set()  # and forgotten: the next conversion starts clean
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def test_a_lone_converted_file_classifies_with_its_own_labels(offline_cli_package, tmp_path):
    _, out, _ = offline_cli_package
    lone = tmp_path / "alone.tflite"
    lone.write_bytes((out / "model-int8.tflite").read_bytes())
    from edgekit.tasks import ImageClassifier

    with ImageClassifier(lone) as clf:
        assert clf.layout == "NHWC" and clf.classify(IMAGES / "cat.jpg", top_k=1)[0].label in LABELS


def test_onnxslims_unknown_dims_are_recorded_as_unknown(tmp_path):
    """onnxslim names every unknown output dim "?": recorded as one name, it said they were one size."""
    import onnx
    from onnx import TensorProto, helper

    from converters.sources import onnx_outputs

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["?", 4, "?", "n"])])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert onnx_outputs(tmp_path / "m.onnx") == [{"name": "y", "shape": [None, 4, None, "n"], "dtype": "float32"}]


def test_a_package_is_not_converted_into_the_folder_holding_its_source(tmp_path, models):
    """The new package replaces its folder whole: a source inside it would be deleted."""
    import shutil

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(models["mlp.onnx"], pkg / "mlp.onnx")
    for out in (pkg, tmp_path):
        with pytest.raises(UsageError, match="the source .*mlp.onnx is in it"):
            convert(pkg / "mlp.onnx", to=["onnx"], precisions=["fp32"], out=out)
    assert (pkg / "mlp.onnx").is_file()
