"""Tasks on the real sample packages: images, text and audio in, typed results out."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import edgekit
from edgekit.tasks import (
    AudioClassifier,
    Category,
    ClassifierOptions,
    ImageClassifier,
    Segment,
    TextClassifier,
    TextEmbedder,
    VoiceActivityDetector,
)
from edgekit.tasks.results import softmax
from samples.build import INPUTS

IMAGES = INPUTS / "images"
AUDIO = INPUTS / "audio"
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281-285


@pytest.fixture(scope="module")
def image_clf(samples):
    with ImageClassifier(samples["image"] / "model-fp32.onnx") as clf:  # the reference artifact
        yield clf


@pytest.fixture(scope="module")
def embedder(samples):
    with TextEmbedder(samples["text"] / "model-fp32.onnx") as emb:
        yield emb


@pytest.fixture(scope="module")
def vad(samples):
    with VoiceActivityDetector(samples["audio"]) as v:
        yield v


# --- image ---------------------------------------------------------------------------------------

def test_cat_top5_holds_a_cat_class(image_clf):
    top = image_clf.classify(IMAGES / "cat.jpg")
    assert len(top) == 5 and all(isinstance(c, Category) for c in top)
    assert {c.label for c in top} & CAT_CLASSES
    assert top[0].label in CAT_CLASSES
    assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)


@pytest.mark.parametrize(("name", "expected"), [("coffee.jpg", "espresso"), ("motorcycle.jpg", "moped"),
                                                ("rocket.jpg", "missile")])
def test_other_pictures(image_clf, name, expected):
    assert expected in [c.label for c in image_clf.classify(IMAGES / name, top_k=3)]


def test_preprocessing_overrides_are_checked_when_the_task_opens(samples):
    with pytest.raises(edgekit.UsageError, match=r"model-fp32\.onnx: image resampling 'tf2' is not one of"):
        ImageClassifier(samples["image"] / "model-fp32.onnx", preprocess={"resampling": "tf2"})
    with pytest.raises(edgekit.UsageError, match=r"model-fp32\.onnx: image std \[128, 0, 128\] has a zero"):
        ImageClassifier(samples["image"] / "model-fp32.onnx", preprocess={"std": [128, 0, 128]})
    with ImageClassifier(samples["image"] / "model-fp32.onnx",
                         preprocess={"resampling": "pillow", "interpolation": "bilinear"}) as torchvision_way:
        assert torchvision_way.classify(IMAGES / "cat.jpg", top_k=5)[0].label in CAT_CLASSES


def test_every_image_form_gives_the_same_answer(image_clf):
    from PIL import Image

    path = IMAGES / "cat.jpg"
    ref = image_clf.classify(path, top_k=3)
    pil = Image.open(path)
    forms = [str(path), path.read_bytes(), pil, np.asarray(pil.convert("RGB"))]
    for form in forms:
        got = image_clf.classify(form, top_k=3)
        assert [c.index for c in got] == [c.index for c in ref]
        np.testing.assert_allclose([c.score for c in got], [c.score for c in ref], atol=1e-5)


def _write(path, data):
    """Write bytes or text and return the path (for parametrized file makers)."""
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _encode(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_honoured(image_clf):
    from PIL import Image

    upright = Image.open(IMAGES / "cat.jpg").convert("RGB")
    stored_sideways = upright.transpose(Image.Transpose.ROTATE_90)  # camera wrote it rotated ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and said "rotate 90 degrees clockwise to view"
    data = _encode(stored_sideways, "PNG", exif=exif.tobytes())  # lossless: inputs must be identical
    np.testing.assert_array_equal(image_clf.preprocess_input(data), image_clf.preprocess_input(upright))
    plain = _encode(stored_sideways, "PNG")
    assert not np.array_equal(image_clf.preprocess_input(plain), image_clf.preprocess_input(upright))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_any_image_mode_is_accepted(image_clf, mode):
    from PIL import Image

    img = Image.open(IMAGES / "cat.jpg").convert("RGB")
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), np.uint16) * 257)
        img = Image.fromarray(arr)  # 16-bit grayscale
        data = _encode(img, "PNG")
    else:
        img = img.convert(mode)
        data = _encode(img, "TIFF" if mode == "CMYK" else "PNG")
    top = image_clf.classify(data, top_k=5)
    assert len(top) == 5
    if mode in ("RGBA", "P", "CMYK"):  # colour kept: still a cat
        assert {c.label for c in top} & CAT_CLASSES


def test_grayscale_sample_file(image_clf):
    assert image_clf.classify(IMAGES / "camera-gray.png", top_k=1)[0].label == "tripod"


def test_tiny_and_huge_images_give_a_result(image_clf):
    from PIL import Image

    assert len(image_clf.classify(np.full((1, 1, 3), 128, np.uint8), top_k=3)) == 3  # upsampled
    big = Image.new("RGB", (10000, 10000), (120, 90, 60))  # 100 MP: allowed
    assert len(image_clf.classify(big, top_k=1)) == 1


def test_decompression_bomb_is_refused_before_decoding(image_clf, tmp_path):
    from PIL import Image

    # A valid PNG header declaring 30000 x 30000 pixels (900 MP), followed by nothing.
    png = _encode(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    import zlib

    chunk = b"IHDR" + ihdr
    bomb = png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(edgekit.InputError, match="bomb"):
        image_clf.classify(path)


def test_bad_image_bytes_name_no_python_object(image_clf):
    with pytest.raises(edgekit.InputError) as info:
        image_clf.classify(b"not an image")
    assert str(info.value) == "image (bytes): cannot be read as an image (cannot identify image file)"


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda d: d / "missing.jpg", "no such image file"),
    (lambda d: d, "a folder, not an image file"),
    (lambda d: _write(d / "empty.jpg", b""), "empty file"),
    (lambda d: _write(d / "text.jpg", "not an image"), "cannot be read as an image"),
    (lambda d: _write(d / "trunc.jpg", (IMAGES / "cat.jpg").read_bytes()[:400]), "cannot be read as an image"),
])
def test_bad_image_files(image_clf, tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(edgekit.InputError, match=fragment) as info:
        image_clf.classify(path)
    assert str(path) in str(info.value)


def test_bad_image_values(image_clf):
    with pytest.raises(edgekit.InputError, match="0 bytes"):
        image_clf.classify(b"")
    with pytest.raises(edgekit.InputError, match="expected an HxW"):
        image_clf.classify(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(edgekit.InputError, match="no pixels"):
        image_clf.classify(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(edgekit.InputError, match="expected uint8"):
        image_clf.classify(np.zeros((4, 4, 3), np.float64))
    with pytest.raises(edgekit.InputError, match="top_k"):
        image_clf.classify(IMAGES / "cat.jpg", top_k=0)


def test_classifier_options(image_clf):
    top = image_clf.classify(IMAGES / "cat.jpg", top_k=10, deny=["tiger cat"])
    assert "tiger cat" not in [c.label for c in top]
    only = image_clf.classify(IMAGES / "cat.jpg", allow=["tabby", "espresso"], top_k=5)
    assert [c.label for c in only] == ["tabby", "espresso"]
    sure = image_clf.classify(IMAGES / "coffee.jpg", score_threshold=0.5, top_k=5)
    assert [c.label for c in sure] == ["espresso"]
    clf = ImageClassifier(image_clf.model, options=ClassifierOptions(top_k=2))
    assert len(clf.classify(IMAGES / "cat.jpg")) == 2


def test_allow_and_deny_labels_the_classifier_lacks_are_refused_with_the_closest(image_clf):
    """A typo (allow=["tabby cat"] for "tabby") kept nothing, or let the class through deny, unsaid."""
    with pytest.raises(edgekit.UsageError, match=r"allow: 'tabby cat' is not one of this classifier's 1000 "
                                                 r"labels \(closest: 'tabby'"):
        image_clf.classify(IMAGES / "cat.jpg", allow=["tabby cat", "espresso"])
    with pytest.raises(edgekit.UsageError, match=r"deny: 'expresso' \(closest: 'espresso'.*\), 'Tabby' \(closest: "
                                                 r"'tabby'.*\) are not among this classifier's 1000 labels"):
        image_clf.classify(IMAGES / "cat.jpg", deny=["expresso", "tiger cat", "Tabby"])
    # a classifier's own options are checked when it opens
    with pytest.raises(edgekit.UsageError, match="deny: 'tiger-cat' is not one of"):
        ImageClassifier(image_clf.model, options=ClassifierOptions(deny=["tiger-cat"]))
    clf = ImageClassifier(image_clf.model, options=ClassifierOptions(allow=["tabby", "tiger cat"], top_k=5))
    assert {c.label for c in clf.classify(IMAGES / "cat.jpg")} == {"tabby", "tiger cat"}
    assert [c.label for c in clf.classify(IMAGES / "cat.jpg", allow=["espresso"])] == ["espresso"]
    with pytest.raises(edgekit.UsageError, match="allow: 'espreso' is not one of"):  # given at the call
        clf.classify(IMAGES / "cat.jpg", allow=["espreso"])
    # as is select's own caller, labels or none (a model without labels names its categories by index)
    scores = np.array([0.1, 0.2, 0.7], np.float32)
    with pytest.raises(edgekit.UsageError, match="allow: 'dgo' is not one of this classifier's labels 'cat', "
                                                 "'dog', 'bird' \\(closest: 'dog'\\)"):
        ClassifierOptions(allow=["dgo"]).select(scores, ["cat", "dog", "bird"])
    with pytest.raises(edgekit.UsageError, match="allow: 'cat', '3' are not among this model's categories: it "
                                                 "has no labels, they are named by index, '0' to '2'"):
        ClassifierOptions(allow=["cat", "3", "1"]).select(scores, None)
    assert [c.label for c in ClassifierOptions(allow=["1", "0"]).select(scores, None)] == ["1", "0"]
    # one-pass iterables: read once for the check, they then kept nothing (allow) or denied nothing
    assert [c.label for c in ClassifierOptions(allow=map(str.strip, [" 1", "0 "])).select(scores, None)] == ["1", "0"]
    assert [c.label for c in ClassifierOptions(deny=(x for x in ["2"])).select(scores, None)] == ["1", "0"]
    assert {c.label for c in clf.classify(IMAGES / "cat.jpg", deny=(x for x in ["tabby"]))} == {"tiger cat"}


@pytest.mark.parametrize("top_k", [1, 3, 5, 16, 17, None])
def test_top_k_is_a_stable_sort_of_the_scores(top_k):
    """A small top_k is found by repeated argmax (3x faster right after an inference than a sort):
    the same categories in the same order as the stable sort, ties in index order, NaN last."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        scores = rng.integers(0, 6, int(rng.integers(1, 40))).astype(np.float32) / 5  # ties everywhere
        for value in (-np.inf, np.inf, np.nan)[:trial % 4]:  # then -inf, +inf and NaN among them
            scores[rng.integers(0, len(scores))] = value
        want = np.argsort(-scores, kind="stable")[:top_k]
        got = ClassifierOptions(top_k=top_k).select(scores, None)
        assert [c.index for c in got] == want.tolist(), scores
        np.testing.assert_array_equal([c.score for c in got], scores[want])
        assert all(c.label == str(c.index) and type(c.index) is int for c in got)


