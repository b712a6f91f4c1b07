"""What the OpenAI and Anthropic front doors share, sans-IO: errors, SSE framing, the responder, the front end.

A `Responder` turns one request's stream events (from the daemon's `chat`) into
HTTP output: a `Head` (status and headers), body bytes, and `finished` once the
body is complete. It holds the head back until the first event decides it, so
a failure before any output is still a proper HTTP error with a status code.

A `FrontEnd` is one HTTP API the gateway speaks: each API module builds one,
and the gateway asks it, never "which API is this?".
"""

from __future__ import annotations

import itertools
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ...chat import (
    ChatRequest,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FailoverEvent,
    ProviderEvent,
    StreamEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
    Usage,
)
from ...limits import TooDeep, check_request, decode_bounded
from ...protocol import ModelsInfo

PROVIDER_HEADER = "x-combined-models-provider"

# The error kinds of the contract -> HTTP status before any output.
STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.UNKNOWN_MODEL: 404,
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.CONTENT_FILTER: 400,
    ErrorKind.PROTOCOL_ERROR: 400,
    ErrorKind.FRAME_TOO_LARGE: 413,
    ErrorKind.ALL_PROVIDERS_COOLING: 429,
    ErrorKind.ALL_PROVIDERS_FAILED: 502,
    ErrorKind.TRUNCATED: 502,
    ErrorKind.SHUTTING_DOWN: 503,
    ErrorKind.INTERNAL: 500,
}

_encode = msgspec.json.encode


class BadRequest(Exception):
    """The client's request is wrong: a 400 in the dialect's error shape, naming `param` when known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


def bad_request_from(err: msgspec.ValidationError) -> BadRequest:
    """msgspec's "Expected `int`, got `str` - at `$.messages[0].content`" -> a BadRequest naming the field."""
    text = str(err)
    m = _AT.match(text)
    msg, path = (m["msg"], m["path"].lstrip(".")) if m else (text, "")
    if missing := _MISSING.search(msg):
        path = f"{path}.{missing['name']}" if path else missing["name"]
    return BadRequest(f"{msg} (at `{path}`)" if path else msg, path or None)


