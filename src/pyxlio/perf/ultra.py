"""The Ultra receive method (``--recv-method ultra``): TCP over XLIO's Ultra API.

Client (ping-pong and throughput) and TCP server run their sockets in a
:class:`pyxlio.ultra.PollGroup`: nothing moves unless the group is polled, and what comes in
is handed to callbacks, dispatched by ``PollGroup.poll()``:

- received TCP payload arrives as :class:`pyxlio.ultra.UltraBuffer` (XLIO's own buffer, no
  copy): it is cut into sockperf messages by the same :class:`~.wire.StreamFramer` as the other
  methods, each message handled through a memoryview of the buffer, then the buffer is returned
  to XLIO at once;
- sends are ``UltraSocket.send()``: XLIO copies the bytes at once (INLINE), so the client's
  one message buffer can be rewritten for the next message.  The client pushes each message
  (FLUSH); the server queues its replies in a DIRTY group and pushes them with one
  ``PollGroup.flush()`` after each poll (libxlio 3.70.2's poll_group.cpp: a group flush pushes
  the sockets made dirty only in a DIRTY group);
- the wait is the poll itself: busy-poll polls with no timeout, otherwise ``poll(TICK)``
  (pyxlio polls with the GIL released until an event or the tick, and checks signals).

What the client's loop needs of a socket (``send``, ``close``) is given by
:class:`UltraConnection`; the receiving side by :class:`UltraReceiver` (methods.py's contract).
The server listens, so it needs the 23-member Ultra API (libxlio 3.60+, the emulator's 3.60 and
3.61 layouts); the client works with the 16-member socket API too (3.30-3.51, 3.94).

This module imports ``socket`` lazily (pyxlio's allocator rule).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .cli import Config
from .methods import TICK, Handler, MethodError, Receiver
from .wire import MAX_MESSAGE, StreamFramer, WireError

if TYPE_CHECKING:
    from .log import Log
    from .server import ServerResult, StopFlag

__all__ = ["UltraConnection", "UltraReceiver", "run_server", "unavailable_reason"]

#: how long closing waits for XLIO's TERMINATED events
CLOSE_WAIT_S = 2.0
#: throughput: the client's sends poll the group once every this many sends (nothing else
#: polls there, and XLIO moves only when polled).  Not in ping-pong: a reply dispatched inside
#: send(), before the loop has stamped the request's send time, would count as unknown.
POLL_EVERY = 32


def _ultra() -> Any:
    try:
        from pyxlio import ultra
    except ImportError as exc:
        raise MethodError(f"--recv-method ultra needs the built pyxlio package ({exc})") from exc
    return ultra


def unavailable_reason(cfg: Config) -> str | None:
    """Why ``--recv-method ultra`` cannot run in this process (None: it can)."""
    try:
        ultra = _ultra()
    except MethodError as exc:
        return str(exc)
    if not ultra.available():
        return ("--recv-method ultra needs XLIO's Ultra API: run under libxlio 3.30+ "
                "(LD_PRELOAD) or with --emu (pyxlio's emulator); this process has none")
    if cfg.mode == "server" and ultra.kind() != ultra.UltraKind.ULTRA:
        return ("--recv-method ultra: the server needs listen, which XLIO's 16-member socket "
                f"API ({ultra.kind().name}: libxlio 3.30-3.51, 3.94) lacks: libxlio 3.60+ or "
                "the emulator's 3.60 / 3.61 layouts have it (--recv-method ultra works for the "
                "client here)")
    return None


class UltraReceiver(Receiver):
    """Receives on an :class:`UltraConnection`: ``recv(handler)`` polls its group once (busy:
    no wait; else up to a tick) and hands each whole message to ``handler``."""

    name = "ultra"

    def __init__(self, conn: UltraConnection, *, busy: bool, handler: Handler | None = None,
                 max_message: int = MAX_MESSAGE) -> None:
        super().__init__(conn, stream=True, connected=True, max_message=max_message)  # type: ignore[arg-type]
        self.conn = conn
        self.timeout = 0.0 if busy else TICK
        conn.receiver = self
        self.handler: Handler = handler or (lambda _view, _addr: None)
        self.done = 0

    def _message(self, view: memoryview) -> None:
        self.handler(view, None)
        self.done += 1

    def on_buffer(self, buf: Any) -> None:
        """The connection's on_receive: frame the buffer's bytes, then return it to XLIO."""
        framer = self.framer
        assert framer is not None
        with buf, memoryview(buf) as view:
            framer.feed(view, self._message)

    def _recv_one(self, handler: Handler) -> int:
        self.handler = handler
        self.done = 0
        conn = self.conn
        conn.group.poll(self.timeout)
        if self.done:
            return self.done
        return -1 if conn.ended else 0


class UltraConnection:
    """A connected Ultra socket in a poll group of its own, with the calls the client's loop
    makes on a socket (``send`` copies the bytes, XLIO's INLINE send, and pushes them)."""

    offloaded = True

    def __init__(self, cfg: Config) -> None:
        import socket

        from . import net

        ultra = _ultra()
        self.ultra = ultra
        self.events = ultra.SocketEvent
        self.state = "connecting"
        self.error = 0
        self.receiver: UltraReceiver | None = None
        self.sends = 0
        self.poll_every = POLL_EVERY if cfg.mode == "throughput" else 0
        self.group = ultra.PollGroup(on_event=self._on_event, on_receive=self._on_receive)
        try:
            self.sock = self.group.socket(net.family_of(cfg))
            net.apply_common_options(self.sock, cfg, stream=True)
            if cfg.rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.rcvbuf)
            if cfg.client_ip is not None or cfg.client_port is not None:
                any_ip = "::" if cfg.family_v6 else "0.0.0.0"
                self.sock.bind((cfg.client_ip or any_ip, cfg.client_port or 0))
            self.sock.connect((cfg.ip, cfg.port))
            deadline = time.monotonic() + cfg.connect_timeout_ms / 1000.0
            while self.state == "connecting" and time.monotonic() < deadline:
                self.group.poll(min(TICK, max(0.0, deadline - time.monotonic())))
            if self.state != "established":
                import errno
                import os

                if self.state == "connecting":
                    raise TimeoutError(errno.ETIMEDOUT, "connect timed out")
                code = self.error or errno.ECONNABORTED
                raise OSError(code, os.strerror(code))
        except BaseException:
            self.group.close()
            raise

    @property
    def ended(self) -> bool:
        """The peer closed, the connection failed or it is gone."""
        return self.state != "established"

    def _on_event(self, sock: Any, event: int, value: int) -> None:
        ev = self.events
        if event == ev.ESTABLISHED:
            self.state = "established"
        elif event == ev.ERROR:
            self.error = value
            self.state = "error"
        elif event == ev.CLOSED:
            self.state = "closed"
        elif event == ev.TERMINATED:
            self.state = "terminated"

    def _on_receive(self, sock: Any, buf: Any) -> None:
        receiver = self.receiver
        if receiver is None:  # nobody reads (throughput): the buffer goes back at once
            buf.release()
            return
        receiver.on_buffer(buf)

    def send(self, data: Any) -> int:
        """Send all of ``data`` (copied by XLIO at once) and push it out; returns its length."""
        self.sock.send(data)
        if self.poll_every:
            self.sends += 1
            if self.sends % self.poll_every == 0:
                self.group.poll(0.0)
        return len(data)

    def sendto(self, data: Any, address: Any) -> int:
        raise MethodError("an Ultra socket is connected: no sendto")

    def setblocking(self, flag: bool) -> None:
        """Accepted for the loop's sake: the wait is the group's poll (see UltraReceiver)."""

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        """Destroy the socket, wait (bounded) for its TERMINATED, destroy the group."""
        if self.group.closed:
            return
        try:
            if self.state != "terminated":
                self.sock.close()
                deadline = time.monotonic() + CLOSE_WAIT_S
                while self.state != "terminated" and time.monotonic() < deadline:
                    self.group.poll(0.05)
        finally:
            self.group.close()


