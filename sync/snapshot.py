"""Store snapshots: the whole store as events, so that loading one is just another replay.

A snapshot lists every row of a store as the event that produced it, with its original
origin and clock: ``SegmentStored`` (with the bytes from the packs) for a live segment,
``ReferenceStored`` for a live higher-level reference, ``SegmentEvicted`` for a tombstone.
Applied to any store, last-writer-wins makes the rows identical to the source's, so a
snapshot plus the source's log after ``covers_to`` converge exactly. The events travel in
ordinary log batches (offsets from 0), and land in a snapshot log the service replays.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterable, Iterator

from dssync.consumers.packs import Packs
from dssync.consumers.store import Row
from dssync.errors import CorruptLogError, CorruptStoreError, PairingRefusedError, TransientError
from dssync.log import batch as batchfmt
from dssync.log.filelog import FileLog
from dssync.schemas import encode, encode_segment_stored, origin_field
from dssync.sync import auth, protocol
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


def download(client: PeerClient, directory: str,
             progress: Callable[[int], None] = lambda events: None) -> tuple[int, int, str]:
    """Fetch the peer's snapshot into a new file log at ``directory``.

    Returns (covers_to, events, store_id): the snapshot holds the effect of the peer's own
    log below ``covers_to``. The reply's headers and every batch are authenticated (chained
    tags, ``auth.StreamTags``) and a batch is written only once its tag is checked; the stream
    must end with its end frame. A broken or refused transfer raises ``TransientError`` or
    ``PairingRefusedError`` (retry from scratch); nothing of it is loaded. ``progress`` is told
    the events received so far after each read (a large store's transfer takes minutes).
    """
    resp, tag = client.request("/v1/snapshot")
    peer = client.cfg.peer
    try:
        if resp.status != 200:
            body = resp.read(protocol.MAX_JSON_BYTES).decode(errors="replace")
            client.close()
            raise TransientError(f"snapshot request failed with HTTP {resp.status}: {body}")
        headers = {k.lower(): v for k, v in resp.getheaders()}
        auth.check_reply(client.key, tag, 200, headers, 0, peer)
        reply = headers[auth.H_REPLY.lower()]
        covers_to = int(headers.get("x-dssync-covers-to") or 0)
        store_id = headers.get("x-dssync-store-id") or ""
        tags = auth.StreamTags(client.key, reply)
        snap = FileLog(directory, writer=True, create=True, fsync="never")
        buf = bytearray()
        events = 0
        ended = False
        try:
            while not ended:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                buf += chunk
                for raw, frame_tag in split_frames(buf):
                    if raw is None:
                        tags.check(auth.END_FRAME, frame_tag, peer)
                        ended = True
                        break
                    tags.check(raw, frame_tag, peer)
                    snap.append_raw(raw)
                    events += batchfmt.check_header(raw[: batchfmt.HEADER_SIZE])[2]
                progress(events)
            snap.flush()
        finally:
            snap.close()
    except (OSError, http.client.HTTPException, CorruptLogError) as exc:
        client.close()
        raise TransientError(f"snapshot transfer broke: {exc}") from None
    except PairingRefusedError:
        client.close()
        raise
    if not ended or buf:
        client.close()
        raise TransientError("the snapshot transfer ended before its end frame")
    return covers_to, events, store_id


def split_frames(buf: bytearray) -> Iterator[tuple[bytes | None, bytes]]:
    """Take whole frames (a batch and its tag, or the end frame: None) off the front of ``buf``
    (a receive buffer); leave the rest. A batch over the link's cap is refused unread."""
    while True:
        if buf[: len(auth.END_FRAME)] == auth.END_FRAME:
            need = len(auth.END_FRAME) + auth.TAG_BYTES
            if len(buf) < need:
                return
            tag = bytes(buf[len(auth.END_FRAME) : need])
            del buf[:need]
            yield None, tag
            return
        if len(buf) < batchfmt.HEADER_SIZE:
            return
        total, _base, _count, _ts = batchfmt.check_header(bytes(buf[: batchfmt.HEADER_SIZE]))
        if total > protocol.MAX_BATCH_BYTES:
            raise CorruptLogError(f"a snapshot batch of {total} bytes (the link carries at most "
                                  f"{protocol.MAX_BATCH_BYTES})")
        if len(buf) < total + auth.TAG_BYTES:
            return
        raw = bytes(buf[:total])
        tag = bytes(buf[total : total + auth.TAG_BYTES])
        del buf[: total + auth.TAG_BYTES]
        yield raw, tag


