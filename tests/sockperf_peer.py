"""A minimal sockperf peer for the interop tests: server and client, written from sockperf's wire
rules and independent of pyxlio.perf's code (nothing imported from it).

sockperf's message: a 14-byte header in network byte order - u64 sequence number, u16 flags
(1 = sent by a client, 2 = a reply is requested / this is the reply, 4 = warm-up), u32 length of
the whole message - then the payload (sockperf fills it with pseudo-random bytes).

Server rules (sockperf's server.h handle_message): a message without flag 1 is ignored; a
warm-up one is not counted; the rest are counted, and one with flag 2 goes back whole with flag
1 cleared - to the sender, except that a request that came to a multicast group goes back to the
group, on the sender's port (unless --force-unicast-reply). Over TCP the length field frames the
stream; a length above the server's largest message (65507, or -m when larger) closes the
connection ("Message received was larger than expected").

Client: sends -n messages of -m bytes (random payload, sequence from 1, flags 1|2) in bursts of
-b, waits for each burst's replies and checks each reply: flags 2 only, same sequence number and
length, payload byte for byte (sockperf's --data-integrity). For multicast it joins the group and
records the destination address of each reply (IP_PKTINFO), so a test can tell a reply to the
group from a unicast one.

Run: ``python sockperf_peer.py server|client [options]``. The server prints ``READY <port>``
once listening and one JSON line when it stops (SIGINT/SIGTERM, -n counted messages, or
--timeout seconds); the client prints one JSON line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

HDR = struct.Struct("!QHI")
F_CLIENT, F_PONG, F_WARMUP = 1, 2, 4
UDP_MAX = 65507
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux <netinet/in.h>


def _is_mc(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_multicast


def _join(sock: socket.socket, group: str, iface: str | None) -> None:
    mreq = socket.inet_aton(group) + socket.inet_aton(iface or "0.0.0.0")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    if iface:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))


class _Stop:
    flag = False


def _on_signal(*_a: Any) -> None:
    _Stop.flag = True


def serve(a: argparse.Namespace) -> dict[str, Any]:
    st: dict[str, Any] = {"received": 0, "warmup": 0, "replies": 0, "ignored": 0,
                          "closed_bad_length": 0, "max_length": 0, "reply_to": [], "pongs": 0,
                          "skipped": 0, "duplicated": 0}
    limit = max(UDP_MAX, a.msg_size or 0)
    fam = socket.AF_INET6 if ":" in a.ip else socket.AF_INET
    mc = _is_mc(a.ip)
    deadline = time.monotonic() + a.timeout

    def handle(data: bytes, src: Any, send: Any) -> None:
        if len(data) < HDR.size:
            st["ignored"] += 1
            return
        seq, flags, length = HDR.unpack_from(data)
        if not flags & F_CLIENT:
            st["ignored"] += 1
            return
        if flags & F_WARMUP:
            st["warmup"] += 1
            return
        st["received"] += 1
        st["max_length"] = max(st["max_length"], length)
        if flags & F_PONG and not a.dont_reply:
            st["pongs"] += 1
            if a.skip_reply_every and st["pongs"] % a.skip_reply_every == 0:
                st["skipped"] += 1  # an injected drop: this request gets no reply
                return
            dest = (a.ip, src[1]) if mc and not a.force_unicast_reply and src else src
            if len(st["reply_to"]) < 4:
                st["reply_to"].append(list(dest) if dest else None)
            reply = HDR.pack(seq, flags & ~F_CLIENT, length) + data[HDR.size:length]
            send(reply, dest)
            st["replies"] += 1
            if a.dup_reply_every and st["pongs"] % a.dup_reply_every == 0:
                send(reply, dest)  # an injected duplicate
                st["replies"] += 1
                st["duplicated"] += 1

    def done() -> bool:
        return _Stop.flag or time.monotonic() > deadline or bool(
            a.count and st["received"] >= a.count)

    if not a.tcp:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a.ip, a.port))
        if mc:
            _join(s, a.ip, a.mc_if)
        print(f"READY {s.getsockname()[1]}", flush=True)
        while not done():
            if not select.select([s], [], [], 0.05)[0]:
                continue
            data, src = s.recvfrom(limit + 1)
            handle(data, src, lambda b, d: s.sendto(b, d))
        s.close()
        return st

    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.ip, a.port))
    ls.listen(8)
    print(f"READY {ls.getsockname()[1]}", flush=True)
    conns: dict[socket.socket, bytearray] = {}
    while not done():
        ready, _, _ = select.select([ls, *conns], [], [], 0.05)
        for r in ready:
            if r is ls:
                c, _peer = ls.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[c] = bytearray()
                continue
            chunk = r.recv(1 << 20)
            buf = conns[r]
            buf += chunk
            bad = False
            while len(buf) >= HDR.size:
                length = HDR.unpack_from(buf)[2]
                if length > limit or length < HDR.size:
                    bad = True
                    break
                if len(buf) < length:
                    break
                handle(bytes(buf[:length]), None, lambda b, _d, c=r: c.sendall(b))
                del buf[:length]
            if bad:
                st["closed_bad_length"] += 1
            if bad or not chunk:
                del conns[r]
                r.close()
    for c in conns:
        c.close()
    ls.close()
    return st


def client(a: argparse.Namespace) -> dict[str, Any]:
    fam = socket.AF_INET6 if ":" in a.ip else socket.AF_INET
    mc = _is_mc(a.ip)
    size = a.msg_size or HDR.size
    rng = random.Random(1234)
    out: dict[str, Any] = {"sent": 0, "replies": 0, "integrity_ok": True, "bad": [],
                           "reply_dst": [], "closed": False, "gaps": 0, "dups": 0}
    s = socket.socket(fam, socket.SOCK_STREAM if a.tcp else socket.SOCK_DGRAM)
    s.settimeout(5)
    if a.tcp:
        s.connect((a.ip, a.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    elif mc:
        s.bind(("0.0.0.0", 0))
        _join(s, a.ip, a.mc_if)
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        s.connect((a.ip, a.port))
    dest = (a.ip, a.port)
    seq = 0
    pending = bytearray()

    def read_reply() -> tuple[bytes, str | None] | None:
        nonlocal pending
        if a.tcp:
            while True:
                if len(pending) >= HDR.size:
                    ln = HDR.unpack_from(pending)[2]
                    if len(pending) >= ln:
                        msg = bytes(pending[:ln])
                        del pending[:ln]
                        return msg, None
                chunk = s.recv(1 << 20)
                if not chunk:
                    out["closed"] = True
                    return None
                pending += chunk
        if mc:
            data, anc, _fl, _src = s.recvmsg(size + 64, socket.CMSG_SPACE(12))
            dst = None
            for level, kind, cdata in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    dst = socket.inet_ntoa(cdata[8:12])  # in_pktinfo: ifindex, spec_dst, addr
            return data, dst
        return s.recv(size + 64), None

    try:
        while out["sent"] < a.count:
            sent: dict[int, list[bytes]] = {}
            for _ in range(min(a.burst, a.count - out["sent"])):
                seq += 1
                if a.gap_every and out["sent"] and out["sent"] % a.gap_every == 0:
                    seq += 1  # an injected gap: this number is never sent
                    out["gaps"] += 1
                body = HDR.pack(seq, F_CLIENT | F_PONG, size) + rng.randbytes(size - HDR.size)
                copies = 2 if a.dup_every and (out["sent"] + 1) % a.dup_every == 0 else 1
                for _c in range(copies):
                    sent.setdefault(seq, []).append(body)
                    if a.tcp:
                        s.sendall(body)
                    elif mc:
                        s.sendto(body, dest)
                    else:
                        s.send(body)
                out["sent"] += 1
                out["dups"] += copies - 1
            while sent:
                got = read_reply()
                if got is None:
                    raise ConnectionError("closed")
                data, dst = got
                rseq, rflags, rlen = HDR.unpack_from(data)
                if rflags & F_CLIENT:
                    continue  # a request looped back (multicast on one host)
                bodies = sent.get(rseq)
                want = bodies.pop() if bodies else None
                if not bodies:
                    sent.pop(rseq, None)
                out["replies"] += 1
                if dst is not None and len(out["reply_dst"]) < 4:
                    out["reply_dst"].append(dst)
                ok = (want is not None and rflags == F_PONG and rlen == len(want) == len(data)
                      and data[HDR.size:] == want[HDR.size:])
                if not ok:
                    out["integrity_ok"] = False
                    if len(out["bad"]) < 3:
                        out["bad"].append([rseq, rflags, rlen, len(data)])
    except (OSError, ConnectionError) as exc:
        out["error"] = str(exc)
    finally:
        s.close()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sockperf_peer")
    p.add_argument("role", choices=("server", "client"))
    p.add_argument("-i", "--ip", default="127.0.0.1")
    p.add_argument("-p", "--port", type=int, default=0)
    p.add_argument("--tcp", action="store_true")
    p.add_argument("-m", "--msg-size", type=int)
    p.add_argument("-n", "--count", type=int, default=0)
    p.add_argument("-b", "--burst", type=int, default=1)
    p.add_argument("--mc-if")
    p.add_argument("--force-unicast-reply", action="store_true")
    p.add_argument("--dont-reply", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    # Injected faults, for the sequence accounting tests.
    p.add_argument("--skip-reply-every", type=int, default=0,
                   help="server: no reply to every N-th reply request (a drop)")
    p.add_argument("--dup-reply-every", type=int, default=0,
                   help="server: two replies to every N-th reply request (a duplicate)")
    p.add_argument("--gap-every", type=int, default=0,
                   help="client: skip one sequence number after every N-th message (a drop)")
    p.add_argument("--dup-every", type=int, default=0,
                   help="client: send every N-th message twice (a duplicate)")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    res = serve(a) if a.role == "server" else client(a)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    os.environ.pop("LD_PRELOAD", None)
    sys.exit(main(sys.argv[1:]))
