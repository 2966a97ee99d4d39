# The exporters: PacketBatch and Packet, the Python objects over a store's datagrams (included
# by _zcopy.pyx).  Both export buffers with an export count per datagram, per batch and per
# engine; nothing is freed while a count is above zero.  Both are @no_gc_clear: the collector
# never empties `Packet.batch` or `PacketBatch.engine`, so a memoryview released while a cycle
# is torn down still finds what it must decrement.

cdef array UINT32_TEMPLATE = array("I")
cdef array UINT16_TEMPLATE = array("H")
cdef array INT64_TEMPLATE = array("q")
cdef array UINT8_TEMPLATE = array("B")


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
@cython.freelist(16)
cdef class PacketBatch:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """PacketBatch(*args, **kwargs)
--

    Datagrams received in one call, in XLIO's buffers (or in pyxlio's, when copied).

    ``len(batch)``, ``batch[i]`` (a :class:`Packet`, made on demand), iteration, ``views()``
    (one memoryview per datagram), ``lengths`` (an ``array('I')``), ``release()`` (one free
    call for all), and use as a context manager.  Empty (falsy) when nothing arrived in time.
    Made by receive calls only: ``PacketBatch()`` raises TypeError.
    """

    cdef SocketEngine engine
    cdef store_t *st
    cdef Py_ssize_t n
    cdef Py_ssize_t live_zc        # zero-copy datagrams not yet freed
    cdef Py_ssize_t nzc
    cdef Py_ssize_t unreleased     # datagrams (copied or zero-copy) not yet released one by one
    cdef Py_ssize_t exports
    cdef Py_ssize_t export_index   # which datagram __getbuffer__ exports (-1: none)
    cdef unsigned long gen
    cdef bint live                 # LIVE; False once released (and for objects made from Python)
    cdef bint linked
    cdef bint eof
    cdef bint borrowed             # a callback's packet, still the provider's
    cdef bint has_ts               # received with timestamps asked for
    cdef PyObject *_prev
    cdef PyObject *_next

    def __cinit__(self):
        self.export_index = -1

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pyxlio.PacketBatch objects are made by receive calls "
                        "(sock.recv_batch())")

    def __dealloc__(self):
        # Never frees under a reader (a view holds a reference, so exports is 0 here), never
        # imports, never lets an exception out.
        if self.engine is None or not self.live or self.exports > 0:
            return
        if self.borrowed:
            self.abandon()
            return
        if self.live_zc > 0:
            if PyErr_WarnEx(ResourceWarning, b"pyxlio: a batch of zero-copy packets was "
                            b"collected unreleased; released now (use release() or `with`)",
                            1) != 0:
                PyErr_Clear()
        try:
            self.finish(True)
        except BaseException:
            PyErr_Clear()

    cdef Packet packet(self, Py_ssize_t i):
        cdef Packet p = Packet.__new__(Packet)
        p.batch = self
        p.index = i
        return p

    cdef void abandon(self) noexcept:
        """A callback packet that the provider keeps: forget it without freeing."""
        self.live = False
        self.live_zc = 0
        if self.st != NULL:
            self.engine.give_store(self.st)
            self.st = NULL

    cdef int finish(self, bint quiet) except -1:
        """LIVE -> RELEASED, in this order under the GIL: not live, ids marked freed and
        counted out of `outstanding`, unlinked; only then the free call (which may release the
        GIL: nothing can reach this batch any more), then the store back to the pool."""
        cdef SocketEngine e = self.engine
        cdef store_t *st = self.st
        cdef Py_ssize_t count = 0, marked = 0
        if not self.live:
            return 0
        if st != NULL and self.live_zc > 0:
            if store_free_room(st, <size_t>ids_to_free(st, 0, self.n)) != 0:
                raise MemoryError()
            count = collect_frees(st, 0, self.n, st.frees, &marked)
            self.live_zc = 0
            e.outstanding -= marked
        self.live = False
        self.st = NULL
        e.unlink(self)
        try:
            e.free_entries(st.frees if st != NULL else NULL, count, self.gen)
        except (OSError, MemoryError):
            if not quiet:
                raise
        finally:
            e.give_store(st)
        return 0

    cdef int free_one(self, Py_ssize_t i) except -1:
        """One datagram back to the provider (Packet.release)."""
        cdef SocketEngine e = self.engine
        cdef slot_t *s = &self.st.slots[i]
        cdef free_ent_t one
        cdef free_ent_t *ents = &one
        cdef Py_ssize_t count, marked = 0
        if s.flags & SLOT_FREED:
            return 0
        if not (s.flags & SLOT_ZC):
            # A copy has nothing to give back, but it is released all the same: batch[i] and
            # views() refuse it afterwards, as they refuse a released zero-copy datagram.
            s.flags |= SLOT_FREED
            self.unreleased -= 1
            if self.live and self.unreleased == 0 and self.exports == 0:
                self.finish(False)
            return 0
        # Its own entries (not the store's, which a concurrent batch.release() may be using).
        if s.id_count > 1:
            ents = <free_ent_t *>malloc(s.id_count * sizeof(free_ent_t))
            if ents == NULL:
                raise MemoryError()
        count = collect_frees(self.st, i, i + 1, ents, &marked)
        self.live_zc -= marked
        self.unreleased -= marked
        e.outstanding -= marked
        try:
            e.free_entries(ents, count, self.gen)
        finally:
            if ents != &one:
                free(ents)
        if self.live and self.unreleased == 0 and self.exports == 0:
            self.finish(False)          # every datagram is released: the batch has nothing left
        return 0

    cdef int check_live(self) except -1:
        if not self.live:
            raise ValueError("the batch is released: its packets are gone")
        return 0

    def release(self) -> None:
        """Return every packet to XLIO in one call.  BufferError while a view is exported."""
        if not self.live:
            return
        if self.exports > 0:
            raise BufferError(f"cannot release the batch: {self.exports} memoryview(s) of its "
                              "packets are still exported")
        self.finish(False)

    @property
    def released(self) -> bool:
        return not self.live

    @property
    def zcopy(self) -> bool:
        """True when every datagram of the batch is in XLIO's buffers (no copy was made)."""
        return self.n > 0 and self.nzc == self.n

    @property
    def eof(self) -> bool:
        """A stream socket reached end of file."""
        return self.eof

    @property
    def nbytes(self) -> int:
        """Total payload bytes."""
        self.check_live()
        cdef Py_ssize_t i
        cdef unsigned long long total = 0
        for i in range(self.n):
            total += self.st.lens[i]
        return total

    @property
    def lengths(self) -> array:
        """The datagram lengths as an ``array('I')`` (a copy: no object per datagram)."""
        self.check_live()
        cdef array out = clone(UINT32_TEMPLATE, self.n, False)
        if self.n:
            memcpy(out.data.as_voidptr, self.st.lens, self.n * sizeof(uint32_t))
        return out

    @property
    def timestamps(self) -> array:
        """Receive times as an ``array('q')`` of CLOCK_REALTIME nanoseconds, one per
        datagram (a copy: no object per datagram); ValueError unless the batch was received
        with ``timestamps=True`` (or "software"/"hardware").  See :attr:`timestamp_sources`
        for where each value came from."""
        self.check_live()
        if not self.has_ts:
            raise ValueError("the batch was received without timestamps: pass "
                             "timestamps=True to the receive call")
        cdef array out = clone(INT64_TEMPLATE, self.n, False)
        cdef Py_ssize_t i
        cdef long long *o = <long long *>out.data.as_voidptr
        for i in range(self.n):
            o[i] = self.st.slots[i].ts_ns
        return out

    @property
    def timestamp_sources(self) -> array:
        """Where each of :attr:`timestamps` came from, an ``array('B')``: 0 pyxlio's own
        reading when the receive pass dequeued the datagram (the provider gave none: always on
        the zero-copy path), 1 the kernel's software receive time, 2 the NIC's hardware stamp
        (``pyxlio.TimestampSource``)."""
        self.check_live()
        if not self.has_ts:
            raise ValueError("the batch was received without timestamps: pass "
                             "timestamps=True to the receive call")
        cdef array out = clone(UINT8_TEMPLATE, self.n, False)
        cdef Py_ssize_t i
        cdef unsigned char *o = <unsigned char *>out.data.as_voidptr
        for i in range(self.n):
            o[i] = self.st.slots[i].ts_src
        return out

    @property
    def ports(self) -> array:
        """Source ports as an ``array('H')`` (0 where unknown or not IPv4/IPv6)."""
        self.check_live()
        cdef array out = clone(UINT16_TEMPLATE, self.n, True)
        cdef Py_ssize_t i
        cdef unsigned short *o = <unsigned short *>out.data.as_voidptr
        for i in range(self.n):
            o[i] = sockaddr_port(self.st.slots[i].addr, self.st.slots[i].addrlen)
        return out

    @property
    def hosts(self) -> array:
        """IPv4 source addresses as an ``array('I')`` of host-order integers (0 where the
        source is unknown or not IPv4): with :attr:`ports`, the sources with no object per
        datagram (``ipaddress.IPv4Address(batch.hosts[i])`` names one)."""
        self.check_live()
        cdef array out = clone(UINT32_TEMPLATE, self.n, True)
        cdef Py_ssize_t i
        cdef uint32_t a
        cdef uint32_t *o = <uint32_t *>out.data.as_voidptr
        cdef slot_t *s
        for i in range(self.n):
            s = &self.st.slots[i]
            if sockaddr_family(s.addr, s.addrlen) == AF_INET and s.addrlen >= 8:
                memcpy(&a, s.addr + 4, 4)
                o[i] = ntohl(a)
        return out

    @property
    def addresses(self) -> list:
        """Source addresses, one tuple per datagram (as the socket module gives them)."""
        self.check_live()
        return [sockaddr_to_tuple(self.st.slots[i].addr, self.st.slots[i].addrlen)
                for i in range(self.n)]

    @property
    def truncated(self) -> int:
        """Datagrams cut to ``max_datagram`` bytes (kernel path only)."""
        self.check_live()
        return sum(1 for i in range(self.n) if self.st.slots[i].flags & SLOT_TRUNC)

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __getitem__(self, Py_ssize_t i) -> Packet:
        self.check_live()
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError("packet index out of range")
        return self.packet(i)

    def __iter__(self):
        self.check_live()
        return _PacketIter(self)

    def views(self):
        """One memoryview per datagram, zero-copy (multi-fragment datagrams: a joined copy)."""
        self.check_live()
        return _ViewIter(self)

    cdef object view(self, Py_ssize_t i):
        cdef slot_t *s = &self.st.slots[i]
        if s.nfrags > 1:
            return memoryview(self.packet(i).tobytes())
        self.export_index = i
        try:
            return PyMemoryView_FromObject(self)
        finally:
            self.export_index = -1

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        cdef slot_t *s
        if self.export_index < 0:
            raise BufferError("a PacketBatch has one buffer per datagram: use batch.views() or "
                              "memoryview(batch[i])")
        self.check_live()
        check_exportable(self.engine)
        s = &self.st.slots[self.export_index]
        if s.flags & SLOT_FREED:
            raise ValueError("the packet is released")
        PyBuffer_FillInfo(buffer, self, slot_data(self.st, s), self.st.lens[self.export_index],
                          1, flags)
        buffer.internal = <void *>(self.export_index + 1)
        s.exports += 1
        self.exports += 1
        self.engine.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        if self.st != NULL:
            self.st.slots[<Py_ssize_t>buffer.internal - 1].exports -= 1
        self.exports -= 1
        self.engine.exports -= 1
        if self.engine.exports == 0 and self.engine.owned_fd >= 0:
            self.engine.last_view_gone()

    def __enter__(self) -> PacketBatch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if not self.live else f"{self.n} packets"
        return f"<pyxlio.PacketBatch {state} zcopy={self.zcopy}>"


