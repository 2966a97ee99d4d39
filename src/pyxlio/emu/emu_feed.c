/*
 * pyxlio emulator: the in-memory feed (PYXLIO_EMU_FEED="PORT:SIZE[,PORT:SIZE...]").
 *
 * An offloaded UDP socket bound to a feed port receives an endless stream of SIZE-byte
 * datagrams made in memory, with no system call per packet.  Bytes 0..7: sequence number (u64,
 * network order, from 0 per socket); if SIZE >= 14, bytes 8..9 flags = 0 and 10..13 length =
 * SIZE (network order), i.e. a sockperf header; the rest zero.  Source 127.0.0.1:9 (or ::1:9).
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "emu.h"

#define EMU_FEED_MAX 32
#define EMU_FEED_MAX_SIZE 65507

static struct { unsigned port; uint32_t size; } g_feed[EMU_FEED_MAX];
static int g_nfeed;

/* a decimal of at most 6 digits (no sign, no blanks); -1 otherwise */
static long dec(const char **p) {
    const char *s = *p;
    long v = 0;
    int n = 0;
    while (*s >= '0' && *s <= '9') {
        if (++n > 6) return -1;
        v = v * 10 + (*s++ - '0');
    }
    if (!n) return -1;
    *p = s;
    return v;
}

/* PORT:SIZE[,PORT:SIZE...]: 1..EMU_FEED_MAX entries, each port once; 0, or -1 (nothing set) */
int emu_feed_parse(const char *spec) {
    const char *p = spec;
    int n = 0;
    for (;;) {
        long port = dec(&p);
        if (port < 1 || port > 65535 || *p++ != ':') goto bad;
        long size = dec(&p);
        if (size < 8 || size > EMU_FEED_MAX_SIZE || n == EMU_FEED_MAX) goto bad;
        for (int i = 0; i < n; i++)
            if (g_feed[i].port == (unsigned)port) goto bad;
        g_feed[n].port = (unsigned)port;
        g_feed[n].size = (uint32_t)size;
        n++;
        if (!*p) break;
        if (*p++ != ',') goto bad;
    }
    g_nfeed = n;
    return 0;
bad:
    g_nfeed = 0;
    return -1;
}

uint32_t emu_feed_size_for_port(unsigned port) {
    for (int i = 0; i < g_nfeed; i++)
        if (g_feed[i].port == port) return g_feed[i].size;
    return 0;
}

socklen_t emu_feed_src(emu_sock_t *s, struct sockaddr_in6 *out) {
    memset(out, 0, sizeof *out);
    if (s->domain == AF_INET6) {
        out->sin6_family = AF_INET6;
        out->sin6_port = htons(9);
        out->sin6_addr = in6addr_loopback;
        return sizeof(struct sockaddr_in6);
    }
    struct sockaddr_in *a = (struct sockaddr_in *)(void *)out;
    a->sin_family = AF_INET;
    a->sin_port = htons(9);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sizeof(struct sockaddr_in);
}

static void feed_header(unsigned char *h, uint64_t seq, uint32_t size) {
    uint64_t be = __builtin_bswap64(seq);
    memcpy(h, &be, 8);
    h[8] = h[9] = 0;
    uint32_t l = htonl(size);
    memcpy(h + 10, &l, 4);
}

int emu_feed_make_pkt(emu_sock_t *s, uint32_t *pi) {
    uint32_t size = s->feed_size;
    size_t nf = (size + emu_conf.frag - 1) / emu_conf.frag;
    emu_spare_t *sp = emu_spare();
    if (!sp || emu_spare_need(sp, (uint32_t)nf) < 0) {
        atomic_fetch_add_explicit(&s->enomem, 1, memory_order_relaxed);
        errno = ENOMEM;
        return -1;
    }
    uint64_t seq = __atomic_fetch_add(&s->feed_seq, 1, __ATOMIC_RELAXED);
    size_t left = size;
    for (size_t k = 0; k < nf; k++) {
        size_t n = left < emu_conf.frag ? left : emu_conf.frag;
        memset(sp->iov[k].iov_base, 0, n);
        left -= n;
    }
    unsigned char h[14];
    feed_header(h, seq, size);
    memcpy(sp->iov[0].iov_base, h, size >= 14 ? 14 : 8);
    uint32_t i = emu_spare_take(sp, (uint32_t)nf, size);
    emu_pkt_t *p = &emu_pool.pkts[i];
    p->addrlen = emu_feed_src(s, &p->src);
    p->fd = s->fd;
    atomic_fetch_add_explicit(&s->rx_packets, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->rx_bytes, size, memory_order_relaxed);
    *pi = i;
    return 0;
}

ssize_t emu_feed_copy(emu_sock_t *s, const struct iovec *iov, int iovcnt, struct sockaddr *from,
                      socklen_t *fromlen, int *msg_flags, int peek, int trunc_flag) {
    uint32_t size = s->feed_size;
    uint64_t seq = peek ? __atomic_load_n(&s->feed_seq, __ATOMIC_RELAXED)
                        : __atomic_fetch_add(&s->feed_seq, 1, __ATOMIC_RELAXED);
    unsigned char h[14];
    feed_header(h, seq, size);
    size_t hl = size >= 14 ? 14 : 8;
    size_t off = 0;
    for (int v = 0; v < iovcnt && off < size; v++) {
        size_t n = iov[v].iov_len;
        if (n > size - off) n = size - off;
        if (!n) continue;
        unsigned char *d = iov[v].iov_base;
        memset(d, 0, n);
        if (off < hl) memcpy(d, h + off, (hl - off) < n ? (hl - off) : n);
        off += n;
    }
    if (fromlen) {
        struct sockaddr_in6 src;
        socklen_t l = emu_feed_src(s, &src);
        if (from) memcpy(from, &src, *fromlen < l ? *fromlen : l);
        *fromlen = l;
    }
    if (msg_flags) *msg_flags = off < size ? MSG_TRUNC : 0;
    if (!peek) {
        atomic_fetch_add_explicit(&s->rx_packets, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->rx_bytes, size, memory_order_relaxed);
    }
    return trunc_flag ? (ssize_t)size : (ssize_t)off;
}
