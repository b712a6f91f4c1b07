"""`cmctl status --watch`: what changed between polls, the view's text, and the command on a pipe and a terminal."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import pty
import select
import signal
import struct
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from combined_models.client import cli
from combined_models.client.render import clip, render_status, status_changes, watch_frame
from combined_models.client.sync import ConnectionClosed, DaemonUnavailable
from combined_models.protocol import DaemonInfo, ProviderStatus, StatusInfo
from combined_models.simulator import Fault

from .conftest import open_stack
from .test_cli import CMCTL, daemon, sims_running, write_config

T = TypeVar("T")
HIDE, SHOW, CLEAR = b"\x1b[?25l", b"\x1b[?25h", b"\x1b[H\x1b[2J"


def provider(pid: str = "first", **kw: Any) -> ProviderStatus:
    base: dict[str, Any] = {
        "state": "ready",
        "cooldown_remaining_s": 0.0,
        "in_flight": 0,
        "requests": 0,
        "failures": 0,
        "last_error": None,
    }
    return ProviderStatus(id=pid, **{**base, **kw})


def status(*providers: ProviderStatus, pid: int = 100, uptime: float = 65.0) -> StatusInfo:
    return StatusInfo(daemon=DaemonInfo(pid=pid, version="0.1.0", uptime_s=uptime), providers=list(providers))


# ---------------------------------------------------------------- what changed between two polls

CHANGES: list[tuple[str, StatusInfo | None, StatusInfo, list[str]]] = [
    ("first poll: nothing to compare", None, status(provider(failures=3, last_error="x")), []),
    ("nothing changed", status(provider(requests=4)), status(provider(requests=4)), []),
    (
        "requests alone are no event",
        status(provider(requests=4)),
        status(provider(requests=9, in_flight=2)),
        [],
    ),
    (
        "a failover: one failed, the next finished it",
        status(provider("first"), provider("second")),
        status(
            provider(
                "first",
                failures=1,
                last_error="429 slow down",
                last_error_kind="rate_limited",
                state="cooling",
                cooldown_remaining_s=12.0,
            ),
            provider("second", failovers_saved=1),
        ),
        [
            "12:00:01  first failed: rate_limited: 429 slow down",
            "failover → second: it finished a request another provider failed",
            "first: ready → cooling (ready in 12s)",
        ],
    ),
    (
        "several between two polls become one line each",
        status(provider("first", failures=2, last_error="a"), provider("second", failovers_saved=1)),
        status(provider("first", failures=5, last_error="a"), provider("second", failovers_saved=4)),
        [
            "12:00:01  first failed (3×): a",
            "failover → second: it finished 3 requests another provider failed",
        ],
    ),
    (
        "a new last error without a counted failure (disabled)",
        status(provider(state="ready")),
        status(provider(state="disabled", last_error="set MY_KEY")),
        ["first failed: set MY_KEY", "first: ready → disabled"],
    ),
    (
        "recovering",
        status(provider(state="cooling", cooldown_remaining_s=1.0, last_error="e")),
        status(provider(state="ready", last_error="e")),
        ["first: cooling → ready"],
    ),
    (
        "a restarted daemon: counters start again, not compared",
        status(provider(failures=5, failovers_saved=3), pid=100),
        status(provider(), pid=200),
        ["12:00:01  daemon restarted (pid 100 → 200)"],
    ),
    (
        "a provider new to this poll is not an event",
        status(provider("first")),
        status(provider("first"), provider("other", failures=2, last_error="x")),
        [],
    ),
]


@pytest.mark.parametrize(("name", "before", "after", "expected"), CHANGES, ids=[c[0] for c in CHANGES])
def test_status_changes(name: str, before: StatusInfo | None, after: StatusInfo, expected: list[str]) -> None:
    lines = status_changes(before, after, "12:00:01")
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith("12:00:01  ") and line.endswith(want), (line, want)


def test_a_long_error_is_cut_like_the_table() -> None:
    (line,) = status_changes(status(provider()), status(provider(failures=1, last_error="x" * 200)), "t")
    assert line.endswith("x" * 68 + "…")


# ---------------------------------------------------------------- the view's text


def test_the_live_frame_holds_the_status_table_the_changes_and_says_where_they_come_from() -> None:
    st = status(provider("first", state="cooling", cooldown_remaining_s=42.0, in_flight=2), uptime=3725)
    frame = watch_frame(st, [], now="12:00:01", interval=1.0)
    lines = frame.split("\n")
    assert lines[0] == "12:00:01  daemon up 1h02m  every 1s  (Ctrl-C to quit)"
    assert render_status(st) in frame  # the same table as `cmctl status`, countdown included
    assert "42s" in frame and "none since watching began" in frame
    assert "derived by comparing polls every 1s" in lines[-1]
    assert "\x1b" not in frame

    frame = watch_frame(st, ["12:00:01  failover → second: x", "12:00:02  y"], now="12:00:02", interval=0.5)
    assert "  12:00:01  failover → second: x\n  12:00:02  y\n" in frame
    assert "none since" not in frame and "every 0.5s" in frame


def test_a_plain_snapshot_shows_only_what_changed_since_the_previous_one() -> None:
    st = status(provider())
    frame = watch_frame(st, [], now="12:00:01", interval=2.0, live=False)
    assert frame == "12:00:01  daemon up 1m05s  every 2s\n" + render_status(st)
    frame = watch_frame(st, ["12:00:03  first failed: e"], now="12:00:03", interval=2.0, live=False)
    assert frame.endswith(
        "changes since the previous snapshot (derived from polling):\n  12:00:03  first failed: e"
    )


@pytest.mark.parametrize(
    ("text", "width", "height", "expected"),
    [
        ("abc\ndefgh", 10, None, "abc\ndefgh"),
        ("abc\ndefgh", 4, None, "abc\ndef…"),
        ("a\nb\nc", 10, 2, "a\nb"),
        ("abcdef", 0, None, "abcdef"),  # no known width: left alone
    ],
)
def test_clip(text: str, width: int, height: int | None, expected: str) -> None:
    assert clip(text, width, height) == expected


# ---------------------------------------------------------------- the command


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(fn)


def run_main(*argv: str) -> int | str | None:
    try:
        cli.main(list(argv))
    except SystemExit as e:
        return e.code
    return None


async def test_watch_on_a_pipe_prints_plain_snapshots_and_json_lines(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with open_stack(short_dir) as st:
        sock = str(st.socket)
        code = await in_thread(
            lambda: run_main("status", "--watch", "--count", "2", "--interval", "0.1", "--socket", sock)
        )
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "\x1b" not in out
        snapshots = out.rstrip("\n").split("\n\n")
        assert len(snapshots) == 2
        for snap in snapshots:
            assert "daemon up" in snap.splitlines()[0] and "Ctrl-C" not in snap
            assert "PROVIDER" in snap and "first" in snap and "second" in snap

        st.sims["first"].push_fault(Fault(kind="status", status=500, message="upstream broke"))
        st.sims["first"].push_fault(Fault(kind="status", status=500, message="upstream broke"))
        st.sims["first"].push_fault(Fault(kind="status", status=500, message="upstream broke"))

        # a failover between the first and the second poll shows in the second snapshot
        codes: list[int | str | None] = []

        async def watch() -> None:
            argv = ("status", "--watch", "--count", "2", "--interval", "1.5", "--socket", sock)
            codes.append(await in_thread(functools.partial(run_main, *argv)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(0.5)
            await st.ask()
        assert codes == [0]
        out, _ = capsys.readouterr()
        first_snap, second_snap = out.rstrip("\n").split("\n\n")
        assert "changes since" not in first_snap
        assert "first failed" in second_snap and "upstream broke" in second_snap
        assert "failover → second" in second_snap

        code = await in_thread(
            lambda: run_main(
                "status", "--watch", "--json", "--count", "2", "--interval", "0.1", "--socket", sock
            )
        )
        out, _ = capsys.readouterr()
        assert code == 0
        objs = [json.loads(line) for line in out.splitlines()]
        assert len(objs) == 2 and all([p["id"] for p in o["providers"]] == ["first", "second"] for o in objs)


async def test_watch_options_are_checked(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(short_dir / "none.sock")
    for argv, word in [
        (["--watch", "--interval", "0.01"], "--interval"),
        (["--watch", "--interval", "61"], "--interval"),
        (["--watch", "--count", "0"], "--count"),
        (["--count", "2"], "--watch"),
    ]:
        assert await in_thread(functools.partial(run_main, "status", *argv, "--socket", sock)) == 2, argv
        assert word in capsys.readouterr().err
    # a daemon that never answered: exit 3, as `cmctl status`
    assert await in_thread(lambda: run_main("status", "--watch", "--count", "2", "--socket", sock)) == 3
    assert "no daemon" in capsys.readouterr().err


def test_a_daemon_going_away_is_said_each_poll_and_the_watch_goes_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Polls: answers, gone (connection closed), gone (nothing on the socket), answers again."""
    script: list[StatusInfo | Exception] = [
        status(provider()),
        ConnectionClosed("the daemon closed the connection"),
        DaemonUnavailable("no daemon at x"),
        status(provider(), pid=101),
    ]

    class FakeClient:
        def __init__(self, *_: object, **__: object) -> None:
            pass

        def connect(self) -> FakeClient:
            if isinstance(script[0], DaemonUnavailable):
                raise script.pop(0)
            return self

        def status(self) -> StatusInfo:
            item = script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

        def close(self) -> None:
            pass

    monkeypatch.setattr(cli, "Client", FakeClient)
    assert run_main("status", "--watch", "--count", "4", "--interval", "0.1") == 0
    snaps = capsys.readouterr().out.rstrip("\n").split("\n\n")
    assert len(snaps) == 4 and not script
    assert "daemon unavailable (the daemon closed the connection); retrying every 0.1s" in snaps[1]
    assert "daemon unavailable (no daemon at x)" in snaps[2]
    assert "PROVIDER" in snaps[3] and "daemon restarted (pid 100 → 101)" in snaps[3]


