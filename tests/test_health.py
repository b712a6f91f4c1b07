"""The pure health state machine, driven with explicit `now` values (and once with trio's MockClock)."""

from __future__ import annotations

from dataclasses import replace

import msgspec
import pytest
import trio
import trio.testing

from combined_models.daemon.errors import Failure
from combined_models.daemon.health import (
    DEFAULT_POLICY,
    MAX_STRIKES,
    Breaker,
    HealthBook,
    HealthFile,
    Policy,
    SavedBook,
    SavedBreaker,
    State,
    admit,
    decode_health_file,
    fail,
    keep_models,
    release,
    succeed,
)

P = DEFAULT_POLICY
T0 = 1000.0
OFFERED = [
    "a",
    "b",
    "c",
    "m",
    "claude",
    "gpt",
    "other",
    "plain",
    "hit",
    "healed",
]  # models with per-model health


# ---------------------------------------------------------------- Breaker transitions


def test_ready_sends() -> None:
    b = Breaker()
    assert admit(b, T0) == (b, "send")
    assert b.remaining(T0) == 0.0


def test_rate_limit_cools_down_for_the_hint() -> None:
    b = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=30.0)
    assert (b.state, b.until, b.strikes, b.reason) == (State.COOLDOWN, T0 + 30.0, 1, "rate_limited")
    assert b.remaining(T0 + 10) == 20.0
    assert admit(b, T0 + 29.999)[1] == "wait"


def test_hint_is_capped() -> None:
    b = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=30 * 86400.0)
    assert b.until == T0 + P.hint_cap


@pytest.mark.parametrize("hint", [None, 0.0, -3.0])
def test_no_usable_hint_uses_the_default(hint: float | None) -> None:
    b = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=hint)
    assert b.until == T0 + P.base[Failure.RATE_LIMITED]


def test_default_cooldown_doubles_on_repeats_and_is_capped() -> None:
    b, now, waits = Breaker(), T0, []
    for _ in range(8):
        b = fail(b, now, Failure.RATE_LIMITED)
        waits.append(b.until - now)
        now = b.until
        b, decision = admit(b, now)
        assert decision == "probe"
    assert waits == [4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert b.strikes == 8


def test_overload_and_transient_start_at_about_a_second() -> None:
    assert fail(Breaker(), T0, Failure.OVERLOADED).until == T0 + 1.0
    b = Breaker()
    for _ in range(P.circuit_threshold):
        b = fail(b, T0, Failure.TRANSIENT)
    assert b.until == T0 + 1.0


def test_huge_strike_counts_do_not_overflow() -> None:
    b = fail(Breaker(strikes=10_000), T0, Failure.RATE_LIMITED)
    assert b.until == T0 + P.cap
    b = fail(Breaker(strikes=10_000), T0, Failure.OVERLOADED)
    assert b.until == T0 + P.outage_cap


@pytest.mark.parametrize("kind", [Failure.OVERLOADED, Failure.TRANSIENT, Failure.UNREACHABLE, Failure.SILENT])
def test_an_outage_of_any_length_cools_a_member_for_a_few_seconds_at_most(kind: Failure) -> None:
    b, now, waits = Breaker(), T0, []
    for _ in range(30):  # a probe fails as each cooldown ends, for minutes
        for _ in range(P.circuit_threshold):
            b = fail(b, now, kind)
        waits.append(b.until - now)
        now = b.until
        b, decision = admit(b, now)
        assert decision == "probe"
    assert waits[0] in (1.0, 2.0) and max(waits) == P.outage_cap <= 5.0
    assert waits == sorted(waits)  # still growing on repeats, up to the cap


@pytest.mark.parametrize(("kind", "timer"), [(Failure.AUTH, 3600.0), (Failure.QUOTA_EXHAUSTED, 3600.0)])
def test_auth_and_quota_keep_their_long_timers(kind: Failure, timer: float) -> None:
    b = fail(Breaker(strikes=5), T0, kind)
    assert (b.state, b.until) == (State.DOWN, T0 + timer)


def test_transient_failures_open_the_circuit_only_at_the_threshold() -> None:
    b = Breaker()
    for run in range(1, P.circuit_threshold):
        b = fail(b, T0, Failure.TRANSIENT)
        assert (b.state, b.transient_run) == (State.READY, run)
        assert admit(b, T0)[1] == "send"
    b = fail(b, T0, Failure.TRANSIENT)
    assert (b.state, b.transient_run, b.strikes) == (State.COOLDOWN, 0, 1)
    assert admit(b, T0)[1] == "wait"


def test_custom_circuit_threshold() -> None:
    policy = Policy(circuit_threshold=1)
    assert fail(Breaker(), T0, Failure.TRANSIENT, policy=policy).state is State.COOLDOWN


def test_success_resets_the_transient_run() -> None:
    b = fail(fail(Breaker(), T0, Failure.TRANSIENT), T0, Failure.TRANSIENT)
    b = succeed(b)
    b = fail(fail(b, T0, Failure.TRANSIENT), T0, Failure.TRANSIENT)
    assert b.state is State.READY


def test_cooldown_admits_exactly_one_probe_once_the_time_is_up() -> None:
    b = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=10.0)
    assert admit(b, T0 + 9.9) == (b, "wait")
    b, decision = admit(b, T0 + 10.0)
    assert decision == "probe"
    assert (b.state, b.until) == (State.PROBING, T0 + 10.0 + P.probe_timeout)
    # a second, concurrent request waits for the probe's verdict
    b2, decision = admit(b, T0 + 10.5)
    assert (b2, decision) == (b, "wait")


