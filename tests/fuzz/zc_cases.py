"""Named scenarios of malformed (and well-formed) recvfrom_zcopy answers, one per process.

``python zc_cases.py NAME`` in a process with tests/c/fake_zc.c preloaded (LD_PRELOAD) runs one
scenario and exits 0 (pyxlio kept the contract), 1 (a mismatch, explained on stderr), or dies
(a crash: pyxlio read memory the provider did not map, or freed an id it must not free: the
fake aborts).  ``--list`` prints the names.  The contract is in zcfake.py; every operation of
a scenario is checked against it by the Harness, and the asserts here say the main point.
"""

from __future__ import annotations

import errno
import faulthandler
import sys
import warnings
from collections.abc import Callable

from zcfake import (
    DROP,
    ERRNOS,
    HOLD,
    MSG_ZCOPY,
    RAISE,
    RECV,
    Answer,
    Builder,
    CallbackError,
    Harness,
    Mismatch,
    Sock,
    landing_length,
    sockaddr_v4,
    sockaddr_v6,
)

CASES: dict[str, Callable[[Harness], None]] = {}

#: How each malformation is built: (builder, landing length, stream?) -> a malformed answer.
Maker = Callable[[Builder, int, bool], Answer]
MALFORMED: dict[str, Maker] = {}


def case(fn: Callable[[Harness], None]) -> Callable[[Harness], None]:
    CASES[fn.__name__] = fn
    return fn


def malformed(fn: Maker) -> Maker:
    MALFORMED[fn.__name__] = fn
    return fn


def is_eproto(r: object) -> bool:
    import pyxlio

    return isinstance(r, pyxlio.XlioError) and r.errno == errno.EPROTO


def must(cond: bool, what: str) -> None:
    if not cond:
        raise Mismatch(what)


def good(h: Harness, stream: bool, seed: int = 1) -> Answer:
    shape = [[5, 3], [4]] if stream else [[7, 2]]
    return h.build.generated(shape, seed)


# ---------------------------------------------------------------------------------------------
# Malformations
# ---------------------------------------------------------------------------------------------

@malformed
def n_packets_past_buffer(b: Builder, size: int, stream: bool) -> Answer:
    """The buffer is full of valid packets and n_packet_num claims one more."""
    k = (size - 8) // 32
    base = b.fake.payload(b"z")
    words, ids = [k + 1], []
    for _ in range(k):
        pid = b.fake.new_id()
        ids.append(pid)
        words += [pid, 1, base, 1]
    a = b.raw(words, rc=k, ids=ids, note=f"{k} packets, n_packet_num {k + 1}")
    a.payloads[base] = b"z"
    return a


@malformed
def n_packets_more_than_rc(b: Builder, size: int, stream: bool) -> Answer:
    """Two complete packets, rc counting the first only (UDP: one packet, n_packet_num 2)."""
    if stream:
        a = b.generated([[6], [9]], 3)
        return b.rc(a, 6)
    return b.n_packets(b.generated([[6]], 3), 2)


@malformed
def n_packets_2_63(b: Builder, size: int, stream: bool) -> Answer:
    return b.n_packets(b.generated([[10]], 4), 1 << 63)


@malformed
def n_packets_max(b: Builder, size: int, stream: bool) -> Answer:
    return b.n_packets(b.generated([[10]], 4), (1 << 64) - 1)


@malformed
def n_packets_2_32(b: Builder, size: int, stream: bool) -> Answer:
    return b.n_packets(b.generated([[10]], 4), 1 << 32)


@malformed
def n_packets_zero_with_data(b: Builder, size: int, stream: bool) -> Answer:
    return b.n_packets(b.generated([[10]], 5), 0)


