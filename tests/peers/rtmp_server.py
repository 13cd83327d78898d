"""Scripted RTMP servers for the cases nginx-rtmp cannot play, on free loopback ports.

    server = ScriptedRtmpServer("silent"); server.start()   # accepts TCP, never says a word
    server = ScriptedRtmpServer("refuse", reason="Invalid stream key"); server.start()
        # handshake, connect and createStream succeed; publish gets an error onStatus with the
        # reason (what platforms such as YouTube, MediaMTX or Wowza do; nginx-rtmp only closes)
    server.url -> "rtmp://127.0.0.1:<port>/live"; server.connections; server.stop()

Threads in the test process: the agent's publisher runs in its own process, so nothing here
waits on the GIL.
"""

from __future__ import annotations

import socket
import threading
from typing import Literal

from agent.uplink import rtmp_wire as wire
from tests.peers.ports import free_port

ACCEPT_POLL_S = 0.2
Mode = Literal["silent", "refuse"]


class ScriptedRtmpServer:
    def __init__(self, mode: Mode, reason: str = "refused") -> None:
        self.mode = mode
        self.reason = reason
        self.port = free_port()
        self.connections = 0
        self.publish_names: list[str] = []
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(ACCEPT_POLL_S)
        self._thread = threading.Thread(target=self._accept, name="rtmp-peer", daemon=True)

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._sockets.append(conn)  # silent: held open, never read, until stop()
            if self.mode == "refuse":
                threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        try:
            c0_c1 = _read_exactly(conn, 1 + wire.HANDSHAKE_SIZE)
            conn.sendall(bytes([wire.RTMP_VERSION]) + bytes(wire.HANDSHAKE_SIZE) + c0_c1[1:])
            _read_exactly(conn, wire.HANDSHAKE_SIZE)  # C2
            reader = wire.ChunkReader()
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                for message in reader.feed(data):
                    if message.type_id == wire.COMMAND_AMF0:
                        self._answer(conn, wire.amf_decode(message.payload))
        except OSError:
            return

    def _answer(self, conn: socket.socket, command: list[object]) -> None:
        name, txn = command[0], command[1]
        if name == "connect":
            ok = {"level": "status", "code": "NetConnection.Connect.Success"}
            self._send(conn, 0, "_result", txn, {"fmsVer": "scripted/1.0"}, ok)
        elif name == "createStream":
            self._send(conn, 0, "_result", txn, wire.NULL, 1.0)
        elif name == "publish":
            self.publish_names.append(str(command[3]))
            status = {
                "level": "error",
                "code": "NetStream.Publish.BadName",
                "description": self.reason,
            }
            self._send(conn, 1, "onStatus", 0.0, wire.NULL, status)

    def _send(self, conn: socket.socket, stream_id: int, *values: object) -> None:
        payload = wire.amf_encode(*values)
        conn.sendall(wire.encode_message(wire.CSID_COMMAND, wire.COMMAND_AMF0, stream_id, 0,
                                         payload, wire.DEFAULT_CHUNK_SIZE))  # fmt: skip


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data
