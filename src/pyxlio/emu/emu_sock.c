/*
 * pyxlio emulator: per-fd socket state and the interposed socket calls.
 *
 * Fast path: a tracked socket without callback, feed or user queue goes straight to libc for
 * copy receives (only counted).  Sockets with a callback or a feed ("special") receive through
 * a user-space ready queue so that poll/select/epoll and receive calls agree.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "emu.h"

static _Atomic(emu_sock_t *) g_socks[EMU_MAXFD];
static atomic_int g_maxfd;                 /* highest fd ever tracked + 1 */
static pthread_mutex_t g_alloc_mu = PTHREAD_MUTEX_INITIALIZER;
atomic_int emu_nspecial;
static pthread_mutex_t g_special_mu = PTHREAD_MUTEX_INITIALIZER;
static int *g_special_fds;
static int g_nspecial_fds, g_capspecial;
static atomic_int g_enomem_warned;

#define ST_LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define CNT_ADD(x, v) atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)

emu_sock_t *emu_sock_get(int fd) {
    if (EMU_UNLIKELY((unsigned)fd >= EMU_MAXFD)) return NULL;
    emu_sock_t *s = atomic_load_explicit(&g_socks[fd], memory_order_acquire);
    if (!s || !atomic_load_explicit(&s->active, memory_order_acquire)) return NULL;
    return s;
}

static emu_sock_t *sock_slot(int fd) {
    emu_sock_t *s = atomic_load_explicit(&g_socks[fd], memory_order_acquire);
    if (s) return s;
    pthread_mutex_lock(&g_alloc_mu);
    s = atomic_load_explicit(&g_socks[fd], memory_order_relaxed);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (s) {
            pthread_mutex_init(&s->mu, NULL);
            pthread_mutex_init(&s->pull_mu, NULL);
            s->fd = fd;
            atomic_store_explicit(&g_socks[fd], s, memory_order_release);
            if (fd + 1 > atomic_load(&g_maxfd)) atomic_store(&g_maxfd, fd + 1);
        }
    }
    pthread_mutex_unlock(&g_alloc_mu);
    return s;
}

/* ---- special set ------------------------------------------------------------------------ */
void emu_sock_update_special(emu_sock_t *s) {
    int want = atomic_load(&s->active) && (emu_sock_cb(s) || s->feed || s->qlen > 0);
    int have = atomic_load_explicit(&s->special, memory_order_relaxed);
    if (want == have) return;
    pthread_mutex_lock(&g_special_mu);
    if (want) {
        if (g_nspecial_fds == g_capspecial) {
            int nc = g_capspecial ? g_capspecial * 2 : 64;
            int *n = realloc(g_special_fds, (size_t)nc * sizeof *n);
            if (n) { g_special_fds = n; g_capspecial = nc; }
        }
        if (g_nspecial_fds < g_capspecial) g_special_fds[g_nspecial_fds++] = s->fd;
    } else {
        for (int i = 0; i < g_nspecial_fds; i++)
            if (g_special_fds[i] == s->fd) { g_special_fds[i] = g_special_fds[--g_nspecial_fds]; break; }
    }
    atomic_store(&s->special, want);
    atomic_store(&emu_nspecial, g_nspecial_fds);
    pthread_mutex_unlock(&g_special_mu);
}

int emu_special_snapshot(int *fds, int max) {
    pthread_mutex_lock(&g_special_mu);
    int n = g_nspecial_fds < max ? g_nspecial_fds : max;
    memcpy(fds, g_special_fds, (size_t)n * sizeof *fds);
    pthread_mutex_unlock(&g_special_mu);
    return n;
}

/* ---- registration ----------------------------------------------------------------------- */
static void sock_local_refresh(emu_sock_t *s) {
    socklen_t l = sizeof s->local;
    if (getsockname(s->fd, (struct sockaddr *)&s->local, &l) == 0) s->local_len = l;
}

/* Reclaim every packet of s still held by the application; returns how many.  Under s->mu. */
static uint64_t sock_reclaim(emu_sock_t *s) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < emu_pool.nbuf; i++) {
        emu_pkt_t *p = &emu_pool.pkts[i];
        unsigned st = atomic_load_explicit(&p->state, memory_order_relaxed);
        if ((st == PKT_ZC || st == PKT_HELD) && p->fd == s->fd && p->gen == s->gen) {
            emu_pkt_release(i);
            n++;
        }
    }
    return n;
}

static void sock_unregister(emu_sock_t *s, const char *why) {
    pthread_mutex_lock(&s->mu);
    if (!atomic_load(&s->active)) { pthread_mutex_unlock(&s->mu); return; }
    if (s->outstanding + s->held > 0) {
        uint64_t out = s->outstanding, held = s->held;
        uint64_t n = sock_reclaim(s);
        emu_violation("%s(fd=%d): %llu packet(s) never freed (outstanding=%llu held=%llu): "
                      "reclaimed as leaked", why, s->fd, (unsigned long long)n,
                      (unsigned long long)out, (unsigned long long)held);
    }
    while (s->qhead) {
        uint32_t pi = s->qhead - 1;
        s->qhead = emu_pool.pkts[pi].qnext;
        emu_pkt_release(pi);
    }
    s->qtail = 0; s->qlen = 0; s->qbytes = 0;
    s->qraw = 0; s->qrawbytes = 0;
    s->outstanding = s->held = 0;
    s->cb = NULL; s->cb_ctx = NULL;
    s->feed = 0;
    s->nep = 0;
    atomic_store(&s->active, 0);
    s->gen++;
    emu_sock_update_special(s);
    pthread_mutex_unlock(&s->mu);
}

static emu_sock_t *sock_register(int fd, int domain, int is_udp, int is_tcp, int offloaded) {
    if ((unsigned)fd >= EMU_MAXFD) return NULL;
    emu_sock_t *s = sock_slot(fd);
    if (!s) return NULL;
    if (atomic_load(&s->active)) sock_unregister(s, "fd reused"); /* closed behind our back */
    pthread_mutex_lock(&s->mu);
    s->gen++;
    s->domain = domain;
    s->is_udp = is_udp;
    s->is_tcp = is_tcp;
    s->offloaded = offloaded && emu_pool.nbuf > 0 && emu_conf.offload != EMU_OFFLOAD_NONE;
    s->listener = 0;
    s->connected = 0;
    s->rule_seq = emu_rules_seq();
    s->cb = NULL; s->cb_ctx = NULL;
    s->feed = 0; s->feed_size = 0; s->feed_seq = 0;
    s->qhead = s->qtail = s->qlen = 0; s->qbytes = 0;
    s->qraw = 0; s->qrawbytes = 0;
    s->bdirect = 1;
    atomic_store(&s->batched, 0);
    s->local_len = 0;
    memset(&s->local, 0, sizeof s->local);
    s->nep = 0;
    atomic_store(&s->rx_packets, 0); atomic_store(&s->rx_bytes, 0);
    atomic_store(&s->rx_zcopy, 0); atomic_store(&s->rx_copied, 0);
    atomic_store(&s->tx_packets, 0); atomic_store(&s->dummy_sends, 0);
    atomic_store(&s->dropped, 0); atomic_store(&s->enomem, 0);
    s->outstanding = s->held = 0;
    atomic_store(&s->active, 1);
    pthread_mutex_unlock(&s->mu);
    emu_vlog("socket fd=%d %s offloaded=%s", fd, is_udp ? "udp" : is_tcp ? "tcp" : "other",
             s->offloaded ? "yes" : "no");
    return s;
}

