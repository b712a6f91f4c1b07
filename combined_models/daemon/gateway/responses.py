"""The OpenAI Responses API front door, sans-IO (provider-protocols.md §9).

`parse_responses_request` turns a `POST /v1/responses` body into the neutral
`ChatRequest`; the responders turn the neutral stream events back into the
Responses stream events or one response object; `FRONT_END` is this API as the
gateway uses it. Nothing here does I/O.

What the neutral request cannot carry is handled so:
- Function tools are passed on; `custom` (freeform) tools become a function taking
  one string, `input`, and their calls come back as `custom_tool_call` items;
  `namespace` tools are flattened (`<namespace>__<name>`), their calls come back
  with the namespace. Tools the provider itself runs (web search, file search, code
  interpreter, image generation, MCP, computer use, shells) are left out: no other
  provider runs them, and the model answers without them. Any other tool type is a 400.
- Reasoning items replayed by a client are thinking; their `encrypted_content` is
  passed back as a signature only when this door produced it (see `SIGNATURE_PREFIX`).
- `previous_response_id` continues a response this daemon produced and kept (`ResponseStore`).
- Server-side state this daemon does not keep (`conversation`, `background`, stored
  prompts, item references) and structured output formats are a 400.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
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
from ...limits import TooDeep, decode_bounded
from . import openai as oai
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
    parse_data_url,
    retry_after_header,
    sse_event,
    usage_total,
)

# ------------------------------------------------------------------ request


class _InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class _InputImage(msgspec.Struct, tag="input_image", tag_field="type"):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class _InputFile(msgspec.Struct, tag="input_file", tag_field="type"):
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


class _OutputText(msgspec.Struct, tag="output_text", tag_field="type"):
    text: str


class _Refusal(msgspec.Struct, tag="refusal", tag_field="type"):
    refusal: str


_Content = _InputText | _InputImage | _InputFile | _OutputText | _Refusal


class _MessageItem(msgspec.Struct):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_Content]


class _FunctionCallItem(msgspec.Struct):
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None


class _CustomCallItem(msgspec.Struct):
    call_id: str
    name: str
    input: str
    namespace: str | None = None


class _OutputItem(msgspec.Struct):
    """`function_call_output` and `custom_tool_call_output`."""

    call_id: str
    output: str | list[_Content]


class _SummaryText(msgspec.Struct):
    text: str


class _ReasoningItem(msgspec.Struct):
    summary: list[_SummaryText] = []
    content: list[_SummaryText] | None = None  # `reasoning_text` parts (open-weight models)
    encrypted_content: str | None = None


class _ItemHead(msgspec.Struct):
    type: str = "message"  # a message may leave its type out


class _ToolHead(msgspec.Struct):
    type: str


_item_head = msgspec.json.Decoder(_ItemHead)
_tool_head = msgspec.json.Decoder(_ToolHead)


_ITEM_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "message": msgspec.json.Decoder(_MessageItem),
    "function_call": msgspec.json.Decoder(_FunctionCallItem),
    "custom_tool_call": msgspec.json.Decoder(_CustomCallItem),
    "function_call_output": msgspec.json.Decoder(_OutputItem),
    "custom_tool_call_output": msgspec.json.Decoder(_OutputItem),
    "reasoning": msgspec.json.Decoder(_ReasoningItem),
}
# Records of what a provider-run tool did: nothing to replay elsewhere, harmless to skip.
_SKIPPED_ITEMS = frozenset(
    {"web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call"}
)


class _FunctionTool(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class _CustomTool(msgspec.Struct):
    name: str
    description: str | None = None
    format: dict[str, Any] | None = None


class _NamespaceTool(msgspec.Struct):
    name: str
    tools: list[msgspec.Raw]
    description: str = ""


_TOOL_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "function": msgspec.json.Decoder(_FunctionTool),
    "custom": msgspec.json.Decoder(_CustomTool),
    "namespace": msgspec.json.Decoder(_NamespaceTool),
}
# Tools the provider runs itself; left out (see the module docstring).
_HOSTED_TOOLS = frozenset(
    {
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use",
        "computer_use_preview",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
    }
)


def _hosted(kind: str) -> bool:
    return kind in _HOSTED_TOOLS or kind.startswith("web_search")


class _Named(msgspec.Struct):
    type: str
    name: str | None = None


class _ToolChoice(msgspec.Struct):
    type: str
    name: str | None = None
    mode: Literal["auto", "required"] | None = None
    tools: list[_Named] | None = None


class _Reasoning(msgspec.Struct):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class _Format(msgspec.Struct):
    type: str


class _TextConfig(msgspec.Struct):
    format: _Format | None = None


class _Body(msgspec.Struct):
    model: str
    input: str | list[msgspec.Raw] | None = None
    instructions: str | None = None
    tools: list[msgspec.Raw] | None = None
    tool_choice: Literal["none", "auto", "required"] | _ToolChoice | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    reasoning: _Reasoning | None = None
    prompt_cache_key: str | None = None
    include: list[str] | None = None
    text: _TextConfig | None = None
    parallel_tool_calls: bool | None = None
    # Server-side state and features this daemon does not have: refused when asked for.
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None


_decoder = msgspec.json.Decoder(_Body)

# reasoning.effort -> a thinking budget (as the Chat Completions door maps reasoning_effort).
THINKING_BUDGETS: dict[str, int | None] = {**oai.THINKING_BUDGETS, "max": oai.THINKING_BUDGETS["xhigh"]}

# A reasoning item's `encrypted_content` made by this door carries a thinking signature
# (Claude's) behind this prefix, so a client replaying it gives the signature back; an
# `encrypted_content` from anywhere else is another vendor's and is not passed on.
SIGNATURE_PREFIX = "cm-sig:"

# The parameters a custom (freeform) tool gets as a function.
CUSTOM_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's whole input, as free text."}},
    "required": ["input"],
}


@dataclass(frozen=True, slots=True)
class ToolName:
    """How a neutral tool name goes back to the client: which item, under which name and namespace."""

    kind: Literal["function_call", "custom_tool_call"]
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedResponses:
    model: str
    stream: bool
    store: bool
    request: ChatRequest
    # What the response object echoes, and how tool calls go back.
    names: dict[str, ToolName] = field(default_factory=dict)
    echo: dict[str, Any] = field(default_factory=dict)
    encrypted_reasoning: bool = False  # `include` asked for `reasoning.encrypted_content`


def _sub_decode(decoder: msgspec.json.Decoder[Any], raw: msgspec.Raw, where: str) -> Any:
    try:
        return decode_bounded(decoder.decode, bytes(raw))
    except TooDeep as e:
        raise BadRequest(f"the request body is {e}", where) from None
    except msgspec.ValidationError as e:
        inner = bad_request_from(e)
        param = f"{where}.{inner.param}" if inner.param else where
        raise BadRequest(inner.message.split(" (at `", 1)[0], param) from None
    except msgspec.DecodeError as e:  # cannot happen for a part of a valid body, but be safe
        raise BadRequest(f"not valid JSON: {e}", where) from None


def _type_of(raw: msgspec.Raw, where: str, head: msgspec.json.Decoder[Any] | None = None) -> str:
    return str(_sub_decode(head or _item_head, raw, where).type)


def _neutral_name(name: str, namespace: str | None) -> str:
    return f"{namespace}__{name}" if namespace else name


def _tools(raws: list[msgspec.Raw]) -> tuple[list[Tool], dict[str, ToolName]]:
    tools: list[Tool] = []
    names: dict[str, ToolName] = {}

    def add(raw: msgspec.Raw, where: str, namespace: str | None) -> None:
        kind = _type_of(raw, where, _tool_head)
        if kind == "function":
            f: _FunctionTool = _sub_decode(_TOOL_DECODERS[kind], raw, where)
            name = _neutral_name(f.name, namespace)
            parameters = f.parameters or {"type": "object", "properties": {}}
            tools.append(Tool(name=name, description=f.description or "", parameters=parameters))
            names[name] = ToolName("function_call", f.name, namespace)
        elif kind == "custom":
            c: _CustomTool = _sub_decode(_TOOL_DECODERS[kind], raw, where)
            name = _neutral_name(c.name, namespace)
            description = c.description or ""
            fmt = c.format or {}
            if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
                syntax = fmt.get("syntax") or "grammar"
                description += f"\n\nThe input must follow this {syntax} grammar:\n{fmt['definition']}"
            tools.append(Tool(name=name, description=description.strip(), parameters=CUSTOM_PARAMETERS))
            names[name] = ToolName("custom_tool_call", c.name, namespace)
        elif kind == "namespace" and namespace is None:
            ns: _NamespaceTool = _sub_decode(_TOOL_DECODERS[kind], raw, where)
            for j, inner in enumerate(ns.tools):
                add(inner, f"{where}.tools[{j}]", ns.name)
        elif not _hosted(kind):
            raise BadRequest(f"tool type {kind!r} is not supported by this server", f"{where}.type")

    for i, raw in enumerate(raws):
        add(raw, f"tools[{i}]", None)
    return tools, names


def _image(p: _InputImage, where: str) -> ImagePart:
    url = p.image_url or ""
    if (data := parse_data_url(url)) is not None:
        return ImagePart(media_type=data[0], data=data[1])
    if url.startswith(("http://", "https://")):
        return ImagePart(url=url)
    if p.file_id:  # OpenAI's own file storage, which no other provider can read
        raise BadRequest("expected `image_url` (file_id is not supported)", f"{where}.file_id")
    raise BadRequest("expected a base64 data URL or an http(s) URL", f"{where}.image_url")


def _file(p: _InputFile, where: str) -> DocumentPart:
    data = parse_data_url(p.file_data) if p.file_data else None
    if data is None:
        raise BadRequest(
            "expected `file_data` as a base64 data URL (file_id and file_url are not supported)",
            f"{where}.file_data",
        )
    return DocumentPart(media_type=data[0], data=data[1], title=p.filename)


def _parts(content: str | list[_Content], where: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    out: list[Part] = []
    for j, p in enumerate(content):
        at = f"{where}[{j}]"
        if isinstance(p, _InputText | _OutputText):
            out.append(TextPart(p.text))
        elif isinstance(p, _Refusal):
            out.append(TextPart(p.refusal))
        elif isinstance(p, _InputImage):
            out.append(_image(p, at))
        else:
            out.append(_file(p, at))
    return out


def _texts(content: str | list[_Content]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, _InputText | _OutputText))


def _arguments(text: str, where: str) -> dict[str, Any]:
    try:
        args = decode_bounded(json.loads, (text or "{}").encode())
    except ValueError:  # TooDeep is one too
        args = None
    if not isinstance(args, dict):
        raise BadRequest("expected the arguments as a JSON object in a string", where)
    return args


def _signature(encrypted: str | None) -> str | None:
    if encrypted and encrypted.startswith(SIGNATURE_PREFIX):
        return encrypted[len(SIGNATURE_PREFIX) :] or None
    return None


class _Conversation:
    """Neutral messages built item by item: neighbours of one role are one message."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.system: list[str] = []
        self.call_ids = {
            p.id
            for m in messages
            if not isinstance(m.content, str)
            for p in m.content
            if isinstance(p, ToolCallPart)
        }

    def add(self, role: Literal["user", "assistant"], parts: list[Part]) -> None:
        if not parts:
            return
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == role:
            if isinstance(last.content, str):
                last.content = [TextPart(last.content)] if last.content else []
            last.content.extend(parts)
        else:
            self.messages.append(Message(role, parts))

    def item(self, raw: msgspec.Raw, where: str) -> None:
        kind = _type_of(raw, where)
        decoder = _ITEM_DECODERS.get(kind)
        if decoder is None:
            if kind in _SKIPPED_ITEMS:
                return
            raise BadRequest(f"input item type {kind!r} is not supported by this server", f"{where}.type")
        item = _sub_decode(decoder, raw, where)
        if isinstance(item, _MessageItem):
            if item.role in ("system", "developer"):
                self.system.append(_texts(item.content))
            else:
                role: Literal["user", "assistant"] = "user" if item.role == "user" else "assistant"
                self.add(role, _parts(item.content, f"{where}.content"))
        elif isinstance(item, _FunctionCallItem):
            args = _arguments(item.arguments, f"{where}.arguments")
            self._call(ToolCallPart(item.call_id, _neutral_name(item.name, item.namespace), args))
        elif isinstance(item, _CustomCallItem):
            name = _neutral_name(item.name, item.namespace)
            self._call(ToolCallPart(item.call_id, name, {"input": item.input}))
        elif isinstance(item, _OutputItem):
            if item.call_id not in self.call_ids:
                raise BadRequest(f"no tool call found with call_id {item.call_id!r}", f"{where}.call_id")
            blocks: list[TextPart | ImagePart] = []
            extra: list[Part] = []
            if not isinstance(item.output, str):  # text and images are the result's blocks; files follow it
                for p in _parts(item.output, f"{where}.output"):
                    if isinstance(p, TextPart | ImagePart):
                        blocks.append(p)
                    else:
                        extra.append(p)
            content = item.output if isinstance(item.output, str) else result_content(blocks)
            self.add("user", [ToolResultPart(tool_call_id=item.call_id, content=content), *extra])
        else:
            assert isinstance(item, _ReasoningItem)
            summary = item.summary or item.content or []
            text = "\n\n".join(s.text for s in summary)
            signature = _signature(item.encrypted_content)
            if text or signature:
                self.add("assistant", [ThinkingPart(text=text, signature=signature)])

    def _call(self, part: ToolCallPart) -> None:
        self.call_ids.add(part.id)
        self.add("assistant", [part])


