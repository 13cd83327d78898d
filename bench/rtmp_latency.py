"""RTMP live output figures against a real nginx-rtmp on loopback (issue 18).

1. Glass to server: for each frame, from the capture time of its picture (CapturedFrame.
   captured_s, monotonic) to the moment the last byte of its RTMP video message reaches the
   server side: a timestamping proxy in its own process sits in front of nginx's RTMP port,
   parses the chunk stream and notes when each video message is complete. Frames are matched
   by the hash of their FLV tag body (the bench's own packet observer computes the same body),
   so no timestamp mapping is assumed. p50/p95 at 720p30, side by side with the HTTP output's
   glass-to-upstream (segment's first frame to the end of its PUT) measured in the same run.
   Target: p95 < 1 s.
2. CPU of one RTMP output: the agent (this process's CPU time plus the publisher process's)
   with HTTP only and with HTTP + RTMP, in alternating windows of the same run (pairs A/B, each
   after a warm-up); the cost is the median over pairs of (B - A) / A. Target: < 5 %.

    .venv/bin/python -m bench.rtmp_latency [--latency-s 60] [--pairs 6] [--window-s 15]
                                           [--source test:noise]

The camera is the noisy test pattern by default: the encoder then fills the rung's 2.5 Mbit/s as
a real scene does (the clean pattern encodes to ~0.8 Mbit/s at half the encoder's CPU), so the
stream the RTMP output carries, and the agent it is compared with, are the real ones.

Exits 1 when a target is missed (or nothing could be measured).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import psutil

from agent.encode.packet import EncodedPacket
from agent.service.config import config_from_dict
from agent.uplink import rtmp_wire as wire
from agent.uplink.rtmp import RtmpOutput
from agent.uplink.uploader import SegmentUploader
from tests.peers.agent import Running
from tests.peers.config import agent_config
from tests.peers.nginx import Nginx
from tests.peers.ports import free_port

SEGMENT_S = 2.0
LATENCY_TARGET_S = 1.0
CPU_TARGET = 0.05
WARMUP_S = 4.0  # the camera opens, the publisher connects, the first GOP starts
STREAM_KEY = "bench-station"
PROXY_POLL_S = 0.2


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the timestamping proxy (its own process: its clock readings wait on nobody's GIL) --------


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _publisher_side(
    client: socket.socket, upstream: socket.socket, arrivals: list[tuple[str, float]]
) -> None:
    """Forward what the publisher sends; note when each video message (not a sequence header)
    is complete, by the hash of its body."""
    skip = 1 + 2 * wire.HANDSHAKE_SIZE  # C0, C1, C2
    reader = wire.ChunkReader()
    try:
        while data := client.recv(65536):
            arrived_s = time.monotonic()
            upstream.sendall(data)
            if skip:
                used = min(skip, len(data))
                skip, data = skip - used, data[used:]
            for message in reader.feed(data):
                _keyframe, sequence_header = wire.video_tag_info(message.payload)
                if message.type_id == wire.VIDEO and not sequence_header:
                    arrivals.append((hashlib.sha256(message.payload).hexdigest(), arrived_s))
    except OSError:
        pass
    finally:
        upstream.close()


def run_proxy(
    listen_port: int, target_port: int, out_path: str, ready: ProcessEvent, stop: ProcessEvent
) -> None:
    listener = socket.create_server(("127.0.0.1", listen_port))
    listener.settimeout(PROXY_POLL_S)
    arrivals: list[tuple[str, float]] = []
    ready.set()
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        upstream = socket.create_connection(("127.0.0.1", target_port))
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        threading.Thread(
            target=_publisher_side, args=(client, upstream, arrivals), daemon=True
        ).start()
    Path(out_path).write_text(json.dumps(arrivals))


# -- the agent --------------------------------------------------------------------------------


def agent_data(work: Path, nginx: Nginx, rtmp_url: str | None, source: str) -> dict[str, Any]:
    uplink: dict[str, Any] = {"http": {"url": nginx.url}}
    if rtmp_url is not None:
        key_file = work / "stream-key"
        key_file.write_text(STREAM_KEY + "\n")
        key_file.chmod(0o600)
        uplink["rtmp"] = [{"url": rtmp_url, "key_file": str(key_file), "allow_insecure": True}]
    data = agent_config(
        work,
        capture={"source": source, "width": 1280, "height": 720, "fps": 30},
        encode={"segment_s": SEGMENT_S, "preset": "veryfast"},
        uplink=uplink,
    )
    data["adapt"] = {"enabled": False}  # the top rung: 720p30 2.5 Mbit/s
    return data


class GlassTimes:
    """A packet observer: the capture time of each frame, by the hash of its FLV tag body."""

    def __init__(self) -> None:
        self.by_hash: dict[str, deque[float]] = defaultdict(deque)
        self.frames = 0

    def __call__(self, packet: EncodedPacket) -> None:
        body = wire.avc_frame(wire.split_annexb(packet.data), packet.keyframe)
        self.by_hash[hashlib.sha256(body).hexdigest()].append(packet.captured_s)
        self.frames += 1


def latency(work: Path, nginx: Nginx, seconds: float, source: str) -> tuple[float, float]:
    """(RTMP p95, HTTP p95) glass-to-server, printed with their p50s."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    out_path = work / "arrivals.json"
    proxy = context.Process(
        target=run_proxy, args=(port, nginx.rtmp_port, str(out_path), ready, stop), daemon=True
    )
    proxy.start()
    if not ready.wait(30):
        raise RuntimeError("the timestamping proxy did not start")
    rtmp_url = f"rtmp://127.0.0.1:{port}/live"
    running = Running(config_from_dict(agent_data(work, nginx, rtmp_url, source)))
    glass = GlassTimes()
    running.pipeline.encode.packet_observers.append(glass)
    running.pipeline.start()
    time.sleep(seconds)
    uploader, live = running.pipeline.outputs
    assert isinstance(uploader, SegmentUploader) and isinstance(live, RtmpOutput)
    http_samples = list(uploader.latencies_s)[1:]  # the first segment waits for the camera
    status = live.status(time.monotonic())
    running.stop()
    stop.set()
    proxy.join(30)
    arrivals = json.loads(out_path.read_text())
    started_s = min((min(q) for q in glass.by_hash.values() if q), default=0.0)
    rtmp_samples = []
    for digest, arrived_s in arrivals:
        captured = glass.by_hash.get(digest)
        if captured:
            captured_s = captured.popleft()
            if captured_s > started_s + WARMUP_S:
                rtmp_samples.append(arrived_s - captured_s)
    if not rtmp_samples or not http_samples:
        raise RuntimeError(f"nothing measured: {len(rtmp_samples)} RTMP, {len(http_samples)} HTTP")
    print(
        f"glass to server, 720p30 2.5 Mbit/s, {seconds:.0f} s run (first {WARMUP_S:.0f} s left out)"
    )
    print(
        f"  RTMP  frames {len(rtmp_samples):5d}  p50 {percentile(rtmp_samples, 0.5):.3f} s  "
        f"p95 {percentile(rtmp_samples, 0.95):.3f} s  max {max(rtmp_samples):.3f} s  "
        f"(of {glass.frames} encoded; dropped {status['dropped_frames']}, "
        f"reconnects {status['reconnects']})"
    )
    print(
        f"  HTTP  segs   {len(http_samples):5d}  p50 {percentile(http_samples, 0.5):.3f} s  "
        f"p95 {percentile(http_samples, 0.95):.3f} s  max {max(http_samples):.3f} s  "
        f"({SEGMENT_S:.0f}-s segments: first frame to the end of its PUT)"
    )
    return percentile(rtmp_samples, 0.95), percentile(http_samples, 0.95)


