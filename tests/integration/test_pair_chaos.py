"""The pair under failure: processes killed at random, link cuts, a retention gap."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

from dssync.log.filelog import FileLog
from dssync.schemas import decode
from tests.pair import Node, dss, make_pair, release, started_pair, wait_alarm, wait_converged


def _ingest_loop(node: Node, paths: list[str], stop: threading.Event, errors: list[str]) -> None:
    """Sustained traffic; an ingest refused while the service is down (the home locked by a
    service starting or stopping: 6; the service gone mid-request: 10) is simply sent again later,
    as traffic would be, so every path is eventually ingested. Any other exit, or a traceback, is
    a failure."""
    i = 0
    while not stop.is_set() or i < len(paths):
        p = dss("ingest", node.home, paths[i % len(paths)], "--json", check=False)
        if "Traceback" in p.stderr:
            errors.append(p.stderr)
            return
        if p.returncode == 0:
            i += 1
        elif p.returncode not in (6, 10):
            errors.append(f"exit {p.returncode}: {p.stderr}")
            return
        else:
            time.sleep(0.1)
        if i >= len(paths) and stop.is_set():
            return


def _assert_mirror_is_exact_copy(source_home: str, mirror_dir: str) -> None:
    src, mirror = FileLog(os.path.join(source_home, "log")), FileLog(mirror_dir)
    start = mirror.start_offset()
    copies = [b.raw for b in mirror.batches(start)]
    assert copies == [b.raw for b in src.batches(start)][: len(copies)]
    assert mirror.end_offset() == src.end_offset()


def _segment_events(home: str) -> list[bytes]:
    log = FileLog(os.path.join(home, "log"))
    return [decode(r.value)["ref"] for r in log.read(log.start_offset(), 10_000_000)
            if decode(r.value)["type"] == "SegmentStored"]


def test_services_and_mirrors_killed_at_random_during_sustained_ingest_converge(
        tmp_path: Path, running: list[Node]) -> None:
    rng = random.Random(42)
    a, b = make_pair(tmp_path)
    traffic_a = release(tmp_path, 1, 2_500_000, 4)
    traffic_b = release(tmp_path, 2, 2_500_000, 4) + traffic_a[:2]  # overlapping content
    running.extend((a, b))
    for n in (a, b):
        n.start_all()
    stop = threading.Event()
    errors: list[str] = []
    threads = [threading.Thread(target=_ingest_loop, args=(n, t, stop, errors))
               for n, t in ((a, traffic_a), (b, traffic_b))]
    for t in threads:
        t.start()
    kills = 0
    deadline = time.time() + 25
    while time.time() < deadline:
        time.sleep(rng.uniform(0.2, 1.5))
        victim = rng.choice((a, b))
        what = rng.choice(("serve", "mirror", "mirror"))
        victim.kill(what)
        kills += 1
        time.sleep(rng.uniform(0.0, 0.5))
        victim.start(what)
    stop.set()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    for n in (a, b):
        n.start_all()
    wait_converged(a, b, timeout=120)
    assert kills >= 10
    # no gap and no duplicate: each mirror is a byte-identical copy of its source log
    _assert_mirror_is_exact_copy(a.home, os.path.join(b.home, "mirror", "sha"))
    _assert_mirror_is_exact_copy(b.home, os.path.join(a.home, "mirror", "shb"))
    for n in (a, b):
        assert dss("verify", n.home).returncode == 0  # each store is the projection of its logs
        refs = _segment_events(n.home)
        assert len(refs) == len(set(refs))  # no segment stored twice by its own appliance
        for what in ("serve", "mirror"):  # killed many times, never failed on its own
            assert "Traceback" not in n.log(what), n.log(what)[-3000:]


def test_link_cuts_of_varying_length_then_both_stores_converge(tmp_path: Path, running: list[Node]) -> None:
    a, b = started_pair(tmp_path, running)
    r = release(tmp_path, 5, 2_000_000, 6)
    wait_converged(a, b)
    for cut_s, (pa, pb) in zip((0.2, 1.0, 3.0), ((r[0], r[1]), (r[2], r[3]), (r[4], r[5])), strict=True):
        a.kill("mirror", signal.SIGKILL)
        b.kill("mirror", signal.SIGKILL)
        a.ingest(pa)  # both keep optimizing while the link is down
        b.ingest(pb)
        time.sleep(cut_s)
        a.start("mirror")
        b.start("mirror")
        wait_converged(a, b)


def test_a_retention_gap_is_detected_counted_and_repaired(tmp_path: Path, running: list[Node]) -> None:
    a, b = make_pair(tmp_path, extra_a=("--segment-bytes", "262144", "--retention-bytes", "600000"))
    r = release(tmp_path, 8, 1_500_000, 1)
    for i in range(4):  # new data, none of it repeated, so the log must grow past its retention
        (tmp_path / f"new{i}.bin").write_bytes(random.Random(i).randbytes(700_000))
        r.append(str(tmp_path / f"new{i}.bin"))
    running.extend((a, b))
    for n in (a, b):
        n.start_all()
    a.ingest(r[0])
    wait_converged(a, b)
    b.kill("mirror")
    mirrored_to = FileLog(os.path.join(b.home, "mirror", "sha")).end_offset()
    for p in r[1:]:
        a.ingest(p)
    src = FileLog(os.path.join(a.home, "log"))
    assert src.start_offset() > mirrored_to  # retention removed what the mirror had not copied
    expected_events = src.start_offset() - mirrored_to
    b.start("mirror")
    wait_converged(a, b, timeout=90)
    m = b.status()["mirrors"]["sha"]
    assert m["not_copied_events"] == expected_events
    assert m["gaps"][0]["kind"] == "retention" and m["not_copied_bytes"] > 0
    assert m["bootstraps"] >= 1
    doc = dss("status", b.home).stdout
    assert f"{expected_events} not copied" in doc
    gap = wait_alarm(b.home, "retention_gap")
    assert f"{expected_events} events" in gap["evidence"] and gap["path"] == "mirror:sha"
