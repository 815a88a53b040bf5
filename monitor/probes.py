"""The paths of a running appliance service, measured for the monitor.

Runs on the monitor's thread with its own log readers and its own peer client (Kafka
consumers and HTTP connections are not shared between threads). It sees the service through
``ProbedService``: its identity, the store's offsets (read under the service's lock, briefly),
the peer's log as the service reads it, and the refusals it noted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, Protocol

from dssync import config as cfgmod
from dssync import layout
from dssync.consumers.digest import Digest
from dssync.consumers.quarantine import Quarantine, directory
from dssync.errors import DssyncError
from dssync.layout import mirror_state
from dssync.log.base import LogReader
from dssync.log.factory import open_log_reader, open_peer_source
from dssync.log.filelog import FileLog
from dssync.monitor.evaluate import Sample
from dssync.monitor.lag import measure_log, measure_remote, mirror_alive
from dssync.monitor.monitor import Conditions
from dssync.sync import protocol

DIGEST_EVERY_S = 60.0
"""Digests are compared at most this often, and only when the pair is caught up (a request to
the peer each time; the digests themselves are kept by the commits and cost nothing to read)."""


class ProbedService(Protocol):
    """What the monitor needs of the running service."""

    home: str
    config: cfgmod.Config
    refusal_times: dict[str, tuple[str, float]]
    """Peer (or address) -> (reason, time) of the latest refusal, either way."""

    def identity(self) -> protocol.Identity:
        """This appliance's identity on the sync interface."""
        ...

    def kafka_peer(self) -> str | None:
        """On a Kafka transport, the peer once it has answered; else None."""
        ...

    def open_peer_log(self, peer: str) -> LogReader:
        """A new reader of ``peer``'s log as the service reads it (Kafka transports)."""
        ...

    def store_offsets(self) -> dict[str, int]:
        """The store's committed offset per source."""
        ...

    def own_source(self) -> str:
        """The source name of the appliance's own log in its store."""
        ...

    def digest_snapshot(self) -> tuple[Digest, dict[str, int]]:
        """The store's digest and the offsets it covers, without blocking traffic."""
        ...

    def snapshot_loading(self) -> dict[str, int]:
        """By peer whose snapshot the store is loading: the records applied so far."""
        ...


