/*
 * emu_check: drives pyxlio's XLIO emulator through its C interface, one subcommand per check.
 * Run under the emulator (LD_PRELOAD); prints "ok <case>" and exits 0 when every assertion of
 * the case holds, else prints "FAIL ..." and exits 1.  Some cases deliberately break the
 * contract and expect the emulator's own diagnostics / exit status (checked by pytest).
 *
 *   emu_check <case>      (see the table at the end of this file)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyxlio/xlio_abi.h"

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno=%d %s)\n", errno, strerror(errno)); \
    exit(1); } } while (0)
#define CHECK_RC(call, want_rc, want_errno) do { errno = 0; long r_ = (long)(call); int e_ = errno; \
    if (r_ != (want_rc) || (want_rc == -1 && e_ != (want_errno))) { \
        fprintf(stderr, "FAIL %s:%d: %s -> %ld errno %d (%s), want %ld errno %d\n", __FILE__, \
                __LINE__, #call, r_, e_, strerror(e_), (long)(want_rc), (int)(want_errno)); exit(1); } } while (0)

static pyxlio_api_legacy_t *api;   /* legacy layout */
static pyxlio_api_361_t *api361;    /* 3.61 layout */

static void *get_api_raw(void) {
    void *p = NULL;
    socklen_t len = sizeof p;
    int rc = getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &p, &len);
    if (rc != 0 || len < sizeof p || !p) return NULL;
    uint64_t magic;
    memcpy(&magic, p, 8);
    return magic == PYXLIO_XLIO_MAGIC ? p : NULL;
}

static void need_api(void) {
    void *p = get_api_raw();
    CHECK(p, "no XLIO API (run under the emulator)");
    uint64_t cap;
    memcpy(&cap, (char *)p + 8, 8);
    if (pyxlio_layout_from_caps(cap) == PYXLIO_LAYOUT_LEGACY) api = p;
    else api361 = p;
}

static int udp_sock(int nonblock) {
    int fd = socket(AF_INET, SOCK_DGRAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    CHECK(fd >= 0, "socket");
    return fd;
}

static int udp_bound(struct sockaddr_in *addr, int nonblock) {
    int fd = udp_sock(nonblock);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    socklen_t l = sizeof *addr;
    CHECK(getsockname(fd, (struct sockaddr *)addr, &l) == 0, "getsockname");
    return fd;
}

static void send_to(int fd, const struct sockaddr_in *to, const void *buf, size_t len) {
    ssize_t n = sendto(fd, buf, len, 0, (const struct sockaddr *)to, sizeof *to);
    CHECK(n == (ssize_t)len, "sendto %zu", len);
}

static void fill_pattern(unsigned char *b, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(i * 7 + seed);
}

static uint64_t get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void *get_ptr(const unsigned char *p) { void *v; memcpy(&v, p, 8); return v; }

/* gather a zero-copy packet's payload (first packet in buf) into out; returns bytes */
static size_t gather(const unsigned char *buf, unsigned char *out, size_t outlen, size_t *nfrags) {
    const pyxlio_zc_packet_t *pk = (const pyxlio_zc_packet_t *)(const void *)(buf + 8);
    size_t n = get_u64(buf + 16), off = 0;
    for (size_t k = 0; k < n; k++) {
        size_t l = pyxlio_zc_iov_len(pk, k);
        CHECK(off + l <= outlen, "gather overflow");
        memcpy(out + off, pyxlio_zc_iov_base(pk, k), l);
        off += l;
    }
    if (nfrags) *nfrags = n;
    return off;
}

static int free_one(int fd, void *id) {
    unsigned char e[16];
    memset(e, 0, sizeof e);
    memcpy(e, &id, 8);
    return api->recvfrom_zcopy_free_packets(fd, (pyxlio_zc_packet_t *)(void *)e, 1);
}

static int zc_recv(int fd, unsigned char *buf, size_t len, int flags, void **id) {
    int f = flags;
    int rc = api->recvfrom_zcopy(fd, buf, len, &f, NULL, NULL);
    if (rc >= 0 && id) {
        CHECK(f & PYXLIO_MSG_XLIO_ZCOPY, "MSG_XLIO_ZCOPY not set (flags=%#x)", f);
        CHECK(get_u64(buf) == 1, "n_packet_num %llu", (unsigned long long)get_u64(buf));
        *id = get_ptr(buf + 8);
    }
    return rc;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* ======================================================================================== */
static int case_nolib(void) {
    void *p = NULL;
    socklen_t len = sizeof p;
    CHECK_RC(getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &p, &len), -1, EBADF);
    return 0;
}

/* The socket / Ultra API members: every one set, each its own function (served by the
 * emulator; tests/emu/emu_ultra_check.c drives them) */
static void check_members(void *const *m, int n) {
    for (int i = 0; i < n; i++) {
        CHECK(m[i], "member %d NULL", i);
        for (int j = 0; j < i; j++) CHECK(m[i] != m[j], "members %d and %d are one function", j, i);
    }
}

static int case_discover_legacy(void) {
    void *p = NULL;
    socklen_t len = sizeof p;
    CHECK_RC(getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &p, &len), 0, 0);
    CHECK(len == 8 && p, "len %u", len);
    pyxlio_api_legacy_t *a = p;
    CHECK(a->magic == PYXLIO_XLIO_MAGIC, "magic %llx", (unsigned long long)a->magic);
    CHECK(memcmp(p, "NVDAXLIO", 8) == 0, "magic bytes");
    printf("cap_mask=%#llx\n", (unsigned long long)a->cap_mask);
    CHECK(a->cap_mask == 0x3fff, "cap_mask");
    CHECK(pyxlio_layout_from_caps(a->cap_mask) == PYXLIO_LAYOUT_LEGACY, "layout");
    /* every pointer of the 248-byte struct is set */
    for (int off = 16; off < 248; off += 8) CHECK(get_ptr((unsigned char *)p + off), "member @%d NULL", off);
    /* the discovery does not start the global init */
    CHECK_RC(a->thread_offload(1, pthread_self()), -1, EINVAL);
    CHECK_RC(a->dump_fd_stats(0, 3), -1, EINVAL);
    /* socketxtreme answers -1/EOPNOTSUPP; the socket API is served */
    CHECK_RC(((int (*)(int, void *, unsigned, int))(void *)a->socketxtreme_poll)(3, NULL, 0, 0), -1, EOPNOTSUPP);
    CHECK_RC(((int (*)(void *, int))(void *)a->socketxtreme_free_packets)(NULL, 0), -1, EOPNOTSUPP);
    CHECK_RC(((int (*)(void *))(void *)a->socketxtreme_ref_buff)(NULL), -1, EOPNOTSUPP);
    CHECK_RC(((int (*)(void *))(void *)a->socketxtreme_free_buff)(NULL), -1, EOPNOTSUPP);
    void *sapi[16];
    memcpy(sapi, (unsigned char *)p + 120, sizeof sapi);
    check_members(sapi, 16);
    /* a short optlen is refused; a second call returns the same table */
    socklen_t shortlen = 4;
    void *q = NULL;
    CHECK_RC(getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &q, &shortlen), -1, EINVAL);
    len = sizeof q;
    CHECK(getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &q, &len) == 0 && q == p, "same table");
    /* other getsockopt calls reach the kernel */
    int fd = udp_sock(0), type = 0;
    len = sizeof type;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_DGRAM, "SO_TYPE");
    close(fd);
    return 0;
}

static int case_discover_361(void) {
    void *p = get_api_raw();
    CHECK(p, "no API");
    pyxlio_api_361_t *a = p;
    printf("cap_mask=%#llx\n", (unsigned long long)a->cap_mask);
    CHECK(a->cap_mask == 0x2818, "cap_mask");
    CHECK(pyxlio_layout_from_caps(a->cap_mask) == PYXLIO_LAYOUT_361, "layout");
    CHECK_RC(a->thread_offload(1, pthread_self()), -1, EINVAL);
    CHECK_RC(a->dump_fd_stats(0, 3), -1, EINVAL);
    CHECK_RC(a->add_conf_rule("use os udp_receiver *:1\n"), 0, 0);
    /* the 23-member Ultra API from offset 40: the struct is 224 bytes */
    check_members((void *const *)(const void *)((unsigned char *)p + 40), 23);
    int fd = udp_sock(0);
    CHECK_RC(a->thread_offload(1, pthread_self()), 0, 0);
    CHECK_RC(a->dump_fd_stats(fd, 3), 0, 0);
    CHECK_RC(a->dump_fd_stats(fd, 9), 0, 0);     /* out of range: INFO, as libxlio */
    CHECK_RC(a->dump_fd_stats(12345, 3), 0, 0);
    /* no dummy send in this layout: 0x400 is MSG_SYN, the datagram goes out */
    struct sockaddr_in ra;
    int r = udp_bound(&ra, 1);
    CHECK_RC(sendto(fd, "syn", 3, PYXLIO_SND_FLAGS_DUMMY, (struct sockaddr *)&ra, sizeof ra), 3, 0);
    char buf[8];
    usleep(10000);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 3, 0);
    close(r);
    close(fd);
    return 0;
}

/* 3.60: callbacks (UDP only) and HOLD, no zero-copy receive, no free call, no rings */
static pyxlio_verdict_t hold_cb(int fd, size_t sz_iov, struct iovec iov[], pyxlio_recv_info_t *info,
                                void *context) {
    int *calls = context;
    (*calls)++;
    return ((const char *)iov[0].iov_base)[0] == 'H' ? PYXLIO_PACKET_HOLD : PYXLIO_PACKET_RECV;
}

static int case_discover_360(void) {
    void *p = get_api_raw();
    CHECK(p, "no API");
    pyxlio_api_360_t *a = p;
    printf("cap_mask=%#llx\n", (unsigned long long)a->cap_mask);
    CHECK(a->cap_mask == 0x2819, "cap_mask");
    CHECK(pyxlio_layout_from_caps(a->cap_mask) == PYXLIO_LAYOUT_360, "layout");
    CHECK(a->add_conf_rule && a->thread_offload && a->dump_fd_stats && a->register_recv_callback, "members");
    check_members((void *const *)(const void *)((unsigned char *)p + 48), 23);  /* 232 bytes */
    CHECK_RC(a->register_recv_callback(12345, hold_cb, NULL), -1, EINVAL);
    struct sockaddr_in ra;
    int r = udp_bound(&ra, 0), s = udp_sock(0);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_RC(a->register_recv_callback(t, hold_cb, NULL), -1, EINVAL);  /* 3.60: UDP only */
    close(t);
    int calls = 0;
    CHECK_RC(a->register_recv_callback(r, hold_cb, &calls), 0, 0);
    send_to(s, &ra, "Hold", 4);
    send_to(s, &ra, "Recv", 4);
    char buf[16];
    CHECK_RC(recv(r, buf, sizeof buf, 0), 4, 0);
    CHECK(memcmp(buf, "Recv", 4) == 0 && calls == 2, "calls %d", calls);
    /* the held packet can never be given back: closing the socket reports it */
    CHECK_RC(sendto(s, "syn", 3, PYXLIO_SND_FLAGS_DUMMY, (struct sockaddr *)&ra, sizeof ra), 3, 0);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 3, 0);     /* MSG_SYN: sent for real */
    CHECK(calls == 3, "calls %d", calls);
    close(r);
    close(s);
    return 0;
}

/* 3.94x: ioctl and dummy sends, no callback, no zero-copy receive */
static int case_discover_394(void) {
    void *p = get_api_raw();
    CHECK(p, "no API");
    pyxlio_api_394_t *a = p;
    printf("cap_mask=%#llx\n", (unsigned long long)a->cap_mask);
    CHECK(a->cap_mask == 0x3818, "cap_mask");
    CHECK(pyxlio_layout_from_caps(a->cap_mask) == PYXLIO_LAYOUT_394, "layout");
    check_members((void *const *)(const void *)((unsigned char *)p + 48), 16);  /* 176 bytes */
    CHECK_RC(a->ioctl(NULL, 0), -1, EINVAL);
    unsigned char cm[PYXLIO_USER_ALLOC_CMSG_SPACE];
    size_t cl = pyxlio_build_user_alloc_cmsg(cm, PYXLIO_USER_ALLOC_RX, malloc, free);
    CHECK_RC(a->ioctl(cm, cl), 0, 0);                /* before the global init */
    struct sockaddr_in ra;
    int r = udp_bound(&ra, 1), s = udp_sock(0);
    CHECK_RC(a->ioctl(cm, cl), -1, EINVAL);          /* after it */
    CHECK_RC(sendto(s, "dummy", 5, PYXLIO_SND_FLAGS_DUMMY, (struct sockaddr *)&ra, sizeof ra), 5, 0);
    char buf[8];
    usleep(10000);
    CHECK_RC(recv(r, buf, sizeof buf, 0), -1, EAGAIN);  /* dropped, as by the NIC */
    CHECK_RC(a->dump_fd_stats(s, 3), 0, 0);
    close(r);
    close(s);
    return 0;
}

