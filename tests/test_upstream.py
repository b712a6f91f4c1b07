"""The chat path's HTTP/1.1 client (daemon/upstream.py) against real loopback servers.

The servers here are written inline and send raw bytes, so each test decides exactly what
the client sees on the wire. Nothing waits on real time: tests synchronize on events, and
the few that need time to pass use trio's MockClock.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
import trustme

from combined_models.daemon import upstream
from combined_models.daemon.dialects.urls import host_header
from combined_models.daemon.upstream import (
    KEEPALIVE_EXPIRY,
    USER_AGENT,
    ConnectFailed,
    ConnectionBroken,
    Pool,
    Response,
    parse_target,
)
from combined_models.simulator import Simulator

BUDGET = 5.0  # seconds any one test may take before it fails instead of hanging


# --- the server side -------------------------------------------------------------------------


@dataclass
class Request:
    """One request as it arrived: the raw head, then the body its content-length announced."""

    head: bytes
    body: bytes

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("ascii")

    @property
    def header_list(self) -> list[tuple[str, str]]:
        """(lower-cased name, value) in wire order."""
        pairs = []
        for line in self.head.split(b"\r\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            pairs.append((name.strip().lower(), value.strip()))
        return pairs

    def header(self, name: str) -> str:
        values = [v for n, v in self.header_list if n == name]
        assert len(values) == 1, f"{name}: {values!r} in {self.head!r}"
        return values[0]


class Wire:
    """The server's end of one connection: requests parsed by hand, responses written raw."""

    def __init__(self, stream: trio.abc.Stream, index: int) -> None:
        self.stream = stream
        self.index = index  # 1 for the first connection the server accepted
        self._buffer = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self._buffer += data
        return bool(data)

    async def read_request(self) -> Request | None:
        """The next request; None when the client closed the connection between requests."""
        while b"\r\n\r\n" not in self._buffer:
            if not await self._fill():
                assert not self._buffer, f"EOF inside a request head: {bytes(self._buffer)!r}"
                return None
        head, _, _ = bytes(self._buffer).partition(b"\r\n\r\n")
        del self._buffer[: len(head) + 4]
        request = Request(head, b"")
        length = int(dict(request.header_list).get("content-length", "0"))
        while len(self._buffer) < length:
            assert await self._fill(), "EOF inside a request body"
        request.body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return request

    async def expect_request(self) -> Request:
        request = await self.read_request()
        assert request is not None, "the client closed the connection instead of sending a request"
        return request

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_eof(self) -> None:
        """Until the client closes (or resets) the connection; nothing else may arrive first."""
        try:
            while await self._fill():
                pass
        except trio.BrokenResourceError:
            pass
        assert not self._buffer, f"unexpected bytes from the client: {bytes(self._buffer)!r}"

    def reset(self) -> None:
        """Abort the connection: the client sees a TCP RST instead of a FIN."""
        assert isinstance(self.stream, trio.SocketStream)
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


Handler = Callable[[Wire], Awaitable[None]]


