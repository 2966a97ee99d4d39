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
    char line[2048];
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

/* ---- configuration ----------------------------------------------------------------------
 *
 * How an emulator error surfaces (documented in pyxlio/emu/__init__.py, which checks the same
 * things in Python before `python -m pyxlio.emu` execs a command):
 *
 *   Every variable the emulator reads is read once and checked by the library's constructor,
 *   i.e. when the program is loaded, before its main() and before any socket exists; so is the
 *   config file (XLIO_CONFIG_FILE).  A value the emulator does not accept - a malformed,
 *   negative, overflowing or out-of-range number, an unknown word, a feed spec that does not
 *   parse, a config file that is not a readable regular file of at most 1 MiB or holds a rule
 *   that does not parse, a pool too small for one datagram - is reported as ONE line on stderr,
 *
 *       pyxlio-emu: error: <VARIABLE>='<value>' is invalid; accepted: <what is accepted>
 *
 *   and the process ends at once with _exit(87) (EMU_EXIT_CONFIG, next to strict mode's 86).
 *   A test double that silently ran with another configuration than the one asked for would
 *   make every result it gives doubtful, so it refuses to start instead.  _exit, not exit: no
 *   handler of a program that has not started runs.  An empty variable means its default.
 *   A packet pool that cannot be allocated at init (first socket) is reported the same way.
 *
 * The texts of the "accepted" parts are repeated in pyxlio/emu/__init__.py (the two must say
 * the same, and tests/test_emu_config.py compares them).
 */
#define ACCEPT_FLAG "0 or 1 (empty: 0)"
#define ACCEPT_LAYOUT "legacy, 3.51, 3.60, 3.61, 3.94 or vma (empty: legacy)"
#define ACCEPT_OFFLOAD "all, none or no-loopback (empty: all)"
#define ACCEPT_TRACELEVEL                                                                       \
    "none, panic, error, warn, warning, info, information, details, debug, fine, func, finer, " \
    "func+, funcall, func_all, func-all or all in any case, or 0..6 as libxlio reads them "    \
    "(empty: info)"
#define ACCEPT_SIZE_SYNTAX                                                                      \
    "a decimal, 0x-hex or 0-octal number with no suffix or a B, K, KB, M, MB, G or GB suffix " \
    "in any case"
#define ACCEPT_FEED                                                                             \
    "PORT:SIZE[,PORT:SIZE...] with at most 32 entries, PORT a decimal 1..65535 (each port "    \
    "once), SIZE a decimal 8..65507 (empty: no feed)"
#define ACCEPT_FILE "a readable regular file of at most 1048576 bytes"

void emu_conf_error(const char *fmt, ...) {
    char msg[1600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *c = msg; *c; c++)          /* one line, whatever the message quotes */
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    emu_log("error: %s", msg);
    _exit(EMU_EXIT_CONFIG);
}

const char *emu_quote(const char *value, char *out, size_t outlen) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i;
    for (i = 0; value[i] && i < 64 && o + 5 < outlen; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
            out[o++] = (char)c;
        } else {
            out[o++] = '\\'; out[o++] = 'x'; out[o++] = hex[c >> 4]; out[o++] = hex[c & 15];
        }
    }
    if (value[i] && o + 4 < outlen) { memcpy(out + o, "...", 3); o += 3; }
    out[o] = 0;
    return out;
}

static void __attribute__((noreturn)) conf_bad(const char *name, const char *value, const char *accepted) {
    char q[300];
    emu_conf_error("%s='%s' is invalid; accepted: %s", name, emu_quote(value, q, sizeof q), accepted);
}

/* the variable's value; NULL when unset or empty (its default) */
static const char *conf_get(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* libxlio's size syntax (option_size::from_str in its sys_vars.cpp: strtoul base 0, then
 * exactly one of "", B, K, KB, M, MB, G, GB in any case), minus what strtoul would also take:
 * leading blanks and a sign.  Values above 2^64-1 are errors here (libxlio wraps them). */
int emu_parse_size(const char *s, unsigned long long *out) {
    static const struct { const char *sfx; unsigned shift; } sfx[] = {
        {"", 0}, {"B", 0}, {"K", 10}, {"KB", 10}, {"M", 20}, {"MB", 20}, {"G", 30}, {"GB", 30}};
    if (!s || !isdigit((unsigned char)s[0])) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno) return -1;
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
        if (!strcasecmp(end, sfx[i].sfx)) {
            if (v > (~0ULL >> sfx[i].shift)) return -1;
            *out = v << sfx[i].shift;
            return 0;
        }
    return -1;
}

