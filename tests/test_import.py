"""`import edgekit` and `edgekit --help` import no runtime."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "numpy", "onnx", "PySide6",
         "tensorflow", "torch", "cv2"]


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.strip().splitlines()[-1].split())


def test_import_edgekit_imports_no_runtime():
    loaded = _modules_after("import edgekit")
    assert not [m for m in HEAVY if m in loaded]


def test_cli_help_imports_no_runtime():
    code = ("import contextlib, io\nfrom edgekit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded]


def test_public_surface_is_explicit():
    import edgekit

    for name in edgekit.__all__:
        assert getattr(edgekit, name) is not None
