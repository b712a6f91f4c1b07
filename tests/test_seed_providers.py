"""The four seed providers, each in its own wire format (simulated), behind one combined model.

Anthropic (Messages SSE), GitHub Copilot (token exchange + OpenAI shape), Amazon
Bedrock (SigV4 + binary event-stream) and OpenRouter (OpenAI shape + extras).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from combined_models.chat import (
    ChatRequest,
    DecodedItem,
    FailoverEvent,
    Finished,
    ImagePart,
    Message,
    TextEvent,
    TextPart,
    ThinkingEvent,
    ThinkingPart,
    Tool,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
)
from combined_models.client.aio import open_client
from combined_models.config import parse_config, resolve_provider
from combined_models.daemon import Server, open_daemon
from combined_models.daemon.credentials import resolve_credentials
from combined_models.daemon.dialects import dialect_for
from combined_models.daemon.errors import UpstreamError
from combined_models.simulator import Fault, Simulator

from .conftest import ANSWER, done_of, error_of, text_of

# (provider id, simulator dialect, api, the id this provider lists the model under)
SEED = [
    ("anthropic", "anthropic", "anthropic", "claude-sonnet-4-5-20250929"),
    ("github-copilot", "copilot", "copilot", "claude-sonnet-4.5"),
    ("amazon-bedrock", "bedrock", "bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("openrouter", "openrouter", "openai", "anthropic/claude-sonnet-4.5"),
]
KEYS = {  # recognisable fake credentials: none may ever show up in output
    "anthropic": "sk-ant-CANARY-anthropic-0123456789",
    "github-copilot": "gho_CANARY_copilot_0123456789",
    "openrouter": "sk-or-CANARY-openrouter-0123456789",
}
AWS_KEY_ID, AWS_SECRET = "AKIACANARY0123456789", "CANARY/aws/secret/0123456789abcdefghij"
COMBINED = "claude-sonnet-4-5"
FAST = "[failover]\nfirst_token_timeout = 1.0\nidle_timeout = 0.5\nretry_backoff = 0.01\n"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    for var in (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(var, raising=False)


def seed_config(sims: dict[str, Simulator], extra: str = "") -> str:
    lines = [f"provider_priority = {[p for p, *_ in SEED]!r}".replace("'", '"'), FAST]
    for pid, _, _, _ in SEED:
        sim = sims[pid]
        lines.append(f'[providers.{pid}]\nbase_url = "{sim.base_url}"')
        if pid == "amazon-bedrock":
            lines.append('region = "us-east-1"')
        elif pid == "github-copilot":
            lines.append(f'api_key = "{KEYS[pid]}"\nauth_url = "{sim.origin}"')
        else:
            lines.append(f'api_key = "{KEYS[pid]}"')
    return "\n".join(lines) + '\n[http]\nlisten = "127.0.0.1:0"\n' + extra


@dataclass
class Seed:
    sims: dict[str, Simulator]
    server: Server

    async def ask(self, model: str, prompt: str = "hello") -> list[object]:
        async with open_client(self.server.socket_path) as c:
            return [e async for e in c.chat(model, prompt)]


@asynccontextmanager
async def seed(short_dir: Path, extra: str = "", **sim_options: object) -> AsyncIterator[Seed]:
    async with trio.open_nursery() as nursery:
        sims: dict[str, Simulator] = {}
        for pid, dialect, _, model in SEED:
            sims[pid] = Simulator(
                dialect=dialect,
                models=[model],
                text=ANSWER,
                name=pid,
                api_key=KEYS.get(pid),
                aws_secret=AWS_SECRET if dialect == "bedrock" else None,
                **sim_options,  # type: ignore[arg-type]
            )
            await nursery.start(sims[pid].run)
        server = await open_daemon(parse_config(seed_config(sims, extra)), short_dir / "d.sock", nursery)
        yield Seed(sims, server)
        nursery.cancel_scope.cancel()


async def test_the_four_seed_providers_form_one_combined_model_from_their_own_listings(
    short_dir: Path,
) -> None:
    async with seed(short_dir) as s, open_client(s.server.socket_path) as c:
        models = {m.id: m for m in (await c.models()).models}
        assert [(x.provider, x.model) for x in models[COMBINED].members] == [(p, m) for p, _, _, m in SEED]
        status = {p.id: p for p in (await c.status()).providers}
        assert [status[p].catalog for p, *_ in SEED] == ["live"] * 4
        assert status["amazon-bedrock"].key_source.startswith("aws")
        events = [e async for e in c.chat(COMBINED, "hi")]
        assert text_of(events) == ANSWER  # type: ignore[arg-type]
        assert done_of(events).provider == "anthropic"  # type: ignore[arg-type]


PAIRS = [
    ("anthropic", "github-copilot"),
    ("github-copilot", "amazon-bedrock"),
    ("amazon-bedrock", "openrouter"),
    ("openrouter", "anthropic"),
    ("anthropic", "amazon-bedrock"),
]
FAULTS = [
    Fault(kind="reset_after", after_chunks=4),
    Fault(kind="inband_error_after", after_chunks=4),
    Fault(kind="stall_after", after_chunks=4),
    Fault(kind="no_terminator", after_chunks=4),
    Fault(kind="malformed_after", after_chunks=4),
    Fault(kind="stall_before"),
    Fault(kind="status", status=429, seconds=30),
    Fault(kind="status", status=503),
    Fault(kind="status", status=500, times=3),
    Fault(kind="reset_before_headers", times=3),
]


def pair_config() -> str:
    model = {p: m for p, _, _, m in SEED}
    return "".join(
        f'[combined."{a}-then-{b}"]\nmembers = ["{a}/{model[a]}", "{b}/{model[b]}"]\n' for a, b in PAIRS
    )


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_every_fault_on_each_seed_provider_ends_in_a_complete_answer_from_the_next(
    short_dir: Path, pair: tuple[str, str], clock: trio.testing.MockClock
) -> None:
    first, second = pair
    async with seed(short_dir, extra=pair_config()) as s:
        for fault in FAULTS:
            s.sims[first].push_fault(fault)
            with trio.fail_after(10):
                events = await s.ask(f"{first}-then-{second}")
            label = f"{fault.kind}/{fault.status}"
            assert text_of(events) == ANSWER, label  # type: ignore[arg-type]
            assert done_of(events).provider == second, label  # type: ignore[arg-type]
            failover = next(e for e in events if isinstance(e, FailoverEvent))
            assert (failover.from_, failover.to) == (first, second), label
            s.sims[first].clear_faults()
            clock.jump(120)  # past any cooldown the fault left: the next request probes the first again


async def test_a_copilot_token_that_expires_is_refreshed_without_failing_a_request(short_dir: Path) -> None:
    async with seed(
        short_dir, extra='[combined.copilot-only]\nmembers = ["github-copilot/claude-sonnet-4.5"]\n'
    ) as s:
        copilot = s.sims["github-copilot"]
        assert done_of(await s.ask("copilot-only")).provider == "github-copilot"  # type: ignore[arg-type]
        exchanges = copilot.statistics().endpoint_requests.get("token", 0)
        copilot.expire_tokens()  # mid-session, the short-lived token runs out
        events = await s.ask("copilot-only")
        assert text_of(events) == ANSWER  # type: ignore[arg-type]
        assert done_of(events).provider == "github-copilot"  # type: ignore[arg-type]
        assert copilot.statistics().endpoint_requests.get("token", 0) == exchanges + 1
        status = {p.id: p for p in (await _status(s))}
        assert status["github-copilot"].failures == 0 and status["github-copilot"].state == "ready"


async def _status(s: Seed) -> list[object]:
    async with open_client(s.server.socket_path) as c:
        return list((await c.status()).providers)


async def test_no_credential_ever_appears_in_logs_errors_or_status(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with seed(short_dir) as s, open_client(s.server.socket_path) as c:
        for pid, sim in s.sims.items():
            # providers that echo the key back in their error, as OpenAI does
            key = KEYS.get(pid, AWS_SECRET)
            status, code = (403, "UnrecognizedClientException") if pid == "amazon-bedrock" else (401, None)
            message = f"Incorrect API key provided: {key}"
            sim.push_fault(Fault(kind="status", status=status, code=code, message=message, times=2))
        err = error_of([e async for e in c.chat(COMBINED, "hi")])  # type: ignore[arg-type]
        assert err.kind == "all_providers_failed"
        status = msgspec.json.encode(await c.status()).decode()
        models = msgspec.json.encode(await c.models()).decode()
    seen = "\n".join([msgspec.json.encode(err).decode(), status, models, caplog.text])
    for secret in [*KEYS.values(), AWS_SECRET]:
        assert secret not in seen
        assert secret[8:24] not in seen  # nor a long piece of it
    assert "Incorrect API key provided" in seen  # the errors themselves are there


# ---------------------------------------------------------------- round trips through each dialect

CONVERSATION = ChatRequest(
    system="You are terse.",
    messages=[
        Message(
            "user",
            [
                TextPart("What is in this picture, and the weather in Paris?"),
                ImagePart(media_type="image/png", data="aGVsbG8gd29ybGQ="),
            ],
        ),
        Message(
            "assistant",
            [
                ThinkingPart(text="Look, then call the tool.", signature="sig-1"),
                TextPart("A greeting. Checking the weather."),
                ToolCallPart("call_1", "get_weather", {"city": "Paris"}),
            ],
        ),
        Message("user", [ToolResultPart(tool_call_id="call_1", content="21 C and sunny")]),
    ],
    tools=[
        Tool(
            name="get_weather",
            description="Weather in a city",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        )
    ],
    max_tokens=512,
)


async def _round_trip(
    sim: Simulator, api: str, model: str, request: ChatRequest, pid: str
) -> list[DecodedItem]:
    """Encode with the daemon's dialect, serve with the simulator, decode the answer."""
    cfg = parse_config(seed_config({p: sim for p, *_ in SEED}))
    provider = resolve_provider(cfg, pid)
    creds, _, why = resolve_credentials(provider)
    assert creds is not None, why
    dialect = dialect_for(api)
    assert dialect is not None
    async with httpx.AsyncClient() as client:
        endpoint = await creds.endpoint(client)
        req = dialect.build_chat(request, model, endpoint, datetime.now(UTC))
        items: list[DecodedItem] = []
        decoder = dialect.stream_decoder()
        async with client.stream(req.method, req.url, headers=req.headers, content=req.body) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for chunk in resp.aiter_bytes():
                items += decoder.feed(chunk)
        try:
            items += decoder.close()
        except UpstreamError:
            raise
    return items


