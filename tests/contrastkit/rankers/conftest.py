"""Ranker test fixtures (the checkpoint builder lives in tiny_rankgen.py)."""

from __future__ import annotations

import pytest

from tests.contrastkit.rankers.tiny_rankgen import make_tiny_rankgen


@pytest.fixture(scope="session")
def tiny_rankgen(tmp_path_factory, tiny_tok):
    """(checkpoint dir, reference module) of a tiny random RankGen in the Hub format."""
    path = tmp_path_factory.mktemp("rankgen") / "rankgen-t5-tiny"
    ref = make_tiny_rankgen(path, tiny_tok)
    return path, ref