cdef int check_exportable(SocketEngine e) except -1:
    if e.state != ENGINE_OPEN:
        raise ValueError("the socket is closing: no new view of its packets")
    return 0


@cython.auto_pickle(False)
cdef class _BatchIter:
    """Walks a batch's datagrams in order (base of the Packet and memoryview iterators)."""

    cdef PacketBatch b
    cdef Py_ssize_t i

    def __cinit__(self, PacketBatch b):
        self.b = b

    def __iter__(self):
        return self


@cython.final
cdef class _PacketIter(_BatchIter):
    def __next__(self) -> Packet:
        if self.i >= self.b.n or not self.b.live:
            raise StopIteration
        self.i += 1
        return self.b.packet(self.i - 1)


@cython.final
cdef class _ViewIter(_BatchIter):
    def __next__(self) -> memoryview:
        if self.i >= self.b.n:
            raise StopIteration
        self.b.check_live()
        self.i += 1
        return self.b.view(self.i - 1)


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
@cython.freelist(64)
cdef class Packet:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """Packet(*args, **kwargs)
--

    One received datagram (or TCP chunk): fragments in XLIO's buffers, or a copy.

    ``memoryview(pkt)`` when it has one fragment, ``pkt.fragments`` always, ``bytes(pkt)`` for a
    copy, ``release()`` / ``with pkt:`` to give the buffers back.  ``zcopy`` is False when the
    data came through the kernel (no XLIO, or a socket XLIO does not offload).  Made by receive
    calls only: ``Packet()`` raises TypeError.
    """

    cdef PacketBatch batch
    cdef Py_ssize_t index
    cdef Py_ssize_t export_frag    # which fragment __getbuffer__ exports (-1: the datagram)
    cdef bint released

    def __cinit__(self):
        self.export_frag = -1

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pyxlio.Packet objects are made by receive calls "
                        "(sock.recvfrom_zcopy(), batch[i])")

    cdef slot_t *slot(self) except NULL:
        if self.released or self.batch is None or not self.batch.live:
            raise ValueError("the packet is released")
        cdef slot_t *s = &self.batch.st.slots[self.index]
        if s.flags & SLOT_FREED:
            raise ValueError("the packet is released")
        return s

    @property
    def nbytes(self) -> int:
        """Payload bytes."""
        self.slot()
        return self.batch.st.lens[self.index]

    def __len__(self) -> int:
        return self.nbytes

    @property
    def zcopy(self) -> bool:
        """True when the data sits in XLIO's buffers (no copy was made)."""
        return bool(self.slot().flags & SLOT_ZC)

    @property
    def address(self) -> object:
        """The source address, or None when XLIO did not give one (TCP)."""
        cdef slot_t *s = self.slot()
        return sockaddr_to_tuple(s.addr, s.addrlen)

    @property
    def truncated(self) -> bool:
        """The datagram was longer than ``max_datagram`` and was cut (kernel path)."""
        return bool(self.slot().flags & SLOT_TRUNC)

    @property
    def released(self) -> bool:
        return (self.released or self.batch is None or not self.batch.live
                or bool(self.batch.st.slots[self.index].flags & SLOT_FREED))

    @property
    def fragment_count(self) -> int:
        return self.slot().nfrags

    @property
    def fragments(self) -> tuple:
        """The fragments as memoryviews, zero-copy."""
        cdef slot_t *s = self.slot()
        cdef uint32_t k
        if s.nfrags <= 1:
            return (memoryview(self),)
        out = []
        try:
            for k in range(s.nfrags):
                self.export_frag = k
                out.append(PyMemoryView_FromObject(self))
        finally:
            self.export_frag = -1
        return tuple(out)

    def tobytes(self) -> bytes:
        """A copy of the payload, fragments joined."""
        return slot_bytes(self.batch.st, self.slot(), self.batch.st.lens[self.index])

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        cdef slot_t *s = self.slot()
        cdef store_t *st = self.batch.st
        cdef iovec *f
        check_exportable(self.batch.engine)
        if self.export_frag >= 0:
            f = &st.frags[s.frag_index + self.export_frag]
            PyBuffer_FillInfo(buffer, self, f.iov_base if f.iov_base != NULL else EMPTY,
                              f.iov_len, 1, flags)
        elif s.nfrags > 1:
            raise BufferError(f"the packet has {s.nfrags} fragments: use pkt.fragments "
                              "(zero-copy) or bytes(pkt)")
        else:
            PyBuffer_FillInfo(buffer, self, slot_data(st, s), st.lens[self.index], 1, flags)
        s.exports += 1
        self.batch.exports += 1
        self.batch.engine.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        if self.batch is None:
            return
        if self.batch.st != NULL:
            self.batch.st.slots[self.index].exports -= 1
        self.batch.exports -= 1
        self.batch.engine.exports -= 1
        if self.batch.engine.exports == 0 and self.batch.engine.owned_fd >= 0:
            self.batch.engine.last_view_gone()

    def release(self) -> None:
        """Give the packet's buffers back to XLIO.  BufferError while a view is exported."""
        if self.released or self.batch is None or not self.batch.live:
            self.released = True
            return
        cdef uint32_t views = self.batch.st.slots[self.index].exports
        if views > 0:
            raise BufferError(f"cannot release the packet: {views} memoryview(s) of it "
                              "are still exported")
        self.released = True
        self.batch.free_one(self.index)

    def __enter__(self) -> Packet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()

    def __repr__(self) -> str:
        if self.released or self.batch is None or not self.batch.live:
            return "<pyxlio.Packet released>"
        cdef slot_t *s = &self.batch.st.slots[self.index]
        return (f"<pyxlio.Packet {self.batch.st.lens[self.index]} bytes "
                f"fragments={s.nfrags} zcopy={bool(s.flags & SLOT_ZC)}>")
