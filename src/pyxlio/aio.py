"""asyncio on top of pyxlio's batch receive: zero-copy batches without a thread per socket.

Everything here is built on the event loop's reader callbacks (``loop.add_reader``), the
pattern of pyzmq's ``zmq/_future.py``, and works with the default loop and with uvloop:

- ``await recv_batch(sock, max_packets=64)``: the next batch of a pyxlio socket;
- ``async for batch in batches(sock, ...)``: batch after batch;
- ``await poll(poller, ...)`` / ``async for pairs in polls(poller, ...)``: a
  :class:`pyxlio.Poller` awaited the same way, ``[(socket, PacketBatch), ...]``;
- ``await create_datagram_endpoint(factory, local_addr=...)``: a datagram endpoint in the
  shape of ``loop.create_datagram_endpoint`` whose protocol receives whole batches
  (:class:`BatchProtocol`).

Buffers and cancellation: a coroutine here never holds a batch while it waits.  It first
takes what is ready without waiting (``timeout=0``: a busy feed never touches the loop's
selector); only when nothing is ready does it wait for readability, and the reader callback
only wakes it: the datagrams are taken by the coroutine itself once it runs again.  So a
cancellation, a timeout (``asyncio.wait_for``) or the loop's shutdown can only land while no
datagram is in hand: nothing is lost, leaked or freed twice; the socket keeps its datagrams
for the next receive call.  The batches returned follow the usual rules (release them:
``with batch:``).

Close a socket from the loop's thread, or after its waiters are cancelled: a coroutine waiting
for a socket that another thread closes is not woken (the fd leaves the loop's epoll set
silently, as with ``loop.sock_recv``); bound such waits with ``asyncio.wait_for``.

The module is ``pyxlio.aio`` (not ``asyncio``) so that it never shadows the standard library.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import socket as _stdsocket
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from pyxlio._zcopy import PacketBatch, Poller
from pyxlio.socket import socket as _PyxlioSocket

__all__ = [
    "BatchProtocol",
    "BatchTransport",
    "batches",
    "create_datagram_endpoint",
    "poll",
    "polls",
    "recv_batch",
]


#: The longest ``poll()`` waits on the loop before it asks the Poller again (seconds).
POLL_WAIT_SLICE = 0.05


def _check_socket(sock: object) -> _PyxlioSocket:
    if not isinstance(sock, _PyxlioSocket):
        raise TypeError(f"pyxlio.aio takes pyxlio.socket.socket objects, not "
                        f"{type(sock).__name__}")
    return sock


# Readers shared by every coroutine waiting on one fd of one loop: a loop has one reader
# callback per fd, and a second add_reader would silently replace the first waiter's.
_WAITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, set[Any]]] = \
    weakref.WeakKeyDictionary()


def _wake_all(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiters = _WAITERS.get(loop, {}).pop(fd, set())
    try:
        loop.remove_reader(fd)
    except (OSError, ValueError, RuntimeError):
        pass
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


async def _readable(loop: asyncio.AbstractEventLoop, fds: Iterable[int]) -> None:
    """Wait until one of `fds` is readable.  The reader callbacks only wake the coroutines
    waiting (nothing is read in them); a waiter that leaves (cancelled, timed out, woken by
    another fd) takes its reader with it when it was the last one on that fd."""
    fut: asyncio.Future[None] = loop.create_future()
    table = _WAITERS.setdefault(loop, {})
    joined: list[int] = []
    try:
        for fd in fds:
            waiters = table.get(fd)
            if waiters is None:
                try:
                    loop.add_reader(fd, _wake_all, loop, fd)
                except OSError as exc:
                    if exc.errno != errno.ENOMEM:
                        raise
                    raise OSError(errno.ENOMEM, f"fd {fd} cannot join the event loop's epoll: "
                                  "XLIO keeps one epoll instance per socket, and this one is "
                                  "in another already (a pyxlio.Poller, a selector, another "
                                  "loop); await the Poller instead") from None
                waiters = table[fd] = set()
            waiters.add(fut)
            joined.append(fd)
        await fut
    finally:
        for fd in joined:
            waiters = table.get(fd)
            if waiters is None:
                continue
            waiters.discard(fut)
            if not waiters:
                del table[fd]
                try:
                    loop.remove_reader(fd)
                except (OSError, ValueError, RuntimeError):
                    pass     # a loop already closed, or an fd closed meanwhile


async def recv_batch(sock: Any, max_packets: int = 64, *, addresses: bool = True,
                     timestamps: bool | str = False) -> PacketBatch:
    """The next non-empty batch of `sock` (a pyxlio socket), up to `max_packets` datagrams.

    Never blocks the loop: what is ready is taken at once; otherwise the coroutine waits for
    readability through the loop's reader callbacks.  Bound it with ``asyncio.wait_for``;
    cancelling it loses nothing (see the module).  At the end of a stream: an empty batch with
    ``eof`` set.
    """
    s = _check_socket(sock)
    loop = asyncio.get_running_loop()
    while True:
        b = s.recv_batch(max_packets, 0, addresses=addresses, timestamps=timestamps)
        if b or b.eof:
            return b
        b.release()
        fd = s.fileno()
        if fd < 0:
            raise OSError(9, "Bad file descriptor: the socket is closed")
        await _readable(loop, (fd,))


async def batches(sock: Any, max_packets: int = 64, *, addresses: bool = True,
                  timestamps: bool | str = False) -> AsyncIterator[PacketBatch]:
    """``async for batch in batches(sock)``: batch after batch until the stream ends (or for
    ever on a datagram socket).  Each batch is the caller's to release."""
    while True:
        b = await recv_batch(sock, max_packets, addresses=addresses, timestamps=timestamps)
        if not b and b.eof:
            b.release()
            return
        yield b


