"""pytest-benchmark suites for pyxlio: per-datagram receive cost, as ratios to C.

``python -m pytest bench/`` runs the suite twice, each pass in its own interpreter (XLIO, or the
emulator, is chosen when a process starts: LD_PRELOAD):

- ``emu``: under pyxlio's emulator with its in-memory feed on ports ``--bench-feed-base`` ..
  +2 (64, 200 and 1024-byte datagrams): the feed benchmarks (test_feed.py) and the loopback
  drains through the emulator (pyxlio's zero-copy path);
- ``kernel``: no XLIO: the loopback drains through the kernel (pyxlio's recvmmsg path).

``--bench-provider=emu|kernel`` runs one pass in this process; ``--bench-quick`` is the CI
size.  ``--benchmark-json=F`` is honoured per pass, as ``F`` with ``.emu`` / ``.kernel``
before the suffix.  Every benchmark runs a fixed number of datagrams per round (pedantic mode,
one iteration), so per-datagram cost = round time / datagrams; its extra_info holds
``ns_per_datagram`` (median round), the C reference measured in the same session (``c_ref``,
``c_ns``) and ``speed_vs_c`` = c_ns / ns_per_datagram.  Timings are reported, never asserted:
the tests assert only that every datagram was received.  ``bench/run.py`` writes the JSON file
with every figure and the targets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import run  # noqa: E402  (bench/run.py: the measurement functions)

run._pyxlio_root()   # pyxlio importable (the source tree's src/ when not installed)

PASSES = ("emu", "kernel")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pyxlio-bench")
    g.addoption("--bench-provider", choices=("all", *PASSES),
                default=os.environ.get("PYXLIO_BENCH_PROVIDER", "all"),
                help="run the benchmarks under one provider (default: all, each in a "
                     "subprocess)")
    g.addoption("--bench-quick", action="store_true",
                default=os.environ.get("PYXLIO_BENCH_QUICK") == "1",
                help="CI size: fewer datagrams, rounds and configurations")
    g.addoption("--bench-feed-base", type=int,
                default=int(os.environ.get("PYXLIO_BENCH_FEED_BASE", "47301")),
                help="first emulator feed port (64 B; +1: 200 B; +2: 1024 B)")


def _json_for(path: str, provider: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}.{provider}{p.suffix or '.json'}"))


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """With --bench-provider=all (the default), run one pytest per pass and sum them up."""
    if config.getoption("bench_provider") != "all" or config.getoption("collectonly", False):
        return None
    args = list(config.invocation_params.args)
    rc = 0
    for provider in PASSES:
        pargs = []
        skip = False
        for i, a in enumerate(args):
            if skip:
                skip = False
                continue
            if a.startswith("--benchmark-json="):
                a = "--benchmark-json=" + _json_for(a.split("=", 1)[1], provider)
            elif a == "--benchmark-json" and i + 1 < len(args):
                pargs += [a, _json_for(args[i + 1], provider)]
                skip = True
                continue
            elif a.startswith("--bench-provider"):
                if "=" not in a:
                    skip = True
                continue
            pargs.append(a)
        feed = run.feed_spec(config.getoption("bench_feed_base"))
        env = run.child_env(provider == "emu", feed if provider == "emu" else None)
        env["PYXLIO_BENCH_PROVIDER"] = provider
        print(f"\n=== pyxlio bench pass: {provider} ===", flush=True)
        p = subprocess.run([sys.executable, "-m", "pytest", *pargs,
                            f"--bench-provider={provider}"],
                           env=env, cwd=config.invocation_params.dir)
        if p.returncode not in (0, 5):   # 5: nothing collected in this pass
            rc = rc or p.returncode
    # pytest-benchmark opened --benchmark-json=F in this (outer) process too: the passes wrote
    # F.emu.json / F.kernel.json, F itself stays empty
    path = config.getoption("benchmark_json", None)
    name = getattr(path, "name", None)
    if isinstance(name, str) and os.path.exists(name) and os.path.getsize(name) == 0:
        os.unlink(name)
    return rc


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "emu_feed: needs the emulator's in-memory feed here")
    config.addinivalue_line("markers", "xlio: needs an XLIO provider in this process")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    loaded = _emulator_loaded()
    fed = loaded and bool(os.environ.get("PYXLIO_EMU_FEED"))
    for item in items:
        if item.get_closest_marker("emu_feed") and not fed:
            item.add_marker(pytest.mark.skip(
                reason="needs the emulator's in-memory feed: runs in the 'emu' pass "
                       "(--bench-provider=emu or the default 'all')"))
        elif item.get_closest_marker("xlio") and not loaded:
            item.add_marker(pytest.mark.skip(
                reason="receive callbacks need XLIO: run in the 'emu' pass"))


def _emulator_loaded() -> bool:
    from pyxlio import emu

    return emu.is_loaded()


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def quick(pytestconfig: pytest.Config) -> bool:
    return bool(pytestconfig.getoption("bench_quick"))


@pytest.fixture(scope="session")
def provider() -> str:
    import pyxlio

    api = pyxlio.get_api()
    return api.provider if api else "kernel"


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    return run.c_tools()


@pytest.fixture(scope="session")
def feed_base(pytestconfig: pytest.Config) -> int:
    base: int = pytestconfig.getoption("bench_feed_base")
    return base


@pytest.fixture(scope="session", autouse=True)
def _pinned() -> None:
    """The receiving process on core 1 (C senders on core 0), as bench/run.py does."""
    run.pin(run.RECEIVER_CPU)


@pytest.fixture(scope="session")
def c_ref() -> Callable[[str, Callable[[], float]], tuple[float, list[float]]]:
    """Measure a C reference once per session: c_ref(key, measure) -> (median ns, runs)."""
    cache: dict[str, tuple[float, list[float]]] = {}

    def get(key: str, measure: Callable[[], float], reps: int = 3) -> tuple[float, list[float]]:
        if key not in cache:
            runs = [measure() for _ in range(reps)]
            cache[key] = (run._med(runs), runs)
        return cache[key]
    return get


def report(benchmark: Any, datagrams: int, c_name: str | None, c_ns: float | None,
           **info: Any) -> float | None:
    """Per-datagram figures and the ratio to C into the benchmark's extra_info."""
    stats = getattr(benchmark, "stats", None)
    ns = None
    if stats is not None and getattr(stats, "stats", None) is not None:
        ns = stats.stats.median * 1e9 / datagrams
    benchmark.extra_info.update(datagrams_per_round=datagrams, **info)
    if ns is not None:
        benchmark.extra_info["ns_per_datagram"] = round(ns, 2)
        if c_ns:
            benchmark.extra_info.update(c_ref=c_name, c_ns=round(c_ns, 2),
                                        speed_vs_c=round(c_ns / ns, 4))
    return ns
