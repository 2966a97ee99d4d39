# UltraBuffer: one piece of received TCP payload in XLIO's buffer (included by _ultra.pyx).
# LIVE -> RELEASED, once; see the module docstring's "Buffers".  Linked (borrowed pointers)
# into its group's list of live buffers, which close() walks; unlinked when released.

cdef char _EMPTY[1]


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class UltraBuffer:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """UltraBuffer(*args, **kwargs)
--

    Received TCP payload, in XLIO's buffer (zero-copy), handed to ``on_receive``.

    ``len(buf)``, the buffer protocol (read-only ``memoryview(buf)``), ``tobytes()``,
    ``release()`` (back to XLIO), ``with buf:``.  A buffer the handler does not keep is
    returned to XLIO when the handler returns; one it keeps must be released (or it is, with a
    ResourceWarning, when collected).  Made by pyxlio only: ``UltraBuffer()`` raises TypeError.
    """

    cdef readonly PollGroup group
    cdef UltraSocket sock
    cdef void *data
    cdef size_t length
    cdef pyxlio_xbuf_t *xbuf
    cdef Py_ssize_t exports
    cdef unsigned long gen
    cdef bint live
    cdef PyObject *_prev
    cdef PyObject *_next

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pyxlio.ultra.UltraBuffer objects are made by PollGroup.poll() "
                        "(handed to on_receive)")

    @staticmethod
    cdef UltraBuffer make(PollGroup group, UltraSocket sock, void *data, size_t length,
                          pyxlio_xbuf_t *xbuf):
        cdef UltraBuffer b = UltraBuffer.__new__(UltraBuffer)
        b.group = group
        b.sock = sock
        b.data = data
        b.length = length
        b.xbuf = xbuf
        b.gen = group.gen
        b.live = True
        group.link_buffer(b)
        return b

    def __dealloc__(self):
        # Never frees under a reader (a view holds a reference), never raises.
        if not self.live or self.group is None:
            return
        if PyErr_WarnEx(ResourceWarning, b"pyxlio: an Ultra receive buffer was collected "
                        b"unreleased; returned to XLIO now (use release() or `with`)", 1) != 0:
            PyErr_Clear()
        try:
            self.give_back()
        except BaseException:
            PyErr_Clear()

    cdef int give_back(self) except -1:
        """LIVE -> RELEASED: unlinked and marked first (under the GIL), then freed once."""
        cdef PollGroup g = self.group
        if not self.live:
            return 0
        self.live = False
        g.unlink_buffer(self)
        g.free_xbuf(self.sock, self.xbuf, self.gen)
        self.xbuf = NULL
        return 0

    def release(self) -> None:
        """Give the buffer back to XLIO.  BufferError while a memoryview of it is exported;
        nothing to do when it is released already."""
        if not self.live:
            return
        if self.exports > 0:
            raise BufferError(f"cannot release the Ultra buffer: {self.exports} memoryview(s) "
                              "of it are still exported")
        self.give_back()

    @property
    def released(self) -> bool:
        """True once the buffer went back to XLIO (or its group was closed)."""
        return not self.live

    @property
    def socket(self) -> UltraSocket:
        """The UltraSocket that received it."""
        return self.sock

    @property
    def nbytes(self) -> int:
        """Payload bytes."""
        return self.length

    def __len__(self) -> int:
        return self.length

    cdef int check_live(self) except -1:
        if not self.live:
            raise ValueError("the Ultra buffer is released: its memory is XLIO's again")
        return 0

    def tobytes(self) -> bytes:
        """A copy of the payload."""
        self.check_live()
        return (<char *>self.data)[:self.length] if self.length else b""

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        self.check_live()
        PyBuffer_FillInfo(buffer, self, self.data if self.data != NULL else <void *>_EMPTY,
                          self.length, 1, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.exports -= 1

    def __enter__(self) -> UltraBuffer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    def __repr__(self) -> str:
        if not self.live:
            return "<pyxlio.ultra.UltraBuffer released>"
        return f"<pyxlio.ultra.UltraBuffer {self.length} bytes exports={self.exports}>"
