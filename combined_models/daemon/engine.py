"""The failover engine: every decision of one request's failover, without I/O or a clock. Pure.

One `Failover` per request. The router asks `next_step(now, look)` and gets one of:

- `Try`: send this request to this member (taking its admission first when `admit`),
  after sending `announce` to the caller; relay what it streams through `relay`;
- `Wait`: nothing may go before `until` (a cooldown within the configured waits, a backoff);
- `Stop`: send these final events (an error) and end.

After a `Try` the router reports its outcome: `succeeded(finished)` gives the final
events, `failed(error, now)` says what follows (`Retry` here, `Next` member, or `Stop`);
the next `next_step` acts on it. What the engine knows of a member comes from a
`MemberView` taken at `now`, so every decision can be tested with a table of views.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..capabilities import Capabilities
from ..chat import (
    Attempt,
    ChatRequest,
    DecodedItem,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FailoverEvent,
    Finished,
    ProviderEvent,
    StreamEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from ..config import FailoverConfig
from ..protocol import Member
from .continuation import EchoFilter, continuation_request, unsupported
from .errors import CALLER_FAULT, RETRYABLE, Failure, UpstreamError
from .health import Admission, State

Key = tuple[str, str]  # (provider, model)
# Failures that say the member cannot serve this request (not that it is unwell): when every
# attempt is one of these, the request itself is what no member can take.
SKIPPED = frozenset({Failure.UNSUPPORTED, Failure.CONTEXT_TOO_LONG})
# A member cooling from these may come back within the same request (when all others cool too).
COMES_BACK = frozenset({Failure.RATE_LIMITED, Failure.OVERLOADED})


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as its provider actor sees it at `now`."""

    admission: Admission  # what admitting a request now would say (peeked: no probe taken)
    capabilities: Capabilities
    prefill: bool = True  # a prefill has not been rejected here (the documented capability aside)
    disabled: str | None = None  # why its provider is off, when it is


Look = Callable[[Member], MemberView | None]  # None: the member's provider is not configured


@dataclass
class Output:
    """What the caller has received so far."""

    text: str = ""
    thinking: bool = False
    tool_calls: int = 0
    by: Member | None = None  # the member that sent the latest text

    @property
    def any(self) -> bool:
        return bool(self.text or self.thinking or self.tool_calls)


