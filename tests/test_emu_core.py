"""The XLIO emulator driven through its C interface (tests/emu/emu_check.c), strict mode.

One test per bullet of the emulator's issue: API discovery and layouts, global init and the
user allocator, recvfrom_zcopy (UDP, fragments, EAGAIN, not offloaded, TCP), free_packets and
its error cases, receive callbacks and readiness, dummy send, statistics and rings, leak
reports and strict mode, the in-memory feed, rules, fork and threads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu"))
import emutest

pytestmark = [
    pytest.mark.provider_independent,
    pytest.mark.skipif(emutest.gcc() is None, reason="gcc is needed to build the C checks"),
]


@pytest.fixture(scope="session")
def emu_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(emu_check program, emulator library)."""
    d = tmp_path_factory.mktemp("emu")
    check = emutest.build_check(str(d / "emu_check"))
    lib = emutest.library(str(d))
    yield check, lib


def run(build: tuple[str, str], case: str, **kw: object) -> emutest.Result:
    check, lib = build
    return emutest.run_case(check, lib, case, **kw)  # type: ignore[arg-type]


def assert_ok(r: emutest.Result, case: str) -> None:
    assert r.rc == 0, f"{case}: rc={r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    assert f"ok {case}" in r.out


# ---- discovery and layouts --------------------------------------------------------------
def test_no_emulator_getsockopt_fails(emu_build: tuple[str, str]) -> None:
    r = emutest.run_case(emu_build[0], None, "nolib")
    assert_ok(r, "nolib")


def test_api_legacy_layout(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "discover-legacy")
    assert_ok(r, "discover-legacy")
    assert "cap_mask=0x3fff" in r.out
    assert r.warnings() == []


def test_api_361_layout(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "discover-361", env={"PYXLIO_EMU_LAYOUT": "3.61"})
    assert_ok(r, "discover-361")
    assert "cap_mask=0x2818" in r.out


def test_api_layout_default_is_not_361(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "discover-361")
    assert r.rc == 1 and "FAIL" in r.err


# ---- global init and the user allocator -------------------------------------------------
@pytest.mark.parametrize("trigger", ["socket", "epoll"])
def test_init_and_user_allocator(emu_build: tuple[str, str], trigger: str) -> None:
    r = run(emu_build, f"init-{trigger}", env={"XLIO_MEMORY_LIMIT": "1048576"})
    assert_ok(r, f"init-{trigger}")


def test_init_reentrant_allocator(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "init-reentrant", env={"XLIO_MEMORY_LIMIT": "1048576"}, timeout=20)
    assert_ok(r, "init-reentrant")


def test_memory_limit_suffix(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "clean-exit", env={"XLIO_MEMORY_LIMIT": "2MB", "PYXLIO_EMU_VERBOSE": "1"})
    assert_ok(r, "clean-exit")
    assert any("pool 2097152 bytes" in w for w in r.warnings()), r.err


# ---- recvfrom_zcopy ---------------------------------------------------------------------
def test_recvfrom_zcopy_udp(emu_build: tuple[str, str]) -> None:
    assert_ok(run(emu_build, "zcopy-udp"), "zcopy-udp")


def test_recvfrom_zcopy_fragments(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "zcopy-frags", env={"PYXLIO_EMU_FRAG_SIZE": "64"})
    assert_ok(r, "zcopy-frags")
    assert "fragments=16" in r.out


def test_recvfrom_zcopy_eagain_nonblock_dontwait_rcvtimeo(emu_build: tuple[str, str]) -> None:
    assert_ok(run(emu_build, "zcopy-eagain"), "zcopy-eagain")


def test_recvfrom_zcopy_not_offloaded_and_not_socket(emu_build: tuple[str, str]) -> None:
    assert_ok(run(emu_build, "not-offloaded"), "not-offloaded")


def test_thread_offload(emu_build: tuple[str, str]) -> None:
    assert_ok(run(emu_build, "thread-offload"), "thread-offload")


def test_recvfrom_zcopy_tcp(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "tcp")
    assert_ok(r, "tcp")
    assert "tcp chunk" in r.out


def test_pool_exhausted_enomem(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "enomem", env={"XLIO_MEMORY_LIMIT": "16KB"})
    assert_ok(r, "enomem")
    assert sum("pool exhausted" in w for w in r.warnings()) == 1


# ---- free_packets -----------------------------------------------------------------------
def test_free_packets_errors_strict(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "free-errors")
    assert "ok free-errors" in r.out, r.err
    assert r.rc == emutest.STRICT_EXIT
    w = r.warnings()
    assert any("free on the wrong socket" in x for x in w)
    assert sum("already free (double free?)" in x for x in w) == 3
    assert sum("bogus packet id" in x for x in w) == 3
    assert any("strict mode: 7 contract violation(s)" in x for x in w), w


def test_free_packets_errors_not_strict(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "free-errors", strict=False)
    assert_ok(r, "free-errors")
    assert len([x for x in r.warnings() if x.startswith("free_packets(")]) == 7
    assert not any("strict mode" in x for x in r.warnings())


# ---- leaks and strict mode --------------------------------------------------------------
def test_leak_at_exit_strict(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "leak-exit")
    assert "ok leak-exit" in r.out
    assert r.rc == emutest.STRICT_EXIT
    assert any(x.startswith("exit: fd=") and "2 packet(s) never freed (outstanding=2 held=0)" in x
               for x in r.warnings()), r.err


