"""Message framing and signing.

A message on the wire is the multipart ``[envelope, *buffers]``, preceded by one
routing-identity frame on a ROUTER socket. The envelope is one frame:

    signature (32 bytes) | header length (4 bytes, big-endian) | header | content

``header`` is a msgpack map with at least ``v`` (protocol version), ``t`` (message type)
and ``nb`` (buffer count); ``content`` is an opaque payload (usually a protocol-5
pickle); ``buffers`` are the pickle's out-of-band buffers, sent as separate zero-copy
frames. The signature is keyed BLAKE2b-256 (a MAC by design, RFC 7693: no HMAC
construction needed, and a third of HMAC-SHA256's cost on a small message) over
everything after it in the envelope, so nothing that can run code or change state is
accepted unsigned; raw data buffers are counted but not hashed, which keeps large
transfers at wire speed (the Jupyter protocol makes the same trade). A request whose
header names ``bt`` (an engine id) is fanned out with its buffers to that engine only;
the other targets get the envelope alone. One envelope frame instead of three saves a
send and a receive per message in every process on the path.

A controller sends the messages for one client from one turn of its loop as a single
``batch`` (:func:`batch`): one envelope that says how many frames each message has,
then the messages, each still signed by whoever made it, the small one-frame ones
packed into one frame. A reply from each of 1,000 engines reaches the client as a few
frames, not 1,000; :func:`pending` hands them out one by one again.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Iterator, Sequence

import msgpack
import zmq

from .. import config
from .schema import Key, Msg

PROTOCOL_VERSION = 2
SIGNATURE_SCHEME = "blake2b-256"
_SIG_LEN = 32
_PREFIX = _SIG_LEN + 4
_SNDMORE = int(zmq.SNDMORE)
_BackendSocket = zmq.backend.Socket
_backend_send = _BackendSocket.send  # without pyzmq's Python wrapper (its routing_id/group checks)
_backend_get = _BackendSocket.get
_compare = hmac.compare_digest
_unpackb, _packb = msgpack.unpackb, msgpack.packb
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's flag enums cost microseconds


class ProtocolError(ValueError):
    """A message that is unsigned, wrongly signed, malformed or of another version."""


class Signer:
    """Signs and checks messages with the shared key from the connection file."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes | str):
        if isinstance(key, str):
            key = key.encode("ascii")
        if not key:
            raise ValueError("an empty signing key would accept any message")
        if len(key) > hashlib.blake2b.MAX_KEY_SIZE:
            key = hashlib.blake2b(key).digest()
        self._keyed = hashlib.blake2b(key=key, digest_size=_SIG_LEN)  # copied per message: no key setup

    def sign(self, data) -> bytes:
        mac = self._keyed.copy()
        mac.update(data)
        return mac.digest()


class Message:
    """A parsed, verified message: its header dict, content payload and buffers."""

    __slots__ = ("header", "content", "buffers", "frames")

    def __init__(self, header: dict, content, buffers: list, frames: list):
        self.header = header
        self.content = content
        self.buffers = buffers
        self.frames = frames  # the frames as received, for forwarding unchanged

    @property
    def type(self) -> str:
        return self.header[Key.TYPE]

    def __repr__(self) -> str:
        return f"Message({self.header!r}, {len(self.buffers)} buffers)"


def pack(signer: Signer, header: dict, content: bytes = b"", buffers: Sequence = ()) -> list:
    """Frames for a message: the signed envelope, then the buffers."""
    header[Key.VERSION] = PROTOCOL_VERSION
    header[Key.BUFFER_COUNT] = len(buffers)
    header_bytes = _packb(header)
    body = b"".join((len(header_bytes).to_bytes(4, "big"), header_bytes, content))
    if not buffers:
        return [signer.sign(body) + body]
    return [signer.sign(body) + body, *buffers]


