"""The optimization path of one appliance: bytes in, events out, exact savings accounting.

Input is cut into windows of about ``window_bytes``. For each window: chunk, label, build
the higher-level runs, ask the store in one batch which references it already holds, then
walk the runs top-down: a run the store knows crosses the WAN as one reference; otherwise
each segment crosses as a reference (known) or as literal bytes (new). New segments and
runs become events, appended to the local log in batches, and the store applies them before
the next window, so the next lookup sees them.

Wire cost model (what ``wire_bytes`` counts): a reference costs ``WIRE_REF`` bytes (a tag and
16 bytes); new data costs its length plus ``WIRE_LITERAL`` bytes of framing; data below
``MIN_STORED`` bytes is sent literally and never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Protocol

from dssync.hlc import HybridLogicalClock
from dssync.log.batch import group
from dssync.producers.chunker import Chunker
from dssync.producers.hierarchy import build_groups, segment_ref
from dssync.schemas import encode, encode_segment_stored, origin_field

WIRE_REF = 17
WIRE_LITERAL = 5
MIN_STORED = 16
EVENT_BATCH_BYTES = 1 << 20


class EventSink(Protocol):
    """Where the optimizer writes: the local log, plus a way to ask the store."""

    def known(self, refs: list[bytes]) -> set[bytes]: ...

    def append(self, batches: list[list[bytes]]) -> int:
        """Append the batches in order, each atomically; return the first offset."""
        ...

    def applied(self) -> None: ...


@dataclass
class IngestStats:
    bytes_in: int = 0
    wire_bytes: int = 0
    segments: int = 0
    new_segments: int = 0
    new_segment_bytes: int = 0
    new_higher_refs: int = 0
    refs_sent: int = 0
    literal_bytes: int = 0
    events: int = 0

    @property
    def savings(self) -> float:
        """Fraction of the input that would not cross the WAN (0 for empty input)."""
        return 1 - self.wire_bytes / self.bytes_in if self.bytes_in else 0.0

    def add(self, other: IngestStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "savings": round(self.savings, 6)}


class Optimizer:
    """Runs the optimization path for one appliance (one instance per writer)."""

    def __init__(
        self, origin: str, chunker: Chunker, hlc: HybridLogicalClock, sink: EventSink,
        window_bytes: int = 16 << 20,
    ) -> None:
        self.origin = origin
        self.chunker = chunker
        self.hlc = hlc
        self.sink = sink
        self.window_bytes = window_bytes
        self._origin_field = origin_field(origin)

    def ingest(self, stream: BinaryIO, progress: Callable[[int], None] | None = None) -> IngestStats:
        """Push one stream through the optimization path; return its accounting.

        Two-stage pipeline: while window N's events are written and applied on a helper
        thread (file writes, fsync and DuckDB release the GIL), window N+1 is chunked and
        hashed here. The lookup of N+1 waits for N to be applied, so it sees N's segments.
        """
        total = IngestStats()
        inflight: Future[None] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dssync-append") as pool:
            try:
                for chunks, size in self._windows(stream):
                    stored = [c for c in chunks if len(c) >= MIN_STORED]
                    refs = [segment_ref(c) for c in stored]
                    if inflight is not None:
                        inflight.result()  # N applied (its errors surface here)
                    st, events = self._plan(chunks, stored, refs)
                    total.add(st)
                    inflight = pool.submit(self._append, events)
                    if progress:
                        progress(size)
                if inflight is not None:
                    inflight.result()
            finally:
                if inflight is not None and not inflight.done():
                    inflight.cancel()
        return total

    def _windows(self, stream: BinaryIO) -> Iterator[tuple[list[bytes], int]]:
        window: list[bytes] = []
        size = 0
        for view in self.chunker.cut(stream):
            window.append(bytes(view))
            size += len(view)
            if size >= self.window_bytes:
                yield window, size
                window, size = [], 0
        if window:
            yield window, size

    def _plan(self, chunks: list[bytes], stored: list[bytes], refs: list[bytes]) -> tuple[IngestStats, list[bytes]]:
        """Look a window up in the store, account for it, and build its events."""
        st = IngestStats(bytes_in=sum(len(c) for c in chunks))
        for c in chunks:
            if len(c) < MIN_STORED:
                st.literal_bytes += len(c)
                st.wire_bytes += 1 + len(c)
        sizes = [len(c) for c in stored]
        st.segments = len(refs)
        g1 = build_groups(1, refs, sizes)
        g2 = build_groups(2, [g.ref for g in g1], [g.size for g in g1])
        lookup = list(refs)
        lookup += [g.ref for g in g1 if len(g.children) > 1]
        lookup += [g.ref for g in g2 if len(g.children) > 1]
        known = self.sink.known(lookup)
        events: list[bytes] = []

        def send_ref() -> None:
            st.wire_bytes += WIRE_REF
            st.refs_sent += 1

        for top in g2:
            if len(top.children) > 1 and top.ref in known:
                send_ref()
                continue
            for i1 in top.children:
                mid = g1[i1]
                if len(mid.children) > 1 and mid.ref in known:
                    send_ref()
                    continue
                for i0 in mid.children:
                    r = refs[i0]
                    if r in known:
                        send_ref()
                    else:
                        data = stored[i0]
                        st.wire_bytes += WIRE_LITERAL + len(data)
                        st.new_segments += 1
                        st.new_segment_bytes += len(data)
                        events.append(encode_segment_stored(self._origin_field, self.hlc.now(), r, data))
                        known.add(r)
                if len(mid.children) > 1:
                    events.append(self._reference(1, mid.ref, [refs[i] for i in mid.children], mid.size))
                    known.add(mid.ref)
                    st.new_higher_refs += 1
            if len(top.children) > 1:
                events.append(self._reference(2, top.ref, [g1[i].ref for i in top.children], top.size))
                known.add(top.ref)
                st.new_higher_refs += 1
        st.events = len(events)
        return st, events

    def _reference(self, level: int, ref: bytes, children: list[bytes], size: int) -> bytes:
        return encode("ReferenceStored", {
            "origin": self.origin, "hlc": self.hlc.now(), "ref": ref, "level": level,
            "size": size, "children": b"".join(children),
        })

    def evict(self, refs: Iterable[bytes]) -> int:
        """Write eviction events for ``refs`` (the store wrapped); return how many."""
        events = [encode("SegmentEvicted", {"origin": self.origin, "hlc": self.hlc.now(), "ref": r}) for r in refs]
        self._append(events)
        return len(events)

    def _append(self, events: list[bytes]) -> None:
        if not events:
            return
        self.sink.append(list(group(events, EVENT_BATCH_BYTES)))
        self.sink.applied()
