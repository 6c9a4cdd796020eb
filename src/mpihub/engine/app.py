"""The engine process: register with the controller, then run requests in order.

The task socket is a DEALER with the engine's uuid as routing id, connected into the
controller's engine ROUTER; requests arrive in FIFO order and replies go back with
their result buffers as zero-copy frames.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import uuid as uuidlib

import zmq

from .. import config
from ..protocol import connection, wire
from .executor import EngineStop, Executor
from .heartbeat import Heart

log = logging.getLogger("mpihub.engine")


class Engine:
    def __init__(self, info: dict, want_id: int | None = None, mpi_rank: int | None = None,
                 register_timeout: float = 30.0):
        self.info = connection.check(info)
        self.signer = wire.Signer(info["key"])
        self.uuid = uuidlib.uuid4().hex.encode()
        self.want_id = want_id
        self.mpi_rank = mpi_rank
        self.register_timeout = register_timeout
        self.aborted: set[str] = set()
        self.context = zmq.Context()
        self.id: int | None = None

    def register(self) -> dict:
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.routing_id = self.uuid
        self.sock.linger = 0
        self.sock.connect(self.info["engine"])
        details = {"hostname": socket.gethostname(), "pid": os.getpid(), "mpi_rank": self.mpi_rank}
        self.sock.send_multipart(wire.pack(self.signer, {"t": "register", "want_id": self.want_id, "info": details}))
        if not self.sock.poll(self.register_timeout * 1000):
            raise TimeoutError(f"no answer from the controller at {self.info['engine']} "
                               f"within {self.register_timeout:.0f} s")
        reply = wire.unpack(self.signer, self.sock.recv_multipart())
        if reply.type != "register_reply":
            raise RuntimeError(f"unexpected {reply.type!r} while registering")
        self.id = reply.header["id"]
        log.info("registered as engine %d", self.id)
        return reply.header

    def serve_forever(self) -> None:
        def on_sigterm(signum, frame):
            raise EngineStop()

        signal.signal(signal.SIGTERM, on_sigterm)
        registration = self.register()
        heart = Heart(self.context, self.info["heartbeat"], self.uuid, self.signer,
                      registration["hb_period"], registration.get("controller_timeout", config.ENGINE_CONTROLLER_TIMEOUT),
                      self.aborted)
        heart.start()
        executor = Executor(self.id)
        pending_send = None
        try:
            while True:
                frames = self.sock.recv_multipart(copy=False)
                try:
                    msg = wire.unpack(self.signer, frames)
                except wire.ProtocolError as exc:
                    log.warning("dropped message: %s", exc)
                    continue
                if msg.type == "shutdown":
                    log.info("engine %s stopping: shutdown requested by the controller", self.id)
                    break
                if msg.type not in ("apply", "execute"):
                    log.warning("dropped message of unknown type %r", msg.type)
                    continue
                try:
                    header = msg.header
                    msg_id = header["id"] if "id" in header else header["ids"][header["tg"].index(self.id)]
                except (KeyError, ValueError, TypeError, IndexError) as exc:
                    log.warning("dropped malformed request: %r", exc)
                    continue
                if pending_send is not None:  # our last result's buffers may still be in flight
                    pending_send.wait()
                    pending_send = None
                reply = {"t": "reply", "id": msg_id, "eng": self.id}
                if msg_id in self.aborted:
                    self.aborted.discard(msg_id)
                    reply.update(st="aborted", ename="TaskAborted", evalue="task aborted before it started",
                                 tb="", started=None, completed=None, out="", err="")
                    self.sock.send_multipart(wire.pack(self.signer, reply))
                    continue
                fields, data, buffers = executor.run(header, msg.content, msg.buffers)
                reply.update(fields)
                out = wire.pack(self.signer, reply, data, buffers)
                if buffers:
                    pending_send = self.sock.send_multipart(out, copy=False, track=True)
                else:
                    self.sock.send_multipart(out)
        except EngineStop:
            log.info("engine %s stopping on SIGTERM", self.id)
            self.sock.linger = 500
            self.sock.send_multipart(wire.pack(self.signer, {"t": "unregister"}))  # the controller still runs
        finally:
            self.sock.close()
            heart.stop()
            self.context.term()


def main(url_file: str | None, cluster_id: str | None, profile_dir: str | None, want_id: int | None,
         timeout: float) -> int:
    """Entry point of ``mpihub engine``; connection info from a file or $MPIHUB_CONNECTION_INFO."""
    import json

    raw = os.environ.get("MPIHUB_CONNECTION_INFO")
    if raw and not url_file:
        info = connection.check(json.loads(raw), "$MPIHUB_CONNECTION_INFO")
    else:
        path = url_file or connection.connection_file("engine", cluster_id, profile_dir)
        info = connection.read(path, timeout=timeout)
    engine = Engine(info, want_id=want_id, register_timeout=timeout)
    try:
        engine.serve_forever()
    except (TimeoutError, RuntimeError, wire.ProtocolError) as exc:
        print(f"mpihub engine: {exc}", file=sys.stderr)
        return 1
    return 0
