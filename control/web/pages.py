"""Server-rendered HTML of the dashboard: plain functions from data to text, every value
escaped. Live parts (the overview's counts and rows, a station's state) are fragments the
pages and the Server-Sent Events share, so the browser only swaps them in."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from control.alarms import CAUSES, Alarm
from control.centre import STATES
from control.store import AuditRow, EventRow, Sample

STATE_TITLES = {
    "offline": "offline",
    "stale": "silent",
    "problem": "problem",
    "never_seen": "never seen",
    "ok": "fine",
}
RUNG_CHOICES = ("1080p30", "720p30", "480p30", "360p30", "240p15")
COMMAND_TITLES = {
    "set_rung": "Pin quality",
    "auto": "Automatic quality",
    "restart_capture": "Restart camera",
    "retake_reference": "Retake reference picture",
}


def e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def when(wall_s: float | None) -> str:
    if wall_s is None:
        return "—"
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(wall_s: float | None, now_s: float) -> str:
    if wall_s is None:
        return "never"
    s = max(0.0, now_s - wall_s)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def num(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def layout(title: str, user: dict[str, Any] | None, body: str, *, page: str = "") -> str:
    nav = ""
    if user is not None:
        links = [("/", "Overview", "overview"), ("/alarms", "Alarms", "alarms")]
        items = "".join(
            f'<a href="{href}"{" class=here" if page == key else ""}>{label}</a>'
            for href, label, key in links
        )
        nav = (
            f'<nav>{items}<span class="who">{e(user["name"])} ({e(user["role"])})'
            f'<form method="post" action="/logout">{csrf_field(user)}'
            '<button class="link">log out</button></form></span></nav>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · station-control</title>"
        '<link rel="stylesheet" href="/static/style.css">'
        '<script src="/static/dashboard.js" defer></script></head>'
        f'<body data-page="{e(page)}"><header><h1>station-control</h1>{nav}</header>'
        f"<main>{body}</main></body></html>"
    )


def csrf_field(user: dict[str, Any]) -> str:
    return f'<input type="hidden" name="csrf" value="{e(user["csrf"])}">'


def login_page(error: str = "", next_url: str = "/") -> str:
    problem = f'<p class="text-error">{e(error)}</p>' if error else ""
    body = (
        '<form class="login" method="post" action="/login"><h2>Log in</h2>'
        f'{problem}<input type="hidden" name="next" value="{e(next_url)}">'
        '<label>User <input name="user" autocomplete="username" required autofocus></label>'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        "<button>Log in</button></form>"
    )
    return layout("Log in", None, body)


# -- overview -------------------------------------------------------------------------------


def overview_page(ov: dict[str, Any], query: dict[str, str], user: dict[str, Any]) -> str:
    def select(name: str, options: Iterable[tuple[str, str]], label: str) -> str:
        opts = "".join(
            f'<option value="{e(v)}"{" selected" if query.get(name) == v else ""}>{e(t)}</option>'
            for v, t in options
        )
        return f'<label>{label} <select name="{name}">{opts}</select></label>'

    regions = [("", "all")] + [(r, r) for r in ov["regions"]]
    problems = [("", "all"), ("any", "any problem")] + [(c, t[2]) for c, t in CAUSES.items()]
    states = [("", "all")] + [(s, STATE_TITLES[s]) for s in STATES]
    form = (
        '<form class="filters" method="get" action="/">'
        + select("region", regions, "Region")
        + select("problem", problems, "Problem")
        + select("state", states, "State")
        + f'<label>Station <input name="q" value="{e(query.get("q", ""))}" '
        'placeholder="id or name"></label><button>Filter</button> '
        f'<a href="/report.csv">Today\'s report (CSV)</a></form>'
    )
    frag = overview_fragments(ov)
    body = (
        f'<section id="counts" class="counts">{frag["counts"]}</section>{form}'
        f'<p class="meta">Showing <span id="shown">{frag["shown"]}</span> of '
        f'<span id="matching">{frag["matching"]}</span> matching stations, problems first. '
        '<span id="live" class="live">live</span></p>'
        '<table class="stations"><thead><tr><th>Station</th><th>Name</th><th>Region</th>'
        "<th>State</th><th>Problems</th><th>Quality</th><th>Live lag</th><th>Last heard</th>"
        f'</tr></thead><tbody id="rows">{frag["rows"]}</tbody></table>'
    )
    return layout("Overview", user, body, page="overview")


def overview_fragments(ov: dict[str, Any], now_s: float | None = None) -> dict[str, Any]:
    now = datetime.now(UTC).timestamp() if now_s is None else now_s
    counts = "".join(
        f'<a class="count {s}" href="/?{urlencode({"state": s})}" data-state="{s}">'
        f"<b>{ov['counts'][s]}</b> {STATE_TITLES[s]}</a>"
        for s in STATES
    )
    counts += f'<span class="count total"><b>{ov["total"]}</b> stations</span>'
    rows = "".join(_station_row(r, now) for r in ov["rows"])
    return {
        "counts": counts,
        "rows": rows,
        "matching": ov["matching"],
        "shown": len(ov["rows"]),
        "version": ov["version"],
    }


def _station_row(r: dict[str, Any], now_s: float) -> str:
    problems = " ".join(
        f'<span class="tag {p["severity"]}{" acked" if p["acked"] else ""}" '
        f'title="{e(p["cause"])}">{e(p["title"])}</span>'
        for p in r["problems"]
    )
    sid = r["station_id"]
    lag = num(r["live_lag_s"], " s")
    return (
        f'<tr class="{r["state"]}" data-station="{e(sid)}">'
        f'<td><a href="/station/{quote(sid)}">{e(sid)}</a></td><td>{e(r["name"])}</td>'
        f'<td>{e(r["region"])}</td><td><span class="state {r["state"]}">'
        f"{STATE_TITLES[r['state']]}</span></td><td>{problems}</td><td>{e(r['rung'] or '—')}</td>"
        f"<td>{lag}</td><td>{ago(r['seen_wall_s'], now_s)}</td></tr>"
    )


# -- station ----------------------------------------------------------------------------------


def station_page(
    st: dict[str, Any],
    events: list[EventRow],
    samples: list[Sample],
    audit: list[AuditRow],
    user: dict[str, Any],
    *,
    now_s: float,
    hours: float,
    snapshot_wall_s: float | None,
) -> str:
    sid = st["station_id"]
    path = f"/station/{quote(sid)}"
    commands = ""
    if user["operator"]:
        rungs = "".join(f"<option>{r}</option>" for r in RUNG_CHOICES)
        commands = (
            '<section class="commands"><h3>Commands</h3>'
            f'<form method="post" action="{path}/command">{csrf_field(user)}'
            '<input type="hidden" name="command" value="set_rung">'
            f'<select name="rung" aria-label="rung">{rungs}</select>'
            f"<button>{COMMAND_TITLES['set_rung']}</button></form>"
            + "".join(
                f'<form method="post" action="{path}/command">{csrf_field(user)}'
                f'<input type="hidden" name="command" value="{c}">'
                f"<button>{COMMAND_TITLES[c]}</button></form>"
                for c in ("auto", "restart_capture", "retake_reference")
            )
            + "</section>"
        )
    taken = f"taken {when(snapshot_wall_s)} UTC" if snapshot_wall_s else "taken now"
    snap = (
        f'<figure class="snapshot"><img id="snapshot" src="{path}/snapshot.jpg" '
        f'alt="latest picture of {e(sid)}" width="320">'
        f"<figcaption>Snapshot {taken}"
        f'<form method="post" action="{path}/snapshot">{csrf_field(user)}'
        '<button class="link">refresh</button></form></figcaption></figure>'
    )
    body = (
        f"<h2>{e(sid)} <small>{e(st['name'])} {e(st['region'])}</small></h2>"
        f'<div class="station-top"><div id="station-live" data-station="{e(sid)}">'
        f"{station_fragment(st, now_s, user)}</div>{snap}</div>"
        f"{commands}"
        f"<section><h3>Last {hours:g} hours</h3>"
        f"{svg_chart(samples, now_s, hours)}{svg_timeline(events, now_s, hours)}</section>"
        f"<section><h3>Events</h3>{events_table(events)}</section>"
        f"<section><h3>Commands sent</h3>{audit_table(audit)}</section>"
    )
    return layout(sid, user, body, page="station")


def station_fragment(st: dict[str, Any], now_s: float, user: dict[str, Any]) -> str:
    def row(label: str, value: str) -> str:
        return f"<tr><th>{label}</th><td>{value}</td></tr>"

    state = st["state"]
    offline = ""
    if st.get("status") == "offline":
        offline = "clean stop" if st.get("clean_stop") else "connection lost"
        offline = f" ({offline}: {e(st.get('offline_reason'))})"
    free, total = st.get("spool_free_bytes"), st.get("spool_total_bytes")
    disk = f"{100 * free / total:.0f}% free" if free is not None and total else "—"
    flags = ", ".join(st.get("health_flags") or []) or "fine"
    table = (
        '<table class="facts">'
        + row("State", f'<span class="state {state}">{STATE_TITLES[state]}</span>{offline}')
        + row("Last heard", ago(st.get("seen_wall_s"), now_s))
        + row("Camera", f"{e(st.get('capture_state') or '—')}, picture {e(flags)}")
        + row(
            "Quality",
            f"{e(st.get('rung') or '—')} at {num(_kbps(st.get('bitrate_bps_actual')), ' kbit/s')}"
            + (f" (pinned {e(st['pinned'])})" if st.get("pinned") else ""),
        )
        + row("Live lag", num(st.get("live_lag_s"), " s", 1))
        + row("Backlog", num(st.get("backlog_s"), " s"))
        + row("Upload failures", e(st.get("upload_failures", 0)))
        + row("Segments lost", e(st.get("lost_segments", 0)))
        + row("Disk", disk)
        + row("Clock", _skew(st.get("clock_skew_s")))
        + row("Version", e(st.get("version") or "—"))
        + row("Last event", f"{e(st.get('last_event_kind'))} {e(st.get('last_event_message'))}")
        + "</table>"
    )
    return table + alarms_list(st.get("alarms", []), user)


def _skew(skew_s: float | None) -> str:
    if skew_s is None:
        return "—"
    return "on time" if abs(skew_s) < 1 else f"{skew_s:+.0f} s off"


def _kbps(bps: float | None) -> float | None:
    return None if bps is None else bps / 1000


def alarms_list(alarms: list[dict[str, Any]], user: dict[str, Any]) -> str:
    if not alarms:
        return '<p class="text-ok">No active alarm.</p>'
    items = []
    for a in alarms:
        ack = f"acknowledged by {e(a['acked_by'])}" if a["acked_by"] else ""
        if not a["acked_by"] and user["operator"]:
            ack = (
                f'<form method="post" action="/alarms/{e(a["id"])}/ack">{csrf_field(user)}'
                "<button>Acknowledge</button></form>"
            )
        items.append(
            f'<li class="{a["severity"]}"><b>{e(a["title"])}</b> since '
            f"{when(a['started_wall_s'])} UTC: {e(a['detail'])} {ack}</li>"
        )
    return f'<ul class="alarms">{"".join(items)}</ul>'


def events_table(events: list[EventRow]) -> str:
    if not events:
        return "<p>No events.</p>"
    rows = "".join(
        f'<tr class="{ev.severity}"><td>{e(ev.at_utc)}</td><td>{e(ev.kind)}</td>'
        f"<td>{e(ev.severity)}</td><td>{e(ev.message)}</td></tr>"
        for ev in events[:200]
    )
    return (
        '<table class="events"><thead><tr><th>At (box clock, UTC)</th><th>Kind</th>'
        f"<th>Severity</th><th>Message</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def audit_table(audit: list[AuditRow]) -> str:
    if not audit:
        return "<p>None yet.</p>"
    rows = []
    for a in audit:
        if a.ok is None:
            reply = "waiting…"
        elif a.ok:
            reply = "ok " + e(_short(a.result))
        else:
            reply = f'<span class="text-error">{e(a.error)}</span>'
        rows.append(
            f'<tr data-audit="{a.id}"><td>{when(a.wall_s)}</td><td>{e(a.user)}</td>'
            f"<td>{e(a.command)} {e(_short(a.args))}</td><td>{'yes' if a.signed else 'no'}</td>"
            f'<td class="reply">{reply}</td></tr>'
        )
    return (
        '<table class="audit"><thead><tr><th>Sent (UTC)</th><th>By</th><th>Command</th>'
        f"<th>Signed</th><th>Reply</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _short(value: dict[str, Any] | None) -> str:
    if not value:
        return ""
    text = ", ".join(f"{k}: {v}" for k, v in value.items() if not isinstance(v, dict))
    return text[:120]


# -- charts (inline SVG) --------------------------------------------------------------------

CHART_W, CHART_H, PAD = 720, 140, 36


def _x(wall_s: float, now_s: float, hours: float) -> float:
    return PAD + (CHART_W - 2 * PAD) * (1 - (now_s - wall_s) / (hours * 3600))


def _axis(now_s: float, hours: float, height: int) -> str:
    ticks = []
    step_h = max(1, math.ceil(hours / 6))
    for h in range(0, int(hours) + 1, step_h):
        x = _x(now_s - h * 3600, now_s, hours)
        label = datetime.fromtimestamp(now_s - h * 3600, UTC).strftime("%H:%M")
        ticks.append(
            f'<line x1="{x:.0f}" y1="{height - 18}" x2="{x:.0f}" y2="{height - 14}" class="tick"/>'
            f'<text x="{x:.0f}" y="{height - 3}" class="label" text-anchor="middle">{label}</text>'
        )
    return "".join(ticks)


def svg_chart(samples: list[Sample], now_s: float, hours: float) -> str:
    """Picture height (rung) and live lag over the last hours, one line each."""
    if not samples:
        return '<p class="meta">No samples yet (one a minute per station).</p>'
    plot_h = CHART_H - 24

    def y(value: float, top: float) -> float:
        return 4 + plot_h * (1 - min(value, top) / top)

    heights = [s for s in samples if s.rung_height is not None]
    top_h = max([1080.0] + [float(s.rung_height or 0) for s in heights])
    lags = [s for s in samples if s.live_lag_s is not None]
    top_lag = max([10.0] + [float(s.live_lag_s or 0) for s in lags])
    rung = " ".join(f"{_x(s.wall_s, now_s, hours):.1f},{y(s.rung_height or 0, top_h):.1f}"
                    for s in heights)  # fmt: skip
    lag = " ".join(f"{_x(s.wall_s, now_s, hours):.1f},{y(s.live_lag_s or 0, top_lag):.1f}"
                   for s in lags)  # fmt: skip
    return (
        f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
        'aria-label="picture height and live lag">'
        f'<rect x="{PAD}" y="4" width="{CHART_W - 2 * PAD}" height="{plot_h}" class="plot"/>'
        f'<polyline points="{rung}" class="rung"/><polyline points="{lag}" class="lag"/>'
        f"{_last_point(rung, 'rung')}{_last_point(lag, 'lag')}"
        f'<text x="4" y="14" class="label rung-label">{top_h:.0f}p</text>'
        f'<text x="{CHART_W - 4}" y="14" class="label lag-label" text-anchor="end">'
        f"{top_lag:.0f} s</text>{_axis(now_s, hours, CHART_H)}"
        f'<text x="{PAD + 4}" y="{plot_h}" class="label"><tspan class="rung-label">'
        '— picture height</tspan> <tspan class="lag-label">— live lag</tspan></text></svg>'
    )


def _last_point(points: str, css: str) -> str:
    """A dot on the newest sample: a single sample is visible too."""
    if not points:
        return ""
    x, y = points.rsplit(" ", 1)[-1].split(",")
    return f'<circle cx="{x}" cy="{y}" r="3" class="{css}-dot"/>'


def svg_timeline(events: list[EventRow], now_s: float, hours: float) -> str:
    """Each event as a mark on the time axis, coloured by severity (hover: its message)."""
    height = 46
    marks = []
    for ev in events:
        x = _x(ev.received_wall_s, now_s, hours)
        if x < PAD:
            continue
        marks.append(
            f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="26" class="mark {e(ev.severity)}">'
            f"<title>{e(ev.at_utc)} {e(ev.kind)}: {e(ev.message)}</title></line>"
        )
    return (
        f'<svg class="timeline" viewBox="0 0 {CHART_W} {height}" role="img" '
        'aria-label="events on a timeline">'
        f'<line x1="{PAD}" y1="26" x2="{CHART_W - PAD}" y2="26" class="axis"/>'
        f"{''.join(marks)}{_axis(now_s, hours, height)}</svg>"
    )


# -- alarms -----------------------------------------------------------------------------------


def alarms_page(active: list[Alarm], history: list[Alarm], user: dict[str, Any]) -> str:
    def rows(alarms: list[Alarm], with_ack: bool) -> str:
        out = []
        for a in alarms:
            if a.acked_by:
                ack = f"{e(a.acked_by)} at {when(a.acked_wall_s)}"
            elif with_ack and user["operator"]:
                ack = (
                    f'<form method="post" action="/alarms/{e(a.alarm_id)}/ack">'
                    f"{csrf_field(user)}<button>Acknowledge</button></form>"
                )
            else:
                ack = "—"
            out.append(
                f'<tr class="{a.severity}" data-alarm="{e(a.alarm_id)}">'
                f'<td><a href="/station/{quote(a.station_id)}">{e(a.station_id)}</a></td>'
                f"<td>{e(a.title)}</td><td>{e(a.severity)}</td><td>{e(a.detail)}</td>"
                f"<td>{when(a.started_wall_s)}</td><td>{when(a.cleared_wall_s)}</td>"
                f"<td>{ack}</td></tr>"
            )
        return "".join(out)

    head = (
        "<thead><tr><th>Station</th><th>Alarm</th><th>Severity</th><th>Detail</th>"
        "<th>Started (UTC)</th><th>Cleared</th><th>Acknowledged</th></tr></thead>"
    )
    body = (
        f'<h2>Active alarms ({len(active)})</h2><table class="alarms-table">{head}'
        f'<tbody id="active-alarms">{rows(active, True)}</tbody></table>'
        f'<h2>Last 24 hours</h2><table class="alarms-table">{head}'
        f"<tbody>{rows(history, False)}</tbody></table>"
    )
    return layout("Alarms", user, body, page="alarms")
