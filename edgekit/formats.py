"""Identify, validate, hash and describe model files before any runtime sees them.

Everything here raises :class:`~edgekit.errors.ModelFileError` naming the file and
the problem; nothing imports a runtime.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .errors import ModelFileError
from .types import Format

SUFFIXES = {".onnx": Format.ONNX, ".xml": Format.OPENVINO, ".tflite": Format.TFLITE}
MANIFEST = "edgekit.json"


def detect(path: Path) -> Format:
    """The format of a model *file*, from its suffix; raises for anything else."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        allowed = ", ".join(SUFFIXES)
        raise ModelFileError(path, f"unknown model extension {path.suffix or '(none)'!r}; "
                                   f"edgekit reads {allowed} files and package folders with {MANIFEST}")
    return fmt


def validate(path: Path, fmt: Format) -> None:
    """Cheap checks that catch missing, empty, truncated and mismatched files early."""
    if not path.exists():
        raise ModelFileError(path, "no such file")
    if not path.is_file():
        raise ModelFileError(path, "not a file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ModelFileError(path, f"cannot be read ({e.strerror or e})") from e
    if size == 0:
        raise ModelFileError(path, "file is empty")
    if fmt is Format.TFLITE:
        if size < 8 or head[4:8] != b"TFL3":
            raise ModelFileError(path, "not a TFLite flatbuffer (missing the TFL3 identifier)")
    elif fmt is Format.OPENVINO:
        _validate_ir(path)
    elif fmt is Format.ONNX:
        _validate_onnx(path)


def _validate_ir(path: Path) -> None:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ModelFileError(path, f"not a valid OpenVINO IR: XML does not parse ({e})") from e
    if root.tag != "net":
        raise ModelFileError(path, f"not an OpenVINO IR: root element is <{root.tag}>, expected <net>")
    needs_bin = any(el.get("size") not in (None, "0") for el in root.iter("data"))
    weights = path.with_suffix(".bin")
    if needs_bin and not weights.is_file():
        raise ModelFileError(path, f"its weights file {weights.name} is missing (an IR is .xml + .bin)")
    if needs_bin:
        end = max(int(el.get("offset", 0)) + int(el.get("size", 0))
                  for el in root.iter("data") if el.get("size") is not None)
        if weights.stat().st_size < end:
            raise ModelFileError(weights, f"weights file is truncated ({weights.stat().st_size} bytes, "
                                          f"the IR needs {end})")


def _may_reference_external_data(path: Path) -> bool:
    """False when the file cannot name external data (no "location" key anywhere in it).

    Lets big self-contained models skip a full protobuf parse (tens to hundreds of ms
    for ResNet-50); models that use external data keep their weights outside the
    .onnx, so parsing those is cheap.
    """
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return mm.find(b"location") != -1


def _validate_onnx(path: Path) -> None:
    """Check external data containment; corrupt protobufs are also caught by the runtimes' readers."""
    if not _may_reference_external_data(path):
        return
    model = _parse_onnx(path)
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(path, "not a valid ONNX model: it holds no graph")
    for location, end in _external_data_ends(model).items():
        _check_external(path, location, end)


def _parse_onnx(path: Path):
    import onnx  # light: protobuf only, no runtime
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelFileError(path, f"not a valid ONNX model: truncated or corrupt protobuf ({e})") from e


def external_data_locations(model) -> list[str]:
    return sorted(_external_data_ends(model))


def _external_data_ends(model) -> dict[str, int]:
    """Each external data file the model names, and how many bytes its tensors need of it (0 where
    a tensor gives no length: then only the file's existence is checked)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    ends: dict[str, int] = {}
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            try:
                end = int(info.get("offset") or 0) + int(info.get("length") or 0) if info.get("length") else 0
            except ValueError:
                end = 0  # onnx itself refuses such a tensor when it loads it
            location = info.get("location", "")
            ends[location] = max(ends.get(location, 0), end)
    return ends


def _check_external(path: Path, location: str, end: int = 0) -> None:
    """External data must stay inside the model's folder (no absolute paths, no '..', no escaping
    links), and hold the bytes its tensors say they take."""
    base = path.parent.resolve()
    rel = Path(location)
    if not location or rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise ModelFileError(path, f"refusing external data location {location!r}: "
                                   f"it must be a relative path inside {base}")
    target = (path.parent / rel)
    resolved = target.resolve()
    if base != resolved and base not in resolved.parents:
        raise ModelFileError(path, f"refusing external data {location!r}: it links outside {base}")
    if not resolved.is_file():
        raise ModelFileError(path, f"its external data file {location!r} is missing")
    size = resolved.stat().st_size
    if size < end:
        raise ModelFileError(path, f"its external data file {location!r} is {size} bytes, and its tensors "
                                   f"need {end}: truncated")


def model_files(path: Path, fmt: Format) -> list[Path]:
    """Every file that makes up the model (for hashing): IR .bin, ONNX external data."""
    files = [path]
    if fmt is Format.OPENVINO and path.with_suffix(".bin").is_file():
        files.append(path.with_suffix(".bin"))
    elif fmt is Format.ONNX and _may_reference_external_data(path):
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # unreadable: hash what is there; validate() reports the problem
            return files
        files += [path.parent / loc for loc in external_data_locations(model)]
    return files


def sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def describe(path: Path, fmt: Format) -> dict:
    """Format-level facts for ``edgekit info``: versions, producer, metadata."""
    files = model_files(path, fmt)
    info: dict = {"format": fmt.value, "path": str(path),
                  "size_bytes": sum(os.path.getsize(p) for p in files),
                  "files": [p.name for p in files]}
    if fmt is Format.ONNX:
        m = _parse_onnx(path)
        info.update(
            ir_version=m.ir_version,
            opsets={(o.domain or "ai.onnx"): o.version for o in m.opset_import},
            producer=" ".join(x for x in (m.producer_name, m.producer_version) if x) or None,
            metadata={p.key: p.value for p in m.metadata_props},
        )
    elif fmt is Format.OPENVINO:
        root = ET.parse(path).getroot()
        info.update(ir_version=root.get("version"), name=root.get("name"),
                    metadata=_ir_rt_info(root))
    elif fmt is Format.TFLITE:
        info.update(_tflite_facts(path))
    return info


def _ir_rt_info(root) -> dict:
    rt = root.find("rt_info")
    if rt is None:
        return {}
    out = {}
    for el in rt.iter():
        if el is not rt and el.get("value") is not None:
            out[el.tag] = el.get("value")
    return out


def _tflite_facts(path: Path) -> dict:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return {}
    buf = path.read_bytes()
    try:
        m = schema.Model.GetRootAsModel(buf, 0)
        facts = {"schema_version": m.Version(),
                 "description": (m.Description() or b"").decode("utf-8", "replace") or None,
                 "signatures": [m.SignatureDefs(i).SignatureKey().decode()
                                for i in range(m.SignatureDefsLength())],
                 "metadata": [m.Metadata(i).Name().decode() for i in range(m.MetadataLength())]}
    except Exception as e:  # a damaged file is reported when it is opened
        return {"unreadable": str(e)}
    return facts


def signature_base(name: str) -> str:
    """The input name TensorFlow's signature tensor ``name`` stands for: OpenVINO names a TFLite file's
    inputs "serving_default_input_ids:0" where LiteRT's signature (and so the card) says "input_ids"."""
    return re.sub(r":\d+$", "", name).removeprefix("serving_default_")


