"""Socket setup shared by the client and the server: families, multicast, buffers.

``socket`` is imported inside the functions (pyxlio's allocator rule for modules under
``pyxlio``).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .cli import Config

if TYPE_CHECKING:
    import socket as _socket_mod

__all__ = ["SO_RCVBUFFORCE", "family_of", "join_multicast", "set_rcvbuf", "setup_multicast_sender"]

SO_RCVBUFFORCE = 33  # Linux; not in Python's socket module


def family_of(cfg: Config) -> int:
    """AF_INET6 for an IPv6 -i, else AF_INET."""
    import socket

    return socket.AF_INET6 if cfg.family_v6 else socket.AF_INET


def set_rcvbuf(sock: _socket_mod.socket, size: int) -> int:
    """Ask for a ``size``-byte receive buffer: SO_RCVBUFFORCE when root, else SO_RCVBUF.

    Returns what the kernel granted (it doubles the request, and caps plain SO_RCVBUF at
    net.core.rmem_max).
    """
    import socket

    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def join_multicast(sock: _socket_mod.socket, group: str, interface: str | None) -> None:
    """IP_ADD_MEMBERSHIP of ``group`` on ``interface`` (INADDR_ANY when None), loop on."""
    import socket

    mreq = struct.pack("=4s4s", socket.inet_aton(group), socket.inet_aton(interface or "0.0.0.0"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)


def setup_multicast_sender(sock: _socket_mod.socket, interface: str | None, ttl: int) -> None:
    """Multicast sending options: outgoing interface, TTL, loop on (so local receivers see it)."""
    import socket

    if interface:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)


def address_text(addr: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) from a socket address tuple."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
