"""A mirrored Kafka topic, read in the offsets of the log it was copied from.

The Kafka-to-Kafka mirror (``dssync.sync.kafka_mirror``) cannot keep offsets across
clusters, so every record it writes carries its source offset and source append time in
headers. This read-only view turns them back into the source's offsets and times: a store
consuming the mirror commits positions in the *source* log's offsets, exactly as if it read
the source directly (a shared cluster) or an offset-preserving file mirror. So pairing
snapshots, lag and ``verify`` speak one language whatever the topology.

It reads records as soon as they are written, without waiting for the mirror's commit
(``read_uncommitted``), because every record a mirror writes, committed or not, is a
byte-for-byte copy of a record the *source* had committed (the mirror reads the source
``read_committed``). A transaction the mirror did not commit (it was killed, or fenced) is
copied again by the next cycle, from the destination's last committed record on, so a
reader can meet a source offset twice, never a wrong value: it keeps the first copy and
skips any record whose source offset it has passed. So a mirrored record is readable one
commit round trip and one commit marker earlier, and still exactly once. The mirror itself
resumes from the last *committed* record (``TopicReader`` in its default ``read_committed``).

Seeking to a source offset uses the headers: source offsets increase with destination
offsets within a cycle, and each cycle starts again at or below the offsets already
written, so a binary search over destination offsets finds a record at or after the source
offset from which every later source offset follows; sequential reads then continue from
where the previous read stopped, without searching.

Error contract: that of ``dssync.log.base`` for reads (``BackendUnavailableError`` when the
cluster does not answer); a record without the mirror's headers raises ``CorruptLogError``
(the topic is not a dssync mirror). It cannot be appended to.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from dssync.errors import BackendUnavailableError, CorruptLogError, OffsetOutOfRangeError, UsageError
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns, read_in_steps
from dssync.log.kafka import KafkaSettings, probe

H_SRC_OFFSET = "dssync-src-offset"
H_SRC_TS = "dssync-src-ts"
H_SRC_TOPIC = "dssync-src"
H_ORIGIN = "origin"
H_THROUGH = "dssync-through"
"""On a record with an empty value: the source had nothing but transaction markers up to
here (its source offset + 1), so a consumer may advance past them, as on the source."""


MIRROR_INFIX = "mirror."


def mirror_topic(prefix: str, name: str) -> str:
    """The topic holding appliance ``name``'s log at the other site."""
    return f"{prefix}{MIRROR_INFIX}{name}"


def source_position(record: Any) -> tuple[int, int]:
    """(source offset, source append time) from a mirrored record's headers."""
    off = ts = None
    for key, value in record.headers or ():
        if key == H_SRC_OFFSET:
            off = int.from_bytes(value, "big")
        elif key == H_SRC_TS:
            ts = int.from_bytes(value, "big")
    if off is None or ts is None:
        raise CorruptLogError(f"record {record.offset} of {record.topic} has no dssync mirror headers",
                              hint="only topics written by 'dssync mirror' can be read as mirrors")
    return off, ts


class TopicReader:
    """A consumer on one single-partition topic (``read_committed`` unless told), with bounded waits."""

    def __init__(self, settings: KafkaSettings, topic: str, isolation: str = "read_committed") -> None:
        self.settings, self.topic, self.tp = settings, topic, TopicPartition(topic, 0)
        probe(settings)
        try:
            self.consumer = KafkaConsumer(
                **settings.client_options(), enable_auto_commit=False, isolation_level=isolation,
                group_id=None, auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                fetch_max_bytes=32 << 20, fetch_max_wait_ms=20,  # as KafkaLog's
            )
        except KafkaTimeoutError:
            raise BackendUnavailableError(f"cannot reach Kafka at {settings.bootstrap_servers}",
                                          hint="check that the broker runs and the address is right") from None
        self.consumer.assign([self.tp])

    def bounds(self) -> tuple[int, int]:
        """(beginning, end) offsets; the end is the last stable offset under read_committed,
        the high watermark under read_uncommitted."""
        try:
            c = self.consumer
            return int(c.beginning_offsets([self.tp])[self.tp]), int(c.end_offsets([self.tp])[self.tp])
        except (KafkaTimeoutError, KafkaError) as exc:
            raise BackendUnavailableError(f"Kafka at {self.settings.bootstrap_servers} did not answer "
                                          f"for {self.topic}: {type(exc).__name__}") from None

    def fetch(self, start: int, end: int, max_records: int) -> list[Any]:
        """Records with ``start <= offset < end``, up to ``max_records`` (fewer at the end)."""
        c = self.consumer
        out: list[Any] = []
        deadline = time.monotonic() + self.settings.timeout_ms / 1000
        try:
            c.seek(self.tp, start)
            while len(out) < max_records and c.position(self.tp) < end:
                got = c.poll(timeout_ms=200, max_records=max_records - len(out)).get(self.tp, [])
                if got:
                    out.extend(r for r in got if start <= r.offset < end)
                    deadline = time.monotonic() + self.settings.timeout_ms / 1000
                elif time.monotonic() > deadline:
                    raise BackendUnavailableError(f"no data from Kafka topic {self.topic} below offset {end}")
        except (KafkaTimeoutError, KafkaError) as exc:  # position() and poll() raise while the broker is down
            raise BackendUnavailableError(f"Kafka at {self.settings.bootstrap_servers} did not answer "
                                          f"for {self.topic}: {type(exc).__name__}") from None
        return out[:max_records]

    def last_record(self) -> Any | None:
        """The last data record (the last committed one under read_committed), or None if the
        topic holds none (markers skipped)."""
        begin, end = self.bounds()
        step = 16
        while end > begin:
            lo = max(begin, end - step)
            recs = self.fetch(lo, end, 1 << 30)
            if recs:
                return recs[-1]
            if lo == begin:
                return None
            step *= 8
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing must never raise
            self.consumer.close()


