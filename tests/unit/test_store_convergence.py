"""The store's apply is idempotent and order-independent, and exactly-once per source offset."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dssync.consumers.store import Store
from dssync.log.base import LogRecord
from dssync.schemas import encode, encode_segment_stored, origin_field

SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None  # many tiny DuckDB commits: keep them in RAM


def _ref(i: int) -> bytes:
    return hashlib.sha256(b"seg%d" % i).digest()[:16]


@st.composite
def event_logs(draw: st.DrawFn) -> dict[str, list[bytes]]:
    """Two appliances' logs over a small shared set of references, with clock ties and resets."""
    logs: dict[str, list[bytes]] = {}
    for origin in ("sh1", "sh2"):
        hlc = draw(st.integers(1, 50))
        values = []
        for _ in range(draw(st.integers(0, 16))):
            hlc += draw(st.integers(1, 3))  # an appliance's clock only grows; across appliances ties happen
            ref_i = draw(st.integers(0, 6))
            kind = draw(st.sampled_from(["stored", "stored", "evicted", "group", "reset"]))
            if kind == "stored":
                values.append(encode_segment_stored(origin_field(origin), hlc, _ref(ref_i), b"data%d" % ref_i))
            elif kind == "evicted":
                values.append(encode("SegmentEvicted", {"origin": origin, "hlc": hlc, "ref": _ref(ref_i)}))
            elif kind == "group":
                kids = [_ref(ref_i), _ref((ref_i + 1) % 7)]
                values.append(encode("ReferenceStored", {"origin": origin, "hlc": hlc, "ref": _ref(100 + ref_i),
                                                         "level": 1, "size": 10, "children": b"".join(kids)}))
            else:
                values.append(encode("StoreReset", {"origin": origin, "hlc": hlc, "store_id": f"s{hlc}"}))
        logs[origin] = values
    return logs


def _kept_as_counted(store: Store) -> str:
    """The digest and counts the store keeps as it commits, checked against its rows counted
    by a scan; the digest."""
    kept = store.digest()
    assert kept == store.digest_of_rows()
    row = store.con.execute(
        "SELECT count(*), count(*) FILTER (live), count(*) FILTER (live AND level = 0), "
        "coalesce(sum(size) FILTER (live AND level = 0), 0), count(*) FILTER (level > 0 AND live) FROM refs"
    ).fetchall()[0]
    st = store.stats()
    assert (st["rows"], st["live_refs"], st["live_segments"], st["live_segment_bytes"], st["live_higher_refs"]) == row
    return kept.value


def _apply_schedule(logs: dict[str, list[bytes]], rng: random.Random, duplicate: bool) -> str:
    """Apply both logs to a fresh store in a random interleaving of random-sized chunks,
    replaying chunks again at random (as a crash before the offset commit would)."""
    d = tempfile.mkdtemp(dir=SCRATCH)
    try:
        store = Store(d, create=True, fsync=False)
        pos = {o: 0 for o in logs}
        while any(pos[o] < len(logs[o]) for o in logs):
            o = rng.choice([o for o in logs if pos[o] < len(logs[o])])
            n = rng.randint(1, 5)
            start = pos[o]
            if duplicate and start > 0 and rng.random() < 0.3:
                start = rng.randint(0, start)  # re-deliver records already applied
            chunk = [LogRecord(i, 0, logs[o][i]) for i in range(start, min(len(logs[o]), start + n))]
            store.apply(f"log:{o}", chunk)
            pos[o] = max(pos[o], start + len(chunk))
        digest = _kept_as_counted(store)
        store.close()
        reopened = Store(d, fsync=False)  # the reference index saved at close, with its tally
        assert reopened.index_loaded and reopened.digest().value == digest
        reopened.close()
        return digest
    finally:
        shutil.rmtree(d)