def _plain(messages: list[Message]) -> list[Message]:
    """A message of one unmarked text part as plain text, as the other doors give it."""
    for m in messages:
        if not isinstance(m.content, str) and len(m.content) == 1:
            (only,) = m.content
            if isinstance(only, TextPart) and only.cache is None:
                m.content = only.text
    return messages


def _tool_choice(choice: Any, tools: list[Tool]) -> tuple[str | None, list[Tool]]:
    """The neutral tool choice, and the tools it leaves (`allowed_tools` narrows them)."""
    if choice is None or isinstance(choice, str):
        return choice, tools
    assert isinstance(choice, _ToolChoice)
    known = {t.name for t in tools}
    if choice.type in ("function", "custom"):
        if not choice.name or choice.name not in known:
            raise BadRequest(f"no tool named {choice.name!r} in `tools`", "tool_choice.name")
        return choice.name, tools
    if choice.type == "allowed_tools":
        allowed = {t.name for t in choice.tools or () if t.name}
        if missing := sorted(allowed - known):
            raise BadRequest(f"no tool named {missing[0]!r} in `tools`", "tool_choice.tools")
        return choice.mode or "auto", [t for t in tools if t.name in allowed]
    raise BadRequest(
        f"tool_choice {choice.type!r} names a tool this server does not run; "
        "use `auto`, `required`, `none` or a function",
        "tool_choice.type",
    )


