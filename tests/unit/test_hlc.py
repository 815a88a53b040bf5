"""The hybrid logical clock only moves forward and orders after what it observed."""

from __future__ import annotations

from dssync.hlc import LOGICAL_BITS, HybridLogicalClock


def test_the_clock_never_goes_back_even_when_the_wall_clock_does() -> None:
    wall = [1_000]
    clock = HybridLogicalClock(wall_ms=lambda: wall[0])
    first = clock.now()
    wall[0] = 500  # the wall clock jumps back
    second = clock.now()
    assert second > first and second >> LOGICAL_BITS == 1_000


def test_an_observed_remote_clock_orders_later_local_events_after_it() -> None:
    clock = HybridLogicalClock(wall_ms=lambda: 1_000)
    remote = (5_000 << LOGICAL_BITS) + 7
    clock.observe(remote)
    assert clock.now() > remote
