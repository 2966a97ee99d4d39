"""A zero-copy UDP echo server: datagrams are echoed straight out of XLIO's receive buffers.

`sendto` takes the memoryview of the received datagram, so the payload is never copied into a
Python object; the batch returns every buffer to XLIO in one call afterwards.

    python -m pyxlio.emu -- python examples/zcopy_echo.py --selftest 10000
    python examples/zcopy_echo.py --port 7777            # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading


def serve(sock: object, stop: threading.Event) -> int:
    echoed = 0
    while not stop.is_set():
        with sock.recv_batch(64, timeout=0.2) as batch:          # type: ignore[attr-defined]
            for view, address in zip(batch.views(), batch.addresses):
                with view:
                    sock.sendto(view, address)                    # type: ignore[attr-defined]
                echoed += 1
    return echoed


def selftest(address: tuple[str, int], count: int) -> int:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    bad = 0
    for i in range(count):
        payload = os.urandom(16) + i.to_bytes(4, "big")
        client.sendto(payload, address)
        if client.recv(2048) != payload:
            bad += 1
    client.close()
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--selftest", type=int, metavar="N", default=0,
                        help="echo N datagrams to a local client, check them, and exit")
    args = parser.parse_args(argv)

    from pyxlio.socket import socket as xsocket

    sock = xsocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    stop = threading.Event()
    print(f"echoing on {sock.getsockname()} (offloaded: {sock.offloaded})", flush=True)
    if not args.selftest:
        try:
            serve(sock, stop)
        except KeyboardInterrupt:
            pass
        sock.close()
        return 0
    result: list[int] = []
    server = threading.Thread(target=lambda: result.append(serve(sock, stop)))
    server.start()
    bad = selftest(sock.getsockname(), args.selftest)
    stop.set()
    server.join()
    leaked = sock.outstanding
    sock.close()
    print(f"echoed {result[0]:,} datagrams, {bad} wrong, {leaked} buffers outstanding")
    return 0 if bad == 0 and leaked == 0 and result[0] == args.selftest else 1


if __name__ == "__main__":
    sys.exit(main())
