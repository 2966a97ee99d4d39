/*
 * pyxlio's own description of the XLIO Extra API binary interface (x86_64, LP64).
 *
 * Written from the facts in the project's ABI fact sheet (checked against libxlio 3.51.1);
 * this is not the vendor header.  Every struct is packed (alignment 1), every pointer and
 * size member is 8 bytes.  Shared by the Cython extension and the emulator, so both sides
 * agree on every byte; tests pin each size, offset and constant.
 */
#ifndef PYXLIO_XLIO_ABI_H
#define PYXLIO_XLIO_ABI_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PYXLIO_PACKED __attribute__((packed))

/* ---- discovery ------------------------------------------------------------------------ */
#define PYXLIO_SO_XLIO_GET_API 2800          /* getsockopt(-2, SOL_SOCKET, 2800, &ptr, &len) */
#define PYXLIO_XLIO_MAGIC 0x4f494c584144564eULL /* "NVDAXLIO" read as a little-endian u64 */

/* ---- cap_mask bits (XLIO_EXTRA_API_*) ------------------------------------------------- */
enum {
    PYXLIO_CAP_REGISTER_RECV_CALLBACK = 0,
    PYXLIO_CAP_RECVFROM_ZCOPY = 1,
    PYXLIO_CAP_RECVFROM_ZCOPY_FREE_PACKETS = 2,
    PYXLIO_CAP_ADD_CONF_RULE = 3,
    PYXLIO_CAP_THREAD_OFFLOAD = 4,
    PYXLIO_CAP_GET_SOCKET_RINGS_NUM = 5,
    PYXLIO_CAP_GET_SOCKET_RINGS_FDS = 6,
    PYXLIO_CAP_SOCKETXTREME_POLL = 7,
    PYXLIO_CAP_SOCKETXTREME_FREE_PACKETS = 8,
    PYXLIO_CAP_SOCKETXTREME_REF_XLIO_BUFF = 9,
    PYXLIO_CAP_SOCKETXTREME_FREE_XLIO_BUFF = 10,
    PYXLIO_CAP_DUMP_FD_STATS = 11,
    PYXLIO_CAP_IOCTL = 12,
    PYXLIO_CAP_XLIO_SOCKET = 13,
};
#define PYXLIO_CAP(bit) (1ULL << (bit))

/* ---- flags and constants --------------------------------------------------------------- */
#define PYXLIO_MSG_XLIO_ZCOPY_FORCE 0x01000000 /* in: fail rather than copy */
#define PYXLIO_MSG_XLIO_ZCOPY 0x00040000       /* out: buffer holds descriptors (rc > 0 only) */
#define PYXLIO_SND_FLAGS_DUMMY 0x400           /* == MSG_SYN: dummy send, dropped by the NIC */
#define PYXLIO_CMSG_IOCTL_USER_ALLOC 2900
#define PYXLIO_USER_ALLOC_TX 1
#define PYXLIO_USER_ALLOC_RX 2
#define PYXLIO_USER_ALLOC_TX_ZC 4              /* only up to 3.20.3 */
#define PYXLIO_USER_ALLOC_PAYLOAD 17           /* u8 flags, alloc fn, free fn; unaligned */
#define PYXLIO_USER_ALLOC_CMSG_LEN 33          /* CMSG_LEN(17)   */
#define PYXLIO_USER_ALLOC_CMSG_SPACE 40        /* CMSG_SPACE(17) */

/* vlog_levels_t: dump_fd_stats level, valid range -1..8 */
enum {
    PYXLIO_LOG_NONE = -1, PYXLIO_LOG_PANIC = 0, PYXLIO_LOG_ERROR = 1, PYXLIO_LOG_WARNING = 2,
    PYXLIO_LOG_INFO = 3, PYXLIO_LOG_DETAILS = 4, PYXLIO_LOG_DEBUG = 5, PYXLIO_LOG_FINE = 6,
    PYXLIO_LOG_FINER = 7, PYXLIO_LOG_ALL = 8,
};

/* receive-callback verdicts (xlio_recv_callback_retval_t) */
typedef enum {
    PYXLIO_PACKET_DROP = 0,
    PYXLIO_PACKET_RECV = 1,
    PYXLIO_PACKET_HOLD = 2,
} pyxlio_verdict_t;

