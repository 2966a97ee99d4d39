/*
 * emu_ultra_check: drives the emulator's Ultra API (3.60/3.61 layouts, 23 members) and socket
 * API (legacy/3.94 layouts, 16 members) through pyxlio's ABI header, one subcommand per check.
 * Run under the emulator (LD_PRELOAD) with PYXLIO_EMU_LAYOUT set; prints "ok <case>" and exits
 * 0 when every assertion holds, else "FAIL ..." and exit 1.  The misuse cases break the
 * contract on purpose and expect the emulator's diagnostics and exit status 86 (strict mode),
 * which tests/test_emu_ultra.py checks.  Every wait is bounded (WAIT_MS).
 *
 *   emu_ultra_check <case>      (see the table at the end of this file)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyxlio/xlio_abi.h"

#define WAIT_MS 10000
#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno=%d %s)\n", errno, strerror(errno)); \
    exit(1); } } while (0)
#define CHECK_RC(call, want_rc, want_errno) do { errno = 0; long r_ = (long)(call); int e_ = errno; \
    if (r_ != (want_rc) || (want_rc == -1 && e_ != (want_errno))) { \
        fprintf(stderr, "FAIL %s:%d: %s -> %ld errno %d (%s), want %ld errno %d\n", __FILE__, \
                __LINE__, #call, r_, e_, strerror(e_), (long)(want_rc), (int)(want_errno)); exit(1); } } while (0)

static pyxlio_ultra_ops_t U;
static int ULTRA;                   /* the 23-member API (3.60+) */
static pyxlio_ibv_reg_mr_fn reg_mr;
static pyxlio_ibv_dereg_mr_fn dereg_mr;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void need_api(void) {
    void *p = NULL;
    socklen_t len = sizeof p;
    CHECK(getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &p, &len) == 0 && p, "no XLIO API");
    int kind = pyxlio_resolve_ultra_ops(p, &U);
    CHECK(kind == PYXLIO_ULTRA_API || kind == PYXLIO_ULTRA_SOCKET_API, "kind %d", kind);
    ULTRA = kind == PYXLIO_ULTRA_API;
    CHECK(!!U.listen == ULTRA && !!U.exit == ULTRA && !!U.getsockname == ULTRA, "members");
    void *r = dlsym(RTLD_DEFAULT, "ibv_reg_mr"), *d = dlsym(RTLD_DEFAULT, "ibv_dereg_mr");
    CHECK(r && d, "ibv_reg_mr/ibv_dereg_mr not found with dlsym");
    memcpy(&reg_mr, &r, sizeof r);
    memcpy(&dereg_mr, &d, sizeof d);
}

static void init_ultra(void) {
    pyxlio_init_attr_t a;
    memset(&a, 0, sizeof a);
    CHECK_RC(U.init_ex(&a), 0, 0);
}

/* ---- per-socket record (userdata_sq points at it) ---------------------------------------- */
#define MAXEV 16
typedef struct rec {
    int nev, ev[MAXEV], val[MAXEV];
    int terminated;
    pyxlio_xsock_t sock;
    unsigned char *rx;
    size_t rxlen, rxcap;
    uintptr_t *comps;
    size_t ncomps, capcomps;
    pyxlio_xbuf_t **held;           /* buffers not freed yet (the test frees them) */
    uint64_t *held_ud;              /* the userdata written into each */
    int nheld, capheld;
    int free_in_cb;                 /* free each buffer in rx_cb */
    int nrx;
} rec_t;

static rec_t *all_recs[256];         /* kept reachable (LeakSanitizer) */
static int n_recs;

static rec_t *rec_new(void) {
    rec_t *r = calloc(1, sizeof *r);
    CHECK(r && n_recs < 256, "calloc");
    all_recs[n_recs++] = r;
    return r;
}

static int has_ev(const rec_t *r, int e) {
    for (int i = 0; i < r->nev; i++)
        if (r->ev[i] == e) return 1;
    return 0;
}

static pyxlio_poll_group_t cur_group;
static int n_accepted;
static pyxlio_xsock_t accepted[16];
static rec_t *accepted_rec[16];

static void on_event(pyxlio_xsock_t s, uintptr_t ud, int event, int value) {
    rec_t *r = (rec_t *)ud;
    CHECK(r, "event %d on a socket without a record", event);
    CHECK(!r->terminated, "event %d after TERMINATED", event);
    CHECK(r->nev < MAXEV, "too many events");
    CHECK(r->sock == s, "event for the wrong socket");
    r->ev[r->nev] = event;
    r->val[r->nev] = value;
    r->nev++;
    if (event == PYXLIO_SOCKET_EVENT_TERMINATED) r->terminated = 1;
}

static void on_comp(pyxlio_xsock_t s, uintptr_t ud, uintptr_t op) {
    rec_t *r = (rec_t *)ud;
    CHECK(r && r->sock == s, "completion for the wrong socket");
    CHECK(!r->terminated, "completion after TERMINATED");
    if (r->ncomps == r->capcomps) {
        r->capcomps = r->capcomps ? r->capcomps * 2 : 256;
        r->comps = realloc(r->comps, r->capcomps * sizeof *r->comps);
        CHECK(r->comps, "realloc");
    }
    r->comps[r->ncomps++] = op;
}

static void on_rx(pyxlio_xsock_t s, uintptr_t ud, void *data, size_t len, pyxlio_xbuf_t *buf) {
    rec_t *r = (rec_t *)ud;
    CHECK(r && r->sock == s, "rx for the wrong socket");
    CHECK(!r->terminated, "rx after TERMINATED");
    CHECK(len > 0 && data && buf, "rx arguments");
    if (r->rxlen + len > r->rxcap) {
        r->rxcap = (r->rxlen + len) * 2;
        r->rx = realloc(r->rx, r->rxcap);
        CHECK(r->rx, "realloc");
    }
    memcpy(r->rx + r->rxlen, data, len);
    r->rxlen += len;
    r->nrx++;
    buf->userdata = 0xabcd0000u + (uint64_t)r->nrx;     /* the application's field */
    if (r->free_in_cb) {
        if (r->nrx & 1) U.socket_buf_free(s, buf);
        else U.group_buf_free(cur_group, buf);
        return;
    }
    if (r->nheld == r->capheld) {
        r->capheld = r->capheld ? r->capheld * 2 : 256;
        r->held = realloc(r->held, (size_t)r->capheld * sizeof *r->held);
        r->held_ud = realloc(r->held_ud, (size_t)r->capheld * sizeof *r->held_ud);
        CHECK(r->held && r->held_ud, "realloc");
    }
    r->held_ud[r->nheld] = buf->userdata;
    r->held[r->nheld++] = buf;
}

