"""Where each provider's credentials come from, and the short-lived ones kept fresh.

Owned by the provider actor. `endpoint()` returns where and as whom to send a
request right now; for Copilot that means exchanging the GitHub OAuth token for
a short-lived Copilot token and refreshing it before it expires.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Protocol

import httpx
import msgspec
import platformdirs
import trio

from ..config import ResolvedProvider
from ..paths import APP
from ..statefile import load_or_quarantine
from .dialects import Endpoint, copilot_auth
from .dialects.aws_credentials import AwsCredentialsError, resolve_aws_credentials, resolve_region
from .errors import Failure, UpstreamError

COPILOT_TOKEN_FILE = "github-copilot.json"  # what `cmctl login github-copilot` stores (0600)


class Credentials(Protocol):
    async def endpoint(self, client: httpx.AsyncClient) -> Endpoint:
        """Where and as whom to send a request now. Raises UpstreamError when that cannot be had."""
        ...

    def invalidate(self) -> bool:
        """A 401 came back: drop what may be stale. True when a retry may succeed (a fresh token)."""
        ...

    def secrets(self) -> list[str]:
        """Every secret held, to redact from messages."""
        ...


class StaticCredentials:
    """A fixed endpoint: an API key from the config or the environment (or none, for local servers)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self.region = endpoint.region

    async def endpoint(self, client: httpx.AsyncClient) -> Endpoint:
        return self._endpoint

    def invalidate(self) -> bool:
        return False

    def secrets(self) -> list[str]:
        aws = self._endpoint.credentials
        held = [
            self._endpoint.api_key,
            getattr(aws, "secret_access_key", None),
            getattr(aws, "session_token", None),
        ]
        return [s for s in held if s]


class CopilotCredentials:
    """The GitHub OAuth token, exchanged for a short-lived Copilot token that is refreshed before expiry."""

    def __init__(self, base: Endpoint, oauth_token: str, auth_url: str) -> None:
        self._base = base
        self._oauth = oauth_token
        self._auth_url = auth_url
        self._token: copilot_auth.CopilotToken | None = None
        self._lock = trio.Lock()  # concurrent requests share one exchange

    async def endpoint(self, client: httpx.AsyncClient) -> Endpoint:
        async with self._lock:
            if copilot_auth.needs_refresh(self._token, datetime.now(UTC)):
                req = copilot_auth.build_token_request(self._oauth, self._auth_url)
                try:
                    resp = await client.request(req.method, req.url, headers=req.headers)
                except httpx.HTTPError as e:
                    raise UpstreamError(Failure.UNREACHABLE, f"Copilot token exchange failed: {e!r}") from e
                self._token = copilot_auth.parse_token_response(
                    resp.status_code, resp.content, datetime.now(UTC)
                )
            token = self._token
        assert token is not None
        return Endpoint(
            base_url=token.api_base or self._base.base_url,
            api_key=token.token,
            headers=self._base.headers,
            options=self._base.options,
        )

    def invalidate(self) -> bool:
        self._token = None
        return True

    def secrets(self) -> list[str]:
        return [self._oauth] + ([self._token.token] if self._token else [])


def copilot_token_path() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / COPILOT_TOKEN_FILE


class StoredCopilotToken(msgspec.Struct):
    """What `cmctl login github-copilot` stores (other fields it may add are ignored)."""

    oauth_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


_stored_token_decoder = msgspec.json.Decoder(StoredCopilotToken)


def _stored_copilot_token() -> str | None:
    stored = load_or_quarantine(
        copilot_token_path(), _stored_token_decoder.decode, what="stored GitHub token", max_bytes=64 * 1024
    )
    return stored.oauth_token if stored is not None else None


def resolve_credentials(provider: ResolvedProvider) -> tuple[Credentials | None, str, str]:
    """The credentials of `provider`, where they came from, and why it is disabled ("" when usable)."""
    cfg = provider.config
    base = Endpoint(
        base_url=provider.base_url,
        api_key=provider.api_key,
        headers=dict(provider.headers),
        options=dict(provider.options),
        region=cfg.region,
    )
    if provider.api == "bedrock":
        return _bedrock(provider, base)
    if provider.api == "copilot":
        oauth, source = provider.api_key, provider.key_source
        if not oauth:
            oauth, source = _stored_copilot_token(), "cmctl login"
        if not oauth:
            config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            oauth, source = copilot_auth.find_oauth_token(config_home), "github-copilot/hosts.json"
        if not oauth:
            return None, "none", "no GitHub token: run `cmctl login github-copilot`"
        auth_url = cfg.auth_url or copilot_auth.DEFAULT_GITHUB_API
        return CopilotCredentials(base, oauth, auth_url), source, ""
    return StaticCredentials(base), provider.key_source, ""


def _bedrock(provider: ResolvedProvider, base: Endpoint) -> tuple[Credentials | None, str, str]:
    cfg = provider.config
    home = Path.home()
    try:
        region = cfg.region or resolve_region(os.environ, home, cfg.profile)
        if provider.api_key:  # a Bedrock API key: bearer auth, no signing
            creds, source = None, provider.key_source
        else:
            creds = resolve_aws_credentials(os.environ, home, cfg.profile)
            source = f"aws profile {cfg.profile}" if cfg.profile else "aws credentials (env or ~/.aws)"
    except AwsCredentialsError as e:
        return None, "none", f"AWS credentials: {e}"
    if not provider.api_key and creds is None:
        return (
            None,
            "none",
            "no AWS credentials (set AWS_BEARER_TOKEN_BEDROCK, AWS_ACCESS_KEY_ID or a profile)",
        )
    if not region and not base.base_url:
        return None, source, "no AWS region (set `region`, AWS_REGION or a profile's region)"
    endpoint = Endpoint(
        base_url=base.base_url,
        api_key=provider.api_key,
        headers=base.headers,
        options=base.options,
        credentials=creds,
        region=region,
    )
    return StaticCredentials(endpoint), source, ""
