"""OpenAI Chat Completions, and OpenRouter's flavour of it (provider-protocols.md §1, §5, §7).

Requests are decoded into typed Structs so a malformed body gets a 400 naming the
field. Streams are SSE with `data:` lines only, ending in `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..answer import Answer, ChatRequest, Message, Piece, Role, TextPiece, ToolCallArgs, ToolCallStart
from .base import BadRequest, Reply, Route, json_reply

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}

# status -> (type, code, message) when a fault names only the status.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    408: ("timeout_error", None, "Request timed out."),
    409: ("conflict_error", None, "The request conflicted with another request."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: (
        "rate_limit_error",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


class _Part(msgspec.Struct):
    type: str
    text: str | None = None


class _Msg(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None


class _Function(msgspec.Struct):
    name: str


class _Tool(msgspec.Struct):
    type: str = "function"
    function: _Function | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Body(msgspec.Struct):
    model: str
    messages: list[_Msg]
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


_decode_body = msgspec.json.Decoder(_Body).decode
_encode = msgspec.json.encode


def _text_of(content: str | list[_Part] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type == "text")


def sse(obj: object) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


class OpenAIDialect:
    """`POST {base}/chat/completions`, `GET {base}/models` and `GET {base}/models/{id}` with Bearer auth."""

    name = "openai"
    base_path = "/v1"
    stream_headers: Sequence[tuple[str, str]] = (
        ("content-type", "text/event-stream; charset=utf-8"),
        ("cache-control", "no-cache"),
    )
    keepalive_interval: float | None = None

    def route(self, method: str, path: str) -> Route | None:
        base = self.base_path
        if method == "POST" and path == f"{base}/chat/completions":
            return Route("chat")
        if method == "GET" and path == f"{base}/models":
            return Route("models")
        if method == "GET" and path.startswith(f"{base}/models/"):
            return Route("model", path[len(f"{base}/models/") :])
        return None

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("authorization") == f"Bearer {api_key}"

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        try:
            b = _decode_body(body)
        except msgspec.DecodeError as e:  # ValidationError included: both mean a 400
            raise BadRequest(f"Invalid request body: {e}") from e
        messages: list[Message] = []
        for m in b.messages:
            role = _ROLES.get(m.role)
            if role is None:
                raise BadRequest(f"Invalid value for 'messages[].role': {m.role!r}.")
            messages.append(Message(role, _text_of(m.content)))
        if not messages:
            raise BadRequest("'messages' must contain at least one message.")
        tools = () if b.tool_choice == "none" else tuple(t.function.name for t in b.tools or () if t.function)
        limit = b.max_completion_tokens if b.max_completion_tokens is not None else b.max_tokens
        if limit is not None and limit < 1:
            raise BadRequest("'max_tokens' must be at least 1.")
        return ChatRequest(
            model=b.model,
            messages=tuple(messages),
            stream=bool(b.stream),
            tool_names=tools,
            max_tokens=limit,
            include_usage=bool(b.stream_options and b.stream_options.include_usage),
        )

    def error_body(self, status: int, message: str | None) -> dict[str, Any]:
        etype, code, default_message = _ERRORS.get(status, ("api_error", None, f"HTTP {status}"))
        return {"error": {"message": message or default_message, "type": etype, "param": None, "code": code}}

    def error(self, status: int, message: str | None = None) -> Reply:
        return json_reply(status, self.error_body(status, message))

    def unauthorized(self, headers: Mapping[str, str]) -> Reply:
        if "authorization" not in headers:
            msg = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header."
            )
            return self.error(401, msg)
        return self.error(401)

    def unknown_model(self, model: str) -> Reply:
        return self.error(404, f"The model `{model}` does not exist or you do not have access to it.")

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if (call := answer.tool_call) is not None:
            call_id, name, arguments = call
            message["content"] = None
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ]
        return json_reply(
            200,
            {
                "id": response_id,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}
                ],
                "usage": _usage(answer),
                "system_fingerprint": None,
            },
        )

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> OpenAIStream:
        return OpenAIStream(self, req, answer, response_id=response_id, created=created)

    def models(self, models: Sequence[str], *, created: int) -> Reply:
        return json_reply(200, {"object": "list", "data": [self._model_entry(m, created) for m in models]})

    def model(self, model: str, *, created: int) -> Reply:
        return json_reply(200, self._model_entry(model, created))

    def _model_entry(self, model: str, created: int) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": created, "owned_by": "simulator"}

    # Hooks the OpenRouter flavour overrides.

    def chunk_extra(self) -> dict[str, Any]:
        return {}

    def always_usage(self) -> bool:
        return False

    def inband_error_chunk(self, base: dict[str, Any], message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


class OpenAIStream:
    """`chat.completion.chunk` events: a role chunk, one chunk per piece, the finish chunk,
    the usage chunk when asked for, then `[DONE]`."""

    def __init__(
        self, dialect: OpenAIDialect, req: ChatRequest, answer: Answer, *, response_id: str, created: int
    ) -> None:
        self._dialect = dialect
        self._req = req
        self._answer = answer
        self._usage = req.include_usage or dialect.always_usage()
        self._base: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "system_fingerprint": None,
            **dialect.chunk_extra(),
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk = self._base | {
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        }
        if self._usage:
            chunk["usage"] = None
        return sse(chunk)

    def start(self) -> bytes:
        content = None if self._answer.tool_call else ""
        return self.keepalive() + self._chunk({"role": "assistant", "content": content})

    def piece(self, piece: Piece) -> bytes:
        if isinstance(piece, TextPiece):
            return self._chunk({"content": piece.text})
        if isinstance(piece, ToolCallStart):
            fn = {"name": piece.name, "arguments": ""}
            return self._chunk(
                {"tool_calls": [{"index": 0, "id": piece.id, "type": "function", "function": fn}]}
            )
        assert isinstance(piece, ToolCallArgs)
        return self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece.fragment}}]})

    def finish(self) -> bytes:
        out = self._chunk({}, self._answer.finish_reason)
        if self._usage:
            out += sse(self._base | {"choices": [], "usage": _usage(self._answer)})
        return out + b"data: [DONE]\n\n"

    def keepalive(self) -> bytes:
        return b""

    def inband_error(self, message: str) -> bytes:
        return sse(self._dialect.inband_error_chunk(self._base, message))

    def malformed(self) -> bytes:
        # A chunk cut off mid-object, as a proxy that truncates a line would leave it.
        return sse(self._base)[: len(b"data: ") + 40] + b"\n\n"


class OpenRouterStream(OpenAIStream):
    def keepalive(self) -> bytes:
        return b": OPENROUTER PROCESSING\n\n"


class OpenRouterDialect(OpenAIDialect):
    """OpenAI's shape with OpenRouter's differences: `/api/v1`, `{"error":{"code":<int>,...}}`,
    `: OPENROUTER PROCESSING` comments, usage always sent, and in-band errors as a chunk
    with a top-level `error` and `finish_reason: "error"`."""

    name = "openrouter"
    base_path = "/api/v1"
    keepalive_interval: float | None = 0.5

    def error_body(self, status: int, message: str | None) -> dict[str, Any]:
        text = super().error_body(status, message)["error"]["message"]
        return {"error": {"code": status, "message": text}}

    def unknown_model(self, model: str) -> Reply:
        return self.error(404, f"{model} is not a valid model ID")

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> OpenRouterStream:
        return OpenRouterStream(self, req, answer, response_id=response_id, created=created)

    def chunk_extra(self) -> dict[str, Any]:
        return {"provider": "Simulator"}

    def always_usage(self) -> bool:
        return True

    def inband_error_chunk(self, base: dict[str, Any], message: str) -> dict[str, Any]:
        return base | {
            "error": {"code": "server_error", "message": message},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }

    def _model_entry(self, model: str, created: int) -> dict[str, Any]:
        return {
            "id": model,
            "canonical_slug": model,
            "name": model,
            "created": created,
            "description": "A simulated model.",
            "context_length": 200000,
            "architecture": {
                "modality": "text->text",
                "input_modalities": ["text"],
                "output_modalities": ["text"],
            },
            "pricing": {"prompt": "0", "completion": "0", "request": "0"},
            "top_provider": {"context_length": 200000, "max_completion_tokens": 64000, "is_moderated": False},
            "supported_parameters": ["tools", "tool_choice", "max_tokens", "stream_options"],
        }

    def models(self, models: Sequence[str], *, created: int) -> Reply:
        return json_reply(200, {"data": [self._model_entry(m, created) for m in models]})
