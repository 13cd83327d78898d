"""`station-agent verify`: check a station's uploaded recording against its
public key.

    station-agent verify --keys keys.csv https://example.org/stations/AZ-0001
    station-agent verify ./AZ-0001/20261123T061502Z-3fa9c2 --key K3QF...=
    station-agent verify ./AZ-0001 --key AZ-0001.pub --json
    station-agent verify --report csv --keys keys.csv \\
        https://cdn.example.org/stations

It needs only the public key(s) and the files: a folder downloaded from the
upload server (a station's, or one recording's), or the server's URL. Each
segment is OK, NOT OK (altered, or not signed with the station's key), MISSING
(a link of the chain is absent), UNSIGNED, FOREIGN (another station's or
recording's) or LOST (absent, and reported lost by the agent itself); then the
coverage: the span, the seconds recorded and missing, and each gap with the
agent's own reason. Exit 0 only when everything present verifies; 1 when
something does not; 2 when the files or keys cannot be read. With --report,
PATH_OR_URL holds the stations' folders and the keys file names them: one row
per station (coverage share, longest gap, verdict). docs/verification.md
explains it all.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.clock import parse_utc, utc_iso
from agent.core.keys import parse_public_key
from agent.tools.verify import (
    FAILING,
    LOST,
    NOT_OK,
    OK,
    KeyRing,
    SegmentVerdict,
    StationResult,
    station_of,
    verify_station,
)
from agent.tools.verify_files import (
    FolderStore,
    VerifyInputError,
    http_client,
    open_store,
    read_keys_file,
    read_station_or_recording,
)

WIDTH = 80
MAX_GAPS_SHOWN = 50  # in the text output; --json has them all
REASON_COLUMN = 39  # where a segment line's detail starts (wrapped lines are indented to it)
NO_DATA = "NO DATA"
NO_KEY = "NO KEY"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a station's uploaded recording against its public key",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("where", metavar="PATH_OR_URL", help="a station's or a recording's folder/URL")
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", help="the station's public key (base64), or a file holding it")
    keys.add_argument("--keys", type=Path, help="keys file: CSV station_id,public_key,fingerprint")
    p.add_argument("--station", help="station id (default: the folder's name or its manifests')")
    p.add_argument(
        "--report", choices=("csv", "json"),
        help="PATH_OR_URL holds many stations' folders: one row per station (needs --keys)",
    )  # fmt: skip
    p.add_argument("--from", dest="from_utc", help="coverage window start, e.g. 2026-11-23T07:00Z")
    p.add_argument("--until", dest="until_utc", help="coverage window end, e.g. 2026-11-23T20:00Z")
    p.add_argument("--json", action="store_true", help="machine-readable output, every segment")
    p.add_argument("--all", action="store_true", help="a line per segment, not runs of alike ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        ring = _key_ring(args)
        window = _window(args.from_utc, args.until_utc)
        with http_client() as client:
            store = open_store(args.where, client)
            if args.report:
                if args.keys is None:
                    raise VerifyInputError("--report needs --keys (the stations to report on)")
                results = _report(store, ring, window)
                _print_report(results, args.report)
                return 0 if all(r.ok for r in results) else 1
            layout = read_station_or_recording(store, args.where.rstrip("/"), _progress)
    except VerifyInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    station = args.station or _station(layout.station_name, layout.recordings, ring)
    result = verify_station(station, layout.recordings, ring, window)
    if args.json:
        print(json.dumps(station_json(result, segments=True), indent=1))
    else:
        print("\n".join(render_text(result, every_segment=args.all)))
    return 0 if result.ok else 1


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _key_ring(args: argparse.Namespace) -> KeyRing:
    if args.keys is not None:
        try:
            text = args.keys.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise VerifyInputError(f"{args.keys}: cannot read the keys file: {exc}") from None
        return KeyRing(read_keys_file(text, str(args.keys)))
    value = args.key
    path = Path(value)
    try:
        data = path.read_bytes() if len(value) < 4096 and path.is_file() else value.encode()
    except OSError as exc:
        raise VerifyInputError(f"{value}: cannot read the key: {exc}") from None
    try:
        return KeyRing({}, anonymous=parse_public_key(data))
    except ValueError as exc:
        raise VerifyInputError(f"--key: not a station's public key: {exc}") from None


def _window(from_utc: str | None, until_utc: str | None) -> tuple[float, float] | None:
    if from_utc is None and until_utc is None:
        return None
    if from_utc is None or until_utc is None:
        raise VerifyInputError("--from and --until go together")
    try:
        first_s, last_s = parse_utc(from_utc), parse_utc(until_utc)
    except ValueError as exc:
        raise VerifyInputError(f"a time like 2026-11-23T07:00:00Z is needed: {exc}") from None
    if last_s <= first_s:
        raise VerifyInputError("--until must be after --from")
    return first_s, last_s


def _station(folder_name: str, recordings: list[Any], ring: KeyRing) -> str:
    """--keys: the folder's name when the keys file has it; a bare --key: the station its
    manifests name when they verify with it; else the folder's name."""
    if folder_name in ring.keys:
        return folder_name
    return station_of(recordings, ring) or folder_name


