"""The OpenAI Chat Completions front door, sans-IO (provider-protocols.md §1).

`parse_chat_request` turns a request body into the neutral `ChatRequest`; the
responders turn the neutral stream events back into chat-completion chunks or
one chat-completion object; `FRONT_END` is this API as the gateway uses it.
Nothing here does I/O.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from ...chat import (
    ChatRequest,
    DocumentPart,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
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
    result_content,
)
from ...limits import decode_bounded
from ...protocol import ModelsInfo
from .common import (
    STATUS_BY_KIND,
    BadRequest,
    ChatCall,
    FrontEnd,
    Out,
    Responder,
    StreamResponder,
    UnaryResponder,
    check_depth,
    decode_json,
    json_reply,
    new_response_id,
    parse_data_url,
    retry_after_header,
    sse_data,
    usage_total,
)

# ------------------------------------------------------------------ request


class _CacheControl(msgspec.Struct):
    """A cache breakpoint on a content part, as OpenRouter takes them (Anthropic's marker)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] = "5m"


class _TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str
    cache_control: _CacheControl | None = None


class _ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class _ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: _ImageUrl
    cache_control: _CacheControl | None = None


class _File(msgspec.Struct):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class _FilePart(msgspec.Struct, tag="file", tag_field="type"):
    file: _File
    cache_control: _CacheControl | None = None


class _RefusalPart(msgspec.Struct, tag="refusal", tag_field="type"):
    refusal: str


class _SystemMsg(msgspec.Struct, tag="system", tag_field="role"):
    content: str | list[_TextPart]


class _DeveloperMsg(_SystemMsg, tag="developer"):
    pass


class _UserMsg(msgspec.Struct, tag="user", tag_field="role"):
    content: str | list[_TextPart | _ImagePart | _FilePart]


class _Function(msgspec.Struct):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct):
    id: str
    function: _Function
    type: Literal["function"] = "function"


class _AssistantMsg(msgspec.Struct, tag="assistant", tag_field="role"):
    content: str | list[_TextPart | _RefusalPart] | None = None
    tool_calls: list[_ToolCall] | None = None
    reasoning_content: str | None = None  # what DeepSeek-style servers (and our streams) call thinking
    refusal: str | None = None


class _ToolMsg(msgspec.Struct, tag="tool", tag_field="role"):
    tool_call_id: str
    content: str | list[_TextPart]


class _FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolDef(msgspec.Struct):
    function: _FunctionDef
    type: Literal["function"] = "function"


class _Named(msgspec.Struct):
    name: str


