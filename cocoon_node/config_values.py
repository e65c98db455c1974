"""How a config value from a file or the environment becomes the setting's type (a part of
``cocoon_node.config``, out of it to keep that module readable in one sitting). Env values arrive as strings."""

from __future__ import annotations

from typing import Any

INVALID = object()


def coerce_setting(value: Any, default: Any, name: str, source: str, problems: list[str]) -> Any:
    """Coerce ``value`` to the type of ``default`` (env values arrive as strings)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError("expected true or false")
        if isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError("expected an integer")
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("expected a list of strings")
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
    except ValueError as exc:
        problems.append(f"{source}: {name}: {exc} (got {value!r})")
        return INVALID
    return value
