"""The Open Inference Protocol's tensors (KServe v2 / Triton HTTP): JSON and the binary extension.

Requests are checked before anything is allocated: every input's name, datatype and
shape against the model, and the element count it declares against the bytes (or JSON
values) actually sent, so a request claiming a 10^12-element tensor is refused from its
header alone. Errors are :class:`ProtocolError` (an :class:`edgekit.InputError`: HTTP 400).

Binary extension (what tritonclient sends by default): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by each binary input's raw bytes, in
input order, sizes given by ``parameters.binary_data_size``. BYTES elements are each a
4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..types import TensorSpec

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES = {dt: name for name, dt in DATATYPES.items() if name != "BYTES"}


class ProtocolError(InputError):
    """A request that does not follow the protocol or does not match the model (HTTP 400)."""


def datatype(dtype: np.dtype) -> str:
    """The protocol's name for a NumPy dtype (object and string arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ProtocolError(f"dtype {dtype} has no Open Inference Protocol datatype") from None


def dims(shape) -> list[int]:
    """A TensorSpec shape as the protocol writes it: dynamic dims are -1."""
    return [-1] if shape is None else [d if isinstance(d, int) else -1 for d in shape]


def tensor_metadata(spec: TensorSpec) -> dict:
    return {"name": spec.name, "datatype": datatype(spec.dtype), "shape": dims(spec.shape)}


def model_config(name: str, model, *, policy: dict, batching, instances: int, task: str | None) -> dict:
    """Triton's model configuration (``GET .../config``), as its clients and perf_analyzer read it.

    With dynamic batching on, ``max_batch_size`` is the batcher's and ``dims`` leave out the batch
    axis, as Triton writes them; otherwise ``max_batch_size`` is 0 and ``dims`` are the whole
    shapes (a model with a dynamic first axis still takes any batch in one request). Unlike
    Triton, a request of more rows than ``max_batch_size`` is not refused: it runs alone. The
    instance kind is the device's (KIND_MODEL for an NPU or TPU, which Triton has no kind for).
    """
    batched = batching is not None

    def tensor(s, *, is_input: bool) -> dict:
        dt = datatype(s.dtype)
        doc = {"name": s.name, "data_type": "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}",
               "dims": dims(s.shape)[1 if batched else 0:], "is_shape_tensor": False}
        if is_input:  # Triton's image client reads the format; Triton writes it always
            doc.update(format={"NCHW": "FORMAT_NCHW", "NHWC": "FORMAT_NHWC"}.get(s.layout or "", "FORMAT_NONE"),
                       allow_ragged_batch=False, optional=False)
        return doc

    chosen = model.selection.chosen
    kind = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}.get(chosen.kind.value if chosen else "cpu", "KIND_MODEL")
    doc = {"name": name, "platform": f"edgekit_{model.backend}", "backend": "edgekit", "version_policy": policy,
           "max_batch_size": batching.max_batch_size if batched else 0,
           "input": [tensor(s, is_input=True) for s in model.inputs],
           "output": [tensor(s, is_input=False) for s in model.outputs],
           "instance_group": [{"name": f"{name}_0", "kind": kind, "count": instances}],
           "model_transaction_policy": {"decoupled": False},
           "parameters": {k: {"string_value": str(v)} for k, v in (
               ("edgekit_backend", model.backend), ("edgekit_device", model.device),
               ("edgekit_artifact", model.path.name), ("edgekit_precision", model.precision),
               ("edgekit_task", task)) if v is not None}}
    if batched:
        doc["dynamic_batching"] = {"max_queue_delay_microseconds": round(batching.max_queue_delay_ms * 1000),
                                   "preferred_batch_size": []}
    return doc


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    alternative: bool = False  # the inputs matched the alternative specs (a text task's BYTES input)


