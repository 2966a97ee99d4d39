"""pyxlio.emu's Python side: library_path/environ/run/is_loaded, ``python -m pyxlio.emu``, and
CPython's own socket, selectors, asyncio and subprocess code running unchanged under the
emulator in strict mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu"))
import emutest

emu = emutest.load_emu()


pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.skipif(emutest.gcc() is None and not emutest.emulator_built(),
                       reason="the emulator is not built and gcc is missing to build it"),
]


@pytest.fixture(scope="module")
def lib() -> str:
    return emutest.ensure_built()


def py(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_library_path(lib: str) -> None:
    assert os.path.isabs(lib) and lib.endswith("/libxlio_emu.so") and os.path.isfile(lib)
    with open(lib, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert b"pyxlio-emu " in open(lib, "rb").read()  # the version marker


def test_library_path_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emu.os.path, "isfile", lambda p: False)
    with pytest.raises(FileNotFoundError, match="build_ext --inplace"):
        emu.library_path()


def test_environ(lib: str) -> None:
    env = emu.environ(strict=True, layout="3.61", feed="5000:64,5001:8", frag_size=128,
                      memory_limit="2MB", config_file="/x/libxlio.conf",
                      base={"LD_PRELOAD": "/other.so", "KEEP": "1"})
    assert env["LD_PRELOAD"] == f"{lib} /other.so"
    assert env["KEEP"] == "1"
    assert env["PYXLIO_EMU_STRICT"] == "1" and env["PYXLIO_EMU_LAYOUT"] == "3.61"
    assert env["PYXLIO_EMU_FEED"] == "5000:64,5001:8" and env["PYXLIO_EMU_FRAG_SIZE"] == "128"
    assert env["XLIO_MEMORY_LIMIT"] == "2MB" and env["XLIO_CONFIG_FILE"] == "/x/libxlio.conf"
    plain = emu.environ(base={})
    assert plain == {"LD_PRELOAD": lib}
    assert emu.environ(offload="no-loopback", layout="3.94", base={}) == {
        "LD_PRELOAD": lib, "PYXLIO_EMU_OFFLOAD": "no-loopback", "PYXLIO_EMU_LAYOUT": "3.94"}
    # not duplicated when already first
    assert emu.environ(base={"LD_PRELOAD": lib})["LD_PRELOAD"] == lib


@pytest.mark.parametrize(
    "kw",
    [{"layout": "3.70"}, {"offload": "loopback"}, {"feed": "5000"}, {"feed": "0:64"},
     {"feed": "5000:7"}, {"frag_size": 63}],
)
def test_environ_rejects(lib: str, kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        emu.environ(**kw)


def test_is_loaded_and_run(lib: str) -> None:
    code = "import pyxlio.emu as e; print(e.is_loaded())"
    base = emutest.python_env()
    assert py(code, base).stdout.strip() == "False"
    r = emu.run([sys.executable, "-c", code], base=base, capture_output=True, text=True,
                strict=True)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_cli_print_path_and_usage(lib: str) -> None:
    env = emutest.python_env()
    r = subprocess.run([sys.executable, "-m", "pyxlio.emu", "--print-path"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == lib
    r = subprocess.run([sys.executable, "-m", "pyxlio.emu"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "no command given" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pyxlio.emu", "--layout", "9", "--", "true"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pyxlio.emu", "--", "/nonexistent/prog"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 127 and "cannot run" in r.stderr


def test_cli_offload_option(lib: str) -> None:
    env = emutest.python_env()
    show = 'echo "$PYXLIO_EMU_OFFLOAD|$PYXLIO_EMU_LAYOUT"'
    for mode in ("all", "none", "no-loopback"):
        r = subprocess.run([sys.executable, "-m", "pyxlio.emu", f"--offload={mode}", "--layout",
                            "3.60", "--", "sh", "-c", show], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stdout.strip() == f"{mode}|3.60", r.stderr
    r = subprocess.run([sys.executable, "-m", "pyxlio.emu", "--offload=loopback", "--", "true"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_cli_exec_passes_status_signal_and_env(lib: str) -> None:
    env = emutest.python_env()
    env["LD_PRELOAD"] = "libdl.so.2"
    cmd = [sys.executable, "-m", "pyxlio.emu", "--strict", "--feed", "5000:64", "--"]
    show = 'echo "$LD_PRELOAD|$PYXLIO_EMU_STRICT|$PYXLIO_EMU_FEED"; exit 7'
    r = subprocess.run([*cmd, "sh", "-c", show], env=env, capture_output=True, text=True)
    assert r.returncode == 7
    assert r.stdout.strip() == f"{lib} libdl.so.2|1|5000:64"
    r = subprocess.run([*cmd, "sh", "-c", "kill -TERM $$"], env=env, capture_output=True, text=True)
    assert r.returncode == -signal.SIGTERM


CPYTHON_WORKLOAD = """
import asyncio, selectors, socket, subprocess, sys, threading

