import ast
from pathlib import Path

import services.segmentation.domain as domain

IO_LIBRARIES = {"fastapi", "starlette", "sqlalchemy", "asyncpg", "aiosqlite", "aiokafka", "httpx"}


def test_the_domain_imports_no_io_library():
    imported = set()
    for module in Path(domain.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])

    assert imported, "no module of the domain was read"
    assert not imported & IO_LIBRARIES
