"""What the simulator answers, decided without any I/O.

Every dialect parses its request into a `ChatRequest` and renders the `Answer`
that `plan_answer` returns, so the answer semantics live in one place.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Literal

import msgspec

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls"]

DEFAULT_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "It was a bright cold day in April, and the clocks were striking thirteen."
)

# The tool call every tool-bearing request gets; split so it streams in two fragments.
TOOL_ARGUMENTS = '{"city": "Paris"}'
_TOOL_SPLIT = len('{"city": "Pa')

# A piece is an optional whitespace run plus one word; trailing whitespace is its own piece.
_PIECE_RE = re.compile(r"\s*\S+|\s+\Z")


class Message(msgspec.Struct, frozen=True):
    """One conversation turn reduced to what the simulator looks at."""

    role: Role
    text: str


class Prefix(msgspec.Struct, frozen=True):
    """The prompt up to one of its items (a tool, a system block, a message part), for the prompt cache."""

    digest: str  # of the model and every item up to here
    words: int  # the words in it: the simulator's tokens
    breakpoint: str | None = None  # the ttl, when the request puts a cache breakpoint after this item


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A chat request in the simulator's internal form, whatever the dialect."""

    model: str
    messages: tuple[Message, ...]
    stream: bool = False
    tool_names: tuple[str, ...] = ()
    max_tokens: int | None = None
    include_usage: bool = False
    conversation: dict[str, Any] | None = None  # the dialect-neutral view (see conversation.py)
    variant: str = ""  # a dialect's rendering choice taken from the request (gemini: "array" without alt=sse)
    prefixes: tuple[Prefix, ...] = ()  # one per item of the prompt, in prefix order (see conversation.py)

    @property
    def ends_with_assistant(self) -> bool:
        return bool(self.messages) and self.messages[-1].role == "assistant"


class ThinkingPiece(msgspec.Struct, frozen=True):
    text: str


class TextPiece(msgspec.Struct, frozen=True):
    text: str


class ToolCallStart(msgspec.Struct, frozen=True):
    id: str
    name: str


class ToolCallArgs(msgspec.Struct, frozen=True):
    fragment: str


Piece = ThinkingPiece | TextPiece | ToolCallStart | ToolCallArgs


def signature_of(thinking: str) -> str:
    """The signature the simulator puts on its thinking: derived from the text, so a test can
    check that thinking sent back in a later request arrived unchanged."""
    return base64.b64encode(hashlib.sha256(b"sim-thinking:" + thinking.encode()).digest()).decode()


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """The full answer: content pieces in streaming order, the finish reason, usage."""

    pieces: tuple[Piece, ...]
    finish_reason: FinishReason
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces if isinstance(p, TextPiece))

    @property
    def thinking(self) -> str:
        return "".join(p.text for p in self.pieces if isinstance(p, ThinkingPiece))

    @property
    def signature(self) -> str:
        return signature_of(self.thinking)

    @property
    def thinking_tokens(self) -> int:
        return sum(isinstance(p, ThinkingPiece) for p in self.pieces)

    @property
    def tool_call(self) -> tuple[str, str, str] | None:
        """(id, name, arguments JSON text) when the answer is a tool call."""
        start = next((p for p in self.pieces if isinstance(p, ToolCallStart)), None)
        if start is None:
            return None
        args = "".join(p.fragment for p in self.pieces if isinstance(p, ToolCallArgs))
        return start.id, start.name, args


def split_pieces(s: str) -> list[str]:
    """Split on word boundaries, keeping each word's leading whitespace: "a b" -> ["a", " b"].

    The pieces concatenate back to `s` exactly; a string starting mid-word sends that
    fragment first.
    """
    return _PIECE_RE.findall(s)


def count_words(messages: tuple[Message, ...]) -> int:
    return sum(len(m.text.split()) for m in messages)


def continued_prefix(req: ChatRequest, text: str, *, prefill: str) -> str | None:
    """The part of `text` the conversation already holds, when this request continues a cut answer.

    Two shapes count: a trailing assistant message (prefill, only when `prefill` is
    "accept"), or an assistant message followed by a final user turn ("continue where you
    stopped"). The second must be a non-empty proper prefix, so an ordinary follow-up
    question after a complete answer still gets the whole text.
    """
    msgs = req.messages
    if msgs and msgs[-1].role == "assistant":
        if prefill != "accept":
            return None
        p = msgs[-1].text.rstrip()
        return p if text.startswith(p) else None
    if len(msgs) >= 2 and msgs[-1].role == "user" and msgs[-2].role == "assistant":
        p = msgs[-2].text.rstrip()
        return p if p and len(p) < len(text) and text.startswith(p) else None
    return None


def echo_of(prefix: str, words: int) -> str:
    """The last `words` words of `prefix`, each with its leading whitespace."""
    if words <= 0:
        return ""
    return "".join(split_pieces(prefix.rstrip())[-words:])


def plan_answer(
    req: ChatRequest,
    *,
    text: str,
    prefill: str = "accept",
    echo_words: int = 0,
    call_id: str = "call_sim",
    thinking: str = "",
) -> Answer:
    """Decide the answer to `req`: a continuation, a tool call, or the whole `text`,
    preceded by `thinking` (split like text) when it is given."""
    prompt_tokens = count_words(req.messages)
    thought = tuple(ThinkingPiece(w) for w in split_pieces(thinking))
    prefix = continued_prefix(req, text, prefill=prefill)
    last_role = req.messages[-1].role if req.messages else None
    # A continuation wins over a tool call: the cut answer was text, so its rest is text.
    if prefix is None and req.tool_names and last_role == "user":
        pieces: tuple[Piece, ...] = (
            *thought,
            ToolCallStart(id=call_id, name=req.tool_names[0]),
            ToolCallArgs(TOOL_ARGUMENTS[:_TOOL_SPLIT]),
            ToolCallArgs(TOOL_ARGUMENTS[_TOOL_SPLIT:]),
        )
        return Answer(pieces=pieces, finish_reason="tool_calls", prompt_tokens=prompt_tokens)
    body = text if prefix is None else echo_of(prefix, echo_words) + text[len(prefix) :]
    words = split_pieces(body)
    finish: FinishReason = "stop"
    if req.max_tokens is not None and len(words) > req.max_tokens:
        words, finish = words[: req.max_tokens], "length"
    return Answer(
        pieces=(*thought, *(TextPiece(w) for w in words)), finish_reason=finish, prompt_tokens=prompt_tokens
    )
