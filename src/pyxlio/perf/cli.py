"""Command line of the perf tool, shaped like sockperf's, parsed into a :class:`Config`."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field
from typing import NoReturn

from .wire import HEADER_SIZE, MAX_MESSAGE

__all__ = [
    "CLIENT_MODES",
    "MODES",
    "RECV_METHODS",
    "Config",
    "UsageError",
    "build_parser",
    "parse_args",
]

#: Canonical mode names, and the short aliases sockperf accepts.
MODES = ("server", "ping-pong", "under-load", "throughput")
ALIASES = {"sr": "server", "pp": "ping-pong", "ul": "under-load", "tp": "throughput"}
CLIENT_MODES = ("ping-pong", "under-load", "throughput")
RECV_METHODS = ("stdlib", "copy", "zcopy", "batch", "callback")
PYXLIO_METHODS = ("copy", "zcopy", "batch", "callback")

DEFAULT_PORT = 11111  # sockperf's default port
DEFAULT_UNDER_LOAD_MPS = 10000
DEFAULT_UNDER_LOAD_REPLY_EVERY = 100


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
    time: float | None = None
    count: int | None = None
    mps: int | None = None  # None: as fast as possible
    reply_every: int = 1
    mc: bool = False
    mc_rx_if: str | None = None
    mc_tx_if: str | None = None
    mc_ttl: int = 1
    recv_method: str = "stdlib"
    busy_poll: bool = False
    batch_size: int = 64
    dummy_send: float | None = None
    warmup: float = 0.4
    cooldown: float = 0.05
    reply_timeout: float = 1.0
    rcvbuf: int | None = None
    json: bool = False
    histogram: str | None = None
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


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
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text!r}")
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
    """A rate, or 0 for 'max'."""
    if text.lower() == "max":
        return 0
    return _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (exposed for --help text and tests)."""
    p = _Parser(
        prog="python -m pyxlio.perf",
        description=(
            "A sockperf-style latency and throughput tool speaking sockperf's wire format, "
            "with pyxlio's receive methods (copy, zero-copy, batch, callback)."
        ),
        epilog="Modes may be abbreviated as sockperf does: sr, pp, ul, tp.",
    )
    p.add_argument("mode", help="server | ping-pong | under-load | throughput")
    p.add_argument("-i", "--ip", default="127.0.0.1", help="server address or multicast group")
    p.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; server: 0 picks a free one)")
    p.add_argument("--tcp", action="store_true", help="TCP instead of UDP")
    p.add_argument("-m", "--msg-size", type=_positive_int, default=HEADER_SIZE,
                   help=f"message size in bytes, header included (default {HEADER_SIZE})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-t", "--time", type=_positive_float,
                   help="measured duration in seconds (client default 1; server: run this long)")
    g.add_argument("-n", "--number", dest="count", type=_positive_int,
                   help="measured message count (server: stop after this many)")
    p.add_argument("--mps", type=_mps,
                   help="messages per second, or 'max' (ping-pong and throughput default: max; "
                        f"under-load default: {DEFAULT_UNDER_LOAD_MPS})")
    p.add_argument("--reply-every", type=_positive_int,
                   help="under-load: ask a reply of every Nth message "
                        f"(default {DEFAULT_UNDER_LOAD_REPLY_EVERY})")
    p.add_argument("--mc", action="store_true", help="-i is a multicast group (UDP only)")
    p.add_argument("--mc-rx-if", help="interface address to join the group on (default any)")
    p.add_argument("--mc-tx-if", help="interface address to send multicast from")
    p.add_argument("--mc-ttl", type=int, default=1, help="multicast TTL (default 1)")
    p.add_argument("--recv-method", choices=RECV_METHODS, default="stdlib",
                   help="stdlib: socket.recv_into; copy: pyxlio socket recv_into; zcopy: "
                        "recvfrom_zcopy+release; batch: recv_batch+views(); callback: "
                        "set_recv_callback")
    p.add_argument("--busy-poll", action="store_true",
                   help="spin on a non-blocking socket instead of blocking")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="max datagrams per recv_batch call (default 64)")
    p.add_argument("--dummy-send", type=_positive_float, metavar="RATE",
                   help="client: XLIO dummy sends per second between messages (needs offload)")
    p.add_argument("--warmup", type=_nonneg_float, default=0.4,
                   help="seconds of traffic before measuring, trimmed from stats (default 0.4)")
    p.add_argument("--cooldown", type=_nonneg_float, default=0.05,
                   help="seconds of traffic after measuring, trimmed from stats (default 0.05)")
    p.add_argument("--reply-timeout", type=_positive_float, default=1.0,
                   help="client: seconds to wait for a reply before counting it dropped")
    p.add_argument("--rcvbuf", type=_positive_int, help="SO_RCVBUF in bytes")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--histogram", metavar="FILE.png",
                   help="draw the half-RTT distribution (needs matplotlib: pyxlio[plot])")
    p.add_argument("--emu", action="store_true",
                   help="re-execute under pyxlio's XLIO emulator (if not already under it)")
    p.add_argument("--emu-feed", metavar="PORT:SIZE",
                   help="with --emu: the emulator's in-memory feed on PORT, SIZE-byte datagrams")
    p.add_argument("--emu-strict", action="store_true",
                   help="with --emu: strict emulator (leaked buffers fail the exit status)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def parse_args(argv: list[str]) -> Config:
    """Parse and validate ``argv`` (without the program name). Raises :class:`UsageError`."""
    ns = build_parser().parse_args(argv)
    mode = ALIASES.get(ns.mode, ns.mode)
    if mode not in MODES:
        raise UsageError(f"unknown mode {ns.mode!r}: choose one of {', '.join(MODES)}")
    cfg = Config(mode=mode, argv=list(argv))
    for name in ("ip", "port", "tcp", "msg_size", "time", "count", "mc", "mc_rx_if", "mc_tx_if",
                 "mc_ttl", "recv_method", "busy_poll", "batch_size", "dummy_send", "warmup",
                 "cooldown", "reply_timeout", "rcvbuf", "json", "histogram", "emu", "emu_feed",
                 "emu_strict", "quiet"):
        setattr(cfg, name, getattr(ns, name))

    try:
        addr = ipaddress.ip_address(cfg.ip)
    except ValueError:
        raise UsageError(f"-i must be an IP address: {cfg.ip!r}") from None
    for opt, val in (("--mc-rx-if", cfg.mc_rx_if), ("--mc-tx-if", cfg.mc_tx_if)):
        if val is not None:
            try:
                ipaddress.IPv4Address(val)
            except ValueError:
                raise UsageError(f"{opt} must be an IPv4 interface address: {val!r}") from None

    if cfg.msg_size < HEADER_SIZE:
        raise UsageError(f"-m must be at least {HEADER_SIZE} (the sockperf header)")
    if cfg.msg_size > MAX_MESSAGE:
        raise UsageError(f"-m must be at most {MAX_MESSAGE}")
    if cfg.port == 0 and cfg.is_client:
        raise UsageError("a client needs the server's port (-p)")

    if cfg.mc:
        if cfg.tcp:
            raise UsageError("--mc is for UDP only")
        if not addr.is_multicast:
            raise UsageError(f"--mc needs a multicast group in -i, not {cfg.ip}")
        if addr.version != 4:
            raise UsageError("--mc supports IPv4 groups only")
    elif addr.is_multicast:
        raise UsageError(f"{cfg.ip} is a multicast group: add --mc")

    if cfg.tcp and cfg.recv_method == "callback":
        raise UsageError("--recv-method callback is for UDP only (XLIO's receive callback)")

    # Per-mode defaults, as sockperf has them.
    if ns.mps is None:
        cfg.mps = DEFAULT_UNDER_LOAD_MPS if mode == "under-load" else None
    else:
        cfg.mps = ns.mps or None
    if mode == "under-load":
        cfg.reply_every = ns.reply_every or DEFAULT_UNDER_LOAD_REPLY_EVERY
    elif ns.reply_every is not None:
        if mode == "ping-pong" and ns.reply_every != 1:
            raise UsageError("--reply-every is for under-load (ping-pong replies to every message)")
        cfg.reply_every = ns.reply_every
    if cfg.is_client and cfg.time is None and cfg.count is None:
        cfg.time = 1.0

    if cfg.dummy_send is not None:
        if not cfg.is_client:
            raise UsageError("--dummy-send is for the client modes")
        if not cfg.uses_pyxlio:
            raise UsageError("--dummy-send needs a pyxlio socket: pick --recv-method "
                             "copy, zcopy, batch or callback")
    if cfg.histogram is not None and mode not in ("ping-pong", "under-load"):
        raise UsageError("--histogram is for the latency modes (ping-pong, under-load)")
    if (cfg.emu_feed is not None or cfg.emu_strict) and not cfg.emu:
        raise UsageError("--emu-feed and --emu-strict go with --emu")
    if cfg.emu_feed is not None:
        port, sep, size = cfg.emu_feed.partition(":")
        if not sep or not port.isdigit() or not size.isdigit() or not (
            0 < int(port) <= 65535 and int(size) > 0
        ):
            raise UsageError(f"--emu-feed must be PORT:SIZE, e.g. 5001:64: {cfg.emu_feed!r}")
    return cfg
