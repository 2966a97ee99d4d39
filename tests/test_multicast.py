"""Multicast as market-data receivers use it, between two test hosts.

Two network namespaces joined by a veth pair (addresses from TEST-NET-1, 192.0.2.0/24, which
exist only inside them): a sender in one, a pyxlio receiver in the other, run under this pass's
provider (the emulator's LD_PRELOAD is inherited).  Plain and source-specific joins, leave, and
the receiver factory's options.  Needs root and iproute2; skipped with that reason elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

GROUP, PORT = "239.1.2.3", 31001
SENDER_IP, RECEIVER_IP, OTHER_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = uuid.uuid4().hex[:6]
    tx_ns, rx_ns = f"pxtx{tag}", f"pxrx{tag}"
    try:
        _ip("netns", "add", tx_ns)
        _ip("netns", "add", rx_ns)
        _ip("link", "add", f"vtx{tag}", "type", "veth", "peer", "name", f"vrx{tag}")
        _ip("link", "set", f"vtx{tag}", "netns", tx_ns)
        _ip("link", "set", f"vrx{tag}", "netns", rx_ns)
        for ns, dev, addrs in ((tx_ns, f"vtx{tag}", (SENDER_IP, OTHER_IP)),
                               (rx_ns, f"vrx{tag}", (RECEIVER_IP,))):
            for addr in addrs:
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
    except (subprocess.CalledProcessError, OSError) as exc:
        for ns in (tx_ns, rx_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"network namespaces are not available here: {exc}")
    yield tx_ns, rx_ns
    for ns in (tx_ns, rx_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


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


def test_group_join_receives_every_datagram(provider: str, hosts: tuple[str, str]) -> None:
    result = _run(hosts, "", 20)
    assert result["got"] == [f"md-{SENDER_IP}-{i:04d}" for i in range(20)]
    assert result["senders"] == [SENDER_IP]
    assert result["zcopy"] == [provider == "emu"]
    assert result["rcvbuf"] >= 1 << 20           # the factory's large receive buffer


def test_source_specific_join_filters_by_sender(provider: str, hosts: tuple[str, str]) -> None:
    result = _run(hosts, SENDER_IP, 20, senders=(OTHER_IP, SENDER_IP))
    assert result["senders"] == [SENDER_IP]
    assert len(result["got"]) == 20


def test_source_specific_join_of_a_silent_source(provider: str, hosts: tuple[str, str]) -> None:
    result = _run(hosts, OTHER_IP, 0)
    assert result["got"] == []


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
