# cython: language_level=3, embedsignature=True
"""XLIO's Ultra API: poll groups driving TCP sockets through callbacks (pyxlio.ultra).

libxlio 3.60+ has one zero-copy TCP path, the "Ultra API" (23 members); 3.30.3-3.51.x and
3.94x have its first form, the 16-member "socket API" (no listen, no accept callback, no
getsockname/getpeername).  The public names are re-exported by :mod:`pyxlio.ultra`.  The module
is one compilation unit in rooms, each an include file under ``_ultra_pxi/``:

- ``cstate.pxi``: the C half of a group: event queue, socket slots, callbacks, mutex, poll loop;
- ``group.pxi``: PollGroup (poll, dispatch, close);
- ``socket.pxi``: UltraSocket and addresses;
- ``buffers.pxi``: UltraBuffer, received payload in XLIO's buffers;
- ``sends.pxi``: MemoryRegion (ibv_reg_mr), Completion, zero-copy sends.

Lifetime model
--------------
Callbacks.  XLIO calls its callbacks only from inside its own calls (mostly
``xlio_poll_group_poll``; completions also from send, flush and destroy).  pyxlio makes every
XLIO call on a group without the GIL and under the group's mutex, with the group set as the
thread's "current group".  The C callbacks (``noexcept nogil``) only append a record (kind,
socket handle, userdata_sq, event and value, data/len/xbuf, userdata_op) to that group's queue:
no GIL, no Python.  The queue grows as needed.  Room for the events every live socket may still
raise (4 each) and for one completion per zero-copy send in flight is kept free, so those are
never lost; received data only uses room beyond that, and when the queue cannot grow (no
memory) the buffer goes back to XLIO at once and the next ``poll()`` raises an XlioError
(ENOBUFS) saying how much data was lost: never silently.  A callback that comes from outside
any pyxlio call (none should) finds no current group: it is counted (``stats()["stray"]``) and
its buffer returned.

Dispatch.  ``poll()`` polls the group with the GIL released (the mutex is taken for each round
of polls and given up between rounds, so other threads' sends get in) until a record is
queued or the timeout passes, checking signals at least every 50 ms; then, holding the GIL and
NOT the mutex, it dispatches the records that were queued when dispatch began (at most
``max_events``), one at a time, in the order XLIO raised them.  Records that handlers cause
(a send's completion...) wait for the next poll.  A handler may call back into the group
(send, close a socket, make sockets), except ``poll()`` and ``PollGroup.close()``, which raise
RuntimeError there.  A handler that raises: the exception propagates out of ``poll()``, the
records not yet dispatched stay queued, in order, for the next ``poll()``.  One ``poll()`` at a
time per group (RuntimeError in another thread meanwhile).

Sockets.  Each socket has a slot in its group; its id (slot index and generation) is its
userdata_sq, so every record names its socket without trusting a pointer from XLIO, and a slot
reused after TERMINATED is never taken for its predecessor.  An accepted socket gets its slot
inside the accept callback (``xlio_socket_update``, as libxlio's own tests do there) and its
UltraSocket when the accept record is dispatched.  States: new -> connecting -> established
(or listening); "closed" after the peer's close (CLOSED); "closing" once ``close()`` called
``xlio_socket_destroy``; "terminated" when TERMINATED is dispatched: the group forgets it then.
The C callback marks the slot TERMINATED at once, so no pyxlio call passes the handle (which
XLIO may free) to XLIO again, even before the record is dispatched.  A record whose socket is
unknown (no slot, or a slot reused) is counted in ``stats()["unknown"]``; its buffer goes back.
The group keeps every live socket (``group.sockets``) until TERMINATED or ``group.close()``.

Buffers.  An UltraBuffer is LIVE from its rx record's dispatch until released: ``release()``,
``with``, the on_receive handler returning without keeping it (only pyxlio holds it and no view
is exported: returned at once, silently), or being collected unreleased (returned, with a
ResourceWarning).  It exports read-only views with an export count: ``release()`` while a view
is exported raises BufferError.  It is freed exactly once, under the group's mutex, with
``xlio_socket_buf_free`` while its socket is not TERMINATED, else ``xlio_poll_group_buf_free``
while the group lives; after ``group.close()`` it is only marked released (XLIO took its
buffers back with the group).  A handler that raises: its buffer is released unless something
other than the traceback's frames holds it.

Sends.  ``send()`` is always INLINE: XLIO copies the bytes during the call, so it never holds
memory Python could free.  ``send_zc()`` sends from a MemoryRegion (memory registered with
``ibv_reg_mr`` on the socket's protection domain); the region and the Completion are kept alive
(the group's map userdata_op -> Completion) until the completion record is dispatched; the
region counts its sends in flight and ``MemoryRegion.close()`` refuses (BufferError) while any
is.  Closing a socket with sends in flight: XLIO may still complete them until TERMINATED;
those it never completed are then finished as abandoned (``Completion.completed`` False,
awaiting raises ConnectionAbortedError) and their regions let go.  ``group.close()`` does the
same for every send still in flight once the group is destroyed.

Group close.  ``close()`` refuses (BufferError) while a view of any of its buffers is exported,
and (RuntimeError) from inside its own handler; a ``poll()`` running in another thread is asked
to stop and waited for.  Then it returns every outstanding buffer, destroys every socket not yet
destroyed, polls (bounded: 2 s) until they are TERMINATED while discarding what arrives (data
buffers are returned, completions finished, accepted sockets destroyed; no handler runs),
destroys the group, and marks every socket terminated.

Fork and closed objects.  A call on a closed group, on a socket that is closing or terminated,
or on any object from before ``fork()`` (``pyxlio._api`` fork generation) raises OSError (EBADF)
and never reaches XLIO; a forked child never calls XLIO for its parent's objects.

Garbage collection.  Groups, sockets, buffers and regions are ``@no_gc_clear``: the references
their ``__dealloc__`` needs survive cycle collection.  Group and socket form a cycle through the
group's socket map (a dict, which the collector clears); the group's ``__dealloc__`` runs last
and destroys the XLIO group when it was not closed (ResourceWarning).
"""

