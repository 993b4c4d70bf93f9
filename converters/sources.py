"""Conversion sources, each turned into the fp32 ONNX "hub" model (or used as is) plus a reference.

A source is an ONNX file, a PyTorch ``nn.Module`` with example inputs, a Hugging Face
model folder, an edgekit package (its fp32 ONNX artifact, with its task and labels), or
a TFLite / OpenVINO IR file (converted only where the tools allow). The reference is
what every artifact is checked against: the PyTorch module itself for PyTorch and
Hugging Face sources, the source file on its own runtime otherwise.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekit import formats, package
from edgekit.errors import ModelFileError, UsageError
from edgekit.types import Format, TensorSpec

from .report import one_line

log = logging.getLogger("edgekit.convert")

OPSET = 18  # what the exporters write; older ONNX files are upgraded to it when below MIN_OPSET
MIN_OPSET = 13  # per-channel QDQ and onnx2tf's best-supported range start here
RUNTIME_OF = {Format.ONNX: "onnxruntime", Format.OPENVINO: "openvino", Format.TFLITE: "litert"}


@dataclass
class Prepared:
    """A source made ready: the fp32 ONNX hub (if any), the native file (TFLite/IR), a reference."""

    kind: str  # "onnx" | "pytorch" | "huggingface" | "package" | "tflite" | "openvino"
    label: str
    name: str
    inputs: list[TensorSpec]
    output_names: list[str]
    reference: Callable[[dict], list[np.ndarray]]
    reference_label: str
    onnx: Path | None = None
    native: Path | None = None
    native_format: Format | None = None
    metadata: dict = field(default_factory=dict)  # task, labels, preprocess, postprocess, warmup_inputs, ...
    files: dict[str, Path] = field(default_factory=dict)  # package-relative name -> file to copy in
    notes: list[str] = field(default_factory=list)
    example: dict | None = None  # one real input (PyTorch / Hugging Face sources)

    @property
    def layouts(self) -> dict[str, str | None]:
        """Each input's layout, by name: what the check and calibration feeds are laid out in."""
        return {s.name: s.layout for s in self.inputs}

    @property
    def package_dir(self) -> Path | None:
        """Where the metadata's relative files (tokenizer) are found before they are copied."""
        for name in (tokenizer_name(self.metadata), "tokenizer.json"):
            if name in self.files:
                return self.files[name].parent
        return None


def tokenizer_name(metadata: dict) -> str | None:
    """The tokenizer file a manifest or card names (``preprocess.text.tokenizer``), or None; a card is
    read leniently, so any other value there is None too."""
    preprocess = metadata.get("preprocess")
    text = preprocess.get("text") if isinstance(preprocess, dict) else None
    tok = text.get("tokenizer") if isinstance(text, dict) else None
    return tok if isinstance(tok, str) and tok else None


def prepare(source, work: Path, *, example_inputs=None, input_names=None, output_names=None) -> Prepared:
    """Turn ``source`` into a :class:`Prepared` inside the temporary folder ``work``."""
    if _is_torch_module(source):
        if example_inputs is None:
            raise UsageError("a PyTorch module needs example_inputs=(tensor, ...) to be exported")
        return _from_torch(source, example_inputs, work, input_names, output_names)
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelFileError(path, "no such file or folder")
    if path.is_dir():
        if (path / formats.MANIFEST).is_file():
            return _from_package(path, work)
        if (path / "config.json").is_file():
            return _from_huggingface(path, work)
        raise ModelFileError(path, f"a folder converts only as a Hugging Face model (config.json) or an edgekit "
                                   f"package ({formats.MANIFEST}); this one has neither")
    fmt = formats.detect(path)
    formats.validate(path, fmt)
    if fmt is Format.ONNX:
        return _from_onnx(path, work)
    return _from_native(path, fmt)


# --- ONNX -------------------------------------------------------------------------------------------

