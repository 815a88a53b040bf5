"""A store's digest and counts, kept as the store changes instead of computed by a scan.

Two stores are compared (a pair's convergence check, ``dssync verify A B``, a replay checked
against the log's projection) by a digest of their current rows: an order-independent sum of a
hash of each row, so that two stores holding the same rows have the same digest whatever order
they were written in. A sum can be kept: an apply adds the hashes of the rows it writes and
takes out the hashes of the rows they replace, so the digest and the status counts cost nothing
to read, at 64 M rows as at 1,000 (a scan of the rows takes ~1.2 s of CPU per million: at an
appliance's size, a minute of both cores every time the monitor compares the pair).

A row's hash covers what two converged stores agree on: the reference, its clock, origin,
level, liveness and size (capped at 4 GiB, as the reference index holds it); not where the
store keeps the bytes (pack, position), nor a group's children, which its reference already
names (a reference is the hash of its children). Each row hashes to two 64-bit words by two
chains of splitmix64's finalizer over those fields, seeded apart; each word is summed modulo
2**64. The hash is not cryptographic: it detects accidental divergence (a bug, a lost
record, a damaged file), and the peer it is compared with is authenticated.

Error contract: none; pure functions of their arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dssync.consumers.refindex import Entries

_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SEEDS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD6E8FEB86659FD93))
_MASK = (1 << 64) - 1


def origin_word(name: str) -> int:
    """An origin's name as the 64-bit word a row's hash takes it in."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, element-wise (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * _C1
    x = (x ^ (x >> np.uint64(27))) * _C2
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def row_hashes(e: Entries, origin_words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit hash words of each entry's row (module docstring); ``origin_words``:
    ``origin_word`` of each origin, indexed as ``e.origin`` is."""
    packed = (e.size.astype(np.uint64) | (e.level.astype(np.uint64) << np.uint64(32))
              | (e.live.astype(np.uint64) << np.uint64(40)))
    fields = (e.hi, e.lo, e.hlc, packed, origin_words[e.origin.astype(np.int64)])
    out = []
    for seed in _SEEDS:
        h = np.full(len(e), seed, np.uint64)
        for f in fields:
            h = _mix(h ^ f.astype(np.uint64, copy=False))
        out.append(h)
    return out[0], out[1]


@dataclass(frozen=True)
class Tally:
    """What some rows add to a store's counts and digest. Replaced, never mutated: a reader on
    another thread sees one whole tally or the next."""

    rows: int = 0
    live: int = 0
    live_segments: int = 0
    live_segment_bytes: int = 0
    live_higher: int = 0
    sum_a: int = 0
    sum_b: int = 0

    @classmethod
    def of(cls, e: Entries, origin_words: np.ndarray) -> Tally:
        if not len(e):
            return cls()
        a, b = row_hashes(e, origin_words)
        segment = e.live & (e.level == 0)
        return cls(rows=len(e), live=int(e.live.sum()), live_segments=int(segment.sum()),
                   live_segment_bytes=int(e.size[segment].sum(dtype=np.uint64)),
                   live_higher=int((e.live & (e.level > 0)).sum()),
                   sum_a=int(a.sum(dtype=np.uint64)), sum_b=int(b.sum(dtype=np.uint64)))

    def plus(self, other: Tally, sign: int = 1) -> Tally:
        """This tally with ``other`` added (``sign`` 1) or taken out (-1)."""
        return replace(self, rows=self.rows + sign * other.rows, live=self.live + sign * other.live,
                       live_segments=self.live_segments + sign * other.live_segments,
                       live_segment_bytes=self.live_segment_bytes + sign * other.live_segment_bytes,
                       live_higher=self.live_higher + sign * other.live_higher,
                       sum_a=(self.sum_a + sign * other.sum_a) & _MASK, sum_b=(self.sum_b + sign * other.sum_b) & _MASK)

    def as_list(self) -> list[int]:
        return [self.rows, self.live, self.live_segments, self.live_segment_bytes, self.live_higher,
                self.sum_a, self.sum_b]

    @classmethod
    def from_list(cls, values: list[int]) -> Tally:
        return cls(*(int(v) for v in values))


@dataclass(frozen=True)
class Digest:
    """An order-independent summary of a store's rows (module docstring): how many, the bytes
    of its live segments, and the sum of the rows' hashes as 32 hex digits."""

    rows: int
    live_bytes: int
    value: str

    @classmethod
    def of(cls, t: Tally) -> Digest:
        return cls(t.rows, t.live_segment_bytes, f"{t.sum_a:016x}{t.sum_b:016x}")
