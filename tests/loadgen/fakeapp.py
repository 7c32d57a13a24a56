"""A narrow fake of the book-rental API for the load generator's own tests.

It answers the endpoints the locustfile uses, with the shapes of docs/CONTRACTS.md, from a
stdlib ``ThreadingHTTPServer`` on a free 127.0.0.1 port (HTTP/1.1, keep-alive). It checks
logins against the seed-user rule, counts what it was asked, remembers the rentals it made
and closed, can answer every rent with 409 (``rent_conflict=True``) and can answer returns
late (``return_delay_s``, for client time-outs). The real app is exercised end to end elsewhere.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CATEGORIES = ["fiction", "history", "science", "travel"]
BOOKS = 200


@dataclass
class FakeState:
    rent_conflict: bool = False
    return_delay_s: float = 0.0
    seeded_users: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: Counter[str] = field(default_factory=Counter)
    logins: Counter[int] = field(default_factory=Counter)
    tokens: dict[str, int] = field(default_factory=dict)
    next_rental: int = 1
    #: rental id -> (user id, book id), and the ids returned
    rentals: dict[int, tuple[int, int]] = field(default_factory=dict)
    returned: set[int] = field(default_factory=set)


def _route(method: str, path: str) -> str:
    """The endpoint template of a request path (what the fake counts hits by)."""
    path = re.sub(r"/\d+", "/{id}", path)
    return f"{method} {path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> int | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        return self.server.state.tokens.get(token)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        data = json.loads(raw) if raw else {}
        return data if isinstance(data, dict) else {}

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        path = url.path
        body = self._body() if method == "POST" else {}
        with state.lock:
            state.hits[_route(method, path)] += 1
        if method == "POST" and path == "/api/login":
            m = re.fullmatch(r"user(\d+)@example\.com", str(body.get("email", "")))
            if not m or body.get("password") != f"password{m.group(1)}" or int(m.group(1)) > state.seeded_users:
                return self._send(401, {"error": "wrong email or password"})
            seed_user = int(m.group(1))
            token = f"t{seed_user}-{len(state.tokens)}"
            with state.lock:
                state.tokens[token] = seed_user
                state.logins[seed_user] += 1
            return self._send(200, {"token": token, "expires_in": 3600, "user": {"id": seed_user}})
        if method == "GET" and path == "/api/categories":
            return self._send(200, {"items": CATEGORIES})
        if method == "GET" and path == "/api/books":
            q = parse_qs(url.query)
            page, per_page = int(q.get("page", ["1"])[0]), int(q.get("per_page", ["20"])[0])
            first = (page - 1) * per_page + 1
            items = [{"id": i, "title": f"Book {i}"} for i in range(first, min(BOOKS, first + per_page - 1) + 1)]
            return self._send(200, {"items": items, "page": page, "per_page": per_page, "total": BOOKS})
        if method == "GET" and (m := re.fullmatch(r"/api/books/(\d+)", path)):
            return self._send(200, {"id": int(m.group(1)), "title": "x", "authors": []})
        uid = self._user()
        if uid is None:
            return self._send(401, {"error": "not logged in"})
        if method == "GET" and path == "/api/profile":
            return self._send(200, {"id": uid, "email": f"user{uid}@example.com"})
        if method == "GET" and (m := re.fullmatch(r"/api/users/(\d+)/(rentals|charges)", path)):
            if int(m.group(1)) != uid:
                return self._send(403, {"error": f"user {uid} may not read user {m.group(1)}"})
            return self._send(200, {"items": []} if m.group(2) == "rentals" else {"user_id": uid, "total_cents": 0})
        if method == "POST" and path == "/api/rentals":
            if state.rent_conflict:
                return self._send(409, {"error": "no copy available"})
            with state.lock:
                rid = state.next_rental
                state.next_rental += 1
                state.rentals[rid] = (uid, int(body.get("book_id", 0)))
            return self._send(201, {"id": rid, "book_id": body.get("book_id")})
        if method == "POST" and (m := re.fullmatch(r"/api/rentals/(\d+)/return", path)):
            with state.lock:
                state.returned.add(int(m.group(1)))
            if state.return_delay_s:
                time.sleep(state.return_delay_s)
            return self._send(200, {"id": int(m.group(1))})
        return self._send(404, {"error": f"no route {method} {path}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeState


class FakeApp:
    """``with FakeApp() as app: app.url ...`` — serves on a free port until the block ends."""

    def __init__(self, **state: Any) -> None:
        self.state = FakeState(**state)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
