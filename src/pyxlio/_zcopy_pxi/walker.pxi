# The walkers: the nogil receive loops and the checks of what a provider hands back (included
# by _zcopy.pyx).
#
# Nothing a provider returns is trusted without a bound: a recvfrom_zcopy answer is checked in
# full (every count, stride and length against the landing buffer it came in, the fragment
# lengths against rc) BEFORE any of it is stored.  A malformed answer is never stored and its
# packet ids are never passed back to the provider (they cannot be trusted either): the walker
# reports EPROTO and the engine raises XlioError.  Each loop returns the number of packets it
# stored, or -1 with *err set; *err may also be set with a count > 0 (the caller keeps the
# packets and raises the error from the next receive call).

cdef size_t ZC_PACKET_MAX_FRAGS = (LANDING - ZC_HDR - ZC_PKT) // ZC_IOV


cdef inline size_t rd_size(const char *p) noexcept nogil:
    cdef size_t v
    memcpy(&v, p, sizeof(size_t))
    return v


cdef inline void *rd_ptr(const char *p) noexcept nogil:
    cdef void *v
    memcpy(&v, p, sizeof(void *))
    return v


cdef int zc_check(const char *buf, size_t buflen, size_t rc, int sotype,
                  size_t *npk_out) noexcept nogil:
    """0 when the descriptors in `buf` (a recvfrom_zcopy answer of `rc` payload bytes) are
    well-formed, else -1.  Checks: 1 <= n_packet_num and every packet (16 + 16 * sz_iov bytes)
    inside `buflen`; no NULL packet id; no NULL fragment base with a length; no fragment that
    wraps the address space; fragment lengths adding up to exactly `rc`; a UDP answer is one
    packet of at most 64 KiB (the fact sheet: one datagram per call)."""
    cdef size_t npk, off = ZC_HDR, nfr, k, j, total = 0, plen, flen
    cdef const char *pk
    cdef uintptr_t base
    if buflen < ZC_HDR + ZC_PKT:
        return -1
    npk = rd_size(buf)
    if npk == 0 or npk > (buflen - ZC_HDR) // ZC_PKT:
        return -1
    if sotype != SOCK_STREAM and npk != 1:
        return -1
    for k in range(npk):
        if buflen - off < ZC_PKT:
            return -1
        pk = buf + off
        if rd_ptr(pk) == NULL:
            return -1
        nfr = rd_size(pk + 8)
        if nfr > (buflen - off - ZC_PKT) // ZC_IOV:
            return -1
        plen = 0
        for j in range(nfr):
            base = <uintptr_t>rd_ptr(pk + ZC_PKT + ZC_IOV * j)
            flen = rd_size(pk + ZC_PKT + ZC_IOV * j + 8)
            if flen > rc - total - plen:          # never more than rc in all
                return -1
            if flen != 0 and (base == 0 or base + flen < base):
                return -1
            plen += flen
        if sotype != SOCK_STREAM and plen > MAX_UDP_PAYLOAD:
            return -1
        total += plen
        off += ZC_PKT + ZC_IOV * nfr
    if total != rc:
        return -1
    npk_out[0] = npk
    return 0


