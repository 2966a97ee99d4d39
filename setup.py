"""Build pyxlio: the Cython extensions and the bundled XLIO emulator (a plain C shared library).

The emulator is built by the same build_ext as the extensions but named ``libxlio_emu.so``
(no Python ABI tag: it is loaded with LD_PRELOAD, never imported) and links no libpython.
Warnings are left visible (-Wall -Wextra); set PYXLIO_WERROR=1 to make them fatal.
PYXLIO_BUILD_EMULATOR=0 builds without the emulator.
PYXLIO_BUILD_JOBS=N compiles N extensions at once when no --parallel/-j is given (a frontend
such as ``python -m build`` or pip passes none).
PYXLIO_SANITIZE=1 builds the Cython extensions with AddressSanitizer and UBSan (-O1 -g); they
then import only in a process that preloads the ASan runtime first, as the test harness does
when it sees the same variable (tests/conftest.py).  The emulator is not instrumented here: its
own sanitizer run is tests/test_emu_sanitizers.py.
"""

from __future__ import annotations

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join("src", "pyxlio", "include")
EMU_NAME = "pyxlio.emu.libxlio_emu"
ABI_HEADER = os.path.join(INCLUDE, "pyxlio", "xlio_abi.h")

warn = ["-Wall", "-Wextra", "-Wno-unused-parameter"]
if os.environ.get("PYXLIO_WERROR") == "1":
    warn.append("-Werror")
SANITIZE = os.environ.get("PYXLIO_SANITIZE") == "1"
# After Python's own CFLAGS (which carry -O2 or -O3), so -O1 wins.
san_compile = (["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
               if SANITIZE else ["-O2"])
san_link = ["-fsanitize=address,undefined"] if SANITIZE else []

cython_exts = [
    Extension(
        f"pyxlio.{name}",
        [f"src/pyxlio/{name}.pyx"],
        include_dirs=[INCLUDE],
        extra_compile_args=[*san_compile, *warn, "-Wno-unused-function"],
        extra_link_args=san_link,
        libraries=["dl"],
        depends=[ABI_HEADER],
    )
    for name in ("_api", "_zcopy", "_ultra")
    if os.path.exists(os.path.join(HERE, "src", "pyxlio", f"{name}.pyx"))
]
# pyxlio.perf's inner loops (the ping-pong client and the server): plain C over libc sockets.
if os.path.exists(os.path.join(HERE, "src", "pyxlio", "perf", "_loops.pyx")):
    cython_exts.append(Extension(
        "pyxlio.perf._loops",
        ["src/pyxlio/perf/_loops.pyx"],
        extra_compile_args=[*san_compile, *warn, "-Wno-unused-function"],
        extra_link_args=san_link,
    ))

emulator = Extension(
    EMU_NAME,
    sorted(glob.glob("src/pyxlio/emu/*.c")),
    include_dirs=[INCLUDE, "src/pyxlio/emu"],
    # A header edit alone must rebuild the emulator (setuptools compares these times).
    depends=[ABI_HEADER, "src/pyxlio/emu/emu.h"],
    extra_compile_args=["-O2", "-fvisibility=hidden", "-D_GNU_SOURCE", *warn],
    libraries=["dl", "pthread"],
)


class BuildExt(build_ext):
    """build_ext that names the emulator ``libxlio_emu.so`` and keeps libpython out of it."""

    def finalize_options(self) -> None:
        super().finalize_options()
        jobs = os.environ.get("PYXLIO_BUILD_JOBS", "")
        if self.parallel is None and jobs.isdigit() and int(jobs) > 1:
            self.parallel = int(jobs)

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the dotted name by some paths and with the bare module name by others
        # (distutils' get_ext_fullpath): keep the convention, drop only the ABI tag.
        parts = fullname.split(".")
        if parts[-1] == EMU_NAME.rsplit(".", 1)[-1]:
            return os.path.join(*parts) + ".so"
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        if ext.name == EMU_NAME:
            return []
        return super().get_export_symbols(ext)

    def get_libraries(self, ext: Extension) -> list[str]:
        if ext.name == EMU_NAME:
            return list(ext.libraries)
        return super().get_libraries(ext)


ext_modules = cythonize(
    cython_exts,
    compiler_directives={
        "language_level": 3,
        "embedsignature": True,
        # Signatures as Argument Clinic text (__text_signature__): inspect.signature, help(),
        # Sphinx and stubtest see every def's parameters.  binding=True would give the same
        # through cyfunctions, but costs ~190 instructions per recvfrom_zcopy() call
        # (bench/instructions.py: 3954 -> 4147 per datagram); this costs nothing at run time.
        "embedsignature.format": "clinic",
        # Annotations document; they must not coerce ("yes" would become a C bint True).
        "annotation_typing": False,
        "binding": False,
        "boundscheck": True,
        "wraparound": False,
        "cdivision": True,
    },
    include_path=["src/pyxlio"],
)
# PYXLIO_BUILD_EMULATOR=0 leaves the emulator out (e.g. a distribution that ships only for
# hosts with a real libxlio); pyxlio.emu.library_path() then explains that it was not built.
if emulator.sources and os.environ.get("PYXLIO_BUILD_EMULATOR", "1") != "0":
    ext_modules.append(emulator)

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
