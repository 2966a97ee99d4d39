"""The emulator's batch pulls (tests/emu/emu_batch_check.c), strict mode.

A zero-copy receive (and a callback's, and poll's on a callback socket) takes up to 32
datagrams from the kernel with one recvmmsg and queues them in the socket's user queue.  These
checks hold the emulator to libxlio's contract through that queue: order across batch
boundaries and across every receive call, whole payloads of every size, readiness of queued
datagrams for poll/select/epoll, the queue's buffers back in the pool at close, no loss when
the pool is full, callbacks on every datagram in order, kernel timestamps kept for a recvmsg
caller, two threads receiving at once, fork, blocking and MSG_DONTWAIT.  The same cases run
again under AddressSanitizer+UBSan (slow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu"))
import emutest

pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.skipif(emutest.gcc() is None, reason="gcc is needed to build the C checks"),
]

CHECK_C = os.path.join(emutest.HERE, "emu_batch_check.c")
# 180 buffers of 1472 bytes: four batch slots' worth of the largest datagram
SMALL_POOL = {"XLIO_MEMORY_LIMIT": "264960"}
CASES: list[tuple[str, dict[str, str]]] = [
    ("order", {}),
    ("sizes", {}),
    ("readiness", {}),
    ("close", SMALL_POOL),
    ("pool-full", SMALL_POOL),
    ("callback", {}),
    ("timestamps", {}),
    ("threads", {}),
    ("fork", {}),
    ("blocking", {}),
]


def build(out: str, extra: list[str] | None = None) -> str:
    cc = emutest.gcc()
    assert cc is not None
    cmd = [cc, "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-I",
           emutest.INCLUDE, *(extra or []), CHECK_C, "-o", out, "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def batch_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    d = tmp_path_factory.mktemp("emu-batch")
    yield build(str(d / "emu_batch_check")), emutest.library(str(d))


def check(r: emutest.Result, case: str) -> None:
    assert r.rc == 0, f"{case}: rc={r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    assert f"ok {case}" in r.out
    # strict mode: no contract violation, no leak (the exit status says it too)
    assert [w for w in r.warnings() if "exhausted" not in w] == [], r.err


@pytest.mark.parametrize(("case", "env"), CASES, ids=[c[0] for c in CASES])
def test_batch_case(batch_build: tuple[str, str], case: str, env: dict[str, str]) -> None:
    prog, lib = batch_build
    r = emutest.run_case(prog, lib, case, env=env, timeout=120)
    check(r, case)
    if case == "order":
        # one zero-copy receive took a whole batch: 32 from the kernel, 31 left queued
        row = r.stats()[0]
        assert row["rx_packets"] == "32" and row["queued"] == "31", row
    if case == "pool-full":
        assert "enomem" in r.out
    if case == "threads":
        # every datagram the emulator took from the kernel reached one of the two threads
        got = int(r.out.split("received ")[1].split()[0])
        (row,) = r.stats()
        assert int(row["rx_packets"]) == got, (row, r.out)
        assert row["queued"] == "0" and row["outstanding"] == "0"


@pytest.fixture(scope="module")
def asan_batch_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    cc = emutest.gcc()
    assert cc is not None
    libasan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not (os.path.isabs(libasan) and os.path.exists(libasan)):
        pytest.skip("gcc has no libasan.so (install libasan for the sanitizer run)")
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined", "-g", "-O1"]
    d = tmp_path_factory.mktemp("emu-batch-asan")
    lib = emutest.build_emu(str(d / "emu_asan.so"), san)
    yield build(str(d / "emu_batch_check_asan"), san), lib, libasan


@pytest.mark.slow
@pytest.mark.parametrize(("case", "env"), CASES, ids=[c[0] for c in CASES])
def test_batch_case_asan_ubsan(asan_batch_build: tuple[str, str, str], case: str,
                               env: dict[str, str]) -> None:
    prog, lib, libasan = asan_batch_build
    e = dict(env)
    e["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=77"
    e["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=78"
    r = emutest.run_case(prog, lib, case, env=e, preload_prefix=libasan, timeout=300)
    assert "ERROR: AddressSanitizer" not in r.err and "runtime error" not in r.err, r.err
    assert "ERROR: LeakSanitizer" not in r.err, r.err
    check(r, case)


VALGRIND_CASES = ["order", "sizes", "readiness", "pool-full", "callback", "timestamps"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.parametrize("case", VALGRIND_CASES)
def test_batch_case_valgrind(batch_build: tuple[str, str], case: str) -> None:
    prog, lib = batch_build
    env = next(c[1] for c in CASES if c[0] == case)
    vg = [shutil.which("valgrind") or "valgrind", "-q", "--error-exitcode=99",
          "--trace-children=no", "--child-silent-after-fork=yes"]
    r = emutest.run_case(prog, lib, case, env=env, wrapper=vg, timeout=300)
    bad = ("Invalid read", "Invalid write", "Invalid free", "uninitialised", "Conditional jump",
           "Syscall param", "Mismatched free")
    assert not any(b in r.err for b in bad), r.err
    check(r, case)


PY_ORDER = r"""
import select, socket
from pyxlio.socket import socket as xsocket

