"""Helpers for the emulator tests: find/build the library and the C check program, run cases.

Imported by tests/test_emu_*.py (they put this directory on sys.path).  Imports only the
``pyxlio.emu`` subpackage (loaded from the source tree if ``import pyxlio`` is unavailable).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SRC = os.path.join(ROOT, "src")
EMU_SRC = os.path.join(SRC, "pyxlio", "emu")
INCLUDE = os.path.join(SRC, "pyxlio", "include")
CHECK_C = os.path.join(HERE, "emu_check.c")
STRICT_EXIT = 86
CONFIG_EXIT = 87
EMU_CFLAGS = ["-shared", "-fPIC", "-fvisibility=hidden", "-D_GNU_SOURCE", "-Wall", "-Wextra",
              "-Wno-unused-parameter", "-I", INCLUDE, "-I", EMU_SRC]


def gcc() -> str | None:
    """Path of gcc, or None."""
    return shutil.which("gcc")


def load_emu() -> ModuleType:
    """Import ``pyxlio.emu``; fall back to loading it from the source tree."""
    try:
        import pyxlio.emu as emu  # type: ignore[import-not-found,unused-ignore]

        return emu  # type: ignore[no-any-return,unused-ignore]
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location(
        "pyxlio.emu", os.path.join(EMU_SRC, "__init__.py"), submodule_search_locations=[EMU_SRC]
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pyxlio.emu", mod)
    spec.loader.exec_module(mod)
    return mod


def emulator_built() -> bool:
    """Is the emulator built, in the source tree or in the installed package (a wheel)?"""
    try:
        return os.path.isfile(load_emu().library_path())
    except FileNotFoundError:
        return False


def emu_sources() -> list[str]:
    """The emulator's C sources."""
    return sorted(os.path.join(EMU_SRC, f) for f in os.listdir(EMU_SRC) if f.endswith(".c"))


