/*
 * pyxlio emulator: the packet buffer pool.
 *
 * One region of XLIO_MEMORY_LIMIT bytes (from the registered user allocator, called once, or
 * mmap) cut into buffers of PYXLIO_EMU_FRAG_SIZE bytes (stride rounded up to 64).  Every buffer
 * packet has a descriptor in emulator-owned memory and chains its buffers.  Packet ids handed to
 * the application are descriptor addresses, validated against the descriptor array before use;
 * free descriptors are reused in FIFO order, so a stale id (double free) finds its descriptor
 * free rather than reused by a newer packet.
 *
 * Each receiving thread keeps a spare set of buffers that the kernel receives into with one
 * recvmsg.  A spare set has room for the largest datagram (maxfrag buffers) but keeps at most
 * `want` of them between receives, and all spare sets together keep at most `budget` = nbuf -
 * maxfrag: so whenever every packet is free, the free list alone holds a whole largest datagram
 * and any thread can receive any datagram (a short spare set learns the datagram's size with
 * MSG_PEEK first and takes the buffers it lacks past the budget, emu_spare_need).  Without the
 * budget, idle threads' spare sets could hold a small pool's buffers for ever and every other
 * receive would fail with ENOMEM although no packet is in use (issue 8).  The configuration
 * check (emu_core.c) makes XLIO_MEMORY_LIMIT at least maxfrag buffers.
 *
 * A packet's payload is filled with EMU_CANARY (0xDB) when it goes back to the pool - freed by
 * recvfrom_zcopy_free_packets, dropped by a callback, copied out, reclaimed at close - so a
 * program reading through a stale view sees 0xDB, not plausible data.  Cost: one memset of the
 * payload per packet (measured in pyxlio/emu/__init__.py's docstring); always on.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "emu.h"

emu_pool_t emu_pool = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Free buffers nobody has promised: a batch pull under way reserves the buffers its slots may
 * still need (emu_pool_batch_begin), and every other taker sees only the rest.  Under mu. */
static inline uint32_t pool_avail(void) {
    return emu_pool.nfree > emu_pool.nresv ? emu_pool.nfree - emu_pool.nresv : 0;
}

void emu_pool_create(void) {
    size_t frag = emu_conf.frag;
    size_t stride = (frag + 63) & ~(size_t)63;
    size_t size = emu_conf.memory_limit;        /* checked: maxfrag..EMU_MAX_BUFS buffers */
    size_t nbuf = size / stride;
    emu_pool.size = size;
    emu_pool.stride = stride;
    emu_pool.nbuf = (uint32_t)nbuf;
    emu_pool.maxfrag = (uint32_t)((EMU_MAX_DGRAM + frag - 1) / frag);
    emu_pool.budget = emu_pool.nbuf - emu_pool.maxfrag;
    emu_pool.nspare = 0;
    void *base = NULL;
    if (atomic_load(&emu_user_alloc_set) && emu_user_alloc) {
        base = emu_user_alloc(size);
        emu_vlog("alloc: user allocator called for %zu bytes -> %p", size, base);
        if (!base) emu_log("user allocator returned NULL for %zu bytes: using mmap", size);
        else emu_pool.user_alloc = 1;
    }
    if (!base) {
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) base = NULL;
    }
    emu_pool.pkts = calloc(nbuf, sizeof(emu_pkt_t));
    emu_pool.next = calloc(nbuf, sizeof(uint32_t));
    emu_pool.freelist = malloc(nbuf * sizeof(uint32_t));
    emu_pool.dring = malloc(nbuf * sizeof(uint32_t));
    if (!base || !emu_pool.pkts || !emu_pool.next || !emu_pool.freelist || !emu_pool.dring)
        emu_conf_error("XLIO_MEMORY_LIMIT=%zu: cannot allocate a packet pool of %zu bytes "
                       "(%zu buffers): a smaller XLIO_MEMORY_LIMIT is needed", size, size, nbuf);
    emu_pool.base = base;
    /* control messages of queued datagrams (timestamps): touched only where used */
    void *ctrl = mmap(NULL, nbuf * (size_t)EMU_CTRL_MAX, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    emu_pool.ctrl = ctrl == MAP_FAILED ? NULL : ctrl;
    emu_pool.nresv = 0;
    /* stack: lowest indices on top */
    for (size_t i = 0; i < nbuf; i++) emu_pool.freelist[i] = (uint32_t)(nbuf - 1 - i);
    emu_pool.nfree = (uint32_t)nbuf;
    for (size_t i = 0; i < nbuf; i++) emu_pool.dring[i] = (uint32_t)i;
    emu_pool.dhead = 0;
    emu_pool.dcount = (uint32_t)nbuf;
}

