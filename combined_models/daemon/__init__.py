"""The daemon: socket server, supervisor, provider actors, dialects."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import trio

from ..config import Config
from ..paths import state_file
from .accept import raise_open_files_limit
from .server import Server, claim_socket, serve_until_signalled
from .supervisor import Supervisor

__all__ = ["Server", "Supervisor", "open_daemon", "run_daemon"]


def make_server(
    cfg: Config, socket_path: Path, config_path: Path | None = None, *, persist: bool = True
) -> Server:
    health = state_file(socket_path, "health") if persist else None
    catalogs = state_file(socket_path, "catalogs") if persist else None
    metadata = state_file(socket_path, "models-dev") if persist else None
    sup = Supervisor(
        cfg,
        socket=socket_path,
        config_path=config_path,
        health_file=health,
        catalog_file=catalogs,
        metadata_file=metadata,
    )
    return Server(sup, socket_path)


def run_daemon(cfg: Config, socket_path: Path, config_path: Path | None = None) -> None:
    """Serve in the foreground until SIGTERM/SIGINT or `cmctl stop`."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO, between the headers and the first body byte: on the
    # first-token path. Its warnings still come through.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    before, after = raise_open_files_limit()  # room for many clients and upstream connections
    if after != before:
        logging.getLogger("combined_models.daemon").debug(
            "open files limit raised from %d to %d", before, after
        )
    # Claimed before trio starts, so "already running" and path errors surface as plain exceptions.
    with claim_socket(socket_path) as sock:
        trio.run(serve_until_signalled, make_server(cfg, socket_path, config_path), sock)


async def open_daemon(
    cfg: Config, socket_path: Path, nursery: trio.Nursery, *, persist: bool = False
) -> Server:
    """Start a daemon inside `nursery` (tests and the demo); returns once it listens."""
    server = make_server(cfg, socket_path, persist=persist)
    await nursery.start(server.run)
    return server
