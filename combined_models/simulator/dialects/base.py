"""The seam between the HTTP server and one provider's wire format.

A dialect is sans-IO: it maps a method and path to a route, parses a request body
into a `ChatRequest`, and renders replies, errors and stream events as bytes. The
server decides when to send what; the dialect decides what it looks like.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import msgspec

from ..answer import Answer, ChatRequest, Piece


class Route(msgspec.Struct, frozen=True):
    """What a request addresses. `model` is set when the dialect puts it in the path."""

    kind: Literal["chat", "models", "model"]
    model: str | None = None


class Reply(msgspec.Struct, frozen=True):
    """A complete (non-streaming) HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class BadRequest(Exception):
    """The request body cannot be understood; the server answers 400 with this message."""


class StreamEncoder(Protocol):
    """Renders one streaming response, event by event. It may keep state between calls."""

    def start(self) -> bytes:
        """Bytes sent right after the headers, before any content (may be empty)."""
        ...

    def piece(self, piece: Piece) -> bytes:
        """One content chunk."""
        ...

    def finish(self) -> bytes:
        """The finish signal, usage and end-of-stream marker."""
        ...

    def keepalive(self) -> bytes:
        """A keep-alive line for waits, or b"" when the dialect sends none."""
        ...

    def inband_error(self, message: str) -> bytes:
        """The dialect's error event under an HTTP 200 stream."""
        ...

    def malformed(self) -> bytes:
        """An event whose payload does not parse."""
        ...


class Dialect(Protocol):
    name: str
    base_path: str  # what base_url ends with, as the vendor SDK spells it
    stream_headers: Sequence[tuple[str, str]]
    keepalive_interval: float | None  # seconds between keep-alive lines while waiting; None: never

    def route(self, method: str, path: str) -> Route | None: ...

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool: ...

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        """Raises BadRequest when the body is not a valid chat request."""
        ...

    def error(self, status: int, message: str | None = None) -> Reply:
        """The dialect's error envelope for `status`; a sensible message when none is given."""
        ...

    def unauthorized(self, headers: Mapping[str, str]) -> Reply: ...

    def unknown_model(self, model: str) -> Reply: ...

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply: ...

    def stream(
        self, req: ChatRequest, answer: Answer, *, response_id: str, created: int
    ) -> StreamEncoder: ...

    def models(self, models: Sequence[str], *, created: int) -> Reply: ...

    def model(self, model: str, *, created: int) -> Reply: ...


def json_reply(status: int, obj: object, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    return Reply(status, [("content-type", "application/json"), *headers], msgspec.json.encode(obj))