/* ---- zero-copy receive structures ------------------------------------------------------ */
/* One packet: 16 + 16 * sz_iov bytes.  Walk with pyxlio_zc_next(), never pkts[i] for i > 0. */
typedef struct PYXLIO_PACKED pyxlio_zc_packet {
    void *packet_id;      /* @0 */
    size_t sz_iov;        /* @8 */
    struct iovec iov[];   /* @16 */
} pyxlio_zc_packet_t;

typedef struct PYXLIO_PACKED pyxlio_zc_packets {
    size_t n_packet_num;  /* @0 */
    unsigned char pkts[]; /* @8: packets back to back */
} pyxlio_zc_packets_t;

#define PYXLIO_ZC_HEADER_BYTES 8   /* n_packet_num */
#define PYXLIO_ZC_PACKET_BYTES 16  /* packet_id + sz_iov */
#define PYXLIO_ZC_IOV_BYTES 16     /* one struct iovec */
/* smallest buffer recvfrom_zcopy accepts: UDP 24 + 16 per fragment, TCP 40 */
#define PYXLIO_ZC_UDP_MIN(nfrags) (PYXLIO_ZC_HEADER_BYTES + PYXLIO_ZC_PACKET_BYTES + \
                                   PYXLIO_ZC_IOV_BYTES * (size_t)(nfrags))
#define PYXLIO_ZC_TCP_MIN 40

static inline size_t pyxlio_zc_packet_bytes(size_t sz_iov) {
    return PYXLIO_ZC_PACKET_BYTES + PYXLIO_ZC_IOV_BYTES * sz_iov;
}
static inline pyxlio_zc_packet_t *pyxlio_zc_first(pyxlio_zc_packets_t *p) {
    return (pyxlio_zc_packet_t *)(void *)p->pkts;
}
static inline pyxlio_zc_packet_t *pyxlio_zc_next(pyxlio_zc_packet_t *p) {
    return (pyxlio_zc_packet_t *)(void *)((unsigned char *)p + pyxlio_zc_packet_bytes(p->sz_iov));
}
/* Unaligned-safe readers of a packet's iovec k (the packed layout may leave it unaligned). */
static inline void *pyxlio_zc_iov_base(const pyxlio_zc_packet_t *p, size_t k) {
    void *b; memcpy(&b, (const unsigned char *)p + PYXLIO_ZC_PACKET_BYTES + PYXLIO_ZC_IOV_BYTES * k, sizeof b);
    return b;
}
static inline size_t pyxlio_zc_iov_len(const pyxlio_zc_packet_t *p, size_t k) {
    size_t n; memcpy(&n, (const unsigned char *)p + PYXLIO_ZC_PACKET_BYTES + PYXLIO_ZC_IOV_BYTES * k + 8, sizeof n);
    return n;
}

/* Packet info handed to a receive callback (80 bytes, packed). */
typedef struct PYXLIO_PACKED pyxlio_recv_info {
    size_t struct_sz;                        /* @0 */
    void *packet_id;                         /* @8 */
    const struct sockaddr *src;              /* @16 */
    const struct sockaddr *dst;              /* @24 */
    size_t payload_sz;                       /* @32 (3.51.1 leaves it 0: sum the iovecs) */
    uint32_t socket_ready_queue_pkt_count;   /* @40 */
    uint32_t socket_ready_queue_byte_count;  /* @44 */
    struct timespec hw_timestamp;            /* @48 */
    struct timespec sw_timestamp;            /* @64 */
} pyxlio_recv_info_t;

typedef pyxlio_verdict_t (*pyxlio_recv_callback_t)(int fd, size_t sz_iov, struct iovec iov[],
                                                   pyxlio_recv_info_t *info, void *context);

/* ---- function-pointer types ------------------------------------------------------------ */
typedef int (*pyxlio_recvfrom_zcopy_fn)(int s, void *buf, size_t len, int *flags,
                                        struct sockaddr *from, socklen_t *fromlen);
typedef int (*pyxlio_free_packets_fn)(int s, pyxlio_zc_packet_t *pkts, size_t count);
typedef int (*pyxlio_add_conf_rule_fn)(const char *config_line);
typedef int (*pyxlio_thread_offload_fn)(int offload, pthread_t tid);
typedef int (*pyxlio_get_socket_rings_num_fn)(int fd);
typedef int (*pyxlio_get_socket_rings_fds_fn)(int fd, int *ring_fds, int ring_fds_sz);
typedef int (*pyxlio_dump_fd_stats_fn)(int fd, int log_level);
typedef int (*pyxlio_ioctl_fn)(void *cmsg_hdr, size_t cmsg_len);
typedef int (*pyxlio_register_recv_callback_fn)(int s, pyxlio_recv_callback_t cb, void *context);
typedef int (*pyxlio_socketxtreme_fn)(void); /* never called by pyxlio: socketXtreme is out of scope */

