"""``dssync verify``: prove that the log is intact and the store is exactly its projection.

Three checks, each independent of the others' success:

1. every batch of every log the store is built from (its own, the peer's mirrored log, a
   loaded snapshot) passes its CRC and every record decodes;
2. every live segment's bytes in the packs hash to its reference;
3. a fresh projection of those logs, each from where the store began reading it up to its
   committed offset (a scratch store built in a temporary directory), has the same digest as
   the store; if not, the references that differ are listed.

A store behind its log (a crash between append and apply) is not a problem: it is reported
as ``apply_lag`` and caught up the next time the home is opened. A committed offset beyond
the log's end is one: the store holds events the log lost.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from dssync import layout
from dssync.appliance import open_peer_log
from dssync.consumers.store import Store
from dssync.errors import DssyncError, LockedError, MismatchError
from dssync.layout import source_name
from dssync.log.base import LogRecord
from dssync.log.filelog import FileLog
from dssync.producers.hierarchy import segment_ref
from dssync.schemas import decode
from dssync.tools.control import ControlClient
from dssync.tools.output import emit_json
from dssync.tools.readers import open_config, open_log_reader, open_store_reader


@dataclass
class Report:
    log_batches: int = 0
    log_records: int = 0
    events: dict[str, int] = field(default_factory=dict)
    segments_checked: int = 0
    apply_lag: int = 0
    store_digest: str = ""
    projection_digest: str = ""
    problems: list[str] = field(default_factory=list)
    differing_refs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Report:
        return cls(**{k: v for k, v in doc.items() if k != "ok"})


def verify_home(home: str, max_diffs: int = 20) -> Report:
    """Verify a home: through its running service if there is one, else read-only."""
    service = ControlClient.for_home(home)
    if service is not None:
        return Report.from_dict(service.verify())
    store = open_store_reader(home)
    if store is None:
        raise LockedError(
            f"the store at {home} is open in another process",
            hint="stop that process (verify needs a consistent view of the store), then run verify again",
        )
    try:
        return verify_store(home, store, max_diffs)
    finally:
        store.close()


def verify_store(home: str, store: Store, max_diffs: int = 20) -> Report:
    """The checks of the module docstring on an open store (the caller keeps it still)."""
    cfg = open_config(home)
    log = open_log_reader(home)
    rep = Report()
    scratch = tempfile.mkdtemp(prefix="dssync-verify-")
    opened: list[Any] = []  # the peers' logs this opened
    try:
        projection = Store(scratch, create=True, fsync=False)
        own = source_name(cfg.name)
        sources = _sources(home, cfg, own, log, store, rep)
        opened.extend(slog for _, slog in sources[1:])
        retired = sum(_retired(slog) for _, slog in sources)
        for source, slog in sources:
            end = slog.end_offset()
            committed = store.committed(source) if not source.startswith("snapshot:") else end
            if source == own:
                rep.apply_lag = max(0, end - committed)
            if committed > end:
                rep.problems.append(f"{source}: store applied up to offset {committed} but the log ends at {end}")
            try:
                _project(slog, source, store.began(source), committed, projection, rep)
            except DssyncError as exc:
                rep.problems.append(f"{source}: {exc.message}")
        for ref, pack, pos, size in store.iter_live_segments():
            try:
                data = store.packs.read(pack, pos, size)
            except DssyncError as exc:
                rep.problems.append(f"segment {ref.hex()}: {exc.message}")
                continue
            rep.segments_checked += 1
            if segment_ref(data) != ref:
                rep.problems.append(f"segment {ref.hex()}: bytes in pack {pack} do not match the reference")
        mine, theirs = store.digest(), projection.digest()
        rep.store_digest, rep.projection_digest = mine.md5, theirs.md5
        if retired:
            # retention removed log segments the store was built from: no projection can prove it
            rep.events["note: segments removed by retention (store not comparable)"] = retired
        elif mine.md5 != theirs.md5:
            rep.problems.append(f"store digest {mine.md5} differs from the log's projection {theirs.md5}")
            rep.differing_refs = diff_rows(store, projection, max_diffs)
        projection.close()
    finally:
        for slog in opened:
            slog.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return rep


def _sources(home: str, cfg: Any, own: str, log: Any, store: Store, rep: Report) -> list[tuple[str, Any]]:
    """Every log the store is the projection of: its own, each loaded snapshot, and each
    peer's: a file mirror in HOME/mirror/, or with a Kafka transport the peer's log as the
    service reads it (``open_peer_log``), for each peer the store has applied records of (a
    peer log that cannot be opened is a problem of the report)."""
    out: list[tuple[str, Any]] = [(own, log)]
    kafka = cfg.sync.transport in ("kafka-shared", "kafka-sites")
    for peer, epoch, path in layout.applied_snapshots(home):  # (one still loading is not in the store yet)
        out.append((layout.snapshot_source(peer, epoch), FileLog(os.path.join(path, "log"))))
    if not kafka:  # (with kafka-sites, the site mirror's state lives in HOME/mirror/ too, but no log)
        out.extend((source_name(peer), FileLog(layout.mirror_dir(home, peer))) for peer in layout.mirrored_peers(home))
    if kafka:
        for source in sorted(store.offsets()):
            appliance = layout.source_appliance(source)
            if appliance is not None and source != own:
                try:
                    out.append((source, open_peer_log(home, cfg, appliance)))
                except DssyncError as exc:
                    rep.problems.append(f"{source}: {exc.message}")
    return out


def _retired(slog: Any) -> int:
    """How many pieces of ``slog`` retention removed: file segments, or 1 when a Kafka topic
    no longer starts at offset 0."""
    if isinstance(slog, FileLog):
        return len(slog.retired())
    return 1 if slog.start_offset() > 0 else 0


def _records(slog: Any, rep: Report) -> Iterator[list[LogRecord]]:
    """A log's records in chunks: batch by batch for the file log (counting batches), else
    by offset through the log interface (Kafka)."""
    if isinstance(slog, FileLog):
        for b in slog.batches(slog.start_offset()):
            rep.log_batches += 1
            yield [LogRecord(b.base_offset + k, b.timestamp_ms, v) for k, v in enumerate(b.values())]
        return
    pos, end = slog.start_offset(), slog.end_offset()
    while pos < end:
        chunk = slog.read(pos, 10_000)
        if not chunk:
            return
        rep.log_batches += 1
        yield chunk
        pos = chunk[-1].offset + 1


def _project(slog: Any, source: str, began: int, committed: int, projection: Store, rep: Report) -> None:
    """Check every record of ``slog``; apply those from ``began`` (where the store began
    reading it) to below ``committed`` to ``projection``."""
    pending: list[LogRecord] = []
    projection.advance(source, began)
    for chunk in _records(slog, rep):
        for rec in chunk:
            ev = decode(rec.value)
            rep.events[ev["type"]] = rep.events.get(ev["type"], 0) + 1
            rep.log_records += 1
            if began <= rec.offset < committed:  # the store is the projection of this range
                pending.append(rec)
        if len(pending) >= 50_000:
            projection.apply(source, pending)
            pending = []
    if pending:
        projection.apply(source, pending)


def diff_rows(a: Store, b: Store, limit: int) -> list[str]:
    """References whose rows differ between two stores (digest columns only), up to ``limit``."""
    def key(rows: list[Any]) -> dict[bytes, tuple[Any, ...]]:
        return {r[0]: (r[1], r[2], r[3], r[4], r[5], r[8]) for r in rows}
    ra, rb = key(a.rows()), key(b.rows())
    out = []
    for ref in sorted(set(ra) | set(rb)):
        if ra.get(ref) != rb.get(ref):
            where = "only in first" if ref not in rb else "only in second" if ref not in ra else "differs"
            out.append(f"{ref.hex()} ({where})")
            if len(out) >= limit:
                break
    return out


def _store_view(home: str) -> tuple[dict[str, Any], list[list[Any]] | None, Any]:
    """Digest of a home's store, from its running service or read-only; plus a rows getter."""
    open_config(home)
    service = ControlClient.for_home(home)
    if service is not None:
        return service.digest(), None, service.rows
    store = open_store_reader(home)
    if store is None:
        raise LockedError(f"the store at {home} is busy and no service answers for it", hint="retry in a moment")
    try:
        d = store.digest()
        rows = [[r[0].hex(), r[1], r[2], r[3], r[4], r[5], (r[8] or b"").hex()] for r in store.rows()]
    finally:
        store.close()
    return {"md5": d.md5, "rows": d.rows, "live_bytes": d.live_bytes}, rows, None


