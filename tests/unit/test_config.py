"""dssync.toml: what the environment overrides for one process is never written back."""

from __future__ import annotations

from pathlib import Path

import pytest

from dssync import config as cfgmod
from dssync.errors import UsageError
from dssync.log.factory import peer_kafka_settings


def _home(tmp_path: Path) -> str:
    home = str(tmp_path / "h")
    Path(home).mkdir()
    cfg = cfgmod.Config(name="sh1", model="SH", software_version="1", store_id="s")
    cfg.kafka.bootstrap_servers = "10.0.0.1:9092"
    cfg.sync.peer_kafka = "10.9.0.1:9093"
    cfgmod.save(home, cfg)
    return home


def test_passwords_and_overrides_from_the_environment_are_used_but_never_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    monkeypatch.setenv("DSSYNC_KAFKA_PASSWORD", "kafka-pw-123")
    monkeypatch.setenv("DSSYNC_PEER_KAFKA_PASSWORD", "peer-pw-456")
    monkeypatch.setenv("DSSYNC_FSYNC", "never")
    monkeypatch.setenv("DSSYNC_SYNC_SECRET", "sync-secret-from-the-env")
    cfg = cfgmod.load(home)
    assert cfg.sync.secret == "sync-secret-from-the-env"
    assert (cfg.kafka.sasl_password, cfg.sync.peer_kafka_password, cfg.log.fsync) == (
        "kafka-pw-123", "peer-pw-456", "never")
    cfg.sync.peer = "10.0.0.2:7070"  # any change an operator saves, e.g. 'dssync sync configure'
    cfgmod.save(home, cfg)
    text = (Path(home) / cfgmod.FILENAME).read_text()
    assert "kafka-pw-123" not in text and "peer-pw-456" not in text and 'fsync = "always"' in text
    assert "sync-secret-from-the-env" not in text
    assert "10.0.0.2:7070" in text


def test_the_peer_site_uses_this_sites_settings_unless_it_has_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    cfg = cfgmod.load(home)
    same = peer_kafka_settings(cfg)
    assert same.bootstrap_servers == "10.9.0.1:9093" and same.security_protocol == "PLAINTEXT"
    cfg.sync.peer_kafka_security = "SASL_SSL:SCRAM-SHA-512:dssync"
    with pytest.raises(UsageError) as info:  # no password: a clear error before any connection
        peer_kafka_settings(cfg)
    assert "DSSYNC_PEER_KAFKA_PASSWORD" in info.value.message
    cfgmod.save(home, cfg)
    monkeypatch.setenv("DSSYNC_PEER_KAFKA_PASSWORD", "peer-pw")
    own = peer_kafka_settings(cfgmod.load(home))
    assert (own.security_protocol, own.sasl_mechanism, own.sasl_plain_username, own.sasl_plain_password) == (
        "SASL_SSL", "SCRAM-SHA-512", "dssync", "peer-pw")


def test_a_malformed_peer_security_spec_is_refused_when_saved(tmp_path: Path) -> None:
    home = _home(tmp_path)
    cfg = cfgmod.load(home)
    cfg.sync.peer_kafka_security = "SASL_SSL:SCRAM-SHA-512"
    with pytest.raises(UsageError, match="PROTOCOL:MECHANISM:USER"):
        cfgmod.save(home, cfg)


def test_the_store_memory_budget_defaults_to_one_gib_and_refuses_less_than_128_mib(tmp_path: Path) -> None:
    home = _home(tmp_path)
    cfg = cfgmod.load(home)
    assert cfg.store.memory_limit == 1 << 30
    cfg.store.memory_limit = 64 << 20
    with pytest.raises(UsageError, match="memory_limit"):
        cfg.validate()


@pytest.mark.parametrize("line, message", [
    ("segment_bytes = 67", r"\[log\] segment_bytes = 67 is out of range \(4096 to 4294967295\)"),
    ("pack_bytes = 6", r"\[store\] pack_bytes = 6 is out of range"),
    ('segment_bytes = "67108864"', r"\[log\] segment_bytes = '67108864' is not an int"),
    ("fsync = 1", r"\[log\] fsync = 1 is not a str"),
    ("interval_s = true", r"\[monitor\] interval_s = True is not a float"),
])
def test_a_value_out_of_range_or_of_another_type_is_refused_naming_the_file_and_setting(
        tmp_path: Path, line: str, message: str) -> None:
    """What a truncated or hand-edited dssync.toml holds is refused when it is read, naming the
    file and the setting, before any component uses it."""
    home = _home(tmp_path)
    path = Path(home) / cfgmod.FILENAME
    key = line.split(" = ")[0]
    text = "\n".join(line if ln.startswith(key + " = ") else ln for ln in path.read_text().splitlines())
    path.write_text(text + "\n")
    with pytest.raises(UsageError, match=message) as exc:
        cfgmod.load(home)
    assert exc.value.message.startswith(str(path)) and "restore the file" in exc.value.hint
    assert "--help" not in exc.value.hint


def test_a_monitor_threshold_written_as_an_integer_is_a_float_setting(tmp_path: Path) -> None:
    home = _home(tmp_path)
    path = Path(home) / cfgmod.FILENAME
    path.write_text(path.read_text().replace("interval_s = 5.0", "interval_s = 5"))
    assert cfgmod.load(home).monitor.interval_s == 5


def test_the_file_holding_the_secret_is_0600_in_a_0700_home_and_a_placeholder_secret_is_refused(
        tmp_path: Path) -> None:
    home = _home(tmp_path)
    assert Path(home).stat().st_mode & 0o777 == 0o700
    assert (Path(home) / cfgmod.FILENAME).stat().st_mode & 0o777 == 0o600
    cfg = cfgmod.load(home)
    cfg.sync.role, cfg.sync.peer, cfg.sync.listen = "master", "10.0.0.2:7070", "10.0.0.1:7070"
    cfg.sync.secret = "change-me-to-a-long-pair-secret"  # what a sample file ships
    with pytest.raises(UsageError, match="placeholder"):
        cfgmod.save(home, cfg)


def test_a_pair_whose_secret_lives_in_the_environment_loads_without_it_and_is_refused_where_the_link_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    cfg = cfgmod.load(home)
    cfg.sync.role, cfg.sync.peer, cfg.sync.listen = "master", "10.0.0.2:7070", "10.0.0.1:7070"
    monkeypatch.setenv("DSSYNC_SYNC_SECRET", "sync-secret-from-the-env")
    cfg.sync.secret = "sync-secret-from-the-env"
    cfg.from_env["sync.secret"] = ""  # what 'sync configure' does with a secret from the environment
    cfgmod.save(home, cfg)
    assert cfgmod.load(home).sync.check_secret() == "sync-secret-from-the-env"
    monkeypatch.delenv("DSSYNC_SYNC_SECRET")
    loaded = cfgmod.load(home)  # status, verify: no secret needed
    with pytest.raises(UsageError, match="DSSYNC_SYNC_SECRET") as info:
        loaded.sync.check_secret()
    assert "--secret-file" in (info.value.hint or "")
