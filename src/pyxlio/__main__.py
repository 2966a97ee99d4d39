"""``python -m pyxlio demo|info|perf ...``: pyxlio's command-line entry points.

- ``demo``: receive millions of datagrams zero-copy under the XLIO emulator and check that
  nothing was lost or leaked (:mod:`pyxlio.demo`);
- ``info``: which XLIO provider this process sees (:mod:`pyxlio._info`);
- ``perf``: the sockperf-style perf tool (:mod:`pyxlio.perf`).
"""

from __future__ import annotations

import sys

COMMANDS = ("demo", "info", "perf")
USAGE = """usage: python -m pyxlio {demo,info,perf} [options]

  demo   receive a few million datagrams zero-copy under the XLIO emulator, run a short
         loopback ping-pong, check sequence gaps and leaks (exit 0 only if all is well)
  info   show the XLIO provider this process sees (libxlio, the emulator, or none)
  perf   the sockperf-style perf tool: server, ping-pong, under-load, throughput

'python -m pyxlio COMMAND --help' tells more.
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "demo":
        from pyxlio.demo import main as demo_main

        return demo_main(rest)
    if cmd == "info":
        from pyxlio._info import main as info_main

        return info_main(rest)
    if cmd == "perf":
        from pyxlio.perf import main as perf_main

        return perf_main(rest)
    sys.stderr.write(f"python -m pyxlio: unknown command {cmd!r}\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
