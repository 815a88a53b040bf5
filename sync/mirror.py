"""``dssync mirror``: copy the peer's own log into a local mirror log, exactly once.

The resume point is the mirror log's own end offset: the destination, not a side file,
says where to continue, and ``FileLog.append_raw`` refuses a batch that would leave a gap or
repeat an offset. Batches are copied byte for byte (their CRC is checked on arrival, nothing
is decoded or re-encoded), so the mirror is offset-preserving like a Kafka cluster link.
Only the peer's own log is served to it, never what the peer mirrored: bidirectional sync
cannot loop.

Where the mirror must start:

* a backup starts from a snapshot of the master's store (the initial overwrite), then
  mirrors the master's log from the offset the snapshot covers;
* a master starts at the first offset of the backup's (new) log;
* when the peer's retention removed offsets before they were copied, or the peer's log was
  recreated, the gap is counted exactly (events, and bytes from the peer's retirement
  ledger), recorded in ``state.json``, and repaired the same way, with a snapshot.

After each transfer it made durable, and after a snapshot or a new mirror log, the mirror
rings the service's doorbell (``dssync.doorbell``), which applies the batches at once.

Transient failures are retried with exponential backoff and one log line is written per state
change (connected, disconnected, refused, gap), never one per retry (``sync.mirror_base``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from dssync import crashpoint, layout
from dssync.doorbell import Ringer
from dssync.errors import (
    CorruptLogError,
    GapError,
    OffsetOutOfRangeError,
    TransientError,
    UsageError,
)
from dssync.layout import START_FILE, log_dir
from dssync.log import batch as batchfmt
from dssync.log.filelog import FileLog
from dssync.sync import protocol, snapshot
from dssync.sync.mirror_base import MirrorService


class Mirror(MirrorService):
    """The file mirror of one appliance home (module docstring)."""

    COUNTERS = ("copied_batches", "copied_records", "copied_bytes", "not_copied_events", "not_copied_bytes",
                "bootstraps")
    WARN = ("disconnected", "refused", "gap")
    FIRST_WAIT_S, MAX_WAIT_S = 0.05, 2.0

    def __init__(self, home: str, wait_ms: int = 500, max_bytes: int = 16 << 20) -> None:
        super().__init__(home)
        self.wait_ms = wait_ms
        self.max_bytes = max_bytes
        if not self.cfg.sync.role:
            raise UsageError(f"{self.cfg.name} is not paired", hint="configure it with 'dssync sync configure'")
        self.cfg.sync.check_secret()  # refused now, with its remedy, not on every retry
        self.peer: protocol.Identity | None = None
        self.out: FileLog | None = None
        self.bell = Ringer(home)

    def _state_doc(self) -> dict[str, Any]:
        return {**self.state, "mirror_end_offset": self.out.end_offset() if self.out else None}

    def _cycle(self, stopped: Callable[[], bool]) -> None:
        if self._waiting():
            return
        me = protocol.Identity(self.cfg.name, self.cfg.model, self.cfg.software_version, self.cfg.store_id,
                               self.cfg.sync.role, self.cfg.sync.state, FileLog(log_dir(self.home)).start_offset(),
                               self.cfg.chunker)
        client = protocol.PeerClient(self.cfg.sync, me, timeout_s=max(10.0, self.wait_ms / 1000 + 5))
        try:
            self.peer = client.identity()
            self._met_peer(self.peer.name)
            self._ensure_log(client)
            self._set("connected", f"mirroring {self.peer.name} from offset {self._out().end_offset()}")
            while not stopped():
                try:
                    self._copy_stream(client, lambda: not stopped())
                except GapError as exc:
                    self._record_gap(exc)
                    self._bootstrap(client, repair=True)
        finally:
            client.close()

    def _out(self) -> FileLog:
        assert self.out is not None
        return self.out

    def _dir(self) -> str:
        assert self.peer is not None
        return layout.mirror_dir(self.home, self.peer.name)

    def _open_out(self, base: int | None = None) -> None:
        if self.out is not None:
            self.out.close()
        self.out = FileLog(self._dir(), writer=True, create=True, fsync=self.cfg.log.fsync,
                           fsync_interval_ms=self.cfg.log.fsync_interval_ms, segment_bytes=self.cfg.log.segment_bytes,
                           base_offset=base or 0)

    def _ensure_log(self, client: protocol.PeerClient) -> None:
        assert self.peer is not None
        if os.path.exists(os.path.join(self._dir(), START_FILE)):
            if self.out is None:
                self._open_out()
            return
        if self.cfg.sync.role == "backup":
            self._bootstrap(client)  # the master's store overwrites ours
        else:
            shutil.rmtree(self._dir(), ignore_errors=True)
            self._open_out(self.peer.log_start_offset)
            layout.write_json(os.path.join(self._dir(), START_FILE), {"advance_to": self.peer.log_start_offset},
                              durable=True)
            self.bell.ring()

    # ------------------------------------------------------------------ copying

    def _copy_stream(self, client: protocol.PeerClient, keep_going: Callable[[], bool]) -> None:
        """Copy transfers while ``keep_going()``. Transfer N is checked, written and fsynced on a
        helper thread while transfer N+1 is fetched from where N's batches end, so the network
        and the disk work at the same time; every batch is still checked (CRC, offset) before it
        is written, and a refused one stops the stream (the next cycle resumes from our end)."""
        out = self._out()
        frm = out.end_offset()
        writing: Future[tuple[int, int, int]] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="dssync-mirror-write") as pool:
            try:
                while keep_going():
                    status, _headers, body = client.get(
                        f"/v1/log?from={frm}&max_bytes={self.max_bytes}&wait_ms={self.wait_ms}",
                        limit=self.max_bytes + protocol.MAX_BATCH_BYTES)
                    if writing is not None:
                        self._count(writing.result())
                        writing = None
                    if status == 416:
                        info = json.loads(body)
                        raise GapError(f"peer log holds {info['start']}..{info['end']}, mirror needs {frm}",
                                                {**info, "from": frm})
                    if status != 200:
                        raise TransientError(f"log request failed with HTTP {status}")
                    view = memoryview(body)  # batches are checked and written in place, never copied
                    spans, frm, complete = log_spans(view, frm)
                    if spans:
                        writing = pool.submit(_write, out, view, spans, self.bell)
                    if not complete:
                        if writing is not None:
                            self._count(writing.result())
                            writing = None
                        raise TransientError("truncated response from the peer")
            finally:
                if writing is not None:
                    wait([writing])  # never leave a write running behind an error
                    if writing.exception() is None:
                        self._count(writing.result())

    def _count(self, written: tuple[int, int, int]) -> None:
        batches, records, nbytes = written
        self.state["copied_batches"] += batches
        self.state["copied_records"] += records
        self.state["copied_bytes"] += nbytes
        self._save()

    def _record_gap(self, exc: GapError) -> None:
        d = exc.detail
        frm, start, end = d["from"], d["start"], d["end"]
        if frm < start:
            events = start - frm
            lost = [r for r in d.get("retired", []) if r["next_offset"] > frm and r["base_offset"] < start]
            nbytes = sum(r["bytes"] for r in lost)
            if lost:
                nbytes -= self._out().bytes_from(lost[0]["base_offset"])  # the part we did copy
            kind = "retention"
        else:
            events, nbytes, kind = 0, 0, "peer log recreated"
        gap = {"kind": kind, "from": frm, "peer_start": start, "peer_end": end, "events": events,
               "bytes": max(0, nbytes), "at_ms": int(time.time() * 1000)}
        self.state["gaps"].append(gap)
        self.state["not_copied_events"] += events
        self.state["not_copied_bytes"] += gap["bytes"]
        self._set("gap", f"{kind}: {events} events ({gap['bytes']} bytes) not copied; repairing from a snapshot")

    def _bootstrap(self, client: protocol.PeerClient, repair: bool = False) -> None:
        """Load a snapshot of the peer's store, then restart the mirror log where it ends.
        ``repair``: the snapshot fills a gap (the state says so: a gap is an alarm, the
        snapshot a backup takes at pairing is not)."""
        assert self.peer is not None
        snap_dir = layout.snapshot_dir(self.home, self.peer.name)
        shutil.rmtree(snap_dir, ignore_errors=True)
        os.makedirs(snap_dir)  # from now on the service pauses the old mirror log
        self.state["repairing"] = repair
        self._set("bootstrapping", f"loading a snapshot of {self.peer.name}" + (" to repair a gap" if repair else ""))
        self.state["snapshot_events"] = 0
        covers_to, events, store_id = snapshot.download(client, os.path.join(snap_dir, "log"), self._downloaded)
        self.state.pop("snapshot_events", None)
        if self.out is not None:
            self.out.close()
            self.out = None
        shutil.rmtree(self._dir(), ignore_errors=True)
        self._open_out(covers_to)
        layout.write_json(os.path.join(self._dir(), START_FILE), {"advance_to": covers_to}, durable=True)
        self.state["bootstraps"] += 1
        # written last: the service loads the snapshot only once it is complete
        layout.write_json(os.path.join(snap_dir, "snapshot.json"),
                          {"peer": self.peer.name, "epoch": int(time.time() * 1000), "covers_to": covers_to,
                           "events": events, "store_id": store_id}, durable=True)
        self.bell.ring()
        self._set("connected", f"snapshot of {events} events loaded; mirroring from offset {covers_to}")

    def _downloaded(self, events: int) -> None:
        """A snapshot's download went on: say so in the state file (the monitor reads it as
        progress, and as the mirror being alive, while its position waits for the end)."""
        self.state["snapshot_events"] = events
        self._save()

    def refetch(self, until: int, timeout_s: float) -> int:
        """Copy the peer's log into the mirror log until it reaches offset ``until`` (how far the
        store applied it), then stop: ``dssync recover`` after it cut damage from the mirror log.
        Returns the mirror log's end. Raises ``TransientError`` when the peer's log does not
        reach that far within ``timeout_s`` (the peer down or cut), ``PairingRefusedError``
        when it refuses the pair."""
        deadline = time.monotonic() + timeout_s

        def done() -> bool:
            return (self.out is not None and self.out.end_offset() >= until) or time.monotonic() >= deadline

        why = "it did not answer"
        try:
            while not done():
                try:
                    self._cycle(done)
                except TransientError as exc:
                    why = exc.message
                    self._sleep(0.2)
            end = self.out.end_offset() if self.out is not None else -1
        finally:
            self.close()
        if end < until:
            raise TransientError(f"the peer's log was not copied again up to offset {until}: {why}")
        return end

    def close(self) -> None:
        super().close()
        self.bell.close()
        if self.out is not None:
            self.out.close()
            self.out = None


def log_spans(view: memoryview, frm: int) -> tuple[list[tuple[int, int, int]], int, bool]:
    """The batches of a log response by their headers alone: ([(position, size, records)], the
    offset after the last one, whether the response ends on a batch boundary). A batch that does
    not continue the offsets ends the list (the writer would refuse it anyway)."""
    spans: list[tuple[int, int, int]] = []
    pos, at = 0, frm
    while len(view) - pos >= batchfmt.HEADER_SIZE:
        try:
            total, base, count, _ts = batchfmt.check_header(view[pos : pos + batchfmt.HEADER_SIZE])
        except CorruptLogError as exc:
            raise TransientError(f"batch refused: {exc.message}") from None
        if len(view) - pos < total:
            break
        if base != at:
            raise TransientError(f"batch refused: it starts at offset {base}, the mirror needs {at}")
        spans.append((pos, total, count))
        pos += total
        at = base + count
    return spans, at, pos == len(view)


def _write(out: FileLog, view: memoryview, spans: list[tuple[int, int, int]], bell: Ringer) -> tuple[int, int, int]:
    """Check and write one response's batches, then one fsync and a ring of the service's
    doorbell; (batches, records, bytes)."""
    for pos, total, _count in spans:
        try:
            out.append_raw(view[pos : pos + total], sync=False)
        except (CorruptLogError, OffsetOutOfRangeError) as exc:
            # a damaged or misplaced batch is never written; ask again from our end offset
            raise TransientError(f"batch refused: {exc.message}") from None
    crashpoint.reached("mirror.written")
    out.commit()  # one fsync per transfer, before its batches count as copied
    bell.ring()
    return len(spans), sum(c for _p, _t, c in spans), sum(t for _p, t, _c in spans)