void emu_sock_fork_child(void) {
    pthread_mutex_init(&g_special_mu, NULL);
    pthread_mutex_init(&g_alloc_mu, NULL);
    int max = atomic_load(&g_maxfd);
    for (int fd = 0; fd < max; fd++) {
        emu_sock_t *s = atomic_load(&g_socks[fd]);
        if (!s) continue;
        pthread_mutex_init(&s->mu, NULL);
        pthread_mutex_init(&s->pull_mu, NULL);
        s->outstanding = 0;
        s->held = 0;
        /* Datagrams queued in user space (a batch pull, a callback's verdict) are the
         * parent's: each datagram is read once, as from a kernel queue two processes share.
         * The child forgets them without touching their buffers (the pool's memory may be
         * shared with the parent: a user allocator's). */
        while (s->qhead) {
            emu_pkt_t *p = &emu_pool.pkts[s->qhead - 1];
            s->qhead = p->qnext;
            atomic_store_explicit(&p->state, PKT_ORPHAN, memory_order_relaxed);
        }
        s->qtail = 0; s->qlen = 0; s->qbytes = 0;
        s->qraw = 0; s->qrawbytes = 0;
        emu_sock_update_special(s);
    }
}

void emu_sock_exit_report(void) {
    int max = atomic_load(&g_maxfd);
    for (int fd = 0; fd < max; fd++) {
        emu_sock_t *s = atomic_load(&g_socks[fd]);
        if (!s || !atomic_load(&s->active)) continue;
        uint64_t out = ST_LOAD(s->outstanding), held = ST_LOAD(s->held);
        if (out + held)
            emu_violation("exit: fd=%d: %llu packet(s) never freed (outstanding=%llu held=%llu)",
                          fd, (unsigned long long)(out + held), (unsigned long long)out,
                          (unsigned long long)held);
    }
}

/* ---- user ready queue (under s->mu) ----------------------------------------------------- */
static void queue_push(emu_sock_t *s, uint32_t pi) {
    emu_pkt_t *p = &emu_pool.pkts[pi];
    p->qnext = 0;
    atomic_store_explicit(&p->state, PKT_QUEUED, memory_order_relaxed);
    if (s->qtail) emu_pool.pkts[s->qtail - 1].qnext = pi + 1;
    else s->qhead = pi + 1;
    s->qtail = pi + 1;
    s->qlen++;
    s->qbytes += p->len;
    if (p->flags & EMU_PKT_RAW) { s->qraw++; s->qrawbytes += p->len; }
    emu_sock_update_special(s);
}

/* Put packet pi at the head of s's user queue (the oldest first).  Under s->mu. */
static void queue_front_locked(emu_sock_t *s, uint32_t pi) {
    emu_pkt_t *p = &emu_pool.pkts[pi];
    atomic_store_explicit(&p->state, PKT_QUEUED, memory_order_relaxed);
    p->qnext = s->qhead;
    s->qhead = pi + 1;
    if (!s->qtail) s->qtail = pi + 1;
    s->qlen++;
    s->qbytes += p->len;
    emu_sock_update_special(s);
}

