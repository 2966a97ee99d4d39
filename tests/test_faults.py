"""Faults around a receiver: the sender gone, the socket closed under a blocked receive,
Ctrl-C and SIGTERM with buffers outstanding, fork (Python's and a C-level one) with buffers
outstanding, and a receive buffer that overflows.

Contract under test (issue 8): a close() from another thread makes a blocked receive return
promptly with OSError(EBADF), handing out nothing and freeing what it got; Ctrl-C interrupts a
blocked receive; a forked child never frees its parent's packets; a burst that overflows the
receive buffer loses datagrams whole, never corrupts the ones that arrive.

Scenarios that may hang or crash run in a child interpreter under this pass's provider (the
strict emulator in the emu pass: a leak or a bad free makes it exit 86), with a watchdog that
dumps every thread's stack and exits 1 when it hangs.
"""

from __future__ import annotations

import os
import signal
import socket as stdsocket
import struct
import subprocess
import sys
import time
import zlib

import pytest

_BAD_STDERR = ("Fatal Python error", "Segmentation fault", "Traceback", "Exception ignored",
               "pyxlio-emu: ")
WATCHDOG = 15     # seconds before a child is declared hung (stacks dumped)


def child_code(code: str, watchdog: float = WATCHDOG) -> str:
    return ("import faulthandler\nfaulthandler.enable()\n"
            f"WATCHDOG = {watchdog}\n"
            "faulthandler.dump_traceback_later(WATCHDOG, exit=True)\n" + code)


def run_child(code: str, *args: str, watchdog: float = WATCHDOG,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", child_code(code, watchdog), *args],
                          capture_output=True, text=True, timeout=watchdog + 30,
                          env=dict(os.environ) if env is None else env)


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_clean(proc: subprocess.CompletedProcess[str], stdout: str | None = None,
                 status: int = 0) -> None:
    assert proc.returncode == status, report(proc)
    bad = [line for line in proc.stderr.splitlines() if any(m in line for m in _BAD_STDERR)]
    assert not bad, report(proc)
    if stdout is not None:
        assert proc.stdout.strip() == stdout, report(proc)


def payload(seq: int, size: int = 200) -> bytes:
    head = struct.pack("!I", seq)
    body = bytes((seq * 7 + i * 13) % 251 for i in range(size - 8))
    return head + body + struct.pack("!I", zlib.crc32(head + body))


def check_payload(data: bytes) -> int:
    """The sequence number of an intact datagram (AssertionError on a corrupt one)."""
    assert len(data) >= 8 and struct.unpack("!I", data[-4:])[0] == zlib.crc32(data[:-4]), (
        f"corrupt datagram: {data[:16]!r}...")
    seq = struct.unpack("!I", data[:4])[0]
    assert data == payload(seq, len(data)), f"datagram {seq} is not what was sent"
    return seq


# -- the sender gone ------------------------------------------------------------------------

def test_udp_sender_gone_everything_queued_arrives(provider: str, make_socket) -> None:
    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    for i in range(50):
        tx.sendto(payload(i), rx.getsockname())
    tx.close()
    seqs: list[int] = []
    while True:
        with rx.recv_batch(16, timeout=0.2) as batch:
            if not batch:
                break
            seqs.extend(check_payload(bytes(v)) for v in batch.views())
    assert seqs == list(range(50))
    assert rx.outstanding == 0
    with rx.recv_batch(16, timeout=0) as batch:
        assert not batch


def test_connected_udp_peer_gone_reports_refused_then_recovers(provider: str,
                                                               make_socket) -> None:
    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    peer = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer_addr = peer.getsockname()
    rx.connect(peer_addr)
    peer.sendto(b"before", rx.getsockname())
    peer.close()                               # gone: the next send draws an ICMP error
    rx.send(b"to-nobody")
    time.sleep(0.1)                            # let the ICMP error land
    got: list[bytes] = []
    errors: list[OSError] = []
    for _ in range(4):
        try:
            with rx.recv_batch(8, timeout=0.2) as batch:
                got.extend(bytes(v) for v in batch.views())
        except ConnectionRefusedError as exc:
            errors.append(exc)
    assert got == [b"before"]                  # queued data is not lost to the error
    assert len(errors) == 1                    # and the error is reported once
    assert rx.outstanding == 0
    # The socket still works: a new peer on the same address is heard.
    again = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    try:
        again.bind(peer_addr)
    except OSError as exc:
        pytest.skip(f"the peer's port was taken meanwhile: {exc}")
    again.sendto(b"after", rx.getsockname())
    rx.settimeout(2)
    with rx.recvfrom_zcopy() as pkt:
        assert bytes(pkt) == b"after"
    again.close()


