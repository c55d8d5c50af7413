"""How gunicorn serves the Flask API: whole requests first, then a thread (``gunicorn.conf.py``).

A client that sends its request slowly must not hold a thread: with gunicorn's threaded
(gthread) workers, 8 clients sending one header line every few seconds took every thread
of 2 workers x 4 threads and ``/health`` stopped answering
(``benchmarks/bench_slow_clients.py``). So each gunicorn worker runs an asyncio event loop
(gunicorn's own ASGI worker) that reads every request completely first:

- the request head must arrive within ``HEAD_TIMEOUT_S`` of connecting (or of the previous
  answer on a kept-alive connection), else the connection is closed;
- the body is read into a spooled temporary file (memory up to ``SPOOL_MEMORY_BYTES``, then
  disk), with no pause longer than ``BODY_IDLE_TIMEOUT_S`` and ``BODY_TIMEOUT_S`` in all,
  else 408;

and only then runs the Flask app (WSGI, through ``a2wsgi``) in a pool of ``API_THREADS``
real threads. A slow client costs a coroutine and a socket, never a thread, and the
CPU-heavy analysis of an uploaded recording still runs in a real thread beside the others
(NumPy releases the GIL), so ``/health`` keeps answering.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import tempfile
import time
from http import HTTPStatus

from a2wsgi import WSGIMiddleware
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

#: Seconds a client may take to send a request head (request line and headers), counted
#: from connecting or from the previous answer on a kept-alive connection.
HEAD_TIMEOUT_S = 5
#: Seconds a request body may pause (no byte arriving) before the request gets a 408.
BODY_IDLE_TIMEOUT_S = 15
#: Seconds a whole request body may take: 200 MB at 0.7 MB/s.
BODY_TIMEOUT_S = 300
#: A body up to this size stays in memory while it is read; a larger one goes to disk.
SPOOL_MEMORY_BYTES = 1 << 20
#: Size of the pieces a buffered body is handed to an ASGI app in.
REPLAY_CHUNK_BYTES = 1 << 20
#: Scope key under which the buffered body (file, size in bytes) reaches the WSGI wrapper.
BODY_SCOPE_KEY = "sleeplab.buffered_body"
DEFAULT_THREADS = 4
#: The largest body accepted when the app does not say (Flask's MAX_UPLOAD_BYTES does).
DEFAULT_MAX_BODY_BYTES = 200 * 2**20


class BodyTimeout(Exception):
    """The client did not send its request body in time."""


class BodyTooLarge(Exception):
    """A body without Content-Length grew past the largest body the API accepts."""


class ClientGone(Exception):
    """The client closed the connection before its request was complete."""


def error_message(status: int, message: str) -> tuple[dict, bytes]:
    """An error answer in the API's JSON error shape (``server.error_response``)."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps({"status": status, "error": phrase, "message": message}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, body