def test_scores_of_any_type_and_shape_give_float_results():
    assert softmax(np.array(3.0, np.float32)) == 1.0  # a 0-d array, as before the float32 path
    top = ClassifierOptions(top_k=2).select(np.array([3, 5, 1]), None)  # integer scores
    assert [(c.index, c.score) for c in top] == [(1, 5.0), (0, 3.0)] and all(type(c.score) is float for c in top)


def test_the_classifiers_pre_processing_is_resolved_once_and_reported_as_a_copy(image_clf):
    """The classifier resolves its pre-processing when it opens; ``pp`` shows it as a plain dict."""
    pp = image_clf.pp
    assert json.loads(json.dumps(pp)) == pp and pp["crop"] == 224 and pp["mean"] == [127.0] * 3
    pp["mean"][0] = 0.0  # a copy: changing it changes nothing
    want = image_clf.classify(IMAGES / "cat.jpg")
    assert image_clf.pp["mean"] == [127.0] * 3 and image_clf.classify(IMAGES / "cat.jpg") == want
    # the crop geometry kept per image size holds no remap maps (0.4 MB each)
    from PIL import Image

    for side in range(300, 340):
        image_clf.preprocess_input(Image.new("RGB", (side, side)))
    kept = image_clf.preprocessor._geometry.values()
    assert 1 <= len(kept) <= 64 and sum(a.nbytes for g in kept for a in g if isinstance(a, np.ndarray)) < 200_000


def test_zero_shot_allow_and_deny_are_checked_against_the_callers_labels(embedder):
    zs = TextClassifier(embedder.model, labels=["sports", "finance", "weather"])
    assert {c.label for c in zs.classify("Rain tomorrow.", deny=["weather"])} == {"sports", "finance"}
    with pytest.raises(edgekit.UsageError, match="allow: 'music' is not one of this classifier's labels 'sports', "
                                                 "'finance', 'weather'"):
        zs.classify(["Rain tomorrow.", "A new album."], allow=["music"])
    with pytest.raises(edgekit.UsageError, match="allow: 'Sports' is not one of .* \\(closest: 'sports'\\)"):
        TextClassifier(embedder.model, labels=["sports", "finance"], options=ClassifierOptions(allow=["Sports"]))


@pytest.mark.parametrize(("options", "fragment"), [
    ({"top_k": "3"}, "top_k must be a whole number of at least 1, got '3'"),
    ({"top_k": 1.5}, "top_k must be a whole number of at least 1, got 1.5"),
    ({"top_k": True}, "top_k must be a whole number"),
    ({"score_threshold": "0.5"}, "score_threshold must be a finite number, got '0.5'"),
    ({"allow": "tabby"}, "allow must be a list of labels, not the string 'tabby'"),
])
def test_classify_options_of_the_wrong_type_are_input_errors(image_clf, options, fragment):
    with pytest.raises(edgekit.InputError, match=fragment):
        image_clf.classify(IMAGES / "cat.jpg", **options)


def test_classifier_arguments_are_checked_when_it_opens(image_clf):
    with pytest.raises(edgekit.UsageError, match="labels must be a list of strings, not the string 'ab'"):
        ImageClassifier(image_clf.model, labels="ab")
    with pytest.raises(edgekit.UsageError, match="labels name 2 classes, and the model outputs 1000 scores"):
        ImageClassifier(image_clf.model, labels=["cat", "dog"])
    with pytest.raises(edgekit.UsageError, match="options must be a ClassifierOptions, not dict"):
        ImageClassifier(image_clf.model, options={"top_k": 3})
    with pytest.raises(edgekit.InputError, match="top_k must be a whole number of at least 1, got 0"):
        ClassifierOptions(top_k=0)


