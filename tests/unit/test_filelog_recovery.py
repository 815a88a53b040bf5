"""Recovery, corruption, concurrency, locking and retention of the embedded file log."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from dssync.errors import CorruptLogError, LockedError, OffsetOutOfRangeError, ResourceError
from dssync.log import segment as seg
from dssync.log.filelog import CLEAN, FileLog
from tests.unit.faults import failing_fsync


def _fill(directory: str, batches: int = 40, per_batch: int = 5, segment_bytes: int = 16 * 1024) -> list[bytes]:
    rng = random.Random(1)
    values = []
    with FileLog(directory, writer=True, create=True, segment_bytes=segment_bytes, fsync="never") as log:
        for _ in range(batches):
            vals = [rng.randbytes(rng.randint(10, 900)) for _ in range(per_batch)]
            log.append(vals)
            values.extend(vals)
    return values


def _all_segment_bytes(directory: str) -> list[tuple[str, int]]:
    return [(seg.segment_path(directory, b), os.path.getsize(seg.segment_path(directory, b)))
            for b in seg.list_segments(directory)]


def test_clean_reopen_cuts_nothing(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    values = _fill(d)
    with FileLog(d, writer=True) as log:
        assert log.recovery is not None and log.recovery.clean
        assert [r.value for r in log.read(0, 10_000)] == values


@pytest.mark.parametrize("seed", range(12))
def test_truncation_at_a_random_byte_recovers_a_prefix_and_reports_the_cut(tmp_path: Path, seed: int) -> None:
    d = str(tmp_path / "log")
    values = _fill(d)
    rng = random.Random(seed)
    files = _all_segment_bytes(d)
    path, size = files[-1]
    cut_at = rng.randrange(size)
    with open(path, "r+b") as f:
        f.truncate(cut_at)
    with FileLog(d, writer=True) as log:
        assert log.recovery is not None
        got = [r.value for r in log.read(0, 10_000)]
        assert got == values[: len(got)]  # a prefix: nothing corrupt, nothing reordered
        # whatever was cut is reported: the file now ends at the last whole batch
        assert log.recovery.bytes_cut == cut_at - os.path.getsize(path)
        log.append([b"after-recovery"])
        assert log.read(log.end_offset() - 1, 1)[0].value == b"after-recovery"


@pytest.mark.parametrize("seed", range(12))
def test_a_flipped_byte_is_never_returned_before_or_after_a_reopen(tmp_path: Path, seed: int) -> None:
    d = str(tmp_path / "log")
    values = _fill(d)
    rng = random.Random(100 + seed)
    files = _all_segment_bytes(d)
    path, size = files[rng.randrange(len(files))]
    pos = rng.randrange(size)
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))

    def read_all(log: FileLog) -> list[bytes] | None:
        """What a reader returns: a prefix of what was written, or None when it stops at the damage."""
        try:
            got = [r.value for r in log.read(0, 10_000)]
        except CorruptLogError:
            return None
        assert got == values[: len(got)]  # nothing changed, nothing reordered
        return got

    read_all(FileLog(d))
    with FileLog(d, writer=True) as log:
        got = read_all(log)
        assert got is None or len(got) < len(values)  # the damaged batch is never read as good


def test_damage_inside_a_sealed_segment_keeps_the_segments_after_it(tmp_path: Path) -> None:
    """Opening trusts a sealed segment whose last batch checks: damage in its middle is found
    by the reader that reaches it (an error naming the segment), and the later segments, intact,
    stay readable."""
    d = str(tmp_path / "log")
    values = _fill(d)
    files = _all_segment_bytes(d)
    assert len(files) >= 3
    path, size = files[1]
    with open(path, "r+b") as f:
        f.seek(size // 3)
        b = f.read(1)
        f.seek(size // 3)
        f.write(bytes([b[0] ^ 0x10]))
    with FileLog(d, writer=True) as log:
        assert log.recovery is not None and log.recovery.segments_deleted == 0 and log.recovery.bytes_cut == 0
        assert log.end_offset() == len(values)
        third = seg.list_segments(d)[2]
        assert [r.value for r in log.read(third, 10_000)] == values[third:]
        with pytest.raises(CorruptLogError, match=os.path.basename(path)[:20]):
            log.read(0, 10_000)


def test_a_clean_close_lets_the_next_open_skip_the_scan_and_a_changed_segment_is_scanned(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    values = _fill(d)
    assert os.path.exists(os.path.join(d, CLEAN))
    with FileLog(d, writer=True) as log:
        assert log.end_offset() == len(values)
        log.append([b"one more"])
    path, _ = _all_segment_bytes(d)[-1]
    with open(path, "ab") as f:  # torn bytes after a clean close: the size no longer matches
        f.write(b"\x01torn")
    with FileLog(d, writer=True) as log:
        assert log.recovery is not None and log.recovery.bytes_cut == 5
        assert [r.value for r in log.read(0, 10_000)] == [*values, b"one more"]


def test_garbage_appended_after_the_last_batch_is_cut(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    values = _fill(d)
    path, _ = _all_segment_bytes(d)[-1]
    with open(path, "ab") as f:
        f.write(b"\x00garbage" * 100)
    with FileLog(d, writer=True) as log:
        assert log.recovery is not None and log.recovery.bytes_cut == 800
        assert [r.value for r in log.read(0, 10_000)] == values


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    with FileLog(d, writer=True, create=True), pytest.raises(LockedError):
        FileLog(d, writer=True)


def test_a_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    code = ("import sys; from dssync.log.filelog import FileLog; from dssync.errors import LockedError\n"
            "try:\n FileLog(sys.argv[1], writer=True)\nexcept LockedError:\n sys.exit(42)\n")
    with FileLog(d, writer=True, create=True):
        proc = subprocess.run([sys.executable, "-P", "-c", code, d])
    assert proc.returncode == 42


def test_a_reader_in_another_process_sees_only_whole_batches_while_the_writer_appends(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    reader = ("import sys, time; from dssync.log.filelog import FileLog\n"
              "log = FileLog(sys.argv[1]); seen = 0; deadline = time.time() + 60\n"
              "while seen < 2000 and time.time() < deadline:\n"
              "    for r in log.read(seen, 500):\n"
              "        assert r.offset == seen, (r.offset, seen)\n"
              "        assert r.value == (b'%08d' % seen) * 40, seen\n"
              "        seen += 1\n"
              "print(seen)\n")
    with FileLog(d, writer=True, create=True, segment_bytes=64 * 1024, fsync="never") as log:
        proc = subprocess.Popen([sys.executable, "-P", "-c", reader, d], stdout=subprocess.PIPE)
        for i in range(0, 2000, 10):
            log.append([(b"%08d" % k) * 40 for k in range(i, i + 10)])
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == b"2000"


def test_retention_by_size_deletes_whole_old_segments(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    with FileLog(d, writer=True, create=True, segment_bytes=8192, retention_bytes=40_000, fsync="never") as log:
        for i in range(200):
            log.append([os.urandom(500) + bytes([i])])
        assert log.size_bytes() <= 40_000 + 8192
        assert log.start_offset() > 0
        with pytest.raises(OffsetOutOfRangeError):
            log.read(0, 1)
        assert log.read(log.start_offset(), 1)


def test_retention_by_age_uses_the_append_clock(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    now = [1_000_000]
    with FileLog(d, writer=True, create=True, segment_bytes=4096, retention_ms=60_000,
                 fsync="never", clock_ms=lambda: now[0]) as log:
        for _ in range(20):
            log.append([os.urandom(1000)])
        assert log.start_offset() == 0
        now[0] += 120_000
        for _ in range(10):
            log.append([os.urandom(1000)])
        assert 0 < log.start_offset() <= 20
        for base in log.segments():  # every segment holding only old records is gone
            assert seg.read_index(d, base)[-1][2] >= now[0] - 60_000


def test_offset_for_time_seeks_with_the_index(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    now = [5_000]
    with FileLog(d, writer=True, create=True, segment_bytes=4096, clock_ms=lambda: now[0], fsync="never") as log:
        for i in range(30):
            now[0] = 5_000 + i * 100
            log.append([b"r%d" % i])
        assert log.offset_for_time(5_000 + 1_450) == 15
        assert FileLog(d).offset_for_time(5_000 + 1_450) == 15
        assert log.offset_for_time(0) == 0
        assert log.offset_for_time(10**9) == 30


def test_a_failed_write_leaves_the_log_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(tmp_path / "log")
    with FileLog(d, writer=True, create=True) as log:
        log.append([b"kept"])
        real_write = os.write
        calls = {"n": 0}

        def full_disk(fd: int, data: bytes) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                real_write(fd, bytes(data)[:10])  # a partial write, then the disk is full
                raise OSError(28, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(ResourceError, match="disk full"):
            log.append([b"lost" * 100])
        monkeypatch.setattr(os, "write", real_write)
        log.append([b"next"])
        assert [r.value for r in log.read(0, 10)] == [b"kept", b"next"]
    with FileLog(d, writer=True) as log:
        assert log.recovery is not None and log.recovery.clean


def test_mirrored_batches_are_accepted_only_at_the_end_offset(tmp_path: Path) -> None:
    src = FileLog(str(tmp_path / "src"), writer=True, create=True)
    dst = FileLog(str(tmp_path / "dst"), writer=True, create=True)
    src.append([b"a", b"b"])
    src.append([b"c"])
    batches = list(src.batches(0))
    with pytest.raises(OffsetOutOfRangeError):
        dst.append_raw(batches[1].raw)  # a gap
    dst.append_raw(batches[0].raw)
    with pytest.raises(OffsetOutOfRangeError):
        dst.append_raw(batches[0].raw)  # a duplicate
    dst.append_raw(batches[1].raw)
    assert [r.value for r in dst.read(0, 10)] == [b"a", b"b", b"c"]
    corrupt = bytearray(batches[1].raw)
    corrupt[-1] ^= 0xFF
    with pytest.raises(CorruptLogError):
        FileLog(str(tmp_path / "d2"), writer=True, create=True).append_raw(bytes(corrupt))


def test_retention_keeps_what_the_local_store_has_not_applied(tmp_path: Path) -> None:
    d = str(tmp_path / "log")
    with FileLog(d, writer=True, create=True, segment_bytes=8192, retention_bytes=20_000, fsync="never") as log:
        log.retain_from = 0  # the local store has applied nothing yet
        for _ in range(100):
            log.append([os.urandom(500)])
        assert log.start_offset() == 0
        log.retain_from = 60
        log.append([os.urandom(500) for _ in range(20)])
        assert 0 < log.start_offset() <= 60


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_a_failed_fsync_cuts_what_it_would_have_made_durable_and_the_next_append_takes_its_offsets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: str) -> None:
    d = str(tmp_path / "log")
    log = FileLog(d, writer=True, create=True, fsync=fsync, segment_bytes=4096)
    log.append([b"kept%d" % i for i in range(30)])
    log.flush()
    size = os.path.getsize(seg.segment_path(d, log.segments()[-1]))

    with failing_fsync(monkeypatch), pytest.raises(ResourceError, match="syncing the log"):
        log.append([b"lost%d" % i for i in range(3)])
        log.flush()  # the policy "never" syncs here
    assert log.end_offset() == 30
    assert os.path.getsize(seg.segment_path(d, log.segments()[-1])) == size
    assert [r.value for r in FileLog(d).read(0, 100)] == [b"kept%d" % i for i in range(30)]  # never served
    assert log.append([b"again"]) == 30
    log.close()
    assert [r.value for r in FileLog(d).read(28, 100)] == [b"kept28", b"kept29", b"again"]


def test_a_close_whose_sync_fails_closes_its_files_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(tmp_path / "log")
    log = FileLog(d, writer=True, create=True, fsync="never")
    log.append([b"x"])
    with failing_fsync(monkeypatch), pytest.raises(ResourceError):
        log.close()
    FileLog(d, writer=True).close()  # the lock was released


@pytest.mark.parametrize("position", [2**63 + 5, 10**12])
def test_a_damaged_index_position_is_read_past_from_the_segments_start(tmp_path: Path, position: int) -> None:
    d = str(tmp_path / "log")
    values = _fill(d)
    bases = seg.list_segments(d)
    assert len(bases) >= 3
    base = bases[1]
    entries = seg.read_index(d, base)
    with open(seg.index_path(d, base), "r+b") as f:  # every entry of a sealed segment points past its end
        for k, (off, _pos, ts) in enumerate(entries):
            f.seek(k * seg.INDEX_ENTRY.size)
            f.write(seg.INDEX_ENTRY.pack(off, position, ts))
    reader = FileLog(d)
    assert [r.value for r in reader.read(entries[-1][0], 10_000)] == values[entries[-1][0]:]
    assert [r.value for r in reader.read(0, 10_000)] == values
    reader.close()
