"""`cmctl demo`: simulated providers, a private daemon, and failover you can watch.

Everything runs in this one process on loopback (simulators, daemon, client),
in a temporary runtime dir that is removed at the end: no keys, no network,
no process left behind.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import trio

from .chat import DoneEvent, ErrorEvent, FailoverEvent, ProviderEvent, TextEvent
from .client.aio import AsyncClient, open_client
from .client.render import render_models, render_status
from .config import parse_config
from .daemon import open_daemon
from .simulator import Fault, Simulator

ANSWER = (
    "A combined model is one name for the same model at several providers. When the provider serving "
    "you rate-limits, overloads or breaks mid-answer, the daemon carries on with the next one, so you "
    "receive one complete answer with nothing lost and nothing repeated."
)
# (provider id, the wire format its simulator speaks, the id it lists the model under)
PROVIDERS = [
    ("anthropic", "anthropic", "claude-sonnet-4-5-20250929"),
    ("amazon-bedrock", "bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("openrouter", "openrouter", "anthropic/claude-sonnet-4.5"),
]
FIRST, SECOND, THIRD = (pid for pid, _, _ in PROVIDERS)


def demo_config(sims: dict[str, Simulator]) -> str:
    """Three seed providers by their preset ids, pointed at the simulators; models come from their listings."""
    toml = [
        f"provider_priority = {[pid for pid, _, _ in PROVIDERS]!r}".replace("'", '"'),
        "[failover]",
        "first_token_timeout = 5.0",
        "idle_timeout = 2.0",
        "[http]",
        "enabled = false",  # the demo leaves no token or port behind
    ]
    for pid, _, _ in PROVIDERS:
        sim = sims[pid]
        toml += [f"[providers.{pid}]", f'base_url = "{sim.base_url}"', f'api_key = "{sim.api_key}"']
        if pid == "amazon-bedrock":
            toml.append('region = "us-east-1"')  # picks the us. inference profile
    return "\n".join(toml) + "\n"


class Painter:
    def __init__(self) -> None:
        self.color = sys.stdout.isatty()

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text


paint = Painter()


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say()
    say(paint(f"── {n}. {title}", "1;36"))


async def ask(client: AsyncClient, model: str, prompt: str) -> DoneEvent | ErrorEvent | None:
    """Stream one answer, showing who served it and every failover inline."""
    last: DoneEvent | ErrorEvent | None = None
    mid = False  # inside the answer's text: markers go without padding, so the text reads on
    sys.stdout.write("   ")
    async for event in client.chat(model, prompt):
        if isinstance(event, ProviderEvent):
            sys.stdout.write(paint(f"[{event.provider}]" + ("" if mid else " "), "32"))
        elif isinstance(event, FailoverEvent):
            where = "mid-answer" if event.after_output else "before any output"
            sys.stdout.write(paint(f"[failover {event.from_} → {event.to}: {event.reason}, {where}]", "1;33"))
            sys.stdout.write("" if mid else " ")
        elif isinstance(event, TextEvent):
            mid = True
            sys.stdout.write(event.text)
        elif isinstance(event, DoneEvent | ErrorEvent):
            last = event
        sys.stdout.flush()
    say()
    if isinstance(last, DoneEvent):
        say(
            paint(
                f"   done: served by {last.provider} ({last.model}), finish_reason={last.finish_reason}", "2"
            )
        )
    elif isinstance(last, ErrorEvent):
        say(paint(f"   error: {last.kind}: {last.message}", "31"))
    return last


async def _demo(fast: bool, runtime: Path) -> int:
    pause = 0.0 if fast else 0.6
    cooldown = 2 if fast else 4
    sims = {
        pid: Simulator(
            dialect=dialect,
            models=[model],
            text=ANSWER,
            chunk_delay=0.0 if fast else 0.025,
            name=pid,
            api_key=f"demo-key-{pid}",
        )
        for pid, dialect, model in PROVIDERS
    }
    async with trio.open_nursery() as nursery:
        for sim in sims.values():
            await nursery.start(sim.run)
        cfg = parse_config(demo_config(sims), "demo config")
        sock = runtime / "daemon.sock"
        await open_daemon(cfg, sock, nursery, token_file=runtime / "socket-token")  # used over tcp only
        ok = True
        async with open_client(sock) as client:
            models = await client.models()
            say(
                paint("combined-models demo: three simulated providers on loopback, one daemon, no keys", "1")
            )
            say("Anthropic (Messages SSE), Amazon Bedrock (SigV4-style auth, binary event-stream) and")
            say(
                "OpenRouter (OpenAI-shaped SSE) each list the model under their own id; the daemon groups them:"
            )
            say(render_models(models))
            model = models.models[0].id if models.models else "claude-sonnet-4-5"

            step(1, f"all healthy: `{model}` is served by the first provider in priority order")
            r1 = await ask(client, model, "What is a combined model?")
            await trio.sleep(pause)

            step(2, f"{FIRST} answers 429 (retry-after: {cooldown}): the same request continues on {SECOND}")
            sims[FIRST].push_fault(Fault(kind="status", status=429, headers={"retry-after": str(cooldown)}))
            r2 = await ask(client, model, "What is a combined model?")
            say(render_status(await client.status()))
            await trio.sleep(pause)

            step(3, f"while {FIRST} cools down, requests go straight to {SECOND} ({FIRST} sees none of them)")
            before = sims[FIRST].statistics().chat_requests
            r3 = await ask(client, model, "And again?")
            seen = sims[FIRST].statistics().chat_requests - before
            say(paint(f"   requests {FIRST} received meanwhile: {seen}", "2"))
            await trio.sleep(pause)

            step(
                4, f"{SECOND}'s stream breaks mid-answer: {THIRD} finishes it, with nothing lost or repeated"
            )
            sims[SECOND].push_fault(Fault(kind="reset_after", after_chunks=12))
            r4 = await ask(client, model, "Once more, please.")
            await trio.sleep(pause)

            step(5, f"{cooldown}s later the cooldown is over: traffic goes back to {FIRST}")
            status = await client.status()
            waits = [p.cooldown_remaining_s for p in status.providers]
            waits += [m.cooldown_remaining_s for p in status.providers for m in p.models]
            await trio.sleep(max(waits, default=0.0) + 0.1)
            r5 = await ask(client, model, "Last one.")

            step(6, "provider health (`cmctl status`)")
            say(render_status(await client.status()))
            served = [r.provider if isinstance(r, DoneEvent) else None for r in (r1, r2, r3, r4, r5)]
            ok = served == [FIRST, SECOND, SECOND, THIRD, FIRST]
        nursery.cancel_scope.cancel()
    say()
    if ok:
        say(paint("every answer was complete; failover happened before output and mid-answer.", "1;32"))
        say("Next: write a config (see README.md) and run `cmctl start`, `cmctl models`, `cmctl chat MODEL`.")
        return 0
    say(paint(f"unexpected: answers were served by {served}", "1;31"))
    return 1


def run_demo(fast: bool = False) -> int:
    runtime = Path(tempfile.mkdtemp(prefix="cm-demo-"))
    try:
        runtime.chmod(0o700)
        return trio.run(_demo, fast, runtime)
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
