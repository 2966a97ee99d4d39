"""XLIO's Ultra API: TCP sockets driven by poll groups, zero-copy both ways.

libxlio 3.60+ has one zero-copy TCP path, the "Ultra API"; 3.30.3-3.51.x (and 3.94x) have its
first form, the 16-member "socket API" (no listen, no accept, no getsockname/getpeername).  A
:class:`PollGroup` owns TCP sockets; :meth:`PollGroup.poll` runs XLIO (without the GIL) and
then calls your handlers with what happened, in order: connection events, received data (an
:class:`UltraBuffer` in XLIO's own buffer: no copy), completions of zero-copy sends::

    from pyxlio import ultra

    def on_receive(sock, buf):
        sock.send(buf)                     # echo (send() copies at once: INLINE)

    with ultra.PollGroup(on_receive=on_receive) as group:
        sock = group.socket()
        sock.connect(("10.0.0.2", 5000))
        while sock.state != "terminated":
            group.poll(timeout=0.1)

Sends: :meth:`UltraSocket.send` copies (always safe); :meth:`UltraSocket.send_zc` sends from a
:class:`MemoryRegion` (memory registered with ``ibv_reg_mr``) and returns a
:class:`Completion`.  The rules (who owns which buffer when, what close does, what happens to a
handler's exception) are the lifetime model of ``pyxlio._ultra`` and docs/guide/ultra.md.

Importing this module imports no socket, selectors or asyncio module, so :func:`init` can
still give XLIO a user allocator.  Without XLIO :func:`available` is False and
:class:`PollGroup` raises :class:`pyxlio.XlioNotLoadedError`.
"""

from __future__ import annotations

from pyxlio._ultra import (
    MAX_EVENTS,
    ULTRA_AF_INET,
    ULTRA_AF_INET6,
    Completion,
    MemoryRegion,
    PollGroup,
    UltraBuffer,
    UltraSocket,
    available,
    callback_errors,
    init,
    initialised,
    kind,
)
from pyxlio.constants import GroupFlag, SocketEvent, UltraKind

#: AF_INET, without importing the socket module (which would start XLIO).
AF_INET: int = ULTRA_AF_INET
#: AF_INET6, without importing the socket module.
AF_INET6: int = ULTRA_AF_INET6

__all__ = [
    "AF_INET",
    "AF_INET6",
    "MAX_EVENTS",
    "Completion",
    "GroupFlag",
    "MemoryRegion",
    "PollGroup",
    "SocketEvent",
    "UltraBuffer",
    "UltraKind",
    "UltraSocket",
    "available",
    "callback_errors",
    "init",
    "initialised",
    "kind",
]
