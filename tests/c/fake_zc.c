/* A fake legacy libxlio whose zero-copy receive answers are SCRIPTED, for pyxlio's
 * provider-fuzz tests (tests/test_provider_fuzz.py, tests/fuzz/).  Loaded with LD_PRELOAD.
 *
 * getsockopt(-2, SOL_SOCKET, 2800) answers a legacy-layout xlio_api_t (magic "NVDAXLIO",
 * cap_mask bits 0, 1, 2: register_recv_callback, recvfrom_zcopy, recvfrom_zcopy_free_packets)
 * whose 120 bytes end at a PROT_NONE guard page.  Written from the project's ABI fact sheet,
 * independently of pyxlio's own header, so a mistake there is not mirrored here.
 *
 * recvfrom_zcopy(s, ...) pops the oldest answer pushed for fd s (or for any fd) with
 * fake_zc_push(): the answer bytes are copied into the caller's buffer, bounded by its len,
 * and the rest of that buffer is filled with a filler byte (0xa5 unless told), so a walk that
 * trusts more than the answer holds meets garbage rather than stale packets.  rc, the flags
 * passed out, errno and the source address are the scripted ones.  No answer queued: -1/EAGAIN.
 *
 * Payload memory comes from fake_zc_payload(): each piece ends right before a PROT_NONE page
 * (and is read-only), so reading one byte past a fragment, or writing into one, crashes.
 *
 * Packet ids come from fake_zc_new_id() and are listed with the answer that carries them.
 * When an answer is served its ids are out on that fd; the test then judges the answer
 * (fake_zc_judge): 1 well-formed (each id must be freed exactly once, on its fd, before the
 * socket is closed), 0 malformed or a copy (its ids must never be freed).
 * recvfrom_zcopy_free_packets checks every id it is given: unknown ids, ids never served, ids
 * of a malformed answer and double frees are violations and abort() (the real library would
 * dereference them and crash; set FAKE_ZC_NOABORT=1 to record and go on); a free on another
 * fd, or after the socket was closed, is a violation answered -1/ENOENT.  Violations are kept
 * in memory and appended to the file named by FAKE_ZC_LOG (it survives an abort).
 *
 * register_recv_callback keeps one callback per fd, or refuses a registration with -1/EINVAL
 * while fake_zc_set_refuse(1) is in force (as XLIO does for an fd it does not know; an
 * unregistration is always accepted); fake_zc_registered(fd) tells whether the fd has one.
 * A callback answer (fake_zc_push_cb) is
 * handed to it from inside recvfrom_zcopy, as XLIO does: scripted sz_iov, iovec array and
 * 80-byte info, each copied to memory that ends at a guard page and is unmapped when the
 * callback returns; recvfrom_zcopy then answers -1/EAGAIN.  Only a HOLD verdict puts the
 * packet id out on the fd (to be freed once); any other free of it is a violation.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAKE_MAGIC 0x4f494c584144564eULL
#define FAKE_SO_GET_API 2800
#define FAKE_MSG_ZCOPY 0x00040000
#define FAKE_API_SIZE 120              /* legacy layout with bit 0 set, no socket API */
#define FAKE_CAPS 0x7ULL               /* bits 0, 1, 2 */
#define FAKE_MAX_FD 65536
#define FAKE_MAX_VIOLATIONS 256
#define FAKE_ID_BASE 0x7e5a00000000ULL /* ids look like pointers; nothing is ever there */
#define FAKE_ID_STRIDE 16

#define EXPORT __attribute__((visibility("default")))

enum { ID_NEW = 0, ID_OUT = 1, ID_FREED = 2 };
enum { TRUST_PENDING = -1, TRUST_NEVER = 0, TRUST_ONCE = 1 };

typedef struct {
    unsigned char state;
    signed char trust;
    int fd;
    unsigned gen;       /* fd generation when served */
    long seq;           /* answer that carried it (-1: none yet) */
    unsigned frees;     /* times it was passed to free */
} id_rec_t;

