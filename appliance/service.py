"""``dssync serve``: the long-running appliance service.

It owns the appliance's log and store (the only process that may), and:

* runs the optimization path for traffic sent by ``dssync ingest`` (``control``);
* applies the peer's log as it arrives here (``apply``), loading the peer's snapshots
  (``snapshots``) while bootstrapping or repairing a gap;
* answers the peer on the sync interface (``dssync.sync.server``) and the local tools on
  loopback (``control``);
* on start, completes a pending pairing (``pairing``): a backup discards its store and its
  old log and takes the master's store;
* writes heartbeats (``heartbeat``) and runs the lag monitor over every path.

SIGTERM stops it cleanly; ``dssync service restart`` restarts it in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from dssync import config as cfgmod
from dssync import layout
from dssync.appliance import pairing
from dssync.appliance.apply import PeerApplier
from dssync.appliance.control import ControlHandler
from dssync.appliance.heartbeat import Heartbeat
from dssync.appliance.home import Appliance
from dssync.appliance.verify import verify_store
from dssync.consumers.digest import Digest
from dssync.consumers.packs import Packs
from dssync.consumers.quarantine import Quarantine
from dssync.consumers.store import Row
from dssync.doorbell import Doorbell
from dssync.errors import DssyncError, LockedError, NotFoundError, TransientError
from dssync.fairlock import FairLock
from dssync.layout import log_dir, mirror_states, run_dir, service_file
from dssync.log.base import LogReader
from dssync.log.factory import open_log_reader
from dssync.log.filelog import FileLog
from dssync.monitor import latency
from dssync.monitor.metrics import serve_metrics
from dssync.monitor.monitor import Monitor
from dssync.monitor.probes import ServiceProbes
from dssync.process import StopFlag, command
from dssync.producers.optimizer import Optimizer
from dssync.sync import auth, protocol, server, tls

log = logging.getLogger("dssync.service")
APPLY_INTERVAL_S = 0.005
"""How often the apply loop looks for the peer's new records when nothing rings (Kafka transports)."""
RING_INTERVAL_S = 0.05
"""How often it looks anyway where the file mirror rings its doorbell (``dssync.doorbell``)."""
STATUS_EVERY_S = 1.0
STATUS_COST_FACTOR = 20
"""``status.json`` is rewritten every ``STATUS_EVERY_S``, or less often when writing it takes
longer (the counts are kept by the commits; the log's and packs' files are listed): at most one
``STATUS_COST_FACTOR``-th of the loop's time."""


