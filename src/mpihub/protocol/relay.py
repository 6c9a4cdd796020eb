"""The framing between a controller and a relay: many engines' task traffic on one connection.

A relay (:mod:`mpihub.engine.relay`) stands for the engines of one node on the
controller's engine port. Engines connect their task sockets to it, not to the
controller; it holds one connection upstream. What passes it stays as the engines and
the controller signed it: a relay reads no header, holds no key, and adds only
unsigned routing, as a ROUTER identity is unsigned.

A relayed message on the engine port is ``[RELAYED, routing, *frames]``, after the
relay's identity frame on the controller's ROUTER. ``RELAYED`` (an empty frame) cannot
begin a direct message, whose first frame is a signed envelope.

  up (relay to controller): ``routing`` is msgpack ``[uuid, count, uuid, count, ...]``;
      the frames that follow are the messages of those engines in turn, ``count``
      frames each: every reply that came in one turn of the relay, in one message.
      A small one-frame message (a count of ``-n``: its ``n`` bytes) is packed with the
      others into the first frame after the routing, as in a batch
      (:func:`mpihub.protocol.wire.batch`).
  down (controller to relay): ``routing`` is msgpack ``[uuid, ...]``; every engine
      named gets the same frames: one request to all engines of a node is sent once.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import msgpack

from .wire import PACKED_MAX, ProtocolError

RELAYED = b""
#: Most engines one routing frame may name (a bound on what a frame can make us build).
MAX_ROUTED = 1 << 16


def _routing(frame) -> list:
    try:
        routing = msgpack.unpackb(getattr(frame, "bytes", frame))
    except Exception as exc:
        raise ProtocolError(f"undecodable relay routing: {exc}") from None
    if not isinstance(routing, list) or len(routing) > 2 * MAX_ROUTED:
        raise ProtocolError("relay routing is not a list of engines")
    return routing


def pack_up(messages: Sequence[tuple[bytes, Sequence]]) -> list:
    """``[RELAYED, routing, *frames]`` carrying each ``(uuid, frames)`` of ``messages``."""
    routing, packed, frames = [], [], []
    for uuid, message in messages:
        if len(message) == 1 and len(message[0]) <= PACKED_MAX:
            packed.append(message[0])
            routing += [uuid, -len(message[0])]
        else:
            routing += [uuid, len(message)]
            frames.extend(message)
    if packed:
        return [RELAYED, msgpack.packb(routing), b"".join(packed), *frames]
    return [RELAYED, msgpack.packb(routing), *frames]


def unpack_up(frames: Sequence) -> Iterator[tuple[bytes, list]]:
    """The ``(uuid, frames)`` of each message in a relayed ``[RELAYED, routing, *frames]``.

    Raises :class:`ProtocolError` before yielding anything when the routing does not
    describe the frames exactly."""
    routing = _routing(frames[1])
    uuids, counts = routing[::2], routing[1::2]
    packed_bytes = -sum(n for n in counts if type(n) is int and n < 0)
    start = 2 + (packed_bytes > 0)
    if (len(uuids) != len(counts) or not all(type(u) is bytes and u for u in uuids)
            or not all(type(n) is int and n for n in counts)
            or sum(n for n in counts if n > 0) != len(frames) - start
            or (packed_bytes and len(frames[2]) != packed_bytes)):
        raise ProtocolError(f"relay routing for {len(routing) // 2} messages does not match its "
                            f"{len(frames) - 2} frames")
    packed = memoryview(getattr(frames[2], "buffer", frames[2])) if packed_bytes else None
    offset = 0
    for uuid, count in zip(uuids, counts):
        if count < 0:
            yield uuid, [bytes(packed[offset:offset - count])]
            offset -= count
        else:
            yield uuid, list(frames[start:start + count])
            start += count


def pack_down(uuids: Sequence[bytes], frames: Sequence) -> list:
    """``[RELAYED, routing, *frames]``: ``frames`` for each engine of ``uuids``."""
    return [RELAYED, msgpack.packb(list(uuids)), *frames]


def unpack_down(frames: Sequence) -> tuple[list[bytes], list]:
    """The engines a relayed ``[RELAYED, routing, *frames]`` is for, and the frames."""
    uuids = _routing(frames[1])
    if not uuids or not all(isinstance(u, bytes) and u for u in uuids) or len(frames) < 3:
        raise ProtocolError("relay routing names no engines, or no message follows it")
    return uuids, list(frames[2:])
