"""Failure classes and the parsers that turn every provider's clock into seconds from now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from combined_models.daemon.errors import (
    CALLER_FAULT,
    NO_PENALTY,
    PROVIDER_LEVEL,
    RETRYABLE,
    Failure,
    UpstreamError,
    classify_status,
    parse_go_duration,
    parse_protobuf_duration,
    parse_rfc3339,
    retry_after_from_headers,
    retry_after_from_text,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------- Go durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("12ms", 0.012),  # not 12 minutes and an s
        ("9ms", 0.009),
        ("2m59.56s", 179.56),
        ("7.66s", 7.66),
        ("1h2m3s", 3723.0),
        ("1h", 3600.0),
        ("1m30s500ms", 90.5),
        ("0s", 0.0),
        (" 6m0s ", 360.0),
        ("1.5", 1.5),  # a bare number is seconds
        ("0", 0.0),
    ],
)
def test_parse_go_duration(value: str, seconds: float) -> None:
    assert parse_go_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "   ", "abc", "6x", "m", "s6", "1s2", "6m0sx", "1 s", "-1", "nan", "inf", "-1s", "1e400"],
)
def test_parse_go_duration_garbage(value: str) -> None:
    # Azure sends -1 when it has no value: that is no hint, not a negative wait.
    assert parse_go_duration(value) is None


@pytest.mark.parametrize(("value", "seconds"), [("42s", 42.0), ("1.5s", 1.5), (" 0s ", 0.0)])
def test_parse_protobuf_duration(value: str, seconds: float) -> None:
    assert parse_protobuf_duration(value) == seconds


@pytest.mark.parametrize("value", ["42", "1m", "s", "", "-1s"])
def test_parse_protobuf_duration_garbage(value: str) -> None:
    assert parse_protobuf_duration(value) is None


# ---------------------------------------------------------------- RFC 3339


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2025-06-01T12:00:30Z", 30.0),
        ("2025-06-01T12:01:00.500Z", 60.5),
        ("2025-06-01T14:00:30+02:00", 30.0),
        ("2025-06-01T12:00:30", 30.0),  # naive: taken as UTC
        ("2025-06-01T11:59:00Z", 0.0),  # already past: no wait
        (" 2025-06-01T13:00:00Z ", 3600.0),
    ],
)
def test_parse_rfc3339(value: str, seconds: float) -> None:
    assert parse_rfc3339(value, NOW) == pytest.approx(seconds)


def test_parse_rfc3339_relative_to_now_in_another_zone() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert parse_rfc3339("2025-06-01T12:00:10Z", now) == pytest.approx(10.0)


@pytest.mark.parametrize("value", ["", "soon", "1750000000", "2025-13-01T00:00:00Z"])
def test_parse_rfc3339_garbage(value: str) -> None:
    assert parse_rfc3339(value, NOW) is None


# ---------------------------------------------------------------- headers

ALL_HINTS = {
    "retry-after-ms": "1500",
    "retry-after": "20",
    "x-ratelimit-remaining-tokens": "0",
    "x-ratelimit-reset-tokens": "6m0s",
    "x-ratelimit-remaining-requests": "10",
    "x-ratelimit-reset-requests": "2s",
}


def test_precedence_retry_after_ms_first() -> None:
    assert retry_after_from_headers(ALL_HINTS, NOW) == 1.5


def test_precedence_retry_after_seconds_next() -> None:
    h = {k: v for k, v in ALL_HINTS.items() if k != "retry-after-ms"}
    assert retry_after_from_headers(h, NOW) == 20.0


def test_precedence_retry_after_http_date() -> None:
    h = {k: v for k, v in ALL_HINTS.items() if k != "retry-after-ms"}
    h["retry-after"] = "Sun, 01 Jun 2025 12:01:00 GMT"
    assert retry_after_from_headers(h, NOW) == 60.0


def test_precedence_exhausted_bucket_over_other_resets() -> None:
    h = {k: v for k, v in ALL_HINTS.items() if not k.startswith("retry-after")}
    assert retry_after_from_headers(h, NOW) == 360.0


def test_precedence_min_of_other_resets_last() -> None:
    h = {k: v for k, v in ALL_HINTS.items() if not k.startswith("retry-after")}
    h["x-ratelimit-remaining-tokens"] = "5"
    assert retry_after_from_headers(h, NOW) == 2.0


def test_reset_without_remaining_header_counts_as_other() -> None:
    assert (
        retry_after_from_headers(
            {"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-reset-requests": "1s"}, NOW
        )
        == 1.0
    )


def test_several_exhausted_buckets_wait_for_the_last() -> None:
    h = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "7.66s",
    }
    assert retry_after_from_headers(h, NOW) == pytest.approx(7.66)


def test_header_names_are_case_insensitive() -> None:
    assert retry_after_from_headers({"Retry-After-Ms": "250"}, NOW) == 0.25
    assert retry_after_from_headers({"RETRY-AFTER": "3"}, NOW) == 3.0
    h = {"X-RateLimit-Remaining-Tokens": "0", "X-RateLimit-Reset-Tokens": "1m0s"}
    assert retry_after_from_headers(h, NOW) == 60.0


def test_bad_retry_after_ms_falls_through_to_retry_after() -> None:
    assert retry_after_from_headers({"retry-after-ms": "soon", "retry-after": "4.5"}, NOW) == 4.5


def test_bad_retry_after_falls_through_to_resets() -> None:
    h = {"retry-after": "whenever", "x-ratelimit-reset-requests": "3s"}
    assert retry_after_from_headers(h, NOW) == 3.0


def test_negative_or_past_waits_are_zero() -> None:
    assert retry_after_from_headers({"retry-after": "-5"}, NOW) == 0.0
    assert retry_after_from_headers({"retry-after-ms": "-5"}, NOW) == 0.0
    assert retry_after_from_headers({"retry-after": "Sun, 01 Jun 2025 11:00:00 GMT"}, NOW) == 0.0


def test_azure_minus_one_reset_does_not_mask_a_real_one() -> None:
    h = {"x-ratelimit-reset-requests": "-1", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_from_headers(h, NOW) == 360.0


def test_anthropic_instants() -> None:
    h = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-06-01T12:00:45Z",
        "anthropic-ratelimit-input-tokens-remaining": "1000",
        "anthropic-ratelimit-input-tokens-reset": "2025-06-01T12:00:05Z",
    }
    assert retry_after_from_headers(h, NOW) == 45.0
    h["anthropic-ratelimit-requests-remaining"] = "3"
    assert retry_after_from_headers(h, NOW) == 5.0
    h["retry-after"] = "12"
    assert retry_after_from_headers(h, NOW) == 12.0


def test_no_hint() -> None:
    assert retry_after_from_headers({}, NOW) is None
    assert (
        retry_after_from_headers({"x-request-id": "req_1", "x-ratelimit-limit-requests": "60"}, NOW) is None
    )
    assert retry_after_from_headers({"x-ratelimit-reset-tokens": "garbage"}, NOW) is None


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Please retry in 42.87s.", 42.87),
        ("You have exceeded your weekly limit; try again in 51 hours.", 51 * 3600.0),
        ("Slow down: wait 2 minutes before sending more.", 120.0),
        ("Please wait 30 seconds.", 30.0),
        ("Rate limit reached. Please try again in 20ms.", 0.02),
        ("Try again in 1 hour", 3600.0),
        ("try again in 5 min", 300.0),
        ("Please try again in 6m0s. Visit https://platform.openai.com/account/rate-limits", 360.0),
        ("on tokens per day (TPD): Limit 90000, Used 89000. Please try again in 16m0.096s.", 960.096),
        ("RETRY IN 3 SEC", 3.0),
        ("TRY AGAIN IN 1M30S", 90.0),
    ],
)
def test_retry_after_from_text(text: str, seconds: float) -> None:
    assert retry_after_from_text(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "Try again later.", "Rate limit: 30000 tokens per min", "retry", "wait for it: 5 apples"],
)
def test_retry_after_from_text_none(text: str) -> None:
    assert retry_after_from_text(text) is None


# ---------------------------------------------------------------- classes


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, Failure.RATE_LIMITED),
        (401, Failure.AUTH),
        (403, Failure.AUTH),
        (402, Failure.QUOTA_EXHAUSTED),
        (404, Failure.NOT_FOUND),
        (503, Failure.OVERLOADED),
        (529, Failure.OVERLOADED),
        (408, Failure.TRANSIENT),
        (409, Failure.TRANSIENT),
        (500, Failure.TRANSIENT),
        (502, Failure.TRANSIENT),
        (504, Failure.TRANSIENT),
        (400, Failure.BAD_REQUEST),
        (413, Failure.BAD_REQUEST),
        (422, Failure.BAD_REQUEST),
    ],
)
def test_classify_status(status: int, kind: Failure) -> None:
    assert classify_status(status) is kind


def test_class_sets_follow_the_design() -> None:
    assert {Failure.AUTH, Failure.QUOTA_EXHAUSTED, Failure.UNREACHABLE} == PROVIDER_LEVEL
    assert Failure.RATE_LIMITED not in PROVIDER_LEVEL  # a 429 belongs to one model
    assert {Failure.BAD_REQUEST, Failure.CONTENT_FILTER} == CALLER_FAULT
    assert {Failure.TRANSIENT} == RETRYABLE
    assert Failure.CONTEXT_TOO_LONG in NO_PENALTY
    assert Failure.PREFILL_REJECTED in NO_PENALTY
    assert not NO_PENALTY & {Failure.RATE_LIMITED, Failure.TRANSIENT, Failure.AUTH}


def test_upstream_error_carries_its_fields() -> None:
    e = UpstreamError(Failure.RATE_LIMITED, "HTTP 429: slow", status=429, retry_after=3.0)
    assert (e.kind, e.message, e.status, e.retry_after, str(e)) == (
        Failure.RATE_LIMITED,
        "HTTP 429: slow",
        429,
        3.0,
        "HTTP 429: slow",
    )
    assert repr(e) == "UpstreamError('rate_limited', 'HTTP 429: slow', status=429)"
