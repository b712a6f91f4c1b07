"""`cmctl login github-copilot`: GitHub's device flow, storing the OAuth token for the daemon (0600)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from ..daemon.credentials import copilot_token_path
from ..daemon.dialects import HttpRequest, copilot_auth
from ..daemon.errors import UpstreamError
from ..paths import write_private


def _send(client: httpx.Client, req: HttpRequest) -> httpx.Response:
    return client.request(req.method, req.url, headers=req.headers, content=req.body or None)


def login_github_copilot(
    github_url: str = copilot_auth.DEFAULT_GITHUB_URL,
    api_url: str = copilot_auth.DEFAULT_GITHUB_API,
    *,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> int:
    """Run the device flow; 0 once a token that Copilot accepts is stored, 1 otherwise."""
    with httpx.Client(timeout=30, trust_env=True) as client:
        try:
            code = copilot_auth.parse_device_code(
                *_response(client, copilot_auth.build_device_code_request(github_url))
            )
            say(f"Open {code.verification_uri} and enter the code: {code.user_code}")
            interval, deadline = code.interval, time.monotonic() + code.expires_in
            while time.monotonic() < deadline:
                sleep(interval)
                poll = copilot_auth.parse_poll_response(
                    *_response(client, copilot_auth.build_poll_request(code.device_code, github_url)),
                    interval,
                )
                interval = poll.interval
                if poll.status in ("expired", "denied"):
                    say(f"login {poll.status}; run `cmctl login github-copilot` again")
                    return 1
                if poll.status == "token" and poll.token:
                    # Prove the token gets a Copilot token before keeping it.
                    status, body = _response(client, copilot_auth.build_token_request(poll.token, api_url))
                    copilot_auth.parse_token_response(status, body, datetime.now(UTC))
                    path = copilot_token_path()
                    write_private(
                        path, json.dumps({"oauth_token": poll.token, "github": github_url}).encode()
                    )
                    say(f"logged in; the token is stored in {path} (restart the daemon to use it)")
                    return 0
        except UpstreamError as e:
            say(f"login failed: {e.message}")
            return 1
        except httpx.HTTPError as e:
            say(f"login failed: cannot reach GitHub: {e}")
            return 1
    say("login timed out: the code expired before it was entered")
    return 1


def _response(client: httpx.Client, req: HttpRequest) -> tuple[int, bytes]:
    resp = _send(client, req)
    return resp.status_code, resp.content
