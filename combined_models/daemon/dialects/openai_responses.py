"""The OpenAI Responses API as an upstream (`api = "openai-responses"`), sans-IO (provider-protocols.md §9).

For models a vendor serves only this way, and for servers that speak nothing else.
Every request streams, with `store: false`: the conversation travels whole each
time, as with the other dialects, and nothing is left behind at the provider.

Reasoning comes back as its summary (`ThinkingEvent`, never signed: its encrypted
form is OpenAI's and means nothing to another provider, so it is not asked for).
Tool calls are taken whole from `response.output_item.done`, as Codex takes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ...chat import (
    ChatRequest,
    DecodedItem,
    DocumentPart,
    Finished,
    ImagePart,
    Message,
    TextEvent,
    TextPart,
    ThinkingEvent,
    ThinkingPart,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from ..errors import (
    Failure,
    UpstreamError,
    classify_status,
    retry_after_from_text,
)
from .base import (
    Endpoint,
    HttpRequest,
    SSEJsonDecoder,
    event_object,
    inband_error,
    loads_json,
)
from .openai import list_models_request, openai_error, parse_model_ids, streaming_post
from .sse import SSEEvent

# The smallest `max_output_tokens` the API takes; a smaller cap (a continuation's rest) is raised to it.
MIN_OUTPUT_TOKENS = 16


def _effort(budget: int) -> str:
    """A thinking budget in tokens -> the reasoning effort asked for."""
    if budget <= 2048:
        return "low"
    if budget <= 8192:
        return "medium"
    return "high"


def _input_image(p: ImagePart) -> dict[str, Any]:
    url = p.url or f"data:{p.media_type};base64,{p.data}"
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _user_items(msg: Message) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": msg.content}]}]
    out: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for p in msg.content:
        if isinstance(p, ToolResultPart):
            # Tool outputs are items of their own, before the user's words.
            # Its output is sent as text (what every Responses server takes): a result's images
            # follow in the user message.
            out.append({"type": "function_call_output", "call_id": p.tool_call_id, "output": p.text()})
            content += (_input_image(image) for image in p.images())
        elif isinstance(p, TextPart):
            content.append({"type": "input_text", "text": p.text})
        elif isinstance(p, ImagePart):
            content.append(_input_image(p))
        elif isinstance(p, DocumentPart):
            file: dict[str, Any] = {"type": "input_file", "file_data": f"data:{p.media_type};base64,{p.data}"}
            file["filename"] = p.title or "document.pdf"
            content.append(file)
    if content:
        out.append({"type": "message", "role": "user", "content": content})
    return out


def _assistant_items(msg: Message) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        text = [{"type": "output_text", "text": msg.content}] if msg.content else []
        return [{"type": "message", "role": "assistant", "content": text}] if text else []
    out: list[dict[str, Any]] = []
    for p in msg.content:
        if isinstance(p, TextPart):
            if out and out[-1]["type"] == "message":  # neighbouring texts are one message
                out[-1]["content"].append({"type": "output_text", "text": p.text})
            else:
                out.append(
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": p.text}],
                    }
                )
        elif isinstance(p, ToolCallPart):
            arguments = json.dumps(p.arguments, ensure_ascii=False)
            out.append({"type": "function_call", "call_id": p.id, "name": p.name, "arguments": arguments})
        elif isinstance(p, ThinkingPart):
            # A reasoning item replays only with OpenAI's own encrypted content, which the neutral
            # model does not carry: dropped, as the model's own reasoning is after `store: false`.
            continue
    return out


def encode_input(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages -> the `input` items."""
    items: list[dict[str, Any]] = []
    for msg in messages:
        items += _user_items(msg) if msg.role == "user" else _assistant_items(msg)
    return items


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "name": choice}


class OpenAIResponsesDialect:
    name = "openai-responses"

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        if request.stop:
            raise UpstreamError(Failure.UNSUPPORTED, "the Responses API has no stop sequences")
        body: dict[str, Any] = {
            "model": model,
            "input": encode_input(request.messages),
            "stream": True,
            "store": False,
        }
        if system := request.system_text():
            body["instructions"] = system
        if request.max_tokens is not None:
            body["max_output_tokens"] = max(MIN_OUTPUT_TOKENS, request.max_tokens)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": False,
                }
                for t in request.tools
            ]
            if request.tool_choice:
                body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.thinking_budget:
            body["reasoning"] = {"effort": _effort(request.thinking_budget), "summary": "auto"}
        if request.cache_key:
            body["prompt_cache_key"] = request.cache_key
        return streaming_post(endpoint, "responses", body)

    def stream_decoder(self) -> ResponsesStreamDecoder:
        return ResponsesStreamDecoder()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        return openai_error(classify, status, headers, body, now)

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        return list_models_request(endpoint)

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        return parse_model_ids(body)


