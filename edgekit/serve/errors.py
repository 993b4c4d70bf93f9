"""The service's two errors beyond edgekit's own, each one HTTP status."""

from __future__ import annotations

from ..errors import EdgekitError, UsageError


class NotFound(UsageError):
    """An unknown model or version (HTTP 404)."""


class NotReady(EdgekitError):
    """A known model or version that cannot serve now (HTTP 503); the message says why."""
