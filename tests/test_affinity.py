"""Session affinity: the pure table of conversations, the engine's use of a pin, and a conversation over sockets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from combined_models.capabilities import Capabilities
from combined_models.chat import ChatRequest, DoneEvent, Message, StreamEvent, TextEvent, Tool
from combined_models.config import FailoverConfig
from combined_models.daemon.affinity import Affinity, continues, conversation_key
from combined_models.daemon.engine import Failover, MemberView, Try
from combined_models.daemon.gateway.anthropic import parse_messages_request
from combined_models.daemon.gateway.common import BadRequest
from combined_models.daemon.health import Admission, State
from combined_models.protocol import Member
from combined_models.simulator import Fault

from .conftest import ANSWER, MODEL, open_stack

NOW = 1000.0


# ---------------------------------------------------------------- the table


def test_a_pin_lasts_ttl_seconds_since_the_last_turn() -> None:
    table = Affinity(ttl=300)
    table.served("c1", ("b", "m"), NOW)
    assert table.pinned("c1", NOW + 299) == ("b", "m")
    table.served("c1", ("b", "m"), NOW + 299)  # each turn renews it
    assert table.pinned("c1", NOW + 500) == ("b", "m")
    assert table.pinned("c1", NOW + 600) is None  # 301 s after the last turn
    assert table.pinned("other", NOW) is None


def test_the_table_is_bounded_and_forgets_the_least_recent_first() -> None:
    table = Affinity(ttl=300, max_conversations=3)
    for i in range(5):
        table.served(f"c{i}", ("a", "m"), NOW + i)
    assert [table.pinned(f"c{i}", NOW + 5) for i in range(5)] == [
        None,
        None,
        ("a", "m"),
        ("a", "m"),
        ("a", "m"),
    ]


def test_counts_per_provider_skip_expired_conversations() -> None:
    table = Affinity(ttl=10)
    table.served("old", ("a", "m"), NOW)
    table.served("x", ("b", "m"), NOW + 8)
    table.served("y", ("b", "m"), NOW + 9)
    assert table.per_provider(NOW + 12) == {"b": 2}


def test_affinity_off_keeps_nothing() -> None:
    table = Affinity(ttl=0)
    table.served("c", ("a", "m"), NOW)
    assert table.pinned("c", NOW) is None and not table.per_provider(NOW)


def test_the_conversation_key_is_the_session_or_the_opening() -> None:
    turn1 = ChatRequest(system="be brief", messages=[Message("user", "plan a trip")])
    turn3 = ChatRequest(
        system="be brief",
        messages=[Message("user", "plan a trip"), Message("assistant", "Where?"), Message("user", "Rome")],
    )
    other = ChatRequest(system="be brief", messages=[Message("user", "fix my code")])
    assert conversation_key("m", turn1) == conversation_key("m", turn3) != conversation_key("m", other)
    assert conversation_key("m", turn1) != conversation_key("n", turn1)  # per model name
    named = ChatRequest(messages=[Message("user", "x")], session="s-1")
    assert conversation_key("m", named) == conversation_key("m", ChatRequest(messages=[], session="s-1"))
    assert not continues(turn1) and continues(turn3) and continues(named)


# ---------------------------------------------------------------- the engine with a pin

CHAIN = [Member(provider="a", model="m"), Member(provider="b", model="m")]
REQUEST = ChatRequest(
    messages=[Message("user", "hi"), Message("assistant", "Hello"), Message("user", "more")]
)


def view(admission: Admission, **caps: bool) -> MemberView:
    return MemberView(admission=admission, capabilities=Capabilities(**caps))


def first_try(pinned: tuple[str, str] | None, views: dict[str, MemberView]) -> str:
    run = Failover(list(CHAIN), REQUEST, FailoverConfig(), pinned=pinned)
    step = run.next_step(NOW, lambda m: views.get(m.provider))
    assert isinstance(step, Try), step
    return step.member.provider


def test_a_pinned_healthy_member_is_tried_before_the_priority_order() -> None:
    ready = view(Admission("send"))
    assert first_try(("b", "m"), {"a": ready, "b": ready}) == "b"
    assert first_try(None, {"a": ready, "b": ready}) == "a"


def test_a_pinned_member_that_is_unwell_or_unable_leaves_the_order_to_priority() -> None:
    ready = view(Admission("send"))
    for unwell in (
        view(Admission("wait", NOW + 30, State.COOLDOWN)),
        view(Admission("probe")),  # recovering: a new conversation probes it, not a pinned one
        view(Admission("wait", 0, State.DISABLED)),
    ):
        assert first_try(("b", "m"), {"a": ready, "b": unwell}) == "a"
    assert first_try(("c", "m"), {"a": ready, "b": ready}) == "a"  # a member no longer in the chain
    with_tools = ChatRequest(messages=REQUEST.messages, tools=[Tool(name="t")])
    run = Failover(list(CHAIN), with_tools, FailoverConfig(), pinned=("b", "m"))
    views = {"a": ready, "b": view(Admission("send"), tools=False)}
    step = run.next_step(NOW, lambda m: views.get(m.provider))
    assert isinstance(step, Try) and step.member.provider == "a"  # it cannot serve this turn


# ---------------------------------------------------------------- a conversation over the socket


async def test_a_conversation_stays_where_it_moved_while_new_ones_follow_the_priority(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    """20 turns a second apart; the first provider rate-limits at turn 5 and is back by turn 8.

    The conversation stays on the second provider (its cache is warm there) until the
    affinity time has passed since its last turn; a new conversation at turn 10 goes first.
    """
    async with open_stack(short_dir, failover={"affinity_ttl": 60.0}) as st:
        messages: list[Message] = []
        served: list[str] = []

        async def turn(history: list[Message], text: str) -> str:
            history.append(Message("user", text))
            async with st.client() as c:
                events: list[StreamEvent] = [
                    e async for e in c.chat(MODEL, ChatRequest(messages=list(history)))
                ]
            done = events[-1]
            assert isinstance(done, DoneEvent), done
            history.append(Message("assistant", "".join(e.text for e in events if isinstance(e, TextEvent))))
            return done.provider

        for n in range(1, 21):
            if n == 5:
                st.sims["first"].push_fault(Fault(kind="status", status=429, headers={"retry-after": "2"}))
            served.append(await turn(messages, f"turn {n}"))
            if n == 10:
                assert await turn([], "a new conversation") == "first"
            clock.jump(1)
        assert served == ["first"] * 4 + ["second"] * 16
        assert messages[-1].content == ANSWER
        async with st.client() as c:
            status = {p.id: p for p in (await c.status()).providers}
        assert (status["first"].pinned, status["second"].pinned) == (1, 1)
        clock.jump(61)  # the affinity time has passed since the last turn
        assert await turn(messages, "after a break") == "first"


# ---------------------------------------------------------------- how the front door names a conversation


def test_claude_codes_system_turns_join_the_system_prompt_and_its_user_id_names_the_session() -> None:
    """Claude Code sends `role: system` turns for model names it does not know as Claude's."""
    body = {
        "model": "my-combined-model",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "You are a coding agent."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "say hi"}]},
            {"role": "system", "content": "Available agent types: ..."},
        ],
        "metadata": {"user_id": "user_abc_account__session_1234"},
    }
    parsed = parse_messages_request(json.dumps(body).encode())
    assert parsed.request.system == "You are a coding agent.\n\nAvailable agent types: ..."
    assert [m.role for m in parsed.request.messages] == ["user"]
    assert parsed.request.session == "user_abc_account__session_1234"
    only_system = {**body, "messages": [{"role": "system", "content": "x"}]}
    with pytest.raises(BadRequest):
        parse_messages_request(json.dumps(only_system).encode())


async def test_the_session_header_names_the_conversation_at_the_front_door(
    short_dir: Path, clock: trio.testing.MockClock
) -> None:
    async with open_stack(short_dir, extra='[http]\nlisten = "127.0.0.1:0"\n') as st:
        gw = st.server.gateway
        assert gw is not None
        headers = {"authorization": f"Bearer {gw.token}", "x-claude-code-session-id": "cc-session-1"}
        body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=f"http://{gw.address}", trust_env=False, timeout=10) as http:
            r = await http.post("/v1/messages", json=body, headers=headers)
            assert r.status_code == 200
            st.sims["first"].push_fault(Fault(kind="status", status=503))
            # Another first message, but the same session: it continues the conversation.
            r = await http.post("/v1/messages", json=body, headers=headers)
            assert r.headers["x-combined-models-provider"] == "second"
            clock.jump(10)  # the first provider's cooldown is over
            r = await http.post("/v1/messages", json=body, headers=headers)
            assert r.headers["x-combined-models-provider"] == "second"  # the move stuck
            r = await http.post(
                "/v1/messages", json=body, headers={"authorization": headers["authorization"]}
            )
            assert r.headers["x-combined-models-provider"] == "first"  # no session, a first message: new
