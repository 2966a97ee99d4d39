/* Helpers shared by pyxlio's C bench tools (refloop.c, pxbench.c): errors, number arguments,
 * CPU pinning, the monotonic clock.  Each tool defines BENCH_PROG (its name, for messages)
 * before including this file. */
#ifndef PYXLIO_BENCHUTIL_H
#define PYXLIO_BENCHUTIL_H

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline double now_s(void) { return (double)now_ns() / 1e9; }

static inline void die(const char *msg) {
    int e = errno;
    fprintf(stderr, BENCH_PROG ": %s%s%s\n", msg, e ? ": " : "", e ? strerror(e) : "");
    exit(2);
}

/* An integer argument in [min, max], or exit(2) naming it. */
static inline long num(const char *s, const char *what, long min, long max) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, BENCH_PROG ": bad %s '%s' (%ld..%ld)\n", what, s, min, max);
        exit(2);
    }
    return v;
}

/* Pin the calling process to `cpu` (< 0: leave it). */
static inline void pin(long cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
}

#endif
