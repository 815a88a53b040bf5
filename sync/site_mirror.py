"""``dssync mirror`` for a pair with one Kafka cluster per site (transport ``kafka-sites``).

Copies the peer's own topic, on the peer site's cluster, into ``<prefix>mirror.<peer>`` on
this site's cluster, exactly once (``dssync.sync.kafka_mirror.TopicCopier``); this site's
service reads that topic in the peer's offsets (``dssync.log.mirrored``).

Before copying, the mirror proves the pair over the sync interface, as the file mirror does:
a peer with another model, software version or secret is refused, with the reason in the
mirror's state. Its state (connected, disconnected, refused, counters, gaps) is written to
``HOME/mirror/<peer>/state.json``, where ``dssync status`` shows it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dssync import config as cfgmod
from dssync import layout
from dssync.errors import PairingRefusedError
from dssync.log.factory import kafka_settings, peer_kafka_settings
from dssync.log.kafka import FOLLOW_WAIT_MS, KafkaLog
from dssync.log.mirrored import mirror_topic
from dssync.process import StopFlag
from dssync.sync import protocol
from dssync.sync.kafka_mirror import TopicCopier, keep_running

log = logging.getLogger("dssync.mirror")


class SiteMirror:
    """The Kafka-to-Kafka mirror service of one appliance home."""

    def __init__(self, home: str, idle_s: float = 0.01) -> None:
        self.home = home
        self.idle_s = idle_s
        self.cfg = cfgmod.load(home)
        self.stop = StopFlag()  # SIGTERM routed here by 'dssync mirror' (stop.install())
        self.status = "starting"
        self.peer: str | None = None
        self.copier: TopicCopier | None = None
        self.state: dict[str, Any] = {"state": "starting", "copied_records": 0, "copied_bytes": 0, "gaps": [],
                                      "not_copied_events": 0, "not_copied_bytes": 0}
        self._base: dict[str, Any] = {}
        self._last_write = 0.0

    def _set(self, status: str, detail: str = "") -> None:
        if status != self.status:
            level = logging.WARNING if status in ("disconnected", "refused") else logging.INFO
            log.log(level, "mirror %s%s", status, f": {detail}" if detail else "")
            self.status = status
        self.state.update(state=status, detail=detail)
        self._save(force=True)

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.peer is None or (not force and now - self._last_write < 0.5):
            return
        self._last_write = now
        c = self.copier
        if c is not None:
            self.state["copied_records"] = self._base.get("copied_records", 0) + c.stats["copied_records"]
            self.state["copied_bytes"] = self._base.get("copied_bytes", 0) + c.stats["copied_bytes"]
            self.state["gaps"] = self._base.get("gaps", []) + c.stats["gaps"]
            self.state["not_copied_events"] = self._base.get("not_copied_events", 0) + c.stats["not_copied_offsets"]
            if c.next is not None:  # None once closed
                self.state["next_source_offset"] = c.next
        layout.write_mirror_state(self.home, self.peer, {**self.state, "peer": self.peer, "transport": "kafka-sites",
                                                         "updated_ms": int(time.time() * 1000)})

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when asked to stop."""
        self.stop.wait(seconds)

    def run(self, stop_after_s: float | None = None) -> None:
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s

        def stopped() -> bool:
            return self.stopped or (deadline is not None and time.monotonic() >= deadline)

        while not stopped():
            try:
                keep_running(lambda: self._session(stopped), stopped, self._set, self._sleep)
            except PairingRefusedError as exc:
                self._set("refused", exc.message)
                self._sleep(2.0)
        self.close()

    def _handshake(self) -> protocol.Identity:
        c = self.cfg
        me = protocol.Identity(c.name, c.model, c.software_version, c.store_id, c.sync.role, c.sync.state,
                               c.sync.own_log_from, c.chunker)
        client = protocol.PeerClient(c.sync, me, timeout_s=10.0)
        try:
            return client.identity()
        finally:
            client.close()

    def _session(self, stopped: Any) -> None:
        self.cfg = cfgmod.load(self.home)
        if self.cfg.sync.state != "active":
            self._set("waiting", f"this appliance is {self.cfg.sync.state}")
            self._sleep(0.5)
            return
        peer = self._handshake()
        if self.peer != peer.name:
            self.peer = peer.name
            self._load_counters()
        own = kafka_settings(self.cfg)
        peer_settings = peer_kafka_settings(self.cfg)
        prefix = self.cfg.kafka.topic_prefix
        source = KafkaLog(peer_settings, prefix + peer.name, fetch_wait_ms=FOLLOW_WAIT_MS)
        try:
            self.copier = TopicCopier(source, prefix + peer.name, own, mirror_topic(prefix, peer.name), peer.name,
                                      retention_bytes=self.cfg.log.retention_bytes or -1,
                                      retention_ms=self.cfg.log.retention_ms or -1)
            at = self.copier.open()
            self._set("connected", f"mirroring {source.topic} at {self.cfg.sync.peer_kafka} from offset {at}")
            while not stopped():
                if not self.copier.step() and not self.copier.follows:
                    self._sleep(self.idle_s)
                self._save()
        finally:
            copier = self.copier
            if copier is not None:
                copier.close()  # commits what it copied: counted before the fold
                self._fold_counters()
            source.close()

    def _load_counters(self) -> None:
        """Totals of earlier runs carry forward: status reports the pair's whole history."""
        assert self.peer is not None
        old = layout.mirror_state(self.home, self.peer)
        self._base = {k: old.get(k, 0) for k in ("copied_records", "copied_bytes", "not_copied_events")}
        self._base["gaps"] = list(old.get("gaps", []))

    def _fold_counters(self) -> None:
        """A session ends: its counters join the base, the next session counts from zero."""
        self._save(force=True)
        self._base = {k: self.state[k] for k in ("copied_records", "copied_bytes", "not_copied_events", "gaps")}
        self.copier = None

    def close(self) -> None:
        self._set("stopped")  # the lag monitor tells a stopped mirror from a running one by this
