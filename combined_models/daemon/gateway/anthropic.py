"""The Anthropic Messages front door, sans-IO (provider-protocols.md §2).

`parse_messages_request` turns a request body into the neutral `ChatRequest`;
the responders turn the neutral stream events back into Messages stream events
or one Message object; `FRONT_END` is this API as the gateway uses it.
Nothing here does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from ...chat import (
    ChatRequest,
    DocumentPart,
    DoneEvent,
    ErrorEvent,
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
from ...protocol import ModelsInfo
from ..affinity import MAX_SESSION_ID
from ..dialects.claude_family import MIN_THINKING_BUDGET
from .common import (
    STATUS_BY_KIND,
    BadRequest,
    ChatCall,
    FrontEnd,
    Out,
    Responder,
    StreamResponder,
    UnaryResponder,
    bad_request_from,
    check_depth,
    decode_json,
    json_reply,
    new_response_id,
    retry_after_header,
    sse_event,
)

# ------------------------------------------------------------------ request


class _CacheControl(msgspec.Struct):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] = "5m"


class _Base64(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class _Url(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class _PlainText(msgspec.Struct, tag="text", tag_field="type"):
    data: str
    media_type: str = "text/plain"


class _Text(msgspec.Struct, tag="text", tag_field="type"):
    text: str
    cache_control: _CacheControl | None = None


class _Image(msgspec.Struct, tag="image", tag_field="type"):
    source: _Base64 | _Url
    cache_control: _CacheControl | None = None


class _Document(msgspec.Struct, tag="document", tag_field="type"):
    source: _Base64 | _PlainText
    title: str | None = None
    cache_control: _CacheControl | None = None


class _ToolUse(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: _CacheControl | None = None


class _ToolResult(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[_Text | _Image] | None = None
    is_error: bool = False
    cache_control: _CacheControl | None = None


class _Thinking(msgspec.Struct, tag="thinking", tag_field="type"):
    thinking: str
    signature: str | None = None


class _RedactedThinking(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str


class _ServerToolUse(msgspec.Struct, tag="server_tool_use", tag_field="type"):
    """A server tool's call in a replayed answer (its other fields are not kept)."""


class _WebSearchToolResult(msgspec.Struct, tag="web_search_tool_result", tag_field="type"):
    """A server tool's result in a replayed answer (its other fields are not kept)."""


_Block = (
    _Text
    | _Image
    | _Document
    | _ToolUse
    | _ToolResult
    | _Thinking
    | _RedactedThinking
    | _ServerToolUse
    | _WebSearchToolResult
)


class _Message(msgspec.Struct):
    # "system": Claude Code sends such turns for model names it does not know as Claude's.
    role: Literal["user", "assistant", "system"]
    content: str | list[_Block]


class _Metadata(msgspec.Struct):
    user_id: str | None = None  # opaque; Claude Code's names its session


class _ToolDef(msgspec.Struct):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    cache_control: _CacheControl | None = None


class _ServerToolDef(msgspec.Struct):
    """What is checked of a server tool (web search, code execution...); the entry travels as written."""

    type: str
    name: str
    cache_control: _CacheControl | None = None


