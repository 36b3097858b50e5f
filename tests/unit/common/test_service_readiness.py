"""A service without state of its own (database None: no database, no broker connection) is ready on its own
terms instead of reporting a database and a broker it never had."""

from __future__ import annotations

from libs.common.service import Service
from libs.common.settings import CommonSettings, ServiceSettings


async def test_a_stateless_service_reports_no_database_or_broker_checks():
    service = Service("stateless", ServiceSettings(common=CommonSettings(env="local")), database=None)
    ready, body = await service.readiness()
    assert "database" not in body["checks"] and "broker" not in body["checks"]
    assert ready and body["status"] == "ready"
    service.draining = True
    ready, body = await service.readiness()
    assert not ready and body["checks"] == {"draining": "stopping: writes are refused"}
