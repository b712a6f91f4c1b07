"""Anthropic Messages (`POST /v1/messages`, SSE with `event:` lines), sans-IO."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    ToolCallEvent,
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
    join_url,
    json_body,
    loads_event,
    loads_json,
    short,
)
from .sse import SSEEvent

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024  # the API's floor for `budget_tokens`

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
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
    """One neutral part as an Anthropic content block; None for what is not sent."""
    if isinstance(part, TextPart):
        # The API rejects empty and whitespace-only text blocks.
        return {"type": "text", "text": part.text} if part.text.strip() else None
    if isinstance(part, ImagePart):
        if part.url:
            return {"type": "image", "source": {"type": "url", "url": part.url}}
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": part.media_type, "data": part.data},
        }
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
        if part.content:
            result["content"] = part.content
        if part.is_error:
            result["is_error"] = True
        return result
    if isinstance(part, ThinkingPart):
        # The API verifies the signature of every thinking block it is sent, and a block
        # without one is rejected. Only Claude (here or on Bedrock/Vertex) signs its
        # thinking, so a signed part is taken to be Claude's; unsigned reasoning from
        # other vendors is dropped. (`provider` names a configured provider, not a vendor,
        # so it cannot decide this.)
        if part.signature:
            return {"type": "thinking", "thinking": part.text, "signature": part.signature}
        return None
    assert_never(part)


def encode_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages -> Anthropic's: same-role neighbours merged, tool results first, prefill stripped."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        parts: list[Part] = [TextPart(msg.content)] if isinstance(msg.content, str) else msg.content
        blocks = [b for b in map(_block, parts) if b is not None]
        if not blocks:
            continue  # the API rejects empty messages
        if out and out[-1]["role"] == msg.role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": msg.role, "content": blocks})
    if out and out[-1]["role"] == "assistant":
        # A final assistant message is a prefill; the API rejects one ending in whitespace.
        last = out[-1]["content"]
        if last[-1]["type"] == "text":
            last[-1] = {"type": "text", "text": last[-1]["text"].rstrip()}
    for m in out:
        blocks = m["content"]
        if m["role"] == "user":
            # Tool results must open the user turn that follows the tool_use (stable sort).
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            m["content"] = blocks[0]["text"]
    return out


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
    """`max_tokens` (required by the API) and the thinking budget (None: no thinking).

    An explicit max_tokens is a cap on everything generated, thinking included (it is
    lowered for continuations), so the budget shrinks to fit under it; without one, the
    answer gets the default on top of the budget.
    """
    default = int(endpoint.options.get("default_max_tokens", DEFAULT_MAX_TOKENS))
    budget = request.thinking_budget
    if not thinking or budget is None or budget <= 0:
        return (request.max_tokens if request.max_tokens is not None else default), None
    budget = max(budget, MIN_THINKING_BUDGET)
    if request.max_tokens is None:
        return budget + default, budget
    if request.max_tokens <= budget:
        budget = request.max_tokens - 1
        if budget < MIN_THINKING_BUDGET:
            return request.max_tokens, None  # too little room to think: answer without
    return request.max_tokens, budget


# ---------------------------------------------------------------- dialect


class AnthropicDialect:
    name = "anthropic"

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        messages = encode_messages(request.messages)
        max_tokens, budget = _limits(request, endpoint, _thinking_allowed(messages))
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": messages,
            "stream": True,
        }
        if request.system:
            body["system"] = request.system
        if budget is not None:
            # With thinking the sampling parameters must stay at their defaults (temperature,
            # top_k); top_p may only be between 0.95 and 1.
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            if request.top_p is not None:
                body["top_p"] = min(1.0, max(0.95, request.top_p))
        else:
            if request.temperature is not None:
                # The neutral range is OpenAI's 0-2, Anthropic's is 0-1. Clamped, not rescaled:
                # 0.7 means the same everywhere, and above 1 is "as random as it gets".
                body["temperature"] = min(1.0, max(0.0, request.temperature))
            if request.top_p is not None:
                body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.tools:
            tools = []
            for t in request.tools:
                tool: dict[str, Any] = {"name": t.name, "input_schema": t.parameters}
                if t.description:
                    tool["description"] = t.description
                tools.append(tool)
            body["tools"] = tools
            if request.tool_choice:
                body["tool_choice"] = _tool_choice(request.tool_choice, budget is not None)
        url = join_url(_api_base(endpoint.base_url), "v1/messages")
        return HttpRequest("POST", url, _headers(endpoint, "text/event-stream"), json_body(body))

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        err = error_object(body)
        etype = str(err.get("type") or "")
        message = str(err.get("message") or body.decode("utf-8", "replace").strip() or "(empty body)")
        kind = _classify(status, etype, message)
        retry: float | None = None
        if kind is Failure.RATE_LIMITED:
            # retry-after, else the reset instant of the exhausted anthropic-ratelimit-* bucket.
            retry = retry_after_from_headers(headers, now)
        elif kind in (Failure.OVERLOADED, Failure.TRANSIENT):
            # Only an explicit wait: the rate-limit buckets' resets say nothing about load.
            explicit = {k: v for k, v in headers.items() if k.lower() in ("retry-after", "retry-after-ms")}
            retry = retry_after_from_headers(explicit, now)
        label = f"{etype}: {message}" if etype else message
        return UpstreamError(kind, f"HTTP {status}: {short(label)}", status=status, retry_after=retry)

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


def _inband_error(err: Any) -> UpstreamError:
    """`event: error` under HTTP 200: output may have gone out, so anything but load is transient."""
    if not isinstance(err, dict):
        err = {"message": str(err)}
    etype = str(err.get("type") or "")
    message = str(err.get("message") or "error event in stream")
    kind = {"overloaded_error": Failure.OVERLOADED, "rate_limit_error": Failure.RATE_LIMITED}.get(
        etype, Failure.TRANSIENT
    )
    label = f"{etype}: {message}" if etype else message
    return UpstreamError(kind, f"error in stream: {short(label)}")


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
        self._tools: dict[int, _ToolBlock] = {}

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
        msg = loads_event(data)
        if not isinstance(msg, dict):
            raise TypeError("event is not a JSON object")
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
            raise _inband_error(msg.get("error"))
        # ping, and event types added later: ignored, as the docs ask.
        return []

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[DecodedItem]:
        kind = block["type"]
        if kind == "tool_use":
            initial = block.get("input")
            self._tools[index] = _ToolBlock(
                _text(block, "id"), _text(block, "name"), initial if isinstance(initial, dict) else {}
            )
        elif kind == "text" and block.get("text"):
            return [TextEvent(_text(block, "text"))]
        elif kind == "thinking" and block.get("thinking"):
            return [ThinkingEvent(_text(block, "thinking"))]
        # redacted_thinking has nothing to show and no neutral part to travel back in.
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
        if kind == "input_json_delta":
            self._tools[index].parts.append(_text(delta, "partial_json"))
        return []  # citations and later delta types


@dataclass(slots=True)
class _ToolBlock:
    """A tool_use block being streamed: its input arrives as JSON fragments."""

    call_id: str
    name: str
    initial: dict[str, Any]
    parts: list[str] = field(default_factory=list)

    def call(self) -> ToolCallEvent:
        raw = "".join(self.parts)
        if not raw.strip():
            # No fragments (or only the usual empty first one): the input stays as it started.
            return ToolCallEvent(self.call_id, self.name, self.initial)
        try:
            args = loads_json(raw)
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise UpstreamError(Failure.TRANSIENT, f"tool call {self.name!r} has invalid JSON input")
        return ToolCallEvent(self.call_id, self.name, args)
