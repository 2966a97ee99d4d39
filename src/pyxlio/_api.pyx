# cython: language_level=3, embedsignature=True
"""Detection of XLIO, the layout-resolved operations table, and the control facade.

Detection follows the fact sheet: ``getsockopt(-2, SOL_SOCKET, 2800, &ptr, &len)``; accept the
pointer only if rc == 0, len >= 8, ptr != NULL and ``ptr->magic`` is "NVDAXLIO".  The layout is
told from cap_mask, and only members whose cap bit is set are ever read or called: the rest of
pyxlio sees one table of operations (:c:type:`xlio_ops_t`) with NULL where a call is absent.

This module must not import socket, selectors, asyncio, subprocess or ctypes.util: XLIO's user
allocator can only be registered before XLIO's global initialisation, which the first epoll (as
``import selectors`` makes) starts.
"""

from libc.errno cimport errno, EBADF, EINVAL, ENOTSOCK
from libc.stdint cimport uint8_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset, strlen

from pyxlio._xlio cimport *

import atexit
import operator
import os
import stat as _stat
import sys
import threading

from pyxlio.constants import AllocTarget, Capability, Layout, LogLevel
from pyxlio.errors import UnsupportedError, XlioError, XlioNotLoadedError

cdef extern from "<dlfcn.h>" nogil:
    void *dlsym(void *handle, const char *symbol)
    void *RTLD_DEFAULT

cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <pthread.h>
    #include <stddef.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <stdio.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <time.h>
    #include <unistd.h>
    #include "pyxlio/xlio_abi.h"

    /* Sizes, offsets and constants pinned by the test suite against the fact sheet. */
    typedef struct { const char *name; long value; } pyxlio_fact_t;
    #define PYXLIO_F(name, v) { name, (long)(v) },
    /* members of each layout, in the header's order */
    #define PYXLIO_LEGACY_FIELDS(X) X(magic) X(cap_mask) X(recvfrom_zcopy)                     \\
        X(recvfrom_zcopy_free_packets) X(add_conf_rule) X(thread_offload)                        \\
        X(get_socket_rings_num) X(get_socket_rings_fds) X(dump_fd_stats) X(ioctl)                \\
        X(register_recv_callback) X(socketxtreme_poll) X(socketxtreme_free_packets)              \\
        X(socketxtreme_ref_buff) X(socketxtreme_free_buff) X(socket_api)
    #define PYXLIO_SOCKET_API_FIELDS(X) X(xlio_init_ex) X(xlio_poll_group_create)                 \\
        X(xlio_poll_group_destroy) X(xlio_poll_group_poll) X(xlio_socket_create)                 \\
        X(xlio_socket_destroy) X(xlio_socket_setsockopt) X(xlio_socket_bind)                     \\
        X(xlio_socket_connect) X(xlio_socket_get_pd) X(xlio_socket_send) X(xlio_socket_sendv)    \\
        X(xlio_poll_group_flush) X(xlio_socket_flush) X(xlio_socket_buf_free)                    \\
        X(xlio_poll_group_buf_free)
    #define PYXLIO_ULTRA_API_FIELDS(X) X(xlio_init_ex) X(xlio_exit) X(xlio_poll_group_create)     \\
        X(xlio_poll_group_destroy) X(xlio_poll_group_poll) X(xlio_socket_create)                 \\
        X(xlio_socket_destroy) X(xlio_socket_update) X(xlio_socket_setsockopt)                   \\
        X(xlio_socket_getsockname) X(xlio_socket_getpeername) X(xlio_socket_bind)                \\
        X(xlio_socket_connect) X(xlio_socket_listen) X(xlio_socket_get_pd)                       \\
        X(xlio_socket_detach_group) X(xlio_socket_attach_group) X(xlio_socket_send)              \\
        X(xlio_socket_sendv) X(xlio_poll_group_flush) X(xlio_socket_flush)                       \\
        X(xlio_socket_buf_free) X(xlio_poll_group_buf_free)
    #define PYXLIO_360_FIELDS(X) X(magic) X(cap_mask) X(add_conf_rule) X(thread_offload)          \\
        X(dump_fd_stats) X(register_recv_callback) X(ultra_api)
    #define PYXLIO_361_FIELDS(X) X(magic) X(cap_mask) X(add_conf_rule) X(thread_offload)          \\
        X(dump_fd_stats) X(ultra_api)
    #define PYXLIO_394_FIELDS(X) X(magic) X(cap_mask) X(add_conf_rule) X(thread_offload)          \\
        X(dump_fd_stats) X(ioctl) X(socket_api)
    #define PYXLIO_OFF_LEGACY(m) PYXLIO_F("legacy." #m, offsetof(pyxlio_api_legacy_t, m))
    #define PYXLIO_OFF_360(m) PYXLIO_F("v360." #m, offsetof(pyxlio_api_360_full_t, m))
    #define PYXLIO_OFF_361(m) PYXLIO_F("v361." #m, offsetof(pyxlio_api_361_full_t, m))
    #define PYXLIO_OFF_394(m) PYXLIO_F("v394." #m, offsetof(pyxlio_api_394_full_t, m))
    #define PYXLIO_CAPF(b) PYXLIO_F("cap." #b, PYXLIO_CAP_##b)
    #define PYXLIO_VMA_FIELDS(X) X(register_recv_callback) X(recvfrom_zcopy) X(free_packets)     \\
        X(add_conf_rule) X(thread_offload) X(socketxtreme_poll) X(get_socket_rings_num)          \\
        X(get_socket_rings_fds) X(get_socket_tx_ring_fd) X(socketxtreme_free_vma_packets)        \\
        X(socketxtreme_ref_vma_buff) X(socketxtreme_free_vma_buff) X(dump_fd_stats)              \\
        X(vma_add_ring_profile) X(get_socket_network_header) X(get_ring_direct_descriptors)      \\
        X(register_memory_on_ring) X(deregister_memory_on_ring) X(vma_modify_ring)               \\
        X(vma_extra_supported_mask) X(ioctl)
    #define PYXLIO_OFF_VMA(m) PYXLIO_F("vma." #m, offsetof(pyxlio_api_vma_t, m))
    #define PYXLIO_VCAPF(b) PYXLIO_F("vmacap." #b, PYXLIO_VMA_CAP_##b)
    static const pyxlio_fact_t pyxlio_abi_facts[] = {
        PYXLIO_F("legacy.size", sizeof(pyxlio_api_legacy_t))
        PYXLIO_F("v360.size", sizeof(pyxlio_api_360_full_t))
        PYXLIO_F("v361.size", sizeof(pyxlio_api_361_full_t))
        PYXLIO_F("v394.size", sizeof(pyxlio_api_394_full_t))
        PYXLIO_F("v360.head_size", sizeof(pyxlio_api_360_t))
        PYXLIO_F("v361.head_size", sizeof(pyxlio_api_361_t))
        PYXLIO_F("v394.head_size", sizeof(pyxlio_api_394_t))
        PYXLIO_F("legacy.size_2_0", PYXLIO_API_LEGACY_SIZE_2_0)
        PYXLIO_F("legacy.size_3_10", PYXLIO_API_LEGACY_SIZE_3_10)
        PYXLIO_F("legacy.size_3_30_3", PYXLIO_API_LEGACY_SIZE_3_30_3)
        PYXLIO_LEGACY_FIELDS(PYXLIO_OFF_LEGACY) PYXLIO_SOCKET_API_FIELDS(PYXLIO_OFF_LEGACY)
        PYXLIO_360_FIELDS(PYXLIO_OFF_360) PYXLIO_ULTRA_API_FIELDS(PYXLIO_OFF_360)
        PYXLIO_361_FIELDS(PYXLIO_OFF_361) PYXLIO_ULTRA_API_FIELDS(PYXLIO_OFF_361)
        PYXLIO_394_FIELDS(PYXLIO_OFF_394) PYXLIO_SOCKET_API_FIELDS(PYXLIO_OFF_394)
        PYXLIO_CAPF(REGISTER_RECV_CALLBACK) PYXLIO_CAPF(RECVFROM_ZCOPY)
        PYXLIO_CAPF(RECVFROM_ZCOPY_FREE_PACKETS) PYXLIO_CAPF(ADD_CONF_RULE)
        PYXLIO_CAPF(THREAD_OFFLOAD) PYXLIO_CAPF(GET_SOCKET_RINGS_NUM)
        PYXLIO_CAPF(GET_SOCKET_RINGS_FDS) PYXLIO_CAPF(SOCKETXTREME_POLL)
        PYXLIO_CAPF(SOCKETXTREME_FREE_PACKETS) PYXLIO_CAPF(SOCKETXTREME_REF_XLIO_BUFF)
        PYXLIO_CAPF(SOCKETXTREME_FREE_XLIO_BUFF) PYXLIO_CAPF(DUMP_FD_STATS) PYXLIO_CAPF(IOCTL)
        PYXLIO_CAPF(XLIO_SOCKET)
        PYXLIO_F("LAYOUT_LEGACY", PYXLIO_LAYOUT_LEGACY)
        PYXLIO_F("LAYOUT_360", PYXLIO_LAYOUT_360)
        PYXLIO_F("LAYOUT_361", PYXLIO_LAYOUT_361)
        PYXLIO_F("LAYOUT_394", PYXLIO_LAYOUT_394)
        PYXLIO_F("packet.size", sizeof(pyxlio_zc_packet_t))
        PYXLIO_F("packet.packet_id", offsetof(pyxlio_zc_packet_t, packet_id))
        PYXLIO_F("packet.sz_iov", offsetof(pyxlio_zc_packet_t, sz_iov))
        PYXLIO_F("packet.iov", offsetof(pyxlio_zc_packet_t, iov))
        PYXLIO_F("packets.n_packet_num", offsetof(pyxlio_zc_packets_t, n_packet_num))
        PYXLIO_F("packets.pkts", offsetof(pyxlio_zc_packets_t, pkts))
        PYXLIO_F("ZC_HEADER_BYTES", PYXLIO_ZC_HEADER_BYTES)
        PYXLIO_F("ZC_PACKET_BYTES", PYXLIO_ZC_PACKET_BYTES)
        PYXLIO_F("ZC_IOV_BYTES", PYXLIO_ZC_IOV_BYTES)
        PYXLIO_F("ZC_UDP_MIN(1)", PYXLIO_ZC_UDP_MIN(1))
        PYXLIO_F("ZC_UDP_MIN(4)", PYXLIO_ZC_UDP_MIN(4))
        PYXLIO_F("ZC_TCP_MIN", PYXLIO_ZC_TCP_MIN)
        PYXLIO_F("info.size", sizeof(pyxlio_recv_info_t))
        PYXLIO_F("info.struct_sz", offsetof(pyxlio_recv_info_t, struct_sz))
        PYXLIO_F("info.packet_id", offsetof(pyxlio_recv_info_t, packet_id))
        PYXLIO_F("info.src", offsetof(pyxlio_recv_info_t, src))
        PYXLIO_F("info.dst", offsetof(pyxlio_recv_info_t, dst))
        PYXLIO_F("info.payload_sz", offsetof(pyxlio_recv_info_t, payload_sz))
        PYXLIO_F("info.socket_ready_queue_pkt_count", offsetof(pyxlio_recv_info_t, socket_ready_queue_pkt_count))
        PYXLIO_F("info.socket_ready_queue_byte_count", offsetof(pyxlio_recv_info_t, socket_ready_queue_byte_count))
        PYXLIO_F("info.hw_timestamp", offsetof(pyxlio_recv_info_t, hw_timestamp))
        PYXLIO_F("info.sw_timestamp", offsetof(pyxlio_recv_info_t, sw_timestamp))
        PYXLIO_F("SO_XLIO_GET_API", PYXLIO_SO_XLIO_GET_API)
        PYXLIO_F("XLIO_MAGIC", PYXLIO_XLIO_MAGIC)
        PYXLIO_F("MSG_XLIO_ZCOPY_FORCE", PYXLIO_MSG_XLIO_ZCOPY_FORCE)
        PYXLIO_F("MSG_XLIO_ZCOPY", PYXLIO_MSG_XLIO_ZCOPY)
        PYXLIO_F("XLIO_SND_FLAGS_DUMMY", PYXLIO_SND_FLAGS_DUMMY)
        PYXLIO_F("CMSG_XLIO_IOCTL_USER_ALLOC", PYXLIO_CMSG_IOCTL_USER_ALLOC)
        PYXLIO_F("USER_ALLOC_TX", PYXLIO_USER_ALLOC_TX)
        PYXLIO_F("USER_ALLOC_RX", PYXLIO_USER_ALLOC_RX)
        PYXLIO_F("USER_ALLOC_TX_ZC", PYXLIO_USER_ALLOC_TX_ZC)
        PYXLIO_F("USER_ALLOC_PAYLOAD", PYXLIO_USER_ALLOC_PAYLOAD)
        PYXLIO_F("CMSG_LEN(user_alloc)", PYXLIO_USER_ALLOC_CMSG_LEN)
        PYXLIO_F("CMSG_SPACE(user_alloc)", PYXLIO_USER_ALLOC_CMSG_SPACE)
        PYXLIO_F("PACKET_DROP", PYXLIO_PACKET_DROP)
        PYXLIO_F("PACKET_RECV", PYXLIO_PACKET_RECV)
        PYXLIO_F("PACKET_HOLD", PYXLIO_PACKET_HOLD)
        PYXLIO_F("LOG_NONE", PYXLIO_LOG_NONE)
        PYXLIO_F("LOG_PANIC", PYXLIO_LOG_PANIC)
        PYXLIO_F("LOG_ERROR", PYXLIO_LOG_ERROR)
        PYXLIO_F("LOG_WARNING", PYXLIO_LOG_WARNING)
        PYXLIO_F("LOG_INFO", PYXLIO_LOG_INFO)
        PYXLIO_F("LOG_DETAILS", PYXLIO_LOG_DETAILS)
        PYXLIO_F("LOG_DEBUG", PYXLIO_LOG_DEBUG)
        PYXLIO_F("LOG_FINE", PYXLIO_LOG_FINE)
        PYXLIO_F("LOG_FINER", PYXLIO_LOG_FINER)
        PYXLIO_F("LOG_ALL", PYXLIO_LOG_ALL)
        PYXLIO_VMA_FIELDS(PYXLIO_OFF_VMA)
        PYXLIO_F("vma.size", sizeof(pyxlio_api_vma_t))
        PYXLIO_F("vma.size_no_bit21", PYXLIO_API_VMA_SIZE_NO_BIT21)
        PYXLIO_F("vma.mask_offset_old", PYXLIO_API_VMA_MASK_OFFSET_OLD)
        PYXLIO_F("vma.info.size", sizeof(pyxlio_vma_info_t))
        PYXLIO_F("SO_VMA_GET_API", PYXLIO_SO_VMA_GET_API)
        PYXLIO_F("VMA_GET_API_FD", PYXLIO_VMA_GET_API_FD)
        PYXLIO_F("LAYOUT_VMA", PYXLIO_LAYOUT_VMA)
        PYXLIO_F("VMA_MASK_9_8_84", PYXLIO_VMA_MASK_9_8_84)
        PYXLIO_VCAPF(REGISTER_RECV_CALLBACK) PYXLIO_VCAPF(RECVFROM_ZCOPY)
        PYXLIO_VCAPF(FREE_PACKETS) PYXLIO_VCAPF(ADD_CONF_RULE) PYXLIO_VCAPF(THREAD_OFFLOAD)
        PYXLIO_VCAPF(DUMP_FD_STATS) PYXLIO_VCAPF(SOCKETXTREME_POLL)
        PYXLIO_VCAPF(SOCKETXTREME_FREE_VMA_PACKETS) PYXLIO_VCAPF(SOCKETXTREME_REF_VMA_BUFF)
        PYXLIO_VCAPF(SOCKETXTREME_FREE_VMA_BUFF) PYXLIO_VCAPF(GET_SOCKET_RINGS_NUM)
        PYXLIO_VCAPF(GET_SOCKET_RINGS_FDS) PYXLIO_VCAPF(GET_SOCKET_TX_RING_FD)
        PYXLIO_VCAPF(GET_SOCKET_NETWORK_HEADER) PYXLIO_VCAPF(GET_RING_DIRECT_DESCRIPTORS)
        PYXLIO_VCAPF(CYCLIC_BUFFER_READ) PYXLIO_VCAPF(ADD_RING_PROFILE)
        PYXLIO_VCAPF(REGISTER_MEMORY_ON_RING) PYXLIO_VCAPF(DEREGISTER_MEMORY_ON_RING)
        PYXLIO_VCAPF(GET_MEM_INFO) PYXLIO_VCAPF(MODIFY_RING) PYXLIO_VCAPF(BIT21)
    };
    #define PYXLIO_N_FACTS (sizeof(pyxlio_abi_facts) / sizeof(pyxlio_abi_facts[0]))

    /* The magic, read without assuming the pointer is aligned. */
    static uint64_t pyxlio_read_u64(const void *p, size_t off) {
        uint64_t v; memcpy(&v, (const unsigned char *)p + off, sizeof v); return v;
    }

    /* ---- May Python be called? ------------------------------------------------------------
     * XLIO calls the allocator from its own threads, and frees its pools from a library
     * destructor, i.e. after Py_FinalizeEx.  A trampoline enters Python only between
     * pyxlio_py_enter() (which counts it) and pyxlio_py_leave(); the atexit hook of _api
     * (pyxlio_py_close) forbids new entries and waits, bounded, for those under way, so no
     * trampoline is inside Python when the interpreter starts to finalize.  Py_IsInitialized()
     * and the finalizing flag cover exits that skip the hook.  The flag and the counter form a
     * Dekker pair: both sides use sequentially consistent atomics. */
    #if PY_VERSION_HEX >= 0x030D0000
    #define PYXLIO_PY_FINALIZING() Py_IsFinalizing()
    #else
    #define PYXLIO_PY_FINALIZING() _Py_IsFinalizing()
    #endif
    static int pyxlio_py_exiting;
    static long pyxlio_py_inflight;

    static int pyxlio_py_enter(void) {
        __atomic_add_fetch(&pyxlio_py_inflight, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&pyxlio_py_exiting, __ATOMIC_SEQ_CST) || !Py_IsInitialized() ||
            PYXLIO_PY_FINALIZING()) {
            __atomic_sub_fetch(&pyxlio_py_inflight, 1, __ATOMIC_SEQ_CST);
            return 0;
        }
        return 1;
    }
    static void pyxlio_py_leave(void) { __atomic_sub_fetch(&pyxlio_py_inflight, 1, __ATOMIC_SEQ_CST); }
    /* Called without the GIL (a trampoline waiting for it must be able to finish). */
    static int pyxlio_py_close(long max_ms) {
        struct timespec nap = {0, 1000000};
        __atomic_store_n(&pyxlio_py_exiting, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&pyxlio_py_inflight, __ATOMIC_SEQ_CST) > 0) {
            if (max_ms-- <= 0) return -1;
            nanosleep(&nap, NULL);
        }
        return 0;
    }
    /* A message on stderr without Python (and without stdio's buffers). */
    static void pyxlio_say(const char *text) {
        int saved = errno;
        size_t n = strlen(text);
        while (n) {
            ssize_t w = write(2, text, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            text += w; n -= (size_t)w;
        }
        errno = saved;
    }

    /* ---- Is [lo, lo + len) memory this process may read and write? -------------------------
     * From /proc/self/maps (sorted by address): every byte must lie in a mapping whose
     * permissions start with "rw", with no gap.  Returns 0 if so; 1 when *bad is not mapped;
     * 2 when *bad lies in a mapping without read or write permission (perms gets them); 3 when
     * the maps cannot be read but mincore() finds every page mapped (protection unchecked).
     * The caller checked len > 0 and that lo + len does not wrap. */
    static const char *pyxlio_hex(const char *s, uintptr_t *out) {
        uintptr_t v = 0;
        const char *start = s;
        for (;; s++) {
            unsigned d;
            if (*s >= '0' && *s <= '9') d = (unsigned)(*s - '0');
            else if (*s >= 'a' && *s <= 'f') d = (unsigned)(*s - 'a' + 10);
            else if (*s >= 'A' && *s <= 'F') d = (unsigned)(*s - 'A' + 10);
            else break;
            v = v * 16 + d;
        }
        *out = v;
        return s == start ? NULL : s;
    }
    static int pyxlio_mincore_check(uintptr_t lo, size_t len, uintptr_t *bad) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        uintptr_t p = lo & ~(uintptr_t)(page - 1), end = lo + len;
        unsigned char vec[4096];
        while (p < end) {
            size_t n = (size_t)(end - p);
            if (n > sizeof vec * page) n = sizeof vec * page;
            if (mincore((void *)p, n, vec) != 0 && errno == ENOMEM) {
                *bad = p < lo ? lo : p;
                return 1;
            }
            p += n;
        }
        return 3;
    }
    static int pyxlio_range_check(uintptr_t lo, size_t len, uintptr_t *bad, char *perms) {
        uintptr_t cur = lo, end = lo + len;
        char chunk[4096], line[160];
        size_t ll = 0;
        int rc = -1, saved = errno;
        int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
        if (fd < 0) { errno = saved; return pyxlio_mincore_check(lo, len, bad); }
        while (rc < 0) {
            ssize_t got = read(fd, chunk, sizeof chunk);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            for (ssize_t i = 0; i < got && rc < 0; i++) {
                uintptr_t a, b;
                const char *q;
                if (chunk[i] != '\\n') {
                    if (ll < sizeof line - 1) line[ll++] = chunk[i];
                    continue;
                }
                line[ll] = 0;
                ll = 0;
                /* "start-end perms offset dev inode path" */
                if (!(q = pyxlio_hex(line, &a)) || *q != '-' || !(q = pyxlio_hex(q + 1, &b)) ||
                    *q != ' ' || strlen(q + 1) < 4)
                    continue;
                if (b <= cur) continue;
                if (a > cur) { rc = 1; break; }                  /* a gap at cur */
                if (q[1] != 'r' || q[2] != 'w') {
                    memcpy(perms, q + 1, 4); perms[4] = 0;
                    rc = 2;
                    break;
                }
                cur = b;
                if (cur >= end) rc = 0;
            }
        }
        close(fd);
        errno = saved;
        if (rc < 0) rc = 1;                 /* past the last mapping */
        *bad = cur;
        return rc;
    }

    /* ---- Built-in allocators ---------------------------------------------------------------
     * Every block is kept in a table that grows as needed (the size is needed by munmap, and
     * free must know which addresses are its own).  Errors: */
    enum { PYXLIO_BLOCK_OK = 0, PYXLIO_BLOCK_NOMEM = 1, PYXLIO_BLOCK_TABLE = 2,
           PYXLIO_BLOCK_UNKNOWN = 3 };
    typedef struct { void *p; size_t n; int mapped; } pyxlio_block_t;
    static pyxlio_block_t *pyxlio_blocks;
    static size_t pyxlio_nblocks, pyxlio_capblocks;
    static pthread_mutex_t pyxlio_blocks_mu = PTHREAD_MUTEX_INITIALIZER;
    static unsigned long pyxlio_alloc_calls, pyxlio_free_calls;
    static unsigned long long pyxlio_alloc_bytes;
    static int pyxlio_huge_fallback;

    static int pyxlio_note_block(void *p, size_t n, int mapped) {
        int rc = PYXLIO_BLOCK_OK;
        pthread_mutex_lock(&pyxlio_blocks_mu);
        if (pyxlio_nblocks == pyxlio_capblocks) {
            size_t cap = pyxlio_capblocks ? 2 * pyxlio_capblocks : 64;
            pyxlio_block_t *t = cap > SIZE_MAX / sizeof *t ? NULL
                              : realloc(pyxlio_blocks, cap * sizeof *t);
            if (t) { pyxlio_blocks = t; pyxlio_capblocks = cap; }
            else rc = PYXLIO_BLOCK_TABLE;
        }
        if (rc == PYXLIO_BLOCK_OK) {
            pyxlio_blocks[pyxlio_nblocks].p = p;
            pyxlio_blocks[pyxlio_nblocks].n = n;
            pyxlio_blocks[pyxlio_nblocks].mapped = mapped;
            pyxlio_nblocks++;
            pyxlio_alloc_calls++;
            pyxlio_alloc_bytes += n;
        }
        pthread_mutex_unlock(&pyxlio_blocks_mu);
        return rc;
    }
    /* hugepages: MAP_HUGETLB in 2 MiB units; falls back to page-aligned anonymous memory
     * (*first_fallback says whether this call was the first to fall back). */
    static void *pyxlio_alloc_hugepages_c(size_t n, int *err, int *first_fallback) {
        const size_t huge = (size_t)2 << 20;
        size_t len = n > SIZE_MAX - huge ? 0 : (n + huge - 1) & ~(huge - 1);
        *err = PYXLIO_BLOCK_OK;
        *first_fallback = 0;
        if (len == 0 && n) { *err = PYXLIO_BLOCK_NOMEM; errno = ENOMEM; return NULL; }
        if (len == 0) len = huge;
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (p == MAP_FAILED) {
            size_t page = (size_t)sysconf(_SC_PAGESIZE);
            len = (n + page - 1) & ~(page - 1);
            if (len == 0) len = page;
            p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { *err = PYXLIO_BLOCK_NOMEM; return NULL; }
            *first_fallback = !__atomic_exchange_n(&pyxlio_huge_fallback, 1, __ATOMIC_SEQ_CST);
        }
        if ((*err = pyxlio_note_block(p, len, 1)) != PYXLIO_BLOCK_OK) {
            munmap(p, len);
            return NULL;
        }
        return p;
    }
    /* aligned: page-aligned heap memory (posix_memalign). */
    static void *pyxlio_alloc_aligned_c(size_t n, int *err) {
        void *p = NULL;
        int rc = posix_memalign(&p, (size_t)sysconf(_SC_PAGESIZE), n ? n : 1);
        if (rc != 0) { *err = PYXLIO_BLOCK_NOMEM; errno = rc; return NULL; }
        if ((*err = pyxlio_note_block(p, n, 0)) != PYXLIO_BLOCK_OK) {
            free(p);
            return NULL;
        }
        return p;
    }
    /* Only addresses in the table are given back (free(NULL) does nothing, as free()). */
    static int pyxlio_free_builtin_c(void *p) {
        pyxlio_block_t b = {NULL, 0, 0};
        if (!p) return PYXLIO_BLOCK_OK;
        pthread_mutex_lock(&pyxlio_blocks_mu);
        for (size_t i = 0; i < pyxlio_nblocks; i++)
            if (pyxlio_blocks[i].p == p) {
                b = pyxlio_blocks[i];
                pyxlio_blocks[i] = pyxlio_blocks[--pyxlio_nblocks];
                pyxlio_free_calls++;
                break;
            }
        pthread_mutex_unlock(&pyxlio_blocks_mu);
        if (!b.p) return PYXLIO_BLOCK_UNKNOWN;
        if (b.mapped) munmap(b.p, b.n); else free(b.p);
        return PYXLIO_BLOCK_OK;
    }
    static size_t pyxlio_builtin_blocks(void) {
        pthread_mutex_lock(&pyxlio_blocks_mu);
        size_t n = pyxlio_nblocks;
        pthread_mutex_unlock(&pyxlio_blocks_mu);
        return n;
    }
    /* What a built-in allocator says when Python cannot hear it. */
    static void pyxlio_say_builtin(int err, const char *kind, size_t size, const void *p, int errnum) {
        char msg[256];
        if (err == PYXLIO_BLOCK_UNKNOWN)
            snprintf(msg, sizeof msg, "pyxlio: XLIO asked the built-in allocator to free %p, an "
                     "address it never gave (or freed already): not freed\\n", p);
        else if (err == PYXLIO_BLOCK_TABLE)
            snprintf(msg, sizeof msg, "pyxlio: the %s allocator cannot grow its block table: "
                     "XLIO gets NULL for %zu bytes\\n", kind, size);
        else
            snprintf(msg, sizeof msg, "pyxlio: the %s allocator cannot get %zu bytes (%s): "
                     "XLIO gets NULL\\n", kind, size, strerror(errnum));
        pyxlio_say(msg);
    }
    static void pyxlio_say_alloc_after_exit(size_t size) {
        char msg[200];
        snprintf(msg, sizeof msg, "pyxlio: XLIO asked the Python allocator for %zu bytes while "
                 "Python exits or after Python finalized: XLIO gets NULL\\n", size);
        pyxlio_say(msg);
    }

    /* ---- fork ------------------------------------------------------------------------------
     * The generation moves in the child of every glibc fork(): os.fork(), and fork() called
     * from C (ctypes, extensions), which Python's own at-fork hooks never see.  Not moved by
     * vfork(), clone() or _Fork(), whose children must exec or _exit at once anyway. */
    static unsigned long pyxlio_fork_gen;
    static void pyxlio_fork_prepare(void) { pthread_mutex_lock(&pyxlio_blocks_mu); }
    static void pyxlio_fork_parent(void) { pthread_mutex_unlock(&pyxlio_blocks_mu); }
    static void pyxlio_fork_child(void) {
        pthread_mutex_unlock(&pyxlio_blocks_mu);
        __atomic_store_n(&pyxlio_py_inflight, 0, __ATOMIC_SEQ_CST);   /* only this thread lives */
        __atomic_add_fetch(&pyxlio_fork_gen, 1, __ATOMIC_SEQ_CST);
    }
    static int pyxlio_fork_hooks_install(void) {
        static int done;
        if (done) return 0;
        done = 1;
        return pthread_atfork(pyxlio_fork_prepare, pyxlio_fork_parent, pyxlio_fork_child);
    }
    static unsigned long pyxlio_fork_generation(void) {
        return __atomic_load_n(&pyxlio_fork_gen, __ATOMIC_SEQ_CST);
    }

    /* Test hook: call a trampoline from a C atexit handler, i.e. after Python finalized. */
    static int pyxlio_test_which;
    static uintptr_t pyxlio_test_value;
    static void *(*pyxlio_test_alloc)(size_t);
    static void (*pyxlio_test_free)(void *);
    static void pyxlio_test_exit_handler(void) {
        char msg[128];
        void *r = NULL;
        if (pyxlio_test_which == 0) r = pyxlio_test_alloc((size_t)pyxlio_test_value);
        else pyxlio_test_free((void *)pyxlio_test_value);
        int n = snprintf(msg, sizeof msg, "pyxlio-test: %s trampoline returned 0x%lx after exit\\n",
                         pyxlio_test_which == 0 ? "alloc" : "free", (unsigned long)(uintptr_t)r);
        if (n > 0 && write(2, msg, (size_t)n) < 0) {}
    }
    static int pyxlio_test_at_exit(int which, uintptr_t value, void *(*af)(size_t), void (*ff)(void *)) {
        pyxlio_test_which = which; pyxlio_test_value = value;
        pyxlio_test_alloc = af; pyxlio_test_free = ff;
        return atexit(pyxlio_test_exit_handler);
    }
    """
    ctypedef struct pyxlio_fact_t:
        const char *name
        long value
    const pyxlio_fact_t *pyxlio_abi_facts
    size_t PYXLIO_N_FACTS
    uint64_t pyxlio_read_u64(const void *p, size_t off) nogil
    int pyxlio_py_enter() nogil
    void pyxlio_py_leave() nogil
    int pyxlio_py_close(long max_ms) nogil
    void pyxlio_say(const char *text) nogil
    int pyxlio_range_check(uintptr_t lo, size_t len, uintptr_t *bad, char *perms) nogil
    enum:
        PYXLIO_BLOCK_OK
        PYXLIO_BLOCK_NOMEM
        PYXLIO_BLOCK_TABLE
        PYXLIO_BLOCK_UNKNOWN
    void *pyxlio_alloc_hugepages_c(size_t n, int *err, int *first_fallback) nogil
    void *pyxlio_alloc_aligned_c(size_t n, int *err) nogil
    int pyxlio_free_builtin_c(void *p) nogil
    size_t pyxlio_builtin_blocks() nogil
    void pyxlio_say_builtin(int err, const char *kind, size_t size, const void *p,
                            int errnum) nogil
    void pyxlio_say_alloc_after_exit(size_t size) nogil
    unsigned long pyxlio_alloc_calls
    unsigned long pyxlio_free_calls
    unsigned long long pyxlio_alloc_bytes
    int pyxlio_huge_fallback
    int pyxlio_fork_hooks_install() nogil
    unsigned long pyxlio_fork_generation() nogil
    int pyxlio_test_at_exit(int which, uintptr_t value, pyxlio_alloc_fn af, pyxlio_free_fn ff) nogil


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

cdef xlio_ops_t OPS
cdef void *API_PTR = NULL

memset(&OPS, 0, sizeof(OPS))


cdef const xlio_ops_t *get_ops() noexcept nogil:
    return &OPS


cdef const void *xlio_api_pointer() noexcept nogil:
    """The loaded libxlio's (or emulator's) xlio_api_t; NULL without one, or for libvma."""
    if API_PTR == NULL or OPS.layout == PYXLIO_LAYOUT_VMA:
        return NULL
    return API_PTR


cdef unsigned long fork_generation() noexcept nogil:
    """Moved by a pthread_atfork child handler: every glibc fork(), from Python or from C."""
    return pyxlio_fork_generation()


if pyxlio_fork_hooks_install() != 0:
    raise MemoryError("pyxlio: pthread_atfork failed: cannot tell a forked child")


cdef void *_query_api() noexcept nogil:
    """getsockopt(-2, SOL_SOCKET, 2800): the pointer if, and only if, it passes every check."""
    cdef void *ptr = NULL
    cdef socklen_t length = sizeof(void *)
    cdef int rc = getsockopt(-2, SOL_SOCKET, PYXLIO_SO_XLIO_GET_API, &ptr, &length)
    if rc != 0 or length < sizeof(void *) or ptr == NULL:
        return NULL
    if pyxlio_read_u64(ptr, 0) != PYXLIO_XLIO_MAGIC:
        return NULL
    return ptr


cdef void *_query_vma() noexcept nogil:
    """getsockopt(-1, SOL_SOCKET, 2800): libvma's struct vma_api_t (no magic to check)."""
    cdef void *ptr = NULL
    cdef socklen_t length = sizeof(void *)
    cdef int rc = getsockopt(PYXLIO_VMA_GET_API_FD, SOL_SOCKET, PYXLIO_SO_VMA_GET_API, &ptr,
                             &length)
    if rc != 0 or length < sizeof(void *) or ptr == NULL:
        return NULL
    return ptr


