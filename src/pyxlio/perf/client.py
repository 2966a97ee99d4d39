"""The client modes: ping-pong, under-load, throughput and playback, as sockperf runs them.

Message ``seq`` (from 1) carries CLIENT, plus PONG when a reply is wanted: every message in
ping-pong, every ``--reply-every``-th in under-load and playback, none in throughput. The send
time of each reply-requesting message is kept in a preallocated ``array('q')`` indexed by
``seq // reply_every``, its reply's first arrival in a second one.

The run, as sockperf's:
  * warm-up messages (flag WARMUP, the server ignores them): two per multicast destination only,
    none on unicast or TCP, none with --dontwarmup; after --pre-warmup-wait seconds;
  * -t SEC: the whole run lasts SEC seconds. The measured window runs from 400 ms after the first
    reply request to 50 ms before the last send (--warmup/--cooldown change these), so it is
    about SEC - 0.45 s long;
  * ping-pong -n N: the run goes on until 8000 + N + 1000 replies came in order; the N in the
    middle are measured (--warmup-num/--cooldown-num change the 8000 and 1000). A run taking
    longer than 1.5 times the estimate made after the warm-up replies ends with an error, as
    sockperf's;
  * ping-pong sends a burst of -b messages, then waits for that many replies (at most
    --reply-timeout seconds, pyxlio-perf's: sockperf waits until the run ends); under-load and
    playback take replies as they come; throughput reads nothing;
  * --mps paces bursts: one burst every ``burst / mps`` seconds.

Statistics follow sockperf's: the samples are the reply requests sent inside the measured
window; one whose reply never came is dropped, one whose reply came before the previous
sample's is out of order (neither is a latency sample).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from . import methods, net
from .cli import Config
from .log import Log
from .stats import SockperfSummary, grow, sockperf_summary, zeros
from .wire import CLIENT, HEADER, HEADER_SIZE, PONG, WARMUP

if TYPE_CHECKING:
    import socket as _socket_mod

__all__ = ["ClientError", "ClientResult", "run_client"]

MIB = 1024.0 * 1024.0  # sockperf's "MB"
IP_PAYLOAD = 1500 - 28  # sockperf's DEFAULT_IP_PAYLOAD_SZ: fragments per message


class ClientError(RuntimeError):
    """The run could not go on (server down, connection closed...)."""


@dataclass
class ClientResult:
    """What a client run measured (times in seconds, latencies in usec)."""

    mode: str
    protocol: str
    recv_method: str
    busy_poll: bool
    msg_size: int
    mps: int | None
    reply_every: int
    burst: int = 1
    measurement: str = "time"  # "time" (-t), "number" (ping-pong -n), "count" (ul/tp -n)
    full_rtt: bool = False
    runtime_s: float = 0.0
    warmup_msec: int = 0
    warmup_num: int = 0
    sent: int = 0
    replies: int = 0
    valid_runtime_s: float = 0.0
    valid_sent: int = 0
    valid_received: int = 0
    dropped: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    ignored: int = 0
    dummy_sends: int = 0
    end: str = ""  # "timer", "packet number", "user", "playback"
    stats_note: str = ""  # sockperf's line when no statistics could be made
    msg_per_s: float = 0.0
    pkt_per_s: float = 0.0
    ip_frags: int = 1
    mb_per_s: float = 0.0
    estimate_s: float = 0.0
    cycle_waits: int = 0
    latency: SockperfSummary | None = None
    provider: str | None = None
    offloaded: bool | None = None
    banner: str = ""
    rtt_ns: list[int] = field(default_factory=list, repr=False)
    log_pairs: list[tuple[int, int]] = field(default_factory=list, repr=False)


class _State:
    """Counters touched per reply (slots: attribute access without a dict)."""

    __slots__ = ("dup", "ignored", "integrity_bad", "last_q", "prev_rx", "received", "sent_seq",
                 "valid")

    def __init__(self) -> None:
        self.received = 0
        self.dup = 0
        self.ignored = 0
        self.sent_seq = 0
        self.valid = 0  # in-order first replies (sockperf's counter for -n)
        self.prev_rx = 0
        self.last_q = 0
        self.integrity_bad = 0


def _open(cfg: Config) -> tuple[_socket_mod.socket, bool, Any]:
    """The client socket, whether it is connected, and the destination address."""
    import socket

    if cfg.recv_method == "ultra":  # an Ultra socket in a poll group of its own (ultra.py)
        from .ultra import UltraConnection

        dest = (cfg.ip, cfg.port)
        try:
            conn: Any = UltraConnection(cfg)
        except OSError as exc:
            raise ClientError(
                f"cannot connect to {net.address_text(dest)} over TCP (Ultra API): {exc}"
            ) from exc
        return conn, True, dest
    cls = methods.socket_class(cfg.recv_method)
    fam = net.family_of(cfg)
    dest = (cfg.ip, cfg.port)
    stype = socket.SOCK_STREAM if cfg.tcp else socket.SOCK_DGRAM
    sock = cls(fam, stype)
    try:
        if cfg.mc or cfg.uc_reuseaddr:
            if cfg.client_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        net.apply_common_options(sock, cfg, stream=cfg.tcp)
        if cfg.rcvbuf:
            net.set_rcvbuf(sock, cfg.rcvbuf)
        if cfg.mc:
            # sockperf's client joins the group (not in throughput): a sockperf server answers
            # a multicast request to the group, on the port the request came from.
            if cfg.mode != "throughput":
                net.join_multicast(sock, cfg.ip, cfg.mc_rx_if, cfg.mc_source)
            net.setup_multicast_sender(sock, cfg.mc_tx_if, cfg.mc_ttl, cfg.mc_loopback)
        if cfg.client_ip is not None or cfg.client_port is not None:
            any_ip = "::" if cfg.family_v6 else "0.0.0.0"
            sock.bind((cfg.client_ip or any_ip, cfg.client_port or 0))
        elif cfg.mc:
            sock.bind(("0.0.0.0", 0))
    except BaseException:
        sock.close()
        raise
    if cfg.tcp:
        try:
            sock.settimeout(cfg.connect_timeout_ms / 1000.0)
            sock.connect(dest)
        except OSError as exc:
            sock.close()
            raise ClientError(
                f"cannot connect to {net.address_text(dest)} over TCP: {exc}"
            ) from exc
        sock.settimeout(None)
        return sock, True, dest
    if cfg.mc:
        return sock, False, dest  # replies come from the group (or the server's address)
    sock.connect(dest)
    return sock, True, dest


def _provider() -> str | None:
    try:
        import pyxlio

        api = pyxlio.get_api()
    except Exception:  # pyxlio not built or not importable: plain kernel
        return None
    return None if api is None else str(api.provider)


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"{version('pyxlio')}-pyxlio-perf"
    except Exception:  # not installed: running from a source tree
        return "pyxlio-perf"


def load_playback(path: str) -> list[tuple[int, int]]:
    """sockperf's playback file: ``time, size`` lines ('#' comments, blank lines skipped).

    Returns (delay since the previous message in ns, size) pairs. As sockperf: times must not
    go back, each delay must be positive and each size in 14..64000.
    """
    out: list[tuple[int, int]] = []
    prev = 0.0
    try:
        lines = open(path, encoding="ascii", errors="replace").read().splitlines()
    except OSError as exc:
        raise ClientError(f"Can't open file: {path}: {exc}") from exc
    for no, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        t_text, sep, s_text = line.partition(",")
        try:
            t = float(t_text)
            size = int(s_text.strip().split()[0]) if sep and s_text.strip() else -1
        except (ValueError, IndexError):
            raise ClientError(f"can't read time & size, at line #{no}") from None
        if size < 0:
            raise ClientError(f"can't read time & size, at line #{no}")
        if prev > t:
            raise ClientError(f"out-of-order timestamp at line #{no}")
        delay = round((t - prev) * 1e9)
        if delay <= 0 or not HEADER_SIZE <= size <= 64000:
            raise ClientError(f"illegal time or size at line #{no}")
        out.append((delay, size))
        prev = t
    if not out:
        raise ClientError(f"no 'time, size' lines in {path}")
    return out


SLICE_NS = 50_000_000  # the compiled loop comes back to Python this often (progress, limits)


def fast_loop_applies(cfg: Config, connected: bool = True) -> bool:
    """Whether the compiled loop (``_loops.Client``) can run this client: ping-pong or
    under-load over a connected socket, receive method stdlib or copy (plain ``recv``), and none
    of playback, --dummy-send, --msg-range; not with --python-loop."""
    if cfg.python_loop or cfg.mode not in ("ping-pong", "under-load") or not connected:
        return False
    if cfg.recv_method not in ("stdlib", "copy") or cfg.dummy_send or cfg.msg_range:
        return False
    if cfg.data_file or cfg.reply_every < 1:
        return False
    return _loops() is not None


def _loops() -> Any:
    try:
        from . import _loops as mod
    except ImportError:  # not built (a source tree without build_ext): the Python loop runs
        return None
    return mod


def run_client(cfg: Config, log: Log | None = None,
               progress: TextIO | None = sys.stderr) -> ClientResult:
    """Run one client mode against a server and return its measurements.

    ``log`` receives sockperf's lines as the run goes (banner, warm-up, start, end).
    """
    import select

    log = log or Log(None, None if cfg.quiet else progress)
    playback = load_playback(cfg.data_file) if cfg.mode == "playback" and cfg.data_file else None
    net.set_affinity(cfg.sender_affinity or cfg.receiver_affinity)
    sock, connected, dest = _open(cfg)
    res = ClientResult(
        mode=cfg.mode, protocol=cfg.protocol, recv_method=cfg.recv_method,
        busy_poll=cfg.busy_poll, msg_size=cfg.msg_size, mps=cfg.mps,
        reply_every=cfg.reply_every if cfg.mode != "throughput" else 0, burst=cfg.burst,
        full_rtt=cfg.full_rtt, provider=_provider(),
    )
    res.offloaded = getattr(sock, "offloaded", None) if (
        cfg.uses_pyxlio or cfg.recv_method == "ultra") else False
    res.banner = net.banner_line(0, cfg.ip, cfg.port, cfg.tcp)
    try:
        return _run(cfg, sock, connected, dest, res, log, select.select, playback)
    finally:
        sock.close()


def _run(cfg: Config, sock: _socket_mod.socket, connected: bool, dest: Any, res: ClientResult,
         log: Log, select_fn: Any, playback: list[tuple[int, int]] | None) -> ClientResult:
    from .log import END, MAGENTA

    clock = time.perf_counter_ns
    mode = cfg.mode
    pingpong = mode == "ping-pong"
    stream_mode = mode == "throughput"
    want_replies = not stream_mode
    re_every = cfg.reply_every if want_replies else 0
    burst = cfg.burst
    busy = cfg.busy_poll
    stream = cfg.tcp
    number_based = pingpong and cfg.count is not None
    count_based = cfg.count is not None and not pingpong
    res.measurement = "number" if number_based else "count" if count_based else "time"
    max_size = cfg.msg_size + 0
    if playback is not None:
        max_size = max(s for _d, s in playback)

    log.msg(f"{MAGENTA}== version #{_version()} == {END}")
    log.raw("sockperf[CLIENT] send on:")
    if not stream_mode:
        log.msg("using recvfrom() to block on socket(s)")
    log.raw("\n" + res.banner + "\n")
    wait = "busy-poll" if busy else "blocking"
    via = res.provider or "kernel"
    off = {True: "offloaded", False: "not offloaded", None: "offload unknown"}[res.offloaded]
    fast_ok = playback is None and fast_loop_applies(cfg, connected)
    log.pyx(f"{cfg.protocol.upper()}, recv-method {cfg.recv_method} ({wait}), provider {via}, "
            f"socket {off}, {'compiled' if fast_ok else 'Python'} loop")

    # Sample arrays, preallocated from what the run should need; grown by doubling if not.
    if playback is not None:
        expect = len(playback)
    elif cfg.count is not None:
        expect = cfg.count + (cfg.warmup_num + cfg.cooldown_num if number_based else 0)
    elif cfg.mps:
        expect = int((cfg.time or 1) * cfg.mps) + 1024
    else:
        expect = 1 << 16
    cap = expect // re_every + 2 if re_every else 0
    tx = zeros("q", cap)
    rx = zeros("q", cap)
    st = _State()
    unpack = HEADER.unpack_from

    # The message: sockperf's payload is pseudo-random bytes after the header.
    rng = random.Random(0x50C)
    msg = bytearray(max(max_size, HEADER_SIZE))
    msg[HEADER_SIZE:] = rng.randbytes(len(msg) - HEADER_SIZE)
    mview = memoryview(msg)
    size = cfg.msg_size
    integrity = cfg.data_integrity

    def on_reply(view: memoryview, addr: Any) -> None:
        now = clock()
        n = len(view)
        if n < HEADER_SIZE:
            st.ignored += 1
            return
        seq, flags, length = unpack(view, 0)
        if flags & CLIENT or flags & WARMUP or seq > st.sent_seq:
            st.ignored += 1  # a request (ours looped back, another client's), a warm-up
            return
        q, r = divmod(seq, re_every) if re_every else (0, 1)
        if r or q >= len(tx) or tx[q] == 0:
            st.ignored += 1
            return
        if rx[q] != 0:
            st.dup += 1
            return
        rx[q] = now
        st.received += 1
        if now >= st.prev_rx:
            st.valid += 1
            st.prev_rx = now
        if integrity and (length != size or n < length
                          or view[HEADER_SIZE:length] != mview[HEADER_SIZE:length]):
            st.integrity_bad += 1

    # Sockets: ping-pong without busy-poll blocks in recv (SO_RCVTIMEO ticks); the rest use a
    # non-blocking socket and wait in select() or spin.
    blocking_pp = pingpong and not busy
    receiver: methods.Receiver
    if cfg.recv_method == "ultra":
        # The wait is the poll group's (a tick, or none with --busy-poll): see ultra.py.
        from .ultra import UltraReceiver

        receiver = UltraReceiver(sock, busy=not blocking_pp, handler=on_reply,  # type: ignore[arg-type]
                                 max_message=max(max_size, cfg.max_message))
    else:
        if blocking_pp:
            methods.set_rcvtimeo(sock, methods.TICK)
        else:
            sock.setblocking(False)
        receiver = methods.make_receiver(
            cfg.recv_method, sock, stream=stream, connected=connected, handler=on_reply,
            batch_size=cfg.batch_size, busy=not blocking_pp, bufsize=max(max_size, 2048),
            max_message=max(max_size, cfg.max_message),
        )
    recv = receiver.recv
    pack = HEADER.pack_into
    send_raw = sock.send if connected else None
    sendto = sock.sendto

    def take_replies() -> None:
        while True:
            try:
                got = recv(on_reply)
            except ConnectionRefusedError:  # UDP: ICMP port unreachable (no server yet)
                if stream:
                    raise
                return
            if got < 0:
                raise ClientError("A connection was forcibly closed by a peer")
            if got == 0:
                return

    def send_rest(n: int, n_bytes: int) -> None:
        """Finish a send that failed (-1: refused), would block (0) or was partial."""
        if n < 0:
            if stream:
                raise ClientError(
                    f"{net.address_text(dest)} refused the message: is the server running?")
            return  # UDP: an ICMP error for an earlier datagram; sockperf goes on too
        part = mview[:n_bytes]
        while n < n_bytes:  # would block, or partial: finish it, taking replies meanwhile
            try:
                if send_raw is not None:
                    n += send_raw(part[n:])
                else:
                    sendto(part, dest)
                    n = n_bytes
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except ConnectionRefusedError:
                return send_rest(-1, n_bytes)
            if want_replies and not blocking_pp:
                take_replies()
            select_fn([sock], [sock], [], 0.01)
        return None

    def send_msg(n_bytes: int) -> None:
        try:
            n = sendto(mview[:n_bytes], dest) if send_raw is None else send_raw(mview[:n_bytes])
        except (BlockingIOError, InterruptedError):
            n = 0
        except ConnectionRefusedError:
            n = -1
        if n != n_bytes:
            send_rest(n, n_bytes)

    # Dummy sends (XLIO's MSG_DUMMY: the send path is walked, nothing goes out).
    dummy_ns = 0
    dummy_call: Any = None
    if cfg.dummy_send:
        import pyxlio

        if getattr(sock, "offloaded", None) is not True:
            raise ClientError(
                "--dummy-send needs a socket offloaded by XLIO (run under libxlio or with "
                "--emu); this one is not offloaded"
            )
        dummy_ns = 1 if math.isinf(cfg.dummy_send) else max(1, int(1e9 / cfg.dummy_send))
        dummy_payload = bytes(size)
        if connected:
            dummy_call = lambda: sock.send_dummy(dummy_payload)  # type: ignore[attr-defined]  # noqa: E731
        else:
            flag = pyxlio.MSG_DUMMY
            dummy_call = lambda: sock.sendto(dummy_payload, flag, dest)  # noqa: E731
    next_dummy = 0

    def wait_until(deadline: int) -> None:
        """Pace: until ``deadline`` take replies (and do dummy sends, as sockperf's)."""
        nonlocal next_dummy
        while True:
            now = clock()
            if now >= deadline:
                return
            if dummy_ns:
                if now >= next_dummy:
                    dummy_call()
                    res.dummy_sends += 1
                    next_dummy = max(next_dummy + dummy_ns, now - 100 * dummy_ns)
                if want_replies and not blocking_pp:
                    take_replies()
                continue
            if busy:
                if want_replies and not blocking_pp:
                    take_replies()
                continue
            wait_s = (deadline - now) / 1e9
            if not want_replies or blocking_pp:
                if wait_s > 0.0002:
                    time.sleep(wait_s)
                continue
            if wait_s > 0 and select_fn([sock], [], [], wait_s)[0]:
                take_replies()

    # Warm-up: sockperf sends two WARMUP messages per multicast destination only.
    if cfg.pre_warmup_wait:
        time.sleep(cfg.pre_warmup_wait)
    if cfg.do_warmup:
        log.msg("Warmup stage (sending a few dummy messages)...")
        if cfg.mc:
            for _ in range(2):
                pack(msg, 0, 0, CLIENT | WARMUP, size)
                send_msg(size)
    log.msg("Starting test...")

    run_ns = int((cfg.time or 0) * 1e9)
    count = cfg.count
    stop_valid = (cfg.warmup_num + (count or 0) + cfg.cooldown_num) if number_based else 0
    reply_timeout_ns = int(cfg.reply_timeout * 1e9)
    stall_ns = max(10_000_000_000, 10 * reply_timeout_ns)
    interval = 1e9 * burst / cfg.mps if cfg.mps else 0.0
    lo_size = max(HEADER_SIZE, size - cfg.msg_range)
    progress_on = log.err is not None
    next_progress = 0
    last_progress_sent = 0
    expire_at = 0  # number-based: sockperf's "Time out in" limit
    seq = 0
    pb_index = 0
    out: Any = msg if size == len(msg) else mview[:size]
    out_size = size

    t0 = clock()
    end_at = t0 + run_ns if run_ns else 0
    next_send = float(t0)
    next_dummy = t0 + dummy_ns
    next_progress = t0 + 1_000_000_000
    fast: Any = None
    if fast_ok:
        fast = _loops().Client(
            sock.fileno(), stream=stream, busy=busy, blocking=blocking_pp, pingpong=pingpong,
            reply_every=re_every, burst=burst, size=size, msg=msg, tx=tx, rx=rx,
            reply_timeout=cfg.reply_timeout, integrity=integrity,
            bufsize=max(max_size, 2048), max_message=max(max_size, cfg.max_message),
            interval=interval, next_send=next_send)
    try:
        if fast is not None:
            _fast_main(fast, cfg, res, log, t0, end_at, stop_valid, stall_ns, tx, rx,
                       count_based=count_based, number_based=number_based, dest=dest)
        while fast is None:  # the Python loop (the compiled one ran above when it applies)
            now = clock()
            if end_at and now >= end_at:
                res.end = "timer"
                break
            if count_based and seq >= (count or 0):
                res.end = "packet number"
                break
            if number_based:
                if st.valid >= stop_valid:
                    res.end = "packet number"
                    break
                if not expire_at and st.valid >= cfg.warmup_num > 0:
                    sample_s = (now - t0) / 1e9
                    est = sample_s / cfg.warmup_num * stop_valid
                    res.estimate_s = est
                    log.msg(f"RunTime Estimate={est:.3f} sec, Time out in {1.5 * est:.3f} sec")
                    expire_at = t0 + int(max(1.5 * est, 1.0) * 1e9)
                if expire_at and now >= expire_at:
                    raise ClientError("Test ends uncompleted, number of packets requested "
                                      "taking too long (interrupted by timer)")
                # pyxlio-perf's guard (sockperf would wait forever): no reply for this long.
                if now - max(st.prev_rx, t0) > stall_ns:
                    raise ClientError(f"no reply for {stall_ns / 1e9:.0f} s before the "
                                      f"{stop_valid} replies of -n came: is the server down?")
            if playback is not None and pb_index >= len(playback):
                res.end = "playback"
                break
            if progress_on and now >= next_progress:
                elapsed = (now - t0) / 1e9
                if elapsed >= 3.0 or (cfg.time or 0) > 3.0:
                    log.progress(f"[{elapsed:6.1f} s] sent {seq} msgs "
                                 f"({seq - last_progress_sent} msg/s), replies {st.received}")
                last_progress_sent = seq
                next_progress += 1_000_000_000

            # Pacing (sockperf's cycle: one burst per burst/mps seconds), or playback's schedule.
            if playback is not None:
                delay, size = playback[pb_index]
                pb_index += 1
                next_send += delay
                if now < next_send:
                    wait_until(int(next_send))
                    res.cycle_waits += 1
            elif interval:
                next_send += interval
                if now < next_send:
                    wait_until(int(next_send))
                    res.cycle_waits += 1
                elif now - next_send > 1e8:  # more than 100 ms behind: do not burst to catch up
                    next_send = float(now)
                if end_at and clock() >= end_at:
                    res.end = "timer"
                    break
            if cfg.msg_range:
                size = rng.randint(lo_size, cfg.msg_size)
            if size != out_size:
                out = msg if size == len(msg) else mview[:size]
                out_size = size

            first_q = 0
            before = st.received
            for _ in range(burst):
                seq += 1
                st.sent_seq = seq
                pong = re_every and seq % re_every == 0
                pack(msg, 0, seq, CLIENT | PONG if pong else CLIENT, size)
                t_send = clock()
                if send_raw is not None:  # send_msg() inlined for the common case
                    try:
                        n = send_raw(out)
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    except ConnectionRefusedError:
                        n = -1
                    if n != size:
                        send_rest(n, size)
                else:
                    send_msg(size)
                if pong:
                    q = seq // re_every
                    if q >= len(tx):
                        grow(tx, q + 1)
                        grow(rx, q + 1)
                    tx[q] = t_send
                    if not first_q:
                        first_q = q
            if pingpong and first_q:
                # sockperf receives a burst's worth of replies before the next burst.
                deadline = clock() + reply_timeout_ns
                if end_at:
                    deadline = min(deadline, end_at)
                want = before + (seq // re_every - first_q + 1)
                while st.received < want:
                    try:
                        got = recv(on_reply)
                    except ConnectionRefusedError:  # UDP: ICMP port unreachable
                        if stream:
                            raise
                        got = 0
                        if not busy:
                            time.sleep(methods.TICK)
                    if got < 0:
                        raise ClientError("A connection was forcibly closed by a peer")
                    if got == 0 and clock() > deadline:
                        break
            elif want_replies and not blocking_pp:
                take_replies()
            if st.integrity_bad:
                raise ClientError("data integrity test failed")
            if dummy_ns:
                now = clock()
                if now >= next_dummy:
                    dummy_call()
                    res.dummy_sends += 1
                    next_dummy = max(next_dummy + dummy_ns, now - 100 * dummy_ns)
    except KeyboardInterrupt:
        res.end = "user"
    if fast is not None:
        seq = fast.seq
        _sync(st, fast, res)
    t_end = clock()
    if res.end == "user":
        log.msg("Test end (interrupted by user)")
    elif res.end == "timer":
        log.msg("Test end (interrupted by timer)")
    elif res.end == "packet number":
        log.msg("Test end (reached packet number)")
    # sockperf waits 0.1 s for the replies of the last sends (20 ms more in playback).
    if want_replies and fast is not None:
        fast.drain(clock() + 100_000_000)
        _sync(st, fast, res)
    elif want_replies:
        drain_end = clock() + (120_000_000 if playback is not None else 100_000_000)
        while clock() < drain_end:
            try:
                if blocking_pp or busy:
                    got = recv(on_reply)
                else:
                    got = recv(on_reply) if select_fn([sock], [], [], 0.01)[0] else 0
            except ConnectionRefusedError:
                if stream:
                    raise
                time.sleep(0.01)
                got = 0
            if got < 0:
                break
    receiver.close()
    if st.integrity_bad:
        raise ClientError("data integrity test failed")
    log.msg("Test ended")

    res.runtime_s = (t_end - t0) / 1e9
    res.sent = seq
    res.replies = st.received
    res.duplicated = st.dup
    res.ignored = st.ignored
    res.warmup_msec = round(cfg.warmup * 1000)
    res.warmup_num = cfg.warmup_num
    if stream_mode:
        _stream_stats(cfg, res)
    elif want_replies and seq:
        _latency_stats(cfg, res, tx, rx, number_based, playback is not None)
    return res


def _sync(st: _State, fast: Any, res: ClientResult) -> None:
    """The compiled loop's counters into the Python loop's (the rest of the run reads these)."""
    st.sent_seq = fast.seq
    st.received = fast.received
    st.dup = fast.dup
    st.ignored = fast.ignored
    st.valid = fast.valid
    st.prev_rx = fast.prev_rx
    st.integrity_bad = fast.integrity_bad
    res.cycle_waits = fast.cycle_waits


def _fast_main(fast: Any, cfg: Config, res: ClientResult, log: Log, t0: int, end_at: int,
               stop_valid: int, stall_ns: int, tx: Any, rx: Any, *, count_based: bool,
               number_based: bool, dest: Any) -> None:
    """The Python loop's outer part around the compiled bursts: limits, -n's estimate and
    time-out, progress lines. The bursts, pacing and replies run in ``fast.run`` slices."""
    loops = _loops()
    clock = time.perf_counter_ns
    progress_on = log.err is not None
    next_progress = t0 + 1_000_000_000
    last_progress_sent = 0
    expire_at = 0
    mark = cfg.warmup_num if number_based and cfg.warmup_num > 0 else 0
    max_seq = (cfg.count or 0) if count_based else -1
    while True:
        code = fast.run(clock() + SLICE_NS, end_at, max_seq, stop_valid if number_based else -1,
                        mark)
        now = clock()
        if code == loops.TIMER:
            res.end = "timer"
            return
        if code == loops.NUMBER:
            res.end = "packet number"
            return
        if code == loops.GROW:
            grow(tx, fast.need + 1)
            grow(rx, fast.need + 1)
            continue
        if code == loops.INTEGRITY:
            raise ClientError("data integrity test failed")
        if code == loops.CLOSED:
            raise ClientError("A connection was forcibly closed by a peer")
        if code == loops.REFUSED:
            raise ClientError(
                f"{net.address_text(dest)} refused the message: is the server running?")
        if number_based:
            if mark and fast.valid >= mark:
                sample_s = (now - t0) / 1e9
                est = sample_s / cfg.warmup_num * stop_valid
                res.estimate_s = est
                log.msg(f"RunTime Estimate={est:.3f} sec, Time out in {1.5 * est:.3f} sec")
                expire_at = t0 + int(max(1.5 * est, 1.0) * 1e9)
                mark = 0
            if expire_at and now >= expire_at:
                raise ClientError("Test ends uncompleted, number of packets requested "
                                  "taking too long (interrupted by timer)")
            if now - max(fast.prev_rx, t0) > stall_ns:
                raise ClientError(f"no reply for {stall_ns / 1e9:.0f} s before the "
                                  f"{stop_valid} replies of -n came: is the server down?")
        if progress_on and now >= next_progress:
            elapsed = (now - t0) / 1e9
            if elapsed >= 3.0 or (cfg.time or 0) > 3.0:
                log.progress(f"[{elapsed:6.1f} s] sent {fast.seq} msgs "
                             f"({fast.seq - last_progress_sent} msg/s), replies {fast.received}")
            last_progress_sent = fast.seq
            next_progress += 1_000_000_000


def _stream_stats(cfg: Config, res: ClientResult) -> None:
    """Throughput's figures as sockperf's: every message sent over the whole run."""
    if res.runtime_s <= 0:
        return
    res.ip_frags = (cfg.msg_size + IP_PAYLOAD - 1) // IP_PAYLOAD
    res.msg_per_s = float(int(0.5 + res.sent / res.runtime_s))
    res.pkt_per_s = res.msg_per_s * res.ip_frags
    res.mb_per_s = res.msg_per_s * cfg.msg_size / MIB


def _latency_stats(cfg: Config, res: ClientResult, tx: Any, rx: Any, number_based: bool,
                   playback: bool) -> None:
    """sockperf's client statistics over the reply requests of the measured window."""
    re_every = cfg.reply_every
    if res.replies == 0:
        return
    last = res.sent // re_every
    if last < 1:
        res.stats_note = "Test end before test start. Ending statistics early"
        return
    test_start = tx[1]
    test_end = tx[min(last, len(tx) - 1)]
    if not playback and not number_based:
        test_start += int(cfg.warmup * 1e9)
        test_end -= int(cfg.cooldown * 1e9)
    if test_end < test_start:
        res.stats_note = "Test end before test start. Ending statistics early"
        return
    start_i = 1 + (cfg.warmup_num if number_based else 0)
    end_seq = start_i + (cfg.count or 0) if number_based else 0
    counter = 0
    dropped = ooo = 0
    prev_rx = 0
    start_seq = end_valid_seq = 0
    start_time = end_time = 0
    rtts: list[int] = []
    pairs: list[tuple[int, int]] = []
    keep_pairs = cfg.full_log is not None
    n_tx = len(tx)
    i = start_i - 1
    while counter < res.replies:
        i += 1
        if i >= n_tx:
            break
        seq_no = i * re_every
        t = tx[i]
        if t > test_end or t == 0:
            break
        if number_based and seq_no >= end_seq:
            break
        if t < test_start:
            continue
        if start_seq == 0:
            start_seq = seq_no
            start_time = t
        r = rx[i]
        if r == 0:
            dropped += 1
            if end_time < t:
                end_valid_seq = seq_no
                end_time = t
            continue
        if r < prev_rx:
            ooo += 1
            continue
        if keep_pairs:
            pairs.append((t, r))
        end_valid_seq = seq_no
        end_time = r
        rtts.append(r - t)
        prev_rx = r
        counter += 1
    res.dropped = dropped
    res.out_of_order = ooo
    if not counter:
        res.stats_note = ("No valid observations found. Try tune parameters: "
                          "--time/--number-of-packets/--mps/--reply-every")
        return
    res.valid_runtime_s = (end_time - start_time) / 1e9
    res.valid_sent = end_valid_seq - start_seq + 1
    res.valid_received = counter
    res.rtt_ns = rtts
    res.log_pairs = pairs
    res.latency = sockperf_summary(rtts, full_rtt=cfg.full_rtt, ci_level=cfg.ci_level)
