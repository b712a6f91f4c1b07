"""Accepting connections for a door (the socket, the HTTP front door), bounded and quiet.

Each door caps its open connections (`limits.max_connections`): one past the
cap is handed to `refuse` (which writes the door's own short answer) and closed,
so a runaway client cannot take every file descriptor. When the process runs out
of descriptors anyway, accepting slows down (backing off up to a second) and the
condition is logged once a minute, not once per attempt. Each connection runs
inside `contained`: whatever it raises stays with it.
"""

from __future__ import annotations

import errno
import logging
import resource
from collections.abc import Awaitable, Callable

import trio

from .containment import contained

# accept() errors that mean "this process or the system is short of something": wait, then go on.
RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LOG_EVERY = 60.0  # seconds between two log lines about the same shortage
_MAX_BACKOFF = 1.0

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def raise_open_files_limit(want: int = 65536) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (and `want`); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


class Door:
    """One door's accept loop and its count of open connections."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        max_connections: int,
        log: logging.Logger,
        refuse: Handler,
        accept_peer: Callable[[trio.SocketStream], bool] | None = None,
    ) -> None:
        self.name = name
        self.handler = handler
        self.max_connections = max_connections
        self.log = log
        self.refuse = refuse
        self.accept_peer = accept_peer
        self.open = 0  # connections being served now
        self.refused = 0  # turned away at the cap since start
        self._refusing = 0  # refusals still being written: bounded too, or a flood would hold every fd
        self._last_shortage_log = -_LOG_EVERY

    async def serve(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept until cancelled, starting each connection in `nursery`."""
        backoff = 0.01
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in RESOURCE_ERRNOS:
                    raise
                now = trio.current_time()
                if now - self._last_shortage_log >= _LOG_EVERY:
                    self._last_shortage_log = now
                    self.log.warning(
                        "%s: cannot accept connections (%s); slowing down until some close",
                        self.name,
                        e.strerror or e,
                    )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.01
            if self.accept_peer is not None and not self.accept_peer(stream):
                await trio.aclose_forcefully(stream)
                continue
            if self.open >= self.max_connections:
                self.refused += 1
                if self._refusing >= self.max_connections:
                    await trio.aclose_forcefully(stream)  # no answer for a flood; closing is the answer
                else:
                    self._refusing += 1
                    nursery.start_soon(self._refuse, stream)
                continue
            self.open += 1
            nursery.start_soon(self._run, stream)

    async def _run(self, stream: trio.SocketStream) -> None:
        try:
            with contained(self.log, "a %s connection", self.name):
                await self.handler(stream)
        finally:
            self.open -= 1
            await trio.aclose_forcefully(stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        try:
            # Bounded: a refused client gets one second to take its answer.
            with contained(self.log, "refusing a %s connection", self.name), trio.move_on_after(1.0):
                await self.refuse(stream)
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)
