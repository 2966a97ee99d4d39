/* A fake XLIO for pyxlio's detection tests: answers getsockopt(-2, SOL_SOCKET, 2800) with
 * whatever FAKE_XLIO_MODE asks for (malformed answers, or the 3.60 / 3.94 / 2.0 layouts the
 * emulator does not serve).  The struct ends exactly at a PROT_NONE guard page, so reading
 * one byte past the size its cap_mask implies crashes the test.  Each member called appends its
 * name to the file FAKE_XLIO_LOG.
 *
 * Modes: none, null, badmagic, shortlen (malformed); v360, v361, v394 (only the members before
 * the socket/Ultra API, cap bit 13 clear); v360full, v361full, v394full, legacy310, legacy
 * (each with the cap_mask that release sets, and its whole struct: 232, 224, 176, 120, 248
 * bytes); legacy20 (2.0: 80 bytes).  get_socket_rings_num answers FAKE_XLIO_RINGS (default
 * -1/EINVAL; legacy20: -1/EOPNOTSUPP).  Every socket/Ultra API member logs "other".  A send,
 * sendto or sendmsg with the dummy flag 0x400 is not passed on: it is logged as "dummy_send"
 * and fails with EINVAL, as XLIO answers for a socket it does not offload. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static void note(const char *what) {
    const char *path = getenv("FAKE_XLIO_LOG");
    if (!path) return;
    FILE *f = fopen(path, "a");
    if (f) { fprintf(f, "%s\n", what); fclose(f); }
}
static int f_add_conf_rule(const char *line) { (void)line; note("add_conf_rule"); return 0; }
/* FAKE_XLIO_NOT_STARTED=1: an XLIO whose global init failed (libxlio 3.51.1 without a usable
 * RDMA stack): these answer -1 with errno untouched, as libxlio does before its init. */
static int not_started(void) { const char *v = getenv("FAKE_XLIO_NOT_STARTED"); return v && *v == '1'; }
static int f_thread_offload(int on, pthread_t t) { (void)on; (void)t; note("thread_offload"); return not_started() ? -1 : 0; }
static int f_dump_fd_stats(int fd, int lvl) { (void)fd; (void)lvl; note("dump_fd_stats"); return not_started() ? -1 : 0; }
static int f_ioctl(void *c, size_t n) { (void)c; (void)n; note("ioctl"); return 0; }
static int f_register(int s, void *cb, void *ctx) { (void)s; (void)cb; (void)ctx; note("register_recv_callback"); return 0; }
static int f_recvfrom_zcopy(int s, void *b, size_t l, int *fl, void *fr, socklen_t *fl2) {
    (void)s; (void)b; (void)l; (void)fl; (void)fr; (void)fl2; note("recvfrom_zcopy"); errno = EAGAIN; return -1; }
static int f_free(int s, void *p, size_t n) { (void)s; (void)p; (void)n; note("free_packets"); return 0; }
static int f_other(void) { note("other"); errno = EOPNOTSUPP; return -1; }
static int f_rings_nosup(int fd) { (void)fd; note("get_socket_rings_num"); errno = EOPNOTSUPP; return -1; }
static int f_rings_num(int fd) {
    const char *v = getenv("FAKE_XLIO_RINGS");
    int n = v ? atoi(v) : -1;
    (void)fd;
    note("get_socket_rings_num");
    if (n < 0) errno = EINVAL;
    return n;
}

