"""The pair half of ``dssync chaos kill``: SIGKILL of a running pair's services, and of a backup's pairing.

A pair (sha the master, shb the backup, both with ``serve`` and ``mirror`` running) takes
traffic on both sides while one of its four processes is killed: at a named crash point of its
write path (armed when it is started again: a torn log write or a batch written before its
fsync, the store staged before its commit in the apply loop, a mirrored batch written before
the mirror's state) or at a random moment. The killed process is started again; the pair must
converge (identical stores, each holding all the other wrote), each side's mirror must hold the
other's records byte for byte and nothing past their end, and no process may write a traceback.

Every fifth run pairs a new backup instead, and kills its ``serve`` during pairing activation
(its named steps) or while it loads the master's snapshot (after a step of the load, after the
peer's offset moved, once loaded but not yet kept, or at a random moment); started again, the
new pair must converge the same way.

At the end every ingest reported done is entirely held by both appliances (sending it again
stores nothing new on either side).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING

from dssync.bench import workload
from dssync.bench.localpair import Node, dss, make_pair, wait_converged
from dssync.crashpoint import ENV
from dssync.errors import ChildRunError, DssyncError
from dssync.layout import log_dir, mirror_dir
from dssync.log.filelog import FileLog
from dssync.process import command

if TYPE_CHECKING:
    from dssync.bench.chaos import Campaign

POINTS = {
    "serve": ("store.staged", "log.written", "log.torn-write"),
    "mirror": ("mirror.written", "log.written", "log.torn-write"),
}
PAIRING_POINTS = ("pairing.planned", "pairing.store-removed", "pairing.old-log-renamed", "pairing.new-log-created",
                  "pairing.reset-appended", "pairing.reset-applied", "pairing.saved", "snapshot.step-applied",
                  "snapshot.peer-advanced", "snapshot.loaded")
PAIRING_EVERY = 5
CONVERGE_S = 120.0
DEATH_S = 5.0
"""How long a process armed at a named point may take to reach it once the traffic is in."""


def pair_kills(c: Campaign, directory: str, runs: int, rng: random.Random, seed: int, size: int,
               progress: Callable[[int], None] | None) -> None:
    """The campaign of the module docstring: ``runs`` kills in a pair under ``directory``."""
    releases = workload.versions(seed, size, 3 * runs + 8, churn=0.5)
    inputs: list[tuple[Node, str]] = []
    n = 0

    def traffic(node: Node) -> subprocess.Popen[bytes]:
        nonlocal n
        n += 1
        path = os.path.join(directory, f"pair-input{n:05d}.tar")
        with open(path, "wb") as f:
            f.write(next(releases))
        inputs.append((node, path))
        return subprocess.Popen(command("ingest", node.home, path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    acknowledged: list[str] = []
    pair = 0
    a, b = _new_pair(directory, pair)
    try:
        a.start_all()
        b.start_all()
        wait_converged(a, b, CONVERGE_S)
        for i in range(runs):
            if i % PAIRING_EVERY == PAIRING_EVERY - 1:
                pair += 1
                _retire(c, (a, b), acknowledged)
                a, b = _new_pair(directory, pair)
                a.start_all()
                ingest = traffic(a)
                _acknowledge(c, ingest, inputs[-1][1], acknowledged)
                _pairing_kill(c, a, b, rng)
            else:
                _service_kill(c, a, b, rng, traffic, acknowledged, inputs)
            if _converge(c, a, b):
                check_mirror(c.find, a, b)
                check_mirror(c.find, b, a)
            if progress is not None:
                progress(1)
        _retire(c, (a, b), acknowledged)
    finally:
        a.stop_all()
        b.stop_all()


def _retire(c: Campaign, nodes: tuple[Node, Node], acknowledged: list[str]) -> None:
    """Check a pair before it is stopped: every acknowledged ingest held by both, no traceback."""
    for path in acknowledged:
        for node in nodes:
            p = dss("ingest", node.home, path, "--json", check=False)
            try:
                savings = float(json.loads(p.stdout)["savings"])
            except (ValueError, KeyError):
                savings = -1.0
            if p.returncode != 0 or savings < 0.999:
                c.find(f"an ingest reported done is not all held by {node.name}: {path} saves {savings} when sent "
                       f"again {p.stderr.strip()[-200:]}")
    acknowledged.clear()
    for node in nodes:
        node.stop_all()
    _logs_clean(c, nodes)


def _new_pair(directory: str, n: int) -> tuple[Node, Node]:
    return make_pair(os.path.join(directory, f"pair{n}"))


def _acknowledge(c: Campaign, ingest: subprocess.Popen[bytes], path: str, acknowledged: list[str]) -> None:
    _out, err = ingest.communicate(timeout=600)
    text = err.decode(errors="replace")
    if ingest.returncode == 0 and "Traceback" not in text:
        acknowledged.append(path)
    elif "Traceback" in text or "hint: " not in text:
        c.find(f"an ingest into a pair whose process was killed failed without a clean error: {text.strip()[-300:]}")


def _service_kill(c: Campaign, a: Node, b: Node, rng: random.Random,
                  traffic: Callable[[Node], subprocess.Popen[bytes]], acknowledged: list[str],
                  inputs: list[tuple[Node, str]]) -> None:
    node = rng.choice((a, b))
    what = rng.choice(("serve", "mirror"))
    named = rng.random() < 0.5
    if named:
        point = rng.choice(POINTS[what])
        node.kill(what)
        node.start(what, env={ENV: f"{point}:{rng.randint(1, 3)}"})
    ingests = [traffic(a), traffic(b)]
    proc = node.procs[what]
    if named:  # the traffic in, then a little time for the heartbeats and the mirror to reach the point
        for ingest, (_node, path) in zip(ingests, inputs[-2:], strict=True):
            _acknowledge(c, ingest, path, acknowledged)
    try:
        proc.wait(timeout=DEATH_S if named else rng.uniform(0.05, 2.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        where = f"{node.name} {what} (random moment{', its point not reached' if named else ''})"
    else:
        where = f"{node.name} {what} at {point}" if named else f"{node.name} {what} (exited by itself)"
        if proc.returncode != -signal.SIGKILL:
            c.find(f"{node.name}'s {what} exited {proc.returncode} without being killed: "
                   f"{node.log(what)[-400:]}")
    c.runs += 1
    c.killed[where] += 1
    node.procs.pop(what, None)
    node.start(what)
    if not named:
        for ingest, (_node, path) in zip(ingests, inputs[-2:], strict=True):
            _acknowledge(c, ingest, path, acknowledged)


def _pairing_kill(c: Campaign, a: Node, b: Node, rng: random.Random) -> None:
    """shb, a new backup, is killed in its first serve: at a step of its pairing or snapshot load."""
    named = rng.random() < 0.7
    env = {ENV: rng.choice(PAIRING_POINTS)} if named else None
    b.start("serve", env=env, wait=False)
    b.start("mirror")
    proc = b.procs["serve"]
    try:
        proc.wait(timeout=DEATH_S * 6 if named else rng.uniform(0.2, 3.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        where = "new backup's serve, pairing (random moment)"
    else:
        where = f"new backup's serve at {env[ENV]}" if env else "new backup's serve (exited by itself)"
        if proc.returncode != -signal.SIGKILL:
            c.find(f"shb's serve exited {proc.returncode} during pairing without being killed: "
                   f"{b.log('serve')[-400:]}")
    c.runs += 1
    c.killed[where] += 1
    b.procs.pop("serve", None)
    b.start("serve")


def _converge(c: Campaign, a: Node, b: Node) -> bool:
    try:
        wait_converged(a, b, CONVERGE_S)
    except ChildRunError as e:
        c.find(f"the pair did not converge after a kill: {e.message[-600:]}")
        return False
    c.verified += 1
    return True


def check_mirror(find: Callable[[str], None], owner: Node, holder: Node) -> None:
    """``holder``'s mirror of ``owner``'s log holds its records byte for byte, nothing past its end."""
    try:
        own, copy = FileLog(log_dir(owner.home)), FileLog(mirror_dir(holder.home, owner.name))
    except DssyncError as e:
        find(f"cannot read {owner.name}'s log or {holder.name}'s mirror of it: {e.message}")
        return
    try:
        end, at = own.end_offset(), max(own.start_offset(), copy.start_offset())
        if copy.end_offset() > end:
            find(f"{holder.name}'s mirror of {owner.name}'s log ends at {copy.end_offset()}, past its end {end}")
        while at < min(end, copy.end_offset()):
            mine, theirs = own.read(at, 5000), copy.read(at, 5000)
            k = min(len(mine), len(theirs))
            if not k or [(r.offset, r.value) for r in mine[:k]] != [(r.offset, r.value) for r in theirs[:k]]:
                find(f"{holder.name}'s mirror of {owner.name}'s log diverged from it at or after offset {at}")
                return
            at = mine[k - 1].offset + 1
    finally:
        own.close()
        copy.close()


def _logs_clean(c: Campaign, nodes: tuple[Node, ...]) -> None:
    for node in nodes:
        for what in ("serve", "mirror"):
            if "Traceback" in node.log(what):
                c.find(f"{node.name}'s {what} wrote a traceback: {node.log(what)[-600:]}")
