"""The simulator's HTTP server: the album-assets API as documented, on loopback.

Every answer is written in one ``write`` (headers and body together): Python's default
of two writes meets Nagle's algorithm and delayed ACKs and costs ~40 ms a request.

Besides the API it serves ``/healthz`` and a small admin API for tests and benchmarks
(same bearer key): ``GET /_sim/truth``, ``GET /_sim/stats``, ``POST /_sim/churn``
(``{"adds": n, "removes": n, "updates": n}``) and ``POST /_sim/faults`` (a plan, see
``faults.Faults.configure``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from feed.simulator.faults import Fault, Faults
from feed.simulator.library import CursorMissing, Library

log = logging.getLogger(__name__)

MAX_LIMIT = 200
MAX_IDS = 100


class Simulator:
    """Libraries, faults and an HTTP server around them. Use as a context manager."""

    def __init__(
        self,
        libraries: list[Library] | None = None,
        *,
        api_key: str = "sim-key",
        host: str = "127.0.0.1",
        port: int = 0,
        churn_per_second: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.libraries = {lib.library_id: lib for lib in (libraries or [Library()])}
        self.api_key = api_key
        self.faults = Faults(seed)
        self.requests: deque[str] = deque(maxlen=20_000)
        self.counts: Counter[str] = Counter()
        self.churn_per_second = churn_per_second
        self._host = host
        self._server = _Server((host, port), _Handler)
        self._server.sim = self
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def library(self) -> Library:
        return next(iter(self.libraries.values()))

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> Simulator:
        # A short poll interval: stop() waits for the loop to notice, 0.5 s by default,
        # which every test that starts a simulator would pay.
        serve = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sim-http",
            daemon=True,
        )
        serve.start()
        self._threads.append(serve)
        if self.churn_per_second > 0:
            churn = threading.Thread(target=self._churn_loop, name="sim-churn", daemon=True)
            churn.start()
            self._threads.append(churn)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _churn_loop(self) -> None:
        # Each tick adds, removes and updates about a third of the rate each.
        tick = 0.2
        budget = 0.0
        while not self._stop.wait(tick):
            budget += self.churn_per_second * tick
            whole = int(budget)
            if whole < 3:
                continue
            budget -= whole
            for lib in self.libraries.values():
                lib.churn(adds=whole // 3, removes=whole // 3, updates=whole - 2 * (whole // 3))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sim: Simulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("sim: %s", format % args)

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- dispatch ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        if path == "/healthz":
            self._json(200, {"status": "ok"})
            return
        # Logged before the key is checked: tests count the requests a refused client sends.
        sim.requests.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {sim.api_key}":
            self._json(401, {"error": "unauthorized", "detail": "invalid or missing API key"})
            return
        sim.counts[path.split("/")[2] if path.count("/") >= 2 else path] += 1
        if path.startswith("/_sim/"):
            self._admin(method, path)
            return
        fault = sim.faults.next_for(path, query)
        if sim.faults.latency_seconds:
            time.sleep(sim.faults.latency_seconds)
        if fault is not None and self._apply_pre(fault):
            return
        self._api(path, query, fault)

    def _apply_pre(self, fault: Fault) -> bool:
        """Faults that replace the answer; True when the request has been dealt with."""
        if fault.action == "status":
            self._raw(fault.status, fault.body.encode(), fault.headers)
        elif fault.action == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif fault.action == "timeout":
            time.sleep(fault.seconds)
            self.close_connection = True
        elif fault.action == "malformed":
            self._raw(200, b"<html>502 Bad Gateway</html>")
        elif fault.action == "wrong_shape":
            self._raw(200, b'{"items": [], "next": null}')
        elif fault.action == "empty_has_more":
            self._raw(200, b'{"data": [], "has_more": true}')
        elif fault.action == "delay":
            time.sleep(fault.seconds)
            return False
        else:
            return False
        return True

    # -- the API -----------------------------------------------------------------------

    def _api(self, path: str, query: dict[str, list[str]], fault: Fault | None) -> None:
        lib = self._library(query)
        if lib is None:
            return
        if path == "/api/album-assets":
            self._list_links(lib, query, fault)
        elif path.startswith("/api/album-assets/"):
            link_id = unquote(path[len("/api/album-assets/") :])
            rows = lib.lookup([link_id])
            if rows:
                self._json(200, rows[0])
            else:
                self._json(404, {"error": "not_found", "detail": f"no album asset {link_id}"})
        elif path == "/api/albums":
            self._list_albums(lib, query)
        else:
            self._json(404, {"error": "not_found", "detail": f"no route {path}"})

    def _library(self, query: dict[str, list[str]]) -> Library | None:
        libs = self.server.sim.libraries
        wanted = query.get("library_id", [None])[0]
        if wanted is None:
            if len(libs) == 1:
                return next(iter(libs.values()))
            self._json(400, {"error": "bad_request", "detail": "library_id is required"})
            return None
        lib = libs.get(wanted)
        if lib is None:
            self._json(404, {"error": "not_found", "detail": f"no library {wanted}"})
        return lib

    def _limit(self, query: dict[str, list[str]], default: int = 20) -> int | None:
        raw = query.get("limit", [str(default)])[0]
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            self._json(422, {"error": "validation", "detail": f"limit must be 1..200: {raw}"})
            return None
        return limit

    def _list_links(self, lib: Library, query: dict[str, list[str]], fault: Fault | None) -> None:
        limit = self._limit(query)
        if limit is None:
            return
        ids = [i for value in query.get("ids", []) for i in value.split(",") if i]
        if ids:
            if len(ids) > MAX_IDS:
                self._json(422, {"error": "validation", "detail": "at most 100 ids"})
                return
            self._json(200, {"data": lib.lookup(ids)[:limit], "has_more": False})
            return
        cursor = query.get("starting_after_id", [None])[0]
        mode = self.server.sim.faults.deleted_cursor
        try:
            rows, has_more = lib.page(
                cursor,
                limit,
                album_id=query.get("album_id", [None])[0],
                asset_id=query.get("asset_id", [None])[0],
                cursor_must_exist=mode != "continue",
                hidden=self.server.sim.faults.hidden,
            )
        except CursorMissing:
            status = 404 if mode == "error404" else 400
            detail = f"starting_after_id {cursor} not found"
            self._json(status, {"error": "invalid_cursor", "detail": detail})
            return
        if fault is not None:
            rows, has_more = self._bend_page(
                lib, rows, has_more, cursor=cursor, limit=limit, fault=fault
            )
        body = orjson.dumps({"data": rows, "has_more": has_more})
        if fault is not None and fault.action == "truncate":
            body = body[: max(1, len(body) // 2)]
        self._raw(200, body)

    def _bend_page(
        self,
        lib: Library,
        rows: list[dict[str, Any]],
        has_more: bool,
        *,
        cursor: str | None,
        limit: int,
        fault: Fault,
    ) -> tuple[list[dict[str, Any]], bool]:
        if fault.action == "repeat" and cursor is not None and cursor in lib.rows:
            return [lib.render(cursor)], True
        if fault.action == "overlap" and cursor is not None and cursor in lib.rows:
            # The previous page's last row shows up again at the top of this one.
            return [lib.render(cursor), *rows[: limit - 1]], has_more or len(rows) == limit
        if fault.action == "long_page":
            more, _ = lib.page(cursor, min(MAX_LIMIT, limit * 2) or 1, cursor_must_exist=False)
            if len(more) <= limit:
                more = more + more[:1]
            return more, has_more
        return rows, has_more

    def _list_albums(self, lib: Library, query: dict[str, list[str]]) -> None:
        limit = self._limit(query)
        if limit is None:
            return
        albums = lib.albums()
        cursor = query.get("starting_after_id", [None])[0]
        if cursor is not None:
            albums = [a for a in albums if a["id"] > cursor]
        self._json(200, {"data": albums[:limit], "has_more": len(albums) > limit})

    # -- admin -------------------------------------------------------------------------

    def _admin(self, method: str, path: str) -> None:
        sim = self.server.sim
        if path == "/_sim/truth" and method == "GET":
            truth = {lid: lib.truth() for lid, lib in sim.libraries.items()}
            self._json(200, truth)
        elif path == "/_sim/stats" and method == "GET":
            self._json(
                200,
                {
                    "counts": dict(sim.counts),
                    "links": {lid: len(lib) for lid, lib in sim.libraries.items()},
                },
            )
        elif path == "/_sim/churn" and method == "POST":
            spec = self._body()
            lib = sim.libraries.get(spec.pop("library_id", None) or "", sim.library)
            self._json(200, lib.churn(**spec))
        elif path == "/_sim/faults" and method == "POST":
            sim.faults.configure(self._body())
            self._json(200, {"pending": sim.faults.pending()})
        else:
            self._json(404, {"error": "not_found"})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        data = orjson.loads(self.rfile.read(length) or b"{}")
        return data if isinstance(data, dict) else {}

    # -- writing -----------------------------------------------------------------------

    def _json(self, status: int, doc: Any) -> None:
        self._raw(status, orjson.dumps(doc))

    def _raw(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)
        self.wfile.flush()
