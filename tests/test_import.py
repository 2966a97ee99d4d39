"""`import pyxlio` must not start XLIO: it imports no socket, selectors, asyncio, subprocess or
ctypes.util (each of them creates an epoll, which starts XLIO, after which the user allocator
can no longer be registered)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_python

STARTERS = ["socket", "selectors", "asyncio", "subprocess", "ctypes.util", "select"]


@pytest.mark.provider_independent
@pytest.mark.parametrize("emulated", [False, True], ids=["plain", "emulator"])
def test_import_pyxlio_imports_no_xlio_starter(emulated: bool) -> None:
    from pyxlio import emu

    env = emu.environ(strict=True) if emulated else dict(os.environ)
    code = (
        "import sys, json\n"
        "import pyxlio, pyxlio.rules, pyxlio.constants, pyxlio.errors\n"
        f"print(json.dumps([m for m in {STARTERS!r} if m in sys.modules]))\n"
    )
    proc = run_python(code, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.provider_independent
def test_allocator_registers_after_import_pyxlio_under_the_emulator() -> None:
    """The end-to-end proof: importing pyxlio leaves XLIO unstarted, so the ioctl works."""
    from pyxlio import emu

    code = (
        "import pyxlio\n"
        "pyxlio.set_allocator('aligned')\n"
        "print(pyxlio.allocator_state()['registered'])\n"
    )
    proc = run_python(code, env=emu.environ(strict=True))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