cdef int store_packets(store_t *st, Py_ssize_t n, Py_ssize_t room, const char *buf, size_t npk,
                       const char *addr, socklen_t addrlen) noexcept nogil:
    """Store the `npk` packets of a checked answer from slot `n` on, in at most `room` slots:
    a packet a slot, except that when they do not fit (a stream read returning more packets
    than asked for) the last slot takes all the remaining packets, fragments in order and ids
    kept for the free.  Returns the slots used, or -1 when out of memory (nothing stored)."""
    cdef size_t sep = npk if npk <= <size_t>room else <size_t>(room - 1)
    cdef size_t k, j, nfr, total, mfr = 0, mids
    cdef const char *pk
    cdef const char *first_merged
    cdef slot_t *s
    cdef Py_ssize_t used = <Py_ssize_t>sep + (1 if sep < npk else 0)
    # Room first (frags of multi-fragment packets, ids of the merged slot), so a failure
    # leaves nothing half stored.
    pk = buf + ZC_HDR
    for k in range(npk):
        nfr = rd_size(pk + 8)
        if k >= sep or nfr > 1:
            mfr += nfr
        pk += ZC_PKT + ZC_IOV * nfr
    mids = npk - sep
    if store_reserve(st, n + used) != 0 or store_frag_room(st, mfr) != 0 or \
            store_id_room(st, mids) != 0:
        return -1
    pk = buf + ZC_HDR
    for k in range(sep):
        nfr = rd_size(pk + 8)
        s = &st.slots[n + <Py_ssize_t>k]
        slot_clear(s)
        s.flags = SLOT_ZC
        s.packet_id = rd_ptr(pk)
        s.nfrags = <uint32_t>nfr
        s.addrlen = addrlen
        memcpy(s.addr, addr, addrlen)
        total = 0
        if nfr >= 1:
            s.data = <char *>rd_ptr(pk + ZC_PKT)
        if nfr > 1:
            s.frag_index = <uint32_t>st.fragused
        for j in range(nfr):
            if nfr > 1:
                st.frags[st.fragused].iov_base = rd_ptr(pk + ZC_PKT + ZC_IOV * j)
                st.frags[st.fragused].iov_len = rd_size(pk + ZC_PKT + ZC_IOV * j + 8)
                st.fragused += 1
            total += rd_size(pk + ZC_PKT + ZC_IOV * j + 8)
        st.lens[n + <Py_ssize_t>k] = <uint32_t>total
        pk += ZC_PKT + ZC_IOV * nfr
    if sep == npk:
        return <int>used
    # The merged slot: packets [sep, npk) of one stream read.
    first_merged = pk
    s = &st.slots[n + <Py_ssize_t>sep]
    slot_clear(s)
    s.flags = SLOT_ZC
    s.frag_index = <uint32_t>st.fragused
    s.id_index = <uint32_t>st.idused
    s.id_count = <uint32_t>mids
    s.addrlen = addrlen
    memcpy(s.addr, addr, addrlen)
    total = 0
    mfr = 0
    for k in range(sep, npk):
        nfr = rd_size(pk + 8)
        st.ids[st.idused] = rd_ptr(pk)
        st.idused += 1
        for j in range(nfr):
            st.frags[st.fragused].iov_base = rd_ptr(pk + ZC_PKT + ZC_IOV * j)
            st.frags[st.fragused].iov_len = rd_size(pk + ZC_PKT + ZC_IOV * j + 8)
            total += st.frags[st.fragused].iov_len
            st.fragused += 1
            mfr += 1
        pk += ZC_PKT + ZC_IOV * nfr
    s.nfrags = <uint32_t>mfr
    s.packet_id = st.ids[s.id_index]
    s.data = <char *>st.frags[s.frag_index].iov_base if mfr else NULL
    st.lens[n + <Py_ssize_t>sep] = <uint32_t>total
    return <int>used


