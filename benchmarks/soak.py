"""`scripts/soak`: the daemon under long mixed load, provider faults and hostile clients; it must never go down.

Not part of the test suite. Three simulated providers of one model (Anthropic, OpenAI and Gemini
dialects, in that priority order) and `cmctl serve` run in their own processes with private XDG
dirs; this process is every client. Normal clients ask over the socket and both HTTP dialects,
streaming and not, while about one request in five draws a fault at a provider. Hostile clients,
at a low rate, send garbage, odd methods, deep nesting, close early or stop reading.

Every normal answer is checked against the simulator's one answer: complete, clean error,
truncated-presented-as-complete (must be 0), hang (no end within HANG_S) or dropped (the
connection ended with neither). The daemon is watched: a death is counted, its last stderr lines
printed, and it is restarted. Exit 1 on any truncated-as-complete, hang or restart, RSS growth
of 10% or more after the warm-up, or a daemon that does not answer at the end.

The daemon logs JSON lines with small rotation limits (`--log-max-bytes`, `--log-backups`), and
the run follows them as a user would, with `cmctl logs -f --json`. It also fails when the log dir
holds more files than the limits allow, or when the request lines are not exactly one per request
the daemon counted (ids 1..N, each once, N the `cm_requests_total` of its `/metrics`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families

from combined_models.chat import DoneEvent, ErrorEvent, StreamEvent, TextEvent
from combined_models.client.aio import AsyncClient, open_client
from combined_models.client.sync import DaemonUnavailable
from combined_models.protocol import PROTOCOL_VERSION, Hello, StatusQuery, encode_frame

from ._procs import MODEL, TEXT, _env, _stop, short_socket_path, simulator, start_daemon, workspace

DIALECTS = ("anthropic", "openai", "gemini")  # the providers, in priority order
HANG_S = 60.0  # a normal request with no end by then is a hang
FAULT_RATE = 0.2
MAX_QUEUED = 3  # faults waiting at one simulator
HOSTILE_GAP = (0.5, 2.0)  # seconds between hostile clients
PROGRESS_S = 30.0
PROMPTS = ("hi", "Explain failover in one sentence.", "Why is the sky blue? " * 20)
EXCEPTION_LINE = re.compile(r"[\w.]*(Error|Exception|Exit|Interrupt)(Group)?: ")  # in a traceback
OUTCOMES = ("complete", "error", "truncated_as_complete", "hang", "dropped", "unavailable")


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)  # normal requests by client kind
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # clean errors by kind
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few of each bad outcome
    faults: Counter[str] = field(default_factory=Counter)
    upstream_requests: int = 0  # chat requests the simulators received
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_results: dict[str, Counter[str]] = field(default_factory=dict)
    restarts: int = 0

    def record(self, client: str, outcome: str, detail: str) -> None:
        self.sent[client] += 1
        self.outcomes[outcome] += 1
        if outcome == "error":
            self.errors[detail] += 1
        elif outcome != "complete":
            examples = self.examples.setdefault(outcome, [])
            if len(examples) < 5:
                examples.append(f"{client}: {detail}")

    def hostile_result(self, kind: str, variant: str, result: str) -> None:
        self.hostile[kind] += 1
        self.hostile_results.setdefault(kind, Counter())[f"{variant} -> {result}"] += 1


@dataclass
class Case:
    """What one hostile client does, known before it runs into trouble."""

    variant: str = "?"


def judge(text: str, finished: bool, error: str | None) -> tuple[str, str]:
    """Classify one answer by its whole text, whether it claimed to be finished, and its error."""
    if finished and text != TEXT:
        return "truncated_as_complete", f"{len(text)}/{len(TEXT)} chars, ends {text[-40:]!r}"
    if error is not None:
        return "error", error
    if finished:
        return "complete", ""
    return "dropped", f"ended with neither a finish nor an error after {len(text)} chars"


def failure(e: BaseException) -> tuple[str, str]:
    """A client's exception as an outcome: `unavailable` when it could not connect, else `dropped`."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]  # the client's task group wraps what ended the connection
    if isinstance(e, DaemonUnavailable | httpx.ConnectError | ConnectionRefusedError | FileNotFoundError):
        return "unavailable", str(e)[:120]
    return "dropped", f"{type(e).__name__}: {str(e)[:120]}"


def random_fault(rng: random.Random) -> dict[str, Any]:
    k = rng.randint(1, 12)  # content chunks before a mid-stream fault
    return rng.choice(
        [
            {"kind": "status", "status": 429, "seconds": rng.choice([1, 2])},
            {"kind": "status", "status": 529},
            {"kind": "status", "status": 503},
            {"kind": "status", "status": 500},
            {"kind": "status", "status": 502},
            {"kind": "reset_before_headers"},
            {"kind": "stall_before"},
            {"kind": "slow_first_token", "seconds": 1.0},
            {"kind": "reset_after", "after_chunks": k},
            {"kind": "stall_after", "after_chunks": k},
            {"kind": "malformed_after", "after_chunks": k},
            {"kind": "inband_error_after", "after_chunks": k},
            {"kind": "no_terminator", "after_chunks": k},
        ]
    )


