"""pyxlio against a provider that lies: malformed recvfrom_zcopy answers (issue 8).

A fake legacy libxlio (tests/c/fake_zc.c, built here with the C compiler and preloaded into a
child interpreter) serves scripted answers: packet counts, iovec counts and lengths that do not
fit the buffer or disagree with rc, NULL pointers, copies larger than the buffer, every errno.
Its payload memory ends at PROT_NONE pages (a read out of bounds crashes the child), and its
free call aborts on an id it must never get.  The contract pyxlio is held to is written down,
as code, in tests/fuzz/zcfake.py (``parse`` and ``Harness``): a malformed answer is an
XlioError(EPROTO) whose ids are never freed; well-formed packets received before it in the same
call are returned and the next receive call raises; every well-formed id is freed exactly once
on its own socket.

The model also knows receive callbacks and the C filter: XLIO runs them on the packets it
hands pyxlio's registered callback (the fake's callback answers); pyxlio runs them itself, in
recv_batch / recvfrom_zcopy, on the datagrams that arrive as copies, and on every datagram
when XLIO refused the registration (the fake can refuse) or the socket is a stream, with the
same verdicts (DROP frees a zero-copy datagram at once, HOLD moves it into sock.held, RECV
keeps it); a call whose datagrams were all dropped or held keeps waiting; a callback's
exception is raised by a receive call.

Each named scenario (tests/fuzz/zc_cases.py) runs in its own process; the hypothesis state
machine (tests/fuzz/zc_fuzz.py) mixes good and bad answers with receives, views, releases,
callbacks, filters and closes: PYXLIO_FUZZ_EXAMPLES sets its size (250 by default: about 30 s),
PYXLIO_FUZZ_RANDOM=1 draws fresh examples instead of the fixed derandomized ones,
PYXLIO_FUZZ_SHRINK=1 shrinks a failing example (minutes), PYXLIO_FUZZ_ACCEPT accepts known
mismatches to look past them (see zc_fuzz.py and zcfake.KNOWN; the named scenarios ignore it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
FUZZ = HERE / "fuzz"
sys.path.insert(0, str(FUZZ))

import zc_cases  # noqa: E402

pytestmark = pytest.mark.provider_independent


@pytest.fixture(scope="module")
def fake_zc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake provider")
    out = tmp_path_factory.mktemp("fake_zc") / "libfake_zc.so"
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-o",
                           str(out), str(HERE / "c" / "fake_zc.c"), "-ldl", "-lpthread"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if proc.stderr.strip():
        print(proc.stderr, file=sys.stderr)     # warnings stay visible
    return out


def child_env(lib: Path, log: Path) -> dict[str, str]:
    import pyxlio

    env = dict(os.environ)
    env["LD_PRELOAD"] = str(lib)
    env["FAKE_ZC_LOG"] = str(log)
    env.pop("FAKE_ZC_NOABORT", None)
    # The child imports the same pyxlio as this process, and the helpers beside its script.
    src = str(Path(pyxlio.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, str(FUZZ)])
    return env


def run_child(args: list[str], lib: Path, tmp_path: Path, timeout: float,
              extra: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                            str]:
    log = tmp_path / "violations.log"
    env = child_env(lib, log)
    env.update(extra or {})
    try:
        proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung for {timeout} s (pyxlio must never hang on a provider's "
                    f"answer); its output:\n{exc.stdout!s}\n{exc.stderr!s}")
    violations = log.read_text() if log.exists() else ""
    return proc, violations


def explain(proc: subprocess.CompletedProcess[str], violations: str, tail: int = 40) -> str:
    how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
           else f"exit status {proc.returncode}")
    out = "\n".join(proc.stdout.splitlines()[-tail:])
    return (f"{how}\n--- fake provider violations:\n{violations or '(none)'}\n"
            f"--- last steps:\n{out}\n--- stderr:\n{proc.stderr[-6000:]}")


@pytest.mark.parametrize("name", list(zc_cases.CASES))
def test_provider_answer(fake_zc: Path, tmp_path: Path, name: str) -> None:
    """One scenario: pyxlio keeps the contract, nothing crashes, the fake saw no violation."""
    proc, violations = run_child([str(FUZZ / "zc_cases.py"), name], fake_zc, tmp_path,
                                 timeout=120)
    assert proc.returncode == 0 and not violations, explain(proc, violations)


def test_fuzz_malformed_and_good_answers(fake_zc: Path, tmp_path: Path) -> None:
    """Hypothesis mixes good and bad answers with receives, views, releases and closes."""
    pytest.importorskip("hypothesis", reason="the fuzzer needs hypothesis (the test extra)")
    trace = tmp_path / "trace.txt"
    examples = os.environ.get("PYXLIO_FUZZ_EXAMPLES", "250")
    proc, violations = run_child(
        [str(FUZZ / "zc_fuzz.py")], fake_zc, tmp_path, timeout=max(600, 2 * int(examples)),
        extra={"PYXLIO_FUZZ_TRACE": str(trace), "PYXLIO_FUZZ_EXAMPLES": examples})
    # The first example that failed (hypothesis replays it; the replay may differ), else the
    # last one run.
    first = trace.with_name(trace.name + ".first")
    shown = first if first.exists() else trace
    steps = shown.read_text().splitlines()[-60:] if shown.exists() else []
    which = "failing" if first.exists() else "last"
    assert proc.returncode == 0 and not violations, (
        explain(proc, violations, tail=20) + f"\n--- steps of the {which} example:\n"
        + "\n".join(steps))
    assert "no mismatch" in proc.stdout
