"""Kafka-to-Kafka mirroring measured against MirrorMaker 2, for ``dssync bench kafka``.

Each mirror runs as its own process (``dssync mirror-topic``; MirrorMaker 2 in dedicated mode
from compose/kafka.py) on the same source topic and the same two brokers, one after the
other. A consumer at the destination notes when each record arrives:

* throughput: each mirror alone, one after the other: records of the bulk copy divided by the
  time from the first arrival to the last (the JVM's and the mirrors' start-up are left out,
  for both);
* latency: both mirrors running side by side once both have copied the bulk, on the same
  records appended at a steady rate: arrival time minus the source's append time (broker
  time; same machine, same clock). Side by side, a busy moment of this shared machine weighs
  on both alike.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from dssync.errors import BackendUnavailableError
from dssync.log.kafka import KafkaLog, KafkaSettings
from dssync.log.mirrored import H_SRC_TS


def _src_ts_dssync(record: Any) -> int:
    return int.from_bytes(dict(record.headers)[H_SRC_TS], "big")


def _src_ts_mm2(record: Any) -> int:
    return int(record.timestamp)  # MirrorMaker 2 keeps the source record's timestamp


class Arrivals(threading.Thread):
    """Consumes a destination topic and notes (arrival ms, source append ms) per data record."""

    def __init__(self, bootstrap: str, topic: str, src_ts: Callable[[Any], int]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.src_ts = bootstrap, topic, src_ts
        self.times: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        c = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed", group_id=None,
                          enable_auto_commit=False, auto_offset_reset="earliest",
                          max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
                          fetch_max_wait_ms=10)  # the consumer's own waits are not the mirror's latency
        try:
            while self.topic not in c.topics() and not self.stop.is_set():
                time.sleep(0.2)
            c.assign([TopicPartition(self.topic, 0)])
            while not self.stop.is_set():
                got = c.poll(timeout_ms=50)
                now = time.time() * 1000
                for recs in got.values():
                    self.times.extend((now, self.src_ts(r)) for r in recs if r.value)
        finally:
            c.close()

    def wait_for(self, count: int, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.times) < count:
            if time.monotonic() > deadline:
                raise BackendUnavailableError(f"{what}: {len(self.times)} of {count} records arrived "
                                              f"in {timeout_s:.0f} s")
            time.sleep(0.05)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def _latency(arrivals: Arrivals, first: int, count: int) -> dict[str, Any]:
    lat = [a - ts for a, ts in arrivals.times[first:first + count]]
    return {"samples": len(lat), "p50": round(_percentile(lat, 0.5), 1), "p90": round(_percentile(lat, 0.9), 1),
            "p99": round(_percentile(lat, 0.99), 1)}


def _bulk(what: str, start: Callable[[], Callable[[], None]], arrivals: Arrivals, bulk: int,
          keep_running: bool) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """Run one mirror over the whole source topic; its throughput (first to last arrival)."""
    stop = start()
    try:
        arrivals.wait_for(bulk, 900, what)
    except BaseException:
        stop()
        raise
    first, last = arrivals.times[0][0], arrivals.times[bulk - 1][0]
    figures = {"records": bulk, "seconds": round((last - first) / 1000, 3),
               "events_per_s": round((bulk - 1) / max(1e-3, (last - first) / 1000))}
    if keep_running:
        return figures, stop
    stop()
    return figures, None


def measure_pair(ours: Callable[[], Callable[[], None]], mm2: Callable[[], Callable[[], None]],
                 ours_arrivals: Arrivals, mm2_arrivals: Arrivals, source: KafkaLog, steady_s: float,
                 rate: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Throughput: each mirror alone over the whole source topic, one after the other.
    Latency: both mirrors running side by side on the same records appended at ``rate``
    records/s for ``steady_s`` seconds, so that whatever else the machine does at that moment
    weighs on both alike (one run of either alone can be off by a factor of two here)."""
    bulk = _count(source)
    stoppers: list[Callable[[], None]] = []
    for a in (ours_arrivals, mm2_arrivals):
        a.start()
    try:
        ours_fig, _ = _bulk("dssync mirror", ours, ours_arrivals, bulk, keep_running=False)
        mm2_fig, stop_mm2 = _bulk("MirrorMaker 2", mm2, mm2_arrivals, bulk, keep_running=True)
        assert stop_mm2 is not None
        stoppers.append(stop_mm2)
        stoppers.append(ours())  # resumes where its bulk copy ended (the destination says where)
        source.append([b"warm-up " * 40])  # both mirrors are copying before the clock starts
        ours_arrivals.wait_for(bulk + 1, 120, "dssync mirror")
        mm2_arrivals.wait_for(bulk + 1, 120, "MirrorMaker 2")
        appends = max(1, int(steady_s * 50))
        per = max(1, rate // 50)
        t0 = time.monotonic()
        for i in range(appends):
            source.append([f"latency probe {i}.{j} ".encode() * 40 for j in range(per)])
            time.sleep(max(0.0, t0 + (i + 1) / 50 - time.monotonic()))
        ours_arrivals.wait_for(bulk + 1 + appends * per, 120, "dssync mirror")
        mm2_arrivals.wait_for(bulk + 1 + appends * per, 120, "MirrorMaker 2")
    finally:
        for stop in stoppers:
            stop()
        for a in (ours_arrivals, mm2_arrivals):
            a.stop.set()
            a.join(timeout=10)
    ours_fig["latency_ms"] = _latency(ours_arrivals, bulk + 1, appends * per)
    mm2_fig["latency_ms"] = _latency(mm2_arrivals, bulk + 1, appends * per)
    return ours_fig, mm2_fig


def _count(log: KafkaLog) -> int:
    n, at = 0, log.start_offset()
    while True:
        recs = log.read(at, 50_000)
        if not recs:
            return n
        n += len(recs)
        at = recs[-1].offset + 1


def mirror_report(bootstrap: str, bootstrap_b: str, topic: str, compose_kafka: str,
                  steady_s: float = 20.0, rate: int = 500) -> dict[str, Any]:
    """Our mirror and MirrorMaker 2 on ``topic`` from ``bootstrap`` to ``bootstrap_b`` (module docstring)."""
    source = KafkaLog(KafkaSettings(bootstrap), topic, writer=True)
    try:
        ours_topic = f"dssync.mirror.{topic}"

        def start_ours() -> Callable[[], None]:
            proc = subprocess.Popen([sys.executable, "-m", "dssync.tools.cli", "mirror-topic", "--from-kafka",
                                     bootstrap, "--from-topic", topic, "--to-kafka", bootstrap_b,
                                     "--to-topic", ours_topic], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)

            def stop() -> None:
                proc.terminate()
                proc.wait(timeout=60)
            return stop

        def start_mm2() -> Callable[[], None]:
            name = f"mm2-{topic}"
            subprocess.run([sys.executable, compose_kafka, "mirrormaker", name, "--source", bootstrap,
                            "--target", bootstrap_b, "--topic", topic], check=True, capture_output=True)

            def stop() -> None:
                subprocess.run([sys.executable, compose_kafka, "stop", name, "--remove"], check=False,
                               capture_output=True)
            return stop

        ours, mm2 = measure_pair(start_ours, start_mm2, Arrivals(bootstrap_b, ours_topic, _src_ts_dssync),
                                 Arrivals(bootstrap_b, f"A.{topic}", _src_ts_mm2), source, steady_s, rate)
    finally:
        source.close()
    return {"unit": "events_per_s", "system": ours["events_per_s"], "baseline": mm2["events_per_s"],
            "ratio": round(ours["events_per_s"] / max(1, mm2["events_per_s"]), 3),
            "latency_p99_ms": {"system": ours["latency_ms"]["p99"], "baseline": mm2["latency_ms"]["p99"]},
            "dssync": ours, "mirrormaker2": mm2}
