from __future__ import annotations

import logging

import orjson

from libs.common.logs import JsonFormatter


def _record(message: str, **extra) -> logging.LogRecord:
    record = logging.LogRecord("shoploop.test", logging.WARNING, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_log_lines_are_json_with_service_level_and_extra_fields():
    line = JsonFormatter("ingest").format(_record("broker not reachable", error="connection refused", attempt=3))
    entry = orjson.loads(line)
    assert entry["service"] == "ingest"
    assert entry["level"] == "warning"
    assert entry["message"] == "broker not reachable"
    assert (entry["error"], entry["attempt"]) == ("connection refused", 3)
    assert entry["time"].endswith("+00:00")


def test_exceptions_are_kept_in_the_json_line():
    try:
        raise ValueError("bad record")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = orjson.loads(JsonFormatter("funnel").format(record))
    assert "ValueError: bad record" in entry["exception"]
