"""pyxlio.perf against an independent sockperf peer (tests/sockperf_peer.py), both directions.

The peer is written from sockperf's wire rules, not from pyxlio.perf's code: its server answers
multicast requests to the group (sockperf's rule), takes TCP messages up to its -m and closes a
connection that announces a longer one; its client sends bursts of random payloads and checks
each reply byte for byte. Loopback for unicast; multicast between two network namespaces joined
by a veth pair (skipped, with that reason, when not root). Every process is bounded in time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from netns import two_namespaces

pytestmark = pytest.mark.provider_independent

TIMEOUT = 60
PEER = str(Path(__file__).with_name("sockperf_peer.py"))
SRC = str(Path(__file__).resolve().parent.parent / "src")
QUICK = ("--warmup-num", "20", "--cooldown-num", "10", "--warmup", "0.05", "--cooldown", "0.02")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def perf(*args: str, prefix: list[str] | None = None, check: bool = True,
         json_out: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [*(prefix or []), sys.executable, "-m", "pyxlio.perf", *args]
    if json_out:
        cmd += ["--json", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    if check:
        assert done.returncode == 0, done.stderr + done.stdout
    return done


class Peer:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    def result(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@contextmanager
def peer_server(*args: str, prefix: list[str] | None = None) -> Iterator[Peer]:
    cmd = [*(prefix or []), sys.executable, PEER, "server", "--timeout", "40", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"READY (\d+)", line)
        if m is None:
            proc.kill()
            pytest.fail(f"peer server did not start: {line}{proc.communicate()[1]}")
        yield Peer(proc, int(m.group(1)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def peer_client(*args: str, prefix: list[str] | None = None) -> dict[str, Any]:
    cmd = [*(prefix or []), sys.executable, PEER, "client", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@contextmanager
def perf_server(*args: str, prefix: list[str] | None = None) -> Iterator[Peer]:
    cmd = [*(prefix or []), sys.executable, "-m", "pyxlio.perf", "server", "-p", "0", "--json",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"listening on (?:UDP|TCP) \S+:(\d+)", line)
        if m is None:
            proc.kill()
            pytest.fail(f"pyxlio.perf server did not start: {line}{proc.communicate()[1]}")
        yield Peer(proc, int(m.group(1)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---- pyxlio.perf's client against the peer's server ------------------------------------------


def test_client_bursts_and_data_integrity_against_peer() -> None:
    with peer_server() as srv:
        res = json.loads(perf("pp", "-p", str(srv.port), "-n", "200", "-m", "300",
                              "--data-integrity", *QUICK).stdout)
        bursts = json.loads(perf("pp", "-p", str(srv.port), "-n", "200", "-b", "4",
                                 *QUICK).stdout)
        st = srv.result()
    assert res["valid_sent"] == 200 and res["valid_received"] > 0 and res["replies"] == 230
    assert bursts["burst"] == 4 and bursts["valid_received"] > 0
    assert st["received"] == res["sent"] + bursts["sent"] == st["replies"]
    assert st["warmup"] == 0  # no warm-up messages on unicast (sockperf's rule)


def test_data_integrity_catches_a_bad_echo() -> None:
    # A server that does not echo the payload: --data-integrity fails the run (exit 1).
    import socket
    import threading

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(70000)
            except OSError:
                continue
            seq, flags, ln = int.from_bytes(data[:8], "big"), data[8:10], data[10:14]
            s.sendto(seq.to_bytes(8, "big") + b"\x00\x02" + ln + bytes(len(data) - 14), addr)
            del flags

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        done = perf("pp", "-p", str(s.getsockname()[1]), "-n", "50", "-m", "64",
                    "--data-integrity", *QUICK, check=False)
    finally:
        stop.set()
        t.join(5)
        s.close()
    assert done.returncode == 1
    assert "data integrity test failed" in done.stderr


@pytest.mark.parametrize("size", [65507, 100000, 1048575])
def test_client_large_tcp_messages(size: int) -> None:
    with peer_server("--tcp", "-m", str(size)) as srv:
        res = json.loads(perf("pp", "--tcp", "-p", str(srv.port), "-n", "20", "-m", str(size),
                              "--data-integrity", "--warmup-num", "2", "--cooldown-num",
                              "1").stdout)
        st = srv.result()
    assert res["valid_received"] == 20 and res["dropped"] == 0
    assert st["max_length"] == size and st["received"] == res["sent"] == 23
    assert st["closed_bad_length"] == 0


def test_client_large_tcp_message_against_a_default_server() -> None:
    # A sockperf server without -m takes messages up to 65507 and closes the connection.
    with peer_server("--tcp") as srv:
        done = perf("pp", "--tcp", "-p", str(srv.port), "-n", "5", "-m", "100000", *QUICK,
                    check=False)
        st = srv.result()
    assert done.returncode == 1
    assert st["closed_bad_length"] == 1 and st["received"] == 0


def test_throughput_counts_the_whole_run() -> None:
    # TCP: nothing is lost, so sockperf's "Total of N messages sent" is what the server got.
    with peer_server("--tcp") as srv:
        done = perf("tp", "--tcp", "-p", str(srv.port), "-t", "1", "--mps", "2000", "-m", "100",
                    json_out=False)
        st = srv.result()
    m = re.search(r"^sockperf: Total of (\d+) messages sent in ([\d.]+) sec$", done.stdout, re.M)
    assert m is not None, done.stdout
    assert int(m.group(1)) == st["received"] > 0
    assert float(m.group(2)) >= 1.0  # -t is the whole run


def test_time_is_the_whole_run() -> None:
    with peer_server() as srv:
        res = json.loads(perf("pp", "-p", str(srv.port), "-t", "1", "--mps", "2000").stdout)
        srv.result()
    # The run lasts -t (the loop ends at it); the measured window starts 0.4 s after the first
    # request and ends 0.05 s before the last send, inside the run.
    assert res["measurement"] == "time" and res["runtime_s"] >= 1.0
    assert 0 < res["valid_runtime_s"] < res["runtime_s"] - 0.3
    assert res["valid_sent"] < res["sent"]


# ---- the peer's client against pyxlio.perf's server ------------------------------------------


def test_peer_client_bursts_against_pyxlio_server() -> None:
    with perf_server("-q") as srv:
        out = peer_client("-p", str(srv.port), "-n", "300", "-b", "8", "-m", "500")
        rep = srv.result()
    assert out["integrity_ok"] and out["replies"] == out["sent"] == 300, out
    assert rep["received"] == 300 and rep["replies"] == 300 and rep["dropped"] == 0


@pytest.mark.parametrize("size", [100000, 1048575])
def test_peer_large_tcp_against_pyxlio_server(size: int) -> None:
    with perf_server("-q", "--tcp", "-m", str(size)) as srv:
        out = peer_client("--tcp", "-p", str(srv.port), "-n", "10", "-m", str(size))
        rep = srv.result()
    assert out["integrity_ok"] and out["replies"] == 10, out
    assert rep["received"] == 10 and rep["bytes"] == 10 * size and rep["closed_conns"] == 0


def test_peer_large_tcp_against_default_pyxlio_server() -> None:
    # As sockperf's server: without -m, a 100000-byte message closes that connection.
    with perf_server("-q", "--tcp") as srv:
        out = peer_client("--tcp", "-p", str(srv.port), "-n", "3", "-m", "100000")
        rep = srv.result()
    # Closed with the rest of the message unread: the peer sees the end of the stream, or a
    # reset when the close came before all of its bytes were read (a race on loopback).
    assert out["closed"] or "reset" in out.get("error", "").lower(), out
    assert out["replies"] == 0
    assert rep["closed_conns"] == 1 and rep["received"] == 0


def test_dont_reply() -> None:
    with perf_server("-q", "--dont-reply") as srv:
        done = perf("pp", "-p", str(srv.port), "-t", "1", "--reply-timeout", "0.1",
                    json_out=False)
        rep = srv.result()
    assert rep["received"] > 0 and rep["replies"] == 0
    assert "sockperf: No messages were received from the server. Is the server down?" in \
        done.stdout.splitlines()


# ---- multicast between two network namespaces ------------------------------------------------

GROUP = "239.7.7.7"
A_IP, B_IP = "192.0.2.11", "192.0.2.12"


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[tuple[list[str], list[str]]]:
    with two_namespaces("pp", (A_IP,), (B_IP,)) as (a_ns, b_ns):
        yield ["ip", "netns", "exec", a_ns], ["ip", "netns", "exec", b_ns]


def test_multicast_client_gets_the_group_replies(
        two_hosts: tuple[list[str], list[str]]) -> None:
    """The peer server (host A) answers to the group, as sockperf's: pyxlio's client (host B)
    joins the group and gets the replies."""
    a, b = two_hosts
    with peer_server("-i", GROUP, "--mc-if", A_IP, prefix=a) as srv:
        res = json.loads(perf("pp", "-i", GROUP, "-p", str(srv.port), "--mc-rx-ip", B_IP,
                              "--mc-tx-ip", B_IP, "-n", "100", *QUICK, prefix=b).stdout)
        st = srv.result()
    assert st["reply_to"][0][0] == GROUP  # the server answered the group
    assert res["valid_received"] > 0 and res["replies"] > 100
    assert st["warmup"] == 2  # sockperf sends its two warm-up messages to multicast groups


def test_pyxlio_server_answers_the_group(two_hosts: tuple[list[str], list[str]]) -> None:
    """pyxlio's server (host A) answers a multicast request to the group (and to the sender
    with --force-unicast-reply); the peer client (host B) sees each reply's destination."""
    a, b = two_hosts
    for extra, want in (([], GROUP), (["--force-unicast-reply"], B_IP)):
        with perf_server("-q", "-i", GROUP, "--mc-rx-ip", A_IP, "--mc-tx-ip", A_IP, *extra,
                         prefix=a) as srv:
            out = peer_client("-i", GROUP, "-p", str(srv.port), "--mc-if", B_IP, "-n", "50",
                              "-b", "2", "-m", "200", prefix=b)
            rep = srv.result()
        assert out["integrity_ok"] and out["replies"] == 50, out
        assert out["reply_dst"] and set(out["reply_dst"]) == {want}, out
        assert rep["received"] == 50 and rep["replies"] == 50
