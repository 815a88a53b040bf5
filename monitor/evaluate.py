"""A Burrow-like status per path, from a window of lag samples, with the evidence behind it.

Statuses, from best to worst:

* ``idle``: nothing to consume and nothing new arrived in the window (a quiet link is idle,
  never "lagging");
* ``ok``: caught up, or behind but making progress (a snapshot loading counts: the position
  moves only once it is loaded);
* ``growing``: behind at every sample of a full window, and the lag never decreased;
* ``stalled``: behind, the consumer runs, yet its position did not move over a full window;
* ``stopped``: behind and the consumer does not run (its process is gone or silent);
* ``rewound``: the position went backwards (a store rebuilt, a mirror re-based);
* ``unknown``: the path could not be measured (a peer or broker down); says why.

Pure functions of the samples: time comes from the samples, so tests replay recorded
scenarios with an injected clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("idle", "ok", "growing", "unknown", "stalled", "stopped", "rewound")
SEVERITY = {"idle": 0, "ok": 0, "growing": 1, "unknown": 1, "stalled": 2, "stopped": 2, "rewound": 2}
"""0 fine, 1 warning, 2 critical: also the exit code of 'dssync lag' (monitoring-plugin style)."""


@dataclass(frozen=True)
class Sample:
    """One measurement of one path at time ``t`` (seconds)."""

    t: float
    end: int  # the source's end offset
    position: int  # how far the consumer got (next offset it needs)
    lag_records: int
    lag_bytes: int
    oldest_ms: int | None  # append time of the first record not consumed yet (None when caught up)
    consumer_alive: bool | None = None  # None: not known
    error: str = ""  # set when the path could not be measured
    snapshot_events: int | None = None  # a snapshot being loaded instead: its events done so far

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest record not consumed yet; 0 when caught up; never negative."""
        if self.lag_records <= 0 or self.oldest_ms is None:
            return 0.0
        return max(0.0, self.t - self.oldest_ms / 1000)


@dataclass
class Verdict:
    status: str
    evidence: str
    rate: float | None  # records/s consumed over the window
    arrival_rate: float | None  # records/s appended at the source over the window
    eta_seconds: float | None  # time to catch up at the current rates; None if not catching up

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "evidence": self.evidence, "rate_records_per_s": _r(self.rate),
                "arrival_records_per_s": _r(self.arrival_rate), "eta_seconds": _r(self.eta_seconds)}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass
class PathWindow:
    """The recent samples of one path; ``window_s`` long, judged full at ``min_samples``."""

    window_s: float = 60.0
    min_samples: int = 3
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, s: Sample) -> Verdict:
        prev = self.samples[-1] if self.samples else None
        if s.error:
            return Verdict("unknown", s.error, None, None, None)
        if prev is not None and s.position < prev.position:
            self.samples.clear()  # a new history starts at the rewind
            self.samples.append(s)
            return Verdict("rewound", f"position went back from {prev.position} to {s.position}", None, None, None)
        self.samples.append(s)
        while len(self.samples) > 1 and s.t - self.samples[0].t > self.window_s:
            self.samples.popleft()
        return self.judge()

    def judge(self) -> Verdict:
        w = list(self.samples)
        last, first = w[-1], w[0]
        span = last.t - first.t
        rate = (last.position - first.position) / span if span > 0 else None
        arrival = (last.end - first.end) / span if span > 0 else None
        full = len(w) >= self.min_samples and span >= self.window_s / 2
        lag = last.lag_records
        eta: float | None
        if lag == 0:
            eta = 0.0
        elif rate is not None and arrival is not None and rate > arrival:
            eta = lag / (rate - arrival)
        else:
            eta = None
        v = Verdict("ok", "", rate, arrival, eta)
        if lag == 0:
            if arrival in (None, 0.0) or last.end == first.end:
                v.status, v.evidence = "idle", f"caught up at offset {last.position}; nothing new in {span:.0f} s"
            else:
                v.evidence = f"caught up at offset {last.position}"
            return v
        if last.consumer_alive is False:
            v.status = "stopped"
            v.evidence = f"consumer not running; {lag} records ({last.lag_bytes} bytes) waiting, oldest " \
                         f"{last.lag_seconds:.1f} s old"
            return v
        began = next((x for x in w if x.snapshot_events is not None), None)  # the window's first count
        if began is not None and began.snapshot_events is not None and last.snapshot_events is not None \
                and last.snapshot_events > began.snapshot_events and last.t > began.t:
            # catching up by a snapshot: the position moves only once it is loaded
            rate_loaded = (last.snapshot_events - began.snapshot_events) / (last.t - began.t)
            v.evidence = f"{lag} records behind, loading a snapshot of them: {last.snapshot_events} events " \
                         f"so far ({rate_loaded:.0f}/s)"
            return v
        if full and last.position == first.position:
            v.status = "stalled"
            v.evidence = f"position stuck at {last.position} for {span:.0f} s with {lag} records waiting"
            return v
        lags = [x.lag_records for x in w]
        if full and all(x > 0 for x in lags) and all(b >= a for a, b in itertools.pairwise(lags)) \
                and lags[-1] > lags[0]:
            v.status = "growing"
            v.evidence = f"lag grew from {lags[0]} to {lags[-1]} records over {span:.0f} s and never fell"
            return v
        v.evidence = f"{lag} records behind, consuming {rate or 0:.0f}/s against {arrival or 0:.0f}/s arriving"
        return v
