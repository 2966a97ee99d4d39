"""pyxlio's exceptions.

Every failure of an XLIO call is an :class:`XlioError`, an :class:`OSError` whose ``errno``
is the one XLIO reported and whose ``call`` names the Extra API member that failed.  Code that
already handles ``OSError`` keeps working; code that wants XLIO detail catches ``XlioError``.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = ["UnsupportedError", "XlioError", "XlioNotLoadedError"]


class XlioError(OSError):
    """An XLIO Extra API call failed.

    Attributes:
        errno: the errno XLIO set (0 when the call failed without setting one).
        strerror: a human explanation.
        call: the Extra API member that failed, e.g. ``"add_conf_rule"``.
    """

    call: str | None

    def __init__(self, errno: int, strerror: str, call: str | None = None) -> None:
        super().__init__(errno, strerror)
        self.call = call

    def __str__(self) -> str:
        where = f"{self.call}: " if self.call else ""
        return f"[Errno {self.errno}] {where}{self.strerror}"

    def __reduce__(self) -> tuple[type[XlioError], tuple[int, str, str | None]]:
        return (type(self), (self.errno or 0, self.strerror or "", self.call))

    @classmethod
    def from_errno(cls, err: int, call: str, detail: str = "") -> XlioError:
        """Build the error for ``call`` failing with ``err``, adding ``detail`` to the message."""
        text = os.strerror(err) if err else "failed"
        return cls(err, f"{text}{' (' + detail + ')' if detail else ''}", call)


class XlioNotLoadedError(XlioError):
    """An XLIO-only operation was asked for, but no XLIO provider is loaded in this process.

    Run the program under libxlio (``LD_PRELOAD=libxlio.so``) or under pyxlio's emulator
    (``python -m pyxlio.emu -- python prog.py``).
    """

    def __init__(self, call: str | None = None, strerror: str | None = None) -> None:
        super().__init__(
            _errno.ENOSYS,
            strerror
            or "XLIO is not loaded in this process: run under libxlio (LD_PRELOAD) or "
            "under pyxlio's emulator (python -m pyxlio.emu -- CMD)",
            call,
        )

    def __reduce__(self) -> tuple[type[XlioError], tuple[int, str, str | None]]:
        return (XlioError, (self.errno or 0, self.strerror or "", self.call))


class UnsupportedError(XlioError):
    """The loaded XLIO lacks this capability (its cap_mask bit is clear, or the layout of
    this libxlio version has no such member)."""

    def __init__(self, call: str | None = None, strerror: str | None = None) -> None:
        super().__init__(
            _errno.EOPNOTSUPP,
            strerror or "the loaded XLIO does not offer this call (capability bit clear)",
            call,
        )

    def __reduce__(self) -> tuple[type[XlioError], tuple[int, str, str | None]]:
        return (XlioError, (self.errno or 0, self.strerror or "", self.call))
