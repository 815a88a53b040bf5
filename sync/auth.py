"""Message authentication on the sync link: every request and every reply, under the pair's secret.

The key is derived from the shared secret (HMAC-SHA256, label ``dssync-sync-v2``). What is
signed, and why:

* a **request**: method, path and query, the caller's clock, a session id and a sequence number
  (single use: the server remembers which it has seen, ``ReplayGuard``), the caller's identity,
  and the **destination**: the SHA-256 fingerprint of the certificate the server presented on
  this TLS connection. A request is good for one server (one pair, one appliance) and one
  connection to it; a man in the middle, who cannot present that certificate, gets requests
  that the real server refuses.
* a **reply**: the request's tag, the status, the reply's ``X-Dssync-*`` headers and the
  length of its body. So a reply is good for one request only, and nothing the peer says
  (identity, batches, snapshot headers) can be forged or replayed by someone on the path. The
  body's bytes are bound by the channel, not hashed again: the request tag carries the
  fingerprint of the certificate this TLS connection was made with, the server signs a reply
  only after checking that fingerprint is its own, so the connection the signed reply came on
  ends at the holder of that certificate's key, and TLS authenticates every byte on it (channel
  binding, as RFC 5929's tls-server-end-point). Hashing the body as well would cost a SHA-256 of
  every transfer on both sides (a third of the mirror's throughput, measured) and would add
  protection only against someone holding the server's TLS key without the secret, which lie
  side by side in the home with the same permissions.
* a **stream** (the snapshot): one tag after each batch, chained from the reply's tag, and an
  end frame, so that a stream cut, reordered or spliced is refused.

Error contract: ``check_request`` raises ``PairingRefusedError`` (why, in one line), or its
``ClockSkewError`` for an authentic request whose clock is too far off (answered with the
server's clock, signed: the caller adopts it and asks again);
``check_reply`` and ``StreamTags.check`` raise ``PairingRefusedError`` too: an unauthenticated
reply means a different secret or someone on the path, never a transient fault.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from dssync.errors import ClockSkewError, PairingRefusedError

MAX_SKEW_S = 300.0
"""A request's clock may differ from the server's by this much. A caller further off is told the
server's clock in a signed answer (``ClockSkewError``, ``SKEW_STATUS``) and signs its requests
with that clock from then on: a clock stepped on one appliance does not stop the link."""
SKEW_STATUS = 425
H_SERVER_TIME = "X-Dssync-Server-Time"
REPLAY_WINDOW = 4096
"""Sequence numbers a session may deliver out of order (a client's requests arrive in order on
its connection; the window is slack, as in IPsec's anti-replay window)."""
MAX_SESSIONS = 65536
"""Sessions remembered at once; only authenticated requests create one."""

H_TIME = "X-Dssync-Time"
H_AUTH = "X-Dssync-Auth"
H_IDENTITY = "X-Dssync-Identity"
H_SESSION = "X-Dssync-Session"
H_SEQ = "X-Dssync-Seq"
H_REPLY = "X-Dssync-Reply-Auth"
TAG_BYTES = 32
END_FRAME = b"dssync-stream-end"


def derive_key(secret: str) -> bytes:
    """The link's MAC key: the shared secret is never used as a key directly."""
    return hmac.new(secret.encode(), b"dssync-sync-v2", hashlib.sha256).digest()


def _mac(key: bytes, *parts: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))  # length-prefixed: no two part lists sign alike
        h.update(p)
    return h.digest()


@dataclass(frozen=True)
class Request:
    """What the caller signs (everything but the tag travels in headers)."""

    method: str
    path: str
    ts: str
    session: str
    seq: int
    identity: str
    destination: str

    def tag(self, key: bytes) -> str:
        return _mac(key, b"request", self.method.encode(), self.path.encode(), self.ts.encode(),
                    self.session.encode(), str(self.seq).encode(), self.identity.encode(),
                    self.destination.encode()).hex()


