"""Mirroring between two real Kafka clusters (and from the embedded log into Kafka), exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from dssync.bench.localpair import Node, dss, wait_converged
from dssync.bench.topickill import read_all
from dssync.errors import BackendUnavailableError, LockedError, UsageError
from dssync.log.filelog import FileLog
from dssync.log.kafka import KafkaLog, KafkaSettings
from dssync.log.mirrored import MirroredTopic, TopicReader, source_position
from dssync.process import command
from dssync.sync import kafka_mirror
from dssync.sync.kafka_mirror import TopicCopier
from tests.pair import kafka_pair, release, verified, wait_alarm

pytestmark = pytest.mark.kafka


def _mirror_proc(src: str, topic: str, dst: str, dest_topic: str, logfile: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*command(), "mirror-topic", "--from-kafka", src,
                             "--from-topic", topic, "--to-kafka", dst, "--to-topic", dest_topic],
                            stdout=logfile, stderr=logfile)


def test_a_mirror_killed_and_a_destination_broker_restarted_mid_stream_lose_and_double_nothing(
        tmp_path: Path, kafka_broker: Any, kafka_broker_b: Any, leaky_client: None) -> None:
    topic, dest = f"src-{uuid.uuid4().hex[:8]}", f"mirror.src-{uuid.uuid4().hex[:8]}"
    source = KafkaLog(KafkaSettings(kafka_broker.bootstrap), topic, writer=True, create=True)
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(120):
                source.append([f"event {i}.{j} ".encode() * 20 for j in range(50)])
                time.sleep(0.05)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    with open(tmp_path / "mirror.log", "ab") as logfile:
        proc = _mirror_proc(kafka_broker.bootstrap, topic, kafka_broker_b.bootstrap, dest, logfile)
        try:
            time.sleep(2.5)
            proc.send_signal(signal.SIGKILL)  # mid-transaction, most likely
            proc.wait()
            proc = _mirror_proc(kafka_broker.bootstrap, topic, kafka_broker_b.bootstrap, dest, logfile)
            time.sleep(2.0)
            kafka_broker_b.stop(remove=False)
            time.sleep(15.0)  # longer than a request timeout: the mirror must notice and back off
            kafka_broker_b.start(keep_data=True)
            writer.join()
            with KafkaLog(KafkaSettings(kafka_broker.bootstrap), topic) as plain:
                want = read_all(plain)
            assert len(want) == 6000
            deadline = time.time() + 120
            with MirroredTopic(KafkaSettings(kafka_broker_b.bootstrap, timeout_ms=30_000), dest) as mirrored:
                while mirrored.end_offset() < source.end_offset() and time.time() < deadline:
                    time.sleep(0.5)
                got = read_all(mirrored)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            source.close()
    assert [o for o, _ in got] == [o for o, _ in want]  # no gap, no duplicate, in order
    assert got == want  # and the values as they were
    raw = TopicReader(KafkaSettings(kafka_broker_b.bootstrap), dest)
    try:
        begin, end = raw.bounds()
        offsets = [source_position(r)[0] for r in raw.fetch(begin, end, 1 << 30) if r.value]
    finally:
        raw.close()
    assert len(offsets) == len(set(offsets)) == 6000  # not even a committed duplicate is hidden
    log_text = (tmp_path / "mirror.log").read_text()
    assert "disconnected" in log_text and "retrying" in log_text


def test_a_source_broker_stopped_and_restarted_mid_stream_loses_and_doubles_nothing(
        tmp_path: Path, kafka_broker: Any, kafka_broker_b: Any, leaky_client: None) -> None:
    topic, dest = f"src-{uuid.uuid4().hex[:8]}", f"mirror.src-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(kafka_broker.bootstrap, timeout_ms=30_000)
    with KafkaLog(settings, topic, writer=True, create=True) as source:
        for i in range(40):
            source.append([f"before {i}.{j}".encode() for j in range(50)])
    with open(tmp_path / "mirror.log", "ab") as logfile:
        proc = _mirror_proc(kafka_broker.bootstrap, topic, kafka_broker_b.bootstrap, dest, logfile)
        try:
            time.sleep(1.0)
            kafka_broker.stop(remove=False)  # the source site goes away mid-copy
            time.sleep(12.0)
            kafka_broker.start(keep_data=True)
            with KafkaLog(settings, topic, writer=True) as source:
                for i in range(40):
                    source.append([f"after {i}.{j}".encode() for j in range(50)])
                end = source.end_offset()
            with KafkaLog(settings, topic) as plain:
                want = read_all(plain)
            deadline = time.time() + 120
            with MirroredTopic(KafkaSettings(kafka_broker_b.bootstrap, timeout_ms=30_000), dest) as mirrored:
                while mirrored.end_offset() < end and time.time() < deadline:
                    time.sleep(0.5)
                got = read_all(mirrored)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    assert len(want) == 4000 and got == want


def test_the_embedded_log_mirrors_into_kafka_and_resumes_where_the_topic_ends(
        tmp_path: Path, kafka_broker_b: Any) -> None:
    flog = FileLog(str(tmp_path / "log"), writer=True, create=True)
    for i in range(20):
        flog.append([f"r{i}.{j}".encode() for j in range(100)])
    dest = f"mirror.file-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(kafka_broker_b.bootstrap)
    copier = TopicCopier(FileLog(str(tmp_path / "log")), str(tmp_path / "log"), settings, dest, "sh1",
                         max_records=700)
    assert copier.open() == 0
    while copier.step():
        pass
    copier.close()
    flog.append([b"late"])
    again = TopicCopier(FileLog(str(tmp_path / "log")), str(tmp_path / "log"), settings, dest, "sh1")
    assert again.open() == 2000  # the destination says where to resume
    assert again.step() == 1 and again.step() == 0
    again.close()
    with MirroredTopic(settings, dest) as mirrored:
        got = mirrored.read(0, 100_000)
        assert [(r.offset, r.timestamp_ms, r.value) for r in got] == \
               [(r.offset, r.timestamp_ms, r.value) for r in flog.read(0, 100_000)]
        assert mirrored.read(1500, 3)[0].offset == 1500  # seeks by source offset
    flog.close()


class _Copying:
    """A fresh source topic on site A with its writer, and copiers of it into a fresh topic on
    site B, for the tests of one copier's transactions."""

    def __init__(self, site_a: Any, site_b: Any) -> None:
        self.site_a = KafkaSettings(site_a.bootstrap)
        self.topic, self.dest = f"src-{uuid.uuid4().hex[:8]}", f"mirror.src-{uuid.uuid4().hex[:8]}"
        self.source = KafkaLog(self.site_a, self.topic, writer=True, create=True)
        self.settings = KafkaSettings(site_b.bootstrap)
        self.copiers: list[TopicCopier] = []

    def copier(self, **options: Any) -> TopicCopier:
        c = TopicCopier(KafkaLog(self.site_a, self.topic), self.topic, self.settings, self.dest, "sh1", **options)
        self.copiers.append(c)
        return c

    def close(self) -> None:
        for c in self.copiers:
            c.close()
        self.source.close()

    def visible(self, count: int) -> list[bytes]:
        return _visible(self.settings, self.dest, count)


