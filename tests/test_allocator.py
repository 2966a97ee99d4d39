"""User allocators under attack: what a Python alloc may hand to XLIO, allocator calls made after
Python finalized, and the built-in allocators' block tables.

XLIO takes a user allocator only before it starts, so the Python-allocator cases run in a fresh
interpreter under the emulator in strict mode (a contract violation or a leaked packet makes it
exit 86): they register the allocator first thing, start XLIO, and receive a datagram, which
the emulator writes into the pool.  A bad address that reached it would crash that write.
"""

from __future__ import annotations

import ctypes
import json
import warnings

import pytest

import pyxlio
from conftest import run_python
from pyxlio import _api

# A fresh interpreter: register `alloc`, start XLIO, receive one datagram through zero copy.
# Only ctypes and mmap are imported before XLIO starts (ctypes.util would start it).
BAD_ALLOC = """
import ctypes, json, pyxlio
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
NONE, R, RW, FLAGS = 0, 1, 3, 0x02 | 0x20 | 0x4000      # MAP_PRIVATE|ANONYMOUS|NORESERVE
def mapped(n, prot=RW):
    a = libc.mmap(None, n, prot, FLAGS, -1, 0)
    assert a not in (None, 2 ** 64 - 1), ctypes.get_errno()
    return a
def alloc(n):
{body}
pyxlio.set_allocator(alloc, lambda address: None)
import socket
from pyxlio.socket import socket as xsocket
rx = xsocket(socket.AF_INET, socket.SOCK_DGRAM)         # starts XLIO: alloc is called here
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.sendto(b"the first packet", rx.getsockname())
with rx.recv_batch(4, timeout=5) as batch:
    data = [bytes(p).decode() for p in batch]
rx.close()
tx.close()
st = pyxlio.allocator_state()
print(json.dumps({{"data": data, "alloc_calls": st["alloc_calls"],
                  "errors": [f"{{type(e).__name__}}: {{e}}" for e in st["errors"]]}}))
"""

BAD_RETURNS = {
    # returned address -> what the report must say
    "unmapped": ("    a = mapped(n)\n    libc.munmap(a, n)\n    return a", "not mapped"),
    "read-only": ("    return mapped(n, R)", "readable and writable"),
    "misaligned": ("    return mapped(n + 4096) + 1", "aligned"),
    "misaligned-8": ("    return mapped(n + 4096) + 8", "aligned"),
    # the first half usable, the rest reserved without access: too short for XLIO's pool
    "too-short": ("    a = mapped(n + 4096, NONE)\n    libc.mprotect(a, n // 2, RW)\n    return a",
                  "readable and writable"),
    "beyond-the-address-space": ("    return 2 ** 64 - 4096", "address space"),
    "huge": ("    return 1 << 63", "not mapped"),
    "NULL": ("    return 0", "NULL"),
    "negative": ("    return -4096", "not an address"),
    "too-big-an-int": ("    return 2 ** 70", "not an address"),
    "None": ("    return None", "TypeError"),
    "str": ("    return '0x7f0000000000'", "TypeError"),
    "float": ("    return 4096.0", "TypeError"),
    "bool": ("    return True", "TypeError"),
    "raises": ("    raise MemoryError('no pool for you')", "no pool for you"),
}


@pytest.mark.provider_independent
@pytest.mark.parametrize("case", list(BAD_RETURNS))
def test_a_bad_python_allocator_is_reported_and_xlio_gets_null(case: str) -> None:
    from pyxlio import emu

    body, expected = BAD_RETURNS[case]
    proc = run_python(BAD_ALLOC.format(body=body), env=emu.environ(strict=True,
                                                                   memory_limit=8 << 20))
    assert proc.returncode == 0, proc.stderr            # no crash, no strict-mode violation
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["alloc_calls"] == 1
    assert len(state["errors"]) == 1, state["errors"]
    assert expected in state["errors"][0]
    assert expected in proc.stderr                       # shown, not only kept
    # XLIO got NULL: the emulator then serves its pool from its own mmap (a real libxlio 3.51
    # fails to start instead: see set_allocator's docstring), so the datagram still arrives.
    assert "user allocator returned NULL" in proc.stderr
    assert state["data"] == ["the first packet"]


@pytest.mark.provider_independent
def test_a_good_python_allocator_serves_the_pool() -> None:
    from pyxlio import emu

    body = "    return mapped(n)"
    proc = run_python(BAD_ALLOC.format(body=body), env=emu.environ(strict=True,
                                                                   memory_limit=8 << 20))
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["errors"] == [] and state["alloc_calls"] == 1
    assert "returned NULL" not in proc.stderr
    assert state["data"] == ["the first packet"]


# -- calls made after Python finalized --------------------------------------------------------

# XLIO frees its pools from a library destructor, after Py_FinalizeEx; _trampoline_at_exit
# (a private hook) calls a trampoline from a C atexit handler, which runs at that time too.
AT_EXIT = """
import mmap, ctypes, os, pyxlio
blocks = {{}}
def alloc(n):
    os.write(1, b"python alloc called\\n")
    m = mmap.mmap(-1, n)
    address = ctypes.addressof(ctypes.c_char.from_buffer(m))
    blocks[address] = m
    return address
def free(address):
    os.write(1, b"python free called\\n")
pyxlio.set_allocator(alloc, free)
import socket
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()     # XLIO starts: alloc is called
from pyxlio import _api
_api._trampoline_at_exit({which!r}, {value})
"""