int emu_queue_push_front(emu_sock_t *s, uint32_t pi) {
    pthread_mutex_lock(&s->mu);
    emu_pkt_t *p = &emu_pool.pkts[pi];
    if (!atomic_load(&s->active) || p->gen != s->gen) {
        pthread_mutex_unlock(&s->mu);
        emu_pkt_release(pi);
        return -1;
    }
    queue_front_locked(s, pi);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Pop the head (BUSY, owned by the caller); *raw: the callback has not seen it yet (the flag
 * is cleared: the caller runs the callback or hands it out). */
static int queue_pop(emu_sock_t *s, uint32_t *pi, int *raw) {
    if (!s->qhead) return 0;
    uint32_t i = s->qhead - 1;
    emu_pkt_t *p = &emu_pool.pkts[i];
    s->qhead = p->qnext;
    if (!s->qhead) s->qtail = 0;
    s->qlen--;
    s->qbytes -= p->len;
    *raw = 0;
    if (p->flags & EMU_PKT_RAW) {
        s->qraw--;
        s->qrawbytes -= p->len;
        p->flags &= ~EMU_PKT_RAW;
        *raw = 1;
    }
    atomic_store_explicit(&p->state, PKT_BUSY, memory_order_relaxed);
    *pi = i;
    emu_sock_update_special(s);
    return 1;
}

int emu_queue_take_zc(emu_sock_t *s, uint32_t *pi) {
    pthread_mutex_lock(&s->mu);
    uint32_t h = s->qhead;
    if (!h || !atomic_load(&s->active) ||
        ((emu_pool.pkts[h - 1].flags & EMU_PKT_RAW) && emu_sock_cb(s))) {
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    int raw;
    queue_pop(s, pi, &raw);
    emu_pkt_t *p = &emu_pool.pkts[*pi];
    p->fd = s->fd;
    p->gen = s->gen;
    atomic_store_explicit(&p->state, PKT_ZC, memory_order_release);
    s->outstanding++;
    pthread_mutex_unlock(&s->mu);
    return 1;
}

int emu_sock_ready(emu_sock_t *s) {
    return s->feed || ST_LOAD(s->qlen) > 0;
}

/* ---- pulling datagrams from the kernel -------------------------------------------------- */
static void pool_exhausted(emu_sock_t *s) {
    CNT_ADD(s->enomem, 1);
    if (!atomic_exchange(&g_enomem_warned, 1))
        emu_log("packet pool exhausted (%u buffers of %zu bytes, XLIO_MEMORY_LIMIT=%zu): "
                "zero-copy receive returns ENOMEM until packets are freed",
                emu_pool.nbuf, emu_conf.frag, emu_pool.size);
    errno = ENOMEM;
}

int emu_pull_kernel(emu_sock_t *s, int kflags, uint32_t *pi, int want_src) {
    emu_spare_t *sp = emu_spare();
    if (EMU_UNLIKELY(!sp)) { pool_exhausted(s); return -1; }
    kflags &= ~(EMU_XLIO_RX_FLAGS | MSG_PEEK | MSG_TRUNC | MSG_WAITALL);
    if (EMU_UNLIKELY(sp->cnt < emu_pool.maxfrag)) {
        /* a short spare set: learn this datagram's size first and take the buffers it needs */
        if (emu_spare_need(sp, 1) < 0) { pool_exhausted(s); return -1; }
        struct msghdr pm;
        memset(&pm, 0, sizeof pm);
        ssize_t need = REAL(recvmsg)(s->fd, &pm, kflags | MSG_PEEK | MSG_TRUNC);
        if (need < 0) return -1;
        size_t nf = need ? ((size_t)need + emu_conf.frag - 1) / emu_conf.frag : 1;
        if (nf > emu_pool.maxfrag) nf = emu_pool.maxfrag;
        if (emu_spare_need(sp, (uint32_t)nf) < 0) { pool_exhausted(s); return -1; }
    }
    struct sockaddr_in6 src;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    if (want_src) {
        m.msg_name = &src;
        m.msg_namelen = sizeof src;
    }
    /* Up to EMU_DIRECT_FRAGS pool buffers, then the scratch buffer for the rest of the
     * datagram (copied into pool buffers below), unless the spare's buffers alone hold the
     * largest datagram in at most EMU_DIRECT_FRAGS + 1 iovecs.  The scratch also catches a
     * datagram larger than a short spare expected (another thread took the one peeked at). */
    struct iovec kiov[EMU_DIRECT_FRAGS + 1];
    uint32_t direct;
    if (sp->cnt >= emu_pool.maxfrag && sp->cnt <= EMU_DIRECT_FRAGS + 1) {
        direct = sp->cnt;
        m.msg_iov = sp->iov;
        m.msg_iovlen = sp->cnt;
    } else {
        direct = sp->cnt < EMU_DIRECT_FRAGS ? sp->cnt : EMU_DIRECT_FRAGS;
        memcpy(kiov, sp->iov, sizeof(struct iovec) * direct);
        kiov[direct].iov_base = sp->scratch;
        kiov[direct].iov_len = EMU_MAX_DGRAM;
        m.msg_iov = kiov;
        m.msg_iovlen = direct + 1;
    }
    ssize_t n = REAL(recvmsg)(s->fd, &m, kflags);
    if (n < 0) return -1;
    uint32_t used = n ? (uint32_t)(((size_t)n + emu_conf.frag - 1) / emu_conf.frag) : 1;
    if (used > direct) {
        /* the tail landed in the scratch buffer: move it into the next pool buffers (a short
         * spare that lost a race for the datagram it peeked at takes more buffers now; if the
         * pool has none, this datagram is dropped, as a NIC drops on an exhausted pool) */
        if (EMU_UNLIKELY(emu_spare_need(sp, used) < 0)) { pool_exhausted(s); return -1; }
        size_t off = 0, left = (size_t)n - direct * emu_conf.frag;
        for (uint32_t k = direct; left; k++) {
            size_t c = left < emu_conf.frag ? left : emu_conf.frag;
            memcpy(sp->iov[k].iov_base, sp->scratch + off, c);
            off += c;
            left -= c;
        }
    }
    uint32_t i = emu_spare_take(sp, used, (uint32_t)n);
    emu_pkt_t *p = &emu_pool.pkts[i];
    p->addrlen = m.msg_namelen;
    if (m.msg_namelen) memcpy(&p->src, &src, m.msg_namelen < sizeof src ? m.msg_namelen : sizeof src);
    if (m.msg_flags & MSG_TRUNC) p->flags |= EMU_PKT_TRUNC;
    p->fd = s->fd;
    CNT_ADD(s->rx_packets, 1);
    CNT_ADD(s->rx_bytes, (unsigned long)n);
    *pi = i;
    return 1;
}

/* Hand the oldest of `ids` (pulled in kernel order) to the caller, queue the others.  A
 * receive in another thread may have queued datagrams meanwhile: those are older, so then
 * every new one goes behind them and the head of the queue is handed out. */
static int batch_deliver(emu_sock_t *s, uint32_t gen, uint32_t *ids, uint32_t n, uint32_t *pi) {
    pthread_mutex_lock(&s->mu);
    if (EMU_UNLIKELY(!atomic_load(&s->active) || s->gen != gen)) {
        /* closed meanwhile (and maybe its fd number reused): not the new socket's data */
        pthread_mutex_unlock(&s->mu);
        for (uint32_t k = 0; k < n; k++) emu_pkt_release(ids[k]);
        errno = EBADF;
        return -1;
    }
    for (uint32_t k = 0; k < n; k++) {
        emu_pkt_t *p = &emu_pool.pkts[ids[k]];
        p->fd = s->fd;
        p->gen = gen;
        p->flags |= EMU_PKT_RAW;
    }
    uint32_t k0 = 0;
    if (!s->qhead) {
        *pi = ids[0];           /* not queued: its RAW flag tells the caller the same */
        k0 = 1;
    }
    for (uint32_t k = k0; k < n; k++) queue_push(s, ids[k]);
    if (k0 == 0) {
        int raw;
        queue_pop(s, pi, &raw);
        if (raw) emu_pool.pkts[*pi].flags |= EMU_PKT_RAW;
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int pull_batch_locked(emu_sock_t *s, uint32_t gen, int kflags, uint32_t *pi);

int emu_pull_batch(emu_sock_t *s, uint32_t gen, int kflags, uint32_t *pi) {
    /* One pull at a time per socket: two threads' batches would otherwise reach the queue in
     * either order, and a later reader would see a newer datagram before an older one. */
    pthread_mutex_lock(&s->pull_mu);
    if (!atomic_load_explicit(&s->batched, memory_order_relaxed))
        atomic_store(&s->batched, 1);
    int rc = pull_batch_locked(s, gen, kflags, pi);
    int saved = errno;
    pthread_mutex_unlock(&s->pull_mu);
    errno = saved;
    return rc;
}

static int pull_batch_locked(emu_sock_t *s, uint32_t gen, int kflags, uint32_t *pi) {
    kflags = (kflags & ~(EMU_XLIO_RX_FLAGS | MSG_PEEK | MSG_TRUNC | MSG_WAITALL | MSG_WAITFORONE)) |
             MSG_DONTWAIT;
    emu_batch_t *b = emu_batch();
    uint32_t d = ST_LOAD(s->bdirect);
    if (d < 1) d = 1;
    if (d > emu_pool.maxfrag) d = emu_pool.maxfrag;
    uint32_t n = b ? emu_pool_batch_begin(b, EMU_BATCH, d) : 0;
    if (EMU_UNLIKELY(n == 0)) {
        /* the pool cannot promise a whole batch slot: one datagram, sized first when the
         * spare set is short (pull less, lose nothing) */
        uint32_t i;
        if (emu_pull_kernel(s, kflags, &i, 1) < 0) return -1;
        return batch_deliver(s, gen, &i, 1, pi);
    }
    for (uint32_t i = 0; i < n; i++) {
        struct iovec *v = b->iov[i];
        for (uint32_t j = 0; j < d; j++) {
            v[j].iov_base = emu_buf(b->bufs[i * d + j]);
            v[j].iov_len = emu_conf.frag;
        }
        v[d].iov_base = b->scratch + (size_t)i * EMU_MAX_DGRAM;
        v[d].iov_len = EMU_MAX_DGRAM;
        struct msghdr *m = &b->msgs[i].msg_hdr;
        m->msg_name = &b->src[i];
        m->msg_namelen = sizeof b->src[i];
        m->msg_iov = v;
        m->msg_iovlen = d + 1;
        m->msg_control = b->ctrl[i];
        m->msg_controllen = EMU_CTRL_MAX;
        m->msg_flags = 0;
    }
    int r = REAL(recvmmsg)(s->fd, b->msgs, n, kflags, NULL);
    if (r <= 0) {
        int saved = errno;
        emu_pool_batch_end(b, n, d, 0);
        errno = r == 0 ? EAGAIN : saved;
        return -1;
    }
    emu_pool_batch_end(b, n, d, (uint32_t)r);
    /* the next batch gives each slot as many direct buffers as this one's largest needed */
    uint32_t need = 1;
    unsigned long bytes = 0;
    for (int k = 0; k < r; k++) {
        size_t l = b->msgs[k].msg_len;
        uint32_t u = l ? (uint32_t)((l + emu_conf.frag - 1) / emu_conf.frag) : 1;
        if (u > need) need = u;
        bytes += l;
    }
    if (need > EMU_BATCH_DIRECT) need = EMU_BATCH_DIRECT;
    __atomic_store_n(&s->bdirect, need, __ATOMIC_RELAXED);
    CNT_ADD(s->rx_packets, (unsigned long)r);
    CNT_ADD(s->rx_bytes, bytes);
    return batch_deliver(s, gen, b->descs, (uint32_t)r, pi);
}

/* Run the receive callback on a fresh packet (no lock held).  Returns the verdict. */
static int run_cb(emu_sock_t *s, uint32_t pi, pyxlio_recv_callback_t cb, void *ctx) {
    emu_pkt_t *p = &emu_pool.pkts[pi];
    uint32_t nf = p->nfrag ? p->nfrag : 1;
    struct iovec stackv[64];
    struct iovec *iov = nf <= 64 ? stackv : malloc(nf * sizeof *iov);
    if (!iov) return PYXLIO_PACKET_RECV;
    uint32_t b = p->buf;
    for (uint32_t k = 0; k < nf; k++) {
        iov[k].iov_base = emu_buf(b);
        iov[k].iov_len = emu_frag_len(p, k);
        b = emu_pool.next[b];
    }
    if (!s->local_len) sock_local_refresh(s);
    clock_gettime(CLOCK_REALTIME, &p->ts);
    pyxlio_recv_info_t info;
    memset(&info, 0, sizeof info);
    info.struct_sz = sizeof info;
    info.packet_id = p;
    info.src = (const struct sockaddr *)&p->src;
    info.dst = (const struct sockaddr *)&s->local;
    info.payload_sz = p->len;
    /* the socket's ready queue as libxlio counts it: the datagrams kept by the callback
     * (those a batch pulled that it has not seen yet are still "in the ring") */
    info.socket_ready_queue_pkt_count = ST_LOAD(s->qlen) - ST_LOAD(s->qraw);
    info.socket_ready_queue_byte_count = (uint32_t)(ST_LOAD(s->qbytes) - ST_LOAD(s->qrawbytes));
    info.sw_timestamp = p->ts;
    int v = (int)cb(s->fd, nf, iov, &info, ctx);
    if (iov != stackv) free(iov);
    return v;
}

/* Apply a callback verdict; returns 1 if the packet is to be delivered (RECV), 0 otherwise. */
static int apply_verdict(emu_sock_t *s, uint32_t gen, uint32_t pi, int v, int enqueue) {
    emu_pkt_t *p = &emu_pool.pkts[pi];
    pthread_mutex_lock(&s->mu);
    if (!atomic_load(&s->active) || s->gen != gen) {
        pthread_mutex_unlock(&s->mu);
        emu_pkt_release(pi);
        return 0;
    }
    if (v == PYXLIO_PACKET_DROP) {
        pthread_mutex_unlock(&s->mu);
        CNT_ADD(s->dropped, 1);
        emu_pkt_release(pi);
        return 0;
    }
    if (v == PYXLIO_PACKET_HOLD) {
        p->fd = s->fd;
        p->gen = gen;
        atomic_store_explicit(&p->state, PKT_HELD, memory_order_release);
        s->held++;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    if (enqueue) {
        /* kept: back at the head (it was the oldest; a batch's others wait behind it) */
        queue_front_locked(s, pi);
    }
    pthread_mutex_unlock(&s->mu);
    return 1;
}

int emu_sock_blocking(emu_sock_t *s, int flags) {
    if (flags & MSG_DONTWAIT) return 0;
    int fl = fcntl(s->fd, F_GETFL);
    return fl >= 0 && !(fl & O_NONBLOCK);
}

/* Wait for the kernel socket to become readable, honouring SO_RCVTIMEO (deadline in ns, 0 =
 * none).  Returns 0 to retry, -1 with errno EAGAIN (timeout) or EINTR. */
/* Once per call: the SO_RCVTIMEO deadline (CLOCK_MONOTONIC ns), 0 when there is none. */
static void rcvtimeo_deadline(emu_sock_t *s, int64_t *deadline, int *have_deadline) {
    struct timespec now;
    if (!*have_deadline) {
        struct timeval tv = {0, 0};
        socklen_t l = sizeof tv;
        *have_deadline = 1;
        *deadline = 0;
        if (REAL(getsockopt)(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &l) == 0 && (tv.tv_sec || tv.tv_usec)) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            *deadline = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec +
                        (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000;
        }
    }
}

#define EMU_WAIT_SLICE_MS 20

static int wait_readable(emu_sock_t *s, int64_t *deadline, int *have_deadline) {
    struct timespec now;
    rcvtimeo_deadline(s, deadline, have_deadline);
    int ms = -1;
    if (*deadline) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t left = *deadline - ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
        if (left <= 0) { errno = EAGAIN; return -1; }
        ms = (int)((left + 999999) / 1000000);
    }
    /* In slices: a receive in another thread may queue datagrams in user space meanwhile
     * (a batch pull), which wakes no kernel wait; the caller looks at the queue again. */
    if (ms < 0 || ms > EMU_WAIT_SLICE_MS) ms = EMU_WAIT_SLICE_MS;
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    int r = REAL(poll)(&pfd, 1, ms);
    if (r < 0) return -1;
    return 0;
}

/* A UDP socket the emulator wraps but does not offload: readability as libxlio 3.51.1 decides
 * it for such a socket (read in its sources: src/core/sock/sockinfo_udp.cpp sockinfo_udp::rx,
 * poll_os and rx_wait; measured on a real 3.51.1, fact sheet section 9): the kernel is read only
 * when ioctl(FIONREAD) is > 0.  For UDP, FIONREAD is the size of the datagram at the head of
 * the queue, so a zero-length datagram there blocks the socket: a non-blocking call answers
 * EAGAIN for ever, a blocking one waits (until SO_RCVTIMEO: EAGAIN, or a signal: EINTR), and
 * nothing queued behind it is read through the wrappers (the raw system calls read it).
 * Where libxlio spins, the emulator sleeps in slices of GATE_NAP_MS.  A pending socket error
 * (POLLERR) goes to the kernel, which reports it. */
#define GATE_NAP_MS 20

int emu_os_gate(emu_sock_t *s, int flags) {
    int64_t deadline = 0;
    int have_deadline = 0, blocking = -1, stalled = 0;
    struct timespec now;
    for (;;) {
        int n = 0;
        if (ioctl(s->fd, FIONREAD, &n) < 0) return -1;
        if (n > 0) return 0;
        if (blocking < 0) blocking = emu_sock_blocking(s, flags);
        if (!blocking) { errno = EAGAIN; return -1; }
        rcvtimeo_deadline(s, &deadline, &have_deadline);
        int ms = -1;
        if (deadline) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            int64_t left = deadline - ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
            if (left <= 0) { errno = EAGAIN; return -1; }
            ms = (int)((left + 999999) / 1000000);
        }
        if (stalled) {
            /* the kernel says readable, FIONREAD says 0: an empty datagram at the head */
            int nap = ms < 0 || ms > GATE_NAP_MS ? GATE_NAP_MS : ms;
            struct timespec t = {0, (long)nap * 1000000};
            if (nanosleep(&t, NULL) < 0) return -1;        /* EINTR */
            stalled = 0;
            continue;
        }
        struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
        int r = REAL(poll)(&pfd, 1, ms);
        if (r < 0) return -1;
        if (r > 0 && (pfd.revents & (POLLERR | POLLNVAL))) return 0;
        if (r > 0) stalled = 1;
    }
}

/* Next packet for a special socket (queue, feed or kernel through the callback).  The packet
 * comes back BUSY, owned by the caller.  Blocks as the socket says.  0 or -1/errno. */
/* A feed never runs dry, so a callback that drops everything would keep a receive call busy
 * forever.  Every FEED_DROP_SLICE consecutive drops the call checks how it may block: a
 * non-blocking call returns EAGAIN, an expired SO_RCVTIMEO returns EAGAIN, and a fully blocking
 * call returns EINTR once in a while (CPython and pyxlio check their signals on EINTR and call
 * again), so Ctrl-C stays prompt.  Documented in pyxlio/emu/__init__.py. */
#define FEED_DROP_SLICE 256
#define FEED_DROP_YIELD (64 * FEED_DROP_SLICE)

static int feed_drop_slice(emu_sock_t *s, int kflags, int *blocking, int64_t *deadline,
                           int *have_deadline, unsigned *drops) {
    struct timespec now;
    if (*blocking < 0) *blocking = emu_sock_blocking(s, kflags);
    if (!*blocking) { errno = EAGAIN; return -1; }
    rcvtimeo_deadline(s, deadline, have_deadline);
    if (*deadline) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec >= *deadline) { errno = EAGAIN; return -1; }
    }
    if (*drops >= FEED_DROP_YIELD) { errno = EINTR; return -1; }
    return 0;
}

int emu_next_special(emu_sock_t *s, int kflags, uint32_t *pi) {
    int64_t deadline = 0;
    int have_deadline = 0, blocking = -1;
    unsigned feed_drops = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        uint32_t gen = s->gen;
        if (!atomic_load(&s->active)) { pthread_mutex_unlock(&s->mu); errno = EBADF; return -1; }
        pyxlio_recv_callback_t cb = emu_sock_cb(s);
        void *ctx = s->cb_ctx;
        int feed = s->feed, raw = 0;
        uint32_t i;
        if (queue_pop(s, &i, &raw)) {
            pthread_mutex_unlock(&s->mu);
            /* kept by the callback already, or no callback: handed out as it is */
            if (!raw || !cb) { *pi = i; return 0; }
        } else {
            pthread_mutex_unlock(&s->mu);
            raw = 1;
            if (feed) {
                if (emu_feed_make_pkt(s, &i) < 0) return -1;
                emu_pool.pkts[i].gen = gen;
            } else {
                if (emu_pull_batch(s, gen, kflags, &i) < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
                    if (blocking < 0) blocking = emu_sock_blocking(s, kflags);
                    if (!blocking) { errno = EAGAIN; return -1; }
                    if (wait_readable(s, &deadline, &have_deadline) < 0) return -1;
                    continue;
                }
                /* the oldest datagram: this pull's first, or one queued meanwhile */
                emu_pkt_t *p = &emu_pool.pkts[i];
                raw = (p->flags & EMU_PKT_RAW) != 0;
                p->flags &= ~EMU_PKT_RAW;
                gen = p->gen;
            }
            if (!raw || !cb) { *pi = i; return 0; }
        }
        int v = run_cb(s, i, cb, ctx);
        if (apply_verdict(s, gen, i, v, 0)) { *pi = i; return 0; }
        /* Feed or kernel: a callback that drops or holds everything while data keeps coming
         * must not keep one receive call busy for ever either. */
        if (++feed_drops % FEED_DROP_SLICE == 0 &&
            feed_drop_slice(s, kflags, &blocking, &deadline, &have_deadline, &feed_drops) < 0)
            return -1;
    }
}

