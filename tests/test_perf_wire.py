"""sockperf's wire format: exact bytes, round trips, TCP framing."""

from __future__ import annotations

import random

import pytest

from pyxlio.perf import wire

pytestmark = pytest.mark.provider_independent


def test_header_is_fourteen_bytes_network_order() -> None:
    data = wire.encode(0x0102030405060708, wire.CLIENT | wire.PONG, 0x0A0B0C0D)
    assert data == bytes.fromhex("0102030405060708" "0003" "0a0b0c0d")
    assert wire.HEADER_SIZE == 14


def test_flag_values_match_sockperf() -> None:
    assert (wire.CLIENT, wire.PONG, wire.WARMUP) == (1, 2, 4)


def test_round_trip() -> None:
    for seq, flags, length in [(0, 0, 14), (1, 3, 64), (2**64 - 1, 0xFFFF, 0xFFFFFFFF),
                               (12345, wire.WARMUP | wire.CLIENT, 1472)]:
        h = wire.decode(wire.encode(seq, flags, length) + b"\0" * 10)
        assert (h.seq, h.flags, h.length) == (seq, flags, length)


def test_header_properties() -> None:
    h = wire.decode(wire.encode(7, wire.CLIENT | wire.PONG, 14))
    assert h.is_client and h.is_pong and not h.is_warmup
    h = wire.decode(wire.encode(7, wire.WARMUP, 14))
    assert not h.is_client and not h.is_pong and h.is_warmup


def test_reply_flags_clear_client_keep_the_rest() -> None:
    assert wire.make_reply_flags(wire.CLIENT | wire.PONG) == wire.PONG
    assert wire.make_reply_flags(wire.CLIENT | wire.PONG | 0x100) == wire.PONG | 0x100


def test_make_message_pads_with_zeros() -> None:
    msg = wire.make_message(5, wire.CLIENT, 64)
    assert len(msg) == 64
    assert msg[:14] == wire.encode(5, wire.CLIENT, 64)
    assert msg[14:] == bytes(50)


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 14), (2**64, 0, 14), (0, -1, 14), (0, 2**16, 14), (0, 0, 13), (0, 0, 2**32)],
)
def test_encode_rejects_out_of_range(args: tuple[int, int, int]) -> None:
    with pytest.raises(wire.WireError):
        wire.encode(*args)


def test_decode_rejects_short_and_bad_length() -> None:
    with pytest.raises(wire.WireError, match="too short"):
        wire.decode(b"\0" * 13)
    with pytest.raises(wire.WireError, match="smaller than the header"):
        wire.decode(wire.HEADER.pack(1, 0, 5))
    with pytest.raises(wire.WireError):
        wire.make_message(0, 0, 10)


def _stream(sizes: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
    out = bytearray()
    expect = []
    for i, size in enumerate(sizes):
        msg = wire.make_message(i + 1, wire.CLIENT | wire.PONG, size)
        if size > wire.HEADER_SIZE:
            msg[-1] = i & 0xFF
        out += msg
        expect.append((i + 1, size))
    return bytes(out), expect


@pytest.mark.parametrize("seed", range(5))
def test_framer_reassembles_any_chunking(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([14, 15, 64, 1000, 1472, 9000]) for _ in range(200)]
    data, expect = _stream(sizes)
    got: list[tuple[int, int, bytes]] = []
    framer = wire.StreamFramer()
    pos = 0
    total = 0
    while pos < len(data):
        step = rng.choice([1, 3, 13, 14, 15, 100, 4096, 65536])
        total += framer.feed(data[pos : pos + step],
                             lambda m: got.append((*wire.HEADER.unpack_from(m)[::2], bytes(m))))
        pos += step
    assert total == len(expect)
    assert [(s, n) for s, n, _ in got] == expect
    # The bytes of every message come through intact.
    off = 0
    for _s, n, raw in got:
        assert raw == data[off : off + n]
        off += n
    assert framer.pending == 0


def test_framer_keeps_a_partial_message() -> None:
    data, _ = _stream([64, 64])
    framer = wire.StreamFramer()
    seen: list[int] = []
    assert framer.feed(data[:100], lambda m: seen.append(len(m))) == 1
    assert framer.pending == 36
    assert framer.feed(data[100:], lambda m: seen.append(len(m))) == 1
    assert seen == [64, 64]


def test_framer_rejects_bad_length() -> None:
    framer = wire.StreamFramer(max_size=1000)
    with pytest.raises(wire.WireError, match="larger than expected"):
        framer.feed(wire.HEADER.pack(1, 1, 5000) + bytes(100), lambda m: None)
    framer = wire.StreamFramer()
    with pytest.raises(wire.WireError, match="bad length"):
        framer.feed(wire.HEADER.pack(1, 1, 3), lambda m: None)


def test_framer_takes_sockperf_tcp_sizes() -> None:
    # sockperf allows TCP messages up to 1 MiB - 1; a framer sized for that cuts them whole.
    big = wire.MAX_TCP_MESSAGE
    msg = wire.make_message(7, wire.CLIENT | wire.PONG, big)
    framer = wire.StreamFramer(max_size=big)
    seen: list[int] = []
    for off in range(0, big, 65536):
        framer.feed(msg[off:off + 65536], lambda m: seen.append(len(m)))
    assert seen == [big]
    assert wire.MAX_UDP_MESSAGE == 65507 and wire.MAX_TCP_MESSAGE == 1048575
