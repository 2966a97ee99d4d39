"""End-to-end runs of the perf tool on loopback, stdlib receive method (no XLIO needed).

Each test starts a server subprocess on a free port, runs a client for a few hundred
messages (bounded by count and by timeouts), and checks what both sides report. Also checks the
wire behaviour against hand-written peers that follow sockperf's rules (a stand-in for a C
sockperf, which is not installed here).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pyxlio.perf import wire

pytestmark = pytest.mark.provider_independent

TIMEOUT = 30


def _env(emu: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if emu:
        from pyxlio import emu as emulator

        env = emulator.environ(strict=True, base=env)
    return env


def perf_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyxlio.perf", *args]


class Server:
    def __init__(self, proc: subprocess.Popen[str], host: str, port: int) -> None:
        self.proc = proc
        self.host = host
        self.port = port

    def stop(self) -> dict[str, Any]:
        """SIGINT the server and return its JSON report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@contextmanager
def perf_server(*args: str, prefix: list[str] | None = None, ip: str = "127.0.0.1",
                emu: bool = False) -> Iterator[Server]:
    cmd = (prefix or []) + perf_cmd("server", "-i", ip, "-p", "0", "--json", "-q", *args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(emu))
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
        line = proc.stderr.readline() if ready else ""
        m = re.search(r"listening on (UDP|TCP) (\S+):(\d+)", line)
        if m is None:
            proc.kill()
            _out, err = proc.communicate()
            pytest.fail(f"server did not start: {line}{err}")
        yield Server(proc, m.group(2), int(m.group(3)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run_client(*args: str, prefix: list[str] | None = None, emu: bool = False) -> dict[str, Any]:
    cmd = (prefix or []) + perf_cmd(*args, "--json", "-q")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(emu))
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# Short warm-up/cool-down: ping-pong -n counts replies (sockperf: 8000 and 1000), the other
# runs measure a time window (sockperf: 400 ms after the first request, 50 ms before the end).
QUICK = ("--warmup-num", "20", "--cooldown-num", "10", "--warmup", "0.02", "--cooldown", "0.01")


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("busy", [False, True], ids=["blocking", "busy"])
def test_ping_pong(tcp: bool, busy: bool) -> None:
    extra = (["--tcp"] if tcp else []) + (["--busy-poll"] if busy else [])
    with perf_server(*extra) as srv:
        res = run_client("ping-pong", "-p", str(srv.port), "-n", "300", "-m", "64", *QUICK,
                         *extra)
        rep = srv.stop()
    assert res["mode"] == "ping-pong" and res["protocol"] == ("tcp" if tcp else "udp")
    assert res["valid_sent"] == 300
    assert res["valid_received"] + res["dropped"] + res["out_of_order"] == 300
    assert res["valid_received"] > 0
    lat = res["latency"]
    assert lat["count"] == res["valid_received"]
    assert 0 < lat["min"] <= lat["percentiles"]["25"] <= lat["percentiles"]["50"] \
        <= lat["percentiles"]["99"] <= lat["max"]
    assert lat["min"] <= lat["avg"] <= lat["max"]
    # The server answered every message the client sent (warm-up ones excepted).
    assert rep["received"] == res["sent"]
    assert rep["replies"] == res["sent"]
    assert rep["warmup"] == 0  # sockperf sends warm-up messages to multicast groups only
    assert rep["peers"] == 1
    assert res["sent"] == 330  # 20 warm-up replies, 300 measured, 10 cool-down
    assert rep["received"] > res["valid_sent"]  # warm-up / cool-down traffic went too


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
@pytest.mark.parametrize("method", ["stdlib", "batch"])
def test_ping_pong_ipv6(method: str) -> None:
    with perf_server("--recv-method", method, ip="::1") as srv:
        res = run_client("pp", "-i", "::1", "-p", str(srv.port), "-n", "100", *QUICK,
                         "--recv-method", method)
        rep = srv.stop()
    assert srv.host == "::1"
    assert res["valid_received"] + res["dropped"] == 100 and res["valid_received"] > 0
    assert rep["replies"] == res["sent"]


def test_under_load_replies_to_a_sample() -> None:
    with perf_server() as srv:
        res = run_client("under-load", "-p", str(srv.port), "-n", "400", "--mps", "4000",
                         "--reply-every", "10", *QUICK)
        rep = srv.stop()
    assert res["reply_every"] == 10 and res["sent"] == 400
    # The measured window spans reply requests (multiples of 10) from first to last.
    requests = (res["valid_sent"] - 1) // 10 + 1
    assert res["valid_received"] + res["dropped"] + res["out_of_order"] == requests
    assert res["latency"]["count"] == res["valid_received"] > 0
    assert rep["received"] == res["sent"]
    assert rep["replies"] == res["sent"] // 10


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_throughput(tcp: bool) -> None:
    extra = ["--tcp"] if tcp else []
    with perf_server(*extra) as srv:
        res = run_client("throughput", "-p", str(srv.port), "-n", "500", "-m", "200",
                         "--mps", "20000", *QUICK, *extra)
        rep = srv.stop()
    assert res["mode"] == "throughput" and res["latency"] is None and res["replies"] == 0
    # sockperf's "Total of N messages sent" counts the whole run; the rate is N / run time.
    assert res["sent"] == 500
    assert res["msg_per_s"] == int(0.5 + 500 / res["runtime_s"])
    assert res["mb_per_s"] == pytest.approx(res["msg_per_s"] * 200 / 2**20)
    assert rep["replies"] == 0
    # Loss accounting adds up on the server side (UDP may lose; TCP may not).
    assert rep["received"] + rep["dropped"] == res["sent"]
    if tcp:
        assert rep["received"] == res["sent"] and rep["dropped"] == 0
        assert rep["bytes"] == 200 * res["sent"]


def test_text_report_shape() -> None:
    with perf_server() as srv:
        done = subprocess.run(
            perf_cmd("pp", "-p", str(srv.port), "-n", "50", *QUICK, "-q"),
            capture_output=True, text=True, timeout=TIMEOUT, env=_env())
        srv.stop()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for pattern in (r"\[Valid Duration\] RunTime=[\d.]+ sec; SentMessages=50; ReceivedMessages=\d+",
                    r"====> avg-latency=[\d.]+ \(std-dev=[\d.]+, mean-ad=[\d.]+, "
                    r"median-ad=[\d.]+, siqr=[\d.]+, cv=[\d.]+, std-error=[\d.]+, "
                    r"99\.0% ci=\[[-\d.]+, [\d.]+\]\)",
                    r"# dropped messages = \d+; # duplicated messages = \d+; "
                    r"# out-of-order messages = \d+",
                    r"---> percentile 99\.999 = +[\d.]+",
                    r"---> percentile 25\.000 = +[\d.]+",
                    r"---> <MIN> observation = +[\d.]+"):
        assert re.search(pattern, out), (pattern, out)


def test_no_server_reports_as_sockperf() -> None:
    # A UDP port with nothing behind it: sockperf reports no replies and exits 0; so do we.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    done = subprocess.run(perf_cmd("pp", "-p", str(port), "-t", "1", "--reply-timeout", "0.2",
                                   "-q"),
                          capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert done.returncode == 0, done.stderr
    assert ("sockperf: No messages were received from the server. Is the server down?"
            in done.stdout.splitlines())


