"""A FUSE file system that forgets what was not fsynced, and fails calls on demand.

``python -m dssync.bench.lazyfs BACKING MOUNT CONTROL`` mounts the directory BACKING at MOUNT
and passes every call through to it, as Jepsen's LazyFS does. For each file it keeps what the
writes and truncations since the file's last fsync replaced: the bytes the disk still holds
and the length the file had. A **power cut** puts those back in every file at once, which is
what a machine that lost its power finds on its disk. Namespace operations (create, rename,
unlink, mkdir) are durable when they return, as on a journaling file system; only file
contents are volatile (LazyFS's model too). A **failed fsync** loses what it was to make
durable: the file goes back to its last durable state at once (the worst a kernel may do, the
lesson PostgreSQL learnt in 2018; a writer that retries the fsync and believes it finds its
data gone).

The harness (``LazyFS`` below) talks to it over the UNIX socket CONTROL, one JSON line per
request and per answer:

- ``{"cmd": "cut"}``: power cut. Every file goes back to its durable state; from then on every
  call fails with EIO until the mount is gone. The harness kills the processes using the mount
  first, and unmounts it after.
- ``{"cmd": "faults", "faults": [FAULT, ...]}``: the faults to inject from now on (``[]``: none).
  A FAULT is ``{"op": OP, "errno": "ENOSPC", "path": REGEX, "skip": 0, "times": 1}``: the
  calls of kind OP on a path (under the mount, ``/`` first) matching REGEX fail with that
  errno once ``skip`` of them passed, ``times`` of them (-1: every one). OP is ``write``,
  ``fsync``, ``read``, ``create`` (create, mkdir, rename) or ``truncate``.
- ``{"cmd": "fired"}``: the faults injected so far, ``[[op, path, errno], ...]``, and how many
  calls each armed fault matched (``seen``, fired or not: what a fault armed later can skip).
- ``{"cmd": "volatile"}``: the files holding data no fsync made durable, and their bytes.

The daemon serves the file system in one thread (every call in turn, so the undo logs need no
finer locking than one lock shared with the control thread).
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dssync.errors import ChildRunError, ResourceError

OPS = ("write", "fsync", "read", "create", "truncate")


@dataclass
class Volatile:
    """What a file's writes since its last fsync replaced: the length it had and, in order,
    each overwritten range's durable bytes (put back in reverse order at a cut)."""

    synced: int
    undo: list[tuple[int, bytes]] = field(default_factory=list)

    def bytes(self) -> int:
        return sum(len(old) for _at, old in self.undo)


@dataclass
class Fault:
    op: str
    errno: int
    path: re.Pattern[str]
    skip: int = 0
    times: int = 1
    seen: int = 0

    def fires(self, op: str, path: str) -> bool:
        if op != self.op or not self.path.search(path):
            return False
        self.seen += 1
        return self.seen > self.skip and (self.times < 0 or self.seen <= self.skip + self.times)


def parse_faults(specs: list[dict[str, Any]]) -> list[Fault]:
    faults = []
    for s in specs:
        if s["op"] not in OPS:
            raise ValueError(f"unknown fault op {s['op']!r} (one of {', '.join(OPS)})")
        faults.append(Fault(op=s["op"], errno=getattr(errno, s["errno"]), path=re.compile(s.get("path", "")),
                            skip=int(s.get("skip", 0)), times=int(s.get("times", 1))))
    return faults


