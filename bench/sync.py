"""``dssync bench sync``: the pair's replication, measured against its baselines in one run.

* mirror throughput: the mirror copying a log of ``--log-mb`` MB from the peer (over TLS, every
  request and reply authenticated), against the same mirror without that protection
  (``dssync.bench.unprotected``: what TLS and the MACs cost) and against fetching the same
  segment files raw into a directory with the same fsync policy, over plain HTTP on loopback
  and over HTTPS (the encryption's cost alone);
* end-to-end latency, p50 and p99, from append on the master to committed in the backup's
  store, while traffic runs at half of the measured ingest capacity, with and without the
  link's protection: from the backup's own histogram (``dssync.monitor.latency``, read before
  and after), and as a client polling the backup every 2 ms sees it (which adds the poller's
  own delays on a busy machine), with the first hop (append to the backup's mirror log) polled
  the same way;
* catch-up after an interruption of ``--interruption`` seconds at that load: time until the
  backup has applied everything again, and the catch-up rate against the ingest rate;
* savings retained by the backup after failover, as a fraction of the master's.

Throughput and latency are run ``--repeat`` times, protected and unprotected in alternating
order, each on a fresh pair; the report gives the medians and every run's figure.
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


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of the mirror with and without its protection and of the raw copies over
    ``runs``, their ratios, and every run's figures (the machines are shared: one run of either
    side can be off by half)."""
    system, bare = _median(runs, "system"), _median(runs, "unprotected")
    baseline, tls_copy = _median(runs, "baseline"), _median(runs, "baseline_tls")
    out = dict(min(runs, key=lambda r: abs(r["system"] - system)))  # events/s etc. of the median run
    out.update({"system": round(system, 1), "baseline": round(baseline, 1), "ratio": round(system / baseline, 3),
                "unprotected": round(bare, 1), "protection_cost": round(1 - system / bare, 3),
                "baseline_tls": round(tls_copy, 1), "ratio_to_tls_copy": round(system / tls_copy, 3)})
    for key in ("system", "unprotected", "baseline", "baseline_tls"):
        out[f"{key}_runs"] = sorted(r[key] for r in runs)
    return out


def _mirror_copy(directory: str, log_mb: int, fsync: str, unprotected: bool) -> tuple[dict[str, Any], str]:
    """The mirror's copy of a fresh log of ``log_mb`` MB from a fresh pair: (its figures, the
    master's log directory, for the raw copies)."""
    a, b = make_pair(directory, fsync=fsync, unprotected=unprotected)
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
    return ({"rate": copied / MB / secs, "events_per_s": round((end - first) / secs), "log_bytes": src_bytes,
             "seconds": round(secs, 3)}, os.path.join(a.home, "log"))


def mirror_throughput(directory: str, log_mb: int, fsync: str, flip: bool = False) -> dict[str, Any]:
    """One run: the mirror's copy of a fresh log with its protection and without it
    (``dssync.bench.unprotected``), then the raw copies of the same log over HTTP and HTTPS
    (``flip``: each pair of the two in the other order; the orders alternate between runs, as
    the disk's speed drifts)."""
    mirrors = {}
    for bare in ((False, True) if not flip else (True, False)):
        mirrors[bare] = _mirror_copy(os.path.join(directory, "bare" if bare else "tp"), log_mb, fsync, bare)
    protected, src_log = mirrors[False]
    copies = {}
    for over in (("http", "https") if not flip else ("https", "http")):
        os.sync()
        copies[over] = _raw_copy(src_log, os.path.join(directory, "raw-copy"), fsync,
                                 tls_dir=os.path.join(directory, "tls") if over == "https" else None)
    (base_secs, base_bytes), (tls_secs, tls_bytes) = copies["http"], copies["https"]
    sys_rate, base_rate, tls_rate = protected["rate"], base_bytes / MB / base_secs, tls_bytes / MB / tls_secs
    return {"unit": "MB_per_s", "system": round(sys_rate, 1), "unprotected": round(mirrors[True][0]["rate"], 1),
            "baseline": round(base_rate, 1), "ratio": round(sys_rate / base_rate, 3),
            "baseline_tls": round(tls_rate, 1), "ratio_to_tls_copy": round(sys_rate / tls_rate, 3),
            "events_per_s": protected["events_per_s"], "log_bytes": protected["log_bytes"],
            "seconds": protected["seconds"]}


