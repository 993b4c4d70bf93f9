"""TFLite artifacts through onnx2tf, run offline in a child process: fp32, fp16, int8, int8-dynamic.

What onnx2tf needs, and gets here:
- a *copy* of the model (it rewrites its input file in place), with static shapes (batch 1;
  it mis-infers layouts on dynamic graphs from torch.export) and simplified again;
- ``-rtpo Erf GeLU`` so transformers need no Flex ops LiteRT lacks;
- ``-osd`` so the TFLite file has a signature with the ONNX input names;
- ``-kat`` for a recurrent state (an input whose batch is not its first axis, ``[2, 1, 128]``),
  which onnx2tf would otherwise read as NCW and transpose;
- calibration arrays in TF layout (NHWC) through ``-cind`` for full int8, and the sample-image
  .npy it would otherwise download from GitHub for image-like inputs, written from our own
  data into its working folder. Nothing is fetched from the network.
Its quantized outputs are named ``Identity`` / ``output_0``; the signatures are renamed to the
ONNX output names, matched by value against the source. The card goes in as TFLite metadata.
One onnx2tf run writes every precision at once (TensorFlow's import alone takes seconds).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgekit.types import TensorSpec

from .calibration import state_inputs

log = logging.getLogger("edgekit.convert")

RECIPES = {
    "fp32": "onnx2tf, NHWC, batch 1",
    "fp16": "onnx2tf float16 weights (float32 compute on CPU)",
    "int8": "onnx2tf full integer quantization, per-channel, calibrated; float32 inputs/outputs",
    "int8-dynamic": "onnx2tf dynamic-range quantization (int8 weights)",
}
# Token-id models: int8 is dynamic-range. onnx2tf's full-integer calibration casts inputs to float
# (int64 token ids fail), and a full-int8 MiniLM built with TFLiteConverter directly was unusable
# (cosine 0.27: the -3.4e38 attention-mask constant takes the whole int8 range) and slower than fp32.
TOKEN_INT8 = ("onnx2tf dynamic-range quantization (int8 weights): the int8 that keeps a token-id model "
              "faithful (full-integer calibration takes float inputs only)")
# Stateful models: onnx2tf's calibration cuts every input's data along its first axis, one sample per slice,
# which cannot feed a state whose batch is its second axis.
STATE_INT8 = ("onnx2tf dynamic-range quantization (int8 weights): onnx2tf's full-integer calibration slices "
              "every input along its first axis, and a recurrent state's batch is not its first axis")
_SUFFIX = {"fp32": "float32", "fp16": "float16", "int8": "integer_quant", "int8-dynamic": "dynamic_range_quant"}
# onnx2tf looks for this file in its working folder before downloading it (utils/common_functions.py).
_ONNX2TF_TEST_IMAGES = "calibration_image_sample_data_20x128x128x3_float32.npy"
TIMEOUT_S = 1800
# `python -m onnx2tf`, in a child that Linux kills when its parent ends, even killed outright (SIGKILL,
# or SIGTERM without a handler), so onnx2tf never runs on, orphaned, in an abandoned staging folder.
# Set in the child itself rather than in a preexec_fn, which is unsafe in a process with threads.
# (PR_SET_PDEATHSIG is 1 in <linux/prctl.h>; it survives the exec. A parent that died first is
# seen as a changed parent id.)
#
# It also makes onnx2tf convert fp32 and fp16 from the SavedModel that ``-osd`` has just written,
# rather than through ``TFLiteConverter.from_keras_model``. That call saves the Keras model again,
# with JSON metadata that copies every constant layer argument as nested Python lists: 2 x 60 s
# for MiniLM. The SavedModel holds the same graph (the int8 files come from it already); the
# artifacts gave outputs equal to the last bit on the samples, and onnx2tf took 28 s instead of
# 148 s on MiniLM and 27 s instead of 58 s on EfficientNet-Lite0 (2-core Xeon). Its outputs are
# then named ``output_<i>``, as in the int8 files, which :func:`finish` renames by value. Where
# the SavedModel was not written or does not load, onnx2tf's own path is taken.
#
# And with ``-oiqt`` onnx2tf calibrates four int8 variants; edgekit uses one (float inputs and
# outputs, int8 activations). The other three (int8 inputs/outputs, int16 activations with float or
# int16 inputs) fail with the RuntimeError onnx2tf catches for a variant that cannot be made, before
# calibrating: EfficientNet-Lite0's onnx2tf run took 10 s instead of 27 s, its files the same byte
# for byte.
_OUT = "tf"
_LAUNCH = f"""import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(137)
import onnx2tf  # first: it sets TensorFlow's environment (legacy Keras) before importing it
import tensorflow as tf
from_keras_model = tf.lite.TFLiteConverter.from_keras_model
def from_saved_model_if_written(model):
    if os.path.isfile(os.path.join({_OUT!r}, "saved_model.pb")):
        try:
            return tf.lite.TFLiteConverter.from_saved_model({_OUT!r})
        except Exception:
            pass
    return from_keras_model(model)
