"""pyxlio's ABI header, held against numbers written apart from it.

Every expected value below is typed from the fact sheet (shared/xlio-abi.md), not read from
pyxlio's header: the offsets and sizes of every ``xlio_api_t`` layout, the cap bits, the
constants, the zero-copy structures, ``xlio_info_t`` and the user-allocator message.  They are
checked three ways: against the facts compiled into the extension (``_api._abi_facts()``),
against the header itself by a small C program compiled from these tables (so a wrong offset
in ``include/pyxlio/xlio_abi.h`` fails here even though the emulator, which compiles the same
header, would agree with it), and, where an XLIO package installed one, against the vendor's own
``<mellanox/xlio_extra.h>`` of whichever release it is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import pyxlio
from pyxlio import Capability, Layout, LogLevel, Verdict, _api

pytestmark = pytest.mark.provider_independent

INCLUDE = Path(pyxlio.__file__).parent / "include"

# ---- the fact sheet, typed ---------------------------------------------------------------------

# struct xlio_api_t, every member of every layout: (offset, member), the releases' member names.
LEGACY_MEMBERS = [
    (0, "magic"), (8, "cap_mask"), (16, "recvfrom_zcopy"), (24, "recvfrom_zcopy_free_packets"),
    (32, "add_conf_rule"), (40, "thread_offload"), (48, "get_socket_rings_num"),
    (56, "get_socket_rings_fds"), (64, "dump_fd_stats"), (72, "ioctl"),
    (80, "register_recv_callback"), (88, "socketxtreme_poll"), (96, "socketxtreme_free_packets"),
    (104, "socketxtreme_ref_buff"), (112, "socketxtreme_free_buff"),
    # the socket API, 3.30.3 .. 3.51.x
    (120, "xlio_init_ex"), (128, "xlio_poll_group_create"), (136, "xlio_poll_group_destroy"),
    (144, "xlio_poll_group_poll"), (152, "xlio_socket_create"), (160, "xlio_socket_destroy"),
    (168, "xlio_socket_setsockopt"), (176, "xlio_socket_bind"), (184, "xlio_socket_connect"),
    (192, "xlio_socket_get_pd"), (200, "xlio_socket_send"), (208, "xlio_socket_sendv"),
    (216, "xlio_poll_group_flush"), (224, "xlio_socket_flush"), (232, "xlio_socket_buf_free"),
    (240, "xlio_poll_group_buf_free"),
]
V360_MEMBERS = [
    (0, "magic"), (8, "cap_mask"), (16, "add_conf_rule"), (24, "thread_offload"),
    (32, "dump_fd_stats"), (40, "register_recv_callback"),
    # the Ultra API
    (48, "xlio_init_ex"), (56, "xlio_exit"), (64, "xlio_poll_group_create"),
    (72, "xlio_poll_group_destroy"), (80, "xlio_poll_group_poll"), (88, "xlio_socket_create"),
    (96, "xlio_socket_destroy"), (104, "xlio_socket_update"), (112, "xlio_socket_setsockopt"),
    (120, "xlio_socket_getsockname"), (128, "xlio_socket_getpeername"),
    (136, "xlio_socket_bind"), (144, "xlio_socket_connect"), (152, "xlio_socket_listen"),
    (160, "xlio_socket_get_pd"), (168, "xlio_socket_detach_group"),
    (176, "xlio_socket_attach_group"), (184, "xlio_socket_send"), (192, "xlio_socket_sendv"),
    (200, "xlio_poll_group_flush"), (208, "xlio_socket_flush"), (216, "xlio_socket_buf_free"),
    (224, "xlio_poll_group_buf_free"),
]
V361_MEMBERS = [
    (0, "magic"), (8, "cap_mask"), (16, "add_conf_rule"), (24, "thread_offload"),
    (32, "dump_fd_stats"),
    # the Ultra API
    (40, "xlio_init_ex"), (48, "xlio_exit"), (56, "xlio_poll_group_create"),
    (64, "xlio_poll_group_destroy"), (72, "xlio_poll_group_poll"), (80, "xlio_socket_create"),
    (88, "xlio_socket_destroy"), (96, "xlio_socket_update"), (104, "xlio_socket_setsockopt"),
    (112, "xlio_socket_getsockname"), (120, "xlio_socket_getpeername"),
    (128, "xlio_socket_bind"), (136, "xlio_socket_connect"), (144, "xlio_socket_listen"),
    (152, "xlio_socket_get_pd"), (160, "xlio_socket_detach_group"),
    (168, "xlio_socket_attach_group"), (176, "xlio_socket_send"), (184, "xlio_socket_sendv"),
    (192, "xlio_poll_group_flush"), (200, "xlio_socket_flush"), (208, "xlio_socket_buf_free"),
    (216, "xlio_poll_group_buf_free"),
]
V394_MEMBERS = [
    (0, "magic"), (8, "cap_mask"), (16, "add_conf_rule"), (24, "thread_offload"),
    (32, "dump_fd_stats"), (40, "ioctl"),
    # the socket API (as the legacy layout's)
    (48, "xlio_init_ex"), (56, "xlio_poll_group_create"), (64, "xlio_poll_group_destroy"),
    (72, "xlio_poll_group_poll"), (80, "xlio_socket_create"), (88, "xlio_socket_destroy"),
    (96, "xlio_socket_setsockopt"), (104, "xlio_socket_bind"), (112, "xlio_socket_connect"),
    (120, "xlio_socket_get_pd"), (128, "xlio_socket_send"), (136, "xlio_socket_sendv"),
    (144, "xlio_poll_group_flush"), (152, "xlio_socket_flush"), (160, "xlio_socket_buf_free"),
    (168, "xlio_poll_group_buf_free"),
]
# layout key -> (pyxlio's whole struct, its members, sizeof, where the socket/Ultra API starts)
LAYOUTS = {
    "legacy": ("pyxlio_api_legacy_t", LEGACY_MEMBERS, 248, ("socket_api", 120)),
    "v360": ("pyxlio_api_360_full_t", V360_MEMBERS, 232, ("ultra_api", 48)),
    "v361": ("pyxlio_api_361_full_t", V361_MEMBERS, 224, ("ultra_api", 40)),
    "v394": ("pyxlio_api_394_full_t", V394_MEMBERS, 176, ("socket_api", 48)),
}
# the newer layouts' heads (the members before the socket/Ultra API): pyxlio_api_360_t ...
HEADS = {"v360": "pyxlio_api_360_t", "v361": "pyxlio_api_361_t", "v394": "pyxlio_api_394_t"}
LAYOUT_ENUM = {"legacy": Layout.LEGACY, "v360": Layout.V3_60, "v361": Layout.V3_61,
               "v394": Layout.V3_94}

CAP_BITS = {
    "REGISTER_RECV_CALLBACK": 0, "RECVFROM_ZCOPY": 1, "RECVFROM_ZCOPY_FREE_PACKETS": 2,
    "ADD_CONF_RULE": 3, "THREAD_OFFLOAD": 4, "GET_SOCKET_RINGS_NUM": 5,
    "GET_SOCKET_RINGS_FDS": 6, "SOCKETXTREME_POLL": 7, "SOCKETXTREME_FREE_PACKETS": 8,
    "SOCKETXTREME_REF_XLIO_BUFF": 9, "SOCKETXTREME_FREE_XLIO_BUFF": 10, "DUMP_FD_STATS": 11,
    "IOCTL": 12, "XLIO_SOCKET": 13,
}

# What each release sets and how big its struct is: (release, cap_mask, layout, size).
RELEASES = [
    ("2.0-3.0", 0x187E, "legacy", 80),
    ("3.10-3.30.2", 0x1FFF, "legacy", 120),
    ("3.30.3-3.51", 0x3FFF, "legacy", 248),
    ("3.60", 0x2819, "v360", 232),
    ("3.61+", 0x2818, "v361", 224),
    ("3.94x", 0x3818, "v394", 176),
]
# Which ops pyxlio resolves for each release, at which offset (absent: NULL).
OPS_AT = {
    "2.0-3.0": {"recvfrom_zcopy": 16, "free_packets": 24, "add_conf_rule": 32,
                "thread_offload": 40, "get_socket_rings_num": 48, "get_socket_rings_fds": 56,
                "dump_fd_stats": 64, "ioctl": 72},
    "3.10-3.30.2": {"recvfrom_zcopy": 16, "free_packets": 24, "add_conf_rule": 32,
                    "thread_offload": 40, "get_socket_rings_num": 48,
                    "get_socket_rings_fds": 56, "dump_fd_stats": 64, "ioctl": 72,
                    "register_recv_callback": 80},
    "3.30.3-3.51": {"recvfrom_zcopy": 16, "free_packets": 24, "add_conf_rule": 32,
                    "thread_offload": 40, "get_socket_rings_num": 48,
                    "get_socket_rings_fds": 56, "dump_fd_stats": 64, "ioctl": 72,
                    "register_recv_callback": 80},
    "3.60": {"add_conf_rule": 16, "thread_offload": 24, "dump_fd_stats": 32,
             "register_recv_callback": 40},
    "3.61+": {"add_conf_rule": 16, "thread_offload": 24, "dump_fd_stats": 32},
    "3.94x": {"add_conf_rule": 16, "thread_offload": 24, "dump_fd_stats": 32, "ioctl": 40},
}
OPS_FIELDS = ["recvfrom_zcopy", "free_packets", "add_conf_rule", "thread_offload",
              "get_socket_rings_num", "get_socket_rings_fds", "dump_fd_stats", "ioctl",
              "register_recv_callback"]

INFO_MEMBERS = [
    (0, "struct_sz"), (8, "packet_id"), (16, "src"), (24, "dst"), (32, "payload_sz"),
    (40, "socket_ready_queue_pkt_count"), (44, "socket_ready_queue_byte_count"),
    (48, "hw_timestamp"), (64, "sw_timestamp"),
]
LOG_LEVELS = {"NONE": -1, "PANIC": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "DETAILS": 4,
              "DEBUG": 5, "FINE": 6, "FINER": 7, "ALL": 8}
CONSTANTS = {
    "SO_XLIO_GET_API": 2800,
    "XLIO_MAGIC": 0x4F494C584144564E,
    "MSG_XLIO_ZCOPY_FORCE": 0x01000000,
    "MSG_XLIO_ZCOPY": 0x00040000,
    "XLIO_SND_FLAGS_DUMMY": 0x400,
    "CMSG_XLIO_IOCTL_USER_ALLOC": 2900,
    "USER_ALLOC_TX": 1,
    "USER_ALLOC_RX": 2,
    "USER_ALLOC_TX_ZC": 4,
    "USER_ALLOC_PAYLOAD": 17,
    "CMSG_LEN(user_alloc)": 33,
    "CMSG_SPACE(user_alloc)": 40,
    "PACKET_DROP": 0,
    "PACKET_RECV": 1,
    "PACKET_HOLD": 2,
    **{f"LOG_{k}": v for k, v in LOG_LEVELS.items()},
}


def _fact_sheet() -> dict[str, int]:
    """The facts as _api._abi_facts() names them, from the tables above."""
    facts: dict[str, int] = {}
    for key, (_, members, size, (array, at)) in LAYOUTS.items():
        facts[f"{key}.size"] = size
        facts[f"{key}.{array}"] = at
        for off, name in members:
            facts[f"{key}.{name}"] = off
    facts.update({"legacy.size_2_0": 80, "legacy.size_3_10": 120, "legacy.size_3_30_3": 248})
    facts.update({f"{key}.head_size": LAYOUTS[key][3][1] for key in HEADS})
    facts.update({f"cap.{k}": v for k, v in CAP_BITS.items()})
    facts.update({"LAYOUT_LEGACY": 0, "LAYOUT_360": 1, "LAYOUT_361": 2, "LAYOUT_394": 3})
    facts.update({
        "packet.size": 16, "packet.packet_id": 0, "packet.sz_iov": 8, "packet.iov": 16,
        "packets.n_packet_num": 0, "packets.pkts": 8,
        "ZC_HEADER_BYTES": 8, "ZC_PACKET_BYTES": 16, "ZC_IOV_BYTES": 16,
        "ZC_UDP_MIN(1)": 24 + 16, "ZC_UDP_MIN(4)": 24 + 16 * 4, "ZC_TCP_MIN": 40,
        "info.size": 80,
    })
    facts.update({f"info.{name}": off for off, name in INFO_MEMBERS})
    facts.update(CONSTANTS)
    facts.update(_vma_facts())
    return facts


# ---- libvma: struct vma_api_t (fact sheet section 11; src/vma/vma_extra.h of each tag) ------
VMA_MEMBERS = [
    (0, "register_recv_callback"), (8, "recvfrom_zcopy"), (16, "free_packets"),
    (24, "add_conf_rule"), (32, "thread_offload"), (40, "socketxtreme_poll"),
    (48, "get_socket_rings_num"), (56, "get_socket_rings_fds"), (64, "get_socket_tx_ring_fd"),
    (72, "socketxtreme_free_vma_packets"), (80, "socketxtreme_ref_vma_buff"),
    (88, "socketxtreme_free_vma_buff"), (96, "dump_fd_stats"), (104, "vma_add_ring_profile"),
    (112, "get_socket_network_header"), (120, "get_ring_direct_descriptors"),
    (128, "register_memory_on_ring"), (136, "deregister_memory_on_ring"),
    (144, "vma_modify_ring"), (152, "vma_extra_supported_mask"), (160, "ioctl"),
]
VMA_CAP_BITS = {
    "REGISTER_RECV_CALLBACK": 0, "RECVFROM_ZCOPY": 1, "FREE_PACKETS": 2, "ADD_CONF_RULE": 3,
    "THREAD_OFFLOAD": 4, "DUMP_FD_STATS": 5, "SOCKETXTREME_POLL": 6,
    "SOCKETXTREME_FREE_VMA_PACKETS": 7, "SOCKETXTREME_REF_VMA_BUFF": 8,
    "SOCKETXTREME_FREE_VMA_BUFF": 9, "GET_SOCKET_RINGS_NUM": 10, "GET_SOCKET_RINGS_FDS": 11,
    "GET_SOCKET_TX_RING_FD": 12, "GET_SOCKET_NETWORK_HEADER": 13,
    "GET_RING_DIRECT_DESCRIPTORS": 14, "CYCLIC_BUFFER_READ": 15, "ADD_RING_PROFILE": 16,
    "REGISTER_MEMORY_ON_RING": 17, "DEREGISTER_MEMORY_ON_RING": 18, "GET_MEM_INFO": 19,
    "MODIFY_RING": 20, "BIT21": 21,
}
# VMA bit -> pyxlio Capability (the mapping pyxlio reports); bit 21 is IOCTL from 9.8.70
VMA_TO_CAP = {0: Capability.REGISTER_RECV_CALLBACK, 1: Capability.RECVFROM_ZCOPY,
              2: Capability.RECVFROM_ZCOPY_FREE_PACKETS, 3: Capability.ADD_CONF_RULE,
              4: Capability.THREAD_OFFLOAD, 5: Capability.DUMP_FD_STATS,
              6: Capability.SOCKETXTREME_POLL, 7: Capability.SOCKETXTREME_FREE_PACKETS,
              8: Capability.SOCKETXTREME_REF_XLIO_BUFF, 9: Capability.SOCKETXTREME_FREE_XLIO_BUFF,
              10: Capability.GET_SOCKET_RINGS_NUM, 11: Capability.GET_SOCKET_RINGS_FDS,
              21: Capability.IOCTL}
VMA_MASK_9_8_84 = 0x377FFF


def _vma_facts() -> dict[str, int]:
    facts = {f"vma.{name}": off for off, name in VMA_MEMBERS}
    facts.update({f"vmacap.{k}": v for k, v in VMA_CAP_BITS.items()})
    facts.update({"vma.size": 168, "vma.size_no_bit21": 160, "vma.mask_offset_old": 168,
                  "vma.info.size": 80, "SO_VMA_GET_API": 2800, "VMA_GET_API_FD": -1,
                  "LAYOUT_VMA": 4, "VMA_MASK_9_8_84": VMA_MASK_9_8_84})
    return facts


FACT_SHEET = _fact_sheet()


# ---- 1. the facts compiled into the extension -------------------------------------------------

def test_every_compiled_fact_matches_the_fact_sheet() -> None:
    compiled = _api._abi_facts()
    assert set(compiled) == set(FACT_SHEET), (
        f"compiled but not pinned: {sorted(set(compiled) - set(FACT_SHEET))}; "
        f"pinned but not compiled: {sorted(set(FACT_SHEET) - set(compiled))}")
    wrong = {k: (compiled[k], v) for k, v in FACT_SHEET.items() if compiled[k] != v}
    assert not wrong, f"(compiled, fact sheet): {wrong}"


def test_python_constants_match_the_fact_sheet() -> None:
    assert pyxlio.MSG_DUMMY == 0x400
    assert pyxlio.MSG_ZCOPY_FORCE == 0x01000000
    assert pyxlio.MSG_ZCOPY == 0x00040000
    assert {c.name: c.value.bit_length() - 1 for c in Capability} == CAP_BITS
    assert int(Capability(0x3FFF)) == 0x3FFF
    assert {lv.name: int(lv) for lv in LogLevel} == LOG_LEVELS
    assert [int(v) for v in (Verdict.DROP, Verdict.RECV, Verdict.HOLD)] == [0, 1, 2]
    assert int(pyxlio.AllocTarget.TX) == 1 and int(pyxlio.AllocTarget.RX) == 2
    # pyxlio's own layout numbers: the same in C and in Python
    assert {k: int(v) for k, v in LAYOUT_ENUM.items()} == {
        "legacy": FACT_SHEET["LAYOUT_LEGACY"], "v360": FACT_SHEET["LAYOUT_360"],
        "v361": FACT_SHEET["LAYOUT_361"], "v394": FACT_SHEET["LAYOUT_394"]}


@pytest.mark.parametrize(("release", "cap_mask", "layout", "size"), RELEASES)
def test_each_release_gets_its_layout_and_size(release: str, cap_mask: int, layout: str,
                                               size: int) -> None:
    assert _api._layout_of(cap_mask) is LAYOUT_ENUM[layout]
    assert _api._layout_size(cap_mask) == size, release


def test_the_layout_rule_of_the_fact_sheet() -> None:
    """bit 1 -> legacy; else bit 0 -> 3.60; else bit 12 -> 3.94x; else 3.61+."""
    for mask in range(1 << 14):
        if mask & 0b10:
            want = Layout.LEGACY
        elif mask & 0b1:
            want = Layout.V3_60
        elif mask & (1 << 12):
            want = Layout.V3_94
        else:
            want = Layout.V3_61
        assert _api._layout_of(mask) is want, hex(mask)
        size = _api._layout_size(mask)
        # never more than the whole struct of the layout, never less than what it calls
        assert 16 <= size <= {Layout.LEGACY: 248, Layout.V3_60: 232, Layout.V3_61: 224,
                              Layout.V3_94: 176}[want]


# ---- 2. the header itself, by a C program built from the tables above --------------------------

def _cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to compile the ABI checks")
    return cc


def _header_check_source() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <string.h>",
        "#include <sys/mman.h>",
        "#include <unistd.h>",
        '#include "pyxlio/xlio_abi.h"',
        "static int bad;",
        "#define CHECK(what, got, want) do { long long g_ = (long long)(got), "
        "w_ = (long long)(want); if (g_ != w_) { printf(\"MISMATCH %s: header %lld, fact "
        "sheet %lld\\n\", what, g_, w_); bad++; } } while (0)",
        "static void *at(size_t slot) { return (void *)(0x5000 + slot); }",
        "int main(void) {",
    ]
    add = lines.append
    for _key, (struct, members, size, (array, array_at)) in LAYOUTS.items():
        add(f'CHECK("sizeof({struct})", sizeof({struct}), {size});')
        add(f'CHECK("{struct}.{array}", offsetof({struct}, {array}), {array_at});')
        for off, name in members:
            add(f'CHECK("{struct}.{name}", offsetof({struct}, {name}), {off});')
    for key, head in HEADS.items():
        _, members, _, (_, end) = LAYOUTS[key]
        add(f'CHECK("sizeof({head})", sizeof({head}), {end});')
        for off, name in members:
            if off < end:
                add(f'CHECK("{head}.{name}", offsetof({head}, {name}), {off});')
    add('CHECK("PYXLIO_API_LEGACY_SIZE_2_0", PYXLIO_API_LEGACY_SIZE_2_0, 80);')
    add('CHECK("PYXLIO_API_LEGACY_SIZE_3_10", PYXLIO_API_LEGACY_SIZE_3_10, 120);')
    add('CHECK("PYXLIO_API_LEGACY_SIZE_3_30_3", PYXLIO_API_LEGACY_SIZE_3_30_3, 248);')
    for name, bit in CAP_BITS.items():
        add(f'CHECK("PYXLIO_CAP_{name}", PYXLIO_CAP_{name}, {bit});')
    # dummy sends: kept by the legacy layout and 3.94x, removed in 3.60
    for key, dummy in (("legacy", 1), ("v360", 0), ("v361", 0), ("v394", 1)):
        add(f'CHECK("{key}: has_dummy_send", '
            f"pyxlio_layout_has_dummy_send({int(LAYOUT_ENUM[key])}), {dummy});")
    # what each release's cap_mask resolves to, read from a struct that ends at a guard page
    add("long page = sysconf(_SC_PAGESIZE);")
    add("unsigned char *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, "
        "MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);")
    add("if (map == MAP_FAILED || mprotect(map + page, page, PROT_NONE)) return 2;")
    for release, mask, layout, size in RELEASES:
        add("{")
        add(f"unsigned char *api = map + page - {size};")
        add(f"for (size_t s = 2; s < {size} / 8; s++) {{ void *p = at(s); "
            "memcpy(api + 8 * s, &p, 8); }")
        add(f"uint64_t magic = 0x4f494c584144564eULL, caps = {mask:#x}ULL;")
        add("memcpy(api, &magic, 8); memcpy(api + 8, &caps, 8);")
        add("pyxlio_ops_t ops; pyxlio_resolve_ops(api, &ops);")
        add(f'CHECK("{release}: layout", ops.layout, {int(LAYOUT_ENUM[layout])});')
        add(f'CHECK("{release}: layout_from_caps", pyxlio_layout_from_caps(caps), '
            f'{int(LAYOUT_ENUM[layout])});')
        add(f'CHECK("{release}: layout_size", pyxlio_layout_size(caps), {size});')
        add(f'CHECK("{release}: cap_mask", ops.cap_mask, {mask:#x});')
        for field in OPS_FIELDS:
            off = OPS_AT[release].get(field)
            want = f"at({off // 8})" if off is not None else "NULL"
            add(f'CHECK("{release}: ops.{field}", (uintptr_t)ops.{field}, (uintptr_t){want});')
        add("}")
    # constants
    for name, macro in [("SO_XLIO_GET_API", "PYXLIO_SO_XLIO_GET_API"),
                        ("MSG_XLIO_ZCOPY_FORCE", "PYXLIO_MSG_XLIO_ZCOPY_FORCE"),
                        ("MSG_XLIO_ZCOPY", "PYXLIO_MSG_XLIO_ZCOPY"),
                        ("XLIO_SND_FLAGS_DUMMY", "PYXLIO_SND_FLAGS_DUMMY"),
                        ("CMSG_XLIO_IOCTL_USER_ALLOC", "PYXLIO_CMSG_IOCTL_USER_ALLOC"),
                        ("USER_ALLOC_TX", "PYXLIO_USER_ALLOC_TX"),
                        ("USER_ALLOC_RX", "PYXLIO_USER_ALLOC_RX"),
                        ("USER_ALLOC_TX_ZC", "PYXLIO_USER_ALLOC_TX_ZC"),
                        ("USER_ALLOC_PAYLOAD", "PYXLIO_USER_ALLOC_PAYLOAD"),
                        ("CMSG_LEN(user_alloc)", "PYXLIO_USER_ALLOC_CMSG_LEN"),
                        ("CMSG_SPACE(user_alloc)", "PYXLIO_USER_ALLOC_CMSG_SPACE"),
                        ("PACKET_DROP", "PYXLIO_PACKET_DROP"),
                        ("PACKET_RECV", "PYXLIO_PACKET_RECV"),
                        ("PACKET_HOLD", "PYXLIO_PACKET_HOLD")]:
        add(f'CHECK("{macro}", {macro}, {CONSTANTS[name]});')
    add(f'CHECK("PYXLIO_XLIO_MAGIC", PYXLIO_XLIO_MAGIC == {CONSTANTS["XLIO_MAGIC"]:#x}ULL, 1);')
    add('CHECK("magic bytes", memcmp(&(uint64_t){PYXLIO_XLIO_MAGIC}, "NVDAXLIO", 8), 0);')
    for name, value in LOG_LEVELS.items():
        add(f'CHECK("PYXLIO_LOG_{name}", PYXLIO_LOG_{name}, {value});')
    add('CHECK("CMSG_LEN(17)", CMSG_LEN(PYXLIO_USER_ALLOC_PAYLOAD), 33);')
    add('CHECK("CMSG_SPACE(17)", CMSG_SPACE(PYXLIO_USER_ALLOC_PAYLOAD), 40);')
    # xlio_info_t
    add('CHECK("sizeof(pyxlio_recv_info_t)", sizeof(pyxlio_recv_info_t), 80);')
    for off, name in INFO_MEMBERS:
        add(f'CHECK("pyxlio_recv_info_t.{name}", offsetof(pyxlio_recv_info_t, {name}), {off});')
    # zero-copy structures: sizes, offsets, the 16 + 16 * sz_iov stride, the minimum buffers
    add('CHECK("sizeof(pyxlio_zc_packet_t)", sizeof(pyxlio_zc_packet_t), 16);')
    add('CHECK("packet.packet_id", offsetof(pyxlio_zc_packet_t, packet_id), 0);')
    add('CHECK("packet.sz_iov", offsetof(pyxlio_zc_packet_t, sz_iov), 8);')
    add('CHECK("packet.iov", offsetof(pyxlio_zc_packet_t, iov), 16);')
    add('CHECK("packets.n_packet_num", offsetof(pyxlio_zc_packets_t, n_packet_num), 0);')
    add('CHECK("packets.pkts", offsetof(pyxlio_zc_packets_t, pkts), 8);')
    for n in (0, 1, 2, 5):
        add(f'CHECK("pyxlio_zc_packet_bytes({n})", pyxlio_zc_packet_bytes({n}), {16 + 16 * n});')
    for n in (1, 3):
        add(f'CHECK("PYXLIO_ZC_UDP_MIN({n})", PYXLIO_ZC_UDP_MIN({n}), {24 + 16 * n});')
    add('CHECK("PYXLIO_ZC_TCP_MIN", PYXLIO_ZC_TCP_MIN, 40);')
    # walk two packets laid out by hand at the fact sheet's offsets (unaligned: start at 1)
    add("{")
    add("unsigned char raw[1 + 8 + 48 + 32]; unsigned char *b = raw + 1; "
        "memset(raw, 0, sizeof raw);")
    add("uint64_t v;")
    add("v = 2; memcpy(b + 0, &v, 8);")                                   # n_packet_num
    add("v = 0xA; memcpy(b + 8, &v, 8); v = 2; memcpy(b + 16, &v, 8);")   # packet 0
    add("v = 0x100; memcpy(b + 24, &v, 8); v = 5; memcpy(b + 32, &v, 8);")
    add("v = 0x200; memcpy(b + 40, &v, 8); v = 7; memcpy(b + 48, &v, 8);")
    add("v = 0xB; memcpy(b + 56, &v, 8); v = 1; memcpy(b + 64, &v, 8);")  # packet 1 @ 8+48
    add("v = 0x300; memcpy(b + 72, &v, 8); v = 9; memcpy(b + 80, &v, 8);")
    add("pyxlio_zc_packet_t *p0 = pyxlio_zc_first((pyxlio_zc_packets_t *)(void *)b);")
    add("pyxlio_zc_packet_t *p1 = pyxlio_zc_next(p0);")
    add('CHECK("first packet at", (unsigned char *)p0 - b, 8);')
    add('CHECK("second packet at", (unsigned char *)p1 - b, 56);')
    add('CHECK("p0 iov1 base", (uintptr_t)pyxlio_zc_iov_base(p0, 1), 0x200);')
    add('CHECK("p0 iov1 len", pyxlio_zc_iov_len(p0, 1), 7);')
    add('CHECK("p1 iov0 base", (uintptr_t)pyxlio_zc_iov_base(p1, 0), 0x300);')
    add('CHECK("p1 iov0 len", pyxlio_zc_iov_len(p1, 0), 9);')
    add("}")
    # the user-allocator message: SOL_SOCKET/2900, cmsg_len 33, flags @0 alloc @1 free @9
    add("{")
    add("unsigned char m[64]; memset(m, 0xEE, sizeof m);")
    add("size_t n = pyxlio_build_user_alloc_cmsg(m, 3, (pyxlio_alloc_fn)(uintptr_t)"
        "0x1122334455667788ULL, (pyxlio_free_fn)(uintptr_t)0x99AABBCCDDEEFF00ULL);")
    add('CHECK("user alloc: returned cmsg_len", n, 33);')
    add("size_t len; int level, type; uint64_t fa, ff;")
    add("memcpy(&len, m, 8); memcpy(&level, m + 8, 4); memcpy(&type, m + 12, 4);")
    add("memcpy(&fa, m + 16 + 1, 8); memcpy(&ff, m + 16 + 9, 8);")
    add('CHECK("user alloc: cmsg_len", len, 33);')
    add('CHECK("user alloc: cmsg_level", level, SOL_SOCKET);')
    add('CHECK("user alloc: cmsg_type", type, 2900);')
    add('CHECK("user alloc: flags @0", m[16], 3);')
    add('CHECK("user alloc: alloc @1", fa == 0x1122334455667788ULL, 1);')
    add('CHECK("user alloc: free @9", ff == 0x99AABBCCDDEEFF00ULL, 1);')
    add("for (int i = 33; i < 40; i++) CHECK(\"user alloc: padding zero\", m[i], 0);")
    add('CHECK("user alloc: nothing past CMSG_SPACE", m[40], 0xEE);')
    add("}")
    add('if (!bad) printf("ok\\n");')
    add("return bad ? 1 : 0;")
    add("}")
    return "\n".join(lines) + "\n"


def _run_header_check(include: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "abi_check.c"
    exe = tmp_path / "abi_check"
    src.write_text(_header_check_source())
    build = subprocess.run([_cc(), "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                            "-Wno-unused-function", "-I", str(include), str(src), "-o",
                            str(exe)], capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        return build
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)


def test_header_matches_the_fact_sheet(tmp_path: Path) -> None:
    run = _run_header_check(INCLUDE, tmp_path)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stdout + run.stderr


@pytest.mark.parametrize(
    ("what", "pattern", "replace", "complaint"),
    [
        # two members of the 3.94x layout swapped
        ("swap", r"(pyxlio_dump_fd_stats_fn dump_fd_stats;)(\s*/\* 32 bit 11 \*/\s*\\\s*)"
                 r"(pyxlio_ioctl_fn ioctl;)", r"\3\2\1", "pyxlio_api_394_t.ioctl"),
        # one member too many in the Ultra API: 3.60 and 3.61 too long, offsets shifted
        ("extra", r"void \*xlio_socket_listen; ", "void *xlio_socket_listen; void *slip; ",
         "sizeof(pyxlio_api_360_full_t)"),
        # a wrong offset in xlio_info_t
        ("info", r"uint32_t (socket_ready_queue_pkt_count;)", r"uint64_t \1",
         "pyxlio_recv_info_t.socket_ready_queue_byte_count"),
    ],
    ids=["swap", "extra", "info"],
)
def test_a_wrong_header_fails_the_check(tmp_path: Path, what: str, pattern: str, replace: str,
                                        complaint: str) -> None:
    """The check above has teeth: the same program, against a header with one slip."""
    bad = tmp_path / "include"
    shutil.copytree(INCLUDE, bad)
    header = bad / "pyxlio" / "xlio_abi.h"
    text, n = re.subn(pattern, replace, header.read_text(), count=1)
    assert n == 1, f"the {what} mutation no longer applies to the header"
    # without the header's own _Static_asserts: the check program must find the slip itself
    header.write_text(re.sub(r"^_Static_assert\(.*$", "", text, flags=re.M))
    run = _run_header_check(bad, tmp_path)
    assert run.returncode != 0
    assert f"MISMATCH {complaint}:" in run.stdout, run.stdout + run.stderr


# ---- 3. str() and format() of the enums say something ------------------------------------------

def test_enums_print_as_words() -> None:
    assert str(Layout.LEGACY) == "legacy (libxlio 2.0-3.51)"
    assert f"{Layout.V3_60}" == "3.60 (libxlio 3.60.x)"
    assert "3.61" in str(Layout.V3_61) and "3.94x" in str(Layout.V3_94)
    assert format(Layout.V3_94, "d") == "3" and int(Layout.V3_94) == 3
    assert f"{Layout.LEGACY:>30}".endswith("legacy (libxlio 2.0-3.51)")
    assert repr(Layout.LEGACY) == "<Layout.LEGACY: 0>"
    assert str(Capability.IOCTL) == "IOCTL"
    assert str(Capability.IOCTL | Capability.ADD_CONF_RULE) == "ADD_CONF_RULE|IOCTL"
    assert str(Capability(0)) == "none"
    assert str(Capability(1 << 20 | 1)) == "REGISTER_RECV_CALLBACK|0x100000"
    assert f"{Capability(0x3FFF):#x}" == "0x3fff"
    assert str(LogLevel.INFO) == "INFO" and f"{LogLevel.NONE:d}" == "-1"
    assert str(Verdict.HOLD) == "HOLD" and f"{Verdict.HOLD}" == "HOLD"
    assert str(pyxlio.AllocTarget.BOTH) == "BOTH" and str(pyxlio.AllocTarget.RX) == "RX"
    # still the numbers they were
    assert Verdict.HOLD == 2 and LogLevel.ALL == 8 and Layout.V3_61 == 2


def test_dummy_send_by_layout() -> None:
    """As the C header's pyxlio_layout_has_dummy_send (checked in the C program above)."""
    assert [lay for lay in Layout if lay.has_dummy_send] == [Layout.LEGACY, Layout.V3_94,
                                                             Layout.VMA]


