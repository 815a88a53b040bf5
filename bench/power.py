"""``dssync chaos power``: the power-cut campaign, on a file system that forgets what was not fsynced.

An appliance home lives on a LazyFS (``dssync.bench.lazyfs``): every file of it, the log, its
indexes, the packs, DuckDB's database and write-ahead log, the state JSON. Each run starts a
real ``dssync ingest`` of new traffic on it and cuts the power: at a random moment, at a named
crash point inside a write path (``dssync.crashpoint``: a log batch written before its fsync,
the log durable before the store commit, ...), or just after the ingest reported done. A
power cut kills every process using the home (SIGKILL) and puts every file back to what its
last fsync made durable; the file system is then mounted again, as the machine restarts. Every
fifth run cuts the power under a ``dssync replay`` instead.

After every cut the home must verify: the store is exactly the projection of what its log kept
(a store ahead of its log, a torn batch served, a DuckDB file that lost a commit it relied on
are all findings). At the end the campaign checks, as ``dssync chaos kill`` does, that every
ingest reported done before a cut is entirely there (sending it again stores nothing new), that
no segment was stored twice in the log, and that the home holds exactly what a home never cut
holds after the same traffic. One home per fsync policy that promises durability across a
power cut: ``always`` (every batch) and ``interval`` (``ingest`` syncs before it reports done).

A fifth of the runs cut the power under one appliance of a pair: sha (the master) lives on the
LazyFS with its ``serve`` and ``mirror`` running, shb on an ordinary disk, both taking traffic.
The cut falls during an ingest on sha; sha restarts (its services started again) while shb
ran throughout. The pair must converge (``dssync verify`` of both homes: identical stores, each
holding all the other wrote), and shb's mirror of sha's log must not have diverged from it:
every record it holds is the record sha's log holds at that offset, and none lies past sha's
end (a peer that kept batches the crashed appliance lost would see sha reuse their offsets for
other events: Kafka's leader-epoch problem, KIP-101; sha serves only what is durable).

Findings are counted and the first ones quoted; the exit code is 1 if there is any.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dssync.bench import workload
from dssync.bench.chaos import _digest, _init, _json, _live, _stored_twice, _write_input
from dssync.bench.lazyfs import LazyFS
from dssync.bench.localpair import Node, make_pair, wait_converged
from dssync.bench.pairkill import check_mirror
from dssync.crashpoint import ENV
from dssync.errors import ChildRunError
from dssync.process import command

POLICIES = ("always", "interval")
POINTS = ("log.torn-write", "log.written", "ingest.log-durable", "store.staged")
REPLAY_EVERY = 5
PAIR_EVERY = 5
CONVERGE_S = 120.0


@dataclass
class PowerCampaign:
    runs: int = 0
    cuts: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    verified: int = 0
    files_put_back: int = 0
    bytes_put_back: int = 0
    findings: list[str] = field(default_factory=list)

    def find(self, what: str) -> None:
        self.findings.append(what)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "cuts": sum(self.cuts.values()), "cut_during": dict(sorted(self.cuts.items())),
                "completed": self.completed, "verified": self.verified,
                "files_put_back": self.files_put_back, "bytes_put_back": self.bytes_put_back,
                "findings": len(self.findings), "first_findings": self.findings[:10], "ok": not self.findings}


class Machine:
    """The homes' file system and the processes using it: ``start``, then ``power_cut``."""

    def __init__(self, directory: str) -> None:
        self.backing, self.mount = os.path.join(directory, "disk"), os.path.join(directory, "mnt")
        self.fs = LazyFS(self.backing, self.mount)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})})

    def power_cut(self, after: float | None, also: Callable[[], None] = lambda: None
                  ) -> tuple[int, str, dict[str, Any]]:
        """Wait up to ``after`` seconds (None: until the process ends), SIGKILL it if it still
        runs, and every other process of the machine (``also``), cut the power and restart the
        machine; (exit status, stderr, what the cut put back)."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=after)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
        also()
        _out, err = self.proc.communicate(timeout=600)
        return self.proc.returncode, err.decode(errors="replace"), self.cut_and_restart()

    def cut_and_restart(self) -> dict[str, Any]:
        """Cut the power (no process of the campaign runs) and mount the disk again; what the cut
        put back."""
        put_back = self.fs.cut()
        self.fs.unmount()
        self.fs = LazyFS(self.backing, self.mount)
        return put_back

    def close(self) -> None:
        self.fs.unmount()


def power_campaign(directory: str, runs: int, seed: int, size: int,
                   progress: Callable[[int], None] | None = None) -> PowerCampaign:
    """The power-cut campaign of the module docstring, in ``directory``."""
    rng = random.Random(seed)
    c = PowerCampaign()
    machine = Machine(directory)
    pair_runs = runs // PAIR_EVERY
    try:
        _campaign(c, machine, directory, runs - pair_runs, rng, seed, size, progress)
        if pair_runs:
            _pair_campaign(c, machine, directory, pair_runs, rng, seed + 1, size, progress)
    finally:
        machine.close()
    return c


def _campaign(c: PowerCampaign, machine: Machine, directory: str, runs: int, rng: random.Random, seed: int,
              size: int, progress: Callable[[int], None] | None) -> None:
    releases = workload.versions(seed, size, runs + 1, churn=0.5)
    homes = {}
    for fsync in POLICIES:
        clean, home = os.path.join(directory, f"clean-{fsync}"), os.path.join(machine.mount, f"home-{fsync}")
        _init(clean, "clean", fsync)
        _init(home, "sh1", fsync)
        homes[fsync] = (clean, home)
    inputs: dict[str, list[str]] = {f: [] for f in POLICIES}
    done: dict[str, set[str]] = {f: set() for f in POLICIES}
    first = _write_input(directory, 0, next(releases))
    t0 = time.monotonic()
    machine.start("ingest", homes["always"][1], first)
    code, err, _put_back = machine.power_cut(None)
    one_run = time.monotonic() - t0
    if code != 0:
        raise ChildRunError(f"the campaign's first ingest failed: {err.strip()[-300:]}")
    inputs["always"].append(first)
    done["always"].add(first)
    for i in range(runs):
        fsync = POLICIES[i % len(POLICIES)]
        _clean, home = homes[fsync]
        if i % REPLAY_EVERY == REPLAY_EVERY - 1:
            # a cut ingest can leave the store behind its log (verify says so, the next open
            # catches it up): 'recover' catches it up first, so the digest is the whole log's
            p = subprocess.run(command("recover", home), capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                c.find(f"recover failed on {home}: {p.stderr.strip()[-300:]}")
            before = _digest(home)
            machine.start("replay", home)
            where = "replay (random moment)"
            code, err, put_back = machine.power_cut(rng.uniform(0.05, one_run * 2))
            _count(c, where, code, err, put_back)
            _verify(c, home, f"a power cut during {where}")
            if _digest(home) != before:
                c.find(f"a replay cut by a power cut changed the store's digest of {home}")
        else:
            path = _write_input(directory, i + 1, next(releases))
            inputs[fsync].append(path)
            roll = rng.random()
            if roll < 0.4:
                point = rng.choice(POINTS)
                machine.start("ingest", home, path, env={ENV: f"{point}:{rng.randint(1, 2)}"})
                where, after = f"ingest at {point}", None
            elif roll < 0.8:
                machine.start("ingest", home, path)
                where, after = "ingest (random moment)", rng.uniform(0.05, one_run * 1.5)
            else:
                machine.start("ingest", home, path)
                where, after = "ingest, just after it reported done", None
            code, err, put_back = machine.power_cut(after)
            if _count(c, where, code, err, put_back):
                done[fsync].add(path)
            _verify(c, home, f"a power cut during {where} ({fsync})")
        if progress is not None:
            progress(1)
    for fsync, (clean, home) in homes.items():
        for path in sorted(done[fsync]):  # acknowledged: every segment of it is there
            code, doc, err = _json("ingest", home, path, "--json")
            if code != 0 or doc.get("savings", 0) < 0.999:
                c.find(f"an ingest reported done before a power cut lost data on {home} ({fsync}): {path} saves "
                       f"{doc.get('savings')} when sent again{': ' + err.strip()[-200:] if code else ''}")
        for target in (clean, home):
            p = subprocess.run(command("ingest", target, *inputs[fsync]), capture_output=True, text=True,
                               timeout=3600)
            if p.returncode != 0:
                c.find(f"ingesting the campaign's traffic into {target} failed: {p.stderr.strip()[-300:]}")
        _verify(c, home, "the traffic sent again")
        if _live(home) != _live(clean):
            c.find(f"{home} ({fsync}) does not hold what a home never cut holds")
        twice = _stored_twice(home)
        if twice:
            c.find(f"{twice} segment(s) stored twice in the log of {home} ({fsync})")


def _pair_campaign(c: PowerCampaign, machine: Machine, directory: str, runs: int, rng: random.Random, seed: int,
                   size: int, progress: Callable[[int], None] | None) -> None:
    releases = workload.versions(seed, size, 2 * runs + 2, churn=0.5)
    a, b = make_pair(os.path.join(directory, "pair"), fsync="always", home_a=os.path.join(machine.mount, "sha"))
    try:
        a.start_all()
        b.start_all()
        b.ingest(_write_input(directory, 100_000, next(releases)))
        _converge(c, a, b, "pairing")
        one_run = 0.0
        for i in range(runs):
            if i % 2:  # both keep optimizing: shb's traffic reaches sha's store through sha's mirror
                b.ingest(_write_input(directory, 100_001 + 2 * i, next(releases)))
            path = _write_input(directory, 100_002 + 2 * i, next(releases))
            t0 = time.monotonic()
            machine.start("ingest", a.home, path)
            after = None if rng.random() < 0.2 or not one_run else rng.uniform(0.05, one_run * 1.5)

            def services_down() -> None:  # the whole machine goes down at once
                a.kill("serve")
                a.kill("mirror")

            code, err, put_back = machine.power_cut(after, services_down)
            one_run = one_run or time.monotonic() - t0
            where = "paired ingest and services" + (", just after the ingest reported done" if after is None else "")
            _count(c, where, code, err, put_back)
            a.start_all()
            if _converge(c, a, b, f"a power cut during a {where}"):
                check_mirror(c.find, a, b)
            if progress is not None:
                progress(1)
        for node in (a, b):
            for what in ("serve", "mirror"):
                if "Traceback" in node.log(what):
                    c.find(f"{node.name}'s {what} wrote a traceback: {node.log(what)[-600:]}")
    finally:
        a.stop_all()
        b.stop_all()


def _converge(c: PowerCampaign, a: Node, b: Node, after: str) -> bool:
    try:
        wait_converged(a, b, CONVERGE_S)
    except ChildRunError as e:
        c.find(f"the pair did not converge after {after}: {e.message[-600:]}")
        return False
    c.verified += 1
    return True


def _count(c: PowerCampaign, where: str, code: int, err: str, put_back: dict[str, Any]) -> bool:
    """Count a run; True if its process reported done before the cut."""
    c.runs += 1
    c.cuts[where] += 1
    c.files_put_back += int(put_back.get("files", 0))
    c.bytes_put_back += int(put_back.get("bytes_put_back", 0))
    if code == -signal.SIGKILL:
        return False
    if code != 0 or "Traceback" in err:
        c.find(f"{where} exited {code} without being killed: {err.strip()[-300:]}")
        return False
    c.completed += 1
    return True


def _verify(c: PowerCampaign, home: str, after: str) -> None:
    code, doc, err = _json("verify", home, "--json")
    c.verified += 1
    if code != 0 or not doc.get("ok"):
        c.find(f"verify failed after {after}: {doc.get('problems') or err.strip()[-300:]}")
