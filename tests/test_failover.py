"""Failover mid-stream and before output: the caller's text is the whole answer, exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from combined_models.chat import ChatRequest, FailoverEvent, Message, ProviderEvent, StreamEvent, Tool
from combined_models.client.aio import open_client
from combined_models.daemon.health import DEFAULT_POLICY
from combined_models.simulator import Fault

from .conftest import ANSWER, MODEL, done_of, error_of, open_stack, text_of

# Short phase timeouts: the stall faults are real silences on real sockets.
FAST = {"first_token_timeout": 0.5, "idle_timeout": 0.4}

MID_STREAM = [
    Fault(kind="reset_after", after_chunks=5),
    Fault(kind="inband_error_after", after_chunks=5),
    Fault(kind="stall_after", after_chunks=5),
    Fault(kind="no_terminator", after_chunks=5),
    Fault(kind="malformed_after", after_chunks=5),
]
BEFORE_OUTPUT = [
    Fault(kind="stall_before"),
    Fault(kind="slow_first_token", seconds=3.0),
    Fault(kind="status", status=429),
    Fault(kind="status", status=529),
    Fault(kind="status", status=503),
    Fault(kind="reset_before_headers", times=3),
]


@pytest.mark.parametrize("echo_words", [0, 3], ids=["clean", "echoing"])
@pytest.mark.parametrize("fault", MID_STREAM, ids=[f.kind for f in MID_STREAM])
async def test_a_stream_cut_mid_answer_is_finished_by_the_next_provider(
    short_dir: Path, fault: Fault, echo_words: int
) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        st.sims["second"].echo_words = echo_words  # a continuation that repeats the tail is stripped
        st.sims["first"].push_fault(fault)
        with trio.fail_after(10):
            events = await st.ask()
        assert text_of(events) == ANSWER
        assert done_of(events).provider == "second"
        failover = next(e for e in events if isinstance(e, FailoverEvent))
        assert (failover.from_, failover.to, failover.after_output) == ("first", "second", True)
        providers = [e.provider for e in events if isinstance(e, ProviderEvent)]
        assert providers == ["first", "second"]
        # the second provider was asked to continue, not to start over
        body = st.sims["second"].requests[-1].body
        assert body["messages"][-2]["role"] == "assistant"
        assert ANSWER.startswith(body["messages"][-2]["content"].rstrip())


@pytest.mark.parametrize("fault", BEFORE_OUTPUT, ids=[f"{f.kind}-{f.status or ''}" for f in BEFORE_OUTPUT])
async def test_failures_before_output_fail_over_with_the_whole_answer(short_dir: Path, fault: Fault) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        st.sims["first"].push_fault(fault)
        with trio.fail_after(10):
            events = await st.ask()
        assert text_of(events) == ANSWER
        assert done_of(events).provider == "second"
        failover = next(e for e in events if isinstance(e, FailoverEvent))
        assert failover.after_output is False


async def test_a_silent_provider_is_not_retried_in_the_same_request(short_dir: Path) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        st.sims["first"].push_fault(Fault(kind="stall_before", times=-1))
        await st.ask()
        assert st.sims["first"].statistics().chat_requests == 1


async def test_prefill_rejected_with_400_is_retried_without_prefill(short_dir: Path) -> None:
    # The second provider claims prefill support in the config but rejects it on the wire.
    async with open_stack(short_dir, failover=FAST, provider_lines={"second": "prefill = true"}) as st:
        st.sims["first"].push_fault(Fault(kind="reset_after", after_chunks=4))
        st.sims["second"].push_fault(Fault(kind="reject_prefill"))
        events = await st.ask()
        assert text_of(events) == ANSWER
        assert done_of(events).provider == "second"
        assert not any(
            "prefill" in getattr(e, "message", "") for e in events if not isinstance(e, FailoverEvent)
        )
        assert [r.status for r in st.sims["second"].requests] == [400, 200]
        # remembered: the next continuation on that provider goes without prefill at once
        st.sims["first"].push_fault(Fault(kind="reset_after", after_chunks=4))
        st.sims["second"].push_fault(Fault(kind="reject_prefill"))
        assert text_of(await st.ask()) == ANSWER
        assert [r.status for r in st.sims["second"].requests] == [400, 200, 200]
        async with st.client() as c:
            second = {p.id: p for p in (await c.status()).providers}["second"]
        assert second.state == "ready" and second.failures == 0


async def test_nothing_left_to_continue_ends_with_an_error_never_done(short_dir: Path) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        st.sims["first"].push_fault(Fault(kind="reset_after", after_chunks=4))
        st.sims["second"].push_fault(Fault(kind="status", status=500, times=-1))
        events = await st.ask()
        err = error_of(events)
        assert err.kind == "truncated"
        assert text_of(events) and ANSWER.startswith(text_of(events)) and text_of(events) != ANSWER
        assert not any(type(e).__name__ == "DoneEvent" for e in events)


async def test_an_outage_gets_probes_not_traffic_and_traffic_returns_after_recovery(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        first = st.sims["first"]
        first.push_fault(Fault(kind="status", status=503, times=-1))
        for _ in range(20):  # 20 requests spread over a 60 s outage
            events = await st.ask()
            assert text_of(events) == ANSWER
            clock.jump(3)
        during = first.statistics().chat_requests
        # Probes as each (short, capped) cooldown ends: about one per 5 s, not one per request.
        assert 3 <= during <= 60 / DEFAULT_POLICY.outage_cap + 2, during
        first.clear_faults()
        clock.jump(60)  # at most one (capped) cooldown period
        assert done_of(await st.ask()).provider == "first"
        assert done_of(await st.ask()).provider == "first"


async def test_a_persistent_429_without_hint_is_not_hammered(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        st.sims["first"].push_fault(Fault(kind="status", status=429, times=-1))
        for _ in range(10):  # five seconds of traffic
            assert done_of(await st.ask()).provider == "second"
            clock.jump(0.5)
        assert st.sims["first"].statistics().chat_requests <= 2


async def test_every_member_cooling_fails_at_once_naming_each_state(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        for sim in st.sims.values():
            sim.push_fault(Fault(kind="status", status=429, headers={"retry-after": "120"}))
        assert error_of(await st.ask()).kind == "all_providers_failed"
        start = trio.current_time()
        err = error_of(await st.ask())
        assert trio.current_time() - start < 1.0  # no waiting for a two-minute cooldown
        assert err.kind == "all_providers_cooling"
        assert {a.provider for a in err.attempts} == {"first", "second"}
        assert all("cooldown, back in" in a.error for a in err.attempts)
        assert err.retry_after_s is not None and 110 < err.retry_after_s <= 120


async def test_every_member_cooling_briefly_waits_for_the_earliest(short_dir: Path) -> None:
    async with open_stack(short_dir, failover={**FAST, "all_cooling_wait": 3.0}) as st:
        st.sims["first"].push_fault(Fault(kind="status", status=429, headers={"retry-after": "0.3"}))
        st.sims["second"].push_fault(Fault(kind="status", status=429, headers={"retry-after": "30"}))
        events = await st.ask()  # both fail; the first is back within the bound: wait and retry
        assert text_of(events) == ANSWER
        assert done_of(events).provider == "first"


async def test_health_survives_a_daemon_restart(short_dir: Path) -> None:
    from combined_models.daemon import open_daemon
    from combined_models.simulator import Simulator

    from .conftest import MODEL, config_for

    async with trio.open_nursery() as nursery:
        sims = {}
        for name in ("first", "second"):
            sims[name] = Simulator(models=[MODEL], text=ANSWER, name=name)
            await nursery.start(sims[name].run)
        cfg = config_for(sims)
        sock = short_dir / "d.sock"
        sims["first"].push_fault(Fault(kind="status", status=429, headers={"retry-after": "600"}))
        async with trio.open_nursery() as daemon_nursery:
            server = await open_daemon(cfg, sock, daemon_nursery, persist=True)
            async with open_client(sock) as c:
                assert [e async for e in c.chat(MODEL, "hi")][-1].provider == "second"  # type: ignore[union-attr]
            server.request_stop()
        assert not sock.exists()
        async with trio.open_nursery() as daemon_nursery:
            server = await open_daemon(cfg, sock, daemon_nursery, persist=True)
            async with open_client(sock) as c:
                first = {p.id: p for p in (await c.status()).providers}["first"]
                assert first.state == "cooldown"
                assert 590 < first.cooldown_remaining_s <= 600
                assert [e async for e in c.chat(MODEL, "hi")][-1].provider == "second"  # type: ignore[union-attr]
            server.request_stop()
        assert sims["first"].statistics().chat_requests == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "fault",
    [Fault(kind="stall_after", after_chunks=3), Fault(kind="stall_before")],
    ids=["idle", "first-token"],
)
async def test_phase_timeouts_can_be_set_per_provider(short_dir: Path, fault: Fault) -> None:
    slow = {"first_token_timeout": 30.0, "idle_timeout": 30.0}  # globally patient...
    own = {"first": "idle_timeout = 0.3\nfirst_token_timeout = 0.3"}  # ...but not with this provider
    async with open_stack(short_dir, failover=slow, provider_lines=own) as st:
        st.sims["first"].push_fault(fault)
        with trio.fail_after(5):
            events = await st.ask()
        assert text_of(events) == ANSWER and done_of(events).provider == "second"


async def test_a_slow_caller_is_not_taken_for_a_silent_provider(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    """Time spent writing to the caller does not count against the provider's time limits."""
    async with open_stack(short_dir, failover=FAST) as st:
        events: list[StreamEvent] = []

        async def send(batch: list[StreamEvent]) -> None:
            if not events:  # the caller takes longer over the first output than both limits allow
                clock.jump(FAST["first_token_timeout"] + FAST["idle_timeout"] + 1)
                await trio.lowlevel.checkpoint()
            events.extend(batch)

        request = ChatRequest(messages=[Message("user", "hello")])
        with trio.fail_after(10):
            await st.server.router.chat(MODEL, request, send)
        assert not any(isinstance(e, FailoverEvent) for e in events)
        assert done_of(events).provider == "first"
        assert text_of(events) == ANSWER