def _package_copy(src, dest, artifact: str, **changes):
    """A copy of sample package ``src`` holding one artifact, its edgekit.json updated with ``changes``
    (checksums cover the artifacts, not edgekit.json)."""
    dest.mkdir()
    manifest = json.loads((src / "edgekit.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] == artifact]
    for name in (artifact, "tokenizer.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    (dest / "edgekit.json").write_text(json.dumps({**manifest, **changes}))
    return dest


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"postprocess": {"activation": "foo"}}, "postprocess activation 'foo' is not one of softmax, sigmoid, none"),
    ({"labels": ["cat", "dog"]}, "'labels' name 2 classes, and the model outputs 1000 scores"),
    ({"preprocess": {"image": "tf1"}}, "'preprocess.image' must be an object, not 'tf1'"),
])
def test_malformed_image_metadata_names_the_packages_edgekit_json(samples, tmp_path, changes, fragment):
    pkg = _package_copy(samples["image"], tmp_path / "pkg", "model-int8.onnx", **changes)
    with pytest.raises(edgekit.ModelFileError, match=re.escape(f"{pkg / 'edgekit.json'}: {fragment}")):
        ImageClassifier(pkg)


def test_a_package_without_an_activation_gives_raw_scores(samples, tmp_path, image_clf):
    pkg = _package_copy(samples["image"], tmp_path / "pkg", "model-fp32.onnx", postprocess={"activation": "none"})
    with ImageClassifier(pkg) as raw:
        logits = raw.scores(IMAGES / "cat.jpg")
    assert logits.min() < 0  # logits, not probabilities
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), image_clf.scores(IMAGES / "cat.jpg"),
                               atol=1e-5)


def test_image_results_agree_across_backends_and_layouts(samples, image_clf, tmp_path):
    """The same package on OpenVINO, and an NHWC twin of the model, give the same answer."""
    import onnx
    from onnx import helper

    ref = image_clf.scores(IMAGES / "cat.jpg")
    ov = ImageClassifier(samples["image"] / "model-fp32.xml", device="openvino")
    assert ov.model.backend == "openvino"
    np.testing.assert_allclose(ov.scores(IMAGES / "cat.jpg"), ref, atol=1e-4)
    # NHWC twin: a Transpose in front, the package saying layout NHWC.
    pkg = tmp_path / "nhwc"
    pkg.mkdir()
    model = onnx.load(str(samples["image"] / "model-fp32.onnx"))
    inp = model.graph.input[0]
    inp.name = "image_nchw"
    model.graph.node[0].input[0] = "image_nchw" if model.graph.node[0].input[0] == "image" else \
        model.graph.node[0].input[0]
    for node in model.graph.node:
        node.input[:] = ["image_nchw" if i == "image" else i for i in node.input]
    nhwc = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 224, 224, 3])
    model.graph.node.insert(0, helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]))
    del model.graph.input[:]
    model.graph.input.append(nhwc)
    onnx.save(model, str(pkg / "model.onnx"))
    manifest = json.loads((samples["image"] / "edgekit.json").read_text())
    manifest["artifacts"] = [{"path": "model.onnx", "format": "onnx", "precision": "fp32", "layout": "NHWC"}]
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    twin = ImageClassifier(pkg)
    assert twin.layout == "NHWC"
    np.testing.assert_allclose(twin.scores(IMAGES / "cat.jpg"), ref, atol=1e-5)


# --- text ----------------------------------------------------------------------------------------

def test_paraphrase_scores_higher_than_unrelated(embedder):
    lines = (INPUTS / "text.txt").read_text().splitlines()
    sims = embedder.similarity(lines[0], [lines[1], lines[2], lines[3]])
    assert sims[0, 0] > 0.6 and sims[0, 0] > sims[0, 1] + 0.3 and sims[0, 0] > sims[0, 2] + 0.3
    assert embedder.similarity("A man is playing a guitar.", "Someone plays the guitar.") > 0.7


def test_embeddings_are_unit_norm_and_batching_does_not_change_them(embedder):
    lines = (INPUTS / "text.txt").read_text().splitlines()
    one_by_one = np.stack([embedder.embed(t)[0] for t in lines])
    batched = embedder.embed(lines, batch_size=4)
    assert batched.shape == (len(lines), 384)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)


def test_a_text_gets_the_same_vector_alone_and_in_a_list_on_dynamic_int8(samples):
    """ONNX Runtime's int8 MiniLM quantizes activations with one scale per run: "hi" batched with a long
    sentence embedded at cosine 0.977 to "hi" alone. Such a model runs texts one at a time by default,
    and the server does not batch it."""
    from edgekit.serve.runner import can_batch

    texts = ["hi", "The stock market fell sharply today amid fears of recession and rising interest rates."]
    with TextEmbedder(samples["text"] / "model-int8.onnx") as emb:
        assert "DynamicQuantizeLinear" in emb.model.cross_row
        alone = np.stack([emb.embed(t)[0] for t in texts])
        np.testing.assert_allclose(emb.embed(texts), alone, atol=1e-6)
        batched = emb.embed(texts, batch_size=2)  # asked for: batched all the same, and it shows
        assert float(batched[0] @ alone[0]) < 0.995
        assert "a batch would change each request's answer" in can_batch(emb.model)
    for static in ("model-int8.xml", "model-fp32.onnx"):  # static int8 and float: rows are independent
        with edgekit.load(samples["text"] / static) as m:
            assert m.cross_row is None and can_batch(m) is None, static


