"""C reference loops (bench/c/refloop.c) on loopback and on the emulator's in-memory feed.

Measured in the same run:

- loopback, receive loop alone (``refloop recv --drain``: the sender fills a large socket
  buffer first, then the drain is timed): C ``recvfrom``, C ``recvmmsg`` (batch 32) without
  XLIO, and ``recvfrom_zcopy`` + free (per packet, and 32 then one free) under the emulator;
- the feed (``PYXLIO_EMU_FEED``): the same loops with no kernel at all.

Each case keeps the best (lowest) ns/packet of its rounds in ``extra_info``; the last test
prints the ratios.  Run::

    python -m pytest bench/test_emu_c.py --benchmark-only -s
    python bench/test_emu_c.py            # the same table without pytest-benchmark
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "emu"))
import emutest  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

LOOP_PORT = 47310
FEED_PORT = 47320
LOOP_COUNT = int(os.environ.get("REFLOOP_LOOP_COUNT", "300000"))
FEED_COUNT = int(os.environ.get("REFLOOP_FEED_COUNT", "3000000"))
SIZE = 64
ROUNDS = int(os.environ.get("REFLOOP_ROUNDS", "3"))

# name -> (mode, under the emulator, feed)
CASES: dict[str, tuple[str, bool, bool]] = {
    "loop-c-recvfrom": ("recvfrom", False, False),
    "loop-c-recvmmsg": ("recvmmsg", False, False),
    "loop-emu-zcopy": ("zcopy", True, False),
    "loop-emu-zcopy-free-batch": ("zcopy-free-batch", True, False),
    "loop-emu-recvfrom": ("recvfrom", True, False),
    "feed-zcopy": ("zcopy", True, True),
    "feed-zcopy-free-batch": ("zcopy-free-batch", True, True),
    "feed-recvfrom": ("recvfrom", True, True),
    "feed-recvmmsg": ("recvmmsg", True, True),
}
RESULTS: dict[str, dict[str, Any]] = {}


class Builds:
    """Lazily compiled refloop and the emulator library."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="refloop-")
        cc = emutest.gcc()
        if cc is None:
            raise RuntimeError("gcc is needed to build bench/c/refloop.c")
        self.refloop = os.path.join(self.dir, "refloop")
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-I", emutest.INCLUDE,
                        os.path.join(HERE, "c", "refloop.c"), "-o", self.refloop], check=True)
        self.lib = emutest.library(self.dir)
        self.cpus = os.cpu_count() or 1

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(b: Builds, name: str) -> dict[str, Any]:
    """One run of a case; returns refloop's JSON line."""
    mode, under_emu, feed = CASES[name]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYXLIO_EMU_", "XLIO_")) and k != "LD_PRELOAD"}
    if under_emu:
        env["LD_PRELOAD"] = b.lib
        env["PYXLIO_EMU_STRICT"] = "1"
    port = FEED_PORT if feed else LOOP_PORT
    count = FEED_COUNT if feed else LOOP_COUNT
    if feed:
        env["PYXLIO_EMU_FEED"] = f"{port}:{SIZE}"
    rx_cmd = [b.refloop, "recv", "--mode", mode, "--port", str(port), "--count", str(count),
              "--batch", "32"]
    if b.cpus > 1:
        rx_cmd += ["--cpu", "0"]
    if not feed:
        rx_cmd.append("--drain")
    rx = subprocess.Popen(rx_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        assert rx.stdout is not None
        ready = rx.stdout.readline()
        if '"ready"' not in ready:
            err = rx.stderr.read() if rx.stderr else ""
            raise RuntimeError(f"refloop recv did not start: {ready!r} {err}")
        if not feed:
            tx_cmd = [b.refloop, "send", "--dest", f"127.0.0.1:{port}", "--count", str(count),
                      "--size", str(SIZE), "--gso", "64"]
            if b.cpus > 1:
                tx_cmd += ["--cpu", "1"]
            subprocess.run(tx_cmd, check=True, capture_output=True, timeout=120)
        out, err = rx.communicate(timeout=120)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    if rx.returncode != 0:
        raise RuntimeError(f"{name}: refloop recv exited {rx.returncode}: {err}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return res


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the lowest ns/packet."""
    return min(runs, key=lambda r: float(r["ns_per_packet"]))


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Ratios of ns/packet between the cases that were measured."""
    ns = {k: float(v["ns_per_packet"]) for k, v in results.items()}
    out: dict[str, float] = {}
    pairs = [("loop-emu-zcopy", "loop-c-recvfrom"), ("loop-emu-zcopy", "loop-c-recvmmsg"),
             ("loop-emu-zcopy-free-batch", "loop-c-recvfrom"),
             ("loop-emu-zcopy-free-batch", "loop-c-recvmmsg"),
             ("loop-emu-recvfrom", "loop-c-recvfrom"),
             ("feed-zcopy", "loop-c-recvmmsg"), ("feed-zcopy-free-batch", "loop-c-recvmmsg")]
    for a, b in pairs:
        if a in ns and b in ns and ns[b] > 0:
            out[f"{a} / {b}"] = ns[a] / ns[b]
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'case':28} {'packets':>9} {'ns/packet':>10} {'Mpps':>7}"]
    for k, v in results.items():
        n = float(v["ns_per_packet"])
        lines.append(f"{k:28} {v['packets']:>9} {n:>10.1f} {1e3 / n if n else 0:>7.2f}")
    lines.append("")
    for k, r in ratios(results).items():
        lines.append(f"{k:58} {r:6.2f}")
    return "\n".join(lines)


# ---- pytest-benchmark --------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover (script mode)
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="module")
    def builds() -> Any:
        if emutest.gcc() is None:
            pytest.skip("gcc is needed to build bench/c/refloop.c")
        b = Builds()
        yield b
        b.close()

    @pytest.mark.parametrize("name", list(CASES))
    def test_refloop(benchmark: Any, builds: Builds, name: str) -> None:
        runs: list[dict[str, Any]] = []

        def once() -> None:
            runs.append(measure(builds, name))

        benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
        b = best(runs)
        assert b["packets"] > 1
        RESULTS[name] = b
        benchmark.extra_info.update(b)
        benchmark.extra_info["ns_per_packet_all"] = [r["ns_per_packet"] for r in runs]

    def test_ratios(benchmark: Any) -> None:
        if not RESULTS:
            pytest.skip("no refloop case ran")
        r = ratios(RESULTS)
        benchmark.extra_info["ratios"] = r
        benchmark.extra_info["ns_per_packet"] = {
            k: v["ns_per_packet"] for k, v in RESULTS.items()}
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        print("\n" + table(RESULTS))


def main() -> int:
    """Script mode: every case, ROUNDS interleaved rounds, best of each; prints the table."""
    b = Builds()
    try:
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CASES}
        t0 = time.monotonic()
        for _ in range(ROUNDS):
            for name in CASES:
                runs[name].append(measure(b, name))
        results = {k: best(v) for k, v in runs.items()}
        print(table(results))
        print(f"\n({ROUNDS} interleaved rounds, {time.monotonic() - t0:.1f} s; "
              f"{LOOP_COUNT} loopback / {FEED_COUNT} feed datagrams of {SIZE} bytes)")
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
