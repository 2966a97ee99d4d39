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
    if (!sp || sp->cnt == 0) { CNT_ADD(s->enomem, 1); errno = ENOMEM; return -1; }
    size_t k = maxpk < sp->cnt ? maxpk : sp->cnt;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = sp->iov;
    m.msg_iovlen = k;
    ssize_t n = REAL(recvmsg)(s->fd, &m, in & ~(EMU_XLIO_RX_FLAGS | MSG_PEEK | MSG_TRUNC));
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
        if (in & PYXLIO_MSG_XLIO_ZCOPY_FORCE) { errno = EIO; return -1; }
        *flags = in & ~PYXLIO_MSG_XLIO_ZCOPY;
        return (int)recvfrom(fd, buf, len, in & ~EMU_XLIO_RX_FLAGS, from, fromlen);
    }
    if (!buf) { errno = EFAULT; return -1; }
    if (s->is_tcp) return zc_tcp(s, buf, len, in, flags, from, fromlen);
    if (len < PYXLIO_ZC_UDP_MIN(1)) { errno = ENOBUFS; return -1; }
    int kflags = in & ~(EMU_XLIO_RX_FLAGS | MSG_PEEK | MSG_TRUNC);
    uint32_t pi, gen;
    if (atomic_load_explicit(&s->special, memory_order_relaxed)) {
        if (s->feed && !s->cb && !ST_LOAD(s->qlen)) {
            gen = ST_LOAD(s->gen);
            if (emu_feed_make_pkt(s, &pi) < 0) return -1;
        } else {
            if (emu_next_special(s, kflags, &pi) < 0) return -1;
            gen = emu_pool.pkts[pi].gen;
        }
    } else {
        gen = ST_LOAD(s->gen);
        if (emu_pull_kernel(s, kflags, &pi, fromlen != NULL) < 0) return -1;
    }
    if (claim_zc(s, gen, pi) < 0) return -1;
    emu_pkt_t *p = &emu_pool.pkts[pi];
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
    fill_from(p, from, fromlen);
    CNT_ADD(s->rx_zcopy, 1);
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
    if (count == 0) return 0;
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
    if (!atomic_load(&emu_inited)) { errno = EINVAL; return -1; }
    return emu_thread_offload_set(offload, tid) < 0 ? -1 : 0;
}

static int rings_num(emu_sock_t *s) {
    if (!s->offloaded) return 0;
    return (s->local_len && s->local.sin6_port != 0) ? 1 : 0;
}

static int api_get_socket_rings_num(int fd) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) { errno = EINVAL; return -1; }
    return rings_num(s);
}

static int api_get_socket_rings_fds(int fd, int *ring_fds, int ring_fds_sz) {
    if (ring_fds_sz <= 0) { errno = EINVAL; return -1; }
    if (!ring_fds) { errno = EFAULT; return -1; }
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) { errno = EINVAL; return -1; }
    int n = rings_num(s);
    if (n) ring_fds[0] = fd;
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

static int api_dump_fd_stats(int fd, int log_level) {
    if (!atomic_load(&emu_inited)) { errno = EINVAL; return -1; }
    if (log_level < PYXLIO_LOG_NONE || log_level > PYXLIO_LOG_ALL) { errno = EINVAL; return -1; }
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
    if (!s) { errno = EINVAL; return -1; }
    if (show) dump_one(s);
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

static int api_register_recv_callback(int fd, pyxlio_recv_callback_t cb, void *context) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s || !s->offloaded || !s->is_udp) { errno = EINVAL; return -1; }
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

/* ---- the tables ------------------------------------------------------------------------- */
typedef struct PYXLIO_PACKED {
    pyxlio_api_361_t h;
    void *socket_api[16];
} emu_api361_t;

static pyxlio_api_legacy_t g_api_legacy;
static emu_api361_t g_api_361;
static pthread_once_t g_api_once = PTHREAD_ONCE_INIT;

static void api_build(void) {
    pyxlio_api_legacy_t *a = &g_api_legacy;
    a->magic = PYXLIO_XLIO_MAGIC;
    a->cap_mask = 0x3fff;
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
    for (int i = 0; i < 16; i++) a->socket_api[i] = (void *)api_unsupported;
    emu_api361_t *b = &g_api_361;
    b->h.magic = PYXLIO_XLIO_MAGIC;
    b->h.cap_mask = 0x2818;
    b->h.add_conf_rule = api_add_conf_rule;
    b->h.thread_offload = api_thread_offload;
    b->h.dump_fd_stats = api_dump_fd_stats;
    for (int i = 0; i < 16; i++) b->socket_api[i] = (void *)api_unsupported;
}

void *emu_api_pointer(void) {
    pthread_once(&g_api_once, api_build);
    return emu_conf.layout361 ? (void *)&g_api_361 : (void *)&g_api_legacy;
}
