"""Statistics as sockperf reports them: half-RTT summary, percentiles, sequence accounting.

Percentile method (sockperf's, a nearest-rank rule with rounding): over the ``n`` samples sorted
ascending, percentile ``p`` (a fraction, 0.999 for 99.9) is the sample at zero-based index
``floor(p * n + 0.5) - 1``, clamped to ``[0, n - 1]``. Example: for the ten samples 1..10, p50 is
index ``floor(5.5) - 1 = 4`` -> 5, p90 is index 8 -> 9, p99 is index ``floor(10.4) - 1 = 9`` -> 10.

The standard deviation is the population one (divide by ``n``), as sockperf's.
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
    "grow",
    "percentile_index",
    "percentile_label",
    "rate",
    "summarize_half_rtt",
    "summarize_values",
    "zeros",
]

#: The percentiles sockperf prints, as fractions, highest first as in its report.
PERCENTILES: tuple[float, ...] = (0.99999, 0.9999, 0.999, 0.99, 0.90, 0.75, 0.50, 0.25)


def percentile_index(n: int, p: float) -> int:
    """Zero-based index of percentile ``p`` (a fraction in [0, 1]) among ``n`` sorted samples."""
    if n <= 0:
        raise ValueError("no samples")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"percentile must be a fraction in [0, 1]: {p}")
    idx = math.floor(p * n + 0.5) - 1
    return min(max(idx, 0), n - 1)


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
    pct = {percentile_label(p): data[percentile_index(n, p)] * scale for p in PERCENTILES}
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

