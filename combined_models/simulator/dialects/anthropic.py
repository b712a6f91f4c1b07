"""Anthropic Messages (provider-protocols.md §2, §8).

`POST /v1/messages` with `x-api-key` and `anthropic-version`; SSE with `event:` lines
and the block-by-block event sequence; errors in `{"type":"error","error":{...}}`.
A final assistant message is a prefill: the answer holds only its continuation.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..answer import Answer, ChatRequest, Piece, TextPiece, ThinkingPiece, ToolCallArgs, ToolCallStart
from ..conversation import (
    CacheUse,
    Part,
    Turn,
    build_request,
    image_part,
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
    page,
    sse,
)

# status -> (error.type, default message)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


MAX_BREAKPOINTS = 4


class _CacheControl(msgspec.Struct):
    type: str
    ttl: str = "5m"


class _Source(msgspec.Struct):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    source: _Source | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[_Block] | None = None
    thinking: str | None = None
    signature: str | None = None
    cache_control: _CacheControl | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | list[_Block]


class _Tool(msgspec.Struct):
    name: str
    cache_control: _CacheControl | None = None
    type: str | None = None  # a server tool (`web_search_20250305`...) when neither None nor "custom"


class _ToolChoice(msgspec.Struct):
    type: str


class _Body(msgspec.Struct):
    model: str
    max_tokens: int
    messages: list[_Message]
    system: str | list[_Block] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    stream: bool = False


def _part(b: _Block) -> Part | None:
    """The block as a neutral part, with its breakpoint (one inside a tool result marks the result)."""
    part = _plain_part(b)
    marker = b.cache_control
    if b.type == "tool_result" and marker is None and isinstance(b.content, list):
        marker = next((c.cache_control for c in reversed(b.content) if c.cache_control), None)
    if part is not None and marker is not None:
        part["cache"] = marker.ttl
    return part


def _plain_part(b: _Block) -> Part | None:
    match b.type:
        case "text":
            return text_part(b.text or "")
        case "image" if b.source is not None and b.source.type == "base64":
            return image_part(b.source.media_type, b.source.data or "")
        case "image" if b.source is not None:
            return {"type": "image", "media_type": None, "data_length": 0, "url": b.source.url}
        case "tool_use":
            return tool_call_part(b.id, b.name or "", b.input if b.input is not None else {})
        case "tool_result":
            return tool_result_part(b.tool_use_id, _tool_result_content(b.content))
        case "thinking":
            return thinking_part(b.thinking or "", b.signature)
        case "redacted_thinking":
            return {"type": "redacted_thinking"}
    return None  # other block kinds (documents, server tools) carry nothing the simulator reads


def _check_cache_control(b: _Body) -> None:
    """Claude's rules for breakpoints: valid markers, none on thinking, at most four in all."""
    found: list[tuple[str, _CacheControl]] = []
    found += [(f"tools.{i}", t.cache_control) for i, t in enumerate(b.tools or ()) if t.cache_control]
    if isinstance(b.system, list):
        found += [(f"system.{i}", x.cache_control) for i, x in enumerate(b.system) if x.cache_control]
    for i, m in enumerate(b.messages):
        for j, x in enumerate(m.content if isinstance(m.content, list) else ()):
            where = f"messages.{i}.content.{j}"
            if x.cache_control and x.type in ("thinking", "redacted_thinking"):
                raise BadRequest(f"{where}.{x.type}.cache_control: Extra inputs are not permitted")
            if x.cache_control:
                found.append((where, x.cache_control))
            inner = x.content if x.type == "tool_result" and isinstance(x.content, list) else ()
            found += [
                (f"{where}.content.{k}", c.cache_control) for k, c in enumerate(inner) if c.cache_control
            ]
    for where, marker in found:
        if marker.type != "ephemeral":
            raise BadRequest(f"{where}.cache_control.type: Input should be 'ephemeral'")
        if marker.ttl not in ("5m", "1h"):
            raise BadRequest(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    if len(found) > MAX_BREAKPOINTS:
        raise BadRequest(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(found)}."
        )


def _tool_result_content(content: str | list[_Block] | None) -> str | list[Part]:
    """Text as one string; with images, the text and image parts in order."""
    if isinstance(content, str):
        return content
    blocks = content or []
    if all(b.type == "text" for b in blocks):
        return "".join(b.text or "" for b in blocks)
    parts = [_plain_part(b) for b in blocks if b.type in ("text", "image")]
    return [p for p in parts if p is not None]


def _last_text(content: str | list[_Block]) -> str:
    if isinstance(content, str):
        return content
    return content[-1].text or "" if content and content[-1].type == "text" else ""


