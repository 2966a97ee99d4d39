"""examples/ultra_echo.py: the Ultra API echo, run under the emulator in strict mode in both of
its Ultra layouts (3.61: server and client on the Ultra API; 3.51: the 16-member socket API,
an Ultra client against a kernel echo thread), and without XLIO (a clear refusal).

The million-message runs are the issue's "done when" (issue 14): every message back intact,
every received buffer returned, every zero-copy completion seen, the strict emulator content
at exit (a leaked buffer or a contract violation fails its exit status).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.provider_independent
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ultra_echo.py"
LAYOUTS = ("3.61", "3.51")


def run(args: list[str], layout: str | None,
        timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The example under the strict emulator with `layout` (None: without XLIO)."""
    from pyxlio import emu

    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("PYXLIO_EMU_")}
    if layout is not None:
        env = emu.environ(strict=True, base=env)
        env["PYXLIO_EMU_LAYOUT"] = layout
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def num(text: str) -> int:
    return int(text.replace(",", ""))


def check(proc: subprocess.CompletedProcess[str], count: int, size: int, layout: str,
          zero_copy: bool) -> None:
    out = proc.stdout
    assert proc.returncode == 0, f"status {proc.returncode}\n{out}\n{proc.stderr}"
    assert out.rstrip().endswith("OK"), out
    if layout == "3.61":
        assert "server and the client both use the Ultra API" in out
    else:
        assert "the server is a plain kernel TCP echo thread; only the client uses the Ultra " \
               "API" in out
        assert "server: the kernel echo thread ended" in out
    echoed = re.search(r"client: ([\d,]+) messages of (\d+) bytes echoed, (\d+) wrong", out)
    assert echoed is not None, out
    assert (num(echoed[1]), int(echoed[2]), int(echoed[3])) == (count, size, 0)
    sides = ("client", "server") if layout == "3.61" else ("client",)
    for who in sides:
        m = re.search(who + r": buffers: ([\d,]+) received, ([\d,]+) returned; zero-copy sends: "
                      r"([\d,]+), completions: ([\d,]+); copied sends: ([\d,]+)", out)
        assert m is not None, out
        received, returned, zc_sends, completions, copied = (num(g) for g in m.groups())
        assert received > 0 and returned == received, out
        assert completions == zc_sends, out
        if zero_copy:
            assert zc_sends > 0, out
        else:
            assert zc_sends == 0 and copied > 0, out
    if layout == "3.61":
        m = re.search(r"server: 1 connection\(s\), ([\d,]+) bytes echoed", out)
        assert m is not None and num(m[1]) == count * size, out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("zero_copy", [False, True], ids=["copied", "zero-copy"])
def test_selftest(layout: str, zero_copy: bool) -> None:
    args = ["selftest", "--count", "20000", "--size", "100"]
    proc = run(args + (["--zero-copy"] if zero_copy else []), layout)
    check(proc, 20000, 100, layout, zero_copy)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_selftest_odd_sizes(layout: str) -> None:
    """Messages that straddle buffers, sends of one message each, a window of one."""
    proc = run(["selftest", "--count", "300", "--size", "3001", "--window", "1", "--batch", "1",
                "--zero-copy"], layout)
    check(proc, 300, 3001, layout, True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_million_messages(layout: str) -> None:
    """Issue 14's "done when": a million 64-byte messages, zero-copy sends, strict emulator."""
    proc = run(["selftest", "--count", "1000000", "--size", "64", "--zero-copy"], layout,
               timeout=180)
    check(proc, 1_000_000, 64, layout, True)


def test_server_and_clients() -> None:
    """`server` (3.61, zero-copy echoes) and two `client` processes (zero-copy and copied
    sends), the server stopped by SIGINT (Ctrl-C) and reporting every buffer and completion."""
    import select
    import signal

    from pyxlio import emu

    env = emu.environ(strict=True, base={k: v for k, v in os.environ.items()
                                         if k != "LD_PRELOAD" and not k.startswith("PYXLIO_EMU_")})
    env["PYXLIO_EMU_LAYOUT"] = "3.61"
    srv = subprocess.Popen([sys.executable, str(EXAMPLE), "server", "--port", "0", "--zero-copy"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline() if select.select([srv.stdout], [], [], 20)[0] else ""
        m = re.search(r"echoing on 127\.0\.0\.1:(\d+) \(Ultra API, zero-copy sends\)", line)
        assert m is not None, line
        for extra in (["--zero-copy"], ["--size", "1000", "--count", "3000"]):
            proc = run(["client", "--port", m[1], "--count", "20000", *extra], "3.61")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert " echoed, 0 wrong" in proc.stdout
        srv.send_signal(signal.SIGINT)
        out, err = srv.communicate(timeout=20)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.communicate()
    assert srv.returncode == 0, out + err
    assert f"server: 2 connection(s), {20000 * 64 + 3000 * 1000:,} bytes echoed" in out
    m = re.search(r"server: buffers: ([\d,]+) received, ([\d,]+) returned; zero-copy sends: "
                  r"([\d,]+), completions: ([\d,]+)", out)
    assert m is not None, out
    assert m[1] == m[2] and m[3] == m[4] and num(m[3]) > 0, out


def test_server_refused_without_listen() -> None:
    proc = run(["server", "--port", "0", "--seconds", "1"], "3.51")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no listen" in proc.stdout


def test_without_xlio() -> None:
    proc = run(["selftest", "--count", "10"], None)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no Ultra API: it needs libxlio 3.30+" in proc.stdout
