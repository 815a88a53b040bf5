"""The sync-interface protocol: HTTP (TLS when configured) between the two appliances.

Every request carries the caller's identity and an HMAC-SHA256 over method, path, time and
identity, keyed by the pair's shared secret: a peer without the secret is refused (401), and
so is one whose model or software version differs (409), on both sides, with the reason.

Endpoints served by ``dssync serve`` on the sync interface::

    GET /v1/identity                               this appliance's identity (JSON)
    GET /v1/log?from=N&max_bytes=M&wait_ms=W       raw log batches from offset N (long poll)
    GET /v1/snapshot                               the store as events, in raw batches
    GET /v1/position?at=N                          log start/end, append time at N, bytes from N
    GET /v1/digest                                 the store's digest and offsets (convergence)
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any

from dssync.config import SyncConfig
from dssync.errors import PairingRefusedError, TransientError

MAX_SKEW_S = 300
H_TIME = "X-Dssync-Time"
H_AUTH = "X-Dssync-Auth"
H_IDENTITY = "X-Dssync-Identity"


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


def sign(secret: str, method: str, path: str, ts: str, identity: str) -> str:
    msg = "\n".join((method, path, ts, identity)).encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def check_request(secret: str, method: str, path: str, headers: Any, now: float | None = None) -> Identity:
    """Authenticate a request; return the caller's identity or raise PairingRefusedError."""
    ts, auth, ident = headers.get(H_TIME, ""), headers.get(H_AUTH, ""), headers.get(H_IDENTITY, "")
    try:
        skew = abs((now or time.time()) - float(ts))
    except ValueError:
        raise PairingRefusedError("request without a valid timestamp") from None
    if skew > MAX_SKEW_S:
        raise PairingRefusedError(f"clocks differ by {skew:.0f} s", hint="synchronize the appliances' clocks (NTP)")
    if not hmac.compare_digest(sign(secret, method, path, ts, ident), auth):
        raise PairingRefusedError("wrong shared secret: the peer does not belong to this pair",
                                  hint="configure the same --secret on both appliances")
    return Identity.from_json(ident)


def ssl_context(cfg: SyncConfig, server: bool) -> ssl.SSLContext | None:
    if not cfg.tls_cert and not cfg.tls_ca:
        return None
    if server:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
        if cfg.tls_ca:
            ctx.load_verify_locations(cfg.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
    ctx = ssl.create_default_context(cafile=cfg.tls_ca or None)
    if cfg.tls_cert:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
    return ctx


class PeerClient:
    """Authenticated requests to the peer's sync interface."""

    def __init__(self, cfg: SyncConfig, me: Identity, timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self.me = me
        host, _, port = cfg.peer.rpartition(":")
        self.host, self.port = host, int(port)
        self.timeout_s = timeout_s
        self._ctx = ssl_context(cfg, server=False)
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._ctx is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                                         context=self._ctx)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET ``path``; (status, headers, body). Connection failures raise TransientError."""
        ts = f"{time.time():.3f}"
        ident = self.me.to_json()
        headers = {H_TIME: ts, H_IDENTITY: ident, H_AUTH: sign(self.cfg.secret, "GET", path, ts, ident)}
        try:
            conn = self._connection()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransientError(f"peer {self.cfg.peer} unreachable: {exc or type(exc).__name__}") from None
        if resp.status in (401, 409):
            raise PairingRefusedError(f"{self.cfg.peer} refused to pair: {body.decode(errors='replace')}")
        if resp.status == 503:
            raise TransientError(f"peer {self.cfg.peer} is not syncing yet: {body.decode(errors='replace')}")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def identity(self) -> Identity:
        status, _, body = self.get("/v1/identity")
        if status != 200:
            raise TransientError(f"identity request failed with HTTP {status}")
        theirs = Identity.from_json(body.decode())
        reason = incompatibility(self.me, theirs)
        if reason:
            raise PairingRefusedError(f"refusing to pair with {theirs.name}: {reason}")
        return theirs