typedef struct answer {
    struct answer *next;
    long seq;
    int fd;             /* -1: any fd */
    unsigned char *bytes;
    size_t len;
    int rc, flags_out, err;
    uint64_t *ids;
    size_t nids;
    unsigned char from[128];
    size_t from_len;
    unsigned fromlen_out;
    int served;
    int served_fd;
    size_t served_len;
    /* a receive-callback answer: the registered callback gets (sz_iov, iovs, info) */
    int is_cb;
    size_t cb_sz_iov;
    unsigned char *cb_iovs;
    size_t cb_iov_bytes;
    int cb_iovs_null;
    unsigned char cb_info[80];
    int cb_info_null;
    int verdict;        /* what the callback returned; -1: not called */
} answer_t;

typedef struct {
    int fd, flags_in;
    size_t len;
    long seq;           /* -1: nothing queued (EAGAIN) */
    int from_null, fromlen_null;
} call_rec_t;

typedef struct { void *map; size_t size; } mapping_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static id_rec_t *ids;
static size_t nids, idcap;
static answer_t **answers;          /* by seq */
static size_t nanswers, anscap;
static answer_t *queue_head, *queue_tail;
static call_rec_t *calls;
static size_t ncalls, callcap;
static mapping_t *maps;
static size_t nmaps, mapcap;
static char *violations[FAKE_MAX_VIOLATIONS];
static size_t nviolations, lost_violations;
static unsigned fdgen[FAKE_MAX_FD];
static int filler = 0xa5;
static unsigned long free_calls, freed_ids;
static unsigned char *guard_page;

typedef int (*fake_cb_t)(int fd, size_t sz_iov, void *iov, void *info, void *ctx);
static struct { fake_cb_t cb; void *ctx; } cbs[FAKE_MAX_FD];
static int refuse_register;         /* 1: register_recv_callback(fd, cb != NULL) -> -1/EINVAL */
static unsigned long register_calls, refused_registers;

static void *grow(void *arr, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return arr;
    size_t n = *cap ? *cap * 2 : 256;
    while (n < need) n *= 2;
    void *p = realloc(arr, n * item);
    if (!p) abort();
    *cap = n;
    return p;
}

/* Called with mu held. */
static void violation(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (nviolations < FAKE_MAX_VIOLATIONS) violations[nviolations++] = strdup(buf);
    else lost_violations++;
    const char *path = getenv("FAKE_ZC_LOG");
    if (path) {
        FILE *f = fopen(path, "a");
        if (f) { fprintf(f, "%s\n", buf); fclose(f); }
    }
    fprintf(stderr, "fake_zc: VIOLATION: %s\n", buf);
}

static void crash_like_xlio(void) {
    const char *no = getenv("FAKE_ZC_NOABORT");
    if (no && *no && strcmp(no, "0") != 0) return;
    fprintf(stderr, "fake_zc: aborting, as the real library would crash on this id\n");
    abort();
}

static long id_index(uint64_t id) {
    if (id < FAKE_ID_BASE || (id - FAKE_ID_BASE) % FAKE_ID_STRIDE) return -1;
    uint64_t k = (id - FAKE_ID_BASE) / FAKE_ID_STRIDE;
    return k < nids ? (long)k : -1;
}

static unsigned cur_gen(int fd) { return fd >= 0 && fd < FAKE_MAX_FD ? fdgen[fd] : 0; }

static void *guarded_pages(size_t data_pages, unsigned char **data);

/* `len` bytes of `src` in fresh memory that ends at a PROT_NONE page (unmap map, size). */
static unsigned char *guarded_copy(const void *src, size_t len, void **map, size_t *size) {
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = (len + (size_t)page - 1) / (size_t)page;
    unsigned char *start;
    *map = guarded_pages(pages ? pages : 1, &start);
    if (!*map) abort();
    *size = ((pages ? pages : 1) + 2) * (size_t)page;
    unsigned char *p = start + (pages ? pages : 1) * (size_t)page - len;
    if (len) memcpy(p, src, len);
    return p;
}

/* Hand a callback answer to the fd's registered callback, as XLIO does inside the
 * application's receive call.  iov and info live only during the call: they are unmapped
 * after it, so a pointer pyxlio kept to them crashes when used. */
