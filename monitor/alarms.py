"""Appliance-style alarms: rising and reset thresholds, minimum durations, incidents.

An alarm watches one value per path (a lag, or 1/0 for a condition such as "mirror stopped").
It raises when the value has stayed at or above its *rising* threshold for ``raise_after_s``,
and clears when it has stayed at or below its *reset* threshold for ``clear_after_s``; in
between nothing changes (hysteresis: no flapping around one threshold). A raise and its clear
share an incident id. A value of None (the path could not be measured) changes nothing.

The book of alarm states is saved to a JSON file at each change, so an alarm raised before a
restart is still raised after it (and clears with the same incident id).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from dssync.layout import write_json


@dataclass(frozen=True)
class AlarmSpec:
    name: str
    severity: str  # "critical", "major" or "minor"
    rising: float
    reset: float
    raise_after_s: float
    clear_after_s: float
    unit: str = ""


@dataclass
class AlarmState:
    raised: bool = False
    incident: str = ""
    since: float | None = None  # when the value first crossed toward the other state
    raised_at: float | None = None
    value: float | None = None
    evidence: str = ""
    notified: bool = False  # whether the raise was notified (its clear is, then, too)


@dataclass
class AlarmEvent:
    """A raise or a clear, as notified and logged."""

    kind: str  # "raise" or "clear"
    alarm: str
    path: str
    severity: str
    incident: str
    value: float | None
    threshold: float
    evidence: str
    at: float
    appliance: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at_ms"] = int(self.at * 1000)
        return d


class AlarmBook:
    """Every alarm's state per path, persisted in ``path`` (None: in memory only)."""

    def __init__(self, specs: list[AlarmSpec], path: str | None = None, appliance: str = "") -> None:
        self.specs = {s.name: s for s in specs}
        self.path = path
        self.appliance = appliance
        self.states: dict[str, AlarmState] = {}
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self.states = {k: AlarmState(**v) for k, v in json.load(f).items()}
            except (OSError, ValueError, TypeError):
                self.states = {}  # a damaged book starts afresh rather than stopping the service

    @staticmethod
    def key(alarm: str, path: str) -> str:
        return f"{alarm}|{path}"

    def update(self, alarm: str, path: str, value: float | None, evidence: str, now: float | None = None) -> \
            AlarmEvent | None:
        """Feed one observation; return the raise or clear it causes, if any."""
        now = time.time() if now is None else now
        spec = self.specs[alarm]
        k = self.key(alarm, path)
        st = self.states.setdefault(k, AlarmState())
        if value is None:
            return None
        st.value = value
        event = None
        if not st.raised:
            if value >= spec.rising:
                st.since = now if st.since is None else st.since
                if now - st.since >= spec.raise_after_s:
                    st.raised, st.raised_at, st.since = True, now, None
                    st.incident, st.evidence = uuid.uuid4().hex[:12], evidence
                    event = AlarmEvent("raise", alarm, path, spec.severity, st.incident, value, spec.rising,
                                       evidence, now, self.appliance)
            else:
                st.since = None
        else:
            if value <= spec.reset:
                st.since = now if st.since is None else st.since
                if now - st.since >= spec.clear_after_s:
                    event = AlarmEvent("clear", alarm, path, spec.severity, st.incident, value, spec.reset,
                                       evidence, now, self.appliance)
                    st.raised, st.since = False, None
            else:
                st.since = None
                st.evidence = evidence
        if event is not None:
            self.save()
        return event

    def active(self) -> list[dict[str, Any]]:
        out = []
        for k, st in sorted(self.states.items()):
            if st.raised:
                alarm, _, path = k.partition("|")
                spec = self.specs.get(alarm)
                out.append({"alarm": alarm, "path": path, "severity": spec.severity if spec else "",
                            "incident": st.incident, "raised_at_ms": int((st.raised_at or 0) * 1000),
                            "value": st.value, "evidence": st.evidence})
        return out

    def mark_notified(self, alarm: str, path: str, notified: bool) -> None:
        self.states[self.key(alarm, path)].notified = notified
        self.save()

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_json(self.path, {k: asdict(v) for k, v in self.states.items()})
