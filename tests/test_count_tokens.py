"""`POST /v1/messages/count_tokens`: a real count from a member that can count, or an honest error.

First the pure parts (each count endpoint's request and answer, the front door's body and
reply), then the official Anthropic SDK end to end against simulated providers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import anthropic
import httpx
import msgspec
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.serialize import create_serializer
from botocore.session import get_session

from combined_models.chat import ChatRequest, Message, TextPart, Tool, ToolCallPart, ToolResultPart
from combined_models.config import parse_config
from combined_models.daemon import open_daemon
from combined_models.daemon.dialects.aws_credentials import AwsCredentials
from combined_models.daemon.dialects.base import Endpoint, HttpRequest
from combined_models.daemon.dialects.bedrock import converse_body
from combined_models.daemon.dialects.counting import counter_for, foundation_model_id, parse_count
from combined_models.daemon.errors import Failure, UpstreamError
from combined_models.daemon.facade import CountResult
from combined_models.daemon.gateway.server import COUNT_MAX_TOKENS, count_body, count_reply
from combined_models.simulator import Fault, Simulator
from combined_models.simulator.counting import estimate_tokens

from .conftest import FrontDoor

NOW = datetime(2025, 5, 14, 9, 30, 5, tzinfo=UTC)
CREDS = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
WEATHER = Tool(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CONVERSATION = ChatRequest(
    system="You are terse.",
    messages=[
        Message("user", "Weather in Paris?"),
        Message("assistant", [ToolCallPart("toolu_1", "get_weather", {"city": "Paris"})]),
        Message("user", [ToolResultPart(tool_call_id="toolu_1", content="21 C"), TextPart("Thanks.")]),
    ],
    tools=[WEATHER],
    tool_choice="auto",
    max_tokens=300,
    temperature=0.5,
    stop=["END"],
)


# ================================================================ the count requests (pure)


def test_anthropic_counts_the_messages_body_without_its_sampling_fields() -> None:
    endpoint = Endpoint(base_url="https://api.anthropic.com/v1", api_key="sk-ant-k", headers={"X-Org": "o"})
    req = counter_for("anthropic").build_count(CONVERSATION, "claude-x", endpoint)  # type: ignore[union-attr]
    assert (req.method, req.url) == ("POST", "https://api.anthropic.com/v1/messages/count_tokens")
    assert req.headers["accept"] == "application/json" and req.headers["x-api-key"] == "sk-ant-k"
    assert req.headers["anthropic-version"] == "2023-06-01" and req.headers["X-Org"] == "o"
    body = json.loads(req.body)
    # What shapes the prompt stays; max_tokens, stream, temperature and stop_sequences go.
    assert sorted(body) == ["messages", "model", "system", "tool_choice", "tools"]
    assert body["model"] == "claude-x" and body["system"] == "You are terse."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["tools"][0]["name"] == "get_weather" and body["tool_choice"] == {"type": "auto"}


def test_anthropic_count_keeps_thinking_and_an_oauth_bearer() -> None:
    endpoint = Endpoint(base_url="https://proxy.example", api_key="oauth-token", options={"auth": "bearer"})
    request = ChatRequest(messages=[Message("user", "hi")], thinking_budget=2048, max_tokens=COUNT_MAX_TOKENS)
    req = counter_for("anthropic").build_count(request, "claude-x", endpoint)  # type: ignore[union-attr]
    assert req.url == "https://proxy.example/v1/messages/count_tokens"
    assert req.headers["authorization"] == "Bearer oauth-token" and "x-api-key" not in req.headers
    body = json.loads(req.body)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and "max_tokens" not in body


@pytest.mark.parametrize(
    ("model", "bare"),
    [
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0"),
        ("eu.anthropic.claude-3-7-sonnet-20250219-v1:0", "anthropic.claude-3-7-sonnet-20250219-v1:0"),
        ("apac.amazon.nova-pro-v1:0", "amazon.nova-pro-v1:0"),
        ("global.anthropic.claude-opus-4-6-v1", "anthropic.claude-opus-4-6-v1"),
        ("us-gov.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
        ("jp.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0"),
        ("meta.llama3-70b-instruct-v1:0", "meta.llama3-70b-instruct-v1:0"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
        ),
    ],
)
def test_bedrock_counts_at_the_foundation_model_behind_a_profile(model: str, bare: str) -> None:
    assert foundation_model_id(model) == bare


@pytest.fixture
def frozen_botocore_clock() -> Iterator[None]:
    # botocore's SigV4Auth reads the time through get_current_datetime (naive UTC).
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        yield


def botocore_count_body(converse: dict[str, Any]) -> Any:
    """What botocore itself sends for CountTokens with this Converse input."""
    operation = get_session().get_service_model("bedrock-runtime").operation_model("CountTokens")
    params = {"modelId": "m", "input": {"converse": converse}}
    serialized = create_serializer("rest-json").serialize_to_request(params, operation)
    assert serialized["url_path"] == "/model/m/count-tokens" and serialized["method"] == "POST"
    return json.loads(serialized["body"])


def botocore_authorization(req: HttpRequest, region: str) -> str:
    unsigned = {k: v for k, v in req.headers.items() if k not in ("authorization", "x-amz-date")}
    aws = AWSRequest(method=req.method, url=req.url, headers=unsigned, data=req.body)
    SigV4Auth(Credentials(CREDS.access_key_id, CREDS.secret_access_key), "bedrock", region).add_auth(aws)
    return str(aws.headers["Authorization"])


@pytest.mark.usefixtures("frozen_botocore_clock")
def test_bedrock_count_body_and_signature_are_botocores() -> None:
    endpoint = Endpoint(base_url="", credentials=CREDS, region="eu-central-1")
    model = "eu.anthropic.claude-sonnet-4-20250514-v1:0"
    req = counter_for("bedrock").build_count(CONVERSATION, model, endpoint, NOW)  # type: ignore[union-attr]
    assert req.url == (
        "https://bedrock-runtime.eu-central-1.amazonaws.com/model/anthropic.claude-sonnet-4-20250514-v1:0/count-tokens"
    )
    body = json.loads(req.body)
    converse = converse_body(CONVERSATION, foundation_model_id(model))
    # The Converse body the dialect would stream, without its inferenceConfig (no such member here).
    expected = {k: v for k, v in converse.items() if k != "inferenceConfig"}
    assert body == {"input": {"converse": expected}}
    assert body == botocore_count_body(expected)
    assert req.headers["authorization"] == botocore_authorization(req, "eu-central-1")


def test_bedrock_count_with_an_api_key_is_a_bearer() -> None:
    endpoint = Endpoint(base_url="https://bedrock.example", api_key="bedrock-key", region="us-west-2")
    req = counter_for("bedrock").build_count(  # type: ignore[union-attr]
        ChatRequest(messages=[Message("user", "hi")]), "anthropic.claude-x-v1:0", endpoint
    )
    assert req.url == "https://bedrock.example/model/anthropic.claude-x-v1:0/count-tokens"
    assert req.headers["authorization"] == "Bearer bedrock-key" and "x-amz-date" not in req.headers


@pytest.mark.parametrize("model", ["gemini-2.5-pro", "models/gemini-2.5-pro"])
def test_gemini_counts_the_whole_generate_content_request(model: str) -> None:
    endpoint = Endpoint(base_url="https://generativelanguage.googleapis.com/v1beta", api_key="g-key")
    req = counter_for("gemini").build_count(CONVERSATION, model, endpoint)  # type: ignore[union-attr]
    assert req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:countTokens"
    assert req.headers["x-goog-api-key"] == "g-key" and req.headers["accept"] == "application/json"
    body = json.loads(req.body)
    assert list(body) == ["generateContentRequest"]
    inner = body["generateContentRequest"]
    assert inner["model"] == "models/gemini-2.5-pro"
    # Only this form carries the system instruction and the tools.
    assert inner["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert inner["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert [c["role"] for c in inner["contents"]] == ["user", "model", "user"]


@pytest.mark.parametrize("api", ["openai", "copilot", "nonesuch"])
def test_apis_without_a_count_endpoint_have_no_counter(api: str) -> None:
    assert counter_for(api) is None


@pytest.mark.parametrize(
    ("api", "body", "count"),
    [
        ("anthropic", b'{"input_tokens": 2095}', 2095),
        ("bedrock", b'{"inputTokens": 17}', 17),
        (
            "gemini",
            b'{"totalTokens": 31, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]}',
            31,
        ),
    ],
)
def test_each_count_answer_is_read(api: str, body: bytes, count: int) -> None:
    assert counter_for(api).parse_count(body) == count  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"input_tokens": 0}',
        b'{"input_tokens": -3}',
        b'{"input_tokens": true}',
        b'{"input_tokens": "9"}',
        b'{"input_tokens": 1.5}',
        b"[1]",
        b"not json",
        b'{"inputTokens": 5}',
    ],
)
def test_no_count_is_made_of_an_answer_without_one(body: bytes) -> None:
    # A 0 would be trusted by a client that compacts by it: it is no count.
    with pytest.raises(ValueError):
        parse_count(body, "input_tokens")


@pytest.mark.parametrize(
    ("api", "status", "headers", "body", "kind"),
    [
        (
            "bedrock",
            400,
            {"x-amzn-ErrorType": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"},
            b'{"message": "The provided model doesn\'t support counting tokens."}',
            Failure.BAD_REQUEST,
        ),
        (
            "bedrock",
            429,
            {"x-amzn-ErrorType": "ThrottlingException"},
            b'{"message": "slow down"}',
            Failure.RATE_LIMITED,
        ),
        (
            "anthropic",
            404,
            {},
            b'{"type": "error", "error": {"type": "not_found_error", "message": "Not found"}}',
            Failure.NOT_FOUND,
        ),
        (
            "anthropic",
            529,
            {},
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            Failure.OVERLOADED,
        ),
        (
            "gemini",
            429,
            {},
            b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}',
            Failure.RATE_LIMITED,
        ),
    ],
)
def test_count_errors_are_read_as_the_dialect_reads_its_own(
    api: str, status: int, headers: dict[str, str], body: bytes, kind: Failure
) -> None:
    error = counter_for(api).dialect.classify_error(status, headers, body, NOW)  # type: ignore[union-attr]
    assert isinstance(error, UpstreamError) and error.kind is kind and error.status == status


# ================================================================ the front door's side (pure)


@pytest.mark.parametrize(
    ("body", "max_tokens"),
    [
        ({"model": "m", "messages": []}, COUNT_MAX_TOKENS),
        ({"model": "m", "messages": [], "max_tokens": 7}, 7),  # one the client named stays
        (
            {"model": "m", "messages": [], "thinking": {"type": "enabled", "budget_tokens": 2048}},
            COUNT_MAX_TOKENS,
        ),
        ({"model": "m", "messages": [], "thinking": {"type": "enabled", "budget_tokens": 40000}}, 44096),
    ],
)
def test_a_count_body_gets_the_max_tokens_the_messages_parser_wants(
    body: dict[str, Any], max_tokens: int
) -> None:
    assert json.loads(count_body(json.dumps(body).encode()))["max_tokens"] == max_tokens


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"text"'])
def test_a_count_body_that_is_no_object_goes_on_for_the_parser_to_refuse(body: bytes) -> None:
    assert count_body(body) == body


@pytest.mark.parametrize(
    ("result", "status", "error_type"),
    [
        (CountResult("unknown_model", message="unknown model 'x'"), 404, "not_found_error"),
        (CountResult("unsupported", message="no member of 'm' can count tokens"), 404, "not_found_error"),
        (CountResult("failed", message="no member of 'm' gave a token count"), 502, "api_error"),
        (CountResult("cooling", message="cooling", retry_after=4.2), 503, "overloaded_error"),
    ],
)
def test_no_count_is_an_error_in_the_anthropic_envelope(
    result: CountResult, status: int, error_type: str
) -> None:
    head, body = count_reply(result)
    assert not isinstance(head, bytes) and head.status == status
    assert isinstance(body, bytes)
    data = json.loads(body)
    assert data["type"] == "error" and data["error"] == {"type": error_type, "message": result.message}
    if result.retry_after is not None:
        assert ("retry-after", "5") in head.headers


def test_a_count_is_answered_with_the_counting_provider() -> None:
    head, body = count_reply(CountResult("counted", input_tokens=42, member="bedrock/anthropic.claude-x"))
    assert not isinstance(head, bytes) and head.status == 200
    assert ("x-combined-models-provider", "bedrock") in head.headers
    assert json.loads(body) == {"input_tokens": 42}  # type: ignore[arg-type]


def test_the_simulator_counts_the_words_of_the_prompt_text() -> None:
    body = {
        "model": "claude-x",
        "system": [{"type": "text", "text": "Be terse."}],
        "messages": [
            {"role": "user", "content": "hello there world"},
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "data": "AAAA BBBB"}}],
            },
        ],
    }
    assert estimate_tokens(body) == 5


# ================================================================ end to end

AWS_KEY_ID, AWS_SECRET = "AKIACOUNT0123456789", "count/aws/secret/0123456789abcdefghij"
CLAUDE = "claude-sonnet-4-5-20250929"
BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
GEMINI = "gemini-2.5-pro"
GPT = "gpt-4.1"
COMBINED = "cm"
API = {"anthropic": "anthropic", "bedrock": "bedrock", "gemini": "gemini", "openai": "openai"}
HI: Any = [{"role": "user", "content": "hello there world"}]


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


class Front(FrontDoor):
    def http(self) -> httpx.AsyncClient:
        headers = {"x-api-key": self.token, "anthropic-version": "2023-06-01"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, trust_env=False)

    def provider(self, pid: str) -> Any:
        return next(p for p in self.server.facade.status().providers if p.id == pid)


@asynccontextmanager
async def front(short_dir: Path, members: list[tuple[str, str]]) -> AsyncIterator[Front]:
    """One simulated provider per (id, dialect), all members of the combined model `cm`, behind the front door."""
    models = {"anthropic": CLAUDE, "bedrock": BEDROCK_CLAUDE, "gemini": GEMINI, "openai": GPT}
    async with trio.open_nursery() as nursery:
        sims: dict[str, Simulator] = {}
        lines = [
            f"provider_priority = {json.dumps([pid for pid, _ in members])}",
            "[failover]\nfirst_token_timeout = 5.0\nretry_backoff = 0.01\nall_cooling_wait = 0.0",
        ]
        for pid, dialect in members:
            sim = Simulator(
                dialect=dialect,
                models=[models[dialect]],
                name=pid,
                api_key=None if dialect == "bedrock" else f"key-{pid}-0123456789",
                aws_secret=AWS_SECRET if dialect == "bedrock" else None,
            )
            await nursery.start(sim.run)
            sims[pid] = sim
            lines += [
                f"[providers.{pid}]",
                f'api = "{API[dialect]}"',
                f'base_url = "{sim.base_url}"',
                f'models = ["{models[dialect]}"]',
                'region = "us-east-1"' if dialect == "bedrock" else f'api_key = "key-{pid}-0123456789"',
            ]
        lines += [
            f"[combined.{COMBINED}]",
            f"members = {json.dumps([f'{pid}/{models[d]}' for pid, d in members])}",
            '[http]\nlisten = "127.0.0.1:0"',
        ]
        server = await open_daemon(parse_config("\n".join(lines) + "\n"), short_dir / "d.sock", nursery)
        gw = server.gateway
        assert gw is not None and gw.address
        yield Front(sims, server, f"http://{gw.address}", gw.token)
        nursery.cancel_scope.cancel()


async def in_thread(fn: Any) -> Any:
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(fn)


async def test_the_anthropic_sdk_gets_the_anthropic_members_own_count(short_dir: Path) -> None:
    async with front(short_dir, [("anthropic", "anthropic")]) as f:
        sim = f.sims["anthropic"]

        def run() -> Any:
            with f.anthropic() as client:
                plain = client.messages.with_raw_response.count_tokens(
                    model=COMBINED, messages=HI, system="Be terse."
                )
                beta = client.beta.messages.count_tokens(  # `?beta=true`, as Claude Code calls it
                    model=COMBINED,
                    messages=HI,
                    system=[{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
                    tools=[
                        {"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}
                    ],
                    betas=["token-counting-2024-11-01"],
                )
            return plain, beta

        plain, beta = await in_thread(run)
        assert plain.headers["x-combined-models-provider"] == "anthropic"
        first, second = sim.counting.requests
        # "hello there world" and "Be terse.": the simulator's count of what it received.
        assert plain.parse().input_tokens == first.tokens == 5
        assert beta.input_tokens == second.tokens == 5 + 2  # the tool's name and description too
        assert first.path == "/v1/messages/count_tokens" and first.body["model"] == CLAUDE
        assert not {"max_tokens", "stream", "temperature"} & set(first.body)
        assert second.body["tools"][0]["name"] == "get_weather"
        assert sim.statistics().endpoint_requests["count_tokens"] == 2
        assert sim.requests == []  # no inference ran to count


@pytest.mark.parametrize("counter", ["bedrock", "gemini"])
async def test_a_member_that_cannot_count_is_passed_for_the_next_that_can(
    short_dir: Path, counter: str
) -> None:
    async with front(short_dir, [("openai", "openai"), (counter, counter)]) as f, f.http() as http:
        resp = await http.post(
            "/v1/messages/count_tokens?beta=true",
            json={"model": COMBINED, "messages": HI, "system": "Be terse."},
            headers={"anthropic-beta": "token-counting-2024-11-01"},
        )
        assert resp.status_code == 200, resp.text
        (record,) = f.sims[counter].counting.requests
        assert record.status == 200 and record.tokens is not None
        assert resp.json() == {"input_tokens": record.tokens}
        assert resp.headers["x-combined-models-provider"] == counter
        assert f.sims["openai"].statistics().endpoint_requests == {}  # nothing asked of the one that cannot
        if counter == "bedrock":
            # At the foundation model, signed (the simulator checks SigV4 as on its other routes).
            assert record.path == "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/count-tokens"
            assert record.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
        else:
            assert record.body["generateContentRequest"]["model"] == f"models/{GEMINI}"


async def test_no_member_that_can_count_is_an_honest_404(short_dir: Path) -> None:
    async with front(short_dir, [("openai", "openai")]) as f:

        def run() -> Any:
            with f.anthropic() as client, pytest.raises(anthropic.NotFoundError) as info:
                client.beta.messages.count_tokens(model=COMBINED, messages=HI)
            return info.value

        error = await in_thread(run)
        assert error.status_code == 404
        assert error.body["type"] == "error" and error.body["error"]["type"] == "not_found_error"
        assert "can count tokens" in error.body["error"]["message"]
        assert "openai/gpt-4.1" in error.body["error"]["message"]
        async with f.http() as http:
            unknown = await http.post("/v1/messages/count_tokens", json={"model": "nonesuch", "messages": HI})
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


async def test_a_failing_counter_passes_to_the_next_and_leaves_health_alone(short_dir: Path) -> None:
    async with front(short_dir, [("anthropic", "anthropic"), ("bedrock", "bedrock")]) as f, f.http() as http:
        f.sims["anthropic"].counting.push_fault(Fault(kind="status", status=529, times=2))
        f.sims["bedrock"].counting.push_fault(Fault(kind="status", status=500))
        body = {"model": COMBINED, "messages": HI}
        # Both fail: a 502 naming what each said.
        failed = await http.post("/v1/messages/count_tokens", json=body)
        assert failed.status_code == 502
        assert failed.json()["error"]["type"] == "api_error"
        message = failed.json()["error"]["message"]
        assert "anthropic/claude-sonnet-4-5-20250929: overloaded" in message and "bedrock/" in message
        # The first fails again: the second counts.
        counted = await http.post("/v1/messages/count_tokens", json=body)
        assert counted.status_code == 200 and counted.headers["x-combined-models-provider"] == "bedrock"
        assert counted.json() == {"input_tokens": f.sims["bedrock"].counting.requests[-1].tokens}
        # A count failure says nothing about serving: both are ready, with no failure on record.
        for pid in ("anthropic", "bedrock"):
            status = f.provider(pid)
            assert (status.state, status.failures, status.requests) == ("ready", 0, 0)
        # ...and a chat still goes to the first member.
        reply = await http.post("/v1/messages", json={**body, "max_tokens": 100})
        assert reply.status_code == 200 and reply.headers["x-combined-models-provider"] == "anthropic"


async def test_a_cooling_member_is_not_asked_to_count(short_dir: Path) -> None:
    async with front(short_dir, [("anthropic", "anthropic")]) as f, f.http() as http:
        f.sims["anthropic"].push_fault(Fault(kind="status", status=429, seconds=30))
        chat = await http.post("/v1/messages", json={"model": COMBINED, "messages": HI, "max_tokens": 100})
        assert chat.status_code >= 400 and f.provider("anthropic").state != "ready"  # cooling for 30s
        resp = await http.post("/v1/messages/count_tokens", json={"model": COMBINED, "messages": HI})
        assert resp.status_code == 503 and resp.json()["error"]["type"] == "overloaded_error"
        assert 1 <= int(resp.headers["retry-after"]) <= 30
        assert f.sims["anthropic"].counting.requests == []


async def test_the_count_path_answers_like_the_others(short_dir: Path) -> None:
    async with front(short_dir, [("anthropic", "anthropic")]) as f, f.http() as http:
        options = await http.options("/v1/messages/count_tokens")
        assert options.status_code == 204 and options.headers["allow"] == "POST, OPTIONS"
        for method in ("GET", "HEAD"):
            wrong = await http.request(method, "/v1/messages/count_tokens")
            assert wrong.status_code == 405 and wrong.headers["allow"] == "POST, OPTIONS"
        bad = await http.post("/v1/messages/count_tokens", content=b'{"model": "cm"}')
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert "messages" in bad.json()["error"]["message"]
        async with httpx.AsyncClient(base_url=f.url, trust_env=False) as anonymous:
            refused = await anonymous.post(
                "/v1/messages/count_tokens", json={"model": COMBINED, "messages": HI}
            )
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert f.sims["anthropic"].counting.requests == []


async def test_the_bedrock_simulator_refuses_a_profile_id_as_bedrock_does(short_dir: Path) -> None:
    sim = Simulator(dialect="bedrock", models=[BEDROCK_CLAUDE], api_key="bedrock-key")
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        async with httpx.AsyncClient(base_url=sim.origin, trust_env=False) as http:
            body = {
                "input": {"converse": {"messages": [{"role": "user", "content": [{"text": "hi there"}]}]}}
            }
            headers = {"authorization": "Bearer bedrock-key"}
            profile = await http.post(f"/model/{BEDROCK_CLAUDE}/count-tokens", json=body, headers=headers)
            bare = await http.post(
                f"/model/{foundation_model_id(BEDROCK_CLAUDE)}/count-tokens", json=body, headers=headers
            )
            invoke = {"input": {"invokeModel": {"body": base64.b64encode(msgspec.json.encode(HI)).decode()}}}
            invoked = await http.post(
                f"/model/{foundation_model_id(BEDROCK_CLAUDE)}/count-tokens", json=invoke, headers=headers
            )
        nursery.cancel_scope.cancel()
    assert profile.status_code == 400 and "ValidationException" in profile.headers["x-amzn-ErrorType"]
    assert bare.status_code == 200 and bare.json() == {"inputTokens": 2}
    assert invoked.status_code == 200 and invoked.json() == {"inputTokens": 3}


async def test_count_faults_are_scripted_apart_from_chat_faults_also_from_another_process() -> None:
    sim = Simulator(dialect="anthropic", models=[CLAUDE])
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        count = {"model": CLAUDE, "messages": HI}
        async with httpx.AsyncClient(base_url=sim.origin, headers=headers, trust_env=False) as http:
            queued = await http.post(
                "/_sim/count-faults", json={"push": [{"kind": "status", "status": 429, "seconds": 3}]}
            )
            assert queued.json() == {"queued": 1}
            chat = await http.post("/v1/messages", json={**count, "max_tokens": 50})
            limited = await http.post("/v1/messages/count_tokens", json=count)
            counted = await http.post("/v1/messages/count_tokens", json=count)
            records = (await http.get("/_sim/counts")).json()
        nursery.cancel_scope.cancel()
    assert chat.status_code == 200  # the chat did not draw the count's fault
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert counted.status_code == 200 and counted.json() == {"input_tokens": 3}
    assert [(r["fault"], r["status"], r["tokens"]) for r in records] == [
        ("status", 429, None),
        (None, 200, 3),
    ]
    assert limited.headers["request-id"] == records[0]["request_id"]
