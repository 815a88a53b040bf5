"""The DuckDB-indexed data store: the projection of one or more logs.

DuckDB holds the index, one row per reference (segment or higher-level reference): its
level, size, liveness, the (hlc, origin) of the event that last won it, its location in a
pack file, and the children of a higher-level reference. Segment bytes live in pack files
(``dssync.consumers.packs``), or in place in the appliance's own log (log-resident segments,
``resident``). Per source log the store keeps the next offset to apply, in the
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

from dssync.consumers import merge
from dssync.consumers.packs import Packs
from dssync.errors import CorruptStoreError, LockedError, NotFoundError, ResourceError
from dssync.layout import write_json
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns
from dssync.schemas.columnar import EventColumns, decode_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    ref BLOB PRIMARY KEY,
    level UTINYINT NOT NULL,
    size UBIGINT NOT NULL,
    live BOOLEAN NOT NULL,
    hlc UBIGINT NOT NULL,
    origin VARCHAR NOT NULL,
    pack INTEGER,
    pos UBIGINT,
    children BLOB
);
CREATE TABLE IF NOT EXISTS offsets (source VARCHAR PRIMARY KEY, next_offset UBIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS log_files (id INTEGER PRIMARY KEY, dir VARCHAR NOT NULL, base_offset UBIGINT NOT NULL);
"""

ROW_SCHEMA = merge.ROW_SCHEMA

DIGEST_SQL = """
SELECT count(*), coalesce(sum(CASE WHEN live AND level = 0 THEN size ELSE 0 END), 0),
       coalesce(sum(md5_number_upper(line)), 0), coalesce(sum(md5_number_lower(line)), 0)
FROM (SELECT live, level, size,
             hex(ref) || ':' || level || ':' || size || ':' || live || ':' || hlc || ':' || origin
             || ':' || coalesce(hex(children), '') AS line
      FROM refs)
"""
"""A store's digest in one streaming pass, in constant memory: the sum of the MD5 of every
row's line (the digest columns, pack locations excluded), each 64-bit half summed on its own.
A sum does not depend on row order, so nothing is sorted or gathered: an ordered
``string_agg`` of every row would hold about 450 B per row in memory (measured: +900 MB at 2 M
rows), at an appliance's 64 M rows more than the whole memory budget."""


def _digest(row: tuple[Any, ...]) -> Digest:
    rows, live_bytes, upper, lower = row
    return Digest(int(rows), int(live_bytes), f"{int(upper) % (1 << 64):016x}{int(lower) % (1 << 64):016x}")


DUCKDB_SHARE = 5 / 8
"""DuckDB's part of a store's memory budget; the rest is for Python, the replay's reads in
flight (three of at most 64 MiB) and the Arrow tables of an apply."""
BYTES_PER_THREAD = 256 << 20
SMALL_LOOKUP = 512
PROBES_PER_SCANNED_ROW = 1 / 2000
MAX_PROBES = 2048
"""References are looked up with a list of literals, which DuckDB answers from the primary-key
index, while there are at most ``SMALL_LOOKUP`` of them or one per 2,000 rows held (up to
``MAX_PROBES``, DuckDB's index scan limit); more go through one join with an Arrow table of the
keys, a scan of every row. Measured at 4.3 M rows: 64 keys in 17 ms by the index against 66 ms by
a scan; 4,096 keys in 126 ms against 72 ms; a scan costs about 17 ns per row held."""


def _probes(rows: int) -> int:
    """How many references are looked up through the index in a store of ``rows`` rows."""
    return max(SMALL_LOOKUP, min(MAX_PROBES, int(rows * PROBES_PER_SCANNED_ROW)))
