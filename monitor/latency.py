"""Replication latency as this appliance sees it: from the append on the peer to the commit here.

Each record of a log batch carries the time its log appended it (the batch timestamp, in ms).
When the apply loop commits a peer's records, every batch among them is one observation:
the commit's wall time minus the batch's timestamp. The observations go into a cumulative
histogram with fixed buckets (Prometheus's ``_bucket``/``_sum``/``_count``), so that a scrape,
``dssync status`` and ``dssync bench sync`` read the same counts, and a quantile over any
interval is the difference of two readings (``delta``, ``quantile``).

Across machines the figure includes the two clocks' offset (a peer whose clock runs ahead
shows as 0, never negative): keep the pair's clocks synchronised (NTP) to read it as latency.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25,
             0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds, inclusive); one more bucket, ``+Inf``, holds the rest. Fine below
100 ms, where the sync's goal lies."""


class LatencyHistogram:
    """Observations of one peer's batches (thread-safe: the apply loop writes, scrapes read)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = np.zeros(len(BUCKETS_S) + 1, np.int64)
        self._sum_s = 0.0

    def observe_batches(self, timestamps_ms: np.ndarray, now_s: float) -> None:
        """Committed at ``now_s``: records whose append times are ``timestamps_ms`` (one
        observation per batch: records of a batch share its timestamp)."""
        if not len(timestamps_ms):
            return
        lat = np.maximum(0.0, now_s - np.unique(timestamps_ms) / 1000.0)
        counts = np.bincount(np.searchsorted(BUCKETS_S, lat, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum_s += float(lat.sum())

    def snapshot(self) -> dict[str, Any]:
        """``{"buckets": [[upper bound or "+Inf", cumulative count], ...], "count", "sum_s"}``."""
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum_s
        bounds: list[float | str] = [*BUCKETS_S, "+Inf"]
        return {"buckets": [[b, c] for b, c in zip(bounds, cumulative, strict=True)],
                "count": cumulative[-1], "sum_s": round(total, 6)}


def delta(later: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """The observations made between two snapshots of one histogram."""
    if not earlier:
        return later
    buckets = [[b, c - e] for (b, c), (_b, e) in zip(later["buckets"], earlier["buckets"], strict=True)]
    return {"buckets": buckets, "count": later["count"] - earlier["count"],
            "sum_s": round(later["sum_s"] - earlier["sum_s"], 6)}


def quantile(snap: dict[str, Any], q: float) -> float | None:
    """The ``q`` quantile in seconds, interpolated linearly inside its bucket (Prometheus's
    ``histogram_quantile``); None without observations. In the ``+Inf`` bucket, the highest
    finite bound (a lower bound of the truth)."""
    total = snap["count"]
    if not total:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0
    for bound, count in snap["buckets"]:
        if count >= rank:
            if bound == "+Inf":
                return float(prev_bound)
            if count == prev_count:
                return float(bound)
            return float(prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count))
        prev_bound, prev_count = (bound if bound != "+Inf" else prev_bound), count
    return float(prev_bound)


def summary(snap: dict[str, Any]) -> dict[str, Any]:
    """For status: observations, p50/p99 in ms, and the share within 50 ms."""
    p50, p99 = quantile(snap, 0.5), quantile(snap, 0.99)
    within = next((c for b, c in snap["buckets"] if b == 0.05), 0)
    return {"batches": snap["count"], "p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "within_50ms": round(within / snap["count"], 4) if snap["count"] else None}
