"""The text report against the real sockperf's: the same lines, fields and order.

REAL_PP and REAL_TP are the report of a sockperf 3.10 (built from its public sources) run on
loopback, copied as it printed them (colour codes included). A parser written for those lines -
what a user's script does - must read pyxlio.perf's report the same way; pyxlio.perf's own lines
start with 'pyxlio-perf: ' and the parser skips them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyxlio.perf import net, report, stats
from pyxlio.perf.cli import parse_args
from pyxlio.perf.client import ClientResult, load_playback

pytestmark = pytest.mark.provider_independent

E = "\x1b"
REAL_PP = f"""\
sockperf: {E}[2;35m== version #3.10-23.gited92afb185e6 == {E}[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 127.0.0.1       PORT = 12001 # UDP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=65044; ReceivedMessages=65043
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=36384; ReceivedMessages=36384
sockperf: {E}[2;35m====> avg-latency=7.542 (std-dev=4.086, mean-ad=0.404, median-ad=0.059, siqr=0.160, cv=0.542, std-error=0.021, 99.0% ci=[7.487, 7.597]){E}[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Latency is 7.542 usec
sockperf: {E}[2;35mTotal 36384 observations{E}[0m; each percentile contains 363.84 observations
sockperf: ---> <MAX> observation =  509.046
sockperf: ---> percentile 99.999 =  509.046
sockperf: ---> percentile 99.990 =   78.792
sockperf: ---> percentile 99.900 =   30.575
sockperf: ---> percentile 99.000 =    8.858
sockperf: ---> percentile 90.000 =    7.766
sockperf: ---> percentile 75.000 =    7.561
sockperf: ---> percentile 50.000 =    7.270
sockperf: ---> percentile 25.000 =    7.240
sockperf: ---> <MIN> observation =    7.155
"""  # noqa: E501

REAL_TP = f"""\
sockperf: {E}[2;35m== version #3.10-23.gited92afb185e6 == {E}[0m
sockperf[CLIENT] send on:
[ 0] IP = 127.0.0.1       PORT = 12001 # UDP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: Total of 75008 messages sent in 1.000 sec

sockperf: {E}[2;35mNOTE: test was performed, using msg-size=4000, mps=1000. For getting maximum throughput use --mps=max (and consider --msg-size=1472 or --msg-size=4096){E}[0m
sockperf: Summary: Message Rate is 1001 [msg/sec], Packet Rate is about 3003 [pkt/sec] (3 ip frags / msg)
sockperf: Summary: BandWidth is 3.819 MBps (30.548 Mbps)
"""  # noqa: E501

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NUM = r"(-?[\d.]+|-?nan|-?inf)"
PATTERNS = {
    "total_run": rf"^sockperf: \[Total Run\] RunTime={NUM} sec; Warm up time=(\d+) msec; "
                 r"SentMessages=(\d+); ReceivedMessages=(\d+)$",
    "valid": rf"^sockperf: \[Valid Duration\] RunTime={NUM} sec; SentMessages=(\d+); "
             r"ReceivedMessages=(\d+)$",
    "avg": rf"^sockperf: ====> avg-latency={NUM} \(std-dev={NUM}, mean-ad={NUM}, "
           rf"median-ad={NUM}, siqr={NUM}, cv={NUM}, std-error={NUM}, ([\d.]+)% "
           rf"ci=\[{NUM}, {NUM}\]\)$",
    "errors": r"^sockperf: # dropped messages = (\d+); # duplicated messages = (\d+); "
              r"# out-of-order messages = (\d+)$",
    "summary": rf"^sockperf: Summary: Latency is {NUM} usec$",
    "observations": r"^sockperf: Total (\d+) observations; each percentile contains ([\d.]+) "
                    r"observations$",
    "max": rf"^sockperf: ---> <MAX> observation = +{NUM}$",
    "p50": rf"^sockperf: ---> percentile 50\.000 = +{NUM}$",
    "p99": rf"^sockperf: ---> percentile 99\.000 = +{NUM}$",
    "min": rf"^sockperf: ---> <MIN> observation = +{NUM}$",
    "banner": r"^\[ 0\] IP = (\S+) +PORT = +(\d+) # (UDP|TCP)$",
    "tp_total": rf"^sockperf: Total of (\d+) messages sent in {NUM} sec$",
    "tp_rate": r"^sockperf: Summary: Message Rate is (\d+) \[msg/sec\]"
               r"(?:, Packet Rate is about (\d+) \[pkt/sec\] \((\d+) ip frags / msg\))?$",
    "tp_bw": rf"^sockperf: Summary: BandWidth is {NUM} MBps \({NUM} Mbps\)$",
}


def parse_sockperf(text: str) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """A sockperf-report parser as a user would write it: (fields, order of keys)."""
    found: dict[str, tuple[str, ...]] = {}
    order: list[str] = []
    for raw in text.splitlines():
        line = ANSI.sub("", raw)
        if line.startswith("pyxlio-perf: "):
            continue
        for key, pat in PATTERNS.items():
            m = re.match(pat, line)
            if m:
                found[key] = m.groups()
                order.append(key)
    return found, order


def test_parser_reads_the_real_sockperf() -> None:
    pp, order = parse_sockperf(REAL_PP)
    assert order == ["banner", "total_run", "valid", "avg", "errors", "summary", "observations",
                     "max", "p99", "p50", "min"]
    assert pp["avg"][0] == "7.542" and pp["avg"][7] == "99.0"
    tp, order = parse_sockperf(REAL_TP)
    assert order == ["banner", "tp_total", "tp_rate", "tp_bw"]
    assert tp["tp_rate"] == ("1001", "3003", "3")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyxlio.perf", *args], capture_output=True,
                          text=True, timeout=60, env=_env())


@pytest.fixture(scope="module")
def server_port() -> Any:
    proc = subprocess.Popen([sys.executable, "-m", "pyxlio.perf", "sr", "-i", "127.0.0.1", "-p",
                             "0", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    assert proc.stderr is not None
    m = re.search(r":(\d+) ", proc.stderr.readline())
    assert m is not None
    yield int(m.group(1))
    proc.send_signal(2)
    out, _err = proc.communicate(timeout=60)
    assert json.loads(out)["received"] > 0


def test_our_ping_pong_report_parses_as_sockperf(server_port: int) -> None:
    done = _run("pp", "-p", str(server_port), "-t", "1", "--mps", "3000")
    assert done.returncode == 0, done.stderr
    ours, order = parse_sockperf(done.stdout)
    _real, real_order = parse_sockperf(REAL_PP)
    assert order == real_order, done.stdout
    sent = int(ours["total_run"][2])
    assert ours["banner"] == ("127.0.0.1", str(server_port), "UDP")
    assert ours["total_run"][1] == "400" and int(ours["total_run"][3]) <= sent
    assert float(ours["avg"][1]) >= 0 and ours["avg"][7] == "99.0"
    lo, hi, avg = float(ours["avg"][8]), float(ours["avg"][9]), float(ours["avg"][0])
    assert lo <= avg <= hi
    assert float(ours["min"][0]) <= float(ours["p50"][0]) <= float(ours["max"][0])
    # sockperf's lines come in sockperf's order, before pyxlio-perf's additions.
    lines = done.stdout.splitlines()
    assert lines[1].startswith("sockperf[CLIENT] send on:sockperf: using recvfrom()")
    assert lines.index("sockperf: Test ended") < lines.index(
        next(ln for ln in lines if "[Total Run]" in ln))


def test_our_throughput_report_parses_as_sockperf(server_port: int) -> None:
    done = _run("tp", "-p", str(server_port), "-t", "1", "--mps", "1000", "-m", "4000")
    assert done.returncode == 0, done.stderr
    ours, order = parse_sockperf(done.stdout)
    assert order == ["banner", "tp_total", "tp_rate", "tp_bw"]
    n, secs = int(ours["tp_total"][0]), float(ours["tp_total"][1])
    rate = int(ours["tp_rate"][0])
    assert rate == int(0.5 + n / secs)
    assert ours["tp_rate"][1:] == (str(rate * 3), "3")  # 4000 bytes: 3 IP fragments
    assert "NOTE: test was performed, using msg-size=4000, mps=1000." in done.stdout


def test_histogram_full_log_and_full_rtt(server_port: int, tmp_path: Path) -> None:
    log = tmp_path / "full.csv"
    done = _run("pp", "-p", str(server_port), "-n", "300", "--warmup-num", "10",
                "--cooldown-num", "5", "--histogram", "1:0:100", "--full-log", str(log),
                "--full-rtt")
    assert done.returncode == 0, done.stderr
    out = ANSI.sub("", done.stdout)
    assert re.search(r"^sockperf: ====> avg-rtt=", out, re.M)
    assert "sockperf: [Total Run] RunTime=" in out and "Warm up packets=10;" in out
    assert re.search(r"^sockperf: \[Histogram\] Display", out, re.M)
    text = log.read_text()
    assert text.startswith("------------------------------\ntest was performed using the "
                           "following parameters: --burst=1 --msg-size=14 "
                           "--number-of-packets=300 --full-rtt\n")
    rows = [ln for ln in text.splitlines() if re.match(r"^\d+, [\d.]+, [\d.]+, [\d.]+$", ln)]
    assert len(rows) == int(re.search(r"Total (\d+) observations", out).group(1))  # type: ignore[union-attr]
    assert "packet, txTime(sec), rxTime(sec), rtt(usec)" in text
    assert "histogram was built using the following parameters: --h_bin_size_us=1 " \
           "--h_lower_range_us=0 --h_upper_range_us=100" in text


def test_playback(server_port: int, tmp_path: Path) -> None:
    data = tmp_path / "pb.csv"
    data.write_text("# time, size\n" + "".join(f"{0.001 * (i + 1):.6f}, {14 + i}\n"
                                               for i in range(300)))
    done = _run("pb", "-p", str(server_port), "--data-file", str(data), "--reply-every", "3",
                "--json", "-q")
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["mode"] == "playback" and res["sent"] == 300 and res["replies"] <= 100
    assert res["latency"]["count"] > 0
    bad = tmp_path / "bad.csv"
    bad.write_text("0.002, 20\n0.001, 20\n")
    done = _run("pb", "-p", str(server_port), "--data-file", str(bad), "-q")
    assert done.returncode == 1 and "out-of-order timestamp at line #2" in done.stderr


def test_playback_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "pb.csv"
    f.write_text("# c\n\n0.5, 100\n1.5, 14\n")
    assert load_playback(str(f)) == [(500_000_000, 100), (1_000_000_000, 14)]
    for body, fragment in (("0.1, 13\n", "illegal time or size"),
                           ("0.1, 10\n0.1, 20\n", "illegal time or size"),
                           ("x\n", "can't read time & size")):
        f.write_text(body)
        with pytest.raises(Exception, match=re.escape(fragment)):
            load_playback(str(f))


# ---- units ----------------------------------------------------------------------------------


def test_sockperf_summary_hand_computed() -> None:
    # Round trips 2..20 us (10 samples, whole ns): half round trips 1..10 us.
    s = stats.sockperf_summary([2000 * k for k in range(1, 11)])
    assert s is not None
    assert s.avg == 5.5 and s.min == 1.0 and s.max == 10.0
    assert s.std_dev == pytest.approx(3.028, abs=1e-3)  # sample std-dev, rounded to 1 ns
    assert s.mean_ad == 2.5
    # median 5.5 us; |x - median| = 0.5, 0.5, 1.5, 1.5, ...: median 2.5 us * 1.4826...
    assert s.median_ad == pytest.approx(3.706, abs=1e-3)
    assert s.siqr == 2.5  # (p75 8 us - p25 3 us) / 2
    assert s.cv == pytest.approx(s.std_dev / 5.5)
    assert s.std_error == pytest.approx(s.std_dev / 10 ** 0.5)
    assert s.ci_low < 5.5 < s.ci_high
    assert stats.normal_quantile(0.995) == pytest.approx(2.5758, abs=1e-3)
    full = stats.sockperf_summary([2000 * k for k in range(1, 11)], full_rtt=True)
    assert full is not None and full.avg == 11.0


def test_few_samples_leave_out_low_percentiles() -> None:
    s = stats.sockperf_summary([4000])
    assert s is not None
    # n = 1: index floor(0.5 + p) - 1 is 0 for p >= 0.5 and -1 (no line) for p = 0.25.
    assert set(s.percentiles) == {"99.999", "99.99", "99.9", "99", "90", "75", "50"}
    r = ClientResult(mode="ping-pong", protocol="udp", recv_method="stdlib", busy_poll=False,
                     msg_size=14, mps=None, reply_every=1, sent=1, replies=1, latency=s,
                     valid_sent=1, valid_received=1)
    text = report.client_text(r)
    assert "percentile 25.000" not in text and "percentile 50.000 =    2.000" in text


def test_histogram_text_as_sockperf() -> None:
    rtts = [2 * x for x in (500, 1500, 1700, 2500, 7000, 12000, 25000)]  # half: 0.5..25 us
    r = ClientResult(mode="ping-pong", protocol="udp", recv_method="stdlib", busy_poll=False,
                     msg_size=14, mps=None, reply_every=1, rtt_ns=rtts)
    lines = [ANSI.sub("", ln) for ln in report.histogram_lines(r, (5, 1, 20))]
    assert lines == [
        "sockperf: [Histogram] Display to scale",
        "sockperf:  bins  frequency",
        "sockperf:  0-1   # (outliers)",   # 0.5 us < lower range 1
        "sockperf:  1-6   ###",             # 1.5, 1.7, 2.5
        "sockperf:  6-11  #",               # 7
        "sockperf: 11-16  #",               # 12
        "sockperf: 21-25  # (outliers)",    # 25 >= upper range 20; the bin starts at 21
    ]


def test_ipv6_banner_as_sockperf() -> None:
    # sockperf prints the address of its banner unbracketed, padded to 15 columns.
    assert net.banner_line(0, "::1", 12002, False) == "[ 0] IP = ::1             PORT = 12002 # UDP"
    assert net.banner_line(0, "127.0.0.1", 11111, True) == \
        "[ 0] IP = 127.0.0.1       PORT = 11111 # TCP"
    assert net.address_text(("::1", 5)) == "[::1]:5"  # host:port text (errors) is bracketed


def test_throughput_lines_from_counts() -> None:
    cfg = parse_args(["tp", "-m", "1472"])
    r = ClientResult(mode="throughput", protocol="udp", recv_method="stdlib", busy_poll=False,
                     msg_size=1472, mps=None, reply_every=0, sent=1000, runtime_s=2.0,
                     msg_per_s=500.0, mb_per_s=500 * 1472 / 2**20)
    text = report.client_text(r, cfg)
    assert text.splitlines() == [
        "sockperf: Total of 1000 messages sent in 2.000 sec",
        "",
        "sockperf: Summary: Message Rate is 500 [msg/sec]",
        "sockperf: Summary: BandWidth is 0.702 MBps (5.615 Mbps)",
    ]
