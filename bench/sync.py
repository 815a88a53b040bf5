"""``dssync bench sync``: the pair's replication, measured against its baselines in one run.

* mirror throughput: the mirror copying a log of ``--log-mb`` MB from the peer (over TLS, every
  request and reply authenticated), against fetching the same segment files raw into a
  directory with the same fsync policy, over plain HTTP on loopback and over HTTPS (the
  encryption's cost alone);
* end-to-end latency, p50 and p99, from append on the master to committed in the backup's
  store, while traffic runs at half of the measured ingest capacity: from the backup's own
  histogram (``dssync.monitor.latency``, read before and after), and as a client polling the
  backup every 2 ms sees it (which adds the poller's own delays on a busy machine), with the
  first hop (append to the backup's mirror log) polled the same way;
* catch-up after an interruption of ``--interruption`` seconds at that load: time until the
  backup has applied everything again, and the catch-up rate against the ingest rate;
* savings retained by the backup after failover, as a fraction of the master's.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from functools import partial
from typing import Any

import click

from dssync.bench.localpair import Node, make_pair, wait_converged
from dssync.errors import ChildRunError
from dssync.layout import STATE_FILE, source_name
from dssync.log.filelog import FileLog
from dssync.monitor import latency
from dssync.tools.output import emit_json

MB = 1_000_000


def _fill_log(home: str, megabytes: int, seed: int) -> int:
    """Append ``megabytes`` of new segments to an appliance's log (its service stopped)."""
    from dssync.producers.hierarchy import segment_ref
    from dssync.schemas import encode_segment_stored, origin_field

    rng = random.Random(seed)
    log = FileLog(os.path.join(home, "log"), writer=True, fsync="never")
    of = origin_field(os.path.basename(home))
    hlc = (time.time_ns() // 1_000_000) << 16
    try:
        written = 0
        while written < megabytes * MB:
            batch = []
            for _ in range(100):
                data = rng.randbytes(8192)
                hlc += 1
                batch.append(encode_segment_stored(of, hlc, segment_ref(data), data))
            log.append(batch)
            written += 100 * 8192
        log.flush()
        return log.end_offset()
    finally:
        log.close()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _raw_copy(src_dir: str, dst_dir: str, fsync: str, tls_dir: str | None = None) -> tuple[float, int]:
    """Baseline: fetch the segment files over plain HTTP on loopback; (seconds, bytes).
    ``tls_dir``: over HTTPS instead, with a certificate generated there as an appliance's is
    (what the link's encryption alone costs)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietFiles, directory=src_dir))
    client_ctx = None
    if tls_dir is not None:
        from dssync.config import SyncConfig
        from dssync.sync import tls

        server_ctx, _fp = tls.server_context(tls_dir, "baseline", SyncConfig())
        srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
        client_ctx = tls.client_context(SyncConfig())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    names = sorted(n for n in os.listdir(src_dir) if n.endswith(".log"))
    shutil.rmtree(dst_dir, ignore_errors=True)
    os.makedirs(dst_dir, exist_ok=True)
    total = 0
    t0 = time.perf_counter()
    conn = (http.client.HTTPSConnection("127.0.0.1", srv.server_address[1], context=client_ctx)
            if client_ctx is not None else http.client.HTTPConnection("127.0.0.1", srv.server_address[1]))
    for name in names:
        conn.request("GET", "/" + name)
        resp = conn.getresponse()
        with open(os.path.join(dst_dir, name), "wb") as f:
            while True:
                chunk = resp.read(4 << 20)
                if not chunk:
                    break
                f.write(chunk)
                total += len(chunk)
                if fsync == "always":
                    f.flush()
                    os.fdatasync(f.fileno())
            if fsync != "never":
                f.flush()
                os.fdatasync(f.fileno())
    secs = time.perf_counter() - t0
    conn.close()
    srv.shutdown()
    srv.server_close()
    return secs, total


def _wait_applied(node: Node, source: str, target: int, timeout: float = 600) -> float:
    from dssync.tools.control import ControlClient

    client = ControlClient.for_home(node.home)
    assert client is not None
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.offsets().get(source, 0) >= target:
            return time.time()
        time.sleep(0.005)
    raise RuntimeError(f"{node.name} did not apply {source} up to {target}")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of system and baseline over ``runs``, their ratio, and every run's figures
    (the machines are shared: one run of either side can be off by half)."""
    system = statistics.median(r["system"] for r in runs)
    baseline = statistics.median(r["baseline"] for r in runs)
    out = dict(min(runs, key=lambda r: abs(r["system"] - system)))  # events/s etc. of the median run
    out.update({"system": round(system, 1), "baseline": round(baseline, 1), "ratio": round(system / baseline, 3),
                "system_runs": sorted(r["system"] for r in runs),
                "baseline_runs": sorted(r["baseline"] for r in runs)})
    if all("baseline_tls" in r for r in runs):
        tls_copy = statistics.median(r["baseline_tls"] for r in runs)
        out.update({"baseline_tls": round(tls_copy, 1), "ratio_to_tls_copy": round(system / tls_copy, 3),
                    "baseline_tls_runs": sorted(r["baseline_tls"] for r in runs)})
    return out


def mirror_throughput(directory: str, log_mb: int, fsync: str, tls_first: bool = False) -> dict[str, Any]:
    """The mirror's copy of a fresh log, then the raw copies over HTTP and HTTPS (``tls_first``:
    HTTPS first; the two orders alternate between runs, as the disk's speed drifts)."""
    a, b = make_pair(os.path.join(directory, "tp"), fsync=fsync)
    try:
        for n in (a, b):
            n.start("serve")
        b.start("mirror")
        mirror_dir = os.path.join(b.home, "mirror", a.name)
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(mirror_dir, "start.json")):  # bootstrapped from the master
            if time.time() > deadline:
                raise ChildRunError("the backup did not bootstrap from the master in time")
            time.sleep(0.05)
        b.kill("mirror")
        a.kill("serve", 15)
        end = _fill_log(a.home, log_mb, 1)
        src_bytes = FileLog(os.path.join(a.home, "log")).size_bytes()
        os.sync()  # both sides start with nothing left to write back (the baseline does the same)
        a.start("serve")
        mirror = FileLog(mirror_dir)
        first = mirror.end_offset()
        state = os.path.join(mirror_dir, STATE_FILE)
        with contextlib.suppress(FileNotFoundError):  # a mirror killed in its first 0.5 s wrote none
            os.unlink(state)
        b.start("mirror")
        while True:  # timing starts when the mirror has connected: process start-up excluded
            try:
                with open(state) as f:
                    if json.load(f).get("state") == "connected":
                        break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.001)
        t0 = time.perf_counter()
        while mirror.end_offset() < end:
            time.sleep(0.005)
        secs = time.perf_counter() - t0
        copied = mirror.bytes_from(first)
    finally:
        a.stop_all()
        b.stop_all()
    copies = {}
    for over in (("http", "https") if tls_first is False else ("https", "http")):  # alternated between runs
        os.sync()
        copies[over] = _raw_copy(os.path.join(a.home, "log"), os.path.join(directory, "raw-copy"), fsync,
                                 tls_dir=os.path.join(directory, "tls") if over == "https" else None)
    (base_secs, base_bytes), (tls_secs, tls_bytes) = copies["http"], copies["https"]
    events = end - first
    sys_rate, base_rate, tls_rate = copied / MB / secs, base_bytes / MB / base_secs, tls_bytes / MB / tls_secs
    return {"unit": "MB_per_s", "system": round(sys_rate, 1), "baseline": round(base_rate, 1),
            "ratio": round(sys_rate / base_rate, 3), "baseline_tls": round(tls_rate, 1),
            "ratio_to_tls_copy": round(sys_rate / tls_rate, 3), "events_per_s": round(events / secs),
            "log_bytes": src_bytes, "seconds": round(secs, 3)}


