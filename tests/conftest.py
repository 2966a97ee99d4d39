"""pyxlio's test harness: one suite, run against every provider.

``python -m pytest`` (the README's command) runs the suite once per provider, each in its own
interpreter, because XLIO (or the emulator) is chosen when a process starts (LD_PRELOAD):

- ``emu``: under pyxlio's emulator in strict mode (a leaked packet or a contract violation makes
  that run fail), loopback offloaded: the zero-copy path and XLIO-run callbacks;
- ``emu-os``: the emulator in strict mode with ``--offload=none``: every socket is wrapped and
  served by the kernel, as a real libxlio host serves loopback and the addresses its rules
  leave to the OS (copies, callbacks accepted but never run by XLIO, dummy sends refused, one
  datagram per ``recvmmsg`` through the wrapper, FIONREAD readability): pyxlio's workarounds
  for such sockets are tested on every host;
- ``emu-vma``: the emulator in strict mode answering as libvma 9.8.84 (``--layout vma``: its
  ``struct vma_api_t`` through ``getsockopt(-1, ...)``, IPv4 only), loopback offloaded: the
  same suite through pyxlio's libvma provider;
- ``kernel``: no XLIO at all: the same calls through the kernel;
- ``libxlio``: under a real libxlio, when ``PYXLIO_TEST_LIBXLIO`` names one (ConnectX hosts).

``--provider=emu|emu-os|emu-vma|kernel|libxlio`` runs one pass in this process (what each pass
does).
Tests marked ``xlio`` need an XLIO provider and are skipped, with that reason, in the kernel
pass; tests marked ``kernel_only`` need the absence of XLIO; ``emu_only`` tests check the
emulator itself and run in the two emulator passes; modules marked ``provider_independent``
(they start their own processes: the emulator's C checks, rules, perf) run in one pass only.

Tests marked ``libxlio`` check what a real libxlio answers (where no emulator can stand in
for it): they run in the ``libxlio`` pass only and are skipped, with that reason, elsewhere.

Tests marked ``offloaded`` need a socket XLIO offloads (zero-copy expected, callbacks run by
XLIO, dummy sends accepted, rings...): they run in the ``emu`` pass and are skipped, with that
reason, where sockets are served by the kernel: the ``emu-os`` and ``kernel`` passes, and the
``libxlio`` pass unless ``PYXLIO_TEST_OFFLOAD=1`` says that the host really offloads the
sockets the suite makes (its tests use loopback, which a real libxlio never offloads: set it
only with a libxlio that offloads loopback, or with transport rules and addresses that make it
offload).  Everything else runs in every pass, with the same expectations or with expectations
that follow from the provider (``offloads_loopback``).  A libxlio that is loaded but failed to
start (``Api.started`` False: no usable RDMA stack) is a pass-through: its ``xlio`` tests are
skipped with that reason and the rest must pass as they do without XLIO.

``PYXLIO_SANITIZE=1`` (with pyxlio built the same way, see setup.py) runs every pass with the
ASan runtime preloaded first (see ``sanitizer_env``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROVIDERS = ("emu", "emu-os", "emu-vma", "kernel", "libxlio")
#: the passes under pyxlio's emulator
EMU_PROVIDERS = ("emu", "emu-os", "emu-vma")
#: the passes whose sockets XLIO offloads (see the ``offloaded`` marker)
OFFLOAD_ENV = "PYXLIO_TEST_OFFLOAD"
_RESULTS_ENV = "PYXLIO_TEST_RESULTS"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--provider",
        choices=("all", *PROVIDERS),
        default=os.environ.get("PYXLIO_TEST_PROVIDER", "all"),
        help="run the suite under one XLIO provider (default: all, each in a subprocess)",
    )


# -- sanitized runs (PYXLIO_SANITIZE=1) ------------------------------------------------------
# CPython is not instrumented, so the ASan runtime must be the first library loaded (before the
# emulator or libxlio, whose socket calls ASan's interceptors then wrap), PYTHONMALLOC=malloc
# makes every Python allocation (bytes, bytearray, arrays) an ASan-guarded malloc instead of
# an arena slice, and leak detection is off (the interpreter leaks by design at exit).
# verify_asan_link_order=0: children that tests start with an LD_PRELOAD of their own (e.g.
# emu.environ() puts the emulator first) would otherwise refuse to start; libasan still comes
# before libc there, so its interceptors hold.
SANITIZE = os.environ.get("PYXLIO_SANITIZE") == "1"
ASAN_OPTIONS = "detect_leaks=0:abort_on_error=1:verify_asan_link_order=0"
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1"


def libasan_path() -> str:
    cc = os.environ.get("CC", "gcc")
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=False).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise pytest.UsageError(f"PYXLIO_SANITIZE=1: {cc} has no libasan.so (install libasan)")
    return os.path.realpath(path)


def sanitizer_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the ASan runtime first in LD_PRELOAD and the sanitizers' options set."""
    asan = libasan_path()
    rest = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
            if p and "libasan" not in os.path.basename(p)]
    env = dict(env)
    env["LD_PRELOAD"] = " ".join([asan, *rest])
    env["ASAN_OPTIONS"] = ":".join(filter(None, [ASAN_OPTIONS, env.get("ASAN_OPTIONS")]))
    env["UBSAN_OPTIONS"] = ":".join(filter(None, [UBSAN_OPTIONS, env.get("UBSAN_OPTIONS")]))
    env["PYTHONMALLOC"] = "malloc"
    return env


