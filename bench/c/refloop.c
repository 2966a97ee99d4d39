/*
 * refloop: pyxlio's C reference loops for benchmarks.
 *
 *   refloop recv --mode {recvfrom,recvmmsg,zcopy,zcopy-free-batch} --port P --count N
 *                [--batch B] [--bind 127.0.0.1] [--cpu C] [--timeout S] [--drain]
 *   refloop send --dest 127.0.0.1:P --count N --size S [--gso 64] [--rate PPS] [--cpu C]
 *
 * recv prints one JSON line {"mode":..,"packets":N,"bytes":..,"seconds":..,"ns_per_packet":..}
 * timed from the first datagram to the last (it stops after N datagrams, or when no datagram
 * came for a second; "complete" says which).  zcopy modes use the XLIO Extra API found with
 * getsockopt(-2, SOL_SOCKET, 2800) (a real libxlio or pyxlio's emulator): recvfrom_zcopy and
 * one free per packet, or B receives then one free of B.  With the emulator's in-memory feed
 * (PYXLIO_EMU_FEED=P:SIZE) no sender is needed.  send prints {"sent":N,"seconds":..}.
 *
 * --drain measures the receive loop alone: the receiver (with a large SO_RCVBUFFORCE) waits
 * until the sender has filled its socket buffer and stopped, then times draining it, so that
 * sender and receiver never compete for a CPU.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <linux/sock_diag.h>
#include <netinet/udp.h>
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

#define BENCH_PROG "refloop"
#include "benchutil.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

static void usage(void) {
    fprintf(stderr,
            "usage: refloop recv --mode {recvfrom,recvmmsg,zcopy,zcopy-free-batch} --port P --count N\n"
            "                    [--batch B] [--bind ADDR] [--cpu C] [--timeout S] [--drain]\n"
            "       refloop send --dest ADDR:P --count N --size S [--gso K] [--rate PPS] [--cpu C]\n");
    exit(2);
}

/* ---- receive ---------------------------------------------------------------------------- */
enum { M_RECVFROM, M_RECVMMSG, M_ZCOPY, M_ZCOPY_BATCH };

