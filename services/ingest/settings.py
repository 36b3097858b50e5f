from __future__ import annotations

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class Limits(BaseModel):
    max_event_bytes: int = Field(default=32 * 1024, ge=1024)
    max_request_bytes: int = Field(default=500 * 1024, ge=1024)
    max_events_per_request: int = Field(default=2500, ge=1)


class RateLimit(BaseModel):
    """Token bucket per API key, counted in events (a batch of 100 costs 100)."""

    # Shared by every worker and replica (kept in the ingest's database). Bounded so the whole-micro-token
    # arithmetic of the rule stays far inside 64-bit integers.
    events_per_second: float = Field(default=50_000, ge=0.001, le=10_000_000)
    burst: int = Field(default=100_000, ge=1, le=10_000_000)


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPLOOP_INGEST__", env_nested_delimiter="__", extra="ignore")

    port: int = 8001
    # Stateless: one process per core (this service is CPU-bound on JSON and validation).
    workers: int = Field(default=2, ge=1, le=64)
    database_url: str = "sqlite+aiosqlite:///.data/ingest.db"
    limits: Limits = Field(default_factory=Limits)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    publish_timeout_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _burst_fits_a_request(self) -> IngestSettings:
        if self.rate_limit.burst < self.limits.max_events_per_request:
            raise ValueError("rate_limit.burst must be >= limits.max_events_per_request, or big requests never pass")
        return self