/* ---- init and the user allocator -------------------------------------------------------- */
static int g_alloc_calls;
static size_t g_alloc_size;
static void *g_alloc_ptr;
static pthread_t g_alloc_thread;

static void *my_alloc(size_t n) {
    g_alloc_calls++;
    g_alloc_size = n;
    g_alloc_thread = pthread_self();
    g_alloc_ptr = malloc(n);
    return g_alloc_ptr;
}
static void my_free(void *p) { (void)p; }

/* an allocator that itself makes a socket and an epoll fd (as a Python allocator importing
 * modules might): the init must neither deadlock nor call it twice */
static int g_reent_fd = -2;
static void *reent_alloc(size_t n) {
    g_alloc_calls++;
    g_reent_fd = socket(AF_INET, SOCK_DGRAM, 0);
    int ep = epoll_create1(0);
    if (ep >= 0) close(ep);
    return malloc(n);
}

static int case_init_reentrant(void) {
    need_api();
    unsigned char c[PYXLIO_USER_ALLOC_CMSG_SPACE];
    size_t l = pyxlio_build_user_alloc_cmsg(c, PYXLIO_USER_ALLOC_RX, reent_alloc, my_free);
    CHECK_RC(api->ioctl(c, l), 0, 0);
    int fd = udp_sock(0);
    CHECK(g_alloc_calls == 1 && g_reent_fd >= 0, "alloc calls %d fd %d", g_alloc_calls, g_reent_fd);
    close(g_reent_fd);
    struct sockaddr_in a;
    int r = udp_bound(&a, 0);
    send_to(fd, &a, "re", 2);
    unsigned char buf[128];
    void *id;
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 2, 0);
    CHECK_RC(free_one(r, id), 0, 0);
    close(r);
    close(fd);
    return 0;
}

static int case_init(int via_epoll) {
    need_api();
    unsigned char c[PYXLIO_USER_ALLOC_CMSG_SPACE + 16];
    /* before init */
    CHECK_RC(api->thread_offload(1, pthread_self()), -1, EINVAL);
    CHECK_RC(api->dump_fd_stats(0, 3), -1, EINVAL);
    /* malformed messages */
    size_t l = pyxlio_build_user_alloc_cmsg(c, PYXLIO_USER_ALLOC_RX, my_alloc, my_free);
    struct cmsghdr *h = (struct cmsghdr *)(void *)c;
    h->cmsg_len = 32;
    CHECK_RC(api->ioctl(c, 40), -1, EINVAL);                 /* wrong cmsg_len */
    h->cmsg_len = 33;
    CHECK_RC(api->ioctl(c, 20), -1, EINVAL);                 /* cmsg_len beyond the buffer */
    pyxlio_build_user_alloc_cmsg(c, 0, my_alloc, my_free);
    CHECK_RC(api->ioctl(c, l), -1, EINVAL);                  /* flags 0 */
    pyxlio_build_user_alloc_cmsg(c, 4, my_alloc, my_free);
    CHECK_RC(api->ioctl(c, l), -1, EINVAL);                  /* flags 4 */
    pyxlio_build_user_alloc_cmsg(c, 3, NULL, my_free);
    CHECK_RC(api->ioctl(c, l), -1, EINVAL);                  /* NULL alloc */
    pyxlio_build_user_alloc_cmsg(c, 3, my_alloc, NULL);
    CHECK_RC(api->ioctl(c, l), -1, EINVAL);                  /* NULL free */
    /* an unknown message type is ignored */
    memset(c, 0, sizeof c);
    h->cmsg_len = CMSG_LEN(4);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = 1234;
    CHECK_RC(api->ioctl(c, CMSG_SPACE(4)), 0, 0);
    CHECK(g_alloc_calls == 0, "alloc called early");
    /* a sequence: unknown message then the allocator */
    unsigned char seq[CMSG_SPACE(4) + PYXLIO_USER_ALLOC_CMSG_SPACE];
    memcpy(seq, c, CMSG_SPACE(4));
    pyxlio_build_user_alloc_cmsg(seq + CMSG_SPACE(4), PYXLIO_USER_ALLOC_TX | PYXLIO_USER_ALLOC_RX,
                                 my_alloc, my_free);
    CHECK_RC(api->ioctl(seq, sizeof seq), 0, 0);
    CHECK(g_alloc_calls == 0, "alloc called before init");
    /* non-IP sockets do not start the init */
    int u = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(u >= 0, "unix socket");
    close(u);
    CHECK(g_alloc_calls == 0, "AF_UNIX socket started init");
    CHECK_RC(api->thread_offload(1, pthread_self()), -1, EINVAL);
    int fd;
    if (via_epoll) {
        fd = epoll_create1(0);
        CHECK(fd >= 0, "epoll_create1");
    } else {
        fd = udp_sock(0);
    }
    CHECK(g_alloc_calls == 1, "alloc calls %d", g_alloc_calls);
    size_t want = strtoull(getenv("XLIO_MEMORY_LIMIT"), NULL, 10);
    CHECK(g_alloc_size == want, "alloc size %zu want %zu", g_alloc_size, want);
    CHECK(pthread_equal(g_alloc_thread, pthread_self()), "alloc thread");
    /* after init */
    pyxlio_build_user_alloc_cmsg(c, PYXLIO_USER_ALLOC_RX, my_alloc, my_free);
    CHECK_RC(api->ioctl(c, l), -1, EINVAL);
    CHECK_RC(api->thread_offload(1, pthread_self()), 0, 0);
    CHECK_RC(api->dump_fd_stats(0, 3), 0, 0);
    close(fd);
    /* the pool lives in the allocated memory */
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    send_to(s, &a, "pool", 4);
    unsigned char buf[256];
    void *id;
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 4, 0);
    unsigned char *base = get_ptr(buf + 24);
    CHECK(base >= (unsigned char *)g_alloc_ptr && base + 4 <= (unsigned char *)g_alloc_ptr + g_alloc_size,
          "payload %p outside the user pool %p+%zu", (void *)base, g_alloc_ptr, g_alloc_size);
    CHECK(memcmp(base, "pool", 4) == 0, "payload");
    CHECK_RC(free_one(r, id), 0, 0);
    close(r);
    close(s);
    CHECK(g_alloc_calls == 1, "alloc called again");
    return 0;
}

/* ---- recvfrom_zcopy, UDP ---------------------------------------------------------------- */
static int case_zcopy_udp(void) {
    need_api();
    struct sockaddr_in a, sa;
    int r = udp_bound(&a, 0), s = udp_bound(&sa, 0);
    unsigned char msg[1000], buf[512], out[2048];
    fill_pattern(msg, sizeof msg, 1);
    send_to(s, &a, msg, 1000);
    struct sockaddr_in from;
    socklen_t fromlen = sizeof from;
    int flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE;
    int rc = api->recvfrom_zcopy(r, buf, sizeof buf, &flags, (struct sockaddr *)&from, &fromlen);
    CHECK(rc == 1000, "rc %d", rc);
    CHECK(flags & PYXLIO_MSG_XLIO_ZCOPY, "flags %#x", flags);
    CHECK(get_u64(buf) == 1, "n_packet_num");
    CHECK(get_u64(buf + 16) == 1, "sz_iov %llu", (unsigned long long)get_u64(buf + 16));
    CHECK(get_u64(buf + 32) == 1000, "iov_len");
    CHECK(fromlen == sizeof from && from.sin_port == sa.sin_port &&
          from.sin_addr.s_addr == htonl(INADDR_LOOPBACK), "from");
    size_t nf;
    CHECK(gather(buf, out, sizeof out, &nf) == 1000 && memcmp(out, msg, 1000) == 0, "payload");
    void *id = get_ptr(buf + 8);
    /* free using the received area itself */
    CHECK_RC(api->recvfrom_zcopy_free_packets(r, (pyxlio_zc_packet_t *)(void *)(buf + 8), get_u64(buf)), 0, 0);
    (void)id;
    /* a short fromlen is truncated and set to the real length */
    send_to(s, &a, "x", 1);
    fromlen = 2; /* room for the family only */
    flags = 0;
    memset(&from, 0, sizeof from);
    rc = api->recvfrom_zcopy(r, buf, sizeof buf, &flags, (struct sockaddr *)&from, &fromlen);
    CHECK(rc == 1 && fromlen == sizeof from && from.sin_port == 0, "short fromlen: rc %d len %u", rc, fromlen);
    CHECK_RC(api->recvfrom_zcopy_free_packets(r, (pyxlio_zc_packet_t *)(void *)(buf + 8), 1), 0, 0);
    /* ENOBUFS for a buffer below 40 bytes; the datagram stays queued */
    send_to(s, &a, "keep", 4);
    flags = 0;
    CHECK_RC(api->recvfrom_zcopy(r, buf, 39, &flags, NULL, NULL), -1, ENOBUFS);
    flags = 0;
    CHECK_RC(api->recvfrom_zcopy(r, buf, 40, &flags, NULL, NULL), 4, 0);
    CHECK(memcmp(get_ptr(buf + 24), "keep", 4) == 0, "kept datagram");
    CHECK_RC(api->recvfrom_zcopy_free_packets(r, (pyxlio_zc_packet_t *)(void *)(buf + 8), 1), 0, 0);
    /* IPv6 */
    int r6 = socket(AF_INET6, SOCK_DGRAM, 0), s6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (r6 >= 0 && bind(r6, (struct sockaddr *)&a6, sizeof a6) == 0) {
        socklen_t l6 = sizeof a6;
        getsockname(r6, (struct sockaddr *)&a6, &l6);
        CHECK(sendto(s6, "six", 3, 0, (struct sockaddr *)&a6, sizeof a6) == 3, "sendto6");
        struct sockaddr_in6 f6;
        socklen_t fl6 = sizeof f6;
        flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE;
        CHECK_RC(api->recvfrom_zcopy(r6, buf, sizeof buf, &flags, (struct sockaddr *)&f6, &fl6), 3, 0);
        CHECK(fl6 == sizeof f6 && f6.sin6_family == AF_INET6, "from6");
        CHECK_RC(api->recvfrom_zcopy_free_packets(r6, (pyxlio_zc_packet_t *)(void *)(buf + 8), 1), 0, 0);
        printf("ipv6 checked\n");
    }
    if (r6 >= 0) close(r6);
    if (s6 >= 0) close(s6);
    close(r);
    close(s);
    return 0;
}

static int case_zcopy_frags(void) {
    need_api();
    size_t frag = strtoull(getenv("PYXLIO_EMU_FRAG_SIZE"), NULL, 10);
    CHECK(frag == 64, "run with PYXLIO_EMU_FRAG_SIZE=64");
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char msg[1000], buf[1024], out[2048];
    fill_pattern(msg, sizeof msg, 3);
    send_to(s, &a, msg, 1000);
    void *id;
    CHECK_RC(zc_recv(r, buf, sizeof buf, PYXLIO_MSG_XLIO_ZCOPY_FORCE, &id), 1000, 0);
    size_t nf;
    CHECK(gather(buf, out, sizeof out, &nf) == 1000, "gather");
    CHECK(nf == 16, "fragments %zu", nf); /* 15 x 64 + 40 */
    CHECK(memcmp(out, msg, 1000) == 0, "payload");
    const pyxlio_zc_packet_t *pk = (const pyxlio_zc_packet_t *)(const void *)(buf + 8);
    for (size_t k = 0; k + 1 < nf; k++) CHECK(pyxlio_zc_iov_len(pk, k) == 64, "frag %zu len", k);
    CHECK(pyxlio_zc_iov_len(pk, 15) == 40, "last frag len");
    printf("fragments=%zu\n", nf);
    CHECK_RC(free_one(r, id), 0, 0);
    /* a buffer with room for 3 iovecs lists 3 fragments; the packet is still freed whole */
    send_to(s, &a, msg, 1000);
    CHECK_RC(zc_recv(r, buf, 24 + 3 * 16, 0, &id), 192, 0);
    CHECK(get_u64(buf + 16) == 3, "sz_iov %llu", (unsigned long long)get_u64(buf + 16));
    CHECK_RC(free_one(r, id), 0, 0);
    /* a copy receive of a fragmented datagram on a callback-less socket still works */
    send_to(s, &a, msg, 1000);
    unsigned char cp[2000];
    CHECK_RC(recv(r, cp, sizeof cp, 0), 1000, 0);
    CHECK(memcmp(cp, msg, 1000) == 0, "copy");
    /* the biggest datagram */
    static unsigned char big[65507], bigout[65507];
    fill_pattern(big, sizeof big, 9);
    int sz = 1 << 20;
    setsockopt(r, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    send_to(s, &a, big, sizeof big);
    static unsigned char bigbuf[24 + 16 * 1100];
    CHECK_RC(zc_recv(r, bigbuf, sizeof bigbuf, 0, &id), 65507, 0);
    CHECK(gather(bigbuf, bigout, sizeof bigout, &nf) == 65507 && memcmp(big, bigout, 65507) == 0, "big");
    CHECK(nf == (65507 + 63) / 64, "big frags %zu", nf);
    CHECK_RC(free_one(r, id), 0, 0);
    close(r);
    close(s);
    return 0;
}

static volatile sig_atomic_t g_alarms;
static void on_alarm(int sig) { (void)sig; g_alarms++; }

static int case_zcopy_eagain(void) {
    need_api();
    struct sockaddr_in a;
    unsigned char buf[256];
    int flags;
    /* O_NONBLOCK */
    int r = udp_bound(&a, 1);
    flags = 0;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EAGAIN);
    close(r);
    /* MSG_DONTWAIT on a blocking socket */
    r = udp_bound(&a, 0);
    flags = MSG_DONTWAIT | PYXLIO_MSG_XLIO_ZCOPY_FORCE;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EAGAIN);
    /* SO_RCVTIMEO */
    struct timeval tv = {0, 150000};
    CHECK(setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "SO_RCVTIMEO");
    double t0 = now_s();
    flags = 0;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EAGAIN);
    double dt = now_s() - t0;
    CHECK(dt > 0.1 && dt < 5, "waited %.3f s", dt);
    /* EINTR comes back to the caller */
    struct timeval none = {0, 0};
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    ualarm(100000, 0);
    flags = 0;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EINTR);
    close(r);
    return 0;
}

