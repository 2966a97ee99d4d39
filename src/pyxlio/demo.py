"""``python -m pyxlio demo``: pyxlio's zero-copy receive path, end to end, in a few seconds.

What it does (under pyxlio's XLIO emulator, in strict mode):

1. **Feed.** A UDP socket bound to the emulator's in-memory feed port receives ``--count``
   datagrams (default 3,000,000) zero-copy with ``recv_batch``; each batch is released in one
   free call. No Python object is made per datagram: the sequence numbers are checked per
   batch (first and last datagram, count, bytes) and datagram by datagram only when a batch is
   not one contiguous run.
2. **Loopback ping-pong.** A perf server (``recv-method zcopy``, busy-poll) in a second
   process, and a ping-pong client here (zero-copy too) for ``--pingpong`` seconds: half
   round-trip percentiles of a real socket path, which the in-memory feed cannot give (it has no
   sender clock).
3. **Checks.** Sequence gaps (expect 0), every batch zero-copy, ``outstanding == 0`` on the
   socket after the releases, the server's exit status, and, when this command started the
   emulator itself, the emulator's strict exit status (leaked packets or contract violations
   make it non-zero).

Exit status 0 only if all is well. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from array import array
from typing import Any

__all__ = ["main"]

_CHILD_FLAG = "--in-emulator"
_SEQ = struct.Struct("!Q")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pyxlio demo",
        description="Receive millions of datagrams zero-copy from the XLIO emulator's in-memory "
                    "feed, run a short loopback ping-pong, and check that nothing leaked.",
    )
    p.add_argument("--count", type=int, default=3_000_000,
                   help="datagrams to take from the feed (default 3,000,000)")
    p.add_argument("--size", type=int, default=64, help="datagram size in bytes (default 64)")
    p.add_argument("--batch", type=int, default=256,
                   help="max datagrams per recv_batch call (default 256)")
    p.add_argument("--port", type=int, default=15001, help="feed port (default 15001)")
    p.add_argument("--pingpong", type=float, default=1.0,
                   help="seconds of loopback ping-pong, 0 to skip (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(_CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    return p


def _check_args(p: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if ns.count <= 0:
        p.error("--count must be positive")
    if not 14 <= ns.size <= 65507:
        p.error("--size must lie in 14..65507 (a sockperf header fits)")
    if not 1 <= ns.batch <= 65536:
        p.error("--batch must lie in 1..65536")
    if not 0 < ns.port < 65536:
        p.error("--port must lie in 1..65535")
    if ns.pingpong < 0 or ns.pingpong > 60:
        p.error("--pingpong must lie in 0..60 seconds")


def _percentiles(values: list[float]) -> dict[str, Any] | None:
    from pyxlio.perf.stats import summarize_values

    s = summarize_values(values)
    return None if s is None else s.to_dict()


def receive_feed(port: int, count: int, size: int, batch_size: int) -> dict[str, Any]:
    """Take ``count`` datagrams from the emulator's feed on ``port`` with ``recv_batch``."""
    import socket as stdsocket

    from pyxlio.perf.stats import SequenceTracker
    from pyxlio.socket import socket

    sock = socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    tracker = SequenceTracker(first=0)
    unpack = _SEQ.unpack_from
    clock = time.perf_counter_ns
    call_ns = array("q", bytes(8 * (count // batch_size + 2) * 2))
    batches = 0
    got = 0
    nbytes = 0
    copied_batches = 0
    wrong_size = 0
    slow_batches = 0
    empty = 0
    try:
        offloaded = sock.offloaded
        t0 = clock()
        while got < count:
            want = min(batch_size, count - got)
            t1 = clock()
            batch = sock.recv_batch(want, timeout=1.0)
            t2 = clock()
            with batch:
                n = len(batch)
                if n == 0:
                    empty += 1
                    if empty >= 3:
                        break  # the feed is not there: reported below
                    continue
                if batches < len(call_ns):
                    call_ns[batches] = t2 - t1
                batches += 1
                got += n
                total = batch.nbytes
                nbytes += total
                if not batch.zcopy:
                    copied_batches += 1
                if total != n * size:
                    wrong_size += 1
                first_pkt = batch[0]
                with memoryview(first_pkt) as v:
                    first = unpack(v)[0]
                last_pkt = batch[n - 1]
                with memoryview(last_pkt) as v:
                    last = unpack(v)[0]
                del first_pkt, last_pkt
                if last - first + 1 == n and first == tracker.expected:
                    tracker.add_run(first, n)
                else:  # not one contiguous run: look at every datagram
                    slow_batches += 1
                    for view in batch.views():
                        with view:
                            tracker.add(unpack(view)[0])
        t_end = clock()
        outstanding = sock.outstanding
    finally:
        sock.close()
    seconds = (t_end - t0) / 1e9
    per_call_us = [x / 1000.0 for x in call_ns[: min(batches, len(call_ns))]]
    return {
        "port": port,
        "size": size,
        "batch": batch_size,
        "offloaded": offloaded,
        "datagrams": got,
        "bytes": nbytes,
        "seconds": seconds,
        "datagrams_per_s": got / seconds if seconds > 0 else 0.0,
        "mb_per_s": nbytes / seconds / 1e6 if seconds > 0 else 0.0,
        "batches": batches,
        "avg_batch": got / batches if batches else 0.0,
        "copied_batches": copied_batches,
        "wrong_size_batches": wrong_size,
        "batches_checked_per_datagram": slow_batches,
        "recv_batch_call_usec": _percentiles(per_call_us),
        "sequence": tracker.to_dict(),
        "outstanding_after_release": outstanding,
    }


def loopback_ping_pong(seconds: float, size: int = 64) -> dict[str, Any]:
    """A zero-copy perf server in a subprocess and a zero-copy ping-pong client here."""
    import re
    import select
    import signal
    import subprocess

    from pyxlio.perf.cli import parse_args
    from pyxlio.perf.client import run_client

    cmd = [sys.executable, "-m", "pyxlio.perf", "server", "-p", "0", "--recv-method", "zcopy",
           "--busy-poll", "--json", "-q"]
    env = dict(os.environ)
    env.pop("PYXLIO_EMU_FEED", None)  # the server needs no feed
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 20)
        line = proc.stderr.readline() if ready else ""
        m = re.search(r"listening on UDP \S+:(\d+)", line)
        if m is None:
            raise RuntimeError(f"the ping-pong server did not start: {line.strip()}")
        port = m.group(1)
        cfg = parse_args(["pp", "-p", port, "-m", str(size), "-t", str(seconds),
                          "--warmup", "0.2", "--cooldown", "0.05", "--recv-method", "zcopy",
                          "--busy-poll", "-q"])
        res = run_client(cfg, progress=None)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    server: dict[str, Any] = {}
    try:
        server = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        server = {"error": err.strip()[-500:]}
    lat = res.latency
    return {
        "msg_size": size,
        "seconds": res.valid_runtime_s,
        "round_trips": res.valid_received,
        "round_trips_per_s": res.valid_received / res.valid_runtime_s
        if res.valid_runtime_s else 0.0,
        "half_rtt_usec": None if lat is None else lat.to_dict(),
        "dropped": res.dropped,
        "duplicated": res.duplicated,
        "out_of_order": res.out_of_order,
        "client_offloaded": res.offloaded,
        "server_exit_status": proc.returncode,
        "server_received": server.get("received"),
        "server_offloaded": server.get("offloaded"),
    }


def _verdict(report: dict[str, Any]) -> list[str]:
    """The list of problems (empty when all is well)."""
    bad: list[str] = []
    feed = report["feed"]
    if feed["datagrams"] < report["requested"]:
        bad.append(f"the feed gave {feed['datagrams']} of {report['requested']} datagrams "
                   "(is the emulator's feed set on this port?)")
    if not feed["offloaded"]:
        bad.append("the feed socket is not offloaded")
    seq = feed["sequence"]
    if seq["dropped"] or seq["duplicated"] or seq["out_of_order"]:
        bad.append(f"sequence gaps: {seq}")
    if feed["copied_batches"]:
        bad.append(f"{feed['copied_batches']} batches were copied, not zero-copy")
    if feed["wrong_size_batches"]:
        bad.append(f"{feed['wrong_size_batches']} batches had datagrams of the wrong size")
    if feed["outstanding_after_release"] != 0:
        bad.append(f"{feed['outstanding_after_release']} packets were never released")
    pp = report.get("ping_pong")
    if pp is not None:
        if not pp["round_trips"]:
            bad.append("the loopback ping-pong got no reply")
        if pp["server_exit_status"] != 0:
            bad.append(f"the ping-pong server exited with status {pp['server_exit_status']}")
    return bad


def _fmt_pct(stats: dict[str, Any] | None, unit: str) -> list[str]:
    if not stats:
        return ["  (no samples)"]
    p = stats["percentiles"]
    return [
        f"  avg {stats['avg']:.3f} {unit}, std-dev {stats['std_dev']:.3f}, "
        f"min {stats['min']:.3f}, max {stats['max']:.3f} ({stats['count']} samples)",
        "  " + "  ".join(f"p{k}={p[k]:.3f}" for k in ("25", "50", "75", "90", "99", "99.9",
                                                       "99.99", "99.999")),
    ]


def format_text(report: dict[str, Any]) -> str:
    """The human report."""
    feed = report["feed"]
    seq = feed["sequence"]
    lines = [
        f"pyxlio demo: provider {report['provider']}, {feed['datagrams']:,} datagrams of "
        f"{feed['size']} B from the in-memory feed on port {feed['port']}",
        f"rate: {feed['datagrams_per_s']:,.0f} datagrams/s, {feed['mb_per_s']:,.1f} MB/s "
        f"({feed['seconds']:.3f} s; recv_batch({feed['batch']}): {feed['batches']:,} calls, "
        f"{feed['avg_batch']:.1f} datagrams each, zero-copy: "
        f"{'yes' if not feed['copied_batches'] else 'NO'})",
        "recv_batch call time (usec, per call):",
        *_fmt_pct(feed["recv_batch_call_usec"], "usec"),
        f"sequence gaps: {seq['dropped']} dropped, {seq['duplicated']} duplicated, "
        f"{seq['out_of_order']} out of order",
        f"buffers: outstanding after release = {feed['outstanding_after_release']}",
    ]
    pp = report.get("ping_pong")
    if pp is not None:
        lines.append(
            f"loopback ping-pong ({pp['msg_size']} B, zero-copy, busy-poll): "
            f"{pp['round_trips']:,} round trips in {pp['seconds']:.2f} s, "
            f"{pp['dropped']} dropped; half round trip (usec):"
        )
        lines.extend(_fmt_pct(pp["half_rtt_usec"], "usec"))
        lines.append(f"ping-pong server exit status: {pp['server_exit_status']}")
    problems = report["problems"]
    if problems:
        lines.append("RESULT: FAILED")
        lines.extend(f"  - {p}" for p in problems)
    else:
        lines.append("RESULT: OK (no gaps, nothing leaked)")
    return "\n".join(lines) + "\n"


def _run_here(ns: argparse.Namespace) -> int:
    import pyxlio

    api = pyxlio.get_api()
    report: dict[str, Any] = {
        "tool": "pyxlio demo",
        "provider": None if api is None else api.provider,
        "requested": ns.count,
    }
    if api is None:
        report["feed"] = None
        sys.stderr.write("pyxlio demo: no XLIO provider answered: run it as "
                         "'python -m pyxlio demo' (it starts the emulator itself)\n")
        return 1
    report["feed"] = receive_feed(ns.port, ns.count, ns.size, ns.batch)
    if ns.pingpong > 0:
        report["ping_pong"] = loopback_ping_pong(ns.pingpong)
    report["problems"] = _verdict(report)
    report["ok"] = not report["problems"]
    if ns.json:
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_text(report))
    sys.stdout.flush()
    return 0 if report["ok"] else 1


def _run_under_emulator(ns: argparse.Namespace, argv: list[str]) -> int:
    import subprocess

    from pyxlio import emu

    try:
        env = emu.environ(strict=True, feed=f"{ns.port}:{ns.size}")
    except (FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"pyxlio demo: cannot start the emulator: {exc}\n")
        return 1
    cmd = [sys.executable, "-m", "pyxlio", "demo", *argv, _CHILD_FLAG]
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    rc = done.returncode
    strict_ok = rc in (0, 1)  # 1: the demo's own verdict; anything else: the emulator's
    if ns.json:
        try:
            report = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"ok": False, "problems": ["the demo printed no report"]}
        report["emulator_exit_status"] = rc
        if not strict_ok:
            report["ok"] = False
            report.setdefault("problems", []).append(
                f"the emulator's strict check failed (exit status {rc})")
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    else:
        sys.stdout.write(done.stdout)
        sys.stdout.write(
            f"emulator strict exit check: {'passed' if rc == 0 else 'FAILED'} "
            f"(exit status {rc})\n"
        )
    sys.stdout.flush()
    return rc


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit status (0 only if all is well)."""
    args = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    try:
        ns = p.parse_args(args)
        _check_args(p, ns)
    except SystemExit as exc:
        return int(exc.code or 0)
    from pyxlio import emu

    if ns.in_emulator or emu.is_loaded():
        return _run_here(ns)
    return _run_under_emulator(ns, [a for a in args if a != _CHILD_FLAG])
