"""pyxlio-perf: a sockperf-style latency and throughput tool (``python -m pyxlio.perf``).

Modes as sockperf has them (``server``, ``ping-pong``, ``under-load``, ``throughput``,
``playback``), over UDP or TCP, unicast or multicast, speaking sockperf's 14-byte header and
printing sockperf's report lines, so that this tool and a C sockperf can face each other and a
script that reads sockperf's output reads this tool's. The receive side can use the stdlib
socket or pyxlio's copy, zero-copy, batch and callback paths, or (TCP) XLIO's Ultra API. Run
``python -m pyxlio.perf --help``.

Exit status: 0 on a completed run (also when no reply came: sockperf says "No messages were
received from the server. Is the server down?" and exits 0, so does this tool), 1 when the run
failed (TCP server unreachable, connection closed, data integrity failure, an error from the
network or pyxlio), 2 for a bad command line or a sockperf option this tool does not offer (or
--recv-method ultra where this process has no Ultra API, or a server without listen), 130
when a client is interrupted (after its report).
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


def _daemonize() -> None:
    """sockperf's --daemonize: detach (fork, new session, fork), stdin from /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


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
    from .log import Log
    from .methods import MethodError

    if cfg.recv_method == "ultra":  # known only now: under the emulator after --emu's re-exec
        from .ultra import unavailable_reason

        why = unavailable_reason(cfg)
        if why is not None:
            _err(why)
            return 2

    if cfg.plot is not None:
        try:
            report.check_plot_support()
        except report.PlotUnavailable as exc:
            _err(str(exc))
            return 2

    import signal

    from .client import ClientError, run_client
    from .server import StopFlag, fast_loop_applies, run_server

    log = Log(None if cfg.json else sys.stdout, None if cfg.quiet else sys.stderr)
    try:
        if cfg.mode == "server":
            if cfg.daemonize:
                _daemonize()
            stop = StopFlag()
            old = {s: signal.signal(s, stop.set) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                def ready(host: str, port: int) -> None:
                    if cfg.quiet and not cfg.json:
                        return
                    sys.stderr.write(
                        f"pyxlio-perf: server listening on {cfg.protocol.upper()} "
                        f"{host}:{port} (recv-method {cfg.recv_method}, "
                        f"{'busy-poll' if cfg.busy_poll else 'blocking'}, "
                        f"{'compiled' if fast_loop_applies(cfg) else 'Python'} loop)\n"
                    )
                    sys.stderr.flush()

                sres = run_server(cfg, stop=stop, ready=ready, log=log)
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
            out = report.to_json(report.server_dict(sres)) + "\n" if cfg.json else \
                report.server_text(sres)
            sys.stdout.write(out)
            sys.stdout.flush()
            return 0

        cres = run_client(cfg, log=log)
        if cfg.json:
            sys.stdout.write(report.to_json(report.client_dict(cres)) + "\n")
        else:
            width = 0
            if sys.stdout.isatty():
                width = os.get_terminal_size(sys.stdout.fileno()).columns
            sys.stdout.write(report.client_text(cres, cfg, width))
        sys.stdout.flush()
        if cfg.full_log is not None and cfg.mode != "throughput":
            with open(cfg.full_log, "w", encoding="ascii") as f:
                report.write_full_log(f, cres, cfg)
        if cfg.plot is not None and cres.rtt_ns:
            report.draw_plot(cres.rtt_ns, cfg.plot,
                             f"{cfg.mode} {cfg.protocol} {cfg.msg_size} B, {cfg.recv_method}",
                             cfg.full_rtt)
        return 130 if cres.end == "user" else 0
    except (ClientError, MethodError, OSError, ValueError) as exc:
        _err(str(exc))
        return 1