class _ToolChoice(msgspec.Struct):
    function: _Named
    type: Literal["function"] = "function"


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Body(msgspec.Struct):
    model: str
    messages: Annotated[
        list[_SystemMsg | _DeveloperMsg | _UserMsg | _AssistantMsg | _ToolMsg], msgspec.Meta(min_length=1)
    ]
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    tools: list[_ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | _ToolChoice | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    n: int | None = None
    prompt_cache_key: str | None = None


_decoder = msgspec.json.Decoder(_Body)

# reasoning_effort -> a thinking budget for the providers that take one (None: no thinking asked for).
THINKING_BUDGETS: dict[str, int | None] = {
    "none": None,
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
}


@dataclass(frozen=True, slots=True)
class ParsedChat:
    model: str
    stream: bool
    include_usage: bool
    request: ChatRequest


def _texts(content: str | list[_TextPart]) -> str:
    return content if isinstance(content, str) else "".join(p.text for p in content)


def _ttl(marker: _CacheControl | None) -> str | None:
    return marker.ttl if marker is not None else None


def _last_mark(content: str | list[_TextPart]) -> str | None:
    """The breakpoint of content that becomes one neutral text: its last marked part's."""
    if isinstance(content, str):
        return None
    marks = [p.cache_control for p in content if p.cache_control is not None]
    return _ttl(marks[-1]) if marks else None


def _user_parts(parts: list[_TextPart | _ImagePart | _FilePart], where: str) -> list[Part]:
    out: list[Part] = []
    for j, p in enumerate(parts):
        cache = _ttl(p.cache_control)
        if isinstance(p, _TextPart):
            out.append(TextPart(p.text, cache))
        elif isinstance(p, _ImagePart):
            url = p.image_url.url
            if (data := parse_data_url(url)) is not None:
                out.append(ImagePart(media_type=data[0], data=data[1], cache=cache))
            elif url.startswith(("http://", "https://")):
                out.append(ImagePart(url=url, cache=cache))
            else:
                raise BadRequest(
                    "expected a base64 data URL or an http(s) URL", f"{where}[{j}].image_url.url"
                )
        else:
            f = p.file
            data = parse_data_url(f.file_data) if f.file_data else None
            if data is None:
                # file_id points into OpenAI's own storage, which no other provider can read.
                raise BadRequest(
                    "expected `file_data` as a base64 data URL (file_id is not supported)",
                    f"{where}[{j}].file.file_data",
                )
            out.append(DocumentPart(media_type=data[0], data=data[1], title=f.filename, cache=cache))
    return out


def _assistant(m: _AssistantMsg, where: str) -> Message:
    parts: list[Part] = []
    if m.reasoning_content:
        parts.append(ThinkingPart(text=m.reasoning_content))
    if isinstance(m.content, str):
        if m.content:
            parts.append(TextPart(m.content))
    elif m.content:
        parts += [TextPart(p.text, _ttl(p.cache_control)) for p in m.content if isinstance(p, _TextPart)]
    for k, call in enumerate(m.tool_calls or ()):
        try:
            args = decode_bounded(json.loads, (call.function.arguments or "{}").encode())
        except ValueError:  # TooDeep is one too
            args = None
        if not isinstance(args, dict):
            raise BadRequest(
                "expected the arguments as a JSON object in a string",
                f"{where}.tool_calls[{k}].function.arguments",
            )
        parts.append(ToolCallPart(call.id, call.function.name, args))
    if len(parts) == 1 and isinstance(parts[0], TextPart) and not parts[0].cache:
        return Message("assistant", parts[0].text)
    return Message("assistant", parts if parts else "")


def to_chat_request(body: _Body) -> ChatRequest:
    """The validated body -> the neutral request. Raises BadRequest naming the field."""
    if body.n not in (None, 1):
        raise BadRequest("only n=1 is supported", "n")
    system: list[TextPart] = []
    messages: list[Message] = []
    for i, m in enumerate(body.messages):
        where = f"messages[{i}]"
        if isinstance(m, _SystemMsg):  # developer too: it is a subclass
            system.append(TextPart(_texts(m.content), _last_mark(m.content)))
        elif isinstance(m, _UserMsg):
            if isinstance(m.content, str):
                messages.append(Message("user", m.content))
            else:
                messages.append(Message("user", _user_parts(m.content, f"{where}.content")))
        elif isinstance(m, _AssistantMsg):
            messages.append(_assistant(m, where))
        else:
            # A content array keeps its text parts as the result's blocks.
            content = (
                m.content
                if isinstance(m.content, str)
                else result_content([TextPart(p.text) for p in m.content])
            )
            result = ToolResultPart(tool_call_id=m.tool_call_id, content=content, cache=_last_mark(m.content))
            prev = messages[-1] if messages else None
            # Consecutive tool messages answer one assistant turn: one user turn of results.
            if (
                prev is not None
                and prev.role == "user"
                and isinstance(prev.content, list)
                and all(isinstance(p, ToolResultPart) for p in prev.content)
            ):
                prev.content.append(result)
            else:
                messages.append(Message("user", [result]))
    if not messages:
        raise BadRequest("expected at least one user or assistant message", "messages")
    tool_choice: str | None = None
    if isinstance(body.tool_choice, str):
        tool_choice = body.tool_choice
    elif body.tool_choice is not None:
        tool_choice = body.tool_choice.function.name
    tools = [
        Tool(
            name=t.function.name,
            description=t.function.description or "",
            parameters=t.function.parameters or {"type": "object", "properties": {}},
        )
        for t in body.tools or ()
    ]
    if isinstance(body.tool_choice, _ToolChoice) and tool_choice not in {t.name for t in tools}:
        raise BadRequest(f"no tool named {tool_choice!r} in `tools`", "tool_choice.function.name")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return ChatRequest(
        messages=messages,
        # Blocks only when one carries a breakpoint; else the plain text, as most providers take it.
        system=system if any(b.cache for b in system) else "\n\n".join(b.text for b in system) or None,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop or None,
        tools=tools,
        tool_choice=tool_choice,
        thinking_budget=THINKING_BUDGETS[body.reasoning_effort] if body.reasoning_effort else None,
        cache_key=body.prompt_cache_key or None,
    )


def parse_chat_request(body: bytes) -> ParsedChat:
    """A `POST /v1/chat/completions` body -> the model, stream flags and neutral request."""
    b: _Body = decode_json(_decoder, body)
    if b.stream_options is not None and not b.stream:
        raise BadRequest("`stream_options` is only allowed together with `stream: true`", "stream_options")
    return ParsedChat(
        model=b.model,
        stream=bool(b.stream),
        include_usage=bool(b.stream_options and b.stream_options.include_usage),
        request=check_depth(to_chat_request(b)),
    )


# ------------------------------------------------------------------ errors

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> list[Out]:
    return json_reply(status, error_body(status, message, code, param))


def bad_request(e: BadRequest) -> list[Out]:
    return error_response(400, e.message, None, e.param)


def unauthorized() -> list[Out]:
    return json_reply(
        401,
        error_body(
            401,
            "Missing or incorrect API key: use the daemon's token (`cmctl http-token`).",
            "invalid_api_key",
        ),
        [("www-authenticate", "Bearer")],
    )


def _error_reply(event: ErrorEvent) -> list[Out]:
    status = STATUS_BY_KIND.get(event.kind, 500)
    code = "model_not_found" if event.kind is ErrorKind.UNKNOWN_MODEL else str(event.kind)
    return json_reply(
        status, error_body(status, event.message, code), retry_after_header(event.retry_after_s)
    )


# ------------------------------------------------------------------ responses


def usage_object(u: Usage) -> dict[str, Any]:
    """OpenAI's usage: `prompt_tokens` counts the cached tokens too, as the neutral input does.

    Tokens written to a cache have no place in OpenAI's shape: they go where OpenRouter puts them.
    """
    details: dict[str, int] = {"cached_tokens": u.cache_read_tokens}
    if u.cache_write_tokens:
        details["cache_write_tokens"] = u.cache_write_tokens
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": usage_total(u),
        "prompt_tokens_details": details,
    }


