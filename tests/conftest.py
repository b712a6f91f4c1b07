"""Shared fixtures: isolated user dirs, and simulated providers behind a real daemon on a Unix socket."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anthropic
import msgspec
import openai
import pytest
import trio
import trio.testing

from combined_models.chat import DoneEvent, ErrorEvent, StreamEvent, TextEvent
from combined_models.client.aio import AsyncClient, open_client
from combined_models.client.sync import locate
from combined_models.config import Config, parse_config
from combined_models.daemon import Server, open_daemon
from combined_models.protocol import (
    FrameDecoder,
    Hello,
    ServerFrame,
    client_decoder,
    encode_frame,
    server_decoder,
)
from combined_models.simulator import Simulator
from combined_models.transport import ENV_TRANSPORT, choose_transport, client_proof, new_nonce

# Every daemon the suite starts (in process or `cmctl serve`) listens this way: the default, or
# what $COMBINED_MODELS_TRANSPORT says (`./scripts/test` runs the suite once more with tcp).
TRANSPORT = choose_transport(None)
TCP = TRANSPORT == "tcp"
unix_only = pytest.mark.skipif(TCP, reason=f"about Unix sockets themselves; {ENV_TRANSPORT}=tcp")


def pytest_report_header() -> str:
    return f"combined-models transport: {TRANSPORT}"


ANSWER = (
    "Failover keeps every request alive: when one provider breaks, the same request continues on the "
    "next one, and the caller receives one complete answer with nothing lost and nothing repeated."
)
MODEL = "sim-model-1"


@pytest.fixture(autouse=True)
def user_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test gets its own config, state, log and runtime dirs (nothing touches the real home)."""
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        d = tmp_path / var.lower()
        d.mkdir(mode=0o700)
        monkeypatch.setenv(var, str(d))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("COMBINED_MODELS_SOCKET", raising=False)
    monkeypatch.delenv("COMBINED_MODELS_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real-time speed (real sockets work), but a test can jump over a long cooldown."""
    return trio.testing.MockClock(rate=1.0)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short private dir for sockets (pytest's tmp_path can exceed the 107-byte socket path limit)."""
    d = Path(tempfile.mkdtemp(prefix="cmt-"))
    d.chmod(0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def config_for(
    sims: dict[str, Simulator],
    extra: str = "",
    failover: dict[str, float] | None = None,
    provider_lines: dict[str, str] | None = None,
) -> Config:
    knobs = {"first_token_timeout": 5.0, "idle_timeout": 5.0, "retry_backoff": 0.01, **(failover or {})}
    lines = [f"provider_priority = {list(sims)!r}".replace("'", '"'), "[failover]"]
    lines += [f"{k} = {v}" for k, v in knobs.items()]
    for pid, sim in sims.items():
        lines += [
            f"[providers.{pid}]",
            'api = "openai"',
            f'base_url = "{sim.base_url}"',
            f'api_key = "sk-test-{pid}-0123456789"',
            f"models = {list(sim.models)!r}".replace("'", '"'),
            (provider_lines or {}).get(pid, ""),
        ]
    if "[http]" not in extra:  # any free port: daemons in tests never collide (nor take a user's 4141)
        extra += '\n[http]\nlisten = "127.0.0.1:0"\n'
    return parse_config("\n".join(lines) + "\n" + extra, "test config")


@dataclass
class FrontDoor:
    """A daemon's HTTP front door and its simulated providers, for the official SDKs."""

    sims: dict[str, Simulator]
    server: Server
    url: str  # http://127.0.0.1:PORT
    token: str

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.token, max_retries=0, timeout=10)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.token, max_retries=0, timeout=10)


@dataclass
class Stack:
    sims: dict[str, Simulator]
    socket: Path
    server: Server
    nursery: trio.Nursery

    @asynccontextmanager
    async def client(self) -> AsyncIterator[AsyncClient]:
        async with open_client(self.socket) as c:
            yield c

    async def ask(self, model: str = MODEL, prompt: str = "hello") -> list[StreamEvent]:
        async with self.client() as c:
            return [e async for e in c.chat(model, prompt)]


@asynccontextmanager
async def open_stack(
    short_dir: Path,
    names: tuple[str, ...] = ("first", "second"),
    *,
    extra: str = "",
    failover: dict[str, float] | None = None,
    provider_lines: dict[str, str] | None = None,
    **sim_options: object,
) -> AsyncIterator[Stack]:
    """Simulated providers (OpenAI dialect) and a daemon serving them on a real Unix socket."""
    async with trio.open_nursery() as nursery:
        sims: dict[str, Simulator] = {}
        for name in names:
            sim = Simulator(models=[MODEL], text=ANSWER, name=name, **sim_options)  # type: ignore[arg-type]
            await nursery.start(sim.run)
            sims[name] = sim
        sock = short_dir / "d.sock"
        server = await open_daemon(config_for(sims, extra, failover, provider_lines), sock, nursery)
        yield Stack(sims, sock, server, nursery)
        nursery.cancel_scope.cancel()


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextEvent))


def done_of(events: list[StreamEvent]) -> DoneEvent:
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, DoneEvent), f"stream did not finish: {last!r}"
    return last


def error_of(events: list[StreamEvent]) -> ErrorEvent:
    last = events[-1]
    assert isinstance(last, ErrorEvent), f"expected an error, got {last!r}"
    return last


# ------------------------------------------------------------------ blocking raw socket clients (run in threads)


class RawSocket(socket.socket):
    """A plain socket to the daemon. Over tcp, the hello its first send starts with gets a good proof.

    So byte-level tests throw the same bytes either way: after the handshake when they greet
    first, before it (where only a good hello gets through) when they do not.
    """

    token = ""

    def sendall(self, data: bytes, flags: int = 0, /) -> None:  # type: ignore[override]
        if self.token:
            data, self.token = with_proof(bytes(data), self.token), ""
        super().sendall(data, flags)


def with_proof(data: bytes, token: str) -> bytes:
    """`data` with its leading hello frame proving `token` (a fresh nonce and its proof); else unchanged."""
    if len(data) >= 4 and len(data) >= 4 + (size := int.from_bytes(data[:4], "big")):
        try:
            frame = client_decoder.decode(data[4 : 4 + size])
        except (msgspec.DecodeError, RecursionError, ValueError):
            return data
        if isinstance(frame, Hello):
            nonce = new_nonce()
            proved = msgspec.structs.replace(frame, nonce=nonce, proof=client_proof(token, nonce))
            return encode_frame(proved) + data[4 + size :]
    return data


def raw_connect(path: Path) -> socket.socket:
    """A plain connection to the daemon (its Unix socket, or the TCP port its endpoint file names)."""
    found = locate(path)
    if found is None:
        s = RawSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(path))
        return s
    endpoint, token = found
    s = RawSocket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((endpoint.host, endpoint.port))
    s.token = token
    return s


def read_frames_until_close(s: socket.socket) -> list[ServerFrame]:
    """Every frame until the daemon closes (a partly written last frame is left out)."""
    decoder, frames = FrameDecoder(), []
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return frames
        if not data:
            return frames
        frames += [server_decoder.decode(b) for b in decoder.feed(data)]
