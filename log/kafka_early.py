"""Reading a transactional topic before its transactions end, with their outcome.

A ``read_committed`` consumer sees an appended batch only once its transaction's commit
marker is written: for a mirror that copies into a transaction of its own, that wait and
the copy's own produce round trips happen one after the other. ``EarlyReader`` returns the
records as soon as they are appended (``read_uncommitted``) *and* the transaction markers
between them, in offset order, so a mirror can send records into its destination
transaction while the source's commit is still on its way, and commit (or abort) when the
source's marker says so (``dssync.sync.kafka_mirror``).

kafka-python hides transaction markers from consumers. They are seen here by tapping the
record batches the consumer's fetcher decodes (``Fetcher.PartitionRecords``, kafka-python
3.0, pinned in pyproject.toml): the tap reads each batch's header before the fetcher skips
or yields it, and changes nothing in what the consumer returns. If the tap cannot be
installed (another kafka-python), ``EarlyReader.open`` returns None and callers read
committed records as before.

The outcome is only decidable when every transaction in range comes from one producer at a
time, which is how dssync writes an appliance's log (one transactional writer per topic;
Kafka fences older ones). Anything else (records outside a transaction, two producers'
records interleaved, a marker for another producer's open records) raises
``EarlyReadUnsupported``: the caller then reads committed records only.

Error contract: ``read`` raises ``BackendUnavailableError`` when the cluster does not answer,
``OffsetOutOfRangeError`` below the topic's start, ``EarlyReadUnsupported`` as above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from dssync.errors import BackendUnavailableError, OffsetOutOfRangeError
from dssync.log.base import LogRecord
from dssync.log.kafka import KafkaSettings, _unavailable

log = logging.getLogger("dssync.kafka")


@dataclass(frozen=True)
class Marker:
    """A transaction marker at ``offset``: the records before it since the previous marker
    were committed (``committed``) or aborted."""

    offset: int
    committed: bool


class EarlyReadUnsupported(Exception):
    """The topic holds something whose outcome the early reader cannot decide (module docstring)."""


@dataclass(frozen=True)
class _BatchInfo:
    base: int
    last: int
    producer_id: int
    transactional: bool
    control: Any  # the control batch itself, or None for a batch of records

    def aborts(self) -> bool:
        record = next(iter(self.control), None)
        return bool(record is not None and record.abort)


class _BatchTap:
    """Stands in for the fetcher's ``MemoryRecords``: hands out the same batches, noting each."""

    def __init__(self, inner: Any, sink: Callable[[_BatchInfo], None]) -> None:
        self._inner, self._sink = inner, sink

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        batch = self._inner.next_batch(*args, **kwargs)
        if batch is not None and getattr(batch, "magic", 0) == 2:
            # a control batch's record is read later, once the fetcher is done with the batch
            # (it checks the CRC first, before any iteration)
            control = bool(batch.is_control_batch)
            self._sink(_BatchInfo(batch.base_offset, batch.last_offset, batch.producer_id,
                                  bool(batch.is_transactional), batch if control else None))
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _install_tap(consumer: KafkaConsumer, sink: Callable[[_BatchInfo], None]) -> bool:
    fetcher: Any = getattr(consumer, "_fetcher", None)
    base = getattr(type(fetcher), "PartitionRecords", None)
    if fetcher is None or base is None:
        return False

    class Tapped(base):  # type: ignore[misc, valid-type]
        def __init__(self, fetch_offset: int, tp: TopicPartition, records: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(fetch_offset, tp, _BatchTap(records, sink), *args, **kwargs)

    fetcher.PartitionRecords = Tapped  # this consumer's fetcher only
    return True


class EarlyReader:
    """A ``read_uncommitted`` consumer of one single-partition topic that also returns the
    transaction markers (module docstring)."""

    def __init__(self, consumer: KafkaConsumer, settings: KafkaSettings, topic: str) -> None:
        self._consumer, self.settings, self.topic = consumer, settings, topic
        self.tp = TopicPartition(topic, 0)
        self._batches: list[_BatchInfo] = []
        self._open_producer: int | None = None  # producer of the records since the last marker
        self._next = -1

    @classmethod
    def open(cls, settings: KafkaSettings, topic: str) -> EarlyReader | None:
        """An early reader of ``topic``, or None if this kafka-python cannot show markers."""
        try:
            consumer = KafkaConsumer(
                **settings.client_options(), enable_auto_commit=False, isolation_level="read_uncommitted",
                group_id=None, auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                fetch_max_bytes=32 << 20, fetch_max_wait_ms=20)
        except KafkaTimeoutError as exc:
            raise _unavailable(settings, exc) from None
        reader = cls(consumer, settings, topic)
        if not _install_tap(consumer, reader._batches.append):
            consumer.close()
            log.info("this kafka-python does not let dssync see transaction markers; reading committed records")
            return None
        consumer.assign([reader.tp])
        return reader

    def read(self, from_offset: int, max_records: int, wait_ms: int) -> list[LogRecord | Marker]:
        """Records and markers from ``from_offset`` in offset order, waiting up to ``wait_ms``
        at the broker when there is nothing yet. Continuing where the previous read ended
        needs no seek."""
        c = self._consumer
        try:
            if from_offset != self._next:
                start = int(c.beginning_offsets([self.tp])[self.tp])
                if from_offset < start:
                    raise OffsetOutOfRangeError(
                        f"offset {from_offset} is below the start {start} of Kafka topic {self.topic} (retention)")
                c.seek(self.tp, from_offset)
                self._batches.clear()
                self._open_producer = None
            got = c.poll(timeout_ms=wait_ms, max_records=max_records).get(self.tp, [])
            position = c.position(self.tp)
        except KafkaTimeoutError as exc:
            raise _unavailable(self.settings, exc) from None
        except KafkaError as exc:
            raise BackendUnavailableError(f"reading {self.topic} failed: {type(exc).__name__}") from None
        records = [LogRecord(r.offset, r.timestamp, r.value) for r in got if r.offset >= from_offset]
        self._next = max(from_offset, position if position is not None else from_offset)
        return self._merge(records, from_offset, self._next)

    @property
    def position(self) -> int:
        """Where the next read continues without a seek."""
        return self._next

    def _merge(self, records: list[LogRecord], lo: int, hi: int) -> list[LogRecord | Marker]:
        """Interleave the markers of the batches decoded so far with ``records``, checking that
        every outcome is decidable. Batches at or past ``hi`` stay for the next read."""
        now = [b for b in self._batches if lo <= b.last and b.base < hi]
        self._batches[:] = [b for b in self._batches if b.base >= hi]
        out: list[LogRecord | Marker] = []
        i = 0
        for b in sorted(now, key=lambda b: b.base):
            if b.control is not None:
                if self._open_producer not in (None, b.producer_id):
                    raise EarlyReadUnsupported(f"a marker of producer {b.producer_id} at offset {b.base} of "
                                               f"{self.topic} while producer {self._open_producer} has records open")
                while i < len(records) and records[i].offset < b.base:
                    out.append(records[i])
                    i += 1
                if b.base >= lo:
                    out.append(Marker(b.base, not b.aborts()))
                self._open_producer = None
            else:
                if not b.transactional:
                    raise EarlyReadUnsupported(f"records outside any transaction at offset {b.base} of {self.topic}")
                if self._open_producer not in (None, b.producer_id):
                    raise EarlyReadUnsupported(f"records of two producers open at once at offset {b.base} of "
                                               f"{self.topic}")
                self._open_producer = b.producer_id
        out.extend(records[i:])
        return out

    def close(self) -> None:
        try:
            self._consumer.close()
        except Exception as exc:  # closing must never raise
            log.debug("closing an early reader: %s", exc)
