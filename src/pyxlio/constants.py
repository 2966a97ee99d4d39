"""Constants of the XLIO Extra API, as Python enums (numbers from pyxlio's ABI fact sheet)."""

from __future__ import annotations

import enum

__all__ = [
    "MSG_DUMMY",
    "MSG_ZCOPY",
    "MSG_ZCOPY_FORCE",
    "AllocTarget",
    "Capability",
    "Layout",
    "LogLevel",
    "Verdict",
]

#: Send flag: a "dummy" packet that warms XLIO's send path and is dropped by the NIC
#: (XLIO_SND_FLAGS_DUMMY, the same bit as MSG_SYN and OpenOnload's ONLOAD_MSG_WARM).
MSG_DUMMY = 0x400
#: Receive flag passed in: fail with EIO rather than copy data that came through the kernel.
MSG_ZCOPY_FORCE = 0x01000000
#: Receive flag passed out: the buffer holds packet descriptors, not data.
MSG_ZCOPY = 0x00040000


class Capability(enum.IntFlag):
    """Bits of ``xlio_api_t.cap_mask`` (names as in XLIO, without ``XLIO_EXTRA_API_``)."""

    REGISTER_RECV_CALLBACK = 1 << 0
    RECVFROM_ZCOPY = 1 << 1
    RECVFROM_ZCOPY_FREE_PACKETS = 1 << 2
    ADD_CONF_RULE = 1 << 3
    THREAD_OFFLOAD = 1 << 4
    GET_SOCKET_RINGS_NUM = 1 << 5
    GET_SOCKET_RINGS_FDS = 1 << 6
    SOCKETXTREME_POLL = 1 << 7
    SOCKETXTREME_FREE_PACKETS = 1 << 8
    SOCKETXTREME_REF_XLIO_BUFF = 1 << 9
    SOCKETXTREME_FREE_XLIO_BUFF = 1 << 10
    DUMP_FD_STATS = 1 << 11
    IOCTL = 1 << 12
    XLIO_SOCKET = 1 << 13


class Layout(enum.IntEnum):
    """Which ``xlio_api_t`` layout the loaded library uses (told from cap_mask)."""

    LEGACY = 0  #: libxlio 2.0 .. 3.51.x: zero-copy receive, callbacks, ioctl, dummy send
    V3_60 = 1  #: 3.60.x: rules, thread offload, stats, callbacks
    V3_61 = 2  #: 3.61 and later: rules, thread offload, stats
    V3_94 = 3  #: 3.94x (DOCA branch): rules, thread offload, stats, ioctl

    @property
    def versions(self) -> str:
        """The libxlio versions that use this layout."""
        return {0: "2.0-3.51.x", 1: "3.60.x", 2: "3.61+", 3: "3.94x (DOCA)"}[int(self)]


class LogLevel(enum.IntEnum):
    """XLIO's ``vlog_levels_t``: the level :func:`pyxlio.dump_fd_stats` prints at."""

    NONE = -1
    PANIC = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    DETAILS = 4
    DEBUG = 5
    FINE = 6
    FINER = 7
    ALL = 8


class Verdict(enum.IntEnum):
    """What a receive callback decides for a datagram."""

    DROP = 0  #: discard it
    RECV = 1  #: queue it for the normal receive calls
    HOLD = 2  #: keep it: it becomes a :class:`pyxlio.Packet` in ``sock.held``


class AllocTarget(enum.IntFlag):
    """Which XLIO buffer pools a user allocator serves."""

    TX = 1
    RX = 2
    BOTH = 3