def decode_json(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """Decode a request body with a typed decoder; any problem becomes a BadRequest naming the field."""
    if not body.strip():
        raise BadRequest("the request body is empty; expected a JSON object")
    try:
        return decode_bounded(decoder.decode, body)
    except TooDeep as e:
        raise BadRequest(f"the request body is {e}") from None
    except msgspec.ValidationError as e:  # before DecodeError: it is a subclass
        raise bad_request_from(e) from None
    except msgspec.DecodeError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None


def check_depth(request: ChatRequest) -> ChatRequest:
    """`request` when its free-form parts (tool schemas, call arguments) nest within the limit; else a BadRequest."""
    try:
        check_request(request)
    except TooDeep as e:
        raise BadRequest(str(e), e.where or None) from None
    return request


def parse_data_url(url: str) -> tuple[str, str] | None:
    """`data:image/png;base64,AAAA` -> ("image/png", "AAAA"); None when it is not a base64 data URL."""
    if not url.startswith("data:"):
        return None
    meta, sep, data = url[5:].partition(",")
    if not sep or not meta.endswith(";base64"):
        return None
    return meta.removesuffix(";base64").split(";", 1)[0] or "application/octet-stream", data


def retry_after_header(seconds: float | None) -> list[tuple[str, str]]:
    if seconds is None:
        return []
    return [("retry-after", str(max(1, int(seconds + 0.999))))]


# ------------------------------------------------------------------ SSE


def sse_data(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def sse_event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(obj) + b"\n\n"


def sse_comment(text: str) -> bytes:
    """An SSE comment: clients ignore it, people reading the stream see it."""
    return b"".join(b": " + line.encode() + b"\n" for line in text.splitlines() or [""]) + b"\n"


def failover_comment(event: FailoverEvent) -> bytes:
    return sse_comment(f"failover from {event.from_} to {event.to} ({event.reason})")


SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
]
JSON_TYPE = ("content-type", "application/json")


# ------------------------------------------------------------------ responders


@dataclass(frozen=True, slots=True)
class Head:
    """The response status and headers; a body without content-length is sent chunked."""

    status: int
    headers: list[tuple[str, str]]


Out = Head | bytes


def json_reply(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> list[Out]:
    body = _encode(obj)
    return [Head(status, [JSON_TYPE, ("content-length", str(len(body))), *(headers or [])]), body]


class Responder(ABC):
    """Stream events in, HTTP output out. `finished` turns True with the last bytes of the body."""

    def __init__(self, response_id: str) -> None:
        self.id = response_id
        self.started = False  # the head went out
        self.finished = False
        self.provider = ""
        self.model = ""

    @abstractmethod
    def feed(self, event: StreamEvent) -> list[Out]: ...

    @abstractmethod
    def error_reply(self, event: ErrorEvent) -> list[Out]:
        """The whole error response before any output: the dialect's body and the kind's status."""


class StreamResponder(Responder):
    """Server-sent events. The head waits for the first provider event; then the stream is seamless."""

    def __init__(self, response_id: str) -> None:
        super().__init__(response_id)
        self._pending: list[bytes] = []  # failover notes from before the head

    def feed(self, event: StreamEvent) -> list[Out]:
        if self.finished:
            return []
        out: list[Out] = []
        if not self.started:
            if isinstance(event, ErrorEvent):
                self.finished = True
                return self.error_reply(event)
            if isinstance(event, FailoverEvent):
                self._pending.append(failover_comment(event))
                return []
            # (a done event first would be an empty answer: Relay announces first, but be safe)
            if isinstance(event, ProviderEvent | DoneEvent):
                self.provider, self.model = event.provider, event.model
            self.started = True
            headers = [*SSE_HEADERS, (PROVIDER_HEADER, self.provider), ("x-request-id", self.id)]
            out += [Head(200, headers), *self._pending, self.start()]
            self._pending.clear()
            if isinstance(event, ProviderEvent):
                return out
        if isinstance(event, ProviderEvent):
            self.provider, self.model = event.provider, event.model  # after a failover
        elif isinstance(event, FailoverEvent):
            out.append(failover_comment(event))
        elif isinstance(event, TextEvent):
            out.append(self.text(event))
        elif isinstance(event, ThinkingEvent):
            out.append(self.thinking(event))
        elif isinstance(event, ToolCallEvent):
            out.append(self.tool_call(event))
        elif isinstance(event, DoneEvent):
            self.finished = True
            self.model = event.model or self.model
            out.append(self.done(event))
        elif isinstance(event, ErrorEvent):
            # Never the dialect's normal end: the client must not take a cut answer for a whole one.
            self.finished = True
            out.append(self.inband_error(event))
        return [b for b in out if b != b""]

    # The dialect's encoding of each step.
    @abstractmethod
    def start(self) -> bytes: ...

    @abstractmethod
    def text(self, event: TextEvent) -> bytes: ...

    @abstractmethod
    def thinking(self, event: ThinkingEvent) -> bytes: ...

    @abstractmethod
    def tool_call(self, event: ToolCallEvent) -> bytes: ...

    @abstractmethod
    def done(self, event: DoneEvent) -> bytes: ...

    @abstractmethod
    def inband_error(self, event: ErrorEvent) -> bytes: ...


@dataclass
class Block:
    """One piece of a collected answer, in arrival order."""

    kind: str  # "text" | "thinking" | "tool_call"
    text: str = ""
    signature: str | None = None
    call: ToolCallEvent | None = None


class UnaryResponder(Responder):
    """One JSON body, sent when the answer is complete (or an error, whenever it happens)."""

    def __init__(self, response_id: str) -> None:
        super().__init__(response_id)
        self.blocks: list[Block] = []

    def _add(self, kind: str, text: str = "", signature: str | None = None) -> None:
        last = self.blocks[-1] if self.blocks else None
        if last is not None and last.kind == kind and last.signature is None:
            last.text += text
            last.signature = signature
        else:
            self.blocks.append(Block(kind, text, signature))

    def feed(self, event: StreamEvent) -> list[Out]:
        if self.finished:
            return []
        if isinstance(event, ProviderEvent):
            self.provider, self.model = event.provider, event.model
        elif isinstance(event, TextEvent):
            self._add("text", event.text)
        elif isinstance(event, ThinkingEvent):
            self._add("thinking", event.text, event.signature)
        elif isinstance(event, ToolCallEvent):
            self.blocks.append(Block("tool_call", call=event))
        elif isinstance(event, DoneEvent):
            self.finished = self.started = True
            self.provider, self.model = event.provider, event.model or self.model
            headers = [(PROVIDER_HEADER, event.provider), ("x-request-id", self.id)]
            return json_reply(200, self.body(event), headers)
        elif isinstance(event, ErrorEvent):
            self.finished = self.started = True
            return self.error_reply(event)
        return []

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.blocks if b.kind == "text")

    @property
    def reasoning(self) -> str:
        return "".join(b.text for b in self.blocks if b.kind == "thinking")

    @property
    def calls(self) -> list[ToolCallEvent]:
        return [b.call for b in self.blocks if b.call is not None]

    @abstractmethod
    def body(self, done: DoneEvent) -> dict[str, Any]: ...


def usage_total(u: Usage) -> int:
    return u.input_tokens + u.output_tokens


# ------------------------------------------------------------------ front ends

_ID_PREFIX = secrets.token_hex(8)  # per process; the counter makes each id unique within it
_ids = itertools.count(1)


def new_response_id(prefix: str) -> str:
    return f"{prefix}{_ID_PREFIX}{next(_ids):08x}"


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A chat request as a front end parsed it: what to ask the daemon, and who writes the answer."""

    model: str
    request: ChatRequest
    responder: Responder


@dataclass(frozen=True, slots=True)
class FrontEnd:
    """One HTTP API the gateway speaks: its chat paths, how its requests parse, how its answers look."""

    name: str  # its chat endpoint's name among the routes
    chat_paths: tuple[str, ...]
    parse_chat: Callable[[bytes], ChatCall]  # a chat request body -> the call; raises BadRequest
    error: Callable[[int, str], list[Out]]  # an error response in this API's shape
    bad_request: Callable[[BadRequest], list[Out]]
    unauthorized: Callable[[], list[Out]]
    models_list: Callable[[ModelsInfo, int], dict[str, Any]]  # (models, created) -> `GET /v1/models`
    model_object: Callable[[str, int], dict[str, Any]]  # (id, created) -> `GET /v1/models/{id}`
