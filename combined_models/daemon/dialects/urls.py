"""URL facts shared by the dialects (SigV4 signs the Host header) and the HTTP client that sends it."""

from __future__ import annotations

__all__ = ["DEFAULT_PORTS", "host_header"]

DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(scheme: str, host: str, port: int | None) -> str:
    """What an HTTP client sends as Host (and SigV4 signs): lower-cased, port only when not the default.

    `port` None: the URL named none, so the scheme's default.
    """
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    return host if port is None or port == DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
