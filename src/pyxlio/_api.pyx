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

from libc.errno cimport errno, EINVAL
from libc.stdint cimport uint8_t, uint64_t, uintptr_t
from libc.string cimport memset, strlen

from pyxlio._xlio cimport *

import os
import sys
import threading

from pyxlio.constants import AllocTarget, Capability, Layout, LogLevel
from pyxlio.errors import UnsupportedError, XlioError, XlioNotLoadedError

cdef extern from "<dlfcn.h>" nogil:
    void *dlsym(void *handle, const char *symbol)
    void *RTLD_DEFAULT

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdlib.h>
    #include <stdio.h>
    #include <sys/mman.h>
    #include <unistd.h>
    #include "pyxlio/xlio_abi.h"

    /* Sizes and offsets pinned by the test suite against the fact sheet. */
    typedef struct { const char *name; long value; } pyxlio_fact_t;
    #define PYXLIO_F(name, v) { name, (long)(v) }
    static const pyxlio_fact_t pyxlio_abi_facts[] = {
        PYXLIO_F("legacy.size", sizeof(pyxlio_api_legacy_t)),
        PYXLIO_F("legacy.magic", offsetof(pyxlio_api_legacy_t, magic)),
        PYXLIO_F("legacy.cap_mask", offsetof(pyxlio_api_legacy_t, cap_mask)),
        PYXLIO_F("legacy.recvfrom_zcopy", offsetof(pyxlio_api_legacy_t, recvfrom_zcopy)),
        PYXLIO_F("legacy.recvfrom_zcopy_free_packets", offsetof(pyxlio_api_legacy_t, recvfrom_zcopy_free_packets)),
        PYXLIO_F("legacy.add_conf_rule", offsetof(pyxlio_api_legacy_t, add_conf_rule)),
        PYXLIO_F("legacy.thread_offload", offsetof(pyxlio_api_legacy_t, thread_offload)),
        PYXLIO_F("legacy.get_socket_rings_num", offsetof(pyxlio_api_legacy_t, get_socket_rings_num)),
        PYXLIO_F("legacy.get_socket_rings_fds", offsetof(pyxlio_api_legacy_t, get_socket_rings_fds)),
        PYXLIO_F("legacy.dump_fd_stats", offsetof(pyxlio_api_legacy_t, dump_fd_stats)),
        PYXLIO_F("legacy.ioctl", offsetof(pyxlio_api_legacy_t, ioctl)),
        PYXLIO_F("legacy.register_recv_callback", offsetof(pyxlio_api_legacy_t, register_recv_callback)),
        PYXLIO_F("legacy.socketxtreme_poll", offsetof(pyxlio_api_legacy_t, socketxtreme_poll)),
        PYXLIO_F("legacy.socketxtreme_free_packets", offsetof(pyxlio_api_legacy_t, socketxtreme_free_packets)),
        PYXLIO_F("legacy.socketxtreme_ref_buff", offsetof(pyxlio_api_legacy_t, socketxtreme_ref_buff)),
        PYXLIO_F("legacy.socketxtreme_free_buff", offsetof(pyxlio_api_legacy_t, socketxtreme_free_buff)),
        PYXLIO_F("legacy.socket_api", offsetof(pyxlio_api_legacy_t, socket_api)),
        PYXLIO_F("v360.add_conf_rule", offsetof(pyxlio_api_360_t, add_conf_rule)),
        PYXLIO_F("v360.thread_offload", offsetof(pyxlio_api_360_t, thread_offload)),
        PYXLIO_F("v360.dump_fd_stats", offsetof(pyxlio_api_360_t, dump_fd_stats)),
        PYXLIO_F("v360.register_recv_callback", offsetof(pyxlio_api_360_t, register_recv_callback)),
        PYXLIO_F("v361.add_conf_rule", offsetof(pyxlio_api_361_t, add_conf_rule)),
        PYXLIO_F("v361.thread_offload", offsetof(pyxlio_api_361_t, thread_offload)),
        PYXLIO_F("v361.dump_fd_stats", offsetof(pyxlio_api_361_t, dump_fd_stats)),
        PYXLIO_F("v394.add_conf_rule", offsetof(pyxlio_api_394_t, add_conf_rule)),
        PYXLIO_F("v394.thread_offload", offsetof(pyxlio_api_394_t, thread_offload)),
        PYXLIO_F("v394.dump_fd_stats", offsetof(pyxlio_api_394_t, dump_fd_stats)),
        PYXLIO_F("v394.ioctl", offsetof(pyxlio_api_394_t, ioctl)),
        PYXLIO_F("packet.size", sizeof(pyxlio_zc_packet_t)),
        PYXLIO_F("packet.packet_id", offsetof(pyxlio_zc_packet_t, packet_id)),
        PYXLIO_F("packet.sz_iov", offsetof(pyxlio_zc_packet_t, sz_iov)),
        PYXLIO_F("packet.iov", offsetof(pyxlio_zc_packet_t, iov)),
        PYXLIO_F("packets.n_packet_num", offsetof(pyxlio_zc_packets_t, n_packet_num)),
        PYXLIO_F("packets.pkts", offsetof(pyxlio_zc_packets_t, pkts)),
        PYXLIO_F("info.size", sizeof(pyxlio_recv_info_t)),
        PYXLIO_F("info.struct_sz", offsetof(pyxlio_recv_info_t, struct_sz)),
        PYXLIO_F("info.packet_id", offsetof(pyxlio_recv_info_t, packet_id)),
        PYXLIO_F("info.src", offsetof(pyxlio_recv_info_t, src)),
        PYXLIO_F("info.dst", offsetof(pyxlio_recv_info_t, dst)),
        PYXLIO_F("info.payload_sz", offsetof(pyxlio_recv_info_t, payload_sz)),
        PYXLIO_F("info.socket_ready_queue_pkt_count", offsetof(pyxlio_recv_info_t, socket_ready_queue_pkt_count)),
        PYXLIO_F("info.socket_ready_queue_byte_count", offsetof(pyxlio_recv_info_t, socket_ready_queue_byte_count)),
        PYXLIO_F("info.hw_timestamp", offsetof(pyxlio_recv_info_t, hw_timestamp)),
        PYXLIO_F("info.sw_timestamp", offsetof(pyxlio_recv_info_t, sw_timestamp)),
        PYXLIO_F("SO_XLIO_GET_API", PYXLIO_SO_XLIO_GET_API),
        PYXLIO_F("MSG_XLIO_ZCOPY_FORCE", PYXLIO_MSG_XLIO_ZCOPY_FORCE),
        PYXLIO_F("MSG_XLIO_ZCOPY", PYXLIO_MSG_XLIO_ZCOPY),
        PYXLIO_F("XLIO_SND_FLAGS_DUMMY", PYXLIO_SND_FLAGS_DUMMY),
        PYXLIO_F("CMSG_XLIO_IOCTL_USER_ALLOC", PYXLIO_CMSG_IOCTL_USER_ALLOC),
        PYXLIO_F("CMSG_LEN(user_alloc)", PYXLIO_USER_ALLOC_CMSG_LEN),
        PYXLIO_F("CMSG_SPACE(user_alloc)", PYXLIO_USER_ALLOC_CMSG_SPACE),
        PYXLIO_F("PACKET_DROP", PYXLIO_PACKET_DROP),
        PYXLIO_F("PACKET_RECV", PYXLIO_PACKET_RECV),
        PYXLIO_F("PACKET_HOLD", PYXLIO_PACKET_HOLD),
        PYXLIO_F("LOG_NONE", PYXLIO_LOG_NONE),
        PYXLIO_F("LOG_ALL", PYXLIO_LOG_ALL),
    };
    #define PYXLIO_N_FACTS (sizeof(pyxlio_abi_facts) / sizeof(pyxlio_abi_facts[0]))

    /* The magic, read without assuming the pointer is aligned. */
    static uint64_t pyxlio_read_u64(const void *p, size_t off) {
        uint64_t v; memcpy(&v, (const unsigned char *)p + off, sizeof v); return v;
    }

    /* Built-in allocators.  The size of each block is remembered for free (munmap needs it). */
    #define PYXLIO_ALLOC_SLOTS 64
    static struct { void *p; size_t n; int mapped; } pyxlio_blocks[PYXLIO_ALLOC_SLOTS];
    static pthread_mutex_t pyxlio_blocks_mu = PTHREAD_MUTEX_INITIALIZER;
    static unsigned long pyxlio_alloc_calls, pyxlio_free_calls;
    static unsigned long long pyxlio_alloc_bytes;
    static int pyxlio_huge_fallback;

    static void pyxlio_note_block(void *p, size_t n, int mapped) {
        pthread_mutex_lock(&pyxlio_blocks_mu);
        for (int i = 0; i < PYXLIO_ALLOC_SLOTS; i++)
            if (!pyxlio_blocks[i].p) {
                pyxlio_blocks[i].p = p; pyxlio_blocks[i].n = n; pyxlio_blocks[i].mapped = mapped;
                break;
            }
        pyxlio_alloc_calls++; pyxlio_alloc_bytes += n;
        pthread_mutex_unlock(&pyxlio_blocks_mu);
    }
    /* hugepages: MAP_HUGETLB in 2 MiB units; falls back to page-aligned anonymous memory. */
    static void *pyxlio_alloc_hugepages_c(size_t n) {
        const size_t huge = (size_t)2 << 20;
        size_t len = (n + huge - 1) & ~(huge - 1);
        if (len == 0) len = huge;
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (p == MAP_FAILED) {
            size_t page = (size_t)sysconf(_SC_PAGESIZE);
            len = (n + page - 1) & ~(page - 1);
            if (len == 0) len = page;
            p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return NULL;
            pyxlio_huge_fallback = 1;
        }
        pyxlio_note_block(p, len, 1);
        return p;
    }
    /* aligned: page-aligned heap memory (posix_memalign). */
    static void *pyxlio_alloc_aligned_c(size_t n) {
        void *p = NULL;
        if (posix_memalign(&p, (size_t)sysconf(_SC_PAGESIZE), n ? n : 1) != 0) return NULL;
        pyxlio_note_block(p, n, 0);
        return p;
    }
    static void pyxlio_free_builtin_c(void *p) {
        if (!p) return;
        pthread_mutex_lock(&pyxlio_blocks_mu);
        for (int i = 0; i < PYXLIO_ALLOC_SLOTS; i++)
            if (pyxlio_blocks[i].p == p) {
                if (pyxlio_blocks[i].mapped) munmap(p, pyxlio_blocks[i].n); else free(p);
                pyxlio_blocks[i].p = NULL;
                pyxlio_free_calls++;
                break;
            }
        pthread_mutex_unlock(&pyxlio_blocks_mu);
    }
    """
    ctypedef struct pyxlio_fact_t:
        const char *name
        long value
    const pyxlio_fact_t *pyxlio_abi_facts
    size_t PYXLIO_N_FACTS
    uint64_t pyxlio_read_u64(const void *p, size_t off) nogil
    void *pyxlio_alloc_hugepages_c(size_t n) nogil
    void *pyxlio_alloc_aligned_c(size_t n) nogil
    void pyxlio_free_builtin_c(void *p) nogil
    unsigned long pyxlio_alloc_calls
    unsigned long pyxlio_free_calls
    unsigned long long pyxlio_alloc_bytes
    int pyxlio_huge_fallback


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

cdef xlio_ops_t OPS
cdef void *API_PTR = NULL
cdef unsigned long FORK_GENERATION = 0

memset(&OPS, 0, sizeof(OPS))


cdef const xlio_ops_t *get_ops() noexcept nogil:
    return &OPS


cdef unsigned long fork_generation() noexcept nogil:
    return FORK_GENERATION


def _after_fork_in_child() -> None:
    global FORK_GENERATION
    FORK_GENERATION += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef inline bint _bit(uint64_t mask, int bit) noexcept nogil:
    return (mask >> bit) & 1


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


def _detect() -> None:
    global API_PTR
    cdef int saved = errno
    API_PTR = _query_api()
    set_errno(saved)       # a failed probe (EBADF) must not leak into the caller's errno
    if API_PTR != NULL:
        pyxlio_resolve_ops(API_PTR, &OPS)   # the layout table of include/pyxlio/xlio_abi.h


_detect()


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
        f"the loaded XLIO ({Layout(OPS.layout).name} layout, cap_mask {OPS.cap_mask:#x}) "
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
                    return path or None
    except OSError:
        return None
    return None


cdef class Api:
    """The XLIO Extra API that answered in this process.

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
        """The ``xlio_api_t`` layout, told from cap_mask."""
        return Layout(OPS.layout)

    @property
    def capabilities(self) -> Capability:
        """The cap_mask as a :class:`pyxlio.Capability` flag (unknown bits dropped)."""
        return Capability(self.cap_mask & int(Capability(0x3FFF)))

    def has(self, cap: Capability | int) -> bool:
        """True when every bit of `cap` is set in cap_mask (the member exists)."""
        if isinstance(cap, bool) or not isinstance(cap, int):
            raise TypeError(f"cap must be a pyxlio.Capability, not {type(cap).__name__}")
        return cap != 0 and (self.cap_mask & int(cap)) == int(cap)

    @property
    def size(self) -> int:
        """The size of ``xlio_api_t`` implied by cap_mask and layout: never read past it."""
        cdef uint64_t caps = self.cap_mask
        if OPS.layout != PYXLIO_LAYOUT_LEGACY:
            return 16 + 8 * {1: 4, 2: 3, 3: 4}[OPS.layout] + (128 if _bit(caps, 13) else 0)
        if _bit(caps, PYXLIO_CAP_XLIO_SOCKET):
            return PYXLIO_API_LEGACY_SIZE_3_30_3
        if caps & (0xF << 7) or _bit(caps, 0):
            return PYXLIO_API_LEGACY_SIZE_3_10
        return PYXLIO_API_LEGACY_SIZE_2_0

    @property
    def library(self) -> str | None:
        """Path of the shared library that serves the API (from /proc/self/maps)."""
        if self._library is None:
            self._library = _mapping_of(self.address) or ""
        return self._library or None

    @property
    def provider(self) -> str:
        """``"emulator"`` for pyxlio's bundled emulator, ``"libxlio"`` otherwise."""
        return "emulator" if self.emulator_version is not None else "libxlio"

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
        if self.provider == "emulator":
            return f"emulator ({self.layout.versions} layout)"
        return self.layout.versions

    def __repr__(self) -> str:
        return (f"<pyxlio.Api provider={self.provider} layout={self.layout.name} "
                f"cap_mask={self.cap_mask:#x} library={self.library!r}>")


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
    text = parsed.format(offload_keyword="vma" if OPS.layout == PYXLIO_LAYOUT_LEGACY else "xlio")
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


