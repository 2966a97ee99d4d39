"""Detection of XLIO and the choice of layout, for every layout and every malformed answer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

import pyxlio
from conftest import run_python
from pyxlio import Capability, Layout

HERE = Path(__file__).parent


def test_provider_answers_as_the_pass_says(provider: str) -> None:
    api = pyxlio.get_api()
    assert pyxlio.available() is (api is not None)
    if provider == "kernel":
        assert api is None
        return
    assert api is not None
    if provider == "emu-vma":
        _check_vma_api(api)
        return
    if provider == "libxlio":
        _check_libxlio_api(api)
        return
    assert api.layout is Layout.LEGACY
    if provider == "emu":
        assert api.cap_mask == 0x3FFF
        assert api.library is not None and api.library.endswith("libxlio_emu.so")
        assert api.emulator_version
    assert api.size == 248
    assert api.has(Capability.RECVFROM_ZCOPY | Capability.RECVFROM_ZCOPY_FREE_PACKETS)
    assert api.capabilities & Capability.IOCTL
    assert "layout=LEGACY" in repr(api) and "size=248" in repr(api)
    assert str(api.layout) == "legacy (libxlio 2.0-3.51)"
    assert api.can_return_held is True and api.dummy_send is True
    if provider in ("emu", "emu-os"):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()     # starts it, if not yet
        assert api.started is True


def _check_vma_api(api: pyxlio.Api) -> None:
    """libvma 9.8.84 as the emulator answers it (fact sheet section 11)."""
    assert api.layout is Layout.VMA and api.family == "libvma"
    assert api.native_mask == 0x377FFF                    # vma_extra_supported_mask
    assert api.cap_mask == 0x1FFF                         # mapped to pyxlio's bits: no bit 13
    assert api.size == 168
    assert api.library is not None and api.library.endswith("libxlio_emu.so")
    assert api.emulator_version and api.provider == "emulator"
    assert api.has(Capability.RECVFROM_ZCOPY | Capability.RECVFROM_ZCOPY_FREE_PACKETS |
                   Capability.IOCTL | Capability.REGISTER_RECV_CALLBACK)
    assert not api.has(Capability.XLIO_SOCKET)
    assert "layout=VMA" in repr(api) and "vma_extra_supported_mask=0x377fff" in repr(api)
    assert str(api.layout) == "vma (libvma 9.x)"
    assert api.can_return_held is True and api.dummy_send is True
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    assert api.started is True


@pytest.mark.xlio
def test_has_rejects_what_is_not_a_capability(provider: str) -> None:
    api = pyxlio.get_api()
    assert api is not None
    with pytest.raises(TypeError):
        api.has("RECVFROM_ZCOPY")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        api.has(True)
    assert api.has(0) is False


# What each layout's real releases answer (xlio-abi.md section 2): cap_mask, size, and the
# members that follow from it.
_LIBXLIO_LAYOUTS = {
    Layout.LEGACY: dict(cap_mask=0x3FFF, size=248, held=True, dummy=True),      # 3.30.3-3.51
    Layout.V3_60: dict(cap_mask=0x2819, size=232, held=False, dummy=False),
    Layout.V3_61: dict(cap_mask=0x2818, size=224, held=False, dummy=False),     # 3.61-3.70
    Layout.V3_94: dict(cap_mask=0x3818, size=176, held=False, dummy=True),
}


def _check_libxlio_api(api: pyxlio.Api) -> None:
    """The libxlio pass: the layout the library's cap_mask names, with that layout's facts,
    and the library file that PYXLIO_TEST_LIBXLIO names."""
    want = _LIBXLIO_LAYOUTS[api.layout]
    assert api.provider == "libxlio" and api.family == "libxlio"
    assert api.emulator_version is None
    assert api.cap_mask == want["cap_mask"], f"{api!r}: not a cap_mask a release of its layout sets"
    assert api.size == want["size"]
    assert api.can_return_held is want["held"] and api.dummy_send is want["dummy"]
    legacy = api.layout is Layout.LEGACY
    assert api.has(Capability.RECVFROM_ZCOPY | Capability.RECVFROM_ZCOPY_FREE_PACKETS) is legacy
    assert api.has(Capability.GET_SOCKET_RINGS_NUM) is legacy
    assert api.has(Capability.IOCTL) is (api.layout in (Layout.LEGACY, Layout.V3_94))
    assert api.has(Capability.ADD_CONF_RULE | Capability.THREAD_OFFLOAD |
                   Capability.DUMP_FD_STATS)
    assert f"layout={api.layout.name}" in repr(api) and f"size={want['size']}" in repr(api)
    lib = os.environ.get("PYXLIO_TEST_LIBXLIO")
    assert lib and api.library is not None
    assert os.path.realpath(api.library) == os.path.realpath(lib), (
        f"Api.library {api.library!r} is not the preloaded {lib!r}")
    base = os.path.basename(api.library)
    if base.startswith("libxlio.so.") and base[len("libxlio.so."):][:1].isdigit():
        assert api.version == base[len("libxlio.so."):]
    else:
        assert api.version == api.layout.versions


@pytest.mark.kernel_only
def test_xlio_only_calls_say_xlio_is_not_loaded(provider: str) -> None:
    calls = [
        lambda: pyxlio.add_conf_rule("use os udp_receiver *:5000"),
        lambda: pyxlio.thread_offload(True),
        lambda: pyxlio.dump_fd_stats(0),
        lambda: pyxlio.socket_rings(1),
        lambda: pyxlio.set_allocator("aligned"),
    ]
    for call in calls:
        with pytest.raises(pyxlio.XlioNotLoadedError) as info:
            call()
        assert info.value.errno != 0 and "not loaded" in str(info.value)
        assert isinstance(info.value, OSError)


@pytest.fixture(scope="module")
def fake_xlio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake XLIO")
    out = tmp_path_factory.mktemp("fake") / "libfake_xlio.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(out),
                    str(HERE / "c" / "fake_xlio.c"), "-ldl"], check=True)
    return out


PROBE = """
import json, socket, pyxlio
api = pyxlio.get_api()
out = {"loaded": api is not None}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if api is not None:
    out.update(layout=api.layout.name, cap_mask=api.cap_mask, size=api.size,
               provider=api.provider, text=str(api.layout), held=api.can_return_held,
               dummy=api.dummy_send)
    results = {}
    for name, call in [
        ("add_conf_rule", lambda: pyxlio.add_conf_rule("use os udp_receiver *:5000")),
        ("thread_offload", lambda: pyxlio.thread_offload(True)),
        ("dump_fd_stats", lambda: pyxlio.dump_fd_stats(0)),
        ("set_allocator", lambda: pyxlio.set_allocator("aligned")),
        ("socket_rings", lambda: pyxlio.socket_rings(sock)),
    ]:
        try:
            call()
            results[name] = "ok"
        except pyxlio.UnsupportedError:
            results[name] = "unsupported"
        except pyxlio.XlioError as exc:
            results[name] = f"error {exc.errno}"
    out["results"] = results
