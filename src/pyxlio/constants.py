"""Constants of the XLIO Extra API, as Python enums (numbers from pyxlio's ABI fact sheet).

Every enum here prints as words: on Python 3.11+ ``str()`` and ``format()`` of an IntEnum or an
IntFlag give the bare number (``str(Layout.LEGACY) == "0"``), which tells a user nothing.  Here
``str(Layout.LEGACY)`` is ``"legacy (libxlio 2.0-3.51)"``, ``str(Capability.IOCTL)`` is
``"IOCTL"``; a numeric format (``f"{cap:#x}"``, ``f"{level:d}"``) still formats the number.
"""

from __future__ import annotations

import enum

__all__ = [
    "MSG_DUMMY",
    "MSG_ZCOPY",
    "MSG_ZCOPY_FORCE",
    "AllocTarget",
    "Capability",
    "GroupFlag",
    "Layout",
    "LogLevel",
    "SocketEvent",
    "UltraKind",
    "Verdict",
]

#: Send flag: a "dummy" packet that warms XLIO's send path and is dropped by the NIC
#: (XLIO_SND_FLAGS_DUMMY, the same bit as MSG_SYN and OpenOnload's ONLOAD_MSG_WARM).
MSG_DUMMY = 0x400
#: Receive flag passed in: fail with EIO rather than copy data that came through the kernel.
MSG_ZCOPY_FORCE = 0x01000000
#: Receive flag passed out: the buffer holds packet descriptors, not data.
MSG_ZCOPY = 0x00040000


_NUMERIC_FORMATS = frozenset("bcdoxXneEfFgG%")


def _format(self: enum.Enum, text: str, spec: str) -> str:
    """format(): a numeric presentation type formats the number, anything else the text."""
    if spec and spec[-1] in _NUMERIC_FORMATS:
        return format(int(self.value), spec)
    return format(text, spec)


class _NamedInt(enum.IntEnum):
    """An IntEnum whose str() and format() say its name (its repr stays ``<Cls.NAME: n>``)."""

    def __str__(self) -> str:
        return str(self.name)

    def __format__(self, spec: str) -> str:
        return _format(self, str(self), spec)


class _NamedFlag(enum.IntFlag):
    """An IntFlag whose str() and format() say its bits' names (``"RX|TX"``, ``"none"``)."""

    def __str__(self) -> str:
        value = int(self.value)
        for name, member in type(self).__members__.items():   # BOTH, not "TX|RX"
            if int(member.value) == value:
                return name
        names, known = [], 0
        for flag in type(self):
            bit = int(flag.value)
            known |= bit
            if value & bit:
                names.append(str(flag.name))
        if value & ~known:
            names.append(f"{value & ~known:#x}")
        return "|".join(names) or "none"

    def __format__(self, spec: str) -> str:
        return _format(self, str(self), spec)