class _ToolChoice(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _ThinkingConfig(msgspec.Struct):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class _Body(msgspec.Struct):
    model: str
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    system: str | list[_Text] | None = None
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stop_sequences: list[str] | None = None
    # Function tools (`custom`) and server tools (any other `type`), told apart by `_tools`.
    tools: list[dict[str, Any]] | None = None
    tool_choice: _ToolChoice | None = None
    thinking: _ThinkingConfig | None = None
    cache_control: _CacheControl | None = None  # automatic caching: a breakpoint on the last block
    metadata: _Metadata | None = None
    context_management: dict[str, Any] | None = None  # opaque: carried to Anthropic members only


_decoder = msgspec.json.Decoder(_Body)
_S = TypeVar("_S")


@dataclass(frozen=True, slots=True)
class ParsedMessages:
    model: str
    stream: bool
    request: ChatRequest


def _ttl(marker: _CacheControl | None) -> str | None:
    """A `cache_control` as the neutral breakpoint (its ttl); None when there is none."""
    return marker.ttl if marker is not None else None


def _image(block: _Image, cache: str | None = None) -> ImagePart:
    if isinstance(block.source, _Url):
        return ImagePart(url=block.source.url, cache=cache)
    return ImagePart(media_type=block.source.media_type, data=block.source.data, cache=cache)


def _tool_result(b: _ToolResult) -> ToolResultPart:
    """The result with its text and image blocks.

    A breakpoint on the result or on a block inside it goes on the result (where Bedrock,
    which takes none inside a result, puts it too).
    """
    content = b.content or ""
    if isinstance(content, str):
        return ToolResultPart(
            tool_call_id=b.tool_use_id, content=content, is_error=b.is_error, cache=_ttl(b.cache_control)
        )
    inner = [c.cache_control for c in content if c.cache_control is not None]
    cache = _ttl(b.cache_control or (inner[-1] if inner else None))
    blocks = result_content([TextPart(c.text) if isinstance(c, _Text) else _image(c) for c in content])
    return ToolResultPart(tool_call_id=b.tool_use_id, content=blocks, is_error=b.is_error, cache=cache)


def _user_parts(blocks: list[_Block], where: str) -> list[Part]:
    out: list[Part] = []
    for j, b in enumerate(blocks):
        if isinstance(b, _Text):
            out.append(TextPart(b.text, _ttl(b.cache_control)))
        elif isinstance(b, _Image):
            out.append(_image(b, _ttl(b.cache_control)))
        elif isinstance(b, _Document):
            cache = _ttl(b.cache_control)
            if isinstance(b.source, _PlainText):
                out.append(TextPart(b.source.data, cache))
            else:
                out.append(
                    DocumentPart(
                        media_type=b.source.media_type, data=b.source.data, title=b.title, cache=cache
                    )
                )
        elif isinstance(b, _ToolResult):
            out.append(_tool_result(b))
        else:
            raise BadRequest(
                f"a `{b.__struct_config__.tag}` block belongs in an assistant turn", f"{where}[{j}].type"
            )
    return out


def _assistant_parts(blocks: list[_Block], where: str) -> list[Part]:
    out: list[Part] = []
    for j, b in enumerate(blocks):
        if isinstance(b, _Text):
            out.append(TextPart(b.text, _ttl(b.cache_control)))
        elif isinstance(b, _ToolUse):
            out.append(ToolCallPart(b.id, b.name, b.input, _ttl(b.cache_control)))
        elif isinstance(b, _Thinking):
            out.append(ThinkingPart(text=b.thinking, signature=b.signature))
        elif isinstance(b, _RedactedThinking | _ServerToolUse | _WebSearchToolResult):
            # Opaque to every other vendor, and the neutral model has no place for them: a server
            # tool's call and result are dropped, the answer's text written from them stays.
            continue
        else:
            raise BadRequest(
                f"a `{b.__struct_config__.tag}` block belongs in a user turn", f"{where}[{j}].type"
            )
    return out


def _thinking_budget(body: _Body) -> int | None:
    t = body.thinking
    if t is None or t.type == "disabled":
        return None
    if t.type == "adaptive":  # the model decides how much: give it half the output budget
        return body.max_tokens // 2 if body.max_tokens // 2 >= MIN_THINKING_BUDGET else None
    if t.budget_tokens is None:
        raise BadRequest("required when thinking is enabled", "thinking.budget_tokens")
    if not MIN_THINKING_BUDGET <= t.budget_tokens < body.max_tokens:
        raise BadRequest(
            f"expected at least {MIN_THINKING_BUDGET} and less than max_tokens ({body.max_tokens})",
            "thinking.budget_tokens",
        )
    return t.budget_tokens


def to_chat_request(body: _Body) -> ChatRequest:
    """The validated body -> the neutral request. Raises BadRequest naming the field."""
    messages: list[Message] = []
    instructions: list[str] = []  # system turns among the messages: they join the system prompt
    for i, m in enumerate(body.messages):
        where = f"messages[{i}].content"
        if m.role == "system":
            instructions.append(_system_turn_text(m.content, where))
        elif isinstance(m.content, str):
            messages.append(Message(m.role, m.content))
        elif m.role == "user":
            messages.append(Message("user", _user_parts(m.content, where)))
        else:
            messages.append(Message("assistant", _assistant_parts(m.content, where)))
    if not messages:
        raise BadRequest("needs at least one user or assistant message", "messages")
    if body.cache_control is not None:
        _mark_last_block(messages, body.cache_control.ttl)
    system: str | list[TextPart] | None = None
    if isinstance(body.system, list) and any(b.cache_control for b in body.system):
        system = [TextPart(b.text, _ttl(b.cache_control)) for b in body.system]
        system += [TextPart(text) for text in instructions]
    elif isinstance(body.system, list):
        system = "\n\n".join([*(b.text for b in body.system), *instructions])
    else:
        system = "\n\n".join([*([body.system] if body.system else []), *instructions])
    tools, server_tools = _tools(body.tools or [])
    tool_choice: str | None = None
    if (c := body.tool_choice) is not None:
        if c.type == "tool":
            if not c.name:
                raise BadRequest("required when tool_choice.type is `tool`", "tool_choice.name")
            if c.name not in {t.name for t in tools} | {str(t["name"]) for t in server_tools}:
                raise BadRequest(f"no tool named {c.name!r} in `tools`", "tool_choice.name")
            tool_choice = c.name
        else:
            tool_choice = {"auto": "auto", "any": "required", "none": "none"}[c.type]
    return ChatRequest(
        messages=messages,
        system=system or None,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences or None,
        tools=tools,
        tool_choice=tool_choice,
        thinking_budget=_thinking_budget(body),
        session=body.metadata.user_id[:MAX_SESSION_ID] if body.metadata and body.metadata.user_id else None,
        top_k=body.top_k,
        context_management=body.context_management,
        server_tools=server_tools,
        metadata={"user_id": body.metadata.user_id} if body.metadata and body.metadata.user_id else None,
    )


def _tools(entries: list[dict[str, Any]]) -> tuple[list[Tool], list[dict[str, Any]]]:
    """The function tools as neutral tools, and the server tools as the client wrote them."""
    tools: list[Tool] = []
    server: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if entry.get("type") in (None, "custom"):
            t = _convert(entry, _ToolDef, f"tools[{i}]")
            tools.append(
                Tool(
                    name=t.name,
                    description=t.description or "",
                    parameters=t.input_schema,
                    cache=_ttl(t.cache_control),
                )
            )
        else:
            _convert(entry, _ServerToolDef, f"tools[{i}]")
            server.append(entry)
    return tools, server


def _convert(entry: dict[str, Any], kind: type[_S], where: str) -> _S:
    try:
        return msgspec.convert(entry, kind)
    except msgspec.ValidationError as e:
        error = bad_request_from(e)
        param = f"{where}.{error.param.removeprefix('$').lstrip('.')}" if error.param else where
        raise BadRequest(error.message.split(" (at ")[0], param.rstrip(".")) from None


def _system_turn_text(content: str | list[_Block], where: str) -> str:
    """A system turn's text; only text blocks belong in one."""
    if isinstance(content, str):
        return content
    if not all(isinstance(b, _Text) for b in content):
        raise BadRequest("a system turn may hold only text blocks", where)
    return "\n\n".join(b.text for b in content if isinstance(b, _Text))


def _mark_last_block(messages: list[Message], ttl: str) -> None:
    """Automatic caching (a top-level `cache_control`): a breakpoint on the last block that takes one."""
    if not messages:
        return
    last = messages[-1]
    if isinstance(last.content, str):
        last.content = [TextPart(last.content)]
    for part in reversed(last.content):
        if not isinstance(part, ThinkingPart):
            part.cache = part.cache or ttl
            return


def parse_messages_request(body: bytes) -> ParsedMessages:
    """A `POST /v1/messages` body -> the model, stream flag and neutral request."""
    b: _Body = decode_json(_decoder, body)
    return ParsedMessages(model=b.model, stream=b.stream, request=check_depth(to_chat_request(b)))


# ------------------------------------------------------------------ errors

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def error_response(status: int, message: str) -> list[Out]:
    return json_reply(status, error_body(status, message))


def bad_request(e: BadRequest) -> list[Out]:
    return error_response(400, f"{e.param}: {e.message}" if e.param else e.message)


def unauthorized() -> list[Out]:
    return error_response(401, "invalid x-api-key: use the daemon's token (`cmctl http-token`)")


def _error_reply(event: ErrorEvent, request_id: str) -> list[Out]:
    status = STATUS_BY_KIND.get(event.kind, 500)
    return json_reply(
        status, error_body(status, event.message, request_id), retry_after_header(event.retry_after_s)
    )


# ------------------------------------------------------------------ responses

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_ANTHROPIC_STOPS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}


