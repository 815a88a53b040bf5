"""The sync interface of ``dssync serve``: the HTTP endpoints the peer calls, and the server
under them (shared with the local control endpoints, ``dssync.appliance.control``).

A request is authenticated (``auth.check_request``: the pair's secret, single use, bound to this
server's certificate) before any work; a refused one is answered 401 unsigned, counted by
reason, and logged at most once a minute per reason: a port scan raises no alarm. A caller
that has the secret but may not pair (model, version, role) is the configured peer, and so is a
refused request from the configured peer's address: that refusal is noted with the service (an
alarm). Every other reply is signed for the request it
answers; the snapshot's frames carry chained tags.

The server holds against idle and slow clients: TLS handshakes run on the connection's own
thread with a deadline (never in ``accept``), a request's head must arrive within
``HEAD_TIMEOUT_S`` (a watchdog closes the connection otherwise), every read and write has a
timeout, connections beyond ``MAX_CONNECTIONS`` are closed at once, and the query's sizes and
waits are capped (``protocol.MAX_LOG_BYTES``, ``MAX_WAIT_MS``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
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
from dssync.errors import (
    ClockSkewError,
    CorruptLogError,
    NotFoundError,
    OffsetOutOfRangeError,
    PairingRefusedError,
)
from dssync.log.filelog import FileLog
from dssync.process import StopFlag
from dssync.sync import auth, protocol, snapshot

log = logging.getLogger("dssync.service")
HANDSHAKE_TIMEOUT_S = 10.0
HEAD_TIMEOUT_S = 30.0
"""A connection has this long to send a request's head (first or next, keep-alive included)."""
IO_TIMEOUT_S = 30.0
"""Each read or write on a connection (a peer that stops reading a reply is dropped)."""
MAX_CONNECTIONS = 512
"""Connections served at once; the next are closed as they arrive."""
REFUSAL_LOG_EVERY_S = 60.0


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

    def served_end(self, beyond: int, wait_s: float) -> int:
        """One past the last offset of the own log the peer may be served (what is durable),
        after waiting up to ``wait_s`` for it to pass ``beyond`` (less if the service stops)."""
        ...

    def snapshot_rows(self) -> AbstractContextManager[tuple[Iterator[Row], int, int, str]]:
        """The store's rows from a consistent view, streamed (consumed inside the block), their
        count, the own-log offset they cover, and the store id."""
        ...

    def pack_reader(self) -> Packs:
        """A reader of the store's segment bytes for this thread (the caller closes it)."""
        ...

    def mirror_reader(self, peer: str) -> FileLog:
        """A new reader of this appliance's mirror of ``peer``'s log (the caller closes it);
        ``NotFoundError`` when it holds none (not mirrored yet, or a Kafka transport)."""
        ...

    def log_position(self, at: int) -> dict[str, Any]:
        """Where the own log stands seen from ``at`` (start, end, time at ``at``, bytes)."""
        ...

    def digest(self) -> dict[str, Any]:
        """The store's digest and offsets."""
        ...


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    head_timeout: float | None = None
    """Seconds a connection has to send a request's head (None: no deadline, loopback tools)."""
    request_tag = ""
    """The tag of the authenticated request being answered ('' if none): replies are signed for it."""

    def handle_one_request(self) -> None:
        self.request_tag = ""
        if self.head_timeout is not None:
            self.server.watch(self.connection, self.head_timeout)
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch(self.connection)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.unwatch(self.connection)  # the head is in: the handler's own timeouts apply
        return ok

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per state change is logged by the service, not one per request

    def _send(self, status: int, body: bytes | list[bytes], ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        """One response; a list body is sent part by part (log batches are never joined)."""
        parts = body if isinstance(body, list) else [body]
        headers = dict(headers or {})
        if self.request_tag:
            headers[auth.H_REPLY] = auth.reply_tag(self.server.key, self.request_tag, status, headers,
                                                   sum(len(p) for p in parts))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(len(p) for p in parts)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        for p in parts:
            self.wfile.write(p)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, default=str).encode())

    def _error(self, status: int, message: str) -> None:
        self._send(status, message.encode(), "text/plain")