def deep_json(depth: int, dicts: bool) -> str:
    return '{"a":' * depth + "1" + "}" * depth if dicts else "[" * depth + "]" * depth


def deep_msgpack_frame(depth: int, where: str) -> bytes:
    """A frame whose `where` (hello's client, chat content, a tool's parameters) nests `depth` deep."""
    hole = "\x00HOLE\x00"
    if where == "hello":
        value: dict[str, Any] = {"type": "hello", "version": PROTOCOL_VERSION, "client": hole}
        deep = b"\x91" * depth + b"\xc0"
    elif where == "content":
        value = {
            "type": "chat",
            "id": 1,
            "model": MODEL,
            "request": {"messages": [{"role": "user", "content": hole}]},
        }
        deep = b"\x91" * depth + b"\xc0"
    else:
        tool = {"name": "f", "description": "", "parameters": hole}
        messages = [{"role": "user", "content": "hi"}]
        value = {"type": "chat", "id": 1, "model": MODEL, "request": {"messages": messages, "tools": [tool]}}
        deep = b"\x81\xa1a" * depth + b"\xc0"
    body = msgspec.msgpack.encode(value).replace(msgspec.msgpack.encode(hole), deep)
    return struct.pack(">I", len(body)) + body


async def read_for(stream: trio.abc.ReceiveStream, seconds: float, limit: int = 1 << 20) -> tuple[bytes, str]:
    """What arrives within `seconds` (up to `limit` bytes), and how reading ended."""
    data = bytearray()
    with trio.move_on_after(seconds):
        try:
            while len(data) < limit:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return bytes(data), "closed"
                data += chunk
            return bytes(data), "still sending"
        except (trio.BrokenResourceError, OSError):
            return bytes(data), "reset"
    return bytes(data), "open"


