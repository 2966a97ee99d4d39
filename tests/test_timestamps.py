"""recv_batch(timestamps=...): one int64 CLOCK_REALTIME nanosecond value per datagram, with
where it came from; never a silent 0."""

from __future__ import annotations

import socket as stdsocket
import time
from typing import Any

import pytest

import pyxlio
from conftest import offloads_loopback
from pyxlio import TimestampSource


def _send(tx: stdsocket.socket, addr: Any, count: int) -> None:
    for i in range(count):
        tx.sendto(i.to_bytes(4, "big"), addr)


def _recv_all(rx: Any, count: int, **kwargs: Any) -> list[Any]:
    """Batches until `count` datagrams arrived (bounded: 5 s per batch)."""
    got: list[Any] = []
    total = 0
    while total < count:
        b = rx.recv_batch(64, timeout=5.0, **kwargs)
        assert b, "no datagram within 5 s"
        got.append(b)
        total += len(b)
    return got


def test_timestamps_one_per_datagram_within_bounds(udp_pair: Any, provider: str) -> None:
    rx, tx, addr = udp_pair
    assert rx.enable_timestamps() in (True, False)
    time.sleep(0.05)   # the kernel's switch to timestamping is deferred (a static key)
    before = time.time_ns()
    _send(tx, addr, 20)
    batches = _recv_all(rx, 20, timestamps=True)
    after = time.time_ns()
    try:
        for b in batches:
            ts = b.timestamps
            src = b.timestamp_sources
            assert ts.typecode == "q" and src.typecode == "B"
            assert len(ts) == len(b) == len(src)
            for value, where in zip(ts, src):
                assert value != 0
                assert before <= value <= after
                assert where in (TimestampSource.PYXLIO, TimestampSource.KERNEL)
            if offloads_loopback(provider):
                # XLIO's zero-copy receive returns no control messages: pyxlio's reading.
                assert b.zcopy
                assert set(src) == {TimestampSource.PYXLIO}
            else:
                # The kernel path stamps every datagram queued after the switch.
                assert set(src) == {TimestampSource.KERNEL}
            # Stamps follow arrival order (one clock).
            assert list(ts) == sorted(ts)
    finally:
        for b in batches:
            b.release()


def test_kernel_stamp_is_receive_time_not_dequeue_time(udp_pair: Any, provider: str) -> None:
    """A datagram that waited in the queue carries the time it arrived, before the call."""
    if offloads_loopback(provider):
        pytest.skip("zero-copy path: the provider gives no receive time (see the next test)")
    rx, tx, addr = udp_pair
    rx.enable_timestamps()
    time.sleep(0.05)
    _send(tx, addr, 1)
    time.sleep(0.05)
    before_call = time.time_ns()
    with rx.recv_batch(8, timeout=5.0, timestamps=True) as b:
        assert len(b) == 1
        assert b.timestamp_sources[0] == TimestampSource.KERNEL
        assert b.timestamps[0] < before_call


def test_zero_copy_stamp_is_dequeue_reading(udp_pair: Any, provider: str) -> None:
    if not offloads_loopback(provider):
        pytest.skip("needs a socket XLIO offloads (the zero-copy path)")
    rx, tx, addr = udp_pair
    _send(tx, addr, 1)
    time.sleep(0.05)
    before_call = time.time_ns()
    with rx.recv_batch(8, timeout=5.0, timestamps=True) as b:
        assert len(b) == 1
        assert b.timestamp_sources[0] == TimestampSource.PYXLIO
        assert b.timestamps[0] >= before_call


def test_hardware_mode_falls_back_to_software(udp_pair: Any, provider: str) -> None:
    """Loopback has no NIC: "hardware" gives the kernel's software stamps (or pyxlio's on
    the zero-copy path), never 0."""
    rx, tx, addr = udp_pair
    rx.enable_timestamps("hardware")
    time.sleep(0.05)
    _send(tx, addr, 5)
    batches = _recv_all(rx, 5, timestamps="hardware")
    try:
        for b in batches:
            assert all(v > 0 for v in b.timestamps)
            want = TimestampSource.PYXLIO if offloads_loopback(provider) else \
                TimestampSource.KERNEL
            assert set(b.timestamp_sources) == {want}
    finally:
        for b in batches:
            b.release()


def test_without_timestamps_the_property_refuses(udp_pair: Any) -> None:
    rx, tx, addr = udp_pair
    _send(tx, addr, 1)
    with rx.recv_batch(8, timeout=5.0) as b:
        assert len(b) == 1
        with pytest.raises(ValueError, match="timestamps=True"):
            _ = b.timestamps
        with pytest.raises(ValueError, match="timestamps=True"):
            _ = b.timestamp_sources
    with pytest.raises(ValueError, match="released"):
        _ = b.timestamps


def test_empty_batch_has_empty_timestamps(udp_pair: Any) -> None:
    rx, _tx, _addr = udp_pair
    with rx.recv_batch(8, timeout=0, timestamps=True) as b:
        assert len(b) == 0
        assert len(b.timestamps) == 0


@pytest.mark.parametrize("bad", ["sw", 1.5, b"software", 2])
def test_bad_timestamps_argument(udp_pair: Any, bad: object) -> None:
    rx, _tx, _addr = udp_pair
    with pytest.raises(ValueError, match="timestamps must be"):
        rx.recv_batch(8, timeout=0, timestamps=bad)
    with pytest.raises(ValueError, match="timestamps must be"):
        rx.enable_timestamps(bad)


def test_enable_on_closed_socket(make_socket: Any) -> None:
    s = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.close()
    with pytest.raises(OSError):
        s.enable_timestamps()


def test_callback_recvinfo_and_batch_agree_on_kernel_stamps(udp_pair: Any,
                                                            provider: str) -> None:
    """Software callbacks (kernel path) see the same kernel stamp the batch reports."""
    if offloads_loopback(provider):
        pytest.skip("XLIO runs the callback on offloaded sockets (its own RecvInfo stamps)")
    rx, tx, addr = udp_pair
    seen: list[int] = []

    def cb(view: memoryview, info: pyxlio.RecvInfo) -> int:
        seen.append(info.sw_timestamp_ns)
        return pyxlio.Verdict.RECV

    rx.set_recv_callback(cb)
    time.sleep(0.05)
    _send(tx, addr, 3)
    batches = _recv_all(rx, 3, timestamps=True)
    try:
        stamps = [v for b in batches for v in b.timestamps]
        assert stamps == seen
    finally:
        for b in batches:
            b.release()
        rx.set_recv_callback(None)