def _pace(node: Node, rate_mbps: float, stop: threading.Event, sent: list[float], seed: int) -> None:
    """Send new data (never seen before: its own ``seed``) to a node's service at ``rate_mbps``
    in 256 KB pieces."""
    import io

    from dssync.tools.control import ControlClient

    client = ControlClient.for_home(node.home)
    assert client is not None
    rng = random.Random(seed)
    piece = 256 * 1024
    interval = piece / (rate_mbps * MB)
    nxt = time.perf_counter()
    while not stop.is_set():
        data = rng.randbytes(piece)
        client.ingest(io.BytesIO(data), len(data))
        sent.append(time.perf_counter())
        nxt += interval
        delay = nxt - time.perf_counter()
        if delay > 0:
            stop.wait(delay)


def _latencies(log_a: FileLog, seen: list[tuple[int, float]]) -> dict[str, Any]:
    """p50/p99 from each batch's append time on the master to the first poll that saw an offset
    past it (``seen``: (offset, time) polls)."""
    lat: list[float] = []
    first_seen: dict[int, float] = {}
    for off, t in seen:
        first_seen.setdefault(off, t)
    applied = sorted(first_seen.items())
    i = 0
    for batch in log_a.batches(log_a.start_offset()):
        while i < len(applied) and applied[i][0] < batch.next_offset:
            i += 1
        if i < len(applied) and batch.timestamp_ms / 1000 >= seen[0][1]:
            lat.append(max(0.0, applied[i][1] - batch.timestamp_ms / 1000))
    lat.sort()
    return {"p50": round(statistics.median(lat) * 1000, 1) if lat else None,
            "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None,
            "samples": len(lat)}


