"""pyxlio.perf's compiled inner loops (see _loops.pyx)."""

from array import array
from typing import Any

SLICE: int
TIMER: int
NUMBER: int
GROW: int
MARK: int
INTEGRITY: int
CLOSED: int
REFUSED: int

class Client:
    seq: int
    received: int
    dup: int
    ignored: int
    valid: int
    prev_rx: int
    integrity_bad: int
    need: int
    cycle_waits: int
    interval: float
    next_send: float
    def __init__(self, fd: int, *, stream: bool, busy: bool, blocking: bool, pingpong: bool,
                 reply_every: int, burst: int, size: int, msg: bytearray, tx: array[int],
                 rx: array[int], reply_timeout: float, integrity: bool, bufsize: int,
                 max_message: int, interval: float = ..., next_send: float = ...) -> None: ...
    def run(self, slice_end: int, end_at: int = ..., max_seq: int = ..., stop_valid: int = ...,
            valid_mark: int = ...) -> int: ...
    def drain(self, until: int) -> None: ...

class ServerCounts:
    received: int
    bytes: int
    warmup: int
    replies: int
    ignored: int
    malformed: int

class UdpServer:
    counts: ServerCounts
    first: int
    last: int
    def __init__(self, fd: int, bufsize: int, trackers: dict[Any, Any], tracker_cls: Any, *,
                 dont_reply: bool = ..., group: bytes | None = ...,
                 busy: bool = ...) -> None: ...
    def run(self, slice_end: int, end: int = ..., count: int = ...) -> int: ...

class StreamConn:
    def __init__(self, fd: int, max_message: int, counts: ServerCounts,
                 trackers: dict[Any, Any], tracker_cls: Any, peer: Any) -> None: ...
    def drain(self) -> int: ...
