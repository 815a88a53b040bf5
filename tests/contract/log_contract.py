"""The contract every log backend passes (see dssync.log.base).

A backend's test module subclasses ``LogContract`` and provides ``make_log`` (a fresh,
writable, empty log) and ``reopen`` (the same log opened again, as after a restart).
"""

from __future__ import annotations

import os

import pytest

from dssync.errors import OffsetOutOfRangeError, UsageError
from dssync.log.base import Log


class LogContract:
    def make_log(self) -> Log:
        raise NotImplementedError

    def reopen(self, log: Log) -> Log:
        raise NotImplementedError

    def test_append_returns_consecutive_base_offsets(self) -> None:
        log = self.make_log()
        first = log.append([b"a", b"b", b"c"])
        second = log.append([b"d"])
        assert second > first
        records = log.read(first, 100)
        assert [r.value for r in records] == [b"a", b"b", b"c", b"d"]
        assert [r.offset for r in records] == sorted({r.offset for r in records})
        assert records[3].offset == second
        log.close()

    def test_appended_batches_are_read_back_in_order_after_one_durable_write(self) -> None:
        log = self.make_log()
        first = log.append_batches([[b"w1", b"w2"], [b"w3"], [b"w4", b"w5"]])
        records = log.read(first, 100)
        assert [r.value for r in records] == [b"w1", b"w2", b"w3", b"w4", b"w5"]
        log.close()
        again = self.reopen(log)
        assert [r.value for r in again.read(first, 100)] == [b"w1", b"w2", b"w3", b"w4", b"w5"]
        again.close()

    def test_read_from_the_middle_of_a_batch_starts_at_that_offset(self) -> None:
        log = self.make_log()
        base = log.append([b"x%d" % i for i in range(10)])
        records = log.read(base + 4, 3)
        assert [r.value for r in records] == [b"x4", b"x5", b"x6"]
        assert records[0].offset == base + 4
        log.close()

    def test_read_at_the_end_returns_nothing(self) -> None:
        log = self.make_log()
        log.append([b"only"])
        assert log.read(log.end_offset(), 10) == []
        log.close()

    def test_end_offset_moves_past_every_appended_record(self) -> None:
        log = self.make_log()
        start = log.end_offset()
        base = log.append([b"1", b"2"])
        assert base >= start
        assert log.end_offset() > base + 1
        log.close()

    def test_appended_records_survive_reopening(self) -> None:
        log = self.make_log()
        values = [os.urandom(100) for _ in range(50)]
        base = log.append(values)
        log.flush()
        again = self.reopen(log)
        assert [r.value for r in again.read(base, 100)] == values
        again.close()

    def test_timestamps_do_not_go_backwards(self) -> None:
        log = self.make_log()
        base = log.append([b"a"])
        log.append([b"b"])
        ts = [r.timestamp_ms for r in log.read(base, 10)]
        assert ts == sorted(ts) and ts[0] > 0
        log.close()

    def test_offset_for_time_finds_the_first_record_at_or_after_it(self) -> None:
        log = self.make_log()
        base = log.append([b"early"])
        first_ts = log.read(base, 1)[0].timestamp_ms
        assert log.offset_for_time(first_ts) <= base
        assert log.offset_for_time(first_ts + 10**9) == log.end_offset()
        log.close()

    def test_large_values_round_trip(self) -> None:
        log = self.make_log()
        big = os.urandom(300_000)
        base = log.append([big, b"small"])
        assert [r.value for r in log.read(base, 2)] == [big, b"small"]
        log.close()

    def test_empty_append_is_refused(self) -> None:
        log = self.make_log()
        with pytest.raises(UsageError):
            log.append([])
        log.close()

    def test_reading_below_the_start_is_an_offset_error_or_starts_at_start(self) -> None:
        log = self.make_log()
        log.append([b"a"])
        start = log.start_offset()
        if start > 0:
            with pytest.raises(OffsetOutOfRangeError):
                log.read(start - 1, 1)
        else:
            assert log.read(0, 1)[0].value == b"a"
        log.close()
