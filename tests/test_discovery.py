"""Model discovery: live listings, the cached catalog when a listing fails, combined models from them."""

from __future__ import annotations

import functools
import gzip
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from combined_models.chat import DoneEvent
from combined_models.client.aio import open_client
from combined_models.config import parse_config
from combined_models.daemon import Server, make_server
from combined_models.simulator import Simulator

from .conftest import ANSWER

SEED_IDS = {  # real-style ids of one model at the four seed providers (all served by OpenAI-shaped sims here)
    "anthropic-like": "claude-sonnet-4-5-20250929",
    "bedrock-like": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "openrouter-like": "anthropic/claude-sonnet-4.5",
    "copilot-like": "claude-sonnet-4.5",
}


def discovering_config(urls: dict[str, str]) -> str:
    lines = [
        f"provider_priority = {list(urls)!r}".replace("'", '"'),
        "[failover]",
        "first_token_timeout = 1.0",
    ]
    for pid, url in urls.items():
        lines += [
            f"[providers.{pid}]",
            'api = "openai"',
            f'base_url = "{url}"',
            'api_key = "sk-x-0123456789"',
        ]
    return "\n".join(lines) + '\n[http]\nlisten = "127.0.0.1:0"\n'


@asynccontextmanager
async def sims(names_models: dict[str, list[str]]) -> AsyncIterator[dict[str, Simulator]]:
    async with trio.open_nursery() as nursery:
        out = {}
        for name, models in names_models.items():
            out[name] = Simulator(models=models, text=ANSWER, name=name)
            await nursery.start(out[name].run)
        yield out
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def daemon(toml: str, sock: Path) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server = make_server(parse_config(toml), sock)  # persistent: catalogs and health in the state dir
        await nursery.start(server.run)
        yield server
        server.request_stop()


