"""The router: the one loop that does I/O for a request, on the failover engine's word.

It asks the engine (`engine.Failover`) what to do, sleeps when told to wait, takes
the member's admission and runs the attempt on its provider actor, relays what
streams to the caller, and reports the outcome back. Every decision is the engine's.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import trio

from ..chat import (
    ChatRequest,
    DecodedItem,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FailoverEvent,
    StreamEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from ..config import FailoverConfig
from .affinity import Affinity, continues, conversation_key
from .engine import Failover, Retry, Stop, Try, Wait
from .errors import UpstreamError
from .facade import Send
from .metrics import Metrics
from .registry import Registry, UnknownModel

log = logging.getLogger("combined_models.requests")
CONTENT = (TextEvent, ThinkingEvent, ToolCallEvent)


@dataclass
class Trace:
    """What one request's log line says: noted from what the caller is sent and what was tried."""

    id: int
    model: str
    start: float
    tried: list[str] = field(default_factory=list)
    outcome: str | None = None
    served_by: str | None = None
    first_content: float | None = None
    failed_at: float | None = None  # when the last attempt failed
    failover_from: float | None = None  # a failover was announced: its failure's time, until content comes
    failover_latencies: list[float] = field(default_factory=list)

    def saw(self, events: list[StreamEvent]) -> None:
        for e in events:
            if isinstance(e, CONTENT):
                now = trio.current_time()
                if self.first_content is None:
                    self.first_content = now
                if self.failover_from is not None:
                    self.failover_latencies.append(now - self.failover_from)
                    self.failover_from = None
            elif isinstance(e, FailoverEvent):
                if self.failover_from is None:
                    self.failover_from = self.failed_at
            elif isinstance(e, DoneEvent):
                self.outcome, self.served_by = "done", e.provider
            elif isinstance(e, ErrorEvent):
                self.outcome = e.kind.value

    def event(self, end: float) -> dict[str, object]:
        ttft = None if self.first_content is None else round((self.first_content - self.start) * 1000, 1)
        return {
            "event": "request",
            "request": self.id,
            "model": self.model,
            "tried": list(self.tried),
            "outcome": self.outcome,
            "served_by": self.served_by,
            "ttft_ms": ttft,
            "total_ms": round((end - self.start) * 1000, 1),
        }


class Router:
    def __init__(self, registry: Registry, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics if metrics is not None else Metrics(registry)
        self.affinity = Affinity(self.policy.affinity_ttl)
        self._ids = itertools.count(1)

    @property
    def policy(self) -> FailoverConfig:
        """The `[failover]` settings as they are now: a config reload may change them between requests."""
        return self.registry.cfg.failover

    async def chat(self, model: str, request: ChatRequest, send: Send) -> None:
        """Serve one request through its chain; always ends with a `done` or an `error` event.

        Logs exactly one request line, however it ends (cancelled by a caller gone away too).
        """
        trace = Trace(id=next(self._ids), model=model, start=trio.current_time())

        async def noted(events: list[StreamEvent]) -> None:
            trace.saw(events)
            await send(events)

        try:
            await self._serve(model, request, noted, trace)
        except BaseException as e:
            if trace.outcome is None:
                trace.outcome = "cancelled" if isinstance(e, trio.Cancelled) else "aborted"
            raise
        finally:
            event = trace.event(trio.current_time())
            log.info("request %s %s", event["outcome"], model, extra={"event": event})
            ttft = None if trace.first_content is None else trace.first_content - trace.start
            self.metrics.request(model, trace.outcome or "aborted", ttft, trace.failover_latencies)

    async def _serve(self, model: str, request: ChatRequest, send: Send, trace: Trace) -> None:
        try:
            chain = self.registry.resolve(model)
        except UnknownModel as e:
            await send([ErrorEvent(kind=ErrorKind.UNKNOWN_MODEL, message=str(e))])
            return
        conversation = conversation_key(model, request)
        self.affinity.ttl = self.policy.affinity_ttl  # as the config says now
        pinned = self.affinity.pinned(conversation, trio.current_time()) if continues(request) else None
        run = Failover(chain, request, self.policy, pinned=pinned)
        while True:
            now = trio.current_time()
            step = run.next_step(now, self.registry.looking_at(now))
            if isinstance(step, Wait):
                await trio.sleep_until(step.until)
            elif isinstance(step, Stop):
                await send(step.events)
                return
            elif await self._attempt(run, step, now, send, trace):
                self.affinity.served(
                    conversation, (step.member.provider, step.member.model), trio.current_time()
                )
                return

    async def _attempt(self, run: Failover, step: Try, now: float, send: Send, trace: Trace) -> bool:
        """One attempt on the member the engine chose; True when the answer is complete."""
        member, relay = step.member, step.relay
        if (name := f"{member.provider}/{member.model}") not in trace.tried:
            trace.tried.append(name)
        actor = self.registry.actors[member.provider]
        probe = False
        if step.admit:  # no checkpoint since the engine looked: the admission is the one it saw
            admission = actor.admit(member.model, now)
            assert admission.decision != "wait", admission
            probe = admission.decision == "probe"
        if step.announce:
            for e in step.announce:
                if isinstance(e, FailoverEvent):
                    fields = {"from": e.from_, "to": e.to, "reason": e.reason, "after_output": e.after_output}
                    self.metrics.failover(e.from_, e.to, e.reason, e.after_output)
                    log.info(
                        "failover %s -> %s",
                        e.from_,
                        e.to,
                        extra={"event": {"event": "failover", "request": trace.id, **fields}},
                    )
            await send(step.announce)

        async def on_items(items: list[DecodedItem]) -> None:
            events = relay.feed(items)
            if events:
                await send(events)

        try:
            finished = await actor.attempt(step.request, member.model, on_items, probe=probe)
        except UpstreamError as e:
            trace.failed_at = trio.current_time()
            self.metrics.attempt(member.provider, member.model, e.kind.value)
            outcome = run.failed(e, trace.failed_at)
            if isinstance(outcome, Retry) and outcome.no_prefill:
                actor.prefill_rejected(member.model)
            return False
        self.metrics.attempt(member.provider, member.model, "ok", finished.usage)
        done = run.succeeded(finished)
        if done.saved_failover:
            actor.saved_failover()
        await send(done.events)
        return True
