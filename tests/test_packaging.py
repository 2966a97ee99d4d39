"""The sdist builds on a machine with only a compiler: it holds the Cython sources, pyxlio's
header, the emulator's C sources and the stubs, and no generated or compiled files."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.provider_independent


def test_sdist_holds_the_sources_and_nothing_generated(tmp_path: Path) -> None:
    if not (ROOT / "setup.py").exists():
        pytest.skip("not a source checkout")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("pyxlio-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    required = {
        "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE",
        "src/pyxlio/_api.pyx", "src/pyxlio/_zcopy.pyx", "src/pyxlio/_api.pxd",
        "src/pyxlio/_xlio.pxd", "src/pyxlio/_api.pyi", "src/pyxlio/_zcopy.pyi",
        "src/pyxlio/py.typed", "src/pyxlio/include/pyxlio/xlio_abi.h",
    }
    required |= {str(p.relative_to(ROOT)) for p in (ROOT / "src/pyxlio/emu").glob("*.[ch]")}
    assert required <= names, f"missing from the sdist: {sorted(required - names)}"
    generated = {n for n in names if n.endswith((".so", ".o"))
                 or n in ("src/pyxlio/_api.c", "src/pyxlio/_zcopy.c")}
    assert not generated, f"generated files in the sdist: {sorted(generated)}"
