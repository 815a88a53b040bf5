"""The DuckDB-indexed data store: the projection of one or more logs.

DuckDB holds the index, one current row per reference (segment or higher-level reference): its
level, size, liveness, the (hlc, origin) of the event that last won it, its location in a
pack file, and the children of a higher-level reference (``SCHEMA``: rows written once, the
current ones a view); the reference index in memory (``refindex``) finds a reference's row.
Segment bytes live in pack files (``dssync.consumers.packs``), or in place in the appliance's
own log (log-resident segments, ``resident``). Per source log the store keeps the next offset to apply, in the
same transaction as the rows it covers: that is what makes apply exactly-once.

Apply is last-writer-wins per reference on (hlc, origin), so any order and any repetition of
the same events give the same rows (the digest ignores pack locations, which are local). A
``StoreReset`` event records the store's identity (id, chunker); wiping a store is a local act
(a new store directory), never an event that could delete rows on the peer. Only one process may open the file
(DuckDB's rule); it publishes ``status.json`` after each commit for tools that cannot open it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dssync import crashpoint
from dssync.consumers import merge
from dssync.consumers.digest import Digest, Tally
from dssync.consumers.packs import Packs
from dssync.consumers.refindex import Entries, RefIndex, halves
from dssync.errors import CorruptLogError, CorruptStoreError, LockedError, NotFoundError, ResourceError
from dssync.layout import write_json
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns
from dssync.schemas.codec import REF_SIZE
from dssync.schemas.columnar import KIND_EVICTED, KIND_REFERENCE, EventColumns, decode_columns, forged_segments

STORE_FORMAT = "2"
"""The layout of a store's DuckDB file: an index-less table of row versions (``ref_rows``),
the versions superseded (``superseded``) and the view of the current rows (``refs``). A store
of another format is refused (``_check_format``): ``dssync replay`` rebuilds it from the log."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS ref_rows (
    seq UBIGINT NOT NULL,
    ref BLOB NOT NULL,
    level UTINYINT NOT NULL,
    size UBIGINT NOT NULL,
    live BOOLEAN NOT NULL,
    hlc UBIGINT NOT NULL,
    origin VARCHAR NOT NULL,
    pack INTEGER,
    pos UBIGINT,
    children BLOB
);
CREATE TABLE IF NOT EXISTS superseded (seq UBIGINT NOT NULL);
CREATE VIEW IF NOT EXISTS refs AS {REFS};
CREATE TABLE IF NOT EXISTS offsets (source VARCHAR PRIMARY KEY, next_offset UBIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS log_files (id INTEGER PRIMARY KEY, dir VARCHAR NOT NULL, base_offset UBIGINT NOT NULL);
"""
"""The rows of ``ref_rows`` are written once and never updated: an apply appends the
version that wins a reference (``seq`` numbers versions in the order they were made) and lists
the version it replaces in ``superseded``; ``refs`` shows the current version of each
reference. Nothing locates a row by its reference in DuckDB (there is no DuckDB index: the
reference index ``dssync.consumers.refindex`` answers that in memory), so an apply is two plain
appends whatever the store's size; ``compact`` deletes the superseded versions in bulk."""

CURRENT = "FROM ref_rows r ANTI JOIN superseded s ON r.seq = s.seq"
"""The current row versions: every version no later one replaced."""
REFS_SQL = f"SELECT r.ref, r.level, r.size, r.live, r.hlc, r.origin, r.pack, r.pos, r.children {CURRENT}"
SCHEMA = SCHEMA.replace("{REFS}", REFS_SQL)
ROW_SCHEMA = merge.ROW_SCHEMA
CURRENT_SQL = f"SELECT r.seq, r.ref, r.level, r.size, r.live, r.hlc, r.origin, r.pack, r.pos {CURRENT}"
"""The current rows with their version numbers: what the reference index is built from."""
COMPACT_MIN = 1 << 16
COMPACT_SHARE = 1 / 16
"""Superseded versions are deleted once they number ``COMPACT_MIN`` and a 16th of the rows:
one scan of the table per that many replacements, and the view's anti-join stays small."""

DUCKDB_SHARE = 1 / 2
"""DuckDB's part of a store's memory budget; the rest is for Python and its libraries (about
300 MB), the replay's reads in flight (three of at most 64 MiB) and the Arrow tables of an
apply. The reference index comes on top: the budget's per-segment part. At 64 M segments a
replay fills DuckDB's share (with five eighths, its peak was over the budget by 1.1%)."""
BYTES_PER_THREAD = 256 << 20


def duckdb_settings(memory_limit: int) -> tuple[int, int]:
    """DuckDB's memory limit and thread count within a store's budget of ``memory_limit``
    bytes: its share, and one thread per ``BYTES_PER_THREAD`` of it (at least one, at most the
    cores). DuckDB holds no index, so its need does not grow with the rows; the reference
    index's memory (about 60 B per reference) is the budget's per-row part."""
    share = int(memory_limit * DUCKDB_SHARE)
    return share, max(1, min(os.cpu_count() or 1, share // BYTES_PER_THREAD))


@dataclass
class ApplyResult:
    applied: int = 0
    skipped: int = 0
    won: int = 0
    bytes_written: int = 0


@contextlib.contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[None]:
    """``table`` visible to SQL on ``con`` as ``name`` for the block, unregistered whatever happens."""
    con.register(name, table)
    try:
        yield
    finally:
        con.unregister(name)


@contextlib.contextmanager
def _one_thread(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block with DuckDB on one thread, then give it back its thread count."""
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.execute("SET threads = 1")
    try:
        yield
    finally:
        con.execute(f"SET threads = {int(threads)}")


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The block as one DuckDB transaction: committed at its end, rolled back if it raises; a
    failed write of the database (disk full, I/O error) raised as ``ResourceError``."""
    try:
        con.execute("BEGIN")
        yield
        con.execute("COMMIT")
    except duckdb.IOException as exc:
        with contextlib.suppress(duckdb.Error):  # the failed write may have ended the transaction already
            con.execute("ROLLBACK")
        raise ResourceError(f"the store could not commit: {str(exc).splitlines()[0]}") from None
    except duckdb.OutOfMemoryException as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise ResourceError(f"the store ran out of memory: {str(exc).splitlines()[0]}",
                            hint="raise [store] memory_limit in HOME/dssync.toml, then run the command again") from None
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


@dataclass
class Staged:
    """An apply merged, its segment bytes written and synced, its transaction not yet run."""

    source: str
    next_offset: int
    plan: merge.Plan
    ev: EventColumns
    rows: pa.Table | None  # the planned rows, ready to insert
    pack_id: int
    pack_end: int
    seq0: int  # the version number of the first planned row (the others follow)

    def overlay(self, held: Callable[[np.ndarray], merge.Existing]) -> Callable[[np.ndarray], merge.Existing]:
        """A lookup of held rows that sees this apply's rows as held too (they win: they beat
        whatever ``held`` had for the same references)."""
        def lookup(refs: np.ndarray) -> merge.Existing:
            return held(refs).combine(merge.planned_rows(self.plan, self.ev, refs))
        return lookup


Row = tuple[bytes, int, int, bool, int, str, int | None, int | None, bytes | None]


def _fetched(cur: duckdb.DuckDBPyConnection, batch: int) -> Iterator[tuple[Any, ...]]:
    """The rows of the query ``cur`` just ran, fetched ``batch`` at a time (never all at once)."""
    while True:
        chunk = cur.fetchmany(batch)
        if not chunk:
            return
        yield from chunk


def _damaged(directory: str, exc: Exception) -> CorruptStoreError:
    """The error for a store file DuckDB cannot read, naming the command that rebuilds it."""
    home = os.path.dirname(os.path.abspath(directory)) if os.path.basename(directory) == "store" else "HOME"
    return CorruptStoreError(f"cannot open the store at {directory}: {str(exc).splitlines()[0]}",
                             hint=f"rebuild the store from the log with 'dssync replay {home}'")


class Store:
    """A data store at ``directory`` (``store.duckdb`` plus ``packs/``)."""

    def __init__(
        self, directory: str, *, create: bool = False, fsync: bool = True,
        pack_bytes: int = 64 << 20, read_only: bool = False, resident: Iterable[str] = (),
        memory_limit: int | None = None,
    ) -> None:
        """``memory_limit``: the process's memory budget for the store (``duckdb_settings``;
        None leaves DuckDB's defaults: 80% of the machine's memory, every core).
        ``resident``: file log directories whose uncompressed segments this store may read in
        place instead of copying them to its packs (``dssync.consumers.packs``). Honoured only
        with ``fsync`` (the log must be durable before a row points into it); the owner must
        keep those logs' retention behind ``resident_from``."""
        self.directory = directory
        self.path = os.path.join(directory, "store.duckdb")
        if not os.path.exists(self.path) and not create:
            raise NotFoundError(f"no store at {directory}")
        os.makedirs(directory, exist_ok=True)
        config: dict[str, Any] = {}
        self._memory_limit = memory_limit
        if memory_limit is not None:
            limit, threads = duckdb_settings(memory_limit)
            config.update(memory_limit=f"{limit}B", threads=threads)
        self._config = config
        try:
            self.con = duckdb.connect(self.path, read_only=read_only, config=config)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise LockedError(
                    f"the store at {directory} is open in another process",
                    hint="stop the dssync process that owns this home, or use its status output",
                ) from None
            raise _damaged(directory, exc) from None
        except duckdb.Error as exc:  # a checksum mismatch, a file that is not a database
            raise _damaged(directory, exc) from None
        self.con.execute("SET enable_progress_bar = false")  # never drawn on a command's output
        self.read_only = read_only
        self._status_cursor = self.con.cursor()  # made here: no other thread uses the connection yet
        self.packs = Packs(os.path.join(directory, "packs"), pack_bytes, fsync)
        self._fsync = fsync
        self._index_path = os.path.join(directory, "refindex.bin")
        self._resident = {os.path.abspath(d) for d in resident} if fsync else set()
        try:
            self._check_format()
            if not read_only:
                self.con.execute(SCHEMA)
            self.packs.load_log_files(self.con.execute("SELECT id, dir, base_offset FROM log_files").fetchall())
            # This process owns the file (DuckDB's rule), so offsets and meta are cached in memory
            # and changed only together with the transactions that write them.
            self._meta: dict[str, str] = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
            self._offsets: dict[str, int] = {
                s: int(o) for s, o in self.con.execute("SELECT source, next_offset FROM offsets").fetchall()}
            if not read_only and "store_format" not in self._meta:
                self._put_meta({"store_format": STORE_FORMAT}, self.con)
                self._meta["store_format"] = STORE_FORMAT
            self._next_seq = int(self.con.execute("SELECT coalesce(max(seq) + 1, 0) FROM ref_rows").fetchall()[0][0])
            self._covers = self._next_seq  # every version below is committed
            self.index_loaded = False
            """Whether the reference index came from its file (else it was built from the rows)."""
            # a read-only open (a tool reading counts or a digest) builds the index only if it asks for it
            self._ref_index: RefIndex | None = None if read_only else self._open_index()
            self._superseded = int(self.con.execute("SELECT count(*) FROM superseded").fetchall()[0][0])
        except duckdb.Error as exc:
            self._status_cursor.close()
            self.con.close()
            raise _damaged(directory, exc) from None
        except CorruptStoreError:
            self._status_cursor.close()
            self.con.close()
            raise
        meta = self.meta()
        if not read_only:
            self.packs.truncate_to(int(meta.get("pack_id", 0)), int(meta.get("pack_end", 0)))

    def _check_format(self) -> None:
        """Refuse a store file of another layout (``STORE_FORMAT``) before anything writes to it."""
        kind = self.con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'refs'").fetchall()
        fmt = self.con.execute(
            "SELECT value FROM meta WHERE key = 'store_format'").fetchall() if self._has_table("meta") else []
        if (kind and kind[0][0] != "VIEW") or (fmt and fmt[0][0] != STORE_FORMAT):
            found = fmt[0][0] if fmt else "1"
            home = os.path.dirname(os.path.abspath(self.directory))
            raise CorruptStoreError(
                f"the store at {self.directory} has format {found}; this dssync reads format {STORE_FORMAT}",
                hint=f"rebuild the store from the log with 'dssync replay {home}'")

    def _has_table(self, name: str) -> bool:
        return bool(self.con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_name = ?", [name]).fetchall())

    @property
    def _index(self) -> RefIndex:
        if self._ref_index is None:
            self._ref_index = self._open_index()
        return self._ref_index

    def _open_index(self) -> RefIndex:
        """The reference index: the one saved at the last close if it belongs to this DuckDB
        file (the token and version count in its meta match), brought up to date with the
        versions made since; else built from every current row."""
        token, covers = self._meta.get("refindex_token", ""), int(self._meta.get("refindex_covers", -1))
        saved = RefIndex.load(self._index_path, token, covers) if covers <= self._covers else None
        self._saved = (token, covers) if saved is not None else None
        self.index_loaded = saved is not None
        index = saved or RefIndex()
        frm = covers if saved is not None else 0
        if saved is None:
            index.reserve(int(self.con.execute("SELECT count(*) FROM ref_rows").fetchall()[0][0]))
        cur = self.con.cursor()
        try:
            reader = cur.sql(f"{CURRENT_SQL} WHERE r.seq >= {int(frm)}").to_arrow_reader(1 << 20)
            assert reader is not None  # a query that ran always has a result
            for batch in reader:
                (index.upsert if saved is not None else index.add)(self._entries_of(batch, index))
        finally:
            cur.close()
        return index

    def _save_index(self) -> None:
        """Save the reference index beside the DuckDB file, then record its token there (a
        crash between the two leaves a file no token matches: the next open rebuilds)."""
        if self._saved == (self._meta.get("refindex_token", ""), self._covers):
            return
        token = os.urandom(8).hex()
        self._index.save(self._index_path, token, self._covers, fsync=self._fsync)
        meta = {"refindex_token": token, "refindex_covers": str(self._covers)}
        with _transaction(self.con):
            self._put_meta(meta, self.con)
        self._meta.update(meta)

    def _entries_of(self, batch: pa.RecordBatch, index: RefIndex) -> Entries:
        """Index entries of rows read from DuckDB (``CURRENT_SQL``'s columns)."""
        refs = batch.column(1)
        if refs.type != pa.binary():
            refs = refs.cast(pa.binary())
        data = np.frombuffer(refs.buffers()[2], np.uint8)
        offsets = np.frombuffer(refs.buffers()[1], np.int32, len(refs) + 1, refs.offset)
        hi, lo = halves(data[int(offsets[0]):int(offsets[-1])].reshape(-1, REF_SIZE))
        origin = batch.column(6).dictionary_encode()
        names = origin.dictionary.to_pylist()
        return Entries(
            hi=hi, lo=lo, hlc=batch.column(5).to_numpy().astype(np.uint64),
            seq=batch.column(0).to_numpy().astype(np.uint64),
            pos=pc.fill_null(batch.column(8).cast(pa.int64()), -1).to_numpy(),
            size=np.minimum(batch.column(3).to_numpy(), 0xFFFFFFFF).astype(np.uint32),
            pack=pc.fill_null(batch.column(7), -1).to_numpy().astype(np.int32),
            origin=index.origin_ids(names)[origin.indices.to_numpy(zero_copy_only=False)],
            level=batch.column(2).to_numpy().astype(np.uint8),
            live=batch.column(4).to_numpy(zero_copy_only=False).astype(bool))

    # ------------------------------------------------------------------ reading

    def _one(self, sql: str, params: list[Any] | None = None) -> tuple[Any, ...] | None:
        """The first row of a query, consuming the whole result (DuckDB 2 requires it)."""
        rows = self.con.execute(sql, params or []).fetchall()
        return tuple(rows[0]) if rows else None

    def meta(self) -> dict[str, str]:
        return dict(self._meta)

    def committed(self, source: str) -> int:
        """Next offset to apply from ``source`` (0 if never applied)."""
        return self._offsets.get(source, 0)

    def offsets(self) -> dict[str, int]:
        return dict(self._offsets)

    def _held(self, refs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """The reference index's entry id of each of ``refs`` (-1: not held; a value that is
        not a reference is never held), and the positions of those that are references."""
        shaped = [k for k, r in enumerate(refs) if len(r) == REF_SIZE]
        if not shaped:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        hi, lo = halves(np.frombuffer(b"".join(refs[k] for k in shaped), np.uint8).reshape(-1, REF_SIZE))
        return self._index.lookup(hi, lo), np.array(shaped, np.int64)

    def known(self, refs: list[bytes]) -> set[bytes]:
        """Which of ``refs`` the store holds live (the reference index; no DuckDB query)."""
        ids, at = self._held(refs)
        got = ids >= 0
        live = np.zeros(len(ids), bool)
        live[got] = self._index.entries(ids[got]).live
        return {refs[k] for k in at[live].tolist()}

    def digest(self) -> Digest:
        """The digest of the current rows (``dssync.consumers.digest``): kept by every commit
        where the reference index is open (no scan); a store opened read-only without it
        computes it from the rows instead of loading the index."""
        if self._ref_index is None:
            return self.digest_of_rows()
        return Digest.of(self._ref_index.tally)

    def digest_of_rows(self, con: duckdb.DuckDBPyConnection | None = None) -> Digest:
        """The digest computed from DuckDB's rows, one streaming pass in constant memory:
        what ``verify`` checks the kept one against. ``con``: a cursor, for another thread."""
        return Digest.of(self._tally_of_rows(con))

    def _tally_of_rows(self, con: duckdb.DuckDBPyConnection | None = None) -> Tally:
        scratch = RefIndex()  # numbers the origins met, as the entries name them
        t = Tally()
        cur = (con or self.con).cursor()
        try:
            reader = cur.sql(CURRENT_SQL).to_arrow_reader(1 << 20)
            assert reader is not None  # a query that ran always has a result
            for batch in reader:
                t = t.plus(Tally.of(self._entries_of(batch, scratch), scratch.origin_words()))
        finally:
            cur.close()
        return t

    def stats(self, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
        """Counts of the rows and the store's files: kept by every commit where the reference
        index is open, else counted by a scan of the rows. ``con``: a cursor of this store's
        connection, for a thread that reads while another applies (``publish_status``)."""
        t = self._ref_index.tally if self._ref_index is not None else self._tally_of_rows(con)
        meta = self.meta()
        return {
            "store_id": meta.get("store_id", ""),
            "chunker": meta.get("chunker", ""),
            "rows": t.rows,
            "live_refs": t.live,
            "live_segments": t.live_segments,
            "live_segment_bytes": t.live_segment_bytes,
            "live_higher_refs": t.live_higher,
            "pack_bytes": self.packs.total_bytes(),
            "packs": len(self.packs.ids()),
            "log_resident_bytes": self.packs.log_file_bytes(),
            "log_resident_files": len(self.packs.log_file_ids()),
            "offsets": self.offsets(),
            "max_hlc": int(meta.get("max_hlc", 0)),
            "ref_index_entries": len(self._ref_index) if self._ref_index is not None else None,
            "ref_index_bytes": self._ref_index.nbytes() if self._ref_index is not None else None,
        }

    def segment_bytes(self, ref: bytes) -> bytes:
        ids, _ = self._held([ref])
        e = self._index.entries(ids[ids >= 0])
        if not len(e) or not e.live[0] or e.level[0] != 0 or e.pack[0] < 0:
            raise NotFoundError(f"segment {ref.hex()} is not in the store")
        return self.packs.read(int(e.pack[0]), int(e.pos[0]), int(e.size[0]))

    def iter_live_segments(self, batch: int = 10_000) -> Iterator[tuple[bytes, int, int, int]]:
        """(ref, pack, pos, size) of every live segment, in pack order."""
        cur = self.con.cursor()  # its own cursor: the caller may query the store meanwhile
        try:
            cur.execute("SELECT ref, pack, pos, size FROM refs WHERE live AND level = 0 ORDER BY pack, pos")
            for r in _fetched(cur, batch):
                yield bytes(r[0]), int(r[1]), int(r[2]), int(r[3])
        finally:
            cur.close()

    def iter_live_groups(self, batch: int = 10_000) -> Iterator[tuple[bytes, int, bytes]]:
        """(ref, level, children) of every live higher-level reference."""
        cur = self.con.cursor()
        try:
            cur.execute("SELECT ref, level, children FROM refs WHERE live AND level > 0")
            for r in _fetched(cur, batch):
                yield bytes(r[0]), int(r[1]), bytes(r[2] or b"")
        finally:
            cur.close()

    def kept_digest(self) -> Digest | None:
        """The digest kept by the commits, None where the reference index is not open."""
        return Digest.of(self._ref_index.tally) if self._ref_index is not None else None

    def rows(self, limit: int | None = None) -> list[Row]:
        sql = "SELECT ref, level, size, live, hlc, origin, pack, pos, children FROM refs ORDER BY ref"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(bytes(r[0]), *r[1:]) for r in self.con.execute(sql).fetchall()]

    # ------------------------------------------------------------------ applying

    def apply(self, source: str, records: Iterable[LogRecord],
              before_commit: Callable[[], None] | None = None) -> ApplyResult:
        """Apply records of ``source`` in one transaction, exactly once (see ``apply_columns``)."""
        return self.apply_columns(source, RecordColumns.from_records(records), before_commit=before_commit)

    def apply_columns(self, source: str, cols: RecordColumns, decoded: EventColumns | None = None,
                      before_commit: Callable[[], None] | None = None, check_refs: bool = False) -> ApplyResult:
        """Apply records of ``source`` in one transaction, exactly once (module docstring).

        Records below the committed offset were applied before and are skipped; the new
        committed offset is one past the last record, written with the rows. The merge is
        column-wise (``dssync.consumers.merge``): last writer per reference within the records,
        then against the rows already held, in one lookup. ``decoded`` is ``decode_columns(cols)``
        when the caller decoded ahead (a replay decodes the next read while this one commits).
        ``before_commit`` runs once the segment bytes are written, before the transaction; if it
        raises, nothing is committed (the appliance waits there for the log to hold the records).
        ``check_refs``: refuse the records if a segment's bytes do not hash to its reference
        (``CorruptLogError``, nothing applied): for a peer's records.
        """
        result, staged = self.stage(source, cols, decoded, check_refs=check_refs)
        if staged is not None:
            if before_commit is not None:
                before_commit()
            crashpoint.reached("store.staged")
            self.commit_staged(staged)
        return result

    def stage(self, source: str, cols: RecordColumns, decoded: EventColumns | None = None,
              after: Staged | None = None, check_refs: bool = False) -> tuple[ApplyResult, Staged | None]:
        """The first half of ``apply_columns``: merge, write and sync the segment bytes; commit
        nothing. ``after`` is a staged apply of the same source that may not be committed yet:
        this one continues from its offset and sees its rows as held, so that a replay can merge
        and write the next read while DuckDB commits the previous one. Staged applies must be
        committed in order, one at a time."""
        committed = after.next_offset if after is not None else self.committed(source)
        keep = cols.offsets >= committed
        result = ApplyResult(skipped=int(len(cols) - keep.sum()))
        if not keep.any():
            return result, None
        if not keep.all():
            cols = cols.take(keep)
            decoded = None
        ev = decoded if decoded is not None else decode_columns(cols)
        if check_refs:
            forged = forged_segments(ev)
            if len(forged):
                at = int(cols.offsets[forged[0]])
                raise CorruptLogError(f"{source}: the segment at offset {at} does not hash to its reference "
                                      f"({len(forged)} such in offsets {int(cols.offsets[0])}.."
                                      f"{int(cols.offsets[-1])}): nothing of them applied",
                                      hint="the peer's log is damaged or forged; 'dssync verify' on the peer "
                                           "checks its own log")
        result.applied = len(cols)
        lookup = self._existing_columns if after is None else after.overlay(self._existing_columns)
        plan = merge.plan(ev, lookup)
        result.won = plan.won
        placed = cols.placement is not None and os.path.abspath(cols.placement.directory) in self._resident
        result.bytes_written = merge.write_segments(plan, ev, self.packs, cols if placed else None)
        merge.place_groups(plan, ev, lookup)
        self.packs.sync()
        rows = merge.row_table(plan, ev) if plan.won else None
        seq0, self._next_seq = self._next_seq, self._next_seq + plan.won  # a version number per row
        return result, Staged(source, int(cols.offsets[-1]) + 1, plan, ev, rows, self.packs.current, self.packs.end,
                              seq0)

    def commit_staged(self, staged: Staged, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """The second half of ``apply_columns``: one transaction with the rows, offset and meta.
        ``con`` is a cursor of this store's connection, for a committing thread of its own."""
        self._commit(staged, con or self.con)

    def _existing_columns(self, refs: np.ndarray) -> merge.Existing:
        """The rows held for ``refs`` ((k, 16) uint8): their index in ``refs`` and LWW fields,
        from the reference index."""
        if not len(refs):
            return merge.Existing.empty()
        ids = self._index.lookup(*halves(refs))
        i = np.flatnonzero(ids >= 0)
        e = self._index.entries(ids[i])
        origins = list(self._index.origins)  # read after the entries: origins are only added
        return merge.Existing(i, e.hlc, e.origin.astype(np.int64), origins, e.live,
                              e.pack.astype(np.int64), e.pos)

    def _planned_entries(self, staged: Staged) -> Entries:
        """The reference index's entries for the rows ``staged`` writes."""
        plan, ev = staged.plan, staged.ev
        r = plan.rows
        kind = ev.kind[r]
        group = kind == KIND_REFERENCE
        hi, lo = halves(ev.ref[r])
        return Entries(
            hi=hi, lo=lo, hlc=ev.hlc[r].astype(np.uint64),
            seq=np.arange(staged.seq0, staged.seq0 + len(r), dtype=np.uint64), pos=plan.pos.copy(),
            size=np.minimum(np.where(kind == KIND_EVICTED, 0, ev.size[r]), 0xFFFFFFFF).astype(np.uint32),
            pack=plan.pack.astype(np.int32), origin=self._index.origin_ids(ev.origins)[ev.origin[r]],
            level=np.where(group, ev.level[r], 0).astype(np.uint8), live=kind != KIND_EVICTED)

    def _commit(self, staged: Staged, con: duckdb.DuckDBPyConnection) -> None:
        """One transaction: the new row versions (an append), the versions they replace (an
        append to ``superseded``), offset and meta; then the reference index, which shows
        committed rows only."""
        source, next_offset, plan, ev, rows = staged.source, staged.next_offset, staged.plan, staged.ev, staged.rows
        entries = self._planned_entries(staged) if rows is not None else None
        replaced = np.zeros(0, np.uint64)
        if entries is not None and plan.exists.any():
            # the versions held now: a staged apply before this one is committed by this time
            ids = self._index.lookup(entries.hi[plan.exists], entries.lo[plan.exists])
            replaced = self._index.entries(ids[ids >= 0]).seq
        with _transaction(con):
            if rows is not None and entries is not None:
                versions = pa.Table.from_arrays([pa.array(entries.seq), *rows.columns], ["seq", *rows.column_names])
                with _registered(con, "_rows", versions):
                    con.execute("INSERT INTO ref_rows SELECT * FROM _rows")
                if len(replaced):
                    with _registered(con, "_old", pa.table({"seq": replaced})):
                        con.execute("INSERT INTO superseded SELECT seq FROM _old")
            self._put_offset(source, next_offset, con)
            log_files = self.packs.unsaved_log_files()
            if log_files:
                con.executemany("INSERT OR REPLACE INTO log_files VALUES (?, ?, ?)", log_files)
            meta = {"pack_id": str(staged.pack_id), "pack_end": str(staged.pack_end)}
            old_meta = self.meta()
            for r in sorted(ev.resets, key=lambda e: e["hlc"]):
                if r["hlc"] >= int(old_meta.get("identity_hlc", 0)):  # the newest identity wins
                    meta["store_id"] = r["store_id"]
                    meta["identity_hlc"] = str(r["hlc"])
                    if r.get("chunker"):
                        meta["chunker"] = r["chunker"]
            if plan.max_hlc > int(old_meta.get("max_hlc", 0)):
                meta["max_hlc"] = str(plan.max_hlc)
            self._put_meta(meta, con)
        self._offsets[source] = next_offset
        self._meta.update(meta)
        self.packs.saved(log_files)
        if entries is not None:
            self._index.upsert(entries)
            self._covers = staged.seq0 + plan.won
            self._superseded += len(replaced)
            if self._superseded >= max(COMPACT_MIN, len(self._index) * COMPACT_SHARE):
                self.compact(con)

    def rewrite_file(self) -> None:
        """Write the table of row versions, without the superseded ones, into a new DuckDB file
        renamed over this one. For the end of a replay, on a store no other thread or cursor
        uses (the connection is closed and opened again).

        A replay commits a read at a time, and each commit that DuckDB writes straight to the
        file ends in a partly filled row group. DuckDB's checkpoint merges a few such row groups
        each time it runs, which costs seconds at scale on whichever commit triggers it
        (measured at 16 M rows: 180 partial row groups, 3.5 s per checkpoint, 25 row groups
        merged each time); a table written in one statement has full row groups, and a later
        checkpoint after a small apply takes milliseconds. The rows keep their order (``seq``),
        and the new file holds none of the old table's blocks.

        The copy runs on one thread: a parallel copy ends each thread's share in a partial row
        group (measured at 64 M rows: 308 partial of 767, and a checkpoint after 400 applies
        took 7.2 s; copied on one thread, 1 partial of 556 and 26 ms)."""
        self.compact()
        fresh = self.path + ".rewrite"
        for leftover in (fresh, fresh + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        self._status_cursor.close()
        try:
            name = self.con.execute("SELECT current_database()").fetchall()[0][0]
            self.con.execute(f"ATTACH '{fresh}' AS rewritten")
            with _one_thread(self.con):  # full row groups (above)
                self.con.execute(f'COPY FROM DATABASE "{name}" TO rewritten')
            self.con.execute("DETACH rewritten")
        except duckdb.IOException as exc:
            raise ResourceError(f"the store could not be rewritten: {str(exc).splitlines()[0]}") from None
        finally:
            self.con.close()
        os.replace(fresh, self.path)
        if self._fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.con = duckdb.connect(self.path, config=self._config)
        self.con.execute("SET enable_progress_bar = false")
        self._status_cursor = self.con.cursor()

    def compact(self, con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Delete the superseded row versions (one scan of the table); return how many."""
        con = con or self.con
        with _transaction(con):
            gone = int(con.execute(
                "DELETE FROM ref_rows WHERE seq IN (SELECT seq FROM superseded)").fetchall()[0][0])
            con.execute("DELETE FROM superseded")
        self._superseded = 0
        return gone

    def _put_offset(self, source: str, next_offset: int, con: duckdb.DuckDBPyConnection) -> None:
        """Write one source's offset: an UPDATE when the row exists (twice as fast as a replace)."""
        if source in self._offsets:
            con.execute("UPDATE offsets SET next_offset = ? WHERE source = ?", [next_offset, source])
        else:
            con.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?)", [source, next_offset])

    def _put_meta(self, meta: dict[str, str], con: duckdb.DuckDBPyConnection) -> None:
        """Write the meta keys whose value changed, in at most two statements."""
        changed = {k: v for k, v in meta.items() if self._meta.get(k) != v}
        old = [(k, v) for k, v in changed.items() if k in self._meta]
        new = [(k, v) for k, v in changed.items() if k not in self._meta]
        if old:
            con.execute("UPDATE meta SET value = CASE key " + " ".join(["WHEN ? THEN ?"] * len(old))
                             + " END WHERE key IN (" + ", ".join(["?"] * len(old)) + ")",
                             [x for kv in old for x in kv] + [k for k, _ in old])
        if new:
            con.execute("INSERT OR REPLACE INTO meta VALUES " + ", ".join(["(?, ?)"] * len(new)),
                             [x for kv in new for x in kv])

    def advance(self, source: str, next_offset: int) -> None:
        """Move a source's committed offset forward (never back) without applying records.

        Used where the store starts reading a log that does not begin with it (a peer's log
        after its pairing, a log the store is a snapshot of up to ``next_offset``). The first
        advance of a source nothing was applied from is where the store began reading it:
        kept as meta ``from:<source>`` (``began``), where a projection of the store (``dssync
        verify``) begins that log too.
        """
        if next_offset <= self.committed(source):
            return
        meta = {} if source in self._offsets else {f"from:{source}": str(next_offset)}
        with _transaction(self.con):
            self.con.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?)", [source, next_offset])
            self._put_meta(meta, self.con)
        self._offsets[source] = next_offset
        self._meta.update(meta)

    def began(self, source: str) -> int:
        """The offset of ``source`` where this store began reading it (``advance``); 0 if it
        read it from its start."""
        return int(self._meta.get(f"from:{source}", 0))

    def forget(self, source: str) -> None:
        """Drop a source's committed offset (a finished snapshot source)."""
        self.con.execute("DELETE FROM offsets WHERE source = ?", [source])
        self._offsets.pop(source, None)

    @contextlib.contextmanager
    def snapshot_rows(self, batch: int = 50_000) -> Iterator[tuple[Iterator[Row], int, dict[str, int]]]:
        """Every row, for building a snapshot, as a consistent read at this instant: (the rows,
        streamed ``batch`` at a time, never all in memory; their count; the offsets they cover).

        The read runs in a read-only transaction of a cursor of its own, so the caller may let
        other threads apply meanwhile (DuckDB's MVCC keeps this view); the block must consume
        the rows before it ends."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION READ ONLY")
            offsets = {str(k): int(v) for k, v in cur.execute("SELECT source, next_offset FROM offsets").fetchall()}
            count = int(cur.execute("SELECT count(*) FROM refs").fetchall()[0][0])

            def rows() -> Iterator[Row]:
                cur.execute("SELECT ref, level, size, live, hlc, origin, pack, pos, children FROM refs")
                for r in _fetched(cur, batch):
                    yield (bytes(r[0]), *r[1:])

            yield rows(), count, offsets
            cur.execute("COMMIT")
        finally:
            cur.close()

    # ------------------------------------------------------------------ wrapping

    def wrap_candidates(self, capacity_bytes: int) -> tuple[int | None, list[bytes]]:
        """When the segment bytes (packs and log-resident files) exceed ``capacity_bytes``: the
        oldest location and the live refs in it or older."""
        ids = sorted(self.packs.ids() + self.packs.log_file_ids())
        if len(ids) < 2 or self.packs.total_bytes() + self.packs.log_file_bytes() <= capacity_bytes:
            return None, []
        oldest = ids[0]
        refs = [bytes(r[0]) for r in self.con.execute(
            "SELECT ref FROM refs WHERE live AND (pack <= ? OR (level > 0 AND pack IS NULL))",
            [oldest]).fetchall()]
        return oldest, refs

    def drop_dead_packs(self) -> int:
        """Delete packs (except the current one) that no live segment points into, and stop
        reading log segment files (except the newest) no live segment points into; return
        the bytes so freed."""
        live = {int(r[0]) for r in self.con.execute(
            "SELECT DISTINCT pack FROM refs WHERE live AND pack IS NOT NULL").fetchall()}
        freed = 0
        for pid in self.packs.ids():
            if pid != self.packs.current and pid not in live:
                freed += self.packs.delete(pid)
        in_log = self.packs.log_file_ids()
        dead = [i for i in in_log[:-1] if i not in live]
        if dead:
            self.con.execute("DELETE FROM log_files WHERE id IN (SELECT unnest(?::INTEGER[]))", [dead])
            for i in dead:
                freed += self.packs.forget_log_file(i)
        return freed

    def resident_from(self, log_directory: str) -> int | None:
        """The oldest segment file (base offset) of the log in ``log_directory`` that this
        store reads segments from: that log's retention must keep it and everything after."""
        return self.packs.resident_from(log_directory)

    def publish_status(self, extra: dict[str, Any]) -> None:
        """Write ``status.json`` atomically: what tools show while another process owns the store.
        The counts are the ones the commits keep (a whole tally, read at once), or where the
        index is not open a scan on a cursor of its own (DuckDB's MVCC gives it a consistent
        view), so a caller may run this without holding up threads that apply meanwhile."""
        doc = {"written_at_ms": time.time_ns() // 1_000_000, **self.stats(self._status_cursor), **extra}
        write_json(os.path.join(self.directory, "status.json"), doc)

    def close(self) -> None:
        if not self.read_only:
            with contextlib.suppress(duckdb.Error, OSError, ResourceError):  # the next open rebuilds it
                self._save_index()
        self.packs.close()
        with contextlib.suppress(duckdb.Error):
            self._status_cursor.close()
            self.con.close()