@pytest.mark.provider_independent
def test_free_after_python_finalized_leaks_instead_of_calling_python() -> None:
    from pyxlio import emu

    code = AT_EXIT.format(which="free", value="next(iter(blocks))")
    proc = run_python(code, env=emu.environ(strict=True, memory_limit=8 << 20))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["python alloc called"]   # free never reached Python
    assert "pyxlio-test: free trampoline returned" in proc.stderr
    assert "Fatal Python error" not in proc.stderr


@pytest.mark.provider_independent
def test_alloc_after_python_finalized_returns_null() -> None:
    from pyxlio import emu

    proc = run_python(AT_EXIT.format(which="alloc", value=1 << 20),
                      env=emu.environ(strict=True, memory_limit=8 << 20))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["python alloc called"]   # only XLIO's own call
    assert "pyxlio-test: alloc trampoline returned 0x0" in proc.stderr
    assert "after Python finalized" in proc.stderr


# A daemon thread starts XLIO and is inside the Python alloc when the main thread exits: the
# exit waits for the call to finish (else finalization would kill the thread inside XLIO's init).
EXIT_DURING_ALLOC = """
import ctypes, mmap, os, sys, threading, time, pyxlio
inside = threading.Event()
blocks = {}
def alloc(n):
    inside.set()
    time.sleep(0.5)                      # the main thread is exiting meanwhile
    m = mmap.mmap(-1, n)
    address = ctypes.addressof(ctypes.c_char.from_buffer(m))
    blocks[address] = m
    os.write(1, b"alloc finished\\n")
    return address
pyxlio.set_allocator(alloc, lambda address: None)
import _socket                           # not socket: its import would start XLIO right here
threading.Thread(target=lambda: _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM),
                 daemon=True).start()
assert inside.wait(30)
sys.exit(0)
"""


@pytest.mark.provider_independent
def test_exit_waits_for_an_allocator_call_inside_python() -> None:
    from pyxlio import emu

    proc = run_python(EXIT_DURING_ALLOC, env=emu.environ(strict=True, memory_limit=8 << 20))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["alloc finished"], proc.stderr
    assert "Fatal Python error" not in proc.stderr


# -- the built-in allocators' block tables ----------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_PAGE = 4096
_MINCORE_VEC = ctypes.create_string_buffer(1)


def _is_mapped(address: int) -> bool:
    """Is the page holding `address` mapped?  mincore() fails with ENOMEM for an unmapped
    page.  One C call and no allocation of its own: asked right after a munmap, nothing in
    between (a read of /proc/self/maps allocates, and under ASan a new mapping may then land
    at the address just freed)."""
    page = address & ~(_PAGE - 1)
    if _libc.mincore(page, _PAGE, _MINCORE_VEC) == 0:
        return True
    assert ctypes.get_errno() == 12, ctypes.get_errno()     # ENOMEM, not EINVAL/EFAULT
    return False


@pytest.mark.parametrize("kind", ["aligned", "hugepages"])
def test_builtin_allocators_track_more_than_64_blocks(provider: str, kind: str) -> None:
    state = pyxlio.allocator_state()
    freed, errors = state["free_calls"], len(state["errors"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # hugepages may fall back, once
        addresses = [_api._builtin_alloc(kind, 4096) for _ in range(100)]
    assert all(addresses) and len(set(addresses)) == 100
    still_mapped = []
    for address in addresses:
        assert _is_mapped(address)
        _api._builtin_free(address)
        if kind == "hugepages" and _is_mapped(address):  # mmap'ed blocks: really unmapped
            still_mapped.append(address)
    state = pyxlio.allocator_state()
    assert state["free_calls"] - freed == 100          # the 65th and later were freed too
    assert len(state["errors"]) == errors
    assert still_mapped == []


def test_builtin_free_of_an_address_it_never_gave_is_reported(provider: str) -> None:
    keep = bytearray(4096)                             # Python's memory: free/munmap would wreck it
    foreign = ctypes.addressof((ctypes.c_char * len(keep)).from_buffer(keep))
    errors = len(pyxlio.allocator_state()["errors"])
    _api._builtin_free(foreign)
    state = pyxlio.allocator_state()
    assert len(state["errors"]) == errors + 1
    assert "never" in str(state["errors"][-1]) and f"{foreign:#x}" in str(state["errors"][-1])
    keep[:] = b"x" * 4096                              # still ours, still writable
    # a double free is a free of an address it no longer gave
    address = _api._builtin_alloc("aligned", 64)
    _api._builtin_free(address)
    _api._builtin_free(address)
    assert len(pyxlio.allocator_state()["errors"]) == errors + 2


def test_builtin_free_of_null_is_a_no_op(provider: str) -> None:
    state = pyxlio.allocator_state()
    _api._builtin_free(0)
    after = pyxlio.allocator_state()
    assert after["errors"] == state["errors"] and after["free_calls"] == state["free_calls"]

