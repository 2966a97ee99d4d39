/*
 * pyxlio's own description of the XLIO Extra API binary interface (x86_64, LP64).
 *
 * Written from the facts in the project's ABI fact sheet (checked against libxlio 3.51.1, and
 * each layout against its releases' headers: 2.0 .. 3.51.1, 3.60.x, 3.61.x .. 3.70.2, 3.94x);
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
/* Every member is 8 bytes, packed, in the release's order; the member names are the release's.
 * pyxlio calls only the members typed below; the socket API (legacy, 3.94x) and the Ultra API
 * (3.60+) are declared by name as opaque pointers, so that every offset and size is pinned, and
 * each also reads as one array (socket_api / ultra_api). */

/* The 16-member socket API of 3.30.3 .. 3.51.x and of 3.94x (cap bit 13, XLIO_SOCKET). */
#define PYXLIO_SOCKET_API_MEMBERS                                                               \
    void *xlio_init_ex; void *xlio_poll_group_create; void *xlio_poll_group_destroy;            \
    void *xlio_poll_group_poll; void *xlio_socket_create; void *xlio_socket_destroy;            \
    void *xlio_socket_setsockopt; void *xlio_socket_bind; void *xlio_socket_connect;            \
    void *xlio_socket_get_pd; void *xlio_socket_send; void *xlio_socket_sendv;                  \
    void *xlio_poll_group_flush; void *xlio_socket_flush; void *xlio_socket_buf_free;           \
    void *xlio_poll_group_buf_free;
#define PYXLIO_SOCKET_API_COUNT 16

/* The 23-member Ultra API of 3.60 and later (cap bit 13, XLIO_ULTRA). */
#define PYXLIO_ULTRA_API_MEMBERS                                                                \
    void *xlio_init_ex; void *xlio_exit; void *xlio_poll_group_create;                          \
    void *xlio_poll_group_destroy; void *xlio_poll_group_poll; void *xlio_socket_create;        \
    void *xlio_socket_destroy; void *xlio_socket_update; void *xlio_socket_setsockopt;          \
    void *xlio_socket_getsockname; void *xlio_socket_getpeername; void *xlio_socket_bind;       \
    void *xlio_socket_connect; void *xlio_socket_listen; void *xlio_socket_get_pd;              \
    void *xlio_socket_detach_group; void *xlio_socket_attach_group; void *xlio_socket_send;     \
    void *xlio_socket_sendv; void *xlio_poll_group_flush; void *xlio_socket_flush;             \
    void *xlio_socket_buf_free; void *xlio_poll_group_buf_free;
#define PYXLIO_ULTRA_API_COUNT 23

/* Legacy layout, libxlio 2.0 .. 3.51.x.  The release's struct ends after ioctl (80 bytes) in
 * 2.0-3.0, after socketxtreme_free_buff (120) in 3.10-3.30.2, and at 248 in 3.30.3-3.51.x. */
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
    pyxlio_ioctl_fn ioctl;                                     /* 72  bit 12 (2.0-3.0 end: 80) */
    pyxlio_register_recv_callback_fn register_recv_callback;   /* 80  bit 0 */
    pyxlio_socketxtreme_fn socketxtreme_poll;                  /* 88  bit 7 */
    pyxlio_socketxtreme_fn socketxtreme_free_packets;          /* 96  bit 8 */
    pyxlio_socketxtreme_fn socketxtreme_ref_buff;              /* 104 bit 9 */
    pyxlio_socketxtreme_fn socketxtreme_free_buff;             /* 112 bit 10 (3.10-3.30.2 end: 120) */
    union PYXLIO_PACKED {                                      /* 120..240 bit 13 (end: 248) */
        void *socket_api[PYXLIO_SOCKET_API_COUNT];
        struct PYXLIO_PACKED { PYXLIO_SOCKET_API_MEMBERS };
    };
} pyxlio_api_legacy_t;

/* The newer layouts, each twice: pyxlio_api_360_t (and 361, 394) hold the members before the
 * socket/Ultra API, the ones pyxlio calls (the emulator embeds them); pyxlio_api_360_full_t
 * (and 361, 394) are the release's whole struct, whose size pyxlio_layout_size() gives. */
#define PYXLIO_360_HEAD                                                                         \
    uint64_t magic;                                            /* 0 */                          \
    uint64_t cap_mask;                                         /* 8 */                          \
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 16 bit 3 */                   \
    pyxlio_thread_offload_fn thread_offload;                   /* 24 bit 4 */                   \
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 32 bit 11 */                  \
    pyxlio_register_recv_callback_fn register_recv_callback;   /* 40 bit 0 */
#define PYXLIO_361_HEAD                                                                         \
    uint64_t magic;                                            /* 0 */                          \
    uint64_t cap_mask;                                         /* 8 */                          \
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 16 bit 3 */                   \
    pyxlio_thread_offload_fn thread_offload;                   /* 24 bit 4 */                   \
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 32 bit 11 */
#define PYXLIO_394_HEAD                                                                         \
    uint64_t magic;                                            /* 0 */                          \
    uint64_t cap_mask;                                         /* 8 */                          \
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 16 bit 3 */                   \
    pyxlio_thread_offload_fn thread_offload;                   /* 24 bit 4 */                   \
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 32 bit 11 */                  \
    pyxlio_ioctl_fn ioctl;                                     /* 40 bit 12 */

/* 3.60.x (cap_mask 0x2819): zero-copy receive, rings, socketxtreme, the extra ioctl and the
 * dummy-send flag removed; the receive callback kept (HOLD honoured, but no call to free).
 * The Ultra API (bit 13) follows at 48; the whole struct is 232 bytes. */
typedef struct PYXLIO_PACKED pyxlio_api_360 { PYXLIO_360_HEAD } pyxlio_api_360_t;
typedef struct PYXLIO_PACKED pyxlio_api_360_full {
    PYXLIO_360_HEAD
    union PYXLIO_PACKED {                                      /* 48..224 bit 13 (end: 232) */
        void *ultra_api[PYXLIO_ULTRA_API_COUNT];
        struct PYXLIO_PACKED { PYXLIO_ULTRA_API_MEMBERS };
    };
} pyxlio_api_360_full_t;