class Capability(_NamedFlag):
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
    """Which ``xlio_api_t`` layout the loaded library uses (told from cap_mask).

    ``str()`` names it with its releases (``"legacy (libxlio 2.0-3.51)"``); ``int()`` is
    pyxlio's own number for it (``Layout.LEGACY == 0``)."""

    LEGACY = 0  #: libxlio 2.0 .. 3.51.x: zero-copy receive, callbacks, ioctl, dummy send
    V3_60 = 1  #: 3.60.x: rules, thread offload, stats, callbacks (held packets cannot be freed)
    V3_61 = 2  #: 3.61 and later: rules, thread offload, stats
    V3_94 = 3  #: 3.94x (DOCA branch): rules, thread offload, stats, ioctl, dummy send
    #: libvma's ``struct vma_api_t`` (8.8.2 and later; found with getsockopt(-1, ...)): what the
    #: legacy layout offers, the allocator ioctl only from 9.8.70
    VMA = 4

    @property
    def versions(self) -> str:
        """The library versions that use this layout (libxlio's, or libvma's for VMA)."""
        return {0: "2.0-3.51.x", 1: "3.60.x", 2: "3.61+", 3: "3.94x (DOCA)",
                4: "libvma 8.8.2-9.8.x"}[int(self)]

    @property
    def label(self) -> str:
        """What ``str()`` says: the layout's short name and its releases."""
        return {0: "legacy (libxlio 2.0-3.51)", 1: "3.60 (libxlio 3.60.x)",
                2: "3.61+ (libxlio 3.61 and later)", 3: "3.94x (libxlio 3.94x, DOCA)",
                4: "vma (libvma 9.x)"}[int(self)]

    @property
    def has_dummy_send(self) -> bool:
        """Does this layout's library implement the dummy-send flag (:data:`MSG_DUMMY`)?

        The legacy layout and 3.94x do (3.941.0: ``XLIO_SND_FLAGS_DUMMY`` in xlio_types.h,
        honoured by sockinfo_udp/sockinfo_tcp, refused with EINVAL for sockets it does not
        offload); 3.60 removed it, so under 3.60+ the flag would reach the kernel as MSG_SYN
        and the datagram would really be sent.  libvma has it too (VMA_SND_FLAGS_DUMMY, the
        same 0x400; refused with EINVAL for a socket it does not offload)."""
        return self in (Layout.LEGACY, Layout.V3_94, Layout.VMA)

    @property
    def provider(self) -> str:
        """The library family of this layout: ``"libvma"`` or ``"libxlio"``."""
        return "libvma" if self is Layout.VMA else "libxlio"

    def __str__(self) -> str:
        return self.label

    def __format__(self, spec: str) -> str:
        return _format(self, self.label, spec)


class LogLevel(_NamedInt):
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


class Verdict(_NamedInt):
    """What a receive callback decides for a datagram."""

    DROP = 0  #: discard it
    RECV = 1  #: queue it for the normal receive calls
    HOLD = 2  #: keep it: it becomes a :class:`pyxlio.Packet` in ``sock.held``


class AllocTarget(_NamedFlag):
    """Which XLIO buffer pools a user allocator serves."""

    TX = 1
    RX = 2
    BOTH = 3


class TimestampSource(_NamedInt):
    """Where a value of ``PacketBatch.timestamps`` came from (``batch.timestamp_sources``)."""

    #: pyxlio's CLOCK_REALTIME reading when its receive pass returned with the datagram (the
    #: provider gave none: XLIO's zero-copy receive returns no control messages)
    PYXLIO = 0
    #: the kernel's software receive time (SO_TIMESTAMPNS / SO_TIMESTAMPING software)
    KERNEL = 1
    #: the NIC's raw hardware stamp (SO_TIMESTAMPING), in the NIC's clock
    HARDWARE = 2


class UltraKind(_NamedInt):
    """Which Ultra API the loaded XLIO has (:func:`pyxlio.ultra.kind`): its member count."""

    NONE = 0  #: none (no XLIO, libvma, or a layout without cap bit 13)
    #: the 16-member "socket API" of libxlio 3.30.3-3.51.x and 3.94x: no listen, no
    #: getsockname/getpeername, no accept callback
    SOCKET_API = 16
    ULTRA = 23  #: the 23-member "XLIO Ultra API" of libxlio 3.60 and later


class SocketEvent(_NamedInt):
    """An Ultra socket's events (XLIO_SOCKET_EVENT_*), given to ``on_event``."""

    ESTABLISHED = 1  #: the connection is up (connect() succeeded)
    TERMINATED = 2  #: the last event: XLIO forgets the socket
    CLOSED = 3  #: the peer closed the connection (passive close)
    ERROR = 4  #: an error; its value is the errno (ECONNREFUSED, ECONNRESET, ETIMEDOUT...)


class GroupFlag(_NamedFlag):
    """Poll group flags (XLIO_GROUP_FLAG_*)."""

    #: XLIO locks the group's sockets and rings whatever its configuration (pyxlio serialises
    #: every call on a group under its own mutex anyway)
    SAFE = 1
    #: sends without ``flush`` stay queued until :meth:`pyxlio.ultra.PollGroup.flush`
    DIRTY = 2
