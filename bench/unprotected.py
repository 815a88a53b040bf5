"""The sync link without its protection, for ``dssync bench sync`` only: what TLS and the MACs cost.

``python -P -m dssync.bench.unprotected serve|mirror HOME`` runs the same ``dssync serve`` or
``dssync mirror`` as the product, with the link's protection replaced at its seams by no-ops:
no TLS on either end (``tls.server_context`` gives no context, ``PeerClient`` opens plain HTTP),
requests carry the caller's identity and no tag (``auth.Session.headers``), and neither
requests nor replies are checked (``auth.check_request``, ``auth.reply_tag``,
``auth.check_reply``). Everything else (the log reads, the long poll, the mirror's writes and
fsyncs, the doorbell, the apply) is the product's code, so the difference between a run of
this and a run of the product is the protection's cost alone.

The product has no switch that turns its protection off (no option, setting or environment
variable): only this module does, and it refuses a home whose sync link leaves the loopback
interface, so plaintext never crosses a network even by mistake.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import sys
from collections.abc import Mapping
from typing import Any

from dssync.errors import DssyncError, TransientError, UsageError

MODULE = "dssync.bench.unprotected"


def _loopback(hostport: str) -> bool:
    host = hostport.rpartition(":")[0].strip("[]")
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def check_home(home: str) -> None:
    """Refuse a home whose sync link is not on loopback (``UsageError``)."""
    from dssync.config import load

    sync = load(home).sync
    for what, where in (("listen", sync.listen), ("peer", sync.peer)):
        if not _loopback(where):
            raise UsageError(f"the unprotected sync link is for benchmarks on loopback; [sync] {what} is {where}",
                             hint="use 'dssync serve' / 'dssync mirror': the product's link is always protected")


def strip_protection() -> None:
    """Replace the link's protection by no-ops in this process (module docstring)."""
    from dssync.sync import auth, protocol, tls

    def headers(self: auth.Session, key: bytes, method: str, path: str, identity: str,
                destination: str) -> dict[str, str]:
        return {auth.H_IDENTITY: identity, auth.H_AUTH: "-"}

    def check_request(key: bytes, method: str, path: str, headers: auth.Headers, destination: str,
                      guard: auth.ReplayGuard, now: float | None = None) -> str:
        return headers.get(auth.H_IDENTITY) or ""

    def reply_tag(key: bytes, request_tag: str, status: int, headers: Mapping[str, str], length: int) -> str:
        return ""

    def check_reply(key: bytes, request_tag: str, status: int, headers: Mapping[str, str], length: int,
                    peer: str) -> None:
        return None

    def server_context(home: str, name: str, cfg: Any) -> tuple[None, str]:
        return None, ""

    def connection(self: protocol.PeerClient) -> tuple[http.client.HTTPConnection, str]:
        if self._conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise TransientError(f"peer {self.cfg.peer} unreachable: {exc}") from None
            self._conn, self._destination = conn, ""  # type: ignore[assignment]
        return self._conn, self._destination  # type: ignore[return-value]

    auth.Session.headers = headers  # type: ignore[method-assign]
    auth.check_request = check_request
    auth.reply_tag = reply_tag
    auth.check_reply = check_reply
    tls.server_context = server_context  # type: ignore[assignment]
    protocol.PeerClient.connection = connection  # type: ignore[method-assign,assignment]


def main(argv: list[str]) -> None:
    from dssync.tools.cli import main as cli_main

    if len(argv) != 2 or argv[0] not in ("serve", "mirror"):
        sys.exit(f"usage: python -m {MODULE} serve|mirror HOME")
    try:
        check_home(argv[1])
    except DssyncError as exc:
        sys.exit(f"error: {exc.message}\nhint: {exc.hint}")
    strip_protection()
    sys.argv = ["dssync", *argv]
    cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
