"""GitHub Copilot: the OpenAI dialect with editor headers, the token exchange, the device flow, stored tokens."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from combined_models.chat import ChatRequest, ImagePart, Message, TextPart, ToolCallPart, ToolResultPart
from combined_models.daemon.dialects.base import Endpoint
from combined_models.daemon.dialects.copilot import CopilotDialect
from combined_models.daemon.dialects.copilot_auth import (
    COPILOT_CLIENT_ID,
    DEFAULT_COPILOT_API,
    CopilotToken,
    PollResult,
    build_device_code_request,
    build_poll_request,
    build_token_request,
    find_oauth_token,
    needs_refresh,
    parse_device_code,
    parse_poll_response,
    parse_token_response,
)
from combined_models.daemon.dialects.openai import OpenAIDialect
from combined_models.daemon.errors import Failure, UpstreamError

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
T0 = NOW.timestamp()
EP = Endpoint(base_url="https://api.individual.githubcopilot.com", api_key="tid=abc;exp=123;sku=free")


def dialect() -> CopilotDialect:
    counter = itertools.count(1)
    return CopilotDialect(request_id=lambda: f"req-{next(counter)}")


# ---------------------------------------------------------------- chat request


def test_openai_body_and_copilot_headers() -> None:
    request = ChatRequest(messages=[Message("user", "hi")], max_tokens=100)
    d = dialect()
    req = d.build_chat(request, "claude-sonnet-4", EP)
    assert req.method == "POST"
    assert req.url == "https://api.individual.githubcopilot.com/chat/completions"
    assert req.body == OpenAIDialect().build_chat(request, "claude-sonnet-4", EP).body
    assert req.headers == {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "authorization": "Bearer tid=abc;exp=123;sku=free",
        "editor-version": "vscode/1.95.0",
        "editor-plugin-version": "copilot-chat/0.26.7",
        "copilot-integration-id": "vscode-chat",
        "user-agent": "GitHubCopilotChat/0.26.7",
        "openai-intent": "conversation-panel",
        "x-initiator": "user",
        "x-request-id": "req-1",
    }
    assert d.build_chat(request, "claude-sonnet-4", EP).headers["x-request-id"] == "req-2"


def test_request_id_defaults_to_a_uuid4() -> None:
    rid = (
        CopilotDialect()
        .build_chat(ChatRequest(messages=[Message("user", "hi")]), "gpt-4.1", EP)
        .headers["x-request-id"]
    )
    assert len(rid) == 36 and rid[14] == "4"


@pytest.mark.parametrize(
    ("messages", "initiator"),
    [
        ([Message("user", "hi")], "user"),
        ([Message("user", "a"), Message("user", [TextPart("b")])], "user"),
        ([Message("user", "a"), Message("assistant", "b"), Message("user", "c")], "agent"),
        ([Message("user", [ToolResultPart(tool_call_id="c1", content="42")])], "agent"),
        (
            [
                Message("user", "a"),
                Message("assistant", [ToolCallPart("c1", "f", {})]),
                Message("user", [ToolResultPart(tool_call_id="c1", content="42")]),
            ],
            "agent",
        ),
    ],
    ids=["first turn", "user only", "after an answer", "tool result", "tool round trip"],
)
def test_x_initiator(messages: list[Message], initiator: str) -> None:
    req = dialect().build_chat(ChatRequest(messages=messages), "gpt-4.1", EP)
    assert req.headers["x-initiator"] == initiator


def test_vision_header_only_with_an_image() -> None:
    d = dialect()
    plain = d.build_chat(ChatRequest(messages=[Message("user", "hi")]), "gpt-4o", EP)
    assert "copilot-vision-request" not in plain.headers
    image = Message("user", [TextPart("what is this?"), ImagePart(media_type="image/png", data="iVBOR")])
    req = d.build_chat(ChatRequest(messages=[Message("user", "first"), image]), "gpt-4o", EP)
    assert req.headers["copilot-vision-request"] == "true"
    assert json.loads(req.body)["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBOR"},
    }


def test_configured_headers_override_the_defaults_whatever_their_case() -> None:
    ep = Endpoint(base_url=EP.base_url, api_key="t", headers={"Editor-Version": "vscode/1.99.0"})
    req = dialect().build_chat(ChatRequest(messages=[Message("user", "hi")]), "gpt-4.1", ep)
    assert req.headers["Editor-Version"] == "vscode/1.99.0"
    assert "editor-version" not in req.headers


# ---------------------------------------------------------------- errors


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "code": code}}).encode()


@pytest.mark.parametrize(
    ("message", "wait"),
    [
        (
            "Sorry, you've hit a rate limit that restricts the number of requests. Please wait 2 minutes before trying again.",
            120.0,
        ),
        ("You've reached your weekly rate limit. Please try again in 51 hours.", 51 * 3600.0),
        ("You have exceeded your weekly rate limit.", None),
    ],
)
def test_weekly_limit_is_quota_exhausted_with_the_named_wait(message: str, wait: float | None) -> None:
    e = dialect().classify_error(429, {}, error_body("user_weekly_rate_limited", message), NOW)
    assert e.kind is Failure.QUOTA_EXHAUSTED
    assert e.retry_after == wait


def test_weekly_limit_recognised_by_its_text_alone() -> None:
    body = json.dumps(
        {"error": {"message": "You've hit your weekly rate limit. Please wait 3 hours."}}
    ).encode()
    e = dialect().classify_error(429, {}, body, NOW)
    assert (e.kind, e.retry_after) == (Failure.QUOTA_EXHAUSTED, 3 * 3600.0)


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry"),
    [
        (
            429,
            error_body("rate_limited", "Sorry, you have been rate-limited."),
            {},
            Failure.RATE_LIMITED,
            None,
        ),
        (
            429,
            error_body("rate_limited", "rate limit exceeded"),
            {"retry-after": "30"},
            Failure.RATE_LIMITED,
            30.0,
        ),
        (401, b"unauthorized: token expired", {}, Failure.AUTH, None),
        (403, error_body("forbidden", "Copilot is not enabled"), {}, Failure.AUTH, None),
        (
            400,
            error_body("model_not_supported", "The requested model is not supported."),
            {},
            Failure.NOT_FOUND,
            None,
        ),
        (400, error_body("invalid_request_body", "messages: bad"), {}, Failure.BAD_REQUEST, None),
        (500, b"oops", {}, Failure.TRANSIENT, None),
        (503, b"", {}, Failure.OVERLOADED, None),
    ],
)
def test_classify_error(
    status: int, body: bytes, headers: dict[str, str], kind: Failure, retry: float | None
) -> None:
    e = dialect().classify_error(status, headers, body, NOW)
    assert (e.kind, e.retry_after, e.status) == (kind, retry, status)


# ---------------------------------------------------------------- models


def model(mid: str, **extra: Any) -> dict[str, Any]:
    return {"id": mid, "capabilities": {"type": "chat", "supports": {"streaming": True}}, **extra}


def test_models_request_and_filter() -> None:
    req = dialect().build_list_models(EP)
    assert req.method == "GET"
    assert req.url == "https://api.individual.githubcopilot.com/models"
    assert req.headers["authorization"] == "Bearer tid=abc;exp=123;sku=free"
    assert req.headers["copilot-integration-id"] == "vscode-chat"
    assert req.headers["editor-version"] == "vscode/1.95.0"
    body = {
        "data": [
            model("claude-sonnet-4", model_picker_enabled=True),
            model("gpt-4.1"),  # no picker flag: kept
            model("gpt-4o-mini", model_picker_enabled=False),
            model("gpt-5-paygo", model_picker_enabled=True),
            {
                "id": "text-embedding-3-small",
                "capabilities": {"type": "embeddings"},
                "model_picker_enabled": True,
            },
            {"id": "no-capabilities"},
            {"capabilities": {"type": "chat"}},
            "junk",
        ]
    }
    assert dialect().parse_models(json.dumps(body).encode()) == (["claude-sonnet-4", "gpt-4.1"], None)


# ---------------------------------------------------------------- token exchange


def token_answer(**over: Any) -> bytes:
    answer = {
        "token": "tid=secret;exp=1748781000;sku=copilot_individual",
        "expires_at": T0 + 1800,
        "refresh_in": 1500,
        "endpoints": {"api": "https://api.individual.githubcopilot.com", "proxy": "https://proxy"},
        "chat_enabled": True,
        "sku": "copilot_individual",
        **over,
    }
    return json.dumps({k: v for k, v in answer.items() if v is not None}).encode()


def test_token_request() -> None:
    req = build_token_request("gho_oauth123")
    assert (req.method, req.url) == ("GET", "https://api.github.com/copilot_internal/v2/token")
    assert req.headers["authorization"] == "token gho_oauth123"
    assert req.headers["accept"] == "application/json"
    assert req.headers["editor-version"] == "vscode/1.95.0"
    assert req.headers["editor-plugin-version"] == "copilot-chat/0.26.7"
    assert req.headers["user-agent"] == "GitHubCopilotChat/0.26.7"
    assert build_token_request("x", "https://api.ghe.example.com/").url == (
        "https://api.ghe.example.com/copilot_internal/v2/token"
    )


def test_token_parse_and_refresh_timing() -> None:
    token = parse_token_response(200, token_answer(), NOW)
    assert token.token.startswith("tid=secret")
    assert token.api_base == "https://api.individual.githubcopilot.com"
    assert token.expires_at == T0 + 1800
    assert token.refresh_at == T0 + 1500  # refresh_in comes before expiry - 2 min
    assert "secret" not in repr(token)
    assert not needs_refresh(token, datetime.fromtimestamp(T0 + 1499, UTC))
    assert needs_refresh(token, datetime.fromtimestamp(T0 + 1500, UTC))
    assert needs_refresh(None, NOW)


@pytest.mark.parametrize(
    ("over", "refresh_at", "api_base"),
    [
        ({"refresh_in": None}, T0 + 1800 - 120, "https://api.individual.githubcopilot.com"),
        ({"refresh_in": 3000}, T0 + 1800 - 120, "https://api.individual.githubcopilot.com"),
        ({"expires_at": T0 + 60}, T0 + 30, "https://api.individual.githubcopilot.com"),  # skewed clock
        ({"endpoints": None}, T0 + 1500, DEFAULT_COPILOT_API),
        ({"endpoints": {"api": "not a url"}}, T0 + 1500, DEFAULT_COPILOT_API),
    ],
)
def test_token_refresh_edges(over: dict[str, Any], refresh_at: float, api_base: str) -> None:
    token = parse_token_response(200, token_answer(**over), NOW)
    assert (token.refresh_at, token.api_base) == (refresh_at, api_base)


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (401, b'{"message":"Bad credentials"}', Failure.AUTH, "Bad credentials"),
        (
            403,
            json.dumps(
                {
                    "error_details": {"message": "Your Copilot subscription has ended.", "title": "x"},
                    "message": "Resource not accessible by integration",
                }
            ).encode(),
            Failure.AUTH,
            "Your Copilot subscription has ended.",
        ),
        (404, b"Not Found", Failure.AUTH, "Not Found"),
        (502, b"bad gateway", Failure.TRANSIENT, "bad gateway"),
        (200, b'{"expires_at": 1}', Failure.AUTH, "no token"),
        (200, token_answer(chat_enabled=False), Failure.AUTH, "not enabled"),
    ],
)
def test_token_exchange_failures(status: int, body: bytes, kind: Failure, text: str) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_token_response(status, body, NOW)
    assert info.value.kind is kind
    assert text in info.value.message


def test_copilot_token_repr_hides_the_token() -> None:
    token = CopilotToken(token="hunter2", expires_at=1.0, refresh_at=0.5, api_base="https://x")
    assert "hunter2" not in repr(token) and "hunter2" not in str(token)


# ---------------------------------------------------------------- device flow


def test_device_code_request_and_parse() -> None:
    req = build_device_code_request()
    assert (req.method, req.url) == ("POST", "https://github.com/login/device/code")
    assert req.headers["accept"] == "application/json"
    assert json.loads(req.body) == {"client_id": COPILOT_CLIENT_ID, "scope": "read:user"}
    assert (
        build_device_code_request("https://ghe.example.com").url
        == "https://ghe.example.com/login/device/code"
    )
    answer = {
        "device_code": "3584d83530557fdd1f46af8289938c8ef79f9dc5",
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://github.com/login/device",
        "expires_in": 900,
        "interval": 5,
    }
    code = parse_device_code(200, json.dumps(answer).encode())
    assert (code.user_code, code.verification_uri, code.expires_in, code.interval) == (
        "WDJB-MJHT",
        "https://github.com/login/device",
        900.0,
        5.0,
    )
    assert code.device_code == answer["device_code"]
    assert answer["device_code"] not in repr(code)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"error":"unauthorized_client","error_description":"Device flow disabled"}'),
        (404, b"Not Found"),
        (200, b'{"user_code":"x"}'),
    ],
)
def test_device_code_failures(status: int, body: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_device_code(status, body)
    assert info.value.kind is Failure.AUTH


def test_poll_request() -> None:
    req = build_poll_request("dev123", "https://ghe.example.com/")
    assert (req.method, req.url) == ("POST", "https://ghe.example.com/login/oauth/access_token")
    assert json.loads(req.body) == {
        "client_id": COPILOT_CLIENT_ID,
        "device_code": "dev123",
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
    }


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"error": "authorization_pending"}, PollResult("pending", 5.0)),
        ({"error": "slow_down"}, PollResult("slow_down", 10.0)),
        ({"error": "slow_down", "interval": 15}, PollResult("slow_down", 15.0)),
        ({"error": "expired_token"}, PollResult("expired", 5.0)),
        ({"error": "access_denied"}, PollResult("denied", 5.0)),
        (
            {"access_token": "ghu_abc", "token_type": "bearer", "scope": ""},
            PollResult("token", 5.0, "ghu_abc"),
        ),
    ],
)
def test_poll_outcomes(answer: dict[str, Any], expected: PollResult) -> None:
    result = parse_poll_response(200, json.dumps(answer).encode(), 5.0)
    assert result == expected
    assert "ghu_abc" not in repr(result)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            200,
            b'{"error":"incorrect_device_code","error_description":"The device_code provided is not valid."}',
            Failure.AUTH,
        ),
        (200, b"not json", Failure.AUTH),
        (503, b"", Failure.OVERLOADED),
    ],
)
def test_poll_failures(status: int, body: bytes, kind: Failure) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_poll_response(status, body, 5.0)
    assert info.value.kind is kind


# ---------------------------------------------------------------- stored tokens


def write(config_home: Path, name: str, data: Any) -> None:
    d = config_home / "github-copilot"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def test_find_oauth_token_none_without_files(tmp_path: Path) -> None:
    assert find_oauth_token(tmp_path) is None


def test_find_oauth_token_from_hosts_json(tmp_path: Path) -> None:
    write(tmp_path, "hosts.json", {"github.com": {"user": "octo", "oauth_token": "gho_hosts"}})
    assert find_oauth_token(tmp_path) == "gho_hosts"


def test_find_oauth_token_from_apps_json(tmp_path: Path) -> None:
    write(
        tmp_path,
        "apps.json",
        {
            f"github.com:{COPILOT_CLIENT_ID}": {
                "user": "octo",
                "oauth_token": "ghu_apps",
                "githubAppId": COPILOT_CLIENT_ID,
            }
        },
    )
    assert find_oauth_token(tmp_path) == "ghu_apps"


def test_copilot_app_entry_is_preferred(tmp_path: Path) -> None:
    write(tmp_path, "hosts.json", {"github.com": {"oauth_token": "gho_hosts"}})
    write(
        tmp_path,
        "apps.json",
        {
            "github.com:Iv1.otherapp": {"oauth_token": "ghu_other"},
            f"github.com:{COPILOT_CLIENT_ID}": {"oauth_token": "ghu_copilot"},
        },
    )
    assert find_oauth_token(tmp_path) == "ghu_copilot"


def test_find_oauth_token_skips_bad_files_and_other_hosts(tmp_path: Path) -> None:
    write(tmp_path, "hosts.json", "{not json")
    write(
        tmp_path,
        "apps.json",
        {
            "ghe.example.com:Iv1.x": {"oauth_token": "ghu_ghe"},
            "github.com:Iv1.y": {"oauth_token": "  "},
            "github.com:Iv1.z": "not an object",
        },
    )
    assert find_oauth_token(tmp_path) is None
    assert find_oauth_token(tmp_path, host="ghe.example.com") == "ghu_ghe"
