"""Run one service under uvicorn (uvloop + httptools), with JSON logs and graceful shutdown."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from libs.common.logs import configure_logging
from libs.common.settings import ServiceSettings


def serve(app: FastAPI, settings: ServiceSettings, *, service: str) -> None:
    """Serve until SIGTERM/SIGINT; uvicorn then runs the lifespan shutdown (consumers finish their batch)."""
    configure_logging(service, settings.common.log_level)
    uvicorn.run(
        app, host=settings.host, port=settings.port, loop="uvloop", http="httptools", log_config=None,
        access_log=False, timeout_graceful_shutdown=20, server_header=False,
    )
