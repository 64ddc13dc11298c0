"""Every module imports (STYLE.md 15): catches syntax errors and heavy optional imports at module level."""

import importlib
import pkgutil
import sys

import contrastkit

OPTIONAL = ("vllm", "lm_eval", "mauve")


def test_every_module_imports_without_optional_heavy_deps():
    names = [m.name for m in pkgutil.walk_packages(contrastkit.__path__, prefix="contrastkit.")]
    assert "contrastkit.models" in names and "contrastkit.cli.main" in names
    for name in names:
        importlib.import_module(name)
    for heavy in OPTIONAL:
        assert heavy not in sys.modules, f"{heavy} imported at module level by some contrastkit module"
