"""The last-writer-wins merge, column-wise: decoded events in, the store rows to write out.

A store row per reference is won by the greatest (hlc, origin, evicted) among every event
for that reference, whatever order and however often the events arrive: that is what makes
stores converge. ``plan`` finds the greatest event per reference among the records of one
apply (one sort), then compares each against the row already held (one lookup for all of
them); ``write_segments`` puts the winning segments' bytes in pack files; ``place_groups`` gives
higher-level references their pack; ``row_table`` is the Arrow table the store inserts. No Python loop runs per event.

Segment bytes go to the packs in one write per apply: ``gather`` copies them out of the record
buffer back to back in C, without a Python object per segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dssync.consumers.packs import Packs
from dssync.log.columns import RecordColumns
from dssync.schemas.codec import REF_SIZE
from dssync.schemas.columnar import KIND_EVICTED, KIND_REFERENCE, KIND_SEGMENT, EventColumns

ROW_SCHEMA = pa.schema([
    ("ref", pa.binary()), ("level", pa.uint8()), ("size", pa.uint64()), ("live", pa.bool_()),
    ("hlc", pa.uint64()), ("origin", pa.string()), ("pack", pa.int32()), ("pos", pa.uint64()),
    ("children", pa.binary()),
])


def binary_column(refs: np.ndarray) -> pa.Array:
    """(k, 16) uint8 references as an Arrow binary column, without a Python object per row."""
    k = len(refs)
    offsets = (np.arange(k + 1, dtype=np.int32) * REF_SIZE).tobytes()
    return pa.Array.from_buffers(pa.binary(), k, [None, pa.py_buffer(offsets), pa.py_buffer(refs.tobytes())])


def _ranks(names: list[str]) -> np.ndarray:
    """Each name's position in sorted order (origins compare as strings)."""
    rank = np.zeros(len(names), np.int64)
    for r, i in enumerate(sorted(range(len(names)), key=names.__getitem__)):
        rank[i] = r
    return rank


@dataclass
class Existing:
    """Rows already held for some of the looked-up references: ``i`` is the reference's index."""

    i: np.ndarray  # int64
    hlc: np.ndarray  # uint64
    origin: np.ndarray  # int64, index into origins
    origins: list[str]
    live: np.ndarray  # bool
    pack: np.ndarray  # int64, -1 = NULL
    pos: np.ndarray  # int64, -1 = NULL

    @classmethod
    def empty(cls) -> Existing:
        return cls.from_rows([])

    @classmethod
    def from_rows(cls, rows: list[tuple[Any, ...]]) -> Existing:
        """From (i, hlc, origin, live, pack, pos) tuples."""
        names = sorted({r[2] for r in rows})
        where = {n: k for k, n in enumerate(names)}
        return cls(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.uint64),
                   np.array([where[r[2]] for r in rows], np.int64), names,
                   np.array([r[3] for r in rows], bool),
                   np.array([-1 if r[4] is None else r[4] for r in rows], np.int64),
                   np.array([-1 if r[5] is None else r[5] for r in rows], np.int64))

    def combine(self, newer: Existing) -> Existing:
        """These rows and ``newer``'s; for an index both have, ``newer``'s row."""
        if not len(newer.i):
            return self
        mask = ~np.isin(self.i, newer.i)
        return Existing(
            np.concatenate([self.i[mask], newer.i]), np.concatenate([self.hlc[mask], newer.hlc]),
            np.concatenate([self.origin[mask], newer.origin + len(self.origins)]), self.origins + newer.origins,
            np.concatenate([self.live[mask], newer.live]), np.concatenate([self.pack[mask], newer.pack]),
            np.concatenate([self.pos[mask], newer.pos]))

    @classmethod
    def from_arrow(cls, t: pa.Table) -> Existing:
        """From a table with columns i, hlc, origin, live, pack, pos."""
        if t.num_rows == 0:
            return cls.empty()
        origin = t.column("origin").combine_chunks().dictionary_encode()
        return cls(t.column("i").to_numpy().astype(np.int64), t.column("hlc").to_numpy().astype(np.uint64),
                   origin.indices.to_numpy(zero_copy_only=False).astype(np.int64), origin.dictionary.to_pylist(),
                   t.column("live").to_numpy(zero_copy_only=False).astype(bool),
                   pc.fill_null(t.column("pack"), -1).to_numpy().astype(np.int64),
                   pc.fill_null(t.column("pos").cast(pa.int64()), -1).to_numpy().astype(np.int64))


