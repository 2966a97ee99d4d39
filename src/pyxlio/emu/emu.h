/*
 * pyxlio's XLIO emulator: internal declarations shared by the emulator's C files.
 *
 * The emulator is an LD_PRELOAD library that serves the XLIO Extra API (see the project's
 * ABI fact sheet and include/pyxlio/xlio_abi.h) from ordinary kernel sockets.  Only the
 * interposed libc functions and `pyxlio_emu_version` are exported; everything declared here
 * is hidden (the library is compiled with -fvisibility=hidden).
 */
#ifndef PYXLIO_EMU_H
#define PYXLIO_EMU_H

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

#include "pyxlio/xlio_abi.h"

#define EMU_EXPORT __attribute__((visibility("default")))
#define EMU_HIDDEN __attribute__((visibility("hidden")))
#define EMU_LIKELY(x) __builtin_expect(!!(x), 1)
#define EMU_UNLIKELY(x) __builtin_expect(!!(x), 0)

#define EMU_MAXFD 65536             /* fds at or above this are never offloaded */
#define EMU_MAX_DGRAM 65536         /* largest datagram the emulator receives */
#define EMU_XLIO_RX_FLAGS (PYXLIO_MSG_XLIO_ZCOPY_FORCE | PYXLIO_MSG_XLIO_ZCOPY)
#define EMU_EXIT_STRICT 86          /* strict mode: leaks or contract violations, at exit */
#define EMU_EXIT_CONFIG 87          /* a configuration error, at load (see emu_core.c) */
#define EMU_MAX_BUFS (1u << 24)     /* most pool buffers XLIO_MEMORY_LIMIT may ask for */
#define EMU_CONF_FILE_MAX (1u << 20) /* largest config file read (bytes) */
#define EMU_CANARY 0xDB             /* payload bytes of a packet back in the pool */

