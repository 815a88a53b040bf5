"""Faults the unit tests inject into the operating system's calls."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def failing_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every ``os.fdatasync`` inside the block fails with EIO, as a disk that lost the data."""
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")
    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", failing)
        yield
