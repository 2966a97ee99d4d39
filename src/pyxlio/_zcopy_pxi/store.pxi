# The arena: a batch's C storage, pooled per socket (included by _zcopy.pyx).
#
# A store holds what one receive call produced: a slot per datagram (where its bytes are, which
# XLIO packet ids stand behind it, its source address), the lengths as one uint32 array (what
# `batch.lengths` copies out), the fragments of multi-fragment datagrams, the copy area for data
# that came through the kernel, the landing buffer recvfrom_zcopy writes its descriptors into,
# and the recvmmsg headers of the kernel path.  A store belongs to exactly one owner at a time:
# the receiving call (FILLING), then its batch (LIVE), then the engine's pool.  Nothing here
# touches Python objects: every function runs without the GIL.

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
    long long ts_ns            # the kernel's receive time (SO_TIMESTAMPNS), 0 when none
    unsigned char ts_src       # where ts_ns came from: TS_SRC_* (0: pyxlio's own reading)
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
    size_t freecap             # entries in `frees`
    char *copybuf
    size_t copycap, copyused
    iovec *frags
    size_t fragcap, fragused
    void **ids                 # packet ids of merged slots
    size_t idcap, idused
    mmsghdr *msgs              # kernel path (recvmmsg), built for `slot_size` strides
    iovec *msg_iov
    size_t slot_size
    Py_ssize_t kcount          # recvmmsg headers built (never more than one call asked for)
    char *landing              # LANDING bytes for one recvfrom_zcopy answer (heap, not stack)
    char *ctrl                 # kernel path: a control buffer per message (timestamps)
    Py_ssize_t ctrlcount
    bint eof


cdef store_t *store_new(Py_ssize_t cap) noexcept nogil:
    cdef store_t *st = <store_t *>calloc(1, sizeof(store_t))
    if st == NULL:
        return NULL
    if store_reserve(st, cap) != 0:
        store_del(st)
        return NULL
    return st


cdef void store_del(store_t *st) noexcept nogil:
    if st == NULL:
        return
    free(st.slots); free(st.lens); free(st.frees); free(st.copybuf); free(st.frags); free(st.ids)
    free(st.msgs); free(st.msg_iov); free(st.landing); free(st.ctrl)
    free(st)


cdef void store_reset(store_t *st) noexcept nogil:
    """Empty the store for its next receive call (capacity kept)."""
    st.n = 0
    st.eof = False
    st.fragused = 0
    st.idused = 0
    if st.msgs == NULL:
        st.copyused = 0


cdef int grow(void **buf, size_t *cap, size_t need, size_t item, size_t first) noexcept nogil:
    """Make room for `need` items in the realloc'ed array *buf (doubling, at least `first`).
    -1 when out of memory or when the size would not fit in a size_t (never wraps)."""
    cdef size_t n
    cdef void *p
    if need <= cap[0]:
        return 0
    if item == 0 or need > (<size_t>-1) // 2 // item:
        return -1
    n = cap[0] * 2 if cap[0] else first
    while n < need:
        n *= 2                 # cannot overflow: need * item <= SIZE_MAX / 2
    p = realloc(buf[0], n * item)
    if p == NULL:
        return -1
    buf[0] = p
    cap[0] = n
    return 0


cdef int store_reserve(store_t *st, Py_ssize_t cap) noexcept nogil:
    """Room for `cap` packets (kernel arrays are rebuilt lazily)."""
    cdef void *p
    if cap <= st.cap:
        return 0
    if cap > MAX_PACKETS:
        return -1
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
    st.msgs = NULL; st.msg_iov = NULL; st.slot_size = 0; st.kcount = 0
    return 0


cdef char *store_landing(store_t *st) noexcept nogil:
    if st.landing == NULL:
        st.landing = <char *>malloc(LANDING)
    return st.landing


cdef int store_copy_room(store_t *st, size_t need, size_t first=65536) noexcept nogil:
    """Room for `need` more copied bytes; a first buffer of at least `first` bytes (a held
    copy of one datagram asks for just its length: a backlog of them costs what they hold)."""
    cdef char *before = st.copybuf
    if need > (<size_t>-1) - st.copyused:
        return -1
    if grow(<void **>&st.copybuf, &st.copycap, st.copyused + need, 1,
            first if first > 0 else 1) != 0:
        return -1
    if st.copybuf != before and st.msgs != NULL:
        free(st.msgs); free(st.msg_iov)   # the kernel arrays pointed into the old buffer
        st.msgs = NULL; st.msg_iov = NULL; st.slot_size = 0; st.kcount = 0
    return 0


