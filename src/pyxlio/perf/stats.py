"""Statistics as sockperf reports them: half-RTT summary, percentiles, sequence accounting.

Percentile method (sockperf's, a nearest-rank rule with rounding): over the ``n`` samples sorted
ascending, percentile ``p`` (a fraction, 0.999 for 99.9) is the sample at zero-based index
``floor(p * n + 0.5) - 1``. Example: for the ten samples 1..10, p50 is index
``floor(5.5) - 1 = 4`` -> 5, p90 is index 8 -> 9, p99 is index ``floor(10.4) - 1 = 9`` -> 10.
When that index is negative (few samples, low percentile) sockperf prints no line for that
percentile; so does this tool (the percentile is left out of the summary).

sockperf's avg line (:func:`sockperf_summary`): over the half round-trip times (whole
nanoseconds, ``rtt // 2``) the standard deviation is the sample one (divide by ``n - 1``),
``mean-ad`` the mean absolute deviation from the mean, ``median-ad`` the median absolute
deviation from the median times 1.48260221851, ``siqr`` half the distance between the
sockperf-rule 75th and 25th percentiles, ``cv`` std-dev / mean, ``std-error`` std-dev / sqrt(n)
and the confidence interval mean -/+ z * std-error, z the normal quantile of
``1 - (1 - level/100) / 2`` (level 99 by default, ``--ci_sig_level``), computed with the same
rational approximation (Abramowitz and Stegun 26.2.23, arXiv:1002.0567's constants) so the
digits agree.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "PERCENTILES",
    "LatencyStats",
    "SequenceTracker",
    "SockperfSummary",
    "grow",
    "normal_quantile",
    "percentile_index",
    "percentile_label",
    "rate",
    "sockperf_summary",
    "summarize_half_rtt",
    "summarize_values",
    "zeros",
]

#: The percentiles sockperf prints, as fractions, highest first as in its report.
PERCENTILES: tuple[float, ...] = (0.99999, 0.9999, 0.999, 0.99, 0.90, 0.75, 0.50, 0.25)


def percentile_index(n: int, p: float) -> int:
    """Zero-based index of percentile ``p`` (a fraction in [0, 1]) among ``n`` sorted samples.

    -1 means "no such sample" (sockperf prints no line for it).
    """
    if n <= 0:
        raise ValueError("no samples")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"percentile must be a fraction in [0, 1]: {p}")
    idx = math.floor(p * n + 0.5) - 1
    return min(idx, n - 1)


def percentile_label(p: float) -> str:
    """``0.999`` -> ``"99.9"``, ``0.5`` -> ``"50"`` (the key used in reports and JSON)."""
    text = f"{p * 100:.3f}".rstrip("0").rstrip(".")
    return text


@dataclass
class LatencyStats:
    """Summary of latency samples, in microseconds."""

    count: int
    avg: float
    std_dev: float
    min: float
    max: float
    percentiles: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return asdict(self)


def summarize_values(values: Iterable[float], scale: float = 1.0) -> LatencyStats | None:
    """Summarise ``values`` multiplied by ``scale``; ``None`` when there are none."""
    data = sorted(values)
    n = len(data)
    if n == 0:
        return None
    total = math.fsum(data)
    mean = total / n
    var = math.fsum((x - mean) * (x - mean) for x in data) / n
    pct = {percentile_label(p): data[i] * scale for p in PERCENTILES
           if (i := percentile_index(n, p)) >= 0}
    return LatencyStats(
        count=n,
        avg=mean * scale,
        std_dev=math.sqrt(var) * scale,
        min=data[0] * scale,
        max=data[-1] * scale,
        percentiles=pct,
    )


def summarize_half_rtt(rtt_ns: Iterable[int]) -> LatencyStats | None:
    """Half round-trip statistics in microseconds from round-trip times in nanoseconds."""
    return summarize_values(rtt_ns, scale=0.5 / 1000.0)


class SequenceTracker:
    """Counts dropped, duplicated and out-of-order messages from their sequence numbers.

    The expected sequence starts at ``first`` (or at the first one seen when ``first`` is
    None). A jump forward counts the skipped numbers as dropped and remembers up to
    ``window`` of them, so that one arriving later is re-counted as out-of-order instead of
    dropped; an old number not remembered as missing counts as duplicated. In-order traffic
    costs one comparison per message.
    """

    __slots__ = ("_missing", "dropped", "duplicated", "expected", "out_of_order", "received",
                 "window")

    def __init__(self, first: int | None = None, window: int = 65536) -> None:
        self.expected: int | None = first
        self.received = 0
        self.dropped = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.window = window
        self._missing: set[int] = set()

    def add(self, seq: int) -> None:
        """Account for one received message with sequence number ``seq``."""
        self.received += 1
        exp = self.expected
        if exp is None or seq == exp:
            self.expected = seq + 1
            return
        if seq > exp:
            gap = seq - exp
            self.dropped += gap
            if gap <= self.window:
                missing = self._missing
                missing.update(range(exp, seq))
                if len(missing) > self.window:
                    # Forget the oldest: they will stay counted as dropped.
                    for old in sorted(missing)[: len(missing) - self.window]:
                        missing.discard(old)
            self.expected = seq + 1
            return
        if seq in self._missing:
            self._missing.discard(seq)
            self.dropped -= 1
            self.out_of_order += 1
        else:
            self.duplicated += 1

    def add_run(self, first: int, count: int) -> None:
        """Account for ``count`` messages numbered ``first``, ``first + 1``, ... in one step.

        The caller must know the run is contiguous (e.g. the last number of a batch is
        ``first + count - 1`` and the numbers only go up); otherwise call :meth:`add` per message.
        """
        if count <= 0:
            return
        if self.expected is None or first == self.expected:
            self.received += count
            self.expected = first + count
            return
        for seq in range(first, first + count):
            self.add(seq)

    def to_dict(self) -> dict[str, int]:
        """Counters as a dict (for JSON)."""
        return {
            "received": self.received,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
        }


def zeros(typecode: str, n: int) -> array[Any]:
    """A zero-filled ``array`` of ``n`` items, made without a Python loop."""
    a: array[Any] = array(typecode)
    a.frombytes(bytes(n * a.itemsize))
    return a


def grow(a: array[Any], minimum: int) -> None:
    """Grow ``a`` in place (doubling, zero-filled) so that it holds at least ``minimum`` items."""
    n = len(a)
    if n >= minimum:
        return
    target = max(minimum, 2 * n, 1024)
    a.frombytes(bytes((target - n) * a.itemsize))


def rate(count: int, seconds: float) -> float:
    """Items per second (0 when no time elapsed)."""
    return count / seconds if seconds > 0 else 0.0



def _rational_approximation(t: float) -> float:
    # Abramowitz and Stegun 26.2.23 with the refitted constants of arXiv:1002.0567, section 3
    # (the ones sockperf uses, so the printed interval agrees to the last digit).
    c0, c1, c2 = 2.653962002601684482, 1.561533700212080345, 0.061146735765196993
    d1, d2, d3 = 1.904875182836498708, 0.454055536444233510, 0.009547745327068945
    return t - ((c2 * t + c1) * t + c0) / (((d3 * t + d2) * t + d1) * t + 1.0)


def normal_quantile(p: float) -> float:
    """The standard normal quantile of ``p`` (0 < p < 1), by the rational approximation."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1): {p}")
    if p < 0.5:
        return -_rational_approximation(math.sqrt(-2.0 * math.log(p)))
    return _rational_approximation(math.sqrt(-2.0 * math.log(1.0 - p)))


