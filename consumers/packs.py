"""Segment pack files: where a store keeps segment bytes (DuckDB keeps only the index).

Packs are append-only files ``packs/000001.pack`` ...; a segment's location is (pack, pos)
and its length is the size in the index. The store records the committed end of the current
pack in the same DuckDB transaction as the index rows that point into it, so at open
``truncate_to`` cuts whatever an interrupted apply wrote past that point: the bytes and the
index always agree. The store wraps by dropping the oldest pack whole.
"""

from __future__ import annotations

import os

import numpy as np

from dssync.errors import CorruptStoreError, from_os_error


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

    def path(self, pack: int) -> str:
        return os.path.join(self.directory, f"{pack:06d}.pack")

    def ids(self) -> list[int]:
        return sorted(int(n[:6]) for n in os.listdir(self.directory) if n.endswith(".pack") and n[:6].isdigit())

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

    def append(self, chunks: list[bytes]) -> list[tuple[int, int]]:
        """Write ``chunks``; return their (pack, pos). Not committed until the index says so."""
        out: list[tuple[int, int]] = []
        buf: list[bytes] = []
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
            raise from_os_error(exc, "writing a segment pack") from exc
        return packs, positions

    def _flush(self, buf: list[bytes] | list[memoryview]) -> None:
        if buf and self._fd is not None:
            view = memoryview(buf[0] if len(buf) == 1 else b"".join(buf))
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def _open(self, new: bool) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
        if new:
            self.current += 1
            self.end = 0
        self._fd = os.open(self.path(self.current), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(self._fd).st_size
        if size != self.end:  # a fresh pack must start where the committed end says
            os.ftruncate(self._fd, self.end)

    def sync(self) -> None:
        if self._fd is not None and self.fsync:
            os.fdatasync(self._fd)

    def read(self, pack: int, pos: int, size: int) -> bytes:
        fd = self._read_fds.get(pack)
        if fd is None:
            try:
                fd = os.open(self.path(pack), os.O_RDONLY)
            except FileNotFoundError:
                raise CorruptStoreError(f"pack {pack} is missing") from None
            self._read_fds[pack] = fd
        data = os.pread(fd, size, pos)
        if len(data) != size:
            raise CorruptStoreError(f"pack {pack} ends before byte {pos + size}")
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
