# The C half of a poll group (included by _ultra.pyx): the event queue the callbacks append to,
# the socket slots whose ids travel in userdata_sq, the group mutex, and the nogil poll loop.
# Nothing here touches Python: XLIO calls these callbacks from inside its own calls, which
# pyxlio makes without the GIL and under the group's mutex.

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>
    #include <pthread.h>
    #include <sched.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <time.h>
    #include <arpa/inet.h>
    #include <netinet/in.h>
    #include "pyxlio/xlio_abi.h"

    /* ---- records: what a callback saw, appended in the order XLIO raised them ------------ */
    enum { PYXLIO_UREC_EVENT = 1, PYXLIO_UREC_RX = 2, PYXLIO_UREC_COMP = 3,
           PYXLIO_UREC_ACCEPT = 4 };
    typedef struct {
        int kind;
        int event;                  /* EVENT: the event */
        int value;                  /* EVENT: its value (an errno for ERROR) */
        pyxlio_xsock_t sock;        /* the socket (ACCEPT: the new one) */
        uintptr_t userdata;         /* userdata_sq (ACCEPT: the listener's) */
        uintptr_t op;               /* COMP: userdata_op; ACCEPT: the new socket's id (0: none) */
        pyxlio_xsock_t parent;      /* ACCEPT: the listener */
        void *data;                 /* RX */
        size_t len;
        pyxlio_xbuf_t *buf;
    } pyxlio_urec_t;

    /* ---- socket slots: userdata_sq = (generation << 32) | (index + 1), never 0 ------------- *
     * A slot is found again from userdata_sq in O(1) and only if its generation matches, so a
     * value XLIO hands back is never trusted as a pointer, and a slot reused after TERMINATED
     * is not confused with its previous socket. */
    enum { PYXLIO_USLOT_USED = 1, PYXLIO_USLOT_DESTROYED = 2, PYXLIO_USLOT_TERMINATED = 4 };
    typedef struct {
        uint32_t gen;
        uint32_t flags;
        pyxlio_xsock_t handle;
        uint32_t next_free;         /* index + 1 of the next free slot (0: none) */
    } pyxlio_uslot_t;

    typedef struct pyxlio_ugroup {
        pthread_mutex_t mu;
        pthread_t owner;            /* valid while locked */
        int locked;
        int waiters;                /* threads waiting for mu (atomic) */
        struct pyxlio_ugroup *saved_current;
        pyxlio_poll_group_t handle;
        int created;                /* xlio_poll_group_create succeeded */
        int destroyed;              /* xlio_poll_group_destroy called: no XLIO call any more */
        int stop;                   /* close() asks a running poll() to return (atomic) */
        int polling;                /* a poll() is running (atomic) */
        /* the queue: a ring of records */
        pyxlio_urec_t *q;
        size_t cap, head, count;
        size_t max_cap;             /* test hook: at most this many records (0: no limit) */
        size_t inflight;            /* zero-copy sends not completed (their records are reserved) */
        /* slots */
        pyxlio_uslot_t *slots;
        uint32_t nslots, used, free_head;
        /* what could not be queued: never silent (poll() raises) */
        unsigned long lost_rx, lost_events, lost_comps, lost_accepts;
        unsigned long long lost_rx_bytes;
        unsigned long bad_rx;       /* rx with a NULL buffer, NULL data and a length, or a length
                                     * above PYXLIO_U_MAX_RX_LEN: returned, never exposed */
        unsigned long bad_rx_new;   /* of those, not reported by poll() yet */
    } pyxlio_ugroup_t;

    /* Records each live socket may still raise (ESTABLISHED, CLOSED, ERROR, TERMINATED), and one
     * per zero-copy send in flight, are kept free in the queue: received data only uses room
     * beyond them, so an event or a completion is never lost to a queue that cannot grow. */
    #define PYXLIO_U_EVENTS_PER_SOCKET 4
    /* The most one rx_cb may hand over: one XLIO receive buffer (its pool's buffers are a few
     * KiB; large receive offload makes them up to 256 KiB).  A longer length from a provider is
     * not believed: the buffer goes back and bad_rx counts it (never a view past the buffer). */
    #define PYXLIO_U_MAX_RX_LEN ((size_t)1 << 24)

    static pyxlio_ultra_ops_t pyxlio_u_ops;
    static __thread pyxlio_ugroup_t *pyxlio_u_current;
    static unsigned long pyxlio_u_stray;     /* callbacks outside any pyxlio call (atomic) */

    static size_t pyxlio_u_reserve(const pyxlio_ugroup_t *g) {
        return (size_t)g->used * PYXLIO_U_EVENTS_PER_SOCKET + g->inflight;
    }
    /* Make room for `room` more records (beyond count).  0, or -1 when it cannot grow. */
    static int pyxlio_u_ensure(pyxlio_ugroup_t *g, size_t room) {
        size_t need, ncap;
        pyxlio_urec_t *nq;
        if (room > SIZE_MAX - g->count) return -1;
        need = g->count + room;
        if (g->max_cap && need > g->max_cap) return -1;     /* test hook: "out of memory" */
        if (need <= g->cap) return 0;
        ncap = g->cap ? g->cap : 64;
        while (ncap < need) {
            if (ncap > SIZE_MAX / 2 / sizeof(pyxlio_urec_t)) return -1;
            ncap *= 2;
        }
        nq = (pyxlio_urec_t *)malloc(ncap * sizeof *nq);
        if (!nq) return -1;
        for (size_t i = 0; i < g->count; i++) nq[i] = g->q[(g->head + i) % g->cap];
        free(g->q);
        g->q = nq;
        g->cap = ncap;
        g->head = 0;
        return 0;
    }
    /* Append; `keep` records must stay free afterwards (the reserve, for received data). */
    static int pyxlio_u_push(pyxlio_ugroup_t *g, const pyxlio_urec_t *r, size_t keep) {
        if (pyxlio_u_ensure(g, 1 + keep) != 0 && (keep || g->count == g->cap)) return -1;
        g->q[(g->head + g->count) % g->cap] = *r;
        g->count++;
        return 0;
    }
    static int pyxlio_u_pop(pyxlio_ugroup_t *g, pyxlio_urec_t *out) {
        if (!g->count) return 0;
        *out = g->q[g->head];
        g->head = (g->head + 1) % g->cap;
        g->count--;
        if (!g->count) g->head = 0;
        return 1;
    }

    static uintptr_t pyxlio_u_ud(const pyxlio_ugroup_t *g, uint32_t i) {
        return ((uintptr_t)g->slots[i].gen << 32) | (uintptr_t)(i + 1);
    }
    static pyxlio_uslot_t *pyxlio_u_slot(pyxlio_ugroup_t *g, uintptr_t ud) {
        uint32_t i = (uint32_t)(ud & 0xffffffffu);
        if (i == 0 || i > g->nslots) return NULL;
        pyxlio_uslot_t *s = &g->slots[i - 1];
        if (!(s->flags & PYXLIO_USLOT_USED) || s->gen != (uint32_t)(ud >> 32)) return NULL;
        return s;
    }
    /* A new slot: its userdata_sq, or 0 when the table cannot grow.  The queue keeps room for
     * the events of every live socket (see the reserve): that room is made first. */
    static uintptr_t pyxlio_u_slot_new(pyxlio_ugroup_t *g) {
        uint32_t i;
        if (pyxlio_u_ensure(g, pyxlio_u_reserve(g) + PYXLIO_U_EVENTS_PER_SOCKET) != 0) return 0;
        if (!g->free_head) {
            uint32_t n = g->nslots ? g->nslots * 2 : 16;
            pyxlio_uslot_t *t;
            if (n <= g->nslots || n > 0x7fffffffu) return 0;
            t = (pyxlio_uslot_t *)realloc(g->slots, (size_t)n * sizeof *t);
            if (!t) return 0;
            memset(t + g->nslots, 0, (size_t)(n - g->nslots) * sizeof *t);
            for (uint32_t k = n; k > g->nslots; k--) {
                t[k - 1].next_free = g->free_head;
                t[k - 1].gen = 0;
                g->free_head = k;
            }
            g->slots = t;
            g->nslots = n;
        }
        i = g->free_head - 1;
        g->free_head = g->slots[i].next_free;
        g->slots[i].next_free = 0;
        g->slots[i].gen = g->slots[i].gen + 1 ? g->slots[i].gen + 1 : 1;
        g->slots[i].flags = PYXLIO_USLOT_USED;
        g->slots[i].handle = 0;
        g->used++;
        return pyxlio_u_ud(g, i);
    }
    static void pyxlio_u_slot_free(pyxlio_ugroup_t *g, uintptr_t ud) {
        pyxlio_uslot_t *s = pyxlio_u_slot(g, ud);
        if (!s) return;
        uint32_t i = (uint32_t)(s - g->slots);
        s->flags = 0;
        s->handle = 0;
        s->next_free = g->free_head;
        g->free_head = i + 1;
        g->used--;
    }
    /* Slots whose socket may still raise events (not TERMINATED). */
    static uint32_t pyxlio_u_live_slots(const pyxlio_ugroup_t *g) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < g->nslots; i++)
            if ((g->slots[i].flags & PYXLIO_USLOT_USED) &&
                !(g->slots[i].flags & PYXLIO_USLOT_TERMINATED))
                n++;
        return n;
    }

    /* ---- the callbacks XLIO calls: append a record, nothing else -------------------------- */
    static void pyxlio_u_event_cb(pyxlio_xsock_t sock, uintptr_t ud, int event, int value) {
        pyxlio_ugroup_t *g = pyxlio_u_current;
        pyxlio_urec_t r;
        if (!g) { __atomic_add_fetch(&pyxlio_u_stray, 1, __ATOMIC_SEQ_CST); return; }
        memset(&r, 0, sizeof r);
        r.kind = PYXLIO_UREC_EVENT; r.sock = sock; r.userdata = ud;
        r.event = event; r.value = value;
        if (event == PYXLIO_SOCKET_EVENT_TERMINATED) {
            /* From now on the handle may be freed: no pyxlio call passes it to XLIO again. */
            pyxlio_uslot_t *s = pyxlio_u_slot(g, ud);
            if (s && s->handle == sock) s->flags |= PYXLIO_USLOT_TERMINATED;
        }
        if (pyxlio_u_push(g, &r, 0) != 0) g->lost_events++;
    }
    static void pyxlio_u_comp_cb(pyxlio_xsock_t sock, uintptr_t ud, uintptr_t op) {
        pyxlio_ugroup_t *g = pyxlio_u_current;
        pyxlio_urec_t r;
        if (!g) { __atomic_add_fetch(&pyxlio_u_stray, 1, __ATOMIC_SEQ_CST); return; }
        memset(&r, 0, sizeof r);
        r.kind = PYXLIO_UREC_COMP; r.sock = sock; r.userdata = ud; r.op = op;
        if (pyxlio_u_push(g, &r, 0) != 0) g->lost_comps++;
    }
    static void pyxlio_u_rx_cb(pyxlio_xsock_t sock, uintptr_t ud, void *data, size_t len,
                               pyxlio_xbuf_t *buf) {
        pyxlio_ugroup_t *g = pyxlio_u_current;
        pyxlio_urec_t r;
        if (!g) {
            /* Not from inside a pyxlio call: nobody to hand it to; it goes back at once. */
            __atomic_add_fetch(&pyxlio_u_stray, 1, __ATOMIC_SEQ_CST);
            if (buf && pyxlio_u_ops.socket_buf_free) pyxlio_u_ops.socket_buf_free(sock, buf);
            return;
        }
        if (!buf || (!data && len) || len > PYXLIO_U_MAX_RX_LEN) {
            g->bad_rx++;
            g->bad_rx_new++;
            if (buf && !g->destroyed) pyxlio_u_ops.group_buf_free(g->handle, buf);
            return;
        }
        memset(&r, 0, sizeof r);
        r.kind = PYXLIO_UREC_RX; r.sock = sock; r.userdata = ud;
        r.data = data; r.len = len; r.buf = buf;
        if (pyxlio_u_push(g, &r, pyxlio_u_reserve(g)) != 0) {
            /* The queue cannot grow: the buffer goes back to XLIO now and poll() says so. */
            g->lost_rx++;
            g->lost_rx_bytes += len;
            if (!g->destroyed) pyxlio_u_ops.group_buf_free(g->handle, buf);
        }
    }
    static void pyxlio_u_accept_cb(pyxlio_xsock_t sock, pyxlio_xsock_t parent,
                                   uintptr_t parent_ud) {
        pyxlio_ugroup_t *g = pyxlio_u_current;
        pyxlio_urec_t r;
        uintptr_t ud;
        if (!g) { __atomic_add_fetch(&pyxlio_u_stray, 1, __ATOMIC_SEQ_CST); return; }
        /* The new socket's userdata_sq is 0 (3.70.2 sockinfo_tcp.cpp); give it a slot at once,
         * with xlio_socket_update, as libxlio's own tests/extra_api/xlio_ultra_api_server.c
         * does from its accept callback, so that its next records already carry its id. */
        ud = pyxlio_u_slot_new(g);
        if (ud) {
            pyxlio_u_slot(g, ud)->handle = sock;
            if (!pyxlio_u_ops.socket_update || pyxlio_u_ops.socket_update(sock, 0, ud) != 0) {
                pyxlio_u_slot_free(g, ud);
                ud = 0;
            }
        }
        memset(&r, 0, sizeof r);
        r.kind = PYXLIO_UREC_ACCEPT; r.sock = sock; r.userdata = parent_ud;
        r.op = ud; r.parent = parent;
        if (pyxlio_u_push(g, &r, 0) != 0) {
            g->lost_accepts++;
            if (ud) pyxlio_u_slot_free(g, ud);    /* XLIO's own rule: no destroy from here */
        }
    }

    /* ---- the group mutex: every XLIO call on a group runs under it ----------------------- *
     * Taken without the GIL (the caller released it, or got it with trylock); while it is held
     * the thread's "current group" is this one, which is how the callbacks find their queue. */
    static void pyxlio_u_locked(pyxlio_ugroup_t *g) {
        g->owner = pthread_self();
        g->locked = 1;
        g->saved_current = pyxlio_u_current;
        pyxlio_u_current = g;
    }
    static int pyxlio_u_trylock(pyxlio_ugroup_t *g) {
        if (pthread_mutex_trylock(&g->mu) != 0) return -1;
        pyxlio_u_locked(g);
        return 0;
    }
    static void pyxlio_u_lock(pyxlio_ugroup_t *g) {
        __atomic_add_fetch(&g->waiters, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_lock(&g->mu);
        __atomic_sub_fetch(&g->waiters, 1, __ATOMIC_SEQ_CST);
        pyxlio_u_locked(g);
    }
    static void pyxlio_u_unlock(pyxlio_ugroup_t *g) {
        pyxlio_u_current = g->saved_current;
        g->locked = 0;
        pthread_mutex_unlock(&g->mu);
    }
    static int pyxlio_u_owned_by_me(const pyxlio_ugroup_t *g) {
        return __atomic_load_n(&g->locked, __ATOMIC_SEQ_CST) &&
               pthread_equal(g->owner, pthread_self());
    }

    static int pyxlio_u_stopping(const pyxlio_ugroup_t *g) {
        return __atomic_load_n(&g->stop, __ATOMIC_SEQ_CST);
    }
    static void pyxlio_u_set_stop(pyxlio_ugroup_t *g, int v) {
        __atomic_store_n(&g->stop, v, __ATOMIC_SEQ_CST);
    }

    static long long pyxlio_u_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    /* Poll the group until a record is queued, `until_ns` passes, or (once) after one call.
     * Returns the records queued, or -1 when the group is destroyed or asked to stop.  The
     * mutex is given up between rounds of polls, so other threads' sends get in. */
    static long pyxlio_u_poll_for(pyxlio_ugroup_t *g, long long until_ns, int once) {
        for (;;) {
            size_t n;
            pyxlio_u_lock(g);
            if (g->destroyed || __atomic_load_n(&g->stop, __ATOMIC_SEQ_CST)) {
                pyxlio_u_unlock(g);
                return -1;
            }
            int rounds = once ? 1 : 32;
            do {
                pyxlio_u_ops.group_poll(g->handle);
            } while (--rounds > 0 && g->count == 0);
            n = g->count;
            pyxlio_u_unlock(g);
            if (n || once) return (long)n;
            if (pyxlio_u_now_ns() >= until_ns) return 0;
            if (__atomic_load_n(&g->waiters, __ATOMIC_SEQ_CST)) sched_yield();
        }
    }

    /* The group is collected without close(): with only C at hand, do what close() does -
     * destroy every live socket, poll (until `until_ns`) for their TERMINATED while giving
     * back every buffer that arrives and destroying accepted sockets, then destroy the group. */
    static void pyxlio_u_discard(pyxlio_ugroup_t *g, const pyxlio_urec_t *r) {
        pyxlio_uslot_t *s;
        if (r->kind == PYXLIO_UREC_RX) {
            if (g->destroyed) return;
            s = pyxlio_u_slot(g, r->userdata);
            if (s && s->handle == r->sock && !(s->flags & PYXLIO_USLOT_TERMINATED))
                pyxlio_u_ops.socket_buf_free(r->sock, r->buf);
            else
                pyxlio_u_ops.group_buf_free(g->handle, r->buf);
        } else if (r->kind == PYXLIO_UREC_ACCEPT) {
            if (r->op && (s = pyxlio_u_slot(g, r->op)) != NULL) s->flags |= PYXLIO_USLOT_DESTROYED;
            if (!g->destroyed) pyxlio_u_ops.socket_destroy(r->sock);
        } else if (r->kind == PYXLIO_UREC_EVENT && r->event == PYXLIO_SOCKET_EVENT_TERMINATED) {
            s = pyxlio_u_slot(g, r->userdata);
            if (s && s->handle == r->sock) pyxlio_u_slot_free(g, r->userdata);
        }
    }
    static void pyxlio_u_teardown(pyxlio_ugroup_t *g, long long until_ns) {
        pyxlio_urec_t r;
        pyxlio_u_lock(g);
        if (g->destroyed || !g->created) { pyxlio_u_unlock(g); return; }
        for (uint32_t i = 0; i < g->nslots; i++) {
            pyxlio_uslot_t *s = &g->slots[i];
            if ((s->flags & PYXLIO_USLOT_USED) && s->handle &&
                !(s->flags & (PYXLIO_USLOT_DESTROYED | PYXLIO_USLOT_TERMINATED))) {
                s->flags |= PYXLIO_USLOT_DESTROYED;
                pyxlio_u_ops.socket_destroy(s->handle);
            }
        }
        for (;;) {
            while (pyxlio_u_pop(g, &r)) pyxlio_u_discard(g, &r);
            if (!pyxlio_u_live_slots(g) || pyxlio_u_now_ns() >= until_ns) break;
            pyxlio_u_ops.group_poll(g->handle);
        }
        g->destroyed = 1;
        pyxlio_u_ops.group_destroy(g->handle);
        while (pyxlio_u_pop(g, &r)) {}    /* the group is gone: nothing can be given back */
        pyxlio_u_unlock(g);
    }

    static pyxlio_ugroup_t *pyxlio_u_group_new(void) {
        pyxlio_ugroup_t *g = (pyxlio_ugroup_t *)calloc(1, sizeof *g);
        if (!g) return NULL;
        if (pthread_mutex_init(&g->mu, NULL) != 0) { free(g); return NULL; }
        return g;
    }
    /* `forked`: in a fork child the mutex may be held by a thread that does not exist there. */
    static void pyxlio_u_group_free(pyxlio_ugroup_t *g, int forked) {
        if (!g) return;
        if (!forked) pthread_mutex_destroy(&g->mu);
        free(g->q);
        free(g->slots);
        free(g);
    }
    static pyxlio_poll_group_attr_t pyxlio_u_group_attr(unsigned flags) {
        pyxlio_poll_group_attr_t a;
        memset(&a, 0, sizeof a);
        a.flags = flags;
        a.socket_event_cb = pyxlio_u_event_cb;
        a.socket_comp_cb = pyxlio_u_comp_cb;
        a.socket_rx_cb = pyxlio_u_rx_cb;
        a.socket_accept_cb = pyxlio_u_ops.kind == PYXLIO_ULTRA_API ? pyxlio_u_accept_cb : NULL;
        return a;
    }

    /* ---- addresses (numeric only: pyxlio.ultra resolves no names) ------------------------- */
    static int pyxlio_u_make_addr(int family, const char *host, unsigned port, unsigned flowinfo,
                                  unsigned scope_id, struct sockaddr_storage *ss, socklen_t *len) {
        memset(ss, 0, sizeof *ss);
        if (family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)ss;
            a->sin_family = AF_INET;
            a->sin_port = htons((uint16_t)port);
            if (!*host) a->sin_addr.s_addr = htonl(INADDR_ANY);
            else if (!strcmp(host, "localhost")) a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            else if (inet_pton(AF_INET, host, &a->sin_addr) != 1) return -1;
            *len = sizeof *a;
            return 0;
        }
        if (family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
            a->sin6_family = AF_INET6;
            a->sin6_port = htons((uint16_t)port);
            a->sin6_flowinfo = htonl(flowinfo);
            a->sin6_scope_id = scope_id;
            if (!*host) a->sin6_addr = in6addr_any;
            else if (!strcmp(host, "localhost")) a->sin6_addr = in6addr_loopback;
            else if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) return -1;
            *len = sizeof *a;
            return 0;
        }
        return -1;
    }
    /* The family, with host/port (and flowinfo/scope for IPv6) filled in; -1 when `len` does
     * not hold a whole address of a known family. */
    static int pyxlio_u_split_addr(const struct sockaddr_storage *ss, socklen_t len, char *host,
                                   size_t hostlen, unsigned *port, unsigned *flowinfo,
                                   unsigned *scope_id) {
        if (len >= sizeof(struct sockaddr_in) && ss->ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
            if (!inet_ntop(AF_INET, &a->sin_addr, host, (socklen_t)hostlen)) return -1;
            *port = ntohs(a->sin_port);
            return AF_INET;
        }
        if (len >= sizeof(struct sockaddr_in6) && ss->ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
            if (!inet_ntop(AF_INET6, &a->sin6_addr, host, (socklen_t)hostlen)) return -1;
            *port = ntohs(a->sin6_port);
            *flowinfo = ntohl(a->sin6_flowinfo);
            *scope_id = a->sin6_scope_id;
            return AF_INET6;
        }
        return -1;
    }

    /* ---- libibverbs, found at run time: the one loaded (the emulator's, or libxlio's) or
     * libibverbs.so.1.  0, or -1 with `why` set. */
    static pyxlio_ibv_reg_mr_fn pyxlio_u_reg_mr;
    static pyxlio_ibv_dereg_mr_fn pyxlio_u_dereg_mr;
    static int pyxlio_u_resolve_ibv(const char **why) {
        void *r, *d, *h;
        if (pyxlio_u_reg_mr && pyxlio_u_dereg_mr) return 0;
        r = dlsym(RTLD_DEFAULT, "ibv_reg_mr");
        d = dlsym(RTLD_DEFAULT, "ibv_dereg_mr");
        if (!r || !d) {
            h = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL);
            if (!h) { *why = "libibverbs.so.1 cannot be loaded"; return -1; }
            r = dlsym(h, "ibv_reg_mr");
            d = dlsym(h, "ibv_dereg_mr");
            if (!r || !d) { *why = "libibverbs.so.1 has no ibv_reg_mr/ibv_dereg_mr"; return -1; }
        }
        pyxlio_u_reg_mr = (pyxlio_ibv_reg_mr_fn)r;
        pyxlio_u_dereg_mr = (pyxlio_ibv_dereg_mr_fn)d;
        return 0;
    }
    """
    enum:
        PYXLIO_UREC_EVENT
        PYXLIO_UREC_RX
        PYXLIO_UREC_COMP
        PYXLIO_UREC_ACCEPT
        PYXLIO_USLOT_USED
        PYXLIO_USLOT_DESTROYED
        PYXLIO_USLOT_TERMINATED
        PYXLIO_U_EVENTS_PER_SOCKET
    ctypedef struct pyxlio_urec_t:
        int kind
        int event
        int value
        pyxlio_xsock_t sock
        uintptr_t userdata
        uintptr_t op
        pyxlio_xsock_t parent
        void *data
        size_t len
        pyxlio_xbuf_t *buf
    ctypedef struct pyxlio_uslot_t:
        uint32_t gen
        uint32_t flags
        pyxlio_xsock_t handle
    ctypedef struct pyxlio_ugroup_t:
        pyxlio_poll_group_t handle
        int created
        int destroyed
        int stop
        int polling
        size_t cap
        size_t count
        size_t max_cap
        size_t inflight
        uint32_t used
        unsigned long lost_rx
        unsigned long lost_events
        unsigned long lost_comps
        unsigned long lost_accepts
        unsigned long long lost_rx_bytes
        unsigned long bad_rx
        unsigned long bad_rx_new
    pyxlio_ultra_ops_t pyxlio_u_ops
    unsigned long pyxlio_u_stray
    size_t pyxlio_u_reserve(const pyxlio_ugroup_t *g) nogil
    int pyxlio_u_ensure(pyxlio_ugroup_t *g, size_t room) nogil
    int pyxlio_u_pop(pyxlio_ugroup_t *g, pyxlio_urec_t *out) nogil
    pyxlio_uslot_t *pyxlio_u_slot(pyxlio_ugroup_t *g, uintptr_t ud) nogil
    uintptr_t pyxlio_u_slot_new(pyxlio_ugroup_t *g) nogil
    void pyxlio_u_slot_free(pyxlio_ugroup_t *g, uintptr_t ud) nogil
    uint32_t pyxlio_u_live_slots(const pyxlio_ugroup_t *g) nogil
    int pyxlio_u_trylock(pyxlio_ugroup_t *g) nogil
    void pyxlio_u_lock(pyxlio_ugroup_t *g) nogil
    void pyxlio_u_rx_cb(pyxlio_xsock_t sock, uintptr_t ud, void *data, size_t len,
                        pyxlio_xbuf_t *buf) nogil
    void pyxlio_u_unlock(pyxlio_ugroup_t *g) nogil
    int pyxlio_u_owned_by_me(const pyxlio_ugroup_t *g) nogil
    int pyxlio_u_stopping(const pyxlio_ugroup_t *g) nogil
    void pyxlio_u_set_stop(pyxlio_ugroup_t *g, int v) nogil
    long long pyxlio_u_now_ns() nogil
    long pyxlio_u_poll_for(pyxlio_ugroup_t *g, long long until_ns, int once) nogil
    void pyxlio_u_teardown(pyxlio_ugroup_t *g, long long until_ns) nogil
    pyxlio_ugroup_t *pyxlio_u_group_new() nogil
    void pyxlio_u_group_free(pyxlio_ugroup_t *g, int forked) nogil
    pyxlio_poll_group_attr_t pyxlio_u_group_attr(unsigned flags) nogil
    int pyxlio_u_make_addr(int family, const char *host, unsigned port, unsigned flowinfo,
                           unsigned scope_id, sockaddr_storage *ss, socklen_t *len) nogil
    int pyxlio_u_split_addr(const sockaddr_storage *ss, socklen_t len, char *host, size_t hostlen,
                            unsigned *port, unsigned *flowinfo, unsigned *scope_id) nogil
    pyxlio_ibv_reg_mr_fn pyxlio_u_reg_mr
    pyxlio_ibv_dereg_mr_fn pyxlio_u_dereg_mr
    int pyxlio_u_resolve_ibv(const char **why) nogil
