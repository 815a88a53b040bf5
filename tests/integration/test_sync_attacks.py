"""Attacks on the sync link of a real pair (two services, two mirrors, real sockets).

The backup's link to the master runs through a proxy in this test process that can pass bytes
through, flip or cut them, or answer in the master's place (a man in the middle with his own
certificate: forged identity, forged batches with valid CRCs, recorded replies, a huge length,
or relaying the backup's requests to the master). Other attacks go to the master's port
directly: replayed, stale, future and NaN requests, plaintext, an idle connection and 200 slow
ones, and a port scan; they come from 127.0.0.2, not the peer's address, and must never raise
the master's pairing alarm. Each must be refused with nothing applied; the pair converges after.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dssync import config
from dssync.log import batch as batchfmt
from dssync.schemas import encode_segment_stored, origin_field
from dssync.sync import auth, tls
from tests.pair import SECRET, Node, dss, make_pair, release, secret_file, verified, wait_converged

TALLY: dict[str, list[int]] = {}
"""attack -> [tried, refused], printed at the end of the test (the README quotes it)."""


def _count(attack: str, refused: bool) -> None:
    t = TALLY.setdefault(attack, [0, 0])
    t[0] += 1
    t[1] += int(refused)


class Proxy:
    """A TCP proxy between the backup and the master; ``mode`` says what it does to a new connection."""

    def __init__(self, upstream: int, cert_dir: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.answer: Callable[[bytes], bytes] | None = None
        self.connections: dict[str, int] = {}
        cert, key = tls.ensure_certificate(cert_dir, "mallory")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.stopped = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections[self.mode] = self.connections.get(self.mode, 0) + 1
            threading.Thread(target=self._serve, args=(conn, self.mode), daemon=True).start()

    def _serve(self, conn: socket.socket, mode: str) -> None:
        try:
            if mode in ("pass", "flip", "cut"):
                up = socket.create_connection(("127.0.0.1", self.upstream))
                threading.Thread(target=_pump, args=(conn, up, None), daemon=True).start()
                _pump(up, conn, mode if mode != "pass" else None)
                return
            else:
                with self.ctx.wrap_socket(conn, server_side=True) as t:
                    t.settimeout(10)
                    while True:
                        head = _read_head(t)
                        if not head:
                            return
                        assert self.answer is not None
                        t.sendall(self.answer(head))
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


def _pump(src: socket.socket, dst: socket.socket, damage: str | None) -> None:
    """Copy src to dst; ``flip``: one bit of the 2000th byte; ``cut``: stop after 3000 bytes."""
    seen = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if damage == "flip" and seen <= 2000 < seen + len(data):
                i = 2000 - seen
                data = data[:i] + bytes([data[i] ^ 0x04]) + data[i + 1:]
            if damage == "cut" and seen + len(data) > 3000:
                dst.sendall(data[: 3000 - seen])
                break
            seen += len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _read_head(t: ssl.SSLSocket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = t.recv(4096)
        if not chunk:
            return b""
        buf += chunk
    return buf


def _reply(status: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body) if length is None else length}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _forged_identity(master: dict[str, Any]) -> bytes:
    return json.dumps({**master, "store_id": "forged-store"}, sort_keys=True).encode()


def _forged_batches(start: int) -> bytes:
    """CRC-valid log batches carrying segments the master never stored."""
    of = origin_field("sha")
    data = os.urandom(512)
    values = [encode_segment_stored(of, 1 << 60, b"\x00" * 16, data)]  # a reference its bytes do not hash to
    return batchfmt.encode(start, int(time.time() * 1000), values)


def _signed_request(port: int, home: str, path: str, ts: str | None = None, session: auth.Session | None = None,
                    times: int = 1) -> list[int]:
    """Statuses of ``times`` sends of one request signed with the pair's secret for the master's
    certificate (what someone who recorded it in the clear could send again)."""
    key = auth.derive_key(SECRET)
    dest = tls.file_fingerprint(tls.paths(home)[0])
    ident = _backup_identity(home)
    headers = (session or auth.Session()).headers(key, "GET", path, ident, dest)
    if ts is not None:
        req = auth.Request("GET", path, ts, headers[auth.H_SESSION], int(headers[auth.H_SEQ]), ident, dest)
        headers[auth.H_TIME], headers[auth.H_AUTH] = ts, req.tag(key)
    out = []
    for _ in range(times):
        out.append(_raw_status(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\n"
                               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"))
    return out


def _raw_status(port: int, request: str) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with _connect(port) as raw, ctx.wrap_socket(raw) as t:
        t.sendall(request.encode())
        return int(_read_head(t).split(b" ", 2)[1])


def _status(node: Node) -> dict[str, Any]:
    return node.status()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node, Proxy]]:
    a, b = make_pair(tmp_path)
    proxy = Proxy(a.port, str(tmp_path / "mallory"))
    dss("sync", "configure", b.home, "--role", "backup", "--peer", f"127.0.0.1:{proxy.port}",
        "--listen", f"127.0.0.1:{b.port}", "--secret-file", secret_file(str(tmp_path), SECRET))
    try:
        a.start_all()
        b.start_all()
        yield a, b, proxy
    finally:
        for n in (a, b):
            n.stop_all()
        proxy.close()


def _mirror_end(b: Node) -> int:
    return int(_status(b)["mirrors"]["sha"].get("mirror_end_offset") or 0)


def test_attacks_on_the_sync_link_are_refused_and_the_pair_converges(tmp_path: Path,
                                                                    pair: tuple[Node, Node, Proxy]) -> None:
    a, b, proxy = pair
    files = release(tmp_path, 91, 2_000_000, 4)
    a.ingest(files[0])
    wait_converged(a, b)
    digest_b = dss("verify", a.home, b.home, "--json").stdout
    master = {**json.loads(_backup_identity(a.home)), "name": "sha", "role": "master"}  # looks right

    # (a) a man in the middle answers as the master: forged identity, forged CRC-valid batches
    end = _mirror_end(b)

    def forge(head: bytes) -> bytes:
        path = head.split(b" ")[1].decode()
        if path.startswith("/v1/identity"):
            return _reply(200, _forged_identity(master))
        if path.startswith("/v1/log"):
            frm = int(path.split("from=")[1].split("&")[0])
            return _reply(200, _forged_batches(frm), {"X-Dssync-Log-Start": "0", "X-Dssync-Log-End": str(frm + 1)})
        return _reply(404, b"")

    recorded = _record_reply(a)
    for attack, answer in (("forged identity and batches", forge),
                           ("a reply recorded earlier", lambda head: recorded),
                           ("a huge length", lambda head: _reply(200, b"", length=10 << 30))):
        proxy.answer, proxy.mode = answer, "forge"
        _drop_connections(b)
        time.sleep(3)
        refused = _mirror_end(b) == end and b.procs["mirror"].poll() is None
        _count(attack, refused)
        assert refused, b.log("mirror")[-2000:]

    # (b) relaying the backup's requests to the master from the proxy's own TLS connection
    relayed = _status(a)["sync"]["requests"].get("refused_requests", {})

    def relay(head: bytes) -> bytes:
        return _relay_to(a.port, head)

    proxy.answer, proxy.mode = relay, "forge"
    _drop_connections(b)
    time.sleep(3)
    after = _status(a)["sync"]["requests"].get("refused_requests", {})
    refused = sum(after.values()) > sum(relayed.values()) and _mirror_end(b) == end
    _count("requests relayed by a man in the middle", refused)
    assert refused, (relayed, after)

    # (c) bytes flipped or cut on the wire, while the master writes
    for damage in ("flip", "cut"):
        proxy.mode = damage
        _drop_connections(b)
        a.ingest(files[1 if damage == "flip" else 2])
        time.sleep(3)
        ok = b.procs["mirror"].poll() is None and "Traceback" not in b.log("mirror")
        _count(f"bytes {damage}ped on the wire" if damage == "flip" else "a transfer cut short", ok)
        assert ok
    proxy.mode = "pass"
    _drop_connections(b)
    wait_converged(a, b, timeout=90)

    # replayed, stale, future and NaN requests straight to the master
    session = auth.Session()
    first, again = _signed_request(a.port, a.home, "/v1/identity", session=session, times=2)
    _count("a request replayed", first == 200 and again == 401)
    assert (first, again) == (200, 401)
    # a stale or future request is not served: it is answered with the master's clock (425), which
    # a peer whose clock stepped adopts; someone replaying a recorded request learns only the time
    for attack, ts, refusal in (("a stale request", f"{time.time() - 3600:.3f}", auth.SKEW_STATUS),
                                ("a future request", f"{time.time() + 3600:.3f}", auth.SKEW_STATUS),
                                ("a NaN timestamp", "nan", 401)):
        (code,) = _signed_request(a.port, a.home, "/v1/identity", ts=ts)
        _count(attack, code == refusal)
        assert code == refusal, attack

    # plaintext to the TLS port, an idle connection and 200 slow ones, and a port scan, while syncing
    with _connect(a.port) as plain:
        plain.sendall(b"GET /v1/identity HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            got = plain.recv(100)
        except ConnectionResetError:
            got = b""
        _count("plaintext HTTP to the TLS port", not got.startswith(b"HTTP"))
        assert not got.startswith(b"HTTP")
    idle = [_connect(a.port)]
    slow = []
    for _ in range(200):
        s = _connect(a.port)
        s.sendall(b"\x16\x03\x01")  # the first bytes of a TLS hello, and nothing more
        slow.append(s)
    scan = []
    for _ in range(20):
        s = _connect(a.port)
        s.sendall(b"SSH-2.0-scanner\r\n")
        scan.append(s)
    t0 = time.time()
    a.ingest(files[3])
    wait_converged(a, b, timeout=60)
    lag_s = time.time() - t0
    # the backup's lag monitor saw nothing worth an alarm while the connections were held
    lag_alarms = [x for x in json.loads(dss("lag", b.home, "--json", check=False).stdout)["alarms"]
                  if x["alarm"].startswith(("lag_", "mirror_", "store_"))]
    _count("an idle connection and 200 slow ones while syncing", not lag_alarms)
    assert not lag_alarms, lag_alarms
    for s in idle + slow + scan:
        s.close()
    alarms = {x["alarm"] for x in json.loads(dss("lag", a.home, "--json", check=False).stdout)["alarms"]}
    _count("a port scan (no alarm)", "pairing_refused" not in alarms)
    assert "pairing_refused" not in alarms

    verified(a.home)
    verified(b.home)
    assert dss("verify", a.home, b.home, "--json").stdout != digest_b  # it moved on, and both agree
    counters = _status(a)["sync"]["requests"]
    tried = sum(t for t, _ in TALLY.values())
    refused_total = sum(r for _, r in TALLY.values())
    print(f"\nattacks tried {tried}, refused {refused_total}; the master refused {counters}; "
          f"converged {lag_s:.1f} s after an ingest under 200 slow connections")
    for attack, (t, r) in TALLY.items():
        print(f"  {attack}: {r}/{t}")
    assert refused_total == tried


def _drop_connections(b: Node) -> None:
    """The backup's mirror opens a new connection (restarted: the proxy applies its mode to it)."""
    b.kill("mirror")
    b.start("mirror")