def compare_pair(home: str, peer_home: str, max_diffs: int = 20) -> dict[str, Any]:
    """Whether two appliances' stores are identical, and which references differ if not."""
    a, rows_a, get_a = _store_view(home)
    b, rows_b, get_b = _store_view(peer_home)
    doc: dict[str, Any] = {"identical": a["md5"] == b["md5"], "digests": [a["md5"], b["md5"]],
                           "rows": [a["rows"], b["rows"]], "differing_refs": []}
    if not doc["identical"]:
        ra = {r[0]: r[1:] for r in (rows_a if rows_a is not None else get_a())}
        rb = {r[0]: r[1:] for r in (rows_b if rows_b is not None else get_b())}
        for ref in sorted(set(ra) | set(rb)):
            if ra.get(ref) != rb.get(ref):
                where = "only in first" if ref not in rb else "only in second" if ref not in ra else "differs"
                doc["differing_refs"].append(f"{ref} ({where})")
                if len(doc["differing_refs"]) >= max_diffs:
                    break
    return doc


@click.command("verify")
@click.argument("home", type=click.Path(file_okay=False, path_type=str))
@click.argument("peer_home", required=False, type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(home: str, peer_home: str | None, as_json: bool) -> None:
    """Check log integrity, segment bytes, and that the store equals the log's projection;
    with PEER_HOME, check instead that the two appliances' stores are identical.

    Exits 0 when everything checks out, 9 with the differences otherwise.

    \b
    Example:
      dssync verify /var/lib/dssync/sh1
      dssync verify /var/lib/dssync/sh1 /var/lib/dssync/sh2
    """
    if peer_home is not None:
        pair = compare_pair(home, peer_home)
        if as_json:
            emit_json(pair)
        else:
            d, n = pair["digests"], pair["rows"]
            click.echo(f"digests {d[0]} / {d[1]} ({n[0]} / {n[1]} rows)")
            for r in pair["differing_refs"]:
                click.echo(f"  {r}")
            click.echo("stores identical" if pair["identical"] else "stores DIFFER")
        if not pair["identical"]:
            raise MismatchError(f"the stores of {home} and {peer_home} differ",
                                hint="let sync catch up (dssync status), then verify again")
        return
    rep = verify_home(home)
    if as_json:
        emit_json(rep.as_dict())
    else:
        click.echo(f"log: {rep.log_batches} batches, {rep.log_records} records ({rep.events})")
        click.echo(f"segments: {rep.segments_checked} checked against their references")
        if rep.apply_lag:
            click.echo(f"store is {rep.apply_lag} records behind the log (caught up when the home is next opened)")
        click.echo(f"store digest {rep.store_digest}; projection {rep.projection_digest}")
        for p in rep.problems:
            click.echo(f"problem: {p}")
        for r in rep.differing_refs:
            click.echo(f"  {r}")
        click.echo("verify: OK" if rep.ok else "verify: FAILED")
    if not rep.ok:
        raise MismatchError(f"verify found {len(rep.problems)} problem(s) in {home}",
                            hint=f"rebuild the store from the log with 'dssync replay {home}'")
