"""Settings shared by every service, and the base each service's settings extend.

Shared values use the prefix ``SHOPLOOP_`` (``SHOPLOOP_API_KEYS``, ``SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS``);
a service's own values use ``SHOPLOOP_<SERVICE>__`` (``SHOPLOOP_INGEST__DATABASE_URL``).
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_API_KEYS = "dev-admin-key:admin;dev-ingest-key:ingest;dev-read-key:read;dev-campaigns-key:campaigns"


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    # tansu (the embedded broker) does not implement the idempotent producer; Apache Kafka does.
    enable_idempotence: bool = False
    topic_partitions: int = Field(default=8, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    request_timeout_ms: int = Field(default=10_000, ge=100)
    linger_ms: int = Field(default=2, ge=0)
    max_batch_bytes: int = Field(default=1_048_576, ge=16_384)
    client_id_prefix: str = "shoploop"
    # Group joins on tansu take about half the session timeout; 6 s is also Apache Kafka's minimum.
    session_timeout_ms: int = Field(default=6_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=600, ge=100)
    # Every producer compresses its batches. The default was chosen by measurement (docs/benchmarks.md, "Producer
    # compression"): the embedded broker keeps every record in memory, and compressed batches are what it keeps;
    # zstd kept the least (3.4x less than none) at the throughput of none.
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    # Consumers: retries of a batch failing on a lock or conflict (SQLite busy, PostgreSQL deadlock) before it is
    # split to find a record at fault. An unreachable database or broker is retried without limit instead.
    transient_retries: int = Field(default=5, ge=0, le=100)


class CommonSettings(BaseSettings):
    """Values every service reads under the ``SHOPLOOP_`` prefix."""

    # hide_input_in_errors: a start-up error must not print SHOPLOOP_API_KEYS (or a password in a URL).
    model_config = SettingsConfigDict(env_prefix="SHOPLOOP_", env_nested_delimiter="__", extra="ignore",
                                      hide_input_in_errors=True)

    env: Literal["local", "test", "staging", "production"] = "local"
    api_keys: str = DEV_API_KEYS
    currency: str = Field(default="CNY", pattern=r"^[A-Z]{3}$")
    timezone: str = "UTC"
    # One request's from/to range at most (about 3 years): keeps every report's work bounded.
    max_range_days: int = Field(default=1096, ge=1, le=36_600)
    log_level: str = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    # Set by the embedded launcher (deploy/embedded.py): a directory where each service process registers itself
    # and where a file named ``drain`` asks every process to refuse new writes and report when its last one is
    # done (so that the stack stops only once everything answered 200/202 has been read), and the embedded
    # broker's process id (its resident memory is shown on /readyz and /metrics).
    control_dir: str | None = None
    embedded_broker_pid: int | None = Field(default=None, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _no_dev_keys_outside_local(self) -> CommonSettings:
        from libs.common.auth import parse_api_keys

        # Parsed here, in every mode: a bad entry stops the process before any server (or worker) starts.
        keys = set(parse_api_keys(self.api_keys))
        # Only the embedded stack on a developer's machine may run with the published keys; "test" may not.
        if self.env == "local":
            return self
        dev_keys = set(parse_api_keys(DEV_API_KEYS))
        used = sorted(dev_keys & keys)
        if used:
            raise ValueError(
                f"SHOPLOOP_ENV={self.env}: refusing to start with the embedded stack's development API keys "
                f"({', '.join(used)}); set SHOPLOOP_API_KEYS to your own keys"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class ServiceSettings(BaseSettings):
    """Base of each service's settings; subclasses set ``env_prefix`` to ``SHOPLOOP_<NAME>__``."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1, le=64)
    database_url: str = "sqlite+aiosqlite:///.data/shoploop.db"
    common: CommonSettings = Field(default_factory=CommonSettings)