def test_unanswered_probe_lets_the_next_one_through_after_the_probe_timeout() -> None:
    b, _ = admit(fail(Breaker(), T0, Failure.OVERLOADED), T0 + 1)
    assert admit(b, T0 + 1 + P.probe_timeout - 0.1)[1] == "wait"
    assert admit(b, T0 + 1 + P.probe_timeout)[1] == "probe"


def test_probe_success_is_ready_and_strikes_halve() -> None:
    b = Breaker()
    for i in range(4):  # four trips, each after the previous cooldown ended
        b = fail(b, T0 + 1000 * i, Failure.RATE_LIMITED)
    assert b.strikes == 4
    b, decision = admit(b, T0 + 5000)
    assert decision == "probe"
    b = succeed(b)
    assert (b.state, b.strikes, b.reason) == (State.READY, 2, "")
    assert succeed(b).strikes == 1
    assert succeed(succeed(b)).strikes == 0


def test_probe_failure_cools_again_for_longer() -> None:
    b = fail(Breaker(), T0, Failure.OVERLOADED)
    first = b.until - T0
    b, _ = admit(b, b.until)
    now = b.until - P.probe_timeout + 0.5  # the probe answered half a second later
    b = fail(b, now, Failure.OVERLOADED)
    assert b.state is State.COOLDOWN
    assert b.until - now == 2 * first


def test_a_transient_probe_failure_cools_at_once() -> None:
    """The circuit threshold is for a ready breaker; a failed probe does not get three tries."""
    b = fail(Breaker(), T0, Failure.OVERLOADED)
    b, _ = admit(b, b.until)
    b = fail(b, T0 + 2, Failure.TRANSIENT)
    assert b.state is State.COOLDOWN


def test_release_after_a_cancelled_probe_lets_the_next_request_probe() -> None:
    b = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=5.0)
    b, decision = admit(b, T0 + 5)
    assert decision == "probe"
    assert admit(b, T0 + 6)[1] == "wait"
    b = release(b, T0 + 6)
    assert b.state is State.COOLDOWN
    b, decision = admit(b, T0 + 6)
    assert decision == "probe"


def test_release_outside_probing_changes_nothing() -> None:
    for b in (Breaker(), fail(Breaker(), T0, Failure.RATE_LIMITED), Breaker(state=State.DISABLED)):
        assert release(b, T0 + 1) == b


@pytest.mark.parametrize(
    "kind", [Failure.CONTEXT_TOO_LONG, Failure.BAD_REQUEST, Failure.CONTENT_FILTER, Failure.PREFILL_REJECTED]
)
def test_no_penalty_failures_leave_a_ready_breaker_alone(kind: Failure) -> None:
    b = Breaker(strikes=3, transient_run=1)
    assert fail(b, T0, kind) is b