CARD_KEY = "edgekit"  # ONNX metadata_props key, OpenVINO rt_info key, TFLite metadata name


def read_card(path: Path, fmt: Format) -> dict:
    """The edgekit card a converter embedded in a lone model file (task, labels, pre-processing), or {}.

    A damaged or foreign card is ignored: it is a convenience, the model runs without it.
    """
    text = None
    try:
        if fmt is Format.ONNX:
            text = onnx_metadata_props(path).get(CARD_KEY)
        elif fmt is Format.OPENVINO:
            text = _ir_rt_info(ET.parse(path).getroot()).get(CARD_KEY)
        elif fmt is Format.TFLITE:
            text = _tflite_metadata(path, CARD_KEY)
        card = json.loads(text) if text else {}
    except Exception:
        return {}
    return card if isinstance(card, dict) else {}


_METADATA_PROPS = 14  # ModelProto.metadata_props: StringStringEntryProto {key = 1; value = 2}


def onnx_metadata_props(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props``, read off the protobuf wire format without parsing the graph:
    0.1 ms where ``onnx.load`` took 105 ms (and as much memory as the weights) for MiniLM's 90 MB.
    ValueError for a file that is not a well-formed protobuf message."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        props = {}
        for field, value in _wire_fields(buf, 0, len(buf)):
            if field == _METADATA_PROPS and isinstance(value, tuple):
                # errors="replace": another tool's entry that is not UTF-8 must not cost the card
                entry = {k: bytes(buf[v[0]:v[1]]).decode("utf-8", "replace") for k, v in _wire_fields(buf, *value)
                         if k in (1, 2) and isinstance(v, tuple)}
                props[entry.get(1, "")] = entry.get(2, "")
    return props


# Ops after which a row's result depends on the other rows of the run: dynamic quantization takes one
# scale for the whole tensor (padding included), so MiniLM's ONNX Runtime int8 embedded a text alone
# and in a batch of three at cosine 0.977.
CROSS_ROW_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
# Field numbers in onnx.proto: ModelProto.graph and .functions, GraphProto.node, FunctionProto.node,
# NodeProto.op_type and .attribute, AttributeProto.g and .graphs (If, Loop and Scan bodies).
_MODEL_GRAPH, _MODEL_FUNCTIONS, _GRAPH_NODE, _FUNCTION_NODE = 7, 25, 1, 7
_NODE_OP_TYPE, _NODE_ATTRIBUTE, _ATTR_GRAPH, _ATTR_GRAPHS = 4, 5, 6, 11


def onnx_op_types(path: Path) -> set[str]:
    """The op types of an ONNX file, subgraphs (If, Loop, Scan bodies) and local functions included,
    read off the wire format: the weights are skipped, not parsed (2 ms for MiniLM's 90 MB).
    ValueError for a file that is not a well-formed protobuf message."""
    ops: set[str] = set()
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        def nodes(span: tuple, field: int) -> None:  # the nodes of a graph or function message
            for number, node in _wire_fields(buf, *span):
                if number == field and isinstance(node, tuple):
                    for k, v in _wire_fields(buf, *node):
                        if k == _NODE_OP_TYPE and isinstance(v, tuple):
                            ops.add(bytes(buf[v[0]:v[1]]).decode("utf-8", "replace"))
                        elif k == _NODE_ATTRIBUTE and isinstance(v, tuple):
                            for a, g in _wire_fields(buf, *v):
                                if a in (_ATTR_GRAPH, _ATTR_GRAPHS) and isinstance(g, tuple):
                                    nodes(g, _GRAPH_NODE)

        for field, value in _wire_fields(buf, 0, len(buf)):
            if field == _MODEL_GRAPH and isinstance(value, tuple):
                nodes(value, _GRAPH_NODE)
            elif field == _MODEL_FUNCTIONS and isinstance(value, tuple):
                nodes(value, _FUNCTION_NODE)
    return ops


def _wire_fields(buf, pos: int, end: int):
    """(field number, value) of each field of the protobuf message in ``buf[pos:end]``: an int for a
    varint, (start, end) for length-delimited bytes, None for fixed-size numbers."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        wire = tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + n), pos + n
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield tag >> 3, value


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 70:  # at most 10 bytes, as protobuf reads them
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated or overlong protobuf varint")


def _tflite_metadata(path: Path, name: str) -> str | None:
    from ai_edge_litert import schema_py_generated as schema

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        m = schema.Model.GetRootAsModel(buf, 0)
        for i in range(m.MetadataLength()):
            md = m.Metadata(i)
            if md.Name() and md.Name().decode() == name:
                b = m.Buffers(md.Buffer())
                n = b.DataLength()
                start = b._tab.Vector(b._tab.Offset(4)) if n else 0  # no numpy view: it would pin the mmap
                return bytes(buf[start:start + n]).decode("utf-8") if n else None
    return None
