"""Two test hosts on one machine: two network namespaces joined by a veth pair.

Addresses come from TEST-NET-1 (192.0.2.0/24), which exists only inside the namespaces; each
side has a multicast route on its veth end, so group traffic stays between the two.  Needs root
and iproute2: the caller's test is skipped with that reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest

__all__ = ["ip", "two_namespaces"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def two_namespaces(prefix: str, a_addrs: Iterable[str],
                   b_addrs: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Yield the names of two fresh namespaces, `a_addrs` on A's veth end and `b_addrs` on
    B's (each /24); both are deleted on exit.  `prefix` (two letters) names them in `ip netns`."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = uuid.uuid4().hex[:6]
    a_ns, b_ns = f"px{prefix}a{tag}", f"px{prefix}b{tag}"
    a_dev, b_dev = f"v{prefix}a{tag}", f"v{prefix}b{tag}"
    try:
        ip("netns", "add", a_ns)
        ip("netns", "add", b_ns)
        ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev)
        ip("link", "set", a_dev, "netns", a_ns)
        ip("link", "set", b_dev, "netns", b_ns)
        for ns, dev, addrs in ((a_ns, a_dev, a_addrs), (b_ns, b_dev, b_addrs)):
            for addr in addrs:
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
    except (subprocess.CalledProcessError, OSError) as exc:
        for ns in (a_ns, b_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"network namespaces are not available here: {exc}")
    try:
        yield a_ns, b_ns
    finally:
        for ns in (a_ns, b_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
