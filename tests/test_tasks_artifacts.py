"""Tasks on every artifact the converter made for the samples, and on other kinds of models:
a sequence classifier, audio classifiers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit import package
from edgekit.hostinfo import has_int8_dot, is_x86
from edgekit.tasks import AudioClassifier, ImageClassifier, TextClassifier, TextEmbedder, VoiceActivityDetector
from samples.build import INPUTS

IMAGE_ARTIFACTS = [f"model-{p}{ext}" for ext in (".onnx", ".xml", ".tflite") for p in ("fp32", "fp16", "int8")]
VAD_ARTIFACTS = IMAGE_ARTIFACTS  # the same nine, from the 16 kHz graph; model.onnx is Silero's own file
AUDIO = INPUTS / "audio"
WINDOW_S = 0.032  # one 512-sample window at 16 kHz
RUNTIME = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert"}
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def fp32_scores(samples):
    with ImageClassifier(samples["image"] / "model-fp32.onnx") as ref:
        return {p.name: ref.scores(p) for p in sorted((INPUTS / "images").iterdir())}


@pytest.mark.parametrize("artifact", IMAGE_ARTIFACTS)
def test_image_task_on_every_converted_artifact(samples, fp32_scores, artifact):
    """Each artifact of the sample package (ONNX / IR / TFLite NHWC, fp32 / fp16 / int8), as a lone file
    with its embedded card, on its own runtime, against the fp32 ONNX export on the sample images."""
    path = samples["image"] / artifact
    entry = next(a for a in json.loads((samples["image"] / "edgekit.json").read_text())["artifacts"]
                 if a["path"] == artifact)
    if entry["status"] != "ok":
        # Only ONNX Runtime's 8-bit int8, and only where the CPU lacks int8 dot products (VNNI): there its
        # weights saturate (cosine 0.91 on a Zen 1; OpenVINO's IR has the overflow fix). The check marked
        # it, says why, and auto never picks it.
        assert artifact == "model-int8.onnx" and is_x86() and has_int8_dot() is False, entry
        assert entry["reason"].startswith("parity: cosine") and "no VNNI" in entry["reason"], entry
        with edgekit.load(samples["image"]) as m:
            assert m.path.name != artifact
        return
    with ImageClassifier(path, device=RUNTIME[path.suffix]) as clf:
        assert clf.model.backend == RUNTIME[path.suffix] and clf.labels[281] == "tabby"
        assert clf.layout == ("NCHW" if path.suffix == ".onnx" else "NHWC")  # IR and TFLite: channels last
        scores = {name: clf.scores(INPUTS / "images" / name) for name in fp32_scores}
        top = clf.classify(INPUTS / "images" / "cat.jpg", top_k=5)
    a = np.concatenate(list(scores.values()))
    b = np.concatenate(list(fp32_scores.values()))
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    agree = np.mean([scores[n].argmax() == fp32_scores[n].argmax() for n in scores])
    if "int8" in artifact:
        assert cos > 0.98 and agree >= 0.75 and {c.label for c in top} & CAT_CLASSES, (cos, agree)
    else:
        assert cos > 0.9999 and agree == 1.0, (cos, agree)


@pytest.fixture(scope="module")
def silero(samples):
    """Silero's own file in the package (model.onnx) on ONNX Runtime: the reference of every VAD artifact.
    verify=False: alone, its first inference would get a synthetic sr of 0 Hz."""
    with VoiceActivityDetector(samples["audio"] / "model.onnx", device="onnxruntime", verify=False) as vad:
        yield vad


@pytest.mark.parametrize("artifact", VAD_ARTIFACTS)
def test_vad_on_every_converted_artifact(samples, silero, artifact):
    """Each VAD artifact as a lone file with its card, on its own runtime (none has an sr input; TFLite
    takes its inputs in its own order and returns the state in another layout): the speech segments
    of Silero's own file within one window, and nothing in silence or noise."""
    path = samples["audio"] / artifact
    expected = silero.detect(AUDIO / "speech.wav")
    with VoiceActivityDetector(path, device=RUNTIME[path.suffix]) as vad:
        assert vad.model.backend == RUNTIME[path.suffix] and vad.sample_rate == 16000
        assert {s.name for s in vad.model.inputs} == {"input", "state"}
        got = vad.detect(AUDIO / "speech.wav")
        assert expected and len(got) == len(expected), (got, expected)
        for s, e in zip(got, expected):
            assert abs(s.start_s - e.start_s) <= WINDOW_S and abs(s.end_s - e.end_s) <= WINDOW_S, (got, expected)
        assert vad.detect(AUDIO / "silence.wav") == [] and vad.detect(AUDIO / "noise.wav") == []
        if "fp32" in artifact:  # the 16 kHz graph is Silero's to rounding, carrying its own state
            np.testing.assert_allclose(vad.probabilities(AUDIO / "speech.wav"),
                                       silero.probabilities(AUDIO / "speech.wav"), atol=1e-4)


def test_vad_package_records_the_fold_and_every_artifact(samples):
    manifest = json.loads((samples["audio"] / "edgekit.json").read_text())
    fold = manifest["export"]["parity"]
    assert fold["max_abs_error"] < 1e-4 and fold["cosine"] > 0.999999 and "silero_vad.onnx" in fold["against"]
    ok = {a["path"] for a in manifest["artifacts"] if a["status"] == "ok"}
    assert ok == {*VAD_ARTIFACTS, "model.onnx"}
    assert manifest["conversion"]["check"]["samples"] > 300  # real streaming steps, not random inputs
    with edgekit.load(samples["audio"]) as m:  # whichever artifact it picks runs the package's warm-up
        assert m.path.name in ok


def test_text_classifier_with_a_sequence_classification_head(samples, tmp_path):
    """MiniLM plus a linear head (label prototypes) exported as one model with labels."""
    labels = ["sports", "finance", "weather"]
    emb = TextEmbedder(samples["text"])
    protos = emb.embed([f"This text is about {x}." for x in labels]).T * 20.0  # [384, 3], temperature
    model = onnx.load(str(samples["text"] / "model-fp32.onnx"))
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
