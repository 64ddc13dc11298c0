"""Registry: keys are CLI names; duplicates raise; unknown keys raise with a did-you-mean; lazy entries."""

import pytest

from contrastkit.errors import UsageError
from contrastkit.registry import DECODERS, Registry, RegistryError


def test_register_and_get():
    r = Registry("widget")

    @r.register("blue")
    def blue():
        return "b"

    assert r.get("blue") is blue
    assert "blue" in r and r.names() == ["blue"]


def test_duplicate_raises():
    r = Registry("widget")
    r.register("x", object())
    with pytest.raises(RegistryError, match="already registered"):
        r.register("x", object())


def test_unknown_has_did_you_mean_and_is_a_usage_error():
    r = Registry("widget")
    r.register("contrastive", object())
    with pytest.raises(UsageError, match=r"unknown widget 'contrastiv'\. Did you mean 'contrastive'\?"):
        r.get("contrastiv")
    with pytest.raises(RegistryError) as e:
        r.get("zzz")
    assert "Did you mean" not in str(e.value) and "Known: contrastive" in str(e.value)


def test_lazy_entry_is_imported_on_first_get():
    r = Registry("thing")
    r.register("join", "os.path:join")
    import os.path

    assert r.get("join") is os.path.join


def test_builtin_strategies_registered():
    import contrastkit.decoding  # noqa: F401

    for name in ("greedy", "sample", "beam"):
        assert name in DECODERS
    with pytest.raises(UsageError, match="Did you mean 'greedy'"):
        DECODERS.get("gredy")


def test_bad_name_rejected():
    with pytest.raises(RegistryError):
        Registry("x").register("", object())


def test_a_second_lazy_registration_is_a_duplicate():
    r = Registry("widget")
    r.register("x", "os.path:join")
    with pytest.raises(RegistryError, match="already registered"):
        r.register("x", "os.path:basename")


def test_a_lazy_entry_may_be_resolved_by_its_own_module():
    import os.path

    r = Registry("widget")
    r.register("join", "os.path:join")
    r.register("join", os.path.join)  # the module named by the lazy entry registers the real object on import
    assert r.get("join") is os.path.join
    with pytest.raises(RegistryError, match="already registered"):
        r.register("join", os.path.basename)


def test_names_are_sorted_and_known_list_too():
    r = Registry("widget")
    for name in ("b", "c", "a"):
        r.register(name, object())
    assert r.names() == ["a", "b", "c"] and list(r) == ["a", "b", "c"]
    with pytest.raises(RegistryError, match="Known: a, b, c"):
        r.get("zzzz")


def test_entry_points_add_names_but_never_replace_builtins(monkeypatch):
    import os.path
    from types import SimpleNamespace

    import contrastkit.registry as registry

    builtin = object()
    eps = [SimpleNamespace(name="blue", value="os.path:basename"), SimpleNamespace(name="extra", value="os.path:join")]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "contrastkit.test" else [])
    r = Registry("widget", "contrastkit.test")
    r.register("blue", builtin)
    assert "extra" in r  # `in` sees plugins before any get()
    assert r.get("blue") is builtin
    assert r.get("extra") is os.path.join
    assert r.names() == ["blue", "extra"]


def test_lazy_entry_may_name_a_whole_module():
    import os.path

    r = Registry("thing")
    r.register("path", "os.path")
    assert r.get("path") is os.path