def classify(status: int, err: Mapping[str, Any], message: str) -> Failure:
    """Body type/code first, status second (OpenAI's 429 is both a rate limit and an empty wallet)."""
    code = f"{err.get('code') or ''} {err.get('type') or ''}".lower()
    text = message.lower()
    if "insufficient_quota" in code or "credit_balance" in code or "usage_not_included" in code:
        return Failure.QUOTA_EXHAUSTED
    if "credit balance" in text or status == 402:
        return Failure.QUOTA_EXHAUSTED
    if "context_length" in code or "maximum context length" in text or "context window" in text:
        return Failure.CONTEXT_TOO_LONG
    if "model_not_found" in code:
        return Failure.NOT_FOUND
    if "invalid_prompt" in code or "content_filter" in code:
        return Failure.CONTENT_FILTER
    if "overloaded" in code or "server_is_overloaded" in code:
        return Failure.OVERLOADED
    if ("rate_limit" in code or "too_many_requests" in code) and status != 400:
        return Failure.RATE_LIMITED
    return classify_status(status)


def _classify_in_stream(status: int, err: Mapping[str, Any], message: str) -> tuple[Failure, float | None]:
    """A failure inside the stream; its message may name the wait ("try again in 20s")."""
    kind = classify(status, err, message)
    wait = retry_after_from_text(message) if kind in (Failure.RATE_LIMITED, Failure.QUOTA_EXHAUSTED) else None
    return kind, wait


_FINISH_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class ResponsesStreamDecoder(SSEJsonDecoder):
    """Responses stream events -> neutral items, dispatched on the JSON `type` (as the SDK and Codex do)."""

    def __init__(self) -> None:
        super().__init__()
        self._model = ""
        self._calls = 0
        self._refused = False
        self._summary: tuple[str, int] | None = None  # (item id, summary index) of the last summary text

    def _on_event(self, event: SSEEvent) -> list[DecodedItem]:
        if event.data.startswith("[DONE]"):
            return []  # not documented; harmless (the terminal event came before it, or close() says)
        data = event_object(event.data)
        kind = data.get("type")
        if kind == "error":  # flat ({code, message}) or nested ({error: {...}})
            nested = data.get("error")
            raise inband_error(nested if isinstance(nested, dict) else data, _classify_in_stream)
        if kind in ("response.created", "response.in_progress"):
            self._note_model(data.get("response"))
            return []
        if kind == "response.output_text.delta":
            return [TextEvent(data["delta"])] if data.get("delta") else []
        if kind == "response.refusal.delta":
            self._refused = True
            return [TextEvent(data["delta"])] if data.get("delta") else []
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return self._thinking(data)
        if kind == "response.output_item.done":
            return self._item(data.get("item"))
        if kind in ("response.completed", "response.incomplete"):
            return self._finish(data.get("response"))
        if kind == "response.failed":
            response = data.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            raise inband_error(error or "the response failed", _classify_in_stream)
        return []  # the other events repeat what the ones above carry, or are not for us

    def _note_model(self, response: Any) -> None:
        if isinstance(response, dict) and isinstance(response.get("model"), str):
            self._model = response["model"] or self._model

    def _thinking(self, data: dict[str, Any]) -> list[DecodedItem]:
        delta = data.get("delta")
        if not isinstance(delta, str) or not delta:
            return []
        index = data.get("summary_index", data.get("content_index", 0))
        where = (str(data.get("item_id", "")), int(index or 0))
        out: list[DecodedItem] = []
        if self._summary is not None and self._summary != where:
            out.append(ThinkingEvent("\n\n"))  # the next summary part (or reasoning item)
        self._summary = where
        out.append(ThinkingEvent(delta))
        return out

    def _item(self, item: Any) -> list[DecodedItem]:
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return []
        name = str(item.get("name") or "")
        try:
            args = loads_json(item.get("arguments") or "{}")
        except ValueError:
            raise UpstreamError(Failure.TRANSIENT, f"tool call {name!r} has invalid JSON arguments") from None
        self._calls += 1
        call_id = str(item.get("call_id") or item.get("id") or f"call_{self._calls}")
        return [ToolCallEvent(call_id, name, args if isinstance(args, dict) else {})]

    def _finish(self, response: Any) -> list[DecodedItem]:
        if not isinstance(response, dict):
            raise TypeError("terminal event without its response")
        self._note_model(response)
        reason = "stop"
        details = response.get("incomplete_details")
        if response.get("status") == "incomplete" or details:
            why = details.get("reason") if isinstance(details, dict) else None
            reason = _FINISH_INCOMPLETE.get(str(why), "length")
        elif self._refused:
            reason = "content_filter"
        elif self._calls:
            reason = "tool_calls"
        self._done = True
        usage = response.get("usage")
        return [
            Finished(
                finish_reason=reason,
                usage=_usage(usage) if isinstance(usage, dict) else Usage(),
                model=self._model,
            )
        ]

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        raise UpstreamError(Failure.TRANSIENT, "stream ended before response.completed (truncated)")


def _usage(u: Mapping[str, Any]) -> Usage:
    """`input_tokens` already counts the cached tokens."""
    details = u.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    return Usage(
        input_tokens=int(u.get("input_tokens") or 0),
        output_tokens=int(u.get("output_tokens") or 0),
        cache_read_tokens=int(details.get("cached_tokens") or 0),
        cache_write_tokens=int(details.get("cache_write_tokens") or 0),
    )
