"""What the daemon reads from upstream is bounded: a hostile provider fails over, the daemon stays up.

Pure decoder tests for each limit, then the real path: a tiny HTTP server on loopback that
answers with the hostile bytes as the first provider, the simulator as the second.
"""

from __future__ import annotations

import functools
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from combined_models.chat import DecodedItem, FailoverEvent, ToolCallEvent
from combined_models.config import parse_config
from combined_models.daemon import open_daemon, upstream
from combined_models.daemon import provider as provider_module
from combined_models.daemon.dialects import dialect_for
from combined_models.daemon.dialects.base import error_object
from combined_models.daemon.dialects.eventstream import encode_message
from combined_models.daemon.dialects.openai import OpenAIStreamDecoder
from combined_models.daemon.dialects.sse import SSEDecoder, SSETooLong
from combined_models.daemon.errors import Failure, UpstreamError
from combined_models.daemon.provider import ProviderActor, _decode
from combined_models.daemon.upstream import ConnectionBroken, LimitedBody
from combined_models.metadata import MAX_CATALOG_BYTES, parse_models_dev
from combined_models.simulator import Simulator

from .conftest import ANSWER, MODEL, done_of, text_of

DEEP = b"[" * 100_000 + b"]" * 100_000  # far past the interpreter's recursion limit
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


# ------------------------------------------------------------------ pure: SSE lines and events


def test_an_sse_line_past_the_limit_is_refused_whole_and_byte_by_byte() -> None:
    line = b"data: " + b"x" * 100  # 106 characters, never ended
    with pytest.raises(SSETooLong, match="line longer than 64"):
        SSEDecoder(max_line=64).feed(line)
    decoder = SSEDecoder(max_line=64)
    with pytest.raises(SSETooLong):
        for i in range(len(line)):
            decoder.feed(line[i : i + 1])
    # At the limit, with trailing bytes of the next event left over: decoded as usual.
    at_limit = b"data: " + b"x" * 58
    events = SSEDecoder(max_line=64).feed(at_limit + b"\n\ndata: y")
    assert [e.data for e in events] == ["x" * 58]


def test_an_sse_event_of_many_short_lines_past_the_limit_is_refused() -> None:
    decoder = SSEDecoder(max_line=64, max_event=100)
    assert decoder.feed(b"data: " + b"y" * 40 + b"\n" + b"data: " + b"y" * 40 + b"\n") == []
    with pytest.raises(SSETooLong, match="event longer than 100"):
        decoder.feed(b"data: " + b"y" * 40 + b"\n")
    # The count starts again with each event.
    decoder = SSEDecoder(max_event=100)
    for _ in range(5):
        assert [e.data for e in decoder.feed(b"data: " + b"z" * 90 + b"\n\n")] == ["z" * 90]


def test_a_dialect_decoder_reports_an_overlong_line_as_a_malformed_stream() -> None:
    decoder = OpenAIStreamDecoder()
    decoder._sse = SSEDecoder(max_line=1000)
    with pytest.raises(UpstreamError) as e:
        decoder.feed(b"data: " + b"a" * 2000)
    assert e.value.kind is Failure.TRANSIENT and "malformed stream" in e.value.message


# ------------------------------------------------------------------ pure: compressed bodies


def test_a_compression_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"\0" * 10_000_000)  # ~10 kB that claim 10 MB
    body = LimitedBody("deflate", 1_000_000)
    with pytest.raises(ConnectionBroken, match="inflates past 1000000"):
        body.feed(bomb)
    body = LimitedBody("gzip", 1_000_000)
    with pytest.raises(ConnectionBroken, match="inflates past"):
        for i in range(0, len(bomb), 7):
            body.feed(gzip.compress(b"\0" * 10_000_000)[i : i + 7])


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
def test_a_compressed_body_within_the_limit_reads_whole_at_every_split(encoding: str) -> None:
    payload = b'{"data": [{"id": "m"}]}' * 100
    raw = {"gzip": gzip.compress, "deflate": zlib.compress, "identity": bytes}[encoding](payload)
    for step in (len(raw), 1, 5):
        body = LimitedBody(encoding, len(payload))
        for i in range(0, len(raw), step):
            body.feed(raw[i : i + step])
        assert body.body() == payload
    with pytest.raises(ConnectionBroken, match=r"larger than|inflates past"):
        LimitedBody(encoding, len(payload) - 1).feed(raw)