@pytest.mark.parametrize("kind", [Failure.CONTEXT_TOO_LONG, Failure.BAD_REQUEST])
def test_no_penalty_failure_of_a_probe_is_a_verdict_of_health(kind: Failure) -> None:
    b, _ = admit(fail(Breaker(), T0, Failure.RATE_LIMITED), T0 + 10)
    assert b.state is State.PROBING
    b = fail(b, T0 + 11, kind)
    assert b.state is State.READY


@pytest.mark.parametrize("kind", [Failure.AUTH, Failure.QUOTA_EXHAUSTED])
def test_auth_and_quota_go_down(kind: Failure) -> None:
    b = fail(Breaker(), T0, kind)
    assert (b.state, b.until, b.reason) == (State.DOWN, T0 + 3600.0, kind.value)
    assert admit(b, T0 + 3599)[1] == "wait"
    assert admit(b, T0 + 3600)[1] == "probe"
    # long fixed penalties do not grow on repeats
    assert fail(Breaker(strikes=5), T0, kind).until == T0 + 3600.0


def test_quota_with_a_named_reset() -> None:
    b = fail(Breaker(), T0, Failure.QUOTA_EXHAUSTED, hint=51 * 3600.0)
    assert (b.state, b.until) == (State.DOWN, T0 + 51 * 3600.0)


def test_not_found_drops_the_member_for_a_while() -> None:
    b = fail(Breaker(), T0, Failure.NOT_FOUND)
    assert (b.state, b.until) == (State.COOLDOWN, T0 + 600.0)


@pytest.mark.parametrize("kind", list(Failure))
def test_disabled_stays_disabled(kind: Failure) -> None:
    b = Breaker(state=State.DISABLED, reason="no API key")
    assert fail(b, T0, kind) is b
    assert succeed(b) is b
    assert release(b, T0) is b
    assert admit(b, T0 + 1e9) == (b, "wait")


# ---------------------------------------------------------------- HealthBook


def test_model_level_failure_blocks_only_that_model() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.RATE_LIMITED, hint=20.0)
    assert book.admit("a", T0 + 1) == book.admit("a", T0 + 1)  # waiting takes nothing
    adm = book.admit("a", T0 + 1)
    assert (adm.decision, adm.until, adm.state) == ("wait", T0 + 20.0, State.COOLDOWN)
    assert book.admit("b", T0 + 1).decision == "send"
    assert book.provider.state is State.READY


@pytest.mark.parametrize("kind", [Failure.AUTH, Failure.UNREACHABLE, Failure.QUOTA_EXHAUSTED])
def test_provider_level_failure_blocks_every_model(kind: Failure) -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, kind)
    for model in ("a", "b", "never-seen"):
        adm = book.admit(model, T0 + 1)
        assert adm.decision == "wait", model
        assert adm.until == book.provider.until
    assert book.models.get("a", Breaker()).state is State.READY


def test_provider_probe_is_taken_once_for_all_models() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.UNREACHABLE)
    t = book.provider.until
    assert book.admit("b", t).decision == "probe"
    assert book.admit("a", t).decision == "wait"
    book.succeed("b")
    assert book.admit("a", t).decision == "send"


def test_model_failure_during_a_provider_probe_clears_the_provider() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.UNREACHABLE)
    assert book.admit("a", book.provider.until).decision == "probe"
    book.fail("a", book.provider.until, Failure.RATE_LIMITED, hint=30.0)
    assert book.provider.state is State.READY  # the host answered
    assert book.admit("a", book.provider.until + 1).decision == "wait"
    assert book.admit("b", book.provider.until + 1).decision == "send"


def test_wait_reports_the_latest_blocker() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.RATE_LIMITED, hint=100.0)
    book.fail("a", T0, Failure.UNREACHABLE, hint=5.0)
    adm = book.admit("a", T0 + 10)
    assert (adm.decision, adm.until) == ("wait", T0 + 100.0)
    adm = book.admit("a", T0 + 1)
    assert (adm.decision, adm.until, adm.state) == ("wait", T0 + 100.0, State.COOLDOWN)


