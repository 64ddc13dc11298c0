"""tests/mutations.json stays runnable: every planted bug's ``find`` occurs exactly once in its file,
and every test file it names exists (``../shared/tools/mutcheck.py --list tests/mutations.json``)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_planted_bug_still_applies_and_names_real_tests():
    muts = json.loads((REPO / "tests" / "mutations.json").read_text())
    assert len({m["id"] for m in muts}) == len(muts), "duplicate ids"
    problems = []
    for m in muts:
        assert {"id", "file", "find", "replace", "tests"} <= set(m), m.get("id")
        path = REPO / m["file"]
        count = path.read_text().count(m["find"]) if path.is_file() else -1
        if count != 1:
            problems.append(f"{m['id']}: find occurs {count} times in {m['file']}")
        if m["find"] == m["replace"]:
            problems.append(f"{m['id']}: replace equals find")
        for t in m["tests"]:
            if t.startswith("tests/") and not (REPO / t.split("::")[0]).is_file():
                problems.append(f"{m['id']}: no test file {t}")
    assert not problems, "\n".join(problems)
