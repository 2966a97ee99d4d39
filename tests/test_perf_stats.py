"""Statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from pyxlio.perf import stats

pytestmark = pytest.mark.provider_independent


def test_percentile_index_sockperf_rule() -> None:
    # n = 10: floor(p*10 + 0.5) - 1
    assert stats.percentile_index(10, 0.25) == 2  # floor(3.0) - 1
    assert stats.percentile_index(10, 0.50) == 4  # floor(5.5) - 1
    assert stats.percentile_index(10, 0.75) == 7  # floor(8.0) - 1
    assert stats.percentile_index(10, 0.90) == 8  # floor(9.5) - 1
    assert stats.percentile_index(10, 0.99) == 9  # floor(10.4) - 1
    assert stats.percentile_index(10, 0.99999) == 9
    # n = 1000: p99.9 -> floor(999.5) - 1 = 998; p99 -> 989
    assert stats.percentile_index(1000, 0.999) == 998
    assert stats.percentile_index(1000, 0.99) == 989
    # Small n: sockperf's index is negative and it prints no line for that percentile.
    assert stats.percentile_index(1, 0.25) == -1
    assert stats.percentile_index(3, 0.1) == -1
    assert stats.percentile_index(2, 0.25) == 0  # floor(1.0) - 1


def test_percentile_index_errors() -> None:
    with pytest.raises(ValueError):
        stats.percentile_index(0, 0.5)
    with pytest.raises(ValueError):
        stats.percentile_index(10, 1.5)


def test_labels() -> None:
    assert [stats.percentile_label(p) for p in stats.PERCENTILES] == [
        "99.999", "99.99", "99.9", "99", "90", "75", "50", "25"]


def test_summarize_hand_computed() -> None:
    # Values 1..10 in shuffled order.
    s = stats.summarize_values([7, 3, 10, 1, 5, 9, 2, 8, 4, 6])
    assert s is not None
    assert s.count == 10
    assert s.avg == 5.5
    assert s.min == 1 and s.max == 10
    # Population std-dev of 1..10: sqrt(8.25)
    assert s.std_dev == pytest.approx(math.sqrt(8.25))
    assert s.percentiles == {"99.999": 10, "99.99": 10, "99.9": 10, "99": 10, "90": 9,
                             "75": 8, "50": 5, "25": 3}


def test_half_rtt_in_microseconds() -> None:
    # RTTs 2000, 4000, 6000 ns -> half RTTs 1, 2, 3 us.
    s = stats.summarize_half_rtt([6000, 2000, 4000])
    assert s is not None
    assert (s.min, s.avg, s.max) == (1.0, 2.0, 3.0)
    assert s.percentiles["50"] == 2.0  # floor(1.5 + 0.5) - 1 = 1 -> 2 us
    assert s.std_dev == pytest.approx(math.sqrt(2 / 3))
    assert stats.summarize_half_rtt([]) is None


def test_tracker_in_order() -> None:
    t = stats.SequenceTracker()
    for seq in range(1, 101):
        t.add(seq)
    assert t.to_dict() == {"received": 100, "dropped": 0, "duplicated": 0, "out_of_order": 0}


def test_tracker_gap_dup_and_late() -> None:
    t = stats.SequenceTracker(first=1)
    for seq in [1, 2, 5, 6, 3, 6, 7, 1]:
        t.add(seq)
    # 3 and 4 skipped (2 dropped); 3 arrives late (ooo, one less dropped); 6 and 1 again (dups).
    assert t.to_dict() == {"received": 8, "dropped": 1, "duplicated": 2, "out_of_order": 1}


def test_tracker_starts_at_first_seen() -> None:
    t = stats.SequenceTracker()
    t.add(1000)
    t.add(1001)
    assert t.dropped == 0
    t = stats.SequenceTracker(first=0)
    t.add(3)
    assert t.dropped == 3


def test_tracker_runs() -> None:
    t = stats.SequenceTracker(first=0)
    t.add_run(0, 64)
    t.add_run(64, 64)
    assert (t.received, t.dropped, t.expected) == (128, 0, 128)
    t.add_run(130, 2)  # 128, 129 missing
    assert (t.received, t.dropped) == (130, 2)
    t.add_run(128, 1)  # late
    assert (t.dropped, t.out_of_order) == (1, 1)


def test_tracker_window_bounds_memory() -> None:
    t = stats.SequenceTracker(first=0, window=10)
    t.add(100)  # gap of 100 > window: counted, not remembered
    t.add(50)
    assert (t.dropped, t.duplicated, t.out_of_order) == (100, 1, 0)


def test_zeros_and_grow() -> None:
    a = stats.zeros("q", 5)
    assert list(a) == [0] * 5
    a[4] = 9
    stats.grow(a, 3000)
    assert len(a) >= 3000 and a[4] == 9 and a[2999] == 0