def _histogram(status: dict[str, Any]) -> dict[str, Any]:
    """The backup's replication latency histogram of the master's batches (empty before any)."""
    lat = status.get("sync", {}).get("replication_latency", {}).get("sha")
    return lat["histogram"] if lat else latency.LatencyHistogram().snapshot()


def latency_and_catchup(directory: str, seconds: float, interruption: float, fsync: str) -> dict[str, Any]:
    from dssync.tools.control import ControlClient

    a, b = make_pair(os.path.join(directory, "lat"), fsync=fsync)
    out: dict[str, Any] = {}
    try:
        for n in (a, b):
            n.start("serve")
        for n in (a, b):
            n.start("mirror")
        wait_converged(a, b)
        # ingest capacity of the master's service, on new data
        data = random.Random(5).randbytes(32 * MB)
        path = os.path.join(directory, "capacity.bin")
        with open(path, "wb") as f:
            f.write(data)
        t0 = time.perf_counter()
        a.ingest(path)
        capacity = len(data) / MB / (time.perf_counter() - t0)
        rate = capacity / 2
        out["ingest_capacity_MB_per_s"] = round(capacity, 1)
        out["load_MB_per_s"] = round(rate, 1)
        wait_converged(a, b, timeout=300)
        # latency: poll the backup's applied offset; match it to the master's append times
        stop = threading.Event()
        sent: list[float] = []
        loader = threading.Thread(target=_pace, args=(a, rate, stop, sent, 101))
        ctl_b = ControlClient.for_home(b.home)
        assert ctl_b is not None
        before = _histogram(ctl_b.status())
        seen: list[tuple[int, float]] = []
        mirrored: list[tuple[int, float]] = []
        mirror_log = FileLog(os.path.join(b.home, "mirror", a.name))
        loader.start()
        t_end = time.time() + seconds
        while time.time() < t_end:
            mirrored.append((mirror_log.end_offset(), time.time()))
            seen.append((ctl_b.offsets().get(source_name("sha"), 0), time.time()))
            time.sleep(0.002)
        stop.set()
        loader.join()
        after = _histogram(ctl_b.status())
        wait_converged(a, b, timeout=300)
        log_a = FileLog(os.path.join(a.home, "log"))
        d = latency.delta(after, before)
        out["latency_ms"] = {**{k: v for k, v in latency.summary(d).items() if k != "batches"}, "samples": d["count"]}
        out["polled_latency_ms"] = _latencies(log_a, seen)
        out["mirror_hop_ms"] = _latencies(log_a, mirrored)  # the first hop: append -> in the backup's mirror log
        # catch-up after an interruption at the same load
        b.kill("mirror")
        stop = threading.Event()
        sent = []
        loader = threading.Thread(target=_pace, args=(a, rate, stop, sent, 202))
        loader.start()
        time.sleep(interruption)
        behind_from = FileLog(os.path.join(b.home, "mirror", "sha")).end_offset()
        b.start("mirror")
        t0 = time.time()
        target = log_a.end_offset()
        done = _wait_applied(b, source_name("sha"), target)
        stop.set()
        loader.join()
        catch = done - t0
        backlog_mb = log_a.bytes_from(behind_from) / MB
        out["catch_up"] = {"interruption_s": interruption, "seconds": round(catch, 3),
                           "backlog_MB": round(backlog_mb, 3),
                           "rate_MB_per_s": round(backlog_mb / catch, 1) if catch > 0 else None,
                           "ratio_to_ingest_rate": round(backlog_mb / catch / rate, 2) if catch > 0 else None}
        wait_converged(a, b, timeout=300)
    finally:
        a.stop_all()
        b.stop_all()
    return out


