"""The emulator's configuration fails loudly (issue 8): every variable it reads is checked when
the library is loaded, and a bad one - or a config file that is not a readable regular file of
at most 1 MiB, or that holds a bad or overlong rule - ends the process at once with one line
``pyxlio-emu: error: ...`` on stderr and exit status 87.  ``pyxlio.emu.validate_environ`` and
``python -m pyxlio.emu`` say the same before anything runs.

Hang cases (a config file that is /dev/zero or a FIFO) run with a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu"))
import emutest

pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.skipif(emutest.gcc() is None, reason="gcc is needed to build the C checks"),
]

emu = emutest.load_emu()
ERROR = "pyxlio-emu: error: "


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(emu_check program, emulator library)."""
    d = tmp_path_factory.mktemp("emu-config")
    check = emutest.build_check(str(d / "emu_check"))
    lib = emutest.library(str(d))
    yield check, lib


def run(build: tuple[str, str], env: dict[str, str], case: str = "clean-exit",
        timeout: float = 15) -> emutest.Result:
    return emutest.run_case(build[0], build[1], case, env=env, timeout=timeout)


def refused(r: emutest.Result) -> str:
    """The single error line of a run the library refused to start; checks how it ended."""
    assert r.rc == emutest.CONFIG_EXIT, f"rc={r.rc}\n{r.out}\n{r.err}"
    assert r.out == "", "the program ran although its configuration was refused"
    lines = r.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), r.err
    return lines[0][len(ERROR):]


# ---- 1. the config file must be a readable regular file of at most 1 MiB ------------------
def test_config_file_dev_zero_is_refused_not_read_forever(build: tuple[str, str]) -> None:
    msg = refused(run(build, {"XLIO_CONFIG_FILE": "/dev/zero"}))
    assert msg.startswith("XLIO_CONFIG_FILE='/dev/zero' is invalid: it is a character device;")
    assert "regular file of at most 1048576 bytes" in msg


def test_config_file_fifo_is_refused_not_waited_on(build: tuple[str, str],
                                                    tmp_path: object) -> None:
    fifo = os.path.join(str(tmp_path), "conf.fifo")
    os.mkfifo(fifo)
    msg = refused(run(build, {"XLIO_CONFIG_FILE": fifo}))
    assert "it is a FIFO" in msg


def test_config_file_directory_and_missing(build: tuple[str, str], tmp_path: object) -> None:
    assert "it is a directory" in refused(run(build, {"XLIO_CONFIG_FILE": str(tmp_path)}))
    missing = os.path.join(str(tmp_path), "nope.conf")
    msg = refused(run(build, {"XLIO_CONFIG_FILE": missing}))
    assert "cannot open it (No such file or directory)" in msg


def test_config_file_larger_than_1mib(build: tuple[str, str], tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "big.conf")
    line = b"# " + b"x" * 1021 + b"\n"          # 1024 bytes
    with open(path, "wb") as f:
        f.write(line * 1024)                       # exactly 1 MiB: accepted
    assert run(build, {"XLIO_CONFIG_FILE": path}).rc == 0
    with open(path, "ab") as f:
        f.write(b"\n")
    assert "larger than 1048576 bytes" in refused(run(build, {"XLIO_CONFIG_FILE": path}))


def test_libxlio_config_file_fallback_is_checked(build: tuple[str, str]) -> None:
    msg = refused(run(build, {"LIBXLIO_CONFIG_FILE": "/dev/zero"}))
    assert msg.startswith("LIBXLIO_CONFIG_FILE='/dev/zero' is invalid")


# ---- 2. lines of any length: a comment is a comment to its end --------------------------
def write_conf(tmp_path: object, text: str | bytes) -> str:
    path = os.path.join(str(tmp_path), "libxlio.conf")
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("pad", [510, 511, 512, 5000])
def test_long_comment_tail_is_not_a_rule(build: tuple[str, str], tmp_path: object,
                                         pad: int) -> None:
    # the old reader split this line at its 512-byte buffer and applied the tail as a rule
    conf = write_conf(tmp_path, "#" + "x" * pad + "use os udp_receiver 127.0.0.1:40061\n"
                      "use os udp_receiver 127.0.0.1:40062\n")
    env = {"XLIO_CONFIG_FILE": conf, "EMU_CHECK_PORT": "40061", "EMU_CHECK_WANT": "offload"}
    r = run(build, env, "conf-port")
    assert r.rc == 0 and "port 40061 offload" in r.out, r.out + r.err
    env.update(EMU_CHECK_PORT="40062", EMU_CHECK_WANT="os")  # the next line is still read
    r = run(build, env, "conf-port")
    assert r.rc == 0 and "port 40062 os" in r.out, r.out + r.err


