"""Run a pair of appliances on this machine, as real processes: for the demo, the benchmarks
and the tests. Each appliance is a home plus its ``dssync serve`` and ``dssync mirror``
processes, whose output goes to ``<logs>/<name>.<serve|mirror>.log``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dssync.bench.unprotected import MODULE as UNPROTECTED_MODULE
from dssync.errors import ChildRunError
from dssync.layout import source_name
from dssync.process import command

SECRET = "pair-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dss(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the dssync command line in a child process."""
    p = subprocess.run(command(*args), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise ChildRunError(f"dssync {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


@dataclass
class Node:
    """One appliance of a local pair."""

    name: str
    home: str
    port: int
    logs: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    unprotected: bool = False
    """Run serve and mirror without the link's protection (``dssync.bench.unprotected``)."""

    def start(self, what: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start ``serve`` or ``mirror`` unless it runs (``env``: more of its environment); for
        serve, wait until it answers unless told not to."""
        old = self.procs.get(what)
        if old is not None and old.poll() is None:
            return
        with open(os.path.join(self.logs, f"{self.name}.{what}.log"), "ab") as log:
            argv = ([sys.executable, "-P", "-m", UNPROTECTED_MODULE] if self.unprotected and what in ("serve", "mirror")
                    else command())
            self.procs[what] = subprocess.Popen([*argv, what, self.home], stderr=log, stdout=log,
                                                env={**os.environ, **env} if env else None)
        if what == "serve" and wait:
            self.wait_for_service()

    def wait_for_service(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        run = os.path.join(self.home, "run", "serve.json")
        p = self.procs["serve"]
        while time.time() < deadline:
            if p.poll() is not None:
                raise ChildRunError(f"serve {self.name} exited with {p.returncode}: {self.log('serve')[-2000:]}")
            try:
                with open(run) as f:
                    if json.load(f)["pid"] == p.pid:
                        return
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        raise ChildRunError(f"serve {self.name} did not start: {self.log('serve')[-2000:]}")

    def kill(self, what: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(what, None)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(timeout=60)

    def start_all(self) -> None:
        """The appliance service, then the log-mirroring service."""
        self.start("serve")
        self.start("mirror")

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


def make_pair(directory: str, model_b: str = "SH-7080", version_b: str = "9.14", secret_b: str = SECRET,
              fsync: str = "never", extra_a: tuple[str, ...] = (), unprotected: bool = False,
              extra_b: tuple[str, ...] = (), home_a: str | None = None, init_a: bool = True) -> tuple[Node, Node]:
    """Create two homes, sha (master) and shb (backup), configured as a pair on loopback
    (``unprotected``: their link without TLS and MACs, for the sync benchmark only; ``home_a``:
    sha's home somewhere else than in ``directory``; ``init_a=False``: sha's home exists
    already, named sha, and is only configured)."""
    logs = os.path.join(directory, "logs")
    os.makedirs(logs, exist_ok=True)
    a = Node("sha", home_a or os.path.join(directory, "sha"), free_port(), logs, unprotected=unprotected)
    b = Node("shb", os.path.join(directory, "shb"), free_port(), logs, unprotected=unprotected)
    if init_a:
        dss("init", a.home, "--name", "sha", "--model", "SH-7080", "--version", "9.14", "--fsync", fsync, *extra_a)
    dss("init", b.home, "--name", "shb", "--model", model_b, "--version", version_b, "--fsync", fsync, *extra_b)
    dss("sync", "configure", a.home, "--role", "master", "--peer", f"127.0.0.1:{b.port}",
        "--listen", f"127.0.0.1:{a.port}", "--secret-file", secret_file(directory, SECRET))
    dss("sync", "configure", b.home, "--role", "backup", "--peer", f"127.0.0.1:{a.port}",
        "--listen", f"127.0.0.1:{b.port}", "--secret-file", secret_file(directory, secret_b))
    return a, b


def secret_file(directory: str, secret: str) -> str:
    """A 0600 file in ``directory`` holding ``secret`` (what 'sync configure --secret-file' reads)."""
    path = os.path.join(directory, f"pair-{hashlib.sha256(secret.encode()).hexdigest()[:8]}.secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def converged(a: Node, b: Node) -> dict[str, Any] | None:
    """The pair verify report if both stores are identical and caught up, else None."""
    p = dss("verify", a.home, b.home, "--json", check=False)
    if p.returncode != 0:
        return None
    # Each side's position is read after the other's log end: with heartbeats a log never stops
    # growing, so "caught up" means holding everything the other had written when asked.
    a_end = a.status()["log_end_offset"]
    sb = b.status()
    sa = a.status()
    b_has_a = sb["store"]["offsets"].get(source_name(a.name), 0) >= a_end
    a_has_b = sa["store"]["offsets"].get(source_name(b.name), 0) >= sb["log_end_offset"]
    if not (b_has_a and a_has_b):
        return None
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def wait_converged(a: Node, b: Node, timeout: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        doc = converged(a, b)
        if doc is not None:
            return doc
        time.sleep(0.2)
    raise ChildRunError(f"the pair did not converge in {timeout}s\n{a.log('serve')[-1500:]}\n"
                       f"{b.log('serve')[-1500:]}\n{a.log('mirror')[-1500:]}\n{b.log('mirror')[-1500:]}")