def _operations() -> Any:
    """The FUSE operations class (built here: mfusepy is imported only by the daemon)."""
    import mfusepy as fuse

    class Lazy(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self, root: str) -> None:
            self.root = os.path.realpath(root)
            self.mutex = threading.Lock()
            self.files: dict[str, Volatile] = {}
            self.faults: list[Fault] = []
            self.fired: list[tuple[str, str, str]] = []
            self.dead = False

        # -- the volatile layer -------------------------------------------------------------

        def _real(self, path: str) -> str:
            return self.root + path

        def _check(self, op: str, path: str) -> None:
            if self.dead:
                raise fuse.FuseOSError(errno.EIO)
            for f in self.faults:
                if f.fires(op, path):
                    self.fired.append((op, path, errno.errorcode[f.errno]))
                    raise fuse.FuseOSError(f.errno)

        def _record(self, path: str, size: int) -> Volatile:
            rec = self.files.get(path)
            if rec is None:
                rec = self.files[path] = Volatile(synced=size)
            return rec

        def _replacing(self, path: str, fd: int, at: int, end: int) -> None:
            """Keep the durable bytes of [at, end) that a write or truncation is to replace."""
            rec = self._record(path, os.fstat(fd).st_size)
            end = min(end, rec.synced)
            if at < end:
                rec.undo.append((at, os.pread(fd, end - at, at)))

        def _roll_back(self, path: str) -> None:
            rec = self.files.pop(path, None)
            if rec is None:
                return
            try:
                fd = os.open(self._real(path), os.O_RDWR)
            except FileNotFoundError:
                return
            try:
                for at, old in reversed(rec.undo):
                    os.pwrite(fd, old, at)
                os.ftruncate(fd, rec.synced)
            finally:
                os.close(fd)

        def cut(self) -> dict[str, int]:
            with self.mutex:
                files, lost = len(self.files), sum(r.bytes() for r in self.files.values())
                for path in list(self.files):
                    self._roll_back(path)
                self.dead = True
                return {"files": files, "bytes_put_back": lost}

        # -- calls --------------------------------------------------------------------------

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            with self.mutex:
                if self.dead:
                    raise fuse.FuseOSError(errno.EIO)
                st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
                keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns",
                        "st_ctime_ns", "st_blocks", "st_blksize", "st_ino")
                attrs = {k: getattr(st, k) for k in keys}
                for k in ("st_atime", "st_mtime", "st_ctime"):
                    attrs[k] = attrs.pop(k + "_ns")
                return attrs

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._real(path), amode):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def readdir(self, path: str, fh: int) -> list[str]:
            with self.mutex:
                if self.dead:
                    raise fuse.FuseOSError(errno.EIO)
                return [".", "..", *os.listdir(self._real(path))]

        def statfs(self, path: str) -> dict[str, int]:
            stv = os.statvfs(self._real(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                    "f_frsize", "f_namemax")
            return {k: getattr(stv, k) for k in keys}

        def open(self, path: str, flags: int) -> int:
            with self.mutex:
                if flags & os.O_ACCMODE == os.O_RDONLY:
                    self._check("read", path)
                real = self._real(path)
                if flags & os.O_TRUNC:
                    fd = os.open(real, os.O_RDWR)
                    try:
                        self._replacing(path, fd, 0, os.fstat(fd).st_size)
                    finally:
                        os.close(fd)
                return os.open(real, (flags & ~(os.O_APPEND | os.O_ACCMODE)) | os.O_RDWR)

        def create(self, path: str, mode: int, fi: int | None = None) -> int:
            with self.mutex:
                self._check("create", path)
                fd = os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
                self.files.pop(path, None)
                self._record(path, 0)
                return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            with self.mutex:
                self._check("read", path)
                return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with self.mutex:
                self._check("write", path)
                self._replacing(path, fh, offset, offset + len(data))
                return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            with self.mutex:
                self._check("truncate", path)
                fd = os.open(self._real(path), os.O_RDWR)
                try:
                    self._replacing(path, fd, length, os.fstat(fd).st_size)
                    os.ftruncate(fd, length)
                finally:
                    os.close(fd)
                return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            with self.mutex:
                try:
                    self._check("fsync", path)
                except fuse.FuseOSError:
                    self._roll_back(path)  # what it was to make durable is gone
                    raise
                self.files.pop(path, None)
                return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            with self.mutex:
                self._check("create", path)
                os.mkdir(self._real(path), mode)
                return 0

        def rmdir(self, path: str) -> int:
            with self.mutex:
                os.rmdir(self._real(path))
                return 0

        def unlink(self, path: str) -> int:
            with self.mutex:
                os.unlink(self._real(path))
                self.files.pop(path, None)
                return 0

        def rename(self, old: str, new: str) -> int:
            with self.mutex:
                self._check("create", new)
                os.rename(self._real(old), self._real(new))
                self.files.pop(new, None)
                prefix = old.rstrip("/") + "/"
                for path in list(self.files):  # a file, or everything under a directory
                    if path == old or path.startswith(prefix):
                        self.files[new + path[len(old):]] = self.files.pop(path)
                return 0

        def link(self, target: str, source: str) -> int:
            os.link(self._real(source), self._real(target))
            return 0

        def symlink(self, target: str, source: str) -> int:
            os.symlink(source, self._real(target))
            return 0

        def readlink(self, path: str) -> str:
            return os.readlink(self._real(path))

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._real(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._real(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                os.utime(self._real(path))
            else:
                os.utime(self._real(path), ns=times)
            return 0

    return Lazy


def _serve_control(ops: Any, control: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            line = f.readline()
            try:
                req = json.loads(line)
                answer: dict[str, Any] = {"ok": True}
                if req["cmd"] == "cut":
                    answer.update(ops.cut())
                elif req["cmd"] == "faults":
                    faults = parse_faults(req["faults"])
                    with ops.mutex:
                        ops.faults = faults
                elif req["cmd"] == "fired":
                    with ops.mutex:
                        answer["fired"] = list(ops.fired)
                        answer["seen"] = [f.seen for f in ops.faults]
                elif req["cmd"] == "volatile":
                    with ops.mutex:
                        answer["files"] = {p: r.bytes() + 0 for p, r in ops.files.items()}
                else:
                    answer = {"ok": False, "error": f"unknown command {req['cmd']!r}"}
            except (ValueError, KeyError, AttributeError) as e:
                answer = {"ok": False, "error": str(e)}
            f.write(json.dumps(answer).encode() + b"\n")
            f.flush()


def main(argv: list[str]) -> int:
    import mfusepy as fuse

    backing, mount, control = argv
    ops = _operations()(backing)
    threading.Thread(target=_serve_control, args=(ops, control), daemon=True, name="lazyfs-control").start()
    fuse.FUSE(ops, mount, foreground=True, nothreads=True)
    return 0


def available() -> str | None:
    """Why a LazyFS cannot be mounted here, or None if it can."""
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:  # mfusepy raises OSError without libfuse
        return f"the FUSE binding cannot be loaded ({e})"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if not any(os.access(os.path.join(d, "fusermount3"), os.X_OK) for d in os.get_exec_path()):
        return "fusermount3 is missing"
    return None


class LazyFS:
    """A mounted LazyFS, driven from the harness: ``cut()``, ``faults()``, ``fired()``,
    ``unmount()``. Its daemon is a child process; the backing directory outlives it."""

    def __init__(self, backing: str, mount: str) -> None:
        why = available()
        if why is not None:
            raise ResourceError(f"cannot mount a LazyFS: {why}",
                              hint="install fuse3 (apt-get install fuse3) and dssync's chaos extra "
                                   "(pip install 'dssync[chaos]'); ./run test does both")
        self.backing, self.mount = backing, mount
        self.control = os.path.join(os.path.dirname(os.path.abspath(mount)),
                                    f".lazyfs-{os.path.basename(mount)}.sock")
        os.makedirs(backing, exist_ok=True)
        try:
            os.makedirs(mount, exist_ok=True)
        except OSError:  # the stale mount of a daemon that died (ENOTCONN): let it go
            subprocess.run(["fusermount3", "-u", "-z", mount], capture_output=True, timeout=60)
            os.makedirs(mount, exist_ok=True)
        if os.path.exists(self.control):
            os.unlink(self.control)
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "dssync.bench.lazyfs", backing, mount,
                                      self.control], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not (os.path.ismount(mount) and os.path.exists(self.control)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self._stop()
                raise ResourceError(f"the LazyFS daemon did not mount {mount}: {err[-300:]}",
                                  hint="check that FUSE works here: fusermount3 -V, ls -l /dev/fuse")
            time.sleep(0.02)

    def request(self, **req: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(self.control)
            s.sendall(json.dumps(req).encode() + b"\n")
            answer: dict[str, Any] = json.loads(s.makefile("rb").readline())
        if not answer.get("ok"):
            raise ChildRunError(f"the LazyFS daemon refused {req}: {answer.get('error')}")
        return answer

    def cut(self) -> dict[str, Any]:
        """The power cut: unsynced data is gone; the mount fails every call. Kill the
        processes using it before, and ``unmount()`` after."""
        return self.request(cmd="cut")

    def faults(self, faults: list[dict[str, Any]]) -> None:
        self.request(cmd="faults", faults=faults)

    def fired(self) -> list[list[str]]:
        fired: list[list[str]] = self.request(cmd="fired")["fired"]
        return fired

    def seen(self) -> list[int]:
        """How many calls each armed fault matched so far, fired or not."""
        seen: list[int] = self.request(cmd="fired")["seen"]
        return seen

    def volatile(self) -> dict[str, int]:
        files: dict[str, int] = self.request(cmd="volatile")["files"]
        return files

    def unmount(self) -> None:
        err = self._stop()
        if self.proc.returncode not in (0, None) and "Traceback" in err:
            raise ChildRunError(f"the LazyFS daemon failed: {err[-500:]}")

    def _stop(self) -> str:
        if self.proc.poll() is None:  # (after a cut, the mount point itself answers EIO)
            subprocess.run(["fusermount3", "-u", "-z", self.mount], capture_output=True, timeout=60)
        try:
            _out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        if os.path.exists(self.control):
            os.unlink(self.control)
        return err.decode(errors="replace")

    def __enter__(self) -> LazyFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