int emu_pull_into_queue(emu_sock_t *s, int max) {
    if (s->feed) return 1;
    for (int k = 0; k < max; k++) {
        pthread_mutex_lock(&s->mu);
        if (!atomic_load(&s->active)) { pthread_mutex_unlock(&s->mu); return 0; }
        pyxlio_recv_callback_t cb = emu_sock_cb(s);
        void *ctx = s->cb_ctx;
        uint32_t gen = s->gen, i;
        int raw;
        if (s->qhead) {
            if (!cb || !(emu_pool.pkts[s->qhead - 1].flags & EMU_PKT_RAW)) {
                pthread_mutex_unlock(&s->mu);
                return 1;
            }
            queue_pop(s, &i, &raw);     /* the callback's turn on the oldest datagram */
            pthread_mutex_unlock(&s->mu);
        } else {
            pthread_mutex_unlock(&s->mu);
            if (!cb) return 2;
            if (emu_pull_batch(s, gen, MSG_DONTWAIT, &i) < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
                return 1; /* an error a receive call would report at once */
            }
            raw = (emu_pool.pkts[i].flags & EMU_PKT_RAW) != 0;
            emu_pool.pkts[i].flags &= ~EMU_PKT_RAW;
            gen = emu_pool.pkts[i].gen;
            if (!raw) return apply_verdict(s, gen, i, PYXLIO_PACKET_RECV, 1); /* kept before */
        }
        int v = run_cb(s, i, cb, ctx);
        if (apply_verdict(s, gen, i, v, 1)) return 1;
    }
    return 0;
}

