"""Heartbeats: a ``HeartbeatSent`` event in the appliance's own log when it has been quiet.

Every path then keeps seeing fresh records on a quiet link, which is how the lag monitor tells
a quiet path (idle) from a dead one (its lag in seconds grows).
"""

from __future__ import annotations

import logging
import time

from dssync.appliance.home import Appliance
from dssync.errors import DssyncError
from dssync.fairlock import FairLock
from dssync.schemas import encode

log = logging.getLogger("dssync.service")


class Heartbeat:
    """Writes a heartbeat when nothing else was written for ``every`` seconds (``tick``)."""

    def __init__(self, app: Appliance, lock: FairLock, every: float) -> None:
        self.app, self.lock, self.every = app, lock, every
        self.next = time.monotonic() + every
        self.end = -1
        self.failing = False

    def tick(self, now: float) -> None:
        """Called by the service's loop; writes at most one heartbeat per ``every`` seconds.
        A failed write (a full disk, a broker down) is logged once: the lag monitor shows it."""
        if now < self.next:
            return
        self.next = now + self.every
        app = self.app
        try:
            with self.lock:
                end = app.log.end_offset()
                if end == self.end:  # nothing written since the last tick
                    app.log.append([encode("HeartbeatSent", {"origin": app.config.name, "hlc": app.hlc.now(),
                                                             "sent_ms": int(time.time() * 1000)})])
                    app.applied()
                    end = app.log.end_offset()
        except DssyncError as exc:
            if not self.failing:
                log.warning("cannot write a heartbeat: %s", exc.message)
            self.failing = True
            return
        if self.failing:
            log.info("heartbeats written again")
        self.failing = False
        self.end = end
