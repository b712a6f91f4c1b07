"""Text renderings of the daemon's answers, shared by `cmctl` and the demo.

Pure: strings in, strings out, so both can print them and tests can compare them.
"""

from __future__ import annotations

from ..protocol import DaemonInfo, ModelsInfo, StatusInfo

__all__ = ["ago", "front_door_off", "render_models", "render_status", "table"]


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
    if d.http:
        lines[0] += f"  http {d.http}"
    if off := front_door_off(d):
        lines.append(off)
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


def front_door_off(daemon: DaemonInfo) -> str:
    """Why the front door the config turns on is not listening, and what to do; empty when it is fine."""
    if not daemon.http_error:
        return ""
    where = daemon.config or "the config"
    return (
        f"the HTTP front door is off: {daemon.http_error}; the daemon still serves its socket. "
        f"Set another `listen` under [http] in {where} (or stop what holds the port), then restart the daemon"
    )