tf.lite.TFLiteConverter.from_keras_model = from_saved_model_if_written
from_saved_model = tf.lite.TFLiteConverter.from_saved_model
def from_saved_model_without_unused_int8(*args, **kwargs):
    converter = from_saved_model(*args, **kwargs)
    convert = converter.convert
    def wanted():
        int16 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        if converter.representative_dataset is not None and (
                converter.inference_input_type != tf.float32 or int16 in converter.target_spec.supported_ops):
            raise RuntimeError("a variant edgekit does not use")
        return convert()
    converter.convert = wanted
    return converter
tf.lite.TFLiteConverter.from_saved_model = from_saved_model_without_unused_int8
runpy.run_module("onnx2tf", run_name="__main__", alter_sys=True)
"""


class Onnx2TfError(RuntimeError):
    pass


def static_copy(hub: Path, dst: Path, inputs: list[TensorSpec], sample: dict,
                length: int | None = None) -> dict[str, tuple]:
    """``hub`` with every dynamic input dim fixed (batch 1, others ``length`` or from ``sample``), re-simplified."""
    import onnx

    model = onnx.load(str(hub))
    shapes = {}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if not len(dims):
            continue
        given = sample.get(inp.name)
        for i, d in enumerate(dims):
            if not d.dim_value:
                value = 1 if i == 0 else length or (int(given.shape[i]) if given is not None else 1)
                d.ClearField("dim_param")
                d.dim_value = value
        shapes[inp.name] = tuple(d.dim_value for d in dims)
    for out in model.graph.output:  # let shape inference recompute them
        for d in out.type.tensor_type.shape.dim:
            if d.dim_param:
                d.ClearField("dim_param")
    del model.graph.value_info[:]
    _tf_safe_output_names(model)
    try:
        import onnxslim

        model = onnxslim.slim(model) or model
    except Exception as e:  # the static graph still converts more often than not
        log.info("onnxslim on the static copy failed: %s", e)
    _reduce_l2_as_sum_square(model)
    onnx.save(model, str(dst))
    return shapes


# TensorFlow's pattern for a (non-root) scope name: onnx2tf makes one of each output's name, so an
# output named "feat map" or "特徴" failed the whole conversion.
_TF_SCOPE_NAME = re.compile(r"[A-Za-z0-9_.\\/>-]*")


def _tf_safe_output_names(model) -> None:
    """Outputs whose names TensorFlow refuses are renamed ``output_<i>``; :func:`finish` gives the
    TFLite file the ONNX names back (it matches outputs by value)."""
    inputs = {i.name for i in model.graph.input}
    names = {o for n in model.graph.node for o in n.output} | inputs
    for i, out in enumerate(model.graph.output):
        if _TF_SCOPE_NAME.fullmatch(out.name) or out.name in inputs:
            continue
        new = f"output_{i}"
        while new in names:
            new += "_"
        names.add(new)
        _rename_value(model.graph, out.name, new)
        out.name = new


def _rename_value(graph, old: str, new: str) -> None:
    """Every use of value ``old`` in ``graph`` and in the subgraphs (If, Loop, Scan bodies) that read it
    from the outer scope, and its value_info."""
    from onnx import AttributeProto

    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if x == old else x for x in node.input]
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                if old not in {i.name for i in body.input} | {o for n in body.node for o in n.output}:
                    _rename_value(body, old, new)  # not shadowed there: the outer value
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def _reduce_l2_as_sum_square(model) -> None:
    """ReduceL2 -> Sqrt(ReduceSumSquare): onnx2tf 1.29 hands tf.norm an np.int64 axis when the axes are an
    input (opset 18+) and fails ("'axis' must be None, an integer, or a tuple of 2 unique integers")."""
    from onnx import helper

    nodes = []
    for n in model.graph.node:
        if n.op_type != "ReduceL2":
            nodes.append(n)
            continue
        squares = n.output[0] + "_sum_square"
        nodes.append(helper.make_node("ReduceSumSquare", list(n.input), [squares], name=squares,
                                      **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
        nodes.append(helper.make_node("Sqrt", [squares], list(n.output), name=n.output[0] + "_sqrt"))
    if len(nodes) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(nodes)


def _tf_layout(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if x.ndim == 4 else x


def _fit(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Pad (zeros) or cut a sample to a static shape (sequence models calibrated on varied lengths)."""
    if x.shape == shape:
        return x
    out = np.zeros(shape, x.dtype)
    region = tuple(slice(0, min(a, b)) for a, b in zip(x.shape, shape))
    out[region] = x[region]
    return out