class Relay:
    """Turns one attempt's decoded items into events for the caller. Pure.

    Drops any echo of the text already sent (a continuation often repeats it) and
    thinking when the caller has seen thinking already; announces the provider once.
    """

    def __init__(self, out: Output, member: Member, *, prefill: bool) -> None:
        self.out = out
        self.member = member
        self.echo = EchoFilter(out.text, full_only=prefill) if out.text else None
        self.suppress_thinking = out.thinking
        self.announced = False

    def _announce(self, events: list[StreamEvent]) -> None:
        if not self.announced:
            self.announced = True
            events.append(ProviderEvent(provider=self.member.provider, model=self.member.model))

    def _text(self, text: str, events: list[StreamEvent]) -> None:
        if text:
            self.out.text += text
            self.out.by = self.member
            events.append(TextEvent(text))

    def feed(self, items: list[DecodedItem]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        self._announce(events)
        for item in items:
            if isinstance(item, TextEvent):
                self._text(self.echo.feed(item.text) if self.echo else item.text, events)
            elif isinstance(item, ThinkingEvent):
                if not self.suppress_thinking:
                    self.out.thinking = True
                    events.append(item)
            elif isinstance(item, ToolCallEvent):
                self.out.tool_calls += 1
                events.append(item)
        return events

    def finish(self) -> list[StreamEvent]:
        """The attempt completed: what is still to send (what the echo filter held)."""
        events: list[StreamEvent] = []
        self._announce(events)
        if self.echo is not None:
            self._text(self.echo.flush(), events)
        return events


# ---------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Try:
    member: Member
    request: ChatRequest  # the caller's, or the continuation of what it has received
    prefill: bool  # the partial answer goes as an assistant prefill
    admit: bool  # picked afresh: take its admission (a probe, maybe) before sending
    announce: list[StreamEvent]  # to send first (a failover notice)
    relay: Relay


@dataclass(frozen=True, slots=True)
class Wait:
    until: float


@dataclass(frozen=True, slots=True)
class Stop:
    events: list[StreamEvent]


Step = Try | Wait | Stop


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the same member again at `at`; `no_prefill`: it rejected a prefill (its actor should learn)."""

    at: float
    no_prefill: bool = False


@dataclass(frozen=True, slots=True)
class Next:
    """Go on to the next member that can take the request."""


@dataclass(frozen=True, slots=True)
class Done:
    events: list[StreamEvent]  # the end of the answer, with `done`
    saved_failover: bool  # the member finished what another member could not


Outcome = Retry | Next | Stop


def jittered() -> float:
    return random.uniform(0.5, 1.0)


@dataclass
class Failover:
    """The failover of one request through `chain`."""

    chain: list[Member]
    request: ChatRequest
    policy: FailoverConfig
    jitter: Callable[[], float] = jittered  # backoff factor in [0.5, 1]
    # The member that served this conversation's last turn: tried first while it is healthy.
    pinned: Key | None = None
    out: Output = field(default_factory=Output)
    attempts: list[Attempt] = field(default_factory=list)
    # Members this request may not go back to (failed for good, silent, cut mid-answer, unable).
    excluded: set[Key] = field(default_factory=set)
    sent: dict[Key, int] = field(default_factory=dict)  # attempts per member
    last_failure: tuple[str, UpstreamError] | None = None
    no_prefill: set[Key] = field(default_factory=set)  # members that rejected a prefill in this request
    _tried: Try | None = None  # the attempt in progress or just reported
    _retry_at: float | None = None  # the same member goes again at this time
    _stop: Stop | None = None

    # ------------------------------------------------------------ what next

    def next_step(self, now: float, look: Look) -> Step:
        if self._stop is not None:
            return self._stop
        if self._retry_at is not None:
            assert self._tried is not None
            if now < self._retry_at:
                return Wait(self._retry_at)
            self._retry_at = None
            view = look(self._tried.member)
            if view is not None:
                return self._try(self._tried.member, view, admit=False, announce=[])
        return self._pick(now, look)

    def _pick(self, now: float, look: Look) -> Step:
        """The first member that may take the request now, or how long to wait, or the end."""
        if self.pinned is not None and not self.attempts:
            step = self._stay(now, look, self.pinned)
            if step is not None:
                return step
        earliest: float | None = None
        for m in self.chain:
            if (m.provider, m.model) in self.excluded:
                continue
            view = look(m)
            if view is None or view.disabled is not None:
                continue
            cannot = unsupported(self.request, view.capabilities)
            if cannot is not None:  # before admission: a probe is never taken for a request it cannot serve
                self._skip(m, *cannot)
                continue
            adm = view.admission
            if adm.decision != "wait":
                announce: list[StreamEvent] = []
                if self.last_failure is not None:
                    prev, err = self.last_failure
                    announce.append(
                        FailoverEvent(
                            from_=prev,
                            to=m.provider,
                            reason=err.kind.value,
                            after_output=self.out.any,
                            message=err.message,
                        )
                    )
                return self._try(m, view, admit=True, announce=announce)
            if adm.until - now <= self.policy.retry_wait_max and adm.state is State.COOLDOWN:
                return Wait(adm.until)  # the user prefers waiting out a short rate limit to failing over
            earliest = adm.until if earliest is None else min(earliest, adm.until)
        if earliest is not None and earliest - now <= self.policy.all_cooling_wait:
            return Wait(earliest)
        return self._end(self._exhausted(now, look))

    def _stay(self, now: float, look: Look, pinned: Key) -> Step | None:
        """The conversation's own member, when it is in the chain and healthy (not cooling, not
        a probe: a recovering member is for new conversations to try) and can serve this turn."""
        for m in self.chain:
            if (m.provider, m.model) == pinned:
                view = look(m)
                healthy = view is not None and view.disabled is None and view.admission.decision == "send"
                if healthy and view is not None and unsupported(self.request, view.capabilities) is None:
                    return self._try(m, view, admit=True, announce=[])
                return None
        return None

    def _skip(self, m: Member, kind: Failure, why: str) -> None:
        self.attempts.append(Attempt(provider=m.provider, model=m.model, error=why, kind=kind.value))
        self.last_failure = (m.provider, UpstreamError(kind, why))
        self.excluded.add((m.provider, m.model))

    def _try(self, m: Member, view: MemberView, *, admit: bool, announce: list[StreamEvent]) -> Step:
        key = (m.provider, m.model)
        prefill = view.capabilities.prefill and view.prefill and key not in self.no_prefill
        request = continuation_request(self.request, self.out.text, prefill=prefill)
        if request is None:
            return self._end(self._budget_spent())
        self.sent[key] = self.sent.get(key, 0) + 1
        self._tried = Try(
            member=m,
            request=request,
            prefill=prefill,
            admit=admit,
            announce=announce,
            relay=Relay(self.out, m, prefill=prefill),
        )
        return self._tried

    def _end(self, events: list[StreamEvent]) -> Stop:
        self._stop = Stop(events)
        return self._stop

    # ------------------------------------------------------------ outcomes

    def succeeded(self, finished: Finished) -> Done:
        tried = self._tried
        assert tried is not None, "no attempt to report"
        done = DoneEvent(
            provider=tried.member.provider,
            model=finished.model or tried.member.model,
            finish_reason=finished.finish_reason,
            usage=finished.usage,
        )
        self._end([])
        return Done([*tried.relay.finish(), done], saved_failover=bool(self.attempts))

    def failed(self, e: UpstreamError, now: float) -> Outcome:
        tried = self._tried
        assert tried is not None, "no attempt to report"
        m = tried.member
        key = (m.provider, m.model)
        if e.kind is Failure.PREFILL_REJECTED and tried.prefill:
            # Learned once, and never the final error: at once, here, without a prefill.
            self.no_prefill.add(key)
            self._retry_at = now
            return Retry(now, no_prefill=True)
        self.attempts.append(Attempt(provider=m.provider, model=m.model, error=e.message, kind=e.kind.value))
        self.last_failure = (m.provider, e)
        if self.out.tool_calls:
            # Whole tool calls reached the caller. A provider cannot continue after a tool call
            # without its result, and asking again could repeat the call (a command run twice), so
            # the turn ends with the calls it has: the caller runs them, the model goes on next turn.
            self.excluded.add(key)
            ending = DoneEvent(provider=m.provider, model=m.model, finish_reason="tool_calls")
            return self._end([*tried.relay.finish(), ending])
        spent = self.sent[key] >= self.policy.max_attempts
        # Before output a transient failure is retried here; after output the answer
        # continues on the next member at once (the caller is waiting mid-sentence).
        if e.kind in RETRYABLE and not spent and not self.out.any:
            backoff = self.policy.retry_backoff * 2 ** (self.sent[key] - 1) * self.jitter()
            self._retry_at = now + backoff
            return Retry(self._retry_at)
        if spent or self.out.any or e.kind not in COMES_BACK:
            self.excluded.add(key)
        if e.kind in CALLER_FAULT:
            kind = ErrorKind.CONTENT_FILTER if e.kind is Failure.CONTENT_FILTER else ErrorKind.BAD_REQUEST
            return self._end(
                [ErrorEvent(kind=kind, message=f"{m.provider}: {e.message}", attempts=list(self.attempts))]
            )
        return Next()

    # ------------------------------------------------------------ endings

    def _budget_spent(self) -> list[StreamEvent]:
        """The text received already uses up the caller's `max_tokens`: it ends there, as a length stop."""
        by = self.out.by or (self._tried.member if self._tried else self.chain[0])
        return [DoneEvent(provider=by.provider, model=by.model, finish_reason="length")]

    def _exhausted(self, now: float, look: Look) -> list[StreamEvent]:
        skipped = {k.value for k in SKIPPED}
        if self.out.any:
            kind, what = ErrorKind.TRUNCATED, "the answer was cut and no provider could continue it"
        elif self.attempts and all(a.kind in skipped for a in self.attempts):
            kind, what = ErrorKind.BAD_REQUEST, "no member can serve this request"
        elif self.attempts:
            kind, what = ErrorKind.ALL_PROVIDERS_FAILED, "every provider failed"
        else:
            kind, what = ErrorKind.ALL_PROVIDERS_COOLING, "every provider is unavailable"
        attempts = list(self.attempts)
        retry_after: float | None = None
        for m in self.chain:
            view = look(m)
            if (m.provider, m.model) in self.excluded or view is None:
                continue
            adm = view.admission
            if view.disabled is not None:
                note = f"disabled: {view.disabled}"
            else:
                wait = max(0.0, adm.until - now)
                retry_after = wait if retry_after is None else min(retry_after, wait)
                note = f"{adm.state.value}, back in {wait:.1f}s"
            attempts.append(Attempt(provider=m.provider, model=m.model, error=note, kind=adm.state.value))
        detail = "; ".join(f"{a.provider}: {a.error}" for a in attempts) or "no members"
        return [
            ErrorEvent(
                kind=kind,
                message=f"{what} ({detail})",
                attempts=attempts,
                retry_after_s=None if retry_after is None else round(retry_after, 3),
            )
        ]
