"""HTTP server of the studio (standard library only): the page, its static files and a JSON API.

=========================================  ==============================================
``GET  /``                                 the page (``static/index.html``)
``GET  /static/<file>``                    ``studio.js``, ``studio.css``
``GET  /api/info``                         models, limits, example names, generator classes
``GET  /api/examples/<name>``              an example photo
``POST /api/image``                        image file bytes, or JSON ``{"example": name}``
                                           -> ``{"session", "width", "height", "note"}``
``POST /api/encode``                       ``{"session", "n_tokens", "priority"}`` or
                                           ``{"session", "edits"}`` -> ``{"job"}``
``POST /api/generate``                     ``{"class_id", "seed", "steps"}`` or
                                           ``{"session", "edits", "seed", "steps"}`` -> ``{"job"}``
``GET  /api/jobs/<id>``                    ``{"state", "stage", "elapsed", "result" | "error"}``
``GET  /api/sessions/<id>/<file>``         ``image.png``, ``before|after.png``,
                                           ``before|after.gpst``, ``layout.png``
=========================================  ==============================================

Errors answer ``{"error": message}`` with a 4xx status. When bound to a loopback address
the server only answers requests whose ``Host`` is a loopback name (DNS-rebinding guard).
"""
from __future__ import annotations

import ipaddress
import json
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from .engine import Studio
from .jobs import JobRunner
from .requests import Limits, StudioError

STATIC = {"index.html": "text/html; charset=utf-8", "studio.js": "text/javascript; charset=utf-8",
          "studio.css": "text/css; charset=utf-8"}
MAX_JSON_BYTES = 2**20
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _static(name: str) -> bytes:
    return resources.files("gpstoken.studio").joinpath("static").joinpath(name).read_bytes()


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StudioServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` holding the :class:`Studio` and its :class:`JobRunner`."""

    daemon_threads = True

    def __init__(self, studio: Studio, host: str = "127.0.0.1", port: int = 7860):
        self.studio = studio
        self.jobs = JobRunner(expected=(StudioError, ValueError, TypeError))
        self.loopback_only = _is_loopback(host)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        address, port = self.server_address[:2]
        host = address.decode() if isinstance(address, (bytes, bytearray)) else address  # always str for IP sockets
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        self.studio.close()


class _Handler(BaseHTTPRequestHandler):
    server: StudioServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the page polls jobs several times a second; errors reach the page instead."""

    # ------------------------------------------------------------------ replies
    def _send(self, status: int, body: bytes, ctype: str, extra: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, message: str, status: int) -> None:
        self._json({"error": message}, status)

    def _host_ok(self) -> bool:
        if not self.server.loopback_only:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        if _is_loopback(host):
            return True
        self._error(f"Host {host!r} refused: this studio answers only on localhost", HTTPStatus.FORBIDDEN)
        return False

    def _body(self, limit: int) -> Optional[bytes]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._error("Content-Length header required", HTTPStatus.LENGTH_REQUIRED)
            return None
        if length > limit:
            self.close_connection = True  # the body is not read
            self._error(f"file too large: {length / 2**20:.1f} MiB, the limit is {limit / 2**20:.0f} MiB",
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return None
        return self.rfile.read(length)

    def _json_body(self) -> Optional[dict]:
        body = self._body(MAX_JSON_BYTES)
        if body is None:
            return None
        try:
            obj = json.loads(body or b"{}")
        except json.JSONDecodeError as e:
            self._error(f"request body is not valid JSON: {e}", HTTPStatus.BAD_REQUEST)
            return None
        if not isinstance(obj, dict):
            self._error("request body must be a JSON object", HTTPStatus.BAD_REQUEST)
            return None
        return obj

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        studio = self.server.studio
        try:
            if not parts:
                return self._send(200, _static("index.html"), STATIC["index.html"])
            if parts[0] == "static" and len(parts) == 2 and parts[1] in STATIC:
                return self._send(200, _static(parts[1]), STATIC[parts[1]])
            if parts == ["api", "info"]:
                return self._json(studio.info())
            if parts[:2] == ["api", "examples"] and len(parts) == 3:
                return self._send(200, studio.example_bytes(parts[2]), "image/png")
            if parts[:2] == ["api", "jobs"] and len(parts) == 3:
                st = self.server.jobs.status(parts[2])
                return self._json(st) if st else self._error("unknown job", 404)
            if parts[:2] == ["api", "sessions"] and len(parts) == 4:
                data, ctype = studio.file(parts[2], parts[3])
                extra = {}
                if parse_qs(url.query).get("download"):
                    extra["Content-Disposition"] = f'attachment; filename="gpstoken-{parts[3]}"'
                return self._send(200, data, ctype, extra)
            self._error(f"no such page: {url.path}", 404)
        except StudioError as e:
            self._error(str(e), e.status)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return
        path = urlsplit(self.path).path.rstrip("/")
        studio = self.server.studio
        try:
            if path == "/api/image":
                if (self.headers.get("Content-Type") or "").startswith("application/json"):
                    req = self._json_body()
                    if req is not None:
                        self._json(studio.open_example(req.get("example")))
                    return
                data = self._body(studio.limits.max_upload_bytes)
                if data is not None:
                    name = self.headers.get("X-Filename") or "upload"
                    self._json(studio.open_image(data, name[:200]))
                return
            if path in ("/api/encode", "/api/generate"):
                req = self._json_body()
                if req is None:
                    return
                if path == "/api/encode":
                    studio.session(req.get("session"))  # unknown sessions fail now, not in the job
                    job = self.server.jobs.submit("encode", lambda report: studio.encode(
                        req.get("session"), n_tokens=req.get("n_tokens"), priority=req.get("priority"),
                        edits=req.get("edits"), report=report))
                else:
                    studio.generator  # noqa: B018 - fails now when generation is off
                    job = self.server.jobs.submit("generate", lambda report: studio.generate(
                        req.get("session"), class_id=req.get("class_id"), seed=req.get("seed", 0),
                        steps=req.get("steps", 30), edits=req.get("edits"), report=report))
                return self._json({"job": job.id}, 202)
            self._error(f"no such endpoint: {path}", 404)
        except StudioError as e:
            self._error(str(e), e.status)


def make_server(model: str = "default", generator: Optional[str] = "default", *, host: str = "127.0.0.1",
                port: int = 7860, device=None, limits: Limits = Limits(),
                examples: Optional[Path] = None) -> StudioServer:
    """Load the models (errors for wrong names/files raise here) and bind the server.

    port 0 picks a free port (``server.url`` tells which). Call ``serve_forever()`` on the
    result (or run it on a thread) and ``server_close()`` at the end.
    """
    studio = Studio(model, generator, device=device, limits=limits, examples=examples)
    try:
        studio.load()
        return StudioServer(studio, host, port)
    except BaseException:
        studio.close()
        raise


def serve(model: str = "default", generator: Optional[str] = "default", *, host: str = "127.0.0.1",
          port: int = 7860, device=None, limits: Limits = Limits(), examples: Optional[Path] = None,
          open_browser: bool = False) -> None:
    """Run the studio until Ctrl-C (what ``gpstoken studio`` and ``app.py`` call)."""
    server = make_server(model, generator, host=host, port=port, device=device, limits=limits, examples=examples)
    print(f"gpstoken studio on {server.url}  (Ctrl-C to stop)", flush=True)
    if not server.loopback_only:
        print(f"note: listening on {host}, reachable from other machines", file=sys.stderr, flush=True)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(server.url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
