"""GitHub Copilot as third-party editors use it (provider-protocols.md §4).

One port plays three hosts: github.com's device flow (`POST /login/device/code`,
`POST /login/oauth/access_token`), api.github.com's token exchange
(`GET /copilot_internal/v2/token` with `Authorization: token <oauth>`), and the Copilot
API (`POST /chat/completions`, `GET /models`, OpenAI-shaped) that needs a live
short-lived Copilot token plus the editor headers. The Copilot API's own auth and
header errors are plain text, as observed ("unauthorized: token expired").
"""

from __future__ import annotations

import math
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .base import Context, HttpRequest, Reply, Route, json_reply, text_reply
from .openai import OpenAIDialect

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
GITHUB_DOCS = "https://docs.github.com/rest"
DEFAULT_WAIT = 42.0  # seconds a 429 asks for when the fault gives none
WEEKLY_WAIT = 51 * 3600.0


def _form(request: HttpRequest) -> dict[str, str]:
    """A device-flow body: JSON or form-encoded, as clients send either."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = msgspec.json.decode(request.body or b"{}")
        except msgspec.DecodeError:
            return {}
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return dict(urllib.parse.parse_qsl(request.body.decode("utf-8", "replace")))


def _oauth_reply(request: HttpRequest, obj: dict[str, Any]) -> Reply:
    """GitHub answers form-encoded unless the client asks for JSON; errors come with a 200."""
    if "json" in request.headers.get("accept", ""):
        return json_reply(200, obj)
    return Reply(
        200,
        [("content-type", "application/x-www-form-urlencoded; charset=utf-8")],
        urllib.parse.urlencode(obj).encode(),
    )


def _oauth_error(request: HttpRequest, error: str, description: str) -> Reply:
    uri = "https://docs.github.com/developers/apps/authorizing-oauth-apps#error-codes-for-the-device-flow"
    return _oauth_reply(request, {"error": error, "error_description": description, "error_uri": uri})


class CopilotDialect(OpenAIDialect):
    """Device flow, token exchange, and the OpenAI-shaped Copilot chat API, with token expiry."""

    name = "copilot"
    base_path = ""

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}  # Copilot token -> unix time it expires
        self._oauth_tokens: set[str] = set()  # issued by the device flow
        self._device_codes: dict[str, int] = {}  # device code -> polls so far
        self._issued = 0

    def expire_tokens(self) -> None:
        for token in self._tokens:
            self._tokens[token] = 0.0

    def route(self, method: str, path: str, query: Mapping[str, str]) -> Route | None:
        match method, path:
            case "POST", "/chat/completions":
                return Route("chat")
            case "GET", "/models":
                return Route("models")
            case "GET", "/copilot_internal/v2/token":
                return Route("endpoint", name="token")
            case "POST", "/login/device/code":
                return Route("endpoint", name="device_code")
            case "POST", "/login/oauth/access_token":
                return Route("endpoint", name="access_token")
        return None

    def check_auth(self, route: Route, request: HttpRequest, ctx: Context) -> Reply | None:
        if route.name in ("device_code", "access_token"):
            return None
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if route.name == "token":  # api.github.com: a GitHub OAuth token
            if scheme.lower() not in ("token", "bearer") or not credential:
                return json_reply(
                    401, {"message": "Requires authentication", "documentation_url": GITHUB_DOCS}
                )
            if ctx.api_key is not None and credential not in (ctx.api_key, *self._oauth_tokens):
                return json_reply(401, {"message": "Bad credentials", "documentation_url": GITHUB_DOCS})
            return None
        # The Copilot API: a live Copilot token and the IDE headers.
        if scheme != "Bearer" or not credential:
            return text_reply(400, "bad request: missing Authorization header\n")
        expires = self._tokens.get(credential)
        if expires is None:
            return text_reply(401, "unauthorized: token invalid\n")
        if ctx.now >= expires:
            return text_reply(401, "unauthorized: token expired\n")
        if "editor-version" not in request.headers:
            return text_reply(400, "bad request: missing Editor-Version header for IDE auth\n")
        if "copilot-integration-id" not in request.headers:
            return text_reply(400, "bad request: missing Copilot-Integration-Id header\n")
        return None

    def error_body(self, status: int, message: str | None, code: str | None) -> dict[str, Any]:
        error = super().error_body(status, message, code)["error"]
        return {"error": {"message": error["message"], "code": error["code"] or error["type"]}}

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        wait: float | None = None,
        request_id: str = "",
    ) -> Reply:
        if status != 429:
            return json_reply(status, self.error_body(status, message, code))
        # No rate-limit headers: the wait is only in the prose.
        weekly = code == "user_weekly_rate_limited" or bool(message and "weekly" in message.lower())
        if weekly:
            hours = math.ceil((wait or WEEKLY_WAIT) / 3600)
            text = f"Sorry, you've hit your weekly rate limit. Please try again in {hours} hours."
        else:
            text = (
                "Sorry, you have been rate-limited. "
                f"Please wait {math.ceil(wait or DEFAULT_WAIT)} seconds before retrying."
            )
        error = {
            "message": message or text,
            "code": code or ("user_weekly_rate_limited" if weekly else "rate_limited"),
        }
        return json_reply(429, {"error": error})

    def serve(self, route: Route, request: HttpRequest, ctx: Context) -> Reply:
        match route.name:
            case "token":
                return self._exchange(ctx)
            case "device_code":
                return self._device_code(request, ctx)
            case "access_token":
                return self._access_token(request, ctx)
        return super().serve(route, request, ctx)

    def _exchange(self, ctx: Context) -> Reply:
        self._issued += 1
        expires_at = ctx.now + ctx.copilot_token_ttl
        token = (
            f"tid=sim{self._issued};exp={int(expires_at)};sku=copilot_individual;"
            f"proxy-ep={urllib.parse.urlsplit(ctx.origin).netloc};8kp=1:{secrets.token_hex(16)}"
        )
        self._tokens[token] = expires_at
        return json_reply(
            200,
            {
                "token": token,
                "expires_at": int(expires_at),
                "refresh_in": int(ctx.copilot_token_ttl * 0.8),
                "endpoints": {
                    "api": ctx.origin,
                    "origin-tracker": ctx.origin,
                    "proxy": ctx.origin,
                    "telemetry": ctx.origin,
                },
                "sku": "copilot_individual",
                "chat_enabled": True,
                "individual": True,
                "tracking_id": f"sim-{self._issued}",
            },
        )

    def _device_code(self, request: HttpRequest, ctx: Context) -> Reply:
        if not _form(request).get("client_id"):
            return json_reply(404, {"error": "Not Found"})
        code = secrets.token_hex(20)
        self._device_codes[code] = 0
        return _oauth_reply(
            request,
            {
                "device_code": code,
                "user_code": f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}",
                "verification_uri": "https://github.com/login/device",
                "expires_in": 899,
                "interval": ctx.copilot_poll_interval,
            },
        )

    def _access_token(self, request: HttpRequest, ctx: Context) -> Reply:
        form = _form(request)
        if not form.get("client_id"):
            return _oauth_error(request, "incorrect_client_credentials", "The client_id is not valid.")
        if form.get("grant_type") != GRANT_TYPE:
            return _oauth_error(request, "unsupported_grant_type", f"The grant type must be {GRANT_TYPE}.")
        polls = self._device_codes.get(form.get("device_code", ""))
        if polls is None:
            return _oauth_error(request, "incorrect_device_code", "The device_code provided is not valid.")
        self._device_codes[form["device_code"]] = polls + 1
        if polls == 0:  # the user has not entered the code yet
            return _oauth_error(
                request, "authorization_pending", "The authorization request is still pending."
            )
        token = ctx.api_key or f"gho_sim{secrets.token_hex(16)}"
        self._oauth_tokens.add(token)
        return _oauth_reply(request, {"access_token": token, "token_type": "bearer", "scope": "read:user"})

    def models(self, models: Sequence[str], *, created: int) -> Reply:
        # An embeddings model rides along, as on the real list, so clients must filter by type.
        data = [*(_model_entry(m) for m in models), _model_entry("text-embedding-3-small", chat=False)]
        return json_reply(200, {"data": data, "object": "list"})


def _model_entry(model: str, *, chat: bool = True) -> dict[str, Any]:
    return {
        "id": model,
        "name": model,
        "vendor": "simulator",
        "version": model,
        "object": "model",
        "preview": False,
        "model_picker_enabled": chat,
        "model_picker_category": "versatile" if chat else None,
        "policy": {"state": "enabled", "terms": "Simulated terms."},
        "capabilities": {
            "type": "chat" if chat else "embeddings",
            "family": model,
            "tokenizer": "o200k_base",
            "object": "model_capabilities",
            "limits": {
                "max_context_window_tokens": 200000,
                "max_prompt_tokens": 128000,
                "max_output_tokens": 16000,
            },
            "supports": {"streaming": chat, "tool_calls": chat, "parallel_tool_calls": chat, "vision": False},
        },
        "supported_endpoints": ["/chat/completions"] if chat else ["/embeddings"],
        "billing": {"multiplier": 1},
    }
