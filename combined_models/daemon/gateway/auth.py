"""The front door's token and listen address, decided without sockets (`cmctl http-token` uses this too)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Mapping
from pathlib import Path

from ...config import HttpConfig
from ...paths import state_dir
from ...statefile import load_or_create_token

TOKEN_FILE = "http-token"

log = logging.getLogger("combined_models.gateway")


def token_path() -> Path:
    return state_dir() / TOKEN_FILE


def valid_token(token: str) -> bool:
    """Whether `token` can travel in a header as is: visible ASCII, no spaces or control characters."""
    return bool(token) and all("!" <= c <= "~" for c in token)


MAX_TOKEN_FILE = 4096  # a token is about 43 characters


def _decode_token(raw: bytes) -> str:
    token = raw.decode("utf-8").strip()
    if not valid_token(token):
        raise ValueError("no usable token (empty, or spaces or control characters inside)")
    return token


def load_token(config: HttpConfig) -> str:
    """The token from the config, else from the state dir, generated (0600) the first time."""
    if config.token:
        return config.token
    return load_or_create_token(
        token_path(), _decode_token, what="HTTP token file", max_bytes=MAX_TOKEN_FILE, logger=log
    )


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token a request carries, as `Authorization: Bearer` (OpenAI SDKs) or `x-api-key` (Anthropic's)."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


def authorized(headers: Mapping[str, str], token: str) -> bool:
    got = presented_token(headers)
    return got is not None and hmac.compare_digest(got.encode(), token.encode())


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:4141` / `[::1]:4141` -> (host, port); `localhost` means 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    return ("127.0.0.1" if host == "localhost" else host), int(port)


def client_host(bound_host: str) -> str:
    """Where a local client reaches a listener bound to `bound_host` (a wildcard means loopback)."""
    if bound_host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bound_host == "::":
        return "[::1]"
    return f"[{bound_host}]" if ":" in bound_host else bound_host


# ------------------------------------------------------------------ who may call


def host_allowed(host: str | None, *, allow_remote: bool) -> bool:
    """Whether a request's `Host` names this machine's loopback (a DNS-rebinding page names its own host).

    With `allow_remote` any Host goes (the token still guards). No Host at all is
    HTTP/1.0 from a local tool, never a browser, so it passes.
    """
    if allow_remote or host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [::1] or [::1]:4141
        name, sep, rest = name[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
    else:
        bare, sep, port = name.rpartition(":")
        if sep and port.isdigit():
            name = bare
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """A request from a web page (it carries `Origin`) goes only when that page is listed."""
    return origin is None or origin.rstrip("/") in (o.rstrip("/") for o in allowed)
