"""pyxlio's compiled sizes, offsets and constants, pinned to the fact sheet's numbers.

The expected values below are typed from the fact sheet (shared/xlio-abi.md), not read from
pyxlio's header, so a slip in either shows here.  A second check compiles a C program against
the vendor's <mellanox/xlio_extra.h> where the XLIO package installed it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import pyxlio
from pyxlio import _api

FACT_SHEET = {
    # struct xlio_api_t, legacy layout (libxlio 2.0 .. 3.51.x)
    "legacy.size": 248,
    "legacy.magic": 0,
    "legacy.cap_mask": 8,
    "legacy.recvfrom_zcopy": 16,
    "legacy.recvfrom_zcopy_free_packets": 24,
    "legacy.add_conf_rule": 32,
    "legacy.thread_offload": 40,
    "legacy.get_socket_rings_num": 48,
    "legacy.get_socket_rings_fds": 56,
    "legacy.dump_fd_stats": 64,
    "legacy.ioctl": 72,
    "legacy.register_recv_callback": 80,
    "legacy.socketxtreme_poll": 88,
    "legacy.socketxtreme_free_packets": 96,
    "legacy.socketxtreme_ref_buff": 104,
    "legacy.socketxtreme_free_buff": 112,
    "legacy.socket_api": 120,
    # 3.60.x
    "v360.add_conf_rule": 16,
    "v360.thread_offload": 24,
    "v360.dump_fd_stats": 32,
    "v360.register_recv_callback": 40,
    # 3.61+
    "v361.add_conf_rule": 16,
    "v361.thread_offload": 24,
    "v361.dump_fd_stats": 32,
    # 3.94x
    "v394.add_conf_rule": 16,
    "v394.thread_offload": 24,
    "v394.dump_fd_stats": 32,
    "v394.ioctl": 40,
    # zero-copy structures
    "packet.size": 16,
    "packet.packet_id": 0,
    "packet.sz_iov": 8,
    "packet.iov": 16,
    "packets.n_packet_num": 0,
    "packets.pkts": 8,
    # xlio_info_t (80 bytes)
    "info.size": 80,
    "info.struct_sz": 0,
    "info.packet_id": 8,
    "info.src": 16,
    "info.dst": 24,
    "info.payload_sz": 32,
    "info.socket_ready_queue_pkt_count": 40,
    "info.socket_ready_queue_byte_count": 44,
    "info.hw_timestamp": 48,
    "info.sw_timestamp": 64,
    # constants
    "SO_XLIO_GET_API": 2800,
    "MSG_XLIO_ZCOPY_FORCE": 0x01000000,
    "MSG_XLIO_ZCOPY": 0x00040000,
    "XLIO_SND_FLAGS_DUMMY": 0x400,
    "CMSG_XLIO_IOCTL_USER_ALLOC": 2900,
    "CMSG_LEN(user_alloc)": 33,
    "CMSG_SPACE(user_alloc)": 40,
    "PACKET_DROP": 0,
    "PACKET_RECV": 1,
    "PACKET_HOLD": 2,
    "LOG_NONE": -1,
    "LOG_ALL": 8,
}


def test_every_compiled_fact_matches_the_fact_sheet() -> None:
    compiled = _api._abi_facts()
    assert set(compiled) == set(FACT_SHEET), "a fact is compiled but not pinned, or the reverse"
    wrong = {k: (compiled[k], v) for k, v in FACT_SHEET.items() if compiled[k] != v}
    assert not wrong, f"(compiled, fact sheet): {wrong}"


def test_python_constants_match_the_fact_sheet() -> None:
    assert pyxlio.MSG_DUMMY == 0x400
    assert pyxlio.MSG_ZCOPY_FORCE == 0x01000000
    assert pyxlio.MSG_ZCOPY == 0x00040000
    bits = {
        "REGISTER_RECV_CALLBACK": 0, "RECVFROM_ZCOPY": 1, "RECVFROM_ZCOPY_FREE_PACKETS": 2,
        "ADD_CONF_RULE": 3, "THREAD_OFFLOAD": 4, "GET_SOCKET_RINGS_NUM": 5,
        "GET_SOCKET_RINGS_FDS": 6, "SOCKETXTREME_POLL": 7, "SOCKETXTREME_FREE_PACKETS": 8,
        "SOCKETXTREME_REF_XLIO_BUFF": 9, "SOCKETXTREME_FREE_XLIO_BUFF": 10, "DUMP_FD_STATS": 11,
        "IOCTL": 12, "XLIO_SOCKET": 13,
    }
    assert {c.name: c.value.bit_length() - 1 for c in pyxlio.Capability} == bits
    assert int(pyxlio.Capability(0x3FFF)) == 0x3FFF
    assert {lv.name: int(lv) for lv in pyxlio.LogLevel} == {
        "NONE": -1, "PANIC": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "DETAILS": 4, "DEBUG": 5,
        "FINE": 6, "FINER": 7, "ALL": 8}
    assert [int(v) for v in (pyxlio.Verdict.DROP, pyxlio.Verdict.RECV, pyxlio.Verdict.HOLD)] == [
        0, 1, 2]
    assert int(pyxlio.AllocTarget.TX) == 1 and int(pyxlio.AllocTarget.RX) == 2


VENDOR_HEADER = Path("/usr/include/mellanox/xlio_extra.h")

VENDOR_CHECK = r"""
#include <stddef.h>
#include <mellanox/xlio_extra.h>
#include "pyxlio/xlio_abi.h"
#define SAME_OFF(vt, vm, ot, om) _Static_assert(offsetof(vt, vm) == offsetof(ot, om), #vm)
SAME_OFF(struct xlio_api_t, recvfrom_zcopy, pyxlio_api_legacy_t, recvfrom_zcopy);
SAME_OFF(struct xlio_api_t, recvfrom_zcopy_free_packets, pyxlio_api_legacy_t,
         recvfrom_zcopy_free_packets);
