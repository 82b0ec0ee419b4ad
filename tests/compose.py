"""infra/docker-compose.yml and infra/.env.example read as data, with compose's own interpolation.

Shared by the static checks (tests/test_infra.py) and the native production topology
(tests/compose_stack.py), so both read the file the same way compose does.
"""

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"

# ${VAR}, ${VAR:-default}, ${VAR:?message}; "$${VAR}" is escaped for the container's shell.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(\w+)(:?[-?][^}]*)?\}")


def read_compose() -> dict[str, Any]:
    """The compose file as YAML data (anchors and merge keys resolved, nothing interpolated)."""
    return yaml.safe_load(COMPOSE.read_text())


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=value lines (comments skipped, surrounding quotes removed as compose does)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("\"'")
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """`value` as compose interpolates it from `env`; a failing ${VAR:?message} raises ValueError."""

    def substitute(match: re.Match) -> str:
        name, modifier = match.group(1), match.group(2) or ""
        given = env.get(name, "")
        if modifier.startswith(":?") and not given:
            raise ValueError(f"{name}: {modifier[2:]}")
        if modifier.startswith(":-") and not given:
            return modifier[2:]
        return given

    return INTERPOLATION.sub(substitute, value).replace("$$", "$")


def service_environment(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """A service's `environment:` mapping, interpolated from `env` (the .env file)."""
    return {name: interpolate(str(value), env) for name, value in service.get("environment", {}).items()}


def service_command(service: dict[str, Any]) -> list[str]:
    """A service's `command:` as an argument list."""
    command = service["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)