def test_a_waiting_model_does_not_take_the_provider_probe() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.RATE_LIMITED, hint=100.0)
    book.fail("b", T0, Failure.UNREACHABLE, hint=5.0)
    assert book.admit("a", T0 + 10).decision == "wait"
    assert book.provider.state is State.COOLDOWN  # not PROBING: nobody is probing it
    assert book.admit("b", T0 + 10).decision == "probe"


def test_peek_does_not_take_the_probe() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.RATE_LIMITED, hint=10.0)
    for _ in range(3):
        assert book.peek("a", T0 + 10).decision == "probe"
    assert book.models["a"].state is State.COOLDOWN
    assert "b" not in book.models
    assert book.peek("b", T0).decision == "send"
    assert "b" not in book.models
    assert book.admit("a", T0 + 10).decision == "probe"
    assert book.admit("a", T0 + 10).decision == "wait"


def test_book_release_after_cancelled_probe() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.OVERLOADED)
    assert book.admit("a", T0 + 1).decision == "probe"
    book.release("a", T0 + 2)
    assert book.admit("a", T0 + 2).decision == "probe"


def test_book_no_penalty_failure_changes_nothing() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.CONTEXT_TOO_LONG)
    book.fail("a", T0, Failure.PREFILL_REJECTED)
    assert book.admit("a", T0).decision == "send"
    assert book.summary(T0, ["a"]) == (State.READY, 0.0)


def test_disable() -> None:
    book = HealthBook(tracked=OFFERED)
    book.disable("no API key (set OPENAI_API_KEY)")
    adm = book.admit("a", T0)
    assert (adm.decision, adm.state) == ("wait", State.DISABLED)
    book.succeed("a")
    book.fail("a", T0, Failure.AUTH)
    assert book.provider.state is State.DISABLED
    assert book.summary(T0, ["a"]) == (State.DISABLED, 0.0)


def test_summary() -> None:
    book = HealthBook(tracked=OFFERED)
    assert book.summary(T0, ["a", "b"]) == (State.READY, 0.0)
    book.fail("a", T0, Failure.RATE_LIMITED, hint=30.0)
    assert book.summary(T0, ["a", "b"]) == (State.READY, 0.0)  # b is still usable
    book.fail("b", T0, Failure.RATE_LIMITED, hint=10.0)
    assert book.summary(T0 + 1, ["a", "b"]) == (State.COOLDOWN, 9.0)  # back at the earliest
    assert book.summary(T0 + 1, ["a", "b", "c"]) == (State.READY, 0.0)
    assert book.summary(T0 + 1, []) == (State.READY, 0.0)
    book.fail("a", T0 + 1, Failure.UNREACHABLE)
    assert book.summary(T0 + 1, ["a", "b"]) == (State.COOLDOWN, 2.0)


def test_summary_down_only_when_every_model_is_down() -> None:
    book = HealthBook(tracked=OFFERED)
    book.models["a"] = fail(Breaker(), T0, Failure.AUTH)
    book.models["b"] = fail(Breaker(), T0, Failure.AUTH, hint=100.0)
    assert book.summary(T0, ["a", "b"]) == (State.DOWN, 100.0)
    book.models["b"] = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=50.0)
    assert book.summary(T0, ["a", "b"])[0] is State.COOLDOWN


def test_summary_provider_probing() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.UNREACHABLE)
    book.admit("a", T0 + 2)
    assert book.summary(T0 + 2, ["a"]) == (State.PROBING, P.probe_timeout)


# ---------------------------------------------------------------- persistence


