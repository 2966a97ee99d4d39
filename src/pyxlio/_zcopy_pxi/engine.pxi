# The per-socket engine (included by _zcopy.pyx).  Its lifetime model is in the module
# docstring of _zcopy.pyx; the rules each method keeps are repeated where they are kept.

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)
    int c_close "close"(int fd)


cdef int ts_mode_of(object timestamps) except -1:
    """recv_batch's `timestamps`: False/None (off), True or "software" (SO_TIMESTAMPNS),
    "hardware" (SO_TIMESTAMPING: the NIC's stamp where the NIC and driver give one)."""
    if timestamps is None or timestamps is False:
        return TS_OFF
    if timestamps is True or timestamps == "software":
        return TS_SOFTWARE
    if timestamps == "hardware":
        return TS_HARDWARE
    raise ValueError(f"timestamps must be False, True, 'software' or 'hardware', not "
                     f"{timestamps!r}")


# The GIL and the provider.  Every receive and free pyxlio makes is non-blocking, so it is short;
# a short call keeps the GIL, saving the two GIL hand-overs (some hundreds of instructions, the
# largest single cost of a one-datagram receive) that releasing it costs.  That is safe only
# while no thread inside XLIO can be waiting for the GIL: XLIO takes its locks around the
# receive callbacks and allocators it calls, and pyxlio's trampolines for those take the GIL,
# so once one was registered (_api.provider_calls_python, sticky) every provider call
# releases it again.  (A thread blocked in XLIO's own blocking receive holds none of its
# locks: libxlio's sockinfo_udp::rx_wait unlocks m_lock_rcv before its epoll_wait.)  The kernel
# path is a raw system call: no XLIO lock, only its length matters.  Long passes (many packets,
# or many bytes to copy) release the GIL as before.
cdef enum:
    SHORT_PASS_PACKETS = 64
    SHORT_PASS_BYTES = 256 * 1024


cdef inline bint short_call(bint provider, Py_ssize_t packets, size_t slot) noexcept nogil:
    if provider:
        return packets <= SHORT_PASS_PACKETS and not provider_calls_python()
    return <size_t>packets * slot <= SHORT_PASS_BYTES


cdef inline Py_ssize_t fill_pass(SocketEngine e, store_t *st, bint zc_path, Py_ssize_t maxp,
                                 int flags0, size_t slot, bint want_addr, bint want_ts,
                                 int *err) noexcept nogil:
    """One non-blocking pass of receive(): zero-copy through the provider, or the kernel."""
    if zc_path:
        return fill_zcopy(e.ops, e.fd, e.sotype, st, maxp, flags0, want_addr, err)
    return fill_kernel(e.fd, e.sotype, st, maxp, flags0, slot, want_addr, want_ts, err)


cdef void stamp_missing(store_t *st, Py_ssize_t n, bint all_slots) noexcept nogil:
    """Datagrams the kernel gave no receive time (every one on the zero-copy path: XLIO's
    recvfrom_zcopy returns no control messages) get pyxlio's own CLOCK_REALTIME reading, taken
    once when the receive pass that dequeued them returned, with source TS_SRC pyxlio (0)."""
    cdef timespec now
    cdef long long ns
    cdef Py_ssize_t i
    clock_gettime(CLOCK_REALTIME, &now)
    ns = now.tv_sec * 1000000000LL + now.tv_nsec
    for i in range(n):
        if all_slots or st.slots[i].ts_ns == 0:
            st.slots[i].ts_ns = ns
            st.slots[i].ts_src = 0


cdef double check_timeout(object timeout) except? -2.0:
    """A timeout as socket.settimeout takes it: None (-1.0 here), or a number >= 0."""
    cdef double t
    if timeout is None:
        return -1.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number, not {type(timeout).__name__}")
    t = float(timeout)
    if t != t:
        raise ValueError("Invalid value NaN (not a number)")
    if t < 0:
        raise ValueError("Timeout value out of range")
    if t > MAX_TIMEOUT:
        raise OverflowError("timeout doesn't fit into C timeval")
    return t


