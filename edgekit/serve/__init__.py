"""A local model service: model packages over the Open Inference Protocol (KServe v2 / Triton HTTP).

    edgekit repo add samples/build/efficientnet-lite0 --repository models/
    edgekit serve models/                         # http://127.0.0.1:8000/v2/...

    from edgekit.serve import create_app          # to embed in an ASGI server of your own

Every inference goes through the same :class:`edgekit.Model` and task objects as the SDK.
"""

from __future__ import annotations

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
