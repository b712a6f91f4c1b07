"""Continuing a cut answer on another provider: the request to send and the echo to strip. Pure."""

from __future__ import annotations

import math

import msgspec

from ..capabilities import Capabilities
from ..chat import ChatRequest, DocumentPart, ImagePart, Message, Part, ToolResultPart
from .errors import Failure

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, starting with the next "
    "character. Do not repeat anything already written and do not comment on the interruption."
)


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token) for lowering max_tokens."""
    return math.ceil(len(text) / 4)


def prompt_tokens(request: ChatRequest) -> int:
    """A rough size of the prompt, to skip members whose context window is known to be smaller."""
    chars = len(request.system_text())
    images = 0
    for m in request.messages:
        if isinstance(m.content, str):
            chars += len(m.content)
            continue
        for p in m.content:
            if isinstance(p, ImagePart | DocumentPart):
                images += 1
            elif isinstance(p, ToolResultPart) and not isinstance(p.content, str):
                images += len(p.images())
                chars += len(p.text()) + 50
            else:
                chars += len(msgspec.json.encode(p))
    return math.ceil(chars / 4) + 1500 * images


def _has_image(p: Part) -> bool:
    return isinstance(p, ImagePart) or (isinstance(p, ToolResultPart) and bool(p.images()))


def unsupported(request: ChatRequest, caps: Capabilities) -> tuple[Failure, str] | None:
    """Why a member with `caps` cannot serve `request`, and its failure class (None: it can)."""
    parts = [p for m in request.messages if not isinstance(m.content, str) for p in m.content]
    if request.tools and not caps.tools:
        return Failure.UNSUPPORTED, "this model does not support tools"
    if any(map(_has_image, parts)) and not caps.images:
        return Failure.UNSUPPORTED, "this model does not accept images"
    if request.server_tools and not caps.server_tools:
        names = ", ".join(dict.fromkeys(str(t.get("name") or t.get("type")) for t in request.server_tools))
        return Failure.UNSUPPORTED, f"server tools ({names}) run only at Anthropic"
    if caps.context_window is not None and prompt_tokens(request) > caps.context_window:
        window = f"the prompt is longer than this model's {caps.context_window}-token window"
        return Failure.CONTEXT_TOO_LONG, window
    return None


def continuation_request(request: ChatRequest, sent: str, *, prefill: bool) -> ChatRequest | None:
    """The request that makes the next provider continue `sent`; None when no token budget is left.

    With a prefill the partial answer is the final assistant message (without
    trailing whitespace, which Anthropic rejects); otherwise it is an assistant
    turn followed by a short instruction to continue.
    """
    if not sent.strip():  # nothing but whitespace: start over (the echo filter drops the repeat)
        return request
    max_tokens = request.max_tokens
    if max_tokens is not None:
        max_tokens -= estimate_tokens(sent)
        if max_tokens <= 0:
            return None
    messages = list(request.messages)
    partial = sent
    if messages and messages[-1].role == "assistant":
        # The caller's own prefill: what we sent continues it, so they form one assistant turn.
        partial = messages.pop().text() + sent
    if prefill:
        extra = [Message("assistant", partial.rstrip())]
    else:
        extra = [Message("assistant", partial), Message("user", CONTINUE_INSTRUCTION)]
    return msgspec.structs.replace(request, messages=[*messages, *extra], max_tokens=max_tokens)


class EchoFilter:
    """Holds back the start of a continuation until it can be compared with what was sent.

    A model asked to continue often repeats the tail of what it had written (or
    all of it). While the new text could still be such a repeat (it occurs in
    `sent`), it is held; once it diverges, the longest prefix of it that is a
    suffix of `sent` is dropped and the rest released. After that, text passes.

    With `full_only` (after a prefill, which the model continues exactly) only an
    echo of the whole partial answer is dropped: a short overlap there is real text.
    """

    def __init__(self, sent: str, min_overlap: int = 3, *, full_only: bool = False) -> None:
        self._sent = sent.rstrip() if full_only else sent
        self._min = len(self._sent) if full_only else min_overlap
        self._full_only = full_only
        self._buf = ""
        self._decided = not self._sent
        # The prefill dropped trailing whitespace; the model restores it, and the caller has it already.
        self._strip_lead = sent[-1:].isspace()

    def feed(self, text: str) -> str:
        if self._decided:
            return text
        self._buf += text
        if self._strip_lead:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return ""
        if len(self._buf) < len(self._sent) and self._could_be_echo(self._buf):
            return ""
        return self._decide()

    def _could_be_echo(self, buf: str) -> bool:
        return self._sent.startswith(buf) if self._full_only else buf in self._sent

    def flush(self) -> str:
        """The stream finished: release what is held, minus any echo."""
        return "" if self._decided else self._decide()

    def _decide(self) -> str:
        buf, sent = self._buf, self._sent
        self._decided, self._buf = True, ""
        if self._full_only:
            return buf[len(sent) :] if buf.startswith(sent) else buf
        for k in range(min(len(buf), len(sent)), self._min - 1, -1):
            if sent.endswith(buf[:k]):
                return buf[k:]
        return buf
