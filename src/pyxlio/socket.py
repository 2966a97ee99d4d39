"""The drop-in socket: :class:`socket` subclasses :class:`socket.socket` and adds XLIO's calls.

It works wherever a socket does (selectors, asyncio's ``sock_*`` calls, ``with``) and adds
zero-copy receive (:meth:`socket.recvfrom_zcopy`, :meth:`socket.recv_batch`), receive callbacks
and a C-level filter, dummy sends, multicast helpers, and XLIO's per-socket statistics.  Without
XLIO the same calls work through the kernel; XLIO-only controls raise
:class:`pyxlio.XlioNotLoadedError`.

Importing this module imports the stdlib ``socket`` module, which (through ``selectors``)
starts XLIO: register a user allocator before importing it.
"""

from __future__ import annotations

import socket as _stdsocket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pyxlio import _api
from pyxlio._log import logger
from pyxlio._zcopy import Packet, PacketBatch, RecvInfo, SocketEngine, _EngineMethod
from pyxlio.constants import MSG_DUMMY, Layout, LogLevel, Verdict
from pyxlio.errors import UnsupportedError, XlioError, XlioNotLoadedError

__all__ = [
    "MAX_DUMMY_RATE",
    "DummySender",
    "create_connection",
    "create_server",
    "multicast_receiver",
    "socket",
]

#: The documented guidance for dummy sends: at most 50,000 dummy packets a second.
MAX_DUMMY_RATE = 50_000
#: SO_RCVBUFFORCE (Linux; not in Python's socket module): root may exceed net.core.rmem_max.
_SO_RCVBUFFORCE = 33
#: Source-specific multicast (Linux values; Python's socket module has them only from 3.12).
_IP_ADD_SOURCE_MEMBERSHIP = getattr(_stdsocket, "IP_ADD_SOURCE_MEMBERSHIP", 39)
_IP_DROP_SOURCE_MEMBERSHIP = getattr(_stdsocket, "IP_DROP_SOURCE_MEMBERSHIP", 40)

RecvCallback = Callable[[memoryview, RecvInfo], "Verdict | int"]


class _EngineGuard(_stdsocket.SocketType):
    """Sits between :class:`socket.socket` and the C socket type in pyxlio's socket's MRO, so
    ``socket.socket.detach(s)`` (whose ``super().detach()`` lands here) frees the engine's
    packets, or refuses while a view is exported, before the descriptor is given away, as
    pyxlio's own :meth:`socket.detach` does.  (``socket.socket.close(s)`` goes through
    ``_real_close``.)  Adds no state."""

    __slots__ = ()

    def detach(self) -> int:
        engine = getattr(self, "_engine", None)
        if engine is not None and not engine.closed:
            try:
                engine.close()
            except BufferError:
                # socket.socket.detach set _closed before it got here: the socket stays open,
                # so a later close() (or `with`) must still close it.
                self._closed = False
                raise
        return _stdsocket.SocketType.detach(self)


