"""Deliver alarm raises and clears: run a command, POST JSON to a webhook; rate-limited.

The rate limit counts raises per rolling hour: a raise beyond it is not delivered (and logged
as suppressed), and neither is its clear; a clear whose raise was delivered always is, so a
receiver never holds an incident open forever. Delivery runs on its own thread: a slow webhook
never delays the evaluation. A command gets the event as JSON on stdin and as ``DSSYNC_ALARM_*``
environment variables; a failing command or webhook is logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from dssync.monitor.alarms import AlarmEvent

log = logging.getLogger("dssync.alarms")


class Notifier:
    def __init__(self, command: str = "", webhook: str = "", max_per_hour: int = 30,
                 clock: Callable[[], float] = time.time) -> None:
        self.command, self.webhook, self.max_per_hour, self.clock = command, webhook, max_per_hour, clock
        self.sent: deque[float] = deque()
        self.suppressed = 0
        self._queue: queue.Queue[AlarmEvent | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def deliver(self, event: AlarmEvent, raise_was_delivered: bool = True) -> bool:
        """Queue ``event`` for delivery unless the rate limit says no; return whether queued."""
        if event.kind == "raise":
            now = self.clock()
            while self.sent and now - self.sent[0] > 3600:
                self.sent.popleft()
            if len(self.sent) >= self.max_per_hour:
                self.suppressed += 1
                log.warning("alarm %s on %s raised (incident %s) but not notified: more than %d "
                            "notifications in the last hour", event.alarm, event.path, event.incident,
                            self.max_per_hour)
                return False
            self.sent.append(now)
        elif not raise_was_delivered:
            return False
        if not (self.command or self.webhook):
            return True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dssync-notify", daemon=True)
            self._thread.start()
        self._queue.put(event)
        return True

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            if self.command:
                self._run_command(event)
            if self.webhook:
                self._post(event)

    def _run_command(self, event: AlarmEvent) -> None:
        doc = event.as_dict()
        env = {**os.environ, **{f"DSSYNC_ALARM_{k.upper()}": str(v) for k, v in doc.items() if k != "extra"}}
        try:
            p = subprocess.run(shlex.split(self.command), input=json.dumps(doc).encode(), env=env,
                               capture_output=True, timeout=30)
            if p.returncode != 0:
                log.warning("notify command exited with %d: %s", p.returncode, p.stderr.decode(errors="replace")[-300:])
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("notify command failed: %s", exc)

    def _post(self, event: AlarmEvent) -> None:
        body = json.dumps(event.as_dict()).encode()
        req = urllib.request.Request(self.webhook, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            for attempt in Retrying(retry=retry_if_exception_type(OSError), stop=stop_after_attempt(3),
                                    wait=wait_exponential(multiplier=0.5, max=5), reraise=True):
                with attempt, urllib.request.urlopen(req, timeout=5) as resp:
                    resp.read()
        except (OSError, urllib.error.HTTPError) as exc:
            log.warning("webhook %s failed after 3 attempts: %s", self.webhook, exc)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the delivery thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
