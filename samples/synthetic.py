"""Small real models built from code, in every format, from the same weights.

Used by `make demo` (until the sample models built from packaged weights arrive), the
tests and the benchmarks.

ONNX with onnx.helper, OpenVINO IR with openvino.save_model, TFLite with LiteRT's own
flatbuffer schema (no TensorFlow needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save_onnx(graph, path: Path, check: bool = True) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgekit-tests")
    model.ir_version = 8
    if check:  # the checker wants every input's rank
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def add_onnx(path: Path, shape=(1, 4), dynamic_batch: bool = False) -> Path:
    """y = a + b: the one-Add model."""
    dims = ["batch", *shape[1:]] if dynamic_batch else list(shape)
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "add",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, dims),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    return _save_onnx(g, path)


def mlp_weights(n_in: int = 8, n_hidden: int = 16, n_out: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_in, n_hidden)).astype(np.float32) * 0.5,
            rng.standard_normal(n_hidden).astype(np.float32) * 0.1,
            rng.standard_normal((n_hidden, n_out)).astype(np.float32) * 0.5,
            rng.standard_normal(n_out).astype(np.float32) * 0.1)


def mlp_reference(x: np.ndarray, weights) -> np.ndarray:
    w1, b1, w2, b2 = weights
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


def mlp_onnx(path: Path, weights=None, batch="batch") -> Path:
    """logits = relu(x @ w1 + b1) @ w2 + b2, with a dynamic (or fixed) batch."""
    w1, b1, w2, b2 = weights or mlp_weights()
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["o0"]),
             helper.make_node("Add", ["o0", "b2"], ["logits"])]
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, w1.shape[0]])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, w2.shape[1]])],
                          initializer=inits)
    return _save_onnx(g, path)


def streaming_weights(layout: str = "LBH", hidden: int = 16, seed: int = 0):
    """Weights of :func:`streaming_onnx` for a state laid out as ``layout`` (L: 2 layers, B: batch, H:
    ``hidden``), each of the state's shape at batch 1."""
    shape = tuple({"L": 2, "B": 1, "H": hidden}[c] for c in layout)
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 0.9, shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32))


def streaming_reference(windows, layout: str = "LBH", weights=None) -> np.ndarray:
    """What :func:`streaming_onnx` gives for each window (samples) in turn, its state carried."""
    a, c, d = weights or streaming_weights(layout)
    state = np.zeros(a.shape, np.float32)
    probs = []
    for w in windows:
        state = np.tanh(state * a + np.float32(np.mean(w, dtype=np.float32)) * c)
        probs.append(1 / (1 + np.exp(-np.sum(state * d, dtype=np.float64))))
    return np.asarray(probs, np.float32)


def streaming_onnx(path: Path, state_dims, layout: str = "LBH", weights=None, samples: int = 576,
                   state_out: tuple[int, ...] | None = None) -> Path:
    """A Silero-style streaming model: ``input`` [batch, samples] and ``state`` (dims ``state_dims``, laid
    out as ``layout``: L 2 layers, B batch, H hidden) in; ``output`` [batch, 1] and ``stateN`` out, with
    stateN = tanh(state * a + mean(input) * c), output = sigmoid(sum(stateN * d)) per batch row.

    ``state_dims`` may leave any dim open (a name) or the rank unknown (None); ``state_out`` transposes
    stateN (another layout than the state input's).
    """
    a, c, d = weights or streaming_weights(layout)
    ba = layout.index("B")
    others = [i for i in range(3) if i != ba]
    inits = [numpy_helper.from_array(v, n) for v, n in ((a, "a"), (c, "c"), (d, "d"))] + [
        numpy_helper.from_array(np.array(others, np.int64), "others")]
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=0),  # [batch]
             helper.make_node("Unsqueeze", ["m", "others"], ["m3"]),  # batch at its axis in the state
             helper.make_node("Mul", ["state", "a"], ["sa"]), helper.make_node("Mul", ["m3", "c"], ["mc"]),
             helper.make_node("Add", ["sa", "mc"], ["pre"]), helper.make_node("Tanh", ["pre"], ["new"]),
             helper.make_node("Mul", ["new", "d"], ["nd"]),
             helper.make_node("ReduceSum", ["nd", "others"], ["score"], keepdims=0),  # [batch]
             helper.make_node("Unsqueeze", ["score", "one"], ["score2"]),
             helper.make_node("Sigmoid", ["score2"], ["output"])]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    if state_out is not None:
        nodes.append(helper.make_node("Transpose", ["new"], ["stateN"], perm=list(state_out)))
    else:
        nodes.append(helper.make_node("Identity", ["new"], ["stateN"]))
    g = helper.make_graph(
        nodes, "streaming",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", samples]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, state_dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, ["n0", "n1", "n2"])],
        initializer=inits)
    return _save_onnx(g, path, check=state_dims is not None)


