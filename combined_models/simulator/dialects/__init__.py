"""Wire dialects the simulator speaks, by name. Add a module per dialect and register it here."""

from __future__ import annotations

from collections.abc import Callable

from .anthropic import AnthropicDialect
from .base import BadRequest, Context, Dialect, HttpRequest, Reply, Route, StreamEncoder
from .bedrock import BedrockDialect
from .copilot import CopilotDialect
from .gemini import GeminiDialect
from .openai import OpenAIDialect, OpenRouterDialect
from .responses import ResponsesDialect

DIALECTS: dict[str, Callable[[], Dialect]] = {
    "openai": OpenAIDialect,
    "openrouter": OpenRouterDialect,
    "openai-responses": ResponsesDialect,
    "anthropic": AnthropicDialect,
    "bedrock": BedrockDialect,
    "gemini": GeminiDialect,
    "copilot": CopilotDialect,
}


def get_dialect(name: str) -> Dialect:
    """A fresh dialect (some keep per-server state, such as Copilot's issued tokens)."""
    try:
        return DIALECTS[name]()
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; expected one of {sorted(DIALECTS)}") from None


__all__ = [
    "DIALECTS",
    "BadRequest",
    "Context",
    "Dialect",
    "HttpRequest",
    "Reply",
    "Route",
    "StreamEncoder",
    "get_dialect",
]
