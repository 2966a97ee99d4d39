# UltraSocket: one TCP socket of a poll group (included by _ultra.pyx).  Every XLIO call goes
# through `call_prologue` under the group's mutex, which checks (under that mutex) that the
# socket's slot is still this socket's and neither destroyed nor TERMINATED.

cdef tuple _STATES = ("new", "connecting", "established", "listening", "closed", "closing",
                      "terminated")


cdef int _sockaddr_of(int family, object address, sockaddr_storage *ss,
                      socklen_t *length) except -1:
    """address (host, port) / (host, port, flowinfo, scope_id) -> a numeric sockaddr."""
    if not isinstance(address, tuple):
        raise TypeError(f"address must be a tuple (host, port), not {type(address).__name__}")
    want = "(host, port)" if family == AF_INET else "(host, port[, flowinfo[, scope_id]])"
    if not (len(address) == 2 or (family == AF_INET6 and 2 <= len(address) <= 4)):
        raise TypeError(f"address must be {want}, not {address!r}")
    host = address[0]
    port = address[1]
    flowinfo = address[2] if len(address) > 2 else 0
    scope_id = address[3] if len(address) > 3 else 0
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    for name, value, top in (("port", port, 0xFFFF), ("flowinfo", flowinfo, 0xFFFFF),
                             ("scope_id", scope_id, 0xFFFFFFFF)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if not 0 <= value <= top:
            raise OverflowError(f"{name} must be 0-{top}, not {value}")
    data = host.encode("ascii", "strict") if host.isascii() else None
    if data is None or b"\0" in data or len(data) > 255 or pyxlio_u_make_addr(
            family, data, port, flowinfo, scope_id, ss, length) != 0:
        fam = "IPv4" if family == AF_INET else "IPv6"
        raise ValueError(f"{host!r} is not a numeric {fam} address: pyxlio.ultra resolves no "
                         "names (use an address, '' for any, or 'localhost')")
    return 0


cdef object _address_tuple(sockaddr_storage *ss, socklen_t length):
    cdef char host[64]
    cdef unsigned port = 0, flowinfo = 0, scope_id = 0
    cdef int family = pyxlio_u_split_addr(ss, length, host, sizeof(host), &port, &flowinfo,
                                          &scope_id)
    if family == AF_INET:
        return (host.decode("ascii"), port)
    if family == AF_INET6:
        return (host.decode("ascii"), port, flowinfo, scope_id)
    raise OSError(EINVAL, f"XLIO gave an address pyxlio cannot read (family "
                  f"{ss.ss_family}, {length} bytes)")


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class UltraSocket:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """UltraSocket(*args, **kwargs)
--

    A TCP socket driven by its :class:`PollGroup` (``group.socket()``, or accepted).

    Its events, data and completions come through the group's ``poll()`` to its handlers
    (``on_event``, ``on_receive``, ``on_complete``: attributes, None = the group's).  ``state``
    is one of "new", "connecting", "established", "listening", "closed" (the peer closed),
    "closing" (``close()`` called) and "terminated" (XLIO is done with it).  ``userdata`` is
    yours (pyxlio's own attribute, not XLIO's userdata_sq).  Made by the group only.
    """

    cdef readonly PollGroup group
    cdef readonly int family
    cdef readonly uintptr_t handle
    cdef uintptr_t ud
    cdef str _state
    cdef readonly int error
    cdef bint destroyed
    cdef bint terminated
    cdef public object userdata
    cdef public object on_event
    cdef public object on_receive
    cdef public object on_complete
    cdef object __weakref__

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pyxlio.ultra.UltraSocket objects are made by PollGroup.socket() "
                        "(or by XLIO accepting a connection)")

    @staticmethod
    cdef UltraSocket make(PollGroup group, int family, uintptr_t handle, uintptr_t ud,
                          str state):
        cdef UltraSocket s = UltraSocket.__new__(UltraSocket)
        s.group = group
        s.family = family
        s.handle = handle
        s.ud = ud
        s._state = state
        return s

    @property
    def state(self) -> str:
        """new, connecting, established, listening, closed, closing or terminated."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called or the socket terminated (no call reaches XLIO)."""
        return self.destroyed or self.terminated or self.group.is_closed()

    cdef int check_usable(self) except -1:
        self.group.check_open()
        if self.terminated:
            raise OSError(EBADF, "Bad file descriptor: the Ultra socket is terminated")
        if self.destroyed:
            raise OSError(EBADF, "Bad file descriptor: the Ultra socket is closed")
        return 0

    cdef int call_prologue(self) except -1:
        """Take the group's mutex and check, under it, that XLIO may be called for this
        socket (its slot is still this socket's; not destroyed; not TERMINATED).  On error the
        mutex is released."""
        cdef pyxlio_uslot_t *slot
        self.check_usable()
        self.group.lock()
        slot = pyxlio_u_slot(self.group.g, self.ud)
        if (self.group.g.destroyed or slot == NULL or slot.handle != self.handle
                or slot.flags & (PYXLIO_USLOT_DESTROYED | PYXLIO_USLOT_TERMINATED)):
            self.group.unlock()
            if slot != NULL and slot.flags & PYXLIO_USLOT_TERMINATED:
                raise OSError(EBADF, "Bad file descriptor: XLIO terminated the Ultra socket "
                              "(its TERMINATED event is queued)")
            raise OSError(EBADF, "Bad file descriptor: the Ultra socket is closed")
        return 0

    cdef void *protection_domain(self) except? NULL:
        cdef void *pd
        cdef pyxlio_xsock_t h = self.handle
        require(<void *>pyxlio_u_ops.get_pd, "xlio_socket_get_pd")
        self.call_prologue()
        with nogil:
            pd = pyxlio_u_ops.get_pd(h)
            pyxlio_u_unlock(self.group.g)
        return pd

    def setsockopt(self, level: int, optname: int, value: int | bytes) -> None:
        """``xlio_socket_setsockopt``: `value` an int (a C int) or bytes (passed as is)."""
        cdef int ival
        cdef const unsigned char[:] raw
        cdef const void *p
        cdef socklen_t n
        cdef int lvl = level, opt = optname
        cdef int rc
        cdef pyxlio_xsock_t h = self.handle
        require(<void *>pyxlio_u_ops.setsockopt, "xlio_socket_setsockopt")
        if isinstance(value, int):
            ival = value
            p = &ival
            n = sizeof(int)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            if len(raw) > 1024:
                raise ValueError("option value longer than 1024 bytes")
            p = <const void *>&raw[0] if len(raw) else <const void *>_EMPTY
            n = <socklen_t>len(raw)
        else:
            raise TypeError(f"value must be an int or bytes, not {type(value).__name__}")
        self.call_prologue()
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.setsockopt(h, lvl, opt, p, n)
            pyxlio_u_unlock(self.group.g)
        if rc != 0:
            _raise_ultra("xlio_socket_setsockopt", errno, f"level {level}, option {optname}")

    def bind(self, address: tuple) -> None:
        """``xlio_socket_bind`` to a numeric (host, port).  XLIO answers ENODEV for a socket it
        does not offload (its rules leave the address to the OS)."""
        cdef sockaddr_storage ss
        cdef socklen_t n = 0
        cdef int rc
        cdef pyxlio_xsock_t h = self.handle
        _sockaddr_of(self.family, address, &ss, &n)
        self.call_prologue()
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.bind(h, <sockaddr *>&ss, n)
            pyxlio_u_unlock(self.group.g)
        if rc != 0:
            _raise_placement("xlio_socket_bind", errno, f"address {address!r}")

    def connect(self, address: tuple) -> None:
        """``xlio_socket_connect`` to a numeric (host, port): starts connecting (the result is
        an ESTABLISHED, or ERROR, event).  XLIO answers ENODEV for a socket it does not
        offload."""
        cdef sockaddr_storage ss
        cdef socklen_t n = 0
        cdef int rc
        cdef pyxlio_xsock_t h = self.handle
        _sockaddr_of(self.family, address, &ss, &n)
        self.call_prologue()
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.connect(h, <sockaddr *>&ss, n)
            pyxlio_u_unlock(self.group.g)
        if rc != 0:
            _raise_placement("xlio_socket_connect", errno, f"address {address!r}")
        if self._state == "new":
            self._state = "connecting"

    def listen(self) -> None:
        """``xlio_socket_listen`` (libxlio 3.60+; UnsupportedError on the 16-member API).  New
        connections come to the group's ``on_accept`` handler as UltraSockets."""
        cdef int rc
        cdef pyxlio_xsock_t h = self.handle
        require(<void *>pyxlio_u_ops.listen, "xlio_socket_listen")
        self.call_prologue()
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.listen(h)
            pyxlio_u_unlock(self.group.g)
        if rc != 0:
            _raise_placement("xlio_socket_listen", errno, "")
        self._state = "listening"

    cdef object _name(self, bint peer):
        cdef sockaddr_storage ss
        cdef socklen_t n = sizeof(ss)
        cdef int rc
        cdef pyxlio_xsock_t h = self.handle
        cdef pyxlio_u_sockname_fn fn = (pyxlio_u_ops.getpeername if peer
                                        else pyxlio_u_ops.getsockname)
        member = "xlio_socket_getpeername" if peer else "xlio_socket_getsockname"
        require(<void *>fn, member)
        memset(&ss, 0, sizeof(ss))
        self.call_prologue()
        set_errno(0)
        with nogil:
            rc = fn(h, <sockaddr *>&ss, &n)
            pyxlio_u_unlock(self.group.g)
        if rc != 0:
            _raise_ultra(member, errno)
        if n > sizeof(ss):
            n = sizeof(ss)
        return _address_tuple(&ss, n)

    def getsockname(self) -> tuple:
        """The local address (libxlio 3.60+; UnsupportedError on the 16-member API)."""
        return self._name(False)

    def getpeername(self) -> tuple:
        """The peer's address (libxlio 3.60+; UnsupportedError on the 16-member API)."""
        return self._name(True)

    def send(self, data: object, *, flush: bool = True) -> None:
        """Send `data` (any contiguous bytes-like object) INLINE: XLIO copies it during the
        call, so it may be reused at once; no completion follows.  `flush=False` leaves it
        queued for ``flush()`` (or the group's, with GroupFlag.DIRTY)."""
        cdef Py_buffer view
        cdef pyxlio_socket_send_attr_t attr
        cdef int rc
        cdef pyxlio_xsock_t h = self.handle
        memset(&attr, 0, sizeof(attr))
        attr.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE
        if flush:
            attr.flags |= PYXLIO_SOCKET_SEND_FLAG_FLUSH
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len == 0:
                self.check_usable()
                return
            self.call_prologue()
            set_errno(0)
            with nogil:
                rc = pyxlio_u_ops.send(h, view.buf, <size_t>view.len, &attr)
                pyxlio_u_unlock(self.group.g)
            if rc != 0:
                _raise_ultra("xlio_socket_send", errno, f"{view.len} bytes, INLINE")
        finally:
            PyBuffer_Release(&view)

    def send_zc(self, region: MemoryRegion, offset: int = 0, length: int | None = None, *,
                flush: bool = True, token: object = None) -> Completion:
        """Send `length` bytes of `region` from `offset` without copying.

        The bytes must stay untouched until the returned :class:`Completion` is done: the
        ``poll()`` that dispatches its completion calls ``on_complete(sock, token)`` and
        marks it done.  The region must be registered on this socket's protection domain."""
        cdef MemoryRegion r = region
        cdef Py_ssize_t off, n
        cdef pyxlio_socket_send_attr_t attr
        cdef int rc, err
        cdef void *pd
        cdef pyxlio_xsock_t h = self.handle
        cdef char *where
        cdef PollGroup g = self.group
        if r is None:
            raise TypeError("region must be a MemoryRegion, not None")
        r.check_usable()
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise TypeError(f"length must be an int or None, not {type(length).__name__}")
        if not 0 <= offset <= r.view.len:
            raise ValueError(f"offset {offset} is outside the region (0..{r.view.len})")
        off = offset
        n = r.view.len - off if length is None else length
        if n <= 0 or n > r.view.len - off:
            raise ValueError(f"length {n} does not fit the region from offset {off} (at most "
                             f"{r.view.len - off} bytes, at least 1)")
        where = <char *>r.view.buf + off
        memset(&attr, 0, sizeof(attr))
        attr.flags = PYXLIO_SOCKET_SEND_FLAG_FLUSH if flush else 0
        attr.mkey = r.lkey
        self.call_prologue()
        with nogil:
            pd = pyxlio_u_ops.get_pd(h) if pyxlio_u_ops.get_pd != NULL else NULL
        try:
            # Checked again: waiting for the mutex (and get_pd) let other threads run, and
            # one may have closed the region; from here to Completion.make (which counts the
            # send in the region's `inflight`, so close() refuses) the GIL is held.
            r.check_usable()
            if pd != r.pd:
                raise ValueError("the MemoryRegion is registered on another protection domain "
                                 "than this socket's (another device)")
            # Room for its completion record, so that it is never lost.
            if pyxlio_u_ensure(g.g, pyxlio_u_reserve(g.g) + 1) != 0:
                raise MemoryError("the group's event queue cannot grow")
            g.next_op += 1
            attr.userdata_op = g.next_op
            c = Completion.make(self, r, g.next_op, token, n)
            g.inflight[g.next_op] = c
            g.g.inflight += 1
        except BaseException:
            pyxlio_u_unlock(g.g)
            raise
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.send(h, where, <size_t>n, &attr)
            err = errno
            if rc != 0:
                g.g.inflight -= 1
            pyxlio_u_unlock(g.g)
        if rc != 0:
            del g.inflight[c.op]
            c.finish(False)
            _raise_ultra("xlio_socket_send", err, f"{n} bytes, zero-copy")
        return c

    def flush(self) -> None:
        """``xlio_socket_flush``: push the sends queued with ``flush=False``."""
        cdef pyxlio_xsock_t h = self.handle
        self.call_prologue()
        with nogil:
            pyxlio_u_ops.socket_flush(h)
            pyxlio_u_unlock(self.group.g)

    def close(self) -> None:
        """``xlio_socket_destroy``: XLIO closes the connection (3.51: with a reset, at once);
        its TERMINATED event (from a later ``poll()``) ends it.  Nothing to do when closed."""
        cdef int rc
        cdef pyxlio_uslot_t *slot
        cdef pyxlio_xsock_t h = self.handle
        if self.destroyed or self.terminated or self.group.is_closed():
            return
        check_fork(self.group.gen, "Ultra socket")
        self.group.lock()
        slot = pyxlio_u_slot(self.group.g, self.ud)
        if (self.group.g.destroyed or slot == NULL or slot.handle != self.handle
                or slot.flags & (PYXLIO_USLOT_DESTROYED | PYXLIO_USLOT_TERMINATED)):
            self.group.unlock()
            self.destroyed = True
            return
        slot.flags |= PYXLIO_USLOT_DESTROYED
        set_errno(0)
        with nogil:
            rc = pyxlio_u_ops.socket_destroy(h)
            pyxlio_u_unlock(self.group.g)
        self.destroyed = True
        if self._state != "terminated":
            self._state = "closing"
        if rc != 0:
            _raise_ultra("xlio_socket_destroy", errno)

    def __enter__(self) -> UltraSocket:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fam = "AF_INET6" if self.family == AF_INET6 else "AF_INET"
        return f"<pyxlio.ultra.UltraSocket {fam} {self._state} handle={self.handle:#x}>"
