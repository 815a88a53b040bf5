"""Decode many events at once: the hot v1 events parsed column-wise with numpy.

Replay decodes millions of events; decoding them one by one costs microseconds each, more
than the store's own insert. ``decode_columns`` reads the three events that carry store rows
(``SegmentStored``, ``ReferenceStored``, ``SegmentEvicted``, version 1) straight out of the
record buffer with vectorized gathers: fingerprint, origin, clock, reference, and where the
segment data or the children lie. Every other record (other versions, ``StoreReset``,
heartbeats, anything malformed) goes through ``decode_fast``, one by one, so the columnar
path accepts exactly what the per-record path accepts and raises the same errors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from dssync.errors import CorruptLogError
from dssync.log.columns import PAD, RecordColumns
from dssync.schemas.codec import MAGIC, PREFIX, REF_SIZE, Event, decode_fast, registry

KIND_NONE, KIND_SEGMENT, KIND_REFERENCE, KIND_EVICTED = -1, 0, 1, 2
_KINDS = {"SegmentStored": KIND_SEGMENT, "ReferenceStored": KIND_REFERENCE, "SegmentEvicted": KIND_EVICTED}
_FP = {int.from_bytes(registry.schema(name, 1).fingerprint, "little"): kind for name, kind in _KINDS.items()}
_MAX_ORIGINS = 8  # distinct origins resolved column-wise per origin length; more go one by one


@dataclass
class EventColumns:
    """One entry per input record; ``kind`` says which fields mean something.

    ``blob_start``/``blob_len`` locate a segment's data or a reference's children in ``buf``;
    ``size`` is the data length for a segment. ``resets`` are the ``StoreReset`` events.
    """

    kind: np.ndarray  # int8
    hlc: np.ndarray  # uint64
    origin: np.ndarray  # int32, index into origins
    origins: list[str]
    ref: np.ndarray  # (n, 16) uint8
    level: np.ndarray  # int64
    size: np.ndarray  # int64
    blob_start: np.ndarray  # int64
    blob_len: np.ndarray  # int64
    buf: bytes
    resets: list[Event]

    def blob(self, i: int) -> bytes:
        s = int(self.blob_start[i])
        return self.buf[s : s + int(self.blob_len[i])]


def _gather(u8: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """``width`` (<= 64) bytes at each position, as an (n, width) array; positions past the
    buffer read its padding (the callers' end-of-record checks reject such rows)."""
    windows = np.lib.stride_tricks.sliding_window_view(u8, PAD)
    return windows[np.minimum(pos, len(windows) - 1), :width]


_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)


