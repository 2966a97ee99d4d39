"""The lifetime of zero-copy buffers as a state machine (hypothesis' RuleBasedStateMachine).

Two pyxlio sockets on loopback and a stdlib sender.  Rules send datagrams, receive them
(``recv_batch``, ``recvfrom_zcopy``), take views (``batch.views()``, ``memoryview(pkt)``,
``pkt.fragments``, slices and casts of views), release views, packets and batches (here or on
another thread), drop objects for the garbage collector, close and reopen sockets (pyxlio's
close / detach, ``with``, and the base class's close / detach), run ``gc.collect()``, and set
receive callbacks with a verdict (run by XLIO, or by pyxlio without it).  A model tracks every
datagram, packet, batch and view; after every step:

- every live view reads exactly the bytes sent for its datagram (no freed memory: the emulator
  fills freed buffers with 0xDB; no other datagram's bytes);
- a released packet reads as released (``released`` True, ValueError on data access);
- ``sock.outstanding`` equals the zero-copy packets the model holds unreleased (and, under the
  emulator, the emulator's own count of the socket's outstanding and held packets);
- the emulator reported no contract violation (double free, free on the wrong socket...);
- a batch collected unreleased gave a ResourceWarning;
- every exception was one the contract documents (BufferError for a release or close while a
  view is exported, ValueError for released data, OSError EBADF on a closed socket).

Bounded: 60 examples of 40 steps (``PYXLIO_STRESS=1``: 1000 of 100).  It runs in every pass:
zero-copy under the emulator (strict), copies (``zcopy`` False, nothing outstanding) without XLIO.
"""

from __future__ import annotations

import errno
import gc
import os
import re
import socket as stdsocket
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import pyxlio
from conftest import offloads_loopback
from pyxlio import Verdict

pytestmark = pytest.mark.stress

