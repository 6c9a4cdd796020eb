"""CurveZMQ encryption, switched on for a whole cluster with ``--curve``.

Signatures (always on) make every message authentic; CURVE also makes the bytes on
the wire unreadable and refuses, before any message is read, a peer whose public key the
cluster did not hand out. The controller makes the keys when it starts and writes each
role's share into its 0600 connection file under ``"curve"``:

- clients get the controller's public key and the client key pair;
- engines get the engine key pair, and the server pair too: an engine serves direct data
  links to clients, which accept only the cluster's server key;
- a split controller's paths (through the Hub file) get the server pair and the keys
  they must accept.

A server socket accepts only the public keys in ``allowed``, checked by a ZAP handler
thread (one per process that serves).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import zmq
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("mpihub.curve")


def available() -> bool:
    """Whether this libzmq was built with CURVE."""
    return bool(zmq.has("curve"))


@dataclass
class Curve:
    """One process's share of the cluster's keys (z85 text, as in the files)."""

    server_public: str
    public: str
    secret: str
    server_secret: str | None = None
    allowed: list[str] = field(default_factory=list)
    _authenticators: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_info(cls, info: dict) -> "Curve | None":
        """The keys in a connection file (None when the cluster runs without CURVE)."""
        keys = info.get("curve")
        if not keys:
            return None
        if not available():
            raise RuntimeError("this cluster encrypts with CURVE, but this pyzmq's libzmq has no CURVE support")
        return cls(**keys)

    def as_info(self) -> dict:
        fields = {"server_public": self.server_public, "public": self.public, "secret": self.secret}
        if self.server_secret:
            fields.update(server_secret=self.server_secret, allowed=list(self.allowed))
        return fields

    def client(self, sock: zmq.Socket) -> zmq.Socket:
        """Make ``sock`` (before it connects) talk CURVE to the cluster's servers."""
        sock.curve_serverkey = self.server_public.encode()
        sock.curve_publickey = self.public.encode()
        sock.curve_secretkey = self.secret.encode()
        return sock

    def server(self, sock: zmq.Socket) -> zmq.Socket:
        """Make ``sock`` (before it binds) a CURVE server accepting only ``allowed`` keys."""
        if not self.server_secret:
            raise RuntimeError("these keys cannot serve: they hold no server secret")
        self._authenticate(sock.context)
        sock.curve_server = True
        sock.curve_secretkey = self.server_secret.encode()
        sock.curve_publickey = self.server_public.encode()
        return sock

    def _authenticate(self, context: zmq.Context) -> None:
        """Start this context's ZAP handler once: it admits only ``allowed`` keys."""
        if id(context) in self._authenticators:
            return
        authenticator = ThreadAuthenticator(context, log=log)
        authenticator.start()
        authenticator.configure_curve_callback("*", credentials_provider=_KeyList(self.allowed))
        self._authenticators[id(context)] = authenticator

    def stop(self) -> None:
        """End the ZAP handler threads (before their context is destroyed)."""
        for authenticator in self._authenticators.values():
            authenticator.stop()
        self._authenticators.clear()


class _KeyList:
    """A ZAP credentials provider: the public keys a server accepts."""

    def __init__(self, allowed: list[str]):
        self.allowed = {key.encode() for key in allowed}

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        log.warning("refused a CURVE peer whose key the cluster did not issue")
        return False


@dataclass
class ClusterKeys:
    """Every key pair of one cluster, made by its controller."""

    server: tuple[str, str]
    client: tuple[str, str]
    engine: tuple[str, str]

    @classmethod
    def new(cls) -> "ClusterKeys":
        if not available():
            raise RuntimeError("--curve needs a libzmq built with CURVE (pyzmq's wheels have it)")
        pairs = [tuple(key.decode() for key in zmq.curve_keypair()) for _ in range(3)]
        return cls(*pairs)

    @classmethod
    def from_info(cls, info: dict) -> "ClusterKeys":
        return cls(*(tuple(info[role]) for role in ("server", "client", "engine")))

    def as_info(self) -> dict:
        return {"server": list(self.server), "client": list(self.client), "engine": list(self.engine)}

    def for_role(self, role: str) -> Curve:
        """The share of ``role``: "client", "engine" or "server" (a controller process)."""
        public, secret = self.server
        if role == "client":
            return Curve(public, *self.client)
        if role == "engine":
            return Curve(public, *self.engine, server_secret=secret, allowed=[self.client[0]])
        if role == "server":
            return Curve(public, public, secret, server_secret=secret,
                         allowed=[self.client[0], self.engine[0], public])
        raise ValueError(f"unknown role {role!r}")
