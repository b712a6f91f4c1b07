"""Continuing a cut answer: the follow-up request and the echo filter."""

from __future__ import annotations

import itertools

import pytest

from combined_models.chat import ChatRequest, Message
from combined_models.daemon.continuation import (
    CONTINUE_INSTRUCTION,
    EchoFilter,
    continuation_request,
    estimate_tokens,
)

BASE = ChatRequest(system="be kind", messages=[Message("user", "Tell me a story.")], max_tokens=1000)


# ---------------------------------------------------------------- continuation_request


def test_nothing_sent_is_the_unchanged_request() -> None:
    assert continuation_request(BASE, "", prefill=True) is BASE
    assert continuation_request(BASE, "", prefill=False) is BASE


def test_prefill_appends_the_partial_answer_without_trailing_whitespace() -> None:
    sent = "Once upon a time, \n"
    req = continuation_request(BASE, sent, prefill=True)
    assert req is not None
    assert req.messages == [Message("user", "Tell me a story."), Message("assistant", "Once upon a time,")]
    assert req.system == "be kind"
    assert req.max_tokens == 1000 - estimate_tokens(sent)
    assert BASE.messages == [Message("user", "Tell me a story.")]  # the original is not mutated


def test_without_prefill_an_instruction_turn_follows() -> None:
    sent = "Once upon a time, "
    req = continuation_request(BASE, sent, prefill=False)
    assert req is not None
    assert req.messages == [
        Message("user", "Tell me a story."),
        Message("assistant", sent),
        Message("user", CONTINUE_INSTRUCTION),
    ]
    assert req.messages[-1].role == "user"  # models that reject prefill need a user turn last


def test_max_tokens_lowered_by_what_was_sent() -> None:
    sent = "x" * 400  # about 100 tokens
    req = continuation_request(BASE, sent, prefill=True)
    assert req is not None and req.max_tokens == 900
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("") == 0


def test_none_when_the_budget_is_exhausted() -> None:
    small = ChatRequest(messages=[Message("user", "hi")], max_tokens=10)
    assert continuation_request(small, "x" * 40, prefill=True) is None  # exactly used up
    assert continuation_request(small, "x" * 100, prefill=False) is None
    left = continuation_request(small, "x" * 36, prefill=False)
    assert left is not None and left.max_tokens == 1


def test_no_max_tokens_stays_unlimited() -> None:
    req = continuation_request(ChatRequest(messages=[]), "x" * 10_000, prefill=True)
    assert req is not None and req.max_tokens is None


def test_other_fields_survive() -> None:
    full = ChatRequest(messages=[], temperature=0.3, top_p=0.9, stop=["END"], tool_choice="auto")
    req = continuation_request(full, "abc", prefill=True)
    assert req is not None
    assert (req.temperature, req.top_p, req.stop, req.tool_choice) == (0.3, 0.9, ["END"], "auto")


# ---------------------------------------------------------------- EchoFilter

SENT = "The quick brown fox jumps over"


def run(sent: str, pieces: list[str]) -> str:
    f = EchoFilter(sent)
    return "".join(f.feed(p) for p in pieces) + f.flush()


def splits(text: str, parts: int) -> list[list[str]]:
    """Every way to cut `text` into at most `parts` pieces."""
    out = []
    for cuts in itertools.combinations(range(1, len(text)), parts - 1):
        bounds = [0, *cuts, len(text)]
        out.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return out


CASES = [
    # (sent, new output, what the caller should get)
    pytest.param(SENT, " the lazy dog.", " the lazy dog.", id="legit"),
    pytest.param(SENT, "jumps over the lazy dog.", " the lazy dog.", id="tail-echo"),
    pytest.param(SENT, "fox jumps over the lazy dog.", " the lazy dog.", id="longer-tail-echo"),
    pytest.param(SENT, SENT + " the lazy dog.", " the lazy dog.", id="full-echo"),
    pytest.param(SENT, "quick brown cat sat down.", "quick brown cat sat down.", id="earlier-words-not-echo"),
    pytest.param(SENT, "The quick thinking saved us.", "The quick thinking saved us.", id="restart-not-echo"),
    pytest.param("I like the red car and the", " red bus.", " red bus.", id="repeated-word-not-echo"),
    pytest.param("Hello, ", "Hello, world", "world", id="ws-full-echo"),
    pytest.param("Hello, ", "world", "world", id="ws-legit"),
    pytest.param("Hello, ", "  \n world", "world", id="ws-leading-dropped"),
    pytest.param(SENT, "er", "er", id="short-overlap-kept"),
]