async def poll(poller: Poller, max_packets: int = 64, *, addresses: bool = True,
               timestamps: bool | str = False) -> list[tuple[Any, PacketBatch]]:
    """Await a :class:`pyxlio.Poller`: the next non-empty ``poll()`` result, without blocking
    the loop (the drain itself runs without the GIL and never waits)."""
    if not isinstance(poller, Poller):
        raise TypeError(f"poll() takes a pyxlio.Poller, not {type(poller).__name__}")
    loop = asyncio.get_running_loop()
    while True:
        pairs = poller.poll(max_packets, 0, addresses=addresses, timestamps=timestamps)
        if pairs:
            return pairs
        epfd = poller.fileno()
        if epfd < 0:
            raise OSError(9, "Bad file descriptor: the poller is closed")
        # The loop watches the poller's own epoll fd, never its sockets: XLIO keeps one epoll
        # instance per socket (a second registration fails with ENOMEM).  The wait is bounded
        # (POLL_WAIT_SLICE): a nested epoll fd is readable for what the kernel sees, and a
        # datagram only XLIO's rings hold (an offloaded socket) may not show through it.
        try:
            await asyncio.wait_for(_readable(loop, (epfd,)), POLL_WAIT_SLICE)
        except asyncio.TimeoutError:
            pass


async def polls(poller: Poller, max_packets: int = 64, *, addresses: bool = True,
                timestamps: bool | str = False) -> AsyncIterator[list[tuple[Any, PacketBatch]]]:
    """``async for pairs in polls(poller)``: poll results, for ever."""
    while True:
        yield await poll(poller, max_packets, addresses=addresses, timestamps=timestamps)


# -- the datagram endpoint ----------------------------------------------------------------


class BatchProtocol(asyncio.BaseProtocol):
    """A datagram protocol that receives whole batches.

    ``batch_received(batch)`` is called with each non-empty batch.  The transport releases
    the batch when the method returns, unless it returns True: the protocol then keeps the
    batch and must release it itself (``with batch:``).  A view kept past the return without
    saying so is reported to the loop's exception handler (the batch is then released when
    its views are gone and it is collected).
    """

    def batch_received(self, batch: PacketBatch) -> bool | None:
        """Called with each batch; return True to keep it."""
        return None

    def error_received(self, exc: Exception) -> None:
        """A receive or send error (e.g. ECONNREFUSED on a connected socket)."""


