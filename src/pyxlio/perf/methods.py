"""Receive methods: one small class per way of taking messages off a socket.

Each receiver wraps one socket and exposes ``recv(handler) -> int``: it takes what the socket
gives in one call (one datagram, one batch, or one chunk of a TCP stream), calls
``handler(view, address)`` once per whole sockperf message (``view`` is valid only during the
call, ``address`` is None for connected and TCP sockets) and returns how many messages it
handled: 0 when nothing came (timeout or would-block), -1 at the end of a TCP stream.
On a stream, ``recv`` goes on receiving while what came so far makes no whole message (a
receive may bring part of one), until a message is complete or nothing more is ready: 0 thus
always means "nothing more right now", never "some bytes but no message yet".

The socket's mode decides whether ``recv`` waits: blocking sockets here carry SO_RCVTIMEO (a
short tick, so stop flags are seen) instead of ``settimeout`` (which adds a poll() per call);
busy-poll sockets are non-blocking and ``recv`` returns 0 at once when nothing is ready.

Methods:
  stdlib    socket.socket.recv_into / recvfrom_into into one preallocated buffer
  copy      the same calls on pyxlio.socket.socket (XLIO's offloaded copy path)
  zcopy     pyxlio recvfrom_zcopy() -> Packet; parse through memoryview(pkt); release()
  batch     pyxlio recv_batch(N) -> PacketBatch; parse each of views(); release()
  callback  pyxlio set_recv_callback(fn): fn parses and handles each datagram inside the
            receive call (XLIO's receive path where XLIO offloads the socket, pyxlio's own
            elsewhere) and answers Verdict.DROP (consumed: no copy to the application); a
            datagram that needs the normal path (a server reply) gets Verdict.RECV and is handled
            when recv_batch returns it. A blocking client answers RECV for every datagram
            (already handled in the callback) so that its waiting receive call returns.
  ultra     TCP over XLIO's Ultra API (pyxlio.ultra): see ultra.py (UltraReceiver, made there
            with its connection, not by make_receiver)

This module imports ``socket`` lazily (pyxlio's allocator rule).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .wire import MAX_MESSAGE, StreamFramer

if TYPE_CHECKING:
    import socket as _socket_mod

__all__ = [
    "BatchReceiver",
    "CallbackReceiver",
    "CopyReceiver",
    "Handler",
    "Receiver",
    "ZcopyReceiver",
    "make_receiver",
    "pyxlio_socket_class",
    "set_rcvtimeo",
    "socket_class",
]

Handler = Callable[[memoryview, Any], object]
TICK = 0.1  # seconds a blocking receive waits before the caller looks at its clocks and flags


class MethodError(RuntimeError):
    """A receive method cannot run here (pyxlio not built, an unsupported combination...)."""


def pyxlio_socket_class() -> type[_socket_mod.socket]:
    """``pyxlio.socket.socket``, or :class:`MethodError` saying why it cannot be had."""
    try:
        from pyxlio.socket import socket as xsocket
    except ImportError as exc:  # not built, or built without the extension
        raise MethodError(
            f"the pyxlio receive methods need the built pyxlio package ({exc}); "
            "use --recv-method stdlib or build pyxlio (pip install -e .)"
        ) from exc
    return xsocket


def socket_class(method: str) -> type[_socket_mod.socket]:
    """The socket class a method uses: the stdlib's, or pyxlio's subclass."""
    if method == "stdlib":
        import socket

        return socket.socket
    return pyxlio_socket_class()


def set_rcvtimeo(sock: _socket_mod.socket, seconds: float) -> None:
    """Put ``sock`` in blocking mode with an SO_RCVTIMEO of ``seconds`` (0: wait forever)."""
    import socket

    sock.settimeout(None)
    sec = int(seconds)
    usec = round((seconds - sec) * 1e6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", sec, usec))


def copy_in(sock: _socket_mod.socket, buf: bytearray, connected: bool) -> tuple[int, Any]:
    """One datagram copied into `buf`: (length, source or None); (-1, None) if none came."""
    try:
        if connected:
            return sock.recv_into(buf), None
        return sock.recvfrom_into(buf)
    except (BlockingIOError, TimeoutError, InterruptedError):
        return -1, None


class Receiver:
    """Base: a socket, a TCP framer when the socket is a stream, ``recv(handler)``."""

    name = "?"

    def __init__(self, sock: _socket_mod.socket, *, stream: bool, connected: bool,
                 bufsize: int = MAX_MESSAGE, max_message: int = MAX_MESSAGE) -> None:
        self.sock = sock
        self.stream = stream
        self.connected = connected
        self.framer = StreamFramer(max_message) if stream else None
        self.bufsize = max(bufsize, 2048)

    def recv(self, handler: Handler) -> int:
        """Receive what one call gives; see the module docstring.  On a stream, a message
        whose start came is completed by further calls before returning."""
        while True:
            done = self._recv_one(handler)
            if done or not self.stream or self.framer is None or not self.framer.pending:
                return done

    def _recv_one(self, handler: Handler) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the receiver holds (not the socket)."""

    def _feed(self, view: memoryview, handler: Handler) -> int:
        framer = self.framer
        assert framer is not None
        return framer.feed(view, lambda m: handler(m, None))


