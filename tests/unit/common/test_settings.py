"""Settings from SHOPLOOP_ environment variables; dev API keys refused outside local mode (SPEC.md "Auth")."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from libs.common.settings import DEV_API_KEYS, CommonSettings
from services.ingest.settings import IngestSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No SHOPLOOP_ variable from the machine running the tests leaks into these."""
    for name in list(os.environ):
        if name.startswith("SHOPLOOP_"):
            monkeypatch.delenv(name)


def test_defaults_give_the_embedded_local_stack():
    settings = CommonSettings()
    assert settings.env == "local"
    assert settings.api_keys == DEV_API_KEYS
    assert settings.currency == "CNY"
    assert settings.timezone == "UTC"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"


def test_reads_shoploop_environment_variables(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_CURRENCY", "USD")
    monkeypatch.setenv("SHOPLOOP_TIMEZONE", "Asia/Shanghai")
    monkeypatch.setenv("SHOPLOOP_API_KEYS", "mine:admin")
    settings = CommonSettings()
    assert settings.currency == "USD"
    assert settings.timezone == "Asia/Shanghai"
    assert settings.zone.key == "Asia/Shanghai"
    assert settings.api_keys == "mine:admin"


def test_reads_nested_kafka_settings_with_double_underscore(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("SHOPLOOP_KAFKA__TOPIC_PARTITIONS", "24")
    settings = CommonSettings()
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka.topic_partitions == 24
    assert settings.kafka.linger_ms == 2  # untouched nested values keep their defaults


def test_currency_must_be_a_three_letter_code(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_CURRENCY", "rmb")
    with pytest.raises(ValidationError, match="currency"):
        CommonSettings()


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Asia/Shanghai "])
def test_unknown_time_zone_is_refused(monkeypatch, zone):
    monkeypatch.setenv("SHOPLOOP_TIMEZONE", zone)
    with pytest.raises(ValidationError) as error:
        CommonSettings()
    assert f"unknown IANA time zone {zone!r}" in str(error.value)


def test_dev_keys_are_allowed_in_local_mode(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_ENV", "local")
    assert CommonSettings().api_keys == DEV_API_KEYS


@pytest.mark.parametrize("env", ["test", "staging", "production"])
def test_default_dev_keys_are_refused_outside_local_mode(monkeypatch, env):
    monkeypatch.setenv("SHOPLOOP_ENV", env)
    with pytest.raises(ValidationError) as error:
        CommonSettings()
    message = str(error.value)
    assert f"SHOPLOOP_ENV={env}: refusing to start" in message
    for key in ("dev-admin-key", "dev-campaigns-key", "dev-ingest-key", "dev-read-key"):
        assert key in message


@pytest.mark.parametrize("dev_key", ["dev-admin-key", "dev-ingest-key", "dev-read-key", "dev-campaigns-key"])
@pytest.mark.parametrize("env", ["test", "staging", "production"])
def test_any_single_dev_key_is_refused_outside_local_mode_and_named(monkeypatch, env, dev_key):
    monkeypatch.setenv("SHOPLOOP_ENV", env)
    # Even granted another scope, a published dev key is still a known secret.
    monkeypatch.setenv("SHOPLOOP_API_KEYS", f"s3cret-own-key:admin;{dev_key}:read")
    with pytest.raises(ValidationError) as error:
        CommonSettings()
    assert f"development API keys ({dev_key})" in str(error.value)


@pytest.mark.parametrize("env", ["staging", "production"])
def test_own_keys_are_accepted_outside_local_mode(monkeypatch, env):
    monkeypatch.setenv("SHOPLOOP_ENV", env)
    monkeypatch.setenv("SHOPLOOP_API_KEYS", "prod-ingest-7f3a:ingest;prod-ops-91bc:admin")
    settings = CommonSettings()
    assert settings.env == env
    assert settings.api_keys == "prod-ingest-7f3a:ingest;prod-ops-91bc:admin"


def test_unknown_env_is_refused(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_ENV", "prod")
    with pytest.raises(ValidationError, match="env"):
        CommonSettings()


# --- ingest ---------------------------------------------------------------------------------------


def test_ingest_defaults():
    settings = IngestSettings()
    assert settings.port == 8001
    assert settings.limits.max_event_bytes == 32 * 1024
    assert settings.limits.max_request_bytes == 500 * 1024
    assert settings.limits.max_events_per_request == 2500


def test_ingest_reads_its_own_prefixed_variables(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_INGEST__DATABASE_URL", "postgresql+asyncpg://db/ingest")
    monkeypatch.setenv("SHOPLOOP_INGEST__LIMITS__MAX_EVENTS_PER_REQUEST", "100")
    settings = IngestSettings()
    assert settings.database_url == "postgresql+asyncpg://db/ingest"
    assert settings.limits.max_events_per_request == 100
    assert settings.limits.max_event_bytes == 32 * 1024


def test_ingest_does_not_read_unprefixed_service_variables(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_DATABASE_URL", "postgresql+asyncpg://wrong/db")
    assert IngestSettings().database_url == "sqlite+aiosqlite:///.data/ingest.db"


def test_ingest_carries_the_shared_settings(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_CURRENCY", "EUR")
    monkeypatch.setenv("SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    settings = IngestSettings()
    assert settings.common.currency == "EUR"
    assert settings.common.kafka.bootstrap_servers == "kafka:9092"


def test_ingest_refuses_a_burst_smaller_than_a_full_request(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_INGEST__LIMITS__MAX_EVENTS_PER_REQUEST", "500")
    monkeypatch.setenv("SHOPLOOP_INGEST__RATE_LIMIT__BURST", "499")
    with pytest.raises(ValidationError) as error:
        IngestSettings()
    assert "rate_limit.burst must be >= limits.max_events_per_request" in str(error.value)


def test_ingest_accepts_a_burst_equal_to_a_full_request(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_INGEST__LIMITS__MAX_EVENTS_PER_REQUEST", "500")
    monkeypatch.setenv("SHOPLOOP_INGEST__RATE_LIMIT__BURST", "500")
    assert IngestSettings().rate_limit.burst == 500


def test_ingest_settings_can_be_overridden_in_code():
    settings = IngestSettings(database_url="sqlite+aiosqlite:///:memory:", limits={"max_events_per_request": 3})
    assert settings.database_url == "sqlite+aiosqlite:///:memory:"
    assert settings.limits.max_events_per_request == 3
