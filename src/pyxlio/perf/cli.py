"""Command line of the perf tool: sockperf's options, names, defaults and meanings, parsed into
a :class:`Config`; plus pyxlio's own options (``--recv-method``, ``--json``, ``--plot``, ``--emu``
...), listed in a group of their own in ``--help``.

sockperf options that make no sense for this tool exist too, so that a sockperf command line is
understood: ``--help`` says why each is not available here and using one is refused with that
reason (exit status 2).
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field
from typing import NoReturn

from .wire import HEADER_SIZE, MAX_TCP_MESSAGE, MAX_UDP_MESSAGE

__all__ = [
    "CLIENT_MODES",
    "MODES",
    "NOT_AVAILABLE",
    "RECV_METHODS",
    "Config",
    "UsageError",
    "build_parser",
    "parse_args",
]

#: Canonical mode names, and the short aliases sockperf accepts.
MODES = ("server", "ping-pong", "under-load", "throughput", "playback")
ALIASES = {"sr": "server", "pp": "ping-pong", "ul": "under-load", "tp": "throughput",
           "pb": "playback"}
CLIENT_MODES = ("ping-pong", "under-load", "throughput", "playback")
LATENCY_MODES = ("ping-pong", "under-load", "playback")
RECV_METHODS = ("stdlib", "copy", "zcopy", "batch", "callback", "ultra")
PYXLIO_METHODS = ("copy", "zcopy", "batch", "callback")
#: the modes --recv-method ultra runs (TCP only: XLIO's Ultra API has no UDP)
ULTRA_MODES = ("server", "ping-pong", "throughput")

DEFAULT_PORT = 11111  # sockperf's default port
DEFAULT_MPS = 10000  # sockperf's under-load and playback default
DEFAULT_REPLY_EVERY = 100  # sockperf's under-load and playback default
DEFAULT_DUMMY_MPS = 10000  # sockperf's --dummy-send default rate
WARMUP_MSEC = 400  # sockperf: the measured window starts this long after the first request
COOLDOWN_MSEC = 50  # ... and ends this long before the last send
WARMUP_NUM = 8000  # sockperf ping-pong -n: replies before the measured ones
COOLDOWN_NUM = 1000  # ... and after
MAX_DURATION = 36000000  # sockperf's -t limit
MAX_PACKET_NUMBER = 100000000  # sockperf's -n limit

#: sockperf options this tool does not offer, with the reason shown by --help and on use.
NOT_AVAILABLE: dict[str, str] = {
    "-F/--iomux-type": "the wait is chosen by --recv-method and --busy-poll here",
    "--timeout": "no select/poll/epoll loop here (--busy-poll or a blocking receive)",
    "-a/--activity": "activity dots are not offered; the client prints progress each second",
    "-A/--Activity": "activity lines are not offered; the client prints progress each second",
    "--tcp-skip-blocking-send": "sends here block until the message is out",
    "--recv_looping_num": "each receive method has its own loop (--batch-size for batches)",
    "--load-vma": "XLIO or VMA is loaded by LD_PRELOAD, or the emulator by --emu",
    "--load-xlio": "XLIO is loaded by LD_PRELOAD, or the emulator by --emu",
    "--rate-limit": "packet pacing needs XLIO's ring logic, not reachable from Python here",
    "--set-sock-accl": "a vendor-specific socket option not offered",
    "--tls": "TLS is not offered",
    "-d/--debug": "no debug trace; use --json for every counter",
    "--threads-num": "one Python thread serves (the GIL would serialise several)",
    "-g/--gap-detection": "the server always counts gaps: see its pyxlio-perf lines",
    "-B/--Bridge": "bridge mode is not offered",
    "-f/--file": "one address per run here (one socket, one receive method): start one "
                 "pyxlio-perf per address of the feed file",
}


class UsageError(ValueError):
    """Bad command line: the message says what is wrong; the tool exits with status 2."""


@dataclass
class Config:
    """Everything a run needs, validated."""

    mode: str
    ip: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tcp: bool = False
    msg_size: int = HEADER_SIZE
    msg_range: int = 0
    time: float | None = None
    count: int | None = None
    mps: int | None = None  # None: as fast as possible
    burst: int = 1
    reply_every: int = 1
    mc: bool = False
    mc_rx_if: str | None = None
    mc_tx_if: str | None = None
    mc_ttl: int = 2
    mc_loopback: bool = False
    mc_source: str | None = None
    force_unicast_reply: bool = False
    dont_reply: bool = False
    client_ip: str | None = None
    client_port: int | None = None
    tcp_nodelay: bool = True
    tos: int = 0
    buffer_size: int = 0
    uc_reuseaddr: bool = False
    lls: int | None = None
    do_warmup: bool = True
    pre_warmup_wait: int = 0
    daemonize: bool = False
    full_log: str | None = None
    full_rtt: bool = False
    data_integrity: bool = False
    ci_level: int = 99
    histogram: tuple[int, int, int] | None = None
    giga_size: bool = False
    more_precision: bool = False
    connect_timeout_ms: int = 5000
    sender_affinity: str | None = None
    receiver_affinity: str | None = None
    cpu_affinity: str | None = None
    data_file: str | None = None
    server_max_msg: int = MAX_UDP_MESSAGE
    recv_method: str = "stdlib"
    busy_poll: bool = False
    batch_size: int = 64
    python_loop: bool = False
    dummy_send: float | None = None
    warmup: float = WARMUP_MSEC / 1000
    cooldown: float = COOLDOWN_MSEC / 1000
    warmup_num: int = WARMUP_NUM
    cooldown_num: int = COOLDOWN_NUM
    reply_timeout: float = 1.0
    rcvbuf: int | None = None
    json: bool = False
    plot: str | None = None
    emu: bool = False
    emu_feed: str | None = None
    emu_strict: bool = False
    quiet: bool = False
    argv: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        """``"tcp"`` or ``"udp"``."""
        return "tcp" if self.tcp else "udp"

    @property
    def family_v6(self) -> bool:
        """True when -i is an IPv6 address."""
        return ":" in self.ip

    @property
    def is_client(self) -> bool:
        """True for the client modes."""
        return self.mode in CLIENT_MODES

    @property
    def uses_pyxlio(self) -> bool:
        """True when the receive method needs pyxlio's socket."""
        return self.recv_method in PYXLIO_METHODS

    @property
    def max_message(self) -> int:
        """The largest message this side takes (the server: max(65507, its -m), as sockperf)."""
        return self.server_max_msg if self.mode == "server" else max(
            self.msg_size + self.msg_range, MAX_UDP_MESSAGE)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or a positive number: {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {text!r}")
    return value


def _mps(text: str) -> int:
    """A rate, or 0 for 'max' (sockperf: 1..2**30 or max/MAX)."""
    if text in ("max", "MAX"):
        return 0
    value = _positive_int(text)
    if value > 1 << 30:
        raise argparse.ArgumentTypeError(f"Invalid rate (1..{1 << 30} or max): {text!r}")
    return value


def _histogram(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"Invalid argument: {text} Format should be binsize:lowerrange:upperrange")
    b, lo, hi = (int(p) for p in parts)
    if b <= 0 or hi <= lo:
        raise argparse.ArgumentTypeError(
            f"{text}: binsize must be positive and upperrange above lowerrange")
    return b, lo, hi


def _not_available(name: str) -> str:
    return f"not in pyxlio-perf: {NOT_AVAILABLE[name]}"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (exposed for --help text and tests)."""
    p = _Parser(
        prog="python -m pyxlio.perf",
        description=(
            "sockperf's latency and throughput tool, in Python: sockperf's modes, options, wire "
            "format and report, with pyxlio's receive methods (copy, zero-copy, batch, "
            "callback) and its XLIO emulator. It faces a C sockperf in either direction."
        ),
        epilog=("Modes as sockperf: server (sr), ping-pong (pp), under-load (ul), throughput "
                "(tp), playback (pb). Report lines that begin with 'sockperf: ' are sockperf's "
                "(same wording and order); lines that begin with 'pyxlio-perf: ' are this "
                "tool's additions."),
    )
    p.add_argument("mode", help="server | ping-pong | under-load | throughput | playback")

    g = p.add_argument_group("sockperf's options (same names, defaults and meanings)")
    g.add_argument("-i", "--ip", "--addr", dest="ip", default=None,
                   help="listen on/send to this address, IPv4 or IPv6; a multicast group makes "
                        "the run multicast (server default: 0.0.0.0; client: 127.0.0.1)")
    g.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT,
                   help=f"listen on/connect to port (default {DEFAULT_PORT}; pyxlio-perf "
                        "server: 0 picks a free one)")
    g.add_argument("--tcp", "--stream", dest="tcp", action="store_true",
                   help="TCP instead of UDP")
    g.add_argument("-m", "--msg-size", type=_int, default=None,
                   help=f"message size in bytes, header included (minimum {HEADER_SIZE}, "
                        f"UDP at most {MAX_UDP_MESSAGE}, TCP at most {MAX_TCP_MESSAGE}); "
                        f"server: the largest message it takes (default {MAX_UDP_MESSAGE})")
    g.add_argument("-r", "--range", dest="msg_range", type=_nonneg_int, default=0,
                   help="with -m: each burst's message size drawn in <size> +- N")
    g.add_argument("-t", "--time", type=_positive_float,
                   help="run for this many seconds, warm-up included (default 1); pyxlio-perf "
                        "server: serve this long")
    g.add_argument("-n", "--number-of-packets", dest="count", type=_positive_int,
                   help="ping-pong: measure this many replies (after 8000 warm-up ones and "
                        "before 1000 cool-down ones); pyxlio-perf extension: under-load and "
                        "throughput send this many messages in all, a server stops after this "
                        "many")
    g.add_argument("-b", "--burst", type=_positive_int, default=1,
                   help="messages sent in every burst (default 1)")
    g.add_argument("--mps", "--pps", dest="mps", type=_mps,
                   help="messages per second, or max (under-load and playback default 10000; "
                        "ping-pong and throughput: max)")
    g.add_argument("--reply-every", type=_positive_int,
                   help=f"under-load/playback: ask a reply of every Nth message "
                        f"(default {DEFAULT_REPLY_EVERY})")
    g.add_argument("--data-integrity", action="store_true",
                   help="ping-pong: check that every reply carries the bytes sent")
    g.add_argument("--data-file", metavar="CSV",
                   help="playback: 'time-in-seconds, size' lines to send on that schedule")
    g.add_argument("--client_port", dest="client_port", type=_port,
                   help="bind the client to this port")
    g.add_argument("--client_ip", "--client_addr", dest="client_ip",
                   help="bind the client to this address")
    g.add_argument("--full-log", metavar="FILE",
                   help="write every sample's send/receive time to FILE (CSV), with the report")
    g.add_argument("--full-rtt", action="store_true",
                   help="report round-trip times instead of latency (half round trip)")
    g.add_argument("--ci_sig_level", dest="ci_level", type=_positive_int, default=99,
                   help="confidence level of the interval on the avg line (1..99, default 99)")
    g.add_argument("--histogram", type=_histogram, metavar="BINSIZE:LOWER:UPPER",
                   help="print a text histogram of the latencies (usec): bins of BINSIZE from "
                        "LOWER to UPPER, outliers in two extra bins")
    g.add_argument("--giga-size", action="store_true", help="throughput: print sizes in GB")
    g.add_argument("--increase_output_precision", dest="more_precision", action="store_true",
                   help="throughput: 9 digits after the point in the bandwidth")
    g.add_argument("--tcp_nb_connect_timeout_ms", dest="connect_timeout_ms",
                   type=_positive_int, default=5000,
                   help="TCP connect timeout in milliseconds (default 5000)")
    g.add_argument("--dummy-send", nargs="?", const=str(DEFAULT_DUMMY_MPS), metavar="RATE",
                   help="XLIO dummy sends per second between messages, or max (default "
                        f"{DEFAULT_DUMMY_MPS}; must exceed --mps; needs an offloaded socket)")
    g.add_argument("--tcp-avoid-nodelay", action="store_true",
                   help="flip TCP_NODELAY: on by default except in throughput, where it is off")
    g.add_argument("--tos", type=_int, default=0, help="IP_TOS of the sockets")
    g.add_argument("--mc-rx-ip", "--mc-rx-if", dest="mc_rx_if", metavar="IP",
                   help="IPv4 address of the interface to receive multicast on")
    g.add_argument("--mc-tx-ip", "--mc-tx-if", dest="mc_tx_if", metavar="IP",
                   help="IPv4 address of the interface to send multicast from")
    g.add_argument("--mc-loopback-enable", dest="mc_loopback", action="store_true",
                   help="let multicast loop back to this host (default disabled)")
    g.add_argument("--mc-ttl", type=_int, default=2, help="multicast TTL (default 2)")
    g.add_argument("--mc-source-filter", dest="mc_source", metavar="IP",
                   help="receive the group's messages from this source only")
    g.add_argument("--uc-reuseaddr", action="store_true", help="SO_REUSEADDR on unicast too")
    g.add_argument("--lls", type=_nonneg_int,
                   help="SO_BUSY_POLL of the sockets, in usec")
    g.add_argument("--buffer-size", type=_positive_int,
                   help="SO_RCVBUF and SO_SNDBUF of the sockets, in bytes")
    g.add_argument("--nonblocked", action="store_true",
                   help="non-blocking sockets, spinning on them (same as --busy-poll)")
    g.add_argument("--dontwarmup", action="store_true",
                   help="do not send the warm-up messages (multicast only sends them)")
    g.add_argument("--pre-warmup-wait", type=_nonneg_int, default=0, metavar="SEC",
                   help="seconds to wait before the warm-up messages")
    g.add_argument("--zcopyread", "--vmazcopyread", dest="zcopyread", action="store_true",
                   help="XLIO's zero-copy receive: the same as --recv-method zcopy")
    g.add_argument("--rxfiltercb", action="store_true",
                   help="server: XLIO's receive callback: the same as --recv-method callback")
    g.add_argument("--daemonize", action="store_true", help="server: run as a daemon")
    g.add_argument("--no-rdtsc", action="store_true",
                   help="accepted: the clock here is always the monotonic one")
    g.add_argument("--force-unicast-reply", action="store_true",
                   help="server: answer a multicast request to its sender, not to the group")
    g.add_argument("--dont-reply", action="store_true",
                   help="server: answer nothing (UDP only)")
    g.add_argument("--sender-affinity", metavar="CPUS",
                   help="client: pin to these CPUs (list format, e.g. 0,2-3)")
    g.add_argument("--receiver-affinity", metavar="CPUS",
                   help="client: pin to these CPUs (one thread sends and receives here, so this "
                        "and --sender-affinity must agree when both are given)")
    g.add_argument("--cpu-affinity", metavar="CPUS", help="server: pin to these CPUs")

    na = p.add_argument_group("sockperf's options not in pyxlio-perf (refused, exit status 2)")
    hidden: list[tuple[list[str], bool]] = [
        (["-F", "--iomux-type"], True), (["--timeout"], True), (["-a", "--activity"], True),
        (["-A", "--Activity"], True), (["--tcp-skip-blocking-send"], False),
        (["--recv_looping_num"], True), (["--load-vma"], None),  # type: ignore[list-item]
        (["--load-xlio"], None), (["--rate-limit"], True),  # type: ignore[list-item]
        (["--set-sock-accl"], False), (["--tls"], None),  # type: ignore[list-item]
        (["-d", "--debug"], False), (["--threads-num"], True), (["-g", "--gap-detection"], False),
        (["-B", "--Bridge"], False), (["-f", "--file"], True),
    ]
    for flags, takes in hidden:
        key = "/".join(flags)
        kwargs: dict[str, object] = {"help": _not_available(key), "dest": "na_" + key}
        if takes is True:
            kwargs["metavar"] = "X"
        elif takes is None:
            kwargs.update(nargs="?", const="", metavar="X")
        else:
            kwargs["action"] = "store_true"
        na.add_argument(*flags, **kwargs)  # type: ignore[arg-type]

    o = p.add_argument_group("pyxlio-perf's own options")
    o.add_argument("--recv-method", choices=RECV_METHODS, default=None,
                   help="stdlib: a socket.socket's receive (socket.recv_into in the Python "
                        "loop; in the compiled loop libc's recv/recvfrom, the calls "
                        "recv_into makes, so XLIO's under XLIO); copy: pyxlio socket "
                        "recv_into (same note); zcopy: recvfrom_zcopy+release; batch: "
                        "recv_batch+views(); callback: set_recv_callback; ultra: XLIO's "
                        "Ultra API, TCP ping-pong, throughput and server only (a PollGroup: "
                        "payload in XLIO's buffers, copied sends; needs libxlio 3.30+ or --emu, "
                        "the server 3.60+) (default stdlib)")
    o.add_argument("--busy-poll", action="store_true",
                   help="spin on a non-blocking socket instead of blocking")
    o.add_argument("--batch-size", type=_positive_int, default=64,
                   help="max datagrams per recv_batch call (default 64)")
    o.add_argument("--python-loop", action="store_true",
                   help="run the client's / server's message loop in Python even where the "
                        "compiled loop applies (stdlib and copy receive methods; ping-pong, "
                        "under-load and server; not playback, --dummy-send, --msg-range or a "
                        "multicast client): same rules and report, more cost per message")
    o.add_argument("--warmup", type=_nonneg_float, default=WARMUP_MSEC / 1000, metavar="SEC",
                   help="time-based runs: the measured window starts this long after the first "
                        f"request (sockperf's {WARMUP_MSEC} ms by default)")
    o.add_argument("--cooldown", type=_nonneg_float, default=COOLDOWN_MSEC / 1000,
                   metavar="SEC",
                   help="time-based runs: the measured window ends this long before the last "
                        f"send (sockperf's {COOLDOWN_MSEC} ms by default)")
    o.add_argument("--warmup-num", type=_nonneg_int, default=WARMUP_NUM, metavar="N",
                   help=f"ping-pong -n: replies before the measured ones (sockperf's "
                        f"{WARMUP_NUM})")
    o.add_argument("--cooldown-num", type=_nonneg_int, default=COOLDOWN_NUM, metavar="N",
                   help=f"ping-pong -n: replies after the measured ones (sockperf's "
                        f"{COOLDOWN_NUM})")
    o.add_argument("--reply-timeout", type=_positive_float, default=1.0, metavar="SEC",
                   help="ping-pong: seconds to wait for a burst's replies before going on "
                        "(sockperf waits until the run ends)")
    o.add_argument("--rcvbuf", type=_positive_int, help="SO_RCVBUF only (SO_RCVBUFFORCE as root)")
    o.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the text report")
    o.add_argument("--plot", metavar="FILE.png",
                   help="draw the latency distribution to a PNG (needs matplotlib: pyxlio[plot])")
    o.add_argument("--mc", action="store_true",
                   help="accepted for old command lines: multicast is chosen from the address")
    o.add_argument("--emu", action="store_true",
                   help="re-execute under pyxlio's XLIO emulator (if not already under it)")
    o.add_argument("--emu-feed", metavar="PORT:SIZE",
                   help="with --emu: the emulator's in-memory feed on PORT, SIZE-byte datagrams")
    o.add_argument("--emu-strict", action="store_true",
                   help="with --emu: strict emulator (leaked buffers fail the exit status)")
    o.add_argument("-q", "--quiet", action="store_true",
                   help="no pyxlio-perf progress lines on stderr")
    return p


def _check_v4(opt: str, val: str | None) -> None:
    if val is not None:
        try:
            ipaddress.IPv4Address(val)
        except ValueError:
            raise UsageError(f"{opt} must be an IPv4 interface address: {val!r}") from None


def _check_cpus(opt: str, val: str | None) -> None:
    if val is not None:
        from .net import parse_cpu_list

        try:
            parse_cpu_list(val)
        except ValueError as exc:
            raise UsageError(f"{opt}: {exc}") from None


def parse_args(argv: list[str]) -> Config:
    """Parse and validate ``argv`` (without the program name). Raises :class:`UsageError`."""
    ns = build_parser().parse_args(argv)
    mode = ALIASES.get(ns.mode, ns.mode)
    if mode not in MODES:
        raise UsageError(f"unknown mode {ns.mode!r}: choose one of {', '.join(MODES)}")
    for key in NOT_AVAILABLE:
        val = getattr(ns, "na_" + key, None)
        if val not in (None, False):
            raise UsageError(f"{key}: {_not_available(key)}")

    cfg = Config(mode=mode, argv=list(argv))
    for name in ("port", "tcp", "msg_range", "time", "count", "burst", "mc_rx_if", "mc_tx_if",
                 "mc_ttl", "mc_loopback", "mc_source", "force_unicast_reply", "dont_reply",
                 "client_ip", "client_port", "tos", "uc_reuseaddr", "lls", "pre_warmup_wait",
                 "daemonize", "full_log", "full_rtt", "data_integrity", "ci_level", "histogram",
                 "giga_size", "more_precision", "connect_timeout_ms", "sender_affinity",
                 "receiver_affinity", "cpu_affinity", "data_file", "busy_poll",
                 "batch_size", "python_loop", "warmup", "cooldown", "warmup_num", "cooldown_num",
                 "reply_timeout", "rcvbuf", "json", "plot", "emu", "emu_feed", "emu_strict",
                 "quiet"):
        setattr(cfg, name, getattr(ns, name))
    cfg.do_warmup = not ns.dontwarmup
    cfg.buffer_size = ns.buffer_size or 0
    if ns.nonblocked:
        cfg.busy_poll = True
    client = mode in CLIENT_MODES

    # Receive method: pyxlio's --recv-method, or sockperf's spellings of the same paths.
    method = ns.recv_method
    for flag, implied in (("zcopyread", "zcopy"), ("rxfiltercb", "callback")):
        if getattr(ns, flag):
            if method not in (None, implied):
                raise UsageError(f"--{flag} means --recv-method {implied}: not with {method}")
            method = implied
    cfg.recv_method = method or "stdlib"

    # Address: sockperf's defaults (server: any; client: loopback), multicast from the address.
    if ns.ip is None:
        cfg.ip = "127.0.0.1" if client else "0.0.0.0"
    else:
        cfg.ip = ns.ip
    try:
        addr = ipaddress.ip_address(cfg.ip)
    except ValueError:
        raise UsageError(f"-i must be an IP address: {cfg.ip!r}") from None
    cfg.mc = addr.is_multicast
    if cfg.mc and cfg.tcp:
        raise UsageError(f"{cfg.ip} is a multicast group: multicast is UDP only")
    if cfg.mc and addr.version != 4:
        raise UsageError("multicast here supports IPv4 groups only")
    if ns.mc and not cfg.mc:
        raise UsageError(f"--mc needs a multicast group in -i, not {cfg.ip}")
    _check_v4("--mc-rx-ip", cfg.mc_rx_if)
    _check_v4("--mc-tx-ip", cfg.mc_tx_if)
    _check_v4("--mc-source-filter", cfg.mc_source)
    if not 0 <= cfg.mc_ttl <= 255:
        raise UsageError(f"--mc-ttl must be 0..255: {cfg.mc_ttl}")
    if not 0 <= cfg.tos <= 255:
        raise UsageError(f"--tos must be 0..255: {cfg.tos}")
    if cfg.client_ip is not None:
        try:
            ipaddress.ip_address(cfg.client_ip)
        except ValueError:
            raise UsageError(f"'--client_ip' Invalid address: {cfg.client_ip!r}") from None
    for opt, val in (("--sender-affinity", cfg.sender_affinity),
                     ("--receiver-affinity", cfg.receiver_affinity),
                     ("--cpu-affinity", cfg.cpu_affinity)):
        _check_cpus(opt, val)
    if (cfg.sender_affinity and cfg.receiver_affinity
            and cfg.sender_affinity != cfg.receiver_affinity):
        raise UsageError("--sender-affinity and --receiver-affinity differ: one thread sends "
                         "and receives here")

    # Per-mode options, as sockperf has them.
    only = {
        "server": ("--force-unicast-reply", "--dont-reply", "--cpu-affinity", "--daemonize",
                   "--rxfiltercb"),
        "client": ("-b", "--burst", "--mps", "--pps", "--client_port", "--client_ip",
                   "--client_addr", "--full-log", "--full-rtt", "--sender-affinity",
                   "--receiver-affinity", "--dummy-send", "-r", "--range", "--giga-size",
                   "--increase_output_precision", "--tcp_nb_connect_timeout_ms"),
    }
    given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    for role, opts in only.items():
        if (role == "server") == client:
            bad = sorted(given & set(opts))
            if bad:
                raise UsageError(f"{', '.join(bad)}: for the {role} only")
    per_mode = {
        "--data-integrity": ("ping-pong",),
        "--histogram": LATENCY_MODES,
        "--ci_sig_level": LATENCY_MODES,
        "--reply-every": ("under-load", "playback"),
        "--data-file": ("playback",),
        "-b": ("ping-pong", "under-load", "throughput"),
        "--burst": ("ping-pong", "under-load", "throughput"),
        "--plot": LATENCY_MODES,
        "--full-log": LATENCY_MODES,
        "--full-rtt": LATENCY_MODES,
        "--giga-size": ("throughput",),
        "--increase_output_precision": ("throughput",),
    }
    for opt, modes in per_mode.items():
        if opt in given and mode not in modes:
            raise UsageError(f"{opt} is for {' and '.join(modes)} (not {mode})")
    if mode == "playback" and cfg.data_file is None:
        raise UsageError("--data-file must be used with playback mode")
    if cfg.dont_reply and cfg.tcp:
        raise UsageError("--tcp conflicts with --dont-reply option")
    if cfg.data_integrity and given & {"-b", "--burst"}:
        raise UsageError("--data-integrity conflicts with -b option")
    if not 0 < cfg.ci_level < 100:
        raise UsageError(f"'--ci_sig_level' Invalid Significance level: {cfg.ci_level}")

    # -t / -n.
    if cfg.time is not None and cfg.count is not None:
        raise UsageError("-t conflicts with -n option")
    if cfg.count is not None:
        if mode == "ping-pong" and ns.mps is not None:
            raise UsageError("-n conflicts with -t,--mps options")
        if mode == "playback":
            raise UsageError("-n is not for playback (the data file sets the run)")
        if cfg.count > MAX_PACKET_NUMBER:
            raise UsageError(f"'-n' Invalid number of packets: {cfg.count}")
    if cfg.time is not None and cfg.time > MAX_DURATION:
        raise UsageError(f"'-t' Invalid duration: {cfg.time}")
    if client and mode != "playback" and cfg.time is None and cfg.count is None:
        cfg.time = 1.0

    # -m: sockperf's limits; a server's -m raises its largest message, never lowers it.
    if ns.msg_size is not None:
        m = ns.msg_size
        if mode == "server":
            if m > MAX_TCP_MESSAGE:
                raise UsageError(f"'-m' Invalid message size: {m} (max: {MAX_TCP_MESSAGE})")
            cfg.server_max_msg = max(MAX_UDP_MESSAGE, m)
        else:
            if m < HEADER_SIZE:
                raise UsageError(f"'-m' Invalid message size: {m} (min: {HEADER_SIZE})")
            limit = MAX_TCP_MESSAGE if cfg.tcp else MAX_UDP_MESSAGE
            if m > limit:
                raise UsageError(f"'-m' Invalid message size: {m} (max: {limit})")
            cfg.msg_size = m
    if cfg.msg_range and "-m" not in given and "--msg-size" not in given:
        raise UsageError("-r comes with -m <size>")
    if cfg.port == 0 and client:
        raise UsageError("a client needs the server's port (-p)")

    if cfg.tcp and cfg.recv_method == "callback":
        raise UsageError("--recv-method callback is for UDP only (XLIO's receive callback)")
    if cfg.recv_method == "ultra":
        if not cfg.tcp:
            raise UsageError("--recv-method ultra is for TCP only (XLIO's Ultra API has no "
                             "UDP): add --tcp")
        if mode not in ULTRA_MODES:
            raise UsageError(f"--recv-method ultra runs {', '.join(ULTRA_MODES)} (not {mode})")

    # Rates and replies, with sockperf's per-mode defaults.
    if ns.mps is None:
        cfg.mps = DEFAULT_MPS if mode in ("under-load", "playback") else None
    else:
        cfg.mps = ns.mps or None
    if mode in ("under-load", "playback"):
        cfg.reply_every = ns.reply_every or DEFAULT_REPLY_EVERY
    elif mode == "ping-pong":
        cfg.reply_every = 1
    # Throughput: TCP_NODELAY off unless --tcp-avoid-nodelay (sockperf flips its default there).
    cfg.tcp_nodelay = not ns.tcp_avoid_nodelay
    if mode == "throughput":
        cfg.tcp_nodelay = not cfg.tcp_nodelay

    if ns.dummy_send is not None:
        if ns.dummy_send in ("max", "MAX"):
            cfg.dummy_send = float("inf")
        else:
            try:
                cfg.dummy_send = float(_positive_int(ns.dummy_send))
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"--dummy-send: {exc}") from None
        if cfg.mps is not None and cfg.mps >= cfg.dummy_send:
            raise UsageError("Dummy send is allowed only if dummy-send rate is higher than "
                             "regular msg rate")
        if not cfg.uses_pyxlio:
            raise UsageError("--dummy-send needs a pyxlio socket: pick --recv-method "
                             "copy, zcopy, batch or callback")
    if (cfg.emu_feed is not None or cfg.emu_strict) and not cfg.emu:
        raise UsageError("--emu-feed and --emu-strict go with --emu")
    if cfg.emu_feed is not None:
        port, sep, size = cfg.emu_feed.partition(":")
        if not sep or not port.isdigit() or not size.isdigit() or not (
            0 < int(port) <= 65535 and int(size) > 0
        ):
            raise UsageError(f"--emu-feed must be PORT:SIZE, e.g. 5001:64: {cfg.emu_feed!r}")
    return cfg
