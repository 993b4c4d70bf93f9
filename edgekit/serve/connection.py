"""uvicorn's HTTP/1.1 connection (httptools) with the bounds the trusted servers put on a client.

uvicorn's httptools protocol bounds no part of a request outside its body: one header of 200 MiB,
sent without an end, grew the server by 367 MiB before any API key was checked; chunk trailers did
the same after the answer; a head sent a byte at a time, a connection that never sent anything and
one that sent a stray CRLF now and then were each held for good. As nginx bounds them
(``large_client_header_buffers``, ``client_header_timeout``, ``keepalive_timeout``, lingering close):

- a request's head (request line and headers) holds at most ``max_head`` bytes: 431;
- a head that spans reads must end within ``head_timeout_s`` of its first read: 408 (never while
  an earlier request on the connection is still being answered);
- after the head, at most ``max_head`` bytes in a row that carry no body (chunk headers, trailers):
  431, or a plain close once the request was answered;
- a connection with no request under way is closed after uvicorn's keep-alive timeout, however it
  got there;
- a request answered before its body was in (a 413, a 401): the rest of the body is read and
  dropped as uvicorn does, so the connection stays usable, but it must end within
  ``head_timeout_s`` of the answer, or the connection is closed;
- a client that half-closes after its request (``nc -N``, HTTP/1.0 stacks) still gets the answer;
- at shutdown, a request whose head or body has not arrived is answered 503 at once (it held the
  server for its whole grace period, then got a plain 500);
- a refusal is JSON like every other error, and the connection is read and dropped for
  :data:`LINGER_S` before it is closed: closing on unread bytes resets the connection, and the
  reset can discard the answer before the client reads it.

h11, uvicorn's other parser, is used where httptools is not installed; it bounds incomplete events
to the same size itself, but has none of the timers.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

log = logging.getLogger("edgekit.serve")

LINGER_S = 2.0  # how long a refused connection is read (and dropped) before it is closed


class _ConnectionLogger:
    """uvicorn's logger for one connection: its warnings ("Invalid HTTP request received.") name the
    client, as edgekit's own refusals do, and there is none for a head over the limit: the 431 is
    logged once, with its reason, where it is answered."""

    def __init__(self, logger: logging.Logger, protocol) -> None:
        self._logger, self._protocol = logger, protocol

    def warning(self, msg, *args, **kwargs) -> None:
        if not self._protocol._head_over:
            client = getattr(self._protocol, "client", None) or ("-", 0)
            self._logger.warning("%s: " + str(msg), client[0], *args, **kwargs)

    def __getattr__(self, name: str):  # level, log, error ...: the logger's own
        return getattr(self._logger, name)


def bounded_protocol(max_head: int, head_timeout_s: float, on_refuse=None):
    """The protocol class for ``uvicorn.Config(http=...)``: "h11" where httptools is missing.

    ``on_refuse(method, status)`` (method "" before the request line is in) is called for each
    answer given here rather than by the app (a 431, a 408 for a head, a 503 at shutdown), so that
    the metrics count them too.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    too_large = f"the request head (request line and headers) is over the limit of {max_head} bytes"
    no_body = f"{max_head} bytes of chunk headers or trailers came without body data"
    too_slow = f"the request head did not arrive within {head_timeout_s:g} s"
    no_tail = f"the rest of the body did not arrive within {head_timeout_s:g} s of the answer"

    class BoundedProtocol(HttpToolsProtocol):
        _in_head = False  # from a request's first byte to the end of its head
        _in_body = False  # from the end of its head to the end of the request
        _unbodied = 0  # bytes read in a row, inside the head or after it, that carried no body
        _got_body = False
        _head_over = False
        _messages = 0
        _head_timer = None
        _idle_timer = None
        _tail_timer = None  # the rest of an answered request's body
        _refused = False
        _eof = False  # the client half-closed: close once the answer under way is sent
        _method = ""  # the request's method, once its request line is in

        # -- connection and request boundaries ---------------------------------------------------

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.logger = _ConnectionLogger(self.logger, self)
            self._arm_idle()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._unbodied, self._head_over = True, 0, False
            self._method = ""  # until its request line is in (httptools answers "DELETE" before that)
            self._messages += 1
            self._cancel("_idle_timer")

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._method = self.parser.get_method().decode("ascii", "replace")

        def on_headers_complete(self) -> None:
            self._end_head()
            if len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > max_head:
                self._head_over = True
                raise ValueError(too_large)  # stops the parser; uvicorn answers through send_400_response
            self._in_body = True
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._got_body = True
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_body = False
            self._cancel("_tail_timer")
            super().on_message_complete()
            if self._answered():  # answered before its body was in (a 401, a 413)
                self._arm_idle()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing() or not self._answered():
                return
            if self._eof:
                self.transport.close()
            elif self._in_head:  # a head that waited for this answer
                self._arm_head()
            elif self._in_body:  # answered before its body was in: the rest must come in time
                self._tail_timer = self.loop.call_later(head_timeout_s, self._refuse, 408, no_tail)
            else:
                self._arm_idle()

        def eof_received(self):
            if self._in_head or self._in_body or self._answered():  # nothing to answer, or never whole
                return None  # asyncio closes the connection
            self._eof = True  # the request is in: answer it, then close
            return True

        def shutdown(self) -> None:
            cycle = self.cycle
            if self._in_head or (self._in_body and cycle is not None and not cycle.response_started):
                self._refuse(503, "the server is shutting down")
            else:
                super().shutdown()

        def connection_lost(self, exc) -> None:
            self._end_head()
            self._cancel("_idle_timer")
            self._cancel("_tail_timer")
            super().connection_lost(exc)

        # -- reads ---------------------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._refused:  # the answer is sent: what the client still sends is dropped unread
                return
            in_head, in_body, messages = self._in_head, self._in_body, self._messages
            self._got_body = False
            super().data_received(data)
            if self._refused:
                return
            if messages != self._messages:  # a new request began in this read
                if self._in_head and self._answered():  # and its head did not end in it: the clock starts
                    self._arm_head()
                return
            if self._got_body:
                self._unbodied = 0
            elif (in_head and self._in_head) or (in_body and self._in_body):
                # httptools keeps a header (or trailer) whole until it ends: reads that fall wholly
                # inside one are counted here, so an endless one is bounded to within a read.
                self._unbodied += len(data)
                if self._unbodied > max_head:
                    self._refuse(431, too_large if self._in_head else no_body)
                    return
            if self._in_head and self._answered():
                self._arm_head()

        def send_400_response(self, msg: str) -> None:  # uvicorn has logged "Invalid HTTP request received."
            if self._head_over:
                self._refuse(431, too_large)
            else:
                self._refuse(400, msg, logged=True)

        # -- helpers -------------------------------------------------------------------------------

        def _answered(self) -> bool:
            """No earlier request on this connection is still being answered."""
            return not self.pipeline and (self.cycle is None or self.cycle.response_complete)

        def _arm_head(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._refuse, 408, too_slow)

        def _arm_idle(self) -> None:
            self._cancel("_idle_timer")
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._close_idle)

        def _close_idle(self) -> None:
            self._idle_timer = None
            if not self._in_head and not self._in_body and self._answered() and not self.transport.is_closing():
                self.transport.close()

        def _cancel(self, name: str) -> None:
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

        def _end_head(self) -> None:
            self._in_head = False
            self._cancel("_head_timer")

        def _refuse(self, status: int, message: str, logged: bool = False) -> None:
            """Answer ``{"error": message}`` and close: the rest of this connection cannot be read."""
            self._end_head()
            if self._refused or self.transport.is_closing():
                return
            self._refused = True
            client = self.client[0] if self.client else "-"
            cycle = self.cycle  # this request's once its head is in, else the one before it
            if cycle is not None and cycle.response_complete and self._in_body:
                log.warning("%s: connection closed, its request already answered: %s", client, message)
                self.transport.close()  # nothing more is owed
                return
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:  # an answer is on its way: let it finish, then close
                    log.warning("%s: connection closed after the answer under way: %s", client, message)
                    cycle.keep_alive = False
                    return
                cycle.disconnected = True  # its handler stops waiting for a body that will not come
                cycle.message_event.set()
            if not logged:
                log.warning("%s: %d %s", client, status, message)
            if cycle is not None and not cycle.response_complete:  # the app counts it, with this status
                cycle.scope["edgekit.refused"] = status
            elif on_refuse is not None:
                on_refuse(self._method, status)
            body = json.dumps({"error": message}).encode()
            self.transport.write(b"".join([
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode(),
                b"content-type: application/json\r\n", f"content-length: {len(body)}\r\n".encode(),
                b"connection: close\r\n\r\n", body]))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(LINGER_S, self.transport.close)
            else:
                self.transport.close()

    return BoundedProtocol
