"""Wire dialects the simulator speaks, by name. Add a module per dialect and register it here."""

from __future__ import annotations

from collections.abc import Callable

from .base import BadRequest, Dialect, Reply, Route, StreamEncoder
from .openai import OpenAIDialect, OpenRouterDialect

DIALECTS: dict[str, Callable[[], Dialect]] = {
    "openai": OpenAIDialect,
    "openrouter": OpenRouterDialect,
}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]()
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; expected one of {sorted(DIALECTS)}") from None


__all__ = ["DIALECTS", "BadRequest", "Dialect", "Reply", "Route", "StreamEncoder", "get_dialect"]
