"""Loading a snapshot of the peer's store: the one place that does it.

A snapshot is the peer's store written as the events that produced it (``dssync.sync.snapshot``),
in a file log. Loading it is an ordinary, order-independent replay under a source of its own
(``snapshot:<peer>@<label>``), followed by moving the peer's log source to the offset the
snapshot covers, so the peer's log is read on from there. Three moments load one: a backup's
pairing on a Kafka transport (fetched here), a retention gap on ``kafka-sites`` (fetched here),
and any snapshot the file mirror downloaded into ``HOME/mirror/<peer>.snapshot/``.

Every loaded snapshot is kept (the newest per peer, ``layout.replace_applied_snapshot``):
``dssync verify`` rebuilds the store's projection from it and the peer's log after it. A load
killed half-way is repeated from the start: applying a snapshot twice changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable

from dssync import config as cfgmod
from dssync import crashpoint, layout
from dssync.consumers.consumer import Consumer
from dssync.consumers.store import Store
from dssync.fairlock import FairLock
from dssync.log.filelog import FileLog
from dssync.sync import protocol, snapshot

log = logging.getLogger("dssync.service")


def load(store: Store, lock: FairLock | None, directory: str, peer: str, label: str, covers_to: int,
         stopped: Callable[[], bool] = lambda: False,
         progress: Callable[[int], None] = lambda applied: None) -> int | None:
    """Apply the snapshot log at ``directory`` to ``store``, a transaction at a time under
    ``lock`` (traffic interleaves), then read ``peer``'s log on from ``covers_to``; keep the
    snapshot. Returns the records applied, or None when stopped before the end (nothing moved:
    the next load starts again). ``progress`` is told the records applied so far after each
    step (the lag monitor's sign that a long load moves)."""
    guard = lock if lock is not None else contextlib.nullcontext()
    source = layout.snapshot_source(peer, label)
    reader = FileLog(directory)
    try:
        consumer = Consumer(reader, store, source, batch_records=5_000, check_refs=True)
        applied = 0
        while True:
            if stopped():
                return None
            with guard:
                r = consumer.step()
            if not r.applied:
                break
            applied += r.applied
            progress(applied)
            crashpoint.reached("snapshot.step-applied")
    finally:
        reader.close()
    with guard:
        if store.committed(layout.source_name(peer)) > covers_to:
            # the peer's log was made anew, shorter (its recover rebuilt its store from a
            # snapshot of ours): its offsets from here on are new events, read from the start
            store.forget(layout.source_name(peer))
        store.advance(layout.source_name(peer), covers_to)
        crashpoint.reached("snapshot.peer-advanced")
        store.forget(source)
    # No rewrite of the table at the end (a replay's ends with one, Store.rewrite_file): these
    # commits of 5,000 records go through DuckDB's write-ahead log and its checkpoints fill the
    # row groups, so a later checkpoint stays short (8 M rows loaded so: 3-4 ms after a small
    # apply), while a rewrite under the lock would stop traffic for a minute at 64 M rows.
    return applied


def keep(home: str, peer: str, directory: str, label: str, log_inside: bool) -> None:
    """Keep a loaded snapshot of ``peer`` (the newest only): ``directory`` is the snapshot's
    log itself, or (``log_inside``) a folder holding it as ``log/`` beside its metadata."""
    kept = layout.replace_applied_snapshot(home, peer, label)
    if log_inside:
        os.rename(directory, kept)
        return
    os.makedirs(kept)
    os.rename(directory, os.path.join(kept, "log"))


def fetch_and_load(home: str, store: Store, lock: FairLock | None, sync_cfg: cfgmod.SyncConfig,
                   me: protocol.Identity, peer: str, label: str) -> tuple[int, int]:
    """Download ``peer``'s snapshot over the sync interface (no lock held: traffic goes on),
    load it and keep it; return (events loaded, the offset of ``peer``'s log read on from)."""
    directory = os.path.join(layout.run_dir(home), f"snapshot-{peer}")
    shutil.rmtree(directory, ignore_errors=True)
    client = protocol.PeerClient(sync_cfg, me)
    try:
        covers_to, events, _store_id = snapshot.download(client, directory)
    finally:
        client.close()
    load(store, lock, directory, peer, label, covers_to)
    keep(home, peer, directory, label, log_inside=False)
    return events, covers_to


def load_mirrored(home: str, store: Store, lock: FairLock, peer: str, stopped: Callable[[], bool],
                  progress: Callable[[int], None] = lambda applied: None) -> int:
    """Load the snapshot the file mirror downloaded for ``peer``, once it has fully arrived
    (its ``snapshot.json`` is written last); return the records applied (0 if not there yet)."""
    path = layout.snapshot_dir(home, peer)
    meta_path = os.path.join(path, "snapshot.json")
    if not os.path.exists(meta_path):
        return 0  # still arriving
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    applied = load(store, lock, os.path.join(path, "log"), meta["peer"], str(meta["epoch"]),
                   int(meta["covers_to"]), stopped, progress)
    if applied is None:
        return 0
    crashpoint.reached("snapshot.loaded")
    keep(home, meta["peer"], path, str(meta["epoch"]), log_inside=True)
    log.info("loaded snapshot of %s (%d events), continuing its log at offset %s",
             meta["peer"], applied, meta["covers_to"])
    return applied
