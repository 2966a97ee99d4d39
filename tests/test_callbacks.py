"""Receive callbacks (Python and the C-level filter) and dummy sends."""

from __future__ import annotations

import gc
import re
import select
import socket as stdsocket
import time

import pytest

import pyxlio
from conftest import free_udp_port, offloaded_of_a_kernel_socket, offloads_loopback
from pyxlio import Verdict


def drain(rx: object, timeout: float = 0.3, errors: list[BaseException] | None = None
          ) -> list[bytes]:
    """Every datagram until `timeout` passes with none; callback exceptions raised by the
    receive calls go to `errors` (or propagate when it is None), without losing data."""
    got: list[bytes] = []
    while True:
        try:
            batch = rx.recv_batch(64, timeout=timeout)
        except Exception as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        with batch:
            if not batch:
                return got
            got.extend(bytes(v) for v in batch.views())


VERDICT_OF = {b"d": Verdict.DROP, b"r": Verdict.RECV, b"h": Verdict.HOLD}


def check_verdicts(rx: object, tx: stdsocket.socket, addr: object, path: str) -> None:
    """DROP / RECV / HOLD with the same results whoever runs the callback."""
    seen: list[tuple[bytes, object, int, str]] = []

    def fn(view: memoryview, info: pyxlio.RecvInfo) -> Verdict:
        data = bytes(view)
        seen.append((data, info.src, info.payload_size, info.path))
        return VERDICT_OF[data[:1]]

    rx.set_recv_callback(fn)
    assert rx.callback_path == path
    for payload in (b"d1", b"r1", b"h1", b"r2", b"d2", b"h2"):
        tx.sendto(payload, addr)
    assert drain(rx) == [b"r1", b"r2"]
    assert [s[0] for s in seen] == [b"d1", b"r1", b"h1", b"r2", b"d2", b"h2"]
    assert all(s[1] == tx.getsockname() and s[2] == 2 and s[3] == path for s in seen)
    held = list(rx.held)
    assert [bytes(p) for p in held] == [b"h1", b"h2"]
    assert all(p.zcopy == (path == "xlio") for p in held)
    assert rx.outstanding == (2 if path == "xlio" else 0)
    for p in held:
        p.release()
    rx.held.clear()
    assert rx.outstanding == 0
    rx.set_recv_callback(None)
    assert rx.callback_path is None
    tx.sendto(b"d-after", addr)
    assert drain(rx) == [b"d-after"]
    assert len(seen) == 6