def _copy_until(copier: TopicCopier, count: int) -> None:
    while copier.stats["copied_records"] < count:
        copier.step()


def test_an_armed_transaction_holds_back_no_reader_and_never_outlives_its_timeout(
        kafka_broker: Any, kafka_broker_b: Any) -> None:
    """After each commit the copier opens the next transaction ahead; idling for longer than
    the transaction timeout must neither hide what was copied nor get the mirror fenced."""
    run = _Copying(kafka_broker, kafka_broker_b)
    try:
        copier = run.copier(transaction_timeout_ms=2_000)
        copier.open()
        run.source.append([b"one", b"two"])
        _copy_until(copier, 2)
        assert copier._armed_at is not None  # the next transaction is open already
        assert _committed(run.settings, run.dest) == [b"one", b"two"]  # and holds back no reader
        # idle past the timeout and the broker's check for timed-out transactions (every 10 s):
        # measured, an armed transaction kept open that long gets the mirror fenced
        deadline = time.monotonic() + 13
        while time.monotonic() < deadline:
            copier.step()
        assert copier._armed_at is None  # aborted while idle, before the broker's timeout
        run.source.append([b"three"])
        _copy_until(copier, 3)  # not fenced: LockedError would be raised here
    finally:
        run.close()
    assert run.visible(3) == [b"one", b"two", b"three"]