@pytest.mark.parametrize(("sent", "new", "expected"), CASES)
def test_echo_filter_whole(sent: str, new: str, expected: str) -> None:
    assert run(sent, [new]) == expected


@pytest.mark.parametrize(("sent", "new", "expected"), CASES)
def test_echo_filter_one_char_at_a_time(sent: str, new: str, expected: str) -> None:
    assert run(sent, list(new)) == expected


@pytest.mark.parametrize(("sent", "new", "expected"), CASES)
def test_echo_filter_every_two_and_three_way_split(sent: str, new: str, expected: str) -> None:
    for pieces in splits(new, 2) + splits(new, 3):
        assert run(sent, pieces) == expected, pieces


def test_text_after_the_decision_passes_at_once() -> None:
    f = EchoFilter(SENT)
    assert f.feed("jumps") == ""  # could still be an echo: held
    assert f.feed(" over") == ""
    assert f.feed(" the") == " the"  # diverged: the echo is dropped, the rest released
    assert f.feed(" lazy") == " lazy"
    assert f.flush() == ""


def test_legit_text_is_released_as_soon_as_it_cannot_be_an_echo() -> None:
    f = EchoFilter(SENT)
    assert f.feed("Zebras") == "Zebras"


def test_flush_releases_held_text_minus_the_echo() -> None:
    f = EchoFilter(SENT)
    assert f.feed("brown fox jumps over") == ""
    assert f.flush() == ""  # all of it was an echo

    f = EchoFilter(SENT)
    assert f.feed("quick") == ""  # occurs in sent, but not at its end
    assert f.flush() == "quick"

    f = EchoFilter(SENT)
    assert f.feed("s over") == ""
    assert f.flush() == ""
    assert f.flush() == ""


def test_nothing_sent_passes_everything() -> None:
    f = EchoFilter("")
    assert f.feed("  anything") == "  anything"
    assert f.flush() == ""


def test_leading_whitespace_only_dropped_when_sent_ends_with_whitespace() -> None:
    assert run("Hello,", [" world"]) == " world"
    assert run("Hello,\n", ["\n", "\nworld"]) == "world"
    f = EchoFilter("Hello, ")
    assert f.feed("   ") == ""
    assert f.flush() == ""


def test_min_overlap() -> None:
    assert run("abc xy", ["xy!"]) == "xy!"  # a 2-char overlap is below the default minimum
    f = EchoFilter("abc xy", min_overlap=2)
    assert f.feed("xy!") + f.flush() == "!"


def test_repeated_pattern_full_echo() -> None:
    sent = "abcabc"
    for pieces in [["abcabcX"], list("abcabcX"), ["abcab", "cX"]]:
        assert run(sent, pieces) == "X", pieces


def test_legit_repetition_that_matches_the_tail_is_taken_for_an_echo() -> None:
    """Current behaviour (a limit of the heuristic): a true continuation repeating the tail loses it."""
    assert run("Ha ha", [" ha!"]) == "!"


# ---------------------------------------------------------------- later refinements


def test_a_whitespace_only_partial_starts_over() -> None:
    req = ChatRequest(messages=[Message("user", "hi")])
    assert continuation_request(req, "  \n", prefill=True) is req


def test_the_callers_own_prefill_and_the_partial_form_one_assistant_turn() -> None:
    req = ChatRequest(messages=[Message("user", "list three"), Message("assistant", "1.")])
    out = continuation_request(req, " apples\n2. ", prefill=True)
    assert out is not None
    assert [(m.role, m.text()) for m in out.messages] == [
        ("user", "list three"),
        ("assistant", "1. apples\n2."),
    ]
    out = continuation_request(req, " apples", prefill=False)
    assert out is not None
    assert [m.role for m in out.messages] == ["user", "assistant", "user"]
    assert out.messages[1].text() == "1. apples"


def test_after_a_prefill_only_a_whole_echo_is_dropped() -> None:
    sent = "Ha ha"
    f = EchoFilter(sent, full_only=True)
    assert f.feed(" ha!") + f.flush() == " ha!"  # a short overlap is real text after a prefill
    f = EchoFilter(sent, full_only=True)
    assert f.feed("Ha") + f.feed(" ha, said he") + f.flush() == ", said he"  # the whole partial echoed back
    f = EchoFilter(sent, full_only=True)
    assert f.feed("Ha") + f.flush() == "Ha"  # a prefix of it that stops there is text


def test_without_prefill_a_short_overlap_is_an_echo() -> None:
    f = EchoFilter("Ha ha")
    assert f.feed(" ha!") + f.flush() == "!"