def test_server_stops_by_count_and_time() -> None:
    with perf_server("-n", "10") as srv:
        res = run_client("pp", "-p", str(srv.port), "-n", "10", "--warmup-num", "0",
                         "--cooldown-num", "0")
        out, _err = srv.proc.communicate(timeout=TIMEOUT)  # no signal: it stops by itself
    rep = json.loads(out)
    assert rep["stopped_by"] == "count" and rep["received"] == 10 and rep["replies"] == 10
    assert res["valid_sent"] == 10
    done = subprocess.run(perf_cmd("server", "-p", "0", "-t", "0.3", "--json", "-q"),
                          capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert done.returncode == 0 and json.loads(done.stdout)["stopped_by"] == "time"


# ---- facing sockperf's rules from the other side ------------------------------------------


def test_server_answers_as_sockperf_does() -> None:
    """A hand-made client sends raw sockperf messages and checks the reply bytes."""
    with perf_server() as srv:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(5)
        c.connect((srv.host, srv.port))
        payload = bytes(range(50))
        # Warm-up (client|pong|warmup = 7): neither counted nor answered.
        c.send(wire.HEADER.pack(1, 7, 64) + payload)
        # Client, no pong request (1): counted, not answered.
        c.send(wire.HEADER.pack(2, 1, 64) + payload)
        # Not from a client (pong only, 2): ignored.
        c.send(wire.HEADER.pack(3, 2, 64) + payload)
        # Client + pong request (3): answered with flags 2, the rest byte for byte.
        c.send(wire.HEADER.pack(0x0102030405060708, 3, 64) + payload)
        reply = c.recv(100)
        assert reply == bytes.fromhex("0102030405060708" "0002" "00000040") + payload
        c.close()
        rep = srv.stop()
    assert (rep["received"], rep["replies"], rep["warmup"], rep["ignored"]) == (2, 1, 1, 1)
    # Sequence 2 then 0x0102..: a forward jump is counted as drops, as sockperf's gap check.
    assert rep["dropped"] == 0x0102030405060708 - 3


def test_client_against_a_minimal_sockperf_server() -> None:
    """Our client facing an independent server that follows sockperf's server.h rules."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    seen: list[tuple[int, int, int, int]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = srv.recvfrom(65536)
            except (TimeoutError, socket.timeout):
                continue
            seq, flags, length = wire.HEADER.unpack_from(data)
            seen.append((seq, flags, length, len(data)))
            if flags & 1 and not flags & 4 and flags & 2:
                srv.sendto(wire.HEADER.pack(seq, flags & ~1, length) + data[14:length], addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        res = run_client("under-load", "-p", str(port), "-n", "100", "--mps", "2000",
                         "--reply-every", "5", "-m", "100", *QUICK)
    finally:
        stop.set()
        t.join(5)
        srv.close()
    assert res["replies"] == 20 and res["valid_received"] > 0
    # Every message: CLIENT set, length field = the datagram size = -m.
    assert all(f & 1 and ln == 100 and n == 100 for _s, f, ln, n in seen)
    # No warm-up messages on unicast (sockperf sends them to multicast groups only); sequence
    # numbers count from 1, with a pong request on every 5th.
    assert not any(f & 4 for _s, f, _l, _n in seen)
    body = seen
    assert [s for s, *_ in body] == list(range(1, len(body) + 1))
    assert all(bool(f & 2) == (s % 5 == 0) for s, f, _l, _n in body)


# ---- multicast -------------------------------------------------------------------------------


def _loopback_multicast_works() -> bool:
    group, port = "239.255.77.77", 0
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.bind((group, port))
        port = r.getsockname()[1]
        r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        r.settimeout(0.5)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        s.sendto(b"x", (group, port))
        return r.recv(10) == b"x"
    except OSError:
        return False
    finally:
        r.close()
        s.close()


def _netns_possible() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"pyxperf{os.getpid()}chk"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


@contextmanager
def _multicast_place() -> Iterator[list[str] | None]:
    """Yield a command prefix where loopback multicast works ([] here, or ip netns exec)."""
    if _loopback_multicast_works():
        yield []
        return
    if not _netns_possible():
        yield None
        return
    name = f"pyxperf{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "set", "lo", "multicast", "on"],
                    ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_multicast_ping_pong() -> None:
    group = "239.255.42.99"
    with _multicast_place() as prefix:
        if prefix is None:
            pytest.skip("loopback multicast is off here and network namespaces cannot be made")
        # One host: multicast must loop back (sockperf's default is off: --mc-loopback-enable).
        with perf_server("--mc-rx-if", "127.0.0.1", "--mc-loopback-enable",
                         ip=group, prefix=prefix) as srv:
            res = run_client("pp", "-i", group, "--mc-tx-if", "127.0.0.1", "-p",
                             str(srv.port), "--mc-loopback-enable", "-n", "200", *QUICK,
                             prefix=prefix)
            rep = srv.stop()
    assert res["valid_sent"] == 200 and res["valid_received"] > 0
    assert rep["received"] == res["sent"] and rep["replies"] == res["sent"]
    assert rep["warmup"] == 2  # sockperf's two warm-up messages, to the group


def test_plot_option(tmp_path: Any) -> None:
    import importlib.util

    png = tmp_path / "latency.png"
    with perf_server() as srv:
        done = subprocess.run(
            perf_cmd("pp", "-p", str(srv.port), "-n", "100", *QUICK, "-q", "--plot",
                     str(png)),
            capture_output=True, text=True, timeout=TIMEOUT, env=_env())
        srv.stop()
    if importlib.util.find_spec("matplotlib") is None:
        assert done.returncode == 2
        assert "needs matplotlib" in done.stderr
        assert not png.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_lines_on_long_runs() -> None:
    with perf_server() as srv:
        done = subprocess.run(
            perf_cmd("tp", "-p", str(srv.port), "-t", "3.2", "--warmup", "0", "--cooldown", "0",
                     "--mps", "500"),
            capture_output=True, text=True, timeout=TIMEOUT, env=_env())
        srv.stop()
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if re.match(r"pyxlio-perf: \[ *\d", ln)]
    assert len(lines) >= 2, done.stderr
    assert all("sent" in ln and "msg/s" in ln for ln in lines)
    assert "Summary: Message Rate" in done.stdout  # the report itself stays on stdout


# ---- pyxlio's receive methods -------------------------------------------------------------
# Under the emulator (strict: a leaked packet makes a process exit non-zero, which the helpers
# assert against), and through the kernel without any XLIO.

PYXLIO_METHODS = ("copy", "zcopy", "batch", "callback")


@pytest.mark.parametrize("busy", [False, True], ids=["blocking", "busy"])
@pytest.mark.parametrize("method", PYXLIO_METHODS)
def test_ping_pong_pyxlio_methods_under_emulator(method: str, busy: bool) -> None:
    extra = ["--recv-method", method] + (["--busy-poll"] if busy else [])
    with perf_server(*extra, emu=True) as srv:
        res = run_client("pp", "-p", str(srv.port), "-n", "300", "-m", "64", *QUICK, *extra,
                         emu=True)
        rep = srv.stop()
    assert res["provider"] == "emulator" and rep["provider"] == "emulator"
    assert res["offloaded"] is True and rep["offloaded"] is True
    assert res["recv_method"] == method and rep["recv_method"] == method
    assert res["valid_sent"] == 300
    assert res["valid_received"] + res["dropped"] + res["out_of_order"] == 300
    assert res["latency"]["count"] == res["valid_received"] > 0
    assert rep["received"] == res["sent"] and rep["replies"] == res["sent"]
    assert rep["warmup"] == 0


@pytest.mark.parametrize("method", PYXLIO_METHODS)
def test_under_load_and_throughput_pyxlio_methods(method: str) -> None:
    """The server's no-reply path: the callback method handles these inside the callback."""
    extra = ["--recv-method", method]
    with perf_server(*extra, emu=True) as srv:
        ul = run_client("ul", "-p", str(srv.port), "-n", "300", "--mps", "5000",
                        "--reply-every", "10", *QUICK, *extra, emu=True)
        tp = run_client("tp", "-p", str(srv.port), "-n", "300", "--mps", "10000", "-m", "300",
                        *QUICK, *extra, emu=True)
        rep = srv.stop()
    assert ul["replies"] <= 30 and ul["latency"]["count"] == ul["valid_received"] > 0
    assert tp["sent"] == 300 and ul["sent"] == 300
    assert rep["replies"] == ul["sent"] // 10
    assert rep["received"] + rep["dropped"] == ul["sent"] + tp["sent"]
    assert rep["peers"] == 2


@pytest.mark.parametrize("method", ["copy", "zcopy", "batch"])
def test_tcp_pyxlio_methods_under_emulator(method: str) -> None:
    extra = ["--tcp", "--recv-method", method]
    with perf_server(*extra, emu=True) as srv:
        res = run_client("pp", "-p", str(srv.port), "-n", "50", "-m", "3000", *QUICK, *extra,
                         "--reply-timeout", "0.1", emu=True)
        rep = srv.stop()
    assert res["valid_received"] == 50 and res["dropped"] == 0
    assert rep["received"] == res["sent"] and rep["bytes"] == 3000 * res["sent"]


@pytest.mark.parametrize("method", ["copy", "zcopy", "batch"])
def test_pyxlio_methods_without_xlio(method: str) -> None:
    """No XLIO loaded: the same calls go through the kernel; sockets say not offloaded."""
    extra = ["--recv-method", method]
    with perf_server(*extra) as srv:
        res = run_client("pp", "-p", str(srv.port), "-n", "200", *QUICK, *extra)
        rep = srv.stop()
    assert res["provider"] is None and res["offloaded"] is False
    assert rep["offloaded"] is False
    assert res["valid_received"] + res["dropped"] == 200 and res["valid_received"] > 0
    assert rep["replies"] == res["sent"]


def test_xlio_only_features_fail_clearly_without_xlio() -> None:
    with perf_server() as srv:
        for args, fragment in (
            (["--recv-method", "copy", "--dummy-send", "1000"], "offloaded"),
        ):
            done = subprocess.run(perf_cmd("pp", "-p", str(srv.port), "-n", "20", *QUICK, "-q",
                                           *args),
                                  capture_output=True, text=True, timeout=TIMEOUT, env=_env())
            assert done.returncode == 1, done.stdout
            assert "pyxlio-perf: error:" in done.stderr and fragment in done.stderr
        srv.stop()


def test_dummy_sends_under_emulator() -> None:
    with perf_server("--recv-method", "zcopy", emu=True) as srv:
        res = run_client("ul", "-p", str(srv.port), "-n", "400", "--mps", "4000",
                         "--reply-every", "10", "--recv-method", "zcopy", "--dummy-send", "20000",
                         *QUICK, emu=True)
        rep = srv.stop()
    # About 5 dummy sends per message at these rates; none of them reaches the server.
    assert res["dummy_sends"] > res["sent"]
    assert rep["received"] == res["sent"]


def test_emu_option_reexecutes_under_the_emulator() -> None:
    with perf_server("--recv-method", "batch", emu=True) as srv:
        res = run_client("pp", "-p", str(srv.port), "-n", "50", "--recv-method", "zcopy",
                         "--emu", "--emu-strict", *QUICK)  # started without the emulator
        srv.stop()
    assert res["provider"] == "emulator" and res["offloaded"] is True
    assert res["valid_received"] > 0
