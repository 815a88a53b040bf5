"""The Kafka log: one single-partition topic per appliance log, behind the same interface.

Same contract as the file log (``dssync.log.base``), with Kafka's means:

* atomic appends: every ``append`` is one Kafka transaction; readers use
  ``read_committed``, so they never see part of an append, and ``append`` returns once the
  records are readable. The transactional id is derived
  from the topic, so a second writer fences the first (single writer, as with the file log's
  lock): the fenced one gets ``LockedError``.
* idempotent producer, ``acks=all``, lz4 compression; append time is the broker's
  (``message.timestamp.type=LogAppendTime``), so lag in seconds comes from the log itself.
* offsets are strictly increasing but not dense (transaction markers take offsets):
  consumers resume from "last offset read + 1".
* origin and clock ride in record headers too, for Kafka-side tools; the value is the same
  Avro single-object encoded event as in the file log.

A broker that does not answer within ``timeout_ms`` raises ``BackendUnavailableError``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TopicAlreadyExistsError,
)

from dssync.errors import BackendUnavailableError, LockedError, OffsetOutOfRangeError, UsageError
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns, read_in_steps

log = logging.getLogger(__name__)
FOLLOW_WAIT_MS = 500
"""The broker-side fetch wait for a log that is followed (``KafkaLog(fetch_wait_ms=...)``)."""


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach a cluster; security settings pass through to kafka-python unchanged."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    timeout_ms: int = 10_000
    extra: dict[str, Any] = field(default_factory=dict)

    def client_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "request_timeout_ms": max(self.timeout_ms, 5_000) + 1_000,
            "bootstrap_timeout_ms": self.timeout_ms,
        }
        for k in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                  "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            v = getattr(self, k)
            if v is not None:
                opts[k] = v
        opts.update(self.extra)
        return opts


def settings_from_spec(bootstrap: str, security: str, cafile: str = "", password: str = "",
                       password_env: str = "", timeout_ms: int = 10_000) -> KafkaSettings:
    """KafkaSettings from a security spec ``PROTOCOL[:MECHANISM:USER]`` (``""``: plaintext),
    e.g. ``SSL`` or ``SASL_SSL:SCRAM-SHA-512:dssync``; the password is given apart (operators
    pass it in ``password_env``, never on a command line). Raises ``UsageError``."""
    if not security:
        return KafkaSettings(bootstrap, ssl_cafile=cafile or None, timeout_ms=timeout_ms)
    parts = security.split(":")
    if len(parts) not in (1, 3) or not all(parts):
        raise UsageError(f"security {security!r} is not PROTOCOL or PROTOCOL:MECHANISM:USER",
                         hint="e.g. SSL, or SASL_SSL:SCRAM-SHA-512:dssync")
    mechanism, user = (parts[1], parts[2]) if len(parts) == 3 else (None, None)
    if mechanism and not password:
        raise UsageError(f"SASL needs a password{f' in {password_env}' if password_env else ''}",
                         hint=f"export {password_env}=..." if password_env else "pass the password")
    return KafkaSettings(bootstrap, security_protocol=parts[0], sasl_mechanism=mechanism, sasl_plain_username=user,
                         sasl_plain_password=password if mechanism else None, ssl_cafile=cafile or None,
                         timeout_ms=timeout_ms)


def _unavailable(settings: KafkaSettings, exc: Exception) -> BackendUnavailableError:
    auth = settings.sasl_mechanism or settings.security_protocol != "PLAINTEXT"
    return BackendUnavailableError(
        f"cannot reach Kafka at {settings.bootstrap_servers} within {settings.timeout_ms} ms ({type(exc).__name__})",
        hint="check that the broker runs and the address is right"
        + ("; with SASL/TLS, also the credentials and certificates" if auth else ""),
    )


def probe(settings: KafkaSettings) -> None:
    """Fail fast, and clearly, when no bootstrap address accepts a TCP connection at all.

    kafka-python would wait its whole bootstrap timeout and then leave the failed client's
    socket open; a plain connect tells "nothing listens there" in milliseconds.
    """
    reasons = []
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=settings.timeout_ms / 1000):
                return
        except (OSError, ValueError) as exc:
            reasons.append(f"{server}: {getattr(exc, 'strerror', None) or exc}")
    raise BackendUnavailableError(
        f"cannot reach Kafka at {settings.bootstrap_servers} ({'; '.join(reasons)})",
        hint="check that the broker runs and that the bootstrap address and port are right",
    )


def create_topic(settings: KafkaSettings, topic: str, retention_bytes: int = -1, retention_ms: int = -1,
                 segment_bytes: int | None = None) -> None:
    """Create a dssync topic with explicit configuration (no broker defaults), if it is missing:
    one partition, broker append time (lag in seconds comes from the log), producer's lz4;
    retention (whole segments, like the file log) by size and age."""
    admin = KafkaAdminClient(**settings.client_options())
    configs = {
        "message.timestamp.type": "LogAppendTime",
        "compression.type": "producer",
        "cleanup.policy": "delete",
        "retention.bytes": str(retention_bytes),
        "retention.ms": str(retention_ms),
        "max.message.bytes": str(16 << 20),
    }
    if segment_bytes:
        configs["segment.bytes"] = str(max(segment_bytes, 1 << 20))  # Kafka's minimum is 1 MiB
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def topic_exists(settings: KafkaSettings, topic: str) -> bool:
    """Whether the cluster has ``topic``. Raises ``BackendUnavailableError`` when it does not
    answer."""
    probe(settings)
    try:
        consumer = KafkaConsumer(**settings.client_options(), enable_auto_commit=False, group_id=None)
    except KafkaTimeoutError as exc:
        raise _unavailable(settings, exc) from None
    try:
        return topic in (consumer.topics() or set())
    except KafkaTimeoutError as exc:
        raise _unavailable(settings, exc) from None
    finally:
        consumer.close()


def close_producer(producer: KafkaProducer, timeout_s: float = 5.0) -> None:
    """Close a producer within ``timeout_s``, whatever state its broker is in.

    kafka-python's ``close`` flushes first and raises if records are still pending (a broker
    that is down), leaving the producer open; its ``__del__`` then tries again and prints a
    traceback. A producer that cannot flush is force-closed instead: what it held was never
    committed (every dssync write is transactional), so nothing acknowledged is dropped.
    """
    try:
        producer.close(timeout=timeout_s)
    except Exception as exc:  # closing must never raise
        log.debug("force-closing a producer that could not flush: %s", exc)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True


def end_transaction(producer: KafkaProducer, commit: bool, timeout_s: float) -> None:
    """Commit (or abort) the producer's open transaction, waiting ``timeout_s`` at most.

    kafka-python's ``commit_transaction`` and ``abort_transaction`` wait without bound for a
    broker that is down; a caller that must notice an outage (and back off, and say so) uses
    this instead. Raises ``KafkaTimeoutError`` when the time is up: the transaction is then
    left open, and the next cycle's fencing (``init_transactions``) aborts it.
    """
    manager = getattr(producer, "_transaction_manager", None)
    sender = getattr(producer, "_sender", None)
    if manager is None or sender is None:  # another kafka-python: unbounded, but correct
        producer.commit_transaction() if commit else producer.abort_transaction()
        return
    result = manager.begin_commit() if commit else manager.begin_abort()
    sender.wakeup()
    if not result.wait(timeout_ms=timeout_s * 1000):
        raise KafkaTimeoutError(f"the transaction did not {'commit' if commit else 'abort'} in {timeout_s:.0f} s")


class KafkaLog:
    """An append-only log in a single-partition Kafka topic (module docstring)."""

    def __init__(
        self, settings: KafkaSettings, topic: str, *, writer: bool = False, create: bool = False,
        retention_bytes: int = -1, retention_ms: int = -1, origin: str | None = None,
        group_id: str | None = None, segment_bytes: int | None = None, fetch_wait_ms: int = 20,
    ) -> None:
        """``fetch_wait_ms``: how long the broker holds a fetch that finds nothing new. Short for
        logs read in ranges (a seek waits for the fetch in flight); long (``FOLLOW_WAIT_MS``)
        for a mirror's source, which ``follow``s the log without seeking: Kafka completes the
        fetch as soon as records commit, so a long wait costs no latency and saves the idle
        round trips (measured: an idle mirror process at 7.5% of a core with 20 ms, 1.5% with
        500 ms)."""
        self.settings = settings
        self.topic = topic
        self.tp = TopicPartition(topic, 0)
        self.origin = origin
        self.group_id = group_id
        self.read_through: int | None = None
        """After a ``read`` that returned nothing: the end it read through (markers only)."""
        self._follow_next = -1
        self._producer: KafkaProducer | None = None
        self._consumer: KafkaConsumer | None = None
        opts = settings.client_options()
        probe(settings)
        try:
            if create:
                create_topic(settings, topic, retention_bytes, retention_ms, segment_bytes)
            self._consumer = KafkaConsumer(
                **opts, enable_auto_commit=False, isolation_level="read_committed", group_id=group_id,
                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
                # Kafka 4.1 wakes a waiting read_committed fetch when a commit marker lands
                # (measured: 1.4 ms median with a 500 ms wait)
                fetch_max_wait_ms=fetch_wait_ms,
            )
            self._consumer.assign([self.tp])
            if self.tp.topic not in (self._consumer.topics() or set()):
                raise UsageError(f"no Kafka topic {topic!r} at {settings.bootstrap_servers}",
                                 hint="create it (dssync creates appliance topics at init)")
            if writer:
                self._producer = KafkaProducer(
                    **opts, acks="all", enable_idempotence=True, compression_type="lz4",
                    transactional_id=f"dssync-writer-{topic}", linger_ms=0, max_request_size=16 << 20,
                    batch_size=1 << 20,
                )
                self._producer.init_transactions()
        except KafkaTimeoutError as exc:
            self.close()
            raise _unavailable(settings, exc) from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ writing

    def append(self, values: Sequence[bytes]) -> int:
        if not values:
            raise UsageError("append needs at least one value")
        p = self._producer
        if p is None:
            raise LockedError(f"the Kafka log {self.topic} is not open for writing")
        headers = [("origin", self.origin.encode())] if self.origin else None
        try:
            p.begin_transaction()
            futures = [p.send(self.topic, v, partition=0, headers=headers) for v in values]
            p.commit_transaction()
            first = int(futures[0].get(timeout=self.settings.timeout_ms / 1000).offset)
            self._await_visible(int(futures[-1].get().offset))
            return first
        except (ProducerFencedError, InvalidProducerEpochError):
            raise LockedError(f"another writer took over the Kafka log {self.topic}",
                              hint="only one process may write an appliance's log; stop the other one") from None
        except KafkaTimeoutError as exc:
            self._abort()
            raise _unavailable(self.settings, exc) from None
        except KafkaError as exc:
            self._abort()
            raise BackendUnavailableError(f"Kafka refused the append to {self.topic}: {exc}") from None

    def append_batches(self, groups: Sequence[Sequence[bytes]]) -> int:
        """Append several groups in one transaction (Kafka batches them by itself)."""
        return self.append([v for g in groups for v in g])

    def _await_visible(self, last: int) -> None:
        """Return once ``last`` is below the last stable offset: readers can see the append.

        The coordinator writes commit markers after ``commit_transaction`` returns, so without
        this wait a writer could not read its own append back at once.
        """
        deadline = time.monotonic() + self.settings.timeout_ms / 1000
        delay = 0.001
        while self._offsets("end") <= last:
            if time.monotonic() > deadline:
                raise BackendUnavailableError(f"the append to {self.topic} did not become visible in time")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _abort(self) -> None:
        try:
            if self._producer is not None:
                self._producer.abort_transaction()
        except KafkaError:
            pass

    # ------------------------------------------------------------------ reading

    def _offsets(self, which: str) -> int:
        c = self._consumer
        assert c is not None
        try:
            got = c.beginning_offsets([self.tp]) if which == "start" else c.end_offsets([self.tp])
        except KafkaTimeoutError as exc:
            raise _unavailable(self.settings, exc) from None
        return int(got[self.tp])

    def start_offset(self) -> int:
        return self._offsets("start")

    def end_offset(self) -> int:
        return self._offsets("end")

    def read(self, from_offset: int, max_records: int = 10_000) -> list[LogRecord]:
        c = self._consumer
        assert c is not None
        start, end = self.start_offset(), self.end_offset()
        if from_offset < start:
            raise OffsetOutOfRangeError(
                f"offset {from_offset} is below the start {start} of Kafka topic {self.topic} (retention)"
            )
        self.read_through = None
        if from_offset >= end:
            return []
        out: list[LogRecord] = []
        idle = 0
        try:
            c.seek(self.tp, from_offset)
            while len(out) < max_records and c.position(self.tp) < end:
                batch = c.poll(timeout_ms=500, max_records=max_records - len(out))
                recs = batch.get(self.tp, [])
                if not recs:
                    idle += 1
                    if idle * 500 > self.settings.timeout_ms:
                        raise BackendUnavailableError(
                            f"no data from Kafka topic {self.topic} below its end offset {end}")
                    continue
                idle = 0
                out.extend(LogRecord(r.offset, r.timestamp, r.value) for r in recs if r.offset >= from_offset)
        except KafkaTimeoutError as exc:  # position() and poll() raise while the broker is down
            raise _unavailable(self.settings, exc) from None
        except KafkaError as exc:
            raise BackendUnavailableError(f"reading {self.topic} failed: {type(exc).__name__}") from None
        if not out:
            self.read_through = end  # everything in [from_offset, end) was a transaction marker
        return out[:max_records]

    def read_columns(self, from_offset: int, max_records: int = 10_000, max_bytes: int = 64 << 20) -> RecordColumns:
        """``read`` as columns, in reads of at most 10,000 records until a bound is reached."""
        return read_in_steps(self.read, from_offset, max_records, max_bytes)

    def follow(self, from_offset: int, max_records: int, wait_ms: int) -> list[LogRecord]:
        """Tail the log: records from ``from_offset``, waiting up to ``wait_ms`` at the broker
        for the first ones (a long poll, no offset lookups), for mirrors that follow a live log.

        Sets ``read_through`` to the consumer's position when only transaction markers were
        passed; raises ``OffsetOutOfRangeError`` below the log's start, like ``read``.
        """
        c = self._consumer
        assert c is not None
        self.read_through = None
        try:
            # Continuing where the last follow stopped needs no seek: the consumer may already be
            # past it, but only over transaction markers.
            if from_offset != self._follow_next or c.position(self.tp) < from_offset:
                start = self.start_offset()
                if from_offset < start:
                    raise OffsetOutOfRangeError(
                        f"offset {from_offset} is below the start {start} of Kafka topic {self.topic} (retention)")
                c.seek(self.tp, from_offset)
            got = c.poll(timeout_ms=wait_ms, max_records=max_records).get(self.tp, [])
            out = [LogRecord(r.offset, r.timestamp, r.value) for r in got if r.offset >= from_offset]
            if out:
                self._follow_next = out[-1].offset + 1
            else:
                position = c.position(self.tp)
                if position is not None and position > from_offset:
                    self.read_through = position
                self._follow_next = max(from_offset, position or 0)
            return out
        except KafkaTimeoutError as exc:
            raise _unavailable(self.settings, exc) from None
        except KafkaError as exc:
            raise BackendUnavailableError(f"reading {self.topic} failed: {type(exc).__name__}") from None

    def offset_for_time(self, timestamp_ms: int) -> int:
        c = self._consumer
        assert c is not None
        try:
            found = c.offsets_for_times({self.tp: timestamp_ms}).get(self.tp)
        except KafkaTimeoutError as exc:
            raise _unavailable(self.settings, exc) from None
        except KafkaError as exc:
            raise BackendUnavailableError(f"looking up a time in {self.topic} failed: {type(exc).__name__}") from None
        return int(found.offset) if found is not None else self.end_offset()

    def commit_group(self, next_offset: int) -> None:
        """Record the store's position in the consumer group too, for Kafka's own tools
        (kafka-consumer-groups.sh); the store's DuckDB offset stays the one that counts."""
        if self._consumer is None or self.group_id is None:
            return
        try:
            self._consumer.commit({self.tp: OffsetAndMetadata(next_offset, "", -1)})
        except KafkaError as exc:
            log.warning("could not commit the group offset of %s: %s", self.topic, exc)

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def close(self) -> None:
        for name in ("_producer", "_consumer"):
            client = getattr(self, name)
            setattr(self, name, None)
            if client is not None:
                if name == "_producer":
                    close_producer(client)
                    continue
                try:
                    client.close()
                except Exception as exc:  # closing must never raise
                    log.debug("closing %s: %s", name, exc)

    def __enter__(self) -> KafkaLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