size_t emu_copy_to_iov(const struct iovec *iov, int iovcnt, const emu_pkt_t *p, size_t unused) {
    (void)unused;
    uint32_t b = p->buf, k = 0, nf = p->nfrag ? p->nfrag : 1;
    size_t foff = 0, flen = emu_frag_len(p, 0), total = 0;
    for (int v = 0; v < iovcnt && k < nf; v++) {
        size_t voff = 0;
        while (voff < iov[v].iov_len && k < nf) {
            size_t n = iov[v].iov_len - voff;
            if (n > flen - foff) n = flen - foff;
            if (n) memcpy((char *)iov[v].iov_base + voff, emu_buf(b) + foff, n);
            voff += n; foff += n; total += n;
            if (foff == flen) {
                k++;
                if (k >= nf) break;
                b = emu_pool.next[b];
                foff = 0;
                flen = emu_frag_len(p, k);
            }
        }
    }
    return total;
}

/* Copy receive on a special socket.  msg_flags may be NULL. */
/* The control messages the kernel gave with a datagram a batch pulled (its receive
 * timestamps, say), into a recvmsg caller's buffer as the kernel fills it: whole messages,
 * MSG_CTRUNC for what does not fit. */
static void copy_ctrl(const emu_pkt_t *p, uint32_t pi, struct msghdr *msg, int *mf) {
    size_t room = msg->msg_control ? msg->msg_controllen : 0, out = 0, off = 0;
    const unsigned char *c = emu_pool.ctrl ? emu_pool.ctrl + (size_t)pi * EMU_CTRL_MAX : NULL;
    while (c && off + sizeof(struct cmsghdr) <= p->ctrllen) {
        struct cmsghdr h;
        memcpy(&h, c + off, sizeof h);
        if (h.cmsg_len < sizeof h || h.cmsg_len > p->ctrllen - off) break;
        if (h.cmsg_len > room - out) { *mf |= MSG_CTRUNC; break; }
        memcpy((unsigned char *)msg->msg_control + out, c + off, h.cmsg_len);
        size_t sp = CMSG_ALIGN(h.cmsg_len);
        out += sp < room - out ? sp : room - out;
        off += CMSG_ALIGN(h.cmsg_len);
    }
    if (p->flags & EMU_PKT_CTRUNC) *mf |= MSG_CTRUNC;
    msg->msg_controllen = out;
}

