"""The consumer's resume rules, with a scripted log (a unit test: the real logs have theirs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from dssync.consumers.consumer import Consumer
from dssync.consumers.store import Store
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns
from dssync.schemas import encode_segment_stored, origin_field


class ScriptedLog:
    """Answers ``read`` from a script, as a log being written concurrently would."""

    def __init__(self, reads: list[list[LogRecord]], end: int, read_through: int | None = None) -> None:
        self.reads, self.end, self.read_through_value = reads, end, read_through
        self.read_through: int | None = None

    def read(self, from_offset: int, max_records: int = 10_000) -> list[LogRecord]:
        self.read_through = self.read_through_value
        return self.reads.pop(0) if self.reads else []

    def read_columns(self, from_offset: int, max_records: int = 10_000, max_bytes: int = 1 << 26) -> RecordColumns:
        return RecordColumns.from_records(self.read(from_offset, max_records))

    def start_offset(self) -> int:
        return 0

    def end_offset(self) -> int:
        return self.end

    def append(self, values: Sequence[bytes]) -> int:
        raise NotImplementedError


def _rec(offset: int) -> LogRecord:
    data = b"segment %d" % offset + b"." * 32
    return LogRecord(offset, 0, encode_segment_stored(origin_field("sh1"), offset + 1, data[:16], data))


def test_an_empty_read_of_a_batch_still_being_written_never_moves_the_offset(tmp_path: Path) -> None:
    store = Store(str(tmp_path), create=True, fsync=False)
    log = ScriptedLog([[]], end=10)  # the batch at 0..9 completed right after the read looked
    Consumer(log, store, "log:sh1").step()  # type: ignore[arg-type]
    assert store.committed("log:sh1") == 0
    log.reads = [[_rec(i) for i in range(10)]]
    Consumer(log, store, "log:sh1").step()  # type: ignore[arg-type]
    assert store.committed("log:sh1") == 10 and store.stats()["live_segments"] == 10


def test_a_read_through_transaction_markers_moves_the_offset_past_them(tmp_path: Path) -> None:
    store = Store(str(tmp_path), create=True, fsync=False)
    log = ScriptedLog([[]], end=7, read_through=7)
    Consumer(log, store, "log:sh1").step()  # type: ignore[arg-type]
    assert store.committed("log:sh1") == 7


def test_a_peer_segment_whose_bytes_do_not_hash_to_its_reference_is_refused_with_nothing_applied(
        tmp_path: Path) -> None:
    from dssync.errors import CorruptLogError
    from dssync.producers.hierarchy import segment_ref

    def good(offset: int) -> LogRecord:
        data = b"segment %d" % offset + b"." * 32
        return LogRecord(offset, 0, encode_segment_stored(origin_field("sh1"), offset + 1, segment_ref(data), data))

    store = Store(str(tmp_path), create=True, fsync=False)
    records = [good(i) for i in range(5)] + [_rec(5)]  # _rec's reference is not the hash of its bytes
    log = ScriptedLog([records], end=6)
    with pytest.raises(CorruptLogError, match="offset 5 does not hash to its reference"):
        Consumer(log, store, "log:sh1", check_refs=True).step()  # type: ignore[arg-type]
    assert store.committed("log:sh1") == 0 and store.stats()["rows"] == 0
    log.reads = [[good(i) for i in range(6)]]
    assert Consumer(log, store, "log:sh1", check_refs=True).step().applied == 6  # type: ignore[arg-type]


class ListLog(ScriptedLog):
    """A whole log in memory, read from any offset."""

    def __init__(self, records: list[LogRecord]) -> None:
        super().__init__([], end=len(records))
        self.records = records

    def read(self, from_offset: int, max_records: int = 10_000) -> list[LogRecord]:
        return [r for r in self.records if r.offset >= from_offset][:max_records]


def test_a_peer_record_that_cannot_be_applied_is_set_aside_and_the_rest_applied(tmp_path: Path) -> None:
    from dssync.consumers.quarantine import Quarantine
    from dssync.producers.hierarchy import segment_ref

    def good(offset: int) -> LogRecord:
        data = b"segment %d" % offset + b"." * 32
        return LogRecord(offset, 1000 + offset, encode_segment_stored(origin_field("sh1"), offset + 1,
                                                                      segment_ref(data), data))

    cut = LogRecord(3, 1003, good(3).value[:-5])  # CRC-valid in its batch, but its body is cut short
    records = [good(0), good(1), good(2), cut, good(4), _rec(5), good(6), good(7)]  # 5: a forged segment
    store = Store(str(tmp_path / "store"), create=True, fsync=False)
    aside = Quarantine(str(tmp_path))
    consumer = Consumer(ListLog(records), store, "log:sha", check_refs=True, quarantine=aside)  # type: ignore[arg-type]
    applied = skipped = 0
    while store.committed("log:sha") < len(records):
        r = consumer.step()
        assert r.applied or r.skipped  # every step moves on
        applied, skipped = applied + r.applied, skipped + r.skipped
    assert (applied, skipped) == (6, 2)
    assert store.stats()["live_segments"] == 6
    entries = aside.entries()
    assert [(e["source"], e["offset"], e["appended_ms"]) for e in entries] == [("log:sha", 3, 1003), ("log:sha", 5, 0)]
    assert "hash to its reference" in entries[1]["reason"] and entries[0]["reason"]
    assert (tmp_path / "quarantine" / entries[0]["file"]).read_bytes() == cut.value  # kept as it came
    assert consumer.step().applied == 0 and len(aside.entries()) == 2  # nothing set aside twice


def test_without_a_quarantine_a_record_that_cannot_be_applied_stops_the_consumer(tmp_path: Path) -> None:
    from dssync.errors import CorruptLogError

    store = Store(str(tmp_path), create=True, fsync=False)
    bad = LogRecord(0, 0, _rec(0).value[:-5])
    with pytest.raises(CorruptLogError):
        Consumer(ListLog([bad]), store, "log:sh1").step()  # type: ignore[arg-type]
    assert store.committed("log:sh1") == 0