/* ---- struct xlio_api_t, one struct per layout ----------------------------------------- */
/* Legacy layout, libxlio 2.0 .. 3.51.x.  Ends at 80 (2.0-3.0), 120 (3.10-3.30.2) or 248. */
typedef struct PYXLIO_PACKED pyxlio_api_legacy {
    uint64_t magic;                                            /* 0 */
    uint64_t cap_mask;                                         /* 8 */
    pyxlio_recvfrom_zcopy_fn recvfrom_zcopy;                   /* 16  bit 1 */
    pyxlio_free_packets_fn recvfrom_zcopy_free_packets;        /* 24  bit 2 */
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 32  bit 3 */
    pyxlio_thread_offload_fn thread_offload;                   /* 40  bit 4 */
    pyxlio_get_socket_rings_num_fn get_socket_rings_num;       /* 48  bit 5 */
    pyxlio_get_socket_rings_fds_fn get_socket_rings_fds;       /* 56  bit 6 */
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 64  bit 11 */
    pyxlio_ioctl_fn ioctl;                                     /* 72  bit 12 */
    pyxlio_register_recv_callback_fn register_recv_callback;   /* 80  bit 0 */
    pyxlio_socketxtreme_fn socketxtreme_poll;                  /* 88  bit 7 */
    pyxlio_socketxtreme_fn socketxtreme_free_packets;          /* 96  bit 8 */
    pyxlio_socketxtreme_fn socketxtreme_ref_buff;              /* 104 bit 9 */
    pyxlio_socketxtreme_fn socketxtreme_free_buff;             /* 112 bit 10 */
    void *socket_api[16];                                      /* 120..240 bit 13 */
} pyxlio_api_legacy_t;

/* 3.60.x: zero-copy receive, rings, socketxtreme, ioctl and dummy send removed. */
typedef struct PYXLIO_PACKED pyxlio_api_360 {
    uint64_t magic;                                            /* 0 */
    uint64_t cap_mask;                                         /* 8 */
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 16 bit 3 */
    pyxlio_thread_offload_fn thread_offload;                   /* 24 bit 4 */
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 32 bit 11 */
    pyxlio_register_recv_callback_fn register_recv_callback;   /* 40 bit 0 */
    /* then the Socket API (bit 13) */
} pyxlio_api_360_t;

/* 3.61+ (3.70.2 checked): cap_mask 0x2818. */
typedef struct PYXLIO_PACKED pyxlio_api_361 {
    uint64_t magic;                                            /* 0 */
    uint64_t cap_mask;                                         /* 8 */
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 16 bit 3 */
    pyxlio_thread_offload_fn thread_offload;                   /* 24 bit 4 */
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 32 bit 11 */
    /* 40..: the TCP-only "Ultra" Socket API (bit 13) */
} pyxlio_api_361_t;

/* 3.94x (DOCA branch). */
typedef struct PYXLIO_PACKED pyxlio_api_394 {
    uint64_t magic;                                            /* 0 */
    uint64_t cap_mask;                                         /* 8 */
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 16 bit 3 */
    pyxlio_thread_offload_fn thread_offload;                   /* 24 bit 4 */
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 32 bit 11 */
    pyxlio_ioctl_fn ioctl;                                     /* 40 bit 12 */
    /* then the Socket API (bit 13) */
} pyxlio_api_394_t;

#define PYXLIO_API_LEGACY_SIZE_2_0 80
#define PYXLIO_API_LEGACY_SIZE_3_10 120
#define PYXLIO_API_LEGACY_SIZE_3_30_3 248

typedef enum {
    PYXLIO_LAYOUT_LEGACY = 0, /* 2.0 .. 3.51.x */
    PYXLIO_LAYOUT_360 = 1,
    PYXLIO_LAYOUT_361 = 2,    /* 3.61+ */
    PYXLIO_LAYOUT_394 = 3,    /* 3.94x DOCA */
} pyxlio_layout_t;

