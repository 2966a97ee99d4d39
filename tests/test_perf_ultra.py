"""pyxlio.perf's ``--recv-method ultra``: TCP ping-pong, throughput and the server over XLIO's
Ultra API (pyxlio.ultra), under the strict emulator (3.61: client and server; 3.51, the
16-member socket API: the Ultra client against the socket server), message counts compared
with the socket path's; and the refusals (UDP, other modes, no Ultra API, no listen).

Each run is a subprocess bounded by message counts and by the helpers' timeouts.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytestmark = pytest.mark.provider_independent

TIMEOUT = 30
QUICK = ("--warmup-num", "20", "--cooldown-num", "10", "--warmup", "0.02", "--cooldown", "0.01")
ULTRA = ("--tcp", "--recv-method", "ultra")


def _env(layout: str | None) -> dict[str, str]:
    """The strict emulator with `layout` (None: no XLIO at all)."""
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("PYXLIO_EMU_")}
    env["PYTHONUNBUFFERED"] = "1"
    if layout is not None:
        from pyxlio import emu

        env = emu.environ(strict=True, base=env)
        env["PYXLIO_EMU_LAYOUT"] = layout
    return env


def perf(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyxlio.perf", *args]


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    def stop(self) -> dict[str, Any]:
        """SIGINT the server (a user's Ctrl-C) and return its JSON report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@contextmanager
def server(*args: str, layout: str | None = "3.61") -> Iterator[Server]:
    proc = subprocess.Popen(perf("server", "-i", "127.0.0.1", "-p", "0", "--json", "-q", *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(layout))
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
        line = proc.stderr.readline() if ready else ""
        m = re.search(r"listening on TCP \S+:(\d+)", line)
        if m is None:
            proc.kill()
            _out, err = proc.communicate()
            pytest.fail(f"server did not start: {line}{err}")
        yield Server(proc, int(m.group(1)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def client(*args: str, layout: str | None = "3.61") -> dict[str, Any]:
    done = subprocess.run(perf(*args, "--json", "-q"), capture_output=True, text=True,
                          timeout=TIMEOUT, env=_env(layout))
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def refused(*args: str, layout: str | None = "3.61") -> subprocess.CompletedProcess[str]:
    return subprocess.run(perf(*args, "-q"), capture_output=True, text=True, timeout=TIMEOUT,
                          env=_env(layout))


@pytest.mark.parametrize("busy", [False, True], ids=["blocking", "busy"])
@pytest.mark.parametrize("size", ["64", "3000"])
def test_ping_pong_ultra_client_and_server(busy: bool, size: str) -> None:
    extra = ["--busy-poll"] if busy else []
    with server(*ULTRA, *extra) as srv:
        res = client("pp", "-p", str(srv.port), "-n", "300", "-m", size, *QUICK, *ULTRA, *extra,
                     "--data-integrity")
        rep = srv.stop()
    assert res["recv_method"] == "ultra" and rep["recv_method"] == "ultra"
    assert res["provider"] == "emulator" and res["offloaded"] is True
    assert rep["offloaded"] is True
    # TCP: every request answered, in order; the same counts as the socket path gives.
    assert res["sent"] == 330 and res["valid_sent"] == 300
    assert res["valid_received"] == 300 and res["dropped"] == 0 and res["out_of_order"] == 0
    assert res["latency"]["count"] == 300
    assert rep["received"] == rep["replies"] == 330 and rep["peers"] == 1
    assert rep["bytes"] == 330 * int(size)
    assert rep["dropped"] == rep["duplicated"] == rep["out_of_order"] == 0


@pytest.mark.parametrize("method", ["stdlib", "batch"])
def test_same_counts_as_the_socket_path(method: str) -> None:
    """The Ultra client against the socket server, the socket client against the Ultra server:
    the counts of an all-socket run."""
    args = ("pp", "-n", "200", "-m", "100", *QUICK, "--tcp")
    with server("--tcp", "--recv-method", method) as srv:
        sock = client(*args, "-p", str(srv.port), "--recv-method", method)
        ultra = client(*args, "-p", str(srv.port), "--recv-method", "ultra")
        rep = srv.stop()
    with server(*ULTRA) as srv:
        to_ultra = client(*args, "-p", str(srv.port), "--recv-method", method)
        urep = srv.stop()
    for res in (sock, ultra, to_ultra):
        assert (res["sent"], res["valid_sent"], res["valid_received"], res["dropped"]) == \
            (sock["sent"], 200, 200, 0)
    assert rep["received"] == rep["replies"] == 2 * sock["sent"] and rep["peers"] == 2
    assert urep["received"] == urep["replies"] == sock["sent"]
    assert urep["bytes"] == rep["bytes"] // 2


def test_throughput_ultra() -> None:
    with server(*ULTRA) as srv:
        tp = client("tp", "-p", str(srv.port), "-n", "20000", "-m", "200", *QUICK, *ULTRA)
        sock = client("tp", "-p", str(srv.port), "-n", "20000", "-m", "200", *QUICK, "--tcp")
        rep = srv.stop()
    assert tp["sent"] == sock["sent"] == 20000 and tp["replies"] == 0
    assert tp["recv_method"] == "ultra" and tp["msg_per_s"] > 0
    # The Ultra server counted every message of both clients, byte for byte.
    assert rep["received"] == 40000 and rep["bytes"] == 40000 * 200 and rep["replies"] == 0
    assert rep["dropped"] == 0 and rep["peers"] == 2


def test_ultra_client_on_the_socket_api_layout() -> None:
    """3.51 (16 members, no listen): the client runs, the server is refused with the reason."""
    with server("--tcp", layout="3.51") as srv:
        res = client("pp", "-p", str(srv.port), "-n", "200", *QUICK, *ULTRA, layout="3.51")
        tp = client("tp", "-p", str(srv.port), "-n", "5000", *QUICK, *ULTRA, layout="3.51")
        rep = srv.stop()
    assert res["valid_received"] == 200 and res["dropped"] == 0
    assert tp["sent"] == 5000
    # The socket API's destroy resets the connection at once (libxlio 3.51.1, as the emulator
    # does): throughput's last messages, still queued when the client closes, may be lost.
    assert res["sent"] < rep["received"] <= res["sent"] + 5000
    assert rep["bytes"] == 14 * rep["received"]
    done = refused("server", "-p", "0", *ULTRA, layout="3.51")
    assert done.returncode == 2, done.stderr
    assert "the server needs listen" in done.stderr and "SOCKET_API" in done.stderr


def test_refusals() -> None:
    for args, fragment in (
        (("pp", "--recv-method", "ultra", "-n", "5"), "for TCP only"),
        (("ul", *ULTRA, "-n", "5"), "--recv-method ultra runs server, ping-pong, throughput"),
        (("pb", *ULTRA, "--data-file", "x.csv"), "--recv-method ultra runs"),
        (("pp", *ULTRA, "-n", "5", "--dummy-send", "100"), "--dummy-send needs a pyxlio socket"),
    ):
        done = refused(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert fragment in done.stderr, (args, done.stderr)


def test_without_an_ultra_api() -> None:
    """No XLIO (and the emulator's libvma layout): exit 2, saying what is needed."""
    for layout in (None, "vma"):
        for args in (("pp", "-p", "9", "-n", "5", *ULTRA), ("server", "-p", "0", *ULTRA)):
            done = refused(*args, layout=layout)
            assert done.returncode == 2, (layout, args, done.stderr)
            assert "needs XLIO's Ultra API" in done.stderr and "--emu" in done.stderr


def test_connection_refused() -> None:
    import socket

    with socket.socket() as s:     # a port with nobody listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = refused("pp", "-p", str(port), "-n", "5", *ULTRA)
    assert done.returncode == 1, done.stderr
    assert "cannot connect to 127.0.0.1:" in done.stderr and "Ultra API" in done.stderr


def test_emu_option() -> None:
    """--emu re-executes under the emulator (its default layout: the 16-member socket API)."""
    with server("--tcp") as srv:
        done = subprocess.run(perf("pp", "-p", str(srv.port), "-n", "50", *QUICK, *ULTRA,
                                   "--emu", "--emu-strict", "--json", "-q"),
                              capture_output=True, text=True, timeout=TIMEOUT, env=_env(None))
        srv.stop()
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res["provider"] == "emulator" and res["valid_received"] == 50
