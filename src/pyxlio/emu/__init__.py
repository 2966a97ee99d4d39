"""pyxlio's XLIO emulator: a software libxlio loaded with LD_PRELOAD.

The emulator (``libxlio_emu.so``, built from the C files in this directory) answers
``getsockopt(-2, SOL_SOCKET, 2800)`` with its own ``xlio_api_t`` and serves the XLIO Extra API
from ordinary kernel sockets, loopback included, keeping the real library's contract (errno
values, packed layouts, allocator-before-init rule, poisoned rule parser).  It refuses double
frees and frees on the wrong socket (-1/ENOENT and a warning instead of a crash) and reports
packets never freed.

Environment variables (all optional; :func:`environ` sets them; unset or empty means the
default):

``PYXLIO_EMU_LAYOUT``
    Which ``xlio_api_t`` the emulator answers with (the fact sheet's section 2):
    ``legacy`` (default: libxlio 2.0-3.51, 248 bytes, cap_mask 0x3fff; ``3.51`` is the same),
    ``3.60`` (232 bytes, cap_mask 0x2819: add_conf_rule, thread_offload, dump_fd_stats,
    register_recv_callback, no zero-copy receive, no free call: a HOLD packet is never given
    back), ``3.61`` (3.61-3.70, 224 bytes, cap_mask 0x2818: no callback; a UDP socket it
    serves through the kernel is forgotten once bound or connected, as 3.70.1+ do: a second
    epoll instance takes it) or ``3.94`` (the 3.94x
    DOCA branch, 176 bytes, cap_mask 0x3818: ioctl and dummy sends, no callback).  The TCP
    Ultra API (3.60, 3.61: 23 members) and socket API (legacy, 3.94: 16 members) are served over
    kernel TCP sockets with each release's event order and errors (emu_ultra.c says which), and
    the emulator exports ``ibv_reg_mr``/``ibv_dereg_mr`` for its own protection domain (the
    zero-copy sends' memory keys).  Dummy sends (flag 0x400) exist in the legacy and
    3.94 layouts only; in 3.60 and 3.61 the flag is the kernel's MSG_SYN and the datagram is
    sent for real, as there.  ``vma`` answers as libvma 9.8.84 instead (the fact sheet's
    section 11): ``getsockopt(-1, SOL_SOCKET, 2800)`` gives its ``struct vma_api_t`` (168
    bytes, no magic, vma_extra_supported_mask 0x377fff @152, ioctl @160) and XLIO's fd -2 gets
    EBADF; IPv4 sockets only (an AF_INET6 socket is left to the kernel, unknown to the API);
    any stream or datagram socket (AF_UNIX too) and thread_offload start it; a UDP socket it
    serves through the kernel is forgotten once bound or connected (callbacks -1/EINVAL,
    MSG_ZCOPY_FORCE ignored: a copy); free_packets of 0 packets -1/EINVAL.
``PYXLIO_EMU_OFFLOAD``
    Which sockets the emulator offloads (thread offload and transport rules still apply on
    top): ``all`` (default: every UDP/TCP socket, loopback included, so the zero-copy path is
    tested on any host), ``none`` (none: every AF_INET/AF_INET6 socket is wrapped and served
    through the kernel, as a real libxlio host serves loopback and the addresses its rules
    leave to the OS - see below) or ``no-loopback`` (like a real host: sockets bound or
    connected to 127.0.0.0/8 or ::1, and connections accepted on them, are served by the
    kernel, other addresses offloaded; useful inside network namespaces).  A UDP socket bound
    to a wildcard address stays offloaded and every datagram it takes is served as offloaded
    (the emulator cannot tell which path a datagram came by).
``PYXLIO_EMU_STRICT``
    ``1``: leaks and contract violations make the process exit with status 86 at exit; ``0``
    (default) reports them only.
``PYXLIO_EMU_FRAG_SIZE``
    Bytes per pool buffer, 64..65536 (default 1472); larger datagrams come back as several
    iovecs.  Size syntax as for XLIO_MEMORY_LIMIT.
``XLIO_MEMORY_LIMIT``
    Pool size in bytes (default 64MB), in libxlio's syntax: a decimal, ``0x`` hex or ``0``
    octal number with no suffix or one of B, K, KB, M, MB, G, GB (any case, no space).  At least
    one 65536-byte datagram's buffers (``ceil(65536 / FRAG_SIZE)`` buffers of ``FRAG_SIZE``
    rounded up to 64 bytes: 66240 bytes with the default 1472) and at most 2**24 buffers.
``PYXLIO_EMU_FEED="PORT:SIZE[,PORT:SIZE...]"``
    In-memory feed (at most 32 entries, each port once, PORT 1..65535, SIZE 8..65507):
    offloaded UDP sockets bound to PORT receive an endless stream of SIZE-byte datagrams (u64
    sequence number in network order from 0, then a sockperf header ``u16 flags = 0, u32
    length = SIZE`` when SIZE >= 14, the rest zero) from 127.0.0.1:9 (``::1`` port 9 for IPv6
    sockets), made without a system call per packet.
``XLIO_CONFIG_FILE`` (else ``LIBXLIO_CONFIG_FILE``)
    A libxlio.conf whose ``use ...`` transport rules are read at load.  It must be a readable
    regular file of at most 1 MiB (not a FIFO, device or directory).  A line whose first
    non-blank character is ``#`` is a comment to its end, whatever its length; a line whose
    first word is ``use`` is a rule, must parse and be at most 511 bytes; other lines (log
    settings, application-id blocks) are skipped.
``XLIO_TRACELEVEL``
    As libxlio 3.51.1 reads it: none, panic, error, warn/warning, info/information, details,
    debug, fine/func, finer/func+/funcall/func_all/func-all, all (any case), or a digit 0..6
    with libxlio's meaning (``4`` is DEBUG = 5, ``5`` FINE = 6, ``6`` FINER = 7).  Default info
    (3); ``dump_fd_stats`` prints only at a level <= this.
``PYXLIO_EMU_VERBOSE``
    ``1``: one line per init/allocation event on stderr.

Any other ``PYXLIO_EMU_*`` variable with a value is an error (a misspelt name would otherwise
be ignored).

Configuration errors.  The library checks every variable above (and the config file) when it
is loaded, in its constructor, before the program's ``main`` and whether or not the program
ever makes a socket.  A bad value - malformed, negative, overflowing or out of range, an
unknown word, a feed spec that does not parse, a config file that is not a readable regular
file of at most 1 MiB or that holds a bad or overlong rule, a pool too small for one datagram
- is one line on stderr::

    pyxlio-emu: error: XLIO_MEMORY_LIMIT='abc' is invalid; accepted: a size from 66240 to ...

naming the variable, its value and what is accepted, and the process ends at once with
``_exit(87)`` (:data:`EXIT_CONFIG`; strict mode's status is 86).  A test double that silently
ran with another configuration than the one asked for is worse than one that refuses to start.
A pool that cannot be allocated at the first socket is reported the same way.  In Python,
:func:`environ` and :func:`validate_environ` raise :class:`ConfigError` (a ValueError) with the
same message, and ``python -m pyxlio.emu`` checks everything (the config file's rules too, by
loading the library in a throw-away process) before it execs the command, printing the same
line and exiting with 87.

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

A socket whose receive callback drops (or holds) everything while data keeps coming (a feed
never runs dry; a busy sender can do the same through the kernel): a receive call on it
returns EAGAIN after a bounded amount of work (256 consecutive drops) when it is non-blocking
or its SO_RCVTIMEO has expired, and a fully blocking one returns EINTR now and then, so that
callers which check their signals on EINTR and call again (CPython, pyxlio) stay
interruptible.

Other diagnostics are single lines starting with ``"pyxlio-emu: "``.

Sockets the emulator wraps but does not offload (every socket with ``PYXLIO_EMU_OFFLOAD=none``;
loopback with ``no-loopback``; sockets made with thread offload off or that a ``use os`` rule
leaves to the OS, in every mode) are served as a real libxlio 3.51.1 serves them (fact sheet
section 9): ``recvfrom_zcopy`` copies (MSG_XLIO_ZCOPY clear; MSG_XLIO_ZCOPY_FORCE gives
-1/EIO); a dummy send gives -1/EINVAL; ``register_recv_callback`` returns 0 and the callback is
never called; ``get_socket_rings_num`` is 0 (-1 for a UDP socket not bound yet); the
``recvmmsg`` wrapper calls the kernel with a zeroed timeout, so each call returns one datagram;
and a UDP socket is readable for the receive wrappers (recv, recvfrom, recvmsg, recvmmsg, read,
readv, recvfrom_zcopy) only when ``ioctl(FIONREAD)`` is above 0, so a zero-length datagram at
the head of its queue blocks it: non-blocking calls answer EAGAIN, blocking ones wait (until
SO_RCVTIMEO or a signal) and nothing behind it is read.  The raw system calls
(``syscall(SYS_recvmmsg, ...)``) go around the wrappers and read it.

Return values as a real libxlio 3.51.1 gives them: ``register_recv_callback`` 0 for every
socket the emulator wraps, offloaded or not (TCP too; -1/EINVAL for an fd it does not know,
and, in the 3.60 layout, for a TCP socket); ``dump_fd_stats`` 0 for any fd once started, a
descriptor that is not a socket included (a level outside -1..8 means INFO);
``get_socket_rings_num`` >= 1 (the emulator: 1) for a socket it offloads that is bound (UDP)
or connected, accepted or listening (TCP), 0 for a bound socket it does not offload and an
unconnected TCP socket, -1 for an unbound UDP socket (0 if it was made with thread offload
off: it is never offloaded) and an fd that is not a socket it wraps;
``get_socket_rings_fds`` -1/EINVAL only for ``n <= 0`` or a NULL array, else the count (0 for
an fd it does not know).

Behaviour worth knowing (beyond the real library's contract):

- Packet ids are addresses of emulator-owned descriptors, checked before use; freed
  descriptors are reused in FIFO order, so a stale id (double free, packet of a closed socket)
  finds its descriptor free and gets -1/ENOENT instead of freeing a newer packet.  A
  ``free_packets`` call with some bad entries frees the good ones and returns -1/ENOENT.
- Offloaded UDP sockets are pulled from the kernel in batches: a zero-copy receive (and a
  callback's or poll's pull) takes up to 32 datagrams with one non-blocking ``recvmmsg`` into
  pool buffers (each batch slot gets the buffers of the last batch's largest datagram, at most
  4, and a per-thread scratch area for a longer tail, copied into more pool buffers), hands out
  the oldest and queues the rest in the socket's user queue; ``recvfrom_zcopy`` still answers
  one datagram per call.  A batch takes only as many slots as the pool can fill with the
  largest datagram (free buffers are reserved for it), one datagram (sized first) when not even
  one slot fits: a full pool answers ENOMEM and loses nothing.  Callbacks run on queued
  datagrams when a receive (or poll) reaches them, as they would have on the kernel's; the
  kernel's control messages (receive timestamps) are kept for a ``recvmsg`` caller; once a
  socket was pulled in batches its copy receives (recv, recvfrom, recvmsg, recvmmsg, read,
  readv) take the queue's datagrams first and never block in the kernel (blocking calls wait in
  slices of 20 ms and look at the queue again, so a batch taken by another thread wakes them);
  ``MSG_ERRQUEUE`` reads go to the kernel.  In a forked child the parent's queued datagrams are
  the parent's (each datagram is read once); close() returns them to the pool.  Not covered: a
  thread already blocked in poll/select/epoll_wait when another thread's batch takes the
  datagrams it waits for wakes at the next datagram or its timeout (pyxlio's own waits look
  again every 50 ms); ``ioctl(FIONREAD)`` and an fd made by ``dup()`` see only the kernel's
  queue; a blocking receive interrupted by a signal answers EINTR even under ``SA_RESTART``
  (libxlio's blocking receive does too).
- Sockets with a receive callback, a feed or datagrams queued keep a user-space queue;
  poll/ppoll/select/pselect/epoll report them readable iff a receive call would return data
  now.  For such sockets epoll is level-triggered even for ``EPOLLET``/``EPOLLONESHOT``
  registrations, and ``recvmmsg`` waits for the first datagram only (``MSG_WAITFORONE``; its
  timeout is ignored).
- Callbacks run on offloaded UDP sockets only: one registered on a TCP socket is accepted (0,
  as libxlio 3.51.1 answers) and never called (libxlio runs it on offloaded TCP segments).
- The registered allocator's ``free`` is never called (the real library may also never call
  it, and a Python allocator may be gone at exit).
- Rules only turn offload off (``use os``); a socket created with thread offload off stays a
  kernel socket whatever the rules say.
- In a forked child the parent's outstanding packets are not the child's: freeing one gives
  -1/ENOENT and the child's leak report ignores them.
- Canary: when a packet's buffers go back to the pool (freed by
  ``recvfrom_zcopy_free_packets``, dropped by a callback, copied out by a copy receive,
  reclaimed at close) its payload bytes are overwritten with 0xDB, so a program reading through
  a stale view sees 0xDB bytes, not plausible data.  Always on, strict mode or not: it costs one
  memset of the payload per packet, measured on the in-memory feed (``bench/c/refloop recv``,
  CPU time per packet, zcopy and zcopy-free-batch): about +3 ns at 64 bytes, +10 to 30 ns at
  1472 bytes, +100 ns at 9000 bytes, against a whole receive of 70 to 250 ns there; a receive
  from a kernel socket costs 1 to 2 us, where it does not show.
- The pool never wedges: spare buffers kept by idle threads are bounded so that whenever every
  packet is free a datagram of any size can be received by any thread.
- Receive flags of ``recvfrom_zcopy`` on an offloaded socket, as libxlio 3.51.1 treats them:
  ``MSG_PEEK`` (UDP) returns the datagram's packet list but leaves the datagram queued (the next
  receive returns it again, same packet id; freeing the peeked id before that is -1/ENOENT and a
  violation - in libxlio it corrupts the pool); ``MSG_TRUNC`` (UDP) returns the datagram's full
  length when the buffer lists only some fragments; ``MSG_WAITALL`` (UDP) is ignored.
  ``MSG_ERRQUEUE`` (UDP and TCP) and ``MSG_PEEK``/``MSG_WAITALL`` on TCP are unsafe in libxlio
  (it returns data for an error-queue read, consumes peeked TCP data and corrupts its
  accounting, waits for as many bytes as the packet-list buffer is long): the emulator refuses
  them with -1/EINVAL and a violation.  On a socket that is not offloaded the flags go to the
  kernel, as in libxlio.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import subprocess

__all__ = [
    "EXIT_CONFIG",
    "EXIT_STRICT",
    "LIBRARY_NAME",
    "ConfigError",
    "environ",
    "is_loaded",
    "library_path",
    "run",
    "validate_environ",
]

LIBRARY_NAME = "libxlio_emu.so"
EXIT_STRICT = 86  #: exit status of a strict-mode run with leaks or contract violations
EXIT_CONFIG = 87  #: exit status of a program started with a bad emulator configuration
_LAYOUTS = ("legacy", "3.51", "3.60", "3.61", "3.94", "vma")  # 3.51: another name of legacy
_OFFLOADS = ("all", "none", "no-loopback")

# The emulator's limits and the texts of its configuration errors: the same as in emu_core.c
# (tests/test_emu_config.py checks that both say the same).
_MAX_DGRAM = 65536
_MAX_BUFS = 1 << 24
_DEFAULT_FRAG = 1472
_ACCEPT_FLAG = "0 or 1 (empty: 0)"
_ACCEPT_LAYOUT = "legacy, 3.51, 3.60, 3.61, 3.94 or vma (empty: legacy)"
_ACCEPT_OFFLOAD = "all, none or no-loopback (empty: all)"
_ACCEPT_TRACELEVEL = (
    "none, panic, error, warn, warning, info, information, details, debug, fine, func, finer, "
    "func+, funcall, func_all, func-all or all in any case, or 0..6 as libxlio reads them "
    "(empty: info)"
)
_ACCEPT_SIZE_SYNTAX = (
    "a decimal, 0x-hex or 0-octal number with no suffix or a B, K, KB, M, MB, G or GB suffix "
    "in any case"
)
_ACCEPT_FEED = (
    "PORT:SIZE[,PORT:SIZE...] with at most 32 entries, PORT a decimal 1..65535 (each port "
    "once), SIZE a decimal 8..65507 (empty: no feed)"
)
#: XLIO_TRACELEVEL words and digits, as libxlio 3.51.1 reads them (case-insensitive)
_TRACELEVELS = {
    "none": -1, "panic": 0, "0": 0, "error": 1, "1": 1, "warn": 2, "warning": 2, "2": 2,
    "info": 3, "information": 3, "3": 3, "details": 4, "debug": 5, "4": 5, "fine": 6,
    "func": 6, "5": 6, "finer": 7, "func+": 7, "funcall": 7, "func_all": 7, "func-all": 7,
    "6": 7, "all": 8,
}
_SIZE_RE = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([A-Za-z]*)")
_SIZE_SHIFT = {"": 0, "B": 0, "K": 10, "KB": 10, "M": 20, "MB": 20, "G": 30, "GB": 30}
_EMU_VARS = ("PYXLIO_EMU_FEED", "PYXLIO_EMU_FRAG_SIZE", "PYXLIO_EMU_LAYOUT",
             "PYXLIO_EMU_OFFLOAD", "PYXLIO_EMU_STRICT", "PYXLIO_EMU_VERBOSE")
_FEED_ITEM_RE = re.compile(r"([0-9]{1,6}):([0-9]{1,6})")


class ConfigError(ValueError):
    """A bad value of a variable the emulator reads.

    The message is the one the library prints after ``"pyxlio-emu: error: "`` before it exits
    with status :data:`EXIT_CONFIG`.
    """


def _quote(value: str) -> str:
    """``value`` as the library quotes it: printable ASCII as is, other bytes ``\\xNN``."""
    raw = os.fsencode(value)
    out = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x27, 0x5C) else f"\\x{b:02x}"
                  for b in raw[:64])
    return out + ("..." if len(raw) > 64 else "")


def _bad(name: str, value: str, accepted: str) -> ConfigError:
    return ConfigError(f"{name}='{_quote(value)}' is invalid; accepted: {accepted}")


def _parse_size(text: str) -> int | None:
    """libxlio's size syntax (strtoul base 0, then "", B, K, KB, M, MB, G or GB)."""
    m = _SIZE_RE.fullmatch(text)
    if m is None or m.group(2).upper() not in _SIZE_SHIFT:
        return None
    num = m.group(1)
    if num[:2] in ("0x", "0X"):
        value = int(num, 16)
    elif len(num) > 1 and num[0] == "0":
        value = int(num, 8)
    else:
        value = int(num)
    value <<= _SIZE_SHIFT[m.group(2).upper()]
    return value if value < 1 << 64 else None


