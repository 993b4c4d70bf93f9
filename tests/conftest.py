from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The real Qt window, without a display: as `make test` sets it, so a bare `pytest` works too.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from samples import synthetic as builders  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own fastest-device cache."""
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _clean_registry():
    from edgekit import backends

    yield
    backends.reset()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """The same MLP in every format, plus one-Add models; built once per session."""
    d = tmp_path_factory.mktemp("models")
    w = builders.mlp_weights()
    out = {
        "mlp.onnx": builders.mlp_onnx(d / "mlp.onnx", w),
        "mlp.tflite": builders.mlp_tflite(d / "mlp.tflite", w),
        "add.onnx": builders.add_onnx(d / "add.onnx"),
        "add.tflite": builders.add_tflite(d / "add.tflite"),
    }
    out["mlp.xml"] = builders.to_ir(out["mlp.onnx"], d / "mlp.xml")
    out["add.xml"] = builders.to_ir(out["add.onnx"], d / "add.xml")
    return out


@pytest.fixture(scope="session")
def mlp_weights():
    return builders.mlp_weights()


def run_cli(*args: str, env: dict | None = None):
    """Run the real `edgekit` command in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    """The real sample packages, built once (idempotent: reused when up to date)."""
    from samples.build import build, sample_path

    build()
    return {kind: sample_path(kind) for kind in ("image", "text", "audio")}