def stop_reason(finish_reason: str) -> str:
    if finish_reason in _ANTHROPIC_STOPS:
        return finish_reason
    return STOP_REASONS.get(finish_reason, "end_turn")


def usage_object(u: Usage) -> dict[str, int]:
    """Anthropic's usage: its `input_tokens` leaves out what the cache read or wrote (see `Usage`)."""
    return {
        "input_tokens": max(0, u.input_tokens - u.cache_read_tokens - u.cache_write_tokens),
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    }


def _message(response_id: str, model: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


class MessageStreamResponder(StreamResponder):
    """`message_start`, content blocks, `message_delta`, `message_stop`; tool inputs in one delta."""

    def __init__(self, response_id: str) -> None:
        super().__init__(response_id)
        self._index = -1
        self._open: str | None = None  # the type of the content block being streamed

    def error_reply(self, event: ErrorEvent) -> list[Out]:
        return _error_reply(event, self.id)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + sse_event("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )

    def start(self) -> bytes:
        return sse_event("message_start", {"type": "message_start", "message": _message(self.id, self.model)})

    def text(self, event: TextEvent) -> bytes:
        out = b"" if self._open == "text" else self._begin("text", {"type": "text", "text": ""})
        return out + self._delta({"type": "text_delta", "text": event.text})

    def thinking(self, event: ThinkingEvent) -> bytes:
        out = b""
        if self._open != "thinking":
            out = self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if event.text:
            out += self._delta({"type": "thinking_delta", "thinking": event.text})
        if event.signature:  # the signature comes last in a thinking block
            out += self._delta({"type": "signature_delta", "signature": event.signature}) + self._close()
        return out

    def tool_call(self, event: ToolCallEvent) -> bytes:
        block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
        partial = json.dumps(event.arguments, ensure_ascii=False)
        return (
            self._begin("tool_use", block)
            + self._delta({"type": "input_json_delta", "partial_json": partial})
            + self._close()
        )

    def done(self, event: DoneEvent) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(event.finish_reason), "stop_sequence": None},
            "usage": usage_object(event.usage),
        }
        return (
            self._close()
            + sse_event("message_delta", delta)
            + sse_event("message_stop", {"type": "message_stop"})
        )

    def inband_error(self, event: ErrorEvent) -> bytes:
        status = STATUS_BY_KIND.get(event.kind, 500)
        return sse_event("error", error_body(status, event.message, self.id))