def to_ir(onnx_path: Path, xml_path: Path) -> Path:
    from edgekit.backends.ov import import_openvino

    ov = import_openvino()

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


# --- TFLite through the flatbuffer schema ------------------------------------------------------

def _tfl():
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils

    return s, flatbuffer_utils


def _tensor(s, name, shape, buffer, signature=None):
    t = s.TensorT()
    t.name, t.type, t.buffer = name, s.TensorType.FLOAT32, buffer
    t.shape = list(shape)
    if signature is not None:
        t.shapeSignature = list(signature)
    return t


def _buffer(s, data: np.ndarray | None = None):
    b = s.BufferT()
    b.data = None if data is None else np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    return b


def _op(s, code_index, inputs, outputs, opt_type=0, opts=None):
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code_index, list(inputs), list(outputs)
    if opts is not None:
        op.builtinOptionsType, op.builtinOptions = opt_type, opts
    return op


def _finish(s, fu, tensors, ops, codes, buffers, inputs, outputs, path: Path) -> Path:
    sg = s.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs, sg.name = tensors, ops, inputs, outputs, "main"
    sig = s.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0

    def tmap(i):
        m = s.TensorMapT()
        m.name, m.tensorIndex = tensors[i].name, i
        return m

    sig.inputs, sig.outputs = [tmap(i) for i in inputs], [tmap(i) for i in outputs]
    model = s.ModelT()
    model.version, model.description = 3, "edgekit test model"
    model.operatorCodes, model.subgraphs, model.buffers = codes, [sg], buffers
    model.signatureDefs = [sig]
    fu.write_model(model, str(path))
    return path


def _code(s, builtin):
    c = s.OperatorCodeT()
    c.builtinCode = builtin
    c.deprecatedBuiltinCode = min(builtin, 127)
    c.version = 1
    return c


def add_tflite(path: Path, shape=(1, 4)) -> Path:
    s, fu = _tfl()
    buffers = [_buffer(s), _buffer(s), _buffer(s), _buffer(s)]
    tensors = [_tensor(s, "a", shape, 1), _tensor(s, "b", shape, 2), _tensor(s, "y", shape, 3)]
    opts = s.AddOptionsT()
    ops = [_op(s, 0, [0, 1], [2], s.BuiltinOptions.AddOptions, opts)]
    return _finish(s, fu, tensors, ops, [_code(s, s.BuiltinOperator.ADD)], buffers, [0, 1], [2], path)