def unpack(signer: Signer, frames: Sequence) -> Message:
    """Verify and parse ``[envelope, *buffers]``.

    Raises :class:`ProtocolError` for anything that is not a well-formed message of this
    protocol version signed with our key; the caller logs and drops it.
    """
    if not frames:
        raise ProtocolError("empty message")
    envelope = frames[0]
    view = memoryview(_bytes_of(envelope))
    size = len(view)
    if size < _PREFIX:
        raise ProtocolError(f"envelope of {size} bytes is too short")
    if not _compare(signer.sign(view[_SIG_LEN:]), view[:_SIG_LEN]):
        raise ProtocolError("bad signature")
    header_end = _PREFIX + int.from_bytes(view[_SIG_LEN:_PREFIX], "big")
    if header_end > size:
        raise ProtocolError("header length runs past the envelope")
    try:
        header = _unpackb(view[_PREFIX:header_end], strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable header: {exc}") from None
    if type(header) is not dict or not isinstance(header.get(Key.TYPE), str):
        raise ProtocolError("header is not a map with a message type")
    if header.get(Key.VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION}")
    frames = frames if type(frames) is list else list(frames)
    count = len(frames) - 1
    if header.get(Key.BUFFER_COUNT) != count and not (count == 0 and Key.BUFFERS_FOR in header):
        raise ProtocolError(f"header announces {header.get('nb')!r} buffers, {count} came")
    return Message(header, view[header_end:], frames[1:] if count else [], frames)


#: A one-frame message of at most this many bytes travels in a batch's packed frame:
#: a copy of a small frame costs less than sending and receiving it as a frame of its own.
PACKED_MAX = 4096


def batch(signer: Signer, messages: Sequence[Sequence]) -> list:
    """Frames of one ``batch`` message carrying ``messages`` (each its frames, signed).
    The small one-frame messages are packed into its first buffer, one after another."""
    parts: list[int] = []
    packed: list = []
    frames: list = []
    for message in messages:
        if len(message) == 1 and len(message[0]) <= PACKED_MAX:
            packed.append(message[0])
            parts.append(-len(message[0]))
        else:
            parts.append(len(message))
            frames.extend(message)
    if packed:
        frames.insert(0, b"".join(packed))
    return pack(signer, {Key.TYPE: Msg.BATCH, Key.PARTS: parts}, b"", frames)


def unbatch(signer: Signer, msg: Message) -> Iterator[Message]:
    """The messages of a verified ``batch``, each verified; a bad one raises
    :class:`ProtocolError` when it is reached (those before it are good)."""
    parts, buffers = msg.header.get(Key.PARTS), msg.buffers
    if not isinstance(parts, list) or not all(type(n) is int and n for n in parts):
        raise ProtocolError(f"a batch whose parts {parts!r} are not counts of frames")
    packed_bytes = -sum(n for n in parts if n < 0)
    framed = len(buffers) - (packed_bytes > 0)
    if sum(n for n in parts if n > 0) != framed or (packed_bytes and len(buffers[0]) != packed_bytes):
        raise ProtocolError(f"a batch whose parts {parts!r} do not add up to its {len(buffers)} frames")
    packed = memoryview(_bytes_of(buffers[0])) if packed_bytes else None
    offset, start = 0, len(buffers) - framed
    for count in parts:
        if count < 0:
            inner = unpack(signer, [bytes(packed[offset:offset - count])])
            offset -= count
        else:
            inner = unpack(signer, buffers[start:start + count])
            start += count
        if inner.type == Msg.BATCH:
            raise ProtocolError("a batch inside a batch")
        yield inner


def _bytes_of(frame):
    """The memory of a received frame (bytes, or a zmq.Frame's buffer)."""
    return frame if type(frame) is bytes else getattr(frame, "buffer", frame)


def send(sock: zmq.Socket, frames: Sequence, copy: bool = True) -> None:
    """``send_multipart`` without its per-frame overhead, for small hot-path messages."""
    last = len(frames) - 1
    if isinstance(sock, _BackendSocket):
        for i, frame in enumerate(frames):
            _backend_send(sock, frame, _SNDMORE if i < last else 0, copy)
    else:  # a socket of another kind, or a test's stand-in
        for i, frame in enumerate(frames):
            sock.send(frame, _SNDMORE if i < last else 0, copy=copy)


def readable(sock: zmq.Socket) -> bool:
    """Whether a message waits on ``sock``."""
    if isinstance(sock, _BackendSocket):
        return bool(_backend_get(sock, _EVENTS) & _POLLIN)  # an int, not pyzmq's PollEvent enum
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)


