"""OpenAI Chat Completions (also OpenRouter and any OpenAI-compatible endpoint), sans-IO."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ...chat import (
    ChatRequest,
    DecodedItem,
    Finished,
    ImagePart,
    Message,
    TextEvent,
    TextPart,
    ThinkingEvent,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from ..errors import (
    Failure,
    UpstreamError,
    classify_status,
    retry_after_from_headers,
    retry_after_from_text,
)
from .base import (
    Endpoint,
    HttpRequest,
    SSEJsonDecoder,
    error_object,
    event_object,
    inband_error,
    join_url,
    json_body,
    loads_json,
    short,
)
from .sse import SSEEvent

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls"}


def _user_messages(msg: Message) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return [{"role": "user", "content": msg.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for p in msg.content:
        if isinstance(p, ToolResultPart):
            # OpenAI carries tool results as their own `tool` messages, before the user's words.
            out.append({"role": "tool", "tool_call_id": p.tool_call_id, "content": p.content})
        elif isinstance(p, TextPart):
            parts.append({"type": "text", "text": p.text})
        elif isinstance(p, ImagePart):
            url = p.url or f"data:{p.media_type};base64,{p.data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    if parts:
        simple = all(x["type"] == "text" for x in parts)
        content: Any = "".join(x["text"] for x in parts) if simple else parts
        out.append({"role": "user", "content": content})
    return out


def _assistant_message(msg: Message) -> dict[str, Any]:
    if isinstance(msg.content, str):
        return {"role": "assistant", "content": msg.content}
    text = "".join(p.text for p in msg.content if isinstance(p, TextPart))
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": json.dumps(p.arguments)}}
        for p in msg.content
        if isinstance(p, ToolCallPart)
    ]
    out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        out["tool_calls"] = calls
    return out


def encode_messages(request: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for msg in request.messages:
        if msg.role == "user":
            messages.extend(_user_messages(msg))
        else:
            messages.append(_assistant_message(msg))
    return messages


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


class OpenAIDialect:
    name = "openai"

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        body: dict[str, Any] = {
            "model": model,
            "messages": encode_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            # api.openai.com wants max_completion_tokens (reasoning models reject max_tokens);
            # most OpenAI-compatible servers only know max_tokens.
            body[str(endpoint.options.get("max_tokens_field", "max_tokens"))] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = request.stop[:4]
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
            if request.tool_choice:
                body["tool_choice"] = _tool_choice(request.tool_choice)
        headers = {"content-type": "application/json", "accept": "text/event-stream", **endpoint.headers}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        return HttpRequest("POST", join_url(endpoint.base_url, "chat/completions"), headers, json_body(body))

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        err = error_object(body)
        message = str(err.get("message") or body.decode("utf-8", "replace") or f"HTTP {status}")
        kind = _classify(status, err, message)
        retry = retry_after_from_headers(headers, now)
        if retry is None and kind in (Failure.RATE_LIMITED, Failure.QUOTA_EXHAUSTED):
            retry = retry_after_from_text(message)
        return UpstreamError(kind, f"HTTP {status}: {short(message)}", status=status, retry_after=retry)

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        headers = {"accept": "application/json", **endpoint.headers}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        return HttpRequest("GET", join_url(endpoint.base_url, "models"), headers)

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        data = loads_json(body)
        items = data.get("data", []) if isinstance(data, dict) else []
        return [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m], None  # not paginated


def _classify(status: int, err: Mapping[str, Any], message: str) -> Failure:
    """Body type/code first, status second: OpenAI's 429 is both a rate limit and an empty wallet."""
    code = f"{err.get('code') or ''} {err.get('type') or ''}".lower()
    text = message.lower()
    if "insufficient_quota" in code or "credit_balance" in code or "weekly_rate_limited" in code:
        return Failure.QUOTA_EXHAUSTED
    if "credit balance" in text or status == 402:
        return Failure.QUOTA_EXHAUSTED
    if "context_length" in code or "maximum context length" in text or "prompt is too long" in text:
        return Failure.CONTEXT_TOO_LONG
    if status == 400 and ("prefill" in text or "must end with a user message" in text):
        return Failure.PREFILL_REJECTED
    if "model_not_found" in code:
        return Failure.NOT_FOUND
    if status == 400 and ("content_filter" in code or "invalid_prompt" in code):
        return Failure.CONTENT_FILTER
    if "overloaded" in code:
        return Failure.OVERLOADED
    if "rate_limit" in code and status != 400:
        return Failure.RATE_LIMITED
    return classify_status(status)


def _classify_in_stream(status: int, err: Mapping[str, Any], message: str) -> tuple[Failure, float | None]:
    return _classify(status, err, message), None  # as a response's, without looking for a wait


class OpenAIStreamDecoder(SSEJsonDecoder):
    """Chat-completion chunks -> neutral items. Tool calls are yielded whole, at the finish."""

    def __init__(self) -> None:
        super().__init__()
        self._finish: str | None = None
        self._usage = Usage()
        self._model = ""
        self._calls: dict[int, dict[str, str]] = {}

    def _on_event(self, event: SSEEvent) -> list[DecodedItem]:
        return self._event(event.data)

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        if self._finish is not None:
            # The finish signal arrived; a missing [DONE] after it is not a failure.
            self._done = True
            return [Finished(finish_reason=self._finish, usage=self._usage, model=self._model)]
        raise UpstreamError(Failure.TRANSIENT, "stream ended without a finish_reason (truncated)")

    def _event(self, data: str) -> list[DecodedItem]:
        if data.startswith("[DONE]"):
            if self._finish is None:
                raise UpstreamError(Failure.TRANSIENT, "stream sent [DONE] without a finish_reason")
            self._done = True
            return [Finished(finish_reason=self._finish, usage=self._usage, model=self._model)]
        chunk = event_object(data)
        if chunk.get("error"):
            raise inband_error(chunk["error"], _classify_in_stream)
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self._model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self._usage = _usage(chunk["usage"])
        out: list[DecodedItem] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(ThinkingEvent(reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                out.append(TextEvent(delta["content"]))
            for tc in delta.get("tool_calls") or []:
                slot = self._calls.setdefault(
                    int(tc.get("index", 0)), {"id": "", "name": "", "arguments": ""}
                )
                fn = tc.get("function") or {}
                slot["id"] = tc.get("id") or slot["id"]
                slot["name"] = fn.get("name") or slot["name"]
                slot["arguments"] += fn.get("arguments") or ""
            reason = choice.get("finish_reason")
            if reason == "error":  # OpenRouter's in-band failure
                raise inband_error("provider reported finish_reason=error", _classify_in_stream)
            if reason:
                self._finish = _FINISH.get(reason, reason)
                out.extend(self._tool_calls())
        return out

    def _tool_calls(self) -> list[DecodedItem]:
        out: list[DecodedItem] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            try:
                args = loads_json(call["arguments"] or "{}")
            except ValueError:
                raise UpstreamError(
                    Failure.TRANSIENT, f"tool call {call['name']!r} has invalid JSON arguments"
                ) from None
            out.append(
                ToolCallEvent(
                    call["id"] or f"call_{index}", call["name"], args if isinstance(args, dict) else {}
                )
            )
        self._calls.clear()
        return out


def _usage(u: Mapping[str, Any]) -> Usage:
    details = u.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(u.get("prompt_tokens") or 0),
        output_tokens=int(u.get("completion_tokens") or 0),
        cache_read_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
    )