/* XLIO_TRACELEVEL as libxlio 3.51.1 reads it (log_level::from_str in src/vlogger/vlogger.cpp):
 * names in any case, and the digits 0..6 which are not the enum's values above 3 ("4" is
 * DEBUG, 5, and "6" is FINER, 7). */
static int parse_tracelevel(const char *s) {
    static const struct { const char *name; int level; } names[] = {
        {"none", -1}, {"panic", 0}, {"0", 0}, {"error", 1}, {"1", 1}, {"warn", 2},
        {"warning", 2}, {"2", 2}, {"info", 3}, {"information", 3}, {"3", 3}, {"details", 4},
        {"debug", 5}, {"4", 5}, {"fine", 6}, {"func", 6}, {"5", 6}, {"finer", 7}, {"func+", 7},
        {"funcall", 7}, {"func_all", 7}, {"func-all", 7}, {"6", 7}, {"all", 8}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(s, names[i].name)) return names[i].level;
    return -100;
}

static int conf_flag(const char *name) {
    const char *v = conf_get(name);
    if (!v || !strcmp(v, "0")) return 0;
    if (!strcmp(v, "1")) return 1;
    conf_bad(name, v, ACCEPT_FLAG);
}

#define KNOWN_EMU_VARS                                                                          \
    "PYXLIO_EMU_FEED, PYXLIO_EMU_FRAG_SIZE, PYXLIO_EMU_LAYOUT, PYXLIO_EMU_OFFLOAD, "            \
    "PYXLIO_EMU_STRICT or PYXLIO_EMU_VERBOSE"

/* PYXLIO_EMU_* is the emulator's: a name it does not read (a typo) is an error too */
static void conf_unknown_names(void) {
    extern char **environ;
    static const char *const known[] = {"PYXLIO_EMU_FEED", "PYXLIO_EMU_FRAG_SIZE", "PYXLIO_EMU_LAYOUT",
                                        "PYXLIO_EMU_OFFLOAD", "PYXLIO_EMU_STRICT",
                                        "PYXLIO_EMU_VERBOSE"};
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "PYXLIO_EMU_", 11)) continue;
        const char *eq = strchr(*e, '=');
        if (!eq || !eq[1]) continue;                    /* empty: as if unset */
        size_t n = (size_t)(eq - *e);
        int ok = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0] && !ok; i++)
            ok = strlen(known[i]) == n && !strncmp(*e, known[i], n);
        if (ok) continue;
        char name[300], q[300], raw[80];
        snprintf(raw, sizeof raw, "%.*s", n < 70 ? (int)n : 70, *e);
        emu_quote(raw, name, sizeof name);
        emu_conf_error("%s='%s' is not a variable of the emulator; accepted: " KNOWN_EMU_VARS,
                       name, emu_quote(eq + 1, q, sizeof q));
    }
}