static int case_not_offloaded(void) {
    need_api();
    unsigned char buf[256];
    int flags;
    struct sockaddr_in a;
    /* not a socket: plain recvfrom fall-through */
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE;
    CHECK_RC(api->recvfrom_zcopy(p[0], buf, sizeof buf, &flags, NULL, NULL), -1, ENOTSOCK);
    CHECK_RC(api->recvfrom_zcopy_free_packets(p[0], (pyxlio_zc_packet_t *)(void *)buf, 1), -1, EINVAL);
    CHECK_RC(api->recvfrom_zcopy(12345, buf, sizeof buf, &flags, NULL, NULL), -1, EBADF);
    close(p[0]);
    close(p[1]);
    /* a socket created with thread offload off */
    int s = udp_sock(0);
    CHECK_RC(api->thread_offload(0, pthread_self()), 0, 0);
    int r = udp_bound(&a, 0);
    int unbound = udp_sock(0);
    CHECK_RC(api->thread_offload(1, pthread_self()), 0, 0);
    CHECK_RC(api->get_socket_rings_num(unbound), 0, 0);   /* never XLIO's: 0, not -1 */
    close(unbound);
    /* libxlio 3.51.1 never adds it to its collection (fd_collection.cpp addsocket), so the
     * Extra API treats it as an fd it does not know: recvfrom_zcopy is the kernel's recvfrom
     * with the caller's flags (FORCE ignored: a copy), ZCOPY never set */
    send_to(s, &a, "copy", 4);
    flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), 4, 0);
    CHECK(!(flags & PYXLIO_MSG_XLIO_ZCOPY) && memcmp(buf, "copy", 4) == 0, "FORCE on an unknown fd");
    send_to(s, &a, "copy", 4);
    flags = 0;
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, (struct sockaddr *)&from, &fl), 4, 0);
    CHECK(!(flags & PYXLIO_MSG_XLIO_ZCOPY), "ZCOPY flag set on a copy");
    CHECK(memcmp(buf, "copy", 4) == 0 && fl == sizeof from, "copied data");
    CHECK_RC(api->recvfrom_zcopy_free_packets(r, (pyxlio_zc_packet_t *)(void *)buf, 1), -1, EINVAL);
    CHECK_RC(api->get_socket_rings_num(r), 0, 0);
    /* refused: the one call that tells an fd XLIO does not know */
    int calls = 0;
    CHECK_RC(api->register_recv_callback(r, hold_cb, &calls), -1, EINVAL);
    CHECK_RC(api->register_recv_callback(r, NULL, NULL), -1, EINVAL);
    /* a zero-length datagram is read (no FIONREAD gate: the read is the kernel's own) */
    send_to(s, &a, "", 0);
    send_to(s, &a, "Hold", 4);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 0, 0);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 4, 0);
    CHECK(calls == 0, "callback ran on an unknown fd");
    /* a dummy send is refused before the kernel sees it (sock-redirect.cpp: "Ignore dummy
     * messages for OS") */
    CHECK_RC(sendto(r, "d", 1, PYXLIO_SND_FLAGS_DUMMY, (struct sockaddr *)&a, sizeof a), -1, EINVAL);
    CHECK_RC(send(r, "d", 1, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    close(r);
    /* sockets made later on this thread are offloaded again */
    r = udp_bound(&a, 0);
    send_to(s, &a, "zc", 2);
    void *id;
    CHECK_RC(zc_recv(r, buf, sizeof buf, PYXLIO_MSG_XLIO_ZCOPY_FORCE, &id), 2, 0);
    CHECK_RC(free_one(r, id), 0, 0);
    close(r);
    close(s);
    return 0;
}

/* thread offload set for another thread */
static void *tofl_thread(void *arg) {
    int *out = arg;
    struct sockaddr_in a;
    int r = udp_bound(&a, 0);
    *out = api->get_socket_rings_num(r);
    close(r);
    return NULL;
}

static int case_thread_offload(void) {
    need_api();
    int res = -5;
    int s = udp_sock(0); /* starts the global init */
    /* offload off for this thread only: another thread's sockets stay offloaded */
    CHECK_RC(api->thread_offload(0, pthread_self()), 0, 0);
    pthread_t t2;
    CHECK(pthread_create(&t2, NULL, tofl_thread, &res) == 0, "pthread_create");
    pthread_join(t2, NULL);
    CHECK(res == 1, "other thread's socket not offloaded (rings %d)", res);
    struct sockaddr_in a;
    int r = udp_bound(&a, 0);
    CHECK_RC(api->get_socket_rings_num(r), 0, 0);
    close(r);
    CHECK_RC(api->thread_offload(1, pthread_self()), 0, 0);
    r = udp_bound(&a, 0);
    CHECK_RC(api->get_socket_rings_num(r), 1, 0);
    close(r);
    close(s);
    return 0;
}

/* ---- free_packets ----------------------------------------------------------------------- */
static int case_free_errors(void) {
    need_api();
    struct sockaddr_in a, b;
    int r = udp_bound(&a, 0), r2 = udp_bound(&b, 0), s = udp_sock(0);
    unsigned char buf[256];
    void *id, *id2;
    CHECK_RC(api->recvfrom_zcopy_free_packets(r, NULL, 0), 0, 0);          /* count 0 */
    CHECK_RC(api->recvfrom_zcopy_free_packets(99999, (pyxlio_zc_packet_t *)(void *)buf, 1), -1, EINVAL);
    send_to(s, &a, "one", 3);
    send_to(s, &b, "two", 3);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 3, 0);
    CHECK_RC(zc_recv(r2, buf, sizeof buf, 0, &id2), 3, 0);
    printf("case wrong-socket\n");
    fflush(stdout);
    CHECK_RC(free_one(r2, id), -1, ENOENT);                                   /* wrong socket */
    CHECK_RC(free_one(r, id), 0, 0);
    printf("case double-free\n");
    fflush(stdout);
    CHECK_RC(free_one(r, id), -1, ENOENT);                                    /* double free */
    /* a double free after a new receive must not free the new packet */
    void *idb;
    send_to(s, &a, "B", 1);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &idb), 1, 0);
    CHECK(idb != id, "a freed packet id was reused at once");
    CHECK_RC(free_one(r, id), -1, ENOENT);
    CHECK_RC(free_one(r, idb), 0, 0);
    printf("case bogus\n");
    fflush(stdout);
    CHECK_RC(free_one(r, (void *)0x1234), -1, ENOENT);                        /* bogus id */
    CHECK_RC(free_one(r, (char *)id2 + 1), -1, ENOENT);                       /* misaligned */
    CHECK_RC(free_one(r, NULL), -1, ENOENT);
    /* several entries, sz_iov = 0, one call */
    void *ids[3];
    for (int i = 0; i < 3; i++) {
        send_to(s, &a, "m", 1);
        CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &ids[i]), 1, 0);
    }
    unsigned char arr[48];
    memset(arr, 0, sizeof arr);
    for (int i = 0; i < 3; i++) memcpy(arr + 16 * i, &ids[i], 8);
    CHECK_RC(api->recvfrom_zcopy_free_packets(r, (pyxlio_zc_packet_t *)(void *)arr, 3), 0, 0);
    CHECK_RC(free_one(r2, id2), 0, 0);
    /* a packet of a closed socket can't be freed on a later socket with the same fd number */
    int fdnum = r2;
    send_to(s, &b, "old", 3);
    CHECK_RC(zc_recv(r2, buf, sizeof buf, 0, &id2), 3, 0);
    CHECK_RC(api->recvfrom_zcopy_free_packets(r2, (pyxlio_zc_packet_t *)(void *)(buf + 8), 1), 0, 0);
    close(r2);
    r2 = udp_bound(&b, 0);
    CHECK(r2 == fdnum, "fd not reused (%d vs %d)", r2, fdnum);
    printf("case closed-socket\n");
    fflush(stdout);
    CHECK_RC(free_one(r2, id2), -1, ENOENT);
    close(r);
    close(r2);
    close(s);
    return 0;
}

static int case_leak_exit(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256];
    void *id;
    send_to(s, &a, "leak", 4);
    send_to(s, &a, "leak", 4);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 4, 0);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 4, 0);
    printf("leaving fd=%d with 2 packets\n", r);
    return 0; /* exit without freeing */
}

static int case_leak_close(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256];
    void *id;
    send_to(s, &a, "leak", 4);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 4, 0);
    printf("closing fd=%d with 1 packet\n", r);
    fflush(stdout);
    close(r);
    CHECK_RC(free_one(r, id), -1, EINVAL); /* fd no longer known */
    return 0;
}

static int case_clean_exit(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256];
    void *id;
    for (int i = 0; i < 100; i++) {
        send_to(s, &a, "ok", 2);
        CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 2, 0);
        CHECK_RC(free_one(r, id), 0, 0);
    }
    return 0; /* sockets left open but nothing outstanding: no report */
}

/* ---- dummy send ------------------------------------------------------------------------- */
static int case_dummy_send(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 1), s = udp_sock(0);
    CHECK(connect(s, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    CHECK_RC(send(s, "dummy", 5, PYXLIO_SND_FLAGS_DUMMY), 5, 0);
    CHECK_RC(sendto(s, "dummy!", 6, PYXLIO_SND_FLAGS_DUMMY, (struct sockaddr *)&a, sizeof a), 6, 0);
    struct iovec iov[2] = {{"ab", 2}, {"cde", 3}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
    CHECK_RC(sendmsg(s, &m, PYXLIO_SND_FLAGS_DUMMY), 5, 0);
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    mm[0].msg_hdr.msg_iov = iov;
    mm[0].msg_hdr.msg_iovlen = 2;
    mm[1].msg_hdr.msg_iov = iov;
    mm[1].msg_hdr.msg_iovlen = 1;
    CHECK_RC(sendmmsg(s, mm, 2, PYXLIO_SND_FLAGS_DUMMY), 2, 0);
    CHECK(mm[0].msg_len == 5 && mm[1].msg_len == 2, "msg_len %u %u", mm[0].msg_len, mm[1].msg_len);
    /* nothing reached the receiver */
    unsigned char buf[64];
    CHECK_RC(recv(r, buf, sizeof buf, 0), -1, EAGAIN);
    /* a real send still works */
    CHECK_RC(send(s, "real", 4, 0), 4, 0);
    usleep(10000);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 4, 0);
    /* not offloaded / unknown: EINVAL */
    int p[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, p) == 0, "socketpair");
    CHECK_RC(send(p[0], "x", 1, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    CHECK_RC(sendmmsg(p[0], mm, 2, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    api->dump_fd_stats(s, 3);
    close(p[0]);
    close(p[1]);
    close(r);
    close(s);
    return 0;
}

/* ---- dump_fd_stats, rings --------------------------------------------------------------- */
static int case_stats(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256];
    void *id;
    send_to(s, &a, "12345", 5);
    send_to(s, &a, "123", 3);
    send_to(s, &a, "1", 1);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 5, 0);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 3, 0);
    void *id2;
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id2), 1, 0);
    CHECK_RC(free_one(r, id2), 0, 0);
    CHECK_RC(api->dump_fd_stats(r, 3), 0, 0);
    CHECK_RC(api->dump_fd_stats(r, -1), 0, 0);
    CHECK_RC(api->dump_fd_stats(r, 8), 0, 0);
    CHECK_RC(api->dump_fd_stats(r, 9), 0, 0);           /* out of range: INFO, as libxlio */
    CHECK_RC(api->dump_fd_stats(r, -2), 0, 0);
    CHECK_RC(api->dump_fd_stats(12345, 3), 0, 0);       /* any fd once started: 0 */
    CHECK_RC(api->dump_fd_stats(1, 3), 0, 0);           /* stdout: not a socket */
    fprintf(stderr, "--- all ---\n");
    CHECK_RC(api->dump_fd_stats(0, 3), 0, 0);
    CHECK_RC(free_one(r, id), 0, 0);
    printf("fd=%d port=%u\n", r, ntohs(a.sin_port));
    /* rings */
    CHECK_RC(api->get_socket_rings_num(r), 1, 0);
    int u = udp_sock(0);
    CHECK_RC(api->get_socket_rings_num(u), -1, EINVAL);     /* unbound UDP */
    CHECK_RC(api->get_socket_rings_num(12345), 0, 0);       /* an fd it does not know */
    int rf[4] = {-1, -1, -1, -1};
    CHECK_RC(api->get_socket_rings_fds(r, rf, 0), -1, EINVAL);
    CHECK_RC(api->get_socket_rings_fds(r, rf, -1), -1, EINVAL);
    CHECK_RC(api->get_socket_rings_fds(r, NULL, 4), -1, EINVAL);
    CHECK_RC(api->get_socket_rings_fds(r, rf, 4), 1, 0);
    CHECK(rf[0] == r && rf[1] == -1, "ring fd %d", rf[0]);
    CHECK_RC(api->get_socket_rings_fds(u, rf, 4), 0, 0);
    CHECK_RC(api->get_socket_rings_fds(12345, rf, 4), 0, 0);
    /* the ring fd is pollable and agrees with readiness */
    struct pollfd pfd = {.fd = rf[0], .events = POLLIN};
    CHECK_RC(poll(&pfd, 1, 0), 0, 0);
    send_to(s, &a, "ring", 4);
    CHECK_RC(poll(&pfd, 1, 1000), 1, 0);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 4, 0);
    close(u);
    close(r);
    close(s);
    return 0;
}