# ---- 4. the vendor's header, whichever release installed it ------------------------------------

# every xlio_api_t member name pyxlio knows, in any layout
_ALL_MEMBERS = list(dict.fromkeys(name for _, (_, members, _, _) in LAYOUTS.items()
                                  for _, name in members))
_CAP_NAMES = [*CAP_BITS, "XLIO_ULTRA"]          # bit 13 is XLIO_ULTRA from 3.60 on
_VENDOR_CONSTANTS = {                           # vendor name -> pyxlio's macro
    "SO_XLIO_GET_API": "PYXLIO_SO_XLIO_GET_API",
    "XLIO_MAGIC_NUMBER": "PYXLIO_XLIO_MAGIC",
    "MSG_XLIO_ZCOPY_FORCE": "PYXLIO_MSG_XLIO_ZCOPY_FORCE",
    "MSG_XLIO_ZCOPY": "PYXLIO_MSG_XLIO_ZCOPY",
    "XLIO_SND_FLAGS_DUMMY": "PYXLIO_SND_FLAGS_DUMMY",
    "CMSG_XLIO_IOCTL_USER_ALLOC": "PYXLIO_CMSG_IOCTL_USER_ALLOC",
    "XLIO_PACKET_DROP": "PYXLIO_PACKET_DROP",
    "XLIO_PACKET_RECV": "PYXLIO_PACKET_RECV",
    "XLIO_PACKET_HOLD": "PYXLIO_PACKET_HOLD",
}
# the members pyxlio calls -> their cap bit
_CALLED = {"recvfrom_zcopy": "RECVFROM_ZCOPY",
           "recvfrom_zcopy_free_packets": "RECVFROM_ZCOPY_FREE_PACKETS",
           "add_conf_rule": "ADD_CONF_RULE", "thread_offload": "THREAD_OFFLOAD",
           "get_socket_rings_num": "GET_SOCKET_RINGS_NUM",
           "get_socket_rings_fds": "GET_SOCKET_RINGS_FDS", "dump_fd_stats": "DUMP_FD_STATS",
           "ioctl": "IOCTL", "register_recv_callback": "REGISTER_RECV_CALLBACK"}


