"""pyxlio's XLIO emulator: a software libxlio loaded with LD_PRELOAD.

The emulator (``libxlio_emu.so``, built from the C files in this directory) answers
``getsockopt(-2, SOL_SOCKET, 2800)`` with its own ``xlio_api_t`` and serves the XLIO Extra API
from ordinary kernel sockets, loopback included, keeping the real library's contract (errno
values, packed layouts, allocator-before-init rule, poisoned rule parser).  It refuses double
frees and frees on the wrong socket (-1/ENOENT and a warning instead of a crash) and reports
packets never freed.

Environment variables (all optional; :func:`environ` sets them):

``PYXLIO_EMU_LAYOUT``
    ``legacy`` (default: libxlio 3.51 layout, cap_mask 0x3fff) or ``3.61`` (cap_mask 0x2818).
``PYXLIO_EMU_STRICT=1``
    Leaks and contract violations make the process exit with status 86 at exit.
``PYXLIO_EMU_FRAG_SIZE``
    Bytes per pool buffer (default 1472, minimum 64); larger datagrams come back as several
    iovecs.
``XLIO_MEMORY_LIMIT``
    Pool size in bytes, KB/MB/GB suffixes accepted (default 64MB).
``PYXLIO_EMU_FEED="PORT:SIZE[,PORT:SIZE...]"``
    In-memory feed: offloaded UDP sockets bound to PORT receive an endless stream of
    SIZE-byte datagrams (u64 sequence number in network order from 0, then a sockperf header
    ``u16 flags = 0, u32 length = SIZE`` when SIZE >= 14, the rest zero) from 127.0.0.1:9
    (``::1`` port 9 for IPv6 sockets), made without a system call per packet.
``XLIO_CONFIG_FILE``
    A libxlio.conf whose ``use ...`` transport rules are read at init.
``XLIO_TRACELEVEL``
    Number or name (default 3 = INFO); ``dump_fd_stats`` prints only at a level <= this.
``PYXLIO_EMU_VERBOSE=1``
    One line per init/allocation event on stderr.

Statistics (``dump_fd_stats``) are printed on stderr, one line per socket::

    pyxlio-emu: fd=5 proto=udp offloaded=yes local=127.0.0.1:5000 rx_packets=10 rx_bytes=640
    rx_zcopy=10 rx_copied=0 outstanding=0 held=0 dummy_sends=0 dropped=0 queued=0
    tx_packets=0 enomem=0 callback=no feed=no

(on one line).  Every field is ``key=value`` with no spaces in the value; ``local`` is
``ip:port`` or ``[ipv6]:port`` (``-`` if unknown).  ``rx_packets``/``rx_bytes`` count what the
socket took in (kernel or feed, including datagrams a callback dropped), ``rx_zcopy`` and
``rx_copied`` the packets delivered by zero-copy and copy receives, ``outstanding`` the
zero-copy packets not yet freed, ``held`` the packets a callback kept (HOLD) not yet freed,
``dropped`` the packets a callback dropped, ``queued`` the packets waiting in user space.
New fields may be appended at the end of the line.

A feed socket whose receive callback drops everything never runs dry: a receive call on it
returns EAGAIN after a bounded amount of work when it is non-blocking or its SO_RCVTIMEO has
expired, and a fully blocking one returns EINTR now and then, so that callers which check their
signals on EINTR and call again (CPython, pyxlio) stay interruptible.

Other diagnostics are single lines starting with ``pyxlio-emu: ``.

Behaviour worth knowing (beyond the real library's contract):

- Packet ids are addresses of emulator-owned descriptors, checked before use; freed
  descriptors are reused in FIFO order, so a stale id (double free, packet of a closed socket)
  finds its descriptor free and gets -1/ENOENT instead of freeing a newer packet.  A
  ``free_packets`` call with some bad entries frees the good ones and returns -1/ENOENT.
- A datagram is received with one ``recvmsg`` into up to 7 pool buffers plus a per-thread
  scratch area; only datagrams of more than 7 fragments are copied once more (their tail).
- Sockets with a receive callback or a feed keep a user-space queue; poll/ppoll/select/
  pselect/epoll report them readable iff a receive call would return data now.  For such
  sockets epoll is level-triggered even for ``EPOLLET``/``EPOLLONESHOT`` registrations, and
  ``recvmmsg`` waits for the first datagram only (``MSG_WAITFORONE``; its timeout is ignored).
- Callbacks run on UDP sockets only (``register_recv_callback`` on TCP: -1/EINVAL).
- The registered allocator's ``free`` is never called (the real library may also never call
  it, and a Python allocator may be gone at exit).
- Rules only turn offload off (``use os``); a socket created with thread offload off stays a
  kernel socket whatever the rules say.
- In a forked child the parent's outstanding packets are not the child's: freeing one gives
  -1/ENOENT and the child's leak report ignores them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import subprocess

__all__ = ["LIBRARY_NAME", "environ", "is_loaded", "library_path", "run"]

LIBRARY_NAME = "libxlio_emu.so"
_LAYOUTS = ("legacy", "3.61")


def library_path() -> str:
    """Return the absolute path of the built emulator library.

    Raises FileNotFoundError (with how to build it) when the library has not been built.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the XLIO emulator is not built ({path} is missing): run "
            "'python setup.py build_ext --inplace' or 'pip install -e .' in the pyxlio source tree"
        )
    return path


