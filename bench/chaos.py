"""``dssync chaos``: fault campaigns against real processes, with what they found.

``dssync chaos kill`` is the SIGKILL campaign. Each run starts a real ``dssync`` child on an
appliance home and kills it: at a named crash point inside a write path (``dssync.crashpoint``:
a torn log batch, a batch written before its fsync, the log durable before the store commit, a
torn pack write, segment bytes synced before the DuckDB transaction), on its N-th passage
there, or at a random moment; a run of ``replay`` now and then, killed at a random moment.
After every kill the home must verify (the store is the exact projection of what its log
kept); a run that was not killed must have succeeded, without a traceback. At the end the
traffic is sent again, as an operator would, and the campaign checks that nothing an ingest
reported as done was lost, that no segment was stored twice in the log, and that the store
holds exactly what a home that was never killed holds (one home per fsync policy: ``always``
keeps new segments in the log files, ``never`` writes them to packs). A third of the runs kill
a process of a running pair instead: its ``serve`` or ``mirror`` under traffic, or a new backup's
``serve`` during pairing activation or the load of the master's snapshot (``dssync.bench.pairkill``).
Given a Kafka broker (``--kafka``), some runs kill ``mirror-topic`` between two topics of it
instead (``dssync.bench.topickill``).

Findings are counted and the first ones quoted; the exit code is 1 if there is any. Runs and
their outcome (killed where, completed, verified) are in the ``--json`` report.

``dssync chaos corrupt`` is the corruption campaign (``dssync.bench.corrupt``); ``dssync chaos
power`` the power-cut campaign (``dssync.bench.power``); ``dssync chaos ioerror`` the I/O-error
campaign (``dssync.bench.ioerror``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import click

from dssync.bench import workload
from dssync.crashpoint import ENV
from dssync.errors import ChildRunError, UsageError
from dssync.layout import log_dir
from dssync.log.filelog import FileLog
from dssync.process import command
from dssync.schemas import decode
from dssync.tools import output
from dssync.tools.output import emit_json

POINTS = {
    "always": ("log.torn-write", "log.written", "ingest.log-durable", "store.staged"),
    "never": ("log.torn-write", "log.written", "ingest.log-durable", "store.staged", "packs.torn-write"),
}
"""The crash points an ingest passes, by the home's fsync policy (with fsync on, new segments
stay in the log files and no pack is written)."""
REPLAY_EVERY = 10
PAIR_SHARE = 3
"""One run in this many kills a process of a running pair (``dssync.bench.pairkill``)."""


@dataclass
class Campaign:
    runs: int = 0
    killed: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    verified: int = 0
    findings: list[str] = field(default_factory=list)

    def find(self, what: str) -> None:
        self.findings.append(what)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "killed": sum(self.killed.values()), "killed_at": dict(sorted(self.killed.items())),
                "completed": self.completed, "verified": self.verified, "findings": len(self.findings),
                "first_findings": self.findings[:10], "ok": not self.findings}


def _run(args: list[str], env: dict[str, str] | None = None, kill_after: float | None = None
         ) -> tuple[int, str]:
    """Run ``dssync ARGS``; SIGKILL it after ``kill_after`` seconds if given; (exit status, stderr)."""
    proc = subprocess.Popen(command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _out, err = proc.communicate(timeout=600)
    return proc.returncode, err.decode(errors="replace")


def _json(*args: str) -> tuple[int, dict[str, Any], str]:
    p = subprocess.run(command(*args), capture_output=True, text=True, timeout=600)
    try:
        doc = json.loads(p.stdout) if p.stdout.strip() else {}
    except ValueError:
        doc = {}
    return p.returncode, doc, p.stderr


def _init(home: str, name: str, fsync: str) -> None:
    p = subprocess.run(command("init", home, "--name", name, "--model", "SH-7080", "--version", "9.14",
                               "--fsync", fsync), capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise ChildRunError(f"dssync init {home} failed: {p.stderr.strip()}")


def _live(home: str) -> dict[str, int]:
    _code, doc, _err = _json("inspect", "store", home, "--refs", "100000000", "--json")
    return {r["ref"]: r["size"] for r in doc.get("refs", []) if r["live"] and r["level"] == 0}


def _stored_twice(home: str) -> int:
    counts: Counter[bytes] = Counter()
    log = FileLog(log_dir(home))
    for rec in log.read(log.start_offset(), 100_000_000):
        ev = decode(rec.value)
        if ev["type"] == "SegmentStored":
            counts[ev["ref"]] += 1
    return sum(1 for n in counts.values() if n > 1)


def _check_run(c: Campaign, what: str, code: int, err: str) -> bool:
    """Count a run's outcome; True if it was killed."""
    c.runs += 1
    if code == -signal.SIGKILL:
        return True
    if code != 0 or "Traceback" in err:
        c.find(f"{what} exited {code} without being killed: {err.strip()[-300:]}")
    else:
        c.completed += 1
    return False


