"""``dssync recover``: check every batch of a home's logs, cut damage, take back from the peer.

Every command that writes cuts what a crash tore at the end of the own log, without reading
the rest; recover reads all of it, and the mirror of the peer's log too:

1. the own log is checked batch by batch and cut at the first damaged batch (the segments
   after it go: their offsets no longer follow). A paired appliance on the http transport
   takes back from its peer's mirror what followed the cut (``sync.repair``);
2. each mirror of a peer's log is checked and cut the same way;
3. the appliance is opened: the store catches up with its own log. A store that applied more
   of the own log than it holds after all this is refused (``CorruptLogError``): what neither
   the log nor the peer holds is gone, and the store is rebuilt from the log (``dssync replay``);
4. each mirror log that ends before what the store applied of it is copied again from the
   peer (``Mirror.refetch``): the store needs no rebuilding for damage in a mirror.

A peer that cannot be reached leaves step 4 to the mirror when it next runs (reported as
pending), and makes step 3's refusal say so.
"""

from __future__ import annotations

import os
from typing import Any

from dssync import config as cfgmod
from dssync import layout
from dssync.appliance.home import Appliance, finish_interrupted_replay
from dssync.errors import CorruptLogError, PairingRefusedError, TransientError
from dssync.log.factory import open_log
from dssync.log.filelog import FileLog, RecoveryReport
from dssync.sync.mirror import Mirror
from dssync.sync.repair import take_back_own_log

PEER_TIMEOUT_S = 30.0


def _cut(rec: RecoveryReport | None) -> dict[str, Any]:
    return {"bytes_cut": rec.bytes_cut if rec else 0, "problem": rec.problem if rec else None,
            "segments_deleted": rec.segments_deleted if rec else 0}


def _take_back(home: str, cfg: cfgmod.Config, timeout_s: float) -> tuple[int, str | None]:
    """Take back from the peer's copy what follows the own log's end: (records, why not)."""
    log = open_log(home, cfg)
    try:
        assert isinstance(log, FileLog)
        return take_back_own_log(cfg, log, timeout_s), None
    except (TransientError, PairingRefusedError) as exc:
        return 0, exc.message
    finally:
        log.close()


def recover(home: str, peer_timeout_s: float = PEER_TIMEOUT_S) -> dict[str, Any]:
    """The steps of the module docstring on ``home``; their report (JSON-ready)."""
    cfg = cfgmod.load(home)
    finish_interrupted_replay(home)
    paired = (bool(cfg.sync.role) and cfg.sync.transport == "http" and cfg.sync.state == "active"
              and cfg.log.backend == "file")
    log = open_log(home, cfg, scan_all=True)
    try:
        rec = log.recovery if isinstance(log, FileLog) else None  # (a broker recovers its own log)
    finally:
        log.close()
    doc: dict[str, Any] = {"log": _cut(rec), "records_from_peer": 0, "log_pending": None, "mirrors": {}}
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
        except CorruptLogError as again:  # the peer held less than the store applied
            raise CorruptLogError(f"{again.message}, and the peer holds no more of it",
                                  hint=f"rebuild the store from what the log holds with 'dssync replay {home}'"
                                  ) from None
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
