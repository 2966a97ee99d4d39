"""pyxlio-perf: a sockperf-style latency and throughput tool (``python -m pyxlio.perf``).

Modes as sockperf has them (``server``, ``ping-pong``, ``under-load``, ``throughput``), over UDP
or TCP, unicast or multicast, speaking sockperf's 14-byte header so that this tool and a C
sockperf can face each other. The receive side can use the stdlib socket or pyxlio's copy,
zero-copy, batch and callback paths. Run ``python -m pyxlio.perf --help``.

Exit status: 0 on a completed run, 1 when the run failed (server unreachable, no reply at all,
an error from the network or pyxlio), 2 for a bad command line, 130 when interrupted (client).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

_REEXEC_MARK = "PYXLIO_PERF_EMU_REEXEC"


def _err(msg: str) -> None:
    sys.stderr.write(f"pyxlio-perf: error: {msg}\n")
    sys.stderr.flush()


def _under_emulator() -> bool:
    try:
        from pyxlio import emu
    except ImportError:
        return False
    is_loaded = getattr(emu, "is_loaded", None)
    return bool(is_loaded()) if callable(is_loaded) else False


def reexec_under_emulator(module: str, argv: Sequence[str], *, strict: bool = False,
                          feed: str | None = None) -> int:
    """Replace this process by ``python -m module argv...`` under the emulator.

    Returns only on failure (with an exit status); when already under the emulator it returns
    -1 so the caller goes on in this process.
    """
    if _under_emulator():
        return -1
    if os.environ.get(_REEXEC_MARK):
        _err("re-executed under the emulator, but it is not loaded (is pyxlio built?)")
        return 1
    try:
        from pyxlio import emu
    except ImportError as exc:
        _err(f"--emu needs the built pyxlio package with its emulator: {exc}")
        return 1
    kwargs: dict[str, object] = {}
    if strict:
        kwargs["strict"] = True
    if feed is not None:
        kwargs["feed"] = feed
    try:
        make_env: Any = getattr(emu, "environ")  # noqa: B009 (written by the emulator's owner)
        env = dict(make_env(**kwargs))
    except Exception as exc:  # the emulator library is missing, bad feed spec...
        _err(f"cannot set up the emulator: {exc}")
        return 1
    env[_REEXEC_MARK] = "1"
    args = [sys.executable, "-m", module, *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(sys.executable, args, env)
    return 1  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    """Run the perf tool with ``argv`` (default: the process arguments); return the exit status."""
    from .cli import UsageError, parse_args

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
    except UsageError as exc:
        _err(str(exc))
        sys.stderr.write("run 'python -m pyxlio.perf --help' for the options\n")
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    if cfg.emu:
        status = reexec_under_emulator("pyxlio.perf", args, strict=cfg.emu_strict,
                                       feed=cfg.emu_feed)
        if status >= 0:
            return status

    from . import report
    from .methods import MethodError

    if cfg.histogram is not None:
        try:
            report.check_histogram_support()
        except report.HistogramUnavailable as exc:
            _err(str(exc))
            return 2

    import signal

    from .client import ClientError, run_client
    from .server import StopFlag, run_server

    try:
        if cfg.mode == "server":
            stop = StopFlag()
            old = {s: signal.signal(s, stop.set) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                def ready(host: str, port: int) -> None:
                    sys.stderr.write(
                        f"pyxlio-perf: server listening on {cfg.protocol.upper()} "
                        f"{host}:{port} (recv-method {cfg.recv_method}, "
                        f"{'busy-poll' if cfg.busy_poll else 'blocking'})\n"
                    )
                    sys.stderr.flush()

                sres = run_server(cfg, stop=stop, ready=ready)
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
            out = report.to_json(report.server_dict(sres)) + "\n" if cfg.json else \
                report.server_text(sres)
            sys.stdout.write(out)
            sys.stdout.flush()
            return 0

        try:
            cres = run_client(cfg)
        except KeyboardInterrupt:
            _err("interrupted")
            return 130
        if cfg.json:
            sys.stdout.write(report.to_json(report.client_dict(cres)) + "\n")
        else:
            sys.stdout.write(report.client_text(cres))
        sys.stdout.flush()
        if cfg.histogram is not None and cres.rtt_ns:
            report.draw_histogram(cres.rtt_ns, cfg.histogram,
                                  f"{cfg.mode} {cfg.protocol} {cfg.msg_size} B, {cfg.recv_method}")
        if cfg.mode != "throughput" and cres.latency is None:
            return 1
        return 0
    except (ClientError, MethodError, OSError, ValueError) as exc:
        _err(str(exc))
        return 1