cimport cython
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_SIMPLE, PyBuffer_FillInfo,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.exc cimport PyErr_CheckSignals, PyErr_Clear, PyErr_WarnEx
from cpython.ref cimport PyObject, Py_REFCNT
from libc.errno cimport (errno, EBADF, EEXIST, EINVAL, EIO, ENOBUFS, ENODEV, ENOMEM,
                         ECONNABORTED, EOPNOTSUPP)
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memset, strlen

from pyxlio._xlio cimport *
from pyxlio._api cimport (xlio_api_pointer, fork_generation, provider_started,
                          note_provider_calls_python, choose_allocator,
                          install_python_allocator, restore_python_allocator,
                          allocator_registered, python_enter, python_leave)

import sys
import warnings

from pyxlio.constants import GroupFlag, Layout, SocketEvent, UltraKind
from pyxlio.errors import UnsupportedError, XlioError, XlioNotLoadedError

include "_ultra_pxi/cstate.pxi"

cdef enum:
    POLL_SLICE_NS = 50000000        # longest nogil stretch of poll() between signal checks
    CLOSE_DRAIN_NS = 2000000000     # how long close() polls for its sockets' TERMINATED
    CLOSE_WAIT_POLL_MS = 5000       # how long close() waits for another thread's poll()
    DEFAULT_MAX_EVENTS = 4096

#: The address families an Ultra socket can have (XLIO: AF_INET or AF_INET6).
ULTRA_AF_INET = AF_INET
ULTRA_AF_INET6 = AF_INET6
#: The default ``max_events`` of :meth:`PollGroup.poll`.
MAX_EVENTS = DEFAULT_MAX_EVENTS

# ---------------------------------------------------------------------------------------------
# Which Ultra API answered
# ---------------------------------------------------------------------------------------------

cdef int _KIND = PYXLIO_ULTRA_NONE
cdef const void *_API = xlio_api_pointer()
if _API != NULL:
    _KIND = pyxlio_resolve_ultra_ops(_API, &pyxlio_u_ops)
else:
    memset(&pyxlio_u_ops, 0, sizeof(pyxlio_u_ops))

_NEEDS = ("the Ultra API needs libxlio 3.30.3 or later (the 16-member socket API up to 3.51, "
          "the 23-member Ultra API from 3.60), or pyxlio's emulator with a layout that has "
          "it (python -m pyxlio.emu -- CMD)")


def available() -> bool:
    """True when the loaded XLIO has the Ultra API (cap bit 13): libxlio 3.30.3+, or the
    emulator.  False without XLIO, under libvma, or with an older libxlio."""
    return _KIND != PYXLIO_ULTRA_NONE


def kind() -> UltraKind:
    """Which Ultra API the loaded XLIO has: ``UltraKind.ULTRA`` (23 members, 3.60+),
    ``UltraKind.SOCKET_API`` (16 members: 3.30.3-3.51.x, 3.94x) or ``UltraKind.NONE``."""
    return UltraKind(_KIND)


cdef str _layout_name():
    from pyxlio import _api
    api = _api.get_api()
    if api is None:
        return "no XLIO"
    return f"layout {Layout(api.layout).name}, {UltraKind(_KIND).name}"


