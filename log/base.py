"""The log interface shared by the embedded file log and the Kafka log.

Error contract, for every implementation:

* ``append`` is atomic: either every value of the call becomes readable, in order, under
  consecutive offsets, or none does and an error is raised (``ResourceError`` for a full
  disk, ``LockedError`` when the caller is not the single writer, ``BackendUnavailableError``
  for a broker that does not answer). An acknowledged append survives a process kill.
* ``read`` returns records in offset order, never a partial batch and never a record that
  failed its checksum (``CorruptLogError`` instead). Asking below ``start_offset()`` raises
  ``OffsetOutOfRangeError``; at or past ``end_offset()`` it returns an empty list.
* Offsets are strictly increasing and never reused. The file log's are dense; Kafka may skip
  offsets (transaction markers), so consumers resume from "last offset read + 1", never by
  counting records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from dssync.log.columns import RecordColumns


class LogRecord(NamedTuple):
    """One record read from a log: its offset, its append time and its opaque value."""

    offset: int
    timestamp_ms: int
    value: bytes


@runtime_checkable
class Log(Protocol):
    """An append-only, offset-addressed log (see the module docstring for the contract)."""

    def append(self, values: Sequence[bytes]) -> int:
        """Append ``values`` atomically; return the offset given to the first one."""
        ...

    def append_batches(self, groups: Sequence[Sequence[bytes]]) -> int:
        """Append each group atomically, in order, durable together; return the first offset."""
        ...

    def read(self, from_offset: int, max_records: int = 10_000) -> list[LogRecord]:
        """Up to ``max_records`` records starting at ``from_offset`` (or the next one)."""
        ...

    def read_columns(self, from_offset: int, max_records: int = 10_000, max_bytes: int = 64 << 20) -> RecordColumns:
        """``read`` as ``RecordColumns``, bounded by records and by payload bytes (at least one record)."""
        ...

    def start_offset(self) -> int:
        """The lowest offset still held (retention removes older ones)."""
        ...

    def end_offset(self) -> int:
        """The offset the next appended record will get."""
        ...

    def offset_for_time(self, timestamp_ms: int) -> int:
        """The first offset appended at or after ``timestamp_ms`` (``end_offset()`` if none)."""
        ...

    def flush(self) -> None:
        """Make every acknowledged append durable now, whatever the fsync policy."""
        ...

    def close(self) -> None:
        """Release files, locks and connections; idempotent."""
        ...
