"""Records as columns: many log records in one buffer, located by arrays instead of objects.

Replay moves millions of records; one ``LogRecord`` (and one ``bytes``) per record costs more
than everything else a record needs. ``RecordColumns`` keeps the decompressed payloads of
whole batches in one buffer and says where each value lies, so the consumer decodes and
applies them with vectorized code. ``from_records`` adapts any log that returns ``LogRecord``s.
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
class RecordColumns:
    """Records in offset order; record ``i`` is ``buf[starts[i] : starts[i] + lengths[i]]``."""

    offsets: np.ndarray  # int64
    timestamps: np.ndarray  # int64, append time in ms
    buf: bytes
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64

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
        return RecordColumns(self.offsets[k:], self.timestamps[k:], self.buf, self.starts[k:], self.lengths[k:])

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
    def from_parts(cls, parts: list[tuple[int, int, bytes, np.ndarray, np.ndarray]]) -> RecordColumns:
        """Join (base offset, timestamp, payload, starts, lengths) of consecutive batches."""
        if not parts:
            return cls.empty()
        shift = 0
        offsets, stamps, starts = [], [], []
        for base, ts, payload, st, ln in parts:
            offsets.append(np.arange(base, base + len(ln), dtype=np.int64))
            stamps.append(np.full(len(ln), ts, np.int64))
            starts.append(st + shift)
            shift += len(payload)
        return cls(np.concatenate(offsets), np.concatenate(stamps), b"".join([*(p[2] for p in parts), bytes(PAD)]),
                   np.concatenate(starts), np.concatenate([p[4] for p in parts]))


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
