"""(b) Daemon RSS and CPU with 500 concurrent streams from 50 clients, socket and HTTP mixed.

The daemon and the simulated upstream run in their own processes; this process
is the 50 clients: 25 socket connections multiplexing 10 requests each, and 25
HTTP clients with 10 keep-alive connections each. Every round runs 500 streams
at once; each must end complete. CPU and RSS are read from /proc for the daemon.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field

import trio

from combined_models.chat import DoneEvent, TextEvent
from combined_models.client.aio import AsyncClient, open_client

from ._http import Http1
from ._procs import MODEL, TEXT, Daemon, daemon, simulator, workspace

CLIENTS = 50
PER_CLIENT = 10


@dataclass
class Tally:
    completed: int = 0
    events: int = 0  # content events the daemon relayed
    failures: list[str] = field(default_factory=list)


async def socket_streams(client: AsyncClient, tally: Tally) -> None:
    async def one() -> None:
        text, last = "", None
        async for e in client.chat(MODEL, "hi"):
            if isinstance(e, TextEvent):
                text += e.text
                tally.events += 1
            last = e
        if isinstance(last, DoneEvent) and text == TEXT:
            tally.completed += 1
        else:
            tally.failures.append(f"socket: {text[-40:]!r}, ended with {last!r}"[:300])

    async with trio.open_nursery() as nursery:
        for _ in range(PER_CLIENT):
            nursery.start_soon(one)


async def http_streams(conns: list[Http1], token: str, tally: Tally) -> None:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()

    async def one(conn: Http1) -> None:
        r = await conn.post("/v1/chat/completions", body, [("authorization", f"Bearer {token}")])
        chunks = [json.loads(line[6:]) for line in r.body.split(b"\n\n") if line.startswith(b"data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        tally.events += sum(1 for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content"))
        if r.status == 200 and r.body.endswith(b"data: [DONE]\n\n") and text == TEXT:
            tally.completed += 1
        else:
            tally.failures.append(f"http {r.status}: {r.body[-80:]!r}")

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(one, conn)


async def drive(d: Daemon, rounds: int) -> dict[str, float]:
    half = CLIENTS // 2
    pools: list[list[Http1]] = []
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(open_client(d.socket)) for _ in range(half)]
        for _ in range(CLIENTS - half):
            pools.append([await Http1.open(d.http) for _ in range(PER_CLIENT)])
            for conn in pools[-1]:
                stack.push_async_callback(conn.aclose)

        async def round_(tally: Tally) -> None:
            async with trio.open_nursery() as nursery:
                for c in sockets:
                    nursery.start_soon(socket_streams, c, tally)
                for pool in pools:
                    nursery.start_soon(http_streams, pool, d.token, tally)

        await round_(Tally())  # warm-up: connections, caches, the interpreter
        rss0, _ = d.rss_mb()
        cpu0, t0 = d.cpu_seconds(), time.perf_counter()
        tally = Tally()
        with trio.fail_after(55):
            for _ in range(rounds):
                await round_(tally)
        cpu, wall = d.cpu_seconds() - cpu0, time.perf_counter() - t0
        rss, peak = d.rss_mb()
    expected = rounds * CLIENTS * PER_CLIENT
    if tally.completed != expected:
        raise RuntimeError(f"{tally.completed}/{expected} streams completed; e.g. {tally.failures[:3]}")
    return {
        "requests": expected,
        "events": tally.events,
        "cpu": cpu,
        "wall": wall,
        "rss0": rss0,
        "rss": rss,
        "peak": peak,
    }


def report(m: dict[str, float]) -> str:
    per_k = 1000 / m["requests"]
    return "\n".join(
        [
            f"daemon under load: {int(m['requests'])} streams in rounds of {CLIENTS * PER_CLIENT} concurrent "
            f"from {CLIENTS} clients (half socket, half HTTP), all complete, in {m['wall']:.1f} s:",
            f"  CPU   {m['cpu']:.2f} s total = {m['cpu'] * per_k:.2f} CPU s per 1,000 relayed requests"
            f" ({m['cpu'] / m['events'] * 1e6:.0f} µs per relayed event, {m['cpu'] / m['wall'] * 100:.0f}% of one core)",
            f"  RSS   {m['rss']:.1f} MB after the load ({m['rss0']:.1f} MB before it, peak {m['peak']:.1f} MB)",
        ]
    )


def run(rounds: int = 2, chunk_delay: float = 0.02) -> str:
    with (
        workspace() as root,
        simulator(root, chunk_delay=chunk_delay) as upstream,
        daemon(root, upstream) as d,
    ):
        measured = trio.run(drive, d, rounds)
    return report(measured)