def _vendor_header() -> tuple[list[str], str] | None:
    """(compiler flags, #include argument) of the vendor header, or None when none is found.

    XLIO_HEADER names a directory holding mellanox/xlio_extra.h (an install prefix's include
    directory) or xlio_extra.h itself (a source tree's src/core); without it, the compiler's
    default search path is asked for <mellanox/xlio_extra.h>."""
    named = os.environ.get("XLIO_HEADER")
    if named:
        d = Path(named)
        if (d / "mellanox" / "xlio_extra.h").is_file():
            return ["-I", str(d)], "<mellanox/xlio_extra.h>"
        if (d / "xlio_extra.h").is_file():
            return ["-I", str(d)], "<xlio_extra.h>"
        pytest.fail(f"XLIO_HEADER={named}: neither mellanox/xlio_extra.h nor xlio_extra.h there")
    probe = subprocess.run([_cc(), "-std=gnu11", "-E", "-x", "c", "-", "-o", os.devnull],
                           input="#include <mellanox/xlio_extra.h>\n", capture_output=True,
                           text=True, timeout=60)
    return ([], "<mellanox/xlio_extra.h>") if probe.returncode == 0 else None


def _compile(flags: list[str], source: str, tmp_path: Path, name: str
             ) -> subprocess.CompletedProcess[str]:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    cc = _cc()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    limit = ["-ferror-limit=0"] if "clang" in version else ["-fmax-errors=0"]
    return subprocess.run([cc, "-std=gnu11", "-w", *limit, *flags, "-I", str(INCLUDE), "-c",
                           str(src), "-o", os.devnull], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, LC_ALL="C"))