def mlp_tflite(path: Path, weights=None) -> Path:
    """The same MLP as :func:`mlp_onnx` (FULLY_CONNECTED takes weights as [out, in])."""
    s, fu = _tfl()
    w1, b1, w2, b2 = weights or mlp_weights()
    n_in, n_hidden, n_out = w1.shape[0], w1.shape[1], w2.shape[1]
    buffers = [_buffer(s), _buffer(s), _buffer(s, w1.T), _buffer(s, b1), _buffer(s, w2.T), _buffer(s, b2),
               _buffer(s), _buffer(s)]
    tensors = [_tensor(s, "x", (1, n_in), 1, (-1, n_in)),
               _tensor(s, "w1", (n_hidden, n_in), 2), _tensor(s, "b1", (n_hidden,), 3),
               _tensor(s, "w2", (n_out, n_hidden), 4), _tensor(s, "b2", (n_out,), 5),
               _tensor(s, "h", (1, n_hidden), 6, (-1, n_hidden)),
               _tensor(s, "logits", (1, n_out), 7, (-1, n_out))]
    fc1 = s.FullyConnectedOptionsT()
    fc1.fusedActivationFunction = s.ActivationFunctionType.RELU
    fc2 = s.FullyConnectedOptionsT()
    T = s.BuiltinOptions.FullyConnectedOptions
    ops = [_op(s, 0, [0, 1, 2], [5], T, fc1), _op(s, 0, [5, 3, 4], [6], T, fc2)]
    return _finish(s, fu, tensors, ops, [_code(s, s.BuiltinOperator.FULLY_CONNECTED)], buffers,
                   [0], [6], path)


# --- A ResNet-50-sized CNN (real topology, random weights, BN folded) ---------------------------

