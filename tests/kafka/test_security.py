"""SASL/SCRAM settings pass through to kafka-python: a real broker with SCRAM enabled."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest

from dssync.errors import BackendUnavailableError
from dssync.log.kafka import KafkaLog, KafkaSettings
from dssync.process import command
from tests.kafka_broker import free_port

pytestmark = pytest.mark.kafka


def _scram(broker: Any, password: str) -> KafkaSettings:
    return KafkaSettings(f"127.0.0.1:{broker.scram_port}", security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="dssync",
                         sasl_plain_password=password, timeout_ms=4000)


def test_the_right_scram_password_appends_and_reads(kafka_broker: Any) -> None:
    topic = f"scram-{uuid.uuid4().hex[:8]}"
    with KafkaLog(_scram(kafka_broker, "dssync-secret"), topic, writer=True, create=True) as log:
        base = log.append([b"over SCRAM"])
        assert log.read(base, 1)[0].value == b"over SCRAM"


def test_a_wrong_scram_password_is_refused_within_the_timeout(kafka_broker: Any, leaky_client: None) -> None:
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        KafkaLog(_scram(kafka_broker, "wrong"), "any-topic", writer=True, create=True)
    assert time.monotonic() - start < 30
    assert "credentials" in info.value.hint


def test_an_unreachable_bootstrap_address_is_a_clear_error_in_bounded_time() -> None:
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        KafkaLog(KafkaSettings(f"127.0.0.1:{free_port()}", timeout_ms=2000), "t", writer=True)
    assert time.monotonic() - start < 20
    assert "cannot reach Kafka" in info.value.message


def test_mirror_topic_reads_a_scram_source_with_the_password_from_the_environment(
        kafka_broker: Any, kafka_broker_b: Any) -> None:
    import subprocess

    from dssync.log.mirrored import MirroredTopic

    topic, dest = f"scram-src-{uuid.uuid4().hex[:8]}", f"mirror.scram-{uuid.uuid4().hex[:8]}"
    with KafkaLog(_scram(kafka_broker, "dssync-secret"), topic, writer=True, create=True) as log:
        for i in range(5):
            log.append([b"secured %d.%d" % (i, j) for j in range(20)])
    args = [*command(), "mirror-topic", "--from-kafka",
            f"127.0.0.1:{kafka_broker.scram_port}", "--from-topic", topic,
            "--from-security", "SASL_PLAINTEXT:SCRAM-SHA-256:dssync",
            "--to-kafka", kafka_broker_b.bootstrap, "--to-topic", dest, "--stop-when-idle"]
    missing = subprocess.run(args, capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "DSSYNC_FROM_KAFKA_PASSWORD"})
    assert missing.returncode == 2 and "DSSYNC_FROM_KAFKA_PASSWORD" in missing.stderr
    done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DSSYNC_FROM_KAFKA_PASSWORD": "dssync-secret"})
    assert done.returncode == 0, done.stderr
    with MirroredTopic(KafkaSettings(kafka_broker_b.bootstrap), dest) as mirrored:
        assert [r.value for r in mirrored.read(0, 1000)] == [b"secured %d.%d" % (i, j) for i in range(5)
                                                             for j in range(20)]


def test_a_peer_site_cluster_is_reached_with_its_own_scram_settings(
        kafka_broker: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, leaky_client: None) -> None:
    from dssync import config as cfgmod
    from dssync.log.factory import peer_kafka_settings

    home = str(tmp_path)
    cfg = cfgmod.Config(name="sh1", model="SH", software_version="1", store_id="s")
    cfg.kafka.bootstrap_servers = kafka_broker.bootstrap  # this site: plaintext
    cfg.sync.peer_kafka = f"127.0.0.1:{kafka_broker.scram_port}"  # the peer site: SCRAM
    cfg.sync.peer_kafka_security = "SASL_PLAINTEXT:SCRAM-SHA-256:dssync"
    cfgmod.save(home, cfg)
    topic = f"peer-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DSSYNC_PEER_KAFKA_PASSWORD", "dssync-secret")
    with KafkaLog(peer_kafka_settings(cfgmod.load(home)), topic, writer=True, create=True) as log:
        assert log.read(log.append([b"from the peer site"]), 1)[0].value == b"from the peer site"
    monkeypatch.setenv("DSSYNC_PEER_KAFKA_PASSWORD", "wrong")
    with pytest.raises(BackendUnavailableError):
        KafkaLog(peer_kafka_settings(cfgmod.load(home)), topic)