static ssize_t special_recv(emu_sock_t *s, const struct iovec *iov, int iovcnt, int flags,
                            struct sockaddr *from, socklen_t *fromlen, int *msg_flags,
                            struct msghdr *ctl) {
    int kflags = flags & ~EMU_XLIO_RX_FLAGS;
    if (s->feed && !emu_sock_cb(s) && ST_LOAD(s->qlen) == 0) {
        ssize_t r = emu_feed_copy(s, iov, iovcnt, from, fromlen, msg_flags, kflags & MSG_PEEK,
                                  kflags & MSG_TRUNC);
        if (r >= 0 && !(kflags & MSG_PEEK)) CNT_ADD(s->rx_copied, 1);
        if (ctl) ctl->msg_controllen = 0;
        return r;
    }
    uint32_t pi;
    if (emu_next_special(s, kflags, &pi) < 0) return -1;
    emu_pkt_t *p = &emu_pool.pkts[pi];
    size_t n = emu_copy_to_iov(iov, iovcnt, p, 0);
    if (from && fromlen) {
        socklen_t l = *fromlen < p->addrlen ? *fromlen : p->addrlen;
        memcpy(from, &p->src, l);
        *fromlen = p->addrlen;
    } else if (fromlen) {
        *fromlen = 0;
    }
    if (msg_flags) *msg_flags = (n < p->len || (p->flags & EMU_PKT_TRUNC)) ? MSG_TRUNC : 0;
    if (ctl) copy_ctrl(p, pi, ctl, msg_flags);
    ssize_t rc = (kflags & MSG_TRUNC) ? (ssize_t)p->len : (ssize_t)n;
    if (kflags & MSG_PEEK) {
        emu_queue_push_front(s, pi);
    } else {
        CNT_ADD(s->rx_copied, 1);
        emu_pkt_release(pi);
    }
    return rc;
}

/* a kernel-served UDP socket: libxlio's readability first (emu_os_gate); an error-queue read
 * (MSG_ERRQUEUE: not data, not measured on libxlio) goes straight to the kernel */
#define OS_GATE(s, flags)                                                                     \
    do {                                                                                      \
        if (EMU_UNLIKELY(!(s)->offloaded) && (s)->is_udp && !((flags) & MSG_ERRQUEUE) &&      \
            emu_os_gate((s), (flags)) < 0)                                                    \
            return -1;                                                                        \
    } while (0)

/* receive through the user queue: a special socket (callback, feed, datagrams queued), or an
 * offloaded one a batch pulled from (its copy receives then never block in the kernel while
 * another thread's batch holds the datagrams, nor take a newer datagram before a queued one) */
#define QUEUED(s) (atomic_load_explicit(&(s)->special, memory_order_relaxed) |              \
                   (atomic_load_explicit(&(s)->batched, memory_order_relaxed) & (s)->offloaded))
/* the error queue is the kernel's, whatever waits in user space */
#define ERRQ(flags) EMU_UNLIKELY((flags) & MSG_ERRQUEUE)

static inline void count_rx(emu_sock_t *s, ssize_t rc) {
    if (rc > 0 || (rc == 0 && s->is_udp)) {
        CNT_ADD(s->rx_packets, 1);
        CNT_ADD(s->rx_bytes, (unsigned long)rc);
        CNT_ADD(s->rx_copied, 1);
    }
}

/* ---- interposed: creation and teardown -------------------------------------------------- */
EMU_EXPORT int socket(int domain, int type, int protocol) {
    int fd = REAL(socket)(domain, type, protocol);
    if (fd < 0) return fd;
    int base = type & 0xf;
    if (EMU_UNLIKELY(emu_conf.layout == PYXLIO_LAYOUT_VMA) && domain != AF_INET &&
        (base == SOCK_STREAM || base == SOCK_DGRAM)) {
        /* libvma 9.8.84 (fact sheet section 11; src/vma/sock/fd_collection.cpp addsocket): a
         * stream or datagram socket of any family starts it, AF_UNIX included, but it keeps
         * AF_INET sockets only ("IPV4 domain only"): an AF_INET6 socket is an fd it does not
         * know, served by the kernel. */
        int saved = errno;
        emu_init();
        emu_sock_t *stale = emu_sock_get(fd);
        if (stale) sock_unregister(stale, "fd reused");
        errno = saved;
        return fd;
    }
    if ((domain == AF_INET || domain == AF_INET6) && (base == SOCK_STREAM || base == SOCK_DGRAM)) {
        int saved = errno;
        emu_init();
        int is_udp = base == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP);
        int is_tcp = base == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP);
        if (emu_thread_offload_get(pthread_self())) {
            sock_register(fd, domain, is_udp, is_tcp, is_udp || is_tcp);
        } else {
            /* Made while its thread's offload is off: libxlio 3.51.1 does not add it to its
             * collection (src/core/sock/fd_collection.cpp addsocket), so every Extra API call
             * treats it as an fd it does not know: recvfrom_zcopy is the plain recvfrom (FORCE
             * ignored), register_recv_callback -1/EINVAL, rings 0, and its reads go straight to
             * the kernel (no FIONREAD gate). */
            emu_sock_t *stale = emu_sock_get(fd);
            if (stale) sock_unregister(stale, "fd reused");
        }
        errno = saved;
    }
    return fd;
}

/* libvma 9.8.84 (fact sheet section 11): a UDP socket it leaves to the kernel is no longer
 * tracked once it is bound or connected: register_recv_callback -1/EINVAL, recvfrom_zcopy the
 * plain recvfrom (MSG_VMA_ZCOPY_FORCE ignored), free_packets -1/EINVAL, rings 0, recvmmsg
 * straight to the kernel.  The emulator forgets it the same way.
 * libxlio 3.70.1+ (the 3.61 layout's newest releases) does too: sockinfo_udp::setPassthrough
 * clears m_sock_offload whether or not the socket has statistics (src/core/sock/sockinfo_udp.h;
 * up to 3.70.0 the assignment sat inside IF_STATS, so without per-socket statistics the socket
 * stayed known), and bind/connect then hand a passthrough socket to handle_close(fd, false,
 * true) (src/core/sock/sock-redirect.cpp bind_internal, connect): out of XLIO's collection
 * and its epoll instances, so a second epoll takes it as the kernel does. */
static void untrack_kernel_udp(int fd) {
    emu_sock_t *s;
    if ((emu_conf.layout != PYXLIO_LAYOUT_VMA && emu_conf.layout != PYXLIO_LAYOUT_361) ||
        !(s = emu_sock_get(fd)))
        return;
    if (s->is_udp && !s->offloaded)
        sock_unregister(s, emu_conf.layout == PYXLIO_LAYOUT_VMA
                               ? "libvma: served by the kernel"
                               : "libxlio 3.70.1+: passthrough, served by the kernel");
}

static void forget_fd(int fd, const char *why) {
    emu_sock_t *s = emu_sock_get(fd);
    if (s && emu_pid == getpid()) sock_unregister(s, why);
    emu_epoll_untrack(fd);
}

EMU_EXPORT int close(int fd) {
    if ((unsigned)fd < EMU_MAXFD && atomic_load_explicit(&g_socks[fd], memory_order_relaxed)) {
        int saved = errno;
        forget_fd(fd, "close");
        errno = saved;
    } else {
        emu_epoll_untrack(fd);
    }
    return REAL(close)(fd);
}

