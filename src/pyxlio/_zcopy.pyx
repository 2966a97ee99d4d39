# cython: language_level=3, embedsignature=True
"""Zero-copy receive: the per-socket engine, Packet and PacketBatch, receive callbacks.

Ownership rules (design.md):
- A PacketBatch owns the XLIO buffers of the datagrams it received until it is released
  (``release()``, ``with``, or, as a last resort, collection with a ResourceWarning).  One free
  call returns them all.  A Packet is a view of one datagram of a batch (a standalone packet
  from ``recvfrom_zcopy`` is the only packet of a hidden batch of one).
- Packets and batches are buffer exporters with an export count: releasing while a memoryview
  is exported raises BufferError, as ``mmap.close()`` does.  Nothing can read a freed buffer.
- A buffer is freed on the socket that received it, exactly once, and never in a forked child.

The receive loops run without the GIL, retry EINTR after checking signals, and honour the
socket's timeout (blocking in the kernel, or poll() for a positive timeout).
"""

cimport cython
from cpython.array cimport array, clone
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.ref cimport PyObject
from libc.errno cimport errno, EAGAIN, EINTR, EIO, EINVAL, ENOMEM
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset, memcmp

from pyxlio._xlio cimport *
from pyxlio._api cimport get_ops, raise_xlio, fork_generation

import collections
import time
import warnings

from pyxlio.constants import Verdict
from pyxlio.errors import XlioError, XlioNotLoadedError

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    unsigned short ntohs(unsigned short)
    unsigned int ntohl(unsigned int)

cdef extern from "Python.h":
    object PyMemoryView_FromObject(object obj)

DEF ADDR_BYTES = 28           # sizeof(struct sockaddr_in6): holds v4 and v6 sources
DEF LANDING = 65536 + 64      # one recvfrom_zcopy result: descriptors, or a copied datagram
DEF POOL_MAX = 4
DEF SLOT_ZC = 1               # an XLIO buffer (packet_id) to free
DEF SLOT_FREED = 2
DEF SLOT_TRUNC = 4

cdef char EMPTY[1]

# ---------------------------------------------------------------------------------------------
# Batch storage (C, pooled per socket)
# ---------------------------------------------------------------------------------------------

cdef struct slot_t:
    void *packet_id            # XLIO packet (SLOT_ZC) or NULL
    char *data                 # first fragment (zero-copy) or NULL (copied: see data_off)
    size_t data_off            # copied: offset in copybuf
    uint32_t nfrags
    uint32_t frag_index        # first fragment in store.frags when nfrags > 1
    uint32_t flags
    uint32_t id_count          # XLIO packets behind this slot: 1, or more for a merged stream read
    uint32_t id_index          # their ids in store.ids when id_count > 1
    uint32_t exports           # live buffer exports of this datagram (any Python object)
    socklen_t addrlen
    char addr[ADDR_BYTES]

cdef struct free_ent_t:        # a recvfrom_zcopy_free_packets entry with sz_iov = 0
    void *packet_id
    size_t sz_iov

cdef struct store_t:
    Py_ssize_t cap, n
    slot_t *slots
    uint32_t *lens
    free_ent_t *frees
    char *copybuf
    size_t copycap, copyused
    iovec *frags
    size_t fragcap, fragused
    void **ids                 # packet ids of merged slots
    size_t idcap, idused
    size_t freecap             # entries in `frees`
    mmsghdr *msgs              # kernel path (recvmmsg), built for `slot_size` strides
    iovec *msg_iov
    size_t slot_size
    bint eof


cdef store_t *store_new(Py_ssize_t cap) noexcept nogil:
    cdef store_t *st = <store_t *>malloc(sizeof(store_t))
    if st == NULL:
        return NULL
    memset(st, 0, sizeof(store_t))
    if store_reserve(st, cap) != 0:
        store_del(st)
        return NULL
    return st


cdef void store_del(store_t *st) noexcept nogil:
    if st == NULL:
        return
    free(st.slots); free(st.lens); free(st.frees); free(st.copybuf); free(st.frags); free(st.ids)
    free(st.msgs); free(st.msg_iov)
    free(st)


cdef int store_reserve(store_t *st, Py_ssize_t cap) noexcept nogil:
    """Room for `cap` packets (kernel arrays are rebuilt lazily)."""
    cdef void *p
    if cap <= st.cap:
        return 0
    p = realloc(st.slots, cap * sizeof(slot_t))
    if p == NULL:
        return -1
    st.slots = <slot_t *>p
    p = realloc(st.lens, cap * sizeof(uint32_t))
    if p == NULL:
        return -1
    st.lens = <uint32_t *>p
    st.cap = cap
    free(st.msgs); free(st.msg_iov)
    st.msgs = NULL; st.msg_iov = NULL; st.slot_size = 0
    return 0


cdef int grow(void **buf, size_t *cap, size_t need, size_t item, size_t first) noexcept nogil:
    """Make room for `need` items in the realloc'ed array *buf (doubling, at least `first`)."""
    cdef size_t n
    cdef void *p
    if need <= cap[0]:
        return 0
    n = cap[0] * 2 if cap[0] else first
    while n < need:
        n *= 2
    p = realloc(buf[0], n * item)
    if p == NULL:
        return -1
    buf[0] = p
    cap[0] = n
    return 0


cdef int store_copy_room(store_t *st, size_t need) noexcept nogil:
    cdef char *before = st.copybuf
    if grow(<void **>&st.copybuf, &st.copycap, st.copyused + need, 1, 65536) != 0:
        return -1
    if st.copybuf != before and st.msgs != NULL:
        free(st.msgs); free(st.msg_iov)   # the kernel arrays pointed into the old buffer
        st.msgs = NULL; st.msg_iov = NULL; st.slot_size = 0
    return 0


cdef inline int store_frag_room(store_t *st, size_t need) noexcept nogil:
    return grow(<void **>&st.frags, &st.fragcap, st.fragused + need, sizeof(iovec), 64)


