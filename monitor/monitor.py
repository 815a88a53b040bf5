"""The monitoring loop: measure every path, judge it, drive the alarms, notify, report.

``Monitor`` is independent of where samples come from: the service gives it a ``measure``
function (``dssync.monitor.lag``) and a ``conditions`` function (gap, refusal, digests), and
tests give it recorded scenarios with an injected clock. ``report`` is what ``dssync lag``,
``/v1/lag`` and the Prometheus endpoint show.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from dssync.config import MonitorConfig
from dssync.monitor.alarms import AlarmBook, AlarmEvent, AlarmSpec
from dssync.monitor.evaluate import SEVERITY, PathWindow, Sample, Verdict
from dssync.monitor.notify import Notifier


class Stopping(Protocol):
    """What ``Monitor.run`` waits on: a ``threading.Event`` or a ``dssync.process.StopFlag``."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...

log = logging.getLogger("dssync.alarms")

Conditions = dict[tuple[str, str], tuple[float | None, str]]
"""(alarm, path) -> (value, evidence): alarms fed from conditions other than lag."""


def alarm_specs(c: MonitorConfig) -> list[AlarmSpec]:
    r, cl = c.raise_after_s, c.clear_after_s
    return [
        AlarmSpec("lag_seconds", "major", c.lag_seconds_rising, c.lag_seconds_reset, r, cl, "s"),
        AlarmSpec("lag_records", "minor", c.lag_records_rising, c.lag_records_reset, r, cl, "records"),
        AlarmSpec("lag_bytes", "minor", c.lag_bytes_rising, c.lag_bytes_reset, r, cl, "bytes"),
        AlarmSpec("mirror_stopped", "critical", 1, 0, r, cl),
        AlarmSpec("store_stalled", "critical", 1, 0, r, cl),
        AlarmSpec("retention_gap", "major", 1, 0, 0, cl),
        AlarmSpec("pairing_refused", "critical", 1, 0, 0, cl),
        AlarmSpec("digest_mismatch", "critical", 1, 0, r, cl),
        AlarmSpec("peer_data_quarantined", "critical", 1, 0, 0, cl),
    ]


class Monitor:
    def __init__(self, cfg: MonitorConfig, appliance: str, measure: Callable[[float], dict[str, Sample]],
                 conditions: Callable[[float, dict[str, dict[str, Any]]], Conditions] | None = None,
                 book_path: str | None = None, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.appliance, self.measure, self.conditions = cfg, appliance, measure, conditions
        self.clock = clock
        self.book = AlarmBook(alarm_specs(cfg), book_path, appliance)
        self.notifier = notifier or Notifier(cfg.notify_command, cfg.notify_webhook, cfg.notify_max_per_hour,
                                             clock=clock)
        self.windows: dict[str, PathWindow] = {}
        self.events: list[AlarmEvent] = []  # this process's raises and clears, newest last
        self.report: dict[str, Any] = {"appliance": appliance, "paths": {}, "alarms": [], "worst": "unknown",
                                       "evaluated": False}
        self.lock = threading.Lock()
        self._round = threading.Lock()

    def evaluate(self) -> dict[str, Any]:
        """One round: sample, judge, feed the alarms, notify; returns (and keeps) the report.

        Rounds never overlap (the loop and an on-demand ``dssync lag`` may both ask): the
        probes' readers and the alarm book belong to one round at a time.
        """
        with self._round:
            return self._evaluate()

    def _evaluate(self) -> dict[str, Any]:
        now = self.clock()
        paths: dict[str, dict[str, Any]] = {}
        for path, s in sorted(self.measure(now).items()):
            window = self.windows.setdefault(path, PathWindow(self.cfg.window_s))
            v = window.add(s)
            paths[path] = _path_doc(path, s, v)
            self._lag_alarms(path, s, v, now)
        if self.conditions is not None:
            for (alarm, path), (value, evidence) in self.conditions(now, paths).items():
                self._feed(alarm, path, value, evidence, now)
        worst = max((p["status"] for p in paths.values()), key=lambda st: SEVERITY[st], default="idle")
        report = {"appliance": self.appliance, "at_ms": int(now * 1000), "interval_s": self.cfg.interval_s,
                  "worst": worst, "paths": paths, "alarms": self.book.active(),
                  "notifications_suppressed": self.notifier.suppressed, "evaluated": True}
        with self.lock:
            self.report = report
        return report

    def _lag_alarms(self, path: str, s: Sample, v: Verdict, now: float) -> None:
        ok = s.error == ""
        self._feed("lag_seconds", path, s.lag_seconds if ok else None, v.evidence, now)
        self._feed("lag_records", path, s.lag_records if ok else None, v.evidence, now)
        self._feed("lag_bytes", path, s.lag_bytes if ok else None, v.evidence, now)
        alarm = "mirror_stopped" if path.startswith("mirror:") else "store_stalled"
        value: float | None = None
        if v.status in ("stopped", "stalled"):
            value = 1
        elif v.status in ("ok", "idle") and s.lag_seconds <= self.cfg.lag_seconds_reset:
            value = 0  # cleared only once caught up again, not at the first sign of progress
        self._feed(alarm, path, value, v.evidence, now)

    def _feed(self, alarm: str, path: str, value: float | None, evidence: str, now: float) -> None:
        event = self.book.update(alarm, path, value, evidence, now)
        if event is None:
            return
        key = self.book.states[self.book.key(alarm, path)]
        if event.kind == "raise":
            log.warning("alarm raised: %s on %s (%s, incident %s): %s", alarm, path, event.severity,
                        event.incident, evidence)
            self.book.mark_notified(alarm, path, self.notifier.deliver(event))
        else:
            log.info("alarm cleared: %s on %s (incident %s): %s", alarm, path, event.incident, evidence)
            self.notifier.deliver(event, raise_was_delivered=key.notified)
        self.events.append(event)
        del self.events[:-100]

    def latest(self) -> dict[str, Any]:
        with self.lock:
            return self.report

    def run(self, stopping: Stopping) -> None:
        """Evaluate every ``interval_s`` until ``stopping`` is set; a failed round is logged."""
        while not stopping.is_set():
            try:
                self.evaluate()
            except Exception as exc:  # the monitor must never take the service down
                log.error("lag evaluation failed: %s", exc)
            stopping.wait(self.cfg.interval_s)
        self.notifier.close()


def _path_doc(path: str, s: Sample, v: Verdict) -> dict[str, Any]:
    kind, _, source = path.partition(":")
    return {"path": kind, "source": source, "end_offset": s.end, "position": s.position,
            "lag_records": s.lag_records, "lag_bytes": s.lag_bytes, "lag_seconds": round(s.lag_seconds, 3),
            "oldest_unconsumed_ms": s.oldest_ms, "consumer_alive": s.consumer_alive, **v.as_dict()}
