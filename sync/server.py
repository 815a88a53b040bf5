"""The sync interface of ``dssync serve``: the HTTP endpoints the peer calls.

Every request is authenticated with the pair's secret (``protocol.check_request``) and an
incompatible peer is refused. The handler sees the service through ``PeerFacing``, the few
things the peer may ask of it. ``Handler``, ``start`` and the server class are shared with the
local control endpoints (``dssync.appliance.control``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, urlparse

from dssync import config as cfgmod
from dssync.consumers.packs import Packs
from dssync.consumers.store import Row
from dssync.errors import OffsetOutOfRangeError, PairingRefusedError
from dssync.log.filelog import FileLog
from dssync.process import StopFlag
from dssync.sync import protocol, snapshot

log = logging.getLogger("dssync.service")


class PeerFacing(Protocol):
    """What the sync interface needs of the running service."""

    config: cfgmod.Config
    stopping: StopFlag

    def identity(self) -> protocol.Identity:
        """This appliance's identity, as the peer checks it."""
        ...

    def note_refusal(self, peer: str, reason: str) -> None:
        """Record (and log once per reason) a peer refused, or that refused us."""
        ...

    def log_reader(self) -> FileLog:
        """A new reader of the appliance's own log (the caller closes it)."""
        ...

    def snapshot_rows(self) -> AbstractContextManager[tuple[Iterator[Row], int, int, str]]:
        """The store's rows from a consistent view, streamed (consumed inside the block), their
        count, the own-log offset they cover, and the store id."""
        ...

    def pack_reader(self) -> Packs:
        """A reader of the store's segment bytes for this thread (the caller closes it)."""
        ...

    def log_position(self, at: int) -> dict[str, Any]:
        """Where the own log stands seen from ``at`` (start, end, time at ``at``, bytes)."""
        ...

    def digest(self) -> dict[str, Any]:
        """The store's digest and offsets."""
        ...


class Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per state change is logged by the service, not one per request

    def _send(self, status: int, body: bytes | list[bytes], ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        """One response; a list body is sent part by part (log batches are never joined)."""
        parts = body if isinstance(body, list) else [body]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(len(p) for p in parts)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        for p in parts:
            self.wfile.write(p)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, default=str).encode())

    def _error(self, status: int, message: str) -> None:
        self._send(status, message.encode(), "text/plain")


class SyncHandler(Handler):
    def do_GET(self) -> None:
        svc = cast(PeerFacing, self.server.service)
        url = urlparse(self.path)
        try:
            caller = protocol.check_request(svc.config.sync.secret, "GET", self.path, self.headers)
            reason = protocol.incompatibility(svc.identity(), caller)
            if reason:
                svc.note_refusal(caller.name, reason)
                raise PairingRefusedError(f"refusing to pair with {caller.name}: {reason}")
        except PairingRefusedError as exc:
            svc.note_refusal(self.client_address[0], exc.message)
            status = 401 if "secret" in exc.message else 409
            self._error(status, exc.message)
            return
        if svc.config.sync.state != "active":
            self._error(503, f"{svc.config.name} is {svc.config.sync.state}")
            return
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/v1/identity":
            self._send(200, svc.identity().to_json().encode())
        elif url.path == "/v1/log":
            self._log(svc, int(q.get("from", 0)), int(q.get("max_bytes", 4 << 20)), int(q.get("wait_ms", 0)))
        elif url.path == "/v1/snapshot":
            self._snapshot(svc)
        elif url.path == "/v1/position":
            self._json(200, svc.log_position(int(q.get("at", 0))))
        elif url.path == "/v1/digest":
            self._json(200, svc.digest())
        else:
            self._error(404, "unknown endpoint")

    def _log(self, svc: PeerFacing, frm: int, max_bytes: int, wait_ms: int) -> None:
        log = svc.log_reader()
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            start, end = log.start_offset(), log.end_offset()
            if frm < start or frm > end:
                self._json(416, {"start": start, "end": end, "retired": log.retired()})
                return
            if frm < end or time.monotonic() >= deadline or svc.stopping.is_set():
                break
            time.sleep(0.003)
        out: list[bytes] = []
        size = 0
        try:
            for b in log.batches(frm):
                if out and size + b.size > max_bytes:
                    break
                out.append(b.raw)
                size += b.size
        except OffsetOutOfRangeError:
            self._json(416, {"start": log.start_offset(), "end": log.end_offset(), "retired": log.retired()})
            return
        self._send(200, out, "application/octet-stream",
                   {"X-Dssync-Log-Start": str(start), "X-Dssync-Log-End": str(end)})

    def _snapshot(self, svc: PeerFacing) -> None:
        packs = svc.pack_reader()
        try:
            with svc.snapshot_rows() as (rows, count, covers_to, store_id):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("X-Dssync-Covers-To", str(covers_to))
                self.send_header("X-Dssync-Store-Id", store_id)
                self.send_header("X-Dssync-Rows", str(count))
                self.end_headers()
                for raw in snapshot.batches(snapshot.row_events(rows, packs), int(time.time() * 1000)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                self.wfile.write(b"0\r\n\r\n")
        finally:
            packs.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    service: Any
    """The object the handlers serve (each handler class says what it needs of it)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A peer or tool that hangs up mid-answer (a killed mirror) is routine: one quiet line,
        no traceback; anything else is logged as a warning."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.debug("client %s went away: %s", client_address[0], exc)
        else:
            log.warning("request from %s failed: %s", client_address[0], exc)


def start(address: tuple[str, int], handler: type[Handler], service: object,
          ssl_ctx: Any = None) -> tuple[_Server, threading.Thread]:
    """Serve ``handler`` requests for ``service`` on a daemon thread (TLS when ``ssl_ctx``)."""
    srv = _Server(address, handler)
    srv.service = service
    if ssl_ctx is not None:
        srv.socket = ssl_ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    return srv, t
