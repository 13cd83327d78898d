"""The live buffer between the encoder and a streaming server: the policy, pure.

A live viewer is better served by a jump to the present than by a delay that keeps growing. So
the queue never holds a packet whose picture is older than `max_lag_s`, nor more than
`max_bytes`: when the consumer (the network) falls that far behind, the queue skips ahead to the
newest keyframe it holds, or drops everything and waits for the next one. Drops are whole
groups of pictures (or their tails): a frame is never sent after a frame it refers to was
dropped, so what the server gets always decodes.

Drops are counted (`take_drops`) only when they are the consumer's slowness: while `counting`
is off (no connection, nothing is sent anyway) a drop and the rest of its group, even if the
connection comes back meanwhile, go to `uncounted`; so do the head a new consumer skips
(`restart`) and what comes before the first keyframe.

No clock, no lock: time is an argument (`now_s`, monotonic, the clock of
`EncodedPacket.captured_s`), the callers hold their own locks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agent.encode.packet import EncodedPacket

# Default lag bound: the latency goal is < 1 s glass to server (issue 18); a packet that waited
# this long in the agent will not make it, so its group of pictures goes.
MAX_LAG_S = 1.0
# 4 MiB: one second at 2.5 Mbit/s is ~0.3 MiB; the byte bound only catches a bitrate far above
# the ladder's (or a clock that stopped).
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Drops:
    frames: int = 0
    gops: int = 0  # groups of pictures that lost at least one frame

    def __add__(self, other: Drops) -> Drops:
        return Drops(self.frames + other.frames, self.gops + other.gops)

    def __bool__(self) -> bool:
        return self.frames > 0


class LiveQueue:
    """push() from the encoder's side, pop() from the network's; see the module doc."""

    def __init__(self, max_lag_s: float = MAX_LAG_S, max_bytes: int = MAX_BYTES) -> None:
        self.max_lag_s = max_lag_s
        self.max_bytes = max_bytes
        self._items: deque[tuple[int, EncodedPacket]] = deque()  # (gop number, packet)
        self._bytes = 0
        self._gop = 0  # number of the group the newest pushed packet belongs to
        self._need_keyframe = True  # a consumer starts at a keyframe
        self._last_dropped_gop = -1
        self._dropped = Drops()
        self.counting = True  # drops from now on are the consumer's (see the module doc)
        self._episode_counted = False  # the drop going on (to the next keyframe) is counted
        self.uncounted = Drops()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def push(self, packet: EncodedPacket, now_s: float) -> None:
        if packet.keyframe:
            self._gop += 1
            self._need_keyframe = False
        if self._need_keyframe:
            self._drop_one(self._gop, packet)
            return
        self._items.append((self._gop, packet))
        self._bytes += len(packet.data)
        self._trim(now_s)

    def pop(self, now_s: float) -> EncodedPacket | None:
        """The next packet to send, or None when there is none fresh enough."""
        self._trim(now_s)
        if not self._items:
            return None
        _, packet = self._items.popleft()
        self._bytes -= len(packet.data)
        return packet

    def peek(self, now_s: float) -> EncodedPacket | None:
        self._trim(now_s)
        return self._items[0][1] if self._items else None

    def restart(self) -> None:
        """A new consumer (a new connection): it starts at the newest keyframe held, or at the
        next one; what comes before is dropped (uncounted: no one was slow)."""
        newest = self._newest_keyframe()
        self._drop_head(len(self._items) if newest is None else newest, counted=False)

    def take_drops(self) -> Drops:
        """Frames and groups dropped since the previous call."""
        dropped, self._dropped = self._dropped, Drops()
        return dropped

    def _trim(self, now_s: float) -> None:
        if not self._items:
            return
        too_old = now_s - self._items[0][1].captured_s > self.max_lag_s
        if not too_old and self._bytes <= self.max_bytes:
            return
        keep = self._newest_keyframe()
        if keep is not None and keep > 0:
            fresh = now_s - self._items[keep][1].captured_s <= self.max_lag_s
            tail_bytes = sum(len(p.data) for _, p in list(self._items)[keep:])
            if fresh and tail_bytes <= self.max_bytes:
                self._drop_head(keep, counted=self.counting)
                return
        self._drop_head(len(self._items), counted=self.counting)

    def _newest_keyframe(self) -> int | None:
        for index in range(len(self._items) - 1, -1, -1):
            if self._items[index][1].keyframe:
                return index
        return None

    def _drop_head(self, count: int, counted: bool) -> None:
        """Drop the first `count` packets: a drop that begins here (and runs on to the next
        keyframe when nothing is left) is counted or not as a whole."""
        self._episode_counted = counted
        for _ in range(count):
            gop, packet = self._items.popleft()
            self._bytes -= len(packet.data)
            self._drop_one(gop, packet)
        if not self._items:
            self._need_keyframe = True

    def _drop_one(self, gop: int, packet: EncodedPacket) -> None:
        new_gop = gop != self._last_dropped_gop
        self._last_dropped_gop = gop
        drop = Drops(1, 1 if new_gop else 0)
        if self._episode_counted:
            self._dropped += drop
        else:
            self.uncounted += drop
