"""Every module imports (STYLE.md 15), and none pulls an optional heavy dependency in at module level.

Runs in a fresh interpreter: other tests legitimately import mauve / lm_eval inside functions.
"""

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import contrastkit
names = [m.name for m in pkgutil.walk_packages(contrastkit.__path__, prefix="contrastkit.")]
assert "contrastkit.models" in names and "contrastkit.cli.main" in names, names
for name in names:
    importlib.import_module(name)
heavy = [m for m in ("vllm", "lm_eval", "mauve", "faiss", "sentence_transformers") if m in sys.modules]
print(len(names), heavy)
assert not heavy, f"imported at module level: {heavy}"
"""


def test_every_module_imports_without_optional_heavy_deps():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[0]) > 40  # really walked the package