@malformed
def sz_iov_past_buffer(b: Builder, size: int, stream: bool) -> Answer:
    return b.sz_iov(b.generated([[10]], 6), 0, size // 16)


@malformed
def sz_iov_2_63(b: Builder, size: int, stream: bool) -> Answer:
    return b.sz_iov(b.generated([[10]], 6), 0, 1 << 63)


@malformed
def sz_iov_stride_wraps_to_16(b: Builder, size: int, stream: bool) -> Answer:
    """16 + 16 * sz_iov wraps around 2**64 to 16: a naive walk stays in place."""
    return b.sz_iov(b.generated([[10], [4]] if stream else [[10]], 6), 0, 1 << 60)


@malformed
def sz_iov_stride_wraps_to_0(b: Builder, size: int, stream: bool) -> Answer:
    """16 + 16 * sz_iov wraps around 2**64 to 0."""
    return b.sz_iov(b.generated([[10]], 6), 0, (1 << 60) - 1)


@malformed
def sz_iov_one_more(b: Builder, size: int, stream: bool) -> Answer:
    """One iovec more than the answer holds: the next one is the fake's filler."""
    return b.sz_iov(b.generated([[10, 20]], 7), 0, 3)


@malformed
def iov_len_past_mapping(b: Builder, size: int, stream: bool) -> Answer:
    """iov_len 4 KiB longer than the fragment (the guard page is right after it); rc as was."""
    return b.iov_len(b.generated([[10]], 8), 0, 0, 10 + 4096)


@malformed
def iov_len_2_63(b: Builder, size: int, stream: bool) -> Answer:
    return b.iov_len(b.generated([[10]], 8), 0, 0, 1 << 63)


@malformed
def iov_lens_wrap_to_rc(b: Builder, size: int, stream: bool) -> Answer:
    """Two iov_len of about 2**63 whose 64-bit sum wraps around to rc."""
    a = b.generated([[10, 1]], 9)
    a = b.iov_len(a, 0, 0, 1 << 63)
    return b.iov_len(a, 0, 1, (1 << 63) + 11)


@malformed
def iov_len_wraps_32_bits(b: Builder, size: int, stream: bool) -> Answer:
    """A fragment of 2**32 + 10 bytes with rc 10: right only if lengths were cut to 32 bits."""
    return b.iov_len(b.generated([[10]], 9), 0, 0, (1 << 32) + 10)


@malformed
def iov_sum_above_rc(b: Builder, size: int, stream: bool) -> Answer:
    a = b.generated([[10, 5]], 10)
    return b.rc(a, a.rc - 1)


@malformed
def iov_sum_below_rc(b: Builder, size: int, stream: bool) -> Answer:
    a = b.generated([[10, 5]], 10)
    return b.rc(a, a.rc + 1)


@malformed
def null_iov_base(b: Builder, size: int, stream: bool) -> Answer:
    return b.iov_base(b.generated([[10, 5]], 11), 0, 1, 0)


@malformed
def null_packet_id(b: Builder, size: int, stream: bool) -> Answer:
    return b.packet_id(b.generated([[10]], 12), 0, 0)


@malformed
def zcopy_rc_past_buffer(b: Builder, size: int, stream: bool) -> Answer:
    """MSG_ZCOPY and rc larger than the buffer, iov lengths summing to less."""
    return b.rc(b.generated([[10]], 13), size + 1)


@malformed
def zcopy_rc0_garbage(b: Builder, size: int, stream: bool) -> Answer:
    """MSG_ZCOPY with rc 0 and nothing written: the buffer is the fake's filler."""
    return b.raw([], rc=0, note="MSG_ZCOPY, rc 0, no descriptors")


@malformed
def zcopy_rc0_with_payload(b: Builder, size: int, stream: bool) -> Answer:
    """MSG_ZCOPY with rc 0 and a packet of 5 bytes."""
    return b.rc(b.generated([[5]], 14), 0)


@malformed
def truncated_answer(b: Builder, size: int, stream: bool) -> Answer:
    """The answer stops after the first iovec of three (the rest is the fake's filler)."""
    a = b.generated([[4, 4, 4]], 15)
    return b.truncate(a, 8 + 16 + 16)


@malformed
def copy_rc_past_buffer(b: Builder, size: int, stream: bool) -> Answer:
    """A copy (MSG_ZCOPY clear) of more bytes than the buffer holds."""
    return b.rc(b.copy(b"c" * 64), size + 1)


@malformed
def copy_rc_int_max(b: Builder, size: int, stream: bool) -> Answer:
    return b.rc(b.copy(b"c" * 64), (1 << 31) - 1)


def run_malformed(h: Harness, make: Maker, filler: int | None = None) -> None:
    """One malformation, met three ways, on UDP and TCP sockets:
    - first answer of recv_batch: XlioError(EPROTO), then the socket works on;
    - after two good answers in one recv_batch (UDP): the batch has the two, the next call
      raises EPROTO without taking the good answer queued behind, the call after takes it;
    - recvfrom_zcopy: XlioError(EPROTO), then the socket works on."""
    size = landing_length(h)
    if filler is not None:
        h.fake.set_filler(filler)
    for stream in (False, True):
        sk: Sock = h.tcp() if stream else h.udp()
        h.push(sk, make(h.build, size, stream))
        must(is_eproto(h.recv_batch(sk, 8)), "recv_batch: no EPROTO")
        h.push(sk, good(h, stream))
        batch = h.recv_batch(sk, 8)
        must(len(batch) >= 1, "the socket does not work after a malformed answer")
        if not stream:
            h.push(sk, good(h, stream, 2))
            h.push(sk, good(h, stream, 3))
            h.push(sk, make(h.build, size, stream))
            h.push(sk, good(h, stream, 4))
            mid = h.recv_batch(sk, 8)
            must(not isinstance(mid, BaseException) and len(mid) == 2,
                 f"the two good packets before the malformed answer: {mid!r}")
            must(is_eproto(h.recv_batch(sk, 8)), "the next recv_batch: no EPROTO")
            after = h.recv_batch(sk, 8)
            must(not isinstance(after, BaseException) and len(after) == 1,
                 f"the good answer queued behind: {after!r}")
        h.push(sk, make(h.build, size, stream))
        must(is_eproto(h.recvfrom_zcopy(sk)), "recvfrom_zcopy: no EPROTO")
        h.push(sk, good(h, stream, 5))
        pkt = h.recvfrom_zcopy(sk)
        must(not isinstance(pkt, BaseException), f"recvfrom_zcopy after: {pkt!r}")
        h.close(sk)
    h.finish()


for _name, _make in list(MALFORMED.items()):
    CASES["malformed_" + _name] = (lambda m: lambda h: run_malformed(h, m))(_make)
CASES["malformed_n_packets_more_than_rc_zero_filler"] = \
    lambda h: run_malformed(h, n_packets_more_than_rc, filler=0)
CASES["malformed_truncated_answer_zero_filler"] = \
    lambda h: run_malformed(h, truncated_answer, filler=0)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def run_errno(h: Harness, err: int) -> None:
    """-1 with `err`: an OSError with that errno from either call (XlioError for EIO with
    force); the same with MSG_ZCOPY left set; after a good packet in one recv_batch, the
    packet is returned (the error may come with the next call); never a hang."""
    import pyxlio

    for stream in (False, True):
        sk = h.tcp() if stream else h.udp()
        h.push(sk, h.build.error(err))
        r = h.recv_batch(sk, 8)
        must(isinstance(r, OSError) and r.errno == err, f"recv_batch: {r!r}")
        h.push(sk, h.build.error(err, flags=MSG_ZCOPY))
        r = h.recvfrom_zcopy(sk)
        must(isinstance(r, OSError) and r.errno == err, f"recvfrom_zcopy: {r!r}")
        h.push(sk, h.build.error(err))
        r = h.recvfrom_zcopy(sk, force=True)
        must(isinstance(r, OSError) and r.errno == err, f"recvfrom_zcopy(force): {r!r}")
        if err == errno.EIO:
            must(isinstance(r, pyxlio.XlioError), "EIO with force is not an XlioError")
        h.push(sk, good(h, stream))
        h.push(sk, h.build.error(err))
        h.push(sk, good(h, stream, 2))
        r = h.recv_batch(sk, 8)
        must(not isinstance(r, BaseException) and len(r) >= 1, f"good then error: {r!r}")
        for _ in range(3):
            h.recv_batch(sk, 8)
        h.close(sk)
    h.finish()


for _err in ERRNOS:
    if _err not in (errno.EAGAIN, errno.EINTR):
        CASES[f"errno_{errno.errorcode[_err]}"] = (lambda e: lambda h: run_errno(h, e))(_err)


@case
def errno_EAGAIN(h: Harness) -> None:
    """EAGAIN: an empty batch, BlockingIOError, TimeoutError; MSG_ZCOPY left set on -1 and
    garbage in the buffer mean nothing; after EAGAIN with a timeout the next answer is taken."""
    sk = h.udp()
    h.push(sk, h.build.error(errno.EAGAIN))
    r = h.recv_batch(sk, 8)
    must(not isinstance(r, BaseException) and len(r) == 0, f"recv_batch: {r!r}")
    h.push(sk, h.build.error(errno.EAGAIN, flags=MSG_ZCOPY))
    must(isinstance(h.recvfrom_zcopy(sk), BlockingIOError), "no BlockingIOError")
    must(isinstance(h.recvfrom_zcopy(sk, timeout=0.02), TimeoutError), "no TimeoutError")
    r = h.recv_batch(sk, 8, timeout=0.02)
    must(not isinstance(r, BaseException) and len(r) == 0, f"recv_batch(timeout): {r!r}")
    h.push(sk, h.build.error(errno.EAGAIN))
    h.push(sk, good(h, False))
    r = h.recv_batch(sk, 8, timeout=0.05)
    must(not isinstance(r, BaseException) and len(r) == 1, f"EAGAIN then good: {r!r}")
    h.push(sk, h.build.error(errno.EAGAIN))
    h.push(sk, good(h, False, 2))
    r = h.recvfrom_zcopy(sk, timeout=0.05)
    must(not isinstance(r, BaseException), f"recvfrom_zcopy EAGAIN then good: {r!r}")
    h.finish()


@case
def errno_EINTR(h: Harness) -> None:
    """EINTR is retried: the answer behind it is received; EINTR mid-batch ends it or not."""
    for stream in (False, True):
        sk = h.tcp() if stream else h.udp()
        h.push(sk, h.build.error(errno.EINTR))
        h.push(sk, h.build.error(errno.EINTR))
        h.push(sk, good(h, stream))
        r = h.recv_batch(sk, 8)
        must(not isinstance(r, BaseException) and len(r) >= 1, f"recv_batch: {r!r}")
        h.push(sk, h.build.error(errno.EINTR))
        r = h.recv_batch(sk, 8)
        must(not isinstance(r, BaseException) and len(r) == 0, f"EINTR, nothing: {r!r}")
        h.push(sk, h.build.error(errno.EINTR))
        h.push(sk, good(h, stream, 2))
        r = h.recvfrom_zcopy(sk)
        must(not isinstance(r, BaseException), f"recvfrom_zcopy: {r!r}")
        h.push(sk, good(h, stream, 3))
        h.push(sk, h.build.error(errno.EINTR))
        h.push(sk, good(h, stream, 4))
        h.recv_batch(sk, 8)
        h.recv_batch(sk, 8)
        h.close(sk)
    h.finish()


# ---------------------------------------------------------------------------------------------
# Well-formed answers (the harness checks bytes, fragments, addresses and every free)
# ---------------------------------------------------------------------------------------------

@case
def good_batch_views_and_release(h: Harness) -> None:
    sk = h.udp()
    h.push(sk, h.build.generated([[100]], 1))
    h.push(sk, h.build.generated([[30, 0, 7]], 2))
    h.push(sk, h.build.generated([[4096, 1]], 3))
    h.recv_batch(sk, 8)
    hold = sk.holds[-1]
    h.take_view(hold, 0, "mv")
    h.take_view(hold, 1, "frags")
    h.take_view(hold, 0, "views")
    h.release(hold)                       # refused: views are exported
    h.close(sk)                           # refused too
    for v in list(h.views):
        h.release_view(v)
    h.release_packet(hold, 1)
    h.release(hold)
    h.finish()


@case
def good_max_packets_boundary(h: Harness) -> None:
    sk = h.udp()
    for i in range(7):
        h.push(sk, h.build.generated([[i + 1]], i))
    must(len(h.recv_batch(sk, 3)) == 3, "max_packets 3")
    must(len(h.recv_batch(sk, 3)) == 3, "max_packets 3 again")
    must(len(h.recv_batch(sk, 3)) == 1, "the last one")
    h.finish()


@case
def good_packet_release(h: Harness) -> None:
    sk = h.udp()
    h.push(sk, h.build.generated([[9, 9, 9]], 5))
    h.recvfrom_zcopy(sk)
    h.take_view(sk.holds[-1], 0, "frags")
    h.release(sk.holds[-1])
    for v in list(h.views):
        h.release_view(v)
    h.release(sk.holds[-1])
    h.finish()


@case
def good_empty_zcopy_datagram(h: Harness) -> None:
    """rc 0 with MSG_ZCOPY and one fragment of 0 bytes: an empty datagram, freed once."""
    sk = h.udp()
    h.push(sk, h.build.generated([[0]], 0))
    h.push(sk, h.build.generated([[0]], 0))
    must(len(h.recv_batch(sk, 8)) == 2, "two empty datagrams")
    h.push(sk, h.build.generated([[0]], 0))
    h.recvfrom_zcopy(sk)
    h.finish()


@case
def good_copies(h: Harness) -> None:
    """MSG_ZCOPY clear: copies (no id to free), an empty datagram, mixed with zero-copy."""
    sk = h.udp()
    h.push(sk, h.build.copy(b"copied"))
    h.push(sk, h.build.copy(b""))
    h.push(sk, h.build.generated([[3]], 1))
    h.push(sk, h.build.copy(b"x" * 1000))
    h.recv_batch(sk, 8)
    h.push(sk, h.build.copy(b"one"))
    h.recvfrom_zcopy(sk)
    h.finish()


@case
def mixed_batch_release_zero_copy_packet(h: Harness) -> None:
    """Releasing the zero-copy packet of a batch that also holds a copy: the copy stays."""
    h.strict_copies = True
    sk = h.udp()
    h.push(sk, h.build.generated([[3]], 1))
    h.push(sk, h.build.copy(b"copied"))
    h.recv_batch(sk, 8)
    hold = sk.holds[-1]
    h.release_packet(hold, 0)
    h.take_view(hold, 1, "mv")
    h.finish()


@case
def good_stream_reads(h: Harness) -> None:
    """TCP: several packets in one read; a batch, a merged packet, a copy, the end."""
    sk = h.tcp()
    h.push(sk, h.build.generated([[10, 5], [7], [1, 1, 1]], 1))
    h.recv_batch(sk, 8)
    h.push(sk, h.build.generated([[10, 5], [7], [1, 1, 1]], 2))
    h.recv_batch(sk, 1)
    h.push(sk, h.build.generated([[3], [4]], 3))
    h.recvfrom_zcopy(sk)
    h.take_view(sk.holds[-1], 0, "frags")
    h.push(sk, h.build.copy(b"stream copy", src=(b"", 0)))
    h.recv_batch(sk, 8)
    h.push(sk, h.build.copy(b"", src=(b"", 0)))
    h.recv_batch(sk, 8)
    h.push(sk, h.build.copy(b"", src=(b"", 0)))
    must(h.recvfrom_zcopy(sk) is None, "end of stream: None")
    h.finish()


@case
def good_addresses(h: Harness) -> None:
    sk = h.udp()
    srcs = [(sockaddr_v4("10.1.2.3", 4000), 16), (sockaddr_v6("fe80::1", 5000, 7, 2), 28),
            (b"", 0), (sockaddr_v4("10.9.9.9", 1), 1000), (b"\x02", 1)]
    for i, src in enumerate(srcs):
        h.push(sk, h.build.good([[b"a" * (i + 1)]], src=src))
    h.recv_batch(sk, 8)
    for i, src in enumerate(srcs):
        h.push(sk, h.build.good([[b"b" * (i + 1)]], src=src))
    h.recv_batch(sk, 8, addresses=False)
    h.finish()


@case
def close_frees_what_the_socket_holds(h: Harness) -> None:
    a, b = h.udp(), h.udp()
    for sk in (a, b):
        h.push(sk, h.build.generated([[5]], 1))
        h.push(sk, h.build.generated([[6]], 2))
        h.recv_batch(sk, 1)
        h.recvfrom_zcopy(sk)
    h.take_view(a.holds[0], 0, "mv")
    h.close(a)                   # refused: a view is exported
    h.close(b)
    c = h.udp()                  # may reuse b's fd number: b's ids must not be freed on it
    h.push(c, h.build.generated([[7]], 3))
    h.recv_batch(c, 4)
    for v in list(h.views):
        h.release_view(v)
    h.close(a)
    h.finish()


@case
def drop_frees_on_collection(h: Harness) -> None:
    sk = h.udp()
    h.push(sk, h.build.generated([[5]], 1))
    h.push(sk, h.build.generated([[6]], 2))
    h.recv_batch(sk, 8)
    h.drop(sk.holds[-1])
    h.push(sk, h.build.generated([[7]], 3))
    h.recvfrom_zcopy(sk)
    h.drop(sk.holds[-1])
    h.finish()


@case
def either_sz_iov_zero(h: Harness) -> None:
    """A packet with no fragment: a 0-byte packet (freed once) or EPROTO (never freed)."""
    for stream in (False, True):
        sk = h.tcp() if stream else h.udp()
        a = h.build.generated([[0]], 1)
        h.push(sk, h.build.sz_iov(a, 0, 0))
        h.recv_batch(sk, 8)
        a = h.build.generated([[0]], 1)
        h.push(sk, h.build.sz_iov(a, 0, 0))
        h.recvfrom_zcopy(sk)
        h.close(sk)
    h.finish()


@case
def either_zcopy_rc0_no_packet(h: Harness) -> None:
    """MSG_ZCOPY, rc 0, n_packet_num 0: an empty copy / end of stream, or EPROTO."""
    for stream in (False, True):
        sk = h.tcp() if stream else h.udp()
        h.push(sk, h.build.raw([0], rc=0, note="n 0, rc 0"))
        h.recv_batch(sk, 8)
        h.push(sk, h.build.raw([0], rc=0, note="n 0, rc 0"))
        h.recvfrom_zcopy(sk)
        h.close(sk)
    h.finish()


@case
def either_rc_not_minus_one(h: Harness) -> None:
    """-1 without errno, and negative counts other than -1: an error with the errno there is
    (OSError(0) included), or EPROTO; never a crash nor a packet."""
    for stream in (False, True):
        sk = h.tcp() if stream else h.udp()
        for rc, err in [(-1, 0), (-2, errno.EIO), (-(1 << 31), 0), (-7, errno.EAGAIN)]:
            h.push(sk, h.build.error(err, rc=rc))
            h.recv_batch(sk, 8)
            h.push(sk, h.build.error(err, rc=rc, flags=MSG_ZCOPY))
            h.recvfrom_zcopy(sk)
        h.push(sk, good(h, stream))
        h.recv_batch(sk, 8)
        h.close(sk)
    h.finish()


@case
def good_stream_read_more_packets_than_slots(h: Harness) -> None:
    """A stream read of more packets than max_packets: every byte kept, in order, every id
    freed (pyxlio merges the rest into the last slot)."""
    sk = h.tcp()
    h.push(sk, h.build.generated([[3], [4, 1], [5], [6]], 1))
    h.recv_batch(sk, 2)
    h.push(sk, h.build.generated([[3], [4], [5]], 2))
    h.recv_batch(sk, 1)
    h.release_packet(sk.holds[-1], 0)
    h.finish()


# ---------------------------------------------------------------------------------------------
# Receive callbacks: packets handed to pyxlio's callback from inside recvfrom_zcopy
# ---------------------------------------------------------------------------------------------

CbMaker = Callable[[Builder], Answer]
CB_MALFORMED: dict[str, CbMaker] = {
    # a fragment far longer than the 10 bytes mapped: the C filter (offset 100) must not read it
    "iov_len_2_40": lambda b: b.cb_set(b.callback([b"q" * 10]), "len", 1 << 40),
    "iov_len_over_64k": lambda b: b.cb_set(b.callback([b"q" * 10]), "len", 70000),
    "total_over_64k": lambda b: b.cb_set(b.cb_set(b.callback([b"q" * 10, b"r" * 10]),
                                                  "len", 40000, 0), "len", 40000, 1),
    "null_base": lambda b: b.cb_set(b.callback([b"q" * 10, b"r" * 5]), "base", 0, 1),
    "sz_iov_2_40": lambda b: b.cb_set(b.callback([b"q" * 10]), "sz", 1 << 40),
    "iov_array_null": lambda b: b.cb_set(b.callback([b"q" * 10]), "iovs", None),
    "info_null": lambda b: b.cb_set(b.callback([b"q" * 10]), "info", None),
    "packet_id_null": lambda b: b.cb_set(b.callback([b"q" * 10]), "pid", 0),
}


def cb_payload(match: bool) -> list[bytes]:
    """200 bytes in two fragments; bytes 100..101 are b"zz" when `match`."""
    body = bytearray(b"p" * 200)
    if match:
        body[100:102] = b"zz"
    return [bytes(body[:60]), bytes(body[60:])]


def run_cb_malformed(h: Harness, make: CbMaker) -> None:
    """A malformed packet given to the receive callback is never read (not by the C filter,
    not by the Python function), never held, and at most reported as EPROTO; the socket
    works on.  Three sockets: a Python callback (that would hold everything), a C filter
    reading at offset 100, and both."""
    for mode in ("fn", "filter", "both"):
        sk = h.udp()
        if mode in ("filter", "both"):
            h.set_filter(sk, 100, b"zz", keep=True)
        if mode in ("fn", "both"):
            h.set_callback(sk, [HOLD] * 8)
        h.push(sk, make(h.build))
        r = h.recv_batch(sk, 8)
        must(not (isinstance(r, BaseException) and not is_eproto(r)), f"recv_batch: {r!r}")
        h.recv_batch(sk, 8)                       # (may raise the EPROTO now)
        h.push(sk, h.build.callback(cb_payload(True)))
        h.push(sk, make(h.build))
        h.push(sk, h.build.callback(cb_payload(False)))
        h.recv_batch(sk, 8)
        h.recv_batch(sk, 8)
        h.recv_batch(sk, 8)
        if mode != "filter":
            must(len(sk.holds) >= 1, "the well-formed packet was not held")
        h.close(sk)
    h.finish()


for _name, _cb in CB_MALFORMED.items():
    CASES["callback_malformed_" + _name] = (lambda m: lambda h: run_cb_malformed(h, m))(_cb)


@case
def callback_good_verdicts(h: Harness) -> None:
    """RECV, DROP, HOLD: the callback sees the right bytes; held packets are freed once."""
    sk = h.udp()
    h.set_callback(sk, [RECV, DROP, HOLD, HOLD])
    h.push(sk, h.build.callback([b"one"]))
    h.push(sk, h.build.callback([b"two"]))
    h.push(sk, h.build.callback([b"thr", b"ee", b""]))
    h.push(sk, h.build.callback([b"four" * 100]))
    h.push(sk, h.build.generated([[5]], 1))       # and a packet for the receive call
    for _ in range(4):                            # a callback answer ends a receive call
        r = h.recv_batch(sk, 8)
        must(not isinstance(r, BaseException) and len(r) == 0, f"recv_batch: {r!r}")
    r = h.recv_batch(sk, 8)
    must(not isinstance(r, BaseException) and len(r) == 1, f"recv_batch: {r!r}")
    must(len(sk.holds) == 3, "two held packets and the batch")
    h.take_view(sk.holds[1], 0, "frags")
    h.release(sk.holds[1])                        # refused: a view is exported
    for v in list(h.views):
        h.release_view(v)
    h.release(sk.holds[1])
    h.close(sk)                                   # frees the other held packet
    h.finish()


@case
def callback_filter_keeps_and_drops(h: Harness) -> None:
    for keep in (True, False):
        sk = h.udp()
        h.set_filter(sk, 100, b"zz", keep=keep)
        h.push(sk, h.build.callback(cb_payload(True)))
        h.push(sk, h.build.callback(cb_payload(False)))
        h.push(sk, h.build.callback([b"short"]))
        h.recv_batch(sk, 8)
        h.close(sk)
    h.finish()


# ---------------------------------------------------------------------------------------------
# pyxlio's own callbacks: the filter and callback run by recv_batch / recvfrom_zcopy on the
# datagrams XLIO did not run them on (copies; every datagram when XLIO refused the
# registration, and on stream sockets).  The harness checks every call of the callback (bytes,
# info.path, src, payload_size, fragments), every verdict's effect, sock.held, outstanding,
# callback_path, the fake's registration and every free.
# ---------------------------------------------------------------------------------------------

def no_error(r: object, what: str) -> None:
    must(not isinstance(r, BaseException), f"{what}: {r!r}")


@case
def software_registration_refused(h: Harness) -> None:
    """XLIO refuses the registration: callback_path "pyxlio", and pyxlio runs the callback on
    every datagram, zero-copy ones too; the next change registers again (accepted: "xlio");
    clearing both unregisters."""
    sk = h.udp()
    refused = h.fake.register_calls(refused=True)
    h.set_refuse(True)
    h.set_callback(sk, [RECV, RECV, RECV, RECV])
    h.set_refuse(False)
    must(h.fake.register_calls(refused=True) == refused + 1, "no registration was tried")
    must(sk.sock.callback_path == "pyxlio", f"callback_path {sk.sock.callback_path!r}")
    h.push(sk, h.build.generated([[10]], 1))
    h.push(sk, h.build.copy(b"a copy"))
    h.push(sk, h.build.generated([[3, 0, 7]], 2, src=(sockaddr_v6("2001:db8::7", 9, 1, 2), 28)))
    r = h.recv_batch(sk, 8)
    no_error(r, "recv_batch")
    must(len(r) == 3 and len(sk.cb_log) == 3, f"3 datagrams, 3 callbacks: {r!r}, {sk.cb_log}")
    h.push(sk, h.build.generated([[5]], 3))
    no_error(h.recvfrom_zcopy(sk), "recvfrom_zcopy")
    must(len(sk.cb_log) == 4, "recvfrom_zcopy did not run the callback")
    h.set_filter(sk, 0, b"\x00", keep=False)   # a change: registered now
    must(sk.sock.callback_path == "xlio", f"callback_path {sk.sock.callback_path!r}")
    h.push(sk, h.build.generated([[4]], 4))     # XLIO runs callbacks on zero-copy: not pyxlio
    h.recv_batch(sk, 8)
    must(len(sk.cb_log) == 4, "pyxlio ran the callback on a zero-copy datagram of a "
         "registered socket")
    h.clear_filter(sk)
    h.clear_callback(sk)
    must(sk.sock.callback_path is None, f"callback_path {sk.sock.callback_path!r}")
    h.finish()


@case
def software_copies_when_registered(h: Harness) -> None:
    """XLIO accepted the registration: it runs the callback on its zero-copy packets (here the
    fake's callback answers); pyxlio runs it on the datagrams that arrive as copies, never on
    the zero-copy ones its receive calls take."""
    sk = h.udp()
    h.set_callback(sk, [HOLD, DROP, HOLD, RECV])
    must(sk.sock.callback_path == "xlio", f"callback_path {sk.sock.callback_path!r}")
    h.push(sk, h.build.callback([b"xlio's"]))           # XLIO: HOLD
    r = h.recv_batch(sk, 8)
    no_error(r, "recv_batch")
    h.push(sk, h.build.generated([[6]], 1))             # zero-copy: no callback
    h.push(sk, h.build.copy(b"dropped copy"))           # pyxlio: DROP
    h.push(sk, h.build.generated([[7, 1]], 2))          # zero-copy: no callback
    h.push(sk, h.build.copy(b"held copy"))              # pyxlio: HOLD
    h.push(sk, h.build.copy(b"kept copy"))              # pyxlio: RECV
    r = h.recv_batch(sk, 8)
    no_error(r, "recv_batch")
    must(len(r) == 3, f"two zero-copy datagrams and a copy kept: {r!r}")
    must([c.path for c in sk.cb_log] == ["xlio", "pyxlio", "pyxlio", "pyxlio"],
         f"who ran the callback: {[c.path for c in sk.cb_log]}")
    must([x.slots[0].zcopy for x in sk.holds if x.standalone] == [True, False],
         "held: XLIO's packet, then the copy")
    must(sk.sock.outstanding == 3, f"outstanding {sk.sock.outstanding}: the held copy counts")
    h.finish()


@case
def software_verdicts(h: Harness) -> None:
    """pyxlio's verdicts (registration refused): DROP removes a datagram (a zero-copy one freed
    at once, once, on its fd), HOLD moves it into sock.held (a zero-copy one keeps its ids and
    counts in outstanding, a copy does not), RECV keeps it; the info tells the source, length
    and fragment count; the view is of a copy (read-only)."""
    sk = h.udp()
    h.set_refuse(True)
    h.set_callback(sk, [DROP, HOLD, RECV, HOLD, DROP, RECV, HOLD])
    h.set_refuse(False)
    srcs = [(sockaddr_v4("10.1.2.3", 4000), 16), (sockaddr_v6("fe80::1", 5000, 7, 2), 28),
            (b"", 0), (sockaddr_v4("10.9.9.9", 1), 1000)]
    h.push(sk, h.build.generated([[9, 9]], 1, src=srcs[0]))     # DROP: freed now
    h.push(sk, h.build.generated([[30, 0, 7]], 2, src=srcs[1]))  # HOLD: held, outstanding
    h.push(sk, h.build.generated([[1]], 3, src=srcs[2]))         # RECV
    h.push(sk, h.build.copy(b"held copy", src=srcs[3]))          # HOLD: not outstanding
    h.push(sk, h.build.copy(b"dropped copy"))                    # DROP
    r = h.recv_batch(sk, 8)
    no_error(r, "recv_batch")
    must(len(r) == 1 and len(sk.holds) == 3, f"one kept, two held: {r!r}")
    must(sk.sock.outstanding == 2, f"outstanding {sk.sock.outstanding}: the batch's and the "
         "held zero-copy datagram")
    h.push(sk, h.build.generated([[4, 4]], 4))                   # recvfrom_zcopy: RECV
    no_error(h.recvfrom_zcopy(sk), "recvfrom_zcopy")
    h.push(sk, h.build.generated([[5]], 5))                      # recvfrom_zcopy: HOLD
    h.push(sk, h.build.copy(b"after"))
    must(isinstance(h.recvfrom_zcopy(sk), BlockingIOError), "held: nothing to return")
    no_error(h.recvfrom_zcopy(sk), "recvfrom_zcopy after a HOLD")
    held = [x for x in sk.holds if x.standalone and x.slots[0].zcopy]
    h.take_view(held[0], 0, "frags")
    h.release(held[0])                                           # refused: a view
    for v in list(h.views):
        h.release_view(v)
    h.release(held[0])
    h.finish()                                                   # close frees the rest


@case
def software_filter_then_callback(h: Harness) -> None:
    """pyxlio's path runs the C filter first (its drops count in `filtered` and never reach
    the callback), then the callback, on copies and (XLIO refusing) zero-copy datagrams."""
    for refuse in (True, False):
        sk = h.udp()
        h.set_refuse(refuse)
        h.set_filter(sk, 1, b"zz", keep=True)
        h.set_callback(sk, [HOLD, DROP])
        h.set_refuse(False)
        h.push(sk, h.build.copy(b"xzz held"))
        h.push(sk, h.build.copy(b"x-- filtered"))
        h.push(sk, h.build.good([[b"x", b"z", b"z dropped"]]))
        h.push(sk, h.build.good([[b"xz-", b"filtered"]]))
        h.push(sk, h.build.copy(b"xzz kept"))
        h.recv_batch(sk, 8)
        must(sk.sock.filtered == (2 if refuse else 1), f"filtered {sk.sock.filtered}")
        h.close(sk)
    h.finish()


@case
def software_all_dropped_keeps_waiting(h: Harness) -> None:
    """Every datagram of a fill dropped or held: the call keeps waiting: recv_batch(timeout=0)
    returns an empty batch, recvfrom_zcopy raises BlockingIOError (TimeoutError with a
    timeout); with a timeout it fills again and returns what comes next."""
    for refuse in (True, False):
        sk = h.udp()
        h.set_refuse(refuse)
        h.set_callback(sk, [DROP, HOLD, DROP, DROP, HOLD, RECV, DROP, RECV])
        h.set_refuse(False)
        h.push(sk, h.build.copy(b"dropped"))
        h.push(sk, h.build.copy(b"held"))
        r = h.recv_batch(sk, 8)
        must(not isinstance(r, BaseException) and len(r) == 0, f"recv_batch: {r!r}")
        h.push(sk, h.build.copy(b"dropped"))
        must(isinstance(h.recvfrom_zcopy(sk), BlockingIOError), "no BlockingIOError")
        h.push(sk, h.build.copy(b"dropped"))
        must(isinstance(h.recvfrom_zcopy(sk, timeout=0.02), TimeoutError), "no TimeoutError")
        h.push(sk, h.build.copy(b"held"))
        h.push(sk, h.build.copy(b"kept"))
        r = h.recv_batch(sk, 1, timeout=0.05)     # max_packets 1: a fill per datagram
        must(not isinstance(r, BaseException) and len(r) == 1, f"recv_batch: {r!r}")
        h.push(sk, h.build.generated([[3]], 1))   # refused: DROP (freed); else returned
        h.push(sk, h.build.copy(b"kept"))         # refused: RECV, in a second fill
        r = h.recvfrom_zcopy(sk, timeout=0.05)
        no_error(r, "recvfrom_zcopy")
        h.close(sk)
    h.finish()


@case
def software_callback_exception(h: Harness) -> None:
    """An exception of the callback counts the datagram as RECV; the call raises it when it
    returns nothing, else the next receive call raises it before calling the provider; of
    several in one call the first is raised."""
    sk = h.udp()
    h.set_refuse(True)
    h.set_callback(sk, [RAISE, RAISE, DROP, RAISE, DROP, DROP])
    h.set_refuse(False)
    h.push(sk, h.build.copy(b"first"))
    h.push(sk, h.build.generated([[8]], 1))
    h.push(sk, h.build.copy(b"dropped"))
    r = h.recv_batch(sk, 8)
    must(not isinstance(r, BaseException) and len(r) == 2, f"both delivered: {r!r}")
    first = sk.cb_log[0].exc
    h.push(sk, h.build.copy(b"not yet"))
    must(h.recv_batch(sk, 8) is first, "the next call did not raise the first exception")
    r = h.recv_batch(sk, 8)                     # the answer queued behind: RAISE
    must(not isinstance(r, BaseException) and len(r) == 1, f"recv_batch: {r!r}")
    h.push(sk, h.build.copy(b"dropped"))
    h.push(sk, h.build.copy(b"dropped"))
    r = h.recvfrom_zcopy(sk)                    # nothing returned: raises the pending one
    must(isinstance(r, CallbackError), f"recvfrom_zcopy: {r!r}")
    sk2 = h.udp()                               # registered: XLIO's callback raising
    h.set_callback(sk2, [RAISE])
    h.push(sk2, h.build.callback([b"xlio"]))
    must(isinstance(h.recv_batch(sk2, 8), CallbackError), "XLIO's callback: not raised")
    h.finish()


@case
def software_malformed_never_reaches_callback(h: Harness) -> None:
    """A malformed answer after datagrams the callback kept: they are returned, EPROTO comes
    with the next call; no callback ever sees anything of the malformed answer."""
    for refuse in (True, False):
        sk = h.udp()
        h.set_refuse(refuse)
        h.set_callback(sk, [RECV] * 8)
        h.set_refuse(False)
        size = 4096
        h.push(sk, h.build.copy(b"kept copy"))
        h.push(sk, h.build.generated([[5]], 1))
        h.push(sk, MALFORMED["iov_sum_above_rc"](h.build, size, False))
        h.push(sk, h.build.copy(b"behind"))
        r = h.recv_batch(sk, 8)
        must(not isinstance(r, BaseException) and len(r) == 2, f"recv_batch: {r!r}")
        must(is_eproto(h.recv_batch(sk, 8)), "no EPROTO")
        no_error(h.recv_batch(sk, 8), "the answer behind")
        h.push(sk, MALFORMED["copy_rc_past_buffer"](h.build, landing_length(h), False))
        must(is_eproto(h.recvfrom_zcopy(sk)), "recvfrom_zcopy: no EPROTO")
        h.recv_batch(sk, 8)
        h.close(sk)
    h.finish()


@case
def software_dropped_then_malformed(h: Harness) -> None:
    """A malformed answer after datagrams all dropped or held ends the call with EPROTO: the
    call has nothing to lose by raising it, and must not call the provider again (nor deliver
    what comes after the malformed answer before reporting it), timeout or not."""
    sk = h.udp()
    h.set_filter(sk, 0, b"k", keep=True)
    h.push(sk, h.build.copy(b"dropped"))
    h.push(sk, MALFORMED["copy_rc_past_buffer"](h.build, landing_length(h), False))
    must(is_eproto(h.recv_batch(sk, 8)), "timeout 0: no EPROTO")
    h.push(sk, h.build.copy(b"dropped"))
    h.push(sk, MALFORMED["copy_rc_past_buffer"](h.build, landing_length(h), False))
    h.push(sk, h.build.copy(b"kept, behind the malformed answer"))
    r = h.recv_batch(sk, 8, timeout=0.05)
    must(is_eproto(r), f"with a timeout: {r!r}")
    h.recv_batch(sk, 8)
    h.finish()


@case
def software_dropped_then_error(h: Harness) -> None:
    """-1 with an error after datagrams all dropped ends the call with that error (it is not
    lost, and the provider is not called again)."""
    sk = h.udp()
    h.set_refuse(True)
    h.set_callback(sk, [DROP] * 8)
    h.set_refuse(False)
    h.push(sk, h.build.generated([[5]], 1))
    h.push(sk, h.build.error(errno.ECONNREFUSED))
    r = h.recv_batch(sk, 8)
    must(isinstance(r, OSError) and r.errno == errno.ECONNREFUSED, f"recv_batch: {r!r}")
    h.push(sk, h.build.copy(b"dropped"))
    h.push(sk, h.build.error(errno.ECONNRESET))
    h.push(sk, h.build.copy(b"kept, behind the error"))
    r = h.recvfrom_zcopy(sk, timeout=0.05)
    must(isinstance(r, OSError) and r.errno == errno.ECONNRESET, f"recvfrom_zcopy: {r!r}")
    h.finish()


@case
def software_stream_every_chunk(h: Harness) -> None:
    """A stream socket never registers its callback with XLIO: pyxlio runs it on every chunk
    its receive calls take (zero-copy too), a chunk being what one slot holds (the packets of
    a read that did not fit merged into the last one); DROP of a merged chunk frees all its
    ids, HOLD keeps them."""
    sk = h.tcp()
    calls = h.fake.register_calls()
    h.set_filter(sk, 0, b"\x00", keep=False)
    h.set_callback(sk, [RECV, DROP, HOLD, DROP, HOLD, RECV])
    must(h.fake.register_calls() == calls, "a stream socket's callback was registered")
    must(sk.sock.callback_path == "pyxlio", f"callback_path {sk.sock.callback_path!r}")
    h.push(sk, h.build.generated([[10, 5], [7], [1, 1, 1]], 1))
    r = h.recv_batch(sk, 8)                     # RECV, DROP, HOLD
    must(not isinstance(r, BaseException) and len(r) == 1, f"recv_batch: {r!r}")
    h.push(sk, h.build.generated([[3], [4], [5]], 2))
    r = h.recv_batch(sk, 1)                     # one merged chunk: DROP
    must(not isinstance(r, BaseException) and len(r) == 0, f"a dropped chunk: {r!r}")
    h.push(sk, h.build.generated([[6], [7]], 3))
    r = h.recvfrom_zcopy(sk, timeout=0.02)     # merged: HOLD; then nothing more
    must(isinstance(r, TimeoutError), f"recvfrom_zcopy: {r!r}")
    h.push(sk, h.build.copy(b"\x00 filtered", src=(b"", 0)))
    h.push(sk, h.build.copy(b"stream copy", src=(b"", 0)))
    r = h.recvfrom_zcopy(sk, timeout=0.05)      # filtered; then RECV
    no_error(r, "recvfrom_zcopy")
    h.push(sk, h.build.copy(b"", src=(b"", 0)))
    must(h.recvfrom_zcopy(sk) is None, "end of stream: None")
    h.finish()


@case
def software_held_oldest_first(h: Harness) -> None:
    """sock.held is oldest first: a packet XLIO's callback held comes before the ones pyxlio's
    callback held from datagrams that came after it, in the same receive call."""
    sk = h.udp()
    h.set_callback(sk, [HOLD] * 8)              # registered: XLIO's callback on its packets
    h.push(sk, h.build.callback([b"first"]))
    h.push(sk, h.build.copy(b"second"))
    r = h.recv_batch(sk, 8, timeout=0.05)       # XLIO holds "first"; the copy: pyxlio holds
    must(not isinstance(r, BaseException) and len(r) == 0, f"recv_batch: {r!r}")
    h.finish()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} NAME | --list", file=sys.stderr)
        return 2
    if argv[1] == "--list":
        print("\n".join(CASES))
        return 0
    faulthandler.enable()
    warnings.simplefilter("ignore", ResourceWarning)
    fn = CASES[argv[1]]
    h = Harness(trace=lambda line: print(line, flush=True))
    h.accept.clear()        # (the scenarios are strict: PYXLIO_FUZZ_ACCEPT is the fuzzer's)
    try:
        fn(h)
    except Mismatch as m:
        print(f"MISMATCH: {m}", file=sys.stderr, flush=True)
        h.hard_reset()      # bad frees on the way out are recorded, not aborted on
        return 1
    for note in dict.fromkeys(h.notes):
        print(f"NOTE: {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