/* 3.61 and later (3.70.2 checked; cap_mask 0x2818): the receive callback removed too.  The
 * Ultra API (bit 13) follows at 40; the whole struct is 224 bytes. */
typedef struct PYXLIO_PACKED pyxlio_api_361 { PYXLIO_361_HEAD } pyxlio_api_361_t;
typedef struct PYXLIO_PACKED pyxlio_api_361_full {
    PYXLIO_361_HEAD
    union PYXLIO_PACKED {                                      /* 40..216 bit 13 (end: 224) */
        void *ultra_api[PYXLIO_ULTRA_API_COUNT];
        struct PYXLIO_PACKED { PYXLIO_ULTRA_API_MEMBERS };
    };
} pyxlio_api_361_full_t;

/* 3.94x, the DOCA branch (3.940.x, 3.941.x; cap_mask 0x3818): the ioctl and the dummy-send
 * flag kept, then the legacy 16-member socket API (bit 13) at 48; 176 bytes in all. */
typedef struct PYXLIO_PACKED pyxlio_api_394 { PYXLIO_394_HEAD } pyxlio_api_394_t;
typedef struct PYXLIO_PACKED pyxlio_api_394_full {
    PYXLIO_394_HEAD
    union PYXLIO_PACKED {                                      /* 48..168 bit 13 (end: 176) */
        void *socket_api[PYXLIO_SOCKET_API_COUNT];
        struct PYXLIO_PACKED { PYXLIO_SOCKET_API_MEMBERS };
    };
} pyxlio_api_394_full_t;

#define PYXLIO_API_LEGACY_SIZE_2_0 80
#define PYXLIO_API_LEGACY_SIZE_3_10 120
#define PYXLIO_API_LEGACY_SIZE_3_30_3 248
#define PYXLIO_API_360_SIZE 232
#define PYXLIO_API_361_SIZE 224
#define PYXLIO_API_394_SIZE 176

typedef enum {
    PYXLIO_LAYOUT_LEGACY = 0, /* 2.0 .. 3.51.x */
    PYXLIO_LAYOUT_360 = 1,    /* 3.60.x */
    PYXLIO_LAYOUT_361 = 2,    /* 3.61+ */
    PYXLIO_LAYOUT_394 = 3,    /* 3.94x DOCA */
    PYXLIO_LAYOUT_VMA = 4,    /* libvma 9.x: struct vma_api_t (see below), never told from cap_mask */
} pyxlio_layout_t;

/* ---- libvma: struct vma_api_t ----------------------------------------------------------- *
 * libvma (9.x) answers getsockopt(-1, SOL_SOCKET, 2800, &ptr, &len) (XLIO's -2 gives EBADF)
 * with a pointer to its process-wide struct vma_api_t: packed, no magic, every member 8 bytes
 * from offset 0, the support mask (vma_extra_supported_mask) after the function pointers.
 * Written from the fact sheet (section 11, measured on 9.8.84) and each release's
 * src/vma/vma_extra.h; not the vendor header.  The receive path is XLIO's: the same packed
 * packet list (packet_id, sz_iov, iov[]), flags (ZCOPY_FORCE 0x01000000, ZCOPY 0x00040000),
 * dummy-send flag (0x400), allocator message (SOL_SOCKET/2900, same 17-byte payload), verdicts
 * and callback signature; vma_info_t has XLIO's bytes, but src and dst point to a
 * struct sockaddr_in (libvma offloads IPv4 only).
 *
 * Where the mask sits, by release (read in each tag's vma_extra.h and sock-redirect.cpp):
 *   8.0 .. 8.8.0   no mask at all (not supported by pyxlio)
 *   8.8.2 .. 9.2.x mask @168 (vma_cyclic_buffer_read @104 and get_mem_info @152 still there);
 *                  9.0+ add get_dpcp_devices @176 under bit 21
 *   9.3.0 .. 9.8.31 mask @152, get_dpcp_devices @160 under bit 21 (set unconditionally): 168 bytes
 *   9.8.40 .. 9.8.60 mask @152, nothing after it: 160 bytes
 *   9.8.70 .. 9.8.84 mask @152, ioctl @160 under bit 21 (VMA_EXTRA_API_IOCTL): 168 bytes
 * Bit 21 means get_dpcp_devices before 9.8.40 and ioctl from 9.8.70: the bit alone does not say
 * which member sits at 160, so pyxlio resolves ioctl only when the library's version (from its
 * file name, libvma.so.X.Y.Z) is 9.8.70 or later, or the provider is pyxlio's emulator.  The
 * members pyxlio calls (offsets 0..56 and dump_fd_stats @96) are the same in every release. */
#define PYXLIO_SO_VMA_GET_API 2800          /* getsockopt(-1, SOL_SOCKET, 2800, &ptr, &len) */
#define PYXLIO_VMA_GET_API_FD (-1)
#define PYXLIO_XLIO_GET_API_FD (-2)