@pytest.mark.parametrize("method", ["batch", "single"])
def test_tcp_peer_closes_then_end_of_stream_repeats(provider: str, method: str) -> None:
    from pyxlio.socket import create_server

    server = create_server(("127.0.0.1", 0))
    client = stdsocket.create_connection(server.getsockname(), timeout=5)
    conn, _ = server.accept()
    data = os.urandom(100_000)
    client.sendall(data)
    client.close()
    conn.settimeout(5)
    got = bytearray()
    try:
        while True:
            if method == "batch":
                with conn.recv_batch(4) as batch:
                    if batch.eof:
                        break
                    got += b"".join(p.tobytes() for p in batch)
            else:
                pkt = conn.recvfrom_zcopy()
                if pkt is None:
                    break
                with pkt:
                    got += pkt.tobytes()
        assert bytes(got) == data
        for _ in range(3):                   # end of stream stays end of stream
            assert conn.recvfrom_zcopy() is None
            with conn.recv_batch(4) as batch:
                assert batch.eof and len(batch) == 0
        assert conn.outstanding == 0
    finally:
        conn.close()
        server.close()


def test_tcp_peer_resets(provider: str) -> None:
    from pyxlio.socket import create_server

    server = create_server(("127.0.0.1", 0))
    client = stdsocket.create_connection(server.getsockname(), timeout=5)
    conn, _ = server.accept()
    conn.settimeout(5)
    try:
        client.sendall(b"partial" * 1000)
        conn.sendall(b"unread")                      # unread data at close: an RST follows
        client.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        got = bytearray()
        reset = False
        for _ in range(100):
            try:
                with conn.recv_batch(8) as batch:
                    if batch.eof:
                        break
                    got += b"".join(p.tobytes() for p in batch)
            except ConnectionResetError:
                reset = True
                break
        assert reset or got, "neither data nor the reset came"
        assert bytes(got) == (b"partial" * 1000)[:len(got)]
        assert conn.outstanding == 0
        # After the reset: an error or end of stream, never a hang or stale buffers.
        try:
            with conn.recv_batch(8) as batch:
                assert len(batch) == 0
        except OSError:
            pass
    finally:
        conn.close()
        server.close()


# -- close from another thread during a blocked receive -------------------------------------

CLOSE_DURING_RECEIVE = """
import errno, os, socket as S, sys, threading, time
from pyxlio.socket import socket
method, timeout, closer, holding = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
rx = socket(S.AF_INET, S.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = S.socket(S.AF_INET, S.SOCK_DGRAM)
held = None
if holding:                               # buffers outstanding when the close comes
    tx.sendto(b"held-1", rx.getsockname()); tx.sendto(b"held-2", rx.getsockname())
    held = rx.recv_batch(8, timeout=5)
    assert len(held) == 2
if timeout != "none":
    rx.settimeout(float(timeout))
outcome = []
started = threading.Event()

def receive():
    started.set()
    try:
        got = rx.recv_batch(64) if method == "batch" else rx.recvfrom_zcopy()
    except OSError as exc:
        outcome.append(("error", exc.errno))
    else:
        outcome.append(("returned", got))

t = threading.Thread(target=receive)
t.start()
started.wait()
time.sleep(0.3)                           # the receive is blocked by now
if closer == "close":
    rx.close()
elif closer == "base-close":
    S.socket.close(rx)
else:
    os.close(S.socket.detach(rx))
t.join(5)
if t.is_alive():
    print("receive still blocked 5 s after close()", flush=True)
    faulthandler.dump_traceback(all_threads=True)
    os._exit(3)
if held is not None:
    assert held.released, "close() left a batch unreleased"
print(outcome[0][0], errno.errorcode.get(outcome[0][1], outcome[0][1]))
"""


