"""One appliance: its home directory, its local log, its store, its optimization path.

A home holds ``dssync.toml``, ``log/`` (the appliance's own append-only log) and ``store/``
(the DuckDB-indexed data store and its packs). Opening an appliance takes the log's writer
lock, so exactly one process at a time owns a home for writing; the log's recovery runs, and
the store catches up with whatever the log holds beyond the store's committed offset (the
tail a crash left unapplied).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, BinaryIO

from dssync import config as cfgmod
from dssync.consumers.consumer import Consumer
from dssync.consumers.consumer import replay as replay_log
from dssync.consumers.store import Store
from dssync.errors import CorruptLogError, DssyncError, UsageError, from_os_error
from dssync.hlc import HybridLogicalClock
from dssync.layout import log_dir, source_name, store_dir
from dssync.log.filelog import FileLog
from dssync.producers.chunker import Chunker, ChunkerSpec
from dssync.producers.optimizer import IngestStats, Optimizer
from dssync.schemas import decode, encode


def kafka_settings(cfg: cfgmod.Config) -> Any:
    from dssync.log.kafka import KafkaSettings

    k = cfg.kafka
    return KafkaSettings(
        k.bootstrap_servers, security_protocol=k.security_protocol, sasl_mechanism=k.sasl_mechanism or None,
        sasl_plain_username=k.sasl_username or None, sasl_plain_password=k.sasl_password or None,
        ssl_cafile=k.ssl_cafile or None, timeout_ms=k.timeout_ms,
    )


def peer_kafka_settings(cfg: cfgmod.Config) -> Any:
    """kafka-sites: how to reach the peer site's cluster: its own security settings when
    ``[sync] peer_kafka_security`` is set, else this site's. Raises ``UsageError`` for a SASL
    spec without a password (DSSYNC_PEER_KAFKA_PASSWORD)."""
    from dssync.log.kafka import settings_from_spec

    own = kafka_settings(cfg)
    s = cfg.sync
    if not s.peer_kafka_security:
        return own.__class__(**{**own.__dict__, "bootstrap_servers": s.peer_kafka})
    return settings_from_spec(s.peer_kafka, s.peer_kafka_security, s.peer_kafka_cafile, s.peer_kafka_password,
                              "DSSYNC_PEER_KAFKA_PASSWORD", timeout_ms=own.timeout_ms)


def open_log(home: str, cfg: cfgmod.Config, writer: bool, create: bool = False) -> Any:
    """The appliance's own log: segment files in the home, or a Kafka topic."""
    lc = cfg.log
    if lc.backend == "kafka":
        from dssync.log.kafka import KafkaLog

        return KafkaLog(
            kafka_settings(cfg), cfg.kafka.topic_prefix + cfg.name, writer=writer, create=create,
            retention_bytes=lc.retention_bytes or -1, retention_ms=lc.retention_ms or -1, origin=cfg.name,
            segment_bytes=lc.segment_bytes,
            group_id=f"dssync-store-{cfg.name}",
        )
    return FileLog(
        log_dir(home), writer=writer, create=create, fsync=lc.fsync, fsync_interval_ms=lc.fsync_interval_ms,
        segment_bytes=lc.segment_bytes, retention_bytes=lc.retention_bytes, retention_ms=lc.retention_ms,
    )


def open_peer_log(home: str, cfg: cfgmod.Config, peer: str, create: bool = False) -> Any:
    """The peer's log as an appliance with a Kafka transport reads it (read-only): with
    ``kafka-shared``, the peer's own topic on the shared cluster; with ``kafka-sites``, the
    mirror topic on this site's cluster, in the peer's offsets. ``create`` creates the mirror
    topic when missing (the service does; ``verify`` only reads). Raises ``UsageError`` for a
    transport without a Kafka peer log, a missing topic, ``BackendUnavailableError`` when
    the cluster does not answer."""
    transport = cfg.sync.transport
    if transport == "kafka-shared":
        peer_cfg = cfgmod.load(home)
        peer_cfg.name = peer  # the peer's topic follows the shared naming
        return open_log(home, peer_cfg, writer=False)
    if transport != "kafka-sites":
        raise UsageError(f"transport {transport!r} has no Kafka peer log", hint="the peer's log is in HOME/mirror/")
    from dssync.log.kafka import create_topic, topic_exists
    from dssync.log.mirrored import MirroredTopic
    from dssync.sync.kafka_mirror import mirror_topic

    settings = kafka_settings(cfg)
    topic = mirror_topic(cfg.kafka.topic_prefix, peer)
    if create:
        create_topic(settings, topic, cfg.log.retention_bytes or -1, cfg.log.retention_ms or -1)
    elif not topic_exists(settings, topic):
        raise UsageError(f"no Kafka topic {topic!r} at {settings.bootstrap_servers} (the mirror of {peer}'s log)",
                         hint="start the mirror ('dssync mirror HOME'); it creates the topic")
    return MirroredTopic(settings, topic)