/* vma_extra_api_mask bits (VMA_EXTRA_API_*): not XLIO's numbering */
enum {
    PYXLIO_VMA_CAP_REGISTER_RECV_CALLBACK = 0,
    PYXLIO_VMA_CAP_RECVFROM_ZCOPY = 1,
    PYXLIO_VMA_CAP_FREE_PACKETS = 2,
    PYXLIO_VMA_CAP_ADD_CONF_RULE = 3,
    PYXLIO_VMA_CAP_THREAD_OFFLOAD = 4,
    PYXLIO_VMA_CAP_DUMP_FD_STATS = 5,
    PYXLIO_VMA_CAP_SOCKETXTREME_POLL = 6,
    PYXLIO_VMA_CAP_SOCKETXTREME_FREE_VMA_PACKETS = 7,
    PYXLIO_VMA_CAP_SOCKETXTREME_REF_VMA_BUFF = 8,
    PYXLIO_VMA_CAP_SOCKETXTREME_FREE_VMA_BUFF = 9,
    PYXLIO_VMA_CAP_GET_SOCKET_RINGS_NUM = 10,
    PYXLIO_VMA_CAP_GET_SOCKET_RINGS_FDS = 11,
    PYXLIO_VMA_CAP_GET_SOCKET_TX_RING_FD = 12,
    PYXLIO_VMA_CAP_GET_SOCKET_NETWORK_HEADER = 13,
    PYXLIO_VMA_CAP_GET_RING_DIRECT_DESCRIPTORS = 14,
    PYXLIO_VMA_CAP_CYCLIC_BUFFER_READ = 15,     /* 8.8.2 .. 9.2.x */
    PYXLIO_VMA_CAP_ADD_RING_PROFILE = 16,
    PYXLIO_VMA_CAP_REGISTER_MEMORY_ON_RING = 17,
    PYXLIO_VMA_CAP_DEREGISTER_MEMORY_ON_RING = 18,
    PYXLIO_VMA_CAP_GET_MEM_INFO = 19,           /* 8.8.2 .. 9.2.x */
    PYXLIO_VMA_CAP_MODIFY_RING = 20,
    PYXLIO_VMA_CAP_BIT21 = 21,                  /* GET_DPCP_DEVICES 9.0-9.8.31, IOCTL 9.8.70+ */
};
#define PYXLIO_VMA_MASK_9_8_84 0x377fffULL      /* what 9.8.84 sets (measured) */

/* libvma 9.8.70 .. 9.8.84 (and 9.3 .. 9.8.60 up to the mask), 168 bytes. */
typedef struct PYXLIO_PACKED pyxlio_api_vma {
    pyxlio_register_recv_callback_fn register_recv_callback;   /* 0   bit 0 */
    pyxlio_recvfrom_zcopy_fn recvfrom_zcopy;                   /* 8   bit 1 */
    pyxlio_free_packets_fn free_packets;                       /* 16  bit 2 */
    pyxlio_add_conf_rule_fn add_conf_rule;                     /* 24  bit 3 */
    pyxlio_thread_offload_fn thread_offload;                   /* 32  bit 4 */
    pyxlio_socketxtreme_fn socketxtreme_poll;                  /* 40  bit 6 */
    pyxlio_get_socket_rings_num_fn get_socket_rings_num;       /* 48  bit 10 */
    pyxlio_get_socket_rings_fds_fn get_socket_rings_fds;       /* 56  bit 11 */
    void *get_socket_tx_ring_fd;                               /* 64  bit 12 */
    pyxlio_socketxtreme_fn socketxtreme_free_vma_packets;      /* 72  bit 7 */
    pyxlio_socketxtreme_fn socketxtreme_ref_vma_buff;          /* 80  bit 8 */
    pyxlio_socketxtreme_fn socketxtreme_free_vma_buff;         /* 88  bit 9 */
    pyxlio_dump_fd_stats_fn dump_fd_stats;                     /* 96  bit 5 */
    void *vma_add_ring_profile;                                /* 104 bit 16 */
    void *get_socket_network_header;                           /* 112 bit 13 */
    void *get_ring_direct_descriptors;                         /* 120 bit 14 */
    void *register_memory_on_ring;                             /* 128 bit 17 */
    void *deregister_memory_on_ring;                           /* 136 bit 18 */
    void *vma_modify_ring;                                     /* 144 bit 20 */
    uint64_t vma_extra_supported_mask;                         /* 152 */
    pyxlio_ioctl_fn ioctl;                                     /* 160 bit 21 (9.8.70+) */
} pyxlio_api_vma_t;

#define PYXLIO_API_VMA_SIZE 168            /* 9.8.70 .. 9.8.84 (and 9.3 .. 9.8.31) */
#define PYXLIO_API_VMA_SIZE_NO_BIT21 160   /* 9.8.40 .. 9.8.60: ends after the mask */
#define PYXLIO_API_VMA_MASK_OFFSET 152     /* 9.3.0 and later */
#define PYXLIO_API_VMA_MASK_OFFSET_OLD 168 /* 8.8.2 .. 9.2.x */
#define PYXLIO_VMA_IOCTL_SINCE 90870       /* version 9.8.70 as major*10000 + minor*100 + rev */
#define PYXLIO_VMA_MASK152_SINCE 90300     /* version 9.3.0 */
#define PYXLIO_VMA_MASK_SINCE 80802        /* version 8.8.2 */

/* vma_info_t: XLIO's 80 bytes, src and dst are struct sockaddr_in * (IPv4 only). */
typedef pyxlio_recv_info_t pyxlio_vma_info_t;

/* Telling the layouts apart: the fact sheet's rule, in one place. */
static inline pyxlio_layout_t pyxlio_layout_from_caps(uint64_t cap_mask) {
    if (cap_mask & PYXLIO_CAP(PYXLIO_CAP_RECVFROM_ZCOPY)) return PYXLIO_LAYOUT_LEGACY;
    if (cap_mask & PYXLIO_CAP(PYXLIO_CAP_REGISTER_RECV_CALLBACK)) return PYXLIO_LAYOUT_360;
    if (cap_mask & PYXLIO_CAP(PYXLIO_CAP_IOCTL)) return PYXLIO_LAYOUT_394;
    return PYXLIO_LAYOUT_361;
}

/* The size of xlio_api_t that cap_mask implies: pyxlio never reads a byte past it.  Legacy:
 * the release's size (bit 13 -> 3.30.3+; a callback or socketxtreme bit -> 3.10+; else 2.0).
 * Newer layouts: the whole struct with bit 13 (every release sets it), else the end of the
 * members before the socket/Ultra API. */
