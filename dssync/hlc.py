"""Hybrid logical clock: one 64-bit integer per event that orders events across appliances.

The high 48 bits hold wall-clock milliseconds, the low 16 bits a logical counter. ``now()``
never goes backwards even if the wall clock does, and ``observe()`` folds in a clock seen on
a peer's event so that any later local event orders after it. Stores break last-writer-wins
ties on (hlc, origin), so two appliances always pick the same winner.

An observed clock pulls this one at most ``max_drift_ms`` ahead of this machine's wall clock
(the HLC paper's bound on clock offset, epsilon): a peer whose clock runs an hour fast, or a
damaged event, cannot drag every later local event an hour (or a century) into the future.
Such observations are counted (``bounded``); the peer's events still apply and order by their
own values, so the pair converges either way. Values are Avro longs: ``now()`` refuses to
pass 2**63 - 1 rather than wrap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dssync.errors import UsageError

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_HLC = (1 << 63) - 1
MAX_DRIFT_MS = 60_000
"""How far ahead of the local wall clock an observed clock may pull this one (one minute: NTP
keeps a pair's clocks within milliseconds; more is a clock step or damage)."""


class HybridLogicalClock:
    """A monotonic HLC, safe to share between the traffic path and the apply loop."""

    def __init__(self, last: int = 0, wall_ms: Callable[[], int] | None = None,
                 max_drift_ms: int = MAX_DRIFT_MS) -> None:
        """``last``: the newest value this appliance wrote or observed before (its own past
        is kept whatever the wall clock says: a later local event must order after it)."""
        self._last = last
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._max_drift_ms = max_drift_ms
        self._lock = threading.Lock()
        self.bounded = 0
        """Observed values that were further ahead than the drift bound allows."""

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """A value strictly greater than every value returned or observed before."""
        candidate = self._wall_ms() << LOGICAL_BITS
        with self._lock:
            nxt = candidate if candidate > self._last else self._last + 1
            if nxt > MAX_HLC:
                raise UsageError("the hybrid logical clock reached 2**63 - 1",
                                 hint="the store holds a damaged clock value: rebuild it with 'dssync replay HOME'")
            self._last = nxt
            return nxt

    def observe(self, remote: int) -> bool:
        """Fold in a clock value read from another appliance's event, at most the drift bound
        ahead of the wall clock; return False when the bound cut it."""
        ceiling = (self._wall_ms() + self._max_drift_ms) << LOGICAL_BITS
        with self._lock:
            if remote <= self._last:
                return True  # already ordered after it (this appliance's own past included)
            within = remote <= ceiling
            if not within:
                self.bounded += 1
            self._last = max(self._last, min(remote, ceiling))
        return within