def test_a_mirror_paused_past_its_transaction_timeout_resumes_instead_of_stopping(
        kafka_broker: Any, kafka_broker_b: Any) -> None:
    """Kafka fences a transaction that outlives its timeout as it fences a replaced mirror;
    a mirror whose own transaction was that old (a paused process) starts a new cycle."""
    run = _Copying(kafka_broker, kafka_broker_b)
    try:
        copier = run.copier(transaction_timeout_ms=2_000)
        copier.open()
        run.source.append([b"one"])
        _copy_until(copier, 1)
        time.sleep(13)  # paused, the armed transaction open: the broker aborts it (checks every 10 s)
        run.source.append([b"two"])
        with pytest.raises(BackendUnavailableError, match="past its timeout"):
            _copy_until(copier, 2)
        _copy_until(copier, 2)  # the next cycle resumes from the destination
    finally:
        run.close()
    assert run.visible(2) == [b"one", b"two"]


def test_a_second_mirror_on_the_same_topic_stops_the_first(kafka_broker: Any, kafka_broker_b: Any) -> None:
    run = _Copying(kafka_broker, kafka_broker_b)
    try:
        first, second = run.copier(), run.copier()
        first.open()
        run.source.append([b"one"])
        _copy_until(first, 1)
        second.open()  # fences the first (same transactional id)
        run.source.append([b"two"])
        with pytest.raises(LockedError, match="another mirror took over"):
            while True:
                first.step()
        _copy_until(second, 1)
    finally:
        run.close()
    assert run.visible(2) == [b"one", b"two"]