def prepare_onnx(src: Path, dst: Path, notes: list[str]) -> Path:
    """Upgrade an old opset, simplify and constant-fold (onnxslim), save self-contained at ``dst``.

    Weights computed by nodes become initializers, shapes are folded: what onnx2tf and the
    quantizers need from graphs as older exporters wrote them. Each step that cannot be
    done is noted and skipped; the graph is never made worse.
    """
    import onnx

    model = read_onnx(src)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        try:
            from onnx import version_converter

            model = version_converter.convert_version(model, OPSET)
            notes.append(f"opset {opset} upgraded to {OPSET}")
        except Exception as e:
            notes.append(f"opset {opset} kept (upgrade failed: {one_line(e)})")
    try:
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(model)
        if slim is not None:
            model = slim
    except ImportError:
        notes.append("not simplified: onnxslim is not installed (pip install 'edgekit[convert]')")
    except Exception as e:
        notes.append(f"not simplified (onnxslim: {one_line(e)})")
    onnx.save(model, str(dst))
    return dst


def read_onnx(path: Path):
    """``onnx.load`` with the external data; a file it cannot read (corrupt, short external data) is
    the user's bad file, not a failure of ours."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as e:
        raise ModelFileError(path, f"cannot be read as ONNX ({one_line(e)})") from e


def onnx_outputs(path: Path) -> list[dict]:
    """The graph's outputs as a manifest lists them: name, shape (a dim's name where it has one, else
    its size or null) and dtype. Every artifact is given back in these shapes where it only moved a
    size-1 dim (onnx2tf returns Silero's state [2, 1, 128] as [1, 2, 128])."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = []
    for v in model.graph.output:
        t = v.type.tensor_type
        # onnxslim's shape inference names every unknown dim "?": one name would say they are one size
        shape = ([(d.dim_param if d.dim_param != "?" else None) or (d.dim_value if d.HasField("dim_value") else None)
                  for d in t.shape.dim] if t.HasField("shape") else None)
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))) if t.elem_type else None
        out.append({"name": v.name, "shape": shape, "dtype": dtype})
    return out


def _from_onnx(path: Path, work: Path) -> Prepared:
    notes: list[str] = []
    ref, inputs, outputs = _runtime_reference(path, Format.ONNX)  # first: it names a corrupt file clearly
    hub = prepare_onnx(path, work / "hub.onnx", notes)
    card = formats.read_card(path, Format.ONNX)
    inputs = declared_ranks(inputs, hub)
    return Prepared("onnx", str(path), card.get("name") or path.stem, inputs, [s.name for s in outputs], ref,
                    f"{path.name} on ONNX Runtime", onnx=hub, metadata=_carried(card), notes=notes)


def _runtime_reference(path: Path, fmt: Format):
    import edgekit

    model = edgekit.load(path, device=RUNTIME_OF[fmt])
    names = [s.name for s in model.outputs]

    def reference(feed: dict) -> list[np.ndarray]:
        out = model.run(feed)
        return [out[n] for n in names]

    return reference, list(model.inputs), list(model.outputs)


def declared_ranks(inputs: list[TensorSpec], onnx_path: Path) -> list[TensorSpec]:
    """``inputs`` with the scalars the ONNX graph declares as such: ONNX Runtime reports a scalar like
    an input of unknown rank, and check inputs made for "any rank" are [1], which OpenVINO refuses."""
    if all(s.shape is not None for s in inputs):
        return inputs
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    scalars = {i.name for i in graph.input
               if i.type.HasField("tensor_type") and i.type.tensor_type.HasField("shape")
               and not i.type.tensor_type.shape.dim}
    return [replace(s, shape=()) if s.shape is None and s.name in scalars else s for s in inputs]


def _carried(meta: dict) -> dict:
    keys = ("name", "version", "description", "task", "labels", "preprocess", "postprocess", "warmup_inputs", "dims",
            "values")
    carried = {k: meta[k] for k in keys if k in meta}
    checks = (("dims", package.parse_dims, "dim limits"), ("values", package.parse_values, "value ranges"))
    for key, parse, what in checks:
        try:
            parse(carried.get(key))
        except ValueError as e:  # a card is read leniently: a bad entry is dropped, not made the new package's
            log.warning("not carrying the source's %s: %s", what, e)
            carried.pop(key)
    return carried