def _rfc3339(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(obj: dict[str, Any]) -> bytes:
    return sse(obj, obj["type"])


class AnthropicDialect(Dialect):
    """`POST /v1/messages`, `GET /v1/models` (paged) and `GET /v1/models/{id}`."""

    name = "anthropic"
    base_path = ""  # the SDK appends /v1/... itself
    keepalive_interval: float | None = 0.5  # pings while the first token is slow
    request_id_header = "request-id"
    response_id_prefix = "msg_"
    tool_id_prefix = "toolu_"

    def route(self, method: str, path: str, query: Mapping[str, str]) -> Route | None:
        if method == "POST" and path == "/v1/messages":
            return Route("chat")
        if method == "GET" and path == "/v1/models":
            return Route("models")
        if method == "GET" and path.startswith("/v1/models/"):
            return Route("model", path[len("/v1/models/") :])
        return None

    def check_auth(self, route: Route, request: HttpRequest, ctx: Context) -> Reply | None:
        h, rid = request.headers, request.request_id
        bearer = h.get("authorization", "")
        key = h.get("x-api-key") or (bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None)
        if not key:
            return self.error(401, "x-api-key header is required", request_id=rid)
        if ctx.api_key is not None and key != ctx.api_key:
            return self.error(401, "invalid x-api-key", request_id=rid)
        if "anthropic-version" not in h:
            return self.error(400, "anthropic-version: header is required", request_id=rid)
        return None

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        b: _Body = decode_json(body, _Body)
        if not b.messages:
            raise BadRequest("messages: at least one message is required")
        if b.max_tokens < 1:
            raise BadRequest("max_tokens: Input should be greater than or equal to 1")
        turns: list[Turn] = []
        for i, m in enumerate(b.messages):
            if m.role not in ("user", "assistant"):
                raise BadRequest(
                    f"messages.{i}.role: Input should be 'user' or 'assistant'"
                    + (
                        ". The Messages API accepts a top-level `system` parameter."
                        if m.role == "system"
                        else ""
                    )
                )
            blocks = [text_part(m.content)] if isinstance(m.content, str) else [_part(x) for x in m.content]
            turns.append(Turn("user" if m.role == "user" else "assistant", [p for p in blocks if p]))
        last = b.messages[-1]
        if last.role == "assistant" and _last_text(last.content) != _last_text(last.content).rstrip():
            raise BadRequest("messages: final assistant content cannot end with trailing whitespace")
        _check_cache_control(b)
        system_cache: dict[int, str] = {}
        if b.system is None:
            system = []
        elif isinstance(b.system, str):
            system = [b.system]
        else:
            texts = [x for x in b.system if x.type == "text"]
            system = [x.text or "" for x in texts]
            system_cache = {i: x.cache_control.ttl for i, x in enumerate(texts) if x.cache_control}
        no_tools = b.tool_choice is not None and b.tool_choice.type == "none"
        tools = [] if no_tools else list(b.tools or ())
        return build_request(
            model=b.model,
            system=system,
            turns=turns,
            stream=b.stream,
            # Server tools run at Anthropic itself: the model never asks the client to call one.
            tool_names=[t.name for t in tools if t.type in (None, "custom")],
            max_tokens=b.max_tokens,
            system_cache=system_cache,
            tool_cache={i: t.cache_control.ttl for i, t in enumerate(tools) if t.cache_control},
        )

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        wait: float | None = None,
        request_id: str = "",
    ) -> Reply:
        default_type = "api_error" if status >= 500 else "invalid_request_error"
        etype, default_message = _ERRORS.get(status, (default_type, f"HTTP {status}"))
        body = {
            "type": "error",
            "error": {"type": code or etype, "message": message or default_message},
            "request_id": request_id or None,
        }
        return json_reply(status, body, [("retry-after", f"{wait:g}")] if wait else [])

    def unknown_model(self, model: str, request_id: str = "") -> Reply:
        return self.error(404, f"model: {model}", request_id=request_id)

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply:
        cache = self.prompt_cache().use(req)
        return json_reply(200, _message(req, answer, response_id, cache, content=_content(answer)))

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> AnthropicStream:
        return AnthropicStream(req, answer, response_id, self.prompt_cache().use(req))

    def serve(self, route: Route, request: HttpRequest, ctx: Context) -> Reply:
        rid = request.request_id
        if route.kind == "model":
            if route.model not in ctx.models:
                return self.error(404, f"model: {route.model}", request_id=rid)
            return json_reply(200, self._model_entry(route.model, ctx.created))
        if route.kind != "models":
            return self.not_found(request)
        models, q = ctx.models, request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            return self.error(400, "limit: Input should be a valid integer", request_id=rid)
        if not 1 <= limit <= 1000:
            return self.error(400, "limit: Input should be between 1 and 1000", request_id=rid)
        for name in ("after_id", "before_id"):
            if name in q and q[name] not in models:
                return self.error(404, f"{name}: {q[name]} not found", request_id=rid)
        if "before_id" in q:  # the page that ends just before it
            end = models.index(q["before_id"])
            ids, has_more = list(models[max(0, end - limit) : end]), end - limit > 0
        else:
            start = models.index(q["after_id"]) + 1 if "after_id" in q else 0
            ids, has_more = page(models, start, limit)
        return json_reply(
            200,
            {
                "data": [self._model_entry(m, ctx.created) for m in ids],
                "has_more": has_more,
                "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None,
            },
        )

    def _model_entry(self, model: str, created: int) -> dict[str, Any]:
        return {"type": "model", "id": model, "display_name": model, "created_at": _rfc3339(created)}