async def test_a_request_a_recovering_member_cannot_serve_does_not_hold_its_probe(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    """A tools request skips a member without tools; the next plain request still probes it at once.

    Before, the member was admitted as the probe and then dropped for its capabilities,
    leaving its model "probing" for 30 s: traffic stayed on the fallback that long.
    """
    async with open_stack(short_dir, failover=FAST, provider_lines={"first": "tools = false"}) as st:
        st.sims["first"].push_fault(Fault(kind="status", status=503))
        assert done_of(await st.ask()).provider == "second"  # the first cools for a second
        clock.jump(5)
        with_tools = ChatRequest(messages=[Message("user", "hello")], tools=[Tool(name="lookup")])
        async with st.client() as c:
            events = [e async for e in c.chat(MODEL, with_tools)]
        assert done_of(events).provider == "second"
        assert done_of(await st.ask()).provider == "first"  # the probe was still free
        assert st.sims["first"].statistics().chat_requests == 2


@pytest.mark.parametrize("outage", [60, 72, 180])
async def test_recovery_is_noticed_within_ten_seconds_after_a_long_outage(
    short_dir: Path, clock: trio.testing.MockClock, outage: float
) -> None:
    """An outage of 503s with traffic every 4 s, then recovery: the member serves again within 10 s.

    Three requests go at each tick, at once: while the member cools only one of them may probe it.
    """
    async with open_stack(short_dir, failover=FAST) as st:
        first = st.sims["first"]
        first.push_fault(Fault(kind="status", status=503, times=-1))

        async def tick(*, cooling: bool = True) -> list[str]:
            providers: list[str] = []

            async def one() -> None:
                events = await st.ask()
                assert text_of(events) == ANSWER
                providers.append(done_of(events).provider)

            before = first.statistics().chat_requests
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(one)
            reached_first = first.statistics().chat_requests - before
            assert reached_first <= 1 or not cooling, "two probes of a cooling member at once"
            return providers

        start = trio.current_time()
        assert "first" not in await tick(cooling=False)  # all three find it ready, and fail over
        clock.jump(4)
        while trio.current_time() - start < outage:
            assert "first" not in await tick()
            clock.jump(4)
        first.clear_faults()
        recovered = trio.current_time()
        while "first" not in await tick():
            assert trio.current_time() - recovered < 10, "still on the fallback 10 s after recovery"
            clock.jump(4)
        assert trio.current_time() - recovered <= 10
