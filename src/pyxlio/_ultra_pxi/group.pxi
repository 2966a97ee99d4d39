# PollGroup: an XLIO poll group, its queue's dispatch, and its close (included by _ultra.pyx).
# See the module docstring's "Dispatch" and "Group close".

from cpython.pythread cimport PyThread_get_thread_ident

cdef extern from "<time.h>" nogil:
    int nanosleep(const timespec *req, timespec *rem)


cdef int _check_handler(object fn, str name) except -1:
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")
    return 0


cdef bint _kept_elsewhere(UltraBuffer buf, BaseException exc):
    """After a handler raised: does anything but the traceback's frames hold `buf`?"""
    import gc
    frames = set()
    tb = exc.__traceback__
    while tb is not None:
        frames.add(id(tb.tb_frame))
        tb = tb.tb_next
    for ref in gc.get_referrers(buf):
        if id(ref) not in frames:
            return True
    return False


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class PollGroup:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """PollGroup(flags=GroupFlag(0), *, on_event=None, on_receive=None, on_complete=None, on_accept=None)
--

    An XLIO poll group: TCP sockets whose events, data and completions come through
    :meth:`poll`, which calls the handlers:

    - ``on_event(sock, event: SocketEvent, value: int)`` (value: the errno of an ERROR);
    - ``on_receive(sock, buf: UltraBuffer)``: received payload, in XLIO's buffer; returned to
      XLIO when the handler returns unless it keeps `buf` (then ``buf.release()`` it);
    - ``on_complete(sock, token)``: a zero-copy send (``send_zc``) is complete;
    - ``on_accept(new_sock, listener)``: a listening socket accepted a connection (3.60+).

    A socket's own handlers (``group.socket(on_...=)``, or its attributes) override the
    group's.  The first group initialises XLIO (:func:`init`) when the program has not.
    ``close()`` (or ``with``) destroys its sockets and the group.  Raises
    :class:`pyxlio.XlioNotLoadedError` without XLIO and :class:`pyxlio.UnsupportedError` where
    the loaded XLIO has no Ultra API.
    """

    cdef pyxlio_ugroup_t *g
    cdef readonly unsigned int flags
    cdef unsigned long gen
    cdef bint closed_flag
    cdef bint closing
    cdef bint dispatching
    cdef long dispatch_thread
    cdef dict by_ud                 # userdata_sq -> UltraSocket (live: not TERMINATED)
    cdef dict inflight              # userdata_op -> Completion
    cdef uintptr_t next_op
    cdef PyObject *buffers          # live UltraBuffers (borrowed; each unlinks itself)
    cdef Py_ssize_t nbuffers
    cdef Py_ssize_t unknown
    cdef Py_ssize_t unhandled
    cdef Py_ssize_t refused
    cdef Py_ssize_t dispatched
    cdef Py_ssize_t freeing         # free_xbuf calls waiting for (or holding) the mutex
    cdef public object on_event
    cdef public object on_receive
    cdef public object on_complete
    cdef public object on_accept
    cdef object __weakref__

    def __cinit__(self):
        self.g = NULL
        self.buffers = NULL
        self.by_ud = {}
        self.inflight = {}

    def __init__(self, flags: int = 0, *, on_event: object = None, on_receive: object = None,
                 on_complete: object = None, on_accept: object = None) -> None:
        cdef pyxlio_poll_group_attr_t attr
        cdef pyxlio_poll_group_t handle = 0
        cdef int rc, err
        if self.g != NULL:
            raise RuntimeError("PollGroup.__init__ called twice")
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"flags must be a GroupFlag, not {type(flags).__name__}")
        if flags & ~3 or flags < 0:
            raise ValueError(f"unknown group flags {flags:#x} (GroupFlag.SAFE, GroupFlag.DIRTY)")
        for name, fn in (("on_event", on_event), ("on_receive", on_receive),
                         ("on_complete", on_complete), ("on_accept", on_accept)):
            _check_handler(fn, name)
        require(<void *>pyxlio_u_ops.group_create, "xlio_poll_group_create")
        ensure_init()
        self.flags = flags
        self.on_event = on_event
        self.on_receive = on_receive
        self.on_complete = on_complete
        self.on_accept = on_accept
        self.gen = fork_generation()
        self.g = pyxlio_u_group_new()
        if self.g == NULL:
            raise MemoryError("cannot allocate the poll group's state")
        attr = pyxlio_u_group_attr(self.flags)
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.group_create(&attr, &handle)
            err = errno
        if rc != 0 or handle == 0:
            self.closed_flag = True
            _raise_ultra("xlio_poll_group_create", err,
                         "it returned no group" if rc == 0 else None)
        self.g.handle = handle
        self.g.created = 1

    def __dealloc__(self):
        cdef bint forked
        if self.g == NULL:
            return
        forked = self.gen != fork_generation()
        if self.g.created and not self.g.destroyed and not forked:
            if PyErr_WarnEx(ResourceWarning, b"pyxlio: an Ultra PollGroup was collected "
                            b"without close(); its XLIO group is destroyed now", 1) != 0:
                PyErr_Clear()
            with nogil:
                pyxlio_u_teardown(self.g, pyxlio_u_now_ns() + CLOSE_DRAIN_NS)
        pyxlio_u_group_free(self.g, forked)
        self.g = NULL

    # -- the mutex and checks ---------------------------------------------------------------

    cdef int lock(self) except -1:
        """Take the group's mutex (with trylock under the GIL, else without the GIL)."""
        if pyxlio_u_trylock(self.g) == 0:
            return 0
        if pyxlio_u_owned_by_me(self.g):
            raise RuntimeError("a call on the poll group from inside an XLIO call on it (the "
                               "memory callback?) would deadlock")
        with nogil:
            pyxlio_u_lock(self.g)
        return 0

    cdef void unlock(self) noexcept:
        pyxlio_u_unlock(self.g)

    cdef bint is_closed(self) noexcept:
        return self.closed_flag or self.closing

    cdef int check_open(self) except -1:
        if self.closed_flag or self.closing or self.g == NULL:
            raise OSError(EBADF, "Bad file descriptor: the poll group is closed")
        check_fork(self.gen, "poll group")
        return 0

    # -- buffers ------------------------------------------------------------------------------

    cdef void link_buffer(self, UltraBuffer b) noexcept:
        b._prev = NULL
        b._next = self.buffers
        if self.buffers != NULL:
            (<UltraBuffer>self.buffers)._prev = <PyObject *>b
        self.buffers = <PyObject *>b
        self.nbuffers += 1

    cdef void unlink_buffer(self, UltraBuffer b) noexcept:
        if b._prev != NULL:
            (<UltraBuffer>b._prev)._next = b._next
        else:
            self.buffers = b._next
        if b._next != NULL:
            (<UltraBuffer>b._next)._prev = b._prev
        b._prev = b._next = NULL
        self.nbuffers -= 1

    cdef int free_xbuf(self, UltraSocket sock, pyxlio_xbuf_t *xbuf, unsigned long gen) except -1:
        """Give one received buffer back: on its socket while that is not TERMINATED, else on
        the group; nothing once the group is destroyed or in a forked child."""
        cdef bint owned
        cdef pyxlio_uslot_t *slot = NULL
        cdef pyxlio_xsock_t h = 0
        cdef pyxlio_poll_group_t gh
        if xbuf == NULL or self.g == NULL or gen != fork_generation() or self.g.destroyed:
            return 0
        owned = pyxlio_u_owned_by_me(self.g)
        self.freeing += 1               # close() waits for it before destroying the group
        try:
            if not owned:
                self.lock()
        except BaseException:
            self.freeing -= 1
            raise
        try:
            if self.g.destroyed:
                return 0
            if sock is not None:
                slot = pyxlio_u_slot(self.g, sock.ud)
                if (slot != NULL and slot.handle == sock.handle
                        and not slot.flags & PYXLIO_USLOT_TERMINATED):
                    h = sock.handle
            gh = self.g.handle
            with nogil:
                if h != 0:
                    pyxlio_u_ops.socket_buf_free(h, xbuf)
                else:
                    pyxlio_u_ops.group_buf_free(gh, xbuf)
        finally:
            if not owned:
                self.unlock()
            self.freeing -= 1
        return 0

    # -- sockets ------------------------------------------------------------------------------

    def socket(self, family: int = AF_INET, *, on_event: object = None,
               on_receive: object = None, on_complete: object = None) -> UltraSocket:
        """A new TCP socket of the group (``xlio_socket_create``), AF_INET or AF_INET6.  Its
        handlers (None: the group's) can also be set later as attributes."""
        cdef pyxlio_socket_attr_t attr
        cdef pyxlio_xsock_t h = 0
        cdef uintptr_t ud
        cdef int rc, err = 0
        cdef int fam
        if isinstance(family, bool) or not isinstance(family, int):
            raise TypeError(f"family must be AF_INET or AF_INET6, not {type(family).__name__}")
        if family != AF_INET and family != AF_INET6:
            raise ValueError(f"family must be AF_INET ({AF_INET}) or AF_INET6 ({AF_INET6}): "
                             f"XLIO's Ultra sockets are TCP over IPv4/IPv6, not {family}")
        for name, fn in (("on_event", on_event), ("on_receive", on_receive),
                         ("on_complete", on_complete)):
            _check_handler(fn, name)
        fam = family
        self.check_open()
        self.lock()
        if self.g.destroyed or self.closing or self.closed_flag:   # closed while we waited
            self.unlock()
            raise OSError(EBADF, "Bad file descriptor: the poll group is closed")
        ud = pyxlio_u_slot_new(self.g)
        if ud == 0:
            self.unlock()
            raise MemoryError("cannot grow the poll group's socket table")
        memset(&attr, 0, sizeof(attr))
        attr.domain = fam
        attr.group = self.g.handle
        attr.userdata_sq = ud
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.socket_create(&attr, &h)
            err = errno
            if rc != 0 or h == 0:
                pyxlio_u_slot_free(self.g, ud)
            else:
                pyxlio_u_slot(self.g, ud).handle = h
            pyxlio_u_unlock(self.g)
        if rc != 0 or h == 0:
            _raise_ultra("xlio_socket_create", err, "it returned no socket" if rc == 0 else None)
        sock = UltraSocket.make(self, fam, h, ud, "new")
        sock.on_event = on_event
        sock.on_receive = on_receive
        sock.on_complete = on_complete
        self.by_ud[ud] = sock
        return sock

    @property
    def sockets(self) -> list:
        """The group's live UltraSockets (made or accepted, not terminated yet)."""
        return list(self.by_ud.values())

    @property
    def kind(self) -> UltraKind:
        """Which Ultra API serves the group (:func:`kind`)."""
        return UltraKind(_KIND)

    @property
    def closed(self) -> bool:
        return self.closed_flag

    def stats(self) -> dict:
        """Counters: ``queued`` records, live ``buffers``, zero-copy sends ``inflight``,
        ``sockets``, ``dispatched``; records for an ``unknown`` socket or completion;
        ``unhandled`` data (no on_receive); ``refused`` accepted connections pyxlio could not
        track; what the queue could not take (``lost_*``: poll() raises for those); ``bad_rx``
        (malformed rx callbacks); ``stray`` callbacks outside any pyxlio call (process-wide)."""
        cdef size_t queued = 0
        if not self.closed_flag and self.g != NULL and self.gen == fork_generation():
            self.lock()
            queued = self.g.count
            self.unlock()
        g = self.g
        return {
            "queued": queued,
            "buffers": self.nbuffers,
            "inflight": len(self.inflight),
            "sockets": len(self.by_ud),
            "dispatched": self.dispatched,
            "unknown": self.unknown,
            "unhandled": self.unhandled,
            "refused": self.refused,
            "lost_rx": g.lost_rx if g != NULL else 0,
            "lost_rx_bytes": g.lost_rx_bytes if g != NULL else 0,
            "lost_events": g.lost_events if g != NULL else 0,
            "lost_completions": g.lost_comps if g != NULL else 0,
            "lost_accepts": g.lost_accepts if g != NULL else 0,
            "bad_rx": g.bad_rx if g != NULL else 0,
            "stray": pyxlio_u_stray,
        }

    # -- polling and dispatch -----------------------------------------------------------------

    def poll(self, timeout: float | None = 0.0, max_events: int = DEFAULT_MAX_EVENTS) -> int:
        """Poll the group (``xlio_poll_group_poll``, without the GIL) until at least one event
        is queued or `timeout` seconds passed (0: poll once; None: until one event), checking
        signals at least every 50 ms; then dispatch the queued events to the handlers, in the
        order XLIO raised them (at most `max_events`).  Returns the number dispatched.

        A handler's exception propagates; the events not dispatched yet stay queued for the
        next poll().  XlioError (ENOBUFS) when received data had to be returned unread because
        the event queue could not grow."""
        cdef long long until = 0, now, slice_end
        cdef long got
        cdef int once
        cdef Py_ssize_t limit
        cdef double seconds = 0.0
        self.check_open()
        if self.dispatching:
            if self.dispatch_thread == <long>PyThread_get_thread_ident():
                raise RuntimeError("poll() called from one of the group's own handlers")
            raise RuntimeError("poll() is running on this group in another thread")
        # Claimed before anything that could run Python code (and so switch threads).
        self.dispatching = True
        self.dispatch_thread = <long>PyThread_get_thread_ident()
        try:
            if isinstance(max_events, bool) or not isinstance(max_events, int):
                raise TypeError(f"max_events must be an int, not {type(max_events).__name__}")
            if max_events < 1:
                raise ValueError(f"max_events must be at least 1, not {max_events}")
            limit = min(max_events, DEFAULT_MAX_EVENTS * 1024)
            if timeout is not None:
                if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                    raise TypeError(f"timeout must be a number of seconds or None, not "
                                    f"{type(timeout).__name__}")
                seconds = float(timeout)
                if not seconds >= 0:
                    raise ValueError(f"timeout must be >= 0 (or None), not {timeout}")
                if seconds > 1e9:
                    seconds = 1e9
            once = 1 if timeout is not None and seconds == 0 else 0
            self.raise_losses()
            if timeout is not None:
                until = pyxlio_u_now_ns() + <long long>(seconds * 1e9)
            while True:
                now = pyxlio_u_now_ns()
                slice_end = now + POLL_SLICE_NS
                if timeout is not None and until < slice_end:
                    slice_end = until
                with nogil:
                    got = pyxlio_u_poll_for(self.g, slice_end, once)
                if got != 0 or once:
                    break
                PyErr_CheckSignals()
                if timeout is not None and pyxlio_u_now_ns() >= until:
                    break
            self.raise_losses()
            return self.dispatch(limit)
        finally:
            self.dispatching = False

    cdef int raise_losses(self) except -1:
        cdef unsigned long rx, ev, comps, acc, bad
        cdef unsigned long long nbytes
        self.lock()
        rx, ev, comps, acc = (self.g.lost_rx, self.g.lost_events, self.g.lost_comps,
                              self.g.lost_accepts)
        nbytes = self.g.lost_rx_bytes
        bad = self.g.bad_rx_new
        self.g.lost_rx = self.g.lost_events = self.g.lost_comps = self.g.lost_accepts = 0
        self.g.lost_rx_bytes = 0
        self.g.bad_rx_new = 0
        self.unlock()
        if bad:
            raise XlioError(EIO, f"XLIO handed over {bad} malformed received buffer(s) (no "
                            "descriptor, no data, or a length above 16 MiB): returned to it "
                            "unread, never exposed", "xlio_poll_group_poll")
        if rx or ev or comps or acc:
            raise XlioError(ENOBUFS, f"the group's event queue could not grow (out of memory): "
                            f"data was lost: {rx} received buffer(s) ({nbytes} bytes) went "
                            f"back to XLIO unread; {ev} event(s), {comps} completion(s) and "
                            f"{acc} accepted connection(s) could not be queued",
                            "xlio_poll_group_poll")
        return 0

    cdef Py_ssize_t dispatch(self, Py_ssize_t limit) except -1:
        cdef pyxlio_urec_t r
        cdef Py_ssize_t n = 0
        cdef int got
        self.lock()
        if <size_t>limit > self.g.count:
            limit = <Py_ssize_t>self.g.count
        self.unlock()
        while n < limit:
            if pyxlio_u_stopping(self.g) or self.g.destroyed:
                break
            self.lock()
            got = pyxlio_u_pop(self.g, &r)
            self.unlock()
            if not got:
                break
            n += 1
            self.dispatched += 1
            if r.kind == PYXLIO_UREC_RX:
                self.dispatch_rx(&r)
            elif r.kind == PYXLIO_UREC_EVENT:
                self.dispatch_event(&r)
            elif r.kind == PYXLIO_UREC_COMP:
                self.dispatch_completion(&r)
            elif r.kind == PYXLIO_UREC_ACCEPT:
                self.dispatch_accept(&r)
        return n

    cdef UltraSocket socket_of(self, uintptr_t ud, pyxlio_xsock_t handle):
        sock = self.by_ud.get(ud)
        if sock is None or (<UltraSocket>sock).handle != handle:
            return None
        return <UltraSocket>sock

    cdef int dispatch_rx(self, pyxlio_urec_t *r) except -1:
        cdef UltraSocket sock = self.socket_of(r.userdata, r.sock)
        cdef UltraBuffer buf
        if sock is None:
            self.unknown += 1
            self.free_xbuf(None, r.buf, self.gen)
            return 0
        handler = sock.on_receive if sock.on_receive is not None else self.on_receive
        buf = UltraBuffer.make(self, sock, r.data, r.len, r.buf)
        if handler is None:
            self.unhandled += 1
            buf.give_back()
            warnings.warn(f"pyxlio.ultra: {r.len} bytes received on {sock!r}, which has no "
                          "on_receive handler (nor has its group): returned to XLIO unread",
                          RuntimeWarning, stacklevel=1)
            return 0
        try:
            handler(sock, buf)
        except BaseException as exc:
            if buf.live and buf.exports == 0 and not _kept_elsewhere(buf, exc):
                buf.give_back()
            raise
        # Only pyxlio holds it (this reference) and no view is exported: back to XLIO now.
        if buf.live and buf.exports == 0 and Py_REFCNT(buf) == 1:
            buf.give_back()
        return 0

    cdef list forget(self, UltraSocket sock):
        """TERMINATED: the socket leaves the group; its slot is reused; its sends still in
        flight are abandoned (their callbacks are returned, for the caller to run)."""
        callbacks = []
        sock._state = "terminated"
        sock.terminated = True
        self.by_ud.pop(sock.ud, None)
        abandoned = [c for c in self.inflight.values() if (<Completion>c).sock is sock]
        self.lock()
        pyxlio_u_slot_free(self.g, sock.ud)
        self.g.inflight -= len(abandoned)
        self.unlock()
        for c in abandoned:
            del self.inflight[(<Completion>c).op]
            for fn in (<Completion>c).finish(False):
                callbacks.append((c, fn))
        return callbacks

    cdef int free_slot_of(self, pyxlio_urec_t *r) except -1:
        """A TERMINATED record with no UltraSocket: free its slot if it is that socket's."""
        cdef pyxlio_uslot_t *slot
        self.lock()
        slot = pyxlio_u_slot(self.g, r.userdata)
        if slot != NULL and slot.handle == r.sock:
            pyxlio_u_slot_free(self.g, r.userdata)
        self.unlock()
        return 0

    cdef int dispatch_event(self, pyxlio_urec_t *r) except -1:
        cdef UltraSocket sock = self.socket_of(r.userdata, r.sock)
        cdef int ev = r.event
        callbacks = []
        if sock is None:
            self.unknown += 1
            if ev == PYXLIO_SOCKET_EVENT_TERMINATED:
                self.free_slot_of(r)            # e.g. an accepted socket destroyed at close
            return 0
        if ev == PYXLIO_SOCKET_EVENT_ESTABLISHED:
            if sock._state in ("new", "connecting"):
                sock._state = "established"
        elif ev == PYXLIO_SOCKET_EVENT_CLOSED or ev == PYXLIO_SOCKET_EVENT_ERROR:
            if ev == PYXLIO_SOCKET_EVENT_ERROR:
                sock.error = r.value
            if sock._state not in ("closing", "terminated"):
                sock._state = "closed"
        elif ev == PYXLIO_SOCKET_EVENT_TERMINATED:
            callbacks = self.forget(sock)
        else:
            self.unknown += 1
            return 0
        handler = sock.on_event if sock.on_event is not None else self.on_event
        try:
            for c, fn in callbacks:
                run_callbacks(<Completion>c, [fn])
        finally:
            if handler is not None:
                handler(sock, SocketEvent(ev), r.value)
        return 0

    cdef int dispatch_completion(self, pyxlio_urec_t *r) except -1:
        cdef Completion c
        obj = self.inflight.pop(r.op, None)
        if obj is None:
            self.unknown += 1
            return 0
        c = <Completion>obj
        self.lock()
        self.g.inflight -= 1
        self.unlock()
        callbacks = c.finish(True)
        sock = c.sock
        handler = sock.on_complete if sock.on_complete is not None else self.on_complete
        try:
            run_callbacks(c, callbacks)
        finally:
            if handler is not None:
                handler(sock, c.token)
        return 0

    cdef int dispatch_accept(self, pyxlio_urec_t *r) except -1:
        cdef UltraSocket parent = self.socket_of(r.userdata, r.parent)
        cdef UltraSocket sock
        cdef pyxlio_xsock_t h = r.sock
        if r.op == 0:
            # No slot for it (no memory, or xlio_socket_update failed): pyxlio cannot track
            # its events, so it is closed at once.
            self.refused += 1
            self.lock()
            if not self.g.destroyed:
                with nogil:
                    pyxlio_u_ops.socket_destroy(h)
            self.unlock()
            return 0
        sock = UltraSocket.make(self, parent.family if parent is not None else AF_INET, h,
                                r.op, "established")
        self.by_ud[r.op] = sock
        if parent is None:
            self.unknown += 1
            return 0
        if self.on_accept is not None:
            self.on_accept(sock, parent)
        return 0

    def flush(self) -> None:
        """``xlio_poll_group_flush``: push the sends of every socket of a DIRTY group."""
        self.check_open()
        self.lock()
        if not self.g.destroyed:
            with nogil:
                pyxlio_u_ops.group_flush(self.g.handle)
        self.unlock()

    # -- close ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Destroy every socket of the group, then the group (see the class docs).

        BufferError while a memoryview of one of its buffers is exported; RuntimeError from
        inside one of its handlers.  A poll() in another thread is stopped first."""
        cdef timespec nap
        cdef int waited = 0
        cdef UltraBuffer b
        cdef PyObject *p
        if self.closed_flag or self.g == NULL:
            return
        if self.gen != fork_generation():
            self.closed_flag = True        # the parent's group: never touch XLIO or the mutex
            self.abandon_all()
            return
        if self.closing:
            raise RuntimeError("PollGroup.close() is running in another thread")
        nap.tv_sec = 0
        nap.tv_nsec = 1000000
        if self.dispatching:
            if self.dispatch_thread == <long>PyThread_get_thread_ident():
                raise RuntimeError("PollGroup.close() from one of its own handlers: close it "
                                   "after poll() returns")
            pyxlio_u_set_stop(self.g, 1)
            while self.dispatching and waited < CLOSE_WAIT_POLL_MS:
                with nogil:
                    nanosleep(&nap, NULL)
                waited += 1
            if self.dispatching:
                pyxlio_u_set_stop(self.g, 0)
                raise RuntimeError("poll() in another thread did not return within "
                                   f"{CLOSE_WAIT_POLL_MS} ms (a handler still running?)")
        views = 0
        p = self.buffers
        while p != NULL:
            views += (<UltraBuffer>p).exports
            p = (<UltraBuffer>p)._next
        if views:
            pyxlio_u_set_stop(self.g, 0)
            raise BufferError(f"cannot close the poll group: {views} memoryview(s) of its "
                              "received buffers are still exported")
        self.closing = True
        callbacks = []
        try:
            while self.buffers != NULL:
                b = <UltraBuffer>self.buffers
                b.give_back()
            callbacks.extend(self.discard_queue())
            self.destroy_sockets()
            callbacks.extend(self.drain())
            # A buffer another thread is giving back right now goes back before the group.
            waited = 0
            while self.freeing > 0 and waited < CLOSE_WAIT_POLL_MS:
                with nogil:
                    nanosleep(&nap, NULL)
                waited += 1
            self.lock()
            if not self.g.destroyed:
                self.g.destroyed = 1
                with nogil:
                    pyxlio_u_ops.group_destroy(self.g.handle)
            self.unlock()
            callbacks.extend(self.discard_queue())
        finally:
            self.closed_flag = True
            self.closing = False
            callbacks.extend(self.abandon_all())
        first = None
        for c, fn in callbacks:
            try:
                run_callbacks(<Completion>c, [fn])
            except BaseException as exc:
                if first is None:
                    first = exc
        if first is not None:
            raise first

    cdef int destroy_sockets(self) except -1:
        cdef UltraSocket s
        cdef pyxlio_uslot_t *slot
        cdef pyxlio_xsock_t h
        self.lock()
        try:
            for obj in list(self.by_ud.values()):
                s = <UltraSocket>obj
                slot = pyxlio_u_slot(self.g, s.ud)
                if (slot == NULL or slot.handle != s.handle
                        or slot.flags & (PYXLIO_USLOT_DESTROYED | PYXLIO_USLOT_TERMINATED)):
                    continue
                slot.flags |= PYXLIO_USLOT_DESTROYED
                s.destroyed = True
                if s._state != "terminated":
                    s._state = "closing"
                h = s.handle
                with nogil:
                    pyxlio_u_ops.socket_destroy(h)
        finally:
            self.unlock()
        return 0

    cdef list drain(self):
        """Poll until every socket of the group is TERMINATED (at most CLOSE_DRAIN_NS),
        discarding what arrives."""
        cdef long long until = pyxlio_u_now_ns() + CLOSE_DRAIN_NS
        cdef uint32_t live
        callbacks = []
        while True:
            self.lock()
            live = pyxlio_u_live_slots(self.g)
            if live and not self.g.destroyed:
                with nogil:
                    pyxlio_u_ops.group_poll(self.g.handle)
            self.unlock()
            callbacks.extend(self.discard_queue())
            if not live or pyxlio_u_now_ns() >= until:
                return callbacks

    cdef list discard_queue(self):
        """Empty the queue without calling handlers: buffers back, accepted sockets destroyed,
        completions finished (their callbacks returned), TERMINATED sockets forgotten."""
        cdef pyxlio_urec_t r
        cdef int got
        cdef UltraSocket sock
        cdef pyxlio_uslot_t *slot
        cdef Completion c
        cdef pyxlio_xsock_t h
        callbacks = []
        while True:
            self.lock()
            got = pyxlio_u_pop(self.g, &r)
            if got and r.kind == PYXLIO_UREC_ACCEPT and r.op and not self.g.destroyed:
                slot = pyxlio_u_slot(self.g, r.op)
                if slot != NULL:
                    slot.flags |= PYXLIO_USLOT_DESTROYED
                h = r.sock
                with nogil:
                    pyxlio_u_ops.socket_destroy(h)
            self.unlock()
            if not got:
                return callbacks
            if r.kind == PYXLIO_UREC_RX:
                self.free_xbuf(self.socket_of(r.userdata, r.sock), r.buf, self.gen)
            elif r.kind == PYXLIO_UREC_COMP:
                obj = self.inflight.pop(r.op, None)
                if obj is not None:
                    c = <Completion>obj
                    self.lock()
                    self.g.inflight -= 1
                    self.unlock()
                    for fn in c.finish(True):
                        callbacks.append((c, fn))
            elif r.kind == PYXLIO_UREC_EVENT and r.event == PYXLIO_SOCKET_EVENT_TERMINATED:
                sock = self.socket_of(r.userdata, r.sock)
                if sock is not None:
                    callbacks.extend(self.forget(sock))
                else:
                    self.free_slot_of(&r)

    cdef list abandon_all(self):
        """The group is gone: every socket terminated, every send abandoned, every buffer
        released (XLIO took them back with the group)."""
        cdef UltraBuffer b
        callbacks = []
        for obj in list(self.by_ud.values()):
            (<UltraSocket>obj)._state = "terminated"
            (<UltraSocket>obj).terminated = True
        self.by_ud.clear()
        for obj in list(self.inflight.values()):
            for fn in (<Completion>obj).finish(False):
                callbacks.append((obj, fn))
        self.inflight.clear()
        if self.g != NULL:
            self.g.inflight = 0
        while self.buffers != NULL:
            b = <UltraBuffer>self.buffers
            b.live = False
            self.unlink_buffer(b)
        return callbacks

    def __enter__(self) -> PollGroup:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed_flag else f"{len(self.by_ud)} sockets"
        return f"<pyxlio.ultra.PollGroup {UltraKind(_KIND).name} {state}>"

    # -- test hooks -----------------------------------------------------------------------------

    def _inject_malformed_rx(self, length: int) -> None:
        """Test hook: XLIO's receive callback called as a broken provider would, with no
        buffer descriptor and `length` bytes at a non-NULL address (nothing is read there)."""
        self.check_open()
        self.lock()
        pyxlio_u_rx_cb(0, 0, <void *>self.g, <size_t>length, NULL)
        self.unlock()

    def _set_queue_limit(self, records: int) -> None:
        """Test hook: the event queue may not hold more than `records` records (0: no limit),
        as if memory ran out there."""
        self.check_open()
        if records < 0:
            raise ValueError("records must be >= 0")
        self.lock()
        self.g.max_cap = records
        self.unlock()
