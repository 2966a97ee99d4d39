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
    assert pp.recv_method == "stdlib" and not pp.busy_poll and not pp.tcp
    ul = parse_args(["under-load"])
    assert (ul.mps, ul.reply_every) == (10000, 100)
    tp = parse_args(["throughput", "--mps", "max"])
    assert tp.mps is None
    sr = parse_args(["server", "-p", "0"])
    assert sr.time is None and sr.count is None and sr.port == 0


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


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["fly"], "unknown mode"),
        (["pp", "-i", "example.com"], "must be an IP address"),
        (["pp", "-m", "10"], "at least 14"),
        (["pp", "-m", "70000"], "at most"),
        (["pp", "-t", "0"], "positive number"),
        (["pp", "-t", "1", "-n", "5"], "not allowed with"),
        (["pp", "-p", "70000"], "out of range"),
        (["pp", "-p", "0"], "needs the server's port"),
        (["pp", "--mps", "-5"], "positive integer"),
        (["pp", "--mc"], "multicast group"),
        (["pp", "-i", "239.1.1.1"], "add --mc"),
        (["pp", "-i", "239.1.1.1", "--mc", "--tcp"], "UDP only"),
        (["pp", "--tcp", "--recv-method", "callback"], "UDP only"),
        (["pp", "--recv-method", "fast"], "invalid choice"),
        (["pp", "--dummy-send", "100"], "needs a pyxlio socket"),
        (["sr", "--dummy-send", "100", "--recv-method", "copy"], "client modes"),
        (["tp", "--histogram", "x.png"], "latency modes"),
        (["pp", "--reply-every", "3"], "for under-load"),
        (["pp", "--emu-feed", "5000:64"], "go with --emu"),
        (["pp", "--emu", "--emu-feed", "5000"], "PORT:SIZE"),
        (["pp", "--mc-tx-if", "eth0", "-i", "239.1.1.1", "--mc"], "interface address"),
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
                 "--emu", "--warmup", "--cooldown", "--reply-every", "--mc"):
        assert word in out


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on this TCP port (bound then closed): connection refused, status 1.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert main(["pp", "--tcp", "-p", str(port), "-n", "5", "--warmup", "0", "-q"]) == 1
    assert "cannot connect" in capsys.readouterr().err
