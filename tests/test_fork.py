"""fork() made from C: the child never frees the parent's zero-copy packets.

pyxlio stamps each batch with the fork generation and frees a packet only in the generation
that received it.  The generation must move in every child of a glibc fork(), including one
made from C (ctypes, a C extension), which Python's os.register_at_fork hooks never see.
"""

from __future__ import annotations

import ctypes
import json
import os

import pytest

from conftest import run_python
from pyxlio import _api


def _generation_in_child(fork: object) -> int:
    r, w = os.pipe()
    pid = fork()  # type: ignore[operator]
    if pid == 0:                                       # child: report and leave at once
        try:
            os.write(w, str(_api._fork_generation()).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        report = os.read(r, 64)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return int(report)


@pytest.mark.parametrize("how", ["ctypes", "os.fork"])
def test_every_fork_moves_the_generation_by_one(provider: str, how: str) -> None:
    # PyDLL keeps the GIL across the call, so no other thread of pytest holds it at the fork.
    fork = ctypes.PyDLL(None).fork if how == "ctypes" else os.fork
    before = _api._fork_generation()
    assert _generation_in_child(fork) == before + 1
    assert _api._fork_generation() == before             # the parent's stays


# The parent holds zero-copy packets, forks from C, and the child releases its copies (packet by
# packet and as a batch), receives and frees a packet of its own, and leaves with exit() so the
# emulator's strict checks run in the child too.  Then the parent releases its own.  Strict
# mode turns any double free or free of a parent's packet (in either process) into exit 86.
C_FORK = """
import ctypes, json, os, pyxlio
import socket
from pyxlio.socket import socket as xsocket
libc = ctypes.CDLL(None)
rx = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for m in (b"p1", b"p2", b"p3"):
    tx.sendto(m, rx.getsockname())
batch = rx.recv_batch(8, timeout=5)      # loopback: all three are queued by now
assert len(batch) == 3, len(batch)
assert all(p.zcopy for p in batch), "no zero copy under the emulator?"
r, w = os.pipe()
pid = libc.fork()
if pid == 0:
    status = 1
    try:
        os.close(r)
        batch[0].release()               # one packet
        batch.release()                  # and the rest
        tx.sendto(b"child", rx.getsockname())
        with rx.recv_batch(1, timeout=5) as own:     # the child's own packet is freed normally
            got = [bytes(p).decode() for p in own]
        os.write(w, json.dumps({{"released": batch.released, "outstanding": rx.outstanding,
                                "own": got}}).encode())
        status = 0
    finally:
        libc.exit(status)                # exit(), not _exit(): the emulator checks the child
os.close(w)
report = json.loads(os.read(r, 4096) or b"null")
os.close(r)
_, status = os.waitpid(pid, 0)
data = [bytes(p).decode() for p in batch]  # the parent's packets are intact
batch.release()
print(json.dumps({{"child": report, "child_status": os.waitstatus_to_exitcode(status),
                  "data": data, "outstanding": rx.outstanding}}))
rx.close()
"""


@pytest.mark.provider_independent
def test_child_of_a_c_fork_never_frees_the_parents_packets() -> None:
    from pyxlio import emu

    proc = run_python(C_FORK.format(), env=emu.environ(strict=True))
    assert proc.returncode == 0, proc.stderr           # the parent: no bad free, no leak
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["child_status"] == 0, proc.stderr    # the child: no bad free, no leak
    assert result["child"]["released"] is True and result["child"]["outstanding"] == 0
    assert result["child"]["own"] == ["child"]
    assert result["data"] == ["p1", "p2", "p3"] and result["outstanding"] == 0
    assert "belongs" not in proc.stderr and "parent process" not in proc.stderr
