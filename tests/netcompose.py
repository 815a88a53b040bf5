"""docker-compose.yml run without Docker: each service a host of its own.

There is no Docker engine where the tests run, so this runs what a compose file says, as far
as the file itself goes, with Linux's own pieces (root and iproute2 needed):

* the network: every service gets a network namespace with one interface on a bridge private
  to the run (its own switch namespace), its compose ``hostname`` (a UTS namespace), and an
  ``/etc/hosts`` that names every service (``ip netns exec`` mounts ``/etc/netns/NS/hosts``),
  so ``kafka-a:9092`` and ``shb:7070`` mean what they mean inside the compose network, on the
  ports the file uses;
* the services: started in ``depends_on`` order, a ``service_healthy`` dependency waiting for
  the service's ``healthcheck`` (its ``test``, ``interval`` and ``retries``) to pass; each runs
  its ``entrypoint`` with the file's ``environment`` (merge keys resolved) and nothing else of
  this process's environment; ``exec`` runs a command in a service's namespace as
  ``docker compose exec`` does; ``down`` stops dependents first with SIGTERM, then SIGKILL
  after the service's ``stop_grace_period`` (Docker's default: 10 s).

What Docker itself would add is stood in for by an ``Image`` per image: its files (a path
map for the command words, e.g. the Dockerfile's ``COPY`` of the entrypoint), its environment
(``PATH`` to the installed project for the Dockerfile's image), and the environment that puts
its state directories and volumes somewhere of the run's own (the entrypoint scripts read
``DSSYNC_ROOT``, ``KAFKA_HOME`` and ``KAFKA_STATE`` for that, with the image's paths as
defaults). Not covered: the image build itself and the images' own file systems.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STOP_GRACE_S = 10.0  # docker stop's default before SIGKILL


class ComposeError(Exception):
    """The compose file could not be run as written (a service failed, a check never passed)."""


@dataclass
class Image:
    """What an image stands for here: ``paths`` maps its paths (as a command names them) to
    files of this machine; ``env(service, volumes)`` is its environment for one service, given
    the host directories of the service's volumes by mount point."""

    paths: dict[str, str]
    env: Callable[[str, dict[str, str]], dict[str, str]]
    entrypoint: list[str] = field(default_factory=list)


def dockerfile_entrypoint(dockerfile: Path, context: Path) -> tuple[list[str], dict[str, str]]:
    """The Dockerfile's ENTRYPOINT (exec form) and the files its COPY lines put in the image
    (image path -> source under ``context``); ``COPY . dir`` (the whole context) is left out."""
    entrypoint: list[str] = []
    copies: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["ENTRYPOINT"]:
            entrypoint = yaml.safe_load(line.split(None, 1)[1])
        elif words[:1] == ["COPY"] and len(words) == 3 and words[1] != ".":
            copies[words[2]] = str(context / words[1])
    return entrypoint, copies


