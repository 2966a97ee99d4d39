"""Multicast as market-data receivers use it, between two test hosts.

Two network namespaces joined by a veth pair (addresses from TEST-NET-1, 192.0.2.0/24, which
exist only inside them): a sender in one, a pyxlio receiver in the other, run under this pass's
provider (the emulator's LD_PRELOAD is inherited).  Plain and source-specific joins, leave, and
the receiver factory's options; joins and leaves while senders keep sending at a steady, bounded
rate.  Every test that sends also watches the host's own network namespace (a packet socket on
all of its interfaces, filtered to the test group): none of this traffic may show up there.
Needs root and iproute2; skipped with that reason elsewhere.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from netns import two_namespaces

GROUP, PORT = "239.1.2.3", 31001
SENDER_IP, RECEIVER_IP, OTHER_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[str, str]]:
    with two_namespaces("tx", (SENDER_IP, OTHER_IP), (RECEIVER_IP,)) as (tx_ns, rx_ns):
        yield tx_ns, rx_ns


RECEIVER = """
import json, sys, time
from pyxlio.socket import multicast_receiver
group, port, source, expect = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, int(sys.argv[4])
rx = multicast_receiver(group, port, interface=RECEIVER_IP, source=source)
print("ready", flush=True)
got, zcopy, senders = [], set(), set()
deadline = time.monotonic() + (5 if expect else 1.5)
while len(got) < max(expect, 1) and time.monotonic() < deadline:
    with rx.recv_batch(64, timeout=0.2) as batch:
        got += [bytes(v) for v in batch.views()]
        if batch:
            zcopy.add(batch.zcopy)
        senders.update(a[0] for a in batch.addresses)
rcvbuf = rx.getsockopt(1, 8)
rx.leave_multicast(group, RECEIVER_IP, source)
rx.close()
print(json.dumps({"got": [g.decode() for g in got], "zcopy": sorted(zcopy),
                  "senders": sorted(senders), "rcvbuf": rcvbuf}))
""".replace("RECEIVER_IP", repr(RECEIVER_IP))

SENDER = """
import socket, sys, time
src, group, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for i in range(count):
    s.sendto(b"md-%s-%04d" % (src.encode(), i), (group, port))
    time.sleep(0.001)
"""


def _run(hosts: tuple[str, str], source: str, expect: int,
         senders: tuple[str, ...] = (SENDER_IP,)) -> dict[str, object]:
    tx_ns, rx_ns = hosts
    rx = subprocess.Popen(["ip", "netns", "exec", rx_ns, sys.executable, "-c", RECEIVER, GROUP,
                           str(PORT), source, str(expect)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert rx.stdout is not None
        line = rx.stdout.readline()
        assert line.strip() == "ready", rx.stderr.read() if rx.stderr else line
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        for ip in senders:
            subprocess.run(["ip", "netns", "exec", tx_ns, sys.executable, "-c", SENDER, ip, GROUP,
                            str(PORT), "20"], check=True, timeout=30, env=env)
        out, err = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
    assert rx.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_group_join_receives_every_datagram(provider: str, hosts: tuple[str, str],
                                             host_leaks: Callable[[], list[str]]) -> None:
    result = _run(hosts, "", 20)
    assert result["got"] == [f"md-{SENDER_IP}-{i:04d}" for i in range(20)]
    assert result["senders"] == [SENDER_IP]
    assert result["zcopy"] == [provider in ("emu", "emu-vma")]
    assert result["rcvbuf"] >= 1 << 20           # the factory's large receive buffer
    assert host_leaks() == []


def test_source_specific_join_filters_by_sender(provider: str, hosts: tuple[str, str],
                                                host_leaks: Callable[[], list[str]]) -> None:
    result = _run(hosts, SENDER_IP, 20, senders=(OTHER_IP, SENDER_IP))
    assert result["senders"] == [SENDER_IP]
    assert len(result["got"]) == 20
    assert host_leaks() == []


def test_source_specific_join_of_a_silent_source(provider: str, hosts: tuple[str, str],
                                                 host_leaks: Callable[[], list[str]]) -> None:
    result = _run(hosts, OTHER_IP, 0)
    assert result["got"] == []
    assert host_leaks() == []


def test_bad_multicast_arguments(provider: str, make_socket) -> None:
    import socket as stdsocket

    from pyxlio.socket import multicast_receiver

    s = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    with pytest.raises(OSError):
        s.join_multicast("not-an-ip")
    with pytest.raises(OSError):
        multicast_receiver("239.9.9.9", 31002, interface="300.1.1.1")
    s6 = make_socket(stdsocket.AF_INET6, stdsocket.SOCK_DGRAM)
    with pytest.raises(ValueError, match="IPv4"):
        s6.join_multicast("ff02::1", source="::1")
    with pytest.raises(ValueError):
        s.set_receive_buffer(0)


# -- the host's namespace must see none of it ---------------------------------------------------

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PROBE_PORT = 31009


def _group_filter(group: str) -> bytes:
    """Classic BPF for a SOCK_DGRAM packet socket (data starts at the IP header): accept IPv4
    UDP to `group`, reject the rest in the kernel."""
    addr = struct.unpack("!I", socket.inet_aton(group))[0]
    code = [(0x20, 0, 0, 16),       # A = destination address
            (0x15, 0, 3, addr),     # A == group ? next : reject
            (0x30, 0, 0, 9),        # A = protocol (byte)
            (0x15, 0, 1, 17),       # A == UDP ? accept : reject
            (0x06, 0, 0, 0xFFFF),   # accept
            (0x06, 0, 0, 0)]        # reject
    return b"".join(struct.pack("HBBI", *ins) for ins in code)


def _captured(cap: socket.socket, probe: bytes) -> tuple[list[str], bool]:
    """(datagrams to GROUP seen, whether `probe` was among them).  Probes go to PROBE_PORT
    and are left out of the list: other test processes on this host send theirs too."""
    out = []
    probed = False
    for _ in range(100_000):
        try:
            data, addr = cap.recvfrom(65535)
        except BlockingIOError:
            break
        if len(data) >= 24 and data[16:20] == socket.inet_aton(GROUP) and data[9] == 17:
            ihl = (data[0] & 15) * 4
            port = struct.unpack("!H", data[ihl + 2:ihl + 4])[0]
            if port == PROBE_PORT:
                probed = probed or data[ihl + 8:] == probe
                continue
            out.append(f"{addr[0]}: {socket.inet_ntoa(data[12:16])} -> {GROUP}:{port}")
    return out, probed


@pytest.fixture
def host_leaks(hosts: tuple[str, str]) -> Iterator[Callable[[], list[str]]]:
    """Datagrams to GROUP seen in this process's network namespace (the host's), on any of its
    interfaces, either direction, since the fixture started.  A packet socket with a filter
    in the kernel; proven to see such a datagram first (one sent over loopback, TTL 0)."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    try:
        code = _group_filter(GROUP)
        prog = ctypes.create_string_buffer(code, len(code))
        cap.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                       struct.pack("HL", len(code) // 8, ctypes.addressof(prog)))
        cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        cap.setblocking(False)
        token = f"pyxlio-probe {os.getpid()} {time.monotonic_ns()}".encode()
        _captured(cap, token)               # what came before the filter was attached
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with probe:
            probe.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             socket.inet_aton("127.0.0.1"))
            probe.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            probe.sendto(token, (GROUP, PROBE_PORT))
        seen: list[str] = []
        probed = False
        deadline = time.monotonic() + 5
        while not probed and time.monotonic() < deadline:
            more, probed = _captured(cap, token)
            seen += more
            time.sleep(0.01)
        assert probed, (f"the host capture does not see a datagram to {GROUP} sent over "
                        f"loopback: {seen}")
        yield lambda: _captured(cap, token)[0]
    finally:
        cap.close()


