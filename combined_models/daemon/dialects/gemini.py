"""Google Gemini Developer API (`:streamGenerateContent?alt=sse`), sans-IO."""

from __future__ import annotations

import re
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
    Tool,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from ..errors import (
    Failure,
    UpstreamError,
    classify_status,
    parse_protobuf_duration,
    retry_after_from_text,
)
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
from .sse import SSEEvent

_FINISH = {
    "STOP": "stop",
    "OTHER": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# The OpenAPI subset Gemini accepts in `functionDeclarations[].parameters`; any other
# key ($schema, additionalProperties, $ref, const, ...) is a 400 "Unknown name".
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "propertyOrdering",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "default",
        "example",
        "anyOf",
    }
)

# Google's documented stand-in for a thought signature the history does not have
# ("transferring a trace from a different model"); see `_sign_function_calls`.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_GEMINI_MAJOR = re.compile(r"gemini-(\d+)")

_CONTEXT_TOO_LONG = (
    "exceeds the maximum number of tokens",
    "input context is too long",
    "prompt is too long",
)


# ---------------------------------------------------------------- request


def _model_id(model: str) -> str:
    return model.removeprefix("models/")


def _headers(endpoint: Endpoint, accept: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": accept, **endpoint.headers}
    if endpoint.api_key:
        headers["x-goog-api-key"] = endpoint.api_key
    return headers


def _image(part: ImagePart) -> dict[str, Any]:
    if part.url:
        return {"fileData": {"mimeType": part.media_type, "fileUri": part.url}}
    return {"inlineData": {"mimeType": part.media_type, "data": part.data}}


def _part(part: Part, names: Mapping[str, str]) -> dict[str, Any] | None:
    """One neutral part as a Gemini part; None for what is not sent."""
    if isinstance(part, TextPart):
        return {"text": part.text} if part.text else None
    if isinstance(part, ImagePart):
        return _image(part)
    if isinstance(part, DocumentPart):
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}  # no field for a title
    if isinstance(part, ToolCallPart):
        return {"functionCall": {"name": part.name, "args": part.arguments}}
    if isinstance(part, ToolResultPart):
        name = names.get(part.tool_call_id)
        if name is None:
            # Gemini matches results to calls by function name, and the history has no such call.
            raise UpstreamError(
                Failure.BAD_REQUEST, f"tool result for unknown tool call id {part.tool_call_id!r}"
            )
        # "output" / "error" are Gemini's own keys; anything else is read as the output.
        key = "error" if part.is_error else "content"
        return {"functionResponse": {"name": name, "response": {key: part.text()}}}
    if isinstance(part, ThinkingPart):
        # Gemini's reasoning is not sent back as text, and its signatures ride on the
        # function-call and text parts, which the neutral model does not carry: dropped.
        return None
    assert_never(part)


