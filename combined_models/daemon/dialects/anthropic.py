"""Anthropic Messages (`POST /v1/messages`, SSE with `event:` lines), sans-IO."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, assert_never
from urllib.parse import urlencode

from ...chat import (
    ChatRequest,
    DecodedItem,
    DocumentPart,
    Finished,
    ImagePart,
    Message,
    Part,
    TextEvent,
    TextPart,
    ThinkingEvent,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from ..errors import Failure, UpstreamError, classify_status, retry_after_from_headers
from .base import (
    Endpoint,
    HttpRequest,
    SSEJsonDecoder,
    error_object,
    event_object,
    explicit_retry_after,
    inband_error,
    join_url,
    json_body,
    loads_json,
    short,
)
from .claude_family import (
    ANSWER_TOKENS,
    StreamedToolUse,
    cache_control,
    claude_turns,
    keep_last_breakpoints,
    replayable,
    thinking_limits,
    unit_temperature,
)
from .sse import SSEEvent

API_VERSION = "2023-06-01"

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool's long turn paused: an answer, not an error
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_ERROR_TYPES = {
    "authentication_error": Failure.AUTH,
    "permission_error": Failure.AUTH,
    "not_found_error": Failure.NOT_FOUND,
    "rate_limit_error": Failure.RATE_LIMITED,
    "overloaded_error": Failure.OVERLOADED,
    "timeout_error": Failure.TRANSIENT,
    "billing_error": Failure.QUOTA_EXHAUSTED,
    "request_too_large": Failure.BAD_REQUEST,
    # invalid_request_error (every other 4xx; 409 is retried) and api_error (any 5xx; a 503
    # is overload) are generic: the status decides.
}

_PREFILL_REJECTIONS = (
    "does not support assistant message prefill",
    "must end with a user message",
    "cannot end with trailing whitespace",
)


# ---------------------------------------------------------------- request


def _api_base(base_url: str) -> str:
    # The SDK convention is a base without /v1; tolerate the OpenAI-style one too.
    base = base_url.rstrip("/")
    return base.removesuffix("/v1")


def _headers(endpoint: Endpoint, accept: str) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": accept,
        "anthropic-version": API_VERSION,
        **endpoint.headers,
    }
    if endpoint.api_key:
        if endpoint.options.get("auth") == "bearer":  # OAuth tokens
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        else:
            headers["x-api-key"] = endpoint.api_key
    return headers


def _block(part: Part) -> dict[str, Any] | None:
    """One neutral part as an Anthropic content block, with its cache breakpoint; None for what is not sent."""
    block = _plain_block(part)
    if block is not None and not isinstance(part, ThinkingPart) and part.cache:
        block["cache_control"] = cache_control(part.cache)
    return block


def _plain_block(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return _image(part)
    if isinstance(part, DocumentPart):
        doc: dict[str, Any] = {
            "type": "document",
            "source": {"type": "base64", "media_type": part.media_type, "data": part.data},
        }
        if part.title:
            doc["title"] = part.title
        return doc
    if isinstance(part, ToolCallPart):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments}
    if isinstance(part, ToolResultPart):
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.tool_call_id}
        if isinstance(part.content, str):
            if part.content:
                result["content"] = part.content
        else:  # text and image blocks, as the client sent them (breakpoints are on the result)
            blocks = [
                _image(b) if isinstance(b, ImagePart) else {"type": "text", "text": b.text}
                for b in part.content
                if isinstance(b, ImagePart) or b.text
            ]
            if blocks:
                result["content"] = blocks
        if part.is_error:
            result["is_error"] = True
        return result
    if isinstance(part, ThinkingPart):
        if replayable(part):
            return {"type": "thinking", "thinking": part.text, "signature": part.signature}
        return None
    assert_never(part)


def _image(part: ImagePart) -> dict[str, Any]:
    if part.url:
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}


def _blocks(msg: Message) -> list[dict[str, Any]]:
    parts: list[Part] = [TextPart(msg.content)] if isinstance(msg.content, str) else msg.content
    return [b for b in map(_block, parts) if b is not None]


def encode_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages -> Anthropic's, as Claude takes them (content as block lists)."""
    return claude_turns(
        ((msg.role, _blocks(msg)) for msg in messages),
        is_text=lambda b: b["type"] == "text",
        is_tool_result=lambda b: b["type"] == "tool_result",
    )


