"""Real processes killed at named crash points inside the write paths (``dssync.crashpoint``).

Each case arms one point for one child process, which dies there by SIGKILL: a torn log
batch, a batch written but not synced, the log durable but the store not committed, a torn
pack write, segment bytes synced but the DuckDB transaction not run, a mirror transfer
written but not synced. After it: the home verifies, the traffic sent again is stored once,
and the store is what a run that was never killed holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dssync.bench import workload
from dssync.crashpoint import ENV
from dssync.layout import log_dir
from dssync.log.filelog import FileLog
from dssync.process import command
from dssync.schemas import decode
from tests.conftest import run_dssync
from tests.pair import Node, started_pair, wait_converged

MakeHome = Callable[..., str]
CASES = [("log.torn-write", "always"), ("log.written", "always"), ("ingest.log-durable", "always"),
         ("store.staged", "always"), ("packs.torn-write", "never"), ("store.staged", "never")]


def _inputs(tmp_path: Path) -> list[str]:
    paths = []
    for i, data in enumerate(workload.versions(33, 3_000_000, 3)):
        p = tmp_path / f"v{i}.tar"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def _digest(home: str) -> str:
    return str(json.loads(run_dssync("inspect", "store", home, "--json").stdout)["digest"])


def _live(home: str) -> dict[str, int]:
    doc = json.loads(run_dssync("inspect", "store", home, "--refs", "1000000", "--json").stdout)
    return {r["ref"]: r["size"] for r in doc["refs"] if r["live"] and r["level"] == 0}


@pytest.mark.parametrize(("point", "fsync"), CASES)
def test_an_ingest_killed_at_a_crash_point_recovers_to_what_a_clean_run_holds(
        make_home: MakeHome, tmp_path: Path, point: str, fsync: str) -> None:
    inputs = _inputs(tmp_path)
    clean = make_home("clean", "--fsync", fsync)
    run_dssync("ingest", clean, *inputs)
    home = make_home("sh1", "--fsync", fsync)
    killed = run_dssync("ingest", home, *inputs, check=False, env={ENV: f"{point}:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()  # it died at the point
    report = json.loads(run_dssync("verify", home, "--json").stdout)  # the store is what the log kept
    assert report["ok"], report["problems"]
    run_dssync("ingest", home, *inputs)  # the traffic sent again
    assert json.loads(run_dssync("verify", home, "--json").stdout)["ok"]
    assert _live(home) == _live(clean)  # nothing lost
    counts: dict[bytes, int] = {}
    for rec in FileLog(log_dir(home)).read(0, 10_000_000):
        ev = decode(rec.value)
        if ev["type"] == "SegmentStored":
            counts[ev["ref"]] = counts.get(ev["ref"], 0) + 1
    assert set(counts.values()) == {1}  # nothing stored twice
    status = json.loads(run_dssync("status", home, "--json").stdout)
    if fsync == "never":  # segments in packs (with fsync on, new ones stay in the log files)
        assert status["store"]["pack_bytes"] == status["store"]["live_segment_bytes"]  # no torn bytes kept


def test_a_mirror_killed_between_its_write_and_its_fsync_resumes_exactly(tmp_path: Path, running: list[Node]) -> None:
    a, b = started_pair(tmp_path, running)
    b.kill("mirror")
    for p in _inputs(tmp_path):
        a.ingest(p)
    with open(Path(b.logs) / "shb.mirror.log", "ab") as log:
        p = subprocess.run([*command(), "mirror", b.home], stdout=log, stderr=log, timeout=300,
                           env={**os.environ, ENV: "mirror.written:2"})
    assert p.returncode == -signal.SIGKILL
    b.start("mirror")
    wait_converged(a, b)
    src, mirror = FileLog(os.path.join(a.home, "log")), FileLog(os.path.join(b.home, "mirror", "sha"))
    start = mirror.start_offset()
    assert [x.raw for x in mirror.batches(start)] == [x.raw for x in src.batches(start)]
    assert "Traceback" not in b.log("mirror")
