"""The tcp transport: the endpoint file, the socket token, the handshake proofs, claiming the address.

These tests force tcp whatever the suite runs with; the rest of the suite runs over
whichever transport $COMBINED_MODELS_TRANSPORT names (`./scripts/test` runs both).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio

from combined_models.chat import ErrorKind
from combined_models.client import sync as sync_client
from combined_models.client.aio import open_client
from combined_models.client.sync import Client, ConnectionClosed, DaemonUnavailable
from combined_models.config import ConfigError, parse_config
from combined_models.daemon import open_daemon
from combined_models.daemon.server import AlreadyRunning, claim_endpoint
from combined_models.daemon.socket_door import Connection
from combined_models.paths import state_dir, write_private
from combined_models.protocol import (
    PROTOCOL_VERSION,
    Chat,
    Error,
    FrameDecoder,
    Hello,
    ServerFrame,
    Shutdown,
    StatusQuery,
    Welcome,
    client_decoder,
    encode_frame,
    server_decoder,
)
from combined_models.simulator import Simulator
from combined_models.transport import (
    ENV_TRANSPORT,
    HANDSHAKE_FAILED,
    MAX_HELLO,
    Endpoint,
    TransportError,
    choose_transport,
    client_proof,
    decode_endpoint,
    encode_endpoint,
    new_nonce,
    read_endpoint,
    read_token,
    server_proof,
    token_path,
    valid_nonce,
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


def test_a_hello_and_a_welcome_without_proofs_are_the_old_ones() -> None:
    old = msgspec.msgpack.encode({"type": "hello", "version": PROTOCOL_VERSION, "client": "old"})
    assert client_decoder.decode(old) == Hello(version=PROTOCOL_VERSION, client="old", nonce="", proof="")
    welcome = msgspec.msgpack.encode(
        {"type": "welcome", "version": PROTOCOL_VERSION, "server": "s", "pid": 1}
    )
    assert server_decoder.decode(welcome) == Welcome(version=PROTOCOL_VERSION, server="s", pid=1, proof="")
    assert "token" not in Hello.__struct_fields__  # the token itself has no place on the wire


def test_the_proofs_are_hmacs_of_the_nonce_under_two_labels() -> None:
    token, nonce = "t" * 43, "ab" * 16
    expected = hmac.new(token.encode(), b"cm-client\0" + nonce.encode(), hashlib.sha256).hexdigest()
    assert client_proof(token, nonce) == expected
    assert server_proof(token, nonce) == (
        hmac.new(token.encode(), b"cm-server\0" + nonce.encode(), hashlib.sha256).hexdigest()
    )
    assert client_proof(token, nonce) != server_proof(token, nonce)  # a reflected hello proves nothing
    assert client_proof("u" * 43, nonce) != client_proof(token, nonce)
    assert valid_nonce(new_nonce()) and new_nonce() != new_nonce() and len(new_nonce()) == 32
    assert valid_nonce("AB" * 16) and valid_nonce("a" * 128)
    for bad in ("", "ab" * 15 + "a", "a" * 129, "zz" * 16, "ab" * 15 + "é!", " " + "a" * 32):
        assert not valid_nonce(bad), bad


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
        assert doc["address"].startswith("127.0.0.1:") and doc["token_file"] == str(token_path(path))
        assert token_path(path).parent == state_dir()
        assert stat.S_IMODE(token_path(path).stat().st_mode) == 0o600
        assert len(read_token(token_path(path))) >= 40

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
    assert not path.exists() and not token_path(path).exists()


async def test_a_unix_daemon_says_so_in_its_status(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets here")
    monkeypatch.setenv(ENV_TRANSPORT, "unix")
    async with open_stack(short_dir, ("first",)) as st, st.client() as c:
        assert stat.S_ISSOCK(st.socket.lstat().st_mode)
        assert (await c.status()).daemon.transport == "unix"


def _token(st: Stack) -> str:
    """The token of the daemon of `st`, from the file its endpoint file names (what clients read)."""
    return read_token(Path(read_endpoint(st.socket).token_file))


def _hello(token: str, nonce: str | None = None, **fields: str) -> Hello:
    nonce = new_nonce() if nonce is None else nonce
    return Hello(version=PROTOCOL_VERSION, nonce=nonce, proof=client_proof(token, nonce), **fields)


async def test_each_start_makes_a_new_token_and_an_old_proof_is_refused(
    short_dir: Path, dispatched: list[object]
) -> None:
    tokens: list[str] = []
    replayed: bytes = b""
    for run in range(2):
        async with open_stack(short_dir, ("first",)) as st:
            token_file = token_path(st.socket)
            assert read_endpoint(st.socket).token_file == str(token_file)
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            tokens.append(_token(st))
            if run == 0:
                # What a process squatting the first daemon's port could have kept from a client.
                replayed = encode_frame(_hello(tokens[0])) + encode_frame(StatusQuery(id=1))
                frames = await trio.to_thread.run_sync(
                    _exchange, st.socket, replayed + encode_frame(Shutdown(id=2))
                )
                assert [type(f).__name__ for f in frames] == ["Welcome", "StatusReply", "Ok"]
            else:
                with trio.fail_after(5):
                    frames = await trio.to_thread.run_sync(_exchange, st.socket, replayed)
                assert frames == [Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message=HANDSHAKE_FAILED)]
                assert text_of(await st.ask()) == ANSWER  # its own clients get through
        assert not token_file.exists()  # removed on stop, with the endpoint file
    assert tokens[0] != tokens[1]


def test_daemons_on_two_socket_paths_keep_their_own_tokens(short_dir: Path) -> None:
    first, second = short_dir / "a.sock", short_dir / "b.sock"
    with claim_endpoint(first, "tcp"):
        with claim_endpoint(second, "tcp"):
            files = [Path(read_endpoint(p).token_file) for p in (first, second)]
            assert files == [token_path(first), token_path(second)] and files[0] != files[1]
            assert all(f.parent == state_dir() for f in files)  # the same state dir
            tokens = [read_token(f) for f in files]
            assert tokens[0] != tokens[1]
        assert not files[1].exists()
        assert read_token(files[0]) == tokens[0]  # the other daemon's stop left it alone
    assert not files[0].exists()


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
    nonce = "ab" * 16
    yield "wrong-proof", encode_frame(_hello("x" * 43, nonce)) + _AFTER  # a proof under another token
    yield "garbled-proof", encode_frame(Hello(version=PROTOCOL_VERSION, nonce=nonce, proof="0" * 64)) + _AFTER
    yield "missing-proof", encode_frame(Hello(version=PROTOCOL_VERSION, nonce=nonce)) + _AFTER
    yield "missing-nonce", encode_frame(Hello(version=PROTOCOL_VERSION)) + _AFTER
    # Yesterday's hello, carrying a token itself: the field is ignored, the proof is missing.
    old = msgspec.msgpack.encode({"type": "hello", "version": PROTOCOL_VERSION, "token": "x" * 43})
    yield "a-token-not-a-proof", len(old).to_bytes(4, "big") + old + _AFTER
    yield "not-a-hello", encode_frame(StatusQuery(id=1)) + _AFTER
    yield "garbage", b"\x00\x00\x00\x05\xc1\xc1garbage" + _AFTER
    yield "not-msgpack-framing", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    # A length past the bound is refused on sight, whatever would follow.
    yield "oversized", (MAX_HELLO + 1).to_bytes(4, "big") + b"\x82" + b"x" * 100


@pytest.mark.parametrize("payload", [p for _, p in _payloads()], ids=[n for n, _ in _payloads()])
async def test_anything_but_a_hello_proving_the_token_is_refused_unread(
    short_dir: Path, payload: bytes, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",)) as st:
        with trio.fail_after(5):
            frames = await trio.to_thread.run_sync(_exchange, st.socket, payload)
        assert frames == [Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message=HANDSHAKE_FAILED)]
        assert dispatched == [] and st.sims["first"].requests == []
        assert not st.server.stopping  # the shutdown frame behind it was never read
        await _still_serving(st, dispatched)


@pytest.mark.parametrize(
    "nonce",
    ["", "ab" * 15 + "a", "a" * 129, "zz" * 16, "ab" * 15 + "é!", "ab" * 16 + "\n"],
    ids=["empty", "short", "long", "not-hex", "not-ascii", "trailing-newline"],
)
async def test_a_bad_nonce_is_refused_even_with_its_proof(
    short_dir: Path, nonce: str, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",)) as st:
        payload = encode_frame(_hello(_token(st), nonce)) + _AFTER
        with trio.fail_after(5):
            frames = await trio.to_thread.run_sync(_exchange, st.socket, payload)
        assert frames == [Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message=HANDSHAKE_FAILED)]
        assert dispatched == [] and not st.server.stopping
        await _still_serving(st, dispatched)


async def test_an_oversized_hello_is_refused_even_with_the_right_proof(
    short_dir: Path, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",)) as st:
        big = encode_frame(_hello(_token(st), client="c" * MAX_HELLO))
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
        hello = encode_frame(_hello(_token(st)))
        prefix = b"" if sent == "nothing" else hello[: len(hello) // 2]
        started = trio.current_time()
        with trio.fail_after(5):
            frames = await trio.to_thread.run_sync(_exchange, st.socket, prefix)
        assert trio.current_time() - started >= 0.25
        assert frames == [Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message=HANDSHAKE_FAILED)]
        assert dispatched == []
        await _still_serving(st, dispatched)


async def test_the_right_proof_lets_frames_through_even_pipelined_and_the_welcome_proves_the_daemon(
    short_dir: Path, dispatched: list[object]
) -> None:
    async with open_stack(short_dir, ("first",)) as st:
        token = _token(st)
        hello = _hello(token)

        def pipelined() -> list[ServerFrame]:
            with _connect(st.socket) as s:
                s.sendall(
                    encode_frame(hello) + encode_frame(StatusQuery(id=1)) + encode_frame(Shutdown(id=2))
                )
                return read_frames_until_close(s)

        with trio.fail_after(10):
            frames = await trio.to_thread.run_sync(pipelined)
        assert [type(f).__name__ for f in frames] == ["Welcome", "StatusReply", "Ok"]
        assert isinstance(frames[0], Welcome) and frames[0].proof == server_proof(token, hello.nonce)
        assert [type(f).__name__ for f in dispatched] == ["StatusQuery", "Shutdown"]


async def test_both_proofs_are_compared_in_constant_time(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what the socket door and both clients call
    nonces: list[str] = []

    def fresh() -> str:
        nonces.append(new_nonce())
        return nonces[-1]

    monkeypatch.setattr(sync_client, "new_nonce", fresh)  # both clients' handshakes
    async with open_stack(short_dir, ("first",)) as st:
        assert text_of(await st.ask()) == ANSWER  # the async client
        token = _token(st)

        def sync_status() -> None:
            with Client(st.socket, timeout=10) as c:
                c.status()

        await trio.to_thread.run_sync(sync_status)
        # Per good connection: the daemon checks the client's proof, then the client the daemon's.
        expected = [
            (proof.encode(), proof.encode())
            for n in nonces
            for proof in (client_proof(token, n), server_proof(token, n))
        ]
        assert len(nonces) == 2 and calls == expected
        calls.clear()
        bad = Hello(version=PROTOCOL_VERSION, nonce="ab" * 16, proof="nope")
        await trio.to_thread.run_sync(_exchange, st.socket, encode_frame(bad))
        assert calls == [(b"nope", client_proof(token, "ab" * 16).encode())]


async def _still_serving(st: Stack, dispatched: list[object]) -> None:
    with trio.fail_after(10):
        assert text_of(await st.ask()) == ANSWER
    assert len(st.sims["first"].requests) == 1 and len(dispatched) == 1


# ------------------------------------------------------------------ a process that is not the daemon

STALE_TOKEN = "stale-token-of-a-dead-daemon-" + "s" * 14
NOT_YOURS = "could not prove it is your daemon"


@asynccontextmanager
async def squatter(path: Path, reply: Callable[[Hello], bytes]) -> AsyncIterator[bytearray]:
    """What a client meets after a daemon died leaving its files: another process on the port they name.

    A plain loopback listener that records every byte the one client sends, answers the hello
    with `reply(hello)` and reads on until the client hangs up; the bytes are checked on exit.
    """
    token_file = token_path(path)
    write_private(token_file, STALE_TOKEN.encode() + b"\n")  # the dead daemon's (the client reads it)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    write_endpoint(path, Endpoint(host="127.0.0.1", port=port, pid=999_999, token_file=str(token_file)))
    received = bytearray()

    async def serve() -> None:
        stream = await listeners[0].accept()
        async with stream:
            decoder, answered = FrameDecoder(), False
            while data := await stream.receive_some(65536):
                received.extend(data)
                bodies = decoder.feed(data)
                if bodies and not answered:
                    answered = True
                    hello = client_decoder.decode(bodies[0])
                    assert isinstance(hello, Hello)
                    await stream.send_all(reply(hello))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield received
    await listeners[0].aclose()
    _only_a_hello_was_sent(bytes(received))


def _only_a_hello_was_sent(data: bytes) -> None:
    assert STALE_TOKEN.encode() not in data  # the token never travels
    size = int.from_bytes(data[:4], "big")
    assert len(data) == 4 + size, "the client sent something after its hello"
    hello = client_decoder.decode(data[4:])
    assert isinstance(hello, Hello) and valid_nonce(hello.nonce)
    assert hello.proof == client_proof(STALE_TOKEN, hello.nonce)


def _welcome(proof: str) -> bytes:
    return encode_frame(Welcome(version=PROTOCOL_VERSION, server="combined-models 9", pid=1, proof=proof))


_REPLIES: dict[str, Callable[[Hello], bytes]] = {
    "welcome-without-proof": lambda hello: _welcome(""),
    "welcome-with-a-made-up-proof": lambda hello: _welcome("0" * 64),
    "welcome-reflecting-the-hello": lambda hello: _welcome(hello.proof),
    "welcome-proving-another-token": lambda hello: _welcome(server_proof("x" * 43, hello.nonce)),
}


@pytest.mark.parametrize("reply", list(_REPLIES.values()), ids=list(_REPLIES))
async def test_the_sync_client_refuses_a_welcome_that_proves_nothing(
    short_dir: Path, reply: Callable[[Hello], bytes]
) -> None:
    path = short_dir / "d.sock"
    async with squatter(path, reply):

        def connect() -> None:
            with Client(path, timeout=5) as c:
                c.status()  # never sent

        with pytest.raises(
            DaemonUnavailable, match=f"127.0.0.1:[0-9]+ {NOT_YOURS} \\(a stale endpoint file\\?\\)"
        ):
            await trio.to_thread.run_sync(connect)


@pytest.mark.parametrize("reply", list(_REPLIES.values()), ids=list(_REPLIES))
async def test_the_async_client_refuses_a_welcome_that_proves_nothing(
    short_dir: Path, reply: Callable[[Hello], bytes]
) -> None:
    path = short_dir / "d.sock"
    async with squatter(path, reply):
        with pytest.raises(DaemonUnavailable, match=f"127.0.0.1:[0-9]+ {NOT_YOURS}"):
            async with open_client(path) as c:
                await c.status()  # never sent


async def test_a_silent_listener_learns_no_token(short_dir: Path) -> None:
    path = short_dir / "d.sock"
    async with squatter(path, lambda hello: b""):

        def connect() -> None:
            with Client(path, timeout=0.5):
                pass

        with pytest.raises(ConnectionClosed):
            await trio.to_thread.run_sync(connect)


# ------------------------------------------------------------------ claiming the address


def test_a_stale_endpoint_file_is_replaced(short_dir: Path) -> None:
    path = short_dir / "d.sock"
    with socket.socket() as gone:  # a port that answers no more: what a SIGKILLed daemon leaves
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    write_endpoint(path, Endpoint(host="127.0.0.1", port=port, pid=999_999))
    with claim_endpoint(path, "tcp") as sock:
        assert read_endpoint(path) == Endpoint(
            host="127.0.0.1", port=sock.getsockname()[1], pid=os.getpid(), token_file=str(token_path(path))
        )
        assert token_path(path).exists()
    assert not path.exists() and not token_path(path).exists()
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