static void run_callback(int s, answer_t *a) {
    fake_cb_t cb = s >= 0 && s < FAKE_MAX_FD ? cbs[s].cb : NULL;
    void *ctx = s >= 0 && s < FAKE_MAX_FD ? cbs[s].ctx : NULL;
    if (!cb) {
        pthread_mutex_lock(&mu);
        violation("test script error: callback answer %ld for fd %d, which has no callback",
                  a->seq, s);
        pthread_mutex_unlock(&mu);
        return;
    }
    void *imap = NULL, *fmap = NULL;
    size_t isize = 0, fsize = 0;
    unsigned char *iov = a->cb_iovs_null ? NULL
        : guarded_copy(a->cb_iovs, a->cb_iov_bytes, &imap, &isize);
    unsigned char *info = a->cb_info_null ? NULL
        : guarded_copy(a->cb_info, sizeof a->cb_info, &fmap, &fsize);
    int v = cb(s, a->cb_sz_iov, iov, info, ctx);
    if (imap) munmap(imap, isize);
    if (fmap) munmap(fmap, fsize);
    pthread_mutex_lock(&mu);
    a->verdict = v;
    if (v == 2) {                       /* HOLD: the application owns the packet now */
        for (size_t i = 0; i < a->nids; i++) {
            long k = id_index(a->ids[i]);
            if (k < 0 || ids[k].state != ID_NEW) continue;
            ids[k].state = ID_OUT;
            ids[k].fd = s;
            ids[k].gen = cur_gen(s);
            ids[k].seq = a->seq;
            ids[k].trust = TRUST_PENDING;
        }
    }
    pthread_mutex_unlock(&mu);
}

/* ---- the API members ------------------------------------------------------------------ */
static int f_recvfrom_zcopy(int s, void *buf, size_t len, int *flags, struct sockaddr *from,
                            socklen_t *fromlen) {
    pthread_mutex_lock(&mu);
    int fin = flags ? *flags : 0;
    if (!flags) violation("recvfrom_zcopy(fd=%d): flags is NULL (the real library dereferences it)", s);
    if (!buf) violation("recvfrom_zcopy(fd=%d): buf is NULL", s);
    answer_t *a = NULL, *prev = NULL;
    for (a = queue_head; a; prev = a, a = a->next)
        if (a->fd == s || a->fd == -1) break;
    if (a) {
        if (prev) prev->next = a->next; else queue_head = a->next;
        if (queue_tail == a) queue_tail = prev;
        a->next = NULL;
    }
    calls = grow(calls, &callcap, ncalls + 1, sizeof *calls);
    calls[ncalls++] = (call_rec_t){s, fin, len, a ? a->seq : -1, from == NULL, fromlen == NULL};
    if (!a) {
        pthread_mutex_unlock(&mu);
        errno = EAGAIN;
        return -1;
    }
    a->served = 1;
    a->served_fd = s;
    a->served_len = len;
    if (a->is_cb) {             /* the packet goes to the callback; nothing is returned */
        pthread_mutex_unlock(&mu);
        run_callback(s, a);
        if (flags) *flags = fin;
        errno = EAGAIN;
        return -1;
    }
    for (size_t i = 0; i < a->nids; i++) {
        long k = id_index(a->ids[i]);
        if (k < 0) continue;
        if (ids[k].state != ID_NEW) {
            violation("test script error: id %#llx served twice", (unsigned long long)a->ids[i]);
            continue;
        }
        ids[k].state = ID_OUT;
        ids[k].fd = s;
        ids[k].gen = cur_gen(s);
        ids[k].seq = a->seq;
        ids[k].trust = TRUST_PENDING;
    }
    int rc = a->rc, err = a->err;
    if (rc >= 0 && buf) {
        size_t n = a->len < len ? a->len : len;
        memcpy(buf, a->bytes, n);
        if (len > n) memset((unsigned char *)buf + n, filler, len - n);
        if (fromlen) {
            if (from) {
                size_t c = a->from_len < (size_t)*fromlen ? a->from_len : (size_t)*fromlen;
                memcpy(from, a->from, c);
            }
            *fromlen = a->fromlen_out;
        }
    }
    if (flags) *flags = a->flags_out;
    pthread_mutex_unlock(&mu);
    errno = rc < 0 ? err : 0;
    return rc;
}

