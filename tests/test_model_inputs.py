"""Model.run: the forms it takes, and the InputError it raises for anything else."""

from __future__ import annotations

import re

import numpy as np
import pytest

import edgekit


@pytest.fixture(params=["add.onnx", "add.xml", "add.tflite"])
def add_model(request, models):
    return edgekit.load(models[request.param])


A = np.arange(4, dtype=np.float32).reshape(1, 4)
B = np.ones((1, 4), np.float32)


def test_dict_list_and_outputs_in_order(add_model):
    by_dict = add_model.run({"a": A, "b": B})
    by_list = add_model.run([A, B])
    assert list(by_dict) == [o.name for o in add_model.outputs]
    np.testing.assert_array_equal(next(iter(by_dict.values())), A + B)
    np.testing.assert_array_equal(next(iter(by_list.values())), A + B)


def test_single_array_for_single_input_model(models):
    m = edgekit.load(models["mlp.onnx"])
    assert m.run(np.zeros((2, 8), np.float32))["logits"].shape == (2, 3)
    assert m(np.zeros((1, 8), np.float32))["logits"].shape == (1, 3)


def test_single_array_for_two_input_model_names_the_inputs(add_model):
    with pytest.raises(edgekit.InputError, match="2 inputs \\(a, b\\)"):
        add_model.run(A)


def test_missing_and_unknown_names(add_model):
    with pytest.raises(edgekit.InputError, match="missing 'b'"):
        add_model.run({"a": A})
    with pytest.raises(edgekit.InputError, match="unknown 'c'.*expected a, b"):
        add_model.run({"a": A, "c": B})


def test_wrong_rank_and_static_dim(add_model):
    with pytest.raises(edgekit.InputError, match="input 'a': expected rank 2"):
        add_model.run({"a": A[0], "b": B})
    with pytest.raises(edgekit.InputError, match=r"input 'b': expected shape \[1, 4\], got \(1, 5\)"):
        add_model.run({"a": A, "b": np.ones((1, 5), np.float32)})


