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

from collections.abc import Callable
from typing import Any

from dssync.log.factory import kafka_settings, peer_kafka_settings
from dssync.log.kafka import FOLLOW_WAIT_MS, KafkaLog
from dssync.log.mirrored import mirror_topic
from dssync.sync import protocol
from dssync.sync.kafka_mirror import TopicCopier
from dssync.sync.mirror_base import MirrorService


class SiteMirror(MirrorService):
    """The Kafka-to-Kafka mirror service of one appliance home.

    A copier counts what its own cycle copied; the totals in the state file are those counts
    on top of ``_base``, the totals of every earlier cycle and run."""

    COUNTERS = ("copied_records", "copied_bytes", "not_copied_events", "not_copied_bytes")

    def __init__(self, home: str, idle_s: float = 0.01) -> None:
        super().__init__(home)
        self.cfg.sync.check_secret()  # refused now, with its remedy, not on every retry
        self.idle_s = idle_s
        self.copier: TopicCopier | None = None
        self._base: dict[str, Any] = {}

    def _state_doc(self) -> dict[str, Any]:
        c = self.copier
        if c is not None:
            self.state["copied_records"] = self._base.get("copied_records", 0) + c.stats["copied_records"]
            self.state["copied_bytes"] = self._base.get("copied_bytes", 0) + c.stats["copied_bytes"]
            self.state["gaps"] = self._base.get("gaps", []) + c.stats["gaps"]
            self.state["not_copied_events"] = self._base.get("not_copied_events", 0) + c.stats["not_copied_offsets"]
            if c.next is not None:  # None once closed
                self.state["next_source_offset"] = c.next
        return {**self.state, "transport": "kafka-sites"}

    def _handshake(self) -> protocol.Identity:
        c = self.cfg
        me = protocol.Identity(c.name, c.model, c.software_version, c.store_id, c.sync.role, c.sync.state,
                               c.sync.own_log_from, c.chunker)
        client = protocol.PeerClient(c.sync, me, timeout_s=10.0)
        try:
            return client.identity()
        finally:
            client.close()

    def _cycle(self, stopped: Callable[[], bool]) -> None:
        if self._waiting():
            return
        peer = self._handshake()
        if self._met_peer(peer.name):
            self._base = {k: self.state[k] for k in ("copied_records", "copied_bytes", "not_copied_events", "gaps")}
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

    def _fold_counters(self) -> None:
        """A cycle ends: its counters join the base, the next cycle counts from zero."""
        self._save(force=True)
        self._base = {k: self.state[k] for k in ("copied_records", "copied_bytes", "not_copied_events", "gaps")}
        self.copier = None


