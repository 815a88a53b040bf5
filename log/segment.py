"""Segment files and their offset/time index.

A log directory holds segment files named by the offset of their first record,
``00000000000000000000.log``, each with an ``.index`` beside it: one 24-byte entry per batch,
``(base_offset u64, file position u64, timestamp_ms u64)``, written after the batch. Offsets
and timestamps only grow within a log, so one sorted index serves seeks by offset and by time.

The index is a hint, never the truth: the writer rebuilds it from the segment at recovery, and
readers re-check every batch they read against its CRC.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field

from dssync.errors import CorruptLogError
from dssync.log import batch as batchfmt

INDEX_ENTRY = struct.Struct("<QQQ")
SUFFIX = ".log"
INDEX_SUFFIX = ".index"


def segment_path(directory: str, base_offset: int) -> str:
    return os.path.join(directory, f"{base_offset:020d}{SUFFIX}")


def index_path(directory: str, base_offset: int) -> str:
    return os.path.join(directory, f"{base_offset:020d}{INDEX_SUFFIX}")


def list_segments(directory: str) -> list[int]:
    """Base offsets of the segment files in ``directory``, oldest first."""
    bases = []
    for name in os.listdir(directory):
        if name.endswith(SUFFIX) and len(name) == 20 + len(SUFFIX) and name[:20].isdigit():
            bases.append(int(name[:20]))
    bases.sort()
    return bases


def read_index(directory: str, base_offset: int) -> list[tuple[int, int, int]]:
    """The index entries of a segment (empty if the index file is missing)."""
    try:
        with open(index_path(directory, base_offset), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    whole = len(data) - len(data) % INDEX_ENTRY.size
    return list(INDEX_ENTRY.iter_unpack(data[:whole]))


@dataclass
class ScanResult:
    """What a scan of one segment found: valid batches up to ``valid_end``, then ``problem``."""

    entries: list[tuple[int, int, int]] = field(default_factory=list)
    valid_end: int = 0
    next_offset: int = 0
    last_timestamp: int = 0
    file_size: int = 0
    problem: str | None = None


def scan(path: str, base_offset: int, prev_timestamp: int = 0) -> ScanResult:
    """Validate every batch of a segment file, stopping at the first bad or torn one."""
    result = ScanResult(next_offset=base_offset, last_timestamp=prev_timestamp)
    with open(path, "rb") as f:
        result.file_size = os.fstat(f.fileno()).st_size
        pos = 0
        while True:
            try:
                b = batchfmt.read_from(f)
                if b is None:
                    break
            except batchfmt.Incomplete:
                result.problem = f"torn batch at byte {pos}"
                break
            except CorruptLogError as exc:
                result.problem = f"{exc} (byte {pos})"
                break
            if b.base_offset != result.next_offset or b.count == 0:
                result.problem = (
                    f"batch at byte {pos} has offset {b.base_offset}, expected {result.next_offset}"
                )
                break
            if b.timestamp_ms < result.last_timestamp:
                result.problem = f"batch at byte {pos} goes back in time"
                break
            result.entries.append((b.base_offset, pos, b.timestamp_ms))
            result.next_offset = b.next_offset
            result.last_timestamp = b.timestamp_ms
            pos += b.size
        result.valid_end = pos
    return result


def write_index(directory: str, base_offset: int, entries: list[tuple[int, int, int]]) -> None:
    """Replace a segment's index with ``entries`` (atomically, via rename)."""
    final = index_path(directory, base_offset)
    data = b"".join(INDEX_ENTRY.pack(*e) for e in entries)
    try:
        with open(final, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    tmp = final + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, final)


def seek_position(entries: list[tuple[int, int, int]], offset: int) -> int:
    """File position of the last indexed batch starting at or before ``offset`` (0 if none)."""
    i = bisect_right(entries, offset, key=lambda e: e[0])
    return entries[i - 1][1] if i else 0


def iter_batches(path: str, position: int, is_last: bool) -> Iterator[batchfmt.Batch]:
    """Valid batches of a segment from ``position`` on.

    A torn or failing batch at the very end of the last segment is a write in progress and
    ends the iteration quietly; anywhere else it raises ``CorruptLogError``.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally, generator-scoped
    except FileNotFoundError:
        return
    try:
        size = os.fstat(f.fileno()).st_size
        f.seek(position)
        pos = position
        while True:
            try:
                b = batchfmt.read_from(f)
                if b is None:
                    return
            except batchfmt.Incomplete:
                if is_last:
                    return
                raise CorruptLogError(f"segment {os.path.basename(path)} ends inside a batch") from None
            except CorruptLogError as exc:
                if is_last and f.tell() >= size:  # the last batch, still being written
                    return
                raise CorruptLogError(f"{exc.message} in {os.path.basename(path)} at byte {pos}") from None
            yield b
            pos += b.size
    finally:
        f.close()
