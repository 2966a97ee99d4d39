"""A failed ``xlio_init_ex`` is never asked again (a real libxlio only).

libxlio 3.70.2 started on a host with no offload-capable device answers the first
``xlio_init_ex`` with -1/ENODEV and a second one with 0 although it never started; a socket made
then crashes the process.  pyxlio.ultra remembers the failure: every later init() and PollGroup
raises the first error.  Runs where PYXLIO_TEST_LIBXLIO names a libxlio, in a process that
preloads it alone (no start-up shim), so the release's own init decides.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.provider_independent

LIB = os.environ.get("PYXLIO_TEST_LIBXLIO")

PROBE = r"""
import json
from pyxlio import ultra
out = {"kind": ultra.kind().name, "tries": []}
if ultra.available():
    for _ in range(2):
        try:
            ultra.init()
            out["tries"].append("ok")
        except OSError as e:
            out["tries"].append([e.errno, str(e)])
    try:
        ultra.PollGroup().socket()
        out["socket"] = "made"
    except OSError as e:
        out["socket"] = [e.errno, str(e)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not LIB, reason="set PYXLIO_TEST_LIBXLIO to the path of a real libxlio.so "
                    "to run this")
def test_a_failed_init_is_not_asked_again() -> None:
    import json
    env = dict(os.environ, LD_PRELOAD=str(LIB), XLIO_TRACELEVEL="0")
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr          # above all: no crash
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["kind"] == "NONE":
        pytest.skip(f"{LIB} has no Ultra API (kind NONE)")
    first = out["tries"][0]
    if first == "ok":
        pytest.skip(f"xlio_init_ex succeeds here ({LIB} started): nothing to check")
    errno_first = first[0]
    assert errno_first != 0
    assert out["tries"][1][0] == errno_first
    assert "failed earlier" in out["tries"][1][1]
    assert out["socket"][0] == errno_first and "failed earlier" in out["socket"][1]