def _from_package(path: Path, work: Path) -> Prepared:
    pkg = package.read(path)
    src = next((a for a in pkg.artifacts if a.format is Format.ONNX and a.precision in ("fp32", "stored")
                and a.status == "ok"), None)
    if src is None:
        raise ModelFileError(path, "the package has no fp32 ONNX artifact to convert from")
    package.verify(src)
    prep = _from_onnx(src.path, work)
    prep.kind, prep.label, prep.name = "package", str(path), pkg.name
    prep.metadata = _carried(pkg.manifest)
    tok = tokenizer_name(prep.metadata)
    if tok:
        prep.files[tok] = path / tok
    return prep


def _from_native(path: Path, fmt: Format) -> Prepared:
    from edgekit.bench import warmup_of

    ref, inputs, outputs = _runtime_reference(path, fmt)
    card = formats.read_card(path, fmt)
    runtime = {Format.TFLITE: "LiteRT", Format.OPENVINO: "OpenVINO"}[fmt]
    prep = Prepared(fmt.value if fmt is Format.TFLITE else "openvino", str(path), card.get("name") or path.stem,
                    inputs, [s.name for s in outputs], ref, f"{path.name} on {runtime}", native=path,
                    native_format=fmt, metadata=_carried(card))
    # The file's outputs as edgekit gives them (its card's shapes, where the file only moved a size-1
    # dim): what every artifact made of it answers in. Its inputs take the file's layout (a TFLite's
    # NHWC), so warm-up sizes given in its card's source layout say which that was.
    prep.metadata["outputs"] = [{k: v for k, v in s.to_dict().items() if k != "layout"} for s in outputs]
    if "warmup_inputs" in prep.metadata:
        prep.metadata["warmup_inputs"] = warmup_of(card)
    _tokenizer_beside(prep, path)
    return prep


def _tokenizer_beside(prep: Prepared, path: Path) -> None:
    """A package's artifact, converted as a lone file, names its package's tokenizer: taken from beside
    it, as a package source's is (a plain file name only: the card is the file's, not ours)."""
    tok = tokenizer_name(prep.metadata)
    if tok is None:
        return
    if Path(tok).name == tok and (path.parent / tok).is_file():
        prep.files[tok] = path.parent / tok
    else:
        prep.notes.append(f"its card names the tokenizer {tok}, which is not beside {path.name}: "
                          f"copy it into the package for the text tasks")


# --- PyTorch ----------------------------------------------------------------------------------------

def _is_torch_module(obj) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def export_torch(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                 dynamic: dict[int, str] | None, notes: list[str], *, prefer_legacy: bool = False) -> None:
    """``torch.onnx.export`` with a dynamic batch (and any other ``dynamic`` axes) where the model allows.

    Tries torch.export's exporter (the maintained one) first, then the TorchScript exporter,
    then each without dynamic axes; what had to give is noted.
    """
    import torch

    dynamic = dynamic if dynamic is not None else {0: "batch"}
    attempts = [("dynamo", dynamic), ("torchscript", dynamic), ("dynamo", {}), ("torchscript", {})]
    if prefer_legacy:
        attempts = [attempts[1], attempts[0], attempts[3], attempts[2]]
    errors = []
    for exporter, axes in attempts:
        try:
            _export_once(torch, module, args, path, input_names, output_names, axes, exporter)
        except Exception as e:
            errors.append(f"{exporter}{' (dynamic)' if axes else ''}: {one_line(e)}")
            log.debug("export with %s failed: %s", exporter, e)
            for p in path.parent.glob(path.name + "*"):
                p.unlink()
            continue
        if exporter != attempts[0][0] or axes != attempts[0][1]:
            notes.append(f"exported with the {exporter} exporter{'' if axes else ', static shapes'} "
                         f"({errors[0]})")
        inline_weights(path)
        return
    raise UsageError("the PyTorch module cannot be exported to ONNX: " + "; ".join(errors))