def test_snapshot_restore_across_a_restart_keeps_a_long_cooldown() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("claude", T0, Failure.RATE_LIMITED, hint=600.0)
    book.fail("gpt", T0, Failure.AUTH)
    wall = 1_750_000_000.0
    snap = decode_health_file(msgspec.json.encode(HealthFile(providers={"p": book.snapshot(T0 + 100, wall)})))
    snap_book = snap.providers["p"]

    # 50 s later, in a new process: the monotonic clock restarted near zero.
    new_now, new_wall = 3.0, wall + 50
    fresh = HealthBook(tracked=OFFERED)
    fresh.restore(snap_book, new_now, new_wall)
    m = fresh.models["claude"]
    assert (m.state, m.strikes, m.reason) == (State.COOLDOWN, 1, "rate_limited")
    assert m.remaining(new_now) == pytest.approx(600 - 100 - 50)
    assert fresh.admit("claude", new_now + 449).decision == "wait"
    assert fresh.admit("claude", new_now + 450).decision == "wait"  # the provider is down (auth)
    assert fresh.provider.state is State.DOWN
    assert fresh.provider.remaining(new_now) == pytest.approx(3600 - 150)
    fresh.provider = Breaker()  # say the credentials changed
    assert fresh.admit("claude", new_now + 450).decision == "probe"
    assert fresh.admit("other", new_now).decision == "send"


def test_restore_of_an_expired_cooldown_probes_at_once() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.RATE_LIMITED, hint=10.0)
    snap = book.snapshot(T0, 5000.0)
    fresh = HealthBook(tracked=OFFERED)
    fresh.restore(snap, 7.0, 5000.0 + 3600)
    assert fresh.admit("a", 7.0).decision == "probe"


def test_snapshot_keeps_only_models_with_something_to_remember() -> None:
    book = HealthBook(tracked=OFFERED)
    book.admit("plain", T0)
    book.fail("hit", T0, Failure.RATE_LIMITED)
    book.models["healed"] = Breaker(strikes=2)
    snap = book.snapshot(T0, 0.0)
    assert set(snap.models) == {"hit", "healed"}
    fresh = HealthBook(tracked=OFFERED)
    fresh.restore(snap, 0.0, 0.0)
    assert fresh.models["healed"] == Breaker(strikes=2)


def test_restore_turns_an_unanswered_probe_into_a_cooldown() -> None:
    book = HealthBook(tracked=OFFERED)
    book.fail("a", T0, Failure.OVERLOADED)
    book.admit("a", T0 + 1)
    assert book.models["a"].state is State.PROBING
    fresh = HealthBook(tracked=OFFERED)
    fresh.restore(book.snapshot(T0 + 1, 100.0), 0.0, 100.0)
    assert fresh.models["a"].state is State.COOLDOWN


def test_restore_does_not_carry_disabled_and_keeps_a_current_disable() -> None:
    old = HealthBook(tracked=OFFERED)
    old.disable("no key")
    fresh = HealthBook(tracked=OFFERED)
    fresh.restore(old.snapshot(T0, 0.0), 0.0, 0.0)
    assert fresh.provider.state is State.READY  # the key may be there now

    down = HealthBook(tracked=OFFERED)
    down.fail("a", T0, Failure.AUTH)
    disabled = HealthBook(tracked=OFFERED)
    disabled.disable("disabled in the config")
    disabled.restore(down.snapshot(T0, 0.0), 0.0, 0.0)
    assert disabled.provider.state is State.DISABLED


# ---------------------------------------------------------------- on trio's clock


async def test_full_cycle_on_trio_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    book = HealthBook(tracked=OFFERED)
    start = trio.current_time()
    assert book.admit("m", start).decision == "send"
    book.fail("m", trio.current_time(), Failure.RATE_LIMITED, hint=30.0)
    assert book.summary(trio.current_time(), ["m"]) == (State.COOLDOWN, 30.0)

    await trio.sleep(29.5)
    adm = book.admit("m", trio.current_time())
    assert adm.decision == "wait"
    await trio.sleep_until(adm.until)
    assert trio.current_time() - start == pytest.approx(30.0)

    assert book.admit("m", trio.current_time()).decision == "probe"
    assert book.admit("m", trio.current_time()).decision == "wait"
    # while every model it offers is cooling or probing, the provider shows as probing
    assert book.summary(trio.current_time(), ["m"])[0] is State.PROBING
    assert book.models["m"].state is State.PROBING
    await trio.sleep(1.0)
    book.succeed("m")
    assert book.admit("m", trio.current_time()).decision == "send"
    assert book.summary(trio.current_time(), ["m"]) == (State.READY, 0.0)
    assert "m" not in book.models  # healed, with nothing left to remember


