/*
 * pyxlio emulator: the packet buffer pool.
 *
 * One region of XLIO_MEMORY_LIMIT bytes (from the registered user allocator, called once, or
 * mmap) cut into buffers of PYXLIO_EMU_FRAG_SIZE bytes (stride rounded up to 64).  Every buffer
 * packet has a descriptor in emulator-owned memory and chains its buffers.  Packet ids handed to
 * the application are descriptor addresses, validated against the descriptor array before use;
 * free descriptors are reused in FIFO order, so a stale id (double free) finds its descriptor
 * free rather than reused by a newer packet.  Each thread keeps a spare set of buffers (enough for
 * the largest datagram) that the kernel receives into with one recvmsg.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "emu.h"

emu_pool_t emu_pool = {.mu = PTHREAD_MUTEX_INITIALIZER};

int emu_pool_create(void) {
    size_t frag = emu_conf.frag;
    size_t stride = (frag + 63) & ~(size_t)63;
    size_t size = emu_conf.memory_limit;
    if (size < stride) {
        emu_log("XLIO_MEMORY_LIMIT=%zu below one buffer: using %zu", size, stride);
        size = stride;
    }
    size_t nbuf = size / stride;
    if (nbuf > (1u << 30)) nbuf = 1u << 30;
    emu_pool.size = size;
    emu_pool.stride = stride;
    emu_pool.nbuf = (uint32_t)nbuf;
    emu_pool.maxfrag = (uint32_t)((EMU_MAX_DGRAM + frag - 1) / frag);
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
    if (!base || !emu_pool.pkts || !emu_pool.next || !emu_pool.freelist || !emu_pool.dring) {
        emu_log("cannot allocate the packet pool (%zu bytes): zero-copy receive disabled", size);
        emu_pool.nbuf = 0;
        emu_pool.nfree = 0;
        emu_pool.base = base;
        return -1;
    }
    emu_pool.base = base;
    /* stack: lowest indices on top */
    for (size_t i = 0; i < nbuf; i++) emu_pool.freelist[i] = (uint32_t)(nbuf - 1 - i);
    emu_pool.nfree = (uint32_t)nbuf;
    for (size_t i = 0; i < nbuf; i++) emu_pool.dring[i] = (uint32_t)i;
    emu_pool.dhead = 0;
    emu_pool.dcount = (uint32_t)nbuf;
    return 0;
}

uint32_t emu_pool_get(uint32_t *out, uint32_t n) {
    pthread_mutex_lock(&emu_pool.mu);
    uint32_t k = n < emu_pool.nfree ? n : emu_pool.nfree;
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
    emu_pool_put(sp->idx, sp->cnt);
    free(sp->idx);
    free(sp->iov);
    free(sp->scratch);
    free(sp);
    t_spare = NULL;
}

static void spare_key_init(void) { pthread_key_create(&g_spare_key, spare_destroy); }

emu_spare_t *emu_spare(void) {
    emu_spare_t *sp = t_spare;
    if (EMU_UNLIKELY(!sp)) {
        if (!emu_pool.nbuf) return NULL;
        pthread_once(&g_spare_once, spare_key_init);
        sp = calloc(1, sizeof *sp);
        if (!sp) return NULL;
        /* enough for the largest datagram, but never more than 1/16 of a small pool, so that
         * idle threads' spares cannot starve the others (short spares peek the size first) */
        uint32_t share = emu_pool.nbuf / 16 ? emu_pool.nbuf / 16 : 1;
        sp->cap = emu_pool.maxfrag < share ? emu_pool.maxfrag : share;
        sp->idx = calloc(sp->cap, sizeof *sp->idx);
        sp->iov = calloc(sp->cap, sizeof *sp->iov);
        sp->scratch = sp->cap > EMU_DIRECT_FRAGS + 1 ? malloc(EMU_MAX_DGRAM) : NULL;
        if (!sp->idx || !sp->iov || (sp->cap > EMU_DIRECT_FRAGS + 1 && !sp->scratch)) {
            free(sp->idx); free(sp->iov); free(sp->scratch); free(sp);
            return NULL;
        }
        t_spare = sp;
        pthread_setspecific(g_spare_key, sp);
    }
    if (sp->cnt < sp->cap) {
        uint32_t got = emu_pool_get(sp->idx + sp->cnt, sp->cap - sp->cnt);
        for (uint32_t i = sp->cnt; i < sp->cnt + got; i++) {
            sp->iov[i].iov_base = emu_buf(sp->idx[i]);
            sp->iov[i].iov_len = emu_conf.frag;
        }
        sp->cnt += got;
    }
    return sp;
}

/* Refill the used slots in place (holes are filled from the tail) and take `ndesc` descriptors
 * into descs, all in one locked step. */
static void spare_refill(emu_spare_t *sp, uint32_t used, uint32_t *descs, uint32_t ndesc) {
    pthread_mutex_lock(&emu_pool.mu);
    for (uint32_t i = 0; i < ndesc; i++) {
        /* never fails: a descriptor per buffer, and the caller holds `used` buffers */
        descs[i] = emu_pool.dring[emu_pool.dhead];
        emu_pool.dhead = (emu_pool.dhead + 1) % emu_pool.nbuf;
        emu_pool.dcount--;
    }
    uint32_t got = used < emu_pool.nfree ? used : emu_pool.nfree;
    for (uint32_t i = 0; i < got; i++) sp->idx[i] = emu_pool.freelist[--emu_pool.nfree];
    pthread_mutex_unlock(&emu_pool.mu);
    for (uint32_t j = 0; j < got; j++) sp->iov[j].iov_base = emu_buf(sp->idx[j]);
    uint32_t h = got, end = sp->cnt;
    while (h < used && end > used) {
        end--;
        sp->idx[h] = sp->idx[end];
        sp->iov[h].iov_base = emu_buf(sp->idx[h]);
        h++;
    }
    sp->cnt = (h < used) ? h : end;
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
        p->addrlen = 0;
        atomic_store_explicit(&p->state, PKT_BUSY, memory_order_relaxed);
    }
}
