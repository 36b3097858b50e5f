"""Settings of the segmentation service (``SHOPLOOP_SEGMENTATION__...``)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings
from services.segmentation.domain.customers import LifecycleThresholds, TierThresholds
from services.segmentation.domain.rules import MAX_DEPTH, MAX_IN_VALUES, MAX_NODES, RuleLimits


class LifecycleSettings(BaseModel):
    """Day thresholds of the lifecycle stages (SPEC.md "Customers": defaults 30/90/180)."""

    new_days: int = Field(default=30, ge=0)
    active_days: int = Field(default=90, ge=0)
    dormant_days: int = Field(default=180, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleSettings:
        self.thresholds()  # raises ValueError with the reason
        return self

    def thresholds(self) -> LifecycleThresholds:
        return LifecycleThresholds(self.new_days, self.active_days, self.dormant_days)


class TierSettings(BaseModel):
    """Membership tiers by gmv in the 365-day lookback: silver above, gold and diamond at or above."""

    silver: Decimal = Field(default=Decimal(0), ge=0)
    gold: Decimal = Field(default=Decimal(2000), ge=0)
    diamond: Decimal = Field(default=Decimal(10000), ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> TierSettings:
        self.thresholds()
        return self

    def thresholds(self) -> TierThresholds:
        return TierThresholds(self.silver, self.gold, self.diamond)


class MembershipSettings(BaseModel):
    """When segment membership is re-evaluated and its changes published on shoploop.segments.v1."""

    # SPEC.md "API surface": time-driven membership is re-evaluated at least every 5 minutes.
    evaluation_interval_seconds: float = Field(default=300.0, gt=0, le=300)
    # Persons whose events were just applied are re-evaluated as soon as the consumer's transaction commits,
    # unless the consumer is this many records behind: then they wait until it has caught up.
    evaluate_after_events: bool = True
    # Persons with new facts are gathered this long before they are evaluated together: each evaluation
    # ranks them against the whole RFM population, so it should not run for every consumer batch.
    gather_seconds: float = Field(default=0.25, ge=0)
    defer_while_lag_above: int = Field(default=10_000, ge=0)  # two consumer batches
    publish_batch: int = Field(default=5000, ge=1)


class RuleSegmentSettings(BaseModel):
    """Bounds on operators' rule segments: every one is evaluated for every customer in every round."""

    max_segments: int = Field(default=100, ge=1, le=10_000)
    max_rule_depth: int = Field(default=MAX_DEPTH, ge=1, le=50)
    max_rule_nodes: int = Field(default=MAX_NODES, ge=1, le=10_000)
    max_in_values: int = Field(default=MAX_IN_VALUES, ge=1, le=100_000)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    def limits(self) -> RuleLimits:
        return RuleLimits(max_depth=self.max_rule_depth, max_nodes=self.max_rule_nodes,
                          max_in_values=self.max_in_values)


class SegmentationSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHOPLOOP_SEGMENTATION__", env_nested_delimiter="__", extra="ignore"
    )

    port: int = 8003
    database_url: str = "sqlite+aiosqlite:///.data/segmentation.db"
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    tiers: TierSettings = Field(default_factory=TierSettings)
    membership: MembershipSettings = Field(default_factory=MembershipSettings)
    rule_segments: RuleSegmentSettings = Field(default_factory=RuleSegmentSettings)
