"""``dssync recover``: check every batch of a home's logs, cut damage, take back from the peer.

Every command that writes cuts what a crash tore at the end of the own log, without reading
the rest; recover reads all of it, and the mirror of the peer's log too:

1. the own log is checked batch by batch and cut at the first damaged batch (the segments
   after it go: their offsets no longer follow). A paired appliance on the http transport
   takes back from its peer's mirror what followed the cut (``sync.repair``);
2. each mirror of a peer's log is checked and cut the same way;
3. the appliance is opened: the store catches up with its own log. A store that applied more
   of the own log than it holds after all this cannot go on (new events would take offsets it
   counts as applied): a paired one is rebuilt from what its logs hold (``replay``) and given
   back the rest as a snapshot of the peer's store, which holds everything the peer applied
   of this appliance's log (how a backup starts at pairing); the peer then finds this log
   shorter than its mirror of it and starts that mirror again from a snapshot of this store.
   Without a peer it is refused (``CorruptLogError``): what the log lost is gone, and the
   store is rebuilt from what it holds (``dssync replay``);
4. each mirror log that ends before what the store applied of it is copied again from the
   peer (``Mirror.refetch``): the store needs no rebuilding for damage in a mirror.

A peer that cannot be reached leaves step 4 to the mirror when it next runs (reported as
pending), and makes step 3's refusal say so.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from dssync import config as cfgmod
from dssync import layout
from dssync.appliance import pairing, snapshots
from dssync.appliance.home import Appliance, finish_interrupted_replay
from dssync.appliance.replay import replay
from dssync.errors import CorruptLogError, PairingRefusedError, TransientError
from dssync.log.factory import open_log
from dssync.log.filelog import FileLog, RecoveryReport
from dssync.sync import protocol, snapshot
from dssync.sync.mirror import Mirror
from dssync.sync.repair import after_cut, has_copy

PEER_TIMEOUT_S = 30.0


def _cut(rec: RecoveryReport | None) -> dict[str, Any]:
    return {"bytes_cut": rec.bytes_cut if rec else 0, "problem": rec.problem if rec else None,
            "segments_deleted": rec.segments_deleted if rec else 0}


def _take_back(home: str, cfg: cfgmod.Config, timeout_s: float) -> tuple[int, str | None]:
    """Take back from the peer's copy what follows the own log's end: (records, why not)."""
    log = open_log(home, cfg)
    try:
        assert isinstance(log, FileLog)
        return after_cut(cfg, log, timeout_s)
    finally:
        log.close()


def _rebuild_with_snapshot(home: str, cfg: cfgmod.Config, timeout_s: float) -> int:
    """Step 3's rebuild: download a snapshot of the peer's store first (nothing changes here if
    that fails), rebuild the store from the logs, load the snapshot and keep it (verify
    projects it); the events loaded."""
    log = FileLog(layout.log_dir(home))
    try:
        me = pairing.identity(cfg, max(log.start_offset(), cfg.sync.own_log_from))
    finally:
        log.close()
    client = protocol.PeerClient(cfg.sync, me, timeout_s=timeout_s)
    directory = os.path.join(layout.run_dir(home), "snapshot-repair")
    shutil.rmtree(directory, ignore_errors=True)
    try:
        peer = client.identity().name
        covers_to, _events, _store_id = snapshot.download(client, directory)
    except (TransientError, PairingRefusedError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise CorruptLogError(
            f"the log of {home} lost records its store applied, and the peer holds no copy of them in its mirror; "
            f"its store could not be fetched either ({exc.message})",
            hint=f"start the peer's service and run 'dssync recover {home}' again, or rebuild the store from what "
                 f"the log holds with 'dssync replay {home}'") from None
    finally:
        client.close()
    replay(home)
    with Appliance(home) as app:
        label = str(int(time.time() * 1000))
        loaded = snapshots.load(app.store, None, directory, peer, label, covers_to)
        snapshots.keep(home, peer, directory, label, log_inside=False)
    return loaded or 0


def recover(home: str, peer_timeout_s: float = PEER_TIMEOUT_S) -> dict[str, Any]:
    """The steps of the module docstring on ``home``; their report (JSON-ready)."""
    cfg = cfgmod.load(home)
    finish_interrupted_replay(home)
    paired = has_copy(cfg)
    log = open_log(home, cfg, scan_all=True)
    try:
        rec = log.recovery if isinstance(log, FileLog) else None  # (a broker recovers its own log)
    finally:
        log.close()
    doc: dict[str, Any] = {"log": _cut(rec), "records_from_peer": 0, "log_pending": None, "snapshot_events": 0,
                           "mirrors": {}}
    asked = paired and rec is not None and rec.bytes_cut > 0
    if asked:  # what the peer mirrored beyond the cut is the log's, not offsets to give new events
        doc["records_from_peer"], doc["log_pending"] = _take_back(home, cfg, peer_timeout_s)
    for peer in layout.mirrored_peers(home) if cfg.sync.transport == "http" else []:
        with FileLog(layout.mirror_dir(home, peer), writer=True, scan_all=True, fsync=cfg.log.fsync,
                     segment_bytes=cfg.log.segment_bytes) as mlog:
            doc["mirrors"][peer] = {**_cut(mlog.recovery), "end_offset": mlog.end_offset(), "pending": None}
    try:
        app = Appliance(home)
    except CorruptLogError as exc:  # the store applied more of the own log than it holds
        if not paired:
            raise
        if not asked:  # cut by an earlier run, or by a command that found a torn tail
            doc["records_from_peer"], doc["log_pending"] = _take_back(home, cfg, peer_timeout_s)
        if doc["log_pending"] is not None:
            raise CorruptLogError(f"{exc.message}; the peer did not give back what was cut ({doc['log_pending']})",
                                  hint=f"start the peer's service and run 'dssync recover {home}' again, or "
                                       f"rebuild the store from what the log holds with 'dssync replay {home}'"
                                  ) from None
        try:
            app = Appliance(home)
        except CorruptLogError:  # the peer's copy of the log holds no more of it
            doc["snapshot_events"] = _rebuild_with_snapshot(home, cfg, peer_timeout_s)
            app = Appliance(home)
    with app:
        doc["records_applied"] = app.caught_up
        doc["log_end_offset"] = app.log.end_offset()
        for peer, m in doc["mirrors"].items():
            applied = app.store.committed(layout.source_name(peer))
            started = os.path.exists(os.path.join(layout.mirror_dir(home, peer), layout.START_FILE))
            if applied <= m["end_offset"] or not started:
                continue
            try:
                m["end_offset"] = Mirror(home).refetch(applied, peer_timeout_s)
            except (TransientError, PairingRefusedError) as exc:
                m["pending"] = f"{exc.message}; the mirror copies it when it next runs"
    return doc