def _asan_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return any("libasan" in line for line in maps)


def _run_sanitized(config: pytest.Config) -> int:
    """Run the same command again with the ASan runtime loaded first (this process cannot
    import a sanitized pyxlio), the sanitizers writing their reports to files: a report from
    a pass that aborts, or from a child process a test started, is shown, and fails the run."""
    print("=== pyxlio: PYXLIO_SANITIZE=1: running under AddressSanitizer+UBSan ===", flush=True)
    env = sanitizer_env(dict(os.environ))
    with tempfile.TemporaryDirectory(prefix="pyxlio-san-") as logs:
        env["ASAN_OPTIONS"] += f":log_path={logs}/asan"
        env["UBSAN_OPTIONS"] += f":log_path={logs}/ubsan"
        rc = subprocess.call([sys.executable, "-m", "pytest", *config.invocation_params.args],
                             env=env)
        reports = sorted(Path(logs).iterdir())
        for report in reports:
            print(f"\n=== pyxlio: sanitizer report {report.name} ===\n{report.read_text()}",
                  flush=True)
    if reports:
        print(f"=== pyxlio: {len(reports)} sanitizer report(s): the run fails ===", flush=True)
        return rc if rc not in (0, 5) else 1
    return rc


def _provider_env(provider: str) -> dict[str, str] | None:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if provider in EMU_PROVIDERS:
        from pyxlio import emu

        env = emu.environ(strict=True, base=env,
                          offload="none" if provider == "emu-os" else "all",
                          layout="vma" if provider == "emu-vma" else None)
    elif provider == "libxlio":
        lib = os.environ.get("PYXLIO_TEST_LIBXLIO")
        if not lib:
            return None
        env["LD_PRELOAD"] = lib
    env["PYXLIO_TEST_PROVIDER"] = provider
    return sanitizer_env(env) if SANITIZE else env


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """With --provider=all (the default), run one pytest per provider and sum them up."""
    if SANITIZE and not _asan_loaded():
        return _run_sanitized(config)
    if config.getoption("provider") != "all" or config.getoption("collectonly", False):
        return None
    if config.getoption("help", False) or config.getoption("version", False):
        return None
    args = [a for a in config.invocation_params.args if not a.startswith("--provider")]
    totals: dict[str, int] = {}
    worst = 0
    for provider in PROVIDERS:
        env = _provider_env(provider)
        if env is None:
            print("\n=== pyxlio: provider libxlio not run: set PYXLIO_TEST_LIBXLIO to the "
                  "path of a real libxlio.so to run the suite under it ===", flush=True)
            continue
        with tempfile.NamedTemporaryFile("r", suffix=".json") as results:
            env[_RESULTS_ENV] = results.name
            print(f"\n=== pyxlio: test pass under provider '{provider}' ===", flush=True)
            rc = subprocess.call([sys.executable, "-m", "pytest", *args,
                                  f"--provider={provider}"], env=env)
            try:
                counts = json.load(open(results.name))
            except (OSError, ValueError):
                counts = {}
        if rc not in (0, 5) and not counts.get("failed"):
            # The pass died (a crash, or the emulator's strict exit): count it as a failure.
            counts["failed"] = counts.get("failed", 0) + 1
            print(f"=== pyxlio: pass '{provider}' exited with status {rc} ===", flush=True)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        if rc not in (0, 5):
            worst = rc or 1
    line = (f"{totals.get('passed', 0)} passed, {totals.get('failed', 0)} failed, "
            f"{totals.get('skipped', 0)} skipped")
    print(f"\n=== pyxlio: all providers ===\npyxlio: {line}", flush=True)
    if worst == 0 and totals.get("failed", 0):
        worst = 1
    if worst == 0 and not totals.get("passed"):
        worst = 5
    return worst


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    path = os.environ.get(_RESULTS_ENV)
    if not path:
        return
    stats = terminalreporter.stats
    counts = {key: len(stats.get(key, [])) for key in ("passed", "failed", "skipped", "error")}
    counts["failed"] += counts.pop("error")
    with open(path, "w") as out:
        json.dump(counts, out)