rx = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
N = 100
for i in range(N):
    tx.sendto(i.to_bytes(4, "big") + bytes(60), rx.getsockname())
seq = lambda b: int.from_bytes(bytes(b[:4]), "big")
got = []
p = rx.recvfrom_zcopy()
assert p.zcopy
got.append(seq(p.tobytes()))
p.release()
# the rest of the emulator's batch waits in user space: readable for select, poll and epoll
assert select.select([rx], [], [], 0)[0] == [rx]
pl = select.poll()
pl.register(rx, select.POLLIN)
assert pl.poll(0) == [(rx.fileno(), select.POLLIN)]
ep = select.epoll()
ep.register(rx.fileno(), select.EPOLLIN)
assert ep.poll(0) == [(rx.fileno(), select.EPOLLIN)]
# the stdlib's own receive calls on the same socket take the next datagrams, in order
got.append(seq(socket.socket.recv(rx, 2048)))
data, addr = socket.socket.recvfrom(rx, 2048)
assert addr == tx.getsockname() or addr[0] == "127.0.0.1"
got.append(seq(data))
buf = bytearray(2048)
n = socket.socket.recv_into(rx, buf)
assert n == 64
got.append(seq(buf))
k = 0
while len(got) < N:
    k += 1
    if k % 2:
        with rx.recv_batch(7, timeout=5.0) as b:
            assert b.zcopy and len(b) > 0
            got.extend(seq(q.tobytes()) for q in b)
    else:
        q = rx.recvfrom_zcopy()
        got.append(seq(q.tobytes()))
        q.release()
assert got == list(range(N)), got
assert not select.select([rx], [], [], 0)[0]
assert pl.poll(0) == [] and ep.poll(0) == []
ep.close()
rx.close()
print("ok python-order")
"""


def test_python_receive_paths_keep_order(tmp_path: object) -> None:
    """Through pyxlio and the stdlib on one socket: a zero-copy receive pulls a batch, the
    socket stays readable for select/poll/epoll, and recv, recvfrom, recv_into, recv_batch
    and recvfrom_zcopy take the datagrams in order."""
    lib = emutest.library(str(tmp_path))
    env = emutest.python_env()
    env["LD_PRELOAD"] = lib
    env["PYXLIO_EMU_STRICT"] = "1"
    p = subprocess.run([sys.executable, "-c", PY_ORDER], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "ok python-order" in p.stdout, p.stdout + p.stderr


PY_EPOLL_AFTER_STALE = r"""
import os, select, socket
from pyxlio.socket import socket as xsocket

other = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
other.bind(("127.0.0.1", 0))
rx = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(4):
    tx.sendto(bytes([i]) * 64, rx.getsockname())
first = select.epoll()
first.register(rx.fileno(), select.EPOLLIN)
assert first.poll(2.0) == [(rx.fileno(), select.EPOLLIN)]
p = rx.recvfrom_zcopy()            # pulls the batch: three datagrams wait in user space
assert p.tobytes() == bytes([0]) * 64
p.release()
first_fd = first.fileno()
first.close()                      # rx's registration in it is stale now
other_fd = other.fileno()
other.close()                      # frees a lower fd number: the next epoll gets it
second = select.epoll()
assert second.fileno() not in (first_fd,), (second.fileno(), first_fd)
second.register(rx.fileno(), select.EPOLLIN)
assert second.poll(2.0) == [(rx.fileno(), select.EPOLLIN)], "queued datagrams not reported"
assert select.select([rx], [], [], 0)[0] == [rx]
got = []
while len(got) < 3:
    q = rx.recvfrom_zcopy()
    got.append(q.tobytes()[0])
    q.release()
assert got == [1, 2, 3], got
assert second.poll(0) == []
second.close()
rx.close()
print("ok epoll-after-stale", other_fd)
"""


def test_a_new_epoll_reports_queued_datagrams_after_a_closed_one(tmp_path: object) -> None:
    """A socket registered in an epoll that was closed (its registration stale) and then
    in a new epoll with ANOTHER fd number: the new one reports the datagrams the emulator
    queued in user space (it once recorded nothing and waited out the timeout)."""
    lib = emutest.library(str(tmp_path))
    env = emutest.python_env()
    env["LD_PRELOAD"] = lib
    env["PYXLIO_EMU_STRICT"] = "1"
    p = subprocess.run([sys.executable, "-c", PY_EPOLL_AFTER_STALE], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "ok epoll-after-stale" in p.stdout, p.stdout + p.stderr