def _export_once(torch, module, args, path, input_names, output_names, axes, exporter) -> None:
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # One name means one size: an input that differs from the first on an axis (a broadcast
            # bias of batch 1, say) keeps that axis static rather than share its name.
            first = args[0].shape
            per_input = [{a: name for a, name in axes.items()
                          if a < t.ndim and (a >= len(first) or t.shape[a] == first[a])} for t in args]
            if exporter == "dynamo":
                dims = {axis: torch.export.Dim(name) for axis, name in axes.items()}
                shapes = tuple({a: dims[a] for a in mine} for mine in per_input) if axes else None
                torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                                  dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, verbose=False)
            else:
                dyn = dict(zip(input_names, per_input))
                dyn.update({n: {0: axes[0]} for n in output_names if 0 in axes})
                torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                                  dynamic_axes=dyn or None, opset_version=OPSET, dynamo=False)
    finally:
        quiet.setLevel(level)


def inline_weights(path: Path) -> None:
    """One self-contained .onnx (< 2 GB) instead of an .onnx + .onnx.data pair."""
    import onnx

    sidecars = [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    if sidecars:
        onnx.save(onnx.load(str(path)), str(path))
        for p in sidecars:
            p.unlink()


def _torch_reference(module, input_names: list[str]):
    import torch

    def reference(feed: dict) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in input_names))
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().numpy() for o in outs]

    return reference


def _specs_of(args, names) -> list[TensorSpec]:
    import edgekit.types as t

    return [TensorSpec(n, (None, *a.shape[1:]), np.dtype(str(a.numpy().dtype)), t.guess_layout((None, *a.shape[1:])))
            for n, a in zip(names, args)]


def _from_torch(module, example_inputs, work: Path, input_names=None, output_names=None) -> Prepared:
    import torch

    module = module.eval()
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    args = tuple(torch.as_tensor(a) for a in args)
    names_in = list(input_names or (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]))
    with torch.no_grad():
        out = module(*args)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    names_out = list(output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
    notes: list[str] = []
    raw = work / "export.onnx"
    export_torch(module, args, raw, names_in, names_out, {0: "batch"}, notes)
    hub = prepare_onnx(raw, work / "hub.onnx", notes)
    example = {n: a.numpy() for n, a in zip(names_in, args)}
    return Prepared("pytorch", type(module).__name__, type(module).__name__.lower(), _hub_inputs(hub),
                    names_out, _torch_reference(module, names_in), "the PyTorch module", onnx=hub, notes=notes,
                    example=example)


def _hub_inputs(path: Path) -> list[TensorSpec]:
    import edgekit

    with edgekit.load(path, device="onnxruntime") as m:
        return declared_ranks(list(m.inputs), path)


# --- Hugging Face folders -------------------------------------------------------------------------

def sentence_embedder(encoder):
    """BERT-style encoder + mean pooling over real tokens + L2 normalisation (sentence-transformers' recipe)."""
    import torch

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            # = F.normalize(pooled, dim=1), written without ReduceL2 (onnx2tf 1.29 fails on it at opset 18;
            # tflite_target rewrites it for graphs from elsewhere)
            norm = (pooled * pooled).sum(1, keepdim=True).sqrt().clamp(min=1e-12)
            return pooled / norm

    return SentenceEmbedder(encoder).eval()


def sequence_logits(model):
    """A sequence classifier whose graph returns plain logits."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits

    return Logits(model).eval()


def max_length_of(folder: Path, config: dict) -> int:
    """The model's token limit: sentence-transformers' max_seq_length, the tokenizer's, or the positions."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and 0 < value < 100_000:
            return value
    return int(config.get("max_position_embeddings", 512))


# Models whose position ids start after the padding id (fairseq's convention), so that
# max_position_embeddings - padding_idx - 1 tokens fit: RoBERTa's 514 positions hold 512.
_POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer",
                                      "mpnet", "data2vec-text", "xmod", "roberta-prelayernorm", "ibert"})