def _plain_strings(turns: list[dict[str, Any]]) -> None:
    """A turn of one unmarked text block goes as a plain string."""
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text" and "cache_control" not in blocks[0]:
            turn["content"] = blocks[0]["text"]


def _system(request: ChatRequest) -> str | list[dict[str, Any]] | None:
    """The system prompt: a string, or text blocks with their breakpoints (blank ones left out)."""
    if request.system is None or isinstance(request.system, str):
        return request.system or None
    blocks: list[dict[str, Any]] = []
    for b in request.system:
        if not b.text.strip():
            continue
        block: dict[str, Any] = {"type": "text", "text": b.text}
        if b.cache:
            block["cache_control"] = cache_control(b.cache)
        blocks.append(block)
    return blocks or None


def _tools(request: ChatRequest) -> list[dict[str, Any]]:
    """The function tools, then the server tools (web search...) as the client wrote them."""
    tools = []
    for t in request.tools:
        tool: dict[str, Any] = {"name": t.name, "input_schema": t.parameters}
        if t.description:
            tool["description"] = t.description
        if t.cache:
            tool["cache_control"] = cache_control(t.cache)
        tools.append(tool)
    return [*tools, *(dict(t) for t in request.server_tools)]


def _beta(configured: str, asked: list[str]) -> str:
    """The `anthropic-beta` header: the provider's own flags, then the client's, each once."""
    flags: list[str] = []
    for flag in [*configured.split(","), *asked]:
        flag = flag.strip()
        if flag and flag not in flags:
            flags.append(flag)
    return ",".join(flags)


def _thinking_allowed(messages: list[dict[str, Any]]) -> bool:
    """Whether extended thinking can be asked for with this history.

    Not with a prefill (a final assistant message: §8), and not while a tool loop
    is under way whose last assistant turn does not open with a thinking block,
    which the API then requires (its tool_use came from a provider without
    Claude's signed thinking, or thinking was off).
    """
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        return True
    if messages[-1]["role"] == "assistant":
        return False
    content = assistants[-1]["content"]
    if isinstance(content, str) or not any(b["type"] == "tool_use" for b in content):
        return True
    return content[0]["type"] in ("thinking", "redacted_thinking")


def _tool_choice(choice: str, thinking: bool) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if thinking:
        # "Thinking may not be enabled when tool_choice forces tool use": the tools stay
        # offered, the model decides.
        return {"type": "auto"}
    if choice in ("required", "any"):
        return {"type": "any"}
    return {"type": "tool", "name": choice}


def _limits(request: ChatRequest, endpoint: Endpoint, thinking: bool) -> tuple[int, int | None]:
    """`max_tokens` (required by the API: the default when none was named) and the thinking budget."""
    default = int(endpoint.options.get("default_max_tokens", ANSWER_TOKENS))
    max_tokens, budget = thinking_limits(
        request.max_tokens, request.thinking_budget if thinking else None, default
    )
    return (max_tokens if max_tokens is not None else default), budget


# ---------------------------------------------------------------- dialect


