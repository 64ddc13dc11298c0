"""One evaluation harness: TruthfulQA (MC and generation), open-ended quality (rep-n, diversity, MAUVE, coherence).

Tasks are declared as YAML under ``contrastkit/eval/tasks/`` (name, class, ``version``, dataset,
template, metrics; STYLE.md convention 12) and registered in :data:`contrastkit.registry.TASKS`
under their name, lazily (``"module:attr"``). :func:`task_spec` returns a task's YAML.
Run them with :func:`contrastkit.eval.runner.run_evaluation` or ``contrastkit eval <task>``.
"""

from __future__ import annotations

from pathlib import Path

from contrastkit.registry import TASKS

TASK_DIR = Path(__file__).parent / "tasks"
_SPECS: dict[str, dict] = {}


def _register_yaml_tasks() -> None:
    import yaml

    for path in sorted(TASK_DIR.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        _SPECS[spec["task"]] = spec
        if spec["task"] not in TASKS:
            TASKS.register(spec["task"], spec["class"])


def task_spec(name: str) -> dict:
    """The YAML declaration of task ``name`` (unknown names raise with a did-you-mean)."""
    TASKS.get(name)
    return dict(_SPECS[name])


_register_yaml_tasks()