def test_leak_at_exit_reported_not_fatal(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "leak-exit", strict=False)
    assert_ok(r, "leak-exit")
    assert any("never freed" in x for x in r.warnings())


def test_leak_at_close(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "leak-close")
    assert r.rc == emutest.STRICT_EXIT and "ok leak-close" in r.out
    assert any(x.startswith("close(fd=") and "reclaimed as leaked" in x for x in r.warnings())


def test_clean_program_strict_exit_zero(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "clean-exit")
    assert_ok(r, "clean-exit")
    assert r.err == ""


# ---- dummy send, stats, rings -----------------------------------------------------------
def test_dummy_send(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "dummy-send")
    assert_ok(r, "dummy-send")
    (row,) = r.stats()
    assert row["dummy_sends"] == "5" and row["tx_packets"] == "1" and row["proto"] == "udp"


def test_dump_fd_stats_and_rings(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "stats")
    assert_ok(r, "stats")
    fd, port = (x.split("=")[1] for x in r.out.splitlines()[0].split())
    rows = r.stats()
    first = rows[0]
    assert first["fd"] == fd and first["local"] == f"127.0.0.1:{port}"
    assert first["offloaded"] == "yes"
    assert (first["rx_packets"], first["rx_bytes"]) == ("3", "9")
    assert (first["rx_zcopy"], first["rx_copied"]) == ("2", "1")
    assert (first["outstanding"], first["held"], first["dropped"]) == ("1", "0", "0")
    # levels 3 and -1 print, 8 is above the default XLIO_TRACELEVEL (3); then fd 0 = all sockets
    assert len(rows) == 2 + 2
    assert {row["fd"] for row in rows[2:]} == {fd, str(int(fd) + 1)}


def test_dump_fd_stats_tracelevel(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "stats", env={"XLIO_TRACELEVEL": "WARNING"})
    assert_ok(r, "stats")
    # levels 3 and 8 are above WARNING (2): only the level -1 line shows
    assert len(r.stats()) == 1


# ---- feed -------------------------------------------------------------------------------
def test_feed(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "feed", env={"PYXLIO_EMU_FEED": "45001:64,45002:8"})
    assert_ok(r, "feed")
    (row,) = r.stats()
    assert row["feed"] == "yes" and row["rx_zcopy"] == "1000" and row["outstanding"] == "0"


# ---- receive callbacks ------------------------------------------------------------------
def test_recv_callback_verdicts(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "callback")
    assert_ok(r, "callback")
    (row,) = r.stats()
    assert row["callback"] == "yes" and row["dropped"] == "2" and row["held"] == "0"


def test_recv_callback_readiness_poll_select_epoll(emu_build: tuple[str, str]) -> None:
    assert_ok(run(emu_build, "callback-poll"), "callback-poll")


# ---- rules ------------------------------------------------------------------------------
def test_rules_add_conf_rule_and_config_file(emu_build: tuple[str, str], tmp_path: object) -> None:
    conf = os.path.join(str(tmp_path), "libxlio.conf")
    with open(conf, "w") as f:
        f.write("# test\nlog_level 3\nuse os udp_receiver 127.0.0.1:40050\n"
                "use vma udp_receiver *:*\n")
    r = run(emu_build, "rules", env={"XLIO_CONFIG_FILE": conf, "EMU_CHECK_CONF_PORT": "40050"})
    assert_ok(r, "rules")
    assert "config rule checked" in r.out
    assert sum("add_conf_rule: syntax error:" in w for w in r.warnings()) == 1
    assert sum("refused" in w for w in r.warnings()) == 6


@pytest.mark.parametrize(
    ("line", "rc"),
    [
        ("use os udp_receiver *:5000", 0),
        ("use os udp_receiver *:5000\n", 0),
        ("use vma tcp_client 10.0.0.0/8:*:192.168.1.1:80-90", 0),
        ("use sdp tcp_server 1.2.3.4:1", 0),
        ("use sa udp_sender *:*", 0),
        ("use * udp_connect 0.0.0.0/0:1-2:*:*", 0),
        ("use xlio udp_receiver *:5000", 1),
        ("use os udp_receiver *", 1),
        ("use os udp_receiver *:5000:1.2.3.4", 1),
        ("use os udp_receiver 300.1.1.1:1", 1),
        ("use os udp_receiver *:10-5", 1),
        ("use os multicast *:1", 1),
        ("", 1),
    ],
)
def test_rule_syntax(emu_build: tuple[str, str], line: str, rc: int) -> None:
    r = run(emu_build, "rule-syntax", env={"EMU_CHECK_RULE": line})
    assert_ok(r, "rule-syntax")
    assert f"rc={rc}" in r.out
    assert any("syntax error" in w for w in r.warnings()) == (rc == 1)


# ---- fork and threads -------------------------------------------------------------------
def test_fork(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "fork")
    assert_ok(r, "fork")
    assert "child 3 status 86" in r.out  # the child's own leak is its own, fatal in strict
    assert any("a packet of the parent process" in w for w in r.warnings())


def test_threads_receive_and_free(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "threads", timeout=60)
    assert_ok(r, "threads")
    assert r.err == ""


def test_plain_program_unchanged(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "passthrough")
    assert_ok(r, "passthrough")
    assert r.err == ""
