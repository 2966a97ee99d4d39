/*
 * pyxlio emulator: poll/ppoll/select/pselect/epoll that agree with the receive calls.
 *
 * A "special" socket (receive callback, feed, or datagrams queued in user space) is readable
 * iff its user ready queue is non-empty (a feed socket always is).  Before waiting, datagrams
 * the kernel holds for such sockets are pulled through the callback; when everything pulled was
 * dropped or held, the call waits again with the remaining timeout.  With no special socket in
 * the process every call goes straight to libc.
 *
 * epoll: level-triggered readiness is reported for special sockets whatever the registration
 * says (EPOLLET and EPOLLONESHOT registrations of a special socket are reported level-triggered);
 * kernel events are matched to special sockets by their epoll_data.
 */
#include <stdlib.h>
#include <string.h>

#include "emu.h"

#define PULL_MAX 64

static atomic_uint g_epgen[EMU_MAXFD];
static atomic_uchar g_isep[EMU_MAXFD];

void emu_epoll_track(int epfd) {
    if ((unsigned)epfd >= EMU_MAXFD) return;
    atomic_fetch_add(&g_epgen[epfd], 1);
    atomic_store(&g_isep[epfd], 1);
}

void emu_epoll_untrack(int fd) {
    if ((unsigned)fd >= EMU_MAXFD) return;
    if (atomic_load_explicit(&g_isep[fd], memory_order_relaxed)) {
        atomic_store(&g_isep[fd], 0);
        atomic_fetch_add(&g_epgen[fd], 1);
    }
}

uint32_t emu_epoll_gen(int epfd) {
    if ((unsigned)epfd >= EMU_MAXFD) return 0;
    return atomic_load(&g_epgen[epfd]);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* remaining milliseconds until deadline (-1 = infinite), rounding up */
static int remaining_ms(int64_t deadline) {
    if (deadline < 0) return -1;
    int64_t left = deadline - now_ns();
    if (left <= 0) return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

static int is_special_fd(int fd, emu_sock_t **out) {
    emu_sock_t *s = emu_sock_get(fd);
    if (s && atomic_load_explicit(&s->special, memory_order_relaxed)) { *out = s; return 1; }
    return 0;
}

/* ---- poll / ppoll ----------------------------------------------------------------------- */
static int poll_common(struct pollfd *fds, nfds_t nfds, int64_t deadline, const sigset_t *mask,
                       int use_ppoll, const struct timespec *orig_ts, int orig_ms) {
    nfds_t idx_stack[64];
    nfds_t *idx = idx_stack;
    nfds_t ns = 0;
    for (nfds_t i = 0; i < nfds; i++) {
        emu_sock_t *s;
        if ((fds[i].events & (POLLIN | POLLRDNORM)) && is_special_fd(fds[i].fd, &s)) {
            if (ns == 64 && idx == idx_stack) {
                idx = malloc(nfds * sizeof *idx);
                if (!idx) { errno = ENOMEM; return -1; }
                memcpy(idx, idx_stack, sizeof idx_stack);
            }
            idx[ns++] = i;
        }
    }
    if (ns == 0) {
        if (use_ppoll) return REAL(ppoll)(fds, nfds, orig_ts, mask);
        return REAL(poll)(fds, nfds, orig_ms);
    }
    int rc;
    for (;;) {
        int any = 0;
        for (nfds_t k = 0; k < ns; k++) {
            emu_sock_t *s = emu_sock_get(fds[idx[k]].fd);
            if (s && emu_pull_into_queue(s, PULL_MAX) == 1) any = 1;
        }
        int ms = any ? 0 : remaining_ms(deadline);
        if (use_ppoll) {
            struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000}, *tp = ms < 0 ? NULL : &t;
            rc = REAL(ppoll)(fds, nfds, tp, mask);
        } else {
            rc = REAL(poll)(fds, nfds, ms);
        }
        if (rc < 0) break;
        for (nfds_t k = 0; k < ns; k++) {
            struct pollfd *p = &fds[idx[k]];
            emu_sock_t *s = emu_sock_get(p->fd);
            if (!s) continue;
            short rd = p->events & (POLLIN | POLLRDNORM);
            int ready = (p->revents & rd) ? emu_pull_into_queue(s, PULL_MAX) > 0 : emu_sock_ready(s);
            p->revents = (short)((p->revents & ~rd) | (ready ? rd : 0));
        }
        rc = 0;
        for (nfds_t i = 0; i < nfds; i++)
            if (fds[i].revents) rc++;
        if (rc > 0 || remaining_ms(deadline) == 0) break;
    }
    if (idx != idx_stack) free(idx);
    return rc;
}

EMU_EXPORT int poll(struct pollfd *fds, nfds_t nfds, int timeout) {
    if (EMU_LIKELY(!atomic_load_explicit(&emu_nspecial, memory_order_relaxed)))
        return REAL(poll)(fds, nfds, timeout);
    int64_t deadline = timeout < 0 ? -1 : now_ns() + (int64_t)timeout * 1000000;
    return poll_common(fds, nfds, deadline, NULL, 0, NULL, timeout);
}

EMU_EXPORT int ppoll(struct pollfd *fds, nfds_t nfds, const struct timespec *ts, const sigset_t *mask) {
    if (EMU_LIKELY(!atomic_load_explicit(&emu_nspecial, memory_order_relaxed)))
        return REAL(ppoll)(fds, nfds, ts, mask);
    int64_t deadline = ts ? now_ns() + (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec : -1;
    return poll_common(fds, nfds, deadline, mask, 1, ts, 0);
}

EMU_EXPORT int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen) {
    if (fdslen / sizeof *fds < nfds) abort();
    return poll(fds, nfds, timeout);
}

EMU_EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t nfds, const struct timespec *ts,
                           const sigset_t *mask, size_t fdslen) {
    if (fdslen / sizeof *fds < nfds) abort();
    return ppoll(fds, nfds, ts, mask);
}