@pytest.mark.parametrize("holding", ["0", "1"], ids=["nothing-held", "buffers-held"])
@pytest.mark.parametrize("closer", ["close", "base-close", "base-detach"])
@pytest.mark.parametrize("timeout", ["none", "30"], ids=["blocking", "timeout"])
@pytest.mark.parametrize("method", ["batch", "single"])
def test_close_from_another_thread_ends_a_blocked_receive_with_ebadf(
        provider: str, method: str, timeout: str, closer: str, holding: str) -> None:
    proc = run_child(CLOSE_DURING_RECEIVE, method, timeout, closer, holding)
    assert_clean(proc, stdout="error EBADF")


FD_REUSE = """
import errno, os, socket as S, sys, threading, time
from pyxlio.socket import socket
method = sys.argv[1]
rx = socket(S.AF_INET, S.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
old_fd = rx.fileno()
outcome = []

def receive():
    try:
        got = rx.recv_batch(64) if method == "batch" else rx.recvfrom_zcopy()
    except OSError as exc:
        outcome.append(("error", errno.errorcode.get(exc.errno, exc.errno)))
    else:
        data = [bytes(v) for v in got.views()] if method == "batch" else [bytes(got)]
        got.release()
        outcome.append(("returned", data))

t = threading.Thread(target=receive)
t.start()
time.sleep(0.3)
rx.close()
# The descriptor number comes back at once for a new socket, which gets a datagram.
rx2 = socket(S.AF_INET, S.SOCK_DGRAM)
rx2.bind(("127.0.0.1", 0))
same_fd = rx2.fileno() == old_fd
tx = S.socket(S.AF_INET, S.SOCK_DGRAM)
tx.sendto(b"intruder", rx2.getsockname())
t.join(5)
if t.is_alive():
    print("receive still blocked 5 s after close()", flush=True)
    faulthandler.dump_traceback(all_threads=True)
    os._exit(3)
rx2.settimeout(5)
with rx2.recvfrom_zcopy() as pkt:
    mine = bytes(pkt)
rx2.close()
print(outcome[0], mine, same_fd)
"""


@pytest.mark.parametrize("method", ["batch", "single"])
def test_a_receive_blocked_across_close_never_reads_the_next_socket_on_its_fd(
        provider: str, method: str) -> None:
    """close() while a receive waits; a new socket gets the same descriptor number and a
    datagram: the old receive fails with EBADF, the datagram goes to the new socket."""
    proc = run_child(FD_REUSE, method)
    assert_clean(proc)
    line = proc.stdout.strip()
    assert line.startswith("('error', 'EBADF') b'intruder'"), report(proc)


# -- signals --------------------------------------------------------------------------------

CTRL_C_HOLDING = """
import os, signal, socket as S, sys, threading
from pyxlio.socket import socket
method = sys.argv[1]
rx = socket(S.AF_INET, S.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = S.socket(S.AF_INET, S.SOCK_DGRAM)
for i in range(3):
    tx.sendto(b"outstanding-%d" % i, rx.getsockname())
batch = rx.recv_batch(2, timeout=5)
rx.settimeout(5)
single = rx.recvfrom_zcopy()
views = list(batch.views()) + [memoryview(single)]
# Ctrl-C raises KeyboardInterrupt even when this child inherits SIGINT ignored
# (a suite started as a background job of a non-interactive shell).
signal.signal(signal.SIGINT, signal.default_int_handler)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
rx.settimeout(None)
try:
    rx.recv_batch(64) if method == "batch" else rx.recvfrom_zcopy()
except KeyboardInterrupt:
    print("interrupted")
assert [bytes(v) for v in views] == [b"outstanding-0", b"outstanding-1", b"outstanding-2"]
for v in views:
    v.release()
batch.release(); single.release()
assert rx.outstanding == 0
rx.close()
"""


@pytest.mark.parametrize("method", ["batch", "single"])
def test_ctrl_c_interrupts_a_blocked_receive_with_buffers_outstanding(provider: str,
                                                                      method: str) -> None:
    assert_clean(run_child(CTRL_C_HOLDING, method), stdout="interrupted")


