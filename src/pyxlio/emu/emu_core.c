/*
 * pyxlio emulator: real-symbol resolution, configuration, logging, global init, fork and exit.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "emu.h"

/* The marker pyxlio uses to tell the emulator from a real libxlio. */
EMU_EXPORT const char pyxlio_emu_version[] = "pyxlio-emu 0.1";

emu_real_t emu_real;
emu_conf_t emu_conf = {.frag = 1472, .memory_limit = 64u << 20, .tracelevel = 3};
atomic_int emu_inited;
pid_t emu_pid;
atomic_ulong emu_nviolations;

static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;

void emu_resolve(void) {
#define R(name) do { if (!emu_real.name) { void *p_ = dlsym(RTLD_NEXT, #name); \
        memcpy(&emu_real.name, &p_, sizeof p_); } } while (0)
    R(socket); R(close); R(bind); R(connect); R(listen); R(accept); R(accept4);
    R(recv); R(recvfrom); R(recvmsg); R(recvmmsg); R(read); R(readv);
    R(send); R(sendto); R(sendmsg); R(sendmmsg);
    R(poll); R(ppoll); R(select); R(pselect);
    R(epoll_create); R(epoll_create1); R(epoll_ctl); R(epoll_wait); R(epoll_pwait);
    R(getsockopt); R(dup2); R(dup3);
#undef R
}

/* ---- logging ---------------------------------------------------------------------------- */
static void emu_vwrite(const char *fmt, va_list ap) {
    char line[1024];
    int n = snprintf(line, sizeof line, "pyxlio-emu: ");
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    if (m < 0) m = 0;
    size_t len = (size_t)n + ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2);
    line[len++] = '\n';
    int saved = errno;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(2, line + off, len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    errno = saved;
}

void emu_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emu_vwrite(fmt, ap);
    va_end(ap);
}

void emu_vlog(const char *fmt, ...) {
    if (!emu_conf.verbose) return;
    va_list ap;
    va_start(ap, fmt);
    emu_vwrite(fmt, ap);
    va_end(ap);
}

void emu_violation(const char *fmt, ...) {
    atomic_fetch_add(&emu_nviolations, 1);
    va_list ap;
    va_start(ap, fmt);
    emu_vwrite(fmt, ap);
    va_end(ap);
}

/* ---- configuration ---------------------------------------------------------------------- */
size_t emu_parse_size(const char *s, size_t dflt) {
    if (!s || !*s) return dflt;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return dflt;
    while (*end == ' ') end++;
    unsigned long long mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': mul = 1ULL << 10; break;
    case 'M': mul = 1ULL << 20; break;
    case 'G': mul = 1ULL << 30; break;
    case 'B': break;
    default: return dflt;
    }
    return (size_t)(v * mul);
}

static int parse_tracelevel(const char *s) {
    static const char *const names[] = {"PANIC", "ERROR", "WARNING", "INFO", "DETAILS",
                                        "DEBUG", "FINE", "FINER", "ALL"};
    if (!s || !*s) return 3;
    char *end;
    long v = strtol(s, &end, 10);
    if (end != s && *end == 0) return (int)(v < -1 ? -1 : v > 8 ? 8 : v);
    if (!strcasecmp(s, "NONE")) return -1;
    if (!strcasecmp(s, "WARN")) return 2;
    if (!strcasecmp(s, "FUNC")) return 6;
    if (!strcasecmp(s, "FUNC_ALL")) return 7;
    for (int i = 0; i < 9; i++)
        if (!strcasecmp(s, names[i])) return i;
    return 3;
}

static void conf_early(void) {
    const char *v = getenv("PYXLIO_EMU_STRICT");
    emu_conf.strict = v && *v && strcmp(v, "0") != 0;
    v = getenv("PYXLIO_EMU_VERBOSE");
    emu_conf.verbose = v && *v && strcmp(v, "0") != 0;
    v = getenv("PYXLIO_EMU_LAYOUT");
    if (v && *v) {
        if (!strcmp(v, "3.61") || !strcmp(v, "361")) emu_conf.layout361 = 1;
        else if (strcmp(v, "legacy") && strcmp(v, "3.51"))
            emu_log("PYXLIO_EMU_LAYOUT=%s not understood (legacy or 3.61): using legacy", v);
    }
    emu_conf.tracelevel = parse_tracelevel(getenv("XLIO_TRACELEVEL"));
}

/* ---- thread offload table --------------------------------------------------------------- */
typedef struct { pthread_t tid; int offload; } tofl_t;
static tofl_t *g_tofl;
static int g_ntofl, g_captofl;
static pthread_mutex_t g_tofl_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_tofl_any;

int emu_thread_offload_get(pthread_t tid) {
    if (!atomic_load_explicit(&g_tofl_any, memory_order_acquire)) return 1;
    int r = 1;
    pthread_mutex_lock(&g_tofl_mu);
    for (int i = 0; i < g_ntofl; i++)
        if (pthread_equal(g_tofl[i].tid, tid)) { r = g_tofl[i].offload; break; }
    pthread_mutex_unlock(&g_tofl_mu);
    return r;
}