def _apply_in_arbitrary_order(logs: dict[str, list[bytes]], rng: random.Random) -> str:
    """Apply every event alone, in any global order, each as its own source (no offset help)."""
    d = tempfile.mkdtemp(dir=SCRATCH)
    try:
        store = Store(d, create=True, fsync=False)
        everything = [v for vals in logs.values() for v in vals]
        rng.shuffle(everything)
        everything += rng.sample(everything, len(everything) // 3)  # and some twice
        for i, v in enumerate(everything):
            store.apply(f"single:{i}", [LogRecord(0, 0, v)])
        digest = _kept_as_counted(store)
        store.close()
        return digest
    finally:
        shutil.rmtree(d)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_logs(), st.integers(0, 2**32))
def test_any_interleaving_and_duplication_gives_the_same_digest(logs: dict[str, list[bytes]], seed: int) -> None:
    rng = random.Random(seed)
    reference = _apply_schedule(logs, random.Random(0), duplicate=False)
    assert _apply_schedule(logs, rng, duplicate=True) == reference
    assert _apply_in_arbitrary_order(logs, rng) == reference


def test_records_below_the_committed_offset_are_skipped(tmp_path: Path) -> None:
    store = Store(str(tmp_path), create=True, fsync=False)
    values = [encode_segment_stored(origin_field("sh1"), i + 1, _ref(i), b"x" * 20) for i in range(10)]
    first = store.apply("log:sh1", [LogRecord(i, 0, v) for i, v in enumerate(values[:6])])
    again = store.apply("log:sh1", [LogRecord(i, 0, v) for i, v in enumerate(values)])
    assert (first.applied, again.skipped, again.applied) == (6, 6, 4)
    assert store.committed("log:sh1") == 10
    assert store.packs.total_bytes() == 200  # no segment written twice


def test_an_interrupted_apply_leaves_no_bytes_behind(tmp_path: Path) -> None:
    store = Store(str(tmp_path), create=True, fsync=False)
    store.apply("log:sh1", [LogRecord(0, 0, encode_segment_stored(origin_field("sh1"), 1, _ref(1), b"a" * 50))])
    store.packs.append([b"z" * 999])  # bytes written, then the process died before the commit
    store.close()
    reopened = Store(str(tmp_path), fsync=False)
    assert reopened.packs.total_bytes() == 50
    assert reopened.segment_bytes(_ref(1)) == b"a" * 50


def test_the_digest_changes_with_any_digest_column_and_not_with_row_order(tmp_path: Path) -> None:
    """The digest sums one hash per row: a change to one row's clock, liveness or origin shows,
    and two stores holding the same rows inserted in opposite orders agree."""
    events = [encode_segment_stored(origin_field("sh1"), 10 + i, _ref(i), b"data%d" % i) for i in range(50)]

    def digest_of(name: str, values: list[bytes]) -> str:
        store = Store(str(tmp_path / name), create=True, fsync=False)
        for i, v in enumerate(values):
            store.apply("log:x", [LogRecord(i, 0, v)])
        digest = _kept_as_counted(store)
        store.close()
        return digest

    forward = digest_of("forward", events)
    assert digest_of("backward", events[::-1]) == forward
    later = [*events[:-1], encode_segment_stored(origin_field("sh1"), 99, _ref(49), b"data49")]
    assert digest_of("later-clock", later) != forward
    other = [*events[:-1], encode_segment_stored(origin_field("sh2"), 59, _ref(49), b"data49")]
    assert digest_of("other-origin", other) != forward
    evicted = [*events, encode("SegmentEvicted", {"origin": "sh1", "hlc": 100, "ref": _ref(0)})]
    assert digest_of("evicted", evicted) != forward


def test_a_store_opened_with_a_memory_budget_gives_duckdb_its_share_and_threads(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"), create=True, memory_limit=1 << 30)
    try:
        limit, threads = store.con.sql(
            "SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0]
        assert limit == "512.0 MiB" and threads == min(os.cpu_count() or 1, 2)  # half of the budget
    finally:
        store.close()
