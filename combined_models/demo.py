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
from .client.cli import render_models, render_status
from .config import parse_config
from .daemon import open_daemon
from .simulator import Fault, Simulator

ANSWER = (
    "A combined model is one name for the same model at several providers. When the provider serving "
    "you rate-limits, overloads or breaks mid-answer, the daemon carries on with the next one, so you "
    "receive one complete answer with nothing lost and nothing repeated."
)
PROVIDERS = [  # (id, flavour of OpenAI dialect, the id it lists the model under)
    ("openai", "openai", "gpt-4.1"),
    ("openrouter", "openrouter", "openai/gpt-4.1"),
    ("backup", "openai", "gpt-4.1"),
]


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
            dialect=flavour, models=[model], text=ANSWER, chunk_delay=0.0 if fast else 0.025, name=pid
        )
        for pid, flavour, model in PROVIDERS
    }
    async with trio.open_nursery() as nursery:
        for sim in sims.values():
            await nursery.start(sim.run)
        toml = [
            'provider_priority = ["openai", "openrouter", "backup"]',
            "[failover]",
            "first_token_timeout = 5.0",
            "idle_timeout = 2.0",
        ]
        for pid, _, model in PROVIDERS:
            toml += [
                f"[providers.{pid}]",
                'api = "openai"',
                f'base_url = "{sims[pid].base_url}"',
                f'api_key = "sk-demo-{pid}"',
                f'models = ["{model}"]',
            ]
        cfg = parse_config("\n".join(toml), "demo config")
        sock = runtime / "daemon.sock"
        await open_daemon(cfg, sock, nursery)
        ok = True
        async with open_client(sock) as client:
            models = await client.models()
            say(
                paint("combined-models demo: three simulated providers on loopback, one daemon, no keys", "1")
            )
            say(render_models(models))
            model = models.models[0].id if models.models else "gpt-4.1"

            step(1, f"all healthy: `{model}` is served by the first provider in priority order")
            r1 = await ask(client, model, "What is a combined model?")
            await trio.sleep(pause)

            step(
                2,
                f"openai answers 429 with retry-after: {cooldown}: the same request continues on openrouter",
            )
            sims["openai"].push_fault(
                Fault(kind="status", status=429, headers={"retry-after": str(cooldown)})
            )
            r2 = await ask(client, model, "What is a combined model?")
            say(render_status(await client.status()))
            await trio.sleep(pause)

            step(3, "while openai cools down, requests go straight to openrouter (openai sees none of them)")
            before = sims["openai"].statistics().chat_requests
            r3 = await ask(client, model, "And again?")
            say(
                paint(
                    f"   requests openai received meanwhile: {sims['openai'].statistics().chat_requests - before}",
                    "2",
                )
            )
            await trio.sleep(pause)

            step(4, "openrouter's connection breaks mid-answer: backup finishes it, seamlessly")
            sims["openrouter"].push_fault(Fault(kind="reset_after", after_chunks=12))
            r4 = await ask(client, model, "Once more, please.")
            await trio.sleep(pause)

            step(5, f"{cooldown}s later the cooldown is over: traffic goes back to openai")
            status = await client.status()
            wait = max((p.cooldown_remaining_s for p in status.providers), default=0.0)
            wait = max(wait, *(m.cooldown_remaining_s for p in status.providers for m in p.models), 0.0)
            await trio.sleep(wait + 0.1)
            r5 = await ask(client, model, "Last one.")

            step(6, "provider health (`cmctl status`)")
            say(render_status(await client.status()))
            served = [r.provider if isinstance(r, DoneEvent) else None for r in (r1, r2, r3, r4, r5)]
            ok = served == ["openai", "openrouter", "openrouter", "backup", "openai"]
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
