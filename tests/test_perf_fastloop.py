"""pyxlio.perf's compiled loop (pyxlio.perf._loops) against its Python loop (--python-loop).

Both loops run the same rules, so against the same peer they must give the same counts and the
same sequence accounting: the client against tests/sockperf_peer.py's server (which can skip or
duplicate replies), the server against its client (which can leave gaps in its sequence numbers
or send a message twice). UDP and TCP, -n and -t, bursts, --dont-reply, Ctrl-C. No timing
asserts: counts only. Loopback only; every process bounded in time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from test_perf_interop import (
    PEER,
    QUICK,
    TIMEOUT,
    _env,
    peer_client,
    peer_server,
    perf,
    perf_server,
)

pytestmark = pytest.mark.provider_independent

try:
    import pyxlio.perf._loops  # noqa: F401
except ImportError:  # pragma: no cover - the extension is built with the package
    pytest.skip("pyxlio.perf._loops is not built", allow_module_level=True)

LOOPS = [pytest.param([], id="compiled"), pytest.param(["--python-loop"], id="python")]
COUNTS = ("sent", "replies", "valid_sent", "valid_received", "dropped", "duplicated",
          "out_of_order", "end", "measurement")


def client_json(*args: str) -> dict[str, Any]:
    return json.loads(perf(*args).stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def both_loops(*args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return client_json(*args), client_json(*args, "--python-loop")


def counts(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: rep[k] for k in COUNTS}


def test_the_loop_in_use_is_announced() -> None:
    with peer_server() as srv:
        fast = perf("pp", "-p", str(srv.port), "-n", "50", *QUICK, json_out=False)
        slow = perf("pp", "-p", str(srv.port), "-n", "50", *QUICK, "--python-loop",
                    json_out=False)
        # zcopy is not a plain recv: the Python loop runs it whatever the options.
        zc = perf("pp", "-p", str(srv.port), "-n", "50", *QUICK, "--recv-method", "zcopy",
                  json_out=False)
        srv.result()
    assert "compiled loop" in fast.stdout
    assert "Python loop" in slow.stdout and "compiled loop" not in slow.stdout
    assert "Python loop" in zc.stdout


@pytest.mark.parametrize("busy", [False, True], ids=["blocking", "busy"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_client_number_run_same_counts(tcp: bool, busy: bool) -> None:
    extra = (["--tcp"] if tcp else []) + (["--busy-poll"] if busy else [])
    with peer_server(*(["--tcp"] if tcp else [])) as srv:
        fast, slow = both_loops("pp", "-p", str(srv.port), "-n", "300", "-b", "4", *QUICK,
                                *extra)
        peer = srv.result()
    assert counts(fast) == counts(slow)
    # 20 + 300 + 10 in-order replies in bursts of 4: the last burst ends at 332.
    assert fast["sent"] == fast["replies"] == 332 and fast["valid_received"] == 300
    assert fast["end"] == "packet number" and fast["dropped"] == fast["duplicated"] == 0
    assert peer["received"] == peer["replies"] == 2 * 332


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_client_time_run_accounting(tcp: bool) -> None:
    with peer_server(*(["--tcp"] if tcp else [])) as srv:
        fast, slow = both_loops("pp", "-p", str(srv.port), "-t", "0.6", "-b", "2",
                                "--warmup", "0.05", "--cooldown", "0.02",
                                *(["--tcp"] if tcp else []))
        peer = srv.result()
    for rep in (fast, slow):
        assert rep["end"] == "timer" and rep["measurement"] == "time"
        assert rep["sent"] == rep["replies"] > 0 and rep["sent"] % 2 == 0
        assert rep["dropped"] == rep["duplicated"] == rep["out_of_order"] == 0
        assert 0 < rep["valid_received"] == rep["latency"]["count"] <= rep["sent"]
    assert set(fast) == set(slow)
    assert set(fast["latency"]) == set(slow["latency"])
    assert peer["received"] == fast["sent"] + slow["sent"]


def test_client_injected_drops_and_duplicates_same_accounting() -> None:
    # The peer skips the reply to every 7th request and answers every 5th twice.
    args = ("-n", "200", "--warmup-num", "0", "--cooldown-num", "0", "--reply-timeout", "0.05")
    with peer_server("--skip-reply-every", "7", "--dup-reply-every", "5") as srv:
        fast = client_json("pp", "-p", str(srv.port), *args)
        first = srv.result()
    with peer_server("--skip-reply-every", "7", "--dup-reply-every", "5") as srv:
        slow = client_json("pp", "-p", str(srv.port), *args, "--python-loop")
        second = srv.result()
    assert counts(fast) == counts(slow)
    for key in ("received", "replies", "skipped", "duplicated"):
        assert first[key] == second[key], key
    # sent = 200 + skipped (every 7th of them): 233, 33 skipped; the measured window is
    # sequence numbers 1..200, whose 28 multiples of 7 were dropped.
    assert fast["sent"] == 233 and first["skipped"] == 33
    assert fast["dropped"] == 200 // 7 and fast["valid_received"] == 200 - 200 // 7
    # Every 5th request answered twice, except those skipped (multiples of 35).
    assert fast["duplicated"] == first["duplicated"] == 233 // 5 - 233 // 35


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_under_load_same_rules(tcp: bool) -> None:
    with peer_server(*(["--tcp"] if tcp else [])) as srv:
        fast, slow = both_loops("ul", "-p", str(srv.port), "-n", "600", "--mps", "3000",
                                "--reply-every", "10", *(["--tcp"] if tcp else []))
        srv.result()
    for rep in (fast, slow):
        assert rep["sent"] == 600 and rep["replies"] == 60 and rep["end"] == "packet number"
        assert rep["dropped"] == rep["duplicated"] == 0 and rep["cycle_waits"] > 0


def test_client_large_tcp_messages() -> None:
    with peer_server("--tcp", "-m", "100000") as srv:
        fast, slow = both_loops("pp", "--tcp", "-p", str(srv.port), "-m", "100000", "-n",
                                "20", *QUICK, "--data-integrity")
        srv.result()
    assert counts(fast) == counts(slow)
    assert fast["replies"] == fast["sent"] == 50


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_server_sequence_accounting(tcp: bool, loop: list[str]) -> None:
    # The peer leaves a gap after every 10th message and sends every 7th twice.
    t = ["--tcp"] if tcp else []
    with perf_server("-q", *t, *loop) as srv:
        out = peer_client(*t, "-p", str(srv.port), "-n", "200", "-b", "4", "--gap-every", "10",
                          "--dup-every", "7")
        rep = srv.result()
    assert out["integrity_ok"] and out["sent"] == 200
    assert out["replies"] == 200 + out["dups"]
    assert rep["stopped_by"] == "signal" and rep["peers"] == 1
    assert rep["received"] == rep["replies"] == 200 + out["dups"]
    assert rep["dropped"] == out["gaps"] > 0
    assert rep["duplicated"] == out["dups"] > 0
    assert rep["out_of_order"] == 0 and rep["bytes"] == rep["received"] * 14


@pytest.mark.parametrize("loop", LOOPS)
def test_server_dont_reply_and_count_limit(loop: list[str]) -> None:
    with perf_server("-q", "--dont-reply", "-n", "40", *loop) as srv:
        # busy-poll: the client's wait for a reply ends at --reply-timeout (a blocking one
        # looks at its clock once per 100 ms receive tick).
        done = perf("pp", "-p", str(srv.port), "-t", "2", "--reply-timeout", "0.01",
                    "--busy-poll", *loop)
        rep = srv.result()
    cli = json.loads(done.stdout.strip().splitlines()[-1])
    assert rep["stopped_by"] == "count" and rep["received"] == 40 and rep["replies"] == 0
    assert cli["replies"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_server_time_limit_and_large_tcp(loop: list[str]) -> None:
    with perf_server("-q", "--tcp", "-m", "100000", "-t", "20", *loop) as srv:
        out = peer_client("--tcp", "-p", str(srv.port), "-n", "5", "-m", "100000")
        rep = srv.result()
    assert out["integrity_ok"] and out["replies"] == 5
    assert rep["received"] == 5 and rep["bytes"] == 500000 and rep["closed_conns"] == 0
    with perf_server("-q", "-t", "0.3", *loop) as srv:
        srv.proc.wait(timeout=TIMEOUT)
        rep = srv.result()
    assert rep["stopped_by"] == "time" and rep["received"] == 0


def _sigint_default() -> None:
    # A suite started as a background job hands its children SIGINT ignored, and Python then
    # never installs its Ctrl-C handler: give the child the disposition a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(cmd: list[str]) -> tuple[int, dict[str, Any], float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), preexec_fn=_sigint_default)
    time.sleep(1.0)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=TIMEOUT)
    waited = time.monotonic() - t
    return proc.returncode, json.loads(out.strip().splitlines()[-1]), waited


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("busy", [False, True], ids=["blocking", "busy"])
def test_ctrl_c_client(busy: bool, loop: list[str]) -> None:
    with peer_server() as srv:
        status, rep, _waited = _interrupt(
            [sys.executable, "-m", "pyxlio.perf", "pp", "-p", str(srv.port), "-t", "30",
             "--json", "-q", "--mps", "2000", *(["--busy-poll"] if busy else []), *loop])
        srv.result()
    assert status == 130 and rep["end"] == "user"
    # An interrupt may fall between numbering a request and sending it (Python loop).
    assert rep["sent"] - 1 <= rep["replies"] <= rep["sent"] and rep["replies"] > 0


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("busy", [False, True], ids=["blocking", "busy"])
def test_ctrl_c_server(busy: bool, loop: list[str]) -> None:
    cmd = [sys.executable, "-m", "pyxlio.perf", "server", "-p", "0", "--json", "-q",
           *(["--busy-poll"] if busy else []), *loop]
    status, rep, _waited = _interrupt(cmd)
    assert status == 0 and rep["stopped_by"] == "signal"


def test_peer_fault_options_exist() -> None:
    # The options these tests rely on (a peer without them would make every count pass by
    # accident of defaults).
    help_text = subprocess.run([sys.executable, PEER, "--help"], capture_output=True,
                               text=True, timeout=TIMEOUT).stdout
    for opt in ("--skip-reply-every", "--dup-reply-every", "--gap-every", "--dup-every"):
        assert opt in help_text


# ---- the compiled client in-process, against an echo thread on a socket pair -------------


def _echo_pair(corrupt: int = 0, dup_every: int = 0) -> tuple[Any, Any, Any]:
    """A connected datagram pair: an echo thread answers sockperf requests on one end."""
    import socket
    import threading

    from pyxlio.perf.wire import CLIENT, HEADER

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    stop = threading.Event()

    def echo() -> None:
        b.settimeout(0.05)
        while not stop.is_set():
            try:
                data = bytearray(b.recv(4096))
            except TimeoutError:
                continue
            seq, flags, length = HEADER.unpack_from(data)
            HEADER.pack_into(data, 0, seq, flags & ~CLIENT, length)
            if seq == corrupt:
                data[-1] ^= 0xFF
            b.send(data)
            if dup_every and seq % dup_every == 0:
                b.send(data)

    t = threading.Thread(target=echo, daemon=True)
    t.start()

    def close() -> None:
        stop.set()
        t.join(timeout=TIMEOUT)
        a.close()
        b.close()

    return a, close, stop


def _client(sock: Any, tx: Any, rx: Any, integrity: bool = False) -> Any:
    from pyxlio.perf import _loops

    sock.setblocking(False)
    return _loops.Client(sock.fileno(), stream=False, busy=True, blocking=False, pingpong=True,
                         reply_every=1, burst=1, size=64, msg=bytearray(range(64)), tx=tx,
                         rx=rx, reply_timeout=5.0, integrity=integrity, bufsize=2048,
                         max_message=65507)


def test_compiled_client_grows_its_arrays_and_counts_duplicates() -> None:
    from pyxlio.perf import _loops
    from pyxlio.perf.stats import grow, zeros

    a, close, _stop = _echo_pair(dup_every=10)
    tx, rx = zeros("q", 4), zeros("q", 4)
    try:
        c = _client(a, tx, rx)
        grew = 0
        code = -1
        for _ in range(1000):
            code = c.run(time.perf_counter_ns() + 50_000_000, 0, -1, 50, 0)
            if code == _loops.GROW:
                grow(tx, c.need + 1)
                grow(rx, c.need + 1)
                grew += 1
                continue
            if code != _loops.SLICE:
                break
        c.drain(time.perf_counter_ns() + 300_000_000)
    finally:
        close()
    assert code == _loops.NUMBER and grew >= 1 and len(tx) > 50
    assert (c.seq, c.received, c.valid, c.ignored) == (50, 50, 50, 0)
    assert c.dup == 5  # the second replies to 10, 20, 30, 40, 50
    assert all(0 < tx[i] <= rx[i] for i in range(1, 51)) and tx[0] == rx[0] == 0


def test_compiled_client_integrity_failure() -> None:
    from pyxlio.perf import _loops
    from pyxlio.perf.stats import zeros

    a, close, _stop = _echo_pair(corrupt=7)
    tx, rx = zeros("q", 64), zeros("q", 64)
    try:
        c = _client(a, tx, rx, integrity=True)
        code = c.run(time.perf_counter_ns() + 10_000_000_000, 0, -1, 50, 0)
    finally:
        close()
    assert code == _loops.INTEGRITY and c.seq == 7 and c.integrity_bad == 1


@pytest.mark.parametrize(("argv", "applies"), [
    (["pp", "-i", "127.0.0.1"], True),
    (["ul", "-i", "127.0.0.1", "--tcp", "--recv-method", "copy"], True),
    (["pp", "-i", "127.0.0.1", "--python-loop"], False),
    (["pp", "-i", "127.0.0.1", "--recv-method", "batch"], False),
    (["pp", "-i", "127.0.0.1", "-r", "10", "-m", "100"], False),
    (["tp", "-i", "127.0.0.1"], False),
])
def test_where_the_compiled_client_loop_applies(argv: list[str], applies: bool) -> None:
    from pyxlio.perf.cli import parse_args
    from pyxlio.perf.client import fast_loop_applies

    assert fast_loop_applies(parse_args(argv)) is applies