def recv(sock: zmq.Socket, flags: int = 0) -> list:
    """One multipart message: large frames as zero-copy ``zmq.Frame``, small ones as bytes.

    A small zmq message points into libzmq's shared receive buffer (8 KiB and up), so
    keeping it (in the Hub's store, in a result) would pin that whole buffer: 200,000
    stored replies held 2 GB. Copying a small frame is cheaper than keeping it.
    """
    frames = []
    while True:
        frame = sock.recv(flags if not frames else 0, copy=False)
        more = frame.more
        frames.append(frame if len(frame) >= config.ZERO_COPY_THRESHOLD else frame.bytes)
        if not more:
            return frames


class DropLog:
    """Logs dropped messages: the first 20, then every 1000th, so a flood cannot fill the log."""

    def __init__(self, logger: logging.Logger, where: str):
        self.logger = logger
        self.where = where
        self.count = 0

    def __call__(self, reason: object) -> None:
        self.count += 1
        if self.count <= 20 or self.count % 1000 == 0:
            self.logger.warning("dropped message on %s (%d so far): %s", self.where, self.count, reason)


def pending(sock: zmq.Socket, signer: Signer, drop: DropLog) -> Iterator[Message]:
    """The verified messages waiting on ``sock`` (not a ROUTER), those of a batch one
    by one; bad ones go to ``drop``."""
    while readable(sock):
        frames = recv(sock)
        try:
            msg = unpack(signer, frames)
            if msg.type == Msg.BATCH:
                yield from unbatch(signer, msg)
                continue
        except ProtocolError as exc:
            drop(exc)
            continue
        yield msg


def request_ids(header: dict) -> list:
    """The task ids of a direct request, one per target: listed (``ids``), or numbered
    after a base (``ib``), which keeps a request to 4,000 engines small."""
    base = header.get(Key.ID_BASE)
    if base is None:
        return header[Key.IDS]
    if not isinstance(base, str):
        raise TypeError(f"ib must be a task id, not {base!r}")
    return numbered_ids(base, len(request_targets(header)))


def numbered_ids(base: str, n: int) -> list[str]:
    """The task ids of a request to ``n`` engines named by the base ``ib``."""
    return [f"{base}/{index}" for index in range(n)]


#: Most targets one request may name by runs (a bound on what a header can make us build).
MAX_TARGETS = 1 << 20


def target_runs(targets: Sequence[int]) -> list[int]:
    """``targets`` as runs of consecutive ids, flat: first, count, first, count, ..."""
    runs: list[int] = []
    for target in targets:
        if runs and target == runs[-2] + runs[-1]:
            runs[-1] += 1
        else:
            runs += [target, 1]
    return runs


def _runs(header: dict) -> list[tuple[int, int]]:
    runs = header[Key.TARGET_RUNS]
    if (not isinstance(runs, list) or len(runs) % 2 or not all(isinstance(n, int) for n in runs)
            or not all(count > 0 for count in runs[1::2]) or sum(runs[1::2]) > MAX_TARGETS):
        raise ValueError(f"tr must be runs of engine ids (first, count, ...), not {runs!r}")
    return list(zip(runs[::2], runs[1::2]))


def request_targets(header: dict) -> list[int]:
    """The target engines of a direct request: listed (``tg``) or as runs (``tr``)."""
    if Key.TARGET_RUNS not in header:
        return header[Key.TARGETS]
    return [first + k for first, count in _runs(header) for k in range(count)]


def target_index(header: dict, engine_id: int) -> int:
    """Where ``engine_id`` is among a request's targets (ValueError: not there), without
    building the list of thousands of them; the runs are checked as far as they are read."""
    if Key.TARGET_RUNS not in header:
        return header[Key.TARGETS].index(engine_id)
    runs = header[Key.TARGET_RUNS]
    if type(runs) is not list or len(runs) % 2:
        raise ValueError(f"tr must be runs of engine ids (first, count, ...), not {runs!r}")
    offset = 0
    for i in range(0, len(runs), 2):
        first, count = runs[i], runs[i + 1]
        if type(first) is not int or type(count) is not int or count <= 0 or offset + count > MAX_TARGETS:
            raise ValueError(f"tr must be runs of engine ids (first, count, ...), not {runs!r}")
        if first <= engine_id < first + count:
            return offset + engine_id - first
        offset += count
    raise ValueError(f"engine {engine_id} is not a target")


def task_ids(value: object) -> set[str]:
    """The task ids in a list field of a header (anything else counts for nothing)."""
    return {item for item in value if isinstance(item, str)} if isinstance(value, list) else set()
