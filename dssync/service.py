"""``dssync serve``: the long-running appliance service.

It owns the appliance's log and store (the only process that may), and:

* runs the optimization path for traffic sent by ``dssync ingest`` (control endpoint);
* applies its own log and every log the mirror service writes under ``HOME/mirror/`` (the
  peer's mirrored log, and snapshot logs while bootstrapping or repairing a gap);
* answers the peer on the sync interface (identity, log batches, snapshots) and the local
  tools on loopback (status, digest, rows);
* on start, completes a pending pairing: a backup discards its store and its old log, takes
  the master's store id, and is then bootstrapped from the master's snapshot by the mirror.

SIGTERM stops it cleanly; ``dssync service restart`` restarts it in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from typing import Any, BinaryIO

from dssync import config as cfgmod
from dssync import layout
from dssync.appliance import Appliance, open_log, open_peer_log
from dssync.consumers.consumer import Consumer
from dssync.consumers.packs import Packs
from dssync.consumers.store import Row
from dssync.errors import DssyncError, LockedError, OffsetOutOfRangeError, PairingRefusedError, TransientError
from dssync.layout import log_dir, mirror_root, mirror_states, run_dir, service_file, source_name, store_dir
from dssync.log.filelog import FileLog
from dssync.monitor.metrics import serve_metrics
from dssync.monitor.monitor import Monitor
from dssync.monitor.probes import ServiceProbes
from dssync.process import StopFlag, command
from dssync.producers.optimizer import Optimizer
from dssync.schemas import encode
from dssync.sync import protocol, server, snapshot

log = logging.getLogger("dssync.service")
APPLY_INTERVAL_S = 0.005


class _LockedSink:
    """The optimizer's view of the appliance, one lock acquisition per call, so that traffic
    and the mirror's apply interleave window by window instead of waiting for a whole stream."""

    def __init__(self, app: Appliance, lock: threading.RLock) -> None:
        self.app, self.lock = app, lock

    def known(self, refs: list[bytes]) -> set[bytes]:
        with self.lock:
            return self.app.known(refs)

    def append(self, batches: list[list[bytes]]) -> int:
        with self.lock:
            return self.app.append(batches)

    def applied(self) -> None:
        with self.lock:
            self.app.applied()


