"""Message framing and HMAC signing.

A message on the wire is the multipart ``[signature, header, content, *buffers]``,
preceded by one routing-identity frame on a ROUTER socket. ``header`` is a msgpack map
with at least ``v`` (protocol version), ``t`` (message type) and ``nb`` (buffer count);
``content`` is an opaque payload (usually a protocol-5 pickle); ``buffers`` are the
pickle's out-of-band buffers, sent as separate zero-copy frames. The signature is
HMAC-SHA256 over header and content, so nothing that can run code or change state is
accepted unsigned; raw data buffers are counted but not hashed, which keeps large
transfers at wire speed (the Jupyter protocol makes the same trade).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Sequence

import msgpack

PROTOCOL_VERSION = 1
SIGNATURE_SCHEME = "hmac-sha256"
_SIG_LEN = hashlib.sha256().digest_size


class ProtocolError(ValueError):
    """A message that is unsigned, wrongly signed, malformed or of another version."""


class Signer:
    """Signs and checks messages with the shared key from the connection file."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | str):
        if isinstance(key, str):
            key = key.encode("ascii")
        if not key:
            raise ValueError("an empty signing key would accept any message")
        self._key = key

    def sign(self, header: bytes, content) -> bytes:
        mac = hmac.new(self._key, header, hashlib.sha256)
        mac.update(content)
        return mac.digest()

    def check(self, signature, header: bytes, content) -> bool:
        return hmac.compare_digest(self.sign(header, content), signature)


class Message:
    """A parsed, verified message: its header dict, content payload and buffers."""

    __slots__ = ("header", "content", "buffers", "frames")

    def __init__(self, header: dict, content, buffers: list, frames: list):
        self.header = header
        self.content = content
        self.buffers = buffers
        self.frames = frames  # the signed frames as received, for forwarding unchanged

    @property
    def type(self) -> str:
        return self.header["t"]

    def __repr__(self) -> str:
        return f"Message({self.header!r}, {len(self.buffers)} buffers)"


def pack(signer: Signer, header: dict, content: bytes = b"", buffers: Sequence = ()) -> list:
    """Frames for a message: signature, header, content, then the buffers."""
    header["v"] = PROTOCOL_VERSION
    header["nb"] = len(buffers)
    header_bytes = msgpack.packb(header)
    return [signer.sign(header_bytes, content), header_bytes, content, *buffers]


def _bytes_of(frame) -> Any:
    buffer = getattr(frame, "buffer", None)
    return frame if buffer is None else buffer


def unpack(signer: Signer, frames: Sequence) -> Message:
    """Verify and parse ``[signature, header, content, *buffers]``.

    Raises :class:`ProtocolError` for anything that is not a well-formed message of this
    protocol version signed with our key; the caller logs and drops it.
    """
    if len(frames) < 3:
        raise ProtocolError(f"message has {len(frames)} frames, at least 3 expected")
    signature, header_bytes, content = (_bytes_of(f) for f in frames[:3])
    if len(signature) != _SIG_LEN:
        raise ProtocolError("missing or malformed signature")
    header_bytes = bytes(header_bytes)
    if not signer.check(signature, header_bytes, content):
        raise ProtocolError("bad signature")
    try:
        header = msgpack.unpackb(header_bytes, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("header is not a map with a message type")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION}")
    buffers = list(frames[3:])
    if header.get("nb") != len(buffers):
        raise ProtocolError(f"header announces {header.get('nb')!r} buffers, {len(buffers)} came")
    return Message(header, content, buffers, list(frames))