class _LockedSink:
    """The optimizer's view of the appliance, one lock acquisition per call, so that traffic
    and the mirror's apply interleave window by window instead of waiting for a whole stream."""

    def __init__(self, app: Appliance, lock: FairLock) -> None:
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
        self.lock = FairLock()
        self.stopping = stopping or StopFlag()
        self.restart = False
        self.token = secrets.token_hex(16)
        self.sync_server: server.Server | None = None
        self.refusals: dict[str, str] = {}
        self.refusal_times: dict[str, tuple[str, float]] = {}
        cfg = cfgmod.load(home)
        if cfg.sync.role and cfg.sync.state == "restart-required":
            pairing.activate(home, cfg)
        else:
            pairing.finished(home)  # killed after its last step
        self.app = Appliance(home)
        self.config = self.app.config
        self.optimizer = Optimizer(self.config.name, self.app.chunker, self.app.hlc, _LockedSink(self.app, self.lock))
        self._reader = open_log_reader(home, self.config)
        self.applier = PeerApplier(home, self.config, self.app, self.lock, self.stopping, self.identity,
                                   self.note_refusal)
        self.probes = ServiceProbes(self)
        self.monitor = Monitor(self.config.monitor, self.config.name, self.probes.measure, self.probes.conditions,
                               book_path=os.path.join(run_dir(home), "alarms.json"))

    def identity(self) -> protocol.Identity:
        return pairing.identity(self.config, max(self._reader.start_offset(), self.config.sync.own_log_from))

    def note_refusal(self, peer: str, reason: str) -> None:
        if self.refusals.get(peer) != reason:
            log.warning("refused peer %s: %s", peer, reason)
        self.refusals[peer] = reason
        self.refusal_times[peer] = (reason, time.time())

    # ------------------------------------------------------------------ what the monitor probes

    def kafka_peer(self) -> str | None:
        """The peer on a Kafka transport, once it has answered."""
        peer = self.applier.peer
        return peer.name if peer is not None else None

    def open_peer_log(self, peer: str) -> LogReader:
        return self.applier.open_peer_log(peer)

    def store_offsets(self) -> dict[str, int]:
        with self.lock:
            return self.app.store.offsets()

    def own_source(self) -> str:
        return self.app.source

    def digest_snapshot(self) -> tuple[Digest, dict[str, int]]:
        """The store's digest and the offsets it covers, read together (the digest is kept by
        every commit: reading it costs nothing, ``dssync.consumers.digest``)."""
        with self.lock:
            return self.app.store.digest(), self.app.store.offsets()

    def snapshot_loading(self) -> dict[str, int]:
        return dict(self.applier.snapshot_loading)

    # ------------------------------------------------------------------ serving the peer

    def log_reader(self) -> FileLog:
        return FileLog(log_dir(self.home))

    def served_end(self, beyond: int, wait_s: float) -> int:
        log = self.app.log
        if not isinstance(log, FileLog):
            raise NotFoundError(f"{self.config.name}'s log is a Kafka topic", hint="its peer reads it from the broker")
        return log.wait_durable(beyond, wait_s, self.stopping.is_set, guard=self.lock)

    def mirror_reader(self, peer: str) -> FileLog:
        if self.config.sync.transport != "http" or peer not in layout.mirrored_peers(self.home):
            raise NotFoundError(f"{self.config.name} holds no mirror of {peer}'s log",
                                hint="only a paired appliance on the http transport mirrors its peer's log")
        return FileLog(layout.mirror_dir(self.home, peer))

    def pack_reader(self) -> Packs:
        """A reader of the store's segment bytes (packs and log-resident files) for a thread
        that serves a snapshot while the store goes on applying."""
        with self.lock:
            return self.app.store.packs.reader()

    @contextlib.contextmanager
    def snapshot_rows(self) -> Iterator[tuple[Iterator[Row], int, int, str]]:
        """The store's rows streamed from a consistent view (traffic goes on meanwhile), their
        count, the own-log offset they cover and the store id."""
        store = self.app.store
        with contextlib.ExitStack() as stack:
            with self.lock:  # the view starts between two commits
                rows, count, offsets = stack.enter_context(store.snapshot_rows())
                store_id = store.meta().get("store_id", "")
            yield rows, count, offsets.get(self.app.source, 0), store_id

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
            "requests": self.sync_server.counters() if self.sync_server is not None else {},
            "replication_latency": self.replication_latency(),
            "clock_observations_bounded": self.app.hlc.bounded,
        }
        doc["mirrors"] = mirror_states(self.home)
        doc["quarantine"] = Quarantine(self.home).entries()
        doc["pid"] = os.getpid()
        return doc

    def replication_latency(self) -> dict[str, Any]:
        """By peer: batches applied since the service started, p50/p99 and the share within
        50 ms (``dssync.monitor.latency``), and the histogram they come from."""
        out = {}
        for peer, hist in list(self.applier.latency.items()):
            snap = hist.snapshot()
            out[peer] = {**latency.summary(snap), "histogram": snap}
        return out

    def verify(self) -> dict[str, Any]:
        """Run 'dssync verify' on the store this service owns. Traffic and the mirror's apply
        wait while it runs: the store must hold still to be compared with its logs."""
        with self.lock:
            return verify_store(self.home, self.app.store).as_dict()

    def offsets(self) -> dict[str, int]:
        """Committed offset per source: cheap enough to poll for latency measurements."""
        return self.store_offsets()

    def digest(self) -> dict[str, Any]:
        """The store's digest and the offsets it covers, for the peer's convergence check and
        the tools."""
        d, offsets = self.digest_snapshot()
        return {"digest": d.value, "rows": d.rows, "live_bytes": d.live_bytes, "offsets": offsets}

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

    def metrics_report(self) -> dict[str, Any]:
        """What the Prometheus endpoint exports: the monitor's latest report and the sync
        interface's counters (refused requests by reason, connections dropped at the cap)."""
        srv = self.sync_server
        return {**self.monitor.latest(), "sync_server": srv.counters() if srv is not None else {},
                "replication_latency": {p: h.snapshot() for p, h in list(self.applier.latency.items())}}

    def request_stop(self, restart: bool = False) -> None:
        self.restart = restart
        self.stopping.set()

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        sync_srv = None
        if self.config.sync.role:
            host, _, port = self.config.sync.listen.rpartition(":")
            ctx, fingerprint = tls.server_context(self.home, self.config.name, self.config.sync)
            sync_srv, _ = server.start((host, int(port)), server.SyncHandler, self,
                                       (ctx, fingerprint, auth.derive_key(self.config.sync.check_secret())))
        self.sync_server = sync_srv
        ctl_srv, _ = server.start(("127.0.0.1", 0), ControlHandler, self)
        metrics_srv, metrics = None, ""
        if self.config.monitor.metrics_listen:
            try:
                metrics_srv, metrics = serve_metrics(self.config.monitor.metrics_listen, self.metrics_report)
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
        last_status, status_every = 0.0, STATUS_EVERY_S
        last_error = ""
        beat = Heartbeat(self.app, self.lock, self.config.monitor.heartbeat_s)
        bell = Doorbell.open(self.home) if self.config.sync.transport == "http" else None
        try:
            while not self.stopping.is_set():
                if bell is not None:
                    bell.clear()  # before looking: a ring from now on is kept
                try:
                    n = self.applier.step()
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
                if isinstance(self.app.log, FileLog):
                    with self.lock:
                        self.app.log.sync_if_due()  # under fsync "interval": a quiet log's tail is served too
                if now - last_status > status_every:
                    with self.lock:
                        extra = {**self.app.status_extra(), "sync_state": self.config.sync.state}
                    self.app.store.publish_status(extra)  # kept counts: no scan of the rows
                    last_status = time.monotonic()
                    status_every = max(STATUS_EVERY_S, STATUS_COST_FACTOR * (last_status - now))
                if not n:
                    if bell is None:
                        self.stopping.wait(APPLY_INTERVAL_S)
                    else:
                        self.stopping.wait(RING_INTERVAL_S, wake=bell.fileno())
        finally:
            if bell is not None:
                bell.close()
            self.stopping.set()
            if isinstance(self.app.log, FileLog):
                self.app.log.wake_waiters()  # the sync interface's long polls end now
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
            self.applier.close()
            self._reader.close()
            with self.lock:
                self.app.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(service_file(self.home))
            log.info("stopped %s", self.config.name)


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
