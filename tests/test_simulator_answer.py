"""The simulator's pure parts: answer planning, the fault queue, the OpenAI dialect codec."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from combined_models.simulator import Fault
from combined_models.simulator.answer import (
    TOOL_ARGUMENTS,
    Answer,
    ChatRequest,
    Message,
    Role,
    TextPiece,
    ToolCallArgs,
    ToolCallStart,
    plan_answer,
    split_pieces,
)
from combined_models.simulator.dialects import BadRequest, Route, get_dialect
from combined_models.simulator.faults import FaultQueue

TEXT = "The quick brown fox jumps."


def req(
    *messages: tuple[Role, str], tools: tuple[str, ...] = (), max_tokens: int | None = None
) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=tuple(Message(role, text) for role, text in messages),
        tool_names=tools,
        max_tokens=max_tokens,
    )


def texts(answer: Answer) -> list[str]:
    return [p.text for p in answer.pieces if isinstance(p, TextPiece)]


# split_pieces


def test_split_pieces_word_then_space_word() -> None:
    assert split_pieces("The quick brown") == ["The", " quick", " brown"]


def test_split_pieces_mid_word_remainder_sends_fragment_first() -> None:
    assert split_pieces("own fox.") == ["own", " fox."]
    assert split_pieces(" fox") == [" fox"]


@given(st.text(alphabet=st.sampled_from("ab \n\t.")))
def test_split_pieces_round_trip(s: str) -> None:
    pieces = split_pieces(s)
    assert "".join(pieces) == s
    assert all(len(p.split()) <= 1 for p in pieces)  # never two words in one piece


# plan_answer


def test_plain_answer_is_whole_text_with_usage() -> None:
    a = plan_answer(req(("system", "be brief"), ("user", "say it now")), text=TEXT)
    assert texts(a) == ["The", " quick", " brown", " fox", " jumps."]
    assert a.finish_reason == "stop"
    assert (a.prompt_tokens, a.completion_tokens) == (5, 5)


def test_max_tokens_cuts_with_length() -> None:
    a = plan_answer(req(("user", "hi"), max_tokens=2), text=TEXT)
    assert texts(a) == ["The", " quick"]
    assert a.finish_reason == "length"


def test_prefill_accept_answers_only_the_remainder() -> None:
    a = plan_answer(req(("user", "hi"), ("assistant", "The quick ")), text=TEXT)
    assert "".join(texts(a)) == " brown fox jumps."
    assert texts(a)[0] == " brown"


def test_prefill_ignore_answers_from_the_start() -> None:
    a = plan_answer(req(("user", "hi"), ("assistant", "The quick")), text=TEXT, prefill="ignore")
    assert "".join(texts(a)) == TEXT


def test_prefill_that_is_not_a_prefix_gets_whole_text() -> None:
    a = plan_answer(req(("user", "hi"), ("assistant", "Something else")), text=TEXT)
    assert "".join(texts(a)) == TEXT


def test_prefill_mid_word_sends_word_fragment_first() -> None:
    a = plan_answer(req(("user", "hi"), ("assistant", "The quick br")), text=TEXT)
    assert texts(a) == ["own", " fox", " jumps."]


def test_continue_turn_answers_remainder_even_with_prefill_ignore() -> None:
    r = req(("user", "hi"), ("assistant", "The quick"), ("user", "Continue exactly where you stopped."))
    a = plan_answer(r, text=TEXT, prefill="ignore")
    assert "".join(texts(a)) == " brown fox jumps."


def test_follow_up_after_a_complete_answer_is_not_a_continuation() -> None:
    a = plan_answer(req(("user", "hi"), ("assistant", TEXT), ("user", "again")), text=TEXT)
    assert "".join(texts(a)) == TEXT


def test_echo_words_repeat_the_tail_first() -> None:
    a = plan_answer(req(("user", "hi"), ("assistant", "The quick brown")), text=TEXT, echo_words=2)
    assert texts(a) == [" quick", " brown", " fox", " jumps."]


def test_echo_of_a_mid_word_cut_repeats_the_fragment() -> None:
    a = plan_answer(req(("user", "hi"), ("assistant", "The quick br")), text=TEXT, echo_words=1)
    assert "".join(texts(a)) == " brown fox jumps."


def test_tools_with_user_last_give_one_tool_call_in_fragments() -> None:
    a = plan_answer(req(("user", "weather?"), tools=("get_weather", "other")), text=TEXT, call_id="call_1")
    assert a.finish_reason == "tool_calls"
    assert a.pieces[0] == ToolCallStart(id="call_1", name="get_weather")
    fragments = [p.fragment for p in a.pieces if isinstance(p, ToolCallArgs)]
    assert len(fragments) >= 2
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    assert a.tool_call == ("call_1", "get_weather", TOOL_ARGUMENTS)


def test_after_a_tool_result_the_answer_is_text() -> None:
    a = plan_answer(req(("user", "weather?"), ("assistant", ""), ("tool", "sunny"), tools=("w",)), text=TEXT)
    assert a.finish_reason == "stop"
    assert "".join(texts(a)) == TEXT


def test_continuation_wins_over_a_tool_call() -> None:
    r = req(("tool", "sunny"), ("assistant", "The quick"), ("user", "continue"), tools=("w",))
    assert "".join(texts(plan_answer(r, text=TEXT))) == " brown fox jumps."


# faults


def test_fault_queue_applies_in_order_each_times_requests() -> None:
    q = FaultQueue()
    q.push(Fault(kind="status", status=503, times=2))
    q.push(Fault(kind="reset_before_headers"))
    kinds = [f.kind if (f := q.take()) else None for _ in range(4)]
    assert kinds == ["status", "status", "reset_before_headers", None]


def test_fault_times_minus_one_stays_until_cleared() -> None:
    q = FaultQueue()
    q.push(Fault(kind="stall_before", times=-1))
    assert all(q.take() is not None for _ in range(5))
    q.clear()
    assert q.take() is None


@pytest.mark.parametrize(
    "raw",
    [b'{"kind": "explode"}', b'{"kind": "status"}', b'{"kind": "reset_after", "times": 0}', b"{}"],
)
def test_invalid_fault_json_is_rejected(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Fault)


def test_invalid_fault_constructor_raises_value_error() -> None:
    with pytest.raises(ValueError, match="times"):
        Fault(kind="reset_after", times=-2)


# OpenAI dialect codec


def test_openai_parse_reads_parts_roles_limits_and_usage_flag() -> None:
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 9,
        "max_completion_tokens": 3,
        "messages": [
            {
                "role": "developer",
                "content": [{"type": "text", "text": "be"}, {"type": "text", "text": " brief"}],
            },
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}],
    }
    r = get_dialect("openai").parse_chat(Route("chat"), json.dumps(body).encode())
    assert [(m.role, m.text) for m in r.messages] == [
        ("system", "be brief"),
        ("user", "hi"),
        ("assistant", ""),
    ]
    assert (r.stream, r.include_usage, r.max_tokens, r.tool_names) == (True, True, 3, ("w",))


def test_openai_parse_tool_choice_none_means_no_tools() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"function": {"name": "w"}}],
    }
    body["tool_choice"] = "none"
    assert get_dialect("openai").parse_chat(Route("chat"), json.dumps(body).encode()).tool_names == ()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"messages": []}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
    ],
)
def test_openai_parse_rejects_bad_bodies(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        get_dialect("openai").parse_chat(Route("chat"), raw)


def test_openai_stream_malformed_line_is_not_json() -> None:
    d = get_dialect("openai")
    r = req(("user", "hi"))
    enc = d.stream(r, plan_answer(r, text=TEXT), response_id="c", created=1)
    line = enc.malformed()
    assert line.startswith(b"data: ") and line.endswith(b"\n\n")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line[len(b"data: ") :])


def test_openrouter_error_envelope_has_numeric_code() -> None:
    reply = get_dialect("openrouter").error(402)
    assert reply.status == 402
    assert json.loads(reply.body)["error"]["code"] == 402


def test_simulator_never_imports_the_daemon() -> None:
    # A wire bug shared by the daemon and its simulator would be invisible to every test.
    code = (
        "import sys, combined_models.simulator, combined_models.simulator.__main__;"
        "print(sorted(m for m in sys.modules if m.startswith('combined_models.daemon')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
