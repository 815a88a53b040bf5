"""The Prometheus endpoint of the appliance service (prometheus-client).

Metric names carry their base unit (``_seconds``, ``_bytes``); every path metric has the
labels ``appliance`` (this one), ``peer`` (whose log the path carries) and ``path`` (``store``
or ``mirror``). Values come from the monitor's latest report, so a scrape never touches the
store or the logs. A catch-up estimate that does not exist (not catching up) is left out,
never exported as NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dssync.monitor.evaluate import STATUSES

_PATH_GAUGES = (
    ("dssync_lag_records", "Records appended to the source log and not consumed yet on this path.", "lag_records"),
    ("dssync_lag_bytes", "Bytes not consumed yet on this path.", "lag_bytes"),
    ("dssync_lag_seconds", "Age of the oldest record not consumed yet on this path (0 when caught up).",
     "lag_seconds"),
    ("dssync_log_end_offset", "End offset of the path's source log.", "end_offset"),
    ("dssync_consumer_position", "Next offset the path's consumer needs.", "position"),
    ("dssync_catch_up_seconds", "Estimated time to catch up at the current rates.", "eta_seconds"),
)


class LagCollector(Collector):
    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report

    def collect(self) -> Iterator[Any]:
        r = self.report()
        me = r.get("appliance", "")
        labels = ["appliance", "peer", "path"]
        families = {name: GaugeMetricFamily(name, doc, labels=labels) for name, doc, _ in _PATH_GAUGES}
        status = GaugeMetricFamily("dssync_path_status", "1 for the path's current status.",
                                   labels=[*labels, "status"])
        for p in r.get("paths", {}).values():
            values = [me, p["source"], p["path"]]
            for name, _doc, key in _PATH_GAUGES:
                if p.get(key) is not None:
                    families[name].add_metric(values, float(p[key]))
            for st in STATUSES:
                status.add_metric([*values, st], 1.0 if p["status"] == st else 0.0)
        yield from families.values()
        yield status
        alarms = GaugeMetricFamily("dssync_alarm_active", "1 while the alarm is raised.",
                                   labels=["appliance", "alarm", "path", "severity"])
        for a in r.get("alarms", []):
            alarms.add_metric([me, a["alarm"], a["path"], a["severity"]], 1.0)
        yield alarms
        yield _suppressed(me, r)
        yield from _sync_server(me, r.get("sync_server") or {})
        yield _replication_latency(me, r.get("replication_latency") or {})


def _replication_latency(me: str, by_peer: dict[str, Any]) -> HistogramMetricFamily:
    """Append on the peer -> committed here, per batch (``dssync.monitor.latency``)."""
    h = HistogramMetricFamily("dssync_replication_latency_seconds",
                              "Time from a batch's append on the peer to its commit in this store.",
                              labels=["appliance", "peer"])
    for peer, snap in sorted(by_peer.items()):
        h.add_metric([me, peer], [(str(b), float(c)) for b, c in snap["buckets"]], snap["sum_s"])
    return h


def _suppressed(me: str, r: dict[str, Any]) -> CounterMetricFamily:
    c = CounterMetricFamily("dssync_alarm_notifications_suppressed", "Raises not notified (rate limit).",
                            labels=["appliance"])
    c.add_metric([me], float(r.get("notifications_suppressed", 0)))
    return c


def _sync_server(me: str, counters: dict[str, Any]) -> Iterator[CounterMetricFamily]:
    """The sync interface's refusals: requests refused before any work (unauthenticated,
    replayed, stale, failed TLS handshakes), by reason, and connections closed at the cap."""
    refused = CounterMetricFamily("dssync_sync_requests_refused", "Requests refused before any work, by reason.",
                                  labels=["appliance", "reason"])
    for reason, n in sorted((counters.get("refused_requests") or {}).items()):
        refused.add_metric([me, reason], float(n))
    yield refused
    dropped = CounterMetricFamily("dssync_sync_connections_dropped", "Connections closed at the connection cap.",
                                  labels=["appliance"])
    dropped.add_metric([me], float(counters.get("dropped_connections", 0)))
    yield dropped


def serve_metrics(address: str, report: Callable[[], dict[str, Any]]) -> tuple[Any, str]:
    """Start the endpoint on ``HOST:PORT`` (port 0: any free one); returns (server, address)."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LagCollector(report))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server, f"{host or '127.0.0.1'}:{server.server_address[1]}"