static int f_free_packets(int s, void *pkts, size_t count) {
    int bad_fd = 0;
    if (count == 0) return 0;
    pthread_mutex_lock(&mu);
    free_calls++;
    if (!pkts) {
        violation("free_packets(fd=%d): NULL array with count %zu", s, count);
        pthread_mutex_unlock(&mu);
        crash_like_xlio();
        errno = EFAULT;
        return -1;
    }
    const unsigned char *q = pkts;
    for (size_t i = 0; i < count; i++, q += 16) {
        uint64_t id, sz;
        memcpy(&id, q, 8);
        memcpy(&sz, q + 8, 8);
        if (sz != 0)
            violation("free_packets(fd=%d): entry %zu has sz_iov %llu (only sz_iov = 0 entries "
                      "are walked alike for UDP and TCP)", s, i, (unsigned long long)sz);
        long k = id_index(id);
        if (k < 0) {
            violation("free_packets(fd=%d): bogus packet id %#llx (never handed out)", s,
                      (unsigned long long)id);
            pthread_mutex_unlock(&mu);
            crash_like_xlio();
            pthread_mutex_lock(&mu);
            continue;
        }
        id_rec_t *r = &ids[k];
        r->frees++;
        if (r->state == ID_NEW) {
            violation("free_packets(fd=%d): packet id %#llx was never served", s,
                      (unsigned long long)id);
        } else if (r->state == ID_FREED) {
            violation("free_packets(fd=%d): packet id %#llx (answer %ld) freed twice", s,
                      (unsigned long long)id, r->seq);
        } else if (r->trust == TRUST_NEVER) {
            violation("free_packets(fd=%d): packet id %#llx comes from answer %ld, which was "
                      "malformed or a copy: it must never be freed", s,
                      (unsigned long long)id, r->seq);
        } else if (r->fd != s) {
            violation("free_packets(fd=%d): packet id %#llx was received on fd %d", s,
                      (unsigned long long)id, r->fd);
            bad_fd = 1;
            continue;
        } else if (r->gen != cur_gen(s)) {
            violation("free_packets(fd=%d): packet id %#llx belongs to a socket that was "
                      "closed (the fd number was reused)", s, (unsigned long long)id);
            bad_fd = 1;
            continue;
        } else {
            r->state = ID_FREED;
            freed_ids++;
            continue;
        }
        pthread_mutex_unlock(&mu);
        crash_like_xlio();
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    if (bad_fd) { errno = ENOENT; return -1; }
    return 0;
}

/* 0 for any fd (NULL unregisters), unless registrations are refused (fake_zc_set_refuse):
 * then a registration is -1/EINVAL and the fd keeps no callback.  The callback is run for the
 * fd's callback answers. */
static int f_register_recv_callback(int s, void *cb, void *ctx) {
    if (s < 0 || s >= FAKE_MAX_FD) { errno = EINVAL; return -1; }
    pthread_mutex_lock(&mu);
    register_calls++;
    if (cb && refuse_register) {
        refused_registers++;
        pthread_mutex_unlock(&mu);
        errno = EINVAL;
        return -1;
    }
    cbs[s].cb = (fake_cb_t)cb;
    cbs[s].ctx = cb ? ctx : NULL;
    pthread_mutex_unlock(&mu);
    return 0;
}

static void *guarded_pages(size_t data_pages, unsigned char **data) {
    long page = sysconf(_SC_PAGESIZE);
    size_t size = (data_pages + 2) * (size_t)page;
    unsigned char *m = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    if (data_pages && mprotect(m + page, data_pages * (size_t)page, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, size);
        return NULL;
    }
    *data = m + page;
    return m;
}

static unsigned char *api_table(void) {
    static unsigned char *api;
    if (api) return api;
    unsigned char *data;
    long page = sysconf(_SC_PAGESIZE);
    if (!guarded_pages(1, &data)) abort();
    unsigned char *t = data + page - FAKE_API_SIZE;    /* ends at the trailing guard page */
    uint64_t magic = FAKE_MAGIC, caps = FAKE_CAPS;
    void *fn;
    memset(t, 0, FAKE_API_SIZE);
    memcpy(t, &magic, 8);
    memcpy(t + 8, &caps, 8);
    fn = (void *)f_recvfrom_zcopy; memcpy(t + 16, &fn, 8);
    fn = (void *)f_free_packets; memcpy(t + 24, &fn, 8);
    fn = (void *)f_register_recv_callback; memcpy(t + 80, &fn, 8);
    mprotect(data, (size_t)page, PROT_READ);
    api = t;
    return api;
}

/* ---- interposed libc calls --------------------------------------------------------------- */
EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
    static int (*real)(int, int, int, void *, socklen_t *);
    if (fd == -2 && level == SOL_SOCKET && name == FAKE_SO_GET_API) {
        if (!val || !len || *len < sizeof(void *)) { errno = EINVAL; return -1; }
        unsigned char *api = api_table();
        memcpy(val, &api, sizeof api);
        *len = sizeof api;
        return 0;
    }
    if (!real) real = (int (*)(int, int, int, void *, socklen_t *))dlsym(RTLD_NEXT, "getsockopt");
    return real(fd, level, name, val, len);
}

