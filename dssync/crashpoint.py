"""Named crash points: where the crash tests kill a process on purpose, at an exact step.

A write path marks its dangerous instants (after a write and before its fsync, between two
renames, halfway through an activation) with ``reached("name")``. The test harness arms one
point for a child process by setting ``DSSYNC_CRASH_AT=name`` (or ``name:N``: the N-th time it
is reached) in its environment; the process then dies there by SIGKILL, as a power cut or the
OOM killer would end it, without running any cleanup. Unarmed, a point costs one comparison.
Nothing outside the tests sets the variable.
"""

from __future__ import annotations

import os
import signal

ENV = "DSSYNC_CRASH_AT"
_name, _, _nth = os.environ.get(ENV, "").partition(":")
_left = int(_nth) if _nth.isdigit() else 1


def reached(name: str) -> None:
    """Die here by SIGKILL if the harness armed this point (module docstring)."""
    global _left
    if name != _name:
        return
    _left -= 1
    if _left <= 0:
        os.kill(os.getpid(), signal.SIGKILL)


def tear(name: str, fd: int | None, data: bytes | memoryview) -> None:
    """A write torn by the crash: if this point is armed (and its turn has come), write the
    first half of ``data`` to ``fd``, then die by SIGKILL; otherwise do nothing (the caller
    writes ``data`` whole, as always)."""
    global _left
    if name != _name or fd is None:
        return
    _left -= 1
    if _left <= 0:
        os.write(fd, memoryview(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
