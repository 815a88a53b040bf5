"""``dssync chaos corrupt``: the corruption campaign, truncations and bit flips over every kind of file.

A template appliance home is made once, with every kind of file an appliance keeps: its own
log (several segments, so that damage can fall in the middle of the log), the log's indexes
and markers, packs of segment bytes, the DuckDB store, the configuration, and the mirror of a
paired peer's log with its state. Each run copies the template, damages one file (truncated at
a random length, one to eight bits flipped, or a range overwritten with zeros), and then acts
as an operator would:

1. ``dssync verify HOME``: it passes, or it fails with one ``error:`` line and one ``hint:`` line,
   a non-zero exit code and no traceback;
2. nothing corrupt is returned: every record the log and the mirror log give back (through
   ``FileLog``, as the service and the tools read them) is byte for byte the record the
   template holds at that offset, and every reference ``dssync inspect store`` lists is one the
   template's store holds, with the same size and level;
3. if verify failed, the hint's remedy (the ``dssync`` command it quotes, on this home) is run,
   and that command's own hint if it fails with one, and verify must then pass; a hint that
   names no command is a manual remedy: the damaged file is restored from the template, as an
   operator restores it from a backup. The peer runs throughout (its service, on a copy of the
   template's peer home), so a remedy can take back from it what damage cut from a log;
4. nothing is lost: once verify passes, the store holds every reference the template holds;
5. damage to what only the service reads (the configuration, the TLS key and certificate):
   ``dssync serve`` refuses with one clean error, or starts and stops cleanly;
6. every fifth run, the home then takes new traffic (``dssync ingest``) and verifies again.

A finding is a traceback, an error without a hint, a record or reference returned that the
template does not hold, a reference of the template lost, a remedy that fails or leaves verify
failing, or new traffic refused.
Findings are counted and the first ones quoted; the exit code is 1 if there is any.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dssync.bench import workload
from dssync.bench.localpair import Node, make_pair, wait_converged
from dssync.errors import ChildRunError, DssyncError
from dssync.layout import log_dir, mirror_dir
from dssync.log.filelog import FileLog
from dssync.process import command

DAMAGES = ("truncate", "flip", "zero")
INGEST_EVERY = 5
MAX_REMEDIES = 3
SERVED_KINDS = ("config", "TLS key or certificate")
SERVE_START_S = 15.0
REMEDY = re.compile(r"'dssync ([^']+)'")


@dataclass
class Corruption:
    runs: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    remedies: Counter[str] = field(default_factory=Counter)
    records_checked: int = 0
    refs_checked: int = 0
    findings: list[str] = field(default_factory=list)

    def find(self, what: str) -> None:
        self.findings.append(what)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "by_kind": dict(sorted(self.by_kind.items())),
                "outcomes": dict(sorted(self.outcomes.items())), "remedies": dict(sorted(self.remedies.items())),
                "records_checked": self.records_checked, "refs_checked": self.refs_checked,
                "findings": len(self.findings), "first_findings": self.findings[:10], "ok": not self.findings}


def kind_of(rel: str, last_segment: dict[str, str]) -> str | None:
    """The kind of file at ``rel`` (relative to the home), or None for files out of scope
    (the running service's files under ``run/``, whose writer is gone)."""
    top = rel.split(os.sep)[0]
    name = os.path.basename(rel)
    if top == "run" or name.endswith(".lock"):
        return None
    if rel == "dssync.toml":
        return "config"
    if top in ("log", "mirror"):
        where = "log" if top == "log" else "mirror log"
        if name.endswith(".log"):
            return f"{where} segment ({'last' if last_segment.get(os.path.dirname(rel)) == name else 'mid-log'})"
        if name.endswith(".index"):
            return f"{where} index"
        return f"{where} metadata ({name})"
    if top == "tls":
        return "TLS key or certificate"
    if "pack" in rel:
        return "pack"
    if name.endswith((".duckdb", ".wal")) or "store" in rel:
        return "store"
    return f"other ({rel})"


def _files(home: str) -> dict[str, str]:
    """The template's files by relative path -> kind."""
    last: dict[str, str] = {}
    for root, _dirs, names in os.walk(home):
        segs = sorted(n for n in names if n.endswith(".log"))
        if segs:
            last[os.path.relpath(root, home)] = segs[-1]
    out = {}
    for root, _dirs, names in os.walk(home):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), home)
            kind = kind_of(rel, last)
            if kind is not None and os.path.getsize(os.path.join(home, rel)) > 0:
                out[rel] = kind
    return out