def _refuse_unsupported(b: _Body) -> None:
    if b.conversation is not None:
        raise BadRequest(
            "conversations are not kept by this server; send the history in `input`, "
            "or continue with `previous_response_id`",
            "conversation",
        )
    if b.background:
        raise BadRequest("background responses are not supported by this server", "background")
    if b.prompt is not None:
        raise BadRequest("stored prompts are not supported by this server", "prompt")
    if b.text is not None and b.text.format is not None and b.text.format.type != "text":
        raise BadRequest(
            f"text.format {b.text.format.type!r} (structured output) is not supported by this server",
            "text.format.type",
        )


def _echo_choice(choice: str | _ToolChoice | None) -> Any:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return {k: v for k, v in msgspec.to_builtins(choice).items() if v is not None}


def to_chat_request(b: _Body, previous: list[Message] | None = None) -> ParsedResponses:
    """The validated body (and the conversation `previous_response_id` names) -> the neutral request."""
    _refuse_unsupported(b)
    convo = _Conversation(list(previous or []))
    if isinstance(b.input, str):
        convo.add("user", [TextPart(b.input)])
    else:
        for i, raw in enumerate(b.input or ()):
            convo.item(raw, f"input[{i}]")
    if not convo.messages:
        raise BadRequest("expected a message or item in `input`", "input")
    tools, names = _tools(b.tools or [])
    tool_choice, tools = _tool_choice(b.tool_choice, tools)
    system = "\n\n".join(s for s in [b.instructions or "", *convo.system] if s) or None
    effort = b.reasoning.effort if b.reasoning else None
    request = ChatRequest(
        messages=_plain(convo.messages),
        system=system,
        max_tokens=b.max_output_tokens,
        temperature=b.temperature,
        top_p=b.top_p,
        tools=tools,
        tool_choice=tool_choice,
        thinking_budget=THINKING_BUDGETS[effort] if effort else None,
        session=b.prompt_cache_key or None,
        cache_key=b.prompt_cache_key or None,
    )
    echo: dict[str, Any] = {
        "instructions": b.instructions,
        "max_output_tokens": b.max_output_tokens,
        "parallel_tool_calls": True if b.parallel_tool_calls is None else b.parallel_tool_calls,
        "previous_response_id": b.previous_response_id,
        "reasoning": {
            "effort": effort,
            "summary": b.reasoning.summary if b.reasoning else None,
        },
        "store": b.store is not False,
        "temperature": b.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": _echo_choice(b.tool_choice),
        "tools": list(b.tools or []),
        "top_p": b.top_p,
        "prompt_cache_key": b.prompt_cache_key,
    }
    return ParsedResponses(
        model=b.model,
        stream=bool(b.stream),
        store=b.store is not False,
        request=check_depth(request),
        names=names,
        echo=echo,
        encrypted_reasoning="reasoning.encrypted_content" in (b.include or ()),
    )


