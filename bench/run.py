#!/usr/bin/env python3
"""pyxlio's benchmark runner: every figure, every ratio, one JSON file.

    python bench/run.py --quick          # CI size, < 3 minutes
    python bench/run.py                  # full
    python bench/run.py --only feed,drain --out results.json

Each configuration runs in a fresh interpreter (a *worker*: ``python bench/run.py --worker
JSON``) with the environment it needs: under pyxlio's emulator with its in-memory feed, or with
no XLIO at all (pyxlio's kernel path), pinned to one core.  The C references (``bench/c``:
refloop.c, pxbench.c, built here with the C compiler into a cache directory) run in the same run,
so every figure is given as a ratio to a C loop making the same calls.

Sections (``--only``):

feed      per-datagram cost on the emulator's in-memory feed (no system call per datagram):
          stdlib recvfrom / recv_into / recvmsg_into, pyxlio recvfrom_zcopy + release,
          recv_batch at 1, 16, 64, 256 (lengths / a memoryview each / a Packet each), the
          receive callback; vs refloop's recvfrom / zcopy / zcopy-free-batch and pxbench cb.
drain     loopback drain: the socket buffer is filled by a C sender first (SO_RCVBUFFORCE
          1 GiB, the receiver idle), then emptied and timed: the receiver's own ceiling.  No
          XLIO (pyxlio's recvmmsg path) and, in the full run, under the emulator; vs refloop's
          recvmmsg(64) and recvfrom drains (and pxbench's recvmmsg asking source addresses,
          as pyxlio's kernel path does).
live      a C sender with UDP GSO (64 datagrams a send) at ~1.3 M datagrams/s on core 0, the
          receiver on core 1; drops from the sender's count and /proc/net/snmp RcvbufErrors.
pingpong  64-byte busy-poll ping-pong on loopback against a C server (pxbench pp-server):
          ``python -m pyxlio.perf ping-pong --busy-poll`` vs pxbench's C client, p50 and p99
          half-RTT; then the server side: pxbench's C client against ``python -m pyxlio.perf
          server --busy-poll`` vs against pxbench pp-server.
memory    RSS before and after ten million datagrams received from the feed.
ultra     XLIO's Ultra API against the socket path, TCP over loopback under the emulator (layout
          3.61, busy-poll, server on core 0, client on core 1), in one run: 64-byte ping-pong
          half-RTT (``pyxlio.perf --recv-method ultra`` client and server vs the socket path's
          stdlib and batch clients and server; ratio to stdlib --python-loop, the same kind of
          loop) and throughput: received messages per second (Ultra server vs socket server,
          fed by the same stdlib client) and sent (ultra vs stdlib client, both Python loops).

Ratios: ``speed_vs_c = c_ns / ns`` (1.0 = as fast as C, higher is faster) and its inverse
``cost_vs_c = ns / c_ns`` (how many times C's cost).  Timing is reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
C_DIR = BENCH_DIR / "c"

SO_RCVBUFFORCE = 33           # not in Python's socket module
SO_MEMINFO = 55
SK_MEMINFO_VARS = 9
DRAIN_RCVBUF = 1 << 30        # as refloop --drain (the kernel doubles it)
LIVE_RCVBUF = 32 << 20        # what refloop recv asks (SO_RCVBUFFORCE): the same for all
FEED_SIZES = (64, 200, 1024)
DRAIN_SIZES = (64, 200, 1024)
BATCH_SIZES = (1, 16, 64, 256)
SENDER_CPU, RECEIVER_CPU = 0, 1
#: Core the drain's fill runs on.  The fill is over before the timed drain starts, so the
#: receiver's own core is used: skbs freed on another core than the one that allocated them
#: go back through deferred frees and IPIs (native_write_msr in a VM), which added +-50%
#: run-to-run noise unrelated to the receiver here.  --drain-sender-cpu changes it.
DRAIN_SENDER_CPU = RECEIVER_CPU
CALLBACK_EVERY = 64           # feed callback: DROP, except every 64th datagram (RECV)

JSONDict = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Environment: where pyxlio is, the emulator, the C tools
# ---------------------------------------------------------------------------------------------

def _pyxlio_root() -> str:
    """The directory pyxlio is imported from (the source tree's src/ when not installed)."""
    try:
        import pyxlio
    except ImportError:
        src = REPO / "src"
        if (src / "pyxlio").is_dir():
            sys.path.insert(0, str(src))
            import pyxlio
        else:
            raise
    return str(Path(pyxlio.__file__).resolve().parent.parent)


_OS_RULE_FILE: str | None = None


def _os_rule_file() -> str:
    """A libxlio.conf saying `use os udp_receiver *:*`: the emulator then offloads no UDP
    receiver, as a real libxlio treats loopback (pyxlio's path for non-offloaded sockets)."""
    global _OS_RULE_FILE
    if _OS_RULE_FILE is None or not os.path.exists(_OS_RULE_FILE):
        fd, path = tempfile.mkstemp(prefix="pyxlio-bench-", suffix=".conf")
        with os.fdopen(fd, "w") as f:
            f.write("use os udp_receiver *:*\n")
        _OS_RULE_FILE = path
    return _OS_RULE_FILE


def child_env(emu: bool, feed: str | None = None,
              not_offloaded: bool = False) -> dict[str, str]:
    """Environment for a worker or a C tool: pyxlio importable, the emulator or no XLIO
    (`not_offloaded`: under the emulator, with no UDP receiver offloaded)."""
    root = _pyxlio_root()
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    for k in [k for k in env if k.startswith("PYXLIO_EMU_")]:
        del env[k]
    parts = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    if emu:
        from pyxlio import emu as _emu

        env = _emu.environ(feed=feed, base=env,
                           config_file=_os_rule_file() if not_offloaded else None)
    return env


def feed_spec(base: int) -> str:
    """The emulator's feed: one port per datagram size (base, base+1, ...)."""
    return ",".join(f"{base + i}:{s}" for i, s in enumerate(FEED_SIZES))


def feed_port(base: int, size: int) -> int:
    return base + FEED_SIZES.index(size)


def c_tools() -> dict[str, str]:
    """Build refloop and pxbench (once per source version) and return their paths."""
    import pyxlio

    include = Path(pyxlio.__file__).resolve().parent / "include"
    cc = os.environ.get("CC", "cc")
    sources = {"refloop": C_DIR / "refloop.c", "pxbench": C_DIR / "pxbench.c"}
    h = hashlib.sha256()
    for p in [*sources.values(), C_DIR / "benchutil.h", include / "pyxlio" / "xlio_abi.h"]:
        h.update(p.read_bytes())
    h.update(cc.encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = cache / "pyxlio-bench" / h.hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    tools = {}
    for name, src in sources.items():
        exe = out / name
        if not exe.exists():
            tmp = out / f".{name}.{os.getpid()}"
            subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", f"-I{include}",
                            "-o", str(tmp), str(src)], check=True)
            os.replace(tmp, exe)
        tools[name] = str(exe)
    return tools


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def rcvbuf_errors() -> int:
    """UDP RcvbufErrors from /proc/net/snmp (system-wide)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


# ---------------------------------------------------------------------------------------------
# In-process measurement primitives (used by the workers and by the pytest-benchmark suites)
# ---------------------------------------------------------------------------------------------

def open_udp(kind: str, port: int = 0, rcvbuf: int | None = None,
             rcvtimeo: float | None = 1.0) -> socket.socket:
    """A UDP socket bound to 127.0.0.1:port: ``kind`` "stdlib" (socket.socket) or "pyxlio".

    Blocking, with SO_RCVTIMEO as a guard (a settimeout() would add a poll() per receive)."""
    if kind == "pyxlio":
        from pyxlio.socket import socket as pxsocket

        s: socket.socket = pxsocket(socket.AF_INET, socket.SOCK_DGRAM)
    elif kind == "stdlib":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        raise ValueError(f"socket kind {kind!r}")
    try:
        if rcvbuf:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if rcvtimeo:
            sec = int(rcvtimeo)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                         struct.pack("ll", sec, int((rcvtimeo - sec) * 1e6)))
        s.bind(("127.0.0.1", port))
    except BaseException:
        s.close()
        raise
    return s


Loop = Callable[[int], int]

#: receive methods: name -> (socket kind, needs max_packets)
METHODS: dict[str, str] = {
    "recvfrom": "stdlib",        # sock.recvfrom(2048)
    "recv_into": "stdlib",       # sock.recv_into(buf)
    "recvmsg_into": "stdlib",    # sock.recvmsg_into([buf])
    "zcopy": "pyxlio",           # pkt = sock.recvfrom_zcopy(); pkt.release()
    "batch": "pyxlio",           # b = sock.recv_batch(m); b.lengths; b.release()
    "batch_noaddr": "pyxlio",    # ... recv_batch(m, addresses=False)
    "views_noaddr": "pyxlio",    # views, with recv_batch(m, addresses=False)
    "views": "pyxlio",           # ... one memoryview per datagram (views())
    "views_touch": "pyxlio",     # ... and read its first byte
    "packets": "pyxlio",         # ... one Packet object per datagram (iteration, .nbytes)
    "callback": "pyxlio",        # set_recv_callback(fn): fn per datagram
}


def make_loop(method: str, sock: Any, max_packets: int = 64, every: int = 0) -> Loop:
    """A function receiving up to `count` datagrams from `sock` by `method`; returns how many
    it got (fewer only when the socket ran dry: SO_RCVTIMEO / empty batch)."""
    m = max_packets
    if method == "recvfrom":
        r = sock.recvfrom

        def loop(count: int) -> int:
            i = -1
            try:
                for i in range(count):  # noqa: B007  (i is the count on a timeout)
                    r(2048)
            except (BlockingIOError, TimeoutError):
                return i
            return count
    elif method == "recv_into":
        ri = sock.recv_into
        buf = bytearray(2048)

        def loop(count: int) -> int:
            i = -1
            try:
                for i in range(count):  # noqa: B007  (i is the count on a timeout)
                    ri(buf)
            except (BlockingIOError, TimeoutError):
                return i
            return count
    elif method == "recvmsg_into":
        rm = sock.recvmsg_into
        bufs = [bytearray(2048)]

        def loop(count: int) -> int:
            i = -1
            try:
                for i in range(count):  # noqa: B007  (i is the count on a timeout)
                    rm(bufs)
            except (BlockingIOError, TimeoutError):
                return i
            return count
    elif method == "zcopy":
        rz = sock.recvfrom_zcopy

        def loop(count: int) -> int:
            i = -1
            try:
                for i in range(count):  # noqa: B007  (i is the count on a timeout)
                    rz().release()
            except (BlockingIOError, TimeoutError):
                return i
            return count
    elif method in ("batch", "batch_noaddr"):
        # addresses=False (pyxlio >= 3d0af0d) only where asked: the default call stays plain
        rb = sock.recv_batch if method == "batch" else \
            functools.partial(sock.recv_batch, addresses=False)

        def loop(count: int) -> int:
            got = 0
            while got < count:
                b = rb(m if count - got >= m else count - got)
                k = len(b)
                b.lengths  # noqa: B018  (reading the lengths is the point)
                b.release()
                if not k:
                    break
                got += k
            return got
    elif method in ("views", "views_touch", "views_noaddr"):
        rb = sock.recv_batch if method != "views_noaddr" else \
            functools.partial(sock.recv_batch, addresses=False)
        touch = method == "views_touch"

        def loop(count: int) -> int:
            got = 0
            v = None
            while got < count:
                b = rb(m if count - got >= m else count - got)
                k = len(b)
                if touch:
                    for v in b.views():
                        v[0]
                else:
                    for v in b.views():  # noqa: B007  (v holds a view until the next)
                        pass
                v = None
                b.release()
                if not k:
                    break
                got += k
            return got
    elif method == "packets":
        rb = sock.recv_batch

        def loop(count: int) -> int:
            got = 0
            p = None
            while got < count:
                b = rb(m if count - got >= m else count - got)
                k = len(b)
                for p in b:
                    p.nbytes  # noqa: B018
                p = None
                b.release()
                if not k:
                    break
                got += k
            return got
    elif method == "callback":
        return _callback_loop(sock, every)
    else:
        raise ValueError(f"unknown method {method!r}")
    return loop


def _callback_loop(sock: Any, every: int) -> Loop:
    """The callback path: fn(view, info) counts each datagram and returns DROP, except every
    `every`th (RECV: the receive call then returns it).  every == 0: always DROP (a drain:
    non-blocking receive calls until `count` went through or the socket stays unreadable)."""
    calls = 0
    drop, recv = 0, 1   # Verdict.DROP, Verdict.RECV as plain ints

    if every:
        def fn(view: memoryview, info: object) -> int:
            nonlocal calls
            calls += 1
            return recv if calls % every == 0 else drop
    else:
        def fn(view: memoryview, info: object) -> int:
            nonlocal calls
            calls += 1
            return drop
    sock.set_recv_callback(fn)
    rz = sock.recvfrom_zcopy
    rb = sock.recv_batch

    def loop(count: int) -> int:
        nonlocal calls
        calls = 0
        if every:
            while calls < count:
                rz().release()
        else:
            # A non-blocking receive runs the callback on a bounded number of datagrams (XLIO
            # polls its rings in bounded rounds; the emulator pulls batches) and may come back
            # empty with more queued: only a socket that stays unreadable ends the drain early.
            # (Not a blocking receive: with every datagram DROPped it would return only at its
            # timeout.  select() may run the last callbacks itself, as XLIO's does: a short
            # timeout, and progress counts as readable.)
            while calls < count:
                b = rb(1, 0)
                b.release()
                if b or calls >= count:
                    continue
                before = calls
                if not select.select([sock], [], [], 0.01)[0] and calls == before:
                    break
        return calls
    return loop


def timed(loop: Loop, count: int) -> tuple[float, int]:
    """(ns per datagram, datagrams) for one call of `loop`."""
    t0 = time.perf_counter_ns()
    got = loop(count)
    dt = time.perf_counter_ns() - t0
    return (dt / got if got > 0 else float("nan")), got


def wait_filled(sock: socket.socket, timeout: float = 20.0) -> int:
    """Wait until the socket's queued memory stops growing; returns the bytes queued."""
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    while stable < 3:
        mem = struct.unpack(f"{SK_MEMINFO_VARS}I",
                            sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS))
        stable = stable + 1 if mem[0] == last else 0
        last = mem[0]
        if time.monotonic() > deadline:
            raise TimeoutError("the receive queue did not settle")
        time.sleep(0.05)
    return last


