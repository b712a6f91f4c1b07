"""The seam every API dialect fills: build a request, decode a stream, classify an error.

Dialects are sans-IO: they take the neutral request and bytes, and return
values. The provider actor does the HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec

from ...chat import ChatRequest, DecodedItem
from ...limits import TooDeep
from ..errors import Failure, UpstreamError, retry_after_from_headers
from .sse import SSEDecoder, SSEEvent, SSETooLong


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom a provider is reached, as of now (the actor refreshes short-lived tokens).

    `api_key` is the bearer/API key the dialect puts in its auth header; `credentials`
    carries anything richer (Bedrock's AwsCredentials), `region` where the API is regional.
    """

    base_url: str
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Dialect knobs that depend on the provider rather than the wire format.
    options: Mapping[str, Any] = field(default_factory=dict)
    credentials: Any = None
    region: str | None = None


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> list[DecodedItem]:
        """Decode the next bytes; raises UpstreamError on an in-band error or a malformed event."""
        ...

    def close(self) -> list[DecodedItem]:
        """The body ended: returns what was pending; raises UpstreamError if the stream never finished."""
        ...


class Dialect(Protocol):
    name: str

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        """A streaming chat request for `model`. `now` (UTC) is for signatures.

        Raises UpstreamError(Failure.UNSUPPORTED) for what this dialect cannot express
        (never a silent drop); the supervisor then tries the next member.
        """
        ...

    def stream_decoder(self) -> StreamDecoder: ...

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Exception:
        """An HTTP error response -> the UpstreamError to act on."""
        ...

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        """The request for one page of the provider's model list (`cursor` None: the first)."""
        ...

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        """The model ids on one page, and the cursor of the next page (None: that was the last)."""
        ...


_decode_json = msgspec.json.Decoder().decode


def loads_event(data: str | bytes) -> Any:
    """One stream event's JSON, as `json.loads` reads it, several times faster (every token pays this).

    msgspec refuses a lone surrogate escape that `json` accepts; such an event goes to `json`,
    so nothing a provider may validly send is refused. Raises ValueError for bad JSON, and
    `TooDeep` (a ValueError) for nesting too deep for the interpreter.
    """
    try:
        return _decode_json(data)
    except msgspec.DecodeError:
        return loads_json(data)
    except RecursionError:
        raise TooDeep() from None


def event_object(data: str | bytes) -> dict[str, Any]:
    """One stream event's JSON object; other JSON is a malformed event (TypeError), bad JSON too (ValueError)."""
    obj = loads_event(data)
    if not isinstance(obj, dict):
        raise TypeError("event is not a JSON object")
    return obj


def loads_json(data: str | bytes) -> Any:
    """`json.loads` for what a provider sends (listings, error bodies, tool arguments).

    A few kilobytes of `[[[[` exhaust the interpreter's recursion: reported as `TooDeep`,
    a ValueError like any other bad JSON, as `limits.decode_bounded` does.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise TooDeep() from None


_encode_json = msgspec.json.Encoder().encode


def json_body(obj: Any) -> bytes:
    """Compact UTF-8 JSON. msgspec, not `json`: an agent's request can carry megabytes of context."""
    return _encode_json(obj)


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_object(body: bytes) -> dict[str, Any]:
    """The error object of an error body (`{"error": {...}}`, bare, or wrapped in an array)."""
    try:
        data = loads_json(body)
    except ValueError:
        return {}
    if isinstance(data, list) and data:  # some proxies wrap errors in an array
        data = data[0]
    if not isinstance(data, dict):
        return {}
    err = data.get("error", data)
    return err if isinstance(err, dict) else {"message": str(err)}


def merge_headers(headers: Mapping[str, str], override: Mapping[str, str]) -> dict[str, str]:
    """`headers` with `override` replacing any header of the same name, whatever its case."""
    replaced = {k.lower() for k in override}
    return {**{k: v for k, v in headers.items() if k.lower() not in replaced}, **override}


def explicit_retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """The wait a response names outright (`retry-after`, `retry-after-ms`).

    For overload: the rate-limit buckets' resets say when a bucket refills, nothing about load.
    """
    explicit = {k: v for k, v in headers.items() if k.lower() in ("retry-after", "retry-after-ms")}
    return retry_after_from_headers(explicit, now)


# ---------------------------------------------------------------- errors inside a 200 stream

# Verdicts on the request itself. Inside a stream the request was already accepted: the
# answer broke, and goes to the next attempt like any transient failure.
_REQUEST_VERDICTS = frozenset({Failure.BAD_REQUEST, Failure.NOT_FOUND, Failure.AUTH})

# (status, error object, message) -> the failover class and the wait the object names.
StreamErrorClassifier = Callable[[int, Mapping[str, Any], str], tuple[Failure, float | None]]


def kind_in_stream(kind: Failure) -> Failure:
    """`kind`, as decided for an error response, for an error that came inside a stream instead."""
    return Failure.TRANSIENT if kind in _REQUEST_VERDICTS else kind


def _message_only(err: Mapping[str, Any], message: str) -> str:
    return message


def inband_error(
    err: object,
    classify: StreamErrorClassifier,
    label: Callable[[Mapping[str, Any], str], str] = _message_only,
) -> UpstreamError:
    """An error object inside a 200 stream -> the UpstreamError to raise.

    A bare value is read as the message. An integer `code` is the HTTP status the error
    stands for; without one `classify` sees 500. `label` names the error in the message.
    """
    fields: Mapping[str, Any] = err if isinstance(err, dict) else {"message": str(err)}
    message = str(fields.get("message") or "error event in stream")
    code = fields.get("code")
    status = code if isinstance(code, int) else None
    kind, retry = classify(status or 500, fields, message)
    return UpstreamError(
        kind_in_stream(kind),
        f"error in stream: {short(label(fields, message))}",
        status=status,
        retry_after=retry,
    )


class SSEJsonDecoder:
    """The feed loop every SSE dialect shares: whole events in, neutral items out.

    Subclasses implement `_on_event`. Bad JSON, or valid JSON of the wrong shape,
    is a malformed event: a stream failure (it may have carried content), never skipped.
    """

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._done = False

    def feed(self, data: bytes) -> list[DecodedItem]:
        out: list[DecodedItem] = []
        try:
            events = self._sse.feed(data)
        except SSETooLong as e:
            raise UpstreamError(Failure.TRANSIENT, f"malformed stream: {e}") from None
        for event in events:
            if self._done:
                break
            try:
                out.extend(self._on_event(event))
            except UpstreamError:
                raise
            except Exception as e:  # anything a malformed event makes us raise is the provider's fault
                raise UpstreamError(
                    Failure.TRANSIENT, f"malformed stream event: {short(event.data, 80)!r}"
                ) from e
        return out

    def _on_event(self, event: SSEEvent) -> list[DecodedItem]:
        raise NotImplementedError
