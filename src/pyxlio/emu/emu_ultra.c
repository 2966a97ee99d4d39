/*
 * pyxlio emulator: XLIO's Ultra API (3.60+, 23 members) and its predecessor, the 16-member
 * "socket API" (3.30.3-3.51.x and the 3.94x DOCA branch), served over ordinary kernel TCP
 * sockets; and the libibverbs memory registration those sends need (ibv_reg_mr/ibv_dereg_mr).
 *
 * Facts were read in libxlio's public sources (never copied): src/core/sock/sock-extra.cpp,
 * src/core/event/poll_group.cpp, src/core/sock/sockinfo_tcp.cpp, src/core/xlio.h and
 * src/core/xlio_types.h of the tags 3.51.1, 3.60.4, 3.61.2, 3.70.2 and 3.940.2, and the tests
 * tests/gtest/xlio_ultra_api/xlio_socket.cc and xlio_socket_listen_connect.cc of 3.70.2.
 * "3.51" below means the socket-API layouts (legacy and 3.94, whose sock-extra.cpp is 3.51.1's
 * for every member read here); "3.60+" the Ultra layouts (3.60 and 3.61; 3.60.4, 3.61.2 and
 * 3.70.2 agree on every member read here).
 *
 * ---- Events, in the order the emulator gives them ----------------------------------------
 * Every callback runs from xlio_poll_group_poll() of the socket's group, except where said.
 *   connect:   xlio_socket_connect() returns 0 (EINPROGRESS folded into 0, sock-extra.cpp), and
 *              a later poll gives ESTABLISHED (sockinfo_tcp::connect_lwip_cb) or ERROR with
 *              ECONNREFUSED (RST while connecting) / ETIMEDOUT (no answer, unreachable) /
 *              ECONNABORTED (anything else) (sockinfo_tcp::err_lwip_cb_xlio_socket).  A refusal
 *              the kernel reports at once is held back for the next poll the same way.
 *   accept:    (3.60+) accept_cb(new, listener, listener's userdata_sq) for each new
 *              connection; the new socket is in the listener's group with userdata_sq 0 and
 *              gets NO ESTABLISHED (accept_lwip_cb -> accept_connection_xlio_socket calls only
 *              accept_cb; ESTABLISHED comes from connect_lwip_cb alone).
 *   receive:   rx_cb per buffer, in stream order; with no rx_cb the data is dropped
 *              (rx_lwip_cb_xlio_socket frees the pbuf).
 *   peer FIN:  3.60+: CLOSED once, after every byte before it was given to rx_cb
 *              (tcp_state_observer, CLOSE_WAIT).  3.51: nothing (3.51.1 has no CLOSED event).
 *   reset:     ERROR(ECONNRESET) (or ETIMEDOUT / ECONNABORTED as the kernel says), then the
 *              completions of the sends it discarded (lwIP runs the error callback, then
 *              purges the segments, whose zero-copy callbacks give the completions).
 *   destroy:   3.51: inside xlio_socket_destroy(): the connection is reset (RST: 3.51.1 "always
 *              force TCP reset", poll_group::close_socket(si, true)), unsent data dropped, the
 *              completions of every send not yet completed, then TERMINATED (~sockinfo_tcp).
 *              3.60+: xlio_socket_destroy() only marks the socket (mark_socket_to_close); the
 *              next poll starts a graceful close (tcp_close: queued data, flushed or not, is
 *              sent, then FIN), and TERMINATED comes in the first poll in which the kernel has
 *              taken every queued byte (the real one waits for the FIN handshake: CLOSED or
 *              TIME_WAIT), after the completions of those sends; a socket that never connected
 *              or has failed is TERMINATED in the next poll (gtest xlio_socket.cc ti_2, ti_3).
 *              Data arriving after destroy is dropped; no ERROR or CLOSED after destroy
 *              (err_lwip_cb_xlio_socket checks SOCKINFO_CLOSING).
 *   nothing after TERMINATED: the handle is dead; any call with it is a contract violation.
 * Completions: comp_cb(sock, userdata_sq, userdata_op) once the kernel has taken every byte of
 * a zero-copy send, in send order, only for userdata_op != 0 (tcp_express_zc_callback); INLINE
 * sends have none (xlio.h of 3.51.1).  They are delivered by poll (the real ones come from the
 * completion queue polled there), or by destroy in 3.51 as above.
 *
 * ---- Sends ---------------------------------------------------------------------------------
 * Without XLIO_SOCKET_SEND_FLAG_FLUSH a send is queued (XLIO_EXPRESS_MSG_MORE, sock-extra.cpp)
 * until xlio_socket_flush(), a later FLUSH send on that socket, or xlio_poll_group_flush() -
 * which flushes only the sockets of a group created with XLIO_GROUP_FLAG_DIRTY (poll_group::
 * add_dirty_socket keeps the dirty list only then; without DIRTY the group flush is a no-op).
 * The real library may also push unflushed data while it processes received segments (a
 * "current limitation" in 3.51.1's xlio.h); the emulator never does: a program that forgets
 * to flush stalls here, as it may there.  Flushed data the kernel cannot take yet stays queued
 * and is pushed by later polls: never blocked on, dropped or reordered.
 *
 * ---- Misuse --------------------------------------------------------------------------------
 * Handles are the emulator's own numbers (a tag, a generation and a slot), looked up in tables
 * of live objects and never dereferenced: a garbage, destroyed or terminated handle, a buffer
 * freed twice or never received, a zero-copy send outside a registered region with that mkey,
 * a group destroyed from its own callback (one destroyed with live sockets closes them, as
 * the real one does: see u_group_destroy), an Ultra call before
 * xlio_init_ex(), concurrent calls on a group without XLIO_GROUP_FLAG_SAFE: each is a contract
 * violation (a diagnostic line; exit status 86 in strict mode), -1 with errno where the member
 * returns int, nothing done where it returns void (NULL for get_pd).
 */
#include <dlfcn.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "emu.h"

#define U_MAX_GROUPS 1024u
#define U_MAX_SOCKS 65536u
#define U_TAG_GROUP 0x47u           /* 'G' */
#define U_TAG_SOCK 0x53u            /* 'S' */
#define U_RX_BUDGET 32u             /* most buffers one poll reads from one socket (fairness) */
#define U_RX_CHUNK 8u               /* buffers one readv fills */
#define U_ACCEPT_BUDGET 16          /* most connections one poll accepts on one listener */
#define U_EPOLL_BATCH 64
#define U_IOV_MAX 1024u             /* most iovecs one sendv takes (IOV_MAX) */
#define U_WRITE_IOV 64              /* iovecs one sendmsg takes from the queue */

static int ultra_layout(void) {
    return emu_conf.layout == PYXLIO_LAYOUT_360 || emu_conf.layout == PYXLIO_LAYOUT_361;
}

/* ---- objects ---------------------------------------------------------------------------- */
typedef struct emu_mr {             /* laid out like struct ibv_mr (verbs.h) */
    void *context;                  /* @0 */
    void *pd;                       /* @8 */
    void *addr;                     /* @16 */
    size_t length;                  /* @24 */
    uint32_t handle;                /* @32 */
    uint32_t lkey;                  /* @36 */
    uint32_t rkey;                  /* @40 */
    uint32_t pad;
    uint64_t inflight;              /* zero-copy sends whose bytes the kernel has not taken */
} emu_mr_t;
_Static_assert(offsetof(emu_mr_t, lkey) == PYXLIO_IBV_MR_LKEY_OFFSET, "ibv_mr.lkey @36");
_Static_assert(offsetof(emu_mr_t, addr) == 16 && offsetof(emu_mr_t, length) == 24, "ibv_mr");

typedef struct usend {
    struct usend *next;
    emu_mr_t *mr;                   /* zero-copy: the region (inflight counted), else NULL */
    uintptr_t userdata_op;
    size_t total, off;              /* bytes; bytes the kernel has taken */
    uint32_t niov;
    int zc;
    struct iovec iov[];             /* inline: one iovec, the copy follows the array */
} usend_t;

enum { US_NEW, US_CONNECTING, US_ESTABLISHED, US_LISTEN, US_FAILED };

typedef struct usock {
    _Atomic uint32_t gen;           /* the handle's generation; bumped when the slot is freed */
    atomic_int live;
    uint32_t idx;
    int fd;
    int domain;
    int group;                      /* group slot, -1 detached */
    uint32_t gpos;                  /* position in the group's list */
    uintptr_t userdata;
    int state;                      /* US_* */
    int send_err;                   /* errno of a send once US_FAILED */
    int pending_err;                /* ERROR to deliver at the next poll (0 none) */
    int passthrough;                /* the kernel's, not offloaded */
    int bound;
    int rd_eof;
    int destroyed;                  /* xlio_socket_destroy called */
    int closing;                    /* 3.60+: graceful close under way */
    int terminated;
    int dirty;                      /* in the group's dirty list */
    int registered;                 /* fd in the group's epoll */
    uint32_t epmask;
    uint64_t rule_seq;
    usend_t *qhead, *qtail;         /* sends not wholly taken by the kernel */
    usend_t *unflushed;             /* first queued send not flushed yet (NULL: all flushed) */
    usend_t *dhead, *dtail;         /* taken by the kernel, completion not delivered */
} usock_t;