def test_named_dynamic_dims_must_agree_across_inputs(tmp_path):
    """ONNX's dim_param names one size wherever it appears. ONNX Runtime broadcasts a batch of 1
    against 2 here without a word; edgekit refuses before the run."""
    import onnx
    from onnx import TensorProto, helper

    def arg(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence"])

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "add", [arg("a"), arg("b")],
                              [arg("sum")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "named.onnx")
    m = edgekit.load(tmp_path / "named.onnx")
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(m.run({"a": x, "b": x})["sum"], 2 * x)
    with pytest.raises(edgekit.InputError, match=r"disagree on dimension 'batch'.*: a 1, b 2"):
        m.run({"a": x[:1], "b": x})
    with pytest.raises(edgekit.InputError, match=r"disagree on dimension 'sequence'.*: a 3, b 2"):
        m.run({"a": x, "b": x[:, :2]})


@pytest.mark.parametrize("device", ["onnxruntime", "openvino"])
def test_a_packages_dim_names_and_limits_hold_on_every_artifact(samples, device):
    """The text sample's source names its dims (batch, sequence) and has 512 positions. OpenVINO IR
    keeps no names, and past 512 both runtimes fail deep in the graph: the package's edgekit.json
    carries both, so every artifact refuses the same inputs with an InputError, not a BackendError."""
    with edgekit.load(samples["text"], device=device) as m:
        assert [s.shape for s in m.inputs] == [("batch", "sequence")] * 3, m.path.name
        assert [s.shape for s in m.outputs] == [("batch", 384)], m.path.name  # the IR's output said [?, 384]
        names = [s.name for s in m.inputs]
        ok = m.run({n: np.ones((2, 512), np.int64) for n in names})
        assert ok["sentence_embedding"].shape == (2, 384)
        with pytest.raises(edgekit.InputError, match=r"input 'input_ids': dimension 'sequence' is 513, "
                                                     r"over this model's limit of 512"):
            m.run({n: np.ones((1, 513), np.int64) for n in names})
        with pytest.raises(edgekit.InputError, match=r"disagree on dimension 'sequence'.*attention_mask 7"):
            m.run({n: np.ones((1, 7 if n == "attention_mask" else 5), np.int64) for n in names})
        # ids past the embedding tables: ONNX Runtime failed in a Gather, OpenVINO answered anyway
        for name, bad, top in (("input_ids", 999_999, 30521), ("token_type_ids", 5, 1)):
            feeds = {n: np.ones((1, 4), np.int64) for n in names}
            feeds[name][0, 2] = bad
            with pytest.raises(edgekit.InputError, match=rf"input '{name}': values must be from 0 to {top} "
                                                          rf"for this model, got {bad}"):
                m.run(feeds)


def test_bad_declared_dims_name_the_manifest(tmp_path, models):
    import json
    import shutil

    shutil.copy(models["add.onnx"], tmp_path / "add.onnx")
    for key, dims, problem in (("dims", {"sequence": {"max": 0}}, "dims\\['sequence'\\] must be"),
                               ("dims", [1], "'dims' must map"), ("dims", {"x": 5}, "dims\\['x'\\] must be"),
                               ("values", {"a": {"min": 3, "max": 1}}, "values\\['a'\\] must be"),
                               ("values", [0], "'values' must map")):
        manifest = {"artifacts": [{"path": "add.onnx", "format": "onnx"}], key: dims}
        (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
        with pytest.raises(edgekit.ModelFileError, match=problem):
            edgekit.load(tmp_path)


def test_cast_policy(add_model):
    # float64 -> float32 (NumPy's default float) and lossless casts are accepted ...
    out = add_model.run({"a": A.astype(np.float64), "b": B.astype(np.float16)})
    np.testing.assert_array_equal(next(iter(out.values())), A + B)
    out = add_model.run({"a": [[0, 1, 2, 3]], "b": B})  # Python ints
    np.testing.assert_array_equal(next(iter(out.values())), A + B)
    # ... anything lossy is refused, naming the input and how to fix it.
    with pytest.raises(edgekit.InputError, match="input 'a': expected float32, got int64.*astype"):
        add_model.run({"a": A.astype(np.int64), "b": B})
    with pytest.raises(edgekit.InputError, match="input 'b': expected float32, got complex"):
        add_model.run({"a": A, "b": B.astype(np.complex64)})
    # float64 past float32's range became inf, with only NumPy's RuntimeWarning
    with pytest.raises(edgekit.InputError, match="input 'a': float64 value 1e\\+39 is past float32's range"):
        add_model.run({"a": [[1e39, 0, 0, 0]], "b": B})
    inf = add_model.run({"a": np.array([[np.inf, -np.inf, 0, 1]]), "b": B})  # inf itself casts without loss
    assert np.isinf(next(iter(inf.values()))[0, :2]).all()


def test_a_one_input_models_array_may_be_nested_lists(models):
    """m.run(x.tolist()) was read as a list of inputs: "expected 1 inputs (x), got a sequence of 2"."""
    m = edgekit.load(models["mlp.onnx"])
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    want = m.run(x)["logits"]
    np.testing.assert_allclose(m.run(x.tolist())["logits"], want, rtol=1e-6)
    np.testing.assert_allclose(m.run(x[:1].tolist())["logits"], want[:1], rtol=1e-6)  # one row
    np.testing.assert_allclose(m.run([x])["logits"], want)  # a list of the one input, as before
    np.testing.assert_allclose(m.run([[1.0] * 8])["logits"], m.run(np.ones((1, 8), np.float32))["logits"])
    with pytest.raises(edgekit.InputError, match="expected rank 2"):
        m.run([1.0] * 8)  # a row without its batch dim


def test_dynamic_dims_accept_any_size(models):
    for name in ("mlp.onnx", "mlp.xml", "mlp.tflite"):
        m = edgekit.load(models[name])
        for n in (1, 7, 2):
            assert m.run(np.ones((n, 8), np.float32))["logits"].shape == (n, 3)
        with pytest.raises(edgekit.InputError, match="dim 1 must be 8"):
            m.run(np.ones((2, 9), np.float32))


def test_non_contiguous_input_is_accepted(models):
    m = edgekit.load(models["mlp.xml"])
    x = np.asfortranarray(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    np.testing.assert_allclose(m.run(x)["logits"], m.run(np.ascontiguousarray(x))["logits"])


def test_input_error_is_a_value_error_and_an_edgekit_error(add_model):
    with pytest.raises(ValueError):
        add_model.run({"a": A})
    with pytest.raises(edgekit.EdgekitError):
        add_model.run({"a": A})


def test_openvino_does_not_write_into_the_callers_arrays(models):
    """Large inputs are shared zero-copy; a later small call must not write into them."""
    m = edgekit.load(models["mlp.xml"])
    big = np.ones((40000, 8), np.float32)  # > 1 MiB: shared
    keep = big.copy()
    m.run(big)
    m.run(np.zeros((40000, 8), np.float32))
    m.run(np.full((1, 8), 5, np.float32))
    np.testing.assert_array_equal(big, keep)


def test_every_artifact_of_a_package_takes_its_inputs_in_the_sources_order(tmp_path, samples):
    """onnx2tf's TFLite files list inputs by tensor index (MiniLM's fp32 file puts attention_mask
    first), so a list meant a different thing on each artifact: the package's recorded source order
    is what every artifact takes, and a list in that order gives the dict's answer."""
    import json
    import shutil

    manifest = json.loads((samples["text"] / "edgekit.json").read_text())
    source_order = [s["name"] for s in manifest["inputs"]]
    reference = None  # the ONNX export's answer (last in the loop below, first here)
    for artifact in ("model-fp32.onnx", "model-fp32.tflite", "model-fp32.xml"):
        pkg = tmp_path / artifact.replace(".", "-")
        pkg.mkdir()
        for entry in manifest["artifacts"]:
            if entry["path"] == artifact:
                for f in [artifact, *([artifact[:-3] + "bin"] if artifact.endswith(".xml") else [])]:
                    shutil.copy(samples["text"] / f, pkg / f)
                (pkg / "edgekit.json").write_text(json.dumps({**manifest, "artifacts": [entry]}))
        with edgekit.load(pkg) as m:
            assert [s.name for s in m.inputs] == source_order, artifact
            ids = np.array([[101, 7592, 2088, 102, 0]], np.int64)
            feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64),
                     "token_type_ids": np.zeros_like(ids)}
            if m.inputs[0].shape[1] != 5 and isinstance(m.inputs[0].shape[1], int):  # TFLite: fixed length
                n = m.inputs[0].shape[1]
                feeds = {k: np.pad(v, ((0, 0), (0, n - 5))) for k, v in feeds.items()}
            by_dict = m.run(feeds)["sentence_embedding"]
            by_list = m.run([feeds[n] for n in source_order])["sentence_embedding"]
            np.testing.assert_array_equal(by_list, by_dict)
            reference = by_list if reference is None else reference
            assert float(by_list[0] @ reference[0]) > 0.999, artifact  # the inputs reached the right places


@pytest.mark.parametrize("sample, artifact", [("text", "model-fp32.tflite"), ("audio", "model-int8.tflite")])
def test_openvino_names_a_tflite_files_tensors_as_litert_does(samples, sample, artifact):
    """OpenVINO reads a .tflite file by tensor name (serving_default_attention_mask:0 first,
    PartitionedCall:1): it names them by the file's signature as LiteRT does, so the package's
    input order and output shapes hold and a list means the same on both."""
    path = samples[sample] / artifact
    with edgekit.load(path, device="litert") as lit, edgekit.load(path, device="openvino") as ov:
        assert ov.backend == "openvino" and ov.path == path
        assert [(s.name, s.shape) for s in ov.inputs] == [(s.name, s.shape) for s in lit.inputs]
        assert [(s.name, s.shape) for s in ov.outputs] == [(s.name, s.shape) for s in lit.outputs]
        if sample == "text":
            ids = np.zeros((1, lit.inputs[0].shape[1]), np.int64)
            ids[0, :5] = [101, 7592, 2088, 999, 102]
            feeds = [ids, (ids > 0).astype(np.int64), np.zeros_like(ids)]
        else:
            rng = np.random.default_rng(0)
            feeds = [rng.standard_normal(s.shape).astype(np.float32) * 0.1 for s in lit.inputs]
        want, got = lit.run(feeds), ov.run(feeds)
    assert list(got) == list(want)
    for name in want:
        a, b = want[name].ravel(), got[name].ravel()
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99, name


def test_openvino_without_litert_still_names_a_tflite_files_inputs(samples, monkeypatch, caplog):
    """Where ai-edge-litert cannot be installed, OpenVINO is the only reader of .tflite files: the
    inputs take onnx2tf's names without its serving_default_ prefix, and the outputs' names are warned of."""
    from edgekit.backends import ov

    monkeypatch.setattr(ov, "signature_names", lambda path: None)
    with caplog.at_level("WARNING", logger="edgekit"), \
            edgekit.load(samples["text"] / "model-fp32.tflite", device="openvino") as m:
        assert [s.name for s in m.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert "outputs keep their TFLite tensor names on OpenVINO" in caplog.text


def test_openvino_names_outputs_as_the_model_file_does(samples):
    """Compiling Silero's int8 IR adds the name 'mean' to its first output; the file calls it 'output'."""
    with edgekit.load(samples["audio"] / "model-int8.xml") as m:
        assert [s.name for s in m.outputs] == ["output", "stateN"]


@pytest.mark.parametrize("device", ["onnxruntime", "openvino", "litert"])
def test_every_artifact_gives_outputs_in_the_sources_shapes(samples, device):
    """onnx2tf returns Silero's state [2, 1, 128] as [1, 2, 128]: the package records the source's
    output shapes, and every artifact answers in them, as its outputs say, with the same values."""
    import json

    manifest = json.loads((samples["audio"] / "edgekit.json").read_text())
    declared = {o["name"]: tuple(o["shape"]) for o in manifest["outputs"]}
    assert declared["stateN"] == (2, 1, 128)
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((1, 576), np.float32) * 0.1,
             "state": rng.standard_normal((2, 1, 128), np.float32) * 0.1}
    with edgekit.load(samples["audio"] / "model-fp32.onnx") as ref:
        want = ref.run(feeds)
    with edgekit.load(samples["audio"], device=device) as m:
        assert {s.name: s.shape for s in m.outputs} == declared, m.path.name
        out = m.run(feeds)
    assert {k: v.shape for k, v in out.items()} == declared, m.path.name
    a, b = want["stateN"].ravel(), out["stateN"].ravel()  # the state's values in the same places
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99, m.path.name


def test_declared_dim_names_follow_an_artifacts_layout():
    """The source's names are given in its layout: on an NHWC artifact of an NCHW source they were
    dropped (and with them the dims' limits); they now land on the same axes, moved."""
    from edgekit.model import _declared
    from edgekit.package import Declared
    from edgekit.types import TensorSpec

    f32 = np.dtype("float32")
    declared = Declared(dim_names={"image": (("batch", None, "height", "width"), "NCHW")})
    nhwc = TensorSpec("image", (None, None, None, 3), f32, "NHWC")
    assert _declared([nhwc], declared.dim_names)[0].shape == ("batch", "height", "width", 3)
    nchw = TensorSpec("image", (None, 3, None, None), f32, "NCHW")
    assert _declared([nchw], declared.dim_names)[0].shape == ("batch", 3, "height", "width")
    # an output's names go on an artifact's output only where it is laid out as the source's
    from edgekit.model import _same_layout

    source = (None, 21, None, None)  # a segmenter's [batch, 21, height, width]
    assert _same_layout([TensorSpec("masks", (None, 21, 64, 64), f32)], "masks", source)
    assert not _same_layout([TensorSpec("masks", (None, 64, 64, 21), f32)], "masks", source)  # NHWC
    assert not _same_layout([TensorSpec("masks", (None, 21), f32)], "masks", source)


def test_a_lone_file_keeps_what_its_source_declared(samples):
    """A TFLite or IR file copied out of its package carries the source's inputs and outputs in its
    card: input order, dim names, value ranges and output shapes hold as they do in the package."""
    with edgekit.load(samples["audio"] / "model-fp32.tflite") as m:
        assert next(s for s in m.outputs if s.name == "stateN").shape == (2, 1, 128)
        out = m.run({"input": np.zeros((1, 576), np.float32), "state": np.zeros((2, 1, 128), np.float32)})
        assert out["stateN"].shape == (2, 1, 128)
    with edgekit.load(samples["text"] / "model-fp32.tflite") as m:  # onnx2tf lists attention_mask first
        assert [s.name for s in m.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    with edgekit.load(samples["text"] / "model-int8.xml") as m:  # IR keeps no dim names; OpenVINO reads past its table
        assert m.inputs[0].shape == ("batch", "sequence")
        feeds = {s.name: np.zeros((1, 4), np.int64) for s in m.inputs}
        with pytest.raises(edgekit.InputError, match="'input_ids': values must be from 0 to 30521"):
            m.run({**feeds, "input_ids": np.full((1, 4), 999_999, np.int64)})
        with pytest.raises(edgekit.InputError, match="inputs disagree on dimension 'sequence'"):
            m.run({**feeds, "attention_mask": np.zeros((1, 5), np.int64)})
    with edgekit.load(samples["text"] / "model-fp32.onnx") as m:  # ONNX Runtime failed inside the graph
        with pytest.raises(edgekit.InputError, match="'sequence' is 600, over this model's limit of 512"):
            m.run({s.name: np.zeros((1, 600), np.int64) for s in m.inputs})


def test_onnx_metadata_is_read_without_parsing_the_graph(samples, tmp_path):
    """The card of a lone ONNX file is read off the protobuf wire (MiniLM: 0.1 against 105 ms)."""
    import onnx

    from edgekit.formats import onnx_metadata_props

    path = samples["text"] / "model-int8.onnx"
    want = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert onnx_metadata_props(path) == want and "edgekit" in want
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:1000])  # inside the graph
    with pytest.raises(ValueError, match="truncated"):
        onnx_metadata_props(cut)
    endless = tmp_path / "endless.onnx"
    endless.write_bytes(b"\x08" + b"\xff" * 200_000)  # a varint that never ends: refused at its 10th byte
    with pytest.raises(ValueError, match="overlong"):
        onnx_metadata_props(endless)
    other = tmp_path / "other.onnx"  # another tool's entry that is not UTF-8 does not cost the card
    entry = b"\x0a\x05other\x12\x02\xff\xfe"  # key = 1, value = 2 (protobuf's own writer refuses it)
    other.write_bytes(path.read_bytes() + b"\x72" + bytes([len(entry)]) + entry)  # metadata_props = 14
    assert onnx_metadata_props(other)["edgekit"] == want["edgekit"]


