"""Upstream connections are kept alive: a new TCP connection per request costs every first token."""

from __future__ import annotations

from pathlib import Path

import trio

from combined_models.client.aio import open_client
from combined_models.daemon import open_daemon
from combined_models.simulator import Simulator

from .conftest import ANSWER, MODEL, config_for, done_of, text_of


def counting_connections(sim: Simulator) -> list[int]:
    """Count the connections `sim` accepts (patched in before it runs)."""
    accepted = [0]
    serve = sim._serve_connection

    async def counting(stream: trio.SocketStream) -> None:
        accepted[0] += 1
        await serve(stream)

    sim._serve_connection = counting  # type: ignore[method-assign]
    return accepted


async def test_finished_streams_leave_their_connection_to_the_next_request(short_dir: Path) -> None:
    sim = Simulator(models=[MODEL], text=ANSWER, name="only")
    accepted = counting_connections(sim)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        await open_daemon(config_for({"only": sim}), short_dir / "d.sock", nursery)
        with trio.fail_after(10):
            async with open_client(short_dir / "d.sock") as c:
                for _ in range(3):
                    events = [e async for e in c.chat(MODEL, "hello")]
                    assert text_of(events) == ANSWER
                    assert done_of(events).provider == "only"
        assert accepted[0] == 1
        nursery.cancel_scope.cancel()
