"""The reference index against a dictionary: exact lookups whatever the slots collide on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dssync.consumers.digest import Tally
from dssync.consumers.refindex import FIELDS, Entries, RefIndex, halves


def _entries(refs: list[bytes], tag: int) -> Entries:
    hi, lo = halves(np.frombuffer(b"".join(refs), np.uint8).reshape(-1, 16))
    k = len(refs)
    n = np.arange(k, dtype=np.uint64) + np.uint64(tag * 1000)
    return Entries(hi=hi, lo=lo, hlc=n, seq=n + np.uint64(1), pos=n.astype(np.int64) - 1, size=n * np.uint64(3),
                   pack=(n % np.uint64(7)).astype(np.int32) - 1, origin=(n % np.uint64(3)).astype(np.uint16),
                   level=(n % np.uint64(4)).astype(np.uint8), live=(n % np.uint64(2)) == 0)


def _row(e: Entries, k: int) -> tuple[int, ...]:
    return tuple(int(getattr(e, f)[k]) for f in FIELDS if f not in ("hi", "lo"))


# References from a small pool, so that batches repeat them; some share their first 8 bytes, some
# their last 8 (the half a slot is chosen by), and the index is made to choose slots by 1 to 3 bits only.
POOL = [bytes([a]) * 8 + bytes([b]) * 8 for a in range(6) for b in range(6)] + [
    bytes(range(16)), bytes(range(1, 17)), bytes(range(16))[:15] + b"\xff"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(POOL), unique=True, max_size=20), max_size=12),
       st.integers(1, 3), st.integers(1, 4), st.sampled_from([2, 4, 8]))
def test_lookups_are_exact_with_colliding_slots_growth_and_chunks(
        batches: list[list[bytes]], hash_bits: int, chunk_bits: int, slots: int) -> None:
    index = RefIndex(hash_bits=hash_bits, chunk_bits=chunk_bits, slots=slots)
    model: dict[bytes, tuple[int, ...]] = {}
    for tag, batch in enumerate(batches):
        if not batch:
            continue
        e = _entries(batch, tag)
        index.upsert(e)
        model.update({ref: _row(e, k) for k, ref in enumerate(batch)})
    hi, lo = halves(np.frombuffer(b"".join(POOL), np.uint8).reshape(-1, 16))
    ids = index.lookup(hi, lo)
    assert len(index) == len(model)
    assert {POOL[k] for k in np.flatnonzero(ids >= 0).tolist()} == set(model)
    held = index.entries(ids[ids >= 0])
    for k, ref in enumerate(r for r, i in zip(POOL, ids.tolist(), strict=True) if i >= 0):
        assert _row(held, k) == model[ref]
    # the counts and digest kept by each write are those of the entries held at the end
    assert index.tally == Tally.of(held, index.origin_words()) == index._tally_all()


def test_a_million_random_references_are_all_found_and_absent_ones_are_not() -> None:
    rng = np.random.default_rng(7)
    refs = rng.integers(0, 256, (1_000_000, 16), dtype=np.uint8)
    index = RefIndex()
    for start in range(0, len(refs), 100_000):
        part = refs[start:start + 100_000]
        hi, lo = halves(part)
        n = np.arange(start, start + len(part))
        index.upsert(Entries(hi=hi, lo=lo, **{f: (n % 200).astype(t) if t in (np.uint8, np.uint16) else n.astype(t)
                                              for f, t in FIELDS.items() if f not in ("hi", "lo")}))
    ids = index.lookup(*halves(refs))
    assert (ids == np.arange(len(refs))).all()
    assert (index.entries(ids).seq == np.arange(len(refs))).all()
    other = rng.integers(0, 256, (10_000, 16), dtype=np.uint8)
    assert (index.lookup(*halves(other)) == -1).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(POOL), unique=True, max_size=20), min_size=1, max_size=8),
       st.integers(1, 3), st.integers(0, 7))
def test_a_saved_index_loads_equal_and_keeps_taking_writes(
        tmp_path_factory: Any, batches: list[list[bytes]], chunk_bits: int, split: int) -> None:
    path = str(tmp_path_factory.mktemp("ri", numbered=True) / "refindex.bin")
    index = RefIndex(hash_bits=2, chunk_bits=chunk_bits, slots=2)
    loaded: RefIndex | None = None
    for tag, batch in enumerate(batches):
        if tag == split % len(batches):
            index.save(path, "t1", tag)
            assert RefIndex.load(path, "t2", tag) is None and RefIndex.load(path, "t1", tag + 1) is None
            loaded = RefIndex.load(path, "t1", tag)
            assert loaded is not None
        if batch:
            index.upsert(_entries(batch, tag))
            if loaded is not None:
                loaded.upsert(_entries(batch, tag))
    assert loaded is not None
    hi, lo = halves(np.frombuffer(b"".join(POOL), np.uint8).reshape(-1, 16))
    a, b = index.lookup(hi, lo), loaded.lookup(hi, lo)
    assert ((a >= 0) == (b >= 0)).all() and len(index) == len(loaded)
    ea, eb = index.entries(a[a >= 0]), loaded.entries(b[b >= 0])
    assert all((getattr(ea, f) == getattr(eb, f)).all() for f in FIELDS)
    assert loaded.tally == index.tally == Tally.of(ea, index.origin_words())


def test_a_cut_or_foreign_file_is_not_loaded(tmp_path: Path) -> None:
    path = str(tmp_path / "refindex.bin")
    index = RefIndex(chunk_bits=2)
    index.upsert(_entries(POOL, 0))
    index.save(path, "t", 5)
    assert RefIndex.load(path, "t", 5) is not None
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1)
    assert RefIndex.load(path, "t", 5) is None
    with open(path, "wb") as f:
        f.write(b"not an index at all")
    assert RefIndex.load(path, "t", 5) is None
    assert RefIndex.load(str(tmp_path / "absent.bin"), "t", 5) is None


def test_a_file_with_any_byte_changed_is_refused_or_read_the_same(tmp_path: Path) -> None:
    """Every byte of a saved index that is read counts: the header (its shape, the origins'
    names), the slots and each column; one changed anywhere and the file is refused (the store
    then builds its index from its rows) rather than read as entries. Only alignment padding,
    never read, may differ and leave the loaded index the same."""
    path = str(tmp_path / "refindex.bin")
    index = RefIndex(chunk_bits=4)
    index.upsert(_entries(POOL, 0))
    index.origin_ids(["a", "b", "c"])
    index.save(path, "t", 5)
    whole = Path(path).read_bytes()
    hi, lo = halves(np.frombuffer(b"".join(POOL), np.uint8).reshape(-1, 16))
    want = index.entries(index.lookup(hi, lo))
    refused = 0
    for at in range(len(whole)):
        changed = bytearray(whole)
        changed[at] ^= 0x10
        Path(path).write_bytes(bytes(changed))
        loaded = RefIndex.load(path, "t", 5)
        if loaded is None:
            refused += 1
            continue
        got = loaded.entries(loaded.lookup(hi, lo))
        assert loaded.origins == index.origins and np.array_equal(loaded._table[0], index._table[0]), at
        assert all(np.array_equal(getattr(got, f), getattr(want, f)) for f in FIELDS), at
    assert refused > len(whole) * 0.8


def _longest_run(slots: np.ndarray) -> int:
    """The longest run of consecutive full slots: what a lookup probes at worst."""
    full = np.concatenate([[False], slots != np.uint32(0xFFFFFFFF), [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(full))
    return int((edges[1::2] - edges[::2]).max())


def test_references_added_in_sorted_batches_keep_probe_runs_short() -> None:
    """A snapshot arrives in reference order: batch after batch from one end of the reference
    space to the other, into a table sized for what it holds so far. Slots chosen by the sorted
    bits would put the first batches' references into the first part of the table only, more of
    them than it has slots, in one run as long as all of them; the index spreads every batch over
    the whole table."""
    rng = np.random.default_rng(7)
    raw = rng.bytes(16 * 100_000)
    refs = sorted(raw[k:k + 16] for k in range(0, len(raw), 16))
    index = RefIndex()
    runs = []
    for b in range(0, len(refs), 5_000):
        index.add(_entries(refs[b:b + 5_000], 0))
        runs.append(_longest_run(index._table[0]))
    assert max(runs) < 200, runs  # a uniform table at this load: under 100; by sorted bits: 5,000+
    found = index.lookup(*halves(np.frombuffer(b"".join(refs), np.uint8).reshape(-1, 16)))
    assert (found == np.arange(len(refs))).all()