STRESS = os.environ.get("PYXLIO_STRESS", "") not in ("", "0")
# The emu-os pass waits through the emulator's 20 ms FIONREAD readability slices (a real
# host's quirk): fewer examples there keep it to about a minute; the kernel pass runs the
# same copy path with the full count.
_EMU_OS = os.environ.get("PYXLIO_TEST_PROVIDER") == "emu-os"
# Shrinking a failure of this machine can take many minutes: off unless PYXLIO_SHRINK=1 (the
# failing example is printed either way, and its seed replays it).
SHRINK = os.environ.get("PYXLIO_SHRINK", "") not in ("", "0")
SETTINGS = settings(
    max_examples=1000 if STRESS else (15 if _EMU_OS else 60),
    phases=list(Phase) if SHRINK else [p for p in Phase if p is not Phase.shrink],
    stateful_step_count=100 if STRESS else 40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

FRAG = 1472                      # the emulator's fragment size
SIZES = [14, 64, 300, 1471, FRAG, FRAG + 1, 3000, 9000]
MAX_PENDING = 48                 # datagrams in flight per socket: far below SO_RCVBUF
CANARY = b"\xdb" * 8             # what the emulator writes over a freed buffer
# Payload bytes: a pattern that never holds 0xDB, so no payload looks like the canary.
PATTERN = bytes(0x5A if b == 0xDB else b for b in ((i * 13 + 7) % 251 for i in range(10_000)))
STATS_LINE = re.compile(r"pyxlio-emu: fd=\d+ proto=")
VERDICTS = {"recv": Verdict.RECV, "drop": Verdict.DROP, "hold": Verdict.HOLD}


def make_payload(seq: int, slot: int, size: int) -> bytes:
    """seq, socket slot and size in a header, a pattern body, a CRC-32 trailer."""
    head = struct.pack("!IBH", seq, slot, size)
    body = PATTERN[seq % 251: seq % 251 + size - 11]
    return head + body + struct.pack("!I", zlib.crc32(head + body))


def seq_of(data: bytes) -> int:
    return int(struct.unpack("!I", data[:4])[0])


@dataclass
class Dgram:
    seq: int
    data: bytes
    zcopy: bool = False


@dataclass(eq=False)
class Owner:
    """What owns buffers: a batch, or the hidden batch of one standalone or held packet."""
    sock: SockModel
    kind: str                                   # "batch", "single" or "held"
    dgrams: list[Dgram]
    batch: Any = None                           # the PacketBatch (kind "batch")
    packets: dict[int, Any] = field(default_factory=dict)   # Packet objects the model keeps
    released: set[int] = field(default_factory=set)          # datagrams released
    orphan: bool = False                        # the model dropped its references

    def live_zcopy(self) -> int:
        return sum(1 for i, d in enumerate(self.dgrams) if d.zcopy and i not in self.released)

    def unreleased(self) -> int:
        return sum(1 for i in range(len(self.dgrams)) if i not in self.released)


@dataclass(eq=False)
class View:
    mv: memoryview
    owner: Owner
    index: int
    expected: bytes
    exporting: bool                             # a view of pyxlio's buffer, not of a copy


@dataclass(eq=False)
class SockModel:
    slot: int
    sock: Any
    addr: Any
    open: bool = True
    pending: list[Dgram] = field(default_factory=list)   # sent, not yet received/dropped/held
    cb_mode: str | None = None
    cb_log: list[tuple[int, Verdict]] = field(default_factory=list)


def in_thread(fn: Callable[[], object]) -> object:
    """Run fn on another thread; its result, or its exception raised here."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the other thread hung"
    if "error" in box:
        raise box["error"]
    return box.get("result")


class StderrTap:
    """fd 2 into a file, so the emulator's diagnostics can be read after every step."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        self.pos = 0

    def read(self) -> str:
        self.file.seek(self.pos)
        raw = self.file.read()
        self.pos += len(raw)
        return raw.decode("utf-8", "replace")

    def close(self) -> str:
        rest = self.read()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        everything = self.file.read()
        self.file.close()
        os.write(2, everything)
        return rest


class Lifecycle(RuleBasedStateMachine):
    CLOSERS: tuple[str, ...] = ("close", "with", "detach")

    def __init__(self) -> None:
        super().__init__()
        from pyxlio.socket import socket

        self.socket_class = socket
        api = pyxlio.get_api()
        self.xlio = api is not None
        self.emulator = api is not None and api.provider == "emulator"
        # Zero-copy where this pass's XLIO offloads loopback (the emu pass); the emu-os pass
        # and a real libxlio serve it through the kernel: copies.
        self.offloaded = offloads_loopback(os.environ.get("PYXLIO_TEST_PROVIDER", ""))
        self.tx = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        self.tx.bind(("127.0.0.1", 0))
        self.seq = 0
        self.sent: dict[int, bytes] = {}
        self.owners: list[Owner] = []
        self.views: list[View] = []
        self.errors: list[str] = []
        self.warn_low = 0            # ResourceWarnings the model requires ...
        self.warn_high = 0           # ... and allows
        self._warnings = warnings.catch_warnings(record=True)
        self.caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        self.tap = StderrTap() if self.emulator else None
        self.socks = [self.open_socket(0), self.open_socket(1)]

    # -- helpers ---------------------------------------------------------------------------
    def open_socket(self, slot: int) -> SockModel:
        sock = self.socket_class(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.set_receive_buffer(4 << 20)
        return SockModel(slot, sock, sock.getsockname())

    def live_owners(self) -> list[Owner]:
        return [o for o in self.owners if not o.orphan]

    def pick_owner(self, i: int, kinds: tuple[str, ...] = ("batch", "single", "held")) -> Owner:
        owners = [o for o in self.live_owners() if o.kind in kinds]
        return owners[i % len(owners)]

    def exported(self, owner: Owner, index: int | None = None) -> bool:
        return any(v.exporting and v.owner is owner and (index is None or v.index == index)
                   for v in self.views)

    def socket_exported(self, s: SockModel) -> bool:
        return any(v.exporting and v.owner.sock is s for v in self.views)

    def expect_zcopy(self) -> bool:
        return self.offloaded

    def packet(self, owner: Owner, index: int) -> Any:
        """The model's Packet object for a datagram (made from the batch when needed)."""
        if index not in owner.packets:
            assert owner.kind == "batch"
            owner.packets[index] = owner.batch[index]
        return owner.packets[index]

    def mark_released(self, owner: Owner, indexes: list[int] | None = None) -> None:
        owner.released.update(range(len(owner.dgrams)) if indexes is None else indexes)

    def collect_orphans(self) -> None:
        """Orphans whose last exported view went are freed now (by reference counting)."""
        for o in self.owners:
            if o.orphan and o.unreleased() and not self.exported(o):
                if o.live_zcopy():
                    self.warn_low += 1
                self.warn_high += 1
                self.mark_released(o)

    def after_receive(self, s: SockModel) -> None:
        """Apply the callback's verdicts to the model; take the packets it held."""
        log, s.cb_log[:] = list(s.cb_log), []
        expected_held: list[Dgram] = []
        for seq, verdict in log:
            match = [d for d in s.pending if d.seq == seq]
            assert match, f"the callback saw datagram {seq}, not pending on this socket"
            if verdict in (Verdict.DROP, Verdict.HOLD):
                s.pending.remove(match[0])
            if verdict == Verdict.HOLD:
                expected_held.append(match[0])
        held = []
        while s.sock.held:
            held.append(s.sock.held.popleft())
        assert [p.tobytes() for p in held] == [d.data for d in expected_held]
        for p, d in zip(held, expected_held):
            d.zcopy = p.zcopy
            assert d.zcopy is self.expect_zcopy()
            self.owners.append(Owner(s, "held", [d], packets={0: p}))

    def make_callback(self, s: SockModel, mode: str) -> Callable[[memoryview, object], Verdict]:
        def callback(view: memoryview, info: object) -> Verdict:
            try:
                data = bytes(view)
                seq = seq_of(data)
                if self.sent.get(seq) != data:
                    self.errors.append(f"the callback read {data[:16]!r}..., not datagram {seq}")
                if any(p.tobytes() == data for p in s.sock.held):
                    self.errors.append(f"datagram {seq} is in sock.held while its own callback "
                                       "runs")
                verdict = (VERDICTS[mode] if mode in VERDICTS
                           else (Verdict.DROP, Verdict.RECV, Verdict.HOLD)[seq % 3])
                s.cb_log.append((seq, verdict))
                return verdict
            except Exception as exc:
                self.errors.append(f"the callback failed: {exc!r}")
                return Verdict.RECV
        return callback

    def expect_closed(self, s: SockModel, call: Callable[[], object]) -> None:
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF

    # -- sending ---------------------------------------------------------------------------
    @rule(slot=st.integers(0, 1), sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=8))
    def send(self, slot: int, sizes: list[int]) -> None:
        s = self.socks[slot]
        if not s.open:
            return
        for size in sizes[:MAX_PENDING - len(s.pending)]:
            data = make_payload(self.seq, slot, size)
            self.sent[self.seq] = data
            self.tx.sendto(data, s.addr)
            s.pending.append(Dgram(self.seq, data))
            self.seq += 1

    # -- receiving -------------------------------------------------------------------------
    @rule(slot=st.integers(0, 1), k=st.integers(1, 16), addresses=st.booleans())
    def recv_batch(self, slot: int, k: int, addresses: bool) -> None:
        s = self.socks[slot]
        if not s.open:
            self.expect_closed(s, lambda: s.sock.recv_batch(k, timeout=0))
            return
        sure = bool(s.pending) and s.cb_mode is None
        before = len(s.pending)
        batch = s.sock.recv_batch(k, timeout=2.0 if sure else 0, addresses=addresses)
        self.after_receive(s)
        n = len(batch)
        assert n <= k
        if s.cb_mode is None and not s.cb_log:
            assert n == min(k, before), f"recv_batch({k}) gave {n} of {before} ready datagrams"
        got = [batch[i].tobytes() for i in range(n)]
        want = s.pending[:n]
        assert got == [d.data for d in want], "datagrams lost, reordered or corrupted"
        del s.pending[:n]
        if n == 0:
            batch.release()
            assert batch.released
            return
        assert list(batch.lengths) == [len(d.data) for d in want]
        if addresses:
            assert batch.addresses == [self.tx.getsockname()] * n
            assert list(batch.ports) == [self.tx.getsockname()[1]] * n
            assert list(batch.hosts) == [0x7F000001] * n
        else:
            assert batch.addresses == [None] * n and list(batch.ports) == [0] * n
        for i, d in enumerate(want):
            d.zcopy = batch[i].zcopy
            assert d.zcopy is self.expect_zcopy()
        assert batch.zcopy is self.expect_zcopy()
        self.owners.append(Owner(s, "batch", want, batch=batch))

    @rule(k=st.integers(1, 16), addresses=st.booleans())
    def poll_sockets(self, k: int, addresses: bool) -> None:
        """The open sockets through a Poller (a fresh one: sockets come and go): its batches
        are the sockets' own and follow every rule the machine checks on recv_batch's."""
        live = [s for s in self.socks if s.open]
        api = pyxlio.get_api()
        if not live or (api is not None and api.started is False):
            return      # a libxlio that did not start refuses every epoll_ctl (conftest)
        sure = any(s.pending and s.cb_mode is None for s in live)
        with pyxlio.Poller() as poller:
            for s in live:
                poller.register(s.sock)
            pairs = poller.poll(k, timeout=2.0 if sure else 0, addresses=addresses)
        for s in live:
            self.after_receive(s)
        assert sum(len(b) for _, b in pairs) <= k
        assert not sure or pairs, "poll() found nothing though a datagram was sent"
        for sock, batch in pairs:
            (s,) = [m for m in live if m.sock is sock]
            n = len(batch)
            assert n > 0, "poll() returned an empty batch for a datagram socket"
            want = s.pending[:n]
            assert [batch[i].tobytes() for i in range(n)] == [d.data for d in want], (
                "datagrams lost, reordered or corrupted")
            del s.pending[:n]
            if addresses:
                assert batch.addresses == [self.tx.getsockname()] * n
            for i, d in enumerate(want):
                d.zcopy = batch[i].zcopy
                assert d.zcopy is self.expect_zcopy()
            self.owners.append(Owner(s, "batch", want, batch=batch))

    @rule(slot=st.integers(0, 1))
    def recv_single(self, slot: int) -> None:
        s = self.socks[slot]
        if not s.open:
            self.expect_closed(s, s.sock.recvfrom_zcopy)
            return
        sure = bool(s.pending) and s.cb_mode is None
        s.sock.settimeout(2.0 if sure else 0)
        try:
            pkt = s.sock.recvfrom_zcopy()
        except BlockingIOError:
            self.after_receive(s)
            assert not sure, "recvfrom_zcopy found nothing though a datagram was sent"
            assert not s.pending or s.cb_mode is not None
            return
        self.after_receive(s)
        assert s.pending, f"recvfrom_zcopy returned {pkt!r} though nothing was pending"
        d = s.pending.pop(0)
        assert pkt.tobytes() == d.data
        assert pkt.address == self.tx.getsockname()
        d.zcopy = pkt.zcopy
        assert d.zcopy is self.expect_zcopy()
        self.owners.append(Owner(s, "single", [d], packets={0: pkt}))

    # -- views -----------------------------------------------------------------------------
    @precondition(lambda self: any(o.kind == "batch" for o in self.live_owners()))
    @rule(i=st.integers(0, 63))
    def take_batch_views(self, i: int) -> None:
        o = self.pick_owner(i, ("batch",))
        if len(o.released) == len(o.dgrams):
            with pytest.raises(ValueError):
                list(o.batch.views())
            return
        it = o.batch.views()
        for index, d in enumerate(o.dgrams):
            if index in o.released:
                with pytest.raises(ValueError):
                    next(it)
                return
            mv = next(it)
            exporting = isinstance(mv.obj, (pyxlio.Packet, pyxlio.PacketBatch))
            assert exporting or len(d.data) > FRAG, "a single-fragment view is not zero-copy"
            self.views.append(View(mv, o, index, d.data, exporting))
        with pytest.raises(StopIteration):
            next(it)

    @precondition(lambda self: self.live_owners())
    @rule(i=st.integers(0, 63), j=st.integers(0, 63), fragments=st.booleans())
    def take_packet_view(self, i: int, j: int, fragments: bool) -> None:
        o = self.pick_owner(i)
        index = j % len(o.dgrams)
        d = o.dgrams[index]
        if o.kind == "batch" and index in o.released and index not in o.packets:
            with pytest.raises(ValueError):                 # a new handle reads released too
                o.batch[index].tobytes()
            return
        pkt = self.packet(o, index)
        if index in o.released:
            with pytest.raises(ValueError):
                pkt.fragments if fragments else memoryview(pkt)
            return
        if fragments:
            frags = pkt.fragments
            assert len(frags) == pkt.fragment_count
            offset = 0
            for f in frags:
                self.views.append(View(f, o, index, d.data[offset:offset + len(f)], True))
                offset += len(f)
            assert offset == len(d.data)
        elif pkt.fragment_count > 1:
            with pytest.raises(BufferError):
                memoryview(pkt)
        else:
            self.views.append(View(memoryview(pkt), o, index, d.data, True))

    @precondition(lambda self: self.views)
    @rule(i=st.integers(0, 255), a=st.integers(-20, 20), b=st.integers(-20, 20),
          step=st.sampled_from([1, 1, 2, -1]), how=st.sampled_from(["slice", "view", "cast"]))
    def derive_view(self, i: int, a: int, b: int, step: int, how: str) -> None:
        v = self.views[i % len(self.views)]
        if how == "slice":
            mv, expected = v.mv[a:b:step], v.expected[a:b:step]
        elif how == "view":
            mv, expected = memoryview(v.mv), v.expected
        elif v.mv.c_contiguous:
            mv, expected = v.mv.cast("B"), v.expected
        else:
            return                          # memoryview casts need a contiguous view
        self.views.append(View(mv, v.owner, v.index, expected, v.exporting))

    @precondition(lambda self: self.views)
    @rule(i=st.integers(0, 255), how=st.sampled_from(["release", "drop", "thread", "with"]))
    def release_view(self, i: int, how: str) -> None:
        v = self.views.pop(i % len(self.views))
        if how == "release":
            v.mv.release()
        elif how == "thread":
            in_thread(v.mv.release)
        elif how == "with":
            with v.mv as inner:
                assert bytes(inner) == v.expected
        del v                           # "drop": the last reference goes
        self.collect_orphans()

    # -- releasing -------------------------------------------------------------------------
    @precondition(lambda self: self.live_owners())
    @rule(i=st.integers(0, 63), j=st.integers(0, 63), threaded=st.booleans())
    def release_packet(self, i: int, j: int, threaded: bool) -> None:
        o = self.pick_owner(i)
        index = j % len(o.dgrams)
        if o.kind == "batch" and index in o.released and index not in o.packets:
            return                                          # nothing left to release
        pkt = self.packet(o, index)
        if index not in o.released and self.exported(o, index):
            with pytest.raises(BufferError):
                in_thread(pkt.release) if threaded else pkt.release()
            assert not pkt.released
            return
        in_thread(pkt.release) if threaded else pkt.release()
        self.mark_released(o, [index])
        assert pkt.released

    @precondition(lambda self: any(o.kind == "batch" for o in self.live_owners()))
    @rule(i=st.integers(0, 63), how=st.sampled_from(["release", "thread", "with"]))
    def release_batch(self, i: int, how: str) -> None:
        o = self.pick_owner(i, ("batch",))
        batch = o.batch

        def release() -> None:
            if how == "with":
                with batch:
                    pass
            else:
                batch.release()

        if len(o.released) < len(o.dgrams) and self.exported(o):
            with pytest.raises(BufferError):
                in_thread(release) if how == "thread" else release()
            assert not batch.released
            return
        in_thread(release) if how == "thread" else release()
        self.mark_released(o)
        assert batch.released

    @precondition(lambda self: self.live_owners())
    @rule(i=st.integers(0, 63))
    def drop_references(self, i: int) -> None:
        """Forget a batch or packet unreleased: the collector frees it (ResourceWarning) once
        no exported view keeps it alive, never before."""
        o = self.pick_owner(i)
        o.orphan = True
        o.batch = None
        o.packets.clear()
        gc.collect()
        self.collect_orphans()

    @rule(generation=st.sampled_from([0, 0, 0, 1, 2]))
    def collect_garbage(self, generation: int) -> None:
        gc.collect(generation)              # a full collection is slow in a big test process

    # -- callbacks -------------------------------------------------------------------------
    @rule(slot=st.integers(0, 1), mode=st.sampled_from([None, "recv", "drop", "hold", "mix"]))
    def set_callback(self, slot: int, mode: str | None) -> None:
        s = self.socks[slot]
        fn = None if mode is None else self.make_callback(s, mode)
        if not s.open:
            self.expect_closed(s, lambda: s.sock.set_recv_callback(fn))
            return
        s.sock.set_recv_callback(fn)          # XLIO runs it, or pyxlio (software callbacks)
        s.cb_mode = mode

    # -- closing ---------------------------------------------------------------------------
    @rule(slot=st.integers(0, 1), how=st.sampled_from(["close", "with", "detach",
                                                        "base_close", "base_detach"]))
    def close_socket(self, slot: int, how: str) -> None:
        if how not in self.CLOSERS:
            how = "close"
        s = self.socks[slot]
        sock = s.sock

        def close() -> None:
            if how == "close":
                sock.close()
            elif how == "with":
                with sock:
                    pass
            elif how == "detach":
                os.close(sock.detach())
            elif how == "base_close":
                stdsocket.socket.close(sock)
            else:
                os.close(stdsocket.socket.detach(sock))

        if not s.open:
            sock.close()                    # closing twice is harmless
            return
        if self.socket_exported(s):
            with pytest.raises(BufferError):
                close()
            assert sock.fileno() >= 0, "a refused close() must leave the socket open"
            return
        close()
        assert sock.fileno() == -1
        s.open = False
        s.pending.clear()
        s.cb_mode = None
        for o in self.owners:
            if o.sock is s:
                self.mark_released(o)
        assert sock.outstanding == 0

    @precondition(lambda self: not all(s.open for s in self.socks))
    @rule(slot=st.integers(0, 1))
    def reopen(self, slot: int) -> None:
        if not self.socks[slot].open:
            self.socks[slot] = self.open_socket(slot)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def callbacks_saw_what_was_sent(self) -> None:
        assert not self.errors, self.errors

    @invariant()
    def views_read_their_datagram(self) -> None:
        for v in self.views:
            data = bytes(v.mv)
            assert CANARY not in data or CANARY in v.expected, "a view reads freed memory"
            assert data == v.expected, (
                f"a view of datagram {seq_of(v.owner.dgrams[v.index].data)} reads "
                f"{data[:16]!r}...")

    @invariant()
    def packets_read_their_datagram_or_released(self) -> None:
        for o in self.live_owners():
            for index, pkt in o.packets.items():
                if index in o.released:
                    assert pkt.released
                    with pytest.raises(ValueError):
                        pkt.tobytes()
                else:
                    assert not pkt.released
                    assert pkt.tobytes() == o.dgrams[index].data

    @invariant()
    def outstanding_is_exact(self) -> None:
        for s in self.socks:
            want = sum(o.live_zcopy() for o in self.owners if o.sock is s) if s.open else 0
            assert s.sock.outstanding == want, (s.slot, s.sock.outstanding, want)

    @invariant()
    def provider_agrees(self) -> None:
        if self.tap is None:
            return
        text = self.tap.read()
        complaints = [line for line in text.splitlines() if line.startswith("pyxlio-emu: ")
                      and not STATS_LINE.match(line)]
        assert not complaints, complaints
        for s in self.socks:
            if not s.open:
                continue
            s.sock.stats()
            line = next((x for x in self.tap.read().splitlines()
                         if f"fd={s.sock.fileno()} " in x), "")
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            assert fields, f"no statistics line for fd {s.sock.fileno()}"
            theirs = int(fields["outstanding"]) + int(fields["held"])
            assert theirs == s.sock.outstanding, (line, s.sock.outstanding)

    @invariant()
    def collected_batches_warned(self) -> None:
        found = sum(1 for w in self.caught if issubclass(w.category, ResourceWarning)
                    and "unreleased" in str(w.message))
        assert self.warn_low <= found <= self.warn_high, (found, self.warn_low, self.warn_high)

    # -- the end ---------------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            for v in self.views:
                v.mv.release()
            self.views.clear()
            for s in self.socks:
                if s.open:
                    s.sock.set_recv_callback(None)
                    while s.sock.held:
                        s.sock.held.popleft().release()
                    for o in self.owners:
                        if o.sock is s and o.batch is not None:
                            o.batch.release()
                        if o.sock is s:
                            for p in o.packets.values():
                                p.release()
                    assert s.sock.outstanding == 0, "packets left after releasing everything"
                    s.sock.close()
        finally:
            self.tx.close()
            self.owners.clear()
            gc.collect()
            self._warnings.__exit__(None, None, None)
            if self.tap is not None:
                rest = self.tap.close()
                complaints = [x for x in rest.splitlines() if x.startswith("pyxlio-emu: ")]
                assert not complaints, complaints


class LifecycleBaseClassClose(Lifecycle):
    """The same, closing through socket.socket.close / detach as well (the base class)."""

    CLOSERS = ("close", "with", "detach", "base_close", "base_detach")


def test_lifecycle(provider: str) -> None:
    run_state_machine_as_test(Lifecycle, settings=SETTINGS)


def test_lifecycle_with_base_class_close(provider: str) -> None:
    run_state_machine_as_test(LifecycleBaseClassClose, settings=SETTINGS)