def build_emu(out: str, extra: list[str] | None = None) -> str:
    """Compile the emulator into ``out`` (like setup.py does) and return it."""
    cc = gcc()
    assert cc is not None
    cmd = [cc, *EMU_CFLAGS, "-O2", *(extra or []), *emu_sources(), "-o", out, "-ldl", "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def build_check(out: str, extra: list[str] | None = None) -> str:
    """Compile tests/emu/emu_check.c into ``out``."""
    cc = gcc()
    assert cc is not None
    cmd = [cc, "-O1", "-g", "-Wall", "-Wextra", "-D_GNU_SOURCE", "-I", INCLUDE, *(extra or []),
           CHECK_C, "-o", out, "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def ensure_built() -> str:
    """``pyxlio.emu.library_path()``, building the library in place first (as
    ``setup.py build_ext --inplace`` would) when a source checkout has not been built."""
    emu = load_emu()
    try:
        return str(emu.library_path())
    except FileNotFoundError:
        if not os.path.isdir(EMU_SRC) or gcc() is None or emu.__file__ is None:
            raise
        build_emu(os.path.join(os.path.dirname(os.path.abspath(emu.__file__)), "libxlio_emu.so"))
        return str(emu.library_path())


def library(tmpdir: str) -> str:
    """The built emulator (``pyxlio.emu.library_path()``), or a copy built into tmpdir."""
    emu = load_emu()
    try:
        return str(emu.library_path())
    except FileNotFoundError:
        return build_emu(os.path.join(tmpdir, "libxlio_emu.so"))


@dataclass
class Result:
    """Outcome of one emu_check case."""

    rc: int
    out: str
    err: str

    def stats(self) -> list[dict[str, str]]:
        """The dump_fd_stats lines of stderr, as dicts."""
        return parse_stats(self.err)

    def warnings(self) -> list[str]:
        """The emulator's one-line diagnostics (without the prefix), stats lines excluded."""
        return [ln[len("pyxlio-emu: "):] for ln in self.err.splitlines()
                if ln.startswith("pyxlio-emu: ") and not ln.startswith("pyxlio-emu: fd=")]


_STAT_RE = re.compile(r"^pyxlio-emu: (fd=\d+ .*)$")


def parse_stats(text: str) -> list[dict[str, str]]:
    """Parse ``pyxlio-emu: fd=.. key=value ...`` lines."""
    rows = []
    for line in text.splitlines():
        m = _STAT_RE.match(line)
        if m:
            rows.append(dict(kv.split("=", 1) for kv in m.group(1).split()))
    return rows


def run_case(check: str, lib: str | None, case: str, strict: bool = True,
             env: Mapping[str, str] | None = None, timeout: float = 30,
             preload_prefix: str | None = None, wrapper: list[str] | None = None) -> Result:
    """Run ``emu_check CASE`` under the emulator (lib None: without it)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYXLIO_EMU_", "XLIO_"))}
    e.pop("LD_PRELOAD", None)
    if lib is not None:
        e["LD_PRELOAD"] = f"{preload_prefix} {lib}" if preload_prefix else lib
    if strict:
        e["PYXLIO_EMU_STRICT"] = "1"
    if env:
        e.update(env)
    p = subprocess.run([*(wrapper or []), check, case], env=e, capture_output=True, text=True,
                       timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


# Every emu_check case with the environment it needs and the exit status it must end with
# under strict mode (the sanitizer and valgrind runs replay this table).
CASES: list[tuple[str, dict[str, str], int]] = [
    ("discover-legacy", {}, 0),
    ("discover-361", {"PYXLIO_EMU_LAYOUT": "3.61"}, 0),
    ("discover-360", {"PYXLIO_EMU_LAYOUT": "3.60"}, STRICT_EXIT),   # a held packet, never freed
    ("discover-394", {"PYXLIO_EMU_LAYOUT": "3.94"}, 0),
    ("returns", {}, 0),
    ("returns", {"PYXLIO_EMU_OFFLOAD": "none"}, 0),
    ("returns", {"PYXLIO_EMU_OFFLOAD": "no-loopback"}, 0),
    ("os-mode", {"PYXLIO_EMU_OFFLOAD": "none"}, 0),
    ("no-loopback", {"PYXLIO_EMU_OFFLOAD": "no-loopback"}, 0),
    ("init-socket", {"XLIO_MEMORY_LIMIT": "1048576"}, 0),
    ("init-epoll", {"XLIO_MEMORY_LIMIT": "1048576"}, 0),
    ("init-reentrant", {"XLIO_MEMORY_LIMIT": "1048576"}, 0),
    ("zcopy-udp", {}, 0),
    ("zcopy-frags", {"PYXLIO_EMU_FRAG_SIZE": "64"}, 0),
    ("zcopy-eagain", {}, 0),
    ("not-offloaded", {}, 0),
    ("thread-offload", {}, 0),
    ("free-errors", {}, STRICT_EXIT),
    ("leak-exit", {}, STRICT_EXIT),
    ("leak-close", {}, STRICT_EXIT),
    ("clean-exit", {}, 0),
    ("dummy-send", {}, 0),
    ("stats", {}, 0),
    ("feed", {"PYXLIO_EMU_FEED": "45001:64,45002:8"}, 0),
    ("callback", {}, 0),
    ("callback-poll", {}, 0),
    ("enomem", {"XLIO_MEMORY_LIMIT": "66240"}, 0),   # the smallest pool: 45 buffers
    ("pool-small", {"XLIO_MEMORY_LIMIT": "128KB"}, 0),
    ("canary", {}, STRICT_EXIT),                        # one leak, reclaimed at close
    ("zcopy-flags", {"PYXLIO_EMU_FEED": "45011:64"}, STRICT_EXIT),  # 5 refusals/violations
    ("rules", {}, 0),
    ("tcp", {}, 0),
    ("fork", {}, 0),
    ("threads", {}, 0),
    ("threads", {}, 0),
    ("passthrough", {}, 0),
]


ULTRA_CHECK_C = os.path.join(HERE, "emu_ultra_check.c")
#: the layouts the Ultra checks run under: the 16-member socket API (3.51, 3.94) and the
#: 23-member Ultra API (3.60, 3.61)
ULTRA_LAYOUTS = ["3.51", "3.61", "3.60", "3.94"]
#: emu_ultra_check cases: (case, environment, exit status under strict mode), each run under
#: every layout of ULTRA_LAYOUTS
ULTRA_CASES: list[tuple[str, dict[str, str], int]] = [
    ("echo", {}, 0),
    ("events", {}, 0),
    ("flush", {}, 0),
    ("listen", {}, 0),
    ("many", {}, 0),
    ("fork", {}, 0),
    ("threads", {}, 0),
    ("init-fresh", {}, 0),
    ("init-started", {}, 0),
    ("passthrough", {"PYXLIO_EMU_OFFLOAD": "none"}, 0),
    ("misuse", {}, STRICT_EXIT),
    ("before-init", {}, STRICT_EXIT),
    ("leaks", {}, STRICT_EXIT),
]


def build_ultra_check(out: str, extra: list[str] | None = None) -> str:
    """Compile tests/emu/emu_ultra_check.c into ``out``."""
    cc = gcc()
    assert cc is not None
    cmd = [cc, "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-I", INCLUDE,
           *(extra or []), ULTRA_CHECK_C, "-o", out, "-ldl", "-pthread"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def python_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment whose Python finds the same ``pyxlio.emu`` as this process."""
    emu = load_emu()
    assert emu.__file__ is not None
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(emu.__file__))))
    e = {k: v for k, v in (os.environ if base is None else base).items()
         if not k.startswith(("PYXLIO_EMU_", "XLIO_")) and k != "LD_PRELOAD"}
    e["PYTHONPATH"] = os.pathsep.join([top, *filter(None, [e.get("PYTHONPATH")])])
    return e
