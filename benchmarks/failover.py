"""(c) Failover before output: how long the daemon takes to move a request on to the next provider.

Setup: two simulator processes, `a` and `b`, and one daemon process whose
combined model `bench-model` has the members [a, b] in that order; this
process is the client, on the daemon's socket (raw frames, `_http.Native`).
Processes rather than one trio loop, as in the other benchmarks, so the
client's own work never sits on the daemon's event loop.

Per sample, in rotating order so drift and idle effects hit all three alike:

  F  time to the first text event of `bench-model` through the daemon, with
     `a` failing before output, so `b` serves it after a failover;
  B  the same request addressed `b/bench-model` through the daemon: `b`'s own
     latency plus the daemon's usual per-request cost;
  A  the time `a` takes to fail, straight from the simulator with a minimal
     h11 client (to the end of the error body, which the daemon reads too).

    failover latency = F - B - A

A is measured with a minimal client rather than httpx on purpose: the daemon's
own httpx time on the failed attempt is the daemon's cost, so it stays in the
figure (the estimate errs high, never low). Figures are given two ways:
differences of the quantiles (as `ttft` does; at p99 subtracting two tails
errs low) and quantiles of the per-sample differences (the noise of three
timings adds up there, so p99 errs high); the truth sits between.

Failures measured:

- `503 overloaded`: `Fault(kind="status", status=503)`. An overload fails over
  at once. It would also cool `a` for a second, and a cooling member is
  skipped without being tried, so the fault carries `retry-after-ms: 5`: the
  provider's own hint wins, `a` cools for 5 ms (long enough that the same
  request cannot go back to it), and samples are paced >= 6 ms apart, so every
  request really tries `a` first (as a probe). The hint of 0 one might try is
  ignored by `health.Policy.cooldown` (the default applies), hence 5 ms.
- `reset before headers`: `Fault(kind="reset_before_headers")`, pushed fresh
  before each request that should draw it. A connection failure is transient:
  by default it is retried on the same member after a backoff (0.25 s and up),
  which is retry policy, not failover; the daemon here runs with
  `[failover] max_attempts = 1`, so it fails over at once. Transient failures
  cool a member only after 3 in a row, so after each sample an untimed
  request to `a/bench-model` succeeds and clears the run (it also leaves the
  daemon a warm connection to `a`, as in the 503 case). A's client opens its
  connection before the timer starts, as the daemon's pool has one open.

Every F sample must show exactly one failover, from a to b, and a complete
answer from b; any that does not is counted and left out (reported).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import h11
import trio

from combined_models.chat import ChatRequest, DoneEvent, FailoverEvent, Message, ProviderEvent, TextEvent
from combined_models.protocol import Chat, Error, Event, encode_frame

from ._http import Http1, Native
from ._procs import MODEL, TEXT, Daemon, _env, _stop, simulator, workspace
from .ttft import quantile

TARGET_MS = 5.0
HINT_MS = 5  # a's cooldown after each 503, from its retry-after-ms hint
PACE = HINT_MS / 1000 + 0.001  # seconds between samples: a's cooldown is over by the next one
FAILED, DIRECT_B, A_FAILS = "F: a fails, b serves", "B: b/model direct", "A: a's own failure"


@contextlib.contextmanager
def failover_daemon(root: Path, a: str, b: str) -> Iterator[Daemon]:
    """`cmctl serve` in its own process with providers a (first) and b on two simulators."""
    from combined_models.client.sync import Client, DaemonUnavailable

    lines = ['provider_priority = ["a", "b"]', "[failover]", "max_attempts = 1", "[http]", "enabled = false"]
    for pid, upstream in (("a", a), ("b", b)):
        lines += [f"[providers.{pid}]", 'api = "openai"', f'base_url = "{upstream}"', 'api_key = "sk-bench"']
        lines += [f'models = ["{MODEL}"]']
    config = root / "failover.toml"
    config.write_text("\n".join(lines) + "\n")
    sock = Path(tempfile.mkdtemp(prefix="cmb-")) / "d.sock"
    cmd = [sys.executable, "-m", "combined_models.client.cli", "serve", "--config", str(config)]
    log = (root / "daemon.log").open("wb")
    proc = subprocess.Popen([*cmd, "--socket", str(sock)], env=_env(root), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {(root / 'daemon.log').read_text()[-500:]}")
            try:
                with Client(sock, timeout=5) as c:
                    c.status()
                break
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Daemon(proc, sock, "", "")
    finally:
        _stop(proc)
        log.close()
        sock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            sock.parent.rmdir()


class Sampler:
    """The client side: the daemon's socket, a connection straight to `a`, and `a`'s fault control."""

    def __init__(self, native: Native, a_addr: str, control: Http1, a_direct: Http1) -> None:
        self.native = native
        self.a_addr = a_addr
        self.control = control
        self.a_direct = a_direct
        self.body = json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        ).encode()

    async def push(self, fault: dict[str, object], *, clear: bool = False) -> None:
        r = await self.control.post("/_sim/faults", json.dumps({"push": [fault], "clear": clear}).encode())
        if r.status != 200:
            raise RuntimeError(f"cannot script the simulator: {r.status} {r.body[:200]!r}")

    async def clear(self) -> None:
        await self.control.post("/_sim/faults", b'{"clear": true}')

    async def via_daemon(self, model: str) -> tuple[float, list[str], list[tuple[str, str]], bool]:
        """(seconds to the first text, providers announced, failovers (from, to), complete and whole)."""
        n = self.native
        rid, n.next_id = n.next_id, n.next_id + 1
        frame = encode_frame(Chat(id=rid, model=model, request=ChatRequest(messages=[Message("user", "hi")])))
        started = time.perf_counter()
        await n.stream.send_all(frame)
        first: float | None = None
        text, providers, failovers = "", [], []
        while True:
            f = await n._frame()
            if isinstance(f, Error):
                raise RuntimeError(f"{model}: error from the daemon: {f.kind}: {f.message}")
            if not isinstance(f, Event):
                continue
            e = f.event
            if isinstance(e, TextEvent):
                first = time.perf_counter() - started if first is None else first
                text += e.text
            elif isinstance(e, ProviderEvent):
                providers.append(e.provider)
            elif isinstance(e, FailoverEvent):
                failovers.append((e.from_, e.to))
            elif isinstance(e, DoneEvent):
                if first is None:
                    raise RuntimeError(f"{model}: done without text")
                return first, providers, failovers, text == TEXT

    async def a_fails(self, expect: str) -> float:
        """Seconds from sending to the end of a's failure: the whole error response, or the reset."""
        started = time.perf_counter()
        try:
            r = await self.a_direct.post("/v1/chat/completions", self.body)
        except (trio.BrokenResourceError, ConnectionError, h11.RemoteProtocolError):
            took = time.perf_counter() - started
            if expect != "reset":
                raise
            # Reopened before the next timer starts, as the daemon's pool keeps one open.
            await self.a_direct.aclose()
            self.a_direct = await Http1.open(self.a_addr)
            return took
        took = time.perf_counter() - started
        if expect != "503" or r.status != 503:
            raise RuntimeError(f"a answered {r.status} where a {expect} was scripted: {r.body[:200]!r}")
        return took


