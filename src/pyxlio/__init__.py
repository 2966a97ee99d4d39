"""pyxlio: NVIDIA XLIO's Extra API for Python.

Zero-copy receive into memoryviews, receive callbacks, transport rules added at run time,
per-thread offload, per-socket statistics, dummy sends and user allocators; the same program
runs unchanged without XLIO (everything goes through the kernel, batched with recvmmsg).

``import pyxlio`` imports no socket, selectors, asyncio or subprocess module: XLIO's user
allocator can only be registered before XLIO starts, and those imports start it.  The drop-in
socket lives in :mod:`pyxlio.socket` (which does import the socket module).
"""

from __future__ import annotations

import os as _os

from pyxlio._api import (
    Api,
    add_conf_rule,
    allocator_state,
    available,
    dump_fd_stats,
    get_api,
    offload,
    set_allocator,
    socket_rings,
    thread_offload,
    thread_offload_state,
)
from pyxlio._zcopy import Packet, PacketBatch, Poller, RecvInfo
from pyxlio.constants import (
    MSG_DUMMY,
    MSG_ZCOPY,
    MSG_ZCOPY_FORCE,
    AllocTarget,
    Capability,
    Layout,
    LogLevel,
    TimestampSource,
    Verdict,
)
from pyxlio.errors import UnsupportedError, XlioError, XlioNotLoadedError

__version__ = "0.1.0"

__all__ = [
    "MSG_DUMMY",
    "MSG_ZCOPY",
    "MSG_ZCOPY_FORCE",
    "AllocTarget",
    "Api",
    "Capability",
    "Layout",
    "LogLevel",
    "Packet",
    "PacketBatch",
    "Poller",
    "RecvInfo",
    "TimestampSource",
    "UnsupportedError",
    "Verdict",
    "XlioError",
    "XlioNotLoadedError",
    "__version__",
    "add_conf_rule",
    "allocator_state",
    "available",
    "dump_fd_stats",
    "get_api",
    "offload",
    "set_allocator",
    "socket_rings",
    "thread_offload",
    "thread_offload_state",
]


def _apply_env_allocator() -> None:
    spec = _os.environ.get("PYXLIO_ALLOCATOR", "").strip()
    if not spec or not available():
        return
    from pyxlio._api import _apply_env_allocator as apply
    from pyxlio._log import logger

    try:
        apply(spec)
    except (OSError, ValueError) as exc:
        import warnings

        warnings.warn(f"PYXLIO_ALLOCATOR={spec!r} was not applied: {exc}", RuntimeWarning,
                      stacklevel=3)
    else:
        logger.info("PYXLIO_ALLOCATOR=%r applied", spec)


_apply_env_allocator()