# The Ultra API's structs and constants (xlio_types.h): vendor name -> pyxlio's.
_ULTRA_STRUCTS = {
    "xlio_init_attr": ("pyxlio_init_attr_t", ["flags", "memory_cb", "memory_alloc",
                                              "memory_free"]),
    "xlio_poll_group_attr": ("pyxlio_poll_group_attr_t", ["flags", "socket_event_cb",
                                                          "socket_comp_cb", "socket_rx_cb"]),
    "xlio_socket_attr": ("pyxlio_socket_attr_t", ["flags", "domain", "group", "userdata_sq"]),
    "xlio_socket_send_attr": ("pyxlio_socket_send_attr_t", ["flags", "mkey", "userdata_op"]),
    "xlio_buf": ("pyxlio_xbuf_t", ["userdata"]),
}
_ULTRA_CONSTANTS = {
    "XLIO_SOCKET_EVENT_ESTABLISHED": "PYXLIO_SOCKET_EVENT_ESTABLISHED",
    "XLIO_SOCKET_EVENT_TERMINATED": "PYXLIO_SOCKET_EVENT_TERMINATED",
    "XLIO_SOCKET_EVENT_CLOSED": "PYXLIO_SOCKET_EVENT_CLOSED",
    "XLIO_SOCKET_EVENT_ERROR": "PYXLIO_SOCKET_EVENT_ERROR",
    "XLIO_GROUP_FLAG_SAFE": "PYXLIO_GROUP_FLAG_SAFE",
    "XLIO_GROUP_FLAG_DIRTY": "PYXLIO_GROUP_FLAG_DIRTY",
    "XLIO_SOCKET_SEND_FLAG_FLUSH": "PYXLIO_SOCKET_SEND_FLAG_FLUSH",
    "XLIO_SOCKET_SEND_FLAG_INLINE": "PYXLIO_SOCKET_SEND_FLAG_INLINE",
}


