"""``dssync replay``: rebuild an appliance's store from the logs it is the projection of.

The logs are those ``dssync verify`` projects (``dssync.appliance.verify``): the appliance's
own log, then each snapshot of the peer's store it loaded, then (file transport) the peer's log
as mirrored here, from where the mirror began it. Applying is order-independent, so the new
store is the one the service built by interleaving them. On a Kafka transport the peer's topic
is not replayed here: the service reads it again from its start when it next runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from dssync import config as cfgmod
from dssync import layout
from dssync.appliance.home import finish_interrupted_replay, open_store
from dssync.consumers.consumer import replay as replay_log
from dssync.consumers.quarantine import Quarantine
from dssync.consumers.store import Store
from dssync.errors import UsageError
from dssync.layout import source_name, store_dir
from dssync.log.factory import open_log
from dssync.log.filelog import FileLog
from dssync.sync.repair import after_cut


def replay(home: str, from_offset: int | None = None,
           progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None) -> int:
    """Rebuild the store of ``home`` from its logs (module docstring) into a new directory,
    then swap it in; ``from_offset`` is where its own log is replayed from.

    The old store is never opened: whatever state it is in (a pack cut short, a DuckDB file
    that does not open, rows the log no longer holds), replay is the remedy the errors name.
    The log's writer lock keeps every other process out of the home meanwhile. ``total`` is
    told the number of records to replay before the first one; returns the records applied.
    Raises ``UsageError`` for a ``from_offset`` outside the log.
    """
    cfg = cfgmod.load(home)
    finish_interrupted_replay(home)
    log = open_log(home, cfg)
    peers: list[_PeerSource] = []
    try:
        if isinstance(log, FileLog) and log.recovery is not None and log.recovery.bytes_cut:
            after_cut(cfg, log)  # what the peer holds beyond the cut is the log's: taken back first
        first, end = log.start_offset(), log.end_offset()
        # a backup's Kafka topic keeps the records it wrote before pairing: not its store's
        start = max(first, cfg.sync.own_log_from) if from_offset is None else from_offset
        if not first <= start <= end:
            raise UsageError(f"--from-offset {start} is outside the log ({first}..{end})",
                             hint=f"see the range with 'dssync inspect log {home}'")
        peers = _peer_sources(home, cfg)
        if total is not None:
            total(end - start + sum(max(0, p.log.end_offset() - max(p.start, p.log.start_offset())) for p in peers))
        target = store_dir(home) + ".replay"
        shutil.rmtree(target, ignore_errors=True)
        fresh = open_store(target, cfg, create=True)
        try:
            applied = replay_log(log, fresh, source_name(cfg.name), start, progress)
            for p in peers:
                applied += _replay_peer(home, p, fresh, progress)
            fresh.rewrite_file()  # full row groups: no seconds-long checkpoints later (Store.rewrite_file)
        except BaseException:
            fresh.close()
            shutil.rmtree(target, ignore_errors=True)
            raise
        fresh.close()
        old = store_dir(home) + ".old"
        if os.path.exists(store_dir(home)):
            os.rename(store_dir(home), old)
        os.rename(target, store_dir(home))
        shutil.rmtree(old, ignore_errors=True)
    finally:
        log.close()
        for p in peers:
            p.log.close()
    return applied


@dataclass
class _PeerSource:
    source: str
    log: FileLog
    start: int
    """Where the store begins reading the log."""
    then: tuple[str, int] | None = None
    """For a snapshot: the peer's log source and the offset it is read on from, once loaded."""


def _peer_sources(home: str, cfg: cfgmod.Config) -> list[_PeerSource]:
    """The peer's logs the store was built from, in the order of the module docstring."""
    out = []
    for peer, epoch, path in layout.applied_snapshots(home):
        meta = layout.read_json(os.path.join(path, "snapshot.json"))  # (kept by the file mirror only)
        then = (source_name(peer), int(meta["covers_to"])) if "covers_to" in meta else None
        out.append(_PeerSource(layout.snapshot_source(peer, epoch), FileLog(os.path.join(path, "log")), 0, then))
    if cfg.sync.transport == "http":
        for peer in layout.mirrored_peers(home):
            began = layout.read_json(os.path.join(layout.mirror_dir(home, peer), layout.START_FILE)).get("advance_to")
            if began is not None:  # (a mirror log still being created holds nothing applied)
                out.append(_PeerSource(source_name(peer), FileLog(layout.mirror_dir(home, peer)), int(began)))
    return out


def _replay_peer(home: str, p: _PeerSource, store: Store, progress: Callable[[int], None] | None) -> int:
    """Apply one of the peer's logs to ``store`` as the service did: records the service set
    aside (quarantine) are skipped, a loaded snapshot's source is dropped once applied."""
    store.advance(p.source, p.start)
    aside = Quarantine(home).offsets(p.source)
    if not aside:
        applied = replay_log(p.log, store, p.source, max(p.start, p.log.start_offset()), progress)
    else:
        applied = 0
        at, end = max(p.start, p.log.start_offset()), p.log.end_offset()
        while at < end:
            chunk = p.log.read(at, 10_000)
            if not chunk:
                break
            kept = [r for r in chunk if r.offset not in aside]
            if kept:
                applied += store.apply(p.source, kept).applied
            at = chunk[-1].offset + 1
            store.advance(p.source, at)  # past a quarantined record at the end too
            if progress is not None:
                progress(len(chunk))
    if p.then is not None:
        store.advance(*p.then)
        store.forget(p.source)
    return applied