def savings_retained(directory: str, size: int) -> dict[str, Any]:
    from dssync.bench.demo import run_pair

    report = run_pair(os.path.join(directory, "failover"), size, 4, lambda _msg: None)
    s = report["savings"]
    return {"backup": s["backup"], "master": s["master"], "cold": s["cold"], "ratio": s["backup_over_master"]}


@click.command("sync")
@click.option("--log-mb", type=int, default=256, show_default=True, help="Size of the log to mirror.")
@click.option("--seconds", type=float, default=20, show_default=True, help="Duration of the latency run.")
@click.option("--interruption", type=float, default=60, show_default=True, help="Link cut, in seconds.")
@click.option("--size", type=int, default=16_000_000, show_default=True, help="Release size for failover.")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="always", show_default=True)
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Mirror throughput runs (a fresh pair each); the medians are compared.")
@click.option("--json", "as_json", is_flag=True)
def bench_sync(log_mb: int, seconds: float, interruption: float, size: int, fsync: str, repeat: int,
               as_json: bool) -> None:
    """Mirror throughput, replication latency, catch-up and failover savings of a local pair.

    \b
    Example:
      dssync bench sync --json
      dssync bench sync --log-mb 64 --seconds 5 --interruption 10
    """
    directory = tempfile.mkdtemp(prefix="dssync-bench-sync-")

    def say(msg: str) -> None:
        if not as_json:
            click.echo(msg, err=True)

    try:
        runs = []
        for i in range(repeat):
            say(f"mirror throughput ({i + 1}/{repeat}) ...")
            runs.append(mirror_throughput(os.path.join(directory, f"run{i}"), log_mb, fsync, tls_first=i % 2 == 1))
            shutil.rmtree(os.path.join(directory, f"run{i}"), ignore_errors=True)
        report: dict[str, Any] = {"fsync": fsync, "mirror": _median_run(runs)}
        say("latency and catch-up ...")
        report["replication"] = latency_and_catchup(directory, seconds, interruption, fsync)
        say("failover savings ...")
        report["failover_savings"] = savings_retained(directory, size)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if as_json:
        emit_json(report)
        return
    m, r, f = report["mirror"], report["replication"], report["failover_savings"]
    click.echo(f"mirror       system {m['system']} MB/s ({m['events_per_s']} events/s)  baseline {m['baseline']} MB/s"
               f"  ratio {m['ratio']}")
    click.echo(f"             the same copy over TLS {m['baseline_tls']} MB/s: TLS costs the raw copy "
               f"{1 - m['baseline_tls'] / m['baseline']:.0%}; the mirror is {m['ratio_to_tls_copy']} of it")
    lat, polled, hop = r["latency_ms"], r["polled_latency_ms"], r["mirror_hop_ms"]
    click.echo(f"latency      p50 {lat['p50_ms']} ms  p99 {lat['p99_ms']} ms ({lat['within_50ms']:.1%} within 50 ms) "
               f"at {r['load_MB_per_s']} MB/s (half of {r['ingest_capacity_MB_per_s']} MB/s): append on the master "
               "-> committed in the backup's store")
    click.echo(f"             seen by a client polling the backup every 2 ms: p50 {polled['p50']} ms  "
               f"p99 {polled['p99']} ms; append -> the backup's mirror log (polled): p50 {hop['p50']} ms  "
               f"p99 {hop['p99']} ms")
    c = r["catch_up"]
    click.echo(f"catch-up     {c['seconds']} s after {c['interruption_s']} s cut ({c['backlog_MB']} MB backlog)  "
               f"rate {c['rate_MB_per_s']} MB/s = {c['ratio_to_ingest_rate']}x the ingest rate")
    click.echo(f"failover     backup saves {f['backup'] * 100:.2f}%, master {f['master'] * 100:.2f}%, "
               f"cold {f['cold'] * 100:.2f}%  ratio {f['ratio']}")