/* The dummy flag never reaches the kernel (there it is MSG_SYN: the data would be sent). */
#define FAKE_DUMMY 0x400
static ssize_t dummy_refused(void) { note("dummy_send"); errno = EINVAL; return -1; }
ssize_t send(int fd, const void *buf, size_t n, int flags) {
    static ssize_t (*real)(int, const void *, size_t, int);
    if (flags & FAKE_DUMMY) return dummy_refused();
    if (!real) real = (ssize_t (*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    return real(fd, buf, n, flags);
}
ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
               socklen_t tolen) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    if (flags & FAKE_DUMMY) return dummy_refused();
    if (!real)
        real = (ssize_t (*)(int, const void *, size_t, int, const struct sockaddr *,
                            socklen_t))dlsym(RTLD_NEXT, "sendto");
    return real(fd, buf, n, flags, to, tolen);
}
ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (flags & FAKE_DUMMY) return dummy_refused();
    if (!real) real = (ssize_t (*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    return real(fd, msg, flags);
}

static void *guarded(size_t size) {
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *m = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) abort();
    mprotect(m + page, (size_t)page, PROT_NONE);
    return m + page - size;
}
static void put(unsigned char *base, size_t off, void *fn) { memcpy(base + off, &fn, sizeof fn); }
/* The socket/Ultra API members from `from` to the end: never called by pyxlio. */
static void put_rest(unsigned char *base, size_t from, size_t size) {
    for (size_t off = from; off + 8 <= size; off += 8) put(base, off, (void *)f_other);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
    static int (*real)(int, int, int, void *, socklen_t *);
    if (!real) real = (int (*)(int, int, int, void *, socklen_t *))dlsym(RTLD_NEXT, "getsockopt");
    if (fd != -2 || level != SOL_SOCKET || name != 2800) return real(fd, level, name, val, len);
    const char *mode = getenv("FAKE_XLIO_MODE");
    if (!mode) mode = "none";
    uint64_t magic = 0x4f494c584144564eULL, caps = 0;
    size_t size = 16;
    unsigned char *api = NULL;
    if (!strcmp(mode, "none")) { errno = EBADF; return -1; }
    if (!strcmp(mode, "null")) { memset(val, 0, sizeof(void *)); *len = 8; return 0; }
    if (!strcmp(mode, "v360")) { caps = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 11); size = 48; }
    else if (!strcmp(mode, "v394")) { caps = (1 << 3) | (1 << 4) | (1 << 11) | (1 << 12); size = 48; }
    else if (!strcmp(mode, "v361")) { caps = (1 << 3) | (1 << 4) | (1 << 11); size = 40; }
    else if (!strcmp(mode, "legacy20")) { caps = 0x7e | (1 << 11) | (1 << 12); size = 80; }
    else if (!strcmp(mode, "v360full")) { caps = 0x2819; size = 232; }
    else if (!strcmp(mode, "v361full")) { caps = 0x2818; size = 224; }
    else if (!strcmp(mode, "v394full")) { caps = 0x3818; size = 176; }
    else if (!strcmp(mode, "legacy310")) { caps = 0x1fff; size = 120; }
    else if (!strcmp(mode, "legacy")) { caps = 0x3fff; size = 248; }
    else if (!strcmp(mode, "badmagic") || !strcmp(mode, "shortlen")) { caps = 0x3fff; size = 16; }
    api = guarded(size);
    memset(api, 0, size);
    if (!strcmp(mode, "badmagic")) magic ^= 1;
    memcpy(api, &magic, 8);
    memcpy(api + 8, &caps, 8);
    if (!strncmp(mode, "v360", 4)) {
        put(api, 16, (void *)f_add_conf_rule); put(api, 24, (void *)f_thread_offload);
        put(api, 32, (void *)f_dump_fd_stats); put(api, 40, (void *)f_register);
        put_rest(api, 48, size);
    } else if (!strncmp(mode, "v394", 4)) {
        put(api, 16, (void *)f_add_conf_rule); put(api, 24, (void *)f_thread_offload);
        put(api, 32, (void *)f_dump_fd_stats); put(api, 40, (void *)f_ioctl);
        put_rest(api, 48, size);
    } else if (!strncmp(mode, "v361", 4)) {
        put(api, 16, (void *)f_add_conf_rule); put(api, 24, (void *)f_thread_offload);
        put(api, 32, (void *)f_dump_fd_stats);
        put_rest(api, 40, size);
    } else if (!strncmp(mode, "legacy", 6)) {
        put(api, 16, (void *)f_recvfrom_zcopy); put(api, 24, (void *)f_free);
        put(api, 32, (void *)f_add_conf_rule); put(api, 40, (void *)f_thread_offload);
        put(api, 48, strcmp(mode, "legacy20") ? (void *)f_rings_num : (void *)f_rings_nosup);
        put(api, 56, (void *)f_other);
        put(api, 64, (void *)f_dump_fd_stats); put(api, 72, (void *)f_ioctl);
        if (size > 80) put(api, 80, (void *)f_register);
        put_rest(api, 88, size);
    }
    memcpy(val, &api, sizeof api);
    *len = !strcmp(mode, "shortlen") ? 4 : 8;
    return 0;
}
