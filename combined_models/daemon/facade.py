"""What a front door sees of the daemon: one small interface, the same for every door.

The socket door and the HTTP door are given a `DaemonFacade` and nothing else:
they never see the server that starts them, nor each other, nor how the
daemon routes a chat. Pure: importing this loads no I/O library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from ..chat import ChatRequest, StreamEvent
from ..config import HttpConfig, LimitsConfig
from ..protocol import ModelsInfo, ReloadInfo, StatusInfo

# Where a chat's events go, in order, a batch at a time: a batch is what one upstream read
# decoded (a write per event was a trip round the event loop and a syscall per token).
Send = Callable[[list[StreamEvent]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CountResult:
    """What `count_tokens` found: a member's own count, or why there is none.

    outcome: "counted" (`input_tokens` from `member`); "unknown_model"; "unsupported" (no
    member's API can count, or those that could are off); "failed" (members that can count
    were asked and failed); "cooling" (those that can count are cooling down, none was asked).
    `tried` says, per member in chain order, what became of it.
    """

    outcome: Literal["counted", "unknown_model", "unsupported", "failed", "cooling"]
    input_tokens: int | None = None
    member: str = ""  # provider/model that counted
    message: str = ""  # for an error reply: what was tried and why it gave no count
    tried: tuple[str, ...] = ()
    retry_after: float | None = None  # when cooling: seconds until one could count again


class DaemonFacade(Protocol):
    """The daemon as a front door uses it."""

    @property
    def limits(self) -> LimitsConfig:
        """Bounds on connections and on waits for clients."""
        ...

    @property
    def http(self) -> HttpConfig:
        """The HTTP door's settings (listen address, token, who may call)."""
        ...

    @property
    def stopping(self) -> bool:
        """A stop was requested: refuse new chats, let those under way finish."""
        ...

    def request_stop(self) -> None: ...

    def tracking(self) -> AbstractContextManager[None]:
        """Count a request in flight while inside; the stop grace period waits for the count to reach 0."""
        ...

    async def chat(self, model: str, request: ChatRequest, send: Send) -> None:
        """Serve one chat: every event goes to `send`, ending with a done or an error event."""
        ...

    async def count_tokens(self, model: str, request: ChatRequest) -> CountResult:
        """The input tokens `request` makes, counted by the first member of `model` that can count.

        Never an estimate: when no member gives a count, the result says why.
        """
        ...

    def models_info(self) -> ModelsInfo: ...

    def status(self) -> StatusInfo:
        """The daemon's status, each door's address included."""
        ...

    def explain(self, model: str) -> list[str]:
        """How a combined model was put together; KeyError when there is no such model."""
        ...

    async def refresh_catalogs(self) -> None:
        """Ask every provider for its models again."""
        ...

    async def reload_config(self) -> ReloadInfo:
        """Re-read the config file and apply it without cutting answers under way; a bad file changes nothing."""
        ...

    def metrics_text(self) -> bytes:
        """The daemon's metrics in the Prometheus text format."""
        ...
