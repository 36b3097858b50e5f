"""Every service app that exists under services/, built the way the tests need it.

A service is found by its ``services/<name>/bootstrap.py`` exposing ``create_<name>_app(settings)`` and its
``services/<name>/settings.py`` holding one ``ServiceSettings`` subclass. A new service following that shape
is covered by every test iterating ``service_apps()`` without editing the tests.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from libs.common.settings import CommonSettings, KafkaSettings, ServiceSettings

SERVICES = Path(__file__).resolve().parent.parent / "services"
# One key per scope, and for each scope a key holding every other scope except admin.
SCOPE_KEYS = {"ingest": "k-ingest", "read": "k-read", "campaigns": "k-campaigns", "admin": "k-admin"}
ALL_BUT = {"ingest": "k-no-ingest", "read": "k-no-read", "campaigns": "k-no-campaigns", "admin": "k-no-admin"}
TEST_API_KEYS = ";".join([
    *(f"{key}:{scope}" for scope, key in SCOPE_KEYS.items()),
    "k-no-ingest:read,campaigns", "k-no-read:ingest,campaigns", "k-no-campaigns:ingest,read",
    "k-no-admin:ingest,read,campaigns",
])


@dataclass(frozen=True)
class ServiceApp:
    name: str
    settings_class: type[ServiceSettings]
    factory: Callable[[ServiceSettings], FastAPI]

    def build(self, database_url: str, *, bootstrap_servers: str = "127.0.0.1:1",
              api_keys: str = TEST_API_KEYS) -> FastAPI:
        common = CommonSettings(env="local", api_keys=api_keys,
                                kafka=KafkaSettings(bootstrap_servers=bootstrap_servers))
        # The services a service calls (the gateway's backends) are not running here: a port nothing
        # listens on, never the default ports another stack on this machine may be serving.
        elsewhere = {name: "http://127.0.0.1:9" for name in self.settings_class.model_fields
                     if name.endswith("_url") and name != "database_url"}
        return self.factory(self.settings_class(database_url=database_url, common=common, **elsewhere))


def service_apps() -> list[ServiceApp]:
    """Every service under services/ with a bootstrap module, in name order."""
    found = []
    for package in sorted(path.parent for path in SERVICES.glob("*/bootstrap.py")):
        name = package.name
        bootstrap = importlib.import_module(f"services.{name}.bootstrap")
        factory = getattr(bootstrap, f"create_{name}_app", None)
        assert factory is not None, f"services/{name}/bootstrap.py must expose create_{name}_app(settings)"
        settings_module = importlib.import_module(f"services.{name}.settings")
        classes = [value for value in vars(settings_module).values()
                   if inspect.isclass(value) and issubclass(value, ServiceSettings) and value is not ServiceSettings
                   and value.__module__ == settings_module.__name__]
        assert len(classes) == 1, f"services/{name}/settings.py must define one ServiceSettings subclass"
        found.append(ServiceApp(name, classes[0], factory))
    return found
