"""Reports: sockperf's closing lines (same wording, fields and order), its --full-log file and
text histogram, pyxlio-perf's marked additions, one JSON object, and the --plot picture (PNG).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, TextIO

from .cli import Config
from .client import ClientResult
from .log import END, MAGENTA, PREFIX, PYX, RED
from .server import ServerResult
from .stats import percentile_index

__all__ = [
    "PlotUnavailable",
    "check_plot_support",
    "client_dict",
    "client_text",
    "draw_plot",
    "histogram_lines",
    "server_dict",
    "server_text",
    "to_json",
    "write_full_log",
]

MPS_MAX_PP = 600 * 1000  # sockperf's "max" rate as it prints it in the full log
MPS_MAX_UL = 10 * 1000 * 1000


class PlotUnavailable(RuntimeError):
    """--plot was asked but matplotlib is not installed."""


def _fmt(x: float) -> str:
    """``%.3lf`` as C prints it (inf and nan too)."""
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3f}"


def _stats_lines(r: ClientResult) -> tuple[list[str], list[str]]:
    """sockperf's client_statistics lines: (all of them, those it also writes to --full-log)."""
    out: list[str] = []
    both: list[str] = []

    def line(text: str, to_file: bool = True) -> None:
        out.append(PREFIX + text)
        if to_file:
            both.append(PREFIX + text)

    if not r.replies:
        line("No messages were received from the server. Is the server down?")
        return out, both
    if r.measurement == "number":
        line(f"[Total Run] RunTime={r.runtime_s:.3f} sec; Warm up packets={r.warmup_num}; "
             f"SentMessages={r.sent}; ReceivedMessages={r.replies}")
    else:
        line(f"[Total Run] RunTime={r.runtime_s:.3f} sec; Warm up time={r.warmup_msec} msec; "
             f"SentMessages={r.sent}; ReceivedMessages={r.replies}")
    line("========= Printing statistics for Server No: 0")
    if r.stats_note:
        line(r.stats_note)
        return out, both
    lat = r.latency
    assert lat is not None
    line(f"[Valid Duration] RunTime={r.valid_runtime_s:.3f} sec; SentMessages={r.valid_sent}; "
         f"ReceivedMessages={r.valid_received}")
    what = "rtt" if r.full_rtt else "latency"
    line(f"{MAGENTA}====> avg-{what}={_fmt(lat.avg)} (std-dev={_fmt(lat.std_dev)}, "
         f"mean-ad={_fmt(lat.mean_ad)}, median-ad={_fmt(lat.median_ad)}, siqr={_fmt(lat.siqr)}, "
         f"cv={_fmt(lat.cv)}, std-error={_fmt(lat.std_error)}, {lat.ci_level:.1f}% "
         f"ci=[{_fmt(lat.ci_low)}, {_fmt(lat.ci_high)}]){END}")
    bad = r.dropped or r.duplicated or r.out_of_order
    line(f"{RED if bad else ''}# dropped messages = {r.dropped}; # duplicated messages = "
         f"{r.duplicated}; # out-of-order messages = {r.out_of_order}{END if bad else ''}")
    if lat.avg:
        kind = "Round trip" if r.full_rtt else "Latency"
        if r.burst == 1:
            line(f"Summary: {kind} is {lat.avg:.3f} usec", False)
        else:
            line(f"Summary: {kind} of burst of {r.burst} messages is {lat.avg:.3f} usec", False)
    line(f"{MAGENTA}Total {lat.count} observations{END}; each percentile contains "
         f"{lat.count / 100:.2f} observations")
    line(f"---> <MAX> observation = {lat.max:8.3f}")
    for label, value in lat.percentiles.items():
        line(f"---> percentile {float(label):6.3f} = {value:8.3f}")
    line(f"---> <MIN> observation = {lat.min:8.3f}")
    return out, both


def _hist_bins(values_us: list[float], spec: tuple[int, int, int]) -> dict[int, int]:
    b, lo, hi = spec
    bins: dict[int, int] = {}
    right = 2 + (hi - lo) // b
    for v in values_us:
        idx = 0 if v < lo else right if v >= hi else int(1 + (v - lo) / b)
        bins[idx] = bins.get(idx, 0) + 1
    return dict(sorted(bins.items()))


def _digits(n: int) -> int:
    return len(str(n)) if n > 0 else 1


