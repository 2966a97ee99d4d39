# Zero-copy sends (included by _ultra.pyx): MemoryRegion (memory registered with ibv_reg_mr on
# a socket's protection domain) and Completion (one send_zc, finished when its comp_cb record is
# dispatched, or abandoned at TERMINATED / group close).  See the module docstring's "Sends".


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class MemoryRegion:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """MemoryRegion(sock, buffer)
--

    Memory registered for zero-copy sends (``UltraSocket.send_zc``).

    `buffer` is any C-contiguous buffer, writable or read-only (bytes, bytearray, mmap,
    numpy...); it is held (the exporter cannot resize or free it) for the region's life and
    registered with ``ibv_reg_mr`` on the protection domain of `sock`
    (``xlio_socket_get_pd``): create the region once the socket is connected or bound, and use
    it for the sockets of that device.  The bytes a send_zc names must stay untouched until its
    completion.  ``close()`` (or ``with``) deregisters it; it refuses (BufferError) while sends
    from it are in flight.  No protection domain for the socket, or no libibverbs: an
    UnsupportedError, and only ``send()`` (INLINE, copied) is available.
    """

    cdef Py_buffer view
    cdef bint has_view
    cdef void *mr
    cdef void *pd
    cdef readonly uint32_t lkey
    cdef readonly Py_ssize_t inflight
    cdef unsigned long gen
    cdef object __weakref__

    def __cinit__(self):
        self.has_view = False
        self.mr = NULL

    def __init__(self, sock: UltraSocket, buffer: object) -> None:
        cdef UltraSocket s = sock
        cdef const char *why = NULL
        cdef void *pd
        cdef int rc
        cdef int writable
        if self.mr != NULL or self.has_view:
            raise RuntimeError("MemoryRegion.__init__ called twice")
        pd = s.protection_domain()
        if pd == NULL:
            raise UnsupportedError(
                "xlio_socket_get_pd",
                "XLIO has no protection domain for this socket (not offloaded, or not "
                "connected/bound to an offloaded device yet): zero-copy sends need one; only "
                "send() (INLINE: copied) is available")
        with nogil:
            rc = pyxlio_u_resolve_ibv(&why)
        if rc != 0:
            raise UnsupportedError(
                "ibv_reg_mr", f"libibverbs is not available ({why.decode()}): memory cannot be "
                "registered for zero-copy sends; only send() (INLINE: copied) is available")
        PyObject_GetBuffer(buffer, &self.view, PyBUF_C_CONTIGUOUS)
        self.has_view = True
        if self.view.len <= 0:
            self.drop_view()
            raise ValueError("cannot register an empty buffer")
        writable = 0 if self.view.readonly else PYXLIO_IBV_ACCESS_LOCAL_WRITE
        set_errno(0)
        with nogil:
            self.mr = pyxlio_u_reg_mr(pd, self.view.buf, <size_t>self.view.len, writable)
        if self.mr == NULL:
            err = errno or ENOMEM
            self.drop_view()
            raise XlioError.from_errno(err, "ibv_reg_mr", f"{self.view.len} bytes")
        self.lkey = pyxlio_ibv_mr_lkey(self.mr)
        self.pd = pd
        self.gen = fork_generation()

    cdef void drop_view(self) noexcept:
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)

    def __dealloc__(self):
        # A Completion in flight holds the region: inflight is 0 here.
        if self.mr != NULL:
            if PyErr_WarnEx(ResourceWarning, b"pyxlio: a MemoryRegion was collected without "
                            b"close(); deregistered now", 1) != 0:
                PyErr_Clear()
            self.deregister()
        self.drop_view()

    cdef void deregister(self) noexcept:
        cdef void *mr = self.mr
        self.mr = NULL
        if mr != NULL and self.gen == fork_generation():      # never in a forked child
            with nogil:
                pyxlio_u_dereg_mr(mr)

    cdef int check_usable(self) except -1:
        if self.mr == NULL:
            raise ValueError("the MemoryRegion is closed")
        check_fork(self.gen, "MemoryRegion")
        return 0

    def close(self) -> None:
        """Deregister (``ibv_dereg_mr``) and let the buffer go.  BufferError while sends from
        the region are in flight (their completions not dispatched yet)."""
        if self.mr == NULL:
            return
        if self.inflight > 0:
            raise BufferError(f"cannot close the MemoryRegion: {self.inflight} zero-copy "
                              "send(s) from it are in flight (poll() until they complete)")
        self.deregister()
        self.drop_view()

    @property
    def closed(self) -> bool:
        return self.mr == NULL

    @property
    def nbytes(self) -> int:
        """The registered length."""
        return self.view.len if self.has_view else 0

    @property
    def address(self) -> int:
        """Where the registered memory starts."""
        return <uintptr_t>self.view.buf if self.has_view else 0

    def __enter__(self) -> MemoryRegion:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.mr == NULL:
            return "<pyxlio.ultra.MemoryRegion closed>"
        return (f"<pyxlio.ultra.MemoryRegion {self.view.len} bytes lkey={self.lkey:#x} "
                f"inflight={self.inflight}>")