/* ---- select / pselect ------------------------------------------------------------------- */
static int select_common(int nfds, fd_set *r, fd_set *w, fd_set *e, int64_t deadline,
                         const sigset_t *mask, int use_pselect, struct timeval *orig_tv,
                         const struct timespec *orig_ts) {
    int sp[256], ns = 0;
    if (r) {
        int all[256];
        int n = emu_special_snapshot(all, 256);
        for (int i = 0; i < n; i++)
            if (all[i] < nfds && all[i] < FD_SETSIZE && FD_ISSET(all[i], r)) sp[ns++] = all[i];
    }
    if (ns == 0) {
        if (use_pselect) return REAL(pselect)(nfds, r, w, e, orig_ts, mask);
        return REAL(select)(nfds, r, w, e, orig_tv);
    }
    fd_set r0, w0, e0;
    if (r) r0 = *r;
    if (w) w0 = *w;
    if (e) e0 = *e;
    int rc;
    for (;;) {
        int any = 0;
        for (int k = 0; k < ns; k++) {
            emu_sock_t *s = emu_sock_get(sp[k]);
            if (s && emu_pull_into_queue(s, PULL_MAX) == 1) any = 1;
        }
        if (r) *r = r0;
        if (w) *w = w0;
        if (e) *e = e0;
        int ms = any ? 0 : remaining_ms(deadline);
        if (use_pselect) {
            struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
            rc = REAL(pselect)(nfds, r, w, e, ms < 0 ? NULL : &t, mask);
        } else {
            struct timeval t = {ms / 1000, (long)(ms % 1000) * 1000};
            rc = REAL(select)(nfds, r, w, e, ms < 0 ? NULL : &t);
        }
        if (rc < 0) return rc;
        for (int k = 0; k < ns; k++) {
            emu_sock_t *s = emu_sock_get(sp[k]);
            int kr = FD_ISSET(sp[k], r) != 0;
            int ready = s ? (kr ? emu_pull_into_queue(s, PULL_MAX) > 0 : emu_sock_ready(s)) : kr;
            if (ready && !kr) { FD_SET(sp[k], r); rc++; }
            else if (!ready && kr) { FD_CLR(sp[k], r); rc--; }
        }
        if (rc > 0 || remaining_ms(deadline) == 0) break;
    }
    if (orig_tv) { orig_tv->tv_sec = 0; orig_tv->tv_usec = 0;
        int ms = remaining_ms(deadline);
        if (ms > 0) { orig_tv->tv_sec = ms / 1000; orig_tv->tv_usec = (ms % 1000) * 1000; } }
    return rc;
}