def histogram_lines(r: ClientResult, spec: tuple[int, int, int], width: int = 0) -> list[str]:
    """sockperf's on-screen text histogram of the latency samples (``width`` columns of
    terminal, 0 when not a terminal: then scaled to 80 marks, as sockperf)."""
    b, lo, hi = spec
    den = 1 if r.full_rtt else 2
    vals = sorted((x // den) / 1000.0 for x in r.rtt_ns)
    if not vals:
        return []
    bins = _hist_bins(vals, spec)
    vmin, vmax = int(vals[0]), int(vals[-1])
    right = 2 + (hi - lo) // b
    rem = (hi - lo) % b
    right_start = hi + (b - rem if rem else 0)
    max_freq = max(bins.values())
    start_digits = _digits(right_start)
    end_digits = _digits(vmax)
    max_bin_msg = _digits(hi + b) + 1 + end_digits
    display = 0
    if width == 0:
        scale = (max_freq + 80 - 1) // 80
    else:
        display = max(1, width - len(PREFIX) - max_bin_msg - 12 - 2)
        scale = (max_freq + display - 1) // display
    out: list[str] = []
    if scale == 1:
        out.append(PREFIX + "[Histogram] Display to scale")
    else:
        out.append(PREFIX + f"[Histogram] Display scaled to fit on screen (Key: '#' = up to "
                   f"{scale} samples)")
    bins_w = (start_digits + end_digits + 2) // 2 + len("bins") // 2
    freq_w = display // 2 + len("frequency") // 2
    out.append(PREFIX + f"{'bins':>{bins_w}s}  {'frequency':>{freq_w}s}")
    end_w = end_digits + 2
    for idx, freq in bins.items():
        marks = "#" * ((freq + scale - 1) // scale)
        if idx == 0:
            out.append(PREFIX + f"{vmin:>{start_digits}d}-{lo:<{end_w}d}{MAGENTA}{marks} "
                       f"(outliers){END}")
        elif idx == right:
            out.append(PREFIX + f"{right_start:>{start_digits}d}-{vmax:<{end_w}d}{MAGENTA}"
                       f"{marks} (outliers){END}")
        else:
            start = (idx - 1) * b + lo
            out.append(PREFIX + f"{start:>{start_digits}d}-{start + b:<{end_w}d}{marks}")
    return out


def _histogram_file_lines(r: ClientResult, spec: tuple[int, int, int]) -> list[str]:
    b, lo, hi = spec
    den = 1 if r.full_rtt else 2
    vals = sorted((x // den) / 1000.0 for x in r.rtt_ns)
    bins = _hist_bins(vals, spec)
    vmin, vmax = int(vals[0]), int(vals[-1])
    right = 2 + (hi - lo) // b
    rem = (hi - lo) % b
    right_start = hi + (b - rem if rem else 0)
    col = _digits(vmax) + 1 + _digits(hi) + 20
    out = [f"histogram was built using the following parameters: --h_bin_size_us={b} "
           f"--h_lower_range_us={lo} --h_upper_range_us={hi}",
           "------------------------------", "bin (usec)            frequency"]
    for idx, freq in bins.items():
        if idx == 0:
            out.append(f"{vmin}-{lo:<{col - 1 - _digits(vmin)}d}{freq}")
        elif idx == right:
            out.append(f"{right_start}-{vmax:<{col - 1 - _digits(hi)}d}{freq}")
        else:
            out.append(f"{(idx - 1) * b + lo:<{col}d}{freq}")
    out.append("------------------------------")
    return out


def client_text(r: ClientResult, cfg: Config | None = None, width: int = 0) -> str:
    """The client's closing lines, after sockperf's "Test ended": sockperf's statistics then
    pyxlio-perf's additions."""
    lines: list[str] = []
    if r.sent == 0:
        lines.append(PREFIX + "No messages were sent")
    elif r.mode == "throughput":
        lines.extend(_throughput_lines(r, cfg))
    else:
        out, _both = _stats_lines(r)
        lines.extend(out)
        if cfg is not None and cfg.histogram is not None and r.latency is not None:
            lines.extend(histogram_lines(r, cfg.histogram, width))
    if r.mps and r.cycle_waits == 0 and r.sent:
        lines.append(PREFIX + "Info: The requested message-per-second rate is too high. Try "
                     "tuning --mps or --burst arguments")
    if r.dummy_sends:
        lines.append(f"{PYX}dummy sends = {r.dummy_sends}")
    if r.ignored:
        lines.append(f"{PYX}ignored messages (requests looped back, warm-ups, unknown "
                     f"sequence numbers) = {r.ignored}")
    return "\n".join(lines) + "\n"


def _throughput_lines(r: ClientResult, cfg: Config | None) -> list[str]:
    size = r.msg_size
    rng = cfg.msg_range if cfg is not None else 0
    out = [f"{PREFIX}Total of {r.sent} messages sent in {r.runtime_s:.3f} sec", ""]
    if r.mps:
        if rng:
            note = (f"NOTE: test was performed, using average msg-size={size} (+/-{rng}), "
                    f"mps={r.mps}. For getting maximum throughput use --mps=max (and consider "
                    "--msg-size=1472 or --msg-size=4096")
        else:
            note = (f"NOTE: test was performed, using msg-size={size}, mps={r.mps}. For getting "
                    "maximum throughput use --mps=max (and consider --msg-size=1472 or "
                    "--msg-size=4096)")
        out.append(f"{PREFIX}{MAGENTA}{note}{END}")
    elif size != 1472:
        if rng:
            note = (f"NOTE: test was performed, using average msg-size={size} (+/-{rng}). For "
                    "getting maximum throughput consider using --msg-size=1472")
        else:
            note = (f"NOTE: test was performed, using msg-size={size}. For getting maximum "
                    "throughput consider using --msg-size=1472")
        out.append(f"{PREFIX}{MAGENTA}{note}{END}")
    rate = int(r.msg_per_s)
    if r.ip_frags == 1:
        out.append(f"{PREFIX}Summary: Message Rate is {rate} [msg/sec]")
    else:
        out.append(f"{PREFIX}Summary: Message Rate is {rate} [msg/sec], Packet Rate is about "
                   f"{int(r.pkt_per_s)} [pkt/sec] ({r.ip_frags} ip frags / msg)")
    mb = r.mb_per_s
    if cfg is not None and cfg.giga_size:
        out.append(f"{PREFIX}Summary: BandWidth is {mb / 1000:.3f} GBps ({mb * 8 / 1000:.3f} Gbps)")
    elif cfg is not None and cfg.more_precision:
        out.append(f"{PREFIX}Summary: BandWidth is {mb:.9f} MBps ({mb * 8:.9f} Mbps)")
    else:
        out.append(f"{PREFIX}Summary: BandWidth is {mb:.3f} MBps ({mb * 8:.3f} Mbps)")
    return out


def write_full_log(f: TextIO, r: ClientResult, cfg: Config) -> None:
    """sockperf's --full-log file: parameters, statistics lines, every sample, histogram."""
    f.write("------------------------------\n")
    if r.measurement == "number":
        f.write(f"test was performed using the following parameters: --burst={r.burst} "
                f"--msg-size={r.msg_size} --number-of-packets={cfg.count}")
    else:
        mps = r.mps if r.mps else min(MPS_MAX_PP * r.burst, MPS_MAX_UL)
        f.write(f"test was performed using the following parameters: --mps={mps} "
                f"--burst={r.burst} --reply-every={r.reply_every} --msg-size={r.msg_size} "
                f"--time={int(cfg.time or 0)}")
    if cfg.dummy_send:
        f.write(f" --dummy-send={int(min(cfg.dummy_send, 2**31 - 1))}")
    if r.full_rtt:
        f.write(" --full-rtt")
    f.write("\n------------------------------\n")
    _out, both = _stats_lines(r)
    for line in both:
        f.write(line + "\n")
    if r.log_pairs:
        den = 1 if r.full_rtt else 2
        f.write("------------------------------\n")
        f.write(f"packet, txTime(sec), rxTime(sec), {'rtt' if r.full_rtt else 'latency'}(usec)\n")
        for i, (t, x) in enumerate(r.log_pairs):
            ts, xs = t / 1e9, x / 1e9
            f.write(f"{i}, {ts:.9f}, {xs:.9f}, {(xs - ts) * (1e6 / den):.3f}\n")
        f.write("------------------------------\n")
    if cfg.histogram is not None and r.rtt_ns:
        for line in _histogram_file_lines(r, cfg.histogram):
            f.write(line + "\n")


def server_text(r: ServerResult) -> str:
    """The server's closing lines: sockperf's, then pyxlio-perf's counters."""
    how = {"signal": "interrupted by user", "time": "interrupted by timer",
           "count": "reached packet number"}.get(r.stopped_by, "interrupted by user")
    lines = [f"{PREFIX}Test end ({how})"]
    if r.received:
        lines.append(f"{PREFIX}Total {r.received} messages received and handled")
    else:
        lines.append(f"{PREFIX}No messages were received on the server.")
    lines.append(f"{PREFIX}cleanupAfterLoop() exit")
    via = r.provider or "kernel"
    off = {True: "offloaded", False: "not offloaded", None: "offload unknown"}[r.offloaded]
    wait = "busy-poll" if r.busy_poll else "blocking"
    lines.append(f"{PYX}{r.protocol.upper()} {r.address}, recv-method {r.recv_method} ({wait}), "
                 f"provider {via}, socket {off}")
    lines.append(f"{PYX}RunTime={r.runtime_s:.3f} sec; ReceivedMessages={r.received}; "
                 f"Replies={r.replies}; WarmupMessages={r.warmup}; Peers={r.peers}")
    if r.ignored or r.malformed or r.closed_conns:
        lines.append(f"{PYX}ignored (not from a client) = {r.ignored}; malformed = "
                     f"{r.malformed}; connections closed for a bad length = {r.closed_conns}")
    lines.append(f"{PYX}# dropped messages = {r.dropped}; # duplicated messages = "
                 f"{r.duplicated}; # out-of-order messages = {r.out_of_order}")
    lines.append(f"{PYX}Message Rate is {r.msg_per_s:.0f} [msg/sec], BandWidth is "
                 f"{r.mb_per_s:.3f} MBps ({r.mb_per_s * 8:.3f} Mbps) over {r.active_s:.3f} sec "
                 "of traffic")
    return "\n".join(lines) + "\n"


def client_dict(r: ClientResult) -> dict[str, Any]:
    """The client's result as plain data (latencies in microseconds, MB = 2**20 bytes)."""
    d = asdict(r)
    d.pop("rtt_ns", None)
    d.pop("log_pairs", None)
    d["tool"] = "pyxlio-perf"
    d["role"] = "client"
    d["latency_unit"] = "usec (round trip)" if r.full_rtt else "usec (half round trip)"
    for key in ("cv",):
        if d.get("latency") and not math.isfinite(d["latency"][key]):
            d["latency"][key] = None
    return d


def server_dict(r: ServerResult) -> dict[str, Any]:
    """The server's result as plain data."""
    d = asdict(r)
    d["tool"] = "pyxlio-perf"
    d["role"] = "server"
    return d


def to_json(d: dict[str, Any]) -> str:
    """One line of JSON."""
    return json.dumps(d, sort_keys=True)


def check_plot_support() -> None:
    """Raise :class:`PlotUnavailable` unless matplotlib can be imported."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install 'pyxlio[plot]' (or matplotlib)"
        ) from exc


def draw_plot(rtt_ns: list[int], path: str, title: str, full_rtt: bool = False) -> None:
    """Draw the latency distribution (microseconds) to ``path`` with median and p99 marked."""
    check_plot_support()
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    if not rtt_ns:
        raise ValueError("no latency samples to draw")
    den = 1000.0 if full_rtt else 2000.0
    values = sorted(x / den for x in rtt_ns)
    n = len(values)
    p50 = values[max(percentile_index(n, 0.5), 0)]
    p99 = values[max(percentile_index(n, 0.99), 0)]
    hi = values[max(percentile_index(n, 0.999), 0)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        clipped = [v for v in values if v <= hi]
        ax.hist(clipped, bins=min(200, max(10, n // 20)), color="#4477aa")
        ax.axvline(p50, color="#228833", linestyle="--", label=f"median {p50:.3f} us")
        ax.axvline(p99, color="#ee6677", linestyle="--", label=f"p99 {p99:.3f} us")
        ax.set_xlabel("round-trip time (usec)" if full_rtt else "half round-trip time (usec)")
        ax.set_ylabel("messages")
        ax.set_yscale("log")
        ax.set_title(f"{title} ({n} samples, up to p99.9)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