def damage(path: str, how: str, rng: random.Random) -> str:
    """Damage the file at ``path``; a description of what was done."""
    size = os.path.getsize(path)
    if how == "truncate":
        at = rng.randrange(size)
        os.truncate(path, at)
        return f"truncated to {at} of {size} bytes"
    with open(path, "r+b") as f:
        if how == "flip":
            bits = sorted(rng.randrange(size * 8) for _ in range(rng.randint(1, 8)))
            for bit in bits:
                f.seek(bit // 8)
                byte = f.read(1)[0]
                f.seek(bit // 8)
                f.write(bytes([byte ^ (1 << (bit % 8))]))
            return f"{len(bits)} bit(s) flipped at bytes {sorted({b // 8 for b in bits})}"
        start = rng.randrange(size)
        length = min(size - start, rng.randint(1, 4096))
        f.seek(start)
        f.write(bytes(length))
        return f"{length} bytes zeroed at {start} of {size}"


def _run(*args: str) -> tuple[int, str, str]:
    p = subprocess.run(command(*args), capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def _clean_error(code: int, err: str) -> str | None:
    """Why a failed command's stderr is not one clear error with its hint (None if it is)."""
    if "Traceback" in err:
        return f"a traceback (exit {code}): {err.strip()[-400:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    hints = [ln for ln in lines if ln.startswith("hint: ")]
    if len(errors) != 1 or len(hints) != 1:
        return f"exit {code} without one error and one hint: {err.strip()[-400:]}"
    return None


def _records(directory: str) -> dict[int, bytes] | None:
    """Every record the log at ``directory`` gives back, by offset (None: no log there, or it
    refused to read with a dssync error, which is allowed)."""
    if not os.path.isdir(directory):
        return None
    try:
        log = FileLog(directory)
        out: dict[int, bytes] = {}
        offset = log.start_offset()
        while True:
            got = log.read(offset, 10_000)
            if not got:
                return out
            for r in got:
                out[r.offset] = r.value
            offset = got[-1].offset + 1
    except DssyncError:
        return None


def _refs(home: str) -> dict[str, tuple[int, int, bool]] | None:
    p = subprocess.run(command("inspect", "store", home, "--refs", "100000000", "--json"), capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        return None
    return {r["ref"]: (r["size"], r["level"], r["live"]) for r in json.loads(p.stdout).get("refs", [])}


@dataclass
class Template:
    home: str
    peer_home: str
    files: dict[str, str]
    records: dict[str, dict[int, bytes]]
    refs: dict[str, tuple[int, int, bool]]
    inputs: list[str]


def make_template(directory: str, seed: int, size: int) -> Template:
    """A master home holding every kind of file (module docstring), its peer's traffic mirrored."""
    small = ("--segment-bytes", "65536")  # several segments: damage can fall mid-log
    a, b = make_pair(os.path.join(directory, "pair"), fsync="never", extra_a=small, extra_b=small)
    releases = workload.versions(seed, size, 5, churn=0.5)
    paths = []
    for i, data in enumerate(releases):
        path = os.path.join(directory, f"input{i}.tar")
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    try:
        for n in (a, b):
            n.start_all()
        wait_converged(a, b)
        a.ingest(paths[0])
        b.ingest(paths[1], paths[2])
        wait_converged(a, b, timeout=300)
    finally:
        a.stop_all()
        b.stop_all()
    for n in (a, b):
        shutil.rmtree(os.path.join(n.home, "run"), ignore_errors=True)
    records = {}
    for key, d in (("log", log_dir(a.home)), ("mirror", mirror_dir(a.home, b.name))):
        got = _records(d)
        if not got:
            raise ChildRunError(f"the campaign's template has no readable {key} at {d}")
        records[key] = got
    refs = _refs(a.home)
    if not refs:
        raise ChildRunError(f"the campaign's template store at {a.home} cannot be listed")
    return Template(a.home, b.home, _files(a.home), records, refs, paths[3:])


def _check_returned(c: Corruption, t: Template, home: str, peer: str, what: str) -> None:
    """Finding if a log, the mirror log or the store gives back anything the template does not hold."""
    for key, d in (("log", log_dir(home)), ("mirror", mirror_dir(home, peer))):
        try:
            got = _records(d)
        except Exception as exc:  # anything but a dssync error is a traceback for a tool
            c.find(f"{what}: reading the {key} raised {type(exc).__name__}: {exc}")
            continue
        known = max(t.records[key])
        for off, value in (got or {}).items():
            if key == "mirror" and off > known:
                continue  # the peer's traffic since (its heartbeats), copied again by a remedy
            c.records_checked += 1
            if t.records[key].get(off) != value:
                c.find(f"{what}: the {key} returned a record at offset {off} the template does not hold")
                break
    refs = _refs(home)
    for ref, row in (refs or {}).items():
        c.refs_checked += 1
        if t.refs.get(ref) is None or t.refs[ref][:2] != row[:2]:
            c.find(f"{what}: the store listed {ref} {row}, the template {t.refs.get(ref)}")
            break


def _check_kept(c: Corruption, t: Template, home: str, what: str) -> None:
    """Finding if the store, verified, lacks a reference the template holds."""
    refs = _refs(home) or {}
    lost = sorted(set(t.refs) - set(refs))
    if lost:
        c.find(f"{what}: {len(lost)} reference(s) of the template lost, e.g. {lost[0]}")


def _serve_check(home: str) -> str | None:
    """Start ``dssync serve`` on the home: it must refuse with one clean error, or start and stop
    cleanly on SIGTERM. Why not (None if it did)."""
    proc = subprocess.Popen(command("serve", home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = os.path.join(home, "run", "serve.json")
    deadline = time.monotonic() + SERVE_START_S
    while proc.poll() is None and time.monotonic() < deadline and not os.path.exists(started):
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "serve did not stop within 60 s of SIGTERM"
    if proc.returncode == 0:
        return f"a traceback: {err.strip()[-400:]}" if "Traceback" in err else None
    return _clean_error(proc.returncode, err) or None


def _verify(home: str) -> tuple[bool, str, int]:
    code, _out, err = _run("verify", home, "--json")
    return code == 0, err, code


def _remedy(c: Corruption, t: Template, home: str, rel: str, what: str, err: str) -> tuple[bool, str, int]:
    """Follow the hints, as an operator would: run the ``dssync`` command a hint quotes (on this
    home), and if that command fails with an error of its own, the one its hint quotes, up to
    ``MAX_REMEDIES`` commands; a hint without a command: the file restored from the template.
    Then verify: (ok, stderr, exit code)."""
    steps = []
    for _ in range(MAX_REMEDIES):
        hint = next((ln for ln in err.splitlines() if ln.startswith("hint: ")), "")
        m = REMEDY.search(hint)
        if m is None:
            steps.append("restore the file")
            shutil.copy2(os.path.join(t.home, rel), os.path.join(home, rel))
            break
        args = m.group(1).replace("HOME", home).split()
        steps.append(f"dssync {args[0]}")
        code, _out, err = _run(*args)
        if code == 0:
            break
        bad = _clean_error(code, err)
        if bad:
            c.find(f"{what}: the remedy 'dssync {' '.join(args)}': {bad}")
            break
    c.remedies[" -> ".join(steps)] += 1
    return _verify(home)


def corrupt_campaign(directory: str, runs: int, seed: int, size: int,
                     progress: Callable[[int], None] | None = None) -> Corruption:
    """The corruption campaign of the module docstring, in ``directory``."""
    rng = random.Random(seed)
    t = make_template(os.path.join(directory, "template"), seed, size)
    peer = Node("shb", os.path.join(directory, "peer"), 0, os.path.join(directory, "template", "pair", "logs"))
    shutil.copytree(t.peer_home, peer.home)
    peer.start("serve")  # what a remedy takes back from
    try:
        return _runs(t, directory, runs, rng, peer.name, progress)
    finally:
        peer.stop_all()


def _runs(t: Template, directory: str, runs: int, rng: random.Random, peer: str,
          progress: Callable[[int], None] | None) -> Corruption:
    c = Corruption()
    files = sorted(t.files)
    for i in range(runs):
        rel = files[i % len(files)] if i < len(files) else rng.choice(files)  # every file once, then at random
        kind = t.files[rel]
        how = DAMAGES[i % len(DAMAGES)]
        home = os.path.join(directory, "run")
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(t.home, home)
        done = damage(os.path.join(home, rel), how, rng)
        what = f"{kind} {rel} {done}"
        c.runs += 1
        c.by_kind[kind] += 1
        ok, err, code = _verify(home)
        if not ok:
            bad = _clean_error(code, err)
            if bad:
                c.find(f"{what}: verify: {bad}")
        if kind in SERVED_KINDS:  # files only the service reads
            bad = _serve_check(home)
            c.outcomes["serve started and stopped, or refused cleanly"] += bad is None
            if bad:
                c.find(f"{what}: serve: {bad}")
            shutil.rmtree(os.path.join(home, "run"), ignore_errors=True)
        _check_returned(c, t, home, peer, what)
        if ok:
            c.outcomes["verify passed (damage not read or repaired)"] += 1
        else:
            c.outcomes["verify refused with an error and a hint"] += 1
            ok, err, code = _remedy(c, t, home, rel, what, err)
            if not ok:
                c.find(f"{what}: verify still fails after the remedy ({code}): {err.strip()[-300:]}")
            _check_returned(c, t, home, peer, f"{what}, remedied")
        if ok:
            _check_kept(c, t, home, what)
        if ok and i % INGEST_EVERY == 0:
            icode, _out, ierr = _run("ingest", home, t.inputs[i % len(t.inputs)])
            vok, verr, _ = _verify(home)
            if icode != 0 or not vok:
                c.find(f"{what}: new traffic after it: ingest {icode}, verify {vok}: {(ierr or verr).strip()[-300:]}")
        if progress is not None:
            progress(1)
    return c
