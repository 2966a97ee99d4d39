/*
 * pxbench: C references for pyxlio's benchmarks that refloop.c does not cover.
 *
 *   pxbench pp-server --port P [--bind ADDR] [--cpu C] [--seconds S]
 *       A busy-polling UDP ping-pong server speaking sockperf's header (u64 sequence, u16 flags,
 *       u32 length, network order): a message with CLIENT|PONG and not WARMUP goes back with
 *       flags = PONG.  Runs S seconds (default 30), then prints {"server_replies":N}.
 *
 *   pxbench pp-client --dest ADDR:P [--size S] [--seconds T] [--warmup W] [--cooldown D]
 *                     [--cpu C]
 *       A busy-polling ping-pong client (non-blocking recv spun until the reply comes, as
 *       `python -m pyxlio.perf ping-pong --busy-poll` does).  Messages sent in the first W
 *       seconds (default 0.4) and the last D seconds (default 0.05) are trimmed, as sockperf
 *       does.  Prints one JSON line: half round trips in microseconds (count, avg, min, max,
 *       median, p25 .. p99.999).
 *
 *   pxbench cb --port P --count N [--every K] [--bind ADDR] [--cpu C] [--drain]
 *       The receive-callback path in C (needs XLIO or pyxlio's emulator, e.g. its in-memory
 *       feed): a callback counting each datagram and returning DROP, except every Kth datagram
 *       (default 64; 0 = never) which it returns RECV; the loop calls recvfrom_zcopy and frees
 *       what it returns.  --drain: wait until a sender has filled the socket buffer, then time
 *       the non-blocking receive calls that empty it through the callback.
 *       Prints {"mode":"cb","packets":N,"ns_per_packet":..} (per callback call).
 *
 *   pxbench mmsg --port P --count N [--batch B] [--touch] [--names] [--slot BYTES]
 *                [--bind ADDR] [--cpu C] [--drain]
 *       recvmmsg(B) (default 64) into B slots of BYTES (default 2048) reading counts and
 *       lengths; --touch also reads the first byte of every datagram (what a memoryview per
 *       datagram lets Python do); --names asks the source address of each datagram (msg_name,
 *       as pyxlio's kernel path does); --drain as refloop's: wait until the sender has filled
 *       the socket buffer, then time emptying it.  Prints refloop's JSON shape.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pyxlio/xlio_abi.h"

#define BENCH_PROG "pxbench"
#include "benchutil.h"

enum { F_CLIENT = 1, F_PONG = 2, F_WARMUP = 4, HDR = 14 };

static void usage(void) {
    fprintf(stderr,
            "usage: pxbench pp-server --port P [--bind ADDR] [--cpu C] [--seconds S]\n"
            "       pxbench pp-client --dest ADDR:P [--size S] [--seconds T] [--warmup W]"
            " [--cooldown D] [--cpu C]\n"
            "       pxbench cb --port P --count N [--every K] [--bind ADDR] [--cpu C]\n"
            "       pxbench mmsg --port P --count N [--batch B] [--touch] [--names] [--slot BYTES]"
            " [--bind ADDR] [--cpu C] [--drain]\n");
    exit(2);
}

static double fnum(const char *s, const char *what, double min, double max) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "pxbench: bad %s '%s' (%g..%g)\n", what, s, min, max);
        exit(2);
    }
    return v;
}

static void parse_addr(const char *s, long port, struct sockaddr_in *a) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, s, &a->sin_addr) != 1) {
        errno = 0;
        die("bad IPv4 address");
    }
}

static void parse_dest(const char *dest, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(dest, ':');
    if (!colon || (size_t)(colon - dest) >= sizeof host) {
        errno = 0;
        die("--dest must be ADDR:PORT");
    }
    memcpy(host, dest, (size_t)(colon - dest));
    host[colon - dest] = 0;
    parse_addr(host, num(colon + 1, "port", 1, 65535), a);
}

static int udp_bound(const char *bind_s, long port, int rcvbuf) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a;
    parse_addr(bind_s, port, &a);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    return fd;
}

/* Wait for data, then until the queued memory stops growing (the sender is done). */
static void wait_filled(int fd) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 10000) <= 0) { errno = 0; die("--drain: no data"); }
    uint32_t mem[SK_MEMINFO_VARS], last = UINT32_MAX;
    for (int stable = 0; stable < 3;) {
        socklen_t ml = sizeof mem;
        if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &ml) != 0) die("SO_MEMINFO");
        stable = mem[SK_MEMINFO_RMEM_ALLOC] == last ? stable + 1 : 0;
        last = mem[SK_MEMINFO_RMEM_ALLOC];
        usleep(50000);
    }
}

