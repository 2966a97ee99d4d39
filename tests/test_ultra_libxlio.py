"""pyxlio.ultra under a real libxlio that offloads nothing here (the libxlio pass only).

Loopback is never offloaded by XLIO, so every Ultra socket these tests make is one XLIO does
not offload, on any host.  What the releases answer then (measured on 3.51.1 and 3.70.2, and
read in their src/core/sock/sock-extra.cpp and sockinfo_tcp.cpp):

- bind 127.0.0.1: 0 on 3.51 (the 16-member socket API); -1/ENODEV on 3.60+ (the kernel
  socket is bound anyway: getsockname tells its port);
- connect: -1/ENODEV on 3.60+; -1 without an errno on 3.51 (sockinfo_tcp::connect's
  passthrough_unlock): pyxlio gives ENODEV for both, never "[Errno 0]";
- send on a socket that is not connected: -1/EPIPE;
- xlio_socket_get_pd: NULL, so MemoryRegion cannot be made;
- xlio_socket_destroy: TERMINATED inside the call on 3.51, from the next poll on 3.60+;
  exactly one either way.

Every wait is bounded (ROUNDS polls of 20 ms).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pyxlio
from conftest import run_python
from pyxlio import ultra

pytestmark = pytest.mark.libxlio

ROUNDS = 200


def wait_until(group: ultra.PollGroup, cond: Callable[[], bool]) -> None:
    for _ in range(ROUNDS):
        if cond():
            return
        group.poll(timeout=0.02)
    assert cond(), f"condition not met after {ROUNDS} polls; stats {group.stats()}"


def is_ultra() -> bool:
    """The 23-member Ultra API of libxlio 3.60+ (else the 3.51 socket API)."""
    return ultra.kind() == ultra.UltraKind.ULTRA


@pytest.fixture
def started(provider: str) -> None:
    api = pyxlio.get_api()
    assert api is not None and api.provider == "libxlio"
    if api.started is False:
        pytest.skip("this libxlio failed to start (test_a_libxlio_that_did_not_start_is_"
                    "refused checks pyxlio.ultra there)")


@pytest.fixture
def events() -> list[tuple[Any, ultra.SocketEvent, int]]:
    return []


@pytest.fixture
def group(started: None, events: list[Any]) -> Iterator[ultra.PollGroup]:
    g = ultra.PollGroup(on_event=lambda s, e, v: events.append((s, e, v)))
    yield g
    g.close()
    stats = g.stats()
    assert stats["buffers"] == 0 and stats["sockets"] == 0 and stats["stray"] == 0, stats


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    """A kernel TCP listener on loopback: an address a connect could reach."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield s.getsockname()


def assert_not_offloaded(exc: pyxlio.XlioError, call: str) -> None:
    assert isinstance(exc, OSError) and not isinstance(exc, pyxlio.UnsupportedError)
    assert exc.errno == errno.ENODEV and exc.call == call
    assert "does not offload this socket" in str(exc)
    assert "Errno 0" not in str(exc)


def test_the_ultra_api_of_the_release(started: None) -> None:
    api = pyxlio.get_api()
    assert api is not None and ultra.available()
    want = (ultra.UltraKind.ULTRA if api.layout in (pyxlio.Layout.V3_60, pyxlio.Layout.V3_61)
            else ultra.UltraKind.SOCKET_API)
    assert ultra.kind() == want


def test_a_socket_xlio_does_not_offload_gives_clear_errors(group: ultra.PollGroup,
                                                           listener: tuple[str, int]) -> None:
    sock = group.socket()
    assert sock.state == "new"
    if is_ultra():
        with pytest.raises(pyxlio.XlioError) as bound:
            sock.bind(("127.0.0.1", 0))
        assert_not_offloaded(bound.value, "xlio_socket_bind")
        host, port = sock.getsockname()     # the kernel socket was bound anyway
        assert host == "127.0.0.1" and port > 0
        with pytest.raises(pyxlio.XlioError) as peer:
            sock.getpeername()
        assert peer.value.errno == errno.ENOTCONN
    else:
        sock.bind(("127.0.0.1", 0))         # 3.51: accepted (the socket is left to the OS)
        with pytest.raises(pyxlio.UnsupportedError):
            sock.getsockname()
    with pytest.raises(pyxlio.XlioError) as connected:
        sock.connect(listener)
    assert_not_offloaded(connected.value, "xlio_socket_connect")
    assert sock.state == "new"              # nothing started: no event will follow
    with pytest.raises(pyxlio.XlioError) as sent:
        sock.send(b"never")
    assert sent.value.errno == errno.EPIPE and sent.value.call == "xlio_socket_send"
    sock.send(b"")                          # nothing to send: never reaches XLIO
    if is_ultra():
        with pytest.raises(pyxlio.XlioError) as listening:
            sock.listen()
        assert_not_offloaded(listening.value, "xlio_socket_listen")
    else:
        with pytest.raises(pyxlio.UnsupportedError):
            sock.listen()
    assert group.poll(timeout=0.05) == 0    # no event for any of it


def test_connect_without_bind(group: ultra.PollGroup, listener: tuple[str, int]) -> None:
    sock = group.socket()
    with pytest.raises(pyxlio.XlioError) as connected:
        sock.connect(listener)
    assert_not_offloaded(connected.value, "xlio_socket_connect")


