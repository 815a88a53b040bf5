"""dssync.process.StopFlag: a stop request that a signal raises without taking a lock."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

from dssync.process import StopFlag, command

# A child that waits on the flag in a tight loop on its main thread (the loop of 'dssync
# serve') and in a second thread (its monitor), then exits 0 once both saw the request.
_CHILD = """
import sys, threading
from dssync.process import StopFlag
flag = StopFlag().install()
seen = threading.Event()
t = threading.Thread(target=lambda: (flag.wait(None), seen.set()))
t.start()
print("ready", flush=True)
while not flag.wait(0.0005):
    pass
t.join(5)
sys.exit(0 if seen.is_set() and flag.signum == int(sys.argv[1]) else 3)
"""


def _child(signum: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-P", "-c", _CHILD, str(signum)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    return p


def test_a_signal_at_any_moment_stops_both_waiting_threads() -> None:
    """SIGTERM lands at random points of a loop that waits every half millisecond: the
    moment that deadlocked an Event-based handler (a handler run while its own thread held
    the Event's lock) hung about 1 run in 75 of this loop; every child must stop."""
    rnd = random.Random(14)
    for _ in range(150):
        with _child(signal.SIGTERM) as p:
            time.sleep(rnd.uniform(0, 0.01))
            p.send_signal(signal.SIGTERM)
            try:
                assert p.wait(timeout=5) == 0
            finally:
                p.kill()


def test_sigint_is_a_stop_request_too() -> None:
    with _child(signal.SIGINT) as p:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=5) == 0


def test_set_from_another_thread_wakes_every_waiter_at_once() -> None:
    flag = StopFlag()
    try:
        woke: list[float] = []
        waiters = [threading.Thread(target=lambda: (flag.wait(30), woke.append(time.monotonic())))
                   for _ in range(3)]
        for t in waiters:
            t.start()
        time.sleep(0.05)
        assert not flag.is_set() and not woke
        asked = time.monotonic()
        flag.set()
        for t in waiters:
            t.join(10)
        assert len(woke) == 3 and all(w >= asked for w in woke)
        assert flag.wait(0) and flag.wait(30)  # stays up: later waits return at once
    finally:
        flag.close()


def test_wait_times_out_without_a_request() -> None:
    flag = StopFlag()
    try:
        assert flag.wait(0.01) is False and not flag.is_set()
    finally:
        flag.close()


def test_child_commands_do_not_import_the_working_directory(tmp_path: object) -> None:
    """A folder named like the package in the working directory (a checkout's root) must not
    shadow the installed program in a child process."""
    import os

    work = str(tmp_path)
    os.makedirs(os.path.join(work, "dssync"))
    with open(os.path.join(work, "dssync", "__init__.py"), "w") as f:
        f.write("raise SystemExit('the working directory was imported')\n")
    p = subprocess.run(command("--version"), cwd=work, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("dssync")