# ------------------------------------------------------------------ pure: depth


@pytest.mark.parametrize("api", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("deep", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_a_deeply_nested_event_is_a_malformed_stream(api: str, deep: bytes) -> None:
    dialect = dialect_for(api)
    assert dialect is not None
    with pytest.raises(UpstreamError) as e:
        dialect.stream_decoder().feed(b"event: message_start\ndata: " + deep + b"\n\n")
    assert e.value.kind is Failure.TRANSIENT and "malformed" in e.value.message


def test_a_deeply_nested_bedrock_event_is_a_malformed_stream() -> None:
    dialect = dialect_for("bedrock")
    assert dialect is not None
    frame = encode_message(
        {":message-type": "event", ":event-type": "contentBlockDelta", ":content-type": "application/json"},
        DEEP,
    )
    with pytest.raises(UpstreamError) as e:
        dialect.stream_decoder().feed(frame)
    assert e.value.kind is Failure.TRANSIENT and "malformed" in e.value.message


@pytest.mark.parametrize("api", ["openai", "anthropic", "gemini", "bedrock", "copilot"])
def test_a_deeply_nested_model_listing_is_a_value_error(api: str) -> None:
    dialect = dialect_for(api)
    assert dialect is not None
    with pytest.raises(ValueError, match="nested"):
        dialect.parse_models(DEEP)


def test_a_deeply_nested_error_body_is_no_error_object() -> None:
    assert error_object(DEEP) == {}
    dialect = dialect_for("openai")
    assert dialect is not None
    from datetime import UTC, datetime

    err = dialect.classify_error(429, {}, DEEP, datetime.now(UTC))
    assert isinstance(err, UpstreamError) and err.kind is Failure.RATE_LIMITED


def test_whatever_a_decoder_raises_on_upstream_bytes_is_the_providers_malformed_stream() -> None:
    class Tripping:
        def feed(self, data: bytes) -> list[DecodedItem]:
            raise OverflowError("cannot convert float infinity to integer")

        def close(self) -> list[DecodedItem]:
            raise RecursionError("deep")

    for chunk in (b"x", None):
        with pytest.raises(UpstreamError) as e:
            _decode(Tripping(), chunk)
        assert e.value.kind is Failure.TRANSIENT and e.value.message.startswith("malformed stream")


def test_tool_call_arguments_nested_too_deep_are_a_malformed_stream() -> None:
    deep: dict[str, object] = {}
    for _ in range(100):
        deep = {"a": deep}

    class Calls:
        def feed(self, data: bytes) -> list[DecodedItem]:
            return [ToolCallEvent("call_1", "f", deep)]

        def close(self) -> list[DecodedItem]:
            return []

    with pytest.raises(UpstreamError, match="nests more than 64"):
        _decode(Calls(), b"x")


def test_a_number_out_of_range_in_an_event_is_a_malformed_stream() -> None:
    event = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1e999}]}}]}
    data = json.dumps(event).replace("Infinity", "1e999").encode()
    with pytest.raises(UpstreamError) as e:
        OpenAIStreamDecoder().feed(b"data: " + data + b"\n\n")
    assert e.value.kind is Failure.TRANSIENT


# ------------------------------------------------------------------ pure: models.dev catalog


def test_a_hostile_models_dev_catalog_is_unavailable_not_a_crash() -> None:
    with pytest.raises(ValueError, match="nested too deep"):
        parse_models_dev(DEEP)
    with pytest.raises(ValueError, match="larger than"):
        parse_models_dev(b" " * (MAX_CATALOG_BYTES + 1))
    odd = b'{"p": {"models": {"m": {"id": {"x": 1}, "limit": {"context": 1e999}}}}}'
    info = parse_models_dev(odd)["p"]["m"]
    assert info.context_window is None


# ------------------------------------------------------------------ redaction


def test_configured_header_values_are_redacted_like_keys() -> None:
    cfg = parse_config(
        "[providers.proxy]\n"
        'api = "openai"\n'
        'base_url = "http://127.0.0.1:9/v1"\n'
        'api_key = "sk-test-0123456789abcdef"\n'
        'headers = { "x-org-token" = "org-secret-value", "x-short" = "abc" }\n',
        "test config",
    )
    from combined_models.config import resolve_provider

    actor = ProviderActor(resolve_provider(cfg, "proxy"), cfg.failover)
    text = actor.redact("echoed org-secret-value and sk-test-0123456789abcdef and abc")
    assert "org-secret-value" not in text and "0123456789abcdef" not in text
    assert text.count("[redacted]") >= 1 and text.endswith("abc")  # short values are too common to hide


