"""API dialects: one sans-IO module per wire format."""

from __future__ import annotations

from .base import Dialect, Endpoint, HttpRequest, StreamDecoder
from .openai import OpenAIDialect

__all__ = ["Dialect", "Endpoint", "HttpRequest", "StreamDecoder", "dialect_for"]

# Whether a final assistant message is continued (a prefill) rather than answered anew.
PREFILL_BY_API = {"anthropic": True, "bedrock": True, "openai": False, "copilot": False, "gemini": False}


def dialect_for(api: str) -> Dialect | None:
    """The dialect that speaks `api`, or None while it is not implemented."""
    if api == "openai":
        return OpenAIDialect()
    return None
