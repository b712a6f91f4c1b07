"""The seam between the HTTP server and one provider's wire format.

A dialect is sans-IO: it maps a method and path to a route, checks credentials,
parses a request body into a `ChatRequest`, and renders replies, errors and stream
events as bytes. The server decides when to send what (and which fault strikes);
the dialect decides what it looks like.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import msgspec

from ..answer import Answer, ChatRequest, Piece
from ..conversation import PromptCache

RouteKind = Literal["chat", "models", "model", "endpoint"]


class Route(msgspec.Struct, frozen=True):
    """What a request addresses.

    `model` is set when the dialect puts it in the path, `stream` when the path (not the
    body) says whether to stream, `name` names a dialect-specific "endpoint".
    """

    kind: RouteKind
    model: str | None = None
    stream: bool | None = None
    name: str = ""


class HttpRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request as received, for the dialect to check and serve."""

    method: str
    target: str  # exactly as sent, query included
    path: str  # the target without its query, still percent-encoded
    query: dict[str, str]  # decoded; the last value wins for a repeated name
    headers: dict[str, str]  # names lower-cased
    body: bytes
    request_id: str


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What a dialect may need to know about the simulator while handling one request."""

    models: tuple[str, ...]
    api_key: str | None
    created: int  # unix seconds the simulator started, as model listings report it
    now: float  # unix time the request arrived
    origin: str  # http://host:port of this server
    aws_secret: str | None = None
    copilot_token_ttl: float = 1500.0
    copilot_poll_interval: int = 5


class Reply(msgspec.Struct, frozen=True):
    """A complete (non-streaming) HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class BadRequest(Exception):
    """The request body cannot be understood; the server answers 400 with this message."""


class StreamEncoder(Protocol):
    """Renders one streaming response, event by event. It may keep state between calls."""

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        """The response headers (content type and the like)."""
        ...

    def start(self) -> bytes:
        """Bytes sent right after the headers, before any content (may be empty)."""
        ...

    def piece(self, piece: Piece) -> bytes:
        """One content chunk (may be empty when the dialect folds it into a neighbour)."""
        ...

    def finish(self) -> bytes:
        """The finish signal, usage and end-of-stream marker."""
        ...

    def keepalive(self) -> bytes:
        """A keep-alive event for waits, or b"" when the dialect sends none."""
        ...

    def inband_error(self, message: str, code: str) -> bytes:
        """The dialect's error event under an HTTP 200 stream; "" picks the dialect's default."""
        ...

    def malformed(self) -> bytes:
        """An event whose payload does not parse."""
        ...


class Dialect:
    """Base for dialects: defaults every dialect may override."""

    name: str = ""
    base_path: str = ""  # what base_url ends with, as the vendor SDK spells it
    keepalive_interval: float | None = None  # seconds between keep-alives while waiting; None: never
    supports_prefill = True  # a trailing assistant message is continued (when the simulator accepts it)
    request_id_header = "x-request-id"
    response_id_prefix = "resp_"
    tool_id_prefix = "call_"
    _prompt_cache: PromptCache | None = None

    def prompt_cache(self) -> PromptCache:
        """This server's prompt cache (a dialect is made per server: see `get_dialect`)."""
        if self._prompt_cache is None:
            self._prompt_cache = PromptCache()
        return self._prompt_cache

    def route(self, method: str, path: str, query: Mapping[str, str]) -> Route | None:
        raise NotImplementedError

    def check_auth(self, route: Route, request: HttpRequest, ctx: Context) -> Reply | None:
        """The error reply when credentials (or required headers) are missing or wrong; None when fine."""
        return None

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        """Raises BadRequest when the body is not a valid chat request."""
        raise NotImplementedError

    def model_known(self, model: str, models: Sequence[str]) -> bool:
        return model in models

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        wait: float | None = None,
        request_id: str = "",
    ) -> Reply:
        """The dialect's error envelope for `status`.

        `code` picks the error type/code where the dialect has one (else the usual one for
        the status); `wait` is a retry hint in seconds, expressed as the dialect does.
        """
        raise NotImplementedError

    def unknown_model(self, model: str, request_id: str = "") -> Reply:
        return self.error(404, f"The model {model} does not exist.", request_id=request_id)

    def not_found(self, request: HttpRequest) -> Reply:
        return self.error(404, f"Unknown request URL: {request.method} {request.path}")

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply:
        raise NotImplementedError

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> StreamEncoder:
        raise NotImplementedError

    def serve(self, route: Route, request: HttpRequest, ctx: Context) -> Reply:
        """Answer a route other than "chat" (model listings, token endpoints)."""
        return self.not_found(request)


SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))


def json_reply(status: int, obj: object, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    return Reply(status, [("content-type", "application/json"), *headers], msgspec.json.encode(obj))


def text_reply(status: int, text: str) -> Reply:
    return Reply(status, [("content-type", "text/plain; charset=utf-8")], text.encode())


def sse(obj: object, event: str | None = None) -> bytes:
    """One SSE event: an optional `event:` line, one `data:` line of JSON, a blank line."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + msgspec.json.encode(obj) + b"\n\n"


def decode_json(body: bytes, type: Any = Any) -> Any:
    """Decode `body` as `type`, turning any decode or validation error into BadRequest."""
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.DecodeError as e:  # ValidationError included: both mean a 400
        raise BadRequest(f"Invalid request body: {e}") from e


def page(items: Sequence[str], start: int, size: int) -> tuple[list[str], bool]:
    """items[start:start+size] and whether more follow."""
    chunk = list(items[start : start + size])
    return chunk, start + size < len(items)
