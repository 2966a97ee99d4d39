"""pyxlio.ultra under each emulated release, each case in its own process in strict mode.

3.61 (the 23-member Ultra API): both ends Ultra (listen, accept, getsockname/getpeername,
the peer's close), init() with a memory callback and an allocator; 3.51 (the 16-member socket
API): an Ultra client against a plain socket server thread, and the members it lacks.  A leak
or a contract violation the emulator sees makes the process exit with status 86.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from conftest import run_python

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu"))
import emutest

emu = emutest.load_emu()


pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.skipif(not emutest.emulator_built(), reason="the emulator is not built"),
]

# Shared by the cases: bounded waits (every wait is a fixed number of 20 ms polls).
PRELUDE = """
import errno, json, sys
from pyxlio import ultra

def wait(group, cond, rounds=250):
    for _ in range(rounds):
        if cond():
            return
        group.poll(timeout=0.02)
    raise SystemExit(f"timed out; stats {group.stats()}")
"""


def run_case(body: str, layout: str, extra_env: dict[str, str] | None = None) -> dict:
    env = emu.environ(strict=True, layout=layout)
    env.update(extra_env or {})
    proc = run_python(PRELUDE + textwrap.dedent(body), env=env, timeout=60)
    assert proc.returncode == 0, (f"rc={proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1])


ECHO_361 = """
log = []
served = bytearray()
got = bytearray()

def on_accept(new, listener):
    log.append(("accept", new.state, listener is lsock))
    new.userdata = "server"
    new.on_receive = lambda s, b: (served.extend(b), s.send(b))

def on_event(sock, ev, val):
    log.append((sock.userdata or "client", str(ev), val))

with ultra.PollGroup(on_event=on_event, on_accept=on_accept) as group:
    assert group.kind == ultra.UltraKind.ULTRA
    lsock = group.socket()
    lsock.userdata = "listener"
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    assert lsock.state == "listening"
    host, port = lsock.getsockname()
    c = group.socket(on_receive=lambda s, b: got.extend(b))
    c.connect(("127.0.0.1", port))
    wait(group, lambda: c.state == "established" and len(group.sockets) == 3)
    server = [s for s in group.sockets if s.userdata == "server"][0]
    names = [list(c.getsockname()), list(c.getpeername()), list(server.getpeername()),
             list(server.getsockname())]
    want = b"".join(b"<%06d>" % i for i in range(2000))
    for i in range(2000):
        c.send(b"<%06d>" % i, flush=(i % 10 == 9))
    c.flush()
    wait(group, lambda: len(got) >= len(want))
    ok = bytes(got) == want and bytes(served) == want
    # zero-copy from the server side, awaited through its completion
    region = ultra.MemoryRegion(server, bytearray(b"Z" * 100000))
    comp = server.send_zc(region, token="big")
    wait(group, lambda: comp.done() and len(got) >= len(want) + 100000)
    region.close()
    # the client closes: the server sees CLOSED (the peer's close), then destroys its side
    c.close()
    wait(group, lambda: server.state == "closed")
    server.close()
    wait(group, lambda: c.state == "terminated" and server.state == "terminated")
    stats = group.stats()
print(json.dumps({"ok": ok, "log": log, "names": names, "port": port,
                  "completed": comp.completed, "zc": bytes(got[len(want):]) == b"Z" * 100000,
                  "stats": stats, "closed": lsock.state}))
"""


def test_361_echo_both_ends_ultra() -> None:
    out = run_case(ECHO_361, "3.61")
    assert out["ok"] and out["zc"] and out["completed"]
    log = [tuple(x) for x in out["log"]]
    assert log[0] == ("accept", "established", True) or ("accept", "established", True) in log
    assert ("client", "ESTABLISHED", 0) in log
    # the server's events: CLOSED (peer close) before its TERMINATED; no event after it
    server_events = [e[1] for e in log if e[0] == "server"]
    assert server_events == ["CLOSED", "TERMINATED"]
    client_events = [e[1] for e in log if e[0] == "client"]
    assert client_events[0] == "ESTABLISHED" and client_events[-1] == "TERMINATED"
    c_name, c_peer, s_peer, s_name = out["names"]
    assert c_peer == ["127.0.0.1", out["port"]] and s_name == ["127.0.0.1", out["port"]]
    assert c_name == s_peer
    st = out["stats"]
    assert st["buffers"] == 0 and st["inflight"] == 0 and st["unknown"] == 0
    assert st["stray"] == 0 and st["lost_rx"] == 0
    assert out["closed"] == "terminated"          # the group's close ended the listener


SOCKET_API_351 = """
import socket, threading
import pyxlio
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
received = bytearray()
def serve():
    conn, _ = srv.accept()
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            received.extend(data)
            conn.sendall(data)
t = threading.Thread(target=serve, daemon=True)
t.start()
got = bytearray()
errors = []
with ultra.PollGroup(on_receive=lambda s, b: got.extend(b)) as group:
    assert ultra.kind() == ultra.UltraKind.SOCKET_API
    sock = group.socket()
    for call in (sock.listen, sock.getsockname, sock.getpeername):
        try:
            call()
        except pyxlio.UnsupportedError as e:
            errors.append(str(e))
    sock.connect(srv.getsockname())
    wait(group, lambda: sock.state == "established")
    region = ultra.MemoryRegion(sock, b"0123456789" * 1000)
    comps = [sock.send_zc(region, i * 1000, 1000, token=i) for i in range(10)]
    wait(group, lambda: all(c.done() for c in comps) and len(got) >= 10000)
    region.close()
    sock.close()
    wait(group, lambda: sock.state == "terminated")
    stats = group.stats()