def cpu_seconds(running: Running) -> tuple[float, float]:
    """CPU time so far of this process plus the agent's publisher processes, and of the
    publishers alone."""
    publishers = 0.0
    for live in running.pipeline.live_outputs:
        proc = live._proc
        if proc is not None:
            try:
                times = psutil.Process(proc.pid).cpu_times()
                publishers += times.user + times.system
            except psutil.NoSuchProcess:
                raise RuntimeError("the publisher process was restarted mid-window") from None
    return time.process_time() + publishers, publishers


def cpu_window(
    work: Path, nginx: Nginx, with_rtmp: bool, window_s: float, source: str
) -> tuple[float, float]:
    """CPU seconds per second of the agent (and of its publisher alone) over one window after
    the warm-up."""
    rtmp_url = nginx.rtmp_url if with_rtmp else None
    running = Running(config_from_dict(agent_data(work, nginx, rtmp_url, source)))
    running.pipeline.start()
    time.sleep(WARMUP_S)
    (start_cpu, start_pub), start_s = cpu_seconds(running), time.monotonic()
    time.sleep(window_s)
    (end_cpu, end_pub), elapsed_s = cpu_seconds(running), time.monotonic() - start_s
    if with_rtmp:
        status = running.pipeline.live_outputs[0].status(time.monotonic())
        if status["state"] != "connected":
            raise RuntimeError(f"the RTMP output was not streaming: {status}")
    running.stop()
    return (end_cpu - start_cpu) / elapsed_s, (end_pub - start_pub) / elapsed_s


