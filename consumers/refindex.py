"""The reference index: each reference's current row, in memory, found in one or two probes.

The store's DuckDB table answers every query that reads many rows (digests, status, snapshots,
wrapping); this index answers the hot path, reference -> (clock, origin, liveness, location),
for the merge of every apply, ``known`` and ``segment_bytes``. DuckDB's own answer to that
path, a primary key, is an ART index that holds 61-69 B per row in memory once an apply has
touched it and is rewritten at checkpoints (design notes, "The reference index").

The layout, borg's chunk index in numpy: an open-addressing hash table of entry ids (4 B per
slot, linear probing, at most ``MAX_LOAD`` full) over columns of entries held in fixed-size
chunks (no column is ever copied to grow, so memory never doubles for a moment). A slot is
chosen by the leading bits of the reference's second half (references are cryptographic hashes,
so the bits are uniform). Not the first half: references often arrive sorted (a snapshot is
written in reference order), and homes taken from the sorted bits would fill one region of the
table at a time while the rest stays empty, in probe runs as long as the batch (a snapshot load
of 42,656 events spent 5.4 s of its 7.2 s probing). A probe compares the whole 16 bytes, so a
lookup is exact whatever the slots collide on (``hash_bits`` shortens the slot key to force
collisions in tests). Every operation is
vectorized: one round of array operations per probe step, never a Python step per reference.

Entries are never removed (an evicted reference keeps its row, not live, for last-writer-wins).
Writers are serialized by the store; a lookup may run on another thread during a write and sees
each entry either before or after it (a writer fills an entry before it publishes its slot, and
a grown table replaces the old one in one assignment). An entry being overwritten may be read
torn; the store's only concurrent reader is a replay's next merge, which sees those references
through the staged apply instead (``Staged.overlay``).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import crc32c
import numpy as np

from dssync.consumers.digest import Tally, origin_word

EMPTY = np.uint32(0xFFFFFFFF)
MAX_LOAD = 0.75
"""A table is grown (to twice its slots) before it would be fuller than this: 5.3 to 10.7 B of
slots per entry, and a lookup of a reference not held (most of an ingest's) probes about 8.5
slots at the fullest, 2 when just grown."""
CHUNK_BITS = 22
"""Entries per chunk: 2**22 (4 M), about 230 MB of columns once filled; the memory of a chunk
is taken as it fills (``np.empty`` pages are touched only when written)."""
MIN_SLOTS = 1 << 10
MAX_ORIGINS = 1 << 16
"""An entry's origin is a uint16."""
MAGIC = b"dssync reference index 3\n"
"""A saved index of another layout is not read: the store builds its index from its rows."""
ALIGN = 64

FIELDS: dict[str, type] = {
    "hi": np.uint64, "lo": np.uint64, "hlc": np.uint64, "seq": np.uint64, "pos": np.int64,
    "size": np.uint32, "pack": np.int32, "origin": np.uint16, "level": np.uint8, "live": np.bool_,
}
"""An entry's columns: the reference (two big-endian halves), its row's clock, version number
(``seq`` of the DuckDB row), location (``pack``/``pos``, -1 for none), size, origin (an index
into ``origins``), level and liveness: 52 B an entry, plus 5-11 B of slots. ``size`` is exact for
segments (at most 4 GiB, the only ones whose bytes are read through the index) and capped for
higher references (their size is read from DuckDB)."""


@dataclass
class Entries:
    """Some entries' columns, one array per field of ``FIELDS``, ``origin`` indexing ``origins``."""

    hi: np.ndarray
    lo: np.ndarray
    hlc: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    size: np.ndarray
    pack: np.ndarray
    origin: np.ndarray
    level: np.ndarray
    live: np.ndarray

    def __len__(self) -> int:
        return len(self.hi)

    def take(self, which: np.ndarray) -> Entries:
        return Entries(**{f: getattr(self, f)[which] for f in FIELDS})


def halves(refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, 16) uint8 references as their two 8-byte halves, big-endian (they sort like the bytes)."""
    k = np.ascontiguousarray(refs).view(">u8").astype(np.uint64).reshape(-1, 2)
    return k[:, 0].copy(), k[:, 1].copy()


class RefIndex:
    """Reference -> current row, for every reference a store holds (module docstring)."""

    def __init__(self, hash_bits: int = 64, chunk_bits: int = CHUNK_BITS, slots: int = MIN_SLOTS) -> None:
        """``hash_bits``: how many leading bits of a reference's second half choose its slot (64 in use; a
        small number makes every reference collide, which tests use to show lookups exact).
        ``chunk_bits`` and ``slots`` (the first table's size, a power of two) are small in
        tests, so that a few entries cross chunks and grow the table."""
        if not 1 <= hash_bits <= 64 or slots & (slots - 1) or slots < 2:
            raise ValueError("hash_bits must be within 1..64 and slots a power of two")
        self._chunk_bits = chunk_bits
        self._hash_bits = hash_bits
        self._hash_mask = np.uint64(((1 << hash_bits) - 1) << (64 - hash_bits))
        self._chunks: list[dict[str, np.ndarray]] = []
        self._count = 0
        self._table = (np.full(slots, EMPTY, np.uint32), slots.bit_length() - 1)
        self.origins: list[str] = []
        self._origin_at: dict[str, int] = {}
        self._origin_words = np.zeros(MAX_ORIGINS, np.uint64)  # an origin not named yet hashes as 0
        self.tally = Tally()
        """The entries' counts and digest (``dssync.consumers.digest``), kept by every write."""

    def __len__(self) -> int:
        return self._count

    def nbytes(self) -> int:
        """Bytes held: the slots and the filled part of the chunks."""
        per_entry = sum(np.dtype(t).itemsize for t in FIELDS.values())
        return int(self._table[0].nbytes) + self._count * per_entry

    # ------------------------------------------------------------------ columns

    def _column(self, field: str, ids: np.ndarray) -> np.ndarray:
        """The ``field`` of the entries ``ids`` (any order, repeats allowed)."""
        out: np.ndarray = np.empty(len(ids), FIELDS[field])
        chunk = ids >> self._chunk_bits
        offset = ids & ((1 << self._chunk_bits) - 1)
        if len(self._chunks) == 1:
            out[:] = self._chunks[0][field][offset]
            return out
        for c in np.unique(chunk).tolist():
            at = chunk == c
            out[at] = self._chunks[c][field][offset[at]]
        return out

    def entries(self, ids: np.ndarray) -> Entries:
        """The entries ``ids`` (as ``lookup`` returns them, all present)."""
        ids = ids.astype(np.int64)
        return Entries(**{f: self._column(f, ids) for f in FIELDS})

    def _write(self, ids: np.ndarray, e: Entries) -> None:
        """Overwrite the entries ``ids`` (all held) with ``e``."""
        chunk = ids >> self._chunk_bits
        offset = ids & ((1 << self._chunk_bits) - 1)
        for c in np.unique(chunk).tolist():
            at = chunk == c
            columns = self._chunks[c]
            for f in FIELDS:
                columns[f][offset[at]] = getattr(e, f)[at]

    def _append(self, e: Entries) -> None:
        """Store ``e`` as the entries ``len(self)`` on, chunk by chunk, in slices (no scatter)."""
        done = 0
        while done < len(e):
            at = self._count + done
            c, offset = at >> self._chunk_bits, at & ((1 << self._chunk_bits) - 1)
            if c == len(self._chunks):
                self._chunks.append({f: np.empty(1 << self._chunk_bits, t) for f, t in FIELDS.items()})
            n = min(len(e) - done, (1 << self._chunk_bits) - offset)
            columns = self._chunks[c]
            for f in FIELDS:
                columns[f][offset:offset + n] = getattr(e, f)[done:done + n]
            done += n

    def origin_ids(self, names: Sequence[str]) -> np.ndarray:
        """Each origin's index in ``origins``, adding the ones not met yet."""
        out = np.empty(len(names), np.uint16)
        for k, n in enumerate(names):
            at = self._origin_at.get(n)
            if at is None:
                if len(self.origins) >= MAX_ORIGINS:
                    raise ValueError("more than 65,536 origins in one store")
                at = self._origin_at[n] = len(self.origins)
                self.origins.append(n)
                self._origin_words[at] = origin_word(n)
            out[k] = at
        return out

    def origin_words(self) -> np.ndarray:
        """``digest.origin_word`` of each origin, indexed as the entries' ``origin`` is."""
        return self._origin_words

    # ------------------------------------------------------------------ slots

    def _home(self, lo: np.ndarray, bits: int) -> np.ndarray:
        """The home slots of references whose second halves are ``lo`` (module docstring)."""
        if self._hash_mask != np.uint64(0xFFFFFFFFFFFFFFFF):
            lo = lo & self._hash_mask
        return (lo >> np.uint64(64 - bits)).astype(np.int64)

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The entry id of each reference (its two halves), -1 where the index has none."""
        slots, bits = self._table  # one read: a table grown meanwhile is seen whole or not at all
        mask = (1 << bits) - 1
        found = np.full(len(hi), -1, np.int64)
        pending = np.arange(len(hi))
        at = self._home(lo, bits)
        while len(pending):
            ids = slots[at]
            full = ids != EMPTY
            same = np.zeros(len(pending), bool)
            if full.any():
                cand = ids[full].astype(np.int64)
                p = pending[full]
                same[full] = (self._column("hi", cand) == hi[p]) & (self._column("lo", cand) == lo[p])
            found[pending[same]] = ids[same]
            go_on = full & ~same
            pending, at = pending[go_on], (at[go_on] + 1) & mask
        return found

    def _place(self, slots: np.ndarray, bits: int, lo: np.ndarray, ids: np.ndarray) -> None:
        """Put ``ids`` (entries not in ``slots``, references' second halves ``lo``) in their slots, probing on
        from their home slot. Of several entries after one free slot in a round, one gets it:
        all are written there, and the one read back is the one that stays."""
        mask = (1 << bits) - 1
        at = self._home(lo, bits)
        while len(ids):
            free = slots[at] == EMPTY
            slots[at[free]] = ids[free]
            left = ~free
            left[free] = slots[at[free]] != ids[free]
            ids, at = ids[left], (at[left] + 1) & mask

    def reserve(self, count: int) -> None:
        """Size the table for ``count`` entries at once (a bulk load then never grows it)."""
        self._grow_for(count)

    def _grow_for(self, count: int) -> None:
        slots, bits = self._table
        if count <= MAX_LOAD * len(slots):
            return
        while count > MAX_LOAD * (1 << bits):  # doubled: from 3/8 to 3/4 full until the next rebuild
            bits += 1
        grown = np.full(1 << bits, EMPTY, np.uint32)
        for c, columns in enumerate(self._chunks):
            n = min(1 << self._chunk_bits, self._count - (c << self._chunk_bits))
            if n > 0:
                first = c << self._chunk_bits
                self._place(grown, bits, columns["lo"][:n], np.arange(first, first + n, dtype=np.uint32))
        self._table = (grown, bits)

    # ------------------------------------------------------------------ writing

    def upsert(self, e: Entries) -> None:
        """Make ``e`` (distinct references) the current entries of their references: the ones
        held are overwritten in place, the others added."""
        if not len(e):
            return
        ids = self.lookup(e.hi, e.lo)
        held = ids >= 0
        if not held.any():
            self.add(e)
            return
        replaced = Tally.of(self.entries(ids[held]), self._origin_words)
        self._write(ids[held], e.take(held))
        if not held.all():
            self._add(e.take(~held))
        # one assignment: a reader on another thread sees the tally before this write or after
        self.tally = self.tally.plus(replaced, -1).plus(Tally.of(e, self._origin_words))

    def add(self, e: Entries) -> None:
        """Add ``e``: distinct references the index does not hold (a bulk load's rows)."""
        if not len(e):
            return
        self._add(e)
        self.tally = self.tally.plus(Tally.of(e, self._origin_words))

    def _add(self, e: Entries) -> None:
        """``add`` without counting ``e`` in the tally."""
        self._grow_for(self._count + len(e))
        self._append(e)  # filled before any slot points at them
        slots, bits = self._table
        self._place(slots, bits, e.lo, np.arange(self._count, self._count + len(e), dtype=np.uint32))
        self._count += len(e)

    def _tally_all(self) -> Tally:
        """The tally of every entry, counted chunk by chunk (an index saved without one)."""
        t = Tally()
        for c in range(len(self._chunks)):
            first = c << self._chunk_bits
            n = min(1 << self._chunk_bits, self._count - first)
            if n > 0:
                columns = self._chunks[c]
                t = t.plus(Tally.of(Entries(**{f: columns[f][:n] for f in FIELDS}), self._origin_words))
        return t

    # ------------------------------------------------------------------ saving

    def save(self, path: str, token: str, covers: int, fsync: bool = True) -> None:
        """Write the index to ``path`` (atomically: a whole new file renamed over the old), with
        ``token`` and ``covers`` (the versions it holds: every one below that number), which
        ``load`` must be given back to use the file: the store keeps both in its DuckDB file.

        The layout: ``MAGIC``, the header's length and CRC32C, the header (JSON: the table's
        shape, the origins, the tally, each column's offset and the CRC32C of the data), then
        the slots and each chunk's columns, each aligned to ``ALIGN`` bytes."""
        slots, bits = self._table
        parts: list[np.ndarray] = [slots]
        for c, columns in enumerate(self._chunks):
            n = min(1 << self._chunk_bits, self._count - (c << self._chunk_bits))
            parts += [columns[f][:max(n, 0)] for f in FIELDS]
        offsets, at, crc = [], 0, 0
        for a in parts:
            offsets.append(at)
            padded = -(-a.nbytes // ALIGN) * ALIGN
            crc = crc32c.crc32c(np.ascontiguousarray(a).data.cast("B"), crc)
            crc = crc32c.crc32c(bytes(padded - a.nbytes), crc)
            at += padded
        header = json.dumps({"token": token, "covers": covers, "count": self._count, "bits": bits,
                             "tally": self.tally.as_list(),
                             "chunk_bits": self._chunk_bits, "hash_bits": self._hash_bits,
                             "origins": self.origins, "offsets": offsets, "end": at, "crc": crc}).encode()
        start = _data_start(len(header))
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<QI", len(header), crc32c.crc32c(header)) + header)
            for a, off in zip(parts, offsets, strict=True):
                f.seek(start + off)
                f.write(np.ascontiguousarray(a).data.cast("B"))
            f.truncate(start + at)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @classmethod
    def load(cls, path: str, token: str, covers: int) -> RefIndex | None:
        """The index saved at ``path`` with this ``token`` and ``covers``; None if there is no
        such file, it is not whole, or a byte of it differs from what was saved (its CRC32Cs do
        not match): the caller then builds the index from the rows, so that a damaged file is
        never read as entries.

        Opening reads the file once to check it (through the page cache, at the checksum's
        speed: ~11 GB/s once cached; from the disk, in order, with the kernel told so: 3.2 GB/s
        on this project's machine against 1.2 without), then maps it copy-on-write: its pages
        come in as lookups touch them, and changes stay in this process's memory."""
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    return None
                length, header_crc = struct.unpack("<QI", f.read(12))
                if length > os.fstat(f.fileno()).st_size:
                    return None
                raw = f.read(length)
                if len(raw) != length or crc32c.crc32c(raw) != header_crc:
                    return None
                header: dict[str, Any] = json.loads(raw)
                start = _data_start(length)
                if header["token"] != token or header["covers"] != covers:
                    return None
                if os.fstat(f.fileno()).st_size != start + header["end"]:
                    return None
                with contextlib.suppress(OSError):  # read ahead further (docstring)
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                if _crc_of(f, start, header["end"]) != header["crc"]:
                    return None
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            return None
        index = cls(hash_bits=header["hash_bits"], chunk_bits=header["chunk_bits"])
        bits, count, per_chunk = header["bits"], header["count"], 1 << header["chunk_bits"]
        offsets = iter(header["offsets"])
        slots = np.frombuffer(mapped, np.uint32, 1 << bits, start + next(offsets))
        chunks: list[dict[str, np.ndarray]] = []
        for c in range(-(-count // per_chunk)):
            n = min(per_chunk, count - c * per_chunk)
            columns: dict[str, np.ndarray] = {}
            for field, t in FIELDS.items():
                saved: np.ndarray = np.frombuffer(mapped, t, n, start + next(offsets))
                if n < per_chunk:  # the chunk being filled: a whole one in memory, to grow into
                    column = np.empty(per_chunk, t)
                    column[:n] = saved
                    saved = column
                columns[field] = saved
            chunks.append(columns)
        index._table = (slots, bits)
        index._chunks = chunks
        index._count = count
        index.origins = list(header["origins"])
        index._origin_at = {n: k for k, n in enumerate(index.origins)}
        index._origin_words[:len(index.origins)] = [origin_word(n) for n in index.origins]
        index.tally = Tally.from_list(header["tally"]) if "tally" in header else index._tally_all()
        return index


def _data_start(header_length: int) -> int:
    """Where a saved index's data starts: after the magic, the header's length and CRC, and the
    header, at the next ``ALIGN`` boundary."""
    return -(-(len(MAGIC) + 12 + header_length) // ALIGN) * ALIGN


def _crc_of(f: Any, start: int, length: int, block: int = 16 << 20) -> int:
    """The CRC32C of ``length`` bytes of the open file ``f`` from ``start``, read in blocks."""
    buf = bytearray(block)
    view = memoryview(buf)
    crc, left = 0, length
    f.seek(start)
    while left:
        n = f.readinto(view[:min(block, left)])
        if not n:
            raise ValueError("short read")
        crc = crc32c.crc32c(view[:n], crc)
        left -= n
    return crc