/* ---- ping-pong server -------------------------------------------------------------------- */
static int pp_server(int argc, char **argv) {
    const char *bind_s = "127.0.0.1";
    long port = -1, cpu = -1;
    double seconds = 30;
    for (int i = 0; i < argc; i++) {
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--port")) port = num(argv[++i], "port", 1, 65535);
        else if (!strcmp(argv[i], "--bind")) bind_s = argv[++i];
        else if (!strcmp(argv[i], "--cpu")) cpu = num(argv[++i], "cpu", 0, 4095);
        else if (!strcmp(argv[i], "--seconds")) seconds = fnum(argv[++i], "seconds", 0.1, 3600);
        else usage();
    }
    if (port < 0) usage();
    pin(cpu);
    int fd = udp_bound(bind_s, port, 0);
    printf("{\"ready\":true}\n");
    fflush(stdout);
    static unsigned char buf[65536];
    int64_t end = now_ns() + (int64_t)(seconds * 1e9);
    long replies = 0;
    unsigned spins = 0;
    for (;;) {
        struct sockaddr_in peer;
        socklen_t pl = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&peer, &pl);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) die("recvfrom");
            if ((++spins & 0xfff) == 0 && now_ns() > end) break;
            continue;
        }
        if (n < HDR) continue;
        uint16_t fl = (uint16_t)(buf[8] << 8 | buf[9]);
        if ((fl & (F_CLIENT | F_PONG)) != (F_CLIENT | F_PONG) || (fl & F_WARMUP)) continue;
        buf[8] = 0;
        buf[9] = F_PONG;
        if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, pl) < 0 && errno != ECONNREFUSED)
            die("sendto");
        replies++;
    }
    printf("{\"server_replies\":%ld}\n", replies);
    close(fd);
    return 0;
}

/* ---- ping-pong client -------------------------------------------------------------------- */
static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(const int64_t *v, size_t n, double p) {
    /* nearest rank, as sockperf reports percentiles */
    size_t k = (size_t)((p / 100.0) * (double)n + 0.5);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return (double)v[k - 1] / 2000.0; /* half round trip, us */
}

static int pp_client(int argc, char **argv) {
    const char *dest = NULL;
    long size = 64, cpu = -1;
    double seconds = 1, warmup = 0.4, cooldown = 0.05;
    for (int i = 0; i < argc; i++) {
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--dest")) dest = argv[++i];
        else if (!strcmp(argv[i], "--size")) size = num(argv[++i], "size", HDR, 65507);
        else if (!strcmp(argv[i], "--seconds")) seconds = fnum(argv[++i], "seconds", 0.01, 3600);
        else if (!strcmp(argv[i], "--warmup")) warmup = fnum(argv[++i], "warmup", 0, 60);
        else if (!strcmp(argv[i], "--cooldown")) cooldown = fnum(argv[++i], "cooldown", 0, 60);
        else if (!strcmp(argv[i], "--cpu")) cpu = num(argv[++i], "cpu", 0, 4095);
        else usage();
    }
    if (!dest) usage();
    pin(cpu);
    struct sockaddr_in a;
    parse_dest(dest, &a);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
    static unsigned char msg[65536], in[65536];
    uint32_t lenbe = htonl((uint32_t)size);
    memcpy(msg + 10, &lenbe, 4);
    msg[8] = 0;
    msg[9] = F_CLIENT | F_PONG;
    size_t cap = 1 << 20, n = 0;
    int64_t *rtt = malloc(cap * sizeof *rtt);
    if (!rtt) die("malloc");
    int64_t t0 = now_ns();
    int64_t m0 = t0 + (int64_t)(warmup * 1e9), m1 = m0 + (int64_t)(seconds * 1e9);
    int64_t end = m1 + (int64_t)(cooldown * 1e9);
    uint64_t seq = 0;
    long lost = 0, sent = 0;
    for (;;) {
        int64_t ts = now_ns();
        if (ts >= end) break;
        uint64_t be = __builtin_bswap64(seq);
        memcpy(msg, &be, 8);
        if (send(fd, msg, (size_t)size, 0) < 0) {
            if (errno == ECONNREFUSED) continue;
            die("send");
        }
        sent++;
        int64_t tr;
        for (;;) {
            ssize_t r = recv(fd, in, sizeof in, MSG_DONTWAIT);
            tr = now_ns();
            if (r >= HDR) {
                uint64_t s;
                memcpy(&s, in, 8);
                if (__builtin_bswap64(s) == seq) break;
                continue; /* a late reply to an earlier message */
            }
            if (r < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED) die("recv");
            if (tr - ts > 1000000000) { tr = -1; break; } /* 1 s: count it lost */
        }
        seq++;
        if (tr < 0) { lost++; continue; }
        if (ts >= m0 && ts < m1) {
            if (n == cap) {
                cap *= 2;
                rtt = realloc(rtt, cap * sizeof *rtt);
                if (!rtt) die("realloc");
            }
            rtt[n++] = tr - ts;
        }
    }
    if (!n) { errno = 0; die("no reply measured"); }
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)rtt[i];
    qsort(rtt, n, sizeof *rtt, cmp_i64);
    printf("{\"tool\":\"pxbench pp-client\",\"msg_size\":%ld,\"count\":%zu,\"sent\":%ld,\"lost\":%ld,"
           "\"latency_unit\":\"usec (half round trip)\",\"avg\":%.4f,\"min\":%.4f,\"max\":%.4f,"
           "\"percentiles\":{\"25\":%.4f,\"50\":%.4f,\"75\":%.4f,\"90\":%.4f,\"99\":%.4f,"
           "\"99.9\":%.4f,\"99.99\":%.4f,\"99.999\":%.4f}}\n",
           size, n, sent, lost, sum / (double)n / 2000.0, (double)rtt[0] / 2000.0,
           (double)rtt[n - 1] / 2000.0, pct(rtt, n, 25), pct(rtt, n, 50), pct(rtt, n, 75),
           pct(rtt, n, 90), pct(rtt, n, 99), pct(rtt, n, 99.9), pct(rtt, n, 99.99),
           pct(rtt, n, 99.999));
    free(rtt);
    close(fd);
    return 0;
}