class socket(_stdsocket.socket, _EngineGuard):
    """A :class:`socket.socket` with XLIO's Extra API.  Same constructor as the stdlib's."""

    __slots__ = ("_engine",)

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)
        self._engine = SocketEngine(self.fileno(), int(self.family), int(self.type))
        self._engine.settimeout(super().gettimeout())

    # -- timeouts are mirrored into the engine ----------------------------------------------
    def settimeout(self, value: float | None) -> None:
        super().settimeout(value)
        self._engine.settimeout(super().gettimeout())

    def setblocking(self, flag: bool) -> None:
        super().setblocking(flag)
        self._engine.settimeout(super().gettimeout())

    # -- XLIO decides offload at bind/connect (transport rules): ask again afterwards ---------
    def bind(self, address: Any) -> None:
        super().bind(address)
        self._engine.forget_offload_state()

    def connect(self, address: Any) -> None:
        super().connect(address)
        self._engine.forget_offload_state()

    def connect_ex(self, address: Any) -> int:
        rc = super().connect_ex(address)
        self._engine.forget_offload_state()
        return rc

    # -- zero-copy receive ------------------------------------------------------------------
    def recvfrom_zcopy(self, flags: int = 0, force: bool = False) -> Packet | None:
        """Receive one datagram (or TCP chunk) without copying it, when XLIO can.

        Blocks according to the socket's timeout, like ``recvfrom``: BlockingIOError on a
        non-blocking socket with nothing ready, TimeoutError when the timeout expires.  The
        packet says ``zcopy == False`` when the data was copied (no XLIO, or a socket XLIO does
        not offload); ``force=True`` raises :class:`pyxlio.XlioError` (EIO) instead of copying,
        or :class:`pyxlio.UnsupportedError` where the loaded layout has no zero-copy receive
        (libxlio 3.60 and later).
        Returns None at the end of a TCP stream.  Release the packet (``with pkt:``).
        """
        return self._engine.recvfrom_zcopy(flags, force)

    def recv_batch(self, max_packets: int = 64, timeout: float | None = None, *,
                   addresses: bool = True,
                   timestamps: bool | str = False) -> PacketBatch:
        """Receive up to `max_packets` datagrams in one call (it waits without the GIL).

        Waits for the first datagram (`timeout` None: the socket's own timeout or blocking
        mode; 0: do not wait), then takes what is ready without waiting.  Returns an empty
        (falsy) batch when nothing arrived in time.  Release the batch (``with batch:``): one
        free call returns every buffer to XLIO.  ``addresses=False`` does not ask for source
        addresses (they read as None): the kernel then skips a sockaddr copy per datagram,
        which a feed handler that knows its sources need not pay.

        ``timestamps=True`` (or ``"software"``) gives ``batch.timestamps``, one int64
        CLOCK_REALTIME nanosecond value per datagram: the kernel's receive time
        (SO_TIMESTAMPNS).  ``"hardware"`` asks SO_TIMESTAMPING for the NIC's raw hardware
        stamp where the NIC and driver give one (the NIC's clock: CLOCK_REALTIME only when
        synchronised to it, e.g. by phc2sys; the interface's hardware stamping must be switched
        on, SIOCSHWTSTAMP, which pyxlio does not do), the kernel's software stamp otherwise.
        Where no stamp is given (XLIO's zero-copy receive returns no control messages, and
        datagrams queued before the first request), the value is pyxlio's own CLOCK_REALTIME
        reading when its receive pass returned with the datagram; ``batch.timestamp_sources``
        says which (0 pyxlio, 1 kernel, 2 hardware).  Never a silent 0.
        """
        return self._engine.recv_batch(max_packets, timeout, addresses=addresses,
                                       timestamps=timestamps)

    if not TYPE_CHECKING:
        # On an instance, these two are the engine's own methods (no Python frame per call);
        # the functions above are what the class, help() and the type checkers see.
        recvfrom_zcopy = _EngineMethod(recvfrom_zcopy)
        recv_batch = _EngineMethod(recv_batch)

    def enable_timestamps(self, timestamps: bool | str = True) -> bool:
        """Switch the kernel's receive timestamps on now, so datagrams queued before the first
        ``recv_batch(timestamps=...)`` are stamped too.  False when the kernel refuses."""
        return self._engine.switch_timestamps(timestamps)

    @property
    def max_datagram(self) -> int:
        """Largest datagram the kernel path keeps whole (bytes per batch slot, default 64 KiB).

        Lower it (e.g. to 2048) to shrink batch memory when datagrams are small; a longer
        datagram is then cut and counted in ``batch.truncated``."""
        return self._engine.max_datagram

    @max_datagram.setter
    def max_datagram(self, value: int) -> None:
        self._engine.max_datagram = value

    @property
    def outstanding(self) -> int:
        """Packets received zero-copy and not yet released."""
        return self._engine.outstanding

    @property
    def offloaded(self) -> bool | None:
        """Whether XLIO offloads this socket (None when the loaded XLIO cannot tell)."""
        return self._engine.offloaded

    # -- receive callbacks ------------------------------------------------------------------
    def set_recv_callback(self, fn: RecvCallback | None) -> None:
        """Call ``fn(view, info)`` for each datagram, inside the receive call.

        `view` is a read-only memoryview valid during the call only; `info` a
        :class:`pyxlio.RecvInfo`.  Return :class:`pyxlio.Verdict`: DROP discards the datagram,
        RECV queues it for the receive calls, HOLD keeps it as a :class:`pyxlio.Packet` in
        :attr:`held`, to release later.  An exception in `fn` is kept and raised from this
        socket's next receive call (the datagram is delivered).  ``None`` unregisters.

        XLIO runs it on the datagrams it offloads; on every other datagram (no XLIO, a socket
        XLIO does not offload, a layout without callbacks) pyxlio runs it itself in
        :meth:`recv_batch` and :meth:`recvfrom_zcopy`, with the same verdicts
        (:attr:`callback_path`, ``info.path``).  The stdlib calls (``recv``, ``recvfrom``...)
        run it only where XLIO does.  Inside `fn`, receive and close calls on pyxlio sockets
        raise RuntimeError; releases are made when the receive call returns.
        """
        self._engine.set_recv_callback(fn)
        if fn is not None:
            logger.debug("socket fd %d: receive callback %r runs on the %s path", self.fileno(),
                         fn, self._engine.callback_path)

    def set_recv_filter(self, offset: int, pattern: bytes, keep: bool = True) -> None:
        """Filter in C, with no Python per datagram: keep (or, with ``keep=False``, drop) the
        datagrams whose bytes at `offset` equal `pattern` (1..64 bytes); the others are dropped
        (kept).  Runs before any Python callback, where the callback runs."""
        self._engine.set_recv_filter(offset, pattern, keep)

    def clear_recv_filter(self) -> None:
        """Remove the C-level filter."""
        self._engine.clear_recv_filter()

    @property
    def filtered(self) -> int:
        """Datagrams dropped by the C-level filter."""
        return self._engine.filtered

    @property
    def callback_path(self) -> str | None:
        """Who runs this socket's receive callback and filter: ``"xlio"`` (XLIO, inside its
        receive path, on the datagrams it offloads; pyxlio on any that arrive as copies),
        ``"pyxlio"`` (pyxlio itself, on every datagram its receive calls take: no XLIO, a
        socket XLIO does not offload, a layout without callbacks), or None when none is set."""
        return self._engine.callback_path

    @property
    def held(self) -> deque[Packet]:
        """Packets a receive callback held (Verdict.HOLD), oldest first: release each."""
        return self._engine.held

    # The stdlib receive calls, plus the check for a receive callback's exception.  It is
    # raised before the call: after it, data is in hand and raising would lose it (it is then
    # raised by the next receive call), unless it is an interrupt (Ctrl-C), raised at once.
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._engine.check_callback_errors()
        data = super().recv(bufsize, flags)
        self._engine.check_interrupts()
        return data

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        self._engine.check_callback_errors()
        result = super().recvfrom(bufsize, flags)
        self._engine.check_interrupts()
        return result

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._engine.check_callback_errors()
        n = super().recv_into(buffer, nbytes, flags)
        self._engine.check_interrupts()
        return n

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        self._engine.check_callback_errors()
        result = super().recvfrom_into(buffer, nbytes, flags)
        self._engine.check_interrupts()
        return result

    # -- dummy send -------------------------------------------------------------------------
    def _check_dummy(self, flags: int) -> None:
        if not flags & MSG_DUMMY:
            return
        api = _api.get_api()
        if api is None:
            # Without XLIO the kernel would take 0x400 (MSG_SYN) and really send the data.
            raise XlioNotLoadedError("send", "MSG_DUMMY needs XLIO: without it the datagram "
                                     "would really be sent")
        if not api.dummy_send:
            # 3.60 removed the flag (3.61+ too); the legacy layout and 3.94x keep it.
            raise UnsupportedError("send", "dummy sends were removed in libxlio 3.60: this "
                                   f"XLIO (layout {api.layout}) would really send; they need "
                                   f"layout {Layout.LEGACY} or {Layout.V3_94}")

    def _dummy_error(self, exc: OSError) -> XlioError:
        return XlioError(exc.errno or 0, "XLIO refused the dummy send: the socket is not "
                         "offloaded by XLIO (dummy sends need an offloaded socket)", "send")

    def send(self, data: Any, flags: int = 0) -> int:
        self._check_dummy(flags)
        if flags & MSG_DUMMY:
            try:
                return super().send(data, flags)
            except OSError as exc:
                raise self._dummy_error(exc) from None
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._check_dummy(flags)
        try:
            super().sendall(data, flags)
        except OSError as exc:
            if flags & MSG_DUMMY:
                raise self._dummy_error(exc) from None
            raise

    def sendto(self, data: Any, *args: Any) -> int:
        flags = args[0] if len(args) == 2 else 0
        self._check_dummy(flags)
        try:
            return super().sendto(data, *args)
        except OSError as exc:
            if flags & MSG_DUMMY:
                raise self._dummy_error(exc) from None
            raise

    def sendmsg(self, buffers: Iterable[Any], ancdata: Iterable[Any] = (), flags: int = 0,
                address: Any = None) -> int:
        self._check_dummy(flags)
        try:
            if address is None:
                return super().sendmsg(buffers, ancdata, flags)
            return super().sendmsg(buffers, ancdata, flags, address)
        except OSError as exc:
            if flags & MSG_DUMMY:
                raise self._dummy_error(exc) from None
            raise

    def send_dummy(self, data: Any, address: Any = None) -> int:
        """Send a "dummy" packet: XLIO walks the whole send path (keeping it warm in the
        caches) and the NIC drops the packet.  Needs XLIO and an offloaded socket."""
        if address is None:
            return self.send(data, MSG_DUMMY)
        return self.sendto(data, MSG_DUMMY, address)

    def warm(self, data: Any, rate: float = 10_000, address: Any = None) -> DummySender:
        """A :class:`DummySender` keeping this socket's send path warm at `rate` packets/s
        (use it as a context manager around the waiting part of the program)."""
        return DummySender(self, data, rate, address)

    # -- multicast --------------------------------------------------------------------------
    def join_multicast(self, group: str, interface: str = "0.0.0.0",
                       source: str | None = None) -> None:
        """Join `group` on `interface` (IP_ADD_MEMBERSHIP), or only the traffic that `source`
        sends to it (source-specific: IP_ADD_SOURCE_MEMBERSHIP).  IPv6 groups use
        IPV6_JOIN_GROUP with the interface's index (`interface` a name or index)."""
        self._membership(group, interface, source, join=True)

    def leave_multicast(self, group: str, interface: str = "0.0.0.0",
                        source: str | None = None) -> None:
        """Leave what :meth:`join_multicast` joined."""
        self._membership(group, interface, source, join=False)

    def _membership(self, group: str, interface: str, source: str | None, join: bool) -> None:
        if self.family == _stdsocket.AF_INET6:
            if source is not None:
                raise ValueError("source-specific multicast is supported for IPv4 only")
            index = (interface if isinstance(interface, int)
                     else 0 if interface in ("", "0.0.0.0", "::")
                     else _stdsocket.if_nametoindex(interface))
            mreq6 = _stdsocket.inet_pton(_stdsocket.AF_INET6, group) + struct.pack("@I", index)
            opt6 = _stdsocket.IPV6_JOIN_GROUP if join else _stdsocket.IPV6_LEAVE_GROUP
            self.setsockopt(_stdsocket.IPPROTO_IPV6, opt6, mreq6)
            return
        grp = _stdsocket.inet_aton(group)
        ifc = _stdsocket.inet_aton(interface)
        if source is None:
            opt = _stdsocket.IP_ADD_MEMBERSHIP if join else _stdsocket.IP_DROP_MEMBERSHIP
            self.setsockopt(_stdsocket.IPPROTO_IP, opt, grp + ifc)
        else:
            opt = _IP_ADD_SOURCE_MEMBERSHIP if join else _IP_DROP_SOURCE_MEMBERSHIP
            # Linux struct ip_mreq_source: multiaddr, interface, sourceaddr.
            self.setsockopt(_stdsocket.IPPROTO_IP, opt,
                            grp + ifc + _stdsocket.inet_aton(source))

    def set_receive_buffer(self, size: int) -> int:
        """Ask for a `size`-byte receive buffer: SO_RCVBUFFORCE when allowed (root), else
        SO_RCVBUF (capped by net.core.rmem_max).  Returns what the kernel granted."""
        if size <= 0:
            raise ValueError("size must be positive")
        try:
            self.setsockopt(_stdsocket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except PermissionError:
            self.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVBUF, size)
            logger.debug("socket fd %d: SO_RCVBUFFORCE not permitted, SO_RCVBUF used "
                         "(capped by net.core.rmem_max)", self.fileno())
        granted: int = self.getsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVBUF)
        logger.debug("socket fd %d: receive buffer %d bytes asked, %d granted", self.fileno(),
                     size, granted)
        return granted

    # -- statistics and rings ---------------------------------------------------------------
    def stats(self, level: int = LogLevel.INFO) -> None:
        """Print XLIO's statistics of this socket through XLIO's logger (dump_fd_stats)."""
        _api.dump_fd_stats(self.fileno(), level)

    def rings(self) -> list[int]:
        """File descriptors of the XLIO rings serving this socket."""
        return _api.socket_rings(self.fileno())

    # -- lifetime ---------------------------------------------------------------------------
    def accept(self) -> tuple[socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        sock = type(self)(self.family, self.type, self.proto, fileno=fd)
        if _stdsocket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, addr

    def close(self) -> None:
        """Release every packet still held (BufferError while a view of one is exported),
        unregister the receive callback, then close.  A receive blocked in another thread
        raises OSError (EBADF); close() inside the socket's own receive callback raises
        RuntimeError."""
        self._close_engine()
        super().close()

    def _real_close(self) -> None:
        # socket.socket.close(s) (the base class's own close, or the last makefile() reference
        # going away) lands here: the engine closes before the fd, whichever way in.
        try:
            self._close_engine()
        except BufferError:
            self._closed = False   # socket.close() set it first: the socket stays usable
            raise
        super()._real_close()  # type: ignore[misc]

    def _close_engine(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None and not engine.closed and self.fileno() >= 0:
            engine.close()
            _warn_unraised(engine)

    def detach(self) -> int:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()
        return super().detach()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None and self.fileno() >= 0 and not engine.closed:
            if engine.exports > 0:
                # Views still read this socket's buffers: keep the fd open until they go (the
                # engine closes it when its last batch is gone).  The C type's detach: the
                # guard's would refuse, rightly, while views are exported.
                self._closed = True
                engine.adopt_fd(_stdsocket.SocketType.detach(self))
                return
            try:
                engine.close()
            except Exception:
                # A finalizer cannot raise; the fd is closed by the base class below.
                logger.debug("socket fd %d: engine close at collection failed", self.fileno(),
                             exc_info=True)
        super().__del__()  # type: ignore[misc]


def _warn_unraised(engine: SocketEngine) -> None:
    """Callback exceptions that no receive call raised are reported, never dropped."""
    for exc in engine.take_callback_errors():
        import warnings

        warnings.warn(f"pyxlio: the receive callback raised {exc!r}, and no receive call on "
                      "the socket raised it before close()", RuntimeWarning, stacklevel=3)


class DummySender:
    """Keep a socket's send path warm: dummy sends at a bounded rate on a background thread.

    ``with sock.warm(b"x" * 64, rate=20_000): wait_for_signal()``.  The rate is capped at
    :data:`MAX_DUMMY_RATE` (the documented guidance).  Errors on the thread are kept in
    :attr:`error` and raised from :meth:`stop`.
    """

    def __init__(self, sock: socket, data: Any, rate: float = 10_000,
                 address: Any = None) -> None:
        if not isinstance(sock, socket):
            raise TypeError("DummySender needs a pyxlio.socket.socket")
        if not 0 < rate <= MAX_DUMMY_RATE:
            raise ValueError(f"rate must lie in (0, {MAX_DUMMY_RATE}] dummy packets a second")
        sock._check_dummy(MSG_DUMMY)
        self.sock, self.data, self.rate, self.address = sock, bytes(data), float(rate), address
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DummySender:
        if self._thread is not None:
            raise RuntimeError("already started")
        # Fail fast, in the caller's thread, if the socket cannot do dummy sends.
        self.sock.send_dummy(self.data, self.address)
        self.sent = 1
        self._thread = threading.Thread(target=self._run, name="pyxlio-dummy-sender",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.perf_counter()
        try:
            while not self._stop.is_set():
                now = time.perf_counter()
                if now < next_at:
                    self._stop.wait(min(next_at - now, 0.01))
                    continue
                self.sock.send_dummy(self.data, self.address)
                self.sent += 1
                next_at += interval
                if now - next_at > 1.0:      # fell far behind: do not burst to catch up
                    next_at = now
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> DummySender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_connection(address: tuple[str, int], timeout: float | None = None,
                      source_address: tuple[str, int] | None = None) -> socket:
    """:func:`socket.create_connection`, returning a pyxlio socket."""
    host, port = address
    err: OSError | None = None
    for family, type_, proto, _, sa in _stdsocket.getaddrinfo(host, port, 0,
                                                             _stdsocket.SOCK_STREAM):
        sock = None
        try:
            sock = socket(family, type_, proto)
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            return sock
        except OSError as exc:
            err = exc
            if sock is not None:
                sock.close()
    raise err if err is not None else OSError("getaddrinfo returned an empty list")


def create_server(address: tuple[str, int], *, family: int = _stdsocket.AF_INET,
                  backlog: int | None = None, reuse_port: bool = False) -> socket:
    """:func:`socket.create_server`, returning a pyxlio socket (TCP, listening)."""
    sock = socket(family, _stdsocket.SOCK_STREAM)
    try:
        sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
        sock.bind(address)
        if backlog is None:
            sock.listen()
        else:
            sock.listen(backlog)
        return sock
    except BaseException:
        sock.close()
        raise


def multicast_receiver(group: str, port: int, *, interface: str = "0.0.0.0",
                       source: str | None = None, rcvbuf: int | None = 8 << 20,
                       reuse: bool = True, bind_group: bool = True) -> socket:
    """A UDP socket receiving multicast `group`:`port` as market-data receivers set it up:
    SO_REUSEADDR (several receivers on one host), a large receive buffer (SO_RCVBUFFORCE when
    root), bound to the group address (only that group's traffic; ``bind_group=False`` binds
    the wildcard), joined on `interface`, source-specific when `source` is given."""
    family = _stdsocket.AF_INET6 if ":" in group else _stdsocket.AF_INET
    sock = socket(family, _stdsocket.SOCK_DGRAM)
    try:
        if reuse:
            sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
        if rcvbuf:
            sock.set_receive_buffer(rcvbuf)
        sock.bind((group if bind_group else ("::" if family == _stdsocket.AF_INET6 else ""),
                   port))
        sock.join_multicast(group, interface, source)
        return sock
    except BaseException:
        sock.close()
        raise