/* ---- feed ------------------------------------------------------------------------------- */
static int case_feed(void) {
    need_api();
    const char *spec = getenv("PYXLIO_EMU_FEED"); /* "PORT:64,PORT2:8" */
    CHECK(spec, "run with PYXLIO_EMU_FEED");
    unsigned port = (unsigned)atoi(spec), port2 = (unsigned)atoi(strchr(spec, ',') + 1);
    int r = udp_sock(0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(r, (struct sockaddr *)&a, sizeof a) == 0, "bind feed port");
    unsigned char buf[256];
    struct sockaddr_in from;
    for (uint64_t i = 0; i < 1000; i++) {
        socklen_t fl = sizeof from;
        int flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE;
        int rc = api->recvfrom_zcopy(r, buf, sizeof buf, &flags, (struct sockaddr *)&from, &fl);
        CHECK(rc == 64, "rc %d", rc);
        unsigned char *d = get_ptr(buf + 24);
        uint64_t seq;
        memcpy(&seq, d, 8);
        CHECK(__builtin_bswap64(seq) == i, "seq %llu want %llu", (unsigned long long)__builtin_bswap64(seq), (unsigned long long)i);
        uint32_t len;
        memcpy(&len, d + 10, 4);
        CHECK(d[8] == 0 && d[9] == 0 && ntohl(len) == 64, "header");
        for (int k = 14; k < 64; k++) CHECK(d[k] == 0, "byte %d", k);
        CHECK(fl == sizeof from && from.sin_port == htons(9) && from.sin_addr.s_addr == htonl(INADDR_LOOPBACK), "src");
        CHECK_RC(api->recvfrom_zcopy_free_packets(r, (pyxlio_zc_packet_t *)(void *)(buf + 8), 1), 0, 0);
    }
    /* copy receives continue the same sequence */
    unsigned char cp[100];
    CHECK_RC(recv(r, cp, sizeof cp, 0), 64, 0);
    uint64_t seq;
    memcpy(&seq, cp, 8);
    CHECK(__builtin_bswap64(seq) == 1000, "copy seq %llu", (unsigned long long)__builtin_bswap64(seq));
    CHECK_RC(recv(r, cp, 10, 0), 10, 0);           /* truncated */
    CHECK_RC(recv(r, cp, 10, MSG_TRUNC), 64, 0);
    struct iovec iov = {cp, sizeof cp};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_name = &from, .msg_namelen = sizeof from};
    CHECK_RC(recvmsg(r, &m, 0), 64, 0);
    memcpy(&seq, cp, 8);
    CHECK(__builtin_bswap64(seq) == 1003, "recvmsg seq");
    CHECK(m.msg_namelen == sizeof from && from.sin_port == htons(9), "recvmsg src");
    struct mmsghdr mm[4];
    unsigned char mb[4][64];
    struct iovec mi[4];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 4; i++) { mi[i].iov_base = mb[i]; mi[i].iov_len = 64; mm[i].msg_hdr.msg_iov = &mi[i]; mm[i].msg_hdr.msg_iovlen = 1; }
    CHECK_RC(recvmmsg(r, mm, 4, 0, NULL), 4, 0);
    memcpy(&seq, mb[3], 8);
    CHECK(__builtin_bswap64(seq) == 1007 && mm[3].msg_len == 64, "recvmmsg seq");
    CHECK_RC(read(r, cp, sizeof cp), 64, 0);
    /* always readable */
    struct pollfd pfd = {.fd = r, .events = POLLIN};
    CHECK_RC(poll(&pfd, 1, 1000), 1, 0);
    CHECK(pfd.revents & POLLIN, "poll revents");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 77};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, r, &ev) == 0, "epoll_ctl");
    struct epoll_event out[4];
    CHECK_RC(epoll_wait(ep, out, 4, 1000), 1, 0);
    CHECK(out[0].data.u64 == 77 && (out[0].events & EPOLLIN), "epoll event");
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(r, &rs);
    struct timeval tv = {1, 0};
    CHECK_RC(select(r + 1, &rs, NULL, NULL, &tv), 1, 0);
    CHECK(FD_ISSET(r, &rs), "select");
    close(ep);
    /* minimal size 8: no sockperf header; IPv6 source ::1 */
    int r6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port2), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (r6 >= 0 && bind(r6, (struct sockaddr *)&a6, sizeof a6) == 0) {
        struct sockaddr_in6 f6;
        socklen_t fl6 = sizeof f6;
        CHECK_RC(recvfrom(r6, cp, sizeof cp, 0, (struct sockaddr *)&f6, &fl6), 8, 0);
        CHECK(fl6 == sizeof f6 && f6.sin6_port == htons(9) && IN6_IS_ADDR_LOOPBACK(&f6.sin6_addr), "src6");
        printf("ipv6 feed checked\n");
    }
    if (r6 >= 0) close(r6);
    /* a socket on another port is not fed */
    struct sockaddr_in o;
    int other = udp_bound(&o, 1);
    CHECK_RC(recv(other, cp, sizeof cp, 0), -1, EAGAIN);
    close(other);
    api->dump_fd_stats(r, 3);
    close(r);
    return 0;
}

/* ---- receive callback ------------------------------------------------------------------- */
typedef struct {
    int calls;
    void *held[16];
    int nheld;
    int bad_info;
    int fd;
} cb_ctx_t;

static pyxlio_verdict_t verdict_cb(int fd, size_t sz_iov, struct iovec iov[], pyxlio_recv_info_t *info, void *context) {
    cb_ctx_t *c = context;
    c->calls++;
    size_t total = 0;
    for (size_t k = 0; k < sz_iov; k++) total += iov[k].iov_len;
    if (fd != c->fd || info->struct_sz != sizeof *info || info->payload_sz != total || !info->packet_id ||
        !info->src || info->src->sa_family != AF_INET || !info->dst || info->dst->sa_family != AF_INET ||
        info->sw_timestamp.tv_sec == 0)
        c->bad_info++;
    const char *d = iov[0].iov_base;
    if (d[0] == 'D') return PYXLIO_PACKET_DROP;
    if (d[0] == 'H') {
        if (c->nheld < 16) c->held[c->nheld++] = info->packet_id;
        return PYXLIO_PACKET_HOLD;
    }
    return PYXLIO_PACKET_RECV;
}

static int case_callback(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    cb_ctx_t c = {.fd = r};
    CHECK_RC(api->register_recv_callback(r, verdict_cb, &c), 0, 0);
    CHECK_RC(api->register_recv_callback(12345, verdict_cb, &c), -1, EINVAL);
    unsigned char buf[256];
    /* recv: DROP, HOLD, then RECV -> recv returns the RECV one */
    send_to(s, &a, "Drop", 4);
    send_to(s, &a, "Hold", 4);
    send_to(s, &a, "Recv1", 5);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 5, 0);
    CHECK(memcmp(buf, "Recv1", 5) == 0, "recv data");
    CHECK(c.calls == 3 && c.nheld == 1 && c.bad_info == 0, "calls %d held %d bad %d", c.calls, c.nheld, c.bad_info);
    /* the held packet's buffer is readable until freed */
    /* every receive call runs the callback */
    send_to(s, &a, "Recv2", 5);
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    CHECK_RC(recvfrom(r, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl), 5, 0);
    CHECK(fl == sizeof from && from.sin_addr.s_addr == htonl(INADDR_LOOPBACK), "recvfrom src");
    send_to(s, &a, "Recv3", 5);
    struct iovec iov = {buf, sizeof buf};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    CHECK_RC(recvmsg(r, &m, 0), 5, 0);
    send_to(s, &a, "Recv4", 5);
    CHECK_RC(read(r, buf, sizeof buf), 5, 0);
    send_to(s, &a, "Drop", 4);
    send_to(s, &a, "Recv5", 5);
    send_to(s, &a, "Recv6", 5);
    usleep(20000);
    struct mmsghdr mm[4];
    unsigned char mb[4][16];
    struct iovec mi[4];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 4; i++) { mi[i].iov_base = mb[i]; mi[i].iov_len = 16; mm[i].msg_hdr.msg_iov = &mi[i]; mm[i].msg_hdr.msg_iovlen = 1; }
    CHECK_RC(recvmmsg(r, mm, 4, 0, NULL), 2, 0);
    CHECK(memcmp(mb[0], "Recv5", 5) == 0 && memcmp(mb[1], "Recv6", 5) == 0, "recvmmsg data");
    send_to(s, &a, "Hold", 4);
    send_to(s, &a, "Recv7", 5);
    void *id;
    CHECK_RC(zc_recv(r, buf, sizeof buf, PYXLIO_MSG_XLIO_ZCOPY_FORCE, &id), 5, 0);
    CHECK(memcmp(get_ptr(buf + 24), "Recv7", 5) == 0, "zcopy data");
    CHECK_RC(free_one(r, id), 0, 0);
    CHECK(c.nheld == 2 && c.bad_info == 0, "held %d bad %d", c.nheld, c.bad_info);
    /* free the held packets (sz_iov = 0 entries) */
    CHECK_RC(free_one(r, c.held[0]), 0, 0);
    CHECK_RC(free_one(r, c.held[1]), 0, 0);
    api->dump_fd_stats(r, 3);
    /* blocking receive with only dropped datagrams keeps waiting until SO_RCVTIMEO */
    struct timeval tv = {0, 200000};
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    send_to(s, &a, "Drop", 4);
    double t0 = now_s();
    CHECK_RC(recv(r, buf, sizeof buf, 0), -1, EAGAIN);
    double dt = now_s() - t0;
    CHECK(dt > 0.15, "returned after %.3f s", dt);
    CHECK_RC(recv(r, buf, sizeof buf, MSG_DONTWAIT), -1, EAGAIN);
    /* O_NONBLOCK with only a dropped datagram pending */
    send_to(s, &a, "Drop", 4);
    usleep(10000);
    int ofl = fcntl(r, F_GETFL);
    CHECK(fcntl(r, F_SETFL, ofl | O_NONBLOCK) == 0, "O_NONBLOCK");
    CHECK_RC(recv(r, buf, sizeof buf, 0), -1, EAGAIN);
    CHECK(fcntl(r, F_SETFL, ofl) == 0, "blocking again");
    /* a signal without SA_RESTART interrupts the wait: EINTR, never retried inside */
    struct timeval none = {0, 0};
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    send_to(s, &a, "Drop", 4);
    ualarm(150000, 0);
    CHECK_RC(recv(r, buf, sizeof buf, 0), -1, EINTR);
    ualarm(150000, 0);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, NULL), -1, EINTR);
    CHECK(g_alarms == 2, "alarms %d", g_alarms);
    /* unregister: back to the plain path */
    CHECK_RC(api->register_recv_callback(r, NULL, NULL), 0, 0);
    int calls = c.calls;
    send_to(s, &a, "Drop", 4);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 4, 0);
    CHECK(c.calls == calls, "callback ran after unregister");
    close(r);
    close(s);
    return 0;
}

