"""The perf tool's command line: defaults, aliases, and clear errors (exit status 2)."""

from __future__ import annotations

import pytest

from pyxlio.perf import main
from pyxlio.perf.cli import UsageError, parse_args

pytestmark = pytest.mark.provider_independent


def test_defaults_per_mode() -> None:
    pp = parse_args(["ping-pong"])
    assert (pp.mode, pp.ip, pp.port, pp.msg_size, pp.time, pp.count) == (
        "ping-pong", "127.0.0.1", 11111, 14, 1.0, None)
    assert (pp.mps, pp.reply_every, pp.warmup, pp.cooldown) == (None, 1, 0.4, 0.05)
    assert (pp.warmup_num, pp.cooldown_num, pp.mc_ttl, pp.mc_loopback) == (8000, 1000, 2, False)
    assert pp.recv_method == "stdlib" and not pp.busy_poll and not pp.tcp
    assert pp.tcp_nodelay and pp.do_warmup and pp.burst == 1 and pp.ci_level == 99
    ul = parse_args(["under-load"])
    assert (ul.mps, ul.reply_every) == (10000, 100)
    tp = parse_args(["throughput", "--mps", "max"])
    assert tp.mps is None
    # sockperf: TCP_NODELAY is off in throughput unless --tcp-avoid-nodelay (which flips it).
    assert not tp.tcp_nodelay
    assert parse_args(["tp", "--tcp-avoid-nodelay"]).tcp_nodelay
    assert not parse_args(["pp", "--tcp-avoid-nodelay"]).tcp_nodelay
    sr = parse_args(["server", "-p", "0"])
    assert sr.time is None and sr.count is None and sr.port == 0
    assert sr.ip == "0.0.0.0" and sr.max_message == 65507


def test_sockperf_message_limits() -> None:
    assert parse_args(["pp", "--tcp", "-m", "100000"]).msg_size == 100000
    assert parse_args(["pp", "--tcp", "-m", "1048575"]).msg_size == 1048575
    assert parse_args(["pp", "-m", "65507"]).msg_size == 65507
    # A server's -m raises its largest message, never lowers it below 65507.
    assert parse_args(["sr", "--tcp", "-m", "100000"]).max_message == 100000
    assert parse_args(["sr", "-m", "1000"]).max_message == 65507


def test_multicast_from_the_address() -> None:
    mc = parse_args(["pp", "-i", "239.1.2.3"])
    assert mc.mc and mc.mc_ttl == 2 and not mc.mc_loopback
    mc = parse_args(["sr", "-i", "239.1.2.3", "--mc-rx-ip", "127.0.0.1", "--mc-ttl", "5",
                     "--mc-loopback-enable", "--force-unicast-reply"])
    assert (mc.mc_rx_if, mc.mc_ttl, mc.mc_loopback, mc.force_unicast_reply) == (
        "127.0.0.1", 5, True, True)
    assert parse_args(["pp", "-i", "239.1.2.3", "--mc-tx-if", "127.0.0.1"]).mc_tx_if == \
        "127.0.0.1"


def test_sockperf_spellings() -> None:
    assert parse_args(["pp", "--zcopyread"]).recv_method == "zcopy"
    assert parse_args(["pp", "--vmazcopyread"]).recv_method == "zcopy"
    assert parse_args(["sr", "--rxfiltercb"]).recv_method == "callback"
    assert parse_args(["pp", "--nonblocked"]).busy_poll
    assert parse_args(["ul", "--pps", "500"]).mps == 500
    cfg = parse_args(["pp", "--histogram", "10:0:200", "--full-rtt", "--ci_sig_level", "95",
                      "--client_ip", "127.0.0.1", "--client_port", "4000", "-b", "3"])
    assert (cfg.histogram, cfg.full_rtt, cfg.ci_level) == ((10, 0, 200), True, 95)
    assert (cfg.client_ip, cfg.client_port, cfg.burst) == ("127.0.0.1", 4000, 3)
    cfg = parse_args(["pb", "--data-file", "x.csv"])
    assert (cfg.mode, cfg.mps, cfg.reply_every, cfg.time) == ("playback", 10000, 100, None)


