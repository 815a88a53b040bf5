"""Finding the first record of a read that cannot be applied, and keeping it aside."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dssync.consumers.quarantine import Quarantine, first_malformed
from dssync.log.base import LogRecord
from dssync.log.columns import RecordColumns
from dssync.producers.hierarchy import segment_ref
from dssync.schemas import encode_segment_stored, origin_field


def _good(offset: int) -> bytes:
    data = b"segment %d" % offset + b"." * 32
    return encode_segment_stored(origin_field("sh1"), offset + 1, segment_ref(data), data)


def _forged(offset: int) -> bytes:
    data = b"segment %d" % offset + b"." * 32
    return encode_segment_stored(origin_field("sh1"), offset + 1, b"\0" * 16, data)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.sets(st.integers(0, 39)), st.sets(st.integers(0, 39)), st.booleans())
def test_the_first_malformed_record_is_found_whatever_follows_it(n: int, cut: set[int], forged: set[int],
                                                                 check_refs: bool) -> None:
    values = [_good(i)[:-3] if i in cut else _forged(i) if i in forged else _good(i) for i in range(n)]
    cols = RecordColumns.from_records([LogRecord(i, 0, v) for i, v in enumerate(values)])
    bad = {i for i in range(n) if i in cut or (check_refs and i in forged)}
    found = first_malformed(cols, check_refs)
    if not bad:
        assert found is None
    else:
        assert found is not None and found[0] == min(bad) and found[1].message


def test_what_is_set_aside_survives_a_reopen_and_names_its_source(tmp_path: Path) -> None:
    Quarantine(str(tmp_path)).add("log:sha", 7, 1234, b"\x00bad", "does not decode")
    again = Quarantine(str(tmp_path))
    assert again.offsets("log:sha") == {7} and again.offsets("log:other") == set()
    (e,) = again.entries()
    assert (e["reason"], e["bytes"], (tmp_path / "quarantine" / e["file"]).read_bytes()) == \
        ("does not decode", 4, b"\x00bad")