def _check_feed(feed: str) -> str:
    for item in feed.split(","):
        port, sep, size = item.partition(":")
        if not sep or not port.isdigit() or not size.isdigit():
            raise ValueError(f"feed must be PORT:SIZE[,PORT:SIZE...], got {feed!r}")
        if not 0 < int(port) < 65536 or not 8 <= int(size) <= 65507:
            raise ValueError(f"feed {item!r}: port 1..65535, size 8..65507")
    return feed


def environ(
    strict: bool = False,
    layout: str | None = None,
    feed: str | None = None,
    frag_size: int | None = None,
    memory_limit: int | str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    base: Mapping[str, str] | None = None,
    verbose: bool = False,
) -> dict[str, str]:
    """Return an environment that runs a program under the emulator.

    A copy of ``base`` (default ``os.environ``) with the library first in ``LD_PRELOAD`` (an
    existing LD_PRELOAD is kept after it) and the emulator's variables set from the arguments.
    """
    env = dict(os.environ if base is None else base)
    lib = library_path()
    old = env.get("LD_PRELOAD", "")
    parts = [p for p in old.replace(":", " ").split() if p and p != lib]
    env["LD_PRELOAD"] = " ".join([lib, *parts])
    if strict:
        env["PYXLIO_EMU_STRICT"] = "1"
    if layout is not None:
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        env["PYXLIO_EMU_LAYOUT"] = layout
    if feed is not None:
        env["PYXLIO_EMU_FEED"] = _check_feed(feed)
    if frag_size is not None:
        if int(frag_size) < 64:
            raise ValueError("frag_size must be >= 64")
        env["PYXLIO_EMU_FRAG_SIZE"] = str(int(frag_size))
    if memory_limit is not None:
        env["XLIO_MEMORY_LIMIT"] = str(memory_limit)
    if config_file is not None:
        env["XLIO_CONFIG_FILE"] = os.fspath(config_file)
    if verbose:
        env["PYXLIO_EMU_VERBOSE"] = "1"
    return env


def run(argv: Sequence[str], check: bool = False, **opts: Any) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` under the emulator and wait for it.

    Keyword arguments named like :func:`environ`'s parameters configure the emulator; the
    others go to :func:`subprocess.run`.
    """
    import subprocess

    names = ("strict", "layout", "feed", "frag_size", "memory_limit", "config_file", "base",
             "verbose")
    emu_opts = {k: opts.pop(k) for k in names if k in opts}
    env = environ(**emu_opts)
    return subprocess.run(list(argv), env=env, check=check, **opts)


def is_loaded() -> bool:
    """True if this process runs under the emulator (the library is mapped)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any(line.rstrip().endswith("/" + LIBRARY_NAME) for line in f)
    except OSError:
        return False


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m pyxlio.emu [options] -- CMD ARGS...``: exec CMD under the emulator."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m pyxlio.emu",
        description="Run a program under pyxlio's XLIO emulator (LD_PRELOAD).",
        epilog="example: python -m pyxlio.emu --strict -- python3 my_receiver.py",
    )
    p.add_argument("--print-path", action="store_true", help="print the library path and exit")
    p.add_argument("--strict", action="store_true", help="leaks and violations -> exit status 86")
    p.add_argument("--layout", choices=_LAYOUTS, help="xlio_api_t layout (default legacy)")
    p.add_argument("--feed", metavar="PORT:SIZE", help="in-memory feed, PORT:SIZE[,PORT:SIZE...]")
    p.add_argument("--frag-size", type=int, metavar="N", help="bytes per pool buffer (>= 64)")
    p.add_argument("--memory-limit", metavar="N", help="pool size, e.g. 64MB")
    p.add_argument("--config", metavar="FILE", help="libxlio.conf with transport rules")
    p.add_argument("--verbose", action="store_true", help="log init/allocation events")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    a = p.parse_args(argv)
    try:
        if a.print_path:
            print(library_path())
            return 0
        cmd = list(a.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            p.error("no command given (usage: python -m pyxlio.emu [options] -- CMD ARGS...)")
        env = environ(
            strict=a.strict,
            layout=a.layout,
            feed=a.feed,
            frag_size=a.frag_size,
            memory_limit=a.memory_limit,
            config_file=a.config,
            verbose=a.verbose,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m pyxlio.emu: {e}", file=sys.stderr)
        return 2
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        print(f"python -m pyxlio.emu: cannot run {cmd[0]!r}: {e}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover (exec does not return)