class Session:
    """A caller's session: a random id and a counter, so that each request is new; and the
    offset from its clock to the server's (``clock_offset``, learnt from a signed
    ``SKEW_STATUS`` answer), which the requests' clock is signed with."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(12)
        self._seq = 0
        self._lock = threading.Lock()
        self.clock_offset = 0.0

    def headers(self, key: bytes, method: str, path: str, identity: str, destination: str) -> dict[str, str]:
        with self._lock:
            self._seq += 1
            seq = self._seq
        req = Request(method, path, f"{time.time() + self.clock_offset:.3f}", self.id, seq, identity, destination)
        return {H_TIME: req.ts, H_SESSION: req.session, H_SEQ: str(seq), H_IDENTITY: identity,
                H_AUTH: req.tag(key)}


class ReplayGuard:
    """Which (session, sequence) pairs a server has accepted, so that each is accepted once.

    Per session: the highest sequence seen and a bitmap of the ``REPLAY_WINDOW`` below it. A
    session unseen for ``2 * MAX_SKEW_S`` is forgotten: any request of it would fail the clock
    check by then. Thread-safe.
    """

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._sessions: dict[str, tuple[int, int, float]] = {}
        self._lock = threading.Lock()
        self.max_sessions = max_sessions

    def accept(self, session: str, seq: int, now: float) -> bool:
        """Record (``session``, ``seq``); False if it was seen, or is too old to tell."""
        with self._lock:
            entry = self._sessions.get(session)
            if entry is None:
                if len(self._sessions) >= self.max_sessions:
                    self._forget(now)
                    if len(self._sessions) >= self.max_sessions:
                        return False
                self._sessions[session] = (seq, 1, now)
                return True
            top, bits, _seen = entry
            if seq > top:
                shift = seq - top
                bits = ((bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
                self._sessions[session] = (seq, bits, now)
                return True
            back = top - seq
            if back >= REPLAY_WINDOW or bits >> back & 1:
                return False
            self._sessions[session] = (top, bits | 1 << back, now)
            return True

    def _forget(self, now: float) -> None:
        old = [s for s, (_t, _b, seen) in self._sessions.items() if now - seen > 2 * MAX_SKEW_S]
        for s in old:
            del self._sessions[s]


class Headers(Protocol):
    def get(self, name: str, /) -> str | None: ...


def check_request(key: bytes, method: str, path: str, headers: Headers, destination: str,
                  guard: ReplayGuard, now: float | None = None) -> str:
    """Authenticate a request; return the caller's identity (JSON) or raise PairingRefusedError.
    The tag is checked before anything else is believed (the clock included), and the sequence
    is recorded only once the tag is good: an unauthenticated request leaves no state."""
    get = headers.get
    ts, session, seq_text = get(H_TIME) or "", get(H_SESSION) or "", get(H_SEQ) or ""
    ident, auth = get(H_IDENTITY) or "", get(H_AUTH) or ""
    if not (auth and ts and session and seq_text.isdigit()):
        raise PairingRefusedError("unauthenticated request")
    req = Request(method, path, ts, session, int(seq_text), ident, destination)
    if not hmac.compare_digest(req.tag(key), auth):
        raise PairingRefusedError("wrong shared secret: the peer does not belong to this pair",
                                  hint="configure the same secret on both appliances")
    now = time.time() if now is None else now
    try:
        when = float(ts)
    except ValueError:
        when = math.nan
    if not math.isfinite(when):
        raise PairingRefusedError("request without a valid timestamp")
    skew = abs(now - when)
    if skew > MAX_SKEW_S:
        raise ClockSkewError(f"clocks differ by more than {MAX_SKEW_S:.0f} s (by {skew:.0f} s)")
    if not guard.accept(session, int(seq_text), now):
        raise PairingRefusedError("a request replayed (seen before)")
    return ident


def reply_tag(key: bytes, request_tag: str, status: int, headers: Mapping[str, str], length: int) -> str:
    """The tag of a reply to the request tagged ``request_tag``: status, ``X-Dssync-*`` headers
    (names lowercased, sorted) and the body's length in bytes (module docstring: the bytes
    themselves are bound by the TLS channel)."""
    signed = sorted((k.lower(), v) for k, v in headers.items()
                    if k.lower().startswith("x-dssync-") and k.lower() != H_REPLY.lower())
    return _mac(key, b"reply", request_tag.encode(), str(status).encode(),
                "\n".join(f"{k}:{v}" for k, v in signed).encode(), str(length).encode()).hex()


def check_reply(key: bytes, request_tag: str, status: int, headers: Mapping[str, str], length: int,
                peer: str) -> None:
    """Refuse a reply not signed by the pair's secret for this request."""
    got = {k.lower(): v for k, v in headers.items()}.get(H_REPLY.lower(), "")
    if not got or not hmac.compare_digest(reply_tag(key, request_tag, status, headers, length), got):
        raise PairingRefusedError(
            f"{peer} sent a reply that the pair's secret does not authenticate (HTTP {status})",
            hint="check that both appliances have the same secret; otherwise someone on the path answers")


class StreamTags:
    """Chained tags of a streamed reply: tag_i = MAC(tag_(i-1), frame_i), from the reply's tag."""

    def __init__(self, key: bytes, reply: str) -> None:
        self.key = key
        self.last = bytes.fromhex(reply)

    def next(self, frame: bytes | memoryview) -> bytes:
        self.last = _mac(self.key, b"frame", self.last, bytes(frame))
        return self.last

    def end(self) -> bytes:
        return self.next(END_FRAME)

    def check(self, frame: bytes | memoryview, tag: bytes, peer: str) -> None:
        if not hmac.compare_digest(self.next(frame), tag):
            raise PairingRefusedError(f"{peer} sent a stream frame that the pair's secret does not authenticate",
                                      hint="someone on the path altered the transfer; it is retried from the start")
