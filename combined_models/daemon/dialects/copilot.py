"""GitHub Copilot's chat API: OpenAI Chat Completions plus the headers of an editor, sans-IO.

`endpoint.api_key` is the short-lived Copilot token and `endpoint.base_url` its
`endpoints.api` (see `copilot_auth`); the provider actor refreshes both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ...chat import ChatRequest, ImagePart, ToolResultPart
from ..errors import Failure, UpstreamError, retry_after_from_text
from .base import Endpoint, HttpRequest, error_object, loads_json, merge_headers
from .copilot_auth import EDITOR_HEADERS
from .openai import OpenAIDialect

__all__ = ["COPILOT_HEADERS", "CopilotDialect", "initiator", "wants_vision"]

COPILOT_HEADERS: Mapping[str, str] = {
    **EDITOR_HEADERS,
    "copilot-integration-id": "vscode-chat",
    "openai-intent": "conversation-panel",
}


def initiator(request: ChatRequest) -> str:
    """`X-Initiator`: `agent` once the conversation has an assistant turn or a tool result, else `user`.

    Copilot is understood to bill premium requests for `user`-initiated turns only (litellm's rule).
    """
    for msg in request.messages:
        if msg.role == "assistant":
            return "agent"
        if not isinstance(msg.content, str) and any(isinstance(p, ToolResultPart) for p in msg.content):
            return "agent"
    return "user"


def wants_vision(request: ChatRequest) -> bool:
    """Copilot refuses images unless `Copilot-Vision-Request: true` is sent."""
    return any(
        isinstance(p, ImagePart) or (isinstance(p, ToolResultPart) and p.images())
        for msg in request.messages
        if not isinstance(msg.content, str)
        for p in msg.content
    )


class CopilotDialect(OpenAIDialect):
    """The OpenAI dialect with Copilot's headers, error classes and model filter.

    `request_id` makes the `x-request-id` of each request (uuid4 by default; tests pass their own).
    """

    name = "copilot"
    takes_prompt_cache_key = False  # not documented for Copilot's API

    def __init__(self, request_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> None:
        self._request_id = request_id

    def _headers(self) -> dict[str, str]:
        return {**COPILOT_HEADERS, "x-request-id": self._request_id()}

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        built = super().build_chat(request, model, endpoint, now)
        extra = {**self._headers(), "x-initiator": initiator(request)}
        if wants_vision(request):
            extra["copilot-vision-request"] = "true"
        # Under the headers already set, so the config can override them.
        return HttpRequest(built.method, built.url, merge_headers(extra, built.headers), built.body)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        error = super().classify_error(status, headers, body, now)
        text = error.message.lower()
        code = str(error_object(body).get("code") or "").lower()
        if status == 429 and ("weekly" in code or "weekly rate limit" in text):
            # The weekly cap: waiting minutes does not help. The message names the wait.
            retry = (
                error.retry_after if error.retry_after is not None else retry_after_from_text(error.message)
            )
            return UpstreamError(Failure.QUOTA_EXHAUSTED, error.message, status=status, retry_after=retry)
        if code == "model_not_supported":
            # Not offered to this account: another member may have it.
            return UpstreamError(
                Failure.NOT_FOUND, error.message, status=status, retry_after=error.retry_after
            )
        return error

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        built = super().build_list_models(endpoint, now, cursor)
        return HttpRequest(built.method, built.url, merge_headers(self._headers(), built.headers), built.body)

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        """Chat models the account may pick, as Copilot's own clients filter the list."""
        data = loads_json(body)
        items = data.get("data", []) if isinstance(data, dict) else []
        return [str(m["id"]) for m in items if _offered(m)], None


def _offered(m: Any) -> bool:
    if not isinstance(m, dict) or not isinstance(m.get("id"), str) or not m["id"]:
        return False
    caps = m.get("capabilities")
    if not isinstance(caps, dict) or caps.get("type") != "chat":
        return False
    if "model_picker_enabled" in m and not m["model_picker_enabled"]:
        return False
    return not m["id"].endswith("paygo")
