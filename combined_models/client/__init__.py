"""Clients of the daemon: `Client` (blocking) and `open_client()` -> `AsyncClient` (asyncio or trio)."""

from .sync import Client, ConnectionClosed, DaemonUnavailable, RequestFailed

__all__ = ["AsyncClient", "Client", "ConnectionClosed", "DaemonUnavailable", "RequestFailed", "open_client"]


def __getattr__(name: str) -> object:
    # The async client pulls in anyio; load it only when asked, so `cmctl` starts fast.
    if name in ("AsyncClient", "open_client"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(name)
