"""Google Gemini Developer API, generateContent and streamGenerateContent (provider-protocols.md §6).

`POST /v1beta/models/{model}:streamGenerateContent?alt=sse` streams SSE `data:` chunks
(without `alt=sse`, one JSON array); the last chunk carries `finishReason` and the full
`usageMetadata`, and the stream just ends. Errors are `{"error":{code,message,status,details}}`.
Gemini has no prefill: a trailing `model` turn is only history.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..answer import Answer, ChatRequest, Piece, TextPiece, ThinkingPiece, ToolCallStart
from ..conversation import (
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
)

PREFIX = "/v1beta/models/"
DEFAULT_WAIT = 42.0  # seconds of RetryInfo on a 429 when the fault gives none
_TYPE = "type.googleapis.com/google.rpc."

# HTTP status -> (google.rpc status, default message)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}

FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}


class _Blob(msgspec.Struct):
    mimeType: str
    data: str


class _FunctionCall(msgspec.Struct):
    name: str
    args: dict[str, Any] = {}
    id: str | None = None


class _FunctionResponse(msgspec.Struct):
    name: str
    response: Any = None
    id: str | None = None


class _Part(msgspec.Struct):
    text: str | None = None
    thought: bool | None = None
    thoughtSignature: str | None = None
    inlineData: _Blob | None = None
    functionCall: _FunctionCall | None = None
    functionResponse: _FunctionResponse | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []
    role: str | None = None


class _FunctionDeclaration(msgspec.Struct):
    name: str


class _Tool(msgspec.Struct):
    functionDeclarations: list[_FunctionDeclaration] = []


class _FunctionCallingConfig(msgspec.Struct):
    mode: str | None = None


class _ToolConfig(msgspec.Struct):
    functionCallingConfig: _FunctionCallingConfig | None = None


class _GenerationConfig(msgspec.Struct):
    maxOutputTokens: int | None = None


class _Body(msgspec.Struct):
    contents: list[_Content] = []
    systemInstruction: _Content | None = None
    tools: list[_Tool] = []
    toolConfig: _ToolConfig | None = None
    generationConfig: _GenerationConfig | None = None


def _part(p: _Part) -> Part | None:
    if p.functionCall is not None:
        return tool_call_part(p.functionCall.id, p.functionCall.name, p.functionCall.args)
    if p.functionResponse is not None:
        return tool_result_part(p.functionResponse.id, p.functionResponse.response)
    if p.inlineData is not None:
        return image_part(p.inlineData.mimeType, p.inlineData.data)
    if p.text is not None:
        return thinking_part(p.text, p.thoughtSignature) if p.thought else text_part(p.text)
    return None


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _model_name(model: str) -> str:
    return model.removeprefix("models/")


class GeminiDialect(Dialect):
    """`:generateContent` / `:streamGenerateContent` on `/v1beta/models/{model}`, and the model listing."""

    name = "gemini"
    base_path = "/v1beta"
    supports_prefill = False
    response_id_prefix = "resp_"

    def route(self, method: str, path: str, query: Mapping[str, str]) -> Route | None:
        if method == "GET" and path == "/v1beta/models":
            return Route("models")
        if not path.startswith(PREFIX):
            return None
        model, colon, verb = urllib.parse.unquote(path[len(PREFIX) :]).rpartition(":")
        if method == "POST" and colon and verb in ("generateContent", "streamGenerateContent"):
            # "array" marks a stream without alt=sse: one JSON array instead of SSE.
            mode = "sse" if query.get("alt") == "sse" else "array"
            return Route("chat", model, stream=verb == "streamGenerateContent", name=mode)
        if method == "GET" and not colon:
            return Route("model", urllib.parse.unquote(path[len(PREFIX) :]))
        return None

    def check_auth(self, route: Route, request: HttpRequest, ctx: Context) -> Reply | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return self.error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if ctx.api_key is not None and key != ctx.api_key:
            reply = self.error(400, "API key not valid. Please pass a valid API key.")
            body = msgspec.json.decode(reply.body)
            body["error"]["details"] = [
                {
                    "@type": _TYPE + "ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
            return json_reply(400, body)
        return None

    def model_known(self, model: str, models: Sequence[str]) -> bool:
        return _model_name(model) in {_model_name(m) for m in models}

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        b: _Body = decode_json(body or b"{}", _Body)
        if not b.contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        turns: list[Turn] = []
        for c in b.contents:
            if c.role not in (None, "user", "model", "function"):
                raise BadRequest(f"Please use a valid role: user, model. Got {c.role!r}.")
            parts = [p for p in (_part(x) for x in c.parts) if p]
            turns.append(Turn("assistant" if c.role == "model" else "user", parts))
        system = [p.text for p in b.systemInstruction.parts if p.text] if b.systemInstruction else []
        mode = (
            b.toolConfig.functionCallingConfig.mode
            if b.toolConfig and b.toolConfig.functionCallingConfig
            else None
        )
        tools = [] if mode == "NONE" else [d.name for t in b.tools for d in t.functionDeclarations]
        limit = b.generationConfig.maxOutputTokens if b.generationConfig else None
        if limit is not None and limit < 1:
            raise BadRequest("* GenerateContentRequest.generation_config.max_output_tokens: must be positive")
        return build_request(
            model=_model_name(route.model or ""),
            system=system,
            turns=turns,
            stream=bool(route.stream),
            tool_names=tools,
            max_tokens=limit,
            variant=route.name,
        )

    def error_body(
        self, status: int, message: str | None, code: str | None, wait: float | None
    ) -> dict[str, Any]:
        default_status = "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"
        rpc_status, default_message = _ERRORS.get(status, (default_status, f"HTTP {status}"))
        error: dict[str, Any] = {
            "code": status,
            "message": message or default_message,
            "status": code or rpc_status,
        }
        if status == 429:
            wait = wait or DEFAULT_WAIT
            # A per-day quota also comes with a short RetryInfo; only quotaId tells them apart.
            period = "PerDay" if message and "PerDay" in message else "PerMinute"
            if not message:
                error["message"] = f"{default_message} Please retry in {wait:g}s."
            error["details"] = [
                {
                    "@type": _TYPE + "QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": f"GenerateRequests{period}PerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global"},
                            "quotaValue": "250" if period == "PerDay" else "10",
                        }
                    ],
                },
                {"@type": _TYPE + "RetryInfo", "retryDelay": _duration(math.ceil(wait))},
            ]
        else:
            error["details"] = []
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
        return json_reply(status, self.error_body(status, message, code, wait))

    def unknown_model(self, model: str, request_id: str = "") -> Reply:
        return self.error(
            404,
            f"models/{_model_name(model)} is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their supported methods.",
        )

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply:
        parts: list[dict[str, Any]] = []
        if answer.thinking:
            parts.append({"text": answer.thinking, "thought": True})
        if answer.text:
            parts.append({"text": answer.text})
        if (call := answer.tool_call) is not None:
            parts.append({"functionCall": {"name": call[1], "args": msgspec.json.decode(call[2])}})
        return json_reply(200, _chunk(req, answer, response_id, parts, final=True))

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> GeminiStream:
        return GeminiStream(self, req, answer, response_id)

    def serve(self, route: Route, request: HttpRequest, ctx: Context) -> Reply:
        if route.kind == "model":
            name = _model_name(route.model or "")
            if name not in {_model_name(m) for m in ctx.models}:
                return self.error(404, f"models/{name} is not found for API version v1beta.")
            return json_reply(200, _model_entry(name))
        if route.kind != "models":
            return self.not_found(request)
        try:
            size = int(request.query.get("pageSize", "50"))
            start = int(request.query.get("pageToken") or "0")
        except ValueError:
            return self.error(400, "Invalid pageSize or pageToken.")
        names, more = page([_model_name(m) for m in ctx.models], start, min(max(size, 1), 1000))
        body: dict[str, Any] = {"models": [_model_entry(n) for n in names]}
        if more:
            body["nextPageToken"] = str(start + len(names))
        return json_reply(200, body)


def _model_entry(name: str) -> dict[str, Any]:
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "description": "A simulated model.",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "thinking": True,
    }


def _chunk(
    req: ChatRequest, answer: Answer, response_id: str, parts: list[dict[str, Any]], *, final: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    usage: dict[str, int] = {
        "promptTokenCount": answer.prompt_tokens,
        "totalTokenCount": answer.prompt_tokens,
    }
    if final:
        candidate["finishReason"] = FINISH_REASONS[answer.finish_reason]
        output = answer.completion_tokens - answer.thinking_tokens
        usage = {
            "promptTokenCount": answer.prompt_tokens,
            "candidatesTokenCount": output,
            "totalTokenCount": answer.prompt_tokens + answer.completion_tokens,
        }
        if answer.thinking_tokens:
            usage["thoughtsTokenCount"] = answer.thinking_tokens
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": req.model,
        "responseId": response_id,
    }


class GeminiStream:
    """One chunk per piece (a function call whole, not in fragments), then a last chunk with
    `finishReason` and the usage; SSE `data:` lines, or one JSON array without alt=sse."""

    def __init__(self, dialect: GeminiDialect, req: ChatRequest, answer: Answer, response_id: str) -> None:
        self._dialect = dialect
        self._req = req
        self._answer = answer
        self._response_id = response_id
        self._sse = req.variant != "array"
        self._first = True

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        return SSE_HEADERS if self._sse else (("content-type", "application/json; charset=UTF-8"),)

    def _frame(self, obj: object) -> bytes:
        data = msgspec.json.encode(obj)
        if self._sse:
            return b"data: " + data + b"\r\n\r\n"
        sep, self._first = (b"" if self._first else b",\r\n"), False
        return sep + data

    def _parts(self, parts: list[dict[str, Any]], *, final: bool = False) -> bytes:
        return self._frame(_chunk(self._req, self._answer, self._response_id, parts, final=final))

    def start(self) -> bytes:
        return b"" if self._sse else b"["

    def piece(self, piece: Piece) -> bytes:
        if isinstance(piece, ThinkingPiece):
            return self._parts([{"text": piece.text, "thought": True}])
        if isinstance(piece, TextPiece):
            return self._parts([{"text": piece.text}])
        if isinstance(piece, ToolCallStart) and (call := self._answer.tool_call) is not None:
            return self._parts([{"functionCall": {"name": call[1], "args": msgspec.json.decode(call[2])}}])
        return b""  # the arguments went out whole with the call

    def finish(self) -> bytes:
        return self._parts([{"text": ""}], final=True) + (b"" if self._sse else b"]")

    def keepalive(self) -> bytes:
        return b""

    def inband_error(self, message: str, code: str) -> bytes:
        error = self._dialect.error_body(503, message or None, code or None, None)
        return self._frame(error) + (b"" if self._sse else b"]")

    def malformed(self) -> bytes:
        whole = self._parts([{"text": "lost"}])
        return whole[: whole.index(b'"parts"')] + (b"\r\n\r\n" if self._sse else b"")