static inline size_t pyxlio_layout_size(uint64_t cap_mask) {
    const int api = (cap_mask & PYXLIO_CAP(PYXLIO_CAP_XLIO_SOCKET)) != 0;
    switch (pyxlio_layout_from_caps(cap_mask)) {
    case PYXLIO_LAYOUT_360:
        return api ? sizeof(pyxlio_api_360_full_t) : sizeof(pyxlio_api_360_t);
    case PYXLIO_LAYOUT_361:
        return api ? sizeof(pyxlio_api_361_full_t) : sizeof(pyxlio_api_361_t);
    case PYXLIO_LAYOUT_394:
        return api ? sizeof(pyxlio_api_394_full_t) : sizeof(pyxlio_api_394_t);
    case PYXLIO_LAYOUT_LEGACY:
    default:
        if (api) return sizeof(pyxlio_api_legacy_t);
        if (cap_mask & (PYXLIO_CAP(PYXLIO_CAP_REGISTER_RECV_CALLBACK) |
                        PYXLIO_CAP(PYXLIO_CAP_SOCKETXTREME_POLL) |
                        PYXLIO_CAP(PYXLIO_CAP_SOCKETXTREME_FREE_PACKETS) |
                        PYXLIO_CAP(PYXLIO_CAP_SOCKETXTREME_REF_XLIO_BUFF) |
                        PYXLIO_CAP(PYXLIO_CAP_SOCKETXTREME_FREE_XLIO_BUFF)))
            return offsetof(pyxlio_api_legacy_t, socket_api);
        return offsetof(pyxlio_api_legacy_t, register_recv_callback);
    }
}

/* Does the layout still implement the dummy-send flag (XLIO_SND_FLAGS_DUMMY)?  Legacy and
 * 3.94x do; 3.60 removed it (3.61+ too), so there 0x400 would reach the kernel as MSG_SYN. */
