"""OpenAI Chat Completions (also OpenRouter and any OpenAI-compatible endpoint), sans-IO."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
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
from .claude_family import cache_control, keep_last_breakpoints
from .sse import SSEEvent

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls"}


def _text_part(text: str, ttl: str | None, marks: bool) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": text}
    if ttl and marks:
        part["cache_control"] = cache_control(ttl)
    return part


def _content(parts: list[dict[str, Any]]) -> Any:
    """Text-only content without breakpoints as one string, as every server takes it."""
    if all(x["type"] == "text" and "cache_control" not in x for x in parts):
        return "".join(x["text"] for x in parts)
    return parts


def _image_part(p: ImagePart) -> dict[str, Any]:
    url = p.url or f"data:{p.media_type};base64,{p.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _user_messages(msg: Message, marks: bool) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return [{"role": "user", "content": msg.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for p in msg.content:
        if isinstance(p, ToolResultPart):
            # OpenAI carries tool results as their own `tool` messages, before the user's words.
            # A tool message holds text only: a result's images follow in the user message.
            content = _content([_text_part(p.text(), p.cache, marks)])
            out.append({"role": "tool", "tool_call_id": p.tool_call_id, "content": content})
            parts += (_image_part(image) for image in p.images())
        elif isinstance(p, TextPart):
            parts.append(_text_part(p.text, p.cache, marks))
        elif isinstance(p, ImagePart):
            parts.append(_image_part(p))
    if parts:
        out.append({"role": "user", "content": _content(parts)})
    return out


def _assistant_message(msg: Message, marks: bool) -> dict[str, Any]:
    if isinstance(msg.content, str):
        return {"role": "assistant", "content": msg.content}
    texts = [_text_part(p.text, p.cache, marks) for p in msg.content if isinstance(p, TextPart)]
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": json.dumps(p.arguments)}}
        for p in msg.content
        if isinstance(p, ToolCallPart)
    ]
    content = _content(texts)
    out: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    if calls:
        out["tool_calls"] = calls
    return out


def encode_messages(request: ChatRequest, *, cache_marks: bool = False) -> list[dict[str, Any]]:
    """The request's messages; `cache_marks`: text parts keep their breakpoints as `cache_control`.

    That is OpenRouter's way to Claude's prompt cache (at most four, as Claude takes them).
    Elsewhere the markers are left out: OpenAI caches on its own.
    """
    messages: list[dict[str, Any]] = []
    if cache_marks and isinstance(request.system, list) and any(b.cache for b in request.system):
        system = [_text_part(b.text, b.cache, True) for b in request.system if b.text]
        messages.append({"role": "system", "content": system})
    elif request.system_text():
        messages.append({"role": "system", "content": request.system_text()})
    for msg in request.messages:
        if msg.role == "user":
            messages.extend(_user_messages(msg, cache_marks))
        else:
            messages.append(_assistant_message(msg, cache_marks))
    if cache_marks:
        keep_last_breakpoints(
            (p for m in messages if isinstance(m["content"], list) for p in m["content"]), "cache_control"
        )
    return messages


def _claude_on_openrouter(endpoint: Endpoint, model: str) -> bool:
    return endpoint.options.get("flavour") == "openrouter" and (
        model.startswith("anthropic/") or "claude" in model.lower()
    )


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


class OpenAIDialect:
    name = "openai"
    # Whether `prompt_cache_key` is sent: OpenAI documents it; OpenRouter and Copilot do not.
    takes_prompt_cache_key = True

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        body: dict[str, Any] = {
            "model": model,
            "messages": encode_messages(request, cache_marks=_claude_on_openrouter(endpoint, model)),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if (
            request.cache_key
            and self.takes_prompt_cache_key
            and endpoint.options.get("flavour") != "openrouter"
        ):
            body["prompt_cache_key"] = request.cache_key
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
        return streaming_post(endpoint, "chat/completions", body)

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        return openai_error(_classify, status, headers, body, now)

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        return list_models_request(endpoint)

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        return parse_model_ids(body)


# What OpenAI's two APIs (Chat Completions, Responses) share: the error body, the model list.


def openai_error(
    classify: Callable[[int, Mapping[str, Any], str], Failure],
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> UpstreamError:
    """An HTTP error in OpenAI's shape, classified by the API's own rules; the wait from the headers,
    else from the message ("try again in 20s")."""
    err = error_object(body)
    message = str(err.get("message") or body.decode("utf-8", "replace") or f"HTTP {status}")
    kind = classify(status, err, message)
    retry = retry_after_from_headers(headers, now)
    if retry is None and kind in (Failure.RATE_LIMITED, Failure.QUOTA_EXHAUSTED):
        retry = retry_after_from_text(message)
    return UpstreamError(kind, f"HTTP {status}: {short(message)}", status=status, retry_after=retry)


def _headers(endpoint: Endpoint, accept: str) -> dict[str, str]:
    headers = {"accept": accept, **endpoint.headers}
    if endpoint.api_key:
        headers["authorization"] = f"Bearer {endpoint.api_key}"
    return headers


def streaming_post(endpoint: Endpoint, path: str, body: dict[str, Any]) -> HttpRequest:
    """A POST of JSON whose answer streams as SSE, the key as a bearer token."""
    headers = {"content-type": "application/json", **_headers(endpoint, "text/event-stream")}
    return HttpRequest("POST", join_url(endpoint.base_url, path), headers, json_body(body))


def list_models_request(endpoint: Endpoint) -> HttpRequest:
    return HttpRequest("GET", join_url(endpoint.base_url, "models"), _headers(endpoint, "application/json"))


def parse_model_ids(body: bytes) -> tuple[list[str], str | None]:
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
    """`prompt_tokens` already counts the cached tokens (read, and OpenRouter's written ones)."""
    details = u.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    return Usage(
        input_tokens=int(u.get("prompt_tokens") or 0),
        output_tokens=int(u.get("completion_tokens") or 0),
        cache_read_tokens=int(details.get("cached_tokens") or 0),
        cache_write_tokens=int(details.get("cache_write_tokens") or 0),
    )