# -- joins and leaves while senders keep sending ------------------------------------------------

STEADY = """
import socket, sys, time
src, group = sys.argv[1], sys.argv[2]
port, rate, seconds = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
t0 = time.monotonic()
seq = 0
while seq < rate * seconds:              # bounded in count (and so in time)
    s.sendto(b"%s %d" % (src.encode(), seq), (group, port))
    if seq == 0:
        print("sending", flush=True)
    seq += 1
    delay = t0 + seq / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""

PHASES = """
import json, socket, sys, time
from pyxlio.socket import socket as xsocket
group, port = sys.argv[1], int(sys.argv[2])
rx = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.bind((group, port))

def parse(data):
    src, seq = data.split()
    return src.decode(), int(seq)

def take(enough, seconds):
    # (source, sequence) of what arrives until enough(got) or `seconds` passed
    got, deadline = [], time.monotonic() + seconds
    while not enough(got):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with rx.recv_batch(64, timeout=min(left, 0.05)) as b:
            got += [parse(bytes(v)) for v in b.views()]
    return got

def drain():
    # what is queued now: until a 20 ms wait brings nothing (at most 2 s)
    got, deadline = [], time.monotonic() + 2
    while time.monotonic() < deadline:
        with rx.recv_batch(64, timeout=0.02) as b:
            if not b:
                break
            got += [parse(bytes(v)) for v in b.views()]
    return got

def count(src, n):
    return lambda got: sum(1 for s, _ in got if s == src) >= n