def test_per_run_quantization_is_found_in_subgraphs_and_local_functions(tmp_path):
    """A merged decoder keeps its DynamicQuantizeLinear inside If branches; a model may keep it in a function."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit import formats

    f = TensorProto.FLOAT
    quantize = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    body = helper.make_graph(quantize, "then", [], [helper.make_tensor_value_info("y", f, None)])
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["y2"])], "else", [],
                              [helper.make_tensor_value_info("y2", f, None)])
    io = ([helper.make_tensor_value_info("x", f, ["n", 4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
          [helper.make_tensor_value_info("out", f, None)])
    branchy = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=body, else_branch=plain)],
                                "branchy", *io)
    onnx.save(helper.make_model(branchy, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "if.onnx")
    function = helper.make_function("local", "DQ", ["x"], ["y"], quantize, [helper.make_opsetid("", 17)])
    called = helper.make_graph([helper.make_node("DQ", ["x"], ["out"], domain="local")], "called", io[0][:1], io[1])
    onnx.save(helper.make_model(called, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]), tmp_path / "function.onnx")
    for name in ("if.onnx", "function.onnx"):
        assert "DynamicQuantizeLinear" in formats.onnx_op_types(tmp_path / name), name
        with edgekit.load(tmp_path / name) as m:
            assert "DynamicQuantizeLinear" in m.cross_row, name
    (tmp_path / "cut.onnx").write_bytes((tmp_path / "if.onnx").read_bytes()[:40])
    with pytest.raises(ValueError):
        formats.onnx_op_types(tmp_path / "cut.onnx")


class Stopped(Exception):
    """What a progress callback raises to stop the work (a GUI's Cancel raises its own)."""


def test_embed_reports_each_batch_and_stops_when_progress_raises(embedder):
    lines = [f"sentence number {i}" for i in range(10)]
    seen = []
    assert embedder.embed(lines, batch_size=4, progress=lambda done, total: seen.append((done, total))).shape[0] == 10
    assert seen == [(4, 10), (8, 10), (10, 10)]

    def stop(done, total):
        raise Stopped(f"stopped at {done}")

    with pytest.raises(Stopped, match="stopped at 4"):  # after the first batch, not the whole list
        embedder.embed(lines, batch_size=4, progress=stop)


def test_long_text_is_truncated_at_the_model_limit(embedder):
    long = "word " * 2000
    assert embedder.tokenizer.count(long) == 256
    assert embedder.embed(long).shape == (1, 384)


def test_max_length_over_the_models_limit_is_cut_to_it(samples, caplog):
    """max_length=1000 was taken as given and the first long text failed with InputError: MiniLM's
    512 positions (the package's declared limit) cap it, with a warning, as a static length does."""
    with caplog.at_level(logging.WARNING, logger="edgekit"), \
            TextEmbedder(samples["text"] / "model-fp32.onnx", max_length=1000) as emb:
        assert emb.tokenizer.count("word " * 2000) == 512
        assert emb.embed("word " * 2000).shape == (1, 384)
    assert "max_length 1000 is over this model's limit of 512 tokens" in caplog.text


def test_text_arguments_of_odd_kinds(embedder):
    """A 0-d string array is one text; a zero-shot template must have one {} for the label (one
    without gave every label the same score, 'About {label}' a KeyError)."""
    np.testing.assert_array_equal(embedder.embed(np.array("A man plays guitar.")),
                                  embedder.embed("A man plays guitar."))
    for template in ("About {label}", "About", "{} and {}", 42):
        with pytest.raises(edgekit.UsageError, match="expected a string with one {} where each label goes"):
            TextClassifier(embedder.model, labels=["sports", "finance"], template=template)


def test_zero_shot_puts_a_sports_sentence_under_sports(embedder):
    zs = TextClassifier(embedder.model, labels=["sports", "finance", "weather", "music", "technology"])
    assert zs.classify("The striker scored twice in the second half of the match.", top_k=1)[0].label == "sports"
    assert zs.classify("Interest rates rose and the stock market fell.", top_k=1)[0].label == "finance"
    assert zs.classify("Heavy rain is expected tomorrow.", top_k=1)[0].label == "weather"


def test_text_classifier_takes_a_list_of_texts_like_embed(embedder):
    zs = TextClassifier(embedder.model, labels=["sports", "finance", "weather"])
    texts = ["The striker scored twice.", "Interest rates rose."]
    both = zs.classify(texts, top_k=2)  # one list of categories per text
    assert [[c.label for c in cats] for cats in both] == [[c.label for c in zs.classify(t, top_k=2)] for t in texts]
    assert [cats[0].label for cats in both] == ["sports", "finance"]
    np.testing.assert_allclose(zs.scores(texts), np.stack([zs.scores(t) for t in texts]), atol=1e-5)


def test_zero_shot_labels_must_be_a_list_of_distinct_strings(embedder):
    with pytest.raises(edgekit.UsageError, match="labels must be a list of strings, not the string 'sports'"):
        TextClassifier(embedder.model, labels="sports")
    with pytest.raises(edgekit.InputError, match="label 'sports' is given twice"):
        TextClassifier(embedder.model, labels=["sports", "finance", "sports"])


def test_a_text_classification_package_checks_its_labels_and_classifies_lists(samples, tmp_path):
    """MiniLM's 384 outputs stand in for a classifier's logits: what matters is the path through them."""
    labels = [f"class {i}" for i in range(384)]
    pkg = _package_copy(samples["text"], tmp_path / "pkg", "model-int8.onnx", task="text-classification",
                        labels=labels)
    with TextClassifier(pkg) as clf:
        texts = ["A man plays guitar.", "Rain is expected tomorrow.", "Stocks fell."]
        rows = clf.scores(texts)
        assert rows.shape == (3, 384)
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)  # the package's softmax
        # dynamic int8 quantizes each batch with its own range: a text's scores move a little with its batch-mates
        np.testing.assert_allclose(rows[1], clf.scores(texts[1]), atol=2e-4)
        top = clf.classify(texts, top_k=3)
        assert [len(cats) for cats in top] == [3, 3, 3]
        assert [cats[0].label for cats in top] == [labels[i] for i in rows.argmax(axis=1)]
    manifest = json.loads((pkg / "edgekit.json").read_text())
    (pkg / "edgekit.json").write_text(json.dumps({**manifest, "labels": labels[:2]}))
    with pytest.raises(edgekit.ModelFileError, match=r"edgekit\.json: 'labels' name 2 classes, and the model outputs"):
        TextClassifier(pkg)


def test_text_results_agree_across_backends(samples, embedder):
    ov = TextEmbedder(samples["text"] / "model-fp32.xml", device="openvino")
    lines = (INPUTS / "text.txt").read_text().splitlines()
    np.testing.assert_allclose(ov.embed(lines), embedder.embed(lines), atol=1e-4)


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "text is empty"), ("   ", "text is empty"), ([], "no texts"),
    ("\x00\u200b", r"text is empty \(only control or invisible characters\)"),
    (b"\xff\xfe\xfa", "not valid UTF-8"), (["ok", 5], "text #1: expected a string"),
    (None, "text: expected a string or a list of strings, got NoneType"),
    (5, "text: expected a string or a list of strings, got int"),
    ("caf\udce9", r"text: not valid Unicode \('\\udce9' at character 3 is a lone surrogate"),  # argv's escape
    (["ok", "\ud800"], "text #1: not valid Unicode"),
])
def test_bad_text(embedder, text, fragment):
    with pytest.raises(edgekit.InputError, match=fragment):
        embedder.embed(text)


