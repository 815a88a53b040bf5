"""Taking back from the peer what damage cut from this appliance's own log.

A paired appliance on the http transport has a copy of its own log at its peer: the peer's
mirror of it. When recovery cut the log at damage (``dssync recover``), the batches the peer
mirrored beyond the cut come back from that copy (``GET /v1/mirror``): the same batches byte
for byte, each checked again on arrival (CRC, and offsets that continue the log's end) by
``FileLog.append_raw``, so nothing the log did not hold is ever written to it. The log then
holds again what its store was built from, and what the peer mirrored is not lost.

The peer's copy is also what keeps the pair consistent: had the appliance gone on writing from
the cut, it would give new events offsets the peer's mirror already holds other events at.

Error contract: ``TransientError`` when the peer cannot be reached or answers with an error,
``PairingRefusedError`` when it refuses the pair, ``CorruptLogError`` for a batch that does not
check; what was appended before the error stays (it checked), and the caller may ask again.
"""

from __future__ import annotations

from dssync import config as cfgmod
from dssync.errors import PairingRefusedError, TransientError
from dssync.log.filelog import FileLog
from dssync.sync import protocol
from dssync.sync.mirror import log_spans

FETCH_BYTES = 16 << 20
"""The most one reply of the peer's copy carries (beyond its first batch)."""
AFTER_CUT_TIMEOUT_S = 5.0
"""How long a writer that cut damage waits for the peer (``after_cut``): it must not hold a
service's start for long when the peer is down."""


def has_copy(cfg: cfgmod.Config) -> bool:
    """Whether the peer mirrors this appliance's own log as files (http transport, file log)."""
    return (bool(cfg.sync.role) and cfg.sync.transport == "http" and cfg.sync.state == "active"
            and cfg.log.backend == "file")


def after_cut(cfg: cfgmod.Config, log: FileLog, timeout_s: float = AFTER_CUT_TIMEOUT_S) -> tuple[int, str | None]:
    """What every writer whose recovery cut damage from the own log does before it writes:
    take back what the peer holds beyond the cut, so that no new event takes an offset the
    peer holds another event at. (records taken back, why the peer gave nothing: None if it
    answered); nothing is asked of an appliance whose peer holds no copy."""
    if not has_copy(cfg):
        return 0, None
    try:
        return take_back_own_log(cfg, log, timeout_s), None
    except (TransientError, PairingRefusedError) as exc:
        return 0, exc.message


def take_back_own_log(cfg: cfgmod.Config, log: FileLog, timeout_s: float = 30.0) -> int:
    """Append to ``log`` (this appliance's own log, open for writing, cut by recovery) every
    batch the peer mirrored beyond its end; return the records taken back (0 when the peer
    mirrored nothing beyond the cut, or holds no mirror of this log)."""
    me = protocol.Identity(cfg.name, cfg.model, cfg.software_version, cfg.store_id, cfg.sync.role, cfg.sync.state,
                           log.start_offset(), cfg.chunker)
    client = protocol.PeerClient(cfg.sync, me, timeout_s=timeout_s)
    taken = 0
    try:
        client.identity()
        while True:
            frm = log.end_offset()
            status, _headers, body = client.get(f"/v1/mirror?from={frm}&max_bytes={FETCH_BYTES}",
                                                limit=FETCH_BYTES + protocol.MAX_BATCH_BYTES)
            if status in (404, 416) or (status == 200 and not body):
                return taken  # no copy here, or nothing beyond what the log holds
            if status != 200:
                raise TransientError(f"the peer {cfg.sync.peer} could not serve its copy of this log "
                                     f"(HTTP {status}: {body[:200].decode(errors='replace')})")
            view = memoryview(body)
            spans, _after, complete = log_spans(view, frm)
            for pos, total, count in spans:
                log.append_raw(view[pos : pos + total], sync=False)
                taken += count
            log.commit()
            if not complete:
                raise TransientError(f"the peer {cfg.sync.peer} sent a truncated copy of this log")
    finally:
        client.close()