cdef inline int store_id_room(store_t *st, size_t need) noexcept nogil:
    return grow(<void **>&st.ids, &st.idcap, st.idused + need, sizeof(void *), 64)


cdef inline int store_free_room(store_t *st, size_t need) noexcept nogil:
    return grow(<void **>&st.frees, &st.freecap, need, sizeof(free_ent_t), 64)


cdef int store_kernel_arrays(store_t *st, Py_ssize_t count, size_t slot_size) noexcept nogil:
    """recvmmsg headers for `count` slots of `slot_size` bytes each in copybuf."""
    cdef Py_ssize_t i
    if st.msgs != NULL and st.slot_size == slot_size:
        return 0
    free(st.msgs); free(st.msg_iov)
    st.msgs = NULL; st.msg_iov = NULL
    st.copyused = 0
    if store_copy_room(st, <size_t>st.cap * slot_size) != 0:
        return -1
    st.msgs = <mmsghdr *>malloc(st.cap * sizeof(mmsghdr))
    st.msg_iov = <iovec *>malloc(st.cap * sizeof(iovec))
    if st.msgs == NULL or st.msg_iov == NULL:
        return -1
    memset(st.msgs, 0, st.cap * sizeof(mmsghdr))
    for i in range(st.cap):
        st.msg_iov[i].iov_base = st.copybuf + i * slot_size
        st.msg_iov[i].iov_len = slot_size
        st.msgs[i].msg_hdr.msg_iov = &st.msg_iov[i]
        st.msgs[i].msg_hdr.msg_iovlen = 1
    st.slot_size = slot_size
    return 0


cdef inline char *slot_data(store_t *st, slot_t *s) noexcept nogil:
    if s.flags & SLOT_ZC:
        return s.data if s.data != NULL else EMPTY
    return st.copybuf + s.data_off


cdef inline void slot_clear(slot_t *s) noexcept nogil:
    s.packet_id = NULL
    s.data = NULL
    s.data_off = 0
    s.nfrags = 1
    s.frag_index = 0
    s.flags = 0
    s.id_count = 1
    s.id_index = 0
    s.exports = 0
    s.addrlen = 0


# ---------------------------------------------------------------------------------------------
# The nogil receive loops.  Each returns the number of packets stored, or -1 with *err set.
# ---------------------------------------------------------------------------------------------

cdef Py_ssize_t fill_zcopy(const xlio_ops_t *ops, int fd, int sotype, store_t *st,
                           Py_ssize_t maxp, int flags0, bint want_addr, int *err) noexcept nogil:
    """recvfrom_zcopy until `maxp` packets, the first call honouring flags0 (blocking or not),
    the rest with MSG_DONTWAIT.  Zero-copy results are walked with the real stride; copied
    results (data that came through the kernel) are kept in the store's copy area.  A stream
    read that returns several packets when one is asked for (maxp == 1, recvfrom_zcopy) becomes
    one slot whose fragments are all of theirs: nothing is left queued out of poll()'s sight."""
    cdef char landing[LANDING]
    cdef Py_ssize_t n = 0
    cdef int flags, rc
    cdef socklen_t addrlen
    cdef slot_t *s
    cdef slot_t *first
    cdef pyxlio_zc_packets_t *hdr = <pyxlio_zc_packets_t *>landing
    cdef pyxlio_zc_packet_t *p
    cdef size_t k, j, npk, nfr, total
    cdef char addr[ADDR_BYTES]
    err[0] = 0
    while n < maxp:
        flags = flags0 if n == 0 else (flags0 | MSG_DONTWAIT)
        addrlen = ADDR_BYTES if want_addr else 0
        hdr.n_packet_num = 0
        if want_addr:
            rc = ops.recvfrom_zcopy(fd, landing, LANDING, &flags, <sockaddr *>addr, &addrlen)
        else:
            rc = ops.recvfrom_zcopy(fd, landing, LANDING, &flags, NULL, NULL)
        if rc < 0:
            err[0] = errno
            return n if n > 0 else -1
        if (flags & PYXLIO_MSG_XLIO_ZCOPY) and (rc > 0 or hdr.n_packet_num > 0):
            npk = hdr.n_packet_num
            if npk > 1 and maxp == 1 and sotype == SOCK_STREAM:
                if merge_stream_read(st, hdr, npk, addr, addrlen) != 0:
                    err[0] = ENOMEM
                    return -1
                return 1
            if store_reserve(st, n + <Py_ssize_t>npk) != 0:
                err[0] = ENOMEM   # cannot happen with sane sizes; the packets stay unfreed
                return n if n > 0 else -1
            p = pyxlio_zc_first(hdr)
            for k in range(npk):
                s = &st.slots[n]
                slot_clear(s)
                s.flags = SLOT_ZC
                s.packet_id = p.packet_id
                nfr = p.sz_iov
                s.addrlen = addrlen if addrlen <= ADDR_BYTES else ADDR_BYTES
                memcpy(s.addr, addr, s.addrlen)
                total = 0
                for j in range(nfr):
                    total += pyxlio_zc_iov_len(p, j)
                st.lens[n] = <uint32_t>total
                s.nfrags = <uint32_t>nfr
                if nfr >= 1:
                    s.data = <char *>pyxlio_zc_iov_base(p, 0)
                if nfr > 1:
                    if store_frag_room(st, nfr) == 0:
                        s.frag_index = <uint32_t>st.fragused
                        for j in range(nfr):
                            st.frags[st.fragused + j].iov_base = pyxlio_zc_iov_base(p, j)
                            st.frags[st.fragused + j].iov_len = pyxlio_zc_iov_len(p, j)
                        st.fragused += nfr
                    else:
                        s.nfrags = 1   # out of memory: expose the first fragment only
                        st.lens[n] = <uint32_t>pyxlio_zc_iov_len(p, 0)
                n += 1
                p = pyxlio_zc_next(p)
            if sotype == SOCK_STREAM:
                break          # one stream read per call: keep TCP chunks in order, cheaply
        else:
            if rc == 0 and sotype == SOCK_STREAM:
                st.eof = True
                break
            if store_reserve(st, n + 1) != 0 or store_copy_room(st, <size_t>rc) != 0:
                err[0] = ENOMEM
                return n if n > 0 else -1
            s = &st.slots[n]
            slot_clear(s)
            s.data_off = st.copyused
            memcpy(st.copybuf + st.copyused, landing, <size_t>rc)
            st.copyused += <size_t>rc
            st.lens[n] = <uint32_t>rc
            s.addrlen = addrlen if addrlen <= ADDR_BYTES else ADDR_BYTES
            memcpy(s.addr, addr, s.addrlen)
            n += 1
            if sotype == SOCK_STREAM:
                break
    return n