def sequence_limit(config: dict) -> dict:
    """The package's ``dims`` entry for a transformer's absolute positions: past them its graph fails
    (a Gather or Add deep inside), so ``Model.run`` refuses longer sequences up front. None for
    relative positions only (DeBERTa-v2/v3's ``position_biased_input: false``), which take more."""
    top = config.get("max_position_embeddings")
    if not isinstance(top, int) or config.get("position_biased_input") is False:
        return {}
    if config.get("model_type") in _POSITIONS_AFTER_PADDING:
        pad = config.get("pad_token_id")
        top -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
    return {"dims": {"sequence": {"max": top}}} if top > 0 else {}


def token_ranges(config: dict, inputs: list[str]) -> dict:
    """The package's ``values`` entry: the ids a transformer's embedding tables hold, so that
    ``Model.run`` refuses others on every runtime (ONNX Runtime failed in a Gather; OpenVINO answered)."""
    out = {}
    for name, key in (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size")):
        n = config.get(key)
        if name in inputs and isinstance(n, int) and n > 0:
            out[name] = {"min": 0, "max": n - 1}
    return {"values": out} if out else {}


def _from_huggingface(folder: Path, work: Path) -> Prepared:
    try:
        import torch  # noqa: F401
        from transformers import AutoModel, AutoModelForSequenceClassification
    except ImportError:
        raise UsageError("converting a Hugging Face folder needs torch and transformers: "
                         "pip install 'edgekit[samples]'") from None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not (folder / "tokenizer.json").is_file():
        raise ModelFileError(folder, "no tokenizer.json (the fast tokenizer file edgekit's text tasks read)")
    arch = (config.get("architectures") or [""])[0]
    classify = arch.endswith("ForSequenceClassification")
    loader = AutoModelForSequenceClassification if classify else AutoModel
    try:
        hf = loader.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    except Exception as e:
        raise ModelFileError(folder, f"transformers cannot load it ({one_line(e)})") from e
    module = sequence_logits(hf) if classify else sentence_embedder(hf)
    forward = inspect.signature(hf.forward).parameters
    names_in = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in forward else [])
    out_name = "logits" if classify else "sentence_embedding"
    limit = max_length_of(folder, config)
    from edgekit.tasks.text import Tokenizer

    tok = Tokenizer(folder / "tokenizer.json", max_length=limit)
    enc = tok.encode(["edgekit exports this model to ONNX.", "A second, longer example sentence for the export."])
    import torch

    args = tuple(torch.from_numpy(enc[n]) for n in names_in)
    notes: list[str] = []
    raw = work / "export.onnx"
    # The TorchScript exporter first: ONNX Runtime ran its BERT graph 5-9 % faster than torch.export's.
    export_torch(module, args, raw, names_in, [out_name], {0: "batch", 1: "sequence"}, notes, prefer_legacy=True)
    hub = prepare_onnx(raw, work / "hub.onnx", notes)
    meta = {"name": folder.name, "task": "text-classification" if classify else "text-embedding",
            "preprocess": {"text": {"tokenizer": "tokenizer.json", "max_length": limit}}}
    meta.update(sequence_limit(config))
    meta.update(token_ranges(config, names_in))
    if classify:
        id2label = config.get("id2label") or {}
        meta["labels"] = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]
        meta["postprocess"] = {"activation": "softmax"}
    else:
        meta["postprocess"] = {"pooling": "mean (in graph)", "normalized": True}
    return Prepared("huggingface", str(folder), folder.name, _hub_inputs(hub), [out_name],
                    _torch_reference(module, names_in), f"{arch or 'the model'} in PyTorch (transformers)",
                    onnx=hub, metadata=meta, files={"tokenizer.json": folder / "tokenizer.json"}, notes=notes,
                    example={n: enc[n] for n in names_in})


def copy_files(prep: Prepared, staging: Path) -> None:
    for rel, src in prep.files.items():
        shutil.copy(src, staging / rel)
