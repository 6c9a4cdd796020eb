"""The relay a fork keeper runs for its engines (``mpihub engine --fork N --relay``).

The keeper runs it after its forks, since no zmq context may exist before them. It
connects upstream to the first of the controller's engine addresses that can be
reached, serves :class:`~.relay.Relay` until the keeper's last engine has exited (a
SIGCHLD wakes it), then carries what they said last (their goodbyes) before it closes.
"""
from __future__ import annotations

import logging
import signal
from typing import Callable

import zmq

from .. import process
from ..protocol import reach
from ..protocol.curve import Curve
from . import follow
from .relay import Relay

log = logging.getLogger("mpihub.engine.relay")

#: Once the engines have exited: how long the relay waits for more of what they sent
#: last, and how long it gives that to leave for the controller.
LAST_POLL_MS = 100
LINGER_MS = 1000


def serve(info: dict, local_url: str, engines_running: Callable[[], bool]) -> None:
    """Relay between the engines at ``local_url`` and the controller of ``info`` while
    ``engines_running()`` (which also reaps those that ended)."""
    upstream = reach.reachable_first(follow.addresses(info)[0])[0]
    curve = Curve.from_info(info)
    context = zmq.Context()
    relay = Relay(context, upstream, local_url, curve)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup socket hears it
    wakeup = process.signal_wakeup()
    poller = zmq.Poller()
    for sock in (relay.up, relay.down, wakeup):
        poller.register(sock, zmq.POLLIN)
    log.info("relay for the engines at %s, to the controller at %s", local_url, upstream)
    try:
        while engines_running():
            if wakeup in dict(poller.poll()):
                process.drain(wakeup)
            while relay.pump():
                pass
        while relay.pump() or relay.down.poll(LAST_POLL_MS):  # what they sent as they left
            pass
        relay.up.linger = LINGER_MS
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        relay.close()
        context.term()
        if curve:
            curve.stop()
