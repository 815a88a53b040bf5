"""The file log's durable end: how far the log may be served to the peer under its fsync policy."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dssync.errors import ResourceError
from dssync.log.filelog import FileLog
from tests.unit.faults import failing_fsync


def test_every_append_is_durable_at_once_under_always(tmp_path: Path) -> None:
    with FileLog(str(tmp_path / "log"), writer=True, create=True, fsync="always") as log:
        log.append([b"a", b"b"])
        assert log.durable_end() == log.end_offset() == 2


def test_under_interval_the_durable_end_waits_for_the_next_sync(tmp_path: Path) -> None:
    now = [1_000_000]
    with FileLog(str(tmp_path / "log"), writer=True, create=True, fsync="interval", fsync_interval_ms=1000,
                 clock_ms=lambda: now[0]) as log:
        log.append([b"a", b"b"])
        assert (log.end_offset(), log.durable_end()) == (2, 0)  # written, not synced: not served
        now[0] += 1000
        log.append([b"c"])
        assert log.durable_end() == 3
        log.append([b"d"])
        assert log.durable_end() == 3
        log.flush()
        assert log.durable_end() == 4


def test_under_never_what_is_written_is_synced_by_the_thread_that_serves_it(tmp_path: Path) -> None:
    """The writer syncs nothing under 'never'; the sync interface waiting for new batches syncs
    them before it serves them (from its own thread, the writer's lock held only around it), so a
    peer never mirrors what a power cut could take back."""
    lock = threading.RLock()
    synced: list[int] = []
    with FileLog(str(tmp_path / "log"), writer=True, create=True, fsync="never") as log:
        with lock:
            log.append([b"a", b"b"])
        assert log.durable_end() == 0  # written, not synced
        real = os.fdatasync
        with pytest.MonkeyPatch.context() as m:
            m.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
            assert log.wait_durable(0, 1.0, guard=lock) == 2
        assert synced and log.durable_end() == 2
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(log.wait_durable(2, 10.0, guard=lock)))
        waiter.start()
        time.sleep(0.1)
        with lock:
            log.append([b"c"])  # wakes the waiter, which syncs it
        waiter.join(10)
        assert got == [3] and log.durable_end() == 3


def test_a_failed_fsync_never_moves_the_durable_end_past_what_it_cut(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    log = FileLog(str(tmp_path / "log"), writer=True, create=True, fsync="always")
    log.append([b"kept"])

    with failing_fsync(monkeypatch), pytest.raises(ResourceError):
        log.append([b"lost", b"lost"])
    assert log.durable_end() == log.end_offset() == 1
    log.close()


def test_a_reopened_log_syncs_what_an_earlier_writer_left_before_counting_it_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(tmp_path / "log")
    now = [1_000_000]
    old = FileLog(d, writer=True, create=True, fsync="interval", fsync_interval_ms=10**9, clock_ms=lambda: now[0])
    old.append([b"a", b"b"])
    assert old.durable_end() == 0
    os.close(old._lock_fd)  # the process dies: no close, no sync  # type: ignore[arg-type]
    old._lock_fd = None
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    with FileLog(d, writer=True, fsync="interval", fsync_interval_ms=10**9) as log:
        assert synced  # the open synced the tail it found
        assert log.durable_end() == log.end_offset() == 2


def test_a_waiter_wakes_when_an_append_becomes_durable_and_not_before(tmp_path: Path) -> None:
    with FileLog(str(tmp_path / "log"), writer=True, create=True, fsync="always") as log:
        log.append([b"a"])
        assert log.wait_durable(1, 0.05) == 1  # nothing new: the wait times out
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(log.wait_durable(1, 30)))
        waiter.start()
        time.sleep(0.05)
        assert not got
        log.append([b"b", b"c"])
        waiter.join(30)
        assert got == [3]


def test_a_stop_ends_a_wait_at_once(tmp_path: Path) -> None:
    stop = threading.Event()
    with FileLog(str(tmp_path / "log"), writer=True, create=True) as log:
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(log.wait_durable(0, 30, stop.is_set)))
        waiter.start()
        time.sleep(0.05)
        stop.set()
        log.wake_waiters()
        waiter.join(30)
        assert got == [0]


def test_under_interval_a_quiet_log_becomes_durable_once_the_interval_has_passed(tmp_path: Path) -> None:
    now = [1_000_000]
    with FileLog(str(tmp_path / "log"), writer=True, create=True, fsync="interval", fsync_interval_ms=1000,
                 clock_ms=lambda: now[0]) as log:
        log.append([b"a"])
        log.sync_if_due()
        assert log.durable_end() == 0  # not yet due
        now[0] += 1000
        log.sync_if_due()  # nothing appended since: it syncs all the same
        assert log.durable_end() == 1


def test_make_durable_syncs_at_once_under_interval_and_leaves_never_alone(tmp_path: Path) -> None:
    now = [1_000_000]
    with FileLog(str(tmp_path / "interval"), writer=True, create=True, fsync="interval",
                 fsync_interval_ms=10**9, clock_ms=lambda: now[0]) as log:
        log.append([b"a", b"b"])
        assert log.durable_end() == 0
        log.make_durable()
        assert log.durable_end() == 2
    with FileLog(str(tmp_path / "never"), writer=True, create=True, fsync="never") as log:
        log.append([b"a"])
        log.make_durable()  # nothing to do: 'never' promises nothing across a power cut
        assert log.durable_end() == 0


def test_under_interval_the_store_never_commits_what_the_log_could_still_lose(tmp_path: Path) -> None:
    """A store commit is durable: were the log's events not, a power cut would leave the store
    ahead of its log (found by the power-cut campaign). Both ways events reach the store: applied
    from memory while the log writes them (ingest), and read back from the log (``applied``)."""
    import io
    import random

    from dssync.appliance.home import Appliance
    from dssync.schemas import encode

    with Appliance.create(str(tmp_path / "sh1"), "sh1", "SH", "1", fsync="interval",
                          fsync_interval_ms=10**9) as app:
        log = app.log
        assert isinstance(log, FileLog)
        seen: list[tuple[int, int]] = []
        apply = app.store.apply_columns

        def watched(source: str, columns: object, before_commit: object = None, **kw: object) -> object:
            def check() -> None:
                before_commit()  # type: ignore[operator]
                seen.append((log.durable_end(), log.end_offset()))
            return apply(source, columns, before_commit=check, **kw)  # type: ignore[arg-type]

        app.store.apply_columns = watched  # type: ignore[method-assign,assignment]
        app.ingest(io.BytesIO(random.Random(7).randbytes(1_000_000)))
        app.store.apply_columns = apply  # type: ignore[method-assign]
        assert seen and all(durable == end for durable, end in seen)
        log.append_batches([[encode("HeartbeatSent", {"origin": "sh1", "hlc": 1, "sent_ms": 1})]])
        assert log.durable_end() < log.end_offset()
        app.applied()
        assert app.store.committed(app.source) == log.end_offset() == log.durable_end()
