"""The control facade: transport rules, thread offload, statistics, rings, allocators."""

from __future__ import annotations

import json
import os
import re
import socket as stdsocket
import threading

import pytest

import pyxlio
from conftest import offloaded_of_a_kernel_socket, run_python
from pyxlio import rules

# -- add_conf_rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    "use xyz udp_receiver *:5000",
    "use os udp_recv *:5000",
    "use os udp_receiver 1.2.3:5000",
    "use os udp_receiver *:70000",
    "use os udp_receiver *:9-3",
    "use os udp_receiver",
    "",
])
def test_bad_rules_raise_before_reaching_xlio(provider: str, bad: str) -> None:
    with pytest.raises(ValueError) as info:
        pyxlio.add_conf_rule(bad)
    assert isinstance(info.value, rules.RuleSyntaxError)


@pytest.mark.parametrize("bad", [None, 5, b"use os udp_receiver *:5000", ["use"]])
def test_rule_of_wrong_type(provider: str, bad: object) -> None:
    with pytest.raises(TypeError):
        pyxlio.add_conf_rule(bad)


@pytest.mark.xlio
def test_rules_apply_to_sockets_made_afterwards_and_a_bad_rule_never_poisons(
        provider: str, make_socket) -> None:
    probe = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ValueError):
        pyxlio.add_conf_rule("use os udp_receiver 127.0.0.1:notaport")
    # Had XLIO seen the bad rule, every later rule would fail: this one must still work.
    pyxlio.add_conf_rule(rules.Rule.parse(f"use os udp_receiver 127.0.0.1:{port}"))
    kernel = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    kernel.bind(("127.0.0.1", port))
    other = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    if provider in ("emu", "emu-vma"):   # a real libxlio never offloads loopback
        assert kernel.offloaded is False
        assert other.offloaded is True


# -- thread_offload --------------------------------------------------------------------------

@pytest.mark.parametrize(("thread", "error"), [
    ("main", TypeError), (1.5, TypeError), (True, TypeError), (0, ValueError),
    (-4, ValueError), (2 ** 64, ValueError), (threading.Thread(target=print), ValueError),
])
def test_thread_offload_bad_thread(provider: str, thread: object, error: type) -> None:
    with pytest.raises(error):
        pyxlio.thread_offload(True, thread)