cdef Py_ssize_t fill_zcopy(const xlio_ops_t *ops, int fd, int sotype, store_t *st,
                           Py_ssize_t maxp, int flags0, bint want_addr, int *err) noexcept nogil:
    """recvfrom_zcopy until `maxp` packets, the first call honouring flags0 (blocking or not),
    the rest with MSG_DONTWAIT.  Zero-copy answers are checked, then stored; copied answers
    (data that came through the kernel) are kept in the store's copy area.  A stream read is
    one call (TCP chunks stay in order) and never takes more than the slots left."""
    cdef char *landing = store_landing(st)
    cdef Py_ssize_t n = 0, used
    cdef int flags, rc
    cdef socklen_t addrlen
    cdef slot_t *s
    cdef size_t npk
    cdef const char *pk
    cdef uintptr_t base
    cdef char addr[ADDR_BYTES]
    err[0] = 0
    if landing == NULL:
        err[0] = ENOMEM
        return -1
    while n < maxp:
        flags = flags0 if n == 0 else (flags0 | MSG_DONTWAIT)
        addrlen = ADDR_BYTES if want_addr else 0
        # A provider that writes less than it says must not make pyxlio read the last
        # answer's header and first packet again.
        memset(landing, 0, ZC_HDR + ZC_PKT + ZC_IOV)
        set_errno(0)
        if want_addr:
            rc = ops.recvfrom_zcopy(fd, landing, LANDING, &flags, <sockaddr *>addr, &addrlen)
        else:
            rc = ops.recvfrom_zcopy(fd, landing, LANDING, &flags, NULL, NULL)
        if rc < 0:
            # -1 with errno is the contract; anything else (-2, -1 and no errno) is malformed.
            err[0] = errno if rc == -1 and errno != 0 else EPROTO
            return n if n > 0 else -1
        if not want_addr or addrlen > ADDR_BYTES:
            addrlen = 0 if not want_addr else ADDR_BYTES
        if (flags & PYXLIO_MSG_XLIO_ZCOPY) and (rc > 0 or rd_size(landing) > 0):
            pk = landing + ZC_HDR
            if rd_size(landing) == 1 and rd_size(pk + 8) == 1 and n < st.cap:
                # The common case, a datagram in one buffer: zc_check's rules for it, inline.
                base = <uintptr_t>rd_ptr(pk + ZC_PKT)
                if rd_ptr(pk) == NULL or rd_size(pk + ZC_PKT + 8) != <size_t>rc or \
                        (rc != 0 and (base == 0 or base + <size_t>rc < base)) or \
                        (sotype != SOCK_STREAM and rc > MAX_UDP_PAYLOAD):
                    err[0] = EPROTO
                    return n if n > 0 else -1
                s = &st.slots[n]
                s.flags = SLOT_ZC
                s.packet_id = rd_ptr(pk)
                s.data = <char *>base
                s.data_off = 0
                s.nfrags = 1
                s.frag_index = 0
                s.id_count = 1
                s.id_index = 0
                s.exports = 0
                s.ts_ns = 0
                s.ts_src = 0
                s.addrlen = addrlen
                if addrlen:
                    memcpy(s.addr, addr, addrlen)
                st.lens[n] = <uint32_t>rc
                n += 1
                if sotype == SOCK_STREAM:
                    break
                continue
            if zc_check(landing, LANDING, <size_t>rc, sotype, &npk) != 0:
                err[0] = EPROTO
                return n if n > 0 else -1
            used = store_packets(st, n, maxp - n, landing, npk, addr, addrlen)
            if used < 0:
                # Valid packets we cannot keep: give them straight back (the answer's own
                # descriptors are a valid free list), rather than leak them.
                ops.free_packets(fd, <pyxlio_zc_packet_t *>(landing + ZC_HDR), npk)
                err[0] = ENOMEM
                return n if n > 0 else -1
            n += used
            if sotype == SOCK_STREAM:
                break
        else:
            if rc == 0 and sotype == SOCK_STREAM:
                st.eof = True
                break
            if <size_t>rc > LANDING:
                err[0] = EPROTO       # a copy longer than the buffer it was copied into
                return n if n > 0 else -1
            if store_reserve(st, n + 1) != 0 or store_copy_room(st, <size_t>rc) != 0:
                err[0] = ENOMEM
                return n if n > 0 else -1
            s = &st.slots[n]
            slot_clear(s)
            s.data_off = st.copyused
            if rc > 0:                # an empty datagram may meet a store with no copy buffer
                memcpy(st.copybuf + st.copyused, landing, <size_t>rc)
                st.copyused += <size_t>rc
            st.lens[n] = <uint32_t>rc
            s.addrlen = addrlen
            memcpy(s.addr, addr, addrlen)
            n += 1
            if sotype == SOCK_STREAM:
                break
    return n


