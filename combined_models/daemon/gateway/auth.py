"""The front door's token and listen address, decided without sockets (`cmctl http-token` uses this too)."""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from ...config import HttpConfig
from ...paths import state_dir, write_private

TOKEN_FILE = "http-token"


def token_path() -> Path:
    return state_dir() / TOKEN_FILE


def load_token(config: HttpConfig) -> str:
    """The token from the config, else from the state dir, generated (0600) the first time."""
    if config.token:
        return config.token
    path = token_path()
    with contextlib.suppress(FileNotFoundError):
        if token := path.read_text(encoding="utf-8").strip():
            return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    write_private(tmp, (token + "\n").encode())
    try:
        # link() fails if the file appeared meanwhile: two daemons starting at once agree on one token.
        os.link(tmp, path)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    finally:
        tmp.unlink(missing_ok=True)
    return token


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