@dataclass
class SockperfSummary:
    """sockperf's client statistics over one set of samples (microseconds)."""

    count: int
    avg: float
    std_dev: float
    mean_ad: float
    median_ad: float
    siqr: float
    cv: float
    std_error: float
    ci_level: float
    ci_low: float
    ci_high: float
    min: float
    max: float
    percentiles: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return asdict(self)


def _median_sorted(v: list[int]) -> int:
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) // 2


def sockperf_summary(rtt_ns: Iterable[int], *, full_rtt: bool = False,
                     ci_level: float = 99.0) -> SockperfSummary | None:
    """sockperf's statistics of round-trip times in nanoseconds; ``None`` without samples.

    The samples are half round trips (``rtt // 2``), or whole ones with ``full_rtt``; the mean
    is the mean round trip divided by two (whole nanoseconds), as sockperf computes it.
    """
    rtts = list(rtt_ns)
    n = len(rtts)
    if n == 0:
        return None
    den = 1 if full_rtt else 2
    lat = sorted(r // den for r in rtts)
    avg_ns = (sum(rtts) // n) // den
    if n > 1:
        s1 = math.fsum(lat)
        s2 = math.fsum(float(x) * x for x in lat)
        mean = s1 / n
        var = (s2 - n * mean * mean) / (n - 1)
        std = float(int(math.sqrt(max(var, 0.0)) + 0.5))
        mad = float(int(math.fsum(abs(x - mean) for x in lat) / n))
        med = _median_sorted(lat)
        medad = float(int(_median_sorted(sorted(abs(x - med) for x in lat)) * 1.48260221851))
        p75 = lat[int(0.5 + 0.75 * n) - 1]
        p25 = lat[int(0.5 + 0.25 * n) - 1]
        siqr = float((p75 - p25) // 2)
    else:
        std = mad = medad = siqr = 0.0
    avg = avg_ns / 1000.0
    std_us = std / 1000.0
    cv = std_us / avg if avg else math.inf if std_us else math.nan
    se = std_us / math.sqrt(n)
    z = normal_quantile(1 - (1 - ci_level / 100) / 2)
    pct = {percentile_label(p): lat[i] / 1000.0 for p in PERCENTILES
           if (i := percentile_index(n, p)) >= 0}
    return SockperfSummary(
        count=n, avg=avg, std_dev=std_us, mean_ad=mad / 1000.0, median_ad=medad / 1000.0,
        siqr=siqr / 1000.0, cv=cv, std_error=se, ci_level=float(ci_level),
        ci_low=avg - z * se, ci_high=avg + z * se, min=lat[0] / 1000.0, max=lat[-1] / 1000.0,
        percentiles=pct,
    )
