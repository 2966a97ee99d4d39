"""pyxlio's own diagnostics go through ``logging.getLogger("pyxlio")`` (a NullHandler only,
as a library's logger should have), not print()."""

from __future__ import annotations

import logging
import socket as stdsocket

import pytest

from pyxlio import Verdict


def test_the_pyxlio_logger_has_only_a_null_handler() -> None:
    from pyxlio import _log

    assert _log.logger is logging.getLogger("pyxlio")
    assert [type(h) for h in _log.logger.handlers] == [logging.NullHandler]


def test_receive_buffer_is_logged(make_socket: object, caplog: pytest.LogCaptureFixture,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    sock = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)  # type: ignore[operator]
    with caplog.at_level(logging.DEBUG, logger="pyxlio"):
        granted = sock.set_receive_buffer(65536)
    records = [r for r in caplog.records if r.name == "pyxlio"]
    assert any(f"65536 bytes asked, {granted} granted" in r.getMessage() for r in records)
    assert capsys.readouterr().err == ""


def test_callback_path_is_logged(make_socket: object,
                                 caplog: pytest.LogCaptureFixture) -> None:
    sock = make_socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)  # type: ignore[operator]
    sock.bind(("127.0.0.1", 0))
    with caplog.at_level(logging.DEBUG, logger="pyxlio"):
        sock.set_recv_callback(lambda view, info: Verdict.RECV)
    path = sock.callback_path
    try:
        assert any(f"runs on the {path} path" in r.getMessage() for r in caplog.records)
    finally:
        sock.set_recv_callback(None)
