"""The provider-neutral conversation model and the stream events of the contract.

Every dialect translates a `ChatRequest` into its own wire format and decodes its
stream into the events below; the daemon relays those events to its clients, and
`cmctl chat --json` prints them one JSON object per line.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec

# ---------------------------------------------------------------- conversation

# Prompt caching. A part, a system block or a tool with `cache` set carries a cache
# breakpoint: the provider may cache the prompt up to and including it (prefix order:
# tools, then system, then messages). The value is the entry's lifetime, "5m" (the usual)
# or "1h". Dialects with explicit caching place their marker there (Anthropic
# `cache_control`, Bedrock `cachePoint`); the others leave the markers out.


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str
    cache: str | None = None  # a cache breakpoint after this part (its ttl)


class ImagePart(msgspec.Struct, tag="image", tag_field="type", kw_only=True):
    media_type: str = "image/png"
    data: str = ""  # base64, when the image travels inline
    url: str | None = None
    cache: str | None = None


class DocumentPart(msgspec.Struct, tag="document", tag_field="type", kw_only=True):
    media_type: str = "application/pdf"
    data: str = ""  # base64
    title: str | None = None
    cache: str | None = None


class ToolCallPart(msgspec.Struct, tag="tool_call", tag_field="type"):
    id: str
    name: str
    arguments: dict[str, Any]
    cache: str | None = None


class ToolResultPart(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True):
    """A tool's answer: plain text, or text and image blocks (a screenshot, a rendered chart).

    A breakpoint goes on the result, never on a block inside it (Bedrock takes none there).
    """

    tool_call_id: str
    content: str | list[TextPart | ImagePart]
    is_error: bool = False
    cache: str | None = None

    def text(self) -> str:
        """The result's text (its text blocks joined), for APIs whose results hold text only."""
        if isinstance(self.content, str):
            return self.content
        return "".join(b.text for b in self.content if isinstance(b, TextPart))

    def images(self) -> list[ImagePart]:
        """The images inside the result."""
        if isinstance(self.content, str):
            return []
        return [b for b in self.content if isinstance(b, ImagePart)]


def result_content(blocks: list[TextPart | ImagePart]) -> str | list[TextPart | ImagePart]:
    """A tool result's content from its blocks: one text block (or none) is plain text, as APIs read it."""
    if not blocks:
        return ""
    if len(blocks) == 1 and isinstance(blocks[0], TextPart):
        return blocks[0].text
    return blocks


class ThinkingPart(msgspec.Struct, tag="thinking", tag_field="type", kw_only=True):
    """Never a cache breakpoint: Claude refuses one on a thinking block."""

    text: str
    signature: str | None = None
    # Signatures belong to the provider that produced them; other providers drop the part.
    provider: str | None = None


Part = TextPart | ImagePart | DocumentPart | ToolCallPart | ToolResultPart | ThinkingPart


class Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Part]

    def text(self) -> str:
        """The message's plain text (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class Tool(msgspec.Struct, kw_only=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    cache: str | None = None  # a cache breakpoint after this tool's definition


class ChatRequest(msgspec.Struct, kw_only=True):
    """One chat request, as written once by a client and served by any dialect."""

    messages: list[Message]
    # The system prompt: text, or text blocks when some carry a cache breakpoint
    # (`system_text()` gives the plain text for dialects that take only a string).
    system: str | list[TextPart] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[Tool] = msgspec.field(default_factory=list)
    tool_choice: str | None = None  # "auto" | "none" | "required" | a tool name
    thinking_budget: int | None = None  # ask for extended thinking with this many tokens, where supported
    # Which conversation this turn belongs to (a client's session id), for session affinity;
    # when absent the daemon keys the conversation by a hash of its opening.
    session: str | None = None
    # Routes requests that share a prompt prefix to one cache (OpenAI's `prompt_cache_key`).
    cache_key: str | None = None
    top_k: int | None = None  # sample from the k likeliest tokens (Claude, Gemini); dropped elsewhere
    # What only the Anthropic API expresses, carried to Anthropic members as it came.
    # Beta flags and `context_management` are hints: other members serve the request without
    # them. Server tools (`web_search_20250305`...) run at Anthropic itself: a member that
    # cannot run them is skipped (see `continuation.unsupported`).
    anthropic_beta: list[str] = msgspec.field(default_factory=list)
    context_management: dict[str, Any] | None = None  # opaque
    server_tools: list[dict[str, Any]] = msgspec.field(default_factory=list)  # opaque tool entries
    metadata: dict[str, str] | None = None  # Anthropic's `metadata` (`user_id`)

    def system_text(self) -> str:
        """The system prompt as plain text ("" when none); blocks are joined by a blank line."""
        if self.system is None or isinstance(self.system, str):
            return self.system or ""
        return "\n\n".join(b.text for b in self.system)


# ---------------------------------------------------------------- stream events


class Usage(msgspec.Struct, kw_only=True):
    """Tokens one answer took.

    `input_tokens` is the WHOLE prompt, cached parts included, as OpenAI and Gemini count
    it: `cache_read_tokens` (served from the cache) and `cache_write_tokens` (written to
    it) are parts of it, never added to it. Anthropic and Bedrock report their input
    without the cached parts: their decoders add them, and the Anthropic front door takes
    them out again. So `input_tokens + output_tokens` is the total everywhere.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class ProviderEvent(msgspec.Struct, tag="provider", tag_field="type"):
    """A provider starts serving (the first one, or the next after a failover)."""

    provider: str
    model: str


class TextEvent(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ThinkingEvent(msgspec.Struct, tag="thinking", tag_field="type"):
    text: str
    signature: str | None = None


class ToolCallEvent(msgspec.Struct, tag="tool_call", tag_field="type"):
    """A whole tool call: forwarded only once its arguments are complete."""

    id: str
    name: str
    arguments: dict[str, Any]


class FailoverEvent(msgspec.Struct, tag="failover", tag_field="type", kw_only=True):
    from_: str = msgspec.field(name="from")
    to: str
    reason: str
    after_output: bool
    message: str = ""


class DoneEvent(msgspec.Struct, tag="done", tag_field="type", kw_only=True):
    provider: str
    model: str
    finish_reason: str  # normalised to OpenAI's names: stop, length, tool_calls, content_filter
    usage: Usage = msgspec.field(default_factory=Usage)


class Attempt(msgspec.Struct, kw_only=True):
    """One provider's part in a failed request, for the error event."""

    provider: str
    error: str
    model: str = ""
    kind: str = ""  # the `Failure` of an attempt, or the health `State` of a member not tried


class ErrorEvent(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    kind: ErrorKind
    message: str
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    retry_after_s: float | None = None


StreamEvent = (
    ProviderEvent | TextEvent | ThinkingEvent | ToolCallEvent | FailoverEvent | DoneEvent | ErrorEvent
)


class Finished(msgspec.Struct, kw_only=True):
    """A dialect decoder's verdict that the upstream stream completed (not sent to clients)."""

    finish_reason: str
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""


# What a dialect decoder yields.
DecodedItem = TextEvent | ThinkingEvent | ToolCallEvent | Finished


class ErrorKind(enum.StrEnum):
    """Why a request failed (or a connection broke), as clients see it: the `kind` of an error."""

    UNKNOWN_MODEL = "unknown_model"
    BAD_REQUEST = "bad_request"
    CONTENT_FILTER = "content_filter"
    ALL_PROVIDERS_FAILED = "all_providers_failed"
    ALL_PROVIDERS_COOLING = "all_providers_cooling"
    TRUNCATED = "truncated"
    CANCELLED = "cancelled"
    PROTOCOL_ERROR = "protocol_error"
    FRAME_TOO_LARGE = "frame_too_large"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"
    BUSY = "busy"  # the daemon has too many connections open
