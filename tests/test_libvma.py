"""pyxlio under a real libvma (``PYXLIO_TEST_LIBVMA`` names its libvma.so).

Each test runs a fresh interpreter with ``LD_PRELOAD`` set to that library and checks what the
fact sheet's section 11 measured on libvma 9.8.84 on a host where nothing is offloaded: pyxlio
finds the library, reports it, and every call behaves as libvma does for sockets it serves
through the kernel.  Without the variable the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_python

pytestmark = pytest.mark.provider_independent

LIBVMA = os.environ.get("PYXLIO_TEST_LIBVMA")
needs_libvma = pytest.mark.skipif(
    not LIBVMA, reason="set PYXLIO_TEST_LIBVMA to the path of a real libvma.so to run these")


def _env() -> dict[str, str]:
    assert LIBVMA
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYXLIO_EMU_")}
    env["LD_PRELOAD"] = LIBVMA
    env.setdefault("VMA_TRACELEVEL", "1")          # its start-up warnings only
    return env


def _run(code: str) -> dict[str, object]:
    proc = run_python(code, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_libvma
def test_libvma_is_found_and_reported() -> None:
    out = _run(
        "import json, pyxlio, pyxlio._info as i\n"
        "api = pyxlio.get_api()\n"
        "before = api.started\n"
        "import socket\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()\n"
        "print(json.dumps({'provider': api.provider, 'family': api.family,\n"
        "  'layout': api.layout.name, 'native': api.native_mask, 'caps': api.cap_mask,\n"
        "  'size': api.size, 'library': api.library, 'version': api.version,\n"
        "  'before': before, 'after': api.started, 'info': i.collect()['family']}))\n")
    assert out["provider"] == "libvma" and out["family"] == "libvma" == out["info"]
    assert out["layout"] == "VMA"
    assert "libvma.so" in str(out["library"])
    native = int(out["native"])                                   # type: ignore[call-overload]
    assert native & 0b111111 == 0b111111                          # the base calls
    if str(out["version"]).startswith("9.8.84"):
        assert native == 0x377FFF and out["size"] == 168 and out["caps"] == 0x1FFF
    assert out["before"] is False and out["after"] is True


@needs_libvma
def test_libvma_kernel_served_socket_behaves_as_measured() -> None:
    """Loopback UDP, served by the kernel: copies (FORCE ignored), the callback refused once
    the socket is bound, no rings, dummy sends refused, rules with `vma`."""
    out = _run(r"""
import json, socket as std, pyxlio, pyxlio.socket
res = {}
rx = pyxlio.socket.socket(std.AF_INET, std.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = std.socket(std.AF_INET, std.SOCK_DGRAM)
for i in range(3):
    tx.sendto(b"vma%d" % i, rx.getsockname())
rx.settimeout(5)
try:
    rx.recvfrom_zcopy(force=True)
    res["force"] = "read"
except pyxlio.XlioError as exc:
    res["force"] = exc.errno
pkt = rx.recvfrom_zcopy()
res["first"] = [bytes(pkt).decode(), pkt.zcopy]
pkt.release()
batch = rx.recv_batch(8, timeout=5)
res["batch"] = [bytes(batch[i]).decode() for i in range(len(batch))]
batch.release()
try:
    pyxlio.socket_rings(rx)
    res["rings"] = "ok"
except pyxlio.XlioError as exc:
    res["rings"] = exc.errno
res["rings_list"] = pyxlio.socket_rings(rx)
try:
    rx.sendto(b"d", pyxlio.MSG_DUMMY, ("127.0.0.1", 9))
    res["dummy"] = "sent"
except OSError as exc:
    res["dummy"] = exc.errno
pyxlio.add_conf_rule("use os udp_receiver 127.0.0.1:9")
pyxlio.dump_fd_stats(rx)
pyxlio.thread_offload(True)
rx.close(); tx.close()
print(json.dumps(res))
""")
    # libvma forgets a bound socket the kernel serves: pyxlio refuses FORCE without reading
    assert out["force"] == 5                                            # EIO
    assert out["first"] == ["vma0", False]
    assert out["batch"] == ["vma1", "vma2"]
    assert out["rings_list"] == []
    assert out["dummy"] == 22                                           # EINVAL


@needs_libvma
def test_libvma_allocator_only_before_init() -> None:
    out = _run(
        "import json, pyxlio\n"
        "pyxlio.set_allocator('aligned')\n"
        "import socket\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()\n"
        "st = pyxlio.allocator_state()\n"
        "try:\n"
        "    pyxlio.set_allocator('aligned')\n"
        "    again = 'ok'\n"
        "except pyxlio.UnsupportedError:\n"
        "    again = 'unsupported'\n"
        "except pyxlio.XlioError as exc:\n"
        "    again = exc.errno\n"
        "print(json.dumps({'calls': st['alloc_calls'], 'again': again}))\n")
    # libvma 9.8.84 asks twice (RX and TX pools); the second registration comes after init
    assert int(out["calls"]) >= 1                                # type: ignore[call-overload]
    assert out["again"] == 22
