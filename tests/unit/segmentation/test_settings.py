from decimal import Decimal

import pytest
from pydantic import ValidationError

from services.segmentation.settings import SegmentationSettings


def test_defaults_give_the_embedded_stack():
    settings = SegmentationSettings()

    assert settings.port == 8003
    assert settings.database_url == "sqlite+aiosqlite:///.data/segmentation.db"
    assert settings.membership.evaluation_interval_seconds == 300
    assert (settings.membership.gather_seconds, settings.membership.defer_while_lag_above) == (0.25, 10_000)
    assert (settings.lifecycle.new_days, settings.lifecycle.active_days, settings.lifecycle.dormant_days) == (
        30, 90, 180,
    )
    assert settings.tiers.thresholds().gold == Decimal(2000)


def test_thresholds_and_the_schedule_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SHOPLOOP_SEGMENTATION__LIFECYCLE__NEW_DAYS", "14")
    monkeypatch.setenv("SHOPLOOP_SEGMENTATION__TIERS__GOLD", "1500.50")
    monkeypatch.setenv("SHOPLOOP_SEGMENTATION__MEMBERSHIP__EVALUATION_INTERVAL_SECONDS", "60")

    settings = SegmentationSettings()

    assert settings.lifecycle.thresholds().new_days == 14
    assert settings.tiers.thresholds().gold == Decimal("1500.50")
    assert settings.membership.evaluation_interval_seconds == 60


@pytest.mark.parametrize("variable, value", [
    ("SHOPLOOP_SEGMENTATION__LIFECYCLE__ACTIVE_DAYS", "200"),  # beyond dormant_days
    ("SHOPLOOP_SEGMENTATION__TIERS__DIAMOND", "100"),  # below gold
    ("SHOPLOOP_SEGMENTATION__MEMBERSHIP__EVALUATION_INTERVAL_SECONDS", "301"),  # SPEC: at least every 5 minutes
])
def test_inconsistent_settings_are_refused(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError):
        SegmentationSettings()
