"""The doorbell between a home's mirror and its service."""

from __future__ import annotations

import select
from pathlib import Path

from dssync.doorbell import Doorbell, Ringer
from dssync.process import StopFlag


def _readable(bell: Doorbell, timeout: float) -> bool:
    return bool(select.select([bell.fileno()], [], [], timeout)[0])


def test_a_ring_wakes_the_waiting_service_and_clear_forgets_it(tmp_path: Path) -> None:
    bell = Doorbell.open(str(tmp_path))
    assert bell is not None
    ringer = Ringer(str(tmp_path))
    try:
        assert not _readable(bell, 0)
        ringer.ring()
        ringer.ring()
        assert _readable(bell, 5)
        bell.clear()
        assert not _readable(bell, 0)
    finally:
        ringer.close()
        bell.close()


def test_rings_reach_only_the_bell_of_their_own_home(tmp_path: Path) -> None:
    a, b = Doorbell.open(str(tmp_path / "a")), Doorbell.open(str(tmp_path / "b"))
    assert a is not None and b is not None
    ringer = Ringer(str(tmp_path / "a"))
    try:
        ringer.ring()
        assert _readable(a, 5)
        assert not _readable(b, 0)
    finally:
        ringer.close()
        a.close()
        b.close()


def test_a_home_has_one_bell_and_ringing_without_one_is_harmless(tmp_path: Path) -> None:
    bell = Doorbell.open(str(tmp_path))
    assert bell is not None
    assert Doorbell.open(str(tmp_path)) is None  # taken: that service polls
    bell.close()
    ringer = Ringer(str(tmp_path))
    ringer.ring()  # nobody listens: no error
    ringer.close()


def test_a_stop_flag_wait_returns_on_a_ring_without_a_stop(tmp_path: Path) -> None:
    bell = Doorbell.open(str(tmp_path))
    assert bell is not None
    ringer = Ringer(str(tmp_path))
    stop = StopFlag()
    try:
        ringer.ring()
        assert stop.wait(None, wake=bell.fileno()) is False  # no timeout: only the ring returns it
        stop.set()
        assert stop.wait(30, wake=bell.fileno()) is True
    finally:
        ringer.close()
        bell.close()
