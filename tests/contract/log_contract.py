"""The contracts every log backend passes (see dssync.log.base).

``ReaderContract`` is what every ``LogReader`` does, whoever wrote the log; a backend's test
class provides ``make_reader`` (a reader over a log holding the given batches, appended in
order) and ``make_trimmed_reader`` (the same after retention removed its oldest records).
``LogContract`` adds what a writable ``Log`` does; its backends provide ``make_log`` (a fresh,
writable, empty log) and ``reopen`` (the same log opened again, as after a restart), and get
``make_reader`` from them.
"""

from __future__ import annotations

import os

import pytest

from dssync.errors import OffsetOutOfRangeError, UsageError
from dssync.log.base import Log, LogReader

BATCHES = [[b"a", b"b", b"c"], [b"d"], [b"x%d" % i for i in range(10)], [os.urandom(300_000), b"small"]]
VALUES = [v for batch in BATCHES for v in batch]


class ReaderContract:
    indexed_by_time = True
    """False for a log whose ``offset_for_time`` raises ``UsageError`` (a mirror topic)."""

    def make_reader(self, batches: list[list[bytes]]) -> LogReader:
        raise NotImplementedError

    def make_trimmed_reader(self, batches: list[list[bytes]]) -> LogReader:
        raise NotImplementedError

    def _all(self, log: LogReader) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        at = log.start_offset()
        while at < log.end_offset():
            recs = log.read(at, 7)
            if not recs:
                break
            out.extend((r.offset, r.value) for r in recs)
            at = recs[-1].offset + 1
        return out

    def test_records_are_read_back_in_append_order_under_increasing_offsets(self) -> None:
        with self.make_reader(BATCHES) as log:
            got = self._all(log)
            assert [v for _, v in got] == VALUES
            offsets = [o for o, _ in got]
            assert offsets == sorted(set(offsets))
            assert log.start_offset() <= offsets[0] and offsets[-1] < log.end_offset()

    def test_a_read_from_the_middle_of_a_batch_starts_at_that_offset(self) -> None:
        with self.make_reader(BATCHES) as log:
            offsets = [o for o, _ in self._all(log)]
            middle = offsets[4 + 4]  # the fifth value of the third batch
            recs = log.read(middle, 3)
            assert [r.value for r in recs] == [b"x4", b"x5", b"x6"] and recs[0].offset == middle

    def test_a_read_at_the_end_returns_nothing(self) -> None:
        with self.make_reader(BATCHES) as log:
            assert log.read(log.end_offset(), 10) == []

    def test_read_columns_returns_at_most_max_records_and_at_least_one_however_small_max_bytes(self) -> None:
        with self.make_reader(BATCHES) as log:
            start = log.start_offset()
            two = log.read_columns(start, max_records=2)
            assert [two.value(i) for i in range(len(two))] == VALUES[:2]
            offsets = [o for o, _ in self._all(log)]
            big = offsets[VALUES.index(BATCHES[3][0])]
            one = log.read_columns(big, max_records=100, max_bytes=1)
            assert len(one) >= 1 and int(one.offsets[0]) == big and one.value(0) == BATCHES[3][0]

    def test_timestamps_do_not_go_backwards(self) -> None:
        with self.make_reader(BATCHES) as log:
            ts = [r.timestamp_ms for r in log.read(log.start_offset(), 100)]
            assert ts == sorted(ts) and ts[0] > 0

    def test_offset_for_time_finds_the_first_record_at_or_after_it(self) -> None:
        with self.make_reader(BATCHES) as log:
            first = log.read(log.start_offset(), 1)[0]
            if not self.indexed_by_time:
                with pytest.raises(UsageError):
                    log.offset_for_time(first.timestamp_ms)
                return
            assert log.offset_for_time(first.timestamp_ms) <= first.offset
            assert log.offset_for_time(first.timestamp_ms + 10**9) == log.end_offset()

    def test_reading_below_the_start_after_retention_is_an_offset_error(self) -> None:
        with self.make_trimmed_reader(BATCHES * 20) as log:
            start = log.start_offset()
            assert start > 0, "retention removed nothing: the test proves nothing"
            with pytest.raises(OffsetOutOfRangeError):
                log.read(start - 1, 1)
            assert log.read(start, 1)[0].offset == start


class LogContract(ReaderContract):
    def make_log(self) -> Log:
        raise NotImplementedError

    def reopen(self, log: Log) -> Log:
        raise NotImplementedError

    def make_reader(self, batches: list[list[bytes]]) -> LogReader:
        log = self.make_log()
        log.append_batches(batches)
        return log

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