def test_thread_offload_bad_flag(provider: str) -> None:
    with pytest.raises(TypeError):
        pyxlio.thread_offload("yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pyxlio.offload(None)  # type: ignore[arg-type]


@pytest.mark.xlio
def test_offload_context_manager_restores_the_previous_state(provider: str, make_socket) -> None:
    assert pyxlio.thread_offload_state() is True
    with pyxlio.offload(False):
        assert pyxlio.thread_offload_state() is False
        off = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        with pytest.raises(RuntimeError), pyxlio.offload(True):
            assert pyxlio.thread_offload_state() is True
            raise RuntimeError("inside")
        assert pyxlio.thread_offload_state() is False
    assert pyxlio.thread_offload_state() is True
    on = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    for s in (off, on):
        s.bind(("127.0.0.1", 0))       # XLIO decides (and can tell) once the socket is bound
    if provider in ("emu", "emu-vma"):
        assert off.offloaded is False and on.offloaded is True


@pytest.mark.xlio
def test_thread_offload_of_another_thread(provider: str) -> None:
    results: list[object] = []
    ready, go = threading.Event(), threading.Event()

    def worker() -> None:
        ready.set()
        go.wait(5)
        sock = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        from pyxlio.socket import socket
        s2 = socket(fileno=sock.detach())
        results.append(s2.offloaded)
        s2.close()

    t = threading.Thread(target=worker)
    t.start()
    ready.wait(5)
    pyxlio.thread_offload(False, t)
    go.set()
    t.join(10)
    pyxlio.thread_offload(True, t.ident) if t.is_alive() else None
    if provider in ("emu", "emu-vma"):
        assert results == [False]
    else:
        assert len(results) == 1


@pytest.mark.provider_independent
def test_thread_offload_before_xlio_starts_explains_itself() -> None:
    from pyxlio import emu

    code = (
        "import pyxlio\n"
        "try:\n"
        "    pyxlio.thread_offload(False)\n"
        "except pyxlio.XlioError as exc:\n"
        "    print('refused:', exc)\n"
    )
    proc = run_python(code, env=emu.environ(strict=True))
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "not started yet" in proc.stdout


# -- dump_fd_stats and rings -----------------------------------------------------------------

@pytest.mark.parametrize(("level", "error"), [
    (9, ValueError), (-2, ValueError), ("INFO", TypeError), (True, TypeError), (3.0, TypeError),
])
def test_dump_fd_stats_bad_level(provider: str, level: object, error: type) -> None:
    with pytest.raises(error):
        pyxlio.dump_fd_stats(0, level)  # type: ignore[arg-type]


@pytest.mark.parametrize(("target", "error"), [
    (-1, ValueError), ("3", TypeError), (True, TypeError), (object(), TypeError),
])
def test_dump_fd_stats_bad_target(provider: str, target: object, error: type) -> None:
    with pytest.raises(error):
        pyxlio.dump_fd_stats(target)


def test_dump_fd_stats_of_a_closed_socket(provider: str) -> None:
    s = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.close()
    with pytest.raises(ValueError, match="not an open socket"):
        pyxlio.dump_fd_stats(s)


@pytest.mark.xlio
def test_dump_fd_stats_prints_the_socket(provider: str, udp_pair, capfd) -> None:
    rx, tx, addr = udp_pair
    for i in range(3):
        tx.sendto(b"abc%d" % i, addr)
    with rx.recv_batch(8, timeout=2) as batch:
        assert len(batch) == 3
    rx.stats(pyxlio.LogLevel.INFO)
    pyxlio.dump_fd_stats(rx, pyxlio.LogLevel.NONE)
    err = capfd.readouterr().err
    if provider in ("emu", "emu-vma"):
        line = next(x for x in err.splitlines() if f"fd={rx.fileno()} " in x)
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        assert fields["rx_packets"] == "3" and fields["rx_zcopy"] == "3"
        assert fields["outstanding"] == "0"


@pytest.mark.xlio
def test_dump_fd_stats_of_a_non_socket_fd_is_an_xlio_error(provider: str) -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(pyxlio.XlioError) as info:
            pyxlio.dump_fd_stats(fd)
        assert info.value.call == "dump_fd_stats"
    finally:
        os.close(fd)


@pytest.mark.xlio
def test_socket_rings(provider: str, udp_pair) -> None:
    rx, _, _ = udp_pair
    api = pyxlio.get_api()
    assert api is not None
    if not api.has(pyxlio.Capability.GET_SOCKET_RINGS_NUM):   # 3.60+ have no rings
        with pytest.raises(pyxlio.UnsupportedError) as info:
            pyxlio.socket_rings(rx)
        assert info.value.call == "get_socket_rings_num"
        assert rx.offloaded is None             # so pyxlio cannot tell (documented)
        return
    rings = pyxlio.socket_rings(rx)
    assert all(isinstance(fd, int) and fd >= 0 for fd in rings)
    if provider in ("emu", "emu-vma"):
        assert rings == [rx.fileno()] == rx.rings()
    with pytest.raises(TypeError):
        pyxlio.socket_rings("x")


# -- allocators ------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "kwargs", "error"), [
    (("gigantic",), {}, ValueError),
    ((42,), {}, TypeError),
    ((lambda n: 0,), {}, TypeError),                 # a Python alloc needs free
    (("aligned", print), {}, TypeError),              # free only with a Python alloc
    (("aligned",), {"pools": 4}, ValueError),
    (("aligned",), {"pools": "rx"}, TypeError),
])
def test_set_allocator_bad_arguments(provider: str, args: tuple, kwargs: dict,
                                     error: type) -> None:
    with pytest.raises(error):
        pyxlio.set_allocator(*args, **kwargs)


@pytest.mark.xlio
def test_set_allocator_after_xlio_started_explains_the_import_order(provider: str) -> None:
    # pytest imported socket long ago, so XLIO has started in this process.
    api = pyxlio.get_api()
    assert api is not None
    if not api.has(pyxlio.Capability.IOCTL):
        # 3.60+ removed the extra ioctl: the allocator goes to xlio_init_ex (pyxlio.ultra)
        with pytest.raises(pyxlio.UnsupportedError) as unsupported:
            pyxlio.set_allocator("aligned")
        assert unsupported.value.call == "ioctl"
        assert "pyxlio.ultra.init(allocator=" in str(unsupported.value)
        assert pyxlio.allocator_state()["registered"] is False
        return
    with pytest.raises(pyxlio.XlioError) as info:
        pyxlio.set_allocator("aligned")
    assert info.value.call == "ioctl" and info.value.errno != 0
    assert "before" in str(info.value) and "socket" in str(info.value)
    assert pyxlio.allocator_state()["registered"] is False


ALLOC_PROBE = """
import json, pyxlio
{register}
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # starts XLIO: the pool is allocated
s.close()
st = pyxlio.allocator_state()
print(json.dumps({{k: (v if isinstance(v, (int, str, bool, type(None))) else repr(v))
                  for k, v in st.items()}}))
"""


