"""Token counts for a model name: the first member whose provider can count gives the number.

A count is free and runs no inference, so nothing here touches health, slots or the
failover engine: members are asked in chain order, skipping those whose API has no count
endpoint, whose provider is off, or which are cooling down (a rate-limited provider may
limit counts too, and the caller has a local estimate to fall back on). The first real
count wins; when none comes, the result says what each member said, never a made-up number.
"""

from __future__ import annotations

import logging
from typing import Literal

import trio

from ..chat import ChatRequest
from .errors import UpstreamError
from .facade import CountResult
from .registry import Registry, UnknownModel

log = logging.getLogger("combined_models.daemon")

Outcome = Literal["unsupported", "failed", "cooling"]
COUNT_DEADLINE = 25.0  # seconds for the whole chain (each member has its own, shorter, limit)


async def count_tokens(registry: Registry, model: str, request: ChatRequest) -> CountResult:
    """Ask the members of `model` in turn for their count of `request`'s input tokens."""
    try:
        chain = registry.resolve(model)
    except UnknownModel as e:
        return CountResult("unknown_model", message=str(e))
    tried: list[str] = []
    asked = False  # some member was asked and failed
    cooling_until: float | None = None
    deadline = trio.current_time() + COUNT_DEADLINE
    for member in chain:
        name = f"{member.provider}/{member.model}"
        actor = registry.actors.get(member.provider)
        if actor is None:
            tried.append(f"{name}: no such provider")
            continue
        if not actor.counts_tokens:
            tried.append(f"{name}: the {actor.provider.api} API has no token count")
            continue
        now = trio.current_time()
        view = actor.view(member.model, now)
        if view.disabled is not None:
            tried.append(f"{name}: disabled ({view.disabled})")
            continue
        if view.admission.decision == "wait":
            tried.append(f"{name}: cooling down ({view.admission.state.value})")
            until = view.admission.until
            cooling_until = until if cooling_until is None else min(cooling_until, until)
            continue
        if now >= deadline:
            tried.append(f"{name}: not asked, no time left")
            continue
        asked = True
        try:
            with trio.move_on_at(deadline):
                tokens = await actor.count_tokens(request, member.model)
                return CountResult(
                    "counted", input_tokens=tokens, member=name, tried=(*tried, f"{name}: counted")
                )
            tried.append(f"{name}: no time left")
        except UpstreamError as e:
            tried.append(f"{name}: {e.kind.value}: {e.message}")
    outcome: Outcome = "failed" if asked else "cooling" if cooling_until is not None else "unsupported"
    retry = None if cooling_until is None else max(0.0, cooling_until - trio.current_time())
    if outcome == "unsupported":
        head = f"no member of {model!r} can count tokens"
    elif outcome == "cooling":
        head = f"the members of {model!r} that can count tokens are cooling down"
    else:
        head = f"no member of {model!r} gave a token count"
        log.info("%s: %s", head, "; ".join(tried))
    return CountResult(outcome, message=f"{head} ({'; '.join(tried)})", tried=tuple(tried), retry_after=retry)
