"""The tcp transport: the endpoint file, the socket token, the handshake, claiming the address.

These tests force tcp whatever the suite runs with; the rest of the suite runs over
whichever transport $COMBINED_MODELS_TRANSPORT names (`./scripts/test` runs both).
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio

from combined_models.chat import ErrorKind
from combined_models.client.aio import open_client
from combined_models.client.sync import Client, DaemonUnavailable
from combined_models.config import ConfigError, parse_config
from combined_models.daemon import open_daemon
from combined_models.daemon.server import AlreadyRunning, claim_endpoint
from combined_models.daemon.socket_door import Connection
from combined_models.protocol import (
    PROTOCOL_VERSION,
    Chat,
    Error,
    Hello,
    ServerFrame,
    Shutdown,
    StatusQuery,
    client_decoder,
    encode_frame,
)
from combined_models.simulator import Simulator
from combined_models.transport import (
    ENV_TRANSPORT,
    HANDSHAKE_FAILED,
    MAX_HELLO,
    Endpoint,
    TransportError,
    choose_transport,
    decode_endpoint,
    encode_endpoint,
    load_or_create_token,
    read_endpoint,
    read_token,
    token_path,
    write_endpoint,
)

from .conftest import ANSWER, MODEL, Stack, config_for, open_stack, read_frames_until_close, text_of
from .test_hostile_socket import REQUEST


@pytest.fixture(autouse=True)
def tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TRANSPORT, "tcp")


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every frame that reaches a connection's request handling (none may, before a good handshake)."""
    seen: list[object] = []
    real = Connection._dispatch

    async def spy(self: Connection, frame: object, nursery: trio.Nursery) -> None:
        seen.append(frame)
        await real(self, frame, nursery)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "_dispatch", spy)
    return seen


# ------------------------------------------------------------------ pure parts


def test_the_environment_overrides_the_config_which_overrides_the_default() -> None:
    assert choose_transport(None, {}) == ("unix" if hasattr(socket, "AF_UNIX") else "tcp")
    assert choose_transport("tcp", {}) == "tcp"
    assert choose_transport("tcp", {ENV_TRANSPORT: "unix"}) == "unix"
    assert choose_transport("unix", {ENV_TRANSPORT: "tcp"}) == "tcp"
    assert choose_transport("unix", {ENV_TRANSPORT: ""}) == "unix"
    with pytest.raises(TransportError, match=ENV_TRANSPORT):
        choose_transport(None, {ENV_TRANSPORT: "pipe"})


def test_the_config_key_takes_unix_or_tcp() -> None:
    assert parse_config('transport = "tcp"\n').transport == "tcp"
    assert parse_config('transport = "unix"\n').transport == "unix"
    assert parse_config("").transport is None
    with pytest.raises(ConfigError, match="transport"):
        parse_config('transport = "udp"\n')


def test_endpoint_files_round_trip_and_anything_odd_is_refused() -> None:
    ep = Endpoint(host="127.0.0.1", port=4242, pid=77, token_file="/x/socket-token")
    assert decode_endpoint(encode_endpoint(ep)) == ep
    assert json.loads(encode_endpoint(ep)) == {
        "transport": "tcp",
        "address": "127.0.0.1:4242",
        "pid": 77,
        "token_file": "/x/socket-token",
    }
    good = {"transport": "tcp", "address": "127.0.0.1:4242", "pid": 77}
    assert decode_endpoint(json.dumps(good).encode()).token_file == ""  # the default token file
    bad: object
    for bad in (
        {**good, "address": "10.0.0.1:4242"},  # not loopback: never
        {**good, "address": "127.0.0.1:0"},
        {**good, "address": "127.0.0.1:99999"},
        {**good, "address": "127.0.0.1"},
        {**good, "pid": "77"},
        {**good, "pid": True},
        {**good, "transport": "pipe"},
        {"address": "127.0.0.1:4242", "pid": 77},
        [],
    ):
        with pytest.raises(ValueError):
            decode_endpoint(json.dumps(bad).encode())


def test_a_hello_without_a_token_is_the_old_hello() -> None:
    old = msgspec.msgpack.encode({"type": "hello", "version": PROTOCOL_VERSION, "client": "old"})
    assert client_decoder.decode(old) == Hello(version=PROTOCOL_VERSION, client="old", token="")