@dataclass
class Plan:
    """The rows one apply writes: event indices sorted by reference, and their placement."""

    rows: np.ndarray  # int64 indices into the EventColumns
    exists: np.ndarray  # bool: replaces a row already held
    pack: np.ndarray  # int64, -1 = NULL (segments get theirs from write_segments)
    pos: np.ndarray  # int64, -1 = NULL
    max_hlc: int

    @property
    def won(self) -> int:
        return len(self.rows)


def _last_writers(ev: EventColumns, r: np.ndarray) -> np.ndarray:
    """Of the events ``r``, the greatest (hlc, origin, evicted) per reference, in reference order.

    One sort by the references' first 8 bytes finds the references met more than once (a
    store and an eviction of the same segment in one read, say); only those few are ordered
    by clock. References sharing their first 8 bytes but not the rest get the full sort.
    """
    key = _keys(ev.ref[r])
    order = np.argsort(key[:, 0], kind="stable")
    ks = key[order]
    same = (ks[1:] == ks[:-1]).all(axis=1)
    if bool(((ks[1:, 0] == ks[:-1, 0]) & ~same).any()):
        order = np.lexsort((key[:, 1], key[:, 0]))
        ks = key[order]
        same = (ks[1:] == ks[:-1]).all(axis=1)
    if not same.any():
        return r[order]
    run = np.concatenate(([0], np.cumsum(~same)))  # run id of each sorted event
    shared = np.zeros(len(order), bool)
    shared[1:] |= same
    shared[:-1] |= same
    d = order[shared]
    orank = _ranks(ev.origins)[ev.origin[r[d]]]
    by_clock = np.lexsort((ev.kind[r[d]] == KIND_EVICTED, orank, ev.hlc[r[d]], run[shared]))
    last = np.ones(len(d), bool)
    runs = run[shared][by_clock]
    last[:-1] = runs[1:] != runs[:-1]
    best = np.empty(int(run[-1]) + 1, np.int64)
    best[run[~shared]] = order[~shared]
    best[runs[last]] = d[by_clock][last]
    return r[best]


def plan(ev: EventColumns, lookup: Callable[[np.ndarray], Existing]) -> Plan:
    """The winning event per reference that beats the row held for it (if any).

    ``lookup`` gets the candidate references ((k, 16) uint8) and returns the rows held for them.
    """
    r = np.flatnonzero(ev.kind >= 0)
    if not len(r):
        z = np.zeros(0, np.int64)
        return Plan(z, np.zeros(0, bool), z, z, 0)
    win = _last_writers(ev, r)
    keep = np.ones(len(win), bool)
    exists = np.zeros(len(win), bool)
    pack = np.full(len(win), -1, np.int64)
    pos = np.full(len(win), -1, np.int64)
    old = lookup(ev.ref[win])
    if len(old.i):
        j = win[old.i]
        names = sorted(set(ev.origins) | set(old.origins))
        at = {n: k for k, n in enumerate(names)}
        new_rank = np.array([at[n] for n in ev.origins], np.int64)[ev.origin[j]]
        old_rank = np.array([at[n] for n in old.origins], np.int64)[old.origin]
        h, oh = ev.hlc[j], old.hlc
        e, oe = ev.kind[j] == KIND_EVICTED, ~old.live
        beats = (h > oh) | ((h == oh) & ((new_rank > old_rank) | ((new_rank == old_rank) & e & ~oe)))
        keep[old.i[~beats]] = False
        exists[old.i] = True
        # a segment stored again over its own live row keeps the bytes where they are
        reuse = beats & old.live & (old.pack >= 0) & (ev.kind[j] == KIND_SEGMENT)
        pack[old.i[reuse]] = old.pack[reuse]
        pos[old.i[reuse]] = old.pos[reuse]
    return Plan(win[keep], exists[keep], pack[keep], pos[keep], int(ev.hlc[r].max()))