/* A closed fd's number may come back for a new socket: ids of the old one must not be freed
 * on the new one. */
EXPORT int close(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd < FAKE_MAX_FD) {
        __atomic_add_fetch(&fdgen[fd], 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&mu);
        cbs[fd].cb = NULL;              /* a closed socket's callback goes with it, */
        cbs[fd].ctx = NULL;
        answer_t *prev = NULL;          /* and so do the answers queued for it */
        for (answer_t *a = queue_head; a; ) {
            answer_t *next = a->next;
            if (a->fd == fd) {
                if (prev) prev->next = next; else queue_head = next;
                if (queue_tail == a) queue_tail = prev;
                a->next = NULL;
            } else {
                prev = a;
            }
            a = next;
        }
        pthread_mutex_unlock(&mu);
    }
    return real(fd);
}

/* ---- the test's controls (called through ctypes) ----------------------------------------- */
EXPORT uint64_t fake_zc_new_id(void) {
    pthread_mutex_lock(&mu);
    ids = grow(ids, &idcap, nids + 1, sizeof *ids);
    ids[nids] = (id_rec_t){ID_NEW, TRUST_PENDING, -1, 0, -1, 0};
    uint64_t id = FAKE_ID_BASE + (uint64_t)nids * FAKE_ID_STRIDE;
    nids++;
    pthread_mutex_unlock(&mu);
    return id;
}

/* Read-only copy of data[0..len) whose last byte is right before a PROT_NONE page. */
EXPORT void *fake_zc_payload(const void *data, size_t len) {
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = (len + (size_t)page - 1) / (size_t)page;
    unsigned char *start;
    void *m = guarded_pages(pages, &start);
    if (!m) return NULL;
    unsigned char *p = start + pages * (size_t)page - len;
    if (len) memcpy(p, data, len);
    if (pages) mprotect(start, pages * (size_t)page, PROT_READ);
    pthread_mutex_lock(&mu);
    maps = grow(maps, &mapcap, nmaps + 1, sizeof *maps);
    maps[nmaps++] = (mapping_t){m, (pages + 2) * (size_t)page};
    pthread_mutex_unlock(&mu);
    return p;
}

