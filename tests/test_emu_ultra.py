"""The emulator's Ultra API (tests/emu/emu_ultra_check.c), strict mode, under every layout.

The 23-member Ultra API of libxlio 3.60/3.61 and the 16-member socket API of 3.51 and 3.94x,
served by src/pyxlio/emu/emu_ultra.c over kernel TCP sockets: an echo of many INLINE and
zero-copy messages with their completions, listen/accept (3.60+), the event order of each
release (ERROR, CLOSED, TERMINATED: at once in 3.51, at the next poll in 3.60+), queued sends
and the flushes, the init rules, sockets the emulator does not offload, and every misuse the
real library would crash on, reported as a contract violation (exit status 86) instead.
The same cases run again under AddressSanitizer+UBSan (tests/test_emu_sanitizers.py).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu"))
import emutest

pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.skipif(emutest.gcc() is None, reason="gcc is needed to build the C checks"),
]

ULTRA_API = ("3.60", "3.61")


@pytest.fixture(scope="module")
def ultra_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(emu_ultra_check program, emulator library)."""
    d = tmp_path_factory.mktemp("emu-ultra")
    yield emutest.build_ultra_check(str(d / "emu_ultra_check")), emutest.library(str(d))


def run(build: tuple[str, str], case: str, layout: str,
        env: dict[str, str] | None = None) -> emutest.Result:
    e = {"PYXLIO_EMU_LAYOUT": layout, **(env or {})}
    return emutest.run_case(build[0], build[1], case, env=e, timeout=120)


def violations(r: emutest.Result) -> int:
    m = re.search(r"strict mode: (\d+) contract violation", r.err)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("layout", emutest.ULTRA_LAYOUTS)
@pytest.mark.parametrize(("case", "env", "want"), emutest.ULTRA_CASES,
                         ids=[c[0] for c in emutest.ULTRA_CASES])
def test_ultra_case(ultra_build: tuple[str, str], case: str, env: dict[str, str], want: int,
                    layout: str) -> None:
    r = run(ultra_build, case, layout, env)
    assert r.rc == want, f"{case} {layout}: rc={r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    assert f"ok {case}" in r.out, r.err
    if want == 0:
        assert violations(r) == 0 and "FAIL" not in r.err, r.err


@pytest.mark.parametrize("layout", emutest.ULTRA_LAYOUTS)
def test_ultra_misuse_reported(ultra_build: tuple[str, str], layout: str) -> None:
    # every misuse is one diagnostic line; the process goes on (no crash) and strict mode
    # turns them into exit status 86
    r = run(ultra_build, "misuse", layout)
    assert r.rc == emutest.STRICT_EXIT and "ok misuse" in r.out, r.err
    w = r.warnings()
    expect = {
        "is not a socket handle": 2,
        "is not a poll group handle": 1,
        "is not inside a region registered with ibv_reg_mr": 3,
        "zero-copy send(s) in flight": 1,
        "not held by the application (freed twice, or never received)": 1,
        "is not an xlio_buf of the emulator": 1,
        "is a socket after XLIO_SOCKET_EVENT_TERMINATED": 3,
        "is a destroyed poll group": 2,
    }
    if layout in ULTRA_API:
        expect["xlio_exit: 2 poll group(s)"] = 1
    for text, n in expect.items():
        assert sum(text in x for x in w) == n, (text, w)
    assert violations(r) == sum(expect.values()), r.err


@pytest.mark.parametrize("layout", emutest.ULTRA_LAYOUTS)
def test_ultra_before_init(ultra_build: tuple[str, str], layout: str) -> None:
    r = run(ultra_build, "before-init", layout)
    assert r.rc == emutest.STRICT_EXIT and "ok before-init" in r.out, r.err
    assert [x for x in r.warnings() if "strict mode" not in x] == [
        "xlio_poll_group_create: called before xlio_init_ex() (the Ultra API needs it first; "
        "libxlio would run on uninitialised globals)"]


@pytest.mark.parametrize("layout", emutest.ULTRA_LAYOUTS)
def test_ultra_leaks_at_exit(ultra_build: tuple[str, str], layout: str) -> None:
    r = run(ultra_build, "leaks", layout)
    assert r.rc == emutest.STRICT_EXIT and "ok leaks" in r.out, r.err
    w = r.warnings()
    for text in ("exit: 1 Ultra receive buffer(s) never freed",
                 "exit: 1 poll group(s) never destroyed",
                 "exit: 1 Ultra socket(s) never terminated",
                 "exit: 1 send completion(s) never delivered"):
        assert text in w, (text, w)
    assert violations(r) == 4


def test_ultra_leaks_not_strict(ultra_build: tuple[str, str]) -> None:
    # without strict mode the same report, exit status 0
    r = emutest.run_case(ultra_build[0], ultra_build[1], "leaks", strict=False,
                         env={"PYXLIO_EMU_LAYOUT": "3.61"}, timeout=120)
    assert r.rc == 0 and "exit: 1 poll group(s) never destroyed" in r.warnings(), r.err


@pytest.mark.parametrize("layout", ["3.51", "3.94"])
def test_ultra_init_started_allocator_ignored(ultra_build: tuple[str, str], layout: str) -> None:
    # 3.51.1 stores an allocator given after XLIO started and never calls it: said on stderr
    r = run(ultra_build, "init-started", layout)
    assert r.rc == 0, r.err
    assert sum("the allocator is not used" in x for x in r.warnings()) == 1
