"""What travels between client, controller and engines: frames, signatures, payloads.

The split follows pyzmq: :mod:`.wire` turns a header and payload into signed ZMQ
frames and back; :mod:`.serialize` turns Python objects into a pickle plus zero-copy
buffers and back; :mod:`.connection` reads and writes the connection files.
"""
from .wire import PROTOCOL_VERSION, Message, ProtocolError, Signer

__all__ = ["PROTOCOL_VERSION", "Message", "ProtocolError", "Signer"]