def pace_ingest(node: Node, rate_mbps: float, stop: threading.Event, sent: list[float], seed: int) -> None:
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


def latency_histogram(status: dict[str, Any]) -> dict[str, Any]:
    """The backup's replication latency histogram of the master's batches (empty before any)."""
    lat = status.get("sync", {}).get("replication_latency", {}).get("sha")
    return lat["histogram"] if lat else latency.LatencyHistogram().snapshot()


def _converged_pair(directory: str, fsync: str, unprotected: bool = False) -> tuple[Node, Node]:
    a, b = make_pair(directory, fsync=fsync, unprotected=unprotected)
    try:
        for n in (a, b):
            n.start("serve")
        for n in (a, b):
            n.start("mirror")
        wait_converged(a, b)
    except BaseException:
        a.stop_all()
        b.stop_all()
        raise
    return a, b


def capacity_and_catchup(directory: str, interruption: float, fsync: str) -> dict[str, Any]:
    """The master's ingest capacity on new data, then the backup's catch-up after its mirror
    was stopped for ``interruption`` seconds while the master took half that load."""
    a, b = _converged_pair(os.path.join(directory, "catch-up"), fsync)
    try:
        data = random.Random(5).randbytes(32 * MB)
        path = os.path.join(directory, "capacity.bin")
        with open(path, "wb") as f:
            f.write(data)
        t0 = time.perf_counter()
        a.ingest(path)
        capacity = len(data) / MB / (time.perf_counter() - t0)
        rate = capacity / 2
        wait_converged(a, b, timeout=300)
        log_a = FileLog(os.path.join(a.home, "log"))
        b.kill("mirror")
        stop = threading.Event()
        loader = threading.Thread(target=pace_ingest, args=(a, rate, stop, [], 202))
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
        wait_converged(a, b, timeout=300)
    finally:
        a.stop_all()
        b.stop_all()
    return {"ingest_capacity_MB_per_s": round(capacity, 1), "load_MB_per_s": round(rate, 1),
            "catch_up": {"interruption_s": interruption, "seconds": round(catch, 3), "backlog_MB": round(backlog_mb, 3),
                         "rate_MB_per_s": round(backlog_mb / catch, 1) if catch > 0 else None,
                         "ratio_to_ingest_rate": round(backlog_mb / catch / rate, 2) if catch > 0 else None}}


def latency_run(directory: str, seconds: float, fsync: str, rate: float, unprotected: bool) -> dict[str, Any]:
    """One run of a fresh pair (its link protected or not) with the master taking ``rate`` MB/s
    of new data for ``seconds``: the backup's histogram of append -> committed (read before and
    after), what a client polling the backup every 2 ms saw, and the first hop (append -> the
    backup's mirror log), polled the same way."""
    from dssync.tools.control import ControlClient

    a, b = _converged_pair(directory, fsync, unprotected)
    try:
        stop = threading.Event()
        loader = threading.Thread(target=pace_ingest, args=(a, rate, stop, [], 101))
        ctl_b = ControlClient.for_home(b.home)
        assert ctl_b is not None
        before = latency_histogram(ctl_b.status())
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
        after = latency_histogram(ctl_b.status())
        wait_converged(a, b, timeout=300)
        log_a = FileLog(os.path.join(a.home, "log"))
        d = latency.delta(after, before)
        return {**{k: v for k, v in latency.summary(d).items() if k != "batches"}, "samples": d["count"],
                "polled": _latencies(log_a, seen), "mirror_hop": _latencies(log_a, mirrored)}
    finally:
        a.stop_all()
        b.stop_all()