def test_a_corrupt_tokenizer_is_a_model_file_error(samples, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(edgekit.ModelFileError, match=r"tokenizer\.json: cannot be read as a tokenizer"):
        TextEmbedder(samples["text"] / "model-fp32.onnx", tokenizer=tmp_path / "tokenizer.json")


def test_zero_shot_labels_are_checked_like_texts(embedder):
    with pytest.raises(edgekit.InputError, match="label #1: not valid Unicode"):
        TextClassifier(embedder.model, labels=["sports", "caf\udce9"])
    with pytest.raises(edgekit.InputError, match="label #0 is empty"):
        TextClassifier(embedder.model, labels=["", "sports"])


def test_predict_with_undecodable_argv_exits_2(samples):
    out = run_cli("predict", str(samples["text"]), os.fsdecode(b"caf\xe9"))
    assert out.returncode == 2 and "not valid Unicode" in out.stderr and "Traceback" not in out.stderr


def test_utf8_bytes_are_text(embedder):
    np.testing.assert_allclose(embedder.embed("café".encode()), embedder.embed("café"), atol=1e-6)


def test_task_refuses_a_package_of_another_task(samples):
    with pytest.raises(edgekit.UsageError, match="voice-activity-detection.*VoiceActivityDetector"):
        ImageClassifier(samples["audio"])


# --- audio ---------------------------------------------------------------------------------------

def _reference_segments(path) -> list[tuple[float, float]]:
    """Silero's own utility on the same file and the same ONNX model."""
    import warnings

    import soundfile as sf
    import torch
    from silero_vad.utils_vad import OnnxWrapper, get_speech_timestamps

    x, sr = sf.read(str(path), dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = OnnxWrapper(str(path_of_silero_onnx()), force_onnx_cpu=True)
        spans = get_speech_timestamps(torch.from_numpy(x), model, sampling_rate=sr, return_seconds=True,
                                      time_resolution=3)
    return [(s["start"], s["end"]) for s in spans]


def path_of_silero_onnx():
    import importlib.util
    from pathlib import Path

    return Path(next(iter(importlib.util.find_spec("silero_vad").submodule_search_locations))) / "data" / \
        "silero_vad.onnx"


def test_vad_finds_the_speech_like_silero_reference(vad):
    segments = vad.detect(AUDIO / "speech.wav")
    assert segments and all(isinstance(s, Segment) for s in segments)
    reference = _reference_segments(AUDIO / "speech.wav")
    assert len(segments) == len(reference)
    for s, (start, end) in zip(segments, reference):
        assert abs(s.start_s - start) <= 0.3 and abs(s.end_s - end) <= 0.3
        assert s.score > 0.5
    assert 0.8 <= segments[0].start_s <= 1.3 and 7.5 <= segments[-1].end_s <= 8.7  # speech sits at 1 s - ~8.5 s


@pytest.mark.parametrize("name", ["silence.wav", "noise.wav", "tone-stereo-44k.flac"])
def test_vad_finds_nothing_in_non_speech(vad, name):
    assert vad.detect(AUDIO / name) == []


def test_vad_agrees_across_artifacts_and_backends(samples, vad):
    """OpenVINO cannot convert Silero's own file (its If on sr); it runs the package's IR of the 16 kHz
    graph, with Silero's answer. Silero's file needs verify=False alone: a synthetic sr is 0 Hz."""
    import soundfile as sf

    x, sr = sf.read(str(AUDIO / "speech.wav"), dtype="float32")
    with VoiceActivityDetector(samples["audio"] / "model.onnx", device="onnxruntime", verify=False) as silero, \
            VoiceActivityDetector(samples["audio"] / "model-fp32.xml", device="openvino") as ir, \
            VoiceActivityDetector(samples["audio"], device="openvino") as ov:
        assert ov.model.backend == "openvino" and ov.model.path.suffix == ".xml"
        np.testing.assert_allclose(ir.probabilities(x, sr), silero.probabilities(x, sr), atol=1e-4)
        expected = [(s.start_s, s.end_s) for s in silero.detect(x, sr)]
        assert [(s.start_s, s.end_s) for s in ir.detect(x, sr)] == expected
        for got in (ov.detect(x, sr), vad.detect(x, sr)):  # whichever artifact each chose
            assert len(got) == len(expected)
            assert all(abs(s.start_s - a) <= 0.032 and abs(s.end_s - b) <= 0.032 for s, (a, b) in zip(got, expected))


def test_vad_resamples_and_downmixes(vad):
    mono16k = vad.detect(AUDIO / "speech.wav")
    stereo44k = vad.detect(AUDIO / "speech-stereo-44k.ogg")
    assert abs(stereo44k[0].start_s - mono16k[0].start_s) < 0.1
    assert abs(stereo44k[-1].end_s - mono16k[-1].end_s) < 0.1


def test_vad_accepts_arrays_with_a_rate(vad):
    import soundfile as sf

    x, sr = sf.read(str(AUDIO / "speech.wav"), dtype="int16")
    from_int = vad.detect(x, sample_rate=sr)
    assert from_int == vad.detect(AUDIO / "speech.wav")
    assert vad.detect((x.astype(np.float32) / 32768, sr)) == from_int


def test_vad_reports_each_window_and_stops_when_progress_raises(vad):
    seen = []
    segments = vad.detect(AUDIO / "speech.wav", progress=lambda done, total: seen.append((done, total)))
    windows = seen[-1][1]
    assert segments == vad.detect(AUDIO / "speech.wav") and windows > 100
    assert seen == [(i, windows) for i in range(1, windows + 1)]

    def stop(done, total):
        if done == 10:
            raise Stopped("stopped at window 10")
        seen.append(done)

    seen.clear()
    with pytest.raises(Stopped, match="stopped at window 10"):  # what a GUI's Cancel raises comes out as it is
        vad.detect(AUDIO / "speech.wav", progress=stop)
    assert seen == list(range(1, 10))


def test_vad_stream_matches_whole_file(vad):
    import soundfile as sf

    x, _ = sf.read(str(AUDIO / "speech.wav"), dtype="float32")
    stream = vad.stream()
    events = []
    for i in range(0, len(x), 777):  # odd chunk sizes: the stream re-windows
        events += stream.feed(x[i:i + 777])
    probs = list(stream.probabilities)
    events += stream.close()
    assert not stream.probabilities  # reset by close(): reusable for a new recording
    starts = [t for kind, t in events if kind == "start"]
    ends = [t for kind, t in events if kind == "end"]
    whole = vad.detect(AUDIO / "speech.wav")
    assert len(starts) == len(ends) == len(whole)
    for s, a, b in zip(whole, starts, ends):
        assert abs(s.start_s - a) <= 0.032 and abs(s.end_s - b) <= 0.032  # within one window
    np.testing.assert_allclose(probs, vad.probabilities(x[: len(probs) * 512], 16000), atol=1e-5)
    again = vad.stream()
    assert again.feed(np.stack([x, x], axis=1)[:4096]) == stream.feed(x[:4096])  # stereo chunk down-mixed


def test_a_segment_open_at_the_end_ends_where_the_audio_ends_in_a_stream_too(vad):
    """close() ended it at the last whole window: up to 31 ms before detect() does, at the audio's end."""
    import soundfile as sf

    x, rate = sf.read(str(AUDIO / "speech.wav"), dtype="float32")
    cut = x[: int(5.0 * rate) + 100]  # speech cut short, 100 samples past a window
    last = vad.detect(cut, rate)[-1]
    stream = vad.stream()
    events = stream.feed(cut) + stream.close()
    assert events[-1] == ("end", round(len(cut) / rate, 3)) == ("end", round(last.end_s, 3))


def test_similarity_of_two_texts_is_a_number_whatever_they_are_given_as(samples):
    with TextEmbedder(samples["text"]) as emb:
        for a, b in (("a cat", "a dog"), (b"a cat", b"a dog"), (np.array("a cat"), np.array("a dog"))):
            assert isinstance(emb.similarity(a, b), float)  # bytes and 0-d arrays gave [[x]]
        assert emb.similarity(["a cat"], "a dog").shape == (1, 1)


def test_a_stream_whose_run_fails_loses_no_audio_and_no_event(vad, monkeypatch):
    """A failed run took its window off the buffer and dropped the events found before it in that feed."""
    import soundfile as sf

    x, _ = sf.read(str(AUDIO / "speech.wav"), dtype="float32")
    reference = vad.stream()
    want = [e for i in range(0, len(x), 16000) for e in reference.feed(x[i:i + 16000])] + reference.close()
    step, calls = vad._step, [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] in (40, 41, 200):  # twice in a row, then once more later
            raise edgekit.BackendError("device lost (simulated)")
        return step(*args, **kwargs)

    monkeypatch.setattr(vad, "_step", flaky)
    stream, got = vad.stream(), []
    for i in range(0, len(x), 16000):
        chunk = x[i:i + 16000]
        while True:
            try:
                got += stream.feed(chunk)
                break
            except edgekit.BackendError:
                chunk = chunk[:0]  # the app retries: what it fed is kept, nothing to add
    got += stream.close()
    assert got == want and len(want) >= 2


def test_a_stream_keeps_a_bounded_history(vad, monkeypatch):
    """A microphone stream is never closed: keeping every window's probability grew 4 MB an hour."""
    from edgekit.tasks.audio import VadStream

    monkeypatch.setattr(VadStream, "HISTORY", 10)
    stream = vad.stream()
    stream.feed(np.zeros(512 * 30, np.float32))
    assert len(stream.probabilities) == 10


@pytest.mark.parametrize("to_pcm", [lambda y: (y * 32767).astype(np.int16),
                                    lambda y: np.round((y + 1) * 127.5).astype(np.uint8)], ids=["int16", "uint8"])
def test_vad_stream_scales_pcm_chunks_as_detect_does(vad, to_pcm):
    import soundfile as sf

    y, sr = sf.read(str(AUDIO / "speech.wav"), dtype="float32")
    pcm = to_pcm(y)
    stream = vad.stream()
    events = [e for i in range(0, len(pcm), 1600) for e in stream.feed(pcm[i:i + 1600])] + stream.close()
    whole = vad.detect(pcm, sr)
    assert whole and len(events) == 2 * len(whole)
    for s, (start, end) in zip(whole, zip(events[::2], events[1::2])):
        assert start[0] == "start" and end[0] == "end"
        assert abs(s.start_s - start[1]) <= 0.032 and abs(s.end_s - end[1]) <= 0.032  # within one window
    with pytest.raises(edgekit.InputError, match="audio chunk: expected numeric samples"):
        vad.stream().feed(np.array(["a", "b"]))


@pytest.mark.parametrize(("option", "fragment"), [
    ({"threshold": "x"}, "threshold='x': expected a probability from 0 to 1"),
    ({"threshold": 1.5}, "threshold=1.5: expected a probability from 0 to 1"),
    ({"neg_threshold": -0.1}, "neg_threshold=-0.1: expected None or a probability"),
    ({"speech_pad_ms": None}, "speech_pad_ms=None: expected a number of milliseconds, at least 0"),
    ({"min_silence_duration_ms": -5}, "min_silence_duration_ms=-5: expected a number of milliseconds"),
    ({"max_speech_duration_s": 0}, r"max_speech_duration_s=0: expected None \(no limit\) or a number"),
    ({"treshold": 0.5}, r"unknown VAD options \['treshold'\]"),
])
def test_vad_options_are_checked_when_it_opens(samples, option, fragment):
    with pytest.raises(edgekit.UsageError, match=fragment):
        VoiceActivityDetector(samples["audio"], **option)


def test_vad_takes_the_load_options_every_task_takes(samples):
    """concurrency (as the server's instances pass it) was refused as an unknown VAD option."""
    with VoiceActivityDetector(samples["audio"], concurrency=2, precision="stored", cache=False) as vad:
        assert vad.detect(AUDIO / "speech.wav")


def test_malformed_vad_metadata_names_the_packages_edgekit_json(samples, tmp_path):
    manifest = json.loads((samples["audio"] / "edgekit.json").read_text())
    vad_params = {**manifest["postprocess"]["vad"], "threshold": "high"}
    pkg = _package_copy(samples["audio"], tmp_path / "pkg", "model-fp32.onnx", postprocess={"vad": vad_params})
    with pytest.raises(edgekit.ModelFileError,
                       match=re.escape(f"{pkg / 'edgekit.json'}: postprocess.vad: threshold='high': expected")):
        VoiceActivityDetector(pkg)


def _corrupt_wav_header(d):
    data = bytearray((AUDIO / "speech.wav").read_bytes())
    data[8:12] = b"XXXX"  # "WAVE" -> garbage
    (d / "corrupt.wav").write_bytes(bytes(data))
    return d / "corrupt.wav"


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda d: d / "missing.wav", "no such audio file"),
    (lambda d: _write(d / "empty.wav", b""), "empty file"),
    (_corrupt_wav_header, "cannot be read as audio"),
    (lambda d: _write(d / "notaudio.ogg", "hello"), "cannot be read as audio"),
])
def test_bad_audio_files(vad, tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(edgekit.InputError, match=fragment) as info:
        vad.detect(path)
    assert str(path) in str(info.value)


def test_pcm_arrays_are_scaled_and_laid_out_right():
    from edgekit.tasks.audio import load_audio

    np.testing.assert_allclose(load_audio(np.full(100, 128, np.uint8), 16000, target_rate=16000), 0.0)  # u8 silence
    np.testing.assert_allclose(load_audio(np.full(100, -16384, np.int16), 16000, target_rate=16000), -0.5)
    assert load_audio(np.zeros((3, 4), np.float32), 16000, target_rate=16000).shape == (3,)  # 3 frames, 4 ch
    assert load_audio(np.array([[0.5, -0.5]], np.float32), 16000, target_rate=16000).shape == (1,)
    assert load_audio(np.zeros((2, 1000), np.float32), 16000, target_rate=16000).shape == (1000,)  # ch x samples


def test_image_files_are_closed_even_on_errors(image_clf, tmp_path):
    import gc
    import warnings

    trunc = _write(tmp_path / "trunc.jpg", (IMAGES / "cat.jpg").read_bytes()[:400])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for _ in range(3):
            with pytest.raises(edgekit.InputError):
                image_clf.classify(trunc)
            image_clf.classify(IMAGES / "cat.jpg")
        gc.collect()


def test_premultiplied_alpha_image(image_clf):
    from PIL import Image

    img = Image.open(IMAGES / "cat.jpg").convert("RGBA").convert("RGBa")
    assert len(image_clf.classify(img, top_k=1)) == 1
    assert len(image_clf.classify(Image.new("La", (32, 32)), top_k=1)) == 1


def test_a_wav_cut_short_is_read_with_a_warning(vad, tmp_path, caplog):
    """libsndfile reads what a truncated WAV holds without a word: half a recording looked whole."""
    import struct

    data = (AUDIO / "speech.wav").read_bytes()
    half = tmp_path / "half.wav"
    half.write_bytes(data[:len(data) // 2])
    with caplog.at_level("WARNING", logger="edgekit.tasks.audio"):
        assert vad.detect(half) is not None  # partial audio is still audio
    assert "half.wav: cut short: its header declares 9.47 s of audio, the file holds 4.74 s" in caplog.text
    caplog.clear()
    pos = data.index(b"data")  # a WAV written as a stream declares no size: nothing to warn of
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(data[:pos + 4] + struct.pack("<I", 0xFFFFFFFF) + data[pos + 8:len(data) // 2])
    with caplog.at_level("WARNING", logger="edgekit.tasks.audio"):
        vad.detect(streamed)
        vad.detect(AUDIO / "speech.wav")
    assert "cut short" not in caplog.text


def test_bad_audio_values(vad, tmp_path):
    import soundfile as sf

    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(edgekit.InputError, match="no samples"):
        vad.detect(tmp_path / "zero.wav")
    with pytest.raises(edgekit.InputError, match="no samples"):
        vad.detect(np.zeros(0, np.float32), sample_rate=16000)
    with pytest.raises(edgekit.InputError, match="needs its sample rate"):
        vad.detect(np.zeros(16000, np.float32))
    with pytest.raises(edgekit.InputError, match="NaN"):
        vad.detect(np.full(16000, np.nan, np.float32), sample_rate=16000)
    # A 10 KB WAV declaring 1 Hz would be resampled 16000x: refused before soxr allocates anything
    sf.write(str(tmp_path / "1hz.wav"), np.zeros(5000, np.float32), 1)
    with pytest.raises(edgekit.InputError, match=r"1hz\.wav: a sample rate of 1 Hz is below 1000 Hz"):
        vad.detect(tmp_path / "1hz.wav")


def test_resampling_past_the_sample_limit_is_refused(vad, monkeypatch):
    from edgekit.tasks import audio

    monkeypatch.setattr(audio, "MAX_SAMPLES", 16000 * 10)
    vad.detect(np.zeros(8000 * 10, np.float32), sample_rate=8000)  # 10 s at 16 kHz: at the limit
    vad.detect(np.zeros(8000 * 10, np.float32), sample_rate=np.int16(8000))  # NumPy ints: no overflow
    with pytest.raises(edgekit.InputError, match="80008 samples at 8000 Hz would be 160016 at 16000 Hz, over"):
        vad.detect(np.zeros(8000 * 10 + 8, np.float32), sample_rate=8000)


def _vad_windows(x: np.ndarray, window: int = 512, context: int = 64) -> list[np.ndarray]:
    """The window-plus-context chunks a detector feeds, as Silero's utility makes them."""
    padded = np.zeros(-(-len(x) // window) * window, np.float32)
    padded[:len(x)] = x
    chunks, ctx = [], np.zeros(context, np.float32)
    for i in range(0, len(padded), window):
        chunks.append(np.concatenate([ctx, padded[i:i + window]]))
        ctx = chunks[-1][-context:]
    return chunks


@pytest.mark.parametrize(("dims", "layout"), [([2, "batch", 16], "LBH"), (["batch", 2, 16], "BLH"),
                                              ([2, None, 16], "LBH"), ([1, 2, 16], "BLH")])
def test_vad_state_takes_the_models_open_dim_as_its_batch(tmp_path, dims, layout):
    """A streaming model's state, batch first or second, named or not, is carried window to window."""
    from samples.synthetic import streaming_onnx, streaming_reference

    x = np.random.default_rng(0).uniform(-1, 1, 16000).astype(np.float32)
    with VoiceActivityDetector(streaming_onnx(tmp_path / "stream.onnx", dims, layout)) as v:
        expected = streaming_reference(_vad_windows(x), layout)
        np.testing.assert_allclose(v.probabilities(x, 16000), expected, atol=1e-5)
        stream = v.stream()
        stream.feed(x)
        np.testing.assert_allclose(stream.probabilities, expected[:len(x) // 512], atol=1e-5)


def test_vad_state_with_more_than_its_batch_open_needs_its_shape_declared(tmp_path):
    """Every open dim of the state was set to 1: [layers, batch, 16] ran at [1, 1, 16] (and an unknown rank
    at Silero's [2, 1, 128]). Which open dim is the batch, and what the others are, is not guessed: the
    package declares the state's shape at batch 1 in warmup_inputs, as the first inference takes it."""
    from samples.synthetic import streaming_onnx, streaming_reference

    for dims, shown in ((["layers", "batch", 16], r"\[layers, batch, 16\]"), (None, r"\[any rank\]")):
        model = streaming_onnx(tmp_path / "stream.onnx", dims)
        with pytest.raises(edgekit.UsageError, match=rf"stream\.onnx: its state input {shown}: which dim is "
                                                     r'the batch.*"warmup_inputs": \{"state": \{"shape": '):
            VoiceActivityDetector(model)
        manifest = {"artifacts": [{"path": "stream.onnx", "format": "onnx"}],
                    "warmup_inputs": {"state": {"shape": [2, 1, 16]}}}
        (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
        x = np.random.default_rng(0).uniform(-1, 1, 8000).astype(np.float32)
        with VoiceActivityDetector(tmp_path) as v:
            np.testing.assert_allclose(v.probabilities(x, 16000), streaming_reference(_vad_windows(x)), atol=1e-5)
        if dims is not None:  # a declared shape is checked against what the model fixes
            manifest["warmup_inputs"]["state"]["shape"] = [2, 1, 8]
            (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
            with pytest.raises(edgekit.ModelFileError, match=re.escape(
                    f"{tmp_path / 'edgekit.json'}: warmup_inputs.state.shape [2, 1, 8] does not fit the model's "
                    f"state input [layers, batch, 16]")):
                VoiceActivityDetector(tmp_path, verify=False)
        (tmp_path / "edgekit.json").unlink()


def test_vad_refuses_a_state_returned_in_another_layout(tmp_path):
    """A stateN of the same size in another order was reshaped into the state's shape, scrambling it
    unsaid; only a state whose batch of 1 sits elsewhere (onnx2tf's [1, 2, 128]) is the same values."""
    from samples.synthetic import streaming_onnx

    x = np.random.default_rng(0).uniform(-1, 1, 4000).astype(np.float32)
    with VoiceActivityDetector(streaming_onnx(tmp_path / "t.onnx", [2, "batch", 16], state_out=(2, 1, 0))) as v:
        with pytest.raises(edgekit.UsageError, match=r"t\.onnx: returns its state \(stateN\) as \(16, 1, 2\), "
                                                     r"its state input is \(2, 1, 16\)"):
            v.probabilities(x, 16000)
    from samples.synthetic import streaming_reference

    with VoiceActivityDetector(streaming_onnx(tmp_path / "u.onnx", [2, "batch", 16], state_out=(1, 0, 2))) as v:
        np.testing.assert_allclose(v.probabilities(x, 16000), streaming_reference(_vad_windows(x)), atol=1e-5)


# --- CLI -----------------------------------------------------------------------------------------

def test_predict_dispatches_on_the_package_task(samples):
    out = run_cli("predict", str(samples["image"]), str(IMAGES / "cat.jpg"), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["task"] == "image-classification" and doc["results"][0]["categories"][0]["label"] in CAT_CLASSES
    out = run_cli("predict", str(samples["text"]), "The goalkeeper saved a penalty.", "--labels",
                  "sports,finance,cooking", "--json")
    assert json.loads(out.stdout)["results"][0]["categories"][0]["label"] == "sports"
    out = run_cli("predict", str(samples["audio"]), str(AUDIO / "speech.wav"))
    assert out.returncode == 0 and "speech" in out.stdout


def test_predict_takes_a_precision_as_the_sdk_does(samples):
    """The tasks take precision= (and strict=); predict had no --precision, so the CLI could not ask for it."""
    out = run_cli("predict", str(samples["image"]), str(IMAGES / "cat.jpg"), "--precision", "any", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["precision"] and doc["results"][0]["categories"][0]["label"] in CAT_CLASSES, doc
    out = run_cli("predict", str(samples["image"]), str(IMAGES / "cat.jpg"), "--precision", "bf16",
                  "--device", "onnxruntime:CPUExecutionProvider", "--strict")
    assert out.returncode == 2 and "precision it was stored in" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("kind", "args", "fragment", "loads"), [
    ("audio", [str(AUDIO / "speech.wav"), "--top-k", "3"], "--top-k is for classifiers; ", False),
    ("text", ["one text", "--top-k", "3"], "--top-k is for classifiers; ", False),
    ("image", [str(IMAGES / "cat.jpg"), "--labels", "cat,dog"], "--labels is for text models", False),
    ("text", ["one text", "--labels", ""], "--labels '': label 1 of 1 is empty", False),
    ("text", ["one text", "--labels", "sports,,finance"], "--labels 'sports,,finance': label 2 of 3 is empty", False),
    ("text", ["one text", "--labels", "sports,sports"], "label 'sports' is given twice", True),
])
def test_predict_options_that_do_not_apply_exit_2(samples, kind, args, fragment, loads):
    out = run_cli("-v", "predict", str(samples[kind]), *args)
    assert out.returncode == 2 and f"edgekit: error: {fragment}" in out.stderr and "Traceback" not in out.stderr
    assert ("running on" in out.stderr) == loads, out.stderr  # an option that does not apply: before loading


def test_predict_bad_input_exits_2_without_traceback(samples):
    out = run_cli("predict", str(samples["image"]), "README.md")
    assert out.returncode == 2 and "cannot be read as an image" in out.stderr and "Traceback" not in out.stderr


def test_demo_prints_all_three_modalities(samples):
    out = run_cli("demo", "--json", env={"EDGEKIT_SAMPLES_DIR": str(samples["image"].parent)})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["image"][0]["top3"][0]["label"] in CAT_CLASSES
    assert doc["similarity"]["paraphrase"] > doc["similarity"]["unrelated"]
    assert doc["vad"][0]["segments"] and not doc["vad"][1]["segments"]


def test_audio_bytes_and_a_decompression_bomb(samples, monkeypatch):
    """Encoded audio in memory (an upload) reads like the file; a small file that decodes to more
    samples than the limit is refused before it is decoded whole."""
    import soundfile as sf

    from edgekit.tasks import audio

    speech = INPUTS / "audio" / "speech.wav"
    with VoiceActivityDetector(samples["audio"]) as vad:
        assert vad.detect(speech.read_bytes()) == vad.detect(speech)
        buf = io.BytesIO()
        sf.write(buf, np.zeros((16000 * 60, 2), np.float32), 16000, format="FLAC")  # a minute of silence
        assert len(buf.getvalue()) < 100_000
        monkeypatch.setattr(audio, "MAX_SAMPLES", 16000 * 30)
        with pytest.raises(edgekit.InputError, match="longer than"):
            vad.detect(buf.getvalue())
        with pytest.raises(edgekit.InputError, match="empty"):
            vad.detect(b"")


def test_an_embedding_packages_own_labels_serve_zero_shot(samples, tmp_path):
    """`convert --task text-embedding --labels ...` writes labels an embedder classifies zero-shot over."""
    pkg = _package_copy(samples["text"], tmp_path / "pkg", "model-fp32.onnx", labels=["sports", "cooking"])
    with TextClassifier(pkg) as clf:
        assert clf.zero_shot and clf.classify("The striker scored twice in the final.")[0].label == "sports"


def _rgb_classifier(pkg: Path, *, batch: int, score_map: bool) -> Path:
    """A package whose 3 "classes" red, green, blue score each channel's mean, at a fixed ``batch``:
    scores [batch, 3, 1, 1] (a Caffe-style ``score_map``) or [batch, 3]."""
    import onnx
    from onnx import TensorProto, helper

    scores = [batch, 3, 1, 1] if score_map else [batch, 3]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["scores"], axes=[2, 3], keepdims=int(score_map))], "rgb",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, scores)])
    pkg.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), pkg / "m.onnx")
    (pkg / "edgekit.json").write_text(json.dumps({
        "task": "image-classification", "labels": ["red", "green", "blue"],
        "preprocess": {"image": {"crop": 32, "scale": 1 / 255}}, "postprocess": {"activation": "none"},
        "artifacts": [{"path": "m.onnx", "format": "onnx", "precision": "fp32"}]}))
    return pkg


def test_a_score_map_of_ones_counts_its_classes_whole(tmp_path):
    """Caffe-style classifiers answer [1, C, 1, 1]: C classes, not 1, and the package's C labels hold."""
    green = np.zeros((40, 40, 3), np.uint8)
    green[..., 1] = 200
    with ImageClassifier(_rgb_classifier(tmp_path / "pkg", batch=1, score_map=True)) as clf:
        assert [c.label for c in clf.classify(green, top_k=3)] == ["green", "red", "blue"]


@pytest.mark.parametrize("device", ["onnxruntime", "openvino"])
def test_a_classifier_whose_batch_is_fixed_fills_it_with_copies(tmp_path, device):
    """A model exported for batches of 4 refused one image ("dim 0 must be 4"); an audio classifier
    would have flattened the 4 rows into one list of scores."""
    import onnx
    from onnx import TensorProto, helper

    green = np.zeros((40, 40, 3), np.uint8)
    green[..., 1] = 200
    with ImageClassifier(_rgb_classifier(tmp_path / "pkg", batch=4, score_map=False), device=device) as clf:
        assert clf.scores(green).shape == (3,)
        assert [(c.label, round(c.score, 3)) for c in clf.classify(green, top_k=3)] == [
            ("green", round(200 / 255, 3)), ("red", 0.0), ("blue", 0.0)]
    graph = helper.make_graph(  # audio: [quiet, sound] from the clip's mean square
        [helper.make_node("Mul", ["audio", "audio"], ["sq"]),
         helper.make_node("ReduceMean", ["sq"], ["energy"], axes=[1], keepdims=1),
         helper.make_node("Concat", ["minus", "energy"], ["logits"], axis=1)], "energy",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [2, 16000])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor("minus", TensorProto.FLOAT, [2, 1], [1e-6, 1e-6])])
    (tmp_path / "audio").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "audio" / "m.onnx")
    (tmp_path / "audio" / "edgekit.json").write_text(json.dumps({
        "task": "audio-classification", "labels": ["quiet", "sound"], "postprocess": {"activation": "none"},
        "preprocess": {"audio": {"sample_rate": 16000, "clip_s": 1.0}},
        "artifacts": [{"path": "m.onnx", "format": "onnx", "precision": "fp32"}]}))
    with AudioClassifier(tmp_path / "audio", device=device) as clf:
        got = clf.classify(AUDIO / "noise.wav", top_k=2)
        assert len(got) == 2 and got[0].label == "sound" and got[1].label == "quiet"


def test_an_embedder_that_answers_per_token_is_refused_by_name(samples, tmp_path):
    """A text model exported without pooling ([batch, sequence, hidden]) gives no vector per text."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["f", "axis"], ["u"]),
         helper.make_node("Concat", ["u", "u"], ["hidden"], axis=2)], "per_token",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
         for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", 2])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [2])])
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), pkg / "m.onnx")
    shutil.copy(samples["text"] / "tokenizer.json", pkg / "tokenizer.json")
    (pkg / "edgekit.json").write_text(json.dumps({
        "task": "text-embedding", "preprocess": {"text": {"tokenizer": "tokenizer.json"}},
        "artifacts": [{"path": "m.onnx", "format": "onnx", "precision": "fp32"}]}))
    with TextEmbedder(pkg) as emb, pytest.raises(edgekit.UsageError, match=r"not one vector per text"):
        emb.embed(["a short text", "another one"])


def test_options_a_task_cannot_apply_are_refused_not_dropped(samples, caplog):
    """From an SDK walkthrough: each of these was silently dropped or leaked a raw TypeError/AttributeError."""
    from edgekit.tasks.base import for_model
    from edgekit.tasks.results import ClassifierOptions

    pkg = samples["image"]
    with edgekit.load(pkg) as m:
        for make in (lambda: ImageClassifier(m, device="tpu"), lambda: ImageClassifier(m, precision="fp16"),
                     lambda: for_model(m, concurrency=2)):
            with pytest.raises(edgekit.UsageError, match="open Model"):  # it ran on the model as opened
                make()
    with pytest.raises(edgekit.UsageError, match="takes no option 'top_k'"):  # was load()'s TypeError
        ImageClassifier(pkg, top_k=3)
    with for_model(pkg, device="onnxruntime", precision="fp16") as task:  # for_model dropped precision
        assert task.model.path.name == "model-fp16.onnx"
    with pytest.raises(edgekit.UsageError, match="device must be a string"):
        edgekit.load(pkg, device=1)
    with pytest.raises(edgekit.UsageError, match="precision must be a string"):
        edgekit.load(pkg, precision=16)
    with pytest.raises(edgekit.InputError, match="allow must be a list of labels, not 5"):
        ClassifierOptions(allow=5)
    with pytest.raises(edgekit.UsageError, match="no image pre-processing key 'interpolaton'"):
        ImageClassifier(pkg, preprocess={"interpolaton": "bicubic"})  # was silently unused
    with pytest.raises(edgekit.UsageError, match=r"labels=\[\] is empty"):
        TextClassifier(samples["text"], labels=[])


def test_audio_arrays_of_unknown_scale_are_refused_and_a_whole_float_rate_taken(samples, caplog):
    import soundfile as sf

    x, rate = sf.read(AUDIO / "speech.wav", dtype="int16")
    with VoiceActivityDetector(samples["audio"]) as vad:
        want = vad.detect(x, rate)
        assert want and vad.detect(x, float(rate)) == want  # 16000.0 was "invalid sample rate"
        with pytest.raises(edgekit.InputError, match="int64 samples are no PCM format"):
            vad.detect(x.tolist(), rate)  # found no speech: divided by 2**63
        with pytest.raises(edgekit.InputError, match="int64 samples"):
            vad.stream().feed(x.astype(np.int64))
    with VoiceActivityDetector(samples["audio"], min_speech_duration_ms=1000) as vad, \
            caplog.at_level(logging.WARNING, logger="edgekit"):
        vad.stream()
    assert "the stream does not apply min_speech_duration_ms=1000 (detect() does)" in caplog.text
