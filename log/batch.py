"""The on-disk record batch: the unit the file log writes, checks, indexes and mirrors.

Layout (little-endian), 40-byte header then payload::

    magic        4s   b"DSB2" (b"DSB1": the first payload layout, still read)
    length       u32  bytes after this field (header rest + payload)
    crc          u32  CRC32C of every byte after this field
    base_offset  u64  offset of the first record
    count        u32  number of records
    timestamp_ms u64  append time, shared by every record of the batch
    codec        u8   0 = none, 1 = lz4 block
    flags        u8   reserved, 0
    reserved     u16  0
    raw_len      u32  payload length before compression
    payload           count x u32 length, then the values back to back; compressed by codec
                      (DSB1: count x (u32 length, value bytes))

A batch is self-checking: a reader recomputes the CRC before trusting a single byte, so a
torn or flipped batch is never returned. Mirrors copy batches byte for byte (``raw``).

DSB2 puts the lengths first so that a reader finds every value's place with one vectorized
prefix sum instead of a walk from length to length: replay reads whole batches as columns
(``Batch.columns``) without one Python object per record.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import crc32c
import lz4.block
import numpy as np

from dssync.errors import CorruptLogError

MAGIC = b"DSB2"
MAGIC_V1 = b"DSB1"
HEADER = struct.Struct("<4sIIQIQBBHI")
HEADER_SIZE = HEADER.size  # 40
CRC_START = 12  # the CRC covers bytes [12, end)
CODEC_NONE = 0
CODEC_LZ4 = 1
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class Batch:
    """A validated batch: its header fields and its bytes exactly as stored."""

    base_offset: int
    count: int
    timestamp_ms: int
    raw: bytes

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.count

    @property
    def size(self) -> int:
        return len(self.raw)

    def payload(self) -> bytes:
        """The decompressed payload."""
        _, _, _, _, _, _, codec, _, _, raw_len = HEADER.unpack_from(self.raw)
        body = memoryview(self.raw)[HEADER_SIZE:]
        if codec != CODEC_LZ4:
            return bytes(body)
        try:
            return bytes(lz4.block.decompress(body, uncompressed_size=raw_len))
        except lz4.block.LZ4BlockError as exc:  # CRC passed, so this is a writer bug
            raise CorruptLogError(f"batch at offset {self.base_offset} does not decompress: {exc}") from exc

    def columns(self) -> tuple[bytes, np.ndarray, np.ndarray]:
        """(payload, starts, lengths): where each value lies in the decompressed payload."""
        payload = self.payload()
        count = self.count
        if self.raw[:4] == MAGIC_V1:
            starts_l: list[int] = []
            lens_l: list[int] = []
            pos = 0
            unpack = _LEN.unpack_from
            try:
                for _ in range(count):
                    (n,) = unpack(payload, pos)
                    starts_l.append(pos + 4)
                    lens_l.append(n)
                    pos += 4 + n
            except struct.error:
                pos = -1
            starts, lengths = np.array(starts_l, np.int64), np.array(lens_l, np.int64)
        else:
            if 4 * count > len(payload):
                pos = -1
                starts = lengths = np.zeros(0, np.int64)
            else:
                lengths = np.frombuffer(payload, "<u4", count).astype(np.int64)
                ends = np.cumsum(lengths) + 4 * count
                starts = ends - lengths
                pos = int(ends[-1]) if count else 4 * count
        if pos != len(payload):
            raise CorruptLogError(f"batch at offset {self.base_offset} has a malformed payload")
        return payload, starts, lengths

    @property
    def stored_as_is(self) -> bool:
        """Whether the payload is uncompressed: each value then lies verbatim in the file,
        at the batch's position + ``HEADER_SIZE`` + its start in the payload."""
        return self.raw[32] == CODEC_NONE  # the codec byte of the header

    def values(self) -> list[bytes]:
        """Decompress and split the payload into record values."""
        payload, starts, lengths = self.columns()
        return [payload[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]


def encode(base_offset: int, timestamp_ms: int, values: list[bytes], compress: bool = True,
           layout: int = 2) -> bytes:
    """Build the bytes of one batch holding ``values`` (``layout=1``: what older builds wrote)."""
    return build(base_offset, timestamp_ms, values, compress, layout)[0]


def build(base_offset: int, timestamp_ms: int, values: list[bytes], compress: bool = True,
          layout: int = 2) -> tuple[bytes, bytes | memoryview, bool]:
    """``encode``, also returning the uncompressed payload and whether it is stored as is
    (codec none: the payload then lies verbatim at ``HEADER_SIZE`` in the batch's bytes, and
    the returned payload is a view of them)."""
    if layout == 1:
        payload = b"".join(_LEN.pack(len(v)) + v for v in values)
        magic = MAGIC_V1
    else:
        payload = struct.pack(f"<{len(values)}I", *map(len, values)) + b"".join(values)
        magic = MAGIC
    codec = CODEC_NONE
    body = payload
    if compress and payload and _worth_compressing(payload):
        packed = lz4.block.compress(payload, store_size=False)
        if len(packed) < len(payload):
            codec, body = CODEC_LZ4, packed
    header = HEADER.pack(
        magic, HEADER_SIZE - 8 + len(body), 0, base_offset, len(values), timestamp_ms,
        codec, 0, 0, len(payload),
    )
    crc = crc32c.crc32c(header[CRC_START:])
    crc = crc32c.crc32c(body, crc)
    data = header[:8] + struct.pack("<I", crc) + header[CRC_START:] + body
    if codec == CODEC_NONE:
        return data, memoryview(data)[HEADER_SIZE:], True
    return data, payload, False


_SAMPLE = 32 << 10


def _worth_compressing(payload: bytes) -> bool:
    """Whether lz4 is worth running over a payload: a big one is judged by a 32 KiB sample
    from its middle (new segments of already compressed traffic do not shrink, and trying
    costs as much time as writing them). Small payloads are always tried."""
    if len(payload) < 4 * _SAMPLE:
        return True
    mid = len(payload) // 2
    sample = payload[mid : mid + _SAMPLE]
    return len(lz4.block.compress(sample, store_size=False)) < 0.9 * len(sample)


class Incomplete(Exception):
    """Fewer bytes than the batch needs: a torn tail, or a write still in progress."""


def check_header(head: bytes | memoryview) -> tuple[int, int, int, int]:
    """Parse a 40-byte header; return (total size, base offset, count, timestamp).

    Raises ``CorruptLogError`` when the header cannot be a batch header.
    """
    magic, length, _crc, base, count, ts, codec, _flags, _res, _raw_len = HEADER.unpack_from(head)
    if magic not in (MAGIC, MAGIC_V1) or length < HEADER_SIZE - 8 or codec > CODEC_LZ4:
        raise CorruptLogError("bad batch header")
    return length + 8, base, count, ts


def read_from(f: BinaryIO) -> Batch | None:
    """Read and validate the next batch of a file; None at a clean end of file.

    Raises ``Incomplete`` when the file ends inside the batch and ``CorruptLogError`` when the
    bytes are not a valid batch; either way ``f`` is left after the bytes it read.
    """
    head = f.read(HEADER_SIZE)
    if not head:
        return None
    if len(head) < HEADER_SIZE:
        raise Incomplete()
    total, _base, _count, _ts = check_header(head)
    return parse(head + f.read(total - HEADER_SIZE))  # one buffer, kept as the batch's bytes


def group(values: Iterable[bytes], max_bytes: int) -> Iterator[list[bytes]]:
    """Cut a stream of record values into lists of about ``max_bytes`` (one batch each)."""
    pending: list[bytes] = []
    size = 0
    for v in values:
        pending.append(v)
        size += len(v)
        if size >= max_bytes:
            yield pending
            pending, size = [], 0
    if pending:
        yield pending


def verify(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int, int, int]:
    """Validate the batch starting at ``buf[pos]`` without copying it; return (total size,
    base offset, count, timestamp).

    Raises ``Incomplete`` if ``buf`` ends inside the batch and ``CorruptLogError`` if the
    bytes are there but are not a valid batch.
    """
    if len(buf) - pos < HEADER_SIZE:
        raise Incomplete()
    total, base, count, ts = check_header(buf[pos : pos + HEADER_SIZE])
    if len(buf) - pos < total:
        raise Incomplete()
    view = memoryview(buf)[pos : pos + total]
    (stored_crc,) = struct.unpack_from("<I", view, 8)
    if crc32c.crc32c(view[CRC_START:]) != stored_crc:
        raise CorruptLogError(f"batch at offset {base} fails its CRC32C")
    return total, base, count, ts


def parse(buf: bytes | memoryview, pos: int = 0) -> Batch:
    """Validate and return the batch starting at ``buf[pos]`` (errors as ``verify``)."""
    total, base, count, ts = verify(buf, pos)
    raw = buf if isinstance(buf, bytes) and pos == 0 and total == len(buf) else bytes(buf[pos : pos + total])
    return Batch(base, count, ts, raw)
