"""Event schemas: versions stay readable, unknown ones are refused, the fast codec matches fastavro."""

from __future__ import annotations

import io
import json
import os

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dssync import schemas
from dssync.errors import CorruptLogError, UnknownSchemaError
from dssync.schemas import codec

REF = st.binary(min_size=16, max_size=16)
ORIGIN = st.text(min_size=1, max_size=40)
HLC = st.integers(min_value=0, max_value=(1 << 63) - 1)


def test_every_schema_file_is_versioned_and_past_tense() -> None:
    names = {es.name for es in codec.registry.by_fingerprint.values()}
    assert names == {"SegmentStored", "ReferenceStored", "SegmentEvicted", "StoreReset", "HeartbeatSent"}
    for es in codec.registry.by_fingerprint.values():
        assert es.source == f"{es.name}.v{es.version}.avsc"
        assert es.name.endswith(("ed", "Reset", "Sent"))


def test_a_v1_store_reset_is_read_as_v2_with_defaults() -> None:
    old = codec.encode("StoreReset", {"origin": "sh1", "hlc": 5, "store_id": "abc"}, version=1)
    ev = codec.decode(old)
    assert ev == {"type": "StoreReset", "origin": "sh1", "hlc": 5, "store_id": "abc",
                  "chunker": "", "model": "", "software_version": ""}


def test_the_newest_version_is_what_writers_use() -> None:
    value = codec.encode("StoreReset", {"origin": "a", "hlc": 1, "store_id": "s", "chunker": "c",
                                         "model": "m", "software_version": "v"})
    assert value[2:10] == codec.registry.schema("StoreReset", 2).fingerprint


def test_an_unknown_schema_fingerprint_is_refused_with_a_hint() -> None:
    value = codec.MAGIC + b"\x01" * 8 + b"\x00"
    with pytest.raises(UnknownSchemaError) as info:
        codec.decode(value)
    assert "upgrade" in info.value.hint


def test_a_record_that_is_not_an_event_is_corrupt() -> None:
    with pytest.raises(CorruptLogError):
        codec.decode(b"not avro at all")


def test_a_truncated_body_is_corrupt_not_a_crash() -> None:
    value = codec.encode("SegmentEvicted", {"origin": "a", "hlc": 1, "ref": b"r" * 16})
    with pytest.raises(CorruptLogError):
        codec.decode_fast(value[:-3])


def test_events_decode_with_nothing_but_fastavro_and_the_avsc_files() -> None:
    directory = os.path.join(os.path.dirname(codec.__file__), "avro")
    with open(os.path.join(directory, "SegmentStored.v1.avsc")) as f:
        schema = fastavro.parse_schema(json.load(f))
    value = codec.encode_segment_stored(codec.origin_field("sh1"), 42, b"r" * 16, b"payload")
    rec = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, None)
    assert rec == {"origin": "sh1", "hlc": 42, "ref": b"r" * 16, "data": b"payload"}


@given(ORIGIN, HLC, REF, st.binary(max_size=3000))
def test_fast_segment_encoding_is_byte_identical_to_fastavro(origin: str, hlc: int, ref: bytes, data: bytes) -> None:
    fast = codec.encode_segment_stored(codec.origin_field(origin), hlc, ref, data)
    assert fast == codec.encode("SegmentStored", {"origin": origin, "hlc": hlc, "ref": ref, "data": data})
    assert codec.decode_fast(fast) == codec.decode(fast)


@given(ORIGIN, HLC, REF, st.integers(1, 2), st.integers(0, 1 << 40), st.binary(max_size=320))
def test_fast_reference_decoding_matches_fastavro(origin: str, hlc: int, ref: bytes, level: int, size: int,
                                                   children: bytes) -> None:
    value = codec.encode("ReferenceStored", {"origin": origin, "hlc": hlc, "ref": ref, "level": level,
                                             "size": size, "children": children})
    assert codec.decode_fast(value) == codec.decode(value)


@given(ORIGIN, HLC, REF)
def test_fast_eviction_decoding_matches_fastavro(origin: str, hlc: int, ref: bytes) -> None:
    value = codec.encode("SegmentEvicted", {"origin": origin, "hlc": hlc, "ref": ref})
    assert codec.decode_fast(value) == codec.decode(value)


@pytest.mark.parametrize("hlc", [1 << 63, (1 << 64) + 5, -(1 << 63) - 1])
def test_the_fast_encoder_refuses_a_value_outside_an_avro_long(hlc: int) -> None:
    from dssync.errors import UsageError

    with pytest.raises(UsageError, match="Avro long"):
        codec.encode_segment_stored(codec.origin_field("sh1"), hlc, b"r" * 16, b"x")


def test_the_fast_decoder_refuses_a_long_of_more_than_64_bits() -> None:
    good = codec.encode("SegmentEvicted", {"origin": "sh1", "hlc": (1 << 63) - 1, "ref": b"r" * 16})
    assert codec.decode_fast(good)["hlc"] == (1 << 63) - 1
    head = codec.PREFIX + len(codec.origin_field("sh1"))
    too_wide = good[:head] + b"\xff" * 9 + b"\x7f" + b"r" * 16  # ten bytes, 70 bits
    too_long = good[:head] + b"\xff" * 10 + b"\x01" + b"r" * 16  # eleven bytes
    for value in (too_wide, too_long):
        with pytest.raises(CorruptLogError, match="Avro long"):
            codec.decode_fast(value)


def test_public_names_are_exported() -> None:
    for name in schemas.__all__:
        assert hasattr(schemas, name)
