"""GitHub Copilot credentials, sans-IO: device-flow login, the Copilot token exchange, stored tokens.

Copilot's chat API takes a short-lived Copilot token (about 25-30 minutes),
obtained by exchanging a long-lived GitHub OAuth token issued to the Copilot
app (client id `Iv1.b507a08c87ecfe98`). That OAuth token comes from the device
flow below, or from the files copilot.vim / copilot.lua keep.

Nothing here does I/O except `find_oauth_token`, which reads two small files:
the caller sends the requests built here and passes the answers back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from ..errors import Failure, UpstreamError, classify_status
from .base import HttpRequest, join_url, json_body, loads_json, short

__all__ = [
    "COPILOT_CLIENT_ID",
    "DEFAULT_COPILOT_API",
    "DEFAULT_GITHUB_API",
    "DEFAULT_GITHUB_URL",
    "EDITOR_HEADERS",
    "CopilotToken",
    "DeviceCode",
    "PollResult",
    "build_device_code_request",
    "build_poll_request",
    "build_token_request",
    "find_oauth_token",
    "needs_refresh",
    "parse_device_code",
    "parse_poll_response",
    "parse_token_response",
]

COPILOT_CLIENT_ID = "Iv1.b507a08c87ecfe98"
DEFAULT_GITHUB_URL = "https://github.com"
DEFAULT_GITHUB_API = "https://api.github.com"
DEFAULT_COPILOT_API = "https://api.githubcopilot.com"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

# What the Copilot endpoints expect from an editor (litellm's values; see provider-protocols §4.3).
EDITOR_HEADERS: Mapping[str, str] = {
    "editor-version": "vscode/1.95.0",
    "editor-plugin-version": "copilot-chat/0.26.7",
    "user-agent": "GitHubCopilotChat/0.26.7",
}

REFRESH_MARGIN_S = 120.0  # refresh this long before `expires_at`
MIN_TOKEN_LIFE_S = 30.0  # never plan a refresh sooner than this (guards a skewed clock)
SLOW_DOWN_STEP_S = 5.0  # RFC 8628: `slow_down` adds 5 s to the polling interval


# ---------------------------------------------------------------- device flow


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """What to show the user (`user_code` at `verification_uri`) and how to poll."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float


@dataclass(frozen=True, slots=True)
class PollResult:
    """One poll's outcome. `interval`: seconds to wait before the next poll.

    `pending` and `slow_down`: poll again; `token`: done, `token` is the GitHub
    OAuth token; `expired` (the code timed out) and `denied` (the user refused): start over.
    """

    status: Literal["pending", "slow_down", "token", "expired", "denied"]
    interval: float
    token: str | None = field(default=None, repr=False)


def build_device_code_request(
    github_url: str = DEFAULT_GITHUB_URL, client_id: str = COPILOT_CLIENT_ID, scope: str = "read:user"
) -> HttpRequest:
    """`POST {github_url}/login/device/code`: start a device-flow login (GHE: its own host)."""
    return HttpRequest(
        "POST",
        join_url(github_url, "login/device/code"),
        _json_headers(),
        json_body({"client_id": client_id, "scope": scope}),
    )