cdef int merge_stream_read(store_t *st, pyxlio_zc_packets_t *hdr, size_t npk, const char *addr,
                           socklen_t addrlen) noexcept nogil:
    """Slot 0 := every packet of one stream read, fragments in order, ids kept for the free."""
    cdef pyxlio_zc_packet_t *p = pyxlio_zc_first(hdr)
    cdef slot_t *s = &st.slots[0]
    cdef size_t k, j, nfr = 0, total = 0
    cdef pyxlio_zc_packet_t *q = p
    for k in range(npk):
        nfr += q.sz_iov
        q = pyxlio_zc_next(q)
    if store_frag_room(st, nfr) != 0 or store_id_room(st, npk) != 0:
        return -1
    slot_clear(s)
    s.flags = SLOT_ZC
    s.frag_index = <uint32_t>st.fragused
    s.id_index = <uint32_t>st.idused
    s.id_count = <uint32_t>npk
    s.nfrags = <uint32_t>nfr
    s.addrlen = addrlen if addrlen <= ADDR_BYTES else ADDR_BYTES
    memcpy(s.addr, addr, s.addrlen)
    for k in range(npk):
        st.ids[st.idused + k] = p.packet_id
        for j in range(p.sz_iov):
            st.frags[st.fragused].iov_base = pyxlio_zc_iov_base(p, j)
            st.frags[st.fragused].iov_len = pyxlio_zc_iov_len(p, j)
            total += st.frags[st.fragused].iov_len
            st.fragused += 1
        p = pyxlio_zc_next(p)
    s.packet_id = st.ids[s.id_index]
    s.data = <char *>st.frags[s.frag_index].iov_base if nfr else NULL
    st.lens[0] = <uint32_t>total
    return 0


cdef Py_ssize_t fill_kernel(int fd, int sotype, store_t *st, Py_ssize_t maxp, int flags0,
                            size_t slot_size, bint want_addr, int *err) noexcept nogil:
    """No XLIO: recvmmsg (UDP) or one recv (TCP) straight into the store's buffers."""
    cdef Py_ssize_t i, n
    cdef slot_t *s
    cdef ssize_t rc
    err[0] = 0
    if store_reserve(st, maxp) != 0 or store_kernel_arrays(st, st.cap, slot_size) != 0:
        err[0] = ENOMEM
        return -1
    if sotype == SOCK_STREAM:
        s = &st.slots[0]
        slot_clear(s)
        rc = recvfrom(fd, st.copybuf, slot_size, flags0, NULL, NULL)
        if rc < 0:
            err[0] = errno
            return -1
        if rc == 0:
            st.eof = True
            return 0
        st.lens[0] = <uint32_t>rc
        return 1
    for i in range(maxp):
        # Without addresses the kernel skips a sockaddr copy per datagram (measurable).
        st.msgs[i].msg_hdr.msg_name = st.slots[i].addr if want_addr else NULL
        st.msgs[i].msg_hdr.msg_namelen = ADDR_BYTES if want_addr else 0
        st.msgs[i].msg_hdr.msg_flags = 0
    n = recvmmsg(fd, st.msgs, <unsigned int>maxp, flags0 | MSG_WAITFORONE, NULL)
    if n < 0:
        err[0] = errno
        return -1
    for i in range(n):
        s = &st.slots[i]
        slot_clear(s)
        s.data_off = <size_t>i * slot_size
        s.addrlen = st.msgs[i].msg_hdr.msg_namelen
        if st.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
            s.flags = SLOT_TRUNC
        st.lens[i] = st.msgs[i].msg_len
    return n