/* ---- real libc functions (resolved with dlsym(RTLD_NEXT)) ------------------------------ */
typedef struct emu_real {
    int (*socket)(int, int, int);
    int (*close)(int);
    int (*bind)(int, const struct sockaddr *, socklen_t);
    int (*connect)(int, const struct sockaddr *, socklen_t);
    int (*listen)(int, int);
    int (*accept)(int, struct sockaddr *, socklen_t *);
    int (*accept4)(int, struct sockaddr *, socklen_t *, int);
    ssize_t (*recv)(int, void *, size_t, int);
    ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
    ssize_t (*recvmsg)(int, struct msghdr *, int);
    int (*recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
    ssize_t (*read)(int, void *, size_t);
    ssize_t (*readv)(int, const struct iovec *, int);
    ssize_t (*send)(int, const void *, size_t, int);
    ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
    int (*poll)(struct pollfd *, nfds_t, int);
    int (*ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
    int (*select)(int, fd_set *, fd_set *, fd_set *, struct timeval *);
    int (*pselect)(int, fd_set *, fd_set *, fd_set *, const struct timespec *, const sigset_t *);
    int (*epoll_create)(int);
    int (*epoll_create1)(int);
    int (*epoll_ctl)(int, int, int, struct epoll_event *);
    int (*epoll_wait)(int, struct epoll_event *, int, int);
    int (*epoll_pwait)(int, struct epoll_event *, int, int, const sigset_t *);
    int (*getsockopt)(int, int, int, void *, socklen_t *);
    int (*dup2)(int, int);
    int (*dup3)(int, int, int);
} emu_real_t;

extern EMU_HIDDEN emu_real_t emu_real;
EMU_HIDDEN void emu_resolve(void);
#define REAL(fn) (EMU_LIKELY(emu_real.fn != NULL) ? emu_real.fn : (emu_resolve(), emu_real.fn))

/* ---- configuration (environment) -------------------------------------------------------- */
/* Every variable is read and checked once, by the library constructor; a bad value is fatal
 * (emu_conf_error: one line on stderr, _exit(EMU_EXIT_CONFIG)). */
typedef struct emu_conf {
    int strict;             /* PYXLIO_EMU_STRICT */
    int verbose;            /* PYXLIO_EMU_VERBOSE */
    int layout;             /* PYXLIO_EMU_LAYOUT: a pyxlio_layout_t */
    int offload;            /* PYXLIO_EMU_OFFLOAD: EMU_OFFLOAD_* */
    size_t frag;            /* PYXLIO_EMU_FRAG_SIZE */
    size_t memory_limit;    /* XLIO_MEMORY_LIMIT */
    int tracelevel;         /* XLIO_TRACELEVEL */
} emu_conf_t;
extern EMU_HIDDEN emu_conf_t emu_conf;

/* PYXLIO_EMU_OFFLOAD: which sockets the emulator offloads (thread offload and transport rules
 * apply on top).  ALL: every UDP/TCP socket, loopback included (the emulator's default: the
 * zero-copy path tested on any host).  NONE: no socket; every one is wrapped and served through
 * the kernel, as a real libxlio serves loopback and addresses its rules leave to the OS.
 * NO_LOOPBACK: like a real host: 127.0.0.0/8 and ::1 go to the kernel, other addresses are
 * offloaded. */
enum { EMU_OFFLOAD_ALL = 0, EMU_OFFLOAD_NONE = 1, EMU_OFFLOAD_NO_LOOPBACK = 2 };
/* 1 if a socket bound or connected to `sa` is left to the kernel by the offload mode */
EMU_HIDDEN int emu_addr_kernel(const struct sockaddr *sa, socklen_t len);
/* the layout has XLIO_SND_FLAGS_DUMMY (legacy and 3.94x; 3.60 and 3.61+ removed it) */
static inline int emu_layout_has_dummy(void) {
    return emu_conf.layout == PYXLIO_LAYOUT_LEGACY || emu_conf.layout == PYXLIO_LAYOUT_394 ||
           emu_conf.layout == PYXLIO_LAYOUT_VMA;
}

/* a configuration error: "pyxlio-emu: error: <message>" on stderr, then _exit(87) */
EMU_HIDDEN void emu_conf_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* `value` quoted for a message: printable ASCII as is, other bytes as \xNN, at most 64 bytes */
EMU_HIDDEN const char *emu_quote(const char *value, char *out, size_t outlen);

/* ---- global state ----------------------------------------------------------------------- */
extern EMU_HIDDEN atomic_int emu_inited;     /* global init done */
extern EMU_HIDDEN pid_t emu_pid;             /* pid the state belongs to (fork/vfork guard) */
EMU_HIDDEN void emu_init(void);              /* idempotent, thread-safe */

/* logging: one line, prefix "pyxlio-emu: ", straight to fd 2 */
EMU_HIDDEN void emu_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* a contract violation: logged, counted; strict mode makes the exit status 86 */
EMU_HIDDEN void emu_violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
EMU_HIDDEN void emu_vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* verbose */
extern EMU_HIDDEN atomic_ulong emu_nviolations;

/* ---- packet pool ------------------------------------------------------------------------ */
enum { PKT_FREE = 0, PKT_BUSY, PKT_QUEUED, PKT_ZC, PKT_HELD, PKT_ORPHAN };

typedef struct emu_pkt {
    atomic_uint state;          /* PKT_* */
    int32_t fd;                 /* owner socket */
    uint32_t gen;               /* owner socket generation */
    uint32_t nfrag;             /* buffers chained from this one (index == descriptor index) */
    uint32_t len;               /* payload bytes */
    uint32_t qnext;             /* user ready queue link: index + 1, 0 = end */
    uint32_t addrlen;           /* length of src */
    uint32_t flags;             /* EMU_PKT_* */
    struct sockaddr_in6 src;    /* 28 bytes, holds sockaddr_in too */
    uint32_t buf;               /* first buffer (the others chain through emu_pool.next) */
    uint32_t ctrllen;           /* bytes of control messages kept (emu_pool.ctrl), 0 = none */
    struct timespec ts;         /* software receive timestamp */
} emu_pkt_t;
#define EMU_PKT_TRUNC 1u        /* the kernel truncated the datagram */
#define EMU_PKT_RAW 2u          /* pulled by a batch, the receive callback not run on it yet */
#define EMU_PKT_CTRUNC 4u       /* the kernel truncated its control messages */

/* Batch pulls (emu_sock.c emu_pull_batch): one recvmmsg takes up to EMU_BATCH datagrams into
 * pool buffers; the first is handed on, the rest wait in the socket's user queue. */
#define EMU_BATCH 32
#define EMU_BATCH_DIRECT 4          /* most pool buffers a batch slot receives into directly */
#define EMU_CTRL_MAX 128            /* control-message bytes kept per queued datagram */
typedef struct emu_batch {
    struct mmsghdr msgs[EMU_BATCH];
    struct iovec iov[EMU_BATCH][EMU_BATCH_DIRECT + 1];
    struct sockaddr_in6 src[EMU_BATCH];
    unsigned char ctrl[EMU_BATCH][EMU_CTRL_MAX];
    uint32_t bufs[EMU_BATCH * EMU_BATCH_DIRECT];  /* slot i: bufs[i*d .. i*d+d) */
    uint32_t descs[EMU_BATCH];
    unsigned char *scratch;     /* EMU_BATCH * EMU_MAX_DGRAM bytes (MAP_NORESERVE): tails */
} emu_batch_t;

typedef struct emu_pool {
    unsigned char *base;        /* buffer memory (user allocator or mmap) */
    size_t size;                /* bytes asked for */
    size_t stride;              /* bytes per buffer (frag rounded up to 64) */
    uint32_t nbuf;
    uint32_t maxfrag;           /* buffers needed for the largest datagram */
    emu_pkt_t *pkts;            /* packet descriptors (emulator memory), as many as buffers */
    uint32_t *dring;            /* FIFO of free descriptors: a freed id is reused last */
    uint32_t dhead, dcount;
    uint32_t *next;             /* fragment chain: next buffer index */
    uint32_t *freelist;         /* stack of free buffer indices */
    uint32_t nfree;
    uint32_t nspare;            /* buffers in the threads' spare sets */
    uint32_t budget;            /* most buffers the spare sets keep between receives */
    uint32_t nresv;             /* free buffers promised to batch pulls under way */
    unsigned char *ctrl;        /* EMU_CTRL_MAX bytes per descriptor (lazily mapped) */
    pthread_mutex_t mu;
    int user_alloc;             /* base came from the registered allocator */
} emu_pool_t;
extern EMU_HIDDEN emu_pool_t emu_pool;

static inline unsigned char *emu_buf(uint32_t i) { return emu_pool.base + (size_t)i * emu_pool.stride; }
static inline size_t emu_frag_len(const emu_pkt_t *p, uint32_t k) {
    if (k + 1 < p->nfrag) return emu_conf.frag;
    return p->len - (size_t)k * emu_conf.frag;
}

EMU_HIDDEN void emu_pool_create(void);                   /* fatal if it cannot be allocated */
/* fill a packet's payload with EMU_CANARY (it is going back to the pool) */
EMU_HIDDEN void emu_pkt_canary(const emu_pkt_t *p);
EMU_HIDDEN uint32_t emu_pool_get(uint32_t *out, uint32_t n);
EMU_HIDDEN void emu_pool_put(const uint32_t *idx, uint32_t n);
EMU_HIDDEN void emu_pkt_release(uint32_t pi);             /* descriptor + its buffers -> pool */
/* return buffers and descriptors in one locked step */
EMU_HIDDEN void emu_pool_put2(const uint32_t *bufs, uint32_t nb, const uint32_t *descs, uint32_t nd);
EMU_HIDDEN void emu_pool_fork_child(void);
/* validate a packet id; returns descriptor index or -1 (never dereferences a bad id) */
EMU_HIDDEN long emu_pkt_lookup(const void *id);

/* per-thread spare set of buffers that a datagram is received into */
typedef struct emu_spare {
    uint32_t cnt, cap;          /* buffers held; room (the largest datagram's buffers) */
    uint32_t want;              /* held between receives (at most cap, within the pool's budget) */
    uint32_t *idx;
    struct iovec *iov;
    unsigned char *scratch;     /* EMU_MAX_DGRAM bytes: tail of datagrams above EMU_DIRECT_FRAGS */
} emu_spare_t;
/* A datagram is received straight into this many pool buffers plus a per-thread scratch
 * buffer for its tail (copied into more pool buffers): 8 iovecs keep the kernel on its fast
 * path (UIO_FASTIOV), so only datagrams above 7 fragments pay one extra copy. */
#define EMU_DIRECT_FRAGS 7
EMU_HIDDEN emu_spare_t *emu_spare(void);                   /* topped up; NULL if no memory */
/* make sure the spare holds at least n buffers (n <= cap), past the budget if need be; 0 or -1
 * (the pool has fewer than that free: exhausted) */
EMU_HIDDEN int emu_spare_need(emu_spare_t *sp, uint32_t n);
/* take spare[0..used) as one packet (chained); returns its descriptor index */
EMU_HIDDEN uint32_t emu_spare_take(emu_spare_t *sp, uint32_t used, uint32_t len);
/* take spare[0..used) as `used` one-buffer packets (TCP stream data) */
EMU_HIDDEN void emu_spare_take_separate(emu_spare_t *sp, uint32_t used, uint32_t len, uint32_t *ids);
/* the calling thread's batch buffers (NULL if no memory) */
EMU_HIDDEN emu_batch_t *emu_batch(void);
/* Begin a batch of at most `want` slots of `d` direct buffers each: returns the slots n the
 * pool can guarantee (every slot can hold the largest datagram: d buffers taken into b->bufs,
 * the other maxfrag - d reserved), 0 when not even one. */
EMU_HIDDEN uint32_t emu_pool_batch_begin(emu_batch_t *b, uint32_t want, uint32_t d);
/* End it: `nrecv` of the n slots received datagrams of the lengths in b->msgs; their packets'
 * descriptors go to b->descs (BUSY, buffers chained, tails copied in from the scratch), every
 * unused buffer and the reservation go back to the pool. */
EMU_HIDDEN void emu_pool_batch_end(emu_batch_t *b, uint32_t n, uint32_t d, uint32_t nrecv);

/* ---- sockets ---------------------------------------------------------------------------- */
typedef struct emu_epreg {
    int epfd;
    uint32_t epgen;
    uint32_t events;
    uint64_t data;
} emu_epreg_t;

typedef struct emu_sock {
    pthread_mutex_t mu;
    pthread_mutex_t pull_mu;    /* one batch pull at a time (kernel order = queue order) */
    atomic_int active;
    atomic_int special;         /* callback, feed or user queue non-empty */
    uint32_t gen;
    int fd;
    int domain;
    int is_udp, is_tcp;
    int offloaded;
    int listener;
    int connected;              /* TCP: connected (or connecting) or accepted */
    uint64_t rule_seq;          /* rules newer than this don't apply */
    pyxlio_recv_callback_t cb;
    void *cb_ctx;
    int feed;
    uint32_t feed_size;
    uint64_t feed_seq;
    uint32_t qhead, qtail, qlen; /* index + 1 */
    uint64_t qbytes;
    uint32_t qraw;              /* queued packets the callback has not seen yet (EMU_PKT_RAW) */
    uint64_t qrawbytes;
    uint32_t bdirect;           /* direct buffers per batch slot (the last batch's need) */
    atomic_int batched;         /* a batch pulled from this socket: its copy receives go
                                 * through the user queue too (order, no reader starved) */
    struct sockaddr_in6 local;
    socklen_t local_len;
    emu_epreg_t *ep;
    int nep, capep;
    /* counters: relaxed atomics or under mu */
    atomic_ulong rx_packets, rx_bytes, rx_zcopy, rx_copied, tx_packets, dummy_sends, dropped,
        enomem;
    uint64_t outstanding, held;  /* under mu */
} emu_sock_t;

EMU_HIDDEN emu_sock_t *emu_sock_get(int fd);        /* active tracked socket or NULL */
/* The receive callback the emulator runs for s: only an offloaded UDP socket's.  A callback
 * registered on any other socket is accepted (as libxlio does) and never called. */
static inline pyxlio_recv_callback_t emu_sock_cb(const emu_sock_t *s) {
    return (s->offloaded && s->is_udp) ? s->cb : NULL;
}
/* A kernel-served UDP socket's readability as libxlio decides it (FIONREAD > 0): 0 when a
 * receive may go to the kernel now, else -1 with errno (EAGAIN, EINTR, or the error). */
EMU_HIDDEN int emu_os_gate(emu_sock_t *s, int flags);
EMU_HIDDEN void emu_sock_update_special(emu_sock_t *s); /* under s->mu */
EMU_HIDDEN int emu_special_snapshot(int *fds, int max);
extern EMU_HIDDEN atomic_int emu_nspecial;
EMU_HIDDEN void emu_sock_fork_child(void);
EMU_HIDDEN void emu_sock_exit_report(void);
EMU_HIDDEN int emu_sock_blocking(emu_sock_t *s, int flags);

/* receive machinery */
/* want_src 0: the kernel is not asked for the source address (cheaper; addrlen stays 0) */
EMU_HIDDEN int emu_pull_kernel(emu_sock_t *s, int kflags, uint32_t *pi, int want_src);
/* Up to EMU_BATCH datagrams with one non-blocking recvmmsg (fewer when the pool is short, one
 * by emu_pull_kernel when it cannot guarantee a batch slot): the oldest datagram of the socket
 * (queue first) comes back BUSY in *pi, the others queued; 0 or -1/errno (EAGAIN: none; EBADF:
 * the socket of generation `gen` was closed meanwhile, what came is back in the pool). */
EMU_HIDDEN int emu_pull_batch(emu_sock_t *s, uint32_t gen, int kflags, uint32_t *pi);
/* User-space readiness for poll/select/epoll: 1 when a receive call returns a datagram now
 * (callbacks run on what is pulled until one is kept), 0 when not; 2: the socket has no
 * callback and its user queue is empty, so the kernel's readiness stands. */
EMU_HIDDEN int emu_pull_into_queue(emu_sock_t *s, int max);
EMU_HIDDEN int emu_next_special(emu_sock_t *s, int kflags, uint32_t *pi);
/* put a BUSY packet back at the head of the user queue: 0, or -1 when the socket was closed
 * meanwhile (the packet is then released) */
EMU_HIDDEN int emu_queue_push_front(emu_sock_t *s, uint32_t pi);
EMU_HIDDEN int emu_sock_ready(emu_sock_t *s);      /* user-space readable (feed or queue) */
/* The zero-copy receive's common case in one locked step: the head of the user queue, kept by
 * the callback already or with no callback to run, handed to the application (PKT_ZC,
 * outstanding counted).  1 and *pi, or 0 (empty queue, or the callback's turn first). */
EMU_HIDDEN int emu_queue_take_zc(emu_sock_t *s, uint32_t *pi);

/* ---- epoll bookkeeping (emu_poll.c) ----------------------------------------------------- */
EMU_HIDDEN void emu_epoll_track(int epfd);
EMU_HIDDEN void emu_epoll_untrack(int fd);
EMU_HIDDEN uint32_t emu_epoll_gen(int epfd);

/* ---- thread offload (emu_core.c) -------------------------------------------------------- */
EMU_HIDDEN int emu_thread_offload_get(pthread_t tid);
EMU_HIDDEN int emu_thread_offload_set(int offload, pthread_t tid);

/* ---- rules (emu_rules.c) ---------------------------------------------------------------- */
enum { EMU_ROLE_TCP_SERVER, EMU_ROLE_TCP_CLIENT, EMU_ROLE_UDP_SENDER, EMU_ROLE_UDP_RECEIVER,
       EMU_ROLE_UDP_CONNECT };
EMU_HIDDEN int emu_rule_add(const char *line);       /* 0 ok, 1 syntax error (poisoned) */
/* read the config file named by variable `var` (fatal on any error) */
EMU_HIDDEN void emu_rules_load_file(const char *var, const char *path);
EMU_HIDDEN uint64_t emu_rules_seq(void);
EMU_HIDDEN void emu_rules_fork_child(void);
/* 1 if a rule says `use os` (first match wins among rules with seq <= upto) */
EMU_HIDDEN int emu_rules_use_os(int role, const struct sockaddr *first, const struct sockaddr *second,
                                uint64_t upto);

/* ---- feed (emu_feed.c) ------------------------------------------------------------------ */
EMU_HIDDEN int emu_feed_parse(const char *spec);          /* 0 or -1 (nothing set) */
EMU_HIDDEN uint32_t emu_feed_size_for_port(unsigned port); /* 0 = no feed on that port */
EMU_HIDDEN int emu_feed_make_pkt(emu_sock_t *s, uint32_t *pi);
EMU_HIDDEN ssize_t emu_feed_copy(emu_sock_t *s, const struct iovec *iov, int iovcnt,
                                 struct sockaddr *from, socklen_t *fromlen, int *msg_flags,
                                 int peek, int trunc_flag);
EMU_HIDDEN socklen_t emu_feed_src(emu_sock_t *s, struct sockaddr_in6 *out);

/* ---- API (emu_api.c) -------------------------------------------------------------------- */
EMU_HIDDEN void *emu_api_pointer(void);
extern EMU_HIDDEN atomic_int emu_user_alloc_set;
extern EMU_HIDDEN pyxlio_alloc_fn emu_user_alloc;
extern EMU_HIDDEN pyxlio_free_fn emu_user_free;

/* ---- the Ultra API and the socket API (emu_ultra.c) ------------------------------------- */
/* write the members, in the release's order, into a table of 16 (socket API: legacy, 3.94x)
 * or 23 (Ultra API: 3.60, 3.61+) pointers */
EMU_HIDDEN void emu_ultra_fill_socket_api(void *members);
EMU_HIDDEN void emu_ultra_fill_ultra_api(void *members);
EMU_HIDDEN void emu_ultra_exit_report(void);   /* buffers, groups, sockets, completions left */
EMU_HIDDEN void emu_ultra_fork_child(void);

/* misc helpers */
EMU_HIDDEN size_t emu_copy_to_iov(const struct iovec *iov, int iovcnt, const emu_pkt_t *p, size_t skip_none);
EMU_HIDDEN void emu_fmt_addr(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen);
/* libxlio's size syntax: 0 and *out, or -1 (bad syntax or above 2^64-1) */
EMU_HIDDEN int emu_parse_size(const char *s, unsigned long long *out);

#endif /* PYXLIO_EMU_H */