EMU_EXPORT int dup2(int oldfd, int newfd) {
    if (oldfd != newfd && emu_sock_get(newfd)) {
        int saved = errno;
        forget_fd(newfd, "dup2");
        errno = saved;
    }
    return REAL(dup2)(oldfd, newfd);
}

EMU_EXPORT int dup3(int oldfd, int newfd, int flags) {
    if (oldfd != newfd && emu_sock_get(newfd)) {
        int saved = errno;
        forget_fd(newfd, "dup3");
        errno = saved;
    }
    return REAL(dup3)(oldfd, newfd, flags);
}

EMU_EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    int rc = REAL(bind)(fd, addr, len);
    emu_sock_t *s;
    if (rc != 0 || !(s = emu_sock_get(fd))) return rc;
    int saved = errno;
    pthread_mutex_lock(&s->mu);
    sock_local_refresh(s);
    if (s->is_udp && s->offloaded) {
        if (emu_rules_use_os(EMU_ROLE_UDP_RECEIVER, (struct sockaddr *)&s->local, NULL, s->rule_seq)) {
            s->offloaded = 0;
            emu_vlog("bind fd=%d: rule says use os", fd);
        } else if (emu_addr_kernel((struct sockaddr *)&s->local, s->local_len)) {
            /* a real libxlio leaves a UDP socket bound to an address it cannot offload to the
             * kernel (loopback: no offload device serves it) */
            s->offloaded = 0;
            emu_vlog("bind fd=%d: address left to the kernel (PYXLIO_EMU_OFFLOAD)", fd);
        }
        if (!s->offloaded) emu_sock_update_special(s);
    }
    if (s->is_udp && s->offloaded) {
        unsigned port = ntohs(s->local.sin6_port); /* same offset in sockaddr_in */
        uint32_t sz = emu_feed_size_for_port(port);
        if (sz) {
            s->feed = 1;
            s->feed_size = sz;
            s->feed_seq = 0;
            emu_sock_update_special(s);
            emu_vlog("bind fd=%d: feed of %u-byte datagrams on port %u", fd, sz, port);
        }
    }
    pthread_mutex_unlock(&s->mu);
    untrack_kernel_udp(fd);
    errno = saved;
    return rc;
}

EMU_EXPORT int listen(int fd, int backlog) {
    int rc = REAL(listen)(fd, backlog);
    emu_sock_t *s;
    if (rc != 0 || !(s = emu_sock_get(fd))) return rc;
    int saved = errno;
    pthread_mutex_lock(&s->mu);
    sock_local_refresh(s);
    s->listener = 1;
    if (s->is_tcp && s->offloaded &&
        (emu_rules_use_os(EMU_ROLE_TCP_SERVER, (struct sockaddr *)&s->local, NULL, s->rule_seq) ||
         emu_addr_kernel((struct sockaddr *)&s->local, s->local_len)))
        s->offloaded = 0;
    pthread_mutex_unlock(&s->mu);
    errno = saved;
    return rc;
}

EMU_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    int rc = REAL(connect)(fd, addr, len);
    emu_sock_t *s;
    if ((rc != 0 && errno != EINPROGRESS) || !(s = emu_sock_get(fd))) return rc;
    int saved = errno;
    pthread_mutex_lock(&s->mu);
    sock_local_refresh(s);
    if (s->is_tcp) s->connected = 1;
    if (s->offloaded && addr && len >= sizeof(sa_family_t) && addr->sa_family != AF_UNSPEC) {
        const struct sockaddr *l = (struct sockaddr *)&s->local;
        int os = emu_addr_kernel(addr, len) || emu_addr_kernel(l, s->local_len);
        /* client roles: the remote address is the rule's first pair, the local its second */
        if (os)
            ;
        else if (s->is_udp)
            os = emu_rules_use_os(EMU_ROLE_UDP_CONNECT, addr, l, s->rule_seq) ||
                 emu_rules_use_os(EMU_ROLE_UDP_SENDER, addr, NULL, s->rule_seq);
        else if (s->is_tcp)
            os = emu_rules_use_os(EMU_ROLE_TCP_CLIENT, addr, l, s->rule_seq);
        if (os) {
            s->offloaded = 0;
            s->feed = 0;
            emu_sock_update_special(s);
        }
    }
    pthread_mutex_unlock(&s->mu);
    untrack_kernel_udp(fd);
    errno = saved;
    return rc;
}

static int after_accept(int lfd, int fd) {
    emu_sock_t *l;
    if (fd < 0 || !(l = emu_sock_get(lfd))) return fd;
    int saved = errno;
    emu_sock_t *s = sock_register(fd, l->domain, 0, l->is_tcp, l->offloaded);
    if (s) {
        pthread_mutex_lock(&s->mu);
        sock_local_refresh(s);
        s->connected = 1;
        /* a connection to a loopback address reached a listener on a wildcard address: the
         * kernel carried it, and serves the accepted socket */
        if (s->offloaded && emu_addr_kernel((struct sockaddr *)&s->local, s->local_len))
            s->offloaded = 0;
        pthread_mutex_unlock(&s->mu);
    }
    errno = saved;
    return fd;
}

EMU_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    return after_accept(fd, REAL(accept)(fd, addr, len));
}

EMU_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    return after_accept(fd, REAL(accept4)(fd, addr, len, flags));
}

/* ---- interposed: receive ---------------------------------------------------------------- */
EMU_EXPORT ssize_t recv(int fd, void *buf, size_t len, int flags) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) return REAL(recv)(fd, buf, len, flags);
    if (EMU_LIKELY(!QUEUED(s)) || ERRQ(flags)) {
        OS_GATE(s, flags);
        ssize_t rc = REAL(recv)(fd, buf, len, flags & ~EMU_XLIO_RX_FLAGS);
        count_rx(s, rc);
        return rc;
    }
    struct iovec v = {buf, len};
    return special_recv(s, &v, 1, flags, NULL, NULL, NULL, NULL);
}

EMU_EXPORT ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from,
                            socklen_t *fromlen) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) return REAL(recvfrom)(fd, buf, len, flags, from, fromlen);
    if (EMU_LIKELY(!QUEUED(s)) || ERRQ(flags)) {
        OS_GATE(s, flags);
        ssize_t rc = REAL(recvfrom)(fd, buf, len, flags & ~EMU_XLIO_RX_FLAGS, from, fromlen);
        count_rx(s, rc);
        return rc;
    }
    struct iovec v = {buf, len};
    return special_recv(s, &v, 1, flags, from, from ? fromlen : NULL, NULL, NULL);
}

EMU_EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) return REAL(recvmsg)(fd, msg, flags);
    if (EMU_LIKELY(!QUEUED(s)) || ERRQ(flags)) {
        OS_GATE(s, flags);
        ssize_t rc = REAL(recvmsg)(fd, msg, flags & ~EMU_XLIO_RX_FLAGS);
        count_rx(s, rc);
        return rc;
    }
    if (!msg) { errno = EFAULT; return -1; }
    socklen_t nl = msg->msg_namelen;
    int mf = 0;
    ssize_t rc = special_recv(s, msg->msg_iov, (int)msg->msg_iovlen, flags,
                              msg->msg_name, msg->msg_name ? &nl : NULL, &mf, msg);
    if (rc >= 0) {
        msg->msg_namelen = msg->msg_name ? nl : 0;
        msg->msg_flags = mf;
    }
    return rc;
}

