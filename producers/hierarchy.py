"""References: what labels a segment, and what stands for a run of them.

A segment's reference is the first 16 bytes of its SHA-256 (collision-resistant; 2^64 work
for a birthday collision). Runs of references are cut content-defined too, on the references
themselves, so the same data yields the same runs wherever it recurs: a level-1 reference
stands for a run of segments (about 16, ~150 KB), a level-2 for a run of level-1 references
(about 16 again, ~2.5 MB). A repeat of a whole run then crosses the WAN as one reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dssync.schemas import REF_SIZE

FANOUT_MASK = 0x0F  # boundary when (byte & mask) == 0: runs average 16 children
MAX_RUN = 64


def segment_ref(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()[:REF_SIZE]


def group_ref(level: int, children: list[bytes]) -> bytes:
    h = hashlib.sha256(b"dssync-L%d" % level)
    for c in children:
        h.update(c)
    return h.digest()[:REF_SIZE]


@dataclass
class Group:
    """A higher-level reference: its level, children (refs of level - 1) and byte size."""

    level: int
    ref: bytes
    children: list[int] = field(default_factory=list)  # indices into the level below
    size: int = 0


def build_groups(level: int, refs: list[bytes], sizes: list[int]) -> list[Group]:
    """Cut ``refs`` into content-defined runs; one Group per run (runs of one included)."""
    groups: list[Group] = []
    run: list[int] = []
    byte_index = level - 1  # a different byte per level keeps the levels' cuts independent
    for i, r in enumerate(refs):
        run.append(i)
        if (r[byte_index] & FANOUT_MASK) == 0 or len(run) >= MAX_RUN:
            groups.append(_group(level, run, refs, sizes))
            run = []
    if run:
        groups.append(_group(level, run, refs, sizes))
    return groups


def _group(level: int, run: list[int], refs: list[bytes], sizes: list[int]) -> Group:
    kids = [refs[i] for i in run]
    ref = group_ref(level, kids) if len(run) > 1 else refs[run[0]]
    return Group(level, ref, list(run), sum(sizes[i] for i in run))
