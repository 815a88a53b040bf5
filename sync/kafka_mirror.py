"""The mirror between sites on Kafka: copy one appliance's own log into a topic of another cluster.

Exactly once, by the same principle as the file mirror: the destination says where to resume.

* Every copied record carries its source offset and source append time in headers
  (``dssync.log.mirrored``), and copies go to the destination in Kafka transactions,
  committed every ``COMMIT_INTERVAL_S`` (and when the mirror stops). The transactional id is
  derived from the destination topic, so a second mirror on the same topic fences the first.
* Readers do not wait for those commits: every copy, committed or not, is a copy of a record
  the source had committed, and dssync's readers keep the first copy of each source offset
  (``dssync.log.mirrored``). So a copy is readable as soon as it is written, the mirror does
  not wait for its writes to be acknowledged before it reads on (the producer pipelines
  them), and the commit round trips are few and off the copy path. Commits only move the
  resume point on, and what ``read_committed`` readers (Kafka's own tools) see.
* A cycle starts by initialising the transactional producer, which aborts (or completes)
  whatever transaction a killed predecessor left open, and only then reads the last
  committed record of the destination: its source offset + 1 is the resume point. A crash
  at any instant therefore leaves either a whole transaction or none, and the next cycle
  continues right after the last whole one: no gap, no committed duplicate (the copies of
  the lost transaction are written again; readers keep one copy of each).
* The next transaction is opened, and the destination partition registered in it
  (AddPartitionsToTxn), right after a commit, while the source is read: the next copy then
  goes out at once. Such an armed transaction holds no record, so it holds back no reader;
  one left idle ``ARMED_IDLE_S`` is aborted. Armed idle time and the commit interval are each
  at most a quarter of the transaction timeout: a transaction must never reach it, which
  would fence the mirror. A transaction older than the timeout when fenced (a
  paused process) ends the cycle like an outage; a younger one means another mirror took
  over, and this one stops (``LockedError``).
* Any failure of either cluster ends the cycle; the next one starts from the destination
  again, after an exponential backoff (tenacity) with one log line per state change.

Loop prevention is structural: the source is always an appliance's *own* log (a file log
or the topic ``<prefix><name>``), never a mirror topic (``<prefix>mirror.<name>``, refused).

The source may be any ``dssync.log.base.Log``: a Kafka topic on the peer's cluster (Kafka to
Kafka) or an embedded file log (embedded to Kafka). Values are copied as they are, never
decoded and re-encoded.

If the source's retention removed offsets before they were copied, the gap is detected,
counted (in source offsets; on Kafka they include transaction markers, so it is an upper
bound of the events lost) and recorded in the mirror's state; copying continues from the
source's start, and the appliance service repairs its store from a snapshot of the peer's
(``Service._repair_gaps``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kafka import KafkaProducer, TopicPartition
from kafka.errors import InvalidProducerEpochError, KafkaError, KafkaTimeoutError, ProducerFencedError

from dssync import crashpoint
from dssync.errors import BackendUnavailableError, LockedError, OffsetOutOfRangeError, UsageError
from dssync.log.base import Log
from dssync.log.kafka import KafkaSettings, close_producer, create_topic, end_transaction, probe
from dssync.log.mirrored import (
    H_ORIGIN,
    H_SRC_OFFSET,
    H_SRC_TOPIC,
    H_SRC_TS,
    H_THROUGH,
    MIRROR_INFIX,
    TopicReader,
    source_position,
)

log = logging.getLogger("dssync.mirror")
THROUGH_AFTER_S = 0.2
ARMED_IDLE_S = 5.0
COMMIT_INTERVAL_S = 1.0


class OneWakeup:
    """Sends a batch of copies to the destination in one produce request.

    ``KafkaProducer.send`` wakes the producer's I/O thread whenever a record starts a new
    batch; that thread then takes the batch out at once, often with the first copy alone, and
    each later copy wakes it again (it wins the GIL at the wakeup's system call): one source
    read of ten records left in several produce requests, each a round trip more at the
    destination. Within ``held()``, the wakeups that ``send`` makes on the calling thread are
    held back and made once at the end. One exception: while the destination topic's metadata
    is unknown, a wakeup goes through at once (``send`` then waits for the metadata, which the
    I/O thread fetches). Other threads' wakeups (the I/O thread's own) always go through.

    Measured with the mirror at 500 events/s (five-mirror rounds, as ``dssync bench kafka``):
    p99 18.2 and 21.5 ms against 22.9 and 26.8 without, p90 12.8 and 13.2 against 13.6 and
    15.1. It needs kafka-python's ``_sender`` and ``_metadata`` (pinned <3.1); without them it
    does nothing.
    """

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.topic = topic
        self._sender = getattr(producer, "_sender", None)
        self._metadata = getattr(producer, "_metadata", None)
        self._wake: Callable[[], None] | None = getattr(self._sender, "wakeup", None)
        self._owner: int | None = None
        self._pending = False
        if self._wake is not None and self._metadata is not None:
            self._sender.wakeup = self._wakeup  # type: ignore[union-attr]

    def _wakeup(self) -> None:
        assert self._wake is not None
        if (self._owner == threading.get_ident() and self._metadata is not None
                and self._metadata.partitions_for_topic(self.topic) is not None):
            self._pending = True
            return
        self._wake()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._owner = threading.get_ident()
        try:
            yield
        finally:
            self._owner = None
            if self._pending:
                self._pending = False
                assert self._wake is not None
                self._wake()


class TopicCopier:
    """Copies ``source`` into ``dest_topic`` on the destination cluster (module docstring).

    ``start`` is where to begin when the destination is empty (default: the source's start).
    Counters in ``stats`` cover this process's lifetime.
    """

    def __init__(self, source: Log, source_name: str, dest: KafkaSettings, dest_topic: str, origin: str,
                 start: int | None = None, max_records: int = 5_000, retention_bytes: int = -1,
                 retention_ms: int = -1, wait_ms: int = 100, transaction_timeout_ms: int = 60_000,
                 commit_interval_s: float = COMMIT_INTERVAL_S) -> None:
        if MIRROR_INFIX in source_name or "/mirror/" in source_name:
            raise UsageError(f"{source_name} is a mirror topic; only an appliance's own log is mirrored",
                             hint="mirror the peer's own topic (<prefix><name>), never a mirror of it")
        self.source, self.source_name = source, source_name
        self.dest, self.dest_topic, self.origin = dest, dest_topic, origin
        self.start, self.max_records, self.wait_ms = start, max_records, wait_ms
        self.retention = (retention_bytes, retention_ms)
        self.next: int | None = None
        self.stats: dict[str, Any] = {"copied_records": 0, "copied_bytes": 0, "transactions": 0, "gaps": [],
                                      "not_copied_offsets": 0}
        self._producer: KafkaProducer | None = None
        self._one_wakeup: OneWakeup | None = None
        self._quiet_since: float | None = None
        self._armed_at: float | None = None  # when the open, still empty, transaction was armed
        self._txn_since = 0.0  # when the open transaction (if any) was opened
        self._copied_since: float | None = None  # when the open transaction got its first copy
        self._uncommitted = {"records": 0, "bytes": 0}  # copies in the open transaction
        self.transaction_timeout_ms = transaction_timeout_ms
        self.armed_idle_s = min(ARMED_IDLE_S, transaction_timeout_ms / 4000)
        self.commit_interval_s = min(commit_interval_s, transaction_timeout_ms / 4000)
        self._read_from = 0  # where to read next: the resume point, or past markers not yet recorded
        self._dest_tp = TopicPartition(dest_topic, 0)
        self._headers = [(H_ORIGIN, origin.encode()), (H_SRC_TOPIC, source_name.encode())]

    # ------------------------------------------------------------------ cycle

    def open(self) -> int:
        """Start a cycle: fence any predecessor, then derive the resume point; return it."""
        self.close()
        probe(self.dest)
        create_topic(self.dest, self.dest_topic, *self.retention)
        try:
            self._producer = KafkaProducer(
                **self.dest.client_options(), acks="all", enable_idempotence=True, compression_type="lz4",
                transactional_id=f"dssync-mirror-{self.dest_topic}", linger_ms=0, batch_size=1 << 20,
                max_request_size=16 << 20, retry_backoff_ms=10,  # a transaction still completing: ask again soon
                transaction_timeout_ms=self.transaction_timeout_ms,
            )
            self._producer.init_transactions()
            self._one_wakeup = OneWakeup(self._producer, self.dest_topic)
        except (KafkaTimeoutError, KafkaError) as exc:
            self.close()
            raise BackendUnavailableError(f"cannot open the mirror topic {self.dest_topic} at "
                                          f"{self.dest.bootstrap_servers}: {type(exc).__name__}") from None
        reader = TopicReader(self.dest, self.dest_topic)
        try:
            last = reader.last_record()
        finally:
            reader.close()
        if last is not None:
            self.next = source_position(last)[0] + 1
        else:
            self.next = self.start if self.start is not None else self.source.start_offset()
        self._read_from = self.next
        return self.next

    @property
    def follows(self) -> bool:
        """True when ``step`` waits at the source for new records (a Kafka source): a caller
        then need not pause between steps that copied nothing."""
        return getattr(self.source, "follow", None) is not None

    def step(self) -> int:
        """Copy what the source has from the resume point into the open transaction, first
        committing it if it is ``commit_interval_s`` old; return the records copied."""
        if self._producer is None or self.next is None:
            self.open()
        assert self._producer is not None and self.next is not None
        if self._copied_since is not None and time.monotonic() - self._copied_since >= self.commit_interval_s:
            self.commit()
        try:
            follow = getattr(self.source, "follow", None)
            at = max(self.next, self._read_from)
            records = (follow(at, self.max_records, self.wait_ms) if follow is not None
                       else self.source.read(at, self.max_records))
        except OffsetOutOfRangeError:
            start = self.source.start_offset()
            self._read_from = start
            gap = {"from": self.next, "source_start": start, "offsets": start - self.next,
                   "at_ms": int(time.time() * 1000)}
            self.stats["gaps"].append(gap)
            self.stats["not_copied_offsets"] += gap["offsets"]
            log.warning("mirror gap: source offsets %d..%d were removed by retention before being copied",
                        self.next, start - 1)
            self.next = start
            return 0
        through = max(getattr(self.source, "read_through", None) or 0, self._read_from)
        if not records:
            # Only transaction markers past the resume point: worth a record at the destination
            # once the source has stayed quiet a moment (a busy source moves it on anyway).
            now = time.monotonic()
            if self._armed_at is not None and now - self._armed_at > self.armed_idle_s:
                with self._writing():
                    self._armed_at = None
                    end_transaction(self._producer, False, self.dest.timeout_ms / 1000)
            if through <= self.next:
                self._quiet_since = None
                return 0
            self._read_from = through  # markers only: read on from there
            if self._quiet_since is None or now - self._quiet_since < THROUGH_AFTER_S:
                self._quiet_since = self._quiet_since or now
                return 0
        self._quiet_since = None
        p = self._producer
        held = self._one_wakeup.held() if self._one_wakeup is not None else contextlib.nullcontext()
        with self._writing(), held:
            if self._armed_at is None and self._copied_since is None:
                p.begin_transaction()
                self._txn_since = time.monotonic()
            self._armed_at = None
            for r in records:
                p.send(self.dest_topic, r.value, partition=0, headers=[
                    *self._headers, (H_SRC_OFFSET, r.offset.to_bytes(8, "big")),
                    (H_SRC_TS, r.timestamp_ms.to_bytes(8, "big"))])
            if not records:  # only transaction markers: say how far the source went
                p.send(self.dest_topic, b"", partition=0, headers=[
                    *self._headers, (H_SRC_OFFSET, (through - 1).to_bytes(8, "big")),
                    (H_SRC_TS, int(time.time() * 1000).to_bytes(8, "big")), (H_THROUGH, b"1")])
        crashpoint.reached("kafka-mirror.sent")  # copies on their way, their transaction open
        if self._copied_since is None:
            self._copied_since = time.monotonic()
        self._uncommitted["records"] += len(records)
        self._uncommitted["bytes"] += sum(len(r.value) for r in records)
        self.next = records[-1].offset + 1 if records else through
        return len(records)

    def commit(self, arm: bool = True, timeout_s: float | None = None) -> None:
        """Commit the copies of the open transaction (if any), then arm the next one."""
        p = self._producer
        if p is None or self._copied_since is None:
            return
        crashpoint.reached("kafka-mirror.committing")  # the copies sent, their commit not
        with self._writing():
            # the commit goes out once the sends are acknowledged (kafka-python's sender waits
            # for them); bounded, unlike commit_transaction
            end_transaction(p, True, timeout_s or self.dest.timeout_ms / 1000)
        crashpoint.reached("kafka-mirror.committed")  # the next transaction not yet armed
        self._copied_since = None
        if self._uncommitted["records"]:
            self.stats["copied_records"] += self._uncommitted["records"]
            self.stats["copied_bytes"] += self._uncommitted["bytes"]
            self.stats["transactions"] += 1
        self._uncommitted = {"records": 0, "bytes": 0}
        if arm:
            with self._writing():  # counted first: a failure here ends the cycle, not the copies
                self._arm(p)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Kafka's errors while writing, as dssync's: any of them ends the cycle."""
        try:
            yield
        except (KafkaTimeoutError, KafkaError) as exc:
            fenced = self._fenced(exc)
            self._drop_transaction()
            self.close()  # an open transaction is aborted by the next cycle's fencing
            if not fenced:
                raise BackendUnavailableError(f"writing to {self.dest_topic} failed: {type(exc).__name__}") from None
            age = time.monotonic() - self._txn_since
            if age > self.transaction_timeout_ms / 1000:
                # Kafka fences a producer whose transaction outlived its timeout exactly as it
                # fences one replaced by another mirror: this one stayed open longer than the
                # timeout (the process was paused?), so it is taken for that, and the next
                # cycle fences in turn. A real second mirror is then fenced with a young
                # transaction and stops, so two mirrors never take turns for long.
                raise BackendUnavailableError(f"the transaction on {self.dest_topic} stayed open {age:.0f} s, past "
                                              f"its timeout, and was aborted by the broker") from None
            raise LockedError(f"another mirror took over {self.dest_topic}",
                              hint="run one mirror per destination topic") from None

    def _fenced(self, exc: Exception) -> bool:
        """Whether ``exc`` means this producer was fenced: raised as such (a commit), or, for a
        send, the error the producer met on an earlier, pipelined write (its transaction
        manager's last error; kafka-python raises a plain ``KafkaError`` then)."""
        fenced = (ProducerFencedError, InvalidProducerEpochError)
        manager = getattr(self._producer, "_transaction_manager", None)
        causes = [exc, getattr(manager, "last_error", None), *exc.args]
        return any(isinstance(c, fenced) or (isinstance(c, type) and issubclass(c, fenced)) for c in causes)

    def _drop_transaction(self) -> None:
        """Forget the open transaction after a failure: it is never committed; its copies are
        copied again by the next cycle (readers keep one copy of each)."""
        self._armed_at = self._copied_since = None
        self._uncommitted = {"records": 0, "bytes": 0}

    def _arm(self, p: KafkaProducer) -> None:
        """Open the next transaction and register the destination partition in it now (module
        docstring). The registration uses kafka-python 3.0's transaction manager (pinned); on
        another version the transaction is only opened, and the first send registers it."""
        p.begin_transaction()
        self._armed_at = self._txn_since = time.monotonic()
        manager, sender = getattr(p, "_transaction_manager", None), getattr(p, "_sender", None)
        register = getattr(manager, "maybe_add_partition_to_transaction", None)
        if register is not None and sender is not None:
            register(self._dest_tp)
            sender.wakeup()

    def close(self) -> None:
        """End the cycle: commit the copies of the open transaction (a failure to commit
        leaves them to the next cycle), abort an armed one, close the producer."""
        with contextlib.suppress(BackendUnavailableError, LockedError):
            self.commit(arm=False, timeout_s=min(5.0, self.dest.timeout_ms / 1000))
        p, self._producer = self._producer, None
        self._one_wakeup = None
        self.next = None
        armed, self._armed_at = self._armed_at, None
        self._drop_transaction()
        if p is not None:
            if armed is not None:  # nothing in it: end it now rather than at the next cycle
                with contextlib.suppress(KafkaError):
                    end_transaction(p, False, 2.0)
            close_producer(p)
