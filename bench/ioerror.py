"""``dssync chaos ioerror``: the I/O-error campaign, every kind of call failed at every write site.

An appliance home lives on a LazyFS (``dssync.bench.lazyfs``). Each run arms one fault, as
SQLite's I/O-error tests make each call fail in turn: a kind of call (a write failing with
ENOSPC or EIO, an fsync failing, a file or directory that cannot be created, a truncation or a
read failing) on one kind of file (log segments, their indexes and markers, packs, DuckDB's
database and write-ahead log, the reference index, the state JSON, or any file), once or until
it is cleared, on a real ``dssync`` command run on the home (mostly ``ingest`` of new traffic;
now and then ``replay``, ``verify`` or ``recover``). The file system counts the calls each
armed fault matches; the campaign keeps, per command, fsync policy, kind of file and kind of
call, how many there were the last time, and arms the next such fault after a number of them
drawn from that count, so that each call fails in turn and a fault is armed where the command
makes the call (pairs a command never makes are drawn one time in ten, in case it starts to).
Then the campaign checks:

1. the command succeeds, or fails with one ``error:`` line and one ``hint:`` line, a non-zero
   exit code and no traceback;
2. once the fault is cleared, the home resumes by itself: the same command run again
   succeeds, and ``dssync verify`` passes (every fourth run, the power is cut first, so a
   writer that believed a failed fsync loses what it believed);
3. at the end, every ingest reported done is entirely there, no segment is stored twice, and
   the home holds exactly what a home that never saw a fault holds after the same traffic.

Runs alternate between two homes, one per fsync policy that survives a power cut: ``always``
(new segments stay in the log files) and ``interval`` (they are written to packs).

Findings are counted and the first ones quoted; the exit code is 1 if there is any.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dssync.bench import workload
from dssync.bench.chaos import _init, _json, _live, _stored_twice, _write_input
from dssync.bench.corrupt import _clean_error
from dssync.bench.power import POLICIES, Machine
from dssync.process import command

FILES = {
    "log segment": r"/log/\d+\.log$",
    "log index": r"/log/\d+\.index$",
    "log marker": r"/log/[a-z]+\.json$",
    "pack": r"/store/packs/",
    "DuckDB database": r"\.duckdb$",
    "DuckDB write-ahead log": r"\.duckdb\.wal$",
    "reference index": r"/refindex",
    "state JSON": r"/store/[a-z]+\.json",
    "any file": r"",
}
CALLS = (("write", "ENOSPC"), ("write", "EIO"), ("fsync", "EIO"), ("create", "ENOSPC"), ("truncate", "EIO"),
         ("read", "EIO"))
CUT_EVERY = 4


@dataclass
class IOCampaign:
    runs: int = 0
    fired: Counter[str] = field(default_factory=Counter)
    not_fired: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    power_cuts: int = 0
    verified: int = 0
    findings: list[str] = field(default_factory=list)

    def find(self, what: str) -> None:
        self.findings.append(what)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "faults_fired": sum(self.fired.values()), "fired": dict(sorted(self.fired.items())),
                "not_fired": self.not_fired, "outcomes": dict(sorted(self.outcomes.items())),
                "commands": dict(sorted(self.commands.items())), "power_cuts": self.power_cuts,
                "verified": self.verified, "findings": len(self.findings), "first_findings": self.findings[:10],
                "ok": not self.findings}


def ioerror_campaign(directory: str, runs: int, seed: int, size: int,
                     progress: Callable[[int], None] | None = None) -> IOCampaign:
    """The I/O-error campaign of the module docstring, in ``directory``."""
    rng = random.Random(seed)
    c = IOCampaign()
    machine = Machine(directory)
    try:
        _campaign(c, machine, directory, runs, rng, seed, size, progress)
    finally:
        machine.close()
    return c


def _arm(calls: dict[tuple[str, str, str, str], int], run: tuple[str, str],
         rng: random.Random) -> tuple[str, str, str, int]:
    """The fault to arm for ``run`` (command, fsync policy): (kind of file, call, errno, calls to
    let pass). ``calls`` holds how many calls each (command, policy, kind, call) made the last
    time it was armed: a pair never tried or seen making calls is drawn, unless one time in ten,
    and the calls to let pass are drawn from those it made (0 for a pair never tried)."""
    pairs = [(kind, call, err) for kind in sorted(FILES) for call, err in CALLS]
    made = [p for p in pairs if calls.get((*run, p[0], p[1]), 1) > 0]
    kind, call, err = rng.choice(made if made and rng.random() < 0.9 else pairs)
    return kind, call, err, rng.randrange(calls.get((*run, kind, call), 0) or 1)


def _run(machine: Machine, *args: str) -> tuple[int, str]:
    machine.start(*args)
    assert machine.proc is not None
    _out, err = machine.proc.communicate(timeout=600)
    return machine.proc.returncode, err.decode(errors="replace")


def _campaign(c: IOCampaign, machine: Machine, directory: str, runs: int, rng: random.Random, seed: int,
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
    calls: dict[tuple[str, str, str, str], int] = {}
    for i in range(runs):
        fsync = POLICIES[i % len(POLICIES)]
        home = homes[fsync][1]
        roll = rng.random()
        if roll < 0.7 or not inputs[fsync]:
            path = _write_input(directory, i, next(releases))
            inputs[fsync].append(path)
            args: tuple[str, ...] = ("ingest", home, path)
        else:
            args = (rng.choice(("replay", "verify", "recover")), home)
        kind, call, err_name, skip = _arm(calls, (args[0], fsync), rng)
        persistent = rng.random() < 0.5
        fault = {"op": call, "errno": err_name, "path": FILES[kind], "skip": skip, "times": -1 if persistent else 1}
        what = (f"{args[0]} ({fsync}) with {call} {err_name} on {kind} after {skip} such call(s) "
                f"({'until cleared' if persistent else 'once'})")
        machine.fs.faults([fault])
        code, err = _run(machine, *args)
        fired = machine.fs.fired()
        (seen,) = machine.fs.seen()
        machine.fs.faults([])
        key = (args[0], fsync, kind, call)
        calls[key] = max(calls.get(key, 0), seen) if fired else seen
        c.runs += 1
        c.commands[args[0]] += 1
        if fired:
            c.fired[f"{call} {err_name} on {kind}"] += 1
        else:
            c.not_fired += 1
        reached = "fault fired" if fired else "fault not reached"
        if code == 0 and "Traceback" not in err:
            c.outcomes[f"{reached}, succeeded"] += 1
            if args[0] == "ingest":
                done[fsync].add(args[2])
        else:
            c.outcomes[f"{reached}, failed"] += 1
            why = _clean_error(code, err)
            if why is not None:
                c.find(f"{what}: {why}")
        if i % CUT_EVERY == CUT_EVERY - 1:
            machine.cut_and_restart()
            c.power_cuts += 1
        # the fault cleared: the same command again succeeds, and the home verifies
        code, err = _run(machine, *args)
        if code != 0 or "Traceback" in err:
            c.find(f"after {what}, cleared: {args[0]} again exited {code}: {err.strip()[-300:]}")
        elif args[0] == "ingest":
            done[fsync].add(args[2])
        code, doc, err = _json("verify", home, "--json")
        c.verified += 1
        if code != 0 or not doc.get("ok"):
            c.find(f"after {what}, cleared: verify failed: {doc.get('problems') or err.strip()[-300:]}")
        if progress is not None:
            progress(1)
    for fsync, (clean, home) in homes.items():
        for path in sorted(done[fsync]):
            code, doc, err = _json("ingest", home, path, "--json")
            if code != 0 or doc.get("savings", 0) < 0.999:
                c.find(f"an ingest reported done lost data ({fsync}): {path} saves {doc.get('savings')} when sent "
                       "again")
        for target in (clean, home):
            p = subprocess.run(command("ingest", target, *inputs[fsync]), capture_output=True, text=True,
                               timeout=3600)
            if p.returncode != 0:
                c.find(f"ingesting the campaign's traffic into {target} failed: {p.stderr.strip()[-300:]}")
        if _live(home) != _live(clean):
            c.find(f"the home ({fsync}) does not hold what a home that never saw a fault holds")
        twice = _stored_twice(home)
        if twice:
            c.find(f"{twice} segment(s) stored twice in the log of the home ({fsync})")