t.join(5)
print(json.dumps({"echo": bytes(got) == b"0123456789" * 1000, "errors": errors,
                  "tokens": [c.token for c in comps if c.completed], "stats": stats}))
"""


@pytest.mark.parametrize("layout", ["legacy", "3.94"])
def test_351_socket_api_client_against_a_plain_server(layout: str) -> None:
    out = run_case(SOCKET_API_351, layout)
    assert out["echo"] and out["tokens"] == list(range(10))
    assert len(out["errors"]) == 3
    for member, text in zip(("xlio_socket_listen", "xlio_socket_getsockname",
                             "xlio_socket_getpeername"), out["errors"]):
        assert member in text and "3.60" in text
    assert out["stats"]["buffers"] == 0 and out["stats"]["unknown"] == 0


GROUP_CLOSE_361 = """
# close() with everything in flight: accepted sockets, kept buffers, sends from a region.
kept = []
with ultra.PollGroup(on_receive=lambda s, b: kept.append(b),
                     on_accept=lambda n, l: None) as group:
    lsock = group.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    c = group.socket()
    c.connect(lsock.getsockname())
    wait(group, lambda: c.state == "established" and len(group.sockets) == 3)
    for i in range(20):
        c.send(b"data%02d" % i)
    wait(group, lambda: sum(len(b) for b in kept) >= 120)
    region = ultra.MemoryRegion(c, bytearray(4096))
    comp = c.send_zc(region, token=1)
    held = len(kept)
    before = group.stats()
    try:
        region.close()
        refused = False
    except BufferError:
        refused = True
socks = [lsock, c]
print(json.dumps({"held": held, "refused": refused, "released": all(b.released for b in kept),
                  "states": [s.state for s in socks], "comp_done": comp.done(),
                  "inflight": region.inflight, "before": before["buffers"]}))
region.close()
"""


def test_361_group_close_returns_everything() -> None:
    out = run_case(GROUP_CLOSE_361, "3.61")
    assert out["held"] > 0 and out["before"] == out["held"]
    assert out["released"] and out["states"] == ["terminated", "terminated"]
    assert out["comp_done"] and out["inflight"] == 0
    assert out["refused"] in (True, False)        # in flight or already complete


INIT_361 = """
seen = []
ultra.init(memory_callback=lambda addr, length, huge: seen.append((addr, length, huge)),
           allocator="aligned")
import pyxlio
state = pyxlio.allocator_state()
try:
    ultra.init(memory_callback=print)
    again = "no error"
except RuntimeError as e:
    again = str(e)
with ultra.PollGroup() as group:
    pass
print(json.dumps({"seen": len(seen), "len": seen[0][1] if seen else 0,
                  "kind": state["kind"], "calls": state["alloc_calls"], "again": again,
                  "errors": len(ultra.callback_errors())}))
"""


def test_361_init_with_memory_callback_and_allocator() -> None:
    out = run_case(INIT_361, "3.61")
    assert out["seen"] >= 1 and out["len"] > 0
    assert out["kind"] == "aligned" and out["calls"] >= 1
    assert "already ran" in out["again"] and out["errors"] == 0


INIT_AFTER_START = """
import socket                                   # starts XLIO (an epoll at import)
socket.socket().close()
try:
    ultra.init(allocator="aligned")
    result = "accepted"
except OSError as e:
    result = [e.errno, str(e)]
import pyxlio
print(json.dumps({"result": result, "registered": pyxlio.allocator_state()["registered"]}))
"""


@pytest.mark.parametrize("layout", ["3.61", "legacy"])
def test_allocator_after_start_is_refused(layout: str) -> None:
    out = run_case(INIT_AFTER_START, layout)
    assert out["result"][0] == 17 and "before" in out["result"][1]      # EEXIST
    assert out["registered"] is False


RAISING_MEMORY_CB = """
def cb(addr, length, huge):
    raise ValueError("from the memory callback")
ultra.init(memory_callback=cb)
with ultra.PollGroup():
    pass
errs = ultra.callback_errors()
print(json.dumps({"errors": [str(e) for e in errs]}))
"""


def test_memory_callback_errors_are_reported_not_lost() -> None:
    out = run_case(RAISING_MEMORY_CB, "3.61")
    assert out["errors"] == ["from the memory callback"]


COLLECTED_GROUP = """
import gc, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as w:
    group = ultra.PollGroup(on_accept=lambda n, l: None, on_receive=lambda s, b: None)
    lsock = group.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    c = group.socket()
    c.connect(lsock.getsockname())
    wait(group, lambda: c.state == "established" and len(group.sockets) == 3)
    c.send(b"pending")
    del group, lsock, c
    gc.collect()
print(json.dumps({"warnings": [str(x.message) for x in w]}))
"""


def test_a_collected_group_tears_down_cleanly() -> None:
    # strict mode: the emulator would report a leak (a buffer never returned, a socket never
    # terminated, a completion never delivered)
    out = run_case(COLLECTED_GROUP, "3.61")
    assert any("collected without close()" in m for m in out["warnings"])


@pytest.mark.parametrize("layout", ["3.61", "3.60", "3.94"])
def test_the_in_process_suite_under_another_layout(layout: str) -> None:
    # tests/test_ultra.py runs in the emu pass under the default (legacy) layout; here under
    # the other layouts' Ultra APIs, in strict mode
    import subprocess

    env = emu.environ(strict=True, layout=layout)
    for key in ("PYXLIO_TEST_RESULTS", "PYXLIO_TEST_PROVIDER"):
        env.pop(key, None)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--provider=emu", os.path.join(here, "test_ultra.py")],
                          env=env, capture_output=True, text=True, timeout=240,
                          cwd=os.path.dirname(here))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