def _seconds(text: str | int | float) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(text))
    if m is None:
        raise ComposeError(f"unreadable duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


class NetCompose:
    """One run of a compose file (module docstring); a context manager that tears it all down."""

    def __init__(self, compose_file: Path, workdir: Path, images: dict[str, Image],
                 environ: dict[str, str] | None = None) -> None:
        """``environ``: the environment of ``docker compose`` itself, which ``${VAR}``,
        ``${VAR:-default}`` and ``${VAR:?message}`` in the file are interpolated from."""
        self.environ = dict(os.environ if environ is None else environ)
        self.file = compose_file
        self.doc: dict[str, Any] = yaml.safe_load(compose_file.read_text())
        self.services: dict[str, dict[str, Any]] = self.doc["services"]
        self.work = workdir
        self.images = images
        self.tag = f"dc{uuid.uuid4().hex[:6]}"
        self.switch = f"{self.tag}-sw"
        self.ns = {name: f"{self.tag}-{name}" for name in self.services}
        self.ip = {name: f"10.213.{i // 200}.{i % 200 + 2}" for i, name in enumerate(self.services)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = workdir / "logs"
        self.returncodes: dict[str, int] = {}
        self.killed: list[str] = []

    # -- the network ---------------------------------------------------------------------------

    def _ip(self, *args: str, ns: str | None = None) -> None:
        subprocess.run(["ip", *(["-n", ns] if ns else []), *args], check=True, capture_output=True)

    def _network(self) -> None:
        self._ip("netns", "add", self.switch)
        self._ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        self._ip("link", "set", "br0", "up", ns=self.switch)
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{self.ip[name]} {spec.get('hostname', name)} {name}\n" for name, spec in self.services.items())
        for i, (name, ns) in enumerate(self.ns.items()):
            self._ip("netns", "add", ns)
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            Path(f"/etc/netns/{ns}/hosts").write_text(hosts)
            self._ip("link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.switch)
            self._ip("link", "set", f"v{i}", "master", "br0", "up", ns=self.switch)
            self._ip("addr", "add", f"{self.ip[name]}/16", "dev", "eth0", ns=ns)
            self._ip("link", "set", "eth0", "up", ns=ns)
            self._ip("link", "set", "lo", "up", ns=ns)

    # -- the services --------------------------------------------------------------------------

    def _image(self, name: str) -> Image:
        spec = self.services[name]
        key = spec.get("image") or "build"
        if key not in self.images:
            raise ComposeError(f"service {name}: no stand-in for image {key!r}")
        return self.images[key]

    def _volumes(self, name: str) -> dict[str, str]:
        """Mount point -> host path: bind mounts as the file says (relative to its folder),
        named volumes as directories of the run."""
        out = {}
        for v in self.services[name].get("volumes", []):
            src, dst = v.split(":")[:2]
            if src.startswith((".", "/")):
                out[dst] = str((self.file.parent / src).resolve())
            else:
                path = self.work / "volumes" / src
                path.mkdir(parents=True, exist_ok=True)
                out[dst] = str(path)
        return out

    def _argv(self, name: str, words: list[str]) -> list[str]:
        """``words`` as this machine runs them: image and volume paths mapped to host paths."""
        paths = {**self._image(name).paths, **self._volumes(name)}
        out = []
        for w in words:
            for inside, host in sorted(paths.items(), key=lambda kv: -len(kv[0])):
                if w == inside or w.startswith(inside.rstrip("/") + "/"):
                    w = host + w[len(inside):]
                    break
            out.append(w)
        return out

    def _env(self, name: str) -> dict[str, str]:
        spec = self.services[name]
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", "HOSTNAME": spec.get("hostname", name)}
        env.update(self._image(name).env(name, self._volumes(name)))
        env.update({k: self.interpolate(str(v)) for k, v in (spec.get("environment") or {}).items()})
        return env

    def interpolate(self, value: str) -> str:
        """Compose's variable interpolation; a ``${VAR:?message}`` unset or empty fails, as
        ``docker compose`` does."""
        def one(m: re.Match[str]) -> str:
            name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
            got = self.environ.get(name, "")
            if op == ":?" and not got:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return got or (arg if op == ":-" else "")
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}", one, value)

    def _in_ns(self, name: str, argv: list[str]) -> list[str]:
        hostname = self.services[name].get("hostname", name)
        return ["ip", "netns", "exec", self.ns[name], "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', hostname, *argv]

    def _start(self, name: str) -> None:
        spec = self.services[name]
        entrypoint = spec.get("entrypoint") or self._image(name).entrypoint
        argv = self._argv(name, [*entrypoint, *(spec.get("command") or [])])
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(self._in_ns(name, argv), env=self._env(name), stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)

    def log(self, name: str) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _healthy(self, name: str, deadline: float) -> None:
        check = self.services[name].get("healthcheck")
        if not check:
            return
        test = check["test"]
        if test[0] not in ("CMD", "CMD-SHELL"):
            raise ComposeError(f"service {name}: healthcheck test {test[0]!r} not understood")
        argv = self._argv(name, test[1:]) if test[0] == "CMD" else ["sh", "-c", test[1]]
        interval = _seconds(check.get("interval", "30s"))
        for _ in range(int(check.get("retries", 3))):
            time.sleep(interval)
            self._alive(name)
            if subprocess.run(self._in_ns(name, argv), env=self._env(name), capture_output=True,
                              timeout=max(5.0, deadline - time.time())).returncode == 0:
                return
            if time.time() > deadline:
                break
        raise ComposeError(f"service {name} never became healthy\n{self.log(name)[-3000:]}")

    def _alive(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            raise ComposeError(f"service {name} exited with {p.returncode}\n{self.log(name)[-3000:]}")

    def _order(self) -> list[str]:
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise ComposeError(f"depends_on cycle: {' -> '.join((*path, name))}")
            if name not in order:
                for dep in self.services[name].get("depends_on") or {}:
                    visit(dep, (*path, name))
                order.append(name)
        for name in self.services:
            visit(name, ())
        return order

    def up(self, timeout: float = 300.0) -> None:
        """``docker compose up -d``: the network, then every service once its dependencies are
        started (or healthy, when they say ``service_healthy``)."""
        deadline = time.time() + timeout
        self._network()
        healthy: set[str] = set()
        for name in self._order():
            deps = self.services[name].get("depends_on") or {}
            for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
                if (cond or {}).get("condition") == "service_healthy" and dep not in healthy:
                    self._healthy(dep, deadline)
                    healthy.add(dep)
            self._start(name)

    def exec(self, name: str, argv: list[str], check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``docker compose exec NAME ARGV``: in the service's namespace, environment and paths."""
        self._alive(name)
        p = subprocess.run(self._in_ns(name, self._argv(name, argv)), env=self._env(name), capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise ComposeError(f"exec {name} {' '.join(argv)}: exit {p.returncode}\n{p.stderr[-2000:]}")
        return p

    def down(self) -> None:
        """``docker compose down``: dependents first, SIGTERM then SIGKILL after the grace
        (``stop_grace_period``);
        records each service's exit code (``returncodes``) and which needed SIGKILL (``killed``)."""
        for name in reversed(self._order()):
            p = self.procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=_seconds(self.services[name].get("stop_grace_period", STOP_GRACE_S)))
                except subprocess.TimeoutExpired:
                    self.killed.append(name)
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            self.returncodes[name] = p.returncode
            left = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
            if left:  # processes the entrypoint left behind: Docker would kill them with the container
                self.killed.append(f"{name} (left: {' '.join(left)})")
                os.killpg(p.pid, signal.SIGKILL)

    def __enter__(self) -> NetCompose:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if len(self.returncodes) < len(self.procs):
                self.down()
        finally:
            for ns in [*self.ns.values(), self.switch]:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
                shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def can_run() -> str | None:
    """Why this machine cannot run a NetCompose (None if it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "pgrep"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    probe = f"dcprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None if p.returncode == 0 else f"ip netns add failed: {p.stderr.strip()}"
