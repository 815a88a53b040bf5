"""Message authentication on the sync link (dssync.sync.auth): requests single use and bound to
their destination, replies bound to their request, streams chained."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dssync.errors import ClockSkewError, PairingRefusedError
from dssync.sync import auth

KEY = auth.derive_key("pair-secret-0123456789")
DEST = "ab" * 32
NOW = 1_800_000_000.0


def _signed(path: str = "/v1/log?from=0", session: auth.Session | None = None, **override: str) -> dict[str, str]:
    headers = (session or auth.Session()).headers(KEY, "GET", path, '{"name": "shb"}', DEST)
    headers[auth.H_TIME] = f"{NOW:.3f}"
    req = auth.Request("GET", path, headers[auth.H_TIME], headers[auth.H_SESSION], int(headers[auth.H_SEQ]),
                       headers[auth.H_IDENTITY], DEST)
    headers[auth.H_AUTH] = req.tag(KEY)
    headers.update(override)
    return headers


def _check(headers: dict[str, str], path: str = "/v1/log?from=0", guard: auth.ReplayGuard | None = None,
           destination: str = DEST, now: float = NOW) -> str:
    return auth.check_request(KEY, "GET", path, headers, destination, guard or auth.ReplayGuard(), now)


def test_a_signed_request_is_accepted_once_and_its_replay_refused() -> None:
    guard = auth.ReplayGuard()
    h = _signed()
    assert _check(h, guard=guard) == '{"name": "shb"}'
    with pytest.raises(PairingRefusedError, match="replayed"):
        _check(h, guard=guard)


@pytest.mark.parametrize("field", [auth.H_TIME, auth.H_SESSION, auth.H_SEQ, auth.H_IDENTITY])
def test_a_request_whose_signed_header_changed_is_refused(field: str) -> None:
    h = _signed()
    h[field] = {auth.H_TIME: f"{NOW + 1:.3f}", auth.H_SEQ: "99"}.get(field, h[field] + "x")
    with pytest.raises(PairingRefusedError, match="wrong shared secret"):
        _check(h)


def test_a_request_for_another_path_or_another_server_is_refused() -> None:
    with pytest.raises(PairingRefusedError, match="wrong shared secret"):
        _check(_signed(), path="/v1/log?from=5")
    with pytest.raises(PairingRefusedError, match="wrong shared secret"):
        _check(_signed(), destination="cd" * 32)  # the certificate a man in the middle presented


@pytest.mark.parametrize("ts", ["nan", "inf", "-inf", "1e400", "", "soon"])
def test_a_request_without_a_finite_time_is_refused(ts: str) -> None:
    h = _signed()
    req = auth.Request("GET", "/v1/log?from=0", ts, h[auth.H_SESSION], int(h[auth.H_SEQ]), h[auth.H_IDENTITY], DEST)
    h[auth.H_TIME], h[auth.H_AUTH] = ts, req.tag(KEY)  # signed by the secret's holder: the time is still refused
    with pytest.raises(PairingRefusedError, match=r"timestamp|unauthenticated"):
        _check(h)


@pytest.mark.parametrize("skew", [-auth.MAX_SKEW_S - 1, auth.MAX_SKEW_S + 1])
def test_a_stale_or_future_request_is_refused(skew: float) -> None:
    with pytest.raises(ClockSkewError, match="clocks differ"):
        _check(_signed(), now=NOW - skew)


def test_a_forged_request_is_refused_before_its_clock_is_looked_at() -> None:
    """Only an authentic request learns the server's clock (a signed answer): a forged one
    with a wrong clock is refused as forged."""
    h = _signed(**{auth.H_AUTH: "00" * 32})
    with pytest.raises(PairingRefusedError, match="wrong shared secret") as refused:
        _check(h, now=NOW + 3600)
    assert not isinstance(refused.value, ClockSkewError)


def test_a_session_signs_its_requests_with_the_clock_it_adopted() -> None:
    session = auth.Session()
    session.clock_offset = 3600.0
    h = session.headers(KEY, "GET", "/v1/log?from=0", '{"name": "shb"}', DEST)
    assert abs(float(h[auth.H_TIME]) - (time.time() + 3600)) < 5
    assert _check(h, now=time.time() + 3600) == '{"name": "shb"}'  # a server one hour ahead takes it


def test_a_request_with_another_key_or_no_tag_is_refused_and_leaves_no_state() -> None:
    guard = auth.ReplayGuard()
    h = _signed()
    h[auth.H_AUTH] = "0" * 64
    with pytest.raises(PairingRefusedError):
        _check(h, guard=guard)
    del h[auth.H_AUTH]
    with pytest.raises(PairingRefusedError, match="unauthenticated"):
        _check(h, guard=guard)
    assert guard._sessions == {}


@given(st.lists(st.integers(1, 3 * auth.REPLAY_WINDOW), min_size=1, max_size=200))
def test_the_replay_guard_accepts_each_sequence_number_at_most_once(seqs: list[int]) -> None:
    guard = auth.ReplayGuard()
    accepted: set[int] = set()
    top = 0
    for s in seqs:
        ok = guard.accept("session", s, NOW)
        if ok:
            assert s not in accepted
            accepted.add(s)
        else:  # refused only when seen, or when too far below the newest
            assert s in accepted or s <= top - auth.REPLAY_WINDOW
        top = max(top, s) if ok else top


def test_the_replay_guard_forgets_only_sessions_past_the_clock_window() -> None:
    guard = auth.ReplayGuard(max_sessions=2)
    assert guard.accept("a", 1, NOW) and guard.accept("b", 1, NOW)
    assert not guard.accept("c", 1, NOW + 1)  # full, and nothing old enough to forget
    assert guard.accept("c", 1, NOW + 2 * auth.MAX_SKEW_S + 1)


def test_a_reply_is_bound_to_its_request_status_headers_and_length() -> None:
    headers = {"X-Dssync-Log-End": "10", "Content-Type": "application/octet-stream"}
    tag = auth.reply_tag(KEY, "req", 200, headers, 6)
    signed = {**headers, auth.H_REPLY: tag}
    auth.check_reply(KEY, "req", 200, signed, 6, "peer")
    auth.check_reply(KEY, "req", 200, {**signed, "Content-Type": "text/plain"}, 6, "peer")  # not a dssync header
    for req, status, hdrs, length in (("other", 200, signed, 6), ("req", 416, signed, 6),
                                      ("req", 200, {**signed, "X-Dssync-Log-End": "11"}, 6),
                                      ("req", 200, signed, 5), ("req", 200, headers, 6)):
        with pytest.raises(PairingRefusedError, match="does not authenticate"):
            auth.check_reply(KEY, req, status, hdrs, length, "peer")
    with pytest.raises(PairingRefusedError):
        auth.check_reply(auth.derive_key("another-secret-000000"), "req", 200, signed, 6, "peer")


def test_a_stream_cut_reordered_or_spliced_is_refused() -> None:
    frames = [b"one", b"two", b"three"]
    sender = auth.StreamTags(KEY, "00" * 32)
    tags = [sender.next(f) for f in frames]
    end = sender.end()
    receiver = auth.StreamTags(KEY, "00" * 32)
    for f, t in zip(frames, tags, strict=True):
        receiver.check(f, t, "peer")
    receiver.check(auth.END_FRAME, end, "peer")
    for order in ([1, 0, 2], [0, 2]):
        r = auth.StreamTags(KEY, "00" * 32)
        with pytest.raises(PairingRefusedError):
            for i in order:
                r.check(frames[i], tags[i], "peer")
    cut = auth.StreamTags(KEY, "00" * 32)
    cut.check(frames[0], tags[0], "peer")
    with pytest.raises(PairingRefusedError):
        cut.check(auth.END_FRAME, end, "peer")  # an end frame after a cut stream does not check
    other = auth.StreamTags(KEY, "11" * 32)  # the same frames under another reply
    with pytest.raises(PairingRefusedError):
        other.check(frames[0], tags[0], "peer")
