"""The control endpoints of ``dssync serve``: how the local tools talk to a running service.

They listen on loopback only and require the token written (mode 0600) to
``HOME/run/serve.json``; the tools use them to ingest, read status, verify and compare digests
while the service owns the store, and to stop or restart it. A ``DssyncError`` travels back
as JSON with its message, hint and exit code, and the tool raises it again
(``dssync.tools.control``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlparse

from dssync.errors import DssyncError
from dssync.sync.server import Handler

if TYPE_CHECKING:
    from dssync.appliance.service import Service

H_TOKEN = "X-Dssync-Token"


class ControlHandler(Handler):
    _after_reply: Callable[[], None] | None = None

    @property
    def svc(self) -> Service:
        return cast("Service", self.server.service)

    def _authorized(self) -> bool:
        if self.headers.get(H_TOKEN) != self.svc.token:
            self._error(403, "bad control token")
            return False
        return True

    def do_GET(self) -> None:
        svc = self.svc
        self._dispatch({
            "/v1/status": svc.status, "/v1/verify": svc.verify, "/v1/offsets": svc.offsets,
            "/v1/digest": svc.digest, "/v1/rows": svc.rows, "/v1/lag": svc.lag,
        })

    def do_POST(self) -> None:
        svc = self.svc

        def ingest() -> Any:
            length = int(self.headers.get("Content-Length", 0))
            return svc.ingest(cast(BinaryIO, _Limited(self.rfile, length)))

        def stop(restart: bool) -> Any:
            self._after_reply = lambda: svc.request_stop(restart=restart)  # answer first, then stop
            return {"ok": True}

        self._dispatch({"/v1/ingest": ingest, "/v1/restart": lambda: stop(True), "/v1/stop": lambda: stop(False)})

    def _dispatch(self, routes: dict[str, Callable[[], Any]]) -> None:
        """Authorize, route, answer JSON; a DssyncError travels back with its hint and exit code."""
        if not self._authorized():
            return
        handler = routes.get(urlparse(self.path).path)
        if handler is None:
            self._error(404, "unknown endpoint")
            return
        self._after_reply = None
        try:
            self._json(200, handler())
        except DssyncError as exc:
            self._json(500, {"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code})
        if self._after_reply is not None:
            self._after_reply()


class _Limited:
    """A file-like view of exactly ``n`` bytes of a request body."""

    def __init__(self, f: Any, n: int) -> None:
        self.f, self.left = f, n

    def readinto(self, b: Any) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(b)[: self.left]
        n: int = self.f.readinto(view)
        self.left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data: bytes = self.f.read(n)
        self.left -= len(data)
        return data