def _ultra_same(has: set[str]) -> list[str]:
    """Static asserts of the Ultra API's structs and constants against pyxlio's header: every
    size and offset, the accept callback where the release has one (3.60+: 40 bytes; the
    socket API of 3.30-3.51: 32)."""
    out: list[str] = []
    for vendor, (ours, fields) in _ULTRA_STRUCTS.items():
        assert f"ustruct:{vendor}" in has, f"the header has the Ultra API but no struct {vendor}"
        if vendor == "xlio_poll_group_attr":
            size = ("sizeof(pyxlio_poll_group_attr_t)" if "ufield:socket_accept_cb" in has
                    else "PYXLIO_POLL_GROUP_ATTR_SIZE_SOCKET_API")
        else:
            size = f"sizeof({ours})"
        out.append(f'SAME(sizeof(struct {vendor}), {size}, "sizeof(struct {vendor})");')
        for f in fields:
            out.append(f"SAME(offsetof(struct {vendor}, {f}), offsetof({ours}, {f}), "
                       f'"{vendor}.{f}");')
    if "ufield:socket_accept_cb" in has:
        out.append("SAME(offsetof(struct xlio_poll_group_attr, socket_accept_cb), "
                   'offsetof(pyxlio_poll_group_attr_t, socket_accept_cb), "accept_cb");')
    for vendor, ours in _ULTRA_CONSTANTS.items():
        assert f"uconst:{vendor}" in has, f"the header has the Ultra API but no {vendor}"
        out.append(f'SAME({vendor}, {ours}, "{vendor}");')
    return out


