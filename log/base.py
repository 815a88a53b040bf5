"""The log interfaces: ``LogReader`` for every log, ``Log`` for its writer, and optional abilities.

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
from typing import TYPE_CHECKING, NamedTuple, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from dssync.log.columns import RecordColumns
    from dssync.log.filelog import Prepared


class LogRecord(NamedTuple):
    """One record read from a log: its offset, its append time and its opaque value."""

    offset: int
    timestamp_ms: int
    value: bytes


@runtime_checkable
class LogReader(Protocol):
    """Read access to an append-only, offset-addressed log (module docstring: the contract).

    Every log is readable: the appliance's own file log or Kafka topic, a mirrored file log,
    a mirror topic read in its source's offsets. Readers never block the writer.
    """

    def read(self, from_offset: int, max_records: int = 10_000) -> list[LogRecord]:
        """Up to ``max_records`` records starting at ``from_offset`` (or the next one)."""
        ...

    def read_columns(self, from_offset: int, max_records: int = 10_000, max_bytes: int = 64 << 20) -> RecordColumns:
        """``read`` as ``RecordColumns``: at most ``max_records`` records and at least one (when
        any is there); no further read unit (a file log's batch, a broker fetch) is read once
        ``max_bytes`` of payload are in, so the last unit may pass that bound."""
        ...

    def start_offset(self) -> int:
        """The lowest offset still held (retention removes older ones)."""
        ...

    def end_offset(self) -> int:
        """The offset the next appended record will get."""
        ...

    def offset_for_time(self, timestamp_ms: int) -> int:
        """The first offset appended at or after ``timestamp_ms`` (``end_offset()`` if none).
        Raises ``UsageError`` for a log that is not indexed by time (a mirror topic)."""
        ...

    def close(self) -> None:
        """Release files, locks and connections; idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Log(LogReader, Protocol):
    """A log opened by its single writer: reads plus atomic appends (module docstring)."""

    def append(self, values: Sequence[bytes]) -> int:
        """Append ``values`` atomically; return the offset given to the first one."""
        ...

    def append_batches(self, groups: Sequence[Sequence[bytes]]) -> int:
        """Append each group atomically, in order, durable together; return the first offset."""
        ...

    def flush(self) -> None:
        """Make every acknowledged append durable now, whatever the fsync policy."""
        ...


# ---------------------------------------------------------------------- optional abilities


@runtime_checkable
class SegmentedLog(Protocol):
    """A log kept in segment files on this machine: its size, its segments, what retention
    removed, and the bytes from an offset to the end (a broker keeps these to itself)."""

    def size_bytes(self) -> int:
        """Bytes of every segment file held."""
        ...

    def segments(self) -> list[int]:
        """The base offsets of the segments held, oldest first."""
        ...

    def bytes_from(self, offset: int) -> int:
        """Bytes of the records from ``offset`` to the end."""
        ...

    def retired(self) -> list[dict[str, int]]:
        """The retirement ledger: one entry per segment retention removed (offsets, records, bytes)."""
        ...


@runtime_checkable
class RetentionPinned(Protocol):
    """A log whose retention its reader can hold back: nothing at or after ``retain_from``
    is removed (the store has not applied it yet, or reads segment bytes from it in place)."""

    retain_from: int | None


@runtime_checkable
class GroupCommitted(Protocol):
    """A log whose broker keeps consumer-group positions, so that the store's position can be
    shown to the broker's own tools (the store's committed offset stays the one that counts)."""

    def commit_group(self, next_offset: int) -> None:
        """Record ``next_offset`` as the group's position; failures are logged, never raised."""
        ...


@runtime_checkable
class PreparedWrites(Protocol):
    """A log that can encode a write before making it, so that the store applies the records
    from memory while the log writes them (dense offsets, one writing process): ``prepare``
    says which offsets and bytes the groups will get; ``write_prepared`` writes them (durable
    on return under the log's fsync policy), and raises what the write raised (nothing of it is
    then readable); ``make_durable`` is called before the store commits them."""

    def prepare(self, groups: Sequence[Sequence[bytes]]) -> Prepared:
        """Encode ``groups`` as the next batches; nothing is written yet."""
        ...

    def write_prepared(self, prepared: Prepared) -> int:
        """Write what ``prepare`` encoded; return the first offset."""
        ...

    def make_durable(self) -> None:
        """Make what is written durable before a store commits it, whatever the fsync policy's
        interval (a store commit is durable: it must not hold what a power cut takes from the log)."""
        ...