# UDP with timeouts (CPython polls), TCP, socketpair, selectors (epoll), asyncio, subprocess
u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u1.bind(("127.0.0.1", 0)); u1.settimeout(2)
u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(50):
    u2.sendto(b"x%d" % i, u1.getsockname())
    assert u1.recvfrom(100)[0] == b"x%d" % i
u1.settimeout(0.05)
try:
    u1.recv(10)
    raise SystemExit("expected a timeout")
except TimeoutError:
    pass
srv = socket.create_server(("127.0.0.1", 0))
def echo():
    c, _ = srv.accept()
    with c:
        while data := c.recv(65536):
            c.sendall(data)
t = threading.Thread(target=echo); t.start()
cl = socket.create_connection(srv.getsockname(), timeout=5)
payload = bytes(range(256)) * 400
cl.sendall(payload); got = b""
while len(got) < len(payload):
    got += cl.recv(65536)
assert got == payload
cl.close(); t.join()
sel = selectors.DefaultSelector()
sel.register(u1, selectors.EVENT_READ)
assert sel.select(0.05) == []
u2.sendto(b"sel", u1.getsockname())
assert len(sel.select(2)) == 1 and u1.recv(10) == b"sel"
sel.close()
async def main():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not fut.done(): fut.set_result(data)
    tr, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
    u2.sendto(b"aio", tr.get_extra_info("sockname"))
    assert await asyncio.wait_for(fut, 5) == b"aio"
    tr.close()
    r, w = await asyncio.open_connection(*srv2.getsockname())
    w.write(b"ping"); await w.drain()
    assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
    w.close(); await w.wait_closed()
async def handle(r, w):
    w.write(await r.readexactly(4)); await w.drain(); w.close()
async def run():
    global srv2
    srv2s = await asyncio.start_server(handle, "127.0.0.1", 0)
    srv2 = srv2s.sockets[0]
    await main()
    srv2s.close(); await srv2s.wait_closed()
asyncio.run(run())
out = subprocess.run([sys.executable, "-c", "print(42)"], capture_output=True, text=True,
                     check=True)