static void on_accept(pyxlio_xsock_t s, pyxlio_xsock_t parent, uintptr_t pud) {
    rec_t *pr = (rec_t *)pud;
    CHECK(pr && pr->sock == parent, "accept: parent and its userdata");
    CHECK(n_accepted < 16, "too many accepted");
    rec_t *r = rec_new();
    r->sock = s;
    r->free_in_cb = 1;
    CHECK_RC(U.socket_update(s, 0, (uintptr_t)r), 0, 0);
    accepted[n_accepted] = s;
    accepted_rec[n_accepted] = r;
    n_accepted++;
}

static void free_held(rec_t *r) {
    for (int i = 0; i < r->nheld; i++) {
        CHECK(r->held[i]->userdata == r->held_ud[i], "xlio_buf.userdata kept");
        if (i & 1) U.group_buf_free(cur_group, r->held[i]);
        else U.socket_buf_free(r->sock, r->held[i]);
    }
    r->nheld = 0;
}

static pyxlio_poll_group_t group_new(unsigned flags, int with_accept) {
    pyxlio_poll_group_attr_t a;
    memset(&a, 0, sizeof a);
    a.flags = flags;
    a.socket_event_cb = on_event;
    a.socket_comp_cb = on_comp;
    a.socket_rx_cb = on_rx;
    if (with_accept) a.socket_accept_cb = on_accept;
    pyxlio_poll_group_t g = 0;
    CHECK_RC(U.group_create(&a, &g), 0, 0);
    CHECK(g != 0, "group handle");
    cur_group = g;
    return g;
}

static pyxlio_xsock_t sock_new(pyxlio_poll_group_t g, rec_t *r) {
    pyxlio_socket_attr_t a = {.flags = 0, .domain = AF_INET, .group = g, .userdata_sq = (uintptr_t)r};
    pyxlio_xsock_t s = 0;
    CHECK_RC(U.socket_create(&a, &s), 0, 0);
    CHECK(s != 0, "socket handle");
    r->sock = s;
    return s;
}

typedef int (*cond_fn)(void *arg);
typedef void (*hook_fn)(void *arg);

/* poll until cond holds (bounded), running the hook (the peer's side) in between */
static void poll_until(pyxlio_poll_group_t g, cond_fn cond, void *arg, hook_fn hook, void *harg,
                       const char *what) {
    int64_t end = now_ms() + WAIT_MS;
    while (!cond(arg)) {
        CHECK(now_ms() < end, "timed out waiting for %s", what);
        U.group_poll(g);
        if (hook) hook(harg);
        usleep(200);
    }
}

static int c_has_est(void *a) { return has_ev(a, PYXLIO_SOCKET_EVENT_ESTABLISHED); }
static int c_has_term(void *a) { return ((rec_t *)a)->terminated; }
static int c_has_err(void *a) { return has_ev(a, PYXLIO_SOCKET_EVENT_ERROR); }
static int c_has_closed(void *a) { return has_ev(a, PYXLIO_SOCKET_EVENT_CLOSED); }

/* ---- a plain kernel peer (through the emulator's ordinary socket path) ------------------- */
static int listener(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(fd >= 0, "socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    CHECK(listen(fd, 16) == 0, "listen");
    socklen_t l = sizeof *addr;
    CHECK(getsockname(fd, (struct sockaddr *)addr, &l) == 0, "getsockname");
    return fd;
}

static int accept_peer(int lfd) {
    int64_t end = now_ms() + WAIT_MS;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd >= 0) return fd;
        CHECK(errno == EAGAIN && now_ms() < end, "accept");
        usleep(500);
    }
}

static void connect_to(pyxlio_poll_group_t g, pyxlio_xsock_t s, rec_t *r,
                       const struct sockaddr_in *to) {
    CHECK_RC(U.connect(s, (const struct sockaddr *)to, sizeof *to), 0, 0);
    CHECK(r->nev == 0, "no event inside connect");
    poll_until(g, c_has_est, r, NULL, NULL, "ESTABLISHED");
    CHECK(r->nev == 1 && r->ev[0] == PYXLIO_SOCKET_EVENT_ESTABLISHED && r->val[0] == 0,
          "ESTABLISHED first");
}

/* destroy: 3.51 terminates inside the call, 3.60+ in the next poll */
static void destroy_and_wait(pyxlio_poll_group_t g, pyxlio_xsock_t s, rec_t *r) {
    CHECK_RC(U.socket_destroy(s), 0, 0);
    if (!ULTRA) {
        CHECK(r->terminated, "3.51: TERMINATED inside xlio_socket_destroy");
    } else {
        CHECK(!r->terminated, "3.60+: TERMINATED not inside xlio_socket_destroy");
        U.group_poll(g);
        poll_until(g, c_has_term, r, NULL, NULL, "TERMINATED");
    }
    CHECK(r->ev[r->nev - 1] == PYXLIO_SOCKET_EVENT_TERMINATED, "TERMINATED last");
    int before = r->nev;
    for (int i = 0; i < 5; i++) U.group_poll(g);
    CHECK(r->nev == before, "nothing after TERMINATED");
}

/* ---- the echo peer ----------------------------------------------------------------------- */
typedef struct echo {
    int fd;
    int reading;                    /* 0: the peer does not read (the sender's queue fills) */
    unsigned char *pend;            /* read, not echoed yet */
    size_t npend, cappend;
    size_t total_in;
} echo_t;

static void echo_hook(void *arg) {
    echo_t *e = arg;
    if (!e->reading) return;
    for (int i = 0; i < 64; i++) {
        if (e->cappend - e->npend < 65536) {
            e->cappend = e->cappend * 2 + 65536;
            e->pend = realloc(e->pend, e->cappend);
            CHECK(e->pend, "realloc");
        }
        ssize_t n = recv(e->fd, e->pend + e->npend, e->cappend - e->npend, MSG_DONTWAIT);
        if (n <= 0) {
            CHECK(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "peer recv");
            break;
        }
        e->npend += (size_t)n;
        e->total_in += (size_t)n;
    }
    while (e->npend) {
        ssize_t w = send(e->fd, e->pend, e->npend, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w <= 0) {
            CHECK(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "peer send");
            break;
        }
        memmove(e->pend, e->pend + w, e->npend - (size_t)w);
        e->npend -= (size_t)w;
    }
}

typedef struct { rec_t *r; size_t want; } rxwait_t;
static int c_rx_len(void *a) { rxwait_t *w = a; return w->r->rxlen >= w->want; }
typedef struct { rec_t *r; size_t want; } compwait_t;
static int c_comps(void *a) { compwait_t *w = a; return w->r->ncomps >= w->want; }

static unsigned char pattern(size_t seq, size_t i) { return (unsigned char)(seq * 31 + i * 7 + 1); }

