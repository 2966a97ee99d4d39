# Receive callbacks: the context XLIO is handed, the C filter, the trampoline, RecvInfo
# (included by _zcopy.pyx).
#
# Lifetime of the context (cb_ctx_t, one per engine, on the heap):
# - It is allocated with its engine and freed in the engine's __dealloc__.
# - While a callback or filter is registered with the provider, the context holds a strong
#   reference to its engine (taken when the provider accepted the registration, dropped when it
#   confirmed the unregistration), so the engine - and the context - cannot be freed while the
#   provider may call into them, whatever happens to the Python socket (`detach()` through the
#   base class, collection, interpreter shutdown).
# - A call that races an unregistration finds `has_fn` clear and the filter gone: it answers
#   RECV without touching Python.
# - The C filter is immutable once published: set_recv_filter() publishes a new one with an
#   atomic store, and the old one is retired, freed only when no trampoline is in flight
#   (`inflight` counts threads inside the trampoline), or with the context.
# - Inside a callback (a thread-local depth), pyxlio refuses receive and close calls (they would
#   re-enter the provider's receive path) and defers frees to the thread's next pyxlio call.

cdef extern from *:
    """
    static __thread int pyxlio_cb_depth_tls;
    static inline int pyxlio_cb_depth(void) { return pyxlio_cb_depth_tls; }
    static inline void pyxlio_cb_enter(void) { pyxlio_cb_depth_tls++; }
    static inline void pyxlio_cb_leave(void) { pyxlio_cb_depth_tls--; }
    static inline void pyxlio_atomic_inc(int *p) { __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
    static inline void pyxlio_atomic_dec(int *p) { __atomic_sub_fetch(p, 1, __ATOMIC_SEQ_CST); }
    static inline int pyxlio_atomic_get(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void pyxlio_atomic_set(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline void pyxlio_atomic_add_ull(unsigned long long *p, unsigned long long v) {
        __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
    }
    static inline unsigned long long pyxlio_atomic_get_ull(unsigned long long *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void *pyxlio_atomic_get_ptr(void **p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void *pyxlio_atomic_swap_ptr(void **p, void *v) {
        return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
    }
    """
    int cb_depth "pyxlio_cb_depth"() noexcept nogil
    void cb_enter "pyxlio_cb_enter"() noexcept nogil
    void cb_leave "pyxlio_cb_leave"() noexcept nogil
    void atomic_inc "pyxlio_atomic_inc"(int *p) noexcept nogil
    void atomic_dec "pyxlio_atomic_dec"(int *p) noexcept nogil
    int atomic_get "pyxlio_atomic_get"(int *p) noexcept nogil
    void atomic_set "pyxlio_atomic_set"(int *p, int v) noexcept nogil
    void atomic_add_ull "pyxlio_atomic_add_ull"(unsigned long long *p,
                                                unsigned long long v) noexcept nogil
    unsigned long long atomic_get_ull "pyxlio_atomic_get_ull"(unsigned long long *p) noexcept nogil
    void *atomic_get_ptr "pyxlio_atomic_get_ptr"(void **p) noexcept nogil
    void *atomic_swap_ptr "pyxlio_atomic_swap_ptr"(void **p, void *v) noexcept nogil


cdef struct filter_t:          # immutable once published
    Py_ssize_t offset
    Py_ssize_t plen
    bint keep
    char pattern[64]


cdef struct cb_ctx_t:
    PyObject *engine           # the engine (a strong reference only while registered)
    int has_fn                 # atomic: a Python function is set
    void *filter               # atomic: filter_t * or NULL
    int inflight               # atomic: threads inside the trampoline
    unsigned long long filtered
    void **retired             # filters replaced while a trampoline was in flight
    size_t nretired, retcap


cdef cb_ctx_t *ctx_new(PyObject *engine) noexcept nogil:
    cdef cb_ctx_t *ctx = <cb_ctx_t *>calloc(1, sizeof(cb_ctx_t))
    if ctx != NULL:
        ctx.engine = engine
    return ctx


cdef void ctx_free_retired(cb_ctx_t *ctx) noexcept nogil:
    cdef size_t i
    for i in range(ctx.nretired):
        free(ctx.retired[i])
    ctx.nretired = 0


