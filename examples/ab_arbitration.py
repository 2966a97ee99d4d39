"""A/B line arbitration of a sequenced feed: two lines, one Poller, first copy wins.

Market-data feeds are published twice, on line A and line B (different multicast groups, often
different networks), so that a datagram lost on one line is still received on the other.  The
receiver takes the first copy of each sequence number, whichever line brings it, and counts:
sequence numbers lost on both lines (gaps), copies that arrived after the first (late
duplicates), and how many losses of one line the other line covered.  Each datagram's latency
is its receive timestamp (``recv_batch``/``poll`` with ``timestamps=True``, no object per
datagram) minus the send time the publisher wrote into it.

Each datagram: u64 sequence number, u64 send time (CLOCK_REALTIME ns), network order.

    python -m pyxlio.emu -- python examples/ab_arbitration.py --publish --count 100000
    python examples/ab_arbitration.py --publish --drop-a 10 11 --drop-b 11 12
    LD_PRELOAD=libxlio.so python examples/ab_arbitration.py --interface 192.0.2.2

Where the provider gives no receive time (XLIO's zero-copy receive returns no control
messages), the timestamp is pyxlio's own reading when its receive pass took the datagram: the
output says which (``timestamps: kernel`` or ``timestamps: pyxlio``).
"""

from __future__ import annotations

import argparse
import struct
import sys
import threading
import time

HEADER = struct.Struct("!QQ")


def publish(lines: list[tuple[str, int]], interface: str, count: int, size: int,
            drops: list[frozenset[int]]) -> None:
    """A plain-socket publisher: each sequence number on both lines (A first), leaving out
    the numbers in that line's drop set."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    pad = bytes(max(0, size - HEADER.size))
    for seq in range(count):
        for line, dropped in zip(lines, drops):
            if seq not in dropped:
                s.sendto(HEADER.pack(seq, time.time_ns()) + pad, line)
        if seq % 128 == 127:
            time.sleep(0.0005)          # a paced feed: loopback has no flow control
    s.close()


class Arbiter:
    """First copy of each sequence number wins; the rest are late duplicates."""

    def __init__(self) -> None:
        self.taken = bytearray()        # per sequence number: 0 not yet, 1 from A, 2 from B
        self.first = [0, 0]             # copies taken first, per line
        self.late = [0, 0]              # late duplicates, per line
        self.latencies: list[int] = []
        self.received = 0

    def offer(self, line: int, seq: int, latency_ns: int) -> None:
        self.received += 1
        if seq >= len(self.taken):
            self.taken.extend(bytes(seq + 1 - len(self.taken) + 4096))
        if self.taken[seq]:
            self.late[line] += 1
            return
        self.taken[seq] = line + 1
        self.first[line] += 1
        self.latencies.append(latency_ns)

    def highest(self) -> int:
        for i in range(len(self.taken) - 1, -1, -1):
            if self.taken[i]:
                return i
        return -1

    def gaps(self) -> tuple[int, int]:
        """(gaps, sequence numbers missing) below the highest taken."""
        top = self.highest()
        gaps = missing = 0
        prev_taken = True
        for i in range(top + 1):
            if not self.taken[i]:
                missing += 1
                if prev_taken:
                    gaps += 1
                prev_taken = False
            else:
                prev_taken = True
        return gaps, missing


def percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group-a", default="239.1.1.1")
    parser.add_argument("--group-b", default="239.1.1.2")
    parser.add_argument("--port", type=int, default=31101)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--count", type=int, default=10_000, help="sequence numbers published")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--publish", action="store_true", help="run a local publisher too")
    parser.add_argument("--drop-a", type=int, nargs="*", default=[],
                        help="sequence numbers the local publisher leaves out on line A")
    parser.add_argument("--drop-b", type=int, nargs="*", default=[],
                        help="... and on line B")
    parser.add_argument("--idle", type=float, default=2.0, help="stop after this long silent")
    args = parser.parse_args(argv)

    import pyxlio
    from pyxlio.socket import multicast_receiver

    lines = [(args.group_a, args.port), (args.group_b, args.port)]
    socks = [multicast_receiver(g, p, interface=args.interface) for g, p in lines]
    line_of = {s: i for i, s in enumerate(socks)}
    for s in socks:
        s.enable_timestamps()
    time.sleep(0.05)        # the kernel's switch to timestamping is deferred
    publisher = None
    if args.publish:
        publisher = threading.Thread(target=publish, args=(
            lines, args.interface, args.count, args.size,
            [frozenset(args.drop_a), frozenset(args.drop_b)]))
        publisher.start()

    arb = Arbiter()
    zcopy = False
    sources: set[int] = set()
    unpack = HEADER.unpack_from
    with pyxlio.Poller() as poller:
        for s in socks:
            poller.register(s)
        while True:
            pairs = poller.poll(256, timeout=args.idle, addresses=False, timestamps=True)
            if not pairs:
                break                                   # both lines went silent
            for sock, batch in pairs:
                with batch:
                    line = line_of[sock]
                    zcopy = zcopy or batch.zcopy
                    sources.update(batch.timestamp_sources)
                    for view, ts in zip(batch.views(), batch.timestamps):
                        seq, sent = unpack(view)
                        view.release()
                        arb.offer(line, seq, ts - sent)
            if args.publish and arb.highest() >= args.count - 1 and \
                    arb.received >= 2 * args.count - len(args.drop_a) - len(args.drop_b):
                break                                   # everything published is in
    outstanding = sum(s.outstanding for s in socks)
    for s in socks:
        s.close()
    if publisher is not None:
        publisher.join()

    gaps, missing = arb.gaps()
    lat = sorted(arb.latencies)
    api = pyxlio.get_api()
    names = {0: "pyxlio", 1: "kernel", 2: "hardware"}
    print(f"provider: {api.provider if api else 'kernel'}; zero-copy: {'yes' if zcopy else 'no'}"
          f"; timestamps: {'+'.join(names[s] for s in sorted(sources)) or 'none'}")
    print(f"received {arb.received:,} datagrams; sequences taken: {sum(arb.first):,} "
          f"(first from A: {arb.first[0]:,}, from B: {arb.first[1]:,})")
    print(f"gaps: {gaps} ({missing} sequence numbers lost on both lines); "
          f"late duplicates: {sum(arb.late):,} (A: {arb.late[0]:,}, B: {arb.late[1]:,})")
    lost_a = set(args.drop_a) - set(args.drop_b)
    lost_b = set(args.drop_b) - set(args.drop_a)
    if args.publish:
        covered_by_b = sum(1 for q in lost_a if q < len(arb.taken) and arb.taken[q] == 2)
        covered_by_a = sum(1 for q in lost_b if q < len(arb.taken) and arb.taken[q] == 1)
        print(f"A's losses covered by B: {covered_by_b}; B's losses covered by A: "
              f"{covered_by_a}")
    print(f"latency ns: p50 {percentile(lat, 0.5):,}, p99 {percentile(lat, 0.99):,}, "
          f"max {lat[-1] if lat else 0:,}")
    print(f"buffers outstanding: {outstanding}")
    return 0 if outstanding == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
