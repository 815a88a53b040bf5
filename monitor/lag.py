"""Measure how far behind each path is, from the logs themselves.

A path is a log and a consumer of it: ``store:<name>`` (a log applied to this appliance's
store, its own or its peer's) and ``mirror:<peer>`` (the peer's own log copied here). For each:

* records: the source's end offset minus the consumer's position (on Kafka, offsets count
  transaction markers, like Kafka's own consumer-group lag; a tail of markers only is 0);
* bytes: the size of what is not consumed yet (the file log's index; on Kafka, estimated from
  the sizes of the waiting records);
* seconds: the age of the oldest record not consumed yet, from the append time the log keeps
  (0 when caught up: a quiet path is idle, not late; never negative, never NaN).

Liveness does not come from how often positions move: the appliance service writes a
HeartbeatSent event into its own log when nothing else was written for ``heartbeat_s``, so a path
that works always sees fresh records, and a path whose consumer is gone falls behind in
seconds even when there is no traffic.

Error contract: a path that cannot be measured (peer or broker down) gives a ``Sample`` with
``error`` set, never an exception.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dssync.errors import DssyncError, OffsetOutOfRangeError
from dssync.log.base import LogReader, SegmentedLog
from dssync.monitor.evaluate import Sample

MIRROR_STALE_S = 10.0
"""A mirror whose state file is older than this is not running."""


def measure_log(log: LogReader, position: int, now: float, alive: bool | None) -> Sample:
    """Sample a path whose source log is readable here (file log, Kafka topic, mirror topic)."""
    try:
        end = log.end_offset()
        lag = max(0, end - position)
        oldest = None
        nbytes = 0
        if lag:
            try:
                recs = log.read(max(position, log.start_offset()), 500)
            except OffsetOutOfRangeError:
                recs = []
            if not recs:
                lag = 0  # only transaction markers are left: nothing to consume
            else:
                oldest = recs[0].timestamp_ms
                if isinstance(log, SegmentedLog):
                    nbytes = int(log.bytes_from(position))
                else:
                    nbytes = int(lag * sum(len(r.value) for r in recs) / len(recs))
        return Sample(now, end, position, lag, nbytes, oldest, alive)
    except DssyncError as exc:
        return Sample(now, 0, position, 0, 0, None, alive, error=exc.message)


def measure_remote(client: Any, position: int, now: float, alive: bool | None) -> Sample:
    """Sample the mirror path of an HTTP pair: the source log is the peer's, asked over the
    sync interface (``/v1/position``)."""
    try:
        status, _, body = client.get(f"/v1/position?at={position}")
        if status != 200:
            return Sample(now, 0, position, 0, 0, None, alive, error=f"peer answered HTTP {status}")
        doc = json.loads(body)
    except DssyncError as exc:
        return Sample(now, 0, position, 0, 0, None, alive, error=exc.message)
    end = int(doc["end"])
    lag = max(0, end - position)
    return Sample(now, end, position, lag, int(doc.get("bytes_from") or 0) if lag else 0,
                  doc.get("ts_at") if lag else None, alive)


def mirror_alive(state: dict[str, Any], now: float | None = None) -> bool:
    """Whether the mirror process runs: it rewrites its state at least every few seconds."""
    now = time.time() if now is None else now
    updated = state.get("updated_ms")
    return updated is not None and now - updated / 1000 < MIRROR_STALE_S and state.get("state") != "stopped"