def _vma_version_code(path: str | None) -> int:
    """major*10000 + minor*100 + rev from a file name ``libvma.so.X.Y.Z`` (0: not told)."""
    base = os.path.basename(path or "")
    if not base.startswith("libvma.so."):
        return 0
    parts = base[len("libvma.so."):].split(".")
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        return 0
    major, minor, rev = (int(p) for p in parts[:3])
    if minor > 99 or rev > 99:
        return 0
    return major * 10000 + minor * 100 + rev


cdef bint _is_emulator() noexcept:
    return dlsym(RTLD_DEFAULT, b"pyxlio_emu_version") != NULL


# Why a libvma that answered was not used ("" when it was, or none answered).
_vma_refused = ""


def _detect() -> None:
    global API_PTR, _vma_refused
    cdef int saved = errno
    cdef void *vptr
    cdef uintptr_t first = 0
    cdef long version
    API_PTR = _query_api()
    set_errno(saved)       # a failed probe (EBADF) must not leak into the caller's errno
    if API_PTR != NULL:
        pyxlio_resolve_ops(API_PTR, &OPS)   # the layout table of include/pyxlio/xlio_abi.h
        return
    # No XLIO: libvma answers the same option on fd -1 (fact sheet, section 11).
    vptr = _query_vma()
    set_errno(saved)
    if vptr == NULL:
        return
    # The struct is on the heap: its first member (register_recv_callback, set by every release)
    # is code in the library, whose file name gives the release.
    memcpy(&first, vptr, sizeof(void *))
    version = _vma_version_code(_mapping_of(first)) if first else 0
    if pyxlio_resolve_vma_ops(vptr, version, _is_emulator(), &OPS) != 0:
        memset(&OPS, 0, sizeof(OPS))
        _vma_refused = (f"libvma answered (struct at {<uintptr_t>vptr:#x}, version code "
                        f"{version}) but its struct vma_api_t has no support mask pyxlio "
                        "can read (libvma 8.8.0 or older?): not used")
        return
    API_PTR = vptr