#define REGION (4u << 20)

/* Echo of many messages: INLINE and zero-copy sends (send and sendv), FLUSH and queued
 * sends, completions in send order (none for INLINE or userdata_op 0), data back through rx_cb
 * in order; then a bulk phase where the peer stops reading (the emulator queues, never blocks
 * or drops), buffers freed through both frees; destroy, TERMINATED, group destroy. */
static int case_echo(void) {
    need_api();
    init_ultra();
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    pyxlio_poll_group_t g = group_new(0, 0);
    rec_t *r = rec_new();
    pyxlio_xsock_t s = sock_new(g, r);
    CHECK(U.get_pd(s) == NULL, "no protection domain before bind/connect");
    int one = 1;
    CHECK_RC(U.setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0, 0);
    connect_to(g, s, r, &addr);
    void *pd = U.get_pd(s);
    CHECK(pd != NULL, "a protection domain once connected");
    unsigned char *region = aligned_alloc(4096, REGION);
    CHECK(region, "alloc");
    void *mr = reg_mr(pd, region, REGION, PYXLIO_IBV_ACCESS_LOCAL_WRITE);
    CHECK(mr, "ibv_reg_mr");
    uint32_t lkey = pyxlio_ibv_mr_lkey(mr);
    CHECK(lkey != 0, "lkey");
    void *mr2 = reg_mr(pd, region, 4096, 1);
    CHECK(mr2 && pyxlio_ibv_mr_lkey(mr2) != lkey && pyxlio_ibv_mr_lkey(mr2) != 0, "distinct lkeys");
    CHECK_RC(dereg_mr(mr2), 0, 0);
    echo_t e = {.fd = accept_peer(lfd), .reading = 1};

    /* the expected stream, and the expected completions */
    size_t nmsg = 3000, cap = 0, exp_len = 0, region_off = 0, nexp_comp = 0;
    unsigned char *expect = NULL;
    uintptr_t *exp_comp = calloc(nmsg, sizeof *exp_comp);
    CHECK(exp_comp, "calloc");
    for (size_t seq = 0; seq < nmsg; seq++) {
        size_t len = 1 + (seq * 37) % 1500;
        if (exp_len + len > cap) {
            cap = (exp_len + len) * 2;
            expect = realloc(expect, cap);
            CHECK(expect, "realloc");
        }
        for (size_t i = 0; i < len; i++) expect[exp_len + i] = pattern(seq, i);
        int zc = seq % 2;
        pyxlio_socket_send_attr_t sa = {.flags = (seq % 4 == 3) ? PYXLIO_SOCKET_SEND_FLAG_FLUSH : 0,
                                        .mkey = lkey, .userdata_op = 0};
        if (!zc) {
            sa.flags |= PYXLIO_SOCKET_SEND_FLAG_INLINE;
            sa.userdata_op = 0x77;          /* ignored: INLINE has no completion */
            unsigned char tmp[1500];
            memcpy(tmp, expect + exp_len, len);
            if (seq % 8 == 2 && len >= 3) {
                struct iovec v[3] = {{tmp, 1}, {tmp + 1, 1}, {tmp + 2, len - 2}};
                CHECK_RC(U.sendv(s, v, 3, &sa), 0, 0);
            } else {
                CHECK_RC(U.send(s, tmp, len, &sa), 0, 0);
            }
            memset(tmp, 0, sizeof tmp);     /* INLINE copied at once */
        } else {
            CHECK(region_off + len <= REGION, "region");
            unsigned char *p = region + region_off;
            memcpy(p, expect + exp_len, len);
            region_off += len;
            sa.userdata_op = (seq % 7 == 1) ? 0 : (uintptr_t)(seq + 1);
            if (sa.userdata_op) exp_comp[nexp_comp++] = sa.userdata_op;
            if (seq % 8 == 5 && len >= 2) {
                struct iovec v[2] = {{p, len / 2}, {p + len / 2, len - len / 2}};
                CHECK_RC(U.sendv(s, v, 2, &sa), 0, 0);
            } else {
                CHECK_RC(U.send(s, p, len, &sa), 0, 0);
            }
        }
        exp_len += len;
        if (seq % 64 == 63) {
            U.group_poll(g);
            echo_hook(&e);
            free_held(r);
        }
    }
    U.socket_flush(s);
    rxwait_t w = {r, exp_len};
    poll_until(g, c_rx_len, &w, echo_hook, &e, "the echo");
    CHECK(r->rxlen == exp_len && memcmp(r->rx, expect, exp_len) == 0, "echoed stream intact");
    compwait_t cw = {r, nexp_comp};
    poll_until(g, c_comps, &cw, NULL, NULL, "completions");
    for (int i = 0; i < 5; i++) U.group_poll(g);
    CHECK(r->ncomps == nexp_comp, "%zu completions, want %zu", r->ncomps, nexp_comp);
    for (size_t i = 0; i < nexp_comp; i++)
        CHECK(r->comps[i] == exp_comp[i], "completion %zu: %#lx, want %#lx (send order)", i,
              (unsigned long)r->comps[i], (unsigned long)exp_comp[i]);
    CHECK(r->nev == 1, "no event but ESTABLISHED during the echo");
    free_held(r);

    /* bulk: the peer stops reading; 16 MB of INLINE sends with FLUSH all return 0 */
    e.reading = 0;
    size_t bulk = 16u << 20, chunk = 128u << 10, sent = 0, base = r->rxlen;
    unsigned char *blk = malloc(chunk);
    CHECK(blk, "malloc");
    for (size_t k = 0; sent < bulk; k++) {
        for (size_t i = 0; i < chunk; i++) blk[i] = pattern(k + 7, i);
        pyxlio_socket_send_attr_t sa = {.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE |
                                                 PYXLIO_SOCKET_SEND_FLAG_FLUSH};
        CHECK_RC(U.send(s, blk, chunk, &sa), 0, 0);
        sent += chunk;
        U.group_poll(g);
    }
    e.reading = 1;
    rxwait_t wb = {r, base + bulk};
    poll_until(g, c_rx_len, &wb, echo_hook, &e, "the bulk echo");
    for (size_t k = 0, o = base; k < bulk / chunk; k++)
        for (size_t i = 0; i < chunk; i++, o++)
            CHECK(r->rx[o] == pattern(k + 7, i), "bulk byte %zu", o);
    free_held(r);
    CHECK(r->nev == 1, "no event but ESTABLISHED during the bulk");

    if (ULTRA) {
        struct sockaddr_in me, peer;
        socklen_t l = sizeof me;
        CHECK_RC(U.getsockname(s, (struct sockaddr *)&me, &l), 0, 0);
        l = sizeof peer;
        CHECK_RC(U.getpeername(s, (struct sockaddr *)&peer, &l), 0, 0);
        CHECK(peer.sin_port == addr.sin_port, "getpeername");
    }
    destroy_and_wait(g, s, r);
    CHECK(r->nev == 2, "ESTABLISHED, TERMINATED");
    CHECK_RC(dereg_mr(mr), 0, 0);
    CHECK_RC(U.group_destroy(g), 0, 0);
    close(e.fd);
    close(lfd);
    free(region);
    free(blk);
    free(expect);
    free(exp_comp);
    free(e.pend);
    return 0;
}

