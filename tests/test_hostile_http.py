"""The HTTP front door under hostile or odd clients, over a real daemon's loopback port.

Every case ends with the same check: the daemon is alive and another client's
well-formed chat request is answered with the exact text. Property tests loop
their examples over one daemon (hypothesis runs in a worker thread with blocking
sockets while the daemon serves in the test's trio loop).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from combined_models.client.cli import main as cmctl_main
from combined_models.client.cli import render_status
from combined_models.config import HttpConfig
from combined_models.daemon.gateway.auth import host_allowed, load_token, token_path, valid_token
from combined_models.daemon.gateway.server import endpoint_of

from .conftest import ANSWER, MODEL, open_stack
from .test_gateway import Front, in_thread, open_front

Address = tuple[str, int]
KNOWN_PATHS = ["/", "/health", "/v1/models", f"/v1/models/{MODEL}", "/v1/chat/completions", "/v1/messages"]
CHAT_BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(autouse=True)
def no_contained_failures(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A contained failure keeps the daemon up, but it is still a bug: none may happen here."""
    caplog.set_level(logging.WARNING, "combined_models")
    yield
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failure contained")]
    assert failures == []


def address_of(front: Front) -> Address:
    host, port = front.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(
    address: Address,
    requests: list[tuple[str, str, list[tuple[str, str]], bytes]],
    *,
    host: str = "127.0.0.1",
) -> list[Reply]:
    """Well-formed requests one after another on one connection, parsed by h11 as a client.

    h11 knows each request's method, so a HEAD reply that carried a body would fail to parse.
    Stops early when the server closes the connection.
    """
    conn = h11.Connection(h11.CLIENT)
    replies: list[Reply] = []
    with socket.create_connection(address, timeout=5) as s:
        for method, target, headers, body in requests:
            if conn.states != {h11.CLIENT: h11.IDLE, h11.SERVER: h11.IDLE}:
                break
            out = conn.send(
                h11.Request(
                    method=method,
                    target=target,
                    headers=[("host", host), *headers, ("content-length", str(len(body)))],
                )
            )
            out = (
                (out or b"")
                + (conn.send(h11.Data(data=body)) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
            try:
                s.sendall(out)
            except OSError:
                pass  # answered and closed before it read everything: the answer is still there
            status, got_headers, got = 0, {}, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        conn.receive_data(s.recv(65536))
                    except ConnectionResetError:
                        conn.receive_data(b"")
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got_headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    got += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"no whole answer: {event!r}")
            replies.append(Reply(status, got_headers, bytes(got)))
            if conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                conn.start_next_cycle()
    return replies


def raw_exchange(address: Address, data: bytes, *, end: bool = True) -> bytes:
    """Send raw bytes (then end our side when `end`), and everything the server says until it closes."""
    with socket.create_connection(address, timeout=5) as s:
        try:
            s.sendall(data)
            if end:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def chat_text(address: Address, token: str) -> str:
    """The invariant: a well-formed chat request from another client gets the whole answer."""
    with httpx.Client(base_url=f"http://{address[0]}:{address[1]}", timeout=10, trust_env=False) as http:
        r = http.post("/v1/chat/completions", content=CHAT_BODY, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def auth(front: Front) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {front.token}")]


async def still_serving(front: Front) -> None:
    assert await in_thread(lambda: chat_text(address_of(front), front.token)) == ANSWER


# ================================================================ pure decisions


def test_host_names_that_reach_loopback_only() -> None:
    for host in ("localhost", "LOCALHOST:4141", "127.0.0.1", "127.1.2.3:80", "[::1]", "[::1]:4141", None):
        assert host_allowed(host, allow_remote=False), host
    for host in (
        "evil.example",
        "evil.example:4141",
        "127.0.0.1.evil.example",
        "[::2]",
        "",
        "0.0.0.0",
        "[::1]x",
    ):
        assert not host_allowed(host, allow_remote=False), host
        assert host_allowed(host, allow_remote=True)


def test_routes() -> None:
    assert [endpoint_of(p) for p in KNOWN_PATHS] == [
        None,
        "health",
        "models",
        "models",
        "openai_chat",
        "anthropic_chat",
    ]


def test_a_damaged_token_file_is_moved_aside_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    for damage in (b"", b"\n  \n", b"\xff\xfe not utf-8", b"abc def", b"abc\x01def"):
        for old in path.parent.glob("http-token.bad-*"):
            old.unlink()
        path.write_bytes(damage)
        caplog.clear()
        token = load_token(HttpConfig())
        assert valid_token(token) and len(token) >= 40
        assert path.read_text().strip() == token
        (aside,) = path.parent.glob("http-token.bad-*")
        assert aside.read_bytes() == damage
        assert [str(aside) in r.getMessage() for r in caplog.records] == [True]
    assert load_token(HttpConfig()) == token  # a good file is kept


def test_a_fifo_where_the_token_file_goes_does_not_hang_the_daemon() -> None:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)  # reading it would wait for a writer forever
    token = load_token(HttpConfig())
    assert valid_token(token) and path.read_text().strip() == token
    (aside,) = path.parent.glob("http-token.bad-*")
    assert stat.S_ISFIFO(aside.lstat().st_mode)


# ================================================================ regressions over the socket


async def test_head_gets_the_head_a_get_would_get_and_no_body(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        address = address_of(front)

        def run() -> list[tuple[Reply, Reply]]:
            pairs = []
            for path in [*KNOWN_PATHS, "/nope"]:
                for headers in ([], auth(front)):
                    (head,) = exchange(address, [("HEAD", path, headers, b"")])
                    (get,) = exchange(address, [("GET", path, headers, b"")])
                    pairs.append((head, get))
            # Keep-alive after a HEAD: the next reply starts right after the head (no stray body).
            pairs.append(
                tuple(
                    exchange(
                        address,
                        [("HEAD", "/v1/models", auth(front), b""), ("GET", "/v1/models", auth(front), b"")],
                    )
                )
            )  # type: ignore[arg-type]
            return pairs

        pairs = await in_thread(run)
        for i, (head, get) in enumerate(pairs[:-1]):
            assert head.body == b""
            assert head.status == get.status
            assert head.headers.get("content-type") == get.headers.get("content-type")
            if i != 3:  # (/health with the token: its uptime changes the length between the two)
                assert head.headers.get("content-length") == get.headers.get("content-length")
        statuses = [h.status for h, _ in pairs[:-1]]
        # (no token, token) per path: only /health opens without the token; HEAD on a chat path is 405.
        assert statuses == [401, 404, 200, 200, 401, 200, 401, 200, 401, 405, 401, 405, 401, 404]
        head, get = pairs[-1]
        assert head.body == b"" and json.loads(get.body)["data"][0]["id"] == MODEL
        await still_serving(front)


async def test_options_and_odd_methods(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        address = address_of(front)

        def run() -> dict[str, Reply]:
            got = {}
            got["options"] = exchange(address, [("OPTIONS", "/v1/chat/completions", [], b"")])[0]
            got["options *"] = exchange(address, [("OPTIONS", "*", [], b"")])[0]
            got["options nowhere"] = exchange(address, [("OPTIONS", "/nope", [], b"")])[0]
            for method in ("PUT", "DELETE", "PATCH", "TRACE", "BREW", "M-SEARCH"):
                got[f"{method} models"] = exchange(address, [(method, "/v1/models", auth(front), b"{}")])[0]
                got[f"{method} nowhere"] = exchange(address, [(method, "/nope", auth(front), b"")])[0]
            got["CONNECT"] = exchange(address, [("CONNECT", "127.0.0.1:80", auth(front), b"")])[0]
            got["GET chat"] = exchange(address, [("GET", "/v1/chat/completions", auth(front), b"")])[0]
            return got

        got = await in_thread(run)
        assert got["options"].status == 204 and got["options"].headers["allow"] == "POST, OPTIONS"
        assert not any(k.startswith("access-control") for k in got["options"].headers)
        assert got["options *"].status == 204 and "POST" in got["options *"].headers["allow"]
        assert got["options nowhere"].status == 404
        for method in ("PUT", "DELETE", "PATCH", "TRACE", "BREW", "M-SEARCH"):
            reply = got[f"{method} models"]
            assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD, OPTIONS"
            assert json.loads(reply.body)["error"]["type"] == "invalid_request_error"
            assert got[f"{method} nowhere"].status == 404
        assert got["CONNECT"].status == 404
        assert got["GET chat"].status == 405 and got["GET chat"].headers["allow"] == "POST, OPTIONS"
        await still_serving(front)


async def test_a_failure_inside_a_request_stays_inside_it(
    short_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_front(short_dir) as front:
        gateway = front.stack.server.gateway
        assert gateway is not None
        failures: list[BaseException] = [
            RecursionError("maximum recursion depth exceeded"),
            ExceptionGroup("two", [ValueError("a"), KeyError("b")]),
            h11.LocalProtocolError("Too much data for declared Content-Length"),
            MemoryError("a reply too large"),
        ]

        async def broken(*_: object) -> None:
            raise failures.pop(0)

        monkeypatch.setattr(gateway, "_models", broken)
        address = address_of(front)
        for claude in (False, True, False, True):
            headers = [*auth(front), *([("anthropic-version", "2023-06-01")] if claude else [])]
            (reply,) = await in_thread(lambda h=headers: exchange(address, [("GET", "/v1/models", h, b"")]))  # type: ignore[misc]
            assert reply.status == 500 and reply.headers["connection"] == "close"
            error = json.loads(reply.body)
            assert error["error"]["type"] == ("api_error" if claude else "server_error")
        contained = [r for r in caplog.records if r.getMessage().startswith("failure contained")]
        assert len(contained) == 4 and all(r.exc_info for r in contained)
        caplog.clear()  # expected here; the autouse check is for the other tests
        await still_serving(front)


async def test_a_request_without_the_token_is_refused_before_its_body(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        address = address_of(front)
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: 10000000\r\n\r\n"
        )
        # Our side stays open and sends no body: the answer must come from the head alone.
        reply = await in_thread(lambda: raw_exchange(address, head, end=False))
        assert reply.startswith(b"HTTP/1.1 401 ")
        assert b"connection: close" in reply.lower()
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_api_key"
        anthropic_head = head.replace(b"/v1/chat/completions", b"/v1/messages").replace(
            b"\r\n\r\n", b"\r\nx-api-key: wrong\r\nexpect: 100-continue\r\n\r\n"
        )
        reply = await in_thread(lambda: raw_exchange(address, anthropic_head, end=False))
        assert reply.startswith(b"HTTP/1.1 401 ")  # no `100 Continue` first: the body is not wanted
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["type"] == "authentication_error"
        assert front.stack.sims["first"].statistics().chat_requests == 0
        await still_serving(front)


async def test_foreign_hosts_and_origins_are_refused(short_dir: Path) -> None:
    extra = 'allowed_origins = ["http://localhost:3000"]\n'
    async with open_front(short_dir, extra) as front:
        address = address_of(front)
        page = [("origin", "http://localhost:3000")]

        def run() -> dict[str, Reply]:
            return {
                "rebound": exchange(
                    address, [("GET", "/v1/models", auth(front), b"")], host="evil.example:4141"
                )[0],
                "rebound health": exchange(address, [("GET", "/health", [], b"")], host="evil.example")[0],
                "localhost": exchange(address, [("GET", "/v1/models", auth(front), b"")], host="localhost:1")[
                    0
                ],
                "page": exchange(
                    address, [("GET", "/v1/models", [*auth(front), ("origin", "http://evil.example")], b"")]
                )[0],
                "claude page": exchange(address, [("POST", "/v1/messages", [("origin", "null")], b"{}")])[0],
                "listed page": exchange(address, [("GET", "/v1/models", [*auth(front), *page], b"")])[0],
                "preflight": exchange(
                    address,
                    [
                        (
                            "OPTIONS",
                            "/v1/chat/completions",
                            [*page, ("access-control-request-method", "POST")],
                            b"",
                        )
                    ],
                )[0],
            }

        got = await in_thread(run)
        for name in ("rebound", "rebound health", "page"):
            assert got[name].status == 403, name
            assert json.loads(got[name].body)["error"]["type"] == "invalid_request_error"
        assert json.loads(got["claude page"].body)["error"]["type"] == "permission_error"
        assert got["localhost"].status == 200
        listed = got["listed page"]
        assert (
            listed.status == 200 and listed.headers["access-control-allow-origin"] == "http://localhost:3000"
        )
        preflight = got["preflight"]
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert preflight.headers["access-control-allow-methods"] == "POST, OPTIONS"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        await still_serving(front)


def _nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"type": "object", "properties": {"x": value}}
    return value


async def test_deeply_nested_json_is_a_clean_400(short_dir: Path) -> None:
    async with open_front(short_dir) as front, front.http() as http:
        deep_text = b"[" * 100_000 + b"]" * 100_000
        tool = {"type": "function", "function": {"name": "f", "parameters": _nested(40)}}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and "nested more than" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "tools[0].parameters"
        tools = b'"tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": ' + deep_text
        r = await http.post("/v1/chat/completions", content=b'{"model": "m", ' + tools + b"}}}]}")
        assert r.status_code == 400 and "nested more than" in r.json()["error"]["message"]
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * 50_000}}
        body = {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [call]}]}
        r = await http.post("/v1/chat/completions", json=body)
        assert (
            r.status_code == 400
            and r.json()["error"]["param"] == "messages[0].tool_calls[0].function.arguments"
        )
        ant_tool = {"name": "f", "input_schema": _nested(40)}
        body = {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [ant_tool],
        }
        r = await http.post("/v1/messages", json=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        tools = b'"tools": [{"name": "f", "input_schema": {"a": ' + deep_text
        r = await http.post("/v1/messages", content=b'{"model": "m", ' + tools + b"}}]}")
        assert r.status_code == 400 and "nested more than" in r.json()["error"]["message"]
        assert front.stack.sims["first"].statistics().chat_requests == 0
        await still_serving(front)


async def test_connections_past_the_cap_get_a_503(short_dir: Path) -> None:
    async with open_front(short_dir, "[limits]\nmax_connections = 3\n") as front:
        address = address_of(front)
        held = [socket.create_connection(address, timeout=5) for _ in range(3)]
        try:
            # Each held connection is served (one request answered, kept alive): all three are counted.
            for s in held:
                s.sendall(
                    f"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n{'authorization: Bearer ' + front.token}\r\n\r\n".encode()
                )
                assert (await in_thread(lambda s=s: s.recv(65536))).startswith(b"HTTP/1.1 200 ")  # type: ignore[misc]
            assert front.stack.server.gateway is not None
            door = front.stack.server.gateway.door
            assert door.open == 3
            reply = await in_thread(
                lambda: raw_exchange(address, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            )
            assert reply.startswith(b"HTTP/1.1 503 ") and b"connection: close" in reply
            assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "busy"
            assert door.refused == 1
        finally:
            for s in held:
                s.close()
        with trio.fail_after(5):
            while door.open:  # noqa: ASYNC110 (the door notices the closes on its own)
                await trio.sleep(0.01)
        await still_serving(front)


async def test_a_client_that_stops_reading_loses_its_request(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "combined_models.gateway")
    async with open_front(short_dir, "[limits]\nclient_stall_timeout = 0.5\n") as front:
        first = front.stack.sims["first"]
        first.text = " ".join(["x" * 1000] * 8000)  # 8 MB: more than the socket buffers hold
        address = address_of(front)
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        try:
            await in_thread(lambda: s.connect(address))
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                + f"authorization: Bearer {front.token}\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode()
            )
            # We read nothing: the daemon's write blocks, and after 0.5 s it gives up the request.
            with trio.fail_after(10):
                await first.wait_disconnect(1)
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert front.stack.server.active == 0
            assert any("stopped reading" in r.getMessage() for r in caplog.records)
            async with front.stack.client() as c:
                status = {p.id: p for p in (await c.status()).providers}
            assert status["first"].in_flight == 0 and status["first"].failures == 0
        finally:
            s.close()
        first.text = ANSWER
        await still_serving(front)


async def test_a_taken_port_is_reported_and_no_token_handed_out(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with open_stack(short_dir, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n') as st:
            async with st.client() as c:
                daemon = (await c.status()).daemon
                status = await c.status()
            assert daemon.http == "" and f"127.0.0.1:{port}" in daemon.http_error
            assert "HTTP front door is off" in render_status(status)
            assert "[http]" in render_status(status)

            def cmctl(*args: str) -> int | str | None:
                try:
                    cmctl_main([*args, "--socket", str(st.socket)])
                except SystemExit as e:
                    return e.code
                return None

            capsys.readouterr()
            assert await in_thread(lambda: cmctl("http-token")) == 1
            out, err = capsys.readouterr()
            assert out == "" and "front door is off" in err and f"127.0.0.1:{port}" in err
            assert await in_thread(lambda: cmctl("opencode-config")) == 1
            assert capsys.readouterr().out == ""
            events = await st.ask()
            assert "".join(getattr(e, "text", "") for e in events) == ANSWER


# ================================================================ generated garbage


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]),
    st.text(TOKEN_CHARS, min_size=1, max_size=12),
)
paths = st.one_of(
    st.sampled_from(
        [*KNOWN_PATHS, "*", "/v1/models/", "/models", "/chat/completions", "/v1/messages?beta=true"]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(lambda t: "/" + t),
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
odd_headers = st.lists(
    st.one_of(
        st.tuples(
            st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
                lambda n: (
                    n.lower()
                    not in ("host", "content-length", "transfer-encoding", "connection", "upgrade", "expect")
                )
            ),
            header_values,
        ),
        st.tuples(
            st.sampled_from(["anthropic-version", "x-api-key", "authorization", "origin", "content-type"]),
            header_values,
        ),
    ),
    max_size=4,
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.just(CHAT_BODY),
    st.sampled_from(
        [b"{}", b"[]", b"null", b'{"model": 1}', b"[" * 5000, b'{"messages": [{"role": "tool"}]}']
    ),
)


async def test_any_request_gets_a_proper_answer_and_the_daemon_serves_on(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        address = address_of(front)

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(method=methods, path=paths, token=st.booleans(), headers=odd_headers, body=bodies)
        def case(method: str, path: str, token: bool, headers: list[tuple[str, str]], body: bytes) -> None:
            sent = [*headers, *auth(front)] if token else headers
            replies = exchange(address, [(method, path, sent, body)])
            assert len(replies) == 1
            reply = replies[0]
            assert reply.status < 500, (reply.status, reply.body[:300])
            if method == "HEAD":
                assert reply.body == b""
            elif reply.status >= 400:
                assert "error" in json.loads(reply.body)
            assert chat_text(address, front.token) == ANSWER

        await in_thread_long(case)
        await trio.testing.wait_all_tasks_blocked(0.01)
        assert front.stack.server.active == 0


async def test_random_bytes_never_end_the_daemon(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        address = address_of(front)
        prefixes = st.sampled_from(
            [b"", b"GET / HTTP/1.1\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"]
        )

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(prefix=prefixes, data=st.binary(max_size=600))
        def case(prefix: bytes, data: bytes) -> None:
            reply = raw_exchange(address, prefix + data)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
            assert b" 500 " not in reply.partition(b"\r\n")[0]
            assert chat_text(address, front.token) == ANSWER

        await in_thread_long(case)


async def test_a_client_leaving_at_any_byte_of_its_request(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        address = address_of(front)
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {front.token}\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode()
        )

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(cut=st.integers(0, len(request)), reset=st.booleans())
        def case(cut: int, reset: bool) -> None:
            with socket.create_connection(address, timeout=5) as s:
                if reset:  # close with a RST instead of a FIN
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(request[:cut])
            assert chat_text(address, front.token) == ANSWER

        await in_thread_long(case)
        with trio.fail_after(5):
            while front.stack.server.active:  # noqa: ASYNC110 (requests notice their clients left)
                await trio.sleep(0.01)
        async with front.stack.client() as c:
            status = {p.id: p for p in (await c.status()).providers}
        assert status["first"].in_flight == 0 and status["first"].failures == 0


async def in_thread_long(fn: Callable[[], None]) -> None:
    with trio.fail_after(60):
        await trio.to_thread.run_sync(fn)


async def test_start_says_when_the_front_door_could_not_listen(short_dir: Path) -> None:
    from .test_cli import cmctl, sims_running, write_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with sims_running() as sims:
            sock = short_dir / "d.sock"
            cfg = write_config(short_dir / "c.toml", sims)
            cfg.write_text(cfg.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
            r = await cmctl("start", "--config", str(cfg), "--socket", str(sock))
            try:
                assert r.returncode == 1, r.stderr
                assert b"started" in r.stdout  # it runs, for the socket
                err = r.stderr.decode()
                assert f"127.0.0.1:{port}" in err and "still serves its socket" in err and "[http]" in err
                r = await cmctl("status", "--socket", str(sock))
                assert r.returncode == 0 and b"HTTP front door is off" in r.stdout
                r = await cmctl("status", "--json", "--socket", str(sock))
                assert f"127.0.0.1:{port}" in json.loads(r.stdout)["daemon"]["http_error"]
                r = await cmctl("http-token", "--socket", str(sock))
                assert r.returncode == 1 and r.stdout == b""
                r = await cmctl("chat", MODEL, "hi", "--socket", str(sock))
                assert r.returncode == 0 and r.stdout.decode().strip() == ANSWER
            finally:
                r = await cmctl("stop", "--socket", str(sock))
            assert r.returncode == 0, r.stderr


async def test_an_incomplete_request_is_bounded_by_partial_frame_timeout(short_dir: Path) -> None:
    async with open_front(short_dir, "[limits]\npartial_frame_timeout = 0.3\n") as front:
        address = address_of(front)
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            + f"authorization: Bearer {front.token}\r\ncontent-length: {len(CHAT_BODY)}\r\n\r\n".encode()
        )
        # Our side stays open: only the daemon's deadline ends each of these.
        half_head = await in_thread(lambda: raw_exchange(address, head[:40], end=False))
        half_body = await in_thread(lambda: raw_exchange(address, head + CHAT_BODY[:10], end=False))
        silent = await in_thread(lambda: raw_exchange(address, b"", end=False))
        assert half_head.startswith(b"HTTP/1.1 408 ") and half_body.startswith(b"HTTP/1.1 408 ")
        assert silent == b""  # nothing asked, nothing answered: just closed
        assert front.stack.sims["first"].statistics().chat_requests == 0
        await still_serving(front)