# ---------------------------------------------------------------- requests in flight when a cooldown starts


def test_failures_of_requests_already_in_flight_are_not_repeats() -> None:
    """Five concurrent 429s from one burst are one trip, not five: the cooldown stays short."""
    b = Breaker()
    for _ in range(5):
        b = fail(b, T0, Failure.RATE_LIMITED)
    assert (b.strikes, b.until) == (1, T0 + P.base[Failure.RATE_LIMITED])


def test_a_later_hint_from_a_request_in_flight_extends_the_cooldown() -> None:
    b = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=5.0)
    b = fail(b, T0 + 1, Failure.RATE_LIMITED, hint=30.0)
    assert (b.strikes, b.until) == (1, T0 + 31)
    assert fail(b, T0 + 2, Failure.RATE_LIMITED, hint=1.0).until == T0 + 31  # never shortened


def test_success_of_a_request_in_flight_does_not_end_a_cooldown() -> None:
    """A request sent before a 429 that succeeds afterwards leaves the provider's 600 s in force."""
    b = fail(Breaker(), T0, Failure.RATE_LIMITED, hint=600.0)
    assert succeed(b) == b
    assert fail(b, T0 + 1, Failure.CONTEXT_TOO_LONG) == b
    probe, decision = admit(b, T0 + 600)
    assert decision == "probe" and succeed(probe).state is State.READY


# ---------------------------------------------------------------- bounded per-model health


def test_an_untracked_model_leaves_no_trace_but_provider_health_applies() -> None:
    book = HealthBook(tracked=["a"])
    for n in range(100):
        assert book.admit(f"unknown-{n}", T0).decision == "send"
        book.fail(f"unknown-{n}", T0, Failure.RATE_LIMITED, hint=30.0)
        book.succeed(f"unknown-{n}")
    assert book.models == {}
    book.fail("unknown-x", T0, Failure.UNREACHABLE)  # a provider-level failure still counts
    assert book.admit("unknown-y", T0 + 1).decision == "wait"
    assert book.admit("a", T0 + 1).decision == "wait"
    assert book.models == {}


def test_ready_entries_with_nothing_to_remember_are_not_stored() -> None:
    book = HealthBook(tracked=["a"])
    book.admit("a", T0)
    book.succeed("a")
    book.release("a", T0)
    assert book.models == {}
    book.fail("a", T0, Failure.TRANSIENT)  # one transient failure: a run toward the circuit is memory
    assert book.models["a"].transient_run == 1


RUNNING = Breaker(state=State.COOLDOWN, until=T0 + 10, strikes=1, reason="rate_limited")
EXPIRED = Breaker(state=State.COOLDOWN, until=T0 - 10, strikes=1, reason="rate_limited")
HEALED = Breaker(strikes=2)


@pytest.mark.parametrize(
    ("model", "breaker", "kept"),
    [
        ("offered", RUNNING, True),
        ("offered", EXPIRED, True),  # its strikes still matter for the next trip
        ("offered", HEALED, True),
        ("offered", Breaker(), False),
        ("gone", RUNNING, True),  # no longer offered, but still cooling: not sent to
        ("gone", EXPIRED, False),
        ("gone", HEALED, False),
        ("gone", Breaker(state=State.PROBING, until=T0 + 5), True),
    ],
)
def test_keep_models(model: str, breaker: Breaker, kept: bool) -> None:
    assert (model in keep_models({model: breaker}, {"offered"}, T0, cap=10)) is kept


def test_keep_models_over_the_cap_drops_expired_first_then_the_earliest_ending() -> None:
    models = {
        "healed": HEALED,
        "expired": EXPIRED,
        "soon": replace(RUNNING, until=T0 + 1),
        "late": replace(RUNNING, until=T0 + 100),
        "later": replace(RUNNING, until=T0 + 200),
    }
    assert set(keep_models(models, set(models), T0, cap=3)) == {"soon", "late", "later"}
    assert set(keep_models(models, set(models), T0, cap=1)) == {"later"}
    assert keep_models(models, set(models), T0, cap=0) == {}


