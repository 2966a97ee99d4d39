#!/usr/bin/env python3
"""Instructions per datagram, counted by callgrind: pyxlio's receive paths next to the C loop
making the same XLIO calls, on the emulator's in-memory feed.

Timings on a shared machine move with its load; instruction counts do not (valgrind's
callgrind counts the instructions executed: the same binary, inputs and environment give the
same count, whatever else runs).  So this is the yardstick for "did a change make the hot path
dearer", next to bench/run.py's timings.

Each figure is a difference of two runs (N1 and N2 datagrams) divided by N2 - N1, so start-up
and imports cancel out.  PYTHONHASHSEED is fixed (dict probing would move the counts).  The
ratio is pyxlio's instructions over the C loop's (bench/c: refloop, pxbench cb) for the same
datagrams: the C loop is the floor.

    python bench/instructions.py                   # every method, a table
    python bench/instructions.py --json            # one JSON object
    python bench/instructions.py --methods batch,zcopy --n1 20000 --n2 70000

Needs valgrind and a C compiler; runs under the emulator (built with pyxlio).  Takes about a
minute per method.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import run as _run  # noqa: E402  (bench/run.py: the C tools, environments and loops)

FEED_PORT = 47410
SIZE = 64
# pyxlio method -> (make_loop method, batch size, C tool and arguments doing the same calls)
METHODS: dict[str, tuple[str, int, list[str]]] = {
    "zcopy": ("zcopy", 1, ["refloop", "recv", "--mode", "zcopy"]),
    "batch1": ("batch", 1, ["refloop", "recv", "--mode", "zcopy-free-batch", "--batch", "1"]),
    "batch64": ("batch", 64, ["refloop", "recv", "--mode", "zcopy-free-batch", "--batch", "64"]),
    "views64": ("views", 64, ["refloop", "recv", "--mode", "zcopy-free-batch", "--batch", "64"]),
    "packets64": ("packets", 64,
                  ["refloop", "recv", "--mode", "zcopy-free-batch", "--batch", "64"]),
    # a receive callback counting each datagram, DROP except every 64th (RECV)
    "callback": ("callback", 1, ["pxbench", "cb", "--every", str(_run.CALLBACK_EVERY)]),
}

CHILD = """
import socket, sys
sys.path.insert(0, {bench!r})
import run
from pyxlio.socket import socket as xs
s = xs(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", {port}))
loop = run.make_loop({method!r}, s, max_packets={batch}, every={every})
got = loop({count})
assert got >= {count}, got
s.close()
"""


def instructions(cmd: list[str], env: dict[str, str]) -> int:
    """Instructions callgrind counted for `cmd` (the whole process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                           env=env, capture_output=True, text=True, timeout=1800)
        m = re.search(r"Collected : (\d+)", p.stderr)
        if p.returncode != 0 or m is None:
            raise RuntimeError(f"{cmd[0]} under callgrind failed ({p.returncode}):\n"
                               f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return int(m.group(1))


def per_datagram(make_cmd: object, env: dict[str, str], n1: int, n2: int) -> float:
    a = instructions(make_cmd(n1), env)  # type: ignore[operator]
    b = instructions(make_cmd(n2), env)  # type: ignore[operator]
    return (b - a) / (n2 - n1)


def measure(names: list[str], n1: int, n2: int) -> dict[str, dict[str, float]]:
    tools = _run.c_tools()
    env = _run.child_env(emu=True, feed=f"{FEED_PORT}:{SIZE}")
    env["PYTHONHASHSEED"] = "0"
    results: dict[str, dict[str, float]] = {}
    c_cache: dict[tuple[str, ...], float] = {}
    for name in names:
        method, batch, c_args = METHODS[name]

        def py_cmd(count: int, method: str = method, batch: int = batch) -> list[str]:
            code = CHILD.format(bench=str(BENCH_DIR), port=FEED_PORT, method=method,
                                batch=batch, count=count, every=_run.CALLBACK_EVERY)
            return [sys.executable, "-c", code]

        def c_cmd(count: int, c_args: list[str] = c_args) -> list[str]:
            return [tools[c_args[0]], *c_args[1:], "--port", str(FEED_PORT),
                    "--count", str(count)]

        key = tuple(c_args)
        if key not in c_cache:
            c_cache[key] = per_datagram(c_cmd, env, n1, n2)
        py = per_datagram(py_cmd, env, n1, n2)
        results[name] = {"pyxlio": round(py, 1), "c": round(c_cache[key], 1),
                         "ratio": round(py / c_cache[key], 3)}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--n1", type=int, default=20_000)
    p.add_argument("--n2", type=int, default=70_000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    names = [m for m in a.methods.split(",") if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}")
    if not 0 < a.n1 < a.n2:
        p.error("need 0 < n1 < n2")
    if shutil.which("valgrind") is None:
        print("instructions.py needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    res = measure(names, a.n1, a.n2)
    if a.json:
        print(json.dumps({"size": SIZE, "n1": a.n1, "n2": a.n2, "methods": res}))
    else:
        print(f"instructions per {SIZE}-byte datagram (emulator feed; "
              f"callgrind, runs of {a.n1} and {a.n2})")
        for name, r in res.items():
            print(f"  {name:<10} pyxlio {r['pyxlio']:>8.1f}   C {r['c']:>7.1f}   "
                  f"pyxlio/C {r['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
