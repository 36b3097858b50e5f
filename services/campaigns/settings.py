"""Settings of the campaigns service (``SHOPLOOP_CAMPAIGNS__...``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class FrequencyCapSettings(BaseModel):
    """SPEC.md "Campaigns: Touches": at most ``max_touches`` touches per person per ``per_days`` days, across
    every campaign; a touch over the cap is recorded as ``suppressed``."""

    max_touches: int = Field(default=3, ge=1, le=1000)
    per_days: int = Field(default=7, ge=1, le=365)


class WebhookSettings(BaseModel):
    """Delivery of touches to a campaign's webhook URL (Standard Webhooks v1)."""

    # SPEC.md "Webhooks": 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; retries exhausted after the last one.
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0], min_length=1,
        max_length=50,
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Touches POSTed at once by one replica (one shared HTTP client, this many connections).
    concurrency: int = Field(default=64, ge=1, le=1000)
    # A claimed touch is not claimed again by another replica for this long (a replica killed mid-send leaves
    # its claim behind; the touch is sent again after the lease, under the same webhook-id).
    claim_lease_seconds: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must be >= 0 seconds")
        return value


class SchedulerSettings(BaseModel):
    """Due work (scheduled sends, abandonment deadlines, end_at, deliveries and retries) is in the database; each
    replica looks for it this often, and sooner when the consumer or an API call adds some."""

    poll_seconds: float = Field(default=1.0, gt=0, le=60)
    batch: int = Field(default=500, ge=1, le=100_000)


class CampaignsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPLOOP_CAMPAIGNS__", env_nested_delimiter="__", extra="ignore")

    port: int = 8004
    database_url: str = "sqlite+aiosqlite:///.data/campaigns.db"
    # SPEC.md "Assignment": a deployment-wide holdout (buckets of "global:{person_key}") that enters no campaign.
    global_holdout_bp: int = Field(default=0, ge=0, le=10_000)
    frequency_cap: FrequencyCapSettings = Field(default_factory=FrequencyCapSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    # Tests and demos move the service's notion of now (deadlines, send_at, end_at, expiry, the report's default
    # as_of) by this many seconds; refused outside local and test mode. Webhook timestamps stay real time.
    clock_offset_seconds: float = 0.0

    @model_validator(mode="after")
    def _clock_moves_only_in_local_and_test(self) -> CampaignsSettings:
        if self.clock_offset_seconds and self.common.env not in ("local", "test"):
            raise ValueError(f"clock_offset_seconds: only in local or test mode, not SHOPLOOP_ENV={self.common.env}")
        return self
