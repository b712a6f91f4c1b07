"""Text renderings of the daemon's answers, shared by `cmctl` and the demo.

Pure: strings in, strings out, so both can print them and tests can compare them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..protocol import DaemonInfo, ModelsInfo, ProviderStatus, StatusInfo

__all__ = [
    "ago",
    "clip",
    "front_door_off",
    "render_models",
    "render_status",
    "status_changes",
    "table",
    "watch_frame",
]


def ago(seconds: float) -> str:
    """A duration in its two largest units: "4.2s", "3m05s", "2h10m", "1d03h"."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render_status(st: StatusInfo) -> str:
    """What `cmctl status` prints: the daemon line, then a row per provider and per model it tracks."""
    d = st.daemon
    lines = [f"daemon  pid {d.pid}  version {d.version}  up {ago(d.uptime_s)}  socket {d.socket}"]
    if d.transport == "tcp":  # the socket path holds an endpoint file naming a loopback port
        lines[0] += " (tcp)"
    if d.http:
        lines[0] += f"  http {d.http}"
    if off := front_door_off(d):
        lines.append(off)
    if shared := shared_line(st):
        lines.append(shared)
    if not st.providers:
        lines.append("no providers configured (see `cmctl --help` for the config file)")
        return "\n".join(lines)
    rows = [
        [
            "PROVIDER",
            "STATE",
            "READY IN",
            "IN-FLIGHT",
            "REQUESTS",
            "OK%",
            "FAILED",
            "SAVED",
            "CACHED%",
            "PINNED",
            "LAST ERROR",
        ]
    ]
    for p in st.providers:
        ready_in = ago(p.cooldown_remaining_s) if p.cooldown_remaining_s > 0 else "-"
        ok = "-" if p.success_rate is None else f"{p.success_rate * 100:.0f}%"
        cached = "-" if p.cache_read_ratio is None else f"{p.cache_read_ratio * 100:.0f}%"
        err = "-"
        if p.last_error:
            err = (f"{p.last_error_kind}: " if p.last_error_kind else "") + p.last_error
            err = err if len(err) <= 70 else err[:69] + "…"
        rows.append(
            [
                p.id,
                p.state,
                ready_in,
                str(p.in_flight),
                str(p.requests),
                ok,
                str(p.failures),
                str(p.failovers_saved),
                cached,
                str(p.pinned),
                err,
            ]
        )
        for m in p.models:
            rows.append(
                [f"  {m.model}", m.state, ago(m.cooldown_remaining_s), "", "", "", "", "", "", "", m.reason]
            )
    lines.append(table(rows))
    return "\n".join(lines)


def render_models(info: ModelsInfo) -> str:
    """What `cmctl models` prints: each combined model and its members in priority order."""
    if not info.models:
        return "no combined models (configure providers with overlapping models, or [combined.*] entries)"
    rows = [["MODEL", "MEMBERS (in priority order)"]]
    for m in info.models:
        members = ", ".join(f"{x.provider}/{x.model}" for x in m.members)
        rows.append([m.id + (" *" if m.explicit else ""), members])
    note = "\n(* explicit [combined] entry)" if any(m.explicit for m in info.models) else ""
    return table(rows) + note


def shared_line(st: StatusInfo) -> str:
    """The shared health store's line of `cmctl status`; empty when the config names none."""
    sh = st.shared
    if sh.state == "off":
        return ""
    line = f"shared  {sh.state}  {sh.url}  facts sent {sh.facts_sent}, received {sh.facts_received}"
    line += f", applied {sh.facts_applied}"
    if sh.facts_dropped:
        line += f", dropped {sh.facts_dropped}"
    if sh.state != "connected" and sh.last_error:
        line += f"  ({sh.last_error}; serving on local health)"
    return line


def front_door_off(daemon: DaemonInfo) -> str:
    """Why the front door the config turns on is not listening, and what to do; empty when it is fine."""
    if not daemon.http_error:
        return ""
    where = daemon.config or "the config"
    return (
        f"the HTTP front door is off: {daemon.http_error}; the daemon still serves its socket. "
        f"Set another `listen` under [http] in {where} (or stop what holds the port), then restart the daemon"
    )


# ---------------------------------------------------------------- `cmctl status --watch`


def _error_text(p: ProviderStatus) -> str:
    err = (f"{p.last_error_kind}: " if p.last_error_kind else "") + (p.last_error or "")
    return err if len(err) <= 70 else err[:69] + "…"


def status_changes(before: StatusInfo | None, after: StatusInfo, seen: str) -> list[str]:
    """What changed between two polls of the status, one line each, stamped with `seen` (the poll's time).

    The daemon keeps no list of failovers; this derives one from its counters: a provider's
    `failovers_saved` going up means it finished requests another provider had failed, its
    `failures` going up (or a new `last_error`) means attempts on it failed. Failed attempts come
    first, then the failovers, then state changes. Several events between two polls become one line.
    """
    if before is None:
        return []
    if after.daemon.pid != before.daemon.pid:  # its counters started again: comparing them would mislead
        return [f"{seen}  daemon restarted (pid {before.daemon.pid} → {after.daemon.pid})"]
    old = {p.id: p for p in before.providers}
    failed: list[str] = []
    saved: list[str] = []
    states: list[str] = []
    for p in after.providers:
        q = old.get(p.id)
        if q is None:
            continue
        n = p.failures - q.failures
        was = (q.last_error, q.last_error_kind)
        new_error = bool(p.last_error) and (p.last_error, p.last_error_kind) != was
        if n > 0 or new_error:
            times = f" ({n}×)" if n > 1 else ""
            failed.append(f"{seen}  {p.id} failed{times}: {_error_text(p) or '(no message)'}")
        n = p.failovers_saved - q.failovers_saved
        if n > 0:
            what = "a request" if n == 1 else f"{n} requests"
            saved.append(f"{seen}  failover → {p.id}: it finished {what} another provider failed")
        if p.state != q.state:
            ready = f" (ready in {ago(p.cooldown_remaining_s)})" if p.cooldown_remaining_s > 0 else ""
            states.append(f"{seen}  {p.id}: {q.state} → {p.state}{ready}")
    return failed + saved + states


def watch_frame(
    st: StatusInfo, recent: Sequence[str], *, now: str, interval: float, live: bool = True
) -> str:
    """One view of `cmctl status --watch`: a header, the `cmctl status` table, the recent changes.

    `live` (a terminal, redrawn in place): `recent` is the last few changes seen since watching
    began, always shown, with a footer saying where they come from. Not live (one snapshot of a
    log): `recent` is what changed since the previous snapshot, shown only when there is some.
    """
    header = f"{now}  daemon up {ago(st.daemon.uptime_s)}  every {interval:g}s"
    lines = [header + ("  (Ctrl-C to quit)" if live else ""), render_status(st)]
    if live:
        lines += ["", "recent failovers and errors:"]
        lines += [f"  {r}" for r in recent] or ["  none since watching began"]
        lines += [
            "",
            f"(derived by comparing polls every {interval:g}s: the daemon keeps no list of failovers, "
            "so several between two polls show as one line)",
        ]
    elif recent:
        lines += ["changes since the previous snapshot (derived from polling):"]
        lines += [f"  {r}" for r in recent]
    return "\n".join(lines)


def clip(text: str, width: int, height: int | None = None) -> str:
    """`text` cut to `width` columns (a cut line ends in "…") and, if given, `height` lines."""
    if width < 2:
        return text
    lines = [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in text.split("\n")]
    if height is not None and height > 0:
        lines = lines[:height]
    return "\n".join(lines)