def _alloc_run(register: str, **env_extra: str) -> dict[str, object]:
    from pyxlio import emu

    env = emu.environ(strict=True, memory_limit=8 << 20)
    env.update(env_extra)
    proc = run_python(ALLOC_PROBE.format(register=register), env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.provider_independent
@pytest.mark.parametrize("kind", ["hugepages", "aligned"])
def test_builtin_allocator_serves_the_pool(kind: str) -> None:
    state = _alloc_run(f"pyxlio.set_allocator({kind!r}, pools=pyxlio.AllocTarget.RX)")
    assert state["kind"] == kind and state["registered"] is True
    assert state["alloc_calls"] == 1
    assert int(state["alloc_bytes"]) >= 8 << 20


@pytest.mark.provider_independent
def test_python_allocator_is_called_through_the_trampoline() -> None:
    register = (
        "import mmap, ctypes\n"
        "blocks = {}\n"
        "sizes = []\n"
        "def alloc(n):\n"
        "    sizes.append(n)\n"
        "    m = mmap.mmap(-1, n)\n"
        "    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
        "    blocks[addr] = m\n"
        "    return addr\n"
        "pyxlio.set_allocator(alloc, blocks.pop)\n"
    )
    probe = ALLOC_PROBE.replace("print(json.dumps", "st['sizes'] = sizes[0]\nprint(json.dumps")
    from pyxlio import emu

    env = emu.environ(strict=True, memory_limit=8 << 20)
    proc = run_python(probe.format(register=register), env=env)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["kind"] == "python" and state["alloc_calls"] == 1
    assert state["sizes"] == 8 << 20
    assert state["errors"] == "[]"


@pytest.mark.provider_independent
def test_python_allocator_exception_is_reported_not_lost() -> None:
    register = (
        "def alloc(n):\n"
        "    raise RuntimeError('no memory for you')\n"
        "pyxlio.set_allocator(alloc, lambda a: None)\n"
    )
    from pyxlio import emu

    env = emu.environ(memory_limit=8 << 20)
    proc = run_python(ALLOC_PROBE.format(register=register), env=env)
    assert "no memory for you" in proc.stderr
    if proc.returncode == 0:
        state = json.loads(proc.stdout.strip().splitlines()[-1])
        assert "no memory for you" in str(state["errors"])


@pytest.mark.provider_independent
def test_allocator_from_the_environment_at_import() -> None:
    state = _alloc_run("", PYXLIO_ALLOCATOR="aligned:rx")
    assert state["kind"] == "aligned" and state["alloc_calls"] == 1


@pytest.mark.provider_independent
def test_bad_allocator_environment_warns() -> None:
    from pyxlio import emu

    proc = run_python("import pyxlio; print(pyxlio.allocator_state()['registered'])",
                      env=dict(emu.environ(), PYXLIO_ALLOCATOR="gigantic"))
    assert proc.returncode == 0, proc.stderr
    assert "PYXLIO_ALLOCATOR" in proc.stderr and proc.stdout.strip() == "False"


# -- closed sockets and descriptors that are not sockets -------------------------------------

def test_socket_level_calls_on_a_closed_socket(provider: str, make_socket) -> None:
    s = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.close()
    for call in (s.stats, s.rings, lambda: pyxlio.socket_rings(s)):
        with pytest.raises((ValueError, OSError)):
            call()
    with pytest.raises(OSError):
        s.set_recv_callback(lambda v, i: 1)
    with pytest.raises(OSError):
        s.set_recv_filter(0, b"x")
    with pytest.raises(OSError):
        s.send_dummy(b"x", ("127.0.0.1", 9))


@pytest.mark.xlio
def test_socket_rings_of_a_descriptor_that_is_not_a_socket(provider: str) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(pyxlio.XlioError):
            pyxlio.socket_rings(r)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.xlio
def test_callbacks_on_a_socket_xlio_does_not_offload(provider: str, make_socket) -> None:
    """XLIO refuses (or would never run) the callback: pyxlio runs it (test_callbacks.py
    checks the verdicts there)."""
    with pyxlio.offload(False):
        s = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.set_recv_callback(lambda v, i: 1)
    assert s.offloaded is offloaded_of_a_kernel_socket() and s.callback_path == "pyxlio"


@pytest.mark.provider_independent
def test_rules_use_the_keyword_the_layout_parses() -> None:
    """libxlio <= 3.51 parses `vma`, the 3.60+ parsers `xlio`: pyxlio writes what each knows,
    so the rule is accepted and the parser stays usable (a refused rule would poison it)."""
    from pyxlio import emu

    code = (
        "import socket, pyxlio\n"
        "pyxlio.add_conf_rule('use vma udp_receiver *:40101')\n"
        "pyxlio.add_conf_rule('use xlio udp_receiver *:40102')\n"
        "pyxlio.add_conf_rule('use os udp_receiver *:40103')\n"
        "print(pyxlio.get_api().layout.name, 'ok')\n"
    )
    for layout, name in (("legacy", "LEGACY"), ("3.61", "V3_61")):
        proc = run_python(code, env=emu.environ(strict=True, layout=layout))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [name, "ok"]
