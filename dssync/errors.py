"""The one error hierarchy of dssync.

Every failure an operator can foresee is one of these classes. Each carries a one-line
message, a hint naming what to do next, an exit code for the command line, and whether
retrying may help (``recoverable``)::

    DssyncError                      1  base class; never raised directly
    ├── UsageError                   2  bad arguments or configuration
    ├── NotFoundError                3  a home, file or directory that does not exist
    ├── CorruptionError              4  bytes on disk fail their checksum or format
    │   ├── CorruptLogError
    │   └── CorruptStoreError
    ├── UnknownSchemaError           5  an event written with a schema this build does not know
    ├── LockedError                  6  another process holds the log writer or the store
    ├── ResourceError                7  the machine refused: disk full, permission denied
    │   └── ChunkerUnavailableError     only the pure-Python FastCDC is installed
    ├── OffsetOutOfRangeError        8  asked for offsets the log no longer (or not yet) holds
    │   └── GapError                    the peer's retention passed what the mirror needs next
    ├── MismatchError                9  verify found the store and its log disagree
    ├── BackendUnavailableError     10  a broker or peer that does not answer (retry later)
    │   └── TransientError              the peer's sync interface, retried with backoff
    ├── PairingRefusedError         11  the peer's model, version or secret differ
    │   └── ClockSkewError              an authentic request whose clock is too far off
    ├── ServiceError                 *  the running service's own error, with its code and hint
    └── ChildRunError                1  a process the demo or a benchmark started failed

The command line prints ``error: <message>`` and ``hint: <hint>`` and exits with the code;
no traceback reaches a user for any of these.
"""

from __future__ import annotations

import errno
from typing import Any


class DssyncError(Exception):
    """Base class of every foreseeable dssync failure."""

    exit_code = 1
    recoverable = False
    default_hint = "run the command with --help to see how it is used"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint


class UsageError(DssyncError):
    """Arguments or configuration that cannot work; fix them and run again."""

    exit_code = 2


class NotFoundError(DssyncError):
    """A path the command needs does not exist."""

    exit_code = 3
    default_hint = "check the path; create an appliance home with 'dssync init HOME'"


class CorruptionError(DssyncError):
    """Stored bytes fail their checksum or their format: never returned to a reader."""

    exit_code = 4


class CorruptLogError(CorruptionError):
    """A log batch whose CRC32C, length or offsets do not check out."""

    default_hint = ("cut the log at the damage with 'dssync recover HOME' (a paired appliance takes back from its "
                    "peer what follows it; otherwise it is lost), then follow its report")


class CorruptStoreError(CorruptionError):
    """The DuckDB index or a segment pack file disagrees with itself."""

    default_hint = "rebuild the store from the log with 'dssync replay HOME'"


class UnknownSchemaError(DssyncError):
    """A record was written with an event schema this build does not know."""

    exit_code = 5
    default_hint = "upgrade dssync on this appliance to the version that wrote the log"


class LockedError(DssyncError):
    """Another process holds the single-writer lock of a log or the store file."""

    exit_code = 6
    recoverable = True
    default_hint = "stop the other dssync process on this home, or wait for it to finish"


class ResourceError(DssyncError):
    """The operating system refused a write (disk full, permission denied)."""

    exit_code = 7
    recoverable = True
    default_hint = "free disk space and run the command again; nothing acknowledged was lost"


class OffsetOutOfRangeError(DssyncError):
    """An offset below the log's start (removed by retention) or beyond its end."""

    exit_code = 8
    default_hint = "see the log's offset range with 'dssync inspect log HOME'"


class MismatchError(DssyncError):
    """verify found a difference between the store and the projection of its log."""

    exit_code = 9
    default_hint = "rebuild the store from the log with 'dssync replay HOME'"


class BackendUnavailableError(DssyncError):
    """A broker or a peer did not answer in time."""

    exit_code = 10
    recoverable = True
    default_hint = "check that the broker is running and reachable, then retry"



class ChunkerUnavailableError(ResourceError):
    """Only the pure-Python FastCDC is importable: far too slow for the optimization path."""

    default_hint = "reinstall pyfastcdc from a wheel for this platform: pip install --force-reinstall pyfastcdc"


class GapError(OffsetOutOfRangeError):
    """The peer's log no longer holds (or never held) the offsets the mirror needs next;
    ``detail`` says which (the mirror counts what it could not copy)."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message, hint="the mirror re-bootstraps from a snapshot of the peer")
        self.detail = detail


class TransientError(BackendUnavailableError):
    """The peer's sync interface did not answer, or not yet: retried with backoff."""


class PairingRefusedError(DssyncError):
    """The peer is not a valid partner: wrong secret, other model, other software version."""

    exit_code = 11
    default_hint = "both appliances need the same model, software version and shared secret"


class ClockSkewError(PairingRefusedError):
    """An authentic request (its tag checked) whose clock is too far from the server's: the
    server answers it, signed, with its own clock, and the caller signs with that clock."""

    default_hint = "synchronize both appliances' clocks (NTP); the link keeps working meanwhile"


class ServiceError(DssyncError):
    """The running service answered a tool's request with an error; carries the error's own
    exit code and hint."""


class ChildRunError(DssyncError):
    """A process the demo or a benchmark started failed, or a local pair did not converge."""

    default_hint = "read the logs named above, or rerun the case on its own"


def from_os_error(exc: OSError, doing: str) -> DssyncError:
    """Translate an OSError raised while ``doing`` something into the hierarchy."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"disk full while {doing}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ResourceError(
            f"permission denied while {doing}: {exc.filename or ''}".rstrip(": "),
            hint="check the owner and mode of the appliance home",
        )
    if exc.errno == errno.ENOENT:
        return NotFoundError(f"no such file or directory while {doing}: {exc.filename}")
    return ResourceError(f"{exc.strerror or exc} while {doing}")
