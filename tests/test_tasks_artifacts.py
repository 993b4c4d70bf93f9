"""Tasks on other kinds of artifacts and models: IR fp32/fp16, a sequence classifier, audio classifiers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit import package
from edgekit.tasks import AudioClassifier, ImageClassifier, TextClassifier, TextEmbedder
from samples.build import INPUTS


@pytest.mark.parametrize("fp16", [False, True])
def test_image_task_on_openvino_ir_artifacts(samples, tmp_path, fp16):
    import openvino as ov

    pkg = tmp_path / "pkg"
    staging = package.staging_dir(pkg)
    ov.save_model(ov.convert_model(str(samples["image"] / "model.onnx")), str(staging / "model.xml"),
                  compress_to_fp16=fp16)
    manifest = json.loads((samples["image"] / "edgekit.json").read_text())
    manifest["artifacts"] = [{"path": "model.xml", "format": "openvino", "precision": "fp16" if fp16 else "fp32",
                              "layout": "NCHW"}]
    package.publish(staging, pkg, manifest)
    clf = ImageClassifier(pkg)
    assert clf.model.path.suffix == ".xml" and clf.model.backend == "openvino"
    ref = ImageClassifier(samples["image"])
    for name in ("cat.jpg", "coffee.jpg"):
        a, b = clf.scores(INPUTS / "images" / name), ref.scores(INPUTS / "images" / name)
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos > 0.999 and a.argmax() == b.argmax()


def test_text_classifier_with_a_sequence_classification_head(samples, tmp_path):
    """MiniLM plus a linear head (label prototypes) exported as one model with labels."""
    labels = ["sports", "finance", "weather"]
    emb = TextEmbedder(samples["text"])
    protos = emb.embed([f"This text is about {x}." for x in labels]).T * 20.0  # [384, 3], temperature
    model = onnx.load(str(samples["text"] / "model.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(protos.astype(np.float32), "head_w"))
    model.graph.node.append(helper.make_node("MatMul", [model.graph.output[0].name, "head_w"], ["logits"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]))
    pkg = tmp_path / "clf"
    staging = package.staging_dir(pkg)
    onnx.save(model, str(staging / "model.onnx"))
    shutil.copy(samples["text"] / "tokenizer.json", staging / "tokenizer.json")
    manifest = json.loads((samples["text"] / "edgekit.json").read_text())
    manifest.update(task="text-classification", labels=labels,
                    artifacts=[{"path": "model.onnx", "format": "onnx", "precision": "fp32"}])
    package.publish(staging, pkg, manifest)
    clf = TextClassifier(pkg)
    assert not clf.zero_shot
    top = clf.classify("The striker scored twice in the second half.", top_k=3)
    assert top[0].label == "sports" and abs(sum(c.score for c in top) - 1.0) < 1e-5  # softmax over the head
    assert clf.classify("Stocks fell as interest rates rose.", top_k=1)[0].label == "finance"
    with pytest.raises(edgekit.InputError, match="empty"):
        clf.classify("")


def _audio_classifier(tmp_path, features: str):
    """A tiny energy-based clip classifier: logits = [quiet, sound] from the mean of its input."""
    if features == "waveform":
        inp = helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 16000])
        nodes = [helper.make_node("Mul", ["audio", "audio"], ["sq"]),
                 helper.make_node("ReduceMean", ["sq"], ["energy"], keepdims=0)]
        scale, bias = 1e6, -1.0  # "sound" above a mean square of 1e-6 (silence here: 2e-10)
    else:
        inp = helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, None, 32])
        nodes = [helper.make_node("ReduceMean", ["mel"], ["energy"], keepdims=0)]
        scale, bias = 1.0, 12.7  # mean log-mel: silence -13.6, a 440 Hz tone -11.7, pink noise -1.7
    w = numpy_helper.from_array(np.array([[-scale, scale]], np.float32), "w")
    b = numpy_helper.from_array(np.array([-bias, bias], np.float32), "b")
    nodes += [helper.make_node("Reshape", ["energy", "one"], ["e2"]),
              helper.make_node("Mul", ["e2", "w"], ["ew"]), helper.make_node("Add", ["ew", "b"], ["logits"])]
    one = numpy_helper.from_array(np.array([1, 1], np.int64), "one")
    g = helper.make_graph(nodes, "clf", [inp], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                          initializer=[w, b, one])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    pkg = tmp_path / features
    staging = package.staging_dir(pkg)
    onnx.save(m, str(staging / "model.onnx"))
    pp = {"sample_rate": 16000, "clip_s": 1.0, "features": features}
    if features == "log-mel":
        pp.update(n_mels=32, n_fft=400, hop=160)
    package.publish(staging, pkg, {"name": "energy", "task": "audio-classification", "labels": ["quiet", "sound"],
                                   "preprocess": {"audio": pp},
                                   "artifacts": [{"path": "model.onnx", "format": "onnx", "precision": "fp32"}]})
    return pkg


@pytest.mark.parametrize("features", ["waveform", "log-mel"])
def test_audio_classifier_waveform_and_log_mel(tmp_path, features):
    clf = AudioClassifier(_audio_classifier(tmp_path, features))
    audio = INPUTS / "audio"
    assert clf.classify(audio / "noise.wav", top_k=1)[0].label == "sound"
    assert clf.classify(audio / "silence.wav", top_k=1)[0].label == "quiet"
    assert clf.classify(audio / "tone-stereo-44k.flac", top_k=1)[0].label == "sound"  # resampled, down-mixed
    with pytest.raises(edgekit.InputError, match="no samples"):
        clf.classify(np.zeros(0, np.float32), sample_rate=16000)


def test_image_task_on_an_int8_artifact(samples, tmp_path):
    """A QDQ int8 twin (ORT quantize_static, uint8 activations / int8 weights, calibrated on the
    sample images through the task's own pre-processing) agrees with fp32 on the top class."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    ref = ImageClassifier(samples["image"])
    images = sorted((INPUTS / "images").iterdir())

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": ref.preprocess_input(p)} for p in images])

        def get_next(self):
            return next(self.items, None)

    pkg = tmp_path / "int8"
    staging = package.staging_dir(pkg)
    quantize_static(str(samples["image"] / "model.onnx"), str(staging / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    manifest = json.loads((samples["image"] / "edgekit.json").read_text())
    manifest["artifacts"] = [{"path": "model.onnx", "format": "onnx", "precision": "int8", "layout": "NCHW"}]
    package.publish(staging, pkg, manifest)
    for device in ("onnxruntime", "openvino"):
        clf = ImageClassifier(pkg, device=device)
        for name in ("coffee.jpg", "motorcycle.jpg"):
            assert clf.classify(INPUTS / "images" / name, top_k=1)[0].index == \
                ref.classify(INPUTS / "images" / name, top_k=1)[0].index
        assert {c.label for c in clf.classify(INPUTS / "images" / "cat.jpg", top_k=5)} & {
            "tabby", "tiger cat", "Egyptian cat"}
