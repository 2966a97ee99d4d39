/*
 * pyxlio emulator: the XLIO Extra API members and the xlio_api_t tables (legacy and 3.61+).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "emu.h"

#define ST_LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define CNT_ADD(x, v) atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)

atomic_int emu_user_alloc_set;
pyxlio_alloc_fn emu_user_alloc;
pyxlio_free_fn emu_user_free;

/* ---- recvfrom_zcopy --------------------------------------------------------------------- */
static void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static void put_ptr(unsigned char *p, const void *v) { memcpy(p, &v, 8); }

/* Own a BUSY packet as handed to the application; 0 or -1 (socket closed meanwhile). */
static int claim_zc(emu_sock_t *s, uint32_t gen, uint32_t pi) {
    emu_pkt_t *p = &emu_pool.pkts[pi];
    pthread_mutex_lock(&s->mu);
    if (!atomic_load(&s->active) || s->gen != gen) {
        pthread_mutex_unlock(&s->mu);
        emu_pkt_release(pi);
        errno = EBADF;
        return -1;
    }
    p->fd = s->fd;
    p->gen = gen;
    atomic_store_explicit(&p->state, PKT_ZC, memory_order_release);
    s->outstanding++;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void fill_from(const emu_pkt_t *p, struct sockaddr *from, socklen_t *fromlen) {
    if (!fromlen) return;
    if (from) {
        socklen_t l = *fromlen < p->addrlen ? *fromlen : p->addrlen;
        memcpy(from, &p->src, l);
    }
    *fromlen = p->addrlen;
}

static int zc_tcp(emu_sock_t *s, unsigned char *buf, size_t len, int in, int *flags,
                  struct sockaddr *from, socklen_t *fromlen) {
    if (len < PYXLIO_ZC_TCP_MIN) { errno = ENOBUFS; return -1; }
    uint32_t gen = ST_LOAD(s->gen);
    size_t maxpk = (len - PYXLIO_ZC_HEADER_BYTES) / (PYXLIO_ZC_PACKET_BYTES + PYXLIO_ZC_IOV_BYTES);
    emu_spare_t *sp = emu_spare();
    if (!sp || emu_spare_need(sp, 1) < 0) { CNT_ADD(s->enomem, 1); errno = ENOMEM; return -1; }
    size_t k = maxpk < sp->cnt ? maxpk : sp->cnt;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = sp->iov;
    m.msg_iovlen = k;
    ssize_t n = REAL(recvmsg)(s->fd, &m, in & ~(EMU_XLIO_RX_FLAGS | MSG_PEEK | MSG_TRUNC | MSG_WAITALL));
    if (n <= 0) {
        if (n == 0) *flags = in & ~PYXLIO_MSG_XLIO_ZCOPY;
        return (int)n;
    }
    uint32_t used = (uint32_t)(((size_t)n + emu_conf.frag - 1) / emu_conf.frag);
    uint32_t ids[used];
    emu_spare_take_separate(sp, used, (uint32_t)n, ids);
    pthread_mutex_lock(&s->mu);
    int ok = atomic_load(&s->active) && s->gen == gen;
    if (ok) s->outstanding += used;
    for (uint32_t j = 0; j < used && ok; j++) {
        emu_pkt_t *p = &emu_pool.pkts[ids[j]];
        p->fd = s->fd;
        p->gen = gen;
        atomic_store_explicit(&p->state, PKT_ZC, memory_order_release);
    }
    pthread_mutex_unlock(&s->mu);
    if (!ok) {
        for (uint32_t j = 0; j < used; j++) emu_pkt_release(ids[j]);
        errno = EBADF;
        return -1;
    }
    put_u64(buf, used);
    unsigned char *q = buf + PYXLIO_ZC_HEADER_BYTES;
    for (uint32_t j = 0; j < used; j++) {
        emu_pkt_t *p = &emu_pool.pkts[ids[j]];
        put_ptr(q, p);
        put_u64(q + 8, 1);
        put_ptr(q + 16, emu_buf(p->buf));
        put_u64(q + 24, p->len);
        q += PYXLIO_ZC_PACKET_BYTES + PYXLIO_ZC_IOV_BYTES;
    }
    CNT_ADD(s->rx_packets, used);
    CNT_ADD(s->rx_bytes, (unsigned long)n);
    CNT_ADD(s->rx_zcopy, used);
    if (fromlen) {
        socklen_t l = sizeof(struct sockaddr_in6);
        struct sockaddr_in6 peer;
        if (getpeername(s->fd, (struct sockaddr *)&peer, &l) == 0) {
            if (from) memcpy(from, &peer, *fromlen < l ? *fromlen : l);
            *fromlen = l;
        } else {
            *fromlen = 0;
        }
    }
    *flags = in | PYXLIO_MSG_XLIO_ZCOPY;
    return (int)n;
}

/* Receive flags, as libxlio 3.51.1 treats them in recvfrom_zcopy (read in its sources:
 * src/core/sock/sock-extra.cpp xlio_recvfrom_zcopy, which ORs MSG_XLIO_ZCOPY into the flags
 * and calls sockinfo::rx with no msghdr; src/core/sock/sockinfo_udp.cpp sockinfo_udp::rx,
 * zero_copy_rx, handle_msg_trunc; src/core/sock/sockinfo.h sockinfo::dequeue_packet;
 * src/core/sock/sockinfo_tcp.cpp sockinfo_tcp::rx, zero_copy_rx, handle_msg_trunc):
 *
 * - A socket XLIO does not offload (and data that came through the kernel): the flags go to
 *   the kernel's recvfrom with MSG_XLIO_ZCOPY cleared, so MSG_PEEK, MSG_TRUNC, MSG_WAITALL and
 *   MSG_ERRQUEUE mean what they mean to the kernel.  The emulator does the same.
 * - Offloaded UDP, MSG_PEEK: dequeue_packet fills in the packet list (the id is the queued
 *   packet's own descriptor) but leaves the packet on the ready list: the datagram stays, the
 *   next receive returns it again, with the same id.  The peeked id is not the caller's to
 *   free: freeing it returns the buffer to the ring while the packet is still queued (a later
 *   receive then hands out freed memory).  The emulator keeps the datagram queued the same way
 *   and answers a free of a still-queued packet with -1/ENOENT and a contract violation.
 * - Offloaded UDP, MSG_TRUNC: when the packet list has no room for every fragment, the return
 *   value is the datagram's full length instead of the bytes listed (handle_msg_trunc).
 * - Offloaded UDP, MSG_WAITALL: not looked at; one datagram, as the kernel does for UDP.
 * - Offloaded TCP, MSG_TRUNC: ignored (sockinfo_tcp::handle_msg_trunc).
 * - Offloaded TCP, MSG_PEEK: zero_copy_rx pops the packets off the ready list anyway while the
 *   ready-byte count is left as it was: the data is consumed and the socket's accounting is
 *   corrupt (a later receive dequeues from an empty list).  Unsafe: refused here.
 * - Offloaded TCP, MSG_WAITALL: the call waits until as many payload bytes are ready as the
 *   *packet-list buffer* is long (an unrelated quantity), possibly for ever.  Refused here.
 * - Offloaded UDP or TCP, MSG_ERRQUEUE: the error queue is only looked at when a msghdr is
 *   passed, which recvfrom_zcopy never does: the flag is ignored and a data packet comes back
 *   to a caller that asked for an error report.  Refused here.
 * A refusal is -1/EINVAL with a contract violation (a diagnostic line; exit status 86 at exit
 * in strict mode), the data left where it was. */
static int zc_refuse(emu_sock_t *s, const char *flag, const char *why) {
    emu_violation("recvfrom_zcopy(fd=%d): %s on an offloaded %s socket refused with EINVAL: %s",
                  s->fd, flag, s->is_tcp ? "TCP" : "UDP", why);
    errno = EINVAL;
    return -1;
}

static int api_recvfrom_zcopy(int fd, void *buf, size_t len, int *flags, struct sockaddr *from,
                              socklen_t *fromlen) {
    int in = flags ? *flags : 0;
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) {
        /* not an XLIO fd: the plain recvfrom fall-through */
        ssize_t rc = REAL(recvfrom)(fd, buf, len, in & ~EMU_XLIO_RX_FLAGS, from, fromlen);
        if (flags) *flags = in & ~PYXLIO_MSG_XLIO_ZCOPY;
        return (int)rc;
    }
    if (!flags) {
        emu_violation("recvfrom_zcopy(fd=%d): flags is NULL (the real library dereferences it)", fd);
        errno = EFAULT;
        return -1;
    }
    if (!s->offloaded) {
        /* a socket the emulator wraps and serves through the kernel, as libxlio 3.51.1 does
         * (src/core/sock/sockinfo_udp.cpp sockinfo_udp::rx, label "os"): readability from
         * FIONREAD first (UDP), then MSG_XLIO_ZCOPY_FORCE -> -1/EIO with the datagram left
         * where it is, else a copy into buf with MSG_XLIO_ZCOPY cleared */
        if (s->is_udp && !(in & MSG_ERRQUEUE) && emu_os_gate(s, in) < 0) return -1;
        if (in & PYXLIO_MSG_XLIO_ZCOPY_FORCE) { errno = EIO; return -1; }
        *flags = in & ~PYXLIO_MSG_XLIO_ZCOPY;
        return (int)recvfrom(fd, buf, len, in & ~EMU_XLIO_RX_FLAGS, from, fromlen);
    }
    if (!buf) { errno = EFAULT; return -1; }
    if (EMU_UNLIKELY(in & (MSG_ERRQUEUE | MSG_PEEK | MSG_WAITALL))) {
        if (in & MSG_ERRQUEUE)
            return zc_refuse(s, "MSG_ERRQUEUE", "libxlio ignores it there and returns data, not "
                             "an error report");
        if (s->is_tcp && (in & MSG_PEEK))
            return zc_refuse(s, "MSG_PEEK", "libxlio consumes the data and corrupts the "
                             "socket's accounting");
        if (s->is_tcp && (in & MSG_WAITALL))
            return zc_refuse(s, "MSG_WAITALL", "libxlio waits for as many bytes as the "
                             "packet-list buffer is long");
    }
    if (s->is_tcp) return zc_tcp(s, buf, len, in, flags, from, fromlen);
    if (len < PYXLIO_ZC_UDP_MIN(1)) { errno = ENOBUFS; return -1; }
    int peek = in & MSG_PEEK;
    int kflags = in & ~(EMU_XLIO_RX_FLAGS | MSG_PEEK | MSG_TRUNC | MSG_WAITALL);
    uint32_t pi, gen;
    int claimed = 0;
    if (s->feed && !s->cb && !ST_LOAD(s->qlen)) {
        gen = ST_LOAD(s->gen);
        if (emu_feed_make_pkt(s, &pi) < 0) return -1;
    } else if (!peek && ST_LOAD(s->qhead) && emu_queue_take_zc(s, &pi)) {
        gen = emu_pool.pkts[pi].gen;    /* a batch's datagram, handed out in one step */
        claimed = 1;
    } else {
        /* the user queue first, then a batch from the kernel (emu_pull_batch): one datagram
         * per call, as libxlio answers, whatever the batch pulled */
        if (emu_next_special(s, kflags, &pi) < 0) return -1;
        gen = emu_pool.pkts[pi].gen;
    }
    emu_pkt_t *p = &emu_pool.pkts[pi];
    if (!peek && !claimed && claim_zc(s, gen, pi) < 0) return -1;
    unsigned char *b = buf;
    size_t fit = (len - PYXLIO_ZC_HEADER_BYTES - PYXLIO_ZC_PACKET_BYTES) / PYXLIO_ZC_IOV_BYTES;
    uint32_t nf = p->nfrag ? p->nfrag : 1;
    if (fit > nf) fit = nf;
    put_u64(b, 1);
    put_ptr(b + 8, p);
    put_u64(b + 16, fit);
    unsigned char *q = b + 24;
    size_t total = 0;
    uint32_t bi = p->buf;
    for (size_t k = 0; k < fit; k++) {
        size_t fl = emu_frag_len(p, (uint32_t)k);
        put_ptr(q, emu_buf(bi));
        put_u64(q + 8, fl);
        q += PYXLIO_ZC_IOV_BYTES;
        total += fl;
        bi = emu_pool.next[bi];
    }
    if ((in & MSG_TRUNC) && total < p->len) total = p->len;
    fill_from(p, from, fromlen);
    if (peek) {
        /* back at the head of the queue, still the socket's: the next receive returns it */
        p->gen = gen;
        if (emu_queue_push_front(s, pi) < 0) { errno = EBADF; return -1; }
    } else {
        CNT_ADD(s->rx_zcopy, 1);
    }
    *flags = in | PYXLIO_MSG_XLIO_ZCOPY;
    return (int)total;
}

