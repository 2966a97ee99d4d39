# cython: language_level=3
"""Raw C declarations of the XLIO Extra API, from pyxlio's own header (include/pyxlio/xlio_abi.h).

Nothing here but declarations: every class and wrapper lives in the .pyx modules.  Every
function-pointer type is ``nogil`` so the receive and free loops can call it without the GIL.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from posix.types cimport pid_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct timespec:
        long tv_sec
        long tv_nsec
    int SOL_SOCKET
    int SO_RCVTIMEO
    int MSG_DONTWAIT
    int MSG_WAITFORONE
    int MSG_TRUNC
    int SOCK_STREAM
    int SOCK_DGRAM
    int AF_INET
    int AF_INET6
    int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, sockaddr *addr, socklen_t *addrlen)
    int recvmmsg(int fd, mmsghdr *vmessages, unsigned int vlen, int flags, timespec *tmo)
    ssize_t send(int fd, const void *buf, size_t n, int flags)


cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    short POLLIN
    int poll(pollfd *fds, unsigned long nfds, int timeout)


cdef extern from "pyxlio/xlio_abi.h" nogil:
    # discovery
    int PYXLIO_SO_XLIO_GET_API
    uint64_t PYXLIO_XLIO_MAGIC

    # cap bits
    int PYXLIO_CAP_REGISTER_RECV_CALLBACK
    int PYXLIO_CAP_RECVFROM_ZCOPY
    int PYXLIO_CAP_RECVFROM_ZCOPY_FREE_PACKETS
    int PYXLIO_CAP_ADD_CONF_RULE
    int PYXLIO_CAP_THREAD_OFFLOAD
    int PYXLIO_CAP_GET_SOCKET_RINGS_NUM
    int PYXLIO_CAP_GET_SOCKET_RINGS_FDS
    int PYXLIO_CAP_SOCKETXTREME_POLL
    int PYXLIO_CAP_SOCKETXTREME_FREE_PACKETS
    int PYXLIO_CAP_SOCKETXTREME_REF_XLIO_BUFF
    int PYXLIO_CAP_SOCKETXTREME_FREE_XLIO_BUFF
    int PYXLIO_CAP_DUMP_FD_STATS
    int PYXLIO_CAP_IOCTL
    int PYXLIO_CAP_XLIO_SOCKET

    # flags and constants
    int PYXLIO_MSG_XLIO_ZCOPY_FORCE
    int PYXLIO_MSG_XLIO_ZCOPY
    int PYXLIO_SND_FLAGS_DUMMY
    int PYXLIO_CMSG_IOCTL_USER_ALLOC
    int PYXLIO_USER_ALLOC_TX
    int PYXLIO_USER_ALLOC_RX
    int PYXLIO_USER_ALLOC_TX_ZC
    int PYXLIO_USER_ALLOC_PAYLOAD
    int PYXLIO_USER_ALLOC_CMSG_LEN
    int PYXLIO_USER_ALLOC_CMSG_SPACE
    int PYXLIO_API_LEGACY_SIZE_2_0
    int PYXLIO_API_LEGACY_SIZE_3_10
    int PYXLIO_API_LEGACY_SIZE_3_30_3
    int PYXLIO_API_360_SIZE
    int PYXLIO_API_361_SIZE
    int PYXLIO_API_394_SIZE
    int PYXLIO_ZC_HEADER_BYTES
    int PYXLIO_ZC_PACKET_BYTES
    int PYXLIO_ZC_IOV_BYTES
    int PYXLIO_ZC_TCP_MIN
    size_t PYXLIO_ZC_UDP_MIN(size_t nfrags)

    ctypedef enum pyxlio_verdict_t:
        PYXLIO_PACKET_DROP
        PYXLIO_PACKET_RECV
        PYXLIO_PACKET_HOLD

    ctypedef enum pyxlio_layout_t:
        PYXLIO_LAYOUT_LEGACY
        PYXLIO_LAYOUT_360
        PYXLIO_LAYOUT_361
        PYXLIO_LAYOUT_394
        PYXLIO_LAYOUT_VMA

    # zero-copy structures (packed)
    ctypedef struct pyxlio_zc_packet_t:
        void *packet_id
        size_t sz_iov
    ctypedef struct pyxlio_zc_packets_t:
        size_t n_packet_num
    size_t pyxlio_zc_packet_bytes(size_t sz_iov)
    pyxlio_zc_packet_t *pyxlio_zc_first(pyxlio_zc_packets_t *p)
    pyxlio_zc_packet_t *pyxlio_zc_next(pyxlio_zc_packet_t *p)
    void *pyxlio_zc_iov_base(const pyxlio_zc_packet_t *p, size_t k)
    size_t pyxlio_zc_iov_len(const pyxlio_zc_packet_t *p, size_t k)

    ctypedef struct pyxlio_recv_info_t:
        size_t struct_sz
        void *packet_id
        const sockaddr *src
        const sockaddr *dst
        size_t payload_sz
        uint32_t socket_ready_queue_pkt_count
        uint32_t socket_ready_queue_byte_count
        timespec hw_timestamp
        timespec sw_timestamp

    ctypedef pyxlio_verdict_t (*pyxlio_recv_callback_t)(int fd, size_t sz_iov, iovec *iov,
                                                        pyxlio_recv_info_t *info, void *context)

    # function-pointer types: each callable without the GIL
    ctypedef int (*pyxlio_recvfrom_zcopy_fn)(int s, void *buf, size_t len, int *flags,
                                             sockaddr *src, socklen_t *fromlen) nogil
    ctypedef int (*pyxlio_free_packets_fn)(int s, pyxlio_zc_packet_t *pkts, size_t count) nogil
    ctypedef int (*pyxlio_add_conf_rule_fn)(const char *config_line) nogil
    ctypedef int (*pyxlio_thread_offload_fn)(int offload, unsigned long tid) nogil
    ctypedef int (*pyxlio_get_socket_rings_num_fn)(int fd) nogil
    ctypedef int (*pyxlio_get_socket_rings_fds_fn)(int fd, int *ring_fds, int ring_fds_sz) nogil
    ctypedef int (*pyxlio_dump_fd_stats_fn)(int fd, int log_level) nogil
    ctypedef int (*pyxlio_ioctl_fn)(void *cmsg_hdr, size_t cmsg_len) nogil
    ctypedef int (*pyxlio_register_recv_callback_fn)(int s, pyxlio_recv_callback_t cb,
                                                     void *context) nogil
    ctypedef void *(*pyxlio_alloc_fn)(size_t size) noexcept nogil
    ctypedef void (*pyxlio_free_fn)(void *ptr) noexcept nogil

    pyxlio_layout_t pyxlio_layout_from_caps(uint64_t cap_mask)
    # The size of xlio_api_t that cap_mask implies (nothing past it is ever read).
    size_t pyxlio_layout_size(uint64_t cap_mask)

    # The resolved operations of whichever layout answered: NULL where the cap bit is clear.
    ctypedef struct xlio_ops_t "pyxlio_ops_t":
        uint64_t cap_mask
        int layout
        pyxlio_recvfrom_zcopy_fn recvfrom_zcopy
        pyxlio_free_packets_fn free_packets
        pyxlio_add_conf_rule_fn add_conf_rule
        pyxlio_thread_offload_fn thread_offload
        pyxlio_get_socket_rings_num_fn get_socket_rings_num
        pyxlio_get_socket_rings_fds_fn get_socket_rings_fds
        pyxlio_dump_fd_stats_fn dump_fd_stats
        pyxlio_ioctl_fn ioctl
        pyxlio_register_recv_callback_fn register_recv_callback
        uint64_t native_mask
        size_t api_size
    void pyxlio_resolve_ops(const void *api, xlio_ops_t *ops)

    # libvma (struct vma_api_t): discovery with getsockopt(-1, SOL_SOCKET, 2800)
    int PYXLIO_SO_VMA_GET_API
    int PYXLIO_VMA_GET_API_FD
    int PYXLIO_API_VMA_SIZE
    int PYXLIO_API_VMA_MASK_OFFSET
    long PYXLIO_VMA_IOCTL_SINCE
    uint64_t PYXLIO_VMA_MASK_9_8_84
    ctypedef struct pyxlio_vma_cap_t:
        int vma_bit
        int xlio_bit
        long ops_offset
        long vma_offset
    const pyxlio_vma_cap_t *pyxlio_vma_caps
    size_t PYXLIO_VMA_N_CAPS
    uint64_t pyxlio_vma_caps_of(uint64_t vma_mask, int ioctl_ok)
    int pyxlio_vma_mask_plausible(uint64_t v)
    int pyxlio_resolve_vma_ops(const void *api, long version, int trusted, xlio_ops_t *ops)
    size_t pyxlio_build_user_alloc_cmsg(unsigned char *buf, uint8_t flags,
                                        pyxlio_alloc_fn alloc_fn, pyxlio_free_fn free_fn)


cdef extern from *:
    """
    #include <errno.h>
    static inline void pyxlio_set_errno(int v) { errno = v; }
    """
    void set_errno "pyxlio_set_errno"(int v) nogil


# ---- the Ultra API (cap bit 13): the 16-member socket API of 3.30.3-3.51.x / 3.94x and the
# 23-member Ultra API of 3.60+ (xlio_abi.h, "the Ultra API").  Handles are uintptr_t.
cdef extern from "pyxlio/xlio_abi.h" nogil:
    ctypedef uintptr_t pyxlio_poll_group_t
    ctypedef uintptr_t pyxlio_xsock_t
    ctypedef struct pyxlio_xbuf_t:
        uint64_t userdata

    int PYXLIO_SOCKET_EVENT_ESTABLISHED
    int PYXLIO_SOCKET_EVENT_TERMINATED
    int PYXLIO_SOCKET_EVENT_CLOSED
    int PYXLIO_SOCKET_EVENT_ERROR
    unsigned PYXLIO_GROUP_FLAG_SAFE
    unsigned PYXLIO_GROUP_FLAG_DIRTY
    unsigned PYXLIO_SOCKET_SEND_FLAG_FLUSH
    unsigned PYXLIO_SOCKET_SEND_FLAG_INLINE
    size_t PYXLIO_POLL_GROUP_ATTR_SIZE_SOCKET_API
    size_t PYXLIO_POLL_GROUP_ATTR_SIZE_ULTRA

    ctypedef void (*pyxlio_memory_cb_t)(void *addr, size_t len, size_t hugepage_size) noexcept nogil
    ctypedef void (*pyxlio_socket_event_cb_t)(pyxlio_xsock_t sock, uintptr_t userdata_sq,
                                              int event, int value) noexcept nogil
    ctypedef void (*pyxlio_socket_comp_cb_t)(pyxlio_xsock_t sock, uintptr_t userdata_sq,
                                             uintptr_t userdata_op) noexcept nogil
    ctypedef void (*pyxlio_socket_rx_cb_t)(pyxlio_xsock_t sock, uintptr_t userdata_sq, void *data,
                                           size_t len, pyxlio_xbuf_t *buf) noexcept nogil
    ctypedef void (*pyxlio_socket_accept_cb_t)(pyxlio_xsock_t sock, pyxlio_xsock_t parent,
                                               uintptr_t parent_userdata_sq) noexcept nogil

    ctypedef struct pyxlio_init_attr_t:
        unsigned flags
        pyxlio_memory_cb_t memory_cb
        pyxlio_alloc_fn memory_alloc
        pyxlio_free_fn memory_free
    ctypedef struct pyxlio_poll_group_attr_t:
        unsigned flags
        pyxlio_socket_event_cb_t socket_event_cb
        pyxlio_socket_comp_cb_t socket_comp_cb
        pyxlio_socket_rx_cb_t socket_rx_cb
        pyxlio_socket_accept_cb_t socket_accept_cb
    ctypedef struct pyxlio_socket_attr_t:
        unsigned flags
        int domain
        pyxlio_poll_group_t group
        uintptr_t userdata_sq
    ctypedef struct pyxlio_socket_send_attr_t:
        unsigned flags
        uint32_t mkey
        uintptr_t userdata_op

    ctypedef int (*pyxlio_u_init_ex_fn)(const pyxlio_init_attr_t *attr) nogil
    ctypedef int (*pyxlio_u_exit_fn)() nogil
    ctypedef int (*pyxlio_u_group_create_fn)(const pyxlio_poll_group_attr_t *attr,
                                             pyxlio_poll_group_t *group_out) nogil
    ctypedef int (*pyxlio_u_group_destroy_fn)(pyxlio_poll_group_t group) nogil
    ctypedef void (*pyxlio_u_group_poll_fn)(pyxlio_poll_group_t group) nogil
    ctypedef int (*pyxlio_u_socket_create_fn)(const pyxlio_socket_attr_t *attr,
                                              pyxlio_xsock_t *sock_out) nogil
    ctypedef int (*pyxlio_u_socket_destroy_fn)(pyxlio_xsock_t sock) nogil
    ctypedef int (*pyxlio_u_socket_update_fn)(pyxlio_xsock_t sock, unsigned flags,
                                              uintptr_t userdata_sq) nogil
    ctypedef int (*pyxlio_u_setsockopt_fn)(pyxlio_xsock_t sock, int level, int optname,
                                           const void *optval, socklen_t optlen) nogil
    ctypedef int (*pyxlio_u_sockname_fn)(pyxlio_xsock_t sock, sockaddr *addr,
                                         socklen_t *addrlen) nogil
    ctypedef int (*pyxlio_u_bind_fn)(pyxlio_xsock_t sock, const sockaddr *addr,
                                     socklen_t addrlen) nogil
    ctypedef int (*pyxlio_u_listen_fn)(pyxlio_xsock_t sock) nogil
    ctypedef void *(*pyxlio_u_get_pd_fn)(pyxlio_xsock_t sock) nogil
    ctypedef int (*pyxlio_u_detach_group_fn)(pyxlio_xsock_t sock) nogil
    ctypedef int (*pyxlio_u_attach_group_fn)(pyxlio_xsock_t sock, pyxlio_poll_group_t group) nogil
    ctypedef int (*pyxlio_u_send_fn)(pyxlio_xsock_t sock, const void *data, size_t len,
                                     const pyxlio_socket_send_attr_t *attr) nogil
    ctypedef int (*pyxlio_u_sendv_fn)(pyxlio_xsock_t sock, const iovec *iov, unsigned iovcnt,
                                      const pyxlio_socket_send_attr_t *attr) nogil
    ctypedef void (*pyxlio_u_group_flush_fn)(pyxlio_poll_group_t group) nogil
    ctypedef void (*pyxlio_u_socket_flush_fn)(pyxlio_xsock_t sock) nogil
    ctypedef void (*pyxlio_u_socket_buf_free_fn)(pyxlio_xsock_t sock, pyxlio_xbuf_t *buf) nogil
    ctypedef void (*pyxlio_u_group_buf_free_fn)(pyxlio_poll_group_t group,
                                                pyxlio_xbuf_t *buf) nogil

    ctypedef enum pyxlio_ultra_kind_t:
        PYXLIO_ULTRA_NONE
        PYXLIO_ULTRA_SOCKET_API
        PYXLIO_ULTRA_API

    # NULL where the loaded layout has no such member (exit, update, getsockname, getpeername,
    # listen, detach_group, attach_group in the 16-member API).
    ctypedef struct pyxlio_ultra_ops_t:
        int kind
        size_t group_attr_size
        pyxlio_u_init_ex_fn init_ex
        pyxlio_u_exit_fn exit
        pyxlio_u_group_create_fn group_create
        pyxlio_u_group_destroy_fn group_destroy
        pyxlio_u_group_poll_fn group_poll
        pyxlio_u_socket_create_fn socket_create
        pyxlio_u_socket_destroy_fn socket_destroy
        pyxlio_u_socket_update_fn socket_update
        pyxlio_u_setsockopt_fn setsockopt
        pyxlio_u_sockname_fn getsockname
        pyxlio_u_sockname_fn getpeername
        pyxlio_u_bind_fn bind
        pyxlio_u_bind_fn connect
        pyxlio_u_listen_fn listen
        pyxlio_u_get_pd_fn get_pd
        pyxlio_u_detach_group_fn detach_group
        pyxlio_u_attach_group_fn attach_group
        pyxlio_u_send_fn send
        pyxlio_u_sendv_fn sendv
        pyxlio_u_group_flush_fn group_flush
        pyxlio_u_socket_flush_fn socket_flush
        pyxlio_u_socket_buf_free_fn socket_buf_free
        pyxlio_u_group_buf_free_fn group_buf_free
    # Fill `u` from the xlio_api_t at `api` (never a vma_api_t); returns the kind.
    int pyxlio_resolve_ultra_ops(const void *api, pyxlio_ultra_ops_t *u)

    # memory registration (libibverbs, resolved at run time; verbs.h is never included)
    ctypedef void *(*pyxlio_ibv_reg_mr_fn)(void *pd, void *addr, size_t length, int access) nogil
    ctypedef int (*pyxlio_ibv_dereg_mr_fn)(void *mr) nogil
    int PYXLIO_IBV_MR_LKEY_OFFSET
    int PYXLIO_IBV_ACCESS_LOCAL_WRITE
    uint32_t pyxlio_ibv_mr_lkey(const void *mr)
