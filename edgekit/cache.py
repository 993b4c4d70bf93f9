"""The on-disk cache of ``fastest`` decisions, in the user's cache folder.

Keyed by the model's hash, the device inventory, the precision policy and the
versions of edgekit and every runtime, so any change there measures again.
``EDGEKIT_CACHE_DIR`` overrides the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    env = os.environ.get("EDGEKIT_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgekit", appauthor=False))


def _file() -> Path:
    return cache_dir() / "fastest.json"


def key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _read() -> dict:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def get(k: str) -> dict | None:
    return _read().get(k)


def put(k: str, entry: dict) -> None:
    """Store a decision; written to a temp file and renamed so readers never see half a file."""
    path = _file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read()
        data[k] = {**entry, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fastest-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home must not break loading
        log.warning("could not write the fastest-device cache %s: %s", path, e)
