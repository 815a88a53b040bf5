"""``dssync bench kafka``: the Kafka log against the embedded log, on the same data, in one run.

* append: the same events appended in the same batches to a Kafka topic (transactional,
  lz4, acks=all) and to the embedded file log (fsync always);
* replay: the same events replayed from each log into an empty DuckDB store.

* mirror: the same topic copied from one cluster to another by ``dssync mirror-topic`` and by
  MirrorMaker 2 (from the same Kafka release's jars; default, read_committed and exactly-once
  modes), on the same two brokers: throughput of the bulk copy (first to last arrival at the
  destination), end-to-end latency (source append time to arrival at a destination consumer)
  of records appended at a steady rate, and how many records of an aborted source transaction
  each copied (``dssync.bench.mirrormaker``).

The brokers are started from compose/kafka.py (a checkout is needed) unless ``--bootstrap``
(and ``--bootstrap-b`` for the mirror) name running ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import click

from dssync.bench.localpair import free_port
from dssync.consumers.consumer import replay
from dssync.consumers.store import Store
from dssync.errors import BackendUnavailableError
from dssync.layout import source_name
from dssync.log.filelog import FileLog
from dssync.log.kafka import KafkaLog, KafkaSettings
from dssync.tools.output import emit_json

MB = 1_000_000
# tools/ sits at the top of a checkout, beside compose/ (an installed wheel has no compose/)
COMPOSE_KAFKA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compose", "kafka.py")


def _events(count: int, value_bytes: int = 1024) -> Iterator[list[bytes]]:
    """The benchmark's events, 500 to a batch, made as they are asked for (16 M events of 1 KiB
    would not fit in memory), the same on every call."""
    from dssync.producers.hierarchy import segment_ref
    from dssync.schemas import encode_segment_stored, origin_field

    of = origin_field("bench")
    batch = []
    for i in range(count):
        data = (i.to_bytes(8, "little") * (value_bytes // 8 + 1))[:value_bytes]
        batch.append(encode_segment_stored(of, (1 << 40) + i, segment_ref(data), data))
        if len(batch) == 500:
            yield batch
            batch = []
    if batch:
        yield batch


def _append(log: Any, events: int, value_bytes: int) -> tuple[float, int]:
    """Append the events to ``log``; (seconds spent in the log's appends and its flush, bytes)."""
    spent, nbytes = 0.0, 0
    for b in _events(events, value_bytes):
        nbytes += sum(len(v) for v in b)
        t0 = time.perf_counter()
        log.append(b)
        spent += time.perf_counter() - t0
    t0 = time.perf_counter()
    log.flush()
    return spent + time.perf_counter() - t0, nbytes


def _replay(log: Any, directory: str) -> float:
    store = Store(directory, create=True, fsync=True)
    try:
        t0 = time.perf_counter()
        replay(log, store, source_name("bench"), log.start_offset())  # what 'dssync replay' runs, on either log
        return time.perf_counter() - t0
    finally:
        store.close()


def _compose_broker(site: str = "a") -> tuple[str, str]:
    script = COMPOSE_KAFKA
    if not os.path.exists(script):
        raise BackendUnavailableError("no compose/kafka.py next to this dssync (an installed wheel)",
                                      hint="run from a checkout, or pass --bootstrap HOST:PORT of a running broker")
    name = f"bench-{site}-{os.getpid()}"
    port = free_port()
    subprocess.run([sys.executable, script, "start", name, "--port", str(port), "--controller-port",
                    str(free_port())], check=True, capture_output=True)
    return f"127.0.0.1:{port}", name


def kafka_report(events: int, bootstrap: str | None, bootstrap_b: str | None = None,
                 mirror: bool = True, steady_s: float = 20.0, value_bytes: int = 1024) -> dict[str, Any]:
    started: list[str] = []
    if bootstrap is None:
        bootstrap, name = _compose_broker("a")
        started.append(name)
    if mirror and bootstrap_b is None:
        bootstrap_b, name = _compose_broker("b")
        started.append(name)
    mirrored: dict[str, Any] | None = None
    directory = tempfile.mkdtemp(prefix="dssync-bench-kafka-")
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        with KafkaLog(KafkaSettings(bootstrap), topic, writer=True, create=True) as klog:
            k_append, nbytes = _append(klog, events, value_bytes)
        with FileLog(os.path.join(directory, "log"), writer=True, create=True, fsync="always") as flog:
            f_append, _ = _append(flog, events, value_bytes)
        with KafkaLog(KafkaSettings(bootstrap), topic) as klog:
            k_replay = _replay(klog, os.path.join(directory, "store-kafka"))
        f_replay = _replay(FileLog(os.path.join(directory, "log")), os.path.join(directory, "store-file"))
        if mirror:
            from dssync.bench.mirrormaker import mirror_report

            assert bootstrap_b is not None
            mirrored = mirror_report(bootstrap, bootstrap_b, topic, COMPOSE_KAFKA, steady_s=steady_s)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        for name in started:
            subprocess.run([sys.executable, COMPOSE_KAFKA, "stop", name, "--remove"], check=False,
                           capture_output=True)

    def case(sys_s: float, base_s: float) -> dict[str, Any]:
        return {"unit": "events_per_s", "system": round(events / sys_s), "baseline": round(events / base_s),
                "ratio": round(base_s / sys_s, 3), "system_MB_per_s": round(nbytes / MB / sys_s, 1),
                "baseline_MB_per_s": round(nbytes / MB / base_s, 1)}

    report = {"events": events, "segment_bytes": value_bytes, "bytes": nbytes, "system": "kafka log",
              "baseline": "embedded file log",
              "append": case(k_append, f_append), "replay": case(k_replay, f_replay)}
    if mirrored is not None:
        report["mirror"] = {"system": "dssync mirror-topic", "baseline": "MirrorMaker 2", **mirrored}
    return report


@click.command("kafka")
@click.option("--events", type=click.IntRange(1), default=200_000, show_default=True)
@click.option("--segment-bytes", "value_bytes", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="Bytes of each event's segment (small ones keep a 16 M-event replay within a machine's disk).")
@click.option("--bootstrap", default=None, help="A running broker (default: start one with compose/kafka.py).")
@click.option("--bootstrap-b", default=None, help="A second running broker, the mirror's destination.")
@click.option("--no-mirror", is_flag=True, help="Leave out the mirror against MirrorMaker 2.")
@click.option("--steady-seconds", type=click.FloatRange(1, 600), default=20.0, show_default=True,
              help="Seconds of appends at 500 records/s per mirror for latency (in rotating rounds of 1 s).")
@click.option("--json", "as_json", is_flag=True)
def bench_kafka(events: int, value_bytes: int, bootstrap: str | None, bootstrap_b: str | None, no_mirror: bool,
                steady_seconds: float, as_json: bool) -> None:
    """Kafka log against embedded log (append, replay) and dssync's Kafka-to-Kafka mirror
    against MirrorMaker 2 (throughput, p99 latency): same events, same brokers, one run.

    \b
    Example:
      dssync bench kafka --json
      dssync bench kafka --bootstrap 127.0.0.1:9092 --bootstrap-b 127.0.0.1:9192 --events 100000
    """
    report = kafka_report(events, bootstrap, bootstrap_b, mirror=not no_mirror, steady_s=steady_seconds,
                          value_bytes=value_bytes)
    if as_json:
        emit_json(report)
        return
    for name in ("append", "replay"):
        c = report[name]
        click.echo(f"{name:<7} kafka {c['system']:>8} events/s ({c['system_MB_per_s']} MB/s)  embedded "
                   f"{c['baseline']:>8} events/s ({c['baseline_MB_per_s']} MB/s)  ratio {c['ratio']}")
    m = report.get("mirror")
    if m:
        sides = (("dssync", m["dssync"]), ("MirrorMaker 2", m["mirrormaker2"]),
                 ("MirrorMaker 2 read_committed", m["mirrormaker2_read_committed"]),
                 ("MirrorMaker 2 exactly-once", m["mirrormaker2_exactly_once"]))
        click.echo(f"mirror  dssync {m['system']:>8} events/s  MirrorMaker 2 {m['baseline']:>8} events/s  "
                   f"ratio {m['ratio']}  (read_committed {sides[2][1]['events_per_s']} events/s, ratio "
                   f"{m['ratio_vs_read_committed']}; exactly-once {sides[3][1]['events_per_s']} events/s, "
                   f"ratio {m['ratio_vs_exactly_once']})")
        for who, side in sides:
            lat = side["latency_ms"]
            click.echo(f"latency {who}: p50 {lat['p50']} ms, p99 {lat['p99']} ms ({lat['samples']} records); "
                       f"p99 of its {len(lat['rounds_p99'])} rounds: median {lat['p99_median_of_rounds']} ms, "
                       f"{lat['p99_lowest_round']}-{lat['p99_highest_round']} ms; aborted records copied "
                       f"{side['aborted_records_copied']} of {m['aborted_records']}")
