"""Content-defined chunking with the compiled FastCDC of ``pyfastcdc``.

Both appliances of a pair must cut identically, so the chunker is named by a spec string
recorded with the data (``fastcdc2020/avg=8192/min=2048/max=65536``). pyfastcdc silently
falls back to pure Python (~300x slower) when its extension is missing; we refuse to start
instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from dssync.errors import ChunkerUnavailableError, UsageError

_SPEC = re.compile(r"^fastcdc2020/avg=(\d+)/min=(\d+)/max=(\d+)$")


@dataclass(frozen=True)
class ChunkerSpec:
    avg: int = 8192
    min: int = 2048
    max: int = 65536

    def __str__(self) -> str:
        return f"fastcdc2020/avg={self.avg}/min={self.min}/max={self.max}"

    @classmethod
    def parse(cls, text: str) -> ChunkerSpec:
        m = _SPEC.match(text)
        if not m:
            raise UsageError(f"unknown chunker spec {text!r}", hint="expected fastcdc2020/avg=N/min=N/max=N")
        return cls(int(m[1]), int(m[2]), int(m[3]))


def _compiled_fastcdc() -> Any:
    try:
        from pyfastcdc.cy import FastCDC
    except ImportError as exc:
        raise ChunkerUnavailableError(f"compiled FastCDC is not available ({exc})") from None
    return FastCDC


class Chunker:
    """Cuts streams into chunks; one instance per thread."""

    def __init__(self, spec: ChunkerSpec) -> None:
        self.spec = spec
        self._cdc = _compiled_fastcdc()(spec.avg, min_size=spec.min, max_size=spec.max)

    def cut(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Chunks of ``stream``; each view is valid only until the next one is produced."""
        for ch in self._cdc.cut_stream(stream):
            yield ch.data
