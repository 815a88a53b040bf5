"""The apply loop: the peer's log, as it arrives here, applied to this appliance's store.

Where the peer's log is read depends on the transport: over ``http`` the file mirror copies
it into ``HOME/mirror/<peer>/`` (and drops a snapshot beside it when bootstrapping or
repairing a gap); on Kafka it is the peer's topic on a shared cluster, or its mirror topic on
this site's cluster. Whatever the log, records are applied by one loop (``drain``): a
transaction at a time under the service's lock, so traffic interleaves with the peer's
records, with the offset committed in the same transaction as the rows.

Error contract: ``step`` raises ``DssyncError`` for what the caller should report and retry
later (a broker down, a full disk); a peer that does not answer or refuses the pair is noted
(``note_refusal``) and asked again a second later.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable

from dssync import config as cfgmod
from dssync import layout
from dssync.appliance import snapshots
from dssync.appliance.home import Appliance
from dssync.consumers.consumer import Consumer
from dssync.consumers.quarantine import Quarantine
from dssync.errors import OffsetOutOfRangeError, PairingRefusedError, TransientError
from dssync.fairlock import FairLock
from dssync.hlc import LOGICAL_BITS, MAX_DRIFT_MS
from dssync.log.base import LogReader
from dssync.log.factory import open_peer_log
from dssync.log.filelog import FileLog
from dssync.monitor.latency import LatencyHistogram
from dssync.process import StopFlag
from dssync.sync import protocol

log = logging.getLogger("dssync.service")
BATCH_RECORDS = 5_000
"""Records per apply transaction of the peer's log: small enough that traffic waiting for the
lock waits little."""


def drain(consumer: Consumer, lock: FairLock, stopped: Callable[[], bool]) -> int:
    """Apply ``consumer``'s log up to its end, one transaction per lock hold; return the
    records applied."""
    applied = 0
    while not stopped():
        with lock:
            r = consumer.step()
        if not (r.applied or r.skipped):
            break
        applied += r.applied
    return applied


class PeerApplier:
    """Applies the peer's log to the store of ``app`` (module docstring)."""

    def __init__(self, home: str, config: cfgmod.Config, app: Appliance, lock: FairLock,
                 stopping: StopFlag, identity: Callable[[], protocol.Identity],
                 note_refusal: Callable[[str, str], None]) -> None:
        self.home, self.config, self.app, self.lock, self.stopping = home, config, app, lock, stopping
        self.identity, self.note_refusal = identity, note_refusal
        self.peer: protocol.Identity | None = None
        """The peer on a Kafka transport, once it has answered."""
        self._next_handshake = 0.0
        self._next_gap_check = 0.0
        self._next_clock_warning = 0.0
        self._consumers: dict[str, Consumer] = {}
        self._started: set[str] = set()
        self.latency: dict[str, LatencyHistogram] = {}
        """Replication latency by peer (``dssync.monitor.latency``), from the first apply."""
        self.snapshot_loading: dict[str, int] = {}
        """By peer whose mirrored snapshot is being loaded: the records applied so far."""

    def _consumer(self, peer: str, log: LogReader) -> Consumer:
        """A consumer of ``peer``'s log whose commits are observed in ``latency``."""
        hist = self.latency.setdefault(peer, LatencyHistogram())
        return Consumer(log, self.app.store, layout.source_name(peer), batch_records=BATCH_RECORDS, check_refs=True,
                        on_applied=lambda records: hist.observe_batches(records.timestamps, time.time()),
                        quarantine=Quarantine(self.home))

    def step(self) -> int:
        """Apply what arrived since the last call; return records applied. The clock then
        observes the newest event applied, so that what this appliance writes next orders
        after everything it has seen from its peer."""
        applied = self._apply()
        if applied:
            with self.lock:
                newest = int(self.app.store.meta().get("max_hlc", 0))
                within = self.app.hlc.observe(newest)
            if not within and time.monotonic() >= self._next_clock_warning:
                self._next_clock_warning = time.monotonic() + 60
                log.warning("the peer's clock runs more than %d s ahead of this one (its newest event: %s): "
                            "this clock follows it only that far; check both appliances' time (NTP)",
                            MAX_DRIFT_MS // 1000, time.strftime("%Y-%m-%d %H:%M:%S",
                                                                time.gmtime((newest >> LOGICAL_BITS) / 1000)))
        return applied

    def open_peer_log(self, peer: str) -> LogReader:
        """The peer's log as this site sees it on a Kafka transport (``log.factory.open_peer_log``)."""
        return open_peer_log(self.home, self.config, peer, create=True)

    def _stopped(self) -> bool:
        return self.stopping.is_set()

    def _apply(self) -> int:
        if self.config.sync.state != "active":
            return 0
        if self.config.sync.transport != "http":
            return self._apply_peer_topic()
        total = 0
        for peer in layout.pending_snapshots(self.home):
            self.snapshot_loading[peer] = 0
            try:
                loaded = snapshots.load_mirrored(self.home, self.app.store, self.lock, peer, self._stopped,
                                                 functools.partial(self.snapshot_loading.__setitem__, peer))
            finally:
                del self.snapshot_loading[peer]
            if loaded:
                self._started.discard(layout.source_name(peer))
                self._drop(layout.source_name(peer))
            total += loaded
        for peer in layout.mirrored_peers(self.home):
            total += self._apply_mirror_log(peer)
        return total

    def _drop(self, source: str) -> None:
        consumer = self._consumers.pop(source, None)
        if consumer is not None:
            consumer.log.close()

    # ------------------------------------------------------------------ Kafka transports

    def _apply_peer_topic(self) -> int:
        """Read the peer's log from where the pairing says it starts for us: its own topic
        (shared cluster, no mirror) or its mirror topic at this site."""
        if self.peer is None:
            if time.monotonic() < self._next_handshake:
                return 0
            client = protocol.PeerClient(self.config.sync, self.identity(), timeout_s=5)
            try:
                self.peer = client.identity()
            except (TransientError, PairingRefusedError) as exc:
                self.note_refusal(self.config.sync.peer, exc.message)
                self._next_handshake = time.monotonic() + 1.0
                return 0
            finally:
                client.close()
            source = layout.source_name(self.peer.name)
            self._consumers[source] = self._consumer(self.peer.name, self.open_peer_log(self.peer.name))
            with self.lock:
                self.app.store.advance(source, self.peer.log_start_offset)
            log.info("reading %s's topic from offset %d", self.peer.name, self.app.store.committed(source))
        if self.config.sync.transport == "kafka-sites":
            self._repair_gaps(self.peer)
        return drain(self._consumers[layout.source_name(self.peer.name)], self.lock, self._stopped)

    def _repair_gaps(self, peer: protocol.Identity) -> None:
        """kafka-sites: when the mirror has counted a retention gap (offsets of the peer's topic
        removed before they were copied), load a snapshot of the peer's store and read its log
        on from where the snapshot ends: the file mirror's repair, done here because the store
        is this service's. Checked once a second; a repair is recorded in
        ``run/gaps-repaired.json`` only once loaded (a crash before that repeats it: a snapshot
        applies idempotently)."""
        now = time.monotonic()
        if now < self._next_gap_check:
            return
        self._next_gap_check = now + 1.0
        gaps = len(layout.mirror_state(self.home, peer.name).get("gaps", []))
        path = os.path.join(layout.run_dir(self.home), "gaps-repaired.json")
        done = layout.read_json(path)
        if gaps <= int(done.get(peer.name, 0)):
            return
        log.warning("the mirror of %s counted %d retention gap(s): repairing from a snapshot", peer.name, gaps)
        events, covers_to = snapshots.fetch_and_load(self.home, self.app.store, self.lock, self.config.sync,
                                                     self.identity(), peer.name, f"repair-{gaps}")
        done[peer.name] = gaps
        layout.write_json(path, done)
        log.info("repaired: loaded a snapshot of %s (%d events), reading its log on from offset %d",
                 peer.name, events, covers_to)

    # ------------------------------------------------------------------ the file mirror's logs

    def _mirror_consumer(self, peer: str, path: str) -> Consumer:
        source = layout.source_name(peer)
        consumer = self._consumers.get(source)
        if consumer is None or not isinstance(consumer.log, FileLog) or consumer.log.directory != path:
            self._drop(source)
            consumer = self._consumers[source] = self._consumer(peer, FileLog(path))
        return consumer

    def _apply_mirror_log(self, peer: str) -> int:
        path = layout.mirror_dir(self.home, peer)
        if os.path.exists(path + layout.SNAPSHOT_SUFFIX):
            return 0  # a snapshot of this peer is loading: its log continues where it ends
        source = layout.source_name(peer)
        consumer = self._mirror_consumer(peer, path)
        if source not in self._started:
            start = layout.read_json(os.path.join(path, layout.START_FILE)).get("advance_to")
            if start is None:
                return 0  # the mirror has not finished creating this log yet
            with self.lock:
                self.app.store.advance(source, int(start))
            self._started.add(source)
        try:
            return drain(consumer, self.lock, self._stopped)
        except OffsetOutOfRangeError:
            return 0  # the mirror is re-basing after a gap; a snapshot follows

    def close(self) -> None:
        for source in list(self._consumers):
            self._drop(source)
