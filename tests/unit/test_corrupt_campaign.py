"""The corruption campaign's own pieces: what it damages, how it names files, and what it
counts as one clean error."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dssync.bench.corrupt import _clean_error, damage, kind_of

LAST = {"log": "00000000000000000042.log", os.path.join("mirror", "shb"): "00000000000000000007.log"}


@pytest.mark.parametrize(("rel", "kind"), [
    ("dssync.toml", "config"),
    (os.path.join("log", "00000000000000000000.log"), "log segment (mid-log)"),
    (os.path.join("log", "00000000000000000042.log"), "log segment (last)"),
    (os.path.join("log", "00000000000000000000.index"), "log index"),
    (os.path.join("mirror", "shb", "00000000000000000007.log"), "mirror log segment (last)"),
    (os.path.join("mirror", "shb", "start.json"), "mirror log metadata (start.json)"),
    (os.path.join("tls", "sync.key"), "TLS key or certificate"),
    (os.path.join("run", "serve.json"), None),
])
def test_files_are_named_by_their_kind_and_run_files_are_out_of_scope(rel: str, kind: str | None) -> None:
    assert kind_of(rel, LAST) == kind


@pytest.mark.parametrize("how", ["truncate", "flip", "zero"])
def test_each_damage_changes_the_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "f"
    original = bytes(range(256)) * 64
    for seed in range(20):
        path.write_bytes(original)
        what = damage(str(path), how, random.Random(seed))
        got = path.read_bytes()
        assert got != original, what
        if how == "truncate":
            assert len(got) < len(original) and original.startswith(got)
        else:
            assert len(got) == len(original)
            if how == "flip":
                flipped = sum(bin(a ^ b).count("1") for a, b in zip(got, original, strict=True))
                assert 1 <= flipped <= 8


def test_one_error_and_one_hint_is_clean_and_anything_else_is_a_finding() -> None:
    assert _clean_error(4, "error: segment 3 ends inside a batch\nhint: run 'dssync recover HOME'\n") is None
    assert "traceback" in (_clean_error(1, "Traceback (most recent call last):\n  File x\nKeyError: 1") or "")
    assert _clean_error(1, "error: something\n") is not None  # no hint
    assert _clean_error(2, "Usage: dssync verify HOME\nError: Missing argument") is not None
