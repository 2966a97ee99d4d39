"""Where the tool's lines go: sockperf's lines (``sockperf: ...``, with sockperf's colour codes)
and pyxlio-perf's own marked lines (``pyxlio-perf: ...``).

In text mode sockperf's lines and the report go to stdout as sockperf writes them; pyxlio-perf's
report additions go there too on lines of their own, its progress lines to stderr. In JSON mode
stdout carries the one JSON object only, so the text lines are not written.
"""

from __future__ import annotations

from typing import TextIO

__all__ = ["END", "MAGENTA", "PREFIX", "PYX", "RED", "Log"]

PREFIX = "sockperf: "
PYX = "pyxlio-perf: "
MAGENTA = "\x1b[2;35m"  # sockperf's colour codes, written as it writes them (tty or not)
RED = "\x1b[0;31m"
END = "\x1b[0m"


class Log:
    """Writes sockperf's lines to ``out`` and progress lines to ``err`` (None: not written)."""

    def __init__(self, out: TextIO | None, err: TextIO | None = None) -> None:
        self.out = out
        self.err = err

    def msg(self, text: str) -> None:
        """A sockperf line: ``sockperf: text``."""
        self.raw(PREFIX + text + "\n")

    def raw(self, text: str) -> None:
        """Text as it is (sockperf writes some lines without its prefix)."""
        if self.out is not None:
            self.out.write(text)
            self.out.flush()

    def pyx(self, text: str) -> None:
        """A pyxlio-perf line among the report: ``pyxlio-perf: text``."""
        self.raw(PYX + text + "\n")

    def progress(self, text: str) -> None:
        """A pyxlio-perf progress line on stderr."""
        if self.err is not None:
            self.err.write(PYX + text + "\n")
            self.err.flush()
