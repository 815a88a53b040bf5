"""The embedded log: segment files in one directory, one writer, any number of readers.

Concurrency: one process opens the log for writing and holds an exclusive ``flock`` on
``LOCK`` (a second writer gets ``LockedError``); readers in any process open it read-only and
may read while the writer appends. A batch is written with one ``write`` and its index entry
after it, so a reader sees either the whole batch (its CRC checks) or nothing of it.

Durability: ``fsync="always"`` (default) fsyncs every append before it returns;
``"interval"`` at most every ``fsync_interval_ms``; ``"never"`` leaves it to the OS. A process
kill loses nothing under any policy (the page cache survives); a power cut can lose the
un-fsynced tail, which recovery then cuts cleanly. ``durable_end`` says how far the log is
durable, and is what may leave the machine: the sync interface serves the peer nothing beyond
it, so a peer never mirrors a batch a power cut could take back (offsets that a restarted
writer would then reuse for other events). Under ``"never"`` the sync interface syncs what it
is about to serve, from its own thread (``wait_durable``, ``sync_written``). Opening for
writing fsyncs what an earlier process left written, since it is served from then on.

Recovery: opening for writing finds where the log ends and cuts what a crash left torn, at a
cost that does not grow with the log (Kafka's recovery point and clean-shutdown marker):

* a sealed segment (any but the last) was synced when the next one began: it is trusted once
  its last indexed batch checks (CRC, offset, and it ends the file where the next segment's
  offsets begin); otherwise it is scanned batch by batch;
* the last segment is trusted as ``CLEAN`` describes it when a writer closed it cleanly and
  nothing changed it since (same base, same size); otherwise it is scanned, truncated at the
  first torn or corrupt batch, and its index rebuilt;
* with ``scan_all`` (``dssync recover``), every batch of every segment is checked.

A segment cut short deletes the segments after it (their offsets no longer follow), and
``recovery`` reports the bytes cut. Readers re-check every batch's CRC, so damage inside a
trusted segment is found when it is read (``CorruptLogError``), not served.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from dssync import crashpoint
from dssync.errors import (
    CorruptLogError,
    DssyncError,
    LockedError,
    NotFoundError,
    OffsetOutOfRangeError,
    UsageError,
    from_os_error,
)
from dssync.log import batch as batchfmt
from dssync.log import segment as seg
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns

FSYNC_POLICIES = ("always", "interval", "never")
LOCK = "LOCK"
RETIRED = "retired.jsonl"
CLEAN = "clean.json"
"""Written by a writer's clean close: the last segment's base, size, index entries, next offset
and last timestamp, so that the next open need not scan it."""


@dataclass(frozen=True)
class RecoveryReport:
    """What opening for writing found and cut."""

    segments: int
    batches: int
    bytes_cut: int
    segments_deleted: int
    problem: str | None

    @property
    def clean(self) -> bool:
        return self.bytes_cut == 0


def _trusted_sealed(path: str, base: int, next_base: int, prev_ts: int) -> seg.ScanResult | None:
    """A sealed segment from its index, once its last indexed batch checks and ends the file
    where ``next_base`` begins; None when anything disagrees (then it is scanned)."""
    entries = seg.read_index(os.path.dirname(path), base)
    if not entries or entries[0][0] != base or entries[0][2] < prev_ts:
        return None
    offset, pos, ts = entries[-1]
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(pos)
            b = batchfmt.read_from(f)
    except (OSError, CorruptLogError, batchfmt.Incomplete):
        return None
    if b is None or (b.base_offset, b.timestamp_ms, pos + b.size, b.next_offset) != (offset, ts, size, next_base):
        return None
    return seg.ScanResult(entries=entries, valid_end=size, next_offset=next_base, last_timestamp=ts, file_size=size)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Prepared:
    """Batches encoded for the next append (``FileLog.prepare``), and their records as columns
    placed where the batches will lie in the files."""

    first: int
    active_size: int
    batches: list[tuple[bytes, int, int, int]]  # (bytes, base offset, count, timestamp)
    columns: RecordColumns


class FileLog:
    """An append-only log in ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: str,
        *,
        writer: bool = False,
        create: bool = False,
        fsync: str = "always",
        fsync_interval_ms: int = 1000,
        segment_bytes: int = 64 << 20,
        retention_bytes: int = 0,
        retention_ms: int = 0,
        compress: bool = True,
        clock_ms: Callable[[], int] = _now_ms,
        base_offset: int = 0,
        scan_all: bool = False,
    ) -> None:
        """``scan_all``: the writer's recovery checks every batch of every segment (``dssync
        recover``), trusting neither sealed segments nor the clean-close marker."""
        if fsync not in FSYNC_POLICIES:
            raise UsageError(f"unknown fsync policy {fsync!r}", hint=f"use one of {', '.join(FSYNC_POLICIES)}")
        if not 4096 <= segment_bytes < 1 << 32:
            raise UsageError("segment_bytes must be between 4 KiB and 4 GiB")
        self.directory = directory
        self.writer = writer
        self.fsync = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.segment_bytes = segment_bytes
        self.retention_bytes = retention_bytes
        self.retention_ms = retention_ms
        self.compress = compress
        self._clock_ms = clock_ms
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._index_fd: int | None = None
        self.recovery: RecoveryReport | None = None
        self._base_offset = base_offset
        self._scan_all = scan_all
        self._durable = threading.Condition()
        self._durable_end = 0
        self._written_end = 0
        """Under ``"never"``: one past the last offset written, for ``wait_durable``'s waiters."""
        self._cuts = 0
        """Times the writer cut what it had written (``_undo_unsynced``): a sync made from another
        thread counts only if no cut came in between (``sync_written``)."""
        self.retain_from: int | None = None
        """Retention never deletes a segment holding this offset or later (the local store's
        apply position: a peer's mirror may fall behind retention, the local store may not)."""
        if not os.path.isdir(directory):
            if not (create and writer):
                raise NotFoundError(f"no log at {directory}")
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise from_os_error(exc, f"creating {directory}") from exc
        if writer:
            self._open_writer()

    # ----------------------------------------------------------------- writer side

    def _open_writer(self) -> None:
        try:
            self._lock_fd = os.open(os.path.join(self.directory, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._close_fd("_lock_fd")
            raise LockedError(f"another process is writing the log at {self.directory}") from None
        except OSError as exc:
            self._close_fd("_lock_fd")
            raise from_os_error(exc, f"locking {self.directory}") from exc
        try:
            self.recovery = self._recover()
            self._open_active()
            assert self._fd is not None
            os.fdatasync(self._fd)  # a crashed writer's unsynced tail: durable before it is served
        except BaseException:
            self.close()
            raise

    def _recover(self) -> RecoveryReport:
        bases = seg.list_segments(self.directory)
        if not bases:
            # A new log may start past 0: a mirror bootstrapped from a snapshot starts where the
            # snapshot ends, and a wiped appliance log continues its offsets, never reusing one.
            bases = [self._base_offset]
            open(seg.segment_path(self.directory, self._base_offset), "ab").close()
        cut = deleted = batches = 0
        problem = None
        self._segments: list[int] = []
        self._entries: list[tuple[int, int, int]] = []
        prev_ts = 0
        expected = bases[0]
        for i, base in enumerate(bases):
            path = seg.segment_path(self.directory, base)
            if base != expected:
                problem = problem or f"segment {base} does not follow offset {expected}"
            if problem is not None and i > 0:
                cut += os.path.getsize(path)
                os.unlink(path)
                _unlink_quiet(seg.index_path(self.directory, base))
                deleted += 1
                continue
            last = i == len(bases) - 1
            r = (None if self._scan_all else self._trusted_clean(path, base, prev_ts) if last
                 else _trusted_sealed(path, base, bases[i + 1], prev_ts))
            if r is None:
                r = seg.scan(path, base, prev_ts)
            batches += len(r.entries)
            if r.problem:
                problem = f"{os.path.basename(path)}: {r.problem}"
                cut += r.file_size - r.valid_end
                with open(path, "r+b") as f:
                    f.truncate(r.valid_end)
                    os.fsync(f.fileno())
            seg.write_index(self.directory, base, r.entries)
            self._segments.append(base)
            self._entries = r.entries
            expected = r.next_offset
            prev_ts = r.last_timestamp
        self._next_offset = expected
        self._last_ts = prev_ts
        return RecoveryReport(len(self._segments), batches, cut, deleted, problem)

    def _trusted_clean(self, path: str, base: int, prev_ts: int) -> seg.ScanResult | None:
        """The last segment as the clean close left it, or None (then it is scanned)."""
        try:
            with open(os.path.join(self.directory, CLEAN), encoding="utf-8") as f:
                doc = json.load(f)
            size = os.path.getsize(path)
            if doc.get("base") != base or doc.get("size") != size or int(doc["last_ts"]) < prev_ts:
                return None
            entries = seg.read_index(self.directory, base)[: int(doc["entries"])]
            if len(entries) != int(doc["entries"]) or (entries and entries[0][0] != base):
                return None
            return seg.ScanResult(entries=entries, valid_end=size, next_offset=int(doc["next_offset"]),
                                  last_timestamp=int(doc["last_ts"]), file_size=size)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_clean(self) -> None:
        """Record the last segment as this clean close leaves it (synced): ``CLEAN``."""
        doc = {"base": self._segments[-1], "size": self._active_size, "entries": len(self._entries),
               "next_offset": self._next_offset, "last_ts": self._last_ts}
        tmp = os.path.join(self.directory, CLEAN + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.directory, CLEAN))

    def _open_active(self) -> None:
        base = self._segments[-1]
        self._fd = os.open(seg.segment_path(self.directory, base), os.O_WRONLY | os.O_APPEND)
        self._index_fd = os.open(seg.index_path(self.directory, base), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._active_size = os.fstat(self._fd).st_size
        self._last_sync_ms = self._clock_ms()
        self._mark_synced()

    def _mark_synced(self) -> None:
        """What a failed sync falls back to: the active segment's size, the next offset, its
        index entries and the last timestamp as they were at the last sync that worked."""
        self._synced = (self._active_size, self._next_offset, len(self._entries), self._last_ts)
        self._set_durable(self._next_offset)

    def _set_durable(self, end: int) -> None:
        with self._durable:
            self._durable_end = end
            self._durable.notify_all()

    def durable_end(self) -> int:
        """One past the last offset that is durable: synced by the fsync policy, a roll, a close
        or ``sync_written``. Writer only."""
        self._require_writer()
        return self._durable_end

    def wait_durable(self, beyond: int, timeout_s: float, cancelled: Callable[[], bool] = lambda: False,
                     guard: AbstractContextManager[Any] | None = None) -> int:
        """Wait up to ``timeout_s`` for ``durable_end()`` to pass ``beyond``, or for
        ``cancelled()`` (checked again by ``wake_waiters``); return it. Any thread of the
        writing process: the sync interface waits here for new batches. Under ``"never"`` the
        writer syncs nothing, so what is written past ``beyond`` is synced here, by the waiting
        thread (``sync_written``; ``guard`` is what serializes the writer's appends)."""
        with self._durable:
            self._durable.wait_for(lambda: max(self._durable_end, self._written_end) > beyond or cancelled(),
                                   timeout_s)
            if self._durable_end > beyond or self._written_end <= beyond:
                return self._durable_end
        return self.sync_written(guard)

    def sync_written(self, guard: AbstractContextManager[Any] | None = None) -> int:
        """Make what is written durable from a thread other than the writer's, without holding
        the writer up for the fsync: ``guard`` (the lock the writer appends under) is held only
        to take the active segment's descriptor and end offset, and to publish the result.
        Sealed segments were synced when they were sealed. Returns ``durable_end()``; a failed
        fsync makes nothing more durable (the writer's own next sync meets the error)."""
        held = guard if guard is not None else contextlib.nullcontext()
        with held:
            if self._fd is None:
                return self._durable_end
            fd, end, cuts = os.dup(self._fd), self._next_offset, self._cuts
        try:
            os.fdatasync(fd)
        except OSError:
            return self._durable_end
        finally:
            os.close(fd)
        with held:
            if self._cuts == cuts and end > self._durable_end:
                self._set_durable(end)
            return self._durable_end

    def wake_waiters(self) -> None:
        """Make every ``wait_durable`` check its ``cancelled`` again (a service stopping)."""
        with self._durable:
            self._durable.notify_all()

    def _undo_unsynced(self) -> None:
        """After a failed sync, forget every batch written since the last good one: cut the
        segment and its index back, so they are never read or served again. After a failed
        fsync the page cache may hold bytes the disk lost (PostgreSQL's lesson of 2018), so
        retrying the sync proves nothing; the caller writes them again or reports the error."""
        size, nxt, entries, ts = self._synced
        with contextlib.suppress(OSError):
            assert self._fd is not None and self._index_fd is not None
            os.ftruncate(self._fd, size)
            if os.fstat(self._index_fd).st_size > entries * seg.INDEX_ENTRY.size:
                os.ftruncate(self._index_fd, entries * seg.INDEX_ENTRY.size)
        self._active_size, self._next_offset, self._last_ts = size, nxt, ts
        del self._entries[entries:]
        self._cuts += 1
        self._written_end = min(self._written_end, nxt)
        self._set_durable(nxt)

    def _require_writer(self) -> None:
        if self._fd is None:
            raise LockedError(
                f"the log at {self.directory} is not open for writing",
                hint="open it with writer=True in the single writing process",
            )

    def append(self, values: Sequence[bytes]) -> int:
        """Append ``values`` as one batch; return the offset of the first (module contract)."""
        if not values:
            raise UsageError("append needs at least one value")
        self._require_writer()
        ts = max(self._clock_ms(), self._last_ts)
        data = batchfmt.encode(self._next_offset, ts, list(values), self.compress)
        return self._write_batch(data, self._next_offset, len(values), ts)

    def append_batches(self, groups: Sequence[Sequence[bytes]]) -> int:
        """Append each group as one batch, then apply the fsync policy once; return the
        first offset. Each batch is atomic on its own (one CRC); a crash can keep a prefix
        of the groups, never part of one. The optimizer writes a window's events this way:
        one fsync per window instead of one per batch."""
        return self.write_prepared(self.prepare(groups))

    def prepare(self, groups: Sequence[Sequence[bytes]]) -> Prepared:
        """Encode ``groups`` as the batches ``append_batches`` would write next, and say where
        they will lie, without writing anything: the appliance's store plans a window from
        it while ``write_prepared`` writes it. Nothing may be appended in between."""
        if not groups:
            raise UsageError("append needs at least one batch")
        self._require_writer()
        batches: list[tuple[bytes, int, int, int]] = []
        parts: list[tuple[int, int, bytes | memoryview, np.ndarray, np.ndarray]] = []
        places: list[tuple[int, int]] = []
        segment, size, offset, last_ts = self._segments[-1], self._active_size, self._next_offset, self._last_ts
        for values in groups:
            if not values:
                raise UsageError("append needs at least one value per batch")
            ts = last_ts = max(self._clock_ms(), last_ts)
            data, payload, as_is = batchfmt.build(offset, ts, list(values), self.compress)
            if size > 0 and size + len(data) > self.segment_bytes:  # where _write_batch rolls
                segment, size = offset, 0
            lengths = np.fromiter(map(len, values), np.int64, len(values))
            starts = np.cumsum(lengths) - lengths + 4 * len(values)
            batches.append((data, offset, len(values), ts))
            parts.append((offset, ts, payload, starts, lengths))
            places.append((segment, size + batchfmt.HEADER_SIZE if as_is else -1))
            size += len(data)
            offset += len(values)
        return Prepared(self._next_offset, self._active_size, batches,
                        RecordColumns.from_parts(parts, places, self.directory))

    def write_prepared(self, prepared: Prepared) -> int:
        """Write what ``prepare`` encoded, then apply the fsync policy once; return the first offset."""
        self._require_writer()
        if (prepared.first, prepared.active_size) != (self._next_offset, self._active_size):
            raise UsageError(f"batches prepared for offset {prepared.first} cannot be written at {self._next_offset}")
        for data, base, count, ts in prepared.batches:
            self._write_batch(data, base, count, ts, sync=False)
        self.commit()
        return prepared.first

    def append_raw(self, raw: bytes | memoryview, sync: bool = True) -> int:
        """Append a batch copied byte for byte from another log (the mirror's path).

        The batch must check out (CRC) and start exactly at ``end_offset()``: this is what
        makes a mirror exactly-once (a duplicate or a gap is refused, never written). With
        ``sync=False`` the fsync policy is left to a later ``commit()`` (group commit of the
        batches of one transfer).
        """
        self._require_writer()
        try:
            total, base, count, ts = batchfmt.verify(raw)  # checked in place: no copy of the batch
        except batchfmt.Incomplete:
            raise CorruptLogError("mirrored batch is truncated") from None
        if total != len(raw):
            raise CorruptLogError("mirrored batch has trailing bytes")
        if base != self._next_offset:
            raise OffsetOutOfRangeError(
                f"mirrored batch starts at offset {base}, log ends at {self._next_offset}",
                hint="resume mirroring from the destination's end offset",
            )
        return self._write_batch(raw, base, count, max(ts, self._last_ts), sync)

    def _write_batch(self, data: bytes | memoryview, base: int, count: int, ts: int, sync: bool = True) -> int:
        if self._active_size > 0 and self._active_size + len(data) > self.segment_bytes:
            self._roll()
        assert self._fd is not None and self._index_fd is not None
        crashpoint.tear("log.torn-write", self._fd, data)
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            # Undo a partial write so the tail stays valid for readers and for recovery.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._active_size)
            raise from_os_error(exc, f"appending to the log at {self.directory}") from exc
        pos = self._active_size
        self._active_size += len(data)
        self._next_offset = base + count
        self._last_ts = ts
        if self.fsync == "never":  # nothing syncs it here: a waiting sync interface does (wait_durable)
            with self._durable:
                self._written_end = self._next_offset
                self._durable.notify_all()
        entry = (base, pos, ts)
        self._entries.append(entry)
        with contextlib.suppress(OSError):  # the index is a hint; recovery rebuilds it
            os.write(self._index_fd, seg.INDEX_ENTRY.pack(*entry))
        crashpoint.reached("log.written")
        if sync:
            self._maybe_sync()
        return base

    def _maybe_sync(self) -> None:
        if self.fsync == "always":
            self._sync()
        elif self.fsync == "interval":
            now = self._clock_ms()
            if now - self._last_sync_ms >= self.fsync_interval_ms:
                self._sync()
                self._last_sync_ms = now

    def _sync(self) -> None:
        """fsync the active segment; if that fails, undo what it would have made durable
        (``_undo_unsynced``) and raise ``ResourceError``."""
        if self._fd is not None:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._undo_unsynced()
                raise from_os_error(exc, "syncing the log") from exc
            self._mark_synced()

    def _roll(self) -> None:
        self._sync()
        self._close_fd("_fd")
        self._close_fd("_index_fd")
        base = self._next_offset
        open(seg.segment_path(self.directory, base), "ab").close()
        self._segments.append(base)
        self._entries = []
        self._open_active()
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.enforce_retention()

    def enforce_retention(self) -> int:
        """Delete whole old segments beyond the size or age limits; return how many."""
        if self._fd is None or (not self.retention_bytes and not self.retention_ms):
            return 0
        removed = 0
        now = self._clock_ms()
        while len(self._segments) > 1:
            oldest = self._segments[0]
            if self.retain_from is not None and self._segments[1] > self.retain_from:
                break
            total = sum(os.path.getsize(seg.segment_path(self.directory, b)) for b in self._segments)
            last_ts = _last_timestamp(self.directory, oldest)
            too_big = self.retention_bytes and total > self.retention_bytes
            too_old = self.retention_ms and last_ts and now - last_ts > self.retention_ms
            if not (too_big or too_old):
                break
            self._retire(oldest, self._segments[1])
            # Delete the index first: a reader that finds a segment without index scans it.
            _unlink_quiet(seg.index_path(self.directory, oldest))
            _unlink_quiet(seg.segment_path(self.directory, oldest))
            self._segments.pop(0)
            removed += 1
        return removed

    def _retire(self, base: int, next_base: int) -> None:
        """Record a segment retention is about to delete, so a mirror that falls behind can
        count exactly which events and bytes it will never copy."""
        size = os.path.getsize(seg.segment_path(self.directory, base))
        with open(os.path.join(self.directory, RETIRED), "a", encoding="utf-8") as f:
            f.write(json.dumps({"base_offset": base, "next_offset": next_base, "bytes": size}) + "\n")

    def retired(self) -> list[dict[str, int]]:
        """Segments removed by retention, oldest first (see ``_retire``)."""
        try:
            with open(os.path.join(self.directory, RETIRED), encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def flush(self) -> None:
        self._sync()

    def sync_if_due(self) -> None:
        """Under ``"interval"``: sync what is written and not yet durable once the interval
        has passed, even if nothing else is appended (a quiet log's last batches would otherwise
        wait for the next append to become durable, and to be served). The writing process calls
        it every so often; it costs nothing when everything is durable."""
        if self.fsync == "interval" and self._fd is not None and self._durable_end < self._next_offset:
            now = self._clock_ms()
            if now - self._last_sync_ms >= self.fsync_interval_ms:
                self._sync()
                self._last_sync_ms = now

    def make_durable(self) -> None:
        """Under ``"interval"``: sync what is written now, whatever the interval. The store calls
        it before it commits events of this log: a store commit is durable (DuckDB syncs its
        write-ahead log), so the events must be durable in the log first, or a power cut would
        leave the store holding events the log lost. Nothing to do under ``"always"`` (already
        durable) or ``"never"`` (it promises nothing across a power cut)."""
        if self.fsync == "interval" and self._fd is not None and self._durable_end < self._next_offset:
            self._sync()
            self._last_sync_ms = self._clock_ms()

    def commit(self) -> None:
        """Apply the fsync policy to what was appended with ``sync=False``."""
        self._maybe_sync()

    def close(self) -> None:
        """Sync and close. A failed sync still closes every file, then raises its
        ``ResourceError`` (the batches it would have made durable are cut first)."""
        failed: DssyncError | None = None
        if self._fd is not None:
            try:
                self._sync()
                self._write_clean()
            except DssyncError as exc:
                failed = exc
            except OSError:
                pass  # no marker: the next open scans the last segment
        self._close_fd("_fd")
        self._close_fd("_index_fd")
        self._close_fd("_lock_fd")
        if failed is not None:
            raise failed

    def _close_fd(self, name: str) -> None:
        fd = getattr(self, name)
        if fd is not None:
            setattr(self, name, None)
            os.close(fd)

    def __enter__(self) -> FileLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reader side

    def _bases(self) -> list[int]:
        if self._fd is not None:
            return list(self._segments)
        try:
            return seg.list_segments(self.directory)
        except FileNotFoundError:
            raise NotFoundError(f"no log at {self.directory}") from None

    def start_offset(self) -> int:
        bases = self._bases()
        return bases[0] if bases else 0

    def end_offset(self) -> int:
        if self._fd is not None:
            return self._next_offset
        bases = self._bases()
        if not bases:
            return 0
        last = bases[-1]
        entries = seg.read_index(self.directory, last)
        pos = entries[-1][1] if entries else 0
        end = last
        for b in seg.iter_batches(seg.segment_path(self.directory, last), pos, is_last=True):
            end = b.next_offset
        return end

    def size_bytes(self) -> int:
        total = 0
        for b in self._bases():
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(seg.segment_path(self.directory, b))
        return total

    def bytes_from(self, offset: int) -> int:
        """Bytes of the batches holding offsets >= ``offset`` (from the index)."""
        total = 0
        for base in self._bases():
            entries = self._index_of(base)
            size = os.path.getsize(seg.segment_path(self.directory, base))
            first = next((pos for b_off, pos, _ts in entries if b_off >= offset), size)
            total += size - first
        return total

    def segments(self) -> list[int]:
        """Base offsets of the segments, oldest first."""
        return self._bases()

    def batches(self, from_offset: int = 0) -> Iterator[batchfmt.Batch]:
        """Valid batches holding offsets >= ``from_offset``, in order (the first may start before it)."""
        for _, _, b in self.placed_batches(from_offset):
            yield b

    def placed_batches(self, from_offset: int = 0) -> Iterator[tuple[int, int, batchfmt.Batch]]:
        """``batches`` with where each lies: (segment base offset, byte position in that file, batch)."""
        bases = self._bases()
        if not bases:
            return
        if from_offset < bases[0]:
            raise OffsetOutOfRangeError(
                f"offset {from_offset} is below the log start {bases[0]} (removed by retention)"
            )
        i = max(0, _bisect_le(bases, from_offset))
        expected = None
        for j in range(i, len(bases)):
            base = bases[j]
            entries = self._index_of(base)
            pos = seg.seek_position(entries, from_offset) if j == i else 0
            path = seg.segment_path(self.directory, base)
            if not 0 <= pos <= _size(path):
                pos = 0  # a damaged index: it only saves reading, so the segment is read from its start
            for b in seg.iter_batches(path, pos, is_last=(j == len(bases) - 1)):
                at, pos = pos, pos + b.size
                if b.next_offset <= from_offset:
                    continue
                if expected is not None and b.base_offset != expected:
                    raise CorruptLogError(f"offsets jump from {expected} to {b.base_offset} in {path}")
                expected = b.next_offset
                yield base, at, b

    def read(self, from_offset: int, max_records: int = 10_000) -> list[LogRecord]:
        out: list[LogRecord] = []
        for b in self.batches(from_offset):
            for k, value in enumerate(b.values()):
                off = b.base_offset + k
                if off >= from_offset:
                    out.append(LogRecord(off, b.timestamp_ms, value))
            if len(out) >= max_records:
                break
        return out[:max_records]

    def read_columns(self, from_offset: int, max_records: int = 10_000, max_bytes: int = 64 << 20) -> RecordColumns:
        """``read`` as columns, stopping after ``max_records`` records or ``max_bytes`` of payload.
        The columns say where each value lies in the segment files (``placement``)."""
        parts: list[tuple[int, int, bytes, np.ndarray, np.ndarray]] = []
        places: list[tuple[int, int]] = []
        count = size = 0
        for base, at, b in self.placed_batches(from_offset):
            payload, starts, lengths = b.columns()
            parts.append((b.base_offset, b.timestamp_ms, payload, starts, lengths))
            places.append((base, at + batchfmt.HEADER_SIZE if b.stored_as_is else -1))
            count += b.next_offset - max(b.base_offset, from_offset)
            size += len(payload)
            if count >= max_records or size >= max_bytes:
                break
        cols = RecordColumns.from_parts(parts, places, self.directory).since(from_offset)
        if len(cols) > max_records:
            cols = cols.take(slice(0, max_records))
        return cols

    def _index_of(self, base: int) -> list[tuple[int, int, int]]:
        """A segment's index: the writer's in-memory copy for its active segment, else the file."""
        if self._fd is not None and base == self._segments[-1]:
            return self._entries
        return seg.read_index(self.directory, base)

    def offset_for_time(self, timestamp_ms: int) -> int:
        for base in self._bases():
            entries = self._index_of(base)
            if entries and entries[-1][2] >= timestamp_ms:
                i = bisect_left(entries, timestamp_ms, key=lambda e: e[2])
                return entries[i][0]
        return self.end_offset()


def _bisect_le(bases: list[int], offset: int) -> int:
    lo, hi = 0, len(bases)
    while lo < hi:
        mid = (lo + hi) // 2
        if bases[mid] <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def _last_timestamp(directory: str, base: int) -> int:
    entries = seg.read_index(directory, base)
    return entries[-1][2] if entries else 0


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
