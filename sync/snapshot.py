"""Store snapshots: the whole store as events, so that loading one is just another replay.

A snapshot lists every row of a store as the event that produced it, with its original
origin and clock: ``SegmentStored`` (with the bytes from the packs) for a live segment,
``ReferenceStored`` for a live higher-level reference, ``SegmentEvicted`` for a tombstone.
Applied to any store, last-writer-wins makes the rows identical to the source's, so a
snapshot plus the source's log after ``covers_to`` converge exactly. The events travel in
ordinary log batches (offsets from 0), and land in a snapshot log the service replays.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from dssync.consumers.packs import Packs
from dssync.consumers.store import Row
from dssync.errors import CorruptStoreError, TransientError
from dssync.log import batch as batchfmt
from dssync.log.filelog import FileLog
from dssync.schemas import encode, encode_segment_stored, origin_field
from dssync.sync import protocol
from dssync.sync.protocol import PeerClient

BATCH_BYTES = 1 << 20


def row_events(rows: Iterable[Row], packs: Packs) -> Iterator[bytes]:
    """The event that reproduces each row (rows whose bytes vanished in a wrap are skipped:
    their eviction, newer than the snapshot, follows in the log)."""
    origins: dict[str, bytes] = {}
    for ref, level, size, live, hlc, origin, pack, pos, children in rows:
        if not live:
            yield encode("SegmentEvicted", {"origin": origin, "hlc": hlc, "ref": ref})
        elif level == 0:
            if pack is None or pos is None:
                continue
            try:
                data = packs.read(pack, pos, size)
            except CorruptStoreError:
                continue
            of = origins.get(origin)
            if of is None:
                of = origins[origin] = origin_field(origin)
            yield encode_segment_stored(of, hlc, ref, data)
        else:
            yield encode("ReferenceStored", {"origin": origin, "hlc": hlc, "ref": ref, "level": level,
                                             "size": size, "children": children or b""})


def batches(events: Iterator[bytes], timestamp_ms: int) -> Iterator[bytes]:
    """Pack events into raw log batches with offsets from 0."""
    offset = 0
    for values in batchfmt.group(events, BATCH_BYTES):
        yield batchfmt.encode(offset, timestamp_ms, values)
        offset += len(values)


def download(client: PeerClient, directory: str) -> tuple[int, int, str]:
    """Fetch the peer's snapshot into a new file log at ``directory``.

    Returns (covers_to, events, store_id): the snapshot holds the effect of the peer's own
    log below ``covers_to``. A broken transfer raises ``TransientError`` (retry from scratch).
    """
    conn = client._connection()
    ts = f"{time.time():.3f}"
    ident = client.me.to_json()
    conn.request("GET", "/v1/snapshot", headers={
        protocol.H_TIME: ts, protocol.H_IDENTITY: ident,
        protocol.H_AUTH: protocol.sign(client.cfg.secret, "GET", "/v1/snapshot", ts, ident)})
    try:
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read().decode(errors="replace")
            raise TransientError(f"snapshot request failed with HTTP {resp.status}: {body}")
        covers_to = int(resp.getheader("X-Dssync-Covers-To") or 0)
        store_id = resp.getheader("X-Dssync-Store-Id") or ""
        snap = FileLog(directory, writer=True, create=True, fsync="never")
        buf = bytearray()
        events = 0
        try:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                buf += chunk
                for raw in split_batches(buf):
                    snap.append_raw(raw)
                    events += batchfmt.check_header(raw[: batchfmt.HEADER_SIZE])[2]
            snap.flush()
        finally:
            snap.close()
    except OSError as exc:
        client.close()
        raise TransientError(f"snapshot transfer broke: {exc}") from None
    if buf:
        raise TransientError("the snapshot transfer ended inside a batch")
    return covers_to, events, store_id


def split_batches(buf: bytearray) -> Iterator[bytes]:
    """Take whole batches off the front of ``buf`` (a receive buffer); leave the rest."""
    while len(buf) >= batchfmt.HEADER_SIZE:
        total, _base, _count, _ts = batchfmt.check_header(bytes(buf[: batchfmt.HEADER_SIZE]))
        if len(buf) < total:
            return
        raw = bytes(buf[:total])
        del buf[:total]
        yield raw
