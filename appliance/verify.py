"""Verifying a store: the log is intact and the store is exactly its projection.

The checks, each independent of the others' success:

1. every batch of every log the store is built from (its own, the peer's mirrored log, a
   loaded snapshot) passes its CRC and every record decodes;
2. every live segment's bytes in the packs hash to its reference, and every live higher
   reference's children to it;
3. a fresh projection of those logs, each from where the store began reading it up to its
   committed offset (a scratch store built in a temporary directory), has the same digest as
   the store's rows; if not, the references that differ are listed. The digest the store keeps
   as it commits (``dssync.consumers.digest``) must equal its rows' too.

A store behind its log (a crash between append and apply) is not a problem: it is reported
as ``apply_lag`` and caught up the next time the home is opened. A committed offset beyond
the log's end is one: the store holds events the log lost. ``dssync verify`` runs it on a
store it opens read-only, or asks the running service to run it on the store it owns.

Each report names the remedy for what it found (``remedy``), in this order: damage in a log
(its CRC or format), or a file log that ends before what the store applied of it (torn, cut,
or a mirror not yet copied again), goes to ``recover``, which cuts the damage and takes back
from the peer what it holds; anything else, a store that is not its logs' projection, is
rebuilt by ``replay``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dssync import config as cfgmod
from dssync import layout
from dssync.consumers.quarantine import Quarantine
from dssync.consumers.store import Store
from dssync.errors import CorruptLogError, DssyncError
from dssync.layout import source_name
from dssync.log.base import LogReader, LogRecord, SegmentedLog
from dssync.log.factory import open_log_reader, open_peer_log
from dssync.log.filelog import FileLog
from dssync.producers.hierarchy import group_ref, segment_ref
from dssync.schemas import REF_SIZE, decode


@dataclass
class Report:
    log_batches: int = 0
    log_records: int = 0
    events: dict[str, int] = field(default_factory=dict)
    segments_checked: int = 0
    groups_checked: int = 0
    apply_lag: int = 0
    store_digest: str = ""
    projection_digest: str = ""
    problems: list[str] = field(default_factory=list)
    differing_refs: list[str] = field(default_factory=list)
    remedy: str = ""
    """The command that repairs what was found (module docstring): recover, replay, or ''."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Report:
        return cls(**{k: v for k, v in doc.items() if k != "ok"})


def verify_store(home: str, store: Store, max_diffs: int = 20) -> Report:
    """The checks of the module docstring on an open store (the caller keeps it still)."""
    cfg = cfgmod.load(home)
    log = open_log_reader(home, cfg)
    rep = Report()
    scratch = tempfile.mkdtemp(prefix="dssync-verify-")
    opened: list[LogReader] = []  # the peers' logs this opened
    try:
        projection = Store(scratch, create=True, fsync=False, memory_limit=cfg.store.memory_limit)
        own = source_name(cfg.name)
        sources = _sources(home, cfg, own, log, store, rep)
        opened.extend(slog for _, slog in sources[1:])
        retired = sum(_retired(slog) for _, slog in sources)
        mirrors = {source_name(p) for p in layout.mirrored_peers(home)} if cfg.sync.transport == "http" else set()
        damaged = behind = False
        for source, slog in sources:
            end = slog.end_offset()
            committed = store.committed(source) if not source.startswith("snapshot:") else end
            if source == own:
                rep.apply_lag = max(0, end - committed)
            if committed > end and source in mirrors:
                behind = True
                rep.problems.append(f"{source}: the store applied up to offset {committed} but the mirror of that "
                                    f"log ends at {end}: offsets {end}..{committed - 1} are to be copied again")
            elif committed > end:
                # a file log cut or torn under the store: recover takes back what the peer holds
                behind = behind or (source == own and cfg.log.backend == "file")
                rep.problems.append(f"{source}: store applied up to offset {committed} but the log ends at {end}")
            try:
                _project(slog, source, store.began(source), min(committed, end), projection, rep,
                         Quarantine(home).offsets(source))
            except CorruptLogError as exc:
                damaged = damaged or not source.startswith("snapshot:")
                rep.problems.append(f"{source}: {exc.message}")
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
        for ref, level, children in store.iter_live_groups():
            rep.groups_checked += 1
            kids = [children[k:k + REF_SIZE] for k in range(0, len(children), REF_SIZE)]
            if len(children) % REF_SIZE or group_ref(level, kids) != ref:
                rep.problems.append(f"reference {ref.hex()}: its children do not match it")
        mine, kept, theirs = store.digest_of_rows(), store.kept_digest(), projection.digest()
        rep.store_digest, rep.projection_digest = mine.value, theirs.value
        if kept is not None and kept != mine:
            rep.problems.append(f"the store's kept digest {kept.value} ({kept.rows} rows) differs from its rows' "
                                f"{mine.value} ({mine.rows} rows)")
        if retired:
            # retention removed log segments the store was built from: no projection can prove it
            rep.events["note: segments removed by retention (store not comparable)"] = retired
        elif damaged or behind:
            # the projection stops at the damage, or lacks what the mirror is to copy again:
            # the store is compared once recover has repaired the logs
            rep.events["note: a log is damaged or behind the store (store not comparable)"] = 1
        elif mine.value != theirs.value:
            rep.problems.append(f"store digest {mine.value} differs from the log's projection {theirs.value}")
            rep.differing_refs = diff_rows(store, projection, max_diffs)
        projection.close()
        rep.remedy = "recover" if damaged or behind else "replay" if rep.problems else ""
    finally:
        for slog in opened:
            slog.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return rep


def _sources(home: str, cfg: cfgmod.Config, own: str, log: LogReader, store: Store,
             rep: Report) -> list[tuple[str, LogReader]]:
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


def _retired(slog: LogReader) -> int:
    """How many pieces of ``slog`` retention removed: file segments, or 1 when a Kafka topic
    no longer starts at offset 0."""
    if isinstance(slog, SegmentedLog):
        return len(slog.retired())
    return 1 if slog.start_offset() > 0 else 0


def _records(slog: LogReader, rep: Report) -> Iterator[list[LogRecord]]:
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


def _project(slog: LogReader, source: str, began: int, committed: int, projection: Store, rep: Report,
             aside: set[int]) -> None:
    """Check every record of ``slog``; apply those from ``began`` (where the store began
    reading it) to below ``committed`` to ``projection``, except those the service set aside
    (``aside``: offsets in quarantine, counted as such)."""
    pending: list[LogRecord] = []
    projection.advance(source, began)
    for chunk in _records(slog, rep):
        for rec in chunk:
            if rec.offset in aside:
                rep.events["quarantined"] = rep.events.get("quarantined", 0) + 1
                continue
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