class MirroredTopic:
    """``LogReader`` over a mirror topic, in source offsets (module docstring)."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self.reader = TopicReader(settings, topic, isolation="read_uncommitted")
        self.read_through: int | None = None
        self._cursor: tuple[int, int] | None = None  # (next source offset, its destination offset)

    def _seek(self, src: int, begin: int, end: int) -> int:
        """A destination offset from which every source offset >= ``src`` follows (the first
        record at or after it has a source offset >= ``src``, the one before it a lower one)."""
        if self._cursor is not None and self._cursor[0] == src:
            return self._cursor[1]
        lo, hi = begin, end
        while lo < hi:
            mid = (lo + hi) // 2
            recs = self.reader.fetch(mid, end, 1)
            if not recs:
                hi = mid
                continue
            if source_position(recs[0])[0] >= src:
                hi = mid
            else:
                lo = recs[0].offset + 1
        return lo

    def read(self, from_offset: int, max_records: int = 10_000) -> list[LogRecord]:
        begin, end = self.reader.bounds()
        sequential = self._cursor is not None and self._cursor[0] == from_offset
        at = self._seek(from_offset, begin, end)
        if not sequential and at == begin and begin > 0:
            first = self.reader.fetch(begin, end, 1)
            if first and source_position(first[0])[0] > from_offset:
                raise OffsetOutOfRangeError(
                    f"offset {from_offset} is below the start {source_position(first[0])[0]} of mirror topic "
                    f"{self.topic} (retention)")
        out: list[LogRecord] = []
        self.read_through = None
        want = from_offset  # the next source offset to deliver: anything below is a copy already read
        while at < end and len(out) < max_records:
            got = self.reader.fetch(at, end, max_records - len(out))
            if not got:
                break  # only transaction markers up to the end
            for r in got:
                off, ts = source_position(r)
                if off >= want:
                    if any(k == H_THROUGH for k, _ in r.headers or ()):
                        if out:
                            return out  # the next read reports it
                        self.read_through = off + 1
                    else:
                        out.append(LogRecord(off, ts, r.value))
                    want = off + 1
                at = r.offset + 1
                # from destination offset ``at`` on, every source offset from ``want`` follows
                self._cursor = (want, at)
        if out:
            self.read_through = None
        return out

    def read_columns(self, from_offset: int, max_records: int = 10_000, max_bytes: int = 64 << 20) -> RecordColumns:
        """``read`` as columns, in reads of at most 10,000 records until a bound is reached."""
        return read_in_steps(self.read, from_offset, max_records, max_bytes)

    def start_offset(self) -> int:
        """0 while the mirror topic holds everything it was given; else its first source offset."""
        begin, end = self.reader.bounds()
        if begin == 0:
            return 0
        recs = self.reader.fetch(begin, end, 1)
        return source_position(recs[0])[0] if recs else self.end_offset()

    def end_offset(self) -> int:
        last = self.reader.last_record()
        return source_position(last)[0] + 1 if last is not None else 0

    def offset_for_time(self, timestamp_ms: int) -> int:
        raise UsageError("a mirror topic is not indexed by time", hint="read the source topic instead")

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> MirroredTopic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