def parse_device_code(status: int, body: bytes) -> DeviceCode:
    """The device-code answer; an OAuth error or an unexpected answer raises UpstreamError(AUTH)."""
    data = _oauth_answer(status, body, "device code request")
    try:
        return DeviceCode(
            device_code=str(data["device_code"]),
            user_code=str(data["user_code"]),
            verification_uri=str(data.get("verification_uri") or "https://github.com/login/device"),
            expires_in=float(data.get("expires_in") or 900),
            interval=float(data.get("interval") or 5),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UpstreamError(
            Failure.AUTH, f"unexpected device code answer: {short(body.decode('utf-8', 'replace'))}"
        ) from e


def build_poll_request(
    device_code: str, github_url: str = DEFAULT_GITHUB_URL, client_id: str = COPILOT_CLIENT_ID
) -> HttpRequest:
    """`POST {github_url}/login/oauth/access_token`: has the user entered the code yet?"""
    return HttpRequest(
        "POST",
        join_url(github_url, "login/oauth/access_token"),
        _json_headers(),
        json_body({"client_id": client_id, "device_code": device_code, "grant_type": DEVICE_GRANT}),
    )


def parse_poll_response(status: int, body: bytes, interval: float) -> PollResult:
    """The poll's outcome; `interval` is the one in use. Other OAuth errors raise UpstreamError(AUTH)."""
    data = _oauth_answer(status, body, "device flow poll", allow_error=True)
    token = data.get("access_token")
    if isinstance(token, str) and token:
        return PollResult("token", interval, token)
    error = str(data.get("error") or "")
    if error == "authorization_pending":
        return PollResult("pending", interval)
    if error == "slow_down":
        # GitHub names the new interval; without it, add the RFC's 5 s.
        named = data.get("interval")
        new = float(named) if isinstance(named, (int, float)) else 0.0
        return PollResult("slow_down", max(new, interval + SLOW_DOWN_STEP_S))
    if error == "expired_token":
        return PollResult("expired", interval)
    if error == "access_denied":
        return PollResult("denied", interval)
    detail = data.get("error_description") or error or body.decode("utf-8", "replace")
    raise UpstreamError(Failure.AUTH, f"device flow failed: {short(str(detail))}", status=status)


# ---------------------------------------------------------------- token exchange


@dataclass(frozen=True, slots=True)
class CopilotToken:
    """A short-lived Copilot token and where to use it. Times are unix seconds."""

    token: str = field(repr=False)
    expires_at: float
    refresh_at: float
    api_base: str


def build_token_request(oauth_token: str, api_url: str = DEFAULT_GITHUB_API) -> HttpRequest:
    """`GET {api_url}/copilot_internal/v2/token`: exchange the GitHub OAuth token for a Copilot token."""
    headers = {"authorization": f"token {oauth_token}", "accept": "application/json", **EDITOR_HEADERS}
    return HttpRequest("GET", join_url(api_url, "copilot_internal/v2/token"), headers)


def parse_token_response(status: int, body: bytes, now: datetime) -> CopilotToken:
    """The exchange's answer -> a CopilotToken planned to be refreshed in time.

    Refresh at `refresh_in` from `now`, and at least 2 minutes before
    `expires_at`, but never sooner than 30 s from `now` (a server clock ahead of
    ours must not make every call refresh). 401/403/404 mean a bad OAuth token or
    no Copilot entitlement: UpstreamError(AUTH) with GitHub's explanation.
    """
    data = _json_object(body)
    if status != 200:
        details = data.get("error_details")
        message = (details.get("message") if isinstance(details, dict) else None) or data.get("message")
        text = str(message or body.decode("utf-8", "replace") or f"HTTP {status}")
        kind = Failure.AUTH if status in (401, 403, 404) else classify_status(status)
        raise UpstreamError(kind, f"Copilot token exchange: HTTP {status}: {short(text)}", status=status)
    token = data.get("token")
    expires_at = data.get("expires_at")
    if not isinstance(token, str) or not token or not isinstance(expires_at, (int, float)):
        raise UpstreamError(Failure.AUTH, "Copilot token exchange: no token in the answer", status=status)
    if data.get("chat_enabled") is False:
        raise UpstreamError(Failure.AUTH, "Copilot chat is not enabled for this account", status=status)
    start = now.timestamp()
    refresh_at = float(expires_at) - REFRESH_MARGIN_S
    refresh_in = data.get("refresh_in")
    if isinstance(refresh_in, (int, float)) and refresh_in > 0:
        refresh_at = min(refresh_at, start + float(refresh_in))
    refresh_at = max(refresh_at, start + MIN_TOKEN_LIFE_S)
    endpoints = data.get("endpoints")
    api = endpoints.get("api") if isinstance(endpoints, dict) else None
    api_base = (
        api if isinstance(api, str) and api.startswith(("https://", "http://")) else DEFAULT_COPILOT_API
    )
    return CopilotToken(token=token, expires_at=float(expires_at), refresh_at=refresh_at, api_base=api_base)


def needs_refresh(token: CopilotToken | None, now: datetime) -> bool:
    """Whether to exchange again before the next call (no token yet counts)."""
    return token is None or now.timestamp() >= token.refresh_at


# ---------------------------------------------------------------- stored OAuth tokens


def find_oauth_token(config_home: Path, host: str = "github.com") -> str | None:
    """The GitHub OAuth token copilot.vim / copilot.lua stored, if any.

    Reads `{config_home}/github-copilot/hosts.json`, then `apps.json`: objects
    keyed by `github.com` (hosts) or `github.com:<app id>` (apps), each with an
    `oauth_token`. An apps.json entry of the Copilot app is preferred (tokens of
    other apps may not be allowed the token exchange). Unreadable files are skipped.
    """
    found: list[tuple[bool, str]] = []
    for name in ("hosts.json", "apps.json"):
        data = _read_json(config_home / "github-copilot" / name)
        for key, entry in data.items():
            if host not in key or not isinstance(entry, dict):
                continue
            token = entry.get("oauth_token")
            if isinstance(token, str) and token.strip():
                ours = COPILOT_CLIENT_ID in key or entry.get("githubAppId") == COPILOT_CLIENT_ID
                found.append((not ours, token.strip()))
    if not found:
        return None
    found.sort(key=lambda f: f[0])  # stable: the Copilot app's first, else file order
    return found[0][1]


# ---------------------------------------------------------------- helpers


def _json_headers() -> dict[str, str]:
    return {"accept": "application/json", "content-type": "application/json", **EDITOR_HEADERS}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = loads_json(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _oauth_answer(status: int, body: bytes, what: str, allow_error: bool = False) -> dict[str, Any]:
    """GitHub's OAuth endpoints answer 200 with an `error` field; other statuses are failures."""
    data = _json_object(body)
    if status == 200 and data and (allow_error or "error" not in data):
        return data
    kind = Failure.AUTH if status < 500 and status != 429 else classify_status(status)
    detail = data.get("error_description") or data.get("error") or body.decode("utf-8", "replace")
    raise UpstreamError(kind, f"{what}: HTTP {status}: {short(str(detail) or 'no answer')}", status=status)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