SIGTERM_CHILD = """
import signal, socket as S, sys
from pyxlio.socket import socket
if sys.argv[1] == "handler":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
rx = socket(S.AF_INET, S.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
rx.set_receive_buffer(1 << 20)
tx = S.socket(S.AF_INET, S.SOCK_DGRAM)
for i in range(20):
    tx.sendto(b"sigterm-%d" % i, rx.getsockname())
batch = rx.recv_batch(8, timeout=5)
views = list(batch.views())
more = rx.recv_batch(4, timeout=5)
print("ready", rx.getsockname()[1], flush=True)
while True:
    with rx.recv_batch(64, timeout=1) as b:
        pass
"""


@pytest.mark.parametrize("traffic", ["idle", "flood"])
@pytest.mark.parametrize("mode", ["default", "handler"])
def test_sigterm_with_buffers_outstanding(provider: str, mode: str, traffic: str) -> None:
    """SIGTERM while buffers are outstanding and a receive runs (idle, or under a flood from
    another process): the process ends (killed by the signal, or through SystemExit from a
    handler, freeing its buffers at exit), without a crash or a traceback, and the strict
    emulator finds nothing to complain about on the way out."""
    import threading

    proc = subprocess.Popen([sys.executable, "-c", child_code(SIGTERM_CHILD), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    stop = threading.Event()

    def flood(port: int) -> None:
        with stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as tx:
            while not stop.is_set():
                tx.sendto(b"flood" * 20, ("127.0.0.1", port))
                time.sleep(0.0002)

    flooder = None
    try:
        assert proc.stdout is not None
        word, port = proc.stdout.readline().split()
        assert word == "ready"
        if traffic == "flood":
            flooder = threading.Thread(target=flood, args=(int(port),))
            flooder.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WATCHDOG + 10)
    finally:
        stop.set()
        if flooder is not None:
            flooder.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    expected = -signal.SIGTERM if mode == "default" else 3
    assert_clean(done, status=expected)


# -- fork with buffers outstanding ----------------------------------------------------------

FORK_CHILD = """
import ctypes, gc, os, socket as S, sys
from pyxlio.socket import socket
how, child_exit = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
rx = socket(S.AF_INET, S.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = S.socket(S.AF_INET, S.SOCK_DGRAM)
for i in range(4):
    tx.sendto(b"parent-%d" % i, rx.getsockname())
batch = rx.recv_batch(3, timeout=5)
rx.settimeout(5)
single = rx.recvfrom_zcopy()
zcopy = batch.zcopy
view = list(batch.views())[0]
r, w = os.pipe()
# faulthandler's watchdog thread does not survive a fork: a child that kept it armed would
# wait for it forever at exit.  Disarm it across the fork, re-arm it on both sides.
faulthandler.cancel_dump_traceback_later()
pid = os.fork() if how == "os" else libc.fork()
faulthandler.dump_traceback_later(WATCHDOG, exit=True)
if pid == 0:
    os.close(r)
    status = 1
    try:
        if child_exit == "release":
            view.release()
            batch.release()                  # must not free the parent's buffers
            single.release()
            rx.close()                       # nor may close() free them
            ok = batch.released and single.released
        elif child_exit == "collect":
            view.release()
            del view, batch, single
            gc.collect()                     # collection must not free them either
            ok = True
        else:
            ok = True                        # interpreter exit with everything alive
        os.write(w, b"ok" if ok else b"bad")
        status = 0
    finally:
        if child_exit == "interpreter-exit":
            sys.exit(status)
        libc.exit(status)                    # C exit: the emulator's at-exit checks run
os.close(w)
said = os.read(r, 16)
os.close(r)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
assert said == b"ok", said
# The parent's buffers are untouched and still the parent's to free.
assert bytes(view) == b"parent-0"
assert [bytes(p) for p in batch] == [b"parent-0", b"parent-1", b"parent-2"]
assert bytes(single) == b"parent-3"
view.release()
batch.release()
single.release()
assert rx.outstanding == 0
rx.close()
print("child", code)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("child_exit", ["release", "collect", "interpreter-exit"])
@pytest.mark.parametrize("how", ["os", "libc"])
def test_forked_child_never_frees_the_parents_packets(provider: str, how: str,
                                                      child_exit: str) -> None:
    """os.fork and a C-level fork (no Python at-fork hooks run) with buffers outstanding: the
    child releasing, collecting or exiting never frees the parent's packets (the strict
    emulator in the child exits 86 if it does), and the parent's data stays intact."""
    assert_clean(run_child(FORK_CHILD, how, child_exit), stdout="child 0")


