"""sockperf's message header, so this tool and a C sockperf can face each other.

Every message starts with a 14-byte header in network byte order::

    offset 0   u64  sequence number
    offset 8   u16  flags: CLIENT=1 (sent by a client), PONG=2 (a reply is requested / this is
                    the reply), WARMUP=4 (a warm-up message: the server neither counts nor
                    answers it)
    offset 10  u32  length of the whole message, header included

The rest of the message is padding (zeros here). A server answers a message that has CLIENT and
PONG set (and not WARMUP) by sending the same message back with CLIENT cleared (flags == PONG),
as sockperf's server does. Over TCP the length field frames the stream.
"""

from __future__ import annotations

import struct
from typing import Callable, NamedTuple

__all__ = [
    "CLIENT",
    "HEADER",
    "HEADER_SIZE",
    "MAX_MESSAGE",
    "MAX_TCP_MESSAGE",
    "MAX_UDP_MESSAGE",
    "PONG",
    "WARMUP",
    "Header",
    "StreamFramer",
    "WireError",
    "decode",
    "encode",
    "make_message",
    "make_reply_flags",
]

CLIENT = 1
PONG = 2
WARMUP = 4

HEADER = struct.Struct("!QHI")
HEADER_SIZE = HEADER.size  # 14
MAX_UDP_MESSAGE = 65507  # largest UDP/IPv4 payload: sockperf's limit of -m over UDP
MAX_TCP_MESSAGE = (1 << 20) - 1  # sockperf's limit of -m over TCP (and of a server's -m)
MAX_MESSAGE = MAX_UDP_MESSAGE  # sockperf's server takes messages up to max(65507, its -m)

_OnMessage = Callable[[memoryview], object]

assert HEADER_SIZE == 14


class WireError(ValueError):
    """A message that does not follow sockperf's format (too short, bad length field)."""


class Header(NamedTuple):
    """A decoded sockperf header."""

    seq: int
    flags: int
    length: int

    @property
    def is_client(self) -> bool:
        """True if the sender is a client (flag 1)."""
        return bool(self.flags & CLIENT)

    @property
    def is_pong(self) -> bool:
        """True if a reply is requested, or this is one (flag 2)."""
        return bool(self.flags & PONG)

    @property
    def is_warmup(self) -> bool:
        """True for a warm-up message (flag 4)."""
        return bool(self.flags & WARMUP)


def encode(seq: int, flags: int, length: int) -> bytes:
    """Return the 14 header bytes for ``seq``, ``flags`` and the total message ``length``."""
    if not 0 <= seq < 1 << 64:
        raise WireError(f"sequence number out of range: {seq}")
    if not 0 <= flags < 1 << 16:
        raise WireError(f"flags out of range: {flags}")
    if not HEADER_SIZE <= length <= 0xFFFFFFFF:
        raise WireError(f"message length must be >= {HEADER_SIZE}: {length}")
    return HEADER.pack(seq, flags, length)


def decode(data: bytes | bytearray | memoryview) -> Header:
    """Decode the header at the start of ``data`` (which may be longer than 14 bytes)."""
    if len(data) < HEADER_SIZE:
        raise WireError(f"message too short for a sockperf header: {len(data)} < {HEADER_SIZE}")
    seq, flags, length = HEADER.unpack_from(data, 0)
    if length < HEADER_SIZE:
        raise WireError(f"length field {length} is smaller than the header")
    return Header(seq, flags, length)


def make_message(seq: int, flags: int, size: int) -> bytearray:
    """A whole ``size``-byte message: header then zero padding (a mutable buffer to reuse)."""
    if size < HEADER_SIZE:
        raise WireError(f"message size must be at least {HEADER_SIZE} bytes: {size}")
    buf = bytearray(size)
    HEADER.pack_into(buf, 0, seq, flags, size)
    return buf


def make_reply_flags(flags: int) -> int:
    """The flags a server puts in its answer: CLIENT cleared, the rest kept."""
    return flags & ~CLIENT & 0xFFFF


class StreamFramer:
    """Cuts a TCP byte stream into whole sockperf messages using the header's length field.

    Feed it whatever the socket returned; it calls back once per complete message with a
    memoryview that is valid only during the call. A length field outside
    ``[HEADER_SIZE, max_size]`` raises :class:`WireError` (the stream cannot be resynchronised;
    sockperf's server closes such a connection: "Message received was larger than expected").
    """

    __slots__ = ("_buf", "_have", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._buf = bytearray(max(max_size, HEADER_SIZE))
        self._have = 0

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole message."""
        return self._have

    def feed(self, data: bytes | bytearray | memoryview, on_message: _OnMessage) -> int:
        """Add ``data``; call ``on_message(view)`` for each complete message. Returns the count."""
        mv = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = len(mv)
        pos = 0
        done = 0
        buf = self._buf
        unpack = HEADER.unpack_from
        while pos < n:
            if self._have == 0 and n - pos >= HEADER_SIZE:
                # Fast path: whole messages straight out of the caller's buffer.
                length = unpack(mv, pos)[2]
                self._check(length)
                if n - pos >= length:
                    on_message(mv[pos : pos + length])
                    pos += length
                    done += 1
                    continue
            # Slow path: accumulate into our buffer.
            if self._have < HEADER_SIZE:
                take = min(HEADER_SIZE - self._have, n - pos)
                buf[self._have : self._have + take] = mv[pos : pos + take]
                self._have += take
                pos += take
                if self._have < HEADER_SIZE:
                    break
            length = unpack(buf, 0)[2]
            self._check(length)
            take = min(length - self._have, n - pos)
            if take:
                buf[self._have : self._have + take] = mv[pos : pos + take]
                self._have += take
                pos += take
            if self._have == length:
                with memoryview(buf) as whole:
                    on_message(whole[:length])
                self._have = 0
                done += 1
        return done

    def _check(self, length: int) -> None:
        if length < HEADER_SIZE:
            raise WireError(f"bad length field {length} in a TCP stream (smaller than the header)")
        if length > self.max_size:
            raise WireError(
                f"Message received was larger than expected, message ignored. (length field "
                f"{length} in a TCP stream, expected {HEADER_SIZE}..{self.max_size})"
            )