class AnthropicDialect:
    name = "anthropic"

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        messages = encode_messages(request.messages)
        system = _system(request)
        tools = _tools(request)
        keep_last_breakpoints(
            [
                *tools,
                *(system if isinstance(system, list) else ()),
                *(b for m in messages for b in m["content"]),
            ],
            "cache_control",
        )
        _plain_strings(messages)
        max_tokens, budget = _limits(request, endpoint, _thinking_allowed(messages))
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        if budget is not None:
            # With thinking the sampling parameters must stay at their defaults (temperature,
            # top_k); top_p may only be between 0.95 and 1.
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            if request.top_p is not None:
                body["top_p"] = min(1.0, max(0.95, request.top_p))
        else:
            if request.temperature is not None:
                body["temperature"] = unit_temperature(request.temperature)
            if request.top_p is not None:
                body["top_p"] = request.top_p
            if request.top_k is not None:
                body["top_k"] = request.top_k
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.context_management is not None:
            body["context_management"] = request.context_management
        if request.metadata:
            body["metadata"] = request.metadata
        if tools:
            body["tools"] = tools
            if request.tool_choice:
                body["tool_choice"] = _tool_choice(request.tool_choice, budget is not None)
        url = join_url(_api_base(endpoint.base_url), "v1/messages")
        headers = _headers(endpoint, "text/event-stream")
        beta = _beta(headers.get("anthropic-beta", ""), request.anthropic_beta)
        if beta:
            headers["anthropic-beta"] = beta
        return HttpRequest("POST", url, headers, json_body(body))

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        err = error_object(body)
        message = str(err.get("message") or body.decode("utf-8", "replace").strip() or "(empty body)")
        kind = _classify(status, str(err.get("type") or ""), message)
        retry: float | None = None
        if kind is Failure.RATE_LIMITED:
            # retry-after, else the reset instant of the exhausted anthropic-ratelimit-* bucket.
            retry = retry_after_from_headers(headers, now)
        elif kind in (Failure.OVERLOADED, Failure.TRANSIENT):
            retry = explicit_retry_after(headers, now)
        return UpstreamError(
            kind, f"HTTP {status}: {short(_label(err, message))}", status=status, retry_after=retry
        )

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        query: dict[str, str | int] = {"limit": 1000}
        if cursor is not None:
            query["after_id"] = cursor
        url = join_url(_api_base(endpoint.base_url), "v1/models") + "?" + urlencode(query)
        headers = _headers(endpoint, "application/json")
        del headers["content-type"]  # a GET without a body
        return HttpRequest("GET", url, headers)

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        data = loads_json(body)
        if not isinstance(data, dict):
            raise ValueError("model list is not a JSON object")
        items = data.get("data") or []
        ids = [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m]
        last = data.get("last_id")
        if data.get("has_more") and isinstance(last, str) and last and last != cursor:
            return ids, last
        return ids, None


def _classify(status: int, etype: str, message: str) -> Failure:
    """Body first, status second: Anthropic's 400 is both a bad request and an empty wallet."""
    text = message.lower()
    if "credit balance" in text or status == 402:
        return Failure.QUOTA_EXHAUSTED
    if "prompt is too long" in text or "exceed context limit" in text:
        return Failure.CONTEXT_TOO_LONG
    if any(p in text for p in _PREFILL_REJECTIONS):
        return Failure.PREFILL_REJECTED
    return _ERROR_TYPES.get(etype) or classify_status(status)


def _label(err: Mapping[str, Any], message: str) -> str:
    etype = str(err.get("type") or "")
    return f"{etype}: {message}" if etype else message


_STREAM_ERROR_TYPES = {"overloaded_error": Failure.OVERLOADED, "rate_limit_error": Failure.RATE_LIMITED}


def _classify_in_stream(status: int, err: Mapping[str, Any], message: str) -> tuple[Failure, float | None]:
    """`event: error` under HTTP 200: output may have gone out, so anything but load is transient."""
    return _STREAM_ERROR_TYPES.get(str(err.get("type") or ""), Failure.TRANSIENT), None


# ---------------------------------------------------------------- stream


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