cdef void ctx_del(cb_ctx_t *ctx) noexcept nogil:
    if ctx == NULL:
        return
    ctx_free_retired(ctx)
    free(ctx.retired)
    free(atomic_swap_ptr(&ctx.filter, NULL))
    free(ctx)


cdef int ctx_publish_filter(cb_ctx_t *ctx, filter_t *f) noexcept nogil:
    """Publish `f` (or NULL) and retire the old filter; -1 when out of memory (nothing done)."""
    cdef void *old
    if grow(<void **>&ctx.retired, &ctx.retcap, ctx.nretired + 1, sizeof(void *), 4) != 0:
        return -1
    old = atomic_swap_ptr(&ctx.filter, f)
    if old != NULL:
        ctx.retired[ctx.nretired] = old
        ctx.nretired += 1
    # A trampoline that entered after the swap sees the new filter; one that entered before it
    # counts in `inflight`.  None in flight now: nobody can hold a retired filter any more.
    if atomic_get(&ctx.inflight) == 0:
        ctx_free_retired(ctx)
    return 0


cdef bint cb_packet_ok(size_t sz_iov, const iovec *iov,
                       const pyxlio_recv_info_t *info) noexcept nogil:
    """What a provider hands a callback is read only if this holds: a bounded fragment count,
    an info with a packet id, no NULL base with a length, a datagram of at most 64 KiB (each
    fragment and in all, so the sum cannot wrap)."""
    cdef size_t k, total = 0
    if sz_iov > MAX_CB_FRAGS or (sz_iov > 0 and iov == NULL) or info == NULL or \
            info.packet_id == NULL:
        return False
    for k in range(sz_iov):
        if iov[k].iov_len > MAX_UDP_PAYLOAD or (iov[k].iov_base == NULL and iov[k].iov_len):
            return False
        total += iov[k].iov_len
        if total > MAX_UDP_PAYLOAD:
            return False
    return True


cdef bint match_at(iovec *iov, size_t sz_iov, Py_ssize_t offset, const char *pat,
                   Py_ssize_t plen) noexcept nogil:
    """Do the datagram's bytes at `offset` equal `pat`?  Works across fragments."""
    cdef size_t k
    cdef Py_ssize_t pos = 0, start, take, done = 0
    cdef Py_ssize_t flen
    for k in range(sz_iov):
        flen = <Py_ssize_t>iov[k].iov_len
        if flen < 0 or iov[k].iov_base == NULL:
            return False
        if offset + done < pos + flen:
            start = offset + done - pos
            take = min(flen - start, plen - done)
            if memcmp(<char *>iov[k].iov_base + start, pat + done, <size_t>take) != 0:
                return False
            done += take
            if done == plen:
                return True
        pos += flen
    return done == plen


cdef pyxlio_verdict_t recv_callback(int fd, size_t sz_iov, iovec *iov, pyxlio_recv_info_t *info,
                                    void *context) noexcept nogil:
    """Provider -> pyxlio: the C filter first (no GIL), then the Python function (with it)."""
    cdef cb_ctx_t *ctx = <cb_ctx_t *>context
    cdef filter_t *f
    cdef pyxlio_verdict_t v = PYXLIO_PACKET_RECV
    if ctx == NULL:
        return v
    atomic_inc(&ctx.inflight)
    if not cb_packet_ok(sz_iov, iov, info):
        v = PYXLIO_PACKET_RECV          # malformed: never read it; reported by call_fn's twin
        if atomic_get(&ctx.has_fn):
            with gil:
                report_malformed(ctx.engine)
    else:
        f = <filter_t *>atomic_get_ptr(&ctx.filter)
        if f != NULL and match_at(iov, sz_iov, f.offset, f.pattern, f.plen) != f.keep:
            atomic_add_ull(&ctx.filtered, 1)
            v = PYXLIO_PACKET_DROP
        elif atomic_get(&ctx.has_fn):
            with gil:
                v = call_engine(ctx.engine, fd, sz_iov, iov, info)
    atomic_dec(&ctx.inflight)
    return v


