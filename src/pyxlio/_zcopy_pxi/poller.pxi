# The Poller: one receive call over many sockets (included by _zcopy.pyx, after the engine
# and the exporters, whose machinery it reuses: stores, the walkers, make_batch, discard,
# software callbacks).
#
# Lifetime: Poller OPEN -> CLOSING -> CLOSED, with its own `busy` count around its epoll_wait;
# close() waits for it (a poll notices within one 50 ms slice).  The sockets it drains keep
# their engines' protocol exactly as recv_batch does: each engine is checked OPEN and counted
# in its `busy` under the GIL before the one nogil drain, and checked again after it; what a
# socket closed meanwhile gave is freed, never handed out (close() during recv_batch), and the
# socket leaves the poller.  Batches belong to their sockets, not to the poller: unregistering
# a socket leaves them valid, closing it does what close() always does.

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CLOEXEC, EPOLLIN


cdef struct pentry_t:              # one ready socket of one poll() call
    store_t *st
    const xlio_ops_t *ops
    int fd, sotype
    bint zc, want_ts, want_addr
    size_t slot
    Py_ssize_t maxq                # the most this socket may take in one call (kernel bytes)
    Py_ssize_t n
    int err
    bint ran


cdef void drain_ready(pentry_t *ents, Py_ssize_t k, Py_ssize_t budget) noexcept nogil:
    """The one nogil drain: every ready socket in turn, non-blocking, each taking at most an
    equal share of what the budget has left (at least one), so a share a socket leaves unused
    passes to the ones after it and no socket takes another's share."""
    cdef Py_ssize_t i, q, n, remaining = budget
    cdef int err
    for i in range(k):
        if remaining <= 0:
            break
        if ents[i].st == NULL:
            continue                   # closed before the drain: not touched
        q = remaining // (k - i)
        if q < 1:
            q = 1
        if q > ents[i].maxq:
            q = ents[i].maxq
        err = 0
        if ents[i].zc:
            n = fill_zcopy(ents[i].ops, ents[i].fd, ents[i].sotype, ents[i].st, q,
                           MSG_DONTWAIT, ents[i].want_addr, &err)
        else:
            n = fill_kernel(ents[i].fd, ents[i].sotype, ents[i].st, q, MSG_DONTWAIT,
                            ents[i].slot, ents[i].want_addr, ents[i].want_ts, &err)
        ents[i].n = n
        ents[i].err = err
        ents[i].ran = True
        if n > 0:
            remaining -= n