cdef Py_ssize_t ids_to_free(store_t *st, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """How many XLIO packet ids the not-yet-freed zero-copy slots of [lo, hi) hold."""
    cdef Py_ssize_t i, need = 0
    for i in range(lo, hi):
        if (st.slots[i].flags & SLOT_ZC) and not (st.slots[i].flags & SLOT_FREED):
            need += st.slots[i].id_count
    return need


cdef Py_ssize_t collect_frees(store_t *st, Py_ssize_t lo, Py_ssize_t hi,
                              free_ent_t *out) noexcept nogil:
    """Mark the zero-copy slots of [lo, hi) freed and write their ids to `out` as
    recvfrom_zcopy_free_packets entries (sz_iov = 0, 16-byte stride).  Call with the GIL held:
    the marking is what makes every id go to XLIO exactly once, whatever the threads do."""
    cdef Py_ssize_t i, count = 0
    cdef uint32_t k
    cdef slot_t *s
    for i in range(lo, hi):
        s = &st.slots[i]
        if (s.flags & SLOT_ZC) and not (s.flags & SLOT_FREED):
            s.flags |= SLOT_FREED
            if s.id_count == 1:
                out[count].packet_id = s.packet_id
                out[count].sz_iov = 0
                count += 1
            else:
                for k in range(s.id_count):
                    out[count].packet_id = st.ids[s.id_index + k]
                    out[count].sz_iov = 0
                    count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------

cdef object sockaddr_to_tuple(const char *addr, socklen_t addrlen):
    """sockaddr -> (host, port) / (host, port, flowinfo, scope_id), as the socket module does."""
    cdef char text[64]
    cdef unsigned short family
    if addrlen < 2:
        return None
    memcpy(&family, addr, 2)
    if family == AF_INET and addrlen >= 8:
        inet_ntop(AF_INET, addr + 4, text, sizeof(text))
        return (text.decode("ascii"), ntohs((<unsigned short *>(addr + 2))[0]))
    if family == AF_INET6 and addrlen >= 24:
        inet_ntop(AF_INET6, addr + 8, text, sizeof(text))
        return (text.decode("ascii"), ntohs((<unsigned short *>(addr + 2))[0]),
                ntohl((<unsigned int *>(addr + 4))[0]), (<unsigned int *>(addr + 24))[0])
    return None


# ---------------------------------------------------------------------------------------------
# Receive callbacks
# ---------------------------------------------------------------------------------------------

cdef struct cb_ctx_t:
    PyObject *engine
    bint has_fn
    bint has_filter
    bint keep
    Py_ssize_t offset
    Py_ssize_t plen
    char pattern[64]
    unsigned long long filtered


cdef bint match_at(iovec *iov, size_t sz_iov, Py_ssize_t offset, const char *pat,
                   Py_ssize_t plen) noexcept nogil:
    """Do the datagram's bytes at `offset` equal `pat`?  Works across fragments."""
    cdef size_t k
    cdef Py_ssize_t pos = 0, start, take, done = 0
    cdef Py_ssize_t flen
    for k in range(sz_iov):
        flen = <Py_ssize_t>iov[k].iov_len
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
    """XLIO -> pyxlio: the C filter first (no GIL), then the Python function (with the GIL)."""
    cdef cb_ctx_t *ctx = <cb_ctx_t *>context
    if ctx.has_filter:
        if match_at(iov, sz_iov, ctx.offset, ctx.pattern, ctx.plen) != ctx.keep:
            ctx.filtered += 1
            return PYXLIO_PACKET_DROP
    if not ctx.has_fn:
        return PYXLIO_PACKET_RECV
    with gil:
        return (<SocketEngine>ctx.engine).call_fn(fd, sz_iov, iov, info)


@cython.final
cdef class RecvInfo:
    """What XLIO told about a datagram handed to a receive callback (copied: valid forever)."""

    cdef char _src[ADDR_BYTES]
    cdef char _dst[ADDR_BYTES]
    cdef socklen_t _srclen, _dstlen
    cdef readonly int fd
    cdef readonly size_t payload_size
    cdef readonly uint32_t queue_packets, queue_bytes
    cdef readonly long long hw_timestamp_ns, sw_timestamp_ns
    cdef readonly size_t fragments

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
                f"fragments={self.fragments} sw_ns={self.sw_timestamp_ns}>")


cdef void copy_sockaddr(const sockaddr *sa, char *dst, socklen_t *dstlen) noexcept nogil:
    cdef unsigned short family
    dstlen[0] = 0
    if sa == NULL:
        return
    memcpy(&family, sa, 2)
    if family == AF_INET:
        dstlen[0] = 16
    elif family == AF_INET6:
        dstlen[0] = 28
    else:
        return
    memcpy(dst, sa, dstlen[0])


# ---------------------------------------------------------------------------------------------
# The per-socket engine
# ---------------------------------------------------------------------------------------------