def parse_responses_request(body: bytes, store: ResponseStore | None = None) -> ParsedResponses:
    """A `POST /v1/responses` body -> the model, flags and neutral request.

    `previous_response_id` is looked up in `store`; one it does not hold is a 400.
    """
    b: _Body = decode_json(_decoder, body)
    previous: list[Message] | None = None
    if b.previous_response_id is not None:
        previous = store.get(b.previous_response_id) if store is not None else None
        if previous is None:
            kept = (
                f"for {_duration(store.ttl)}, at most {store.max_entries} of them"
                if store is not None
                else "none here"
            )
            raise BadRequest(
                f"Previous response with id {b.previous_response_id!r} not found: this server keeps "
                f"the responses it produced (not those made with `store: false`) {kept}; "
                "send the whole conversation in `input` instead.",
                "previous_response_id",
            )
    return to_chat_request(b, previous)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return "1 hour" if hours == 1 else f"{hours} hours"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} minutes"
    return f"{seconds:g} seconds"


# ------------------------------------------------------------------ the store


_messages_decoder = msgspec.json.Decoder(list[Message])


class ResponseStore:
    """The conversations of the responses this door produced, for `previous_response_id`.

    Bounded in count, bytes and time: an entry lives `ttl` seconds from when it was
    made, and beyond `max_entries` or `max_bytes` the least recently used go first.
    Entries are kept encoded: each lookup gives fresh messages a request may change.
    """

    def __init__(
        self,
        *,
        max_entries: int = 1000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # id -> (messages, expiry)
        self._bytes = 0

    @property
    def count(self) -> int:
        """Responses held."""
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def put(self, response_id: str, messages: list[Message]) -> None:
        data = msgspec.json.encode(messages)
        self._drop(response_id)
        if len(data) > self.max_bytes:
            return  # larger than the whole store: never kept
        self._entries[response_id] = (data, self._clock() + self.ttl)
        self._bytes += len(data)
        self._evict()

    def get(self, response_id: str) -> list[Message] | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            self._drop(response_id)
            return None
        self._entries.move_to_end(response_id)
        return _messages_decoder.decode(entry[0])

    def _drop(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= len(entry[0])

    def _evict(self) -> None:
        now = self._clock()
        for rid in [rid for rid, (_, expiry) in self._entries.items() if expiry <= now]:
            self._drop(rid)
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            self._drop(next(iter(self._entries)))


# ------------------------------------------------------------------ errors


def _error_code(kind: ErrorKind) -> str:
    if kind == ErrorKind.UNKNOWN_MODEL:
        return "model_not_found"
    return str(kind)


def _error_reply(event: ErrorEvent) -> list[Out]:
    status = STATUS_BY_KIND.get(event.kind, 500)
    return json_reply(
        status,
        oai.error_body(status, event.message, _error_code(event.kind)),
        retry_after_header(event.retry_after_s),
    )


def failure(event: ErrorEvent) -> dict[str, str]:
    """A response's `error` when the answer broke after output.

    In the codes clients act on: Codex retries anything but a few codes, and reads the
    wait from "try again in Ns".
    """
    message = event.message
    if event.kind == ErrorKind.ALL_PROVIDERS_COOLING:
        code = "rate_limit_exceeded"
        if event.retry_after_s is not None:
            message += f" Please try again in {max(1, int(event.retry_after_s + 0.999))}s."
    elif event.kind == ErrorKind.CONTENT_FILTER:
        code = "invalid_prompt"
    else:
        code = "server_error"
    return {"code": code, "message": message}


# ------------------------------------------------------------------ responses


def usage_object(u: Usage) -> dict[str, Any]:
    """The Responses usage: `input_tokens` counts the cached tokens too, as the neutral input does."""
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {
            "cached_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage_total(u),
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(eq=False)
class Item:
    """One output item, as it grows."""

    kind: Literal["reasoning", "message", "tool_call"]
    id: str
    index: int  # its place in `output`
    text: str = ""
    signature: str | None = None
    call: ToolCallEvent | None = None
    part_open: bool = False  # streaming: its content (or summary) part was announced


class ResponseCall:
    """What both responders share: the request's echo, the ids, the items, and the store."""

    def __init__(self, model: str, parsed: ParsedResponses, store: ResponseStore | None) -> None:
        self.id = new_response_id("resp_")
        self.created_at = int(time.time())
        self.model = model
        self.parsed = parsed
        self.store = store if parsed.store else None
        # The conversation so far, as the request had it (the daemon may change its copy).
        self._history = msgspec.json.encode(parsed.request.messages) if self.store is not None else b""
        self.items: list[Item] = []

    def new_item(self, kind: Literal["reasoning", "message", "tool_call"]) -> Item:
        prefix = {"reasoning": "rs_", "message": "msg_", "tool_call": "fc_"}[kind]
        n = len(self.items)
        item = Item(kind, f"{prefix}{self.id.removeprefix('resp_')}_{n}", n)
        self.items.append(item)
        return item

    def item_json(self, item: Item, status: str) -> dict[str, Any]:
        if item.kind == "message":
            return {
                "type": "message",
                "id": item.id,
                "status": status,
                "role": "assistant",
                "content": [_output_text(item.text)] if item.part_open or item.text else [],
            }
        if item.kind == "reasoning":
            out: dict[str, Any] = {
                "type": "reasoning",
                "id": item.id,
                "summary": [{"type": "summary_text", "text": item.text}] if item.text else [],
                "status": status,
            }
            if self.parsed.encrypted_reasoning and item.signature:
                out["encrypted_content"] = SIGNATURE_PREFIX + item.signature
            return out
        call = item.call
        assert call is not None
        named = self.parsed.names.get(call.name, ToolName("function_call", call.name))
        out = {"type": named.kind, "id": item.id, "call_id": call.id, "name": named.name}
        if named.kind == "custom_tool_call":
            out["input"] = custom_input(call.arguments)
        else:
            out["arguments"] = json.dumps(call.arguments, ensure_ascii=False)
        if named.namespace:
            out["namespace"] = named.namespace
        out["status"] = status
        return out

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        *,
        error: dict[str, str] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.model,
            "output": output,
            "usage": usage_object(usage) if usage is not None else None,
            "metadata": {},
            "truncation": "disabled",
            "user": None,
            **self.parsed.echo,
        }

    def finish(self, done: DoneEvent) -> tuple[str, str | None]:
        """The final status (and why incomplete); the conversation is kept for later turns."""
        if self.store is not None:
            messages = _messages_decoder.decode(self._history)
            if parts := self._assistant_parts():
                messages.append(Message("assistant", parts))
            self.store.put(self.id, messages)
        reason = _INCOMPLETE.get(done.finish_reason)
        return ("incomplete", reason) if reason else ("completed", None)

    def _assistant_parts(self) -> list[Part]:
        parts: list[Part] = []
        for item in self.items:
            if item.kind == "reasoning" and (item.text or item.signature):
                parts.append(ThinkingPart(text=item.text, signature=item.signature))
            elif item.kind == "message" and item.text:
                parts.append(TextPart(item.text))
            elif item.call is not None:
                parts.append(ToolCallPart(item.call.id, item.call.name, item.call.arguments))
        return parts


def custom_input(arguments: dict[str, Any]) -> str:
    """A custom tool's free-text input, from the one-string function it became."""
    value = arguments.get("input")
    return value if isinstance(value, str) else json.dumps(arguments, ensure_ascii=False)


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesStreamResponder(StreamResponder):
    """The Responses stream: lifecycle events around each output item's own events.

    Every event carries `sequence_number` and the `output_index` of its item; items
    open and close in arrival order, so a kind change (thinking, text, a tool call)
    closes the open item first. After output, an error ends the stream with
    `response.failed`, never `response.completed`.
    """

    def __init__(self, call: ResponseCall) -> None:
        super().__init__(call.id)
        self.call = call
        self._seq = 0
        self._open: Item | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(kind, data)

    def _at(self, item: Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    def error_reply(self, event: ErrorEvent) -> list[Out]:
        return _error_reply(event)

    def start(self) -> bytes:
        response = self.call.response("in_progress", [])
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def _begin(self, kind: Literal["reasoning", "message", "tool_call"]) -> tuple[Item, bytes]:
        out = self._close()
        item = self.call.new_item(kind)
        if kind != "tool_call":  # a tool call is announced once its item is whole
            self._open = item
            added = self.call.item_json(item, "in_progress")
            out += self._event("response.output_item.added", output_index=item.index, item=added)
        return item, out

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        at = self._at(item)
        out = b""
        if item.kind == "message":
            part = _output_text(item.text)
            out += self._event(
                "response.output_text.done", **at, content_index=0, text=item.text, logprobs=[]
            )
            out += self._event("response.content_part.done", **at, content_index=0, part=part)
        elif item.part_open:
            part = {"type": "summary_text", "text": item.text}
            out += self._event("response.reasoning_summary_text.done", **at, summary_index=0, text=item.text)
            out += self._event("response.reasoning_summary_part.done", **at, summary_index=0, part=part)
        done = self.call.item_json(item, "completed")
        return out + self._event("response.output_item.done", output_index=at["output_index"], item=done)

    def text(self, event: TextEvent) -> bytes:
        out = b""
        item = self._open
        if item is None or item.kind != "message":
            item, out = self._begin("message")
            item.part_open = True
            part = _output_text("")
            out += self._event("response.content_part.added", **self._at(item), content_index=0, part=part)
        item.text += event.text
        return out + self._event(
            "response.output_text.delta", **self._at(item), content_index=0, delta=event.text, logprobs=[]
        )

    def thinking(self, event: ThinkingEvent) -> bytes:
        out = b""
        item = self._open
        if event.text:
            if item is None or item.kind != "reasoning" or item.signature is not None:
                item, out = self._begin("reasoning")
            if not item.part_open:
                item.part_open = True
                part = {"type": "summary_text", "text": ""}
                out += self._event(
                    "response.reasoning_summary_part.added", **self._at(item), summary_index=0, part=part
                )
            item.text += event.text
            out += self._event(
                "response.reasoning_summary_text.delta", **self._at(item), summary_index=0, delta=event.text
            )
        if event.signature:  # the signature ends a thinking block
            if item is None or item.kind != "reasoning":
                item, begun = self._begin("reasoning")
                out += begun
            item.signature = event.signature
            out += self._close()
        return out

    def tool_call(self, event: ToolCallEvent) -> bytes:
        item, out = self._begin("tool_call")
        item.call = event
        at = self._at(item)
        added = self.call.item_json(item, "in_progress")
        whole = self.call.item_json(item, "completed")
        if added["type"] == "custom_tool_call":
            added["input"] = ""
            out += self._event("response.output_item.added", output_index=at["output_index"], item=added)
            out += self._event("response.custom_tool_call_input.delta", **at, delta=whole["input"])
            out += self._event("response.custom_tool_call_input.done", **at, input=whole["input"])
        else:
            added["arguments"] = ""
            out += self._event("response.output_item.added", output_index=at["output_index"], item=added)
            out += self._event("response.function_call_arguments.delta", **at, delta=whole["arguments"])
            out += self._event(
                "response.function_call_arguments.done",
                **at,
                name=whole["name"],
                arguments=whole["arguments"],
            )
        return out + self._event("response.output_item.done", output_index=at["output_index"], item=whole)

    def done(self, event: DoneEvent) -> bytes:
        out = self._close()
        status, reason = self.call.finish(event)
        output = [self.call.item_json(i, "completed") for i in self.call.items]
        response = self.call.response(status, output, event.usage, incomplete=reason)
        return out + self._event(f"response.{status}", response=response)

    def inband_error(self, event: ErrorEvent) -> bytes:
        # What was whole went out with its `output_item.done`; the cut item is incomplete.
        output = [
            self.call.item_json(i, "incomplete" if i is self._open else "completed") for i in self.call.items
        ]
        response = self.call.response("failed", output, error=failure(event))
        return self._event("response.failed", response=response)


class ResponseResponder(UnaryResponder):
    """One response object."""

    def __init__(self, call: ResponseCall) -> None:
        super().__init__(call.id)
        self.call = call

    def error_reply(self, event: ErrorEvent) -> list[Out]:
        return _error_reply(event)

    def body(self, done: DoneEvent) -> dict[str, Any]:
        for block in self.blocks:
            if block.kind == "thinking":
                item = self.call.new_item("reasoning")
                item.text, item.signature = block.text, block.signature
            elif block.kind == "text" and block.text:
                self.call.new_item("message").text = block.text
            elif block.call is not None:
                self.call.new_item("tool_call").call = block.call
        status, reason = self.call.finish(done)
        output = [self.call.item_json(i, "completed") for i in self.call.items]
        return self.call.response(status, output, done.usage, incomplete=reason)


# ------------------------------------------------------------------ the front end


def front_end(store: ResponseStore) -> FrontEnd:
    """The Responses API, keeping its responses' conversations in `store`."""

    def chat_call(body: bytes) -> ChatCall:
        parsed = parse_responses_request(body, store)
        call = ResponseCall(parsed.model, parsed, store)
        responder: Responder = ResponsesStreamResponder(call) if parsed.stream else ResponseResponder(call)
        return ChatCall(parsed.model, parsed.request, responder)

    return FrontEnd(
        name="openai_responses",
        chat_paths=("/v1/responses", "/responses"),
        parse_chat=chat_call,
        error=oai.error_response,
        bad_request=oai.bad_request,
        unauthorized=oai.unauthorized,
        models_list=oai.models_list,
        model_object=oai.model_object,
    )


STORE = ResponseStore()  # the daemon's one store: a response id is unique in the process
FRONT_END = front_end(STORE)