def loads(data: bytes, what: str = "the request"):
    """JSON from a client: any way it can fail (bad UTF-8, syntax, nesting too deep, a number too
    long) is a ProtocolError."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"{what} is not valid JSON ({' '.join(str(e).split())[:200]})") from None


def parse_request(body: bytes, header_length: int | None, specs: list[TensorSpec],
                  alternative: list[TensorSpec] | None = None) -> InferRequest:
    """Decode and check an infer request against the model's input specs.

    ``alternative`` is a second set of inputs the endpoint also accepts (a text task's BYTES
    ``text``); it is used when the request names exactly those inputs.
    """
    if header_length is not None and not 0 < header_length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {header_length} does not fit a body of "
                            f"{len(body)} bytes")
    doc = loads(body if header_length is None else body[:header_length])
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    params = _params(doc, "the request")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")

    names = {i.get("name") for i in doc["inputs"] if isinstance(i, dict) and isinstance(i.get("name"), str)}
    use_alternative = alternative is not None and names == {s.name for s in alternative}
    by_name = {s.name: s for s in (alternative if use_alternative else specs)}
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    offset = 0
    arrays: dict[str, np.ndarray] = {}
    for i, item in enumerate(doc["inputs"]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"inputs[{i}] must be an object with a 'name'")
        name = item["name"]
        if name in arrays:
            raise ProtocolError(f"input {name!r} is given twice")
        spec = by_name.get(name)
        if spec is None:
            raise ProtocolError(f"unknown input {name!r}; the model's inputs are "
                                f"{', '.join(by_name) or '(none)'}")
        size = _params(item, f"input {name!r}").get("binary_data_size")  # shared memory refused first
        values = _json_values(item["data"]) if size is None and "data" in item else None
        dtype, shape, count = _declared(item, spec, len(body), values)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                                    f"({len(binary) - offset} bytes left)")
            arrays[name] = _from_binary(binary[offset:offset + size], name, dtype, shape, count)
            offset += size
        elif "data" in item:
            arrays[name] = _from_json(item["data"], name, dtype, shape, count)
        else:
            raise ProtocolError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} bytes after the last binary input")
    missing = [n for n in by_name if n not in arrays]
    if missing:
        raise ProtocolError(f"missing input {', '.join(map(repr, missing))}")

    outputs = None
    binary_outputs: dict[str, bool] = {}
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for i, item in enumerate(doc["outputs"]):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError(f"outputs[{i}] must be an object with a 'name'")
            p = _params(item, f"output {item['name']!r}")
            if p.get("classification"):
                raise ProtocolError("the classification extension is not supported; use the task endpoint "
                                    "(/classify) for top-k labels")
            outputs.append(item["name"])
            if "binary_data" in p:
                binary_outputs[item["name"]] = bool(p["binary_data"])
    return InferRequest(rid, arrays, outputs, binary_outputs, bool(params.get("binary_data_output", False)),
                        use_alternative)


def _params(obj: dict, what: str) -> dict:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise ProtocolError(f"{what}: 'parameters' must be an object")
    if "shared_memory_region" in p:
        raise ProtocolError(f"{what}: the shared-memory extension is not supported")
    return p


def _declared(item: dict, spec: TensorSpec, body_size: int,
              values: int | None = None) -> tuple[np.dtype, tuple[int, ...], int]:
    """The input's datatype and shape, checked against the model's before anything is read.

    Every element takes at least one byte of the body in either encoding, so a shape declaring
    more elements than the body has bytes is refused from the header alone. ``values``: how many
    values JSON ``data`` holds, which a shape must match.
    """
    name = spec.name
    for key in ("datatype", "shape"):
        if key not in item:
            raise ProtocolError(f"input {name!r} has no {key!r}")
    dt_name = item.get("datatype")
    if not isinstance(dt_name, str) or dt_name not in DATATYPES:
        raise ProtocolError(f"input {name!r}: unknown datatype {str(dt_name)[:20]!r} (one of: {', '.join(DATATYPES)})")
    want = datatype(spec.dtype)
    if dt_name != want:
        raise ProtocolError(f"input {name!r}: the model takes {want}, the request sends {dt_name}")
    shape = item.get("shape")
    if (not isinstance(shape, list) or len(shape) > 16
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of at most 16 non-negative integers, "
                            f"got {str(shape)[:80]}")
    if values is not None:  # JSON data, already parsed: the count it holds is the clearest refusal
        need = math.prod(shape) if all(d <= 2 ** 40 for d in shape) else None  # a number short enough to print
        if need != values:
            needs = f"{need} values" if need is not None else f"more values than the body has bytes ({body_size})"
            raise ProtocolError(f"input {name!r}: shape {str(shape)[:80]} needs {needs}, the request sends {values}")
    # A [10**12, ...] claim is refused before the product is taken; a dim of 0 (no boxes, an empty
    # past for a decoder's cache) makes no claim on the body, and runs where the model can run it.
    if 0 not in shape and any(d > body_size for d in shape):
        raise ProtocolError(f"input {name!r}: shape {str(shape)[:80]} declares more elements than the body "
                            f"has bytes ({body_size}); is its data missing?")
    if spec.shape is not None:
        model = dims(spec.shape)
        if len(shape) != len(model) or any(m != -1 and m != d for m, d in zip(model, shape)):
            raise ProtocolError(f"input {name!r}: shape {shape} does not match the model's {model}")
    count = math.prod(shape)
    if count > body_size:
        raise ProtocolError(f"input {name!r}: shape {shape} declares {count} elements; the body has only "
                            f"{body_size} bytes")
    return DATATYPES[dt_name], tuple(shape), count


def _from_binary(buf: memoryview, name: str, dtype: np.dtype, shape: tuple, count: int) -> np.ndarray:
    if dtype.kind == "O":
        if count * 4 > len(buf):  # each element has at least its 4-byte length
            raise ProtocolError(f"input {name!r}: {count} BYTES elements need at least {count * 4} bytes, "
                                f"the request sends {len(buf)}")
        return _bytes_elements(buf, name, shape, count)
    if count * dtype.itemsize != len(buf):
        raise ProtocolError(f"input {name!r}: shape {list(shape)} of {datatype(dtype)} needs "
                            f"{count * dtype.itemsize} bytes, the request sends {len(buf)}")
    return np.frombuffer(buf, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def _bytes_elements(buf: memoryview, name: str, shape: tuple, count: int) -> np.ndarray:
    items: list[bytes] = []
    pos = 0
    while pos < len(buf):
        if pos + 4 > len(buf) or len(items) >= count:
            raise ProtocolError(f"input {name!r}: BYTES data does not hold {count} length-prefixed elements")
        (n,) = struct.unpack_from("<I", buf, pos)
        if pos + 4 + n > len(buf):
            raise ProtocolError(f"input {name!r}: a BYTES element of {n} bytes runs past the data")
        items.append(bytes(buf[pos + 4:pos + 4 + n]))
        pos += 4 + n
    if len(items) != count:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} needs {count} BYTES elements, "
                            f"the request sends {len(items)}")
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr.reshape(shape)


# What JSON data turned into, in words (numpy's kind codes are no help to a client).
_KINDS = {"b": "true/false", "i": "integer", "u": "integer", "f": "non-integer", "O": "mixed or null",
          "U": "string", "S": "string"}


def _json_values(data) -> int:
    """How many values JSON ``data`` holds if it is regular: the product of its lengths down its first
    elements (walking every value cost 15-20 ms for an image). A ragged one is refused later."""
    n = 1
    while isinstance(data, list):
        n *= len(data)
        if not data:
            break
        data = data[0]
    return n


def _from_json(data, name: str, dtype: np.dtype, shape: tuple, count: int) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    flat = data if all(not isinstance(x, list) for x in data) else None
    if flat is not None and len(flat) != count:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} needs {count} values, the request sends "
                            f"{len(flat)}")
    if dtype.kind == "O":
        if flat is None or not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data in JSON must be a flat list of strings")
        arr = np.empty(count, dtype=object)
        try:
            arr[:] = [x.encode("utf-8") for x in flat]
        except UnicodeEncodeError as e:
            raise ProtocolError(f"input {name!r}: BYTES data holds a lone surrogate ({e.object[e.start]!r}), "
                                f"not valid Unicode") from None
        return arr.reshape(shape)
    try:
        raw = np.asarray(data)
    except ValueError as e:
        raise ProtocolError(f"input {name!r}: ragged data ({e})") from None
    if raw.size != count:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} needs {count} values, the request sends "
                            f"{raw.size}")
    if dtype.kind in "ui" and raw.size and raw.dtype.kind in "fO":
        # NumPy makes floats of integers past int64 mixed with small ones ([2**63, 0]): JSON gave ints
        ints = np.array(data, dtype=object).ravel().tolist()
        if all(type(x) is int for x in ints):
            try:
                return np.array(ints, dtype=dtype).reshape(shape)
            except OverflowError:
                raise ProtocolError(f"input {name!r}: values out of range for {datatype(dtype)}") from None
    ok = {"b": "b", "u": "ui", "i": "ui", "f": "uif"}[dtype.kind]
    if raw.size and raw.dtype.kind not in ok:
        want = "true/false" if dtype.kind == "b" else "numbers"
        raise ProtocolError(f"input {name!r}: {datatype(dtype)} data must be {want}, "
                            f"got {_KINDS.get(raw.dtype.kind, 'other')} values")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = raw.astype(dtype)
    except (OverflowError, ValueError) as e:
        raise ProtocolError(f"input {name!r}: {e}") from None
    if dtype.kind in "ui" and raw.size and not np.array_equal(arr, raw):
        raise ProtocolError(f"input {name!r}: values out of range for {datatype(dtype)}")
    if dtype.kind == "f" and raw.dtype.kind == "f":
        # a value past the datatype's range became inf (1e39 in FP32): the model would answer NaN or a
        # plausible wrong answer. Infinity and NaN sent as such are the client's to send.
        lost = np.isfinite(raw) & ~np.isfinite(arr)
        if lost.any():
            raise ProtocolError(f"input {name!r}: value {float(np.abs(raw[lost]).max()):.3g} is past "
                                f"{datatype(dtype)}'s range (±{float(np.finfo(dtype).max):.3g})")
    return arr.reshape(shape)


def check_outputs(request: InferRequest, specs: list[TensorSpec]) -> None:
    """Refuse unknown or repeated requested outputs before the model runs."""
    if request.outputs is None:
        return
    names = [s.name for s in specs]
    unknown = [n for n in request.outputs if n not in names]
    if unknown:
        raise ProtocolError(f"unknown output {', '.join(map(repr, unknown))}; the model's outputs are "
                            f"{', '.join(names)}")
    if len(set(request.outputs)) != len(request.outputs):
        raise ProtocolError("an output is requested twice")


def encode_response(request: InferRequest, model_name: str, version: str,
                    outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    names = request.outputs if request.outputs is not None else list(outputs)
    tensors, blobs = [], []
    for name in names:
        arr = np.asarray(outputs[name])
        t = {"name": name, "datatype": datatype(arr.dtype), "shape": list(arr.shape)}
        if request.binary_outputs.get(name, request.binary_default):
            blob = _to_bytes(arr)
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif arr.dtype.kind in "OSU":
            t["data"] = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    doc = {"model_name": model_name, "model_version": version, "outputs": tensors}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def _to_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype.kind in "OSU":
        parts = []
        for x in arr.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts += [struct.pack("<I", len(b)), b]
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
