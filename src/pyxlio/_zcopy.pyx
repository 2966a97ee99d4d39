# cython: language_level=3, embedsignature=True
"""Zero-copy receive: the per-socket engine, Packet and PacketBatch, receive callbacks.

The module is one compilation unit (the hot path calls across its parts) in five rooms, each an
include file under ``_zcopy_pxi/``:

- ``store.pxi``: the arena, a batch's C storage, pooled per socket;
- ``walker.pxi``: the nogil receive loops, and the checks of what a provider hands back;
- ``callbacks.pxi``: the context given to the provider, the C filter, the trampoline, RecvInfo;
- ``engine.pxi``: SocketEngine, the per-socket state machine;
- ``exporters.pxi``: PacketBatch and Packet, the buffer exporters;
- ``poller.pxi``: the Poller, one receive call over many sockets' engines.

Lifetime model
--------------
Every object that owns provider memory has states, and each move between them is made under
the GIL, before any section that releases it.  After every nogil section the state is checked
again, because another thread may have moved it meanwhile.

Engine (one per socket): OPEN -> CLOSING -> CLOSED.
  - A receive or free that uses the fd counts in ``busy`` while it runs without the GIL.  A
    receive may start only while OPEN; a free may run while OPEN or CLOSING.
  - ``close()`` refuses (BufferError, still OPEN) while a view of any packet of the socket is
    exported, and refuses (RuntimeError) inside a receive callback.  Otherwise it moves to
    CLOSING (no new receive, no new export), waits until ``busy`` is 0 (a receive waiting for
    data notices within one 50 ms poll slice), releases every LIVE batch and held packet,
    unregisters the callback, waits for ``busy`` again, and moves to CLOSED.  Only then does the
    socket close the fd, so no call of pyxlio ever reaches a closed (or reused) fd.
  - A receive that finds the engine no longer OPEN after a nogil section frees what it got and
    raises OSError(EBADF): nothing received after close() began is handed out.
Batch: FILLING -> LIVE -> RELEASED.
  - FILLING: a receive call owns the store; nothing else can reach it.
  - LIVE: the batch owns the store and the packet ids; its zero-copy datagrams count in
    ``outstanding``; it is linked into its engine's list (which close() walks).
  - -> RELEASED (``release()``, the last ``Packet.release()``, close(), or collection with a
    ResourceWarning): refused while any view of the batch is exported; under the GIL the ids
    are marked freed (a per-datagram flag: each id goes to the provider exactly once),
    ``outstanding`` is decremented, the batch is unlinked and marked released; only then does
    the free call run (without the GIL), on the socket that received, and never in a forked
    child (a fork generation bumped by pthread_atfork); then the store goes back to the pool.
  - A Packet is a view of one datagram of a batch; releasing it frees that datagram the same
    way.  ``Packet()``/``PacketBatch()`` cannot be made from Python; objects made with
    ``__new__`` are RELEASED from the start.
Callback packets: BORROWED -> (HOLD) STAGED -> HELD, or BORROWED -> forgotten (DROP/RECV).
  - During the callback the packet is the provider's (BORROWED): its view is released when the
    callback returns; if the callback kept one, the packet is held (with a BufferError
    reported) so the memory stays valid.
  - A HOLD verdict is only the provider's once the callback has returned and the provider has
    processed it, so the packet is STAGED (counted in ``outstanding``, invisible) and promoted
    into ``held`` (and the engine's list) when the thread that ran the callback is out of the
    provider: when its pyxlio receive call returns, at its next pyxlio call, or at its next
    callback.  close() promotes and frees every staged packet once no callback is in flight.
  - The callback context is kept alive by the engine, and keeps the engine alive while the
    provider has it (see callbacks.pxi).  Inside a callback, receive and close calls raise
    RuntimeError and frees are deferred to the thread's next pyxlio call.
Poller: OPEN -> CLOSING -> CLOSED, with its own ``busy`` around its epoll_wait (close() waits
for it).  It owns no provider memory: one ``poll()`` is one receive pass over the ready
sockets, each engine checked OPEN and counted in its ``busy`` under the GIL before the one
nogil drain and finished by the engine's own ``finish_pass`` after it, exactly as a
``recv_batch`` pass: a socket closed meanwhile gives nothing (what it gave is freed), and its
batches are the socket's (unregistering leaves them valid).
Garbage collection: engines, batches and packets are ``@no_gc_clear``; a memoryview torn down
in a cycle still finds its exporter; ``__dealloc__`` never frees under a reader, never imports,
never raises.
"""

