/* A fake XLIO for pyxlio's detection tests: answers getsockopt(-2, SOL_SOCKET, 2800) with
 * whatever FAKE_XLIO_MODE asks for (malformed answers, or the 3.60 / 3.94 / 2.0 layouts the
 * emulator does not serve).  The struct ends exactly at a PROT_NONE guard page, so reading
 * one byte past the size its cap_mask implies crashes the test.  Each member called appends its
 * name to the file FAKE_XLIO_LOG. */
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
static int f_thread_offload(int on, pthread_t t) { (void)on; (void)t; note("thread_offload"); return 0; }
static int f_dump_fd_stats(int fd, int lvl) { (void)fd; (void)lvl; note("dump_fd_stats"); return 0; }
static int f_ioctl(void *c, size_t n) { (void)c; (void)n; note("ioctl"); return 0; }
static int f_register(int s, void *cb, void *ctx) { (void)s; (void)cb; (void)ctx; note("register_recv_callback"); return 0; }
static int f_recvfrom_zcopy(int s, void *b, size_t l, int *fl, void *fr, socklen_t *fl2) {
    (void)s; (void)b; (void)l; (void)fl; (void)fr; (void)fl2; note("recvfrom_zcopy"); errno = EAGAIN; return -1; }
static int f_free(int s, void *p, size_t n) { (void)s; (void)p; (void)n; note("free_packets"); return 0; }
static int f_other(void) { note("other"); errno = EOPNOTSUPP; return -1; }

static void *guarded(size_t size) {
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *m = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) abort();
    mprotect(m + page, (size_t)page, PROT_NONE);
    return m + page - size;
}
static void put(unsigned char *base, size_t off, void *fn) { memcpy(base + off, &fn, sizeof fn); }

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
    else if (!strcmp(mode, "badmagic") || !strcmp(mode, "shortlen")) { caps = 0x3fff; size = 16; }
    api = guarded(size);
    memset(api, 0, size);
    if (!strcmp(mode, "badmagic")) magic ^= 1;
    memcpy(api, &magic, 8);
    memcpy(api + 8, &caps, 8);
    if (!strcmp(mode, "v360")) {
        put(api, 16, (void *)f_add_conf_rule); put(api, 24, (void *)f_thread_offload);
        put(api, 32, (void *)f_dump_fd_stats); put(api, 40, (void *)f_register);
    } else if (!strcmp(mode, "v394")) {
        put(api, 16, (void *)f_add_conf_rule); put(api, 24, (void *)f_thread_offload);
        put(api, 32, (void *)f_dump_fd_stats); put(api, 40, (void *)f_ioctl);
    } else if (!strcmp(mode, "v361")) {
        put(api, 16, (void *)f_add_conf_rule); put(api, 24, (void *)f_thread_offload);
        put(api, 32, (void *)f_dump_fd_stats);
    } else if (!strcmp(mode, "legacy20")) {
        put(api, 16, (void *)f_recvfrom_zcopy); put(api, 24, (void *)f_free);
        put(api, 32, (void *)f_add_conf_rule); put(api, 40, (void *)f_thread_offload);
        put(api, 48, (void *)f_other); put(api, 56, (void *)f_other);
        put(api, 64, (void *)f_dump_fd_stats); put(api, 72, (void *)f_ioctl);
    }
    memcpy(val, &api, sizeof api);
    *len = !strcmp(mode, "shortlen") ? 4 : 8;
    return 0;
}
