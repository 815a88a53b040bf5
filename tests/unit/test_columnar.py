"""The columnar replay path: batch layouts, vectorized decoding, the merge, pack placement.

Each piece is checked against the plain one-record-at-a-time definition it replaces.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dssync.consumers.merge import gather
from dssync.consumers.packs import Packs
from dssync.consumers.store import Store
from dssync.errors import CorruptLogError, UnknownSchemaError
from dssync.log import batch as batchfmt
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns
from dssync.log.filelog import FileLog
from dssync.schemas import codec
from dssync.schemas.columnar import KIND_EVICTED, KIND_NONE, KIND_REFERENCE, KIND_SEGMENT, decode_columns

SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
REF = st.binary(min_size=16, max_size=16)
ORIGIN = st.sampled_from(["sh1", "sh2", "", "é-北", "x" * 63, "y" * 64, "z" * 200])
HLC = st.integers(min_value=0, max_value=(1 << 63) - 1)


@st.composite
def any_event(draw: st.DrawFn) -> bytes:
    """Every event this build writes or reads, old versions included."""
    origin, hlc, ref = draw(ORIGIN), draw(HLC), draw(REF)
    kind = draw(st.sampled_from(["stored", "group", "evicted", "reset1", "reset2", "heartbeat"]))
    if kind == "stored":
        return codec.encode_segment_stored(codec.origin_field(origin), hlc, ref, draw(st.binary(max_size=300)))
    if kind == "group":
        return codec.encode("ReferenceStored", {"origin": origin, "hlc": hlc, "ref": ref,
                                                "level": draw(st.integers(1, 3)), "size": draw(st.integers(0, 1 << 40)),
                                                "children": draw(st.binary(max_size=64))})
    if kind == "evicted":
        return codec.encode("SegmentEvicted", {"origin": origin, "hlc": hlc, "ref": ref})
    if kind == "reset1":
        return codec.encode("StoreReset", {"origin": origin, "hlc": hlc, "store_id": "s1"}, version=1)
    if kind == "reset2":
        return codec.encode("StoreReset", {"origin": origin, "hlc": hlc, "store_id": "s2", "chunker": "c"})
    return codec.encode("HeartbeatSent", {"origin": origin, "hlc": hlc, "sent_ms": 7})


def _columns(values: list[bytes]) -> RecordColumns:
    return RecordColumns.from_records([LogRecord(i, 0, v) for i, v in enumerate(values)])


@settings(max_examples=60, deadline=None)
@given(st.lists(any_event(), max_size=40))
def test_columnar_decoding_matches_the_per_record_decoder(values: list[bytes]) -> None:
    ev = decode_columns(_columns(values))
    resets = []
    for i, v in enumerate(values):
        want = codec.decode(v)
        kind = {"SegmentStored": KIND_SEGMENT, "ReferenceStored": KIND_REFERENCE,
                "SegmentEvicted": KIND_EVICTED}.get(want["type"], KIND_NONE)
        assert ev.kind[i] == kind
        if want["type"] == "StoreReset":
            resets.append(want)
        if kind == KIND_NONE:
            continue
        got = (int(ev.hlc[i]), ev.origins[ev.origin[i]], bytes(ev.ref[i]))
        assert got == (want["hlc"], want["origin"], want["ref"])
        if kind == KIND_SEGMENT:
            assert (ev.blob(i), int(ev.size[i])) == (want["data"], len(want["data"]))
        if kind == KIND_REFERENCE:
            assert (ev.blob(i), int(ev.level[i]), int(ev.size[i])) == (want["children"], want["level"], want["size"])
    assert ev.resets == resets


def test_a_malformed_record_among_good_ones_is_corrupt_not_skipped() -> None:
    good = codec.encode_segment_stored(codec.origin_field("sh1"), 5, b"r" * 16, b"data")
    with pytest.raises(CorruptLogError):
        decode_columns(_columns([good, good[:-1] + b"", good + b"x", good]))
    with pytest.raises(CorruptLogError):
        decode_columns(_columns([good, good[:-2]]))


def test_an_unknown_schema_among_good_ones_is_refused() -> None:
    good = codec.encode_segment_stored(codec.origin_field("sh1"), 5, b"r" * 16, b"data")
    future = good[:2] + b"\x01" * 8 + good[10:]
    with pytest.raises(UnknownSchemaError):
        decode_columns(_columns([good, future]))


@given(st.lists(st.binary(max_size=50), max_size=30), st.randoms(use_true_random=False))
def test_gather_copies_the_slices_in_the_order_asked(pieces: list[bytes], rnd: Any) -> None:
    buf = b"".join(b"--" + p for p in pieces)
    starts, at = [], 0
    for p in pieces:
        starts.append(at + 2)
        at += 2 + len(p)
    order = list(range(len(pieces)))
    rnd.shuffle(order)
    got = gather(buf, np.array([starts[i] for i in order], np.int64),
                 np.array([len(pieces[i]) for i in order], np.int64))
    assert bytes(got) == b"".join(pieces[i] for i in order)


def test_a_blob_is_placed_in_packs_exactly_as_one_segment_at_a_time(tmp_path: Path) -> None:
    sizes = [300, 500, 10, 900, 1500, 1, 0, 700, 700, 2000, 50]
    chunks = [bytes([i]) * n for i, n in enumerate(sizes)]
    one = Packs(str(tmp_path / "one"), 1024, fsync=False)
    blob = Packs(str(tmp_path / "blob"), 1024, fsync=False)
    expected = one.append(chunks[:4]) + one.append(chunks[4:])
    p1, pos1 = blob.append_blob(b"".join(chunks[:4]), np.array(sizes[:4], np.int64))
    p2, pos2 = blob.append_blob(b"".join(chunks[4:]), np.array(sizes[4:], np.int64))
    assert list(zip(np.concatenate([p1, p2]).tolist(), np.concatenate([pos1, pos2]).tolist(), strict=True)) == expected
    for (pack, pos), data in zip(expected, chunks, strict=True):
        assert blob.read(pack, pos, len(data)) == data
    assert (blob.current, blob.end) == (one.current, one.end)


def test_batches_in_the_first_layout_are_still_read(tmp_path: Path) -> None:
    values = [b"v%d" % i * (i + 1) for i in range(50)]
    log = FileLog(str(tmp_path / "log"), writer=True, create=True)
    log.append_raw(batchfmt.encode(0, 1000, values[:20], layout=1))
    log.append(values[20:35])
    log.append_raw(batchfmt.encode(35, 2000, values[35:], compress=False, layout=1))
    assert [r.value for r in log.read(0, 100)] == values
    cols = log.read_columns(7, 100)
    assert [r.value for r in cols.records()] == values[7:]
    assert cols.offsets.tolist() == list(range(7, 50))
    log.close()


def _ref(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest()[:16]


@st.composite
def shared_events(draw: st.DrawFn) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(1, 60))):
        origin, hlc, r = draw(st.sampled_from(["sh1", "sh2"])), draw(st.integers(1, 30)), draw(st.integers(0, 8))
        kind = draw(st.sampled_from(["stored", "stored", "evicted", "group"]))
        if kind == "stored":
            out.append(codec.encode_segment_stored(codec.origin_field(origin), hlc, _ref(r), b"d%d" % r))
        elif kind == "evicted":
            out.append(codec.encode("SegmentEvicted", {"origin": origin, "hlc": hlc, "ref": _ref(r)}))
        else:
            out.append(codec.encode("ReferenceStored", {"origin": origin, "hlc": hlc, "ref": _ref(100 + r), "level": 1,
                                                        "size": 7, "children": _ref(r) + _ref(r + 1)}))
    return out


def _model(values: list[bytes]) -> dict[bytes, tuple[Any, ...]]:
    """Last-writer-wins, one event at a time: the definition the merge must agree with."""
    best: dict[bytes, dict[str, Any]] = {}
    for v in values:
        e = codec.decode(v)
        rank = (e["hlc"], e["origin"], e["type"] == "SegmentEvicted")
        cur = best.get(e["ref"])
        if cur is None or rank > (cur["hlc"], cur["origin"], cur["type"] == "SegmentEvicted"):
            best[e["ref"]] = e
    rows = {}
    for ref, e in best.items():
        if e["type"] == "SegmentStored":
            rows[ref] = (0, len(e["data"]), True, e["hlc"], e["origin"], None)
        elif e["type"] == "ReferenceStored":
            rows[ref] = (e["level"], e["size"], True, e["hlc"], e["origin"], e["children"])
        else:
            rows[ref] = (0, 0, False, e["hlc"], e["origin"], None)
    return rows


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(shared_events(), st.integers(1, 7))
def test_store_rows_equal_last_writer_wins_one_event_at_a_time(tmp_path_factory: Any, values: list[bytes],
                                                                 chunk: int) -> None:
    store = Store(str(tmp_path_factory.mktemp("s", numbered=True)), create=True, fsync=False)
    for at in range(0, len(values), chunk):
        store.apply("log:x", [LogRecord(i, 0, values[i]) for i in range(at, min(len(values), at + chunk))])
    got = {r[0]: (r[1], r[2], r[3], r[4], r[5], r[8]) for r in store.rows()}
    assert got == _model(values)
    for r in store.rows():  # every live segment's bytes are where the index says
        if r[1] == 0 and r[3]:
            assert store.segment_bytes(r[0]) == b"d%d" % next(i for i in range(9) if _ref(i) == r[0])
    store.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(shared_events(), st.integers(1, 7), st.integers(1, 4))
def test_rows_stay_last_writer_wins_through_compaction_rewrites_a_reopen_and_a_second_delivery(
        tmp_path_factory: Any, values: list[bytes], chunk: int, every: int) -> None:
    """Superseded versions deleted (or the table rewritten) at any point, the store reopened,
    then every event delivered again: the rows are still last-writer-wins."""
    d = str(tmp_path_factory.mktemp("c", numbered=True))
    store = Store(d, create=True, fsync=False)
    for n, at in enumerate(range(0, len(values), chunk)):
        store.apply("log:x", [LogRecord(i, 0, values[i]) for i in range(at, min(len(values), at + chunk))])
        if n % every == 0 and n % 2 == 1:
            store.compact()
        elif n % every == 0:
            store.rewrite_file()
    store.close()
    store = Store(d)
    want = _model(values)
    assert {r[0]: (r[1], r[2], r[3], r[4], r[5], r[8]) for r in store.rows()} == want
    asked = [_ref(i) for i in range(10)] + [_ref(100 + i) for i in range(10)]
    assert store.known(asked) == {ref for ref, row in want.items() if row[2]}
    store.apply("log:again", [LogRecord(i, 0, v) for i, v in enumerate(values)])
    assert {r[0]: (r[1], r[2], r[3], r[4], r[5], r[8]) for r in store.rows()} == want
    versions, superseded = store.con.execute(
        "SELECT (SELECT count(*) FROM ref_rows), (SELECT count(*) FROM superseded)").fetchall()[0]
    assert versions - superseded == len(want)
    store.close()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(shared_events(), st.integers(1, 59))
def test_an_index_saved_before_the_last_applies_is_brought_up_to_date_at_open(
        tmp_path_factory: Any, values: list[bytes], cut: int) -> None:
    """A process killed after applies it made since its index was last saved: the next open
    loads that index and reads the versions made since from DuckDB."""
    d = tmp_path_factory.mktemp("s", numbered=True)
    store = Store(str(d), create=True, fsync=False)
    store.apply("log:x", [LogRecord(i, 0, v) for i, v in enumerate(values[:cut])])
    store.close()
    saved = (d / "refindex.bin").read_bytes()
    store = Store(str(d))
    token, covers = store.meta()["refindex_token"], store.meta()["refindex_covers"]
    store.apply("log:x", [LogRecord(i, 0, v) for i, v in enumerate(values) if i >= cut])
    store.compact()
    store.close()
    (d / "refindex.bin").write_bytes(saved)  # as if the second close had never saved
    con = duckdb.connect(str(d / "store.duckdb"))
    con.execute("UPDATE meta SET value = CASE key WHEN 'refindex_token' THEN ? ELSE ? END "
                "WHERE key IN ('refindex_token', 'refindex_covers')", [token, covers])
    con.close()
    store = Store(str(d))
    assert store.index_loaded
    want = _model(values)
    assert {r[0]: (r[1], r[2], r[3], r[4], r[5], r[8]) for r in store.rows()} == want
    asked = [_ref(i) for i in range(10)] + [_ref(100 + i) for i in range(10)]
    assert store.known(asked) == {ref for ref, row in want.items() if row[2]}
    store.close()


def test_a_damaged_saved_index_is_rebuilt_from_the_rows_at_open(tmp_path: Path) -> None:
    """Bytes zeroed in the middle of refindex.bin (a disk's damage, not a crash's): the store
    does not read the file as entries, builds its index from DuckDB's rows, and answers as the
    undamaged store does."""
    values = [codec.encode_segment_stored(codec.origin_field("sh1"), 10 + i, _ref(i), b"x" * (i + 1))
              for i in range(300)]
    store = Store(str(tmp_path), create=True, fsync=False)
    store.apply("log:x", [LogRecord(i, 0, v) for i, v in enumerate(values)])
    want = (sorted(store.rows()), store.known([_ref(i) for i in range(310)]))
    store.close()
    path = tmp_path / "refindex.bin"
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 600] = bytes(600)
    path.write_bytes(bytes(damaged))
    store = Store(str(tmp_path))
    assert not store.index_loaded
    assert (sorted(store.rows()), store.known([_ref(i) for i in range(310)])) == want
    store.close()


def test_incompressible_payloads_are_stored_plain_and_compressible_ones_lz4() -> None:
    noise = [os.urandom(4096) for _ in range(64)]
    text = [b"segment of plain text traffic %d " % i * 100 for i in range(64)]
    for values, codec_wanted in ((noise, batchfmt.CODEC_NONE), (text, batchfmt.CODEC_LZ4)):
        raw = batchfmt.encode(0, 1, values)
        assert batchfmt.HEADER.unpack_from(raw)[6] == codec_wanted  # the header's codec field
        assert batchfmt.parse(raw).values() == values


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(shared_events(), st.integers(1, 6))
def test_a_pipelined_replay_writes_the_rows_of_one_read_at_a_time(tmp_path_factory: Any, values: list[bytes],
                                                                   read: int) -> None:
    """Replay merges read N+1 before read N is committed; the rows, packs included, must be
    exactly those of applying each read after the previous one committed."""
    from dssync.consumers import consumer

    d = tmp_path_factory.mktemp("p", numbered=True)
    log = FileLog(str(d / "log"), writer=True, create=True, fsync="never")
    for at in range(0, len(values), 4):
        log.append(values[at:at + 4])
    one = Store(str(d / "one"), create=True, fsync=False, pack_bytes=64)
    while one.committed("log:x") < len(values):
        one.apply_columns("log:x", log.read_columns(one.committed("log:x"), read))
    piped = Store(str(d / "piped"), create=True, fsync=False, pack_bytes=64)
    saved = consumer.REPLAY_RECORDS
    consumer.REPLAY_RECORDS = read
    try:
        assert consumer.replay(log, piped, "log:x", 0) == len(values)
    finally:
        consumer.REPLAY_RECORDS = saved
    assert piped.rows() == one.rows()
    assert piped.committed("log:x") == one.committed("log:x") == len(values)
    assert piped.meta() == one.meta()
    one.close()
    piped.close()
    log.close()


def test_a_child_shared_by_two_groups_places_both(tmp_path: Path) -> None:
    """Two references of one apply that share a child held from before: the lookup asks for
    that child twice, and each asker gets its answer."""
    store = Store(str(tmp_path / "s"), create=True, fsync=False)
    seg = [codec.encode_segment_stored(codec.origin_field("sh1"), 1, _ref(i), b"d%d" % i) for i in (7, 8)]
    store.apply("log:x", [LogRecord(i, 0, v) for i, v in enumerate(seg)])

    def group(ref: int, kids: list[int]) -> bytes:
        return codec.encode("ReferenceStored", {"origin": "sh1", "hlc": 2, "ref": _ref(ref), "level": 1, "size": 4,
                                                "children": b"".join(_ref(k) for k in kids)})
    store.apply("log:x", [LogRecord(2, 0, group(100, [6, 7])), LogRecord(3, 0, group(101, [7, 8]))])
    packs = {r[0]: r[6] for r in store.rows()}
    assert packs[_ref(101)] == packs[_ref(7)] is not None  # every child held: placed
    assert packs[_ref(100)] is None  # child 6 is not held: left for the next wrap
    store.close()
