"""A dssync process's own life: how it is asked to stop, and how it starts another dssync process.

**Stopping.** A Python signal handler runs on the main thread between two bytecodes, possibly
while that thread holds a lock (an ``Event``'s condition, the logging module's, a buffered
file's). A handler that takes a lock can therefore deadlock on a lock its own thread holds, so
the handlers installed here take none and do no work: ``StopFlag``'s handler only stores
``True`` in an attribute. The signal's arrival also writes one byte into a self-pipe (the
interpreter's ``signal.set_wakeup_fd``, done in C before any Python code runs), which is what
``StopFlag.wait`` waits on with ``select``: a waiting thread wakes at once, whichever thread
the operating system delivered the signal to, and no thread ever has to be woken by a handler.

``StopFlag`` has the ``is_set`` / ``set`` / ``wait`` shape of ``threading.Event`` so that the
threads of a process (the service's monitor, its apply loop) wait on the same request.

**Child processes** start the installed ``dssync`` program through ``command()``: with ``-P``
the interpreter does not put the working directory first on ``sys.path``, so a child started
from a checkout's root imports the installed package, not the checkout's folders of the same
name.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLI_MODULE = "dssync.tools.cli"


class StopFlag:
    """A request to stop, raised by SIGTERM/SIGINT (after ``install``) or by ``set``.

    Thread-safe without locks: the flag is one attribute written only with ``True``, and the
    wakeup is a byte in a non-blocking pipe that stays readable once the flag is up, so every
    thread in ``wait`` returns. ``set`` may be called from any thread, never needs a signal
    handler's help, and never blocks.
    """

    def __init__(self) -> None:
        self._requested = False
        self.signum = 0  # the signal that asked, 0 when asked by ``set`` or not at all
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._installed = False

    def install(self) -> StopFlag:
        """Route SIGTERM and SIGINT to this flag (main thread only); returns ``self``."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._installed = True
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No lock, no I/O, no logging: see the module docstring. The wakeup byte is already in
        # the pipe (written by the interpreter's C-level handler).
        self.signum = signum
        self._requested = True

    def is_set(self) -> bool:
        return self._requested

    def set(self) -> None:
        """Ask to stop (from any thread, not from a signal handler: that is ``install``'s)."""
        self._requested = True
        self._poke()

    def wait(self, timeout: float | None = None, wake: int | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a stop request, or until the file descriptor
        ``wake`` turns readable (a doorbell: the caller reads it); return whether a stop is up."""
        if self._requested:
            return True
        try:
            ready, _, _ = select.select([self._r] if wake is None else [self._r, wake], [], [], timeout)
        except (OSError, ValueError):  # closed under us: the process is ending
            return self._requested
        if self._r in ready:
            got = b""
            with contextlib.suppress(OSError):  # BlockingIOError: another waiter read it first
                got = os.read(self._r, 512)
            # A stop signal's number in the pipe is a request even if the Python-level
            # handler has not run yet (it runs on the main thread at its next bytecode).
            for b in got:
                if b in STOP_SIGNALS:
                    self.signum, self._requested = b, True
            if self._requested:
                self._poke()  # keep the pipe readable for the other waiting threads
        return self._requested

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # full (so readable) or closed (the process is ending)
            os.write(self._w, b"\0")

    def close(self) -> None:
        """Give the signals back to their defaults and close the pipe."""
        if self._installed:
            signal.set_wakeup_fd(-1)
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            self._installed = False
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


def command(*args: str) -> list[str]:
    """The argv that runs ``dssync ARGS...`` in a child process with this interpreter and the
    installed package, whatever the working directory (see the module docstring)."""
    return [sys.executable, "-P", "-m", CLI_MODULE, *args]