static inline int pyxlio_layout_has_dummy_send(int layout) {
    return layout == PYXLIO_LAYOUT_LEGACY || layout == PYXLIO_LAYOUT_394 ||
           layout == PYXLIO_LAYOUT_VMA;     /* VMA_SND_FLAGS_DUMMY, the same 0x400 */
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
    /* added for libvma (0 / the release's size for XLIO): */
    uint64_t native_mask;                         /* the library's own mask (XLIO: cap_mask) */
    size_t api_size;                              /* bytes of the struct pyxlio may read */
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
 * whose bit is set and that lie inside the size cap_mask implies (pyxlio_layout_size).  Every read is
 * a memcpy: the struct is packed and the pointer need not be aligned. */
static inline void pyxlio_resolve_ops(const void *api, pyxlio_ops_t *ops) {
    const unsigned char *base = (const unsigned char *)api;
    uint64_t caps;
    memset(ops, 0, sizeof *ops);
    memcpy(&caps, base + 8, sizeof caps);
    ops->cap_mask = caps;
    ops->layout = (int)pyxlio_layout_from_caps(caps);
    const long size = (long)pyxlio_layout_size(caps);
    ops->native_mask = caps;
    ops->api_size = (size_t)size;
    for (size_t i = 0; i < sizeof pyxlio_members / sizeof pyxlio_members[0]; i++) {
        const pyxlio_member_t *m = &pyxlio_members[i];
        long off = m->offset[ops->layout];
        if (off >= 0 && off + (long)sizeof(void *) <= size && (caps & PYXLIO_CAP(m->bit)))
            memcpy((unsigned char *)ops + m->ops_offset, base + off, sizeof(void *));
    }
}

/* ---- libvma: one table from VMA's mask bits to pyxlio's (XLIO's) capability bits -------- *
 * Each row: VMA bit, the XLIO cap bit it is reported as, the ops member it fills (or -1: none,
 * reported only), and the member's offset in struct vma_api_t.  Bits without a row (tx ring fd,
 * network header, ring profiles, direct descriptors, memory on ring, modify ring, cyclic buffer,
 * mem info) have no XLIO counterpart and are kept in native_mask only. */
typedef struct { int vma_bit; int xlio_bit; long ops_offset; long vma_offset; } pyxlio_vma_cap_t;
#define PYXLIO_VOPS(m) ((long)offsetof(pyxlio_ops_t, m))
#define PYXLIO_VAT(m) ((long)offsetof(pyxlio_api_vma_t, m))
static const pyxlio_vma_cap_t pyxlio_vma_caps[] = {
    {PYXLIO_VMA_CAP_REGISTER_RECV_CALLBACK, PYXLIO_CAP_REGISTER_RECV_CALLBACK,
     PYXLIO_VOPS(register_recv_callback), PYXLIO_VAT(register_recv_callback)},
    {PYXLIO_VMA_CAP_RECVFROM_ZCOPY, PYXLIO_CAP_RECVFROM_ZCOPY,
     PYXLIO_VOPS(recvfrom_zcopy), PYXLIO_VAT(recvfrom_zcopy)},
    {PYXLIO_VMA_CAP_FREE_PACKETS, PYXLIO_CAP_RECVFROM_ZCOPY_FREE_PACKETS,
     PYXLIO_VOPS(free_packets), PYXLIO_VAT(free_packets)},
    {PYXLIO_VMA_CAP_ADD_CONF_RULE, PYXLIO_CAP_ADD_CONF_RULE,
     PYXLIO_VOPS(add_conf_rule), PYXLIO_VAT(add_conf_rule)},
    {PYXLIO_VMA_CAP_THREAD_OFFLOAD, PYXLIO_CAP_THREAD_OFFLOAD,
     PYXLIO_VOPS(thread_offload), PYXLIO_VAT(thread_offload)},
    {PYXLIO_VMA_CAP_DUMP_FD_STATS, PYXLIO_CAP_DUMP_FD_STATS,
     PYXLIO_VOPS(dump_fd_stats), PYXLIO_VAT(dump_fd_stats)},
    {PYXLIO_VMA_CAP_SOCKETXTREME_POLL, PYXLIO_CAP_SOCKETXTREME_POLL, -1, PYXLIO_VAT(socketxtreme_poll)},
    {PYXLIO_VMA_CAP_SOCKETXTREME_FREE_VMA_PACKETS, PYXLIO_CAP_SOCKETXTREME_FREE_PACKETS, -1,
     PYXLIO_VAT(socketxtreme_free_vma_packets)},
    {PYXLIO_VMA_CAP_SOCKETXTREME_REF_VMA_BUFF, PYXLIO_CAP_SOCKETXTREME_REF_XLIO_BUFF, -1,
     PYXLIO_VAT(socketxtreme_ref_vma_buff)},
    {PYXLIO_VMA_CAP_SOCKETXTREME_FREE_VMA_BUFF, PYXLIO_CAP_SOCKETXTREME_FREE_XLIO_BUFF, -1,
     PYXLIO_VAT(socketxtreme_free_vma_buff)},
    {PYXLIO_VMA_CAP_GET_SOCKET_RINGS_NUM, PYXLIO_CAP_GET_SOCKET_RINGS_NUM,
     PYXLIO_VOPS(get_socket_rings_num), PYXLIO_VAT(get_socket_rings_num)},
    {PYXLIO_VMA_CAP_GET_SOCKET_RINGS_FDS, PYXLIO_CAP_GET_SOCKET_RINGS_FDS,
     PYXLIO_VOPS(get_socket_rings_fds), PYXLIO_VAT(get_socket_rings_fds)},
    /* bit 21 is the ioctl only from 9.8.70 (see above): pyxlio_resolve_vma_ops checks that */
    {PYXLIO_VMA_CAP_BIT21, PYXLIO_CAP_IOCTL, PYXLIO_VOPS(ioctl), PYXLIO_VAT(ioctl)},
};
#define PYXLIO_VMA_N_CAPS (sizeof pyxlio_vma_caps / sizeof pyxlio_vma_caps[0])

/* pyxlio's cap_mask for a VMA mask (ioctl_ok: bit 21 is the ioctl in this release). */
static inline uint64_t pyxlio_vma_caps_of(uint64_t vma_mask, int ioctl_ok) {
    uint64_t caps = 0;
    for (size_t i = 0; i < PYXLIO_VMA_N_CAPS; i++) {
        const pyxlio_vma_cap_t *c = &pyxlio_vma_caps[i];
        if (c->vma_bit == PYXLIO_VMA_CAP_BIT21 && !ioctl_ok) continue;
        if (vma_mask & PYXLIO_CAP(c->vma_bit)) caps |= PYXLIO_CAP(c->xlio_bit);
    }
    return caps;
}

/* Does a value read where 9.3+ keep the mask look like a mask (and not a function pointer, as
 * 8.8.2-9.2.x keep get_mem_info there)?  Known bits only, the base calls present. */
static inline int pyxlio_vma_mask_plausible(uint64_t v) {
    const uint64_t known = (PYXLIO_CAP(22) - 1);
    const uint64_t base = PYXLIO_CAP(PYXLIO_VMA_CAP_REGISTER_RECV_CALLBACK) |
                          PYXLIO_CAP(PYXLIO_VMA_CAP_RECVFROM_ZCOPY) |
                          PYXLIO_CAP(PYXLIO_VMA_CAP_FREE_PACKETS);
    return (v & ~known) == 0 && (v & base) == base;
}

/* Fill `ops` from the struct vma_api_t at `api`.  `version` is major*10000 + minor*100 + rev
 * from the library's file name (0: unknown); `trusted` says the provider is known to keep the
 * 9.8.70+ layout (pyxlio's emulator).  The mask is read where the release keeps it; with no
 * version it is read at 152 (inside every release's struct from 8.6 on) and accepted only if it
 * looks like a mask.  Returns 0, or -1 when the layout cannot be told (ops left zero). */
static inline int pyxlio_resolve_vma_ops(const void *api, long version, int trusted,
                                         pyxlio_ops_t *ops) {
    const unsigned char *base = (const unsigned char *)api;
    uint64_t mask;
    long mask_off;
    int ioctl_ok;
    memset(ops, 0, sizeof *ops);
    if (version && version < PYXLIO_VMA_MASK_SINCE) return -1;     /* no mask: 8.8.0 and older */
    mask_off = version && version < PYXLIO_VMA_MASK152_SINCE ? PYXLIO_API_VMA_MASK_OFFSET_OLD
                                                             : PYXLIO_API_VMA_MASK_OFFSET;
    memcpy(&mask, base + mask_off, sizeof mask);
    if (!pyxlio_vma_mask_plausible(mask)) return -1;
    ioctl_ok = trusted || version >= PYXLIO_VMA_IOCTL_SINCE;
    ops->layout = PYXLIO_LAYOUT_VMA;
    ops->native_mask = mask;
    ops->cap_mask = pyxlio_vma_caps_of(mask, ioctl_ok);
    /* what the release's struct holds: up to the mask, plus the bit-21 member if set */
    ops->api_size = (size_t)mask_off + 8 + ((mask & PYXLIO_CAP(PYXLIO_VMA_CAP_BIT21)) ? 8 : 0);
    for (size_t i = 0; i < PYXLIO_VMA_N_CAPS; i++) {
        const pyxlio_vma_cap_t *c = &pyxlio_vma_caps[i];
        if (c->ops_offset < 0 || !(ops->cap_mask & PYXLIO_CAP(c->xlio_bit))) continue;
        if (c->vma_bit == PYXLIO_VMA_CAP_BIT21 && mask_off != PYXLIO_API_VMA_MASK_OFFSET) continue;
        if (c->vma_offset + (long)sizeof(void *) > (long)ops->api_size) continue;
        memcpy((unsigned char *)ops + c->ops_offset, base + c->vma_offset, sizeof(void *));
    }
    return 0;
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

/* ---- the Ultra API (cap bit 13): types ---------------------------------------------- *
 * libxlio's xlio_types.h of 3.51.1 (the 16-member "socket API") and 3.70.2 (the 23-member
 * "Ultra API").  TCP only.  Handles are uintptr_t.  These attribute structs are NOT packed in
 * the release's header: natural alignment, as declared here. */
typedef uintptr_t pyxlio_poll_group_t;       /* xlio_poll_group_t */
typedef uintptr_t pyxlio_xsock_t;            /* xlio_socket_t */

/* struct xlio_buf: the descriptor of a received buffer; userdata is the application's while
 * it owns the buffer (until xlio_socket_buf_free / xlio_poll_group_buf_free). */
typedef struct pyxlio_xbuf { uint64_t userdata; } pyxlio_xbuf_t;

enum {
    PYXLIO_SOCKET_EVENT_ESTABLISHED = 1,
    PYXLIO_SOCKET_EVENT_TERMINATED = 2,      /* no further events; the socket may be freed */
    PYXLIO_SOCKET_EVENT_CLOSED = 3,          /* passive close */
    PYXLIO_SOCKET_EVENT_ERROR = 4,           /* value: ECONNABORTED ECONNRESET ECONNREFUSED ETIMEDOUT */
};
#define PYXLIO_GROUP_FLAG_SAFE 0x1           /* sockets and rings locked whatever the config */
#define PYXLIO_GROUP_FLAG_DIRTY 0x2          /* dirty sockets kept for xlio_poll_group_flush */
#define PYXLIO_SOCKET_SEND_FLAG_FLUSH 0x1
#define PYXLIO_SOCKET_SEND_FLAG_INLINE 0x2   /* copied at once: no mkey, no completion */

typedef void (*pyxlio_memory_cb_t)(void *addr, size_t len, size_t hugepage_size);
typedef void (*pyxlio_socket_event_cb_t)(pyxlio_xsock_t sock, uintptr_t userdata_sq, int event,
                                         int value);
typedef void (*pyxlio_socket_comp_cb_t)(pyxlio_xsock_t sock, uintptr_t userdata_sq,
                                        uintptr_t userdata_op);
typedef void (*pyxlio_socket_rx_cb_t)(pyxlio_xsock_t sock, uintptr_t userdata_sq, void *data,
                                      size_t len, pyxlio_xbuf_t *buf);
typedef void (*pyxlio_socket_accept_cb_t)(pyxlio_xsock_t sock, pyxlio_xsock_t parent,
                                          uintptr_t parent_userdata_sq);     /* 3.60+ */

typedef struct pyxlio_init_attr {            /* struct xlio_init_attr: 32 bytes */
    unsigned flags;                                      /* @0 */
    pyxlio_memory_cb_t memory_cb;                        /* @8 */
    void *(*memory_alloc)(size_t);                       /* @16 optional user allocator */
    void (*memory_free)(void *);                         /* @24 */
} pyxlio_init_attr_t;

typedef struct pyxlio_poll_group_attr {      /* struct xlio_poll_group_attr */
    unsigned flags;                                      /* @0 PYXLIO_GROUP_FLAG_* */
    pyxlio_socket_event_cb_t socket_event_cb;            /* @8 required (else EINVAL) */
    pyxlio_socket_comp_cb_t socket_comp_cb;              /* @16 */
    pyxlio_socket_rx_cb_t socket_rx_cb;                  /* @24 (3.30-3.51 end: 32 bytes) */
    pyxlio_socket_accept_cb_t socket_accept_cb;          /* @32 3.60+ (40 bytes) */
} pyxlio_poll_group_attr_t;
#define PYXLIO_POLL_GROUP_ATTR_SIZE_SOCKET_API 32
#define PYXLIO_POLL_GROUP_ATTR_SIZE_ULTRA 40

typedef struct pyxlio_socket_attr {          /* struct xlio_socket_attr: 24 bytes */
    unsigned flags;                                      /* @0 */
    int domain;                                          /* @4 AF_INET or AF_INET6 */
    pyxlio_poll_group_t group;                           /* @8 */
    uintptr_t userdata_sq;                               /* @16 */
} pyxlio_socket_attr_t;

typedef struct pyxlio_socket_send_attr {     /* struct xlio_socket_send_attr: 16 bytes */
    unsigned flags;                                      /* @0 PYXLIO_SOCKET_SEND_FLAG_* */
    uint32_t mkey;                                       /* @4 lkey of the registered region */
    uintptr_t userdata_op;                               /* @8 handed back by comp_cb */
} pyxlio_socket_send_attr_t;

typedef int (*pyxlio_u_init_ex_fn)(const pyxlio_init_attr_t *attr);
typedef int (*pyxlio_u_exit_fn)(void);
typedef int (*pyxlio_u_group_create_fn)(const pyxlio_poll_group_attr_t *attr,
                                        pyxlio_poll_group_t *group_out);
typedef int (*pyxlio_u_group_destroy_fn)(pyxlio_poll_group_t group);
typedef void (*pyxlio_u_group_poll_fn)(pyxlio_poll_group_t group);
typedef int (*pyxlio_u_socket_create_fn)(const pyxlio_socket_attr_t *attr,
                                         pyxlio_xsock_t *sock_out);
typedef int (*pyxlio_u_socket_destroy_fn)(pyxlio_xsock_t sock);
typedef int (*pyxlio_u_socket_update_fn)(pyxlio_xsock_t sock, unsigned flags,
                                         uintptr_t userdata_sq);
typedef int (*pyxlio_u_setsockopt_fn)(pyxlio_xsock_t sock, int level, int optname,
                                      const void *optval, socklen_t optlen);
typedef int (*pyxlio_u_sockname_fn)(pyxlio_xsock_t sock, struct sockaddr *addr,
                                    socklen_t *addrlen);
typedef int (*pyxlio_u_bind_fn)(pyxlio_xsock_t sock, const struct sockaddr *addr,
                                socklen_t addrlen);
typedef int (*pyxlio_u_listen_fn)(pyxlio_xsock_t sock);
typedef void *(*pyxlio_u_get_pd_fn)(pyxlio_xsock_t sock);           /* struct ibv_pd * */
typedef int (*pyxlio_u_detach_group_fn)(pyxlio_xsock_t sock);
typedef int (*pyxlio_u_attach_group_fn)(pyxlio_xsock_t sock, pyxlio_poll_group_t group);
typedef int (*pyxlio_u_send_fn)(pyxlio_xsock_t sock, const void *data, size_t len,
                                const pyxlio_socket_send_attr_t *attr);
typedef int (*pyxlio_u_sendv_fn)(pyxlio_xsock_t sock, const struct iovec *iov, unsigned iovcnt,
                                 const pyxlio_socket_send_attr_t *attr);
typedef void (*pyxlio_u_group_flush_fn)(pyxlio_poll_group_t group);
typedef void (*pyxlio_u_socket_flush_fn)(pyxlio_xsock_t sock);
typedef void (*pyxlio_u_socket_buf_free_fn)(pyxlio_xsock_t sock, pyxlio_xbuf_t *buf);
typedef void (*pyxlio_u_group_buf_free_fn)(pyxlio_poll_group_t group, pyxlio_xbuf_t *buf);

/* Which Ultra API a provider has. */
typedef enum {
    PYXLIO_ULTRA_NONE = 0,
    PYXLIO_ULTRA_SOCKET_API = 16,            /* 3.30.3-3.51.x and 3.94x: 16 members, no listen */
    PYXLIO_ULTRA_API = 23,                   /* 3.60+: 23 members */
} pyxlio_ultra_kind_t;

/* The Ultra members, resolved: NULL where the loaded layout has none (exit, update,
 * getsockname, getpeername, listen, detach_group, attach_group in the 16-member API). */
typedef struct pyxlio_ultra_ops {
    int kind;                                            /* pyxlio_ultra_kind_t */
    size_t group_attr_size;                              /* 32 or 40 */
    pyxlio_u_init_ex_fn init_ex;
    pyxlio_u_exit_fn exit;
    pyxlio_u_group_create_fn group_create;
    pyxlio_u_group_destroy_fn group_destroy;
    pyxlio_u_group_poll_fn group_poll;
    pyxlio_u_socket_create_fn socket_create;
    pyxlio_u_socket_destroy_fn socket_destroy;
    pyxlio_u_socket_update_fn socket_update;
    pyxlio_u_setsockopt_fn setsockopt;
    pyxlio_u_sockname_fn getsockname;
    pyxlio_u_sockname_fn getpeername;
    pyxlio_u_bind_fn bind;
    pyxlio_u_bind_fn connect;
    pyxlio_u_listen_fn listen;
    pyxlio_u_get_pd_fn get_pd;
    pyxlio_u_detach_group_fn detach_group;
    pyxlio_u_attach_group_fn attach_group;
    pyxlio_u_send_fn send;
    pyxlio_u_sendv_fn sendv;
    pyxlio_u_group_flush_fn group_flush;
    pyxlio_u_socket_flush_fn socket_flush;
    pyxlio_u_socket_buf_free_fn socket_buf_free;
    pyxlio_u_group_buf_free_fn group_buf_free;
} pyxlio_ultra_ops_t;

/* Fill `u` from the xlio_api_t at `api` (an XLIO layout: never a vma_api_t).  Returns the kind
 * (0, with `u` zeroed, when cap bit 13 is clear).  Each member is copied with memcpy from the
 * offset its layout gives; none lies past pyxlio_layout_size(cap_mask). */
static inline int pyxlio_resolve_ultra_ops(const void *api, pyxlio_ultra_ops_t *u) {
    const unsigned char *base = (const unsigned char *)api;
    uint64_t caps;
    memset(u, 0, sizeof *u);
    memcpy(&caps, base + 8, sizeof caps);
    if (!(caps & PYXLIO_CAP(PYXLIO_CAP_XLIO_SOCKET))) return PYXLIO_ULTRA_NONE;
#define PYXLIO_U_GET(dst, T, m) memcpy(&u->dst, base + offsetof(T, m), sizeof(void *))
#define PYXLIO_U_SOCKET_API(T)                                                                  \
    PYXLIO_U_GET(init_ex, T, xlio_init_ex); PYXLIO_U_GET(group_create, T, xlio_poll_group_create); \
    PYXLIO_U_GET(group_destroy, T, xlio_poll_group_destroy);                                    \
    PYXLIO_U_GET(group_poll, T, xlio_poll_group_poll);                                          \
    PYXLIO_U_GET(socket_create, T, xlio_socket_create);                                         \
    PYXLIO_U_GET(socket_destroy, T, xlio_socket_destroy);                                       \
    PYXLIO_U_GET(setsockopt, T, xlio_socket_setsockopt); PYXLIO_U_GET(bind, T, xlio_socket_bind); \
    PYXLIO_U_GET(connect, T, xlio_socket_connect); PYXLIO_U_GET(get_pd, T, xlio_socket_get_pd); \
    PYXLIO_U_GET(send, T, xlio_socket_send); PYXLIO_U_GET(sendv, T, xlio_socket_sendv);         \
    PYXLIO_U_GET(group_flush, T, xlio_poll_group_flush);                                        \
    PYXLIO_U_GET(socket_flush, T, xlio_socket_flush);                                           \
    PYXLIO_U_GET(socket_buf_free, T, xlio_socket_buf_free);                                     \
    PYXLIO_U_GET(group_buf_free, T, xlio_poll_group_buf_free);
#define PYXLIO_U_ULTRA_EXTRA(T)                                                                 \
    PYXLIO_U_GET(exit, T, xlio_exit); PYXLIO_U_GET(socket_update, T, xlio_socket_update);       \
    PYXLIO_U_GET(getsockname, T, xlio_socket_getsockname);                                      \
    PYXLIO_U_GET(getpeername, T, xlio_socket_getpeername);                                      \
    PYXLIO_U_GET(listen, T, xlio_socket_listen);                                                \
    PYXLIO_U_GET(detach_group, T, xlio_socket_detach_group);                                    \
    PYXLIO_U_GET(attach_group, T, xlio_socket_attach_group);
    switch (pyxlio_layout_from_caps(caps)) {
    case PYXLIO_LAYOUT_LEGACY:
        PYXLIO_U_SOCKET_API(pyxlio_api_legacy_t)
        u->kind = PYXLIO_ULTRA_SOCKET_API;
        break;
    case PYXLIO_LAYOUT_394:
        PYXLIO_U_SOCKET_API(pyxlio_api_394_full_t)
        u->kind = PYXLIO_ULTRA_SOCKET_API;
        break;
    case PYXLIO_LAYOUT_360:
        PYXLIO_U_SOCKET_API(pyxlio_api_360_full_t)
        PYXLIO_U_ULTRA_EXTRA(pyxlio_api_360_full_t)
        u->kind = PYXLIO_ULTRA_API;
        break;
    case PYXLIO_LAYOUT_361:
        PYXLIO_U_SOCKET_API(pyxlio_api_361_full_t)
        PYXLIO_U_ULTRA_EXTRA(pyxlio_api_361_full_t)
        u->kind = PYXLIO_ULTRA_API;
        break;
    default:
        return PYXLIO_ULTRA_NONE;
    }
#undef PYXLIO_U_ULTRA_EXTRA
#undef PYXLIO_U_SOCKET_API
#undef PYXLIO_U_GET
    u->group_attr_size = u->kind == PYXLIO_ULTRA_API ? PYXLIO_POLL_GROUP_ATTR_SIZE_ULTRA
                                                     : PYXLIO_POLL_GROUP_ATTR_SIZE_SOCKET_API;
    return u->kind;
}

/* ---- memory registration (libibverbs, resolved at run time) ---------------------------- *
 * struct ibv_mr { struct ibv_context *context @0; struct ibv_pd *pd @8; void *addr @16;
 * size_t length @24; uint32_t handle @32; uint32_t lkey @36; uint32_t rkey @40; }.  pyxlio
 * reads lkey at its offset and never includes verbs.h.  IBV_ACCESS_LOCAL_WRITE = 1. */
typedef void *(*pyxlio_ibv_reg_mr_fn)(void *pd, void *addr, size_t length, int access);
typedef int (*pyxlio_ibv_dereg_mr_fn)(void *mr);
#define PYXLIO_IBV_MR_LKEY_OFFSET 36
#define PYXLIO_IBV_ACCESS_LOCAL_WRITE 1
static inline uint32_t pyxlio_ibv_mr_lkey(const void *mr) {
    uint32_t k;
    memcpy(&k, (const unsigned char *)mr + PYXLIO_IBV_MR_LKEY_OFFSET, sizeof k);
    return k;
}

/* Compile-time pins of the facts (the test suite pins them again from Python). */
_Static_assert(sizeof(pyxlio_api_legacy_t) == PYXLIO_API_LEGACY_SIZE_3_30_3, "legacy: 248 bytes");
_Static_assert(sizeof(pyxlio_api_360_full_t) == PYXLIO_API_360_SIZE, "3.60: 232 bytes");
_Static_assert(sizeof(pyxlio_api_361_full_t) == PYXLIO_API_361_SIZE, "3.61+: 224 bytes");
_Static_assert(sizeof(pyxlio_api_394_full_t) == PYXLIO_API_394_SIZE, "3.94x: 176 bytes");
_Static_assert(sizeof(pyxlio_api_360_t) == offsetof(pyxlio_api_360_full_t, ultra_api), "3.60 head");
_Static_assert(sizeof(pyxlio_api_361_t) == offsetof(pyxlio_api_361_full_t, ultra_api), "3.61 head");
_Static_assert(sizeof(pyxlio_api_394_t) == offsetof(pyxlio_api_394_full_t, socket_api), "3.94 head");
_Static_assert(offsetof(pyxlio_api_legacy_t, register_recv_callback) == 80, "callback @80");
_Static_assert(offsetof(pyxlio_api_legacy_t, socket_api) == 120, "socket API @120");
_Static_assert(offsetof(pyxlio_api_361_t, dump_fd_stats) == 32, "3.61 dump_fd_stats @32");
_Static_assert(sizeof(pyxlio_recv_info_t) == 80, "xlio_info_t is 80 bytes");
_Static_assert(sizeof(pyxlio_api_vma_t) == PYXLIO_API_VMA_SIZE, "vma_api_t (9.8.84) is 168 bytes");
_Static_assert(offsetof(pyxlio_api_vma_t, vma_extra_supported_mask) == 152, "VMA mask @152");
_Static_assert(offsetof(pyxlio_api_vma_t, ioctl) == 160, "VMA ioctl @160");
_Static_assert(offsetof(pyxlio_api_vma_t, dump_fd_stats) == 96, "VMA dump_fd_stats @96");
_Static_assert(offsetof(pyxlio_recv_info_t, sw_timestamp) == 64, "sw_timestamp @64");
_Static_assert(sizeof(pyxlio_zc_packet_t) == 16, "packet header is 16 bytes");
_Static_assert(sizeof(pyxlio_init_attr_t) == 32, "xlio_init_attr is 32 bytes");
_Static_assert(sizeof(pyxlio_poll_group_attr_t) == 40, "xlio_poll_group_attr (3.60+) is 40 bytes");
_Static_assert(offsetof(pyxlio_poll_group_attr_t, socket_accept_cb) == 32, "accept_cb @32");
_Static_assert(sizeof(pyxlio_socket_attr_t) == 24, "xlio_socket_attr is 24 bytes");
_Static_assert(offsetof(pyxlio_socket_attr_t, group) == 8, "socket_attr.group @8");
_Static_assert(sizeof(pyxlio_socket_send_attr_t) == 16, "xlio_socket_send_attr is 16 bytes");
_Static_assert(offsetof(pyxlio_socket_send_attr_t, userdata_op) == 8, "send_attr.userdata_op @8");
_Static_assert(offsetof(pyxlio_api_legacy_t, xlio_poll_group_buf_free) == 240, "3.51 buf_free @240");
_Static_assert(offsetof(pyxlio_api_361_full_t, xlio_init_ex) == 40, "3.61 Ultra @40");
_Static_assert(offsetof(pyxlio_api_360_full_t, xlio_init_ex) == 48, "3.60 Ultra @48");
_Static_assert(CMSG_LEN(PYXLIO_USER_ALLOC_PAYLOAD) == PYXLIO_USER_ALLOC_CMSG_LEN, "CMSG_LEN(17)");
_Static_assert(CMSG_SPACE(PYXLIO_USER_ALLOC_PAYLOAD) == PYXLIO_USER_ALLOC_CMSG_SPACE, "CMSG_SPACE(17)");

#ifdef __cplusplus
}
#endif
#endif /* PYXLIO_XLIO_ABI_H */