# ---------------------------------------------------------------------------------------------
# The checked wrapper every call goes through
# ---------------------------------------------------------------------------------------------

cdef int raise_xlio(int err, str call, str detail=None) except -1:
    raise XlioError.from_errno(err, call, detail or "")


cdef int _require(void *fn, str call) except -1:
    """Raise the right error when the operation `call` is absent."""
    if fn != NULL:
        return 0
    if API_PTR == NULL:
        raise XlioNotLoadedError(call)
    raise UnsupportedError(
        call,
        f"the loaded XLIO (layout {Layout(OPS.layout)}, cap_mask {OPS.cap_mask:#x}) "
        f"does not offer {call}",
    )


# ---------------------------------------------------------------------------------------------
# Api: what answered
# ---------------------------------------------------------------------------------------------

def _mapping_of(address: int) -> str | None:
    """The file of /proc/self/maps whose range holds `address` (None if anonymous)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                lo, _, hi = fields[0].partition("-")
                if int(lo, 16) <= address < int(hi, 16):
                    path = fields[5].strip() if len(fields) > 5 else ""
                    # a file, not "[heap]", "[anon:...]" or another pseudo-mapping
                    return path if path.startswith("/") else None
    except OSError:
        return None
    return None


_detect()


cdef class Api:
    # The first lines are the class's text signature (inspect.signature): "--" at column 0.
    """Api()