# ------------------------------------------------------------------ the real path


Answer = Callable[[str, str], tuple[list[tuple[str, str]], bytes]]


async def _serve_http(stream: trio.SocketStream, answer: Answer) -> None:
    """One request, one hostile answer, then close (the body ends with the connection)."""
    data = b""
    with trio.move_on_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = next(
            (int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), 0
        )
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        headers, body = answer(method, path)
        out = "HTTP/1.1 200 OK\r\nconnection: close\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        try:
            await stream.send_all(out.encode() + b"\r\n" + body)
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


@asynccontextmanager
async def hostile_stack(
    short_dir: Path, answer: Answer, *, api: str = "openai", first_lines: str = ""
) -> AsyncIterator[tuple[Path, Simulator, object]]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, lambda s: _serve_http(s, answer), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        sim = Simulator(models=[MODEL], text=ANSWER, name="second")
        await nursery.start(sim.run)
        base = f"http://127.0.0.1:{port}" + ("/v1" if api == "openai" else "")
        toml = (
            'provider_priority = ["first", "second"]\n'
            "[failover]\nfirst_token_timeout = 5.0\nidle_timeout = 5.0\nmax_attempts = 1\n"
            f'[providers.first]\napi = "{api}"\nbase_url = "{base}"\napi_key = "sk-test-first-0123456789"\n'
            + ('region = "us-east-1"\n' if api == "bedrock" else "")
            + first_lines
            + f'\n[providers.second]\napi = "openai"\nbase_url = "{sim.base_url}"\n'
            f'api_key = "sk-test-second-0123456789"\nmodels = ["{MODEL}"]\n'
            f'[combined.both]\nmembers = ["first/{MODEL}", "second/{MODEL}"]\n'
            '[http]\nlisten = "127.0.0.1:0"\n'
        )
        sock = short_dir / "d.sock"
        server = await open_daemon(parse_config(toml, "test config"), sock, nursery)
        yield sock, sim, server
        nursery.cancel_scope.cancel()


async def _ask_both(sock: Path) -> list[object]:
    from combined_models.client.aio import open_client

    async with open_client(sock) as c:
        events = [e async for e in c.chat("both", "hello")]
        status = await c.status()  # the daemon is alive and answering
    assert {p.id for p in status.providers} == {"first", "second"}
    return events


def _sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


SSE_HEADERS = [("content-type", "text/event-stream")]
HELLO = b'{"choices":[{"index":0,"delta":{"content":"Fail"}}]}'


def _chat_answer(body: bytes, headers: list[tuple[str, str]] = SSE_HEADERS) -> Answer:
    return lambda method, path: (headers, body)


HOSTILE_CHATS = {
    "overlong-line": _chat_answer(b"data: " + b"a" * (9 * 1024 * 1024)),
    "deep-event": _chat_answer(_sse(DEEP)),
    "deep-event-after-output": _chat_answer(_sse(HELLO, DEEP_OBJECT)),
    "number-out-of-range": _chat_answer(
        _sse(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1e999}]}}]}')
    ),
    "gzip-bomb": _chat_answer(
        gzip.compress(b"data: " + b"\0" * (4 * 1024 * 1024)),
        [*SSE_HEADERS, ("content-encoding", "gzip")],
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_CHATS))
async def test_a_hostile_stream_fails_over_to_the_next_provider_with_the_exact_answer(
    short_dir: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "MAX_INFLATED_BODY", 1024 * 1024)
    with trio.fail_after(30):
        async with hostile_stack(short_dir, HOSTILE_CHATS[case]) as (sock, _, _):
            events = await _ask_both(sock)
    assert done_of(events).provider == "second"  # type: ignore[arg-type]
    failover = next(e for e in events if isinstance(e, FailoverEvent))
    assert (failover.from_, failover.reason) == ("first", "transient")
    assert "malformed" in failover.message or "inflates past" in failover.message
    # After output ("Fail") the answer is continued, not repeated: the caller's text is the answer once.
    assert text_of(events) == ANSWER  # type: ignore[arg-type]
    assert failover.after_output is (case == "deep-event-after-output")


