"""The explicit wildcard of an allow-list, in a module of its own so :mod:`.policy` and :mod:`.snp` share it."""

from __future__ import annotations

from typing import Final


class _Any:
    """Type of :data:`ANY`, the explicit wildcard for an allow-list."""

    _instance: _Any | None = None

    def __new__(cls) -> _Any:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"

    def __contains__(self, item: object) -> bool:
        return True


ANY: Final = _Any()