cdef extern from *:
    """
    #include <sys/syscall.h>
    #include <unistd.h>
    /* The system calls themselves, not libc's symbols: an LD_PRELOADed XLIO wraps those, and
     * its recvmmsg wrapper passes the kernel a zeroed timeout for sockets it does not serve
     * (one datagram a call), its recvfrom blocks on a zero-length datagram (the fact sheet,
     * section 9).  fill_kernel only reads sockets XLIO does not serve. */
    static inline int pyxlio_sys_recvmmsg(int fd, struct mmsghdr *m, unsigned int n, int flags) {
        return (int)syscall(SYS_recvmmsg, fd, m, n, flags, (void *)0);
    }
    static inline long pyxlio_sys_recvfrom(int fd, void *buf, size_t n, int flags) {
        return (long)syscall(SYS_recvfrom, fd, buf, n, flags, (void *)0, (void *)0);
    }
    """
    int sys_recvmmsg "pyxlio_sys_recvmmsg"(int fd, mmsghdr *m, unsigned int n, int flags) nogil


cdef extern from *:
    """
    #include <sys/socket.h>
    #include <time.h>
    /* Room for SCM_TIMESTAMPNS and SCM_TIMESTAMPING (3 timespecs) together. */
    #define PYXLIO_CTRL_BYTES (CMSG_SPACE(sizeof(struct timespec)) + \
                               CMSG_SPACE(3 * sizeof(struct timespec)))
    """
    size_t PYXLIO_CTRL_BYTES
    long sys_recvfrom "pyxlio_sys_recvfrom"(int fd, void *buf, size_t n, int flags) nogil


cdef extern from *:
    """
    #include <sys/socket.h>
    #include <time.h>
    #include <string.h>
    #ifndef SCM_TIMESTAMPING
    #define SCM_TIMESTAMPING 37
    #endif
    /* The receive time of a message and where it came from: 2 the NIC's raw hardware clock
     * (SCM_TIMESTAMPING ts[2]), 1 the kernel's software stamp (SCM_TIMESTAMPING ts[0] or
     * SCM_TIMESTAMPNS); 0 ns and source 0 when the kernel gave none. */
    static inline long long pyxlio_msg_ts_src(struct msghdr *m, unsigned char *src) {
        struct cmsghdr *c;
        struct timespec ts[3];
        long long sw = 0, hw = 0;
        *src = 0;
        if (!m->msg_control || m->msg_controllen < sizeof(struct cmsghdr)) return 0;
        for (c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
            if (c->cmsg_level != SOL_SOCKET) continue;
            if (c->cmsg_type == SCM_TIMESTAMPNS && c->cmsg_len >= CMSG_LEN(sizeof ts[0])) {
                memcpy(&ts[0], CMSG_DATA(c), sizeof ts[0]);
                if (!sw) sw = (long long)ts[0].tv_sec * 1000000000LL + ts[0].tv_nsec;
            } else if (c->cmsg_type == SCM_TIMESTAMPING && c->cmsg_len >= CMSG_LEN(sizeof ts)) {
                memcpy(ts, CMSG_DATA(c), sizeof ts);
                if (ts[2].tv_sec || ts[2].tv_nsec)
                    hw = (long long)ts[2].tv_sec * 1000000000LL + ts[2].tv_nsec;
                if (!sw && (ts[0].tv_sec || ts[0].tv_nsec))
                    sw = (long long)ts[0].tv_sec * 1000000000LL + ts[0].tv_nsec;
            }
        }
        if (hw) { *src = 2; return hw; }
        if (sw) { *src = 1; return sw; }
        return 0;
    }
    """
    long long msg_timestamp_src "pyxlio_msg_ts_src"(msghdr *m, unsigned char *src) nogil


