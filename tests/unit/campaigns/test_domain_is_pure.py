import pkgutil
import subprocess
import sys

import services.campaigns.domain

IO_LIBRARIES = ["fastapi", "starlette", "sqlalchemy", "asyncpg", "aiosqlite", "aiokafka", "httpx", "aiohttp"]


def test_importing_every_domain_module_loads_no_io_library():
    modules = [f"services.campaigns.domain.{info.name}" for info in pkgutil.iter_modules(services.campaigns.domain.__path__)]
    probe = "import sys\n" + "".join(f"import {module}\n" for module in modules)
    probe += f"print(sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules))\n"

    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout

    assert len(modules) >= 9
    assert loaded.strip() == "[]"