def test_long_rule_line_is_an_error_not_split(build: tuple[str, str], tmp_path: object) -> None:
    conf = write_conf(tmp_path, "use os udp_receiver" + " " * 600 + "127.0.0.1:40063\n")
    msg = refused(run(build, {"XLIO_CONFIG_FILE": conf}))
    assert "line 1: a rule line of 634 bytes; accepted: at most 511 bytes" in msg


def test_bad_rule_and_nul_byte_in_config_file(build: tuple[str, str], tmp_path: object) -> None:
    conf = write_conf(tmp_path, "# ok\nlog_level 3\nuse xlio udp_receiver *:1\n")
    msg = refused(run(build, {"XLIO_CONFIG_FILE": conf}))
    assert "line 3: bad rule: unknown transport 'xlio'" in msg
    conf = write_conf(tmp_path, b"# ok\nuse os udp_receiver *:1\x00\n")
    assert "line 2: a NUL byte" in refused(run(build, {"XLIO_CONFIG_FILE": conf}))


def test_crlf_and_indented_config_file(build: tuple[str, str], tmp_path: object) -> None:
    conf = write_conf(tmp_path, "  # comment\r\n\t use os udp_receiver 127.0.0.1:40064\r\n")
    env = {"XLIO_CONFIG_FILE": conf, "EMU_CHECK_PORT": "40064", "EMU_CHECK_WANT": "os"}
    r = run(build, env, "conf-port")
    assert r.rc == 0 and "port 40064 os" in r.out, r.out + r.err


# ---- 3. a pool too small for one datagram is an error naming the minimum ---------------
@pytest.mark.parametrize(("frag", "minimum"), [(None, 66240), ("64", 65536), ("1500", 67584),
                                               ("65536", 65536)])
def test_pool_minimum(build: tuple[str, str], frag: str | None, minimum: int) -> None:
    env = {"PYXLIO_EMU_FRAG_SIZE": frag} if frag else {}
    msg = refused(run(build, {**env, "XLIO_MEMORY_LIMIT": str(minimum - 1)}))
    assert msg.startswith(f"XLIO_MEMORY_LIMIT='{minimum - 1}' is invalid; accepted: a size from "
                          f"{minimum} to "), msg
    r = run(build, {**env, "XLIO_MEMORY_LIMIT": str(minimum)})
    assert r.rc == 0 and r.err == "", r.err


