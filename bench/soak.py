#!/usr/bin/env python3
"""Soak: millions of datagrams through pyxlio, checking memory, buffers and counts.

    python bench/soak.py                                # both modes, 10M datagrams each
    python -m pyxlio.emu --strict -- python bench/soak.py --mode callback
    python bench/soak.py --provider emu --count 200000  # re-runs itself under the emulator

A sender in another process (bench/c/refloop.c's ``send``, UDP GSO, at ``--rate``
datagrams a second; a Python sender without a C compiler) sends ``--count`` sequence-numbered
datagrams to a pyxlio socket on 127.0.0.1, received in this process under whatever provider it
runs with (no XLIO, pyxlio's emulator, a real libxlio), in one of two modes:

batch     ``sock.recv_batch(64)``, each batch released at once.
callback  a receive callback returning HOLD for every datagram; ANOTHER thread takes the held
          packets from ``sock.held`` and releases them as fast as it can, while the receiving
          thread keeps calling ``recv_batch`` (which drives the callbacks: XLIO's where it
          offloads the socket, pyxlio's own elsewhere) and waits while more than HELD_HIGH
          packets are held.

Every ``--sample`` datagrams (watched every 5 ms from the main thread) it samples RSS
(``/proc/self/statm``) and ``sock.outstanding``.
At the end it checks, and exits 1 if any fails:

- RSS grew by at most ``--max-rss-growth-kib`` over its value at the end of the warm-up
  (``--warmup`` datagrams); not enforced when the ASan runtime is loaded (its quarantine
  holds freed memory by design);
- ``sock.outstanding`` is 0 (every packet released);
- received + the drops the kernel counted on this socket (``SO_MEMINFO``'s
  ``SK_MEMINFO_DROPS``, i.e. the socket's ``drops`` column of /proc/net/udp) == sent: nothing
  lost beyond what the kernel counts;
- sequence numbers only increase (no datagram duplicated or reordered): checked on the first
  and last datagram of each batch (batch mode) or on every datagram (callback mode);
- no receive callback raised.

It also reports the system-wide /proc/net/snmp ``Udp`` RcvbufErrors and InErrors deltas and
the loopback backlog drops (/proc/net/softnet_stat), for the reader (other processes add to
those).  One JSON line per mode (``--json``) or a short text report.  Exit status: 0 all
checks passed, 1 a check failed, 2 usage or setup error.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SO_RCVBUFFORCE = 33
SO_MEMINFO = 55
SK_MEMINFO_VARS = 9
SK_MEMINFO_DROPS = 8
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
MODES = ("batch", "callback")
# Callback mode: the receiving thread waits while more than this many packets are held and not
# yet released (each held packet costs a few hundred bytes of pyxlio's besides its buffer).
HELD_HIGH = 4096

PY_SENDER = """
import json, socket, sys, time
port, count, size, rate = (int(a) for a in sys.argv[1:5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", port))
buf = bytearray(size)
t0 = time.perf_counter()
sent = 0
while sent < count:
    buf[:8] = sent.to_bytes(8, "big")
    try:
        s.send(buf)
    except (BlockingIOError, InterruptedError):
        continue
    except OSError as e:
        if e.errno != 105:  # ENOBUFS: try again
            raise
        continue
    sent += 1
    if rate:
        while time.perf_counter() < t0 + sent / rate:
            pass
print(json.dumps({"sent": sent, "seconds": time.perf_counter() - t0}))
"""


# -- the environment ---------------------------------------------------------------------------

def import_pyxlio() -> Any:
    try:
        import pyxlio
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
        import pyxlio
    return pyxlio


def clean_env() -> dict[str, str]:
    """The environment for the sender and the compiler: no XLIO, no sanitizer runtime."""
    return {k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith(("PYXLIO_EMU_", "XLIO_"))}


def build_sender() -> str | None:
    """refloop (bench/c/refloop.c) built once per source version; None without a compiler."""
    pyxlio = import_pyxlio()
    include = Path(pyxlio.__file__).resolve().parent / "include"
    src = BENCH_DIR / "c" / "refloop.c"
    cc = os.environ.get("CC", "cc")
    h = hashlib.sha256()
    for p in (src, BENCH_DIR / "c" / "benchutil.h", include / "pyxlio" / "xlio_abi.h"):
        h.update(p.read_bytes())
    h.update(cc.encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = cache / "pyxlio-bench" / h.hexdigest()[:16]
    exe = out / "refloop"
    if exe.exists():
        return str(exe)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".refloop.{os.getpid()}"
    try:
        subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", f"-I{include}", "-o",
                        str(tmp), str(src)], check=True, env=clean_env(), timeout=120)
    except (OSError, subprocess.CalledProcessError):
        return None
    os.replace(tmp, exe)
    return str(exe)


def start_sender(kind: str, port: int, count: int, size: int, rate: int,
                 cpu: int | None) -> subprocess.Popen[str]:
    if kind == "c":
        exe = build_sender()
        if exe is None:
            raise SystemExit("soak: no C compiler for bench/c/refloop.c (use --sender python)")
        gso = min(64, 65507 // size)
        cmd = [exe, "send", "--dest", f"127.0.0.1:{port}", "--count", str(count),
               "--size", str(size), "--gso", str(gso), "--rate", str(rate)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
    else:
        cmd = [sys.executable, "-c", PY_SENDER, str(port), str(count), str(size), str(rate)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())


# -- counters ----------------------------------------------------------------------------------

def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def snmp_udp() -> dict[str, int]:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}


def backlog_drops() -> int:
    """Packets dropped by the per-CPU input backlog (loopback's queue), all CPUs."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return sum(int(line.split()[1], 16) for line in f)
    except (OSError, IndexError, ValueError):
        return 0


def meminfo(sock: socket.socket) -> tuple[int, ...]:
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
    return struct.unpack(f"{len(raw) // 4}I", raw)


def socket_drops(sock: socket.socket) -> int:
    return int(meminfo(sock)[SK_MEMINFO_DROPS])


def asan_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return any("libasan" in line for line in maps)


# -- one soak ----------------------------------------------------------------------------------

class Soak:
    """Counters and samples of one run."""

    def __init__(self, sock: Any, args: argparse.Namespace) -> None:
        self.sock = sock
        self.args = args
        self.received = 0
        self.seq_errors = 0
        self.last_seq = -1
        self.samples: list[tuple[int, int, int]] = []   # (received, rss KiB, outstanding)
        self.next_sample = 0
        self.rss_warm: int | None = None
        self.max_outstanding = 0

    def sample(self) -> None:
        if self.received < self.next_sample:
            return
        rss, out = rss_kib(), self.sock.outstanding
        self.samples.append((self.received, rss, out))
        self.max_outstanding = max(self.max_outstanding, out)
        if self.rss_warm is None and self.received >= self.args.warmup:
            self.rss_warm = rss
        self.next_sample = self.received + self.args.sample

    def seq(self, first: int, last: int, n: int) -> None:
        """`n` datagrams numbered first..last arrived (in order, with holes for drops)."""
        if first <= self.last_seq or last < first or last - first + 1 < n:
            self.seq_errors += 1
        self.last_seq = last


def _seq_of(pkt: Any) -> int:
    return int.from_bytes(pkt.tobytes()[:8], "big")


def receive_batches(soak: Soak, done: threading.Event) -> None:
    rb, received = soak.sock.recv_batch, 0
    while not done.is_set():
        with rb(64, 0.05) as b:
            n = len(b)
            if n:
                soak.seq(_seq_of(b[0]), _seq_of(b[n - 1]), n)
        if n:
            received += n
            soak.received = received


def receive_callbacks(soak: Soak, done: threading.Event) -> dict[str, Any]:
    import pyxlio

    sock = soak.sock
    held: deque[Any] = sock.held
    hold = int(pyxlio.Verdict.HOLD)
    state = {"last": -1, "errors": 0}
    stop_release = threading.Event()
    released = [0]
    release_errors: list[str] = []
    failed = [0]

    def on_datagram(view: memoryview, info: object) -> int:
        seq = int.from_bytes(view[:8], "big")
        if seq <= state["last"]:
            state["errors"] += 1
        state["last"] = seq
        soak.received += 1
        return hold

    def releaser() -> None:
        pop = held.popleft
        n = 0
        while True:
            try:
                pkt = pop()
            except IndexError:
                if stop_release.is_set() and not held:
                    break
                time.sleep(0)      # let the receiving thread run
                continue
            try:
                pkt.release()
                n += 1
            except Exception as exc:   # counted (the first few kept), and fails the run
                failed[0] += 1
                if len(release_errors) < 5:
                    release_errors.append(repr(exc))
        released[0] = n

    sock.set_recv_callback(on_datagram)
    thread = threading.Thread(target=releaser, name="soak-releaser", daemon=True)
    thread.start()
    enomem = 0
    backpressure = 0
    try:
        while not done.is_set():
            if len(held) > HELD_HIGH:
                # The releaser fell behind (a loaded host): wait for it, as an application
                # would, rather than let the backlog (and RSS) grow without bound.
                backpressure += 1
                time.sleep(0.0005)
                continue
            try:
                with sock.recv_batch(64, 0.05) as b:
                    if b:   # every datagram is held: nothing should come through
                        soak.seq_errors += len(b)
            except OSError as exc:
                if exc.errno != errno.ENOMEM:
                    raise
                enomem += 1        # the pool is full of held packets: let the releaser work
                time.sleep(0.0005)
    finally:
        stop_release.set()
        thread.join(30)
        sock.set_recv_callback(None)
    soak.seq_errors += state["errors"]
    return {"released_by_other_thread": released[0], "enomem_waits": enomem,
            "backpressure_waits": backpressure,
            "releaser_alive": thread.is_alive(), "release_failures": failed[0],
            "release_errors": release_errors, "held_left": len(held)}


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    import pyxlio
    from pyxlio.socket import socket as pxsocket

    api = pyxlio.get_api()
    result: dict[str, Any] = {"mode": mode, "provider": api.provider if api else "kernel",
                              "count": args.count, "rate": args.rate, "size": args.size}
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    sock = pxsocket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, args.rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        soak = Soak(sock, args)
        soak.sample()
        snmp0, backlog0, drops0 = snmp_udp(), backlog_drops(), socket_drops(sock)
        done = threading.Event()
        out: dict[str, Any] = {}
        error: list[BaseException] = []

        def receiver() -> None:
            try:
                if mode == "batch":
                    receive_batches(soak, done)
                else:
                    out.update(receive_callbacks(soak, done))
            except BaseException as exc:
                error.append(exc)
                done.set()

        t0 = time.monotonic()
        rx = threading.Thread(target=receiver, name=f"soak-{mode}")
        rx.start()
        sender_cpu = None if args.cpu is None else (args.cpu + 1) % (os.cpu_count() or 1)
        tx = start_sender(args.sender, port, args.count, args.size, args.rate, sender_cpu)
        # Samples are taken here, every few milliseconds, when `--sample` more datagrams came
        # (a receive call that runs callbacks may last long: sampling between calls would
        # miss most of the run).
        deadline = time.monotonic() + args.timeout
        while tx.poll() is None and time.monotonic() < deadline:
            soak.sample()
            time.sleep(0.005)
        if tx.poll() is None:
            tx.kill()
            error.append(TimeoutError(f"the sender did not finish in {args.timeout} s"))
        tx_out, tx_err = tx.communicate()
        sent = json.loads(tx_out.strip().splitlines()[-1])["sent"] if tx.returncode == 0 else 0
        if tx.returncode != 0:
            error.append(RuntimeError(f"sender exited {tx.returncode}: {tx_err.strip()}"))
        # Wait for the rest: until every datagram is received or counted as dropped, or none
        # came for `idle` seconds.
        last, last_change = -1, time.monotonic()
        while not done.is_set():
            now = time.monotonic()
            drops = socket_drops(sock) - drops0
            if soak.received + drops >= sent:
                break
            if soak.received != last:
                last, last_change = soak.received, now
            elif now - last_change > args.idle:
                break
            soak.sample()
            time.sleep(0.005)
        done.set()
        rx.join(60)
        seconds = time.monotonic() - t0
        soak.next_sample = 0
        soak.sample()
        drops = socket_drops(sock) - drops0
        unread = meminfo(sock)[0]     # bytes the kernel still holds for the socket
        snmp1, backlog1 = snmp_udp(), backlog_drops()
        outstanding = sock.outstanding
        rss = [s[1] for s in soak.samples]
        warm = soak.rss_warm if soak.rss_warm is not None else rss[-1]
        after = [s[1] for s in soak.samples if s[0] >= args.warmup] or rss[-1:]
        growth = max(after) - warm
        enforce_rss = not asan_loaded()
        result.update(
            sent=sent, received=soak.received, socket_drops=drops,
            lost_uncounted=sent - soak.received - drops, unread_bytes_end=unread,
            snmp_rcvbuf_errors=snmp1["RcvbufErrors"] - snmp0["RcvbufErrors"],
            snmp_in_errors=snmp1["InErrors"] - snmp0["InErrors"],
            backlog_drops=backlog1 - backlog0,
            seq_errors=soak.seq_errors, outstanding_end=outstanding,
            max_outstanding_sampled=soak.max_outstanding, rss_first_kib=rss[0],
            rss_warm_kib=warm, rss_max_after_warmup_kib=max(after), rss_end_kib=rss[-1],
            rss_growth_kib=growth, rss_samples=len(rss), seconds=round(seconds, 3),
            samples=soak.samples,   # [received, RSS KiB, outstanding], in order
            received_per_s=round(soak.received / seconds) if seconds else 0,
            sender=args.sender, **out)
        if not enforce_rss:
            result["rss_check"] = ("not enforced: the ASan runtime is loaded (its quarantine "
                                   "keeps freed memory)")
        failures = []
        if error:
            failures.append(f"error: {error[0]!r}")
        if rx.is_alive():
            failures.append("the receiving thread did not stop")
        if enforce_rss and growth > args.max_rss_growth_kib:
            failures.append(f"RSS grew by {growth} KiB after the warm-up "
                            f"(bound {args.max_rss_growth_kib} KiB)")
        if outstanding != 0:
            failures.append(f"outstanding is {outstanding} at the end, not 0")
        if soak.received + drops != sent:
            failures.append(f"received {soak.received} + kernel drops {drops} != sent {sent}"
                            f" ({unread} bytes left unread in the socket)")
        if soak.seq_errors:
            failures.append(f"{soak.seq_errors} sequence errors (duplicate or reordered)")
        if out.get("release_failures"):
            failures.append(f"{out['release_failures']} release() calls failed in the other "
                            f"thread, e.g. {out['release_errors'][0]}")
        if out.get("releaser_alive") or out.get("held_left"):
            failures.append("the releasing thread did not finish, or left packets held")
        if mode == "callback" and out.get("released_by_other_thread") != soak.received:
            failures.append(f"the other thread released {out.get('released_by_other_thread')}"
                            f" of {soak.received} held packets")
        result["failures"] = failures
        return result
    finally:
        try:
            sock.close()
        except BufferError as exc:   # a view of a packet still exported
            result.setdefault("failures", []).append(f"close: {exc}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=(*MODES, "both"), default="both")
    p.add_argument("--count", type=int, default=10_000_000, help="datagrams sent per mode")
    p.add_argument("--rate", type=int, default=1_000_000, help="datagrams/s (0: unlimited)")
    p.add_argument("--size", type=int, default=64, help="datagram bytes (>= 8)")
    p.add_argument("--sender", choices=("c", "python"), default="c")
    p.add_argument("--sample", type=int, default=100_000, help="datagrams between samples")
    p.add_argument("--warmup", type=int, default=None,
                   help="datagrams before the RSS reference (default: a tenth of --count)")
    p.add_argument("--max-rss-growth-kib", type=int, default=8192)
    p.add_argument("--rcvbuf", type=int, default=8 << 20, help="SO_RCVBUF(FORCE) bytes")
    p.add_argument("--cpu", type=int, default=None,
                   help="pin the receiver to this core (the sender to the next one)")
    p.add_argument("--idle", type=float, default=2.0,
                   help="seconds without a datagram after the sender ends: stop waiting")
    p.add_argument("--timeout", type=float, default=600.0, help="the sender's time limit (s)")
    p.add_argument("--provider", choices=("self", "emu", "kernel"), default="self",
                   help="self: as this process runs; emu/kernel: run again under it")
    p.add_argument("--strict", action="store_true", help="with --provider emu: strict mode")
    p.add_argument("--json", action="store_true", help="one JSON line per mode")
    a = p.parse_args(argv)
    if a.size < 8 or a.size > 65507 or a.count < 1 or a.sample < 1 or a.rate < 0:
        p.error("--size 8..65507, --count >= 1, --sample >= 1, --rate >= 0")
    if a.warmup is None:
        a.warmup = a.count // 10
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raw = sys.argv[1:] if argv is None else argv
    if args.provider != "self":
        pyxlio = import_pyxlio()
        env = clean_env()
        src = str(Path(pyxlio.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        if args.provider == "emu":
            from pyxlio import emu

            env = emu.environ(strict=args.strict, base=env)
        rest, skip = [], False
        for a in raw:   # everything but --provider X / --provider=X
            if not skip and not a.startswith("--provider"):
                rest.append(a)
            skip = a == "--provider"
        return subprocess.call([sys.executable, __file__, *rest], env=env)
    import_pyxlio()
    modes = MODES if args.mode == "both" else (args.mode,)
    worst = 0
    for mode in modes:
        r = run_mode(mode, args)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{mode} ({r['provider']}): sent {r['sent']:,}, received {r['received']:,}, "
                  f"socket drops {r['socket_drops']:,} (snmp RcvbufErrors "
                  f"+{r['snmp_rcvbuf_errors']}, InErrors +{r['snmp_in_errors']}, backlog "
                  f"+{r['backlog_drops']}), {r['seconds']} s ({r['received_per_s']:,}/s); "
                  f"RSS {r['rss_warm_kib']} KiB after warm-up, max {r['rss_max_after_warmup_kib']}"
                  f" (+{r['rss_growth_kib']} KiB), outstanding at end {r['outstanding_end']} "
                  f"(max sampled {r['max_outstanding_sampled']})", flush=True)
            for f in r["failures"]:
                print(f"  FAIL: {f}", flush=True)
        if r.get("failures"):
            worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main())
