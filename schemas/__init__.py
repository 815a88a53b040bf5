"""What is in the log: the versioned Avro schemas of dssync's events and their codec.

Every record value is one event in Avro single-object encoding: ``C3 01``, the 8-byte
CRC-64-AVRO fingerprint of the writer schema, then the Avro body. Any Avro library can
decode it with the ``.avsc`` files of ``avro/``; old versions stay readable because the
reader resolves each writer version to the newest schema of the same name.
"""

from dssync.schemas.codec import (
    REF_SIZE,
    Event,
    decode,
    decode_fast,
    encode,
    encode_segment_stored,
    origin_field,
    registry,
)

__all__ = ["REF_SIZE", "Event", "decode", "decode_fast", "encode", "encode_segment_stored", "origin_field", "registry"]