void emu_pkt_canary(const emu_pkt_t *p) {
    uint32_t n = p->nfrag ? p->nfrag : 1, b = p->buf;
    for (uint32_t k = 0; k < n; k++) {
        memset(emu_buf(b), EMU_CANARY, emu_frag_len(p, k));
        b = emu_pool.next[b];
    }
}

uint32_t emu_pool_get(uint32_t *out, uint32_t n) {
    pthread_mutex_lock(&emu_pool.mu);
    uint32_t avail = pool_avail();
    uint32_t k = n < avail ? n : avail;
    for (uint32_t i = 0; i < k; i++) out[i] = emu_pool.freelist[--emu_pool.nfree];
    pthread_mutex_unlock(&emu_pool.mu);
    return k;
}

void emu_pool_put(const uint32_t *idx, uint32_t n) {
    if (!n) return;
    pthread_mutex_lock(&emu_pool.mu);
    for (uint32_t i = 0; i < n; i++) emu_pool.freelist[emu_pool.nfree++] = idx[i];
    pthread_mutex_unlock(&emu_pool.mu);
}

static inline void desc_put_locked(uint32_t d) {
    emu_pool.dring[(emu_pool.dhead + emu_pool.dcount) % emu_pool.nbuf] = d;
    emu_pool.dcount++;
}

void emu_pool_put2(const uint32_t *bufs, uint32_t nb, const uint32_t *descs, uint32_t nd) {
    if (!nb && !nd) return;
    pthread_mutex_lock(&emu_pool.mu);
    for (uint32_t i = 0; i < nb; i++) emu_pool.freelist[emu_pool.nfree++] = bufs[i];
    for (uint32_t i = 0; i < nd; i++) desc_put_locked(descs[i]);
    pthread_mutex_unlock(&emu_pool.mu);
}

void emu_pkt_release(uint32_t pi) {
    uint32_t tmp[256];
    emu_pkt_t *p = &emu_pool.pkts[pi];
    uint32_t n = p->nfrag ? p->nfrag : 1, k = 0, b = p->buf;
    emu_pkt_canary(p);
    atomic_store_explicit(&p->state, PKT_FREE, memory_order_release);
    for (uint32_t i = 0; i < n; i++) {
        tmp[k++] = b;
        b = emu_pool.next[b];
        if (k == 256 && i + 1 < n) { emu_pool_put(tmp, k); k = 0; }
    }
    emu_pool_put2(tmp, k, &pi, 1);
}

long emu_pkt_lookup(const void *id) {
    uintptr_t p = (uintptr_t)id, base = (uintptr_t)emu_pool.pkts;
    if (!emu_pool.pkts || p < base || p >= base + (uintptr_t)emu_pool.nbuf * sizeof(emu_pkt_t))
        return -1;
    if ((p - base) % sizeof(emu_pkt_t)) return -1;
    return (long)((p - base) / sizeof(emu_pkt_t));
}

void emu_pool_fork_child(void) {
    pthread_mutex_init(&emu_pool.mu, NULL);
    emu_pool.nresv = 0;         /* batches of the parent's other threads are not the child's */
    for (uint32_t i = 0; i < emu_pool.nbuf; i++) {
        unsigned st = atomic_load_explicit(&emu_pool.pkts[i].state, memory_order_relaxed);
        /* the parent's packets: the child never frees them nor reuses their memory */
        if (st == PKT_ZC || st == PKT_HELD || st == PKT_BUSY)
            atomic_store_explicit(&emu_pool.pkts[i].state, PKT_ORPHAN, memory_order_relaxed);
    }
}

/* ---- per-thread spare set --------------------------------------------------------------- */
static pthread_key_t g_spare_key;
static pthread_once_t g_spare_once = PTHREAD_ONCE_INIT;
static __thread emu_spare_t *t_spare;

static void spare_destroy(void *v) {
    emu_spare_t *sp = v;
    if (!sp) return;
    pthread_mutex_lock(&emu_pool.mu);
    for (uint32_t i = 0; i < sp->cnt; i++) emu_pool.freelist[emu_pool.nfree++] = sp->idx[i];
    emu_pool.nspare -= sp->cnt;
    pthread_mutex_unlock(&emu_pool.mu);
    free(sp->idx);
    free(sp->iov);
    free(sp->scratch);
    free(sp);
    t_spare = NULL;
}