--

    The XLIO Extra API that answered in this process.

    Get it with :func:`pyxlio.get_api`.  Immutable: XLIO is chosen when the process starts.
    """

    cdef readonly uint64_t cap_mask
    cdef readonly uintptr_t address
    cdef object _library

    def __cinit__(self) -> None:
        self.cap_mask = OPS.cap_mask
        self.address = <uintptr_t>API_PTR
        self._library = None

    @property
    def layout(self) -> Layout:
        """The ``xlio_api_t`` layout, told from cap_mask (``Layout.VMA`` for libvma)."""
        return Layout(OPS.layout)

    @property
    def native_mask(self) -> int:
        """The library's own mask: cap_mask for libxlio, ``vma_extra_supported_mask`` (VMA's
        bit numbering, e.g. 0x377fff for 9.8.84) for libvma.  :attr:`cap_mask` is always in
        pyxlio's (XLIO's) numbering."""
        return OPS.native_mask

    @property
    def capabilities(self) -> Capability:
        """The cap_mask as a :class:`pyxlio.Capability` flag (unknown bits dropped).  For
        libvma, VMA's bits mapped through one table (``_api._vma_cap_table()``)."""
        return Capability(self.cap_mask & int(Capability(0x3FFF)))

    def has(self, cap: Capability | int) -> bool:
        """True when every bit of `cap` is set in cap_mask (the member exists)."""
        if isinstance(cap, bool) or not isinstance(cap, int):
            raise TypeError(f"cap must be a pyxlio.Capability, not {type(cap).__name__}")
        return cap != 0 and (self.cap_mask & int(cap)) == int(cap)

    @property
    def size(self) -> int:
        """The size of ``xlio_api_t`` that cap_mask implies: pyxlio never reads past it.

        Legacy layout: 80 (2.0-3.0), 120 (3.10-3.30.2) or 248 bytes (3.30.3-3.51.x); 3.60: 232;
        3.61 and later: 224; 3.94x: 176 (a newer layout without cap bit 13: the members before
        its socket/Ultra API).  libvma: 168 (9.8.70+, up to ioctl), 160 (9.8.40-9.8.60)..."""
        if OPS.layout == PYXLIO_LAYOUT_VMA:
            return OPS.api_size
        return pyxlio_layout_size(self.cap_mask)

    @property
    def can_return_held(self) -> bool:
        """Can a packet a receive callback HOLDs be given back to XLIO?

        Only where ``recvfrom_zcopy_free_packets`` exists (the legacy layout).  The 3.60
        layout has ``register_recv_callback`` and honours HOLD, but has no call to free a held
        packet: a packet XLIO hands over there can never be returned (its buffer is lost), so
        HOLD through XLIO's own callback must be refused on it."""
        return OPS.free_packets != NULL

    @property
    def started(self) -> bool | None:
        """Has XLIO's global initialisation run?

        XLIO starts with the process's first AF_INET/AF_INET6 socket or epoll (importing
        Python's ``socket`` module is enough).  False after that means it failed to start (no
        usable RDMA stack, for example: it says why on stderr) and serves every socket through
        the kernel as a plain pass-through: no thread offload, no statistics, no callbacks.
        Asked with ``dump_fd_stats(-1, 8)``, which libxlio answers -1 only before its init and
        which names no socket (nothing is printed).  None where the layout has no
        dump_fd_stats."""
        cdef int rc
        with nogil:
            rc = provider_started()
        return None if rc < 0 else rc == 1

    @property
    def dummy_send(self) -> bool:
        """Does this XLIO implement the dummy-send flag (:data:`pyxlio.MSG_DUMMY`)?

        The legacy layout and 3.94x do; 3.60 removed it (3.61+ too): there the flag would
        reach the kernel as MSG_SYN and really send the data."""
        return self.layout.has_dummy_send

    @property
    def provider(self) -> str:
        """``"emulator"`` for pyxlio's bundled emulator, else ``"libvma"`` or ``"libxlio"``."""
        if self.emulator_version is not None:
            return "emulator"
        return self.family

    @property
    def family(self) -> str:
        """Which library's API answered (or is emulated): ``"libvma"`` or ``"libxlio"``."""
        return self.layout.provider

    @property
    def emulator_version(self) -> str | None:
        """The emulator's version string, or None when a real libxlio answered."""
        cdef const char *marker = <const char *>dlsym(RTLD_DEFAULT, b"pyxlio_emu_version")
        if marker == NULL:
            return None
        return marker[:strlen(marker)].decode("utf-8", "replace")

    @property
    def version(self) -> str:
        """The library version when its file name tells it, else the layout's version range."""
        lib = self.library or ""
        base = os.path.basename(lib)
        if base.startswith("libxlio.so.") and base[len("libxlio.so."):][:1].isdigit():
            return base[len("libxlio.so."):]
        if base.startswith("libvma.so.") and base[len("libvma.so."):][:1].isdigit():
            return base[len("libvma.so."):]
        if self.provider == "emulator":
            return f"emulator ({self.layout.versions} layout)"
        return self.layout.versions

    @property
    def library(self) -> str | None:
        """Path of the shared library that serves the API (from /proc/self/maps)."""
        cdef uintptr_t where = self.address
        if self._library is None:
            if OPS.layout == PYXLIO_LAYOUT_VMA:
                # libvma's struct is on the heap: ask where its first member's code lives.
                memcpy(&where, <void *>self.address, sizeof(void *))
            elif OPS.add_conf_rule != NULL:
                # Where a member's code lives: libxlio's struct is not in a file mapping (on
                # the heap in 3.51, a function-local static in .bss from 3.60: sock-extra.cpp).
                where = <uintptr_t>OPS.add_conf_rule
            self._library = _mapping_of(where) or ""
        return self._library or None

    def __repr__(self) -> str:
        if OPS.layout == PYXLIO_LAYOUT_VMA:
            return (f"<pyxlio.Api provider={self.provider} layout=VMA ({self.layout.versions}) "
                    f"vma_extra_supported_mask={self.native_mask:#x} cap_mask={self.cap_mask:#x} "
                    f"size={self.size} library={self.library!r}>")
        return (f"<pyxlio.Api provider={self.provider} layout={self.layout.name} "
                f"(libxlio {self.layout.versions}) cap_mask={self.cap_mask:#x} "
                f"size={self.size} library={self.library!r}>")


_API_OBJECT = Api() if API_PTR != NULL else None


def get_api() -> Api | None:
    """The XLIO Extra API of this process, or None when no XLIO is loaded."""
    return _API_OBJECT


def available() -> bool:
    """True when an XLIO provider (libxlio or pyxlio's emulator) answered."""
    return API_PTR != NULL


def _abi_facts() -> dict[str, int]:
    """Sizes, offsets and constants as compiled into pyxlio (pinned by the tests)."""
    return {pyxlio_abi_facts[i].name.decode(): pyxlio_abi_facts[i].value
            for i in range(PYXLIO_N_FACTS)}


def _layout_of(cap_mask: int) -> Layout:
    """The layout a library with this cap_mask has (the rule detection applies)."""
    return Layout(pyxlio_layout_from_caps(cap_mask))


def _vma_cap_table() -> list[tuple[int, Capability, int]]:
    """The one table from VMA's mask bits to pyxlio's: (VMA bit, Capability, offset of the
    member in struct vma_api_t).  VMA bit 21 is the ioctl only from libvma 9.8.70."""
    return [(pyxlio_vma_caps[i].vma_bit, Capability(1 << pyxlio_vma_caps[i].xlio_bit),
             pyxlio_vma_caps[i].vma_offset) for i in range(PYXLIO_VMA_N_CAPS)]


def _vma_caps(vma_mask: int, ioctl_ok: bool = True) -> Capability:
    """pyxlio's capabilities for a libvma support mask (bit 21 counted if ioctl_ok)."""
    return Capability(pyxlio_vma_caps_of(vma_mask, 1 if ioctl_ok else 0))


def _resolve_vma_at(address: int, version: int, trusted: bool) -> dict[str, object] | None:
    """Resolve a struct vma_api_t at `address` (test hook: a struct built in memory) as
    detection does; None when its layout cannot be told.  The members come back as
    addresses (0: not resolved)."""
    cdef xlio_ops_t ops
    if pyxlio_resolve_vma_ops(<const void *><uintptr_t>address, version, 1 if trusted else 0,
                              &ops) != 0:
        return None
    return {"layout": Layout(ops.layout), "cap_mask": ops.cap_mask,
            "native_mask": ops.native_mask, "size": ops.api_size,
            "register_recv_callback": <uintptr_t>ops.register_recv_callback,
            "recvfrom_zcopy": <uintptr_t>ops.recvfrom_zcopy,
            "free_packets": <uintptr_t>ops.free_packets,
            "add_conf_rule": <uintptr_t>ops.add_conf_rule,
            "thread_offload": <uintptr_t>ops.thread_offload,
            "get_socket_rings_num": <uintptr_t>ops.get_socket_rings_num,
            "get_socket_rings_fds": <uintptr_t>ops.get_socket_rings_fds,
            "dump_fd_stats": <uintptr_t>ops.dump_fd_stats,
            "ioctl": <uintptr_t>ops.ioctl}


def _layout_size(cap_mask: int) -> int:
    """The size of ``xlio_api_t`` a library with this cap_mask implies (:attr:`Api.size`)."""
    return pyxlio_layout_size(cap_mask)


# ---------------------------------------------------------------------------------------------
# Facts the engine reads (cimported through _api.pxd)
# ---------------------------------------------------------------------------------------------

