"""API dialects: one sans-IO module per wire format."""

from __future__ import annotations

from .anthropic import AnthropicDialect
from .base import Dialect, Endpoint, HttpRequest, StreamDecoder
from .bedrock import BedrockDialect
from .copilot import CopilotDialect
from .gemini import GeminiDialect
from .openai import OpenAIDialect
from .openai_responses import OpenAIResponsesDialect

__all__ = ["Dialect", "Endpoint", "HttpRequest", "StreamDecoder", "dialect_for"]


_DIALECTS: dict[str, type[Dialect]] = {
    "openai": OpenAIDialect,
    "openai-responses": OpenAIResponsesDialect,
    "anthropic": AnthropicDialect,
    "bedrock": BedrockDialect,
    "copilot": CopilotDialect,
    "gemini": GeminiDialect,
}


def dialect_for(api: str) -> Dialect | None:
    """The dialect that speaks `api`, or None when there is none."""
    cls = _DIALECTS.get(api)
    return cls() if cls is not None else None
