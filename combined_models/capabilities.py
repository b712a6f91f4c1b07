"""What a provider's model can do, as far as failover needs to know. Pure.

Defaults come from what the vendors document; every one can be overridden per
provider in the config. Failover uses them to pick how to continue a cut
answer (prefill or instruction) and to skip members that cannot serve a
request (images, tools, a prompt longer than their window) without penalty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_CLAUDE_VERSION = re.compile(
    r"claude-(?:(?:opus|sonnet|haiku)-(\d+)(?:[-.](\d))?\b|(\d+)(?:[-.](\d))?-(?:opus|sonnet|haiku))"
)
_CONTEXT = [  # (pattern on the id, context window in tokens); first match wins
    (re.compile(r"claude-(?:opus|sonnet)-4|claude-sonnet-4|claude-(?:opus|sonnet|haiku)-[45]"), 200_000),
    (re.compile(r"claude"), 200_000),
    (re.compile(r"gpt-4\.1"), 1_047_576),
    (re.compile(r"gpt-5"), 400_000),
    (re.compile(r"gpt-4o|o[134]-|o[134]$"), 128_000),
    (re.compile(r"gemini-(?:2\.5|3)"), 1_048_576),
    (re.compile(r"gemini"), 1_000_000),
    (re.compile(r"llama-3\.[123]"), 128_000),
]
_TEXT_ONLY = re.compile(
    r"gpt-3\.5|deepseek-(?:r1|v3|chat|reasoner)|o1-mini|o3-mini|mistral-(?:small|large)-2[34]"
)
_THINKING = re.compile(
    r"claude-(?:3-7|3\.7|opus-4|sonnet-4|haiku-4|(?:opus|sonnet|haiku)-[5-9])|gemini-(?:2\.5|3)|thinking|reason"
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    prefill: bool = False  # a final assistant message is continued, not answered anew
    tools: bool = True
    images: bool = True
    thinking: bool = False
    context_window: int | None = None  # tokens; None when unknown
    # Anthropic's server tools (web search...), which the provider runs inside its answer.
    server_tools: bool = False


def _claude_version(model: str) -> tuple[int, int] | None:
    m = _CLAUDE_VERSION.search(model.lower())
    if not m:
        return None
    major = m.group(1) or m.group(3)
    minor = m.group(2) or m.group(4) or "0"
    return int(major), int(minor)


def default_capabilities(api: str, model: str, *, flavour: str = "") -> Capabilities:
    """What a model at a provider speaking `api` can do, from what the vendors document."""
    low = model.lower()
    claude = "claude" in low
    prefill = False
    if claude and (api in ("anthropic", "bedrock") or flavour == "openrouter"):
        version = _claude_version(low)
        # Claude Sonnet 4.6 / Opus 4.6 and later answer 400 to a prefill.
        prefill = version is None or version < (4, 6)
    window = next((n for pattern, n in _CONTEXT if pattern.search(low)), None)
    return Capabilities(
        prefill=prefill,
        images=not _TEXT_ONLY.search(low),
        thinking=bool(_THINKING.search(low)),
        context_window=window,
        # Only the Anthropic API runs them; Bedrock's Converse has no place for them (§12).
        server_tools=api == "anthropic",
    )


def with_overrides(caps: Capabilities, **overrides: bool | int | None) -> Capabilities:
    """`caps` with every override that is not None applied (the config's per-provider settings)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(caps, **given) if given else caps  # type: ignore[arg-type]