def _vendor_declares(flags: list[str], include: str, tmp_path: Path) -> set[str]:
    """Which members, structs, cap bits and constants the vendor header declares.

    One probe file, one item a line: the lines the compiler refuses are the items the header
    lacks.  Any other error (in the header itself) fails the test."""
    items: list[tuple[str, str]] = []
    items += [(f"member:{m}", f"offsetof(struct xlio_api_t, {m})") for m in _ALL_MEMBERS]
    items += [(f"info:{m}", f"offsetof(struct xlio_info_t, {m})") for _, m in INFO_MEMBERS]
    items += [("struct:xlio_info_t", "sizeof(struct xlio_info_t)"),
              ("struct:packet", "sizeof(struct xlio_recvfrom_zcopy_packet_t)"),
              ("struct:packets", "sizeof(struct xlio_recvfrom_zcopy_packets_t)")]
    items += [(f"cap:{c}", f"XLIO_EXTRA_API_{c}") for c in _CAP_NAMES]
    items += [(f"const:{c}", c) for c in _VENDOR_CONSTANTS]
    items += [(f"ustruct:{v}", f"sizeof(struct {v})") for v in _ULTRA_STRUCTS]
    items += [("ufield:socket_accept_cb",
               "offsetof(struct xlio_poll_group_attr, socket_accept_cb)")]
    items += [(f"uconst:{c}", c) for c in _ULTRA_CONSTANTS]
    head = ["#include <stddef.h>", f"#include {include}"]
    body = [f"static const unsigned long long probe_{i} = (unsigned long long)({expr});"
            for i, (_, expr) in enumerate(items)]
    run = _compile(flags, "\n".join(head + body) + "\n", tmp_path, "probe")
    missing: set[str] = set()
    for line in run.stderr.splitlines():
        m = re.match(r"^(.*?):(\d+):\d+: (?:fatal )?error:", line)
        if not m:
            continue
        index = int(m.group(2)) - len(head) - 1
        if not m.group(1).endswith("probe.c") or not 0 <= index < len(items):
            pytest.fail(f"the vendor header {include} does not compile:\n{run.stderr}")
        missing.add(items[index][0])
    return {key for key, _ in items} - missing


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler")
def test_layout_matches_the_installed_vendor_header(tmp_path: Path) -> None:
    """Whichever release's header is installed: its layout, sizeof, every offset pyxlio uses,
    the cap bits and the constants, against pyxlio's header."""
    found = _vendor_header()
    if found is None:
        pytest.skip("no vendor header: <mellanox/xlio_extra.h> (XLIO package) is not installed "
                    "and XLIO_HEADER names no directory holding one")
    flags, include = found
    has = _vendor_declares(flags, include, tmp_path)
    members = {k.split(":", 1)[1] for k in has if k.startswith("member:")}

    # which release's layout the struct declares, by its members
    if "recvfrom_zcopy" in members:
        key = "legacy"
    elif "register_recv_callback" in members:
        key = "v360"
    elif "ioctl" in members:
        key = "v394"
    else:
        key = "v361"
    struct, layout_members, _, _ = LAYOUTS[key]
    ours = [name for _, name in layout_members]
    foreign = members - set(ours)
    assert not foreign, f"the header's {key} struct has members pyxlio puts elsewhere: {foreign}"

    # the cap_mask such a library sets: every XLIO_EXTRA_API_* bit its header declares
    caps = {k.split(":", 1)[1] for k in has if k.startswith("cap:")}
    cap_mask = sum(1 << CAP_BITS["XLIO_SOCKET" if c == "XLIO_ULTRA" else c] for c in caps)
    assert _api._layout_of(cap_mask) is LAYOUT_ENUM[key], (
        f"members say {key}, the cap bits {cap_mask:#x} say {_api._layout_of(cap_mask)!s}")
    for member, cap in _CALLED.items():
        assert (member in members) == (cap in caps), f"{member} and its cap bit {cap}"
    size = _api._layout_size(cap_mask)
    consts = {k.split(":", 1)[1] for k in has if k.startswith("const:")}
    assert {"SO_XLIO_GET_API", "XLIO_MAGIC_NUMBER"} <= consts
    assert LAYOUT_ENUM[key].has_dummy_send == ("XLIO_SND_FLAGS_DUMMY" in consts)
    if "ioctl" in members:
        assert "CMSG_XLIO_IOCTL_USER_ALLOC" in consts
    if "recvfrom_zcopy" in members:
        assert {"MSG_XLIO_ZCOPY", "MSG_XLIO_ZCOPY_FORCE"} <= consts
        assert {"struct:packet", "struct:packets"} <= has
    if "register_recv_callback" in members:
        assert {"XLIO_PACKET_DROP", "XLIO_PACKET_RECV", "XLIO_PACKET_HOLD"} <= consts
        assert "struct:xlio_info_t" in has

    same = ["#include <stddef.h>", f"#include {include}", '#include "pyxlio/xlio_abi.h"',
            "#define SAME(a, b, what) _Static_assert((a) == (b), what)"]
    same.append(f'SAME(sizeof(struct xlio_api_t), {size}, "sizeof(struct xlio_api_t) is not '
                f'the {size} bytes pyxlio takes for cap_mask {cap_mask:#x}");')
    for name in ours:
        if name in members:
            same.append(f"SAME(offsetof(struct xlio_api_t, {name}), offsetof({struct}, {name}), "
                        f'"xlio_api_t.{name}");')
        else:   # a member of a later release: must lie past this release's struct
            same.append(f"_Static_assert(offsetof({struct}, {name}) >= "
                        f'sizeof(struct xlio_api_t), "{name} is inside the vendor struct");')
    for cap in caps:
        bit = "XLIO_SOCKET" if cap == "XLIO_ULTRA" else cap
        same.append(f"SAME(XLIO_EXTRA_API_{cap}, 1ULL << PYXLIO_CAP_{bit}, \"cap {cap}\");")
    for const in consts:
        same.append(f'SAME({const}, {_VENDOR_CONSTANTS[const]}, "{const}");')
    if "struct:xlio_info_t" in has:
        same.append('SAME(sizeof(struct xlio_info_t), sizeof(pyxlio_recv_info_t), "info");')
        for _, name in INFO_MEMBERS:
            assert f"info:{name}" in has, f"xlio_info_t.{name}"
            same.append(f"SAME(offsetof(struct xlio_info_t, {name}), "
                        f'offsetof(pyxlio_recv_info_t, {name}), "xlio_info_t.{name}");')
    if "struct:packet" in has:
        same += [
            "SAME(sizeof(struct xlio_recvfrom_zcopy_packet_t), sizeof(pyxlio_zc_packet_t), "
            '"packet");',
            "SAME(offsetof(struct xlio_recvfrom_zcopy_packet_t, packet_id), "
            'offsetof(pyxlio_zc_packet_t, packet_id), "packet_id");',
            "SAME(offsetof(struct xlio_recvfrom_zcopy_packet_t, sz_iov), "
            'offsetof(pyxlio_zc_packet_t, sz_iov), "sz_iov");',
            "SAME(offsetof(struct xlio_recvfrom_zcopy_packet_t, iov), "
            'offsetof(pyxlio_zc_packet_t, iov), "iov");',
            "SAME(offsetof(struct xlio_recvfrom_zcopy_packets_t, n_packet_num), "
            'offsetof(pyxlio_zc_packets_t, n_packet_num), "n_packet_num");',
            "SAME(offsetof(struct xlio_recvfrom_zcopy_packets_t, pkts), "
            'offsetof(pyxlio_zc_packets_t, pkts), "pkts");',
        ]
    if "xlio_init_ex" in members:
        same += _ultra_same(has)
    run = _compile(flags, "\n".join(same) + "\n", tmp_path, "same")
    assert run.returncode == 0, run.stderr
    print(f"vendor header {include} {' '.join(flags)}: layout {LAYOUT_ENUM[key]}, "
          f"{len(members)} members, sizeof {size}, cap_mask {cap_mask:#x}, "
          f"constants {sorted(consts)}")


