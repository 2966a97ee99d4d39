"""Many sockets, asyncio, timestamps: per-datagram receive cost, as ratios within one run.

    python bench/multi.py [--nsock 64] [--per 200] [--size 64] [--rounds 5] [--out F.json]
    python -m pyxlio.emu -- python bench/multi.py      # the same under the emulator

Each round fills every socket's receive buffer first (not timed), then times emptying it:

- ``poller``: ``Poller.poll(64 * NSOCK)`` (up to 64 a socket, as the others) until every
  datagram came (NSOCK sockets, traffic on all);
- ``selectors``: ``selectors.DefaultSelector().select()`` then ``recv_batch(64, timeout=0)``
  per ready socket (the loop a user writes without the Poller);
- ``c``: ``bench/c/multidrain.c``: epoll_wait + one recvmmsg(64) per ready socket, same sizes
  (compiled here with ``cc``; without XLIO, the same system calls as pyxlio's kernel path);
- ``sync64`` / ``aio64``: one socket, ``recv_batch(64)`` vs ``await aio.recv_batch(sock, 64)``
  in one coroutine on the default loop (and uvloop when installed);
- ``ts_off`` / ``ts_on``: one socket, ``recv_batch(64)`` without and with ``timestamps=True``
  (reading ``batch.timestamps``).

Targets (issue 12): poller >= 0.9x C, >= 3x selectors; aio >= 0.8x sync at 64-datagram batches.
Costs are this thread's CPU time (user + system) per datagram, median of the rounds (wall-clock
figures are kept too: on a shared machine they move with its load); ratios are of speeds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import shutil
import socket as stdsocket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import pyxlio  # noqa: E402
from pyxlio import aio  # noqa: E402
from pyxlio.socket import socket as xsocket  # noqa: E402


def make_sockets(n: int) -> list[xsocket]:
    out = []
    for _ in range(n):
        s = xsocket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        s.set_receive_buffer(64 << 20)
        s.bind(("127.0.0.1", 0))
        out.append(s)
    return out


def fill(tx: stdsocket.socket, socks: list[xsocket], per: int, payload: bytes) -> None:
    for s in socks:
        addr = s.getsockname()
        for _ in range(per):
            tx.sendto(payload, addr)


WALL: dict[str, list[float]] = {}


def timed(name: str, rounds: int, setup: Callable[[], None], body: Callable[[], int],
          expect: int) -> list[float]:
    """This thread's CPU time (user + system) per datagram of `body` over `rounds` rounds, each
    after `setup` (on a shared machine CPU time moves far less than wall-clock time, which is
    kept in WALL)."""
    out = []
    for _ in range(rounds):
        setup()
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        got = body()
        c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
        if got != expect:
            raise SystemExit(f"received {got} of {expect} datagrams (drops? raise rmem_max)")
        out.append((c1 - c0) / expect)
        WALL.setdefault(name, []).append((w1 - w0) / expect)
    return out


def run_c(nsock: int, per: int, size: int, rounds: int) -> list[float] | None:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "multidrain"
        subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(HERE / "c" / "multidrain.c")],
                       check=True)
        proc = subprocess.run([str(exe), str(nsock), str(per), str(size), str(rounds)],
                              capture_output=True, text=True, check=True, timeout=600)
    rows = [line.split() for line in proc.stdout.splitlines()
            if line.startswith("ns_per_datagram")]
    WALL["c"] = [float(r[1]) for r in rows]
    return [float(r[3]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nsock", type=int, default=64)
    ap.add_argument("--per", type=int, default=200, help="datagrams per socket per round")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--single", type=int, default=12800, help="datagrams, one-socket cases")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    payload = bytes(args.size)
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    socks = make_sockets(args.nsock)
    total = args.nsock * args.per
    results: dict[str, list[float]] = {}

    # -- many sockets -------------------------------------------------------------------------
    poller = pyxlio.Poller()
    for s in socks:
        poller.register(s)

    def drain_poller() -> int:
        got = 0
        while got < total:
            pairs = poller.poll(64 * args.nsock, timeout=1.0)
            if not pairs:
                break
            for _s, b in pairs:
                got += len(b)
                b.release()
        return got

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)

    def drain_selectors() -> int:
        got = 0
        while got < total:
            events = sel.select(1.0)
            if not events:
                break
            for key, _ in events:
                b = key.fileobj.recv_batch(64, 0)  # type: ignore[union-attr]
                got += len(b)
                b.release()
        return got

    def setup_many() -> None:
        fill(tx, socks, args.per, payload)

    results["poller"] = timed("poller", args.rounds, setup_many, drain_poller, total)
    results["selectors"] = timed("selectors", args.rounds, setup_many, drain_selectors, total)
    sel.close()
    poller.close()
    c = run_c(args.nsock, args.per, args.size, args.rounds)
    if c:
        results["c"] = c

    # -- one socket: sync vs asyncio, timestamps off vs on --------------------------------------
    one = socks[0]
    n1 = args.single

    def setup_one() -> None:
        fill(tx, [one], n1, payload)

    def sync64(**kw: Any) -> Callable[[], int]:
        def body() -> int:
            got = 0
            while got < n1:
                b = one.recv_batch(64, 1.0, **kw)
                if not b:
                    break
                if kw.get("timestamps"):
                    b.timestamps  # noqa: B018 - read the stamps, as a user would
                got += len(b)
                b.release()
            return got
        return body

    async def aio_body() -> int:
        got = 0
        while got < n1:
            b = await aio.recv_batch(one, 64)
            got += len(b)
            b.release()
        return got

    results["sync64"] = timed("sync64", args.rounds, setup_one, sync64(), n1)
    loop = asyncio.new_event_loop()
    def run_aio() -> int:
        # One bound for the whole drain (wait_for per call would add a task per batch).
        return loop.run_until_complete(asyncio.wait_for(aio_body(), 60))

    results["aio64"] = timed("aio64", args.rounds, setup_one, run_aio, n1)
    loop.close()
    uvloop: Any
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        loop = uvloop.new_event_loop()
        results["aio64_uvloop"] = timed("aio64_uvloop", args.rounds, setup_one, run_aio, n1)
        loop.close()
    results["ts_off"] = timed("ts_off", args.rounds, setup_one, sync64(), n1)
    one.enable_timestamps()
    time.sleep(0.05)
    results["ts_on"] = timed("ts_on", args.rounds, setup_one, sync64(timestamps=True), n1)

    for s in socks:
        s.close()
    tx.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    ratios = {
        "poller_vs_selectors (target >= 3)": med["selectors"] / med["poller"],
        "aio64_vs_sync64 (target >= 0.8)": med["sync64"] / med["aio64"],
        "ts_on_cost_ns_per_datagram": med["ts_on"] - med["ts_off"],
    }
    if "c" in med:
        ratios["poller_vs_c (target >= 0.9)"] = med["c"] / med["poller"]
    if "aio64_uvloop" in med:
        ratios["aio64_uvloop_vs_sync64 (target >= 0.8)"] = med["sync64"] / med["aio64_uvloop"]
    api = pyxlio.get_api()
    report = {"provider": api.provider if api else "kernel",
              "args": {k: v for k, v in vars(args).items() if k != "out"},
              "cpu_ns_per_datagram_median": med, "cpu_rounds": results,
              "wall_ns_per_datagram_median": {k: statistics.median(v) for k, v in WALL.items()},
              "wall_rounds": WALL, "ratios": ratios,
              "load_average": os.getloadavg()}
    print(f"provider: {report['provider']}; {args.nsock} sockets x {args.per} datagrams of "
          f"{args.size} B; one-socket cases: {n1} datagrams; {args.rounds} rounds")
    print("  CPU ns per datagram (median; rounds)   wall ns per datagram (median)")
    for k, v in med.items():
        print(f"  {k:14s} {v:8.1f}  ({', '.join(f'{x:.0f}' for x in results[k])})"
              f"   {statistics.median(WALL[k]):8.1f}")
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