# ---- 4. every variable: bad values refused, with the same message in C and Python --------
BAD = [
    ("XLIO_MEMORY_LIMIT", "abc"),
    ("XLIO_MEMORY_LIMIT", "-1"),
    ("XLIO_MEMORY_LIMIT", "-64MB"),
    ("XLIO_MEMORY_LIMIT", " 64MB"),
    ("XLIO_MEMORY_LIMIT", "64 MB"),
    ("XLIO_MEMORY_LIMIT", "64MiB"),
    ("XLIO_MEMORY_LIMIT", "64MBx"),
    ("XLIO_MEMORY_LIMIT", "0x"),
    ("XLIO_MEMORY_LIMIT", "09"),
    ("XLIO_MEMORY_LIMIT", "0"),
    ("XLIO_MEMORY_LIMIT", "16KB"),
    ("XLIO_MEMORY_LIMIT", "18446744073709551616"),
    ("XLIO_MEMORY_LIMIT", "17179869184G"),
    ("XLIO_MEMORY_LIMIT", "1TB"),
    ("XLIO_MEMORY_LIMIT", "100GB"),
    ("PYXLIO_EMU_FRAG_SIZE", "63"),
    ("PYXLIO_EMU_FRAG_SIZE", "65537"),
    ("PYXLIO_EMU_FRAG_SIZE", "1.5K"),
    ("PYXLIO_EMU_FRAG_SIZE", "+100"),
    ("PYXLIO_EMU_STRICT", "yes"),
    ("PYXLIO_EMU_STRICT", "2"),
    ("PYXLIO_EMU_STRICT", "true"),
    ("PYXLIO_EMU_VERBOSE", "on"),
    ("PYXLIO_EMU_LAYOUT", "3.70"),
    ("PYXLIO_EMU_LAYOUT", "3.94x"),
    ("PYXLIO_EMU_LAYOUT", "361"),
    ("PYXLIO_EMU_OFFLOAD", "None"),
    ("PYXLIO_EMU_OFFLOAD", "0"),
    ("PYXLIO_EMU_OFFLOAD", "no_loopback"),
    ("PYXLIO_EMU_OFFLOAD", "all "),
    ("PYXLIO_EMU_LAYOUT", "LEGACY"),
    ("PYXLIO_EMU_LAYOUT", "x\ny'\\\x7f"),
    ("XLIO_TRACELEVEL", "7"),
    ("XLIO_TRACELEVEL", "-1"),
    ("XLIO_TRACELEVEL", "verbose"),
    ("PYXLIO_EMU_FEED", "5000"),
    ("PYXLIO_EMU_FEED", "5000:64,"),
    ("PYXLIO_EMU_FEED", ",5000:64"),
    ("PYXLIO_EMU_FEED", "0:64"),
    ("PYXLIO_EMU_FEED", "65536:64"),
    ("PYXLIO_EMU_FEED", "5000:7"),
    ("PYXLIO_EMU_FEED", "5000:65508"),
    ("PYXLIO_EMU_FEED", "5000:64,5000:8"),
    ("PYXLIO_EMU_FEED", "+5000:64"),
    ("PYXLIO_EMU_FEED", "5000: 64"),
    ("PYXLIO_EMU_FEED", "-1:64"),
    ("PYXLIO_EMU_FEED", "99999999999999999999:64"),
    ("PYXLIO_EMU_FEED", ",".join(f"{5000 + i}:64" for i in range(33))),
    ("PYXLIO_EMU_STRCT", "1"),
    ("PYXLIO_EMU_MEMORY_LIMIT", "2MB"),
    ("XLIO_MEMORY_LIMIT", "x" * 200),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v[:20]!r}" for n, v in BAD])
def test_bad_variable_refused_same_message_c_and_python(build: tuple[str, str], name: str,
                                                        value: str) -> None:
    msg = refused(run(build, {name: value}))
    assert name in msg and "accepted: " in msg, msg
    with pytest.raises(emu.ConfigError) as e:
        emu.validate_environ({name: value})
    assert str(e.value) == msg


GOOD = [
    ("XLIO_MEMORY_LIMIT", "2MB"),
    ("XLIO_MEMORY_LIMIT", "2mb"),
    ("XLIO_MEMORY_LIMIT", "2048K"),
    ("XLIO_MEMORY_LIMIT", "0x200000"),
    ("XLIO_MEMORY_LIMIT", "010000000"),    # octal, as libxlio reads it: 2 MiB
    ("XLIO_MEMORY_LIMIT", "1G"),
    ("XLIO_MEMORY_LIMIT", ""),
    ("PYXLIO_EMU_FRAG_SIZE", "0x100"),
    ("PYXLIO_EMU_FRAG_SIZE", "64K"),
    ("PYXLIO_EMU_STRICT", "0"),
    ("PYXLIO_EMU_VERBOSE", ""),
    ("PYXLIO_EMU_LAYOUT", "3.51"),
    ("PYXLIO_EMU_OFFLOAD", "all"),
    ("XLIO_TRACELEVEL", "WARNING"),
    ("XLIO_TRACELEVEL", "func+"),
    ("XLIO_TRACELEVEL", "4"),
    ("XLIO_TRACELEVEL", "none"),
    ("PYXLIO_EMU_FEED", "5000:64,5001:8"),
    ("PYXLIO_EMU_FEED", ",".join(f"{5000 + i}:64" for i in range(32))),
    ("PYXLIO_EMU_UNKNOWN", ""),            # empty means unset
]