cdef bint can_return_held() noexcept nogil:
    """A held packet can be given back (recvfrom_zcopy_free_packets exists): legacy only."""
    return OPS.free_packets != NULL


cdef int socket_rings_num(int fd) noexcept nogil:
    """XLIO's get_socket_rings_num(fd); -2 (errno untouched) where the loaded layout has none.

    Section 9: >= 1 for a socket XLIO offloads, 0 for one the kernel serves (bound loopback
    UDP, unconnected TCP), -1 for an unbound UDP socket or a descriptor that is not a socket."""
    if OPS.get_socket_rings_num == NULL:
        return -2
    return OPS.get_socket_rings_num(fd)


cdef int provider_started() noexcept nogil:
    """1 started, 0 not (yet, or it failed), -1 cannot tell; errno preserved.  dump_fd_stats
    answers -1 only before the global init, and fd -1 names no socket: nothing is printed."""
    cdef int saved = errno, rc
    if API_PTR == NULL or OPS.dump_fd_stats == NULL:
        return -1
    rc = OPS.dump_fd_stats(-1, 8)
    set_errno(saved)
    return 1 if rc == 0 else 0


# Set (for good) once XLIO was handed a function that takes the GIL: a receive callback's
# trampoline or a user allocator.  Until then no thread inside XLIO can be waiting for the GIL
# while it holds one of XLIO's locks, so a NON-BLOCKING provider call may be made with the GIL
# held (no deadlock is possible), which saves two GIL hand-overs per receive and per free.
# Sticky: a trampoline that was registered may still be entered late by another thread.
cdef int _provider_calls_python = 0


cdef bint provider_calls_python() noexcept nogil:
    return _provider_calls_python != 0


cdef void note_provider_calls_python() noexcept nogil:
    global _provider_calls_python
    _provider_calls_python = 1


cdef int offload_state(int fd) noexcept nogil:
    """1 offloaded, 0 not, -1 cannot be known (now): from get_socket_rings_num.

    No XLIO: 0.  A layout without get_socket_rings_num (3.60, 3.61+, 3.94x): -1.  Else the
    ring count: >= 1 -> 1, 0 -> 0, -1 (unbound, not a socket, or unknown to XLIO) -> -1.
    errno is preserved."""
    cdef int saved = errno, n
    if API_PTR == NULL:
        return 0
    n = socket_rings_num(fd)
    set_errno(saved)
    if n >= 1:
        return 1
    if n == 0:
        return 0
    return -1


def _offload_state(fd: int) -> bool | None:
    """offload_state(fd) as the engine reads it: True / False / None (cannot be known)."""
    cdef int c_fd = fd
    cdef int rc
    with nogil:
        rc = offload_state(c_fd)
    return None if rc < 0 else rc == 1


# ---------------------------------------------------------------------------------------------
# The control facade
# ---------------------------------------------------------------------------------------------

cdef int _fd_of(object sock_or_fd, str what) except -2:
    if isinstance(sock_or_fd, bool):
        raise TypeError(f"{what} must be a socket or a file descriptor, not bool")
    if isinstance(sock_or_fd, int):
        fd = sock_or_fd
    elif hasattr(sock_or_fd, "fileno"):
        fd = sock_or_fd.fileno()
    else:
        raise TypeError(f"{what} must be a socket or a file descriptor, not "
                        f"{type(sock_or_fd).__name__}")
    if not isinstance(fd, int) or fd < 0 or fd > 0x7FFFFFFF:
        raise ValueError(f"{what} is not an open socket (fd {fd})")
    return fd


cdef str _not_started(str call, int err):
    """XLIO answers -1 before its global initialisation, with no errno to tell it by."""
    return ((os.strerror(err) + ": " if err else "") +
            f"{call} answered -1; XLIO refuses it while it has not started yet (it starts with "
            "the first AF_INET/AF_INET6 socket or epoll of the process)")


def add_conf_rule(rule: object) -> None:
    """Add a libxlio.conf transport rule for sockets created from now on.

    `rule` is a string (``"use os udp_receiver *:5000"``) or a :class:`pyxlio.rules.Rule`.
    pyxlio checks it against the grammar first and raises :class:`pyxlio.rules.RuleSyntaxError`
    (a ValueError) naming the bad token, so XLIO's parser, which refuses every later rule after
    one syntax error, is never poisoned.  XLIO puts the rule at the head of its list: the most
    recently added rule wins.  The offload transport is written ``vma`` for libxlio <= 3.51
    (legacy layout) and ``xlio`` for the newer layouts, whose parsers know that word.
    """
    from pyxlio import rules

    parsed = rules.coerce(rule)
    _require(<void *>OPS.add_conf_rule, "add_conf_rule")
    # libxlio <= 3.51 parses the offload keyword `vma` (fact sheet, checked on 3.51.1); the
    # newer parsers (3.60+ layouts) know `xlio`.  Either way XLIO only sees a keyword it knows.
    # libvma's parser (libvma.conf) knows `vma` only, as 3.51's does.
    text = parsed.format(offload_keyword="vma" if OPS.layout in (PYXLIO_LAYOUT_LEGACY,
                                                                 PYXLIO_LAYOUT_VMA) else "xlio")
    data = text.encode("ascii")
    cdef const char *line = data
    cdef int rc
    with nogil:
        rc = OPS.add_conf_rule(line)
    if rc != 0:
        raise XlioError(errno or EINVAL, f"XLIO refused the rule {text!r} (rc {rc})",
                        "add_conf_rule")


cdef unsigned long _thread_ident(object thread) except? 0:
    if thread is None:
        return threading.get_ident()
    if isinstance(thread, threading.Thread):
        if thread.ident is None:
            raise ValueError(f"thread {thread.name!r} has not started: it has no ident yet")
        return thread.ident
    if isinstance(thread, bool) or not isinstance(thread, int):
        raise TypeError(f"thread must be a threading.Thread, an ident (int) or None, not "
                        f"{type(thread).__name__}")
    if not 0 < thread < 2 ** 64:
        raise ValueError(f"thread ident {thread} is out of range (1 .. 2**64-1)")
    return thread


_offload_states: dict[int, bool] = {}


def thread_offload(enabled: bool, thread: object = None) -> None:
    """Offload (True) or not (False) the sockets that `thread` creates from now on.

    `thread` is a :class:`threading.Thread`, a thread ident (``threading.get_ident()``) or None
    for the calling thread.  XLIO refuses this before its global initialisation (the first
    AF_INET socket or epoll of the process): :class:`pyxlio.XlioError` then.
    """
    if not isinstance(enabled, (bool, int)):
        raise TypeError(f"enabled must be a bool, not {type(enabled).__name__}")
    cdef unsigned long tid = _thread_ident(thread)
    _require(<void *>OPS.thread_offload, "thread_offload")
    cdef int on = 1 if enabled else 0
    cdef int rc
    set_errno(0)
    with nogil:
        rc = OPS.thread_offload(on, tid)
    if rc != 0:
        raise XlioError(errno, _not_started("thread_offload", errno), "thread_offload")
    _offload_states[tid] = bool(enabled)


def thread_offload_state(thread: object = None) -> bool:
    """The offload state pyxlio last set for `thread` (XLIO's default, True, if never set)."""
    return _offload_states.get(_thread_ident(thread), True)


class offload:
    """Context manager: offload (or not) the sockets this thread creates inside the block.

    ``with pyxlio.offload(False): s = socket(...)`` makes ``s`` a kernel socket; the thread's
    previous state is restored on exit, even on error.
    """

    def __init__(self, enabled: bool) -> None:
        if not isinstance(enabled, (bool, int)):
            raise TypeError(f"enabled must be a bool, not {type(enabled).__name__}")
        self.enabled = bool(enabled)
        self._previous: list[bool] = []

    def __enter__(self) -> "offload":
        previous = thread_offload_state()
        thread_offload(self.enabled)
        self._previous.append(previous)
        return self

    def __exit__(self, *exc: object) -> None:
        thread_offload(self._previous.pop())