class ServiceProbes:
    """Measures every path of ``svc`` (``measure``) and the alarm conditions that are not lag
    (``conditions``), for the service's ``Monitor``."""

    def __init__(self, svc: ProbedService) -> None:
        self.svc = svc
        self._own: LogReader | None = None
        self._logs: dict[str, LogReader] = {}
        self._client: protocol.PeerClient | None = None
        self._digest_at = 0.0
        self._digest_offsets: dict[str, int] | None = None
        self._digest_value: tuple[float | None, str] = (None, "not compared yet")

    # ------------------------------------------------------------------ peers and readers

    def peers(self) -> list[str]:
        svc = self.svc
        if svc.config.sync.transport != "http":
            peer = svc.kafka_peer()
            return [peer] if peer is not None else []
        return layout.mirrored_peers(svc.home)

    def client(self) -> protocol.PeerClient:
        if self._client is None:
            self._client = protocol.PeerClient(self.svc.config.sync, self.svc.identity(), timeout_s=5)
        return self._client

    def _peer_log(self, peer: str) -> LogReader:
        """The log this appliance's store consumes for ``peer`` (own reader, this thread only)."""
        svc = self.svc
        if svc.config.sync.transport == "http":
            return FileLog(layout.mirror_dir(svc.home, peer))
        if peer not in self._logs:
            self._logs[peer] = svc.open_peer_log(peer)
        return self._logs[peer]

    def _source_log(self, peer: str) -> LogReader:
        """kafka-sites: the peer's own topic on the peer site's cluster."""
        key = f"source:{peer}"
        if key not in self._logs:
            self._logs[key] = open_peer_source(self.svc.config, peer)
        return self._logs[key]

    def _reset(self, key: str) -> None:
        log = self._logs.pop(key, None)
        if log is not None:
            with contextlib.suppress(Exception):
                log.close()

    # ------------------------------------------------------------------ measuring

    def measure(self, now: float) -> dict[str, Sample]:
        svc = self.svc
        me = svc.config.name
        offsets = svc.store_offsets()
        if self._own is None:
            self._own = open_log_reader(svc.home, svc.config)
        out = {f"store:{me}": measure_log(self._own, offsets.get(svc.own_source(), 0), now, True)}
        for peer in self.peers():
            out[f"store:{peer}"] = self._measure_store(peer, offsets, now)
            if svc.config.sync.transport != "kafka-shared":
                out[f"mirror:{peer}"] = self._measure_mirror(peer, now)
        return out

    def _measure_store(self, peer: str, offsets: dict[str, int], now: float) -> Sample:
        try:
            log = self._peer_log(peer)
        except (DssyncError, OSError) as exc:
            return Sample(now, 0, 0, 0, 0, None, True, error=str(getattr(exc, "message", exc)))
        s = measure_log(log, offsets.get(layout.source_name(peer), 0), now, True)
        if s.error:
            self._reset(peer)
        loading = self.svc.snapshot_loading().get(peer)
        return s if loading is None else dataclasses.replace(s, snapshot_events=loading)

    def _measure_mirror(self, peer: str, now: float) -> Sample:
        s = self._measure_mirror_log(peer, now)
        state = mirror_state(self.svc.home, peer)
        if state.get("state") == "bootstrapping" and "snapshot_events" in state:
            return dataclasses.replace(s, snapshot_events=int(state["snapshot_events"]))
        return s

    def _measure_mirror_log(self, peer: str, now: float) -> Sample:
        svc = self.svc
        state = mirror_state(svc.home, peer)
        alive = mirror_alive(state, now)
        if svc.config.sync.transport == "http":
            try:
                position = self._peer_log(peer).end_offset()
            except (DssyncError, OSError) as exc:
                return Sample(now, 0, 0, 0, 0, None, alive, error=f"no mirror log: {exc}")
            s = measure_remote(self.client(), position, now, alive)
            if s.error and self._client is not None:
                self._client.close()
                self._client = None
            return s
        try:
            position = self._peer_log(peer).end_offset()
            s = measure_log(self._source_log(peer), position, now, alive)
        except DssyncError as exc:
            s = Sample(now, 0, 0, 0, 0, None, alive, error=exc.message)
        if s.error:
            self._reset(f"source:{peer}")
        return s

    # ------------------------------------------------------------------ other alarm conditions

    def conditions(self, now: float, paths: dict[str, dict[str, Any]]) -> Conditions:
        svc = self.svc
        window = svc.config.monitor.window_s
        out: Conditions = {}
        for peer in self.peers():
            st = mirror_state(svc.home, peer)
            recent = [g for g in st.get("gaps", []) if g.get("at_ms", 0) / 1000 > now - window]
            # a snapshot loaded at pairing is no gap; one that repairs a gap is, until it is loaded
            repairing = st.get("state") == "bootstrapping" and st.get("repairing", True)
            in_gap = st.get("state") == "gap" or repairing or bool(recent)
            events = st.get("not_copied_events", 0)
            out[("retention_gap", f"mirror:{peer}")] = (
                1.0 if in_gap else 0.0,
                f"{events} events ({st.get('not_copied_bytes', 0)} bytes) not copied in all; "
                f"{len(recent)} gap(s) in the last {window:.0f} s" + (f"; mirror {st.get('state')}" if in_gap else ""))
        refused = {p: r for p, (r, at) in svc.refusal_times.items() if at > now - window}
        for peer in self.peers():
            if mirror_state(svc.home, peer).get("state") == "refused":
                refused[peer] = mirror_state(svc.home, peer).get("detail", "refused")
        out[("pairing_refused", "sync")] = (1.0 if refused else 0.0,
                                             "; ".join(f"{p}: {r}" for p, r in refused.items()) or "no refusal")
        out[("digest_mismatch", "pair")] = self._digests(now, paths)
        aside = Quarantine(svc.home).entries()
        first = aside[0] if aside else None
        out[("peer_data_quarantined", "sync")] = (
            float(len(aside)),
            f"{len(aside)} record(s) of the peer set aside in {directory(svc.home)}; the first: {first['source']} "
            f"offset {first['offset']}: {first['reason']} (compare the stores with 'dssync verify A B'; remove the "
            "files once handled)" if first else "nothing set aside")
        return out

    def _digests(self, now: float, paths: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        caught_up = len(paths) > 1 and all(p["lag_records"] == 0 and p["status"] in ("ok", "idle")
                                           for p in paths.values())
        if not caught_up:
            return None, "not caught up: not compared"
        if now - self._digest_at < (DIGEST_EVERY_S if self._digest_value[0] is not None else DIGEST_EVERY_S / 6):
            return self._digest_value
        self._digest_at = now
        mine, my_offsets = self.svc.digest_snapshot()
        try:
            status, _, body = self.client().get("/v1/digest")
            if status != 200:
                return None, f"peer answered HTTP {status}"
            theirs = json.loads(body)
        except DssyncError as exc:
            return None, exc.message
        if {k: v for k, v in theirs["offsets"].items() if layout.source_appliance(k)} != \
                {k: v for k, v in my_offsets.items() if layout.source_appliance(k)}:
            self._digest_value = (None, "the peer is at other offsets: not compared")
            return self._digest_value
        same = theirs["digest"] == mine.value
        self._digest_value = (0.0 if same else 1.0,
                              f"digests {'equal' if same else 'differ'} at offsets {my_offsets}: "
                              f"{mine.value} here, {theirs['digest']} at the peer "
                              f"({mine.rows} / {theirs['rows']} rows)")
        return self._digest_value

    def close(self) -> None:
        for key in list(self._logs):
            self._reset(key)
        if self._own is not None:
            with contextlib.suppress(Exception):
                self._own.close()
        if self._client is not None:
            self._client.close()