/* Connection errors and the event order: refused, reset, the peer's FIN, sends in each state,
 * argument errors, TERMINATED for a socket that never connected. */
static int case_events(void) {
    need_api();
    init_ultra();
    pyxlio_poll_group_attr_t ga;
    memset(&ga, 0, sizeof ga);
    pyxlio_poll_group_t g = 0;
    CHECK_RC(U.group_create(&ga, &g), -1, EINVAL);        /* no event_cb */
    ga.socket_event_cb = on_event;
    CHECK_RC(U.group_create(&ga, NULL), -1, EINVAL);
    CHECK_RC(U.group_create(NULL, &g), -1, EINVAL);
    g = group_new(0, 0);
    pyxlio_socket_attr_t sa = {.domain = AF_UNIX, .group = g};
    pyxlio_xsock_t s = 0;
    CHECK_RC(U.socket_create(&sa, &s), -1, EINVAL);
    sa.domain = AF_INET;
    sa.group = 0;
    CHECK_RC(U.socket_create(&sa, &s), -1, EINVAL);
    sa.group = g;
    CHECK_RC(U.socket_create(&sa, NULL), -1, EINVAL);
    pyxlio_socket_send_attr_t inl = {.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE |
                                              PYXLIO_SOCKET_SEND_FLAG_FLUSH};

    /* a socket that never connects: TERMINATED only after destroy */
    rec_t *r0 = rec_new();
    pyxlio_xsock_t s0 = sock_new(g, r0);
    CHECK_RC(U.send(s0, "x", 1, &inl), -1, EPIPE);       /* not connected */
    for (int i = 0; i < 3; i++) U.group_poll(g);
    CHECK(r0->nev == 0, "no event before destroy");
    destroy_and_wait(g, s0, r0);
    CHECK(r0->nev == 1, "only TERMINATED");

    /* refused: connect returns 0, ERROR(ECONNREFUSED) comes from a poll */
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    close(lfd);                     /* nobody listens there now */
    rec_t *r1 = rec_new();
    pyxlio_xsock_t s1 = sock_new(g, r1);
    CHECK_RC(U.connect(s1, (struct sockaddr *)&addr, sizeof addr), 0, 0);
    CHECK(r1->nev == 0, "no event inside connect");
    poll_until(g, c_has_err, r1, NULL, NULL, "ERROR");
    CHECK(r1->nev == 1 && r1->val[0] == ECONNREFUSED, "ERROR(ECONNREFUSED), got %d", r1->val[0]);
    for (int i = 0; i < 3; i++) U.group_poll(g);
    CHECK(r1->nev == 1, "no TERMINATED before destroy");
    CHECK_RC(U.send(s1, "x", 1, &inl), -1, ECONNREFUSED);
    CHECK_RC(U.connect(s1, (struct sockaddr *)&addr, sizeof addr), -1, ECONNABORTED);
    destroy_and_wait(g, s1, r1);
    CHECK(r1->nev == 2, "ERROR, TERMINATED");

    /* reset by the peer: ERROR(ECONNRESET); sends then fail with ECONNRESET */
    lfd = listener(&addr);
    rec_t *r2 = rec_new();
    pyxlio_xsock_t s2 = sock_new(g, r2);
    CHECK_RC(U.connect(s2, (struct sockaddr *)&addr, sizeof addr), 0, 0);
    CHECK_RC(U.send(s2, "x", 1, &inl), -1, EAGAIN);      /* still connecting */
    poll_until(g, c_has_est, r2, NULL, NULL, "ESTABLISHED");
    int pfd = accept_peer(lfd);
    CHECK_RC(U.send(s2, "hello", 5, &inl), 0, 0);
    char buf[16];
    int64_t end = now_ms() + WAIT_MS;
    ssize_t got = 0;
    while (got < 5) {
        ssize_t n = recv(pfd, buf + got, sizeof buf - (size_t)got, MSG_DONTWAIT);
        if (n > 0) got += n;
        CHECK(now_ms() < end, "peer receive");
        U.group_poll(g);
    }
    CHECK(memcmp(buf, "hello", 5) == 0, "payload");
    struct linger lg = {1, 0};
    setsockopt(pfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(pfd);
    poll_until(g, c_has_err, r2, NULL, NULL, "ERROR after reset");
    CHECK(r2->nev == 2 && r2->ev[1] == PYXLIO_SOCKET_EVENT_ERROR && r2->val[1] == ECONNRESET,
          "ERROR(ECONNRESET), got event %d value %d", r2->ev[1], r2->val[1]);
    CHECK_RC(U.send(s2, "x", 1, &inl), -1, ECONNRESET);
    destroy_and_wait(g, s2, r2);

    /* the peer's FIN: CLOSED after the data (3.60+); nothing in 3.51 */
    rec_t *r3 = rec_new();
    pyxlio_xsock_t s3 = sock_new(g, r3);
    connect_to(g, s3, r3, &addr);
    pfd = accept_peer(lfd);
    CHECK(send(pfd, "bye!", 4, 0) == 4, "peer send");
    shutdown(pfd, SHUT_WR);
    rxwait_t w3 = {r3, 4};
    poll_until(g, c_rx_len, &w3, NULL, NULL, "data before FIN");
    if (ULTRA) {
        poll_until(g, c_has_closed, r3, NULL, NULL, "CLOSED");
        CHECK(r3->nev == 2 && r3->ev[1] == PYXLIO_SOCKET_EVENT_CLOSED, "ESTABLISHED, CLOSED");
    } else {
        for (int i = 0; i < 20; i++) U.group_poll(g);
        CHECK(r3->nev == 1, "3.51: no CLOSED event");
    }
    CHECK(memcmp(r3->rx, "bye!", 4) == 0, "data");
    free_held(r3);
    CHECK_RC(U.send(s3, "ok", 2, &inl), 0, 0);           /* half-closed: sending still works */
    end = now_ms() + WAIT_MS;
    got = 0;
    while (got < 2) {
        ssize_t n = recv(pfd, buf + got, sizeof buf - (size_t)got, MSG_DONTWAIT);
        if (n > 0) got += n;
        CHECK(now_ms() < end, "peer receive after FIN");
        U.group_poll(g);
    }
    destroy_and_wait(g, s3, r3);
    /* the emulator closed gracefully (3.60+: FIN) or reset (3.51) */
    end = now_ms() + WAIT_MS;
    for (;;) {
        ssize_t n = recv(pfd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) { CHECK(ULTRA, "3.51 resets, 3.60+ closes with FIN"); break; }
        if (n < 0 && errno == ECONNRESET) { CHECK(!ULTRA, "3.51 resets"); break; }
        CHECK(now_ms() < end && n < 0 && errno == EAGAIN, "peer sees the close");
        usleep(1000);
    }
    close(pfd);
    close(lfd);

    if (ULTRA) {
        rec_t *r4 = rec_new();
        pyxlio_xsock_t s4 = sock_new(g, r4);
        CHECK_RC(U.listen(s4), -1, ENOTCONN);            /* the group has no accept_cb */
        CHECK_RC(U.socket_update(s4, 0, (uintptr_t)r4), 0, 0);
        destroy_and_wait(g, s4, r4);
    }
    CHECK_RC(U.group_destroy(g), 0, 0);
    if (ULTRA) CHECK_RC(U.exit(), 0, 0);
    return 0;
}

/* Queued sends: nothing leaves before a flush; xlio_poll_group_flush flushes only a DIRTY
 * group's sockets; xlio_socket_flush and a FLUSH send always do. */
static int peer_wait_bytes(pyxlio_poll_group_t g, int pfd, size_t want, int ms) {
    char buf[256];
    size_t got = 0;
    int64_t end = now_ms() + ms;
    while (got < want && now_ms() < end) {
        U.group_poll(g);
        ssize_t n = recv(pfd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) got += (size_t)n;
        else usleep(1000);
    }
    return (int)got;
}

static int case_flush(void) {
    need_api();
    init_ultra();
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    for (int dirty = 0; dirty < 2; dirty++) {
        pyxlio_poll_group_t g = group_new(dirty ? PYXLIO_GROUP_FLAG_DIRTY : 0, 0);
        rec_t *r = rec_new();
        pyxlio_xsock_t s = sock_new(g, r);
        connect_to(g, s, r, &addr);
        int pfd = accept_peer(lfd);
        pyxlio_socket_send_attr_t q = {.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE};
        CHECK_RC(U.send(s, "abc", 3, &q), 0, 0);
        /* not flushed: a negative check, bounded (it cannot fail when the emulator is right) */
        CHECK(peer_wait_bytes(g, pfd, 3, 200) == 0, "unflushed data left");
        U.group_flush(g);
        if (dirty) {
            CHECK(peer_wait_bytes(g, pfd, 3, WAIT_MS) == 3, "DIRTY: the group flush sends");
        } else {
            CHECK(peer_wait_bytes(g, pfd, 3, 200) == 0, "no DIRTY: the group flush is a no-op");
            U.socket_flush(s);
            CHECK(peer_wait_bytes(g, pfd, 3, WAIT_MS) == 3, "xlio_socket_flush sends");
        }
        CHECK_RC(U.send(s, "de", 2, &q), 0, 0);
        pyxlio_socket_send_attr_t f = {.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE |
                                                PYXLIO_SOCKET_SEND_FLAG_FLUSH};
        CHECK_RC(U.send(s, "f", 1, &f), 0, 0);           /* flushes what is queued before */
        CHECK(peer_wait_bytes(g, pfd, 3, WAIT_MS) == 3, "a FLUSH send flushes the queue");
        /* queued at destroy: 3.60+ sends it (tcp_close), 3.51 drops it (RST) */
        CHECK_RC(U.send(s, "gh", 2, &q), 0, 0);
        destroy_and_wait(g, s, r);
        int n = peer_wait_bytes(g, pfd, 2, ULTRA ? WAIT_MS : 200);
        CHECK(n == (ULTRA ? 2 : 0), "queued data at destroy: %d bytes", n);
        close(pfd);
        CHECK_RC(U.group_destroy(g), 0, 0);
    }
    close(lfd);
    return 0;
}

/* 3.60+: listen/accept between two Ultra sockets (accept_cb, no ESTABLISHED on the accepted
 * socket, userdata 0 until updated), data both ways, CLOSED on a graceful destroy. */
static int case_listen(void) {
    need_api();
    init_ultra();
    if (!ULTRA) {
        CHECK(!U.listen && !U.exit && !U.attach_group && !U.detach_group && !U.socket_update,
              "the 16-member API has no listen, exit, attach, detach, update");
        return 0;
    }
    pyxlio_poll_group_t g = group_new(PYXLIO_GROUP_FLAG_SAFE, 1);
    rec_t *lr = rec_new();
    pyxlio_xsock_t ls = sock_new(g, lr);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_RC(U.bind(ls, (struct sockaddr *)&a, sizeof a), 0, 0);
    CHECK(U.get_pd(ls) != NULL, "pd once bound");
    CHECK_RC(U.listen(ls), 0, 0);
    socklen_t l = sizeof a;
    CHECK_RC(U.getsockname(ls, (struct sockaddr *)&a, &l), 0, 0);
    rec_t *cr = rec_new();
    pyxlio_xsock_t cs = sock_new(g, cr);
    connect_to(g, cs, cr, &a);
    int64_t end = now_ms() + WAIT_MS;
    while (n_accepted < 1) {
        CHECK(now_ms() < end, "accept_cb");
        U.group_poll(g);
    }
    rec_t *ar = accepted_rec[0];
    pyxlio_xsock_t as = accepted[0];
    pyxlio_socket_send_attr_t f = {.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE |
                                            PYXLIO_SOCKET_SEND_FLAG_FLUSH};
    CHECK_RC(U.send(cs, "ping", 4, &f), 0, 0);
    rxwait_t w = {ar, 4};
    poll_until(g, c_rx_len, &w, NULL, NULL, "ping");
    CHECK(memcmp(ar->rx, "ping", 4) == 0, "ping");
    CHECK_RC(U.send(as, "pong", 4, &f), 0, 0);
    rxwait_t w2 = {cr, 4};
    poll_until(g, c_rx_len, &w2, NULL, NULL, "pong");
    CHECK(memcmp(cr->rx, "pong", 4) == 0, "pong");
    free_held(cr);
    CHECK(ar->nev == 0, "the accepted socket gets no ESTABLISHED");
    struct sockaddr_in p;
    l = sizeof p;
    CHECK_RC(U.getpeername(as, (struct sockaddr *)&p, &l), 0, 0);
    /* detach and attach again (2-step migration) */
    CHECK_RC(U.detach_group(as), 0, 0);
    CHECK_RC(U.detach_group(as), -1, EINVAL);
    pyxlio_poll_group_t g2 = group_new(0, 0);
    CHECK_RC(U.attach_group(as, g2), 0, 0);
    CHECK_RC(U.send(cs, "more", 4, &f), 0, 0);
    rxwait_t w3 = {ar, 8};
    end = now_ms() + WAIT_MS;
    while (!c_rx_len(&w3)) {
        CHECK(now_ms() < end, "rx after attach");
        U.group_poll(g);
        U.group_poll(g2);
    }
    CHECK(memcmp(ar->rx + 4, "more", 4) == 0, "data after attach");
    /* destroying the client sends FIN: the accepted socket gets CLOSED */
    destroy_and_wait(g, cs, cr);
    end = now_ms() + WAIT_MS;
    while (!has_ev(ar, PYXLIO_SOCKET_EVENT_CLOSED)) {
        CHECK(now_ms() < end, "CLOSED");
        U.group_poll(g2);
    }
    destroy_and_wait(g2, as, ar);
    destroy_and_wait(g, ls, lr);
    CHECK(lr->nev == 1, "the listener: TERMINATED only");
    CHECK_RC(U.group_destroy(g2), 0, 0);
    CHECK_RC(U.group_destroy(g), 0, 0);
    return 0;
}

/* Every misuse the real library would crash on: a violation each, never a crash. */
static int case_misuse(void) {
    need_api();
    init_ultra();
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    pyxlio_poll_group_t g = group_new(0, 0);
    rec_t *r = rec_new();
    pyxlio_xsock_t s = sock_new(g, r);
    connect_to(g, s, r, &addr);
    int pfd = accept_peer(lfd);
    pyxlio_socket_send_attr_t f = {.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE |
                                            PYXLIO_SOCKET_SEND_FLAG_FLUSH};
    /* garbage handles (1) (2) (3) */
    CHECK_RC(U.send((pyxlio_xsock_t)0x1234, "x", 1, &f), -1, EINVAL);
    CHECK_RC(U.socket_destroy((pyxlio_xsock_t)&r), -1, EINVAL);
    U.group_poll((pyxlio_poll_group_t)0xdeadbeef);
    /* zero-copy outside any region, and with a wrong mkey (4) (5) */
    void *pd = U.get_pd(s);
    static unsigned char region[65536], other[64];
    void *mr = reg_mr(pd, region, sizeof region, 1);
    CHECK(mr, "reg_mr");
    uint32_t lkey = pyxlio_ibv_mr_lkey(mr);
    pyxlio_socket_send_attr_t zc = {.flags = PYXLIO_SOCKET_SEND_FLAG_FLUSH, .mkey = lkey,
                                    .userdata_op = 1};
    CHECK_RC(U.send(s, other, sizeof other, &zc), -1, EINVAL);
    zc.mkey = lkey + 1000;
    CHECK_RC(U.send(s, region, 16, &zc), -1, EINVAL);
    zc.mkey = lkey;
    CHECK_RC(U.send(s, region + sizeof region - 8, 16, &zc), -1, EINVAL);   /* crosses the end */
    /* (6) deregistering a region with a send in flight: EBUSY */
    pyxlio_socket_send_attr_t q = {.flags = 0, .mkey = lkey, .userdata_op = 9};
    CHECK_RC(U.send(s, region, 100, &q), 0, 0);          /* queued, not flushed */
    CHECK_RC(dereg_mr(mr), EBUSY, EBUSY);
    U.socket_flush(s);
    compwait_t cw = {r, 1};
    poll_until(g, c_comps, &cw, NULL, NULL, "completion");
    CHECK(r->comps[0] == 9, "completion");
    CHECK_RC(dereg_mr(mr), 0, 0);
    /* buffers: a double free (7), a pointer that is no buffer (8) */
    CHECK(send(pfd, "data", 4, 0) == 4, "peer send");
    rxwait_t w = {r, 4};
    poll_until(g, c_rx_len, &w, NULL, NULL, "rx");
    pyxlio_xbuf_t *b = r->held[0];
    U.socket_buf_free(s, b);
    U.socket_buf_free(s, b);
    U.group_buf_free(g, (pyxlio_xbuf_t *)&w);
    r->nheld = 0;
    CHECK_RC(U.send(s, "y", 1, &f), 0, 0);
    destroy_and_wait(g, s, r);
    /* (10) (11) calls after TERMINATED */
    CHECK_RC(U.send(s, "z", 1, &f), -1, EINVAL);
    CHECK_RC(U.socket_destroy(s), -1, EINVAL);
    if (ULTRA) {
        pyxlio_poll_group_t g2 = group_new(0, 0);
        CHECK_RC(U.exit(), -1, EBUSY);                   /* (12u) groups still live */
        CHECK_RC(U.group_destroy(g2), 0, 0);
    }
    CHECK_RC(U.group_destroy(g), 0, 0);
    /* (12) (13) the destroyed group */
    U.group_poll(g);
    CHECK_RC(U.group_destroy(g), -1, EINVAL);
    /* (9) a group destroyed with a live, connected socket: 0, the socket reset and
     * TERMINATED inside the call (xlio.h 3.70.2: "leftover sockets ... destroyed implicitly";
     * measured on 3.51.1 and 3.70.2); its handle is dead after (14) */
    pyxlio_poll_group_t g3 = group_new(0, 0);
    rec_t *r3 = rec_new();
    pyxlio_xsock_t s3 = sock_new(g3, r3);
    connect_to(g3, s3, r3, &addr);
    int pfd3 = accept_peer(lfd);
    int before = r3->nev;
    CHECK_RC(U.group_destroy(g3), 0, 0);
    CHECK(r3->nev == before + 1 && r3->ev[before] == PYXLIO_SOCKET_EVENT_TERMINATED,
          "TERMINATED inside xlio_poll_group_destroy");
    CHECK_RC(U.send(s3, "w", 1, &f), -1, EINVAL);
    close(pfd3);
    /* the region of a foreign pd: no libibverbs behind the emulator here */
    errno = 0;
    CHECK(reg_mr((void *)&lfd, region, 64, 1) == NULL && errno == EINVAL, "foreign pd");
    close(pfd);
    close(lfd);
    return 0;
}

/* An Ultra call before xlio_init_ex: a violation (then everything works once initialised). */
static int case_before_init(void) {
    need_api();
    pyxlio_poll_group_attr_t a;
    memset(&a, 0, sizeof a);
    a.socket_event_cb = on_event;
    pyxlio_poll_group_t g = 0;
    CHECK_RC(U.group_create(&a, &g), -1, EINVAL);
    init_ultra();
    CHECK_RC(U.group_create(&a, &g), 0, 0);
    CHECK_RC(U.group_destroy(g), 0, 0);
    return 0;
}

/* Left at exit: a buffer never freed, a group never destroyed, a completion never delivered
 * (a socket never destroyed).  Strict mode reports each and exits 86. */
static int case_leaks(void) {
    need_api();
    init_ultra();
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    pyxlio_poll_group_t g = group_new(0, 0);
    rec_t *r = rec_new();
    pyxlio_xsock_t s = sock_new(g, r);
    connect_to(g, s, r, &addr);
    int pfd = accept_peer(lfd);
    CHECK(send(pfd, "data", 4, 0) == 4, "peer send");
    rxwait_t w = {r, 4};
    poll_until(g, c_rx_len, &w, NULL, NULL, "rx");
    static unsigned char region[4096];
    void *mr = reg_mr(U.get_pd(s), region, sizeof region, 1);
    CHECK(mr, "reg_mr");
    pyxlio_socket_send_attr_t q = {.flags = 0, .mkey = pyxlio_ibv_mr_lkey(mr), .userdata_op = 5};
    CHECK_RC(U.send(s, region, 10, &q), 0, 0);          /* never flushed */
    return 0;
}

/* xlio_init_ex first: the allocator is the pool's, memory_cb reports the pool; a second call
 * with an allocator: -1/EEXIST in 3.60+, 0 in 3.51 (the allocator unused). */
static size_t n_alloc, alloc_size, n_memcb;
static void *alloc_ptr, *memcb_addr;
static size_t memcb_len, memcb_huge = 99;
static void *my_alloc(size_t n) {
    n_alloc++;
    alloc_size = n;
    alloc_ptr = malloc(n);
    return alloc_ptr;
}
static void my_free(void *p) { free(p); }
static void my_memcb(void *addr, size_t len, size_t huge) {
    n_memcb++;
    memcb_addr = addr;
    memcb_len = len;
    memcb_huge = huge;
}

static int case_init_fresh(void) {
    need_api();
    pyxlio_init_attr_t a = {.flags = 0, .memory_cb = my_memcb, .memory_alloc = my_alloc,
                            .memory_free = my_free};
    CHECK_RC(U.init_ex(&a), 0, 0);
    CHECK(n_alloc == 1 && alloc_size > 0, "the allocator called once: %zu", n_alloc);
    CHECK(n_memcb == 1 && memcb_addr == alloc_ptr && memcb_len == alloc_size && memcb_huge == 0,
          "memory_cb reports the allocated block");
    if (ULTRA) CHECK_RC(U.init_ex(&a), -1, EEXIST);
    else CHECK_RC(U.init_ex(&a), 0, 0);
    CHECK(n_alloc == 1, "not allocated again");
    pyxlio_init_attr_t b = {.flags = 0};
    CHECK_RC(U.init_ex(&b), 0, 0);
    return 0;
}

static int case_init_started(void) {
    need_api();
    int fd = socket(AF_INET, SOCK_DGRAM, 0);          /* starts XLIO */
    CHECK(fd >= 0, "socket");
    pyxlio_init_attr_t a = {.flags = 0, .memory_cb = my_memcb};
    CHECK_RC(U.init_ex(&a), 0, 0);
    /* 3.60+ returns before looking at memory_cb; 3.51 registers it (the pool is reported) */
    CHECK(n_memcb == (ULTRA ? 0u : 1u), "memory_cb calls: %zu", n_memcb);
    a.memory_alloc = my_alloc;
    a.memory_free = my_free;
    if (ULTRA) CHECK_RC(U.init_ex(&a), -1, EEXIST);
    else CHECK_RC(U.init_ex(&a), 0, 0);
    CHECK(n_alloc == 0, "the allocator is never called once XLIO runs");
    close(fd);
    return 0;
}

/* PYXLIO_EMU_OFFLOAD=none: nothing is offloaded. */
static int case_passthrough(void) {
    need_api();
    init_ultra();
    pyxlio_poll_group_t g = group_new(0, 1);
    rec_t *r = rec_new();
    pyxlio_xsock_t s = sock_new(g, r);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (ULTRA) CHECK_RC(U.bind(s, (struct sockaddr *)&a, sizeof a), -1, ENODEV);
    else CHECK_RC(U.bind(s, (struct sockaddr *)&a, sizeof a), 0, 0);
    CHECK(U.get_pd(s) == NULL, "no pd for a socket XLIO does not offload");
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    CHECK_RC(U.connect(s, (struct sockaddr *)&addr, sizeof addr), -1, ENODEV);
    if (ULTRA) CHECK_RC(U.listen(s), -1, ENODEV);
    for (int i = 0; i < 3; i++) U.group_poll(g);
    CHECK(r->nev == 0, "no event");
    destroy_and_wait(g, s, r);
    CHECK_RC(U.group_destroy(g), 0, 0);
    close(lfd);
    return 0;
}

/* Many sockets in two groups, buffers freed from inside rx_cb, fork after the groups are gone. */
static int case_many(void) {
    need_api();
    init_ultra();
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    enum { N = 24 };
    pyxlio_poll_group_t g[2] = {group_new(PYXLIO_GROUP_FLAG_SAFE, 0), group_new(0, 0)};
    rec_t *r[N];
    pyxlio_xsock_t s[N];
    int pfd[N];
    for (int i = 0; i < N; i++) {
        r[i] = rec_new();
        r[i]->free_in_cb = 1;
        cur_group = g[i % 2];
        s[i] = sock_new(g[i % 2], r[i]);
        connect_to(g[i % 2], s[i], r[i], &addr);
        pfd[i] = accept_peer(lfd);
    }
    /* every peer sends 256 KB; each socket gets its own stream back in order */
    size_t per = 256u << 10;
    unsigned char *blk = malloc(per);
    CHECK(blk, "malloc");
    size_t off[N];
    memset(off, 0, sizeof off);
    int64_t end = now_ms() + WAIT_MS * 3;
    for (;;) {
        int done = 1;
        for (int i = 0; i < N; i++) {
            if (off[i] < per) {
                for (size_t k = 0; k < 4096 && off[i] + k < per; k++) blk[k] = pattern(i, off[i] + k);
                size_t c = per - off[i] < 4096 ? per - off[i] : 4096;
                ssize_t w = send(pfd[i], blk, c, MSG_DONTWAIT);
                if (w > 0) off[i] += (size_t)w;
            }
            if (r[i]->rxlen < per) done = 0;
        }
        cur_group = g[0];
        U.group_poll(g[0]);
        cur_group = g[1];
        U.group_poll(g[1]);
        if (done) break;
        CHECK(now_ms() < end, "streams");
    }
    for (int i = 0; i < N; i++) {
        CHECK(r[i]->rxlen == per, "socket %d: %zu bytes", i, r[i]->rxlen);
        for (size_t k = 0; k < per; k++) CHECK(r[i]->rx[k] == pattern(i, k), "socket %d byte %zu", i, k);
    }
    for (int i = 0; i < N; i++) {
        cur_group = g[i % 2];
        destroy_and_wait(g[i % 2], s[i], r[i]);
        close(pfd[i]);
    }
    CHECK_RC(U.group_destroy(g[0]), 0, 0);
    CHECK_RC(U.group_destroy(g[1]), 0, 0);
    close(lfd);
    free(blk);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) _exit(0);
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child");
    return 0;
}

