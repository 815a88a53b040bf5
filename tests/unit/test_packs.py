"""Pack writes that fail part-way leave the packs as they were before the write."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dssync.consumers.packs import Packs
from dssync.errors import ResourceError


def _failing_after(limit: int) -> Any:
    """An ``os.write`` that writes ``limit`` bytes in all, then fails with ENOSPC (a disk filling up)."""
    real = os.write
    left = [limit]

    def write(fd: int, data: Any) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(memoryview(data)[:left[0]]))
        left[0] -= n
        return n
    return write


@pytest.mark.parametrize("how", ["append", "append_blob"])
@pytest.mark.parametrize("limit", [0, 5, 150, 250])
def test_a_write_that_fails_part_way_is_undone_and_the_next_lands_where_it_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, limit: int) -> None:
    packs = Packs(str(tmp_path / "packs"), pack_bytes=200, fsync=True)
    first = packs.append([b"a" * 60])
    segments = [bytes([65 + k]) * 70 for k in range(4)]  # 280 bytes: crosses into a second pack

    def write(segs: list[bytes]) -> list[tuple[int, int]]:
        if how == "append":
            return packs.append(segs)
        blob = b"".join(segs)
        pk, pos = packs.append_blob(blob, np.array([len(s) for s in segs], np.int64))
        return list(zip(pk.tolist(), pos.tolist(), strict=True))

    with monkeypatch.context() as m:
        m.setattr(os, "write", _failing_after(limit))
        with pytest.raises(ResourceError, match="disk full"):
            write(segments)
    assert (packs.current, packs.end) == (first[0][0], 60)
    assert packs.ids() == [first[0][0]] and os.path.getsize(packs.path(first[0][0])) == 60
    placed = write(segments)  # the disk has room again
    for (pack, pos), data in zip(placed, segments, strict=True):
        assert packs.read(pack, pos, len(data)) == data
    assert packs.read(*first[0], 60) == b"a" * 60
    packs.close()
