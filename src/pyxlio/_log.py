"""pyxlio's own diagnostics go to the ``logging`` logger named ``"pyxlio"`` (XLIO's own log,
and what dump_fd_stats prints, go through XLIO's logger instead).

As the logging documentation asks of libraries, the logger has only a NullHandler: an
application sees these records once it configures logging, e.g.
``logging.basicConfig(level=logging.DEBUG)`` or
``logging.getLogger("pyxlio").setLevel(logging.INFO)`` with a handler.  What a user must see
without configuring anything (a callback's exception nobody received, an allocator
environment variable that was not applied) is a warning (:mod:`warnings`), not a log record.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("pyxlio")
logger.addHandler(logging.NullHandler())
