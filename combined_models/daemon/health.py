"""The pure health state machine: ready → cooldown | down → probing → ready.

Every function takes the state and `now` (trio's clock, seconds) and returns a
new state; nothing here sleeps or does I/O, so every transition is testable
with a fake clock. Health is kept at two levels (see `HealthBook`): per
provider for what belongs to the account or host, per (provider, model) for
what belongs to one model, so a 429 on one model leaves the others in use.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import msgspec

from ..limits import MAX_MODEL_ID
from .errors import NO_PENALTY, PROVIDER_LEVEL, Failure

MAX_STRIKES = 64  # far past where the default cooldown stops growing; keeps saved numbers small
# Failures of an outage (the host down, erring or overloaded): they end without notice, so their
# cooldown stays short at any length of outage, and a recovered member is probed again soon.
OUTAGE = frozenset({Failure.OVERLOADED, Failure.TRANSIENT, Failure.UNREACHABLE, Failure.SILENT})


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
    # The longest for an outage: one probe per this many seconds, so recovery is seen within
    # it plus the gap between two requests, however long the outage lasted.
    outage_cap: float = 5.0
    hint_cap: float = 7 * 86400.0  # the longest wait a provider's own hint may impose
    circuit_threshold: int = 3  # consecutive transient failures that open the circuit
    probe_timeout: float = 30.0  # an unanswered probe lets the next one through after this
    max_models: int = 4096  # per-model entries one provider keeps, a last line behind `tracked`

    def cooldown(self, kind: Failure, strikes: int, hint: float | None) -> float:
        if hint is not None and hint > 0:
            return min(hint, self.hint_cap)
        base = self.base.get(kind, 1.0)
        if base >= self.cap:  # long, fixed penalties (auth, quota, not found) don't grow
            return base
        cap = self.outage_cap if kind in OUTAGE else self.cap
        return min(base * 2.0 ** min(strikes, 16), cap)


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
    return Breaker(state=state, until=now + wait, strikes=min(b.strikes + 1, MAX_STRIKES), reason=kind.value)


def release(b: Breaker, now: float) -> Breaker:
    """A probe ended without a verdict (the caller went away): let the next request probe."""
    if b.state is State.PROBING:
        return replace(b, state=State.COOLDOWN, until=now)
    return b


def lengthen(b: Breaker, now: float, state: State, until: float, reason: str, slack: float = 0.0) -> Breaker:
    """Another daemon's fact: cooling (`state` COOLDOWN or DOWN) until `until`. Pure.

    A fact only ever lengthens: it never shortens a cooldown, never ends one, never
    touches a disabled breaker, and leaves strikes as they are (they count this
    daemon's own trips). A probe in flight stays unanswered: its success cannot end
    the cooldown (`succeed` leaves a cooling breaker be). A cooldown already running
    is lengthened only by more than `slack`: the same fact told again (after a
    reconnect) differs by its delivery time, which must not creep.
    """
    if b.state is State.DISABLED or state not in (State.COOLDOWN, State.DOWN) or not until > now:
        return b
    if b.state in (State.COOLDOWN, State.DOWN) and b.until + slack >= until:
        return b
    keep_down = b.state is State.DOWN and b.until > now
    return replace(b, state=State.DOWN if keep_down else state, until=until, reason=reason or b.reason)


@dataclass(frozen=True, slots=True)
class Admission:
    decision: Decision
    until: float = 0.0  # when waiting: the earliest time a request could go
    state: State = State.READY  # the blocking state, when waiting


def forgettable(b: Breaker) -> bool:
    """Nothing to remember: a ready breaker with no past trips and no transient run. Pure."""
    return b.state is State.READY and not b.strikes and not b.transient_run


def keep_models(
    models: Mapping[str, Breaker], tracked: Container[str], now: float, cap: int
) -> dict[str, Breaker]:
    """The per-model entries worth keeping. Pure.

    A model some member offers keeps whatever it remembers; a model no longer
    offered keeps only a cooldown still running. Past `cap`, entries with a
    running cooldown go last, and among them the ones ending latest.
    """
    kept = {m: b for m, b in models.items() if not forgettable(b) and (m in tracked or b.remaining(now) > 0)}
    if len(kept) <= cap:
        return kept
    ranked = sorted(kept.items(), key=lambda mb: (mb[1].remaining(now) > 0, mb[1].until), reverse=True)
    return dict(ranked[: max(cap, 0)])


class HealthBook:
    """One provider's health at both levels. Owned by its provider actor; transitions are pure.

    Per-model entries exist only for `tracked` models (what some member offers):
    callers may name any model, and the book must not grow with what they name.
    A request for an untracked model is still admitted through the provider's
    own health; it just leaves no per-model trace.
    """

    def __init__(self, policy: Policy = DEFAULT_POLICY, tracked: Iterable[str] = ()) -> None:
        self.policy = policy
        self.provider = Breaker()
        self.models: dict[str, Breaker] = {}
        self.tracked: frozenset[str] = frozenset(tracked)

    def track(self, models: Iterable[str], now: float) -> None:
        """The models that may have per-model health from now on; stale entries of others are dropped."""
        self.tracked = frozenset(models)
        self.models = keep_models(self.models, self.tracked, now, self.policy.max_models)

    def _store(self, model: str, b: Breaker, now: float) -> None:
        if model not in self.tracked or forgettable(b):
            self.models.pop(model, None)
            return
        if model not in self.models and len(self.models) >= self.policy.max_models:
            self.models = keep_models(self.models, self.tracked, now, self.policy.max_models - 1)
        self.models[model] = b

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
        self._store(model, m2, now)
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
        # A success never creates an entry (a fresh breaker's success is forgettable), so no `now` is needed.
        self._store(model, succeed(self.models.get(model, Breaker())), 0.0)

    def fail(self, model: str, now: float, kind: Failure, hint: float | None = None) -> None:
        if kind in PROVIDER_LEVEL:
            self.provider = fail(self.provider, now, kind, hint, self.policy)
            self._store(model, release(self.models.get(model, Breaker()), now), now)
        else:
            self._store(model, fail(self.models.get(model, Breaker()), now, kind, hint, self.policy), now)
            # The host answered, so a provider-level probe has its verdict.
            if self.provider.state is State.PROBING:
                self.provider = succeed(self.provider)

    def release(self, model: str, now: float) -> None:
        self.provider = release(self.provider, now)
        self._store(model, release(self.models.get(model, Breaker()), now), now)

    def disable(self, reason: str) -> None:
        self.provider = Breaker(state=State.DISABLED, reason=reason)

    def breaker(self, model: str) -> Breaker:
        """The per-model breaker ("": the provider's own)."""
        return self.provider if not model else self.models.get(model, Breaker())

    def apply_shared(
        self, model: str, state: State, until: float, reason: str, now: float, slack: float = 0.0
    ) -> bool:
        """Another daemon's fact for `model` ("": the whole provider); lengthens only. True if it changed."""
        if not model:
            after = lengthen(self.provider, now, state, until, reason, slack)
            changed, self.provider = after != self.provider, after
            return changed
        if model not in self.tracked:  # no member offers it here: nothing to skip
            return False
        before = self.models.get(model, Breaker())
        after = lengthen(before, now, state, until, reason, slack)
        if after == before:
            return False
        self._store(model, after, now)
        return True

    def cooling(self, now: float) -> list[tuple[str, Breaker]]:
        """Every breaker cooling at `now`, the provider's as model "" (to share again after a reconnect)."""
        both = [("", self.provider), *self.models.items()]
        return [(m, b) for m, b in both if b.state in (State.COOLDOWN, State.DOWN) and b.until > now]

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

    def snapshot(self, now: float, wall: float) -> SavedBook:
        """What survives a restart, with wall-clock times; bounded like the book itself."""

        def one(b: Breaker) -> SavedBreaker:
            timed = b.state in (State.COOLDOWN, State.DOWN, State.PROBING)
            return SavedBreaker(
                state=b.state,
                until_wall=wall + (b.until - now) if timed else 0.0,
                strikes=b.strikes,
                reason=b.reason[:MAX_REASON],
            )

        kept = keep_models(self.models, self.tracked, now, self.policy.max_models)
        models = {
            m: one(b)
            for m, b in kept.items()
            if (b.state is not State.READY or b.strikes) and len(m) <= MAX_MODEL_ID
        }
        return SavedBook(provider=one(self.provider), models=models)

    def restore(self, saved: SavedBook, now: float, wall: float) -> None:
        """Take over what an earlier run saved; a cooldown is never longer than a provider's hint may be."""

        def one(s: SavedBreaker) -> Breaker:
            if s.state in (State.DISABLED, State.READY):
                return Breaker(strikes=s.strikes)
            # A probe of the last run never came back: cooling, its end as saved.
            state = State.COOLDOWN if s.state is State.PROBING else s.state
            remaining = min(max(0.0, s.until_wall - wall), self.policy.hint_cap)
            return Breaker(state=state, until=now + remaining, strikes=s.strikes, reason=s.reason)

        if self.provider.state is not State.DISABLED:
            self.provider = one(saved.provider)
        restored = {m: one(s) for m, s in saved.models.items()}
        self.models = keep_models({**self.models, **restored}, self.tracked, now, self.policy.max_models)


# ---------------------------------------------------------------- the saved form
# Decoded with exact types and bounds: a health file is input like any other.

MAX_REASON = 256
MAX_PROVIDERS = 1024
_MAX_WALL = 1e11  # seconds since the epoch, about the year 5000: finite and far from overflow


class SavedBreaker(msgspec.Struct, kw_only=True):
    state: State = State.READY
    until_wall: Annotated[float, msgspec.Meta(ge=-_MAX_WALL, le=_MAX_WALL)] = 0.0
    strikes: Annotated[int, msgspec.Meta(ge=0, le=MAX_STRIKES)] = 0
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] = ""


class SavedBook(msgspec.Struct, kw_only=True):
    provider: SavedBreaker = msgspec.field(default_factory=SavedBreaker)
    models: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=MAX_MODEL_ID)], SavedBreaker],
        msgspec.Meta(max_length=DEFAULT_POLICY.max_models),
    ] = msgspec.field(default_factory=dict)


class HealthFile(msgspec.Struct, kw_only=True):
    """The daemon's health file: every provider's book."""

    saved_at: Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_WALL)] = 0.0
    providers: Annotated[dict[str, SavedBook], msgspec.Meta(max_length=MAX_PROVIDERS)] = msgspec.field(
        default_factory=dict
    )


_health_decoder = msgspec.json.Decoder(HealthFile)


def decode_health_file(data: bytes) -> HealthFile:
    """Raises msgspec.ValidationError / DecodeError on anything but a well-formed, bounded file."""
    return _health_decoder.decode(data)
