# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""pyxlio.perf's inner loops in C: the ping-pong / under-load client and the server.

A measuring instrument should cost little per message, so the hot loops of ``client.py`` and
``server.py`` are here, for the receive methods that are plain ``recv``/``recvfrom`` calls
(``stdlib`` and ``copy``: the libc symbols this process resolves, XLIO's under LD_PRELOAD).
The rules are the Python loops', line for line (the Python modules keep the docs); the loops
release the GIL and run in slices: each call returns at the next burst (client) or message
(server) after ``slice_end`` so that the Python caller can print progress, check its limits and
its stop flag; a signal that interrupts a wait (EINTR) or comes while the loop spins is handled
within ~50 ms (``PyErr_CheckSignals``: Ctrl-C raises KeyboardInterrupt where the Python loop
would).

Times are CLOCK_MONOTONIC nanoseconds, the clock of ``time.perf_counter_ns`` on Linux, so the
stamps mix with the Python side's.
"""

from cpython cimport array
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.errno cimport EAGAIN, ECONNREFUSED, EINTR, errno
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec

from .wire import WireError

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    ssize_t c_recv "recv"(int fd, void *buf, size_t n, int flags)
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)
    ssize_t c_recvfrom "recvfrom"(int fd, void *buf, size_t n, int flags, sockaddr *addr,
                                  socklen_t *alen)
    ssize_t c_sendto "sendto"(int fd, const void *buf, size_t n, int flags,
                              const sockaddr *addr, socklen_t alen)

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    int AF_INET

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    short POLLIN
    short POLLOUT
    int ppoll(pollfd *fds, unsigned long n, const timespec *timeout, const void *sigmask)

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK

cdef extern from "<endian.h>" nogil:
    uint64_t be64toh(uint64_t)
    uint64_t htobe64(uint64_t)
    uint16_t be16toh(uint16_t)
    uint16_t htobe16(uint16_t)
    uint32_t be32toh(uint32_t)
    uint32_t htobe32(uint32_t)

DEF HDR = 14
DEF F_CLIENT = 1
DEF F_PONG = 2
DEF F_WARMUP = 4
DEF CHECK_NS = 50000000  # how often a spinning loop looks for signals
DEF TICK_NS = 100000000  # methods.TICK

# Return codes of Client.run() / UdpServer.run() (the Python side maps them).
SLICE = 0      # slice_end passed: call again
TIMER = 1      # -t ended (client end_at / server end)
NUMBER = 2     # client: -n reached (packet number); server: -n counted messages
GROW = 3       # client: the sample arrays must hold index ``need``
MARK = 4       # client: ``valid`` reached the mark (ping-pong -n's estimate point)
INTEGRITY = 5  # client: --data-integrity found a bad reply
CLOSED = 6     # client: the TCP peer closed the connection
REFUSED = 7    # client: TCP send refused

cdef enum:
    R_SLICE = 0
    R_TIMER = 1
    R_NUMBER = 2
    R_GROW = 3
    R_MARK = 4
    R_INTEGRITY = 5
    R_CLOSED = 6
    R_REFUSED = 7


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint64_t rd64(const char *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return be64toh(v)


cdef inline uint16_t rd16(const char *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return be16toh(v)


cdef inline uint32_t rd32(const char *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return be32toh(v)


cdef inline void put_header(char *p, uint64_t seq, uint16_t flags, uint32_t length) noexcept nogil:
    cdef uint64_t s = htobe64(seq)
    cdef uint16_t f = htobe16(flags)
    cdef uint32_t n = htobe32(length)
    memcpy(p, &s, 8)
    memcpy(p + 8, &f, 2)
    memcpy(p + 10, &n, 4)


cdef int check_signals() except -1 nogil:
    """Run the Python signal handlers now (KeyboardInterrupt propagates)."""
    with gil:
        PyErr_CheckSignals()
    return 0


cdef int raise_errno(int err) except -1 nogil:
    with gil:
        errno = err
        PyErr_SetFromErrno(OSError)
    return -1


cdef int sleep_ns(int64_t ns) except -1 nogil:
    cdef timespec ts
    ts.tv_sec = ns // 1000000000
    ts.tv_nsec = ns % 1000000000
    if nanosleep(&ts, NULL) != 0 and errno == EINTR:
        check_signals()
    return 0


cdef int wait_fd(int fd, short events, int64_t ns) except -1 nogil:
    """ppoll ``fd`` for ``events`` up to ``ns``: 1 when ready, 0 otherwise."""
    cdef pollfd p
    cdef timespec ts
    p.fd = fd
    p.events = events
    p.revents = 0
    if ns < 0:
        ns = 0
    ts.tv_sec = ns // 1000000000
    ts.tv_nsec = ns % 1000000000
    cdef int r = ppoll(&p, 1, &ts, NULL)
    if r < 0:
        if errno == EINTR:
            check_signals()
        return 0
    return 1 if r > 0 else 0


cdef object wire_error(uint32_t length, Py_ssize_t max_size):
    """The error StreamFramer raises for a length field out of range (same text)."""
    if length < HDR:
        return WireError(f"bad length field {length} in a TCP stream (smaller than the header)")
    return WireError(
        f"Message received was larger than expected, message ignored. (length field "
        f"{length} in a TCP stream, expected {HDR}..{max_size})")


cdef Py_ssize_t frame_at(const char *p, Py_ssize_t avail,
                         Py_ssize_t max_message) except -1 nogil:
    """The length of the whole message at p (sockperf's header: length field at byte 10),
    0 while fewer than its bytes are in; a length field out of range raises WireError."""
    cdef uint32_t length
    if avail < HDR:
        return 0
    length = rd32(p + 10)
    if length < HDR or length > <uint64_t>max_message:
        with gil:
            raise wire_error(length, max_message)
    return length if avail >= length else 0


cdef class Client:
    """The ping-pong / under-load client loop on a connected socket (see client.py)."""

    cdef int fd
    cdef bint stream, busy, blocking, pingpong, integrity
    cdef int64_t re_every, burst, size, reply_timeout_ns, next_check
    cdef Py_ssize_t max_message, cap, have
    cdef bytearray msg
    cdef char *msgp
    cdef char *buf
    cdef array.array tx_arr, rx_arr
    cdef int64_t *tx
    cdef int64_t *rx
    cdef Py_ssize_t ncap
    cdef uint32_t bad_length
    cdef readonly int64_t seq, received, dup, ignored, valid, prev_rx, integrity_bad
    cdef readonly int64_t need
    cdef public int64_t cycle_waits
    cdef public double interval, next_send

    def __cinit__(self):
        self.buf = NULL

    def __init__(self, int fd, *, bint stream, bint busy, bint blocking, bint pingpong,
                 int64_t reply_every, int64_t burst, int64_t size, bytearray msg,
                 array.array tx, array.array rx, double reply_timeout, bint integrity,
                 Py_ssize_t bufsize, Py_ssize_t max_message, double interval=0.0,
                 double next_send=0.0):
        if reply_every < 1 or burst < 1 or size < HDR or PyByteArray_GET_SIZE(msg) < size:
            raise ValueError("bad client loop parameters")
        if tx.ob_descr.typecode != b'q' or rx.ob_descr.typecode != b'q':
            raise TypeError("the sample arrays must be array('q')")
        self.fd = fd
        self.stream = stream
        self.busy = busy
        self.blocking = blocking
        self.pingpong = pingpong
        self.re_every = reply_every
        self.burst = burst
        self.size = size
        self.msg = msg
        self.msgp = PyByteArray_AS_STRING(msg)
        self.tx_arr = tx
        self.rx_arr = rx
        self.reply_timeout_ns = <int64_t>(reply_timeout * 1e9)
        self.integrity = integrity
        self.max_message = max_message
        # TCP: room for a whole message of the largest size after any partial one.
        self.cap = max(bufsize, 262144, max_message + HDR) if stream else max(bufsize, 2048)
        self.buf = <char *>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()
        self.have = 0
        self.interval = interval
        self.next_send = next_send

    def __dealloc__(self):
        free(self.buf)

    cdef void _refresh(self) noexcept:
        self.ncap = min(len(self.tx_arr), len(self.rx_arr))
        self.tx = <int64_t *>self.tx_arr.data.as_longlongs
        self.rx = <int64_t *>self.rx_arr.data.as_longlongs

    cdef inline void on_reply(self, const char *p, Py_ssize_t n) noexcept nogil:
        cdef int64_t now = now_ns()
        cdef uint64_t seq, q, r
        cdef uint16_t flags
        cdef uint32_t length
        if n < HDR:
            self.ignored += 1
            return
        seq = rd64(p)
        flags = rd16(p + 8)
        length = rd32(p + 10)
        if flags & F_CLIENT or flags & F_WARMUP or seq > <uint64_t>self.seq:
            self.ignored += 1
            return
        q = seq // <uint64_t>self.re_every
        r = seq % <uint64_t>self.re_every
        if r or q >= <uint64_t>self.ncap or self.tx[q] == 0:
            self.ignored += 1
            return
        if self.rx[q] != 0:
            self.dup += 1
            return
        self.rx[q] = now
        self.received += 1
        if now >= self.prev_rx:
            self.valid += 1
            self.prev_rx = now
        if self.integrity and (length != self.size or n < length or
                               memcmp(p + HDR, self.msgp + HDR, length - HDR) != 0):
            self.integrity_bad += 1

    cdef Py_ssize_t recv_msgs(self) except -2 nogil:
        """One receive (a stream goes on until a message is whole or nothing is ready):
        messages handled, 0 for none, -1 at the end of a stream, -3 for ECONNREFUSED."""
        cdef ssize_t n
        cdef int err
        cdef Py_ssize_t pos, done = 0
        cdef Py_ssize_t length
        if not self.stream:
            n = c_recv(self.fd, self.buf, self.cap, 0)
            if n < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                if err == EINTR:
                    check_signals()
                    return 0
                if err == ECONNREFUSED:
                    return -3
                raise_errno(err)
            self.on_reply(self.buf, n)
            return 1
        while True:
            n = c_recv(self.fd, self.buf + self.have, self.cap - self.have, 0)
            if n < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                if err == EINTR:
                    check_signals()
                    return 0
                if err == ECONNREFUSED:
                    return -3
                raise_errno(err)
            if n == 0:
                return -1
            self.have += n
            pos = 0
            while True:
                length = frame_at(self.buf + pos, self.have - pos, self.max_message)
                if not length:
                    break
                self.on_reply(self.buf + pos, length)
                pos += length
                done += 1
            if pos:
                memmove(self.buf, self.buf + pos, self.have - pos)
                self.have -= pos
            if done:
                return done

    cdef int take_replies(self) except -1 nogil:
        """Replies until none is ready: 0, or R_CLOSED."""
        cdef Py_ssize_t got
        while True:
            got = self.recv_msgs()
            if got == -3:
                if self.stream:
                    raise_errno(ECONNREFUSED)
                return 0
            if got == -1:
                return R_CLOSED
            if got == 0:
                return 0

    cdef int send_rest(self, ssize_t n, ssize_t n_bytes) except -1 nogil:
        cdef ssize_t m
        cdef int err, code
        if n < 0:
            return R_REFUSED if self.stream else 0
        while n < n_bytes:
            m = c_send(self.fd, self.msgp + n, n_bytes - n, 0)
            if m >= 0:
                n += m
                continue
            err = errno
            if err == ECONNREFUSED:
                return R_REFUSED if self.stream else 0
            if err == EINTR:
                check_signals()
            elif err != EAGAIN and err != EWOULDBLOCK:
                raise_errno(err)
            if not self.blocking:
                code = self.take_replies()
                if code:
                    return code
            wait_fd(self.fd, POLLIN | POLLOUT, 10000000)
        return 0

    cdef inline int send_msg(self, ssize_t n_bytes) except -1 nogil:
        cdef ssize_t n = c_send(self.fd, self.msgp, n_bytes, 0)
        cdef int err
        if n == n_bytes:
            return 0
        if n < 0:
            err = errno
            if err == EAGAIN or err == EWOULDBLOCK:
                n = 0
            elif err == EINTR:
                check_signals()
                n = 0
            elif err == ECONNREFUSED:
                n = -1
            else:
                raise_errno(err)
        return self.send_rest(n, n_bytes)

    cdef int wait_until(self, int64_t deadline) except -1 nogil:
        """Pace: until ``deadline``, take replies (the Python loop's wait_until)."""
        cdef int64_t now, left
        cdef int code
        while True:
            now = now_ns()
            if now >= deadline:
                return 0
            if now >= self.next_check:
                check_signals()
                self.next_check = now + CHECK_NS
            if self.busy:
                if not self.blocking:
                    code = self.take_replies()
                    if code:
                        return code
                continue
            left = deadline - now
            if self.blocking:
                if left > 200000:
                    sleep_ns(left)
                continue
            if left > 0 and wait_fd(self.fd, POLLIN, left):
                code = self.take_replies()
                if code:
                    return code

    cdef int _run(self, int64_t slice_end, int64_t end_at, int64_t max_seq, int64_t stop_valid,
                  int64_t valid_mark) except -1 nogil:
        cdef int64_t now, t_send, first_q, before, want, deadline, q, i
        cdef Py_ssize_t got
        cdef bint pong
        cdef int code
        self.next_check = now_ns() + CHECK_NS
        while True:
            now = now_ns()
            if end_at and now >= end_at:
                return R_TIMER
            if max_seq >= 0 and self.seq >= max_seq:
                return R_NUMBER
            if stop_valid >= 0 and self.valid >= stop_valid:
                return R_NUMBER
            if valid_mark > 0 and self.valid >= valid_mark:
                return R_MARK
            if now >= slice_end:
                return R_SLICE
            q = (self.seq + self.burst) // self.re_every
            if q >= self.ncap:
                self.need = q
                return R_GROW
            if self.interval > 0:
                self.next_send += self.interval
                if now < self.next_send:
                    code = self.wait_until(<int64_t>self.next_send)
                    if code:
                        return code
                    self.cycle_waits += 1
                elif now - self.next_send > 1e8:
                    self.next_send = <double>now
                if end_at and now_ns() >= end_at:
                    return R_TIMER

            first_q = 0
            before = self.received
            for i in range(self.burst):
                self.seq += 1
                pong = self.seq % self.re_every == 0
                put_header(self.msgp, <uint64_t>self.seq,
                           F_CLIENT | F_PONG if pong else F_CLIENT, <uint32_t>self.size)
                t_send = now_ns()
                code = self.send_msg(self.size)
                if code:
                    return code
                if pong:
                    q = self.seq // self.re_every
                    self.tx[q] = t_send
                    if not first_q:
                        first_q = q
            if self.pingpong and first_q:
                # sockperf receives a burst's worth of replies before the next burst.
                deadline = now_ns() + self.reply_timeout_ns
                if end_at and end_at < deadline:
                    deadline = end_at
                want = before + (self.seq // self.re_every - first_q + 1)
                while self.received < want:
                    got = self.recv_msgs()
                    if got == -3:
                        if self.stream:
                            raise_errno(ECONNREFUSED)
                        got = 0
                        if not self.busy:
                            sleep_ns(TICK_NS)
                    if got == -1:
                        return R_CLOSED
                    if got == 0:
                        now = now_ns()
                        if now > deadline:
                            break
                        if now >= self.next_check:
                            check_signals()
                            self.next_check = now + CHECK_NS
            elif not self.blocking:
                code = self.take_replies()
                if code:
                    return code
            if self.integrity_bad:
                return R_INTEGRITY

    def run(self, int64_t slice_end, int64_t end_at=0, int64_t max_seq=-1,
            int64_t stop_valid=-1, int64_t valid_mark=0):
        """Bursts until a limit or ``slice_end``: returns one of the codes above.

        ``end_at`` (0: none) is -t's end, ``max_seq`` (-1: none) under-load -n's message count,
        ``stop_valid`` (-1: none) ping-pong -n's in-order replies, ``valid_mark`` (0: none)
        the count of in-order replies at which to return MARK.
        """
        cdef int code
        self._refresh()
        with nogil:
            code = self._run(slice_end, end_at, max_seq, stop_valid, valid_mark)
        PyErr_CheckSignals()
        return code

    cdef int _drain(self, int64_t until) except -1 nogil:
        cdef Py_ssize_t got
        cdef int64_t now
        self.next_check = now_ns() + CHECK_NS
        while True:
            now = now_ns()
            if now >= until:
                return 0
            if now >= self.next_check:
                check_signals()
                self.next_check = now + CHECK_NS
            if self.blocking or self.busy:
                got = self.recv_msgs()
            else:
                got = self.recv_msgs() if wait_fd(self.fd, POLLIN, 10000000) else 0
            if got == -3:
                if self.stream:
                    raise_errno(ECONNREFUSED)
                sleep_ns(10000000)
                got = 0
            if got < 0:
                return 0

    def drain(self, int64_t until):
        """sockperf's wait for the last replies: receive until ``until`` (or end of stream)."""
        self._refresh()
        with nogil:
            self._drain(until)
        PyErr_CheckSignals()


cdef class ServerCounts:
    """The server's counters (server.py's _Counters, less the trackers)."""

    cdef public int64_t received, bytes, warmup, replies, ignored, malformed


cdef class _Runs:
    """Sequence accounting for one peer, in runs of consecutive numbers handed to its
    ``SequenceTracker`` (``add`` for the first, ``add_run`` for the rest: the same counts as
    one ``add`` per message, at one Python call per run)."""

    cdef dict trackers
    cdef object tracker_cls
    cdef object key
    cdef uint64_t first
    cdef int64_t count

    def __init__(self, dict trackers, tracker_cls, key=None):
        self.trackers = trackers
        self.tracker_cls = tracker_cls
        self.key = key
        self.count = 0

    cdef int flush(self) except -1:
        if self.count == 0:
            return 0
        t = self.trackers.get(self.key)
        if t is None:
            t = self.trackers[self.key] = self.tracker_cls()
        t.add(self.first)
        if self.count > 1:
            t.add_run(self.first + 1, self.count - 1)
        self.count = 0
        return 0

    cdef inline bint extends(self, uint64_t seq) noexcept nogil:
        if self.count and seq == self.first + <uint64_t>self.count:
            self.count += 1
            return True
        return False

    cdef int start(self, uint64_t seq) except -1 nogil:
        with gil:
            self.flush()
        self.first = seq
        self.count = 1
        return 0


cdef class UdpServer:
    """The UDP server loop (server.py's _run_udp and _make_handler)."""

    cdef int fd
    cdef bint dont_reply, has_group, busy
    cdef char *buf
    cdef Py_ssize_t cap
    cdef sockaddr_in group
    cdef sockaddr_storage cur
    cdef socklen_t cur_len
    cdef _Runs runs
    cdef readonly ServerCounts counts
    cdef readonly int64_t first, last

    def __cinit__(self):
        self.buf = NULL

    def __init__(self, int fd, Py_ssize_t bufsize, dict trackers, tracker_cls, *,
                 bint dont_reply=False, bytes group=None, bint busy=False):
        self.fd = fd
        self.busy = busy
        self.cap = bufsize
        self.buf = <char *>malloc(bufsize)
        if self.buf == NULL:
            raise MemoryError()
        self.dont_reply = dont_reply
        memset(&self.group, 0, sizeof(self.group))
        self.has_group = group is not None
        if self.has_group:
            if len(group) != 4:
                raise ValueError("group: 4 bytes of an IPv4 address")
            self.group.sin_family = AF_INET
            memcpy(&self.group.sin_addr, <const char *>group, 4)
        self.cur_len = 0
        self.runs = _Runs(trackers, tracker_cls)
        self.counts = ServerCounts()
        self.first = self.last = 0

    def __dealloc__(self):
        free(self.buf)

    cdef int handle(self, char *p, Py_ssize_t n, sockaddr_storage *addr,
                    socklen_t alen) except -1 nogil:
        cdef uint64_t seq
        cdef uint16_t flags
        cdef uint32_t length
        cdef ssize_t m
        cdef int err
        cdef const sockaddr *dest
        cdef socklen_t dlen
        if n < HDR:
            self.counts.malformed += 1
            return 0
        seq = rd64(p)
        flags = rd16(p + 8)
        length = rd32(p + 10)
        if not flags & F_CLIENT:
            self.counts.ignored += 1
            return 0
        if flags & F_WARMUP:
            self.counts.warmup += 1
            return 0
        if length > n or length < HDR:
            self.counts.malformed += 1
            return 0
        # The reply first (the peer is waiting for it), then the accounting.
        if flags & F_PONG and not self.dont_reply:
            put_header(p, seq, flags & ~F_CLIENT, length)
            if self.has_group:
                self.group.sin_port = (<sockaddr_in *>addr).sin_port
                dest = <const sockaddr *>&self.group
                dlen = sizeof(sockaddr_in)
            else:
                dest = <const sockaddr *>addr
                dlen = alen
            while True:
                m = c_sendto(self.fd, p, length, 0, dest, dlen)
                if m >= 0:
                    break
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN or err == EWOULDBLOCK:
                    break  # the reply is lost, as a full socket buffer would lose it
                raise_errno(err)
            self.counts.replies += 1
        self.counts.received += 1
        self.counts.bytes += n
        if alen != self.cur_len or memcmp(addr, &self.cur, alen) != 0:
            with gil:
                self.runs.flush()
                self.runs.key = (<char *>addr)[:alen]
            memcpy(&self.cur, addr, alen)
            self.cur_len = alen
            self.runs.start(seq)
        elif not self.runs.extends(seq):
            self.runs.start(seq)
        return 0

    cdef int _run(self, int64_t slice_end, int64_t end, int64_t count) except -1 nogil:
        cdef ssize_t n
        cdef int err
        cdef int64_t now
        cdef sockaddr_storage addr
        cdef socklen_t alen
        cdef unsigned int spins = 0
        while True:
            alen = sizeof(addr)
            n = c_recvfrom(self.fd, self.buf, self.cap, 0, <sockaddr *>&addr, &alen)
            if n < 0:
                err = errno
                if err == EINTR:
                    return R_SLICE  # the caller runs the signal handlers and looks at its flag
                if err != EAGAIN and err != EWOULDBLOCK:
                    raise_errno(err)
                spins += 1
                if self.busy and spins & 63:
                    continue  # spinning: the clock every 64th empty poll (~2 us)
            else:
                self.handle(self.buf, n, &addr, alen)
            now = now_ns()
            if n >= 0:
                if not self.first:
                    self.first = now
                self.last = now
                if count and self.counts.received >= count:
                    return R_NUMBER
            if end and now >= end:
                return R_TIMER
            if now >= slice_end:
                return R_SLICE

    def run(self, int64_t slice_end, int64_t end=0, int64_t count=0):
        """Messages until ``slice_end``, -t's ``end`` (TIMER) or ``count`` (NUMBER)."""
        cdef int code
        try:
            with nogil:
                code = self._run(slice_end, end, count)
        finally:
            self.runs.flush()
        PyErr_CheckSignals()
        return code


cdef class StreamConn:
    """One accepted TCP connection of the server: drain, frame, count, answer (send all)."""

    cdef int fd
    cdef char *buf
    cdef Py_ssize_t cap, have, max_message
    cdef _Runs runs
    cdef ServerCounts counts

    def __cinit__(self):
        self.buf = NULL

    def __init__(self, int fd, Py_ssize_t max_message, ServerCounts counts, dict trackers,
                 tracker_cls, peer):
        self.fd = fd
        self.max_message = max_message
        self.cap = max(262144, max_message + HDR)
        self.buf = <char *>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()
        self.have = 0
        self.counts = counts
        self.runs = _Runs(trackers, tracker_cls, peer)

    def __dealloc__(self):
        free(self.buf)

    cdef int reply(self, const char *p, Py_ssize_t n) except -1 nogil:
        cdef Py_ssize_t sent = 0
        cdef ssize_t m
        cdef int err
        while sent < n:
            m = c_send(self.fd, p + sent, n - sent, 0)
            if m >= 0:
                sent += m
                continue
            err = errno
            if err == EINTR:
                check_signals()
            elif err == EAGAIN or err == EWOULDBLOCK:
                wait_fd(self.fd, POLLOUT, 1000000000)
            else:
                raise_errno(err)
        return 0

    cdef int handle(self, char *p, Py_ssize_t n) except -1 nogil:
        cdef uint64_t seq = rd64(p)
        cdef uint16_t flags = rd16(p + 8)
        cdef uint32_t length = rd32(p + 10)
        if not flags & F_CLIENT:
            self.counts.ignored += 1
            return 0
        if flags & F_WARMUP:
            self.counts.warmup += 1
            return 0
        if flags & F_PONG:
            put_header(p, seq, flags & ~F_CLIENT, length)
            self.reply(p, length)
            self.counts.replies += 1
        self.counts.received += 1
        self.counts.bytes += n
        if not self.runs.extends(seq):
            self.runs.start(seq)
        return 0

    cdef Py_ssize_t _drain(self) except -2 nogil:
        cdef ssize_t n
        cdef int err
        cdef Py_ssize_t pos, total = 0
        cdef Py_ssize_t length
        while True:
            n = c_recv(self.fd, self.buf + self.have, self.cap - self.have, 0)
            if n < 0:
                err = errno
                if err == EINTR:
                    check_signals()
                    continue
                if err == EAGAIN or err == EWOULDBLOCK:
                    return total
                raise_errno(err)
            if n == 0:
                return -1
            self.have += n
            pos = 0
            while True:
                length = frame_at(self.buf + pos, self.have - pos, self.max_message)
                if not length:
                    break
                self.handle(self.buf + pos, length)
                pos += length
                total += 1
            if pos:
                memmove(self.buf, self.buf + pos, self.have - pos)
                self.have -= pos

    def drain(self):
        """Receive until the socket would block: messages handled, or -1 at the end of the
        stream. A bad length field raises WireError (the caller closes the connection)."""
        cdef Py_ssize_t got
        try:
            with nogil:
                got = self._drain()
        finally:
            self.runs.flush()
        return got