static void spare_key_init(void) { pthread_key_create(&g_spare_key, spare_destroy); }

/* Under emu_pool.mu: move up to n free buffers to the end of the spare set, within the budget
 * unless `force`.  Returns how many; the caller sets their iovecs (spare_set_iov). */
static uint32_t spare_grab_locked(emu_spare_t *sp, uint32_t n, int force) {
    uint32_t avail = pool_avail();
    uint32_t k = n < avail ? n : avail;
    if (!force) {
        uint32_t room = emu_pool.nspare < emu_pool.budget ? emu_pool.budget - emu_pool.nspare : 0;
        if (k > room) k = room;
    }
    for (uint32_t i = 0; i < k; i++) sp->idx[sp->cnt + i] = emu_pool.freelist[--emu_pool.nfree];
    emu_pool.nspare += k;
    return k;
}

static void spare_set_iov(emu_spare_t *sp, uint32_t from, uint32_t to) {
    for (uint32_t i = from; i < to; i++) {
        sp->iov[i].iov_base = emu_buf(sp->idx[i]);
        sp->iov[i].iov_len = emu_conf.frag;
    }
}

emu_spare_t *emu_spare(void) {
    emu_spare_t *sp = t_spare;
    if (EMU_UNLIKELY(!sp)) {
        if (!emu_pool.nbuf) return NULL;
        pthread_once(&g_spare_once, spare_key_init);
        sp = calloc(1, sizeof *sp);
        if (!sp) return NULL;
        /* room for the largest datagram; kept between receives: that, but never more than 1/16
         * of a small pool, so that idle threads' spares leave the others enough */
        uint32_t share = emu_pool.nbuf / 16 ? emu_pool.nbuf / 16 : 1;
        sp->cap = emu_pool.maxfrag;
        sp->want = emu_pool.maxfrag < share ? emu_pool.maxfrag : share;
        sp->idx = calloc(sp->cap, sizeof *sp->idx);
        sp->iov = calloc(sp->cap, sizeof *sp->iov);
        sp->scratch = malloc(EMU_MAX_DGRAM);    /* tails above EMU_DIRECT_FRAGS, short spares */
        if (!sp->idx || !sp->iov || !sp->scratch) {
            free(sp->idx); free(sp->iov); free(sp->scratch); free(sp);
            return NULL;
        }
        t_spare = sp;
        pthread_setspecific(g_spare_key, sp);
    }
    if (EMU_UNLIKELY(sp->cnt < sp->want)) {
        uint32_t c0 = sp->cnt;
        pthread_mutex_lock(&emu_pool.mu);
        sp->cnt += spare_grab_locked(sp, sp->want - sp->cnt, 0);
        pthread_mutex_unlock(&emu_pool.mu);
        spare_set_iov(sp, c0, sp->cnt);
    }
    return sp;
}

int emu_spare_need(emu_spare_t *sp, uint32_t n) {
    if (EMU_LIKELY(sp->cnt >= n)) return 0;
    if (n > sp->cap) { errno = ENOMEM; return -1; }
    uint32_t c0 = sp->cnt;
    pthread_mutex_lock(&emu_pool.mu);
    if (pool_avail() < n - sp->cnt) {
        pthread_mutex_unlock(&emu_pool.mu);
        errno = ENOMEM;
        return -1;
    }
    sp->cnt += spare_grab_locked(sp, n - sp->cnt, 1);
    pthread_mutex_unlock(&emu_pool.mu);
    spare_set_iov(sp, c0, sp->cnt);
    return 0;
}

/* spare[0..used) became packet buffers: take `ndesc` descriptors into descs and refill the
 * spare set towards `want` (holes first, then at the end; holes left are filled from the tail),
 * all in one locked step. */