async def test_an_overlong_bedrock_frame_is_refused_on_its_prelude_and_fails_over(short_dir: Path) -> None:
    sent: list[int] = []

    def answer(method: str, path: str) -> tuple[list[tuple[str, str]], bytes]:
        prelude = (17 * 1024 * 1024).to_bytes(4, "big") + (0).to_bytes(4, "big")
        frame_start = prelude + zlib.crc32(prelude).to_bytes(4, "big")
        sent.append(len(frame_start))
        return [("content-type", "application/vnd.amazon.eventstream")], frame_start + b"\0" * 1000

    async with hostile_stack(short_dir, answer, api="bedrock", first_lines=f'models = ["{MODEL}"]\n') as (
        sock,
        _,
        _,
    ):
        with trio.fail_after(30):
            events = await _ask_both(sock)
    assert sent, "the bedrock provider was never asked"
    assert text_of(events) == ANSWER and done_of(events).provider == "second"  # type: ignore[arg-type]
    failover = next(e for e in events if isinstance(e, FailoverEvent))
    assert "message length 17825792 exceeds the maximum" in failover.message


LISTINGS = {
    "deep": (b"[" * 20_000 + b"]" * 20_000, "nested"),
    "too-large": (json.dumps({"data": [{"id": f"m{i}"} for i in range(5000)]}).encode(), "larger than"),
    "gzip-bomb": (gzip.compress(b" " * (4 * 1024 * 1024)), "inflates past"),
}


@pytest.mark.parametrize("case", list(LISTINGS))
async def test_a_hostile_model_listing_is_a_listing_failure_and_the_daemon_serves(
    short_dir: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, why = LISTINGS[case]
    monkeypatch.setattr(provider_module, "MAX_LISTING_BODY", 64 * 1024)
    headers = [("content-type", "application/json")]
    if case == "gzip-bomb":
        headers.append(("content-encoding", "gzip"))

    def answer(method: str, path: str) -> tuple[list[tuple[str, str]], bytes]:
        if method == "GET":
            return headers, body
        return SSE_HEADERS, _sse(b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')

    with trio.fail_after(30):
        async with hostile_stack(short_dir, answer) as (sock, _, _):
            events = await _ask_both(sock)  # `both` is explicit: it names first's model anyway
            from combined_models.client.aio import open_client

            async with open_client(sock) as c:
                first = {p.id: p for p in (await c.status()).providers}["first"]
    assert first.catalog_error is not None and why in first.catalog_error, first.catalog_error
    assert first.models_offered == 0
    assert events and done_of(events)  # type: ignore[arg-type]


async def test_a_listing_failure_of_any_kind_keeps_the_last_good_list(short_dir: Path) -> None:
    listings = [json.dumps({"data": [{"id": MODEL}]}).encode(), DEEP]

    def answer(method: str, path: str) -> tuple[list[tuple[str, str]], bytes]:
        return [("content-type", "application/json")], listings.pop(0) if len(listings) > 1 else listings[0]

    with trio.fail_after(30):
        async with hostile_stack(short_dir, answer) as (_sock, _, server):
            actor = server.registry.actors["first"]  # type: ignore[attr-defined]
            assert actor.offered == [MODEL] and actor.catalog_error is None
            assert await actor.discover() is False
            assert actor.offered == [MODEL] and "nested" in actor.catalog_error


async def test_our_own_failure_while_relaying_is_internal_and_never_the_providers(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from combined_models.chat import StreamEvent
    from combined_models.daemon import engine

    from .conftest import error_of, open_stack

    relay = engine.Relay.feed
    broken = [True]

    def tripping_relay(self: engine.Relay, items: list[DecodedItem]) -> list[StreamEvent]:
        if broken[0]:
            raise RuntimeError("a bug of ours while relaying")
        return relay(self, items)

    monkeypatch.setattr(engine.Relay, "feed", tripping_relay)
    async with open_stack(short_dir) as st:
        with trio.fail_after(20):
            events = await st.ask()
            assert error_of(events).kind == "internal"
            assert not any(isinstance(e, FailoverEvent) for e in events)  # no provider was blamed
            async with st.client() as c:
                first = {p.id: p for p in (await c.status()).providers}["first"]
            assert (first.state, first.failures, first.last_error) == ("ready", 0, None)
            broken[0] = False
            events = await st.ask()
    assert text_of(events) == ANSWER and done_of(events).provider == "first"
