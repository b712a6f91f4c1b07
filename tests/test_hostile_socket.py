"""Hostile clients on the real Unix socket: the daemon answers what it can, drops what it must, never goes down.

Each test ends with a well-formed request from another client, answered in full. Raw clients run in
threads with blocking sockets (each with a timeout) while the daemon serves in the test's trio loop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from combined_models.chat import ChatRequest, DoneEvent, Message, TextEvent, Tool
from combined_models.client import sync
from combined_models.client.aio import open_client
from combined_models.client.sync import Client, DaemonUnavailable
from combined_models.daemon import open_daemon, socket_door
from combined_models.daemon.socket_door import cut_models, cut_status, encode_reply
from combined_models.limits import MAX_DEPTH
from combined_models.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    Cancel,
    Chat,
    CombinedModel,
    DaemonInfo,
    Error,
    Event,
    ExplainQuery,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    Member,
    ModelHealth,
    ModelsInfo,
    ModelsQuery,
    ModelsReply,
    ProviderStatus,
    Reload,
    ServerFrame,
    StatusInfo,
    StatusQuery,
    StatusReply,
    Welcome,
    encode_frame,
    server_decoder,
)
from combined_models.simulator import Simulator

from .conftest import (
    ANSWER,
    MODEL,
    Stack,
    config_for,
    open_stack,
    raw_connect,
    read_frames_until_close,
    text_of,
    unix_only,
)

HELLO = encode_frame(Hello(version=PROTOCOL_VERSION))
REQUEST = ChatRequest(messages=[Message("user", "tell me")])


# ------------------------------------------------------------------ blocking raw clients (run in threads)


def _exchange(path: Path, payload: bytes) -> list[ServerFrame]:
    """Send `payload`, say that is all, and read every frame until the daemon closes."""
    with raw_connect(path) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon closed first: what it said is still readable
        return read_frames_until_close(s)


def _send_and_vanish(path: Path, payload: bytes) -> None:
    with raw_connect(path) as s:
        s.sendall(payload)


def _answer_text(path: Path) -> str:
    """A well-formed chat from a fresh (sync) client: the invariant after every hostile case."""
    with Client(path, timeout=10) as c:
        return "".join(e.text for e in c.chat(MODEL, "hello") if isinstance(e, TextEvent))


def _assert_well_behaved(frames: list[ServerFrame]) -> None:
    """A connection-level error is the last thing the daemon says, and it says it at most once."""
    broken = [i for i, f in enumerate(frames) if isinstance(f, Error) and f.id == 0]
    assert broken in ([], [len(frames) - 1]), frames


async def _assert_serving(st: Stack, model: str = MODEL) -> None:
    with trio.fail_after(10):
        assert text_of(await st.ask(model)) == ANSWER


def _nested(depth: int, kind: str) -> bytes:
    """A msgpack value nested `depth` levels: arrays of one, or maps of one key."""
    prefix = b"\x91" if kind == "array" else b"\x81\xa1k"
    return prefix * depth + b"\x01"


# ------------------------------------------------------------------ reproductions


@pytest.mark.parametrize(
    "query",
    [StatusQuery(id=1), ModelsQuery(id=1), ExplainQuery(id=1, model=MODEL), Reload(id=1)],
    ids=["status", "models", "explain", "reload"],
)
async def test_a_client_leaving_before_its_reply_leaves_the_daemon_serving(
    short_dir: Path, query: StatusQuery | ModelsQuery | ExplainQuery | Reload
) -> None:
    async with open_stack(short_dir) as st:
        payload = HELLO + encode_frame(query)

        def leave_early_again_and_again() -> None:
            for _ in range(30):
                _send_and_vanish(st.socket, payload)

        await trio.to_thread.run_sync(leave_early_again_and_again)
        await _assert_serving(st)


@pytest.mark.parametrize("kind", ["array", "map"])
async def test_a_deeply_nested_frame_gets_a_protocol_error(short_dir: Path, kind: str) -> None:
    async with open_stack(short_dir) as st:
        body = b"\x83\xa4type\xa6status\xa2id\x01\xa1x" + _nested(100_000, kind)
        frames = await trio.to_thread.run_sync(
            _exchange, st.socket, HELLO + len(body).to_bytes(4, "big") + body
        )
        assert isinstance(frames[0], Welcome)
        last = frames[-1]
        assert isinstance(last, Error) and (last.id, last.kind) == (0, "protocol_error")
        assert "nested too deeply" in last.message
        await _assert_serving(st)


async def test_a_too_deep_tool_schema_is_a_bad_request_and_the_connection_goes_on(short_dir: Path) -> None:
    schema: dict[str, Any] = {}
    for _ in range(MAX_DEPTH + 10):
        schema = {"type": "object", "properties": {"x": schema}}
    request = ChatRequest(messages=[Message("user", "hi")], tools=[Tool(name="f", parameters=schema)])
    async with open_stack(short_dir) as st:
        payload = (
            HELLO + encode_frame(Chat(id=3, model=MODEL, request=request)) + encode_frame(StatusQuery(id=4))
        )
        frames = await trio.to_thread.run_sync(_exchange, st.socket, payload)
        error, reply = frames[1], frames[2]
        assert isinstance(error, Error) and (error.id, error.kind) == (3, "bad_request")
        assert "tools[0].parameters" in error.message
        assert isinstance(reply, StatusReply) and reply.id == 4
        assert st.sims["first"].statistics().chat_requests == 0
        await _assert_serving(st)


async def test_a_status_too_large_for_a_frame_is_cut_to_fit(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_stack(short_dir) as st:
        actor = st.server.registry.actors["second"]
        real_status = actor.status

        def swollen_status(now: float) -> ProviderStatus:
            # As if the health book held 400 models with 64 KB names: about 26 MB of status.
            many = [
                ModelHealth(model=f"{i:04d}-" + "m" * 65536, state="ready", cooldown_remaining_s=0)
                for i in range(400)
            ]
            return msgspec.structs.replace(real_status(now), models=many)

        monkeypatch.setattr(actor, "status", swollen_status)
        async with st.client() as c:
            status = {p.id: p for p in (await c.status()).providers}
        second = status["second"]
        assert 0 < len(second.models) < 400
        assert second.models_truncated == 400 - len(second.models)
        assert [m.model[:4] for m in second.models] == [f"{i:04d}" for i in range(len(second.models))]
        assert status["first"].models_truncated == 0
        await _assert_serving(st)


async def test_a_frame_left_incomplete_is_dropped_and_idle_connections_stay(short_dir: Path) -> None:
    async with open_stack(short_dir, extra="[limits]\npartial_frame_timeout = 0.2\n") as st:
        idle = await trio.to_thread.run_sync(raw_connect, st.socket)
        with idle:
            await trio.to_thread.run_sync(idle.sendall, HELLO)

            def start_a_frame_and_stop() -> list[ServerFrame]:
                with raw_connect(st.socket) as s:
                    s.sendall(HELLO + encode_frame(StatusQuery(id=1))[:3])
                    return read_frames_until_close(s)

            frames = await trio.to_thread.run_sync(start_a_frame_and_stop)
            assert isinstance(frames[0], Welcome)
            last = frames[-1]
            assert isinstance(last, Error) and (last.id, last.kind) == (0, "protocol_error")
            assert "incomplete" in last.message

            # The idle connection outlived the partial-frame timeout and still answers.
            def ask_status() -> list[ServerFrame]:
                idle.sendall(encode_frame(StatusQuery(id=2)))
                idle.shutdown(socket.SHUT_WR)
                return read_frames_until_close(idle)

            replies = await trio.to_thread.run_sync(ask_status)
            assert isinstance(replies[0], Welcome)
            assert isinstance(replies[1], StatusReply) and replies[1].id == 2
        await _assert_serving(st)


async def test_connections_over_the_cap_get_busy_and_the_others_keep_working(short_dir: Path) -> None:
    async with (
        open_stack(short_dir, extra="[limits]\nmax_connections = 2\n") as st,
        st.client() as kept,
    ):
        second = await trio.to_thread.run_sync(raw_connect, st.socket)
        with second:

            def greet() -> list[ServerFrame]:
                second.sendall(HELLO)
                decoder = FrameDecoder()
                while not (bodies := decoder.feed(second.recv(65536))):
                    pass
                return [server_decoder.decode(b) for b in bodies]

            assert isinstance((await trio.to_thread.run_sync(greet))[0], Welcome)
            frames = await trio.to_thread.run_sync(_exchange, st.socket, HELLO)
            assert len(frames) == 1
            assert isinstance(frames[0], Error) and (frames[0].id, frames[0].kind) == (0, "busy")
            assert st.server.socket_door.door.refused == 1
            with trio.fail_after(10):
                assert text_of([e async for e in kept.chat(MODEL, "still here?")]) == ANSWER


@asynccontextmanager
async def _stack_with_long_answer(
    short_dir: Path, extra: str, *, words: int = 500, word_size: int = 2048
) -> AsyncIterator[Stack]:
    """`first` streams more than a socket buffer holds (a megabyte by default); `second` the usual answer."""
    long_text = " ".join(f"{i:04d}" + "w" * word_size for i in range(words))
    async with trio.open_nursery() as nursery:
        sims = {
            "first": Simulator(models=[MODEL], text=long_text, name="first"),
            "second": Simulator(models=[MODEL], text=ANSWER, name="second"),
        }
        for sim in sims.values():
            await nursery.start(sim.run)
        path = short_dir / "d.sock"
        server = await open_daemon(config_for(sims, extra), path, nursery)
        yield Stack(sims, path, server, nursery)
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_loses_its_request_and_frees_the_provider(short_dir: Path) -> None:
    async with _stack_with_long_answer(short_dir, "[limits]\nclient_stall_timeout = 0.3\n") as st:
        stuck = await trio.to_thread.run_sync(raw_connect, st.socket)
        with stuck:
            await trio.to_thread.run_sync(
                stuck.sendall, HELLO + encode_frame(Chat(id=1, model=MODEL, request=REQUEST))
            )
            # It reads nothing: the daemon's writes stall, and after the stall timeout it lets go.
            with trio.fail_after(10):
                await st.sims["first"].wait_disconnect(1)
            frames = await trio.to_thread.run_sync(read_frames_until_close, stuck)
        texts = [f for f in frames if isinstance(f, Event) and isinstance(f.event, TextEvent)]
        assert texts, "the answer had started streaming"
        assert not any(isinstance(f, Event) and isinstance(f.event, DoneEvent) for f in frames)
        assert st.sims["first"].requests[-1].outcome == "disconnected"
        async with st.client() as c:
            first = {p.id: p for p in (await c.status()).providers}["first"]
            assert (first.in_flight, first.failures, first.state) == (0, 0, "ready")
            with trio.fail_after(10):
                events = [e async for e in c.chat(f"second/{MODEL}", "short one")]
        assert text_of(events) == ANSWER


async def test_a_request_cancelled_mid_write_leaves_no_half_frame_on_the_connection(short_dir: Path) -> None:
    # Events of 256 KB: a Unix socket takes small writes whole or not at all, but splits large ones.
    async with _stack_with_long_answer(short_dir, "", words=8, word_size=256 * 1024) as st:
        client = await trio.to_thread.run_sync(raw_connect, st.socket)
        with client:
            await trio.to_thread.run_sync(
                client.sendall, HELLO + encode_frame(Chat(id=1, model=MODEL, request=REQUEST))
            )
            # Until the daemon's write waits on the full socket buffer: a state to observe, no
            # event to wait on (the poll is bounded, and no assertion depends on its timing).
            with trio.fail_after(10):
                while not any(conn._writing is not None for conn in st.server.socket_door.connections):  # noqa: ASYNC110
                    await trio.sleep(0.01)

            def cancel_then_read_on() -> tuple[list[ServerFrame], int]:
                client.sendall(encode_frame(Cancel(id=1)))
                decoder, frames = FrameDecoder(), []
                while not any(isinstance(f, Error) for f in frames):
                    frames += [server_decoder.decode(b) for b in decoder.feed(client.recv(65536))]
                client.sendall(encode_frame(StatusQuery(id=2)))
                while not isinstance(frames[-1], StatusReply):
                    frames += [server_decoder.decode(b) for b in decoder.feed(client.recv(65536))]
                return frames, decoder.pending

            frames, left_over = await trio.to_thread.run_sync(cancel_then_read_on)
        errors = [f for f in frames if isinstance(f, Error)]
        assert [(e.id, e.kind) for e in errors] == [(1, "cancelled")]
        assert isinstance(frames[-1], StatusReply) and left_over == 0
        await _assert_serving(st, f"second/{MODEL}")


async def test_a_failing_request_is_answered_as_internal_and_the_connection_goes_on(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_stack(short_dir) as st:

        def broken_explain(model: str) -> list[str]:
            raise RuntimeError("a bug in explain")

        async def broken_chat(*args: object) -> None:
            raise ExceptionGroup("bugs in a nursery", [RuntimeError("a bug in chat")])

        monkeypatch.setattr(st.server.registry, "explain", broken_explain)
        monkeypatch.setattr(st.server.router, "chat", broken_chat)
        payload = (
            HELLO
            + encode_frame(ExplainQuery(id=1, model=MODEL))
            + encode_frame(Chat(id=2, model=MODEL, request=REQUEST))
            + encode_frame(StatusQuery(id=3))
        )
        frames = await trio.to_thread.run_sync(_exchange, st.socket, payload)
        by_id = {getattr(f, "id", None): f for f in frames[1:]}
        for rid in (1, 2):
            error = by_id[rid]
            assert isinstance(error, Error) and error.kind == "internal"
        assert isinstance(by_id[3], StatusReply)
        assert st.server.active == 0
        monkeypatch.undo()
        await _assert_serving(st)


# ------------------------------------------------------------------ peers of another user


@unix_only
async def test_the_daemon_refuses_a_peer_of_another_user(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_stack(short_dir) as st:
        monkeypatch.setattr(socket_door, "peer_uid", lambda sock: os.getuid() + 1)
        frames = await trio.to_thread.run_sync(_exchange, st.socket, HELLO + encode_frame(StatusQuery(id=1)))
        assert frames == []
        monkeypatch.undo()
        await _assert_serving(st)


@unix_only
async def test_clients_refuse_a_daemon_of_another_user(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_stack(short_dir) as st:
        monkeypatch.setattr(sync, "peer_uid", lambda sock: os.getuid() + 1)
        with pytest.raises(DaemonUnavailable, match="runs as uid"):
            await trio.to_thread.run_sync(Client(st.socket).connect)
        with pytest.raises(DaemonUnavailable, match="runs as uid"):
            async with open_client(st.socket):
                pass
        monkeypatch.undo()
        await _assert_serving(st)


# ------------------------------------------------------------------ replies that would not fit a frame


def test_models_too_large_for_a_frame_are_cut_and_flagged() -> None:
    huge = ModelsInfo(
        models=[
            CombinedModel(id=f"{i}-" + "m" * 100_000, members=[Member(provider="p", model="m")])
            for i in range(300)
        ]
    )
    data = encode_reply(ModelsReply(id=1, models=huge))
    assert len(data) <= 4 + MAX_FRAME
    reply = server_decoder.decode(data[4:])
    assert isinstance(reply, ModelsReply) and reply.models.truncated
    assert 0 < len(reply.models.models) < 300
    assert reply.models.models == huge.models[: len(reply.models.models)]


def test_cutting_is_pure_and_counts_what_was_left_out() -> None:
    models = ModelsInfo(models=[CombinedModel(id=str(i), members=[]) for i in range(5)])
    assert cut_models(models, 5) == models
    assert cut_models(models, 2) == ModelsInfo(models=models.models[:2], truncated=True)
    assert len(models.models) == 5  # the original is left as it was


def test_a_status_without_per_model_entries_is_left_alone() -> None:
    status = StatusInfo(
        daemon=DaemonInfo(pid=1, version="x", uptime_s=0.0),
        providers=[
            ProviderStatus(
                id="p",
                state="ready",
                cooldown_remaining_s=0.0,
                in_flight=0,
                requests=0,
                failures=0,
                last_error=None,
            )
        ],
    )
    assert cut_status(status, 0) == status


def test_an_event_too_large_for_a_frame_is_refused_before_anything_is_written() -> None:
    with pytest.raises(FrameTooLarge):
        encode_reply(Event(id=1, event=TextEvent("x" * (MAX_FRAME + 1))))


# ------------------------------------------------------------------ generated garbage over the real socket

_scalars = (
    hs.none()
    | hs.booleans()
    | hs.integers(min_value=-(2**63), max_value=2**64 - 1)
    | hs.floats()
    | hs.text(max_size=16)
    | hs.binary(max_size=16)
)
_values = hs.recursive(
    _scalars,
    lambda kids: hs.lists(kids, max_size=4) | hs.dictionaries(hs.text(max_size=8), kids, max_size=4),
    max_leaves=16,
)


def _shaped(
    cls: type[msgspec.Struct], overrides: dict[str, hs.SearchStrategy[Any]] | None = None
) -> hs.SearchStrategy[Any]:
    """Maps with the real field names of `cls` (each present or not), holding random values."""
    fields = {
        f.encode_name: (overrides or {}).get(f.encode_name, _values) for f in msgspec.structs.fields(cls)
    }
    tag = cls.__struct_config__.tag
    required = {"type": hs.just(tag)} if tag is not None else {}
    return hs.fixed_dictionaries(required, optional=fields)


_message = _shaped(Message, {"content": _values | hs.lists(_values, max_size=3)})
_request = _shaped(
    ChatRequest,
    {"messages": hs.lists(_message, max_size=3) | _values, "tools": hs.lists(_shaped(Tool), max_size=2)},
)
# Every request type but `shutdown` (a well-formed one would stop the daemon, as it should).
_wrong_shapes = hs.one_of(
    _shaped(Chat, {"request": _request | _values}),
    *(_shaped(cls) for cls in (Hello, StatusQuery, ModelsQuery, ExplainQuery, Reload)),
    _shaped(Cancel),
)


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _hostile(payloads: hs.SearchStrategy[bytes]) -> Callable[[Path], None]:
    """A sync property test over `payloads`: the daemon behaves, and serves the next client in full."""

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(payloads, hs.booleans(), hs.booleans())
    def check(path: Path, payload: bytes, greet: bool, read: bool) -> None:
        payload = (HELLO if greet else b"") + payload
        if read:
            _assert_well_behaved(_exchange(path, payload))
        else:
            _send_and_vanish(path, payload)  # gone before the replies
        assert _answer_text(path) == ANSWER

    return check


@pytest.mark.parametrize(
    "payloads",
    [
        hs.binary(max_size=512),
        hs.lists(_values.map(msgspec.msgpack.encode).map(_frame), min_size=1, max_size=3).map(b"".join),
        hs.lists(_wrong_shapes.map(msgspec.msgpack.encode).map(_frame), min_size=1, max_size=3).map(b"".join),
    ],
    ids=["random-bytes", "random-msgpack-frames", "frames-of-the-wrong-shape"],
)
async def test_generated_garbage_never_takes_the_daemon_down(
    short_dir: Path, payloads: hs.SearchStrategy[bytes]
) -> None:
    async with open_stack(short_dir) as st:
        with trio.fail_after(120):
            await trio.to_thread.run_sync(_hostile(payloads), st.socket)
        assert st.server.active == 0
        await _assert_serving(st)


async def test_a_client_closing_at_every_byte_of_an_exchange_leaves_the_daemon_serving(
    short_dir: Path,
) -> None:
    exchange = b"".join(
        [
            HELLO,
            encode_frame(Chat(id=1, model=MODEL, request=REQUEST)),
            encode_frame(StatusQuery(id=2)),
            encode_frame(ModelsQuery(id=3)),
            encode_frame(ExplainQuery(id=4, model=MODEL)),
        ]
    )

    def close_at_every_offset() -> None:
        for offset in range(len(exchange) + 1):
            _send_and_vanish(st.socket, exchange[:offset])
            assert _answer_text(st.socket) == ANSWER, offset

    async with open_stack(short_dir) as st:
        with trio.fail_after(120):
            await trio.to_thread.run_sync(close_at_every_offset)
        await _assert_serving(st)