class SyncHandler(Handler):
    timeout = IO_TIMEOUT_S
    head_timeout = HEAD_TIMEOUT_S
    disable_nagle_algorithm = True
    """A reply leaves as several TLS records (headers, then each batch): with Nagle's algorithm
    the later ones wait for the peer's delayed ACK of the first (about 40 ms on Linux)."""

    def do_GET(self) -> None:
        svc = cast(PeerFacing, self.server.service)
        url = urlparse(self.path)
        try:
            ident = auth.check_request(self.server.key, "GET", self.path, self.headers, self.server.fingerprint,
                                       self.server.guard)
        except ClockSkewError as exc:  # authentic, its clock off: tell it ours, signed
            self.server.refused(self.client_address[0], exc.message)
            self.request_tag = self.headers[auth.H_AUTH]
            self._send(auth.SKEW_STATUS, exc.message.encode(), "text/plain",
                       headers={auth.H_SERVER_TIME: f"{time.time():.3f}"})
            return
        except PairingRefusedError as exc:
            self.server.refused(self.client_address[0], exc.message)
            if self.client_address[0] == self.server.peer_address():
                svc.note_refusal(svc.config.sync.peer, exc.message)  # the configured peer's host: an alarm
            self.close_connection = True
            self._error(401, exc.message)
            return
        self.request_tag = self.headers[auth.H_AUTH]
        try:
            caller = protocol.Identity.from_json(ident)
            reason = protocol.incompatibility(svc.identity(), caller)
            if reason:
                raise PairingRefusedError(f"refusing to pair with {caller.name}: {reason}")
        except PairingRefusedError as exc:
            svc.note_refusal(svc.config.sync.peer, exc.message)  # it has the secret: the configured peer
            self._error(409, exc.message)
            return
        if svc.config.sync.state != "active":
            self._error(503, f"{svc.config.name} is {svc.config.sync.state}")
            return
        try:
            q = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
        except ValueError:
            self._error(400, "query values are integers")
            return
        if url.path == "/v1/identity":
            self._send(200, svc.identity().to_json().encode())
        elif url.path == "/v1/log":
            self._log(svc, q.get("from", 0), min(q.get("max_bytes", 4 << 20), protocol.MAX_LOG_BYTES),
                      min(q.get("wait_ms", 0), protocol.MAX_WAIT_MS))
        elif url.path == "/v1/mirror":
            self._mirror(svc, caller.name, q.get("from", 0), min(q.get("max_bytes", 4 << 20), protocol.MAX_LOG_BYTES))
        elif url.path == "/v1/snapshot":
            self._snapshot(svc)
        elif url.path == "/v1/position":
            self._json(200, svc.log_position(q.get("at", 0)))
        elif url.path == "/v1/digest":
            self._json(200, svc.digest())
        else:
            self._error(404, "unknown endpoint")

    def _log(self, svc: PeerFacing, frm: int, max_bytes: int, wait_ms: int) -> None:
        try:
            end = svc.served_end(frm, 0)
            log = svc.log_reader()
        except NotFoundError as exc:
            self._error(404, exc.message)
            return
        start = log.start_offset()
        if frm >= max(start, end):  # nothing new that is durable
            if frm > end and frm > log.end_offset():  # not even written: this log was recreated or cut
                self._json(416, {"start": start, "end": end, "retired": log.retired()})
                return
            end = svc.served_end(frm, wait_ms / 1000)  # wait for the next durable batch
        if frm < start:
            self._json(416, {"start": start, "end": end, "retired": log.retired()})
            return
        out: list[bytes] = []
        size = 0
        try:
            for b in log.batches(frm) if frm < end else ():
                if b.next_offset > end or (out and size + b.size > max_bytes):
                    break
                out.append(b.raw)
                size += b.size
        except OffsetOutOfRangeError:
            self._json(416, {"start": log.start_offset(), "end": log.end_offset(), "retired": log.retired()})
            return
        self._send(200, out, "application/octet-stream",
                   {"X-Dssync-Log-Start": str(start), "X-Dssync-Log-End": str(end)})

    def _mirror(self, svc: PeerFacing, peer: str, frm: int, max_bytes: int) -> None:
        """The caller's own log as this appliance mirrored it, from ``frm``: how an appliance
        whose log was damaged takes back what it lost (``dssync.sync.repair``). The batches are
        the caller's, byte for byte; the intact ones before any damage here are served."""
        try:
            log = svc.mirror_reader(peer)
        except NotFoundError as exc:
            self._error(404, exc.message)
            return
        try:
            start, end = log.start_offset(), log.end_offset()
            if not start <= frm <= end:
                self._json(416, {"start": start, "end": end})
                return
            out: list[bytes] = []
            size = 0
            try:
                for b in log.batches(frm) if frm < end else ():
                    if out and size + b.size > max_bytes:
                        break
                    out.append(b.raw)
                    size += b.size
            except CorruptLogError as exc:
                if not out:
                    self._error(500, f"{svc.config.name}'s mirror of {peer}: {exc.message}")
                    return
        finally:
            log.close()
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
                signed = {"x-dssync-covers-to": str(covers_to), "x-dssync-store-id": store_id,
                          "x-dssync-rows": str(count)}
                reply = auth.reply_tag(self.server.key, self.request_tag, 200, signed, 0)
                self.send_header(auth.H_REPLY, reply)
                self.end_headers()
                tags = auth.StreamTags(self.server.key, reply)
                for raw in snapshot.batches(snapshot.row_events(rows, packs), int(time.time() * 1000)):
                    self.wfile.write(b"%x\r\n%s%s\r\n" % (len(raw) + auth.TAG_BYTES, raw, tags.next(raw)))
                end = auth.END_FRAME + tags.end()
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
        finally:
            packs.close()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    service: Any
    """The object the handlers serve (each handler class says what it needs of it)."""
    key = b""
    fingerprint = ""
    """The sync link's MAC key and this server's certificate fingerprint (``auth``)."""
    tls: ssl.SSLContext | None = None

    def __init__(self, address: tuple[str, int], handler: type[Handler]) -> None:
        super().__init__(address, handler)
        self.guard = auth.ReplayGuard()
        self.refusals: dict[str, int] = {}
        """Refused requests by reason (the first words of the refusal: bounded)."""
        self.dropped_connections = 0
        self._peer_ip: str | None = None
        self._logged: dict[str, float] = {}
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._watchdog, name="dssync-sync-watchdog", daemon=True).start()

    # -------------------------------------------------------------- connections

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.dropped_connections += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.tls is not None:
                request = self._handshake(request, client_address)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _handshake(self, sock: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        """TLS on the connection's own thread, within HANDSHAKE_TIMEOUT_S."""
        assert self.tls is not None
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls_sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            tls_sock.do_handshake()
            return tls_sock
        except (OSError, ValueError) as exc:
            self.refused(client_address[0], f"TLS handshake failed ({type(exc).__name__})")
            self.shutdown_request(sock)
            return None

    def watch(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._deadlines[sock] = time.monotonic() + seconds

    def unwatch(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def _watchdog(self) -> None:
        """Close connections whose request head is overdue (slowloris: a byte now and then
        keeps a read timeout from ever firing)."""
        while not self._closed.wait(1.0):
            now = time.monotonic()
            with self._lock:
                late = [s for s, d in self._deadlines.items() if d < now]
                for s in late:
                    del self._deadlines[s]
            for s in late:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    # -------------------------------------------------------------- refusals

    def peer_address(self) -> str:
        """The configured peer's IP address (resolved once): a refusal of a request from there
        is the pair's problem (an alarm); from anywhere else, a scan's (a counter)."""
        if self._peer_ip is None:
            host = self.service.config.sync.peer.rpartition(":")[0].strip("[]")
            try:
                self._peer_ip = str(socket.getaddrinfo(host, None)[0][4][0])
            except (OSError, IndexError):
                self._peer_ip = host
        return self._peer_ip

    def refused(self, address: str, reason: str) -> None:
        """Count (and log at most once a minute per reason) a request refused before any work."""
        kind = reason.split(":")[0].split("(")[0].strip()[:60]
        now = time.monotonic()
        with self._lock:
            if kind not in self.refusals and len(self.refusals) >= 64:
                kind = "other"
            self.refusals[kind] = self.refusals.get(kind, 0) + 1
            quiet = now - self._logged.get(kind, -REFUSAL_LOG_EVERY_S) < REFUSAL_LOG_EVERY_S
            if not quiet:
                self._logged[kind] = now
        if not quiet:
            log.warning("refused a request from %s: %s (%d refused for this reason so far; logged at most once a "
                        "minute)", address, reason, self.refusals[kind])

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {"refused_requests": dict(self.refusals), "dropped_connections": self.dropped_connections}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A peer or tool that hangs up mid-answer (a killed mirror) is routine: one quiet line,
        no traceback; anything else is logged as a warning."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ssl.SSLError)):
            log.debug("client %s went away: %s", client_address[0], exc)
        else:
            log.warning("request from %s failed: %s", client_address[0], exc)


def start(address: tuple[str, int], handler: type[Handler], service: object,
          tls: tuple[ssl.SSLContext, str, bytes] | None = None) -> tuple[Server, threading.Thread]:
    """Serve ``handler`` requests for ``service`` on a daemon thread. ``tls``: (context, this
    certificate's fingerprint, the link's MAC key) for the sync interface."""
    srv = Server(address, handler)
    srv.service = service
    if tls is not None:
        srv.tls, srv.fingerprint, srv.key = tls
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    return srv, t