EMU_EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags,
                        struct timespec *timeout) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) return REAL(recvmmsg)(fd, vec, vlen, flags, timeout);
    if (EMU_LIKELY(!QUEUED(s)) || ERRQ(flags)) {
        struct timespec zero = {0, 0};
        if (EMU_UNLIKELY(!s->offloaded)) {
            /* libxlio 3.51.1's recvmmsg (src/core/sock/sock-redirect.cpp) calls the kernel with
             * a zeroed timespec instead of the caller's timeout for a socket it does not serve
             * itself (still so in 3.70.2): the kernel checks the timeout after each datagram,
             * so every call returns one datagram */
            OS_GATE(s, flags);
            timeout = &zero;
        }
        int rc = REAL(recvmmsg)(fd, vec, vlen, flags & ~EMU_XLIO_RX_FLAGS, timeout);
        for (int i = 0; i < rc; i++) count_rx(s, (ssize_t)vec[i].msg_len);
        return rc;
    }
    /* special socket: the first message may block, the rest don't (MSG_WAITFORONE) */
    if (!vec) { errno = EFAULT; return -1; }
    unsigned int i;
    for (i = 0; i < vlen; i++) {
        int f = (flags & ~MSG_WAITFORONE) | (i ? MSG_DONTWAIT : 0);
        ssize_t rc = recvmsg(fd, &vec[i].msg_hdr, f);
        if (rc < 0) {
            if (i) break;
            return -1;
        }
        vec[i].msg_len = (unsigned int)rc;
    }
    return (int)i;
}

EMU_EXPORT ssize_t read(int fd, void *buf, size_t len) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) return REAL(read)(fd, buf, len);
    if (EMU_LIKELY(!QUEUED(s))) {
        OS_GATE(s, 0);
        ssize_t rc = REAL(read)(fd, buf, len);
        count_rx(s, rc);
        return rc;
    }
    struct iovec v = {buf, len};
    return special_recv(s, &v, 1, 0, NULL, NULL, NULL, NULL);
}

EMU_EXPORT ssize_t readv(int fd, const struct iovec *iov, int iovcnt) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s) return REAL(readv)(fd, iov, iovcnt);
    if (EMU_LIKELY(!QUEUED(s))) {
        OS_GATE(s, 0);
        ssize_t rc = REAL(readv)(fd, iov, iovcnt);
        count_rx(s, rc);
        return rc;
    }
    return special_recv(s, iov, iovcnt, 0, NULL, NULL, NULL, NULL);
}

/* fortified variants (-D_FORTIFY_SOURCE) */
EMU_EXPORT ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags) {
    if (len > buflen) abort();
    return recv(fd, buf, len, flags);
}
EMU_EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags,
                                  struct sockaddr *from, socklen_t *fromlen) {
    if (len > buflen) abort();
    return recvfrom(fd, buf, len, flags, from, fromlen);
}
EMU_EXPORT ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen) {
    if (len > buflen) abort();
    return read(fd, buf, len);
}

/* ---- interposed: send (dummy-send flag) ------------------------------------------------- */
/* XLIO_SND_FLAGS_DUMMY: only the layouts that have it (legacy, 3.94x) treat 0x400 as a dummy
 * send; 3.60 and 3.61+ removed it, and there the flag is the kernel's MSG_SYN, which UDP
 * ignores: the datagram is sent for real (DUMMY_SEND below is false and the call goes on). */
#define DUMMY_SEND(flags) (EMU_UNLIKELY((flags) & PYXLIO_SND_FLAGS_DUMMY) && emu_layout_has_dummy())

static ssize_t dummy_send(int fd, size_t len) {
    emu_sock_t *s = emu_sock_get(fd);
    if (!s || !s->offloaded) { errno = EINVAL; return -1; }
    CNT_ADD(s->dummy_sends, 1);
    return (ssize_t)len;
}

static inline void count_tx(int fd, ssize_t rc) {
    if (rc >= 0) {
        emu_sock_t *s = emu_sock_get(fd);
        if (s) CNT_ADD(s->tx_packets, 1);
    }
}

EMU_EXPORT ssize_t send(int fd, const void *buf, size_t len, int flags) {
    if (DUMMY_SEND(flags)) return dummy_send(fd, len);
    ssize_t rc = REAL(send)(fd, buf, len, flags);
    count_tx(fd, rc);
    return rc;
}

EMU_EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to,
                          socklen_t tolen) {
    if (DUMMY_SEND(flags)) return dummy_send(fd, len);
    ssize_t rc = REAL(sendto)(fd, buf, len, flags, to, tolen);
    count_tx(fd, rc);
    return rc;
}

static size_t iov_total(const struct msghdr *m) {
    size_t t = 0;
    if (!m || !m->msg_iov) return 0;
    for (size_t i = 0; i < m->msg_iovlen; i++) t += m->msg_iov[i].iov_len;
    return t;
}

EMU_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (DUMMY_SEND(flags)) return dummy_send(fd, iov_total(msg));
    ssize_t rc = REAL(sendmsg)(fd, msg, flags);
    count_tx(fd, rc);
    return rc;
}

EMU_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags) {
    if (DUMMY_SEND(flags)) {
        emu_sock_t *s = emu_sock_get(fd);
        if (!s || !s->offloaded) { errno = EINVAL; return -1; }
        if (!vec && vlen) { errno = EFAULT; return -1; }
        for (unsigned int i = 0; i < vlen; i++) vec[i].msg_len = (unsigned int)iov_total(&vec[i].msg_hdr);
        CNT_ADD(s->dummy_sends, vlen);
        return (int)vlen;
    }
    int rc = REAL(sendmmsg)(fd, vec, vlen, flags);
    emu_sock_t *s = rc > 0 ? emu_sock_get(fd) : NULL;
    if (s) CNT_ADD(s->tx_packets, (unsigned long)rc);
    return rc;
}

/* ---- interposed: getsockopt (API discovery) --------------------------------------------- */
EMU_EXPORT int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen) {
    if (EMU_UNLIKELY(emu_conf.layout == PYXLIO_LAYOUT_VMA)) {
        /* libvma 9.8.84 (fact sheet section 11): fd -1 with an optlen of at least a pointer
         * answers; anything else (XLIO's fd -2, a 4-byte optlen) is the kernel's: EBADF.  It
         * does not start the library. */
        if (fd == PYXLIO_VMA_GET_API_FD && level == SOL_SOCKET &&
            optname == PYXLIO_SO_VMA_GET_API && optval && optlen && *optlen >= sizeof(void *)) {
            void *p = emu_api_pointer();
            memcpy(optval, &p, sizeof p);
            *optlen = sizeof p;
            return 0;
        }
        return REAL(getsockopt)(fd, level, optname, optval, optlen);
    }
    if (fd == -2 && level == SOL_SOCKET && optname == PYXLIO_SO_XLIO_GET_API) {
        if (!optval || !optlen || *optlen < sizeof(void *)) { errno = EINVAL; return -1; }
        void *p = emu_api_pointer();
        memcpy(optval, &p, sizeof p);
        *optlen = sizeof p;
        return 0;
    }
    return REAL(getsockopt)(fd, level, optname, optval, optlen);
}
