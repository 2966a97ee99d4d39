"""The XLIO emulator driven through its C interface (tests/emu/emu_check.c), strict mode.

One test per bullet of the emulator's issue: API discovery and layouts, global init and the
user allocator, recvfrom_zcopy (UDP, fragments, EAGAIN, not offloaded, TCP), free_packets and
its error cases, receive callbacks and readiness, dummy send, statistics and rings, leak
reports and strict mode, the in-memory feed, rules, fork and threads; then the layouts 3.60,
3.61 and 3.94x, the return values a real libxlio 3.51.1 gives (fact sheet section 9) and the
offload modes (PYXLIO_EMU_OFFLOAD=all|none|no-loopback).
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


def test_api_360_layout_callbacks_hold_and_no_free(emu_build: tuple[str, str]) -> None:
    # 232 bytes, cap_mask 0x2819; callbacks on UDP only; HOLD honoured, but the layout has no
    # free call: the held packet is reported when its socket closes (strict: exit 86); 0x400
    # is MSG_SYN there (the datagram is sent)
    r = run(emu_build, "discover-360", env={"PYXLIO_EMU_LAYOUT": "3.60"})
    assert "ok discover-360" in r.out and "cap_mask=0x2819" in r.out, r.err
    assert r.rc == emutest.STRICT_EXIT
    w = r.warnings()
    assert sum("never freed (outstanding=0 held=1): reclaimed as leaked" in x for x in w) == 1, w


def test_api_394_layout_ioctl_and_dummy_send(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "discover-394", env={"PYXLIO_EMU_LAYOUT": "3.94"})
    assert_ok(r, "discover-394")
    assert "cap_mask=0x3818" in r.out
    (row,) = r.stats()
    assert row["dummy_sends"] == "1"


# ---- return values as a real libxlio 3.51.1 gives them, and the offload modes ---------------
@pytest.mark.parametrize("mode", ["all", "none", "no-loopback"])
def test_return_values_as_libxlio(emu_build: tuple[str, str], mode: str) -> None:
    # register_recv_callback 0 for every wrapped socket (TCP too), EINVAL for others;
    # dump_fd_stats 0 for any fd once started; rings -1 unbound UDP / not a socket, 0 kernel-
    # served or unconnected TCP, 1 offloaded; rings_fds EINVAL only for n <= 0 or NULL
    r = run(emu_build, "returns", env={"PYXLIO_EMU_OFFLOAD": mode})
    assert_ok(r, "returns")


def test_offload_none_behaves_like_a_real_host(emu_build: tuple[str, str]) -> None:
    # copies (FORCE: EIO), dummy send EINVAL, callbacks accepted and never called, rings 0,
    # recvmmsg one datagram a call, a zero-length datagram blocks the wrappers (not the raw call)
    r = run(emu_build, "os-mode", env={"PYXLIO_EMU_OFFLOAD": "none"}, timeout=30)
    assert_ok(r, "os-mode")
    (row,) = r.stats()
    assert row["offloaded"] == "no" and row["rx_zcopy"] == "0" and row["callback"] == "yes"


def test_offload_no_loopback(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "no-loopback", env={"PYXLIO_EMU_OFFLOAD": "no-loopback"})
    assert_ok(r, "no-loopback")


def test_offload_mode_in_the_verbose_init_line(emu_build: tuple[str, str]) -> None:
    r = run(emu_build, "passthrough", env={"PYXLIO_EMU_OFFLOAD": "no-loopback",
                                           "PYXLIO_EMU_LAYOUT": "3.94", "PYXLIO_EMU_VERBOSE": "1"})
    assert_ok(r, "passthrough")
    assert any("layout 3.94, offload no-loopback" in w for w in r.warnings()), r.err


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
    r = run(emu_build, "enomem", env={"XLIO_MEMORY_LIMIT": "66240"})
    assert_ok(r, "enomem")
    assert sum("pool exhausted" in w for w in r.warnings()) == 1


def test_small_pool_serves_again_with_idle_threads(emu_build: tuple[str, str]) -> None:
    # issue 8: idle threads' spare buffers wedged a small pool for ever (ENOMEM on a 64 KiB
    # datagram although every packet was free); it must serve any datagram once all are free
    r = run(emu_build, "pool-small", env={"XLIO_MEMORY_LIMIT": "128KB"}, timeout=60)
    assert_ok(r, "pool-small")


@pytest.mark.parametrize("strict", [True, False])
def test_canary_on_packets_back_in_the_pool(emu_build: tuple[str, str], strict: bool) -> None:
    # freed, dropped by a callback, held then freed, reclaimed at close: the payload reads 0xDB
    r = run(emu_build, "canary", strict=strict)
    assert "ok canary" in r.out, r.err
    assert r.rc == (emutest.STRICT_EXIT if strict else 0), r.err
    w = r.warnings()
    assert sum("reclaimed as leaked" in x for x in w) == 1, w


def test_recvfrom_zcopy_receive_flags(emu_build: tuple[str, str]) -> None:
    # MSG_PEEK keeps the datagram (UDP, feed too), MSG_TRUNC gives the full length, MSG_WAITALL
    # is ignored on UDP; MSG_ERRQUEUE and TCP MSG_PEEK/MSG_WAITALL are refused (EINVAL)
    r = run(emu_build, "zcopy-flags", env={"PYXLIO_EMU_FEED": "45011:64"})
    assert "ok zcopy-flags" in r.out and "feed peek checked" in r.out, r.err
    assert r.rc == emutest.STRICT_EXIT
    w = r.warnings()
    assert sum("still queued" in x or "queued in the socket" in x for x in w) == 1, w
    refused = [x for x in w if "refused with EINVAL" in x]
    assert len(refused) == 4, w
    assert sum("MSG_ERRQUEUE on an offloaded UDP socket" in x for x in refused) == 1
    assert sum("MSG_ERRQUEUE on an offloaded TCP socket" in x for x in refused) == 1
    assert sum("MSG_PEEK on an offloaded TCP socket" in x for x in refused) == 1
    assert sum("MSG_WAITALL on an offloaded TCP socket" in x for x in refused) == 1
    assert any("strict mode: 5 contract violation(s)" in x for x in w), w


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
    # levels 3 and -1 print, 8 is above the default XLIO_TRACELEVEL (3), 9 and -2 are out of
    # range (libxlio: INFO, they print); fds that are not sockets print nothing; then fd 0
    assert len(rows) == 4 + 2
    assert {row["fd"] for row in rows[:4]} == {fd}
    assert {row["fd"] for row in rows[4:]} == {fd, str(int(fd) + 1)}


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
