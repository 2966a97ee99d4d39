"""pyxlio's test harness: one suite, run against every provider.

``python -m pytest`` (the README's command) runs the suite once per provider, each in its own
interpreter, because XLIO (or the emulator) is chosen when a process starts (LD_PRELOAD):

- ``emu``: under pyxlio's emulator in strict mode (a leaked packet or a contract violation makes
  that run fail);
- ``kernel``: no XLIO at all: the same calls through the kernel;
- ``libxlio``: under a real libxlio, when ``PYXLIO_TEST_LIBXLIO`` names one (ConnectX hosts).

``--provider=emu|kernel|libxlio`` runs one pass in this process (what each pass does).  Tests
marked ``xlio`` need an XLIO provider and are skipped, with that reason, in the kernel pass;
tests marked ``kernel_only`` need the absence of XLIO; modules marked ``provider_independent``
(they start their own processes: the emulator's C checks, rules, perf) run in one pass only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROVIDERS = ("emu", "kernel", "libxlio")
_RESULTS_ENV = "PYXLIO_TEST_RESULTS"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--provider",
        choices=("all", *PROVIDERS),
        default=os.environ.get("PYXLIO_TEST_PROVIDER", "all"),
        help="run the suite under one XLIO provider (default: all, each in a subprocess)",
    )


def _provider_env(provider: str) -> dict[str, str] | None:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if provider == "emu":
        from pyxlio import emu

        env = emu.environ(strict=True, base=env)
    elif provider == "libxlio":
        lib = os.environ.get("PYXLIO_TEST_LIBXLIO")
        if not lib:
            return None
        env["LD_PRELOAD"] = lib
    env["PYXLIO_TEST_PROVIDER"] = provider
    return env


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """With --provider=all (the default), run one pytest per provider and sum them up."""
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xlio: needs an XLIO provider (emulator or libxlio)")
    config.addinivalue_line("markers", "emu_only: needs pyxlio's emulator in this process")
    config.addinivalue_line("markers", "kernel_only: needs a process without XLIO")
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
    for item in keep:
        if item.get_closest_marker("xlio") and provider == "kernel":
            item.add_marker(pytest.mark.skip(
                reason="needs XLIO: runs in the emu pass (and libxlio where one is found)"))
        if item.get_closest_marker("emu_only") and provider != "emu":
            item.add_marker(pytest.mark.skip(reason="checks the emulator: runs in the emu pass"))
        if item.get_closest_marker("kernel_only") and provider != "kernel":
            item.add_marker(pytest.mark.skip(reason="needs a process without XLIO: kernel pass"))


@pytest.fixture(scope="session")
def provider(pytestconfig: pytest.Config) -> str:
    """The provider this pass runs under; checked against what really answered."""
    import pyxlio

    name = current_provider(pytestconfig)
    api = pyxlio.get_api()
    if name == "kernel":
        assert api is None, f"the kernel pass runs with an XLIO loaded: {api!r}"
    elif name == "emu":
        assert api is not None and api.provider == "emulator", (
            f"the emu pass did not load the emulator (LD_PRELOAD={os.environ.get('LD_PRELOAD')})")
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


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60,
               cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (for what must happen before XLIO starts)."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)
