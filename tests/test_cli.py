"""`cmctl` as a user runs it: real processes, real sockets, exit codes of the contract."""

from __future__ import annotations

import functools
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from combined_models.simulator import Fault, Simulator

from .conftest import ANSWER, MODEL, config_for, unix_only

CMCTL = [sys.executable, "-m", "combined_models.client.cli"]


async def cmctl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [*CMCTL, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )


def write_config(path: Path, sims: dict[str, Simulator]) -> Path:
    lines = [
        f"provider_priority = {json.dumps(list(sims))}",
        "[failover]",
        "first_token_timeout = 5.0",
        "idle_timeout = 5.0",
        "retry_backoff = 0.01",
    ]
    for pid, sim in sims.items():
        lines += [
            f"[providers.{pid}]",
            'api = "openai"',
            f'base_url = "{sim.base_url}"',
            f'api_key = "sk-cli-{pid}-0123456789"',
            f"models = {json.dumps(list(sim.models))}",
        ]
    lines += ["[http]", 'listen = "127.0.0.1:0"']
    config_for(sims)  # the same shape the in-process tests use must parse
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def sims_running(names: tuple[str, ...] = ("first", "second")) -> AsyncIterator[dict[str, Simulator]]:
    async with trio.open_nursery() as nursery:
        sims = {}
        for name in names:
            sims[name] = Simulator(models=[MODEL], text=ANSWER, name=name)
            await nursery.start(sims[name].run)
        yield sims
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def daemon(config: Path, sock: Path) -> AsyncIterator[trio.Process]:
    """`cmctl serve` in the background, until it answers; SIGTERM at the end."""
    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            trio.run_process,
            [*CMCTL, "serve", "--config", str(config), "--socket", str(sock)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc: trio.Process = await nursery.start(serve)
        with trio.fail_after(20):
            while (await cmctl("status", "--socket", str(sock))).returncode != 0:  # noqa: ASYNC110 (polls another process)
                await trio.sleep(0.05)
        yield proc
        proc.terminate()
        with trio.fail_after(10):
            await proc.wait()


async def test_no_daemon_exits_3(short_dir: Path) -> None:
    for cmd in (["status"], ["models", "--json"], ["chat", MODEL, "hi"], ["stop"]):
        r = await cmctl(*cmd, "--socket", str(short_dir / "none.sock"))
        assert r.returncode == 3, (cmd, r.stderr)
        assert b"no daemon" in r.stderr


async def test_bad_config_exits_2_naming_file_and_key(short_dir: Path) -> None:
    cfg = short_dir / "bad.toml"
    for text, key in [
        ("provider_priority = 7\n", b"provider_priority"),
        ('[providers.x]\napi = "openai"\nbase_url = "ftp://x"\n', b"providers.x.base_url"),
        ("[failover]\nidle_timout = 3\n", b"idle_timout"),
        ("this is = not toml [", b"not valid TOML"),
    ]:
        cfg.write_text(text)
        r = await cmctl("serve", "--config", str(cfg), "--socket", str(short_dir / "s.sock"))
        assert r.returncode == 2, r.stderr
        assert key in r.stderr and str(cfg).encode() in r.stderr
        assert b"Traceback" not in r.stderr


async def test_usage_errors_exit_2() -> None:
    assert (await cmctl()).returncode == 2
    assert (await cmctl("chat")).returncode == 2
    assert (await cmctl("frobnicate")).returncode == 2
    r = await cmctl("chat", MODEL, "--max-tokens", "0", "--socket", "/nonexistent/x.sock")
    assert r.returncode == 2 and b"max-tokens" in r.stderr


async def test_help_explains_every_command() -> None:
    r = await cmctl("--help")
    assert r.returncode == 0
    for name in (b"serve", b"start", b"stop", b"status", b"models", b"chat", b"demo", b"Exit codes"):
        assert name in r.stdout
    for name in ("serve", "start", "stop", "status", "models", "chat", "demo"):
        r = await cmctl(name, "--help")
        assert r.returncode == 0 and b"--socket" in r.stdout, name


async def test_serve_status_models_chat_json(short_dir: Path) -> None:
    async with sims_running() as sims:
        sock = short_dir / "d.sock"
        async with daemon(write_config(short_dir / "c.toml", sims), sock):
            mode = stat.S_IMODE(sock.stat().st_mode)
            assert mode == 0o600

            r = await cmctl("status", "--json", "--socket", str(sock))
            st = json.loads(r.stdout)
            assert [p["id"] for p in st["providers"]] == ["first", "second"]
            assert all(p["state"] == "ready" and p["key_source"] == "config file" for p in st["providers"])
            assert b"sk-cli" not in r.stdout

            r = await cmctl("status", "--socket", str(sock))
            assert r.returncode == 0 and b"PROVIDER" in r.stdout and b"first" in r.stdout

            r = await cmctl("models", "--json", "--socket", str(sock))
            models = json.loads(r.stdout)["models"]
            assert models == [
                {
                    "id": MODEL,
                    "explicit": False,
                    "members": [
                        {"provider": "first", "model": MODEL},
                        {"provider": "second", "model": MODEL},
                    ],
                }
            ]

            sims["first"].push_fault(Fault(kind="reset_after", after_chunks=3))
            r = await cmctl("chat", MODEL, "tell me", "--json", "--socket", str(sock))
            assert r.returncode == 0, r.stderr
            events = [json.loads(line) for line in r.stdout.splitlines()]
            assert events[0] == {"type": "provider", "provider": "first", "model": MODEL}
            assert "".join(e["text"] for e in events if e["type"] == "text") == ANSWER
            failover = next(e for e in events if e["type"] == "failover")
            assert failover["from"] == "first" and failover["after_output"] is True
            assert events[-1]["type"] == "done" and events[-1]["provider"] == "second"

            # prompt from stdin, human output: the text on stdout, the rest on stderr
            r = await cmctl("chat", MODEL, "--socket", str(sock), stdin=b"from stdin")
            assert r.returncode == 0 and r.stdout.decode().strip() == ANSWER
            assert b"done: first" in r.stderr

            sims["first"].push_fault(Fault(kind="status", status=400, message="bad temperature"))
            r = await cmctl("chat", MODEL, "x", "--json", "--socket", str(sock))
            assert r.returncode == 1
            assert json.loads(r.stdout.splitlines()[-1])["kind"] == "bad_request"


async def test_a_second_daemon_on_the_same_socket_refuses_and_leaves_the_first(short_dir: Path) -> None:
    async with sims_running() as sims:
        sock = short_dir / "d.sock"
        cfg = write_config(short_dir / "c.toml", sims)
        async with daemon(cfg, sock) as first:
            r = await cmctl("serve", "--config", str(cfg), "--socket", str(sock))
            assert r.returncode == 1
            assert b"already serving" in r.stderr and b"Traceback" not in r.stderr
            st = json.loads((await cmctl("status", "--json", "--socket", str(sock))).stdout)
            assert st["daemon"]["pid"] == first.pid


async def test_a_stale_socket_from_a_killed_daemon_is_replaced(short_dir: Path) -> None:
    sock = short_dir / "d.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))  # bound, never listening, then closed: what a SIGKILLed daemon leaves
    dead.close()
    assert sock.exists()
    async with sims_running() as sims, daemon(write_config(short_dir / "c.toml", sims), sock):
        r = await cmctl("chat", MODEL, "hi", "--json", "--socket", str(sock))
        assert r.returncode == 0


async def test_start_and_stop(short_dir: Path) -> None:
    async with sims_running() as sims:
        sock = short_dir / "d.sock"
        cfg = write_config(short_dir / "c.toml", sims)
        r = await cmctl("start", "--config", str(cfg), "--socket", str(sock))
        assert r.returncode == 0, r.stderr
        assert b"started" in r.stdout
        try:
            r = await cmctl("start", "--config", str(cfg), "--socket", str(sock))
            assert r.returncode == 0 and b"already running" in r.stdout
            r = await cmctl("chat", MODEL, "hi", "--socket", str(sock))
            assert r.returncode == 0 and r.stdout.decode().strip() == ANSWER
        finally:
            r = await cmctl("stop", "--socket", str(sock))
        assert r.returncode == 0, r.stderr
        assert not sock.exists()
        assert (await cmctl("status", "--socket", str(sock))).returncode == 3


async def test_start_with_a_bad_config_reports_it(short_dir: Path) -> None:
    cfg = short_dir / "bad.toml"
    cfg.write_text("min_providers = 0\n")
    r = await cmctl("start", "--config", str(cfg), "--socket", str(short_dir / "d.sock"))
    assert r.returncode == 2
    assert b"min_providers" in r.stderr


@pytest.mark.parametrize("name", ["daemon.log", "daemon.out"])
async def test_start_refuses_a_symlinked_log_file(short_dir: Path, user_dirs: Path, name: str) -> None:
    elsewhere = short_dir / "elsewhere"
    elsewhere.mkdir()
    logs = Path(os.environ["XDG_STATE_HOME"]) / "combined-models" / "log"
    logs.mkdir(mode=0o700, parents=True)
    (logs / name).symlink_to(elsewhere / "planted.log")
    cfg = short_dir / "c.toml"
    cfg.write_text("")
    r = await cmctl("start", "--config", str(cfg), "--socket", str(short_dir / "d.sock"))
    assert r.returncode == 2, r.stderr
    assert b"symbolic link" in r.stderr and b"Traceback" not in r.stderr
    assert list(elsewhere.iterdir()) == []  # nothing written through the link


@pytest.mark.skipif(sys.platform != "linux", reason="socket path limit differs")
@unix_only
async def test_a_too_long_socket_path_is_a_clear_error(short_dir: Path) -> None:
    cfg = short_dir / "c.toml"
    cfg.write_text("")
    long = short_dir / ("x" * 120) / "d.sock"
    r = await cmctl("serve", "--config", str(cfg), "--socket", str(long))
    assert r.returncode == 2 and b"longer than the OS allows" in r.stderr


def test_cmctl_imports_stay_light() -> None:
    """`cmctl status` must start fast: no trio, httpx or daemon on import."""
    code = (
        "import sys, combined_models.client.cli; "
        "print(sorted(m for m in ('trio', 'httpx', 'anyio', 'combined_models.daemon') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    )
    assert out.stdout.strip() == "[]"


async def test_models_explain_and_reload(short_dir: Path) -> None:
    async with sims_running() as sims:
        sock = short_dir / "d.sock"
        async with daemon(write_config(short_dir / "c.toml", sims), sock):
            r = await cmctl("models", "--explain", MODEL, "--socket", str(sock))
            assert r.returncode == 0, r.stderr
            out = r.stdout.decode()
            assert f"first/{MODEL}" in out and f"second/{MODEL}" in out and "provider_priority" in out
            r = await cmctl("models", "--explain", "nope", "--socket", str(sock))
            assert r.returncode == 1 and b"no combined model" in r.stderr
            r = await cmctl("reload", "--socket", str(sock))
            assert r.returncode == 0 and MODEL.encode() in r.stdout


async def test_login_github_copilot_runs_the_device_flow_and_the_daemon_uses_the_token(
    short_dir: Path,
) -> None:
    import stat as stat_mod

    from combined_models.client.login import login_github_copilot
    from combined_models.daemon.credentials import copilot_token_path

    said: list[str] = []
    async with trio.open_nursery() as nursery:
        sim = Simulator(dialect="copilot", models=["claude-sonnet-4.5"], text=ANSWER, copilot_poll_interval=1)
        await nursery.start(sim.run)
        code = await trio.to_thread.run_sync(
            lambda: login_github_copilot(sim.origin, sim.origin, sleep=lambda s: None, say=said.append)
        )
        assert code == 0, said
        assert any("enter the code" in s for s in said)
        path = copilot_token_path()
        assert stat_mod.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["oauth_token"]

        cfg = short_dir / "c.toml"
        cfg.write_text(
            f'[providers.github-copilot]\nbase_url = "{sim.origin}"\nauth_url = "{sim.origin}"\n'
            "[http]\nenabled = false\n"
        )
        sock = short_dir / "d.sock"
        async with daemon(cfg, sock):
            r = await cmctl("chat", "github-copilot/claude-sonnet-4.5", "hi", "--socket", str(sock))
            assert r.returncode == 0, r.stderr
            assert r.stdout.decode().strip() == ANSWER
            st = json.loads((await cmctl("status", "--json", "--socket", str(sock))).stdout)
            assert st["providers"][0]["key_source"] == "cmctl login"
        nursery.cancel_scope.cancel()


def test_the_default_runtime_dir_is_private_and_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    from combined_models.daemon.server import claim_endpoint
    from combined_models.paths import PathError, runtime_dir, socket_path

    sock = socket_path()
    assert sock.parent == runtime_dir()
    with claim_endpoint(sock):
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert not sock.exists()
    sock.parent.chmod(0o755)
    with claim_endpoint(sock):  # too open: tightened again
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    if os.getuid() == 0:  # only root can hand the dir to someone else
        os.chown(sock.parent, 12345, 12345)
        with pytest.raises(PathError, match="not to you"), claim_endpoint(sock):
            pass