print(json.dumps(out))
"""


def _probe(lib: Path, mode: str, tmp_path: Path) -> tuple[dict[str, object], list[str]]:
    log = tmp_path / f"{mode}.log"
    env = dict(os.environ, LD_PRELOAD=str(lib), FAKE_XLIO_MODE=mode, FAKE_XLIO_LOG=str(log))
    proc = run_python(PROBE, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().split() if log.exists() else []
    return json.loads(proc.stdout), calls


@pytest.mark.provider_independent
@pytest.mark.parametrize("mode", ["none", "null", "badmagic", "shortlen"])
def test_malformed_answers_are_refused(fake_xlio: Path, tmp_path: Path, mode: str) -> None:
    out, calls = _probe(fake_xlio, mode, tmp_path)
    assert out == {"loaded": False}
    assert calls == []


_ONLY = {"add_conf_rule": "ok", "thread_offload": "ok", "dump_fd_stats": "ok",
         "set_allocator": "unsupported", "socket_rings": "unsupported"}
_WITH_IOCTL = {**_ONLY, "set_allocator": "ok"}
_LEGACY = {**_WITH_IOCTL, "socket_rings": "error 22"}   # the fake's rings: -1/EINVAL


@pytest.mark.provider_independent
@pytest.mark.parametrize(
    ("mode", "layout", "size", "held", "dummy", "expected"),
    [
        # the members before the socket/Ultra API only (cap bit 13 clear)
        ("v360", "V3_60", 48, False, False, _ONLY),
        ("v394", "V3_94", 48, False, True, _WITH_IOCTL),
        ("v361", "V3_61", 40, False, False, _ONLY),
        # each release's cap_mask and whole struct
        ("v360full", "V3_60", 232, False, False, _ONLY),
        ("v361full", "V3_61", 224, False, False, _ONLY),
        ("v394full", "V3_94", 176, False, True, _WITH_IOCTL),
        ("legacy20", "LEGACY", 80, True, True, {**_WITH_IOCTL, "socket_rings": "error 95"}),
        ("legacy310", "LEGACY", 120, True, True, _LEGACY),
        ("legacy", "LEGACY", 248, True, True, _LEGACY),
    ],
)
def test_each_layout_calls_only_members_it_has(fake_xlio: Path, tmp_path: Path, mode: str,
                                               layout: str, size: int, held: bool, dummy: bool,
                                               expected: dict[str, str]) -> None:
    """The struct ends at a guard page: a read past the implied size would crash the probe."""
    out, calls = _probe(fake_xlio, mode, tmp_path)
    assert out["loaded"] is True
    assert out["layout"] == layout
    assert out["text"] == str(Layout[layout]) and out["text"] != str(int(Layout[layout]))
    assert out["size"] == size
    assert out["provider"] == "libxlio"
    assert out["held"] is held, "can_return_held: only where free_packets exists"
    assert out["dummy"] is dummy
    assert out["results"] == expected
    called = {k for k, v in expected.items() if v == "ok"}
    names = {"set_allocator": "ioctl"}
    assert set(calls) >= {names.get(k, k) for k in called}
    assert "other" not in calls, "a socket/Ultra API member was called"
    if not mode.startswith("legacy"):
        assert "recvfrom_zcopy" not in calls and "free_packets" not in calls


DUMMY_PROBE = """
import json, socket as std, pyxlio, pyxlio.socket
s = pyxlio.socket.socket(std.AF_INET, std.SOCK_DGRAM)
try:
    s.sendto(b"x", pyxlio.MSG_DUMMY, ("127.0.0.1", 9))
    out = "sent"