/* ---- recvfrom_zcopy_free_packets -------------------------------------------------------- */
static const char *state_name(unsigned st) {
    switch (st) {
    case PKT_FREE: return "already free (double free?)";
    case PKT_BUSY: return "not handed to the application (in a callback or being received)";
    case PKT_QUEUED: return "queued in the socket, not handed to the application";
    case PKT_ORPHAN: return "a packet of the parent process (before fork)";
    default: return "held";
    }
}

static int api_free_packets(int fd, pyxlio_zc_packet_t *pkts, size_t count) {
    /* count 0: libxlio answers 0, libvma 9.8.84 -1/EINVAL (fact sheet section 11) */
    if (count == 0) {
        if (emu_conf.layout == PYXLIO_LAYOUT_VMA) { errno = EINVAL; return -1; }
        return 0;
    }
    emu_sock_t *s = emu_sock_get(fd);
    if (!s || !s->offloaded) { errno = EINVAL; return -1; }
    if (!pkts) {
        emu_violation("free_packets(fd=%d): NULL packet array with count=%zu", fd, count);
        errno = EFAULT;
        return -1;
    }
    const unsigned char *q = (const unsigned char *)pkts;
    int tcp = s->is_tcp;
    size_t bad = 0;
    uint32_t ids[256], bufs[256];
    size_t i = 0;
    while (i < count) {
        uint32_t nids = 0;
        pthread_mutex_lock(&s->mu);
        for (; i < count && nids < 256; i++) {
            void *id;
            size_t sz_iov;
            memcpy(&id, q, sizeof id);
            memcpy(&sz_iov, q + 8, sizeof sz_iov);
            q += tcp ? pyxlio_zc_packet_bytes(sz_iov) : PYXLIO_ZC_PACKET_BYTES;
            long pi = emu_pkt_lookup(id);
            if (pi < 0) {
                emu_violation("free_packets(fd=%d): bogus packet id %p (not a packet of the "
                              "emulator; the real library would crash)", fd, id);
                bad++;
                continue;
            }
            emu_pkt_t *p = &emu_pool.pkts[pi];
            unsigned st = atomic_load_explicit(&p->state, memory_order_acquire);
            if ((st == PKT_ZC || st == PKT_HELD) && p->fd == fd && p->gen == s->gen) {
                if (st == PKT_ZC) s->outstanding--;
                else s->held--;
                atomic_store_explicit(&p->state, PKT_FREE, memory_order_release);
                ids[nids++] = (uint32_t)pi;
            } else if (st == PKT_ZC || st == PKT_HELD) {
                if (p->fd != fd)
                    emu_violation("free_packets(fd=%d): packet %p belongs to fd=%d (free on the "
                                  "wrong socket)", fd, id, p->fd);
                else
                    emu_violation("free_packets(fd=%d): packet %p belongs to an earlier socket "
                                  "that had this fd number", fd, id);
                bad++;
            } else {
                emu_violation("free_packets(fd=%d): packet %p is %s", fd, id, state_name(st));
                bad++;
            }
        }
        pthread_mutex_unlock(&s->mu);
        uint32_t nb = 0;
        for (uint32_t j = 0; j < nids; j++) {
            emu_pkt_t *p = &emu_pool.pkts[ids[j]];
            emu_pkt_canary(p);
            uint32_t nf = p->nfrag ? p->nfrag : 1, b = p->buf;
            for (uint32_t k = 0; k < nf; k++) {
                bufs[nb++] = b;
                b = emu_pool.next[b];
                if (nb == 256) { emu_pool_put(bufs, nb); nb = 0; }
            }
        }
        emu_pool_put2(bufs, nb, ids, nids);
    }
    if (bad) { errno = ENOENT; return -1; }
    return 0;
}