def test_close_ends_with_exactly_one_terminated(group: ultra.PollGroup, events: list[Any],
                                                listener: tuple[str, int]) -> None:
    sock = group.socket()
    with pytest.raises(pyxlio.XlioError):
        sock.connect(listener)
    sock.close()
    assert sock.closed and sock.state in ("closing", "terminated")
    sock.close()                            # a second close never reaches XLIO
    wait_until(group, lambda: sock.state == "terminated")
    for _ in range(5):
        group.poll(timeout=0.02)
    assert [(s, e, v) for s, e, v in events] == [(sock, ultra.SocketEvent.TERMINATED, 0)]
    assert group.sockets == [] and group.stats()["unknown"] == 0
    for call in (lambda: sock.send(b"x"), lambda: sock.connect(listener),
                 lambda: sock.bind(("127.0.0.1", 0)), sock.flush,
                 lambda: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF


def test_memory_region_says_there_is_no_protection_domain(group: ultra.PollGroup,
                                                           listener: tuple[str, int]) -> None:
    sock = group.socket()
    for attempt in ("new", "after connect"):
        with pytest.raises(pyxlio.UnsupportedError) as info:
            ultra.MemoryRegion(sock, bytearray(4096))
        assert info.value.call == "xlio_socket_get_pd", attempt
        assert "no protection domain" in str(info.value)
        assert "send()" in str(info.value)          # says what is left
        with pytest.raises(pyxlio.XlioError):
            sock.connect(listener)
    sock.close()
    with pytest.raises(OSError) as closed:
        ultra.MemoryRegion(sock, bytearray(4096))
    assert closed.value.errno == errno.EBADF


def test_setsockopt_passes_xlio_answers(group: ultra.PollGroup) -> None:
    sock = group.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with pytest.raises(pyxlio.XlioError) as info:
        sock.setsockopt(9999, 1, 1)
    assert info.value.errno == errno.ENOPROTOOPT
    assert info.value.call == "xlio_socket_setsockopt"


@pytest.mark.parametrize("flags", [ultra.GroupFlag(0), ultra.GroupFlag.SAFE,
                                   ultra.GroupFlag.DIRTY,
                                   ultra.GroupFlag.SAFE | ultra.GroupFlag.DIRTY])
def test_group_close_terminates_every_socket(started: None, listener: tuple[str, int],
                                             flags: ultra.GroupFlag) -> None:
    seen: list[tuple[Any, ultra.SocketEvent]] = []
    g = ultra.PollGroup(flags, on_event=lambda s, e, v: seen.append((s, e)))
    socks = [g.socket(), g.socket(), g.socket(socket.AF_INET6)]
    with pytest.raises(pyxlio.XlioError):
        socks[1].connect(listener)
    socks[2].close()                        # one closed before the group
    # its TERMINATED: queued inside destroy (3.51) or by this poll (3.60+), dispatched here
    assert g.poll(timeout=0.0) == 1
    assert seen == [(socks[2], ultra.SocketEvent.TERMINATED)]
    g.flush()
    g.close()
    assert g.closed and g.sockets == []
    assert all(s.state == "terminated" and s.closed for s in socks)
    assert len(seen) == 1                   # close() runs no handler
    stats = g.stats()
    assert stats["buffers"] == 0 and stats["inflight"] == 0 and stats["stray"] == 0
    g.close()                               # a second close does nothing
    with pytest.raises(OSError) as info:
        g.socket()
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError):
        g.poll()


def test_many_sockets_made_and_closed(group: ultra.PollGroup, events: list[Any]) -> None:
    """Slots are reused after TERMINATED; nothing leaks or crashes (bounded: 3 x 50)."""
    for _ in range(3):
        socks = [group.socket() for _ in range(50)]
        for s in socks:
            s.close()
        wait_until(group, lambda batch=socks: all(s.state == "terminated" for s in batch))
    assert len(events) == 150
    assert all(e is ultra.SocketEvent.TERMINATED for _, e, _ in events)
    assert group.sockets == []


LIVE_AT_EXIT = """
from pyxlio import ultra
g = ultra.PollGroup()
s = g.socket()
try:
    s.bind(("127.0.0.1", 0))
except OSError:
    pass
KEEP = (g, s)       # alive at exit: XLIO's exit handler raises TERMINATED for the socket
print("made")
"""


def test_exit_with_a_live_group_and_socket(started: None) -> None:
    """libxlio's exit handler calls the event callback for a live socket (3.51.1 and 3.70.2):
    outside any pyxlio call, so pyxlio only counts it; the process exits cleanly."""
    proc = run_python(LIVE_AT_EXIT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "made"
    assert "Fatal Python error" not in proc.stderr and "Segmentation" not in proc.stderr


def test_a_libxlio_that_did_not_start_is_refused(provider: str) -> None:
    """Where libxlio failed to start (no usable RDMA stack), xlio_init_ex fails, or (3.70.2,
    called again) answers 0 although nothing started, and its sockets then crash the process:
    pyxlio.ultra refuses every PollGroup with the same XlioError and never calls XLIO again."""
    api = pyxlio.get_api()
    assert api is not None
    if api.started is not False:
        g = ultra.PollGroup()               # started: the Ultra API initialises
        assert ultra.initialised()
        g.close()
        return
    errors = []
    for _ in range(3):
        with pytest.raises(pyxlio.XlioError) as info:
            ultra.PollGroup()
        errors.append((info.value.errno, info.value.call))
        assert "start" in str(info.value)
    assert errors[0][0] != 0 and len(set(errors)) == 1 and errors[0][1] == "xlio_init_ex"
    assert not ultra.initialised()