@dataclass
class Server:
    port: int
    connections: int = 0  # accepted so far
    closed: list[int] = field(default_factory=list)  # indexes of connections whose handler returned
    changed: trio.Event = field(default_factory=trio.Event)  # set (and replaced) on every change

    def url(self, path: str = "/v1/chat", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.changed.wait()

    def _note_change(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@asynccontextmanager
async def serve(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None, budget: float = BUDGET
) -> AsyncIterator[Server]:
    """Serve `handler` per connection on 127.0.0.1 (TLS when given a context) for the block."""
    with trio.fail_after(budget):
        async with trio.open_nursery() as nursery:
            listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
            server = Server(port=listeners[0].socket.getsockname()[1])
            wrapped: list[trio.abc.Listener[Any]] = list(listeners)
            if ssl_context is not None:
                wrapped = [trio.SSLListener(x, ssl_context, https_compatible=True) for x in listeners]

            async def run(stream: trio.abc.Stream) -> None:
                server.connections += 1
                wire = Wire(stream, server.connections)
                server._note_change()
                try:
                    await handler(wire)
                except trio.BrokenResourceError:
                    pass  # the client went away (or refused our certificate): the test decides
                finally:
                    await trio.aclose_forcefully(stream)
                    server.closed.append(wire.index)
                    server._note_change()

            nursery.start_soon(trio.serve_listeners, run, wrapped)
            yield server
            nursery.cancel_scope.cancel()


def respond(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def answering(*bodies: bytes) -> Handler:
    """Each connection answers its requests in turn with the next of `bodies` (shared)."""
    left = list(bodies)

    async def handler(wire: Wire) -> None:
        while await wire.read_request() is not None:
            await wire.send(respond(left.pop(0)))

    return handler


async def read_all(response: Response) -> bytes:
    parts = []
    while (chunk := await response.next_chunk()) is not None:
        parts.append(chunk)
    return b"".join(parts)


async def fetch(pool: Pool, url: str, headers: Mapping[str, str] | None = None, body: bytes = b"") -> bytes:
    response = await pool.stream("POST", url, headers or {}, body)
    try:
        assert response.status == 200
        return await read_all(response)
    finally:
        await response.aclose()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool(5.0)
    yield pool
    pool.close()


# --- URLs and the Host header ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "authority", "path"),
    [
        (
            "http://example.com/v1/chat?a=1&b=2#frag",
            "http",
            "example.com",
            80,
            "example.com",
            "/v1/chat?a=1&b=2",
        ),
        ("https://API.Example.com", "https", "api.example.com", 443, "api.example.com", "/"),
        ("https://h.example:443/x", "https", "h.example", 443, "h.example", "/x"),
        ("https://h.example:8443/x", "https", "h.example", 8443, "h.example:8443", "/x"),
        ("http://h.example:443/", "http", "h.example", 443, "h.example:443", "/"),
        ("http://h.example?q=1", "http", "h.example", 80, "h.example", "/?q=1"),
        ("http://[::1]:8080/v1", "http", "::1", 8080, "[::1]:8080", "/v1"),
        ("https://[2001:DB8::1]/v1", "https", "2001:db8::1", 443, "[2001:db8::1]", "/v1"),
    ],
)
def test_parse_target_splits_a_url_for_the_wire(
    url: str, scheme: str, host: str, port: int, authority: str, path: str
) -> None:
    target = parse_target(url)
    assert (target.scheme, target.host, target.port) == (scheme, host, port)
    assert target.origin == (scheme, host, port)
    assert target.authority == authority == host_header(scheme, host, port)
    assert target.path == path


@pytest.mark.parametrize("url", ["ftp://h.example/x", "http:///no-host", "h.example/x", "http://h:99999/"])
def test_parse_target_refuses_what_it_cannot_reach(url: str) -> None:
    with pytest.raises(ValueError):
        parse_target(url)


def test_host_header_omits_default_ports_and_brackets_ipv6() -> None:
    assert host_header("http", "Example.COM", 80) == "example.com"
    assert host_header("https", "example.com", 443) == "example.com"
    assert host_header("https", "example.com", 80) == "example.com:80"
    assert host_header("http", "127.0.0.1", 8080) == "127.0.0.1:8080"
    assert host_header("http", "::1", 80) == "[::1]"
    assert host_header("https", "fe80::1", 8443) == "[fe80::1]:8443"


# --- bodies ----------------------------------------------------------------------------------


async def test_content_length_body_arrives_whole_then_none(pool: Pool) -> None:
    body = bytes(range(256)) * 40  # 10240 bytes, sent in uneven pieces

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), 3000):
            await wire.send(body[start : start + 3000])
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"{}")
        assert response.status == 200
        assert response.headers["content-length"] == str(len(body))
        assert await read_all(response) == body
        assert await response.next_chunk() is None  # and it stays at the end
        await response.aclose()


