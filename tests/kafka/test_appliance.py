"""An appliance whose log lives in a real Kafka topic: same store, same guarantees."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from dssync.appliance import Appliance
from dssync.config import KafkaConfig
from dssync.schemas import codec
from tests.conftest import run_dssync
from tests.kafka_broker import KAFKA_PY, Broker, start_broker

pytestmark = pytest.mark.kafka


def _home(tmp_path: Path, broker: Any, name: str) -> str:
    home = str(tmp_path / name)
    run_dssync("init", home, "--name", name, "--model", "SH", "--version", "1", "--kafka", broker.bootstrap,
               "--kafka-topic-prefix", f"t{os.getpid()}-{tmp_path.name[:20]}.")
    return home


def test_ingest_replay_and_verify_on_a_kafka_log(tmp_path: Path, kafka_broker: Any) -> None:
    home = _home(tmp_path, kafka_broker, "ka1")
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3_000_000))
    first = json.loads(run_dssync("ingest", home, str(data), "--json").stdout)
    again = json.loads(run_dssync("ingest", home, str(data), "--json").stdout)
    assert first["new_segment_bytes"] == 3_000_000 and again["savings"] > 0.999
    status = json.loads(run_dssync("status", home, "--json").stdout)
    assert status["apply_lag_records"] == 0 and status["log_end_offset"] > first["events"]
    assert json.loads(run_dssync("verify", home, "--json").stdout)["ok"]
    digest = json.loads(run_dssync("inspect", "store", home, "--json").stdout)["digest"]
    assert json.loads(run_dssync("replay", home, "--json").stdout)["digest"] == digest


def test_the_store_position_is_visible_to_kafka_consumer_group_tools(tmp_path: Path, kafka_broker: Any) -> None:
    home = _home(tmp_path, kafka_broker, "ka2")
    run_dssync("ingest", home, "-", input_bytes=os.urandom(500_000))
    with Appliance(home) as app:
        committed = app.store.committed(app.source)
        topic = app.config.kafka.topic_prefix + "ka2"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        offsets = admin.list_group_offsets("dssync-store-ka2")["dssync-store-ka2"]
    finally:
        admin.close()
    assert offsets[TopicPartition(topic, 0)].offset == committed


def test_lag_on_kafka_equals_the_consumer_group_lag_kafka_tools_report(tmp_path: Path, kafka_broker: Any) -> None:
    from dssync.log.kafka import KafkaLog
    from dssync.schemas import encode

    home = _home(tmp_path, kafka_broker, "ka4")
    run_dssync("ingest", home, "-", input_bytes=os.urandom(300_000))
    with Appliance(home) as app:
        topic = app.config.kafka.topic_prefix + "ka4"
        settings = app.log.settings
    writer = KafkaLog(settings, topic, writer=True)  # events the store has not applied yet
    try:
        for i in range(3):
            writer.append([encode("HeartbeatSent", {"origin": "ka4", "hlc": 1 << 40, "sent_ms": i})] * 5)
    finally:
        writer.close()
    code = run_dssync("lag", home, "--json", check=False)
    report = json.loads(code.stdout)
    ours = report["paths"]["store:ka4"]
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, isolation_level="read_committed")
    try:
        group = admin.list_group_offsets("dssync-store-ka4")["dssync-store-ka4"][TopicPartition(topic, 0)].offset
        end = consumer.end_offsets([TopicPartition(topic, 0)])[TopicPartition(topic, 0)]
    finally:
        admin.close()
        consumer.close()
    assert ours["lag_records"] == end - group > 15  # 15 events and their transaction markers
    assert ours["status"] == "stopped" and code.returncode == 2  # no service applies them
    assert ours["lag_seconds"] >= 0 and ours["lag_bytes"] > 0


def test_records_decode_with_a_plain_consumer_and_the_avsc_files(tmp_path: Path, kafka_broker: Any) -> None:
    home = _home(tmp_path, kafka_broker, "ka3")
    run_dssync("ingest", home, "-", input_bytes=os.urandom(200_000))
    with Appliance(home) as app:
        topic = app.config.kafka.topic_prefix + "ka3"
    schemas = {}
    directory = os.path.join(os.path.dirname(codec.__file__), "avro")
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            parsed = fastavro.parse_schema(json.load(f))
        fp = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(parsed), "CRC-64-AVRO")
        schemas[int(fp, 16).to_bytes(8, "little")] = parsed
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, isolation_level="read_committed",
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    consumer.assign([TopicPartition(topic, 0)])
    kinds = []
    try:
        for msg in consumer:
            assert msg.value[:2] == b"\xc3\x01"  # Avro single-object encoding
            rec = fastavro.schemaless_reader(io.BytesIO(msg.value[10:]), schemas[msg.value[2:10]], None)
            kinds.append(rec["origin"])
            assert dict(msg.headers)["origin"] == b"ka3"
    finally:
        consumer.close()
    assert kinds and set(kinds) == {"ka3"}


def test_a_broker_stopped_mid_stream_costs_no_event_and_duplicates_none(tmp_path: Path) -> None:
    broker: Broker = start_broker("restart")
    try:
        home = _home(tmp_path, broker, "ka4")
        parts = [os.urandom(400_000) for _ in range(3)]
        run_dssync("ingest", home, "-", input_bytes=parts[0])
        broker.stop(remove=False)
        down = run_dssync("ingest", home, "-", check=False, input_bytes=parts[1])
        assert down.returncode == 10 and b"cannot reach Kafka" in down.stderr and b"Traceback" not in down.stderr
        subprocess.run([sys.executable, KAFKA_PY, "start", broker.name, "--port", str(broker.port),
                        "--keep-data"], check=True, capture_output=True)
        for p in parts[1:]:
            run_dssync("ingest", home, "-", input_bytes=p)
        doc = json.loads(run_dssync("verify", home, "--json").stdout)
        assert doc["ok"] and doc["events"]["SegmentStored"] == json.loads(
            run_dssync("status", home, "--json").stdout)["store"]["live_segments"]
    finally:
        broker.stop()


def test_init_against_a_broker_that_is_down_leaves_nothing_behind(tmp_path: Path) -> None:
    from tests.kafka_broker import free_port

    home = tmp_path / "nope"
    p = run_dssync("init", str(home), "--name", "x", "--kafka", f"127.0.0.1:{free_port()}", check=False)
    assert p.returncode == 10 and b"cannot reach Kafka" in p.stderr and not home.exists()


def test_kafka_settings_are_saved_without_the_password(tmp_path: Path, kafka_broker: Any) -> None:
    cfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{kafka_broker.scram_port}", security_protocol="SASL_PLAINTEXT",
                      sasl_mechanism="SCRAM-SHA-256", sasl_username="dssync", topic_prefix=f"scram{os.getpid()}.")
    os.environ["DSSYNC_KAFKA_PASSWORD"] = "dssync-secret"
    try:
        with Appliance.create(str(tmp_path / "ks"), "ks", "SH", "1", kafka=cfg) as app:
            app.ingest(io.BytesIO(os.urandom(100_000)))
    finally:
        del os.environ["DSSYNC_KAFKA_PASSWORD"]
    assert "dssync-secret" not in (tmp_path / "ks" / "dssync.toml").read_text()


def test_bench_kafka_makes_its_events_as_it_appends_them_with_the_segment_size_asked(kafka_broker: Any) -> None:
    doc = json.loads(run_dssync("bench", "kafka", "--events", "1700", "--segment-bytes", "96", "--no-mirror",
                                "--bootstrap", kafka_broker.bootstrap, "--json").stdout)
    assert doc["events"] == 1700 and doc["segment_bytes"] == 96 and "mirror" not in doc
    assert 1700 * 96 < doc["bytes"] < 1700 * (96 + 120)  # each event: its segment and its header fields
    assert doc["append"]["system"] > 0 and doc["replay"]["baseline"] > 0


def test_bench_kafka_compares_the_kafka_log_with_the_embedded_log(kafka_broker: Any) -> None:
    doc = json.loads(run_dssync("bench", "kafka", "--events", "3000", "--bootstrap", kafka_broker.bootstrap,
                                "--steady-seconds", "2", "--json").stdout)
    for case in ("append", "replay"):
        c = doc[case]
        assert c["system"] > 0 and c["baseline"] > 0
        assert c["ratio"] == pytest.approx(c["system"] / c["baseline"], rel=0.05)
    m = doc["mirror"]  # against MirrorMaker 2 in three modes, on a second broker the bench started
    sides = ("dssync", "mirrormaker2", "mirrormaker2_read_committed", "mirrormaker2_exactly_once")
    assert {m[side]["records"] for side in sides} == {m["dssync"]["records"]} and m["dssync"]["records"] >= 3000
    assert m["ratio"] == pytest.approx(m["system"] / m["baseline"], rel=0.05)
    for side in sides:  # latency of 1000 probe records each
        lat = m[side]["latency_ms"]
        assert lat["samples"] == 1000 and 0 < lat["p50"] <= lat["p99"]
    # an aborted source transaction: default MirrorMaker 2 (source read uncommitted) copies it,
    # the mirrors that read committed records only do not
    assert m["mirrormaker2"]["aborted_records_copied"] >= m["aborted_records"] > 0
    assert [m[side]["aborted_records_copied"] for side in sides if side != "mirrormaker2"] == [0, 0, 0]
