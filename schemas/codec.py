"""Encode and decode events; the registry of every schema version this build can read.

Schemas live in ``avro/<Name>.v<N>.avsc``. The writer always uses the newest version of a
name; the reader accepts any version it knows, resolved to the newest (added fields take
their defaults). A fingerprint this build does not know raises ``UnknownSchemaError``: the
record was written by a newer dssync, and guessing would corrupt the store.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from dssync.errors import CorruptLogError, UnknownSchemaError, UsageError

MAGIC = b"\xc3\x01"
PREFIX = 10
REF_SIZE = 16
_NAME = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>\d+)\.avsc$")

Event = dict[str, Any]
"""A decoded event: the Avro record's fields plus ``"type"``, its schema name."""


@dataclass(frozen=True)
class EventSchema:
    name: str
    version: int
    parsed: Any
    fingerprint: bytes
    source: str


class Registry:
    """Every schema version found in a directory, by fingerprint and by name."""

    def __init__(self, directory: str) -> None:
        self.by_fingerprint: dict[bytes, EventSchema] = {}
        self.latest: dict[str, EventSchema] = {}
        for fname in sorted(os.listdir(directory)):
            m = _NAME.match(fname)
            if not m:
                continue
            with open(os.path.join(directory, fname), encoding="utf-8") as f:
                raw = json.load(f)
            parsed = parse_schema(raw, _write_hint=False, _force=True)
            fp = int(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"), 16).to_bytes(8, "little")
            es = EventSchema(m["name"], int(m["version"]), parsed, fp, fname)
            self.by_fingerprint[fp] = es
            cur = self.latest.get(es.name)
            if cur is None or es.version > cur.version:
                self.latest[es.name] = es

    def schema(self, name: str, version: int | None = None) -> EventSchema:
        if version is None:
            return self.latest[name]
        for es in self.by_fingerprint.values():
            if es.name == name and es.version == version:
                return es
        raise KeyError(f"{name} v{version}")


def _schema_dir() -> str:
    return str(resources.files("dssync.schemas").joinpath("avro"))


registry = Registry(_schema_dir())


def encode(name: str, fields: Event, version: int | None = None) -> bytes:
    """Encode ``fields`` as event ``name`` (newest version unless ``version`` is given)."""
    es = registry.schema(name, version)
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(es.fingerprint)
    fastavro.schemaless_writer(buf, es.parsed, fields)
    return buf.getvalue()


def _zigzag(n: int) -> bytes:
    """An Avro long; a value outside the signed 64-bit range is refused (``UsageError``):
    its bytes would decode as another number."""
    if not -(1 << 63) <= n < 1 << 63:
        raise UsageError(f"{n} does not fit an Avro long (64-bit signed)")
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SEGMENT_PREFIX = MAGIC + registry.latest["SegmentStored"].fingerprint


def encode_segment_stored(origin_prefix: bytes, hlc: int, ref: bytes, data: bytes | memoryview) -> bytes:
    """Fast path for the hottest event; byte-identical to ``encode("SegmentStored", ...)``.

    ``origin_prefix`` is ``origin_field(origin)``, computed once per writer.
    """
    return b"".join((_SEGMENT_PREFIX, origin_prefix, _zigzag(hlc), ref, _zigzag(len(data)), data))


def origin_field(origin: str) -> bytes:
    """The Avro encoding of an origin string, to pass to ``encode_segment_stored``."""
    raw = origin.encode("utf-8")
    return _zigzag(len(raw)) + raw


def decode(value: bytes) -> Event:
    """Decode one record value into an event resolved to the newest schema of its name."""
    if value[:2] != MAGIC or len(value) < PREFIX:
        raise CorruptLogError("record is not an Avro single-object encoded event")
    es = registry.by_fingerprint.get(value[2:PREFIX])
    if es is None:
        raise UnknownSchemaError(
            f"record written with unknown event schema (fingerprint {value[2:PREFIX].hex()})"
        )
    latest = registry.latest[es.name]
    buf = io.BytesIO(value)
    buf.seek(PREFIX)
    try:
        if latest is es:
            rec = fastavro.schemaless_reader(buf, es.parsed, None)
        else:
            rec = fastavro.schemaless_reader(buf, es.parsed, latest.parsed)
    except Exception as exc:  # fastavro raises assorted errors on malformed bodies
        raise CorruptLogError(f"{es.name} v{es.version} record does not decode: {exc}") from exc
    assert isinstance(rec, dict)
    rec["type"] = es.name
    return rec


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    n = b & 0x7F
    shift = 7
    pos += 1
    while b & 0x80:
        if shift > 63:
            raise CorruptLogError("an Avro long runs over 10 bytes")
        b = buf[pos]
        n |= (b & 0x7F) << shift
        shift += 7
        pos += 1
    if n >> 64:
        raise CorruptLogError("an Avro long holds more than 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def _fast_segment_stored(v: bytes) -> Event:
    n, p = _read_long(v, PREFIX)
    origin = v[p : p + n].decode("utf-8")
    hlc, p = _read_long(v, p + n)
    ref = v[p : p + REF_SIZE]
    n, p = _read_long(v, p + REF_SIZE)
    if p + n != len(v):
        raise CorruptLogError("SegmentStored record has a malformed body")
    return {"type": "SegmentStored", "origin": origin, "hlc": hlc, "ref": ref, "data": v[p:]}


def _fast_reference_stored(v: bytes) -> Event:
    n, p = _read_long(v, PREFIX)
    origin = v[p : p + n].decode("utf-8")
    hlc, p = _read_long(v, p + n)
    ref = v[p : p + REF_SIZE]
    level, p = _read_long(v, p + REF_SIZE)
    size, p = _read_long(v, p)
    n, p = _read_long(v, p)
    if p + n != len(v):
        raise CorruptLogError("ReferenceStored record has a malformed body")
    return {"type": "ReferenceStored", "origin": origin, "hlc": hlc, "ref": ref,
            "level": level, "size": size, "children": v[p:]}


def _fast_segment_evicted(v: bytes) -> Event:
    n, p = _read_long(v, PREFIX)
    origin = v[p : p + n].decode("utf-8")
    hlc, p = _read_long(v, p + n)
    if p + REF_SIZE != len(v):
        raise CorruptLogError("SegmentEvicted record has a malformed body")
    return {"type": "SegmentEvicted", "origin": origin, "hlc": hlc, "ref": v[p:]}


_FAST_DECODERS = {
    registry.schema("SegmentStored", 1).fingerprint: _fast_segment_stored,
    registry.schema("ReferenceStored", 1).fingerprint: _fast_reference_stored,
    registry.schema("SegmentEvicted", 1).fingerprint: _fast_segment_evicted,
}


def decode_fast(value: bytes) -> Event:
    """``decode`` with hand-written decoders for the hot v1 events (tested equal to fastavro)."""
    fast = _FAST_DECODERS.get(value[2:PREFIX])
    if fast is None or value[:2] != MAGIC:
        return decode(value)
    try:
        return fast(value)
    except (IndexError, UnicodeDecodeError) as exc:
        raise CorruptLogError(f"event record does not decode: {exc}") from exc
