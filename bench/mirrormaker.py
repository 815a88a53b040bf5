"""Kafka-to-Kafka mirroring measured against MirrorMaker 2, for ``dssync bench kafka``.

Each mirror runs as its own process (``dssync mirror-topic``; MirrorMaker 2 in dedicated mode
from compose/kafka.py in three modes: its default, at least once, which reads the source
uncommitted; the same reading only committed records, as a mirror of a transactional log must
and as dssync does; and its exactly-once mode, which also writes in transactions) on the same
source topic and the same two brokers. A consumer at the destination notes when each record
arrives:

* throughput: each mirror alone, one after the other: records of the bulk copy divided by the
  time from the first arrival to the last (the JVM's and the mirrors' start-up are left out,
  for both);
* latency: arrival time minus the source's append time (broker time; same machine, same
  clock) of records appended at a steady rate. Each mirror copies a topic of its own, all
  run all along, and the appends go to one topic at a time in rounds of one second per
  mirror (the others idle meanwhile), whose order rotates: a busy stretch of this shared
  machine (they last seconds) then weighs on all alike, where one run of either can be off
  by a factor of two. Pooled percentiles, and the p99 of each round;
* aborted records: before the rounds, a transaction of ``ABORTED`` records is written to each
  latency topic and aborted; how many of them each mirror copied (records no reader of the
  source ever sees: a mirror reading the source uncommitted copies them).

Each destination is read as its own readers read it: MirrorMaker 2's ``read_committed`` (the
only safe way for its exactly-once mode; the same as uncommitted for its default mode, which
writes no transactions), dssync's as ``dssync.log.mirrored`` does (uncommitted, the first copy
of each source offset). The source topics are written by a process of their own, as an
appliance writes its log: the probes' threads must not slow the writer's commits, which a
mirror reading committed records waits for.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from dssync.errors import BackendUnavailableError, DssyncError
from dssync.log.kafka import KafkaLog, KafkaSettings, create_topic
from dssync.log.mirrored import H_SRC_OFFSET, H_SRC_TS
from dssync.process import command


def _src_ts_dssync(record: Any) -> int:
    return int.from_bytes(dict(record.headers)[H_SRC_TS], "big")


def _src_ts_mm2(record: Any) -> int:
    return int(record.timestamp)  # MirrorMaker 2 keeps the source record's timestamp


def _src_offset_dssync(record: Any) -> int:
    return int.from_bytes(dict(record.headers)[H_SRC_OFFSET], "big")


class Arrivals(threading.Thread):
    """Consumes a destination topic and notes (arrival ms, source append ms) per data record.

    With ``src_offset`` (a dssync mirror topic), records are read uncommitted and only the first
    copy of each source offset counts, as ``dssync.log.mirrored`` reads them; otherwise
    ``read_committed``.
    """

    def __init__(self, bootstrap: str, topic: str, src_ts: Callable[[Any], int],
                 src_offset: Callable[[Any], int] | None = None) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.src_ts, self.src_offset = bootstrap, topic, src_ts, src_offset
        self.times: list[tuple[float, int]] = []
        self.aborted = 0  # copies of records the source aborted (``ABORTED_VALUE``)
        self.stop = threading.Event()

    def run(self) -> None:
        isolation = "read_committed" if self.src_offset is None else "read_uncommitted"
        c = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level=isolation, group_id=None,
                          enable_auto_commit=False, auto_offset_reset="earliest",
                          max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
                          fetch_max_wait_ms=10)  # the consumer's own waits are not the mirror's latency
        want = 0  # the next source offset not seen yet (dssync's dedup)
        try:
            while self.topic not in c.topics() and not self.stop.is_set():
                time.sleep(0.2)
            c.assign([TopicPartition(self.topic, 0)])
            while not self.stop.is_set():
                got = c.poll(timeout_ms=50)
                now = time.time() * 1000
                for recs in got.values():
                    for r in recs:
                        if self.src_offset is not None:
                            off = self.src_offset(r)
                            if off < want:
                                continue
                            want = off + 1
                        if r.value and r.value.startswith(ABORTED_VALUE):
                            self.aborted += 1
                        elif r.value:
                            self.times.append((now, self.src_ts(r)))
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


def _latency(lat: list[float]) -> dict[str, Any]:
    return {"samples": len(lat), "p50": round(_percentile(lat, 0.5), 1), "p90": round(_percentile(lat, 0.9), 1),
            "p99": round(_percentile(lat, 0.99), 1)}


def _bulk(what: str, stop: Callable[[], None], arrivals: Arrivals, bulk: int) -> dict[str, Any]:
    """Wait for one mirror (``stop`` stops it) to copy the whole source topic; stop it; its
    throughput from the first arrival to the last."""
    arrivals.start()
    try:
        arrivals.wait_for(bulk, 900, what)
    finally:
        stop()
        arrivals.stop.set()
        arrivals.join(timeout=10)
    first, last = arrivals.times[0][0], arrivals.times[bulk - 1][0]
    return {"records": bulk, "seconds": round((last - first) / 1000, 3),
            "events_per_s": round((bulk - 1) / max(1e-3, (last - first) / 1000))}


@dataclass
class _Lane:
    """One mirror in the latency rounds: the topic it copies, where its copies arrive."""

    what: str
    topic: str
    arrivals: Arrivals
    rounds: list[list[float]] = field(default_factory=list)


APPENDS_PER_S = 50
ABORTED = 100
ABORTED_VALUE = b"aborted probe "


class _Appender:
    """The source topics' writer, in a process of its own (module docstring): ``append``
    returns once it appended ``appends`` times ``per`` records at ``APPENDS_PER_S``."""

    def __init__(self, bootstrap: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "dssync.bench.mirrormaker", bootstrap],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def append(self, topic: str, appends: int, per: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{topic} {appends} {per}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise BackendUnavailableError(f"the benchmark's writer failed: {answer or 'it exited'}")

    def abort(self, topic: str, count: int) -> None:
        """Write ``count`` records to ``topic`` in a transaction, and abort it."""
        self.append(f"abort:{topic}", 1, count)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve_appends(bootstrap: str) -> None:
    """The ``_Appender`` process: one request per line of stdin, ``ok`` (or ``error ...``) per
    line of stdout."""
    logs: dict[str, KafkaLog] = {}
    try:
        for line in sys.stdin:
            topic, appends, per = line.split()
            if topic.startswith("abort:"):
                try:
                    _abort(bootstrap, topic.removeprefix("abort:"), int(per))
                except KafkaError as exc:
                    print(f"error the aborted transaction failed: {exc}", flush=True)
                    return
                print("ok", flush=True)
                continue
            try:
                log = logs.get(topic) or logs.setdefault(topic, KafkaLog(KafkaSettings(bootstrap), topic, writer=True))
                t0 = time.monotonic()
                for i in range(int(appends)):
                    log.append([f"latency probe {i}.{j} ".encode() * 40 for j in range(int(per))])
                    time.sleep(max(0.0, t0 + (i + 1) / APPENDS_PER_S - time.monotonic()))
            except DssyncError as exc:
                print(f"error {exc.message}", flush=True)
                return
            print("ok", flush=True)
    finally:
        for log in logs.values():
            log.close()


def _abort(bootstrap: str, topic: str, count: int) -> None:
    """A transaction of ``count`` records on ``topic``, aborted (a writer that failed mid-append)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"bench-abort-{topic}", acks="all")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(count):
            producer.send(topic, ABORTED_VALUE + str(i).encode(), partition=0)
        producer.flush()
        producer.abort_transaction()
    finally:
        producer.close(timeout=5)


