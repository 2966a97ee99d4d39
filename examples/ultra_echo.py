"""A TCP echo over XLIO's Ultra API: poll groups, callbacks, XLIO's receive buffers.

The server (libxlio 3.60+, whose Ultra API has listen) accepts on a PollGroup and echoes every
received buffer straight back: with send() (copied at once), or with --zero-copy from a
registered MemoryRegion with send_zc() (the bytes stay there until XLIO's completion).  The
client connects, keeps a window of messages in flight (many small messages per send and per
poll), checks every echoed byte against what it sent and counts buffers and completions.  Both
say at the end how many received buffers they returned and how many zero-copy completions came.

Under pyxlio's emulator (no ConnectX needed; it offloads loopback, a real libxlio does not):

    python -m pyxlio.emu -- python examples/ultra_echo.py selftest
    python -m pyxlio.emu --strict --layout 3.61 -- python examples/ultra_echo.py selftest \\
        --count 1000000 --zero-copy
    python -m pyxlio.emu --layout 3.61 -- python examples/ultra_echo.py server --port 7777
    python -m pyxlio.emu -- python examples/ultra_echo.py client --port 7777 --count 100000

The emulator's default layout (legacy, as libxlio 3.51) and 3.94 have the 16-member "socket
API", which has no listen: there the selftest's server is a plain kernel TCP echo thread and
only the client uses the Ultra API (it says so).  Exit status: 0 when every message came back
intact, every buffer was returned and every completion seen; 1 otherwise; 2 when the loaded
provider has no Ultra API (or no listen, for `server`).
"""

from __future__ import annotations

import argparse
import collections
import socket
import sys
import threading
import time
from typing import Any

#: longest a run waits without any progress before it gives up (every wait is bounded)
STALL_S = 15.0


