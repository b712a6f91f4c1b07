"""Live config reload (`cmctl reload --config`, SIGHUP): what changes, what stays, nothing cut."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from combined_models.chat import StreamEvent, TextEvent
from combined_models.client.aio import open_client
from combined_models.client.sync import Client
from combined_models.config import load_config, parse_config
from combined_models.daemon.reload import diff_configs
from combined_models.daemon.server import Server, make_server, serve_until_signalled
from combined_models.protocol import ReloadInfo
from combined_models.simulator import Fault, Simulator

from .conftest import ANSWER, MODEL, done_of, text_of

CMCTL = [sys.executable, "-m", "combined_models.client.cli"]


def config_text(
    sims: dict[str, Simulator],
    priority: list[str],
    *,
    providers: list[str] | None = None,
    lines: dict[str, str] | None = None,
    failover: str = "",
    extra: str = "",
) -> str:
    """A config serving `providers` (default: `priority`) of `sims`, in that priority."""
    out = [f"provider_priority = {json.dumps(priority)}", "[failover]"]
    out += ["first_token_timeout = 5.0", "idle_timeout = 60.0", "retry_backoff = 0.01", failover]
    for pid in providers or priority:
        out += [
            f"[providers.{pid}]",
            'api = "openai"',
            f'base_url = "{sims[pid].base_url}"',
            f'api_key = "sk-test-{pid}-0123456789"',
            f"models = {json.dumps(list(sims[pid].models))}",
            (lines or {}).get(pid, ""),
        ]
    if "[http]" not in extra:
        extra += '\n[http]\nlisten = "127.0.0.1:0"\n'
    return "\n".join(out) + "\n" + extra


@dataclass
class Daemon:
    sims: dict[str, Simulator]
    config: Path
    socket: Path
    server: Server

    async def ask(self, prompt: str = "hello") -> list[StreamEvent]:
        async with open_client(self.socket) as c:
            return [e async for e in c.chat(MODEL, prompt)]

    def write(self, text: str) -> None:
        self.config.write_text(text)

    async def reload_on_the_wire(self) -> ReloadInfo:
        """What a client is told, through the socket door (the blocking client, in a thread)."""

        def call() -> ReloadInfo:
            with Client(self.socket, timeout=10) as c:
                return c.reload_config()

        return await trio.to_thread.run_sync(call)


@asynccontextmanager
async def running(
    short_dir: Path, names: tuple[str, ...], make: Callable[[dict[str, Simulator]], str] | None = None
) -> AsyncIterator[Daemon]:
    """Simulators, the config file (`make`'s, else `names` in order), and a daemon started from it."""
    async with trio.open_nursery() as nursery:
        sims = {}
        for name in names:
            sims[name] = Simulator(models=[MODEL], text=ANSWER, name=name)
            await nursery.start(sims[name].run)
        path = short_dir / "config.toml"
        path.write_text(make(sims) if make else config_text(sims, list(names)))
        sock = short_dir / "d.sock"
        server = make_server(load_config(path), sock, path, persist=False)
        await nursery.start(server.run)
        yield Daemon(sims, path, sock, server)
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], object]) -> None:
    """Wait for `condition()`: a state reached through socket I/O, which no trio event reports."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def metric_providers(server: Server) -> set[str]:
    text = server.metrics.render().decode()
    return {
        line.split('provider="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith(("cm_provider_state{", "cm_in_flight{", "cm_provider_cooldown_seconds{"))
    }


# ------------------------------------------------------------------ the decision, as a table

BASE = """
provider_priority = ["a", "b"]
[providers.a]
api = "openai"
base_url = "http://127.0.0.1:1/v1"
api_key = "sk-a-0123456789"
[providers.b]
api = "openai"
base_url = "http://127.0.0.1:2/v1"
api_key = "sk-b-0123456789"
"""


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("", {}),
        (
            'provider_priority = ["b", "a"]',
            {"priority": True},
        ),
        (
            '[providers.c]\napi = "openai"\nbase_url = "http://127.0.0.1:3/v1"\napi_key = "sk-c-0123456789"',
            {"added": ("c",)},
        ),
        ("DROP b", {"removed": ("b",)}),
        ("[providers.a]\nmax_concurrency = 3", {"changed": ("a",)}),
        ('[providers.b]\nheaders = { x-org = "o" }', {"changed": ("b",)}),
        ("[failover]\nslot_wait = 1.5\nidle_timeout = 9.0", {"failover": ("idle_timeout", "slot_wait")}),
        ("min_providers = 1\nexclude = ['x']", {"models": ("exclude", "min_providers")}),
        ('[http]\nlisten = "127.0.0.1:9999"', {"restart": ("http",)}),
        ('[logging]\nformat = "json"', {"restart": ("logging",)}),
    ],
    ids=[
        "nothing",
        "priority",
        "added",
        "removed",
        "max_concurrency",
        "headers",
        "failover",
        "models",
        "http",
        "logging",
    ],
)
def test_diff_configs(edit: str, expected: dict[str, object]) -> None:
    old = parse_config(BASE)
    new = parse_config(_edited(BASE, edit))
    change = diff_configs(old, new, env={})
    every = {"added": (), "removed": (), "changed": (), "priority": False, "failover": (), "models": ()}
    every["restart"] = ()
    for key, default in every.items():
        assert getattr(change, key) == expected.get(key, default), key
    assert bool(change.lines()) == bool(expected)
    # Keys that need a restart keep their running value; the rest are the new file's.
    assert change.applied.http == old.http and change.applied.logging == old.logging
    assert change.applied.providers == new.providers and change.applied.failover == new.failover


def _edited(base: str, edit: str) -> str:
    """`base` with `edit` applied: top-level keys first, tables merged by TOML's own rules."""
    if edit == "DROP b":
        return base.split("[providers.b]")[0].replace('["a", "b"]', '["a"]')
    if edit.startswith("provider_priority"):
        return base.replace('provider_priority = ["a", "b"]', edit)
    if edit.startswith("[providers.a]"):
        return base.replace(
            'api_key = "sk-a-0123456789"', 'api_key = "sk-a-0123456789"\n' + edit.split("\n", 1)[1]
        )
    if edit.startswith("[providers.b]"):
        return base + edit.split("\n", 1)[1] + "\n"
    if edit.startswith(("min_providers", "exclude")):
        return edit + "\n" + base
    return base + edit + "\n"


