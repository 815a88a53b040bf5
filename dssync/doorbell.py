"""A doorbell between two processes of one home: "something new is on disk, look now".

The mirror (``dssync mirror``) rings the service's doorbell after each transfer it made
durable, so that the service applies the peer's batches at once instead of at its next poll:
the replication latency loses the poll interval. A ring carries no data and promises nothing:
the service still finds its work by reading the mirror log, and still looks every so often
without a ring (a ring lost because the service was busy, restarting or not running costs one
interval, never a batch).

The bell is a datagram socket in Linux's abstract namespace, named after the home's real path:
no file to clean up after a crash, and nothing left behind when the service dies. Where the
namespace does not exist, ``Doorbell.open`` returns None and the service polls.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket


def _address(home: str) -> bytes:
    return b"\0dssync-bell-" + hashlib.sha256(os.path.realpath(home).encode()).hexdigest()[:32].encode()


class Doorbell:
    """The receiving side, owned by the home's service. ``fileno()`` turns readable on a ring."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def open(cls, home: str) -> Doorbell | None:
        """Bind the home's bell; None where abstract sockets do not exist or it is taken."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(_address(home))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def clear(self) -> None:
        """Forget the rings received so far (read before looking, so a ring after is kept)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while self._sock.recv(64):
                pass

    def close(self) -> None:
        self._sock.close()


class Ringer:
    """The ringing side (the mirror): never blocks, never fails."""

    def __init__(self, home: str) -> None:
        self._address = _address(home)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def ring(self) -> None:
        with contextlib.suppress(OSError):  # no service, a full queue: it looks on its own
            self._sock.sendto(b"\1", self._address)

    def close(self) -> None:
        self._sock.close()
