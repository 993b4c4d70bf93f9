"""Embed the package card (task, labels, pre-processing, this artifact's layout) in a lone model file.

Read back by :func:`edgekit.formats.read_card`, so a file copied out of its package keeps
its labels and pre-processing: ONNX ``metadata_props``, OpenVINO ``rt_info``, TFLite metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.formats import CARD_KEY
from edgekit.types import Format

# What a lone file keeps of its package: how to use it, and what the source declared of its inputs
# and outputs (their order, dim names and limits, the ids an embedding table holds, output shapes).
CARD_FIELDS = ("name", "version", "description", "task", "labels", "preprocess", "postprocess", "warmup_inputs",
               "inputs", "outputs", "dims", "values")


def make(metadata: dict, entry: dict) -> str:
    card = {k: metadata[k] for k in CARD_FIELDS if k in metadata}
    card["artifacts"] = [{"path": Path(entry["path"]).name, "format": entry["format"],
                          "precision": entry["precision"], "layout": entry.get("layout")}]
    return json.dumps(card, ensure_ascii=False, allow_nan=False)


def embed(path: Path, fmt: Format, card: str) -> None:
    if fmt is Format.ONNX:
        _embed_onnx(path, card)
    elif fmt is Format.TFLITE:
        _embed_tflite(path, card)
    else:
        raise ValueError(f"embed the card in {fmt.value} when saving (see openvino_target)")


def _embed_onnx(path: Path, card: str) -> None:
    import onnx

    model = onnx.load(str(path))
    props = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=CARD_KEY, value=card)
    onnx.save(model, str(path))


def _embed_tflite(path: Path, card: str) -> None:
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    _set_metadata(s, model, card)
    fu.write_model(model, str(path))


def _set_metadata(s, model, card: str) -> None:
    buf = s.BufferT()
    buf.data = list(card.encode("utf-8"))
    model.buffers.append(buf)
    md = s.MetadataT()
    md.name, md.buffer = CARD_KEY, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes)
                                                            else m.name) != CARD_KEY] + [md]
