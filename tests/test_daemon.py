"""The daemon end to end: real Unix socket, simulated providers on loopback, scripted faults."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
import trio.testing

from combined_models.chat import (
    ChatRequest,
    DoneEvent,
    ErrorEvent,
    FailoverEvent,
    ProviderEvent,
    StreamEvent,
    TextEvent,
)
from combined_models.client.aio import open_client
from combined_models.config import HttpConfig, LimitsConfig
from combined_models.daemon.facade import CountResult, DaemonFacade, Send
from combined_models.daemon.gateway import Gateway
from combined_models.daemon.server import claim_endpoint
from combined_models.daemon.socket_door import SocketDoor
from combined_models.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Chat,
    CombinedModel,
    DaemonInfo,
    Error,
    Event,
    FrameDecoder,
    Hello,
    Member,
    ModelsInfo,
    ReloadInfo,
    StatusInfo,
    Welcome,
    encode_frame,
    server_decoder,
)
from combined_models.simulator import Fault

from .conftest import (
    ANSWER,
    MODEL,
    done_of,
    error_of,
    open_stack,
    raw_connect,
    read_frames_until_close,
    text_of,
)


async def test_healthy_answer_comes_from_the_first_provider(short_dir: Path) -> None:
    async with open_stack(short_dir) as st:
        events = await st.ask()
        assert isinstance(events[0], ProviderEvent) and events[0].provider == "first"
        assert text_of(events) == ANSWER
        done = done_of(events)
        assert (done.provider, done.model, done.finish_reason) == ("first", MODEL, "stop")
        assert done.usage.output_tokens == len(ANSWER.split())
        assert st.sims["second"].statistics().chat_requests == 0


async def test_rate_limit_cools_the_provider_for_every_client_until_its_reset(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    async with open_stack(short_dir) as st:
        first, second = st.sims["first"], st.sims["second"]
        first.push_fault(Fault(kind="status", status=429, headers={"retry-after": "30"}))
        events = await st.ask()
        assert text_of(events) == ANSWER
        assert done_of(events).provider == "second"
        failover = next(e for e in events if isinstance(e, FailoverEvent))
        assert (failover.from_, failover.to, failover.reason, failover.after_output) == (
            "first",
            "second",
            "rate_limited",
            False,
        )

        async with st.client() as c:
            status = {p.id: p for p in (await c.status()).providers}
        assert status["first"].state == "cooldown"
        assert 28.0 <= status["first"].cooldown_remaining_s <= 30.0
        assert status["second"].state == "ready"

        # Other clients, other connections: straight to the second, the first sees nothing.
        for _ in range(3):
            assert done_of(await st.ask()).provider == "second"
        assert first.statistics().chat_requests == 1

        clock.jump(31)
        events = await st.ask()
        assert done_of(events).provider == "first"
        assert text_of(events) == ANSWER
        assert second.statistics().chat_requests == 4


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="reset_before_headers"),
        Fault(kind="status", status=500),
        Fault(kind="status", status=503),
        Fault(kind="status", status=529),
        Fault(kind="status", status=500, times=3),
    ],
    ids=["reset-before-headers", "500", "503", "529", "500-thrice"],
)
async def test_failures_before_output_end_in_a_complete_answer(short_dir: Path, fault: Fault) -> None:
    async with open_stack(short_dir) as st:
        st.sims["first"].push_fault(fault)
        events = await st.ask()
        assert text_of(events) == ANSWER
        done_of(events)
        assert not any(isinstance(e, ErrorEvent) for e in events)


async def test_transient_errors_are_retried_on_the_same_provider_first(short_dir: Path) -> None:
    async with open_stack(short_dir) as st:
        st.sims["first"].push_fault(Fault(kind="status", status=500))
        events = await st.ask()
        assert done_of(events).provider == "first"  # one 500, then the retry succeeded
        assert st.sims["first"].statistics().chat_requests == 2
        assert st.sims["second"].statistics().chat_requests == 0


async def test_a_bad_request_goes_back_to_the_caller_and_is_not_retried(short_dir: Path) -> None:
    async with open_stack(short_dir) as st:
        st.sims["first"].push_fault(
            Fault(kind="status", status=400, message="Invalid value for 'temperature': must be <= 2")
        )
        err = error_of(await st.ask())
        assert err.kind == "bad_request"
        assert "temperature" in err.message and "first" in err.message
        assert st.sims["first"].statistics().chat_requests == 1
        assert st.sims["second"].statistics().chat_requests == 0


async def test_every_provider_failing_lists_each_attempt(short_dir: Path) -> None:
    async with open_stack(short_dir) as st:
        st.sims["first"].push_fault(Fault(kind="status", status=500, times=-1))
        st.sims["second"].push_fault(Fault(kind="status", status=401, times=-1))
        err = error_of(await st.ask())
        assert err.kind == "all_providers_failed"
        providers = [a.provider for a in err.attempts]
        assert providers.count("first") == 3 and providers.count("second") == 1  # 3 = max_attempts
        assert {a.kind for a in err.attempts} == {"transient", "auth"}
        assert "sk-test" not in err.message and all("sk-test" not in a.error for a in err.attempts)


async def test_unknown_model_and_provider_addressing(short_dir: Path) -> None:
    async with open_stack(short_dir) as st:
        assert error_of(await st.ask("no-such-model")).kind == "unknown_model"
        assert done_of(await st.ask(f"second/{MODEL}")).provider == "second"
        assert done_of(await st.ask(f"combined/{MODEL}")).provider == "first"


async def test_fifty_concurrent_clients_all_get_the_whole_answer(short_dir: Path) -> None:
    async with open_stack(short_dir) as st:
        results: list[str] = []

        async def one() -> None:
            results.append(text_of(await st.ask()))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(one)
        assert results == [ANSWER] * 50


async def test_many_requests_multiplexed_on_one_connection(short_dir: Path) -> None:
    async with open_stack(short_dir) as st, st.client() as c:
        texts: dict[int, str] = {}

        async def one(i: int) -> None:
            texts[i] = text_of([e async for e in c.chat(MODEL, f"question {i}")])

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert texts == dict.fromkeys(range(20), ANSWER)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x00\x05garbage-not-msgpack",
        struct.pack(">I", 1 << 30) + b"xx",
        struct.pack(">I", 3) + msgspec.msgpack.encode([1, 2]),
        encode_frame(Cancel(id=1)),  # not a hello first
        encode_frame(Hello(version=PROTOCOL_VERSION + 99)),
    ],
    ids=["garbage", "oversized", "wrong-type", "no-hello", "bad-version"],
)
async def test_bad_clients_get_an_error_frame_and_others_keep_working(
    short_dir: Path, payload: bytes
) -> None:
    async with open_stack(short_dir, chunk_delay=0.01) as st, st.client() as good:
        stream = good.chat(MODEL, "a long answer please")
        first = await stream.__anext__()  # a stream is under way while the bad client misbehaves
        assert isinstance(first, ProviderEvent)

        def misbehave() -> list[object]:
            with raw_connect(st.socket) as s:
                s.sendall(payload)
                return read_frames_until_close(s)

        frames = await trio.to_thread.run_sync(misbehave)
        errors = [f for f in frames if isinstance(f, Error)]
        assert len(errors) == 1 and errors[0].id == 0
        assert errors[0].kind in ("protocol_error", "frame_too_large")
        rest = [first] + [e async for e in stream]
        assert text_of(rest) == ANSWER
        assert done_of(await st.ask()).provider == "first"


async def test_a_client_going_away_mid_stream_closes_the_upstream_request(short_dir: Path) -> None:
    async with open_stack(short_dir, chunk_delay=0.05) as st:
        first = st.sims["first"]

        def read_a_little_then_vanish() -> None:
            with raw_connect(st.socket) as s:
                s.sendall(encode_frame(Hello(version=PROTOCOL_VERSION)))
                s.sendall(encode_frame(Chat(id=1, model=MODEL, request=_request())))
                decoder = FrameDecoder()
                texts = 0
                while texts < 2:
                    for body in decoder.feed(s.recv(65536)):
                        frame = server_decoder.decode(body)
                        if isinstance(frame, Event) and isinstance(frame.event, TextEvent):
                            texts += 1

        await trio.to_thread.run_sync(read_a_little_then_vanish)
        gone = trio.current_time()  # the client's socket is closed
        with trio.fail_after(1):
            await first.wait_disconnect(1)
        # The upstream connection closes within 100 ms (a generous bound for a loaded CI box).
        print(f"upstream closed {1000 * (trio.current_time() - gone):.1f} ms after the client")
        assert trio.current_time() - gone < 0.1
        assert first.requests[-1].outcome == "disconnected"
        async with st.client() as c:
            status = {p.id: p for p in (await c.status()).providers}
        assert status["first"].state == "ready"
        assert status["first"].in_flight == 0 and status["first"].failures == 0


async def test_cancel_frame_stops_the_request_and_its_upstream(short_dir: Path) -> None:
    async with open_stack(short_dir, chunk_delay=0.05) as st:

        def cancel_after_first_text() -> list[object]:
            with raw_connect(st.socket) as s:
                s.sendall(encode_frame(Hello(version=PROTOCOL_VERSION)))
                s.sendall(encode_frame(Chat(id=7, model=MODEL, request=_request())))
                decoder = FrameDecoder()
                seen: list[object] = []
                while True:
                    for body in decoder.feed(s.recv(65536)):
                        frame = server_decoder.decode(body)
                        seen.append(frame)
                        if isinstance(frame, Event) and isinstance(frame.event, TextEvent):
                            s.sendall(encode_frame(Cancel(id=7)))
                        if isinstance(frame, Error):
                            return seen

        frames = await trio.to_thread.run_sync(cancel_after_first_text)
        assert isinstance(frames[0], Welcome)
        last = frames[-1]
        assert isinstance(last, Error) and (last.id, last.kind) == (7, "cancelled")
        with trio.fail_after(1):
            await st.sims["first"].wait_disconnect(1)


async def test_async_client_leaving_a_stream_early_cancels_it(short_dir: Path) -> None:
    async with open_stack(short_dir, chunk_delay=0.05) as st, open_client(st.socket) as c:
        events = c.chat(MODEL, "hi")
        async for e in events:
            if isinstance(e, TextEvent):
                break
        await events.aclose()  # type: ignore[attr-defined]
        with trio.fail_after(1):
            await st.sims["first"].wait_disconnect(1)
        assert text_of([e async for e in c.chat(MODEL, "again")]) == ANSWER  # the connection still works


def _request() -> object:
    from combined_models.chat import ChatRequest, Message

    return ChatRequest(messages=[Message("user", "tell me")])


# ------------------------------------------------------------------ the doors and their facade


@dataclass
class FakeDaemon:
    """A daemon facade with no server, router or provider behind it."""

    http: HttpConfig = field(default_factory=lambda: HttpConfig(listen="127.0.0.1:0", token="t" * 43))
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    stopping: bool = False
    active: int = 0
    asked: list[str] = field(default_factory=list)  # the model of each chat, in order

    def request_stop(self) -> None:
        self.stopping = True

    @contextmanager
    def tracking(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def chat(self, model: str, request: ChatRequest, send: Send) -> None:
        self.asked.append(model)
        events: list[StreamEvent] = [
            ProviderEvent("fake", model),
            TextEvent(f"{self.active} in flight"),
            DoneEvent(provider="fake", model=model, finish_reason="stop"),
        ]
        await send(events)

    def models_info(self) -> ModelsInfo:
        return ModelsInfo(
            models=[CombinedModel(id="fake-1", members=[Member(provider="fake", model="fake-1")])]
        )

    def status(self) -> StatusInfo:
        return StatusInfo(daemon=DaemonInfo(pid=os.getpid(), version="fake", uptime_s=0.0), providers=[])

    def explain(self, model: str) -> list[str]:
        raise KeyError(model)

    async def refresh_catalogs(self) -> None:
        pass

    async def reload_config(self) -> ReloadInfo:
        return ReloadInfo(applied=False, error="the fake daemon has no config file")

    def metrics_text(self) -> bytes:
        return b""

    async def count_tokens(self, model: str, request: ChatRequest) -> CountResult:
        return CountResult(outcome="unsupported", message="the fake daemon counts nothing")


async def test_both_doors_serve_a_facade_side_by_side_with_no_server(short_dir: Path) -> None:
    fake = FakeDaemon()
    doors: DaemonFacade = fake  # what the doors are typed to take: the facade, never a server
    socket_door, gateway = SocketDoor(doors), Gateway(doors)
    path = short_dir / "d.sock"
    with claim_endpoint(path) as sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            await nursery.start(socket_door.run, sock)
            headers = {"authorization": f"Bearer {fake.http.token}"}
            async with (
                open_client(path) as c,
                httpx.AsyncClient(
                    base_url=f"http://{gateway.address}", headers=headers, trust_env=False
                ) as http,
            ):
                assert text_of([e async for e in c.chat("fake-1", "hi")]) == "1 in flight"
                assert [m.id for m in (await c.models()).models] == ["fake-1"]
                hi = [{"role": "user", "content": "hi"}]
                r = await http.post("/v1/chat/completions", json={"model": "fake-1", "messages": hi})
                assert r.json()["choices"][0]["message"]["content"] == "1 in flight"
                r = await http.post("/v1/messages", json={"model": "fake-1", "max_tokens": 9, "messages": hi})
                assert r.json()["content"] == [{"type": "text", "text": "1 in flight"}]
                r = await http.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
                assert r.json()["data"][0]["type"] == "model"  # Anthropic's shape, from its front end
                assert fake.asked == ["fake-1"] * 3 and fake.active == 0

                await c.shutdown()  # asked on the socket: the HTTP door sees the same facade stopping
                r = await http.post("/v1/chat/completions", json={"model": "fake-1", "messages": hi})
                assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
            socket_door.stop_accepting()
            gateway.stop_accepting()
            socket_door.hang_up()
            nursery.cancel_scope.cancel()


def test_importing_the_daemon_package_or_a_pure_part_of_it_loads_no_io_library() -> None:
    pure = [
        "combined_models.daemon",
        "combined_models.daemon.facade",
        "combined_models.daemon.gateway",
        "combined_models.daemon.gateway.openai",
        "combined_models.daemon.gateway.anthropic",
        "combined_models.daemon.gateway.auth",
    ]
    code = (
        f"import sys; [__import__(m) for m in {pure!r}]; "
        "print(sorted(m for m in ('trio', 'h11', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # The entry points are still there, loaded when asked for.
    code = "from combined_models.daemon import Server, make_server, open_daemon, run_daemon; print(Server.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "Server"
