"""Structured JSON logs on stderr, one object per line."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from libs.common.request_ids import current_request_id

# Set by the runner for the processes it serves: "service:level".
SERVED_AS_ENV = "SHOPLOOP_SERVED_AS"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger (uvicorn's and aiokafka's included) through the JSON formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # aiokafka logs every reconnect attempt at ERROR; the runtime reports broker state itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL if level.upper() != "DEBUG" else logging.DEBUG)
    # httpx logs every request at INFO; the access line of the request that caused it says enough.
    logging.getLogger("httpx").setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)


def configure_served_process() -> None:
    """In a worker process the runner started (``workers > 1``), the logging its parent configured."""
    served_as = os.environ.get(SERVED_AS_ENV)
    if served_as and not any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        service, _, level = served_as.partition(":")
        configure_logging(service, level or "INFO")
        # As the runner's access_log=False does in the parent: the request-id middleware writes the access line.
        logging.getLogger("uvicorn.access").propagate = False