def _latency_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of each run's p50, p99 and share within 50 ms, with every run's p99."""
    out: dict[str, Any] = {k: round(_median(runs, k), 4 if k == "within_50ms" else 1)
                           for k in ("p50_ms", "p99_ms", "within_50ms")}
    out["samples"] = sum(r["samples"] for r in runs)
    out["p99_ms_runs"] = sorted(r["p99_ms"] for r in runs)
    for hop in ("polled", "mirror_hop"):
        done = [r[hop] for r in runs if r[hop]["p99"] is not None]
        out[hop] = ({"p50": round(_median(done, "p50"), 1), "p99": round(_median(done, "p99"), 1)}
                    if done else {"p50": None, "p99": None})
    return out


def savings_retained(directory: str, size: int) -> dict[str, Any]:
    from dssync.bench.demo import run_pair

    report = run_pair(os.path.join(directory, "failover"), size, 4, lambda _msg: None)
    s = report["savings"]
    return {"backup": s["backup"], "master": s["master"], "cold": s["cold"], "ratio": s["backup_over_master"]}


@click.command("sync")
@click.option("--log-mb", type=int, default=256, show_default=True, help="Size of the log to mirror.")
@click.option("--seconds", type=float, default=20, show_default=True, help="Duration of each latency run.")
@click.option("--interruption", type=float, default=60, show_default=True, help="Link cut, in seconds.")
@click.option("--size", type=int, default=16_000_000, show_default=True, help="Release size for failover.")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="always", show_default=True)
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs of the mirror's copy and of the latency, each with and without the link's protection, "
                   "in alternating order (a fresh pair each); the medians are compared.")
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
            say(f"mirror throughput ({i + 1}/{repeat}): with and without the link's protection, raw copies ...")
            runs.append(mirror_throughput(os.path.join(directory, f"run{i}"), log_mb, fsync, flip=i % 2 == 1))
            shutil.rmtree(os.path.join(directory, f"run{i}"), ignore_errors=True)
        report: dict[str, Any] = {"fsync": fsync, "mirror": _median_run(runs)}
        say("ingest capacity and catch-up ...")
        replication = capacity_and_catchup(directory, interruption, fsync)
        lat_runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for i in range(repeat):
            for bare in ((False, True) if i % 2 == 0 else (True, False)):
                say(f"latency ({i + 1}/{repeat}, {'without' if bare else 'with'} the link's protection) ...")
                where = os.path.join(directory, f"lat{i}{'bare' if bare else ''}")
                lat_runs[bare].append(latency_run(where, seconds, fsync, replication["load_MB_per_s"], bare))
                shutil.rmtree(where, ignore_errors=True)
        replication["latency_ms"] = _latency_medians(lat_runs[False])
        replication["unprotected_latency_ms"] = _latency_medians(lat_runs[True])
        report["replication"] = replication
        say("failover savings ...")
        report["failover_savings"] = savings_retained(directory, size)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if as_json:
        emit_json(report)
        return
    m, r, f = report["mirror"], report["replication"], report["failover_savings"]
    click.echo(f"mirror       system {m['system']} MB/s ({m['events_per_s']} events/s)  baseline {m['baseline']} MB/s"
               f"  ratio {m['ratio']}  (medians of {repeat} alternating runs)")
    click.echo(f"             without its protection {m['unprotected']} MB/s: TLS and MACs cost the mirror "
               f"{m['protection_cost']:.1%}")
    click.echo(f"             the raw copy over TLS {m['baseline_tls']} MB/s: TLS costs the raw copy "
               f"{1 - m['baseline_tls'] / m['baseline']:.0%}; the mirror is {m['ratio_to_tls_copy']} of it")
    lat, bare = r["latency_ms"], r["unprotected_latency_ms"]
    click.echo(f"latency      p50 {lat['p50_ms']} ms  p99 {lat['p99_ms']} ms ({lat['within_50ms']:.1%} within 50 ms) "
               f"at {r['load_MB_per_s']} MB/s (half of {r['ingest_capacity_MB_per_s']} MB/s): append on the master "
               f"-> committed in the backup's store (medians of {repeat} runs; p99 of each: {lat['p99_ms_runs']})")
    click.echo(f"             without the link's protection: p50 {bare['p50_ms']} ms  p99 {bare['p99_ms']} ms "
               f"(p99 of each: {bare['p99_ms_runs']})")
    click.echo(f"             seen by a client polling the backup every 2 ms: p50 {lat['polled']['p50']} ms  "
               f"p99 {lat['polled']['p99']} ms; append -> the backup's mirror log (polled): "
               f"p50 {lat['mirror_hop']['p50']} ms  p99 {lat['mirror_hop']['p99']} ms")
    c = r["catch_up"]
    click.echo(f"catch-up     {c['seconds']} s after {c['interruption_s']} s cut ({c['backlog_MB']} MB backlog)  "
               f"rate {c['rate_MB_per_s']} MB/s = {c['ratio_to_ingest_rate']}x the ingest rate")
    click.echo(f"failover     backup saves {f['backup'] * 100:.2f}%, master {f['master'] * 100:.2f}%, "
               f"cold {f['cold'] * 100:.2f}%  ratio {f['ratio']}")
