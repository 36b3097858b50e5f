import subprocess
import sys

IO_LIBRARIES = ["fastapi", "starlette", "sqlalchemy", "asyncpg", "aiosqlite", "aiokafka", "httpx", "pydantic"]
MODULES = ["facts", "kpis", "funnels", "channels", "products", "stats"]


def test_importing_the_domain_loads_no_io_library():
    probe = (
        "import sys\n"
        + "".join(f"import services.funnel.domain.{module}\n" for module in MODULES)
        + f"print(sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules))\n"
    )

    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout

    assert loaded.strip() == "[]"
