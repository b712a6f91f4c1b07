"""`cmctl service`: the systemd unit and launchd agent it writes, and what install / uninstall / status do."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from combined_models import service
from combined_models.client import cli

EXE = ["/opt/cm env/bin/python", "-m", "combined_models.client.cli"]
CONFIG = Path("/home/ann/my config %h/config.toml")
SOCKET = Path("/run/user/1000/cm $HOME/daemon.sock")
LOG_DIR = Path("/Users/ann/Library/Logs/combined-models")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def directives(unit: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))


# ---------------------------------------------------------------- the files


def test_systemd_unit_runs_serve_in_the_foreground_and_restarts_on_failure() -> None:
    unit = service.systemd_unit(EXE, CONFIG, SOCKET)
    d = directives(unit)
    assert d["Type"] == "simple"
    assert d["Restart"] == "on-failure"
    assert d["RestartSec"] == "2"
    assert d["RestartPreventExitStatus"] == "2"
    assert d["WantedBy"] == "default.target"
    assert "Environment" not in d and "EnvironmentFile" not in d  # the user's session gives it
    assert d["ExecStart"] == (
        '"/opt/cm env/bin/python" -m combined_models.client.cli serve '
        '--config "/home/ann/my config %%h/config.toml" --socket "/run/user/1000/cm $$HOME/daemon.sock"'
    )
    assert "journalctl --user -u combined-models.service" in unit


def test_systemd_unit_without_paths_leaves_the_defaults_to_the_daemon() -> None:
    d = directives(service.systemd_unit(["/usr/bin/python3", "-m", "combined_models.client.cli"], None, None))
    assert d["ExecStart"] == "/usr/bin/python3 -m combined_models.client.cli serve"


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("a b", '"a b"'),
        ("100%", '"100%%"'),
        ("$x", '"$$x"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("tab\there", '"tab\\x09here"'),
        ("it's", '"it\'s"'),
        (";", '";"'),
        ("", '""'),
    ],
)
def test_systemd_quote(word: str, quoted: str) -> None:
    assert service.systemd_quote(word) == quoted


def test_a_dollar_in_the_program_path_passes_it_apart_from_argv0() -> None:
    """systemd expands `$` in arguments, argv[0] included, but not in the path it executes."""
    d = directives(service.systemd_unit(["/opt/a$b/python", "-m", "m"], None, None))
    assert d["ExecStart"] == '"@/opt/a$b/python" "/opt/a$$b/python" -m m serve'


def test_systemd_quote_refuses_a_name_that_is_not_utf8() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        service.systemd_quote(os.fsdecode(b"/tmp/\xff"))


def test_launchd_plist_round_trips_with_the_expected_keys() -> None:
    agent = plistlib.loads(service.launchd_plist("combined-models", EXE, CONFIG, SOCKET, LOG_DIR))
    assert agent == {
        "Label": "combined-models",
        "ProgramArguments": [*EXE, "serve", "--config", str(CONFIG), "--socket", str(SOCKET)],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": str(LOG_DIR / "daemon.out"),
        "StandardErrorPath": str(LOG_DIR / "daemon.out"),
    }


def test_where_the_files_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert service.unit_path() == tmp_path / "xdg" / "systemd" / "user" / "combined-models.service"
    assert service.plist_path() == tmp_path / "home" / "Library" / "LaunchAgents" / "combined-models.plist"
    assert service.macos_log_dir() == tmp_path / "home" / "Library" / "Logs" / "combined-models"


# ---------------------------------------------------------------- --print


def test_print_linux_shows_the_unit_for_this_python_and_installs_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("COMBINED_MODELS_CONFIG", raising=False)
    monkeypatch.delenv("COMBINED_MODELS_SOCKET", raising=False)
    config = tmp_path / "my conf %i.toml"
    code, out, err = run_cli(
        capsys, "service", "install", "--print", "--platform", "linux", "--config", str(config)
    )
    assert (code, err) == (0, "")
    assert out == service.systemd_unit(cli.SERVE_EXE, config, None)
    assert directives(out)["ExecStart"].startswith(service.systemd_quote(sys.executable) + " -m ")
    assert "%%i.toml" in out
    assert not (tmp_path / "xdg").exists()


def test_print_macos_shows_a_plist(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COMBINED_MODELS_CONFIG", raising=False)
    monkeypatch.setenv("COMBINED_MODELS_SOCKET", str(tmp_path / "s p/daemon.sock"))
    code, out, err = run_cli(capsys, "service", "install", "--print", "--platform", "macos")
    assert (code, err) == (0, "")
    agent = plistlib.loads(out.encode())
    assert agent["ProgramArguments"] == [
        *cli.SERVE_EXE,
        "serve",
        "--socket",
        str(tmp_path / "s p/daemon.sock"),
    ]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardErrorPath"] == str(tmp_path / "home/Library/Logs/combined-models/daemon.out")
    assert not (tmp_path / "home").exists()


def test_install_for_another_platform_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "current_platform", lambda: service.LINUX)
    code, _, err = run_cli(capsys, "service", "install", "--platform", "macos")
    assert code == cli.EXIT_USAGE
    assert "only --print" in err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_printed_unit_passes_systemd_analyze_verify(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The python sits in a directory whose name needs quoting and escaping: verify finds it only
    # if systemd reads the path back exactly.
    odd = tmp_path / "py dir %h $x"
    odd.mkdir()
    (odd / "python").symlink_to(sys.executable)
    monkeypatch.setattr(cli, "SERVE_EXE", [str(odd / "python"), "-m", "combined_models.client.cli"])
    code, out, _ = run_cli(
        capsys, "service", "install", "--print", "--platform", "linux",
        "--config", str(tmp_path / "a conf %i.toml"), "--socket", str(tmp_path / "s.sock"),
    )  # fmt: skip
    assert code == 0
    unit = tmp_path / "units" / "combined-models.service"
    unit.parent.mkdir()
    unit.write_text(out)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    done = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert '"@' in out  # the `$` in the path: argv[0] passed apart
    # and it would have said so for a path read back wrongly (%h, unescaped, is the home dir)
    unit.write_text(out.replace("%%h", "%h"))
    done = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)], capture_output=True, text=True, env=env
    )
    assert done.returncode != 0 and "not executable" in done.stderr


# ---------------------------------------------------------------- install / uninstall / status

FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$*" in *is-active*) echo "${FAKE_ACTIVE:-active}"; [ "${FAKE_ACTIVE:-active}" = active ]; exit $?;; esac
case "$*" in *"${FAKE_FAIL:-never-matches}"*) echo "Failed to connect to bus" >&2; exit 1;; esac
exit 0
"""


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A temp HOME and config dir, fake systemctl and launchctl on PATH; returns the log of their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("systemctl", "launchctl"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home/.config"))
    monkeypatch.setenv("COMBINED_MODELS_SOCKET", str(tmp_path / "daemon.sock"))
    monkeypatch.delenv("COMBINED_MODELS_CONFIG", raising=False)
    monkeypatch.setattr(service, "current_platform", lambda: service.LINUX)
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_install_writes_the_unit_enables_it_and_says_how_to_undo(
    capsys: pytest.CaptureFixture[str], session: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "service", "install", "--config", str(tmp_path / "c.toml"))
    assert (code, err) == (0, "")
    unit = tmp_path / "home/.config/systemd/user/combined-models.service"
    assert unit.read_text() == service.systemd_unit(
        cli.SERVE_EXE, tmp_path / "c.toml", tmp_path / "daemon.sock"
    )
    assert unit.stat().st_mode & 0o777 == 0o644
    assert calls(session) == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now combined-models.service",
    ]
    assert f"wrote {unit}" in out
    assert "$ systemctl --user daemon-reload\n$ systemctl --user enable --now combined-models.service" in out
    assert "journalctl --user -u combined-models.service" in out
    assert "undo with `cmctl service uninstall`" in out

    session.write_text("")
    code, out, err = run_cli(capsys, "service", "status")
    assert (code, err) == (0, "")
    assert f"installed: {unit}" in out and "  active" in out
    assert calls(session) == [
        "systemctl --user is-enabled combined-models.service",
        "systemctl --user is-active combined-models.service",
    ]

    session.write_text("")
    code, out, err = run_cli(capsys, "service", "uninstall")
    assert (code, err) == (0, "")
    assert not unit.exists()
    assert calls(session) == [
        "systemctl --user disable --now combined-models.service",
        "systemctl --user daemon-reload",
    ]
    assert f"removed {unit}" in out

    code, out, _ = run_cli(capsys, "service", "status")
    assert code == cli.EXIT_FAILED and "not installed" in out
    code, out, _ = run_cli(capsys, "service", "uninstall")
    assert code == 0 and "not installed" in out


