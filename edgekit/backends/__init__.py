"""Registry of backends: name -> implementation, imported lazily.

Built-in backends are named by import path so that ``import edgekit`` imports no
runtime. Tests and plugins may :func:`register` their own (for example a
fault-injecting backend).
"""

from __future__ import annotations

import importlib
import logging
import threading

from ..errors import DeviceNotAvailableError
from ..types import Device, DeviceKind
from .base import Backend, BackendStatus, Session

__all__ = ["Backend", "BackendStatus", "Session", "get", "names", "register", "unregister",
           "resolve_name", "all_devices"]

log = logging.getLogger(__name__)

_BUILTIN: dict[str, str] = {
    "onnxruntime": "edgekit.backends.ort:OnnxRuntimeBackend",
    "openvino": "edgekit.backends.ov:OpenVinoBackend",
    "litert": "edgekit.backends.litert:LiteRtBackend",
}
ALIASES = {"ort": "onnxruntime", "ov": "openvino", "tflite": "litert", "tensorflowlite": "litert"}

_registry: dict[str, str | Backend] = dict(_BUILTIN)
_lock = threading.Lock()


def register(name: str, backend: Backend | str) -> None:
    """Add (or replace) a backend under ``name``: an instance or "module:Class"."""
    with _lock:
        _registry[name] = backend


def unregister(name: str) -> None:
    """Remove a backend; built-ins come back with :func:`reset`."""
    with _lock:
        _registry.pop(name, None)


def reset() -> None:
    """Restore the built-in registry and forget what backends discovered."""
    with _lock:
        _registry.clear()
        _registry.update(_BUILTIN)


def names() -> list[str]:
    return list(_registry)


def resolve_name(name: str) -> str | None:
    """Canonical backend name for ``name`` or an alias ("ort", "ov", "tflite"), else None."""
    key = name.lower()
    key = ALIASES.get(key, key)
    return key if key in _registry else None


def get(name: str) -> Backend:
    """The backend registered under ``name``, instantiated on first use."""
    canonical = resolve_name(name)
    if canonical is None:
        raise DeviceNotAvailableError(
            f"unknown backend {name!r}; known backends: {', '.join(_registry)}"
        )
    with _lock:
        entry = _registry[canonical]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            try:
                entry = getattr(importlib.import_module(module_name), attr)()
            except Exception as e:  # a broken plugin is reported, never fatal
                log.warning("backend %s (%s) does not load: %s", canonical, module_name, e)
                entry = _Unloadable(canonical, f"{module_name} does not import: {e}")
            _registry[canonical] = entry
        return entry


class _Unloadable:
    """Stands in for a backend whose module failed to import."""

    formats = native = frozenset()

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def status(self) -> BackendStatus:
        return BackendStatus(False, reason=self.reason)

    def devices(self) -> list[Device]:
        return []

    def open(self, *args, **kwargs):
        raise DeviceNotAvailableError(f"backend {self.name} is unavailable: {self.reason}")


def all_devices() -> list[Device]:
    """Every device of every registered backend; a broken backend shows as one unavailable row."""
    out: list[Device] = []
    for name in names():
        backend = get(name)
        status = backend.status()
        if not status.available:
            out.append(Device(name, "-", DeviceKind.CPU, name, available=False, reason=status.reason))
            continue
        out.extend(backend.devices())
    return out
