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


def test_openvino_and_nncf_send_no_telemetry(tmp_path, models):
    """`import openvino` sent an event to Google Analytics from a forked process (and NNCF its own)
    unless ~/intel held a consent file saying no: an on-device SDK makes no outside connections."""
    import os

    code = f"""
import sys
def hook(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        print("NETWORK", event, args[:2], file=sys.stderr, flush=True)
sys.addaudithook(hook)
import edgekit
with edgekit.load({str(models["mlp.xml"])!r}, device="openvino") as m:
    m.run(m.inputs and __import__("numpy").ones((1, 8), "float32"))
from converters.openvino_target import build
from openvino_telemetry import Telemetry
import nncf.telemetry.wrapper as w
print(Telemetry().consent, w.NNCFTelemetry()._impl.consent)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}  # they opt out
    env["HOME"] = str(tmp_path)  # no consent file: the default is to send
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"], out.stdout
    assert "NETWORK" not in out.stderr, out.stderr
    assert not (tmp_path / "intel").exists()  # no consent or client-id file written either

    # An application that imported NNCF before edgekit: NNCF made the telemetry object, consenting
    # (no file says no); edgekit declines it from its first use of OpenVINO on
    first = f"""
import sys
def no_network(event, args):  # NNCF's import may send its own event: nothing leaves this test
    if event in ("socket.getaddrinfo", "socket.connect"):
        raise RuntimeError("no network in this test")
sys.addaudithook(no_network)
import nncf.telemetry.wrapper as w
from openvino_telemetry import Telemetry
print(Telemetry().consent)
import edgekit
with edgekit.load({str(models["mlp.xml"])!r}, device="openvino") as m:
    pass
print(Telemetry().consent, w.NNCFTelemetry()._impl.consent)
"""
    (tmp_path / "home2").mkdir()  # a home that exists, with no consent file: NNCF's default is to send
    out = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=120,
                         env={**env, "HOME": str(tmp_path / "home2")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"], out.stdout
