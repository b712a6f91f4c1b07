"""Continuing a cut answer on another provider: the request to send and the echo to strip. Pure."""

from __future__ import annotations

import math

import msgspec

from ..chat import ChatRequest, Message

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, starting with the next "
    "character. Do not repeat anything already written and do not comment on the interruption."
)


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token) for lowering max_tokens."""
    return math.ceil(len(text) / 4)


def continuation_request(request: ChatRequest, sent: str, *, prefill: bool) -> ChatRequest | None:
    """The request that makes the next provider continue `sent`; None when no token budget is left.

    With a prefill the partial answer is the final assistant message (without
    trailing whitespace, which Anthropic rejects); otherwise it is an assistant
    turn followed by a short instruction to continue.
    """
    if not sent:
        return request
    max_tokens = request.max_tokens
    if max_tokens is not None:
        max_tokens -= estimate_tokens(sent)
        if max_tokens <= 0:
            return None
    if prefill:
        extra = [Message("assistant", sent.rstrip())]
    else:
        extra = [Message("assistant", sent), Message("user", CONTINUE_INSTRUCTION)]
    return msgspec.structs.replace(request, messages=[*request.messages, *extra], max_tokens=max_tokens)


class EchoFilter:
    """Holds back the start of a continuation until it can be compared with what was sent.

    A model asked to continue often repeats the tail of what it had written (or
    all of it). While the new text could still be such a repeat (it occurs in
    `sent`), it is held; once it diverges, the longest prefix of it that is a
    suffix of `sent` is dropped and the rest released. After that, text passes.
    """

    def __init__(self, sent: str, min_overlap: int = 3) -> None:
        self._sent = sent
        self._min = min_overlap
        self._buf = ""
        self._decided = not sent
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
        if len(self._buf) < len(self._sent) and self._buf in self._sent:
            return ""
        return self._decide()

    def flush(self) -> str:
        """The stream finished: release what is held, minus any echo."""
        return "" if self._decided else self._decide()

    def _decide(self) -> str:
        buf, sent = self._buf, self._sent
        self._decided, self._buf = True, ""
        for k in range(min(len(buf), len(sent)), self._min - 1, -1):
            if sent.endswith(buf[:k]):
                return buf[k:]
        return buf
