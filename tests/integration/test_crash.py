"""Real processes killed with SIGKILL at random moments: nothing lost, nothing doubled.

Each test runs the real command line in a child process, kills it mid-flight, restarts,
and checks the home with verify and against a clean run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dssync.bench import workload
from dssync.layout import log_dir
from dssync.log.filelog import FileLog
from dssync.process import command
from dssync.schemas import decode
from tests.conftest import run_dssync

MakeHome = Callable[..., str]


def _inputs(tmp_path: Path, count: int, size: int) -> list[str]:
    paths = []
    for i, data in enumerate(workload.versions(21, size, count)):
        p = tmp_path / f"v{i}.tar"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def _kill_at_random(args: list[str], rng: random.Random, max_delay: float) -> int:
    """Run ``dssync ARGS`` and SIGKILL it after a random delay; its exit status. A run that
    ended before the kill must have succeeded, without a traceback."""
    proc = subprocess.Popen(command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(rng.uniform(0.05, max_delay))
    proc.send_signal(signal.SIGKILL)
    _out, err = proc.communicate(timeout=600)
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0 and b"Traceback" not in err, err.decode(errors="replace")
    return proc.returncode


def _live_segments(home: str) -> dict[str, int]:
    doc = json.loads(run_dssync("inspect", "store", home, "--refs", "1000000", "--json").stdout)
    return {r["ref"]: r["size"] for r in doc["refs"] if r["live"] and r["level"] == 0}


def _segment_events_per_ref(home: str) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for rec in FileLog(log_dir(home)).read(0, 10_000_000):
        ev = decode(rec.value)
        if ev["type"] == "SegmentStored":
            counts[ev["ref"]] = counts.get(ev["ref"], 0) + 1
    return counts


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_ingest_killed_at_random_moments_loses_and_doubles_nothing(
        make_home: MakeHome, tmp_path: Path, fsync: str) -> None:
    rng = random.Random(hash(fsync) & 0xFFFF)
    inputs = _inputs(tmp_path, 6, 6_000_000)
    home = make_home("sh1", "--fsync", fsync)
    clean = make_home("clean", "--fsync", "never")
    run_dssync("ingest", clean, *inputs)
    start = time.time()
    run_dssync("ingest", make_home("probe", "--fsync", fsync), inputs[0])
    one_file = time.time() - start  # a whole child process: start-up plus one input
    kills = attempts = 0
    done: set[str] = set()
    while (kills < 4 or attempts < len(inputs)) and attempts < 16:
        path = inputs[attempts % len(inputs)]
        attempts += 1
        if _kill_at_random(["ingest", home, path], rng, one_file * 1.1) == -signal.SIGKILL:
            kills += 1
        else:
            done.add(path)  # reported done: it must all be there, whatever the later kills
        # after every kill the store is the exact projection of what the log kept
        assert run_dssync("verify", home).returncode == 0
    assert kills >= 4  # the runs really were killed mid-flight
    rec = json.loads(run_dssync("recover", home, "--json").stdout)
    assert rec["log_end_offset"] > 0
    for path in sorted(done):  # every segment of an acknowledged ingest is known: nothing new to store
        assert json.loads(run_dssync("ingest", home, path, "--json").stdout)["savings"] > 0.999
    run_dssync("ingest", home, *inputs)  # the operator sends the traffic again
    verify = json.loads(run_dssync("verify", home, "--json").stdout)
    assert verify["ok"] and verify["apply_lag"] == 0
    assert _live_segments(home) == _live_segments(clean)  # nothing lost
    assert set(_segment_events_per_ref(home).values()) == {1}  # nothing stored twice
    status = json.loads(run_dssync("status", home, "--json").stdout)
    assert status["store"]["pack_bytes"] == status["store"]["live_segment_bytes"]  # no stray bytes in packs
    before = json.loads(run_dssync("inspect", "store", home, "--json").stdout)["digest"]
    assert json.loads(run_dssync("replay", home, "--json").stdout)["digest"] == before


def test_replay_killed_at_random_moments_leaves_a_working_store(make_home: MakeHome, tmp_path: Path) -> None:
    rng = random.Random(7)
    home = make_home("sh1", "--fsync", "never")
    run_dssync("ingest", home, *_inputs(tmp_path, 4, 8_000_000))
    digest = json.loads(run_dssync("inspect", "store", home, "--json").stdout)["digest"]
    start = time.time()
    run_dssync("replay", home)
    full_run = time.time() - start
    for _ in range(6):
        _kill_at_random(["replay", home], rng, full_run * 1.2)
        assert run_dssync("verify", home).returncode == 0
        assert json.loads(run_dssync("inspect", "store", home, "--json").stdout)["digest"] == digest
    assert json.loads(run_dssync("replay", home, "--json").stdout)["digest"] == digest
    assert not os.path.exists(os.path.join(home, "store.replay"))
