"""A pair of real appliances for the tests: homes, services and mirrors in real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kafka_broker import free_port

SECRET = "pair-secret-0123456789"


def dss(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "dssync.tools.cli", *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"dssync {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


@dataclass
class Node:
    name: str
    home: str
    port: int
    logs: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, what: str) -> None:
        assert what in ("serve", "mirror")
        old = self.procs.get(what)
        if old is not None and old.poll() is None:
            return
        log = open(os.path.join(self.logs, f"{self.name}.{what}.log"), "ab")  # noqa: SIM115
        self.procs[what] = subprocess.Popen([sys.executable, "-m", "dssync.tools.cli", what, self.home],
                                            stderr=log, stdout=log)
        log.close()
        if what == "serve":
            self.wait_for_service()

    def wait_for_service(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        run = os.path.join(self.home, "run", "serve.json")
        while time.time() < deadline:
            p = self.procs.get("serve")
            if p is not None and p.poll() is not None:
                raise AssertionError(f"serve {self.name} exited with {p.returncode}: {self.log('serve')[-2000:]}")
            if os.path.exists(run):
                with open(run) as f:
                    if json.load(f)["pid"] == p.pid if p else False:
                        return
            time.sleep(0.05)
        raise AssertionError(f"serve {self.name} did not start: {self.log('serve')[-2000:]}")

    def kill(self, what: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(what, None)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(timeout=30)

    def stop_all(self) -> None:
        for what in ("mirror", "serve"):
            self.kill(what, signal.SIGTERM)

    def log(self, what: str) -> str:
        try:
            with open(os.path.join(self.logs, f"{self.name}.{what}.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(dss("status", self.home, "--json").stdout)
        return doc

    def ingest(self, *paths: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(dss("ingest", self.home, *paths, "--json").stdout)
        return doc


def make_pair(tmp_path: Path, model_b: str = "SH-7080", version_b: str = "9.14", secret_b: str = SECRET,
              fsync: str = "never", extra_a: tuple[str, ...] = ()) -> tuple[Node, Node]:
    logs = str(tmp_path / "logs")
    os.makedirs(logs, exist_ok=True)
    a = Node("sha", str(tmp_path / "sha"), free_port(), logs)
    b = Node("shb", str(tmp_path / "shb"), free_port(), logs)
    dss("init", a.home, "--name", "sha", "--model", "SH-7080", "--version", "9.14", "--fsync", fsync, *extra_a)
    dss("init", b.home, "--name", "shb", "--model", model_b, "--version", version_b, "--fsync", fsync)
    dss("sync", "configure", a.home, "--role", "master", "--peer", f"127.0.0.1:{b.port}",
        "--listen", f"127.0.0.1:{a.port}", "--secret", SECRET)
    dss("sync", "configure", b.home, "--role", "backup", "--peer", f"127.0.0.1:{a.port}",
        "--listen", f"127.0.0.1:{b.port}", "--secret", secret_b)
    return a, b


def wait_converged(a: Node, b: Node, timeout: float = 60) -> dict[str, Any]:
    """Wait until both stores are identical and each has applied all of the other's log."""
    deadline = time.time() + timeout
    last: dict[str, Any] = {}
    while time.time() < deadline:
        p = dss("verify", a.home, b.home, "--json", check=False)
        if p.returncode == 0:
            sa, sb = a.status(), b.status()
            ends_a, ends_b = sa["log_end_offset"], sb["log_end_offset"]
            b_has_a = sb["store"]["offsets"].get("log:sha", 0) >= ends_a
            if b_has_a and sa["store"]["offsets"].get("log:shb", 0) >= ends_b:
                doc: dict[str, Any] = json.loads(p.stdout)
                return doc
        else:
            last = json.loads(p.stdout.split("\nerror")[0]) if p.stdout.startswith("{") else {"out": p.stdout}
        time.sleep(0.3)
    raise AssertionError(f"the pair did not converge in {timeout}s: {last}\n{a.log('serve')[-1500:]}\n"
                         f"{b.log('serve')[-1500:]}\n{a.log('mirror')[-1500:]}\n{b.log('mirror')[-1500:]}")


def release(tmp_path: Path, seed: int, size: int, count: int) -> list[str]:
    from dssync.tools import workload

    out = []
    for i, data in enumerate(workload.versions(seed, size, count)):
        p = tmp_path / f"r{seed}-{i}.tar"
        p.write_bytes(data)
        out.append(str(p))
    return out