def test_a_reader_meets_an_uncommitted_copy_and_its_recopy_and_reads_each_source_record_once(
        kafka_broker: Any, kafka_broker_b: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mirror readers do not wait for the mirror's commit: the copies of a transaction it never
    committed (killed, fenced) are copied again by the next cycle, and a reader keeps one of
    each, in source order, wherever it starts."""
    run = _Copying(kafka_broker, kafka_broker_b)
    try:
        for i in range(5):
            run.source.append([f"r{i}.{j}".encode() for j in range(20)])
        with KafkaLog(run.site_a, run.topic) as plain:
            want = read_all(plain)
        first = run.copier(max_records=30)
        first.open()
        assert first.step() == 30
        first.commit()

        def killed_before_commit(p: KafkaProducer, commit: bool, timeout_s: float) -> None:
            p.flush(timeout_s)  # the copies are written...
            raise KafkaTimeoutError("the mirror died")  # ...and never committed

        monkeypatch.setattr(kafka_mirror, "end_transaction", killed_before_commit)
        with pytest.raises(BackendUnavailableError):
            while True:
                first.step()  # copies the rest, then fails to commit it
        monkeypatch.undo()
        second = run.copier()
        assert second.open() == want[30][0]  # fences the first; resumes after its committed copies
        _copy_until(second, 70)
    finally:
        run.close()
    raw = TopicReader(run.settings, run.dest, isolation="read_uncommitted")
    try:
        copies = [source_position(r)[0] for r in raw.fetch(*raw.bounds(), 1 << 30) if r.value]
    finally:
        raw.close()
    assert len(copies) == 170 and sorted(set(copies)) == [o for o, _ in want]  # 70 of them twice
    assert _committed(run.settings, run.dest) == [v for _, v in want]
    for start in (None, want[25][0], want[30][0], want[45][0], want[60][0]):  # before, in, after them
        with MirroredTopic(run.settings, run.dest) as mirrored:  # a fresh reader seeks by source offset
            got = read_all(mirrored) if start is None else [(r.offset, r.value) for r in mirrored.read(start, 1000)]
        assert got == [(o, v) for o, v in want if start is None or o >= start]


def _committed(settings: KafkaSettings, topic: str) -> list[bytes]:
    """The data values a read_committed reader (Kafka's own tools) sees."""
    reader = TopicReader(settings, topic)
    try:
        return [r.value for r in reader.fetch(*reader.bounds(), 1 << 30) if r.value]
    finally:
        reader.close()


def _visible(settings: KafkaSettings, topic: str, count: int, timeout_s: float = 10) -> list[bytes]:
    """The values a dssync reader of the mirror topic sees, once it sees ``count`` of them."""
    deadline = time.monotonic() + timeout_s
    got: list[bytes] = []
    with MirroredTopic(settings, topic) as mirrored:
        at = 0
        while len(got) < count and time.monotonic() < deadline:
            recs = mirrored.read(at, 100)  # as a consumer reads: past the mirror's through records
            got.extend(r.value for r in recs)
            at = recs[-1].offset + 1 if recs else (mirrored.read_through or at)
            if not recs and not mirrored.read_through:
                time.sleep(0.05)
    return got


def test_a_mirror_topic_is_never_mirrored_again() -> None:
    with pytest.raises(UsageError, match="only an appliance's own log"):
        TopicCopier(None, "dssync.mirror.sh1", KafkaSettings("127.0.0.1:1"), "x", "sh1")


def test_a_pair_on_two_sites_converges_through_kafka_mirrors_and_fails_over(
        tmp_path: Path, running: list[Node], kafka_broker: Any, kafka_broker_b: Any) -> None:
    a, b = kafka_pair(tmp_path, "kafka-sites", kafka_broker, kafka_broker_b)
    r = release(tmp_path, 43, 2_000_000, 4)
    a.ingest(r[0])
    running.extend((a, b))
    a.start_all()
    b.start_all()
    wait_converged(a, b, timeout=120)
    a.ingest(r[1])
    b.ingest(r[2])
    b.kill("mirror")  # a mirror killed mid-stream resumes from its destination topic
    b.start("mirror")
    wait_converged(a, b, timeout=120)
    status = b.status()
    assert status["mirrors"]["sha"]["state"] == "connected"
    # every path measured on Kafka too: the mirror topic at shb's site, both stores
    deadline = time.time() + 30
    while True:
        lag = dss("lag", b.home, "--json", check=False)
        paths = json.loads(lag.stdout)["paths"]
        ready = lag.returncode == 0 and set(paths) == {"store:shb", "store:sha", "mirror:sha"}
        if ready or time.time() > deadline:
            break
        time.sleep(0.5)
    assert lag.returncode == 0, paths
    assert set(paths) == {"store:shb", "store:sha", "mirror:sha"}
    assert all(p["status"] in ("ok", "idle") and p["lag_seconds"] < 30 for p in paths.values()), paths
    for n in (a, b):  # each store is the projection of its own topic and its peer's mirror topic
        verified(n.home)
    a.stop_all()
    verified(a.home)  # the same, read offline
    assert b.ingest(r[1])["savings"] > 0.999


def test_a_retention_gap_between_sites_is_counted_alarmed_and_repaired_from_a_snapshot(
        tmp_path: Path, running: list[Node], kafka_broker: Any, kafka_broker_b: Any) -> None:
    import random

    small = ("--segment-bytes", str(1 << 20), "--retention-bytes", str(2 << 20))  # sha's topic keeps ~2-3 MiB
    a, b = kafka_pair(tmp_path, "kafka-sites", kafka_broker, kafka_broker_b, extra_a=small)
    prefix = _prefix(a.home)
    files = []
    for i in range(6):  # new data each time: the topic must grow past its retention
        p = tmp_path / f"new{i}.bin"
        p.write_bytes(random.Random(i).randbytes(1_500_000))
        files.append(str(p))
    settings = KafkaSettings(kafka_broker.bootstrap)
    running.extend((a, b))
    a.start_all()
    b.start_all()
    a.ingest(files[0])
    wait_converged(a, b, timeout=120)
    b.kill("mirror")
    with MirroredTopic(KafkaSettings(kafka_broker_b.bootstrap), f"{prefix}mirror.sha") as mirrored:
        copied_to = mirrored.end_offset()
    for f in files[1:]:
        a.ingest(f)
    with KafkaLog(settings, prefix + "sha") as topic:
        deadline = time.time() + 90
        while topic.start_offset() <= copied_to and time.time() < deadline:
            time.sleep(1)  # the broker deletes old segments every few seconds
        assert topic.start_offset() > copied_to, "retention did not remove what the mirror had not copied"
    b.start("mirror")
    wait_converged(a, b, timeout=180)
    state = b.status()["mirrors"]["sha"]
    assert state["gaps"] and state["not_copied_events"] > 0
    assert json.loads((Path(b.home) / "run" / "gaps-repaired.json").read_text()) == {"sha": len(state["gaps"])}
    assert "repaired: loaded a snapshot of sha" in b.log("serve")
    gap = wait_alarm(b.home, "retention_gap")
    assert gap["path"] == "mirror:sha" and f"{state['not_copied_events']} events" in gap["evidence"]
    verified(b.home)  # the repair's snapshot is kept: the store is still a projection


def _prefix(home: str) -> str:
    from dssync import config as cfgmod

    return cfgmod.load(home).kafka.topic_prefix


class _FakeSender:
    def __init__(self) -> None:
        self.wakeups = 0

    def wakeup(self) -> None:
        self.wakeups += 1


class _FakeMetadata:
    def __init__(self) -> None:
        self.known = True

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0} if self.known else None


class _FakeProducer:
    def __init__(self) -> None:
        self._sender, self._metadata = _FakeSender(), _FakeMetadata()


def test_one_wakeup_holds_back_the_sending_threads_wakeups_and_wakes_once() -> None:
    """The mechanism alone (a fake producer): which wakeups wait and which go through. Whether
    the I/O thread would have split a batch depends on thread scheduling; on real brokers,
    20 reads of 10 records went out as 20 requests of 10 with it, and three of the reads in
    two or three requests without it (measured, not a test: not deterministic)."""
    p = _FakeProducer()
    sender = p._sender
    one = kafka_mirror.OneWakeup(p, "T")  # type: ignore[arg-type]
    with one.held():
        for _ in range(5):
            p._sender.wakeup()  # as KafkaProducer.send does
        assert sender.wakeups == 0
        other = threading.Thread(target=p._sender.wakeup)  # the I/O thread's own: at once
        other.start()
        other.join()
        assert sender.wakeups == 1
        p._metadata.known = False  # send is about to wait for metadata: the wakeup goes through
        p._sender.wakeup()
        assert sender.wakeups == 2
        p._metadata.known = True
        p._sender.wakeup()
    assert sender.wakeups == 3  # the held ones, once
    p._sender.wakeup()  # outside held(): at once
    assert sender.wakeups == 4


def test_a_sample_of_the_sigkill_campaign_on_mirror_topic_loses_and_doubles_nothing(kafka_broker: Any) -> None:
    p = subprocess.run(command("chaos", "kill", "--runs", "8", "--seed", "4", "--kafka", kafka_broker.bootstrap,
                               "--kafka-runs", "8", "--json"), capture_output=True, text=True, timeout=900)
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["ok"], doc["first_findings"]
    assert doc["runs"] == 8 and doc["killed"] + doc["completed"] == 8
    named = {k: n for k, n in doc["killed_at"].items() if "random" not in k}
    assert all(k.startswith("mirror-topic") for k in doc["killed_at"]) and len(named) >= 2