/* Telling the layouts apart: the fact sheet's rule, in one place. */
static inline pyxlio_layout_t pyxlio_layout_from_caps(uint64_t cap_mask) {
    if (cap_mask & PYXLIO_CAP(PYXLIO_CAP_RECVFROM_ZCOPY)) return PYXLIO_LAYOUT_LEGACY;
    if (cap_mask & PYXLIO_CAP(PYXLIO_CAP_REGISTER_RECV_CALLBACK)) return PYXLIO_LAYOUT_360;
    if (cap_mask & PYXLIO_CAP(PYXLIO_CAP_IOCTL)) return PYXLIO_LAYOUT_394;
    return PYXLIO_LAYOUT_361;
}

/* ---- one table of operations, whatever the layout ------------------------------------- */
/* The members pyxlio calls, resolved from the loaded layout: NULL where the member is absent
 * from the layout or its cap bit is clear. */
typedef struct pyxlio_ops {
    uint64_t cap_mask;
    int layout;                                   /* pyxlio_layout_t */
    pyxlio_recvfrom_zcopy_fn recvfrom_zcopy;
    pyxlio_free_packets_fn free_packets;
    pyxlio_add_conf_rule_fn add_conf_rule;
    pyxlio_thread_offload_fn thread_offload;
    pyxlio_get_socket_rings_num_fn get_socket_rings_num;
    pyxlio_get_socket_rings_fds_fn get_socket_rings_fds;
    pyxlio_dump_fd_stats_fn dump_fd_stats;
    pyxlio_ioctl_fn ioctl;
    pyxlio_register_recv_callback_fn register_recv_callback;
} pyxlio_ops_t;

/* Where each member sits in each layout (index: pyxlio_layout_t; -1: not in that layout). */
typedef struct { int bit; size_t ops_offset; long offset[4]; } pyxlio_member_t;
#define PYXLIO_AT(T, m) ((long)offsetof(T, m))
static const pyxlio_member_t pyxlio_members[] = {
    {PYXLIO_CAP_RECVFROM_ZCOPY, offsetof(pyxlio_ops_t, recvfrom_zcopy),
     {PYXLIO_AT(pyxlio_api_legacy_t, recvfrom_zcopy), -1, -1, -1}},
    {PYXLIO_CAP_RECVFROM_ZCOPY_FREE_PACKETS, offsetof(pyxlio_ops_t, free_packets),
     {PYXLIO_AT(pyxlio_api_legacy_t, recvfrom_zcopy_free_packets), -1, -1, -1}},
    {PYXLIO_CAP_ADD_CONF_RULE, offsetof(pyxlio_ops_t, add_conf_rule),
     {PYXLIO_AT(pyxlio_api_legacy_t, add_conf_rule), PYXLIO_AT(pyxlio_api_360_t, add_conf_rule),
      PYXLIO_AT(pyxlio_api_361_t, add_conf_rule), PYXLIO_AT(pyxlio_api_394_t, add_conf_rule)}},
    {PYXLIO_CAP_THREAD_OFFLOAD, offsetof(pyxlio_ops_t, thread_offload),
     {PYXLIO_AT(pyxlio_api_legacy_t, thread_offload), PYXLIO_AT(pyxlio_api_360_t, thread_offload),
      PYXLIO_AT(pyxlio_api_361_t, thread_offload), PYXLIO_AT(pyxlio_api_394_t, thread_offload)}},
    {PYXLIO_CAP_GET_SOCKET_RINGS_NUM, offsetof(pyxlio_ops_t, get_socket_rings_num),
     {PYXLIO_AT(pyxlio_api_legacy_t, get_socket_rings_num), -1, -1, -1}},
    {PYXLIO_CAP_GET_SOCKET_RINGS_FDS, offsetof(pyxlio_ops_t, get_socket_rings_fds),
     {PYXLIO_AT(pyxlio_api_legacy_t, get_socket_rings_fds), -1, -1, -1}},
    {PYXLIO_CAP_DUMP_FD_STATS, offsetof(pyxlio_ops_t, dump_fd_stats),
     {PYXLIO_AT(pyxlio_api_legacy_t, dump_fd_stats), PYXLIO_AT(pyxlio_api_360_t, dump_fd_stats),
      PYXLIO_AT(pyxlio_api_361_t, dump_fd_stats), PYXLIO_AT(pyxlio_api_394_t, dump_fd_stats)}},
    {PYXLIO_CAP_IOCTL, offsetof(pyxlio_ops_t, ioctl),
     {PYXLIO_AT(pyxlio_api_legacy_t, ioctl), -1, -1, PYXLIO_AT(pyxlio_api_394_t, ioctl)}},
    {PYXLIO_CAP_REGISTER_RECV_CALLBACK, offsetof(pyxlio_ops_t, register_recv_callback),
     {PYXLIO_AT(pyxlio_api_legacy_t, register_recv_callback),
      PYXLIO_AT(pyxlio_api_360_t, register_recv_callback), -1, -1}},
};