cdef inline int store_frag_room(store_t *st, size_t need) noexcept nogil:
    if need > (<size_t>-1) - st.fragused:
        return -1
    return grow(<void **>&st.frags, &st.fragcap, st.fragused + need, sizeof(iovec), 64)


cdef inline int store_id_room(store_t *st, size_t need) noexcept nogil:
    if need > (<size_t>-1) - st.idused:
        return -1
    return grow(<void **>&st.ids, &st.idcap, st.idused + need, sizeof(void *), 64)


cdef inline int store_free_room(store_t *st, size_t need) noexcept nogil:
    return grow(<void **>&st.frees, &st.freecap, need, sizeof(free_ent_t), 64)


cdef int store_kernel_arrays(store_t *st, Py_ssize_t count, size_t slot_size) noexcept nogil:
    """recvmmsg headers for `count` (<= cap) slots of `slot_size` bytes each in copybuf: the
    copy area is count x slot_size, what the call asked for, never cap x slot_size."""
    cdef Py_ssize_t i
    if st.msgs != NULL and st.slot_size == slot_size and st.kcount >= count:
        return 0
    free(st.msgs); free(st.msg_iov)
    st.msgs = NULL; st.msg_iov = NULL; st.kcount = 0
    st.copyused = 0
    if count > st.cap or <size_t>count > (<size_t>-1) // slot_size:
        return -1
    if store_copy_room(st, <size_t>count * slot_size) != 0:
        return -1
    st.msgs = <mmsghdr *>calloc(<size_t>count, sizeof(mmsghdr))
    st.msg_iov = <iovec *>malloc(<size_t>count * sizeof(iovec))
    if st.msgs == NULL or st.msg_iov == NULL:
        free(st.msgs); free(st.msg_iov)
        st.msgs = NULL; st.msg_iov = NULL
        return -1
    for i in range(count):
        st.msg_iov[i].iov_base = st.copybuf + i * slot_size
        st.msg_iov[i].iov_len = slot_size
        st.msgs[i].msg_hdr.msg_iov = &st.msg_iov[i]
        st.msgs[i].msg_hdr.msg_iovlen = 1
    st.slot_size = slot_size
    st.kcount = count
    return 0


cdef inline char *slot_data(store_t *st, slot_t *s) noexcept nogil:
    if s.flags & SLOT_ZC:
        return s.data if s.data != NULL else EMPTY
    return st.copybuf + s.data_off if st.copybuf != NULL else EMPTY


cdef bytes slot_bytes(store_t *st, slot_t *s, uint32_t length):
    """A copy of one datagram's payload (`length` bytes), its fragments joined."""
    cdef uint32_t k
    cdef Py_ssize_t pos = 0
    cdef char *dst
    cdef iovec *f
    if s.nfrags <= 1:
        return slot_data(st, s)[:length]
    out = bytearray(length)
    dst = out
    for k in range(s.nfrags):
        f = &st.frags[s.frag_index + k]
        if f.iov_len:                 # a fragment of no bytes may have a NULL base
            memcpy(dst + pos, f.iov_base, f.iov_len)
            pos += f.iov_len
    return bytes(out)


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
    s.ts_ns = 0
    s.ts_src = 0
    s.addrlen = 0


cdef Py_ssize_t ids_to_free(store_t *st, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """How many XLIO packet ids the not-yet-freed zero-copy slots of [lo, hi) hold."""
    cdef Py_ssize_t i, need = 0
    for i in range(lo, hi):
        if (st.slots[i].flags & SLOT_ZC) and not (st.slots[i].flags & SLOT_FREED):
            need += st.slots[i].id_count
    return need


cdef Py_ssize_t collect_frees(store_t *st, Py_ssize_t lo, Py_ssize_t hi, free_ent_t *out,
                              Py_ssize_t *slots_marked) noexcept nogil:
    """Mark the zero-copy slots of [lo, hi) freed and write their ids to `out` as
    recvfrom_zcopy_free_packets entries (sz_iov = 0, 16-byte stride).  Call with the GIL held:
    the marking is what makes every id go to XLIO exactly once, whatever the threads do.
    Returns the entry count; *slots_marked gets the number of slots marked."""
    cdef Py_ssize_t i, count = 0, marked = 0
    cdef uint32_t k
    cdef slot_t *s
    for i in range(lo, hi):
        s = &st.slots[i]
        if (s.flags & SLOT_ZC) and not (s.flags & SLOT_FREED):
            s.flags |= SLOT_FREED
            marked += 1
            if s.id_count == 1:
                out[count].packet_id = s.packet_id
                out[count].sz_iov = 0
                count += 1
            else:
                for k in range(s.id_count):
                    out[count].packet_id = st.ids[s.id_index + k]
                    out[count].sz_iov = 0
                    count += 1
    slots_marked[0] = marked
    return count
