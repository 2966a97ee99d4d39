"""``python -m pyxlio info [--json]``: what XLIO this process sees, and pyxlio's state."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any


def collect() -> dict[str, Any]:
    """The facts ``pyxlio info`` prints, as a dict."""
    import socket

    import pyxlio

    # XLIO (and libvma, and the emulator) start with a process's first socket: make one, so
    # that `started` says whether the provider could start, not whether anything asked yet.
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    api = pyxlio.get_api()
    info: dict[str, Any] = {
        "pyxlio": pyxlio.__version__,
        "python": sys.version.split()[0],
        "loaded": api is not None,
        "ld_preload": os.environ.get("LD_PRELOAD") or None,
    }
    if api is None:
        info.update(provider=None, layout=None, cap_mask=None, capabilities=[], library=None,
                    started=None)
    else:
        info.update(
            provider=api.provider,
            version=api.version,
            layout=api.layout.name,
            layout_text=str(api.layout),
            layout_versions=api.layout.versions,
            cap_mask=f"{api.cap_mask:#x}",
            family=api.family,
            native_mask=f"{api.native_mask:#x}",
            capabilities=[str(c) for c in pyxlio.Capability if api.has(c)],
            api_size=api.size,
            can_return_held=api.can_return_held,
            dummy_send=api.dummy_send,
            started=api.started,
            library=api.library,
            emulator_version=api.emulator_version,
        )
    state = pyxlio.allocator_state()
    info["allocator"] = {
        "kind": state["kind"],
        "pools": state["pools"].name if state["pools"] is not None else None,
        "alloc_calls": state["alloc_calls"],
        "errors": [repr(e) for e in state["errors"]],
    }
    info["thread"] = {
        "ident": threading.get_ident(),
        "offload": pyxlio.thread_offload_state(),
    }
    return info


def format_text(info: dict[str, Any]) -> str:
    lines = [f"pyxlio {info['pyxlio']} (Python {info['python']})"]
    if not info["loaded"]:
        lines.append("XLIO: not loaded (the kernel serves every call; run under libxlio with "
                     "LD_PRELOAD, or under the emulator: python -m pyxlio.emu -- CMD)")
    else:
        vma = info.get("family") == "libvma"
        lines += [
            f"{'libvma' if vma else 'XLIO'}: loaded, provider {info['provider']} "
            f"({info['version']})"
            + ("" if info["started"] is not False else
               ", NOT STARTED: it failed its initialisation (see its messages on stderr) and "
               "passes every socket to the kernel"),
            f"  library:      {info['library']}",
            f"  layout:       {info['layout_text']}, "
            f"{'vma_api_t' if vma else 'xlio_api_t'} {info['api_size']} bytes",
            f"  cap_mask:     {info['cap_mask']}"
            + (f" (pyxlio's bits; vma_extra_supported_mask {info['native_mask']})" if vma
               else ""),
            f"  capabilities: {', '.join(info['capabilities']) or '-'}",
            f"  held packets: {'can' if info['can_return_held'] else 'cannot'} be returned to "
            f"XLIO; dummy sends {'supported' if info['dummy_send'] else 'not supported'}",
        ]
    alloc = info["allocator"]
    lines.append(f"allocator: {alloc['kind'] or 'XLIO default'}"
                 + (f" for {alloc['pools']} pools, alloc called {alloc['alloc_calls']} time(s)"
                    if alloc["kind"] else ""))
    for err in alloc["errors"]:
        lines.append(f"  error: {err}")
    lines.append(f"this thread: offload {'on' if info['thread']['offload'] else 'off'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyxlio info",
                                     description="Show the XLIO provider this process sees.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_text(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
