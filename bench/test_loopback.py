"""Per-datagram receive cost on loopback: the drain (the receiver's own ceiling).

Each round: a C sender (refloop, UDP GSO) fills the socket's receive buffer (SO_RCVBUFFORCE
1 GiB) while the receiver waits, then the round times emptying exactly that many datagrams.
Runs in both passes: 'kernel' (pyxlio's recvmmsg path) and 'emu' (the emulator offloads
loopback: pyxlio's zero-copy path, and the receive callback).  C references: refloop's
recvmmsg(64) and recvfrom drains, pxbench's recvmmsg with source addresses / touching each
datagram, and (emulator) refloop zcopy / pxbench cb drains.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import run
from conftest import report

CONFIGS = [
    ("recvfrom", 1), ("recv_into", 1), ("recvmsg_into", 1), ("zcopy", 1),
    *[("batch", m) for m in run.BATCH_SIZES],
    ("views", 64), ("views_touch", 64), ("packets", 64), ("batch_noaddr", 64),
    ("views_noaddr", 64),
    pytest.param(("callback", 1), marks=pytest.mark.xlio),
]
QUICK = {("recvfrom", 1), ("batch", 64), ("views", 64), ("batch_noaddr", 64)}


def _id(c: tuple[str, int]) -> str:
    return c[0] if c[0] in ("recvfrom", "recv_into", "recvmsg_into", "zcopy", "callback") \
        else f"{c[0]}{c[1]}"


def _c_reference(method: str, provider: str, tools: dict[str, str]) -> tuple[list[str], bool, str]:
    refloop, pxb = tools["refloop"], tools["pxbench"]
    if run.METHODS[method] == "stdlib":
        return [refloop, "recv", "--mode", "recvfrom"], False, "refloop recvfrom --drain"
    if provider == "emulator" and method == "zcopy":
        return [refloop, "recv", "--mode", "zcopy"], True, "refloop zcopy --drain (emulator)"
    if method == "callback":
        return [pxb, "cb", "--every", "0"], True, "pxbench cb --every 0 --drain (emulator)"
    if provider == "emulator" and method in ("batch", "views", "packets", "batch_noaddr",
                                             "views_noaddr"):
        return ([refloop, "recv", "--mode", "zcopy-free-batch", "--batch", "64"], True,
                "refloop zcopy-free-batch --batch 64 --drain (emulator)")
    if method == "views_touch":
        return ([pxb, "mmsg", "--batch", "64", "--touch"], False,
                "pxbench mmsg --batch 64 --touch --drain")
    return ([refloop, "recv", "--mode", "recvmmsg", "--batch", "64"], False,
            "refloop recvmmsg --batch 64 --drain")


@pytest.mark.parametrize("size", run.DRAIN_SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_drain(benchmark: Any, config: tuple[str, int], size: int, quick: bool, provider: str,
               tools: dict[str, str], c_ref: Any) -> None:
    method, m = config
    if quick and ((method, m) not in QUICK or size != 64):
        pytest.skip("not in the --bench-quick set")
    count = 20_480 if quick else 102_400
    sock = run.open_udp(run.METHODS[method], 0, rcvbuf=run.DRAIN_RCVBUF, rcvtimeo=1.0)
    with contextlib.closing(sock):
        port = sock.getsockname()[1]
        loop = run.make_loop(method, sock, m, 0)

        def fill() -> None:
            run.fill(tools["refloop"], port, count, size, run.DRAIN_SENDER_CPU)
            run.wait_filled(sock)

        benchmark.group = f"loopback drain {size}B ({provider})"
        got = benchmark.pedantic(loop, args=(count,), setup=fill, rounds=3 if quick else 5,
                                 iterations=1)
        assert got == count, f"drained {got} of {count} datagrams"
        if method == "callback":
            sock.set_recv_callback(None)  # type: ignore[attr-defined]
        assert getattr(sock, "outstanding", 0) == 0

    cmd, emu, name = _c_reference(method, provider, tools)
    c_ns, _ = c_ref(f"drain {size} {name}",
                    lambda: float(run.c_drain(tools, cmd, count, size, emu)["ns_per_packet"]))
    report(benchmark, count, name, c_ns, method=method, max_packets=m, size=size,
           provider=provider)
