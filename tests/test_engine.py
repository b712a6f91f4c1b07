"""The failover engine's decisions, as tables of situations: no sockets, no clocks, no actors.

Each member's health is an `Admission` (what the provider actor's book would say at
`now`); a test drives the engine as the router does and checks each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from combined_models.capabilities import Capabilities
from combined_models.chat import (
    ChatRequest,
    DoneEvent,
    ErrorEvent,
    FailoverEvent,
    Finished,
    ImagePart,
    Message,
    ProviderEvent,
    TextEvent,
    ThinkingEvent,
    Tool,
    ToolCallEvent,
)
from combined_models.config import FailoverConfig
from combined_models.daemon.continuation import CONTINUE_INSTRUCTION
from combined_models.daemon.engine import (
    Done,
    Failover,
    MemberView,
    Next,
    Retry,
    Stop,
    Try,
    Wait,
)
from combined_models.daemon.errors import Failure, UpstreamError
from combined_models.daemon.health import Admission, State
from combined_models.protocol import Member

NOW = 1000.0
POLICY = FailoverConfig(max_attempts=3, retry_backoff=0.25, all_cooling_wait=3.0, retry_wait_max=0.0)
CHAIN = [Member(provider="a", model="m"), Member(provider="b", model="m"), Member(provider="c", model="m")]
REQUEST = ChatRequest(messages=[Message("user", "hello")], max_tokens=1000)
READY = Admission("send")
PROBE = Admission("probe")


def cooling(seconds: float, state: State = State.COOLDOWN) -> Admission:
    return Admission("wait", NOW + seconds, state)


@dataclass
class Members:
    """The views a router would build; a test changes them between steps."""

    views: dict[str, MemberView] = field(default_factory=dict)

    def __call__(self, m: Member) -> MemberView | None:
        return self.views.get(m.provider)


def members(**admissions: Admission | MemberView) -> Members:
    views = {
        p: a if isinstance(a, MemberView) else MemberView(admission=a, capabilities=Capabilities())
        for p, a in admissions.items()
    }
    return Members(views)


def engine(request: ChatRequest = REQUEST, policy: FailoverConfig = POLICY) -> Failover:
    return Failover(list(CHAIN), request, policy, jitter=lambda: 1.0)


def tried(step: object, provider: str) -> Try:
    assert isinstance(step, Try), step
    assert step.member.provider == provider, step.member
    return step


def error(step: object) -> ErrorEvent:
    assert isinstance(step, Stop), step
    (event,) = step.events
    assert isinstance(event, ErrorEvent)
    return event


def fail(kind: Failure, message: str = "boom", retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(kind, message, retry_after=retry_after)


# ---------------------------------------------------------------- picking a member


def test_the_first_ready_member_in_priority_order_is_tried_and_admitted() -> None:
    step = tried(engine().next_step(NOW, members(a=READY, b=READY, c=READY)), "a")
    assert step.admit and step.announce == [] and step.request is REQUEST and not step.prefill


def test_a_cooling_member_is_passed_over_for_the_next() -> None:
    tried(engine().next_step(NOW, members(a=cooling(30), b=READY, c=READY)), "b")


def test_a_probe_is_a_try_like_any_other() -> None:
    assert tried(engine().next_step(NOW, members(a=PROBE, b=READY)), "a").admit


def test_members_of_unconfigured_or_disabled_providers_are_skipped() -> None:
    off = MemberView(
        admission=Admission("wait", 0.0, State.DISABLED), capabilities=Capabilities(), disabled="no key"
    )
    tried(engine().next_step(NOW, members(b=off, c=READY)), "c")


@pytest.mark.parametrize(
    ("request_", "caps", "kind"),
    [
        (
            ChatRequest(messages=[Message("user", "x")], tools=[Tool(name="t")]),
            Capabilities(tools=False),
            "unsupported",
        ),
        (
            ChatRequest(messages=[Message("user", [ImagePart(media_type="image/png", data="AA==")])]),
            Capabilities(images=False),
            "unsupported",
        ),
        (
            ChatRequest(messages=[Message("user", "x" * 4000)]),
            Capabilities(context_window=100),
            "context_too_long",
        ),
    ],
)
def test_a_member_that_cannot_serve_the_request_is_skipped_before_admission(
    request_: ChatRequest, caps: Capabilities, kind: str
) -> None:
    """The probing bug: a member admitted as a probe, then dropped, held its model in "probing" for 30 s.

    The engine checks capabilities before it offers a member, so the router never takes
    the probe of one that cannot serve the request.
    """
    unable = MemberView(admission=PROBE, capabilities=caps)
    run = Failover(list(CHAIN), request_, POLICY)
    step = tried(run.next_step(NOW, members(a=unable, b=READY)), "b")
    assert [(a.provider, a.kind) for a in run.attempts] == [("a", kind)]
    # The notice names why the first member was passed over; no notice ever announced a try of it.
    assert [(e.from_, e.to, e.reason) for e in step.announce if isinstance(e, FailoverEvent)] == [
        ("a", "b", kind)
    ]


def test_when_no_member_can_serve_the_request_it_is_a_bad_request_at_once() -> None:
    unable = MemberView(admission=cooling(30), capabilities=Capabilities(tools=False))
    request = ChatRequest(messages=[Message("user", "x")], tools=[Tool(name="t")])
    run = Failover(list(CHAIN), request, POLICY)
    err = error(run.next_step(NOW, members(a=unable, b=unable, c=unable)))
    assert err.kind == "bad_request" and "no member can serve this request" in err.message


# ---------------------------------------------------------------- the cooling wait


@pytest.mark.parametrize(
    ("admissions", "expected"),
    [
        # every member cooling, the earliest back within all_cooling_wait: wait for it
        ({"a": cooling(2.5), "b": cooling(10), "c": cooling(60)}, Wait(NOW + 2.5)),
        ({"a": cooling(10), "b": cooling(1), "c": cooling(60)}, Wait(NOW + 1)),
        # a probe in flight elsewhere counts like a cooldown ending when the probe times out
        ({"a": cooling(2, State.PROBING), "b": cooling(30), "c": cooling(30)}, Wait(NOW + 2)),
    ],
)
def test_every_member_cooling_briefly_waits_for_the_earliest(
    admissions: dict[str, Admission], expected: Wait
) -> None:
    assert engine().next_step(NOW, members(**admissions)) == expected


def test_every_member_cooling_longer_fails_at_once_naming_each_state() -> None:
    look = members(a=cooling(120), b=cooling(45, State.DOWN), c=cooling(3.5))
    err = error(engine().next_step(NOW, look))
    assert err.kind == "all_providers_cooling"
    assert [(a.provider, a.kind) for a in err.attempts] == [
        ("a", "cooldown"),
        ("b", "down"),
        ("c", "cooldown"),
    ]
    assert "back in 120.0s" in err.attempts[0].error
    assert err.retry_after_s == 3.5


def test_a_short_rate_limit_is_waited_out_when_the_user_prefers_it() -> None:
    run = engine(policy=FailoverConfig(retry_wait_max=5.0))
    assert run.next_step(NOW, members(a=cooling(4), b=READY)) == Wait(NOW + 4)
    # not a DOWN provider, and not beyond the bound
    tried(
        engine(policy=FailoverConfig(retry_wait_max=5.0)).next_step(NOW, members(a=cooling(6), b=READY)), "b"
    )
    down = cooling(4, State.DOWN)
    tried(engine(policy=FailoverConfig(retry_wait_max=5.0)).next_step(NOW, members(a=down, b=READY)), "b")


# ---------------------------------------------------------------- the failover table, before output


@pytest.mark.parametrize(
    ("kind", "comes_back"),
    [
        (Failure.RATE_LIMITED, True),  # 429: fails over at once; may come back within this request
        (Failure.OVERLOADED, True),  # 503, 529
        (Failure.QUOTA_EXHAUSTED, False),
        (Failure.UNREACHABLE, False),  # connection refused
        (Failure.SILENT, False),  # never retried in the same request
        (Failure.AUTH, False),  # 401/403
        (Failure.NOT_FOUND, False),
        (Failure.CONTEXT_TOO_LONG, False),  # the next member's window may be larger
        (Failure.UNSUPPORTED, False),
    ],
)
def test_a_failure_before_output_fails_over_at_once(kind: Failure, comes_back: bool) -> None:
    run = engine()
    look = members(a=READY, b=READY)
    tried(run.next_step(NOW, look), "a")
    assert run.failed(fail(kind, "it broke"), NOW) == Next()
    look.views["a"] = MemberView(admission=cooling(30), capabilities=Capabilities())  # as its actor now says
    step = tried(run.next_step(NOW, look), "b")
    assert step.admit
    (notice,) = step.announce
    assert notice == FailoverEvent(
        from_="a", to="b", reason=kind.value, after_output=False, message="it broke"
    )
    assert (("a", "m") in run.excluded) is not comes_back


def test_a_member_that_may_come_back_is_tried_again_when_the_others_fail_too() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    tried(run.next_step(NOW, look), "a")
    run.failed(fail(Failure.RATE_LIMITED, retry_after=2.0), NOW)
    look.views["a"] = MemberView(admission=cooling(2), capabilities=Capabilities())
    tried(run.next_step(NOW, look), "b")
    run.failed(fail(Failure.SILENT), NOW)
    assert run.next_step(NOW, look) == Wait(NOW + 2)  # within all_cooling_wait
    look.views["a"] = MemberView(admission=PROBE, capabilities=Capabilities())
    step = tried(run.next_step(NOW + 2, look), "a")
    assert step.admit and step.announce[0] == FailoverEvent(
        from_="b", to="a", reason="silent", after_output=False, message="boom"
    )


def test_a_transient_failure_is_retried_on_the_same_member_with_backoff_then_fails_over() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    first = tried(run.next_step(NOW, look), "a")
    assert first.admit
    assert run.failed(fail(Failure.TRANSIENT), NOW) == Retry(NOW + 0.25)
    assert run.next_step(NOW, look) == Wait(NOW + 0.25)
    again = tried(run.next_step(NOW + 0.25, look), "a")
    assert not again.admit and again.announce == []  # the same member's turn goes on: no new admission
    assert run.failed(fail(Failure.TRANSIENT), NOW + 1) == Retry(NOW + 1 + 0.5)  # doubling
    tried(run.next_step(NOW + 1.5, look), "a")
    assert run.failed(fail(Failure.TRANSIENT), NOW + 2) == Next()  # max_attempts spent
    assert ("a", "m") in run.excluded
    tried(run.next_step(NOW + 2, look), "b")
    assert [a.kind for a in run.attempts] == ["transient"] * 3


def test_backoff_is_jittered_into_its_upper_half() -> None:
    run = Failover(list(CHAIN), REQUEST, POLICY, jitter=lambda: 0.5)
    tried(run.next_step(NOW, members(a=READY)), "a")
    assert run.failed(fail(Failure.TRANSIENT), NOW) == Retry(NOW + 0.125)


@pytest.mark.parametrize(
    ("kind", "error_kind"), [(Failure.BAD_REQUEST, "bad_request"), (Failure.CONTENT_FILTER, "content_filter")]
)
def test_caller_errors_are_returned_as_they_are_and_not_retried_elsewhere(
    kind: Failure, error_kind: str
) -> None:
    run = engine()
    look = members(a=READY, b=READY)
    tried(run.next_step(NOW, look), "a")
    outcome = run.failed(fail(kind, "messages: field required"), NOW)
    err = error(outcome)
    assert err.kind == error_kind and err.message == "a: messages: field required"
    assert run.next_step(NOW, look) == outcome  # the end stays the end


def test_every_member_failing_ends_with_each_attempt_named() -> None:
    run = engine()
    look = members(a=READY, b=READY, c=READY)
    for p, kind in (("a", Failure.AUTH), ("b", Failure.UNREACHABLE), ("c", Failure.NOT_FOUND)):
        tried(run.next_step(NOW, look), p)
        run.failed(fail(kind, f"{p} broke"), NOW)
    err = error(run.next_step(NOW, look))
    assert err.kind == "all_providers_failed"
    assert [(a.provider, a.kind) for a in err.attempts] == [
        ("a", "auth"),
        ("b", "unreachable"),
        ("c", "not_found"),
    ]
    assert err.retry_after_s is None


# ---------------------------------------------------------------- after output: continuation


def serve_some(run: Failover, provider: str, look: Members, text: str) -> Try:
    step = tried(run.next_step(NOW, look), provider)
    events = step.relay.feed([TextEvent(text)])
    assert events == [ProviderEvent(provider=provider, model="m"), TextEvent(text)]
    return step


def test_a_cut_after_text_continues_on_the_next_member_with_an_instruction() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    serve_some(run, "a", look, "The answer is ")
    assert run.failed(fail(Failure.TRANSIENT, "reset mid-stream"), NOW) == Next()  # not retried here
    assert ("a", "m") in run.excluded
    step = tried(run.next_step(NOW, look), "b")
    assert step.announce == [
        FailoverEvent(from_="a", to="b", reason="transient", after_output=True, message="reset mid-stream")
    ]
    assert not step.prefill
    *_, partial, instruction = step.request.messages
    assert (partial.role, partial.content) == ("assistant", "The answer is ")
    assert (instruction.role, instruction.content) == ("user", CONTINUE_INSTRUCTION)
    assert step.request.max_tokens == 1000 - 4  # lowered by what was sent
    # the continuation repeats the tail: only the new text reaches the caller
    assert step.relay.feed([TextEvent("answer is 42.")]) == [
        ProviderEvent(provider="b", model="m"),
        TextEvent("42."),
    ]
    done = run.succeeded(Finished(finish_reason="stop"))
    assert done == Done([DoneEvent(provider="b", model="m", finish_reason="stop")], saved_failover=True)


def test_a_cut_continues_as_a_prefill_where_the_member_takes_one() -> None:
    run = engine()
    prefilling = MemberView(admission=READY, capabilities=Capabilities(prefill=True))
    look = members(a=READY, b=prefilling)
    serve_some(run, "a", look, "The answer is")
    run.failed(fail(Failure.SILENT), NOW)
    step = tried(run.next_step(NOW, look), "b")
    assert step.prefill
    assert step.request.messages[-1] == Message("assistant", "The answer is")
    # after a prefill the model continues exactly: a short overlap is real text
    assert step.relay.feed([TextEvent(" is it")])[1:] == [TextEvent(" is it")]


def test_a_rejected_prefill_is_retried_at_once_without_it_and_never_the_final_error() -> None:
    run = engine()
    prefilling = MemberView(admission=READY, capabilities=Capabilities(prefill=True))
    look = members(a=READY, b=prefilling)
    serve_some(run, "a", look, "Partial")
    run.failed(fail(Failure.TRANSIENT), NOW)
    assert tried(run.next_step(NOW, look), "b").prefill
    attempts = list(run.attempts)
    assert run.failed(fail(Failure.PREFILL_REJECTED, "final assistant content"), NOW) == Retry(
        NOW, no_prefill=True
    )
    assert run.attempts == attempts  # not an attempt the caller hears about
    step = tried(run.next_step(NOW, look), "b")
    assert not step.admit and not step.prefill
    assert step.request.messages[-1].content == CONTINUE_INSTRUCTION


def test_a_prefill_rejected_earlier_is_not_sent_again() -> None:
    run = engine()
    learned = MemberView(admission=READY, capabilities=Capabilities(prefill=True), prefill=False)
    look = members(a=READY, b=learned)
    serve_some(run, "a", look, "Partial")
    run.failed(fail(Failure.TRANSIENT), NOW)
    assert not tried(run.next_step(NOW, look), "b").prefill


def test_a_prefill_rejected_without_a_prefill_is_an_ordinary_failure() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    tried(run.next_step(NOW, look), "a")
    assert run.failed(fail(Failure.PREFILL_REJECTED), NOW) == Next()


def test_thinking_already_shown_is_not_repeated_by_the_next_member() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    step = tried(run.next_step(NOW, look), "a")
    assert ThinkingEvent("hmm") in step.relay.feed([ThinkingEvent("hmm")])
    run.failed(fail(Failure.TRANSIENT), NOW)
    step = tried(run.next_step(NOW, look), "b")
    assert step.request is REQUEST  # no text yet: the request as it was
    assert step.relay.feed([ThinkingEvent("hmm"), TextEvent("Hi")]) == [
        ProviderEvent(provider="b", model="m"),
        TextEvent("Hi"),
    ]


def test_a_cut_with_no_member_left_is_truncated_never_done() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    serve_some(run, "a", look, "Half an ans")
    run.failed(fail(Failure.TRANSIENT), NOW)
    tried(run.next_step(NOW, look), "b")
    run.failed(fail(Failure.OVERLOADED), NOW)
    assert ("b", "m") in run.excluded  # after output nothing is tried twice
    err = error(run.next_step(NOW, look))
    assert err.kind == "truncated" and "no provider could continue" in err.message


def test_a_cut_after_whole_tool_calls_ends_the_turn_with_them_never_repeats_them() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    step = tried(run.next_step(NOW, look), "a")
    step.relay.feed([TextEvent("Let me look."), ToolCallEvent(id="c1", name="f", arguments={})])
    outcome = run.failed(fail(Failure.TRANSIENT), NOW)
    assert outcome == Stop([DoneEvent(provider="a", model="m", finish_reason="tool_calls")])
    assert run.next_step(NOW, look) == outcome  # no other member is asked: it could call the tool again


def test_text_that_used_up_max_tokens_ends_as_a_length_stop() -> None:
    """Before, the engine picked the next member again and again, sending a failover notice each time."""
    run = engine(request=ChatRequest(messages=[Message("user", "hi")], max_tokens=3))
    look = members(a=READY, b=READY)
    serve_some(run, "a", look, "twelve chars")
    run.failed(fail(Failure.TRANSIENT), NOW)
    step = run.next_step(NOW, look)
    assert step == Stop([DoneEvent(provider="a", model="m", finish_reason="length")])


def test_the_echo_held_back_is_released_when_the_member_finishes() -> None:
    run = engine()
    look = members(a=READY, b=READY)
    serve_some(run, "a", look, "one two")
    run.failed(fail(Failure.TRANSIENT), NOW)
    step = tried(run.next_step(NOW, look), "b")
    assert step.relay.feed([TextEvent("tw")]) == [ProviderEvent(provider="b", model="m")]  # could be an echo
    done = run.succeeded(Finished(finish_reason="stop", model="m-2024"))
    assert done.events == [TextEvent("tw"), DoneEvent(provider="b", model="m-2024", finish_reason="stop")]


def test_a_first_member_that_succeeds_saved_no_failover() -> None:
    run = engine()
    step = tried(run.next_step(NOW, members(a=READY)), "a")
    step.relay.feed([TextEvent("Hi")])
    done = run.succeeded(Finished(finish_reason="stop"))
    assert not done.saved_failover and done.events == [
        DoneEvent(provider="a", model="m", finish_reason="stop")
    ]