cimport cython
from cpython.array cimport array, clone
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.exc cimport PyErr_CheckSignals, PyErr_Clear, PyErr_WarnEx
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.errno cimport errno, EAGAIN, EBADF, EINTR, EINVAL, EIO, ENOMEM, EPROTO
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset, memcmp, strerror

from pyxlio._xlio cimport *
from pyxlio._api cimport (get_ops, raise_xlio, fork_generation, offload_state,
                          provider_started, provider_calls_python,
                          note_provider_calls_python)

import atexit
import collections
import time
import weakref

from pyxlio.errors import XlioError, XlioNotLoadedError

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    unsigned short ntohs(unsigned short)
    unsigned int ntohl(unsigned int)

cdef extern from "<time.h>" nogil:
    int CLOCK_REALTIME
    int clock_gettime(int clk, timespec *ts)

cdef extern from "<sys/socket.h>" nogil:
    int getsockname(int fd, sockaddr *addr, socklen_t *addrlen)
    int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
    int SO_TIMESTAMPNS
    int SO_TIMESTAMPING

cdef extern from *:
    """
    #include <linux/net_tstamp.h>
    #define PYXLIO_TS_FLAGS (SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE | \
                             SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE)
    """
    int PYXLIO_TS_FLAGS

cdef extern from "Python.h":
    object PyMemoryView_FromObject(object obj)

cdef enum:
    ADDR_BYTES = 28               # sizeof(struct sockaddr_in6): holds v4 and v6 sources
    LANDING = 65536 + 64          # one recvfrom_zcopy answer: descriptors, or a copied datagram
    ZC_HDR = 8                    # n_packet_num
    ZC_PKT = 16                   # packet_id + sz_iov
    ZC_IOV = 16                   # one struct iovec
    MAX_UDP_PAYLOAD = 65535
    MAX_CB_FRAGS = 4096           # more fragments than that in a callback: malformed
    MAX_PACKETS = 65536           # recv_batch's max_packets bound
    POOL_MAX = 4                  # stores kept per socket
    POLL_SLICE_MS = 50            # longest poll() between two checks of signals and state
    SLOT_ZC = 1                   # an XLIO buffer (packet_id) to free
    SLOT_FREED = 2
    SLOT_TRUNC = 4
    ENGINE_OPEN = 1
    ENGINE_CLOSING = 2
    ENGINE_CLOSED = 3
    TS_OFF = 0                    # recv_batch(timestamps=...): none asked
    TS_SOFTWARE = 1               # SO_TIMESTAMPNS: the kernel's software receive time
    TS_HARDWARE = 2               # SO_TIMESTAMPING: the NIC's stamp where given, else software
    PASS_CLOSED = -2              # finish_pass: the socket was closed during the pass

# The kernel path reserves max_packets x max_datagram bytes: at most this much per call (a
# larger request takes fewer datagrams a call, never more memory).
cdef size_t KERNEL_BATCH_BYTES = 32 << 20
cdef double MAX_TIMEOUT = 9.2e9   # what socket.settimeout accepts (2**63 ns)
# recvfrom_zcopy's allow-list of flags: MSG_DONTWAIT (do not wait, this call) and
# MSG_ZCOPY_FORCE (refuse a copy).  MSG_PEEK, MSG_TRUNC, MSG_WAITALL, MSG_ERRQUEUE, MSG_OOB...
# have no zero-copy meaning (a peeked zero-copy packet would have to be freed, a truncated one
# would show stale bytes) and are refused with ValueError.
cdef int RECV_FLAGS_ALLOWED = MSG_DONTWAIT | PYXLIO_MSG_XLIO_ZCOPY_FORCE

cdef char EMPTY[1]

include "_zcopy_pxi/store.pxi"
include "_zcopy_pxi/walker.pxi"
include "_zcopy_pxi/callbacks.pxi"
include "_zcopy_pxi/engine.pxi"
include "_zcopy_pxi/exporters.pxi"
include "_zcopy_pxi/poller.pxi"
