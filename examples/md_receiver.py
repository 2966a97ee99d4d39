"""A market-data style multicast receiver that counts sequence gaps, zero-copy.

Each datagram starts with a u64 sequence number in network order (the sockperf header, as the
emulator's feed and `--publish` send it).  The receiver joins the group the way feed handlers
do (SO_REUSEADDR, a large receive buffer, optionally source-specific), drains it in batches
with the GIL released, reads sequence numbers straight from XLIO's buffers and counts gaps,
duplicates and reorders.

    python -m pyxlio.emu -- python examples/md_receiver.py --publish --count 200000
    python -m pyxlio.emu --feed 31001:64 -- python examples/md_receiver.py --feed --count 2000000
    LD_PRELOAD=libxlio.so python examples/md_receiver.py --group 239.1.1.1 --interface 192.0.2.2
"""

from __future__ import annotations

import argparse
import struct
import sys
import threading
import time

SEQ = struct.Struct("!Q")


def publish(group: str, port: int, interface: str, count: int, size: int,
            skip: frozenset[int]) -> None:
    """A plain-socket publisher: `count` datagrams, leaving out the sequence numbers in `skip`."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    pad = bytes(max(0, size - SEQ.size))
    for seq in range(count):
        if seq not in skip:
            s.sendto(SEQ.pack(seq) + pad, (group, port))
        if seq % 256 == 255:
            time.sleep(0.0005)          # a paced feed: loopback has no flow control
    s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", default="239.1.1.1")
    parser.add_argument("--port", type=int, default=31001)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--source", default=None, help="source-specific join")
    parser.add_argument("--count", type=int, default=100_000, help="stop after this many")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--publish", action="store_true", help="run a local publisher too")
    parser.add_argument("--skip", type=int, nargs="*", default=[],
                        help="sequence numbers the local publisher leaves out (to see gaps)")
    parser.add_argument("--feed", action="store_true",
                        help="read the emulator's in-memory feed on 127.0.0.1:PORT instead")
    parser.add_argument("--idle", type=float, default=2.0, help="stop after this long silent")
    args = parser.parse_args(argv)

    import pyxlio
    from pyxlio.socket import multicast_receiver
    from pyxlio.socket import socket as xsocket

    if args.feed:
        import socket

        rx = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", args.port))
    else:
        rx = multicast_receiver(args.group, args.port, interface=args.interface,
                                source=args.source)
    publisher = None
    if args.publish:
        publisher = threading.Thread(target=publish, args=(
            args.group, args.port, args.interface, args.count, args.size, frozenset(args.skip)))
        publisher.start()

    expected = received = gaps = missing = duplicates = reordered = 0
    zcopy = False
    start = time.perf_counter()
    with rx:
        while received + missing < args.count:
            with rx.recv_batch(256, timeout=args.idle) as batch:
                if not batch:
                    break                                  # the feed went silent
                zcopy = zcopy or batch.zcopy
                for view in batch.views():
                    (seq,) = SEQ.unpack_from(view)
                    view.release()
                    if seq == expected:
                        expected += 1
                    elif seq > expected:
                        gaps += 1
                        missing += seq - expected
                        expected = seq + 1
                    elif seq < expected - 1:
                        reordered += 1
                    else:
                        duplicates += 1
                    received += 1
        elapsed = time.perf_counter() - start
        outstanding = rx.outstanding
    if publisher is not None:
        publisher.join()
    api = pyxlio.get_api()
    print(f"provider: {api.provider if api else 'kernel'}; zero-copy: {'yes' if zcopy else 'no'}")
    print(f"received {received:,} datagrams in {elapsed:.2f} s "
          f"({received / elapsed if elapsed else 0:,.0f}/s)")
    print(f"gaps: {gaps} ({missing} datagrams missing), duplicates: {duplicates}, "
          f"reordered: {reordered}; buffers outstanding: {outstanding}")
    return 0 if outstanding == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
