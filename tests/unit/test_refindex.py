"""The reference index against a dictionary: exact lookups whatever the slots collide on."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

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


# References from a small pool, so that batches repeat them; some share their first 8 bytes
# (the half a slot is chosen by), and the index is made to choose slots by 1 to 3 bits only.
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