int emu_thread_offload_set(int offload, pthread_t tid) {
    pthread_mutex_lock(&g_tofl_mu);
    int i;
    for (i = 0; i < g_ntofl; i++)
        if (pthread_equal(g_tofl[i].tid, tid)) break;
    if (i == g_ntofl) {
        if (g_ntofl == g_captofl) {
            int nc = g_captofl ? g_captofl * 2 : 16;
            tofl_t *n = realloc(g_tofl, (size_t)nc * sizeof *n);
            if (!n) { pthread_mutex_unlock(&g_tofl_mu); errno = ENOMEM; return -1; }
            g_tofl = n; g_captofl = nc;
        }
        g_tofl[g_ntofl].tid = tid;
        g_ntofl++;
    }
    g_tofl[i].offload = offload ? 1 : 0;
    atomic_store_explicit(&g_tofl_any, 1, memory_order_release);
    pthread_mutex_unlock(&g_tofl_mu);
    return 0;
}

/* ---- fork ------------------------------------------------------------------------------- */
static void atfork_prepare(void) {
    pthread_mutex_lock(&g_tofl_mu);
    pthread_mutex_lock(&emu_pool.mu);
}
static void atfork_parent(void) {
    pthread_mutex_unlock(&emu_pool.mu);
    pthread_mutex_unlock(&g_tofl_mu);
}
static void atfork_child(void) {
    pthread_mutex_unlock(&emu_pool.mu);
    pthread_mutex_unlock(&g_tofl_mu);
    emu_pid = getpid();
    emu_pool_fork_child();
    emu_sock_fork_child();
    emu_rules_fork_child();
    atomic_store(&emu_nviolations, 0);
    emu_vlog("fork: child %d drops the parent's outstanding packets", (int)emu_pid);
}

/* ---- init ------------------------------------------------------------------------------- */
/* Set while this thread runs the init: a socket() or epoll_create() made from inside it (e.g.
 * by the user allocator) must not wait for the init it is part of. */
static __thread int t_in_init;

void emu_init(void) {
    if (EMU_LIKELY(atomic_load_explicit(&emu_inited, memory_order_acquire))) return;
    if (t_in_init) return;
    t_in_init = 1;
    pthread_mutex_lock(&g_init_mu);
    if (!atomic_load_explicit(&emu_inited, memory_order_relaxed)) {
        int saved = errno;
        size_t frag = emu_parse_size(getenv("PYXLIO_EMU_FRAG_SIZE"), 1472);
        if (frag < 64) {
            emu_log("PYXLIO_EMU_FRAG_SIZE=%zu below the minimum: using 64", frag);
            frag = 64;
        }
        if (frag > EMU_MAX_DGRAM) frag = EMU_MAX_DGRAM;
        emu_conf.frag = frag;
        emu_conf.memory_limit = emu_parse_size(getenv("XLIO_MEMORY_LIMIT"), 64u << 20);
        const char *feed = getenv("PYXLIO_EMU_FEED");
        if (feed && *feed && emu_feed_parse(feed) != 0)
            emu_log("PYXLIO_EMU_FEED=%s not understood (PORT:SIZE[,PORT:SIZE...], SIZE >= 8)", feed);
        emu_pool_create();
        const char *cf = getenv("XLIO_CONFIG_FILE");
        if (!cf || !*cf) cf = getenv("LIBXLIO_CONFIG_FILE");
        if (cf && *cf) emu_rules_load_file(cf);
        emu_pid = getpid();
        pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
        emu_vlog("init: pool %zu bytes, %u buffers of %zu bytes (%s), layout %s", emu_pool.size,
                 emu_pool.nbuf, emu_conf.frag, emu_pool.user_alloc ? "user allocator" : "mmap",
                 emu_conf.layout361 ? "3.61" : "legacy");
        atomic_store_explicit(&emu_inited, 1, memory_order_release);
        errno = saved;
    }
    pthread_mutex_unlock(&g_init_mu);
    t_in_init = 0;
}

__attribute__((constructor)) static void emu_ctor(void) {
    emu_resolve();
    conf_early();
    emu_pid = getpid();
}

/* At exit (after the program's own atexit handlers and destructors): the leak report. */
__attribute__((destructor)) static void emu_dtor(void) {
    if (emu_pid != getpid()) return; /* a vfork child or a raw clone: not our state */
    if (atomic_load(&emu_inited)) emu_sock_exit_report();
    unsigned long nv = atomic_load(&emu_nviolations);
    if (nv && emu_conf.strict) {
        emu_log("strict mode: %lu contract violation(s) or leak(s): exit status %d", nv,
                EMU_EXIT_STRICT);
        fflush(NULL);
        _exit(EMU_EXIT_STRICT);
    }
}

/* ---- small helpers ---------------------------------------------------------------------- */
void emu_fmt_addr(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen) {
    char ip[INET6_ADDRSTRLEN];
    if (!sa || len < sizeof(sa_family_t)) { snprintf(out, outlen, "-"); return; }
    if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(out, outlen, "%s:%u", ip, ntohs(a->sin_port));
    } else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        snprintf(out, outlen, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        snprintf(out, outlen, "-");
    }
}