/* ---- the other members ------------------------------------------------------------------ */
static int api_add_conf_rule(const char *line) { return emu_rule_add(line); }

static int api_thread_offload(int offload, pthread_t tid) {
    /* libvma 9.8.84 (fact sheet section 11): thread_offload starts the library and answers 0 */
    if (emu_conf.layout == PYXLIO_LAYOUT_VMA) emu_init();
    if (!atomic_load(&emu_inited)) { errno = EINVAL; return -1; }
    return emu_thread_offload_set(offload, tid) < 0 ? -1 : 0;
}

/* Rings, as measured on a real libxlio 3.51.1 (fact sheet section 9): 0 for a bound UDP socket
 * it serves through the kernel and for an unconnected TCP socket, -1 for an unbound UDP socket;
 * 0 for an fd it does not know (a pipe, a socket made with thread offload off: measured again
 * in a started 3.51.1, as its source says); a socket it offloads has at least one ring (the
 * emulator: one, whose fd is the socket's own, pollable as the socket is).  A listening TCP
 * socket the emulator offloads has its ring too (libxlio attaches a listener's flow to one).
 *
 * Read in 3.51.1's sources: src/core/sock/sock-extra.cpp xlio_get_socket_rings_num (0 for an
 * fd it does not know, else sockinfo::get_rings_num) and xlio_get_socket_rings_fds (-1/EINVAL
 * for ring_fds_sz <= 0 or a NULL array, 0 for an fd it does not know), src/core/sock/sockinfo.cpp
 * sockinfo::get_rings_num / get_rings_fds (a count of the rx rings' channel fds, >= 0).  The
 * source gives no -1 from get_socket_rings_num; for an unbound UDP socket the emulator follows
 * the fact sheet's measurement, which pyxlio reads as "cannot tell yet" (and a real 0 as "not
 * offloaded", asked again at the next call: either is safe). */
