"""Reports: sockperf-shaped text, one JSON object, and an optional latency histogram (PNG)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from .client import ClientResult
from .server import ServerResult
from .stats import percentile_index

__all__ = [
    "HistogramUnavailable",
    "check_histogram_support",
    "client_dict",
    "client_text",
    "draw_histogram",
    "server_dict",
    "server_text",
    "to_json",
]

PREFIX = "pyxlio-perf: "


class HistogramUnavailable(RuntimeError):
    """--histogram was asked but matplotlib is not installed."""


def _setup_line(r: ClientResult | ServerResult) -> str:
    via = r.provider or "kernel"
    off = {True: "offloaded", False: "not offloaded", None: "offload unknown"}[r.offloaded]
    wait = "busy-poll" if r.busy_poll else "blocking"
    return (f"{PREFIX}{r.protocol.upper()}, recv-method {r.recv_method} ({wait}), "
            f"provider {via}, socket {off}")


def client_text(r: ClientResult) -> str:
    """The client's report, shaped like sockperf's summary."""
    lines = [_setup_line(r)]
    lines.append(
        f"{PREFIX}[Total Run] RunTime={r.runtime_s:.3f} sec; Warm up time={r.warmup_s * 1000:.0f} "
        f"msec; SentMessages={r.sent}; ReceivedMessages={r.replies}"
    )
    if r.dummy_sends:
        lines.append(f"{PREFIX}DummySends={r.dummy_sends}")
    if r.mode == "throughput":
        lines.append(f"{PREFIX}Total of {r.valid_sent} messages sent in {r.valid_runtime_s:.3f} "
                     f"sec (measured window)")
        lines.append(f"{PREFIX}Summary: Message Rate is {r.msg_per_s:.0f} [msg/sec]")
        lines.append(f"{PREFIX}Summary: BandWidth is {r.mb_per_s:.3f} MBps "
                     f"({r.mb_per_s * 8:.3f} Mbps)")
        return "\n".join(lines) + "\n"
    lines.append(
        f"{PREFIX}[Valid Duration] RunTime={r.valid_runtime_s:.3f} sec; "
        f"SentMessages={r.valid_sent}; ReceivedMessages={r.valid_received}"
    )
    lat = r.latency
    if lat is None:
        lines.append(f"{PREFIX}No messages were received from the server. Is the server down?")
        return "\n".join(lines) + "\n"
    lines.append(f"{PREFIX}====> avg-latency={lat.avg:.3f} (std-dev={lat.std_dev:.3f})")
    lines.append(
        f"{PREFIX}# dropped messages = {r.dropped}; # duplicated messages = {r.duplicated}; "
        f"# out-of-order messages = {r.out_of_order}"
    )
    lines.append(f"{PREFIX}Summary: Latency is {lat.avg:.3f} usec")
    lines.append(f"{PREFIX}Total {lat.count} observations; each percentile contains "
                 f"{lat.count / 100:.2f} observations")
    lines.append(f"{PREFIX}---> <MAX> observation = {lat.max:8.3f}")
    for label, value in lat.percentiles.items():
        lines.append(f"{PREFIX}---> percentile {float(label):6.3f} = {value:8.3f}")
    lines.append(f"{PREFIX}---> <MIN> observation = {lat.min:8.3f}")
    return "\n".join(lines) + "\n"


def server_text(r: ServerResult) -> str:
    """The server's closing report."""
    lines = [_setup_line(r)]
    lines.append(
        f"{PREFIX}[Server {r.address}] RunTime={r.runtime_s:.3f} sec; "
        f"ReceivedMessages={r.received}; Replies={r.replies}; WarmupMessages={r.warmup}; "
        f"Peers={r.peers}; stopped by {r.stopped_by or 'end'}"
    )
    if r.ignored or r.malformed:
        lines.append(f"{PREFIX}ignored (not from a client) = {r.ignored}; "
                     f"malformed = {r.malformed}")
    lines.append(
        f"{PREFIX}# dropped messages = {r.dropped}; # duplicated messages = {r.duplicated}; "
        f"# out-of-order messages = {r.out_of_order}"
    )
    lines.append(f"{PREFIX}Summary: Message Rate is {r.msg_per_s:.0f} [msg/sec] over "
                 f"{r.active_s:.3f} sec of traffic")
    lines.append(f"{PREFIX}Summary: BandWidth is {r.mb_per_s:.3f} MBps ({r.mb_per_s * 8:.3f} Mbps)")
    return "\n".join(lines) + "\n"


def client_dict(r: ClientResult) -> dict[str, Any]:
    """The client's result as plain data (latencies in microseconds, MB = 2**20 bytes)."""
    d = asdict(r)
    d.pop("rtt_ns", None)
    d["tool"] = "pyxlio-perf"
    d["role"] = "client"
    d["latency_unit"] = "usec (half round trip)"
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


def check_histogram_support() -> None:
    """Raise :class:`HistogramUnavailable` unless matplotlib can be imported."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise HistogramUnavailable(
            "--histogram needs matplotlib: pip install 'pyxlio[plot]' (or matplotlib)"
        ) from exc


def draw_histogram(rtt_ns: list[int], path: str, title: str) -> None:
    """Draw the half-RTT distribution (microseconds) to ``path`` with median and p99 marked."""
    check_histogram_support()
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    if not rtt_ns:
        raise ValueError("no latency samples to draw")
    values = sorted(x / 2000.0 for x in rtt_ns)
    n = len(values)
    p50 = values[percentile_index(n, 0.5)]
    p99 = values[percentile_index(n, 0.99)]
    hi = values[percentile_index(n, 0.999)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        clipped = [v for v in values if v <= hi]
        ax.hist(clipped, bins=min(200, max(10, n // 20)), color="#4477aa")
        ax.axvline(p50, color="#228833", linestyle="--", label=f"median {p50:.3f} us")
        ax.axvline(p99, color="#ee6677", linestyle="--", label=f"p99 {p99:.3f} us")
        ax.set_xlabel("half round-trip time (usec)")
        ax.set_ylabel("messages")
        ax.set_yscale("log")
        ax.set_title(f"{title} ({n} samples, up to p99.9)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
