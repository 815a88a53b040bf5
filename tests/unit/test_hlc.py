"""The hybrid logical clock only moves forward and orders after what it observed."""

from __future__ import annotations

import pytest

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


def test_a_clock_far_ahead_pulls_this_one_only_up_to_the_drift_bound() -> None:
    wall = 1_000_000
    clock = HybridLogicalClock(wall_ms=lambda: wall, max_drift_ms=60_000)
    an_hour_ahead = (wall + 3_600_000) << LOGICAL_BITS
    assert clock.observe(an_hour_ahead) is False
    assert clock.bounded == 1
    assert (wall + 60_000) << LOGICAL_BITS <= clock.now() < an_hour_ahead
    near = (wall + 30_000) << LOGICAL_BITS  # within the bound: folded as it is
    assert clock.observe(near) is True and clock.bounded == 1


def test_the_clock_keeps_its_own_past_even_beyond_the_drift_bound() -> None:
    own_past = (5_000_000 << LOGICAL_BITS) + 3  # written before the wall clock stepped back an hour
    clock = HybridLogicalClock(own_past, wall_ms=lambda: 5_000_000 - 3_600_000, max_drift_ms=60_000)
    assert clock.now() == own_past + 1


def test_the_clock_refuses_to_pass_the_largest_avro_long() -> None:
    from dssync.errors import UsageError
    from dssync.hlc import MAX_HLC

    clock = HybridLogicalClock(MAX_HLC, wall_ms=lambda: 1_000)
    with pytest.raises(UsageError, match="2\\*\\*63"):
        clock.now()


def test_its_own_past_ahead_of_the_wall_clock_is_not_counted_as_a_peer_far_ahead() -> None:
    own_past = 5_000_000 << LOGICAL_BITS
    clock = HybridLogicalClock(own_past, wall_ms=lambda: 5_000_000 - 3_600_000, max_drift_ms=60_000)
    assert clock.observe(own_past) is True and clock.bounded == 0
