"""Kafka-to-Kafka mirroring measured against MirrorMaker 2, for ``dssync bench kafka``.

Each mirror runs as its own process (``dssync mirror-topic``; MirrorMaker 2 in dedicated mode
from compose/kafka.py) on the same source topic and the same two brokers, one after the
other. A consumer at the destination notes when each record arrives:

* throughput: records of the bulk copy divided by the time from the first arrival to the last
  (the JVM's and the mirrors' start-up are left out, for both);
* latency: for records appended at a steady rate once the bulk is copied, arrival time minus
  the source's append time (broker time; same machine, same clock).
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


def measure(what: str, start: Callable[[], Callable[[], None]], bootstrap_b: str, dest_topic: str,
            src_ts: Callable[[Any], int], source: KafkaLog, steady_s: float, rate: int) -> dict[str, Any]:
    """Run one mirror (``start`` returns its stopper) over the whole source topic, then under
    a steady load of ``rate`` records/s appended for ``steady_s`` seconds."""
    bulk = _count(source)
    arrivals = Arrivals(bootstrap_b, dest_topic, src_ts)
    arrivals.start()
    stop_mirror = start()
    try:
        arrivals.wait_for(bulk, 900, what)
        first, last = arrivals.times[0][0], arrivals.times[bulk - 1][0]
        appends = max(1, int(steady_s * 50))
        per = max(1, rate // 50)
        t0 = time.monotonic()
        for i in range(appends):
            source.append([f"latency probe {i}.{j} ".encode() * 40 for j in range(per)])
            time.sleep(max(0.0, t0 + (i + 1) / 50 - time.monotonic()))
        arrivals.wait_for(bulk + appends * per, 120, what)
    finally:
        stop_mirror()
        arrivals.stop.set()
        arrivals.join(timeout=10)
    lat = [a - ts for a, ts in arrivals.times[bulk:bulk + appends * per]]
    return {"records": bulk, "seconds": round((last - first) / 1000, 3),
            "events_per_s": round((bulk - 1) / max(1e-3, (last - first) / 1000)),
            "latency_ms": {"samples": len(lat), "p50": round(_percentile(lat, 0.5), 1),
                           "p99": round(_percentile(lat, 0.99), 1)}}


def _count(log: KafkaLog) -> int:
    n, at = 0, log.start_offset()
    while True:
        recs = log.read(at, 50_000)
        if not recs:
            return n
        n += len(recs)
        at = recs[-1].offset + 1


def mirror_report(bootstrap: str, bootstrap_b: str, topic: str, compose_kafka: str,
                  steady_s: float = 8.0, rate: int = 500) -> dict[str, Any]:
    """Our mirror, then MirrorMaker 2, on ``topic`` from ``bootstrap`` to ``bootstrap_b``."""
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

        ours = measure("dssync mirror", start_ours, bootstrap_b, ours_topic, _src_ts_dssync, source, steady_s, rate)
        mm2 = measure("MirrorMaker 2", start_mm2, bootstrap_b, f"A.{topic}", _src_ts_mm2, source, steady_s, rate)
    finally:
        source.close()
    return {"unit": "events_per_s", "system": ours["events_per_s"], "baseline": mm2["events_per_s"],
            "ratio": round(ours["events_per_s"] / max(1, mm2["events_per_s"]), 3),
            "latency_p99_ms": {"system": ours["latency_ms"]["p99"], "baseline": mm2["latency_ms"]["p99"]},
            "dssync": ours, "mirrormaker2": mm2}