/* ---- receive callback -------------------------------------------------------------------- */
struct cb_state {
    unsigned long calls, every;
};

static pyxlio_verdict_t count_cb(int fd, size_t sz_iov, struct iovec iov[], pyxlio_recv_info_t *info,
                                 void *context) {
    (void)fd;
    (void)info;
    struct cb_state *st = context;
    volatile unsigned char first = sz_iov && iov[0].iov_len ? *(unsigned char *)iov[0].iov_base : 0;
    (void)first;
    ++st->calls;
    return st->every && st->calls % st->every == 0 ? PYXLIO_PACKET_RECV : PYXLIO_PACKET_DROP;
}

static pyxlio_api_legacy_t *legacy_api(void) {
    void *p = NULL;
    socklen_t l = sizeof p;
    uint64_t magic = 0, cap = 0;
    if (getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &p, &l) == 0 && p) {
        memcpy(&magic, p, 8);
        memcpy(&cap, (char *)p + 8, 8);
    }
    errno = 0;
    if (magic != PYXLIO_XLIO_MAGIC) die("no XLIO Extra API (run under libxlio or pyxlio's emulator)");
    if (pyxlio_layout_from_caps(cap) != PYXLIO_LAYOUT_LEGACY) die("this XLIO has no recvfrom_zcopy");
    return p;
}

static int do_cb(int argc, char **argv) {
    const char *bind_s = "127.0.0.1";
    long port = -1, count = -1, every = 64, cpu = -1;
    int drain = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--drain")) { drain = 1; continue; }
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--port")) port = num(argv[++i], "port", 1, 65535);
        else if (!strcmp(argv[i], "--count")) count = num(argv[++i], "count", 1, 1L << 40);
        else if (!strcmp(argv[i], "--every")) every = num(argv[++i], "every", 0, 1 << 20);
        else if (!strcmp(argv[i], "--bind")) bind_s = argv[++i];
        else if (!strcmp(argv[i], "--cpu")) cpu = num(argv[++i], "cpu", 0, 4095);
        else usage();
    }
    if (port < 0 || count < 0) usage();
    pin(cpu);
    pyxlio_api_legacy_t *api = legacy_api();
    int fd = udp_bound(bind_s, port, drain ? 1 << 30 : 0);
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct cb_state st = {0, (unsigned long)every};
    printf("{\"ready\":true}\n");
    fflush(stdout);
    /* poll() on a socket whose callback drops everything never says readable: wait first */
    if (drain) wait_filled(fd);
    if (api->register_recv_callback(fd, count_cb, &st) != 0) die("register_recv_callback");
    static unsigned char zb[4096];
    int64_t t0 = now_ns();
    while (st.calls < (unsigned long)count) {
        int flags = drain ? MSG_DONTWAIT : 0;
        int n = api->recvfrom_zcopy(fd, zb, sizeof zb, &flags, NULL, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN && (drain || st.calls)) break; /* drained / the sender is done */
            die("recvfrom_zcopy");
        }
        if ((flags & PYXLIO_MSG_XLIO_ZCOPY) &&
            api->recvfrom_zcopy_free_packets(fd, (pyxlio_zc_packet_t *)(void *)(zb + 8), 1) != 0)
            die("free_packets");
    }
    int64_t dt = now_ns() - t0;
    api->register_recv_callback(fd, NULL, NULL);
    printf("{\"mode\":\"cb\",\"packets\":%lu,\"every\":%ld,\"seconds\":%.6f,\"ns_per_packet\":%.2f,"
           "\"complete\":%s}\n",
           st.calls, every, (double)dt / 1e9, st.calls ? (double)dt / (double)st.calls : 0.0,
           st.calls >= (unsigned long)count ? "true" : "false");
    close(fd);
    return st.calls ? 0 : 1;
}

