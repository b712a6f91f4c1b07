"""Token counts from the providers' own count endpoints, sans-IO (provider-protocols.md §11).

Anthropic (`POST /v1/messages/count_tokens`), Bedrock (`CountTokens`) and Gemini
(`:countTokens`) count a prompt for free, without running it; OpenAI has no such endpoint.
Each counter builds its request from its dialect's own chat body, so what is counted is
the prompt that dialect would send, and reads errors as that dialect does.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from ...chat import ChatRequest
from ..errors import Failure, UpstreamError
from .anthropic import AnthropicDialect
from .base import Dialect, Endpoint, HttpRequest, join_url, json_body, loads_json, merge_headers
from .bedrock import BedrockDialect, _authorized, _base, converse_body
from .gemini import GeminiDialect, _model_id
from .sigv4 import model_path

__all__ = ["Counter", "counter_for", "foundation_model_id", "parse_count"]

# The count_tokens body: the Messages parameters that shape the prompt (max_tokens, stream,
# temperature, top_p, stop_sequences and metadata do not, and are not taken).
ANTHROPIC_COUNT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "context_management",
        "mcp_servers",
    }
)
# CountTokens' `converse` input (botocore bedrock-runtime ConverseTokensRequest).
CONVERSE_COUNT_FIELDS = ("messages", "system", "toolConfig", "additionalModelRequestFields")
# System-defined inference profiles are a foundation model id behind a geography prefix.
PROFILE_GEOGRAPHIES = frozenset({"us", "eu", "apac", "global", "us-gov", "jp", "au", "ca"})

_JSON = {"accept": "application/json"}


class Counter(Protocol):
    """One API's count endpoint."""

    @property
    def dialect(self) -> Dialect:
        """The chat dialect of the same API: its errors read the count endpoint's errors too."""
        ...

    def build_count(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        """The count request for `request`'s prompt on `model`.

        Raises UpstreamError(UNSUPPORTED) for what the dialect cannot express, as `build_chat` does.
        """
        ...

    def parse_count(self, body: bytes) -> int:
        """The count in a 200 body; ValueError when there is none."""
        ...


def parse_count(body: bytes, key: str) -> int:
    """The token count under `key` of a JSON object; ValueError for anything but a positive integer.

    A prompt always has tokens: a count of 0 is no count (a client trusting it would never compact).
    """
    data = loads_json(body)
    if not isinstance(data, dict):
        raise ValueError("the count response is not a JSON object")
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"the count response has no integer {key!r}")
    if value <= 0:
        raise ValueError(f"the count response says {key} = {value}")
    return value


def _decoded_body(req: HttpRequest) -> dict[str, Any]:
    body = loads_json(req.body)
    assert isinstance(body, dict), "a dialect built a body that is not a JSON object"
    return body


class _Counter:
    """One API's count: its own dialect (whose errors it shares); `field` names the count in the answer."""

    field: str

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def parse_count(self, body: bytes) -> int:
        return parse_count(body, self.field)


class AnthropicCounter(_Counter):
    """`POST /v1/messages/count_tokens`: the Messages body without the sampling fields; `input_tokens`."""

    field = "input_tokens"

    def __init__(self) -> None:
        super().__init__(AnthropicDialect())

    def build_count(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        chat = self.dialect.build_chat(request, model, endpoint, now)
        body = {k: v for k, v in _decoded_body(chat).items() if k in ANTHROPIC_COUNT_FIELDS}
        url = chat.url.rsplit("?", 1)[0] + "/count_tokens"
        return HttpRequest("POST", url, merge_headers(chat.headers, _JSON), json_body(body))


def foundation_model_id(model: str) -> str:
    """The foundation model behind a system-defined inference profile (`us.x` -> `x`); others as they are.

    CountTokens refuses profile ids ("The provided model doesn't support counting tokens").
    An application profile's ARN names no model: it stays, and the count fails over.
    """
    geography, dot, rest = model.partition(".")
    return rest if dot and rest and geography.lower() in PROFILE_GEOGRAPHIES else model


class BedrockCounter(_Counter):
    """`POST /model/{foundation model}/count-tokens` with the Converse input; `inputTokens`."""

    field = "inputTokens"

    def __init__(self) -> None:
        super().__init__(BedrockDialect())

    def build_count(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        bare = foundation_model_id(model)
        converse = converse_body(request, bare)
        body = json_body(
            {"input": {"converse": {k: converse[k] for k in CONVERSE_COUNT_FIELDS if k in converse}}}
        )
        base = _base(endpoint, endpoint.base_url, "bedrock-runtime")
        try:
            url = base.rstrip("/") + model_path(bare, "count-tokens")
        except ValueError as e:
            raise UpstreamError(Failure.UNSUPPORTED, str(e)) from None
        headers = {"content-type": "application/json", **_JSON, **endpoint.headers}
        return _authorized("POST", url, headers, body, endpoint, now)


class GeminiCounter(_Counter):
    """`POST models/{model}:countTokens` with the whole GenerateContentRequest; `totalTokens`."""

    field = "totalTokens"

    def __init__(self) -> None:
        super().__init__(GeminiDialect())

    def build_count(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        chat = self.dialect.build_chat(request, model, endpoint, now)
        # Only `generateContentRequest` carries the system instruction and tools, and it names its model.
        body = {"generateContentRequest": {"model": f"models/{_model_id(model)}", **_decoded_body(chat)}}
        url = join_url(endpoint.base_url, f"models/{_model_id(model)}:countTokens")
        return HttpRequest("POST", url, merge_headers(chat.headers, _JSON), json_body(body))


_COUNTERS: Mapping[str, type[Counter]] = {
    "anthropic": AnthropicCounter,
    "bedrock": BedrockCounter,
    "gemini": GeminiCounter,
}


def counter_for(api: str) -> Counter | None:
    """The count endpoint of `api`, or None when the API has none (OpenAI, Copilot)."""
    cls = _COUNTERS.get(api)
    return cls() if cls is not None else None
