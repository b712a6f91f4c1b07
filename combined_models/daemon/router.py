"""The router: the one loop that does I/O for a request, on the failover engine's word.

It asks the engine (`engine.Failover`) what to do, sleeps when told to wait, takes
the member's admission and runs the attempt on its provider actor, relays what
streams to the caller, and reports the outcome back. Every decision is the engine's.
"""

from __future__ import annotations

import trio

from ..chat import ChatRequest, DecodedItem, ErrorEvent, ErrorKind
from ..config import FailoverConfig
from .affinity import Affinity, continues, conversation_key
from .engine import Failover, Retry, Stop, Try, Wait
from .errors import UpstreamError
from .facade import Send
from .registry import Registry, UnknownModel


class Router:
    def __init__(self, registry: Registry, policy: FailoverConfig) -> None:
        self.registry = registry
        self.policy = policy
        self.affinity = Affinity(policy.affinity_ttl)

    async def chat(self, model: str, request: ChatRequest, send: Send) -> None:
        """Serve one request through its chain; always ends with a `done` or an `error` event."""
        try:
            chain = self.registry.resolve(model)
        except UnknownModel as e:
            await send([ErrorEvent(kind=ErrorKind.UNKNOWN_MODEL, message=str(e))])
            return
        conversation = conversation_key(model, request)
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
            elif await self._attempt(run, step, now, send):
                self.affinity.served(
                    conversation, (step.member.provider, step.member.model), trio.current_time()
                )
                return

    async def _attempt(self, run: Failover, step: Try, now: float, send: Send) -> bool:
        """One attempt on the member the engine chose; True when the answer is complete."""
        member, relay = step.member, step.relay
        actor = self.registry.actors[member.provider]
        probe = False
        if step.admit:  # no checkpoint since the engine looked: the admission is the one it saw
            admission = actor.admit(member.model, now)
            assert admission.decision != "wait", admission
            probe = admission.decision == "probe"
        if step.announce:
            await send(step.announce)

        async def on_items(items: list[DecodedItem]) -> None:
            events = relay.feed(items)
            if events:
                await send(events)

        try:
            finished = await actor.attempt(step.request, member.model, on_items, probe=probe)
        except UpstreamError as e:
            outcome = run.failed(e, trio.current_time())
            if isinstance(outcome, Retry) and outcome.no_prefill:
                actor.prefill_rejected(member.model)
            return False
        done = run.succeeded(finished)
        if done.saved_failover:
            actor.saved_failover()
        await send(done.events)
        return True