cdef pyxlio_verdict_t call_engine(PyObject *engine, int fd, size_t sz_iov, iovec *iov,
                                  pyxlio_recv_info_t *info) noexcept:
    # A strong reference for the whole call: the callback may unregister itself, dropping
    # the registration's reference, which may be the engine's last.
    cdef SocketEngine e = <SocketEngine>engine
    return e.call_fn(fd, sz_iov, iov, info)


cdef void report_malformed(PyObject *engine) noexcept:
    cdef SocketEngine e = <SocketEngine>engine
    e.provider_error("a receive callback with a malformed packet (fragment count or info)")


@cython.final
@cython.auto_pickle(False)
cdef class RecvInfo:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """RecvInfo(*args, **kwargs)
--

    What XLIO told about a datagram handed to a receive callback (copied: valid forever).

    Made by pyxlio only; ``RecvInfo()`` raises TypeError."""

    cdef char _src[ADDR_BYTES]
    cdef char _dst[ADDR_BYTES]
    cdef socklen_t _srclen, _dstlen
    cdef readonly int fd
    cdef readonly size_t payload_size
    cdef readonly uint32_t queue_packets, queue_bytes
    cdef readonly long long hw_timestamp_ns, sw_timestamp_ns
    cdef readonly size_t fragments
    cdef readonly bint software

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pyxlio.RecvInfo objects are made by pyxlio for receive callbacks")

    @property
    def path(self) -> str:
        """Who ran the callback: "xlio" (inside XLIO's receive path, the datagram in XLIO's
        buffers) or "pyxlio" (pyxlio, on a datagram its receive call took: no XLIO, a socket
        XLIO does not offload, a layout without callbacks).  On the "pyxlio" path the view is
        of a copy; sw_timestamp_ns is the kernel's receive time (SO_TIMESTAMPNS) where the
        datagram came through pyxlio's own recvmmsg, else when pyxlio took it (both
        CLOCK_REALTIME); hw_timestamp_ns and the queue counts are 0."""
        return "pyxlio" if self.software else "xlio"

    @property
    def src(self) -> object:
        """The source address, as the socket module gives it, or None."""
        return sockaddr_to_tuple(self._src, self._srclen)

    @property
    def dst(self) -> object:
        """The destination address, or None."""
        return sockaddr_to_tuple(self._dst, self._dstlen)

    def __repr__(self) -> str:
        return (f"<pyxlio.RecvInfo fd={self.fd} src={self.src} size={self.payload_size} "
                f"fragments={self.fragments} sw_ns={self.sw_timestamp_ns} path={self.path}>")


cdef RecvInfo make_recv_info(int fd, size_t sz_iov, size_t total, pyxlio_recv_info_t *info):
    cdef RecvInfo ri = RecvInfo.__new__(RecvInfo)
    ri.fd = fd
    ri.fragments = sz_iov
    # 3.51.1 never fills payload_sz in: the sum of the fragments is the truth.
    ri.payload_size = total
    ri.queue_packets = info.socket_ready_queue_pkt_count
    ri.queue_bytes = info.socket_ready_queue_byte_count
    ri.hw_timestamp_ns = info.hw_timestamp.tv_sec * 1000000000LL + info.hw_timestamp.tv_nsec
    ri.sw_timestamp_ns = info.sw_timestamp.tv_sec * 1000000000LL + info.sw_timestamp.tv_nsec
    if get_ops().layout == PYXLIO_LAYOUT_VMA:
        # libvma's vma_info_t points to a struct sockaddr_in (16 bytes): nothing past it is read.
        copy_sockaddr_in(info.src, ri._src, &ri._srclen)
        copy_sockaddr_in(info.dst, ri._dst, &ri._dstlen)
    else:
        copy_sockaddr(info.src, ri._src, &ri._srclen)
        copy_sockaddr(info.dst, ri._dst, &ri._dstlen)
    return ri


cdef void copy_sockaddr_in(const sockaddr *sa, char *dst, socklen_t *dstlen) noexcept nogil:
    """Copy a struct sockaddr_in libvma points at (another family: no address)."""
    cdef unsigned short family
    dstlen[0] = 0
    if sa == NULL:
        return
    memcpy(&family, sa, 2)
    if family != AF_INET:
        return
    dstlen[0] = 16
    memcpy(dst, sa, 16)
