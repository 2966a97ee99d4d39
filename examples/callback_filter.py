"""Receive callbacks: channel filtering in C, message-type counting in Python.

Each message is `channel (1 byte) | type (1 byte) | payload`.  The C-level filter keeps one
channel without entering Python for the others; the Python callback counts the message types of
that channel, DROPs heartbeats, HOLDs the "snapshot" messages for later processing, and lets the
rest through (RECV) to the normal receive calls.  Needs XLIO (or its emulator):

    python -m pyxlio.emu -- python examples/callback_filter.py
"""

from __future__ import annotations

import argparse
import collections
import socket
import sys

HEARTBEAT, TRADE, SNAPSHOT = b"H", b"T", b"S"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channel", type=int, default=7)
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args(argv)

    import pyxlio
    from pyxlio import Verdict
    from pyxlio.socket import socket as xsocket

    if not pyxlio.available():
        print("this example needs XLIO: python -m pyxlio.emu -- python examples/callback_filter.py")
        return 2
    rx = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.set_receive_buffer(4 << 20)
    seen: collections.Counter[bytes] = collections.Counter()

    def on_message(view: memoryview, info: pyxlio.RecvInfo) -> Verdict:
        kind = bytes(view[1:2])
        seen[kind] += 1
        if kind == HEARTBEAT:
            return Verdict.DROP
        if kind == SNAPSHOT:
            return Verdict.HOLD
        return Verdict.RECV

    rx.set_recv_filter(0, bytes([args.channel]))        # other channels never reach Python
    rx.set_recv_callback(on_message)

    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kinds = (HEARTBEAT, TRADE, SNAPSHOT)
    for i in range(args.count):
        channel = args.channel if i % 2 == 0 else args.channel + 1
        tx.sendto(bytes([channel]) + kinds[i % 3] + i.to_bytes(4, "big"), rx.getsockname())
    tx.close()

    trades = 0
    while True:
        with rx.recv_batch(64, timeout=0.5) as batch:
            if not batch:
                break
            trades += sum(1 for v in batch.views() if v[1:2] == TRADE)
    snapshots = len(rx.held)
    for pkt in rx.held:
        pkt.release()
    rx.held.clear()
    print(f"filtered out in C: {rx.filtered}; seen by Python: {dict(sorted(seen.items()))}")
    print(f"trades received: {trades}; snapshots held: {snapshots}; "
          f"outstanding: {rx.outstanding}")
    ok = rx.outstanding == 0 and trades == seen[TRADE] and snapshots == seen[SNAPSHOT]
    rx.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
