"""The pure health state machine: ready → cooldown | down → probing → ready.

Every function takes the state and `now` (trio's clock, seconds) and returns a
new state; nothing here sleeps or does I/O, so every transition is testable
with a fake clock. Health is kept at two levels (see `HealthBook`): per
provider for what belongs to the account or host, per (provider, model) for
what belongs to one model, so a 429 on one model leaves the others in use.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .errors import NO_PENALTY, PROVIDER_LEVEL, Failure


class State(enum.StrEnum):
    READY = "ready"
    COOLDOWN = "cooldown"
    DOWN = "down"
    PROBING = "probing"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Policy:
    """Default cooldowns (seconds) for failures that came without a reset hint."""

    base: Mapping[Failure, float] = field(
        default_factory=lambda: {
            Failure.RATE_LIMITED: 4.0,
            Failure.OVERLOADED: 1.0,
            Failure.TRANSIENT: 1.0,
            Failure.UNREACHABLE: 2.0,
            Failure.SILENT: 2.0,
            Failure.NOT_FOUND: 600.0,
            Failure.AUTH: 3600.0,
            Failure.QUOTA_EXHAUSTED: 3600.0,
        }
    )
    cap: float = 60.0  # the longest default cooldown after repeats
    hint_cap: float = 7 * 86400.0  # the longest wait a provider's own hint may impose
    circuit_threshold: int = 3  # consecutive transient failures that open the circuit
    probe_timeout: float = 30.0  # an unanswered probe lets the next one through after this

    def cooldown(self, kind: Failure, strikes: int, hint: float | None) -> float:
        if hint is not None and hint > 0:
            return min(hint, self.hint_cap)
        base = self.base.get(kind, 1.0)
        if base >= self.cap:  # long, fixed penalties (auth, quota, not found) don't grow
            return base
        return min(base * 2.0 ** min(strikes, 16), self.cap)


DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class Breaker:
    """Health of one provider, or of one model at one provider."""

    state: State = State.READY
    until: float = 0.0  # COOLDOWN/DOWN: when sending is allowed again; PROBING: probe expiry
    strikes: int = 0  # repeated trips: each doubles the default cooldown
    transient_run: int = 0  # consecutive transient failures, toward opening the circuit
    reason: str = ""  # failure class of the last trip

    def remaining(self, now: float) -> float:
        if self.state in (State.COOLDOWN, State.DOWN, State.PROBING):
            return max(0.0, self.until - now)
        return 0.0


Decision = Literal["send", "probe", "wait"]


def admit(b: Breaker, now: float, policy: Policy = DEFAULT_POLICY) -> tuple[Breaker, Decision]:
    """May a request go now? Exactly one request probes once a cooldown is over."""
    if b.state is State.READY:
        return b, "send"
    if b.state is State.DISABLED:
        return b, "wait"
    if now < b.until:
        return b, "wait"
    return replace(b, state=State.PROBING, until=now + policy.probe_timeout), "probe"


def succeed(b: Breaker) -> Breaker:
    """A request succeeded: the memory of past trips fades by half; a probe's success ends the cooldown.

    A success while cooling (a request sent before the trip, finishing late) does not
    end the cooldown the provider asked for: only the probe decides.
    """
    if b.state in (State.DISABLED, State.COOLDOWN, State.DOWN):
        return b
    return Breaker(strikes=b.strikes // 2)


def fail(
    b: Breaker, now: float, kind: Failure, hint: float | None = None, policy: Policy = DEFAULT_POLICY
) -> Breaker:
    """A request failed with `kind`; `hint` is the provider's own wait in seconds, if it gave one."""
    if b.state is State.DISABLED:
        return b
    if kind in NO_PENALTY:
        # The provider answered: a probe has its verdict.
        return succeed(b) if b.state is State.PROBING else b
    if b.state in (State.COOLDOWN, State.DOWN) and now < b.until:
        # Requests already in flight when it tripped: not a repeat, but a later reset still counts.
        later = now + policy.cooldown(kind, max(0, b.strikes - 1), hint)
        return replace(b, until=later) if later > b.until else b
    if kind is Failure.TRANSIENT and b.state is State.READY:
        run = b.transient_run + 1
        if run < policy.circuit_threshold:
            return replace(b, transient_run=run)
    state = State.DOWN if kind in (Failure.AUTH, Failure.QUOTA_EXHAUSTED) else State.COOLDOWN
    wait = policy.cooldown(kind, b.strikes, hint)
    return Breaker(state=state, until=now + wait, strikes=b.strikes + 1, reason=kind.value)


def release(b: Breaker, now: float) -> Breaker:
    """A probe ended without a verdict (the caller went away): let the next request probe."""
    if b.state is State.PROBING:
        return replace(b, state=State.COOLDOWN, until=now)
    return b