# -- receive buffer overflow ----------------------------------------------------------------

def _proc_udp_drops(sock: stdsocket.socket) -> int:
    """The kernel's drop count of this one socket (/proc/net/udp, matched by inode)."""
    inode = os.fstat(sock.fileno()).st_ino
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[9]) == inode:
                return int(fields[12])
    raise AssertionError(f"socket inode {inode} not in /proc/net/udp")


SO_RXQ_OVFL = getattr(stdsocket, "SO_RXQ_OVFL", 40)


def test_receive_buffer_overflow_drops_whole_datagrams(provider: str, make_socket) -> None:
    """A burst into a small receive buffer: datagrams are lost whole, those that arrive are
    intact and in order, and sent == received + the kernel's drop count for the socket (from
    /proc/net/udp and from SO_RXQ_OVFL)."""
    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
    rx.setsockopt(stdsocket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    rx.bind(("127.0.0.1", 0))
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    sent = 2000
    for i in range(sent):
        tx.sendto(payload(i, 300), rx.getsockname())
    seqs: list[int] = []
    while True:
        with rx.recv_batch(64, timeout=0.2) as batch:
            if not batch:
                break
            seqs.extend(check_payload(bytes(v)) for v in batch.views())
    assert seqs == sorted(set(seqs)), "datagrams duplicated or out of order"
    assert 0 < len(seqs) < sent, f"{len(seqs)} of {sent}: the burst did not overflow"
    drops = _proc_udp_drops(rx)
    assert drops == sent - len(seqs), (drops, sent, len(seqs))
    # The same count as the kernel reports it in a datagram's control data.
    tx.sendto(payload(sent, 300), rx.getsockname())
    rx.settimeout(2)
    data, ancdata, _, _ = rx.recvmsg(1024, stdsocket.CMSG_SPACE(4))
    assert check_payload(data) == sent
    counts = [struct.unpack("I", d[:4])[0] for level, kind, d in ancdata
              if level == stdsocket.SOL_SOCKET and kind == SO_RXQ_OVFL]
    assert counts == [drops], ancdata
    assert rx.outstanding == 0
    tx.close()


def test_overflow_while_receiving_keeps_every_batch_intact(provider: str, make_socket) -> None:
    """The same with the receiver running (and holding batches) during the burst."""
    import threading

    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    rx.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 8192)
    rx.bind(("127.0.0.1", 0))
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    sent = 5000
    done = threading.Event()

    def burst() -> None:
        for i in range(sent):
            tx.sendto(payload(i, 120 + i % 1400), rx.getsockname())
        done.set()

    t = threading.Thread(target=burst)
    t.start()
    seqs: list[int] = []
    kept: list[object] = []
    while True:
        batch = rx.recv_batch(32, timeout=0.3)
        if not batch and done.is_set():
            batch.release()
            break
        kept.append(batch)
        if len(kept) > 4:                    # hold a few batches while more arrive
            old = kept.pop(0)
            seqs.extend(check_payload(bytes(v)) for v in old.views())
            old.release()
    for old in kept:
        seqs.extend(check_payload(bytes(v)) for v in old.views())
        old.release()
    t.join()
    assert seqs == sorted(set(seqs))
    assert len(seqs) + _proc_udp_drops(rx) == sent
    assert rx.outstanding == 0
    tx.close()


@pytest.mark.emu_only
@pytest.mark.offloaded      # zero-copy packets the emulator counts
def test_emulator_sees_the_same_outstanding_count(provider: str, udp_pair, capfd) -> None:
    """pyxlio's outstanding count and the provider's agree (the emulator prints its own)."""
    import re

    rx, tx, addr = udp_pair
    for i in range(5):
        tx.sendto(payload(i), addr)
    batch = rx.recv_batch(3, timeout=2)
    rx.settimeout(2)
    single = rx.recvfrom_zcopy()
    batch[0].release()
    capfd.readouterr()
    rx.stats()
    line = next(x for x in capfd.readouterr().err.splitlines() if f"fd={rx.fileno()} " in x)
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    assert int(fields["outstanding"]) + int(fields["held"]) == rx.outstanding == 3
    batch.release()
    single.release()
    assert rx.outstanding == 0
