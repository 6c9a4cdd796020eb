"""The client's two sockets to the controller: one to send on, one to receive on.

User threads send directly on the sending DEALER (under a lock), with no hand-off to
another thread. A background thread owns the receiving DEALER; the controller routes
every reply there, because the client told it, at connection time, which sending
identity belongs to which receiving one. The receiving thread verifies each message
and hands it to a callback; results are unpickled later, by whoever asks for them.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import zmq

from ..protocol import wire

log = logging.getLogger("mpihub.client")


class Sender:
    """The sending socket; safe to use from any thread."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, frames: list, zero_copy: bool = False, track: bool = False) -> zmq.MessageTracker | None:
        with self._lock:
            if track:
                return self.sock.send_multipart(frames, copy=False, track=True)
            self.sock.send_multipart(frames, copy=not zero_copy)
            return None

    def close(self) -> None:
        with self._lock:
            self.sock.close(linger=1000)


class Receiver(threading.Thread):
    def __init__(self, context: zmq.Context, sock: zmq.Socket, signer: wire.Signer,
                 on_message: Callable[[wire.Message], None]):
        super().__init__(name="mpihub-client-io", daemon=True)
        self.sock = sock
        self.signer = signer
        self.on_message = on_message
        self._stop_url = f"inproc://mpihub-client-stop-{id(self)}"
        self._stop_in = context.socket(zmq.PAIR)
        self._stop_in.bind(self._stop_url)
        self._stop_out = context.socket(zmq.PAIR)
        self._stop_out.connect(self._stop_url)

    def stop(self) -> None:
        self._stop_out.send(b"")
        self.join(timeout=5)
        self._stop_out.close(linger=0)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._stop_in, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self.sock in events:
                    self._receive()
                if self._stop_in in events:
                    return
        finally:
            self._stop_in.close(linger=0)
            self.sock.close(linger=0)

    def _receive(self) -> None:
        for _ in range(1000):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = wire.unpack(self.signer, frames)
            except wire.ProtocolError as exc:
                log.warning("dropped message from the controller: %s", exc)
                continue
            try:
                self.on_message(msg)
            except Exception:  # noqa: BLE001 - the IO thread must survive a bad message
                log.exception("error handling %r", msg)
