"""Quarantine: a peer's record that cannot be applied, set aside instead of retried forever.

A batch from the peer can pass its CRC and still be unusable: a body that does not decode, an
event schema this version does not know, a segment whose bytes do not hash to its reference.
Retrying it changes nothing (the peer's log holds it as it is) and stops the sync behind it.
So the consumer of a peer's log finds the first such record of the read (``first_malformed``:
a bisection over the read, nothing applied meanwhile), applies the records before it, and sets
it aside here: its bytes, offset, append time and the reason, under ``HOME/quarantine/``
(written durably), then moves its committed offset past it and goes on. The monitor raises
the critical ``peer_data_quarantined`` alarm while anything is set aside, and ``dssync
verify`` skips the same offsets in its projection (and counts them).

What the store misses is that record's effect: ``dssync verify A B`` says whether the two
stores still agree; re-pairing the backup (its master's store overwrites it) brings them
together again. The operator removes the files once the case is handled, which clears the
alarm.
"""

from __future__ import annotations

import os
import time
from typing import Any

from dssync import layout
from dssync.errors import CorruptLogError, DssyncError, UnknownSchemaError
from dssync.log.columns import RecordColumns
from dssync.schemas.columnar import decode_columns, forged_segments

MALFORMED = (CorruptLogError, UnknownSchemaError)
"""What a record's content can raise on apply (a damaged file raises on read, before)."""


def directory(home: str) -> str:
    return os.path.join(home, "quarantine")


def _check(cols: RecordColumns, check_refs: bool) -> DssyncError | None:
    try:
        ev = decode_columns(cols)
    except MALFORMED as exc:
        return exc
    if check_refs and len(forged_segments(ev)):
        return CorruptLogError("a segment's bytes do not hash to its reference")
    return None


def first_malformed(cols: RecordColumns, check_refs: bool) -> tuple[int, DssyncError] | None:
    """The index of the first record of ``cols`` that does not decode (or, with
    ``check_refs``, whose segment does not hash to its reference), and why; None if all do.
    A bisection over prefixes: about log2(n) decodes of the read."""
    whole = _check(cols, check_refs)
    if whole is None:
        return None
    lo, hi = 0, len(cols)  # the prefix [0, lo) is good, [0, hi) is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _check(cols.take(slice(0, mid)), check_refs) is None:
            lo = mid
        else:
            hi = mid
    return lo, _check(cols.take(slice(lo, lo + 1)), check_refs) or whole


class Quarantine:
    """The records of one home set aside, by source (module docstring)."""

    def __init__(self, home: str) -> None:
        self.dir = directory(home)

    def add(self, source: str, offset: int, timestamp_ms: int, value: bytes, reason: str) -> dict[str, Any]:
        """Keep a record's bytes and why it was set aside (durable before it returns)."""
        os.makedirs(self.dir, exist_ok=True)
        name = f"{_safe(source)}-{offset}.rec"
        fd = os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, value)
            os.fsync(fd)
        finally:
            os.close(fd)
        entry = {"source": source, "offset": offset, "appended_ms": timestamp_ms, "at_ms": int(time.time() * 1000),
                 "reason": reason, "bytes": len(value), "file": name}
        layout.write_json(os.path.join(self.dir, f"{_safe(source)}-{offset}.json"), entry, durable=True)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Everything set aside, oldest offset first per source."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        out = [layout.read_json(os.path.join(self.dir, n)) for n in names]
        return sorted((e for e in out if "source" in e), key=lambda e: (e["source"], e["offset"]))

    def offsets(self, source: str) -> set[int]:
        return {int(e["offset"]) for e in self.entries() if e["source"] == source}


def _safe(source: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