class BatchTransport(asyncio.DatagramTransport):
    """The transport of :func:`create_datagram_endpoint`: a pyxlio socket read through the
    loop's reader callback, one ``recv_batch(timeout=0)`` per readiness."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: _PyxlioSocket,
                 protocol: BatchProtocol, address: Any, max_packets: int, addresses: bool,
                 timestamps: bool | str) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname(),
                          "peername": address})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._address = address
        self._max_packets = max_packets
        self._addresses = addresses
        self._timestamps = timestamps
        self._closing = False
        self._finished = False
        self._reading = False
        self._paused = False
        self._writing = False
        self._buffer: collections.deque[tuple[bytes, Any]] = collections.deque()
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)

    # reading
    def _start_reading(self) -> None:
        if self._closing or self._reading or self._paused:
            return
        self._loop.add_reader(self._fd, self._read_ready)
        self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            try:
                self._loop.remove_reader(self._fd)
            except (OSError, ValueError, RuntimeError):
                pass

    def _read_ready(self) -> None:
        if self._closing:
            return
        try:
            b = self._sock.recv_batch(self._max_packets, 0, addresses=self._addresses,
                                      timestamps=self._timestamps)
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        except BaseException as exc:
            self._fatal(exc)
            return
        if not b:
            b.release()
            return
        kept = False
        try:
            kept = bool(self._protocol.batch_received(b))
        except BaseException as exc:
            self._release(b)
            self._fatal(exc)
            return
        if not kept:
            self._release(b)

    def _release(self, b: PacketBatch) -> None:
        try:
            b.release()
        except BufferError as exc:
            self._loop.call_exception_handler({
                "message": "pyxlio.aio: the protocol kept a view of a batch without returning "
                           "True from batch_received(); it is released when its views go",
                "exception": exc, "transport": self, "protocol": self._protocol})

    def pause_reading(self) -> None:
        self._paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        self._paused = False
        self._start_reading()

    def is_reading(self) -> bool:
        return self._reading

    # writing
    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            raise RuntimeError("the transport is closing")
        if addr is None:
            addr = self._address
        payload = bytes(data)
        if not self._buffer:
            try:
                if addr is None:
                    self._sock.send(payload)
                else:
                    self._sock.sendto(payload, addr)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._buffer.append((payload, addr))
        if not self._writing:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writing = True

    def _write_ready(self) -> None:
        while self._buffer:
            payload, addr = self._buffer[0]
            try:
                if addr is None:
                    self._sock.send(payload)
                else:
                    self._sock.sendto(payload, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._buffer.popleft()
        self._loop.remove_writer(self._fd)
        self._writing = False
        if self._closing:
            self._finish(None)

    def get_write_buffer_size(self) -> int:
        return sum(len(p) for p, _ in self._buffer)

    # closing
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._buffer.clear()
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._closing = True
        self._stop_reading()
        self._loop.call_soon(self._finish, None)

    def _fatal(self, exc: BaseException) -> None:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self.abort()
            raise exc
        self._loop.call_exception_handler({"message": "pyxlio.aio: fatal error on transport",
                                           "exception": exc, "transport": self,
                                           "protocol": self._protocol})
        self.abort()

    def _finish(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            try:
                self._sock.close()
            except BufferError as err:
                # Batches the protocol kept still have views: the socket is closed when
                # they are gone (pyxlio keeps the fd open for them).
                self._loop.call_exception_handler({
                    "message": "pyxlio.aio: closed while a kept batch has views",
                    "exception": err, "transport": self})


async def create_datagram_endpoint(
        protocol_factory: Callable[[], BatchProtocol], local_addr: Any = None,
        remote_addr: Any = None, *, family: int = 0, proto: int = 0,
        reuse_port: bool | None = None, allow_broadcast: bool | None = None,
        sock: Any = None, max_packets: int = 64, addresses: bool = True,
        timestamps: bool | str = False) -> tuple[BatchTransport, BatchProtocol]:
    """``loop.create_datagram_endpoint`` over a pyxlio socket, whose protocol receives whole
    batches (:class:`BatchProtocol`).  `sock` (a pyxlio socket) is used as it is; otherwise
    one is made and bound to `local_addr` / connected to `remote_addr` (numeric addresses:
    no name resolution is done here)."""
    loop = asyncio.get_running_loop()
    if max_packets < 1:
        raise ValueError("max_packets must be >= 1")
    if sock is not None:
        if local_addr is not None or remote_addr is not None:
            raise ValueError("sock and local_addr/remote_addr cannot be given together")
        s = _check_socket(sock)
    else:
        if local_addr is None and remote_addr is None and not family:
            raise ValueError("unexpected address family: give local_addr, remote_addr or "
                             "family")
        if not family:
            addr = local_addr if local_addr is not None else remote_addr
            family = _stdsocket.AF_INET6 if ":" in str(addr[0]) else _stdsocket.AF_INET
        s = _PyxlioSocket(family, _stdsocket.SOCK_DGRAM, proto)
        try:
            if reuse_port:
                s.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
            if allow_broadcast:
                s.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_BROADCAST, 1)
            if local_addr is not None:
                s.bind(local_addr)
            if remote_addr is not None:
                s.connect(remote_addr)
        except BaseException:
            s.close()
            raise
    s.setblocking(False)
    protocol = protocol_factory()
    transport = BatchTransport(loop, s, protocol, remote_addr, max_packets, addresses,
                               timestamps)
    return transport, protocol
