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