@pytest.mark.parametrize(("pid", "dialect", "api", "model"), SEED, ids=[p for p, *_ in SEED])
async def test_a_whole_conversation_round_trips_through_each_dialect(
    pid: str, dialect: str, api: str, model: str
) -> None:
    sim = Simulator(
        dialect=dialect,
        models=[model],
        text=ANSWER,
        thinking="Let me think.",
        api_key=KEYS.get(pid),
        aws_secret=AWS_SECRET if dialect == "bedrock" else None,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        items = await _round_trip(sim, api, model, CONVERSATION, pid)
        nursery.cancel_scope.cancel()
    # The conversation arrived whole: same system, turns, image, tool call and result in every dialect.
    seen = sim.requests[-1].conversation
    assert seen["system"] == "You are terse."
    roles = [m["role"] for m in seen["messages"]]
    assert roles == ["user", "assistant", "user"]
    kinds = [[p["type"] for p in m["parts"]] for m in seen["messages"]]
    assert kinds[0] == ["text", "image"] and kinds[2] == ["tool_result"]
    assert seen["messages"][0]["parts"][1]["data_length"] == len(b"hello world")
    call = next(p for p in seen["messages"][1]["parts"] if p["type"] == "tool_call")
    assert (call["name"], call["arguments"]) == ("get_weather", {"city": "Paris"})
    result = seen["messages"][2]["parts"][0]
    assert result["content"] == "21 C and sunny" and result["id"] == call["id"]
    # ...and the answer decodes into the same neutral events.
    thinking = "".join(i.text for i in items if isinstance(i, ThinkingEvent))
    assert thinking == "Let me think."
    assert "".join(i.text for i in items if isinstance(i, TextEvent)) == ANSWER
    finished = items[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "stop"
    assert finished.usage.output_tokens > 0


@pytest.mark.parametrize(("pid", "dialect", "api", "model"), SEED, ids=[p for p, *_ in SEED])
async def test_tool_calls_come_back_whole_from_each_dialect(
    pid: str, dialect: str, api: str, model: str
) -> None:
    sim = Simulator(
        dialect=dialect,
        models=[model],
        text=ANSWER,
        api_key=KEYS.get(pid),
        aws_secret=AWS_SECRET if dialect == "bedrock" else None,
    )
    ask = ChatRequest(
        messages=[Message("user", "Weather in Paris?")], tools=CONVERSATION.tools, max_tokens=256
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        items = await _round_trip(sim, api, model, ask, pid)
        nursery.cancel_scope.cancel()
    calls = [i for i in items if isinstance(i, ToolCallEvent)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    finished = items[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "tool_calls"