/* readiness never contradicts a receive call */
static int case_callback_poll(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    cb_ctx_t c = {.fd = r};
    CHECK_RC(api->register_recv_callback(r, verdict_cb, &c), 0, 0);
    unsigned char buf[64];
    struct pollfd pfd = {.fd = r, .events = POLLIN};
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = r}, out[4];
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, r, &ev) == 0, "epoll_ctl");
    fd_set rs;
    struct timeval tv;

    /* only dropped datagrams: nobody says readable, each waits its timeout */
    send_to(s, &a, "Drop", 4);
    send_to(s, &a, "Drop", 4);
    double t0 = now_s();
    CHECK_RC(poll(&pfd, 1, 100), 0, 0);
    CHECK(now_s() - t0 > 0.08, "poll returned early");
    send_to(s, &a, "Drop", 4);
    CHECK_RC(epoll_wait(ep, out, 4, 100), 0, 0);
    send_to(s, &a, "Drop", 4);
    FD_ZERO(&rs); FD_SET(r, &rs); tv.tv_sec = 0; tv.tv_usec = 100000;
    CHECK_RC(select(r + 1, &rs, NULL, NULL, &tv), 0, 0);
    struct timespec ts = {0, 100000000};
    send_to(s, &a, "Drop", 4);
    CHECK_RC(ppoll(&pfd, 1, &ts, NULL), 0, 0);
    CHECK_RC(recv(r, buf, sizeof buf, MSG_DONTWAIT), -1, EAGAIN);
    CHECK(c.calls == 5, "callback calls %d", c.calls);

    /* a RECV datagram: every API says readable, and recv gets it */
    send_to(s, &a, "Drop", 4);
    send_to(s, &a, "RecvA", 5);
    CHECK_RC(poll(&pfd, 1, 1000), 1, 0);
    CHECK(pfd.revents & POLLIN, "revents");
    CHECK_RC(epoll_wait(ep, out, 4, 1000), 1, 0);
    CHECK(out[0].data.fd == r && (out[0].events & EPOLLIN), "epoll event");
    FD_ZERO(&rs); FD_SET(r, &rs); tv.tv_sec = 1; tv.tv_usec = 0;
    CHECK_RC(select(r + 1, &rs, NULL, NULL, &tv), 1, 0);
    CHECK_RC(epoll_pwait(ep, out, 4, 0, NULL), 1, 0);
    CHECK_RC(recv(r, buf, sizeof buf, MSG_DONTWAIT), 5, 0);
    CHECK(memcmp(buf, "RecvA", 5) == 0, "data");
    CHECK_RC(poll(&pfd, 1, 0), 0, 0);
    CHECK_RC(epoll_wait(ep, out, 4, 0), 0, 0);
    /* a datagram arriving while poll waits wakes it */
    pid_t pid = fork();
    if (pid == 0) {
        usleep(100000);
        send_to(s, &a, "Drop", 4);
        usleep(50000);
        send_to(s, &a, "RecvB", 5);
        _exit(0);
    }
    t0 = now_s();
    CHECK_RC(poll(&pfd, 1, 3000), 1, 0);
    double dt = now_s() - t0;
    CHECK(dt > 0.1 && dt < 2.5, "woke after %.3f s", dt);
    int st;
    waitpid(pid, &st, 0);
    CHECK_RC(recv(r, buf, sizeof buf, MSG_DONTWAIT), 5, 0);
    CHECK(memcmp(buf, "RecvB", 5) == 0, "data B");
    /* MSG_PEEK keeps the datagram */
    send_to(s, &a, "RecvC", 5);
    CHECK_RC(recv(r, buf, sizeof buf, MSG_PEEK), 5, 0);
    CHECK_RC(poll(&pfd, 1, 0), 1, 0);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 5, 0);
    CHECK(memcmp(buf, "RecvC", 5) == 0, "data C");
    /* poll with mixed fds: a plain socket is reported too */
    struct sockaddr_in pa;
    int plain = udp_bound(&pa, 0);
    send_to(s, &pa, "plain", 5);
    usleep(10000);
    struct pollfd two[2] = {{.fd = r, .events = POLLIN}, {.fd = plain, .events = POLLIN}};
    CHECK_RC(poll(two, 2, 1000), 1, 0);
    CHECK(!(two[0].revents & POLLIN) && (two[1].revents & POLLIN), "mixed revents %x %x", two[0].revents, two[1].revents);
    /* POLLOUT of the callback socket is still reported with no data */
    pfd.events = POLLIN | POLLOUT;
    CHECK_RC(poll(&pfd, 1, 0), 1, 0);
    CHECK(pfd.revents == POLLOUT, "revents %x", pfd.revents);
    close(plain);
    close(ep);
    close(r);
    close(s);
    return 0;
}

/* ---- pool exhaustion -------------------------------------------------------------------- */
static int case_enomem(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 1), s = udp_sock(0);
    unsigned char buf[256];
    void *ids[4096];
    int n = 0;
    for (int i = 0; i < 200; i++) send_to(s, &a, "fill", 4);
    usleep(20000);
    for (;;) {
        int rc = zc_recv(r, buf, sizeof buf, 0, &ids[n]);
        if (rc < 0) { CHECK(errno == ENOMEM, "errno %d", errno); break; }
        n++;
        CHECK(n < 4096, "pool never exhausted");
    }
    printf("held=%d\n", n);
    CHECK(n > 0 && n < 200, "n %d", n);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, NULL), -1, ENOMEM);
    /* free one: the next datagram (still in the kernel) comes back */
    CHECK_RC(free_one(r, ids[--n]), 0, 0);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &ids[n]), 4, 0);
    int total = n + 2; /* the freed one and the one received after it */
    n++;
    for (int i = 0; i < n; i++) CHECK_RC(free_one(r, ids[i]), 0, 0);
    for (;;) {
        void *id;
        int rc = zc_recv(r, buf, sizeof buf, 0, &id);
        if (rc < 0) { CHECK(errno == EAGAIN, "errno %d", errno); break; }
        CHECK_RC(free_one(r, id), 0, 0);
        total++;
    }
    CHECK(total == 200, "received %d of 200", total);
    close(r);
    close(s);
    return 0;
}

/* ---- a small pool serves again once its buffers are free (issue 8, item 3) ------------- */
/* Idle threads keep their spare buffers; the pool must still hand a datagram of any size to
 * another thread when every packet is free. */
typedef struct { int done; int ready; pthread_mutex_t mu; pthread_cond_t cv; } idle_t;
static idle_t g_idle = {0, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void *idle_receiver(void *v) {
    (void)v;
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256];
    void *id;
    send_to(s, &a, "idle", 4);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 4, 0);
    CHECK_RC(free_one(r, id), 0, 0);
    pthread_mutex_lock(&g_idle.mu);
    g_idle.ready++;
    pthread_cond_broadcast(&g_idle.cv);
    while (!g_idle.done) pthread_cond_wait(&g_idle.cv, &g_idle.mu);
    pthread_mutex_unlock(&g_idle.mu);
    close(r);
    close(s);
    return NULL;
}

static void big_roundtrip(int r, int s, const struct sockaddr_in *a, size_t size, unsigned seed) {
    static unsigned char msg[65507], out[65507], zbuf[24 + 16 * 1100];
    fill_pattern(msg, size, seed);
    send_to(s, a, msg, size);
    void *id;
    int flags = 0;
    int rc = api->recvfrom_zcopy(r, zbuf, sizeof zbuf, &flags, NULL, NULL);
    CHECK(rc == (int)size, "datagram of %zu bytes: rc %d", size, rc);
    id = get_ptr(zbuf + 8);
    size_t nf;
    CHECK(gather(zbuf, out, sizeof out, &nf) == size && memcmp(out, msg, size) == 0, "payload %zu", size);
    CHECK_RC(free_one(r, id), 0, 0);
}

static int case_pool_small(void) {
    need_api();
    enum { NT = 20 };
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) CHECK(pthread_create(&th[i], NULL, idle_receiver, NULL) == 0, "create");
    pthread_mutex_lock(&g_idle.mu);
    while (g_idle.ready < NT) pthread_cond_wait(&g_idle.cv, &g_idle.mu);
    pthread_mutex_unlock(&g_idle.mu);
    struct sockaddr_in a;
    int r = udp_bound(&a, 1), s = udp_sock(0);
    int sz = 1 << 20;
    setsockopt(r, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    /* every packet is free: the biggest datagram and a middle one come through */
    big_roundtrip(r, s, &a, 65507, 1);
    big_roundtrip(r, s, &a, 10000, 2);
    /* exhaust the pool with small datagrams, then free everything: it serves again */
    unsigned char buf[256];
    void *ids[4096];
    int n = 0;
    for (int i = 0; i < 300; i++) send_to(s, &a, "fill", 4);
    usleep(20000);
    for (;;) {
        int rc = zc_recv(r, buf, sizeof buf, 0, &ids[n]);
        if (rc < 0) { CHECK(errno == ENOMEM, "errno %d", errno); break; }
        n++;
        CHECK(n < 4096, "pool never exhausted");
    }
    printf("held=%d\n", n);
    CHECK(n > 0 && n < 300, "n %d", n);
    for (int i = 0; i < n; i++) CHECK_RC(free_one(r, ids[i]), 0, 0);
    int drained = 0;
    for (;;) {
        void *id;
        int rc = zc_recv(r, buf, sizeof buf, 0, &id);
        if (rc < 0) { CHECK(errno == EAGAIN, "errno %d after %d", errno, drained); break; }
        CHECK_RC(free_one(r, id), 0, 0);
        drained++;
    }
    CHECK(n + drained == 300, "received %d + %d of 300", n, drained);
    big_roundtrip(r, s, &a, 65507, 3);
    pthread_mutex_lock(&g_idle.mu);
    g_idle.done = 1;
    pthread_cond_broadcast(&g_idle.cv);
    pthread_mutex_unlock(&g_idle.mu);
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    /* and after the threads are gone */
    big_roundtrip(r, s, &a, 65507, 4);
    close(r);
    close(s);
    return 0;
}

/* ---- canary: a packet back in the pool reads 0xDB (issue 8, item 5) ------------------- */
static int all_canary(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0xDB) return 0;
    return 1;
}

typedef struct { const unsigned char *view; size_t len; void *held; } canary_cb_t;

static pyxlio_verdict_t canary_cb(int fd, size_t sz_iov, struct iovec iov[], pyxlio_recv_info_t *info,
                                  void *context) {
    (void)fd; (void)sz_iov;
    canary_cb_t *c = context;
    const char *d = iov[0].iov_base;
    if (d[0] == 'D') { c->view = iov[0].iov_base; c->len = iov[0].iov_len; return PYXLIO_PACKET_DROP; }
    if (d[0] == 'H') { c->held = info->packet_id; return PYXLIO_PACKET_HOLD; }
    return PYXLIO_PACKET_RECV;
}

static int case_canary(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256], msg[3000];
    void *id;
    /* freed by recvfrom_zcopy_free_packets (a fragmented datagram: every fragment) */
    memset(msg, 'A', sizeof msg);
    send_to(s, &a, msg, sizeof msg);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 3000, 0);
    size_t nf = get_u64(buf + 16);
    const unsigned char *views[8];
    size_t lens[8];
    CHECK(nf >= 2 && nf <= 8, "fragments %zu", nf);
    const pyxlio_zc_packet_t *pk = (const pyxlio_zc_packet_t *)(const void *)(buf + 8);
    for (size_t k = 0; k < nf; k++) { views[k] = pyxlio_zc_iov_base(pk, k); lens[k] = pyxlio_zc_iov_len(pk, k); }
    CHECK(views[0][0] == 'A' && views[nf - 1][lens[nf - 1] - 1] == 'A', "payload before free");
    CHECK_RC(free_one(r, id), 0, 0);
    for (size_t k = 0; k < nf; k++) CHECK(all_canary(views[k], lens[k]), "fragment %zu not 0xDB after free", k);
    printf("canary after free\n");
    /* dropped by a callback; held by a callback then freed */
    canary_cb_t c = {0};
    CHECK_RC(api->register_recv_callback(r, canary_cb, &c), 0, 0);
    send_to(s, &a, "Dropped", 7);
    send_to(s, &a, "Held", 4);
    send_to(s, &a, "Recv", 4);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 4, 0);
    CHECK(c.view && c.len == 7 && all_canary(c.view, c.len), "dropped packet not 0xDB");
    CHECK(c.held, "no held packet");
    CHECK_RC(free_one(r, c.held), 0, 0);
    printf("canary after drop\n");
    CHECK_RC(api->register_recv_callback(r, NULL, NULL), 0, 0);
    /* reclaimed at close (a leak: reported, strict exit 86) */
    memset(msg, 'C', 100);
    send_to(s, &a, msg, 100);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 100, 0);
    const unsigned char *v = get_ptr(buf + 24);
    CHECK(v[0] == 'C', "payload before close");
    close(r);
    CHECK(all_canary(v, 100), "reclaimed packet not 0xDB");
    printf("canary after close\n");
    close(s);
    return 0;
}