def _varints(u8: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Avro longs (zigzag varints) at ``pos``: (values as int64, positions after, well-formed)."""
    g = _gather(u8, pos, 10)
    cont = g >= 0x80
    ok: np.ndarray = np.logical_not(cont.all(axis=1))
    length = np.argmin(cont, axis=1) + 1
    width = int(length.max()) if len(pos) else 0
    groups = (g[:, :width] & 0x7F).astype(np.uint64) << _SHIFTS[:width]
    if width and not bool((length == width).all()):
        groups[np.arange(width) >= length[:, None]] = 0
    raw = np.bitwise_or.reduce(groups, axis=1) if width else np.zeros(len(pos), np.uint64)
    value = ((raw >> np.uint64(1)) ^ (np.uint64(0) - (raw & np.uint64(1)))).view(np.int64)
    return value, pos + length, ok


def decode_columns(cols: RecordColumns) -> EventColumns:
    """Decode every record of ``cols``; raise like ``decode_fast`` on the first bad one."""
    n = len(cols)
    out = EventColumns(
        kind=np.full(n, KIND_NONE, np.int8), hlc=np.zeros(n, np.uint64), origin=np.zeros(n, np.int32),
        origins=[], ref=np.zeros((n, REF_SIZE), np.uint8), level=np.zeros(n, np.int64),
        size=np.zeros(n, np.int64), blob_start=np.zeros(n, np.int64), blob_len=np.zeros(n, np.int64),
        buf=cols.buf, resets=[],
    )
    if n == 0:
        return out
    # a buffer already ending in PAD zero bytes reads the same as a padded one
    buf = cols.buf if cols.buf.endswith(bytes(PAD)) else cols.buf + bytes(PAD)
    u8 = np.frombuffer(buf, np.uint8)
    s, ln = cols.starts, cols.lengths
    end = s + ln
    slow = np.ones(n, bool)
    cand = np.flatnonzero(ln > PREFIX)
    if len(cand):
        _fast(out, u8, s[cand], end[cand], cand, slow)
    _slow(out, cols, np.flatnonzero(slow))
    return out


def _fast(
    out: EventColumns, u8: np.ndarray, s: np.ndarray, end: np.ndarray, rows: np.ndarray, slow: np.ndarray,
) -> None:
    """Parse the rows that look like hot v1 events; clear ``slow`` for each one parsed."""
    head = _gather(u8, s, PREFIX + 1)
    fp = np.ascontiguousarray(head[:, 2:PREFIX]).view("<u8").ravel()
    kind = np.full(len(s), KIND_NONE, np.int8)
    for value, k in _FP.items():
        kind[fp == np.uint64(value)] = k
    ob = head[:, PREFIX]
    ok = (head[:, 0] == MAGIC[0]) & (head[:, 1] == MAGIC[1]) & (kind != KIND_NONE) & (ob < 0x80) & (ob & 1 == 0)
    olen = (ob >> 1).astype(np.int64)
    ostart = s + PREFIX + 1
    origin = np.full(len(s), -1, np.int32)
    for length in np.unique(olen[ok]).tolist():
        _origins(out, u8, ostart, olen, ok & (olen == length), length, origin)
    ok &= origin >= 0
    hlc, p, good = _varints(u8, ostart + olen)
    ok &= good & (hlc >= 0)
    ref = _gather(u8, p, REF_SIZE)
    p = p + REF_SIZE
    level = np.zeros(len(s), np.int64)
    size = np.zeros(len(s), np.int64)
    bstart = np.zeros(len(s), np.int64)
    blen = np.zeros(len(s), np.int64)
    seg = kind == KIND_SEGMENT
    if seg.any():
        v, q, good = _varints(u8, p[seg])
        ok[seg] &= good & (v >= 0) & (q + v == end[seg])
        size[seg] = v
        bstart[seg], blen[seg] = q, v
    grp = kind == KIND_REFERENCE
    if grp.any():
        lv, q, g1 = _varints(u8, p[grp])
        sz, q, g2 = _varints(u8, q)
        cl, q, g3 = _varints(u8, q)
        ok[grp] &= g1 & g2 & g3 & (lv >= 0) & (sz >= 0) & (cl >= 0) & (q + cl == end[grp])
        level[grp], size[grp] = lv, sz
        bstart[grp], blen[grp] = q, cl
    ev = kind == KIND_EVICTED
    ok[ev] &= p[ev] == end[ev]
    good_rows = rows[ok]
    slow[good_rows] = False
    out.kind[good_rows] = kind[ok]
    out.hlc[good_rows] = hlc[ok].view(np.uint64)
    out.origin[good_rows] = origin[ok]
    out.ref[good_rows] = ref[ok]
    out.level[good_rows] = level[ok]
    out.size[good_rows] = size[ok]
    out.blob_start[good_rows] = bstart[ok]
    out.blob_len[good_rows] = blen[ok]


def _origins(out: EventColumns, u8: np.ndarray, ostart: np.ndarray, olen: np.ndarray, mask: np.ndarray,
             length: int, origin: np.ndarray) -> None:
    """Give the masked rows (origins of ``length`` bytes) their origin index, a few origins at a time."""
    idx = np.flatnonzero(mask)
    g = _gather(u8, ostart[idx], length) if length else np.zeros((len(idx), 0), np.uint8)
    for _ in range(_MAX_ORIGINS):
        if not len(idx):
            return
        first = g[0]
        same = (g == first).all(axis=1)
        try:
            name = first.tobytes().decode("utf-8")
        except UnicodeDecodeError:
            return  # left for the per-record path, which reports it
        if name not in out.origins:
            out.origins.append(name)
        origin[idx[same]] = out.origins.index(name)
        idx, g = idx[~same], g[~same]


def _slow(out: EventColumns, cols: RecordColumns, rows: np.ndarray) -> None:
    """Decode ``rows`` one by one (``decode_fast``), appending blobs after the buffer."""
    extra: list[bytes] = []
    at = len(out.buf)
    for i in rows.tolist():
        ev = decode_fast(cols.value(i))
        kind = _KINDS.get(ev["type"], KIND_NONE)
        if ev["type"] == "StoreReset":
            out.resets.append(ev)
        if kind == KIND_NONE or "ref" not in ev:
            continue
        ref = ev["ref"]
        if len(ref) != REF_SIZE:
            raise CorruptLogError(f"{ev['type']} at offset {int(cols.offsets[i])} has a {len(ref)}-byte reference")
        if ev["hlc"] < 0:
            raise CorruptLogError(f"{ev['type']} at offset {int(cols.offsets[i])} has a negative clock")
        if ev["origin"] not in out.origins:
            out.origins.append(ev["origin"])
        out.kind[i] = kind
        out.hlc[i] = ev["hlc"]
        out.origin[i] = out.origins.index(ev["origin"])
        out.ref[i] = np.frombuffer(ref, np.uint8)
        blob = ev.get("data") if kind == KIND_SEGMENT else ev.get("children") if kind == KIND_REFERENCE else None
        if kind == KIND_SEGMENT:
            out.size[i] = len(blob or b"")
        elif kind == KIND_REFERENCE:
            out.level[i], out.size[i] = ev["level"], ev["size"]
        if blob:
            out.blob_start[i], out.blob_len[i] = at, len(blob)
            extra.append(blob)
            at += len(blob)
    if extra:
        out.buf = out.buf + b"".join(extra)


def forged_segments(ev: EventColumns) -> np.ndarray:
    """Indices of the segments whose bytes do not hash to their reference (a peer's data is
    checked before it is applied: a segment is stored under the hash of its bytes)."""
    seg = np.flatnonzero(ev.kind == KIND_SEGMENT)
    buf = memoryview(ev.buf)
    bad = [int(i) for i in seg
           if hashlib.sha256(buf[int(ev.blob_start[i]) : int(ev.blob_start[i] + ev.blob_len[i])]).digest()[:16]
           != ev.ref[i].tobytes()]
    return np.asarray(bad, dtype=np.int64)