static int rings_num(emu_sock_t *s) {
    if (s->is_udp) {
        struct sockaddr_in6 a;
        socklen_t l = sizeof a;
        if (getsockname(s->fd, (struct sockaddr *)&a, &l) != 0 || a.sin6_port == 0) {
            errno = EINVAL;                 /* not bound yet: libxlio answers -1 */
            return -1;
        }
        return s->offloaded ? 1 : 0;
    }
    if (s->is_tcp) return s->offloaded && (s->connected || s->listener) ? 1 : 0;
    return 0;
}

static int api_get_socket_rings_num(int fd) {
    emu_sock_t *s = emu_sock_get(fd);
    return s ? rings_num(s) : 0;        /* an fd it does not know: 0 (sock-extra.cpp) */
}

static int api_get_socket_rings_fds(int fd, int *ring_fds, int ring_fds_sz) {
    if (ring_fds_sz <= 0 || !ring_fds) { errno = EINVAL; return -1; }
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) return 0;
    int n = rings_num(s);
    if (n <= 0) return 0;
    ring_fds[0] = fd;
    return n;
}

static void dump_one(emu_sock_t *s) {
    char local[80];
    pthread_mutex_lock(&s->mu);
    if (!s->local_len) {
        socklen_t l = sizeof s->local;
        if (getsockname(s->fd, (struct sockaddr *)&s->local, &l) == 0) s->local_len = l;
    }
    emu_fmt_addr((struct sockaddr *)&s->local, s->local_len, local, sizeof local);
    emu_log("fd=%d proto=%s offloaded=%s local=%s rx_packets=%lu rx_bytes=%lu rx_zcopy=%lu "
            "rx_copied=%lu outstanding=%llu held=%llu dummy_sends=%lu dropped=%lu queued=%u "
            "tx_packets=%lu enomem=%lu callback=%s feed=%s",
            s->fd, s->is_udp ? "udp" : s->is_tcp ? "tcp" : "other", s->offloaded ? "yes" : "no",
            local, atomic_load(&s->rx_packets), atomic_load(&s->rx_bytes),
            atomic_load(&s->rx_zcopy), atomic_load(&s->rx_copied),
            (unsigned long long)s->outstanding, (unsigned long long)s->held,
            atomic_load(&s->dummy_sends), atomic_load(&s->dropped), s->qlen,
            atomic_load(&s->tx_packets), atomic_load(&s->enomem), s->cb ? "yes" : "no",
            s->feed ? "yes" : "no");
    pthread_mutex_unlock(&s->mu);
}

