"""Chaos bench (issue 12): the real agent against real nginx (WebDAV) and mosquitto through the
fault proxy for several minutes, faults on a schedule drawn from a seed, then one table that
reconciles what the camera recorded, what the server holds and what the agent said it lost.

    .venv/bin/python -m bench.chaos [--minutes 6] [--seed 1] [--kills 12] [--quick] [--keep DIR]

    agent --HTTP--> FaultProxy --> UploadLedger (records every PUT) --> nginx
    agent --MQTT--> mosquitto <-- recorder (a persistent subscriber for the whole run)

The station's life: box-1 records with its wall clock stepped (-1 h, then +2 h, monotonic left
real: tests/peers/wallclock.py) through kill -9 (at random moments, right after a segment
boundary, mid-upload on a throttled link), a broker restart, an upload outage and a stalled
request, a 413 on one segment, segment files deleted and truncated, its index deleted and later
corrupted (a copy is kept first: that recording is then known only from the copy and the
server). Box-2 is a box on a small tmpfs (a private mount namespace) that fills with the link
down. Box-3 replaces the box: a fresh folder, the same station id, more kills. Each box drains
its uploads and stops cleanly at the end of its life. Every box signs with the station's key:
manifests go up beside the segments (counted apart, checked for overwrites like them), and
`station-agent verify` judges the upstream at the end (printed, not part of the verdict).

Exit 1 when a recorded segment is lost without a report (UNREPORTED LOST) or an upstream
object was overwritten; the table says which.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.tools.station_key import KEY_NAME, PUBLIC_NAME, load_or_make_key, write_key_files
from bench.chaos_boxes import (
    Box,
    caught_writing,
    corrupt_index,
    damage_pending_files,
    delete_index,
    held_segments,
    highest_seq,
    keep_index,
    listdir,
    lost_seqs,
    pending,
    read_index,
    read_server,
    recording_id,
)
from bench.chaos_ledger import UploadLedger
from bench.chaos_reconcile import Evidence, IndexCopy, Reconciliation, reconcile, render
from tests.peers.config import SMALL_RUNG, agent_config
from tests.peers.faultproxy import FaultProxy
from tests.peers.mosquitto import Mosquitto, Subscriber
from tests.peers.nginx import Nginx
from tests.peers.wallclock import WallClockShim

log = logging.getLogger("bench.chaos")

STATION = "CHAOS-0001"
SMALL_DISK_MB = 6  # ~30 noisy 1.5 Mbit/s segments: full within half a minute
SMALL_DISK_RUNG = {"width": 320, "height": 240, "fps": 15, "bitrate_bps": 1_500_000}
THROTTLE_BPS = 320_000  # about one segment a second: uploads are always in flight
STALL_S = 12.0  # longer than the agent's 10 s request timeout
BROKER_DOWN_S = 6.0
BOUNDARY_POLL_S = 0.001  # how often a boundary kill looks for a new file in segments/
MOMENT_WAIT_S = 5.0  # a boundary or an upload to kill at comes within this, or it kills anyway
DRAIN_S = 90.0  # a box's backlog is uploaded within this at the end of its life
SETTLE_S = 30.0  # damaged files are found (and reported) by then
EVICTIONS = 3  # the small disk is full once this many segments were evicted unuploaded
FILL_S = 150.0
QUIET_S = 3.0  # the MQTT recorder is done when nothing came for this long
VERIFY_LINES = 30  # of the verifier's report, its last lines (the summary) are printed


@dataclass(frozen=True)
class BoxPlan:
    label: str
    small_disk_mb: int | None = None
    clock_shim: bool = False  # its wall clock can be stepped


@dataclass(frozen=True)
class Kill:
    mode: str  # "random" (now), "boundary" (a new segment file appears), "upload" (a .ts PUT)
    then: tuple[str, ...] = ()  # before the restart: delete_index, corrupt_index, damage_files
    down_s: float = 1.0


@dataclass(frozen=True)
class Step:
    at_s: float  # seconds into the run; a step that blocks delays the ones after it
    action: str
    arg: Any = None


# -- the schedule ------------------------------------------------------------------------------


def plan(seed: int, total_s: float, kills: int, small_disk: bool = True) -> list[Step]:
    """The station's life in `total_s` seconds, fault times drawn from `seed`."""
    rng = random.Random(seed)
    t = total_s

    def at(lo: float, hi: float) -> float:
        return t * rng.uniform(lo, hi)

    replaced_kills = min(3, kills // 4)
    steps = [Step(0.0, "start_box", BoxPlan("box-1", clock_shim=True))]
    steps += [Step(at(0.05, 0.07), "refuse_segment"), Step(0.26 * t, "lift_refusal")]
    broker_at = at(0.10, 0.14)
    steps += [Step(broker_at, "broker_down"), Step(broker_at + BROKER_DOWN_S, "broker_up")]
    steps += [Step(at(0.15, 0.19), "clock_step", -3600.0)]
    steps += [Step(at(0.36, 0.40), "clock_step", 7200.0)]
    outage = (0.21 * t, 0.21 * t + max(12.0, 0.07 * t))
    steps += [Step(outage[0], "link_down"), Step(outage[1], "link_up")]
    throttle = (0.43 * t, 0.53 * t)
    steps += [Step(throttle[0], "throttle", THROTTLE_BPS), Step(throttle[1], "throttle", None)]
    steps += [Step(at(0.54, 0.56), "stall", STALL_S)]
    times = _slots(rng, kills - replaced_kills, 0.04 * t, 0.56 * t)
    then = _index_faults(times, outage, 0.33 * t, 0.47 * t)
    for k, kill_at in enumerate(times):
        throttled = throttle[0] < kill_at < throttle[1]
        mode = "upload" if throttled else rng.choice(["random", "boundary"])
        steps.append(Step(kill_at, "kill", Kill(mode, then.get(k, ()), rng.uniform(0.3, 2.0))))
    steps.append(Step(0.58 * t, "end_box"))
    if small_disk:
        steps += [
            Step(0.60 * t, "link_down"),
            Step(0.60 * t, "start_box", BoxPlan("box-2", small_disk_mb=SMALL_DISK_MB)),
            Step(0.60 * t, "wait_disk_full", EVICTIONS),
            Step(0.60 * t, "link_up"),
            Step(0.74 * t, "end_box"),
        ]
    steps.append(Step(0.76 * t, "start_box", BoxPlan("box-3")))
    for kill_at in _slots(rng, replaced_kills, 0.80 * t, 0.96 * t):
        steps.append(Step(kill_at, "kill", Kill(rng.choice(["random", "boundary"]))))
    steps.append(Step(t, "end_box"))
    return sorted(steps, key=lambda s: s.at_s)  # stable: equal times keep their order


def _slots(rng: random.Random, n: int, start_s: float, end_s: float) -> list[float]:
    """n times spread over [start_s, end_s], each jittered within its own slot."""
    width = (end_s - start_s) / max(n, 1)
    return [start_s + width * (k + rng.uniform(0.1, 0.9)) for k in range(n)]


def _index_faults(
    times: list[float], outage: tuple[float, float], delete_s: float, corrupt_s: float
) -> dict[int, tuple[str, ...]]:
    """Which kill damages what before the restart: segment files during the outage (a backlog
    to pick from), the index deleted near delete_s and corrupted near corrupt_s; each on its
    own kill, so one fault's evidence is settled before the next."""
    if len(times) < 3:
        return {}
    order = list(range(len(times)))
    damage = min(order, key=lambda k: abs(times[k] - (outage[0] + outage[1]) / 2))
    order.remove(damage)
    deleted = min(order, key=lambda k: abs(times[k] - delete_s))
    order.remove(deleted)
    corrupted = min(order, key=lambda k: abs(times[k] - corrupt_s))
    return {damage: ("damage_files",), deleted: ("delete_index",), corrupted: ("corrupt_index",)}


# -- the run -----------------------------------------------------------------------------------


class Chaos:
    """The peers, the boxes, and the steps run against them; `evidence()` at the end."""

    def __init__(self, work: Path, seed: int) -> None:
        self.work = work
        self.rng = random.Random(seed ^ 0x5EED)
        self.nginx = Nginx(work / "nginx")
        self.key_dir = work / "etc"  # the station's signing key: every box signs with it
        self.broker = Mosquitto(work / "mosquitto", persistence=True)
        self.ledger: UploadLedger
        self.proxy: FaultProxy
        self.recorder: Subscriber
        self.boxes: list[Box] = []
        self.box: Box | None = None
        self.box_starts: list[tuple[int, str]] = []  # (first MQTT message index, box)
        self.kept: list[tuple[str, str, Path]] = []  # (box, label, folder of a kept index)
        self.faults: list[str] = []  # what was done, for the report
        self.damaged: set[int] = set()  # segment files the bench damaged
        self.refused: set[int] = set()  # segments the server answered 413 to
        self.refused_names: list[str] = []
        self.caught_writing = 0  # kills that left a segment half-stored
        self.small_disk_refused: str | None = None
        self.shim: WallClockShim | None = None  # the wall clock of the box that has one
        self.offsets_s: dict[str, list[float]] = {}  # each offset a box's clock had
        self._t0 = time.monotonic()

    def __enter__(self) -> Chaos:
        self.nginx.start()
        self.ledger = UploadLedger(self.nginx.http_port)
        self.ledger.start()
        self.proxy = FaultProxy("127.0.0.1", self.ledger.port)
        self.proxy.start()
        self.broker.start()
        self.recorder = Subscriber(self.broker, f"stations/{STATION}/#", persistent=True)
        self.small_disk_refused = _small_disk_refused(self.work / "probe")
        self.key_dir.mkdir()
        key, new = load_or_make_key(self.key_dir)
        write_key_files(self.key_dir, key, new, owner=None)
        return self

    def __exit__(self, *exc: object) -> None:
        for box in self.boxes:
            box.agent.kill()
        for stop in (self.recorder.close, self.broker.stop, self.proxy.stop, self.ledger.stop,
                     self.nginx.stop):  # fmt: skip
            try:
                stop()
            except (OSError, RuntimeError) as err:  # keep tearing down the rest
                log.warning("teardown: %s", err)

    # -- steps -----------------------------------------------------------------------------

    def run(self, steps: Sequence[Step]) -> None:
        """Each step at its time; the time a step takes (a kill waiting for its moment, a
        drain) moves the later ones by as much, so every fault keeps its planned spacing."""
        self._t0 = time.monotonic()
        shift_s = 0.0
        for step in steps:
            while (left_s := step.at_s + shift_s - self.elapsed_s) > 0:
                self._watch_box()
                time.sleep(min(left_s, 0.2))
            self._watch_box()
            began_s = self.elapsed_s
            log.info("%6.1f s  %s %s", began_s, step.action, step.arg or "")
            self._actions()[step.action](step.arg)
            shift_s += self.elapsed_s - began_s
        self._await_quiet_recorder()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._t0

    def _actions(self) -> dict[str, Callable[[Any], None]]:
        return {
            "start_box": self._start_box, "end_box": lambda _: self._end_box(),
            "kill": self._kill, "broker_down": lambda _: self._broker(False),
            "broker_up": lambda _: self._broker(True), "link_down": lambda _: self._link(False),
            "link_up": lambda _: self._link(True), "stall": self._stall,
            "throttle": self._throttle, "refuse_segment": lambda _: self._refuse_segment(),
            "lift_refusal": lambda _: self._lift_refusal(), "clock_step": self._clock_step,
            "wait_disk_full": self._wait_disk_full,
        }  # fmt: skip

    def _note(self, text: str) -> None:
        self.faults.append(f"{self.elapsed_s:6.1f} s  {text}")
        log.info("%s", text)

    def _live(self) -> Box:
        assert self.box is not None, "no box is running"
        return self.box

    def _start_box(self, spec: BoxPlan) -> None:
        small = spec.small_disk_mb
        if small is not None and self.small_disk_refused:
            self._note(f"{spec.label}: small disk SKIPPED ({self.small_disk_refused}); normal disk")
            small = None
        env = {}
        if spec.clock_shim:
            self.shim = WallClockShim(self.work / f"clock-{spec.label}")
            env = self.shim.env
        config = box_config(self.proxy.url_for("/ingest"), self.broker.url, noisy=small is not None)
        config["spool"] = {**config["spool"], "signing_key_file": self.key_dir / KEY_NAME}
        box = Box(spec.label, self.work, config, env, small)
        self.boxes.append(box)
        self.box = box
        self.ledger.box = box.label
        self.box_starts.append((len(self.recorder.messages), box.label))
        box.start()
        disk = f"a {small} MB tmpfs in its own mount namespace" if small else "a normal disk"
        replacing = "replacing the box: a fresh folder, " if len(self.boxes) > 1 else ""
        self._note(f"{box.label} starts ({replacing}station {STATION}, {disk})")

    def _end_box(self) -> None:
        box = self._live()
        self.proxy.clear_faults()
        self.proxy.refuse(False)
        self.proxy.set_rate(None)
        if not self.broker.running:
            self.broker.start()
        drained = _wait(lambda: not box.running or not pending(box.spool), DRAIN_S)
        left = pending(box.spool)
        code = box.agent.terminate()
        box.ended("clean stop (SIGTERM)")
        self._note(f"{box.label} stops cleanly (exit {code}); backlog "
                   f"{'drained' if drained else f'NOT drained: {len(left)} pending'}")  # fmt: skip
        self.box = None

    def _watch_box(self) -> None:
        """Like systemd's Restart=always: an agent that exits on its own is started again."""
        box = self.box
        if box is None or box.running:
            return
        box.unexpected_exits += 1
        box.ended(f"exited by itself (code {box.agent.proc.poll() if box.agent.proc else None})")
        self._note(f"{box.label}: the agent EXITED on its own; restarted")
        time.sleep(1.0)
        box.start()

    def _kill(self, kill: Kill) -> None:
        box = self._live()
        if {"delete_index", "corrupt_index"} & set(kill.then) and self.damaged:
            # the damaged files are found (and reported) before the index is lost
            _wait(lambda: self.damaged <= lost_seqs(box.spool), SETTLE_S)
        moment = self._moment(box, kill.mode)
        box.agent.kill()
        box.ended(f"kill -9 {moment}")
        done = [f"kill -9 {box.label} {moment}"]
        spool = box.spool
        if (left := caught_writing(spool)) is not None:
            self.caught_writing += 1
            done.append(f"it left {left}")
        for what in kill.then:
            if what == "damage_files":
                damaged = damage_pending_files(spool, self.rng, spare=self.refused)
                self.damaged |= {int(d.split()[-1][:8]) for d in damaged}
                done += damaged or ["(no backlog to damage)"]
            elif what in ("delete_index", "corrupt_index"):
                label = f"kept before {what.replace('_', ' ')} #{len(self.kept) + 1}"
                folder = self.work / "kept" / f"{box.label}-{len(self.kept) + 1}"
                keep_index(spool, folder)
                self.kept.append((box.label, label, folder))
                (delete_index if what == "delete_index" else
                 lambda s: corrupt_index(s, self.rng))(spool)  # fmt: skip
                done.append(f"{what.replace('_', ' ')} (recording {recording_id(folder)} kept)")
        time.sleep(kill.down_s)
        box.start()
        self._note(", ".join(done) + f"; restarted after {kill.down_s:.1f} s")

    def _moment(self, box: Box, mode: str) -> str:
        """Wait for the moment to kill at; says which it was."""
        if mode == "boundary":
            folder = box.spool / "segments"
            before = set(listdir(folder))
            deadline_s = time.monotonic() + MOMENT_WAIT_S
            while time.monotonic() < deadline_s:
                new = set(listdir(folder)) - before
                if new:
                    return f"as {sorted(new)[0]} appeared (segment boundary)"
                time.sleep(BOUNDARY_POLL_S)
            return "at a random moment (no segment boundary within 5 s)"
        if mode == "upload":
            if self.ledger.wait_for_put(".ts", MOMENT_WAIT_S):
                time.sleep(self.rng.uniform(0.0, 0.3))
                return "during a segment upload"
            return "at a random moment (no upload within 5 s)"
        return "at a random moment"

    def _broker(self, up: bool) -> None:
        if up:
            self.broker.start()
            self._note("broker back")
        else:
            self.broker.stop()
            self._note("broker stopped (restart)")

    def _link(self, up: bool) -> None:
        self.proxy.refuse(not up)
        self._note("upload link back" if up else "upload link down (connections refused)")

    def _stall(self, seconds: float) -> None:
        self.proxy.stall(seconds)
        self._note(f"the next upload request stalls {seconds:.0f} s")

    def _throttle(self, bps: float | None) -> None:
        self.proxy.set_rate(bps)
        self._note(f"upload link throttled to {bps / 1e3:.0f} kbit/s" if bps else "throttle off")

    def _refuse_segment(self) -> None:
        box = self._live()
        rec = recording_id(box.spool)
        if rec is None:
            self._note("413: no recording yet, skipped")
            return
        name = f"{rec}/{highest_seq(box.spool) + 3:08d}.ts"
        self.refused.add(int(name[-11:-3]))
        self.refused_names.append(name)
        self.proxy.inject_status_for(name, 413)
        self._note(f"the server answers 413 to {name}")

    def _lift_refusal(self) -> None:
        self.proxy.clear_faults()
        self._note("413 lifted")

    def _clock_step(self, delta_s: float) -> None:
        """Steps the clock of a running agent (one that just restarted would only see it at
        start, as clock_behind): after its run has stored a segment."""
        assert self.shim is not None, "no box with a steppable clock"
        box = self._live()
        _wait(lambda: highest_seq(box.spool) > box.seq_at_start, MOMENT_WAIT_S * 2)
        self.shim.step(delta_s)
        self.offsets_s.setdefault(self._live().label, [0.0]).append(self.shim.offset_s)
        self._note(f"{self._live().label} wall clock stepped {delta_s:+.0f} s (monotonic real)")

    def _wait_disk_full(self, evictions: int) -> None:
        box = self._live()
        full = _wait(lambda: len(lost_seqs(box.spool)) >= evictions, FILL_S)
        lost = len(lost_seqs(box.spool))
        self._note(f"{box.label}: disk full, {lost} unuploaded segment(s) evicted"
                   f"{'' if full else f' (wanted {evictions} within {FILL_S:.0f} s)'}")  # fmt: skip

    def _await_quiet_recorder(self) -> None:
        count = -1
        while count != len(self.recorder.messages):
            count = len(self.recorder.messages)
            time.sleep(QUIET_S)

    # -- evidence --------------------------------------------------------------------------

    def verify(self) -> tuple[int, str]:
        """`station-agent verify` over the station's folder on the server: its exit code and
        its summary (the verifier's own judgement of the signed record, for the report)."""
        done = subprocess.run(
            [sys.executable, "-m", "agent", "verify", str(self.nginx.root / STATION),
             "--key", str(self.key_dir / PUBLIC_NAME)],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        return done.returncode, done.stdout

    def events(self) -> list[dict[str, Any]]:
        """Every event the recorder got, once each (by id), with the box that was live."""
        seen: set[str] = set()
        events = []
        for k, message in enumerate(list(self.recorder.messages)):
            if not message.topic.endswith("/event"):
                continue
            event = json.loads(message.payload)
            if event["id"] in seen:
                continue
            seen.add(event["id"])
            event["box"] = next((b for start, b in reversed(self.box_starts) if start <= k), "?")
            events.append(event)
        return events

    def last_heartbeat_lost(self, box: str) -> object:
        """spool.lost_segments in the last heartbeat that box sent (None: no heartbeat)."""
        ranges = [*self.box_starts, (len(self.recorder.messages), "")]
        found: object = None
        for (start, label), (end, _) in zip(ranges, ranges[1:], strict=False):
            if label != box:
                continue
            for message in self.recorder.messages[start:end]:
                if message.topic.endswith("/heartbeat"):
                    found = json.loads(message.payload).get("spool", {}).get("lost_segments")
        return found

    def evidence(self) -> Evidence:
        scratch = self.work / "reads"
        copies: list[IndexCopy] = []
        for box_label, label, folder in self.kept:
            copy = read_index(folder, box_label, label, scratch)
            if copy is not None:
                copies.append(copy)
        held: set[tuple[str, int]] = set()
        for box in self.boxes:
            final = read_index(box.spool, box.label, "at the end", scratch)
            if final is not None:
                copies.append(final)
                held |= held_segments(final, box.spool)
        copies = _in_recording_order(copies)
        return Evidence(
            copies=copies,
            held=frozenset(held),
            server=read_server(self.nginx.root / STATION),
            events=self.events(),
            puts=self.ledger.puts(),
            runs=[run for box in self.boxes for run in box.runs],
            station_prefix=f"/ingest/{STATION}/",
            clock_offsets_s={box: tuple(offsets) for box, offsets in self.offsets_s.items()},
        )


def _in_recording_order(copies: list[IndexCopy]) -> list[IndexCopy]:
    """Kept copies of a box before its final index (its recordings in the order they were
    made), boxes in the order they ran."""
    boxes = list(dict.fromkeys(c.box for c in copies))
    return sorted(copies, key=lambda c: (boxes.index(c.box), c.label == "at the end"))


def box_config(upload_url: str, broker_url: str, noisy: bool = False) -> dict[str, Any]:
    """The agent's config for every box (its [spool] path is set by Box): small frames, 1 s
    segments, short intervals so a few minutes hold many uploads, index writes and heartbeats."""
    data = agent_config(
        Path("/unused"),
        station_id=STATION,
        uplink={"http": {
            "url": upload_url, "archive_interval_s": 3.0, "backoff_max_s": 1.0,
            "rejected_backoff_s": 2.0, "refused_max_attempts": 3, "set_aside_retry_s": 5.0,
        }},
        mqtt={"url": broker_url, "heartbeat_s": 2.0, "keepalive_s": 5, "reconnect_max_s": 1.0},
    )  # fmt: skip
    if noisy:  # incompressible frames at a high rate: a small disk fills in seconds
        data["capture"] = {**data["capture"], "source": "test:noise"}
        data["adapt"] = {"ladder": [SMALL_DISK_RUNG]}
    else:
        data["adapt"] = {"ladder": [SMALL_RUNG]}
    return data


def _small_disk_refused(probe: Path) -> str | None:
    """Why this machine will not mount a private tmpfs (None: it will)."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe.mkdir(parents=True, exist_ok=True)
    tried = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", str(probe)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return None if tried.returncode == 0 else f"mount refused: {tried.stderr.strip()}"


def _wait(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


# -- the report --------------------------------------------------------------------------------


def report(chaos: Chaos, result: Reconciliation, evidence: Evidence) -> str:
    events = evidence.events
    kinds = Counter(str(e.get("kind")) for e in events)
    recovered = [e["fields"] for e in events if e.get("kind") == "spool_recovered"]
    kills = sum(1 for f in chaos.faults if "kill -9" in f)
    lines = ["faults injected:", *(f"  {f}" for f in chaos.faults), ""]
    lines.append(
        f"kill -9: {kills}, {chaos.caught_writing} of them while a segment was being stored; "
        f"the starts after them re-indexed "
        f"{sum(f.get('reindexed_segments', 0) for f in recovered)} segment file(s) that had no "
        f"row (with those of a lost index) and removed "
        f"{sum(f.get('removed_temp_files', 0) for f in recovered)} temp file(s)"
    )
    rejected = [e for e in events if e.get("kind") == "upload_rejected"]
    for name in chaos.refused_names:
        fate = (
            "uploaded after the 413 was lifted"
            if name in evidence.server.objects
            else ("NOT upstream under its name")
        )
        lines.append(f"413 on {name}: upload_rejected events {len(rejected)}, {fate}")
    if chaos.small_disk_refused:
        lines.append(f"full file system: SKIPPED, {chaos.small_disk_refused}")
    final_lost = {c.box: len(c.lost) for c in evidence.copies if c.label == "at the end"}
    for box in chaos.boxes:
        lines.append(
            f"{box.label}: {len(box.runs)} run(s), exits on its own {box.unexpected_exits}, "
            f"tracebacks in its log {box.stderr_tracebacks()}; its last heartbeat's "
            f"spool.lost_segments {chaos.last_heartbeat_lost(box.label)}, lost rows in its "
            f"index at the end {final_lost.get(box.label)}"
        )
    lines.append("events: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    lines += ["", render(result)]
    return "\n".join(lines)


def _fate(name: str, evidence: Evidence) -> str:
    """Where the bytes of the segment `name` ended up."""
    rec, _, file = name.partition("/")
    sha = next(
        (r.sha256 for c in evidence.copies for r in c.rows
         if r.recording_id == rec and f"{r.seq:08d}.ts" == file),
        None,
    )  # fmt: skip
    if sha is None:
        return "never stored"
    if evidence.server.objects.get(name) == sha:
        return "uploaded under its name after the 413 was lifted"
    elsewhere = sorted(n for n, s in evidence.server.objects.items() if s == sha)
    return f"upstream as {elsewhere}" if elsewhere else "NOT upstream"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=None, help="default 6 (--quick: 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=None, help="default 12 (--quick: 10)")
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke run")
    parser.add_argument("--keep", type=Path, help="keep the work folder here (must not exist)")
    args = parser.parse_args(argv)
    minutes = args.minutes if args.minutes is not None else (2.0 if args.quick else 6.0)
    kills = args.kills if args.kills is not None else (10 if args.quick else 12)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=args.keep is None)
        steps = plan(args.seed, minutes * 60.0, kills)
        with Chaos(work, args.seed) as chaos:
            chaos.run(steps)
            evidence = chaos.evidence()
            verify_code, verify_out = chaos.verify()
        result = reconcile(evidence)
        print(f"chaos bench: {shlex.join(['python', '-m', 'bench.chaos', *sys.argv[1:]])}")
        print(f"seed {args.seed}, {minutes:g} min planned, {chaos.elapsed_s:.0f} s run, "
              f"station {STATION}, 320x240 test: source, 1 s segments\n")  # fmt: skip
        print(report(chaos, result, evidence))
        print(f"\nstation-agent verify over the upstream (the signed record): exit {verify_code}")
        print("\n".join(f"  {line}" for line in verify_out.splitlines()[-VERIFY_LINES:]))
        print(f"\nverdict: {'PASS' if result.ok else 'FAIL'} (unreported loss "
              f"{len(result.unreported)}, upstream objects overwritten "
              f"{len(result.overwritten) + len(result.cross_box)})")  # fmt: skip
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
