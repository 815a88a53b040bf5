"""``dssync bench scale``: the store at an appliance's size, each size against the smallest.

For each size (segments in the store) it builds a real appliance home whose own log holds that
many synthetic but realistic events (random references; one level-1 reference per ~16
segments and one level-2 per ~16 of those, as the optimizer cuts them; some evictions; the
segment bytes in the log, where an appliance with a file log keeps them), then measures, each
step in a fresh process so that its peak resident memory is its own:

* ``replay``: ``dssync replay`` of the whole log into a new store (events per second);
* ``open``: opening the appliance (the service's start: recovery, catch-up check, clock, the
  saved reference index read once to check it), cold (the home's files dropped from the page
  cache first, as after a reboot) and then warm;
* ``ingest``: new data through the optimization path into the filled store (MB per second);
* ``apply latency``: small appends of a live link (50 events) from the log append to the
  moment the store answers for them, p50 and p99: the store's share of replication latency,
  and the time of the checkpoint that follows them (the stall a commit meets when DuckDB
  checkpoints on its own: it would grow with the index if a checkpoint rewrote all of it);
* ``verify``: ``dssync verify`` of the home;
* ``pair``: the filled home as the master of a new pair on loopback, both appliances with the
  log's default durability (fsync ``always``, as shipped): pairing (the backup loads
  the whole store by snapshot), then the replication latency of the master's batches at half
  its ingest capacity (append on the master -> committed in the backup's store, the backup's
  own histogram), and the peak memory of each ``serve`` and ``mirror``;
* bytes on disk (index file, log) and peak memory, per segment.

The baseline of each figure is the same figure at the smallest size: a flat curve has ratios
near 1. With ``--repeat N`` the sizes are measured in turn N times (1 M, 64 M, 1 M, 64 M, ...:
a noisy minute lands on both), and each figure is the median of its runs (peak memory: the
highest), each run's figures kept beside it. Nothing here asserts a speed: it measures and
prints (human, or ``--json``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import click

from dssync import config as cfgmod
from dssync.bench.localpair import Node, make_pair
from dssync.errors import ChildRunError, DssyncError, UsageError
from dssync.layout import source_name
from dssync.tools.output import emit_json

MB = 1_000_000
RESULT = "dssync-bench-result "
"""The prefix of a step's result line: whatever else a step prints is not taken for it."""
NAME = "sha"
"""The filled home's appliance name: the master's name in ``dssync.bench.localpair``'s pair."""
SEGMENT_BYTES = 96
"""Bytes of each synthetic segment: small, so that 64 M of them fit a shared machine's disk
(the index is what scales; a real segment averages 8 KiB in the packs or the log)."""


