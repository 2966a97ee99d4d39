"""The emulator's C checks again under AddressSanitizer+UBSan and under valgrind (slow).

Same tables of cases and exit statuses as tests/test_emu_core.py and tests/test_emu_ultra.py;
the runs must also be free of sanitizer reports and valgrind errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu"))
import emutest

pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.slow,
    pytest.mark.skipif(emutest.gcc() is None, reason="gcc is needed to build the C checks"),
]

SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined",
       "-g", "-O1"]
VALGRIND_CASES = ["zcopy-udp", "zcopy-frags", "free-errors", "callback", "callback-poll", "feed",
                  "tcp", "enomem", "stats", "rules", "leak-close", "pool-small", "canary",
                  "zcopy-flags"]


def config_cases(tmp: str) -> list[tuple[str, dict[str, str], int]]:
    """Configurations read at load: (id, environment, exit status) - the config file reader
    on long lines, and refusals (exit 87)."""
    good = os.path.join(tmp, "good.conf")
    with open(good, "w") as f:
        f.write("#" + "x" * 5000 + "use os udp_receiver *:1\n\tuse os udp_receiver *:2\r\n"
                "log_level 3\n" + "# c\n" * 2000)
    bad = os.path.join(tmp, "bad.conf")
    with open(bad, "w") as f:
        f.write("use os udp_receiver" + " " * 600 + "*:1\n")
    return [("conf-good", {"XLIO_CONFIG_FILE": good}, 0),
            ("conf-long-rule", {"XLIO_CONFIG_FILE": bad}, emutest.CONFIG_EXIT),
            ("conf-dev-zero", {"XLIO_CONFIG_FILE": "/dev/zero"}, emutest.CONFIG_EXIT),
            ("bad-memory-limit", {"XLIO_MEMORY_LIMIT": "x" * 300}, emutest.CONFIG_EXIT),
            ("bad-feed", {"PYXLIO_EMU_FEED": "5000:64,5000:64"}, emutest.CONFIG_EXIT)]


CONFIG_IDS = ["conf-good", "conf-long-rule", "conf-dev-zero", "bad-memory-limit", "bad-feed"]


def _libasan() -> str | None:
    cc = emutest.gcc()
    assert cc is not None
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                          text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="session")
def asan_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(check program, emulator, libasan) built with -fsanitize=address,undefined."""
    libasan = _libasan()
    if libasan is None:
        pytest.skip("gcc has no libasan.so (install libasan for the sanitizer run)")
    d = tmp_path_factory.mktemp("emu-asan")
    lib = emutest.build_emu(str(d / "emu_asan.so"), SAN)
    check = emutest.build_check(str(d / "emu_check_asan"), SAN)
    yield check, lib, libasan


@pytest.mark.parametrize(("case", "env", "want"), emutest.CASES,
                         ids=["-".join([c[0], *([c[1]["PYXLIO_EMU_OFFLOAD"]]
                                                if "PYXLIO_EMU_OFFLOAD" in c[1] else [])])
                              for c in emutest.CASES])
def test_asan_ubsan_clean(asan_build: tuple[str, str, str], case: str, env: dict[str, str],
                          want: int) -> None:
    check, lib, libasan = asan_build
    e = dict(env)
    e["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=77"
    e["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=78"
    r = emutest.run_case(check, lib, case, env=e, preload_prefix=libasan, timeout=120)
    assert "ERROR: AddressSanitizer" not in r.err and "runtime error:" not in r.err, r.err
    assert "ERROR: LeakSanitizer" not in r.err, r.err
    assert r.rc == want, f"rc={r.rc}\n{r.out}\n{r.err}"
    assert f"ok {case}" in r.out


@pytest.fixture(scope="session")
def asan_ultra_check(asan_build: tuple[str, str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/emu/emu_ultra_check.c built with -fsanitize=address,undefined."""
    d = tmp_path_factory.mktemp("emu-ultra-asan")
    return emutest.build_ultra_check(str(d / "emu_ultra_check_asan"), SAN)


@pytest.mark.parametrize("layout", emutest.ULTRA_LAYOUTS)
@pytest.mark.parametrize(("case", "env", "want"), emutest.ULTRA_CASES,
                         ids=[c[0] for c in emutest.ULTRA_CASES])
def test_asan_ubsan_clean_ultra(asan_build: tuple[str, str, str], asan_ultra_check: str,
                                case: str, env: dict[str, str], want: int, layout: str) -> None:
    _, lib, libasan = asan_build
    e = {"PYXLIO_EMU_LAYOUT": layout, **env}
    e["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=77"
    e["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=78"
    r = emutest.run_case(asan_ultra_check, lib, case, env=e, preload_prefix=libasan, timeout=240)
    assert "ERROR: AddressSanitizer" not in r.err and "runtime error:" not in r.err, r.err
    assert "ERROR: LeakSanitizer" not in r.err, r.err
    assert r.rc == want, f"rc={r.rc}\n{r.out}\n{r.err}"
    assert f"ok {case}" in r.out


@pytest.mark.parametrize("which", CONFIG_IDS)
def test_asan_ubsan_clean_config(asan_build: tuple[str, str, str], tmp_path: object,
                                 which: str) -> None:
    check, lib, libasan = asan_build
    _, env, want = next(c for c in config_cases(str(tmp_path)) if c[0] == which)
    e = dict(env)
    e["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=77"
    e["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=78"
    r = emutest.run_case(check, lib, "clean-exit", env=e, preload_prefix=libasan, timeout=120)
    assert "ERROR: AddressSanitizer" not in r.err and "runtime error:" not in r.err, r.err
    assert r.rc == want, f"rc={r.rc}\n{r.out}\n{r.err}"


@pytest.fixture(scope="session")
def plain_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("emu-vg")
    return emutest.build_check(str(d / "emu_check")), emutest.library(str(d))


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.parametrize("case", VALGRIND_CASES)
def test_valgrind_clean(plain_build: tuple[str, str], case: str) -> None:
    check, lib = plain_build
    env = next(c[1] for c in emutest.CASES if c[0] == case)
    want = next(c[2] for c in emutest.CASES if c[0] == case)
    vg = [shutil.which("valgrind") or "valgrind", "-q", "--error-exitcode=99",
          "--trace-children=no", "--child-silent-after-fork=yes"]
    r = emutest.run_case(check, lib, case, env=env, wrapper=vg, timeout=240)
    assert r.rc == want, f"rc={r.rc}\n{r.out}\n{r.err}"
    bad = ("Invalid read", "Invalid write", "Invalid free", "uninitialised", "Conditional jump",
           "Syscall param", "Mismatched free")
    assert not any(b in r.err for b in bad), r.err
    assert f"ok {case}" in r.out


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.parametrize("which", CONFIG_IDS)
def test_valgrind_clean_config(plain_build: tuple[str, str], tmp_path: object, which: str) -> None:
    check, lib = plain_build
    _, env, want = next(c for c in config_cases(str(tmp_path)) if c[0] == which)
    vg = [shutil.which("valgrind") or "valgrind", "-q", "--error-exitcode=99"]
    r = emutest.run_case(check, lib, "clean-exit", env=env, wrapper=vg, timeout=240)
    assert r.rc == want, f"rc={r.rc}\n{r.out}\n{r.err}"
    bad = ("Invalid read", "Invalid write", "Invalid free", "uninitialised", "Conditional jump",
           "Syscall param", "Mismatched free")
    assert not any(b in r.err for b in bad), r.err
