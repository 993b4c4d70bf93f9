"""The boundary between edgekit and a runtime.

A :class:`Backend` knows its name, the formats it reads, whether its Python
package imports, which devices it sees, and opens a :class:`Session` for one
model on one device. A :class:`Session` has ``inputs``/``outputs`` specs and
``run(arrays) -> arrays`` in spec order; it must be safe to call from several
threads at once. Nothing above this boundary touches a runtime's own objects.

Contract for ``open``:
- raise :class:`~edgekit.errors.ModelFileError` when the *file* cannot be read
  (corrupt, truncated): selection stops, since no other device will do better;
- raise anything else when the *device* cannot take the model: selection records
  it and, under ``auto``/``fastest``, tries the next candidate;
- never return a session that runs somewhere other than the device asked for
  (detect the runtime's own silent fallbacks and raise instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..types import Device, Format, Precision, TensorSpec


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    version: str | None = None
    reason: str | None = None


@runtime_checkable
class Session(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str  # what it computes at, in words: "f32", "bf16", "as stored", ...

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    formats: frozenset[Format]
    native: frozenset[Format]  # formats this runtime is the first choice for
    # Whether ``open`` can be told to compute below the stored precision (fp16, bf16). Those that
    # cannot run a model as stored, so for them an fp16 file is what precision="fp16" asks for
    # (a backend without the attribute counts as one that can).
    sets_precision: bool

    def status(self) -> BackendStatus: ...

    def devices(self) -> list[Device]: ...

    def open(self, path: Path, fmt: Format, device: Device, precision: Precision,
             concurrency: int = 1) -> Session:
        """Open ``path`` on ``device``. ``concurrency`` is how many runs the caller will make at once:
        above 1, the runtime divides the cores between them (streams, threads per run)."""
        ...
