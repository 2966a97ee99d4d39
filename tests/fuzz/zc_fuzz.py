"""Hypothesis fuzzing of pyxlio's zero-copy receive against a scripted, lying provider.

Run in a process with tests/c/fake_zc.c preloaded (LD_PRELOAD).  A state machine opens UDP
and TCP sockets, some with a C filter and/or a Python receive callback (whose verdicts are
DROP, RECV, HOLD or an exception), registered with XLIO or refused by it (the socket is then
in pyxlio's own callback mode, as a stream socket always is); queues answers (well-formed
ones generated from packets/fragments/lengths, malformed ones made from them by one or two
mutations, copies, errors with every errno, and packets handed to XLIO's callback); and mixes
receive calls (recv_batch with various max_packets and timeouts, recvfrom_zcopy with and
without force) with views taken and released, packet and batch releases, dropped batches,
callbacks and filters set and cleared, and closes.  Every step is checked against the
contract in zcfake.py; the fake aborts on a bogus free, and its guard pages turn a read out
of bounds into a crash.

Environment: PYXLIO_FUZZ_EXAMPLES (default 250), PYXLIO_FUZZ_STEPS (default 30),
PYXLIO_FUZZ_KINDS (default good,malformed,copy,error: the kinds of answers drawn),
PYXLIO_FUZZ_CALLBACKS=0 to leave receive callbacks and C filters out,
PYXLIO_FUZZ_RANDOM=1 for a fresh random run (default: derandomized, the same examples every
run), PYXLIO_FUZZ_TRACE=FILE to keep the steps of the current example (read it after a crash),
PYXLIO_FUZZ_SHRINK=1 to let hypothesis shrink a failing example (it may take minutes; by
default the failing example is reported as found: its steps are the trace's last example),
PYXLIO_FUZZ_ACCEPT=name,... to accept known mismatches (zcfake.KNOWN) and look past them.
Exit status 0: no mismatch; 1: a mismatch (hypothesis prints the steps).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import traceback
import warnings
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from zcfake import (
    DROP,
    ERRNOS,
    HOLD,
    MSG_ZCOPY,
    RAISE,
    RECV,
    U64_MASK,
    Answer,
    Harness,
    Hold,
    Sock,
    env_int,
    landing_length,
    sockaddr_v4,
    sockaddr_v6,
    undetectable,
)

SOURCES = [(sockaddr_v4("127.0.0.2", 5001), 16), (sockaddr_v4("10.0.0.1", 65535), 16),
           (sockaddr_v6("2001:db8::5", 7000, 3, 0), 28), (b"", 0),
           (sockaddr_v4("192.168.1.1", 80), 4096), (b"\x02", 1)]
#: The kinds of answers drawn, as weights (PYXLIO_FUZZ_KINDS=good,copy,error narrows them).
KINDS = [k for k in ["good", "good", "good", "malformed", "malformed", "copy", "error"]
         if k in os.environ.get("PYXLIO_FUZZ_KINDS", "good,malformed,copy,error").split(",")]
#: Sockets with a receive callback and/or C filter (PYXLIO_FUZZ_CALLBACKS=0: none).
CALLBACKS = os.environ.get("PYXLIO_FUZZ_CALLBACKS", "1") != "0"
FRAG_LENS = st.one_of(st.integers(0, 64), st.sampled_from([0, 1, 1472, 4095, 4096, 9000]))


class Trace:
    """The steps of the current example in FILE; those of the first example that failed are
    also kept in FILE.first (hypothesis replays a failure, and the replay may differ)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.file: Any = None
        self.lines: list[str] = []
        self.kept = False

    def start(self) -> None:
        self.lines = []
        if self.path:
            if self.file:
                self.file.close()
            self.file = open(self.path, "w")

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()
        if self.path and line.startswith("MISMATCH") and not self.kept:
            self.kept = True
            with open(self.path + ".first", "w") as f:
                f.write("\n".join(self.lines) + "\n")


TRACE = Trace(os.environ.get("PYXLIO_FUZZ_TRACE"))
HARNESS: Harness | None = None
LANDING = 0


def harness() -> Harness:
    global HARNESS, LANDING
    if HARNESS is None:
        HARNESS = Harness(trace=TRACE)
        LANDING = landing_length(HARNESS)
        HARNESS.finish()
    return HARNESS


class ZcMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        TRACE.start()
        self.h = harness()

    @initialize(data=st.data(), udp=st.integers(1, 2), tcp=st.booleans(),
                filler=st.sampled_from([0xA5, 0]))
    def open_sockets(self, data: st.DataObject, udp: int, tcp: bool, filler: int) -> None:
        self.h.fake.set_filler(filler)
        TRACE(f"filler {filler:#x}")
        for _ in range(udp):
            self.callbacks(data, self.h.udp())
        if tcp:
            self.callbacks(data, self.h.tcp())

    def callbacks(self, data: st.DataObject, sk: Sock) -> None:
        """Maybe a C filter and/or a Python callback, maybe refused by XLIO."""
        if not CALLBACKS:
            return
        self.h.set_refuse(data.draw(st.booleans(), "refuse"))
        if data.draw(st.booleans(), "filter"):
            self.set_filter(data, sk)
        if data.draw(st.booleans(), "callback"):
            self.h.set_callback(sk, self.verdicts(data))
        self.h.set_refuse(False)

    def set_filter(self, data: st.DataObject, sk: Sock) -> None:
        self.h.set_filter(sk, data.draw(st.sampled_from([0, 1, 100]), "offset"),
                          data.draw(st.sampled_from([b"zz", b"p", b"\x00"]), "pattern"),
                          data.draw(st.booleans(), "keep"))

    @staticmethod
    def verdicts(data: st.DataObject) -> list[int]:
        return data.draw(st.lists(st.sampled_from([DROP, RECV, HOLD, HOLD, RAISE]), max_size=8),
                         "verdicts")

    # -- answers -----------------------------------------------------------------------------
    def good_answer(self, data: st.DataObject, sk: Sock) -> Answer:
        if sk.stream:
            shape = data.draw(st.lists(st.lists(FRAG_LENS.filter(bool), min_size=1, max_size=3),
                                       min_size=1, max_size=3), "shape")
            src = (b"", 0)
        else:
            shape = [data.draw(st.lists(FRAG_LENS, min_size=1, max_size=4), "fragments")]
            src = data.draw(st.sampled_from(SOURCES), "source")
        return self.h.build.generated(shape, data.draw(st.integers(0, 255), "seed"), src)

    def mutate(self, data: st.DataObject, a: Answer) -> Answer:
        b = self.h.build
        j = data.draw(st.integers(0, len(a.shape) - 1), "packet")
        k = data.draw(st.integers(0, len(a.shape[j]) - 1), "iov")
        n, sz, ln = len(a.shape), len(a.shape[j]), a.shape[j][k]
        any64 = st.integers(0, U64_MASK)
        what = data.draw(st.sampled_from(
            ["n", "sz", "len", "wrap", "base", "id", "rc", "flags", "cut"]), "mutation")
        iovs = [(jj, kk) for jj, frags in enumerate(a.shape) for kk in range(len(frags))]
        if what == "wrap" and len(iovs) >= 2:
            # two lengths raised by x and 2**64 - x: a 64-bit sum still equals rc
            x = data.draw(st.sampled_from([1 << 63, 1 << 32, 1]), "wrap")
            (j1, k1), (j2, k2) = data.draw(st.permutations(iovs), "pair")[:2]
            a = b.iov_len(a, j1, k1, a.shape[j1][k1] + x)
            return b.iov_len(a, j2, k2, a.shape[j2][k2] + (1 << 64) - x)
        if what == "n":
            v = data.draw(st.one_of(st.sampled_from(
                [n + 1, n + 2, 0, 1 << 32, 1 << 63, U64_MASK, LANDING // 32 + 1]), any64), "n")
            return b.n_packets(a, v)
        if what == "sz":
            v = data.draw(st.one_of(st.sampled_from(
                [sz + 1, sz - 1, 0, LANDING // 16, 1 << 60, (1 << 60) - 1, 1 << 63]), any64),
                "sz")
            return b.sz_iov(a, j, v)
        if what == "len":
            v = data.draw(st.one_of(st.sampled_from(
                [ln + 1, max(ln - 1, 0), ln + 4096, 0, (1 << 32) + ln, 1 << 63, U64_MASK]),
                any64), "len")
            return b.iov_len(a, j, k, v)
        if what == "base":
            return b.iov_base(a, j, k, 0)
        if what == "id":
            return b.packet_id(a, j, 0)
        if what == "rc":
            v = data.draw(st.sampled_from(
                [a.rc + 1, a.rc - 1, 0, LANDING + 1, (1 << 31) - 1]), "rc")
            return b.rc(a, min(max(v, 0), (1 << 31) - 1))
        if what == "flags":
            return b.flags(a, data.draw(st.sampled_from([0, MSG_ZCOPY | 0x40]), "flags"))
        cut = data.draw(st.integers(0, max(len(a.bytes()) - 1, 0)), "cut")
        return b.truncate(a, cut)

    def cb_answer(self, data: st.DataObject) -> Answer:
        """A packet for the receive callback: well-formed, or with one detectable defect."""
        b = self.h.build
        frags = data.draw(st.lists(FRAG_LENS, min_size=1, max_size=3), "cb fragments")
        body = bytearray((i * 7) & 0xFF for i in range(sum(frags)))
        if data.draw(st.booleans(), "match") and len(body) >= 102:
            body[100:102] = b"zz"
        pieces, at = [], 0
        for n in frags:
            pieces.append(bytes(body[at:at + n]))
            at += n
        a = b.callback(pieces)
        if not data.draw(st.booleans(), "cb malformed"):
            return a
        k = data.draw(st.integers(0, len(frags) - 1), "cb iov")
        what = data.draw(st.sampled_from(["len", "len64k", "base", "sz", "iovs", "info",
                                          "pid"]), "cb defect")
        if what == "len":
            return b.cb_set(a, "len", data.draw(st.sampled_from([1 << 40, U64_MASK]), "l"), k)
        if what == "len64k":
            return b.cb_set(a, "len", 65536 + frags[k], k)
        if what == "base":
            return b.cb_set(b.cb_set(a, "len", frags[k] or 1, k), "base", 0, k)
        if what == "sz":
            return b.cb_set(a, "sz", data.draw(st.sampled_from([1 << 40, 1 << 63]), "s"))
        if what == "pid":
            return b.cb_set(a, "pid", 0)
        return b.cb_set(a, what, None)

    def answer(self, data: st.DataObject, sk: Sock) -> Answer:
        kind = data.draw(st.sampled_from(KINDS), "kind")
        if sk.registered:           # XLIO runs the callback: packets for it
            kind = data.draw(st.sampled_from([kind, "callback"]), "to the callback")
        if kind == "callback":
            return self.cb_answer(data)
        b = self.h.build
        if kind == "copy":
            payload = data.draw(st.binary(max_size=200), "copy")
            src = (b"", 0) if sk.stream else data.draw(st.sampled_from(SOURCES), "source")
            return b.copy(payload, src)
        if kind == "error":
            err = data.draw(st.sampled_from(ERRNOS), "errno")
            rc = data.draw(st.sampled_from([-1] * 8 + [-2, -(1 << 31)]), "rc")
            return b.error(err, data.draw(st.sampled_from([0, MSG_ZCOPY]), "flags"), rc)
        good = self.good_answer(data, sk)
        if kind == "good":
            return good
        bad = good
        for _ in range(data.draw(st.integers(1, 2), "mutations")):
            bad = self.mutate(data, bad)
        # A lie nobody can see through (e.g. a longer iov_len with rc raised to match) is
        # not a malformation: send the good answer instead.
        return good if undetectable(bad, LANDING, self.h.fake.filler, sk.stream) else bad

    def pick_sock(self, data: st.DataObject) -> Sock:
        return data.draw(st.sampled_from(self.h.socks), "socket")

    def has_socks(self) -> bool:
        return bool(self.h.socks)

    def live_holds(self) -> list[Hold]:
        return [x for sk in self.h.socks for x in sk.holds if x.obj is not None]

    # -- rules ------------------------------------------------------------------------------
    def push_some(self, data: st.DataObject, sk: Sock, most: int) -> None:
        for _ in range(data.draw(st.integers(0, most), "answers")):
            self.h.push(sk, self.answer(data, sk))

    @precondition(has_socks)
    @rule(data=st.data())
    def push(self, data: st.DataObject) -> None:
        """Queue answers for a socket (the receive rules queue some too)."""
        sk = self.pick_sock(data)
        self.push_some(data, sk, 3)

    @precondition(has_socks)
    @rule(data=st.data(), max_packets=st.sampled_from([1, 2, 3, 8, 64]),
          timeout=st.sampled_from([0.0] * 9 + [0.002]), addresses=st.booleans())
    def recv_batch(self, data: st.DataObject, max_packets: int, timeout: float,
                   addresses: bool) -> None:
        sk = self.pick_sock(data)
        self.push_some(data, sk, 4)
        self.h.recv_batch(sk, max_packets, timeout, addresses)

    @precondition(has_socks)
    @rule(data=st.data(), timeout=st.sampled_from([0.0] * 9 + [0.002]),
          force=st.sampled_from([False] * 3 + [True]))
    def recvfrom_zcopy(self, data: st.DataObject, timeout: float, force: bool) -> None:
        sk = self.pick_sock(data)
        self.push_some(data, sk, 2)
        self.h.recvfrom_zcopy(sk, timeout, force)

    @precondition(lambda self: bool(self.live_holds()))
    @rule(data=st.data(), kind=st.sampled_from(["mv", "frags", "views"]))
    def take_view(self, data: st.DataObject, kind: str) -> None:
        hold = data.draw(st.sampled_from(self.live_holds()), "hold")
        if hold.standalone and kind == "views":
            kind = "mv"
        self.h.take_view(hold, data.draw(st.integers(0, len(hold.slots) - 1), "slot"), kind)

    @precondition(lambda self: bool(self.h.views))
    @rule(data=st.data())
    def release_view(self, data: st.DataObject) -> None:
        self.h.release_view(data.draw(st.sampled_from(self.h.views), "view"))

    @precondition(lambda self: bool(self.live_holds()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self.h.release(data.draw(st.sampled_from(self.live_holds()), "hold"))

    @precondition(lambda self: any(not x.standalone for x in self.live_holds()))
    @rule(data=st.data())
    def release_packet(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from([x for x in self.live_holds() if not x.standalone]),
                         "batch")
        self.h.release_packet(hold, data.draw(st.integers(0, len(hold.slots) - 1), "slot"))

    @precondition(lambda self: any(not x.live_views() for x in self.live_holds()))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from([x for x in self.live_holds() if not x.live_views()]),
                         "hold")
        self.h.drop(hold)

    @precondition(lambda self: CALLBACKS and self.has_socks())
    @rule(data=st.data(), what=st.sampled_from(["callback", "no callback", "filter",
                                                "no filter"]),
          refuse=st.booleans())
    def reconfigure(self, data: st.DataObject, what: str, refuse: bool) -> None:
        """Set or clear a socket's callback or filter (XLIO accepting or refusing)."""
        sk = self.pick_sock(data)
        if self.h.fake.pending(sk.fd):
            return                  # (its callback answers need the registration they found)
        self.h.set_refuse(refuse)
        if what == "callback":
            self.h.set_callback(sk, self.verdicts(data))
        elif what == "no callback":
            self.h.clear_callback(sk)
        elif what == "filter":
            self.set_filter(data, sk)
        else:
            self.h.clear_filter(sk)
        self.h.set_refuse(False)

    @precondition(has_socks)
    @rule(data=st.data())
    def close_and_reopen(self, data: st.DataObject) -> None:
        sk = self.pick_sock(data)
        stream = sk.stream
        self.h.close(sk)
        if sk.closed:              # (refused while views are exported)
            self.callbacks(data, self.h.tcp() if stream else self.h.udp())

    def teardown(self) -> None:
        if self.h.failed:          # the step that failed raised already: just clean up
            self.h.hard_reset()
            return
        try:
            self.h.finish()
        except BaseException:
            self.h.hard_reset()
            raise


def main() -> int:
    faulthandler.enable()
    warnings.simplefilter("ignore", ResourceWarning)
    examples = env_int("PYXLIO_FUZZ_EXAMPLES", 250)
    steps = env_int("PYXLIO_FUZZ_STEPS", 30)
    fresh = os.environ.get("PYXLIO_FUZZ_RANDOM", "") not in ("", "0")
    shrink = os.environ.get("PYXLIO_FUZZ_SHRINK", "") not in ("", "0")
    phases = [p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)]
    config = settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                      phases=phases,
                      database=None, derandomize=not fresh, print_blob=True,
                      suppress_health_check=list(HealthCheck))
    try:
        run_state_machine_as_test(ZcMachine, settings=config)  # type: ignore[no-untyped-call]
    except Exception:
        traceback.print_exc()
        h = HARNESS
        if h is not None:
            for note in dict.fromkeys(h.notes):
                print(f"NOTE: {note}", file=sys.stderr)
        return 1
    h = harness()
    for note in dict.fromkeys(h.notes):
        print(f"NOTE: {note}")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(h.stats.items())))
    print(f"pyxlio provider fuzz: {examples} examples of up to {steps} steps, no mismatch; "
          f"{h.fake.free_calls()} free calls checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
