"""Every hint that names a remedy is followed as a user would: the situation is produced, the
failing command run, the command its hint names run next (HOME and NAME filled in), and the
original command then succeeds. All in real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from dssync.bench.localpair import free_port
from dssync.layout import log_dir, store_dir
from dssync.log import segment as seg
from dssync.process import command
from dssync.tools.control import ControlClient
from tests.conftest import run_dssync
from tests.pair import held_home


def _sample(tmp_path: Path, size: int = 3_000_000, seed: int = 1) -> str:
    import random

    p = tmp_path / f"sample{seed}.bin"
    p.write_bytes(random.Random(seed).randbytes(size))
    return str(p)


def _failure(*args: str, code: int) -> tuple[str, str]:
    """Run a command that must fail with ``code``: its one error line and its hint."""
    p = run_dssync(*args, check=False)
    err = p.stderr.decode()
    assert p.returncode == code, (p.returncode, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(("error: ", "hint: "))]
    assert [ln[:5] for ln in lines] == ["error", "hint:"], err
    return lines[0].removeprefix("error: "), lines[1].removeprefix("hint: ")


def _hinted(hint: str, **fill: str) -> list[str]:
    """The dssync command a hint names (quoted in it), placeholders filled, as argv after 'dssync'."""
    found = re.search(r"'dssync ([^']+)'", hint)
    assert found, f"no dssync command in the hint: {hint}"
    words = shlex.split(found.group(1))
    return [fill.get(w, w) for w in words]


def _home(tmp_path: Path, name: str = "sh1", *extra: str) -> str:
    home = str(tmp_path / name)
    run_dssync("init", home, "--name", name, "--model", "SH-7080", "--version", "9.14", *extra)
    return home


def _digest(home: str) -> str:
    return str(json.loads(run_dssync("inspect", "store", home, "--json").stdout)["digest"])


def _verified(home: str) -> None:
    p = run_dssync("verify", home)
    assert b"verify: OK" in p.stdout


def test_a_pack_cut_short_is_rebuilt_by_the_replay_verify_names(tmp_path: Path) -> None:
    home = _home(tmp_path, "sh1", "--fsync", "never")  # segment bytes copied into packs
    run_dssync("ingest", home, _sample(tmp_path))
    digest = _digest(home)
    pack = os.path.join(store_dir(home), "packs", sorted(os.listdir(os.path.join(store_dir(home), "packs")))[-1])
    os.truncate(pack, os.path.getsize(pack) - 1000)
    err, hint = _failure("verify", home, code=9)
    assert "problem" in err and "dssync replay" in hint
    run_dssync(*_hinted(hint, HOME=home))
    _verified(home)
    assert _digest(home) == digest


@pytest.mark.parametrize("where", ["header", "data blocks"])
def test_a_damaged_duckdb_file_is_rebuilt_by_the_replay_every_command_names(tmp_path: Path, where: str) -> None:
    home = _home(tmp_path)
    run_dssync("ingest", home, _sample(tmp_path))
    digest = _digest(home)
    path = os.path.join(store_dir(home), "store.duckdb")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if where == "header":
            f.seek(4096)
            f.write(b"\xff" * 8192)
        else:
            for block in range(12288 + (256 << 10), size, 256 << 10):
                f.seek(block + 100)
                f.write(b"\xfe" * 2000)
    for args in (("status", home), ("inspect", "store", home), ("verify", home),
                 ("ingest", home, _sample(tmp_path, 10_000, seed=2))):
        err, hint = _failure(*args, code=4)
        assert "store" in err and "dssync replay" in hint, (args, err, hint)
    run_dssync(*_hinted(hint, HOME=home))
    _verified(home)
    assert _digest(home) == digest
    run_dssync("ingest", home, _sample(tmp_path, 10_000, seed=2))


def test_a_store_of_the_first_layout_is_refused_and_rebuilt_by_the_replay_every_command_names(
        tmp_path: Path) -> None:
    home = _home(tmp_path)
    run_dssync("ingest", home, _sample(tmp_path))
    digest = _digest(home)
    con = duckdb.connect(os.path.join(store_dir(home), "store.duckdb"))  # the layout with a primary key
    con.execute("CREATE TABLE old AS SELECT * FROM refs")
    con.execute("DROP VIEW refs; DROP TABLE ref_rows; DROP TABLE superseded")
    con.execute("DELETE FROM meta WHERE key = 'store_format'")
    con.execute("CREATE TABLE refs (ref BLOB PRIMARY KEY, level UTINYINT NOT NULL, size UBIGINT NOT NULL, "
                "live BOOLEAN NOT NULL, hlc UBIGINT NOT NULL, origin VARCHAR NOT NULL, pack INTEGER, pos UBIGINT, "
                "children BLOB); INSERT INTO refs SELECT * FROM old; DROP TABLE old")
    con.close()
    for args in (("status", home), ("inspect", "store", home), ("ingest", home, _sample(tmp_path, 10_000, seed=2))):
        err, hint = _failure(*args, code=4)
        assert "format 1" in err and "dssync replay" in hint, (args, err, hint)
    run_dssync(*_hinted(hint, HOME=home))
    _verified(home)
    assert _digest(home) == digest


def test_a_store_that_differs_from_its_log_is_rebuilt_by_the_replay_verify_names(tmp_path: Path) -> None:
    home = _home(tmp_path)
    run_dssync("ingest", home, _sample(tmp_path))
    digest = _digest(home)
    con = duckdb.connect(os.path.join(store_dir(home), "store.duckdb"))
    con.execute("UPDATE ref_rows SET hlc = hlc + 1 WHERE ref = (SELECT min(ref) FROM refs)")
    con.close()
    _, hint = _failure("verify", home, code=9)
    run_dssync(*_hinted(hint, HOME=home))
    _verified(home)
    assert _digest(home) == digest


def test_garbage_after_the_last_batch_is_cut_by_the_recover_the_log_error_names(tmp_path: Path) -> None:
    home = _home(tmp_path, "sh1", "--fsync", "never")
    run_dssync("ingest", home, _sample(tmp_path))
    digest = _digest(home)
    with open(seg.segment_path(log_dir(home), 0), "ab") as f:
        f.write(b"\x00\x00\x10\x00" + b"\x07" * 700)  # not a batch, not a prefix of one
    err, hint = _failure("verify", home, code=4)
    assert "bad batch header" in err and "dssync recover" in hint
    p = run_dssync(*_hinted(hint, HOME=home))
    assert b"cut 704 bytes" in p.stdout, p.stdout
    _verified(home)
    assert _digest(home) == digest


def test_damage_inside_the_log_is_cut_by_recover_and_the_store_rebuilt_by_the_replay_it_leads_to(
        tmp_path: Path) -> None:
    home = _home(tmp_path, "sh1", "--fsync", "never")
    run_dssync("ingest", home, _sample(tmp_path))
    with open(seg.segment_path(log_dir(home), 0), "r+b") as f:
        f.seek(1_500_000)
        f.write(b"\x00\x01\x02")
    err, hint = _failure("inspect", "log", home, "--records", "100000", code=4)
    assert "CRC32C" in err
    # recover cuts the log before the damaged batch, and finds the store ahead of what is left
    err, hint = _failure(*_hinted(hint, HOME=home), code=4)
    assert "store applied it up to" in err and "dssync replay" in hint
    run_dssync(*_hinted(hint, HOME=home))
    run_dssync("ingest", home, _sample(tmp_path, 10_000, seed=2))
    _verified(home)


def test_a_missing_home_is_created_by_the_init_its_error_names(tmp_path: Path) -> None:
    home = str(tmp_path / "nowhere")
    sample = _sample(tmp_path, 10_000)
    _, hint = _failure("ingest", home, sample, code=3)
    run_dssync(*_hinted(hint, NAME="sh9"))
    run_dssync("ingest", home, sample)
    _verified(home)


def test_a_replay_offset_outside_the_log_is_corrected_with_the_range_inspect_shows(tmp_path: Path) -> None:
    home = _home(tmp_path)
    run_dssync("ingest", home, _sample(tmp_path))
    _, hint = _failure("replay", home, "--from-offset", "999999", code=2)
    shown = json.loads(run_dssync(*_hinted(hint, HOME=home), "--json").stdout)
    run_dssync("replay", home, "--from-offset", str(shown["start_offset"]))
    _verified(home)


def test_a_short_pair_secret_is_replaced_by_one_the_hint_generates(tmp_path: Path) -> None:
    home = _home(tmp_path)
    configure = ["sync", "configure", home, "--role", "master", "--peer", "127.0.0.1:1",
                 "--listen", f"127.0.0.1:{free_port()}"]
    short = tmp_path / "short.secret"
    short.write_text("short\n")
    _, hint = _failure(*configure, "--secret-file", str(short), code=2)
    generate, then = hint.split("generate one with: ", 1)[1].split("; then pass ", 1)
    generator, target = generate.split(" > ")
    argv = shlex.split(generator)
    assert argv[0] == "python3" and then.startswith(f"--secret-file {target}")
    secret = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, check=True).stdout
    (tmp_path / target).write_text(secret)
    run_dssync(*configure, "--secret-file", str(tmp_path / target))
    assert json.loads(run_dssync("status", home, "--json").stdout)["sync"]["role"] == "master"
    assert secret.strip() in (Path(home) / "dssync.toml").read_text()
    assert os.stat(home).st_mode & 0o777 == 0o700 and os.stat(Path(home) / "dssync.toml").st_mode & 0o777 == 0o600


@contextlib.contextmanager
def _processes(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start dssync commands (``start(*argv)``) logging to one file; any still running when the
    block ends is killed, so no service outlives its test."""
    started: list[subprocess.Popen[bytes]] = []
    with open(tmp_path / "serve.log", "ab") as log:

        def start(*argv: str) -> subprocess.Popen[bytes]:
            started.append(subprocess.Popen(command(*argv), stdout=log, stderr=log))
            return started[-1]

        try:
            yield start
        finally:
            for p in started:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def test_a_second_serve_is_refused_and_the_hinted_stop_frees_the_home(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with _processes(tmp_path) as start:
        first = start("serve", home)
        _wait_serving(home, first)
        _, hint = _failure("serve", home, code=2)
        run_dssync(*_hinted(hint, HOME=home))
        assert first.wait(timeout=10) == 0
        second = start("serve", home)
        _wait_serving(home, second)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0


def test_stopping_a_service_that_does_not_run_names_the_serve_that_starts_it(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _, hint = _failure("service", "stop", home, code=2)
    with _processes(tmp_path) as start:
        proc = start(*_hinted(hint))
        _wait_serving(home, proc)
        assert b"service stopped" in run_dssync("service", "stop", home).stdout
        assert proc.wait(timeout=10) == 0


def test_a_home_held_by_another_process_is_free_once_that_process_stops(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with held_home(home):
        _, hint = _failure("ingest", home, _sample(tmp_path, 10_000), code=6)
        assert "stop the other dssync process" in hint
    run_dssync("ingest", home, _sample(tmp_path, 10_000))
    _verified(home)


def _wait_serving(home: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = ControlClient.for_home(home)
        if client is not None and client.pid == proc.pid:
            return
        assert proc.poll() is None, f"serve exited with {proc.returncode}"
        time.sleep(0.05)
    raise AssertionError(f"serve did not answer in {timeout} s")