def build_home(home: str, segments: int, progress: bool) -> dict[str, Any]:
    """An appliance home whose own log holds ``segments`` SegmentStored events and the higher
    references and evictions that go with them; its store is left empty (``replay`` fills it)."""
    from dssync.appliance import Appliance
    from dssync.layout import log_dir, store_dir
    from dssync.log.filelog import FileLog
    from dssync.producers.hierarchy import group_ref, segment_ref
    from dssync.schemas import encode, encode_segment_stored, origin_field

    Appliance.create(home, NAME, "SH-7080", "9.14", fsync="never", capacity_bytes=1 << 50,
                     segment_bytes=1 << 30).close()
    shutil.rmtree(store_dir(home))
    log = FileLog(log_dir(home), writer=True, fsync="never", segment_bytes=1 << 30)
    of = origin_field(NAME)
    hlc = 1 << 44
    batch: list[bytes] = []
    level1: list[bytes] = []
    level2: list[bytes] = []
    salt = os.urandom(8)
    t0 = time.monotonic()
    for i in range(segments):
        hlc += 1
        data = salt + i.to_bytes(8, "little") * (SEGMENT_BYTES // 8 - 1)
        ref = segment_ref(data)
        batch.append(encode_segment_stored(of, hlc, ref, data))
        level1.append(ref)
        if len(level1) == 16:
            hlc += 1
            g = group_ref(1, level1)
            batch.append(encode("ReferenceStored", {"origin": NAME, "hlc": hlc, "ref": g, "level": 1,
                                                    "size": SEGMENT_BYTES * 16, "children": b"".join(level1)}))
            level2.append(g)
            level1 = []
            if len(level2) == 16:
                hlc += 1
                batch.append(encode("ReferenceStored", {"origin": NAME, "hlc": hlc, "ref": group_ref(2, level2),
                                                        "level": 2, "size": SEGMENT_BYTES * 256,
                                                        "children": b"".join(level2)}))
                level2 = []
        if i % 97 == 13:
            hlc += 1
            batch.append(encode("SegmentEvicted", {"origin": NAME, "hlc": hlc, "ref": ref}))
        if len(batch) >= 4000:
            log.append(batch)
            batch = []
            if progress and i % 1_000_000 < 3000:
                click.echo(f"  building: {i:,} of {segments:,} segments ({time.monotonic() - t0:.0f} s)", err=True)
    if batch:
        log.append(batch)
    log.flush()
    events = log.end_offset()
    log.close()
    return {"events": events}


def _drop_cached(root: str) -> None:
    """Drop the cached pages of every file under ``root`` (clean ones: the home was closed, so
    all are), so that the next open reads from the disk as the first one after a reboot does."""
    for d, _dirs, names in os.walk(root):
        for n in names:
            try:
                fd = os.open(os.path.join(d, n), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def step(name: str, home: str, ingest_mb: int, samples: int) -> dict[str, Any]:
    """One measured step on ``home`` (run in a child process of its own)."""
    from dssync.appliance import Appliance, replay
    from dssync.bench import workload
    from dssync.layout import store_dir

    if name == "replay":
        t0 = time.perf_counter()
        applied = replay(home)
        duckdb_bytes = os.path.getsize(os.path.join(store_dir(home), "store.duckdb"))
        refindex = os.path.join(store_dir(home), "refindex.bin")
        refindex_bytes = os.path.getsize(refindex) if os.path.exists(refindex) else 0
        return {"seconds": time.perf_counter() - t0, "events": applied, "duckdb_bytes": duckdb_bytes,
                "refindex_bytes": refindex_bytes, "index_bytes": duckdb_bytes + refindex_bytes}
    if name == "open":
        opened = []
        for cold in (True, False):
            if cold:
                _drop_cached(home)
            t0 = time.perf_counter()
            app = Appliance(home)
            opened.append(time.perf_counter() - t0)
            rows, loaded = app.store.stats()["rows"], app.store.index_loaded
            app.close()
        return {"seconds": opened[1], "cold_seconds": opened[0], "rows": rows, "index_loaded": loaded}
    if name == "ingest":
        # from a file, as an operator's ingest reads it: the bench holds no copy in memory
        source = os.path.join(home, "ingest.bin")
        with open(source, "wb") as f:
            for k in range(ingest_mb):  # a MB at a time: no copy of the whole input in this process's peak memory
                f.write(workload.random_bytes(int(time.time()) + k, MB))
        try:
            with Appliance(home) as app, open(source, "rb") as f:
                t0 = time.perf_counter()
                app.ingest(f)
                return {"seconds": time.perf_counter() - t0, "bytes": os.path.getsize(source)}
        finally:
            os.unlink(source)
    if name == "latency":
        from dssync.producers.hierarchy import segment_ref
        from dssync.schemas import encode_segment_stored, origin_field

        lat = []
        with Appliance(home) as app:
            of = origin_field(NAME)
            for k in range(samples):
                values = []
                for _ in range(50):
                    data = os.urandom(SEGMENT_BYTES)
                    values.append(encode_segment_stored(of, app.hlc.now(), segment_ref(data), data))
                last = segment_ref(data)
                t0 = time.perf_counter()
                app.log.append(values)
                app.applied()
                assert app.store.known([last]) == {last}
                lat.append(time.perf_counter() - t0)
                if k % 10 == 9:
                    time.sleep(0.01)  # a live link's pace: commits with room between them
            # DuckDB checkpoints on its own once its write-ahead log passes 16 MiB, inside a
            # commit: the stall a live apply meets then is this (duckdb/duckdb#24848: it grows
            # with a large index if the checkpoint rewrites all of it)
            t0 = time.perf_counter()
            app.store.con.execute("CHECKPOINT")
            checkpoint = time.perf_counter() - t0
        lat.sort()
        return {"samples": len(lat), "p50_ms": lat[len(lat) // 2] * 1000,
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, "max_ms": lat[-1] * 1000,
                "checkpoint_ms": checkpoint * 1000}
    if name == "verify":
        from dssync.tools.verify import verify_home

        t0 = time.perf_counter()
        rep = verify_home(home)
        return {"seconds": time.perf_counter() - t0, "ok": rep.ok, "problems": rep.problems[:3]}
    raise UsageError(f"unknown step {name}")


def _peak_rss_of(pid: int) -> int:
    """A running process's peak resident memory (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _wait_caught_up(a: Node, b: Node, timeout: float) -> float:
    """Wait until each store holds everything the other's log had when asked; return when. By
    offsets only: a pair verify compares whole-store digests, a scan of every row per poll."""
    from dssync.log.filelog import FileLog
    from dssync.tools.control import ControlClient

    ctl_a, ctl_b = ControlClient.for_home(a.home), ControlClient.for_home(b.home)
    if ctl_a is None or ctl_b is None:
        raise ChildRunError("a service of the pair stopped", hint=f"see {a.logs}")
    logs = FileLog(os.path.join(a.home, "log")), FileLog(os.path.join(b.home, "log"))
    deadline = time.time() + timeout
    while time.time() < deadline:
        ends = [log.end_offset() for log in logs]
        if (ctl_b.offsets().get(source_name(a.name), 0) >= ends[0]
                and ctl_a.offsets().get(source_name(b.name), 0) >= ends[1]):
            return time.perf_counter()
        for n in (a, b):
            for what, p in n.procs.items():
                if p.poll() is not None:
                    raise ChildRunError(f"{what} of {n.name} exited with {p.returncode}: {n.log(what)[-500:]}")
        time.sleep(0.2)
    raise ChildRunError(f"the pair did not catch up in {timeout:.0f} s", hint=f"see the logs in {a.logs}")


def pair_latency(directory: str, home: str, seconds: float) -> dict[str, Any]:
    """The filled ``home`` as the master of a new pair: pairing time, the replication latency
    of the master's batches at half its ingest capacity, and each service's peak memory."""
    import random
    import threading

    from dssync.bench.sync import latency_histogram, pace_ingest
    from dssync.monitor import latency
    from dssync.tools.control import ControlClient

    work = os.path.join(directory, "pair")
    shutil.rmtree(work, ignore_errors=True)
    cfg = cfgmod.load(home)  # built with fsync "never" for speed; paired as shipped
    cfg.log.fsync = cfgmod.LogConfig().fsync
    cfgmod.save(home, cfg)
    a, b = make_pair(work, home_a=home, init_a=False, fsync=cfg.log.fsync, extra_b=("--capacity", str(1 << 50)))
    try:
        a.start("serve")
        t0 = time.perf_counter()
        b.start("serve")
        for n in (a, b):
            n.start("mirror")
        pairing = _wait_caught_up(a, b, timeout=6 * 3600) - t0
        sample = os.path.join(work, "capacity.bin")
        with open(sample, "wb") as f:
            f.write(random.Random(5).randbytes(32 * MB))
        t0 = time.perf_counter()
        a.ingest(sample)
        capacity = 32 / (time.perf_counter() - t0)
        os.unlink(sample)
        _wait_caught_up(a, b, timeout=600)
        ctl_a, ctl_b = ControlClient.for_home(a.home), ControlClient.for_home(b.home)
        assert ctl_a is not None and ctl_b is not None
        before = latency_histogram(ctl_b.status())
        stop = threading.Event()
        loader = threading.Thread(target=pace_ingest, args=(a, capacity / 2, stop, [], 101))
        loader.start()
        time.sleep(seconds)
        stop.set()
        loader.join()
        _wait_caught_up(a, b, timeout=600)
        after = latency_histogram(ctl_b.status())
        digests = ctl_a.digest()["digest"], ctl_b.digest()["digest"]
        peak = {f"{n.name}_{what}": _peak_rss_of(n.procs[what].pid) for n in (a, b) for what in ("serve", "mirror")}
    finally:
        a.stop_all()
        b.stop_all()
    d = latency.delta(after, before)
    lat = latency.summary(d)
    return {"pairing_s": round(pairing, 1), "ingest_capacity_MB_per_s": round(capacity, 1),
            "load_MB_per_s": round(capacity / 2, 1), "batches": d["count"], "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"], "within_50ms": lat["within_50ms"], "identical": digests[0] == digests[1],
            "peak_rss_bytes": peak}


def _child(*args: str) -> dict[str, Any]:
    code = ("import json,sys; from dssync.bench import scale; from dssync.bench.core import _peak_rss_bytes; "
            "r = scale.main_step(sys.argv[1:]); r['peak_rss_bytes'] = _peak_rss_bytes(); "
            "print(scale.RESULT + json.dumps(r))")
    out = subprocess.run([sys.executable, "-P", "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChildRunError(f"the scale benchmark step {args[0]} failed ({out.returncode}): {last}")
    for line in out.stderr.splitlines():
        click.echo(line, err=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT)]
    try:
        result: dict[str, Any] = json.loads(lines[-1][len(RESULT):])
    except (IndexError, ValueError):
        raise ChildRunError(f"the scale benchmark step {args[0]} printed no result",
                            hint="rerun the step on its own to see its output") from None
    return result


def main_step(argv: list[str]) -> dict[str, Any]:
    """The child's entry point: ``build HOME SEGMENTS PROGRESS`` or ``STEP HOME INGEST_MB SAMPLES``."""
    if argv[0] == "build":
        return build_home(argv[1], int(argv[2]), argv[3] == "1")
    return step(argv[0], argv[1], int(argv[2]), int(argv[3]))


def measure_size(directory: str, segments: int, ingest_mb: int, samples: int, progress: bool,
                 verify: bool = True, pair_seconds: float = 30, ingest_runs: int = 1) -> dict[str, Any]:
    home = os.path.join(directory, f"scale-{segments}")
    shutil.rmtree(home, ignore_errors=True)
    built = _child("build", home, str(segments), "1" if progress else "0")
    out: dict[str, Any] = {"segments": segments, "events": built["events"]}
    out["verify"] = None
    for name in ("replay", "open", "latency", "ingest", *(("verify",) if verify else ())):
        if progress:
            click.echo(f"  {name} at {segments:,} segments ...", err=True)
        if name == "ingest":  # a short step: its figure is the median of ``ingest_runs``
            runs = [_child(name, home, str(ingest_mb), str(samples)) for _ in range(ingest_runs)]
            rates = [r["bytes"] / MB / r["seconds"] for r in runs]
            out[name] = {**runs[0], "MB_per_s_runs": [round(x, 1) for x in rates],
                         "MB_per_s": round(statistics.median(rates), 1),
                         "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs)}
        else:
            out[name] = _child(name, home, str(ingest_mb), str(samples))
    out["pair"] = None
    if pair_seconds > 0:
        if progress:
            click.echo(f"  pairing and replication at half load at {segments:,} segments ...", err=True)
        try:
            out["pair"] = pair_latency(directory, home, pair_seconds)
        except DssyncError as exc:  # a service that does not answer: this size failed, not the others
            raise ChildRunError(f"the pair step failed: {exc.message}", hint=exc.hint) from None
    out["log_bytes"] = _dir_bytes(os.path.join(home, "log"))
    out["index_bytes"] = out["replay"]["index_bytes"]
    out["index_bytes_per_segment"] = round(out["index_bytes"] / segments, 1)
    peak = max([out[s]["peak_rss_bytes"] for s in ("replay", "open", "ingest", "latency")]
               + list((out["pair"] or {}).get("peak_rss_bytes", {}).values()))
    out["peak_rss_bytes"] = peak
    out["peak_rss_bytes_per_segment"] = round(peak / segments, 1)
    out["replay_events_per_s"] = round(out["events"] / out["replay"]["seconds"])
    out["ingest_MB_per_s"] = out["ingest"]["MB_per_s"]
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(os.path.join(directory, "pair"), ignore_errors=True)
    return out


HEADLINE = (("replay_events_per_s",), ("ingest_MB_per_s",), ("latency", "p50_ms"), ("latency", "p99_ms"),
            ("latency", "checkpoint_ms"), ("open", "seconds"), ("open", "cold_seconds"), ("pair", "pairing_s"),
            ("pair", "p50_ms"), ("pair", "p99_ms"))
"""The figures of a size that ``--repeat`` gives as the median of its runs."""


def _at(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict) or doc.get(key) is None:
            return None
        doc = doc[key]
    return doc


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's report from its runs: the first run's, with each ``HEADLINE`` figure the
    median of the runs' and the peak memory the highest, and every run's figures in ``runs``."""
    out = copy.deepcopy(runs[0])
    out["runs"] = [{**{"/".join(p): v for p in HEADLINE if (v := _at(r, p)) is not None},
                    "peak_rss_bytes": r["peak_rss_bytes"]} for r in runs]
    for path in HEADLINE:
        values = [v for r in runs if (v := _at(r, path)) is not None]
        parent = _at(out, path[:-1]) if len(path) > 1 else out
        if values and isinstance(parent, dict):  # a step the first run did not make stays out
            parent[path[-1]] = statistics.median(values)
    out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    out["peak_rss_bytes_per_segment"] = round(out["peak_rss_bytes"] / out["segments"], 1)
    return out


def scale_report(sizes: list[int], ingest_mb: int, samples: int, directory: str | None,
                 progress: bool, verify: bool = True, pair_seconds: float = 30, repeat: int = 1,
                 ingest_runs: int = 1) -> dict[str, Any]:
    work = directory or tempfile.mkdtemp(prefix="dssync-scale-")
    measured: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    failed: dict[int, str] = {}
    try:
        for k in range(repeat):
            for n in sizes:
                if progress:
                    click.echo(f"size {n:,} segments" + (f", run {k + 1} of {repeat}" if repeat > 1 else ""), err=True)
                try:
                    measured[n].append(measure_size(work, n, ingest_mb, samples, progress, verify, pair_seconds,
                                                          ingest_runs))
                except ChildRunError as exc:  # reported with the sizes that worked, not instead of them
                    failed[n] = exc.message
    finally:
        if directory is None:
            shutil.rmtree(work, ignore_errors=True)
    runs: list[dict[str, Any]] = [combine_runs(measured[n]) if measured[n] else {"segments": n, "error": failed[n]}
                                  for n in sizes]
    for r in runs:
        if r["segments"] in failed and "error" not in r:
            r["failed_runs"] = repeat - len(measured[r["segments"]])
            r["failure"] = failed[r["segments"]]
    done = [r for r in runs if "error" not in r]
    if not done:
        raise ChildRunError(f"no size could be measured: {runs[0]['error']}")
    base = done[0]
    for r in done:
        r["vs_smallest"] = {
            "replay": round(r["replay_events_per_s"] / base["replay_events_per_s"], 3),
            "ingest": round(r["ingest_MB_per_s"] / base["ingest_MB_per_s"], 3),
            "apply_p99": round(r["latency"]["p99_ms"] / base["latency"]["p99_ms"], 3),
            "open": round(r["open"]["seconds"] / base["open"]["seconds"], 3),
        }
        if r["pair"] and base["pair"] and r["pair"]["p99_ms"] and base["pair"]["p99_ms"]:
            r["vs_smallest"]["replication_p99"] = round(r["pair"]["p99_ms"] / base["pair"]["p99_ms"], 3)
    return {"segment_bytes": SEGMENT_BYTES, "ingest_MB": ingest_mb, "ingest_runs": ingest_runs,
            "latency_samples": samples, "repeat": repeat, "sizes": runs}


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--sizes {text!r} is not a list of numbers", hint="e.g. --sizes 1e6,4e6,16e6") from None
    if not sizes or min(sizes) < 1000:
        raise UsageError("--sizes needs numbers of at least 1000 segments", hint="e.g. --sizes 1e6,4e6,16e6")
    return sorted(sizes)


@click.command("scale")
@click.option("--sizes", default="1e6,4e6,16e6,64e6", show_default=True,
              help="Store sizes in segments, comma-separated; each is compared with the smallest.")
@click.option("--ingest-mb", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="MB of new data ingested into each filled store.")
@click.option("--samples", type=click.IntRange(10, 100_000), default=400, show_default=True,
              help="Small appends timed for the apply latency.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Where to build the homes (default: a temporary directory).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Time 'dssync verify' of each store (the longest step by far at 64 M segments).")
@click.option("--pair-seconds", type=click.FloatRange(0, 3600), default=30, show_default=True,
              help="Seconds of half load on a pair whose master holds the filled store (0: no pair).")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Runs of each size, sizes in turn; each figure is the median of its runs.")
@click.option("--ingest-runs", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Ingests into each filled store, one after the other; the figure is their median.")
@click.option("--json", "as_json", is_flag=True)
def bench_scale(sizes: str, ingest_mb: int, samples: int, directory: str | None, verify: bool, pair_seconds: float,
                repeat: int, ingest_runs: int, as_json: bool) -> None:
    """The store at an appliance's size: replay, open, ingest, apply latency, verify, a pair's
    replication latency at half load, memory and disk, per size, against the smallest size.

    \b
    Example:
      dssync bench scale --sizes 1e6,4e6 --ingest-mb 64 --json
    """
    report = scale_report(_sizes(sizes), ingest_mb, samples, directory, progress=not as_json, verify=verify,
                          pair_seconds=pair_seconds, repeat=repeat, ingest_runs=ingest_runs)
    if as_json:
        emit_json(report)
        if any("error" in r for r in report["sizes"]):
            raise ChildRunError("a size could not be measured (its 'error' in the report)")
        return
    failed = False
    if repeat > 1:
        click.echo(f"medians of {repeat} runs of each size (peak RSS: the highest)")
    for r in report["sizes"]:
        if "error" in r:
            click.echo(f"{r['segments']:>12,} segments: failed: {r['error']}")
            failed = True
            continue
        v = r["vs_smallest"]
        click.echo(
            f"{r['segments']:>12,} segments: replay {r['replay_events_per_s']:>9,} ev/s ({v['replay']:.2f}x)  "
            f"ingest {r['ingest_MB_per_s']:>6} MB/s ({v['ingest']:.2f}x)  "
            f"apply p50/p99 {r['latency']['p50_ms']:.1f}/{r['latency']['p99_ms']:.1f} ms  "
            f"checkpoint {r['latency']['checkpoint_ms']:.0f} ms  "
            f"open {r['open']['seconds']:.2f} s ({r['open']['cold_seconds']:.2f} s cold)  "
            + (f"verify {r['verify']['seconds']:.1f} s  " if r["verify"] else "verify skipped  ")
            + (f"pairing {r['pair']['pairing_s']:.0f} s, replication p50/p99 {r['pair']['p50_ms']}/"
               f"{r['pair']['p99_ms']} ms at {r['pair']['load_MB_per_s']} MB/s  " if r["pair"] else "") +
            f"peak RSS {r['peak_rss_bytes'] / MB:.0f} MB ({r['peak_rss_bytes_per_segment']} B/seg)  "
            f"index {r['index_bytes'] / MB:.0f} MB ({r['index_bytes_per_segment']} B/seg)")
    if failed:
        raise ChildRunError("a size could not be measured (above)")