@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class SocketEngine:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """SocketEngine(fd, family, sotype)
--

    pyxlio's receive engine for one socket (internal: use :class:`pyxlio.socket.socket`)."""

    cdef int fd
    cdef int family, sotype
    cdef const xlio_ops_t *ops
    cdef bint zc
    cdef double timeout
    cdef readonly Py_ssize_t outstanding
    cdef readonly Py_ssize_t exports
    cdef size_t max_datagram
    cdef store_t *pool[POOL_MAX]
    cdef int npool
    cdef PyObject *head           # borrowed: the LIVE batches, linked through _prev/_next
    cdef object _held             # deque of held Packets (promoted)
    cdef list staged              # [(thread ident, PacketBatch)]: HOLD verdicts not yet promoted
    cdef free_ent_t *deferred     # frees asked for inside a callback, made at the next safe point
    cdef size_t ndeferred, defcap
    cdef list cb_errors
    cdef object cb_fn
    cdef cb_ctx_t *cb
    cdef bint cb_registered
    cdef int state                # ENGINE_OPEN / ENGINE_CLOSING / ENGINE_CLOSED
    cdef int busy                 # threads inside a nogil section that uses the fd
    cdef int pending_err          # a provider error to raise from the next receive call
    cdef int owned_fd             # fd this engine closes when it dies (socket finalized early)
    cdef unsigned long fork_gen   # the fork generation `busy` and `deferred` belong to
    cdef bint known_offloaded     # XLIO said it offloads the socket (see use_zcopy)
    cdef signed char xlio_knows   # XLIO has the fd in its collection: 1 yes, 0 no, -1 not asked
    cdef int timestamps           # SO_TIMESTAMPNS: 0 not asked, 1 on, -1 refused
    cdef int hw_timestamps        # SO_TIMESTAMPING: 0 not asked, 1 on, -1 refused
    cdef object __weakref__       # _ENGINES (closed at interpreter exit)

    def __cinit__(self, int fd, int family, int sotype):
        self.fd = fd
        self.family = family
        self.sotype = sotype
        self.ops = get_ops()
        self.zc = self.ops.recvfrom_zcopy != NULL and self.ops.free_packets != NULL
        self.timeout = -1.0
        self.max_datagram = 65536
        self._held = collections.deque()
        self.staged = []
        self.cb_errors = []
        self.owned_fd = -1
        self.xlio_knows = -1
        self.state = ENGINE_OPEN
        self.fork_gen = fork_generation()
        _ENGINES.add(self)
        self.cb = ctx_new(<PyObject *>self)
        if self.cb == NULL:
            raise MemoryError()

    def __dealloc__(self):
        # No Python here beyond what is certain to work at interpreter exit: no imports.
        cdef int i
        for i in range(self.npool):
            store_del(self.pool[i])
        self.npool = 0
        free(self.deferred)
        self.deferred = NULL
        # Registered, the context would hold a reference to us: we can only get here
        # unregistered, so the provider no longer has the context.
        ctx_del(self.cb)
        self.cb = NULL
        if self.owned_fd >= 0:
            c_close(self.owned_fd)
            self.owned_fd = -1

    # -- configuration ------------------------------------------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        self.timeout = check_timeout(timeout)

    @property
    def closed(self) -> bool:
        return self.state == ENGINE_CLOSED

    @property
    def zcopy_capable(self) -> bool:
        """XLIO's zero-copy receive is loaded (the socket may still get copies)."""
        return self.zc

    @property
    def max_datagram(self) -> int:
        return self.max_datagram

    @max_datagram.setter
    def max_datagram(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("max_datagram must be an int")
        if not 64 <= value <= 1 << 20:
            raise ValueError("max_datagram must lie in 64 .. 1 MiB")
        self.max_datagram = value
        for i in range(self.npool):
            store_del(self.pool[i])
        self.npool = 0

    cdef int offload_truth(self) noexcept:
        """1: XLIO offloads this socket, 0: it does not (or no XLIO), -1: cannot be told.

        Decided from facts that hold for every provider (the fact sheet, section 9), by
        _api.offload_state: get_socket_rings_num where the layout has it (a socket XLIO offloads
        has at least one ring, one it leaves to the kernel none, -1 means not decided yet: an
        unbound UDP socket); layouts without rings (3.60+) cannot tell.  register_recv_callback
        says nothing: a real libxlio accepts it for every socket it wraps."""
        cdef int truth
        with nogil:
            truth = offload_state(self.fd)
        return truth

    cdef bint use_zcopy(self) noexcept:
        """Receive through recvfrom_zcopy?  Not on a socket XLIO does not offload: there it
        would be one copying call per datagram, where recvmmsg takes a batch per call.  When
        XLIO cannot tell, recvfrom_zcopy, which serves offloaded and kernel data alike.
        "Offloaded" is remembered (recvfrom_zcopy is right whatever happens next); "not
        offloaded" is asked again at every call, since reading the kernel's queue of a socket
        XLIO has since taken over would miss its data."""
        cdef int truth
        if not self.zc:
            return False
        if self.known_offloaded:
            return True
        truth = self.offload_truth()
        if truth == 1:
            self.known_offloaded = True
        return truth != 0

    cdef bint xlio_serves_fd(self) except -1:
        """Does XLIO know this fd at all?  A socket made while thread offload was off, or
        before XLIO was loaded, is not in its collection, and libxlio 3.51.1's recvfrom_zcopy
        then calls the kernel's recvfrom with the caller's flags (src/core/sock/sock-extra.cpp):
        MSG_XLIO_ZCOPY_FORCE is ignored and the datagram is copied.  register_recv_callback is
        the one call that tells (-1/EINVAL for an fd XLIO does not know, 0 otherwise); asked
        with no callback, never while this socket's own callback is registered (the answer is
        yes then), and remembered until the next bind or connect (forget_offload_state: libvma
        stops knowing a socket it leaves to the kernel there).
        (Two pyxlio sockets over one fd number would unregister each other's callbacks here;
        they are not supported anyway: closing one closes the other's fd.)"""
        cdef int rc
        if self.cb_registered:
            return True
        if self.xlio_knows < 0:
            if self.ops.register_recv_callback == NULL:
                return True                 # cannot ask: let XLIO answer the receive itself
            self.busy += 1                  # close() waits: the fd cannot be reused meanwhile
            try:
                with nogil:
                    rc = self.ops.register_recv_callback(self.fd, NULL, NULL)
            finally:
                self.busy -= 1
            self.xlio_knows = 1 if rc == 0 else 0
        return self.xlio_knows == 1

    def forget_offload_state(self) -> None:
        """After bind/connect (transport rules apply there): ask XLIO again; a callback XLIO
        refused before may be accepted now."""
        self.known_offloaded = False
        self.xlio_knows = -1        # libvma forgets a kernel-served UDP socket at bind/connect
        if self.state == ENGINE_OPEN and self.callback_wanted() and not self.cb_registered:
            try:
                self.register()
            except OSError:
                pass

    @property
    def offloaded(self) -> object:
        """True/False when XLIO can tell (False without XLIO), None when it cannot."""
        if self.state != ENGINE_OPEN:
            return False
        cdef int truth = self.offload_truth()
        return None if truth < 0 else truth == 1

    @property
    def callback_path(self) -> object:
        """Who runs the receive callback of this socket's datagrams: "xlio" (XLIO, on the
        datagrams it offloads; pyxlio on any that arrive as copies), "pyxlio" (pyxlio, on every
        datagram its receive calls take), or None when no callback or filter is set."""
        if not self.callback_wanted():
            return None
        return "xlio" if self.cb_registered and self.offload_truth() != 0 else "pyxlio"

    # -- storage pool -------------------------------------------------------------------------
    cdef store_t *take_store(self, Py_ssize_t cap) except NULL:
        cdef store_t *st
        cdef int i
        for i in range(self.npool - 1, -1, -1):
            st = self.pool[i]
            if st.cap >= cap:
                self.pool[i] = self.pool[self.npool - 1]
                self.npool -= 1
                store_reset(st)
                return st
        st = store_new(cap)
        if st == NULL:
            raise MemoryError()
        return st

    cdef void give_store(self, store_t *st) noexcept:
        if st == NULL:
            return
        if self.npool < POOL_MAX and self.state == ENGINE_OPEN:
            store_reset(st)
            self.pool[self.npool] = st
            self.npool += 1
        else:
            store_del(st)

    # -- live batches -------------------------------------------------------------------------
    cdef void link(self, PacketBatch b) noexcept:
        b._prev = NULL
        b._next = self.head
        if self.head != NULL:
            (<PacketBatch>self.head)._prev = <PyObject *>b
        self.head = <PyObject *>b
        b.linked = True

    cdef void unlink(self, PacketBatch b) noexcept:
        if not b.linked:
            return
        if b._prev != NULL:
            (<PacketBatch>b._prev)._next = b._next
        elif self.head == <PyObject *>b:
            self.head = b._next
        if b._next != NULL:
            (<PacketBatch>b._next)._prev = b._prev
        b._prev = NULL
        b._next = NULL
        b.linked = False

    # -- the guards of every use of the fd ----------------------------------------------------
    cdef int enter_receive(self) except -1:
        """A receive may start: not inside a callback, engine OPEN."""
        if cb_depth() > 0:
            raise RuntimeError("pyxlio: no receive call inside a receive callback (it runs "
                               "inside XLIO's own receive path): return a verdict instead")
        self.check_fork()
        if self.state != ENGINE_OPEN:
            raise OSError(EBADF, "Bad file descriptor: the socket is closed")
        return 0

    cdef void check_fork(self) noexcept:
        """In a forked child the threads counted in `busy` do not exist, and the deferred
        frees are the parent's packets: forget both."""
        cdef unsigned long gen = fork_generation()
        if gen != self.fork_gen:
            self.fork_gen = gen
            self.busy = 0
            self.ndeferred = 0

    cdef void wait_idle(self) noexcept:
        """Wait (without the GIL) until no thread is inside a nogil section using the fd.
        A receive waiting for data notices a close within one poll slice."""
        self.check_fork()
        while self.busy > 0:
            with nogil:
                usleep(200)

    cdef int free_entries(self, free_ent_t *ents, Py_ssize_t count, unsigned long gen) except -1:
        """Give `count` packet ids to the provider: once, on this socket, never in a forked
        child and never inside a callback (deferred to the thread's next pyxlio call then).
        The ids were marked freed (under the GIL) by the caller.  Raises XlioError when the
        provider refuses."""
        cdef int rc = 0, err = 0
        if count <= 0 or gen != fork_generation() or self.state == ENGINE_CLOSED:
            return 0
        if cb_depth() > 0:
            if grow(<void **>&self.deferred, &self.defcap, self.ndeferred + <size_t>count,
                    sizeof(free_ent_t), 16) != 0:
                raise MemoryError()
            memcpy(&self.deferred[self.ndeferred], ents, <size_t>count * sizeof(free_ent_t))
            self.ndeferred += <size_t>count
            return 0
        self.busy += 1
        if short_call(True, count, 0):
            rc = self.ops.free_packets(self.fd, <pyxlio_zc_packet_t *>ents, <size_t>count)
            if rc != 0:
                err = errno
        else:
            with nogil:
                rc = self.ops.free_packets(self.fd, <pyxlio_zc_packet_t *>ents, <size_t>count)
                if rc != 0:
                    err = errno
        self.busy -= 1
        if rc != 0:
            raise_xlio(err, "recvfrom_zcopy_free_packets", f"fd {self.fd}")
        return 0

    cdef inline int after_provider(self) except -1:
        """This thread is out of the provider (and of any callback): promote the packets its
        callbacks held, make the frees they deferred.  (Inline: nothing to do, mostly.)"""
        if self.staged or self.ndeferred:
            return self.after_provider_work()
        return 0

    cdef int after_provider_work(self) except -1:
        cdef free_ent_t *ents
        cdef size_t n
        if cb_depth() > 0:
            return 0
        self.check_fork()
        if self.staged:
            self.promote(PyThread_get_thread_ident(), False)
        if self.ndeferred:
            ents, n = self.deferred, self.ndeferred
            self.deferred, self.ndeferred, self.defcap = NULL, 0, 0
            try:
                self.free_entries(ents, <Py_ssize_t>n, fork_generation())
            finally:
                free(ents)
        return 0

    cdef void promote(self, unsigned long tid, bint everyone) noexcept:
        """Move HOLD packets staged by thread `tid` (or by every thread) into `held`."""
        cdef list keep = []
        cdef PacketBatch b
        for entry in self.staged:
            if everyone or entry[0] == tid:
                b = entry[1]
                if b.live:
                    self.link(b)
                    self._held.append(b.packet(0))
            else:
                keep.append(entry)
        self.staged = keep

    @property
    def held(self) -> object:
        """The packets receive callbacks held, oldest first (a deque)."""
        self.after_provider()
        return self._held

    # -- receiving ----------------------------------------------------------------------------
    cdef inline int raise_pending(self) except -1:
        """Before a receive: what earlier calls or callbacks left to raise."""
        if self.staged or self.ndeferred or self.pending_err or self.cb_errors:
            return self.raise_pending_work()
        return 0

    cdef int raise_pending_work(self) except -1:
        cdef int err
        self.after_provider()
        if self.pending_err:
            err, self.pending_err = self.pending_err, 0
            raise XlioError(err, "the provider returned a malformed zero-copy answer; the "
                            "datagrams before it were delivered, its packets were not touched",
                            "recvfrom_zcopy")
        if self.cb_errors:
            self.raise_callback_errors()
        return 0

    cdef int raise_callback_errors(self) except -1:
        if not self.cb_errors:
            return 0
        first = self.cb_errors[0]
        more = len(self.cb_errors) - 1
        self.cb_errors.clear()
        if more and hasattr(first, "add_note"):
            first.add_note(f"pyxlio: {more} more exception(s) from the receive callback were "
                           "dropped after this one")
        raise first

    def check_callback_errors(self) -> None:
        """Raise the first exception a receive callback raised since the last check."""
        self.after_provider()
        self.raise_callback_errors()

    cdef bint interrupted(self):
        """A callback was interrupted (KeyboardInterrupt, SystemExit): the user wants to stop."""
        for exc in self.cb_errors:
            if not isinstance(exc, Exception):
                return True
        return False

    def check_interrupts(self) -> None:
        """Raise a KeyboardInterrupt / SystemExit that hit a receive callback, at once."""
        self.after_provider()
        if self.cb_errors and self.interrupted():
            self.raise_interrupt()

    cdef int raise_interrupt(self) except -1:
        for i, exc in enumerate(self.cb_errors):
            if not isinstance(exc, Exception):
                del self.cb_errors[i]
                raise exc
        return 0

    def take_callback_errors(self) -> list:
        """The callback exceptions not raised yet (and forget them)."""
        errors = list(self.cb_errors)
        self.cb_errors.clear()
        return errors

    cdef void provider_error(self, str what) noexcept:
        try:
            self.cb_errors.append(XlioError(EPROTO, f"the provider called {what}; pyxlio did "
                                            "not read it", "register_recv_callback"))
        except BaseException:
            pass

    cdef double rcvtimeo(self):
        """SO_RCVTIMEO of the socket in seconds (0: none), read only when about to wait."""
        cdef timeval tv
        cdef socklen_t length = sizeof(tv)
        tv.tv_sec = 0
        tv.tv_usec = 0
        if getsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &length) != 0:
            return 0.0
        return tv.tv_sec + tv.tv_usec / 1e6

    cdef int discard(self, store_t *st, Py_ssize_t n) except -1:
        """Free the zero-copy packets a receive got when it may not hand them out."""
        cdef Py_ssize_t count, marked
        if store_free_room(st, <size_t>ids_to_free(st, 0, n)) != 0:
            raise MemoryError()
        count = collect_frees(st, 0, n, st.frees, &marked)
        st.n = 0
        self.free_entries(st.frees, count, fork_generation())
        return 0

    cdef bint plan_pass(self, Py_ssize_t *maxp, int extra_flags, int ts_mode,
                        bint *want_ts) noexcept:
        """How the next receive pass reads (recv_batch, recvfrom_zcopy and the Poller alike):
        returns whether through XLIO's zero-copy receive (force=True must reach XLIO, which
        alone can refuse a copy); on the kernel path *maxp is cut to KERNEL_BATCH_BYTES and
        *want_ts says whether to ask the kernel's receive times (pyxlio's own callbacks report
        them; recv_batch(timestamps=...) asks for them)."""
        cdef bint zc_path = self.use_zcopy() or (
            self.zc and (extra_flags & PYXLIO_MSG_XLIO_ZCOPY_FORCE) != 0)
        cdef size_t slot = self.max_datagram
        want_ts[0] = False
        if zc_path:
            return True
        if <size_t>maxp[0] * slot > KERNEL_BATCH_BYTES:
            maxp[0] = max(1, <Py_ssize_t>(KERNEL_BATCH_BYTES // slot))
        want_ts[0] = self.callback_wanted() and self.enable_timestamps()
        if ts_mode != TS_OFF:
            want_ts[0] = self.enable_ts_mode(ts_mode) or want_ts[0]
        return False

    cdef Py_ssize_t finish_pass(self, store_t *st, Py_ssize_t n, int *err, bint zc_path,
                                int ts_mode) except -3:
        """What every receive pass does under the GIL once `st` was filled without it
        (recv_batch, recvfrom_zcopy and the Poller alike).  The state is checked again: closed
        meanwhile, what came is freed, never handed out (PASS_CLOSED).  Then pyxlio's own
        callbacks, counted busy (a close() from another thread while they run, and they may
        release the GIL, waits for them, so what they leave is freed on an open fd), and the
        packets XLIO held in this pass promoted.  Returns the datagrams to hand out (>= 0,
        st.n set, missing stamps filled), or -1 with *err saying why there are none (EAGAIN:
        every datagram was dropped or held, keep waiting)."""
        if self.state != ENGINE_OPEN:
            if n > 0:
                self.discard(st, n)
            return PASS_CLOSED
        if n > 0 and self.callback_wanted():
            if err[0] == EPROTO:
                self.pending_err = EPROTO
            self.busy += 1
            try:
                n = self.software_callbacks(st, n)
            finally:
                self.busy -= 1
            if self.state != ENGINE_OPEN:
                if n > 0:
                    self.discard(st, n)
                return PASS_CLOSED
            if self.staged:
                # Out of the provider: this pass's XLIO-held packets go to `held` after the
                # ones pyxlio held in it, before any later pass's.
                self.promote(PyThread_get_thread_ident(), False)
            if n == 0 and not st.eof:
                store_reset(st)            # nothing of the dropped datagrams kept
                if err[0] == EPROTO:
                    self.pending_err = 0   # the caller raises it now
                elif err[0] == 0 or err[0] == EINTR:
                    err[0] = EAGAIN
                # any other error (it came after them) is the caller's to raise, not lost
                return -1
        if n >= 0:
            st.n = n
            if ts_mode != TS_OFF:
                stamp_missing(st, n, zc_path)
            if err[0] == EPROTO:
                self.pending_err = EPROTO
        return n

    cdef Py_ssize_t receive(self, store_t *st, Py_ssize_t maxp, double timeout,
                            int extra_flags, bint want_addr=True, int ts_mode=TS_OFF) except -2:
        """Fill `st`; returns the count, 0 when nothing came in time (or at EOF).

        pyxlio does its own waiting: every receive call is non-blocking, and in between it
        waits in poll() without the GIL, in slices, checking signals and the engine's state
        after each, so Ctrl-C and a close() from another thread are prompt whatever the
        provider does.  `timeout` < 0 is a blocking socket, bounded by its SO_RCVTIMEO if set.
        The engine's state is checked again after every nogil section: a receive that ends
        after close() began frees what it got and raises OSError(EBADF)."""
        cdef int err = 0
        cdef Py_ssize_t n
        cdef int flags0 = extra_flags | MSG_DONTWAIT
        cdef bint bounded = timeout > 0
        cdef double deadline = 0.0
        cdef double remaining, limit
        cdef bint waited = False
        cdef pollfd pfd
        cdef int ms, prc
        cdef size_t slot = self.max_datagram
        cdef bint zc_path, want_ts = False
        self.enter_receive()
        try:
            zc_path = self.plan_pass(&maxp, extra_flags, ts_mode, &want_ts)
            while True:
                self.busy += 1
                if short_call(zc_path, maxp, slot):
                    n = fill_pass(self, st, zc_path, maxp, flags0, slot, want_addr, want_ts,
                                  &err)
                else:
                    with nogil:
                        n = fill_pass(self, st, zc_path, maxp, flags0, slot, want_addr,
                                      want_ts, &err)
                self.busy -= 1
                n = self.finish_pass(st, n, &err, zc_path, ts_mode)
                if n >= 0:
                    return n
                if n == PASS_CLOSED or self.state != ENGINE_OPEN:
                    raise OSError(EBADF, "Bad file descriptor: the socket was closed during "
                                  "the receive")
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                if err == EPROTO:
                    raise XlioError(EPROTO, "the provider returned a malformed zero-copy "
                                    "answer; pyxlio did not read it (its packets were not "
                                    "touched)", "recvfrom_zcopy")
                if err != EAGAIN:   # EWOULDBLOCK == EAGAIN on Linux
                    if err == EIO and (extra_flags & PYXLIO_MSG_XLIO_ZCOPY_FORCE):
                        raise XlioError(EIO, "the datagram came through the kernel and "
                                        "force=True refuses a copy", "recvfrom_zcopy")
                    raise OSError(err, strerror(err).decode("utf-8", "replace"))
                if timeout == 0:
                    return 0
                if not waited:
                    waited = True
                    if timeout < 0:
                        limit = self.rcvtimeo()
                        bounded = limit > 0
                    else:
                        limit = timeout
                    if bounded:
                        deadline = time.monotonic() + limit
                if self.staged:
                    self.promote(PyThread_get_thread_ident(), False)   # out of the provider
                ms = POLL_SLICE_MS
                if bounded:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return 0
                    if remaining * 1000.0 < POLL_SLICE_MS:
                        ms = <int>(remaining * 1000.0) + 1
                pfd.fd = self.fd
                pfd.events = POLLIN
                pfd.revents = 0
                self.busy += 1
                with nogil:
                    prc = poll(&pfd, 1, ms)
                self.busy -= 1
                PyErr_CheckSignals()
                if self.state != ENGINE_OPEN:
                    raise OSError(EBADF, "Bad file descriptor: the socket was closed during "
                                  "the receive")
        finally:
            self.after_provider()

    cdef Py_ssize_t software_callbacks(self, store_t *st, Py_ssize_t n) except -1:
        """Run the filter and the callback on the datagrams XLIO did not run them on (every
        copied datagram; every datagram when XLIO has no registration), in order, with the
        same verdicts: DROP removes the datagram (freeing it if zero-copy), HOLD moves it into
        `held`, RECV keeps it.  Returns the datagrams kept, compacted at the front of `st`."""
        cdef Py_ssize_t i, w = 0
        cdef slot_t *s
        cdef int v
        cdef bint xlio_ran = self.cb_registered
        cdef object local = None
        for i in range(n):
            s = &st.slots[i]
            if not (xlio_ran and (s.flags & SLOT_ZC)):
                if local is None:
                    local = self.local_sockaddr()
                v = self.software_verdict(st, i, local)
                if v == PYXLIO_PACKET_DROP:
                    if s.flags & SLOT_ZC:
                        self.free_slot(st, i)
                    continue
                if v == PYXLIO_PACKET_HOLD:
                    self.hold_slot(st, i)
                    continue
            if w != i:
                st.slots[w] = st.slots[i]
                st.lens[w] = st.lens[i]
            w += 1
        return w

    cdef bint enable_timestamps(self) noexcept:
        """SO_TIMESTAMPNS on, once (software callbacks on the kernel path report the kernel's
        receive time).  False when the kernel refuses."""
        cdef int on = 1
        if self.timestamps == 0:
            self.timestamps = 1 if setsockopt(self.fd, SOL_SOCKET, SO_TIMESTAMPNS, &on,
                                              sizeof(on)) == 0 else -1
        return self.timestamps == 1

    cdef bint enable_ts_mode(self, int mode) noexcept:
        """recv_batch(timestamps=...): SO_TIMESTAMPNS (software), or SO_TIMESTAMPING with
        the NIC's raw hardware stamps and the kernel's software ones (hardware), once.  False
        when the kernel refuses (the datagrams then carry pyxlio's own reading)."""
        cdef int flags = PYXLIO_TS_FLAGS
        if mode == TS_HARDWARE:
            if self.hw_timestamps == 0:
                self.hw_timestamps = 1 if setsockopt(self.fd, SOL_SOCKET, SO_TIMESTAMPING,
                                                     &flags, sizeof(flags)) == 0 else -1
            return self.hw_timestamps == 1 or self.enable_timestamps()
        return self.enable_timestamps()

    def switch_timestamps(self, object timestamps=True) -> bool:
        """Switch the kernel's receive timestamps on now (recv_batch(timestamps=...) does it
        at its first call; datagrams queued before that carry pyxlio's own reading)."""
        cdef int mode = ts_mode_of(timestamps)
        if self.state != ENGINE_OPEN:
            raise OSError(EBADF, "Bad file descriptor: the socket is closed")
        return mode != TS_OFF and self.enable_ts_mode(mode)

    cdef bytes local_sockaddr(self):
        cdef char addr[ADDR_BYTES]
        cdef socklen_t length = ADDR_BYTES
        if getsockname(self.fd, <sockaddr *>addr, &length) != 0 or length > ADDR_BYTES:
            return b""
        return addr[:length]

    cdef int software_verdict(self, store_t *st, Py_ssize_t i, bytes local) except -1:
        cdef slot_t *s = &st.slots[i]
        cdef filter_t *f = <filter_t *>atomic_get_ptr(&self.cb.filter)
        cdef iovec one
        cdef iovec *iov = &one
        cdef size_t nfr = 1
        cdef RecvInfo ri
        cdef int v = PYXLIO_PACKET_RECV
        cdef timespec now
        if s.nfrags > 1:
            iov = &st.frags[s.frag_index]
            nfr = s.nfrags
        else:
            one.iov_base = slot_data(st, s)
            one.iov_len = st.lens[i]
        if f != NULL and match_at(iov, nfr, f.offset, f.pattern, f.plen) != f.keep:
            atomic_add_ull(&self.cb.filtered, 1)
            return PYXLIO_PACKET_DROP
        if not atomic_get(&self.cb.has_fn):
            return PYXLIO_PACKET_RECV
        # A copy for the callback: the datagram's memory is the batch's, reused once the
        # batch is released, and a view the callback keeps must never see that.
        data = slot_bytes(st, &st.slots[i], st.lens[i])
        ri = RecvInfo.__new__(RecvInfo)
        ri.fd = self.fd
        ri.fragments = nfr
        ri.payload_size = st.lens[i]
        ri.software = True
        if s.ts_ns:
            ri.sw_timestamp_ns = s.ts_ns            # the kernel's receive time
        else:
            clock_gettime(CLOCK_REALTIME, &now)     # none: when pyxlio took the datagram
            ri.sw_timestamp_ns = now.tv_sec * 1000000000LL + now.tv_nsec
        ri._srclen = s.addrlen
        memcpy(ri._src, s.addr, s.addrlen)
        ri._dstlen = <socklen_t>len(local)
        if ri._dstlen:
            memcpy(ri._dst, <const char *>local, ri._dstlen)
        cb_enter()
        try:
            verdict = self.cb_fn(memoryview(data), ri)
            if isinstance(verdict, bool) or not isinstance(verdict, int) or not 0 <= verdict <= 2:
                raise TypeError(f"the receive callback must return a pyxlio.Verdict, not "
                                f"{verdict!r}: the datagram was delivered (RECV)")
            v = verdict
        except BaseException as exc:
            self.cb_errors.append(exc)
            v = PYXLIO_PACKET_RECV
        finally:
            cb_leave()
        return v

    cdef int free_slot(self, store_t *st, Py_ssize_t i) except -1:
        """A zero-copy datagram the software filter or callback dropped: back to XLIO."""
        cdef Py_ssize_t count, marked
        cdef free_ent_t one
        cdef free_ent_t *ents = &one
        if st.slots[i].id_count > 1:
            ents = <free_ent_t *>malloc(st.slots[i].id_count * sizeof(free_ent_t))
            if ents == NULL:
                raise MemoryError()
        count = collect_frees(st, i, i + 1, ents, &marked)
        try:
            self.free_entries(ents, count, fork_generation())
        finally:
            if ents != &one:
                free(ents)
        return 0

    cdef int hold_slot(self, store_t *st, Py_ssize_t i) except -1:
        """A datagram the software callback held: into a batch of its own, in `held` at once
        (no provider is processing it).  A copy keeps its bytes; a zero-copy datagram keeps its
        buffers and ids."""
        cdef slot_t *s = &st.slots[i]
        cdef store_t *nst = store_new(1)
        cdef slot_t *d
        cdef PacketBatch b
        if nst == NULL:
            raise MemoryError()
        d = &nst.slots[0]
        d[0] = s[0]
        d.exports = 0
        nst.lens[0] = st.lens[i]
        if (s.nfrags > 1 and store_frag_room(nst, s.nfrags) != 0) or \
                (s.id_count > 1 and store_id_room(nst, s.id_count) != 0) or \
                (not (s.flags & SLOT_ZC) and store_copy_room(nst, st.lens[i], st.lens[i]) != 0):
            store_del(nst)
            raise MemoryError()
        if s.nfrags > 1:
            memcpy(nst.frags, &st.frags[s.frag_index], s.nfrags * sizeof(iovec))
            nst.fragused = s.nfrags
            d.frag_index = 0
        if s.id_count > 1:
            memcpy(nst.ids, &st.ids[s.id_index], s.id_count * sizeof(void *))
            nst.idused = s.id_count
            d.id_index = 0
        if not (s.flags & SLOT_ZC) and st.lens[i] > 0:
            memcpy(nst.copybuf, slot_data(st, s), st.lens[i])
            nst.copyused = st.lens[i]
            d.data_off = 0
        nst.n = 1
        b = self.make_batch(nst, 1)
        self._held.append(b.packet(0))
        return 0

    cdef PacketBatch make_batch(self, store_t *st, Py_ssize_t n):
        """FILLING -> LIVE: the batch owns the store, counts in `outstanding`, is linked."""
        cdef PacketBatch b = PacketBatch.__new__(PacketBatch)
        cdef Py_ssize_t i, zc = 0
        b.engine = self
        b.st = st
        b.n = n
        b.eof = st.eof
        b.gen = fork_generation()
        for i in range(n):
            if st.slots[i].flags & SLOT_ZC:
                zc += 1
        b.live_zc = zc
        b.nzc = zc
        b.unreleased = n
        b.live = True
        self.outstanding += zc
        self.link(b)
        return b

    def recv_batch(self, Py_ssize_t max_packets=64, timeout=None, *, bint addresses=True,
                   object timestamps=False) -> PacketBatch:
        """Receive up to `max_packets` datagrams in one call: pyxlio.socket.socket.recv_batch
        (this is that method, on an instance), whose docstring says it all."""
        if max_packets < 1 or max_packets > MAX_PACKETS:
            raise ValueError(f"max_packets must lie in 1 .. {MAX_PACKETS}, not {max_packets}")
        cdef int ts_mode = ts_mode_of(timestamps)
        cdef double t = self.timeout if timeout is None else check_timeout(timeout)
        if self.state != ENGINE_OPEN:
            raise OSError(EBADF, "Bad file descriptor: the socket is closed")
        self.raise_pending()
        cdef store_t *st = self.take_store(max_packets)
        cdef Py_ssize_t n
        try:
            n = self.receive(st, max_packets, t, 0, addresses, ts_mode)
        except BaseException:
            self.give_store(st)
            raise
        if n == 0 and (self.cb_errors or self.pending_err):
            self.give_store(st)
            self.raise_pending()
        b = self.make_batch(st, n)
        b.has_ts = ts_mode != TS_OFF
        if self.cb_errors and self.interrupted():
            b.finish(True)          # Ctrl-C wins over the datagrams in hand
            self.raise_interrupt()
        # With datagrams in hand, a callback's exception waits for the next receive call:
        # raising now would lose them.
        return b

    def recvfrom_zcopy(self, object flags=0, bint force=False) -> Packet:
        """Receive one datagram without copying it, when XLIO can:
        pyxlio.socket.socket.recvfrom_zcopy (this is that method, on an instance), whose
        docstring says it all."""
        cdef int cflags = 0
        if flags is not 0:           # (the common call pays no Python arithmetic)
            if isinstance(flags, bool) or not isinstance(flags, int):
                raise TypeError(f"flags must be an int, not {type(flags).__name__}")
            if not -2**31 <= flags < 2**31 or flags & ~RECV_FLAGS_ALLOWED:
                raise ValueError(
                    f"flags {flags:#x}: recvfrom_zcopy takes only MSG_DONTWAIT and "
                    "MSG_ZCOPY_FORCE (MSG_PEEK, MSG_TRUNC, MSG_WAITALL, MSG_ERRQUEUE and the "
                    "rest have no zero-copy meaning; MSG_ZCOPY is set by XLIO on output)")
            cflags = flags
        if self.state != ENGINE_OPEN:
            raise OSError(EBADF, "Bad file descriptor: the socket is closed")
        cdef double t = 0.0 if cflags & MSG_DONTWAIT else self.timeout
        cflags &= ~MSG_DONTWAIT
        if cflags & PYXLIO_MSG_XLIO_ZCOPY_FORCE:      # the flag spelled out: same as force=True
            force = True
            cflags &= ~PYXLIO_MSG_XLIO_ZCOPY_FORCE
        self.raise_pending()
        if force:
            if not self.zc:
                if self.ops.cap_mask == 0:
                    raise XlioNotLoadedError(
                        "recvfrom_zcopy",
                        "force=True needs XLIO's zero-copy receive, and none is loaded: the "
                        "data would be copied")
                # The layout has no zero-copy receive (libxlio 3.60 removed it): the member is
                # missing, not the datagram's path, so UnsupportedError (not EIO).
                from pyxlio.errors import UnsupportedError
                from pyxlio.constants import Layout
                raise UnsupportedError(
                    "recvfrom_zcopy",
                    f"force=True: the loaded XLIO (layout {Layout(self.ops.layout)}) has no "
                    "zero-copy receive (libxlio 3.60 removed it): the data could only be "
                    "copied; the datagram was not read")
            if not self.known_offloaded and not self.xlio_serves_fd():
                raise XlioError(
                    EIO, "force=True: XLIO does not serve this socket (it was made while "
                    "offload was off, or before XLIO was loaded), so its data can only be "
                    "copied; the datagram was not read", "recvfrom_zcopy")
            cflags |= PYXLIO_MSG_XLIO_ZCOPY_FORCE
        cdef store_t *st = self.take_store(1)
        cdef Py_ssize_t n
        cdef bint eof
        try:
            n = self.receive(st, 1, t, cflags)
        except BaseException:
            self.give_store(st)
            raise
        if n == 0:
            eof = st.eof
            self.give_store(st)
            self.raise_pending()
            if eof:
                return None
            if t == 0:
                raise BlockingIOError(EAGAIN, "Resource temporarily unavailable")
            raise TimeoutError("timed out")
        b = self.make_batch(st, n)
        if self.cb_errors and self.interrupted():
            b.finish(True)          # Ctrl-C wins over the datagram in hand
            self.raise_interrupt()
        return b.packet(0)

    # -- callbacks ----------------------------------------------------------------------------
    cdef bint callback_wanted(self) noexcept:
        return atomic_get(&self.cb.has_fn) or atomic_get_ptr(&self.cb.filter) != NULL

    cdef int register(self) except -1:
        """Make XLIO's registration match what is set (a function or a filter).

        Where XLIO will not run the callback (no XLIO, a layout without callbacks, a socket it
        refuses), pyxlio runs it itself on the datagrams its receive calls take: setting a
        callback never fails for want of XLIO.  An unregistration XLIO refuses raises."""
        cdef bint want = self.callback_wanted()
        cdef int rc, err = 0
        if want:
            # From now on, so the datagrams already on their way are stamped too.
            self.enable_timestamps()
        if want == self.cb_registered or self.ops.register_recv_callback == NULL:
            return 0
        if want and self.sotype != SOCK_DGRAM:
            # Receive callbacks are a datagram facility: on a stream pyxlio runs the callback
            # on each chunk its receive calls take (XLIO's own TCP callbacks differ by
            # release and run on segments, not on what a receive call returns).
            return 0
        if want:
            note_provider_calls_python()     # before XLIO can call the trampoline
        with nogil:
            if want:
                rc = self.ops.register_recv_callback(self.fd, recv_callback, self.cb)
            else:
                rc = self.ops.register_recv_callback(self.fd, NULL, NULL)
            if rc != 0:
                err = errno
        if rc != 0:
            if want:
                return 0           # XLIO refuses this socket: pyxlio runs the callback
            raise_xlio(err, "register_recv_callback", f"fd {self.fd}")
        if want:
            Py_INCREF(self)        # the registration's reference (see callbacks.pxi)
        self.cb_registered = want
        if not want:
            Py_DECREF(self)
        return 0

    def set_recv_callback(self, fn: object) -> None:
        if self.state != ENGINE_OPEN:
            raise OSError(EBADF, "Bad file descriptor: the socket is closed")
        if fn is not None and not callable(fn):
            raise TypeError(f"the receive callback must be callable or None, not "
                            f"{type(fn).__name__}")
        old_fn, old_has = self.cb_fn, atomic_get(&self.cb.has_fn)
        self.cb_fn = fn
        atomic_set(&self.cb.has_fn, fn is not None)
        try:
            self.register()
        except BaseException:
            self.cb_fn = old_fn
            atomic_set(&self.cb.has_fn, old_has)
            raise

    def set_recv_filter(self, offset: int, pattern: bytes, keep: bool = True) -> None:
        if self.state != ENGINE_OPEN:
            raise OSError(EBADF, "Bad file descriptor: the socket is closed")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError("offset must be an int")
        if not 0 <= offset <= 65535:
            raise ValueError(f"offset {offset} is out of range (0 .. 65535)")
        data = bytes(pattern)
        if not 1 <= len(data) <= 64:
            raise ValueError("pattern must be 1 to 64 bytes long")
        cdef filter_t *f = <filter_t *>calloc(1, sizeof(filter_t))
        if f == NULL:
            raise MemoryError()
        memcpy(f.pattern, <const char *>data, len(data))
        f.plen = len(data)
        f.offset = offset
        f.keep = bool(keep)
        self.swap_filter(f)

    cdef int swap_filter(self, filter_t *f) except -1:
        """Publish filter `f` (NULL: none) and register accordingly; on failure put the old
        one back (a new immutable copy is never needed: the old pointer was only retired)."""
        cdef void *old = atomic_get_ptr(&self.cb.filter)
        cdef filter_t *again = NULL
        if ctx_publish_filter(self.cb, f) != 0:
            free(f)
            raise MemoryError()
        try:
            self.register()
        except BaseException:
            if old != NULL:
                again = <filter_t *>malloc(sizeof(filter_t))
                if again != NULL:
                    memcpy(again, old, sizeof(filter_t))
            ctx_publish_filter(self.cb, again)
            raise
        return 0

    def clear_recv_filter(self) -> None:
        if atomic_get_ptr(&self.cb.filter) == NULL:
            return
        if self.state == ENGINE_OPEN:
            self.swap_filter(NULL)
        else:
            ctx_publish_filter(self.cb, NULL)

    @property
    def filtered(self) -> int:
        """Datagrams the C filter dropped."""
        return atomic_get_ull(&self.cb.filtered)

    cdef pyxlio_verdict_t call_fn(self, int fd, size_t sz_iov, iovec *iov,
                                  pyxlio_recv_info_t *info) noexcept:
        """The Python receive callback, with the GIL, inside the provider's receive path.
        Never lets an exception escape.  A HOLD packet is staged, not put in `held`: the
        provider still has it until this thread is out of its receive path (after_provider).
        """
        cdef PacketBatch b = None
        cdef Packet pkt
        cdef store_t *st
        cdef slot_t *s
        cdef size_t k, total = 0
        cdef int v = PYXLIO_PACKET_RECV
        cdef bint entered = False
        if self.state != ENGINE_OPEN:
            return PYXLIO_PACKET_RECV       # closing: nothing may be held any more
        if self.ops.free_packets == NULL:
            return self.call_fn_unheld(fd, sz_iov, iov, info)
        try:
            if self.staged:
                # This thread's earlier HOLDs: the provider moved on to the next packet.
                self.promote(PyThread_get_thread_ident(), False)
            # The trampoline checked the packet (cb_packet_ok) before calling us.
            for k in range(sz_iov):
                total += iov[k].iov_len
            st = self.take_store(1)
            s = &st.slots[0]
            slot_clear(s)
            s.flags = SLOT_ZC
            s.packet_id = info.packet_id
            s.nfrags = <uint32_t>sz_iov
            if sz_iov >= 1:
                s.data = <char *>iov[0].iov_base
            if sz_iov > 1:
                if store_frag_room(st, sz_iov) != 0:
                    self.give_store(st)
                    raise MemoryError()
                s.frag_index = 0
                for k in range(sz_iov):
                    st.frags[k] = iov[k]
                st.fragused = sz_iov
            st.lens[0] = <uint32_t>total
            copy_sockaddr(info.src, s.addr, &s.addrlen)
            st.n = 1
            b = PacketBatch.__new__(PacketBatch)
            b.engine = self
            b.st = st
            b.n = 1
            b.unreleased = 1
            b.gen = fork_generation()
            b.borrowed = True           # the provider owns it unless we say HOLD
            b.live = True
            pkt = b.packet(0)
            ri = make_recv_info(fd, sz_iov, total, info)
            cb_enter()
            entered = True
            view = memoryview(pkt) if sz_iov <= 1 else memoryview(pkt.tobytes())
            try:
                verdict = self.cb_fn(view, ri)
            finally:
                view.release()
                view = None
            if isinstance(verdict, bool) or not isinstance(verdict, int) or not 0 <= verdict <= 2:
                raise TypeError(f"the receive callback must return a pyxlio.Verdict, not "
                                f"{verdict!r}: the datagram was delivered (RECV)")
            v = verdict
        except BaseException as exc:
            self.cb_errors.append(exc)
            v = PYXLIO_PACKET_RECV
        if entered:
            cb_leave()
        try:
            if b is not None:
                if v == PYXLIO_PACKET_HOLD or b.st.slots[0].exports > 0:
                    if v != PYXLIO_PACKET_HOLD:
                        self.cb_errors.append(BufferError(
                            "the receive callback kept a view of the datagram after returning; "
                            "pyxlio held the packet (see sock.held) so the memory stays valid"))
                        v = PYXLIO_PACKET_HOLD
                    b.borrowed = False
                    b.live_zc = 1
                    b.nzc = 1
                    self.outstanding += 1
                    self.staged.append((PyThread_get_thread_ident(), b))
                else:
                    b.abandon()
        except BaseException as exc:
            self.cb_errors.append(exc)
        return <pyxlio_verdict_t>v

    cdef pyxlio_verdict_t call_fn_unheld(self, int fd, size_t sz_iov, iovec *iov,
                                         pyxlio_recv_info_t *info) noexcept:
        """A layout whose XLIO runs callbacks but cannot take a held packet back (3.60: no
        recvfrom_zcopy_free_packets).  The callback sees a copy (a view it keeps stays
        valid), and HOLD is refused: the datagram is delivered (RECV), UnsupportedError
        reported."""
        cdef size_t k, total = 0
        cdef Py_ssize_t pos = 0
        cdef char *dst
        cdef int v = PYXLIO_PACKET_RECV
        try:
            for k in range(sz_iov):      # checked by the trampoline (cb_packet_ok)
                total += iov[k].iov_len
            data = bytearray(total)
            dst = data
            for k in range(sz_iov):
                if iov[k].iov_len:
                    memcpy(dst + pos, iov[k].iov_base, iov[k].iov_len)
                    pos += iov[k].iov_len
            ri = make_recv_info(fd, sz_iov, total, info)
            cb_enter()
            try:
                verdict = self.cb_fn(memoryview(bytes(data)), ri)
            finally:
                cb_leave()
            if isinstance(verdict, bool) or not isinstance(verdict, int) or not 0 <= verdict <= 2:
                raise TypeError(f"the receive callback must return a pyxlio.Verdict, not "
                                f"{verdict!r}: the datagram was delivered (RECV)")
            v = verdict
            if v == PYXLIO_PACKET_HOLD:
                v = PYXLIO_PACKET_RECV
                from pyxlio.errors import UnsupportedError
                raise UnsupportedError("register_recv_callback", "HOLD needs "
                                       "recvfrom_zcopy_free_packets, which this XLIO layout "
                                       "lacks: the datagram was delivered (RECV)")
        except BaseException as exc:
            self.cb_errors.append(exc)
        return <pyxlio_verdict_t>v

    # -- closing ------------------------------------------------------------------------------
    cdef int release_linked(self) except -1:
        """Release every LIVE batch (each is unlinked before its free call: no spin)."""
        cdef int count = 0
        while self.head != NULL:
            (<PacketBatch>self.head).finish(True)
            count += 1
        self._held.clear()
        return count

    def release_all(self) -> int:
        """Release every batch of this socket (refuses while a view is exported)."""
        if cb_depth() > 0:
            raise RuntimeError("pyxlio: release_all() inside a receive callback")
        self.after_provider()
        if self.exports > 0:
            raise BufferError(f"cannot release: {self.exports} memoryview(s) of the socket's "
                              "packets are still exported (release them first)")
        return self.release_linked()

    def close(self) -> None:
        """OPEN -> CLOSING -> CLOSED: free what the socket still holds and unregister its
        callback; the caller then closes the fd.  BufferError (and still OPEN) while a view is
        exported; RuntimeError inside a receive callback; waits for receives in other threads
        to leave (they raise OSError(EBADF)); a second close() waits for the first."""
        if self.state == ENGINE_CLOSED:
            return
        if cb_depth() > 0:
            raise RuntimeError("pyxlio: a socket cannot be closed inside a receive callback "
                               "(it runs inside XLIO's receive path): return a verdict and "
                               "close after the receive call")
        if self.state == ENGINE_CLOSING:
            while self.state != ENGINE_CLOSED:
                with nogil:
                    usleep(200)
            return
        self.after_provider()
        # A callback running in another thread exports the view it was given: wait for it.
        while self.exports > 0 and atomic_get(&self.cb.inflight) > 0:
            with nogil:
                usleep(200)
        if self.exports > 0:
            raise BufferError(f"cannot close the socket: {self.exports} memoryview(s) of its "
                              "packets are still exported (release them first)")
        self.state = ENGINE_CLOSING      # no new receive, no new export from here on
        try:
            self.wait_idle()
            # Callbacks of other threads (a callback that began before CLOSING may still run
            # Python and make views): wait until none is in the trampoline.
            while atomic_get(&self.cb.inflight) > 0:
                with nogil:
                    usleep(200)
            if self.exports > 0:
                # Such a callback kept a view: nothing may be freed.  Still OPEN, as if the
                # close had been refused at once.
                self.state = ENGINE_OPEN
                raise BufferError(f"cannot close the socket: {self.exports} memoryview(s) of "
                                  "its packets are still exported (a receive callback kept "
                                  "one): release them first")
            if self.staged:
                self.promote(0, True)
            self.release_linked()
            if self.ndeferred:
                self.after_provider()
            if self.cb_registered:
                atomic_set(&self.cb.has_fn, 0)
                ctx_publish_filter(self.cb, NULL)
                try:
                    self.register()
                except OSError:
                    # The provider no longer knows the fd: it cannot call us either.
                    self.cb_registered = False
                    Py_DECREF(self)
            self.cb_fn = None
            self.wait_idle()
        finally:
            if self.state == ENGINE_CLOSING:
                self.state = ENGINE_CLOSED
                for i in range(self.npool):
                    store_del(self.pool[i])
                self.npool = 0

    cdef void last_view_gone(self) noexcept:
        """The socket was finalized while views were exported (adopt_fd): with the last one
        gone, free what it holds and close the fd now rather than at some collection."""
        cdef int fd = self.owned_fd
        if fd < 0 or self.exports > 0 or self.state != ENGINE_OPEN or cb_depth() > 0:
            return
        try:
            self.close()
        except BaseException:
            return
        self.owned_fd = -1
        c_close(fd)

    def adopt_fd(self, int fd) -> None:
        """Keep `fd` open until every batch of this engine is gone (socket finalized early
        while views were exported).  The callback is unregistered now."""
        if self.cb_registered:
            atomic_set(&self.cb.has_fn, 0)
            ctx_publish_filter(self.cb, NULL)
            try:
                self.register()
            except OSError:
                pass
        self.owned_fd = fd


# At interpreter exit, before modules are torn down (which may never collect a socket, its
# batches or the callback that holds them), every open engine whose packets no view reads and
# on which no thread is receiving is closed: its packets go back to the provider, its callback is unregistered.  Packets a view
# still reads at that point are left to the provider, which reclaims them when the process's
# sockets close; nothing is freed under a reader.
_ENGINES = weakref.WeakSet()


def _close_engines_at_exit() -> None:
    cdef SocketEngine e
    for engine in list(_ENGINES):
        e = engine
        try:
            # Not one a (daemon) thread is receiving on: that thread simply ends with Python.
            if e.state == ENGINE_OPEN and e.exports == 0 and e.busy == 0:
                e.close()
        except BaseException:
            pass


atexit.register(_close_engines_at_exit)


@cython.final
@cython.auto_pickle(False)
cdef class _EngineMethod:
    """A method of pyxlio's socket that is the engine's own method on an instance.

    ``s.recv_batch`` on an instance is ``s._engine.recv_batch``: a call reaches the C code
    without a Python frame in between (a wrapper frame costs about a tenth of a one-datagram
    receive).  On the class it is the documented Python function (help(), inspect, type
    stubs and subclasses calling ``super().recv_batch(...)`` see exactly that), which takes
    the same arguments and does the same thing."""

    cdef readonly object __wrapped__
    cdef str name

    def __init__(self, func):
        self.__wrapped__ = func
        self.name = func.__name__

    def __get__(self, obj, objtype):
        if obj is None:
            return self.__wrapped__
        return getattr(obj._engine, self.name)

    @property
    def __doc__(self):
        return self.__wrapped__.__doc__