/* libxlio 3.51.1 (src/core/sock/sock-extra.cpp xlio_dump_fd_stats, src/core/sock/
 * fd_collection.cpp fd_collection::statistics_print, src/vlogger/vlogger.cpp log_level::from_int):
 * -1 before the global init; after it, 0 for any fd - a socket, one it does not know, a
 * descriptor that is not a socket - printing what it knows of it (nothing for an fd it does not
 * know); a level outside -1..8 is taken as the default level (INFO). */
static int api_dump_fd_stats(int fd, int log_level) {
    if (!atomic_load(&emu_inited)) { errno = EINVAL; return -1; }
    if (log_level < PYXLIO_LOG_NONE || log_level > PYXLIO_LOG_ALL) log_level = PYXLIO_LOG_INFO;
    int show = log_level <= emu_conf.tracelevel;
    if (fd == 0) {
        if (!show) return 0;
        for (int f = 0; f < EMU_MAXFD; f++) {
            emu_sock_t *s = emu_sock_get(f);
            if (s) dump_one(s);
        }
        return 0;
    }
    emu_sock_t *s = emu_sock_get(fd);
    if (s && show) dump_one(s);
    return 0;
}

static int api_ioctl(void *cmsg_hdr, size_t cmsg_len) {
    if (atomic_load(&emu_inited)) { errno = EINVAL; return -1; }
    if (!cmsg_hdr || cmsg_len < sizeof(struct cmsghdr)) { errno = EINVAL; return -1; }
    const unsigned char *base = cmsg_hdr;
    size_t off = 0;
    int found = 0;
    uint8_t fl = 0;
    pyxlio_alloc_fn af = NULL;
    pyxlio_free_fn ff = NULL;
    while (off + sizeof(struct cmsghdr) <= cmsg_len) {
        struct cmsghdr c;
        memcpy(&c, base + off, sizeof c);
        if (c.cmsg_len < sizeof(struct cmsghdr) || c.cmsg_len > cmsg_len - off) { errno = EINVAL; return -1; }
        if (c.cmsg_level == SOL_SOCKET && c.cmsg_type == PYXLIO_CMSG_IOCTL_USER_ALLOC) {
            if (c.cmsg_len != PYXLIO_USER_ALLOC_CMSG_LEN) { errno = EINVAL; return -1; }
            const unsigned char *d = base + off + CMSG_LEN(0);
            fl = d[0];
            memcpy(&af, d + 1, sizeof af);
            memcpy(&ff, d + 9, sizeof ff);
            if (!af || !ff || fl < 1 || fl > 3) { errno = EINVAL; return -1; }
            found = 1;
        }
        off += CMSG_ALIGN(c.cmsg_len);
    }
    if (found) {
        emu_user_alloc = af;
        emu_user_free = ff;
        atomic_store(&emu_user_alloc_set, 1);
        emu_vlog("ioctl: user allocator registered (flags=%u)", fl);
    }
    return 0;
}