@cython.final
@cython.auto_pickle(False)
cdef class Completion:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """Completion(*args, **kwargs)
--

    One zero-copy send (``UltraSocket.send_zc``): done once XLIO says its bytes may be reused.

    ``done()``, ``completed`` (False when it was abandoned: its socket terminated or its group
    closed first), ``token``, ``add_done_callback(fn)`` (``fn(completion)``, called by the
    ``poll()`` that dispatches it, or at once when already done), and ``await completion``
    (an asyncio future made lazily in the running loop; gives the token, or raises
    ConnectionAbortedError when abandoned).  Made by ``send_zc`` only.
    """

    cdef readonly object token
    cdef readonly Py_ssize_t nbytes
    cdef UltraSocket sock
    cdef MemoryRegion region
    cdef uintptr_t op
    cdef bint is_done
    cdef bint ok
    cdef list callbacks
    cdef object future
    cdef object __weakref__

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pyxlio.ultra.Completion objects are made by UltraSocket.send_zc()")

    @staticmethod
    cdef Completion make(UltraSocket sock, MemoryRegion region, uintptr_t op, object token,
                         Py_ssize_t nbytes):
        cdef Completion c = Completion.__new__(Completion)
        c.sock = sock
        c.region = region
        c.op = op
        c.token = token
        c.nbytes = nbytes
        c.callbacks = []
        region.inflight += 1
        return c

    def done(self) -> bool:
        """True once the completion was dispatched (or the send abandoned)."""
        return self.is_done

    @property
    def completed(self) -> bool:
        """True when XLIO reported the send complete (False while pending or if abandoned)."""
        return self.is_done and self.ok

    @property
    def socket(self) -> UltraSocket:
        return self.sock

    cdef list finish(self, bint ok):
        """PENDING -> DONE: the region lets go of this send; returns the callbacks to run (the
        caller runs them, so that the state is consistent when any of them raises)."""
        if self.is_done:
            return []
        self.is_done = True
        self.ok = ok
        if self.region is not None:
            self.region.inflight -= 1
            self.region = None
        callbacks = self.callbacks
        self.callbacks = []
        if self.future is not None:
            callbacks.insert(0, _resolve_future)
        return callbacks

    cdef object abandoned_error(self):
        return ConnectionAbortedError(ECONNABORTED, "the zero-copy send was abandoned: its "
                                      "socket terminated (or its group closed) before XLIO "
                                      "completed it")

    def result(self) -> object:
        """The token once completed; ConnectionAbortedError if abandoned; RuntimeError while
        pending."""
        if not self.is_done:
            raise RuntimeError("the zero-copy send has not completed yet (poll the group)")
        if not self.ok:
            raise self.abandoned_error()
        return self.token

    def add_done_callback(self, fn: object) -> None:
        """Call ``fn(completion)`` when done (at once when done already).  Called from the
        ``poll()`` that dispatches the completion; an exception propagates out of it."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if self.is_done:
            fn(self)
        else:
            self.callbacks.append(fn)

    def __await__(self):
        import asyncio
        loop = asyncio.get_running_loop()
        if self.future is None:
            self.future = loop.create_future()
            if self.is_done:
                _resolve_future(self)
        elif self.future.get_loop() is not loop:
            raise RuntimeError("the Completion is awaited in another event loop already")
        return self.future.__await__()

    def __repr__(self) -> str:
        state = ("completed" if self.ok else "abandoned") if self.is_done else "pending"
        return f"<pyxlio.ultra.Completion {state} {self.nbytes} bytes token={self.token!r}>"


def _set_future(object fut, bint ok, object value) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _resolve_future(Completion c) -> None:
    """Resolve c's asyncio future, in its loop's thread."""
    import asyncio
    fut = c.future
    if fut is None or fut.done():
        return
    value = c.token if c.ok else c.abandoned_error()
    loop = fut.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _set_future(fut, c.ok, value)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_set_future, fut, c.ok, value)


cdef int run_callbacks(Completion c, list callbacks) except -1:
    """Run every callback; the first exception is raised once all have run."""
    first = None
    for fn in callbacks:
        try:
            fn(c)
        except BaseException as exc:
            if first is None:
                first = exc
    if first is not None:
        raise first
    return 0
