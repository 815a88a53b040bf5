"""Damage in the middle of a paired appliance's logs is repaired from its peer by `dssync recover`:
what the log held before the damage stays, what the peer holds comes back, nothing is lost; and
`dssync replay` of a paired appliance rebuilds every row, its peer's included."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dssync.layout import log_dir, mirror_dir
from dssync.log import segment as seg
from tests.pair import Node, dss, make_pair, release, wait_converged

SMALL = ("--segment-bytes", "65536")  # several segments: the damage falls mid-log


def _converged_pair(tmp_path: Path, running: list[Node]) -> tuple[Node, Node, dict[str, object]]:
    """A pair that took traffic both ways and converged, then stopped; the master's refs."""
    a, b = make_pair(tmp_path, extra_a=SMALL, extra_b=SMALL)
    running.extend((a, b))
    for n in (a, b):
        n.start_all()
    wait_converged(a, b)  # paired first: the backup mirrors the master's traffic, not a snapshot of it
    r = release(tmp_path, 7, 1_500_000, 3)
    a.ingest(r[0])
    b.ingest(r[1], r[2])
    wait_converged(a, b, timeout=120)
    for n in (a, b):
        n.stop_all()
    return a, b, _refs(a.home)


def _refs(home: str) -> dict[str, object]:
    doc = json.loads(dss("inspect", "store", home, "--refs", "100000000", "--json").stdout)
    return {r["ref"]: (r["size"], r["level"]) for r in doc["refs"]}


def _flip_mid_log(directory: str) -> int:
    """Flip a byte inside the first batch of a segment that is neither the first nor the last;
    that segment's base offset."""
    bases = seg.list_segments(directory)
    assert len(bases) >= 3, bases
    base = next(b for b in bases[1:-1] if os.path.getsize(seg.segment_path(directory, b)) > 64)
    with open(seg.segment_path(directory, base), "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0x10]))
    return base


def _error(p: object) -> tuple[str, str]:
    lines = [ln for ln in getattr(p, "stderr", "").splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    return lines[0], lines[1]


def _recovered_with_the_peer_up(a: Node, b: Node, refs: dict[str, object]) -> dict[str, object]:
    """Run recover on ``a`` while ``b``'s service runs; it must verify and have lost nothing."""
    b.start("serve")
    doc: dict[str, object] = json.loads(dss("recover", a.home, "--json").stdout)
    b.stop_all()
    assert json.loads(dss("verify", a.home, "--json").stdout)["ok"]
    assert _refs(a.home) == refs  # nothing lost
    return doc


def _syncs_on(tmp_path: Path, a: Node, b: Node, seed: int) -> None:
    """The pair, restarted, takes new traffic and converges."""
    a.start_all()
    b.start_all()
    a.ingest(release(tmp_path, seed, 1_000_000, 1)[0])
    wait_converged(a, b, timeout=120)


def test_damage_mid_own_log_is_taken_back_from_the_peers_mirror(tmp_path: Path, running: list[Node]) -> None:
    a, b, refs = _converged_pair(tmp_path, running)
    end = json.loads(dss("inspect", "log", a.home, "--json").stdout)["end_offset"]
    base = _flip_mid_log(log_dir(a.home))
    p = dss("verify", a.home, check=False)
    assert p.returncode != 0 and f"'dssync recover {a.home}'" in _error(p)[1]
    # the peer is down: the cut is made, nothing is invented, and the error says to try again
    p = dss("recover", a.home, check=False)
    error, hint = _error(p)
    assert p.returncode == 4 and "the peer did not give back what was cut" in error
    assert f"'dssync recover {a.home}'" in hint and f"'dssync replay {a.home}'" in hint
    doc = _recovered_with_the_peer_up(a, b, refs)
    assert doc["records_from_peer"] >= end - base and doc["log_end_offset"] >= end
    # the log holds the same batches as before the damage: the peer's mirror is a prefix of it
    _syncs_on(tmp_path, a, b, 8)


def test_damage_the_peers_mirror_never_held_comes_back_as_a_snapshot_of_its_store(tmp_path: Path,
                                                                                  running: list[Node]) -> None:
    a, b, refs = _converged_pair(tmp_path, running)
    first = seg.segment_path(log_dir(a.home), seg.list_segments(log_dir(a.home))[0])
    with open(first, "r+b") as f:  # offset 0: before what the backup mirrored (it began from a snapshot)
        f.seek(30)
        f.write(b"\0" * 8)
    doc = _recovered_with_the_peer_up(a, b, refs)
    assert doc["records_from_peer"] == 0 and doc["snapshot_events"] > 0
    # the backup finds the master's log shorter than its mirror of it and starts that mirror again
    _syncs_on(tmp_path, a, b, 9)
    assert b.status()["mirrors"]["sha"]["bootstraps"] >= 2


def test_damage_mid_mirror_log_is_copied_again_from_the_peer(tmp_path: Path, running: list[Node]) -> None:
    a, b, refs = _converged_pair(tmp_path, running)
    _flip_mid_log(mirror_dir(a.home, "shb"))
    p = dss("verify", a.home, check=False)
    assert p.returncode != 0 and f"'dssync recover {a.home}'" in _error(p)[1]
    # the peer is down: the mirror log is cut, the store keeps every row, and verify says what is missing
    doc = json.loads(dss("recover", a.home, "--json").stdout)
    assert doc["mirrors"]["shb"]["bytes_cut"] > 0 and doc["mirrors"]["shb"]["pending"]
    assert _refs(a.home) == refs
    p = dss("verify", a.home, check=False)
    assert p.returncode != 0 and "to be copied again" in p.stdout and "'dssync recover" in _error(p)[1]
    b.start("serve")
    doc = json.loads(dss("recover", a.home, "--json").stdout)
    b.stop_all()
    assert doc["mirrors"]["shb"]["pending"] is None
    assert json.loads(dss("verify", a.home, "--json").stdout)["ok"]
    assert _refs(a.home) == refs


def test_replay_of_a_paired_backup_rebuilds_the_snapshot_and_mirrored_rows_too(tmp_path: Path,
                                                                               running: list[Node]) -> None:
    _a, b, refs = _converged_pair(tmp_path, running)
    before = json.loads(dss("status", b.home, "--json").stdout)["store"]
    assert _refs(b.home) == refs and any(".snapshot.applied-" in n for n in os.listdir(os.path.join(b.home, "mirror")))
    dss("replay", b.home)
    after = json.loads(dss("status", b.home, "--json").stdout)["store"]
    assert _refs(b.home) == refs  # the master's snapshot and log, and the backup's own log
    assert after["offsets"] == before["offsets"]
    assert json.loads(dss("verify", b.home, "--json").stdout)["ok"]
