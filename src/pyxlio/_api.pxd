# cython: language_level=3
from pyxlio._xlio cimport xlio_ops_t

# The resolved operations of the loaded XLIO (every member NULL when none is loaded).
cdef const xlio_ops_t *get_ops() noexcept nogil
# Raise XlioError for `call` failing with `err` (never returns normally).
cdef int raise_xlio(int err, str call, str detail=*) except -1
# The current fork generation: packets from an older generation belong to the parent.
cdef unsigned long fork_generation() noexcept nogil