def _rounds(lanes: list[_Lane], appender: _Appender, rounds: int, round_s: float, rate: int) -> None:
    """Take turns among the lanes, ``rounds`` times each: in a lane's turn, records are appended
    to its topic alone at ``rate`` records/s for ``round_s`` seconds, and the turn ends once all
    of them arrived, so the other mirrors idle meanwhile. Round ``r`` starts with lane ``r``
    (no lane always goes first), after one turn each that is not counted (warm-up)."""
    appends, per = max(1, int(round_s * APPENDS_PER_S)), max(1, rate // APPENDS_PER_S)
    for r in range(-1, rounds):
        order = lanes[r % len(lanes):] + lanes[:r % len(lanes)] if r >= 0 else lanes
        for lane in order:
            n0 = len(lane.arrivals.times)
            appender.append(lane.topic, appends, per)
            lane.arrivals.wait_for(n0 + appends * per, 120, lane.what)
            if r >= 0:
                lane.rounds.append([a - ts for a, ts in lane.arrivals.times[n0:n0 + appends * per]])


def _lane_figures(lane: _Lane) -> dict[str, Any]:
    pooled = [x for r in lane.rounds for x in r]
    p99s = [round(_percentile(r, 0.99), 1) for r in lane.rounds]
    return {**_latency(pooled), "rounds_p99": p99s, "p99_median_of_rounds": round(statistics.median(p99s), 1),
            "p99_lowest_round": min(p99s), "p99_highest_round": max(p99s)}


def _count(log: KafkaLog) -> int:
    n, at = 0, log.start_offset()
    while True:
        recs = log.read(at, 50_000)
        if not recs:
            return n
        n += len(recs)
        at = recs[-1].offset + 1


def mirror_report(bootstrap: str, bootstrap_b: str, topic: str, compose_kafka: str,
                  steady_s: float = 20.0, rate: int = 500, rounds: int | None = None) -> dict[str, Any]:
    """Our mirror and MirrorMaker 2 on ``topic`` from ``bootstrap`` to ``bootstrap_b`` (module
    docstring); latency over ``steady_s`` seconds of appends per mirror, in ``rounds`` rounds
    (default: one per second, at least 4)."""
    rounds = rounds or max(4, round(steady_s))
    settings = KafkaSettings(bootstrap)

    def start_ours(src: str) -> Callable[[], None]:
        proc = subprocess.Popen([*command(), "mirror-topic", "--from-kafka",
                                 bootstrap, "--from-topic", src, "--to-kafka", bootstrap_b,
                                 "--to-topic", f"dssync.mirror.{src}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def stop() -> None:
            proc.terminate()
            proc.wait(timeout=60)
        return stop

    def mm2(mode: str) -> Callable[[str], Callable[[], None]]:
        def start(src: str) -> Callable[[], None]:
            name = f"mm2-{mode}-{src}"
            subprocess.run([sys.executable, compose_kafka, "mirrormaker", name, "--source", bootstrap,
                            "--target", bootstrap_b, "--topic", src, "--mode", mode],
                           check=True, capture_output=True)

            def stop() -> None:
                subprocess.run([sys.executable, compose_kafka, "stop", name, "--remove"], check=False,
                               capture_output=True)
            return stop
        return start

    mirrors = (  # (what, starter, destination topic of a source topic, source time of a copy,
        #            source offset of a copy when the mirror's readers dedup by it)
        ("dssync mirror", start_ours, "dssync.mirror.{}", _src_ts_dssync, _src_offset_dssync),
        ("MirrorMaker 2", mm2("default"), "A.{}", _src_ts_mm2, None),
        ("MirrorMaker 2 read_committed", mm2("read-committed"), "C.{}", _src_ts_mm2, None),
        ("MirrorMaker 2 exactly-once", mm2("exactly-once"), "S.{}", _src_ts_mm2, None),
    )

    with KafkaLog(settings, topic) as source:
        bulk = _count(source)
    figures = [_bulk(what, start(topic), Arrivals(bootstrap_b, dest.format(topic), src_ts, src_offset), bulk)
               for what, start, dest, src_ts, src_offset in mirrors]

    lanes: list[_Lane] = []
    stoppers: list[Callable[[], None]] = []
    appender = _Appender(bootstrap)
    try:
        for k, (what, start, dest, src_ts, src_offset) in enumerate(mirrors):
            name = f"{topic}-lat{k}"
            create_topic(settings, name)
            lane = _Lane(what, name, Arrivals(bootstrap_b, dest.format(name), src_ts, src_offset))
            lanes.append(lane)
            lane.arrivals.start()
            stoppers.append(start(name))
        for lane in lanes:  # every mirror is copying before the clock starts
            appender.abort(lane.topic, ABORTED)
            appender.append(lane.topic, 1, 1)
            lane.arrivals.wait_for(1, 120, lane.what)
        _rounds(lanes, appender, rounds, steady_s / rounds, rate)
    finally:
        appender.close()
        for stop in stoppers:
            stop()
        for lane in lanes:
            lane.arrivals.stop.set()
            lane.arrivals.join(timeout=10)
    for fig, lane in zip(figures, lanes, strict=True):
        fig["latency_ms"] = _lane_figures(lane)
        fig["aborted_records_copied"] = lane.arrivals.aborted
    ours, mm2_default, mm2_rc, mm2_eos = figures
    return {"unit": "events_per_s", "system": ours["events_per_s"], "baseline": mm2_default["events_per_s"],
            "ratio": round(ours["events_per_s"] / max(1, mm2_default["events_per_s"]), 3),
            "ratio_vs_read_committed": round(ours["events_per_s"] / max(1, mm2_rc["events_per_s"]), 3),
            "ratio_vs_exactly_once": round(ours["events_per_s"] / max(1, mm2_eos["events_per_s"]), 3),
            "latency_p99_ms": {"system": ours["latency_ms"]["p99"], "baseline": mm2_default["latency_ms"]["p99"],
                               "baseline_read_committed": mm2_rc["latency_ms"]["p99"],
                               "baseline_exactly_once": mm2_eos["latency_ms"]["p99"]},
            "aborted_records": ABORTED,
            "dssync": ours, "mirrormaker2": mm2_default, "mirrormaker2_read_committed": mm2_rc,
            "mirrormaker2_exactly_once": mm2_eos}


if __name__ == "__main__":  # the _Appender's process
    _serve_appends(sys.argv[1])
