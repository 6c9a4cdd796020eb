"""Connection files: where a controller listens and the key that signs its messages.

The controller writes ``<profile>/security/mpihub-{client,engine}[-<cluster_id>].json``
atomically (temporary file, then rename) with mode 0600, and removes them on clean
shutdown. Each file lists every channel as a full ZMQ URL and, under ``candidates``,
every address the channel can be reached at, so a client on another network can try
the next one when the first does not answer.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

from .. import config
from .wire import SIGNATURE_SCHEME

FILE_FORMAT_VERSION = 1


def security_dir(profile_dir: str | os.PathLike | None = None) -> Path:
    return Path(profile_dir or config.default_profile_dir()) / "security"


def connection_file(role: str, cluster_id: str | None = None, profile_dir=None) -> Path:
    """Path of the ``role`` ("client" or "engine") file of a cluster."""
    suffix = f"-{cluster_id}" if cluster_id else ""
    return security_dir(profile_dir) / f"mpihub-{role}{suffix}.json"


def write_atomic(path: Path, info: dict) -> None:
    """Write JSON to ``path`` so readers see the whole file or none, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | os.PathLike, timeout: float = 0) -> dict:
    """Load a connection file, waiting up to ``timeout`` seconds for it to appear."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline:
            raise FileNotFoundError(
                f"no connection file at {path}; is a controller running for this profile "
                "and cluster id? (start one with `mpihub cluster start` or `mpihub controller`)"
            )
        time.sleep(0.05)
    info = json.loads(path.read_text())
    return check(info, str(path))


def check(info: dict, source: str = "connection info") -> dict:
    """Validate the fields every reader relies on."""
    version = info.get("version")
    if version != FILE_FORMAT_VERSION:
        raise ValueError(f"{source}: format version {version!r}, this mpihub reads {FILE_FORMAT_VERSION}")
    if info.get("signature_scheme") != SIGNATURE_SCHEME:
        raise ValueError(f"{source}: unsupported signature scheme {info.get('signature_scheme')!r}")
    if not info.get("key"):
        raise ValueError(f"{source}: no key")
    return info


def interface_ip(interface: str) -> str:
    """The IPv4 address to bind for ``--interface``: an address (``10.0.0.5``,
    ``tcp://10.0.0.5``) as given, or a network interface name (``ib0``, ``lo``) resolved."""
    name = interface.split("://", 1)[-1]
    try:
        socket.inet_aton(name)
        return name
    except OSError:
        pass
    address = _interface_address(name)
    if address is None:
        raise ValueError(f"no IPv4 address for network interface {name!r}")
    return address


def _interface_address(name: str) -> str | None:
    """The IPv4 address of network interface ``name``, or None when it has none (Linux)."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_ips() -> list[str]:
    """The IPv4 addresses of this host's network interfaces, loopback left out."""
    ips = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return ips
    for name in names:
        ip = _interface_address(name)
        if ip is not None and not ip.startswith("127.") and ip not in ips:
            ips.append(ip)
    return ips


def candidate_ips(bind_ip: str) -> list[str]:
    """Every address a peer might reach ``bind_ip`` at, best guess first: those the
    host name resolves to, then every other interface's (a fabric the host name does
    not name), then loopback."""
    if bind_ip not in ("0.0.0.0", "*"):
        return [bind_ip]
    ips: list[str] = []
    try:
        for entry in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            ip = entry[4][0]
            if ip not in ips and not ip.startswith("127."):
                ips.append(ip)
    except OSError:
        pass
    ips += [ip for ip in interface_ips() if ip not in ips]
    ips.append("127.0.0.1")
    return ips


def channel_urls(bind_ip: str, ports: dict[str, int]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(primary URL per channel, every candidate URL per channel)."""
    ips = candidate_ips(bind_ip)
    candidates = {name: [f"tcp://{ip}:{port}" for ip in ips] for name, port in ports.items()}
    return {name: urls[0] for name, urls in candidates.items()}, candidates