cdef int require(void *fn, str member) except -1:
    """Raise the right error when the Ultra member `member` is absent."""
    if fn != NULL:
        return 0
    if _API == NULL:
        from pyxlio import _api
        if _api.get_api() is not None:      # libvma
            raise UnsupportedError(member, f"libvma has no Ultra API: {_NEEDS}")
        raise XlioNotLoadedError(member, f"XLIO is not loaded in this process: {_NEEDS}")
    if _KIND == PYXLIO_ULTRA_NONE:
        raise UnsupportedError(member, f"the loaded XLIO ({_layout_name()}) has no Ultra API "
                               f"(cap bit 13 clear): {_NEEDS}")
    raise UnsupportedError(member, f"the loaded XLIO's Ultra API ({_layout_name()}) has no "
                           f"{member}: it came with the 23-member Ultra API of libxlio 3.60")


cdef object _raise_ultra(str member, int err, str detail=None):
    raise XlioError.from_errno(err or EINVAL, member, detail or "")


_NOT_OFFLOADED = ("XLIO does not offload this socket: no offload device serves the address, or "
                  "its rules leave it to the OS; an Ultra socket has no kernel path, so it "
                  "cannot be used")


cdef object _raise_placement(str member, int err, str detail):
    """bind/connect/listen failed.  ENODEV is XLIO's answer for a socket it does not offload
    (3.60+: src/core/sock/sock-extra.cpp, 3.70.2); libxlio 3.51 gives connect's -1 without an
    errno then (sockinfo_tcp::connect's passthrough_unlock, src/core/sock/sockinfo_tcp.cpp,
    3.51.1): the same case, so the same error, never "[Errno 0]"."""
    if err == 0:
        err = ENODEV
    if err == ENODEV:
        raise XlioError(ENODEV, f"{_NOT_OFFLOADED} ({detail})" if detail else _NOT_OFFLOADED,
                        member)
    _raise_ultra(member, err, detail)


cdef int check_fork(unsigned long gen, str what) except -1:
    if gen != fork_generation():
        raise OSError(EBADF, f"Bad file descriptor: the {what} belongs to the parent process "
                      "(made before fork()): a child cannot use it")
    return 0


# ---------------------------------------------------------------------------------------------
# init(): xlio_init_ex
# ---------------------------------------------------------------------------------------------

cdef bint _initialised = False
# The XlioError of an xlio_init_ex that failed (or answered 0 without XLIO having started):
# never asked again.  Measured on libxlio 3.70.2 with no device: the first call answers
# -1/ENODEV, a second one 0 although XLIO never started, and a socket made then crashes the
# process (SIGFPE/SIGSEGV in xlio_socket_create).
cdef object _init_failure = None
cdef object _memory_callback = None
_callback_errors: list[BaseException] = []


def callback_errors() -> list[BaseException]:
    """The exceptions raised by the ``memory_callback`` given to :func:`init` (XLIO calls it
    where nobody can catch: each is kept here and shown on stderr)."""
    return list(_callback_errors)