class Service:
    """One running appliance service (see the module docstring)."""

    def __init__(self, home: str, stopping: StopFlag | None = None) -> None:
        """Open the appliance at ``home``. ``stopping``: the process's stop request (SIGTERM
        routed to it by ``serve``); every loop of the service ends when it is up."""
        self.home = home
        self.lock = threading.RLock()
        self.stopping = stopping or StopFlag()
        self.restart = False
        self.token = secrets.token_hex(16)
        self.refusals: dict[str, str] = {}
        self.refusal_times: dict[str, tuple[str, float]] = {}
        cfg = cfgmod.load(home)
        if cfg.sync.role and cfg.sync.state == "restart-required":
            self._activate_pairing(cfg)
        self.app = Appliance(home)
        self.config = self.app.config
        self.optimizer = Optimizer(self.config.name, self.app.chunker, self.app.hlc, _LockedSink(self.app, self.lock))
        self._reader: Any = (open_log(home, self.config, writer=False) if self.config.log.backend == "kafka"
                             else FileLog(log_dir(home)))
        self._peer: protocol.Identity | None = None
        self._next_handshake = 0.0
        self._consumers: dict[str, tuple[Consumer, FileLog]] = {}
        self._started: set[str] = set()
        self._next_gap_check = 0.0
        self.probes = ServiceProbes(self)
        self.monitor = Monitor(self.config.monitor, self.config.name, self.probes.measure, self.probes.conditions,
                               book_path=os.path.join(run_dir(home), "alarms.json"))

    # ------------------------------------------------------------------ pairing

    def _activate_pairing(self, cfg: cfgmod.Config) -> None:
        """Finish a configuration: the master just starts syncing; a backup is overwritten."""
        if cfg.sync.role == "master":
            cfg.sync.state = "active"
            cfgmod.save(self.home, cfg)
            log.info("pairing active as master of %s", cfg.sync.peer)
            return
        with Appliance(self.home) as app:
            me = _identity(app.config, app.log.end_offset())
        client = protocol.PeerClient(cfg.sync, me)
        try:
            master = client.identity()
        finally:
            client.close()
        # The backup takes the master's data store: its own store and log are discarded (the
        # log continues its offsets, never reusing one), and the master's store is loaded: by
        # the mirror (http), or here from the master's snapshot (kafka-shared).
        shutil.rmtree(store_dir(self.home))
        shutil.rmtree(mirror_root(self.home), ignore_errors=True)
        if cfg.log.backend == "kafka":
            with open_log(self.home, cfg, writer=False) as klog:
                cfg.sync.own_log_from = klog.end_offset()  # a topic keeps its records: skip them
        else:
            old_end = FileLog(log_dir(self.home)).end_offset()
            shutil.rmtree(log_dir(self.home))
            FileLog(log_dir(self.home), writer=True, create=True, base_offset=old_end).close()
        cfg.store_id = master.store_id
        cfg.sync.paired_store_id = master.store_id
        cfg.sync.state = "active"
        cfgmod.save(self.home, cfg)
        with Appliance(self.home) as app:
            app.log.append([encode("StoreReset", {
                "origin": cfg.name, "hlc": app.hlc.now(), "store_id": master.store_id, "chunker": cfg.chunker,
                "model": cfg.model, "software_version": cfg.software_version,
            })])
            app.applied()
            if cfg.sync.transport != "http":
                self._load_snapshot(app, cfg, master, me)
        log.info("paired as backup of %s: store discarded, taking store %s", master.name, master.store_id)

    def _load_snapshot(self, app: Appliance, cfg: cfgmod.Config, master: protocol.Identity,
                       me: protocol.Identity) -> None:
        """Load the master's snapshot into the store; its topic is then read from where it ends."""
        directory = os.path.join(run_dir(self.home), "snapshot")
        shutil.rmtree(directory, ignore_errors=True)
        client = protocol.PeerClient(cfg.sync, me)
        try:
            covers_to, events, _store_id = snapshot.download(client, directory)
        finally:
            client.close()
        source = layout.snapshot_source(master.name, "pairing")
        Consumer(FileLog(directory), app.store, source).catch_up()
        app.store.forget(source)
        app.store.advance(source_name(master.name), covers_to)
        self._keep_snapshot(master.name, directory, "pairing")
        log.info("loaded snapshot of %s (%d events); reading its topic from offset %d", master.name, events, covers_to)

    def _keep_snapshot(self, peer: str, directory: str, label: str) -> None:
        """Keep a loaded snapshot of ``peer``'s store (the newest only) where the file mirror
        keeps its own (``_apply_snapshot``): ``dssync verify`` rebuilds the store's projection
        from it and the peer's log after it."""
        kept = layout.replace_applied_snapshot(self.home, peer, label)
        os.makedirs(kept)
        os.rename(directory, os.path.join(kept, "log"))

    def identity(self) -> protocol.Identity:
        return _identity(self.config, max(self._reader.start_offset(), self.config.sync.own_log_from))

    def note_refusal(self, peer: str, reason: str) -> None:
        if self.refusals.get(peer) != reason:
            log.warning("refused peer %s: %s", peer, reason)
        self.refusals[peer] = reason
        self.refusal_times[peer] = (reason, time.time())

    # ------------------------------------------------------------------ serving the peer

    def log_reader(self) -> FileLog:
        return FileLog(log_dir(self.home))

    def pack_reader(self) -> Packs:
        """A reader of the store's segment bytes (packs and log-resident files) for a thread
        that serves a snapshot while the store goes on applying."""
        with self.lock:
            return self.app.store.packs.reader()

    def snapshot_rows(self) -> tuple[list[Row], int, str]:
        with self.lock:
            store = self.app.store
            return store.snapshot_rows(), store.committed(self.app.source), store.meta().get("store_id", "")

    # ------------------------------------------------------------------ local tools

    def ingest(self, stream: BinaryIO) -> dict[str, Any]:
        return self.optimizer.ingest(stream).as_dict()

    def status(self) -> dict[str, Any]:
        with self.lock:
            doc = self.app.status()
        doc["sync"] = {
            "role": self.config.sync.role, "state": self.config.sync.state, "peer": self.config.sync.peer,
            "listen": self.config.sync.listen, "interface": self.config.sync.interface,
            "refusals": dict(self.refusals),
        }
        doc["mirrors"] = mirror_states(self.home)
        doc["pid"] = os.getpid()
        return doc

    def verify(self) -> dict[str, Any]:
        """Run 'dssync verify' on the store this service owns. Traffic and the mirror's apply
        wait while it runs: the store must hold still to be compared with its logs."""
        from dssync.tools.verify import verify_store

        with self.lock:
            return verify_store(self.home, self.app.store).as_dict()

    def offsets(self) -> dict[str, int]:
        """Committed offset per source: cheap enough to poll for latency measurements."""
        with self.lock:
            return self.app.store.offsets()

    def digest(self) -> dict[str, Any]:
        with self.lock:
            d = self.app.store.digest()
            return {"md5": d.md5, "rows": d.rows, "live_bytes": d.live_bytes, "offsets": self.app.store.offsets()}

    def rows(self) -> list[list[Any]]:
        with self.lock:
            return [[r[0].hex(), r[1], r[2], r[3], r[4], r[5], (r[8] or b"").hex()] for r in self.app.store.rows()]

    def log_position(self, at: int) -> dict[str, Any]:
        """For the peer's lag monitor: where this appliance's own log stands, seen from ``at``."""
        log = self.log_reader()
        try:
            start, end = log.start_offset(), log.end_offset()
            ts_at = None
            if start <= at < end:
                recs = log.read(at, 1)
                ts_at = recs[0].timestamp_ms if recs else None
            return {"start": start, "end": end, "ts_at": ts_at,
                    "bytes_from": log.bytes_from(max(at, start)) if at < end else 0}
        finally:
            log.close()

    def lag(self) -> dict[str, Any]:
        """The monitor's latest report (evaluated now if it has not run yet)."""
        report = self.monitor.latest()
        return report if report.get("evaluated") else self.monitor.evaluate()

    def request_stop(self, restart: bool = False) -> None:
        self.restart = restart
        self.stopping.set()

    # ------------------------------------------------------------------ applying mirrored logs

    def apply_mirrors(self) -> int:
        """Apply what the mirror service wrote since the last call; return records applied.

        The clock then observes the newest event applied, so that what this appliance writes
        next orders after everything it has seen from its peer.
        """
        applied = self._apply_sources()
        if applied:
            with self.lock:
                self.app.hlc.observe(int(self.app.store.meta().get("max_hlc", 0)))
        return applied

    def _apply_sources(self) -> int:
        if self.config.sync.state != "active":
            return 0
        if self.config.sync.transport != "http":
            return self._apply_peer_topic()
        total = 0
        for peer in layout.pending_snapshots(self.home):
            total += self._apply_snapshot(layout.snapshot_dir(self.home, peer))
        for peer in layout.mirrored_peers(self.home):
            total += self._apply_log(source_name(peer), layout.mirror_dir(self.home, peer))
        return total

    def _open_peer_log(self, peer: str) -> Any:
        """The peer's log as this site sees it (``appliance.open_peer_log``)."""
        return open_peer_log(self.home, self.config, peer, create=True)

    def _apply_peer_topic(self) -> int:
        """Kafka: read the peer's log from where the pairing says it starts for us: its own
        topic (shared cluster, no mirror) or its mirror topic at this site."""
        if self._peer is None:
            if time.monotonic() < self._next_handshake:
                return 0
            client = protocol.PeerClient(self.config.sync, self.identity(), timeout_s=5)
            try:
                self._peer = client.identity()
            except (TransientError, PairingRefusedError) as exc:
                self.note_refusal(self.config.sync.peer, exc.message)
                self._next_handshake = time.monotonic() + 1.0
                return 0
            finally:
                client.close()
            source = source_name(self._peer.name)
            self._consumers[source] = (Consumer(self._open_peer_log(self._peer.name), self.app.store, source,
                                                batch_records=5_000), self._reader)
            with self.lock:
                self.app.store.advance(source, self._peer.log_start_offset)
            log.info("reading %s's topic from offset %d", self._peer.name, self.app.store.committed(source))
        if self.config.sync.transport == "kafka-sites":
            self._repair_gaps(self._peer)
        consumer = self._consumers[source_name(self._peer.name)][0]
        applied = 0
        while not self.stopping.is_set():
            with self.lock:
                r = consumer.step()
            if not r.applied:
                break
            applied += r.applied
        return applied

    def _repair_gaps(self, peer: protocol.Identity) -> None:
        """kafka-sites: when the mirror has counted a retention gap (offsets of the peer's topic
        removed before they were copied), load a snapshot of the peer's store, then read its
        log on from where the snapshot ends: the same repair as the file mirror's, done here
        because the store is this service's. Checked once a second; a repair is recorded in
        ``run/gaps-repaired.json`` only once loaded (a crash before that repeats it: a snapshot
        applies idempotently)."""
        now = time.monotonic()
        if now < self._next_gap_check:
            return
        self._next_gap_check = now + 1.0
        gaps = len(mirror_states(self.home).get(peer.name, {}).get("gaps", []))
        path = os.path.join(run_dir(self.home), "gaps-repaired.json")
        done = layout.read_json(path)
        if gaps <= int(done.get(peer.name, 0)):
            return
        log.warning("the mirror of %s counted %d retention gap(s): repairing from a snapshot", peer.name, gaps)
        directory = os.path.join(run_dir(self.home), f"repair-{peer.name}")
        shutil.rmtree(directory, ignore_errors=True)
        client = protocol.PeerClient(self.config.sync, self.identity())
        try:
            covers_to, events, _store_id = snapshot.download(client, directory)  # no lock: traffic goes on
        finally:
            client.close()
        source = layout.snapshot_source(peer.name, "repair")
        with self.lock:
            Consumer(FileLog(directory), self.app.store, source).catch_up()
            self.app.store.forget(source)
            self.app.store.advance(source_name(peer.name), covers_to)
        self._keep_snapshot(peer.name, directory, f"repair-{gaps}")
        done[peer.name] = gaps
        layout.write_json(path, done)
        log.info("repaired: loaded a snapshot of %s (%d events), reading its log on from offset %d",
                 peer.name, events, covers_to)

    def _consumer(self, source: str, path: str) -> Consumer:
        entry = self._consumers.get(source)
        if entry is None or entry[1].directory != path:
            reader = FileLog(path)
            entry = (Consumer(reader, self.app.store, source, batch_records=5_000), reader)
            self._consumers[source] = entry
        entry[0].store = self.app.store
        return entry[0]

    def _apply_log(self, source: str, path: str) -> int:
        if os.path.exists(path + layout.SNAPSHOT_SUFFIX):
            return 0  # a snapshot of this peer is loading: its log continues where it ends
        consumer = self._consumer(source, path)
        if source not in self._started:
            start = layout.read_json(os.path.join(path, layout.START_FILE)).get("advance_to")
            if start is None:
                return 0  # the mirror has not finished creating this log yet
            with self.lock:
                self.app.store.advance(source, int(start))
            self._started.add(source)
        applied = 0
        while not self.stopping.is_set():
            with self.lock:
                try:
                    r = consumer.step()
                except OffsetOutOfRangeError:
                    return applied  # the mirror is re-basing after a gap; a snapshot follows
            if not r.applied:
                break
            applied += r.applied
        return applied

    def _apply_snapshot(self, path: str) -> int:
        meta_path = os.path.join(path, "snapshot.json")
        if not os.path.exists(meta_path):
            return 0  # still arriving
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        source = layout.snapshot_source(meta["peer"], meta["epoch"])
        consumer = self._consumer(source, os.path.join(path, "log"))
        applied = 0
        while True:
            with self.lock:
                r = consumer.step()
            if not r.applied:
                break
            applied += r.applied
        with self.lock:
            self.app.store.advance(source_name(meta["peer"]), int(meta["covers_to"]))
            self.app.store.forget(source)
        self._started.discard(source_name(meta["peer"]))
        self._consumers.pop(source, None)
        # Kept (the newest per peer) so that 'dssync verify' can rebuild the store's projection.
        os.rename(path, layout.replace_applied_snapshot(self.home, meta["peer"], meta["epoch"]))
        log.info("loaded snapshot of %s (%d events), continuing its log at offset %s",
                 meta["peer"], applied, meta["covers_to"])
        return applied

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        sync_srv = None
        if self.config.sync.role:
            host, _, port = self.config.sync.listen.rpartition(":")
            sync_srv, _ = server.start((host, int(port)), server.SyncHandler, self,
                                       protocol.ssl_context(self.config.sync, server=True))
        ctl_srv, _ = server.start(("127.0.0.1", 0), server.ControlHandler, self)
        metrics_srv, metrics = None, ""
        if self.config.monitor.metrics_listen:
            try:
                metrics_srv, metrics = serve_metrics(self.config.monitor.metrics_listen, self.monitor.latest)
            except OSError as exc:
                log.error("no Prometheus endpoint: cannot listen on %s (%s)", self.config.monitor.metrics_listen, exc)
        monitor_thread = threading.Thread(target=self.monitor.run, args=(self.stopping,), name="dssync-monitor",
                                          daemon=True)
        monitor_thread.start()
        os.makedirs(run_dir(self.home), exist_ok=True)
        doc = {"pid": os.getpid(), "control": f"127.0.0.1:{ctl_srv.server_address[1]}", "token": self.token,
               "sync": self.config.sync.listen if sync_srv else "", "metrics": metrics}
        layout.write_json(service_file(self.home), doc, mode=0o600)
        log.info("serving %s (control %s%s%s)", self.config.name, doc["control"],
                 f", sync {doc['sync']}" if doc["sync"] else "",
                 f", metrics http://{metrics}/metrics" if metrics else "")
        last_status = 0.0
        last_error = ""
        beat = _Heartbeat(self)
        try:
            while not self.stopping.is_set():
                try:
                    n = self.apply_mirrors()
                except DssyncError as exc:
                    if str(exc) != last_error:
                        log.error("applying the peer's log failed: %s", exc.message)
                        last_error = str(exc)
                    self.stopping.wait(0.5)  # a broker or disk that fails is not asked again at once
                    n = 0
                else:
                    if last_error and n:
                        log.info("applying the peer's log again")
                        last_error = ""
                now = time.monotonic()
                beat.tick(now)
                if now - last_status > 1.0:
                    with self.lock:
                        self.app.store.publish_status({**self.app.status_extra(), "sync_state": self.config.sync.state})
                    last_status = now
                if not n:
                    self.stopping.wait(APPLY_INTERVAL_S)
        finally:
            self.stopping.set()
            monitor_thread.join(timeout=30)
            self.probes.close()
            if metrics_srv is not None:
                metrics_srv.shutdown()
                metrics_srv.server_close()
            if sync_srv:
                sync_srv.shutdown()
                sync_srv.server_close()
            ctl_srv.shutdown()
            ctl_srv.server_close()
            with self.lock:
                self.app.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(service_file(self.home))
            log.info("stopped %s", self.config.name)