def test_aliases_and_options() -> None:
    cfg = parse_args(["pp", "-i", "::1", "-p", "2000", "--tcp", "-m", "64", "-n", "500",
                      "--recv-method", "zcopy", "--busy-poll", "--warmup", "0",
                      "--cooldown", "0", "--json", "--dummy-send", "1000"])
    assert cfg.mode == "ping-pong" and cfg.family_v6 and cfg.tcp and cfg.count == 500
    assert cfg.recv_method == "zcopy" and cfg.uses_pyxlio and cfg.dummy_send == 1000.0
    assert parse_args(["ul", "--reply-every", "7", "--mps", "123"]).reply_every == 7
    assert parse_args(["sr"]).mode == "server"
    assert parse_args(["tp"]).mode == "throughput"
    mc = parse_args(["sr", "-i", "239.1.2.3", "--mc", "--mc-rx-if", "127.0.0.1"])
    assert mc.mc and mc.mc_rx_if == "127.0.0.1"
    # sockperf's --dummy-send takes an optional rate (default 10000) or max.
    assert parse_args(["pp", "--recv-method", "copy", "--dummy-send"]).dummy_send == 10000.0
    assert parse_args(["pp", "--recv-method", "copy", "--dummy-send", "max"]).dummy_send == \
        float("inf")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["fly"], "unknown mode"),
        (["pp", "-i", "example.com"], "must be an IP address"),
        (["pp", "-m", "10"], "min: 14"),
        (["pp", "-m", "70000"], "max: 65507"),
        (["pp", "--tcp", "-m", "1048576"], "max: 1048575"),
        (["sr", "-m", "1048576"], "max: 1048575"),
        (["pp", "-t", "0"], "positive number"),
        (["pp", "-t", "1", "-n", "5"], "-t conflicts with -n"),
        (["pp", "-n", "5", "--mps", "100"], "-n conflicts with -t,--mps"),
        (["pp", "-b", "2", "--data-integrity"], "conflicts with -b"),
        (["ul", "--data-integrity"], "for ping-pong"),
        (["sr", "--dont-reply", "--tcp"], "conflicts with --dont-reply"),
        (["pb"], "--data-file must be used"),
        (["pp", "--histogram", "x.png"], "binsize:lowerrange:upperrange"),
        (["pp", "--threads-num", "2"], "not in pyxlio-perf"),
        (["sr", "-F", "e"], "not in pyxlio-perf"),
        (["pp", "--tls"], "not in pyxlio-perf"),
        (["pp", "--force-unicast-reply"], "for the server only"),
        (["sr", "-b", "2"], "for the client only"),
        (["pp", "-f", "feed.txt"], "one address per run"),
        (["sr", "--file", "feed.txt"], "one address per run"),
        (["pp", "--sender-affinity", "0", "--receiver-affinity", "1"], "one thread"),
        (["pp", "-p", "70000"], "out of range"),
        (["pp", "-p", "0"], "needs the server's port"),
        (["pp", "--mps", "-5"], "positive integer"),
        (["pp", "--mc"], "multicast group"),
        (["pp", "-i", "239.1.1.1", "--tcp"], "UDP only"),
        (["pp", "--tcp", "--recv-method", "callback"], "UDP only"),
        (["pp", "--recv-method", "fast"], "invalid choice"),
        (["pp", "--dummy-send", "100"], "needs a pyxlio socket"),
        (["sr", "--dummy-send", "100", "--recv-method", "copy"], "client only"),
        (["tp", "--histogram", "1:0:10"], "not throughput"),
        (["tp", "--plot", "x.png"], "not throughput"),
        (["pp", "--reply-every", "3"], "for under-load"),
        (["pp", "--emu-feed", "5000:64"], "go with --emu"),
        (["pp", "--emu", "--emu-feed", "5000"], "PORT:SIZE"),
        (["pp", "--mc-tx-if", "eth0", "-i", "239.1.1.1"], "interface address"),
        (["pp", "--warmup", "-1"], "zero or a positive"),
    ],
)
def test_usage_errors(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_args(argv)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pyxlio-perf: error:" in err and fragment in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("ping-pong", "--recv-method", "--busy-poll", "--dummy-send", "--histogram",
                 "--emu", "--warmup", "--cooldown", "--reply-every", "--mc", "--plot",
                 "--mc-loopback-enable", "--force-unicast-reply", "--data-integrity",
                 "--full-log", "--tcp-avoid-nodelay", "--zcopyread", "--vmazcopyread",
                 "playback", "pyxlio-perf's own options", "not in pyxlio-perf"):
        assert word in out
    # Each refused sockperf option says why in --help.
    assert "--threads-num" in out and "GIL" in out


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on this TCP port (bound then closed): connection refused, status 1.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert main(["pp", "--tcp", "-p", str(port), "-n", "5", "--warmup", "0", "-q"]) == 1
    assert "cannot connect" in capsys.readouterr().err
