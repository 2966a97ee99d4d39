"""The examples run, and say what they should, under the emulator (strict) and without XLIO."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.provider_independent
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(args: list[str], emulated: bool, **emu_opts: object) -> subprocess.CompletedProcess[str]:
    from pyxlio import emu

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if emulated:
        env = emu.environ(strict=True, base=env, **emu_opts)  # type: ignore[arg-type]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize("emulated", [True, False], ids=["emulator", "kernel"])
def test_md_receiver_counts_gaps(emulated: bool) -> None:
    proc = run([str(EXAMPLES / "md_receiver.py"), "--publish", "--count", "20000", "--port",
                "31071", "--skip", "10", "11", "12", "900"], emulated)
    assert proc.returncode == 0, proc.stderr
    assert "gaps: 2 (4 datagrams missing), duplicates: 0, reordered: 0" in proc.stdout
    assert f"zero-copy: {'yes' if emulated else 'no'}" in proc.stdout
    assert "received 19,996 datagrams" in proc.stdout


def test_md_receiver_on_the_feed() -> None:
    proc = run([str(EXAMPLES / "md_receiver.py"), "--feed", "--port", "31072", "--count",
                "300000"], True, feed="31072:64")
    assert proc.returncode == 0, proc.stderr
    received = int(re.search(r"received ([\d,]+) datagrams", proc.stdout)[1].replace(",", ""))
    assert 300_000 <= received < 300_000 + 256          # whole batches of at most 256
    assert "gaps: 0 (0 datagrams missing)" in proc.stdout


@pytest.mark.parametrize("emulated", [True, False], ids=["emulator", "kernel"])
def test_zcopy_echo(emulated: bool) -> None:
    proc = run([str(EXAMPLES / "zcopy_echo.py"), "--selftest", "500"], emulated)
    assert proc.returncode == 0, proc.stderr
    assert "echoed 500 datagrams, 0 wrong, 0 buffers outstanding" in proc.stdout
    assert f"offloaded: {emulated}" in proc.stdout


def test_callback_filter() -> None:
    proc = run([str(EXAMPLES / "callback_filter.py"), "--count", "600"], True)
    assert proc.returncode == 0, proc.stderr
    assert "filtered out in C: 300" in proc.stdout
    counts = dict(re.findall(r"b'(\w)': (\d+)", proc.stdout))
    assert counts == {"H": "100", "S": "100", "T": "100"}
    assert "trades received: 100; snapshots held: 100; outstanding: 0" in proc.stdout


def test_callback_filter_explains_it_needs_xlio() -> None:
    proc = run([str(EXAMPLES / "callback_filter.py")], False)
    assert proc.returncode == 2 and "needs XLIO" in proc.stdout


@pytest.mark.parametrize("emulated", [True, False], ids=["emulator", "kernel"])
def test_ab_arbitration(emulated: bool) -> None:
    port = "31111" if emulated else "31112"
    proc = run([str(EXAMPLES / "ab_arbitration.py"), "--publish", "--count", "3000", "--port",
                port, "--drop-a", "10", "11", "500", "--drop-b", "11", "12", "13", "700"],
               emulated)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # 2 x 3000 published, 3 + 4 left out: every copy received, each sequence taken once.
    assert "received 5,993 datagrams; sequences taken: 2,999 " in out
    assert "gaps: 1 (1 sequence numbers lost on both lines); late duplicates: 2,994 " in out
    assert "A's losses covered by B: 2; B's losses covered by A: 3" in out
    assert f"zero-copy: {'yes' if emulated else 'no'}" in out
    # The emulator's zero-copy receive gives no receive time: pyxlio's reading, said so.
    assert f"timestamps: {'pyxlio' if emulated else 'kernel'}" in out
    p50, p99, worst = (int(v.replace(",", "")) for v in re.search(
        r"latency ns: p50 ([\d,]+), p99 ([\d,]+), max ([\d,]+)", out).groups())
    assert 0 < p50 <= p99 <= worst
    assert "buffers outstanding: 0" in out


def test_ab_arbitration_gaps_with_no_publisher_drops() -> None:
    proc = run([str(EXAMPLES / "ab_arbitration.py"), "--publish", "--count", "1000", "--port",
                "31113"], False)
    assert proc.returncode == 0, proc.stderr
    assert "sequences taken: 1,000 " in proc.stdout
    assert "gaps: 0 (0 sequence numbers lost on both lines); late duplicates: 1,000 " \
        in proc.stdout
