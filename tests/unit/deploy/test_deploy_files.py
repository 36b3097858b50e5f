"""Static checks of the files written for users with Docker (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from libs.common.settings import CommonSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SHOPLOOP_SERVICES = {name: spec for name, spec in COMPOSE["services"].items() if name not in ("kafka", "postgres")}


def _setting_names(model: type[BaseModel], prefix: str) -> set[str]:
    """Every environment variable name a settings class reads, nested models included."""
    names = set()
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and not issubclass(
            annotation, BaseSettings
        ):
            names |= _setting_names(annotation, f"{name}__")
        elif not (isinstance(annotation, type) and issubclass(annotation, BaseSettings)):
            names.add(name)
    return names


def _service_settings(name: str) -> type[ServiceSettings]:
    module = __import__(f"services.{name}.settings", fromlist=["*"])
    return next(value for value in vars(module).values()
                if isinstance(value, type) and issubclass(value, ServiceSettings) and value is not ServiceSettings)


def test_every_service_with_an_entry_point_is_in_docker_compose():
    runnable = {path.parent.name for path in (ROOT / "services").glob("*/__main__.py")}
    assert runnable <= set(SHOPLOOP_SERVICES)


@pytest.mark.parametrize("name", sorted(SHOPLOOP_SERVICES))
def test_compose_service_runs_its_own_module_and_sets_only_known_settings(name):
    spec = SHOPLOOP_SERVICES[name]
    assert spec["command"] == ["python", "-m", f"services.{name}"]
    assert (ROOT / "services" / name / "__main__.py").is_file()
    known = _setting_names(CommonSettings, "SHOPLOOP_") | _setting_names(
        _service_settings(name), f"SHOPLOOP_{name.upper()}__"
    )
    unknown = {key for key in spec["environment"] if key.startswith("SHOPLOOP_")} - known
    assert not unknown, f"{name}: settings no code reads (typo?): {sorted(unknown)}"
    port = _service_settings(name).model_fields["port"].default
    assert f"{port}:{port}" in spec["ports"]


def test_compose_runs_outside_local_mode_with_idempotent_producer_and_no_dev_keys():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "dev-admin-key" not in text and "dev-ingest-key" not in text
    env = SHOPLOOP_SERVICES["ingest"]["environment"]
    assert env["SHOPLOOP_ENV"] == "production"
    assert env["SHOPLOOP_KAFKA__ENABLE_IDEMPOTENCE"] == "true"


def test_compose_gateway_reaches_services_of_this_file_only():
    env = SHOPLOOP_SERVICES["gateway"]["environment"]
    for backend in ("ingest", "funnel", "segmentation", "campaigns"):
        url = env[f"SHOPLOOP_GATEWAY__{backend.upper()}_URL"]
        port = _service_settings(backend).model_fields["port"].default if url else None
        assert url in ("", f"http://{backend}:{port}"), backend
        assert bool(url) == (backend in SHOPLOOP_SERVICES), f"{backend}: URL set iff the service is in compose"


def test_dockerfile_copies_what_exists_and_installs_pinned():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert "-c requirements.lock" in dockerfile
    hosts = set(re.findall(r"SHOPLOOP_(\w+)__HOST=0\.0\.0\.0", dockerfile))
    assert {name.upper() for name in SHOPLOOP_SERVICES} <= hosts
