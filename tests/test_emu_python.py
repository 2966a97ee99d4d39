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

pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.skipif(emutest.gcc() is None and not os.path.exists(
        os.path.join(emutest.EMU_SRC, "libxlio_emu.so")),
        reason="the emulator is not built and gcc is missing to build it"),
]

emu = emutest.load_emu()


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
    # not duplicated when already first
    assert emu.environ(base={"LD_PRELOAD": lib})["LD_PRELOAD"] == lib


@pytest.mark.parametrize(
    "kw",
    [{"layout": "3.60"}, {"feed": "5000"}, {"feed": "0:64"}, {"feed": "5000:7"}, {"frag_size": 63}],
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


def test_cpython_runs_unchanged_under_emulator_strict(lib: str) -> None:
    env = emu.environ(strict=True, base=emutest.python_env())
    r = py(CPYTHON_WORKLOAD, env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "workload ok" in r.stdout
    assert "pyxlio-emu" not in r.stderr, r.stderr