/* ---- recvmmsg touching each datagram ------------------------------------------------------ */
static int mmsg(int argc, char **argv) {
    const char *bind_s = "127.0.0.1";
    long port = -1, count = -1, batch = 64, cpu = -1, slot = 2048;
    int drain = 0, touch = 0, names = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--drain")) { drain = 1; continue; }
        if (!strcmp(argv[i], "--touch")) { touch = 1; continue; }
        if (!strcmp(argv[i], "--names")) { names = 1; continue; }
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--port")) port = num(argv[++i], "port", 1, 65535);
        else if (!strcmp(argv[i], "--count")) count = num(argv[++i], "count", 1, 1L << 40);
        else if (!strcmp(argv[i], "--batch")) batch = num(argv[++i], "batch", 1, 1024);
        else if (!strcmp(argv[i], "--slot")) slot = num(argv[++i], "slot", 64, 1 << 20);
        else if (!strcmp(argv[i], "--bind")) bind_s = argv[++i];
        else if (!strcmp(argv[i], "--cpu")) cpu = num(argv[++i], "cpu", 0, 4095);
        else usage();
    }
    if (port < 0 || count < 0) usage();
    pin(cpu);
    int fd = udp_bound(bind_s, port, drain ? 1 << 30 : 32 << 20);
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    printf("{\"ready\":true}\n");
    fflush(stdout);
    if (drain) wait_filled(fd);
    unsigned char *bufs = malloc((size_t)batch * (size_t)slot);
    struct mmsghdr *mm = calloc((size_t)batch, sizeof *mm);
    struct iovec *iv = calloc((size_t)batch, sizeof *iv);
    struct sockaddr_in6 *addrs = calloc((size_t)batch, sizeof *addrs);
    if (!bufs || !mm || !iv || !addrs) die("malloc");
    for (long i = 0; i < batch; i++) {
        iv[i].iov_base = bufs + i * slot;
        iv[i].iov_len = (size_t)slot;
        mm[i].msg_hdr.msg_iov = &iv[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    long packets = 0;
    unsigned long long bytes = 0, sum = 0;
    int64_t t0 = now_ns(), tlast = t0;
    int started = drain;
    while (packets < count) {
        unsigned want = (unsigned)batch;
        if ((long)want > count - packets) want = (unsigned)(count - packets);
        if (names)
            for (unsigned i = 0; i < want; i++) {
                mm[i].msg_hdr.msg_name = &addrs[i];
                mm[i].msg_hdr.msg_namelen = sizeof addrs[i];
            }
        int n = recvmmsg(fd, mm, want, drain ? MSG_DONTWAIT : MSG_WAITFORONE, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR) die("recvmmsg");
            if (drain && packets) break;
            if (packets && now_ns() - tlast > 1000000000) break;
            continue;
        }
        if (!started) { t0 = now_ns(); started = 1; }
        for (int i = 0; i < n; i++) {
            bytes += mm[i].msg_len;
            if (touch) sum += bufs[(size_t)i * (size_t)slot]; /* as a Python view's reader */
        }
        packets += n;
        tlast = now_ns();
    }
    double secs = (double)(tlast - t0) / 1e9;
    printf("{\"mode\":\"mmsg\",\"touch\":%s,\"names\":%s,\"slot\":%ld,\"packets\":%ld,"
           "\"bytes\":%llu,\"seconds\":%.6f,\"ns_per_packet\":%.2f,\"checksum\":%llu,"
           "\"complete\":%s}\n",
           touch ? "true" : "false", names ? "true" : "false", slot, packets, bytes, secs,
           packets ? secs * 1e9 / (double)packets : 0.0, sum, packets >= count ? "true" : "false");
    free(bufs); free(mm); free(iv); free(addrs);
    close(fd);
    return packets ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (!strcmp(argv[1], "pp-server")) return pp_server(argc - 2, argv + 2);
    if (!strcmp(argv[1], "pp-client")) return pp_client(argc - 2, argv + 2);
    if (!strcmp(argv[1], "cb")) return do_cb(argc - 2, argv + 2);
    if (!strcmp(argv[1], "mmsg")) return mmsg(argc - 2, argv + 2);
    usage();
    return 2;
}