@asynccontextmanager
async def broken_listing(kind: str) -> AsyncIterator[str]:
    """An endpoint whose /models answers 500, bad JSON, or nothing at all (a stall)."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            if kind == "stall":
                await trio.sleep_forever()
            body = b"{not json" if kind == "bad-json" else b'{"error":{"message":"boom"}}'
            status = b"200 OK" if kind == "bad-json" else b"500 Internal Server Error"
            await stream.send_all(
                b"HTTP/1.1 "
                + status
                + b"\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1"
        nursery.cancel_scope.cancel()


async def test_four_real_style_ids_form_one_combined_model_in_priority_order(short_dir: Path) -> None:
    async with sims({pid: [mid, "unrelated-model-x"] for pid, mid in SEED_IDS.items()}) as ss:
        toml = discovering_config({pid: sim.base_url for pid, sim in ss.items()})
        async with daemon(toml, short_dir / "d.sock") as server, open_client(server.socket_path) as c:
            models = {m.id: m for m in (await c.models()).models}
            assert "claude-sonnet-4-5" in models, list(models)
            members = [(x.provider, x.model) for x in models["claude-sonnet-4-5"].members]
            assert members == list(SEED_IDS.items())
            events = [e async for e in c.chat("claude-sonnet-4-5", "hi")]
            assert events[-1].provider == "anthropic-like"  # type: ignore[union-attr]
            status = {p.id: p for p in (await c.status()).providers}
            assert all(p.catalog == "live" and p.models_offered == 2 for p in status.values())


@pytest.mark.parametrize("failure", ["500", "bad-json", "stall", "unreachable"])
async def test_a_failing_listing_keeps_the_cached_catalog(
    short_dir: Path, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import combined_models.daemon.provider as provider

    monkeypatch.setattr(provider, "DISCOVERY_TIMEOUT", 1.0)
    sock = short_dir / "d.sock"
    async with sims({"a": ["model-one"], "b": ["model-one"]}) as ss:
        urls = {pid: sim.base_url for pid, sim in ss.items()}
        async with daemon(discovering_config(urls), sock) as server, open_client(server.socket_path) as c:
            assert [m.id for m in (await c.models()).models] == ["model-one"]

        # Restart with provider a's listing broken: it serves its cached models and says why.
        async with broken_listing(failure if failure != "unreachable" else "500") as bad_url:
            if failure == "unreachable":
                bad_url = "http://127.0.0.1:9/v1"  # the discard port: connection refused
            toml = discovering_config({"a": bad_url, "b": urls["b"]})
            async with daemon(toml, sock) as server, open_client(server.socket_path) as c:
                models = (await c.models()).models
                assert [(m.id, [x.provider for x in m.members]) for m in models] == [
                    ("model-one", ["a", "b"])
                ]
                a = {p.id: p for p in (await c.status()).providers}["a"]
                assert a.catalog == "cached" and a.models_offered == 1
                assert a.catalog_error and "model listing failed" in a.catalog_error
                events = [e async for e in c.chat("model-one", "hi")]
                assert events[-1].provider == "b"  # type: ignore[union-attr]


async def test_the_daemon_starts_from_cache_with_every_provider_unreachable(short_dir: Path) -> None:
    sock = short_dir / "d.sock"
    async with sims({"a": ["model-one"], "b": ["model-one"]}) as ss:
        toml = discovering_config({pid: sim.base_url for pid, sim in ss.items()})
        async with daemon(toml, sock):
            pass
    dead = discovering_config({"a": "http://127.0.0.1:9/v1", "b": "http://127.0.0.1:9/v1"})
    with trio.fail_after(5):
        async with daemon(dead, sock) as server, open_client(server.socket_path) as c:
            assert [m.id for m in (await c.models()).models] == ["model-one"]


@asynccontextmanager
async def serve_bytes(body: bytes, encoding: str = "") -> AsyncIterator[str]:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            head += f"content-encoding: {encoding}\r\n" if encoding else ""
            await stream.send_all(head.encode() + b"connection: close\r\n\r\n" + body)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/api.json"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("encoding", ["", "gzip"])
async def test_models_dev_metadata_enriches_members_when_turned_on(short_dir: Path, encoding: str) -> None:
    meta = json.dumps(
        {
            "anthropic": {
                "models": {
                    "claude-sonnet-4-5-20250929": {
                        "limit": {"context": 200000, "output": 64000},
                        "cost": {"input": 3, "output": 15},
                    }
                }
            },
            "openrouter": {"models": {"anthropic/claude-sonnet-4.5": {"limit": {"context": 1000}}}},
        }
    ).encode()
    ids = {"anthropic": "claude-sonnet-4-5-20250929", "openrouter": "anthropic/claude-sonnet-4.5"}
    body = gzip.compress(meta) if encoding else meta
    async with sims({pid: [mid] for pid, mid in ids.items()}) as ss, serve_bytes(body, encoding) as url:
        toml = discovering_config({pid: sim.base_url for pid, sim in ss.items()})
        toml = f'metadata = "models.dev"\nmetadata_url = "{url}"\n' + toml
        async with daemon(toml, short_dir / "d.sock") as server, open_client(server.socket_path) as c:
            with trio.fail_after(5):
                while (  # noqa: ASYNC110 (polls the daemon over its socket)
                    not (await c.models()).models
                    or (await c.models()).models[0].members[0].context_window is None
                ):
                    await trio.sleep(0.02)
            members = {m.provider: m for m in (await c.models()).models[0].members}
            assert (members["anthropic"].context_window, members["anthropic"].input_cost) == (200000, 3.0)
            assert members["openrouter"].context_window == 1000
            # the metadata feeds failover: a prompt longer than openrouter's known window skips it
            server.registry.actors["anthropic"].disable("test")
            events = [e async for e in c.chat("claude-sonnet-4-5", "word " * 2000)]
            assert events[-1].kind == "bad_request"  # type: ignore[union-attr]
            assert "window" in events[-1].message  # type: ignore[union-attr]


async def test_a_metadata_bomb_is_refused_and_changes_nothing(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bomb = gzip.compress(b"{" + b" " * (40 * 1024 * 1024) + b"}")  # 40 MB of JSON in about 40 KB
    async with sims({"a": ["model-one"], "b": ["model-one"]}) as ss, serve_bytes(bomb, "gzip") as url:
        toml = f'metadata = "models.dev"\nmetadata_url = "{url}"\n'
        toml += discovering_config({pid: sim.base_url for pid, sim in ss.items()})
        caplog.set_level(logging.INFO, logger="combined_models.daemon")
        async with daemon(toml, short_dir / "d.sock") as server, open_client(server.socket_path) as c:
            with trio.fail_after(10):
                while "model metadata unavailable" not in caplog.text:  # noqa: ASYNC110 (the fetch ends in a log line)
                    await trio.sleep(0.02)
            assert "inflates past" in caplog.text
            assert all(not a._metadata for a in server.registry.actors.values())
            events = [e async for e in c.chat("model-one", "hi")]
            assert isinstance(events[-1], DoneEvent)


async def test_metadata_unreachable_changes_nothing(short_dir: Path) -> None:
    async with sims({"a": ["model-one"], "b": ["model-one"]}) as ss:
        toml = 'metadata = "models.dev"\nmetadata_url = "http://127.0.0.1:9/api.json"\n'
        toml += discovering_config({pid: sim.base_url for pid, sim in ss.items()})
        async with daemon(toml, short_dir / "d.sock") as server, open_client(server.socket_path) as c:
            members = (await c.models()).models[0].members
            assert [m.context_window for m in members] == [None, None]
            assert [e async for e in c.chat("model-one", "hi")][-1].provider == "a"  # type: ignore[union-attr]