class _Heartbeat:
    """Writes a HeartbeatSent event into the appliance's own log when nothing else was written
    for ``heartbeat_s``: every path then keeps seeing fresh records on a quiet link, which is
    how the lag monitor tells a quiet path (idle) from a dead one (its lag in seconds grows)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.every = svc.config.monitor.heartbeat_s
        self.next = time.monotonic() + self.every
        self.end = -1
        self.failing = False

    def tick(self, now: float) -> None:
        if now < self.next:
            return
        self.next = now + self.every
        svc = self.svc
        try:
            with svc.lock:
                end = svc.app.log.end_offset()
                if end == self.end:  # nothing written since the last tick
                    cfg = svc.config
                    svc.app.log.append([encode("HeartbeatSent", {"origin": cfg.name, "hlc": svc.app.hlc.now(),
                                                             "sent_ms": int(time.time() * 1000)})])
                    svc.app.applied()
                    end = svc.app.log.end_offset()
        except DssyncError as exc:  # a full disk or a broker down: the lag monitor will show it
            if not self.failing:
                log.warning("cannot write a heartbeat: %s", exc.message)
            self.failing = True
            return
        if self.failing:
            log.info("heartbeats written again")
        self.failing = False
        self.end = end


def _identity(cfg: cfgmod.Config, log_start: int) -> protocol.Identity:
    return protocol.Identity(cfg.name, cfg.model, cfg.software_version, cfg.store_id, cfg.sync.role,
                             cfg.sync.state, log_start, cfg.chunker)


def serve(home: str, wait_for_home_s: float = 60.0) -> None:
    """Run the service until SIGTERM; restart in place when asked to.

    If another process holds the home (a standalone 'dssync ingest' started while the service
    was down), wait for it up to ``wait_for_home_s`` seconds instead of failing at once.
    A backup whose pairing is pending waits for its master as long as it takes (both sides
    of a pair are usually started together, e.g. by docker compose), with a growing pause
    (up to 5 s) and a log line whenever the reason changes; SIGTERM ends the wait cleanly.
    """
    deadline = time.monotonic() + wait_for_home_s
    announced = False
    stop = StopFlag().install()  # the handler only raises a flag: see dssync.process
    pause, said = 0.2, ""
    while True:
        try:
            svc = Service(home, stopping=stop)
            break
        except LockedError:
            if time.monotonic() >= deadline:
                raise
            if not announced:
                log.info("waiting for another dssync process to release %s", home)
                announced = True
            if stop.wait(0.2):
                return
        except TransientError as exc:  # the master is not there (yet) to pair with
            if exc.message != said:
                log.warning("pairing waits for the master: %s; retrying (every 5 s at most)", exc.message)
                said = exc.message
            if stop.wait(pause):
                log.info("stopped while waiting for the master")
                return
            pause = min(pause * 2, 5.0)
        if stop.is_set():
            return
    svc.run()  # a stop asked while the service was being set up is seen by its first loop
    if svc.restart:
        log.info("restarting %s", home)
        argv = command("serve", home)
        os.execv(argv[0], argv)