@cython.no_gc_clear
cdef class SocketEngine:
    """pyxlio's receive engine for one socket (internal: use :class:`pyxlio.socket.socket`)."""

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
    cdef PyObject *head           # borrowed: the live batches, linked through _prev/_next
    cdef readonly object held
    cdef list cb_errors
    cdef object cb_fn
    cdef cb_ctx_t cb
    cdef bint cb_registered
    cdef readonly bint closed
    cdef int owned_fd             # fd this engine closes when it dies (socket finalized early)
    cdef int offload_state        # -1 unknown, 0 XLIO does not offload it, 1 offloaded

    def __cinit__(self, int fd, int family, int sotype):
        self.fd = fd
        self.family = family
        self.sotype = sotype
        self.ops = get_ops()
        self.zc = self.ops.recvfrom_zcopy != NULL and self.ops.free_packets != NULL
        self.timeout = -1.0
        self.max_datagram = 65536
        self.held = collections.deque()
        self.cb_errors = []
        self.owned_fd = -1
        self.offload_state = -1
        memset(&self.cb, 0, sizeof(cb_ctx_t))
        self.cb.engine = <PyObject *>self

    def __dealloc__(self):
        cdef int i
        for i in range(self.npool):
            store_del(self.pool[i])
        self.npool = 0
        if self.owned_fd >= 0:
            import os
            try:
                os.close(self.owned_fd)
            except OSError:
                pass

    # -- configuration ------------------------------------------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        self.timeout = -1.0 if timeout is None else float(timeout)

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

    cdef bint use_zcopy(self) noexcept:
        """Receive through recvfrom_zcopy?  Not on a socket XLIO does not offload: there it
        would be one copying call per datagram, where recvmmsg takes a batch per call."""
        cdef int rc
        if not self.zc:
            return False
        if self.offload_state < 0:
            # The probe (callbacks) is a datagram-socket facility: a stream always goes to
            # recvfrom_zcopy, which serves both offloaded and kernel data in order.
            if (self.ops.register_recv_callback == NULL or self.cb_registered
                    or self.sotype != SOCK_DGRAM):
                self.offload_state = 1
            else:
                with nogil:
                    rc = self.ops.register_recv_callback(self.fd, NULL, NULL)
                self.offload_state = 1 if rc == 0 else 0
        return self.offload_state == 1

    def forget_offload_state(self) -> None:
        """bind/connect may change it (transport rules apply there): ask XLIO again."""
        self.offload_state = -1

    @property
    def offloaded(self) -> object:
        """True/False when XLIO can tell, None when the loaded layout cannot."""
        cdef int rc
        if self.closed:
            return False
        if self.ops.cap_mask == 0 and self.ops.free_packets == NULL:
            return False
        if self.cb_registered:
            return True
        if self.ops.register_recv_callback == NULL:
            return None
        with nogil:
            rc = self.ops.register_recv_callback(self.fd, NULL, NULL)
        if rc != 0 and self.sotype != SOCK_DGRAM:
            return None      # receive callbacks are for datagram sockets: no answer for a stream
        return rc == 0

    # -- storage pool -------------------------------------------------------------------------
    cdef store_t *take_store(self, Py_ssize_t cap) except NULL:
        cdef store_t *st
        cdef int i
        for i in range(self.npool - 1, -1, -1):
            st = self.pool[i]
            if st.cap >= cap:
                self.pool[i] = self.pool[self.npool - 1]
                self.npool -= 1
                st.n = 0
                st.eof = False
                st.fragused = 0
                st.idused = 0
                if st.msgs == NULL:
                    st.copyused = 0
                return st
        st = store_new(cap)
        if st == NULL:
            raise MemoryError()
        return st

    cdef void give_store(self, store_t *st) noexcept:
        if st == NULL:
            return
        if self.npool < POOL_MAX and not self.closed:
            if st.msgs == NULL:
                st.copyused = 0
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

    cdef void unlink(self, PacketBatch b) noexcept:
        if b._prev != NULL:
            (<PacketBatch>b._prev)._next = b._next
        elif self.head == <PyObject *>b:
            self.head = b._next
        if b._next != NULL:
            (<PacketBatch>b._next)._prev = b._prev
        b._prev = NULL
        b._next = NULL

    # -- receiving ----------------------------------------------------------------------------
    cdef int check_open(self) except -1:
        if self.closed:
            raise OSError(9, "Bad file descriptor: the socket is closed")
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
        self.raise_callback_errors()

    cdef bint interrupted(self):
        """A callback was interrupted (KeyboardInterrupt, SystemExit): the user wants to stop."""
        for exc in self.cb_errors:
            if not isinstance(exc, Exception):
                return True
        return False

    def check_interrupts(self) -> None:
        """Raise a KeyboardInterrupt / SystemExit that hit a receive callback, at once."""
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

    cdef double rcvtimeo(self):
        """SO_RCVTIMEO of the socket in seconds (0: none), read only when about to wait."""
        cdef timeval tv
        cdef socklen_t length = sizeof(tv)
        tv.tv_sec = 0
        tv.tv_usec = 0
        if getsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &length) != 0:
            return 0.0
        return tv.tv_sec + tv.tv_usec / 1e6

    cdef Py_ssize_t receive(self, store_t *st, Py_ssize_t maxp, double timeout,
                            int extra_flags, bint want_addr=True) except -2:
        """Fill `st`; returns the count, 0 when nothing came in time (or at EOF).

        pyxlio does its own waiting: every receive call is non-blocking, and in between it
        waits in poll() without the GIL, checking signals after each wait, so Ctrl-C is prompt
        whatever the provider does inside a blocking receive.  `timeout` < 0 is a blocking
        socket, bounded by its SO_RCVTIMEO if one is set."""
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
        # force=True must reach XLIO, which alone can refuse a copy (EIO).
        cdef bint zc_path = self.use_zcopy() or (
            self.zc and (extra_flags & PYXLIO_MSG_XLIO_ZCOPY_FORCE) != 0)
        while True:
            with nogil:
                if zc_path:
                    n = fill_zcopy(self.ops, self.fd, self.sotype, st, maxp, flags0, want_addr,
                                   &err)
                else:
                    n = fill_kernel(self.fd, self.sotype, st, maxp, flags0, slot, want_addr,
                                    &err)
            if n >= 0:
                st.n = n
                return n
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err != EAGAIN:   # EWOULDBLOCK == EAGAIN on Linux
                set_errno(err)
                if err == EIO and (extra_flags & PYXLIO_MSG_XLIO_ZCOPY_FORCE):
                    raise XlioError(EIO, "the datagram came through the kernel and force=True "
                                    "refuses a copy", "recvfrom_zcopy")
                PyErr_SetFromErrno(OSError)
                return -2
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
            ms = -1
            if bounded:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return 0
                ms = <int>(remaining * 1000.0) + 1
            pfd.fd = self.fd
            pfd.events = POLLIN
            pfd.revents = 0
            with nogil:
                prc = poll(&pfd, 1, ms)
            PyErr_CheckSignals()

    cdef PacketBatch make_batch(self, store_t *st, Py_ssize_t n):
        cdef PacketBatch b = PacketBatch.__new__(PacketBatch)
        cdef Py_ssize_t i, zc = 0
        b.engine = self
        b.st = st
        b.n = n
        b.gen = fork_generation()
        for i in range(n):
            if st.slots[i].flags & SLOT_ZC:
                zc += 1
        b.live = zc
        b.nzc = zc
        self.outstanding += zc
        self.link(b)
        return b

    def recv_batch(self, Py_ssize_t max_packets=64, timeout=None, bint addresses=True) -> PacketBatch:
        if max_packets < 1 or max_packets > 65536:
            raise ValueError(f"max_packets must lie in 1 .. 65536, not {max_packets}")
        self.check_open()
        if timeout is not None and (isinstance(timeout, bool) or
                                    not isinstance(timeout, (int, float))):
            raise TypeError(f"timeout must be None or a number, not {type(timeout).__name__}")
        cdef double t = self.timeout if timeout is None else float(timeout)
        if timeout is not None and t < 0:
            raise ValueError("timeout must be None or >= 0")
        if self.cb_errors:
            self.raise_callback_errors()
        cdef store_t *st = self.take_store(max_packets)
        cdef Py_ssize_t n
        try:
            n = self.receive(st, max_packets, t, 0, addresses)
        except BaseException:
            self.give_store(st)
            raise
        if n == 0 and self.cb_errors:
            self.give_store(st)
            self.raise_callback_errors()
        b = self.make_batch(st, n)
        if self.cb_errors and self.interrupted():
            b.finish(True)          # Ctrl-C wins over the datagrams in hand
            self.raise_interrupt()
        # With datagrams in hand, a callback's exception waits for the next receive call:
        # raising now would lose them.
        return b

    def recvfrom_zcopy(self, int flags=0, bint force=False) -> Packet:
        self.check_open()
        if flags < 0 or flags & PYXLIO_MSG_XLIO_ZCOPY:
            raise ValueError(f"flags {flags:#x}: MSG_ZCOPY is set by XLIO on output, never passed in")
        if flags & PYXLIO_MSG_XLIO_ZCOPY_FORCE:      # the flag spelled out: same as force=True
            force = True
            flags &= ~PYXLIO_MSG_XLIO_ZCOPY_FORCE
        if self.cb_errors:
            self.raise_callback_errors()
        if force:
            if not self.zc:
                raise XlioNotLoadedError(
                    "recvfrom_zcopy",
                    "force=True needs XLIO's zero-copy receive, and none is loaded: the data "
                    "would be copied") if self.ops.cap_mask == 0 else XlioError(
                    EIO, "force=True: this XLIO has no zero-copy receive", "recvfrom_zcopy")
            flags |= PYXLIO_MSG_XLIO_ZCOPY_FORCE
        cdef store_t *st = self.take_store(1)
        cdef Py_ssize_t n
        try:
            n = self.receive(st, 1, self.timeout, flags)
        except BaseException:
            self.give_store(st)
            raise
        if n == 0:
            self.give_store(st)
            if self.cb_errors:
                self.raise_callback_errors()
            if st.eof:
                return None
            if self.timeout == 0:
                raise BlockingIOError(EAGAIN, "Resource temporarily unavailable")
            raise TimeoutError("timed out")
        b = self.make_batch(st, n)
        b.standalone = True
        if self.cb_errors and self.interrupted():
            b.finish(True)          # Ctrl-C wins over the datagram in hand
            self.raise_interrupt()
        return b.packet(0)

    # -- callbacks ----------------------------------------------------------------------------
    cdef int register(self) except -1:
        cdef bint want = self.cb.has_fn or self.cb.has_filter
        cdef int rc
        if want == self.cb_registered:
            return 0
        if self.ops.register_recv_callback == NULL:
            if self.ops.cap_mask == 0:
                raise XlioNotLoadedError("register_recv_callback")
            from pyxlio.errors import UnsupportedError
            raise UnsupportedError("register_recv_callback")
        with nogil:
            if want:
                rc = self.ops.register_recv_callback(self.fd, recv_callback, &self.cb)
            else:
                rc = self.ops.register_recv_callback(self.fd, NULL, NULL)
        if rc != 0:
            err = errno
            self.cb.has_fn = False
            self.cb.has_filter = False
            raise_xlio(err, "register_recv_callback",
                       f"fd {self.fd}" + (": the socket is not offloaded by XLIO"
                                          if err == EINVAL else ""))
        self.cb_registered = want
        return 0

    def set_recv_callback(self, fn: object) -> None:
        self.check_open()
        if fn is not None and not callable(fn):
            raise TypeError(f"the receive callback must be callable or None, not "
                            f"{type(fn).__name__}")
        old_fn, old_has = self.cb_fn, self.cb.has_fn
        self.cb_fn = fn
        self.cb.has_fn = fn is not None
        try:
            self.register()
        except BaseException:
            self.cb_fn, self.cb.has_fn = old_fn, old_has
            raise

    def set_recv_filter(self, offset: int, pattern: bytes, keep: bool = True) -> None:
        self.check_open()
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError("offset must be an int")
        if not 0 <= offset <= 65535:
            raise ValueError(f"offset {offset} is out of range (0 .. 65535)")
        data = bytes(pattern)
        if not 1 <= len(data) <= 64:
            raise ValueError("pattern must be 1 to 64 bytes long")
        memcpy(self.cb.pattern, <const char *>data, len(data))
        self.cb.plen = len(data)
        self.cb.offset = offset
        self.cb.keep = bool(keep)
        self.cb.has_filter = True
        try:
            self.register()
        except BaseException:
            self.cb.has_filter = False
            raise

    def clear_recv_filter(self) -> None:
        self.cb.has_filter = False
        if not self.closed:
            self.register()

    @property
    def filtered(self) -> int:
        """Datagrams the C filter dropped."""
        return self.cb.filtered

    cdef pyxlio_verdict_t call_fn(self, int fd, size_t sz_iov, iovec *iov,
                                  pyxlio_recv_info_t *info) noexcept:
        """The Python receive callback, with the GIL.  Never lets an exception escape."""
        cdef PacketBatch b = None
        cdef Packet pkt
        cdef RecvInfo ri
        cdef store_t *st
        cdef slot_t *s
        cdef size_t k, total = 0
        cdef int v = PYXLIO_PACKET_RECV
        try:
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
            for k in range(sz_iov):
                total += iov[k].iov_len
            st.lens[0] = <uint32_t>total
            copy_sockaddr(info.src, s.addr, &s.addrlen)
            st.n = 1
            b = PacketBatch.__new__(PacketBatch)
            b.engine = self
            b.st = st
            b.n = 1
            b.gen = fork_generation()
            b.standalone = True
            b.borrowed = True           # XLIO owns it unless we say HOLD
            pkt = b.packet(0)
            ri = RecvInfo.__new__(RecvInfo)
            ri.fd = fd
            ri.fragments = sz_iov
            ri.payload_size = info.payload_sz if info.payload_sz else total
            ri.queue_packets = info.socket_ready_queue_pkt_count
            ri.queue_bytes = info.socket_ready_queue_byte_count
            ri.hw_timestamp_ns = info.hw_timestamp.tv_sec * 1000000000LL + info.hw_timestamp.tv_nsec
            ri.sw_timestamp_ns = info.sw_timestamp.tv_sec * 1000000000LL + info.sw_timestamp.tv_nsec
            copy_sockaddr(info.src, ri._src, &ri._srclen)
            copy_sockaddr(info.dst, ri._dst, &ri._dstlen)
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
        try:
            if b is not None:
                if v == PYXLIO_PACKET_HOLD or b.st.slots[0].exports > 0:
                    if v != PYXLIO_PACKET_HOLD:
                        self.cb_errors.append(BufferError(
                            "the receive callback kept a view of the datagram after returning; "
                            "pyxlio held the packet (see sock.held) so the memory stays valid"))
                        v = PYXLIO_PACKET_HOLD
                    b.borrowed = False
                    b.live = 1
                    b.nzc = 1
                    self.outstanding += 1
                    self.link(b)
                    self.held.append(b.packet(0))
                else:
                    b.abandon()
        except BaseException as exc:
            self.cb_errors.append(exc)
        return <pyxlio_verdict_t>v

    # -- closing ------------------------------------------------------------------------------
    def release_all(self) -> int:
        """Release every batch of this socket (refuses while a view is exported)."""
        if self.exports > 0:
            raise BufferError(f"cannot close the socket: {self.exports} memoryview(s) of its "
                              "packets are still exported (release them first)")
        cdef int count = 0
        while self.head != NULL:
            (<PacketBatch>self.head).release()
            count += 1
        self.held.clear()
        return count

    def close(self) -> None:
        """Free what the socket still holds and unregister its callback; the caller closes."""
        if self.closed:
            return
        self.release_all()
        if self.cb_registered:
            self.cb.has_fn = False
            self.cb.has_filter = False
            try:
                self.register()
            except OSError:
                pass
        self.closed = True
        for i in range(self.npool):
            store_del(self.pool[i])
        self.npool = 0

    def adopt_fd(self, int fd) -> None:
        """Keep `fd` open until every batch of this engine is gone (socket finalized early)."""
        self.owned_fd = fd