def cpu_cost(work: Path, nginx: Nginx, pairs: int, window_s: float, source: str) -> float:
    ratios = []
    print(f"CPU of the agent (this process + publisher), {window_s:.0f}-s windows, A/B pairs")
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        used, publisher = {}, 0.0
        for with_rtmp in order:
            run_dir = work / f"cpu-{pair}-{int(with_rtmp)}"
            run_dir.mkdir()
            used[with_rtmp], part = cpu_window(run_dir, nginx, with_rtmp, window_s, source)
            publisher = max(publisher, part)
        ratio = (used[True] - used[False]) / used[False]
        ratios.append(ratio)
        print(f"  pair {pair + 1}: HTTP only {used[False] * 100:5.1f} % of a core, "
              f"+RTMP {used[True] * 100:5.1f} % (publisher process {publisher * 100:.1f} %): "
              f"cost {ratio * 100:+5.1f} %")  # fmt: skip
    median = statistics.median(ratios)
    print(f"  one RTMP output costs {median * 100:+.1f} % of the agent's CPU (median of "
          f"{pairs}; mean {statistics.mean(ratios) * 100:+.1f} %)")  # fmt: skip
    return median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=60.0)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--window-s", type=float, default=15.0)
    parser.add_argument("--source", default="test:noise", help="the camera (test: or test:noise)")
    args = parser.parse_args(argv)
    print(f"station-agent RTMP output bench: 720p30, camera {args.source}")
    with tempfile.TemporaryDirectory(prefix="rtmp-bench-") as tmp:
        work = Path(tmp)
        nginx = Nginx(work / "server")
        nginx.start()
        try:
            (work / "latency").mkdir()
            rtmp_p95, _ = latency(work / "latency", nginx, args.latency_s, args.source)
            cost = cpu_cost(work, nginx, args.pairs, args.window_s, args.source)
        finally:
            nginx.stop()
    missed = []
    if rtmp_p95 >= LATENCY_TARGET_S:
        missed.append(f"RTMP glass-to-server p95 {rtmp_p95:.3f} s >= {LATENCY_TARGET_S:g} s")
    if cost >= CPU_TARGET:
        missed.append(f"one RTMP output costs {cost * 100:.1f} % >= {CPU_TARGET * 100:g} %")
    for line in missed:
        print(f"TARGET MISSED: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