def _verify(c: Campaign, home: str, after: str) -> None:
    code, doc, err = _json("verify", home, "--json")
    c.verified += 1
    if code != 0 or not doc.get("ok"):
        c.find(f"verify failed after {after}: {doc.get('problems') or err.strip()[-300:]}")


def kill_campaign(directory: str, runs: int, seed: int, size: int,
                  progress: Callable[[int], None] | None = None, kafka: str | None = None,
                  kafka_runs: int | None = None) -> Campaign:
    """The SIGKILL campaign of the module docstring, in ``directory``; with ``kafka`` (a
    bootstrap address), ``kafka_runs`` of the ``runs`` (a sixth by default) kill
    ``mirror-topic`` on that broker."""
    from dssync.bench.pairkill import pair_kills
    from dssync.bench.topickill import topic_kills

    rng = random.Random(seed)
    c = Campaign()
    topic_runs = 0 if kafka is None else min(runs, runs // 6 if kafka_runs is None else kafka_runs)
    if topic_runs:
        assert kafka is not None
        topic_kills(c, kafka, directory, topic_runs, rng, progress)
    runs -= topic_runs
    if runs == 0:
        return c
    pair_runs = runs // PAIR_SHARE
    runs -= pair_runs
    releases = workload.versions(seed, size, runs + 1, churn=0.5)  # each version edits half the last: new data
    inputs: dict[str, list[str]] = {"always": [], "never": []}
    homes = {}
    for fsync in ("always", "never"):
        clean, home = os.path.join(directory, f"clean-{fsync}"), os.path.join(directory, f"home-{fsync}")
        _init(clean, "clean", fsync)
        _init(home, "sh1", fsync)
        homes[fsync] = (clean, home)
    first = _write_input(directory, 0, next(releases))
    t0 = time.monotonic()
    code, err = _run(["ingest", homes["never"][0], first])
    one_run = time.monotonic() - t0  # a child's start-up plus one input
    if code != 0:
        raise ChildRunError(f"the campaign's first ingest failed: {err.strip()[-300:]}")
    inputs["never"].append(first)
    done: dict[str, set[str]] = {"always": set(), "never": set()}
    for i in range(runs):
        fsync = ("always", "never")[i % 2]
        _clean, home = homes[fsync]
        if i % REPLAY_EVERY == REPLAY_EVERY - 1 and inputs[fsync]:
            # a killed ingest can leave the store behind its log (verify says so, the next open
            # catches it up): 'recover' catches it up first, so the digest is the whole log's
            code, err = _run(["recover", home])
            if code != 0:
                c.find(f"recover failed on {home}: {err.strip()[-300:]}")
            before = _digest(home)
            code, err = _run(["replay", home], kill_after=rng.uniform(0.05, one_run * 3))
            if _check_run(c, "replay", code, err):
                c.killed["replay (random moment)"] += 1
            _verify(c, home, "a replay")
            if _digest(home) != before:
                c.find(f"a replay, killed or not, changed the store's digest of {home}")
        else:
            path = _write_input(directory, i + 1, next(releases))
            inputs[fsync].append(path)
            if rng.random() < 0.7:
                point = rng.choice(POINTS[fsync])
                code, err = _run(["ingest", home, path], env={ENV: f"{point}:{rng.randint(1, 2)}"})
                where = point
            else:
                code, err = _run(["ingest", home, path], kill_after=rng.uniform(0.05, one_run * 1.5))
                where = "ingest (random moment)"
            if _check_run(c, f"ingest at {where}", code, err):
                c.killed[where] += 1
            else:
                done[fsync].add(path)
            _verify(c, home, f"a kill at {where}")
        if progress is not None:
            progress(1)
    for fsync, (clean, home) in homes.items():
        for path in sorted(done[fsync]):  # acknowledged: every segment of it is there
            code, doc, err = _json("ingest", home, path, "--json")
            if code != 0 or doc.get("savings", 0) < 0.999:
                c.find(f"an ingest reported done lost data on {home} ({fsync}): {path} saves "
                       f"{doc.get('savings')} when sent again")
        for target in (clean, home):  # the clean home gets its traffic once; the other, again
            code, err = _run(["ingest", target, *inputs[fsync]])
            if code != 0:
                c.find(f"ingesting the campaign's traffic into {target} failed: {err.strip()[-300:]}")
        _verify(c, home, "the traffic sent again")
        if _live(home) != _live(clean):
            c.find(f"{home} ({fsync}) does not hold what a home never killed holds")
        twice = _stored_twice(home)
        if twice:
            c.find(f"{twice} segment(s) stored twice in the log of {home} ({fsync})")
    if pair_runs:
        pair_kills(c, directory, pair_runs, rng, seed + 1, size, progress)
    return c


def _write_input(directory: str, i: int, data: bytes) -> str:
    path = os.path.join(directory, f"input{i:05d}.tar")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _digest(home: str) -> str:
    _code, doc, _err = _json("inspect", "store", home, "--json")
    return str(doc.get("digest", ""))


class Findings(Protocol):
    """What a campaign reports: its findings, and everything as a JSON document."""

    findings: list[str]

    def as_dict(self) -> dict[str, Any]: ...


@click.group("chaos")
def chaos() -> None:
    """Fault campaigns against real processes, and what they found."""


@chaos.command("kill")
@click.option("--runs", type=click.IntRange(1, 100_000), default=500, show_default=True,
              help="Processes started and (most of them) killed.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--size", type=int, default=2_000_000, show_default=True, help="Bytes of each of the 4 inputs.")
@click.option("--kafka", metavar="BOOTSTRAP", help="A Kafka broker: some runs kill mirror-topic between two "
              "topics of it (its own, made for the campaign).")
@click.option("--kafka-runs", type=click.IntRange(0, 100_000),
              help="How many of the runs kill mirror-topic (default with --kafka: a sixth).")
@click.option("--json", "as_json", is_flag=True)
def kill_cmd(runs: int, seed: int, size: int, kafka: str | None, kafka_runs: int | None, as_json: bool) -> None:
    """SIGKILL at named crash points and random moments: ingest, replay, a pair's services,
    pairing, and mirror-topic on a Kafka broker.

    \b
    Example:
      dssync chaos kill --runs 500
      dssync chaos kill --runs 40 --json
      dssync chaos kill --runs 100 --kafka 127.0.0.1:9092 --kafka-runs 100
    """
    if kafka_runs is not None and kafka is None:
        raise UsageError("--kafka-runs needs --kafka", hint="give the broker: --kafka HOST:PORT")
    def summary(doc: dict[str, Any]) -> None:
        click.echo(f"runs {doc['runs']}: killed {doc['killed']}, completed {doc['completed']}; "
                   f"{doc['verified']} verifies")
        for where, n in doc["killed_at"].items():
            click.echo(f"  killed at {where}: {n}")

    _run_campaign("SIGKILL campaign", runs, as_json,
                  lambda d, advance: kill_campaign(d, runs, seed, size, advance, kafka, kafka_runs), summary)


def _run_campaign(title: str, runs: int, as_json: bool,
                  campaign: Callable[[str, Callable[[int], None]], Findings],
                  summary: Callable[[dict[str, Any]], None]) -> None:
    """Run a campaign in a temporary directory with a progress bar; print its report (``--json``
    or ``summary`` and the findings); exit 1 on any finding."""
    directory = tempfile.mkdtemp(prefix="dssync-chaos-")
    try:
        with output.progress(title, runs, enabled=not as_json) as advance:
            c = campaign(directory, advance)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    doc = c.as_dict()
    if as_json:
        emit_json(doc)
    else:
        summary(doc)
        click.echo(f"findings: {doc['findings']}")
        for f in doc["first_findings"]:
            click.echo(f"  {f}")
    if c.findings:
        raise SystemExit(1)


@chaos.command("corrupt")
@click.option("--runs", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Damaged copies of the template home (every file once, then at random).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--size", type=int, default=2_000_000, show_default=True, help="Bytes of each input.")
@click.option("--json", "as_json", is_flag=True)
def corrupt_cmd(runs: int, seed: int, size: int, as_json: bool) -> None:
    """Truncations, bit flips and zeroed ranges over every kind of file of a home, each checked.

    \b
    Example:
      dssync chaos corrupt --runs 1000
      dssync chaos corrupt --runs 60 --json
    """
    from dssync.bench.corrupt import corrupt_campaign

    def summary(doc: dict[str, Any]) -> None:
        click.echo(f"runs {doc['runs']}: {doc['records_checked']} records and {doc['refs_checked']} references "
                   "read back and checked")
        for title, key in (("damaged", "by_kind"), ("outcome", "outcomes"), ("remedy", "remedies")):
            for what, n in doc[key].items():
                click.echo(f"  {title}: {what}: {n}")

    _run_campaign("corruption campaign", runs, as_json,
                  lambda d, advance: corrupt_campaign(d, runs, seed, size, advance), summary)


@chaos.command("power")
@click.option("--runs", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Power cuts, each under a real ingest or replay.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--size", type=int, default=1_000_000, show_default=True, help="Bytes of each input.")
@click.option("--json", "as_json", is_flag=True)
def power_cmd(runs: int, seed: int, size: int, as_json: bool) -> None:
    """Power cuts on a FUSE file system that drops what was not fsynced, each checked.

    Needs FUSE (/dev/fuse, fusermount3) and root or FUSE rights.

    \b
    Example:
      dssync chaos power --runs 200
      dssync chaos power --runs 20 --json
    """
    from dssync.bench.power import power_campaign

    def summary(doc: dict[str, Any]) -> None:
        click.echo(f"runs {doc['runs']}: {doc['cuts']} power cuts, {doc['completed']} processes done before theirs; "
                   f"{doc['verified']} verifies; {doc['files_put_back']} files and {doc['bytes_put_back']} "
                   "bytes put back to their last fsync")
        for where, n in doc["cut_during"].items():
            click.echo(f"  cut during {where}: {n}")

    _run_campaign("power-cut campaign", runs, as_json,
                  lambda d, advance: power_campaign(d, runs, seed, size, advance), summary)


@chaos.command("ioerror")
@click.option("--runs", type=click.IntRange(1, 100_000), default=300, show_default=True,
              help="Faults armed, each under a real command.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--size", type=int, default=500_000, show_default=True, help="Bytes of each input.")
@click.option("--json", "as_json", is_flag=True)
def ioerror_cmd(runs: int, seed: int, size: int, as_json: bool) -> None:
    """ENOSPC, EIO and failed fsyncs at every write site (and failed reads), each checked.

    Needs FUSE (/dev/fuse, fusermount3) and root or FUSE rights.

    \b
    Example:
      dssync chaos ioerror --runs 300
      dssync chaos ioerror --runs 30 --json
    """
    from dssync.bench.ioerror import ioerror_campaign

    def summary(doc: dict[str, Any]) -> None:
        click.echo(f"runs {doc['runs']}: {doc['faults_fired']} faults fired, {doc['not_fired']} armed but not "
                   f"reached; {doc['power_cuts']} power cuts; {doc['verified']} verifies")
        for title, key in (("fired", "fired"), ("outcome", "outcomes"), ("command", "commands")):
            for what, n in doc[key].items():
                click.echo(f"  {title}: {what}: {n}")

    _run_campaign("I/O-error campaign", runs, as_json,
                  lambda d, advance: ioerror_campaign(d, runs, seed, size, advance), summary)
