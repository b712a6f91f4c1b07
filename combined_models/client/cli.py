"""`cmctl`: run, inspect and use the combined-models daemon.

Exit codes: 0 ok, 1 the request failed, 2 usage or config error, 3 daemon not reachable.
Heavy modules (trio, httpx, the daemon) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO, NoReturn

import msgspec

from .. import __version__, service
from ..chat import (
    DoneEvent,
    ErrorEvent,
    FailoverEvent,
    ProviderEvent,
    StreamEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from ..paths import (
    DAEMON_LOG,
    DAEMON_OUT,
    ENV_CONFIG,
    ENV_SOCKET,
    PathError,
    config_file,
    log_dir,
    open_private_log,
    socket_path,
)
from ..protocol import DaemonInfo
from .render import front_door_off, render_models, render_status
from .sync import Client, ConnectionClosed, DaemonUnavailable, RequestFailed

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


class UsageError(Exception):
    pass


def _socket(args: argparse.Namespace) -> Path:
    return Path(args.socket).expanduser() if args.socket else socket_path()


def _config(args: argparse.Namespace) -> Path:
    return Path(args.config).expanduser() if getattr(args, "config", None) else config_file()


def _err(msg: str) -> None:
    print(f"cmctl: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- serve / start / stop


def cmd_serve(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config

    path = _config(args)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        _err(f"bad config: {e}")
        return EXIT_USAGE
    from ..daemon import run_daemon
    from ..daemon.server import AlreadyRunning
    from ..transport import TransportError

    try:
        run_daemon(cfg, _socket(args), path)
    except AlreadyRunning as e:
        _err(f"{e}; not starting a second one (stop it with `cmctl stop`)")
        return EXIT_FAILED
    except (PathError, TransportError) as e:
        _err(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _daemon_pid(sock: Path) -> int | None:
    try:
        with Client(sock, timeout=5) as c:
            return c.welcome.pid if c.welcome else None
    except (DaemonUnavailable, ConnectionClosed):
        return None


def cmd_start(args: argparse.Namespace) -> int:
    sock = _socket(args)
    pid = _daemon_pid(sock)
    if pid is not None:
        print(f"already running (pid {pid}) on {sock}")
        return _front_door_check(sock)
    out_path = log_dir() / DAEMON_OUT
    cmd = [sys.executable, "-m", "combined_models.client.cli", "serve", "--socket", str(sock)]
    if args.config:
        cmd += ["--config", str(_config(args))]
    with open_private_log(out_path) as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = out_path.read_text(errors="replace").splitlines()[-5:]
            _err("the daemon exited at once:\n  " + "\n  ".join(tail))
            return code if code in (EXIT_USAGE, EXIT_FAILED) else EXIT_FAILED
        pid = _daemon_pid(sock)
        if pid is not None:
            print(f"started (pid {pid}) on {sock}; log: {log_dir() / DAEMON_LOG}")
            return _front_door_check(sock)
        time.sleep(0.05)
    _err(
        f"the daemon did not answer within {START_TIMEOUT:.0f}s; see {out_path} and {log_dir() / DAEMON_LOG}"
    )
    return EXIT_FAILED


# ---------------------------------------------------------------- logs


def _log_lines(data: bytes, json_only: bool) -> list[str]:
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [line for line in lines if line.startswith("{")] if json_only else lines


def cmd_logs(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise UsageError("-n expects a number of lines >= 0")
    if args.json:
        from ..config import ConfigError, load_config

        try:
            fmt = load_config(_config(args)).logging.format
        except ConfigError as e:
            _err(f"bad config: {e}")
            return EXIT_USAGE
        if fmt != "json":
            raise UsageError('--json needs `format = "json"` in the [logging] table of the config')
    path = log_dir() / DAEMON_LOG
    try:
        f = open(path, "rb")  # noqa: SIM115  (reopened after a rotation while following)
    except FileNotFoundError:
        if not args.follow:
            _err(f"no log yet at {path}")
            return EXIT_FAILED
        f = None
    try:
        if f is not None:
            tail = _log_lines(f.read(), args.json)[-args.lines :] if args.lines else []
            for line in tail:
                print(line)
            sys.stdout.flush()
        if args.follow:
            _follow(path, f, args.json)
    except KeyboardInterrupt:
        pass
    finally:
        if f is not None:
            f.close()
    return EXIT_OK


def _rotated_after(path: Path, held: int) -> list[Path]:
    """The rotated files (`daemon.log.1`, ...) newer than the file whose inode is `held`, oldest first:
    two rotations between two looks leave a whole file the follower never had open."""
    backups = []
    for k in range(1, 10_000):  # bounded: far more than any backup_count
        backup = path.with_name(f"{path.name}.{k}")
        try:
            if os.stat(backup).st_ino == held:
                break
        except FileNotFoundError:
            break  # past the last one: the held file was deleted, so every backup is newer
        backups.append(backup)
    return backups[::-1]


def _follow(path: Path, current: BinaryIO | None, json_only: bool) -> None:
    """Print what is appended to `path` until Ctrl-C; after a rotation (a new file, or a shorter one)
    the rest of the old one, then the new one. Closes the file it holds when it returns."""
    partial = b""

    def emit(chunk: bytes) -> bytes:
        data, newline, rest = (partial + chunk).rpartition(b"\n")
        for line in _log_lines(data, json_only) if newline else ():
            print(line, flush=True)
        return rest

    try:
        while True:
            chunk = current.read() if current is not None else b""
            if chunk:
                partial = emit(chunk)
                continue
            time.sleep(0.2)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if (
                current is None
                or st.st_ino != os.fstat(current.fileno()).st_ino
                or st.st_size < current.tell()
            ):
                if current is not None:
                    emit(current.read())  # what was written before the rename
                    held = os.fstat(current.fileno()).st_ino
                    current.close()
                    partial = b""
                    if st.st_ino != held:  # rotated, maybe more than once since the last look
                        for newer in _rotated_after(path, held):
                            with contextlib.suppress(FileNotFoundError), open(newer, "rb") as f:
                                emit(f.read())
                partial = b""
                try:
                    current = open(path, "rb")  # noqa: SIM115  (closed at the next rotation, or at exit)
                except FileNotFoundError:
                    current = None
    finally:
        if current is not None:
            current.close()  # the file in hand (the first one, or one opened after a rotation)


def _front_door_check(sock: Path) -> int:
    """Exit 1 when the config turns the front door on but the daemon could not listen there."""
    try:
        with Client(sock, timeout=5) as c:
            off = front_door_off(c.status().daemon)
    except (DaemonUnavailable, ConnectionClosed):
        return EXIT_OK  # it answered a moment ago; `cmctl status` will tell
    if off:
        _err(off)
        return EXIT_FAILED
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    sock = _socket(args)
    try:
        with Client(sock, timeout=5) as c:
            pid = c.welcome.pid if c.welcome else None
            c.shutdown()
    except DaemonUnavailable:
        _err(f"no daemon running on {sock}")
        return EXIT_UNREACHABLE
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if _daemon_pid(sock) is None and not sock.exists():
            print(f"stopped (pid {pid})")
            return EXIT_OK
        time.sleep(0.05)
    _err(f"the daemon (pid {pid}) did not stop within {STOP_TIMEOUT:.0f}s")
    return EXIT_FAILED


# ---------------------------------------------------------------- status / models


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch_status(args)
    if args.interval is not None or args.count is not None:
        raise UsageError("--interval and --count go with --watch")
    with Client(_socket(args), timeout=10) as c:
        st = c.status()
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode(st) + b"\n")
    else:
        print(render_status(st))
    return EXIT_OK


WATCH_RECENT = 8  # changes the live view keeps on screen
HIDE_CURSOR, SHOW_CURSOR, HOME_CLEAR = "\x1b[?25l", "\x1b[?25h", "\x1b[H\x1b[2J"


def _watch_status(args: argparse.Namespace) -> int:
    """`cmctl status --watch`: poll the status every interval and show it, until Ctrl-C or --count views.

    A terminal gets one view redrawn in place; anything else a plain snapshot per poll, separated by
    a blank line (with --json, one object per line). A daemon that goes away does not end the watch:
    each poll says it is unavailable and tries again; one that never answered exits 3, as `cmctl status`.
    """
    import shutil
    from collections import deque

    from ..protocol import StatusInfo
    from .render import clip, status_changes, watch_frame

    interval = 1.0 if args.interval is None else args.interval
    if not 0.1 <= interval <= 60:
        raise UsageError("--interval must be between 0.1 and 60 seconds")
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    out = sys.stdout
    live = not args.json and out.isatty()
    recent: deque[str] = deque(maxlen=WATCH_RECENT)
    client: Client | None = None
    before: StatusInfo | None = None
    views, was_down = 0, False
    next_at = time.monotonic()
    if live:
        out.write(HIDE_CURSOR)
    try:
        while True:
            now = time.strftime("%H:%M:%S")
            try:
                client = client or Client(_socket(args), timeout=10).connect()
                st = client.status()
            except (DaemonUnavailable, ConnectionClosed) as e:
                if client is not None:
                    client.close()
                    client = None
                if before is None:
                    raise  # never answered: exit 3, as `cmctl status`
                down = f"{now}  daemon unavailable ({e}); retrying every {interval:g}s"
                if not was_down:
                    recent.append(f"{now}  daemon unavailable")
                was_down = True
                if args.json:
                    _err(down)
                elif live:
                    body = "\n".join([down, "", "recent failovers and errors:", *(f"  {r}" for r in recent)])
                    size = shutil.get_terminal_size()
                    out.write(HOME_CLEAR + clip(body, size.columns, size.lines - 1))
                else:
                    print(("\n" if views else "") + down)
            else:
                changes = status_changes(before, st, now)
                recent.extend(changes)
                before, was_down = st, False
                if args.json:
                    out.buffer.write(msgspec.json.encode(st) + b"\n")
                elif live:
                    size = shutil.get_terminal_size()
                    frame = watch_frame(st, list(recent), now=now, interval=interval, live=True)
                    out.write(HOME_CLEAR + clip(frame, size.columns, size.lines - 1))
                else:
                    frame = watch_frame(st, changes, now=now, interval=interval, live=False)
                    print(("\n" if views else "") + frame)
            out.flush()
            views += 1
            if args.count is not None and views >= args.count:
                return EXIT_OK
            next_at = max(next_at + interval, time.monotonic())
            time.sleep(next_at - time.monotonic())
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if client is not None:
            client.close()
        if live:
            out.write(SHOW_CURSOR + "\n")
            out.flush()


def cmd_models(args: argparse.Namespace) -> int:
    if args.explain:
        with Client(_socket(args), timeout=10) as c:
            try:
                lines = c.explain(args.explain)
            except RequestFailed as e:
                _err(e.error.message)
                return EXIT_FAILED
        if args.json:
            sys.stdout.buffer.write(msgspec.json.encode({"id": args.explain, "explain": lines}) + b"\n")
        else:
            print("\n".join(lines))
        return EXIT_OK
    with Client(_socket(args), timeout=10) as c:
        info = c.models()
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode(info) + b"\n")
    else:
        print(render_models(info))
    return EXIT_OK


# ---------------------------------------------------------------- chat


def _human(event: StreamEvent, out: dict[str, bool]) -> None:
    """Text on stdout; who served it, failovers and the summary on stderr."""
    err = sys.stderr
    if isinstance(event, TextEvent):
        sys.stdout.write(event.text)
        sys.stdout.flush()
        out["text"] = True
    elif isinstance(event, ThinkingEvent):
        err.write(event.text)
        err.flush()
    elif isinstance(event, ToolCallEvent):
        args = msgspec.json.encode(event.arguments).decode()
        sys.stdout.write(f"\n[tool call {event.name}({args}) id={event.id}]\n")
    elif isinstance(event, ProviderEvent):
        err.write(f"[{event.provider}/{event.model}]\n" if not out.get("text") else f"[→ {event.provider}]")
        err.flush()
    elif isinstance(event, FailoverEvent):
        where = "mid-answer" if event.after_output else "before output"
        err.write(
            f"\n[failover {event.from_} → {event.to} ({event.reason}, {where})]\n"
            if not out.get("text")
            else f"[failover {event.from_} → {event.to}: {event.reason}]"
        )
        err.flush()
    elif isinstance(event, DoneEvent):
        if out.get("text"):
            sys.stdout.write("\n")
        u = event.usage
        err.write(
            f"[done: {event.provider}/{event.model}, {event.finish_reason}, "
            f"{u.input_tokens} in / {u.output_tokens} out]\n"
        )
    elif isinstance(event, ErrorEvent):
        if out.get("text"):
            sys.stdout.write("\n")
        err.write(f"cmctl: {event.kind}: {event.message}\n")
        for a in event.attempts:
            err.write(f"  {a.provider}{'/' + a.model if a.model else ''}: {a.error}\n")


def cmd_reload(args: argparse.Namespace) -> int:
    if args.config:
        return _reload_config(args)
    with Client(_socket(args), timeout=120) as c:
        info = c.reload()
        status = c.status()
    for p in status.providers:
        if p.catalog_error:
            _err(f"{p.id}: {p.catalog_error} (serving its {p.catalog} list)")
    print(render_models(info))
    return EXIT_OK


def _reload_config(args: argparse.Namespace) -> int:
    """`reload --config`: 0 applied, 2 refused (the config error, as `serve` prints it)."""
    with Client(_socket(args), timeout=120) as c:
        result = c.reload_config()
        info = c.models() if result.applied else None
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")
    if not result.applied:
        _err(f"bad config: {result.error}; the daemon keeps its running config")
        return EXIT_USAGE
    if not args.json:
        print("config reloaded: " + ("; ".join(result.changes) or "nothing changed"))
        if info is not None:
            print(render_models(info))
    for key in result.restart:
        _err(f"`{key}` changed: restart the daemon to apply it (`cmctl stop && cmctl start`)")
    return EXIT_OK


def cmd_login(args: argparse.Namespace) -> int:
    from .login import login_github_copilot

    if args.provider != "github-copilot":
        raise UsageError(f"no login flow for {args.provider!r} (only github-copilot)")
    kwargs = {k: v for k, v in (("github_url", args.github_url), ("api_url", args.api_url)) if v}
    return login_github_copilot(**kwargs)


def cmd_chat(args: argparse.Namespace) -> int:
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("give a PROMPT, or pipe one on stdin")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    status = EXIT_FAILED
    state: dict[str, bool] = {}
    with Client(_socket(args)) as c:
        for event in c.chat(args.model, prompt, system=args.system, max_tokens=args.max_tokens):
            if args.json:
                sys.stdout.buffer.write(msgspec.json.encode(event) + b"\n")
                sys.stdout.flush()
            else:
                _human(event, state)
            if isinstance(event, DoneEvent):
                status = EXIT_OK
    return status


# ---------------------------------------------------------------- the HTTP front door


def _front_door(args: argparse.Namespace) -> tuple[DaemonInfo, str] | int:
    """The running daemon's front door and its token; an exit code when there is none to hand out.

    The token is only worth printing for a port the daemon holds: the daemon says which.
    """
    from ..config import ConfigError, load_config
    from ..daemon.gateway import load_token

    with Client(_socket(args), timeout=10) as c:  # not running: DaemonUnavailable, exit 3
        daemon = c.status().daemon
    if not daemon.http:
        _err(front_door_off(daemon) or "the daemon's HTTP front door is off ([http] enabled = false)")
        return EXIT_FAILED
    try:  # the token of the config the daemon runs with
        cfg = load_config(Path(daemon.config) if daemon.config else _config(args))
        return daemon, load_token(cfg.http)
    except (ConfigError, OSError) as e:
        _err(f"cannot read the token: {e}")
        return EXIT_FAILED


def cmd_http_token(args: argparse.Namespace) -> int:
    door = _front_door(args)
    if isinstance(door, int):
        return door
    print(door[1])
    return EXIT_OK


def cmd_opencode_config(args: argparse.Namespace) -> int:
    from ..daemon.gateway.auth import client_host

    door = _front_door(args)
    if isinstance(door, int):
        return door
    daemon, token = door
    with Client(_socket(args), timeout=10) as c:
        models = c.models().models
    host, _, port = daemon.http.rpartition(":")
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "Combined models",
        "options": {"baseURL": f"http://{client_host(host.strip('[]'))}:{port}/v1", "apiKey": token},
        "models": {m.id: {"name": m.id} for m in models},
    }
    print(msgspec.json.format(msgspec.json.encode({"provider": {"combined-models": provider}})).decode())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(fast=args.fast)


# ---------------------------------------------------------------- service (systemd / launchd)

SERVE_EXE = [sys.executable, "-m", "combined_models.client.cli"]


def _service(args: argparse.Namespace, *, for_print: bool = False) -> service.Service:
    here = service.current_platform()
    platform = getattr(args, "platform", None) or here
    if platform is None:
        raise UsageError(
            f"no service manager known for {sys.platform}; --print --platform linux|macos shows one"
        )
    if platform != here and not for_print:
        raise UsageError(f"this machine is not {platform}: only --print can show its file")
    paths = {}
    for name, env in (("config", ENV_CONFIG), ("socket", ENV_SOCKET)):
        given = getattr(args, name, None) or os.environ.get(env)
        paths[name] = Path(given).expanduser().absolute() if given else None
    try:
        return service.service_for(platform, SERVE_EXE, paths["config"], paths["socket"])
    except ValueError as e:
        raise UsageError(str(e)) from None


def _run_tool(cmd: list[str], *, quiet: bool = False, only: tuple[str, ...] = ()) -> str | None:
    """Run a service manager command, showing it and what it said (the lines holding one of `only`,
    when given and found); the problem, or None when it worked."""
    if not quiet:
        print(f"$ {shlex.join(cmd)}")
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return f"{cmd[0]} is not installed or not on PATH"
    except OSError as e:
        return f"cannot run {cmd[0]}: {e}"
    if not quiet:
        lines = (done.stdout + done.stderr).splitlines()
        picked = [line for line in lines if any(word in line for word in only)]
        for line in picked or lines:
            print(f"  {line.strip() if picked else line}")
    return None if done.returncode == 0 else f"`{shlex.join(cmd)}` exited {done.returncode}"


def cmd_service_install(args: argparse.Namespace) -> int:
    svc = _service(args, for_print=args.print)
    if args.print:
        sys.stdout.buffer.write(svc.content)
        sys.stdout.flush()
        return EXIT_OK
    pid = _daemon_pid(_socket(args))
    svc.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = svc.path.with_name(f".{svc.path.name}.tmp")
    tmp.write_bytes(svc.content)
    tmp.chmod(0o644)
    tmp.replace(svc.path)
    print(f"wrote {svc.path}")
    if svc.log_dir is not None:  # the service manager appends there: make the log private first
        open_private_log(svc.log_dir / DAEMON_OUT).close()
    for cmd in svc.prepare:
        _run_tool(cmd, quiet=True)
    undo = "cmctl service uninstall"
    for cmd in svc.start:
        problem = _run_tool(cmd)
        if problem:
            _err(f"{problem}; the service is not running. {svc.path} is left in place.")
            _err("start it by hand with:\n  " + "\n  ".join(shlex.join(c) for c in svc.start))
            _err(f"or remove it with `{undo}`")
            return EXIT_FAILED
    print(f"installed: the daemon now runs all day and starts with your session; logs: {svc.logs}")
    if pid is not None:
        print(
            f"note: a daemon (pid {pid}) already runs on that socket; `cmctl stop` it so the service can start"
        )
    print(f"undo with `{undo}`")
    return EXIT_OK


def cmd_service_uninstall(args: argparse.Namespace) -> int:
    svc = _service(args)
    if not svc.path.exists():
        print(f"not installed: no {svc.path}")
        return EXIT_OK
    problems = [p for p in map(_run_tool, svc.stop) if p]
    svc.path.unlink()
    print(f"removed {svc.path}")
    problems += [p for p in map(_run_tool, svc.after_remove) if p]
    if problems:
        _err("; ".join(problems) + ": the service may still be loaded until you log in again")
        return EXIT_FAILED
    print("uninstalled; `cmctl service install` puts it back")
    return EXIT_OK


def cmd_service_status(args: argparse.Namespace) -> int:
    svc = _service(args)
    installed = svc.path.exists()
    print(f"{'installed' if installed else 'not installed'}: {svc.path}")
    running = True
    for cmd in svc.status:
        problem = _run_tool(cmd, only=("state =", "pid =", "last exit code ="))
        if problem and "not installed" in problem:
            _err(problem)
            return EXIT_FAILED
        running = running and problem is None
    print(f"logs: {svc.logs}")
    return EXIT_OK if installed and running else EXIT_FAILED


# ---------------------------------------------------------------- parser

DESCRIPTION = f"""\
Run and use the combined-models daemon: one model name backed by the same model at
several providers, failing over (even mid-answer) when one rate-limits or breaks.

