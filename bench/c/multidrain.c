/* multidrain: the C reference for pyxlio.Poller.  NSOCK UDP sockets on loopback, each filled
 * with PER datagrams of SIZE bytes, then drained with epoll_wait + one recvmmsg(64) per ready
 * socket (source addresses asked for, as Poller.poll's default), timed per round.
 *
 *   multidrain NSOCK PER SIZE ROUNDS   ->  a line per round: "ns_per_datagram W cpu C"
 * (W: wall-clock ns per datagram, C: this thread's CPU time per datagram, user + system)
 */
#define _GNU_SOURCE
#define BENCH_PROG "multidrain"
#include "benchutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAXSOCK 1024

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: multidrain NSOCK PER SIZE ROUNDS\n");
        return 2;
    }
    int nsock = (int)num(argv[1], "NSOCK", 1, MAXSOCK);
    long per = num(argv[2], "PER", 1, 1000000);
    int size = (int)num(argv[3], "SIZE", 16, 65000);
    int rounds = (int)num(argv[4], "ROUNDS", 1, 1000);
    static int fds[MAXSOCK];
    static struct sockaddr_in addrs[MAXSOCK];
    int ep = epoll_create1(0), tx = socket(AF_INET, SOCK_DGRAM, 0);
    if (ep < 0 || tx < 0) die("socket");
    int buf = 64 << 20;
    for (int i = 0; i < nsock; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fds[i] < 0) die("socket");
        if (setsockopt(fds[i], SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) != 0)
            setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
        if (bind(fds[i], (struct sockaddr *)&a, sizeof a) != 0) die("bind");
        if (getsockname(fds[i], (struct sockaddr *)&addrs[i], &len) != 0) die("getsockname");
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) != 0) die("epoll_ctl");
    }
    char *payload = calloc(1, (size_t)size);
    char *bufs = malloc((size_t)BATCH * 65536);
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in names[BATCH];
    struct epoll_event evs[MAXSOCK];
    if (!payload || !bufs) die("malloc");
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < nsock; i++)
            for (long k = 0; k < per; k++)
                if (sendto(tx, payload, (size_t)size, 0, (struct sockaddr *)&addrs[i],
                           sizeof addrs[i]) < 0) die("sendto");
        long total = per * nsock, got = 0;
        struct timespec c0, c1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        int64_t t0 = now_ns();
        while (got < total) {
            int n = epoll_wait(ep, evs, nsock, 1000);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) die("epoll_wait (datagrams lost?)");
            for (int e = 0; e < n; e++) {
                for (int i = 0; i < BATCH; i++) {
                    iov[i].iov_base = bufs + (size_t)i * 65536;
                    iov[i].iov_len = 65536;
                    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                    msgs[i].msg_hdr.msg_iov = &iov[i];
                    msgs[i].msg_hdr.msg_iovlen = 1;
                    msgs[i].msg_hdr.msg_name = &names[i];
                    msgs[i].msg_hdr.msg_namelen = sizeof names[i];
                }
                int m = recvmmsg(evs[e].data.fd, msgs, BATCH, MSG_DONTWAIT, NULL);
                if (m > 0) got += m;
            }
        }
        int64_t t1 = now_ns();
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        double cpu = (double)(c1.tv_sec - c0.tv_sec) * 1e9 + (double)(c1.tv_nsec - c0.tv_nsec);
        printf("ns_per_datagram %.2f cpu %.2f\n", (double)(t1 - t0) / (double)total,
               cpu / (double)total);
        fflush(stdout);
    }
    return 0;
}
