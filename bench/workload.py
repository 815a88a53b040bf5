"""Deterministic synthetic workloads that behave like WAN traffic.

The classic WAN-optimizer workload is successive versions of the same software, sent
uncompressed: a tar-like stream of files, where each version edits a few files (inserts,
deletes), adds and removes some, and changes every header (mtime, version). ``versions``
yields such a sequence from a seed, so tests and benchmarks need no download and every run
sees the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_ALPHABET = "etaoinshrdlucmfwypvbgkjqxz"


def _vocabulary(rng: random.Random, n: int = 4000) -> list[str]:
    return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(2, 10))) for _ in range(n)]


def _text(rng: random.Random, vocab: list[str], size: int) -> bytes:
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def _header(name: str, size: int, version: int) -> bytes:
    head = f"{name}\0size={size}\0mtime={1_700_000_000 + version * 86_400}\0v={version}\0".encode()
    return head.ljust(512, b"\0")


def _serialize(files: dict[str, bytes], version: int) -> bytes:
    parts: list[bytes] = []
    for name in sorted(files):
        body = files[name]
        parts.append(_header(name, len(body), version))
        parts.append(body + b"\0" * (-len(body) % 512))
    return b"".join(parts)


def versions(seed: int, size: int, count: int, churn: float = 0.1) -> Iterator[bytes]:
    """``count`` successive versions of a ~``size``-byte release; each edits ``churn`` of its files."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    files: dict[str, bytes] = {}
    total = 0
    i = 0
    while total < size:
        body = _text(rng, vocab, rng.randint(2_000, 120_000))
        files[f"src/module{i:05d}.txt"] = body
        total += len(body)
        i += 1
    for v in range(count):
        if v:
            names = sorted(files)
            for name in rng.sample(names, max(1, int(len(names) * churn))):
                body = files[name]
                at = rng.randrange(len(body) + 1)
                if rng.random() < 0.6:
                    body = body[:at] + _text(rng, vocab, rng.randint(10, 2_000)) + body[at:]
                else:
                    body = body[:at] + body[at + rng.randint(10, 2_000):]
                files[name] = body
            for _ in range(max(1, len(names) // 50)):
                files[f"src/new{v:03d}_{rng.randrange(10**6):06d}.txt"] = _text(rng, vocab, rng.randint(2_000, 60_000))
            for name in rng.sample(sorted(files), max(1, len(files) // 100)):
                del files[name]
        yield _serialize(files, v)


def random_bytes(seed: int, size: int) -> bytes:
    """Incompressible, never-repeating bytes: the all-new-data case."""
    return random.Random(seed).randbytes(size)
