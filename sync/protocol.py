"""The sync-interface protocol: HTTP over TLS between the two appliances.

Every request and every reply is authenticated under the pair's shared secret, and a request
is single use and bound to the server's certificate (``dssync.sync.auth``); TLS needs no CA
(``dssync.sync.tls``). A peer without the secret is refused (401), and so is one whose model or
software version differs (409), on both sides, with the reason.

Endpoints served by ``dssync serve`` on the sync interface::

    GET /v1/identity                               this appliance's identity (JSON)
    GET /v1/log?from=N&max_bytes=M&wait_ms=W       raw log batches from offset N (long poll)
    GET /v1/mirror?from=N&max_bytes=M              the caller's own log as mirrored here, from offset N
    GET /v1/snapshot                               the store as events, in raw batches, each tagged
    GET /v1/position?at=N                          log start/end, append time at N, bytes from N
    GET /v1/digest                                 the store's digest and offsets (convergence)

Error contract of ``PeerClient``: a peer that cannot be reached, hangs up or answers 503 raises
``TransientError``; a refusal, or a reply the secret does not authenticate, raises
``PairingRefusedError``; a reply over its size cap raises ``TransientError`` without reading it.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
from dataclasses import asdict, dataclass

from dssync.config import SyncConfig
from dssync.errors import PairingRefusedError, TransientError
from dssync.sync import auth, tls

log = logging.getLogger("dssync.sync")

MAX_LOG_BYTES = 64 << 20
"""The most a log reply carries beyond the first batch (the server caps ``max_bytes`` here)."""
MAX_BATCH_BYTES = 64 << 20
"""The largest batch the link carries (the writers' batches are a few MiB)."""
MAX_WAIT_MS = 10_000
"""The longest long poll a server holds a connection for."""
MAX_JSON_BYTES = 1 << 20
"""Replies other than log batches and snapshots are small JSON documents."""


@dataclass(frozen=True)
class Identity:
    name: str
    model: str
    software_version: str
    store_id: str
    role: str
    state: str
    log_start_offset: int
    chunker: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Identity:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise PairingRefusedError(f"the peer sent an unreadable identity ({exc})") from None


def incompatibility(mine: Identity, theirs: Identity) -> str | None:
    """Why two appliances may not pair, or None."""
    if mine.model != theirs.model:
        return f"model differs: {mine.name} is {mine.model}, {theirs.name} is {theirs.model}"
    if mine.software_version != theirs.software_version:
        return (f"software version differs: {mine.name} runs {mine.software_version}, "
                f"{theirs.name} runs {theirs.software_version}")
    if mine.chunker != theirs.chunker:
        return f"chunker differs: {mine.chunker} vs {theirs.chunker}"
    if mine.role and theirs.role and mine.role == theirs.role:
        return f"both appliances are configured as {mine.role}"
    if mine.name == theirs.name:
        return f"both appliances are named {mine.name}"
    return None


class PeerClient:
    """Authenticated requests to the peer's sync interface (module docstring: error contract).
    One connection, one request at a time."""

    def __init__(self, cfg: SyncConfig, me: Identity, timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self.me = me
        host, _, port = cfg.peer.rpartition(":")
        self.host, self.port = host, int(port)
        self.timeout_s = timeout_s
        self.key = auth.derive_key(cfg.check_secret())
        self._ctx = tls.client_context(cfg)
        self._session = auth.Session()
        self._conn: http.client.HTTPSConnection | None = None
        self._destination = ""

    def connection(self) -> tuple[http.client.HTTPSConnection, str]:
        """The open connection and the fingerprint of the certificate its server presented."""
        if self._conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s, context=self._ctx)
            try:
                conn.connect()
                der = conn.sock.getpeercert(binary_form=True) if conn.sock is not None else None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransientError(f"peer {self.cfg.peer} unreachable: {exc or type(exc).__name__}") from None
            if not der:
                conn.close()
                raise PairingRefusedError(f"{self.cfg.peer} presented no TLS certificate")
            self._conn, self._destination = conn, tls.fingerprint(der)
        return self._conn, self._destination

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, path: str) -> tuple[http.client.HTTPResponse, str]:
        """Send a signed GET of ``path``; (the response, headers read, body not; its request tag).
        A request refused for its clock is sent again once, with the clock the peer's signed
        answer gave (``auth.SKEW_STATUS``)."""
        for first in (True, False):
            conn, destination = self.connection()
            headers = self._session.headers(self.key, "GET", path, self.me.to_json(), destination)
            sent = time.time()
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise TransientError(f"peer {self.cfg.peer} unreachable: {exc or type(exc).__name__}") from None
            if resp.status != auth.SKEW_STATUS:
                return resp, headers[auth.H_AUTH]
            message = self._adopt_clock(resp, headers[auth.H_AUTH], sent)
            if not first:
                break
        raise PairingRefusedError(f"{self.cfg.peer} refused our clock twice: {message}",
                                  hint="synchronize the appliances' clocks (NTP)")

    def _adopt_clock(self, resp: http.client.HTTPResponse, tag: str, sent: float) -> str:
        """Take the peer's clock from its signed answer to a request refused for skew (the
        midpoint of the round trip is its moment); return the peer's message."""
        try:
            body = resp.read(MAX_JSON_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransientError(f"peer {self.cfg.peer} unreachable: {exc or type(exc).__name__}") from None
        received = time.time()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        auth.check_reply(self.key, tag, resp.status, headers, len(body), self.cfg.peer)
        try:
            theirs = float(headers.get(auth.H_SERVER_TIME.lower(), ""))
        except ValueError:
            theirs = math.nan
        if not math.isfinite(theirs):
            raise PairingRefusedError(f"{self.cfg.peer} refused our clock without giving its own")
        offset = theirs - (sent + received) / 2
        if abs(offset - self._session.clock_offset) > 1:
            log.warning("the clock of %s differs from ours by %.0f s: signing our requests with its clock "
                        "(synchronize the appliances' clocks with NTP)", self.cfg.peer, offset)
        self._session.clock_offset = offset
        return body.decode(errors="replace")

    def get(self, path: str, limit: int = MAX_JSON_BYTES) -> tuple[int, dict[str, str], bytes]:
        """GET ``path``; (status, headers, body), the reply authenticated, its body at most
        ``limit`` bytes."""
        resp, tag = self.request(path)
        try:
            length = int(resp.getheader("Content-Length") or -1)
            if length < 0 or length > limit:
                self.close()
                raise TransientError(f"peer {self.cfg.peer} answered {path.split('?')[0]} with "
                                     f"{'no length' if length < 0 else f'{length} bytes'} (at most {limit})")
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransientError(f"peer {self.cfg.peer} unreachable: {exc or type(exc).__name__}") from None
        headers = {k.lower(): v for k, v in resp.getheaders()}
        try:
            auth.check_reply(self.key, tag, resp.status, headers, len(body), self.cfg.peer)
        except PairingRefusedError as exc:
            self.close()
            if resp.status in (401, 409):
                raise PairingRefusedError(f"{self.cfg.peer} refused to pair: {body[:200].decode(errors='replace')}"
                                          " (its reply is not signed with our secret)", hint=exc.hint) from None
            raise
        if resp.status in (401, 409):
            raise PairingRefusedError(f"{self.cfg.peer} refused to pair: {body.decode(errors='replace')}")
        if resp.status == 503:
            raise TransientError(f"peer {self.cfg.peer} is not syncing yet: {body.decode(errors='replace')}")
        return resp.status, headers, body

    def identity(self) -> Identity:
        status, _, body = self.get("/v1/identity")
        if status != 200:
            raise TransientError(f"identity request failed with HTTP {status}")
        theirs = Identity.from_json(body.decode())
        reason = incompatibility(self.me, theirs)
        if reason:
            raise PairingRefusedError(f"refusing to pair with {theirs.name}: {reason}")
        return theirs