async def test_chunked_body_of_many_small_chunks_is_read_completely(pool: Pool) -> None:
    pieces = [f"piece {i};".encode() for i in range(300)]

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(CHUNKED_HEAD)
        for piece in pieces:
            await wire.send(chunked(piece)[: -len(b"0\r\n\r\n")])  # one HTTP chunk per write
        await wire.send(b"0\r\n\r\n")
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        assert await read_all(response) == b"".join(pieces)
        assert await response.next_chunk() is None
        await response.aclose()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_next_chunk_returns_everything_already_received_in_one_call(pool: Pool, framing: str) -> None:
    pieces = [b"data: {%d}\n\n" % i for i in range(50)]
    go, sent = trio.Event(), trio.Event()

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        if framing == "chunked":
            await wire.send(CHUNKED_HEAD)
            rest = chunked(*pieces)  # fifty HTTP chunks and the terminator, in one write
        else:
            whole = b"".join(pieces)
            await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(whole))
            rest = whole
        await go.wait()
        await wire.send(rest)
        sent.set()
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        go.set()
        await sent.wait()  # the whole body is in the client's socket before it reads any
        assert await response.next_chunk() == b"".join(pieces)
        assert await response.next_chunk() is None
        await response.aclose()


async def test_a_response_without_a_body_ends_at_once_and_keeps_its_connection(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(b"HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n")
        await wire.expect_request()
        await wire.send(respond(b"second"))
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        assert response.status == 204
        assert await response.next_chunk() is None
        await response.aclose()
        assert await fetch(pool, server.url()) == b"second"
        assert server.connections == 1


async def test_a_body_delimited_by_close_is_read_to_the_close_and_not_reused(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the ")
        await wire.send(b"close")
        # then the handler returns: the server closes the connection

    async with serve(handler) as server:
        assert await fetch(pool, server.url()) == b"until the close"
        assert await fetch(pool, server.url()) == b"until the close"
        assert server.connections == 2


# --- keep-alive ------------------------------------------------------------------------------


async def test_a_body_read_to_its_end_leaves_the_connection_to_the_next_request(pool: Pool) -> None:
    async with serve(answering(b"one", b"two", b"three")) as server:
        assert await fetch(pool, server.url()) == b"one"
        assert await fetch(pool, server.url("/other?x=1")) == b"two"  # same origin, other path
        assert await fetch(pool, server.url()) == b"three"
        assert server.connections == 1
        assert server.closed == []


async def test_a_response_abandoned_mid_body_closes_its_connection(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        if wire.index == 1:
            await wire.expect_request()
            await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.")
            await wire.wait_eof()  # the rest never comes: the client must give up the connection
        else:
            await answering(b"fresh")(wire)

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        assert await response.next_chunk() == b"half."
        await response.aclose()
        await server.until(lambda: 1 in server.closed)  # the client closed it (the server saw EOF)
        assert await fetch(pool, server.url()) == b"fresh"
        assert server.connections == 2


async def test_a_response_closed_before_its_body_is_read_is_not_reused(pool: Pool) -> None:
    async with serve(answering(b"unread", b"fresh")) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        await response.aclose()  # the body may well be in the socket already: still not read
        assert await response.next_chunk() is None  # a closed response has nothing more
        assert await fetch(pool, server.url()) == b"fresh"
        assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced_without_error(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(respond(b"from %d" % wire.index))
        if wire.index == 1:
            return  # keep-alive promised (no connection: close), then closed while idle
        await wire.wait_eof()

    async with serve(handler) as server:
        assert await fetch(pool, server.url()) == b"from 1"
        await server.until(lambda: 1 in server.closed)
        assert await fetch(pool, server.url()) == b"from 2"
        assert server.connections == 2


async def test_a_connection_close_response_is_not_reused(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(respond(b"bye %d" % wire.index, "Connection: close"))
        await wire.wait_eof()  # the server leaves it open: the client must close it

    async with serve(handler) as server:
        assert await fetch(pool, server.url()) == b"bye 1"
        await server.until(lambda: 1 in server.closed)
        assert await fetch(pool, server.url()) == b"bye 2"
        assert server.connections == 2


async def test_an_idle_connection_expires_after_keepalive_expiry(
    pool: Pool, clock: trio.testing.MockClock
) -> None:
    async with serve(answering(b"a", b"b", b"c"), budget=BUDGET + 3 * KEEPALIVE_EXPIRY) as server:
        assert await fetch(pool, server.url()) == b"a"
        clock.jump(KEEPALIVE_EXPIRY - 1)
        assert await fetch(pool, server.url()) == b"b"  # still fresh: reused
        assert server.connections == 1
        clock.jump(KEEPALIVE_EXPIRY + 1)
        assert await fetch(pool, server.url()) == b"c"  # expired: closed, and a new one made
        assert server.connections == 2
        await server.until(lambda: 1 in server.closed)


async def test_idle_connections_beyond_the_limit_are_closed(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "MAX_IDLE_PER_ORIGIN", 1)
    async with serve(answering(b"a", b"b", b"c")) as server:
        first = await pool.stream("POST", server.url(), {}, b"")
        second = await pool.stream("POST", server.url(), {}, b"")  # the first is busy: a new one
        assert server.connections == 2
        for response in (first, second):
            await read_all(response)
            await response.aclose()
        await server.until(lambda: len(server.closed) == 1)  # the one past the limit
        assert await fetch(pool, server.url()) == b"c"
        assert server.connections == 2


async def test_the_most_recently_used_idle_connection_is_taken_first(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        while await wire.read_request() is not None:
            await wire.send(respond(b"%d" % wire.index))

    async with serve(handler) as server:
        first = await pool.stream("POST", server.url(), {}, b"")
        second = await pool.stream("POST", server.url(), {}, b"")
        assert [await read_all(first), await read_all(second)] == [b"1", b"2"]
        await first.aclose()
        await second.aclose()  # returned last: the likeliest to be alive
        assert await fetch(pool, server.url()) == b"2"
        assert await fetch(pool, server.url()) == b"2"
        assert server.connections == 2


async def test_pool_close_closes_idle_connections(pool: Pool) -> None:
    async with serve(answering(b"a", b"b")) as server:
        busy = await pool.stream("POST", server.url(), {}, b"")  # connection 1, in use
        assert await fetch(pool, server.url()) == b"b"  # connection 2, now idle
        assert server.connections == 2
        pool.close()
        await server.until(lambda: server.closed == [2])  # the idle one: EOF at the server
        assert await read_all(busy) == b"a"
        await busy.aclose()  # a closed pool keeps nothing
        await server.until(lambda: sorted(server.closed) == [1, 2])


async def test_cancelling_a_request_before_its_response_closes_the_connection(pool: Pool) -> None:
    scope = trio.CancelScope()  # the caller's

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        if wire.index == 1:
            scope.cancel()  # the caller gives up while the server is thinking
            await wire.wait_eof()
        else:
            await wire.send(respond(b"fresh"))
            await wire.wait_eof()

    async with serve(handler) as server:
        with scope:
            await pool.stream("POST", server.url(), {}, b"")
        assert scope.cancelled_caught
        await server.until(lambda: 1 in server.closed)
        assert await fetch(pool, server.url()) == b"fresh"
        assert server.connections == 2


# --- breaks ----------------------------------------------------------------------------------


async def test_a_reset_mid_body_raises_after_the_bytes_before_it(pool: Pool) -> None:
    read_some = trio.Event()

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(CHUNKED_HEAD + b"6\r\nbefore\r\n")
        await read_some.wait()
        wire.reset()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        assert await response.next_chunk() == b"before"
        read_some.set()
        with pytest.raises(ConnectionBroken):
            await response.next_chunk()
        with pytest.raises(ConnectionBroken):
            await response.next_chunk()  # still broken, not a clean end
        await response.aclose()


async def test_a_close_mid_body_raises_after_the_bytes_before_it(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        await wire.send(b"only this")
        # return: the server closes (FIN) 91 bytes short

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        received = b""
        with pytest.raises(ConnectionBroken):
            while (chunk := await response.next_chunk()) is not None:
                received += chunk
        assert received == b"only this"
        await response.aclose()


async def test_a_malformed_chunk_raises_after_the_good_data_before_it(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(CHUNKED_HEAD + b"4\r\ngood\r\nzz\r\nbad\r\n")  # one write: parsed together
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        assert await response.next_chunk() == b"good"
        with pytest.raises(ConnectionBroken):
            await response.next_chunk()
        await response.aclose()
        await server.until(lambda: 1 in server.closed)


@pytest.mark.parametrize("how", ["close", "reset", "garbage"])
async def test_no_response_at_all_is_a_broken_connection(pool: Pool, how: str) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        if how == "reset":
            wire.reset()
        elif how == "garbage":
            await wire.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await wire.wait_eof()
        # "close": return, and the server closes the connection

    async with serve(handler) as server:
        with pytest.raises(ConnectionBroken):
            await pool.stream("POST", server.url(), {}, b"{}")
        await server.until(lambda: 1 in server.closed)


async def test_a_refused_connection_is_connect_failed(pool: Pool) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # bound, never listening, now closed: nothing accepts on the port
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        await pool.stream("POST", f"http://127.0.0.1:{port}/v1", {}, b"")


async def test_a_connect_that_hangs_times_out_as_connect_failed(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never_connects(host: str, port: int, **kwargs: object) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(trio, "open_tcp_stream", never_connects)
    pool = Pool(2.5)
    start = trio.current_time()
    with trio.fail_after(60), pytest.raises(ConnectFailed, match=r"connect timeout after 2\.5s"):
        await pool.stream("POST", "http://127.0.0.1:9/v1", {}, b"")
    assert trio.current_time() - start == pytest.approx(2.5)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1:8080/v1", "http:///v1", "https://h:70000/"])
async def test_a_url_the_client_cannot_reach_is_connect_failed(pool: Pool, url: str) -> None:
    with pytest.raises(ConnectFailed):
        await pool.stream("POST", url, {}, b"")


# --- status, headers, encodings --------------------------------------------------------------


async def test_an_error_status_has_its_headers_and_json_body(pool: Pool) -> None:
    error = msgspec.json.encode({"error": {"message": "slow down", "type": "rate_limit"}})

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(
            b"HTTP/1.1 429 Too Many Requests\r\n"
            b"Content-Type: application/json\r\n"
            b"X-RateLimit-Scope: org\r\n"
            b"Retry-After: 7\r\n"
            b"x-ratelimit-scope: model\r\n"
            b"Content-Length: %d\r\n\r\n" % len(error) + error
        )
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"{}")
        try:
            assert response.status == 429
            assert response.headers == {
                "content-type": "application/json",
                "x-ratelimit-scope": "org, model",
                "retry-after": "7",
                "content-length": str(len(error)),
            }
            assert msgspec.json.decode(await read_all(response)) == {
                "error": {"message": "slow down", "type": "rate_limit"}
            }
        finally:
            await response.aclose()


async def test_informational_responses_before_the_final_one_are_skipped(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await wire.send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + respond(b"final")
        )
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"{}")
        assert response.status == 200
        assert "link" not in response.headers
        assert await read_all(response) == b"final"
        await response.aclose()


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "raw deflate"])
async def test_a_compressed_body_is_decoded_as_it_streams(pool: Pool, encoding: str) -> None:
    text = b"".join(b'data: {"n": %d, "text": "word word word"}\n\n' % i for i in range(400))
    if encoding == "raw deflate":  # deflate without its zlib header, as some servers send it
        raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed, encoding = raw.compress(text) + raw.flush(), "deflate"
    else:
        packed = zlib.compress(text) if encoding == "deflate" else gzip.compress(text)

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: %s\r\n\r\n"
            % encoding.encode()
        )
        for start in range(0, len(packed), 7):  # small pieces: the decoder must keep state
            await wire.send(chunked(packed[start : start + 7])[: -len(b"0\r\n\r\n")])
        await wire.send(b"0\r\n\r\n")
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        assert response.headers["content-encoding"] == encoding
        assert await read_all(response) == text
        await response.aclose()


async def test_a_compressed_body_cut_short_is_a_broken_connection(pool: Pool) -> None:
    packed = gzip.compress(b"the whole answer " * 50)

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(respond(packed[: len(packed) // 2], "Content-Encoding: gzip"))
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        with pytest.raises(ConnectionBroken, match="ended early"):
            await read_all(response)
        await response.aclose()


async def test_a_corrupt_compressed_body_is_a_broken_connection(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(respond(b"this is not gzip at all", "Content-Encoding: gzip"))
        await wire.wait_eof()

    async with serve(handler) as server:
        response = await pool.stream("POST", server.url(), {}, b"")
        with pytest.raises(ConnectionBroken, match="decode"):
            await read_all(response)
        await response.aclose()


async def test_an_unsupported_content_encoding_is_a_broken_connection(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        await wire.send(respond(b"\x1b\x00\x00", "Content-Encoding: br"))
        await wire.wait_eof()

    async with serve(handler) as server:
        with pytest.raises(ConnectionBroken, match="br"):
            await pool.stream("POST", server.url(), {}, b"")
        await server.until(lambda: 1 in server.closed)  # and its connection is closed


# --- the request on the wire -----------------------------------------------------------------


async def test_the_request_on_the_wire(pool: Pool) -> None:
    seen: list[Request] = []

    async def handler(wire: Wire) -> None:
        while (request := await wire.read_request()) is not None:
            seen.append(request)
            await wire.send(respond(b"ok"))

    body = msgspec.json.encode(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hé"}]}
    )
    headers = {"Authorization": "Bearer sk-test", "Content-Type": "application/json", "x-custom": "v 1"}
    async with serve(handler) as server:
        url = f"http://127.0.0.1:{server.port}/v1/chat/completions?api-version=2024-10-21&x=%2F"
        assert await fetch(pool, url, headers, body) == b"ok"
        response = await pool.stream("GET", f"http://127.0.0.1:{server.port}", {}, b"")
        await read_all(response)
        await response.aclose()

    post, get = seen
    assert post.request_line == "POST /v1/chat/completions?api-version=2024-10-21&x=%2F HTTP/1.1"
    assert post.header("host") == host_header("http", "127.0.0.1", server.port) == f"127.0.0.1:{server.port}"
    assert post.header("content-length") == str(len(body))
    assert post.body == body
    assert post.header("accept-encoding") == "identity"
    assert post.header("user-agent") == USER_AGENT
    assert post.header("authorization") == "Bearer sk-test"
    assert post.header("content-type") == "application/json"
    assert post.header("x-custom") == "v 1"
    assert "transfer-encoding" not in dict(post.header_list)
    assert get.request_line == "GET / HTTP/1.1"
    assert get.header("content-length") == "0"
    assert get.body == b""


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """What `tls_context` builds, trusting the test CA (instead of the system's CAs)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def test_tls_to_an_untrusted_server_is_refused(pool: Pool, server_tls: ssl.SSLContext) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()  # never: the handshake fails first
        raise AssertionError("a request went out over an unverified connection")

    async with serve(handler, ssl_context=server_tls) as server:
        with pytest.raises(ConnectFailed, match=f"localhost:{server.port}") as info:
            await pool.stream("POST", server.url(scheme="https", host="localhost"), {}, b"")
        assert isinstance(info.value.__cause__, trio.BrokenResourceError)
        assert isinstance(info.value.__cause__.__cause__, ssl.SSLCertVerificationError)


async def test_tls_streams_and_keeps_alive_with_a_trusted_ca(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    monkeypatch.setattr(upstream, "tls_context", lambda: trusting(ca))
    hosts: list[str] = []

    async def handler(wire: Wire) -> None:
        while (request := await wire.read_request()) is not None:
            hosts.append(request.header("host"))
            await wire.send(CHUNKED_HEAD + chunked(b"secure ", b"stream #%d" % len(hosts)))

    async with serve(handler, ssl_context=server_tls) as server:
        url = server.url(scheme="https", host="localhost")
        assert await fetch(pool, url) == b"secure stream #1"
        assert await fetch(pool, url) == b"secure stream #2"
        assert server.connections == 1
        assert hosts == [f"localhost:{server.port}"] * 2
        pool.close()
        await server.until(lambda: server.closed == [1])


async def test_tls_to_a_trusted_certificate_for_another_name_is_refused(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, ca: trustme.CA
) -> None:
    monkeypatch.setattr(upstream, "tls_context", lambda: trusting(ca))
    elsewhere = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.elsewhere.example").configure_cert(elsewhere)

    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        raise AssertionError("a request went out to a server with another name's certificate")

    async with serve(handler, ssl_context=elsewhere) as server:
        with pytest.raises(ConnectFailed) as info:
            await pool.stream("POST", server.url(scheme="https", host="localhost"), {}, b"")
        assert isinstance(info.value.__cause__, trio.BrokenResourceError)
        assert isinstance(info.value.__cause__.__cause__, ssl.SSLCertVerificationError)
        assert "localhost" in str(info.value.__cause__.__cause__)


# --- against the simulator -------------------------------------------------------------------


async def test_streams_an_openai_chat_from_the_simulator(pool: Pool) -> None:
    sim = Simulator(text="Keep it alive.")
    accepted = 0
    serve_connection = sim._serve_connection

    async def counting(stream: trio.SocketStream) -> None:  # patched in before it runs
        nonlocal accepted
        accepted += 1
        await serve_connection(stream)

    sim._serve_connection = counting  # type: ignore[method-assign]
    request = msgspec.json.encode(
        {"model": "sim-model", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    )
    headers = {"authorization": "Bearer sk-any", "content-type": "application/json"}
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            for _ in range(2):
                response = await pool.stream("POST", f"{sim.base_url}/chat/completions", headers, request)
                assert response.status == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                sse = (await read_all(response)).decode()
                await response.aclose()
                deltas = [
                    msgspec.json.decode(line[len("data: ") :])["choices"][0]["delta"].get("content") or ""
                    for line in sse.splitlines()
                    if line.startswith("data: {")
                ]
                assert "".join(deltas) == "Keep it alive."
                assert sse.rstrip().endswith("data: [DONE]")
            assert accepted == 1  # both over one kept-alive connection
            assert [r.outcome for r in sim.requests] == ["completed", "completed"]
            nursery.cancel_scope.cancel()


# --- defects found and mended ---------------------------------------------------------------------------


async def test_bytes_past_the_end_of_a_response_do_not_answer_the_next_request(pool: Pool) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()
        if wire.index == 1:
            # A server bug (or a proxy's): the body is longer than its content-length says.
            await wire.send(respond(b"1234") + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")
        else:
            await wire.send(respond(b"fresh"))
        await wire.wait_eof()

    async with serve(handler) as server:
        assert await fetch(pool, server.url()) == b"1234"
        assert await fetch(pool, server.url()) == b"fresh"
        assert server.connections == 2  # the first connection, with bytes to spare, was not reused


async def test_a_tls_failure_says_why(pool: Pool, server_tls: ssl.SSLContext) -> None:
    async def handler(wire: Wire) -> None:
        await wire.expect_request()

    async with serve(handler, ssl_context=server_tls) as server:
        with pytest.raises(ConnectFailed, match=r"(?i)certificate"):
            await pool.stream("POST", server.url(scheme="https", host="localhost"), {}, b"")


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/v1", {"authorization": "Bearer sk-key\n"}), ("/v1", {"bad name": "x"}), ("/a b", {})],
)
async def test_a_request_h11_cannot_send_fails_as_documented(
    pool: Pool, path: str, headers: dict[str, str]
) -> None:
    error: Exception | None = None
    async with serve(answering(b"never")) as server:
        try:
            await pool.stream("POST", server.url(path), headers, b"")
        except Exception as e:  # any exception: which one is the point
            error = e
    assert isinstance(error, (ConnectFailed, ConnectionBroken)), repr(error)
    assert server.connections == 0  # nothing was sent