static void conf_load(void) {
    const char *v;
    conf_unknown_names();
    emu_conf.strict = conf_flag("PYXLIO_EMU_STRICT");
    emu_conf.verbose = conf_flag("PYXLIO_EMU_VERBOSE");
    emu_conf.layout = PYXLIO_LAYOUT_LEGACY;
    if ((v = conf_get("PYXLIO_EMU_LAYOUT"))) {
        if (!strcmp(v, "3.60")) emu_conf.layout = PYXLIO_LAYOUT_360;
        else if (!strcmp(v, "3.61")) emu_conf.layout = PYXLIO_LAYOUT_361;
        else if (!strcmp(v, "3.94")) emu_conf.layout = PYXLIO_LAYOUT_394;
        else if (!strcmp(v, "vma")) emu_conf.layout = PYXLIO_LAYOUT_VMA;  /* libvma 9.8.84 */
        else if (strcmp(v, "legacy") && strcmp(v, "3.51")) conf_bad("PYXLIO_EMU_LAYOUT", v, ACCEPT_LAYOUT);
    }
    emu_conf.offload = EMU_OFFLOAD_ALL;
    if ((v = conf_get("PYXLIO_EMU_OFFLOAD"))) {
        if (!strcmp(v, "none")) emu_conf.offload = EMU_OFFLOAD_NONE;
        else if (!strcmp(v, "no-loopback")) emu_conf.offload = EMU_OFFLOAD_NO_LOOPBACK;
        else if (strcmp(v, "all")) conf_bad("PYXLIO_EMU_OFFLOAD", v, ACCEPT_OFFLOAD);
    }
    if ((v = conf_get("XLIO_TRACELEVEL"))) {
        emu_conf.tracelevel = parse_tracelevel(v);
        if (emu_conf.tracelevel == -100) conf_bad("XLIO_TRACELEVEL", v, ACCEPT_TRACELEVEL);
    }
    unsigned long long n;
    if ((v = conf_get("PYXLIO_EMU_FRAG_SIZE"))) {
        if (emu_parse_size(v, &n) || n < 64 || n > EMU_MAX_DGRAM)
            conf_bad("PYXLIO_EMU_FRAG_SIZE", v, "a size from 64 to 65536 bytes, " ACCEPT_SIZE_SYNTAX);
        emu_conf.frag = (size_t)n;
    }
    /* the pool must hold the largest datagram (its buffers, each of the stride) */
    size_t stride = (emu_conf.frag + 63) & ~(size_t)63;
    size_t maxfrag = (EMU_MAX_DGRAM + emu_conf.frag - 1) / emu_conf.frag;
    unsigned long long lo = (unsigned long long)maxfrag * stride, hi = (unsigned long long)EMU_MAX_BUFS * stride;
    if ((v = conf_get("XLIO_MEMORY_LIMIT"))) {
        if (emu_parse_size(v, &n) || n < lo || n > hi) {
            char acc[600];
            snprintf(acc, sizeof acc,
                     "a size from %llu to %llu bytes (the pool holds at least one %d-byte datagram: "
                     "%zu buffers of %zu bytes with PYXLIO_EMU_FRAG_SIZE=%zu; at most %u buffers), "
                     ACCEPT_SIZE_SYNTAX " (empty: 64MB)",
                     lo, hi, EMU_MAX_DGRAM, maxfrag, stride, emu_conf.frag, EMU_MAX_BUFS);
            conf_bad("XLIO_MEMORY_LIMIT", v, acc);
        }
        emu_conf.memory_limit = (size_t)n;
    }   /* the 64MB default is within [lo, hi] for every fragment size */
    if ((v = conf_get("PYXLIO_EMU_FEED")) && emu_feed_parse(v) != 0)
        conf_bad("PYXLIO_EMU_FEED", v, ACCEPT_FEED);
    const char *var = "XLIO_CONFIG_FILE";
    if (!(v = conf_get(var))) v = conf_get(var = "LIBXLIO_CONFIG_FILE");
    if (v) emu_rules_load_file(var, v);
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
    emu_ultra_fork_child();
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
        emu_pool_create();      /* the configuration was checked at load (conf_load) */
        emu_pid = getpid();
        pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
        static const char *const layouts[] = {"legacy", "3.60", "3.61", "3.94", "vma"};
        static const char *const modes[] = {"all", "none", "no-loopback"};
        emu_vlog("init: pool %zu bytes, %u buffers of %zu bytes (%s), layout %s, offload %s",
                 emu_pool.size, emu_pool.nbuf, emu_conf.frag,
                 emu_pool.user_alloc ? "user allocator" : "mmap", layouts[emu_conf.layout],
                 modes[emu_conf.offload]);
        atomic_store_explicit(&emu_inited, 1, memory_order_release);
        errno = saved;
    }
    pthread_mutex_unlock(&g_init_mu);
    t_in_init = 0;
}

__attribute__((constructor)) static void emu_ctor(void) {
    emu_resolve();
    emu_pid = getpid();
    int saved = errno;
    conf_load();            /* fatal (exit status 87) on a bad configuration */
    errno = saved;
}

/* At exit (after the program's own atexit handlers and destructors): the leak report. */
__attribute__((destructor)) static void emu_dtor(void) {
    if (emu_pid != getpid()) return; /* a vfork child or a raw clone: not our state */
    if (atomic_load(&emu_inited)) {
        emu_sock_exit_report();
        emu_ultra_exit_report();
    }
    unsigned long nv = atomic_load(&emu_nviolations);
    if (nv && emu_conf.strict) {
        emu_log("strict mode: %lu contract violation(s) or leak(s): exit status %d", nv,
                EMU_EXIT_STRICT);
        fflush(NULL);
        _exit(EMU_EXIT_STRICT);
    }
}

/* ---- small helpers ---------------------------------------------------------------------- */
int emu_addr_kernel(const struct sockaddr *sa, socklen_t len) {
    if (emu_conf.offload == EMU_OFFLOAD_NONE) return 1;
    if (emu_conf.offload != EMU_OFFLOAD_NO_LOOPBACK || !sa || len < sizeof(sa_family_t)) return 0;
    if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) return 1;
        return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127;
    }
    return 0;
}

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