# -- the server ------------------------------------------------------------------------------

class _Conn:
    __slots__ = ("framer", "handler", "peer", "sock")

    def __init__(self, sock: Any, peer: Any, framer: StreamFramer,
                 handler: Callable[[memoryview], None]) -> None:
        self.sock = sock
        self.peer = peer
        self.framer = framer
        self.handler = handler


def run_server(cfg: Config, stop: StopFlag, ready: Callable[[str, int], None] | None,
               progress: TextIO | None, log: Log) -> ServerResult:
    """The TCP server on the Ultra API: a DIRTY poll group, one listening socket, accepted
    connections framed and answered from the receive callbacks (see the module docstring)."""
    import socket

    from . import net
    from .server import (
        ServerResult,
        _announce,
        _Counters,
        _finish,
        _limits,
        _make_handler,
        _Progress,
        _provider,
    )

    ultra = _ultra()
    ev = ultra.SocketEvent
    c = _Counters()
    conns: dict[Any, _Conn] = {}  # connections being served
    live: set[Any] = set()  # accepted sockets XLIO has not TERMINATED yet
    closed_conns = [0]
    stamps = [0, 0]  # first, last message time
    clock = time.perf_counter_ns
    quiet = cfg.quiet or progress is None

    def on_accept(sock: Any, _listener: Any) -> None:
        live.add(sock)
        net.apply_common_options(sock, cfg, stream=True)
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ("?", len(conns))

        def reply(view: memoryview, _addr: Any) -> None:
            sock.send(view, flush=False)

        on_msg = _make_handler(c, reply, peer_key=peer, max_message=cfg.max_message)
        conns[sock] = _Conn(sock, peer, StreamFramer(cfg.max_message),
                            lambda view: on_msg(view, None))

    def on_receive(sock: Any, buf: Any) -> None:
        conn = conns.get(sock)
        with buf:
            if conn is None:
                return  # a connection being closed: its bytes are dropped
            try:
                with memoryview(buf) as view:
                    got = conn.framer.feed(view, conn.handler)
            except (WireError, OSError) as exc:
                # A bad length field: sockperf closes such a connection ("Message received was
                # larger than expected, message ignored."); a reply refused (the connection
                # failed meanwhile): the same, as the socket server does.
                if not quiet and progress is not None:
                    progress.write(f"pyxlio-perf: closing a connection: {exc}\n")
                if isinstance(exc, WireError):
                    closed_conns[0] += 1
                del conns[sock]
                sock.close()
                return
        if got:
            now = clock()
            if not stamps[0]:
                stamps[0] = now
            stamps[1] = now

    def on_event(sock: Any, event: int, value: int) -> None:
        if event in (ev.CLOSED, ev.ERROR):
            if conns.pop(sock, None) is not None:
                sock.close()
        elif event == ev.TERMINATED:
            conns.pop(sock, None)
            live.discard(sock)

    group = ultra.PollGroup(ultra.GroupFlag.DIRTY, on_event=on_event, on_receive=on_receive,
                            on_accept=on_accept)
    try:
        lsock = group.socket(net.family_of(cfg))
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((cfg.ip, cfg.port))
        lsock.listen()
        host, port = lsock.getsockname()[:2]
        res = ServerResult(protocol="tcp", recv_method=cfg.recv_method,
                           busy_poll=cfg.busy_poll, address=net.address_text((host, port)),
                           provider=_provider())
        res.offloaded = True
        t0 = clock()
        end, count = _limits(cfg, t0)
        prog = _Progress(cfg, progress, t0)
        timeout = 0.0 if cfg.busy_poll else TICK
        if ready is not None:
            ready(host, port)
        _announce(cfg, log, host, port, None)
        try:
            while not stop.is_set:
                group.poll(timeout)
                group.flush()
                now = clock()
                if count and c.received >= count:
                    res.stopped_by = "count"
                    break
                if end and now >= end:
                    res.stopped_by = "time"
                    break
                prog.tick(now, c)
            else:
                res.stopped_by = "signal"
        except KeyboardInterrupt:
            res.stopped_by = "signal"
        group.flush()
        for sock in list(conns):
            sock.close()
        conns.clear()
        lsock.close()
        deadline = time.monotonic() + CLOSE_WAIT_S
        while live and time.monotonic() < deadline:
            group.poll(0.05)
    finally:
        group.close()
    res.closed_conns = closed_conns[0]
    return _finish(res, c, t0, stamps[0], stamps[1])
