"""The Kafka half of ``dssync chaos kill``: SIGKILL of ``mirror-topic`` between two sites' topics.

A source topic on the given broker takes traffic (a writer appends a batch every 20 ms) while a
``dssync mirror-topic`` copies it to its mirror topic on the same broker, in Kafka transactions.
Each run starts the mirror and kills it: at a named crash point of the copy (``kafka-mirror.sent``:
copies on their way, their transaction open; ``kafka-mirror.committing``: the copies sent, their
commit not; ``kafka-mirror.committed``: committed, the next transaction not yet armed), on its
N-th passage there, or at a random moment. The next run's mirror resumes after the last whole
transaction.

At the end the traffic stops, one more mirror catches up and stops on SIGTERM (exit 0); the
mirror topic must then hold every source record once, in order, byte for byte (no gap, no
duplicate for dssync's readers), no source offset may be committed twice (Kafka's own
``read_committed`` readers see no duplicate either), and no mirror may have written a traceback.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dssync.crashpoint import ENV
from dssync.process import command

if TYPE_CHECKING:
    from dssync.bench.chaos import Campaign

POINTS = ("kafka-mirror.sent", "kafka-mirror.committing", "kafka-mirror.committed")
DEATH_S = 20.0
"""How long a mirror armed at a named point may take to reach it (a start, its transactions'
set-up, a commit interval) before it is taken for not reaching it."""
CATCH_UP_S = 180.0


def topic_kills(c: Campaign, bootstrap: str, directory: str, runs: int, rng: random.Random,
                progress: Callable[[int], None] | None) -> None:
    """The campaign of the module docstring: ``runs`` mirror-topic kills on ``bootstrap``."""
    from dssync.log.kafka import KafkaLog, KafkaSettings

    topic = f"chaos-{uuid.uuid4().hex[:8]}"
    dest = f"mirror.{topic}"
    settings = KafkaSettings(bootstrap)
    source = KafkaLog(settings, topic, writer=True, create=True)
    stop = threading.Event()
    failed: list[str] = []

    def write() -> None:
        i = 0
        try:
            while not stop.is_set():
                source.append([f"{topic} {i}.{j} ".encode() * 8 for j in range(20)])
                i += 1
                stop.wait(0.02)
        except Exception as exc:  # the campaign reports it; the broker is the harness's
            failed.append(f"the source writer failed: {exc}")

    logfile = os.path.join(directory, "mirror-topic.log")
    writer = threading.Thread(target=write, name="chaos-topic-writer")
    writer.start()
    try:
        with open(logfile, "ab") as log:
            def mirror(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
                return subprocess.Popen(command("mirror-topic", "--from-kafka", bootstrap, "--from-topic", topic,
                                                "--to-kafka", bootstrap, "--to-topic", dest),
                                        stdout=log, stderr=log, env={**os.environ, **(env or {})})

            for _ in range(runs):
                c.runs += 1
                if rng.random() < 0.6:
                    point = rng.choice(POINTS)
                    proc = mirror({ENV: f"{point}:{rng.randint(1, 3)}"})
                    try:
                        proc.wait(timeout=DEATH_S)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(timeout=60)
                        if proc.returncode != 0:
                            c.find(f"mirror-topic not killed at {point} exited {proc.returncode} on SIGTERM")
                        else:
                            c.completed += 1
                        continue
                    where = f"mirror-topic at {point}"
                else:
                    proc = mirror()
                    time.sleep(rng.uniform(0.5, 6.0))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    where = "mirror-topic (random moment)"
                if proc.returncode == -signal.SIGKILL:
                    c.killed[where] += 1
                else:
                    c.find(f"mirror-topic exited {proc.returncode} before its kill at {where}")
                if progress is not None:
                    progress(1)
            stop.set()
            writer.join()
            proc = mirror()
            try:
                _check_copied(c, bootstrap, source, topic, dest)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            if proc.returncode != 0:
                c.find(f"the last mirror-topic exited {proc.returncode} on SIGTERM")
    finally:
        stop.set()
        writer.join()
        source.close()
    for failure in failed:
        c.find(failure)
    with open(logfile, errors="replace") as f:
        text = f.read()
    if "Traceback" in text:
        at = text.index("Traceback")
        c.find(f"a mirror-topic wrote a traceback: {text[at:at + 400]}")


def _check_copied(c: Campaign, bootstrap: str, source: Any, topic: str, dest: str) -> None:
    """Every source record once in the mirror topic, in order, byte for byte; no source offset
    committed twice (module docstring)."""
    from dssync.log.kafka import KafkaLog, KafkaSettings
    from dssync.log.mirrored import MirroredTopic, TopicReader, source_position

    end = source.end_offset()
    with MirroredTopic(KafkaSettings(bootstrap, timeout_ms=30_000), dest) as mirrored:
        deadline = time.monotonic() + CATCH_UP_S
        while mirrored.end_offset() < end and time.monotonic() < deadline:
            time.sleep(0.5)
        got = read_all(mirrored)
    with KafkaLog(KafkaSettings(bootstrap), topic) as plain:
        want = read_all(plain)
    if not want:
        c.find(f"the source topic {topic} took no traffic")
    if [o for o, _ in got] != [o for o, _ in want]:
        have = {o for o, _ in got}
        missing = [o for o, _ in want if o not in have]
        c.find(f"the mirror topic holds {len(got)} records for the source's {len(want)}: "
               f"{len(missing)} missing (first {missing[:5]}), order or duplicates otherwise")
    elif got != want:
        c.find("the mirror topic holds other bytes than the source for some offsets")
    raw = TopicReader(KafkaSettings(bootstrap), dest)
    try:
        begin, stop = raw.bounds()
        offsets = [source_position(r)[0] for r in raw.fetch(begin, stop, 1 << 30) if r.value]
    finally:
        raw.close()
    if len(offsets) != len(set(offsets)):
        c.find(f"{len(offsets) - len(set(offsets))} source offset(s) committed twice in the mirror topic")


def read_all(log: Any) -> list[tuple[int, bytes]]:
    """Every record of a log (a ``LogReader``), as (offset, value), from its start."""
    out: list[tuple[int, bytes]] = []
    at = log.start_offset()
    while True:
        recs = log.read(at, 10_000)
        if not recs:
            return out
        out.extend((r.offset, r.value) for r in recs)
        at = recs[-1].offset + 1