def _check_feed(feed: str) -> bool:
    ports: set[int] = set()
    items = feed.split(",")
    if len(items) > 32:
        return False
    for item in items:
        m = _FEED_ITEM_RE.fullmatch(item)
        if m is None:
            return False
        port, size = int(m.group(1)), int(m.group(2))
        if not 0 < port < 65536 or not 8 <= size <= 65507 or port in ports:
            return False
        ports.add(port)
    return True


def validate_environ(env: Mapping[str, str]) -> None:
    """Check the emulator's variables in ``env`` as the library does when it is loaded.

    Raises :class:`ConfigError` (a ValueError) with the library's own message for the first
    bad one.  Unset and empty variables mean their defaults.  The config file itself (that it
    is a readable regular file of at most 1 MiB whose rules parse) is checked by the library;
    ``python -m pyxlio.emu`` lets the library check it before it execs the command.
    """

    def get(name: str) -> str | None:
        return env.get(name) or None

    for name, value in env.items():
        if name.startswith("PYXLIO_EMU_") and value and name not in _EMU_VARS:
            raise ConfigError(f"{_quote(name)}='{_quote(value)}' is not a variable of the "
                              f"emulator; accepted: {', '.join(_EMU_VARS[:-1])} or "
                              f"{_EMU_VARS[-1]}")

    for name in ("PYXLIO_EMU_STRICT", "PYXLIO_EMU_VERBOSE"):
        v = get(name)
        if v is not None and v not in ("0", "1"):
            raise _bad(name, v, _ACCEPT_FLAG)
    v = get("PYXLIO_EMU_LAYOUT")
    if v is not None and v not in _LAYOUTS:
        raise _bad("PYXLIO_EMU_LAYOUT", v, _ACCEPT_LAYOUT)
    v = get("PYXLIO_EMU_OFFLOAD")
    if v is not None and v not in _OFFLOADS:
        raise _bad("PYXLIO_EMU_OFFLOAD", v, _ACCEPT_OFFLOAD)
    v = get("XLIO_TRACELEVEL")
    if v is not None and v.lower() not in _TRACELEVELS:
        raise _bad("XLIO_TRACELEVEL", v, _ACCEPT_TRACELEVEL)
    frag = _DEFAULT_FRAG
    v = get("PYXLIO_EMU_FRAG_SIZE")
    if v is not None:
        n = _parse_size(v)
        if n is None or not 64 <= n <= _MAX_DGRAM:
            raise _bad("PYXLIO_EMU_FRAG_SIZE", v,
                       f"a size from 64 to {_MAX_DGRAM} bytes, {_ACCEPT_SIZE_SYNTAX}")
        frag = n
    stride = (frag + 63) & ~63
    maxfrag = -(-_MAX_DGRAM // frag)
    lo, hi = maxfrag * stride, _MAX_BUFS * stride
    v = get("XLIO_MEMORY_LIMIT")
    if v is not None:
        n = _parse_size(v)
        if n is None or not lo <= n <= hi:
            raise _bad("XLIO_MEMORY_LIMIT", v,
                       f"a size from {lo} to {hi} bytes (the pool holds at least one "
                       f"{_MAX_DGRAM}-byte datagram: {maxfrag} buffers of {stride} bytes with "
                       f"PYXLIO_EMU_FRAG_SIZE={frag}; at most {_MAX_BUFS} buffers), "
                       f"{_ACCEPT_SIZE_SYNTAX} (empty: 64MB)")
    v = get("PYXLIO_EMU_FEED")
    if v is not None and not _check_feed(v):
        raise _bad("PYXLIO_EMU_FEED", v, _ACCEPT_FEED)


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


def environ(
    strict: bool = False,
    layout: str | None = None,
    feed: str | None = None,
    frag_size: int | None = None,
    memory_limit: int | str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    base: Mapping[str, str] | None = None,
    verbose: bool = False,
    offload: str | None = None,
) -> dict[str, str]:
    """Return an environment that runs a program under the emulator.

    A copy of ``base`` (default ``os.environ``) with the library first in ``LD_PRELOAD`` (an
    existing LD_PRELOAD is kept after it, except a sanitizer runtime, kept first) and the
    emulator's variables set from the arguments (``offload``: ``PYXLIO_EMU_OFFLOAD``).
    Every emulator variable of the result, inherited ones included, is checked with
    :func:`validate_environ`: a bad one raises :class:`ConfigError` (a ValueError).
    """
    env = dict(os.environ if base is None else base)
    lib = library_path()
    old = env.get("LD_PRELOAD", "")
    parts = [p for p in old.replace(":", " ").split() if p and p != lib]
    # A sanitizer runtime must stay first (ASan refuses to start otherwise); the emulator
    # comes right after it, before anything else preloaded.
    runtimes = [p for p in parts if os.path.basename(p).startswith(("libasan", "libubsan"))]
    others = [p for p in parts if p not in runtimes]
    env["LD_PRELOAD"] = " ".join([*runtimes, lib, *others])
    if strict:
        env["PYXLIO_EMU_STRICT"] = "1"
    if layout is not None:
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        env["PYXLIO_EMU_LAYOUT"] = layout
    if offload is not None:
        if offload not in _OFFLOADS:
            raise ValueError(f"offload must be one of {_OFFLOADS}, got {offload!r}")
        env["PYXLIO_EMU_OFFLOAD"] = offload
    if feed is not None:
        env["PYXLIO_EMU_FEED"] = feed
    if frag_size is not None:
        env["PYXLIO_EMU_FRAG_SIZE"] = str(int(frag_size))
    if memory_limit is not None:
        env["XLIO_MEMORY_LIMIT"] = str(memory_limit)
    if config_file is not None:
        env["XLIO_CONFIG_FILE"] = os.fspath(config_file)
    if verbose:
        env["PYXLIO_EMU_VERBOSE"] = "1"
    validate_environ(env)
    return env


def run(argv: Sequence[str], check: bool = False, **opts: Any) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` under the emulator and wait for it.

    Keyword arguments named like :func:`environ`'s parameters configure the emulator; the
    others go to :func:`subprocess.run`.
    """
    import subprocess

    names = ("strict", "layout", "feed", "frag_size", "memory_limit", "config_file", "base",
             "verbose", "offload")
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


def _probe(env: Mapping[str, str]) -> str | None:
    """Let the library check the whole configuration (the config file's contents included)
    in a throw-away process: its error lines if it refuses (exit status 87), else None."""
    import subprocess

    r = subprocess.run([sys.executable, "-I", "-S", "-c", ""], env=dict(env),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace", timeout=60)
    if r.returncode != EXIT_CONFIG:
        return None
    lines = [ln for ln in r.stderr.splitlines(keepends=True)
             if ln.startswith("pyxlio-emu: error: ")]
    return "".join(lines) or r.stderr


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
    p.add_argument("--layout", choices=_LAYOUTS,
                   help="xlio_api_t layout (default legacy, also called 3.51; vma: libvma 9.8.84's "
                   "vma_api_t)")
    p.add_argument("--offload", choices=_OFFLOADS,
                   help="sockets offloaded: all (default), none (every socket served by the "
                   "kernel, as a real XLIO host serves loopback) or no-loopback (like a real "
                   "host)")
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
            offload=a.offload,
        )
    except ConfigError as e:
        print(f"pyxlio-emu: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m pyxlio.emu: {e}", file=sys.stderr)
        return 2
    error = _probe(env)
    if error is not None:
        sys.stderr.write(error)
        return EXIT_CONFIG
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        print(f"python -m pyxlio.emu: cannot run {cmd[0]!r}: {e}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover (exec does not return)