async def scenario(s: Sampler, name: str, samples: int, warmup: int) -> tuple[dict[str, list[float]], int]:
    reset = name == "reset"
    fault: dict[str, object] = (
        {"kind": "reset_before_headers"}
        if reset
        else {"kind": "status", "status": 503, "headers": {"retry-after-ms": str(HINT_MS)}, "times": -1}
    )
    await s.clear()
    if not reset:
        await s.push(fault)  # stays until cleared: every request to a gets it
    times: dict[str, list[float]] = {FAILED: [], DIRECT_B: [], A_FAILS: []}
    anomalies = 0

    async def failed() -> float | None:
        nonlocal anomalies
        if reset:
            await s.push(fault)
        first, providers, failovers, whole = await s.via_daemon(MODEL)
        if reset:  # clear a's run of transient failures (untimed)
            _, p, _, ok = await s.via_daemon(f"a/{MODEL}")
            if p != ["a"] or not ok:
                raise RuntimeError(f"a/{MODEL} was not served by a: {p}")
        if providers != ["b"] or failovers != [("a", "b")] or not whole:
            anomalies += 1
            return None
        return first

    async def direct_b() -> float | None:
        first, providers, failovers, whole = await s.via_daemon(f"b/{MODEL}")
        if providers != ["b"] or failovers or not whole:
            raise RuntimeError(f"b/{MODEL}: served by {providers}, failovers {failovers}")
        return first

    async def a_fails() -> float | None:
        if reset:
            await s.push(fault)
        return await s.a_fails("reset" if reset else "503")

    steps: list[tuple[str, Callable[[], Awaitable[float | None]]]] = [
        (FAILED, failed),
        (DIRECT_B, direct_b),
        (A_FAILS, a_fails),
    ]
    for i in range(warmup + samples):
        await trio.sleep(PACE)
        got: dict[str, float | None] = {}
        k = i % len(steps)
        for label, step in steps[k:] + steps[:k]:
            got[label] = await step()
        if i >= warmup and got[FAILED] is not None:
            for label, value in got.items():
                assert value is not None
                times[label].append(value)
    await s.clear()
    return times, anomalies