/* ---- receive flags of recvfrom_zcopy (issue 8, item 6) -------------------------------- */
static int zc_flags(int fd, unsigned char *buf, size_t len, int flags) {
    int f = flags;
    return api->recvfrom_zcopy(fd, buf, len, &f, NULL, NULL);
}

static int case_zcopy_flags(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 1), s = udp_sock(0);
    unsigned char buf[256], cp[64];
    /* MSG_PEEK: the datagram stays; the view is the queued packet's */
    CHECK_RC(zc_flags(r, buf, sizeof buf, MSG_PEEK), -1, EAGAIN);
    send_to(s, &a, "peek1", 5);
    usleep(10000);
    CHECK_RC(zc_flags(r, buf, sizeof buf, MSG_PEEK), 5, 0);
    void *pid = get_ptr(buf + 8);
    CHECK(memcmp(get_ptr(buf + 24), "peek1", 5) == 0, "peeked data");
    CHECK_RC(zc_flags(r, buf, sizeof buf, MSG_PEEK), 5, 0);
    CHECK(get_ptr(buf + 8) == pid, "a second peek sees another packet");
    printf("case peek-free\n");
    fflush(stdout);
    CHECK_RC(free_one(r, pid), -1, ENOENT);          /* still queued: not the caller's to free */
    void *id;
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 5, 0);
    CHECK(memcmp(get_ptr(buf + 24), "peek1", 5) == 0, "data after peek");
    CHECK_RC(free_one(r, id), 0, 0);
    CHECK_RC(zc_flags(r, buf, sizeof buf, 0), -1, EAGAIN);
    /* a peek, then a copy receive gets the same datagram */
    send_to(s, &a, "peek2", 5);
    usleep(10000);
    CHECK_RC(zc_flags(r, buf, sizeof buf, MSG_PEEK | PYXLIO_MSG_XLIO_ZCOPY_FORCE), 5, 0);
    CHECK_RC(recv(r, cp, sizeof cp, 0), 5, 0);
    CHECK(memcmp(cp, "peek2", 5) == 0, "copy after peek");
    CHECK_RC(recv(r, cp, sizeof cp, 0), -1, EAGAIN);
    /* MSG_TRUNC: the whole datagram's length even when not every fragment is listed */
    static unsigned char big[3000];
    fill_pattern(big, sizeof big, 4);
    send_to(s, &a, big, sizeof big);
    send_to(s, &a, big, sizeof big);
    usleep(10000);
    CHECK_RC(zc_recv(r, buf, 40, 0, &id), 1472, 0);
    CHECK(get_u64(buf + 16) == 1, "sz_iov");
    CHECK_RC(free_one(r, id), 0, 0);
    CHECK_RC(zc_recv(r, buf, 40, MSG_TRUNC, &id), 3000, 0);
    CHECK(get_u64(buf + 16) == 1, "sz_iov");
    CHECK_RC(free_one(r, id), 0, 0);
    /* MSG_WAITALL: ignored for UDP (one datagram) */
    send_to(s, &a, "w", 1);
    usleep(10000);
    CHECK_RC(zc_recv(r, buf, sizeof buf, MSG_WAITALL, &id), 1, 0);
    CHECK_RC(free_one(r, id), 0, 0);
    /* MSG_ERRQUEUE on an offloaded socket: refused, the datagram stays */
    send_to(s, &a, "errq", 4);
    usleep(10000);
    printf("case udp-errqueue\n");
    fflush(stdout);
    CHECK_RC(zc_flags(r, buf, sizeof buf, MSG_ERRQUEUE), -1, EINVAL);
    CHECK_RC(recv(r, cp, sizeof cp, 0), 4, 0);
    /* not offloaded: the kernel's flags (MSG_PEEK copies and keeps the datagram) */
    CHECK_RC(api->thread_offload(0, pthread_self()), 0, 0);
    struct sockaddr_in ka;
    int k = udp_bound(&ka, 1);
    CHECK_RC(api->thread_offload(1, pthread_self()), 0, 0);
    send_to(s, &ka, "kern", 4);
    usleep(10000);
    memset(buf, 0, sizeof buf);
    CHECK_RC(zc_flags(k, buf, sizeof buf, MSG_PEEK), 4, 0);
    CHECK(memcmp(buf, "kern", 4) == 0, "kernel peek");
    CHECK_RC(zc_flags(k, buf, sizeof buf, MSG_ERRQUEUE), -1, EAGAIN);   /* empty error queue */
    CHECK_RC(recv(k, cp, sizeof cp, 0), 4, 0);
    close(k);
    /* the feed: a peek does not advance the sequence */
    const char *feed = getenv("PYXLIO_EMU_FEED");
    if (feed) {
        int f = udp_sock(0);
        struct sockaddr_in fa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(feed)),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        CHECK(bind(f, (struct sockaddr *)&fa, sizeof fa) == 0, "bind feed");
        uint64_t seq;
        for (int i = 0; i < 2; i++) {
            CHECK_RC(zc_flags(f, buf, sizeof buf, MSG_PEEK), 64, 0);
            memcpy(&seq, get_ptr(buf + 24), 8);
            CHECK(__builtin_bswap64(seq) == 0, "peek seq %llu", (unsigned long long)__builtin_bswap64(seq));
        }
        for (uint64_t i = 0; i < 2; i++) {
            CHECK_RC(zc_recv(f, buf, sizeof buf, 0, &id), 64, 0);
            memcpy(&seq, get_ptr(buf + 24), 8);
            CHECK(__builtin_bswap64(seq) == i, "seq %llu want %llu", (unsigned long long)__builtin_bswap64(seq),
                  (unsigned long long)i);
            CHECK_RC(free_one(f, id), 0, 0);
        }
        close(f);
        printf("feed peek checked\n");
    }
    close(r);
    /* TCP: MSG_PEEK, MSG_WAITALL and MSG_ERRQUEUE are refused; the data stays */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in ta = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(l, (struct sockaddr *)&ta, sizeof ta) == 0 && listen(l, 4) == 0, "listen");
    socklen_t al = sizeof ta;
    getsockname(l, (struct sockaddr *)&ta, &al);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c, (struct sockaddr *)&ta, sizeof ta) == 0, "connect");
    int t = accept(l, NULL, NULL);
    CHECK(t >= 0, "accept");
    CHECK(send(c, "stream", 6, 0) == 6, "send");
    usleep(10000);
    printf("case tcp-flags\n");
    fflush(stdout);
    CHECK_RC(zc_flags(t, buf, sizeof buf, MSG_PEEK), -1, EINVAL);
    CHECK_RC(zc_flags(t, buf, sizeof buf, MSG_WAITALL), -1, EINVAL);
    CHECK_RC(zc_flags(t, buf, sizeof buf, MSG_ERRQUEUE), -1, EINVAL);
    CHECK_RC(recv(t, cp, sizeof cp, 0), 6, 0);
    CHECK(memcmp(cp, "stream", 6) == 0, "stream data kept");
    close(t);
    close(c);
    close(l);
    close(s);
    return 0;
}

/* ---- is a port offloaded? (EMU_CHECK_PORT, EMU_CHECK_WANT=os|offload) ------------------ */
static int case_conf_port(void) {
    need_api();
    const char *port = getenv("EMU_CHECK_PORT"), *want = getenv("EMU_CHECK_WANT");
    CHECK(port && want, "run with EMU_CHECK_PORT and EMU_CHECK_WANT");
    int r = udp_sock(0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(r, (struct sockaddr *)&a, sizeof a) == 0, "bind %s", port);
    int rings = api->get_socket_rings_num(r);
    printf("port %s %s\n", port, rings ? "offload" : "os");
    CHECK(rings == (strcmp(want, "os") ? 1 : 0), "port %s: rings %d, want %s", port, rings, want);
    close(r);
    return 0;
}

/* ---- rules ------------------------------------------------------------------------------ */
static int case_rules(void) {
    need_api();
    const char *cfport = getenv("EMU_CHECK_CONF_PORT"); /* the config file says use os for it */
    unsigned char buf[256];
    int flags;
    /* syntax */
    CHECK_RC(api->add_conf_rule("use os udp_receiver 127.0.0.1:40001\n"), 0, 0);
    CHECK_RC(api->add_conf_rule("use vma udp_receiver 127.0.0.0/8:40002-40003"), 0, 0);
    CHECK_RC(api->add_conf_rule("use os udp_receiver *:40003"), 0, 0); /* head: wins over vma */
    /* client roles name the remote address first, then (optionally) the local one */
    CHECK_RC(api->add_conf_rule("use * tcp_client 127.0.0.1:40010:*:*"), 0, 0);
    CHECK_RC(api->add_conf_rule("use os udp_connect 127.0.0.1:40020"), 0, 0);
    CHECK_RC(api->add_conf_rule("use os udp_connect 127.0.0.1:40022:127.0.0.1:1-1023"), 0, 0);
    /* sdp / sa rules are never matched: the older os rule still decides for 40007 */
    CHECK_RC(api->add_conf_rule("use os udp_receiver *:40007"), 0, 0);
    CHECK_RC(api->add_conf_rule("use sdp udp_receiver *:40007"), 0, 0);
    CHECK_RC(api->add_conf_rule("use os tcp_server *:40030"), 0, 0);
    struct { const char *port; int os; } cases[] = {{"40001", 1}, {"40002", 0}, {"40003", 1}, {"40004", 0},
                                                    {"40007", 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int r = udp_sock(0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(cases[i].port)),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        CHECK(bind(r, (struct sockaddr *)&a, sizeof a) == 0, "bind %s", cases[i].port);
        /* a datagram: a kernel-served socket answers FORCE with EIO (and keeps it) */
        int tx = udp_sock(0);
        send_to(tx, &a, "r", 1);
        close(tx);
        usleep(2000);
        flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE | MSG_DONTWAIT;
        int rc = api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL);
        CHECK(cases[i].os ? rc == -1 && errno == EIO : rc == 1, "port %s: rc %d errno %d", cases[i].port, rc, errno);
        if (!cases[i].os) CHECK_RC(free_one(r, get_ptr(buf + 8)), 0, 0);
        else CHECK_RC(recv(r, buf, sizeof buf, MSG_DONTWAIT), 1, 0);
        CHECK_RC(api->get_socket_rings_num(r), cases[i].os ? 0 : 1, 0);
        close(r);
    }
    /* udp_connect (remote[, local]) */
    int c = udp_sock(0);
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons(40020), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(connect(c, (struct sockaddr *)&d, sizeof d) == 0, "connect");
    CHECK_RC(send(c, "x", 1, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    close(c);
    c = udp_sock(0);
    d.sin_port = htons(40021);
    CHECK(connect(c, (struct sockaddr *)&d, sizeof d) == 0, "connect");
    CHECK_RC(send(c, "x", 1, PYXLIO_SND_FLAGS_DUMMY), 1, 0);
    close(c);
    /* 40022's rule also names the local port range 1-1023: an ephemeral local port misses it */
    c = udp_sock(0);
    d.sin_port = htons(40022);
    CHECK(connect(c, (struct sockaddr *)&d, sizeof d) == 0, "connect");
    CHECK_RC(send(c, "x", 1, PYXLIO_SND_FLAGS_DUMMY), 1, 0);
    close(c);
    /* tcp_server */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(40030), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(l, (struct sockaddr *)&la, sizeof la) == 0 && listen(l, 4) == 0, "listen");
    CHECK_RC(api->get_socket_rings_num(l), 0, 0);
    close(l);
    /* a rule only applies to sockets created after it */
    int early = udp_sock(0);
    CHECK_RC(api->add_conf_rule("use os udp_receiver *:40005"), 0, 0);
    struct sockaddr_in e = {.sin_family = AF_INET, .sin_port = htons(40005), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(early, (struct sockaddr *)&e, sizeof e) == 0, "bind early");
    CHECK_RC(api->get_socket_rings_num(early), 1, 0);
    close(early);
    /* the config file's rule */
    if (cfport) {
        int r = udp_sock(0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(cfport)), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        CHECK(bind(r, (struct sockaddr *)&a, sizeof a) == 0, "bind cf");
        CHECK_RC(api->get_socket_rings_num(r), 0, 0);
        close(r);
        printf("config rule checked\n");
    }
    /* syntax errors poison the parser */
    const char *bad[] = {"use xlio udp_receiver *:1", "use os udp_receiver 1.2.3.4", "use os foo *:1",
                         "use os udp_receiver 1.2.3.4/33:1", "use os udp_receiver *:70000", "os udp_receiver *:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECK_RC(api->add_conf_rule(bad[i]), 1, 0);
    CHECK_RC(api->add_conf_rule("use os udp_receiver *:40006"), 1, 0);
    printf("poisoned\n");
    return 0;
}

static int case_rule_syntax(void) {
    need_api();
    const char *line = getenv("EMU_CHECK_RULE");
    int rc = api->add_conf_rule(line);
    printf("rc=%d\n", rc);
    return 0;
}

/* ---- TCP -------------------------------------------------------------------------------- */
static int case_tcp(void) {
    need_api();
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 4) == 0, "listen");
    socklen_t al = sizeof a;
    getsockname(l, (struct sockaddr *)&a, &al);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept");
    CHECK_RC(api->get_socket_rings_num(s), 1, 0);
    static unsigned char msg[5000], got[5000];
    fill_pattern(msg, sizeof msg, 5);
    CHECK(send(c, msg, sizeof msg, 0) == (ssize_t)sizeof msg, "send");
    unsigned char buf[1024];
    int flags = 0;
    CHECK_RC(api->recvfrom_zcopy(s, buf, 39, &flags, NULL, NULL), -1, ENOBUFS);
    size_t total = 0;
    while (total < sizeof msg) {
        flags = 0;
        int rc = api->recvfrom_zcopy(s, buf, sizeof buf, &flags, NULL, NULL);
        CHECK(rc > 0, "rc %d", rc);
        CHECK(flags & PYXLIO_MSG_XLIO_ZCOPY, "flags");
        size_t np = get_u64(buf), sum = 0;
        CHECK(np >= 1, "packets");
        pyxlio_zc_packets_t *pp = (pyxlio_zc_packets_t *)(void *)buf;
        pyxlio_zc_packet_t *p = pyxlio_zc_first(pp);
        for (size_t i = 0; i < np; i++) {
            for (size_t k = 0; k < p->sz_iov; k++) {
                size_t n = pyxlio_zc_iov_len(p, k);
                memcpy(got + total + sum, pyxlio_zc_iov_base(p, k), n);
                sum += n;
            }
            if (i + 1 < np) p = pyxlio_zc_next(p);
        }
        CHECK(sum == (size_t)rc, "sum %zu rc %d", sum, rc);
        total += sum;
        /* TCP walks the real stride */
        CHECK_RC(api->recvfrom_zcopy_free_packets(s, (pyxlio_zc_packet_t *)(void *)(buf + 8), np), 0, 0);
        printf("tcp chunk %d bytes in %zu packets\n", rc, np);
    }
    CHECK(memcmp(got, msg, sizeof msg) == 0, "stream data");
    /* small buffer: one packet */
    CHECK(send(c, msg, 3000, 0) == 3000, "send");
    usleep(10000);
    flags = 0;
    int rc = api->recvfrom_zcopy(s, buf, 40, &flags, NULL, NULL);
    CHECK(rc > 0 && get_u64(buf) == 1, "one packet rc %d", rc);
    CHECK_RC(api->recvfrom_zcopy_free_packets(s, (pyxlio_zc_packet_t *)(void *)(buf + 8), 1), 0, 0);
    char drain[5000];
    CHECK(recv(s, drain, sizeof drain, 0) == 3000 - rc, "drain");
    /* EOF */
    close(c);
    flags = 0;
    CHECK_RC(api->recvfrom_zcopy(s, buf, sizeof buf, &flags, NULL, NULL), 0, 0);
    CHECK_RC(send(s, "d", 1, PYXLIO_SND_FLAGS_DUMMY), 1, 0);
    close(s);
    close(l);
    return 0;
}