/* libxlio 3.51.1 (src/core/sock/sock-extra.cpp xlio_register_recv_callback): 0 for every socket
 * it wraps, offloaded or not, TCP included (it only looks the fd up); -1/EINVAL for an fd it
 * does not know (or with socketXtreme on, which the emulator does not have).  The callback then
 * runs only on datagrams it offloads (src/core/sock/sockinfo_udp.cpp inspect_by_user_cb): never
 * for a socket served by the kernel.  3.60.x (its sock-extra.cpp) accepts UDP sockets only.
 * The emulator runs callbacks on offloaded UDP sockets (emu_sock_cb); one registered on a TCP
 * socket is accepted and never called (libxlio 3.51.1 runs it on offloaded TCP segments). */
static int api_register_recv_callback(int fd, pyxlio_recv_callback_t cb, void *context) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s || (emu_conf.layout == PYXLIO_LAYOUT_360 && !s->is_udp)) { errno = EINVAL; return -1; }
    pthread_mutex_lock(&s->mu);
    s->cb = cb;
    s->cb_ctx = cb ? context : NULL;
    emu_sock_update_special(s);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int api_unsupported(void) {
    errno = EOPNOTSUPP;
    return -1;
}

/* ---- the tables ------------------------------------------------------------------------
 * One per layout, as the fact sheet (section 2) gives them and each release's
 * src/core/xlio_extra.h and src/core/sock/sock-extra.cpp (extra_api) set them: 3.51.1, 3.60.4,
 * 3.61.2, 3.940.2.  The Ultra API (3.60+, 23 members) and the socket API (legacy 3.30.3+ and
 * 3.94x, 16 members) are served by emu_ultra.c. */