def frames_seen(data: bytes) -> str:
    """The frames in `data`, as `welcome`, `error:protocol_error`, ... (for hostile results)."""
    seen: list[str] = []
    while len(data) >= 4:
        (n,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + n:
            break
        try:
            frame = msgspec.msgpack.decode(data[4 : 4 + n])
            kind = frame.get("type", "?") if isinstance(frame, dict) else "?"
            seen.append(f"error:{frame.get('kind')}" if kind == "error" else str(kind))
        except msgspec.DecodeError:
            seen.append("undecodable")
        data = data[4 + n :]
    return ",".join(dict.fromkeys(seen)) or "nothing"


def http_status(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0]
    return line.decode("latin-1")[9:12] if line.startswith(b"HTTP/1.") else "no response"


class LogAudit:
    """The daemon's log as its user sees it: `cmctl logs -f --json` runs from before the daemon starts
    (so it misses nothing, across every rotation) and its output is kept in `followed`."""

    def __init__(self, root: Path, config: Path, backups: int) -> None:
        self.followed = root / "followed.jsonl"
        self.log_dir = root / "xdg_state_home" / "combined-models" / "log"
        self.backups = backups
        cmd = [sys.executable, "-m", "combined_models.client.cli", "logs", "-f", "--json", "-n", "0"]
        with self.followed.open("wb") as out, (root / "follower.err").open("wb") as err:
            self.proc = subprocess.Popen(
                [*cmd, "--config", str(config)],
                env=_env(root),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.followed.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                if isinstance(line := json.loads(raw), dict):
                    out.append(line)
        return out

    def request_ids(self) -> Counter[int]:
        return Counter(
            line["request"]
            for line in self.lines()
            if line.get("event") == "request" and isinstance(line.get("request"), int)
        )

    async def caught_up(self, expected: int) -> None:
        """Give the follower (it polls the file) a few seconds to print `expected` request lines."""
        for _ in range(25):  # polling a file another process writes: nothing to wait on
            if sum(self.request_ids().values()) >= expected:
                return
            await trio.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what a user's Ctrl-C does; it exits 0
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def files(self) -> list[str]:
        return sorted(p.name for p in self.log_dir.iterdir()) if self.log_dir.is_dir() else []

    def findings(self, counted: int | None) -> tuple[list[str], list[str]]:
        """(report lines, failures): the files left and whether every request has exactly one line."""
        ids = self.request_ids()
        files = self.files()
        report = [f"  log files       {len(files)} ({', '.join(files)}), at most {self.backups + 1} allowed"]
        failures = []
        if len(files) > self.backups + 1:
            failures.append(f"{len(files)} files in the log dir")
        repeated = sorted(i for i, n in ids.items() if n > 1)
        missing = sorted(set(range(1, (counted or 0) + 1)) - set(ids))
        report.append(
            f"  request lines   {sum(ids.values())} for {counted if counted is not None else '?'} requests "
            f"counted by /metrics; repeated {len(repeated)}, missing {len(missing)}"
        )
        if counted is None:
            failures.append("no request count from /metrics")
        elif repeated or missing or len(ids) != counted:
            failures.append(
                f"request lines are not one per request (repeated ids {repeated[:5]}, missing {missing[:5]}, "
                f"{len(ids)} distinct for {counted})"
            )
        return report, failures


class Soak:
    def __init__(
        self, root: Path, config: Path, sock: Path, sims: list[str], args: argparse.Namespace
    ) -> None:
        self.root, self.config, self.sock, self.log = root, config, sock, root / "daemon.log"
        self.sims = sims  # each simulator's origin, for its /_sim/ control endpoints
        self.duration: float = args.duration
        self.clients: int = args.clients
        self.seed: int = args.seed
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.log_mark = 0  # where the running daemon's lines start in the log
        self.audit = LogAudit(root, config, args.log_backups)  # before the daemon: it misses no line
        self.requests_counted: int | None = None  # by the daemon's /metrics, at the end
        try:
            self.daemon = start_daemon(root, config, sock, self.log)
        except BaseException:
            self.audit.stop()
            raise
        self.samples: dict[str, tuple[int, float, int]] = {}  # when -> (pid, RSS in MB, open files)
        self.stop_at = 0.0  # trio clock; set when the load starts
        self.alive_at_end = ""
        self.interrupted = False

    def sample(self, when: str) -> None:
        with contextlib.suppress(OSError):
            d = self.daemon
            self.samples[when] = (d.proc.pid, d.rss_mb()[0], d.open_files())

    def log_tail(self, lines: int = 30) -> str:
        """The running daemon's last stderr lines, then the exceptions in all of them (the tail of a
        nested traceback may not show its cause)."""
        with self.log.open("rb") as f:
            f.seek(self.log_mark)
            text = f.read().decode(errors="replace").splitlines()
        causes = dict.fromkeys(b for line in text if EXCEPTION_LINE.match(b := line.lstrip(" |+-")))
        return "\n".join(
            [*(f"    {line}" for line in text[-lines:]), *(f"  exception: {c[:200]}" for c in causes)]
        )

    def child_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def remaining(self) -> float:
        return max(0.0, self.stop_at - trio.current_time())

    # ------------------------------------------------------------------ the daemon and the providers

    async def watch(self) -> None:
        """Restart the daemon whenever it dies, after printing its last lines."""
        while True:
            await trio.sleep(0.2)
            code = self.daemon.proc.poll()
            if code is None:
                continue
            self.tally.restarts += 1
            print(f"!! the daemon exited with {code}; its last stderr lines:\n{self.log_tail()}", flush=True)
            self.log_mark = self.log.stat().st_size
            self.daemon = await trio.to_thread.run_sync(
                start_daemon, self.root, self.config, self.sock, self.log
            )
            print(f"!! daemon restarted (pid {self.daemon.proc.pid})", flush=True)

    async def faults(self) -> None:
        """Queue a random fault for about FAULT_RATE of the chat requests each provider receives.

        Paced by what each simulator saw, not by what clients sent: a cooling provider gets no
        traffic, so faults queued for it would pile up and hit its next requests all at once.
        """
        rng = self.child_rng()
        seen = [0] * len(self.sims)
        async with httpx.AsyncClient(timeout=10) as control:
            while trio.current_time() < self.stop_at:
                await trio.sleep(0.5)
                for i, sim in enumerate(self.sims):
                    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                        count = (await control.get(f"{sim}/_sim/stats")).json()["chat_requests"]
                        new, seen[i] = count - seen[i], count
                        self.tally.upstream_requests += new
                        due = sum(rng.random() < FAULT_RATE for _ in range(new))
                        queued = (await control.post(f"{sim}/_sim/faults", json={"push": []})).json()[
                            "queued"
                        ]
                        batch = [random_fault(rng) for _ in range(min(due, MAX_QUEUED - queued))]
                        if batch:
                            await control.post(f"{sim}/_sim/faults", json={"push": batch})
                            self.tally.faults.update(
                                f"{f['kind']} {f.get('status', '')}".strip() for f in batch
                            )

    # ------------------------------------------------------------------ normal clients

    async def normal_client(self) -> None:
        rng = self.child_rng()
        limits = httpx.Limits(max_keepalive_connections=2)
        async with httpx.AsyncClient(timeout=HANG_S + 10, limits=limits) as http:
            while trio.current_time() < self.stop_at:
                if rng.random() < 0.3:  # a session asks 1-4 times, some at once: about half the requests
                    await self.socket_session(rng)
                else:
                    await self.http_request(http, rng)
                await trio.sleep(rng.uniform(0.1, 0.6))

    async def timed(self, client: str, ask: Callable[[], Awaitable[tuple[str, str]]]) -> str:
        """Run one request under the hang bound, record its outcome and return it."""
        outcome, detail = "hang", f"no end within {HANG_S:.0f} s"
        with trio.move_on_after(HANG_S):
            try:
                outcome, detail = await ask()
            except Exception as e:
                outcome, detail = failure(e)
        self.tally.record(client, outcome, detail)
        return outcome

    async def socket_session(self, rng: random.Random) -> None:
        """One connection for a few requests, some of them concurrent: how an editor uses the socket."""
        n = rng.randint(1, 4)
        connected = False
        with trio.move_on_after(HANG_S * (n + 1)) as scope:
            try:
                async with open_client(self.daemon.socket) as client:
                    connected = True
                    for _ in range(n):
                        if trio.current_time() >= self.stop_at:
                            break
                        outcomes: list[str] = []
                        async with trio.open_nursery() as nursery:
                            for _ in range(rng.choice((1, 1, 2, 3))):
                                nursery.start_soon(self.socket_chat, client, rng.choice(PROMPTS), outcomes)
                        if "dropped" in outcomes or "unavailable" in outcomes:
                            break  # the connection is gone
                        await trio.sleep(rng.uniform(0.05, 0.3))
            except Exception as e:
                if not connected:  # else it was the end of a request, recorded with it
                    outcome, detail = failure(e)
                    self.tally.record("socket", outcome, f"handshake: {detail}")
        if scope.cancelled_caught and not connected:
            self.tally.record("socket", "hang", "no welcome from the daemon")

    async def socket_chat(self, client: AsyncClient, prompt: str, outcomes: list[str]) -> None:
        async def ask() -> tuple[str, str]:
            text, finished, error = "", False, None
            async for e in client.chat(MODEL, prompt):
                if isinstance(e, TextEvent):
                    text += e.text
                elif isinstance(e, DoneEvent):
                    finished = True
                elif isinstance(e, ErrorEvent):
                    error = e.kind
            return judge(text, finished, error)

        outcomes.append(await self.timed("socket", ask))

    async def http_request(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        dialect, stream = rng.choice(("openai", "anthropic")), rng.random() < 0.6
        prompt = rng.choice(PROMPTS)
        base = f"http://{self.daemon.http}"
        if dialect == "openai":
            url, headers = f"{base}/v1/chat/completions", {"authorization": f"Bearer {self.daemon.token}"}
            body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
        else:
            url = f"{base}/v1/messages"
            headers = {"x-api-key": self.daemon.token, "anthropic-version": "2023-06-01"}
            body = {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": prompt}]}
        body["stream"] = stream

        async def ask() -> tuple[str, str]:
            async with http.stream("POST", url, json=body, headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    return "error", f"{dialect} {r.status_code} {error_kind(r.content)}"
                if not stream:
                    return judge_whole(dialect, json.loads(await r.aread()))
                text, finished, error = "", False, None
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        finished = True
                        continue
                    piece, done, err = sse_piece(dialect, json.loads(line[6:]))
                    text, finished, error = text + piece, finished or done, error or err
                return judge(text, finished, error)

        await self.timed(f"{dialect}{' stream' if stream else ''}", ask)

    # ------------------------------------------------------------------ hostile clients

    async def hostile_clients(self) -> None:
        kinds: dict[str, Callable[[random.Random, Case], Awaitable[str]]] = {
            "garbage socket": self.garbage_socket,
            "garbage http": self.garbage_http,
            "odd method": self.odd_method,
            "early close socket": self.early_close_socket,
            "early close http": self.early_close_http,
            "stuck reader socket": self.stuck_reader_socket,
            "stuck reader http": self.stuck_reader_http,
            "deep json": self.deep_json,
            "deep msgpack": self.deep_msgpack,
            "cancel midway": self.cancel_midway,
        }
        async with trio.open_nursery() as nursery:
            while trio.current_time() < self.stop_at:
                await trio.sleep(self.rng.uniform(*HOSTILE_GAP))
                kind = self.rng.choice(list(kinds))
                nursery.start_soon(self.hostile, kind, kinds[kind], self.child_rng())

    async def hostile(
        self, kind: str, run: Callable[[random.Random, Case], Awaitable[str]], rng: random.Random
    ) -> None:
        case, result = Case(), f"gave up after {HANG_S:.0f} s"
        with trio.move_on_after(HANG_S):
            try:
                result = await run(rng, case)
            except Exception as e:
                outcome, detail = failure(e)
                result = "daemon unavailable" if outcome == "unavailable" else detail.split(":")[0]
        self.tally.hostile_result(kind, case.variant, result)

    async def unix(self, rcvbuf: int = 0) -> trio.SocketStream:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.connect(str(self.daemon.socket))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def tcp(self, rcvbuf: int = 0) -> trio.SocketStream:
        host, _, port = self.daemon.http.rpartition(":")
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.connect((host, int(port)))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    def http_bytes(self, target: str, body: bytes, *, method: str = "POST", token: bool = True) -> bytes:
        auth = f"authorization: Bearer {self.daemon.token}\r\n" if token else ""
        head = f"{method} {target} HTTP/1.1\r\nhost: {self.daemon.http}\r\n{auth}"
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        return head.encode() + body

    def chat_body(self, rng: random.Random, stream: bool = True) -> tuple[str, bytes]:
        if rng.random() < 0.5:
            body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            return "/v1/chat/completions", json.dumps(body).encode()
        body = {
            "model": MODEL,
            "stream": stream,
            "max_tokens": 512,
            "messages": [{"role": "user", "content": "hi"}],
        }
        return "/v1/messages", json.dumps(body).encode()

    async def garbage_socket(self, rng: random.Random, case: Case) -> str:
        variant = rng.choice(
            ("random bytes", "huge length", "random body", "not a map", "unknown type", "partial")
        )
        payload = {
            "random bytes": rng.randbytes(rng.randint(1, 512)),
            "huge length": b"\xff\xff\xff\xff" + rng.randbytes(16),
            "random body": struct.pack(">I", 64) + rng.randbytes(64),
            "not a map": encode_raw(12345),
            "unknown type": encode_raw({"type": "nope", "id": 1}),
            "partial": struct.pack(">I", 100) + rng.randbytes(10),
        }[variant]
        if variant in ("not a map", "unknown type") and rng.random() < 0.5:
            variant += " after hello"
            payload = encode_frame(Hello(version=PROTOCOL_VERSION, client="soak")) + payload
        case.variant = variant
        stream = await self.unix()
        async with stream:
            await stream.send_all(payload)
            data, end = await read_for(stream, rng.uniform(0.5, 5))
        return f"{frames_seen(data)}, {end}"

    async def garbage_http(self, rng: random.Random, case: Case) -> str:
        variant = rng.choice(
            ("random bytes", "bad headers", "huge header", "partial head", "short body", "bad chunks")
        )
        # Past the host and token checks where it matters, so the daemon's parsing is what gets tried.
        post = self.http_bytes("/v1/messages", b"")
        payload = {
            "random bytes": rng.randbytes(rng.randint(1, 2048)),
            "bad headers": b"GET /health HTTP/1.1\r\n" + rng.randbytes(200) + b"\r\n\r\n",
            "huge header": b"GET /health HTTP/1.1\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n",
            "partial head": post[: rng.randint(1, len(post) - 1)],
            "short body": post.replace(b"content-length: 0", b"content-length: 99999999") + b"{}",
            "bad chunks": post.replace(b"content-length: 0", b"transfer-encoding: chunked") + b"zz\r\nhi\r\n",
        }[variant]
        case.variant = variant
        stream = await self.tcp()
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(payload)
            data, end = await read_for(stream, rng.uniform(0.5, 5))
        return f"{http_status(data)}, {end}"

    async def odd_method(self, rng: random.Random, case: Case) -> str:
        method = rng.choice(("HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE", "BREW", "PROPFIND", "GET"))
        path = rng.choice(
            ("/", "/health", "/v1/models", "/v1/chat/completions", "/v1/messages", "/%00", "/v1/../x")
        )
        case.variant = f"{method} {path}"
        stream = await self.tcp()
        async with stream:
            await stream.send_all(self.http_bytes(path, b"", method=method, token=rng.random() < 0.5))
            data, _ = await read_for(stream, 5)
        return http_status(data)

    async def early_close_socket(self, rng: random.Random, case: Case) -> str:
        hello = encode_frame(Hello(version=PROTOCOL_VERSION, client="soak"))
        case.variant = variant = rng.choice(
            ("after hello+status", "after hello", "after chat", "mid answer", "mid frame")
        )
        chat = chat_frame(1)
        stream = await self.unix()
        async with stream:
            if variant == "after hello+status":
                await stream.send_all(hello + encode_frame(StatusQuery(id=1)))
            elif variant == "after hello":
                await stream.send_all(hello)
            elif variant == "after chat":
                await stream.send_all(hello + chat)
            elif variant == "mid answer":
                await stream.send_all(hello + chat)
                await read_for(stream, rng.uniform(0.01, 1.0), limit=rng.randint(1, 3000))
            else:
                await stream.send_all(hello + chat[: rng.randint(1, len(chat) - 1)])
        return "closed by us"

    async def early_close_http(self, rng: random.Random, case: Case) -> str:
        case.variant = variant = rng.choice(("mid stream", "before reading", "mid body"))
        target, body = self.chat_body(rng, stream=variant == "mid stream")
        request = self.http_bytes(target, body)
        stream = await self.tcp()
        async with stream:
            if variant == "mid body":
                await stream.send_all(request[: len(request) - rng.randint(1, len(body))])
            else:
                await stream.send_all(request)
            if variant == "mid stream":
                await read_for(stream, rng.uniform(0.01, 1.0), limit=rng.randint(1, 2000))
        return "closed by us"

    def stuck_for(self, rng: random.Random) -> float:
        # Some past the daemon's 30 s client_stall_timeout; none long after the run ends.
        return min(rng.uniform(1, 45), self.remaining() + 2)

    async def stuck_reader_socket(self, rng: random.Random, case: Case) -> str:
        n = rng.randint(1, 20)
        case.variant = f"{n} chats"
        stream = await self.unix(rcvbuf=4096)
        hello = encode_frame(Hello(version=PROTOCOL_VERSION, client="soak"))
        async with stream:
            await stream.send_all(hello + b"".join(chat_frame(i) for i in range(1, n + 1)))
            await trio.sleep(self.stuck_for(rng))
        return "closed by us"

    async def stuck_reader_http(self, rng: random.Random, case: Case) -> str:
        n = rng.randint(1, 5)
        case.variant = f"{n} pipelined"
        stream = await self.tcp(rcvbuf=4096)
        target, body = self.chat_body(rng)
        async with stream:
            await stream.send_all(self.http_bytes(target, body) * n)  # pipelined
            await trio.sleep(self.stuck_for(rng))
        return "closed by us"

    async def deep_json(self, rng: random.Random, case: Case) -> str:
        depth = rng.choice((100, 1000, 100_000))
        if rng.random() < 0.5:
            target, where = "/v1/chat/completions", "content"
            body = f'{{"model":"{MODEL}","messages":[{{"role":"user","content":{deep_json(depth, False)}}}]}}'
        else:
            target, where = "/v1/messages", "tool schema"
            tool = f'{{"name":"f","input_schema":{deep_json(depth, True)}}}'
            body = f'{{"model":"{MODEL}","max_tokens":64,"tools":[{tool}],"messages":[{{"role":"user","content":"hi"}}]}}'
        case.variant = f"{where} {depth}"
        stream = await self.tcp()
        async with stream:
            await stream.send_all(self.http_bytes(target, body.encode()))
            data, _ = await read_for(stream, 10)
        return http_status(data)

    async def deep_msgpack(self, rng: random.Random, case: Case) -> str:
        depth, where = rng.choice((100, 1000, 100_000)), rng.choice(("hello", "content", "tool schema"))
        case.variant = f"{where} {depth}"
        hello = b"" if where == "hello" else encode_frame(Hello(version=PROTOCOL_VERSION, client="soak"))
        stream = await self.unix()
        async with stream:
            await stream.send_all(hello + deep_msgpack_frame(depth, where))
            data, end = await read_for(stream, 5)
        return f"{frames_seen(data)}, {end}"

    async def cancel_midway(self, rng: random.Random, case: Case) -> str:
        after = rng.randint(0, 12)
        case.variant = f"after {after} events"
        async with open_client(self.daemon.socket) as client:
            events = cast("AsyncGenerator[StreamEvent, None]", client.chat(MODEL, "hi"))
            async with contextlib.aclosing(events):  # closing it early sends the cancel
                seen = 0
                async for _ in events:
                    seen += 1
                    if seen > after:
                        break
            # The connection must still serve after a cancel.
            await client.status()
        return "status ok"

    # ------------------------------------------------------------------ the run

    async def progress(self, started: float) -> None:
        while True:
            await trio.sleep(PROGRESS_S)
            self.sample("now")
            o = self.tally.outcomes
            print(
                f"[{trio.current_time() - started:6.0f} s] requests {sum(o.values())}: "
                + ", ".join(f"{k} {o[k]}" for k in OUTCOMES)
                + f" | hostile {sum(self.tally.hostile.values())} | restarts {self.tally.restarts}"
                + f" | RSS {self.samples['now'][1]:.1f} MB, fds {self.samples['now'][2]}",
                flush=True,
            )

    async def warm_up(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.sample("warm")

    async def final_check(self) -> None:
        """The daemon, after everything, still answers status and one complete chat."""
        with trio.move_on_after(HANG_S):
            try:
                async with open_client(self.daemon.socket) as client:
                    await client.status()
                    events = [e async for e in client.chat(MODEL, "hi")]
                text = "".join(e.text for e in events if isinstance(e, TextEvent))
                last = events[-1] if events else None
                if isinstance(last, DoneEvent) and text == TEXT:
                    self.alive_at_end = "ok"
                elif isinstance(last, ErrorEvent):
                    self.alive_at_end = f"answered with an error: {last.kind}"  # cooling at the end is fine
                else:
                    self.alive_at_end = f"FAILED: {judge(text, isinstance(last, DoneEvent), None)}"
                return
            except Exception as e:
                self.alive_at_end = f"FAILED: {failure(e)[1]}"
                return
        self.alive_at_end = "FAILED: no answer within the hang bound"

    async def on_signal(self, everything: trio.CancelScope) -> None:
        """Ctrl-C or a SIGTERM ends the run early, still with a summary and every process stopped."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                self.interrupted = True
                everything.cancel()
                return

    async def main(self) -> None:
        started = trio.current_time()
        self.stop_at = started + self.duration
        self.sample("start")
        async with trio.open_nursery() as watchers:
            watchers.start_soon(self.on_signal, watchers.cancel_scope)
            watchers.start_soon(self.watch)
            watchers.start_soon(self.progress, started)
            watchers.start_soon(self.warm_up, min(self.duration * 0.1, 120.0))
            async with trio.open_nursery() as load:
                for _ in range(self.clients):
                    load.start_soon(self.normal_client)
                load.start_soon(self.hostile_clients)
                load.start_soon(self.faults)
            await trio.sleep(1)  # let closed connections go before counting descriptors
            self.sample("end")
            await self.final_check()
            await self.count_requests()
            watchers.cancel_scope.cancel()

    async def count_requests(self) -> None:
        """The daemon's own count of the requests it served (its `/metrics`), and the log caught up to it."""
        d = self.daemon
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(f"http://{d.http}/metrics", headers={"authorization": f"Bearer {d.token}"})
            r.raise_for_status()
        except httpx.HTTPError as e:
            print(f"!! /metrics: {e!r}", flush=True)
            return
        families = text_string_to_metric_families(r.text)
        self.requests_counted = round(
            sum(
                s.value
                for f in families
                if f.name == "cm_requests"
                for s in f.samples
                if s.name.endswith("_total")
            )
        )
        await self.audit.caught_up(self.requests_counted)

    def daemon_findings(self) -> list[str]:
        """Distinct warning/error lines in its log and tracebacks in its stderr, most frequent first."""
        lines: Counter[str] = Counter()
        for entry in self.audit.lines():
            if entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                lines[f"{entry['level']} {entry.get('logger')}: {str(entry.get('msg'))[:160]}"] += 1
        for line in self.log.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line or " CRITICAL " in line:
                lines[line.split(" ", 2)[-1][:200]] += 1  # without the timestamp
            elif EXCEPTION_LINE.match(bare := line.lstrip(" |+-")):
                lines[bare[:200]] += 1
        return [f"{n:5d}x {line}" for line, n in lines.most_common(15)]

    def summary(self) -> tuple[str, bool]:
        t, o = self.tally, self.tally.outcomes
        at = self.samples
        warm, end = at.get("warm"), at.get("end")
        # Growth compares one process with itself; across a restart it says nothing (the restart fails anyway).
        growth = (end[1] - warm[1]) / warm[1] * 100 if warm and end and warm[0] == end[0] else None
        failures = [
            *(f"{o[k]} {k}" for k in ("truncated_as_complete", "hang") if o[k]),
            *([f"{t.restarts} daemon restarts"] if t.restarts else []),
            *([f"RSS grew {growth:.1f}% after the warm-up"] if growth is not None and growth >= 10 else []),
            *([f"final check {self.alive_at_end}"] if self.alive_at_end.startswith("FAILED") else []),
        ]
        out = [
            f"soak summary: {self.duration:.0f} s{' (interrupted)' if self.interrupted else ''}, "
            f"{self.clients} clients, seed {self.seed}, providers {', '.join(DIALECTS)}",
            f"  requests        {sum(o.values())} ({', '.join(f'{k} {n}' for k, n in sorted(t.sent.items()))})",
            f"  complete        {o['complete']}",
            f"  clean errors    {o['error']}"
            + "".join(f"\n      {n:5d}  {k}" for k, n in t.errors.most_common()),
            f"  truncated-as-complete  {o['truncated_as_complete']}",
            f"  hangs           {o['hang']}",
            f"  dropped         {o['dropped']} (connection ended with neither a finish nor an error)",
            f"  unavailable     {o['unavailable']} (could not connect)",
            f"  daemon restarts {t.restarts}",
            f"  faults queued   {sum(t.faults.values())} for {t.upstream_requests} upstream requests"
            f" ({sum(t.faults.values()) / max(1, t.upstream_requests):.0%}): "
            + ", ".join(f"{k} {n}" for k, n in sorted(t.faults.items())),
            f"  hostile sent    {sum(t.hostile.values())}",
        ]
        for kind, n in sorted(t.hostile.items()):
            results = t.hostile_results[kind].most_common(6)
            out.append(f"      {n:5d}  {kind}: " + "; ".join(f"{r} ({c})" for r, c in results))
        for outcome, examples in sorted(t.examples.items()):
            out += [f"  e.g. {outcome}:", *(f"      {e}" for e in examples)]
        mb = ", ".join(f"{k} {at[k][1]:.1f} MB (pid {at[k][0]})" for k in ("start", "warm", "end") if k in at)
        if growth is not None:
            mb += f"; growth after warm-up {growth:+.1f}%"
        fds = ", ".join(f"{k} {at[k][2]}" for k in ("start", "end") if k in at)
        out += [f"  RSS             {mb}", f"  open files      {fds}"]
        if t.restarts:  # request ids start again at 1 in a new daemon: nothing to match them with
            out.append("  log audit       not run (the daemon restarted)")
        else:
            report, log_failures = self.audit.findings(self.requests_counted)
            out += report
            failures += log_failures
        out.append(f"  final check     {self.alive_at_end or 'not run'}")
        findings = self.daemon_findings()
        if findings:
            out += ["  daemon log (warnings, errors, tracebacks):", *(f"    {f}" for f in findings)]
        verdict = "FAIL: " + "; ".join(failures) if failures else "PASS"
        out.append(f"INTERRUPTED, so far {verdict}" if self.interrupted else verdict)
        return "\n".join(out), bool(failures)


def chat_frame(rid: int) -> bytes:
    return encode_raw(
        {
            "type": "chat",
            "id": rid,
            "model": MODEL,
            "request": {"messages": [{"role": "user", "content": "hi"}]},
        }
    )


def encode_raw(value: Any) -> bytes:
    """A frame around any msgpack value, valid for the protocol or not."""
    body = msgspec.msgpack.encode(value)
    return struct.pack(">I", len(body)) + body


def error_kind(body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        return str(error.get("code") or error.get("type"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:60].decode(errors="replace")


def judge_whole(dialect: str, body: dict[str, Any]) -> tuple[str, str]:
    """A non-streaming answer: its text, and whether it says it finished."""
    if dialect == "openai":
        choice = body["choices"][0]
        return judge(choice["message"].get("content") or "", bool(choice.get("finish_reason")), None)
    text = "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
    return judge(text, bool(body.get("stop_reason")), None)


def sse_piece(dialect: str, data: dict[str, Any]) -> tuple[str, bool, str | None]:
    """One SSE data payload: (its text, whether it finishes the answer, its error kind)."""
    if dialect == "openai":
        if "error" in data:
            return "", False, str(data["error"].get("code") or data["error"].get("type"))
        choices = data.get("choices") or []
        text = "".join(c.get("delta", {}).get("content") or "" for c in choices)
        return text, any(c.get("finish_reason") for c in choices), None
    kind = data.get("type")
    if kind == "error":
        return "", False, str(data["error"].get("type"))
    if kind == "content_block_delta" and data["delta"].get("type") == "text_delta":
        return data["delta"]["text"], False, None
    finished = kind == "message_stop" or (kind == "message_delta" and bool(data["delta"].get("stop_reason")))
    return "", finished, None


def config_text(upstreams: list[str], args: argparse.Namespace) -> str:
    ids = [f"sim-{d}" for d in DIALECTS]
    lines = [f"provider_priority = {json.dumps(ids)}", "[failover]"]
    lines += ["first_token_timeout = 3.0", "idle_timeout = 3.0"]  # stalls cost seconds, not minutes
    lines += ["[http]", 'listen = "127.0.0.1:0"']
    lines += ["[logging]", 'format = "json"', f"max_bytes = {args.log_max_bytes}"]
    lines.append(f"backup_count = {args.log_backups}")
    for pid, dialect, url in zip(ids, DIALECTS, upstreams, strict=True):
        lines += [f"[providers.{pid}]", f'api = "{dialect}"', f'base_url = "{url}"', 'api_key = "sk-soak"']
        lines.append(f'models = ["{MODEL}"]')
    return "\n".join(lines) + "\n"


def origin(base_url: str) -> str:
    u = httpx.URL(base_url)
    return f"{u.scheme}://{u.host}:{u.port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    parser.add_argument(
        "--clients", type=int, default=6, help="normal clients at once (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for every random choice (default: random)"
    )
    parser.add_argument(
        "--log-max-bytes",
        type=int,
        default=64 * 1024,
        help="the daemon's log rotates past this size; small, so a run rotates often (default: %(default)s)",
    )
    parser.add_argument(
        "--log-backups", type=int, default=3, help="rotated log files kept (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    print(f"soak: {args.duration:.0f} s, {args.clients} clients, seed {args.seed}", flush=True)
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workspace())
        upstreams = [stack.enter_context(simulator(root, chunk_delay=0.01, dialect=d)) for d in DIALECTS]
        config = root / "config.toml"
        config.write_text(config_text(upstreams, args))
        sock = stack.enter_context(short_socket_path())
        soak = Soak(root, config, sock, [origin(u) for u in upstreams], args)
        t = time.monotonic()
        try:
            trio.run(soak.main)
        except KeyboardInterrupt:
            soak.interrupted = True
        finally:
            _stop(soak.daemon.proc)
            soak.audit.stop()
            report, failed = soak.summary()
            print(f"{report}\n  [{time.monotonic() - t:.1f} s]", flush=True)
    return 130 if soak.interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