# ------------------------------------------------------------------ acceptance


async def test_reload_mid_stream_finishes_every_answer_and_follows_the_new_priority(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    names = ("first", "second", "third")
    # 10 streams on each of first and second (10 slots each, no waiting for one), stalled mid-answer.
    slots = {"first": "max_concurrency = 10", "second": "max_concurrency = 10"}

    def config(sims: dict[str, Simulator]) -> str:
        return config_text(sims, list(names), lines=slots, failover="slot_wait = 0.0")

    async with running(short_dir, names, config) as d:
        for pid in ("first", "second"):
            d.sims[pid].push_fault(Fault(kind="stall_after", after_chunks=3, seconds=30, times=10))
        answers: list[list[StreamEvent]] = []
        mid_answer = trio.Event()

        async def stream() -> None:
            events: list[StreamEvent] = []
            async with open_client(d.socket) as c:
                async for e in c.chat(MODEL, "hello"):
                    events.append(e)
                    if isinstance(e, TextEvent) and sum(isinstance(x, TextEvent) for x in events) == 1:
                        started.append(1)
                        if len(started) == 20:
                            mid_answer.set()
            answers.append(events)

        started: list[int] = []
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(stream)
            with trio.fail_after(10):
                await mid_answer.wait()
            assert d.sims["first"].statistics().chat_requests == 10
            assert d.sims["second"].statistics().chat_requests == 10

            # first, serving 10 of them, is removed; third comes first.
            d.write(config_text(d.sims, ["third", "second"], lines=slots))
            result = await d.server.reload_config()
            assert result.applied, result.error
            assert "providers removed: first" in result.changes
            assert any(line.startswith("provider_priority: third, second") for line in result.changes)
            clock.jump(31)  # the stalls end; every stream goes on where it was

        assert len(answers) == 20
        assert all(text_of(events) == ANSWER for events in answers)
        served = sorted(done_of(events).provider for events in answers)
        assert served == ["first"] * 10 + ["second"] * 10  # no failover: nothing was cut
        assert done_of(await d.ask()).provider == "third"
        # Drained, the removed provider's connections close.
        await until(lambda: d.sims["first"].statistics().open_connections == 0)


async def test_a_broken_config_is_refused_and_the_daemon_serves_on(short_dir: Path) -> None:
    async with running(short_dir, ("first", "second")) as d:
        before = d.server.registry.cfg
        for text, key in [
            ("this is = not toml [", "not valid TOML"),
            (config_text(d.sims, ["second", "first"], failover="max_attempts = 0"), "failover.max_attempts"),
        ]:
            d.write(text)
            result = await d.reload_on_the_wire()
            assert not result.applied
            assert str(d.config) in result.error and key in result.error, result.error
            assert d.server.registry.cfg is before
            assert done_of(await d.ask()).provider == "first"
        d.config.unlink()  # no file is no providers at all to `load_config`: refused, not applied
        result = await d.reload_on_the_wire()
        assert not result.applied and "no such file" in result.error
        assert done_of(await d.ask()).provider == "first"


async def test_sighup_reloads_the_config(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="combined_models.daemon")
    async with trio.open_nursery() as nursery:
        sims = {}
        for name in ("first", "second"):
            sims[name] = Simulator(models=[MODEL], text=ANSWER, name=name)
            await nursery.start(sims[name].run)
        path = short_dir / "config.toml"
        path.write_text(config_text(sims, ["first", "second"]))
        sock = short_dir / "d.sock"
        server = make_server(load_config(path), sock, path, persist=False)
        stopped = trio.Event()

        async def serve() -> None:
            await serve_until_signalled(server)
            stopped.set()

        nursery.start_soon(serve)
        await until(lambda: sock.exists() and server.registry.actors["first"].offered)
        d = Daemon(sims, path, sock, server)
        assert done_of(await d.ask()).provider == "first"

        d.write(config_text(sims, ["second", "first"]))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: server.registry.cfg.provider_priority == ["second", "first"])
        assert done_of(await d.ask()).provider == "second"
        assert any("config reloaded from" in r.getMessage() for r in caplog.records)
        server.request_stop()
        with trio.fail_after(10):
            await stopped.wait()
        nursery.cancel_scope.cancel()


