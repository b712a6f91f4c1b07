"""The daemon's owner: it starts the registry and the two front doors side by side, and stops them.

The socket door and the HTTP door each get the same small facade of the daemon
(`DaemonFacade`) and nothing else; neither knows the other, nor this server.
On stop both doors stop accepting, requests in flight get a grace period, then
whatever is left is ended.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket as pysocket
from collections.abc import Iterator
from pathlib import Path

import trio

from ..chat import ChatRequest
from ..config import Config, ConfigError, HttpConfig, LimitsConfig, load_config
from ..paths import check_socket_path, ensure_private_dir, log_dir, runtime_dir, state_file
from ..protocol import ModelsInfo, ReloadInfo, StatusInfo
from ..transport import (
    TCP_HOST,
    Endpoint,
    Transport,
    TransportError,
    choose_transport,
    create_token,
    is_endpoint_file,
    probe_tcp,
    read_endpoint,
    remember_token,
    remove_token,
    token_path,
    write_endpoint,
)
from .accept import raise_open_files_limit
from .counting import count_tokens
from .facade import CountResult, Send
from .gateway import Gateway
from .logs import setup_logging
from .metrics import Metrics
from .registry import Registry
from .reload import diff_configs
from .router import Router
from .socket_door import SocketDoor

log = logging.getLogger("combined_models.daemon")
SHUTDOWN_GRACE = 5.0  # seconds in-flight streams get to finish on stop


class AlreadyRunning(Exception):
    pass


@contextlib.contextmanager
def claim_endpoint(
    path: Path, transport: Transport | None = None, *, token_file: Path | None = None
) -> Iterator[pysocket.socket]:
    """Listen at `path`, making sure no live daemon serves it; a stale endpoint of a killed daemon is replaced.

    `unix`: a Unix socket bound at `path` (0600). `tcp`: a socket on 127.0.0.1 (a free port),
    named by the endpoint file written at `path` (`transport.py`), with a token made afresh
    and kept 0600 in `token_file` (default: `transport.token_path(path)`, a state file of
    that path's own). `None`: the environment's or the platform's choice. A lock file beside
    `path`, held for the daemon's life, settles races between two daemons starting at once.
    On exit the socket, or the endpoint file and then the token file, go.
    """
    transport = transport or choose_transport(None)
    if transport == "unix":
        check_socket_path(path)
    if path.parent == runtime_dir() or not path.parent.exists():
        # Our own dir: 0700 and ours, or we refuse it. A dir the user named that exists
        # (say /tmp) is left as it is: the socket or endpoint file itself is 0600.
        ensure_private_dir(path.parent)
    lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(f"a daemon is already serving {path}") from None
            raise
        if path.exists() or path.is_symlink():
            if _answers(path):
                raise AlreadyRunning(f"a daemon is already serving {path}")
            path.unlink()  # stale: its daemon is gone
        tokens = None if transport == "unix" else (token_file or token_path(path))
        sock = _listen_unix(path) if tokens is None else _listen_tcp(path, tokens)
        try:
            yield sock
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if tokens is not None:
                remove_token(tokens)  # after the endpoint file: no client finds one without the other
    finally:
        os.close(lock_fd)


def _answers(path: Path) -> bool:
    """Whether a daemon answers at `path`: its Unix socket, or the port its endpoint file names."""
    if is_endpoint_file(path):
        try:
            endpoint = read_endpoint(path)
        except (OSError, TransportError):
            return False  # unreadable or damaged: nothing can reach a daemon through it
        return probe_tcp(endpoint)
    if not hasattr(pysocket, "AF_UNIX"):
        return False
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _listen_unix(path: Path) -> pysocket.socket:
    sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(512)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_tcp(path: Path, token_file: Path) -> pysocket.socket:
    """A loopback socket on a free port, and the endpoint file naming it (and the token file) at `path`.

    The token is new at each start: one a dead daemon's clients (or a process that squatted
    its port) knew proves nothing to this one.
    """
    token = create_token(token_file)  # before any client can look for it
    sock = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM)
    try:
        sock.bind((TCP_HOST, 0))
        sock.listen(512)
        remember_token(sock, token)  # for the socket door that serves it
        port = sock.getsockname()[1]
        endpoint = Endpoint(host=TCP_HOST, port=port, pid=os.getpid(), token_file=str(token_file.absolute()))
        write_endpoint(path, endpoint)
    except BaseException:
        sock.close()
        remove_token(token_file)
        raise
    return sock


class ServerFacade:
    """The facade a `Server` gives its doors: the router's chats, the registry's answers, the server's stop state.

    Each call looks the method up when it is made, so a door always reaches the current one.
    """

    def __init__(self, server: Server) -> None:
        self._server = server

    @property
    def limits(self) -> LimitsConfig:
        return self._server.registry.cfg.limits

    @property
    def http(self) -> HttpConfig:
        return self._server.registry.cfg.http

    @property
    def stopping(self) -> bool:
        return self._server.stopping

    def request_stop(self) -> None:
        self._server.request_stop()

    def tracking(self) -> contextlib.AbstractContextManager[None]:
        return self._server.tracking()

    async def chat(self, model: str, request: ChatRequest, send: Send) -> None:
        await self._server.router.chat(model, request, send)

    async def count_tokens(self, model: str, request: ChatRequest) -> CountResult:
        return await count_tokens(self._server.registry, model, request)

    def models_info(self) -> ModelsInfo:
        return self._server.registry.models_info()

    def status(self) -> StatusInfo:
        status = self._server.registry.status()
        pinned = self._server.router.affinity.per_provider(trio.current_time())
        for provider in status.providers:
            provider.pinned = pinned.get(provider.id, 0)
        gateway = self._server.gateway
        status.daemon.http = self._server.http_address
        status.daemon.http_error = gateway.error if gateway is not None else ""
        status.daemon.transport = self._server.socket_door.transport
        return status

    def explain(self, model: str) -> list[str]:
        return self._server.registry.explain(model)

    async def refresh_catalogs(self) -> None:
        await self._server.registry.refresh_catalogs()

    async def reload_config(self) -> ReloadInfo:
        return await self._server.reload_config()

    def metrics_text(self) -> bytes:
        return self._server.metrics.render()


class Server:
    """One daemon: its registry and router, its socket door and (when the config turns it on) its HTTP door."""

    def __init__(self, registry: Registry, socket_path: Path) -> None:
        self.registry = registry
        self.metrics = Metrics(registry)
        self.router = Router(registry, self.metrics)
        self.socket_path = socket_path
        self.stopping = False
        self.active = 0
        self.idle = trio.Event()
        self._stop = trio.Event()
        self.facade = ServerFacade(self)
        self.socket_door = SocketDoor(self.facade)
        self.gateway: Gateway | None = None
        self._reloading = trio.Lock()  # one reload at a time: two must not interleave their swaps
        self._registry_running = False

    async def reload_config(self) -> ReloadInfo:
        """Re-read the config file and apply it (`Registry.apply`); a bad file leaves the running config.

        Logs one line either way: what changed, or why it was refused.
        """
        path = self.registry.config_path
        async with self._reloading:
            if path is None:
                why = "the daemon was started without a config file"
            elif self.stopping or not self._registry_running:
                why = "the daemon is stopping" if self.stopping else "the daemon is still starting"
            elif not path.exists():  # `load_config` would read no file as no providers at all
                why = f"{path}: no such file"
            else:
                try:
                    new = load_config(path)
                except ConfigError as e:
                    why = str(e)
                else:
                    change = diff_configs(self.registry.cfg, new)
                    with trio.CancelScope(shield=True):  # begun, the swap completes even if the caller left
                        fresh = await self.registry.apply(change)
                    lines = change.lines()
                    log.info("config reloaded from %s: %s", path, "; ".join(lines) or "nothing changed")
                    await self.registry.refresh_catalogs(fresh)  # the new providers' models
                    return ReloadInfo(applied=True, changes=lines, restart=list(change.restart))
            log.warning("config reload refused: %s", why)
            return ReloadInfo(applied=False, error=why)

    def request_stop(self) -> None:
        self.stopping = True
        self._stop.set()

    @property
    def http_address(self) -> str:
        """The HTTP front door's bound host:port; empty when it is off or could not listen."""
        return self.gateway.address if self.gateway is not None else ""

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Count a request in flight (for the grace period on stop); both doors use it."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def run(
        self,
        sock: pysocket.socket | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until asked to stop, then give in-flight streams a grace period.

        `sock` is a socket from `claim_endpoint`; without one, the server claims its path itself.
        """
        with contextlib.ExitStack() as stack:
            if sock is None:
                transport = choose_transport(self.registry.cfg.transport)
                sock = stack.enter_context(claim_endpoint(self.socket_path, transport))
            async with trio.open_nursery() as nursery:
                await nursery.start(self.registry.run)
                self._registry_running = True
                # The HTTP door listens first, so a status asked on the socket already shows its address.
                if self.facade.http.enabled:
                    self.gateway = Gateway(self.facade)
                    await nursery.start(self.gateway.run)
                await nursery.start(self.socket_door.run, sock)
                task_status.started()
                log.info("serving on %s", self.socket_path)
                await self._stop.wait()
                self.socket_door.stop_accepting()
                if self.gateway is not None:
                    self.gateway.stop_accepting()
                with trio.move_on_after(SHUTDOWN_GRACE):
                    while self.active:
                        self.idle = trio.Event()
                        await self.idle.wait()
                self.socket_door.hang_up()  # also ends writes to clients that stopped reading
                nursery.cancel_scope.cancel()


async def serve_until_signalled(server: Server, sock: pysocket.socket | None = None) -> None:
    """Run `server` until a shutdown frame, SIGTERM or SIGINT stops it gracefully; SIGHUP reloads its config."""
    hup = getattr(signal, "SIGHUP", None)  # not on Windows
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, *([hup] if hup else [])) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    if signum == hup:
                        nursery.start_soon(server.reload_config)  # it logs what it did
                    else:
                        server.request_stop()

            nursery.start_soon(watch)
            await server.run(sock)
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ entry points


def make_server(
    cfg: Config, socket_path: Path, config_path: Path | None = None, *, persist: bool = True
) -> Server:
    health = state_file(socket_path, "health") if persist else None
    catalogs = state_file(socket_path, "catalogs") if persist else None
    metadata = state_file(socket_path, "models-dev") if persist else None
    registry = Registry(
        cfg,
        socket=socket_path,
        config_path=config_path,
        health_file=health,
        catalog_file=catalogs,
        metadata_file=metadata,
    )
    return Server(registry, socket_path)


def run_daemon(cfg: Config, socket_path: Path, config_path: Path | None = None) -> None:
    """Serve in the foreground until SIGTERM/SIGINT or `cmctl stop`."""
    setup_logging(cfg.logging, log_dir())  # stderr keeps only what escapes logging
    before, after = raise_open_files_limit()  # room for many clients and upstream connections
    if after != before:
        log.debug("open files limit raised from %d to %d", before, after)
    # Claimed before trio starts, so "already running" and path errors surface as plain exceptions.
    with claim_endpoint(socket_path, choose_transport(cfg.transport)) as sock:
        trio.run(serve_until_signalled, make_server(cfg, socket_path, config_path), sock)


async def open_daemon(
    cfg: Config,
    socket_path: Path,
    nursery: trio.Nursery,
    *,
    persist: bool = False,
    token_file: Path | None = None,
) -> Server:
    """Start a daemon inside `nursery` (tests and the demo); returns once it listens.

    `token_file`: where a tcp daemon keeps its token, instead of its default state file.
    """
    server = make_server(cfg, socket_path, persist=persist)
    if token_file is None:
        await nursery.start(server.run)
    else:
        await nursery.start(_run_claimed, server, token_file)
    return server


async def _run_claimed(
    server: Server, token_file: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    transport = choose_transport(server.registry.cfg.transport)
    with claim_endpoint(server.socket_path, transport, token_file=token_file) as sock:
        await server.run(sock, task_status=task_status)
