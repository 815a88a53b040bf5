"""The replication latency histogram: observations per batch, quantiles over an interval."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dssync.monitor.latency import BUCKETS_S, LatencyHistogram, delta, quantile, summary


def test_each_batch_counts_once_and_lands_in_the_bucket_of_its_latency() -> None:
    h = LatencyHistogram()
    # two batches: records 0-2 appended at 1000.000 s, record 3 at 1000.040 s; committed at 1000.045
    h.observe_batches(np.array([1_000_000, 1_000_000, 1_000_000, 1_000_040]), 1000.045)
    snap = h.snapshot()
    assert snap["count"] == 2
    counts = dict((b, c) for b, c in snap["buckets"])
    assert counts[0.005] == 1  # 5 ms: inclusive upper bound
    assert counts[0.04] == 1 and counts[0.05] == 2
    assert snap["sum_s"] == pytest.approx(0.050)


def test_a_peer_clock_ahead_counts_as_zero_never_negative() -> None:
    h = LatencyHistogram()
    h.observe_batches(np.array([2_000_000]), 1000.0)
    assert h.snapshot()["buckets"][0][1] == 1 and h.snapshot()["sum_s"] == 0


def test_quantiles_over_an_interval_are_the_difference_of_two_readings() -> None:
    h = LatencyHistogram()
    h.observe_batches(np.array([0]), 10.0)  # 10 s: before the interval
    before = h.snapshot()
    for ms in range(1, 101):  # 1..100 ms, one batch each
        h.observe_batches(np.array([1_000_000]), 1000 + ms / 1000)
    d = delta(h.snapshot(), before)
    assert d["count"] == 100
    p50, p99 = quantile(d, 0.5), quantile(d, 0.99)
    assert p50 is not None and 0.04 <= p50 <= 0.05
    assert p99 is not None and 0.075 <= p99 <= 0.1
    assert summary(d)["within_50ms"] == 0.5


def test_no_observations_give_no_quantile() -> None:
    assert quantile(LatencyHistogram().snapshot(), 0.99) is None


@given(st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=200), st.floats(0.01, 0.99))
def test_a_quantile_lies_in_the_bucket_of_the_true_value(latencies: list[float], q: float) -> None:
    h = LatencyHistogram()
    for i, lat in enumerate(latencies):
        h.observe_batches(np.array([i]), i / 1000 + lat)  # one batch each, distinct timestamps
    got = quantile(h.snapshot(), q)
    assert got is not None
    true = sorted(max(0.0, (i / 1000 + lat) - i / 1000) for i, lat in enumerate(latencies))
    k = int(np.ceil(q * len(true))) - 1
    bounds = (0.0, *BUCKETS_S)
    i = int(np.searchsorted(BUCKETS_S, true[max(k, 0)], side="left"))
    lo = bounds[i] if i < len(bounds) else BUCKETS_S[-1]
    hi = BUCKETS_S[i] if i < len(BUCKETS_S) else BUCKETS_S[-1]
    assert lo - 1e-9 <= got <= hi + 1e-9