# ---------------------------------------------------------------------------------------------
# PacketBatch and Packet
# ---------------------------------------------------------------------------------------------

cdef array UINT32_TEMPLATE = array("I")
cdef array UINT16_TEMPLATE = array("H")


@cython.no_gc_clear
@cython.freelist(16)
cdef class PacketBatch:
    """Datagrams received in one call, in XLIO's buffers (or in pyxlio's, when copied).

    ``len(batch)``, ``batch[i]`` (a :class:`Packet`, made on demand), iteration, ``views()``
    (one memoryview per datagram), ``lengths`` (an ``array('I')``), ``release()`` (one free
    call for all), and use as a context manager.  Empty (falsy) when nothing arrived in time.
    """

    cdef SocketEngine engine
    cdef store_t *st
    cdef Py_ssize_t n
    cdef Py_ssize_t live           # zero-copy packets not yet freed
    cdef Py_ssize_t nzc
    cdef Py_ssize_t exports
    cdef Py_ssize_t export_index   # which datagram __getbuffer__ exports (-1: none)
    cdef unsigned long gen
    cdef bint released
    cdef bint standalone           # the hidden batch of one standalone Packet
    cdef bint borrowed             # callback packet still owned by XLIO
    cdef PyObject *_prev
    cdef PyObject *_next

    def __cinit__(self):
        self.export_index = -1

    def __dealloc__(self):
        cdef int err = 0
        if self.engine is None:
            return
        if not self.released and not self.borrowed:
            if self.live > 0:
                try:
                    warnings.warn(f"pyxlio: a batch of {self.live} packet(s) was collected "
                                  "unreleased; released now (use release() or `with`)",
                                  ResourceWarning, stacklevel=2)
                except BaseException:
                    pass
            self.finish(True)
        elif self.st != NULL:
            self.engine.give_store(self.st)
            self.st = NULL

    cdef Packet packet(self, Py_ssize_t i):
        cdef Packet p = Packet.__new__(Packet)
        p.batch = self
        p.index = i
        return p

    cdef void abandon(self) noexcept:
        """A callback packet that XLIO keeps: forget it without freeing."""
        self.released = True
        self.live = 0
        if self.st != NULL:
            self.engine.give_store(self.st)
            self.st = NULL

    cdef int finish(self, bint quiet) except -1:
        """Free every packet still held (one call), return the storage, unlink."""
        cdef int err = 0, rc = 0
        cdef bint call = self.gen == fork_generation() and not self.engine.closed
        cdef SocketEngine e = self.engine
        cdef Py_ssize_t count
        if self.released:
            return 0
        self.released = True
        if self.st != NULL and self.live > 0:
            if store_free_room(self.st, <size_t>ids_to_free(self.st, 0, self.n)) != 0:
                raise MemoryError()
            count = collect_frees(self.st, 0, self.n, self.st.frees)
            if call and count > 0:
                with nogil:
                    rc = e.ops.free_packets(e.fd, <pyxlio_zc_packet_t *>self.st.frees,
                                            <size_t>count)
                    if rc != 0:
                        err = errno
            e.outstanding -= self.live
            self.live = 0
        if not self.borrowed:
            e.unlink(self)
        if self.st != NULL:
            e.give_store(self.st)
            self.st = NULL
        if rc < 0 and not quiet:
            raise_xlio(err, "recvfrom_zcopy_free_packets", f"fd {e.fd}")
        return 0

    cdef int free_one(self, Py_ssize_t i) except -1:
        cdef int err = 0, rc = 0
        cdef SocketEngine e = self.engine
        cdef bint call = self.gen == fork_generation() and not e.closed
        cdef slot_t *s = &self.st.slots[i]
        cdef free_ent_t one
        cdef free_ent_t *ents = &one
        cdef Py_ssize_t count
        if not (s.flags & SLOT_ZC) or (s.flags & SLOT_FREED):
            if self.standalone and self.exports == 0:
                self.finish(False)
            return 0
        # Its own entries (not the store's, which a concurrent batch.release() may be using).
        if s.id_count > 1:
            ents = <free_ent_t *>malloc(s.id_count * sizeof(free_ent_t))
            if ents == NULL:
                raise MemoryError()
        count = collect_frees(self.st, i, i + 1, ents)
        if call and count > 0:
            with nogil:
                rc = e.ops.free_packets(e.fd, <pyxlio_zc_packet_t *>ents, <size_t>count)
                if rc != 0:
                    err = errno
        if ents != &one:
            free(ents)
        self.live -= 1
        e.outstanding -= 1
        if self.live == 0 and self.exports == 0:
            self.finish(False)   # else the batch's release (or collection) returns the storage
        if rc < 0:
            raise_xlio(err, "recvfrom_zcopy_free_packets", f"fd {e.fd}")
        return 0

    cdef int check_live(self) except -1:
        if self.released:
            raise ValueError("the batch is released: its packets are gone")
        return 0

    def release(self) -> None:
        """Return every packet to XLIO in one call.  BufferError while a view is exported."""
        if self.released:
            return
        if self.exports > 0:
            raise BufferError(f"cannot release the batch: {self.exports} memoryview(s) of its "
                              "packets are still exported")
        self.finish(False)

    @property
    def released(self) -> bool:
        return self.released

    @property
    def zcopy(self) -> bool:
        """True when every datagram of the batch is in XLIO's buffers (no copy was made)."""
        return self.n > 0 and self.nzc == self.n

    @property
    def eof(self) -> bool:
        """A stream socket reached end of file."""
        return self.st != NULL and self.st.eof

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
    def ports(self) -> array:
        """Source ports as an ``array('H')`` (0 where unknown)."""
        self.check_live()
        cdef array out = clone(UINT16_TEMPLATE, self.n, True)
        cdef Py_ssize_t i
        cdef unsigned short *o = <unsigned short *>out.data.as_voidptr
        for i in range(self.n):
            if self.st.slots[i].addrlen >= 4:
                o[i] = ntohs((<unsigned short *>(self.st.slots[i].addr + 2))[0])
        return out

    @property
    def hosts(self) -> array:
        """IPv4 source addresses as an ``array('I')`` of host-order integers (0 where the
        source is unknown or not IPv4): with :attr:`ports`, the sources with no object per
        datagram (``ipaddress.IPv4Address(batch.hosts[i])`` names one)."""
        self.check_live()
        cdef array out = clone(UINT32_TEMPLATE, self.n, True)
        cdef Py_ssize_t i
        cdef unsigned short family
        cdef uint32_t *o = <uint32_t *>out.data.as_voidptr
        cdef slot_t *s
        for i in range(self.n):
            s = &self.st.slots[i]
            if s.addrlen >= 8:
                memcpy(&family, s.addr, 2)
                if family == AF_INET:
                    o[i] = ntohl((<unsigned int *>(s.addr + 4))[0])
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
        self.st.slots[<Py_ssize_t>buffer.internal - 1].exports -= 1
        self.exports -= 1
        self.engine.exports -= 1

    def __enter__(self) -> PacketBatch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else f"{self.n} packets"
        return f"<pyxlio.PacketBatch {state} zcopy={self.zcopy}>"


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
        if self.i >= self.b.n or self.b.released:
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