# ---- 5. libvma's struct vma_api_t and the VMA -> pyxlio capability table -------------------------

def test_vma_cap_table_is_the_fact_sheet_mapping() -> None:
    table = _api._vma_cap_table()
    assert {bit: cap for bit, cap, _ in table} == VMA_TO_CAP
    offsets = dict((name, off) for off, name in VMA_MEMBERS)
    names = {0: "register_recv_callback", 1: "recvfrom_zcopy", 2: "free_packets",
             3: "add_conf_rule", 4: "thread_offload", 5: "dump_fd_stats",
             6: "socketxtreme_poll", 7: "socketxtreme_free_vma_packets",
             8: "socketxtreme_ref_vma_buff", 9: "socketxtreme_free_vma_buff",
             10: "get_socket_rings_num", 11: "get_socket_rings_fds", 21: "ioctl"}
    assert {bit: off for bit, _, off in table} == {b: offsets[n] for b, n in names.items()}
    # 9.8.84's mask: every base call, socketXtreme, rings and the ioctl; bit 13 (XLIO's socket
    # API) never
    assert _api._vma_caps(VMA_MASK_9_8_84) == Capability(0x1FFF)
    assert _api._vma_caps(VMA_MASK_9_8_84, ioctl_ok=False) == Capability(0x0FFF)
    assert _api._vma_caps(1 << 21 | 1 << 15 | 1 << 19) == Capability.IOCTL


