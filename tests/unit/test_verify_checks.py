"""verify's checks of a store's rows that its logs' projection cannot see: the digest the store
keeps as it commits against its rows, and each higher reference against its children."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

from dssync.appliance import Appliance
from dssync.appliance.verify import verify_store


def _filled(tmp_path: Path) -> Appliance:
    app = Appliance.create(str(tmp_path / "sh1"), "sh1", "SH", "1", fsync="never")
    app.ingest(io.BytesIO(os.urandom(3_000_000)))
    return app


def test_a_store_whose_kept_digest_differs_from_its_rows_fails_verify(tmp_path: Path) -> None:
    with _filled(tmp_path) as app:
        rep = verify_store(app.home, app.store)
        assert rep.ok and rep.groups_checked > 0
        index = app.store._index
        index.tally = dataclasses.replace(index.tally, sum_a=index.tally.sum_a ^ 1)
        rep = verify_store(app.home, app.store)
        assert not rep.ok and rep.remedy == "replay"
        assert any("kept digest" in p for p in rep.problems)


def test_a_higher_reference_whose_children_were_changed_fails_verify(tmp_path: Path) -> None:
    with _filled(tmp_path) as app:
        app.store.con.execute(
            "UPDATE ref_rows SET children = repeat('\\x00', 16)::BLOB || children[17:] "
            "WHERE seq = (SELECT min(seq) FROM ref_rows WHERE level > 0)")
        rep = verify_store(app.home, app.store)
        assert not rep.ok and rep.remedy == "replay"
        assert [p for p in rep.problems if "children do not match" in p]