EMU_EXPORT int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv) {
    if (EMU_LIKELY(!atomic_load_explicit(&emu_nspecial, memory_order_relaxed)))
        return REAL(select)(nfds, r, w, e, tv);
    int64_t deadline = tv ? now_ns() + (int64_t)tv->tv_sec * 1000000000 + (int64_t)tv->tv_usec * 1000 : -1;
    return select_common(nfds, r, w, e, deadline, NULL, 0, tv, NULL);
}

EMU_EXPORT int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *ts,
                       const sigset_t *mask) {
    if (EMU_LIKELY(!atomic_load_explicit(&emu_nspecial, memory_order_relaxed)))
        return REAL(pselect)(nfds, r, w, e, ts, mask);
    int64_t deadline = ts ? now_ns() + (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec : -1;
    return select_common(nfds, r, w, e, deadline, mask, 1, NULL, ts);
}

/* ---- epoll ------------------------------------------------------------------------------ */
EMU_EXPORT int epoll_create(int size) {
    int fd = REAL(epoll_create)(size);
    if (fd >= 0) {
        int saved = errno;
        emu_init();
        emu_epoll_track(fd);
        errno = saved;
    }
    return fd;
}

EMU_EXPORT int epoll_create1(int flags) {
    int fd = REAL(epoll_create1)(flags);
    if (fd >= 0) {
        int saved = errno;
        emu_init();
        emu_epoll_track(fd);
        errno = saved;
    }
    return fd;
}

EMU_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    int rc = REAL(epoll_ctl)(epfd, op, fd, ev);
    emu_sock_t *s;
    if (rc != 0 || !(s = emu_sock_get(fd))) return rc;
    uint32_t gen = emu_epoll_gen(epfd);
    pthread_mutex_lock(&s->mu);
    int i;
    for (i = 0; i < s->nep; i++)
        if (s->ep[i].epfd == epfd) break;
    if (i < s->nep && s->ep[i].epgen != gen) { /* stale registration of a closed epoll fd */
        s->ep[i] = s->ep[--s->nep];
        i = s->nep;
    }
    if (op == EPOLL_CTL_ADD && i == s->nep) {
        /* libxlio keeps one epoll context per socket it knows, offloaded or not
         * (src/core/sock/sockinfo.cpp add_epoll_context: "Currently XLIO does not support more
         * then 1 epfd listed"): a second epoll instance gets -1/ENOMEM, after the kernel's
         * epoll_ctl already took the fd (src/core/iomux/epfd_info.cpp add_fd: not undone). */
        for (int k = 0; k < s->nep; k++)
            if (s->ep[k].epgen == emu_epoll_gen(s->ep[k].epfd)) {
                pthread_mutex_unlock(&s->mu);
                errno = ENOMEM;
                return -1;
            }
        s->nep = 0;                         /* only stale registrations: forget them */
        i = 0;                              /* (the new one is the first) */
    }
    if (op == EPOLL_CTL_DEL) {
        if (i < s->nep) s->ep[i] = s->ep[--s->nep];
    } else if (ev) {
        if (i == s->nep) {
            if (s->nep == s->capep) {
                int nc = s->capep ? s->capep * 2 : 4;
                emu_epreg_t *n = realloc(s->ep, (size_t)nc * sizeof *n);
                if (!n) { pthread_mutex_unlock(&s->mu); return rc; }
                s->ep = n;
                s->capep = nc;
            }
            s->nep++;
        }
        s->ep[i].epfd = epfd;
        s->ep[i].epgen = gen;
        s->ep[i].events = ev->events;
        s->ep[i].data = ev->data.u64;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

typedef struct { int fd; uint64_t data; uint32_t events; int ready; int reported; } ep_special_t;

static int epoll_common(int epfd, struct epoll_event *evs, int max, int timeout, const sigset_t *mask,
                        int use_pwait) {
    int all[256];
    ep_special_t sp[256];
    int n = emu_special_snapshot(all, 256), ns = 0;
    uint32_t gen = emu_epoll_gen(epfd);
    for (int i = 0; i < n; i++) {
        emu_sock_t *s = emu_sock_get(all[i]);
        if (!s) continue;
        pthread_mutex_lock(&s->mu);
        for (int k = 0; k < s->nep; k++)
            if (s->ep[k].epfd == epfd && s->ep[k].epgen == gen && (s->ep[k].events & EPOLLIN)) {
                sp[ns].fd = all[i];
                sp[ns].data = s->ep[k].data;
                sp[ns].events = s->ep[k].events;
                ns++;
                break;
            }
        pthread_mutex_unlock(&s->mu);
    }
    if (ns == 0 || max <= 0 || !evs) {
        if (use_pwait) return REAL(epoll_pwait)(epfd, evs, max, timeout, mask);
        return REAL(epoll_wait)(epfd, evs, max, timeout);
    }
    int64_t deadline = timeout < 0 ? -1 : now_ns() + (int64_t)timeout * 1000000;
    int rc;
    for (;;) {
        int any = 0;
        for (int k = 0; k < ns; k++) {
            emu_sock_t *s = emu_sock_get(sp[k].fd);
            sp[k].ready = s && emu_pull_into_queue(s, PULL_MAX) == 1;
            sp[k].reported = 0;
            any |= sp[k].ready;
        }
        int ms = any ? 0 : remaining_ms(deadline);
        rc = use_pwait ? REAL(epoll_pwait)(epfd, evs, max, ms, mask) : REAL(epoll_wait)(epfd, evs, max, ms);
        if (rc < 0) return rc;
        int out = 0;
        for (int i = 0; i < rc; i++) {
            struct epoll_event e = evs[i];
            int k;
            for (k = 0; k < ns; k++)
                if (sp[k].data == e.data.u64 && !sp[k].reported) break;
            if (k < ns) {
                emu_sock_t *s = emu_sock_get(sp[k].fd);
                if ((e.events & EPOLLIN) && s) sp[k].ready = emu_pull_into_queue(s, PULL_MAX) > 0;
                e.events &= ~(uint32_t)EPOLLIN;
                if (sp[k].ready) e.events |= EPOLLIN;
                sp[k].reported = 1;
                if (!e.events) continue;
            }
            evs[out++] = e;
        }
        for (int k = 0; k < ns && out < max; k++)
            if (sp[k].ready && !sp[k].reported) {
                evs[out].events = EPOLLIN;
                evs[out].data.u64 = sp[k].data;
                out++;
            }
        rc = out;
        if (rc > 0 || remaining_ms(deadline) == 0) break;
    }
    return rc;
}

EMU_EXPORT int epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout) {
    if (EMU_LIKELY(!atomic_load_explicit(&emu_nspecial, memory_order_relaxed)))
        return REAL(epoll_wait)(epfd, evs, max, timeout);
    return epoll_common(epfd, evs, max, timeout, NULL, 0);
}

EMU_EXPORT int epoll_pwait(int epfd, struct epoll_event *evs, int max, int timeout, const sigset_t *mask) {
    if (EMU_LIKELY(!atomic_load_explicit(&emu_nspecial, memory_order_relaxed)))
        return REAL(epoll_pwait)(epfd, evs, max, timeout, mask);
    return epoll_common(epfd, evs, max, timeout, mask, 1);
}
