"""Records as columns: many log records in one buffer, located by arrays instead of objects.

Replay moves millions of records; one ``LogRecord`` (and one ``bytes``) per record costs more
than everything else a record needs. ``RecordColumns`` keeps the decompressed payloads of
whole batches in one buffer and says where each value lies, so the consumer decodes and
applies them with vectorized code. ``from_records`` adapts any log that returns ``LogRecord``s.

A file log also says where each value lies in its files (``Placement``), when the batch holding
it is stored uncompressed: a store may then keep that place instead of a copy of the bytes
(``dssync.consumers.packs``, log-resident segments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from dssync.log.base import LogRecord

PAD = 64
"""Zero bytes after the last record of every buffer built here, so that vectorized decoders
may read a fixed width past any record's start without a copy of the buffer."""


@dataclass(frozen=True)
class Placement:
    """Where the records' values lie in a file log: record ``i``'s value starts at byte
    ``pos[i]`` of the segment file with base offset ``segment[i]`` in ``directory`` (-1: its
    batch is compressed, the value is not in the file as is)."""

    directory: str
    segment: np.ndarray  # int64
    pos: np.ndarray  # int64

    def take(self, sel: slice | np.ndarray) -> Placement:
        return Placement(self.directory, self.segment[sel], self.pos[sel])


@dataclass(frozen=True)
class RecordColumns:
    """Records in offset order; record ``i`` is ``buf[starts[i] : starts[i] + lengths[i]]``."""

    offsets: np.ndarray  # int64
    timestamps: np.ndarray  # int64, append time in ms
    buf: bytes
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64
    placement: Placement | None = None

    def take(self, sel: slice | np.ndarray) -> RecordColumns:
        """The records selected by ``sel`` (a slice or a mask; the buffer is shared)."""
        return RecordColumns(self.offsets[sel], self.timestamps[sel], self.buf, self.starts[sel], self.lengths[sel],
                             self.placement.take(sel) if self.placement is not None else None)

    def __len__(self) -> int:
        return len(self.offsets)

    def value(self, i: int) -> bytes:
        s = int(self.starts[i])
        return self.buf[s : s + int(self.lengths[i])]

    def records(self) -> list[LogRecord]:
        """The same records as objects (for code that wants them one by one)."""
        return [LogRecord(o, t, self.buf[s : s + n]) for o, t, s, n in zip(
            self.offsets.tolist(), self.timestamps.tolist(), self.starts.tolist(), self.lengths.tolist(), strict=True)]

    def since(self, offset: int) -> RecordColumns:
        """The records at or after ``offset`` (a view: the buffer is shared)."""
        k = int(np.searchsorted(self.offsets, offset))
        if k == 0:
            return self
        return self.take(slice(k, None))

    @classmethod
    def empty(cls) -> RecordColumns:
        z = np.zeros(0, np.int64)
        return cls(z, z, b"", z, z)

    @classmethod
    def from_records(cls, records: Iterable[LogRecord]) -> RecordColumns:
        recs = records if isinstance(records, Sequence) else list(records)
        if not recs:
            return cls.empty()
        lengths = np.fromiter((len(r.value) for r in recs), np.int64, len(recs))
        starts = np.cumsum(lengths) - lengths
        return cls(np.fromiter((r.offset for r in recs), np.int64, len(recs)),
                   np.fromiter((r.timestamp_ms for r in recs), np.int64, len(recs)),
                   b"".join([*(r.value for r in recs), bytes(PAD)]), starts, lengths)

    @classmethod
    def from_parts(cls, parts: Sequence[tuple[int, int, bytes | memoryview, np.ndarray, np.ndarray]],
                   places: Sequence[tuple[int, int]] | None = None, directory: str = "") -> RecordColumns:
        """Join (base offset, timestamp, payload, starts, lengths) of consecutive batches.

        ``places`` gives, per batch of a file log in ``directory``, (segment base offset, file
        position of its payload), position -1 for a compressed batch; it becomes ``placement``.
        """
        if not parts:
            return cls.empty()
        shift = 0
        offsets, stamps, starts = [], [], []
        for base, ts, payload, st, ln in parts:
            offsets.append(np.arange(base, base + len(ln), dtype=np.int64))
            stamps.append(np.full(len(ln), ts, np.int64))
            starts.append(st + shift)
            shift += len(payload)
        placement = None
        if places is not None:
            counts = [len(p[4]) for p in parts]
            segment = np.repeat(np.array([s for s, _ in places], np.int64), counts)
            pos = np.concatenate([p[3] + at if at >= 0 else np.full(len(p[3]), -1, np.int64)
                                  for p, (_, at) in zip(parts, places, strict=True)])
            placement = Placement(directory, segment, pos)
        return cls(np.concatenate(offsets), np.concatenate(stamps), b"".join([*(p[2] for p in parts), bytes(PAD)]),
                   np.concatenate(starts), np.concatenate([p[4] for p in parts]), placement)


def read_in_steps(
    read: Callable[[int, int], list[LogRecord]], from_offset: int, max_records: int, max_bytes: int,
    step: int = 10_000,
) -> RecordColumns:
    """``RecordColumns`` from a record-by-record ``read(from_offset, max_records)``, stopping at
    ``max_records`` records or ``max_bytes`` of values (for logs without a columnar read)."""
    out: list[LogRecord] = []
    size = 0
    at = from_offset
    while len(out) < max_records and size < max_bytes:
        got = read(at, min(step, max_records - len(out)))
        if not got:
            break
        out.extend(got)
        size += sum(len(r.value) for r in got)
        at = got[-1].offset + 1
    return RecordColumns.from_records(out)
