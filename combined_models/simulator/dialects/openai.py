"""OpenAI Chat Completions, and OpenRouter's flavour of it (provider-protocols.md §1, §5, §7).

Requests are decoded into typed Structs so a malformed body gets a 400 naming the
field. Streams are SSE with `data:` lines only, ending in `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..answer import Answer, ChatRequest, Piece, TextPiece, ThinkingPiece, ToolCallArgs, ToolCallStart
from ..conversation import (
    CacheUse,
    Part,
    Turn,
    build_request,
    image_url_part,
    json_arguments,
    text_part,
    thinking_part,
    tool_call_part,
    tool_result_part,
)
from .base import (
    SSE_HEADERS,
    BadRequest,
    Context,
    Dialect,
    HttpRequest,
    Reply,
    Route,
    decode_json,
    json_reply,
    sse,
)

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


# OpenAI caches prompts of at least this many tokens on its own (§10.3).
AUTOMATIC_CACHE_MIN = 1024


class _ImageUrl(msgspec.Struct):
    url: str


class _CacheControl(msgspec.Struct):
    type: str
    ttl: str = "5m"


class _Part(msgspec.Struct):
    type: str
    text: str | None = None
    image_url: _ImageUrl | None = None
    cache_control: _CacheControl | None = None  # OpenRouter's breakpoint (for Claude)


class _FunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class _ToolCall(msgspec.Struct):
    function: _FunctionCall
    id: str | None = None
    type: str = "function"


class _Msg(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # DeepSeek-style thinking sent back


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


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _text_of(content: str | list[_Part] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type == "text")


def _last_mark(content: str | list[_Part] | None) -> str | None:
    marks = [p.cache_control.ttl for p in content or () if not isinstance(p, str) and p.cache_control]
    return marks[-1] if marks else None


def _marked(part: Part, marker: _CacheControl | None) -> Part:
    if marker is not None:
        part["cache"] = marker.ttl
    return part


def _parts_of(content: str | list[_Part] | None) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [text_part(content)]
    parts: list[Part] = []
    for p in content:
        if p.type == "text":
            parts.append(_marked(text_part(p.text or ""), p.cache_control))
        elif p.type == "image_url" and p.image_url is not None:
            parts.append(_marked(image_url_part(p.image_url.url), p.cache_control))
    return parts


def _turn(m: _Msg) -> Turn:
    if m.role in ("tool", "function"):
        part = tool_result_part(m.tool_call_id, _text_of(m.content))
        if (ttl := _last_mark(m.content)) is not None:
            part["cache"] = ttl
        return Turn("user", [part])
    if m.role == "user":
        return Turn("user", _parts_of(m.content))
    parts = [thinking_part(m.reasoning_content, None)] if m.reasoning_content else []
    parts += _parts_of(m.content)
    for call in m.tool_calls or ():
        parts.append(tool_call_part(call.id, call.function.name, json_arguments(call.function.arguments)))
    return Turn("assistant", parts)


class OpenAIDialect(Dialect):
    """`POST {base}/chat/completions`, `GET {base}/models` and `GET {base}/models/{id}` with Bearer auth."""

    name = "openai"
    base_path = "/v1"
    response_id_prefix = "chatcmpl-"
    tool_id_prefix = "call_"
    explicit_caching = False  # OpenAI caches on its own; a `cache_control` is refused here

    def route(self, method: str, path: str, query: Mapping[str, str]) -> Route | None:
        base = self.base_path
        if method == "POST" and path == f"{base}/chat/completions":
            return Route("chat")
        if method == "GET" and path == f"{base}/models":
            return Route("models")
        if method == "GET" and path.startswith(f"{base}/models/"):
            return Route("model", path[len(f"{base}/models/") :])
        return None

    def check_auth(self, route: Route, request: HttpRequest, ctx: Context) -> Reply | None:
        if ctx.api_key is None or request.headers.get("authorization") == f"Bearer {ctx.api_key}":
            return None
        if "authorization" not in request.headers:
            msg = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header."
            )
            return self.error(401, msg)
        return self.error(401)

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        b: _Body = decode_json(body, _Body)
        system: list[str] = []
        system_cache: dict[int, str] = {}
        turns: list[Turn] = []
        for i, m in enumerate(b.messages):
            if m.role not in _ROLES:
                raise BadRequest(f"Invalid value for 'messages[].role': {m.role!r}.")
            marked = isinstance(m.content, list) and any(p.cache_control for p in m.content)
            if marked and not self.explicit_caching:
                raise BadRequest(
                    f"Unrecognized request argument supplied: messages[{i}].content[].cache_control"
                )
            if m.role in ("system", "developer"):
                if (ttl := _last_mark(m.content)) is not None:
                    system_cache[len(system)] = ttl
                system.append(_text_of(m.content))
            else:
                turns.append(_turn(m))
        if not b.messages:
            raise BadRequest("'messages' must contain at least one message.")
        tools = () if b.tool_choice == "none" else tuple(t.function.name for t in b.tools or () if t.function)
        limit = b.max_completion_tokens if b.max_completion_tokens is not None else b.max_tokens
        if limit is not None and limit < 1:
            raise BadRequest("'max_tokens' must be at least 1.")
        return build_request(
            model=b.model,
            system=system,
            turns=turns,
            stream=bool(b.stream),
            tool_names=tools,
            max_tokens=limit,
            include_usage=bool(b.stream_options and b.stream_options.include_usage),
            system_cache=system_cache,
        )

    def error_body(self, status: int, message: str | None, code: str | None) -> dict[str, Any]:
        etype, default_code, default_message = _ERRORS.get(status, ("api_error", None, f"HTTP {status}"))
        error = {
            "message": message or default_message,
            "type": etype,
            "param": None,
            "code": code or default_code,
        }
        return {"error": error}

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        wait: float | None = None,
        request_id: str = "",
    ) -> Reply:
        headers = [("retry-after", f"{wait:g}")] if wait else []
        return json_reply(status, self.error_body(status, message, code), headers)

    def unknown_model(self, model: str, request_id: str = "") -> Reply:
        return self.error(404, f"The model `{model}` does not exist or you do not have access to it.")

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
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
                "usage": _usage(answer, self.cache_use(req), writes=self.explicit_caching),
                "system_fingerprint": None,
            },
        )

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> OpenAIStream:
        return OpenAIStream(self, req, answer, response_id=response_id, created=created)

    def serve(self, route: Route, request: HttpRequest, ctx: Context) -> Reply:
        if route.kind == "models":
            return self.models(ctx.models, created=ctx.created)
        if route.kind == "model" and route.model in ctx.models:
            return json_reply(200, self._model_entry(route.model, ctx.created))
        if route.kind == "model":
            return self.unknown_model(route.model or "")
        return self.not_found(request)

    def models(self, models: Sequence[str], *, created: int) -> Reply:
        return json_reply(200, {"object": "list", "data": [self._model_entry(m, created) for m in models]})

    def _model_entry(self, model: str, created: int) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": created, "owned_by": "simulator"}

    def cache_use(self, req: ChatRequest) -> CacheUse:
        """Breakpoints where the request has them (OpenRouter), else OpenAI's automatic caching."""
        return self.prompt_cache().use(req, automatic=AUTOMATIC_CACHE_MIN)

    # Hooks the OpenRouter flavour overrides.

    def chunk_extra(self) -> dict[str, Any]:
        return {}

    def always_usage(self) -> bool:
        return False

    def inband_error_chunk(self, base: dict[str, Any], message: str, code: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "server_error", "param": None, "code": code or None}}


