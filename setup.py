"""Build pyxlio: the Cython extensions and the bundled XLIO emulator (a plain C shared library).

The emulator is built by the same build_ext as the extensions but named ``libxlio_emu.so``
(no Python ABI tag: it is loaded with LD_PRELOAD, never imported) and links no libpython.
Warnings are left visible (-Wall -Wextra); set PYXLIO_WERROR=1 to make them fatal.
PYXLIO_BUILD_EMULATOR=0 builds without the emulator.
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

warn = ["-Wall", "-Wextra", "-Wno-unused-parameter"]
if os.environ.get("PYXLIO_WERROR") == "1":
    warn.append("-Werror")

cython_exts = [
    Extension(
        f"pyxlio.{name}",
        [f"src/pyxlio/{name}.pyx"],
        include_dirs=[INCLUDE],
        extra_compile_args=["-O2", *warn, "-Wno-unused-function"],
        libraries=["dl"],
    )
    for name in ("_api", "_zcopy")
    if os.path.exists(os.path.join(HERE, "src", "pyxlio", f"{name}.pyx"))
]

emulator = Extension(
    EMU_NAME,
    sorted(glob.glob("src/pyxlio/emu/*.c")),
    include_dirs=[INCLUDE, "src/pyxlio/emu"],
    extra_compile_args=["-O2", "-fvisibility=hidden", "-D_GNU_SOURCE", *warn],
    libraries=["dl", "pthread"],
)


class BuildExt(build_ext):
    """build_ext that names the emulator ``libxlio_emu.so`` and keeps libpython out of it."""

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
