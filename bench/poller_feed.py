"""Poller against a selectors loop where receiving costs no system call: the emulator's feed.

    python bench/poller_feed.py [--nsock 32] [--per 1,2,8,64] [--count 200000] [--rounds 3]

Re-runs itself under ``python -m pyxlio.emu --feed ...`` (the in-memory feed: every socket is
always readable and a datagram costs no kernel call, as on an offloaded ring), so what is
measured is each loop's own cost per socket and per datagram.  ``--per`` is the datagrams one
socket gives per wake-up (the Poller's budget is ``per * nsock`` in all; the selectors loop
calls ``recv_batch(per, 0)`` on each ready socket): small for many quiet channels, large for a
few busy ones.  Costs are this thread's CPU time per datagram (batches released included);
the ratio is selectors' cost over the Poller's.  The kernel-socket figures are bench/multi.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket as stdsocket
import subprocess
import sys
from pathlib import Path

BASE_PORT = 41000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def measure(nsock: int, per: int, count: int) -> dict[str, float]:
    import pyxlio
    from pyxlio.socket import socket

    socks = []
    for i in range(nsock):
        s = socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        s.bind(("127.0.0.1", BASE_PORT + i))
        socks.append(s)
    try:
        with pyxlio.Poller() as p:
            for s in socks:
                p.register(s)
            got, t0 = 0, _cpu()
            while got < count:
                for _sock, b in p.poll(per * nsock, 1.0):
                    got += len(b)
                    b.release()
            poller = (_cpu() - t0) / got
        sel = selectors.DefaultSelector()       # after the Poller let the sockets go
        try:
            for s in socks:
                sel.register(s, selectors.EVENT_READ)
            got, t0 = 0, _cpu()
            while got < count:
                for key, _ in sel.select(1.0):
                    b = key.fileobj.recv_batch(per, 0)
                    got += len(b)
                    b.release()
            selector = (_cpu() - t0) / got
        finally:
            sel.close()
    finally:
        for s in socks:
            s.close()
    return {"poller_ns": poller * 1e9, "selectors_ns": selector * 1e9,
            "poller_vs_selectors": selector / poller}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nsock", type=int, default=32, help="sockets (the feed takes at most 32)")
    ap.add_argument("--per", default="1,2,8,64", help="datagrams per socket per wake-up")
    ap.add_argument("--count", type=int, default=200_000, help="datagrams per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args(argv)
    if not 1 <= a.nsock <= 32:
        ap.error("--nsock must lie in 1..32 (the emulator's feed has at most 32 entries)")
    if os.environ.get("PYXLIO_EMU_FEED") is None:
        feed = ",".join(f"{BASE_PORT + i}:64" for i in range(a.nsock))
        cmd = [sys.executable, "-m", "pyxlio.emu", "--feed", feed, "--", sys.executable,
               str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:])]
        return subprocess.call(cmd)
    results = []
    for per in (int(x) for x in a.per.split(",")):
        rounds = [measure(a.nsock, per, a.count) for _ in range(a.rounds)]
        best = min(rounds, key=lambda r: r["poller_ns"])
        ratios = sorted(r["poller_vs_selectors"] for r in rounds)
        row = {"per": per, **best, "ratio_median": ratios[len(ratios) // 2]}
        results.append(row)
        print(f"per={per:3d}  poller {best['poller_ns']:6.0f} ns  selectors "
              f"{best['selectors_ns']:6.0f} ns  poller_vs_selectors (median) "
              f"{row['ratio_median']:.2f}  (target >= 3)")
    if a.out:
        Path(a.out).write_text(json.dumps({"nsock": a.nsock, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