def test_the_book_stays_under_its_cap() -> None:
    names = [f"m{n}" for n in range(50)]
    book = HealthBook(Policy(max_models=8), tracked=names)
    for n, name in enumerate(names):
        book.fail(name, T0 + n, Failure.RATE_LIMITED, hint=1000.0)
        assert len(book.models) <= 8
    assert "m49" in book.models  # the newest trip is always remembered


def test_track_prunes_what_is_no_longer_offered() -> None:
    book = HealthBook(tracked=["a", "b", "c"])
    book.fail("a", T0, Failure.RATE_LIMITED, hint=100.0)
    book.fail("b", T0, Failure.RATE_LIMITED, hint=5.0)
    book.fail("c", T0, Failure.RATE_LIMITED, hint=5.0)
    book.track(["c"], T0 + 10)
    assert set(book.models) == {"a", "c"}  # b expired and is gone; a still cools
    book.track([], T0 + 200)
    assert book.models == {}


def test_strikes_stop_growing() -> None:
    b = Breaker()
    for n in range(200):
        b = fail(b, T0 + n * 100, Failure.RATE_LIMITED)
    assert b.strikes == MAX_STRIKES


def test_restore_caps_a_cooldown_at_the_longest_hint() -> None:
    saved = SavedBook(
        models={"a": SavedBreaker(state=State.COOLDOWN, until_wall=1e10, strikes=1, reason="rate_limited")}
    )
    book = HealthBook(tracked=["a"])
    book.restore(saved, 5.0, 1000.0)
    assert book.models["a"].remaining(5.0) == P.hint_cap


def test_restore_keeps_only_what_the_book_would_keep() -> None:
    saved = SavedBook(
        models={
            "gone": SavedBreaker(state=State.COOLDOWN, until_wall=900.0, strikes=3),  # expired, not offered
            "a": SavedBreaker(strikes=1),
        }
    )
    book = HealthBook(tracked=["a"])
    book.restore(saved, 0.0, 1000.0)
    assert set(book.models) == {"a"}


def test_snapshot_of_a_full_book_decodes() -> None:
    names = [f"m{n}" for n in range(P.max_models + 10)]
    book = HealthBook(tracked=names)
    book.models = {m: RUNNING for m in names}  # as if the cap had been bypassed
    data = msgspec.json.encode(HealthFile(providers={"p": book.snapshot(T0, 1e9)}))
    assert len(decode_health_file(data).providers["p"].models) == P.max_models


BAD_HEALTH = [
    b"",
    b"\xff\xfe\x00",
    b"[]",
    b'{"providers": []}',
    b'{"providers": {"p": {"models": {"a": {"strikes": 65}}}}}',
    b'{"providers": {"p": {"models": {"a": {"strikes": -1}}}}}',
    b'{"providers": {"p": {"models": {"a": {"strikes": 1.5}}}}}',
    b'{"providers": {"p": {"models": {"a": {"strikes": ' + b"9" * 400 + b"}}}}}",
    b'{"providers": {"p": {"models": {"a": {"until_wall": 1e308}}}}}',
    b'{"providers": {"p": {"models": {"a": {"until_wall": 1e400}}}}}',
    b'{"providers": {"p": {"models": {"a": {"until_wall": Infinity}}}}}',
    b'{"providers": {"p": {"models": {"a": {"until_wall": NaN}}}}}',
    b'{"providers": {"p": {"models": {"a": {"state": "exploded"}}}}}',
    b'{"providers": {"p": {"provider": {"reason": "' + b"x" * 300 + b'"}}}}',
    b'{"saved_at": "yesterday"}',
    b"[" * 100_000,
]


@pytest.mark.parametrize("data", BAD_HEALTH, ids=lambda d: repr(d[:40]))
def test_decode_health_file_refuses_bad_contents(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):  # ValidationError is a DecodeError
        decode_health_file(data)