class CopyReceiver(Receiver):
    """stdlib / copy: ``recv_into`` (or ``recvfrom_into``) into one preallocated buffer."""

    def __init__(self, sock: _socket_mod.socket, *, stream: bool, connected: bool,
                 bufsize: int = MAX_MESSAGE, name: str = "stdlib",
                 max_message: int = MAX_MESSAGE) -> None:
        super().__init__(sock, stream=stream, connected=connected, bufsize=bufsize,
                         max_message=max_message)
        self.name = name
        # TCP reads take as much as the kernel has: a bigger buffer means fewer calls.
        self.buf = bytearray(max(self.bufsize, 262144) if stream else self.bufsize)
        self.view = memoryview(self.buf)

    def recv(self, handler: Handler) -> int:
        if self.stream:
            return self._recv_stream(handler)
        n, addr = copy_in(self.sock, self.buf, self.connected)
        if n < 0:
            return 0
        handler(self.view[:n], addr)
        return 1

    def _recv_stream(self, handler: Handler) -> int:
        done = 0
        while not done:
            try:
                n = self.sock.recv_into(self.buf)
            except (BlockingIOError, TimeoutError, InterruptedError):
                return 0
            if n == 0:
                return -1
            done = self._feed(self.view[:n], handler)
        return done


class ZcopyReceiver(Receiver):
    """zcopy: ``recvfrom_zcopy()`` -> Packet, parsed through its memoryview, then released."""

    name = "zcopy"

    def _recv_one(self, handler: Handler) -> int:
        try:
            pkt = self.sock.recvfrom_zcopy()  # type: ignore[attr-defined]
        except (BlockingIOError, TimeoutError, InterruptedError):
            return 0
        if pkt is None:  # end of a TCP stream
            return -1
        try:
            if pkt.fragment_count == 1:
                with memoryview(pkt) as view:
                    return self._deliver(view, pkt.address, handler)
            # Several XLIO buffers: one joined copy (memoryview(pkt) exports one fragment).
            return self._deliver(memoryview(pkt.tobytes()), pkt.address, handler)
        finally:
            pkt.release()

    def _deliver(self, view: memoryview, addr: Any, handler: Handler) -> int:
        if self.stream:
            return self._feed(view, handler)
        handler(view, None if self.connected else addr)
        return 1


class BatchReceiver(Receiver):
    """batch: ``recv_batch(N)`` -> PacketBatch; each of ``views()`` handled; one release."""

    name = "batch"

    def __init__(self, sock: _socket_mod.socket, *, stream: bool, connected: bool,
                 bufsize: int = MAX_MESSAGE, batch_size: int = 64, busy: bool = False,
                 max_message: int = MAX_MESSAGE) -> None:
        super().__init__(sock, stream=stream, connected=connected, bufsize=bufsize,
                         max_message=max_message)
        self.batch_size = batch_size
        self.timeout: float | None = 0 if busy else TICK

    def _recv_one(self, handler: Handler) -> int:
        try:
            batch = self.sock.recv_batch(self.batch_size, timeout=self.timeout)  # type: ignore[attr-defined]
        except (BlockingIOError, TimeoutError, InterruptedError):
            return 0
        # Each view is released before the batch (a live view would make release() refuse).
        with batch:
            n = len(batch)
            if n == 0:
                return -1 if self.stream and batch.eof else 0
            if self.stream:
                done = 0
                for view in batch.views():
                    with view:
                        done += self._feed(view, handler)
                return done
            if self.connected:
                for view in batch.views():
                    with view:
                        handler(view, None)
            else:
                for view, addr in zip(batch.views(), batch.addresses):
                    with view:
                        handler(view, addr)
            return n