def _usage(answer: Answer, cache: CacheUse) -> dict[str, int]:
    """Anthropic's counts: `input_tokens` is only what the cache neither read nor wrote."""
    return {
        "input_tokens": max(0, answer.prompt_tokens - cache.read - cache.written),
        "cache_creation_input_tokens": cache.written,
        "cache_read_input_tokens": cache.read,
        "output_tokens": answer.completion_tokens,
    }


def _message(
    req: ChatRequest, answer: Answer, response_id: str, cache: CacheUse, *, content: list[Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": STOP_REASONS[answer.finish_reason],
        "stop_sequence": None,
        "usage": _usage(answer, cache),
    }


def _content(answer: Answer) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if answer.thinking:
        content.append({"type": "thinking", "thinking": answer.thinking, "signature": answer.signature})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    if (call := answer.tool_call) is not None:
        call_id, name, arguments = call
        content.append(
            {"type": "tool_use", "id": call_id, "name": name, "input": msgspec.json.decode(arguments)}
        )
    return content


class AnthropicStream:
    """message_start, ping, then per block content_block_start / *_delta / content_block_stop,
    then message_delta (stop reason, cumulative usage) and message_stop."""

    headers: Sequence[tuple[str, str]] = SSE_HEADERS

    def __init__(self, req: ChatRequest, answer: Answer, response_id: str, cache: CacheUse) -> None:
        self._req = req
        self._answer = answer
        self._cache = cache
        self._response_id = response_id
        self._index = -1
        self._open: str | None = None  # type of the block being streamed

    def start(self) -> bytes:
        message = _message(self._req, self._answer, self._response_id, self._cache, content=[])
        message |= {"stop_reason": None, "usage": _usage(self._answer, self._cache) | {"output_tokens": 1}}
        return _event({"type": "message_start", "message": message}) + self.keepalive()

    def _open_block(self, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._index += 1
        self._open = block["type"]
        return out + _event({"type": "content_block_start", "index": self._index, "content_block": block})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        out = b""
        if self._open == "thinking":  # the signature arrives just before the block stops
            out = self._delta({"type": "signature_delta", "signature": self._answer.signature})
        self._open = None
        return out + _event({"type": "content_block_stop", "index": self._index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event({"type": "content_block_delta", "index": self._index, "delta": delta})

    def piece(self, piece: Piece) -> bytes:
        if isinstance(piece, ThinkingPiece):
            out = (
                b""
                if self._open == "thinking"
                else self._open_block({"type": "thinking", "thinking": "", "signature": ""})
            )
            return out + self._delta({"type": "thinking_delta", "thinking": piece.text})
        if isinstance(piece, TextPiece):
            out = b"" if self._open == "text" else self._open_block({"type": "text", "text": ""})
            return out + self._delta({"type": "text_delta", "text": piece.text})
        if isinstance(piece, ToolCallStart):
            block = {"type": "tool_use", "id": piece.id, "name": piece.name, "input": {}}
            # The first input fragment is often empty on the real API; clients must cope.
            return self._open_block(block) + self._delta({"type": "input_json_delta", "partial_json": ""})
        assert isinstance(piece, ToolCallArgs)
        return self._delta({"type": "input_json_delta", "partial_json": piece.fragment})

    def finish(self) -> bytes:
        delta = {"stop_reason": STOP_REASONS[self._answer.finish_reason], "stop_sequence": None}
        usage = _usage(self._answer, self._cache)  # cumulative: the same counts again, output complete
        return (
            self._close_block()
            + _event({"type": "message_delta", "delta": delta, "usage": usage})
            + _event({"type": "message_stop"})
        )

    def keepalive(self) -> bytes:
        return _event({"type": "ping"})

    def inband_error(self, message: str, code: str) -> bytes:
        error = {"type": code or "overloaded_error", "message": message or "Overloaded"}
        return _event({"type": "error", "error": error})

    def malformed(self) -> bytes:
        # A delta cut off mid-object, as a proxy that truncates an event would leave it.
        whole = self._delta({"type": "text_delta", "text": "lost"})
        return whole[: whole.index(b'"delta"')] + b"\n\n"