def test_a_card_that_names_other_inputs_is_not_applied(tmp_path, models, caplog):
    """A file edited after conversion (its inputs renamed) runs on what it declares itself."""
    import json
    import shutil

    from converters import card

    edited = tmp_path / "add.onnx"
    shutil.copy(models["add.onnx"], edited)
    facts = {"inputs": [{"name": "x", "shape": [1, 4]}, {"name": "y", "shape": [1, 4]}],
             "values": {"a": {"min": 0, "max": 1}}}
    card.embed(edited, edgekit.Format.ONNX, json.dumps(facts))
    with caplog.at_level("WARNING", logger="edgekit"), edgekit.load(edited) as m:
        np.testing.assert_array_equal(next(iter(m.run({"a": A, "b": B}).values())), A + B)  # A holds 0-3
    assert "its embedded card describes inputs x, y, the file has a, b" in caplog.text


def test_a_lone_file_with_a_bad_card_runs_on_its_own_specs(tmp_path, models, caplog):
    """The card is a convenience: a malformed one is ignored with a warning, the model still runs."""
    import shutil

    from converters import card

    bad = tmp_path / "add.tflite"
    shutil.copy(models["add.tflite"], bad)
    card.embed(bad, edgekit.Format.TFLITE, '{"inputs": {"a": 1}, "task": "none"}')
    with caplog.at_level("WARNING", logger="edgekit"), edgekit.load(bad) as m:
        np.testing.assert_array_equal(m.run({"a": A, "b": B})[m.outputs[0].name], A + B)
    assert "add.tflite: its embedded card is ignored" in caplog.text and "'inputs' must be a list" in caplog.text


