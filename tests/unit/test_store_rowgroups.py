"""A bulk-built store's table is rewritten into full row groups: a checkpoint after a small apply
then merges nothing (docs/benchmarks.md, "The store at scale": partial row groups cost seconds
per checkpoint at 64 M rows)."""

from __future__ import annotations

from pathlib import Path

from dssync.consumers.store import Store

ROW_GROUP = 122_880
"""DuckDB's rows per row group."""
COMMITS, ROWS_PER_COMMIT = 12, 50_000


def _filled_store(path: Path) -> Store:
    """A store whose table was written a commit at a time, as a replay writes it: each commit
    ends in a partial row group. DuckDB runs on two threads, whatever the machine has."""
    store = Store(str(path), create=True, fsync=False)
    store.con.execute("SET threads = 2")
    for c in range(COMMITS):
        base = c * ROWS_PER_COMMIT
        store.con.execute(
            f"INSERT INTO ref_rows SELECT {base} + i, sha256(({base} + i)::VARCHAR)::BLOB, 0, 96, true, "
            f"{base} + i, 'a', 0, i, NULL FROM range({ROWS_PER_COMMIT}) t(i)")
    return store


def _row_group_sizes(store: Store) -> list[int]:
    return [int(n) for (n,) in store.con.execute(
        "SELECT sum(count) FROM pragma_storage_info('ref_rows') WHERE column_path = '[0]' "
        "GROUP BY row_group_id ORDER BY row_group_id").fetchall()]


def test_a_rewritten_table_has_full_row_groups_even_when_duckdb_has_several_threads(tmp_path: Path) -> None:
    store = _filled_store(tmp_path / "s")
    try:
        rows = COMMITS * ROWS_PER_COMMIT
        store.rewrite_file()
        sizes = _row_group_sizes(store)
        assert sum(sizes) == rows
        assert len(sizes) == -(-rows // ROW_GROUP), sizes  # at most the last one partial
    finally:
        store.close()