/* ---- fork ------------------------------------------------------------------------------- */
static int case_fork(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256];
    void *id;
    send_to(s, &a, "parent", 6);
    CHECK_RC(zc_recv(r, buf, sizeof buf, 0, &id), 6, 0);
    /* child 1: frees the parent's packet -> ENOENT; never a crash */
    pid_t pid = fork();
    if (pid == 0) {
        errno = 0;
        int rc = free_one(r, id);
        _exit(rc == -1 && errno == ENOENT ? 0 : 1);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child 1 status %#x", st);
    /* child 2: receives and frees its own packets, exits normally (strict): the parent's
       outstanding packet is not its leak */
    pid = fork();
    if (pid == 0) {
        void *cid;
        send_to(s, &a, "child", 5);
        if (zc_recv(r, buf, sizeof buf, 0, &cid) != 5) exit(3);
        if (free_one(r, cid) != 0) exit(4);
        exit(0);
    }
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child 2 status %#x", st);
    /* child 3: leaks its own packet: strict exit 86 */
    pid = fork();
    if (pid == 0) {
        void *cid;
        send_to(s, &a, "leak", 4);
        if (zc_recv(r, buf, sizeof buf, 0, &cid) != 4) exit(3);
        exit(0);
    }
    waitpid(pid, &st, 0);
    printf("child 3 status %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    /* the parent still frees its own packet */
    CHECK_RC(free_one(r, id), 0, 0);
    close(r);
    close(s);
    return 0;
}

/* ---- threads ---------------------------------------------------------------------------- */
#define TPKTS 3000
typedef struct { int r; int s; struct sockaddr_in a; int got; } tharg_t;

static void *recv_free_thread(void *v) {
    tharg_t *t = v;
    unsigned char buf[256];
    unsigned char msg[100];
    memset(msg, 'x', sizeof msg);
    for (int i = 0; i < TPKTS; i++) {
        send_to(t->s, &t->a, msg, 1 + i % 100);
        void *id;
        int rc = zc_recv(t->r, buf, sizeof buf, 0, &id);
        CHECK(rc == 1 + i % 100, "rc %d", rc);
        CHECK(free_one(t->r, id) == 0, "free");
        t->got++;
    }
    return NULL;
}

typedef struct { int r; void **ids; int n; int done; pthread_mutex_t mu; } shared_t;

static void *shared_receiver(void *v) {
    shared_t *sh = v;
    unsigned char buf[256];
    for (;;) {
        void *id;
        int rc = zc_recv(sh->r, buf, sizeof buf, 0, &id);
        if (rc < 0) { CHECK(errno == EAGAIN, "errno"); break; }
        pthread_mutex_lock(&sh->mu);
        sh->ids[sh->n++] = id;
        pthread_mutex_unlock(&sh->mu);
    }
    return NULL;
}

static void *shared_freer(void *v) {
    shared_t *sh = v;
    int freed = 0;
    for (;;) {
        void *id = NULL;
        pthread_mutex_lock(&sh->mu);
        if (freed < sh->n) id = sh->ids[freed];
        int done = sh->done;
        pthread_mutex_unlock(&sh->mu);
        if (id) { CHECK(free_one(sh->r, id) == 0, "free shared"); freed++; continue; }
        if (done) break;
        usleep(100);
    }
    return NULL;
}

static int case_threads(void) {
    need_api();
    enum { NT = 4 };
    pthread_t th[NT];
    tharg_t ta[NT];
    for (int i = 0; i < NT; i++) {
        ta[i].r = udp_bound(&ta[i].a, 0);
        ta[i].s = udp_sock(0);
        ta[i].got = 0;
        CHECK(pthread_create(&th[i], NULL, recv_free_thread, &ta[i]) == 0, "create");
    }
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NT; i++) { CHECK(ta[i].got == TPKTS, "thread %d got %d", i, ta[i].got); close(ta[i].r); close(ta[i].s); }
    /* one socket, two receivers, one freer */
    struct sockaddr_in a;
    int r = udp_bound(&a, 1), s = udp_sock(0);
    int sz = 4 << 20;
    setsockopt(r, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    shared_t sh = {.r = r, .ids = calloc(100000, sizeof(void *)), .mu = PTHREAD_MUTEX_INITIALIZER};
    pthread_t f, rx[2];
    CHECK(pthread_create(&f, NULL, shared_freer, &sh) == 0, "freer");
    int total = 0;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 200; i++) send_to(s, &a, "shared", 6);
        usleep(2000);
        for (int k = 0; k < 2; k++) CHECK(pthread_create(&rx[k], NULL, shared_receiver, &sh) == 0, "rx");
        for (int k = 0; k < 2; k++) pthread_join(rx[k], NULL);
        total += 200;
    }
    pthread_mutex_lock(&sh.mu);
    sh.done = 1;
    pthread_mutex_unlock(&sh.mu);
    pthread_join(f, NULL);
    CHECK(sh.n == total, "received %d of %d", sh.n, total);
    /* all unique */
    free(sh.ids);
    close(r);
    close(s);
    printf("threads ok\n");
    return 0;
}

/* ---- run under CPython-like patterns: nonblocking poll loop ----------------------------- */
static int case_passthrough(void) {
    /* a plain program's sockets work unchanged under the emulator */
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    send_to(s, &a, "plain", 5);
    struct pollfd p = {.fd = r, .events = POLLIN};
    CHECK_RC(poll(&p, 1, 1000), 1, 0);
    char buf[16];
    CHECK_RC(recv(r, buf, sizeof buf, 0), 5, 0);
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    CHECK_RC(write(fds[1], "pipe", 4), 4, 0);
    CHECK_RC(read(fds[0], buf, sizeof buf), 4, 0);
    close(fds[0]); close(fds[1]);
    close(r); close(s);
    return 0;
}

/* ---- return values as libxlio 3.51.1 gives them (fact sheet section 9), in every
 * PYXLIO_EMU_OFFLOAD mode: loopback sockets are offloaded with "all" only, a socket on the
 * wildcard address with any mode but "none" */
static int tcp_listener(struct sockaddr_in *a, uint32_t addr) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(l >= 0, "socket");
    struct sockaddr_in b = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(addr)};
    CHECK(bind(l, (struct sockaddr *)&b, sizeof b) == 0 && listen(l, 4) == 0, "listen");
    socklen_t al = sizeof *a;
    CHECK(getsockname(l, (struct sockaddr *)a, &al) == 0, "getsockname");
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return l;
}