#define EMU_ULTRA_MEMBERS 23
#define EMU_SOCKET_API_MEMBERS 16

typedef struct PYXLIO_PACKED {
    pyxlio_api_360_t h;
    void *ultra[EMU_ULTRA_MEMBERS];
} emu_api360_t;

typedef struct PYXLIO_PACKED {
    pyxlio_api_361_t h;
    void *ultra[EMU_ULTRA_MEMBERS];
} emu_api361_t;

typedef struct PYXLIO_PACKED {
    pyxlio_api_394_t h;
    void *socket_api[EMU_SOCKET_API_MEMBERS];
} emu_api394_t;

_Static_assert(sizeof(pyxlio_api_legacy_t) == 248, "3.51.x xlio_api_t is 248 bytes");
_Static_assert(sizeof(emu_api360_t) == 232, "3.60.x xlio_api_t is 232 bytes");
_Static_assert(sizeof(emu_api361_t) == 224, "3.61+ xlio_api_t is 224 bytes");
_Static_assert(sizeof(emu_api394_t) == 176, "3.94x xlio_api_t is 176 bytes");

#define CAPS_LEGACY 0x3fffULL   /* bits 0..13 */
#define CAPS_360 0x2819ULL      /* REGISTER_RECV_CALLBACK, ADD_CONF_RULE, THREAD_OFFLOAD, DUMP_FD_STATS, XLIO_ULTRA */
#define CAPS_361 0x2818ULL      /* ADD_CONF_RULE, THREAD_OFFLOAD, DUMP_FD_STATS, XLIO_ULTRA */
#define CAPS_394 0x3818ULL      /* ADD_CONF_RULE, THREAD_OFFLOAD, DUMP_FD_STATS, IOCTL, XLIO_SOCKET */

static pyxlio_api_legacy_t g_api_legacy;
static emu_api360_t g_api_360;
static emu_api361_t g_api_361;
static emu_api394_t g_api_394;
static pthread_once_t g_api_once = PTHREAD_ONCE_INIT;

