"""``python -m pyxlio demo`` and the ``python -m pyxlio`` dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from pyxlio import demo

pytestmark = pytest.mark.provider_independent

TIMEOUT = 60


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyxlio", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, env=_env())


def test_demo_small_count_json() -> None:
    done = _run("demo", "--count", "200000", "--pingpong", "0.3", "--json", "--port", "15077")
    assert done.returncode == 0, done.stderr + done.stdout
    rep: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert rep["ok"] is True and rep["problems"] == []
    assert rep["provider"] == "emulator" and rep["emulator_exit_status"] == 0
    feed = rep["feed"]
    assert feed["datagrams"] == 200000 and feed["bytes"] == 200000 * 64
    assert feed["offloaded"] is True and feed["copied_batches"] == 0
    assert feed["sequence"] == {"received": 200000, "dropped": 0, "duplicated": 0,
                                "out_of_order": 0}
    assert feed["outstanding_after_release"] == 0
    assert feed["datagrams_per_s"] > 0 and feed["recv_batch_call_usec"]["count"] == feed["batches"]
    pp = rep["ping_pong"]
    assert pp["round_trips"] > 0 and pp["server_exit_status"] == 0
    assert pp["client_offloaded"] is True and pp["server_offloaded"] is True
    lat = pp["half_rtt_usec"]
    assert lat["min"] <= lat["percentiles"]["50"] <= lat["percentiles"]["99"] <= lat["max"]


def test_demo_text_report() -> None:
    done = _run("demo", "--count", "50000", "--pingpong", "0", "--size", "200", "--batch", "64",
                "--port", "15078")
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    assert "50,000 datagrams of 200 B" in out
    assert "sequence gaps: 0 dropped, 0 duplicated, 0 out of order" in out
    assert "outstanding after release = 0" in out
    assert "RESULT: OK" in out and "emulator strict exit check: passed" in out


def test_demo_bad_arguments() -> None:
    for args in (["--count", "0"], ["--size", "8"], ["--batch", "0"], ["--port", "70000"]):
        done = _run("demo", *args)
        assert done.returncode == 2, args
        assert "error" in done.stderr


def test_demo_verdict_catches_problems() -> None:
    feed = {"datagrams": 10, "offloaded": True, "copied_batches": 0, "wrong_size_batches": 0,
            "outstanding_after_release": 0,
            "sequence": {"received": 10, "dropped": 0, "duplicated": 0, "out_of_order": 0}}
    good = {"requested": 10, "feed": feed}
    assert demo._verdict(good) == []
    for key, value, fragment in (
        ("outstanding_after_release", 3, "never released"),
        ("copied_batches", 1, "copied"),
        ("offloaded", False, "not offloaded"),
        ("datagrams", 5, "5 of 10"),
        ("sequence", {"received": 10, "dropped": 2, "duplicated": 0, "out_of_order": 0}, "gaps"),
    ):
        bad = {"requested": 10, "feed": {**feed, key: value}}
        problems = demo._verdict(bad)
        assert len(problems) == 1 and fragment in problems[0]
    pp_bad = {**good, "ping_pong": {"round_trips": 0, "server_exit_status": 86}}
    assert len(demo._verdict(pp_bad)) == 2


def test_dispatcher() -> None:
    done = _run("--help")
    assert done.returncode == 0 and "demo" in done.stdout and "perf" in done.stdout
    done = _run()
    assert done.returncode == 2
    done = _run("frobnicate")
    assert done.returncode == 2 and "unknown command" in done.stderr
    done = _run("perf", "pp", "-m", "3")
    assert done.returncode == 2 and "min: 14" in done.stderr
    done = _run("info", "--json")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)