def gso_for(size: int) -> int:
    return min(64, 65507 // size)


def fill(sender: str, port: int, count: int, size: int, cpu: int | None = SENDER_CPU) -> None:
    """Send `count` `size`-byte datagrams to 127.0.0.1:port with refloop (UDP GSO) and wait."""
    cmd = [sender, "send", "--dest", f"127.0.0.1:{port}", "--count", str(count),
           "--size", str(size), "--gso", str(gso_for(size))]
    if cpu is not None and cpu < (os.cpu_count() or 1):
        cmd += ["--cpu", str(cpu)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=child_env(False), timeout=120)


# ---------------------------------------------------------------------------------------------
# Worker operations (one configuration, in a fresh interpreter with the right environment)
# ---------------------------------------------------------------------------------------------

def op_feed(a: JSONDict) -> JSONDict:
    """Per-datagram cost on the emulator's feed: warm-up, then `reps` rounds of `count`."""
    import pyxlio

    pin(a.get("cpu"))
    method, count, reps = a["method"], int(a["count"]), int(a["reps"])
    sock = open_udp(METHODS[method], a["port"], rcvtimeo=None)
    with contextlib.closing(sock):
        loop = make_loop(method, sock, a.get("max_packets", 64), CALLBACK_EVERY)
        loop(max(1000, count // 10))
        runs = []
        for _ in range(reps):
            ns, got = timed(loop, count)
            if got != count:
                raise RuntimeError(f"feed gave {got} of {count}")
            runs.append(ns)
        out = getattr(sock, "outstanding", 0)
        if method == "callback":
            sock.set_recv_callback(None)   # type: ignore[attr-defined]
    api = pyxlio.get_api()
    return {"runs_ns": runs, "outstanding_after": out,
            "provider": api.provider if api else "kernel"}


def op_drain(a: JSONDict) -> JSONDict:
    """Loopback drain: fill with a C sender while idle, then time emptying the buffer."""
    import pyxlio

    pin(a.get("cpu"))
    method, count, size = a["method"], int(a["count"]), int(a["size"])
    runs, snmp = [], []
    for _ in range(int(a["reps"])):
        sock = open_udp(METHODS[method], 0, rcvbuf=DRAIN_RCVBUF, rcvtimeo=1.0)
        with contextlib.closing(sock):
            port = sock.getsockname()[1]
            loop = make_loop(method, sock, a.get("max_packets", 64), 0)
            e0 = rcvbuf_errors()
            fill(a["sender"], port, count, size, a.get("sender_cpu", DRAIN_SENDER_CPU))
            wait_filled(sock)
            snmp.append(rcvbuf_errors() - e0)
            ns, got = timed(loop, count)
            if got != count:
                raise RuntimeError(f"drain got {got} of {count} datagrams (RcvbufErrors +"
                                   f"{snmp[-1]})")
            if method == "callback":
                sock.set_recv_callback(None)   # type: ignore[attr-defined]
            runs.append(ns)
    api = pyxlio.get_api()
    return {"runs_ns": runs, "rcvbuf_errors": snmp,
            "provider": api.provider if api else "kernel"}


def op_live(a: JSONDict) -> JSONDict:
    """Receive until the sender stops (1 s idle); prints ready first.  Counts datagrams."""
    import pyxlio

    pin(a.get("cpu"))
    method = a["method"]
    sock = open_udp(METHODS[method], a["port"], rcvbuf=a.get("rcvbuf", LIVE_RCVBUF),
                    rcvtimeo=1.0)
    with contextlib.closing(sock):
        loop = make_loop(method, sock, a.get("max_packets", 64), 0)
        print(json.dumps({"ready": True}), flush=True)
        got_total, waited = 0, 0
        chunk = 1 << 14
        while True:
            got = loop(chunk)
            got_total += got
            if got < chunk:       # ran dry for SO_RCVTIMEO (1 s)
                waited += 1
                if got_total or waited >= 10:
                    break          # the sender is done (or never came)
    api = pyxlio.get_api()
    return {"received": got_total,
            "provider": api.provider if api else "kernel"}


def op_memory(a: JSONDict) -> JSONDict:
    """RSS before/after `count` datagrams from the feed (after a warm-up)."""
    import gc

    pin(a.get("cpu"))
    method, count = a["method"], int(a["count"])
    sock = open_udp(METHODS[method], a["port"], rcvtimeo=None)
    with contextlib.closing(sock):
        loop = make_loop(method, sock, a.get("max_packets", 64), CALLBACK_EVERY)
        loop(1_000_000)
        gc.collect()
        before = rss_kib()
        t0 = time.perf_counter()
        done = 0
        while done < count:
            done += loop(min(1_000_000, count - done))
        secs = time.perf_counter() - t0
        gc.collect()
        after = rss_kib()
        out = getattr(sock, "outstanding", 0)
        if method == "callback":
            sock.set_recv_callback(None)   # type: ignore[attr-defined]
    return {"rss_before_kib": before, "rss_after_kib": after, "growth_kib": after - before,
            "datagrams": done, "seconds": secs, "outstanding_after": out}


def op_pingpong(a: JSONDict) -> JSONDict:
    """The smallest busy-poll ping-pong client Python allows (no statistics work in the loop):
    the floor under ``python -m pyxlio.perf ping-pong``.  Same wire format and warm-up/measure
    rule as pxbench pp-client; prints the same JSON shape."""
    pin(a.get("cpu"))
    method, size = a["method"], int(a.get("size", 64))
    kind = "stdlib" if method == "recv_into" else "pyxlio"
    if kind == "pyxlio":
        from pyxlio.socket import socket as pxsocket

        sock: Any = pxsocket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clock = time.perf_counter_ns
    with contextlib.closing(sock):
        sock.connect(("127.0.0.1", a["port"]))
        sock.setblocking(False)
        msg = bytearray(size)
        hdr = struct.Struct("!QHI")
        # batch_stdsend: the stdlib's send on the pyxlio socket (without pyxlio's Python-level
        # send override, which checks MSG_DUMMY)
        send = socket.socket.send.__get__(sock) if method == "batch_stdsend" else sock.send
        buf = bytearray(2048)
        rtts: list[int] = []
        t0 = clock()
        m0 = t0 + int(a.get("warmup", 0.4) * 1e9)
        m1 = m0 + int(a.get("seconds", 1.0) * 1e9)
        seq = 0
        while True:
            hdr.pack_into(msg, 0, seq, 3, size)   # CLIENT | PONG
            ts = clock()
            if ts >= m1:
                break
            send(msg)
            if method in ("batch", "batch1", "batch_stdsend"):
                rb = sock.recv_batch
                mp = 1 if method == "batch1" else 64
                while True:
                    b = rb(mp, 0)
                    if b:
                        tr = clock()
                        b.release()
                        break
            elif method == "zcopy":
                rz = sock.recvfrom_zcopy
                while True:
                    try:
                        p = rz()
                    except BlockingIOError:
                        continue
                    tr = clock()
                    p.release()
                    break
            else:
                ri = sock.recv_into
                while True:
                    try:
                        ri(buf)
                    except BlockingIOError:
                        continue
                    tr = clock()
                    break
            if ts >= m0:
                rtts.append(tr - ts)
            seq += 1
    rtts.sort()
    n = len(rtts)

    def pct(p: float) -> float:
        return rtts[min(n, max(1, int(p / 100 * n + 0.5))) - 1] / 2000.0
    return {"count": n, "avg": sum(rtts) / n / 2000.0, "min": rtts[0] / 2000.0,
            "max": rtts[-1] / 2000.0,
            "percentiles": {str(p): pct(p) for p in (25, 50, 75, 90, 99, 99.9)}}


OPS: dict[str, Callable[[JSONDict], JSONDict]] = {
    "pingpong": op_pingpong,
    "feed": op_feed, "drain": op_drain, "live": op_live, "memory": op_memory,
}


def worker_main(spec: str) -> int:
    a = json.loads(spec)
    res = OPS[a["op"]](a)
    print(json.dumps({"result": res}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------

def _last_json(text: str) -> JSONDict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            d: JSONDict = json.loads(line)
            return d
    raise RuntimeError(f"no JSON in output: {text[-500:]!r}")


def run_worker(spec: JSONDict, emu: bool, feed: str | None = None,
               timeout: float = 300, not_offloaded: bool = False) -> JSONDict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    p = subprocess.run(cmd, env=child_env(emu, feed, not_offloaded), capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"worker {spec['op']} {spec.get('method')} failed "
                           f"({p.returncode}): {p.stderr.strip()[-2000:]}")
    res: JSONDict = _last_json(p.stdout)["result"]
    return res


def run_c(cmd: list[str], emu: bool = False, feed: str | None = None,
          timeout: float = 120) -> JSONDict:
    p = subprocess.run(cmd, env=child_env(emu, feed), capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-1000:]}")
    return _last_json(p.stdout)


@contextlib.contextmanager
def started(cmd: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Start a receiver that prints {"ready": true} first; stop it (by pid) on the way out."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if '"ready"' not in line:
            p.kill()
            err = p.stderr.read() if p.stderr else ""
            raise RuntimeError(f"{' '.join(cmd[:4])}... did not start: {line!r} {err[-1000:]}")
        yield p
    finally:
        if p.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
            if p.poll() is None:
                p.kill()
                p.wait()


def c_drain(tools: dict[str, str], cmd: list[str], count: int, size: int,
            emu: bool, sender_cpu: int | None = DRAIN_SENDER_CPU) -> JSONDict:
    """Run a C receiver in --drain mode and fill its buffer; its own timing."""
    port = free_udp_port()
    full = [*cmd, "--port", str(port), "--count", str(count), "--drain", "--cpu",
            str(RECEIVER_CPU)]
    with started(full, child_env(emu)) as p:
        fill(tools["refloop"], port, count, size, sender_cpu)
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(full)}: {err[-500:]}")
    return _last_json(out)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _val(fig: JSONDict | None, key: str) -> float | None:
    """A figure's field, None when the figure or the field is missing."""
    v = None if fig is None else fig.get(key)
    return None if v is None else float(v)


class Results:
    """Collects figures, ratios and target checks; prints the human table."""

    def __init__(self) -> None:
        self.figures: list[JSONDict] = []
        self.targets: list[JSONDict] = []
        self.sections: dict[str, Any] = {}
        self.errors: list[JSONDict] = []

    def figure(self, fid: str, runs: list[float], c_runs: list[float] | None, c_ref: str | None,
               **info: Any) -> JSONDict:
        ns = _med(runs)
        f: JSONDict = {"id": fid, "ns_per_datagram": round(ns, 2),
                       "ns_min": round(min(runs), 2), "runs_ns": [round(x, 2) for x in runs],
                       **info}
        if c_runs:
            c = _med(c_runs)
            f.update(c_ref=c_ref, c_ns=round(c, 2), c_runs_ns=[round(x, 2) for x in c_runs],
                     speed_vs_c=round(c / ns, 4), cost_vs_c=round(ns / c, 4),
                     speed_vs_c_best=round(min(c_runs) / min(runs), 4))
        self.figures.append(f)
        print(f"  {fid:<44} {ns:9.1f} ns" +
              (f"   C {f['c_ns']:8.1f} ns   speed {f['speed_vs_c']:.3f}x"
               f"   cost {f['cost_vs_c']:.2f}x" if c_runs else ""), flush=True)
        return f

    def get(self, fid: str) -> JSONDict | None:
        return next((f for f in self.figures if f["id"] == fid), None)

    def target(self, name: str, value: float | None, op: str, goal: float, unit: str,
               detail: str) -> None:
        met = None if value is None else (value >= goal if op == ">=" else
                                          value <= goal if op == "<=" else
                                          value > goal if op == ">" else value < goal)
        t = {"target": name, "value": None if value is None else round(value, 4),
             "goal": f"{op} {goal}{unit}", "met": met, "detail": detail}
        if value is not None and op in (">=", ">"):
            t["miss_by"] = None if met else round(1 - value / goal, 4)
        elif value is not None:
            t["miss_by"] = None if met else round(value / goal - 1, 4)
        self.targets.append(t)

    def table(self) -> str:
        lines = ["", "Targets", "-------"]
        for t in self.targets:
            v = "n/a" if t["value"] is None else f"{t['value']:.3f}"
            mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
            miss = f"  (short by {100 * t['miss_by']:.1f}%)" if t.get("miss_by") else ""
            lines.append(f"  [{mark}] {t['target']:<58} {v:>9} {t['goal']:<10}{miss}")
        lines += ["", "Ratios to the C reference (speed = C ns / pyxlio ns, medians; best = "
                  "best run of each)", "-" * 78]
        for f in self.figures:
            if "c_ns" in f:
                lines.append(f"  {f['id']:<40} {f['ns_per_datagram']:8.1f} ns  C "
                             f"{f['c_ns']:7.1f} ns  speed {f['speed_vs_c']:6.3f}x "
                             f"(best {f['speed_vs_c_best']:5.3f}x)  [{f['c_ref']}]")
        return "\n".join(lines)


# -- sections ---------------------------------------------------------------------------------

def section_feed(R: Results, tools: dict[str, str], quick: bool, base: int) -> None:
    print("== feed: the emulator's in-memory feed (per datagram)", flush=True)
    feed = feed_spec(base)
    count = 204_800 if quick else 1_024_000
    reps = 3 if quick else 5
    sizes = (64,) if quick else FEED_SIZES
    for size in sizes:
        port = feed_port(base, size)
        cnt = count if size < 1024 else count // 2

        def c_ref(mode: str, batch: int = 64, _port: int = port,
                  _cnt: int = cnt) -> list[float]:
            if mode == "cb":
                cmd = [tools["pxbench"], "cb", "--port", str(_port), "--count", str(_cnt),
                       "--every", str(CALLBACK_EVERY), "--cpu", str(RECEIVER_CPU)]
            else:
                cmd = [tools["refloop"], "recv", "--mode", mode, "--port", str(_port),
                       "--count", str(_cnt), "--batch", str(batch), "--cpu", str(RECEIVER_CPU)]
            return [run_c(cmd, emu=True, feed=feed)["ns_per_packet"] for _ in range(reps)]

        configs: list[tuple[str, int, str, int]] = [
            ("recvfrom", 1, "recvfrom", 1), ("recv_into", 1, "recvfrom", 1),
            ("recvmsg_into", 1, "recvfrom", 1), ("zcopy", 1, "zcopy", 1),
        ]
        for m in BATCH_SIZES:
            configs.append(("batch", m, "zcopy-free-batch", m))
        configs += [("views", 64, "zcopy-free-batch", 64), ("packets", 64, "zcopy-free-batch", 64),
                    ("callback", 1, "cb", 1)]
        if not quick:
            configs += [("batch_noaddr", 64, "zcopy-free-batch", 64),
                        ("views", 256, "zcopy-free-batch", 256),
                        ("views_touch", 64, "zcopy-free-batch", 64),
                        ("packets", 256, "zcopy-free-batch", 256)]
        cache: dict[tuple[str, int], list[float]] = {}
        for method, m, cmode, cb in configs:
            spec = {"op": "feed", "method": method, "max_packets": m, "port": port,
                    "count": cnt, "reps": reps, "cpu": RECEIVER_CPU}
            res = run_worker(spec, emu=True, feed=feed)
            key = (cmode, cb)
            if key not in cache:
                cache[key] = c_ref(cmode, cb)
            label = method if METHODS[method] == "stdlib" or method in ("zcopy", "callback") \
                else f"{method}{m}"
            cname = ("pxbench cb --every 64" if cmode == "cb" else
                     f"refloop {cmode}" + (f" --batch {cb}" if cmode == "zcopy-free-batch"
                                           else ""))
            R.figure(f"feed/{size}B/{label}", res["runs_ns"], cache[key], cname,
                     section="feed", provider=res["provider"], size=size, method=method,
                     max_packets=m, datagrams_per_run=cnt,
                     outstanding_after=res["outstanding_after"])
    f = R.get("feed/64B/batch64")
    R.target("feed: recv_batch(64) lengths within 2x of C zcopy+free-batch(64)",
             _val(f, "cost_vs_c"), "<=", 2.0, "x", "cost_vs_c of feed/64B/batch64")
    f = R.get("feed/64B/zcopy")
    R.target("feed: one Packet per datagram (recvfrom_zcopy+release) within 5x C",
             _val(f, "cost_vs_c"), "<=", 5.0, "x", "cost_vs_c of feed/64B/zcopy vs refloop zcopy")
    f = R.get("feed/64B/packets64")
    R.target("feed: one Packet per datagram (batch iteration) within 5x C",
             _val(f, "cost_vs_c"), "<=", 5.0, "x",
             "cost_vs_c of feed/64B/packets64 vs refloop zcopy-free-batch 64")


def section_drain(R: Results, tools: dict[str, str], quick: bool) -> None:
    """Loopback drains; C and Python runs interleaved rep by rep (the machine drifts)."""
    print("== drain: loopback, buffer filled first, then emptied (per datagram)", flush=True)
    count = 102_400 if quick else 204_800
    reps = 3 if quick else 5           # C references and the kernel pass
    reps_emu = 3                       # emu and emu-os passes
    # kernel: no XLIO (recvmmsg path); emu: the emulator offloads loopback (zero-copy path);
    # emu-os: under the emulator with no UDP receiver offloaded, which is what a real libxlio
    # does with loopback (pyxlio then receives through recvfrom_zcopy's copy fall-through)
    providers = ["kernel"] if quick else ["kernel", "emu", "emu-os"]
    refloop, pxb = tools["refloop"], tools["pxbench"]
    c_jobs: dict[str, tuple[list[str], bool, str]] = {
        "recvmmsg": ([refloop, "recv", "--mode", "recvmmsg", "--batch", "64"], False,
                     "refloop recvmmsg --batch 64 --drain"),
        "recvfrom": ([refloop, "recv", "--mode", "recvfrom"], False, "refloop recvfrom --drain"),
    }
    # recvmmsg asking each source address (msg_name), as pyxlio's kernel path does
    c_jobs["names"] = ([pxb, "mmsg", "--batch", "64", "--names"], False,
                       "pxbench mmsg --batch 64 --names --drain")
    if not quick:
        c_jobs["touch"] = ([pxb, "mmsg", "--batch", "64", "--touch"], False,
                           "pxbench mmsg --batch 64 --touch --drain")
        c_jobs["emu_zcopy"] = ([refloop, "recv", "--mode", "zcopy"], True,
                               "refloop zcopy --drain (emulator)")
        c_jobs["emu_cb"] = ([pxb, "cb", "--every", "0"], True,
                            "pxbench cb --every 0 --drain (emulator)")
        c_jobs["emu_zcfb"] = ([refloop, "recv", "--mode", "zcopy-free-batch", "--batch", "64"],
                              True, "refloop zcopy-free-batch --batch 64 --drain (emulator)")
    if quick:
        py_configs = [("recvfrom", 1), ("batch", 64), ("views", 64), ("batch_noaddr", 64),
                      ("views_noaddr", 64)]
    else:
        py_configs = [("recvfrom", 1), ("recv_into", 1), ("recvmsg_into", 1), ("zcopy", 1),
                      *[("batch", m) for m in BATCH_SIZES], ("views", 64), ("views_touch", 64),
                      ("packets", 64), ("batch_noaddr", 64), ("views_noaddr", 64)]

    def c_for(prov: str, method: str) -> str:
        if METHODS[method] == "stdlib":
            return "recvfrom"
        if prov == "emu" and method == "callback":
            return "emu_cb"
        if prov == "emu" and method == "zcopy":
            return "emu_zcopy"
        if prov == "emu" and method in ("batch", "views", "packets"):
            return "emu_zcfb"
        if method == "views_touch" and "touch" in c_jobs:
            return "touch"
        return "recvmmsg"

    for size in DRAIN_SIZES:
        cnt = count if size < 1024 else count // 2
        c_runs: dict[str, list[float]] = {k: [] for k in c_jobs}
        py_runs: dict[tuple[str, str, int], list[float]] = {}
        py_info: dict[tuple[str, str, int], JSONDict] = {}
        for rep in range(reps):
            for key, (cmd, emu, _) in c_jobs.items():
                if emu and rep >= reps_emu:
                    continue
                c_runs[key].append(c_drain(tools, cmd, cnt, size, emu)["ns_per_packet"])
            for prov in providers:
                if prov != "kernel" and rep >= reps_emu:
                    continue
                confs = py_configs + ([("callback", 1)] if prov == "emu" else [])
                if prov == "emu":
                    confs = [("recvfrom", 1), ("zcopy", 1), ("batch", 64), ("views", 64),
                             ("packets", 64), ("callback", 1)]
                elif prov == "emu-os":
                    confs = [("recvfrom", 1), ("zcopy", 1), ("batch", 64), ("views", 64)]
                for method, m in confs:
                    spec = {"op": "drain", "method": method, "max_packets": m, "size": size,
                            "count": cnt, "reps": 1, "cpu": RECEIVER_CPU, "sender": refloop}
                    res = run_worker(spec, emu=prov != "kernel",
                                     not_offloaded=prov == "emu-os")
                    k = (prov, method, m)
                    py_runs.setdefault(k, []).extend(res["runs_ns"])
                    info = py_info.setdefault(k, {"provider": res["provider"],
                                                  "rcvbuf_errors": []})
                    info["rcvbuf_errors"].extend(res["rcvbuf_errors"])
        R.sections.setdefault("drain_c", {})[f"{size}B"] = {
            key: {"ns_per_datagram": _med(v), "runs_ns": v, "command": c_jobs[key][2]}
            for key, v in c_runs.items()}
        stdlib_ns: dict[str, float] = {}
        for (prov, method, m), runs in py_runs.items():
            ck = c_for(prov, method)
            label = method if method in ("recvfrom", "recv_into", "recvmsg_into", "zcopy",
                                         "callback") else f"{method}{m}"
            f = R.figure(f"drain/{prov}/{size}B/{label}", runs, c_runs[ck], c_jobs[ck][2],
                         section="drain", size=size, method=method, max_packets=m,
                         datagrams_per_run=cnt, **py_info[(prov, method, m)])
            if prov == "kernel" and method in ("batch", "views", "views_touch", "packets",
                                               "batch_noaddr", "views_noaddr"):
                cn = _med(c_runs["names"])
                f["c_names_ns"] = round(cn, 2)
                f["speed_vs_c_names"] = round(cn / f["ns_per_datagram"], 4)
            if method == "recvfrom":
                stdlib_ns[prov] = f["ns_per_datagram"]
            elif prov in stdlib_ns:
                f["speed_vs_stdlib_recvfrom"] = round(stdlib_ns[prov] / f["ns_per_datagram"], 4)
        for prov in providers:
            b = R.get(f"drain/{prov}/{size}B/batch64")
            v = R.get(f"drain/{prov}/{size}B/views64")
            if prov == "kernel":
                R.target(f"drain {size}B ({prov}): recv_batch(64) vs C recvmmsg(64)",
                         _val(b, "speed_vs_c"), ">=", 0.95, "x", "speed_vs_c")
                R.target(f"drain {size}B ({prov}): recv_batch(64)+views vs C recvmmsg(64)",
                         _val(v, "speed_vs_c"), ">=", 0.85, "x", "speed_vs_c")
                R.target(f"drain {size}B ({prov}): recv_batch(64) vs C recvmmsg(64)+addresses",
                         _val(b, "speed_vs_c_names"), ">=", 0.95, "x",
                         "informative: the C loop also asks msg_name, as pyxlio does")
                bn = R.get(f"drain/{prov}/{size}B/batch_noaddr64")
                vn = R.get(f"drain/{prov}/{size}B/views_noaddr64")
                R.target(f"drain {size}B ({prov}): recv_batch(64, addresses=False) vs C "
                         "recvmmsg(64)", _val(bn, "speed_vs_c"), ">=", 0.95, "x", "speed_vs_c")
                R.target(f"drain {size}B ({prov}): recv_batch(64, addresses=False)+views vs C "
                         "recvmmsg(64)", _val(vn, "speed_vs_c"), ">=", 0.85, "x", "speed_vs_c")
            R.target(f"drain {size}B ({prov}): recv_batch(64) vs stdlib recvfrom",
                     _val(b, "speed_vs_stdlib_recvfrom"), ">=", 2.5, "x",
                     "stdlib recvfrom ns / recv_batch ns, same run")
            if prov == "kernel":
                R.target(f"drain {size}B ({prov}): recv_batch(64, addresses=False) vs stdlib "
                         "recvfrom", _val(R.get(f"drain/{prov}/{size}B/batch_noaddr64"),
                                          "speed_vs_stdlib_recvfrom"), ">=", 2.5, "x",
                         "stdlib recvfrom ns / recv_batch ns, same run")


def section_live(R: Results, tools: dict[str, str], quick: bool) -> None:
    print("== live: C sender with UDP GSO (64 a send), receiver on another core", flush=True)
    rates = [1_300_000] if quick else [800_000, 1_300_000]
    seconds = 1.5 if quick else 3.0
    reps = 1 if quick else 2
    receivers: list[tuple[str, str, bool]] = [
        ("C refloop recvmmsg(64)", "c:recvmmsg", False),
        ("C refloop recvfrom", "c:recvfrom", False),
        ("stdlib recvfrom", "recvfrom", False), ("pyxlio recv_batch(64)", "batch", False)]
    if not quick:
        receivers += [("pyxlio recv_batch(64)+views", "views", False),
                      ("pyxlio recv_batch(64) (emulator)", "batch", True)]
    out: list[JSONDict] = []
    runs = [(r, x) for r in rates for _ in range(reps) for x in receivers]
    for rate, (name, method, emu) in runs:
        count = int(rate * seconds)
        port = free_udp_port()
        if method.startswith("c:"):
            cmd = [tools["refloop"], "recv", "--mode", method[2:], "--batch", "64", "--port",
                   str(port), "--count", str(count), "--cpu", str(RECEIVER_CPU)]
        else:
            spec = {"op": "live", "method": method, "max_packets": 64, "port": port,
                    "cpu": RECEIVER_CPU, "rcvbuf": LIVE_RCVBUF}
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker",
                   json.dumps(spec)]
        e0 = rcvbuf_errors()
        try:
            with started(cmd, child_env(emu)) as p:
                snd = run_c([tools["refloop"], "send", "--dest", f"127.0.0.1:{port}",
                             "--count", str(count), "--size", "64", "--gso", "64", "--rate",
                             str(rate), "--cpu", str(SENDER_CPU)], timeout=120)
                stdout, stderr = p.communicate(timeout=60)
            e1 = rcvbuf_errors()
            if p.returncode != 0 or ('"result"' not in stdout and '"packets"' not in stdout):
                raise RuntimeError(f"receiver exit status {p.returncode}: {stderr[-800:]!r}")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"  {rate / 1e6:.1f}M/s {name:<34} FAILED: {exc}", flush=True)
            R.errors.append({"section": "live", "receiver": name, "rate": rate,
                             "error": str(exc)})
            continue
        r = _last_json(stdout)
        got = r["packets"] if "packets" in r else r["result"]["received"]
        sent = snd["sent"]
        row = {"receiver": name, "rate_asked": rate,
               "provider": "emulator" if emu else "kernel", "sent": sent,
               "sender_seconds": snd["seconds"],
               "offered_rate": round(sent / snd["seconds"]),
               "received": got, "dropped": sent - got,
               "drop_pct": round(100.0 * (sent - got) / sent, 3),
               "rcvbuf_errors_delta": e1 - e0, "rcvbuf": LIVE_RCVBUF}
        out.append(row)
        print(f"  {rate / 1e6:.1f}M/s {name:<34} offered {row['offered_rate'] / 1e6:.2f} M/s"
              f"  received {got:>9}  dropped {row['drop_pct']:6.2f}%"
              f"  RcvbufErrors +{row['rcvbuf_errors_delta']}", flush=True)
    R.sections["live"] = out
    py = [r for r in out if r["receiver"] == "pyxlio recv_batch(64)"
          and r["rate_asked"] == 1_300_000]
    # a run counts only if the sender really offered the rate (a busy core 0 slows it)
    ok = [r for r in py if r["offered_rate"] >= 0.95 * r["rate_asked"]]
    worst = max(ok, key=lambda r: r["drop_pct"]) if ok else None
    R.target("live 1.3M/s: pyxlio recv_batch drops (worst run)",
             worst["drop_pct"] if worst else None, "<", 1.0, "%",
             f"sender count; RcvbufErrors +{worst['rcvbuf_errors_delta'] if worst else '?'}; "
             f"runs (drop %, offered M/s): "
             f"{[(r['drop_pct'], round(r['offered_rate'] / 1e6, 2)) for r in py]}; only runs "
             "offered >= 95% of the rate count")


@contextlib.contextmanager
def _perf_server(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    """Start ``python -m pyxlio.perf server``: ready at its "listening on" line (stderr); stopped
    with SIGINT (by pid, as a user's Ctrl-C) on the way out."""
    p = subprocess.Popen(cmd, env=child_env(False), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        if "listening on" not in line:
            p.kill()
            raise RuntimeError(f"{' '.join(cmd[:6])}... did not start: {line!r}")
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def _pp_row(name: str, rows: dict[str, list[JSONDict]], r: JSONDict) -> None:
    r = r.get("result", r)
    lat = r.get("latency", r)
    rows.setdefault(name, []).append(
        {"median_us": lat["percentiles"]["50"], "avg_us": lat["avg"],
         "p99_us": lat["percentiles"]["99"], "min_us": lat["min"], "count": lat["count"]})


def _pp_table(rows: dict[str, list[JSONDict]], ref: str, key: str) -> list[JSONDict]:
    c50 = _med([x["median_us"] for x in rows[ref]])
    c99 = _med([x["p99_us"] for x in rows[ref]])
    out: list[JSONDict] = []
    for name, runs in rows.items():
        med = _med([x["median_us"] for x in runs])
        p99 = _med([x["p99_us"] for x in runs])
        out.append({key: name, "median_half_rtt_us": round(med, 3),
                    "runs_median_us": [x["median_us"] for x in runs], "vs_c": round(med / c50, 4),
                    "p99_half_rtt_us": round(p99, 3), "p99_vs_c": round(p99 / c99, 4),
                    "runs": runs})
        print(f"  {name:<40} half-RTT p50 {med:7.3f} us {med / c50:6.3f}x C   "
              f"p99 {p99:7.3f} us {p99 / c99:6.3f}x C", flush=True)
    return out


def section_pingpong(R: Results, tools: dict[str, str], quick: bool) -> None:
    print("== ping-pong: 64 B, busy-poll, loopback, C server on core 0, client on core 1",
          flush=True)
    secs = 1.0 if quick else 2.0
    reps = 2 if quick else 3
    methods = ["stdlib"] if quick else ["stdlib", "copy", "batch", "zcopy"]
    port = free_udp_port()
    server = [tools["pxbench"], "pp-server", "--port", str(port), "--cpu", str(SENDER_CPU),
              "--seconds", str(reps * (len(methods) + 8) * (secs + 2.5) + 30)]
    rows: dict[str, list[JSONDict]] = {}
    taskset = shutil.which("taskset")
    pinned = taskset is not None and (os.cpu_count() or 1) > 1
    pin_cmd = [taskset, "-c", str(RECEIVER_CPU)] if pinned and taskset else []
    perf_pp = [sys.executable, "-m", "pyxlio.perf", "ping-pong", "-i", "127.0.0.1", "-p",
               str(port), "-m", "64", "--busy-poll", "-t", str(secs), "--json", "-q"]
    with started(server, child_env(False)) as srv:
        for _ in range(reps):
            clients: list[tuple[str, list[str], bool]] = [
                ("C pxbench pp-client", [tools["pxbench"], "pp-client", "--dest",
                                         f"127.0.0.1:{port}", "--size", "64", "--seconds",
                                         str(secs), "--cpu", str(RECEIVER_CPU)], False)]
            for m in methods:
                # stdlib and copy run the compiled loop (pyxlio.perf._loops), batch and zcopy
                # the Python one.
                clients.append((f"pyxlio.perf {m}", [*pin_cmd, *perf_pp, "--recv-method", m],
                                False))
            clients.append(("pyxlio.perf stdlib --python-loop",
                            [*pin_cmd, *perf_pp, "--recv-method", "stdlib", "--python-loop"],
                            False))
            for m in (["batch"] if quick else ["batch", "batch1", "batch_stdsend", "zcopy",
                                               "recv_into"]):
                spec = {"op": "pingpong", "method": m, "port": port, "seconds": secs,
                        "cpu": RECEIVER_CPU}
                clients.append((f"python minimal loop {m}",
                                [sys.executable, str(Path(__file__).resolve()), "--worker",
                                 json.dumps(spec)], False))
            if not quick:
                clients.append(("pyxlio.perf batch (emulator)",
                                [*pin_cmd, *perf_pp, "--recv-method", "batch"], True))
            for name, cmd, emu in clients:
                _pp_row(name, rows, run_c(cmd, emu=emu, timeout=60))
        srv.terminate()
    out = _pp_table(rows, "C pxbench pp-client", "client")

    # The other direction: pxbench's C client against pyxlio.perf's server (busy-poll, on the
    # server's core) and against pxbench's C server, one server at a time, rounds interleaved.
    print("== ping-pong, server side: C client on core 1 against each server on core 0",
          flush=True)
    srows: dict[str, list[JSONDict]] = {}
    pin0 = [taskset, "-c", str(SENDER_CPU)] if pinned and taskset else []
    for _ in range(reps):
        for name, extra in (("C pxbench pp-server", None),
                            ("pyxlio.perf server", []),
                            ("pyxlio.perf server --python-loop", ["--python-loop"])):
            sport = free_udp_port()
            client = [tools["pxbench"], "pp-client", "--dest", f"127.0.0.1:{sport}", "--size",
                      "64", "--seconds", str(secs), "--cpu", str(RECEIVER_CPU)]
            if extra is None:
                with started([tools["pxbench"], "pp-server", "--port", str(sport), "--cpu",
                              str(SENDER_CPU), "--seconds", str(secs + 30)],
                             child_env(False)) as csrv:
                    _pp_row(name, srows, run_c(client, timeout=60))
                    csrv.terminate()
            else:
                with _perf_server([*pin0, sys.executable, "-m", "pyxlio.perf", "server", "-i",
                                   "127.0.0.1", "-p", str(sport), "--busy-poll", "--json", "-q",
                                   *extra]):
                    _pp_row(name, srows, run_c(client, timeout=60))
    sout = _pp_table(srows, "C pxbench pp-server", "server")
    R.sections["pingpong"] = out
    R.sections["pingpong_server"] = sout
    st = next(o for o in out if o["client"] == "pyxlio.perf stdlib")
    R.target("ping-pong 64B busy-poll: pyxlio.perf client (compiled) p50 vs C",
             _val(st, "vs_c"), "<=", 1.05, "x", "stdlib (the default); median of per-run medians")
    R.target("ping-pong 64B busy-poll: pyxlio.perf client (compiled) p99 vs C",
             _val(st, "p99_vs_c"), "<=", 1.2, "x", "stdlib; median of per-run p99s")
    b = next(o for o in out if o["client"] == "pyxlio.perf batch")
    R.target("ping-pong 64B busy-poll: pyxlio (batch) median half-RTT vs C", _val(b, "vs_c"),
             "<=", 1.05, "x", "median of per-run medians (Python loop)")
    sv = next(o for o in sout if o["server"] == "pyxlio.perf server")
    R.target("ping-pong 64B busy-poll: C client vs pyxlio.perf server p50 vs C server",
             _val(sv, "vs_c"), "<=", 1.10, "x", "stdlib, compiled loop; median of medians")


ULTRA_LAYOUT = "3.61"   # the emulator's Ultra API with listen (libxlio 3.61+)


def _ultra_env() -> dict[str, str]:
    env = child_env(True)
    env["PYXLIO_EMU_LAYOUT"] = ULTRA_LAYOUT
    return env


def _perf_json(cmd: list[str], env: dict[str, str], timeout: float = 120) -> JSONDict:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])}... failed ({p.returncode}): "
                           f"{p.stderr.strip()[-1000:]}")
    return _last_json(p.stdout)


