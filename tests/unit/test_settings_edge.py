"""Settings enter at the edge (issue #23): the environment is read in the config module and at
most two other files of the library, never deep inside.

The scan walks every module's syntax tree for a read of the process environment: `os.environ`,
`os.getenv`, `os.environb`, or `from os import environ/getenv`.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "shared" / "matterfab"
# Where settings are read into pydantic-settings objects (and a profile's named secret variables).
CONFIG_MODULES = {"config.py"}
# At most two more: the CLI entry, and the local stack's launcher, which only *builds* the
# environment of the processes it starts (localstack/processes.py: child_env). Today the CLI
# entry reads nothing itself.
ALLOWED = {"cli/main.py", "localstack/processes.py"}
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def env_reads(source: str) -> list[int]:
    """Line numbers where `source` touches the process environment."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ENV_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id in ("os", "posix")
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "posix"):
            if any(alias.name in ENV_NAMES for alias in node.names):
                lines.append(node.lineno)
    return lines


def readers() -> dict[str, list[int]]:
    """Every library file (relative path) that touches the environment, with its lines."""
    found = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        lines = env_reads(path.read_text())
        if lines:
            found[str(path.relative_to(LIBRARY))] = lines
    return found


def test_the_scan_sees_every_way_to_read_the_environment() -> None:
    assert env_reads("import os\nx = os.environ.get('A')\n") == [2]
    assert env_reads("import os\nx = os.getenv('A')\n") == [2]
    assert env_reads("import os\nif 'A' in os.environ: pass\n") == [2]
    assert env_reads("from os import environ\n") == [1]
    assert env_reads("from os import getenv as g\n") == [1]
    assert env_reads("import os\nos.path.join('a')\nos.cpu_count()\n") == []


def test_only_the_config_module_and_two_edges_read_the_environment() -> None:
    found = readers()
    assert set(CONFIG_MODULES) <= set(found), "the config module reads the environment"
    outside = {name: lines for name, lines in found.items() if name not in CONFIG_MODULES}
    assert set(outside) <= ALLOWED, f"read the environment outside the edge: {outside}"
    assert len(ALLOWED) <= 2
