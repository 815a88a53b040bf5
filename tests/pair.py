"""A pair of real appliances for the tests (see dssync.bench.localpair)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dssync.bench import workload
from dssync.bench.localpair import SECRET, Node, dss, free_port, secret_file, wait_converged
from dssync.bench.localpair import make_pair as _make_pair

__all__ = ["SECRET", "Node", "dss", "held_home", "kafka_pair", "make_pair", "release", "secret_file", "started_pair",
           "verified", "wait_alarm", "wait_converged"]


def make_pair(tmp_path: Path, **kwargs: object) -> tuple[Node, Node]:
    return _make_pair(str(tmp_path), **kwargs)  # type: ignore[arg-type]


def started_pair(tmp_path: Path, running: list[Node], **kwargs: object) -> tuple[Node, Node]:
    """A pair whose services and mirrors run, stopped when the test ends (``running`` fixture)."""
    a, b = make_pair(tmp_path, **kwargs)
    running.extend((a, b))
    for n in (a, b):
        n.start_all()
    return a, b


def release(tmp_path: Path, seed: int, size: int, count: int) -> list[str]:
    """``count`` successive versions of a synthetic release, written to files."""
    out = []
    for i, data in enumerate(workload.versions(seed, size, count)):
        p = tmp_path / f"r{seed}-{i}.tar"
        p.write_bytes(data)
        out.append(str(p))
    return out


def wait_alarm(home: str, alarm: str, timeout: float = 30) -> dict[str, Any]:
    """The raised ``alarm`` of a running appliance, as 'dssync lag --json' shows it, once the
    monitor has raised it (it evaluates every interval_s); fails after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        raised = {x["alarm"]: x for x in json.loads(dss("lag", home, "--json", check=False).stdout)["alarms"]}
        if alarm in raised or time.time() > deadline:
            assert alarm in raised, f"{alarm} not raised in {timeout} s: {raised}"
            found: dict[str, Any] = raised[alarm]
            return found
        time.sleep(0.5)


def kafka_pair(tmp_path: Path, transport: str, site_a: Any, site_b: Any | None = None,
               extra_a: tuple[str, ...] = ()) -> tuple[Node, Node]:
    """sha (master) and shb (backup) with Kafka logs, paired with ``transport``: on one shared
    cluster (``site_a``) or one cluster each (``kafka-sites``: shb on ``site_b``). Topics get a
    prefix of their own, so pairs of several tests share the brokers."""
    logs = str(tmp_path / "logs")
    os.makedirs(logs)
    prefix = f"pair{os.getpid()}-{uuid.uuid4().hex[:8]}."
    a = Node("sha", str(tmp_path / "sha"), free_port(), logs)
    b = Node("shb", str(tmp_path / "shb"), free_port(), logs)
    sites = {a.name: site_a.bootstrap, b.name: (site_b or site_a).bootstrap}
    for n in (a, b):
        dss("init", n.home, "--name", n.name, "--model", "SH", "--version", "1", "--kafka", sites[n.name],
            "--kafka-topic-prefix", prefix, *(extra_a if n is a else ()))
    for n, peer, role in ((a, b, "master"), (b, a, "backup")):
        peer_kafka = ("--peer-kafka", sites[peer.name]) if transport == "kafka-sites" else ()
        dss("sync", "configure", n.home, "--role", role, "--transport", transport, *peer_kafka,
            "--peer", f"127.0.0.1:{peer.port}", "--listen", f"127.0.0.1:{n.port}",
            "--secret-file", secret_file(str(tmp_path), SECRET))
    return a, b


def verified(home: str) -> None:
    """``dssync verify HOME`` passes: the store is the projection of its own log and its peer's."""
    p = dss("verify", home, "--json", check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr


@contextlib.contextmanager
def held_home(home: str) -> Iterator[None]:
    """Another process holds ``home`` open (its log's writer lock, its store) for the block."""
    holder = subprocess.Popen([sys.executable, "-P", "-c",
                               "import sys, time; from dssync.appliance import Appliance\n"
                               "a = Appliance(sys.argv[1]); print('ready', flush=True); time.sleep(60)", home],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
        yield
    finally:
        holder.terminate()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