async def test_added_removed_and_kept_providers_in_status_models_and_metrics(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    def config(sims: dict[str, Simulator]) -> str:
        return config_text(sims, ["first", "second"])

    async with running(short_dir, ("first", "second", "third"), config) as d:
        d.sims["first"].push_fault(Fault(kind="status", status=429, headers={"retry-after": "120"}))
        assert done_of(await d.ask()).provider == "second"  # first is cooling now
        kept = d.server.registry.actors["first"]

        d.write(config_text(d.sims, ["first", "third"]))
        result = await d.reload_on_the_wire()
        assert result.applied and "providers added: third" in result.changes
        assert "providers removed: second" in result.changes

        status = d.server.facade.status()
        assert [p.id for p in status.providers] == ["first", "third"]
        first = status.providers[0]
        assert d.server.registry.actors["first"] is kept
        assert first.cooldown_remaining_s > 100 or any(m.cooldown_remaining_s > 100 for m in first.models)
        assert first.requests == 1 and first.last_error_kind is not None  # its counters too
        members = [m.provider for m in d.server.facade.models_info().models[0].members]
        assert members == ["first", "third"]
        assert metric_providers(d.server) == {"first", "third"}
        assert done_of(await d.ask()).provider == "third"
        await until(lambda: d.sims["second"].statistics().open_connections == 0)


async def test_changed_settings_get_a_new_actor_and_restart_only_keys_are_named(short_dir: Path) -> None:
    async with running(short_dir, ("first", "second")) as d:
        old = d.server.registry.actors["second"]
        listen = d.server.registry.cfg.http.listen
        d.write(
            config_text(
                d.sims,
                ["first", "second"],
                lines={"second": "max_concurrency = 3"},
                failover="slot_wait = 1.5",
                extra='[http]\nlisten = "127.0.0.1:1"\n',
            )
        )
        result = await d.reload_on_the_wire()
        assert result.applied and result.restart == ["http"]
        assert "providers changed: second" in result.changes
        assert any("needs a restart" in line and "http" in line for line in result.changes)
        reg = d.server.registry
        assert reg.actors["second"] is not old and reg.actors["first"].failover.slot_wait == 1.5
        assert reg.cfg.http.listen == listen  # kept until a restart
        assert d.server.router.policy.slot_wait == 1.5
        assert done_of(await d.ask()).provider == "first"


async def test_a_reload_while_stopping_is_refused(short_dir: Path) -> None:
    async with running(short_dir, ("first", "second")) as d:
        d.server.request_stop()
        result = await d.server.reload_config()
        assert not result.applied and "stopping" in result.error


async def test_cmctl_reload_config(short_dir: Path) -> None:
    async with running(short_dir, ("first", "second")) as d:

        async def cmctl(*args: str) -> subprocess.CompletedProcess[bytes]:
            with trio.fail_after(30):
                return await trio.run_process(
                    [*CMCTL, *args, "--socket", str(d.socket)],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )

        d.write(config_text(d.sims, ["second", "first"]))
        r = await cmctl("reload", "--config")
        assert r.returncode == 0, r.stderr
        assert b"config reloaded: provider_priority: second, first" in r.stdout
        assert MODEL.encode() in r.stdout
        assert done_of(await d.ask()).provider == "second"

        d.write(config_text(d.sims, ["first"], failover="max_attempts = 0"))
        r = await cmctl("reload", "--config")
        assert r.returncode == 2
        assert str(d.config).encode() in r.stderr and b"failover.max_attempts" in r.stderr
        assert b"Traceback" not in r.stderr
        assert done_of(await d.ask()).provider == "second"

        r = await cmctl("reload")  # unchanged meaning: list the models again
        assert r.returncode == 0 and MODEL.encode() in r.stdout
    r = await trio.run_process(
        [*CMCTL, "reload", "--config", "--socket", str(short_dir / "none.sock")],
        capture_stderr=True,
        check=False,
    )
    assert r.returncode == 3 and b"no daemon" in r.stderr


async def test_the_async_client_reloads_the_config_too(short_dir: Path) -> None:
    async with running(short_dir, ("first", "second")) as d:
        assert done_of(await d.ask()).provider == "first"
        d.write(config_text(d.sims, ["second", "first"]))
        async with open_client(d.socket) as c:
            result = await c.reload_config()
        assert result.applied, result.error
        assert done_of(await d.ask()).provider == "second"
        d.write("this is = not toml [")
        async with open_client(d.socket) as c:
            refused = await c.reload_config()
        assert not refused.applied and "not valid TOML" in refused.error
        assert done_of(await d.ask()).provider == "second"  # still the running config
