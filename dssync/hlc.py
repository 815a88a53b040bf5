"""Hybrid logical clock: one 64-bit integer per event that orders events across appliances.

The high 48 bits hold wall-clock milliseconds, the low 16 bits a logical counter. ``now()``
never goes backwards even if the wall clock does, and ``observe()`` folds in a clock seen on
a peer's event so that any later local event orders after it. Stores break last-writer-wins
ties on (hlc, origin), so two appliances always pick the same winner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


class HybridLogicalClock:
    """A monotonic HLC, safe to share between the traffic path and the apply loop."""

    def __init__(self, last: int = 0, wall_ms: Callable[[], int] | None = None) -> None:
        self._last = last
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """A value strictly greater than every value returned or observed before."""
        candidate = self._wall_ms() << LOGICAL_BITS
        with self._lock:
            self._last = candidate if candidate > self._last else self._last + 1
            return self._last

    def observe(self, remote: int) -> None:
        """Fold in a clock value read from another appliance's event."""
        with self._lock:
            if remote > self._last:
                self._last = remote
