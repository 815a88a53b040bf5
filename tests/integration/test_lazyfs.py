"""The campaigns' LazyFS, mounted for real: a power cut keeps exactly what fsync made durable,
and faults fail exactly the calls they name. (The power-cut and I/O-error campaigns are only as
good as this file system; it needs FUSE, which ./run test installs, and fails without it.)"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dssync.bench.lazyfs import LazyFS


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyFS]:
    lazy = LazyFS(str(tmp_path / "disk"), str(tmp_path / "mnt"))
    try:
        yield lazy
    finally:
        lazy.unmount()


def _write(path: str, data: bytes, at: int | None = None, sync: bool = False) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, data, os.fstat(fd).st_size if at is None else at)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _disk(fs: LazyFS, name: str) -> bytes:
    return Path(fs.backing, name).read_bytes()


def test_a_power_cut_keeps_what_was_fsynced_and_drops_the_rest(fs: LazyFS) -> None:
    a = os.path.join(fs.mount, "a")
    _write(a, b"durable", sync=True)
    _write(a, b"-lost")
    _write(a, b"DUR", at=0)  # overwrites synced bytes: the disk still holds the old ones
    _write(os.path.join(fs.mount, "b"), b"never synced")
    assert Path(a).read_bytes() == b"DURable-lost"  # before the cut, readers see every write
    put_back = fs.cut()
    assert put_back["files"] == 2 and put_back["bytes_put_back"] == 3
    fs.unmount()
    assert _disk(fs, "a") == b"durable" and _disk(fs, "b") == b""


def test_a_truncation_not_fsynced_is_undone_by_a_power_cut(fs: LazyFS) -> None:
    a = os.path.join(fs.mount, "a")
    _write(a, b"0123456789", sync=True)
    os.truncate(a, 4)
    _write(a, b"xy")
    fs.cut()
    fs.unmount()
    assert _disk(fs, "a") == b"0123456789"


def test_a_renamed_file_keeps_its_volatile_writes_and_loses_them_at_a_cut(fs: LazyFS) -> None:
    tmp, final = os.path.join(fs.mount, "state.tmp"), os.path.join(fs.mount, "state.json")
    _write(final, b"old", sync=True)
    _write(tmp, b"new, renamed without an fsync")
    os.rename(tmp, final)
    assert fs.volatile() == {"/state.json": 0}
    fs.cut()
    fs.unmount()
    assert _disk(fs, "state.json") == b""  # the rename is durable, the data it pointed at is not


def test_a_failed_fsync_loses_what_it_was_to_make_durable(fs: LazyFS) -> None:
    a = os.path.join(fs.mount, "a")
    _write(a, b"durable", sync=True)
    fs.faults([{"op": "fsync", "errno": "EIO", "path": "^/a$"}])
    with pytest.raises(OSError) as failed:
        _write(a, b"-gone", sync=True)
    assert failed.value.errno == errno.EIO
    assert Path(a).read_bytes() == b"durable"  # a retried fsync would not bring it back
    assert fs.fired() == [["fsync", "/a", "EIO"]]


def test_a_fault_fails_only_the_calls_it_names_after_skipping_some(fs: LazyFS) -> None:
    fs.faults([{"op": "write", "errno": "ENOSPC", "path": r"\.seg$", "skip": 1, "times": 2}])
    seg, other = os.path.join(fs.mount, "0.seg"), os.path.join(fs.mount, "0.index")
    outcomes = []
    for _ in range(4):
        try:
            _write(seg, b"x")
            outcomes.append("ok")
        except OSError as e:
            outcomes.append(errno.errorcode[e.errno or 0])
        _write(other, b"y")  # never matches
    assert outcomes == ["ok", "ENOSPC", "ENOSPC", "ok"]
    assert Path(seg).read_bytes() == b"xx" and Path(other).read_bytes() == b"yyyy"
    assert fs.seen() == [4]  # the calls it matched, fired or not: what a later fault can skip
    fs.faults([])


def test_after_a_power_cut_every_call_fails_until_the_machine_restarts(fs: LazyFS) -> None:
    _write(os.path.join(fs.mount, "a"), b"x", sync=True)
    fs.cut()
    with pytest.raises(OSError):
        os.listdir(fs.mount)
    fs.unmount()
    again = LazyFS(fs.backing, fs.mount)
    try:
        assert Path(fs.mount, "a").read_bytes() == b"x"
    finally:
        again.unmount()
