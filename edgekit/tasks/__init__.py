"""Task pipelines: images, text and audio in, typed results out.

    from edgekit.tasks import ImageClassifier
    with ImageClassifier("efficientnet-lite0/") as clf:      # a package, a model file or a Model
        print(clf.classify("cat.jpg", top_k=3))              # [Category(index, label, score), ...]

Pre-processing comes from the package's edgekit.json and can be overridden by arguments.
The same task works on any artifact (ONNX / IR / TFLite, any precision, NCHW or NHWC) on
any device. Bad input raises :class:`edgekit.InputError` naming the input and the problem.
"""

from __future__ import annotations

import importlib

__all__ = ["Category", "Segment", "ClassifierOptions", "ImageClassifier", "TextEmbedder", "TextClassifier",
           "VoiceActivityDetector", "AudioClassifier", "for_model"]

_LAZY = {"Category": ".results", "Segment": ".results", "ClassifierOptions": ".results",
         "ImageClassifier": ".image", "TextEmbedder": ".text", "TextClassifier": ".text",
         "VoiceActivityDetector": ".audio", "AudioClassifier": ".audio", "for_model": ".base"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
