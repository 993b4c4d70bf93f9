"""``edgekit.devices()``: every backend's devices, available or not, with the reason."""

from __future__ import annotations

from . import backends
from .types import Device


def devices(*, available_only: bool = False) -> list[Device]:
    """Every device of every backend, CPU always present.

    Unavailable devices (a provider missing from this build, a delegate library not
    installed, a backend whose package does not import) are listed with ``reason``
    unless ``available_only``.
    """
    found = backends.all_devices()
    return [d for d in found if d.available] if available_only else found


def runtime_versions() -> dict[str, str | None]:
    """Version (or why unavailable) of every registered backend's runtime."""
    out = {}
    for name in backends.names():
        st = backends.get(name).status()
        out[name] = st.version if st.available else f"unavailable: {st.reason}"
    return out


def diagnostics(devs: list[Device] | None = None) -> dict:
    """What ``edgekit devices --json`` prints: edgekit's version, each runtime's, every device."""
    from . import __version__

    devs = devices() if devs is None else devs
    return {"edgekit": __version__, "runtimes": runtime_versions(), "devices": [d.to_dict() for d in devs]}