class Ring:
    """Space for zero-copy sends in one registered buffer, handed out in order and reused
    once XLIO's completion says the bytes left: a chunk is [start, length, done]."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.size = size
        self.head = 0
        self.chunks: collections.deque[list[int]] = collections.deque()

    def alloc(self, n: int) -> list[int] | None:
        """A chunk of `n` bytes, or None while the room is held by sends in flight."""
        if n > self.size // 2:
            return None
        if not self.chunks:
            start = 0
        else:
            tail = self.chunks[0][0]
            if self.head >= tail:       # free: [head, size) and [0, tail)
                if self.size - self.head >= n:
                    start = self.head
                elif n < tail:
                    start = 0
                else:
                    return None
            elif tail - self.head > n:  # free: [head, tail)
                start = self.head
            else:
                return None
        self.head = start + n
        chunk = [start, n, 0]
        self.chunks.append(chunk)
        return chunk

    def complete(self, chunk: list[int]) -> None:
        chunk[2] = 1
        chunks = self.chunks
        while chunks and chunks[0][2]:
            chunks.popleft()

    @property
    def in_flight(self) -> int:
        return len(self.chunks)


class Counts:
    """What one side saw."""

    def __init__(self) -> None:
        self.buffers = 0        # received buffers dispatched to on_receive
        self.returned = 0       # ... released when the handler was done with them
        self.bytes = 0
        self.zc_sends = 0       # send_zc calls
        self.completions = 0    # on_complete calls
        self.inline_sends = 0   # send() calls
        self.errors: list[str] = []

    def buffers_line(self, who: str) -> str:
        return (f"{who}: buffers: {self.buffers:,} received, {self.returned:,} returned; "
                f"zero-copy sends: {self.zc_sends:,}, completions: {self.completions:,}; "
                f"copied sends: {self.inline_sends:,}")

    @property
    def clean(self) -> bool:
        return (self.buffers == self.returned and self.zc_sends == self.completions
                and not self.errors)


def load_ultra() -> Any:
    """pyxlio.ultra, or None (with the reason printed) when this process has no Ultra API."""
    try:
        from pyxlio import ultra
    except ImportError as exc:
        print(f"pyxlio.ultra is not importable ({exc}): build pyxlio first")
        return None
    if not ultra.available():
        print("this process has no Ultra API: it needs libxlio 3.30+ (LD_PRELOAD) or pyxlio's "
              "emulator: python -m pyxlio.emu -- python examples/ultra_echo.py selftest")
        return None
    return ultra


def has_listen(ultra: Any) -> bool:
    return bool(ultra.kind() == ultra.UltraKind.ULTRA)


# -- server ------------------------------------------------------------------------------------

class EchoServer:
    """An Ultra API echo server on its own PollGroup (DIRTY: echoes are queued without a flush
    each and pushed by one group flush after each poll; libxlio 3.70.2's poll_group.cpp keeps
    dirty sockets for xlio_poll_group_flush only in a DIRTY group).  With zero-copy, each
    connection has its own ring in a region registered for it (``sock.userdata``)."""

    def __init__(self, ultra: Any, host: str, port: int, zero_copy: bool,
                 ring_size: int = 4 << 20) -> None:
        self.ultra = ultra
        self.counts = Counts()
        self.zero_copy = zero_copy
        self.ring_size = ring_size
        self.conns: set[Any] = set()
        self.accepted = 0
        self.group = ultra.PollGroup(ultra.GroupFlag.DIRTY, on_event=self.on_event,
                                     on_receive=self.on_receive, on_complete=self.on_complete,
                                     on_accept=self.on_accept)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = self.group.socket(family)
        self.listener.bind((host, port))
        self.listener.listen()
        self.address = self.listener.getsockname()

    def on_accept(self, sock: Any, listener: Any) -> None:
        self.accepted += 1
        self.conns.add(sock)
        if self.zero_copy:
            ring = Ring(self.ring_size)
            sock.userdata = (ring, self.ultra.MemoryRegion(sock, ring.buf))

    def on_receive(self, sock: Any, buf: Any) -> None:
        c = self.counts
        c.buffers += 1
        with buf:
            if not sock.closed:         # closed by us meanwhile: the rest of its bytes go
                self.echo(sock, buf)
        if buf.released:
            c.returned += 1

    def echo(self, sock: Any, buf: Any) -> None:
        c = self.counts
        n = len(buf)
        zc = sock.userdata
        chunk = zc[0].alloc(n) if zc is not None else None
        try:
            if chunk is None:
                # Copied by XLIO at once (also when the ring is full of sends still in flight:
                # an echo never waits inside a handler).
                sock.send(buf, flush=False)
                c.inline_sends += 1
            else:
                start = chunk[0]
                zc[0].buf[start:start + n] = buf
                sock.send_zc(zc[1], start, n, flush=False, token=chunk)
                c.zc_sends += 1
            c.bytes += n
        except OSError as exc:          # the connection failed meanwhile: drop it
            if chunk is not None:
                zc[0].complete(chunk)   # never sent: its room is free again
            c.errors.append(f"echo refused ({exc}): connection closed")
            sock.close()

    def on_complete(self, sock: Any, token: Any) -> None:
        self.counts.completions += 1
        sock.userdata[0].complete(token)

    def on_event(self, sock: Any, event: Any, error: int) -> None:
        ev = self.ultra.SocketEvent
        if event == ev.CLOSED:            # the client closed: close ours, TERMINATED follows
            sock.close()
        elif event == ev.ERROR:
            self.counts.errors.append(f"server socket error {error}")
        elif event == ev.TERMINATED:
            self.conns.discard(sock)
            zc = sock.userdata
            if zc is not None:
                if zc[0].in_flight:
                    self.counts.errors.append(
                        f"{zc[0].in_flight} zero-copy sends never completed")
                else:
                    zc[1].close()

    def poll(self, timeout: float = 0.0) -> int:
        n: int = self.group.poll(timeout)
        self.group.flush()
        return n

    def settle(self, deadline: float) -> None:
        """Poll until the connections are gone (TERMINATED) or `deadline`."""
        while self.conns and time.monotonic() < deadline:
            self.poll(0.01)
        if self.conns:
            self.counts.errors.append(f"{len(self.conns)} connection(s) never TERMINATED")

    def close(self) -> None:
        self.group.close()


# -- client ------------------------------------------------------------------------------------

class EchoClient:
    """Sends `count` messages of `size` bytes (a u64 sequence number and bytes derived from it)
    keeping `window` of them in flight, `batch` per send; checks every byte echoed back."""

    def __init__(self, ultra: Any, address: tuple[str, int], count: int, size: int,
                 window: int, batch: int, zero_copy: bool, ring_size: int = 4 << 20) -> None:
        self.ultra = ultra
        self.count, self.size = count, size
        self.window = max(window, 1)
        self.batch = max(1, min(batch, self.window))
        self.counts = Counts()
        self.sent = 0               # messages sent
        self.echoed_bytes = 0
        self.wrong = 0              # echoed buffers that differed from what was sent
        self.expect = bytearray()   # sent bytes not echoed yet
        self.state = "connecting"
        self.error = 0
        import random

        rnd = random.Random(14)
        self.filler = rnd.randbytes(size + 256)
        self.group = ultra.PollGroup(on_event=self.on_event, on_receive=self.on_receive,
                                     on_complete=self.on_complete)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = self.group.socket(family)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.connect(address)
        self.ring: Ring | None = None
        self.region: Any = None
        if zero_copy:
            self.ring = Ring(ring_size)
            self.region = ultra.MemoryRegion(self.sock, self.ring.buf)

    def on_event(self, sock: Any, event: Any, error: int) -> None:
        ev = self.ultra.SocketEvent
        if event == ev.ESTABLISHED:
            self.state = "established"
        elif event == ev.ERROR:
            self.error = error
            self.counts.errors.append(f"client socket error {error}")
        elif event == ev.CLOSED:
            self.state = "closed"
        elif event == ev.TERMINATED:
            self.state = "terminated"

    def on_receive(self, sock: Any, buf: Any) -> None:
        c = self.counts
        c.buffers += 1
        with buf:
            n = len(buf)
            expect = self.expect
            if not expect.startswith(buf):      # one memcmp against the bytes sent
                self.wrong += 1
            del expect[:n]
            self.echoed_bytes += n
        if buf.released:
            c.returned += 1

    def on_complete(self, sock: Any, token: Any) -> None:
        self.counts.completions += 1
        if self.ring is not None:
            self.ring.complete(token)

    def message_block(self, first: int, k: int) -> bytes:
        size, filler = self.size, self.filler
        body = size - 8
        return b"".join(seq.to_bytes(8, "big") + filler[seq & 255: (seq & 255) + body]
                        for seq in range(first, first + k))

    def fill_window(self) -> None:
        """Send blocks until `window` messages are in flight (or the ring is full)."""
        size = self.size
        in_flight = self.sent - self.echoed_bytes // size
        while self.sent < self.count and in_flight < self.window:
            k = min(self.batch, self.count - self.sent, self.window - in_flight)
            block = self.message_block(self.sent, k)
            if self.ring is not None:
                chunk = self.ring.alloc(len(block))
                if chunk is None:
                    return                      # wait for completions
                start = chunk[0]
                self.ring.buf[start:start + len(block)] = block
                self.sock.send_zc(self.region, start, len(block), token=chunk)
                self.counts.zc_sends += 1
            else:
                self.sock.send(block)
                self.counts.inline_sends += 1
            self.expect += block
            self.sent += k
            in_flight += k

    @property
    def echoed(self) -> int:
        return self.echoed_bytes // self.size

    def wait_connected(self, timeout: float, poll_other: Any = None) -> None:
        deadline = time.monotonic() + timeout
        while self.state == "connecting" and not self.error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no connection after {timeout} s")
            self.group.poll(0.0 if poll_other else 0.05)
            if poll_other:
                poll_other()
        if self.state != "established":
            raise ConnectionError(f"connect failed: {self.state}, error {self.error}")

    def run(self, poll_other: Any = None) -> float:
        """Exchange every message; returns the seconds it took."""
        t0 = last = time.monotonic()
        done = self.echoed_bytes
        total = self.count * self.size
        while self.echoed_bytes < total:
            self.fill_window()
            self.group.poll(0.0 if poll_other else 0.05)
            if poll_other is not None:
                poll_other()
            if self.error or self.state != "established":
                raise ConnectionError(f"connection lost: {self.state}, error {self.error}")
            now = time.monotonic()
            if self.echoed_bytes != done:
                done, last = self.echoed_bytes, now
            elif now - last > STALL_S:
                raise TimeoutError(f"no echo for {STALL_S} s ({self.echoed:,} of "
                                   f"{self.count:,} messages back)")
        return time.monotonic() - t0

    def finish(self, poll_other: Any = None, timeout: float = 10.0) -> None:
        """Wait for the last completions, close the socket and wait for TERMINATED."""
        deadline = time.monotonic() + timeout
        while self.counts.completions < self.counts.zc_sends and time.monotonic() < deadline:
            self.group.poll(0.01)
            if poll_other is not None:
                poll_other()
        if self.region is not None and self.ring is not None and not self.ring.in_flight:
            self.region.close()
        self.sock.close()
        while self.state != "terminated" and time.monotonic() < deadline:
            self.group.poll(0.01)
            if poll_other is not None:
                poll_other()
        if self.state != "terminated":
            self.counts.errors.append("client socket never TERMINATED")
        self.group.close()


# -- a plain kernel echo server (for layouts without listen) -----------------------------------

def kernel_echo_server(host: str) -> tuple[tuple[str, int], threading.Thread, list[int]]:
    """A stdlib TCP echo server thread for one connection: (address, thread, [bytes echoed])."""
    lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, 0))
    lsock.listen(1)
    lsock.settimeout(STALL_S)
    echoed = [0]

    def serve() -> None:
        try:
            conn, _peer = lsock.accept()
        except OSError:
            lsock.close()
            return
        lsock.close()
        conn.settimeout(STALL_S)
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        with conn:
            try:
                while True:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    conn.sendall(view[:n])
                    echoed[0] += n
            except OSError:
                pass

    thread = threading.Thread(target=serve, name="kernel-echo", daemon=True)
    thread.start()
    return lsock.getsockname()[:2], thread, echoed


# -- commands ----------------------------------------------------------------------------------

def client_report(client: EchoClient, seconds: float) -> bool:
    rate = client.echoed / seconds if seconds > 0 else 0.0
    print(f"client: {client.echoed:,} messages of {client.size} bytes echoed, {client.wrong} "
          f"wrong, in {seconds:.2f} s ({rate:,.0f} msg/s)")
    print(client.counts.buffers_line("client"))
    for e in client.counts.errors:
        print(f"client: {e}")
    return client.echoed == client.count and client.wrong == 0 and client.counts.clean


def server_report(server: EchoServer) -> bool:
    print(f"server: {server.accepted} connection(s), {server.counts.bytes:,} bytes echoed")
    print(server.counts.buffers_line("server"))
    for e in server.counts.errors:
        print(f"server: {e}")
    return server.counts.clean


def cmd_server(args: argparse.Namespace) -> int:
    ultra = load_ultra()
    if ultra is None:
        return 2
    if not has_listen(ultra):
        print(f"this layout has the 16-member socket API ({ultra.kind()!r}): no listen, so no "
              "Ultra server (libxlio 3.60+ or the emulator's --layout 3.61 have one)")
        return 2
    import signal

    server = EchoServer(ultra, args.host, args.port, args.zero_copy)
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):     # poll() checks signals while it waits
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    print(f"echoing on {server.address[0]}:{server.address[1]} (Ultra API, "
          f"{'zero-copy' if args.zero_copy else 'copied'} sends); Ctrl-C stops", flush=True)
    end = time.monotonic() + args.seconds if args.seconds else 0.0
    while not stop and (not end or time.monotonic() < end):
        server.poll(0.1)
    for sock in list(server.conns):
        sock.close()
    server.settle(time.monotonic() + 5)
    ok = server_report(server)
    server.close()
    return 0 if ok else 1


def cmd_client(args: argparse.Namespace) -> int:
    ultra = load_ultra()
    if ultra is None:
        return 2
    client = EchoClient(ultra, (args.host, args.port), args.count, args.size, args.window,
                        args.batch, args.zero_copy)
    try:
        client.wait_connected(STALL_S)
        seconds = client.run()
    except (OSError, TimeoutError) as exc:
        print(f"client: {exc}")
        client.counts.errors.append(str(exc))
        seconds = 0.0
    client.finish()
    return 0 if client_report(client, seconds) else 1


def cmd_selftest(args: argparse.Namespace) -> int:
    ultra = load_ultra()
    if ultra is None:
        return 2
    host = args.host
    server: EchoServer | None = None
    thread: threading.Thread | None = None
    if has_listen(ultra):
        print(f"layout: Ultra API ({ultra.kind().name}, 23 members): the server and the client "
              "both use the Ultra API, polled in turn by this thread")
        server = EchoServer(ultra, host, 0, args.zero_copy)
        address = server.address[:2]
        poll_other = server.poll
    else:
        print(f"layout: socket API ({ultra.kind().name}, 16 members, no listen): the server is "
              "a plain kernel TCP echo thread; only the client uses the Ultra API")
        address, thread, _echoed = kernel_echo_server(host)
        poll_other = None
    print(f"{args.count:,} messages of {args.size} bytes, window {args.window}, {args.batch} per "
          f"send, {'zero-copy' if args.zero_copy else 'copied'} sends", flush=True)
    client = EchoClient(ultra, address, args.count, args.size, args.window, args.batch,
                        args.zero_copy)
    try:
        client.wait_connected(STALL_S, poll_other)
        seconds = client.run(poll_other)
    except (OSError, TimeoutError) as exc:
        print(f"client: {exc}")
        client.counts.errors.append(str(exc))
        seconds = 0.0
    client.finish(poll_other)
    ok = client_report(client, seconds)
    if server is not None:
        server.settle(time.monotonic() + 10)
        ok = server_report(server) and ok
        server.close()
    if thread is not None:
        thread.join(STALL_S)
        if thread.is_alive():
            print("server: the kernel echo thread did not end")
            ok = False
        else:
            print("server: the kernel echo thread ended")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1")
    common.add_argument("--zero-copy", action="store_true",
                        help="send from a registered MemoryRegion with send_zc (completions)")
    traffic = argparse.ArgumentParser(add_help=False)
    traffic.add_argument("--count", type=int, default=100_000, help="messages to exchange")
    traffic.add_argument("--size", type=int, default=64, help="bytes per message (>= 8)")
    traffic.add_argument("--window", type=int, default=4096,
                         help="messages in flight at most (default 4096)")
    traffic.add_argument("--batch", type=int, default=256,
                         help="messages per send call (default 256)")
    p = sub.add_parser("server", parents=[common], help="echo until Ctrl-C (3.60+ layouts)")
    p.add_argument("--port", type=int, default=7777)
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    p.set_defaults(fn=cmd_server)
    p = sub.add_parser("client", parents=[common, traffic], help="exchange messages with a server")
    p.add_argument("--port", type=int, default=7777)
    p.set_defaults(fn=cmd_client)
    p = sub.add_parser("selftest", parents=[common, traffic],
                       help="server and client in this process, checked")
    p.set_defaults(fn=cmd_selftest)
    args = parser.parse_args(argv)
    if getattr(args, "size", 8) < 8 or getattr(args, "count", 1) < 1:
        parser.error("--size must be at least 8 and --count at least 1")
    rc: int = args.fn(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
