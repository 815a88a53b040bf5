"""SIGTERM at random moments, under traffic, stops 'dssync serve' and 'dssync mirror' cleanly.

A signal handler that takes a lock can deadlock its own thread when the signal lands while
that thread holds the lock; such a hang shows once in tens of stops, so this sends well over a
hundred. Each stop must end the process with exit code 0 within STOP_LIMIT_S, without a
traceback in its log, and the pair must converge and verify afterwards.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from dssync.bench import workload
from dssync.bench.localpair import Node
from dssync.errors import DssyncError
from dssync.tools.control import ControlClient
from tests.pair import dss, make_pair, wait_converged

STOP_LIMIT_S = 5.0
CYCLES = 25  # per process kind and appliance: 4 x 25 = 100 stops, about a minute


def _traffic(node: Node, seed: int, stop: threading.Event, sent: list[int]) -> None:
    """Small ingests, one after another; one refused while the service is down is dropped, as a
    connection the optimizer cannot take would be."""
    data = next(iter(workload.versions(seed, 400_000, 1)))
    rng = random.Random(seed)
    while not stop.is_set():
        client = ControlClient.for_home(node.home)
        if client is None:
            time.sleep(0.02)
            continue
        lo = rng.randrange(0, len(data) - 40_000)
        chunk = data[lo:lo + rng.randrange(4_000, 40_000)]
        try:
            client.ingest(io.BytesIO(chunk), len(chunk))
            sent[0] += 1
        except DssyncError:
            time.sleep(0.02)


def _ready(node: Node, what: str, log_size: int, proc: subprocess.Popen[bytes]) -> bool:
    """Whether the process has set up its stop handling: serve answers; mirror logged a state."""
    if what == "serve":
        return ControlClient.for_home(node.home) is not None and \
            ControlClient.for_home(node.home).pid == proc.pid  # type: ignore[union-attr]
    with open(os.path.join(node.logs, f"{node.name}.mirror.log"), "rb") as f:
        f.seek(log_size)
        return b" mirror " in f.read()


def _stop_cycles(node: Node, what: str, seed: int, failures: list[str], stop_times: list[float]) -> None:
    rng = random.Random(seed)
    log_path = os.path.join(node.logs, f"{node.name}.{what}.log")
    for cycle in range(CYCLES):
        size = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        node.start(what)
        proc = node.procs[what]
        deadline = time.monotonic() + 60
        while not _ready(node, what, size, proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                failures.append(f"{node.name} {what} cycle {cycle} did not start ({proc.poll()}): "
                                f"{node.log(what)[-1500:]}")
                return
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # dssync dumps every thread's stack to its log
            time.sleep(1.0)
            proc.kill()
            proc.wait()
            failures.append(f"{node.name} {what} cycle {cycle} still ran {STOP_LIMIT_S} s after SIGTERM:\n"
                            f"{node.log(what)[-6000:]}")
            return
        stop_times.append(time.monotonic() - sent)
        node.procs.pop(what, None)
        if code != 0:
            failures.append(f"{node.name} {what} cycle {cycle} exited with {code}: {node.log(what)[-1500:]}")
            return


def test_sigterm_at_random_moments_under_traffic_stops_serve_and_mirror_cleanly(tmp_path: Path) -> None:
    a, b = make_pair(tmp_path)
    failures: list[str] = []
    stop_times: list[float] = []
    stop_traffic = threading.Event()
    sent = [0]
    try:
        for n in (a, b):
            n.start_all()
        wait_converged(a, b)  # pairing done: the backup holds the master's store
        traffic = [threading.Thread(target=_traffic, args=(n, seed, stop_traffic, sent))
                   for seed, n in enumerate((a, b), 1)]
        cyclers = [threading.Thread(target=_stop_cycles, args=(n, what, seed, failures, stop_times))
                   for seed, (n, what) in enumerate(((a, "serve"), (a, "mirror"), (b, "serve"), (b, "mirror")), 10)]
        for t in traffic + cyclers:
            t.start()
        for t in cyclers:
            t.join()
        stop_traffic.set()
        for t in traffic:
            t.join()
        assert not failures, "\n\n".join(failures)
        assert len(stop_times) == 4 * CYCLES
        assert sent[0] > 0, "no ingest got through"
        for n in (a, b):
            n.start_all()
        wait_converged(a, b, timeout=120)
    finally:
        stop_traffic.set()
        for n in (a, b):
            n.stop_all()
    for n in (a, b):
        for what in ("serve", "mirror"):
            assert "Traceback" not in n.log(what), n.log(what)[-4000:]
        dss("verify", n.home)
    stop_times.sort()
    print(f"{len(stop_times)} stops: median {stop_times[len(stop_times) // 2]:.2f} s, "
          f"max {stop_times[-1]:.2f} s")