def _usage(answer: Answer, cache: CacheUse, *, writes: bool) -> dict[str, Any]:
    """`prompt_tokens` counts the cached tokens too; the details only when the cache was used.

    `writes`: tokens written to the cache are reported (OpenRouter's `cache_write_tokens`).
    """
    usage: dict[str, Any] = {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }
    if cache.read or (writes and cache.written):
        details = {"cached_tokens": cache.read}
        if writes and cache.written:
            details["cache_write_tokens"] = cache.written
        usage["prompt_tokens_details"] = details
    return usage


class OpenAIStream:
    """`chat.completion.chunk` events: a role chunk, one chunk per piece, the finish chunk,
    the usage chunk when asked for, then `[DONE]`."""

    def __init__(
        self, dialect: OpenAIDialect, req: ChatRequest, answer: Answer, *, response_id: str, created: int
    ) -> None:
        self.headers: Sequence[tuple[str, str]] = SSE_HEADERS
        self._dialect = dialect
        self._answer = answer
        self._usage = req.include_usage or dialect.always_usage()
        self._cache = dialect.cache_use(req)
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
        if isinstance(piece, ThinkingPiece):
            return self._chunk({"reasoning_content": piece.text})
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
            usage = _usage(self._answer, self._cache, writes=self._dialect.explicit_caching)
            out += sse(self._base | {"choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"

    def keepalive(self) -> bytes:
        return b""

    def inband_error(self, message: str, code: str) -> bytes:
        message = message or "The server had an error while processing your request."
        return sse(self._dialect.inband_error_chunk(self._base, message, code))

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
    explicit_caching = True  # `cache_control` on content parts, for Claude

    def error_body(self, status: int, message: str | None, code: str | None) -> dict[str, Any]:
        text = super().error_body(status, message, code)["error"]["message"]
        return {"error": {"code": status, "message": text}}

    def unknown_model(self, model: str, request_id: str = "") -> Reply:
        return self.error(404, f"{model} is not a valid model ID")

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> OpenRouterStream:
        return OpenRouterStream(self, req, answer, response_id=response_id, created=created)

    def chunk_extra(self) -> dict[str, Any]:
        return {"provider": "Simulator"}

    def always_usage(self) -> bool:
        return True

    def inband_error_chunk(self, base: dict[str, Any], message: str, code: str) -> dict[str, Any]:
        return base | {
            "error": {"code": code or "server_error", "message": message},
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