static int do_recv(int argc, char **argv) {
    const char *mode_s = NULL, *bind_s = "127.0.0.1";
    long port = -1, count = -1, batch = 32, cpu = -1, timeout = 10;
    int drain = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--drain")) { drain = 1; continue; }
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--mode")) mode_s = argv[++i];
        else if (!strcmp(argv[i], "--port")) port = num(argv[++i], "port", 0, 65535);
        else if (!strcmp(argv[i], "--count")) count = num(argv[++i], "count", 1, 1L << 40);
        else if (!strcmp(argv[i], "--batch")) batch = num(argv[++i], "batch", 1, 1024);
        else if (!strcmp(argv[i], "--bind")) bind_s = argv[++i];
        else if (!strcmp(argv[i], "--cpu")) cpu = num(argv[++i], "cpu", 0, 4095);
        else if (!strcmp(argv[i], "--timeout")) timeout = num(argv[++i], "timeout", 1, 3600);
        else usage();
    }
    if (!mode_s || port < 0 || count < 0) usage();
    int mode;
    if (!strcmp(mode_s, "recvfrom")) mode = M_RECVFROM;
    else if (!strcmp(mode_s, "recvmmsg")) mode = M_RECVMMSG;
    else if (!strcmp(mode_s, "zcopy")) mode = M_ZCOPY;
    else if (!strcmp(mode_s, "zcopy-free-batch")) mode = M_ZCOPY_BATCH;
    else usage();
    pin((int)cpu);

    pyxlio_api_legacy_t *api = NULL;
    if (mode == M_ZCOPY || mode == M_ZCOPY_BATCH) {
        void *p = NULL;
        socklen_t l = sizeof p;
        uint64_t magic = 0, cap = 0;
        if (getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &p, &l) == 0 && p) {
            memcpy(&magic, p, 8);
            memcpy(&cap, (char *)p + 8, 8);
        }
        errno = 0;
        if (magic != PYXLIO_XLIO_MAGIC) die("no XLIO Extra API (run under libxlio or pyxlio's emulator)");
        if (pyxlio_layout_from_caps(cap) != PYXLIO_LAYOUT_LEGACY) die("this XLIO has no recvfrom_zcopy (3.60+ layout)");
        api = p;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    int sz = drain ? 1 << 30 : 32 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, bind_s, &a.sin_addr) != 1) { errno = 0; die("bad --bind address"); }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    printf("{\"ready\":true}\n");
    fflush(stdout);
    if (drain) {
        /* wait for data, then until the queued memory stops growing (the sender is done) */
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)timeout * 1000) <= 0) { errno = 0; die("--drain: no data"); }
        uint32_t mem[SK_MEMINFO_VARS], last = UINT32_MAX;
        for (int stable = 0; stable < 3;) {
            socklen_t ml = sizeof mem;
            if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &ml) != 0) die("SO_MEMINFO");
            stable = mem[SK_MEMINFO_RMEM_ALLOC] == last ? stable + 1 : 0;
            last = mem[SK_MEMINFO_RMEM_ALLOC];
            usleep(50000);
        }
    }
    int dflag = drain ? MSG_DONTWAIT : 0;

    enum { MAXB = 1024, DG = 65536 };
    static unsigned char data[DG];
    static unsigned char mbuf[64][2048];
    static struct mmsghdr mm[64];
    static struct iovec mi[64];
    static unsigned char zbuf[MAXB][64];   /* recvfrom_zcopy areas (1 fragment each) */
    static unsigned char frees[MAXB * 16]; /* free list entries, sz_iov = 0 */
    unsigned vlen = (unsigned)(batch > 64 ? 64 : batch);
    for (unsigned i = 0; i < 64; i++) {
        mi[i].iov_base = mbuf[i];
        mi[i].iov_len = sizeof mbuf[i];
        mm[i].msg_hdr.msg_iov = &mi[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    long packets = 0, zc = 0, at_last = 0;
    unsigned long long bytes = 0;
    double tlast = 0, started = now_s(), t0 = drain ? started : 0;
    int pending = 0;
    while (packets < count) {
        long got = 0;
        if (mode == M_RECVFROM) {
            ssize_t n = recvfrom(fd, data, sizeof data, dflag, NULL, NULL);
            if (n >= 0) { got = 1; bytes += (unsigned long long)n; }
        } else if (mode == M_RECVMMSG) {
            unsigned want = vlen;
            if ((long)want > count - packets) want = (unsigned)(count - packets);
            int n = recvmmsg(fd, mm, want, dflag, NULL);
            for (int i = 0; i < n; i++) bytes += mm[i].msg_len;
            if (n > 0) got = n;
        } else {
            unsigned char *zb = zbuf[pending];
            int flags = dflag;
            int n = api->recvfrom_zcopy(fd, zb, sizeof zbuf[0], &flags, NULL, NULL);
            if (n >= 0) {
                got = 1;
                bytes += (unsigned long long)n;
                if (flags & PYXLIO_MSG_XLIO_ZCOPY) {
                    zc++;
                    if (mode == M_ZCOPY) {
                        if (api->recvfrom_zcopy_free_packets(fd, (pyxlio_zc_packet_t *)(void *)(zb + 8), 1) != 0)
                            die("free_packets");
                    } else {
                        memcpy(frees + 16 * pending, zb + 8, 8);
                        memset(frees + 16 * pending + 8, 0, 8);
                        if (++pending == batch || packets + 1 == count) {
                            if (api->recvfrom_zcopy_free_packets(fd, (pyxlio_zc_packet_t *)(void *)frees, (size_t)pending) != 0)
                                die("free_packets");
                            pending = 0;
                        }
                    }
                }
            }
        }
        if (got) {
            if (!packets && !drain) t0 = now_s();
            packets += got;
            if ((packets & 1023) < got || packets >= count) { tlast = now_s(); at_last = packets; }
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) die("receive");
        if (drain && packets) { tlast = now_s(); at_last = packets; break; } /* drained */
        double t = now_s();
        if (packets && t - tlast > 1.0) break;        /* the sender is done: some were lost */
        if (!packets && t - started > (double)timeout) break;
    }
    if (pending && api) api->recvfrom_zcopy_free_packets(fd, (pyxlio_zc_packet_t *)(void *)frees, (size_t)pending);
    double secs = at_last > 1 ? tlast - t0 : 0;
    long intervals = drain ? at_last : at_last - 1;
    printf("{\"mode\":\"%s\",\"packets\":%ld,\"bytes\":%llu,\"seconds\":%.6f,\"ns_per_packet\":%.2f,"
           "\"zcopy_packets\":%ld,\"complete\":%s}\n",
           mode_s, packets, bytes, secs, at_last > 1 ? secs * 1e9 / (double)intervals : 0.0, zc,
           packets >= count ? "true" : "false");
    close(fd);
    return packets ? 0 : 1;
}

/* ---- send ------------------------------------------------------------------------------- */
static int do_send(int argc, char **argv) {
    const char *dest = NULL;
    long count = -1, size = -1, gso = 0, rate = 0, cpu = -1;
    for (int i = 0; i < argc; i++) {
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--dest")) dest = argv[++i];
        else if (!strcmp(argv[i], "--count")) count = num(argv[++i], "count", 1, 1L << 40);
        else if (!strcmp(argv[i], "--size")) size = num(argv[++i], "size", 1, 65507);
        else if (!strcmp(argv[i], "--gso")) gso = num(argv[++i], "gso", 0, 64);
        else if (!strcmp(argv[i], "--rate")) rate = num(argv[++i], "rate", 0, 1L << 32);
        else if (!strcmp(argv[i], "--cpu")) cpu = num(argv[++i], "cpu", 0, 4095);
        else usage();
    }
    if (!dest || count < 0 || size < 0) usage();
    if (gso > 1 && size * gso > 65507) { errno = 0; die("--size x --gso above 65507"); }
    pin((int)cpu);
    char host[64];
    const char *colon = strrchr(dest, ':');
    if (!colon || (size_t)(colon - dest) >= sizeof host) { errno = 0; die("--dest must be ADDR:PORT"); }
    memcpy(host, dest, (size_t)(colon - dest));
    host[colon - dest] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)num(colon + 1, "port", 1, 65535))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { errno = 0; die("bad --dest address"); }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
    int one_seg = (int)size;
    if (gso > 1 && setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &one_seg, sizeof one_seg) != 0) die("UDP_SEGMENT");
    static unsigned char buf[65536];
    long per = gso > 1 ? gso : 1, sent = 0;
    double t0 = now_s();
    while (sent < count) {
        long k = per;
        if (k > count - sent) k = count - sent;
        /* sockperf-like header in each datagram: u64 sequence, u16 flags, u32 length */
        for (long j = 0; j < k; j++) {
            unsigned char *d = buf + j * size;
            uint64_t seq = __builtin_bswap64((uint64_t)(sent + j));
            if (size >= 8) memcpy(d, &seq, 8);
        }
        ssize_t n = send(fd, buf, (size_t)(k * size), 0);
        if (n < 0) {
            if (errno == ENOBUFS || errno == EAGAIN) continue;
            if (errno == ECONNREFUSED) { sent += k; continue; } /* an earlier datagram's ICMP */
            die("send");
        }
        sent += k;
        if (rate > 0) {
            double due = t0 + (double)sent / (double)rate;
            while (now_s() < due) {
            }
        }
    }
    double secs = now_s() - t0;
    printf("{\"sent\":%ld,\"seconds\":%.6f}\n", sent, secs);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (!strcmp(argv[1], "recv")) return do_recv(argc - 2, argv + 2);
    if (!strcmp(argv[1], "send")) return do_send(argc - 2, argv + 2);
    usage();
    return 2;
}