def recipe(precision: str, inputs: list[TensorSpec]) -> str:
    return (dynamic_int8(inputs) or RECIPES[precision]) if precision == "int8" else RECIPES[precision]


def token_ids(inputs: list[TensorSpec]) -> bool:
    """Integer inputs (token ids, masks): onnx2tf cannot calibrate full int8 for them."""
    return any(s.dtype.kind != "f" for s in inputs)


def dynamic_int8(inputs: list[TensorSpec]) -> str | None:
    """Why int8 is dynamic-range (weights only) for this model, in words; None where it is full integer."""
    if token_ids(inputs):
        return TOKEN_INT8
    if state_inputs(inputs):
        return STATE_INT8
    return None


def run_onnx2tf(hub: Path, work: Path, inputs: list[TensorSpec], precisions: list[str],
                calibration: list[dict] | None, samples: list[dict], length: int | None = None) -> dict[str, Path]:
    """Convert in ``work``; returns precision -> .tflite path for each file onnx2tf wrote."""
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.onnx"
    shapes = static_copy(hub, model, inputs, samples[0], length)
    # Erf/GeLU would become Flex (TensorFlow) ops, which LiteRT's builtin interpreter cannot run:
    # onnx2tf's builtin-op replacements instead (the parity check measures what that costs).
    cmd = [sys.executable, "-c", _LAUNCH, str(os.getpid()),
           "-i", model.name, "-o", _OUT, "-osd", "-v", "error", "-rtpo", "Erf", "GeLU"]
    kept = state_inputs(inputs)
    if kept:
        cmd += ["-kat", *kept]
    full_int8 = "int8" in precisions and not dynamic_int8(inputs)
    suffix = dict(_SUFFIX, int8=_SUFFIX["int8" if full_int8 else "int8-dynamic"])
    if not full_int8 and ("int8-dynamic" in precisions or "int8" in precisions):
        cmd.append("-odrqt")  # dynamic range only: -oiqt cannot calibrate these inputs (see dynamic_int8)
    if full_int8:
        cmd.append("-oiqt")  # writes the dynamic-range file too
        if not calibration:
            raise ValueError("full int8 needs calibration data")
        for name, shape in shapes.items():
            arr = np.concatenate([_tf_layout(_fit(c[name], shape)) for c in calibration])
            np.save(work / f"calib_{len(cmd)}.npy", arr)
            zeros = "[" * arr.ndim + "0.0" + "]" * arr.ndim
            ones = "[" * arr.ndim + "1.0" + "]" * arr.ndim
            cmd += ["-cind", name, f"calib_{len(cmd)}.npy", zeros, ones]
    real = [d for d in samples if all(n in d for n in shapes)]
    if not full_int8 and real and token_ids(inputs):
        # onnx2tf picks each op's layout by comparing with ONNX Runtime on dummy inputs, all ones unless
        # -cind gives data: an all-ones attention mask cannot tell [1, L, 1] from [1, 1, L], and the
        # mask-weighted pooling goes silently wrong when L == hidden size. Give it a real, padded sample.
        feed = max(real, key=lambda d: sum(int(np.count_nonzero(_fit(d[n], s) == 0)) for n, s in shapes.items()))
        for i, (name, shape) in enumerate(shapes.items()):
            np.save(work / f"sample_{i}.npy", _fit(feed[name], shape))
            cmd += ["-cind", name, f"sample_{i}.npy"]
    image_like = [n for n, s in shapes.items() if len(s) == 4]
    if image_like:  # what onnx2tf would download to validate image-like inputs
        data = calibration or samples
        test = np.concatenate([_tf_layout(_fit(d[image_like[0]], shapes[image_like[0]])) for d in data[:20]])
        np.save(work / _ONNX2TF_TEST_IMAGES, test.astype(np.float32))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", "TF_ENABLE_ONEDNN_OPTS": "1",
           "PYTHONUNBUFFERED": "1"}
    log_path = work / "onnx2tf.log"
    with log_path.open("w") as logf:
        try:
            # run() kills and waits for the child on any exception (Ctrl-C, SIGTERM made an exception)
            proc = subprocess.run(cmd, cwd=work, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise Onnx2TfError(f"onnx2tf ran past {TIMEOUT_S} s") from None
    found = {p: work / _OUT / f"model_{s}.tflite" for p, s in suffix.items() if p in precisions}
    found = {p: f for p, f in found.items() if f.is_file()}
    if proc.returncode != 0 or not found:
        raise Onnx2TfError(f"onnx2tf failed: {tool_reason(log_path.read_text(errors='replace'))}")
    return found


def tool_reason(log_text: str) -> str:
    """The line of onnx2tf's log that says why it failed."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("ValueError", "TypeError", "RuntimeError", "NotImplementedError", "KeyError",
                                "IndexError", "AssertionError", "Exception", "ModuleNotFoundError", "ImportError",
                                "requests.exceptions", "tensorflow.", "onnx.")):
            # Keras puts the cause on the line after ("... calling layer 'model_1'", then "'model_1/feat
            # map/' is not a valid scope name")
            more = [ln for ln in lines[i + 1:i + 3] if not ln.startswith(("File ", "Call arguments", "•"))]
            return " ".join([lines[i], *more[:1]])[:400]
    errors = [ln for ln in lines if "ERROR" in ln]
    return (errors[0] if errors else (lines[-1] if lines else "no output"))[:400]


def finish(src: Path, dst: Path, names_in: list[str], names_out: list[str], reference_out: list[np.ndarray],
           feed: dict, card: str, layouts: dict | None = None) -> None:
    """Rename the signature's tensors to the ONNX names (outputs matched by value), embed the card.
    ``feed`` is in the source's layouts (``layouts``, by input name).

    onnx2tf's dynamic-range file has no signature: there the graph's own input and output tensors are
    renamed (else its outputs are ``Identity``, ``Identity_1``).
    """
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils as fu

    import edgekit

    from .card import _set_metadata
    from .check import adapt, align, relative_error

    with edgekit.load(src, device="litert") as m:
        in_specs = list(m.inputs)
        if {s.name for s in in_specs} == set(names_in):  # -osd signature: ONNX names, sorted by name
            in_specs = sorted(in_specs, key=lambda s: names_in.index(s.name))
        ordered = [(n, feed[n]) for n in names_in] if all(n in feed for n in names_in) else list(feed.items())
        out = m.run({spec.name: adapt(x, spec, (layouts or {}).get(n)) for spec, (n, x) in zip(in_specs, ordered)})
    # Each source output takes the artifact's output nearest to it, closest pairs first. By relative
    # error, not cosine: outputs a and 2a have cosine 1, and were matched the wrong way round.
    pairs = []
    for name, ref in zip(names_out, reference_out):
        for art_name, y in out.items():
            try:
                a, b = np.ravel(align(y, ref)).astype(np.float64), np.ravel(ref).astype(np.float64)
            except ValueError:
                continue
            err = relative_error(b, a)
            pairs.append((err if err == err else np.inf, art_name != name, name, art_name))
    rename: dict[str, str] = {}
    for _, _, name, art_name in sorted(pairs):
        if name not in rename.values() and art_name not in rename:
            rename[art_name] = name
    in_rename = {spec.name: n for spec, n in zip(in_specs, names_in) if spec.name != n}
    model = fu.read_model(str(src))
    for sig in model.signatureDefs or []:
        for tm in sig.inputs or []:
            tm.name = in_rename.get(_text(tm.name), _text(tm.name))
        for tm in sig.outputs or []:
            tm.name = rename.get(_text(tm.name), _text(tm.name))
    if not model.signatureDefs:
        graph = model.subgraphs[0]
        for i in (*graph.inputs, *graph.outputs):
            name = _text(graph.tensors[i].name)
            graph.tensors[i].name = in_rename.get(name) or rename.get(name) or name
    _set_metadata(s, model, card)
    fu.write_model(model, str(dst))


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else x