/* fork with a live group, a connected socket and a held buffer: in the child the parent's
 * handles are dead (not reported at the child's exit); the parent carries on. */
static int case_fork(void) {
    need_api();
    init_ultra();
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    pyxlio_poll_group_t g = group_new(0, 0);
    rec_t *r = rec_new();
    pyxlio_xsock_t s = sock_new(g, r);
    connect_to(g, s, r, &addr);
    int pfd = accept_peer(lfd);
    CHECK(send(pfd, "data", 4, 0) == 4, "peer send");
    rxwait_t w = {r, 4};
    poll_until(g, c_rx_len, &w, NULL, NULL, "rx");
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) exit(0);          /* the exit report runs in the child: nothing of the parent */
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st), "child");
    CHECK(WEXITSTATUS(st) == 0, "child exit status %d", WEXITSTATUS(st));
    pyxlio_socket_send_attr_t f = {.flags = PYXLIO_SOCKET_SEND_FLAG_INLINE |
                                            PYXLIO_SOCKET_SEND_FLAG_FLUSH};
    CHECK_RC(U.send(s, "back", 4, &f), 0, 0);
    char buf[8];
    int64_t end = now_ms() + WAIT_MS;
    ssize_t got = 0;
    while (got < 4) {
        ssize_t n = recv(pfd, buf + got, sizeof buf - (size_t)got, MSG_DONTWAIT);
        if (n > 0) got += n;
        CHECK(now_ms() < end, "peer receive");
        U.group_poll(g);
    }
    free_held(r);
    destroy_and_wait(g, s, r);
    CHECK_RC(U.group_destroy(g), 0, 0);
    /* IPv6 sockets too */
    pyxlio_poll_group_t g6 = group_new(0, 0);
    rec_t *r6 = rec_new();
    pyxlio_socket_attr_t a6 = {.domain = AF_INET6, .group = g6, .userdata_sq = (uintptr_t)r6};
    pyxlio_xsock_t s6 = 0;
    CHECK_RC(U.socket_create(&a6, &s6), 0, 0);
    r6->sock = s6;
    struct sockaddr_in6 b6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    CHECK_RC(U.bind(s6, (struct sockaddr *)&b6, sizeof b6), 0, 0);
    destroy_and_wait(g6, s6, r6);
    CHECK_RC(U.group_destroy(g6), 0, 0);
    close(pfd);
    close(lfd);
    return 0;
}