except pyxlio.UnsupportedError as exc:
    out = "unsupported: " + str(exc)
except pyxlio.XlioError as exc:
    out = "xlio refused: " + str(exc)
finally:
    s.close()
print(json.dumps(out))
"""


@pytest.mark.provider_independent
@pytest.mark.parametrize(("mode", "passed_on"), [("v360full", False), ("v361full", False),
                                                  ("v394full", True), ("legacy", True)])
def test_dummy_sends_where_the_layout_has_them(fake_xlio: Path, tmp_path: Path, mode: str,
                                                passed_on: bool) -> None:
    """3.60 removed the dummy flag (the kernel would get MSG_SYN and send the data): refused
    before any send.  The legacy layout and 3.94x implement it: the send goes to XLIO (the
    fake answers as XLIO does for a socket it does not offload: -1/EINVAL)."""
    log = tmp_path / "dummy.log"
    env = dict(os.environ, LD_PRELOAD=str(fake_xlio), FAKE_XLIO_MODE=mode,
               FAKE_XLIO_LOG=str(log))
    proc = run_python(DUMMY_PROBE, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    calls = log.read_text().split() if log.exists() else []
    if passed_on:
        assert out.startswith("xlio refused: ") and "dummy_send" in calls, (out, calls)
    else:
        assert out.startswith("unsupported: ") and "3.60" in out, out
        assert "dummy_send" not in calls


OFFLOAD_PROBE = """
import json, socket as std
from pyxlio import _api
s = std.socket(std.AF_INET, std.SOCK_DGRAM)
print(json.dumps(_api._offload_state(s.fileno())))
s.close()
"""


@pytest.mark.provider_independent
@pytest.mark.parametrize(("mode", "rings", "state", "asked"), [
    ("legacy", "1", True, True),      # a socket with a ring: offloaded
    ("legacy", "0", False, True),     # no ring: served by the kernel
    ("legacy", "-1", None, True),     # unbound, or not XLIO's: cannot be known yet
    ("v360full", "1", None, False),   # no get_socket_rings_num in the layout
    ("v361full", "1", None, False),
    ("v394full", "1", None, False),
    ("none", "1", False, False),      # no XLIO: the kernel serves everything
])
def test_offload_state_from_the_ring_count(fake_xlio: Path, tmp_path: Path, mode: str,
                                           rings: str, state: bool | None,
                                           asked: bool) -> None:
    log = tmp_path / "rings.log"
    env = dict(os.environ, LD_PRELOAD=str(fake_xlio), FAKE_XLIO_MODE=mode,
               FAKE_XLIO_RINGS=rings, FAKE_XLIO_LOG=str(log))
    proc = run_python(OFFLOAD_PROBE, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) is state
    calls = log.read_text().split() if log.exists() else []
    assert ("get_socket_rings_num" in calls) is asked
    assert "register_recv_callback" not in calls, "the probe must not touch callbacks"


@pytest.mark.provider_independent
def test_emulator_361_layout_is_told_apart() -> None:
    from pyxlio import emu

    code = (
        "import json, pyxlio\n"
        "api = pyxlio.get_api()\n"
        "print(json.dumps([api.layout.name, api.cap_mask, api.provider,\n"
        "                  api.has(pyxlio.Capability.RECVFROM_ZCOPY)]))\n"
    )
    proc = run_python(code, env=emu.environ(strict=True, layout="3.61"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["V3_61", 0x2818, "emulator", False]


@pytest.mark.provider_independent
def test_info_command_reports_the_provider() -> None:
    from pyxlio import emu

    proc = run_python("import pyxlio._info as i; i.main(['--json'])", env=emu.environ())
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["loaded"] is True and info["provider"] == "emulator"
    assert info["layout"] == "LEGACY" and "RECVFROM_ZCOPY" in info["capabilities"]
    assert info["layout_text"] == "legacy (libxlio 2.0-3.51)" and info["api_size"] == 248
    assert info["can_return_held"] is True and info["dummy_send"] is True
    assert info["started"] is True          # info makes the process's first socket itself
    text = run_python("import pyxlio._info as i; i.main([])", env=emu.environ())
    assert text.returncode == 0, text.stderr
    assert "layout:       legacy (libxlio 2.0-3.51), xlio_api_t 248 bytes" in text.stdout
    assert "held packets: can be returned" in text.stdout
    plain = run_python("import pyxlio._info as i; i.main([])",
                       env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    assert plain.returncode == 0 and "not loaded" in plain.stdout


@pytest.mark.provider_independent
@pytest.mark.parametrize(("mode", "line"), [
    ("v360full", "layout:       3.60 (libxlio 3.60.x), xlio_api_t 232 bytes"),
    ("v361full", "layout:       3.61+ (libxlio 3.61 and later), xlio_api_t 224 bytes"),
    ("v394full", "layout:       3.94x (libxlio 3.94x, DOCA), xlio_api_t 176 bytes"),
])
def test_info_command_names_the_layout(fake_xlio: Path, mode: str, line: str) -> None:
    env = dict(os.environ, LD_PRELOAD=str(fake_xlio), FAKE_XLIO_MODE=mode)
    proc = run_python("import sys, runpy; sys.argv = ['pyxlio', 'info']; "
                      "runpy.run_module('pyxlio', run_name='__main__')", env=env)
    assert proc.returncode == 0, proc.stderr
    assert line in proc.stdout, proc.stdout
    held = "cannot" if mode != "legacy" else "can"
    assert f"held packets: {held} be returned" in proc.stdout


@pytest.mark.provider_independent
@pytest.mark.parametrize("started", [True, False])
def test_info_says_when_xlio_loaded_but_never_started(fake_xlio: Path, started: bool) -> None:
    """A libxlio whose global init failed (no usable RDMA stack) is loaded but passes every
    socket to the kernel: Api.started and `pyxlio info` say so."""
    env = dict(os.environ, LD_PRELOAD=str(fake_xlio), FAKE_XLIO_MODE="legacy",
               FAKE_XLIO_NOT_STARTED="0" if started else "1")
    proc = run_python("import json, pyxlio, pyxlio._info as i\n"
                      "print(json.dumps([pyxlio.get_api().started, i.collect()['started']]))\n"
                      "i.main([])", env=env)
    assert proc.returncode == 0, proc.stderr
    first, text = proc.stdout.split("\n", 1)
    assert json.loads(first) == [started, started]
    assert ("NOT STARTED" in text) is (not started), text


VMA_PROBE = r"""
import ctypes, json, pyxlio
libc = ctypes.CDLL(None, use_errno=True)
def ask(fd, optlen):
    ptr = ctypes.c_void_p(0)
    n = ctypes.c_uint32(optlen)
    rc = libc.getsockopt(fd, 1, 2800, ctypes.byref(ptr), ctypes.byref(n))
    return [rc, ctypes.get_errno() if rc else 0, ptr.value or 0, n.value]