def encode_contents(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages -> `contents`: roles user/model, same-role neighbours merged, empties dropped."""
    names: dict[str, str] = {}  # tool call id -> function name, as of this point in the history
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = "model" if msg.role == "assistant" else "user"
        parts_in: list[Part] = [TextPart(msg.content)] if isinstance(msg.content, str) else msg.content
        parts: list[dict[str, Any]] = []
        for p in parts_in:
            if isinstance(p, ToolCallPart):
                names[p.id] = p.name
            gp = _part(p, names)
            if gp is not None:
                parts.append(gp)
            if isinstance(p, ToolResultPart):
                # A functionResponse holds JSON, not media: a result's images follow it as parts.
                parts += map(_image, p.images())
        if not parts:
            continue  # "contents.parts must not be empty"
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    return out


def _sign_function_calls(contents: list[dict[str, Any]]) -> None:
    """Give the first function call of every model turn the documented stand-in signature.

    Gemini 3 and later reject replayed function calls without the thought signature
    they came with (400). Histories here never have one: they pass through the
    neutral model, and may come from another provider altogether.
    """
    for content in contents:
        if content["role"] != "model":
            continue
        for part in content["parts"]:
            if "functionCall" in part:
                part.setdefault("thoughtSignature", SKIP_SIGNATURE)
                break


def _validates_signatures(model: str) -> bool:
    m = _GEMINI_MAJOR.match(_model_id(model))
    return m is not None and int(m.group(1)) >= 3


def gemini_schema(schema: Any) -> Any:
    """A JSON Schema cut down to what Gemini accepts.

    Unknown keys go; a `null` type or option becomes `nullable`, `oneOf` becomes
    the looser `anyOf`, a string `const` a one-value `enum`, and an `anyOf` left
    with one option is folded into its parent (the parent's own keys win).
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    folded: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "oneOf":
            key = "anyOf"
        elif key == "const" and isinstance(value, str):
            key, value = "enum", [value]
        if key not in _SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = gemini_schema(value)
        elif key in ("type", "anyOf") and isinstance(value, list):
            if key == "type":
                value = [{"type": t} for t in value]
            options = [
                gemini_schema(o) for o in value if not (isinstance(o, dict) and o.get("type") == "null")
            ]
            if len(options) < len(value):
                out["nullable"] = True
            if len(options) == 1 and isinstance(options[0], dict):
                folded.update(options[0])
            elif options:
                out["anyOf"] = options
        else:
            out[key] = value
    for key, value in folded.items():
        out.setdefault(key, value)
    return out


def _declaration(tool: Tool) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": tool.name}
    if tool.description:
        decl["description"] = tool.description
    params = gemini_schema(tool.parameters)
    # An OBJECT with no properties is rejected ("should be non-empty for OBJECT type"):
    # a function without parameters has no `parameters` at all.
    if isinstance(params, dict) and params.get("properties"):
        decl["parameters"] = params
    return decl


def _tool_config(choice: str) -> dict[str, Any]:
    if choice in ("auto", "none"):
        return {"mode": choice.upper()}
    if choice in ("required", "any"):
        return {"mode": "ANY"}
    return {"mode": "ANY", "allowedFunctionNames": [choice]}


# ---------------------------------------------------------------- dialect


class GeminiDialect:
    name = "gemini"

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        # A final assistant message is only history here: Gemini has no prefill.
        contents = encode_contents(request.messages)
        if _validates_signatures(model):
            _sign_function_calls(contents)
        body: dict[str, Any] = {"contents": contents}
        # Gemini caches implicitly: breakpoint markers have no place here and are left out.
        if request.system_text():
            body["systemInstruction"] = {"parts": [{"text": request.system_text()}]}
        if request.tools:
            body["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
            if request.tool_choice:
                body["toolConfig"] = {"functionCallingConfig": _tool_config(request.tool_choice)}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature  # Gemini's range is 0-2, as the neutral one
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.top_k is not None:
            config["topK"] = request.top_k
        if request.stop:
            config["stopSequences"] = request.stop[:5]  # Gemini allows at most 5
        if request.thinking_budget is not None:
            # 0 turns thinking off where the model allows it; -1 lets the model decide.
            budget = request.thinking_budget
            config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget != 0}
        if config:
            body["generationConfig"] = config
        url = join_url(endpoint.base_url, f"models/{_model_id(model)}:streamGenerateContent") + "?alt=sse"
        return HttpRequest("POST", url, _headers(endpoint, "text/event-stream"), json_body(body))

    def stream_decoder(self) -> GeminiStreamDecoder:
        return GeminiStreamDecoder()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        err = error_object(body)  # also unwraps the array form [{"error": ...}]
        message = str(err.get("message") or body.decode("utf-8", "replace").strip() or "(empty body)")
        kind, retry = _classify(status, err, message)
        if retry is None and kind in (Failure.RATE_LIMITED, Failure.OVERLOADED, Failure.TRANSIENT):
            retry = explicit_retry_after(headers, now)
        return UpstreamError(
            kind, f"HTTP {status}: {short(_label(err, message))}", status=status, retry_after=retry
        )

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        query: dict[str, str | int] = {"pageSize": 1000}
        if cursor is not None:
            query["pageToken"] = cursor
        url = join_url(endpoint.base_url, "models") + "?" + urlencode(query)
        headers = _headers(endpoint, "application/json")
        del headers["content-type"]  # a GET without a body
        return HttpRequest("GET", url, headers)

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        data = loads_json(body)
        if not isinstance(data, dict):
            raise ValueError("model list is not a JSON object")
        ids: list[str] = []
        for m in data.get("models") or []:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                continue
            methods = m.get("supportedGenerationMethods")
            if isinstance(methods, list) and "generateContent" not in methods:
                continue  # embedding, AQA, image-only models
            ids.append(_model_id(m["name"]))
        token = data.get("nextPageToken")
        if isinstance(token, str) and token and token != cursor:
            return ids, token
        return ids, None


def _details(err: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """The `google.rpc.<kind>` entries of an error's details."""
    details = err.get("details")
    if not isinstance(details, list):
        return []
    suffix = f"google.rpc.{kind}"
    return [d for d in details if isinstance(d, dict) and str(d.get("@type", "")).endswith(suffix)]


def _per_day_quota(err: Mapping[str, Any]) -> bool:
    for failure in _details(err, "QuotaFailure"):
        for v in failure.get("violations") or []:
            if isinstance(v, dict) and "PerDay" in str(v.get("quotaId", "")):
                return True
    return False


def _retry_delay(err: Mapping[str, Any]) -> float | None:
    for info in _details(err, "RetryInfo"):
        delay = info.get("retryDelay")
        if isinstance(delay, str):
            return parse_protobuf_duration(delay)
    return None


def _bad_api_key(err: Mapping[str, Any], text: str) -> bool:
    # A wrong key is a 400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID.
    reasons = [str(d.get("reason", "")) for d in _details(err, "ErrorInfo")]
    return any(r.startswith("API_KEY_") for r in reasons) or "api key not valid" in text


def _classify(status: int, err: Mapping[str, Any], message: str) -> tuple[Failure, float | None]:
    """The class and the wait, from the body's status and details first, the HTTP status second."""
    rpc = str(err.get("status") or "")
    text = message.lower()
    if status == 429 or rpc == "RESOURCE_EXHAUSTED":
        if _per_day_quota(err):
            # A per-day quota comes with a short RetryInfo too, but waiting won't help: exhausted.
            return Failure.QUOTA_EXHAUSTED, None
        retry = _retry_delay(err)
        return Failure.RATE_LIMITED, retry if retry is not None else retry_after_from_text(message)
    if rpc == "FAILED_PRECONDITION":  # billing, or the free tier is not offered in this region
        return Failure.QUOTA_EXHAUSTED, None
    if _bad_api_key(err, text):
        return Failure.AUTH, None
    if any(p in text for p in _CONTEXT_TOO_LONG):  # a 400, or a 500 INTERNAL per the docs
        return Failure.CONTEXT_TOO_LONG, None
    kind = {
        "INVALID_ARGUMENT": Failure.BAD_REQUEST,
        "UNAUTHENTICATED": Failure.AUTH,
        "PERMISSION_DENIED": Failure.AUTH,
        "NOT_FOUND": Failure.NOT_FOUND,
        "UNAVAILABLE": Failure.OVERLOADED,
        "INTERNAL": Failure.TRANSIENT,
        "DEADLINE_EXCEEDED": Failure.TRANSIENT,
        "CANCELLED": Failure.TRANSIENT,
    }.get(rpc) or classify_status(status)
    return kind, _retry_delay(err) if kind in (Failure.OVERLOADED, Failure.TRANSIENT) else None


def _label(err: Mapping[str, Any], message: str) -> str:
    """The message, after the error's RPC status (`RESOURCE_EXHAUSTED: ...`) when it has one."""
    return f"{err['status']}: {message}" if isinstance(err.get("status"), str) else message


# ---------------------------------------------------------------- stream


class GeminiStreamDecoder(SSEJsonDecoder):
    """GenerateContentResponse chunks -> neutral items.

    Function calls arrive whole. Gemini has no call ids (or, on newer models, only
    sometimes): generated ones are `call_<responseId>_<n>`, unique across the
    conversation since Anthropic rejects repeated tool_use ids after a failover.
    The stream has no end marker: a chunk with a `finishReason`, then EOF, is
    complete, so `Finished` comes from `close()`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._finish: str | None = None
        self._usage = Usage()
        self._model = ""
        self._calls = 0

    def _on_event(self, event: SSEEvent) -> list[DecodedItem]:
        return self._event(event.data)

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        if self._finish is None:
            raise UpstreamError(Failure.TRANSIENT, "stream ended without a finishReason (truncated)")
        self._done = True
        return [Finished(finish_reason=self._finish, usage=self._usage, model=self._model)]

    def _event(self, data: str) -> list[DecodedItem]:
        chunk = event_object(data)
        if "error" in chunk:
            raise inband_error(chunk["error"], _classify, _label)
        feedback = chunk.get("promptFeedback") or {}
        if feedback.get("blockReason"):
            raise UpstreamError(Failure.CONTENT_FILTER, f"prompt blocked: {feedback['blockReason']}")
        if isinstance(chunk.get("modelVersion"), str):
            self._model = chunk["modelVersion"]
        if chunk.get("usageMetadata") is not None:
            self._usage = _usage(chunk["usageMetadata"])
        candidates = chunk.get("candidates") or []
        if not candidates:
            return []
        candidate = candidates[0]
        out: list[DecodedItem] = []
        response_id = re.sub(r"[^A-Za-z0-9_-]", "", str(chunk.get("responseId") or ""))
        for part in (candidate.get("content") or {}).get("parts") or []:
            out.extend(self._part(part, response_id))
        reason = candidate.get("finishReason")
        if reason and reason != "FINISH_REASON_UNSPECIFIED":
            if reason == "MALFORMED_FUNCTION_CALL":
                raise UpstreamError(Failure.TRANSIENT, "model produced a malformed function call")
            finish = _FINISH.get(reason, str(reason).lower())
            self._finish = "tool_calls" if finish == "stop" and self._calls else finish
        return out

    def _part(self, part: Mapping[str, Any], response_id: str) -> list[DecodedItem]:
        if "functionCall" in part:
            call = part["functionCall"]
            name, args = call["name"], call.get("args") or {}
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError("functionCall of the wrong shape")
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"call_{response_id}_{self._calls}" if response_id else f"call_{self._calls}"
            self._calls += 1
            return [ToolCallEvent(call_id, name, args)]
        text = part.get("text")
        if text is None:
            return []  # a bare thoughtSignature, or a part kind not relayed
        if not isinstance(text, str):
            raise TypeError("text is not a string")
        if not text:
            return []
        return [ThinkingEvent(text) if part.get("thought") else TextEvent(text)]


def _usage(u: Mapping[str, Any]) -> Usage:
    # promptTokenCount already counts the cached tokens, as the neutral input does.
    return Usage(
        input_tokens=int(u.get("promptTokenCount") or 0),
        # Thinking is billed as output.
        output_tokens=int(u.get("candidatesTokenCount") or 0) + int(u.get("thoughtsTokenCount") or 0),
        cache_read_tokens=int(u.get("cachedContentTokenCount") or 0),
    )
