"""Every public callable of the extension modules has a real signature: ``inspect.signature``
works on it (Cython's ``embedsignature.format = "clinic"``, see setup.py: without it these
tests fail) and names its parameters, so help(), IDEs, Sphinx's autodoc and mypy's stubtest
see what the stubs say."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

import pyxlio
from pyxlio import _api, _zcopy

pytestmark = pytest.mark.provider_independent

#: the Python-level special methods the extension classes define (other dunders are slots)
DUNDERS = ("__init__", "__enter__", "__exit__", "__getitem__", "__len__", "__iter__",
           "__bytes__", "__bool__", "__next__")
#: constructors that exist only to refuse (the objects are made by pyxlio): (*args, **kwargs)
REFUSING = {"_zcopy.Packet.__init__", "_zcopy.PacketBatch.__init__",
            "_zcopy.RecvInfo.__init__"}


def public_callables(module: ModuleType) -> Iterator[tuple[str, Callable[..., object]]]:
    short = module.__name__.rsplit(".", 1)[-1]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if isinstance(obj, type):
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_") and attr not in DUNDERS:
                    continue
                if isinstance(member, (property, staticmethod, classmethod)):
                    member = getattr(obj, attr)
                if callable(member) and not isinstance(member, type):
                    yield f"{short}.{name}.{attr}", member
        elif callable(obj):
            yield f"{short}.{name}", obj


def all_callables() -> list[tuple[str, Callable[..., object]]]:
    return [*public_callables(_api), *public_callables(_zcopy)]


def test_the_walk_finds_the_api() -> None:
    names = {name for name, _ in all_callables()}
    expected = {"_api.get_api", "_api.add_conf_rule", "_api.set_allocator", "_api.Api.has",
                "_api.offload.__exit__", "_zcopy.Packet.release", "_zcopy.PacketBatch.views",
                "_zcopy.SocketEngine.recvfrom_zcopy", "_zcopy.SocketEngine.recv_batch"}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("name,obj", all_callables(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_public_callable_has_a_signature(name: str, obj: Callable[..., object]) -> None:
    sig = inspect.signature(obj)
    kinds = [p.kind for p in sig.parameters.values() if p.name != "self"]
    generic = kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]
    assert generic == (name in REFUSING), f"{name}{sig}: only (*args, **kwargs)"


def test_signatures_match_the_documented_parameters() -> None:
    assert list(inspect.signature(_api.set_allocator).parameters) == [
        "allocator", "free", "pools"]
    assert inspect.signature(_api.set_allocator).parameters["pools"].kind is (
        inspect.Parameter.KEYWORD_ONLY)
    assert list(inspect.signature(_zcopy.SocketEngine.recv_batch).parameters)[:4] == [
        "self", "max_packets", "timeout", "addresses"]
    assert list(inspect.signature(_zcopy.Poller.__init__).parameters) == ["self"]
    assert inspect.signature(_zcopy.SocketEngine.recv_batch).parameters[
        "max_packets"].default == 64


def test_package_level_names_have_signatures() -> None:
    for name in pyxlio.__all__:
        obj = getattr(pyxlio, name)
        if callable(obj) and not isinstance(obj, type):
            inspect.signature(obj)


@pytest.mark.parametrize("cls", [_zcopy.Poller, _zcopy.SocketEngine, _zcopy.Packet,
                                 _zcopy.PacketBatch, _zcopy.RecvInfo, _api.Api],
                         ids=lambda c: c.__name__)
def test_extension_classes_have_a_signature(cls: type) -> None:
    """Classes are callables too: their docstrings open with the text signature."""
    sig = inspect.signature(cls)
    refusing = f"_zcopy.{cls.__name__}.__init__" in REFUSING
    assert (str(sig) == "(*args, **kwargs)") is refusing, f"{cls.__name__}{sig}"
    assert inspect.getdoc(cls) and not inspect.getdoc(cls).startswith("--")
    if cls is _zcopy.SocketEngine:
        assert list(sig.parameters) == ["fd", "family", "sotype"]
