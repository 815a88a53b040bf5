"""One appliance: its home directory, its local log, its store, its optimization path.

A home holds ``dssync.toml``, ``log/`` (the appliance's own append-only log) and ``store/``
(the DuckDB-indexed data store and its packs). Opening an appliance takes the log's writer
lock, so exactly one process at a time owns a home for writing; the log's recovery runs, and
the store catches up with whatever the log holds beyond the store's committed offset (the
tail a crash left unapplied). When that recovery cut damage from the log of a paired
appliance, what its peer mirrored beyond the cut is taken back first (``sync.repair``).
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
from dssync import crashpoint
from dssync.consumers.consumer import Consumer
from dssync.consumers.store import Store
from dssync.errors import CorruptLogError, DssyncError, UsageError, from_os_error
from dssync.hlc import HybridLogicalClock
from dssync.layout import source_name, store_dir
from dssync.log.base import GroupCommitted, PreparedWrites, RetentionPinned, SegmentedLog
from dssync.log.factory import open_log
from dssync.log.filelog import FileLog, RecoveryReport
from dssync.producers.chunker import Chunker, ChunkerSpec
from dssync.producers.optimizer import IngestStats, Optimizer
from dssync.schemas import decode, encode
from dssync.sync import repair


def open_store(directory: str, cfg: cfgmod.Config, create: bool = False) -> Store:
    """The store of a home (``directory`` is its store or a replay's new one, beside ``log/``).

    With a file log synced on every append, the store reads new segments in place from the
    appliance's own log instead of writing them a second time (``dssync.consumers.packs``);
    the appliance then holds the log's retention behind them (``Appliance.pin_retention``).
    """
    own_log = os.path.join(os.path.dirname(os.path.abspath(directory)), "log")
    resident = [own_log] if cfg.log.backend == "file" and cfg.log.fsync == "always" else []
    return Store(directory, create=create, fsync=cfg.log.fsync != "never", pack_bytes=cfg.store.pack_bytes,
                 resident=resident, memory_limit=cfg.store.memory_limit)


class Appliance:
    """An open appliance home (see the module docstring). Use as a context manager."""

    def __init__(self, home: str, scan_log: bool = False) -> None:
        """Open ``home`` for writing (see the module docstring); a store that applied more of
        the log than the log holds is refused (``CorruptLogError``: the remedy is ``replay``).
        ``scan_log``: check every batch of the log, not only what a crash may have torn."""
        self.home = home
        self.config = cfgmod.load(home)
        finish_interrupted_replay(home)
        self.log = open_log(home, self.config, scan_all=scan_log)
        store: Store | None = None
        try:
            self.taken_back = 0
            """Records taken back from the peer after the log's recovery cut damage (``sync.repair``)."""
            if isinstance(self.log, FileLog) and self.log.recovery is not None and self.log.recovery.bytes_cut:
                self.taken_back, _why = repair.after_cut(self.config, self.log)
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
            open_log(home, cfgmod.load(home), create=True).close()
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
            cut = self.recovery.bytes_cut if self.recovery else 0
            raise CorruptLogError(
                f"the log of {self.home} ends at offset {end} but its store applied it up to {applied}"
                + (f" (opening the log cut {cut} damaged bytes)" if cut else ""),
                hint=(f"take back what the peer mirrored of the log with 'dssync recover {self.home}'; without "
                      f"the peer, rebuild the store from what the log still holds with 'dssync replay {self.home}'"
                      if repair.has_copy(self.config) else
                      f"rebuild the store from what the log still holds with 'dssync replay {self.home}'"))

    def _last_hlc(self) -> int:
        last = int(self.store.meta().get("max_hlc", 0))
        end = self.log.end_offset()
        if end > self.log.start_offset():
            for rec in self.log.read(max(self.log.start_offset(), end - 1)):
                last = max(last, int(decode(rec.value)["hlc"]))
        return last

    @property
    def recovery(self) -> RecoveryReport | None:
        """What opening the log for writing found and cut (None: a broker recovers its own log)."""
        return self.log.recovery if isinstance(self.log, FileLog) else None

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
        if not isinstance(self.log, PreparedWrites) or self.store.committed(self.source) != self.log.end_offset():
            return int(self.log.append_batches(batches))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="dssync-log-append")
        log = self.log
        prepared = log.prepare(batches)
        pending = self._writer.submit(self.log.write_prepared, prepared)

        def durable() -> None:
            pending.result()  # raises what the log write raised: then nothing is committed
            log.make_durable()
            crashpoint.reached("ingest.log-durable")

        try:
            self.store.apply_columns(self.source, prepared.columns, before_commit=durable)
        finally:
            wait([pending])  # never leave a log write running behind an error
        return int(pending.result())

    def pin_retention(self) -> None:
        """Keep the log's retention behind what the store still needs from it: records not
        applied yet, and segment files the store reads segments from in place."""
        if not isinstance(self.log, RetentionPinned):
            return  # a broker's retention is the topic's configuration
        keep = self.store.committed(self.source)
        if isinstance(self.log, FileLog):
            resident = self.store.resident_from(self.log.directory)
            if resident is not None:
                keep = min(keep, resident)
        self.log.retain_from = keep

    def applied(self) -> None:
        """Bring the store up to the log, then wrap it if it outgrew its capacity."""
        if isinstance(self.log, PreparedWrites):
            self.log.make_durable()  # the store commits nothing a power cut could take from the log
        self.consumer.catch_up()
        self.pin_retention()
        if isinstance(self.log, GroupCommitted):  # let Kafka's own tools see the store's position
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
            **log_size(self.log),
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


def log_size(log: object) -> dict[str, int | None]:
    """``log_bytes`` and ``log_segments`` for status: known for segment files, not for a
    broker's topic (None: a client sees no segment sizes without admin calls)."""
    if isinstance(log, SegmentedLog):
        return {"log_bytes": log.size_bytes(), "log_segments": len(log.segments())}
    return {"log_bytes": None, "log_segments": None}


def finish_interrupted_replay(home: str) -> None:
    """Undo or complete a replay (``dssync.appliance.replay``) killed between its two renames."""
    store, old = store_dir(home), store_dir(home) + ".old"
    if not os.path.exists(store) and os.path.exists(old):
        os.rename(old, store)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(store + ".replay", ignore_errors=True)