api = pyxlio.get_api()
started_before = pyxlio.get_api().started
first, again = ask(-1, 8), ask(-1, 8)
print(json.dumps({"vma": first, "again": again, "xlio": ask(-2, 8), "short": ask(-1, 4),
                  "address": api.address, "layout": api.layout.name, "family": api.family,
                  "native": api.native_mask, "cap_mask": api.cap_mask, "size": api.size,
                  "started_before": started_before}))
"""


@pytest.mark.provider_independent
def test_emulator_vma_layout_answers_as_libvma() -> None:
    """--layout vma: getsockopt(-1, SOL_SOCKET, 2800) gives the same struct every time without
    starting it; XLIO's -2 and a 4-byte optlen get EBADF (fact sheet section 11)."""
    from pyxlio import emu

    proc = run_python(VMA_PROBE, env=emu.environ(strict=True, layout="vma"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["vma"][:2] == [0, 0] and out["vma"][2] == out["address"] != 0
    assert out["vma"][3] == 8 and out["again"] == out["vma"]
    assert out["xlio"][:2] == [-1, 9] and out["short"][:2] == [-1, 9]      # EBADF
    assert out["layout"] == "VMA" and out["family"] == "libvma"
    assert out["native"] == 0x377FFF and out["cap_mask"] == 0x1FFF and out["size"] == 168
    assert out["started_before"] is False          # asking for the API does not start it


@pytest.mark.provider_independent
def test_emulator_xlio_layout_ignores_the_vma_request() -> None:
    from pyxlio import emu

    proc = run_python(VMA_PROBE, env=emu.environ(strict=True))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["vma"][:2] == [-1, 9] and out["layout"] == "LEGACY" and out["family"] == "libxlio"


@pytest.mark.provider_independent
def test_info_command_reports_libvma() -> None:
    from pyxlio import emu

    env = emu.environ(layout="vma")
    proc = run_python("import pyxlio._info as i; i.main(['--json'])", env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["family"] == "libvma" and info["layout"] == "VMA"
    assert info["native_mask"] == "0x377fff" and info["api_size"] == 168
    text = run_python("import pyxlio._info as i; i.main([])", env=env)
    assert text.returncode == 0, text.stderr
    assert "libvma: loaded, provider emulator" in text.stdout
    assert "layout:       vma (libvma 9.x), vma_api_t 168 bytes" in text.stdout
    assert "vma_extra_supported_mask 0x377fff" in text.stdout