@cython.freelist(64)
cdef class Packet:
    """One received datagram (or TCP chunk): fragments in XLIO's buffers, or a copy.

    ``memoryview(pkt)`` when it has one fragment, ``pkt.fragments`` always, ``bytes(pkt)`` for a
    copy, ``release()`` / ``with pkt:`` to give the buffers back.  ``zcopy`` is False when the
    data came through the kernel (no XLIO, or a socket XLIO does not offload).
    """

    cdef PacketBatch batch
    cdef Py_ssize_t index
    cdef Py_ssize_t export_frag    # which fragment __getbuffer__ exports (-1: the datagram)
    cdef bint released

    def __cinit__(self):
        self.export_frag = -1

    cdef slot_t *slot(self) except NULL:
        if self.released or self.batch.released:
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
        return self.released or self.batch.released or bool(
            self.batch.st.slots[self.index].flags & SLOT_FREED)

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
        cdef slot_t *s = self.slot()
        cdef store_t *st = self.batch.st
        cdef uint32_t k
        cdef char *dst
        cdef Py_ssize_t pos = 0
        if s.nfrags <= 1:
            return slot_data(st, s)[:st.lens[self.index]]
        out = bytearray(st.lens[self.index])
        dst = out
        for k in range(s.nfrags):
            memcpy(dst + pos, st.frags[s.frag_index + k].iov_base, st.frags[s.frag_index + k].iov_len)
            pos += st.frags[s.frag_index + k].iov_len
        return bytes(out)

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        cdef slot_t *s = self.slot()
        cdef store_t *st = self.batch.st
        cdef iovec *f
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
        self.batch.st.slots[self.index].exports -= 1
        self.batch.exports -= 1
        self.batch.engine.exports -= 1

    def release(self) -> None:
        """Give the packet's buffers back to XLIO.  BufferError while a view is exported."""
        if self.released or self.batch.released:
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
        if self.released or self.batch.released:
            return "<pyxlio.Packet released>"
        cdef slot_t *s = &self.batch.st.slots[self.index]
        return (f"<pyxlio.Packet {self.batch.st.lens[self.index]} bytes "
                f"fragments={s.nfrags} zcopy={bool(s.flags & SLOT_ZC)}>")