typedef struct ugroup {
    _Atomic uint32_t gen;
    atomic_int live;
    uint32_t idx;
    pthread_mutex_t mu;             /* recursive: callbacks call back in */
    unsigned flags;
    pyxlio_socket_event_cb_t event_cb;
    pyxlio_socket_comp_cb_t comp_cb;
    pyxlio_socket_rx_cb_t rx_cb;
    pyxlio_socket_accept_cb_t accept_cb;
    int epfd;
    int in_poll;
    int work;                       /* a socket has deferred work (destroy, error, completions) */
    uint32_t *socks, nsocks, capsocks;
    uint32_t *dirty, ndirty, capdirty;
    uint32_t *scratch, capscratch;
    atomic_ulong nbufs;             /* receive buffers its sockets gave the application */
} ugroup_t;

/* per pool buffer, while the application holds it */
enum { UB_FREE = 0, UB_APP = 1, UB_ORPHAN = 2 };
typedef struct ubuf {
    atomic_uint state;
    uint32_t group;                 /* group slot */
    uint32_t ggen;
} ubuf_t;

static pthread_mutex_t g_u_mu = PTHREAD_MUTEX_INITIALIZER;   /* tables, regions (a leaf lock) */
static atomic_int g_u_ready;        /* xlio_init_ex called (and no xlio_exit since) */
static atomic_int g_u_tables;       /* the tables below exist */
static _Atomic(usock_t *) g_us[U_MAX_SOCKS];
static _Atomic(ugroup_t *) g_ug[U_MAX_GROUPS];
static uint32_t g_us_used, g_ug_used;           /* slots ever made (under g_u_mu) */
static uint32_t *g_us_free, g_us_nfree;         /* freed socket slots, FIFO */
static uint32_t g_us_fhead;
static uint32_t g_ug_free[U_MAX_GROUPS], g_ug_nfree;
static pyxlio_xbuf_t *g_xbufs;                  /* xlio_buf descriptors, one per pool buffer */
static ubuf_t *g_ubufs;
static atomic_ulong g_nbufs;                    /* buffers the application holds */
static pthread_mutex_t g_detached_mu = PTHREAD_MUTEX_INITIALIZER;  /* sockets without a group */
static pthread_once_t g_detached_once = PTHREAD_ONCE_INIT;

static emu_mr_t **g_mrs;            /* live regions (under g_u_mu) */
static uint32_t g_nmrs, g_capmrs;
static uint32_t g_next_lkey = 0x1000;
/* struct ibv_pd { struct ibv_context *context; uint32_t handle; }: the emulator's own */
static struct { void *context; uint32_t handle; uint32_t pad; } g_pd = {NULL, 0x5059, 0};

static inline uint64_t mkh(unsigned tag, uint32_t gen, uint32_t idx) {
    return ((uint64_t)tag << 56) | ((uint64_t)(gen & 0xffffffu) << 32) | idx;
}
#define H_TAG(h) ((unsigned)((uint64_t)(h) >> 56))
#define H_GEN(h) ((uint32_t)(((uint64_t)(h) >> 32) & 0xffffffu))
#define H_IDX(h) ((uint32_t)((uint64_t)(h) & 0xffffffffu))

static inline pyxlio_xsock_t sock_h(const usock_t *s) {
    return (pyxlio_xsock_t)mkh(U_TAG_SOCK, atomic_load(&s->gen), s->idx);
}
static inline pyxlio_poll_group_t group_h(const ugroup_t *g) {
    return (pyxlio_poll_group_t)mkh(U_TAG_GROUP, atomic_load(&g->gen), g->idx);
}

static void detached_init(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&g_detached_mu, &a);
    pthread_mutexattr_destroy(&a);
}