static int case_returns(void) {
    need_api();
    const char *mode = getenv("PYXLIO_EMU_OFFLOAD");
    if (!mode || !*mode) mode = "all";
    int ring = !strcmp(mode, "all"), any_ring = strcmp(mode, "none") != 0;
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    /* before the global init */
    CHECK_RC(api->dump_fd_stats(p[0], 3), -1, EINVAL);
    struct sockaddr_in a;
    int u = udp_sock(0);                    /* starts it */
    /* a descriptor that is not a socket, an fd nobody opened */
    CHECK_RC(api->register_recv_callback(p[0], hold_cb, NULL), -1, EINVAL);
    CHECK_RC(api->register_recv_callback(12345, NULL, NULL), -1, EINVAL);
    CHECK_RC(api->get_socket_rings_num(p[0]), 0, 0);        /* sock-extra.cpp: 0 */
    CHECK_RC(api->dump_fd_stats(p[0], 3), 0, 0);
    CHECK_RC(api->dump_fd_stats(12345, 3), 0, 0);
    int rf[2];
    CHECK_RC(api->get_socket_rings_fds(p[0], rf, 2), 0, 0);
    CHECK_RC(api->get_socket_rings_fds(p[0], rf, 0), -1, EINVAL);
    CHECK_RC(api->get_socket_rings_fds(p[0], NULL, 2), -1, EINVAL);
    /* UDP: unbound -1, then bound */
    int calls = 0;
    CHECK_RC(api->register_recv_callback(u, hold_cb, &calls), 0, 0);
    CHECK_RC(api->get_socket_rings_num(u), -1, EINVAL);
    CHECK_RC(api->dump_fd_stats(u, 3), 0, 0);
    int r = udp_bound(&a, 0);
    CHECK_RC(api->get_socket_rings_num(r), ring, 0);
    CHECK_RC(api->get_socket_rings_fds(r, rf, 2), ring, 0);
    CHECK_RC(api->register_recv_callback(r, hold_cb, &calls), 0, 0);
    CHECK_RC(api->register_recv_callback(r, NULL, NULL), 0, 0);
    /* a UDP socket bound by its first send */
    send_to(u, &a, "x", 1);
    CHECK_RC(api->get_socket_rings_num(u), any_ring, 0);   /* bound to the wildcard address */
    CHECK_RC(recv(r, rf, sizeof rf, 0), 1, 0);
    /* TCP: unconnected 0; listening, connected and accepted: a ring when offloaded */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_RC(api->get_socket_rings_num(t), 0, 0);
    CHECK_RC(api->register_recv_callback(t, hold_cb, &calls), 0, 0);   /* TCP too */
    int l = tcp_listener(&a, INADDR_LOOPBACK);
    CHECK_RC(api->get_socket_rings_num(l), ring, 0);
    CHECK(connect(t, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    int c = accept(l, NULL, NULL);
    CHECK(c >= 0, "accept");
    CHECK_RC(api->get_socket_rings_num(t), ring, 0);
    CHECK_RC(api->get_socket_rings_num(c), ring, 0);
    CHECK_RC(api->register_recv_callback(c, hold_cb, &calls), 0, 0);
    CHECK_RC(send(t, "tcp", 3, 0), 3, 0);
    char buf[8];
    CHECK_RC(recv(c, buf, sizeof buf, 0), 3, 0);
    CHECK(calls == 0, "a callback ran (%d)", calls);
    close(c); close(t); close(l); close(r); close(u);
    /* closed: unknown again */
    CHECK_RC(api->register_recv_callback(u, NULL, NULL), -1, EINVAL);
    close(p[0]); close(p[1]);
    return 0;
}

/* ---- PYXLIO_EMU_OFFLOAD=none: every socket served by the kernel, as a real XLIO host ----- */
static double g_t0;
static int recvmmsg_n(int fd, unsigned char (*b)[16], unsigned n, int flags, int raw) {
    struct mmsghdr mm[8];
    struct iovec mi[8];
    memset(mm, 0, sizeof mm);
    for (unsigned i = 0; i < n; i++) {
        mi[i].iov_base = b[i]; mi[i].iov_len = 16;
        mm[i].msg_hdr.msg_iov = &mi[i]; mm[i].msg_hdr.msg_iovlen = 1;
    }
    int rc = raw ? (int)syscall(SYS_recvmmsg, fd, mm, n, flags, NULL) : recvmmsg(fd, mm, n, flags, NULL);
    for (int i = 0; i < rc; i++) b[i][15] = (unsigned char)mm[i].msg_len;
    return rc;
}

static int case_os_mode(void) {
    need_api();
    struct sockaddr_in a;
    int r = udp_bound(&a, 0), s = udp_sock(0);
    unsigned char buf[256];
    int flags, calls = 0;
    CHECK_RC(api->get_socket_rings_num(r), 0, 0);
    CHECK_RC(api->register_recv_callback(r, hold_cb, &calls), 0, 0);
    /* recvfrom_zcopy: FORCE -> EIO (the datagram stays), else a copy with ZCOPY clear */
    flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE | MSG_DONTWAIT;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EAGAIN);
    send_to(s, &a, "Hold1", 5);
    usleep(10000);
    flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EIO);
    flags = PYXLIO_MSG_XLIO_ZCOPY;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), 5, 0);
    CHECK(!(flags & PYXLIO_MSG_XLIO_ZCOPY) && memcmp(buf, "Hold1", 5) == 0, "copy");
    send_to(s, &a, "Hold2", 5);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 5, 0);
    CHECK(calls == 0, "the callback ran on a kernel-served socket");
    /* dummy sends: -1/EINVAL, nothing sent */
    CHECK(connect(s, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    CHECK_RC(api->get_socket_rings_num(s), 0, 0);
    CHECK_RC(send(s, "dummy", 5, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    struct mmsghdr one;
    struct iovec oi = {"d", 1};
    memset(&one, 0, sizeof one);
    one.msg_hdr.msg_iov = &oi;
    one.msg_hdr.msg_iovlen = 1;
    CHECK_RC(sendmmsg(s, &one, 1, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    CHECK_RC(recv(r, buf, sizeof buf, MSG_DONTWAIT), -1, EAGAIN);
    /* recvmmsg through the wrapper: one datagram a call (zeroed timeout), raw: the batch */
    unsigned char mb[8][16];
    for (int i = 0; i < 5; i++) CHECK_RC(send(s, "m", 1, 0), 1, 0);
    usleep(20000);
    for (int i = 0; i < 3; i++) CHECK_RC(recvmmsg_n(r, mb, 8, 0, 0), 1, 0);
    CHECK_RC(recvmmsg_n(r, mb, 8, MSG_WAITFORONE, 0), 1, 0);
    CHECK_RC(recvmmsg_n(r, mb, 8, 0, 0), 1, 0);
    CHECK_RC(recvmmsg_n(r, mb, 8, MSG_DONTWAIT, 0), -1, EAGAIN);
    for (int i = 0; i < 4; i++) CHECK_RC(send(s, "m", 1, 0), 1, 0);
    usleep(20000);
    CHECK_RC(recvmmsg_n(r, mb, 8, MSG_DONTWAIT, 1), 4, 0);
    /* a zero-length datagram blocks the socket for the wrappers (FIONREAD is 0) */
    CHECK_RC(send(s, "", 0, 0), 0, 0);
    CHECK_RC(send(s, "after", 5, 0), 5, 0);
    usleep(20000);
    int n = -1;
    CHECK(ioctl(r, FIONREAD, &n) == 0 && n == 0, "FIONREAD %d", n);
    struct pollfd pfd = {.fd = r, .events = POLLIN};
    CHECK_RC(poll(&pfd, 1, 0), 1, 0);                 /* the kernel says readable */
    CHECK_RC(recv(r, buf, sizeof buf, MSG_DONTWAIT), -1, EAGAIN);
    CHECK_RC(recvfrom(r, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL), -1, EAGAIN);
    struct iovec iov = {buf, sizeof buf};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    CHECK_RC(recvmsg(r, &m, MSG_DONTWAIT), -1, EAGAIN);
    CHECK_RC(recvmmsg_n(r, mb, 8, MSG_DONTWAIT, 0), -1, EAGAIN);
    flags = MSG_DONTWAIT;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EAGAIN);
    int ofl = fcntl(r, F_GETFL);
    CHECK(fcntl(r, F_SETFL, ofl | O_NONBLOCK) == 0, "O_NONBLOCK");
    CHECK_RC(read(r, buf, sizeof buf), -1, EAGAIN);
    CHECK(fcntl(r, F_SETFL, ofl) == 0, "blocking again");
    /* blocking: waits until SO_RCVTIMEO, or a signal */
    struct timeval tv = {0, 200000};
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    g_t0 = now_s();
    CHECK_RC(recv(r, buf, sizeof buf, 0), -1, EAGAIN);
    CHECK(now_s() - g_t0 > 0.15, "returned after %.3f s", now_s() - g_t0);
    struct timeval none = {0, 0};
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    ualarm(150000, 0);
    CHECK_RC(recv(r, buf, sizeof buf, 0), -1, EINTR);
    CHECK(g_alarms == 1, "alarms %d", g_alarms);
    /* the raw system call reads it, and what is behind it */
    CHECK_RC(recvmmsg_n(r, mb, 8, MSG_DONTWAIT, 1), 2, 0);
    CHECK(mb[0][15] == 0 && mb[1][15] == 5 && memcmp(mb[1], "after", 5) == 0, "raw read");
    /* TCP: rings 0, callback accepted, copies */
    int l = tcp_listener(&a, INADDR_LOOPBACK);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    int t = accept(l, NULL, NULL);
    CHECK(t >= 0, "accept");
    CHECK_RC(api->get_socket_rings_num(l), 0, 0);
    CHECK_RC(api->get_socket_rings_num(c), 0, 0);
    CHECK_RC(api->get_socket_rings_num(t), 0, 0);
    CHECK_RC(api->register_recv_callback(t, hold_cb, &calls), 0, 0);
    CHECK_RC(send(c, "stream", 6, 0), 6, 0);
    flags = PYXLIO_MSG_XLIO_ZCOPY;
    CHECK_RC(api->recvfrom_zcopy(t, buf, sizeof buf, &flags, NULL, NULL), 6, 0);
    CHECK(!(flags & PYXLIO_MSG_XLIO_ZCOPY) && memcmp(buf, "stream", 6) == 0, "tcp copy");
    CHECK_RC(send(c, "x", 1, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    CHECK(calls == 0, "callback calls %d", calls);
    api->dump_fd_stats(r, 3);
    close(t); close(c); close(l); close(r); close(s);
    return 0;
}

/* ---- PYXLIO_EMU_OFFLOAD=no-loopback: loopback to the kernel, other addresses offloaded ---- */
static int case_no_loopback(void) {
    need_api();
    struct sockaddr_in a;
    unsigned char buf[256];
    int r = udp_bound(&a, 0), s = udp_sock(0);
    CHECK_RC(api->get_socket_rings_num(r), 0, 0);            /* 127.0.0.1: the kernel's */
    send_to(s, &a, "lo", 2);
    int flags = PYXLIO_MSG_XLIO_ZCOPY_FORCE;
    CHECK_RC(api->recvfrom_zcopy(r, buf, sizeof buf, &flags, NULL, NULL), -1, EIO);
    CHECK_RC(recv(r, buf, sizeof buf, 0), 2, 0);
    close(r);
    /* bound to the wildcard address: offloaded */
    int w = udp_sock(0);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    CHECK(bind(w, (struct sockaddr *)&any, sizeof any) == 0, "bind any");
    socklen_t al = sizeof a;
    getsockname(w, (struct sockaddr *)&a, &al);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_RC(api->get_socket_rings_num(w), 1, 0);
    send_to(s, &a, "any", 3);
    void *id;
    CHECK_RC(zc_recv(w, buf, sizeof buf, PYXLIO_MSG_XLIO_ZCOPY_FORCE, &id), 3, 0);
    CHECK_RC(free_one(w, id), 0, 0);
    /* a UDP socket connected to loopback */
    int c = udp_sock(0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    CHECK_RC(api->get_socket_rings_num(c), 0, 0);
    CHECK_RC(send(c, "d", 1, PYXLIO_SND_FLAGS_DUMMY), -1, EINVAL);
    close(c);
    close(w);
    /* TCP: a wildcard listener is offloaded; a connection to loopback is the kernel's */
    int l = tcp_listener(&a, INADDR_ANY);
    CHECK_RC(api->get_socket_rings_num(l), 1, 0);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(t, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    int acc = accept(l, NULL, NULL);
    CHECK(acc >= 0, "accept");
    CHECK_RC(api->get_socket_rings_num(t), 0, 0);
    CHECK_RC(api->get_socket_rings_num(acc), 0, 0);
    close(acc); close(t); close(l);
    l = tcp_listener(&a, INADDR_LOOPBACK);
    CHECK_RC(api->get_socket_rings_num(l), 0, 0);
    close(l);
    /* IPv6 ::1 (where the host has IPv6) */
    int r6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (r6 >= 0 && bind(r6, (struct sockaddr *)&a6, sizeof a6) == 0) {
        CHECK_RC(api->get_socket_rings_num(r6), 0, 0);
        printf("ipv6 checked\n");
    }
    if (r6 >= 0) close(r6);
    close(s);
    return 0;
}

/* ======================================================================================== */
static const struct { const char *name; int (*fn)(void); } CASES[] = {
    {"nolib", case_nolib},
    {"discover-legacy", case_discover_legacy},
    {"discover-361", case_discover_361},
    {"discover-360", case_discover_360},
    {"discover-394", case_discover_394},
    {"returns", case_returns},
    {"os-mode", case_os_mode},
    {"no-loopback", case_no_loopback},
    {"zcopy-udp", case_zcopy_udp},
    {"zcopy-frags", case_zcopy_frags},
    {"zcopy-eagain", case_zcopy_eagain},
    {"not-offloaded", case_not_offloaded},
    {"thread-offload", case_thread_offload},
    {"free-errors", case_free_errors},
    {"leak-exit", case_leak_exit},
    {"leak-close", case_leak_close},
    {"clean-exit", case_clean_exit},
    {"dummy-send", case_dummy_send},
    {"stats", case_stats},
    {"feed", case_feed},
    {"callback", case_callback},
    {"callback-poll", case_callback_poll},
    {"enomem", case_enomem},
    {"rules", case_rules},
    {"rule-syntax", case_rule_syntax},
    {"tcp", case_tcp},
    {"fork", case_fork},
    {"threads", case_threads},
    {"passthrough", case_passthrough},
    {"init-reentrant", case_init_reentrant},
    {"pool-small", case_pool_small},
    {"canary", case_canary},
    {"zcopy-flags", case_zcopy_flags},
    {"conf-port", case_conf_port},
};

static int case_init_socket(void) { return case_init(0); }
static int case_init_epoll(void) { return case_init(1); }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: emu_check CASE\n");
        return 2;
    }
    int rc = -1;
    if (!strcmp(argv[1], "init-socket")) rc = case_init_socket();
    else if (!strcmp(argv[1], "init-epoll")) rc = case_init_epoll();
    for (size_t i = 0; rc < 0 && i < sizeof CASES / sizeof CASES[0]; i++)
        if (!strcmp(argv[1], CASES[i].name)) rc = CASES[i].fn();
    if (rc < 0) {
        fprintf(stderr, "unknown case %s\n", argv[1]);
        return 2;
    }
    if (rc == 0) printf("ok %s\n", argv[1]);
    return rc;
}