class MessageResponder(UnaryResponder):
    """One Message object."""

    def error_reply(self, event: ErrorEvent) -> list[Out]:
        return _error_reply(event, self.id)

    def body(self, done: DoneEvent) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for b in self.blocks:
            if b.call is not None:
                content.append(
                    {"type": "tool_use", "id": b.call.id, "name": b.call.name, "input": b.call.arguments}
                )
            elif b.kind == "thinking":
                content.append({"type": "thinking", "thinking": b.text, "signature": b.signature or ""})
            elif b.text:
                content.append({"type": "text", "text": b.text})
        message = _message(self.id, self.model)
        message.update(
            content=content, stop_reason=stop_reason(done.finish_reason), usage=usage_object(done.usage)
        )
        return message


# ------------------------------------------------------------------ models


def model_object(model_id: str, created: float) -> dict[str, Any]:
    at = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": at}


def models_list(info: ModelsInfo, created: float) -> dict[str, Any]:
    data = [model_object(m.id, created) for m in info.models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# ------------------------------------------------------------------ the front end


def _chat_call(body: bytes) -> ChatCall:
    parsed = parse_messages_request(body)
    rid = new_response_id("msg_")
    responder: Responder = MessageStreamResponder(rid) if parsed.stream else MessageResponder(rid)
    return ChatCall(parsed.model, parsed.request, responder)


FRONT_END = FrontEnd(
    name="anthropic_chat",
    chat_paths=("/v1/messages",),
    parse_chat=_chat_call,
    error=error_response,
    bad_request=bad_request,
    unauthorized=unauthorized,
    models_list=models_list,
    model_object=model_object,
)
