"""``edgekit serve``: the app on uvicorn, with the safety rules of the trusted servers.

Loopback by default; another address needs an API key (or ``allow_unauthenticated``). On
SIGTERM or Ctrl-C uvicorn stops accepting, lets in-flight requests finish (up to
``graceful_s``) and the process exits 0.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from .app import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY, MIN_API_KEY, create_app
from .connection import bounded_protocol
from .metrics import method_label
from .repository import Batching

log = logging.getLogger("edgekit.serve")

# A request's head (request line and headers) must fit in this many bytes, as nginx bounds it
# (large_client_header_buffers); it must also arrive within the body timeout: see connection.py.
MAX_HEAD = 64 * 1024

# How long an idle keep-alive connection stays open. uvicorn's own 5 s is shorter than clients keep
# pooled connections: tritonclient reuses one after 5.6 s of building a JSON request on a busy Zen 1
# and got a broken pipe, without retrying. KServe's server uses 65 s, past proxies' usual 60 s.
KEEP_ALIVE_S = 65.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(path: str | Path) -> str:
    """The key in ``path`` (first line, surrounding space removed); refuses an empty or short one."""
    p = Path(path)
    try:
        key = p.read_text(encoding="utf-8").strip().splitlines()[0].strip() if p.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise UsageError(f"{p}: cannot read the API key ({e})") from e
    if len(key) < MIN_API_KEY:
        raise UsageError(f"{p}: an API key needs at least {MIN_API_KEY} characters "
                         f"(try: openssl rand -hex 32 > {p})")
    _warn_if_others_can_read(p)
    return key


def _warn_if_others_can_read(path: Path) -> None:
    st = path.stat()
    can = key_file_exposure(st.st_mode, st.st_uid, os.getuid() if hasattr(os, "getuid") else None)
    if can:
        log.warning("%s: the API key file can be %s by other users of this machine (mode %s); chmod 600 %s",
                    path, " and ".join(can), oct(st.st_mode & 0o777)[2:], path)


def key_file_exposure(mode: int, owner: int, me: int | None) -> list[str]:
    """What other users can do to a key file (["read", "changed"]) that is worth a warning, as ssh
    refuses such keys: only the user's own file. Files owned by root or someone else (a container's
    mounted secret, 0444) are how deployments hand keys over."""
    if me is None or owner != me or owner == 0:
        return []
    return [what for bits, what in ((0o044, "read"), (0o022, "changed")) if mode & bits]


def serve(sources, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          api_key_file: str | Path | None = None, allow_unauthenticated: bool = False,
          max_body: int = DEFAULT_MAX_BODY, batching: Batching | None = None, instances: int = 1,
          poll_interval: float = 2.0, graceful_s: float = 30.0, keep_alive_s: float = KEEP_ALIVE_S,
          body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
          on_ready: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 after a graceful stop)."""
    import uvicorn

    api_key = read_api_key(api_key_file) if api_key_file else None
    if not is_loopback(host) and api_key is None and not allow_unauthenticated:
        raise UsageError(f"refusing to serve on {host} without an API key: anyone who can reach this address "
                         f"could use the models. Give --api-key-file FILE, or --allow-unauthenticated if the "
                         f"network is yours alone")
    app = create_app(sources, device=device, api_key=api_key, max_body=max_body, batching=batching,
                     instances=instances, poll_interval=poll_interval, body_timeout_s=body_timeout_s)
    sock = _bind(host, port)
    bound = sock.getsockname()
    url = f"http://{'[' + bound[0] + ']' if ':' in bound[0] else bound[0]}:{bound[1]}"

    def refused(method: str, status: int) -> None:  # answered by the connection, before any route
        app.state.metrics.http.labels(method_label(method), "other", str(status)).inc()

    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=graceful_s,
                            timeout_keep_alive=keep_alive_s, server_header=False, lifespan="on", loop="auto",
                            http=bounded_protocol(MAX_HEAD, body_timeout_s, on_refuse=refused),
                            h11_max_incomplete_event_size=MAX_HEAD)
    server = uvicorn.Server(config)
    if on_ready is not None:
        _after_startup(server, lambda: on_ready(url))
    # uvicorn re-raises the signal it stopped on; with these handlers that ends in exit code 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def _after_startup(server, callback: Callable[[], None]) -> None:
    """Call ``callback`` once uvicorn has finished starting (models loaded, socket listening)."""
    startup = server.startup

    async def startup_then_report(*args, **kwargs):
        await startup(*args, **kwargs)
        if server.started:
            callback()
    server.startup = startup_then_report


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's structured fields."""

    _FIELDS = ("client", "method", "path", "status", "duration_ms", "route", "model", "model_version")

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        doc.update({k: getattr(record, k) for k in self._FIELDS if hasattr(record, k)})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)