cdef Py_ssize_t fill_kernel(int fd, int sotype, store_t *st, Py_ssize_t maxp, int flags0,
                            size_t slot_size, bint want_addr, bint want_ts,
                            int *err) noexcept nogil:
    """No zero-copy: recvmmsg (UDP) or one recv (TCP) straight into the store's buffers,
    through the system calls themselves (never an XLIO wrapper)."""
    cdef Py_ssize_t i, n
    cdef slot_t *s
    cdef ssize_t rc
    err[0] = 0
    if store_reserve(st, maxp) != 0 or store_kernel_arrays(st, maxp, slot_size) != 0:
        err[0] = ENOMEM
        return -1
    if sotype == SOCK_STREAM:
        s = &st.slots[0]
        slot_clear(s)
        rc = sys_recvfrom(fd, st.copybuf, slot_size, flags0)
        if rc < 0:
            err[0] = errno
            return -1
        if rc == 0:
            st.eof = True
            return 0
        st.lens[0] = <uint32_t>rc
        return 1
    if want_ts and st.ctrlcount < maxp:
        free(st.ctrl)
        st.ctrl = <char *>malloc(<size_t>maxp * PYXLIO_CTRL_BYTES)
        st.ctrlcount = maxp if st.ctrl != NULL else 0
    for i in range(maxp):
        # Without addresses the kernel skips a sockaddr copy per datagram (measurable).
        st.msgs[i].msg_hdr.msg_name = st.slots[i].addr if want_addr else NULL
        st.msgs[i].msg_hdr.msg_namelen = ADDR_BYTES if want_addr else 0
        st.msgs[i].msg_hdr.msg_flags = 0
        if want_ts and st.ctrl != NULL:
            st.msgs[i].msg_hdr.msg_control = st.ctrl + <size_t>i * PYXLIO_CTRL_BYTES
            st.msgs[i].msg_hdr.msg_controllen = PYXLIO_CTRL_BYTES
        else:
            st.msgs[i].msg_hdr.msg_control = NULL
            st.msgs[i].msg_hdr.msg_controllen = 0
    n = sys_recvmmsg(fd, st.msgs, <unsigned int>maxp, flags0 | MSG_WAITFORONE)
    if n < 0:
        err[0] = errno
        return -1
    if n > maxp:
        n = maxp
    for i in range(n):
        s = &st.slots[i]
        slot_clear(s)
        s.data_off = <size_t>i * slot_size
        s.addrlen = st.msgs[i].msg_hdr.msg_namelen
        if s.addrlen > ADDR_BYTES:
            s.addrlen = ADDR_BYTES
        if st.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
            s.flags = SLOT_TRUNC
        if want_ts:
            s.ts_ns = msg_timestamp_src(&st.msgs[i].msg_hdr, &s.ts_src)
        st.lens[i] = st.msgs[i].msg_len if st.msgs[i].msg_len <= slot_size else <uint32_t>slot_size
    return n


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------

cdef inline int sockaddr_family(const char *addr, socklen_t addrlen) noexcept nogil:
    cdef unsigned short family
    if addrlen < 2:
        return -1
    memcpy(&family, addr, 2)
    return family


cdef object sockaddr_to_tuple(const char *addr, socklen_t addrlen):
    """sockaddr -> (host, port) / (host, port, flowinfo, scope_id), as the socket module does;
    None for any other family (an AF_UNIX source has no port)."""
    cdef char text[64]
    cdef int family = sockaddr_family(addr, addrlen)
    cdef unsigned short port
    cdef unsigned int flow, scope
    if family == AF_INET and addrlen >= 8:
        inet_ntop(AF_INET, addr + 4, text, sizeof(text))
        memcpy(&port, addr + 2, 2)
        return (text.decode("ascii"), ntohs(port))
    if family == AF_INET6 and addrlen >= 28:
        inet_ntop(AF_INET6, addr + 8, text, sizeof(text))
        memcpy(&port, addr + 2, 2)
        memcpy(&flow, addr + 4, 4)
        memcpy(&scope, addr + 24, 4)
        return (text.decode("ascii"), ntohs(port), ntohl(flow), scope)
    return None


cdef inline unsigned short sockaddr_port(const char *addr, socklen_t addrlen) noexcept nogil:
    """The port of an IPv4/IPv6 source in host order, 0 for any other family."""
    cdef unsigned short port
    cdef int family = sockaddr_family(addr, addrlen)
    if (family == AF_INET and addrlen >= 8) or (family == AF_INET6 and addrlen >= 28):
        memcpy(&port, addr + 2, 2)
        return ntohs(port)
    return 0


cdef void copy_sockaddr(const sockaddr *sa, char *dst, socklen_t *dstlen) noexcept nogil:
    """Copy an IPv4/IPv6 sockaddr the provider points at (anything else: no address)."""
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