@cython.final
@cython.auto_pickle(False)
cdef class _PollReg:
    cdef object sock
    cdef SocketEngine engine
    cdef int fd
    cdef unsigned long long last    # the poll that last served it (least recently served first)


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class Poller:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """Poller()
--

    Many sockets in one receive call: ``poll()`` waits in epoll (which XLIO offloads) and
    drains every ready socket without the GIL.

    ``max_packets`` bounds the datagrams of one call IN ALL (not per socket).  Fairness: the
    ready sockets are drained least recently served first, each taking at most an equal share
    of what is left of the budget (at least one datagram); a share left unused passes to the
    sockets after it; sockets the budget did not reach are served first at the next call.  A
    busy socket can therefore never starve the others.

    Returns a list of ``(socket, PacketBatch)`` pairs for the sockets that gave datagrams
    (an empty list when the timeout expired).  The batches are the sockets' own, with the
    ownership rules of ``recv_batch``: release them (``with batch:``).  ``unregister()`` leaves
    a socket's batches valid; closing a registered socket does what ``close()`` always does
    (frees its batches, or refuses with BufferError while a view is exported) and the poller
    forgets it.  A socket closed while ``poll()`` runs is treated as ``close()`` during
    ``recv_batch``: what it gave is freed, never handed out; the other sockets' datagrams are
    returned.  An error of one socket (e.g. ECONNREFUSED) is raised, with a note naming the
    socket, at once when no socket gave datagrams, else at the next call.

    Works on every provider: sockets XLIO offloads are read with recvfrom_zcopy, the others
    with recvmmsg, as ``recv_batch`` reads them.
    """

    cdef int epfd
    cdef dict regs                  # fd -> _PollReg
    cdef int state
    cdef int busy
    cdef unsigned long long tick
    cdef list errors                # exceptions to raise at the next poll
    cdef unsigned long fork_gen
    cdef object __weakref__

    def __cinit__(self):
        self.epfd = -1
        self.regs = {}
        self.errors = []
        self.state = ENGINE_CLOSED
        self.fork_gen = fork_generation()

    def __init__(self) -> None:
        """A poller with no socket registered: ``Poller()`` takes no argument."""
        cdef int fd
        if self.epfd >= 0:
            return
        with nogil:
            fd = epoll_create1(EPOLL_CLOEXEC)
        if fd < 0:
            raise OSError(errno, strerror(errno).decode("utf-8", "replace"))
        self.epfd = fd
        self.state = ENGINE_OPEN

    def __dealloc__(self):
        # A poll() in progress holds a reference: nobody waits in epfd here.
        if self.epfd >= 0:
            c_close(self.epfd)
            self.epfd = -1

    cdef int check_open(self) except -1:
        if self.state != ENGINE_OPEN:
            raise ValueError("the poller is closed")
        return 0

    cdef SocketEngine engine_of(self, object sock):
        engine = getattr(sock, "_engine", None)
        if not isinstance(engine, SocketEngine):
            raise TypeError(f"Poller takes pyxlio.socket.socket objects, not "
                            f"{type(sock).__name__}")
        return <SocketEngine>engine

    cdef _PollReg find(self, object sock):
        for reg in self.regs.values():
            if (<_PollReg>reg).sock is sock:
                return <_PollReg>reg
        return None

    cdef void forget(self, _PollReg reg) noexcept:
        """Drop a registration (its socket closed, or unregister()).  epoll_ctl(DEL) only
        while the entry still names that socket: a new socket reusing the fd number would
        have replaced it (and is not in the epoll set under the old registration)."""
        cdef epoll_event ev
        if self.regs.get(reg.fd) is reg:
            del self.regs[reg.fd]
            if self.epfd >= 0:
                with nogil:
                    epoll_ctl(self.epfd, EPOLL_CTL_DEL, reg.fd, &ev)

    def register(self, sock: object) -> None:
        """Watch `sock` (a pyxlio socket) for datagrams.  ValueError when already registered,
        OSError(EBADF) when closed."""
        cdef SocketEngine e = self.engine_of(sock)
        cdef epoll_event ev
        cdef int rc, fd, err = 0
        cdef _PollReg reg, old
        self.check_open()
        if e.state != ENGINE_OPEN:
            raise OSError(EBADF, "Bad file descriptor: the socket is closed")
        fd = e.fd
        old = self.regs.get(fd)
        if old is not None:
            if old.sock is sock and old.engine.state == ENGINE_OPEN:
                raise ValueError(f"socket fd {fd} is already registered")
            self.forget(old)         # a closed socket whose fd number was reused
        memset(&ev, 0, sizeof(ev))
        ev.events = EPOLLIN
        ev.data.fd = fd
        with nogil:
            rc = epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev)
            err = errno
        if rc != 0:
            if err == ENOMEM:
                # XLIO keeps one epoll instance per socket and refuses a second one with
                # ENOMEM, after the kernel's epoll took the fd (not undone): undo it here, so
                # the socket can be registered once the other instance lets it go.
                with nogil:
                    epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev)
                raise OSError(ENOMEM, f"socket fd {fd} is in another epoll instance already "
                              "(a Poller, a selector, an event loop), and XLIO keeps one per "
                              "socket")
            if err == EBADF and provider_started() == 0:
                raise OSError(EBADF, "XLIO is loaded but never started (its global init failed: "
                              "see its errors on stderr), and its epoll_ctl then refuses every "
                              "fd, select.epoll's too: run without XLIO, or fix its start")
            raise OSError(err, strerror(err).decode("utf-8", "replace"))
        reg = _PollReg.__new__(_PollReg)
        reg.sock = sock
        reg.engine = e
        reg.fd = fd
        self.regs[fd] = reg
        return None

    def unregister(self, sock: object) -> None:
        """Stop watching `sock` (KeyError when not registered).  Its batches stay valid: they
        are the socket's.  A socket closed since it was registered can be unregistered."""
        cdef _PollReg reg = self.find(sock)
        cdef SocketEngine e
        if reg is None:
            e = self.engine_of(sock)
            if e.state != ENGINE_OPEN:
                return None          # closed: the poller forgot it then (or never had it)
            raise KeyError(f"{sock!r} is not registered")
        self.forget(reg)

    def sockets(self) -> list:
        """The registered sockets that are still open."""
        self.prune()
        return [(<_PollReg>r).sock for r in self.regs.values()]

    def __len__(self) -> int:
        self.prune()
        return len(self.regs)

    def __contains__(self, sock: object) -> bool:
        cdef _PollReg reg = self.find(sock)
        return reg is not None and reg.engine.state == ENGINE_OPEN

    cdef void prune(self) noexcept:
        """Forget the sockets closed since they were registered."""
        cdef list gone = [r for r in self.regs.values()
                          if (<_PollReg>r).engine.state != ENGINE_OPEN]
        for r in gone:
            self.forget(<_PollReg>r)

    @property
    def closed(self) -> bool:
        return self.state == ENGINE_CLOSED

    def fileno(self) -> int:
        """The epoll fd (for diagnostics; wait through poll())."""
        return self.epfd

    def close(self) -> None:
        """Stop: a poll() in another thread raises OSError(EBADF) within one 50 ms slice.  The
        sockets stay open, their batches valid."""
        cdef int fd
        if self.state == ENGINE_CLOSED:
            return
        if self.state == ENGINE_CLOSING:
            while self.state != ENGINE_CLOSED:
                with nogil:
                    usleep(200)
            return
        self.state = ENGINE_CLOSING
        try:
            if fork_generation() != self.fork_gen:
                self.busy = 0            # a forked child: the counted threads do not exist
            while self.busy > 0:
                with nogil:
                    usleep(200)
        finally:
            fd, self.epfd = self.epfd, -1
            self.regs.clear()
            self.state = ENGINE_CLOSED
            if fd >= 0:
                c_close(fd)

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pyxlio.Poller sockets={len(self.regs)}{' closed' if self.closed else ''}>"

    def poll(self, Py_ssize_t max_packets=64, timeout=None, *, bint addresses=True,
             object timestamps=False) -> list:
        """Wait until a registered socket is readable (`timeout` seconds, None: for ever, 0:
        not at all), then take up to `max_packets` datagrams IN ALL from the ready sockets
        (fairly: see the class), without the GIL.  Returns ``[(socket, PacketBatch), ...]``
        for the sockets that gave datagrams (a stream socket at its end: an empty batch with
        ``eof``); ``[]`` when the timeout expired.  ``addresses`` and ``timestamps`` as in
        ``recv_batch``."""
        cdef int ts_mode = ts_mode_of(timestamps)
        cdef double t = check_timeout(timeout)
        cdef bint bounded = t > 0
        cdef double deadline = 0.0, remaining
        cdef int ms, rc, err, cap, i
        cdef epoll_event *events = NULL
        cdef SocketEngine e
        cdef list ready
        if max_packets < 1 or max_packets > MAX_PACKETS:
            raise ValueError(f"max_packets must lie in 1 .. {MAX_PACKETS}, not {max_packets}")
        if cb_depth() > 0:
            raise RuntimeError("pyxlio: no receive call inside a receive callback (it runs "
                               "inside XLIO's own receive path): return a verdict instead")
        self.check_open()
        if self.errors:
            exc = self.errors.pop(0)
            raise exc
        # What earlier calls or callbacks of the sockets left to raise (as recv_batch does);
        # a closed socket is forgotten when epoll names it, or by len() / sockets().
        for r in self.regs.values():
            e = (<_PollReg>r).engine
            if e.state == ENGINE_OPEN:
                e.raise_pending()
        if bounded:
            deadline = time.monotonic() + t
        try:
            while True:
                cap = max(1, len(self.regs))
                events = <epoll_event *>realloc(events, cap * sizeof(epoll_event))
                if events == NULL:
                    raise MemoryError()
                ms = 0 if t == 0 else POLL_SLICE_MS
                if bounded:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        ms = 0
                    elif remaining * 1000.0 < POLL_SLICE_MS:
                        ms = <int>(remaining * 1000.0) + 1
                self.busy += 1
                with nogil:
                    rc = epoll_wait(self.epfd, events, cap, ms)
                    err = errno
                self.busy -= 1
                PyErr_CheckSignals()
                if self.state != ENGINE_OPEN:
                    raise OSError(EBADF, "Bad file descriptor: the poller was closed during "
                                  "the poll")
                if rc < 0:
                    if err == EINTR:
                        continue
                    raise OSError(err, strerror(err).decode("utf-8", "replace"))
                if rc > 0:
                    ready = []
                    for i in range(rc):
                        r = self.regs.get(events[i].data.fd)
                        if r is None:
                            continue
                        if (<_PollReg>r).engine.state != ENGINE_OPEN:
                            self.forget(<_PollReg>r)
                            continue
                        ready.append(r)
                    if ready:
                        out = self.drain(ready, max_packets, addresses, ts_mode)
                        if out:
                            return out
                        if self.errors:
                            exc = self.errors.pop(0)
                            raise exc
                if t == 0 or (bounded and deadline - time.monotonic() <= 0):
                    return []
        finally:
            free(events)

    cdef list drain(self, list ready, Py_ssize_t budget, bint want_addr, int ts_mode):
        """Take the ready sockets' datagrams in one nogil section; make their batches."""
        cdef Py_ssize_t k, i, n
        cdef pentry_t *ents
        cdef pentry_t *pe
        cdef SocketEngine e
        cdef _PollReg reg
        cdef list out = []
        cdef int err
        cdef bint interrupted = False
        cdef bint drained = False
        ready.sort(key=_last_served)
        k = len(ready)
        ents = <pentry_t *>calloc(<size_t>k, sizeof(pentry_t))
        if ents == NULL:
            raise MemoryError()
        try:
            # Under the GIL: each engine checked OPEN, its path chosen, a store taken, and
            # counted busy (so close() waits for the drain) -- all or nothing per socket.
            for i in range(k):
                reg = <_PollReg>ready[i]
                e = reg.engine
                pe = &ents[i]
                e.check_fork()
                if e.state != ENGINE_OPEN:
                    continue
                pe.slot = e.max_datagram
                pe.maxq = budget
                pe.zc = e.plan_pass(&pe.maxq, 0, ts_mode, &pe.want_ts)
                pe.want_addr = want_addr
                pe.ops = e.ops
                pe.fd = e.fd
                pe.sotype = e.sotype
                pe.st = e.take_store(1)
                e.busy += 1
            with nogil:
                drain_ready(ents, k, budget)
            for i in range(k):
                if ents[i].st != NULL:
                    (<_PollReg>ready[i]).engine.busy -= 1
            drained = True
            # Under the GIL again: each socket as recv_batch's receive() ends.
            for i in range(k):
                pe = &ents[i]
                if pe.st == NULL:
                    continue
                reg = <_PollReg>ready[i]
                e = reg.engine
                try:
                    b = self.finish_one(e, pe, ts_mode)
                except BaseException as exc:
                    if isinstance(exc, Exception):
                        try:
                            exc.add_note(f"pyxlio.Poller: from socket fd {pe.fd}")
                        except BaseException:
                            pass
                        self.errors.append(exc)
                    else:
                        self.errors.insert(0, exc)
                        interrupted = True
                    continue
                finally:
                    pe.st = NULL          # owned by the batch, the pool, or freed
                if b is None:
                    if e.state != ENGINE_OPEN:
                        self.forget(reg)
                    continue
                self.tick += 1
                reg.last = self.tick
                out.append((reg.sock, b))
                if e.cb_errors and e.interrupted():
                    interrupted = True
                    try:
                        e.raise_interrupt()
                    except BaseException as exc:
                        self.errors.insert(0, exc)
            if interrupted:
                # Ctrl-C wins over the datagrams in hand (as in recv_batch).
                for pair in out:
                    (<PacketBatch>pair[1]).finish(True)
                exc = self.errors.pop(0)
                raise exc
            return out
        finally:
            for i in range(k):
                if ents[i].st != NULL and not drained:
                    (<_PollReg>ready[i]).engine.busy -= 1     # taking the stores failed
                if ents[i].st != NULL:
                    # Not reached by the processing above (an exception): nothing handed out.
                    e = (<_PollReg>ready[i]).engine
                    if ents[i].n > 0:
                        try:
                            e.discard(ents[i].st, ents[i].n)
                        except BaseException:
                            pass
                    e.give_store(ents[i].st)
            free(ents)

    cdef object finish_one(self, SocketEngine e, pentry_t *pe, int ts_mode):
        """One drained socket, as engine.receive() ends a pass (SocketEngine.finish_pass):
        returns its batch, or None (nothing, or closed meanwhile: what it gave is freed).
        Always disposes of pe.st."""
        cdef store_t *st = pe.st
        cdef Py_ssize_t n
        cdef int err = pe.err
        cdef PacketBatch b
        try:
            if not pe.ran:
                e.give_store(st)
                return None
            try:
                n = e.finish_pass(st, pe.n, &err, pe.zc, ts_mode)
            except BaseException:
                e.give_store(st)     # the callbacks freed or kept what they processed
                raise
            if n > 0 or (n == 0 and st.eof):
                b = e.make_batch(st, n)
                b.has_ts = ts_mode != TS_OFF
                return b
            e.give_store(st)
            if n == PASS_CLOSED or err == 0 or err == EAGAIN or err == EINTR:
                return None
            if err == EPROTO:
                raise XlioError(EPROTO, "the provider returned a malformed zero-copy answer; "
                                "pyxlio did not read it (its packets were not touched)",
                                "recvfrom_zcopy")
            raise OSError(err, strerror(err).decode("utf-8", "replace"))
        finally:
            e.after_provider()


def _last_served(reg: object) -> int:
    return (<_PollReg>reg).last