class _PerfServer:
    """A ``python -m pyxlio.perf server -p 0 --json`` started with `env`: its port read from
    its "listening on" line; ``stop()`` sends SIGINT (a user's Ctrl-C) and returns its JSON."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        import re

        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        ready = select.select([self.proc.stderr], [], [], 30)[0]
        line = self.proc.stderr.readline() if ready else ""
        m = re.search(r"listening on TCP \S+:(\d+)", line)
        if m is None:
            self.kill()
            raise RuntimeError(f"{' '.join(cmd[:8])}... did not start: {line!r}")
        self.port = int(m[1])

    def stop(self) -> JSONDict:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"pyxlio.perf server failed ({self.proc.returncode}): "
                               f"{err[-1000:]}")
        return _last_json(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def __enter__(self) -> _PerfServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


def section_ultra(R: Results, tools: dict[str, str], quick: bool) -> None:
    """The Ultra API path vs the socket path, TCP under the emulator, measured in one run."""
    print(f"== ultra: TCP over the emulator (layout {ULTRA_LAYOUT}), Ultra API vs socket path, "
          "busy-poll, server on core 0, client on core 1", flush=True)
    secs = 1.0 if quick else 2.0
    reps = 2 if quick else 3
    taskset = shutil.which("taskset")
    pinned = taskset is not None and (os.cpu_count() or 1) > 1
    pin_c = [taskset, "-c", str(RECEIVER_CPU)] if pinned and taskset else []
    pin_s = [taskset, "-c", str(SENDER_CPU)] if pinned and taskset else []
    env = _ultra_env()
    perf = [sys.executable, "-m", "pyxlio.perf"]
    # (row, server's --recv-method and flags, client's --recv-method and flags); rounds
    # interleaved so that a change of load touches every row alike.
    pp_rows = [
        ("socket: stdlib client (compiled) / stdlib server (compiled)", ["stdlib"], ["stdlib"]),
        ("socket: stdlib client / stdlib server, --python-loop",
         ["stdlib", "--python-loop"], ["stdlib", "--python-loop"]),
        ("socket: batch client / batch server (Python loops)", ["batch"], ["batch"]),
        ("ultra: ultra client / ultra server (Python loops)", ["ultra"], ["ultra"]),
    ]
    if quick:
        pp_rows = [pp_rows[1], pp_rows[3]]
    rows: dict[str, list[JSONDict]] = {}
    for _ in range(reps):
        for name, smethod, cmethod in pp_rows:
            with _PerfServer([*pin_s, *perf, "server", "--tcp", "-i", "127.0.0.1", "-p", "0",
                              "--busy-poll", "--json", "-q", "--recv-method", *smethod],
                             env) as srv:
                res = _perf_json([*pin_c, *perf, "ping-pong", "--tcp", "-i", "127.0.0.1", "-p",
                                  str(srv.port), "-m", "64", "--busy-poll", "-t", str(secs),
                                  "--json", "-q", "--recv-method", *cmethod], env)
                srv.stop()
                _pp_row(name, rows, res)
    # The reference: the socket path in the same kind of loop as the Ultra rows (Python).
    ref = next(name for name, _s, _c in pp_rows if "--python-loop" in name)
    out = _pp_table_ref(rows, ref, "path")

    # Throughput (the client's loop is Python for every method there): the receive path is the
    # server's rate of received messages, each server fed by the same stdlib client; the send
    # path is the client's rate, stdlib and ultra clients against the compiled stdlib server.
    print("== ultra: TCP throughput, 64 B: servers' received and clients' sent messages per "
          "second", flush=True)
    tp_rows = [("socket: stdlib client -> stdlib server (compiled)", ["stdlib"], "stdlib"),
               ("socket: stdlib client -> stdlib server --python-loop",
                ["stdlib", "--python-loop"], "stdlib"),
               ("socket: stdlib client -> batch server", ["batch"], "stdlib"),
               ("ultra: stdlib client -> ultra server", ["ultra"], "stdlib"),
               ("ultra: ultra client -> stdlib server (compiled)", ["stdlib"], "ultra"),
               ("ultra: ultra client -> ultra server", ["ultra"], "ultra")]
    if quick:
        tp_rows = [tp_rows[0], tp_rows[1], tp_rows[3], tp_rows[4]]
    tp: dict[str, list[JSONDict]] = {}
    for _ in range(reps):
        for name, smethod, cmethod in tp_rows:
            with _PerfServer([*pin_s, *perf, "server", "--tcp", "-i", "127.0.0.1", "-p", "0",
                              "--busy-poll", "--json", "-q", "--recv-method", *smethod],
                             env) as srv:
                cres = _perf_json([*pin_c, *perf, "throughput", "--tcp", "-i", "127.0.0.1", "-p",
                                   str(srv.port), "-m", "64", "-t", str(secs), "--json", "-q",
                                   "--recv-method", cmethod], env)
                sres = srv.stop()
            tp.setdefault(name, []).append({
                "server_msg_per_s": round(sres["msg_per_s"]), "received": sres["received"],
                "client_sent": cres["sent"], "client_msg_per_s": cres["msg_per_s"]})
    rx_ref = tp_rows[1][0]     # the socket server in a Python loop, as the Ultra server's
    tx_ref = tp_rows[0][0]     # the stdlib client (a Python loop, as the Ultra client's)
    rx_base = _med([r["server_msg_per_s"] for r in tp[rx_ref]])
    tx_base = _med([r["client_msg_per_s"] for r in tp[tx_ref]])
    tout: list[JSONDict] = []
    for name, runs in tp.items():
        rx = _med([r["server_msg_per_s"] for r in runs])
        tx = _med([r["client_msg_per_s"] for r in runs])
        tout.append({"row": name, "server_msg_per_s": round(rx), "server_vs_ref": round(
            rx / rx_base, 4), "client_msg_per_s": round(tx), "client_vs_ref": round(
            tx / tx_base, 4), "server_ref": rx_ref, "client_ref": tx_ref, "runs": runs})
        print(f"  {name:<52} server {rx / 1e3:7.1f} k/s {rx / rx_base:6.3f}x   client "
              f"{tx / 1e3:7.1f} k/s {tx / tx_base:6.3f}x", flush=True)
    R.sections["ultra_pingpong"] = out
    R.sections["ultra_throughput"] = tout
    # Ratios, not targets: the issue sets no goal for them.
    up = next(o for o in out if o["path"].startswith("ultra"))
    urx = next(o for o in tout if o["row"] == "ultra: stdlib client -> ultra server")
    utx = next(o for o in tout if o["row"] == "ultra: ultra client -> stdlib server (compiled)")
    R.sections["ultra_ratios"] = {
        "pingpong_p50_half_rtt_ultra_vs_socket": up["vs_ref"],
        "pingpong_p99_half_rtt_ultra_vs_socket": up["p99_vs_ref"],
        "throughput_rx_msg_per_s_ultra_vs_socket": urx["server_vs_ref"],
        "throughput_tx_msg_per_s_ultra_vs_socket": utx["client_vs_ref"],
        "reference_pingpong": ref, "reference_rx": rx_ref, "reference_tx": tx_ref,
        "meaning": "ping-pong: Ultra half-RTT / socket half-RTT (below 1: Ultra faster); "
                   "throughput rx: the Ultra server's received msg/s / the socket server's, "
                   "tx: the Ultra client's sent msg/s / the stdlib client's (above 1: Ultra "
                   "faster); medians over runs, one run of bench/run.py"}
    print(f"  ratio Ultra/socket (Python loops both): ping-pong p50 half-RTT {up['vs_ref']:.3f}x, "
          f"p99 {up['p99_vs_ref']:.3f}x; throughput received {urx['server_vs_ref']:.3f}x, "
          f"sent {utx['client_vs_ref']:.3f}x", flush=True)


def _pp_table_ref(rows: dict[str, list[JSONDict]], ref: str, key: str) -> list[JSONDict]:
    """_pp_table's figures as ratios to one of the rows (not a C tool)."""
    r50 = _med([x["median_us"] for x in rows[ref]])
    r99 = _med([x["p99_us"] for x in rows[ref]])
    out: list[JSONDict] = []
    for name, runs in rows.items():
        med = _med([x["median_us"] for x in runs])
        p99 = _med([x["p99_us"] for x in runs])
        out.append({key: name, "median_half_rtt_us": round(med, 3),
                    "runs_median_us": [x["median_us"] for x in runs],
                    "vs_ref": round(med / r50, 4), "p99_half_rtt_us": round(p99, 3),
                    "p99_vs_ref": round(p99 / r99, 4), "ref": ref, "runs": runs})
        print(f"  {name:<62} half-RTT p50 {med:7.3f} us {med / r50:6.3f}x   "
              f"p99 {p99:7.3f} us {p99 / r99:6.3f}x", flush=True)
    return out


