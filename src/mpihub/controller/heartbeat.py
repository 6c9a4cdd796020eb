"""Heartbeat monitor: its own thread and socket, so a busy Hub never misses a beat.

Engines ping every ``period`` seconds from their own heartbeat thread; the monitor
answers each ping at once (engines use the answers to notice a vanished controller)
and reports an engine silent for ``timeout`` seconds to the controller loop over an
inproc pair. The same socket carries control messages (abort, shutdown) to engines,
which their heartbeat thread handles while the engine is busy with a task. With an
``owner_pid`` it also reports, once a period, when that process has gone away.
"""
from __future__ import annotations

import logging
import threading
import time

import zmq

from ..process import pid_alive
from ..protocol import wire
from ..protocol.schema import Key, Msg

log = logging.getLogger("mpihub.controller.heartbeat")


class HeartMonitor(threading.Thread):
    def __init__(self, context: zmq.Context, socket: zmq.Socket, signer: wire.Signer,
                 pipe_url: str, period: float, timeout: float, owner_pid: int | None = None):
        super().__init__(name="mpihub-heart-monitor", daemon=True)
        self.context = context
        self.socket = socket
        self.signer = signer
        self.pipe_url = pipe_url
        self.period = period
        self.timeout = timeout
        self.owner_pid = owner_pid
        self._last_seen: dict[bytes, float] = {}
        self._rejoining: set[bytes] = set()  # watched, but told to register again
        self._lock = threading.Lock()

    def watch(self, uuid: bytes) -> None:
        with self._lock:
            self._last_seen[uuid] = time.monotonic()
            self._rejoining.discard(uuid)

    def expect(self, uuid: bytes) -> None:
        """Watch an engine of the controller before a restart: its pings are answered
        with "unknown", so that it registers again, and silence declares it dead."""
        with self._lock:
            self._last_seen[uuid] = time.monotonic()
            self._rejoining.add(uuid)

    def forget(self, uuid: bytes) -> None:
        with self._lock:
            self._last_seen.pop(uuid, None)
            self._rejoining.discard(uuid)

    def run(self) -> None:
        pipe = self.context.socket(zmq.PAIR)
        pipe.linger = 0
        pipe.connect(self.pipe_url)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        pong = wire.pack(self.signer, {Key.TYPE: Msg.PONG})
        unknown = wire.pack(self.signer, {Key.TYPE: Msg.PONG, Key.UNKNOWN: True})
        next_check = time.monotonic() + self.period
        try:
            while True:
                events = dict(poller.poll(self.period * 1000))
                if pipe in events:
                    frames = pipe.recv_multipart(copy=False)
                    if frames[0].bytes == b"stop":
                        return
                    self.socket.send_multipart(frames, copy=False)  # control: [uuid, *message]
                if self.socket in events:
                    self._answer_pings(pong, unknown)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + self.period
                    for uuid in self._silent(now):
                        log.warning("engine %s silent for %.1f s: declaring it dead", uuid.hex(), self.timeout)
                        pipe.send_multipart([b"dead", uuid])
                    if self.owner_pid is not None and not pid_alive(self.owner_pid):
                        pipe.send_multipart([b"owner-gone"])
                        self.owner_pid = None
        finally:
            pipe.close()

    def _answer_pings(self, pong: list, unknown: list) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            uuid = frames[0]
            try:
                wire.unpack(self.signer, frames[1:])
            except wire.ProtocolError as exc:
                log.warning("dropped heartbeat message from %r: %s", uuid[:32], exc)
                continue
            with self._lock:
                if uuid in self._last_seen:
                    self._last_seen[uuid] = time.monotonic()
                known = uuid in self._last_seen and uuid not in self._rejoining
            self.socket.send_multipart([uuid, *(pong if known else unknown)])

    def _silent(self, now: float) -> list[bytes]:
        with self._lock:
            dead = [uuid for uuid, seen in self._last_seen.items() if now - seen > self.timeout]
            for uuid in dead:
                del self._last_seen[uuid]
                self._rejoining.discard(uuid)
        return dead

