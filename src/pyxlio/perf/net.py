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

__all__ = [
    "SO_RCVBUFFORCE",
    "address_text",
    "apply_common_options",
    "banner_line",
    "family_of",
    "join_multicast",
    "parse_cpu_list",
    "set_affinity",
    "set_rcvbuf",
    "setup_multicast_sender",
]

IP_ADD_SOURCE_MEMBERSHIP = 39  # Linux <netinet/in.h>
SO_BUSY_POLL = 46  # Linux <asm-generic/socket.h>

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


def join_multicast(sock: _socket_mod.socket, group: str, interface: str | None,
                   source: str | None = None) -> None:
    """Join ``group`` on ``interface`` (INADDR_ANY when None), from ``source`` only if given
    (IP_ADD_SOURCE_MEMBERSHIP, sockperf's --mc-source-filter)."""
    import socket

    grp = socket.inet_aton(group)
    ifa = socket.inet_aton(interface or "0.0.0.0")
    if source:
        # struct ip_mreq_source: multiaddr, interface, sourceaddr.
        mreq = struct.pack("=4s4s4s", grp, ifa, socket.inet_aton(source))
        sock.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, mreq)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("=4s4s", grp, ifa))


def setup_multicast_sender(sock: _socket_mod.socket, interface: str | None, ttl: int,
                           loopback: bool = False) -> None:
    """Multicast options as sockperf sets them: outgoing interface when given, loopback off
    unless ``loopback`` (--mc-loopback-enable), TTL (default 2)."""
    import socket

    if interface:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if loopback else 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)


def apply_common_options(sock: _socket_mod.socket, cfg: Config, *, stream: bool) -> None:
    """sockperf's per-socket options: buffers, busy-poll usecs, TCP_NODELAY, TOS."""
    import socket

    if cfg.buffer_size:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.buffer_size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.buffer_size)
    if cfg.lls is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, cfg.lls)
    if stream and cfg.tcp_nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if cfg.tos:
        if cfg.family_v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, cfg.tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, cfg.tos)


def parse_cpu_list(text: str) -> set[int]:
    """``"0,2-3"`` -> {0, 2, 3} (the list format of /proc/cpuinfo and taskset -c)."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"not a CPU list (e.g. 0,2-3): {text!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(a, b + 1))
    return cpus


def set_affinity(text: str | None) -> None:
    """Pin this process to the CPUs of ``text`` (sockperf's affinity options)."""
    import os

    if text:
        os.sched_setaffinity(0, parse_cpu_list(text))


def banner_line(index: int, host: str, port: int, tcp: bool) -> str:
    """sockperf's address line: ``[ 0] IP = 127.0.0.1       PORT = 11111 # UDP`` (IPv6
    addresses unbracketed there, as sockperf prints them)."""
    return f"[{index:2d}] IP = {host:<15s} PORT = {port:5d} # {'TCP' if tcp else 'UDP'}"


def address_text(addr: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) from a socket address tuple."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