class CallbackReceiver(Receiver):
    """callback: datagrams handled inside ``set_recv_callback``'s function (see module doc)."""

    name = "callback"

    def __init__(self, sock: _socket_mod.socket, handler: Handler, *, connected: bool,
                 defer: Callable[[memoryview], bool] | None, wake: bool,
                 bufsize: int = MAX_MESSAGE) -> None:
        super().__init__(sock, stream=False, connected=connected, bufsize=bufsize)
        import pyxlio

        self._drop = pyxlio.Verdict.DROP
        self._recv = pyxlio.Verdict.RECV
        self.handler = handler
        self.defer = defer
        self.wake = wake
        self.in_callback = 0  # messages handled inside the callback
        self.errors: list[BaseException] = []
        self.buf = bytearray(self.bufsize)
        self.view = memoryview(self.buf)
        sock.set_recv_callback(self._callback)  # type: ignore[attr-defined]

    def _callback(self, view: memoryview, info: Any) -> Any:
        try:
            defer = self.defer
            if defer is not None and defer(view):
                return self._recv
            addr = None if self.connected else info.src
            self.handler(view, addr)
            self.in_callback += 1
            return self._recv if self.wake else self._drop
        except BaseException as exc:  # never let an exception cross XLIO's C frame
            self.errors.append(exc)
            return self._drop

    def recv(self, handler: Handler) -> int:
        # recv_batch runs the callback on every provider (XLIO inside its receive path,
        # pyxlio itself where XLIO does not); the datagrams answered RECV come back in it.
        before = self.in_callback
        batch = self.sock.recv_batch(64, addresses=not self.connected)  # type: ignore[attr-defined]
        try:
            if self.errors:
                raise self.errors.pop(0)
            done = self.in_callback - before
            defer = self.defer
            if defer is not None and len(batch):
                addrs = [None] * len(batch) if self.connected else batch.addresses
                for addr, view in zip(addrs, batch.views()):
                    try:
                        if defer(view):
                            handler(view, addr)
                            done += 1
                    finally:
                        view.release()
            return done
        finally:
            batch.release()

    def close(self) -> None:
        try:
            self.sock.set_recv_callback(None)  # type: ignore[attr-defined]
        except OSError:
            pass


def make_receiver(method: str, sock: _socket_mod.socket, *, stream: bool, connected: bool,
                  handler: Handler | None = None, batch_size: int = 64, busy: bool = False,
                  defer: Callable[[memoryview], bool] | None = None,
                  bufsize: int = MAX_MESSAGE, max_message: int = MAX_MESSAGE) -> Receiver:
    """The receiver for ``method`` on ``sock``.

    ``handler`` is needed up front by the callback method only (it runs inside XLIO's receive
    path); ``defer`` tells it which datagrams to hand to the normal path instead.
    """
    if method in ("stdlib", "copy"):
        return CopyReceiver(sock, stream=stream, connected=connected, bufsize=bufsize, name=method,
                            max_message=max_message)
    if method == "zcopy":
        return ZcopyReceiver(sock, stream=stream, connected=connected, bufsize=bufsize,
                             max_message=max_message)
    if method == "batch":
        return BatchReceiver(sock, stream=stream, connected=connected, bufsize=bufsize,
                             batch_size=batch_size, busy=busy, max_message=max_message)
    if method == "callback":
        if stream:
            raise MethodError("the callback receive method is for UDP only")
        if handler is None:
            raise MethodError("the callback receive method needs its handler up front")
        return CallbackReceiver(sock, handler, connected=connected, defer=defer,
                                wake=not busy, bufsize=bufsize)
    raise MethodError(f"unknown receive method {method!r}")