static void spare_refill(emu_spare_t *sp, uint32_t used, uint32_t *descs, uint32_t ndesc) {
    uint32_t cnt = sp->cnt, rem = cnt - used;
    pthread_mutex_lock(&emu_pool.mu);
    for (uint32_t i = 0; i < ndesc; i++) {
        /* never fails: a descriptor per buffer, and the caller holds `used` buffers */
        descs[i] = emu_pool.dring[emu_pool.dhead];
        emu_pool.dhead = (emu_pool.dhead + 1) % emu_pool.nbuf;
        emu_pool.dcount--;
    }
    emu_pool.nspare -= used;
    uint32_t g = rem < sp->want ? sp->want - rem : 0;
    if (g > pool_avail()) g = pool_avail();
    uint32_t room = emu_pool.nspare < emu_pool.budget ? emu_pool.budget - emu_pool.nspare : 0;
    if (g > room) g = room;
    emu_pool.nspare += g;
    uint32_t h = g < used ? g : used;
    for (uint32_t i = 0; i < h; i++) sp->idx[i] = emu_pool.freelist[--emu_pool.nfree];
    for (uint32_t i = cnt; i < cnt + (g - h); i++) sp->idx[i] = emu_pool.freelist[--emu_pool.nfree];
    pthread_mutex_unlock(&emu_pool.mu);
    for (uint32_t j = 0; j < h; j++) sp->iov[j].iov_base = emu_buf(sp->idx[j]);
    if (g >= used) {
        spare_set_iov(sp, cnt, cnt + (g - h));
        sp->cnt = cnt + (g - h);
        return;
    }
    uint32_t hole = g, end = cnt;
    while (hole < used && end > used) {
        end--;
        sp->idx[hole] = sp->idx[end];
        sp->iov[hole].iov_base = emu_buf(sp->idx[hole]);
        hole++;
    }
    sp->cnt = (hole < used) ? hole : end;
}

uint32_t emu_spare_take(emu_spare_t *sp, uint32_t used, uint32_t len) {
    if (used == 0) used = 1;
    uint32_t b0 = sp->idx[0], first;
    for (uint32_t i = 0; i + 1 < used; i++) emu_pool.next[sp->idx[i]] = sp->idx[i + 1];
    spare_refill(sp, used, &first, 1);
    emu_pkt_t *p = &emu_pool.pkts[first];
    p->buf = b0;
    p->nfrag = used;
    p->len = len;
    p->qnext = 0;
    p->flags = 0;
    p->ctrllen = 0;
    atomic_store_explicit(&p->state, PKT_BUSY, memory_order_relaxed);
    return first;
}

void emu_spare_take_separate(emu_spare_t *sp, uint32_t used, uint32_t len, uint32_t *ids) {
    uint32_t bufs[used];
    memcpy(bufs, sp->idx, used * sizeof *bufs);
    spare_refill(sp, used, ids, used);
    for (uint32_t i = 0; i < used; i++) {
        emu_pkt_t *p = &emu_pool.pkts[ids[i]];
        size_t off = (size_t)i * emu_conf.frag;
        p->buf = bufs[i];
        p->nfrag = 1;
        p->len = (uint32_t)(len - off < emu_conf.frag ? len - off : emu_conf.frag);
        p->qnext = 0;
        p->flags = 0;
        p->ctrllen = 0;
        p->addrlen = 0;
        atomic_store_explicit(&p->state, PKT_BUSY, memory_order_relaxed);
    }
}

/* ---- batch pulls ------------------------------------------------------------------------ */
static pthread_key_t g_batch_key;
static pthread_once_t g_batch_once = PTHREAD_ONCE_INIT;
static __thread emu_batch_t *t_batch;
static __thread uint32_t *t_tails;      /* tail buffers of one batch: EMU_BATCH * maxfrag */

static void batch_destroy(void *v) {
    emu_batch_t *b = v;
    if (!b) return;
    munmap(b->scratch, (size_t)EMU_BATCH * EMU_MAX_DGRAM);
    free(t_tails);
    free(b);
    t_batch = NULL;
    t_tails = NULL;
}

static void batch_key_init(void) { pthread_key_create(&g_batch_key, batch_destroy); }

emu_batch_t *emu_batch(void) {
    emu_batch_t *b = t_batch;
    if (EMU_LIKELY(b != NULL)) return b;
    if (!emu_pool.nbuf) return NULL;
    pthread_once(&g_batch_once, batch_key_init);
    b = calloc(1, sizeof *b);
    uint32_t *tails = malloc((size_t)EMU_BATCH * emu_pool.maxfrag * sizeof *tails);
    void *scratch = mmap(NULL, (size_t)EMU_BATCH * EMU_MAX_DGRAM, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!b || !tails || scratch == MAP_FAILED) {
        free(b);
        free(tails);
        if (scratch != MAP_FAILED) munmap(scratch, (size_t)EMU_BATCH * EMU_MAX_DGRAM);
        return NULL;
    }
    b->scratch = scratch;
    t_batch = b;
    t_tails = tails;
    pthread_setspecific(g_batch_key, b);
    return b;
}

