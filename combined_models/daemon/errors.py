"""What can go wrong upstream, classified into the failover classes of the design.

Pure: dialects call `UpstreamError(...)` with a class they decided from the body
and the status; the retry-hint parsers turn the providers' many clocks into
seconds from now.
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime


class Failure(enum.StrEnum):
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    OVERLOADED = "overloaded"
    TRANSIENT = "transient"
    UNREACHABLE = "unreachable"
    SILENT = "silent"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    CONTEXT_TOO_LONG = "context_too_long"
    BAD_REQUEST = "bad_request"
    CONTENT_FILTER = "content_filter"
    PREFILL_REJECTED = "prefill_rejected"
    UNSUPPORTED = "unsupported"  # the request uses something this dialect cannot express
    BUSY = "busy"  # every one of the provider's concurrency slots stayed taken for `slot_wait`


# Classes that belong to the account or the host, not to one model.
PROVIDER_LEVEL = frozenset({Failure.QUOTA_EXHAUSTED, Failure.UNREACHABLE, Failure.AUTH})
# Classes that are the caller's fault: returned as they are, never failed over.
CALLER_FAULT = frozenset({Failure.BAD_REQUEST, Failure.CONTENT_FILTER})
# Classes retried on the same provider before failing over.
RETRYABLE = frozenset({Failure.TRANSIENT})
# Classes that say nothing about the provider's health.
NO_PENALTY = frozenset(
    {
        Failure.CONTEXT_TOO_LONG,
        Failure.BAD_REQUEST,
        Failure.CONTENT_FILTER,
        Failure.PREFILL_REJECTED,
        Failure.UNSUPPORTED,
        Failure.BUSY,
    }
)


class UpstreamError(Exception):
    """A provider failed one attempt. `retry_after` is seconds from now, when the provider said."""

    def __init__(
        self,
        kind: Failure,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"UpstreamError({self.kind.value!r}, {self.message!r}, status={self.status})"


def classify_status(status: int) -> Failure:
    """The class an HTTP status implies when the body says nothing more specific."""
    if status == 429:
        return Failure.RATE_LIMITED
    if status in (401, 403):
        return Failure.AUTH
    if status == 402:
        return Failure.QUOTA_EXHAUSTED
    if status == 404:
        return Failure.NOT_FOUND
    if status in (503, 529):
        return Failure.OVERLOADED
    if status in (408, 409) or status >= 500:
        return Failure.TRANSIENT
    return Failure.BAD_REQUEST


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_go_duration(value: str) -> float | None:
    """`6m0s`, `1.5s`, `12ms`, `2m59.56s` -> seconds (OpenAI's x-ratelimit-reset-*)."""
    value = value.strip()
    if not value:
        return None
    total, pos = 0.0, 0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            return None
        n, unit = float(m.group(1)), m.group(2)
        total += n * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[unit]
        pos = m.end()
    if pos != len(value):
        try:  # a bare number: seconds
            secs = float(value)
        except ValueError:
            return None
        # Azure sends -1 for "no value"; nan/inf are no durations either.
        return secs if math.isfinite(secs) and secs >= 0 else None
    return total


def parse_protobuf_duration(value: str) -> float | None:
    """Gemini's RetryInfo `retryDelay`: `"42s"`, `"1.5s"`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", value)
    return float(m.group(1)) if m else None


def parse_rfc3339(value: str, now: datetime) -> float | None:
    """Anthropic's `anthropic-ratelimit-*-reset` instants -> seconds from `now`."""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_after_from_headers(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds until the provider says it will accept requests again, from any header it uses.

    Order: the explicit wait (`retry-after-ms`, `retry-after` as seconds or an
    HTTP date), then the reset of an exhausted bucket (OpenAI durations,
    Anthropic instants). A bucket's reset is when it is *full* again, so it
    is used only for a bucket whose remaining count is zero, or as a last resort.
    """
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in h:
        raw = h["retry-after"].strip()
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
                return max(0.0, (when - now).total_seconds())
            except (TypeError, ValueError):
                pass
    exhausted: list[float] = []
    others: list[float] = []
    for name, value in h.items():
        if name.startswith("x-ratelimit-reset-"):
            secs = parse_go_duration(value)
            bucket = "x-ratelimit-remaining-" + name.removeprefix("x-ratelimit-reset-")
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            secs = parse_rfc3339(value, now)
            bucket = name.removesuffix("-reset") + "-remaining"
        else:
            continue
        if secs is None:
            continue
        (exhausted if h.get(bucket, "").strip() == "0" else others).append(secs)
    if exhausted:
        return max(exhausted)
    if others:
        return min(others)
    return None


_WAIT_IN_TEXT = re.compile(
    r"(?:retry|try again|wait)\D{0,20}?(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec(?:ond)?s?|m|min(?:ute)?s?|h|hours?)\b",
    re.IGNORECASE,
)

_GO_WAIT_IN_TEXT = re.compile(
    r"(?:retry|try again|wait)\D{0,20}?\b((?:\d+(?:\.\d+)?(?:ms|h|m|s)){2,})\b", re.IGNORECASE
)


def retry_after_from_text(text: str) -> float | None:
    """A wait named in an error message ("Please retry in 42.87s", "try again in 51 hours")."""
    m = _GO_WAIT_IN_TEXT.search(text)
    if m:  # OpenAI's own messages: "Please try again in 6m0s", "in 16m0.096s"
        return parse_go_duration(m.group(1).lower())
    m = _WAIT_IN_TEXT.search(text)
    if not m:
        return None
    n, unit = float(m.group(1)), m.group(2).lower()
    if unit.startswith("ms") or unit.startswith("milli"):
        return n / 1000
    if unit.startswith("h"):
        return n * 3600
    if unit == "m" or unit.startswith("min"):
        return n * 60
    return n