def test_status_of_a_stopped_service_exits_1(
    capsys: pytest.CaptureFixture[str], session: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli(capsys, "service", "install")[0] == 0
    monkeypatch.setenv("FAKE_ACTIVE", "failed")
    code, out, _ = run_cli(capsys, "service", "status")
    assert code == cli.EXIT_FAILED and "  failed" in out


def test_a_failing_systemctl_leaves_the_file_and_shows_the_manual_commands(
    capsys: pytest.CaptureFixture[str], session: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "enable")
    code, out, err = run_cli(capsys, "service", "install")
    assert code == cli.EXIT_FAILED
    assert (tmp_path / "home/.config/systemd/user/combined-models.service").exists()
    assert "Failed to connect to bus" in out
    assert "`systemctl --user enable --now combined-models.service` exited 1" in err
    assert "systemctl --user daemon-reload\n  systemctl --user enable --now combined-models.service" in err
    assert "cmctl service uninstall" in err


def test_a_missing_systemctl_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], session: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = run_cli(capsys, "service", "install")
    assert code == cli.EXIT_FAILED
    assert "systemctl is not installed or not on PATH" in err
    assert (tmp_path / "home/.config/systemd/user/combined-models.service").exists()
    code, _, err = run_cli(capsys, "service", "status")
    assert code == cli.EXIT_FAILED and "systemctl is not installed" in err


def test_macos_install_bootstraps_the_agent_with_a_private_log(
    capsys: pytest.CaptureFixture[str], session: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(service, "current_platform", lambda: service.MACOS)
    code, out, err = run_cli(capsys, "service", "install")
    assert (code, err) == (0, "")
    plist = tmp_path / "home/Library/LaunchAgents/combined-models.plist"
    agent = plistlib.loads(plist.read_bytes())
    assert agent["ProgramArguments"] == [*cli.SERVE_EXE, "serve", "--socket", str(tmp_path / "daemon.sock")]
    log = tmp_path / "home/Library/Logs/combined-models/daemon.out"
    assert log.stat().st_mode & 0o777 == 0o600
    uid = os.getuid()
    assert calls(session) == [
        f"launchctl bootout gui/{uid}/combined-models",  # a loaded older one, replaced
        f"launchctl bootstrap gui/{uid} {plist}",
    ]
    assert f"$ launchctl bootstrap gui/{uid} {plist}" in out and "cmctl service uninstall" in out

    session.write_text("")
    code, out, err = run_cli(capsys, "service", "uninstall")
    assert (code, err) == (0, "")
    assert not plist.exists()
    assert calls(session) == [f"launchctl bootout gui/{uid}/combined-models"]


def test_service_without_an_action_shows_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "service")
    assert code == cli.EXIT_USAGE and "install" in out and "uninstall" in out
