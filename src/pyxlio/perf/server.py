"""The server mode: answer sockperf clients, count what arrives.

As sockperf's server: a message with CLIENT set is counted unless it is a warm-up one; when it
also has PONG set, the same message goes back with CLIENT cleared (not with --dont-reply): to
its sender, or, for a message that came to a multicast group, to the group on the sender's port
(sockperf's rule; --force-unicast-reply sends it to the sender). Messages without CLIENT are
ignored. Over TCP the stream is cut into messages by the header's length field; a length above
the server's largest message (max(65507, -m), as sockperf's) closes that connection, as
sockperf's server does. Sequence numbers give, per peer, the dropped / duplicated /
out-of-order counts (pyxlio-perf's report lines).

The server runs until SIGINT/SIGTERM, as sockperf's; pyxlio-perf's -t / -n stop it after so
many seconds or counted messages.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TextIO

from . import methods, net
from .cli import Config
from .log import Log
from .stats import SequenceTracker
from .wire import CLIENT, HEADER, HEADER_SIZE, PONG, WARMUP, WireError

if TYPE_CHECKING:
    import socket as _socket_mod

__all__ = ["ServerResult", "StopFlag", "run_server"]

MIB = 1024.0 * 1024.0


class StopFlag:
    """Set by signal handlers or another thread; the server loop looks at it every tick."""

    __slots__ = ("is_set",)

    def __init__(self) -> None:
        self.is_set = False

    def set(self, *_args: Any) -> None:
        """Ask the loop to stop (usable as a signal handler)."""
        self.is_set = True


@dataclass
class ServerResult:
    """What a server run saw."""

    protocol: str
    recv_method: str
    busy_poll: bool
    address: str
    runtime_s: float = 0.0
    active_s: float = 0.0
    received: int = 0
    bytes: int = 0
    warmup: int = 0
    replies: int = 0
    ignored: int = 0
    malformed: int = 0
    peers: int = 0
    dropped: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    msg_per_s: float = 0.0
    mb_per_s: float = 0.0
    provider: str | None = None
    offloaded: bool | None = None
    stopped_by: str = ""
    closed_conns: int = 0


class _Counters:
    __slots__ = ("bytes", "ignored", "last_addr", "last_tracker", "malformed", "received",
                 "replies", "trackers", "warmup")

    def __init__(self) -> None:
        self.received = 0
        self.bytes = 0
        self.warmup = 0
        self.replies = 0
        self.ignored = 0
        self.malformed = 0
        self.trackers: dict[Any, SequenceTracker] = {}
        self.last_addr: Any = None
        self.last_tracker: SequenceTracker | None = None


def _make_handler(c: _Counters, reply: Callable[[memoryview, Any], object],
                  peer_key: Any = None, *, max_message: int = 65507, dont_reply: bool = False,
                  group: str | None = None) -> Callable[[memoryview, Any], None]:
    """The per-message function: count, track sequence numbers, answer pong requests
    (to ``(group, sender's port)`` when ``group`` is given)."""
    unpack = HEADER.unpack_from
    pack = HEADER.pack_into
    rbuf = bytearray(max_message)
    rview = memoryview(rbuf)

    def on_msg(view: memoryview, addr: Any) -> None:
        n = len(view)
        if n < HEADER_SIZE:
            c.malformed += 1
            return
        seq, flags, length = unpack(view, 0)
        if not flags & CLIENT:
            c.ignored += 1
            return
        if flags & WARMUP:
            c.warmup += 1
            return
        if length > n or length < HEADER_SIZE:
            c.malformed += 1
            return
        c.received += 1
        c.bytes += n
        key = addr if peer_key is None else peer_key
        tracker = c.last_tracker
        if tracker is None or key != c.last_addr:
            tracker = c.trackers.get(key)
            if tracker is None:
                tracker = c.trackers[key] = SequenceTracker()
            c.last_addr = key
            c.last_tracker = tracker
        tracker.add(seq)
        if flags & PONG and not dont_reply:
            rbuf[:length] = view[:length]
            pack(rbuf, 0, seq, flags & ~CLIENT, length)
            reply(rview[:length], addr if group is None else (group, addr[1]))
            c.replies += 1

    return on_msg


def _provider() -> str | None:
    try:
        import pyxlio

        api = pyxlio.get_api()
    except Exception:  # pyxlio not built: plain kernel
        return None
    return None if api is None else str(api.provider)


def _bind_udp(cfg: Config) -> _socket_mod.socket:
    import socket

    cls = methods.socket_class(cfg.recv_method)
    sock = cls(net.family_of(cfg), socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        net.apply_common_options(sock, cfg, stream=False)
        if cfg.rcvbuf:
            net.set_rcvbuf(sock, cfg.rcvbuf)
        sock.bind((cfg.ip, cfg.port))
        if cfg.mc:
            net.join_multicast(sock, cfg.ip, cfg.mc_rx_if, cfg.mc_source)
            net.setup_multicast_sender(sock, cfg.mc_tx_if, cfg.mc_ttl, cfg.mc_loopback)
    except BaseException:
        sock.close()
        raise
    return sock


def _version() -> str:
    from .client import _version as v

    return v()


def _announce(cfg: Config, log: Log, host: str, port: int,
              warmup: Callable[[], None] | None) -> None:
    """sockperf's server banner, then its warm-up (multicast only) and its 'using' line."""
    import threading

    from .log import END, MAGENTA, PREFIX

    log.msg(f"{MAGENTA}== version #{_version()} == {END}")
    log.raw(PREFIX + "[SERVER] listen on:")
    log.raw("\n" + net.banner_line(0, host, port, cfg.tcp) + "\n")
    if cfg.pre_warmup_wait:
        time.sleep(cfg.pre_warmup_wait)
    if cfg.do_warmup:
        log.msg("Warmup stage (sending a few dummy messages)...")
        if warmup is not None:
            warmup()
    log.msg(f"[tid {threading.get_native_id()}] using recvfrom() to block on socket(s)")


def run_server(cfg: Config, stop: StopFlag | None = None,
               ready: Callable[[str, int], None] | None = None,
               progress: TextIO | None = sys.stderr, log: Log | None = None) -> ServerResult:
    """Serve until ``stop`` (or pyxlio-perf's ``-t``/``-n``); ``ready(host, port)`` is called
    once listening. ``log`` receives sockperf's banner lines."""
    stop = stop or StopFlag()
    log = log or Log(None)
    net.set_affinity(cfg.cpu_affinity)
    if cfg.tcp and cfg.recv_method == "ultra":
        from . import ultra

        return ultra.run_server(cfg, stop, ready, progress, log)
    if cfg.tcp:
        return _run_tcp(cfg, stop, ready, progress, log)
    return _run_udp(cfg, stop, ready, progress, log)


def _limits(cfg: Config, t0: int) -> tuple[int, int]:
    end = t0 + int(cfg.time * 1e9) if cfg.time is not None else 0
    return end, cfg.count or 0


def _finish(res: ServerResult, c: _Counters, t0: int, first: int, last: int) -> ServerResult:
    now = time.perf_counter_ns()
    res.runtime_s = (now - t0) / 1e9
    res.active_s = (last - first) / 1e9 if first else 0.0
    res.received = c.received
    res.bytes = c.bytes
    res.warmup = c.warmup
    res.replies = c.replies
    res.ignored = c.ignored
    res.malformed = c.malformed
    res.peers = len(c.trackers)
    for t in c.trackers.values():
        res.dropped += t.dropped
        res.duplicated += t.duplicated
        res.out_of_order += t.out_of_order
    if res.active_s > 0:
        res.msg_per_s = c.received / res.active_s
        res.mb_per_s = c.bytes / res.active_s / MIB
    return res


class _Progress:
    def __init__(self, cfg: Config, out: TextIO | None, t0: int) -> None:
        self.out = None if cfg.quiet else out
        self.next = t0 + 1_000_000_000
        self.t0 = t0
        self.last = 0

    def tick(self, now: int, c: _Counters) -> None:
        if self.out is None or now < self.next:
            return
        self.next += 1_000_000_000
        if c.received != self.last:
            self.out.write(
                f"pyxlio-perf: [{(now - self.t0) / 1e9:6.1f} s] received {c.received} msgs "
                f"({c.received - self.last} msg/s), replies {c.replies}\n"
            )
            self.out.flush()
            self.last = c.received


SLICE_NS = 50_000_000  # the compiled loop comes back to Python this often (stop flag, progress)


def fast_loop_applies(cfg: Config) -> bool:
    """Whether the compiled loop (``_loops``) serves: receive method stdlib or copy (plain
    ``recv``/``recvfrom``), not --python-loop, and the extension built."""
    if cfg.python_loop or cfg.recv_method not in ("stdlib", "copy"):
        return False
    if cfg.mc and cfg.family_v6:
        return False
    try:
        from . import _loops  # noqa: F401
    except ImportError:  # not built: the Python loop serves
        return False
    return True


def _sync_counts(c: _Counters, counts: Any) -> None:
    c.received = counts.received
    c.bytes = counts.bytes
    c.warmup = counts.warmup
    c.replies = counts.replies
    c.ignored = counts.ignored
    c.malformed = counts.malformed


def _run_udp(cfg: Config, stop: StopFlag, ready: Callable[[str, int], None] | None,
             progress: TextIO | None, log: Log) -> ServerResult:
    sock = _bind_udp(cfg)
    host, port = sock.getsockname()[:2]
    res = ServerResult(protocol="udp", recv_method=cfg.recv_method, busy_poll=cfg.busy_poll,
                       address=net.address_text((host, port)), provider=_provider())
    res.offloaded = getattr(sock, "offloaded", None) if cfg.uses_pyxlio else False
    c = _Counters()
    sendto = sock.sendto

    def reply(view: memoryview, addr: Any) -> None:
        try:
            sendto(view, addr)
        except (BlockingIOError, InterruptedError):
            pass  # the reply is lost, as a full socket buffer would lose it in sockperf

    group = cfg.ip if cfg.mc and not cfg.force_unicast_reply else None
    on_msg = _make_handler(c, reply, max_message=cfg.max_message, dont_reply=cfg.dont_reply,
                           group=group)
    if cfg.busy_poll:
        sock.setblocking(False)
    else:
        methods.set_rcvtimeo(sock, methods.TICK)

    def needs_reply(view: memoryview) -> bool:
        if len(view) < HEADER_SIZE:
            return False
        flags: int = HEADER.unpack_from(view, 0)[1]
        return flags & (CLIENT | PONG | WARMUP) == CLIENT | PONG

    receiver = methods.make_receiver(cfg.recv_method, sock, stream=False, connected=False,
                                     handler=on_msg, batch_size=cfg.batch_size,
                                     busy=cfg.busy_poll, defer=needs_reply,
                                     bufsize=cfg.max_message, max_message=cfg.max_message)

    def warmup() -> None:
        # sockperf's server sends two WARMUP messages (no CLIENT flag) to each multicast group.
        if cfg.mc:
            wmsg = bytearray(HEADER_SIZE)
            HEADER.pack_into(wmsg, 0, 0, WARMUP, HEADER_SIZE)
            for _ in range(2):
                try:
                    sock.sendto(wmsg, (cfg.ip, port))
                except OSError:
                    pass

    recv = receiver.recv
    clock = time.perf_counter_ns
    t0 = clock()
    end, count = _limits(cfg, t0)
    prog = _Progress(cfg, progress, t0)
    first = last = 0
    fast: Any = None
    if fast_loop_applies(cfg):
        import socket

        from . import _loops

        fast = _loops.UdpServer(sock.fileno(), max(cfg.max_message, 2048), c.trackers,
                                SequenceTracker, dont_reply=cfg.dont_reply,
                                group=None if group is None else socket.inet_aton(group),
                                busy=cfg.busy_poll)
    if ready is not None:
        ready(host, port)
    _announce(cfg, log, host, port, warmup)
    try:
        if fast is not None:
            while not stop.is_set:
                code = fast.run(clock() + SLICE_NS, end, count)
                if code == _loops.NUMBER:
                    res.stopped_by = "count"
                    break
                if code == _loops.TIMER:
                    res.stopped_by = "time"
                    break
                _sync_counts(c, fast.counts)
                prog.tick(clock(), c)
            else:
                res.stopped_by = "signal"
        else:
            while not stop.is_set:
                got = recv(on_msg)
                now = clock()
                if got > 0:
                    if not first:
                        first = now
                    last = now
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
    finally:
        if fast is not None:
            _sync_counts(c, fast.counts)
            first, last = fast.first, fast.last
        receiver.close()
        sock.close()
    return _finish(res, c, t0, first, last)


def _send_all(conn: Any, view: memoryview) -> None:
    """``sendall`` for a non-blocking socket: wait for room when the kernel has none."""
    import select

    sent = 0
    n = len(view)
    while sent < n:
        try:
            sent += conn.send(view[sent:])
        except (BlockingIOError, InterruptedError):
            select.select([], [conn], [], 1.0)


def _run_tcp(cfg: Config, stop: StopFlag, ready: Callable[[str, int], None] | None,
             progress: TextIO | None, log: Log) -> ServerResult:
    import selectors
    import socket

    cls = methods.socket_class(cfg.recv_method)
    lsock = cls(net.family_of(cfg), socket.SOCK_STREAM)
    try:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        net.apply_common_options(lsock, cfg, stream=True)
        lsock.bind((cfg.ip, cfg.port))
        lsock.listen(64)
        lsock.setblocking(False)
    except BaseException:
        lsock.close()
        raise
    host, port = lsock.getsockname()[:2]
    res = ServerResult(protocol="tcp", recv_method=cfg.recv_method, busy_poll=cfg.busy_poll,
                       address=net.address_text((host, port)), provider=_provider())
    res.offloaded = getattr(lsock, "offloaded", None) if cfg.uses_pyxlio else False
    c = _Counters()
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    conns: dict[int, tuple[Any, Any, Callable[[memoryview, Any], None] | None]] = {}
    fast_counts: Any = None
    if fast_loop_applies(cfg):
        from . import _loops

        fast_counts = _loops.ServerCounts()
    clock = time.perf_counter_ns
    t0 = clock()
    end, count = _limits(cfg, t0)
    prog = _Progress(cfg, progress, t0)
    first = last = 0
    timeout = 0.0 if cfg.busy_poll else methods.TICK

    def accept() -> None:
        try:
            conn, peer = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not isinstance(conn, cls):  # keep pyxlio's class on accepted sockets
            conn = cls(fileno=conn.detach())
        net.apply_common_options(conn, cfg, stream=True)
        # Non-blocking: each readiness is drained until the socket would block, because a
        # receive may leave data in user space (pyxlio keeps the other TCP chunks a zero-copy
        # receive brought) where select/epoll cannot see it.
        conn.setblocking(False)
        receiver: Any
        handler: Any = None
        if fast_counts is not None:
            # The compiled connection: receive until it would block, frame, count, answer.
            receiver = _loops.StreamConn(conn.fileno(), cfg.max_message, fast_counts, c.trackers,
                                         SequenceTracker, peer)
        else:
            receiver = methods.make_receiver(cfg.recv_method, conn, stream=True,
                                             connected=True, batch_size=cfg.batch_size,
                                             busy=True, max_message=cfg.max_message)
            handler = _make_handler(c, lambda view, _addr: _send_all(conn, view),
                                    peer_key=peer, max_message=cfg.max_message)
        conns[conn.fileno()] = (conn, receiver, handler)
        sel.register(conn, selectors.EVENT_READ, conn.fileno())

    def close_conn(fd: int) -> None:
        conn, receiver, handler = conns.pop(fd)
        sel.unregister(conn)
        if handler is not None:
            receiver.close()
        conn.close()

    if ready is not None:
        ready(host, port)
    _announce(cfg, log, host, port, None)
    try:
        while not stop.is_set:
            for key, _ev in sel.select(timeout):
                if key.data is None:
                    accept()
                    continue
                _conn, receiver, handler = conns[key.data]
                try:
                    got = 0
                    if handler is None:  # compiled: drains until the socket would block
                        got = receiver.drain()
                    else:
                        while True:
                            step = receiver.recv(handler)
                            if step <= 0:
                                got = step if step < 0 else got
                                break
                            got += step
                except (ConnectionError, ValueError) as exc:
                    # sockperf closes the connection too ("Message received was larger than
                    # expected, message ignored." for a length above its largest message).
                    if progress is not None and not cfg.quiet:
                        progress.write(f"pyxlio-perf: closing a connection: {exc}\n")
                    if isinstance(exc, WireError):
                        res.closed_conns += 1
                    got = -1
                if got < 0:
                    close_conn(key.data)
                elif got > 0:
                    now = clock()
                    if not first:
                        first = now
                    last = now
            now = clock()
            if fast_counts is not None:
                _sync_counts(c, fast_counts)
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
    finally:
        for fd in list(conns):
            close_conn(fd)
        sel.close()
        lsock.close()
        if fast_counts is not None:
            _sync_counts(c, fast_counts)
    return _finish(res, c, t0, first, last)
