"""Run the daemon all day under the platform's service manager: a systemd user unit or a launchd agent.

Pure: this module builds the file and says where it goes and which commands install, remove and
inspect it; `cmctl service` writes the file and runs the commands.
"""

from __future__ import annotations

import os
import plistlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs.macos
import platformdirs.unix

from .paths import APP, DAEMON_OUT

LINUX, MACOS = "linux", "macos"
PLATFORMS = (LINUX, MACOS)
UNIT_NAME = f"{APP}.service"
LABEL = APP

# Words systemd takes as they are; anything else is written in double quotes with escapes.
_PLAIN = re.compile(r"[A-Za-z0-9_./:,+=@-]+")


def current_platform() -> str | None:
    """`linux`, `macos`, or None where neither service manager is known."""
    if sys.platform.startswith("linux"):
        return LINUX
    if sys.platform == "darwin":
        return MACOS
    return None


def systemd_quote(word: str, *, variables: bool = True) -> str:
    """One ExecStart word as systemd reads it back: `%` as `%%`, `$` as `$$`, C escapes in double quotes.

    Specifiers (`%h`) are expanded over the whole line and `$VAR` in every word, quoted or not, so
    those two are doubled everywhere; backslashes, double quotes and control characters are escaped.
    `variables=False` for the program's path, where systemd expands no `$VAR` and so reads `$$` as is.
    """
    out = []
    for ch in word:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 in the file name
            raise ValueError(f"{word!r} is not valid UTF-8; a systemd unit file cannot name it")
        if ch == "%":
            out.append("%%")
        elif ch == "$" and variables:
            out.append("$$")
        elif ch in '\\"':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    text = "".join(out)
    return text if _PLAIN.fullmatch(word) else f'"{text}"'


def serve_argv(exe: list[str], config: Path | None, socket: Path | None) -> list[str]:
    """`cmctl serve` as the service runs it: the given paths, else the defaults at run time."""
    argv = [*exe, "serve"]
    if config is not None:
        argv += ["--config", str(config)]
    if socket is not None:
        argv += ["--socket", str(socket)]
    return argv


def systemd_unit(exe: list[str], config: Path | None, socket: Path | None) -> str:
    """A systemd user unit running `cmctl serve` in the foreground; its stderr goes to the journal."""
    argv = serve_argv(exe, config, socket)
    words = [systemd_quote(w) for w in argv]
    if "$" in argv[0]:  # the path is read without $ expansion, argv[0] with it: "@path argv0 args..."
        words.insert(0, systemd_quote("@" + argv[0], variables=False))
    exec_start = " ".join(words)
    return f"""\
# Written by `cmctl service install`; remove it with `cmctl service uninstall`.
# Logs: journalctl --user -u {UNIT_NAME}
# The daemon gets the user manager's environment, not your shell's: an API key exported in a
# shell profile needs `systemctl --user import-environment NAME`, or put it in the config.
# To keep it running while you are logged out: loginctl enable-linger

[Unit]
Description=combined-models daemon: one model name served by several providers, with failover

[Service]
Type=simple
ExecStart={exec_start}
Restart=on-failure
RestartSec=2
# exit 2 is a bad config: starting again would not help
RestartPreventExitStatus=2

[Install]
WantedBy=default.target
"""


def launchd_plist(
    label: str, exe: list[str], config: Path | None, socket: Path | None, log_dir: Path
) -> bytes:
    """A launchd agent running `cmctl serve`: started at login, started again when it exits non-zero."""
    log = str(log_dir / DAEMON_OUT)
    agent = {
        "Label": label,
        "ProgramArguments": serve_argv(exe, config, socket),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # `cmctl stop` (exit 0) stays stopped
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    return plistlib.dumps(agent)


def unit_path() -> Path:
    """Where systemd looks for the user's own units: $XDG_CONFIG_HOME/systemd/user."""
    return Path(platformdirs.unix.Unix().user_config_dir) / "systemd" / "user" / UNIT_NAME


def plist_path(label: str = LABEL) -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{label}.plist"


def macos_log_dir() -> Path:
    return Path(platformdirs.macos.MacOS(APP).user_log_dir)


@dataclass(frozen=True)
class Service:
    """One platform's service: the file, where it goes, and the commands around it."""

    platform: str
    path: Path
    content: bytes
    log_dir: Path | None  # made (private) before starting, when the service manager writes there
    prepare: list[list[str]]  # run before starting; failures are expected (nothing to replace)
    start: list[list[str]]  # run after writing the file
    stop: list[list[str]]  # run before removing the file
    after_remove: list[list[str]]
    status: list[list[str]]
    logs: str  # how to read its logs


def service_for(
    platform: str,
    exe: list[str],
    config: Path | None,
    socket: Path | None,
    *,
    uid: int | None = None,
    label: str = LABEL,
) -> Service:
    if platform == LINUX:
        ctl = ["systemctl", "--user"]
        return Service(
            platform=LINUX,
            path=unit_path(),
            content=systemd_unit(exe, config, socket).encode(),
            log_dir=None,
            prepare=[],
            start=[[*ctl, "daemon-reload"], [*ctl, "enable", "--now", UNIT_NAME]],
            stop=[[*ctl, "disable", "--now", UNIT_NAME]],
            after_remove=[[*ctl, "daemon-reload"]],
            status=[[*ctl, "is-enabled", UNIT_NAME], [*ctl, "is-active", UNIT_NAME]],
            logs=f"journalctl --user -u {UNIT_NAME}",
        )
    if platform == MACOS:
        domain = f"gui/{os.getuid() if uid is None else uid}"
        path, log_dir = plist_path(label), macos_log_dir()
        return Service(
            platform=MACOS,
            path=path,
            content=launchd_plist(label, exe, config, socket, log_dir),
            log_dir=log_dir,
            prepare=[["launchctl", "bootout", f"{domain}/{label}"]],
            start=[["launchctl", "bootstrap", domain, str(path)]],
            stop=[["launchctl", "bootout", f"{domain}/{label}"]],
            after_remove=[],
            status=[["launchctl", "print", f"{domain}/{label}"]],
            logs=str(log_dir / DAEMON_OUT),
        )
    raise ValueError(f"unknown platform {platform!r} (known: {', '.join(PLATFORMS)})")