cdef int _require_socket(int fd, str call) except -1:
    """XlioError unless `fd` is an open socket.  A real libxlio 3.51.1 answers a pipe or a
    closed fd with success (dump_fd_stats: 0, printing nothing; get_socket_rings_num: 0 rings),
    so the answer would say nothing: pyxlio says what is wrong instead."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise XlioError(exc.errno or EBADF, f"fd {fd} is not open", call) from None
    if not _stat.S_ISSOCK(mode):
        raise XlioError(ENOTSOCK, f"fd {fd} is not a socket", call)
    return 0


def dump_fd_stats(sock_or_fd: object = 0, level: int = LogLevel.INFO) -> None:
    """Print XLIO's statistics of a socket (or of all sockets: fd 0) through XLIO's logger.

    Nothing shows when `level` is above XLIO_TRACELEVEL.  `level` is a :class:`pyxlio.LogLevel`
    or an int in -1..8.
    """
    cdef int fd = _fd_of(sock_or_fd, "sock_or_fd")
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"level must be a pyxlio.LogLevel or an int, not {type(level).__name__}")
    if not -1 <= level <= 8:
        raise ValueError(f"level {level} is out of range: XLIO's log levels are -1..8")
    _require(<void *>OPS.dump_fd_stats, "dump_fd_stats")
    if fd != 0:
        _require_socket(fd, "dump_fd_stats")
    cdef int lvl = level
    cdef int rc
    set_errno(0)
    with nogil:
        rc = OPS.dump_fd_stats(fd, lvl)
    if rc != 0:
        raise XlioError(errno, _not_started("dump_fd_stats", errno) +
                        (f"; or fd {fd} is not a socket XLIO knows" if fd else ""),
                        "dump_fd_stats")


def socket_rings(sock: object) -> list[int]:
    """The file descriptors of the XLIO rings that serve `sock` (empty if it has none)."""
    cdef int fd = _fd_of(sock, "sock")
    _require(<void *>OPS.get_socket_rings_num, "get_socket_rings_num")
    _require(<void *>OPS.get_socket_rings_fds, "get_socket_rings_fds")
    _require_socket(fd, "get_socket_rings_num")
    cdef int n, got
    with nogil:
        n = OPS.get_socket_rings_num(fd)
    if n < 0:
        raise_xlio(errno, "get_socket_rings_num", f"fd {fd}")
    if n == 0:
        return []
    cdef int[64] fds
    if n > 64:
        n = 64
    with nogil:
        got = OPS.get_socket_rings_fds(fd, fds, n)
    if got < 0:
        raise_xlio(errno, "get_socket_rings_fds", f"fd {fd}")
    return [fds[i] for i in range(min(got, n))]


# ---------------------------------------------------------------------------------------------
# User allocators (ioctl CMSG_XLIO_IOCTL_USER_ALLOC)
# ---------------------------------------------------------------------------------------------

cdef object _py_alloc = None
cdef object _py_free = None
_allocator: dict[str, object] = {"kind": None, "pools": None}
_allocator_errors: list[BaseException] = []
_py_alloc_calls = 0
_py_free_calls = 0
_py_blocks: set[int] = set()       # addresses the Python alloc returned, not yet freed

# A block from a Python alloc must start on this boundary: a cache line.  The emulator cuts its
# pool in 64-byte strides from the block's start and a NIC moves whole cache lines, so a block
# that starts mid-line costs every buffer an extra line (and a real XLIO carves its buffers at
# page-multiple offsets from the start, so the start's alignment is every buffer's).  mmap,
# posix_memalign and aligned numpy buffers all qualify; plain malloc (16 bytes) does not.
USER_ALLOC_ALIGN = 64
# How long, at exit, Python waits for an allocator call still inside it (then exits anyway).
cdef long _EXIT_WAIT_MS = 5000


cdef void _report(BaseException exc, str who) noexcept:
    """Keep an error that happened where nobody can catch it, and show it on stderr."""
    try:
        _allocator_errors.append(exc)
        import traceback
        sys.stderr.write(f"pyxlio: error in {who} (kept in "
                         "pyxlio.allocator_state()['errors']):\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    except BaseException:
        pass


def _at_python_exit() -> None:
    """atexit: from now on no allocator call enters Python (XLIO may call after finalization)."""
    cdef int rc
    with nogil:
        rc = pyxlio_py_close(_EXIT_WAIT_MS)
    if rc != 0:
        sys.stderr.write("pyxlio: an allocator call was still running in Python "
                         f"{_EXIT_WAIT_MS} ms into the exit; exiting anyway\n")


atexit.register(_at_python_exit)


cdef object _checked_block(object address, size_t size):
    """The address a Python alloc returned, if XLIO can use it for `size` bytes; else raise."""
    if isinstance(address, bool):
        raise TypeError(f"alloc({size}) must return an address (int), not bool")
    try:
        address = operator.index(address)
    except TypeError:
        raise TypeError(f"alloc({size}) must return an address (int), not "
                        f"{type(address).__name__}") from None
    if address == 0:
        raise ValueError(f"alloc({size}) returned NULL (0): no memory for XLIO's pool")
    if not 0 < address < 2 ** 64:
        raise ValueError(f"alloc({size}) returned {address:#x}: not an address "
                         "(0 < address < 2**64)")
    if address % USER_ALLOC_ALIGN:
        raise ValueError(f"alloc({size}) returned {address:#x}: not aligned to "
                         f"{USER_ALLOC_ALIGN} bytes (use mmap or posix_memalign)")
    cdef size_t span = size if size else 1
    if address > 2 ** 64 - span:
        raise ValueError(f"alloc({size}) returned {address:#x}: {size} bytes from there run "
                         "past the end of the address space")
    cdef uintptr_t lo = address, bad = 0
    cdef char perms[8]
    cdef int rc
    perms[0] = 0
    with nogil:
        rc = pyxlio_range_check(lo, span, &bad, perms)
    if rc == 1:
        raise ValueError(f"alloc({size}) returned {address:#x}, but {bad:#x} (byte "
                         f"{bad - lo} of the block) is not mapped in this process")
    if rc == 2:
        raise ValueError(f"alloc({size}) returned {address:#x}, but {bad:#x} (byte "
                         f"{bad - lo} of the block) lies in a mapping with permissions "
                         f"{perms.decode('ascii', 'replace')}: the block must be readable "
                         "and writable")
    return address


cdef void *_alloc_in_python(size_t size) noexcept with gil:
    global _py_alloc_calls
    try:
        _py_alloc_calls += 1
        address = _checked_block(_py_alloc(size), size)
        _py_blocks.add(address)
        return <void *><uintptr_t>address
    except BaseException as exc:
        _report(exc, "the user allocator's alloc")
        return NULL


cdef void _free_in_python(void *ptr) noexcept with gil:
    global _py_free_calls
    cdef uintptr_t address = <uintptr_t>ptr
    try:
        _py_free_calls += 1
        if address not in _py_blocks:
            raise ValueError(f"XLIO asked to free {address:#x}, which the Python alloc did not "
                             "return (or which was freed already): free(address) not called")
        _py_blocks.discard(address)
        _py_free(address)
    except BaseException as exc:
        _report(exc, "the user allocator's free")


cdef void *_alloc_trampoline(size_t size) noexcept nogil:
    """XLIO -> Python alloc(size) -> a checked address, or NULL (reported).

    Called without the GIL, from the thread that starts XLIO.  Once Python exits (its atexit
    hooks) or has finalized, Python is not called: XLIO gets NULL, with a line on stderr."""
    cdef void *p
    if not pyxlio_py_enter():
        pyxlio_say_alloc_after_exit(size)
        return NULL
    p = _alloc_in_python(size)
    pyxlio_py_leave()
    return p


cdef void _free_trampoline(void *ptr) noexcept nogil:
    """XLIO -> Python free(address).

    A real libxlio frees its pools from a library destructor, after Python has finalized.
    Python cannot be called then: the block is leaked, silently (the process is ending and the
    kernel takes its memory back)."""
    if not pyxlio_py_enter():
        return
    _free_in_python(ptr)
    pyxlio_py_leave()


cdef void _builtin_report_py(int err, const char *kind, size_t size, void *p,
                             int errnum) noexcept with gil:
    cdef uintptr_t address = <uintptr_t>p
    try:
        name = kind.decode()
        if err == PYXLIO_BLOCK_UNKNOWN:
            exc = ValueError(f"XLIO asked the built-in allocator to free {address:#x}, an "
                             "address it never gave (or freed already): not passed to "
                             "munmap/free")
        elif err == PYXLIO_BLOCK_TABLE:
            exc = MemoryError(f"the {name} allocator cannot grow its block table: the "
                              f"{size}-byte block went back and XLIO gets NULL")
        else:
            exc = MemoryError(f"the {name} allocator cannot get {size} bytes for XLIO's pool "
                              f"({os.strerror(errnum)}): XLIO gets NULL")
        _report(exc, f"the {name} allocator")
    except BaseException:
        pass


cdef void _builtin_report(int err, const char *kind, size_t size, void *p,
                          int errnum) noexcept nogil:
    if pyxlio_py_enter():
        _builtin_report_py(err, kind, size, p, errnum)
        pyxlio_py_leave()
    else:
        pyxlio_say_builtin(err, kind, size, p, errnum)


cdef void _huge_fallback_warning() noexcept with gil:
    try:
        import warnings
        warnings.warn("pyxlio: hugepages are not available (MAP_HUGETLB failed); "
                      "XLIO's pool uses page-aligned anonymous memory instead",
                      RuntimeWarning, stacklevel=1)
    except BaseException as exc:
        _report(exc, "the hugepages allocator (warning)")


cdef void *_alloc_hugepages(size_t size) noexcept nogil:
    cdef int err = 0, first_fallback = 0
    cdef void *p = pyxlio_alloc_hugepages_c(size, &err, &first_fallback)
    cdef int errnum = errno
    if p == NULL:
        _builtin_report(err, "hugepages", size, NULL, errnum)
    elif first_fallback and pyxlio_py_enter():
        _huge_fallback_warning()
        pyxlio_py_leave()
    return p


cdef void *_alloc_aligned(size_t size) noexcept nogil:
    cdef int err = 0
    cdef void *p = pyxlio_alloc_aligned_c(size, &err)
    if p == NULL:
        _builtin_report(err, "aligned", size, NULL, errno)
    return p


cdef void _free_builtin(void *p) noexcept nogil:
    if pyxlio_free_builtin_c(p) != PYXLIO_BLOCK_OK:
        _builtin_report(PYXLIO_BLOCK_UNKNOWN, "built-in", 0, p, 0)


_STARTERS = ("socket", "selectors", "asyncio", "subprocess", "ctypes.util")


cdef str choose_allocator(object allocator, object free, pyxlio_alloc_fn *alloc_fn,
                          pyxlio_free_fn *free_fn):
    """Check `allocator`/`free` as set_allocator() does and give the C functions XLIO is to
    call; the kind: "hugepages", "aligned" or "python".  Nothing is installed yet."""
    if isinstance(allocator, str):
        if free is not None:
            raise TypeError("free is only for a Python alloc callable, not with a built-in "
                            f"allocator ({allocator!r})")
        if allocator == "hugepages":
            alloc_fn[0], free_fn[0] = _alloc_hugepages, _free_builtin
        elif allocator == "aligned":
            alloc_fn[0], free_fn[0] = _alloc_aligned, _free_builtin
        else:
            raise ValueError(f"unknown allocator {allocator!r}: use 'hugepages', 'aligned' or "
                             "a callable alloc(size) -> address with free(address)")
        return allocator
    if callable(allocator):
        if not callable(free):
            raise TypeError("a Python allocator needs free: a callable free(address)")
        alloc_fn[0], free_fn[0] = _alloc_trampoline, _free_trampoline
        return "python"
    raise TypeError(f"allocator must be 'hugepages', 'aligned' or a callable, not "
                    f"{type(allocator).__name__}")


cdef tuple install_python_allocator(object alloc, object free):
    """Make alloc/free the Python pair the trampolines call; the previous pair comes back."""
    global _py_alloc, _py_free
    previous = (_py_alloc, _py_free)
    _py_alloc, _py_free = alloc, free
    return previous


cdef void restore_python_allocator(tuple previous) noexcept:
    global _py_alloc, _py_free
    _py_alloc, _py_free = previous


cdef void allocator_registered(str kind, int pools) noexcept:
    """XLIO accepted the allocator: allocator_state() reports it from now on."""
    _allocator["kind"] = kind
    _allocator["pools"] = AllocTarget(pools)


cdef int python_enter() noexcept nogil:
    """A C callback may enter Python now (not once Python exits): see pyxlio_py_enter."""
    return pyxlio_py_enter()


cdef void python_leave() noexcept nogil:
    pyxlio_py_leave()


def set_allocator(allocator: object = "hugepages", free: object = None, *,
                  pools: int = AllocTarget.BOTH) -> None:
    """Register a user allocator for XLIO's buffer pools (must run before XLIO starts).

    `allocator` is ``"hugepages"`` (MAP_HUGETLB, falling back to page-aligned anonymous memory
    with a RuntimeWarning), ``"aligned"`` (page-aligned heap memory), or a Python callable
    ``alloc(size) -> address`` used together with `free` (``free(address)``).  XLIO calls alloc
    once, from the thread that starts it, without the GIL: pyxlio's trampolines take the GIL and
    report (never lose) errors: see ``allocator_state()["errors"]`` (also shown on stderr).

    The address a Python alloc returns is checked before XLIO sees it: an int (or
    ``__index__``), not 0, aligned to 64 bytes (``USER_ALLOC_ALIGN``: a cache line; mmap and
    posix_memalign memory qualify, plain malloc does not), and all `size` bytes from it mapped
    readable and writable in this process (``/proc/self/maps``).  The memory must stay mapped
    until free is called: keep the object that owns it.  Anything else (an exception too) is
    reported and XLIO gets NULL.  What XLIO does with NULL: pyxlio's emulator serves its pool
    from its own mmap instead (a line on stderr); a real libxlio (3.51) does not fall back ("we
    don't try other allocation methods"): its global initialisation fails, so the socket() or
    epoll that started it fails (or the process exits, with XLIO_EXCEPTION_HANDLING=-2), and
    XLIO does not try again: later sockets are the kernel's, not offloaded.

    free is called only while Python runs.  A real libxlio frees its pools from a library
    destructor, after Python has finalized: then the block is leaked, silently (the process is
    ending; the kernel takes it back).  An alloc asked for once Python exits gets NULL.  A free
    of an address alloc did not return is reported and not passed on.  The built-in allocators
    keep every block they give (no limit) and refuse, with a report, to free any other address.

    `pools` says which pools it serves (:class:`pyxlio.AllocTarget`: RX, TX or BOTH).

    XLIO accepts this only before its global initialisation, which the first AF_INET socket or
    epoll starts, and ``import socket`` / ``selectors`` / ``asyncio`` / ``subprocess`` /
    ``ctypes.util`` already create an epoll.  Call it at the very top of the program, or set
    ``PYXLIO_ALLOCATOR=hugepages`` to have ``import pyxlio`` do it.
    """
    if isinstance(pools, bool) or not isinstance(pools, int):
        raise TypeError(f"pools must be a pyxlio.AllocTarget, not {type(pools).__name__}")
    if pools not in (1, 2, 3):
        raise ValueError(f"pools must be AllocTarget.RX, TX or BOTH, not {pools!r}")
    cdef pyxlio_alloc_fn alloc_fn
    cdef pyxlio_free_fn free_fn
    kind = choose_allocator(allocator, free, &alloc_fn, &free_fn)
    if (OPS.ioctl == NULL and API_PTR != NULL
            and OPS.layout in (PYXLIO_LAYOUT_360, PYXLIO_LAYOUT_361)):
        # 3.60 removed the extra ioctl; the allocator goes to xlio_init_ex's memory_alloc
        # (src/core/sock/sock-extra.cpp, 3.70.2), which pyxlio.ultra.init() passes.
        raise UnsupportedError(
            "ioctl",
            f"the loaded XLIO (layout {Layout(OPS.layout)}) has no extra ioctl (libxlio 3.60 "
            "removed it): give the allocator to pyxlio.ultra.init(allocator=..., free=...) "
            "(xlio_init_ex's memory_alloc) instead, before XLIO starts (its first socket or "
            "epoll)")
    _require(<void *>OPS.ioctl, "ioctl")

    cdef unsigned char msg[64]
    cdef size_t length = pyxlio_build_user_alloc_cmsg(msg, <uint8_t>pools, alloc_fn, free_fn)
    if kind == "python":
        # Set before the call: XLIO may call alloc at any time once it has the message.
        previous = install_python_allocator(allocator, free)
    cdef int rc
    note_provider_calls_python()     # every allocator may reach Python (its reports do)
    set_errno(0)
    with nogil:
        rc = OPS.ioctl(msg, length)
    if rc != 0:
        err = errno or EINVAL
        if kind == "python":
            restore_python_allocator(previous)
        started = [m for m in _STARTERS if m in sys.modules]
        hint = (" already imported: " + ", ".join(started) + " (each starts XLIO)") if started else ""
        raise XlioError(
            err,
            "XLIO refused the allocator: it can only be registered before XLIO starts, i.e. "
            "before the first AF_INET/AF_INET6 socket or epoll of the process. `import socket`, "
            "`selectors`, `asyncio`, `subprocess` and `ctypes.util` create an epoll at import: "
            "register first thing, or set PYXLIO_ALLOCATOR=hugepages|aligned[:rx|tx] so that "
            "`import pyxlio` does it" + hint,
            "ioctl",
        )
    allocator_registered(kind, pools)


def allocator_state() -> dict[str, object]:
    """What pyxlio registered as XLIO's allocator, and what XLIO asked of it so far.

    ``blocks`` counts the blocks given to XLIO and not freed yet; ``errors`` holds every error
    reported by the allocator's trampolines (exceptions, refused addresses, bad frees)."""
    kind = _allocator["kind"]
    python = kind == "python"
    return {
        "kind": kind,
        "pools": _allocator["pools"],
        "registered": kind is not None,
        "alloc_calls": _py_alloc_calls if python else pyxlio_alloc_calls,
        "alloc_bytes": None if python else pyxlio_alloc_bytes,
        "free_calls": _py_free_calls if python else pyxlio_free_calls,
        "hugepage_fallback": bool(pyxlio_huge_fallback),
        "blocks": len(_py_blocks) if python else pyxlio_builtin_blocks(),
        "errors": list(_allocator_errors),
    }


def _apply_env_allocator(spec: str) -> None:
    """PYXLIO_ALLOCATOR=hugepages|aligned[:rx|tx|both], applied by ``import pyxlio``."""
    name, _, pools_text = spec.strip().partition(":")
    pools = {"": 3, "both": 3, "rx": 2, "tx": 1, "rxtx": 3}.get(pools_text.strip().lower())
    if pools is None:
        raise ValueError(f"PYXLIO_ALLOCATOR={spec!r}: pools must be rx, tx or both")
    set_allocator(name.strip().lower(), pools=pools)


# ---------------------------------------------------------------------------------------------
# Private test hooks (tests/test_allocator.py, tests/test_fork.py)
# ---------------------------------------------------------------------------------------------

def _fork_generation() -> int:
    """fork_generation(), as the engine reads it."""
    return fork_generation()


def _builtin_alloc(kind: str, size: int) -> int:
    """Call the built-in allocator `kind` as XLIO would (0 when it gives NULL)."""
    cdef size_t n = size
    cdef void *p
    if kind == "hugepages":
        with nogil:
            p = _alloc_hugepages(n)
    elif kind == "aligned":
        with nogil:
            p = _alloc_aligned(n)
    else:
        raise ValueError(f"no built-in allocator {kind!r}")
    return <uintptr_t>p


def _builtin_free(address: int) -> None:
    """Call the built-in allocators' free as XLIO would."""
    cdef void *p = <void *><uintptr_t>address
    with nogil:
        _free_builtin(p)


def _trampoline_at_exit(which: str, value: int) -> None:
    """Call the alloc (`value` = size) or free (`value` = address) trampoline from a C atexit
    handler: after Python finalized, as a real libxlio frees its pools."""
    if which not in ("alloc", "free"):
        raise ValueError(f"which must be 'alloc' or 'free', not {which!r}")
    if pyxlio_test_at_exit(0 if which == "alloc" else 1, value, _alloc_trampoline,
                           _free_trampoline) != 0:
        raise OSError("atexit() refused the handler")