cdef void _report(BaseException exc, str where) noexcept:
    """Keep an exception raised where nobody can catch it, and show it on stderr."""
    try:
        _allocator_errors.append(exc)
        import traceback
        sys.stderr.write(f"pyxlio: exception in the user allocator's {where} (kept in "
                         "pyxlio.allocator_state()['errors']):\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    except BaseException:
        pass


cdef void *_alloc_trampoline(size_t size) noexcept with gil:
    """XLIO -> Python alloc(size) -> address.  Called without the GIL from XLIO's init."""
    global _py_alloc_calls
    try:
        _py_alloc_calls += 1
        address = _py_alloc(size)
        if isinstance(address, bool) or not isinstance(address, int):
            raise TypeError(f"alloc({size}) must return an address (int), not "
                            f"{type(address).__name__}")
        if not 0 < address < 2 ** 64:
            raise ValueError(f"alloc({size}) returned {address:#x}: not a valid address")
        return <void *><uintptr_t>address
    except BaseException as exc:
        _report(exc, "alloc")
        return NULL


cdef void _free_trampoline(void *ptr) noexcept with gil:
    """XLIO -> Python free(address)."""
    global _py_free_calls
    try:
        _py_free_calls += 1
        _py_free(<uintptr_t>ptr)
    except BaseException as exc:
        _report(exc, "free")


cdef void *_alloc_hugepages(size_t size) noexcept nogil:
    cdef int before = pyxlio_huge_fallback
    cdef void *p = pyxlio_alloc_hugepages_c(size)
    if p != NULL and pyxlio_huge_fallback and not before:
        with gil:
            try:
                import warnings
                warnings.warn("pyxlio: hugepages are not available (MAP_HUGETLB failed); "
                              "XLIO's pool uses page-aligned anonymous memory instead",
                              RuntimeWarning, stacklevel=1)
            except BaseException as exc:
                _report(exc, "alloc (warning)")
    return p


cdef void *_alloc_aligned(size_t size) noexcept nogil:
    return pyxlio_alloc_aligned_c(size)


cdef void _free_builtin(void *p) noexcept nogil:
    pyxlio_free_builtin_c(p)


_STARTERS = ("socket", "selectors", "asyncio", "subprocess", "ctypes.util")


def set_allocator(allocator: object = "hugepages", free: object = None, *,
                  pools: int = AllocTarget.BOTH) -> None:
    """Register a user allocator for XLIO's buffer pools (must run before XLIO starts).

    `allocator` is ``"hugepages"`` (MAP_HUGETLB, falling back to page-aligned anonymous memory
    with a RuntimeWarning), ``"aligned"`` (page-aligned heap memory), or a Python callable
    ``alloc(size) -> address`` used together with `free` (``free(address)``).  XLIO calls alloc
    once, from the thread that starts it, without the GIL: pyxlio's trampolines take the GIL and
    report (never lose) exceptions: see ``allocator_state()["errors"]``.

    `pools` says which pools it serves (:class:`pyxlio.AllocTarget`: RX, TX or BOTH).

    XLIO accepts this only before its global initialisation, which the first AF_INET socket or
    epoll starts, and ``import socket`` / ``selectors`` / ``asyncio`` / ``subprocess`` /
    ``ctypes.util`` already create an epoll.  Call it at the very top of the program, or set
    ``PYXLIO_ALLOCATOR=hugepages`` to have ``import pyxlio`` do it.
    """
    global _py_alloc, _py_free
    if isinstance(pools, bool) or not isinstance(pools, int):
        raise TypeError(f"pools must be a pyxlio.AllocTarget, not {type(pools).__name__}")
    if pools not in (1, 2, 3):
        raise ValueError(f"pools must be AllocTarget.RX, TX or BOTH, not {pools!r}")
    cdef pyxlio_alloc_fn alloc_fn
    cdef pyxlio_free_fn free_fn
    if isinstance(allocator, str):
        if free is not None:
            raise TypeError("free is only for a Python alloc callable, not with a built-in "
                            f"allocator ({allocator!r})")
        if allocator == "hugepages":
            alloc_fn, free_fn = _alloc_hugepages, _free_builtin
        elif allocator == "aligned":
            alloc_fn, free_fn = _alloc_aligned, _free_builtin
        else:
            raise ValueError(f"unknown allocator {allocator!r}: use 'hugepages', 'aligned' or "
                             "a callable alloc(size) -> address with free(address)")
        kind = allocator
    elif callable(allocator):
        if not callable(free):
            raise TypeError("a Python allocator needs free: a callable free(address)")
        alloc_fn, free_fn = _alloc_trampoline, _free_trampoline
        kind = "python"
    else:
        raise TypeError(f"allocator must be 'hugepages', 'aligned' or a callable, not "
                        f"{type(allocator).__name__}")
    _require(<void *>OPS.ioctl, "ioctl")

    cdef unsigned char msg[64]
    cdef size_t length = pyxlio_build_user_alloc_cmsg(msg, <uint8_t>pools, alloc_fn, free_fn)
    if kind == "python":
        # Set before the call: XLIO may call alloc at any time once it has the message.
        previous = (_py_alloc, _py_free)
        _py_alloc, _py_free = allocator, free
    cdef int rc
    set_errno(0)
    with nogil:
        rc = OPS.ioctl(msg, length)
    if rc != 0:
        err = errno or EINVAL
        if kind == "python":
            _py_alloc, _py_free = previous
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
    _allocator["kind"] = kind
    _allocator["pools"] = AllocTarget(pools)


def allocator_state() -> dict[str, object]:
    """What pyxlio registered as XLIO's allocator, and what XLIO asked of it so far."""
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
        "errors": list(_allocator_errors),
    }


def _apply_env_allocator(spec: str) -> None:
    """PYXLIO_ALLOCATOR=hugepages|aligned[:rx|tx|both], applied by ``import pyxlio``."""
    name, _, pools_text = spec.strip().partition(":")
    pools = {"": 3, "both": 3, "rx": 2, "tx": 1, "rxtx": 3}.get(pools_text.strip().lower())
    if pools is None:
        raise ValueError(f"PYXLIO_ALLOCATOR={spec!r}: pools must be rx, tx or both")
    set_allocator(name.strip().lower(), pools=pools)