def section_memory(R: Results, tools: dict[str, str], quick: bool, base: int) -> None:
    print("== memory: RSS before/after ten million datagrams (feed, 64 B)", flush=True)
    feed = feed_spec(base)
    methods = ["batch", "views"] if quick else ["batch", "views", "packets", "zcopy", "callback"]
    out = []
    for method in methods:
        spec = {"op": "memory", "method": method, "max_packets": 64,
                "port": feed_port(base, 64), "count": 10_000_000, "cpu": RECEIVER_CPU}
        r = run_worker(spec, emu=True, feed=feed, timeout=600)
        r["method"] = method
        out.append(r)
        print(f"  {method:<10} RSS {r['rss_before_kib']} KiB -> {r['rss_after_kib']} KiB "
              f"({r['growth_kib']:+d} KiB) over {r['datagrams']} datagrams in "
              f"{r['seconds']:.1f} s; outstanding {r['outstanding_after']}", flush=True)
    R.sections["memory"] = out
    worst = max(r["growth_kib"] for r in out)
    R.target("memory: RSS growth over 10M datagrams (worst method)", worst, "<=", 256, " KiB",
             "VmRSS after - before, after gc.collect()")


# -- machine, main ----------------------------------------------------------------------------

def machine() -> JSONDict:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import pyxlio

    def sysctl(name: str) -> str | None:
        try:
            return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
        except OSError:
            return None

    cc = os.environ.get("CC", "cc")
    try:
        ccv = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
        ccv = ccv.splitlines()[0]
    except OSError:
        ccv = "?"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or None
    except OSError:
        commit = None
    api = pyxlio.get_api()
    lib = os.environ.get("PYXLIO_BENCH_LIBXLIO")
    return {
        "host": platform.node(), "cpu_model": cpu, "cores": os.cpu_count(),
        "kernel": platform.release(), "os": platform.platform(),
        "python": platform.python_version(), "python_impl": platform.python_implementation(),
        "pyxlio_version": getattr(pyxlio, "__version__", "?"), "git_commit": commit,
        "compiler": ccv,
        "provider_runner": api.provider if api else "none (kernel)",
        "providers_used": ["emulator (pyxlio.emu, in-memory feed and loopback)",
                           "kernel (no XLIO: pyxlio's recvmmsg path)"] +
                          ([f"libxlio {lib}"] if lib else []),
        "net.core.rmem_max": sysctl("net.core.rmem_max"),
        "load_avg": os.getloadavg(),
    }