/* Fill `ops` from the xlio_api_t at `api`: the layout from cap_mask, then only the members
 * whose bit is set (so nothing past the size the layout implies is ever read).  Every read is
 * a memcpy: the struct is packed and the pointer need not be aligned. */
static inline void pyxlio_resolve_ops(const void *api, pyxlio_ops_t *ops) {
    const unsigned char *base = (const unsigned char *)api;
    uint64_t caps;
    memset(ops, 0, sizeof *ops);
    memcpy(&caps, base + 8, sizeof caps);
    ops->cap_mask = caps;
    ops->layout = (int)pyxlio_layout_from_caps(caps);
    for (size_t i = 0; i < sizeof pyxlio_members / sizeof pyxlio_members[0]; i++) {
        const pyxlio_member_t *m = &pyxlio_members[i];
        long off = m->offset[ops->layout];
        if (off >= 0 && (caps & PYXLIO_CAP(m->bit)))
            memcpy((unsigned char *)ops + m->ops_offset, base + off, sizeof(void *));
    }
}

/* ---- the user-allocator control message ------------------------------------------------ */
typedef void *(*pyxlio_alloc_fn)(size_t size);
typedef void (*pyxlio_free_fn)(void *ptr);

/* Build the 40-byte SOL_SOCKET/2900 message into buf (>= PYXLIO_USER_ALLOC_CMSG_SPACE).
 * Returns the cmsg_len to pass to ioctl (33). */
static inline size_t pyxlio_build_user_alloc_cmsg(unsigned char *buf, uint8_t flags,
                                                  pyxlio_alloc_fn alloc_fn, pyxlio_free_fn free_fn) {
    struct cmsghdr *c = (struct cmsghdr *)(void *)buf;
    memset(buf, 0, PYXLIO_USER_ALLOC_CMSG_SPACE);
    c->cmsg_len = PYXLIO_USER_ALLOC_CMSG_LEN;
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = PYXLIO_CMSG_IOCTL_USER_ALLOC;
    unsigned char *d = CMSG_DATA(c);
    d[0] = flags;
    memcpy(d + 1, &alloc_fn, sizeof alloc_fn);
    memcpy(d + 9, &free_fn, sizeof free_fn);
    return PYXLIO_USER_ALLOC_CMSG_LEN;
}

/* Compile-time pins of the facts (the test suite pins them again from Python). */
_Static_assert(sizeof(pyxlio_api_legacy_t) == 248, "legacy xlio_api_t is 248 bytes");
_Static_assert(offsetof(pyxlio_api_legacy_t, register_recv_callback) == 80, "callback @80");
_Static_assert(offsetof(pyxlio_api_legacy_t, socket_api) == 120, "socket API @120");
_Static_assert(offsetof(pyxlio_api_361_t, dump_fd_stats) == 32, "3.61 dump_fd_stats @32");
_Static_assert(sizeof(pyxlio_recv_info_t) == 80, "xlio_info_t is 80 bytes");
_Static_assert(offsetof(pyxlio_recv_info_t, sw_timestamp) == 64, "sw_timestamp @64");
_Static_assert(sizeof(pyxlio_zc_packet_t) == 16, "packet header is 16 bytes");
_Static_assert(CMSG_LEN(PYXLIO_USER_ALLOC_PAYLOAD) == PYXLIO_USER_ALLOC_CMSG_LEN, "CMSG_LEN(17)");
_Static_assert(CMSG_SPACE(PYXLIO_USER_ALLOC_PAYLOAD) == PYXLIO_USER_ALLOC_CMSG_SPACE, "CMSG_SPACE(17)");

#ifdef __cplusplus
}
#endif
#endif /* PYXLIO_XLIO_ABI_H */
