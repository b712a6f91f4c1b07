"""Containment: a failure while serving one connection or request stays inside it.

The daemon is shared by every editor and agent of the user, so nothing one
client sends (or one upstream answers) may end it. Each boundary (a connection,
a request, a background loop) runs inside `contained`: whatever escapes it,
exception groups and `RecursionError` included, is logged once with its
traceback and swallowed, while cancellation and interpreter exits pass
through untouched so that shutdown still works.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

# What must never be swallowed: trio's cancellation and the interpreter's own exits.
_PASS_THROUGH = (trio.Cancelled, KeyboardInterrupt, SystemExit, GeneratorExit)


def _passes(exc: BaseException) -> bool:
    return isinstance(exc, _PASS_THROUGH)


def split_failure(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(what must propagate, what is a failure to contain), either may be None. Pure."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(_passes)
    return (exc, None) if _passes(exc) else (None, exc)


@contextmanager
def contained(
    log: logging.Logger,
    what: str,
    *args: object,
    on_failure: Callable[[BaseException], None] | None = None,
) -> Iterator[None]:
    """Log and swallow any failure of the block; cancellation still propagates.

    `what` (with `args`, %-style) names the boundary in the log line.
    `on_failure` runs after the log line, for counters or a flag the caller reads.
    """
    try:
        yield
    except BaseException as exc:
        keep, failure = split_failure(exc)
        if failure is not None:
            log.error("failure contained in " + what, *args, exc_info=failure)
            if on_failure is not None:
                on_failure(failure)
        if keep is not None:
            raise keep from None
        # (a group whose only members were contained ends here)


async def run_forever(
    log: logging.Logger,
    what: str,
    loop: Callable[[], Awaitable[None]],
    *,
    first_backoff: float = 1.0,
    max_backoff: float = 300.0,
) -> None:
    """Run a background loop body again and again; a failure is logged and retried with backoff.

    `loop` is one pass; it sleeps on its own between healthy passes. A pass that
    fails waits `first_backoff`, doubling to `max_backoff`, before the next.
    """
    backoff = first_backoff
    while True:
        failed = False

        def note(_: BaseException) -> None:
            nonlocal failed
            failed = True

        with contained(log, "%s (retried after %.0fs)", what, backoff, on_failure=note):
            await loop()
        if failed:
            await trio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        else:
            backoff = first_backoff
