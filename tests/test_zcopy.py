"""Zero-copy receive: Packet and PacketBatch over every provider.

Under the emulator (strict) loopback is offloaded, so datagrams arrive zero-copy; without XLIO
the same calls go through the kernel (recvmmsg) and packets say zcopy == False.  Either way
the contract is the same: right bytes, right addresses, nothing read after release, every
buffer freed exactly once on its own socket.
"""

from __future__ import annotations

import gc
import os
import socket as stdsocket
import struct
import sys
import threading
import time
import warnings

import pytest

import pyxlio
from conftest import offloaded_of_a_kernel_socket, offloads_loopback, run_python

FRAG = 1472   # the emulator's default fragment size


def send_all(tx: stdsocket.socket, addr: object, payloads: list[bytes]) -> None:
    for p in payloads:
        tx.sendto(p, addr)


def expect_zcopy(provider: str) -> bool:
    return offloads_loopback(provider)   # a real libxlio does not offload loopback


def recv_n(rx: object, n: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        with rx.recv_batch(64, timeout=0.5) as batch:
            got.extend(bytes(v) for v in batch.views())
    return got


def test_batch_contents_lengths_and_addresses(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    payloads = [b"m%05d" % i + b"." * (i % 50) for i in range(200)]
    send_all(tx, addr, payloads)
    got: list[bytes] = []
    while len(got) < len(payloads):
        batch = rx.recv_batch(64, timeout=2)
        assert batch, "datagrams were lost on loopback"
        assert len(batch) <= 64
        assert list(batch.lengths) == [len(bytes(p)) for p in batch]
        assert batch.nbytes == sum(batch.lengths)
        assert batch.addresses == [tx.getsockname()] * len(batch)
        assert list(batch.ports) == [tx.getsockname()[1]] * len(batch)
        assert list(batch.hosts) == [0x7F000001] * len(batch)          # 127.0.0.1
        assert batch.zcopy is expect_zcopy(provider)
        assert rx.outstanding == (len(batch) if expect_zcopy(provider) else 0)
        got.extend(bytes(v) for v in batch.views())
        batch.release()
        assert rx.outstanding == 0
    assert got == payloads


def test_batch_without_addresses(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    send_all(tx, addr, [b"one", b"two"])
    with rx.recv_batch(8, timeout=2, addresses=False) as batch:
        assert [bytes(v) for v in batch.views()] == [b"one", b"two"]
        assert batch.addresses == [None, None] and list(batch.ports) == [0, 0]
        assert list(batch.hosts) == [0, 0]
        assert batch[0].address is None
    tx.sendto(b"three", addr)
    with rx.recv_batch(8, timeout=2) as batch:          # the next call asks again
        assert batch.addresses == [tx.getsockname()]


def test_packets_of_a_batch(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    send_all(tx, addr, [b"alpha", b"beta", b""])
    batch = rx.recv_batch(8, timeout=2)
    assert len(batch) == 3
    first, second, empty = batch[0], batch[1], batch[-1]
    assert (bytes(first), second.tobytes(), bytes(empty)) == (b"alpha", b"beta", b"")
    assert first.nbytes == 5 and len(first) == 5 and empty.nbytes == 0
    assert first.address == tx.getsockname()
    assert first.zcopy is expect_zcopy(provider)
    assert [bytes(p) for p in batch] == [b"alpha", b"beta", b""]
    with pytest.raises(IndexError):
        batch[3]
    # Releasing one packet of a batch frees it alone; the batch frees the rest once.
    first.release()
    first.release()                       # idempotent
    assert first.released and not second.released
    with pytest.raises(ValueError, match="released"):
        bytes(first)
    assert rx.outstanding == (2 if expect_zcopy(provider) else 0)
    batch.release()
    assert rx.outstanding == 0 and second.released
    with pytest.raises(ValueError):
        second.tobytes()
    with pytest.raises(ValueError):
        _ = batch.lengths
    batch.release()                       # idempotent


def test_a_view_blocks_release_and_nothing_reads_freed_memory(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    send_all(tx, addr, [b"one", b"two"])
    batch = rx.recv_batch(8, timeout=2)
    views = list(batch.views())
    with pytest.raises(BufferError):
        batch.release()
    pkt = batch[1]
    pview = memoryview(pkt)
    for v in views:
        v.release()
    with pytest.raises(BufferError):
        batch.release()                   # the packet's view still counts
    with pytest.raises(BufferError):
        pkt.release()
    sub = pview[1:]                       # a view of the view keeps the export alive
    pview.release()
    with pytest.raises(BufferError):
        batch.release()
    assert bytes(sub) == b"wo"
    sub.release()
    batch.release()
    assert rx.outstanding == 0
    with pytest.raises(ValueError):
        memoryview(pkt)


def test_views_are_read_only(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    tx.sendto(b"immutable", addr)
    with rx.recvfrom_zcopy() as pkt:
        with memoryview(pkt) as view:
            assert view.readonly
            with pytest.raises(TypeError):
                view[0] = 1


def test_batch_itself_is_not_one_buffer(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    tx.sendto(b"x", addr)
    with rx.recv_batch(4, timeout=2) as batch, pytest.raises(BufferError, match="views"):
        memoryview(batch)


@pytest.mark.parametrize("size", [FRAG - 1, FRAG, FRAG + 1, 3 * FRAG + 7, 65000])
def test_multi_fragment_datagrams(provider: str, udp_pair, size: int) -> None:
    rx, tx, addr = udp_pair
    rx.set_receive_buffer(1 << 20)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    tx.sendto(payload, addr)
    with rx.recvfrom_zcopy() as pkt:
        frags = pkt.fragments
        expected = (size + FRAG - 1) // FRAG if expect_zcopy(provider) else 1
        assert pkt.fragment_count == len(frags) == expected
        assert b"".join(bytes(f) for f in frags) == payload == bytes(pkt)
        if expected > 1:
            with pytest.raises(BufferError, match="fragments"):
                memoryview(pkt)
            with pytest.raises(BufferError):
                pkt.release()             # the fragment views are exported
        for f in frags:
            f.release()
    tx.sendto(payload, addr)
    with rx.recv_batch(4, timeout=2) as batch:
        (view,) = list(batch.views())
        assert bytes(view) == payload
        view.release()


def test_recvfrom_zcopy_blocking_modes(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    rx.settimeout(0.05)
    with pytest.raises(TimeoutError):
        rx.recvfrom_zcopy()
    rx.setblocking(False)
    with pytest.raises(BlockingIOError):
        rx.recvfrom_zcopy()
    assert not rx.recv_batch(8)           # empty, not an exception
    rx.setblocking(True)
    assert not rx.recv_batch(8, timeout=0)
    assert len(rx.recv_batch(8, timeout=0.05)) == 0

    def later() -> None:
        time.sleep(0.1)
        tx.sendto(b"late", addr)

    t = threading.Thread(target=later)
    t.start()
    with rx.recvfrom_zcopy() as pkt:      # blocks in the kernel / XLIO until it comes
        assert bytes(pkt) == b"late"
    t.join()


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"max_packets": 0}, ValueError), ({"max_packets": 10 ** 6}, ValueError),
    ({"timeout": -1}, ValueError), ({"max_packets": "8"}, TypeError),
    ({"timeout": "soon"}, TypeError),
])
def test_recv_batch_bad_arguments(provider: str, udp_pair, kwargs: dict, error: type) -> None:
    rx, _, _ = udp_pair
    with pytest.raises(error):
        rx.recv_batch(**kwargs)


def test_closed_socket_refuses(provider: str, make_socket) -> None:
    s = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.close()
    with pytest.raises(OSError):
        s.recv_batch(4, timeout=0)
    with pytest.raises(OSError):
        s.recvfrom_zcopy()


def test_force(provider: str, udp_pair, make_socket) -> None:
    rx, tx, addr = udp_pair
    with pytest.raises(ValueError, match="MSG_ZCOPY"):
        rx.recvfrom_zcopy(pyxlio.MSG_ZCOPY)
    with pytest.raises(ValueError):
        rx.recvfrom_zcopy(-1)
    if provider == "kernel":
        with pytest.raises(pyxlio.XlioNotLoadedError):
            rx.recvfrom_zcopy(force=True)
        with pytest.raises(pyxlio.XlioNotLoadedError):
            rx.recvfrom_zcopy(pyxlio.MSG_ZCOPY_FORCE)   # never handed to the kernel
        return
    tx.sendto(b"zc", addr)
    api = pyxlio.get_api()
    assert api is not None
    if not api.has(pyxlio.Capability.RECVFROM_ZCOPY):
        # libxlio 3.60+ have no zero-copy receive: the member is missing, whatever the socket
        time.sleep(0.05)
        with pytest.raises(pyxlio.UnsupportedError, match=r"3\.60 removed") as unsupported:
            rx.recvfrom_zcopy(force=True)
        assert unsupported.value.call == "recvfrom_zcopy"
        with rx.recvfrom_zcopy() as pkt:        # the refused call read nothing: a copy now
            assert bytes(pkt) == b"zc" and not pkt.zcopy
        return
    if expect_zcopy(provider):
        with rx.recvfrom_zcopy(force=True) as pkt:
            assert bytes(pkt) == b"zc" and pkt.zcopy
    else:                               # served by the kernel: EIO, the datagram kept
        time.sleep(0.05)
        with pytest.raises(pyxlio.XlioError) as info:
            rx.recvfrom_zcopy(force=True)
        assert info.value.errno == 5
        with rx.recvfrom_zcopy() as pkt:
            assert bytes(pkt) == b"zc" and not pkt.zcopy
    api = pyxlio.get_api()
    if api is not None and api.started is False:
        return          # no thread offload: every socket is one XLIO does not know (rx above)
    with pyxlio.offload(False):
        kernel_sock = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    kernel_sock.bind(("127.0.0.1", 0))
    tx.sendto(b"copied", kernel_sock.getsockname())
    time.sleep(0.05)
    with pytest.raises(pyxlio.XlioError) as info:
        kernel_sock.recvfrom_zcopy(force=True)
    assert info.value.errno == 5        # EIO: it came through the kernel
    with kernel_sock.recvfrom_zcopy() as pkt:   # without force: a copy
        assert bytes(pkt) == b"copied" and not pkt.zcopy


def test_unreleased_batch_is_freed_on_collection_with_a_warning(provider: str,
                                                                 udp_pair) -> None:
    rx, tx, addr = udp_pair
    send_all(tx, addr, [b"a", b"b"])
    batch = rx.recv_batch(4, timeout=2)
    assert len(batch) == 2
    if not expect_zcopy(provider):
        batch.release()
        return
    with pytest.warns(ResourceWarning, match="unreleased"):
        del batch
        gc.collect()
    assert rx.outstanding == 0


def test_close_frees_outstanding_or_refuses_while_viewed(provider: str, make_socket) -> None:
    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    send_all(tx, rx.getsockname(), [b"x", b"y", b"z"])
    b1 = rx.recv_batch(2, timeout=2)
    b2 = rx.recv_batch(2, timeout=2)
    held = b2[0]
    view = memoryview(held)
    with pytest.raises(BufferError, match="exported"):
        rx.close()
    assert rx.fileno() >= 0              # still open: nothing was lost
    view.release()
    rx.close()
    assert rx.outstanding == 0 and b1.released and b2.released and held.released
    tx.close()


@pytest.mark.parametrize("refused", ["close", "detach", "base_close", "base_detach"])
def test_a_refused_close_leaves_the_socket_closable(provider: str, make_socket,
                                                    refused: str) -> None:
    """Whichever way the close was refused (a view exported), the socket stays open and a
    later close, `with` included, closes it.  (socket.socket's own close and detach set
    `_closed` before pyxlio's engine refuses: pyxlio resets it.)"""
    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    send_all(tx, rx.getsockname(), [b"held"])
    batch = rx.recv_batch(1, timeout=2)
    view = memoryview(batch[0])
    attempt = {"close": rx.close, "detach": rx.detach,
               "base_close": lambda: stdsocket.socket.close(rx),
               "base_detach": lambda: stdsocket.socket.detach(rx)}[refused]
    with pytest.raises(BufferError):
        attempt()
    assert rx.fileno() >= 0 and bytes(view) == b"held"
    with pytest.raises(BufferError):
        with rx:                            # __exit__ closes unless _closed says it is closed
            pass
    view.release()
    with rx:
        pass
    assert rx.fileno() == -1 and batch.released
    tx.close()


def test_socket_collected_while_views_live_keeps_memory_valid(provider: str) -> None:
    from pyxlio.socket import socket

    rx = socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    tx.sendto(b"survivor", rx.getsockname())
    batch = rx.recv_batch(4, timeout=2)
    (view,) = list(batch.views())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del rx
        gc.collect()
    assert bytes(view) == b"survivor"
    view.release()
    batch.release()
    tx.close()


def test_many_threads_receive_and_release_at_once(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    rx.set_receive_buffer(8 << 20)
    total, workers = 20000, 4
    seen: list[int] = []
    lock = threading.Lock()
    done = threading.Event()

    def worker(use_single: bool) -> None:
        while not done.is_set():
            if use_single:
                try:
                    rx_pkt = rx.recvfrom_zcopy()
                except (TimeoutError, BlockingIOError):
                    continue
                with rx_pkt:
                    seqs = [struct.unpack("!I", bytes(rx_pkt)[:4])[0]]
            else:
                with rx.recv_batch(32, timeout=0.05) as batch:
                    seqs = [struct.unpack_from("!I", v)[0] for v in batch.views()]
            with lock:
                seen.extend(seqs)

    rx.settimeout(0.05)
    threads = [threading.Thread(target=worker, args=(i == 0,)) for i in range(workers)]
    for t in threads:
        t.start()
    for start in range(0, total, 500):
        for i in range(start, start + 500):
            tx.sendto(struct.pack("!I", i) + b"p" * 60, addr)
        time.sleep(0.002)
    deadline = time.monotonic() + 10
    while len(seen) < total and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for t in threads:
        t.join(10)
    assert len(seen) == len(set(seen)), "a datagram was delivered twice"
    assert sorted(seen) == list(range(total)), f"lost {total - len(set(seen))} datagrams"
    assert rx.outstanding == 0


CTRL_C = """
import os, signal, socket as S, sys, threading, time
from pyxlio.socket import socket
rx = socket(S.AF_INET, S.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
method = sys.argv[1]
# Ctrl-C raises KeyboardInterrupt even when this child inherits SIGINT ignored
# (a suite started as a background job of a non-interactive shell).
signal.signal(signal.SIGINT, signal.default_int_handler)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
t0 = time.monotonic()
try:
    rx.recv_batch(64) if method == "batch" else rx.recvfrom_zcopy()
except KeyboardInterrupt:
    print("interrupted after %.2f s" % (time.monotonic() - t0))
rx.close()
"""


@pytest.mark.parametrize("method", ["batch", "single"])
def test_ctrl_c_stops_a_blocked_receive(provider: str, method: str) -> None:
    proc = _run_script(CTRL_C, method)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("interrupted after"), proc.stdout + proc.stderr
    assert float(proc.stdout.split()[2]) < 5


EINTR = """
import signal, socket as S, threading, time
from pyxlio.socket import socket
rx = socket(S.AF_INET, S.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
alarms = []
signal.signal(signal.SIGALRM, lambda *a: alarms.append(1))
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
tx = S.socket(S.AF_INET, S.SOCK_DGRAM)
threading.Timer(0.4, tx.sendto, (b"after-signals", rx.getsockname())).start()
with rx.recv_batch(8) as b:
    got = [bytes(v) for v in b.views()]
signal.setitimer(signal.ITIMER_REAL, 0)
print(len(alarms) > 2, got)
rx.close()
"""


def test_signals_that_do_not_raise_do_not_break_a_receive(provider: str) -> None:
    proc = _run_script(EINTR)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True [b'after-signals']"


def _run_script(code: str, *args: str) -> object:
    import subprocess

    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_never_frees_the_parents_packets(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    send_all(tx, addr, [b"p1", b"p2"])
    batch = rx.recv_batch(4, timeout=2)
    assert len(batch) == 2
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # child
        status = 1
        try:
            os.close(r)
            batch.release()                            # must not free the parent's buffers
            ok = batch.released and rx.outstanding == 0
            os.write(w, b"ok" if ok else b"bad")
            status = 0
        finally:
            import ctypes
            # exit() (not os._exit) so the emulator's at-exit checks run in the child too
            ctypes.CDLL(None).exit(status)
    os.close(w)
    report = os.read(r, 16)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert report == b"ok"
    assert os.waitstatus_to_exitcode(status) == 0, "the child's XLIO saw a bad free"
    # The parent still owns its packets and frees them itself.
    assert [bytes(p) for p in batch] == [b"p1", b"p2"]
    batch.release()
    assert rx.outstanding == 0


def test_tcp_stream(provider: str, make_socket) -> None:
    from pyxlio.socket import create_connection, create_server

    server = create_server(("127.0.0.1", 0))
    try:
        assert isinstance(server, pyxlio.socket.socket)
        client = create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
        assert isinstance(conn, pyxlio.socket.socket)
        conn.settimeout(5)
        payload = os.urandom(300_000)
        sender = threading.Thread(target=lambda: (client.sendall(payload), client.close()))
        sender.start()
        chunks: list[bytes] = []
        while True:
            if len(chunks) % 2:
                with conn.recv_batch(16) as batch:
                    if batch.eof:
                        break
                    chunks.extend(p.tobytes() for p in batch)
            else:
                pkt = conn.recvfrom_zcopy()
                if pkt is None:
                    break
                with pkt:
                    chunks.append(pkt.tobytes())
                    assert pkt.zcopy is expect_zcopy(provider)
        sender.join()
        assert b"".join(chunks) == payload
        assert conn.outstanding == 0
        conn.close()
    finally:
        server.close()


def test_ipv6(provider: str, make_socket) -> None:
    if not stdsocket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    rx = make_socket(stdsocket.AF_INET6, stdsocket.SOCK_DGRAM)
    try:
        rx.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    tx = stdsocket.socket(stdsocket.AF_INET6, stdsocket.SOCK_DGRAM)
    tx.bind(("::1", 0))
    tx.sendto(b"six", rx.getsockname()[:2])
    with rx.recv_batch(4, timeout=2) as batch:
        assert [bytes(v) for v in batch.views()] == [b"six"]
        (address,) = batch.addresses
        assert address[:2] == tx.getsockname()[:2] and len(address) == 4
        assert list(batch.hosts) == [0]                  # IPv4 only: the tuples have IPv6
    tx.close()


def test_kernel_path_counts_truncation(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    rx.max_datagram = 128
    assert rx.max_datagram == 128
    tx.sendto(b"q" * 1000, addr)
    with rx.recv_batch(4, timeout=2) as batch:
        if batch.zcopy:           # XLIO's buffers hold the whole datagram
            assert batch.truncated == 0 and batch.lengths[0] == 1000
        else:
            assert batch.truncated == 1 and batch.lengths[0] == 128 and batch[0].truncated
    with pytest.raises(ValueError):
        rx.max_datagram = 10
    with pytest.raises(TypeError):
        rx.max_datagram = "big"


def test_selectors_and_asyncio_see_a_plain_socket(provider: str, udp_pair) -> None:
    import asyncio
    import selectors

    rx, tx, addr = udp_pair
    with selectors.DefaultSelector() as sel:
        sel.register(rx, selectors.EVENT_READ)
        assert sel.select(0) == []
        tx.sendto(b"ready", addr)
        assert len(sel.select(2)) == 1
    assert rx.recv(100) == b"ready"

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        rx.setblocking(False)
        loop.call_later(0.05, tx.sendto, b"async", addr)
        return await asyncio.wait_for(loop.sock_recv(rx, 100), 5)

    assert asyncio.run(main()) == b"async"


def test_stdlib_calls_still_work_on_the_subclass(provider: str, udp_pair) -> None:
    rx, tx, addr = udp_pair
    tx.sendto(b"a", addr)
    tx.sendto(b"bb", addr)
    tx.sendto(b"ccc", addr)
    assert rx.recvfrom(10) == (b"a", tx.getsockname())
    buf = bytearray(10)
    assert rx.recv_into(buf) == 2 and buf[:2] == b"bb"
    assert rx.recvfrom_into(buf)[0] == 3
    with type(rx)(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as other:
        assert other.fileno() >= 0
    assert other.fileno() == -1


@pytest.mark.provider_independent
def test_strict_emulator_fails_a_program_that_leaks() -> None:
    """The other side of strict mode: a program that never releases exits non-zero."""
    from pyxlio import emu

    code = (
        "import socket as S, gc\n"
        "from pyxlio.socket import socket\n"
        "rx = socket(S.AF_INET, S.SOCK_DGRAM); rx.bind(('127.0.0.1', 0))\n"
        "S.socket(S.AF_INET, S.SOCK_DGRAM).sendto(b'x', rx.getsockname())\n"
        "leak = rx.recv_batch(4, timeout=2)\n"
        "import ctypes; ctypes.CDLL(None).exit(0)\n"   # exit without pyxlio's cleanup
    )
    proc = run_python(code, env=emu.environ(strict=True))
    assert proc.returncode != 0
    assert "never freed" in proc.stderr or "leak" in proc.stderr.lower()


def test_readiness_driven_tcp_loop_never_stalls(provider: str) -> None:
    """Nothing pyxlio received may sit where poll() cannot see it: a select-driven loop of
    recvfrom_zcopy gets the whole stream."""
    import selectors

    from pyxlio.socket import create_connection, create_server

    server = create_server(("127.0.0.1", 0))
    client = create_connection(server.getsockname(), timeout=5)
    conn, _ = server.accept()
    conn.setblocking(False)
    payload = os.urandom(400_000)
    sender = threading.Thread(target=lambda: (client.sendall(payload), client.close()))
    sender.start()
    got = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(conn, selectors.EVENT_READ)
        while True:
            assert sel.select(5), f"stalled after {len(got)} of {len(payload)} bytes"
            try:
                pkt = conn.recvfrom_zcopy()
            except BlockingIOError:
                continue
            if pkt is None:
                break
            with pkt:
                got += pkt.tobytes()
    sender.join()
    assert bytes(got) == payload and conn.outstanding == 0
    conn.close()
    server.close()


def test_packets_and_their_batch_released_from_many_threads_at_once(provider: str,
                                                                    udp_pair) -> None:
    """Each buffer goes back exactly once (a double free fails the strict emulator pass)."""
    rx, tx, addr = udp_pair
    rx.set_receive_buffer(4 << 20)
    for _ in range(40):
        for i in range(32):
            tx.sendto(b"r%03d" % i, addr)
        batch = rx.recv_batch(32, timeout=2)
        assert len(batch) == 32
        packets = list(batch)
        barrier = threading.Barrier(5)

        def release(part: list[object], barrier: threading.Barrier) -> None:
            barrier.wait(5)
            for p in part:
                p.release()

        threads = [threading.Thread(target=release, args=(packets[k::4], barrier))
                   for k in range(4)]
        for t in threads:
            t.start()
        barrier.wait(5)
        batch.release()
        for t in threads:
            t.join(5)
        assert batch.released and all(p.released for p in packets)
    assert rx.outstanding == 0


@pytest.mark.xlio
def test_a_socket_xlio_does_not_offload_is_read_in_batches_through_the_kernel(
        provider: str, make_socket) -> None:
    """Where XLIO would copy one datagram per call, pyxlio takes recvmmsg batches instead."""
    with pyxlio.offload(False):
        rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    with stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as tx:
        for i in range(10):
            tx.sendto(b"k%d" % i, rx.getsockname())
    with rx.recv_batch(16, timeout=2) as batch:
        assert [bytes(v) for v in batch.views()] == [b"k%d" % i for i in range(10)]
        assert not batch.zcopy and rx.offloaded is offloaded_of_a_kernel_socket()