def declared_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BufferedRequests:
    """ASGI middleware: read a request's whole body before the app sees the request.

    Parameters
    ----------
    app : ASGI application (here the Flask app behind ``a2wsgi``).
    max_body_bytes : int
        The largest body the API accepts. A larger declared ``Content-Length`` is passed
        to the app unread, which refuses it (413) without reading it; a body without
        ``Content-Length`` that grows past it is refused here (413).
    """

    def __init__(self, app, max_body_bytes: int, idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
                 total_timeout_s: float = BODY_TIMEOUT_S):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope, receive, send):
        length = declared_length(scope) if scope["type"] == "http" else None
        if scope["type"] != "http" or (length is not None and length > self.max_body_bytes):
            return await self.app(scope, receive, send)
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        try:
            try:
                await self._read_body(receive, body)
            except ClientGone:
                return
            except BodyTimeout:
                return await self._refuse(send, 408, "the request body did not arrive in "
                                          "time; send it again")
            except BodyTooLarge:
                return await self._refuse(send, 413, f"the request body is larger than "
                                          f"{self.max_body_bytes / 2**20:.3g} MB")
            size = body.tell()
            body.seek(0)
            await self.app({**scope, BODY_SCOPE_KEY: (body, size)}, self._replay(body, receive),
                           send)
        finally:
            body.close()

    async def _read_body(self, receive, body) -> None:
        deadline = time.monotonic() + self.total_timeout_s
        size = 0
        while True:
            wait_s = min(self.idle_timeout_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait_s, 0.0))
            except asyncio.TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            body.write(chunk)
            if not message.get("more_body", False):
                return

    @staticmethod
    def _replay(body, receive):
        """A ``receive`` that hands the buffered body on, then waits as the real one does."""
        done = False

        async def replay():
            nonlocal done
            if done:
                return await receive()
            chunk = body.read(REPLAY_CHUNK_BYTES)
            done = len(chunk) < REPLAY_CHUNK_BYTES
            return {"type": "http.request", "body": chunk, "more_body": not done}
        return replay

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        start, body = error_message(status, message)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def read_buffered_body(wsgi_app):
    """WSGI wrapper: the app reads the buffered body straight from its file, with its length.

    Quicker than a2wsgi's hand-over piece by piece through the event loop, and a body
    sent without Content-Length (chunked) gets one: a2wsgi does not set
    ``wsgi.input_terminated``, so Werkzeug would read such a body as empty.
    """
    def app(environ, start_response):
        buffered = environ.get("asgi.scope", {}).get(BODY_SCOPE_KEY)
        if buffered is not None:
            environ["wsgi.input"], size = buffered
            environ["CONTENT_LENGTH"] = str(size)
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        return wsgi_app(environ, start_response)
    return app


def buffered_wsgi(wsgi_app, threads: int | None = None) -> BufferedRequests:
    """``wsgi_app`` (the Flask API) as an ASGI app that reads each request completely,
    then runs the WSGI app in a pool of ``threads`` (``API_THREADS``, default 4) threads."""
    threads = threads or int(os.environ.get("API_THREADS") or DEFAULT_THREADS)
    config = getattr(wsgi_app, "config", {})
    largest = max(config.get("MAX_UPLOAD_BYTES") or 0, config.get("MAX_CONTENT_LENGTH") or 0)
    return BufferedRequests(WSGIMiddleware(read_buffered_body(wsgi_app), workers=threads),
                            largest or DEFAULT_MAX_BODY_BYTES)


class _HeadTimeoutProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 protocol with a time limit on the first request head too.

    gunicorn limits the wait for a kept-alive connection's next request to ``keepalive``
    seconds (the timer stops only once the head is complete), but not the first request's
    head: a client that trickles it would keep its connection for ever. The same timer is
    started on connect. Connections over ``worker_connections`` are closed at once.
    """

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.worker.nr_conns > self.worker.worker_connections:
            self._close_transport()
        elif self._request_ready is not None and self.reader is None:  # HTTP/1
            self._arm_keepalive_timer()


class Worker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker: :class:`_HeadTimeoutProtocol`, and the WSGI app it loads
    (``server:create_app()``) served through :func:`buffered_wsgi`."""

    def init_process(self):
        # The worker builds its protocol from this module name; this process only.
        gasgi.ASGIProtocol = _HeadTimeoutProtocol
        super().init_process()

    def handle_exit_signal(self):
        # Stop accepting at once, not at the next turn of the once-a-second heartbeat
        # loop: after `kill -HUP` (tokens file reload) an old worker must not take new
        # requests with the old tokens. Requests in flight still finish.
        super().handle_exit_signal()
        for server in self.servers:
            server.close()

    def load_wsgi(self):
        super().load_wsgi()
        if not (inspect.iscoroutinefunction(self.asgi)
                or inspect.iscoroutinefunction(getattr(self.asgi, "__call__", None))):
            self.asgi = buffered_wsgi(self.asgi)
