"""Heartbeat monitor: its own thread and socket, so a busy Hub never misses a beat.

Engines ping from their own heartbeat thread; the monitor answers every ping (engines
use the answers to notice a vanished controller) and reports an engine silent too long
to the controller loop over an inproc pair. The period grows with the number of engines
(:func:`~mpihub.config.heartbeat_period`), so that the pings of all of them together
stay under ``config.HEARTBEAT_RATE`` a second; every answer tells the engine the period
now, and each engine is held to the timeout of the period it was last told, so that a
change of period never makes one look silent.

Pings are answered in batches: after answering, the monitor lets them gather for
``PING_BATCH`` seconds (control messages still go at once), since waking a thread costs
far more than the answer: on a small VM a ping answered alone cost 150-250 us of CPU,
one of 200 a second answered in batches about 50 us. The same socket carries control
messages (abort, shutdown) to engines, which their heartbeat thread handles while the
engine is busy with a task. With an ``owner_pid`` it also reports, once a check, when
that process has gone away.
"""
from __future__ import annotations

import logging
import threading
import time

import zmq

from .. import config
from ..process import pid_alive
from ..protocol import wire
from ..protocol.schema import Key, Msg

log = logging.getLogger("mpihub.controller.heartbeat")

#: Seconds pings gather after an answer, before the next are answered together.
PING_BATCH = 0.2


class HeartMonitor(threading.Thread):
    def __init__(self, context: zmq.Context, socket: zmq.Socket, signer: wire.Signer,
                 pipe_url: str, owner_pid: int | None = None):
        super().__init__(name="mpihub-heart-monitor", daemon=True)
        self.context = context
        self.socket = socket
        self.signer = signer
        self.pipe_url = pipe_url
        self.check_every = config.HEARTBEAT_PERIOD
        self.owner_pid = owner_pid
        self._deadline: dict[bytes, float] = {}  # when each engine is dead unless it beats
        self._rejoining: set[bytes] = set()  # watched, but told to register again
        self._lock = threading.Lock()
        self._pongs: dict[tuple[float, bool], list] = {}

    @property
    def period(self) -> float:
        """The heartbeat period for as many engines as are watched now."""
        return config.heartbeat_period(len(self._deadline))

    def watch(self, uuid: bytes) -> float:
        """Watch an engine; returns the period to tell it."""
        with self._lock:
            self._rejoining.discard(uuid)
            return self._beat(uuid)

    def expect(self, uuid: bytes) -> None:
        """Watch an engine of the controller before a restart: its pings are answered
        with "unknown", so that it registers again, and silence declares it dead."""
        with self._lock:
            self._rejoining.add(uuid)
            self._beat(uuid)

    def forget(self, uuid: bytes) -> None:
        with self._lock:
            self._deadline.pop(uuid, None)
            self._rejoining.discard(uuid)

    def _beat(self, uuid: bytes) -> float:
        """A sign of life (lock held): the engine's new deadline; returns the period."""
        period = config.heartbeat_period(len(self._deadline) + (uuid not in self._deadline))
        self._deadline[uuid] = time.monotonic() + config.heartbeat_timeout(period)
        return period

    def run(self) -> None:
        pipe = self.context.socket(zmq.PAIR)
        pipe.linger = 0
        pipe.connect(self.pipe_url)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        control_only = zmq.Poller()
        control_only.register(pipe, zmq.POLLIN)
        next_check = time.monotonic() + self.check_every
        answered_at = -PING_BATCH
        try:
            while True:
                rest = answered_at + PING_BATCH - time.monotonic()
                events = dict(control_only.poll(rest * 1000) if rest > 0 else poller.poll(self.check_every * 1000))
                if pipe in events:
                    frames = pipe.recv_multipart(copy=False)
                    if frames[0].bytes == b"stop":
                        return
                    self.socket.send_multipart(frames, copy=False)  # control: [uuid, *message]
                if self.socket in events:
                    self._answer_pings()
                    answered_at = time.monotonic()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + self.check_every
                    for uuid in self._silent(now):
                        log.warning("engine %s silent too long (its period is %.1f s): declaring it dead",
                                    uuid.hex(), self.period)
                        pipe.send_multipart([b"dead", uuid])
                    if self.owner_pid is not None and not pid_alive(self.owner_pid):
                        pipe.send_multipart([b"owner-gone"])
                        self.owner_pid = None
        finally:
            pipe.close()

    def _pong(self, period: float, known: bool) -> list:
        """The answer to a ping (a few kinds, packed once each)."""
        frames = self._pongs.get((period, known))
        if frames is None:
            if len(self._pongs) > 64:
                self._pongs.clear()
            header = {Key.TYPE: Msg.PONG, Key.HEARTBEAT_PERIOD: period}
            if not known:
                header[Key.UNKNOWN] = True
            frames = self._pongs[period, known] = wire.pack(self.signer, header)
        return frames

    def _answer_pings(self) -> None:
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
                watched = uuid in self._deadline
                period = self._beat(uuid) if watched else self.period
                known = watched and uuid not in self._rejoining
            wire.send(self.socket, [uuid, *self._pong(period, known)])

    def _silent(self, now: float) -> list[bytes]:
        with self._lock:
            dead = [uuid for uuid, deadline in self._deadline.items() if deadline < now]
            for uuid in dead:
                del self._deadline[uuid]
                self._rejoining.discard(uuid)
        return dead

