"""The processes a benchmark measures: a simulated provider and a daemon, each in its own process.

Each runs with private XDG dirs under a temp dir, so nothing touches the user's
config, state or running daemon. Only the processes started here are stopped here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MODEL = "bench-model"
TEXT = (
    "Failover keeps every request alive: when one provider breaks, the same request continues on the "
    "next one, and the caller receives one complete answer with nothing lost and nothing repeated."
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: Path
    http: str  # host:port
    token: str

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon process so far (from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set size in MB."""
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        )
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024

    def open_files(self) -> int:
        """Descriptors the daemon holds open now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(root))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        d = root / var.lower()
        d.mkdir(mode=0o700, exist_ok=True)
        env[var] = str(d)
    for var in ("COMBINED_MODELS_SOCKET", "COMBINED_MODELS_CONFIG", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(var, None)
        env.pop(var.upper(), None)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate `proc` (one of ours) and wait for it; kill it if it does not go within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def simulator(
    root: Path, *, chunk_delay: float = 0.0, dialect: str = "openai", faults: Sequence[str] = ()
) -> Iterator[str]:
    """A simulated provider (OpenAI dialect unless told) in its own process; yields its base URL.

    `faults`: JSON faults (the simulator's `--fault`) it applies to every request, in order.
    """
    cmd = [sys.executable, "-m", "combined_models.simulator", "--models", MODEL, "--text", TEXT]
    cmd += ["--chunk-delay", str(chunk_delay), "--dialect", dialect]
    for fault in faults:
        cmd += ["--fault", fault]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=_env(root))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator exited before listening")
        yield str(json.loads(line)["base_url"])
    finally:
        _stop(proc)


@contextlib.contextmanager
def byte_proxy(root: Path, upstream: str) -> Iterator[str]:
    """The do-nothing trio proxy of `benchmarks._proxy` in front of `upstream`; yields its host:port."""
    target = upstream.removeprefix("http://").split("/", 1)[0]
    cmd = [sys.executable, "-m", "benchmarks._proxy", target]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=_env(root), cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the byte proxy exited before listening")
        yield f"127.0.0.1:{int(line)}"
    finally:
        _stop(proc)


def start_daemon(root: Path, config: Path, sock: Path, log: Path) -> Daemon:
    """`cmctl serve` with `config` in its own process, its output appended to `log`; returns once it answers."""
    from combined_models.client.sync import Client, DaemonUnavailable

    env = _env(root)
    cmd = [sys.executable, "-m", "combined_models.client.cli", "serve", "--config", str(config)]
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        # Its own session: a Ctrl-C meant for the benchmark must not stop it behind the benchmark's back.
        proc = subprocess.Popen(
            [*cmd, "--socket", str(sock)], env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {log.read_text(errors='replace')[-500:]}")
            try:
                with Client(sock, timeout=5) as c:
                    http = c.status().daemon.http
                break
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        token = (Path(env["XDG_STATE_HOME"]) / "combined-models" / "http-token").read_text().strip()
    except BaseException:
        _stop(proc)
        raise
    return Daemon(proc, sock, http, token)


@contextlib.contextmanager
def short_socket_path() -> Iterator[Path]:
    """A socket path in a fresh short temp dir (Unix socket paths are limited to ~100 bytes)."""
    sock = Path(tempfile.mkdtemp(prefix="cmb-")) / "d.sock"
    try:
        yield sock
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)  # with the daemon's lock file beside the socket


@contextlib.contextmanager
def daemon(root: Path, upstream: str) -> Iterator[Daemon]:
    """`cmctl serve` in its own process: two providers on the same upstream, one combined model."""
    lines = ['provider_priority = ["a", "b"]', "[http]", 'listen = "127.0.0.1:0"']
    for pid in ("a", "b"):
        lines += [f"[providers.{pid}]", 'api = "openai"', f'base_url = "{upstream}"', 'api_key = "sk-bench"']
        # Room for every stream the load benchmark runs at once (the default is 32 per provider).
        lines += [f'models = ["{MODEL}"]', "max_concurrency = 600"]
    config = root / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    with short_socket_path() as sock:
        d = start_daemon(root, config, sock, root / "daemon.log")
        try:
            yield d
        finally:
            _stop(d.proc)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cm-bench-") as d:
        yield Path(d)