/* A XLIO_GROUP_FLAG_SAFE group: one thread polls while another sends (INLINE and zero-copy):
 * every byte arrives in order, every completion once, no violation. */
typedef struct {
    pyxlio_xsock_t s;
    unsigned char *region;
    uint32_t lkey;
    size_t nmsg, msglen;
    volatile int done;
} sender_t;

static void *sender_main(void *arg) {
    sender_t *t = arg;
    for (size_t k = 0; k < t->nmsg; k++) {
        unsigned char *p = t->region + k * t->msglen;
        for (size_t i = 0; i < t->msglen; i++) p[i] = pattern(k, i);
        pyxlio_socket_send_attr_t sa = {.flags = PYXLIO_SOCKET_SEND_FLAG_FLUSH, .mkey = t->lkey,
                                        .userdata_op = k + 1};
        if (k % 3 == 0) sa.flags |= PYXLIO_SOCKET_SEND_FLAG_INLINE;
        CHECK_RC(U.send(t->s, p, t->msglen, &sa), 0, 0);
    }
    t->done = 1;
    return NULL;
}

static int case_threads(void) {
    need_api();
    init_ultra();
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    pyxlio_poll_group_t g = group_new(PYXLIO_GROUP_FLAG_SAFE, 0);
    rec_t *r = rec_new();
    r->free_in_cb = 1;
    pyxlio_xsock_t s = sock_new(g, r);
    connect_to(g, s, r, &addr);
    echo_t e = {.fd = accept_peer(lfd), .reading = 1};
    sender_t t = {.s = s, .nmsg = 2000, .msglen = 200};
    t.region = malloc(t.nmsg * t.msglen);
    CHECK(t.region, "malloc");
    void *mr = reg_mr(U.get_pd(s), t.region, t.nmsg * t.msglen, 1);
    CHECK(mr, "reg_mr");
    t.lkey = pyxlio_ibv_mr_lkey(mr);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, sender_main, &t) == 0, "pthread_create");
    rxwait_t w = {r, t.nmsg * t.msglen};
    poll_until(g, c_rx_len, &w, echo_hook, &e, "the echo from the other thread");
    CHECK(pthread_join(th, NULL) == 0 && t.done, "sender");
    for (size_t k = 0, o = 0; k < t.nmsg; k++)
        for (size_t i = 0; i < t.msglen; i++, o++)
            CHECK(r->rx[o] == pattern(k, i), "byte %zu", o);
    size_t want = t.nmsg - (t.nmsg + 2) / 3;          /* zero-copy sends only */
    compwait_t cw = {r, want};
    poll_until(g, c_comps, &cw, NULL, NULL, "completions");
    CHECK(r->ncomps == want, "completions %zu want %zu", r->ncomps, want);
    for (size_t i = 1; i < r->ncomps; i++) CHECK(r->comps[i] > r->comps[i - 1], "order");
    destroy_and_wait(g, s, r);
    CHECK_RC(dereg_mr(mr), 0, 0);
    CHECK_RC(U.group_destroy(g), 0, 0);
    free(t.region);
    free(e.pend);
    close(e.fd);
    close(lfd);
    return 0;
}

static const struct { const char *name; int (*fn)(void); } CASES[] = {
    {"threads", case_threads},
    {"fork", case_fork},
    {"echo", case_echo},
    {"events", case_events},
    {"flush", case_flush},
    {"listen", case_listen},
    {"misuse", case_misuse},
    {"before-init", case_before_init},
    {"leaks", case_leaks},
    {"init-fresh", case_init_fresh},
    {"init-started", case_init_started},
    {"passthrough", case_passthrough},
    {"many", case_many},
};

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: emu_ultra_check CASE\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        if (!strcmp(argv[1], CASES[i].name)) {
            int rc = CASES[i].fn();
            if (rc == 0) printf("ok %s\n", argv[1]);
            return rc;
        }
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
}
