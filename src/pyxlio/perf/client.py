"""The client modes: ping-pong, under-load and throughput.

One loop serves the three modes. Message ``seq`` (from 1) carries CLIENT, plus PONG when a
reply is wanted: every message in ping-pong, every ``--reply-every``-th in under-load, none in
throughput. The transmit time of each reply-requesting message is kept in a preallocated
``array('q')`` indexed by ``seq // reply_every``, its reply's arrival time in a second one, so a
message costs no Python object beyond the call frames.

The run has three phases: warm-up (``--warmup`` seconds), measurement (``-t`` seconds or ``-n``
messages) and cool-down (``--cooldown`` seconds). Only messages sent in the measurement phase
count; the others keep the path warm and flush the tail, as sockperf's 400 ms / 50 ms windows.

Waiting: ping-pong without --busy-poll blocks in the receive call (SO_RCVTIMEO ticks);
under-load and throughput pace their sends with select() (or by spinning with --busy-poll),
taking the replies that arrive meanwhile from a non-blocking socket.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from . import methods, net
from .cli import Config
from .stats import LatencyStats, grow, summarize_half_rtt, zeros
from .wire import CLIENT, HEADER, HEADER_SIZE, PONG, WARMUP, make_message

if TYPE_CHECKING:
    import socket as _socket_mod

__all__ = ["ClientError", "ClientResult", "run_client"]

MIB = 1024.0 * 1024.0  # sockperf's "MB"


class ClientError(RuntimeError):
    """The run could not go on (server down, connection closed...)."""


@dataclass
class ClientResult:
    """What a client run measured."""

    mode: str
    protocol: str
    recv_method: str
    busy_poll: bool
    msg_size: int
    mps: int | None
    reply_every: int
    runtime_s: float = 0.0
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    sent: int = 0
    replies: int = 0
    valid_runtime_s: float = 0.0
    valid_sent: int = 0
    valid_requests: int = 0
    valid_received: int = 0
    dropped: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    ignored: int = 0
    dummy_sends: int = 0
    msg_per_s: float = 0.0
    mb_per_s: float = 0.0
    latency: LatencyStats | None = None
    provider: str | None = None
    offloaded: bool | None = None
    rtt_ns: list[int] = field(default_factory=list, repr=False)


class _State:
    """Counters touched per reply (slots: attribute access without a dict)."""

    __slots__ = ("dup", "ignored", "last_idx", "ooo", "replies")

    def __init__(self) -> None:
        self.replies = 0
        self.dup = 0
        self.ooo = 0
        self.ignored = 0
        self.last_idx = 0


def _open(cfg: Config) -> tuple[_socket_mod.socket, bool, Any]:
    """The client socket, whether it is connected, and the destination address."""
    import socket

    cls = methods.socket_class(cfg.recv_method)
    fam = net.family_of(cfg)
    dest = (cfg.ip, cfg.port)
    if cfg.tcp:
        sock = cls(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5.0)
            sock.connect(dest)
        except OSError as exc:
            sock.close()
            raise ClientError(
                f"cannot connect to {net.address_text(dest)} over TCP: {exc}"
            ) from exc
        sock.settimeout(None)
        connected = True
    else:
        sock = cls(fam, socket.SOCK_DGRAM)
        if cfg.mc:
            net.setup_multicast_sender(sock, cfg.mc_tx_if, cfg.mc_ttl)
            sock.bind(("0.0.0.0", 0))
            connected = False  # replies come from the server's unicast address
        else:
            sock.connect(dest)
            connected = True
    if cfg.rcvbuf:
        net.set_rcvbuf(sock, cfg.rcvbuf)
    return sock, connected, dest


def _provider() -> str | None:
    try:
        import pyxlio

        api = pyxlio.get_api()
    except Exception:  # pyxlio not built or not importable: plain kernel
        return None
    return None if api is None else str(api.provider)


def run_client(cfg: Config, progress: TextIO | None = sys.stderr) -> ClientResult:
    """Run one client mode against a server and return its measurements."""
    import select

    sock, connected, dest = _open(cfg)
    res = ClientResult(
        mode=cfg.mode, protocol=cfg.protocol, recv_method=cfg.recv_method,
        busy_poll=cfg.busy_poll, msg_size=cfg.msg_size, mps=cfg.mps,
        reply_every=cfg.reply_every if cfg.mode != "throughput" else 0,
        warmup_s=cfg.warmup, cooldown_s=cfg.cooldown, provider=_provider(),
    )
    res.offloaded = getattr(sock, "offloaded", None) if cfg.uses_pyxlio else False
    try:
        return _run(cfg, sock, connected, dest, res, progress, select.select)
    finally:
        sock.close()


def _run(cfg: Config, sock: _socket_mod.socket, connected: bool, dest: Any, res: ClientResult,
         progress: TextIO | None, select_fn: Any) -> ClientResult:
    clock = time.perf_counter_ns
    mode = cfg.mode
    pingpong = mode == "ping-pong"
    want_replies = mode != "throughput"
    re_every = cfg.reply_every if want_replies else 0
    size = cfg.msg_size
    busy = cfg.busy_poll
    stream = cfg.tcp

    # Sample arrays, preallocated from what the run should need; grown by doubling if not.
    if cfg.count is not None:
        expect = cfg.count + (int((cfg.warmup + cfg.cooldown) * cfg.mps) if cfg.mps else 4096)
    elif cfg.mps:
        expect = int((cfg.warmup + (cfg.time or 0) + cfg.cooldown) * cfg.mps) + 1024
    else:
        expect = 1 << 16
    cap = expect // re_every + 2 if re_every else 0
    tx = zeros("q", cap)
    rx = zeros("q", cap)
    st = _State()
    unpack = HEADER.unpack_from

    def on_reply(view: memoryview, addr: Any) -> None:
        now = clock()
        if len(view) < HEADER_SIZE:
            st.ignored += 1
            return
        seq, flags, _length = unpack(view, 0)
        if flags & CLIENT or not flags & PONG:
            st.ignored += 1
            return
        q, r = divmod(seq, re_every) if re_every else (0, 1)
        if r or q >= len(tx) or tx[q] == 0:
            st.ignored += 1
            return
        if rx[q] != 0:
            st.dup += 1
            return
        if q < st.last_idx:
            st.ooo += 1
            rx[q] = -1  # arrived, but out of order: not a latency sample, not a drop
            return
        rx[q] = now
        st.last_idx = q
        st.replies += 1

    # Sockets: ping-pong without busy-poll blocks in recv (SO_RCVTIMEO ticks); the rest use a
    # non-blocking socket and wait in select() or spin.
    blocking_pp = pingpong and not busy
    if blocking_pp:
        methods.set_rcvtimeo(sock, methods.TICK)
    else:
        sock.setblocking(False)
    receiver = methods.make_receiver(
        cfg.recv_method, sock, stream=stream, connected=connected, handler=on_reply,
        batch_size=cfg.batch_size, busy=not blocking_pp, bufsize=max(size, 2048),
    )
    recv = receiver.recv

    msg = make_message(0, CLIENT, size)
    mview = memoryview(msg)
    pack = HEADER.pack_into
    send_raw = sock.send if connected else None
    sendto = sock.sendto

    def slow_send(sent: int) -> None:
        """Finish a send that would block or was partial, taking replies meanwhile."""
        while sent < size:
            try:
                if send_raw is not None:
                    sent += send_raw(mview[sent:])
                else:
                    sendto(msg, dest)
                    sent = size
                continue
            except (BlockingIOError, InterruptedError):
                pass
            if want_replies and recv(on_reply) < 0:
                raise ClientError("the server closed the connection")
            select_fn([sock], [sock], [], 0.01)

    def send_msg() -> None:
        try:
            n = send_raw(msg) if send_raw is not None else sendto(msg, dest)
        except (BlockingIOError, InterruptedError):
            n = 0
        except ConnectionRefusedError as exc:
            raise ClientError(
                f"{net.address_text(dest)} refused the message: is the server running?"
            ) from exc
        if n != size:
            slow_send(n)

    # Dummy sends (XLIO's MSG_DUMMY: the send path is walked, nothing goes out).
    dummy_ns = int(1e9 / cfg.dummy_send) if cfg.dummy_send else 0
    next_dummy = 0
    dummy_call: Any = None
    if dummy_ns:
        import pyxlio

        if getattr(sock, "offloaded", None) is not True:
            raise ClientError(
                "--dummy-send needs a socket offloaded by XLIO (run under libxlio or with "
                "--emu); this one is not offloaded"
            )
        dummy_payload = bytes(size)
        if connected:
            dummy_call = lambda: sock.send_dummy(dummy_payload)  # type: ignore[attr-defined]  # noqa: E731
        else:
            flag = pyxlio.MSG_DUMMY
            dummy_call = lambda: sock.sendto(dummy_payload, flag, dest)  # noqa: E731

    def do_dummies(now: int) -> None:
        nonlocal next_dummy
        while now >= next_dummy:
            dummy_call()
            res.dummy_sends += 1
            next_dummy += dummy_ns
            if now - next_dummy > 100 * dummy_ns:  # fell far behind: do not burst
                next_dummy = now + dummy_ns

    def wait_until(deadline: int) -> None:
        """Pace: until ``deadline`` take replies and do dummy sends."""
        while True:
            now = clock()
            if now >= deadline:
                return
            if dummy_ns and now >= next_dummy:
                do_dummies(now)
            if busy:
                if want_replies and recv(on_reply) < 0:
                    raise ClientError("the server closed the connection")
                continue
            until = deadline if not dummy_ns else min(deadline, next_dummy)
            wait_s = (until - now) / 1e9
            if not want_replies:
                if wait_s > 0.0002:
                    time.sleep(wait_s)
                continue
            if wait_s > 0 and select_fn([sock], [], [], wait_s)[0]:
                while True:
                    got = recv(on_reply)
                    if got < 0:
                        raise ClientError("the server closed the connection")
                    if got == 0:
                        break

    # Warm-up messages as sockperf sends them before a run: the server ignores them.
    for _ in range(2):
        pack(msg, 0, 0, CLIENT | WARMUP, size)
        send_msg()

    warm_ns = int(cfg.warmup * 1e9)
    cool_ns = int(cfg.cooldown * 1e9)
    meas_ns = int(cfg.time * 1e9) if cfg.time is not None else 0
    count = cfg.count
    reply_timeout_ns = int(cfg.reply_timeout * 1e9)
    interval = 1e9 / cfg.mps if cfg.mps else 0.0

    t0 = clock()
    phase = 0 if warm_ns > 0 else 1
    meas_start = t0 if phase == 1 else 0
    phase_end = t0 + warm_ns if phase == 0 else t0 + meas_ns
    meas_end = 0
    seq = 0
    first_meas = 0
    last_meas = 0
    meas_sent = 0
    next_send = float(t0)
    next_dummy = t0 + dummy_ns
    show_progress = progress is not None and not cfg.quiet
    long_run = cfg.warmup + (cfg.time or 0) + cfg.cooldown > 3.0
    next_progress = t0 + 1_000_000_000
    last_progress_sent = 0

    while True:
        now = clock()
        # Phases.
        if phase == 0 and now >= phase_end:
            phase = 1
            meas_start = now
            phase_end = now + meas_ns
        if phase == 1 and (meas_sent >= count if count is not None else now >= phase_end):
            phase = 2
            meas_end = now
            phase_end = now + cool_ns
        if phase == 2 and now >= phase_end:
            break
        if show_progress and now >= next_progress:
            elapsed = (now - t0) / 1e9
            if long_run or elapsed >= 3.0:
                progress.write(  # type: ignore[union-attr]
                    f"pyxlio-perf: [{elapsed:6.1f} s] sent {seq} msgs "
                    f"({seq - last_progress_sent} msg/s), replies {st.replies}\n"
                )
                progress.flush()  # type: ignore[union-attr]
            last_progress_sent = seq
            next_progress += 1_000_000_000
        # Pacing.
        if interval:
            if now < next_send:
                wait_until(int(next_send))
                continue
            next_send += interval
            if now - next_send > 1e8:  # more than 100 ms behind: do not burst to catch up
                next_send = now + interval

        seq += 1
        pong = re_every and seq % re_every == 0
        flags = CLIENT | PONG if pong else CLIENT
        pack(msg, 0, seq, flags, size)
        t_send = clock()
        if send_raw is not None:   # send_msg() inlined: a call is ~60 ns of a few-µs round trip
            try:
                n = send_raw(msg)
            except (BlockingIOError, InterruptedError):
                n = 0
            except ConnectionRefusedError as exc:
                raise ClientError(
                    f"{net.address_text(dest)} refused the message: is the server running?"
                ) from exc
            if n != size:
                slow_send(n)
        else:
            send_msg()
        if phase == 1:
            meas_sent += 1
            if first_meas == 0:
                first_meas = seq
            last_meas = seq
        if pong:
            q = seq // re_every
            if q >= len(tx):
                grow(tx, q + 1)
                grow(rx, q + 1)
            tx[q] = t_send
            if pingpong:
                deadline = t_send + reply_timeout_ns
                while rx[q] == 0:
                    got = recv(on_reply)
                    if got < 0:
                        raise ClientError("the server closed the connection")
                    if got == 0 and clock() > deadline:
                        break
        if want_replies and not pingpong:
            while True:  # take what is already there, without waiting
                got = recv(on_reply)
                if got < 0:
                    raise ClientError("the server closed the connection")
                if got == 0:
                    break
        if dummy_ns:
            now = clock()
            if now >= next_dummy:
                do_dummies(now)

    t_end = clock()
    if meas_end == 0:
        meas_end = t_end
    # Drain the replies still in flight for measured messages (they come back in order, so
    # waiting for the last one is enough).
    if want_replies and last_meas:
        hi = last_meas // re_every
        deadline = t_end + reply_timeout_ns
        while rx[hi] == 0 and clock() < deadline:
            if not blocking_pp and not busy:
                select_fn([sock], [], [], 0.05)
            if recv(on_reply) < 0:
                break
    receiver.close()

    res.runtime_s = (t_end - t0) / 1e9
    res.sent = seq
    res.replies = st.replies
    res.duplicated = st.dup
    res.out_of_order = st.ooo
    res.ignored = st.ignored
    res.valid_runtime_s = (meas_end - meas_start) / 1e9 if meas_start else 0.0
    res.valid_sent = meas_sent
    if res.valid_runtime_s > 0:
        res.msg_per_s = meas_sent / res.valid_runtime_s
        res.mb_per_s = res.msg_per_s * size / MIB
    if want_replies and first_meas:
        lo = -(-first_meas // re_every)
        hi = last_meas // re_every
        rtts: list[int] = []
        dropped = 0
        for i in range(lo, hi + 1):
            r = rx[i]
            if r > 0:
                rtts.append(r - tx[i])
            elif r == 0:
                dropped += 1
        res.valid_requests = max(0, hi - lo + 1)
        res.valid_received = len(rtts)
        res.dropped = dropped
        res.rtt_ns = rtts
        res.latency = summarize_half_rtt(rtts)
    return res