def _tool_call(call: ToolCallEvent) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


class ChunkResponder(StreamResponder):
    """`chat.completion.chunk` events; tool calls go out whole, one delta each."""

    def __init__(self, response_id: str, created: int, *, include_usage: bool = False) -> None:
        super().__init__(response_id)
        self.created = created
        self.include_usage = include_usage
        self._calls = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse_data(chunk)

    def error_reply(self, event: ErrorEvent) -> list[Out]:
        return _error_reply(event)

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, event: TextEvent) -> bytes:
        return self._chunk({"content": event.text})

    def thinking(self, event: ThinkingEvent) -> bytes:
        return self._chunk({"reasoning_content": event.text}) if event.text else b""

    def tool_call(self, event: ToolCallEvent) -> bytes:
        delta = {"tool_calls": [{"index": self._calls, **_tool_call(event)}]}
        self._calls += 1
        return self._chunk(delta)

    def done(self, event: DoneEvent) -> bytes:
        out = self._chunk({}, event.finish_reason)
        if self.include_usage:
            out += sse_data(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": usage_object(event.usage),
                }
            )
        return out + b"data: [DONE]\n\n"

    def inband_error(self, event: ErrorEvent) -> bytes:
        # The SDKs raise on a data payload with a top-level "error"; no [DONE] follows.
        return sse_data(
            {"error": {"message": event.message, "type": event.kind, "param": None, "code": event.kind}}
        )


class CompletionResponder(UnaryResponder):
    """One `chat.completion` object."""

    def __init__(self, response_id: str, created: int) -> None:
        super().__init__(response_id)
        self.created = created

    def error_reply(self, event: ErrorEvent) -> list[Out]:
        return _error_reply(event)

    def body(self, done: DoneEvent) -> dict[str, Any]:
        calls = self.calls
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text if self.text or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = [_tool_call(c) for c in calls]
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}
            ],
            "usage": usage_object(done.usage),
        }


# ------------------------------------------------------------------ models


def model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "combined-models"}


def models_list(info: ModelsInfo, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m.id, created) for m in info.models]}


# ------------------------------------------------------------------ the front end


def _chat_call(body: bytes) -> ChatCall:
    parsed = parse_chat_request(body)
    rid, created = new_response_id("chatcmpl-"), int(time.time())
    responder: Responder = (
        ChunkResponder(rid, created, include_usage=parsed.include_usage)
        if parsed.stream
        else CompletionResponder(rid, created)
    )
    return ChatCall(parsed.model, parsed.request, responder)


FRONT_END = FrontEnd(
    name="openai_chat",
    chat_paths=("/v1/chat/completions", "/chat/completions"),
    parse_chat=_chat_call,
    error=error_response,
    bad_request=bad_request,
    unauthorized=unauthorized,
    models_list=models_list,
    model_object=model_object,
)
