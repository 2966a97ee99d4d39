"""Detection of XLIO and the choice of layout, for every layout and every malformed answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import pyxlio
from conftest import run_python
from pyxlio import Capability, Layout

HERE = Path(__file__).parent


def test_provider_answers_as_the_pass_says(provider: str) -> None:
    api = pyxlio.get_api()
    assert pyxlio.available() is (api is not None)
    if provider == "kernel":
        assert api is None
        return
    assert api is not None
    assert api.layout is Layout.LEGACY
    if provider == "emu":
        assert api.cap_mask == 0x3FFF
        assert api.library is not None and api.library.endswith("libxlio_emu.so")
        assert api.emulator_version
    assert api.size == 248
    assert api.has(Capability.RECVFROM_ZCOPY | Capability.RECVFROM_ZCOPY_FREE_PACKETS)
    assert api.capabilities & Capability.IOCTL
    assert "layout=LEGACY" in repr(api)


@pytest.mark.xlio
def test_has_rejects_what_is_not_a_capability(provider: str) -> None:
    api = pyxlio.get_api()
    assert api is not None
    with pytest.raises(TypeError):
        api.has("RECVFROM_ZCOPY")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        api.has(True)
    assert api.has(0) is False


@pytest.mark.kernel_only
def test_xlio_only_calls_say_xlio_is_not_loaded(provider: str) -> None:
    calls = [
        lambda: pyxlio.add_conf_rule("use os udp_receiver *:5000"),
        lambda: pyxlio.thread_offload(True),
        lambda: pyxlio.dump_fd_stats(0),
        lambda: pyxlio.socket_rings(1),
        lambda: pyxlio.set_allocator("aligned"),
    ]
    for call in calls:
        with pytest.raises(pyxlio.XlioNotLoadedError) as info:
            call()
        assert info.value.errno != 0 and "not loaded" in str(info.value)
        assert isinstance(info.value, OSError)


@pytest.fixture(scope="module")
def fake_xlio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake XLIO")
    out = tmp_path_factory.mktemp("fake") / "libfake_xlio.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(out),
                    str(HERE / "c" / "fake_xlio.c"), "-ldl"], check=True)
    return out


PROBE = """
import json, pyxlio
api = pyxlio.get_api()
out = {"loaded": api is not None}
if api is not None:
    out.update(layout=api.layout.name, cap_mask=api.cap_mask, size=api.size,
               provider=api.provider)
    results = {}
    for name, call in [
        ("add_conf_rule", lambda: pyxlio.add_conf_rule("use os udp_receiver *:5000")),
        ("thread_offload", lambda: pyxlio.thread_offload(True)),
        ("dump_fd_stats", lambda: pyxlio.dump_fd_stats(0)),
        ("set_allocator", lambda: pyxlio.set_allocator("aligned")),
        ("socket_rings", lambda: pyxlio.socket_rings(1)),
    ]:
        try:
            call()
            results[name] = "ok"
        except pyxlio.UnsupportedError:
            results[name] = "unsupported"
        except pyxlio.XlioError as exc:
            results[name] = f"error {exc.errno}"
    out["results"] = results
print(json.dumps(out))
"""


def _probe(lib: Path, mode: str, tmp_path: Path) -> tuple[dict[str, object], list[str]]:
    log = tmp_path / f"{mode}.log"
    env = dict(os.environ, LD_PRELOAD=str(lib), FAKE_XLIO_MODE=mode, FAKE_XLIO_LOG=str(log))
    proc = run_python(PROBE, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().split() if log.exists() else []
    return json.loads(proc.stdout), calls


@pytest.mark.provider_independent
@pytest.mark.parametrize("mode", ["none", "null", "badmagic", "shortlen"])
def test_malformed_answers_are_refused(fake_xlio: Path, tmp_path: Path, mode: str) -> None:
    out, calls = _probe(fake_xlio, mode, tmp_path)
    assert out == {"loaded": False}
    assert calls == []


@pytest.mark.provider_independent
@pytest.mark.parametrize(
    ("mode", "layout", "size", "expected"),
    [
        ("v360", "V3_60", 48, {"add_conf_rule": "ok", "thread_offload": "ok",
                               "dump_fd_stats": "ok", "set_allocator": "unsupported",
                               "socket_rings": "unsupported"}),
        ("v394", "V3_94", 48, {"add_conf_rule": "ok", "thread_offload": "ok",
                               "dump_fd_stats": "ok", "set_allocator": "ok",
                               "socket_rings": "unsupported"}),
        ("v361", "V3_61", 40, {"add_conf_rule": "ok", "thread_offload": "ok",
                               "dump_fd_stats": "ok", "set_allocator": "unsupported",
                               "socket_rings": "unsupported"}),
        ("legacy20", "LEGACY", 80, {"add_conf_rule": "ok", "thread_offload": "ok",
                                    "dump_fd_stats": "ok", "set_allocator": "ok",
                                    "socket_rings": "error 95"}),
    ],
)
def test_each_layout_calls_only_members_it_has(fake_xlio: Path, tmp_path: Path, mode: str,
                                               layout: str, size: int,
                                               expected: dict[str, str]) -> None:
    """The struct ends at a guard page: a read past the implied size would crash the probe."""
    out, calls = _probe(fake_xlio, mode, tmp_path)
    assert out["loaded"] is True
    assert out["layout"] == layout
    assert out["size"] == size
    assert out["provider"] == "libxlio"
    assert out["results"] == expected
    called = {k for k, v in expected.items() if v == "ok"}
    names = {"set_allocator": "ioctl"}
    assert set(calls) >= {names.get(k, k) for k in called}
    if mode != "legacy20":
        assert "recvfrom_zcopy" not in calls and "free_packets" not in calls


@pytest.mark.provider_independent
def test_emulator_361_layout_is_told_apart() -> None:
    from pyxlio import emu

    code = (
        "import json, pyxlio\n"
        "api = pyxlio.get_api()\n"
        "print(json.dumps([api.layout.name, api.cap_mask, api.provider,\n"
        "                  api.has(pyxlio.Capability.RECVFROM_ZCOPY)]))\n"
    )
    proc = run_python(code, env=emu.environ(strict=True, layout="3.61"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["V3_61", 0x2818, "emulator", False]


@pytest.mark.provider_independent
def test_info_command_reports_the_provider() -> None:
    from pyxlio import emu

    proc = run_python("import pyxlio._info as i; i.main(['--json'])", env=emu.environ())
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["loaded"] is True and info["provider"] == "emulator"
    assert info["layout"] == "LEGACY" and "RECVFROM_ZCOPY" in info["capabilities"]
    plain = run_python("import pyxlio._info as i; i.main([])",
                       env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    assert plain.returncode == 0 and "not loaded" in plain.stdout
