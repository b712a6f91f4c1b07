"""Scripted faults and the queue that hands them to chat requests (no I/O)."""

from __future__ import annotations

from collections import deque
from typing import Literal, get_args

import msgspec

from .dialects.base import Dialect, Reply

FaultKind = Literal[
    "status",
    "reset_before_headers",
    "reset_after",
    "stall_before",
    "stall_after",
    "slow_first_token",
    "malformed_after",
    "inband_error_after",
    "no_terminator",
    "reject_prefill",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

# Faults that only make sense once a stream is under way; a non-streaming request gets a reset instead.
STREAM_ONLY_KINDS = frozenset(
    {
        "reset_after",
        "stall_after",
        "slow_first_token",
        "malformed_after",
        "inband_error_after",
        "no_terminator",
    }
)

PREFILL_REJECTED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)


class Fault(msgspec.Struct, kw_only=True):
    """One scripted misbehaviour, applied to the next `times` chat requests (-1: until cleared).

    kinds:
      status                HTTP `status` with `headers` and `body` (default: the dialect's error envelope,
                            with `message`, `code` and a retry hint of `seconds` when given)
      reset_before_headers  close the connection with a TCP RST before sending anything
      reset_after           stream `after_chunks` content chunks, then RST
      stall_before          send nothing for `seconds` (0: until the client goes away), then answer
      stall_after           headers and `after_chunks` chunks, silence for `seconds` (0: forever), then the rest
      slow_first_token      headers at once, `seconds` before the first content chunk (keep-alives meanwhile)
      malformed_after       `after_chunks` chunks, then an event that does not parse (a bad CRC on bedrock),
                            then close
      inband_error_after    `after_chunks` chunks, then the dialect's in-band error event (`code` picks its
                            type), then end
      no_terminator         `after_chunks` chunks, then a clean end with no finish signal
      reject_prefill        400 "does not support assistant message prefill" when the request ends
                            with an assistant message; otherwise a normal answer

    `code` is the error type in the dialect's own terms, e.g. "insufficient_quota" (openai),
    "billing_error" (anthropic), "ModelNotReadyException" or "modelStreamErrorException"
    (bedrock), "FAILED_PRECONDITION" (gemini), "user_weekly_rate_limited" (copilot).
    A gemini 429 whose `message` mentions "PerDay" reports a per-day quota.
    """

    kind: FaultKind
    status: int = 0
    headers: dict[str, str] = {}
    body: str | None = None
    after_chunks: int = 0
    seconds: float = 0.0
    message: str = ""
    times: int = 1
    code: str = ""

    def __post_init__(self) -> None:
        # msgspec runs this on decode too, turning the ValueError into a ValidationError.
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.kind == "status" and not 100 <= self.status <= 599:
            raise ValueError("a status fault needs `status` between 100 and 599")
        if self.times == 0 or self.times < -1:
            raise ValueError("`times` must be positive, or -1 for every request until cleared")
        if self.after_chunks < 0 or self.seconds < 0:
            raise ValueError("`after_chunks` and `seconds` must not be negative")


class FaultQueue:
    """Faults in the order they were pushed; each serves `times` requests before the next one."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Fault, int]] = deque()  # (fault, requests it still applies to)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, fault: Fault) -> None:
        self._queue.append((fault, fault.times))

    def clear(self) -> None:
        self._queue.clear()

    def take(self) -> Fault | None:
        """The fault for the next chat request, if any."""
        if not self._queue:
            return None
        fault, left = self._queue[0]
        if left == 1:
            self._queue.popleft()
        elif left > 1:
            self._queue[0] = (fault, left - 1)
        return fault  # left == -1: stays until cleared


def status_reply(dialect: Dialect, fault: Fault, request_id: str) -> Reply:
    """A `status` fault's answer: its own body, else the dialect's error for its status; its headers win."""
    if fault.body is not None:
        base = Reply(fault.status, [("content-type", "application/json")], fault.body.encode())
    else:
        base = dialect.error(
            fault.status,
            fault.message or None,
            code=fault.code or None,
            wait=fault.seconds or None,
            request_id=request_id,
        )
    overridden = {k.lower() for k in fault.headers}
    headers = [(k, v) for k, v in base.headers if k.lower() not in overridden]
    return Reply(base.status, [*headers, *fault.headers.items()], base.body)