def _report(store: Any, ring: KeyRing, window: tuple[float, float] | None) -> list[StationResult]:
    stations = set(ring.keys)
    if isinstance(store, FolderStore):  # folders of stations not in the keys file, too
        stations |= {n for n in store.listing("") or [] if (store.path / n).is_dir()}
    results = []
    for station in sorted(stations):
        _progress(f"{station}:")
        layout = read_station_or_recording(store.child(station), station, _progress)
        results.append(verify_station(station, layout.recordings, ring, window))
    return results


# --- output ------------------------------------------------------------------------------------


def station_verdict(result: StationResult) -> str:
    if result.key_fingerprint is None:
        return NO_KEY
    if not result.verdicts:
        return NO_DATA
    return OK if result.ok else NOT_OK


def _when(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else utc_iso(epoch_s)


def station_json(result: StationResult, segments: bool) -> dict[str, Any]:
    longest = result.longest_gap
    data: dict[str, Any] = {
        "station_id": result.station_id,
        "key_fingerprint": result.key_fingerprint,
        "verdict": station_verdict(result),
        "counts": result.counts(),
        "first_utc": _when(result.first_s),
        "last_utc": _when(result.last_s),
        "span_s": round(result.span_s, 3),
        "recorded_s": round(result.covered_s, 3),
        "missing_s": round(result.missing_s, 3),
        "coverage": round(result.coverage, 5),
        "longest_gap_s": round(longest.seconds, 3) if longest else 0.0,
        "longest_gap_start_utc": _when(longest.start_s) if longest else None,
        "longest_gap_reason": "; ".join(longest.reasons) if longest else "",
    }
    if segments:
        data["gaps"] = [
            {
                "start_utc": utc_iso(g.start_s),
                "end_utc": utc_iso(g.end_s),
                "seconds": round(g.seconds, 3),
                "reasons": list(g.reasons),
                "detail": g.detail,
            }
            for g in result.gaps
        ]
        data["recordings"] = [r.recording_id for r in result.recordings]
        data["segments"] = [v.as_dict() for v in result.verdicts]
    return data


REPORT_COLUMNS = (
    "station_id", "verdict", "coverage", "recorded_s", "missing_s", "longest_gap_s",
    "longest_gap_start_utc", "longest_gap_reason", "first_utc", "last_utc", "ok", "not_ok",
    "missing", "unsigned", "foreign", "lost", "key_fingerprint",
)  # fmt: skip


def report_rows(results: list[StationResult]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        data = station_json(result, segments=False)
        counts = data.pop("counts")
        for verdict, n in counts.items():
            data[verdict.lower().replace(" ", "_")] = n
        rows.append({column: data.get(column) for column in REPORT_COLUMNS})
    return rows


def _print_report(results: list[StationResult], form: str) -> None:
    rows = report_rows(results)
    if form == "json":
        print(json.dumps(rows, indent=1))
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def render_text(result: StationResult, every_segment: bool = False) -> list[str]:
    """The observer's page: what was checked, each run of segments, the coverage, the verdict.
    No line is longer than WIDTH."""
    key = result.key_fingerprint or "none given"
    lines = [f"station {result.station_id or '?'}  key {key}"]
    for recording in result.recordings:
        n = len(recording.verdicts)
        lines.append(f"recording {recording.recording_id}: {n} segment(s)")
        lines += [_segment_line(run) for run in _runs(recording.verdicts, every_segment)]
    lines += _coverage_lines(result)
    counts = result.counts()
    bad = ", ".join(f"{counts[v]} {v}" for v in FAILING if counts[v])
    lost = f"; {counts[LOST]} reported lost by the agent" if counts[LOST] else ""
    verdict = station_verdict(result)
    lines.append(f"verdict: {verdict}" + (f" ({bad})" if bad else "") + lost)
    return [wrapped for line in lines for wrapped in _wrap(line)]


def _runs(verdicts: list[SegmentVerdict], every_segment: bool) -> list[list[SegmentVerdict]]:
    runs: list[list[SegmentVerdict]] = []
    for verdict in verdicts:
        last = runs[-1][-1] if runs else None
        if (
            not every_segment
            and last is not None
            and last.seq + 1 == verdict.seq
            and (last.verdict, last.reason) == (verdict.verdict, verdict.reason)
        ):
            runs[-1].append(verdict)
        else:
            runs.append([verdict])
    return runs


def _segment_line(run: list[SegmentVerdict]) -> str:
    first, last = run[0], run[-1]
    seqs = f"{first.seq:08d}" if len(run) == 1 else f"{first.seq:08d}-{last.seq:08d}"
    start = _clock(first.started_utc)
    if first.verdict == OK:
        seconds = sum(v.duration_s or 0.0 for v in run)
        detail = f"{len(run)} segment(s), {_duration(seconds)}"
    else:
        detail = first.reason if len(run) == 1 else f"{len(run)} x {first.reason}"
    return f"  {seqs:<17} {first.verdict:<8} {start:<8}  {detail}"


def _coverage_lines(result: StationResult) -> list[str]:
    if result.first_s is None or result.last_s is None:
        return ["coverage: nothing verified"]
    lines = [
        f"coverage {_date_time(result.first_s)} to {_date_time(result.last_s)} UTC "
        f"({_duration(result.span_s)})",
        f"  recorded {_duration(result.covered_s)} ({100 * result.coverage:.1f} %), "
        f"missing {_duration(result.missing_s)} in {len(result.gaps)} gap(s)",
    ]
    for gap in result.gaps[:MAX_GAPS_SHOWN]:
        detail = f": {gap.detail}" if gap.detail else ""
        lines.append(
            f"  gap {_date_time(gap.start_s)} to {_clock(utc_iso(gap.end_s))}, "
            f"{_duration(gap.seconds)}{detail}"
        )
        reasons = gap.reasons or ("(the agent reported no reason)",)
        lines += [f"    {reason}" for reason in reasons]
    if len(result.gaps) > MAX_GAPS_SHOWN:
        lines.append(f"  ... and {len(result.gaps) - MAX_GAPS_SHOWN} more gaps (see --json)")
    return lines


def _wrap(line: str) -> list[str]:
    if len(line) <= WIDTH:
        return [line]
    indent = REASON_COLUMN if line.startswith("  0") else len(line) - len(line.lstrip()) + 2
    return textwrap.wrap(line, WIDTH, subsequent_indent=" " * indent, break_long_words=True)


def _clock(utc: str | None) -> str:
    """'2026-11-23T06:15:02.133Z' -> '06:15:02'; '-' when unknown."""
    if utc is None:
        return "-"
    try:
        return datetime.fromtimestamp(parse_utc(utc), UTC).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return "?"


def _date_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    """'13h44m58s', '4m58s', '36s', '0.4s'."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