def _record_reply(a: Node) -> bytes:
    """A genuine signed reply of the master (to a request this test made with the secret)."""
    key = auth.derive_key(SECRET)
    dest = tls.file_fingerprint(tls.paths(a.home)[0])
    ident = _backup_identity(a.home)
    headers = auth.Session().headers(key, "GET", "/v1/identity", ident, dest)
    return _relay_to(a.port, ("GET /v1/identity HTTP/1.1\r\nHost: x\r\n"
                              + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())


def _connect(port: int) -> socket.socket:
    """A connection to the master from 127.0.0.2: not the configured peer's address, so that
    what is refused there counts, and never raises the pairing alarm."""
    return socket.create_connection(("127.0.0.1", port), timeout=15, source_address=("127.0.0.2", 0))


def _backup_identity(master_home: str) -> str:
    """An identity the master accepts (what the backup sends)."""
    cfg = config.load(master_home)
    return json.dumps({"name": "shb", "model": cfg.model, "software_version": cfg.software_version, "store_id": "",
                       "role": "backup", "state": "active", "log_start_offset": 0, "chunker": cfg.chunker},
                      sort_keys=True)


def _relay_to(port: int, head: bytes) -> bytes:
    """Send a request head to the master over a TLS connection of this test's own; its whole reply."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with _connect(port) as raw, ctx.wrap_socket(raw) as t:
        t.sendall(head)
        reply = _read_head(t)
        length = int(reply.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = reply.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += t.recv(65536)
        return reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