async def measure(
    a_url: str, sock: str, samples: int, warmup: int
) -> dict[str, tuple[dict[str, list[float]], int]]:
    a_addr = a_url.removeprefix("http://").split("/", 1)[0]
    native = await Native.open(sock)
    control = await Http1.open(a_addr)
    a_direct = await Http1.open(a_addr)
    s = Sampler(native, a_addr, control, a_direct)
    try:
        # Resets first: they need `a` ready at the start, and each 503 leaves it cooling (briefly,
        # but with a strike count that would make a reset's default cooldown a long one).
        reset = await scenario(s, "reset", samples, warmup)
        return {"503 overloaded": await scenario(s, "503", samples, warmup), "reset before headers": reset}
    finally:
        for c in (native, control, s.a_direct):
            await c.aclose()


def _ms(x: float) -> str:
    return f"{x * 1e3:6.3f} ms"


def report(results: dict[str, tuple[dict[str, list[float]], int]]) -> str:
    rows: list[str] = []
    for name, (times, anomalies) in results.items():
        f, b, a = times[FAILED], times[DIRECT_B], times[A_FAILS]
        rows.append(f"failover before output, a: {name} ({len(f)} samples, through the daemon socket):")
        for label, xs in times.items():
            rows.append(
                f"  {label:<24} p50 {_ms(quantile(xs, 0.5))}   p99 {_ms(quantile(xs, 0.99))}"
                f"   mean {_ms(statistics.fmean(xs))}"
            )
        per = [fi - bi - ai for fi, bi, ai in zip(f, b, a, strict=True)]
        p50 = quantile(f, 0.5) - quantile(b, 0.5) - quantile(a, 0.5)
        p99 = quantile(f, 0.99) - quantile(b, 0.99) - quantile(a, 0.99)
        verdict = ", ".join(
            f"{q} {'meets' if max(a, b) < TARGET_MS / 1e3 else 'MISSES'}"
            for q, a, b in (("p50", p50, quantile(per, 0.5)), ("p99", p99, quantile(per, 0.99)))
        )
        rows.append(
            f"  failover latency F-B-A    p50 {_ms(p50)}   p99 {_ms(p99)}   (differences of quantiles)"
        )
        rows.append(
            f"                            p50 {_ms(quantile(per, 0.5))}   p99 {_ms(quantile(per, 0.99))}"
            f"   (quantiles of per-sample differences)"
        )
        rows.append(f"  target: < {TARGET_MS:.0f} ms, both ways: {verdict}")
        if anomalies:
            rows.append(f"  ! {anomalies} requests did not fail over exactly once from a to b (left out)")
    return "\n".join(rows)


def run(samples: int = 400, warmup: int = 40) -> str:
    with workspace() as root, simulator(root) as a, simulator(root) as b, failover_daemon(root, a, b) as d:
        results = trio.run(measure, a, str(d.socket), samples, warmup)
    return report(results)