INDEX_BYTES_PER_ROW = 64
"""DuckDB keeps the whole primary-key index (an ART) in memory, about 50 B per row of 16-byte
keys (measured: ``duckdb_memory()`` ART_INDEX at 2 M rows), and cannot evict it: its memory
limit grows by this much per row held, on top of the budget's share (a fixed limit makes a
large store's inserts fail with an out-of-memory error)."""
LIMIT_STEP_ROWS = 1 << 20
"""The limit is raised each time the rows grow by this many."""


def duckdb_settings(memory_limit: int, rows: int = 0) -> tuple[int, int]:
    """DuckDB's memory limit and thread count for a store of ``rows`` rows within a budget of
    ``memory_limit`` bytes: its share plus the index's ``INDEX_BYTES_PER_ROW`` per row (rounded
    up to the next ``LIMIT_STEP_ROWS``), and one thread per ``BYTES_PER_THREAD`` of the share
    (at least one, at most the cores)."""
    share = int(memory_limit * DUCKDB_SHARE)
    planned = (rows // LIMIT_STEP_ROWS + 1) * LIMIT_STEP_ROWS
    return share + INDEX_BYTES_PER_ROW * planned, max(1, min(os.cpu_count() or 1, share // BYTES_PER_THREAD))


@dataclass(frozen=True)
class Digest:
    """An order-independent summary of a store's rows (pack locations excluded, ``DIGEST_SQL``)."""

    rows: int
    live_bytes: int
    md5: str


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
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The block as one DuckDB transaction: committed at its end, rolled back if it raises; a
    failed write of the database (disk full, I/O error) raised as ``ResourceError``."""
    try:
        con.execute("BEGIN")
        yield
        con.execute("COMMIT")
    except duckdb.IOException as exc:
        con.execute("ROLLBACK")
        raise ResourceError(f"the store could not commit: {exc}") from None
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
        self._resident = {os.path.abspath(d) for d in resident} if fsync else set()
        try:
            if not read_only:
                self.con.execute(SCHEMA)
            with contextlib.suppress(duckdb.CatalogException):  # a read-only open of a store older than the table
                self.packs.load_log_files(self.con.execute("SELECT id, dir, base_offset FROM log_files").fetchall())
            # This process owns the file (DuckDB's rule), so offsets and meta are cached in memory
            # and changed only together with the transactions that write them.
            self._meta: dict[str, str] = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
            self._offsets: dict[str, int] = {
                s: int(o) for s, o in self.con.execute("SELECT source, next_offset FROM offsets").fetchall()}
            self._rows = int(self.con.execute("SELECT count(*) FROM refs").fetchall()[0][0])
            self._limit_rows = -1
            self._fit_limit(self.con)
        except duckdb.Error as exc:
            self._status_cursor.close()
            self.con.close()
            raise _damaged(directory, exc) from None
        meta = self.meta()
        if not read_only:
            self.packs.truncate_to(int(meta.get("pack_id", 0)), int(meta.get("pack_end", 0)))

    def _fit_limit(self, con: duckdb.DuckDBPyConnection) -> None:
        """Raise DuckDB's memory limit with the rows held (``duckdb_settings``), on ``con``
        (the connection or cursor of the calling thread; the setting is the database's)."""
        if self._memory_limit is None or self._rows // LIMIT_STEP_ROWS == self._limit_rows:
            return
        self._limit_rows = self._rows // LIMIT_STEP_ROWS
        limit, _ = duckdb_settings(self._memory_limit, self._rows)
        con.execute(f"SET memory_limit = '{limit}B'")

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

    def known(self, refs: list[bytes]) -> set[bytes]:
        """Which of ``refs`` the store holds live, in one query."""
        if not refs:
            return set()
        if len(refs) <= _probes(self._rows):
            got = self.con.execute(  # liveness tested here: a second condition makes DuckDB scan every row
                "SELECT ref, live FROM refs WHERE ref IN (" + ", ".join("?" * len(refs)) + ")", refs).fetchall()
            return {bytes(r[0]) for r in got if r[1]}
        with _registered(self.con, "_keys", pa.table({"ref": pa.array(refs, pa.binary())})):
            rows = self.con.execute("SELECT r.ref FROM refs r JOIN _keys k ON r.ref = k.ref WHERE r.live").fetchall()
        return {bytes(r[0]) for r in rows}

    def digest(self) -> Digest:
        row = self._one(DIGEST_SQL)
        assert row is not None
        return _digest(row)

    def digest_snapshot(self) -> tuple[Digest, dict[str, int]]:
        """The digest and the offsets it covers, read in one transaction of a separate cursor.

        Safe to call from another thread while this store applies (DuckDB's MVCC gives the
        cursor a consistent snapshot), so a convergence check never makes the apply path wait
        for the whole-index scan a digest is.
        """
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION READ ONLY")
            offsets = {str(k): int(v) for k, v in cur.execute("SELECT source, next_offset FROM offsets").fetchall()}
            row = cur.execute(DIGEST_SQL).fetchall()[0]
            cur.execute("COMMIT")
        finally:
            cur.close()
        return _digest(tuple(row)), offsets

    def stats(self, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
        """Counts of the index (one scan of it) and the store's files. ``con``: a cursor of this
        store's connection, for a thread that reads while another applies (``publish_status``)."""
        rows = (con or self.con).execute(
            "SELECT count(*), count(*) FILTER (live), count(*) FILTER (live AND level = 0), "
            "coalesce(sum(size) FILTER (live AND level = 0), 0), count(*) FILTER (level > 0 AND live) FROM refs"
        ).fetchall()
        row = rows[0]
        meta = self.meta()
        return {
            "store_id": meta.get("store_id", ""),
            "chunker": meta.get("chunker", ""),
            "rows": int(row[0]),
            "live_refs": int(row[1]),
            "live_segments": int(row[2]),
            "live_segment_bytes": int(row[3]),
            "live_higher_refs": int(row[4]),
            "pack_bytes": self.packs.total_bytes(),
            "packs": len(self.packs.ids()),
            "log_resident_bytes": self.packs.log_file_bytes(),
            "log_resident_files": len(self.packs.log_file_ids()),
            "offsets": self.offsets(),
            "max_hlc": int(meta.get("max_hlc", 0)),
        }

    def segment_bytes(self, ref: bytes) -> bytes:
        row = self._one("SELECT pack, pos, size, live FROM refs WHERE ref = ? AND level = 0", [ref])
        if row is None or not row[3] or row[0] is None:
            raise NotFoundError(f"segment {ref.hex()} is not in the store")
        return self.packs.read(int(row[0]), int(row[1]), int(row[2]))

    def iter_live_segments(self, batch: int = 10_000) -> Iterator[tuple[bytes, int, int, int]]:
        """(ref, pack, pos, size) of every live segment, in pack order."""
        cur = self.con.cursor()  # its own cursor: the caller may query the store meanwhile
        try:
            cur.execute("SELECT ref, pack, pos, size FROM refs WHERE live AND level = 0 ORDER BY pack, pos")
            for r in _fetched(cur, batch):
                yield bytes(r[0]), int(r[1]), int(r[2]), int(r[3])
        finally:
            cur.close()

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
                      before_commit: Callable[[], None] | None = None) -> ApplyResult:
        """Apply records of ``source`` in one transaction, exactly once (module docstring).

        Records below the committed offset were applied before and are skipped; the new
        committed offset is one past the last record, written with the rows. The merge is
        column-wise (``dssync.consumers.merge``): last writer per reference within the records,
        then against the rows already held, in one lookup. ``decoded`` is ``decode_columns(cols)``
        when the caller decoded ahead (a replay decodes the next read while this one commits).
        ``before_commit`` runs once the segment bytes are written, before the transaction; if it
        raises, nothing is committed (the appliance waits there for the log to hold the records).
        """
        result, staged = self.stage(source, cols, decoded)
        if staged is not None:
            if before_commit is not None:
                before_commit()
            self.commit_staged(staged)
        return result

    def stage(self, source: str, cols: RecordColumns, decoded: EventColumns | None = None,
              after: Staged | None = None) -> tuple[ApplyResult, Staged | None]:
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
        result.applied = len(cols)
        lookup = self._existing_columns if after is None else after.overlay(self._existing_columns)
        plan = merge.plan(ev, lookup)
        result.won = plan.won
        placed = cols.placement is not None and os.path.abspath(cols.placement.directory) in self._resident
        result.bytes_written = merge.write_segments(plan, ev, self.packs, cols if placed else None)
        merge.place_groups(plan, ev, lookup)
        self.packs.sync()
        rows = merge.row_table(plan, ev) if plan.won else None
        return result, Staged(source, int(cols.offsets[-1]) + 1, plan, ev, rows, self.packs.current, self.packs.end)

    def commit_staged(self, staged: Staged, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """The second half of ``apply_columns``: one transaction with the rows, offset and meta.
        ``con`` is a cursor of this store's connection, for a committing thread of its own."""
        self._commit(staged, con or self.con)

    def _existing_columns(self, refs: np.ndarray) -> merge.Existing:
        """The rows held for ``refs`` ((k, 16) uint8): their index in ``refs`` and LWW fields."""
        k = len(refs)
        if k == 0:
            return merge.Existing.empty()
        if k <= _probes(self._rows):  # a small apply (a live link): the index, not a scan of every row
            keys = [bytes(r) for r in refs]
            got = self.con.execute(
                "SELECT ref, hlc, origin, live, pack, pos FROM refs WHERE ref IN (" + ", ".join("?" * k) + ")",
                keys).fetchall()
            where: dict[bytes, list[int]] = {}
            for i, key in enumerate(keys):  # a reference can be asked for twice (a child of two groups)
                where.setdefault(key, []).append(i)
            return merge.Existing.from_rows([(i, *r[1:]) for r in got for i in where[bytes(r[0])]])
        with _registered(self.con, "_keys", pa.table({"ref": merge.binary_column(refs), "i": pa.array(np.arange(k))})):
            table = self.con.sql(
                "SELECT k.i, r.hlc, r.origin, r.live, r.pack, r.pos FROM _keys k JOIN refs r ON r.ref = k.ref"
            ).to_arrow_table()
        return merge.Existing.from_arrow(table)

    def _commit(self, staged: Staged, con: duckdb.DuckDBPyConnection) -> None:
        """One transaction: new rows (plain insert, the fast path), replaced rows, offset, meta."""
        source, next_offset, plan, ev, rows = staged.source, staged.next_offset, staged.plan, staged.ev, staged.rows
        with _transaction(con):
            if rows is not None:
                if plan.exists.all() or not plan.exists.any():
                    parts = [(rows, "INSERT OR REPLACE" if plan.exists.any() else "INSERT")]
                else:
                    exists = pa.array(plan.exists)
                    parts = [(rows.filter(pc.invert(exists)), "INSERT"), (rows.filter(exists), "INSERT OR REPLACE")]
                for part, verb in parts:
                    if part.num_rows:
                        with _registered(con, "_rows", part):
                            con.execute(f"{verb} INTO refs SELECT * FROM _rows")
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
        if rows is not None:
            self._rows += int(rows.num_rows - plan.exists.sum())
            self._fit_limit(con)

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
        The counts are read on a cursor of their own (DuckDB's MVCC gives it a consistent view),
        so a caller may run this without holding up threads that apply meanwhile."""
        doc = {"written_at_ms": time.time_ns() // 1_000_000, **self.stats(self._status_cursor), **extra}
        write_json(os.path.join(self.directory, "status.json"), doc)

    def close(self) -> None:
        self.packs.close()
        with contextlib.suppress(duckdb.Error):
            self._status_cursor.close()
            self.con.close()
