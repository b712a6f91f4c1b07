"""The helpers every dialect shares: errors inside a stream, event objects, headers, waits."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from combined_models.daemon.dialects.base import (
    event_object,
    explicit_retry_after,
    inband_error,
    kind_in_stream,
    merge_headers,
)
from combined_models.daemon.errors import Failure, classify_status

NOW = datetime(2025, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------- errors inside a 200 stream


@pytest.mark.parametrize("kind", list(Failure))
def test_kind_in_stream_turns_only_verdicts_on_the_request_transient(kind: Failure) -> None:
    verdicts = {Failure.BAD_REQUEST, Failure.NOT_FOUND, Failure.AUTH}
    assert kind_in_stream(kind) is (Failure.TRANSIENT if kind in verdicts else kind)


def by_status(status: int, err: Mapping[str, Any], message: str) -> tuple[Failure, float | None]:
    return classify_status(status), None


@pytest.mark.parametrize(
    ("err", "kind", "message", "status"),
    [
        ({"message": "slow down", "code": 429}, Failure.RATE_LIMITED, "error in stream: slow down", 429),
        ({"message": "overloaded", "code": 529}, Failure.OVERLOADED, "error in stream: overloaded", 529),
        # A verdict on the request, once it was accepted, is an answer that broke.
        ({"message": "bad", "code": 400}, Failure.TRANSIENT, "error in stream: bad", 400),
        ({"message": "who?", "code": 401}, Failure.TRANSIENT, "error in stream: who?", 401),
        ({"message": "gone", "code": 404}, Failure.TRANSIENT, "error in stream: gone", 404),
        # Without an integer code the classifier sees 500, and no status is claimed.
        ({"message": "x", "code": "server_error"}, Failure.TRANSIENT, "error in stream: x", None),
        ({"message": "x"}, Failure.TRANSIENT, "error in stream: x", None),
        # A bare value is the message; an object without one gets a stand-in.
        ("stream broke", Failure.TRANSIENT, "error in stream: stream broke", None),
        (None, Failure.TRANSIENT, "error in stream: None", None),
        ({}, Failure.TRANSIENT, "error in stream: error event in stream", None),
        ({"message": "", "code": 503}, Failure.OVERLOADED, "error in stream: error event in stream", 503),
        ({"message": "a\n  b"}, Failure.TRANSIENT, "error in stream: a b", None),  # one line
    ],
)
def test_inband_error(err: object, kind: Failure, message: str, status: int | None) -> None:
    error = inband_error(err, by_status)
    assert (error.kind, error.message, error.status, error.retry_after) == (kind, message, status, None)


def test_inband_error_hands_the_classifier_status_object_and_message() -> None:
    seen: list[tuple[int, Mapping[str, Any], str]] = []

    def classify(status: int, err: Mapping[str, Any], message: str) -> tuple[Failure, float | None]:
        seen.append((status, err, message))
        return Failure.RATE_LIMITED, 3.0

    error = inband_error({"message": "m", "code": 429, "status": "RESOURCE_EXHAUSTED"}, classify)
    assert seen == [(429, {"message": "m", "code": 429, "status": "RESOURCE_EXHAUSTED"}, "m")]
    assert (error.kind, error.retry_after) == (Failure.RATE_LIMITED, 3.0)
    inband_error("text", classify)
    assert seen[-1] == (500, {"message": "text"}, "text")


def test_inband_error_label_names_the_error() -> None:
    error = inband_error(
        {"message": "try later", "status": "UNAVAILABLE"},
        by_status,
        label=lambda err, message: f"{err['status']}: {message}",
    )
    assert error.message == "error in stream: UNAVAILABLE: try later"


def test_inband_error_message_is_shortened() -> None:
    error = inband_error({"message": "x" * 2000}, by_status)
    assert len(error.message) == len("error in stream: ") + 500
    assert error.message.endswith("…")


# ---------------------------------------------------------------- events, headers, waits


@pytest.mark.parametrize(
    ("data", "expected"),
    [('{"type":"ping"}', {"type": "ping"}), (b'{"a": [1]}', {"a": [1]}), ("{}", {})],
)
def test_event_object(data: str | bytes, expected: dict[str, Any]) -> None:
    assert event_object(data) == expected


@pytest.mark.parametrize(
    ("data", "error"),
    [("[1, 2]", TypeError), ('"message_stop"', TypeError), ("null", TypeError), ("{bad", ValueError)],
)
def test_event_object_refuses_anything_but_an_object(data: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        event_object(data)


@pytest.mark.parametrize(
    ("headers", "override", "expected"),
    [
        ({"a": "1"}, {"b": "2"}, {"a": "1", "b": "2"}),
        ({"Authorization": "old", "x": "1"}, {"authorization": "new"}, {"x": "1", "authorization": "new"}),
        ({"x-amz-date": "old"}, {"X-Amz-Date": "new"}, {"X-Amz-Date": "new"}),
        ({}, {}, {}),
    ],
)
def test_merge_headers_replaces_whatever_the_case(
    headers: dict[str, str], override: dict[str, str], expected: dict[str, str]
) -> None:
    assert merge_headers(headers, override) == expected
    assert list(merge_headers(headers, override)) == list(expected)  # the order is sent as is


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"Retry-After-Ms": "1500"}, 1.5),
        (
            {"retry-after": "5", "x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-requests": "0"},
            5.0,
        ),
        # A bucket's reset says when it refills, nothing about load: not a wait.
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-requests": "0"}, None),
        ({"anthropic-ratelimit-requests-reset": "2025-01-01T00:00:30Z"}, None),
        ({}, None),
    ],
)
def test_explicit_retry_after(headers: dict[str, str], wait: float | None) -> None:
    assert explicit_retry_after(headers, NOW) == wait
