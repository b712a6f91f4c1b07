"""(a) Time to first token added by the HTTP front door, against the same simulated upstream direct.

One simulator process, one daemon process; this process takes turns sending
streaming requests straight to the simulator, through the daemon's HTTP front
door, and (for comparison) through the daemon's socket, each on its own
keep-alive connection, and reports p50/p99 of each path and the time added.

A second run takes turns between direct and a trio proxy that only copies bytes
(`benchmarks._proxy`): the floor any Python process in the middle costs on this
machine, two more hops and wake-ups. What the daemon adds beyond it is its own
work: HTTP, routing, translation.
"""

from __future__ import annotations

import json
import statistics

import trio

from ._http import Http1, Native
from ._procs import MODEL, TEXT, byte_proxy, daemon, simulator, workspace

DIRECT, FLOOR, DOOR, SOCKET = "upstream direct", "byte-copying proxy", "HTTP front door", "daemon socket"


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def measure(
    upstream: str,
    front: str | None,
    sock: str | None,
    token: str,
    requests: int,
    warmup: int,
    proxy: str | None = None,
) -> dict[str, list[float]]:
    """Turns of one request per path: direct, then each path given (proxy, front door, socket)."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    direct = await Http1.open(upstream.removeprefix("http://").split("/", 1)[0])
    door = await Http1.open(front) if front else None
    native = await Native.open(sock) if sock else None
    floor = await Http1.open(proxy) if proxy else None
    auth = [("authorization", f"Bearer {token}")]
    paths: list[tuple[str, Http1, list[tuple[str, str]]]] = [(DIRECT, direct, [])]
    paths += [(FLOOR, floor, [])] if floor else []
    paths += [(DOOR, door, auth)] if door else []
    times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    if native is not None:
        times[SOCKET] = []
    try:
        for i in range(warmup + requests):
            # Take turns, so drift (CPU frequency, other load) hits every path alike.
            for name, conn, headers in paths:
                r = await conn.post("/v1/chat/completions", body, headers)
                if r.status != 200 or r.first_token is None or not r.body.endswith(b"data: [DONE]\n\n"):
                    raise RuntimeError(f"{name}: bad answer {r.status}: {r.body[:200]!r}")
                if i >= warmup:
                    times[name].append(r.first_token)
            if native is None:
                continue
            first, text, done = await native.chat(MODEL, "hi")
            if first is None or not done or text != TEXT:
                raise RuntimeError(f"{SOCKET}: incomplete answer {text[-40:]!r}")
            if i >= warmup:
                times[SOCKET].append(first)
    finally:
        for c in (direct, door, native, floor):
            if c is not None:
                await c.aclose()
    return times


def report(times: dict[str, list[float]], floor: dict[str, list[float]]) -> str:
    d = times[DIRECT]
    rows = [f"time to first token, {len(d)} streaming requests per path (loopback, simulated upstream):"]
    for name, xs in times.items():
        rows.append(
            f"  {name:<28} p50 {quantile(xs, 0.5) * 1e3:6.3f} ms   p99 {quantile(xs, 0.99) * 1e3:6.3f} ms"
            f"   mean {statistics.fmean(xs) * 1e3:6.3f} ms"
        )
    for name in (DOOR, SOCKET):
        f = times[name]
        p50, p99 = quantile(f, 0.5) - quantile(d, 0.5), quantile(f, 0.99) - quantile(d, 0.99)
        rows.append(
            f"  added via {name:<18} p50 {p50 * 1e3:6.3f} ms   p99 {p99 * 1e3:6.3f} ms   "
            f"ratio to direct: p50 {quantile(f, 0.5) / quantile(d, 0.5):.2f}x, "
            f"p99 {quantile(f, 0.99) / quantile(d, 0.99):.2f}x"
        )
    # Measured apart (direct and proxy in turns): a fourth path in the same turns leaves the
    # daemon idle longer between its requests, which alone makes it slower here.
    fd, ff = floor[DIRECT], floor[FLOOR]
    rows.append(
        f"  floor, a trio proxy that only copies bytes (own run, in turns with direct): added "
        f"p50 {(quantile(ff, 0.5) - quantile(fd, 0.5)) * 1e3:6.3f} ms   "
        f"p99 {(quantile(ff, 0.99) - quantile(fd, 0.99)) * 1e3:6.3f} ms"
    )
    return "\n".join(rows)


def run(requests: int = 500, warmup: int = 50) -> str:
    with (
        workspace() as root,
        simulator(root) as upstream,
        byte_proxy(root, upstream) as proxy,
        daemon(root, upstream) as d,
    ):
        times = trio.run(measure, upstream, d.http, str(d.socket), d.token, requests, warmup)
        floor = trio.run(measure, upstream, None, None, "", requests, warmup, proxy)
    return report(times, floor)
