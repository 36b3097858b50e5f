from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings

# A DuckDB memory size (memory_limit), e.g. "512MB".
MEMORY_SIZE_PATTERN = r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"


class FunnelSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPLOOP_FUNNEL__", env_nested_delimiter="__", extra="ignore")

    port: int = 8002
    database_url: str = "sqlite+aiosqlite:///.data/funnel.db"
    # Each worker process is also a member of the consumer group, like a replica; one suffices on one machine.
    workers: int = Field(default=1, ge=1, le=64)
    # granularity=day answers one entry per day: bound the answer's size.
    max_days: int = Field(default=366, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    # Stored event rows one answer computed in Python (a funnel the DuckDB engine declines: two steps one event
    # could match) may read; past it the request is refused with 422 (a shorter range answers), not the process's memory spent.
    max_report_rows: int = Field(default=2_000_000, ge=1)
    # How long a KPI or funnel request waits for the DuckDB copy's first load before answering 503.
    fact_copy_wait_seconds: float = Field(default=5.0, gt=0)
    # Where the DuckDB copy of the facts keeps its file (a directory of the service's own); None keeps it in
    # memory and rebuilds it from the database at every start. On disk its size is bounded by disk, not RAM,
    # and a restart catches up from the seq it had reached.
    fact_copy_dir: str | None = None
    # DuckDB's buffer pool for the copy (e.g. "384MB"): on disk, the copy's memory stays within it (queries
    # that need more spill to a temporary directory beside the file). DuckDB keeps the buffers it freed up to it,
    # so the process's resident memory settles near its Python part plus this (docs/funnel.md, session 12).
    fact_copy_memory_limit: str = Field(default="384MB", pattern=MEMORY_SIZE_PATTERN)
    # The buffer pool while the first load from PostgreSQL reads every row and folds them, committed in steps:
    # that load sets the process's peak memory (docs/funnel.md "The first load's buffer pool"). A load that runs
    # out of it (any DuckDB error) is retried in one transaction under ``fact_copy_retry_memory_limit``.
    fact_copy_load_memory_limit: str = Field(default="256MB", pattern=MEMORY_SIZE_PATTERN)
    # The buffer pool of that retry (the pool in which one transaction completed the first load at 30M events).
    fact_copy_retry_memory_limit: str = Field(default="512MB", pattern=MEMORY_SIZE_PATTERN)
    fact_copy_threads: int = Field(default=2, ge=1, le=64)
    # The longest pause between two attempts of a copy sync that keeps failing (the pause doubles from 0.25 s
    # at each failure in a row): a failed first load exports every row again at each attempt.
    fact_copy_retry_max_seconds: float = Field(default=60.0, gt=0, le=3600)
