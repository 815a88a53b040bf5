"""What every mirror process shares: the retry loop, the stop flag and the state file.

``dssync mirror`` runs one of two mirrors, by transport: the file mirror (``sync.mirror``,
the peer's log over the sync interface into ``HOME/mirror/<peer>/``) or the site mirror
(``sync.site_mirror``, the peer's Kafka topic into this site's cluster); ``dssync
mirror-topic`` runs a bare copier. All of them run their connect-and-copy cycle under
``keep_running`` (one retry policy, tenacity), stop through one ``StopFlag``, and the two
mirrors of a home write their state (connected, disconnected, refused, gap, counters) to
``HOME/mirror/<peer>/state.json`` through ``MirrorService``, where ``dssync status`` and the
lag monitor read it. One log line is written per state change, never one per retry.

A *cycle* is one connect-and-copy run of a mirror: it connects (proves the pair, and on Kafka
fences any predecessor), copies until it is stopped or something fails, and ends; the next
cycle resumes from what the destination holds. Every mirror module uses the word this way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from dssync import config as cfgmod
from dssync import layout
from dssync.errors import BackendUnavailableError, PairingRefusedError
from dssync.process import StopFlag

log = logging.getLogger("dssync.mirror")
SAVE_EVERY_S = 0.5
"""The state file is rewritten at most this often while copying (and at every state change):
the lag monitor takes a state older than ``monitor.lag.MIRROR_STALE_S`` for a dead mirror."""
REFUSED_PAUSE_S = 2.0


def _void(_: object) -> None:
    """Drop a value (tenacity's sleep must return None; a stop flag's wait returns a bool)."""


def keep_running(cycle: Callable[[], None], stopped: Callable[[], bool],
                 on_state: Callable[[str, str], None], sleep: Callable[[float], object],
                 first_wait_s: float = 0.1, max_wait_s: float = 5.0) -> None:
    """Run ``cycle`` until ``stopped()``, restarting it after every transient failure.

    Transient means ``BackendUnavailableError`` (a cluster or the peer does not answer,
    ``TransientError`` included): the wait grows exponentially from ``first_wait_s`` to
    ``max_wait_s`` and ``on_state("disconnected", why)`` says what it waits for (the caller
    logs once per state change). Anything else propagates.
    """
    def before_sleep(rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        wait = rs.next_action.sleep if rs.next_action else 0.0
        on_state("disconnected", f"{getattr(exc, 'message', exc)}; retrying (next in {wait:.1f} s)")

    retrying = Retrying(retry=retry_if_exception_type(BackendUnavailableError),
                        wait=wait_exponential(multiplier=first_wait_s, min=first_wait_s, max=max_wait_s),
                        before_sleep=before_sleep, stop=lambda rs: stopped(), sleep=lambda s: _void(sleep(s)),
                        reraise=True)
    while not stopped():
        with contextlib.suppress(BackendUnavailableError):  # raised only once stopped
            retrying(cycle)


class MirrorService:
    """The mirror process of one appliance home: subclasses provide ``_cycle`` (one
    connect-and-copy cycle, until ``stopped()``) and may add to the state file."""

    COUNTERS: tuple[str, ...] = ()
    """State counters carried over from earlier runs: status reports a pair's whole history."""
    WARN: tuple[str, ...] = ("disconnected", "refused")
    """States logged as warnings."""
    FIRST_WAIT_S, MAX_WAIT_S = 0.1, 5.0

    def __init__(self, home: str) -> None:
        self.home = home
        self.cfg = cfgmod.load(home)
        self.stop = StopFlag()  # SIGTERM routed here by 'dssync mirror' (stop.install())
        self.status = "starting"
        self.peer_name: str | None = None
        self.state: dict[str, Any] = {"state": "starting", "gaps": [], **dict.fromkeys(self.COUNTERS, 0)}
        self._last_write = 0.0

    # ------------------------------------------------------------------ state

    def _set(self, status: str, detail: str = "") -> None:
        """Enter ``status`` (logged when it changes) and write the state file now."""
        if status != self.status:
            log.log(logging.WARNING if status in self.WARN else logging.INFO,
                    "mirror %s%s", status, f": {detail}" if detail else "")
            self.status = status
        self.state.update(state=status, detail=detail)
        self._save(force=True)

    def _save(self, force: bool = False) -> None:
        """Write the state file (at most every ``SAVE_EVERY_S`` unless ``force``)."""
        now = time.monotonic()
        if self.peer_name is None or (not force and now - self._last_write < SAVE_EVERY_S):
            return
        self._last_write = now
        layout.write_mirror_state(self.home, self.peer_name, {
            **self._state_doc(), "peer": self.peer_name, "updated_ms": int(time.time() * 1000)})

    def _state_doc(self) -> dict[str, Any]:
        """The state to write; subclasses add what they know (positions, transport)."""
        return dict(self.state)

    def _met_peer(self, name: str) -> bool:
        """Note the peer's name; when it is new to this process, carry the totals of earlier
        runs forward from its state file. Returns whether it was new."""
        if self.peer_name == name:
            return False
        self.peer_name = name
        old = layout.mirror_state(self.home, name)
        for k in self.COUNTERS:
            self.state[k] = int(old.get(k, 0))
        self.state["gaps"] = list(old.get("gaps", []))
        return True

    # ------------------------------------------------------------------ running

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when asked to stop."""
        self.stop.wait(seconds)

    def _cycle(self, stopped: Callable[[], bool]) -> None:
        raise NotImplementedError

    def run(self, stop_after_s: float | None = None) -> None:
        """Copy until stopped (or for ``stop_after_s``), reconnecting after every transient
        failure; a refused pairing is retried every ``REFUSED_PAUSE_S``."""
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s

        def stopped() -> bool:
            return self.stopped or (deadline is not None and time.monotonic() >= deadline)

        while not stopped():
            try:
                keep_running(lambda: self._cycle(stopped), stopped, self._set, self._sleep,
                             self.FIRST_WAIT_S, self.MAX_WAIT_S)
            except PairingRefusedError as exc:
                self._set("refused", exc.message)
                self._sleep(REFUSED_PAUSE_S)
        self.close()

    def _waiting(self) -> bool:
        """Reload the configuration; True (and a short pause) while this appliance's pairing
        is not active yet."""
        self.cfg = cfgmod.load(self.home)
        if self.cfg.sync.state == "active":
            return False
        self._set("waiting", f"this appliance is {self.cfg.sync.state}")
        self._sleep(0.5)
        return True

    def close(self) -> None:
        """Say "stopped" in the state file: the lag monitor tells a stopped mirror from a
        running one by it."""
        self._set("stopped")
