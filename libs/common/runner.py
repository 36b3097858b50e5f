"""Run one service under uvicorn (uvloop + httptools), with JSON logs and graceful shutdown."""

from __future__ import annotations

import os

import uvicorn

from libs.common.logs import SERVED_AS_ENV, configure_logging
from libs.common.settings import ServiceSettings


def serve(app_factory: str, settings: ServiceSettings, *, service: str) -> None:
    """Serve ``module:factory`` until SIGTERM/SIGINT; shutdown lets consumers finish their batch.

    With ``workers > 1`` uvicorn starts that many processes, each building its own app from the
    environment (so settings must come from the environment, as they do in deployments).
    """
    configure_logging(service, settings.common.log_level)
    # Worker processes (workers > 1) build the app afresh: create_app configures their logging from this.
    os.environ[SERVED_AS_ENV] = f"{service}:{settings.common.log_level}"
    uvicorn.run(
        app_factory, factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        loop="uvloop", http="httptools", log_config=None, access_log=False, proxy_headers=False,
        timeout_graceful_shutdown=20, server_header=False,
    )