SECTIONS = ("feed", "drain", "live", "pingpong", "memory", "ultra")


def dump_compact(doc: JSONDict) -> str:
    """JSON with one line per top-level key and per list item (small, diffable)."""
    parts = []
    for k, v in doc.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            body = ",\n  ".join(json.dumps(x, separators=(",", ":")) for x in v)
            parts.append(f"{json.dumps(k)}: [\n  {body}\n ]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def markdown(doc: JSONDict) -> str:
    """A results file as the Markdown tables of bench/README.md."""
    m = doc["machine"]
    out = [f"`{doc['command']}` on {doc['date'][:10]}: {m['cpu_model']}, {m['cores']} cores, "
           f"kernel {m['kernel']}, Python {m['python']}, pyxlio {m['pyxlio_version']} "
           f"(commit {m.get('git_commit')}), {doc['elapsed_s']:.0f} s, load "
           f"{m['load_avg'][0]:.2f} -> {doc.get('load_avg_end', [0])[0]:.2f}.", "",
           ]
    if doc["targets"]:
        out += ["| target | value | goal | met |", "|---|---|---|---|"]
    for t in doc["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        out.append(f"| {t['target']} | {v} | {t['goal']} | "
                   f"{ {True: 'yes', False: '**no**', None: 'n/a'}[t['met']] } |")
    if any("c_ns" in f for f in doc["figures"]):
        out += ["", "| figure | ns/datagram | C ns | speed vs C (median / best) | C reference |",
                "|---|---|---|---|---|"]
    for f in doc["figures"]:
        if "c_ns" in f:
            out.append(f"| {f['id']} | {f['ns_per_datagram']:.1f} | {f['c_ns']:.1f} | "
                       f"{f['speed_vs_c']:.3f} / {f['speed_vs_c_best']:.3f} | {f['c_ref']} |")
    if doc.get("live"):
        out += ["", "| live: receiver | asked | offered | dropped | RcvbufErrors |",
                "|---|---|---|---|---|"]
        for r in doc["live"]:
            out.append(f"| {r['receiver']} | {r['rate_asked'] / 1e6:.1f} M/s | "
                       f"{r['offered_rate'] / 1e6:.2f} M/s | {r['drop_pct']:.2f}% | "
                       f"+{r['rcvbuf_errors_delta']} |")
    for sec, who in (("pingpong", "client"), ("pingpong_server", "server")):
        if not doc.get(sec):
            continue
        out += ["", f"| ping-pong {who} (64 B, busy-poll) | p50 half-RTT | vs C | p99 | vs C |",
                "|---|---|---|---|---|"]
        for r in doc[sec]:
            p99 = (f"{r['p99_half_rtt_us']:.3f} us | {r['p99_vs_c']:.3f}x"
                   if "p99_vs_c" in r else "- | -")
            out.append(f"| {r[who]} | {r['median_half_rtt_us']:.3f} us | {r['vs_c']:.3f}x | "
                       f"{p99} |")
    if doc.get("ultra_ratios"):
        r = doc["ultra_ratios"]
        out += ["", f"Ultra path / socket path (emulator, TCP, 64 B): ping-pong p50 half-RTT "
                f"{r['pingpong_p50_half_rtt_ultra_vs_socket']:.3f}x, p99 "
                f"{r['pingpong_p99_half_rtt_ultra_vs_socket']:.3f}x (below 1: Ultra faster); "
                f"throughput received {r['throughput_rx_msg_per_s_ultra_vs_socket']:.3f}x, sent "
                f"{r['throughput_tx_msg_per_s_ultra_vs_socket']:.3f}x (above 1: Ultra faster)."]
    if doc.get("ultra_pingpong"):
        ref = doc["ultra_pingpong"][0].get("ref", "?")
        out += ["", f"| ultra TCP ping-pong (64 B, busy-poll, emulator) | p50 half-RTT | vs {ref} "
                "| p99 | vs ref |", "|---|---|---|---|---|"]
        for r in doc["ultra_pingpong"]:
            out.append(f"| {r['path']} | {r['median_half_rtt_us']:.3f} us | {r['vs_ref']:.3f}x | "
                       f"{r['p99_half_rtt_us']:.3f} us | {r['p99_vs_ref']:.3f}x |")
    if doc.get("ultra_throughput"):
        t0 = doc["ultra_throughput"][0]
        out += ["", "| ultra TCP throughput (64 B, emulator) | server received msg/s | vs "
                f"{t0['server_ref']} | client sent msg/s | vs {t0['client_ref']} |",
                "|---|---|---|---|---|"]
        for r in doc["ultra_throughput"]:
            out.append(f"| {r['row']} | {r['server_msg_per_s']:,} | {r['server_vs_ref']:.3f}x | "
                       f"{r['client_msg_per_s']:,} | {r['client_vs_ref']:.3f}x |")
    if doc.get("memory"):
        out += ["", "| memory: method | RSS before | RSS after | datagrams |",
                "|---|---|---|---|"]
        for r in doc["memory"]:
            out.append(f"| {r['method']} | {r['rss_before_kib']} KiB | {r['rss_after_kib']} KiB "
                       f"| {r['datagrams']:,} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI size (< 3 minutes)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    ap.add_argument("--out", help="JSON path (default bench/results/<date>-<host>[-quick].json)")
    ap.add_argument("--feed-base", type=int, default=int(os.environ.get("PYXLIO_BENCH_FEED_BASE",
                                                                         "47301")),
                    help="first of the emulator feed ports (one per size)")
    ap.add_argument("--markdown", metavar="RESULTS.json",
                    help="print a results file as Markdown tables and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.markdown:
        print(markdown(json.loads(Path(a.markdown).read_text())))
        return 0
    _pyxlio_root()
    if a.worker:
        return worker_main(a.worker)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r} (choose from {', '.join(SECTIONS)})")
    t0 = time.monotonic()
    tools = c_tools()
    R = Results()
    mach = machine()
    print(f"pyxlio bench on {mach['host']}: {mach['cpu_model']}, {mach['cores']} cores, "
          f"kernel {mach['kernel']}, Python {mach['python']}, pyxlio {mach['pyxlio_version']}",
          flush=True)
    for s in only:
        try:
            if s == "feed":
                section_feed(R, tools, a.quick, a.feed_base)
            elif s == "drain":
                section_drain(R, tools, a.quick)
            elif s == "live":
                section_live(R, tools, a.quick)
            elif s == "pingpong":
                section_pingpong(R, tools, a.quick)
            elif s == "memory":
                section_memory(R, tools, a.quick, a.feed_base)
            elif s == "ultra":
                section_ultra(R, tools, a.quick)
        except (RuntimeError, OSError, subprocess.SubprocessError, KeyError,
                StopIteration, ValueError) as exc:
            # one broken section must not cost the others: recorded in the JSON's "errors"
            print(f"== {s}: FAILED: {exc}", flush=True)
            R.errors.append({"section": s, "error": f"{type(exc).__name__}: {exc}"})
    elapsed = time.monotonic() - t0
    now = _dt.datetime.now(_dt.timezone.utc)
    doc = {
        "schema": "pyxlio-bench/1",
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python bench/run.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "quick": a.quick, "sections": only, "elapsed_s": round(elapsed, 1),
        "machine": mach,
        "ratio_definitions": {
            "speed_vs_c": "C reference ns per datagram / pyxlio (or stdlib) ns per datagram "
                          "(medians over runs)",
            "speed_vs_c_best": "the same with the best (lowest) run of each",
            "cost_vs_c": "ns per datagram / C reference ns per datagram",
            "speed_vs_stdlib_recvfrom": "stdlib recvfrom ns / this ns (same provider, size)",
            "ns_per_datagram": "median over runs; each run a fixed datagram count",
        },
        "load_avg_end": os.getloadavg(),
        "errors": R.errors,
        "targets": R.targets, "figures": R.figures, **R.sections,
    }
    out = Path(a.out) if a.out else (BENCH_DIR / "results" /
                                     f"{now:%Y%m%d}-{platform.node()}"
                                     f"{'-quick' if a.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        f.write(dump_compact(doc))
    os.chmod(f.name, 0o644)
    os.replace(f.name, out)
    print(R.table())
    for e in R.errors:
        print(f"ERROR: {e}")
    print(f"\nwrote {out} in {elapsed:.0f} s")
    return 1 if R.errors else 0


if __name__ == "__main__":
    sys.exit(main())