assert out.stdout.strip() == "42"
import pyxlio.emu; assert pyxlio.emu.is_loaded()
print("workload ok")
"""


@pytest.mark.parametrize("offload", ["all", "none"])
def test_cpython_runs_unchanged_under_emulator_strict(lib: str, offload: str) -> None:
    env = emu.environ(strict=True, base=emutest.python_env(), offload=offload)
    r = py(CPYTHON_WORKLOAD, env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "workload ok" in r.stdout
    assert "pyxlio-emu" not in r.stderr, r.stderr


# The same callback program (C filter, then DROP / RECV / HOLD, then a zero-length datagram)
# under every provider the emulator can stand for, and without XLIO: the same results.  Where
# XLIO does not run the callback (sockets it serves through the kernel, layouts without a
# callback or without a free call) pyxlio runs it.
CALLBACK_PROGRAM = """
import json, socket
import pyxlio
from pyxlio import Verdict
from pyxlio.socket import socket as xs
VERDICT = {ord("d"): Verdict.DROP, ord("r"): Verdict.RECV, ord("h"): Verdict.HOLD}
rx = xs(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
addr = rx.getsockname()
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
seen, delivered, errors = [], [], []
rx.set_recv_filter(0, b"k")
rx.set_recv_callback(lambda v, i: seen.append((bytes(v), i.path)) or VERDICT[v[1]])
for p in (b"kd1", b"xr1", b"kr1", b"kh1", b"xh2", b"kr2", b"kd2"):
    tx.sendto(p, addr)
def drain():
    while True:
        try:
            b = rx.recv_batch(16, timeout=0.15)
        except Exception as e:
            errors.append(type(e).__name__)
            continue
        with b:
            if not b:
                return
            delivered.extend(bytes(v).decode() for v in b.views())
drain()
held = [bytes(p).decode() for p in rx.held]
for p in rx.held:
    p.release()
rx.held.clear()
rx.clear_recv_filter()
rx.set_recv_callback(None)
tx.sendto(b"", addr)                # served by the kernel: the stdlib would block here
tx.sendto(b"after", addr)
drain()
print(json.dumps({"seen": [s[0].decode() for s in seen], "paths": sorted({s[1] for s in seen}),
                  "delivered": delivered, "held": held, "errors": errors,
                  "filtered": rx.filtered, "offloaded": rx.offloaded,
                  "provider": pyxlio.get_api().provider if pyxlio.get_api() else None}))
rx.close()
"""


@pytest.mark.parametrize(("emu_opts", "offloaded", "path"), [
    (None, False, "pyxlio"),                                  # no XLIO
    ({}, True, "xlio"),                                       # emulator, loopback offloaded
    ({"offload": "none"}, False, "pyxlio"),                   # as a real XLIO host
    ({"offload": "no-loopback"}, False, "pyxlio"),
    ({"layout": "3.60"}, None, "pyxlio"),                     # callbacks, no free call
    ({"layout": "3.60", "offload": "none"}, None, "pyxlio"),
    ({"layout": "3.61"}, None, "pyxlio"),                     # no callback member
    ({"layout": "3.94"}, None, "pyxlio"),
], ids=["kernel", "emu", "emu-none", "emu-no-loopback", "3.60", "3.60-none", "3.61", "3.94"])
def test_callback_program_same_results_everywhere(lib: str, emu_opts: dict[str, str] | None,
                                                  offloaded: bool | None, path: str) -> None:
    import json

    base = emutest.python_env()
    env = base if emu_opts is None else emu.environ(strict=True, base=base, **emu_opts)
    r = py(CALLBACK_PROGRAM, env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["provider"] == (None if emu_opts is None else "emulator")
    assert out["seen"] == ["kd1", "kr1", "kh1", "kr2", "kd2"]
    assert out["delivered"] == ["kr1", "kr2", "", "after"]
    assert out["held"] == ["kh1"] and out["errors"] == [] and out["filtered"] == 2
    assert out["offloaded"] == offloaded and out["paths"] == [path]


DUMMY_PROGRAM = """
import socket
from pyxlio.socket import socket as xs
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.bind(("127.0.0.1", 0))
r.settimeout(0.2)
t = xs(socket.AF_INET, socket.SOCK_DGRAM)
t.connect(r.getsockname())
try:
    print("sent", t.send_dummy(b"warm"))
except Exception as e:
    print("refused", type(e).__name__)
try:
    print("arrived", r.recv(10))
except OSError:
    print("nothing arrived")
"""


@pytest.mark.parametrize(("emu_opts", "want"), [
    ({}, "sent 4"),                                       # legacy layout, offloaded
    ({"layout": "3.94"}, "sent 4"),                       # 3.94x still has dummy sends
    ({"layout": "3.60"}, "refused UnsupportedError"),     # removed in 3.60: would really send
    ({"layout": "3.61"}, "refused UnsupportedError"),
    ({"offload": "none"}, "refused XlioError"),           # not offloaded: -1/EINVAL
], ids=["legacy", "3.94", "3.60", "3.61", "none"])
def test_dummy_sends_per_layout_and_mode(lib: str, emu_opts: dict[str, str], want: str) -> None:
    r = py(DUMMY_PROGRAM, emu.environ(strict=True, base=emutest.python_env(), **emu_opts))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [want, "nothing arrived"], r.stdout + r.stderr