def gather(buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> pa.Buffer | bytes:
    """The slices ``buf[starts[i] : starts[i] + lengths[i]]`` back to back, copied in C.

    Arrow does it: ``buf`` is seen as a binary array whose values alternate between the
    wanted slices and what lies between them, and ``take`` keeps the wanted ones. Slices must
    not overlap (blobs of distinct records never do).
    """
    m = len(starts)
    if m == 0:
        return b""
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    e = s + lengths[order]
    if m > 1 and bool((s[1:] < e[:-1]).any()):  # cannot happen for record blobs; stay correct anyway
        return b"".join(buf[a:b] for a, b in zip(starts.tolist(), (starts + lengths).tolist(), strict=True))
    bounds = np.empty(2 * m, np.int64)
    bounds[0::2], bounds[1::2] = s, e
    whole = pa.Array.from_buffers(pa.large_binary(), 2 * m - 1, [None, pa.py_buffer(bounds), pa.py_buffer(buf)])
    rank = np.empty(m, np.int64)
    rank[order] = np.arange(m)
    taken = pc.take(whole, pa.array(2 * rank))
    offsets = np.frombuffer(taken.buffers()[1], np.int64, m + 1, taken.offset * 8)
    data = taken.buffers()[2]
    return data[int(offsets[0]) : int(offsets[-1])] if data is not None else b""


def write_segments(p: Plan, ev: EventColumns, packs: Packs, cols: RecordColumns | None = None) -> int:
    """Locate the planned segments that have no bytes in a pack yet; fill in their (pack, pos)
    in ``p``; return the segment bytes written. Not committed until the index rows are.

    A segment whose record ``cols`` places in a file log (``cols.placement``: its batch is
    stored uncompressed) is located there, in place (``Packs.in_log``); the others are written
    to the packs, in log order, in one write.
    """
    idx = np.flatnonzero((ev.kind[p.rows] == KIND_SEGMENT) & (p.pack < 0))
    if not len(idx):
        return 0
    placed = cols.placement if cols is not None else None
    if placed is not None:
        assert cols is not None
        rec = p.rows[idx]
        start, length = ev.blob_start[rec], ev.blob_len[rec]
        at = placed.pos[rec]
        inside = (at >= 0) & (start >= cols.starts[rec]) & (start + length <= cols.starts[rec] + cols.lengths[rec])
        if inside.any():
            here = idx[inside]
            p.pack[here] = packs.in_log(placed.directory, placed.segment[rec[inside]])
            p.pos[here] = at[inside] + start[inside] - cols.starts[rec[inside]]
            idx = idx[~inside]
            if not len(idx):
                return 0
    st = ev.blob_start[p.rows[idx]]
    order = np.argsort(st, kind="stable")
    idx, st = idx[order], st[order]
    ln = ev.blob_len[p.rows[idx]]
    pk, pos = packs.append_blob(memoryview(gather(ev.buf, st, ln)), ln)
    p.pack[idx] = pk
    p.pos[idx] = pos
    return int(ln.sum())


def _blobs(ev: EventColumns, rows: np.ndarray) -> bytes:
    return bytes(gather(ev.buf, ev.blob_start[rows], ev.blob_len[rows]))


def row_table(p: Plan, ev: EventColumns) -> pa.Table:
    """The planned rows as an Arrow table in ``ROW_SCHEMA`` order."""
    r = p.rows
    k = len(r)
    kind = ev.kind[r]
    group = kind == KIND_REFERENCE
    lens = np.where(group, ev.blob_len[r], 0)
    offsets = np.zeros(k + 1, np.int32)
    np.cumsum(lens, out=offsets[1:])
    children = pa.Array.from_buffers(
        pa.binary(), k,
        [pa.py_buffer(np.packbits(group, bitorder="little").tobytes()), pa.py_buffer(offsets.tobytes()),
         pa.py_buffer(_blobs(ev, r[group]))],
        null_count=int(k - group.sum()))
    return pa.Table.from_arrays([
        binary_column(ev.ref[r]),
        pa.array(np.where(group, ev.level[r], 0).astype(np.uint8)),
        pa.array(np.where(kind == KIND_EVICTED, 0, ev.size[r]).astype(np.uint64)),
        pa.array(kind != KIND_EVICTED),
        pa.array(ev.hlc[r]),
        pa.array(ev.origins, pa.string()).take(pa.array(ev.origin[r])),
        pa.array(np.maximum(p.pack, 0).astype(np.int32), mask=p.pack < 0),
        pa.array(np.maximum(p.pos, 0).astype(np.uint64), mask=p.pos < 0),
        children,
    ], schema=ROW_SCHEMA)


def _keys(refs: np.ndarray) -> np.ndarray:
    """(k, 16) uint8 references as (k, 2) uint64 that sort like the bytes."""
    return np.ascontiguousarray(refs).view(">u8").astype(np.uint64)


def _find(planned: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``refs`` is among ``planned`` (both (k, 16) uint8; ``planned`` in reference
    order, as plan rows are): (index, found)."""
    if not len(planned) or not len(refs):
        return np.zeros(len(refs), np.int64), np.zeros(len(refs), bool)
    pk, rk = _keys(planned), _keys(refs)
    by_key = np.argsort(rk[:, 0])  # sorted needles: a much cheaper binary search
    j = np.empty(len(rk), np.int64)
    j[by_key] = np.searchsorted(pk[:, 0], rk[by_key, 0])
    j = np.minimum(j, len(pk) - 1)
    found = (pk[j] == rk).all(axis=1)
    if len(pk) > 1 and bool((pk[1:, 0] == pk[:-1, 0]).any()):
        # two references share their first 8 bytes (never seen in practice): match exactly
        where = {bytes(r): k for k, r in enumerate(planned)}
        j = np.array([where.get(bytes(c), 0) for c in refs], np.int64)
        found = np.array([bytes(c) in where for c in refs], bool)
    return j, found


def planned_rows(p: Plan, ev: EventColumns, refs: np.ndarray) -> Existing:
    """The rows ``p`` writes for any of ``refs``, as ``Existing`` (a staged apply's rows seen by
    the next one before they are committed)."""
    j, found = _find(ev.ref[p.rows], refs)
    i = np.flatnonzero(found)
    rows = p.rows[j[i]]
    return Existing(i, ev.hlc[rows], ev.origin[rows].astype(np.int64), list(ev.origins),
                    ev.kind[rows] != KIND_EVICTED, p.pack[j[i]], p.pos[j[i]])


def place_groups(p: Plan, ev: EventColumns, lookup: Callable[[np.ndarray], Existing]) -> None:
    """Give each planned higher-level reference the oldest pack any of its children is in.

    Wrapping past that pack then drops the reference with its first missing child. A child
    without a pack (not held yet, since a peer's events arrive in any order; or evicted) leaves
    the reference's pack NULL, and the next wrap drops it: a lost saving at worst, never a
    dangling reference. Children are looked up among the rows this apply writes first (their
    new state), then among the rows held (``lookup``); references whose children are
    references themselves are placed level by level. Placement never shows in the digest.
    """
    g = np.flatnonzero(ev.kind[p.rows] == KIND_REFERENCE)
    g = g[ev.blob_len[p.rows[g]] % REF_SIZE == 0]  # a malformed child list places nothing
    if not len(g):
        return
    n = ev.blob_len[p.rows[g]] // REF_SIZE
    child = np.frombuffer(_blobs(ev, p.rows[g]), np.uint8).reshape(-1, REF_SIZE)
    if not len(child):
        return
    j, here = _find(ev.ref[p.rows], child)
    held = np.full(len(child), -1, np.int64)
    away = np.flatnonzero(~here)
    if len(away):
        old = lookup(child[away])
        held[away[old.i]] = old.pack
    first = np.concatenate(([0], np.cumsum(n)[:-1]))
    has_kids = n > 0
    levels = ev.level[p.rows[g]]
    for level in np.unique(levels).tolist():
        packs = np.where(here, p.pack[j], held)
        known = packs >= 0
        lowest = np.minimum.reduceat(np.where(known, packs, np.iinfo(np.int64).max), first[has_kids])
        complete = np.logical_and.reduceat(known, first[has_kids])
        at = g[has_kids]
        mine = levels[has_kids] == level
        p.pack[at[mine]] = np.where(complete[mine], lowest[mine], -1)


