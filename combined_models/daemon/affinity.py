"""Session affinity: each conversation stays with the member that served its last turn. Pure.

A provider's prompt cache is warm only where the conversation was served: moving a
conversation between members at will throws that away. So a conversation's next turn
goes first to the member that served its previous one, while that member is healthy
and for `ttl` seconds since the last turn (about a provider's cache lifetime). A
failover moves the conversation, and the move sticks too. New conversations follow
the priority order.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict

from ..chat import ChatRequest

Key = tuple[str, str]  # (provider, model)
MAX_CONVERSATIONS = 10_000  # beyond this the least recently served are forgotten
MAX_SESSION_ID = 256


def conversation_key(model: str, request: ChatRequest) -> str:
    """The conversation a turn belongs to: the client's session id, else a hash of its opening.

    The opening (system and first message) is the same in every turn of a conversation and
    differs between conversations as much as their prompts do.
    """
    if request.session:
        return f"{model}\0s\0{request.session[:MAX_SESSION_ID]}"
    if request.cache_key:  # OpenAI's prompt_cache_key names the conversation the same way
        return f"{model}\0k\0{request.cache_key[:MAX_SESSION_ID]}"
    digest = hashlib.sha256(model.encode())
    system = request.system
    if isinstance(system, list):  # system blocks
        system = "".join(getattr(block, "text", "") for block in system)
    digest.update(b"\0" + (system or "").encode("utf-8", "surrogatepass"))
    if request.messages:
        digest.update(b"\0" + request.messages[0].text().encode("utf-8", "surrogatepass"))
    return f"{model}\0h\0{digest.hexdigest()[:32]}"


def continues(request: ChatRequest) -> bool:
    """Whether this turn continues a conversation: it has history, or the client named its session.

    A lone first message starts a conversation (the same question asked again is a new one):
    it follows the priority order, and its answer pins the conversation.
    """
    return bool(request.session or request.cache_key) or len(request.messages) > 1


class Affinity:
    """Which member served each conversation last, and when."""

    def __init__(self, ttl: float, max_conversations: int = MAX_CONVERSATIONS) -> None:
        self.ttl = ttl
        self.max_conversations = max_conversations
        self._pins: OrderedDict[str, tuple[Key, float]] = OrderedDict()  # oldest turn first

    def pinned(self, conversation: str, now: float) -> Key | None:
        """The member that served this conversation's last turn, if that was within `ttl`."""
        entry = self._pins.get(conversation)
        if entry is None:
            return None
        member, last = entry
        if now - last > self.ttl:
            del self._pins[conversation]
            return None
        return member

    def served(self, conversation: str, member: Key, now: float) -> None:
        """`member` served a turn of this conversation at `now`."""
        if self.ttl <= 0:
            return
        self._pins[conversation] = (member, now)
        self._pins.move_to_end(conversation)
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._pins:
            oldest = next(iter(self._pins))
            _, last = self._pins[oldest]
            if now - last <= self.ttl and len(self._pins) <= self.max_conversations:
                break
            del self._pins[oldest]

    def per_provider(self, now: float) -> Counter[str]:
        """How many live conversations each provider holds."""
        self._expire(now)
        return Counter(member[0] for member, _ in self._pins.values())
