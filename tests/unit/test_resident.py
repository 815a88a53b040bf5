"""Log-resident segments: new data is written once (to the log) and the store reads it there."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dssync.appliance import Appliance, replay
from dssync.consumers.store import Store
from dssync.layout import log_dir, store_dir
from dssync.producers.hierarchy import segment_ref
from dssync.tools.verify import verify_home


def _create(tmp_path: Path, **opts: object) -> Appliance:
    return Appliance.create(str(tmp_path / "sh1"), "sh1", "SH", "1", **opts)


def _segments_check_out(store: Store) -> int:
    n = 0
    for ref, pack, pos, size in store.iter_live_segments():
        assert segment_ref(store.packs.read(pack, pos, size)) == ref
        n += 1
    return n


def _text(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(3).hex().encode() for _ in range(300)]
    return b" ".join(rng.choice(words) for _ in range(size // 6))[:size]


def test_new_segments_are_read_from_the_log_instead_of_copied_to_packs(tmp_path: Path) -> None:
    with _create(tmp_path) as app:
        app.ingest(io.BytesIO(random.Random(1).randbytes(3_000_000)))
        stats = app.store.stats()
        assert stats["pack_bytes"] == 0 and stats["log_resident_files"] == 1
        assert stats["log_resident_bytes"] >= stats["live_segment_bytes"] == 3_000_000
        assert all(app.store.packs.file_of(p).startswith(log_dir(app.home)) for _, p, _, _ in
                   app.store.iter_live_segments())
        assert _segments_check_out(app.store) > 0
    assert verify_home(str(tmp_path / "sh1")).ok


def test_segments_of_compressed_batches_still_go_to_packs(tmp_path: Path) -> None:
    rng = random.Random(2)
    with _create(tmp_path) as app:
        app.ingest(io.BytesIO(_text(rng, 2_000_000)))  # lz4 shrinks these batches: not in the file as is
        app.ingest(io.BytesIO(rng.randbytes(2_000_000)))
        stats = app.store.stats()
        assert stats["pack_bytes"] > 0 and stats["log_resident_files"] == 1
        assert _segments_check_out(app.store) > 0
    assert verify_home(str(tmp_path / "sh1")).ok


def test_without_fsync_on_every_append_segments_are_copied(tmp_path: Path) -> None:
    with _create(tmp_path, fsync="interval") as app:
        app.ingest(io.BytesIO(random.Random(3).randbytes(2_000_000)))
        stats = app.store.stats()
        assert stats["log_resident_files"] == 0 and stats["pack_bytes"] >= 2_000_000


def test_replay_rebuilds_a_store_that_reads_from_the_log_too(tmp_path: Path) -> None:
    home = str(tmp_path / "sh1")
    with _create(tmp_path, segment_bytes=1 << 20) as app:
        for seed in range(3):
            app.ingest(io.BytesIO(random.Random(seed).randbytes(1_500_000)))
        before, files = app.store.digest(), app.store.stats()["log_resident_files"]
        assert files > 3  # segments rolled under the store
    replay(home)
    with Appliance(home) as app:
        stats = app.store.stats()
        assert app.store.digest() == before
        assert stats["pack_bytes"] == 0 and stats["log_resident_files"] == files
        assert _segments_check_out(app.store) > 0
    reopened = Store(store_dir(home), read_only=True)  # a tool's read-only open finds them too
    try:
        assert _segments_check_out(reopened) > 0
    finally:
        reopened.close()


def test_log_retention_keeps_what_the_store_reads_until_the_store_wraps_past_it(tmp_path: Path) -> None:
    home = str(tmp_path / "sh1")
    rng = random.Random(4)
    with _create(tmp_path, segment_bytes=1 << 20, retention_bytes=1, capacity_bytes=3 << 20,
                 pack_bytes=1 << 20) as app:
        first = rng.randbytes(1_500_000)
        app.ingest(io.BytesIO(first))
        oldest = app.store.resident_from(app.log.directory)
        assert oldest is not None and app.log.start_offset() <= oldest  # retention wants 1 byte: pinned
        assert _segments_check_out(app.store) > 0
        for _ in range(6):
            app.ingest(io.BytesIO(rng.randbytes(1_000_000)))
        stats = app.store.stats()
        assert stats["log_resident_bytes"] + stats["pack_bytes"] <= (3 << 20) + (2 << 20)
        assert app.log.start_offset() > oldest  # the store wrapped past them: retention deleted them
        start = app.log.start_offset()
        assert all(app.store.packs.file_of(p) for _, p, _, _ in app.store.iter_live_segments())
        assert app.store.resident_from(app.log.directory) >= start
        assert _segments_check_out(app.store) > 0
        again = app.ingest(io.BytesIO(first))  # the oldest data was evicted: it is new again
        assert again.new_segments > 0
    assert verify_home(home).ok
    assert os.listdir(os.path.join(store_dir(home), "packs")) == []


def test_a_snapshot_of_the_store_carries_the_segments_read_from_the_log(tmp_path: Path) -> None:
    from dssync.schemas import decode
    from dssync.sync import snapshot

    with _create(tmp_path) as app:
        app.ingest(io.BytesIO(random.Random(5).randbytes(2_000_000)))
        stats = app.store.stats()
        assert stats["log_resident_files"] == 1
        packs = app.store.packs.reader()  # what the sync server reads a snapshot through
        try:
            with app.store.snapshot_rows() as (rows, _count, _offsets):
                events = [decode(v) for v in snapshot.row_events(rows, packs)]
        finally:
            packs.close()
    segments = [e for e in events if e["type"] == "SegmentStored"]
    assert len(segments) == stats["live_segments"] and sum(len(e["data"]) for e in segments) == 2_000_000
    assert all(segment_ref(e["data"]) == e["ref"] for e in segments)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(st.booleans(), st.integers(1, 6000)), min_size=1, max_size=30),
                min_size=1, max_size=12),
       st.integers(0, 10_000))
def test_every_placed_value_lies_in_the_log_file_where_the_columns_say(
        groups: list[list[tuple[bool, int]]], seed: int) -> None:
    import tempfile

    from dssync.log import segment as seg
    from dssync.log.columns import RecordColumns
    from dssync.log.filelog import FileLog

    rng = random.Random(seed)
    values = [[rng.randbytes(n) if noise else b"x" * n for noise, n in g] for g in groups]
    with tempfile.TemporaryDirectory() as d, FileLog(d, writer=True, create=True, segment_bytes=64 << 10) as log:
        prepared = []
        for k in range(0, len(values), 3):  # windows of up to three batches
            p = log.prepare(values[k:k + 3])
            log.write_prepared(p)
            prepared.append(p.columns)
        reads = [log.read_columns(o, 10_000) for o in (0, rng.randrange(log.end_offset()), log.end_offset() - 1)]

        def check(cols: RecordColumns) -> int:
            assert cols.placement is not None
            placed = 0
            for i in range(len(cols)):
                at = int(cols.placement.pos[i])
                if at >= 0:
                    with open(seg.segment_path(d, int(cols.placement.segment[i])), "rb") as f:
                        f.seek(at)
                        assert f.read(int(cols.lengths[i])) == cols.value(i)
                    placed += 1
            return placed

        assert sum(map(check, prepared)) == sum(map(check, reads[:1]))  # prepare and read place alike
        for cols in reads[1:]:
            check(cols)