@dataclass(frozen=True, slots=True)
class Admission:
    decision: Decision
    until: float = 0.0  # when waiting: the earliest time a request could go
    state: State = State.READY  # the blocking state, when waiting


class HealthBook:
    """One provider's health at both levels. Owned by its provider actor; transitions are pure."""

    def __init__(self, policy: Policy = DEFAULT_POLICY) -> None:
        self.policy = policy
        self.provider = Breaker()
        self.models: dict[str, Breaker] = {}

    def reset(self) -> None:
        """Forget every trip (not a disabled provider's reason): as after a restart without history."""
        if self.provider.state is not State.DISABLED:
            self.provider = Breaker()
        self.models.clear()

    def admit(self, model: str, now: float) -> Admission:
        p2, pd = admit(self.provider, now, self.policy)
        m2, md = admit(self.models.get(model, Breaker()), now, self.policy)
        if pd == "wait" or md == "wait":
            blockers = [
                (b, d)
                for b, d in ((self.provider, pd), (self.models.get(model, Breaker()), md))
                if d == "wait"
            ]
            until = max(b.until for b, _ in blockers)
            return Admission("wait", until, blockers[0][0].state)
        self.provider = p2
        self.models[model] = m2
        return Admission("probe" if "probe" in (pd, md) else "send")

    def peek(self, model: str, now: float) -> Admission:
        """Like `admit`, without taking the probe."""
        saved = (self.provider, dict(self.models))
        try:
            return self.admit(model, now)
        finally:
            self.provider, self.models = saved

    def succeed(self, model: str) -> None:
        self.provider = succeed(self.provider)
        self.models[model] = succeed(self.models.get(model, Breaker()))

    def fail(self, model: str, now: float, kind: Failure, hint: float | None = None) -> None:
        if kind in PROVIDER_LEVEL:
            self.provider = fail(self.provider, now, kind, hint, self.policy)
            self.models[model] = release(self.models.get(model, Breaker()), now)
        else:
            self.models[model] = fail(self.models.get(model, Breaker()), now, kind, hint, self.policy)
            # The host answered, so a provider-level probe has its verdict.
            if self.provider.state is State.PROBING:
                self.provider = succeed(self.provider)

    def release(self, model: str, now: float) -> None:
        self.provider = release(self.provider, now)
        self.models[model] = release(self.models.get(model, Breaker()), now)

    def disable(self, reason: str) -> None:
        self.provider = Breaker(state=State.DISABLED, reason=reason)

    def summary(self, now: float, offered: Iterable[str]) -> tuple[State, float]:
        """The provider's state for `status`: cooling when it, or every model it offers, is cooling."""
        if self.provider.state is not State.READY:
            return self.provider.state, self.provider.remaining(now)
        offered = list(offered)
        cooling = [
            self.models[m] for m in offered if m in self.models and self.models[m].state is not State.READY
        ]
        if offered and len(cooling) == len(offered):
            states = {b.state for b in cooling}
            state = (
                State.DOWN
                if states == {State.DOWN}
                else State.PROBING
                if State.PROBING in states
                else State.COOLDOWN
            )
            return state, min(b.remaining(now) for b in cooling)
        return State.READY, 0.0

    # ------------------------------------------------------------ persistence

    def snapshot(self, now: float, wall: float) -> dict[str, Any]:
        """A JSON-able snapshot with wall-clock times, so it survives a restart."""

        def one(b: Breaker) -> dict[str, Any]:
            return {
                "state": b.state.value,
                "until_wall": wall + (b.until - now),
                "strikes": b.strikes,
                "reason": b.reason,
            }

        keep = {m: one(b) for m, b in self.models.items() if b.state is not State.READY or b.strikes}
        return {"provider": one(self.provider), "models": keep}

    def restore(self, data: Mapping[str, Any], now: float, wall: float) -> None:
        def one(d: Mapping[str, Any]) -> Breaker:
            state = State(d.get("state", "ready"))
            if state in (State.DISABLED, State.READY):
                return Breaker(strikes=int(d.get("strikes", 0)))
            if state is State.PROBING:  # a probe of the last run never came back
                state = State.COOLDOWN
            until = now + (float(d.get("until_wall", wall)) - wall)
            return Breaker(
                state=state, until=until, strikes=int(d.get("strikes", 0)), reason=str(d.get("reason", ""))
            )

        if isinstance(data.get("provider"), dict) and self.provider.state is not State.DISABLED:
            self.provider = one(data["provider"])
        for model, d in (data.get("models") or {}).items():
            if isinstance(d, dict):
                self.models[str(model)] = one(d)