@pytest.mark.kernel_only
def test_callbacks_without_xlio_run_in_pyxlio(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    assert rx.offloaded is False
    check_verdicts(rx, tx, addr, "pyxlio")


@pytest.mark.xlio
def test_callbacks_on_a_socket_xlio_does_not_offload(provider: str, make_socket) -> None:
    with pyxlio.offload(False):
        rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    # False where the layout can tell (ring count); None where it cannot (3.60+ have no rings)
    assert rx.offloaded is offloaded_of_a_kernel_socket()
    with stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        check_verdicts(rx, tx, rx.getsockname(), "pyxlio")


def test_callback_argument_checks(provider: str, udp_pair) -> None:
    rx, _, _ = udp_pair
    with pytest.raises(TypeError):
        rx.set_recv_callback(42)
    with pytest.raises(ValueError):
        rx.set_recv_filter(0, b"")
    with pytest.raises(ValueError):
        rx.set_recv_filter(0, b"x" * 65)
    with pytest.raises(ValueError):
        rx.set_recv_filter(-1, b"x")
    with pytest.raises(TypeError):
        rx.set_recv_filter("0", b"x")


@pytest.mark.xlio
@pytest.mark.offloaded      # XLIO runs the callback on the datagrams it offloads
def test_verdicts_drop_recv_hold(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    assert rx.offloaded is True
    check_verdicts(rx, tx, addr, "xlio")


def test_callback_info(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    infos: list[pyxlio.RecvInfo] = []
    rx.set_recv_callback(lambda v, info: infos.append(info) or Verdict.DROP)
    before = time.time_ns()
    tx.sendto(b"x" * 100, addr)
    assert drain(rx) == []
    (info,) = infos
    assert info.fd == rx.fileno() and info.payload_size == 100 and info.fragments == 1
    assert info.src == tx.getsockname()
    assert info.path == ("xlio" if offloads_loopback(provider) else "pyxlio")
    if provider != "libxlio":
        assert info.dst == addr
        assert before - 5_000_000_000 < info.sw_timestamp_ns < time.time_ns() + 5_000_000_000
    assert "RecvInfo" in repr(info)


def test_exception_in_callback_is_raised_from_a_receive_call(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair

    def fn(view: memoryview, info: object) -> Verdict:
        if bytes(view) == b"boom":
            raise ZeroDivisionError("from the callback")
        return Verdict.RECV

    rx.set_recv_callback(fn)
    tx.sendto(b"boom", addr)
    tx.sendto(b"fine", addr)
    errors: list[BaseException] = []
    got = drain(rx, 0.2, errors)
    # Raised once, and nothing lost: both datagrams were delivered (RECV).
    assert [str(e) for e in errors] == ["from the callback"]
    assert got == [b"boom", b"fine"] and rx.outstanding == 0


@pytest.mark.xlio
@pytest.mark.offloaded      # the callback runs inside the stdlib receive call (XLIO runs it)
def test_stdlib_recv_also_reports_callback_exceptions(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    rx.set_recv_callback(lambda v, i: 1 / 0)
    tx.sendto(b"x", addr)
    rx.settimeout(2)
    assert rx.recv(10) == b"x"          # the data in hand is returned...
    with pytest.raises(ZeroDivisionError):
        rx.recv(10)                     # ...and the next receive call raises


@pytest.mark.xlio
@pytest.mark.offloaded      # the callback runs inside the stdlib receive call (XLIO runs it)
def test_callback_exception_never_raised_is_reported_at_close(provider: str,
                                                              make_socket) -> None:
    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.set_recv_callback(lambda v, i: 1 / 0)
    with stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as tx:
        tx.sendto(b"x", rx.getsockname())
    rx.settimeout(2)
    assert rx.recv(10) == b"x"
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        rx.close()


@pytest.mark.parametrize("verdict", [7, "RECV", None, True])
def test_bad_verdict_is_an_error_and_delivers(provider: str, udp_pair, verdict: object) -> None:
    rx, tx, addr = udp_pair
    rx.set_recv_callback(lambda v, i: verdict)
    tx.sendto(b"v", addr)
    errors: list[BaseException] = []
    assert drain(rx, 0.2, errors) == [b"v"]                  # delivered (RECV)...
    assert [type(e) for e in errors] == [TypeError]          # ...and the error raised once
    assert "Verdict" in str(errors[0])


@pytest.mark.xlio
@pytest.mark.offloaded      # the view is of XLIO's buffer (a software callback sees a copy)
def test_a_view_kept_past_the_callback_is_held_not_freed(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    kept: list[memoryview] = []

    def fn(view: memoryview, info: object) -> Verdict:
        kept.append(view[0:])          # a second view of the same buffer, kept
        return Verdict.DROP

    rx.set_recv_callback(fn)
    tx.sendto(b"keepme", addr)
    with pytest.raises(BufferError, match="held"):
        drain(rx)                       # nothing was delivered: raised at once
    assert bytes(kept[0]) == b"keepme"     # still valid memory
    (pkt,) = rx.held
    with pytest.raises(BufferError):
        pkt.release()
    kept.clear()
    gc.collect()
    pkt.release()
    rx.held.clear()
    assert rx.outstanding == 0


def test_c_filter_keeps_only_matching_datagrams(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    rx.set_recv_filter(2, b"AB")
    for payload in (b"xxAB1", b"xxCD2", b"xxAB3", b"A", b"xxA"):
        tx.sendto(payload, addr)
    assert drain(rx) == [b"xxAB1", b"xxAB3"]
    assert rx.filtered == 3
    rx.set_recv_filter(2, b"AB", keep=False)
    for payload in (b"xxAB1", b"xxCD2"):
        tx.sendto(payload, addr)
    assert drain(rx) == [b"xxCD2"]
    rx.clear_recv_filter()
    tx.sendto(b"xxCD3", addr)
    assert drain(rx) == [b"xxCD3"]


def test_c_filter_across_fragments_then_python(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    rx.set_receive_buffer(1 << 20)
    calls: list[int] = []
    rx.set_recv_filter(1470, b"MARK")                 # straddles the 1472-byte fragments
    rx.set_recv_callback(lambda v, i: calls.append(len(v)) or Verdict.RECV)
    good = b"." * 1470 + b"MARK" + b"." * 100
    bad = b"." * 1470 + b"MARX" + b"." * 100
    tx.sendto(bad, addr)
    tx.sendto(good, addr)
    assert drain(rx) == [good]
    assert calls == [len(good)]                       # the Python callback saw only survivors


@pytest.mark.xlio
@pytest.mark.offloaded      # XLIO runs the callback before it reports readiness
def test_readiness_never_contradicts_the_receive_call(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    rx.set_recv_callback(lambda v, i: Verdict.DROP)
    tx.sendto(b"dropped", addr)
    readable, _, _ = select.select([rx], [], [], 0.2)
    if readable:                                      # if poll says so, recv must not block
        with rx.recv_batch(4, timeout=0) as batch:
            assert len(batch) > 0
    else:
        assert drain(rx, 0.05) == []


# -- dummy sends ---------------------------------------------------------------------------

@pytest.mark.kernel_only
def test_dummy_send_needs_xlio_and_never_really_sends(provider: str, udp_pair,
                                                      make_socket) -> None:
    rx, _, addr = udp_pair
    tx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    tx.connect(addr)
    with pytest.raises(pyxlio.XlioNotLoadedError):
        tx.send_dummy(b"warm")
    with pytest.raises(pyxlio.XlioNotLoadedError):
        tx.send(b"warm", pyxlio.MSG_DUMMY)
    with pytest.raises(pyxlio.XlioNotLoadedError):
        tx.sendto(b"warm", pyxlio.MSG_DUMMY, addr)
    with pytest.raises(pyxlio.XlioNotLoadedError):
        tx.warm(b"warm")
    assert drain(rx, 0.1) == []


@pytest.mark.xlio
@pytest.mark.offloaded      # XLIO accepts dummy sends on offloaded sockets only
def test_dummy_send_is_counted_and_dropped(provider: str, udp_pair, make_socket,
                                           capfd) -> None:
    rx, _, addr = udp_pair
    tx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    tx.connect(addr)
    assert tx.send_dummy(b"warm-up!") == 8
    assert tx.send(b"abc", pyxlio.MSG_DUMMY) == 3
    unconnected = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    assert unconnected.send_dummy(b"xy", addr) == 2
    assert unconnected.sendmsg([b"q"], (), pyxlio.MSG_DUMMY, addr) == 1
    tx.send(b"real")
    assert drain(rx) == [b"real"]                    # the dummies never arrive
    if provider in ("emu", "emu-vma"):
        tx.stats()
        line = next(x for x in capfd.readouterr().err.splitlines()
                    if f"fd={tx.fileno()} " in x)
        assert dict(re.findall(r"(\w+)=(\S+)", line))["dummy_sends"] == "2"


@pytest.mark.xlio
def test_dummy_send_on_a_socket_xlio_does_not_offload(provider: str, udp_pair,
                                                      make_socket) -> None:
    _, _, addr = udp_pair
    with pyxlio.offload(False):
        tx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    tx.connect(addr)
    api = pyxlio.get_api()
    assert api is not None
    if not api.dummy_send:      # 3.60+ removed the flag: refused before any send, any socket
        with pytest.raises(pyxlio.UnsupportedError, match=r"removed in libxlio 3\.60"):
            tx.send_dummy(b"warm")
        return
    with pytest.raises(pyxlio.XlioError, match="not offloaded"):
        tx.send_dummy(b"warm")


@pytest.mark.xlio
@pytest.mark.offloaded      # XLIO accepts dummy sends on offloaded sockets only
def test_warm_up_helper_is_bounded(provider: str, udp_pair, make_socket) -> None:
    rx, _, addr = udp_pair
    tx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    tx.connect(addr)
    with pytest.raises(ValueError):
        tx.warm(b"x", rate=50_001)
    with pytest.raises(ValueError):
        tx.warm(b"x", rate=0)
    with tx.warm(b"x" * 32, rate=2000) as warmer:
        time.sleep(0.3)
    assert 10 < warmer.sent <= 2000 * 0.3 * 1.5 + 10
    assert drain(rx, 0.1) == []


@pytest.mark.provider_independent
def test_dummy_send_refused_where_libxlio_removed_it() -> None:
    """libxlio 3.60+ dropped dummy sends: flag 0x400 would reach a send path that no longer
    knows it, so pyxlio refuses instead of risking a real send."""
    from conftest import run_python
    from pyxlio import emu

    code = (
        "import socket, pyxlio\n"
        "from pyxlio.socket import socket as xs\n"
        "s = xs(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.connect(('127.0.0.1', 9))\n"
        "try:\n"
        "    s.send_dummy(b'x')\n"
        "except pyxlio.UnsupportedError as exc:\n"
        "    print('refused:', exc)\n"
        "s.close()\n"
    )
    proc = run_python(code, env=emu.environ(strict=True, layout="3.61"))
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "3.60" in proc.stdout


FEED_DROP_ALL = """
import os, signal, socket as S, sys, threading, time
from pyxlio.socket import socket
s = socket(S.AF_INET, S.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.set_recv_callback(lambda v, i: 0)               # DROP every datagram of an endless feed
assert len(s.recv_batch(64, timeout=0)) == 0      # returns at once
assert len(s.recv_batch(64, timeout=0.2)) == 0    # returns when the timeout expires
# Ctrl-C raises KeyboardInterrupt even when this child inherits SIGINT ignored
# (a suite started as a background job of a non-interactive shell).
signal.signal(signal.SIGINT, signal.default_int_handler)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    s.recv_batch(64) if sys.argv[2] == "pyxlio" else s.recv(64)
except KeyboardInterrupt:
    print("interrupted")
s.set_recv_callback(None)
s.close()
"""


@pytest.mark.provider_independent
@pytest.mark.parametrize("call", ["pyxlio", "stdlib"])
def test_feed_whose_callback_drops_everything_never_hangs(call: str) -> None:
    import subprocess
    import sys

    from pyxlio import emu

    port = free_udp_port()
    proc = subprocess.run([sys.executable, "-c", FEED_DROP_ALL, str(port), call],
                          env=emu.environ(strict=True, feed=f"{port}:64"), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interrupted"


def test_pyxlio_run_callbacks_get_the_kernels_receive_time(provider: str, udp_pair) -> None:
    """On the pyxlio path, sw_timestamp_ns is the kernel's receive time (SO_TIMESTAMPNS) where
    the datagram came through pyxlio's recvmmsg: before the receive call began, not when pyxlio
    took the datagram."""
    rx, tx, addr = udp_pair
    infos: list[pyxlio.RecvInfo] = []
    rx.set_recv_callback(lambda v, info: infos.append(info) or Verdict.RECV)
    # The kernel turns receive timestamping on through deferred work: a datagram that arrives
    # in the first instants after SO_TIMESTAMPNS is set may be stamped only when it is read.
    time.sleep(0.1)
    sent = time.time_ns()
    tx.sendto(b"stamped", addr)
    time.sleep(0.2)
    before_receive = time.time_ns()
    assert drain(rx) == [b"stamped"]
    (info,) = infos
    if info.path == "pyxlio" and not rx.offloaded:
        assert sent - 1_000_000 <= info.sw_timestamp_ns < before_receive
    else:
        assert info.sw_timestamp_ns > 0