static void api_build(void) {
    pyxlio_api_legacy_t *a = &g_api_legacy;
    a->magic = PYXLIO_XLIO_MAGIC;
    a->cap_mask = CAPS_LEGACY;
    a->recvfrom_zcopy = api_recvfrom_zcopy;
    a->recvfrom_zcopy_free_packets = api_free_packets;
    a->add_conf_rule = api_add_conf_rule;
    a->thread_offload = api_thread_offload;
    a->get_socket_rings_num = api_get_socket_rings_num;
    a->get_socket_rings_fds = api_get_socket_rings_fds;
    a->dump_fd_stats = api_dump_fd_stats;
    a->ioctl = api_ioctl;
    a->register_recv_callback = api_register_recv_callback;
    a->socketxtreme_poll = api_unsupported;
    a->socketxtreme_free_packets = api_unsupported;
    a->socketxtreme_ref_buff = api_unsupported;
    a->socketxtreme_free_buff = api_unsupported;
    emu_ultra_fill_socket_api(a->socket_api);

    emu_api360_t *b = &g_api_360;
    b->h.magic = PYXLIO_XLIO_MAGIC;
    b->h.cap_mask = CAPS_360;
    b->h.add_conf_rule = api_add_conf_rule;
    b->h.thread_offload = api_thread_offload;
    b->h.dump_fd_stats = api_dump_fd_stats;
    b->h.register_recv_callback = api_register_recv_callback;
    emu_ultra_fill_ultra_api(b->ultra);

    emu_api361_t *c = &g_api_361;
    c->h.magic = PYXLIO_XLIO_MAGIC;
    c->h.cap_mask = CAPS_361;
    c->h.add_conf_rule = api_add_conf_rule;
    c->h.thread_offload = api_thread_offload;
    c->h.dump_fd_stats = api_dump_fd_stats;
    emu_ultra_fill_ultra_api(c->ultra);

    emu_api394_t *d = &g_api_394;
    d->h.magic = PYXLIO_XLIO_MAGIC;
    d->h.cap_mask = CAPS_394;
    d->h.add_conf_rule = api_add_conf_rule;
    d->h.thread_offload = api_thread_offload;
    d->h.dump_fd_stats = api_dump_fd_stats;
    d->h.ioctl = api_ioctl;
    emu_ultra_fill_socket_api(d->socket_api);
}

/* libvma 9.8.84's struct vma_api_t (fact sheet section 11): no magic, the members from 0, the
 * support mask 0x377fff @152, ioctl @160.  libvma allocates it on the heap on the first request
 * and returns the same pointer ever after; the emulator's is static.  Members pyxlio never
 * calls (socketXtreme, tx ring fd, network header, ring profiles, direct descriptors, memory on
 * ring, modify ring) answer -1/EOPNOTSUPP. */
static pyxlio_api_vma_t g_api_vma;

static void api_build_vma(void) {
    void *unsupported = (void *)api_unsupported;
    pyxlio_api_vma_t *v = &g_api_vma;
    v->register_recv_callback = api_register_recv_callback;
    v->recvfrom_zcopy = api_recvfrom_zcopy;
    v->free_packets = api_free_packets;
    v->add_conf_rule = api_add_conf_rule;
    v->thread_offload = api_thread_offload;
    v->socketxtreme_poll = api_unsupported;
    v->get_socket_rings_num = api_get_socket_rings_num;
    v->get_socket_rings_fds = api_get_socket_rings_fds;
    v->get_socket_tx_ring_fd = unsupported;
    v->socketxtreme_free_vma_packets = api_unsupported;
    v->socketxtreme_ref_vma_buff = api_unsupported;
    v->socketxtreme_free_vma_buff = api_unsupported;
    v->dump_fd_stats = api_dump_fd_stats;
    v->vma_add_ring_profile = unsupported;
    v->get_socket_network_header = unsupported;
    v->get_ring_direct_descriptors = unsupported;
    v->register_memory_on_ring = unsupported;
    v->deregister_memory_on_ring = unsupported;
    v->vma_modify_ring = unsupported;
    v->vma_extra_supported_mask = PYXLIO_VMA_MASK_9_8_84;
    v->ioctl = api_ioctl;
}

void *emu_api_pointer(void) {
    pthread_once(&g_api_once, api_build);
    if (emu_conf.layout == PYXLIO_LAYOUT_VMA) {
        static pthread_once_t vma_once = PTHREAD_ONCE_INIT;
        pthread_once(&vma_once, api_build_vma);
        return &g_api_vma;
    }
    switch (emu_conf.layout) {
    case PYXLIO_LAYOUT_360: return &g_api_360;
    case PYXLIO_LAYOUT_361: return &g_api_361;
    case PYXLIO_LAYOUT_394: return &g_api_394;
    default: return &g_api_legacy;
    }
}