/* An address in a page nothing can read or write. */
EXPORT void *fake_zc_guard(void) {
    pthread_mutex_lock(&mu);
    if (!guard_page) {
        guard_page = mmap(NULL, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (guard_page == MAP_FAILED) abort();
    }
    pthread_mutex_unlock(&mu);
    return guard_page;
}

EXPORT void fake_zc_set_filler(int byte) { filler = byte & 0xff; }

/* 1: refuse every registration of a receive callback from now on (-1/EINVAL); 0: accept. */
EXPORT void fake_zc_set_refuse(int refuse) {
    pthread_mutex_lock(&mu);
    refuse_register = refuse != 0;
    pthread_mutex_unlock(&mu);
}

/* Whether fd has a receive callback registered (1) or not (0). */
EXPORT int fake_zc_registered(int fd) {
    pthread_mutex_lock(&mu);
    int r = fd >= 0 && fd < FAKE_MAX_FD && cbs[fd].cb != NULL;
    pthread_mutex_unlock(&mu);
    return r;
}

/* register_recv_callback calls so far (all, and those refused). */
EXPORT unsigned long fake_zc_register_calls(int refused) {
    pthread_mutex_lock(&mu);
    unsigned long n = refused ? refused_registers : register_calls;
    pthread_mutex_unlock(&mu);
    return n;
}

/* Queue an answer for fd (-1: any fd).  Returns its sequence number. */
EXPORT long fake_zc_push(int fd, const void *bytes, size_t len, int rc, int flags_out, int err,
                         const uint64_t *id_list, size_t id_count, const void *from,
                         size_t from_len, unsigned fromlen_out) {
    answer_t *a = calloc(1, sizeof *a);
    if (!a) abort();
    a->fd = fd;
    a->bytes = malloc(len ? len : 1);
    if (!a->bytes) abort();
    if (len) memcpy(a->bytes, bytes, len);
    a->len = len;
    a->rc = rc;
    a->flags_out = flags_out;
    a->err = err;
    if (id_count) {
        a->ids = malloc(id_count * sizeof *a->ids);
        if (!a->ids) abort();
        memcpy(a->ids, id_list, id_count * sizeof *a->ids);
    }
    a->nids = id_count;
    a->from_len = from_len < sizeof a->from ? from_len : sizeof a->from;
    if (a->from_len) memcpy(a->from, from, a->from_len);
    a->fromlen_out = fromlen_out;
    pthread_mutex_lock(&mu);
    answers = grow(answers, &anscap, nanswers + 1, sizeof *answers);
    a->seq = (long)nanswers;
    answers[nanswers++] = a;
    if (queue_tail) queue_tail->next = a; else queue_head = a;
    queue_tail = a;
    pthread_mutex_unlock(&mu);
    return a->seq;
}

/* Queue a receive-callback answer for fd: when recvfrom_zcopy(fd) takes it, the fd's
 * callback gets (fd, sz_iov, a copy of iovs or NULL, a copy of the 80-byte info or NULL);
 * recvfrom_zcopy then answers -1/EAGAIN.  ids: the packet's id (out on fd if the callback
 * says HOLD).  Returns the sequence number. */
EXPORT long fake_zc_push_cb(int fd, size_t sz_iov, const void *iovs, size_t iov_bytes,
                            int iovs_null, const void *info, size_t info_len, int info_null,
                            const uint64_t *id_list, size_t id_count) {
    long seq = fake_zc_push(fd, "", 0, -1, 0, EAGAIN, id_list, id_count, "", 0, 0);
    pthread_mutex_lock(&mu);
    answer_t *a = answers[seq];
    a->is_cb = 1;
    a->cb_sz_iov = sz_iov;
    a->cb_iovs = malloc(iov_bytes ? iov_bytes : 1);
    if (!a->cb_iovs) abort();
    if (iov_bytes) memcpy(a->cb_iovs, iovs, iov_bytes);
    a->cb_iov_bytes = iov_bytes;
    a->cb_iovs_null = iovs_null;
    memcpy(a->cb_info, info, info_len < sizeof a->cb_info ? info_len : sizeof a->cb_info);
    a->cb_info_null = info_null;
    a->verdict = -1;
    pthread_mutex_unlock(&mu);
    return seq;
}

/* What the callback answered for callback answer seq: 0 DROP, 1 RECV, 2 HOLD, -1 not run. */
EXPORT int fake_zc_cb_verdict(long seq) {
    pthread_mutex_lock(&mu);
    int v = seq >= 0 && (size_t)seq < nanswers && answers[seq]->is_cb ? answers[seq]->verdict : -1;
    pthread_mutex_unlock(&mu);
    return v;
}

/* Answers still queued for fd (those for any fd included). */
EXPORT long fake_zc_pending(int fd) {
    long n = 0;
    pthread_mutex_lock(&mu);
    for (answer_t *a = queue_head; a; a = a->next)
        if (a->fd == fd || a->fd == -1 || fd == -1) n++;
    pthread_mutex_unlock(&mu);
    return n;
}

/* Drop every queued answer (their ids stay unserved). */
EXPORT void fake_zc_clear_queue(void) {
    pthread_mutex_lock(&mu);
    queue_head = queue_tail = NULL;
    pthread_mutex_unlock(&mu);
}

/* The test's verdict on a served answer: 1 well-formed (free each id once), 0 never free.
 * An id already freed by the time its answer is judged malformed is a violation. */
EXPORT int fake_zc_judge(long seq, int trust) {
    pthread_mutex_lock(&mu);
    if (seq < 0 || (size_t)seq >= nanswers || !answers[seq]->served) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    answer_t *a = answers[seq];
    for (size_t i = 0; i < a->nids; i++) {
        long k = id_index(a->ids[i]);
        if (k < 0 || ids[k].seq != seq) continue;
        ids[k].trust = (signed char)trust;
        if (trust == TRUST_NEVER && ids[k].frees)
            violation("packet id %#llx of answer %ld was freed, and that answer is malformed "
                      "(or a copy): its ids must never be freed", (unsigned long long)a->ids[i], seq);
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

/* State of an id: 0 new, 1 out, 2 freed, -1 unknown; *fd, *frees filled when not NULL. */
EXPORT int fake_zc_id_state(uint64_t id, int *fd, unsigned *frees) {
    pthread_mutex_lock(&mu);
    long k = id_index(id);
    int st = k < 0 ? -1 : ids[k].state;
    if (k >= 0 && fd) *fd = ids[k].fd;
    if (k >= 0 && frees) *frees = ids[k].frees;
    pthread_mutex_unlock(&mu);
    return st;
}

/* Ids out on fd's current socket from well-formed answers (or not judged yet). */
EXPORT long fake_zc_outstanding(int fd) {
    long n = 0;
    pthread_mutex_lock(&mu);
    for (size_t k = 0; k < nids; k++)
        if (ids[k].state == ID_OUT && ids[k].fd == fd && ids[k].gen == cur_gen(fd) &&
            ids[k].trust != TRUST_NEVER)
            n++;
    pthread_mutex_unlock(&mu);
    return n;
}

EXPORT size_t fake_zc_calls(void) {
    pthread_mutex_lock(&mu);
    size_t n = ncalls;
    pthread_mutex_unlock(&mu);
    return n;
}

/* Call i of recvfrom_zcopy: 0, or -1 when there is no such call. */
EXPORT int fake_zc_call(size_t i, int *fd, int *flags_in, size_t *len, long *seq, int *from_null) {
    pthread_mutex_lock(&mu);
    if (i >= ncalls) { pthread_mutex_unlock(&mu); return -1; }
    *fd = calls[i].fd;
    *flags_in = calls[i].flags_in;
    *len = calls[i].len;
    *seq = calls[i].seq;
    *from_null = calls[i].from_null || calls[i].fromlen_null;
    pthread_mutex_unlock(&mu);
    return 0;
}

EXPORT unsigned long fake_zc_free_calls(void) { return __atomic_load_n(&free_calls, __ATOMIC_RELAXED); }
EXPORT unsigned long fake_zc_freed_ids(void) { return __atomic_load_n(&freed_ids, __ATOMIC_RELAXED); }

EXPORT size_t fake_zc_violations(void) {
    pthread_mutex_lock(&mu);
    size_t n = nviolations + lost_violations;
    pthread_mutex_unlock(&mu);
    return n;
}

EXPORT const char *fake_zc_violation(size_t i) {
    pthread_mutex_lock(&mu);
    const char *v = i < nviolations ? violations[i] : NULL;
    pthread_mutex_unlock(&mu);
    return v;
}

/* End of a scenario (every socket closed): ids of well-formed answers still out are leaks
 * (violations).  Queued answers are dropped, payload memory is unmapped (a pointer pyxlio
 * kept to it would now crash), the call log is cleared, registrations are accepted again.
 * Ids and sequence numbers are never reused.  Returns the number of leaked ids. */
EXPORT long fake_zc_reset(void) {
    long leaks = 0;
    pthread_mutex_lock(&mu);
    for (size_t k = 0; k < nids; k++) {
        if (ids[k].state == ID_OUT && ids[k].trust != TRUST_NEVER) {
            violation("packet id %#llx of answer %ld (fd %d) was never freed",
                      (unsigned long long)(FAKE_ID_BASE + k * FAKE_ID_STRIDE), ids[k].seq,
                      ids[k].fd);
            ids[k].trust = TRUST_NEVER;     /* reported once */
            leaks++;
        }
    }
    queue_head = queue_tail = NULL;
    for (size_t i = 0; i < nanswers; i++) {
        if (!answers[i] || !answers[i]->bytes) continue;
        free(answers[i]->bytes);
        answers[i]->bytes = NULL;
        free(answers[i]->ids);
        answers[i]->ids = NULL;
        free(answers[i]->cb_iovs);
        answers[i]->cb_iovs = NULL;
        answers[i]->nids = 0;
    }
    for (size_t i = 0; i < nmaps; i++) munmap(maps[i].map, maps[i].size);
    nmaps = 0;
    ncalls = 0;
    refuse_register = 0;
    pthread_mutex_unlock(&mu);
    return leaks;
}