@pytest.mark.parametrize(("name", "value"), GOOD, ids=[f"{n}={v[:20]!r}" for n, v in GOOD])
def test_good_variable_accepted_c_and_python(build: tuple[str, str], name: str, value: str) -> None:
    r = run(build, {name: value})
    assert r.rc == 0 and "ok clean-exit" in r.out, r.err
    assert ERROR not in r.err
    emu.validate_environ({name: value})


@pytest.mark.parametrize(("name", "value", "case"), [
    ("PYXLIO_EMU_OFFLOAD", "none", "returns"),
    ("PYXLIO_EMU_OFFLOAD", "no-loopback", "returns"),
    ("PYXLIO_EMU_OFFLOAD", "", "returns"),
    ("PYXLIO_EMU_LAYOUT", "legacy", "discover-legacy"),
    ("PYXLIO_EMU_LAYOUT", "3.60", "passthrough"),
    ("PYXLIO_EMU_LAYOUT", "3.61", "discover-361"),
    ("PYXLIO_EMU_LAYOUT", "3.94", "discover-394"),
])
def test_modes_and_layouts_accepted_c_and_python(build: tuple[str, str], name: str, value: str,
                                                 case: str) -> None:
    r = run(build, {name: value}, case=case)
    assert r.rc == 0 and f"ok {case}" in r.out, r.err
    assert ERROR not in r.err
    emu.validate_environ({name: value})


def test_memory_limit_octal_and_hex_sizes(build: tuple[str, str]) -> None:
    for value in ("0x200000", "010000000", "2M"):
        r = run(build, {"XLIO_MEMORY_LIMIT": value, "PYXLIO_EMU_VERBOSE": "1"})
        assert r.rc == 0 and any("pool 2097152 bytes" in w for w in r.warnings()), r.err


def test_environ_raises_config_error() -> None:
    with pytest.raises(emu.ConfigError, match=r"XLIO_MEMORY_LIMIT='abc' is invalid; accepted"):
        emu.environ(memory_limit="abc", base={})
    with pytest.raises(emu.ConfigError, match="PYXLIO_EMU_STRICT='yes'"):
        emu.environ(base={"PYXLIO_EMU_STRICT": "yes"})   # inherited variables too
    with pytest.raises(emu.ConfigError, match="PYXLIO_EMU_FRAG_SIZE='63'"):
        emu.environ(frag_size=63, base={})


# ---- python -m pyxlio.emu checks before it execs ---------------------------------------
def cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = emutest.python_env()
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pyxlio.emu", *args, "--", "sh", "-c",
                           "echo ran"], env=env, capture_output=True, text=True, timeout=60)


def cli_refused(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == emutest.CONFIG_EXIT, r.stdout + r.stderr
    assert "ran" not in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), r.stderr
    return lines[0][len(ERROR):]


def test_cli_refuses_bad_inherited_and_given_variables(build: tuple[str, str]) -> None:
    msg = cli_refused(cli([], {"XLIO_MEMORY_LIMIT": "abc"}))
    assert msg == refused(run(build, {"XLIO_MEMORY_LIMIT": "abc"}))
    assert cli_refused(cli(["--memory-limit", "16KB"], {})).startswith(
        "XLIO_MEMORY_LIMIT='16KB' is invalid; accepted: a size from 66240 to ")
    assert "PYXLIO_EMU_FEED='5000'" in cli_refused(cli(["--feed", "5000"], {}))
    assert "PYXLIO_EMU_STRCT" in cli_refused(cli([], {"PYXLIO_EMU_STRCT": "1"}))
    msg = cli_refused(cli([], {"PYXLIO_EMU_OFFLOAD": "loopback"}))
    assert msg == ("PYXLIO_EMU_OFFLOAD='loopback' is invalid; accepted: all, none or "
                   "no-loopback (empty: all)")


def test_cli_checks_the_config_file_before_exec(tmp_path: object) -> None:
    conf = write_conf(tmp_path, "use os udp_receiver *:70000\n")
    msg = cli_refused(cli(["--config", conf], {}))
    assert "line 1: bad rule: bad port '70000'" in msg
    assert "it is a character device" in cli_refused(cli(["--config", "/dev/zero"], {}))
    conf = write_conf(tmp_path, "#" + "x" * 600 + "\nuse os udp_receiver *:7000\n")
    r = cli(["--config", conf, "--strict"], {})
    assert r.returncode == 0 and r.stdout.strip() == "ran", r.stderr
