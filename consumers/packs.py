"""Segment pack files: where a store keeps segment bytes (DuckDB keeps only the index).

Packs are append-only files ``packs/000001.pack`` ...; a segment's location is (pack, pos)
and its length is the size in the index. The store records the committed end of the current
pack in the same DuckDB transaction as the index rows that point into it, so at open
``truncate_to`` cuts whatever an interrupted apply wrote past that point: the bytes and the
index always agree. The store wraps by dropping the oldest pack whole.

Log-resident segments: an appliance's own log already holds every new segment's bytes, and
where its batch is stored uncompressed they lie in the segment file verbatim. A store told
it may (``Store(resident=...)``, only with fsync on: the log is durable before the index
commits) keeps (log segment file, position) instead of writing a second copy: that file
becomes a location like a pack, numbered from the same sequence (so "older than" still
means "numbered lower" when the store wraps), recorded in the store's ``log_files`` table,
and read in place. The log keeps such a file until the store no longer needs it (the
appliance pins its retention, ``Store.resident_from``); the store forgets a file once no live
row points into it. New data is then written once instead of twice.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from dssync import crashpoint
from dssync.errors import CorruptStoreError, from_os_error
from dssync.log.segment import segment_path


class Packs:
    """Append-only pack files in one directory; one writer (the store's owner)."""

    def __init__(self, directory: str, pack_bytes: int, fsync: bool) -> None:
        self.directory = directory
        self.pack_bytes = pack_bytes
        self.fsync = fsync
        os.makedirs(directory, exist_ok=True)
        self.current = 0
        self.end = 0
        self._fd: int | None = None
        self._read_fds: dict[int, int] = {}
        self._home = os.path.dirname(os.path.abspath(directory))  # log directories are kept relative to it
        self._in_log: dict[int, tuple[str, int]] = {}  # location id -> (log directory, segment base offset)
        self._log_ids: dict[tuple[str, int], int] = {}
        self._unsaved: list[tuple[int, str, int]] = []
        self._unsaved_lock = threading.Lock()  # a replay numbers files in one thread and commits in another
        self._last_log_id = 0

    def path(self, pack: int) -> str:
        return os.path.join(self.directory, f"{pack:06d}.pack")

    def ids(self) -> list[int]:
        return sorted(int(n[:6]) for n in os.listdir(self.directory) if n.endswith(".pack") and n[:6].isdigit())

    # ------------------------------------------------------------------ log-resident locations

    def load_log_files(self, rows: list[tuple[int, str, int]]) -> None:
        """The committed log-resident locations: (id, log directory relative to the store, base)."""
        for i, rel, base in rows:
            self._remember(int(i), rel, int(base))

    def _remember(self, i: int, rel: str, base: int) -> None:
        self._in_log[i] = (rel, base)
        self._log_ids[(rel, base)] = i
        self._last_log_id = max(self._last_log_id, i)

    def in_log(self, directory: str, segments: np.ndarray) -> np.ndarray:
        """Location ids of the segment files (base offsets ``segments``) of the log in
        ``directory``, numbering the ones seen for the first time (saved with the next commit)."""
        rel = os.path.relpath(os.path.abspath(directory), self._home)
        ids = np.empty(len(segments), np.int64)
        uniq, inverse = np.unique(segments, return_inverse=True)
        for k, base in enumerate(uniq.tolist()):
            i = self._log_ids.get((rel, base))
            if i is None:
                i = self._next_id()
                self._remember(i, rel, base)
                with self._unsaved_lock:
                    self._unsaved.append((i, rel, base))
            ids[inverse == k] = i
        return ids

    def reader(self) -> Packs:
        """A second reader of the same locations (its own file handles, for another thread);
        it knows the log-resident files known at this instant."""
        other = Packs(self.directory, self.pack_bytes, fsync=False)
        other.load_log_files([(i, rel, base) for i, (rel, base) in self._in_log.items()])
        return other

    def unsaved_log_files(self) -> list[tuple[int, str, int]]:
        """Log-resident locations numbered since the last ``saved``, for the store to commit."""
        with self._unsaved_lock:
            return list(self._unsaved)

    def saved(self, entries: list[tuple[int, str, int]]) -> None:
        done = set(entries)
        with self._unsaved_lock:
            self._unsaved = [e for e in self._unsaved if e not in done]

    def log_file_ids(self) -> list[int]:
        return sorted(self._in_log)

    def log_file_bytes(self) -> int:
        total = 0
        for i in self._in_log:
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(self._log_path(i))
        return total

    def forget_log_file(self, i: int) -> int:
        """Stop using a log segment file (no live row points into it); return its size. The
        file stays: it is the log's, and the log's retention deletes it."""
        fd = self._read_fds.pop(i, None)
        if fd is not None:
            os.close(fd)
        rel, base = self._in_log.pop(i)
        self._log_ids.pop((rel, base), None)
        try:
            return os.path.getsize(segment_path(os.path.join(self._home, rel), base))
        except FileNotFoundError:
            return 0

    def resident_from(self, directory: str) -> int | None:
        """The oldest segment (base offset) of the log in ``directory`` this store reads from."""
        rel = os.path.relpath(os.path.abspath(directory), self._home)
        bases = [b for r, b in self._in_log.values() if r == rel]
        return min(bases) if bases else None

    def _log_path(self, i: int) -> str:
        rel, base = self._in_log[i]
        return segment_path(os.path.normpath(os.path.join(self._home, rel)), base)

    def _next_id(self) -> int:
        return max(self.current, self._last_log_id) + 1

    def truncate_to(self, pack: int, end: int) -> int:
        """Make (pack, end) the committed tail: cut beyond it, drop newer packs. Returns bytes cut."""
        cut = 0
        for pid in self.ids():
            if pid > pack:
                cut += os.path.getsize(self.path(pid))
                os.unlink(self.path(pid))
        path = self.path(pack)
        if pack > 0:
            with open(path, "ab") as f:
                size = f.tell()
                if size < end:
                    raise CorruptStoreError(f"pack {pack} is shorter ({size}) than its committed end ({end})")
                if size > end:
                    f.truncate(end)
                    cut += size - end
        self.current, self.end = pack, end
        return cut

    def _undo(self, current: int, end: int) -> None:
        """Back to (``current``, ``end``) after a failed write: packs begun since are removed and
        the pack cut at ``end``, so the next write lands where its position is computed (the
        file is opened for appending: a partial write left in place would shift every later
        segment). Best effort: whatever this cannot undo, the open's ``truncate_to`` does."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            for pid in self.ids():
                if pid > current:
                    os.unlink(self.path(pid))
            if current > 0:
                os.truncate(self.path(current), end)
        self.current, self.end = current, end

    def append(self, chunks: list[bytes]) -> list[tuple[int, int]]:
        """Write ``chunks``; return their (pack, pos). Not committed until the index says so.
        A failed write leaves the packs as they were (``_undo``) and raises ``ResourceError``."""
        out: list[tuple[int, int]] = []
        buf: list[bytes] = []
        before = (self.current, self.end)
        try:
            for data in chunks:
                if self._fd is None:
                    self._open(new=self.current == 0)
                elif self.end > 0 and self.end + len(data) > self.pack_bytes:
                    self._flush(buf)
                    buf = []
                    self._open(new=True)
                out.append((self.current, self.end))
                buf.append(data)
                self.end += len(data)
            self._flush(buf)
        except OSError as exc:
            self._undo(*before)
            raise from_os_error(exc, "writing a segment pack") from exc
        return out

    def append_blob(self, blob: bytes | memoryview, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write ``blob``, the segments of ``lengths`` back to back; return their packs and
        positions (arrays). Same placement as ``append``: a segment goes in the current pack if
        it fits or the pack is empty, else it starts the next pack."""
        n = len(lengths)
        packs = np.empty(n, np.int64)
        positions = np.empty(n, np.int64)
        ends = np.cumsum(lengths)
        view = memoryview(blob)
        i = at = 0
        before = (self.current, self.end)
        try:
            while i < n:
                if self._fd is None:
                    self._open(new=self.current == 0)
                j = max(i, int(np.searchsorted(ends, at + self.pack_bytes - self.end, side="right")))
                if j == i:
                    if self.end > 0:
                        self._open(new=True)
                        continue
                    j = i + 1  # a segment larger than a pack gets a pack of its own
                upto = int(ends[j - 1])
                packs[i:j] = self.current
                positions[i:j] = self.end + ends[i:j] - lengths[i:j] - at
                self._flush([view[at:upto]])
                self.end += upto - at
                i, at = j, upto
        except OSError as exc:
            self._undo(*before)
            raise from_os_error(exc, "writing a segment pack") from exc
        return packs, positions

    def _flush(self, buf: list[bytes] | list[memoryview]) -> None:
        if buf and self._fd is not None:
            view = memoryview(buf[0] if len(buf) == 1 else b"".join(buf))
            crashpoint.tear("packs.torn-write", self._fd, view)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def _open(self, new: bool) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
        if new:
            self.current = self._next_id()
            self.end = 0
        self._fd = os.open(self.path(self.current), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(self._fd).st_size
        if size != self.end:  # a fresh pack must start where the committed end says
            os.ftruncate(self._fd, self.end)

    def sync(self) -> None:
        """Make the current pack's writes durable. A failed sync raises ``ResourceError``, and
        nothing written since the last commit is trusted again: the next open cuts the pack to
        its committed end (after a failed fsync the page cache may hold bytes the disk lost)."""
        if self._fd is not None and self.fsync:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise from_os_error(exc, "syncing a segment pack") from exc

    def file_of(self, pack: int) -> str:
        """The file holding location ``pack``: a pack file, or a log segment file."""
        return self._log_path(pack) if pack in self._in_log else self.path(pack)

    def read(self, pack: int, pos: int, size: int) -> bytes:
        fd = self._read_fds.get(pack)
        what = f"pack {pack}" if pack not in self._in_log else f"log segment file {self._log_path(pack)}"
        if fd is None:
            try:
                fd = os.open(self.file_of(pack), os.O_RDONLY)
            except FileNotFoundError:
                raise CorruptStoreError(f"{what} is missing") from None
            self._read_fds[pack] = fd
        data = os.pread(fd, size, pos)
        if len(data) != size:
            raise CorruptStoreError(f"{what} ends before byte {pos + size}")
        return data

    def delete(self, pack: int) -> int:
        """Remove a whole pack (the store wrapped past it); return its size."""
        fd = self._read_fds.pop(pack, None)
        if fd is not None:
            os.close(fd)
        try:
            size = os.path.getsize(self.path(pack))
            os.unlink(self.path(pack))
        except FileNotFoundError:
            return 0
        return size

    def total_bytes(self) -> int:
        return sum(os.path.getsize(self.path(p)) for p in self.ids())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
