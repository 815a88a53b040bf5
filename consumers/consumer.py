"""A consumer: replays one source log into a store, resuming from the store's own offset.

The resume point is read from the store, where it was committed with the rows it covers;
nothing outside the store (no consumer group, no side file) decides where to start. So a
kill at any instant leads to re-reading at most the uncommitted tail, which ``Store.apply``
then applies, exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from dssync.consumers.quarantine import MALFORMED, Quarantine, first_malformed
from dssync.consumers.store import ApplyResult, Staged, Store
from dssync.errors import OffsetOutOfRangeError
from dssync.log.base import LogReader
from dssync.log.columns import RecordColumns
from dssync.schemas.columnar import EventColumns, decode_columns

log = logging.getLogger("dssync.consumer")


class Consumer:
    """Applies ``log`` to ``store`` under the source name ``source``."""

    def __init__(self, log: LogReader, store: Store, source: str, batch_records: int = 20_000,
                 check_refs: bool = False, on_applied: Callable[[RecordColumns], None] | None = None,
                 quarantine: Quarantine | None = None) -> None:
        """``check_refs``: a peer's log: every segment's bytes must hash to its reference
        (``Store.apply_columns``). ``on_applied``: called by ``step`` with the records it
        committed, right after the commit (the replication latency is measured there).
        ``quarantine``: a record that cannot be applied is set aside there and skipped
        (``dssync.consumers.quarantine``); without one, ``step`` raises what apply raised."""
        self.log = log
        self.store = store
        self.source = source
        self.batch_records = batch_records
        self.check_refs = check_refs
        self.on_applied = on_applied
        self.quarantine = quarantine

    def step(self) -> ApplyResult:
        """Apply up to ``batch_records`` records in one transaction; empty result at the end."""
        frm = self.store.committed(self.source)
        start = self.log.start_offset()
        if frm < start:
            raise OffsetOutOfRangeError(
                f"{self.source}: offsets {frm}..{start - 1} were removed by retention before being applied",
                hint="rebuild the store with 'dssync replay HOME' (or re-bootstrap from the peer)",
            )
        records = self.log.read_columns(frm, self.batch_records)
        if not len(records):
            # A log whose offsets are not dense (Kafka: transaction markers) says how far the
            # empty read went; nothing else may move the offset (a file log's empty read can be a
            # batch still being written, and advancing past it would skip it).
            through = getattr(self.log, "read_through", None)
            if through is not None and through > frm:
                self.store.advance(self.source, through)
            return ApplyResult()
        try:
            result = self.store.apply_columns(self.source, records, check_refs=self.check_refs)
        except MALFORMED:
            if self.quarantine is None:
                raise
            return self._set_aside(records)
        if result.applied and self.on_applied is not None:
            self.on_applied(records)
        return result

    def _set_aside(self, records: RecordColumns) -> ApplyResult:
        """Apply the records before the first malformed one, or quarantine that one and move
        past it (``skipped`` = 1); the next step goes on from there."""
        assert self.quarantine is not None
        found = first_malformed(records, self.check_refs)
        if found is None:  # the read applies whole after all: whatever failed was not its content
            return self.store.apply_columns(self.source, records, check_refs=self.check_refs)
        i, why = found
        if i > 0:
            good = records.take(slice(0, i))
            result = self.store.apply_columns(self.source, good, check_refs=self.check_refs)
            if self.on_applied is not None:
                self.on_applied(good)
            return result
        offset = int(records.offsets[0])
        self.quarantine.add(self.source, offset, int(records.timestamps[0]), bytes(records.value(0)), why.message)
        log.error("%s: the record at offset %d cannot be applied (%s): set aside in %s; the rest goes on",
                  self.source, offset, why.message, self.quarantine.dir)
        self.store.advance(self.source, offset + 1)
        return ApplyResult(skipped=1)

    def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Apply until the end of the log as it was when called; return records applied."""
        total = 0
        end = self.log.end_offset()
        while self.store.committed(self.source) < end:
            r = self.step()
            if r.applied == 0:
                break
            total += r.applied
            if progress:
                progress(r.applied)
        return total


REPLAY_RECORDS = 150_000
REPLAY_BYTES = 64 << 20
"""A replay applies reads of this size: big enough that each insert writes whole DuckDB row
groups (122,880 rows) straight to the file instead of the write-ahead log, small enough that
reading, merging and committing overlap (150 k measured best of 100 k to 350 k here); the byte
bound keeps memory flat when segments are large."""


def replay(log: LogReader, store: Store, source: str, start: int, progress: Callable[[int], None] | None = None,
           check_refs: bool = False) -> int:
    """Apply ``log`` from ``start`` to its end as it was when called, in big transactions;
    return the records applied. The store's committed offset for ``source`` moves with them.

    Three stages overlap, each on its own thread: reading and decoding read N+2, merging read
    N+1 and writing its segment bytes (it sees read N's rows as held before they are
    committed: ``Store.stage``), and DuckDB committing read N. Decompression, numpy and DuckDB
    run without the GIL, so a replay keeps the cores busy; commits still happen in order, one
    at a time, each with its offset.
    """
    def fetch(at: int) -> tuple[RecordColumns, EventColumns]:
        cols = log.read_columns(at, REPLAY_RECORDS, REPLAY_BYTES)
        return cols, decode_columns(cols)

    applied = 0
    end = log.end_offset()
    if start >= end:
        return 0
    cursor = store.con.cursor()
    reader = ThreadPoolExecutor(1, thread_name_prefix="dssync-replay-read")
    committer = ThreadPoolExecutor(1, thread_name_prefix="dssync-replay-commit")
    committing: Future[None] | None = None
    try:
        ahead: Future[tuple[RecordColumns, EventColumns]] | None = reader.submit(fetch, start)
        previous: Staged | None = None
        while ahead is not None:
            cols, ev = ahead.result()
            if not len(cols):
                break
            nxt = int(cols.offsets[-1]) + 1
            ahead = reader.submit(fetch, nxt) if nxt < end else None
            result, staged = store.stage(source, cols, ev, after=previous, check_refs=check_refs)
            if committing is not None:
                committing.result()
            if staged is not None:
                committing = committer.submit(store.commit_staged, staged, cursor)
                previous = staged
            applied += result.applied
            if progress:
                progress(len(cols))
        if committing is not None:
            committing.result()
    finally:
        if committing is not None:
            wait([committing])  # never leave a transaction running behind an error
        reader.shutdown(wait=True, cancel_futures=True)
        committer.shutdown(wait=True)
        cursor.close()
    return applied