uint32_t emu_pool_batch_begin(emu_batch_t *b, uint32_t want, uint32_t d) {
    uint32_t mf = emu_pool.maxfrag;
    pthread_mutex_lock(&emu_pool.mu);
    uint32_t n = pool_avail() / mf;
    if (n > want) n = want;
    for (uint32_t i = 0; i < n * d; i++) b->bufs[i] = emu_pool.freelist[--emu_pool.nfree];
    emu_pool.nresv += n * (mf - d);
    pthread_mutex_unlock(&emu_pool.mu);
    return n;
}

static inline uint32_t frags_of(size_t len) {
    return len ? (uint32_t)((len + emu_conf.frag - 1) / emu_conf.frag) : 1;
}

void emu_pool_batch_end(emu_batch_t *b, uint32_t n, uint32_t d, uint32_t nrecv) {
    uint32_t mf = emu_pool.maxfrag, ntail = 0;
    uint32_t *tails = t_tails;
    pthread_mutex_lock(&emu_pool.mu);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u = i < nrecv ? frags_of(b->msgs[i].msg_len) : 0;
        for (uint32_t j = u; j < d; j++) emu_pool.freelist[emu_pool.nfree++] = b->bufs[i * d + j];
        /* a tail past the direct buffers: buffers this batch reserved (never short) */
        for (uint32_t j = d; j < u; j++) tails[ntail++] = emu_pool.freelist[--emu_pool.nfree];
    }
    emu_pool.nresv -= n * (mf - d);
    for (uint32_t i = 0; i < nrecv; i++) {
        b->descs[i] = emu_pool.dring[emu_pool.dhead];
        emu_pool.dhead = (emu_pool.dhead + 1) % emu_pool.nbuf;
        emu_pool.dcount--;
    }
    pthread_mutex_unlock(&emu_pool.mu);
    uint32_t t = 0;
    for (uint32_t i = 0; i < nrecv; i++) {
        const struct msghdr *m = &b->msgs[i].msg_hdr;
        size_t len = b->msgs[i].msg_len;
        uint32_t u = frags_of(len), direct = u < d ? u : d;
        const uint32_t *bi = &b->bufs[i * d];
        for (uint32_t j = 0; j + 1 < direct; j++) emu_pool.next[bi[j]] = bi[j + 1];
        if (u > d) {
            /* the tail landed in the slot's scratch: into the reserved buffers */
            const unsigned char *from = b->scratch + (size_t)i * EMU_MAX_DGRAM;
            size_t left = len - (size_t)d * emu_conf.frag;
            uint32_t prev = bi[d - 1];
            for (uint32_t j = d; j < u; j++) {
                uint32_t nb = tails[t++];
                size_t c = left < emu_conf.frag ? left : emu_conf.frag;
                memcpy(emu_buf(nb), from, c);
                from += c;
                left -= c;
                emu_pool.next[prev] = nb;
                prev = nb;
            }
        }
        emu_pkt_t *p = &emu_pool.pkts[b->descs[i]];
        p->buf = bi[0];
        p->nfrag = u;
        p->len = (uint32_t)len;
        p->qnext = 0;
        p->flags = (m->msg_flags & MSG_TRUNC) ? EMU_PKT_TRUNC : 0;
        p->addrlen = m->msg_namelen;
        if (m->msg_namelen)
            memcpy(&p->src, m->msg_name,
                   m->msg_namelen < sizeof p->src ? m->msg_namelen : sizeof p->src);
        p->ctrllen = 0;
        if (m->msg_controllen && emu_pool.ctrl) {
            size_t cl = m->msg_controllen < EMU_CTRL_MAX ? m->msg_controllen : EMU_CTRL_MAX;
            memcpy(emu_pool.ctrl + (size_t)b->descs[i] * EMU_CTRL_MAX, m->msg_control, cl);
            p->ctrllen = (uint32_t)cl;
        }
        if (m->msg_flags & MSG_CTRUNC) p->flags |= EMU_PKT_CTRUNC;
        atomic_store_explicit(&p->state, PKT_BUSY, memory_order_relaxed);
    }
}