def _vma_struct(mask: int, mask_at: int, size: int) -> tuple[object, int]:
    """A struct vma_api_t in memory: slot s holds 0x5000 + s, the mask at `mask_at`."""
    import ctypes

    buf = (ctypes.c_uint64 * (size // 8))(*[0x5000 + s for s in range(size // 8)])
    buf[mask_at // 8] = mask
    return buf, ctypes.addressof(buf)


@pytest.mark.parametrize(
    ("release", "version", "trusted", "mask", "mask_at", "size", "want_size", "ioctl"),
    [
        ("9.8.84", 90884, False, VMA_MASK_9_8_84, 152, 168, 168, True),
        ("9.8.70", 90870, False, VMA_MASK_9_8_84, 152, 168, 168, True),
        # 9.8.40-9.8.60: no bit 21, the struct ends after the mask
        ("9.8.51", 90851, False, 0x177FFF, 152, 160, 160, False),
        # 9.3-9.8.31: bit 21 is get_dpcp_devices: never taken for the ioctl
        ("9.8.1", 90801, False, VMA_MASK_9_8_84, 152, 168, 168, False),
        # file name not telling the version: bit 21 not trusted
        ("unnamed", 0, False, VMA_MASK_9_8_84, 152, 168, 168, False),
        # pyxlio's emulator keeps the 9.8.84 layout
        ("emulator", 0, True, VMA_MASK_9_8_84, 152, 168, 168, True),
        # 8.8.2-9.2.x: the mask at 168 (cyclic buffer and get_mem_info before it)
        ("9.0.1", 90001, False, 0x3FFFFF, 168, 184, 184, False),
        ("8.9.1", 80901, False, 0x1FFFFF, 168, 176, 176, False),
    ],
)
def test_vma_layouts_resolve_by_release(release: str, version: int, trusted: bool, mask: int,
                                        mask_at: int, size: int, want_size: int,
                                        ioctl: bool) -> None:
    buf, address = _vma_struct(mask, mask_at, size)
    got = _api._resolve_vma_at(address, version, trusted)
    assert got is not None, release
    assert got["layout"] is Layout.VMA and got["native_mask"] == mask
    assert got["size"] == want_size
    want = {"register_recv_callback": 0, "recvfrom_zcopy": 8, "free_packets": 16,
            "add_conf_rule": 24, "thread_offload": 32, "get_socket_rings_num": 48,
            "get_socket_rings_fds": 56, "dump_fd_stats": 96}
    for name, off in want.items():
        assert got[name] == 0x5000 + off // 8, (release, name)
    assert got["ioctl"] == (0x5000 + 20 if ioctl else 0), release
    assert bool(got["cap_mask"] & Capability.IOCTL) is ioctl
    del buf


def test_vma_layout_not_told_is_refused() -> None:
    # 8.8.2-9.2.x read without a version: slot 152 holds a function pointer (get_mem_info)
    buf, address = _vma_struct(0x3FFFFF, 168, 184)
    assert _api._resolve_vma_at(address, 0, False) is None
    # a release without any mask (8.8.0 and older)
    assert _api._resolve_vma_at(address, 80800, False) is None
    del buf


def test_vma_version_from_file_name() -> None:
    assert _api._vma_version_code("/usr/lib64/libvma.so.9.8.84") == 90884
    assert _api._vma_version_code("/opt/x/libvma.so.8.8.2") == 80802
    assert _api._vma_version_code("/opt/x/libvma.so") == 0
    assert _api._vma_version_code("/opt/x/libvma.so.9") == 0
    assert _api._vma_version_code("/opt/x/libxlio.so.3.51.1") == 0
    assert _api._vma_version_code(None) == 0


def test_vma_header_matches_the_fact_sheet(tmp_path: Path) -> None:
    """pyxlio's struct vma_api_t and VMA cap bits, compiled and held against the tables."""
    lines = ["#include <stdio.h>", '#include "pyxlio/xlio_abi.h"', "static int bad;",
             "#define CHECK(what, got, want) do { long long g_ = (long long)(got), "
             "w_ = (long long)(want); if (g_ != w_) { printf(\"MISMATCH %s: header %lld, fact "
             "sheet %lld\\n\", what, g_, w_); bad++; } } while (0)",
             "int main(void) {",
             'CHECK("sizeof(pyxlio_api_vma_t)", sizeof(pyxlio_api_vma_t), 168);',
             'CHECK("vma info", sizeof(pyxlio_vma_info_t), 80);',
             'CHECK("SO_VMA_GET_API", PYXLIO_SO_VMA_GET_API, 2800);',
             'CHECK("dummy send", pyxlio_layout_has_dummy_send(PYXLIO_LAYOUT_VMA), 1);']
    for off, name in VMA_MEMBERS:
        lines.append(f'CHECK("vma.{name}", offsetof(pyxlio_api_vma_t, {name}), {off});')
    for name, bit in VMA_CAP_BITS.items():
        lines.append(f'CHECK("PYXLIO_VMA_CAP_{name}", PYXLIO_VMA_CAP_{name}, {bit});')
    lines += ['if (!bad) printf("ok\\n");', "return bad;", "}"]
    src, exe = tmp_path / "vma_check.c", tmp_path / "vma_check"
    src.write_text("\n".join(lines) + "\n")
    build = subprocess.run([_cc(), "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                            "-Wno-unused-function", "-I", str(INCLUDE), str(src), "-o",
                            str(exe)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stdout + run.stderr
