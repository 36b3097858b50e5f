from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings

# The services behind the gateway (SPEC.md "Services and ports"), in the order the health view lists them.
BACKENDS = ("ingest", "funnel", "segmentation", "campaigns")


class GatewaySettings(ServiceSettings):
    """Where each service answers (an empty URL: not deployed) and how long the gateway waits for it."""

    model_config = SettingsConfigDict(env_prefix="SHOPLOOP_GATEWAY__", env_nested_delimiter="__", extra="ignore")

    port: int = 8000
    database_url: str = ""  # the gateway keeps no state
    ingest_url: str = "http://127.0.0.1:8001"
    funnel_url: str = "http://127.0.0.1:8002"
    segmentation_url: str = "http://127.0.0.1:8003"
    campaigns_url: str = "http://127.0.0.1:8004"
    # Whole-request timeouts per service: posting events waits for the broker's acknowledgement.
    ingest_timeout_seconds: float = Field(default=30.0, gt=0)
    funnel_timeout_seconds: float = Field(default=30.0, gt=0)
    segmentation_timeout_seconds: float = Field(default=30.0, gt=0)
    campaigns_timeout_seconds: float = Field(default=30.0, gt=0)
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    # A part of the overview (or of the health view) slower than this is marked unavailable.
    part_timeout_seconds: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=200, ge=1)
    max_keepalive_connections: int = Field(default=50, ge=0)
    # Campaign summaries in the overview: the most recently created ones.
    overview_campaigns: int = Field(default=20, ge=0, le=100)

    def backend_url(self, name: str) -> str:
        return getattr(self, f"{name}_url").rstrip("/")

    def backend_timeout(self, name: str) -> float:
        return getattr(self, f"{name}_timeout_seconds")
