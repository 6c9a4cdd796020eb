"""The engine's heartbeat thread: pings the controller and takes control messages.

It runs beside the task thread, so a long pure-Python task never silences it (the GIL
switches every few milliseconds). Signals for the running task (interrupts) come this
way too, since the task thread is busy. When the controller no longer knows this engine
(it declared it dead after a network cut, or it was restarted) the heart asks the task
thread to register again, over an inproc pair. It ends the process when the controller
has been silent for ``controller_timeout`` seconds (or for as many heartbeat periods as
the controller allows an engine, when that is longer), or on a shutdown request. Each
answer names the period the controller wants now, which grows with the number of
engines; the heart follows it. While the controller is silent it watches the connection
file (:mod:`.follow`): when a restored controller names other addresses there, the heart
beats to the new one and hands the move to the task thread.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

import zmq

from .. import config
from ..protocol import wire
from ..protocol.curve import Curve
from ..protocol.schema import CONTROL_ABORT, CONTROL_SHUTDOWN, CONTROL_SIGNAL, Key, Msg
from .follow import ControllerFile, Move

log = logging.getLogger("mpihub.engine.heartbeat")


def silent_controller(period: float, controller_timeout: float) -> float:
    """Seconds of silence after which an engine beating every ``period`` gives the
    controller up: its own timeout, or as long as the controller waits for the engine."""
    return max(controller_timeout, config.heartbeat_timeout(period))


class Heart(threading.Thread):
    def __init__(self, context: zmq.Context, url: str, uuid: bytes, signer: wire.Signer, curve: Curve | None,
                 period: float, controller_timeout: float, aborted: set,
                 on_signal: Callable[[int, list | None], None], rejoin_url: str,
                 follow: ControllerFile | None = None):
        super().__init__(name="mpihub-heart", daemon=True)
        self.context = context
        self.url = url
        self.uuid = uuid
        self.signer = signer
        self.curve = curve
        self.period = period
        self.controller_timeout = controller_timeout
        self.aborted = aborted
        self.on_signal = on_signal
        self.rejoin_url = rejoin_url
        self.follow = follow
        #: Where the controller moved, for the task thread to take (:meth:`take_move`).
        self._move: Move | None = None
        self._move_lock = threading.Lock()
        #: What the last pong said; the task thread asked to register again checks it,
        #: so that "unknown" pongs that queued up while it ran a task are not acted on.
        self.controller_knows = True
        #: When (monotonic) the controller last answered as one that knows this engine.
        self.alive_at = time.monotonic()
        self._stop_url = f"inproc://mpihub-heart-stop-{id(self)}"
        self._stop_in = context.socket(zmq.PAIR)
        self._stop_in.bind(self._stop_url)

    def take_move(self) -> Move | None:
        """The controller's move the heart saw last, once (None if none since)."""
        with self._move_lock:
            move, self._move = self._move, None
        return move

    def stop(self) -> None:
        """Ask the thread to end and wait for it (it is polling, so at once)."""
        stopper = self.context.socket(zmq.PAIR)
        stopper.connect(self._stop_url)
        stopper.send(b"")
        self.join(timeout=2)
        stopper.close(linger=0)

    def run(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.routing_id = self.uuid
        sock.linger = 0
        if self.curve:
            self.curve.client(sock)
        sock.connect(self.url)
        self._rejoin = self.context.socket(zmq.PAIR)
        self._rejoin.linger = 0
        self._rejoin.connect(self.rejoin_url)
        ping = wire.pack(self.signer, {Key.TYPE: Msg.PING})
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._stop_in, zmq.POLLIN)
        last_answer = time.monotonic()
        next_ping = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_ping:
                    sock.send_multipart(ping)
                    next_ping = now + self.period
                events = dict(poller.poll(max(0.0, next_ping - now) * 1000))
                if self._stop_in in events:
                    return
                if sock in events:
                    last_answer = time.monotonic()
                    self._handle(sock.recv_multipart())
                elif (self.follow is not None and time.monotonic() - last_answer > 2 * self.period
                      and (move := self.follow.moved()) is not None):
                    sock.disconnect(self.url)
                    self.url = move.heartbeat_url
                    sock.connect(self.url)
                    last_answer = time.monotonic()  # the new controller gets the whole silence allowed
                    with self._move_lock:
                        self._move = move
                    self.controller_knows = False
                    self._ask_to_rejoin()
                elif time.monotonic() - last_answer > (silence := silent_controller(self.period,
                                                                                   self.controller_timeout)):
                    self._exit(1, f"controller silent for {silence:.0f} s; engine exits")
        finally:
            sock.close()
            self._rejoin.close()
            self._stop_in.close(linger=0)

    def _handle(self, frames: list) -> None:
        try:
            msg = wire.unpack(self.signer, frames)
        except wire.ProtocolError as exc:
            log.warning("dropped heartbeat-channel message: %s", exc)
            return
        header = msg.header
        if header[Key.TYPE] == Msg.PONG:
            period = header.get(Key.HEARTBEAT_PERIOD)
            if isinstance(period, (int, float)) and period > 0:
                self.period = float(period)
            self.controller_knows = not header.get(Key.UNKNOWN)
            if self.controller_knows:
                self.alive_at = time.monotonic()
            else:
                self._ask_to_rejoin()
        elif header[Key.TYPE] == Msg.CONTROL:
            op = header.get(Key.OP)
            if op == CONTROL_ABORT:
                self.aborted.update(i for i in header.get(Key.IDS, ()) if isinstance(i, str))
                if header.get(Key.INTERRUPT):
                    self.on_signal(signal.SIGINT, list(header.get(Key.IDS, ())))
            elif op == CONTROL_SIGNAL and isinstance(header.get(Key.SIGNAL), int):
                self.on_signal(header[Key.SIGNAL], None)
            elif op == CONTROL_SHUTDOWN:
                self._exit(0, "shutdown requested by the controller")
            else:
                log.warning("unknown control operation %r", op)

    def _ask_to_rejoin(self) -> None:
        try:
            self._rejoin.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # a full pipe: the task thread is asked already

    def _exit(self, code: int, why: str) -> None:
        (log.info if code == 0 else log.error)(why)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)