def read_until(fd: int, buf: bytearray, done: Callable[[bytes], bool], timeout: float = 15.0) -> None:
    """Read a pseudo-terminal into `buf` until `done(buf)` or its other end closes."""
    deadline = time.monotonic() + timeout
    while not done(bytes(buf)):
        assert time.monotonic() < deadline, f"timed out; read so far: {bytes(buf)!r}"
        if select.select([fd], [], [], 0.1)[0]:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            buf += data


async def test_watch_on_a_terminal_redraws_and_restores_the_cursor_on_ctrl_c(short_dir: Path) -> None:
    async with sims_running() as sims:
        sock = short_dir / "d.sock"
        async with daemon(write_config(short_dir / "c.toml", sims), sock):
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
            try:
                proc = await trio.lowlevel.open_process(
                    [*CMCTL, "status", "--watch", "--interval", "0.1", "--socket", str(sock)],
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                )
                os.close(slave)
                slave = -1
                out = bytearray()
                await in_thread(lambda: read_until(master, out, lambda b: b.count(CLEAR) >= 2))
                proc.send_signal(signal.SIGINT)
                with trio.fail_after(10):
                    code = await proc.wait()
                await in_thread(lambda: read_until(master, out, lambda b: False))
            finally:
                os.close(master)
                if slave >= 0:
                    os.close(slave)
    text = bytes(out)
    assert code == 0, text
    assert b"Traceback" not in text and b"KeyboardInterrupt" not in text
    assert text.startswith(HIDE)
    assert text.rfind(SHOW) > text.rfind(CLEAR)  # the cursor is back after the last redraw
    assert b"PROVIDER" in text and b"(Ctrl-C to quit)" in text
    assert b"recent failovers and errors" in text and b"derived by comparing polls" in text
