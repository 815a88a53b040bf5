"""The benchmark's unprotected link (``dssync.bench.unprotected``): plaintext on loopback only,
so the protection's cost can be measured and never turned off by mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dssync.bench.unprotected import MODULE
from tests.pair import SECRET, Node, dss, make_pair, secret_file, wait_converged


def _curl_identity(port: int) -> str:
    return subprocess.run(["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                           f"http://127.0.0.1:{port}/v1/identity"], capture_output=True, text=True).stdout


def test_the_unprotected_launcher_refuses_a_link_that_leaves_loopback(tmp_path: Path) -> None:
    home = str(tmp_path / "sha")
    dss("init", home, "--name", "sha")
    dss("sync", "configure", home, "--role", "master", "--peer", "192.0.2.7:7070", "--listen", "127.0.0.1:7071",
        "--secret-file", secret_file(str(tmp_path), SECRET))
    p = subprocess.run([sys.executable, "-P", "-m", MODULE, "serve", home], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "[sync] peer is 192.0.2.7:7070" in p.stderr and "hint:" in p.stderr and "Traceback" not in p.stderr


def test_only_the_benchmarks_pair_answers_plain_http_and_both_pairs_converge(tmp_path: Path,
                                                                             running: list[Node]) -> None:
    for bare in (False, True):
        a, b = make_pair(tmp_path / str(bare), unprotected=bare)
        running.extend([a, b])
        for n in (a, b):
            n.start_all()
        # the product's sync port speaks TLS only; the benchmark's answers plain HTTP (409: no identity sent)
        assert _curl_identity(a.port) == ("409" if bare else "000")
        release = tmp_path / "data.bin"
        release.write_bytes(bytes(range(256)) * 8192)
        a.ingest(str(release))
        assert wait_converged(a, b)
        for n in (a, b):
            n.stop_all()