def test_clients_refuse_an_endpoint_file_others_may_write(short_dir: Path) -> None:
    path = short_dir / "d.sock"
    write_endpoint(path, Endpoint(host="127.0.0.1", port=4242, pid=1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_endpoint(path).port == 4242
    path.chmod(0o622)
    with pytest.raises(TransportError, match="not a private file"):
        read_endpoint(path)
    with pytest.raises(DaemonUnavailable, match="not a private file"):
        Client(path).connect()


# ------------------------------------------------------------------ a daemon over tcp


async def test_a_tcp_daemon_writes_a_private_endpoint_file_and_serves_both_clients(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_TRANSPORT)  # the config alone asks for tcp
    path = short_dir / "d.sock"
    async with trio.open_nursery() as sims, trio.open_nursery() as nursery:
        sim = Simulator(models=[MODEL], text=ANSWER, name="first")
        await sims.start(sim.run)
        cfg = msgspec.structs.replace(config_for({"first": sim}), transport="tcp")
        server = await open_daemon(cfg, path, nursery)

        st = path.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        doc = json.loads(path.read_bytes())
        assert doc["transport"] == "tcp" and doc["pid"] == os.getpid()
        assert doc["address"].startswith("127.0.0.1:") and doc["token_file"] == str(token_path())
        assert stat.S_IMODE(token_path().stat().st_mode) == 0o600
        assert len(read_token()) >= 40

        def sync_client() -> tuple[str, str]:
            with Client(path, timeout=10) as c:
                text = "".join(getattr(e, "text", "") for e in c.chat(MODEL, "hi"))
                return text, c.status().daemon.transport

        assert await trio.to_thread.run_sync(sync_client) == (ANSWER, "tcp")
        async with open_client(path) as c:
            assert text_of([e async for e in c.chat(MODEL, "hi")]) == ANSWER
            status = await c.status()
            assert status.daemon.transport == "tcp" and status.daemon.socket == str(path)
        assert len(sim.requests) == 2
        server.request_stop()  # the daemon's nursery ends with it
        sims.cancel_scope.cancel()
    assert not path.exists()


async def test_a_unix_daemon_says_so_in_its_status(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets here")
    monkeypatch.setenv(ENV_TRANSPORT, "unix")
    async with open_stack(short_dir, ("first",)) as st, st.client() as c:
        assert stat.S_ISSOCK(st.socket.lstat().st_mode)
        assert (await c.status()).daemon.transport == "unix"


def test_a_damaged_token_file_is_moved_aside_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    first = load_or_create_token()
    assert load_or_create_token() == first == read_token()
    token_path().write_text("two words\n")
    second = load_or_create_token()
    assert second != first and read_token() == second
    assert stat.S_IMODE(token_path().stat().st_mode) == 0o600
    assert [p.name.startswith("socket-token.bad-") for p in token_path().parent.iterdir()].count(True) == 1
    assert "moved it to" in caplog.text


async def test_the_token_is_kept_across_restarts(short_dir: Path) -> None:
    tokens = []
    for _ in range(2):
        async with open_stack(short_dir, ("first",)) as st:
            assert text_of(await st.ask()) == ANSWER
            tokens.append(read_token())
            assert stat.S_IMODE(token_path().stat().st_mode) == 0o600
    assert tokens[0] == tokens[1]


# ------------------------------------------------------------------ the handshake


def _connect(path: Path) -> socket.socket:
    endpoint = read_endpoint(path)
    s = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
    return s


def _exchange(path: Path, payload: bytes) -> list[ServerFrame]:
    with _connect(path) as s:
        s.sendall(payload)
        return read_frames_until_close(s)


# Frames that would be served, were they read: a status, a chat, a shutdown.
_AFTER = (
    encode_frame(StatusQuery(id=1))
    + encode_frame(Chat(id=2, model=MODEL, request=REQUEST))
    + encode_frame(Shutdown(id=3))
)


def _payloads() -> Iterator[tuple[str, bytes]]:
    yield "wrong-token", encode_frame(Hello(version=PROTOCOL_VERSION, token="x" * 43)) + _AFTER
    yield "missing-token", encode_frame(Hello(version=PROTOCOL_VERSION)) + _AFTER
    yield "not-a-hello", encode_frame(StatusQuery(id=1)) + _AFTER
    yield "garbage", b"\x00\x00\x00\x05\xc1\xc1garbage" + _AFTER
    yield "not-msgpack-framing", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    # A length past the bound is refused on sight, whatever would follow.
    yield "oversized", (MAX_HELLO + 1).to_bytes(4, "big") + b"\x82" + b"x" * 100


@pytest.mark.parametrize("payload", [p for _, p in _payloads()], ids=[n for n, _ in _payloads()])
async def test_anything_but_a_hello_with_the_token_is_refused_unread(
    short_dir: Path, payload: bytes, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",)) as st:
        with trio.fail_after(5):
            frames = await trio.to_thread.run_sync(_exchange, st.socket, payload)
        assert frames == [Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message=HANDSHAKE_FAILED)]
        assert dispatched == [] and st.sims["first"].requests == []
        assert not st.server.stopping  # the shutdown frame behind it was never read
        await _still_serving(st, dispatched)


async def test_an_oversized_hello_is_refused_even_with_the_right_token(
    short_dir: Path, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",)) as st:
        big = encode_frame(Hello(version=PROTOCOL_VERSION, client="c" * MAX_HELLO, token=read_token()))
        with trio.fail_after(5):
            frames = await trio.to_thread.run_sync(_exchange, st.socket, big[: MAX_HELLO // 2])
        assert frames == [Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message=HANDSHAKE_FAILED)]
        assert dispatched == []
        await _still_serving(st, dispatched)


@pytest.mark.parametrize("sent", ["nothing", "half-a-hello"])
async def test_a_stalled_first_frame_is_closed_after_the_partial_frame_timeout(
    short_dir: Path, sent: str, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",), extra="[limits]\npartial_frame_timeout = 0.3\n") as st:
        hello = encode_frame(Hello(version=PROTOCOL_VERSION, token=read_token()))
        prefix = b"" if sent == "nothing" else hello[: len(hello) // 2]
        started = trio.current_time()
        with trio.fail_after(5):
            frames = await trio.to_thread.run_sync(_exchange, st.socket, prefix)
        assert trio.current_time() - started >= 0.25
        assert frames == [Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message=HANDSHAKE_FAILED)]
        assert dispatched == []
        await _still_serving(st, dispatched)


async def test_the_right_token_lets_frames_through_even_pipelined(
    short_dir: Path, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",)) as st:
        hello = encode_frame(Hello(version=PROTOCOL_VERSION, token=read_token()))

        def pipelined() -> list[ServerFrame]:
            with _connect(st.socket) as s:
                s.sendall(hello + encode_frame(StatusQuery(id=1)) + encode_frame(Shutdown(id=2)))
                return read_frames_until_close(s)

        with trio.fail_after(10):
            frames = await trio.to_thread.run_sync(pipelined)
        assert [type(f).__name__ for f in frames] == ["Welcome", "StatusReply", "Ok"]
        assert [type(f).__name__ for f in dispatched] == ["StatusQuery", "Shutdown"]


async def test_the_token_is_compared_in_constant_time(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what the socket door calls
    async with open_stack(short_dir, ("first",)) as st:
        assert text_of(await st.ask()) == ANSWER
        await trio.to_thread.run_sync(_exchange, st.socket, encode_frame(Hello(version=1, token="nope")))
        token = read_token().encode()
        assert calls == [(token, token), (b"nope", token)]


async def _still_serving(st: Stack, dispatched: list[object]) -> None:
    with trio.fail_after(10):
        assert text_of(await st.ask()) == ANSWER
    assert len(st.sims["first"].requests) == 1 and len(dispatched) == 1


# ------------------------------------------------------------------ claiming the address


def test_a_stale_endpoint_file_is_replaced(short_dir: Path) -> None:
    path = short_dir / "d.sock"
    with socket.socket() as gone:  # a port that answers no more: what a SIGKILLed daemon leaves
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    write_endpoint(path, Endpoint(host="127.0.0.1", port=port, pid=999_999))
    with claim_endpoint(path, "tcp") as sock:
        assert read_endpoint(path) == Endpoint(
            host="127.0.0.1", port=sock.getsockname()[1], pid=os.getpid(), token_file=str(token_path())
        )
    assert not path.exists()
    path.write_text("not an endpoint file\n")  # a damaged one: nothing can be reached through it
    path.chmod(0o600)
    with claim_endpoint(path, "tcp"):
        assert read_endpoint(path).pid == os.getpid()


def test_a_second_daemon_on_the_same_path_is_already_running(short_dir: Path) -> None:
    path = short_dir / "d.sock"
    with claim_endpoint(path, "tcp"):
        with pytest.raises(AlreadyRunning), claim_endpoint(path, "tcp"):  # the lock says so
            pass
        with pytest.raises(AlreadyRunning), claim_endpoint(path, "unix"):  # nor may a unix daemon
            pass
        assert read_endpoint(path).pid == os.getpid()  # the first one's file is untouched
    # A live endpoint whose daemon holds no lock (another version, another lock dir): the port answers.
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        write_endpoint(path, Endpoint(host="127.0.0.1", port=live.getsockname()[1], pid=os.getpid()))
        with pytest.raises(AlreadyRunning), claim_endpoint(path, "tcp"):
            pass