SAME_OFF(struct xlio_api_t, add_conf_rule, pyxlio_api_legacy_t, add_conf_rule);
SAME_OFF(struct xlio_api_t, thread_offload, pyxlio_api_legacy_t, thread_offload);
SAME_OFF(struct xlio_api_t, dump_fd_stats, pyxlio_api_legacy_t, dump_fd_stats);
SAME_OFF(struct xlio_api_t, ioctl, pyxlio_api_legacy_t, ioctl);
SAME_OFF(struct xlio_api_t, register_recv_callback, pyxlio_api_legacy_t, register_recv_callback);
_Static_assert(sizeof(struct xlio_info_t) == sizeof(pyxlio_recv_info_t), "xlio_info_t");
_Static_assert(SO_XLIO_GET_API == PYXLIO_SO_XLIO_GET_API, "SO_XLIO_GET_API");
_Static_assert(MSG_XLIO_ZCOPY_FORCE == PYXLIO_MSG_XLIO_ZCOPY_FORCE, "FORCE");
_Static_assert(MSG_XLIO_ZCOPY == PYXLIO_MSG_XLIO_ZCOPY, "ZCOPY");
_Static_assert(CMSG_XLIO_IOCTL_USER_ALLOC == PYXLIO_CMSG_IOCTL_USER_ALLOC, "USER_ALLOC");
_Static_assert(XLIO_EXTRA_API_RECVFROM_ZCOPY == (1 << PYXLIO_CAP_RECVFROM_ZCOPY), "cap");
_Static_assert(XLIO_EXTRA_API_IOCTL == (1 << PYXLIO_CAP_IOCTL), "cap ioctl");
int main(void) { return 0; }
"""


@pytest.mark.provider_independent
@pytest.mark.skipif(not VENDOR_HEADER.exists(),
                    reason="the vendor header <mellanox/xlio_extra.h> (XLIO package) is not "
                           "installed: nothing to compare against")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_layout_matches_the_installed_vendor_header(tmp_path: Path) -> None:
    src = tmp_path / "check.c"
    src.write_text(VENDOR_CHECK)
    include = Path(pyxlio.__file__).parent / "include"
    proc = subprocess.run(["cc", "-std=gnu11", "-I", str(include), "-c", str(src), "-o",
                           os.devnull], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