class AnthropicStreamDecoder(SSEJsonDecoder):
    """Messages stream events -> neutral items.

    Text and thinking are yielded as their deltas arrive. A thinking block's
    signature (its `signature_delta`, just before the block stops) is yielded as
    `ThinkingEvent(text="", signature=...)`, so the thinking text is never held
    back. A tool call is yielded whole when its block stops.
    """

    def __init__(self) -> None:
        super().__init__()
        self._model = ""
        # Anthropic's own counts; cumulative, so each report replaces the last.
        self._counts = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
        self._stop_reason: str | None = None
        self._tools: dict[int, StreamedToolUse] = {}
        # Blocks of server tools' calls (`server_tool_use`): their input streams like a tool call's,
        # but they ran at Anthropic and are not the client's to run.
        self._server_calls: set[int] = set()

    def _on_event(self, event: SSEEvent) -> list[DecodedItem]:
        return self._event(event.event, event.data)

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        if self._stop_reason is not None:
            # message_delta carried the stop reason; only message_stop is missing.
            self._done = True
            return [self._finished()]
        raise UpstreamError(Failure.TRANSIENT, "stream ended without message_stop (truncated)")

    def _finished(self) -> Finished:
        c = self._counts
        reason = self._stop_reason
        usage = Usage(
            # The neutral input count is the whole prompt (as OpenAI's and Gemini's are);
            # Anthropic's input_tokens leaves out what was read from or written to the cache.
            input_tokens=c["input_tokens"] + c["cache_read_input_tokens"] + c["cache_creation_input_tokens"],
            output_tokens=c["output_tokens"],
            cache_read_tokens=c["cache_read_input_tokens"],
            cache_write_tokens=c["cache_creation_input_tokens"],
        )
        finish = _FINISH.get(reason, reason) if reason else "stop"
        return Finished(finish_reason=finish, usage=usage, model=self._model)

    def _update_counts(self, usage: Any) -> None:
        if usage is None:
            return
        for key in self._counts:
            value = usage.get(key)
            if value is not None:
                self._counts[key] = int(value)

    def _event(self, name: str, data: str) -> list[DecodedItem]:
        msg = event_object(data)
        kind = msg.get("type", name)  # the data repeats the `event:` name; either will do
        if kind == "message_start":
            message = msg["message"]
            if isinstance(message.get("model"), str):
                self._model = message["model"]
            self._update_counts(message.get("usage"))
        elif kind == "content_block_start":
            return self._block_start(int(msg["index"]), msg["content_block"])
        elif kind == "content_block_delta":
            return self._delta(int(msg["index"]), msg["delta"])
        elif kind == "content_block_stop":
            tool = self._tools.pop(int(msg["index"]), None)
            if tool is not None:
                return [tool.call()]
        elif kind == "message_delta":
            reason = (msg.get("delta") or {}).get("stop_reason")
            if reason is not None:
                self._stop_reason = str(reason)
            self._update_counts(msg.get("usage"))
        elif kind == "message_stop":
            self._done = True
            return [self._finished()]
        elif kind == "error":
            raise inband_error(msg.get("error"), _classify_in_stream, _label)
        # ping, and event types added later: ignored, as the docs ask.
        return []

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[DecodedItem]:
        kind = block["type"]
        if kind == "tool_use":
            initial = block.get("input")
            self._tools[index] = StreamedToolUse(
                _text(block, "id"), _text(block, "name"), initial if isinstance(initial, dict) else {}
            )
        elif kind == "server_tool_use":
            self._server_calls.add(index)
        elif kind == "text" and block.get("text"):
            return [TextEvent(_text(block, "text"))]
        elif kind == "thinking" and block.get("thinking"):
            return [ThinkingEvent(_text(block, "thinking"))]
        # redacted_thinking has nothing to show and no neutral part to travel back in; nor have a
        # server tool's call and result (`server_tool_use`, `web_search_tool_result`), which ran at
        # Anthropic: the text that follows them carries the answer.
        return []

    def _delta(self, index: int, delta: Mapping[str, Any]) -> list[DecodedItem]:
        kind = delta["type"]
        if kind == "text_delta":
            text = _text(delta, "text")
            return [TextEvent(text)] if text else []
        if kind == "thinking_delta":
            text = _text(delta, "thinking")
            return [ThinkingEvent(text)] if text else []
        if kind == "signature_delta":
            return [ThinkingEvent("", signature=_text(delta, "signature"))]
        if kind == "input_json_delta" and index not in self._server_calls:
            self._tools[index].fragments.append(_text(delta, "partial_json"))
        return []  # citations and later delta types