out = {}
"""

JOIN_LEAVE = PHASES + """
out["before_join"] = take(count(SENDER_IP, 1), 0.3)
rx.join_multicast(group, RECEIVER_IP)
out["joined"] = take(count(SENDER_IP, 50), 10)
rx.leave_multicast(group, RECEIVER_IP)
out["queued_at_leave"] = drain()
out["after_leave"] = take(count(SENDER_IP, 1), 0.5)
rx.join_multicast(group, RECEIVER_IP)
out["rejoined"] = take(count(SENDER_IP, 50), 10)
rx.leave_multicast(group, RECEIVER_IP)
out["outstanding"] = rx.outstanding
rx.close()
print(json.dumps(out))
""".replace("RECEIVER_IP", repr(RECEIVER_IP)).replace("SENDER_IP", repr(SENDER_IP))

SSM_LEAVE = PHASES + """
rx.join_multicast(group, RECEIVER_IP, SENDER_IP)
rx.join_multicast(group, RECEIVER_IP, OTHER_IP)
out["both"] = take(lambda g: count(SENDER_IP, 20)(g) and count(OTHER_IP, 20)(g), 10)
rx.leave_multicast(group, RECEIVER_IP, OTHER_IP)
out["queued_at_leave"] = drain()
out["one"] = take(count(SENDER_IP, 200), 10)
rx.join_multicast(group, RECEIVER_IP, OTHER_IP)
out["rejoined"] = take(count(OTHER_IP, 20), 10)
rx.leave_multicast(group, RECEIVER_IP, SENDER_IP)
rx.leave_multicast(group, RECEIVER_IP, OTHER_IP)
out["outstanding"] = rx.outstanding
rx.close()
print(json.dumps(out))
""".replace("RECEIVER_IP", repr(RECEIVER_IP)).replace("SENDER_IP", repr(SENDER_IP)).replace(
    "OTHER_IP", repr(OTHER_IP))

RATE = 1000            # datagrams a second from each sender
SEND_SECONDS = 20      # a sender stops by itself after this (the test ends it sooner)


def _session(hosts: tuple[str, str], script: str, port: int,
             senders: tuple[str, ...]) -> dict[str, list[tuple[str, int]]]:
    """Start steady senders in the sender namespace, then the receiver `script` in the
    receiver's (under this pass's provider); its JSON result."""
    tx_ns, rx_ns = hosts
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    procs = []
    try:
        for ip in senders:
            p = subprocess.Popen(["ip", "netns", "exec", tx_ns, sys.executable, "-c", STEADY,
                                  ip, GROUP, str(port), str(RATE), str(SEND_SECONDS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
            procs.append(p)
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "sending", p.stderr.read() if p.stderr else ""
        rx = subprocess.run(["ip", "netns", "exec", rx_ns, sys.executable, "-c", script, GROUP,
                             str(port)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ))
        for p in procs:
            assert p.poll() is None, "a sender stopped before the receiver was done"
    finally:
        for p in procs:
            p.kill()
            p.communicate(timeout=10)
    assert rx.returncode == 0, rx.stderr
    result: dict[str, list[tuple[str, int]]] = json.loads(rx.stdout.strip().splitlines()[-1])
    return result


def _seqs(got: list[tuple[str, int]], src: str) -> list[int]:
    return [q for s, q in got if s == src]


def _consecutive(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


def test_join_leave_rejoin_while_traffic_flows(provider: str, hosts: tuple[str, str],
                                               host_leaks: Callable[[], list[str]]) -> None:
    r = _session(hosts, JOIN_LEAVE, PORT + 1, (SENDER_IP,))
    assert r["before_join"] == []                         # bound, not joined: nothing
    joined = _seqs(r["joined"], SENDER_IP)
    assert len(joined) == len(r["joined"]) >= 50 and _consecutive(joined), r["joined"]
    # After the leave: only what was already queued, continuing the sequence without a gap ...
    queued = _seqs(r["queued_at_leave"], SENDER_IP)
    assert len(queued) == len(r["queued_at_leave"]) and _consecutive(joined + queued), queued
    # ... then nothing for half a second, while the sender goes on (the rejoin shows it).
    assert r["after_leave"] == []
    rejoined = _seqs(r["rejoined"], SENDER_IP)
    assert len(rejoined) == len(r["rejoined"]) >= 50 and _consecutive(rejoined), r["rejoined"]
    missed = rejoined[0] - (joined + queued)[-1] - 1
    assert missed >= 100, f"the sender sent only {missed} datagrams while we were out"
    assert r["outstanding"] == 0
    assert host_leaks() == []


def test_source_specific_leave_of_one_source_while_both_send(
        provider: str, hosts: tuple[str, str], host_leaks: Callable[[], list[str]]) -> None:
    r = _session(hosts, SSM_LEAVE, PORT + 2, (SENDER_IP, OTHER_IP))
    phases = ("both", "queued_at_leave", "one", "rejoined")
    assert {s for p in phases for s, _ in r[p]} == {SENDER_IP, OTHER_IP}
    # The source still joined loses nothing across the other's leave and rejoin.
    kept = [q for p in phases for q in _seqs(r[p], SENDER_IP)]
    assert _consecutive(kept), kept
    # The source left: joined, then only what was queued at its leave, then nothing while
    # 200 datagrams of the other arrive, then again after the rejoin.
    before = _seqs(r["both"], OTHER_IP) + _seqs(r["queued_at_leave"], OTHER_IP)
    assert len(_seqs(r["both"], OTHER_IP)) >= 20 and _consecutive(before), before
    assert len(_seqs(r["one"], SENDER_IP)) >= 200
    assert _seqs(r["one"], OTHER_IP) == [], r["one"]
    after = _seqs(r["rejoined"], OTHER_IP)
    assert len(after) >= 20 and _consecutive(after), after
    assert after[0] - before[-1] - 1 >= 50, (before[-1], after[0])   # it sent meanwhile
    assert r["outstanding"] == 0
    assert host_leaks() == []
