"""Drive tests/c/fake_zc.c (a scripted libxlio) and check pyxlio against it.

Runs inside a process that has the fake preloaded (LD_PRELOAD); used by zc_cases.py (one
scenario per process) and zc_fuzz.py (hypothesis).  Four parts:

- :class:`Fake`: ctypes bindings of the fake's controls (push an answer, make ids and guarded
  payload memory, read the call log, judge answers, read violations).
- :class:`Builder`: answers (well-formed ones generated from packets and fragments, copies,
  errors) and the malformations applied to them.
- :func:`parse`: THE CONTRACT, as code: what pyxlio must make of one answer, seen exactly as
  pyxlio sees it (the answer bytes, then the fake's filler up to the length pyxlio passed).
- :class:`Harness`: pyxlio sockets plus a model of what each one must hold; every receive,
  view, release and close is checked against the model, the fake's call log and its record of
  freed ids.  A mismatch raises :class:`Mismatch`.

The contract for one recvfrom_zcopy answer (rc, flags passed out, buffer of `len` bytes):
- rc < 0: an error, errno as given.  EAGAIN: nothing (empty batch, BlockingIOError /
  TimeoutError); EINTR: retried; anything else: OSError with that errno (XlioError for EIO with
  force).  MSG_XLIO_ZCOPY left set on -1 means nothing.
- MSG_XLIO_ZCOPY clear: a copy of rc bytes; rc > len is malformed.  rc 0 is an empty datagram
  (UDP) or the end of the stream (TCP).
- MSG_XLIO_ZCOPY set: n_packet_num >= 1 packets, walked with the 16 + 16 * sz_iov stride, each
  entirely inside the buffer, with a non-NULL packet_id, no NULL iov_base with a non-zero
  iov_len, and the iov_len of all packets summing (as integers, no wrap-around) to rc.
  Anything else is malformed.  Undecided, either way accepted: a packet with sz_iov 0 (a 0-byte
  packet, or malformed); rc 0 with n_packet_num 0 (an empty copy / end of stream, or malformed).
- Malformed: XlioError(EPROTO) from the receive call; its ids are never freed nor counted in
  ``outstanding``.  If well-formed packets came earlier in the same call they are returned and
  the next receive call on the socket raises the EPROTO, before calling the provider.  A
  receive call stops calling the provider after a malformed answer, an error, a stream read or
  max_packets.
- Every id of a well-formed answer is freed exactly once, on its own fd, by the release of its
  packet or batch, or by close(); never during a receive call (but see DROP below).

Receive callbacks and the C filter (``set_recv_callback``, ``set_recv_filter``):
- Setting one registers it with XLIO (register_recv_callback) for a datagram socket; if XLIO
  refuses (the fake: ``Fake.set_refuse``), or for a stream socket (never registered), the
  socket is in "pyxlio" mode: ``sock.callback_path`` is "pyxlio" ("xlio" when registered,
  None when neither is set).  Each later change tries the registration again.
- XLIO runs the registered filter, then callback, on the packets it hands it (the fake's
  callback answers, which end a receive call's fill as -1/EAGAIN): DROP / RECV / HOLD (the
  packet appears in ``sock.held``); a malformed one is read by neither and, where a Python
  callback is set, reported as XlioError(EPROTO) like a callback's exception.
- After each fill (the recvfrom_zcopy calls of one pass: until max_packets, a stream read,
  -1 or a malformed answer) pyxlio itself runs the filter, then the callback, in order, on
  every datagram of it that came as a copy, and on every datagram when the socket is in
  "pyxlio" mode.  The callback gets a view of a copy and an info with path "pyxlio", the
  datagram's source, length (payload_size) and fragment count.  DROP removes the datagram (a
  zero-copy one is freed at once, exactly once, on its fd); HOLD moves it into ``sock.held``
  as a packet of its own (a zero-copy one keeps its ids and counts in ``outstanding``); RECV
  keeps it.  Nothing of a malformed answer reaches a callback.
- ``sock.held`` is oldest first: in the order the datagrams came.
- A fill whose datagrams were all dropped or held: after EAGAIN (or max_packets, a stream
  read) the call keeps waiting: with timeout 0 it returns nothing (an empty batch,
  BlockingIOError), else it fills again until its deadline (TimeoutError); after an error or a
  malformed answer it ends and raises that (nothing would be lost by raising it).
- An exception of the callback (or a malformed callback packet's EPROTO) counts the datagram
  as RECV; the call raises the first one when it returns nothing, else the next receive call
  raises it before calling the provider (after a pending EPROTO of a malformed answer); the
  later ones of the same batch are dropped.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import gc
import itertools
import os
import socket as stdsocket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

MSG_ZCOPY = 0x00040000
MSG_ZCOPY_FORCE = 0x01000000
U64_MASK = (1 << 64) - 1
ADDR_BYTES = 28

#: errno values a provider may answer with (the fact sheet's, and a few more).
ERRNOS = (errno.EAGAIN, errno.EINTR, errno.ENOBUFS, errno.EIO, errno.EINVAL, errno.ENOENT,
          errno.ENOMEM, errno.EBADF, errno.ECONNRESET, errno.EFAULT, errno.ENOTCONN,
          errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EOPNOTSUPP, errno.EPROTO)


class Mismatch(AssertionError):
    """pyxlio did something the contract does not allow."""


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run Harness.check() after the operation; say a mismatch at once on stderr (the fake may
    abort the process when the sockets are closed after it)."""
    @functools.wraps(fn)
    def wrapper(self: Harness, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(self, *args, **kwargs)
            self.check()
        except Mismatch as m:
            self.failed = True
            self.trace(f"MISMATCH: {m}")
            print(f"MISMATCH in {fn.__name__}: {m}", file=sys.stderr, flush=True)
            raise
        return result
    return wrapper


# ---------------------------------------------------------------------------------------------
# The fake's controls
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    fd: int
    flags_in: int
    length: int
    seq: int            # -1: nothing was queued (the fake answered -1/EAGAIN)
    from_null: bool


class Fake:
    """ctypes bindings of fake_zc.c, found in the process (it is preloaded)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None)
        if not hasattr(lib, "fake_zc_push"):
            raise RuntimeError("fake_zc is not loaded in this process (LD_PRELOAD)")
        u64, sz, vp = ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p
        c_int, c_long = ctypes.c_int, ctypes.c_long
        sigs: dict[str, tuple[Any, list[Any]]] = {
            "fake_zc_new_id": (u64, []),
            "fake_zc_payload": (vp, [ctypes.c_char_p, sz]),
            "fake_zc_guard": (vp, []),
            "fake_zc_set_filler": (None, [c_int]),
            "fake_zc_push": (c_long, [c_int, ctypes.c_char_p, sz, c_int, c_int, c_int,
                                      ctypes.POINTER(u64), sz, ctypes.c_char_p, sz,
                                      ctypes.c_uint]),
            "fake_zc_push_cb": (c_long, [c_int, sz, ctypes.c_char_p, sz, c_int,
                                         ctypes.c_char_p, sz, c_int, ctypes.POINTER(u64), sz]),
            "fake_zc_cb_verdict": (c_int, [c_long]),
            "fake_zc_pending": (c_long, [c_int]),
            "fake_zc_clear_queue": (None, []),
            "fake_zc_judge": (c_int, [c_long, c_int]),
            "fake_zc_id_state": (c_int, [u64, ctypes.POINTER(c_int),
                                         ctypes.POINTER(ctypes.c_uint)]),
            "fake_zc_outstanding": (c_long, [c_int]),
            "fake_zc_calls": (sz, []),
            "fake_zc_call": (c_int, [sz, ctypes.POINTER(c_int), ctypes.POINTER(c_int),
                                     ctypes.POINTER(sz), ctypes.POINTER(c_long),
                                     ctypes.POINTER(c_int)]),
            "fake_zc_free_calls": (ctypes.c_ulong, []),
            "fake_zc_freed_ids": (ctypes.c_ulong, []),
            "fake_zc_violations": (sz, []),
            "fake_zc_violation": (ctypes.c_char_p, [sz]),
            "fake_zc_reset": (c_long, []),
            "fake_zc_set_refuse": (None, [c_int]),
            "fake_zc_registered": (c_int, [c_int]),
            "fake_zc_register_calls": (ctypes.c_ulong, [c_int]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        self.lib = lib
        self.filler = 0xA5

    def new_id(self) -> int:
        return int(self.lib.fake_zc_new_id())

    def payload(self, data: bytes) -> int:
        """Address of a read-only copy of `data` that ends right before a PROT_NONE page."""
        addr = self.lib.fake_zc_payload(data, len(data))
        if not addr:
            raise MemoryError("fake_zc_payload")
        return int(addr)

    def guard(self) -> int:
        return int(self.lib.fake_zc_guard())

    def set_filler(self, byte: int) -> None:
        self.filler = byte & 0xFF
        self.lib.fake_zc_set_filler(byte)

    def push(self, fd: int, raw: bytes, rc: int, flags: int, err: int, ids: Sequence[int],
             src: bytes, srclen: int) -> int:
        arr = (ctypes.c_uint64 * max(1, len(ids)))(*ids)
        return int(self.lib.fake_zc_push(fd, raw, len(raw), rc, flags, err, arr, len(ids),
                                         src, len(src), srclen))

    def push_cb(self, fd: int, sz_iov: int, iovs: bytes | None, info: bytes | None,
                ids: Sequence[int]) -> int:
        arr = (ctypes.c_uint64 * max(1, len(ids)))(*ids)
        return int(self.lib.fake_zc_push_cb(fd, sz_iov, iovs or b"", len(iovs or b""),
                                            iovs is None, info or b"", len(info or b""),
                                            info is None, arr, len(ids)))

    def cb_verdict(self, seq: int) -> int:
        return int(self.lib.fake_zc_cb_verdict(seq))

    def pending(self, fd: int) -> int:
        return int(self.lib.fake_zc_pending(fd))

    def judge(self, seq: int, trust: int) -> None:
        self.lib.fake_zc_judge(seq, trust)

    def id_state(self, pid: int) -> tuple[int, int, int]:
        """(state: 0 new, 1 out, 2 freed, -1 unknown; fd; times passed to free)."""
        fd, frees = ctypes.c_int(-1), ctypes.c_uint(0)
        st = self.lib.fake_zc_id_state(pid, ctypes.byref(fd), ctypes.byref(frees))
        return int(st), fd.value, frees.value

    def outstanding(self, fd: int) -> int:
        return int(self.lib.fake_zc_outstanding(fd))

    def ncalls(self) -> int:
        return int(self.lib.fake_zc_calls())

    def calls(self, start: int) -> list[Call]:
        out = []
        fd, fl, fn = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        ln, seq = ctypes.c_size_t(), ctypes.c_long()
        i = start
        while self.lib.fake_zc_call(i, ctypes.byref(fd), ctypes.byref(fl), ctypes.byref(ln),
                                    ctypes.byref(seq), ctypes.byref(fn)) == 0:
            out.append(Call(fd.value, fl.value, ln.value, seq.value, bool(fn.value)))
            i += 1
        return out

    def free_calls(self) -> int:
        return int(self.lib.fake_zc_free_calls())

    def violations(self) -> list[str]:
        n = int(self.lib.fake_zc_violations())
        out = []
        for i in range(n):
            v = self.lib.fake_zc_violation(i)
            out.append(v.decode() if v else "(more violations than the fake keeps)")
        return out

    def reset(self) -> int:
        return int(self.lib.fake_zc_reset())

    def set_refuse(self, refuse: bool) -> None:
        """Make register_recv_callback refuse registrations (-1/EINVAL) from now on."""
        self.lib.fake_zc_set_refuse(int(refuse))

    def registered(self, fd: int) -> bool:
        return bool(self.lib.fake_zc_registered(fd))

    def register_calls(self, refused: bool = False) -> int:
        return int(self.lib.fake_zc_register_calls(int(refused)))


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------

def sockaddr_v4(host: str, port: int) -> bytes:
    return struct.pack("<H", stdsocket.AF_INET) + struct.pack(">H", port) + \
        stdsocket.inet_aton(host) + bytes(8)


def sockaddr_v6(host: str, port: int, flowinfo: int = 0, scope: int = 0) -> bytes:
    return (struct.pack("<H", stdsocket.AF_INET6) + struct.pack(">HI", port, flowinfo) +
            stdsocket.inet_pton(stdsocket.AF_INET6, host) + struct.pack("<I", scope))


DEFAULT_SRC = (sockaddr_v4("127.0.0.2", 5001), 16)


@dataclass
class Answer:
    """One scripted answer of recvfrom_zcopy."""

    words: list[int]                   # the buffer as u64 words (n_packet_num, packets...)
    rc: int
    flags: int
    err: int = 0
    ids: list[int] = field(default_factory=list)
    src: bytes = b""
    srclen: int = 0
    note: str = ""
    cut: int | None = None             # keep only this many bytes of the packed words
    raw: bytes | None = None           # copies: the data itself
    payloads: dict[int, bytes] = field(default_factory=dict)   # base address -> bytes there
    shape: list[list[int]] = field(default_factory=list)       # good answers: fragment lengths
    # a receive-callback answer: what the fd's callback is given (None: a NULL pointer)
    cb: bool = False
    cb_sz: int = 0
    cb_iovs: list[int] | None = None   # (base, len) words
    cb_info: bytearray | None = None   # the 80-byte xlio_info_t

    def bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        data = b"".join(struct.pack("<Q", w & U64_MASK) for w in self.words)
        return data if self.cut is None else data[:self.cut]

    # word indexes of a good answer's fields (valid before any structural mutation)
    def pid_at(self, j: int) -> int:
        return self._walk()[j][0]

    def sz_at(self, j: int) -> int:
        return self._walk()[j][0] + 1

    def iov_at(self, j: int, k: int) -> int:
        return self._walk()[j][1] + 2 * k

    def _walk(self) -> list[tuple[int, int]]:
        out, w = [], 1
        for frags in self.shape:
            out.append((w, w + 2))
            w += 2 + 2 * len(frags)
        return out


class Builder:
    """Answers for the fake: well-formed ones generated from a shape, copies, errors, and the
    malformations (each returns a new Answer; the original is untouched)."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    # -- well-formed ---------------------------------------------------------------------------
    def good(self, packets: Sequence[Sequence[bytes]], src: tuple[bytes, int] = DEFAULT_SRC,
             note: str = "") -> Answer:
        """A well-formed zero-copy answer: one packet per item, one fragment per bytes."""
        words = [len(packets)]
        ids, payloads, total = [], {}, 0
        for frags in packets:
            pid = self.fake.new_id()
            ids.append(pid)
            words += [pid, len(frags)]
            for data in frags:
                base = self.fake.payload(bytes(data))
                payloads[base] = bytes(data)
                words += [base, len(data)]
                total += len(data)
        shape = [[len(d) for d in frags] for frags in packets]
        return Answer(words, total, MSG_ZCOPY, ids=ids, src=src[0], srclen=src[1],
                      note=note or f"good {shape}", payloads=payloads, shape=shape)

    def generated(self, shape: Sequence[Sequence[int]], seed: int = 0,
                  src: tuple[bytes, int] = DEFAULT_SRC) -> Answer:
        """Well-formed, generated from (packets, fragments, lengths) with bytes from `seed`."""
        packets = []
        for j, frags in enumerate(shape):
            packets.append([bytes((seed + 31 * j + 7 * k + i) & 0xFF for i in range(n))
                            for k, n in enumerate(frags)])
        return self.good(packets, src)

    def copy(self, data: bytes, src: tuple[bytes, int] = DEFAULT_SRC, note: str = "") -> Answer:
        return Answer([], len(data), 0, raw=bytes(data), src=src[0], srclen=src[1],
                      note=note or f"copy {len(data)}B")

    def error(self, err: int, flags: int = 0, rc: int = -1) -> Answer:
        return Answer([], rc, flags, err=err, note=f"-1/{errno.errorcode.get(err, err)}"
                      + (f" flags {flags:#x}" if flags else ""))

    def raw(self, words: Sequence[int], rc: int, flags: int = MSG_ZCOPY,
            ids: Sequence[int] = (), note: str = "raw") -> Answer:
        return Answer(list(words), rc, flags, ids=list(ids), src=DEFAULT_SRC[0],
                      srclen=DEFAULT_SRC[1], note=note)

    def callback(self, frags: Sequence[bytes], src: bytes = DEFAULT_SRC[0],
                 note: str = "") -> Answer:
        """A well-formed packet for the receive callback (pid, fragments, info with source)."""
        pid = self.fake.new_id()
        words, payloads = [], {}
        for data in frags:
            base = self.fake.payload(bytes(data))
            payloads[base] = bytes(data)
            words += [base, len(data)]
        src_ptr = self.fake.payload(src) if src else 0
        info = bytearray(80)
        struct.pack_into("<QQQQQ", info, 0, 80, pid, src_ptr, 0, 0)
        return Answer([], -1, 0, err=errno.EAGAIN, ids=[pid], src=src, srclen=len(src),
                      note=note or f"callback {[len(d) for d in frags]}", payloads=payloads,
                      shape=[[len(d) for d in frags]], cb=True, cb_sz=len(frags),
                      cb_iovs=words, cb_info=info)

    def cb_set(self, a: Answer, what: str, value: int | None, k: int = 0) -> Answer:
        """A callback answer with one field changed: 'sz', 'base', 'len' (fragment k), 'pid',
        'iovs' / 'info' (None: pass a NULL pointer)."""
        b = replace(a, ids=list(a.ids), cb_iovs=None if a.cb_iovs is None else list(a.cb_iovs),
                    cb_info=None if a.cb_info is None else bytearray(a.cb_info),
                    note=f"{a.note} | {what}{k if what in ('base', 'len') else ''}="
                         f"{value if value is None else hex(value)}")
        if what == "sz":
            b.cb_sz = int(value or 0)
        elif what in ("base", "len"):
            assert b.cb_iovs is not None
            b.cb_iovs[2 * k + (what == "len")] = int(value or 0) & U64_MASK
        elif what == "pid":
            assert b.cb_info is not None
            struct.pack_into("<Q", b.cb_info, 8, int(value or 0))
        elif what == "iovs":
            b.cb_iovs = None
        elif what == "info":
            b.cb_info = None
        return b

    # -- malformations ------------------------------------------------------------------------
    @staticmethod
    def _m(a: Answer, note: str, **kw: Any) -> Answer:
        b = replace(a, words=list(a.words), ids=list(a.ids), note=f"{a.note} | {note}", **kw)
        return b

    def set_word(self, a: Answer, index: int, value: int, note: str) -> Answer:
        b = self._m(a, note)
        while len(b.words) <= index:
            b.words.append(0)
        b.words[index] = value & U64_MASK
        return b

    def n_packets(self, a: Answer, value: int) -> Answer:
        return self.set_word(a, 0, value, f"n_packet_num={value:#x}")

    def sz_iov(self, a: Answer, j: int, value: int) -> Answer:
        return self.set_word(a, a.sz_at(j), value, f"pkt{j}.sz_iov={value:#x}")

    def iov_len(self, a: Answer, j: int, k: int, value: int) -> Answer:
        return self.set_word(a, a.iov_at(j, k) + 1, value, f"pkt{j}.iov{k}.len={value:#x}")

    def iov_base(self, a: Answer, j: int, k: int, value: int) -> Answer:
        return self.set_word(a, a.iov_at(j, k), value, f"pkt{j}.iov{k}.base={value:#x}")

    def packet_id(self, a: Answer, j: int, value: int) -> Answer:
        return self.set_word(a, a.pid_at(j), value, f"pkt{j}.id={value:#x}")

    def rc(self, a: Answer, value: int) -> Answer:
        return self._m(a, f"rc={value}", rc=value)

    def flags(self, a: Answer, value: int) -> Answer:
        return self._m(a, f"flags={value:#x}", flags=value)

    def truncate(self, a: Answer, nbytes: int) -> Answer:
        return self._m(a, f"cut at {nbytes}B", cut=nbytes)


# ---------------------------------------------------------------------------------------------
# The contract for one answer
# ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str                          # zc, copy, eof, error, malformed, either
    err: int = 0
    data: bytes = b""
    packets: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    reason: str = ""
    options: list[Outcome] = field(default_factory=list)   # either: the acceptable readings


def parse(view: bytes, rc: int, flags: int, err: int, stream: bool, force: bool) -> Outcome:
    """What pyxlio must make of an answer; `view` is the whole buffer as pyxlio sees it."""
    if rc < 0:
        if rc == -1 and err:
            return Outcome("error", err=err)
        # -1 without errno, or a negative count: an error, or malformed
        return Outcome("either", reason=f"rc {rc} with errno {err}",
                       options=[Outcome("error", err=err),
                                Outcome("malformed", reason=f"rc {rc}, errno {err}")])
    size = len(view)
    if not flags & MSG_ZCOPY:
        if rc > size:
            return Outcome("malformed", reason=f"a copy of {rc} bytes into a {size}-byte buffer")
        if rc == 0 and stream:
            return Outcome("eof")
        copied = Outcome("copy", data=view[:rc])
        if force:   # the provider copied although force asked it not to
            return Outcome("either", reason="a copy under force",
                           options=[copied, Outcome("error", err=errno.EIO)])
        return copied
    if size < 8:
        return Outcome("malformed", reason="buffer shorter than n_packet_num")
    n = struct.unpack_from("<Q", view, 0)[0]
    if n == 0:
        if rc == 0:
            empty = Outcome("eof") if stream else Outcome("copy", data=b"")
            return Outcome("either", reason="MSG_ZCOPY, rc 0, no packet",
                           options=[empty, Outcome("malformed", reason="no packet")])
        return Outcome("malformed", reason=f"n_packet_num 0 with rc {rc}")
    off, total, empty_pkt = 8, 0, False
    packets: list[tuple[int, list[tuple[int, int]]]] = []
    for j in range(n):        # n may be 2**63: every packet takes >= 16 bytes, so this ends
        if off + 16 > size:
            return Outcome("malformed", reason=f"packet {j} of {n} lies beyond the buffer")
        pid, sz = struct.unpack_from("<QQ", view, off)
        if pid == 0:
            return Outcome("malformed", reason=f"packet {j}: NULL packet_id")
        if sz > (size - off - 16) // 16:
            return Outcome("malformed", reason=f"packet {j}: {sz} iovecs run past the buffer")
        frags = []
        for k in range(sz):
            base, ln = struct.unpack_from("<QQ", view, off + 16 + 16 * k)
            if base == 0 and ln:
                return Outcome("malformed", reason=f"packet {j} iov {k}: NULL base, len {ln}")
            frags.append((base, ln))
            total += ln
        empty_pkt = empty_pkt or sz == 0
        if not stream and sum(ln for _, ln in frags) > 65535:
            return Outcome("malformed", reason=f"a datagram of {sum(ln for _, ln in frags)} B")
        packets.append((pid, frags))
        off += 16 + 16 * sz
    if total != rc:
        return Outcome("malformed", reason=f"iov lengths sum to {total}, rc is {rc}")
    zc = Outcome("zc", packets=packets)
    if empty_pkt:
        return Outcome("either", reason="a packet with sz_iov 0",
                       options=[zc, Outcome("malformed", reason="sz_iov 0")])
    return zc


#: A receive-callback packet with more fragments than this is malformed (a 64 KiB datagram).
CB_MAX_FRAGS = 65536


def parse_cb(a: Answer) -> Outcome:
    """What pyxlio must make of a packet handed to its receive callback (no rc to check the
    lengths against: a datagram is at most 64 KiB)."""
    if a.cb_info is None:
        return Outcome("malformed", reason="callback: NULL info")
    if a.cb_sz and a.cb_iovs is None:
        return Outcome("malformed", reason="callback: NULL iov array")
    if a.cb_sz > CB_MAX_FRAGS:
        return Outcome("malformed", reason=f"callback: sz_iov {a.cb_sz}")
    pid = struct.unpack_from("<Q", a.cb_info, 8)[0]
    if pid == 0:
        return Outcome("malformed", reason="callback: NULL packet_id")
    frags, total = [], 0
    words = a.cb_iovs or []
    for k in range(a.cb_sz):
        base, ln = words[2 * k], words[2 * k + 1]
        if base == 0 and ln:
            return Outcome("malformed", reason=f"callback: iov {k} NULL base, len {ln}")
        if ln > 65535:
            return Outcome("malformed", reason=f"callback: iov {k} of {ln} B")
        frags.append((base, ln))
        total += ln
    if total > 65535:
        return Outcome("malformed", reason=f"callback: a datagram of {total} B")
    return Outcome("zc", packets=[(pid, frags)])


def as_int(v: int) -> int:
    """`v` as the C int the fake returns (ctypes wraps it to 32 bits)."""
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def expected_address(src: bytes, srclen: int, asked: bool) -> object:
    """The source address pyxlio must report; Ellipsis when the contract leaves it open."""
    if not asked:
        return None
    if srclen < 2 or len(src) < 2:
        return None
    family = struct.unpack_from("<H", src, 0)[0]
    if family == stdsocket.AF_INET and srclen >= 16 and len(src) >= 16:
        return (stdsocket.inet_ntoa(src[4:8]), struct.unpack_from(">H", src, 2)[0])
    if family == stdsocket.AF_INET6 and srclen >= 28 and len(src) >= 28:
        port, flow = struct.unpack_from(">HI", src, 2)
        return (stdsocket.inet_ntop(stdsocket.AF_INET6, src[8:24]), port, flow,
                struct.unpack_from("<I", src, 24)[0])
    return Ellipsis


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

#: Receive-callback verdicts, and RAISE: the test's callback raises CallbackError (pyxlio
#: counts the datagram as RECV and raises the error from a receive call).
DROP, RECV, HOLD, RAISE = 0, 1, 2, 3
VERDICTS = {DROP: "DROP", RECV: "RECV", HOLD: "HOLD", RAISE: "RAISE"}
#: A pending callback error that is XlioError(EPROTO): XLIO handed the callback a malformed
#: packet (reported only where a Python callback is set).
EPROTO_CB = "XlioError(EPROTO) for a malformed callback packet"
#: Known mismatches a run may accept (PYXLIO_FUZZ_ACCEPT=name,...), to look past them:
#: "lost-error": when the datagrams before an error or a malformed answer were all dropped or
#:   held, pyxlio keeps waiting (it calls the provider again when the call has a timeout, and
#:   forgets the error);
#: "held-order": sock.held not oldest first (a HOLD of XLIO's callback is queued after the
#:   software path's HOLDs of later datagrams of the same call).
KNOWN = ("lost-error", "held-order")


#: The error a receive call leaves for the next one: ("must" | "may", errno), or None.
Deferred = tuple[str, int] | None


class CallbackError(Exception):
    """What the test's receive callback raises for the verdict RAISE."""


@dataclass
class CbCall:
    """One call of the test's receive callback, as the callback saw it."""

    data: bytes
    verdict: int
    path: str
    src: object
    size: int
    fragments: int
    exc: BaseException | None = None
    copy: bool = False                 # the view was of a bytes object (not provider memory)
    readonly: bool = True

    def __repr__(self) -> str:
        return f"CbCall({self.path}, {self.data[:16]!r}, {VERDICTS.get(self.verdict)})"


@dataclass
class Slot:
    data: bytes
    zcopy: bool
    ids: list[int]
    nfrags: int | None             # None: not checked (copies)
    frags: list[bytes]
    address: object                # Ellipsis: not checked
    freed: bool = False
    views: int = 0                 # live exports of this slot
    bases: list[int] = field(default_factory=list)   # zero-copy: the fragments' addresses

    def __repr__(self) -> str:
        return f"Slot({'zc' if self.zcopy else 'copy'}, {self.data[:16]!r}, {len(self.data)} B)"


@dataclass
class XEvent:
    """What XLIO's own callback did with a callback answer (pyxlio's trampoline)."""

    errors: list[object] = field(default_factory=list)
    held: Slot | None = None
    filtered: int = 0


@dataclass
class Hold:
    """A batch (or a standalone packet) the model says pyxlio still owns provider memory for."""

    obj: Any                       # PacketBatch, or Packet when standalone
    sock: Sock
    slots: list[Slot]
    standalone: bool
    released: bool = False

    def live_views(self) -> int:
        return sum(s.views for s in self.slots)

    def __repr__(self) -> str:
        return (f"Hold(fd {self.sock.fd}, {'packet' if self.standalone else 'batch'} of "
                f"{len(self.slots)}{', released' if self.released else ''})")


@dataclass
class View:
    mv: memoryview
    hold: Hold
    slot: int
    expect: bytes
    exported: bool                 # a real export (counts against release) or a copy

    def __repr__(self) -> str:
        return f"View(fd {self.hold.sock.fd}, slot {self.slot}, {len(self.expect)} B)"


@dataclass
class Sock:
    sock: Any
    stream: bool
    fd: int
    peer: Any = None
    deferred: int | None = None        # errno the next receive call must raise
    maybe_deferred: list[int] = field(default_factory=list)  # errnos the next call may raise
    closed: bool = False
    holds: list[Hold] = field(default_factory=list)
    has_fn: bool = False               # a Python receive callback is set
    cb_verdicts: list[int] = field(default_factory=list)   # what it answers, in turn (RECV)
    cb_log: list[CbCall] = field(default_factory=list)     # its calls
    filter: tuple[int, bytes, bool] | None = None
    registered: bool = False           # XLIO accepted pyxlio's registration
    cb_errors: list[object] = field(default_factory=list)  # callback errors not raised yet
    filtered: int = 0                  # datagrams the C filter dropped

    def live_slots(self) -> int:
        return sum(1 for h in self.holds if not h.released
                   for s in h.slots if s.zcopy and not s.freed)

    def live_ids(self) -> list[int]:
        return [i for h in self.holds if not h.released
                for s in h.slots if s.zcopy and not s.freed for i in s.ids]

    def live_views(self) -> int:
        return sum(h.live_views() for h in self.holds)

    def __repr__(self) -> str:
        return f"Sock(fd {self.fd}, {'tcp' if self.stream else 'udp'})"

    def callback_path(self) -> str | None:
        if not self.has_fn and self.filter is None:
            return None
        return "xlio" if self.registered else "pyxlio"

    def software(self, s: Slot) -> bool:
        """Does pyxlio run the filter and callback on this datagram itself?  Where one is set:
        on every datagram when XLIO has no registration (refused, or a stream socket), else on
        the copies (XLIO runs callbacks on its offloaded path only)."""
        return (self.has_fn or self.filter is not None) and \
            (not self.registered or not s.zcopy)


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_GET_BUFFER = ctypes.pythonapi.PyObject_GetBuffer
_GET_BUFFER.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_GET_BUFFER.restype = ctypes.c_int
_RELEASE_BUFFER = ctypes.pythonapi.PyBuffer_Release
_RELEASE_BUFFER.argtypes = [ctypes.POINTER(_PyBuffer)]
_RELEASE_BUFFER.restype = None


def first_fragment_address(p: Any) -> int:
    """Address of a zero-copy packet's first fragment (0 when it cannot be told)."""
    try:
        frags = p.fragments
    except (ValueError, BufferError):
        return 0
    try:
        buf = _PyBuffer()
        if _GET_BUFFER(frags[0], ctypes.byref(buf), 0) != 0:
            return 0
        addr = int(buf.buf or 0)
        _RELEASE_BUFFER(ctypes.byref(buf))
        return addr
    finally:
        for mv in frags:
            mv.release()


class Harness:
    """pyxlio sockets under the fake, and the model every operation is checked against."""

    def __init__(self, fake: Fake | None = None, trace: Callable[[str], None] | None = None
                 ) -> None:
        import pyxlio
        import pyxlio.socket

        api = pyxlio.get_api()
        if api is None or api.provider != "libxlio" or api.cap_mask != 0x7:
            raise RuntimeError(f"the fake did not answer as the XLIO provider: {api!r}")
        self.pyxlio = pyxlio
        self.fake = fake or Fake()
        self.build = Builder(self.fake)
        self.answers: dict[int, Answer] = {}
        self.socks: list[Sock] = []
        self.views: list[View] = []
        self.freed: set[int] = set()       # ids the model says were freed
        self.never: set[int] = set()       # ids of answers that must never be freed
        self.trace = trace or (lambda line: None)
        self.listener: stdsocket.socket | None = None
        self.violations_seen = len(self.fake.violations())
        self.notes: list[str] = []
        self.stats: dict[str, int] = {}
        self.failed = False                # a mismatch was raised: finish() would not be sane
        #: a copied packet must outlive the release of its batch's zero-copy packets (when
        #: False, that loss is only noted: the fuzzer looks for malformed-answer bugs)
        self.strict_copies = False
        self.refuse = False                # the fake refuses registrations now
        self.ncb_errors = 0
        #: known mismatches accepted (noted instead): see KNOWN
        self.accept = {k for k in os.environ.get("PYXLIO_FUZZ_ACCEPT", "").split(",") if k}
        unknown = self.accept - set(KNOWN)
        if unknown:
            raise ValueError(f"PYXLIO_FUZZ_ACCEPT: unknown {sorted(unknown)}; known: {KNOWN}")

    # -- sockets -------------------------------------------------------------------------------
    def udp(self) -> Sock:
        s = self.pyxlio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        sk = Sock(s, False, s.fileno())
        self.socks.append(sk)
        self.trace(f"udp() -> fd {sk.fd}")
        return sk

    def tcp(self) -> Sock:
        if self.listener is None:
            self.listener = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
            self.listener.bind(("127.0.0.1", 0))
            self.listener.listen(16)
        s = self.pyxlio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        s.connect(self.listener.getsockname())
        peer, _ = self.listener.accept()
        sk = Sock(s, True, s.fileno(), peer=peer)
        self.socks.append(sk)
        self.trace(f"tcp() -> fd {sk.fd}")
        return sk

    def push(self, sk: Sock, a: Answer) -> int:
        if a.cb:
            if not sk.registered:
                raise AssertionError("test bug: a callback answer for a socket XLIO has no "
                                     "callback of")
            iovs = None if a.cb_iovs is None else \
                b"".join(struct.pack("<Q", w & U64_MASK) for w in a.cb_iovs)
            seq = self.fake.push_cb(sk.fd, a.cb_sz, iovs,
                                    None if a.cb_info is None else bytes(a.cb_info), a.ids)
            self.answers[seq] = a
            self.trace(f"push(fd {sk.fd}) #{seq}: {a.note}")
            return seq
        seq = self.fake.push(sk.fd, a.bytes(), a.rc, a.flags, a.err, a.ids, a.src, a.srclen)
        self.answers[seq] = a
        self.trace(f"push(fd {sk.fd}) #{seq}: {a.note} rc={a.rc} flags={a.flags:#x}")
        return seq

    # -- callbacks and filters ----------------------------------------------------------------
    def set_refuse(self, refuse: bool) -> None:
        """From now on the fake refuses (or accepts) registrations of receive callbacks."""
        if refuse != self.refuse:
            self.trace(f"fake: {'refuse' if refuse else 'accept'} registrations")
        self.refuse = refuse
        self.fake.set_refuse(refuse)

    def _register(self, sk: Sock) -> None:
        """pyxlio's register() after a change: a datagram socket with a callback or filter is
        registered with XLIO unless XLIO refuses (then pyxlio runs them itself, and tries again
        at the next change); a stream socket never is; with neither, it is unregistered."""
        want = sk.has_fn or sk.filter is not None
        if sk.stream:
            sk.registered = False
        elif want and not sk.registered:
            sk.registered = not self.refuse
        elif not want:
            sk.registered = False

    @checked
    def set_callback(self, sk: Sock, verdicts: Sequence[int] = ()) -> None:
        """Set a Python receive callback answering `verdicts` in turn (then RECV); RAISE makes
        it raise a CallbackError."""
        self.trace(f"set_callback(fd {sk.fd}, {[VERDICTS[v] for v in verdicts]})")
        sk.cb_verdicts = list(verdicts)

        def fn(view: memoryview, info: Any) -> int:
            verdict = sk.cb_verdicts.pop(0) if sk.cb_verdicts else RECV
            call = CbCall(bytes(view), verdict, info.path, info.src, info.payload_size,
                          info.fragments, copy=type(view.obj) is bytes,
                          readonly=view.readonly)
            sk.cb_log.append(call)
            if verdict == RAISE:
                self.ncb_errors += 1
                call.exc = CallbackError(f"test callback error {self.ncb_errors}")
                raise call.exc
            return verdict

        sk.sock.set_recv_callback(fn)
        sk.has_fn = True
        self._register(sk)

    @checked
    def clear_callback(self, sk: Sock) -> None:
        self.trace(f"clear_callback(fd {sk.fd})")
        sk.sock.set_recv_callback(None)
        sk.has_fn = False
        sk.cb_verdicts = []
        self._register(sk)

    @checked
    def set_filter(self, sk: Sock, offset: int, pattern: bytes, keep: bool = True) -> None:
        self.trace(f"set_filter(fd {sk.fd}, {offset}, {pattern!r}, keep={keep})")
        sk.sock.set_recv_filter(offset, pattern, keep)
        sk.filter = (offset, pattern, keep)
        self._register(sk)

    @checked
    def clear_filter(self, sk: Sock) -> None:
        self.trace(f"clear_filter(fd {sk.fd})")
        had = sk.filter is not None
        sk.sock.clear_recv_filter()
        sk.filter = None
        if had:                 # (no filter: pyxlio does nothing)
            self._register(sk)

    @staticmethod
    def _filter_drops(sk: Sock, data: bytes) -> bool:
        if sk.filter is None:
            return False
        off, pat, keep = sk.filter
        return (data[off:off + len(pat)] == pat) != keep

    @staticmethod
    def _check_call(call: CbCall, data: bytes, path: str, src: object, frags: int,
                    what: str) -> None:
        if call.data != data:
            raise Mismatch(f"{what}: the callback got {call.data[:32]!r}, expected "
                           f"{data[:32]!r}")
        if call.path != path:
            raise Mismatch(f"{what}: info.path is {call.path!r}, expected {path!r}")
        if call.size != len(data):
            raise Mismatch(f"{what}: info.payload_size is {call.size}, expected {len(data)}")
        if call.fragments != frags:
            raise Mismatch(f"{what}: info.fragments is {call.fragments}, expected {frags}")
        if src is not Ellipsis and call.src != src:
            raise Mismatch(f"{what}: info.src is {call.src!r}, expected {src!r}")
        if not call.readonly:
            raise Mismatch(f"{what}: the callback's view is writable")
        if path == "pyxlio" and not call.copy:
            raise Mismatch(f"{what}: on pyxlio's path the callback's view must be of a copy")

    def _callbacks(self, sk: Sock, served: list[tuple[Call, Outcome]], calls: list[CbCall]
                   ) -> tuple[list[tuple[Call, Outcome]], list[XEvent | None]]:
        """XLIO's own callbacks: check what the filter and the callback were given and answered
        for the callback answers served (`calls`: the callback's calls on the "xlio" path);
        return the outcomes as the receive call sees them (-1/EAGAIN) and, for each, what
        happened (errors to raise later, a HOLD to find in sock.held, a filter drop)."""
        calls = list(calls)
        out: list[tuple[Call, Outcome]] = []
        events: list[XEvent | None] = []
        for c, o in served:
            a = self.answers.get(c.seq)
            if a is None or not a.cb:
                out.append((c, o))
                events.append(None)
                continue
            verdict = self.fake.cb_verdict(c.seq)
            ev = XEvent()
            events.append(ev)
            self.count(f"xlio callback {'malformed' if o.kind == 'malformed' else 'good'} "
                       f"-> {VERDICTS.get(verdict, verdict)}")
            if o.kind == "malformed":
                if verdict not in (DROP, RECV):
                    raise Mismatch(f"callback answer #{c.seq} is malformed ({o.reason}) but "
                                   f"pyxlio answered {verdict} (only DROP or RECV: its id "
                                   "cannot be trusted)")
                self.never.update(a.ids)
                if sk.has_fn:           # reported (XlioError) where a Python callback is set
                    ev.errors.append(EPROTO_CB)
                out.append((c, Outcome("error", err=errno.EAGAIN, reason="callback, malformed")))
                continue
            _, frags = o.packets[0]
            parts = [self._bytes_at(a, base, ln) for base, ln in frags]
            data = b"".join(parts)
            if self._filter_drops(sk, data):
                want = DROP
                ev.filtered = 1
            elif sk.has_fn:
                if not calls:
                    raise Mismatch(f"callback answer #{c.seq}: XLIO's callback did not reach "
                                   f"the Python callback (expected {data[:32]!r})")
                call = calls.pop(0)
                self._check_call(call, data, "xlio", expected_address(a.src, a.srclen, True),
                                 len(frags), f"callback answer #{c.seq}")
                want = RECV if call.verdict == RAISE else call.verdict
                if call.exc is not None:
                    ev.errors.append(call.exc)
            else:
                want = RECV
            if verdict != want:
                raise Mismatch(f"callback answer #{c.seq}: pyxlio answered {verdict}, "
                               f"expected {want}")
            if verdict == HOLD:
                self.fake.judge(c.seq, 1)
                ev.held = Slot(data, True, list(a.ids), len(frags), parts, Ellipsis,
                               bases=[base for base, _ in frags])
            else:
                self.never.update(a.ids)    # the provider kept it: never to be freed
            out.append((c, Outcome("error", err=errno.EAGAIN, reason="callback")))
        if calls:
            raise Mismatch(f"the receive callback was called on XLIO's path {len(calls)} more "
                           f"time(s) than the well-formed packets XLIO gave it: "
                           f"{[x.data[:16] for x in calls[:2]]!r}")
        return out, events

    def _software(self, sk: Sock, s: Slot, calls: list[CbCall], what: str
                  ) -> tuple[int, BaseException | None, int]:
        """pyxlio's own filter and callback on one datagram its receive call took: (verdict,
        the callback's exception, 1 if the filter dropped it).  Consumes `calls`."""
        if not sk.software(s):
            return RECV, None, 0
        if self._filter_drops(sk, s.data):
            return DROP, None, 1
        if not sk.has_fn:
            return RECV, None, 0
        if not calls:
            raise Mismatch(f"{what}: pyxlio did not run the receive callback on it "
                           f"({'zero-copy' if s.zcopy else 'a copy'}, {s.data[:16]!r}, "
                           f"callback_path {sk.callback_path()!r})")
        call = calls.pop(0)
        nfr = 1 if not s.zcopy else max(1, s.nfrags or 0)
        self._check_call(call, s.data, "pyxlio", s.address, nfr, what)
        if call.verdict == RAISE:
            return RECV, call.exc, 0
        return call.verdict, None, 0

    # -- receiving ----------------------------------------------------------------------------
    @checked
    def recv_batch(self, sk: Sock, max_packets: int = 64, timeout: float = 0,
                   addresses: bool = True) -> Any:
        self.trace(f"recv_batch(fd {sk.fd}, {max_packets}, timeout={timeout}, "
                   f"addresses={addresses})")
        start, log_start = self.fake.ncalls(), len(sk.cb_log)
        res, exc = None, None
        try:
            res = sk.sock.recv_batch(max_packets, timeout=timeout, addresses=addresses)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            exc = e
        self._settle(sk, "batch", start, log_start, res, exc, max_packets, timeout,
                     addresses, False)
        return res if exc is None else exc

    @checked
    def recvfrom_zcopy(self, sk: Sock, timeout: float = 0, force: bool = False) -> Any:
        self.trace(f"recvfrom_zcopy(fd {sk.fd}, timeout={timeout}, force={force})")
        sk.sock.settimeout(timeout)
        start, log_start = self.fake.ncalls(), len(sk.cb_log)
        res, exc = None, None
        try:
            res = sk.sock.recvfrom_zcopy(force=force)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            exc = e
        self._settle(sk, "zcopy", start, log_start, res, exc, 1, timeout, True, force)
        return res if exc is None else exc

    def _served(self, sk: Sock, start: int, force: bool) -> list[tuple[Call, Outcome]]:
        out = []
        for c in self.fake.calls(start):
            if c.fd != sk.fd:
                raise Mismatch(f"recvfrom_zcopy called on fd {c.fd} during a receive on fd "
                               f"{sk.fd}")
            if c.flags_in & MSG_ZCOPY:
                raise Mismatch(f"MSG_XLIO_ZCOPY passed in (flags {c.flags_in:#x})")
            if bool(c.flags_in & MSG_ZCOPY_FORCE) != force:
                raise Mismatch(f"force={force} but flags in were {c.flags_in:#x}")
            if c.seq < 0:
                out.append((c, Outcome("error", err=errno.EAGAIN)))
                continue
            a = self.answers[c.seq]
            if a.cb:
                out.append((c, parse_cb(a)))
                continue
            body = a.bytes()[:c.length]
            view = body + bytes([self.fake.filler]) * (c.length - len(body))
            out.append((c, parse(view, as_int(a.rc), as_int(a.flags), a.err, sk.stream,
                                 force)))
        return out

    def _is_error(self, exc: BaseException | None, what: object) -> bool:
        if what == EPROTO_CB:
            return isinstance(exc, self.pyxlio.XlioError) and exc.errno == errno.EPROTO and \
                "callback" in str(exc)
        return exc is what

    def _settle(self, sk: Sock, op: str, start: int, log_start: int, res: Any,
                exc: BaseException | None, maxp: int, timeout: float, addresses: bool,
                force: bool) -> None:
        log = sk.cb_log[log_start:]
        for x in log:
            if x.path not in ("xlio", "pyxlio"):
                raise Mismatch(f"info.path is {x.path!r}")
        served, events = self._callbacks(sk, self._served(sk, start, force),
                                         [x for x in log if x.path == "xlio"])
        sw_calls = [x for x in log if x.path == "pyxlio"]
        for x in log:
            if x.exc is not None:
                # Its traceback reaches, through the frames' f_back, this harness's frames
                # and their locals (the result): kept by pyxlio until raised, it would keep
                # the result alive after the test drops it.  (The same object is raised.)
                x.exc.__traceback__ = None
        self.count(f"{op} calls")
        for _, o in served:
            self.count(f"answer {o.kind}" if o.kind != "error" else
                       f"answer -1/{errno.errorcode.get(o.err, o.err)}")
        self.trace("  served: " + ", ".join(
            f"#{c.seq}:{o.kind}{'/' + o.reason if o.reason else ''}" for c, o in served)
            + (f" -> {exc!r}" if exc is not None else f" -> {res!r}")
            + (f"; callback: {[(x.path, x.data[:8], VERDICTS[x.verdict]) for x in log]}"
               if log else ""))
        if sk.deferred is not None:
            e, sk.deferred = sk.deferred, None
            if served:
                self._judge_all(served, [o for _, o in served])
                raise Mismatch(f"the receive call after a malformed answer called the provider "
                               f"({len(served)} call(s)) instead of raising errno {e} first")
            if not (isinstance(exc, self.pyxlio.XlioError) and exc.errno == e):
                raise Mismatch(f"the receive call after a malformed answer must raise "
                               f"XlioError(errno {e}), got {exc!r} / {res!r}")
            return
        if sk.maybe_deferred:
            if not served and isinstance(exc, OSError) and exc.errno in sk.maybe_deferred and \
                    not self._is_error(exc, EPROTO_CB):
                # (a pending EPROTO is raised before the callbacks' errors)
                sk.maybe_deferred.remove(exc.errno)     # the others may come next
                return
            sk.maybe_deferred = []
        if sk.cb_errors:
            first, sk.cb_errors = sk.cb_errors[0], []
            if served:
                self._judge_all(served, [o for _, o in served])
                raise Mismatch(f"the receive call after a callback's exception called the "
                               f"provider ({len(served)} call(s)) instead of raising {first!r}")
            if not self._is_error(exc, first):
                raise Mismatch(f"the receive call after a callback's exception must raise it "
                               f"({first!r}), got {exc!r} / {res!r}")
            return
        eithers = [i for i, (_, o) in enumerate(served) if o.kind == "either"]
        failures: list[Mismatch] = []
        matches: list[tuple[list[Outcome], Callable[[Deferred], None], Deferred]] = []
        for choice in itertools.product(*[served[i][1].options for i in eithers]):
            outs = [o for _, o in served]
            for i, pick in zip(eithers, choice):
                outs[i] = pick
            try:
                apply, deferred = self._expect(sk, op, served, events, outs, sw_calls, res,
                                               exc, maxp, timeout, addresses, force)
            except Mismatch as m:
                m.__traceback__ = None      # (no cycle keeping the result alive)
                failures.append(m)
                continue
            matches.append((outs, apply, deferred))
        if matches:
            outs, apply, deferred = matches[0]
            self._judge_all(served, outs)
            apply(deferred)
            if any(d != deferred for _, _, d in matches[1:]):
                # Readings that pyxlio's answer cannot tell apart (e.g. -2 with ENOBUFS after
                # a datagram: the end of the batch, or malformed): what each would leave to
                # raise next is only a possibility.
                sk.deferred = None
                sk.maybe_deferred.extend(d[1] for _, _, d in matches if d is not None)
            return
        self._judge_all(served, [o if o.kind != "either" else Outcome("malformed")
                                 for _, o in served])
        if len(failures) == 1:
            raise failures[0]
        raise Mismatch(" / or: ".join(str(f) for f in failures))

    def _judge_all(self, served: list[tuple[Call, Outcome]], outs: list[Outcome]) -> None:
        for (c, _), o in zip(served, outs):
            if c.seq < 0 or self.answers[c.seq].cb:
                continue                      # (callback answers: judged in _callbacks)
            trust = 1 if o.kind == "zc" else 0
            self.fake.judge(c.seq, trust)
            if trust == 0:
                self.never.update(self.answers[c.seq].ids)

    def _expect(self, sk: Sock, op: str, served: list[tuple[Call, Outcome]],
                events: list[XEvent | None], outs: list[Outcome], sw_calls: list[CbCall],
                res: Any, exc: BaseException | None, maxp: int, timeout: float,
                addresses: bool, force: bool) -> tuple[Callable[[Deferred], None], Deferred]:
        """Check one reading of the served answers against what pyxlio did; return the
        model update to apply if it matches (raise Mismatch if not), and the error it leaves
        for the next call ("must" / "may", errno).

        A receive call is a series of fills: recvfrom_zcopy until max_packets, a stream read,
        -1 (EAGAIN, an error; EINTR is retried when nothing is in hand) or a malformed answer.
        After each fill pyxlio runs its own filter and callback on the datagrams of it that
        XLIO did not run them on (Sock.software), in order: DROP removes the datagram (a
        zero-copy one is freed at once), HOLD moves it into sock.held, RECV (or an exception,
        kept for later) keeps it.  Datagrams kept: the call returns them.  None kept, or none
        taken: after an error or a malformed answer the call raises it; after EAGAIN (or when
        the fill ended otherwise with everything dropped or held) it keeps waiting: with
        timeout 0 it returns nothing (an empty batch, BlockingIOError), else it waits and fills
        again until its deadline (TimeoutError)."""
        calls = list(sw_calls)
        held: list[Slot] = []          # the datagrams held, in the order they came
        errors: list[object] = []      # callback errors, in the order they happened
        dropped: list[Slot] = []       # zero-copy datagrams the software path dropped
        filtered = 0
        verdicts: list[str] = []
        fill: list[Slot] = []
        end: tuple[Any, ...] | None = None
        stop: str | None = None
        eproto_pending = False         # (accepted "lost-error": pyxlio's pending EPROTO)
        waited = False                 # a fill came back with nothing, and the call waited
        lenient = "lost-error" in self.accept
        if not served:
            raise Mismatch(f"the receive call did not call recvfrom_zcopy (got {exc!r})")
        for idx, ((c, _), o) in enumerate(zip(served, outs)):
            last = idx == len(served) - 1
            if stop is not None:
                raise Mismatch(f"recvfrom_zcopy called again (answer #{c.seq}) after {stop}")
            ev = events[idx]
            if ev is not None:
                errors.extend(ev.errors)
                filtered += ev.filtered
                if ev.held is not None:
                    held.append(ev.held)
            a = self.answers.get(c.seq)
            fill_end: str | None = None
            if o.kind in ("zc", "copy"):
                fill.extend(self._slots(sk, op, a, c, o, addresses, maxp - len(fill)))
                if sk.stream:
                    fill_end = "a stream read"
                elif len(fill) >= maxp:
                    fill_end = f"max_packets ({maxp})"
            elif o.kind == "eof":
                fill_end = "the end of the stream"
            elif o.kind == "malformed":
                fill_end = f"the malformed answer #{c.seq} ({o.reason})"
            elif o.err == errno.EINTR:
                if fill:
                    fill_end = "EINTR"
                elif last:
                    raise Mismatch("-1/EINTR ended the call: it must be retried")
            elif o.err == errno.EAGAIN:
                fill_end = "EAGAIN"
            else:
                fill_end = f"-1/{errno.errorcode.get(o.err, o.err)}"
            if fill_end is None:
                if last and fill:
                    raise Mismatch(f"the receive call stopped calling recvfrom_zcopy with "
                                   f"{len(fill)} of {maxp} packets, before EAGAIN")
                continue
            took = bool(fill)
            kept: list[Slot] = []
            for s in fill:
                v, err, filt = self._software(sk, s, calls, f"datagram {s.data[:16]!r}")
                filtered += filt
                if err is not None:
                    errors.append(err)
                if sk.software(s):
                    verdicts.append(f"software {'zc' if s.zcopy else 'copy'} -> "
                                    f"{'FILTER' if filt else VERDICTS[v]}"
                                    f"{'/raised' if err is not None else ''}")
                if v == DROP:
                    if s.zcopy:
                        dropped.append(s)
                elif v == HOLD:
                    held.append(s)
                else:
                    kept.append(s)
            fill = []
            if o.kind == "eof":
                end, stop = ("eof",), fill_end
            elif kept:
                end = ("items", kept, o)
                stop = f"{fill_end} with packets in hand"
            elif o.kind == "malformed" and not (took and lenient):
                end, stop = ("raise", errno.EPROTO), fill_end
            elif o.kind == "error" and o.err not in (errno.EAGAIN, errno.EINTR) and \
                    not (took and lenient):
                end, stop = ("raise", o.err), fill_end
            else:
                # Nothing to return: keep waiting (with "lost-error" accepted, also after an
                # error or a malformed answer when what came before was dropped or held).
                if o.kind == "malformed" or (o.kind == "error" and o.err == errno.EPROTO):
                    eproto_pending = True   # (pyxlio takes -1/EPROTO for its own EPROTO)
                    self.notes.append("lost-error: a malformed answer after datagrams all "
                                      "dropped or held did not end the call")
                elif o.kind == "error" and o.err not in (errno.EAGAIN, errno.EINTR):
                    self.notes.append("lost-error: an error after datagrams all dropped or "
                                      "held was not raised")
                if timeout == 0:
                    end = ("empty",)
                    stop = (f"{fill_end}, with timeout 0" if not took else
                            f"{fill_end}, every datagram dropped or held, with timeout 0")
                elif last:
                    if not waited:
                        how = ", every datagram dropped or held" if took else ""
                        raise Mismatch(f"{fill_end}{how}: with timeout {timeout} the call "
                                       "ended without waiting (it must wait, then fill again)")
                    end = ("empty",)
                else:
                    waited = True           # the call waits, then fills again
        if calls:
            raise Mismatch(f"the receive callback was called on pyxlio's path {len(calls)} more "
                           f"time(s) than the datagrams it should run on: "
                           f"{[x.data[:16] for x in calls[:2]]!r}")
        assert end is not None
        kind = end[0]

        def want_exc(check: Callable[[BaseException | None], bool], what: str) -> None:
            if not check(exc):
                raise Mismatch(f"expected {what}, got {exc!r} / {res!r} for "
                               f"{[o.kind for o in outs]} ({end[0]})")

        def no_exc() -> None:
            if exc is not None:
                raise Mismatch(f"expected a result, got {exc!r} for {[o.kind for o in outs]}"
                               f" ({end[0]})")

        pending = list(errors)         # callback errors still to raise after this call
        deferred: Deferred = None
        hold: Hold | None = None
        if kind == "raise":
            err = end[1]
            if err == errno.EPROTO:
                want_exc(lambda e: isinstance(e, self.pyxlio.XlioError)
                         and e.errno == errno.EPROTO, "XlioError(EPROTO)")
            elif err == errno.EIO and force:
                want_exc(lambda e: isinstance(e, self.pyxlio.XlioError) and e.errno == err,
                         "XlioError(EIO)")
            else:
                want_exc(lambda e: isinstance(e, OSError) and e.errno == err,
                         f"OSError(errno {err})")
        elif kind in ("eof", "empty") and eproto_pending:
            want_exc(lambda e: isinstance(e, self.pyxlio.XlioError)
                     and e.errno == errno.EPROTO, "XlioError(EPROTO) (pending)")
        elif kind in ("eof", "empty") and pending:
            first = pending[0]
            pending = []                # raised; the others are dropped
            want_exc(lambda e: self._is_error(e, first), f"the callback's error {first!r}")
        elif kind == "eof":
            no_exc()
            if op == "zcopy":
                if res is not None:
                    raise Mismatch(f"end of stream: recvfrom_zcopy must return None, got {res!r}")
            elif len(res) != 0 or not res.eof:
                raise Mismatch(f"end of stream: expected an empty batch with eof, got {res!r}")
        elif kind == "empty":
            if op == "batch":
                no_exc()
                if len(res) != 0:
                    raise Mismatch(f"nothing received, but the batch has {len(res)} packet(s)")
            elif timeout == 0:
                want_exc(lambda e: isinstance(e, BlockingIOError), "BlockingIOError")
            else:
                want_exc(lambda e: isinstance(e, TimeoutError), "TimeoutError")
        else:
            no_exc()
            kept, last_o = end[1], end[2]
            slots = self._compare(sk, op, kept, res)
            hold = Hold(res, sk, slots, standalone=(op == "zcopy"))
            if last_o.kind == "malformed" or eproto_pending:
                deferred = ("must", errno.EPROTO)
            elif last_o.kind == "error" and last_o.err not in (errno.EAGAIN, errno.EINTR):
                deferred = ("may", last_o.err)
        if kind == "raise" and eproto_pending:
            deferred = ("must", errno.EPROTO)      # (accepted "lost-error": still pending)
        adopt = self._match_held(sk, held)

        def apply(deferred: Deferred) -> None:
            if hold is not None:
                sk.holds.append(hold)
            for pkt, s in adopt:
                got = sk.sock.held.popleft()
                if got is not pkt:
                    raise AssertionError("test bug: sock.held changed under the harness")
                sk.holds.append(Hold(pkt, sk, [s], standalone=True))
            for s in dropped:
                s.freed = True
                self.freed.update(s.ids)
                self.stats["ids freed"] = self.stats.get("ids freed", 0) + len(s.ids)
            sk.filtered += filtered
            sk.cb_errors.extend(pending)
            for v in verdicts:
                self.count(v)
            if deferred is not None:
                if deferred[0] == "must":
                    sk.deferred = deferred[1]
                else:
                    sk.maybe_deferred.append(deferred[1])
        return apply, deferred

    def _match_held(self, sk: Sock, held: list[Slot]) -> list[tuple[Any, Slot]]:
        """The packets now in sock.held against the datagrams held, oldest first; each is
        checked (bytes, fragments, zero-copy or not; a zero-copy one by its first fragment's
        address too, so its ids are known)."""
        got = list(sk.sock.held)
        if len(got) != len(held):
            raise Mismatch(f"sock.held has {len(got)} packet(s), expected {len(held)} "
                           f"({[s.data[:16] for s in held]})")
        free = list(range(len(held)))
        order: list[int] = []
        for i, p in enumerate(got):
            addr = first_fragment_address(p) if p.zcopy else 0
            data = bytes(p)
            for j in free:
                s = held[j]
                if s.zcopy == p.zcopy and s.data == data and \
                        (not addr or not s.bases or s.bases[0] == addr):
                    free.remove(j)
                    order.append(j)
                    break
            else:
                raise Mismatch(f"sock.held[{i}] ({'zero-copy' if p.zcopy else 'a copy'}, "
                               f"{data[:16]!r}) is none of the datagrams held: "
                               f"{[s.data[:16] for s in held]}")
        for i, j in enumerate(order):
            self._check_packet(got[i], held[j], f"sock.held[{i}]")
        if order != sorted(order):
            what = (f"sock.held is not oldest first: it holds the datagrams held in the order "
                    f"{order} ({[held[j].data[:8] for j in order]})")
            if "held-order" not in self.accept:
                raise Mismatch(what)
            self.notes.append("held-order: " + what.split(":")[0])
        return [(got[i], held[j]) for i, j in enumerate(order)]

    def _slots(self, sk: Sock, op: str, a: Answer | None, c: Call, o: Outcome,
               addresses: bool, room: int) -> list[Slot]:
        """The slots one answer fills.  A stream read of more packets than the slots left
        (`room`) puts the rest, merged, into the last slot."""
        assert a is not None
        asked = addresses and not c.from_null
        addr = expected_address(a.src, a.srclen, asked) if not sk.stream else Ellipsis
        if addresses and c.from_null and not sk.stream:
            raise Mismatch("addresses were asked for, but pyxlio passed from=NULL")
        if o.kind == "copy":
            return [Slot(o.data, False, [], None, [o.data], addr)]
        slots = []
        for pid, frags in o.packets:
            parts = [self._bytes_at(a, base, ln) for base, ln in frags]
            slots.append(Slot(b"".join(parts), True, [pid], len(frags), parts, addr,
                              bases=[base for base, _ in frags]))
        if not sk.stream and len(slots) != 1:
            raise AssertionError("test bug: a UDP answer with several well-formed packets")
        if len(slots) > room:
            rest = slots[room - 1:]
            merged = [p for s in rest for p in s.frags]
            slots = [*slots[:room - 1],
                     Slot(b"".join(merged), True, [i for s in rest for i in s.ids],
                          len(merged), merged, Ellipsis,
                          bases=[b for s in rest for b in s.bases])]
        return slots

    @staticmethod
    def _bytes_at(a: Answer, base: int, ln: int) -> bytes:
        if ln == 0:
            return b""
        if base in a.payloads and len(a.payloads[base]) >= ln:
            return a.payloads[base][:ln]
        raise AssertionError(f"test bug: a well-formed answer points at memory the test did "
                             f"not map ({base:#x}, {ln})")

    def _compare(self, sk: Sock, op: str, items: list[Slot], res: Any) -> list[Slot]:
        """Check what pyxlio returned against the expected slots; the model's slots."""
        if op == "zcopy":
            if len(items) != 1:
                raise Mismatch(f"recvfrom_zcopy took {len(items)} packets for one Packet")
            self._check_packet(res, items[0], "the packet")
            return items
        got = len(res)
        if got != len(items):
            raise Mismatch(f"the batch has {got} packets, expected {len(items)}: "
                           f"{[s.data[:16] for s in items]}")
        lengths = list(res.lengths)
        if lengths != [len(s.data) for s in items]:
            raise Mismatch(f"batch.lengths {lengths} != {[len(s.data) for s in items]}")
        for i, s in enumerate(items):
            self._check_packet(res[i], s, f"packet {i}")
        if not sk.stream:
            want = [s.address for s in items]
            got_addr = res.addresses
            for i, (w, g) in enumerate(zip(want, got_addr)):
                if w is not Ellipsis and w != g:
                    raise Mismatch(f"packet {i}: address {g!r}, expected {w!r}")
        return items

    @staticmethod
    def _check_packet(p: Any, s: Slot, what: str) -> None:
        if p.zcopy != s.zcopy:
            raise Mismatch(f"{what}: zcopy is {p.zcopy}, expected {s.zcopy}")
        if p.nbytes != len(s.data):
            raise Mismatch(f"{what}: {p.nbytes} bytes, expected {len(s.data)}")
        if s.nfrags is not None and p.fragment_count != s.nfrags and \
                not (s.nfrags == 0 and p.fragment_count == 1):    # (a 0-byte packet: either)
            raise Mismatch(f"{what}: {p.fragment_count} fragments, expected {s.nfrags}")
        data = bytes(p)
        if data != s.data:
            raise Mismatch(f"{what}: bytes {data[:32]!r}..., expected {s.data[:32]!r}...")

    # -- views -----------------------------------------------------------------------------------
    def _packet(self, h: Hold, i: int) -> Any:
        return h.obj if h.standalone else h.obj[i]

    @staticmethod
    def whole_view_is_export(s: Slot) -> bool:
        """memoryview of a whole datagram is an export; several fragments give a copy."""
        return (s.nfrags if s.nfrags is not None else 1) <= 1

    @checked
    def take_view(self, h: Hold, i: int, kind: str) -> None:
        """kind: 'mv' (memoryview(packet)), 'frags' (packet.fragments), 'views' (batch.views())."""
        self.trace(f"take_view(fd {h.sock.fd}, slot {i}, {kind})")
        s = h.slots[i]
        gone = h.released or (s.freed and s.zcopy)
        if kind == "views":
            if h.standalone:
                raise AssertionError("test bug: views() of a standalone packet")
            any_gone = h.released or any(x.freed and x.zcopy for x in h.slots)
            try:
                mvs = list(h.obj.views())
            except ValueError as e:
                if any_gone:
                    return
                raise Mismatch(f"batch.views() of a live batch failed: {e!r}") from e
            if any_gone:
                raise Mismatch("batch.views() gave views of released packets")
            if len(mvs) != len(h.slots):
                raise Mismatch(f"batch.views() gave {len(mvs)} views for {len(h.slots)}")
            for j, mv in enumerate(mvs):
                sj = h.slots[j]
                self._add_view(h, j, mv, sj.data, self.whole_view_is_export(sj))
            return
        try:
            p = self._packet(h, i)
            if kind == "mv":
                if not self.whole_view_is_export(s):
                    try:
                        memoryview(p)
                    except BufferError:
                        return
                    raise Mismatch("memoryview() of a multi-fragment packet did not refuse")
                mv = memoryview(p)
                if gone:
                    raise Mismatch("memoryview() of a released packet did not raise")
                self._add_view(h, i, mv, s.data, True)
            else:
                frags = p.fragments
                if gone:
                    raise Mismatch("fragments of a released packet did not raise")
                expect = [s.data] if self.whole_view_is_export(s) else s.frags
                if len(frags) != len(expect):
                    raise Mismatch(f"{len(frags)} fragments, expected {len(expect)}")
                for mv, want in zip(frags, expect):
                    self._add_view(h, i, mv, want, True)
        except ValueError as e:
            if not gone:
                raise Mismatch(f"view of a live packet failed: {e!r}") from e

    def _add_view(self, h: Hold, i: int, mv: memoryview, expect: bytes, exported: bool) -> None:
        if bytes(mv) != expect:
            raise Mismatch(f"view of slot {i}: {bytes(mv)[:32]!r}, expected {expect[:32]!r}")
        if not mv.readonly:
            raise Mismatch("a view of provider memory is writable")
        v = View(mv, h, i, expect, exported)
        if exported:
            h.slots[i].views += 1
        self.views.append(v)

    @checked
    def release_view(self, v: View) -> None:
        self.trace(f"release_view(fd {v.hold.sock.fd}, slot {v.slot})")
        if bytes(v.mv) != v.expect:
            raise Mismatch("a view's bytes changed while it was exported")
        v.mv.release()
        if v.exported:
            v.hold.slots[v.slot].views -= 1
        self.views.remove(v)

    # -- releasing -------------------------------------------------------------------------------
    @checked
    def release(self, h: Hold) -> None:
        """batch.release(), or packet.release() of a standalone packet."""
        self.trace(f"release(fd {h.sock.fd}, {'packet' if h.standalone else 'batch'})")
        busy = h.live_views() > 0 and not h.released
        try:
            h.obj.release()
        except BufferError:
            if not busy:
                raise Mismatch("release() refused with no view exported") from None
            return
        if busy:
            raise Mismatch("release() with a view exported did not raise BufferError")
        self._freed(h, [s for s in h.slots if not s.freed and not h.released])
        h.released = True

    @checked
    def release_packet(self, h: Hold, i: int) -> None:
        """batch[i].release()."""
        self.trace(f"release_packet(fd {h.sock.fd}, slot {i})")
        s = h.slots[i]
        try:
            p = h.obj[i]
        except ValueError:
            if not h.released:
                raise Mismatch("batch[i] of a live batch raised ValueError") from None
            return
        if h.released:
            raise Mismatch("batch[i] of a released batch did not raise")
        try:
            p.release()
        except BufferError:
            if not s.views:
                raise Mismatch("packet.release() refused with no view of it") from None
            return
        if s.views:
            raise Mismatch("packet.release() with a view exported did not raise")
        del p
        if s.zcopy and not s.freed:     # a copy has no provider memory: nothing to free
            self._freed(h, [s])
        if h.obj.released:
            if any(x.zcopy and not x.freed for x in h.slots):
                raise Mismatch("releasing one packet freed the whole batch")
            if any(not x.zcopy for x in h.slots):
                if self.strict_copies:
                    raise Mismatch("releasing the last zero-copy packet of a batch released "
                                   "its copied packets too (batch[i] of a copy now raises "
                                   "ValueError: data the program never released is gone)")
                self.notes.append("releasing the last zero-copy packet of a batch released "
                                  "its copied packets too")
            h.released = True

    def _freed(self, h: Hold, slots: list[Slot]) -> None:
        for s in slots:
            s.freed = True
            if s.zcopy:
                self.freed.update(s.ids)
                self.stats["ids freed"] = self.stats.get("ids freed", 0) + len(s.ids)

    @checked
    def drop(self, h: Hold) -> None:
        """Forget the batch/packet without releasing it: collection frees it (ResourceWarning)."""
        self.trace(f"drop(fd {h.sock.fd})")
        if h.live_views():
            raise AssertionError("test bug: drop with views")
        h.obj = None
        gc.collect()            # (a cycle through a traceback may hold it: collect it now)
        if not h.released:
            self._freed(h, [s for s in h.slots if not s.freed])
            h.released = True

    @checked
    def close(self, sk: Sock) -> None:
        self.trace(f"close(fd {sk.fd})")
        busy = sk.live_views() > 0
        try:
            sk.sock.close()
        except BufferError:
            if not busy:
                raise Mismatch("close() refused with no view exported") from None
            return
        if busy:
            raise Mismatch("close() with views exported did not raise BufferError")
        for h in sk.holds:
            if not h.released:
                self._freed(h, [s for s in h.slots if not s.freed])
                h.released = True
        sk.closed = True
        if sk.peer is not None:
            sk.peer.close()
        self.socks.remove(sk)

    # -- checks ----------------------------------------------------------------------------------
    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def check(self) -> None:
        """The model, pyxlio and the fake agree; the fake saw no violation."""
        v = self.fake.violations()
        if len(v) > self.violations_seen:
            new = v[self.violations_seen:]
            self.violations_seen = len(v)
            raise Mismatch("the fake saw: " + "; ".join(new))
        for sk in self.socks:
            path = sk.callback_path()
            if sk.sock.callback_path != path:
                raise Mismatch(f"fd {sk.fd}: callback_path {sk.sock.callback_path!r}, "
                               f"expected {path!r}")
            if self.fake.registered(sk.fd) != sk.registered:
                raise Mismatch(f"fd {sk.fd}: a callback is {'' if sk.registered else 'not '}"
                               f"expected registered with XLIO, and the fake says the "
                               f"opposite")
            if sk.sock.filtered != sk.filtered:
                raise Mismatch(f"fd {sk.fd}: sock.filtered {sk.sock.filtered}, expected "
                               f"{sk.filtered}")
            want = sk.live_slots()
            if sk.sock.outstanding != want:
                raise Mismatch(f"fd {sk.fd}: sock.outstanding {sk.sock.outstanding}, "
                               f"expected {want}")
            ids = sk.live_ids()
            if self.fake.outstanding(sk.fd) != len(ids):
                raise Mismatch(f"fd {sk.fd}: {self.fake.outstanding(sk.fd)} ids out at the "
                               f"provider, expected {len(ids)}")
            for pid in ids:
                st, fd, frees = self.fake.id_state(pid)
                if st != 1 or fd != sk.fd or frees:
                    raise Mismatch(f"id {pid:#x} should be out on fd {sk.fd}: state {st} "
                                   f"fd {fd} frees {frees}")
        for pid in self.freed:
            st, _, frees = self.fake.id_state(pid)
            if st != 2 or frees != 1:
                raise Mismatch(f"id {pid:#x} should be freed once: state {st}, frees {frees}")
        for pid in self.never:
            st, _, frees = self.fake.id_state(pid)
            if frees:
                raise Mismatch(f"id {pid:#x} of a malformed answer was freed")

    def hard_reset(self) -> None:
        """After a failure: drop everything without checking, so the next scenario starts clean
        (the fake records, without aborting, the bad frees pyxlio may make on the way)."""
        os.environ["FAKE_ZC_NOABORT"] = "1"
        try:
            self._drop_all()
        finally:
            del os.environ["FAKE_ZC_NOABORT"]
        self.failed = False

    def _drop_all(self) -> None:
        for v in list(self.views):
            try:
                v.mv.release()
            except Exception:
                pass
        self.views.clear()
        for sk in list(self.socks):
            try:
                sk.sock.close()
            except Exception:
                pass
            if sk.peer is not None:
                sk.peer.close()
        self.socks.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.fake.reset()
        self.answers.clear()
        self.freed.clear()
        self.never.clear()
        self.violations_seen = len(self.fake.violations())

    def finish(self) -> None:
        """Release every view, close every socket, check that nothing leaked."""
        for v in list(self.views):
            self.release_view(v)
        for sk in list(self.socks):
            self.close(sk)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.check()
        leaks = self.fake.reset()
        self.answers.clear()
        seen = self.fake.violations()
        if leaks or len(seen) > self.violations_seen:
            new = seen[self.violations_seen:]
            self.violations_seen = len(seen)
            raise Mismatch("at the end: " + "; ".join(new))
        self.freed.clear()
        self.never.clear()


def undetectable(a: Answer, size: int, filler: int, stream: bool) -> bool:
    """A lie no consumer can see through: a well-formed answer whose fragments are not the
    memory the test mapped, whose packet ids are not the ids it was given (a cut answer whose
    tail reads as a packet with sz_iov 0), or several well-formed packets in one UDP answer.
    Generators skip these."""
    body = a.bytes()[:size]
    view = body + bytes([filler]) * (size - len(body))
    o = parse(view, a.rc, a.flags, a.err, stream, False)
    readings = o.options if o.kind == "either" else [o]
    for r in readings:
        if r.kind != "zc":
            continue
        if not stream and len(r.packets) != 1:
            return True
        for pid, frags in r.packets:
            if pid not in a.ids:
                return True
            for base, ln in frags:
                if ln and not (base in a.payloads and len(a.payloads[base]) >= ln):
                    return True
    return False


def landing_length(h: Harness) -> int:
    """The buffer length pyxlio passes to recvfrom_zcopy (probed with one EAGAIN call)."""
    sk = h.udp()
    start = h.fake.ncalls()
    h.recv_batch(sk, 1, timeout=0)
    calls = h.fake.calls(start)
    h.close(sk)
    if not calls:
        raise Mismatch("recv_batch did not call recvfrom_zcopy")
    return calls[0].length


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default
