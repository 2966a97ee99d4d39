"""Per-datagram receive cost on the emulator's in-memory feed (no system call per datagram).

What is left is the receive path itself: Python's socket calls, pyxlio's recvfrom_zcopy /
recv_batch / callbacks, and the emulator's packet making, which the C references share
(refloop recvfrom / zcopy / zcopy-free-batch, pxbench cb, under the same feed).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import run
from conftest import report

pytestmark = pytest.mark.emu_feed

# (method, max_packets, C reference mode, C batch)
CONFIGS = [
    ("recvfrom", 1, "recvfrom", 1),
    ("recv_into", 1, "recvfrom", 1),
    ("recvmsg_into", 1, "recvfrom", 1),
    ("zcopy", 1, "zcopy", 1),
    *[("batch", m, "zcopy-free-batch", m) for m in run.BATCH_SIZES],
    *[("views", m, "zcopy-free-batch", m) for m in (16, 64, 256)],
    ("views_touch", 64, "zcopy-free-batch", 64),
    ("packets", 64, "zcopy-free-batch", 64),
    ("batch_noaddr", 64, "zcopy-free-batch", 64),
    ("callback", 1, "cb", 1),
]
QUICK = {("recvfrom", 1), ("zcopy", 1), ("batch", 1), ("batch", 64), ("views", 64),
         ("packets", 64), ("callback", 1)}


def _id(c: tuple[str, int, str, int]) -> str:
    return c[0] if c[0] in ("recvfrom", "recv_into", "recvmsg_into", "zcopy", "callback") \
        else f"{c[0]}{c[1]}"


@pytest.mark.parametrize("size", run.FEED_SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_feed(benchmark: Any, config: tuple[str, int, str, int], size: int, quick: bool,
              feed_base: int, tools: dict[str, str], c_ref: Any) -> None:
    method, m, cmode, cbatch = config
    if quick and ((method, m) not in QUICK or size != 64):
        pytest.skip("not in the --bench-quick set")
    count = 20_480 if quick else 102_400
    port = run.feed_port(feed_base, size)
    feed = run.feed_spec(feed_base)
    sock = run.open_udp(run.METHODS[method], port, rcvtimeo=None)
    with contextlib.closing(sock):
        loop = run.make_loop(method, sock, m, run.CALLBACK_EVERY)
        loop(count // 10)
        benchmark.group = f"feed {size}B"
        got = benchmark.pedantic(loop, args=(count,), rounds=3 if quick else 7, iterations=1,
                                 warmup_rounds=1)
        assert got == count
        if method == "callback":
            sock.set_recv_callback(None)  # type: ignore[attr-defined]
        outstanding = getattr(sock, "outstanding", 0)
    assert outstanding == 0, "a benchmark loop left packets unreleased"

    if cmode == "cb":
        cmd = [tools["pxbench"], "cb", "--port", str(port), "--count", str(count * 5),
               "--every", str(run.CALLBACK_EVERY), "--cpu", str(run.RECEIVER_CPU)]
        name = f"pxbench cb --every {run.CALLBACK_EVERY}"
    else:
        cmd = [tools["refloop"], "recv", "--mode", cmode, "--port", str(port), "--count",
               str(count * 5), "--batch", str(cbatch), "--cpu", str(run.RECEIVER_CPU)]
        name = f"refloop {cmode}" + (f" --batch {cbatch}" if cmode == "zcopy-free-batch" else "")
    c_ns, _ = c_ref(f"feed {size} {name}",
                    lambda: float(run.run_c(cmd, emu=True, feed=feed)["ns_per_packet"]))
    report(benchmark, count, name + " (same feed)", c_ns, method=method, max_packets=m,
           size=size, provider="emulator feed")