Config: {config_file()} (or --config / ${ENV_CONFIG})
Socket: {socket_path()} (or --socket / ${ENV_SOCKET})
Exit codes: 0 ok, 1 the request failed, 2 usage or config error, 3 daemon not reachable.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmctl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"combined-models {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        p.add_argument("--socket", help=f"the daemon's socket (default: ${ENV_SOCKET} or {socket_path()})")
        return p

    p = add(
        "serve",
        "run the daemon in the foreground (for systemd/launchd and tests)",
        "Run the daemon in the foreground until SIGTERM, SIGINT or `cmctl stop` (SIGHUP re-reads the "
        "config file, as `cmctl reload --config` does). Logs go to the file "
        "`cmctl logs` shows (to stderr with `file = false` in [logging]).",
    )
    p.add_argument("--config", help=f"config file (default: ${ENV_CONFIG} or {config_file()})")
    p.set_defaults(func=cmd_serve)
    p = add(
        "start",
        "start the daemon in the background; returns once it answers",
        f"Start the daemon detached, logging to {log_dir() / DAEMON_LOG}; returns once it answers.",
    )
    p.add_argument("--config", help=f"config file (default: ${ENV_CONFIG} or {config_file()})")
    p.set_defaults(func=cmd_start)
    p = add(
        "logs",
        "show the daemon's log (one line per request, failover and health change)",
        f"Print the last lines of {log_dir() / DAEMON_LOG}; with -f keep printing what is appended "
        "(across rotations) until Ctrl-C.",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    p.add_argument(
        "-n", "--lines", type=int, default=50, metavar="N", help="lines to show first (default 50)"
    )
    p.add_argument(
        "--json", action="store_true", help='print only the JSON lines (needs `format = "json"` in [logging])'
    )
    p.add_argument("--config", help=f"config file (default: ${ENV_CONFIG} or {config_file()})")
    p.set_defaults(func=cmd_logs)
    p = add("stop", "stop the daemon gracefully (in-flight answers get a few seconds to finish)")
    p.set_defaults(func=cmd_stop)
    p = add(
        "status",
        "daemon and per-provider health: state, time until ready, in-flight, last error",
        "Daemon and per-provider health: state, time until ready, in-flight, last error. With --watch, "
        "poll it every --interval and redraw in place on a terminal (with the recent failovers and "
        "errors, derived by comparing polls) until Ctrl-C; piped, print one snapshot per poll. If the "
        "daemon goes away, --watch says so each poll and keeps trying.",
    )
    p.add_argument(
        "--json", action="store_true", help="print the status as one JSON object (--watch: one per line)"
    )
    p.add_argument("--watch", action="store_true", help="poll and redraw until Ctrl-C")
    p.add_argument(
        "--interval", type=float, metavar="SECONDS", help="seconds between polls with --watch (default 1)"
    )
    p.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N views")
    p.set_defaults(func=cmd_status)
    p = add("models", "combined models and their members in priority order")
    p.add_argument("--json", action="store_true", help="print the models as one JSON object")
    p.add_argument("--explain", metavar="ID", help="why the members of combined model ID were grouped")
    p.set_defaults(func=cmd_models)
    p = add(
        "reload",
        "list every provider's models again now; with --config, re-read the config file",
        "Without --config: ask the daemon to list every provider's models again (providers with a "
        "`models` list in the config are not asked) and print the combined models. A provider whose "
        "listing fails keeps serving its last good list. "
        "With --config: the daemon re-reads the config file it was started with (as SIGHUP does) and "
        "applies it without cutting answers under way: providers added, removed or changed (a removed "
        "or changed one finishes what it serves first), provider_priority, [failover], [combined], "
        "exclude, min_providers. [http], [logging], [limits], [shared] and the transport need a restart: they "
        "are named, not applied. A bad file is refused (exit 2) and the daemon keeps its running config.",
    )
    p.add_argument(
        "--config",
        action="store_true",
        help="re-read and apply the daemon's config file instead of listing models",
    )
    p.add_argument("--json", action="store_true", help="with --config: print the result as one JSON object")
    p.set_defaults(func=cmd_reload)
    p = add(
        "login",
        "log in to a provider that needs an interactive login (github-copilot)",
        "Run GitHub's device flow for Copilot: open the URL shown, enter the code, and the token is "
        "stored (0600) in the config dir for the daemon. Restart the daemon afterwards.",
    )
    p.add_argument("provider", metavar="PROVIDER", choices=["github-copilot"], help="github-copilot")
    p.add_argument("--github-url", help="GitHub (Enterprise) base URL (default https://github.com)")
    p.add_argument("--api-url", help="GitHub API base URL (default https://api.github.com)")
    p.set_defaults(func=cmd_login)
    p = add(
        "chat",
        "stream one answer from a model",
        "Stream one answer. MODEL is a combined model id (see `cmctl models`), combined/ID, or "
        "provider/model for one provider only. Text goes to stdout, who served it and any failover "
        "to stderr. Exits 1 if the answer could not be completed.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", help="the prompt (read from stdin when omitted)")
    p.add_argument("--json", action="store_true", help="print every event as one JSON object per line")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--max-tokens", type=int, help="the most tokens to generate")
    p.set_defaults(func=cmd_chat)
    p = add(
        "http-token",
        "print the running daemon's HTTP front door token",
        "Print the token the running daemon's HTTP front door requires (as `Authorization: Bearer "
        "TOKEN` or `x-api-key: TOKEN`): [http] token from its config, else the one generated and kept "
        "(mode 0600) in the state dir. Exits 3 when no daemon runs and 1 when its front door is not "
        "listening (off in the config, or its port was taken), rather than hand out a token for a port "
        "nobody holds.",
    )
    p.add_argument("--config", help="config file for the token, when the daemon does not report its own")
    p.set_defaults(func=cmd_http_token)
    p = add(
        "opencode-config",
        "print an OpenCode provider block for the running daemon's HTTP front door",
        "Print the `provider` block to merge into OpenCode's opencode.json: an "
        "@ai-sdk/openai-compatible provider named combined-models, with the front door's baseURL, "
        "the token as apiKey, and every combined model the running daemon serves.",
    )
    p.add_argument("--config", help="config file for the token, when the daemon does not report its own")
    p.set_defaults(func=cmd_opencode_config)
    p = add(
        "demo",
        "simulated providers and a daemon showing failover; needs no keys or network",
        "Start simulated providers and a private daemon, stream answers while a provider rate-limits, "
        "breaks mid-answer and recovers, and show the status table. Leaves no process behind.",
    )
    p.add_argument("--fast", action="store_true", help="no pauses between the steps")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser(
        "service",
        help="run the daemon all day: install a systemd user unit (Linux) or a launchd agent (macOS)",
        description="Run `cmctl serve` under the platform's service manager, started with your session "
        "and again when it fails. Linux: a systemd user unit "
        f"({service.unit_path()}), logging to the journal. macOS: a launchd agent "
        f"(~/Library/LaunchAgents/{service.LABEL}.plist, RunAtLoad, KeepAlive), logging to "
        f"{service.macos_log_dir() / DAEMON_OUT}. The service runs this Python "
        f"({sys.executable}), so it serves what this install has.",
    )
    service_parser = p

    def service_help(_: argparse.Namespace) -> int:
        service_parser.print_help()
        return EXIT_USAGE

    p.set_defaults(func=service_help)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser(
        "install",
        help="write the unit or agent and start it (--print: only show it)",
        description="Write the unit (Linux) or agent (macOS), enable it and start it now, saying each "
        "command it runs and how to undo it. If the service manager is missing or refuses, the file "
        "stays in place, the commands to start it by hand are shown, and the exit code is 1. The "
        f"service gets --config and --socket when given here (or set in ${ENV_CONFIG} / ${ENV_SOCKET}); "
        "otherwise the daemon uses the defaults.",
    )
    q.add_argument("--print", action="store_true", help="print the file and do nothing else")
    q.add_argument(
        "--platform",
        choices=service.PLATFORMS,
        help="with --print: the file for this platform (default: this one)",
    )
    q.add_argument(
        "--config", help=f"config file the service uses (default: ${ENV_CONFIG} or {config_file()})"
    )
    q.add_argument(
        "--socket", help=f"socket the service listens on (default: ${ENV_SOCKET} or {socket_path()})"
    )
    q.set_defaults(func=cmd_service_install)
    q = actions.add_parser(
        "uninstall",
        help="stop and disable the service and remove its file",
        description="Stop and disable the service and remove its unit or agent file.",
    )
    q.set_defaults(func=cmd_service_uninstall)
    q = actions.add_parser(
        "status",
        help="whether the service is installed, enabled and running",
        description="Whether the unit or agent file exists and what the service manager says of it "
        "(systemctl --user is-enabled / is-active; launchctl print). Exits 0 when it is installed "
        "and running, 1 otherwise.",
    )
    q.set_defaults(func=cmd_service_status)
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        sys.exit(EXIT_USAGE)
    try:
        code = args.func(args)
    except UsageError as e:
        _err(str(e))
        code = EXIT_USAGE
    except DaemonUnavailable as e:
        _err(f"{e}; start it with `cmctl start`")
        code = EXIT_UNREACHABLE
    except ConnectionClosed as e:
        _err(f"lost the daemon: {e}")
        code = EXIT_UNREACHABLE
    except PathError as e:  # a dir or file we may not use (someone else's, a symlink): say which
        _err(str(e))
        code = EXIT_USAGE
    except BrokenPipeError:
        code = EXIT_OK
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