def test_empty_input_that_fails_in_the_graph_is_an_input_error(samples):
    """MiniLM on a sequence of 0 fails inside ONNX Runtime's graph: the input is named, not a BackendError."""
    with edgekit.load(samples["text"], device="onnxruntime") as m:
        empty = np.zeros((1, 0), np.int64)
        with pytest.raises(edgekit.InputError, match="empty input"):
            m.run({s.name: empty for s in m.inputs})


def test_malformed_manifest_fields_name_the_manifest(tmp_path, models):
    import json
    import shutil

    shutil.copy(models["add.onnx"], tmp_path / "add.onnx")
    for extra, problem in (({"preprocess": [1]}, "'preprocess' must be an object, not \\[1\\]"),
                           ({"labels": "cat"}, "'labels' must be a list of strings"),
                           ({"labels": ["cat", 3]}, "it holds 3"), ({"task": 5}, "'task' must be a string"),
                           ({"inputs": {"a": 1}}, "'inputs' must be a list")):
        manifest = {"artifacts": [{"path": "add.onnx", "format": "onnx"}], **extra}
        (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
        with pytest.raises(edgekit.ModelFileError, match=problem):
            edgekit.load(tmp_path)
    manifest = {"artifacts": [{"path": "add.onnx", "format": "onnx"}], "preprocess": None, "labels": None}
    (tmp_path / "edgekit.json").write_text(json.dumps(manifest))  # null is as good as absent
    edgekit.load(tmp_path).close()


def test_malformed_output_shapes_are_ignored_with_a_warning(tmp_path, models, caplog):
    """``outputs`` only restores shapes: a package that holds something else there still loads."""
    import json
    import shutil

    shutil.copy(models["add.onnx"], tmp_path / "add.onnx")
    for outputs, problem in (({"y": 1}, "'outputs' must be a list"),
                             ([{"name": "y"}], "'outputs' entry .* needs a 'name' and a 'shape'")):
        manifest = {"artifacts": [{"path": "add.onnx", "format": "onnx"}], "outputs": outputs}
        (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
        caplog.clear()
        with caplog.at_level("WARNING", logger="edgekit"), edgekit.load(tmp_path) as m:
            np.testing.assert_array_equal(next(iter(m.run({"a": A, "b": B}).values())), A + B)
        assert re.search(problem, caplog.text), caplog.text


def test_a_reshape_never_stands_for_a_transpose():
    """[1, 8, 1, 8] against [1, 1, 8, 8] may be onnx2tf's channels-last layout: a reshape would
    scramble the values, so only shapes whose other sizes all differ are given back."""
    from edgekit.model import _unit_dims_moved

    assert _unit_dims_moved((1, 2, 128), (2, 1, 128))
    assert not _unit_dims_moved((1, 1, 8, 8), (1, 8, 1, 8))
    assert not _unit_dims_moved((1, 128, 2), (2, 1, 128))  # the sizes in another order: a transpose
    assert not _unit_dims_moved((1, 2, 128), (2, None, 128)) and not _unit_dims_moved((1, 2), (1, 2))
