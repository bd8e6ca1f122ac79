"""``xmask serve``'s HTTP server (the standard library's, one thread per connection) over a
:class:`~xmask.apps.serve.PredictService`.

Routes
    ``GET /``: the page (``static/serve.html`` and ``/serve.js``): drop an image, see the
    count, the masks on or off, a score slider, and a zone drawn by clicks counted.
    ``GET /health``: ``{"status": "ok", "model": ..., ...}``.
    ``POST /predict?conf=P&floor=P&zone=x1,y1 x2,y2 x3,y3&masks=0|1``: the image file's bytes as
    the body (``Content-Type: image/*`` or ``application/octet-stream``) → the JSON of
    :meth:`PredictService.predict`.
    ``POST /zones``: JSON points and zones → heads per zone (:meth:`PredictService.count_zones`).

Every error is JSON ``{"error": "..."}`` with its status: 400 a bad request or image, 404,
408 a body not sent in time, 411 no ``Content-Length``, 413 a body or image over the limits
(refused from ``Content-Length`` and the image header, before the body or the pixels are
read), 415 another content type, 503 the model busy or too slow. Nothing of a request is used
as a path. The server listens on ``127.0.0.1`` unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from xmask.apps.serve import PredictQuery, PredictService, RequestError, ServeLimits
from xmask.apps.zones import MAX_FILE_BYTES
from xmask.errors import UsageError
from xmask.inference.predictor import Predictor

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

STATIC = Path(__file__).resolve().parent / "static"
"""The page's files (package data)."""

PAGES = {
    "/": ("serve.html", "text/html; charset=utf-8"),
    "/serve.js": ("serve.js", "text/javascript; charset=utf-8"),
}
"""The files ``GET`` serves: a fixed table, never a path taken from the request."""

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self' 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
}

DRAIN_BYTES = 64 * 2**20
"""At most this much of a refused body is read and dropped, so that a client still sending it
reads the refusal rather than a reset connection."""

IMAGE_TYPES = ("image/", "application/octet-stream")
JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class ServeRequest:
    """The options of ``xmask serve``.

    Attributes:
        model: a model name or folder, or a training run (None: the shipped model).
        which: the network of a run.
        threshold: ``"auto"`` or a logit: the count threshold when a request gives no ``conf``.
        scale: the scale rule (``"auto"``: the model's).
        device: ``"auto"``, ``"cpu"``, ``"cuda:N"``.
        backend: what runs the network (``"auto"``: the int8 graph on a CPU where the model
            has one; :meth:`~xmask.inference.predictor.Predictor.load`).
        mask_grid: masks on blocks of this many pixels a side (:mod:`xmask.segment.grid`).
        host: the address to listen on (a loopback one unless the user says otherwise).
        port: the port (0: any free one).
        limits: what one request may ask.
    """

    model: str | None = None
    which: str = "teacher"
    threshold: str = "auto"
    scale: str = "auto"
    device: str = "auto"
    backend: str = "auto"
    mask_grid: int = 1
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    limits: ServeLimits = field(default_factory=ServeLimits)


class ServeServer(ThreadingHTTPServer):
    """A threading HTTP server answering with one :class:`PredictService`."""

    daemon_threads = True

    def __init__(self, service: PredictService, host: str, port: int) -> None:
        self.service = service
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), ServeHandler)
        except OSError as err:
            raise UsageError(f"cannot listen on {host}:{port} ({err})") from err
        if not ipaddress.ip_address(self.server_address[0]).is_loopback:
            log.warning(
                "listening on %s: anyone who can reach this machine can use the model "
                "(no authentication)",
                self.server_address[0],
            )

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` of the bound address."""
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        self.service.close()


def open_server(request: ServeRequest) -> ServeServer:
    """Load the model once and bind the server (not yet serving: call ``serve_forever``).

    Raises:
        XmaskError: no loadable model, a bad device, or an address that cannot be bound.
    """
    predictor = Predictor.load(
        request.model,
        request.device,
        request.which,
        request.threshold,
        request.scale,
        backend=request.backend,
        mask_grid=request.mask_grid,
    )
    return ServeServer(PredictService(predictor, request.limits), request.host, request.port)


class ServeHandler(BaseHTTPRequestHandler):
    """One connection: the routes of the module docstring."""

    server: ServeServer
    server_version = "xmask"

    @property
    def service(self) -> PredictService:
        return self.server.service

    def setup(self) -> None:
        self.timeout = self.service.limits.timeout_s  # reading the request, the body
        super().setup()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self._send_json(200, self.service.health())
        elif path in PAGES:
            name, content_type = PAGES[path]
            self._send(200, (STATIC / name).read_bytes(), content_type)
        else:
            self.send_error(404, f"no page {path}")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        try:
            if url.path == "/predict":
                query = PredictQuery.parse(url.query)
                body = self._body(IMAGE_TYPES, self.service.limits.max_upload_bytes)
                answer = self.service.predict(body, query)
            elif url.path == "/zones":
                answer = self.service.count_zones(self._body(JSON_TYPES, MAX_FILE_BYTES))
            else:
                raise RequestError(404, f"nothing to POST to at {url.path}")
        except RequestError as err:
            self.send_error(err.status, err.message)
            return
        except Exception:
            log.exception("%s %s failed", self.command, url.path)
            self.send_error(500, "the server failed on this request (see its log)")
            return
        self._send_json(200, answer)

    def _body(self, types: tuple[str, ...], limit: int) -> bytes:
        """The request body, of one of ``types``, refused over ``limit`` bytes before it is
        read."""
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if not content_type.startswith(types):
            raise RequestError(415, f"send the body as {' or '.join(types)}, not {content_type!r}")
        if self.headers.get("Content-Length") is None:
            raise RequestError(411, "a Content-Length header is required")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(400, "bad Content-Length")
        if length > limit:
            self._drain(length)
            raise RequestError(413, f"a body of {length:,} bytes is over the limit of {limit:,}")
        try:
            body = self.rfile.read(length)
        except TimeoutError as err:
            raise RequestError(408, "the body was not sent in time") from err
        if len(body) < length:
            raise RequestError(400, "the body is shorter than its Content-Length")
        return body

    def _drain(self, length: int) -> None:
        """Read and drop up to :data:`DRAIN_BYTES` of a refused body."""
        self.close_connection = True
        left = min(length, DRAIN_BYTES)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error as JSON ``{"error": message}``."""
        self.log_error("%d %s", code, message)
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self._send_json(code, {"error": text})

    def _send_json(self, status: int, content: dict[str, Any]) -> None:
        self._send(status, json.dumps(content).encode("utf-8"), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)
