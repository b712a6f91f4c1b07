"""A provider's concurrency slots: a request waits for one at most `slot_wait`, then fails over.

Held slots are modelled by streams that stall mid-answer under a long idle timeout: like a
client that stopped reading, each keeps its slot inside `ProviderActor.attempt` for as long
as it lasts.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from combined_models.chat import ChatRequest, DecodedItem, FailoverEvent, Message
from combined_models.config import parse_config, resolve_provider
from combined_models.daemon.errors import NO_PENALTY, Failure, UpstreamError
from combined_models.daemon.provider import ProviderActor
from combined_models.simulator import Fault

from .conftest import ANSWER, MODEL, done_of, open_stack, text_of

STUCK = 32  # the default max_concurrency


async def _wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition of the daemon's own state (no timing is asserted; the caller bounds it)."""
    while not condition():  # noqa: ASYNC110  (the state belongs to the daemon: no event to wait on)
        await trio.sleep(0.01)


async def test_with_every_slot_held_a_request_fails_over_busy_and_the_provider_stays_ready(
    short_dir: Path,
) -> None:
    failover = {"idle_timeout": 600.0, "first_token_timeout": 600.0, "slot_wait": 0.2}
    async with open_stack(short_dir, failover=failover) as st:
        first = st.server.registry.actors["first"]
        st.sims["first"].push_fault(Fault(kind="stall_after", after_chunks=2, seconds=0, times=STUCK))

        async def stuck_reader() -> None:
            async with st.client() as c:
                async for _ in c.chat(MODEL, "hello"):
                    pass  # never ends: its stream stalls mid-answer

        with trio.fail_after(30):
            async with trio.open_nursery() as readers:
                for _ in range(STUCK):
                    readers.start_soon(stuck_reader)
                await _wait_until(lambda: first.status(trio.current_time()).in_flight == STUCK)
                events = await st.ask()
                async with st.client() as c:
                    status = {p.id: p for p in (await c.status()).providers}
                readers.cancel_scope.cancel()

        assert text_of(events) == ANSWER
        assert done_of(events).provider == "second"
        busy = next(e for e in events if isinstance(e, FailoverEvent))
        assert (busy.from_, busy.to, busy.reason, busy.after_output) == ("first", "second", "busy", False)
        assert st.sims["first"].statistics().chat_requests == STUCK  # the busy request never went out
        assert status["first"].state == "ready"
        assert status["first"].failures == 0 and status["first"].last_error is None
        assert not status["first"].models  # no model cooling either


async def test_running_out_of_descriptors_here_is_never_charged_to_the_provider(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_stack(short_dir) as st:
        first_port = st.sims["first"].port
        real_open = trio.open_tcp_stream

        async def open_tcp_stream(host: str, port: int, **kw: Any) -> trio.SocketStream:
            if port == first_port:  # as when the daemon has no descriptor left for this connection
                raise OSError(errno.EMFILE, "Too many open files")
            return await real_open(host, port, **kw)

        monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)
        events = await st.ask()
        async with st.client() as c:
            status = {p.id: p for p in (await c.status()).providers}

    assert text_of(events) == ANSWER and done_of(events).provider == "second"
    moved = next(e for e in events if isinstance(e, FailoverEvent))
    assert moved.reason == "busy" and "Too many open files" in moved.message
    first = status["first"]
    assert (first.state, first.failures, first.requests, first.last_error) == ("ready", 0, 0, None)


def _actor(slot_wait: float) -> ProviderActor:
    cfg = parse_config(
        f"[failover]\nslot_wait = {slot_wait}\n"
        '[providers.p]\napi = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        f'api_key = "sk-test-0123456789"\nmax_concurrency = 1\nmodels = ["{MODEL}"]\n',
        "test config",
    )
    return ProviderActor(resolve_provider(cfg, "p"), cfg.failover)


async def _nothing(items: list[DecodedItem]) -> None:
    pass


class Unsupported:
    def build_chat(self, *args: object) -> object:
        raise UpstreamError(Failure.UNSUPPORTED, "stub")


REQUEST = ChatRequest(messages=[Message(role="user", content="hello")])


async def _probe_taken_with_every_slot_held(actor: ProviderActor) -> None:
    """The provider's cooldown is over and this request took the probe; its only slot is held."""
    actor._health.fail(MODEL, trio.current_time(), Failure.UNREACHABLE)  # the host: provider level
    await trio.sleep(120)  # the cooldown is over: the next request probes
    assert actor.admit(MODEL, trio.current_time()).decision == "probe"
    actor._limiter.acquire_on_behalf_of_nowait("a stuck stream")


async def test_busy_hands_the_probe_it_took_to_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # In-memory only: the request never reaches the network, so the mock clock may jump.
    actor = _actor(slot_wait=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await _probe_taken_with_every_slot_held(actor)
        started = trio.current_time()
        with pytest.raises(UpstreamError) as e:
            await actor.attempt(REQUEST, MODEL, _nothing, probe=True)
        assert e.value.kind is Failure.BUSY and "slots" in e.value.message
        assert trio.current_time() - started == pytest.approx(3.0)
        # No verdict on the provider: the next request probes, nothing was counted against it.
        assert actor.admit(MODEL, trio.current_time()).decision == "probe"
        status = actor.status(trio.current_time())
        assert (status.requests, status.failures, status.in_flight) == (0, 0, 0)
        nursery.cancel_scope.cancel()


async def test_a_slot_freed_within_slot_wait_is_taken_and_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = _actor(slot_wait=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.dialect = Unsupported()  # type: ignore[assignment]  # in memory: nothing is sent
        actor._limiter.acquire_on_behalf_of_nowait("a stream that ends")

        async def free_soon() -> None:
            await trio.sleep(1.0)
            actor._limiter.release_on_behalf_of("a stream that ends")

        nursery.start_soon(free_soon)
        started = trio.current_time()
        with pytest.raises(UpstreamError) as e:  # the slot comes free in time: the attempt goes on
            await actor.attempt(REQUEST, MODEL, _nothing)
        assert e.value.kind is Failure.UNSUPPORTED  # what the stub dialect says, past the slot
        assert trio.current_time() - started < 3.0
        assert actor._limiter.borrowed_tokens == 0  # given back
        nursery.cancel_scope.cancel()


def test_busy_is_no_penalty() -> None:
    assert Failure.BUSY in NO_PENALTY


async def test_a_waiting_request_that_is_cancelled_gives_its_probe_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = _actor(slot_wait=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await _probe_taken_with_every_slot_held(actor)
        with trio.move_on_after(1.0):
            await actor.attempt(REQUEST, MODEL, _nothing, probe=True)
        assert actor.admit(MODEL, trio.current_time()).decision == "probe"
        nursery.cancel_scope.cancel()


async def test_a_request_without_the_probe_never_gives_away_the_probe_another_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = _actor(slot_wait=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await _probe_taken_with_every_slot_held(actor)  # some other request holds the probe
        with trio.move_on_after(1.0):  # a request admitted before the trip, cancelled while waiting
            await actor.attempt(REQUEST, MODEL, _nothing)
        with pytest.raises(UpstreamError):  # one that found no slot
            await actor.attempt(REQUEST, MODEL, _nothing)
        # The probe is still out: a second one would be two probes in flight.
        assert actor.admit(MODEL, trio.current_time()).decision == "wait"
        nursery.cancel_scope.cancel()