def resnet50_layers(seed: int = 0, classes: int = 1000) -> list[dict]:
    """ResNet-50 v1.5 as a flat list of layers with OIHW weights, for the emitters below."""
    rng = np.random.default_rng(seed)
    layers: list[dict] = []

    def conv(src, dst, cin, cout, k, stride, relu):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(1.0 / (cin * k * k))).astype(np.float32)
        layers.append(dict(op="conv", src=src, dst=dst, w=w, b=np.zeros(cout, np.float32), stride=stride,
                           pad=k // 2, relu=relu))

    conv("input", "stem", 3, 64, 7, 2, True)
    layers.append(dict(op="maxpool", src="stem", dst="pool"))
    x, cin = "pool", 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for i in range(blocks):
            stride = 2 if (i == 0 and stage > 0) else 1
            p = f"s{stage}b{i}"
            conv(x, f"{p}a", cin, width, 1, 1, True)
            conv(f"{p}a", f"{p}b", width, width, 3, stride, True)
            conv(f"{p}b", f"{p}c", width, width * 4, 1, 1, False)
            short = x
            if i == 0:
                conv(x, f"{p}s", cin, width * 4, 1, stride, False)
                short = f"{p}s"
            layers.append(dict(op="add_relu", src=(f"{p}c", short), dst=f"{p}out"))
            x, cin = f"{p}out", width * 4
    layers.append(dict(op="gap", src=x, dst="gap"))
    w = (rng.standard_normal((classes, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
    layers.append(dict(op="fc", src="gap", dst="logits", w=w, b=np.zeros(classes, np.float32)))
    return layers


def resnet50_onnx(path: Path, seed: int = 0) -> Path:
    nodes, inits = [], []
    for i, L in enumerate(resnet50_layers(seed)):
        if L["op"] == "conv":
            inits += [numpy_helper.from_array(L["w"], f"w{i}"), numpy_helper.from_array(L["b"], f"b{i}")]
            out = f"{L['dst']}_pre" if L["relu"] else L["dst"]
            k = L["w"].shape[-1]
            nodes.append(helper.make_node("Conv", [L["src"], f"w{i}", f"b{i}"], [out], kernel_shape=[k, k],
                                          strides=[L["stride"]] * 2, pads=[L["pad"]] * 4))
            if L["relu"]:
                nodes.append(helper.make_node("Relu", [out], [L["dst"]]))
        elif L["op"] == "maxpool":
            nodes.append(helper.make_node("MaxPool", [L["src"]], [L["dst"]], kernel_shape=[3, 3],
                                          strides=[2, 2], pads=[1, 1, 1, 1]))
        elif L["op"] == "add_relu":
            nodes += [helper.make_node("Add", list(L["src"]), [f"{L['dst']}_sum"]),
                      helper.make_node("Relu", [f"{L['dst']}_sum"], [L["dst"]])]
        elif L["op"] == "gap":
            nodes += [helper.make_node("GlobalAveragePool", [L["src"]], ["gap4"]),
                      helper.make_node("Flatten", ["gap4"], [L["dst"]])]
        elif L["op"] == "fc":
            inits += [numpy_helper.from_array(L["w"], "fc_w"), numpy_helper.from_array(L["b"], "fc_b")]
            nodes.append(helper.make_node("Gemm", [L["src"], "fc_w", "fc_b"], [L["dst"]], transB=1))
    g = helper.make_graph(nodes, "resnet50",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
                          initializer=inits)
    return _save_onnx(g, path)


def resnet50_tflite(path: Path, seed: int = 0) -> Path:
    """The same layers in NHWC with SAME padding (timing twin of the ONNX model, not a parity twin)."""
    s, fu = _tfl()
    codes = [_code(s, op) for op in (s.BuiltinOperator.CONV_2D, s.BuiltinOperator.ADD,
                                     s.BuiltinOperator.MAX_POOL_2D, s.BuiltinOperator.AVERAGE_POOL_2D,
                                     s.BuiltinOperator.FULLY_CONNECTED)]
    CONV, ADD, MAXP, AVGP, FC = range(5)
    buffers, tensors, ops = [_buffer(s)], [], []
    index: dict[str, int] = {}
    shapes: dict[str, tuple] = {}

    def tensor(name, shape, data=None):
        buffers.append(_buffer(s, data))
        tensors.append(_tensor(s, name, shape, len(buffers) - 1))
        index[name] = len(tensors) - 1
        shapes[name] = tuple(shape)
        return index[name]

    tensor("input", (1, 224, 224, 3))
    for i, L in enumerate(resnet50_layers(seed)):
        if L["op"] == "conv":
            n, h, w, _ = shapes[L["src"]]
            st = L["stride"]
            cout = L["w"].shape[0]
            wt = tensor(f"w{i}", L["w"].transpose(0, 2, 3, 1).shape, L["w"].transpose(0, 2, 3, 1))
            bt = tensor(f"b{i}", L["b"].shape, L["b"])
            out = tensor(L["dst"], (n, -(-h // st), -(-w // st), cout))
            o = s.Conv2DOptionsT()
            o.padding, o.strideW, o.strideH = s.Padding.SAME, st, st
            o.fusedActivationFunction = s.ActivationFunctionType.RELU if L["relu"] else 0
            ops.append(_op(s, CONV, [index[L["src"]], wt, bt], [out], s.BuiltinOptions.Conv2DOptions, o))
        elif L["op"] in ("maxpool", "gap"):
            n, h, w, c = shapes[L["src"]]
            o = s.Pool2DOptionsT()
            if L["op"] == "maxpool":
                out = tensor(L["dst"], (n, -(-h // 2), -(-w // 2), c))
                o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = s.Padding.SAME, 2, 2, 3, 3
                code = MAXP
            else:
                out = tensor(L["dst"], (n, 1, 1, c))
                o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = s.Padding.VALID, 1, 1, w, h
                code = AVGP
            ops.append(_op(s, code, [index[L["src"]]], [out], s.BuiltinOptions.Pool2DOptions, o))
        elif L["op"] == "add_relu":
            a, b = L["src"]
            out = tensor(L["dst"], shapes[a])
            o = s.AddOptionsT()
            o.fusedActivationFunction = s.ActivationFunctionType.RELU
            ops.append(_op(s, ADD, [index[a], index[b]], [out], s.BuiltinOptions.AddOptions, o))
        elif L["op"] == "fc":
            wt = tensor("fc_w", L["w"].shape, L["w"])
            bt = tensor("fc_b", L["b"].shape, L["b"])
            out = tensor(L["dst"], (1, L["w"].shape[0]))
            ops.append(_op(s, FC, [index[L["src"]], wt, bt], [out], s.BuiltinOptions.FullyConnectedOptions,
                           s.FullyConnectedOptionsT()))
    return _finish(s, fu, tensors, ops, codes, buffers, [index["input"]], [index["logits"]], path)
