"""``dssync bench``: the system and its baseline side by side, in one run, with ratios.

Each case runs in a fresh Python process so that its peak resident memory is its own.
Nothing here asserts a speed: it measures and prints (human, or ``--json``).

``bench core`` cases:

* ``ingest-new``: all-new incompressible data through the optimization path, against the
  unavoidable work on the same bytes: chunk and hash with the same chunker and hash, plus
  writing the input once with the same fsync policy.
* ``ingest-repeat``: successive versions of a synthetic release (heavy repetition), same
  baseline; the savings are printed too.
* ``replay``: a log of ``--events`` events replayed into an empty store (what ``dssync
  replay`` runs), against reading the same log files raw plus bulk-inserting the same index
  rows, sorted by reference (DuckDB's fastest order), into DuckDB from one Arrow table.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import click

from dssync.errors import ChildRunError
from dssync.layout import source_name
from dssync.tools.output import emit_json

MB = 1_000_000


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _baseline_ingest(data: bytes, directory: str, fsync: str, window: int) -> float:
    """Chunk + hash with the same chunker and hash, and write the input once; seconds."""
    from dssync.producers.chunker import Chunker, ChunkerSpec
    from dssync.producers.hierarchy import segment_ref

    chunker = Chunker(ChunkerSpec())
    path = os.path.join(directory, "baseline.bin")
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pending: list[bytes] = []
        size = 0
        for view in chunker.cut(io.BytesIO(data)):
            segment_ref(view)
            pending.append(bytes(view))
            size += len(view)
            if size >= window:
                os.write(fd, b"".join(pending))
                if fsync == "always":
                    os.fdatasync(fd)
                pending, size = [], 0
        if pending:
            os.write(fd, b"".join(pending))
        if fsync != "never":
            os.fdatasync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _system_ingest(streams: list[bytes], directory: str, fsync: str) -> tuple[float, dict[str, Any]]:
    from dssync.appliance import Appliance
    from dssync.producers.optimizer import IngestStats

    home = os.path.join(directory, "home")
    Appliance.create(home, "bench", "bench", "0", fsync=fsync).close()
    total = IngestStats()
    with Appliance(home) as app:
        t0 = time.perf_counter()
        for s in streams:
            total.add(app.ingest(io.BytesIO(s)))
        app.log.flush()
        elapsed = time.perf_counter() - t0
    return elapsed, total.as_dict()


def run_case(case: str, size: int, events: int, fsync: str) -> dict[str, Any]:
    """Run one side of one case in this process; return its figures."""
    from dssync.bench import workload

    directory = tempfile.mkdtemp(prefix="dssync-bench-")
    try:
        if case in ("ingest-new", "ingest-new-baseline"):
            data = workload.random_bytes(7, size)
            if case.endswith("baseline"):
                secs = _baseline_ingest(data, directory, fsync, 8 << 20)
                return {"seconds": secs, "bytes": len(data)}
            secs, stats = _system_ingest([data], directory, fsync)
            return {"seconds": secs, "bytes": len(data), "stats": stats}
        if case in ("ingest-repeat", "ingest-repeat-baseline"):
            streams = list(workload.versions(11, size // 4, 4))
            nbytes = sum(len(s) for s in streams)
            if case.endswith("baseline"):
                secs = _baseline_ingest(b"".join(streams), directory, fsync, 8 << 20)
                return {"seconds": secs, "bytes": nbytes}
            secs, stats = _system_ingest(streams, directory, fsync)
            return {"seconds": secs, "bytes": nbytes, "stats": stats}
        if case in ("replay", "replay-baseline"):
            return _replay_case(case.endswith("baseline"), events, directory)
        raise click.UsageError(f"unknown case {case}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _synthetic_log(directory: str, events: int) -> str:
    """A log of ``events`` events: small segments, runs over them, and some evictions."""
    from dssync.log.filelog import FileLog
    from dssync.producers.hierarchy import group_ref, segment_ref
    from dssync.schemas import encode, encode_segment_stored, origin_field

    path = os.path.join(directory, "log")
    log = FileLog(path, writer=True, create=True, fsync="never")
    of = origin_field("bench")
    hlc = 1 << 40
    batch: list[bytes] = []
    recent: list[bytes] = []
    for i in range(events):
        hlc += 1
        if i % 20 == 19:
            batch.append(encode("ReferenceStored", {"origin": "bench", "hlc": hlc, "ref": group_ref(1, recent),
                                                    "level": 1, "size": 64 * len(recent),
                                                    "children": b"".join(recent)}))
            recent = []
        elif i % 50 == 7 and recent:
            batch.append(encode("SegmentEvicted", {"origin": "bench", "hlc": hlc, "ref": recent[0]}))
        else:
            data = i.to_bytes(8, "little") * 8
            ref = segment_ref(data)
            recent.append(ref)
            batch.append(encode_segment_stored(of, hlc, ref, data))
        if len(batch) >= 2000:
            log.append(batch)
            batch = []
    if batch:
        log.append(batch)
    log.close()
    return path


def _replay_case(baseline: bool, events: int, directory: str) -> dict[str, Any]:
    from dssync.consumers.store import ROW_SCHEMA, Store
    from dssync.log.filelog import FileLog

    logdir = _synthetic_log(directory, events)
    log = FileLog(logdir)
    nbytes = log.size_bytes()
    if baseline:
        import duckdb
        import pyarrow as pa

        # The same index rows, prepared before the clock starts and sorted by reference (the
        # order DuckDB's index takes fastest): the limit is read + insert.
        store = Store(os.path.join(directory, "probe"), create=True, fsync=False)
        store.apply(source_name("bench"), log.read(0, events + 1))
        rows = store.con.sql("SELECT * FROM refs ORDER BY ref").to_arrow_table().cast(ROW_SCHEMA)
        store.close()
        assert isinstance(rows, pa.Table)
        con = duckdb.connect(os.path.join(directory, "baseline.duckdb"))
        con.execute("CREATE TABLE refs (ref BLOB PRIMARY KEY, level UTINYINT, size UBIGINT, live BOOLEAN, "
                    "hlc UBIGINT, origin VARCHAR, pack INTEGER, pos UBIGINT, children BLOB)")
        t0 = time.perf_counter()
        for base in log.segments():
            with open(os.path.join(logdir, f"{base:020d}.log"), "rb") as f:
                while f.read(8 << 20):
                    pass
        con.register("rows", rows)
        con.execute("INSERT INTO refs SELECT * FROM rows")
        con.close()
        secs = time.perf_counter() - t0
        return {"seconds": secs, "events": events, "rows": rows.num_rows, "log_bytes": nbytes}
    from dssync.consumers.consumer import replay

    # what 'dssync replay' runs: segments of batches stored as is are read in place from the log
    store = Store(os.path.join(directory, "store"), create=True, fsync=True, resident=[logdir])
    t0 = time.perf_counter()
    replay(log, store, source_name("bench"), 0)
    secs = time.perf_counter() - t0
    digest = store.digest()
    store.close()
    return {"seconds": secs, "events": events, "rows": digest.rows, "log_bytes": nbytes}


def _spawn(case: str, size: int, events: int, fsync: str) -> dict[str, Any]:
    code = ("import json,sys; from dssync.bench.core import run_case, _peak_rss_bytes; "
            "r = run_case(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]); "
            "r['peak_rss_bytes'] = _peak_rss_bytes(); print(json.dumps(r))")
    # -P: the installed dssync, never a dssync/ folder in the working directory
    out = subprocess.run([sys.executable, "-P", "-c", code, case, str(size), str(events), fsync],
                         capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChildRunError(f"the {case} benchmark run failed ({out.returncode}): {last}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _rate(case: str, events: int, run: dict[str, Any]) -> float:
    return float(events / run["seconds"] if case == "replay" else run["bytes"] / MB / run["seconds"])


def core_report(size: int, events: int, fsync: str, repeat: int = 3, progress: bool = True) -> dict[str, Any]:
    """Each case ``repeat`` times, system and baseline alternating; the median run of each side
    is the figure (the machines are shared: one run of either side can be off by a third)."""
    report: dict[str, Any] = {"fsync": fsync, "repeat": repeat, "cases": {}}
    for case in ("ingest-new", "ingest-repeat", "replay"):
        runs: dict[str, list[dict[str, Any]]] = {"system": [], "baseline": []}
        for i in range(repeat):
            if progress:
                click.echo(f"running {case} ({i + 1}/{repeat}) ...", err=True)
            runs["system"].append(_spawn(case, size, events, fsync))
            runs["baseline"].append(_spawn(case + "-baseline", size, events, fsync))
        unit = "events_per_s" if case == "replay" else "MB_per_s"
        rates = {side: sorted(_rate(case, events, r) for r in rs) for side, rs in runs.items()}
        sys_rate, base_rate = (statistics.median(rates[side]) for side in ("system", "baseline"))
        sysr = runs["system"][0]
        entry: dict[str, Any] = {
            "unit": unit, "system": round(sys_rate, 1), "baseline": round(base_rate, 1),
            "ratio": round(sys_rate / base_rate, 3),
            "system_runs": [round(x, 1) for x in rates["system"]],
            "baseline_runs": [round(x, 1) for x in rates["baseline"]],
            "system_peak_rss_MB": round(max(r["peak_rss_bytes"] for r in runs["system"]) / MB, 1),
            "baseline_peak_rss_MB": round(max(r["peak_rss_bytes"] for r in runs["baseline"]) / MB, 1),
        }
        if "stats" in sysr:
            entry["savings"] = sysr["stats"]["savings"]
            entry["bytes"] = sysr["bytes"]
        if case == "replay":
            entry["log_bytes"] = sysr["log_bytes"]
        report["cases"][case] = entry
    return report


@click.command("core")
@click.option("--size", type=int, default=256 * MB, show_default=True, help="Bytes of input per ingest case.")
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Events in the replay case.")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="always", show_default=True)
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs of each side per case; the medians are compared.")
@click.option("--json", "as_json", is_flag=True)
def bench_core(size: int, events: int, fsync: str, repeat: int, as_json: bool) -> None:
    """Ingest (new and repetitive data) and replay, against their unavoidable-work baselines.

    \b
    Example:
      dssync bench core --json
      dssync bench core --size 64000000 --events 200000
    """
    report = core_report(size, events, fsync, repeat, progress=not as_json)
    if as_json:
        emit_json(report)
        return
    click.echo(f"fsync policy: {fsync}; median of {repeat} runs each")
    for name, c in report["cases"].items():
        line = (f"{name:<14} system {c['system']:>10} {c['unit']}  baseline {c['baseline']:>10}  "
                f"ratio {c['ratio']:.3f}  peak RSS {c['system_peak_rss_MB']} MB vs {c['baseline_peak_rss_MB']} MB")
        if "savings" in c:
            line += f"  savings {c['savings'] * 100:.1f}%"
        click.echo(line)