def current_provider(config: pytest.Config) -> str:
    return str(config.getoption("provider"))


def offloads_loopback(provider: str) -> bool:
    """Does this pass's XLIO offload the loopback sockets the suite makes?  The emulator in
    the ``emu`` pass does; ``emu-os`` and a real libxlio (without ``PYXLIO_TEST_OFFLOAD=1``)
    serve them through the kernel; without XLIO nothing is offloaded."""
    if provider in ("emu", "emu-vma"):
        return True
    return provider == "libxlio" and os.environ.get(OFFLOAD_ENV) == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xlio: needs an XLIO provider (emulator or libxlio)")
    config.addinivalue_line("markers", "emu_only: needs pyxlio's emulator in this process")
    config.addinivalue_line(
        "markers", "offloaded: needs a socket XLIO offloads: runs in the emu pass, skipped where "
        "sockets are served by the kernel (emu-os, a libxlio host without a device)")
    config.addinivalue_line("markers", "kernel_only: needs a process without XLIO")
    config.addinivalue_line(
        "markers", "libxlio: checks a real libxlio (PYXLIO_TEST_LIBXLIO): runs in the libxlio "
        "pass only")
    config.addinivalue_line(
        "markers", "epoll: waits in epoll (Poller, asyncio): skipped under a libxlio that did "
        "not start, whose epoll_ctl refuses every fd")
    config.addinivalue_line(
        "markers", "provider_independent: starts its own processes; runs in one pass only")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    provider = current_provider(config)
    if provider == "all":
        return
    keep, drop = [], []
    for item in items:
        independent = item.get_closest_marker("provider_independent") is not None
        # Provider-independent tests run once, in the kernel pass (no LD_PRELOAD inherited).
        (drop if independent and provider != "kernel" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    not_started = provider == "libxlio" and _xlio_not_started()
    for item in keep:
        if item.get_closest_marker("xlio") and provider == "kernel":
            item.add_marker(pytest.mark.skip(
                reason="needs XLIO: runs in the emu pass (and libxlio where one is found)"))
        if item.get_closest_marker("epoll") and not_started:
            item.add_marker(pytest.mark.skip(reason=(
                "waits in epoll, and a libxlio that failed to start refuses every epoll_ctl "
                "(EBADF; stdlib select.epoll too): pyxlio.Poller says so in its error")))
        if item.get_closest_marker("xlio") and not_started:
            item.add_marker(pytest.mark.skip(reason=(
                "needs a started XLIO: this libxlio is loaded but its global init failed (see "
                "its errors on stderr; no usable RDMA stack?), so it passes every socket to the "
                "kernel and refuses thread offload and statistics (pyxlio.get_api().started)")))
        if item.get_closest_marker("emu_only") and provider not in EMU_PROVIDERS:
            item.add_marker(pytest.mark.skip(
                reason="checks the emulator: runs in the emu, emu-os and emu-vma passes"))
        if item.get_closest_marker("offloaded") and not offloads_loopback(provider):
            item.add_marker(pytest.mark.skip(reason=(
                "needs a socket XLIO offloads: runs in the emu pass; sockets are served by the "
                "kernel here" + (f" (set {OFFLOAD_ENV}=1 if this libxlio offloads them)"
                                 if provider == "libxlio" else ""))))
        if item.get_closest_marker("kernel_only") and provider != "kernel":
            item.add_marker(pytest.mark.skip(reason="needs a process without XLIO: kernel pass"))
        if item.get_closest_marker("libxlio") and provider != "libxlio":
            item.add_marker(pytest.mark.skip(reason=(
                "checks a real libxlio: runs in the libxlio pass (set PYXLIO_TEST_LIBXLIO to "
                "the path of a libxlio.so)")))


def _xlio_not_started() -> bool:
    """A libxlio is loaded in this process but never started (Api.started is False)."""
    import pyxlio

    api = pyxlio.get_api()
    if api is None:
        return False
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()     # XLIO starts here, if it can
    return api.started is False


@pytest.fixture(scope="session")
def provider(pytestconfig: pytest.Config) -> str:
    """The provider this pass runs under; checked against what really answered."""
    import pyxlio

    name = current_provider(pytestconfig)
    api = pyxlio.get_api()
    if SANITIZE:
        from pyxlio import _zcopy

        with open(_zcopy.__file__, "rb") as so:
            assert b"__asan_report_" in so.read(), (
                f"PYXLIO_SANITIZE=1 but {_zcopy.__file__} is not built with it (setup.py)")
    if name == "kernel":
        assert api is None, f"the kernel pass runs with an XLIO loaded: {api!r}"
    elif name in EMU_PROVIDERS:
        assert api is not None and api.provider == "emulator", (
            f"the {name} pass did not load the emulator "
            f"(LD_PRELOAD={os.environ.get('LD_PRELOAD')})")
        assert (api.family == "libvma") == (name == "emu-vma"), (
            f"the {name} pass runs with the {api.family} layout "
            f"(PYXLIO_EMU_LAYOUT={os.environ.get('PYXLIO_EMU_LAYOUT')})")
        want = ("none",) if name == "emu-os" else ("all", "")
        assert os.environ.get("PYXLIO_EMU_OFFLOAD", "") in want, (
            f"the {name} pass runs with PYXLIO_EMU_OFFLOAD={os.environ.get('PYXLIO_EMU_OFFLOAD')}")
    elif name == "libxlio":
        assert api is not None and api.provider == "libxlio", "the libxlio pass has no libxlio"
    return name


@pytest.fixture
def make_socket(provider: str) -> Iterator[object]:
    """Factory of pyxlio sockets that are closed, and checked for leaks, after the test."""
    from pyxlio.socket import socket

    made: list[socket] = []

    def factory(*args: object, **kwargs: object) -> socket:
        sock = socket(*args, **kwargs)  # type: ignore[arg-type]
        made.append(sock)
        return sock

    yield factory
    leaks = {s.fileno(): s.outstanding for s in made if s.fileno() >= 0 and s.outstanding}
    for s in made:
        try:
            s.close()
        except BufferError:
            pass
    assert not leaks, f"packets never released by the test: {leaks}"


@pytest.fixture
def udp_pair(make_socket: object) -> tuple[object, object, tuple[str, int]]:
    """(receiver: pyxlio socket bound on loopback, sender: stdlib socket, receiver address)."""
    import socket as stdsocket

    rx = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)  # type: ignore[operator]
    rx.bind(("127.0.0.1", 0))
    tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    yield rx, tx, rx.getsockname()
    tx.close()


@pytest.fixture
def tx() -> Iterator[socket.socket]:
    """A plain (stdlib) UDP sender bound on loopback."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def offloaded_of_a_kernel_socket() -> bool | None:
    """What ``socket.offloaded`` reads for a socket XLIO leaves to the kernel: False where the
    layout can tell (it has a ring count: legacy, libvma), None where it cannot (libxlio 3.60+
    have no rings, see pyxlio.socket.socket.offloaded)."""
    import pyxlio

    api = pyxlio.get_api()
    return False if api is not None and api.has(pyxlio.Capability.GET_SOCKET_RINGS_NUM) else None


def free_udp_port() -> int:
    """A loopback UDP port nobody holds right now (for the emulator's feed, which is told its
    port before the process starts): fixed numbers collide with another run on the host."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60,
               cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (for what must happen before XLIO starts)."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)