cdef void _report(BaseException exc, str who) noexcept:
    try:
        _callback_errors.append(exc)
        import traceback
        sys.stderr.write(f"pyxlio: error in {who} (kept in pyxlio.ultra.callback_errors()):\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    except BaseException:
        pass


cdef void _memory_in_python(void *addr, size_t length, size_t hugepage_size) noexcept with gil:
    try:
        cb = _memory_callback
        if cb is not None:
            cb(<uintptr_t>addr, length, hugepage_size)
    except BaseException as exc:
        _report(exc, "the Ultra memory callback")


cdef void _memory_trampoline(void *addr, size_t length, size_t hugepage_size) noexcept nogil:
    """XLIO -> memory_callback(address, length, hugepage_size), from any XLIO call or thread;
    never into Python once it exits (pyxlio._api's guard)."""
    if not python_enter():
        return
    _memory_in_python(addr, length, hugepage_size)
    python_leave()


def init(*, memory_callback: object = None, allocator: object = None,
         free: object = None) -> None:
    """Initialise XLIO for the Ultra API (``xlio_init_ex``); once per process.

    The first :class:`PollGroup` calls it (without arguments) when the program has not.

    `memory_callback(address, length, hugepage_size)` is told of the memory XLIO allocates for
    its buffers (e.g. to register it elsewhere); XLIO may call it from any of its calls and
    threads; an exception it raises is reported (:func:`callback_errors`, stderr), not
    raised.  `allocator` and `free` give XLIO's pools a user allocator, with the rules and
    checks of :func:`pyxlio.set_allocator` (``"hugepages"``, ``"aligned"``, or a Python
    ``alloc(size) -> address`` with ``free(address)``): only before XLIO starts (its first
    socket or epoll: ``import socket`` starts it): afterwards XlioError (EEXIST), as the release
    answers.  A second call raises RuntimeError if it passes anything; without arguments it
    does nothing.
    """
    global _initialised, _memory_callback, _init_failure
    require(<void *>pyxlio_u_ops.init_ex, "xlio_init_ex")
    if _init_failure is not None:
        # libxlio 3.70.2 answers a second xlio_init_ex 0 after a failed first one although it
        # did not start (g_init_global_ctors_done, src/core/sock/sock-extra.cpp), and
        # xlio_socket_create then crashes the process: XLIO is never asked again.
        raise XlioError(_init_failure.errno, "xlio_init_ex failed earlier in this process; it "
                        "is not asked again (libxlio may then answer 0 without being "
                        "initialised, and its sockets would crash the process): "
                        f"{_init_failure.strerror}", "xlio_init_ex")
    if _initialised:
        if memory_callback is not None or allocator is not None or free is not None:
            raise RuntimeError("pyxlio.ultra.init() already ran in this process (or the first "
                               "PollGroup ran it): XLIO is initialised once; call init() with "
                               "your callbacks before making a PollGroup")
        return
    if memory_callback is not None and not callable(memory_callback):
        raise TypeError(f"memory_callback must be callable, not {type(memory_callback).__name__}")
    if allocator is None and free is not None:
        raise TypeError("free is only for a Python allocator callable (allocator=...)")
    cdef pyxlio_init_attr_t attr
    cdef pyxlio_alloc_fn alloc_fn = NULL
    cdef pyxlio_free_fn free_fn = NULL
    cdef int rc
    cdef int err
    memset(&attr, 0, sizeof(attr))
    kind_name = None
    previous = None
    if allocator is not None:
        from pyxlio import _api
        if _api.allocator_state()["registered"]:
            raise ValueError("an allocator is already registered with XLIO "
                             "(pyxlio.set_allocator): XLIO takes one, before it starts")
        kind_name = choose_allocator(allocator, free, &alloc_fn, &free_fn)
        if provider_started() == 1:
            raise XlioError(EEXIST, "XLIO has started already (its first socket or epoll, e.g. "
                            "`import socket`, starts it): a user allocator must be given "
                            "before that", "xlio_init_ex")
        attr.memory_alloc = alloc_fn
        attr.memory_free = free_fn
        note_provider_calls_python()
    if memory_callback is not None:
        attr.memory_cb = _memory_trampoline
        note_provider_calls_python()
        if provider_started() == 1 and _KIND == PYXLIO_ULTRA_API:
            warnings.warn("pyxlio.ultra.init(memory_callback=...): XLIO has started already "
                          "and libxlio 3.60+ then ignores the callback (xlio_init_ex returns "
                          "at once): call init() before the first socket or epoll",
                          RuntimeWarning, stacklevel=2)
    _memory_callback = memory_callback
    if kind_name == "python":
        previous = install_python_allocator(allocator, free)
    set_errno(0)
    with nogil:
        rc = pyxlio_u_ops.init_ex(&attr)
    if rc != 0:
        err = errno or EINVAL
        _memory_callback = None
        if previous is not None:
            restore_python_allocator(previous)
        if err == EEXIST:
            raise XlioError(EEXIST, "XLIO is initialised already and cannot take a user "
                            "allocator any more: give it before XLIO starts (its first "
                            "socket or epoll)", "xlio_init_ex")
        _init_failure = XlioError.from_errno(
            err, "xlio_init_ex", "XLIO failed to start (no usable RDMA device? see its errors "
            "on stderr): the Ultra API cannot be used in this process")
        raise _init_failure
    if provider_started() == 0:
        # 0 from xlio_init_ex, but XLIO's global initialisation failed (earlier, at its first
        # socket or epoll, or in a first xlio_init_ex): its sockets would crash the process.
        _memory_callback = None
        if previous is not None:
            restore_python_allocator(previous)
        _init_failure = XlioError(
            ENODEV, "XLIO is loaded but failed to start (no usable RDMA device? see its errors "
            "on stderr; pyxlio.get_api().started is False): the Ultra API cannot be used in "
            "this process", "xlio_init_ex")
        raise _init_failure
    if kind_name is not None:
        allocator_registered(kind_name, 3)
    _initialised = True


def initialised() -> bool:
    """Has :func:`init` run (explicitly, or through the first PollGroup)?"""
    return _initialised


cdef int ensure_init() except -1:
    if not _initialised:
        init()
    return 0


include "_ultra_pxi/buffers.pxi"
include "_ultra_pxi/sends.pxi"
include "_ultra_pxi/socket.pxi"
include "_ultra_pxi/group.pxi"


def _stray_callbacks() -> int:
    """Callbacks XLIO made outside any pyxlio call (test hook: should stay 0)."""
    return pyxlio_u_stray