/* The tables, once the pool exists (after emu_init). 0 or -1/ENOMEM. */
static int tables_make(void) {
    if (atomic_load_explicit(&g_u_tables, memory_order_acquire)) return 0;
    pthread_mutex_lock(&g_u_mu);
    if (!atomic_load(&g_u_tables)) {
        g_xbufs = calloc(emu_pool.nbuf, sizeof *g_xbufs);
        g_ubufs = calloc(emu_pool.nbuf, sizeof *g_ubufs);
        g_us_free = calloc(U_MAX_SOCKS, sizeof *g_us_free);
        if (!g_xbufs || !g_ubufs || !g_us_free) {
            free(g_xbufs); free(g_ubufs); free(g_us_free);
            g_xbufs = NULL; g_ubufs = NULL; g_us_free = NULL;
            pthread_mutex_unlock(&g_u_mu);
            errno = ENOMEM;
            return -1;
        }
        pthread_once(&g_detached_once, detached_init);
        atomic_store_explicit(&g_u_tables, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_u_mu);
    return 0;
}

/* Every Ultra member but xlio_init_ex: xlio_init_ex() "must be called before using any other
 * XLIO Ultra API functions" (xlio.h).  Without it the real library runs on globals that the
 * global init has not made (a crash) or, if a socket() started XLIO, without the Ultra
 * settings xlio_init_ex applies (3.51.1 sets XLIO_PROGRESS_ENGINE_INTERVAL=0 there). */
static int ready(const char *fn) {
    if (EMU_LIKELY(atomic_load_explicit(&g_u_ready, memory_order_acquire))) return 1;
    emu_violation("%s: called before xlio_init_ex() (the Ultra API needs it first; %s)", fn,
                  atomic_load(&emu_inited) ? "XLIO is started, but without the Ultra settings"
                                           : "libxlio would run on uninitialised globals");
    errno = EINVAL;
    return 0;
}

/* ---- slots ------------------------------------------------------------------------------ */
static ugroup_t *group_get(pyxlio_poll_group_t h) {
    if (H_TAG(h) != U_TAG_GROUP || H_IDX(h) >= U_MAX_GROUPS) return NULL;
    ugroup_t *g = atomic_load(&g_ug[H_IDX(h)]);
    if (!g || !atomic_load(&g->live) || (atomic_load(&g->gen) & 0xffffffu) != H_GEN(h)) return NULL;
    return g;
}

static const char *group_why(pyxlio_poll_group_t h) {
    if (H_TAG(h) != U_TAG_GROUP || H_IDX(h) >= U_MAX_GROUPS || !atomic_load(&g_ug[H_IDX(h)]))
        return "not a poll group handle";
    return "a destroyed poll group";
}

static usock_t *sock_get(pyxlio_xsock_t h) {
    if (H_TAG(h) != U_TAG_SOCK || H_IDX(h) >= U_MAX_SOCKS) return NULL;
    usock_t *s = atomic_load(&g_us[H_IDX(h)]);
    if (!s || !atomic_load(&s->live) || (atomic_load(&s->gen) & 0xffffffu) != H_GEN(h)) return NULL;
    return s;
}

static const char *sock_why(pyxlio_xsock_t h) {
    if (H_TAG(h) != U_TAG_SOCK || H_IDX(h) >= U_MAX_SOCKS || !atomic_load(&g_us[H_IDX(h)]))
        return "not a socket handle";
    return "a socket after XLIO_SOCKET_EVENT_TERMINATED (destroyed)";
}

static ugroup_t *group_alloc(void) {
    pthread_mutex_lock(&g_u_mu);
    uint32_t idx;
    ugroup_t *g;
    if (g_ug_nfree) {
        idx = g_ug_free[0];
        memmove(g_ug_free, g_ug_free + 1, (g_ug_nfree - 1) * sizeof *g_ug_free);
        g_ug_nfree--;
        g = atomic_load(&g_ug[idx]);
    } else if (g_ug_used < U_MAX_GROUPS) {
        g = calloc(1, sizeof *g);
        if (!g) { pthread_mutex_unlock(&g_u_mu); errno = ENOMEM; return NULL; }
        idx = g_ug_used++;
        g->idx = idx;
        atomic_store(&g->gen, 1);
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
        pthread_mutex_init(&g->mu, &a);
        pthread_mutexattr_destroy(&a);
        atomic_store(&g_ug[idx], g);
    } else {
        pthread_mutex_unlock(&g_u_mu);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_unlock(&g_u_mu);
    return g;
}

static void group_release(ugroup_t *g) {
    pthread_mutex_lock(&g_u_mu);
    atomic_store(&g->live, 0);
    atomic_fetch_add(&g->gen, 1);
    g_ug_free[g_ug_nfree++] = g->idx;
    pthread_mutex_unlock(&g_u_mu);
}

static usock_t *sock_alloc(void) {
    pthread_mutex_lock(&g_u_mu);
    usock_t *s;
    if (g_us_nfree) {           /* FIFO: a freed slot is reused last */
        uint32_t idx = g_us_free[g_us_fhead];
        g_us_fhead = (g_us_fhead + 1) % U_MAX_SOCKS;
        g_us_nfree--;
        s = atomic_load(&g_us[idx]);
    } else if (g_us_used < U_MAX_SOCKS) {
        s = calloc(1, sizeof *s);
        if (!s) { pthread_mutex_unlock(&g_u_mu); errno = ENOMEM; return NULL; }
        s->idx = g_us_used++;
        atomic_store(&s->gen, 1);
        atomic_store(&g_us[s->idx], s);
    } else {
        pthread_mutex_unlock(&g_u_mu);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_unlock(&g_u_mu);
    uint32_t gen = atomic_load(&s->gen);
    uint32_t idx = s->idx;
    memset((char *)s + offsetof(usock_t, idx), 0, sizeof *s - offsetof(usock_t, idx));
    s->idx = idx;
    atomic_store(&s->gen, gen);
    s->fd = -1;
    s->group = -1;
    return s;
}

static void sock_release(usock_t *s) {
    pthread_mutex_lock(&g_u_mu);
    atomic_store(&s->live, 0);
    atomic_fetch_add(&s->gen, 1);
    g_us_free[(g_us_fhead + g_us_nfree) % U_MAX_SOCKS] = s->idx;
    g_us_nfree++;
    pthread_mutex_unlock(&g_u_mu);
}

/* ---- locking ---------------------------------------------------------------------------- */
static void group_lock(ugroup_t *g, const char *fn) {
    if (pthread_mutex_trylock(&g->mu) != 0) {
        /* "Within a polling group: All operations require serialization" (3.70.2 xlio.h),
         * unless the group is XLIO_GROUP_FLAG_SAFE */
        if (!(g->flags & PYXLIO_GROUP_FLAG_SAFE))
            emu_violation("%s: group %#llx used from two threads at once without "
                          "XLIO_GROUP_FLAG_SAFE (libxlio does not serialise it)", fn,
                          (unsigned long long)group_h(g));
        pthread_mutex_lock(&g->mu);
    }
}

static void sock_unlock(ugroup_t *g) {
    pthread_mutex_unlock(g ? &g->mu : &g_detached_mu);
}

/* Look a socket handle up and take its group's lock: the socket, and *gp the group (NULL when
 * detached: the detached lock is held).  NULL (violation, errno EINVAL) for a dead handle or,
 * unless allow_destroyed, a destroyed socket. */
static usock_t *sock_enter(pyxlio_xsock_t h, const char *fn, ugroup_t **gp, int allow_destroyed) {
    for (int tries = 0; tries < 1000; tries++) {
        usock_t *s = sock_get(h);
        if (!s) {
            emu_violation("%s: %#llx is %s (libxlio would use freed or foreign memory)", fn,
                          (unsigned long long)h, sock_why(h));
            errno = EINVAL;
            return NULL;
        }
        int gi = s->group;
        ugroup_t *g = gi >= 0 ? atomic_load(&g_ug[gi]) : NULL;
        if (g) group_lock(g, fn);
        else pthread_mutex_lock(&g_detached_mu);
        if (sock_get(h) != s || s->group != gi) {       /* moved or died meanwhile */
            sock_unlock(g);
            continue;
        }
        if (s->terminated || (s->destroyed && !allow_destroyed)) {
            emu_violation("%s: socket %#llx was destroyed (%s)", fn, (unsigned long long)h,
                          s->terminated ? "terminated" : "no call but the buffer frees may "
                          "follow xlio_socket_destroy");
            sock_unlock(g);
            errno = EINVAL;
            return NULL;
        }
        *gp = g;
        return s;
    }
    errno = EAGAIN;
    return NULL;
}

/* ---- group membership ------------------------------------------------------------------- */
static int grow(uint32_t **arr, uint32_t *cap, uint32_t need) {
    if (need <= *cap) return 0;
    uint32_t nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    uint32_t *n = realloc(*arr, nc * sizeof *n);
    if (!n) { errno = ENOMEM; return -1; }
    *arr = n;
    *cap = nc;
    return 0;
}

static int group_add(ugroup_t *g, usock_t *s) {
    if (grow(&g->socks, &g->capsocks, g->nsocks + 1) < 0) return -1;
    s->gpos = g->nsocks;
    g->socks[g->nsocks++] = s->idx;
    s->group = (int)g->idx;
    return 0;
}

static void dirty_remove(ugroup_t *g, usock_t *s) {
    if (!s->dirty) return;
    for (uint32_t i = 0; i < g->ndirty; i++)
        if (g->dirty[i] == s->idx) {
            g->dirty[i] = g->dirty[--g->ndirty];
            break;
        }
    s->dirty = 0;
}

static void epoll_off(ugroup_t *g, usock_t *s) {
    if (s->registered && g && s->fd >= 0) REAL(epoll_ctl)(g->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    s->registered = 0;
    s->epmask = 0;
}

static void group_remove(ugroup_t *g, usock_t *s) {
    epoll_off(g, s);
    dirty_remove(g, s);
    uint32_t p = s->gpos;
    if (p < g->nsocks && g->socks[p] == s->idx) {
        uint32_t last = g->socks[--g->nsocks];
        g->socks[p] = last;
        usock_t *o = atomic_load(&g_us[last]);
        if (o) o->gpos = p;
    }
    s->group = -1;
}

/* The epoll interest the socket's state asks for. */
static int queue_writable(const usock_t *s) { return s->qhead && s->qhead != s->unflushed; }

static void interest(ugroup_t *g, usock_t *s) {
    if (!g || s->fd < 0) return;
    uint32_t want = 0;
    int reg = 1;
    switch (s->state) {
    case US_LISTEN: want = EPOLLIN; break;
    case US_CONNECTING: want = EPOLLOUT; break;
    case US_ESTABLISHED:
        if (!s->rd_eof) want |= EPOLLIN | EPOLLRDHUP;
        if (queue_writable(s)) want |= EPOLLOUT;
        break;       /* after EOF with nothing to send: registered with no events, so that a
                      * reset (EPOLLERR/EPOLLHUP, always reported) is still seen */
    default: reg = 0;
    }
    if (s->pending_err) reg = 0;
    if (!reg) { epoll_off(g, s); return; }
    if (s->registered && want == s->epmask) return;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = want;
    ev.data.u64 = sock_h(s);
    if (REAL(epoll_ctl)(g->epfd, s->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev) == 0) {
        s->registered = 1;
        s->epmask = want;
    }
}

/* ---- callbacks -------------------------------------------------------------------------- */
static void ev(ugroup_t *g, usock_t *s, int event, int value) {
    if (g && g->event_cb) g->event_cb(sock_h(s), s->userdata, event, value);
}

/* Deliver the completions of sends the kernel has taken, in order.  Returns 0 when the socket
 * died meanwhile (a callback destroyed it: 3.51 terminates at once). */
static int deliver_comps(ugroup_t *g, usock_t *s) {
    uint32_t gen = atomic_load(&s->gen);
    while (s->dhead) {
        usend_t *e = s->dhead;
        s->dhead = e->next;
        if (!s->dhead) s->dtail = NULL;
        uintptr_t op = e->userdata_op;
        free(e);
        if (g && g->comp_cb) g->comp_cb(sock_h(s), s->userdata, op);
        if (atomic_load(&s->gen) != gen) return 0;
    }
    return 1;
}

/* ---- the send queue --------------------------------------------------------------------- */
static void mr_put(emu_mr_t *mr) {
    if (!mr) return;
    pthread_mutex_lock(&g_u_mu);
    mr->inflight--;
    pthread_mutex_unlock(&g_u_mu);
}

/* a send wholly taken (or discarded): to the completion list, or freed */
static void send_done(usock_t *s, usend_t *e) {
    mr_put(e->mr);
    if (e->zc && e->userdata_op && e->total) {
        e->next = NULL;
        if (s->dtail) s->dtail->next = e;
        else s->dhead = e;
        s->dtail = e;
    } else {
        free(e);
    }
}

/* drop every queued send (reset, destroy): their completions follow */
static void queue_discard(usock_t *s) {
    while (s->qhead) {
        usend_t *e = s->qhead;
        s->qhead = e->next;
        send_done(s, e);
    }
    s->qtail = NULL;
    s->unflushed = NULL;
}

static int map_err(int e, int connecting) {
    switch (e) {
    case ECONNREFUSED: return ECONNREFUSED;
    case ECONNRESET: return connecting ? ECONNREFUSED : ECONNRESET;
    case EPIPE: return ECONNRESET;
    case ETIMEDOUT: case EHOSTUNREACH: case ENETUNREACH: case EHOSTDOWN: case ENETDOWN:
        return ETIMEDOUT;
    default: return ECONNABORTED;
    }
}

/* errno of a send on a failed connection (sockinfo_tcp::is_connected_and_ready_to_send) */
static int send_errno(int value) {
    switch (value) {
    case ECONNRESET: return ECONNRESET;
    case ECONNREFUSED: return ECONNREFUSED;
    case ETIMEDOUT: return ETIMEDOUT;
    default: return EPIPE;
    }
}

/* The connection failed with `value` (an ERROR value): no more I/O; the ERROR event and the
 * completions wait for the poll. */
static void sock_fail(ugroup_t *g, usock_t *s, int value) {
    if (s->state == US_FAILED) return;
    s->state = US_FAILED;
    s->send_err = send_errno(value);
    s->pending_err = value;
    epoll_off(g, s);
    if (g) g->work = 1;
}

/* Write flushed sends to the kernel until it takes no more.  0, or -1 when the connection
 * failed (sock_fail done). */
static int queue_write(ugroup_t *g, usock_t *s) {
    while (queue_writable(s)) {
        struct iovec iov[U_WRITE_IOV];
        int n = 0;
        size_t want = 0;
        for (usend_t *e = s->qhead; e && e != s->unflushed && n < U_WRITE_IOV; e = e->next) {
            size_t skip = e->off;
            for (uint32_t k = 0; k < e->niov && n < U_WRITE_IOV; k++) {
                size_t l = e->iov[k].iov_len;
                if (skip >= l) { skip -= l; continue; }
                iov[n].iov_base = (char *)e->iov[k].iov_base + skip;
                iov[n].iov_len = l - skip;
                want += l - skip;
                skip = 0;
                n++;
            }
        }
        if (n == 0) {                   /* zero-length sends at the head */
            while (s->qhead && s->qhead != s->unflushed && s->qhead->off >= s->qhead->total) {
                usend_t *e = s->qhead;
                s->qhead = e->next;
                if (!s->qhead) s->qtail = NULL;
                send_done(s, e);
                if (g) g->work = 1;
            }
            continue;
        }
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = iov;
        m.msg_iovlen = (size_t)n;
        ssize_t w = REAL(sendmsg)(s->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) break;
            sock_fail(g, s, map_err(errno, 0));
            return -1;
        }
        size_t left = (size_t)w;
        while (s->qhead && s->qhead != s->unflushed) {
            usend_t *e = s->qhead;
            size_t rest = e->total - e->off;
            if (left < rest) { e->off += left; left = 0; break; }
            left -= rest;
            e->off = e->total;
            s->qhead = e->next;
            if (!s->qhead) s->qtail = NULL;
            send_done(s, e);
            if (g) g->work = 1;
        }
        if ((size_t)w < want) break;    /* the kernel's buffer is full */
    }
    interest(g, s);
    return 0;
}

static void sock_flush(ugroup_t *g, usock_t *s) {
    s->unflushed = NULL;
    if (g) dirty_remove(g, s);
    if (s->state == US_ESTABLISHED) queue_write(g, s);
}

/* ---- closing ---------------------------------------------------------------------------- */
static void drain_rx(int fd) {
    char tmp[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t n = REAL(recv)(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n <= 0) break;
    }
}

static void close_fd(usock_t *s, int reset) {
    if (s->fd < 0) return;
    if (reset) {
        struct linger lg = {1, 0};
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else if (s->state == US_ESTABLISHED) {
        drain_rx(s->fd);    /* unread data would turn the kernel's FIN into a RST */
    }
    REAL(close)(s->fd);
    s->fd = -1;
}

/* The last steps: completions, TERMINATED, the slot freed.  The group's lock is held. */
static void sock_terminate(ugroup_t *g, usock_t *s, int reset) {
    epoll_off(g, s);
    queue_discard(s);
    close_fd(s, reset);
    if (g) group_remove(g, s);
    s->group = g ? (int)g->idx : -1;        /* callbacks still see the group */
    deliver_comps(g, s);
    s->terminated = 1;
    ev(g, s, PYXLIO_SOCKET_EVENT_TERMINATED, 0);
    s->group = -1;
    sock_release(s);
}

/* 3.60+: a destroyed socket at the poll (poll_group::slow_path_run -> close_socket ->
 * prepare_to_close -> tcp_close). */
static void sock_closing_step(ugroup_t *g, usock_t *s) {
    if (!s->closing) {
        s->closing = 1;
        if (s->state != US_ESTABLISHED) { sock_terminate(g, s, 0); return; }
        s->unflushed = NULL;             /* tcp_close sends what is queued, flushed or not */
        dirty_remove(g, s);
    }
    if (s->state == US_ESTABLISHED) {
        drain_rx(s->fd);                 /* rx_drop_lwip_cb: data after destroy is dropped */
        if (queue_write(g, s) == 0 && s->qhead) {
            g->work = 1;                 /* more next poll */
            return;
        }
    }
    sock_terminate(g, s, s->state != US_ESTABLISHED);
}

/* ---- receive ---------------------------------------------------------------------------- */
static void deliver_error(ugroup_t *g, usock_t *s) {
    int v = s->pending_err;
    s->pending_err = 0;
    uint32_t gen = atomic_load(&s->gen);
    if (!deliver_comps(g, s)) return;           /* what completed before the failure first */
    if (!s->destroyed) ev(g, s, PYXLIO_SOCKET_EVENT_ERROR, v);
    if (atomic_load(&s->gen) != gen || !atomic_load(&s->live)) return;
    queue_discard(s);                           /* then the segments lwIP purges */
    deliver_comps(g, s);
}

static void bufs_put_back(const uint32_t *b, uint32_t n) { emu_pool_put(b, n); }

/* Read up to U_RX_BUDGET buffers from the kernel and hand them to rx_cb. */
static void sock_rx(ugroup_t *g, usock_t *s) {
    uint32_t gen = atomic_load(&s->gen);
    uint32_t budget = U_RX_BUDGET;
    size_t frag = emu_conf.frag;
    while (budget) {
        uint32_t bufs[U_RX_CHUNK];
        uint32_t want = budget < U_RX_CHUNK ? budget : U_RX_CHUNK;
        uint32_t got = emu_pool_get(bufs, want);
        if (!got) return;                /* pool exhausted: the data waits in the kernel */
        struct iovec iov[U_RX_CHUNK];
        for (uint32_t i = 0; i < got; i++) {
            iov[i].iov_base = emu_buf(bufs[i]);
            iov[i].iov_len = frag;
        }
        ssize_t n = REAL(readv)(s->fd, iov, (int)got);
        if (n <= 0) {
            int e = errno;
            bufs_put_back(bufs, got);
            if (n == 0) {
                s->rd_eof = 1;
                interest(g, s);
                /* CLOSED: 3.60+ (tcp_state_observer, CLOSE_WAIT); 3.51.1 has no such event */
                if (ultra_layout()) ev(g, s, PYXLIO_SOCKET_EVENT_CLOSED, 0);
                return;
            }
            if (e == EINTR) continue;
            if (e == EAGAIN || e == EWOULDBLOCK) return;
            sock_fail(g, s, map_err(e, 0));
            return;
        }
        uint32_t used = (uint32_t)(((size_t)n + frag - 1) / frag);
        if (used < got) bufs_put_back(bufs + used, got - used);
        budget -= used;
        size_t left = (size_t)n;
        for (uint32_t i = 0; i < used; i++) {
            size_t len = left < frag ? left : frag;
            left -= len;
            if (!g->rx_cb || atomic_load(&s->gen) != gen || s->destroyed) {
                bufs_put_back(&bufs[i], 1);     /* no rx_cb, or destroyed meanwhile: dropped */
                continue;
            }
            uint32_t b = bufs[i];
            g_xbufs[b].userdata = 0;
            g_ubufs[b].group = g->idx;
            g_ubufs[b].ggen = atomic_load(&g->gen);
            atomic_fetch_add(&g->nbufs, 1);
            atomic_fetch_add(&g_nbufs, 1);
            atomic_store_explicit(&g_ubufs[b].state, UB_APP, memory_order_release);
            g->rx_cb(sock_h(s), s->userdata, emu_buf(b), len, &g_xbufs[b]);
        }
        if (atomic_load(&s->gen) != gen || s->destroyed || s->group != (int)g->idx) return;
        if ((size_t)n < (size_t)got * frag) return;     /* drained */
    }
}

static void sock_accept(ugroup_t *g, usock_t *l) {
    uint32_t lgen = atomic_load(&l->gen);
    for (int i = 0; i < U_ACCEPT_BUDGET; i++) {
        int fd = REAL(accept4)(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return;
        }
        usock_t *s = sock_alloc();
        if (!s) { REAL(close)(fd); continue; }   /* "n_conn_dropped" */
        s->fd = fd;
        s->domain = l->domain;
        s->state = US_ESTABLISHED;
        s->bound = 1;
        s->rule_seq = l->rule_seq;
        if (group_add(g, s) < 0) { REAL(close)(fd); s->fd = -1; sock_release(s); continue; }
        atomic_store(&s->live, 1);
        interest(g, s);
        g->accept_cb(sock_h(s), sock_h(l), l->userdata);
        if (atomic_load(&l->gen) != lgen || l->destroyed) return;
    }
}

static void sock_connected(ugroup_t *g, usock_t *s, uint32_t events) {
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) err = errno;
    if (err == 0) {
        struct sockaddr_storage peer;
        socklen_t pl = sizeof peer;
        if (getpeername(s->fd, (struct sockaddr *)&peer, &pl) != 0) {
            /* not connected: not yet, or failed with the error already taken */
            if (events & (EPOLLERR | EPOLLHUP)) sock_fail(g, s, ECONNABORTED);
            return;
        }
        s->state = US_ESTABLISHED;
        interest(g, s);
        ev(g, s, PYXLIO_SOCKET_EVENT_ESTABLISHED, 0);
        return;
    }
    s->state = US_CONNECTING;               /* an error while connecting */
    sock_fail(g, s, map_err(err, 1));
}

static void sock_event(ugroup_t *g, usock_t *s, uint32_t events) {
    uint32_t gen = atomic_load(&s->gen);
    switch (s->state) {
    case US_LISTEN:
        if (events & EPOLLIN) sock_accept(g, s);
        return;
    case US_CONNECTING:
        sock_connected(g, s, events);
        return;
    case US_ESTABLISHED:
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            if (!s->rd_eof) sock_rx(g, s);
            if (atomic_load(&s->gen) != gen || s->state != US_ESTABLISHED) return;
            if (s->rd_eof && (events & (EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) { sock_fail(g, s, map_err(err, 0)); return; }
            }
        }
        if (events & EPOLLOUT) queue_write(g, s);
        return;
    default:
        return;
    }
}

/* The deferred work of the group's sockets: destroys (3.60+), errors, completions. */
static void group_scan(ugroup_t *g) {
    g->work = 0;
    if (grow(&g->scratch, &g->capscratch, g->nsocks) < 0) { g->work = 1; return; }
    uint32_t n = g->nsocks;
    memcpy(g->scratch, g->socks, n * sizeof *g->scratch);
    for (uint32_t i = 0; i < n; i++) {
        usock_t *s = atomic_load(&g_us[g->scratch[i]]);
        if (!s || !atomic_load(&s->live) || s->group != (int)g->idx || s->terminated) continue;
        if (s->destroyed) { sock_closing_step(g, s); continue; }
        if (s->pending_err) { deliver_error(g, s); continue; }
        if (s->dhead) deliver_comps(g, s);
    }
}

/* ---- the members ------------------------------------------------------------------------ */
static int u_init_ex(const pyxlio_init_attr_t *attr) {
    if (!attr) {
        emu_violation("xlio_init_ex: attr is NULL (libxlio dereferences it)");
        errno = EINVAL;
        return -1;
    }
    pyxlio_init_attr_t a = *attr;
    int started = atomic_load(&emu_inited);
    if (started && ultra_layout()) {
        /* 3.60+ (sock-extra.cpp): already initialised -> -1/EEXIST with an allocator (the
         * memory exists already), else 0 without looking at memory_cb */
        atomic_store(&g_u_ready, 1);
        if (tables_make() < 0) return -1;
        if (a.memory_alloc) { errno = EEXIST; return -1; }
        if (a.memory_cb)
            emu_vlog("xlio_init_ex: XLIO was started already: memory_cb ignored (as libxlio "
                     "3.60+ does)");
        return 0;
    }
    if (!started) {
        if (a.memory_alloc) {
            /* the pool's allocator, as the ioctl's user allocator (emu_pool_create) */
            emu_user_alloc = a.memory_alloc;
            emu_user_free = a.memory_free;
            atomic_store(&emu_user_alloc_set, 1);
        }
        emu_init();
    } else if (a.memory_alloc) {
        /* 3.51.1 stores the allocator and never calls it: its memory exists already */
        emu_log("xlio_init_ex: XLIO was started already (a socket() or epoll_create()): the "
                "allocator is not used, as in libxlio 3.51.1");
    }
    if (tables_make() < 0) return -1;
    atomic_store(&g_u_ready, 1);
    /* memory_cb: each block of buffer memory (the emulator's pool is one block); "for external
     * allocators, hugepage_size in memory_cb is always reported as zero" (xlio_types.h) */
    if (a.memory_cb) a.memory_cb(emu_pool.base, emu_pool.size, 0);
    return 0;
}

static int u_exit(void) {
    if (!atomic_load(&g_u_ready)) return 0;       /* xlio_exit: nothing initialised -> 0 */
    unsigned long ng = 0, ns = 0;
    for (uint32_t i = 0; i < U_MAX_GROUPS; i++) {
        ugroup_t *g = atomic_load(&g_ug[i]);
        if (g && atomic_load(&g->live)) ng++;
    }
    for (uint32_t i = 0; i < U_MAX_SOCKS; i++) {
        usock_t *s = atomic_load(&g_us[i]);
        if (s && atomic_load(&s->live)) ns++;
    }
    unsigned long nb = atomic_load(&g_nbufs);
    if (ng || ns || nb) {
        emu_violation("xlio_exit: %lu poll group(s), %lu socket(s) and %lu buffer(s) still live "
                      "(libxlio frees them under the application): refused with EBUSY",
                      ng, ns, nb);
        errno = EBUSY;
        return -1;
    }
    atomic_store(&g_u_ready, 0);
    return 0;
}

static int u_group_create(const pyxlio_poll_group_attr_t *attr, pyxlio_poll_group_t *out) {
    if (!ready("xlio_poll_group_create")) return -1;
    if (!out || !attr || !attr->socket_event_cb) { errno = EINVAL; return -1; }
    /* the 16-member API's attribute struct is 32 bytes: never read accept_cb there */
    pyxlio_poll_group_attr_t a;
    memset(&a, 0, sizeof a);
    memcpy(&a, attr, ultra_layout() ? PYXLIO_POLL_GROUP_ATTR_SIZE_ULTRA
                                    : PYXLIO_POLL_GROUP_ATTR_SIZE_SOCKET_API);
    int epfd = REAL(epoll_create1)(EPOLL_CLOEXEC);
    if (epfd < 0) return -1;
    ugroup_t *g = group_alloc();
    if (!g) { REAL(close)(epfd); return -1; }
    g->flags = a.flags;
    g->event_cb = a.socket_event_cb;
    g->comp_cb = a.socket_comp_cb;
    g->rx_cb = a.socket_rx_cb;
    g->accept_cb = a.socket_accept_cb;
    g->epfd = epfd;
    g->in_poll = 0;
    g->work = 0;
    g->nsocks = 0;
    g->ndirty = 0;
    atomic_store(&g->nbufs, 0);
    atomic_store(&g->live, 1);
    *out = group_h(g);
    return 0;
}

static int u_group_destroy(pyxlio_poll_group_t h) {
    if (!ready("xlio_poll_group_destroy")) return -1;
    ugroup_t *g = group_get(h);
    if (!g) {
        emu_violation("xlio_poll_group_destroy: %#llx is %s (libxlio would delete freed or "
                      "foreign memory)", (unsigned long long)h, group_why(h));
        errno = EINVAL;
        return -1;
    }
    group_lock(g, "xlio_poll_group_destroy");
    if (g->in_poll) {
        pthread_mutex_unlock(&g->mu);
        emu_violation("xlio_poll_group_destroy: group %#llx destroyed from its own callback "
                      "(libxlio would free the group under its poll): refused with EBUSY",
                      (unsigned long long)h);
        errno = EBUSY;
        return -1;
    }
    /* Leftover sockets, destroyed or not, are closed now by force (RST), each with its
     * completions and TERMINATED inside this call: 3.70.2's xlio.h says "All leftover sockets
     * associated with this group are destroyed implicitly", and libxlio 3.51.1 and 3.70.2 were
     * measured to answer 0 and deliver TERMINATED inside xlio_poll_group_destroy (the group's
     * destructor closes them with close_socket(si, true)).  Their handles are dead after. */
    g->in_poll++;
    while (g->nsocks) {
        usock_t *s = atomic_load(&g_us[g->socks[g->nsocks - 1]]);
        if (!s) { g->nsocks--; continue; }
        s->destroyed = 1;
        sock_terminate(g, s, 1);
    }
    g->in_poll--;
    unsigned long nb = atomic_load(&g->nbufs);
    if (nb)
        emu_violation("xlio_poll_group_destroy: group %#llx destroyed while the application "
                      "holds %lu of its receive buffer(s) (libxlio releases the group's rings: "
                      "free them first)", (unsigned long long)h, nb);
    REAL(close)(g->epfd);
    g->epfd = -1;
    group_release(g);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static void u_group_poll(pyxlio_poll_group_t h) {
    if (!ready("xlio_poll_group_poll")) return;
    ugroup_t *g = group_get(h);
    if (!g) {
        emu_violation("xlio_poll_group_poll: %#llx is %s", (unsigned long long)h, group_why(h));
        return;
    }
    group_lock(g, "xlio_poll_group_poll");
    if (group_get(h) != g) { pthread_mutex_unlock(&g->mu); return; }
    if (g->in_poll) {
        pthread_mutex_unlock(&g->mu);
        emu_violation("xlio_poll_group_poll: group %#llx polled from its own callback (not "
                      "reentrant): nothing done", (unsigned long long)h);
        return;
    }
    g->in_poll++;
    if (g->work) group_scan(g);
    struct epoll_event evs[U_EPOLL_BATCH];
    int n = REAL(epoll_wait)(g->epfd, evs, U_EPOLL_BATCH, 0);
    for (int i = 0; i < n; i++) {
        usock_t *s = sock_get((pyxlio_xsock_t)evs[i].data.u64);
        if (!s || s->group != (int)g->idx || s->destroyed || s->terminated) continue;
        sock_event(g, s, evs[i].events);
        if (sock_get((pyxlio_xsock_t)evs[i].data.u64) == s && s->dhead && !s->destroyed)
            deliver_comps(g, s);
    }
    if (g->work) group_scan(g);
    g->in_poll--;
    pthread_mutex_unlock(&g->mu);
}

static void u_group_flush(pyxlio_poll_group_t h) {
    if (!ready("xlio_poll_group_flush")) return;
    ugroup_t *g = group_get(h);
    if (!g) {
        emu_violation("xlio_poll_group_flush: %#llx is %s", (unsigned long long)h, group_why(h));
        return;
    }
    group_lock(g, "xlio_poll_group_flush");
    /* the dirty list exists only with XLIO_GROUP_FLAG_DIRTY (poll_group::add_dirty_socket) */
    while (g->ndirty) {
        usock_t *s = atomic_load(&g_us[g->dirty[g->ndirty - 1]]);
        g->ndirty--;
        if (!s) continue;
        s->dirty = 0;
        if (atomic_load(&s->live) && !s->destroyed) sock_flush(g, s);
    }
    pthread_mutex_unlock(&g->mu);
}

static int u_socket_create(const pyxlio_socket_attr_t *attr, pyxlio_xsock_t *out) {
    if (!ready("xlio_socket_create")) return -1;
    if (!out || !attr || !attr->group || !(attr->domain == AF_INET || attr->domain == AF_INET6)) {
        errno = EINVAL;
        return -1;
    }
    pyxlio_socket_attr_t a = *attr;
    ugroup_t *g = group_get(a.group);
    if (!g) {
        emu_violation("xlio_socket_create: group %#llx is %s", (unsigned long long)a.group,
                      group_why(a.group));
        errno = EINVAL;
        return -1;
    }
    int fd = REAL(socket)(a.domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    group_lock(g, "xlio_socket_create");
    if (group_get(a.group) != g) {
        pthread_mutex_unlock(&g->mu);
        REAL(close)(fd);
        errno = EINVAL;
        return -1;
    }
    usock_t *s = sock_alloc();
    if (!s || group_add(g, s) < 0) {
        int e = errno;
        if (s) sock_release(s);
        pthread_mutex_unlock(&g->mu);
        REAL(close)(fd);
        errno = e;
        return -1;
    }
    s->fd = fd;
    s->domain = a.domain;
    s->userdata = a.userdata_sq;
    s->state = US_NEW;
    s->rule_seq = emu_rules_seq();
    atomic_store(&s->live, 1);
    *out = sock_h(s);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static int u_socket_destroy(pyxlio_xsock_t h) {
    if (!ready("xlio_socket_destroy")) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_destroy", &g, 0);
    if (!s) return -1;
    s->destroyed = 1;
    if (!g) {
        /* detached (3.60+): closed at once; with no group there is no callback to call */
        queue_discard(s);
        while (s->dhead) { usend_t *e = s->dhead; s->dhead = e->next; free(e); }
        s->dtail = NULL;
        close_fd(s, 1);
        s->terminated = 1;
        sock_release(s);
        pthread_mutex_unlock(&g_detached_mu);
        return 0;
    }
    if (ultra_layout()) {
        g->work = 1;                     /* mark_socket_to_close: the next poll closes it */
    } else {
        /* 3.51: close_socket(si, true) at once: RST, completions, TERMINATED */
        g->in_poll++;
        sock_terminate(g, s, 1);
        g->in_poll--;
    }
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static int u_socket_update(pyxlio_xsock_t h, unsigned flags, uintptr_t userdata_sq) {
    if (!ready("xlio_socket_update")) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_update", &g, 0);
    if (!s) return -1;
    (void)flags;                         /* "Currently unused" (update_xlio_socket) */
    s->userdata = userdata_sq;
    sock_unlock(g);
    return 0;
}

static int u_setsockopt(pyxlio_xsock_t h, int level, int optname, const void *optval,
                        socklen_t optlen) {
    if (!ready("xlio_socket_setsockopt")) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_setsockopt", &g, 0);
    if (!s) return -1;
    int saved = errno;
    int rc = setsockopt(s->fd, level, optname, optval, optlen);
    if (rc == 0) errno = saved;
    sock_unlock(g);
    return rc;
}

static int sockname(pyxlio_xsock_t h, struct sockaddr *addr, socklen_t *len, int peer) {
    const char *fn = peer ? "xlio_socket_getpeername" : "xlio_socket_getsockname";
    if (!ready(fn)) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, fn, &g, 0);
    if (!s) return -1;
    int rc = peer ? getpeername(s->fd, addr, len) : getsockname(s->fd, addr, len);
    sock_unlock(g);
    return rc;
}
static int u_getsockname(pyxlio_xsock_t h, struct sockaddr *a, socklen_t *l) { return sockname(h, a, l, 0); }
static int u_getpeername(pyxlio_xsock_t h, struct sockaddr *a, socklen_t *l) { return sockname(h, a, l, 1); }

static void local_addr(usock_t *s, struct sockaddr_storage *a, socklen_t *l) {
    *l = sizeof *a;
    if (getsockname(s->fd, (struct sockaddr *)a, l) != 0) *l = 0;
}

/* Bind: the kernel binds; an address the offload mode leaves to the kernel makes the socket a
 * passthrough one (not offloaded).  3.60+: -1/ENODEV for it, the socket stays bound
 * (sock-extra.cpp xlio_socket_bind: isPassthrough after a successful bind); 3.51: 0. */
static int u_bind(pyxlio_xsock_t h, const struct sockaddr *addr, socklen_t len) {
    if (!ready("xlio_socket_bind")) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_bind", &g, 0);
    if (!s) return -1;
    int saved = errno;
    int rc = REAL(bind)(s->fd, addr, len);
    if (rc == 0) {
        errno = saved;
        s->bound = 1;
        if (emu_addr_kernel(addr, len)) s->passthrough = 1;
        if (s->passthrough && ultra_layout()) {
            errno = ENODEV;
            rc = -1;
        }
    }
    sock_unlock(g);
    return rc;
}

/* Connect: non-blocking; 0 for EINPROGRESS (sock-extra.cpp).  A socket that is not offloaded
 * (bound or connecting to an address the offload mode leaves to the kernel, or a transport
 * rule `use os tcp_client`) is not connected: 3.60+ answer -1/ENODEV; 3.51.1 answers -1 with
 * an errno it does not set (passthrough_unlock), for which the emulator also says ENODEV. */
static int u_connect(pyxlio_xsock_t h, const struct sockaddr *to, socklen_t len) {
    if (!ready("xlio_socket_connect")) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_connect", &g, 0);
    if (!s) return -1;
    int rc = -1;
    switch (s->state) {
    case US_CONNECTING: errno = EALREADY; goto out;
    case US_ESTABLISHED: errno = EISCONN; goto out;
    case US_FAILED: errno = ECONNABORTED; goto out;   /* "Socket should be recreated" */
    case US_LISTEN: errno = EADDRINUSE; goto out;
    default: break;
    }
    if (!to || len < sizeof(sa_family_t)) { errno = EINVAL; goto out; }
    struct sockaddr_storage la;
    socklen_t ll;
    local_addr(s, &la, &ll);
    if (!s->passthrough &&
        (emu_addr_kernel(to, len) || (s->bound && emu_addr_kernel((struct sockaddr *)&la, ll)) ||
         emu_rules_use_os(EMU_ROLE_TCP_CLIENT, to, ll ? (struct sockaddr *)&la : NULL,
                          s->rule_seq)))
        s->passthrough = 1;
    if (s->passthrough) {
        if (!ultra_layout())
            emu_vlog("xlio_socket_connect: socket %#llx is not offloaded: libxlio 3.51.1 answers "
                     "-1 and leaves errno unset; the emulator says ENODEV", (unsigned long long)h);
        errno = ENODEV;
        goto out;
    }
    int saved = errno;
    int k = REAL(connect)(s->fd, to, len);
    if (k == 0 || errno == EINPROGRESS || errno == EAGAIN) {
        s->state = US_CONNECTING;
        interest(g, s);
        errno = saved;
        rc = 0;
    } else if (errno == ECONNREFUSED || errno == ETIMEDOUT || errno == ENETUNREACH ||
               errno == EHOSTUNREACH || errno == ECONNRESET) {
        /* the real library sends a SYN and learns the answer in a poll: so does the caller */
        s->state = US_CONNECTING;
        sock_fail(g, s, map_err(errno, 1));
        errno = saved;
        rc = 0;
    }
out:
    sock_unlock(g);
    return rc;
}

/* Listen (3.60+): the group needs accept_cb (else -1/ENOTCONN); a passthrough socket -1/ENODEV
 * (prepareListen() == 1) (sock-extra.cpp xlio_socket_listen). */
static int u_listen(pyxlio_xsock_t h) {
    if (!ready("xlio_socket_listen")) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_listen", &g, 0);
    if (!s) return -1;
    int rc = -1;
    if (!g || !g->accept_cb) { errno = ENOTCONN; goto out; }
    if (s->state != US_NEW && s->state != US_LISTEN) { errno = EINVAL; goto out; }
    struct sockaddr_storage la;
    socklen_t ll;
    local_addr(s, &la, &ll);
    if (s->passthrough ||
        (ll && emu_rules_use_os(EMU_ROLE_TCP_SERVER, (struct sockaddr *)&la, NULL, s->rule_seq))) {
        s->passthrough = 1;
        errno = ENODEV;
        goto out;
    }
    if (REAL(listen)(s->fd, SOMAXCONN) != 0) goto out;
    s->bound = 1;
    s->state = US_LISTEN;
    interest(g, s);
    rc = 0;
out:
    sock_unlock(g);
    return rc;
}

/* The protection domain: the emulator's own once the socket is offloaded and bound or
 * connecting/connected/listening (the real one has a device context only then), else NULL. */
static void *u_get_pd(pyxlio_xsock_t h) {
    if (!ready("xlio_socket_get_pd")) return NULL;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_get_pd", &g, 0);
    if (!s) return NULL;
    void *pd = (!s->passthrough && (s->bound || s->state != US_NEW)) ? (void *)&g_pd : NULL;
    sock_unlock(g);
    return pd;
}

/* Detach (3.60+): only a connected socket of a group (detach_xlio_group: else -1/EINVAL).
 * While detached nothing is received (the kernel keeps the data) and no event is given. */
static int u_detach(pyxlio_xsock_t h) {
    if (!ready("xlio_socket_detach_group")) return -1;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_detach_group", &g, 0);
    if (!s) return -1;
    if (!g || s->state != US_ESTABLISHED || s->rd_eof) {
        sock_unlock(g);
        errno = EINVAL;
        return -1;
    }
    group_remove(g, s);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static int u_attach(pyxlio_xsock_t h, pyxlio_poll_group_t gh) {
    if (!ready("xlio_socket_attach_group")) return -1;
    ugroup_t *ng = group_get(gh);
    if (!ng) {
        emu_violation("xlio_socket_attach_group: group %#llx is %s", (unsigned long long)gh,
                      group_why(gh));
        errno = EINVAL;
        return -1;
    }
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_attach_group", &g, 0);
    if (!s) return -1;
    if (g) {                  /* "Cannot attach a non-detached XLIO socket": -1, errno unset */
        sock_unlock(g);
        errno = EINVAL;
        return -1;
    }
    group_lock(ng, "xlio_socket_attach_group");
    int rc = -1;
    if (group_get(gh) != ng) {
        errno = EINVAL;                 /* destroyed meanwhile */
    } else if (group_add(ng, s) == 0) {
        interest(ng, s);
        if (s->dhead || s->pending_err) ng->work = 1;
        rc = 0;
    }
    pthread_mutex_unlock(&ng->mu);
    pthread_mutex_unlock(&g_detached_mu);
    return rc;
}

/* The registered region holding [p, p+len) with lkey mkey; inflight counted.  Under g_u_mu. */
static emu_mr_t *mr_find_locked(uint32_t mkey, const void *p, size_t len) {
    for (uint32_t i = 0; i < g_nmrs; i++) {
        emu_mr_t *m = g_mrs[i];
        if (m->lkey != mkey) continue;
        uintptr_t a = (uintptr_t)p, b = (uintptr_t)m->addr;
        if (a >= b && len <= m->length && a - b <= m->length - len) return m;
        return NULL;
    }
    return NULL;
}

static int u_sendv(pyxlio_xsock_t h, const struct iovec *iov, unsigned iovcnt,
                   const pyxlio_socket_send_attr_t *attr) {
    if (!ready("xlio_socket_sendv")) return -1;
    if (!attr) {
        emu_violation("xlio_socket_send: attr is NULL (libxlio dereferences it)");
        errno = EINVAL;
        return -1;
    }
    if (iovcnt && !iov) {
        emu_violation("xlio_socket_sendv: iov is NULL with iovcnt=%u", iovcnt);
        errno = EINVAL;
        return -1;
    }
    if (iovcnt > U_IOV_MAX) { errno = EINVAL; return -1; }
    pyxlio_socket_send_attr_t a = *attr;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_send", &g, 0);
    if (!s) return -1;
    int rc = -1;
    /* sockinfo_tcp::is_connected_and_ready_to_send */
    if (s->state != US_ESTABLISHED) {
        errno = s->state == US_CONNECTING ? EAGAIN : s->state == US_FAILED ? s->send_err : EPIPE;
        goto out;
    }
    size_t total = 0;
    for (unsigned k = 0; k < iovcnt; k++) {
        if (iov[k].iov_len > (size_t)INT32_MAX - total) { errno = EMSGSIZE; goto out; }
        total += iov[k].iov_len;
        if (iov[k].iov_len && !iov[k].iov_base) {
            emu_violation("xlio_socket_send: iov[%u] has a NULL base and %zu bytes", k,
                          iov[k].iov_len);
            errno = EINVAL;
            goto out;
        }
    }
    int inl = (a.flags & PYXLIO_SOCKET_SEND_FLAG_INLINE) != 0;
    usend_t *e;
    if (inl) {
        e = malloc(sizeof *e + sizeof(struct iovec) + total);
        if (!e) { errno = ENOMEM; goto out; }
        unsigned char *d = (unsigned char *)(e->iov + 1);
        size_t o = 0;
        for (unsigned k = 0; k < iovcnt; k++) {
            if (iov[k].iov_len) memcpy(d + o, iov[k].iov_base, iov[k].iov_len);
            o += iov[k].iov_len;
        }
        e->niov = 1;
        e->iov[0].iov_base = d;
        e->iov[0].iov_len = total;
        e->mr = NULL;
    } else {
        if (!g) {
            emu_violation("xlio_socket_send: zero-copy send on a detached socket %#llx (its "
                          "completion has no group to go to)", (unsigned long long)h);
            errno = EINVAL;
            goto out;
        }
        e = malloc(sizeof *e + (iovcnt ? iovcnt : 1) * sizeof(struct iovec));
        if (!e) { errno = ENOMEM; goto out; }
        emu_mr_t *mr = NULL;
        pthread_mutex_lock(&g_u_mu);
        for (unsigned k = 0; k < iovcnt; k++) {
            if (!iov[k].iov_len) continue;
            emu_mr_t *m = mr_find_locked(a.mkey, iov[k].iov_base, iov[k].iov_len);
            if (!m || (mr && m != mr)) {
                pthread_mutex_unlock(&g_u_mu);
                free(e);
                emu_violation("xlio_socket_send: zero-copy iov[%u] (%p, %zu bytes) is not inside "
                              "a region registered with ibv_reg_mr whose lkey is mkey=%#x (the "
                              "NIC would fault or send other memory)", k, iov[k].iov_base,
                              iov[k].iov_len, a.mkey);
                errno = EINVAL;
                goto out;
            }
            mr = m;
        }
        if (mr) mr->inflight++;
        pthread_mutex_unlock(&g_u_mu);
        e->niov = iovcnt;
        if (iovcnt) memcpy(e->iov, iov, iovcnt * sizeof *iov);
        e->mr = mr;
    }
    e->next = NULL;
    e->total = total;
    e->off = 0;
    e->zc = !inl;
    /* a completion only for a zero-copy send with userdata_op != 0 (tcp_express_zc_callback)
     * and bytes to send (an empty one makes no segment, so no completion) */
    e->userdata_op = inl ? 0 : a.userdata_op;
    if (s->qtail) s->qtail->next = e;
    else s->qhead = e;
    s->qtail = e;
    if (a.flags & PYXLIO_SOCKET_SEND_FLAG_FLUSH) {
        sock_flush(g, s);
    } else {
        if (!s->unflushed) s->unflushed = e;
        /* XLIO_EXPRESS_MSG_MORE: kept until a flush; the group keeps dirty sockets only with
         * XLIO_GROUP_FLAG_DIRTY (poll_group::add_dirty_socket) */
        if (g && (g->flags & PYXLIO_GROUP_FLAG_DIRTY) && !s->dirty &&
            grow(&g->dirty, &g->capdirty, g->ndirty + 1) == 0) {
            g->dirty[g->ndirty++] = s->idx;
            s->dirty = 1;
        }
    }
    rc = 0;
out:
    sock_unlock(g);
    return rc;
}

static int u_send(pyxlio_xsock_t h, const void *data, size_t len,
                  const pyxlio_socket_send_attr_t *attr) {
    struct iovec v = {(void *)(uintptr_t)data, len};
    return u_sendv(h, &v, 1, attr);
}

static void u_socket_flush(pyxlio_xsock_t h) {
    if (!ready("xlio_socket_flush")) return;
    ugroup_t *g;
    usock_t *s = sock_enter(h, "xlio_socket_flush", &g, 0);
    if (!s) return;
    sock_flush(g, s);
    sock_unlock(g);
}

/* Both buffer frees ignore the socket or group they are given (NOT_IN_USE in sock-extra.cpp):
 * a buffer may be returned after its socket is gone.  The buffer itself is checked: one of the
 * emulator's descriptors, held by the application. */
static void buf_free(const char *fn, pyxlio_xbuf_t *buf) {
    if (!ready(fn)) return;
    uintptr_t p = (uintptr_t)buf, base = (uintptr_t)g_xbufs;
    if (p < base || p >= base + (uintptr_t)emu_pool.nbuf * sizeof *g_xbufs ||
        (p - base) % sizeof *g_xbufs) {
        emu_violation("%s: %p is not an xlio_buf of the emulator (libxlio would dereference "
                      "it)", fn, (void *)buf);
        return;
    }
    uint32_t b = (uint32_t)((p - base) / sizeof *g_xbufs);
    unsigned st = UB_APP;
    if (!atomic_compare_exchange_strong(&g_ubufs[b].state, &st, UB_FREE)) {
        emu_violation("%s: buffer %p is %s", fn, (void *)buf,
                      st == UB_ORPHAN ? "a buffer of the parent process (before fork)"
                                      : "not held by the application (freed twice, or never "
                                        "received)");
        return;
    }
    ugroup_t *g = atomic_load(&g_ug[g_ubufs[b].group < U_MAX_GROUPS ? g_ubufs[b].group : 0]);
    if (g && atomic_load(&g->gen) == g_ubufs[b].ggen) atomic_fetch_sub(&g->nbufs, 1);
    atomic_fetch_sub(&g_nbufs, 1);
    memset(emu_buf(b), EMU_CANARY, emu_conf.frag);
    emu_pool_put(&b, 1);
}

static void u_socket_buf_free(pyxlio_xsock_t sock, pyxlio_xbuf_t *buf) {
    (void)sock;
    buf_free("xlio_socket_buf_free", buf);
}

static void u_group_buf_free(pyxlio_poll_group_t group, pyxlio_xbuf_t *buf) {
    (void)group;
    buf_free("xlio_poll_group_buf_free", buf);
}

/* ---- the tables ------------------------------------------------------------------------- */
void emu_ultra_fill_socket_api(void *members) {
    struct { PYXLIO_SOCKET_API_MEMBERS } t;
    t.xlio_init_ex = (void *)u_init_ex;
    t.xlio_poll_group_create = (void *)u_group_create;
    t.xlio_poll_group_destroy = (void *)u_group_destroy;
    t.xlio_poll_group_poll = (void *)u_group_poll;
    t.xlio_socket_create = (void *)u_socket_create;
    t.xlio_socket_destroy = (void *)u_socket_destroy;
    t.xlio_socket_setsockopt = (void *)u_setsockopt;
    t.xlio_socket_bind = (void *)u_bind;
    t.xlio_socket_connect = (void *)u_connect;
    t.xlio_socket_get_pd = (void *)u_get_pd;
    t.xlio_socket_send = (void *)u_send;
    t.xlio_socket_sendv = (void *)u_sendv;
    t.xlio_poll_group_flush = (void *)u_group_flush;
    t.xlio_socket_flush = (void *)u_socket_flush;
    t.xlio_socket_buf_free = (void *)u_socket_buf_free;
    t.xlio_poll_group_buf_free = (void *)u_group_buf_free;
    _Static_assert(sizeof t == PYXLIO_SOCKET_API_COUNT * sizeof(void *), "16 members");
    memcpy(members, &t, sizeof t);
}

void emu_ultra_fill_ultra_api(void *members) {
    struct { PYXLIO_ULTRA_API_MEMBERS } t;
    t.xlio_init_ex = (void *)u_init_ex;
    t.xlio_exit = (void *)u_exit;
    t.xlio_poll_group_create = (void *)u_group_create;
    t.xlio_poll_group_destroy = (void *)u_group_destroy;
    t.xlio_poll_group_poll = (void *)u_group_poll;
    t.xlio_socket_create = (void *)u_socket_create;
    t.xlio_socket_destroy = (void *)u_socket_destroy;
    t.xlio_socket_update = (void *)u_socket_update;
    t.xlio_socket_setsockopt = (void *)u_setsockopt;
    t.xlio_socket_getsockname = (void *)u_getsockname;
    t.xlio_socket_getpeername = (void *)u_getpeername;
    t.xlio_socket_bind = (void *)u_bind;
    t.xlio_socket_connect = (void *)u_connect;
    t.xlio_socket_listen = (void *)u_listen;
    t.xlio_socket_get_pd = (void *)u_get_pd;
    t.xlio_socket_detach_group = (void *)u_detach;
    t.xlio_socket_attach_group = (void *)u_attach;
    t.xlio_socket_send = (void *)u_send;
    t.xlio_socket_sendv = (void *)u_sendv;
    t.xlio_poll_group_flush = (void *)u_group_flush;
    t.xlio_socket_flush = (void *)u_socket_flush;
    t.xlio_socket_buf_free = (void *)u_socket_buf_free;
    t.xlio_poll_group_buf_free = (void *)u_group_buf_free;
    _Static_assert(sizeof t == PYXLIO_ULTRA_API_COUNT * sizeof(void *), "23 members");
    memcpy(members, &t, sizeof t);
}

/* ---- memory registration (the libibverbs symbols) ----------------------------------------
 * For the emulator's protection domain (xlio_socket_get_pd) the region is recorded and a
 * struct laid out like struct ibv_mr is returned, each with its own non-zero lkey; any other
 * pd goes to the next ibv_reg_mr in the lookup order (libibverbs), or fails with EINVAL. */
EMU_EXPORT void *ibv_reg_mr(void *pd, void *addr, size_t length, int access) {
    if (pd != (void *)&g_pd) {
        void *(*next)(void *, void *, size_t, int);
        void *p = dlsym(RTLD_NEXT, "ibv_reg_mr");
        memcpy(&next, &p, sizeof p);
        if (next) return next(pd, addr, length, access);
        errno = EINVAL;
        return NULL;
    }
    if (!addr || !length) { errno = EINVAL; return NULL; }
    emu_mr_t *m = calloc(1, sizeof *m);
    if (!m) { errno = ENOMEM; return NULL; }
    pthread_mutex_lock(&g_u_mu);
    if (g_nmrs == g_capmrs) {
        uint32_t nc = g_capmrs ? g_capmrs * 2 : 16;
        emu_mr_t **n = realloc(g_mrs, nc * sizeof *n);
        if (!n) { pthread_mutex_unlock(&g_u_mu); free(m); errno = ENOMEM; return NULL; }
        g_mrs = n;
        g_capmrs = nc;
    }
    m->pd = pd;
    m->addr = addr;
    m->length = length;
    if (++g_next_lkey == 0) g_next_lkey = 1;
    m->lkey = m->rkey = g_next_lkey;
    m->handle = g_next_lkey;
    g_mrs[g_nmrs++] = m;
    pthread_mutex_unlock(&g_u_mu);
    return m;
}

/* libibverbs' convention: 0, or an errno value (errno set too). */
EMU_EXPORT int ibv_dereg_mr(void *mr) {
    pthread_mutex_lock(&g_u_mu);
    for (uint32_t i = 0; i < g_nmrs; i++) {
        if (g_mrs[i] != mr) continue;
        emu_mr_t *m = g_mrs[i];
        if (m->inflight) {
            unsigned long long n = m->inflight;
            pthread_mutex_unlock(&g_u_mu);
            emu_violation("ibv_dereg_mr: region %p (lkey %#x) has %llu zero-copy send(s) in "
                          "flight (the NIC would read unregistered memory): refused with EBUSY",
                          mr, m->lkey, n);
            errno = EBUSY;
            return EBUSY;
        }
        g_mrs[i] = g_mrs[--g_nmrs];
        pthread_mutex_unlock(&g_u_mu);
        free(m);
        return 0;
    }
    pthread_mutex_unlock(&g_u_mu);
    int (*next)(void *);
    void *p = dlsym(RTLD_NEXT, "ibv_dereg_mr");
    memcpy(&next, &p, sizeof p);
    if (next && mr) return next(mr);
    errno = EINVAL;
    return EINVAL;
}

/* ---- exit and fork ---------------------------------------------------------------------- */
void emu_ultra_exit_report(void) {
    if (!atomic_load(&g_u_tables)) return;
    unsigned long nb = 0, ng = 0, ns = 0, nc = 0;
    for (uint32_t i = 0; i < emu_pool.nbuf; i++)
        if (atomic_load(&g_ubufs[i].state) == UB_APP) nb++;
    for (uint32_t i = 0; i < U_MAX_GROUPS; i++) {
        ugroup_t *g = atomic_load(&g_ug[i]);
        if (g && atomic_load(&g->live)) ng++;
    }
    for (uint32_t i = 0; i < U_MAX_SOCKS; i++) {
        usock_t *s = atomic_load(&g_us[i]);
        if (!s || !atomic_load(&s->live)) continue;
        ns++;
        for (usend_t *e = s->qhead; e; e = e->next) nc += e->zc && e->userdata_op && e->total;
        for (usend_t *e = s->dhead; e; e = e->next) nc++;
    }
    if (nb) emu_violation("exit: %lu Ultra receive buffer(s) never freed", nb);
    if (ng) emu_violation("exit: %lu poll group(s) never destroyed", ng);
    if (ns) emu_violation("exit: %lu Ultra socket(s) never terminated", ns);
    if (nc) emu_violation("exit: %lu send completion(s) never delivered", nc);
}

/* The parent's groups and sockets are not the child's ("fork() is supported only without
 * created polling groups", 3.70.2 xlio.h): their handles are dead there, their buffers
 * orphaned (never freed, never reported), their descriptors closed in the child. */
void emu_ultra_fork_child(void) {
    pthread_mutex_init(&g_u_mu, NULL);
    if (!atomic_load(&g_u_tables)) return;
    for (uint32_t i = 0; i < emu_pool.nbuf; i++)
        if (atomic_load(&g_ubufs[i].state) == UB_APP) atomic_store(&g_ubufs[i].state, UB_ORPHAN);
    atomic_store(&g_nbufs, 0);
    g_us_nfree = 0;
    g_us_fhead = 0;
    g_ug_nfree = 0;
    for (uint32_t i = 0; i < U_MAX_SOCKS; i++) {
        usock_t *s = atomic_load(&g_us[i]);
        if (!s) continue;
        if (atomic_load(&s->live) && s->fd >= 0) REAL(close)(s->fd);
        /* queued sends: the child never completes them */
        while (s->qhead) { usend_t *e = s->qhead; s->qhead = e->next; free(e); }
        while (s->dhead) { usend_t *e = s->dhead; s->dhead = e->next; free(e); }
        s->qtail = s->dtail = s->unflushed = NULL;
        atomic_store(&s->live, 0);
        atomic_fetch_add(&s->gen, 1);
        g_us_free[(g_us_fhead + g_us_nfree++) % U_MAX_SOCKS] = i;
    }
    for (uint32_t i = 0; i < U_MAX_GROUPS; i++) {
        ugroup_t *g = atomic_load(&g_ug[i]);
        if (!g) continue;
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
        pthread_mutex_init(&g->mu, &a);
        pthread_mutexattr_destroy(&a);
        if (atomic_load(&g->live) && g->epfd >= 0) REAL(close)(g->epfd);
        g->nsocks = g->ndirty = 0;
        atomic_store(&g->live, 0);
        atomic_fetch_add(&g->gen, 1);
        g_ug_free[g_ug_nfree++] = i;
    }
    pthread_mutex_init(&g_detached_mu, NULL);
    detached_init();
}
