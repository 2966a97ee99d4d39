# cython: language_level=3
from pyxlio._xlio cimport xlio_ops_t, pyxlio_alloc_fn, pyxlio_free_fn

# The resolved operations of the loaded XLIO (every member NULL when none is loaded).
cdef const xlio_ops_t *get_ops() noexcept nogil
# The XLIO xlio_api_t that answered (for pyxlio_resolve_ultra_ops), or NULL: none, or libvma.
cdef const void *xlio_api_pointer() noexcept nogil
# Raise XlioError for `call` failing with `err` (never returns normally).
cdef int raise_xlio(int err, str call, str detail=*) except -1
# The current fork generation: packets from an older generation belong to the parent.
cdef unsigned long fork_generation() noexcept nogil

# Can a packet XLIO's receive callback HOLDs be given back (recvfrom_zcopy_free_packets
# exists)?  False on the 3.60 layout, which has callbacks and honours HOLD but cannot free.
# Python: Api.can_return_held.
cdef bint can_return_held() noexcept nogil
# get_socket_rings_num(fd) of the loaded XLIO, or -2 (errno untouched) when the layout has none
# (only the legacy layout has it).  >= 1 offloaded, 0 kernel-served, -1 unbound / not a socket.
cdef int socket_rings_num(int fd) noexcept nogil
# Whether XLIO offloads fd, from the ring count: 1 yes, 0 no (also: no XLIO loaded), -1 cannot
# be known (no get_socket_rings_num in this layout, or an unbound socket).  errno preserved.
cdef int offload_state(int fd) noexcept nogil
# Has the loaded provider's global init run (dump_fd_stats(-1, 8) answers 0)?  1 yes, 0 no
# (not yet, or it failed: it passes every socket to the kernel), -1 cannot tell (no provider,
# or no dump_fd_stats).  errno preserved.  Python: Api.started.
cdef int provider_started() noexcept nogil
# Has XLIO been handed a function that takes the GIL (a receive callback's trampoline, a user
# allocator)?  Sticky.  While it has not, non-blocking provider calls keep the GIL.
cdef bint provider_calls_python() noexcept nogil
cdef void note_provider_calls_python() noexcept nogil

# The user allocator (set_allocator's rules), for xlio_init_ex (pyxlio.ultra.init): check and
# choose the C functions; install the Python pair before the call (the previous pair comes
# back, to restore when XLIO refuses); say that XLIO accepted it.
cdef str choose_allocator(object allocator, object free, pyxlio_alloc_fn *alloc_fn,
                          pyxlio_free_fn *free_fn)
cdef tuple install_python_allocator(object alloc, object free)
cdef void restore_python_allocator(tuple previous) noexcept
cdef void allocator_registered(str kind, int pools) noexcept
# A C callback that wants Python: python_enter() says whether it may (0 once Python exits or
# has finalized: then it must not take the GIL); python_leave() after.  See _api.pyx.
cdef int python_enter() noexcept nogil
cdef void python_leave() noexcept nogil