def open_store(directory: str, cfg: cfgmod.Config, create: bool = False) -> Store:
    """The store of a home (``directory`` is its store or a replay's new one, beside ``log/``).

    With a file log synced on every append, the store reads new segments in place from the
    appliance's own log instead of writing them a second time (``dssync.consumers.packs``);
    the appliance then holds the log's retention behind them (``Appliance.pin_retention``).
    """
    own_log = os.path.join(os.path.dirname(os.path.abspath(directory)), "log")
    resident = [own_log] if cfg.log.backend == "file" and cfg.log.fsync == "always" else []
    return Store(directory, create=create, fsync=cfg.log.fsync != "never", pack_bytes=cfg.store.pack_bytes,
                 resident=resident)


class Appliance:
    """An open appliance home (see the module docstring). Use as a context manager."""

    def __init__(self, home: str) -> None:
        """Open ``home`` for writing (see the module docstring); a store that applied more of
        the log than the log holds is refused (``CorruptLogError``: the remedy is ``replay``)."""
        self.home = home
        self.config = cfgmod.load(home)
        _finish_interrupted_replay(home)
        self.log = open_log(home, self.config, writer=True)
        store: Store | None = None
        try:
            self.store = store = open_store(store_dir(home), self.config, create=True)
            self.source = source_name(self.config.name)
            self.consumer = Consumer(self.log, self.store, self.source)
            if not self.store.offsets():
                # A new store over a log that does not start at 0 (a backup's log continues
                # its offsets after pairing): nothing before the log's start belongs to it.
                self.store.advance(self.source, max(self.log.start_offset(), self.config.sync.own_log_from))
            self._check_log_holds_the_store()
            self.hlc = HybridLogicalClock(self._last_hlc())
            self.chunker = Chunker(ChunkerSpec.parse(self.config.chunker))
            self.optimizer = Optimizer(self.config.name, self.chunker, self.hlc, self)
            self._wrapping = False
            self._writer: ThreadPoolExecutor | None = None
            self.caught_up = self.consumer.catch_up()
            self.pin_retention()
        except BaseException:
            if store is not None:  # a DuckDB connection left open would outlive this error in the process
                store.close()
            self.log.close()
            raise

    @classmethod
    def create(
        cls, home: str, name: str, model: str, software_version: str,
        chunker: ChunkerSpec | None = None, kafka: cfgmod.KafkaConfig | None = None, **log_options: Any,
    ) -> Appliance:
        """Create a new home with an empty store and a StoreReset event; return it opened."""
        if os.path.exists(os.path.join(home, cfgmod.FILENAME)):
            raise UsageError(f"{home} is already an appliance home", hint="choose another directory")
        cfg = cfgmod.Config(
            name=name, model=model, software_version=software_version, store_id=str(uuid.uuid4()),
            chunker=str(chunker or ChunkerSpec()),
        )
        if kafka is not None:
            cfg.kafka = kafka  # a SASL password is taken from DSSYNC_KAFKA_PASSWORD at load, never saved
            cfg.log.backend = "kafka"
        for k, v in log_options.items():
            if hasattr(cfg.log, k):
                setattr(cfg.log, k, v)
            elif hasattr(cfg.store, k):
                setattr(cfg.store, k, v)
            else:
                raise UsageError(f"unknown option {k}")
        cfg.validate()
        Chunker(ChunkerSpec.parse(cfg.chunker))  # refuse early if only pure-Python FastCDC exists
        try:
            os.makedirs(home, exist_ok=True)
            cfgmod.save(home, cfg)
            open_log(home, cfgmod.load(home), writer=True, create=True).close()
        except OSError as exc:
            raise from_os_error(exc, f"creating {home}") from exc
        except DssyncError:
            shutil.rmtree(home, ignore_errors=True)  # e.g. the broker is down: leave no half-made home
            raise
        app = cls(home)
        app.log.append([encode("StoreReset", {
            "origin": name, "hlc": app.hlc.now(), "store_id": cfg.store_id, "chunker": cfg.chunker,
            "model": model, "software_version": software_version,
        })])
        app.applied()
        return app

    def _check_log_holds_the_store(self) -> None:
        """Refuse a store that has applied records its log no longer holds (a damaged log whose
        recovery cut more than a torn tail): new records would take those offsets, and the store
        would skip them, or read other bytes where its segments were."""
        applied, end = self.store.committed(self.source), self.log.end_offset()
        if applied > end:
            cut = getattr(self.log.recovery, "bytes_cut", 0)
            raise CorruptLogError(
                f"the log of {self.home} ends at offset {end} but its store applied it up to {applied}"
                + (f" (opening the log cut {cut} damaged bytes)" if cut else ""),
                hint=f"rebuild the store from what the log still holds with 'dssync replay {self.home}'")

    def _last_hlc(self) -> int:
        last = int(self.store.meta().get("max_hlc", 0))
        end = self.log.end_offset()
        if end > self.log.start_offset():
            for rec in self.log.read(max(self.log.start_offset(), end - 1)):
                last = max(last, int(decode(rec.value)["hlc"]))
        return last

    # ---------------------------------------------------------------- the sink the optimizer writes to

    def known(self, refs: list[bytes]) -> set[bytes]:
        return self.store.known(refs)

    def append(self, batches: list[list[bytes]]) -> int:
        """Append the optimizer's batches (one window) to the log: one fsync for them all.

        On a file log with the store caught up, the log encodes the batches and says where
        they will lie (``FileLog.prepare``); the store applies them from memory while the log
        writes them (a file log's offsets are dense and this process is its only writer), and
        its commit waits until the log has them (``before_commit``), so the store never holds
        an event the log could lose. Otherwise the events are applied from the log by ``applied``.
        """
        if not isinstance(self.log, FileLog) or self.store.committed(self.source) != self.log.end_offset():
            return int(self.log.append_batches(batches))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="dssync-log-append")
        prepared = self.log.prepare(batches)
        pending = self._writer.submit(self.log.write_prepared, prepared)

        def durable() -> None:
            pending.result()  # raises what the log write raised: then nothing is committed

        try:
            self.store.apply_columns(self.source, prepared.columns, before_commit=durable)
        finally:
            wait([pending])  # never leave a log write running behind an error
        return int(pending.result())

    def pin_retention(self) -> None:
        """Keep the log's retention behind what the store still needs from it: records not
        applied yet, and segment files the store reads segments from in place."""
        keep = self.store.committed(self.source)
        if isinstance(self.log, FileLog):
            resident = self.store.resident_from(self.log.directory)
            if resident is not None:
                keep = min(keep, resident)
        self.log.retain_from = keep

    def applied(self) -> None:
        """Bring the store up to the log, then wrap it if it outgrew its capacity."""
        self.consumer.catch_up()
        self.pin_retention()
        if hasattr(self.log, "commit_group"):  # let Kafka's own tools see the store's position
            self.log.commit_group(self.store.committed(self.source))
        if self._wrapping:
            return
        self._wrapping = True
        try:
            while True:
                oldest, refs = self.store.wrap_candidates(self.config.store.capacity_bytes)
                if oldest is None:
                    break
                if refs:
                    self.optimizer.evict(refs)
                if not self.store.drop_dead_packs():
                    break
        finally:
            self._wrapping = False

    # ---------------------------------------------------------------- operations

    def ingest(self, stream: BinaryIO, progress: Callable[[int], None] | None = None) -> IngestStats:
        return self.optimizer.ingest(stream, progress)

    def status_extra(self) -> dict[str, Any]:
        return {
            "name": self.config.name, "model": self.config.model,
            "software_version": self.config.software_version,
            "log_start_offset": self.log.start_offset(), "log_end_offset": self.log.end_offset(),
            "log_bytes": self.log.size_bytes(), "log_segments": len(self.log.segments()),
            "log_backend": self.config.log.backend,
        }

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {**self.status_extra(), **self.store.stats()}
        doc["applied_offset"] = self.store.committed(self.source)
        doc["apply_lag_records"] = max(0, doc["log_end_offset"] - doc["applied_offset"])
        doc["source"] = "live"
        return doc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        with contextlib.suppress(OSError, DssyncError):
            self.store.publish_status(self.status_extra())
        self.store.close()
        self.log.close()

    def __enter__(self) -> Appliance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay(home: str, from_offset: int | None = None,
           progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None) -> int:
    """Rebuild the store of ``home`` from its log into a new directory, then swap it in.

    The old store is never opened: whatever state it is in (a pack cut short, a DuckDB file
    that does not open, rows the log no longer holds), replay is the remedy the errors name.
    The log's writer lock keeps every other process out of the home meanwhile. ``total`` is
    told the number of records to replay before the first one; returns the records applied.
    Raises ``UsageError`` for a ``from_offset`` outside the log.
    """
    cfg = cfgmod.load(home)
    _finish_interrupted_replay(home)
    log = open_log(home, cfg, writer=True)
    try:
        first, end = log.start_offset(), log.end_offset()
        # a backup's Kafka topic keeps the records it wrote before pairing: not its store's
        start = max(first, cfg.sync.own_log_from) if from_offset is None else from_offset
        if not first <= start <= end:
            raise UsageError(f"--from-offset {start} is outside the log ({first}..{end})",
                             hint=f"see the range with 'dssync inspect log {home}'")
        if total is not None:
            total(end - start)
        target = store_dir(home) + ".replay"
        shutil.rmtree(target, ignore_errors=True)
        fresh = open_store(target, cfg, create=True)
        try:
            applied = replay_log(log, fresh, source_name(cfg.name), start, progress)
        except BaseException:
            fresh.close()
            shutil.rmtree(target, ignore_errors=True)
            raise
        fresh.close()
        old = store_dir(home) + ".old"
        if os.path.exists(store_dir(home)):
            os.rename(store_dir(home), old)
        os.rename(target, store_dir(home))
        shutil.rmtree(old, ignore_errors=True)
    finally:
        log.close()
    return applied


def _finish_interrupted_replay(home: str) -> None:
    """Undo or complete a replay that was killed between its two renames."""
    store, old = store_dir(home), store_dir(home) + ".old"
    if not os.path.exists(store) and os.path.exists(old):
        os.rename(old, store)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(store + ".replay", ignore_errors=True)
